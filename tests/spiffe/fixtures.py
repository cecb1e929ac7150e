"""SPIFFE fixtures for any test: a development authority and real Workload API servers.

    from tests.spiffe.fixtures import dev_authority, workload_api  # noqa: F401  (pytest fixtures)

    def test_x(workload_api):
        api = workload_api("spiffe://taskcreds.local/ns/team-a/sa/agent")
        ...  # api.socket_uri, api.current (X509SvidMaterial), api.rotate(), api.stop()/start()

Sockets live in short temporary directories under /tmp (a unix socket path must stay under
108 bytes, and pytest's tmp_path is often longer); each is removed at teardown.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator

import pytest

from taskcreds.devauthority import DevAuthority, WorkloadApiServer

__all__ = ["dev_authority", "workload_api", "TRUST_DOMAIN", "AGENT_ID", "BROKER_ID", "WorkloadApiFactory"]

TRUST_DOMAIN = "taskcreds.local"
AGENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/team-a/sa/agent"
BROKER_ID = f"spiffe://{TRUST_DOMAIN}/ns/taskcreds-system/sa/taskcreds-operator"

WorkloadApiFactory = Callable[..., WorkloadApiServer]


@pytest.fixture
def dev_authority() -> DevAuthority:
    """A development authority for trust domain ``taskcreds.local`` (allowed, 1 h SVIDs)."""
    return DevAuthority(TRUST_DOMAIN, allow=True)


@pytest.fixture
def workload_api(dev_authority: DevAuthority) -> Iterator[WorkloadApiFactory]:
    """Factory: ``workload_api(spiffe_id=AGENT_ID, *, svid_ttl=None, authority=None)`` -> a started
    :class:`WorkloadApiServer` on its own temporary socket, stopped and removed at teardown."""
    servers: list[WorkloadApiServer] = []
    dirs: list[str] = []

    def make(spiffe_id: str = AGENT_ID, *, svid_ttl: float | None = None,
             authority: DevAuthority | None = None) -> WorkloadApiServer:
        directory = tempfile.mkdtemp(prefix="tc-spiffe-", dir="/tmp")
        dirs.append(directory)
        server = WorkloadApiServer(authority or dev_authority, f"{directory}/agent.sock", spiffe_id,
                                   svid_ttl=svid_ttl)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()
    for directory in dirs:
        shutil.rmtree(directory, ignore_errors=True)
