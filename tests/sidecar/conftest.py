"""Fixtures for the sidecar tests: tmpfs dirs, the real broker against the Kubernetes API stand-in,
SPIFFE, the sidecar process.

``broker`` is the operator's own broker (``make_broker_app`` + ``BrokerServer``, real ``jwt``
provider, real TokenReview, TaskLeases recorded through the API), served over SPIFFE mutual TLS with
an SVID from the same development authority as the sidecar's Workload API. It is fed by a pod watch
(``follow_pods``), as every operator replica is, so a ``taskcreds.io/task-status`` patch through the
API reaches the sidecar's long-poll at once. The only thing added to the real app is a middleware
that records what reached it (method, path, the client SVID's fingerprint, the SHA-256 of the bearer
token — never a token), so tests can say "nothing reached the broker".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from taskcreds.operator import leases
from taskcreds.operator.broker.server import BROKER_KEY, BrokerServer, make_broker_app
from taskcreds.operator.kube import connect
from taskcreds.operator.taskstatus import follow_pods

from taskcreds import names
from taskcreds.devauthority import DevAuthority
from taskcreds.svid import X509SvidMaterial
from tests.kube.fixtures import KubeApi
from tests.operator.test_broker_harness import NS, SA, TRUST_DOMAIN, source
from tests.operator.test_broker_scenario import CRDS, KubeHarness
from tests.ports import free_port
from tests.spiffe.fixtures import AGENT_ID, BROKER_ID  # dev_authority, workload_api: global fixtures

REPO = Path(__file__).resolve().parents[2]
SIDECAR = str(REPO / ".venv" / "bin" / "taskcreds-sidecar")
POD = "agent-0"
TASK = "task-1"
#: the pod's CredentialSources: two ``jwt`` sources, one written as ``token``, one as ``password``
SOURCES = {"github": "token", "db": "password"}
assert NS == "team-a" and SA == "agent" and AGENT_ID.endswith(f"/ns/{NS}/sa/{SA}")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """The egress proxy's tests run on both loops: the sidecar runs it on uvloop
    (``taskcreds.loop.run_loop``), and the code must not depend on which."""
    import uvloop

    if item.path.name == "test_proxy.py":
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A fresh directory on tmpfs (/dev/shm), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="tc-sidecar-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def jwt_claims(token: str) -> dict[str, Any]:
    """The (unverified) claims of a JWT the broker issued; ValueError when it is not a whole JWT."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"not a whole JWT ({len(parts)} parts)")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    return dict(json.loads(base64.urlsafe_b64decode(payload)))


@dataclass(frozen=True)
class Seen:
    """One request that reached the broker app (the token only as a hash)."""

    method: str
    path: str
    peer_cert_sha256: str | None
    token_sha256: str | None


class RealBroker:
    """The real broker for one pod ``agent-0`` (task ``task-1``, sources ``github`` and ``db``).

    ``stop()``/``start()`` take it away entirely and bring it back on the same port (an outage);
    ``set_status()`` patches the pod's task-status annotation through the API.
    """

    def __init__(self, kube: KubeApi, authority: DevAuthority) -> None:
        self.kube = kube
        self.authority = authority
        self.seen: list[Seen] = []
        self.port = free_port()  # kept across stop()/start(): not an ephemeral one (tests/ports.py)
        self.harness: KubeHarness | None = None
        self._watch: asyncio.Task[None] | None = None
        self._extra: list[BrokerServer] = []

    # --- life cycle ----------------------------------------------------------------------------
    async def setup(self) -> RealBroker:
        self.kube.register_crds_from(CRDS)
        cluster = await connect(url=self.kube.url, token=self.kube.admin_token)
        h = self.harness = KubeHarness(self.kube, cluster)
        # one trust domain, one authority: the sidecar's Workload API mints from the same one
        h.authority = self.authority
        h.broker_svid = self.authority.mint_x509_svid(BROKER_ID, 3600)
        h.put_sources()  # namespaces, the service account (and two sources of its own)
        for name, file in SOURCES.items():
            self.kube.put({"apiVersion": names.API_VERSION, **source(
                name, "jwt", default_ttl="30s", max_ttl="1h", files=[file], jwt={"audience": [f"{NS}/{name}.example"]})})
        self.kube.put({"apiVersion": names.API_VERSION, **source(
            "broken", "secret", secret={"secretRef": {"name": "missing", "key": "token"}})})
        self.pod = h.add_pod(POD, task=TASK, credentials=",".join(SOURCES))
        self._watch = asyncio.create_task(follow_pods(cluster, h.hub))
        await self.start()
        return self

    async def start(self) -> None:
        """Serve (again) on the same port: a fresh app over the same cluster, providers and hub."""
        h = self.harness
        assert h is not None
        h.app = self._app()
        h.server = BrokerServer(h.app, lambda: h.broker_svid)
        self.port = await h.server.start("127.0.0.1", self.port)

    async def stop(self) -> None:
        """Go away: the port refuses connections until :meth:`start`."""
        assert self.harness is not None
        await self.harness.server.stop()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for server in self._extra:
            await server.stop()
        if self.harness is not None:
            await self.harness.close()
            await self.harness.cluster.close()

    def _app(self) -> web.Application:
        h = self.harness
        assert h is not None
        app = make_broker_app(cluster=h.cluster, providers=h.providers, settings=h.settings, metrics=h.metrics,
                              trust_domain=TRUST_DOMAIN, hub=h.hub)
        app.middlewares.append(self._record)
        return app

    async def serve_as(self, svid: X509SvidMaterial) -> str:
        """Another listener of this broker presenting ``svid`` (an impostor or a foreign server)."""
        server = BrokerServer(self._app(), lambda: svid)
        self._extra.append(server)
        await server.start("127.0.0.1", 0)
        return server.url

    @web.middleware
    async def _record(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        self.seen.append(Seen(request.method, request.path, hashlib.sha256(der).hexdigest() if der else None,
                              sha256(token) if token else None))
        return await handler(request)

    # --- what tests use ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def app(self) -> web.Application:
        assert self.harness is not None
        return self.harness.app

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    def token(self, pod: str = POD) -> str:
        """A pod-bound projected token with audience ``taskcreds``, as the kubelet mounts it."""
        return self.kube.issue_pod_token(NS, pod)

    def add_pod(self, name: str, credentials: str, task: str = TASK) -> dict[str, Any]:
        assert self.harness is not None
        return self.harness.add_pod(name, task=task, credentials=credentials)

    def requests(self, path_part: str = "") -> list[Seen]:
        return [s for s in self.seen if path_part in s.path]

    async def set_status(self, status: str, pod: str = POD) -> None:
        """Patch ``taskcreds.io/task-status`` through the API (the pod watch feeds the broker)."""
        from kubernetes_asyncio import client

        api = await self.kube.kubernetes_asyncio_client()
        await client.CoreV1Api(api).patch_namespaced_pod(
            pod, NS, {"metadata": {"annotations": {names.ANNOTATION_TASK_STATUS: status}}})

    def lease(self) -> dict[str, Any] | None:
        return self.kube.get(names.API_VERSION, names.KIND_TASK_LEASE, NS, leases.lease_name(POD, TASK))

    def lease_entries(self) -> list[dict[str, Any]]:
        return list(((self.lease() or {}).get("status") or {}).get("leases") or [])

    def jwt_revoked(self, token: str) -> bool:
        assert self.harness is not None
        return bool(self.harness.providers["jwt"].is_revoked(jwt_claims(token)["jti"]))  # type: ignore[attr-defined]

    def set_ready(self, ready: bool) -> None:
        """The broker's own shutdown flag: every /v1 call answers 503 ``unavailable``."""
        self.app[BROKER_KEY].ready = ready


@pytest.fixture
async def broker(kube_api: KubeApi, dev_authority: DevAuthority) -> AsyncIterator[RealBroker]:
    b = await RealBroker(kube_api, dev_authority).setup()
    yield b
    await b.close()


@pytest.fixture
def token_file(tmp_path: Path, broker: RealBroker) -> Path:
    """The projected token file of pod ``agent-0``."""
    path = tmp_path / "token"
    path.write_text(broker.token() + "\n")
    return path


def sidecar_env(*, directory: Path, broker_url: str, token_file: Path, socket_uri: str,
                credentials: str = "github,db", pod_uid: str = "", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKCREDS_")}
    env.update({
        names.ENV_DIR: str(directory), names.ENV_TASK: TASK, names.ENV_CREDENTIALS: credentials,
        names.ENV_POD_NAME: POD, names.ENV_POD_NAMESPACE: NS, names.ENV_POD_UID: pod_uid,
        names.ENV_BROKER_URL: broker_url, names.ENV_BROKER_SPIFFE_ID: BROKER_ID,
        names.ENV_TOKEN_FILE: str(token_file), names.ENV_SPIFFE_SOCKET: socket_uri,
        names.ENV_LISTEN_LOCAL: f"127.0.0.1:{free_port()}", names.ENV_LISTEN_PROBE: f"127.0.0.1:{free_port()}",
        names.ENV_LOG_LEVEL: "debug",
    })
    env.update(extra)
    return env


class SidecarProcess:
    """``taskcreds-sidecar`` as a real subprocess; stderr captured to a file for log assertions."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.local = "http://" + env[names.ENV_LISTEN_LOCAL]
        self.probe = "http://" + env[names.ENV_LISTEN_PROBE]
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([SIDECAR], env=env, stdout=self._log, stderr=self._log)

    def get(self, path: str, *, base: str | None = None, timeout: float = 2.0) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen((base or self.local) + path, timeout=timeout) as resp:  # noqa: S310 - loopback http
                body = resp.read()
                return resp.status, body
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def readyz(self) -> int | None:
        try:
            return self.get("/readyz")[0]
        except OSError:
            return None

    async def wait_for(self, check: Callable[[], Any], timeout: float = 10.0,  # noqa: ASYNC109 - a poll bound
                       what: str = "condition") -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            result = await asyncio.to_thread(check)
            if result:
                return result
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited {self.proc.returncode} waiting for {what}:\n{self.logs()}")
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}:\n{self.logs()[-3000:]}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def logs(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def terminate(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.stop()

    async def aterminate(self, timeout: float = 10.0) -> int:  # noqa: ASYNC109 - the wait for exit
        """SIGTERM and wait without blocking the event loop (the broker runs on it)."""
        return await asyncio.to_thread(self.terminate, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@pytest.fixture
def sidecar_process(tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    started: list[SidecarProcess] = []

    def start(env: dict[str, str]) -> SidecarProcess:
        proc = SidecarProcess(env, tmp_path / f"sidecar-{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def run_sidecar_once(env: dict[str, str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run the sidecar to completion (for refusals at start)."""
    return subprocess.run([SIDECAR], env=env, capture_output=True, text=True, timeout=timeout)


__all__ = ["SidecarProcess", "RealBroker", "Seen", "sidecar_env", "run_sidecar_once", "jwt_claims",
           "sha256", "AGENT_ID", "BROKER_ID", "POD", "TASK", "SOURCES", "NS", "sys"]


@pytest.fixture
def tiny_tmpfs() -> Iterator[Path]:
    """A real 8 KiB tmpfs, as a too-small ``emptyDir: {medium: Memory, sizeLimit}``; needs mount rights."""
    path = Path(tempfile.mkdtemp(prefix="tc-full-", dir="/dev/shm"))
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k,mode=0700", "tmpfs", str(path)],  # noqa: S607
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        path.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()[:120]}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True, check=False)  # noqa: S607
        path.rmdir()
