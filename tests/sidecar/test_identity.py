"""The sidecar's identity source against a real Workload API: first SVID, rotation, outages."""

# ruff: noqa: F811  (pytest fixtures imported from tests.spiffe.fixtures are parameters here)
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import jwt
import pytest
from taskcreds.sidecar.identity import IdentityError, IdentitySource

from taskcreds import names
from taskcreds.devauthority import DevAuthority, WorkloadApiServer
from taskcreds.svid import X509SvidMaterial, server_context
from tests.spiffe.disk import assert_not_on_disk, key_marker
from tests.spiffe.fixtures import AGENT_ID, BROKER_ID, dev_authority, workload_api  # noqa: F401
from tests.spiffe.tls import TlsServer

Factory = Callable[..., WorkloadApiServer]
FAST = (0.05, 0.3)  # reconnect backoff for tests


async def _until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


async def test_start_returns_the_first_svid_and_reports_it(workload_api: Factory) -> None:
    api = workload_api(AGENT_ID)
    updates: list[X509SvidMaterial] = []
    source = IdentitySource(api.socket_uri, on_update=updates.append)
    try:
        first = await source.start(timeout=5)
        assert first == api.current == source.current
        assert source.spiffe_id == AGENT_ID
        assert updates == [first]
    finally:
        await source.close()


async def test_socket_from_the_environment(workload_api: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    api = workload_api(AGENT_ID)
    monkeypatch.setenv(names.ENV_SPIFFE_SOCKET, api.socket_uri)
    async with IdentitySource() as source:
        assert source.current.spiffe_id == AGENT_ID


async def test_bare_socket_path_is_accepted(workload_api: Factory) -> None:
    api = workload_api(AGENT_ID)
    async with IdentitySource(api.socket_path) as source:
        assert source.socket_uri == api.socket_uri


@pytest.mark.parametrize(("socket_uri", "env", "says"), [
    pytest.param(None, None, f"set {names.ENV_SPIFFE_SOCKET}", id="nothing configured"),
    pytest.param("tcp://127.0.0.1:1", None, "is not a unix socket address", id="tcp"),
    pytest.param(None, "relative/path.sock", f"{names.ENV_SPIFFE_SOCKET}='relative/path.sock'",
                 id="relative env"),
])
def test_bad_socket_configuration_is_named(monkeypatch: pytest.MonkeyPatch, socket_uri: str | None,
                                            env: str | None, says: str) -> None:
    monkeypatch.delenv(names.ENV_SPIFFE_SOCKET, raising=False)
    if env is not None:
        monkeypatch.setenv(names.ENV_SPIFFE_SOCKET, env)
    with pytest.raises(IdentityError) as err:
        IdentitySource(socket_uri)
    assert says in str(err.value)


async def test_no_workload_api_times_out_with_the_reason(tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = IdentitySource(f"unix://{tmp_path}/missing.sock", reconnect_backoff=FAST)
    started = time.monotonic()
    with pytest.raises(IdentityError) as err:
        await source.start(timeout=0.4)
    assert time.monotonic() - started < 2
    assert f"{tmp_path}/missing.sock does not exist" in str(err.value) and "0.4 s" in str(err.value)
    with pytest.raises(IdentityError, match="await start"):
        source.current  # noqa: B018


async def test_svid_arrives_when_the_workload_api_comes_up_late(dev_authority: DevAuthority) -> None:
    import tempfile

    directory = tempfile.mkdtemp(prefix="tc-spiffe-", dir="/tmp")
    server = WorkloadApiServer(dev_authority, f"{directory}/agent.sock", AGENT_ID)
    source = IdentitySource(server.socket_uri, reconnect_backoff=FAST)
    try:
        starting = asyncio.create_task(source.start(timeout=5))
        await asyncio.sleep(0.3)
        assert not starting.done()
        server.start()
        assert (await starting) == server.current
    finally:
        await source.close()
        server.stop()
        os.rmdir(directory)


async def test_rotation_changes_ssl_context_and_the_next_connection_presents_the_new_svid(
        workload_api: Factory, dev_authority: DevAuthority) -> None:
    api = workload_api(AGENT_ID)
    broker = server_context(dev_authority.mint_x509_svid(BROKER_ID))
    updates: list[X509SvidMaterial] = []
    async with IdentitySource(api.socket_uri, on_update=updates.append) as source, \
            TlsServer(broker) as server:
        old_context = source.ssl_context()
        assert source.ssl_context() is old_context  # cached while the SVID stays the same
        before = await server.connect(old_context)
        assert before.server_saw == AGENT_ID and before.server_saw_leaf == api.current.fingerprint

        new = api.rotate()
        await _until(lambda: source.current == new)
        assert updates[-1] == new and len(updates) == 2
        new_context = source.ssl_context()
        assert new_context is not old_context
        after = await server.connect(new_context)
        assert after.server_saw == AGENT_ID
        assert after.server_saw_leaf == new.fingerprint != before.server_saw_leaf


async def test_server_context_follows_rotation_in_place(workload_api: Factory,
                                                        dev_authority: DevAuthority) -> None:
    from taskcreds.svid import client_context

    api = workload_api(BROKER_ID)
    agent = client_context(dev_authority.mint_x509_svid(AGENT_ID))
    async with IdentitySource(api.socket_uri) as source:
        context = source.server_ssl_context()
        async with TlsServer(context) as server:
            first = await server.connect(agent)
            api.set_spiffe_id(BROKER_ID + "-v2")
            await _until(lambda: source.current.spiffe_id == BROKER_ID + "-v2")
            assert source.server_ssl_context() is context
            second = await server.connect(agent)
    assert (first.client_saw, second.client_saw) == (BROKER_ID, BROKER_ID + "-v2")


async def test_workload_api_down_and_back(workload_api: Factory) -> None:
    api = workload_api(AGENT_ID)
    source = IdentitySource(api.socket_uri, reconnect_backoff=FAST)
    try:
        first = await source.start(timeout=5)
        api.stop()
        await asyncio.sleep(0.4)
        assert source.current == first  # the last SVID stays usable while the API is away
        source.ssl_context()
        new = api.rotate()
        api.start()
        await _until(lambda: source.current == new, within=5)
    finally:
        await source.close()


async def test_a_broken_update_listener_does_not_stop_updates(workload_api: Factory) -> None:
    api = workload_api(AGENT_ID)
    calls: list[str] = []

    def listener(svid: X509SvidMaterial) -> None:
        calls.append(svid.fingerprint)
        raise RuntimeError("listener bug")

    async with IdentitySource(api.socket_uri, on_update=listener) as source:
        new = api.rotate()
        await _until(lambda: source.current == new)
    assert calls == [calls[0], new.fingerprint]


async def test_fetch_jwt_svid(workload_api: Factory, dev_authority: DevAuthority) -> None:
    api = workload_api(AGENT_ID)
    async with IdentitySource(api.socket_uri) as source:
        token = await source.fetch_jwt_svid("openbao")
    keys = {k.key_id: k.key for k in jwt.PyJWKSet.from_dict(dev_authority.jwt_bundle()).keys}
    claims = jwt.decode(token, keys[jwt.get_unverified_header(token)["kid"]], algorithms=["ES256"],
                        audience="openbao")
    assert claims["sub"] == AGENT_ID


async def test_fetch_jwt_svid_errors_name_the_problem(workload_api: Factory) -> None:
    api = workload_api(AGENT_ID)
    async with IdentitySource(api.socket_uri) as source:
        with pytest.raises(IdentityError, match="needs an audience"):
            await source.fetch_jwt_svid("")
        api.stop()
        with pytest.raises(IdentityError, match="could not fetch a JWT-SVID for audience 'openbao'"):
            await source.fetch_jwt_svid("openbao")


async def test_the_svid_key_never_lands_on_disk(workload_api: Factory) -> None:
    api = workload_api(AGENT_ID)
    started = time.time() - 1
    async with IdentitySource(api.socket_uri) as source:
        source.ssl_context()
        source.server_ssl_context()
        marker = key_marker(source.current)
        roots = [os.path.dirname(api.socket_path), "/tmp", "/dev/shm"]
        await asyncio.to_thread(assert_not_on_disk, marker, roots, started)
        assert marker not in repr(source).encode() and marker not in repr(source.current).encode()
