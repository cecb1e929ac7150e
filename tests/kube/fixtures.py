"""``kube_api``: a Kubernetes API stand-in on 127.0.0.1 for kopf, kubernetes_asyncio and kubernetes.

    async def test_x(kube_api: KubeApi) -> None:
        api = await kube_api.kubernetes_asyncio_client()
        ...

Use the pytest fixture by importing it in a conftest.py or test module:
``from tests.kube.fixtures import kube_api  # noqa: F401``.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import concurrent.futures
import copy
import functools
import secrets
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from aiohttp import web

from tests.kube.admission import Admission, WebhookCall
from tests.kube.certs import TestCA
from tests.kube.server import ApiCall, ApiServer
from tests.kube.store import Store
from tests.kube.tokens import IssuedToken, TokenAuthority

__all__ = ["KubeApi", "kube_api", "kube_api_tls"]

T = TypeVar("T")


def _on_server_loop(fn: Callable[..., T]) -> Callable[..., T]:
    """Direct store access runs on the server's loop, so it never races the HTTP side."""

    @functools.wraps(fn)
    def wrapper(self: KubeApi, *args: Any, **kwargs: Any) -> T:
        return self.call(lambda: fn(self, *args, **kwargs))

    return wrapper


class KubeApi:
    """The stand-in: an aiohttp server on the current event loop, plus direct store access."""

    def __init__(self, *, tls: bool = False, history: int = 2000) -> None:
        self.clock_offset = 0.0
        self.store = Store(history=history, clock=self._now)
        self.tokens = TokenAuthority(self._now)
        self.admission = Admission(self.store)
        self.admin_token = "admin-" + secrets.token_urlsafe(24)
        self.server = ApiServer(self.store, self.tokens, self.admission, self.admin_token)
        self.tls = tls
        self.ca: TestCA | None = TestCA("kube stand-in CA") if tls else None
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._clients: builtins.list[Any] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None
        self._temp_files: builtins.list[str] = []

    def _now(self) -> float:
        return time.time() + self.clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the API's clock forward (token expiry) without sleeping."""
        self.clock_offset += seconds

    # --- lifecycle ------------------------------------------------------------------------
    # The server runs on its own event loop in its own thread: a test (or kopf, whose exit
    # cancels every task it did not start, or a blocking sync client) can never stall or
    # cancel it. Direct store access is marshalled onto that loop.

    def start_sync(self) -> KubeApi:
        """Start the server thread; returns once it listens."""
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="kube-standin", daemon=True)
        self._thread.start()
        self.url = ready.result(timeout=10)
        return self

    def _serve(self, ready: concurrent.futures.Future[str]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread_id = threading.get_ident()
        try:
            ready.set_result(loop.run_until_complete(self._start_server()))
        except BaseException as e:  # noqa: BLE001 - handed to the starting thread
            ready.set_exception(e)
            loop.close()
            return
        loop.run_forever()
        loop.run_until_complete(self._stop_server())
        loop.close()

    async def _start_server(self) -> str:
        self._runner = web.AppRunner(
            self.server.app, handle_signals=False, shutdown_timeout=1.0, handler_cancellation=True
        )
        await self._runner.setup()
        ssl_ctx: ssl.SSLContext | None = None
        if self.ca is not None:
            self._tmp = tempfile.TemporaryDirectory(prefix="kube-standin-")
            ssl_ctx = self.ca.issue(["127.0.0.1", "localhost"]).server_context(Path(self._tmp.name))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(self._runner, sock, ssl_context=ssl_ctx)
        await site.start()
        return f"{'https' if ssl_ctx else 'http'}://127.0.0.1:{sock.getsockname()[1]}"

    async def _stop_server(self) -> None:
        for w in list(self.store.watchers):
            w.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def stop_sync(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop = self._thread = None
        for f in self._temp_files:
            Path(f).unlink(missing_ok=True)

    async def start(self) -> KubeApi:
        return await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        for c in self._clients:
            await c.close()
        self._clients.clear()
        await asyncio.to_thread(self.stop_sync)

    async def __aenter__(self) -> KubeApi:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> KubeApi:
        return self.start_sync()

    def __exit__(self, *exc: object) -> None:
        self.stop_sync()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the server's loop (where the store lives) and return its result."""
        if self._loop is None or threading.get_ident() == self._thread_id:
            return fn(*args)
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                fut.set_exception(e)

        self._loop.call_soon_threadsafe(run)
        return fut.result(timeout=10)

    # --- clients --------------------------------------------------------------------------

    def _ca_temp_file(self) -> str:
        assert self.ca is not None
        with tempfile.NamedTemporaryFile("wb", suffix=".crt", delete=False) as f:
            f.write(self.ca.cert_pem)
        self._temp_files.append(f.name)
        return f.name

    def kubeconfig(self, path: str | Path) -> str:
        """Write a kubeconfig (token auth, admin) pointing at the stand-in; returns its path."""
        cluster: dict[str, Any] = {"server": self.url}
        if self.ca is not None:
            cluster["certificate-authority-data"] = base64.b64encode(self.ca.cert_pem).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "standin",
            "preferences": {},
            "clusters": [{"name": "standin", "cluster": cluster}],
            "users": [{"name": "admin", "user": {"token": self.admin_token}}],
            "contexts": [
                {
                    "name": "standin",
                    "context": {"cluster": "standin", "user": "admin", "namespace": "default"},
                }
            ],
        }
        p = Path(path)
        if p.is_dir():
            p = p / "kubeconfig"
        p.write_text(yaml.safe_dump(config))
        p.chmod(0o600)
        return str(p)

    def ca_file(self, directory: str | Path) -> str | None:
        if self.ca is None:
            return None
        p = Path(directory) / "kube-ca.crt"
        p.write_bytes(self.ca.cert_pem)
        return str(p)

    async def kubernetes_asyncio_client(self) -> Any:
        """A kubernetes_asyncio ApiClient configured for this server (closed at stop())."""
        from kubernetes_asyncio import client

        cfg = client.Configuration(host=self.url)
        cfg.api_key = {"BearerToken": self.admin_token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        if self.ca is not None:
            cfg.ssl_ca_cert = self._ca_temp_file()
        api = client.ApiClient(cfg)
        self._clients.append(api)
        return api

    def kubernetes_sync_configuration(self) -> Any:
        """A configuration for the official synchronous ``kubernetes`` client (call it from a thread)."""
        from kubernetes import client

        cfg = client.Configuration(host=self.url)
        cfg.api_key = {"authorization": f"Bearer {self.admin_token}"}
        if self.ca is not None:
            cfg.ssl_ca_cert = self._ca_temp_file()
        return cfg

    def kopf_connection_info(self) -> Any:
        """What a ``@kopf.on.login`` handler returns to point kopf at this server."""
        import kopf

        return kopf.ConnectionInfo(
            server=self.url, token=self.admin_token, ca_data=self.ca.cert_pem if self.ca is not None else None
        )

    # --- direct store access (bypasses admission and the HTTP layer) ----------------------

    @_on_server_loop
    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object as given (namespaces are made as needed); returns the stored object."""
        rt = self.store.type_for_kind(obj["apiVersion"], obj["kind"])
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") or ("default" if rt.namespaced else None)
        if rt.namespaced and ns:
            self.ensure_namespace(ns)
        existing = self.store.peek(rt, ns, meta.get("name", "")) if meta.get("name") else None
        if existing is None:
            created = self.store.create(rt, ns, obj)
            if rt.has_status and "status" in obj and obj["status"] != created.get("status"):
                _, new = self.store.prepare_update(
                    rt, ns, created["metadata"]["name"], {**created, "status": obj["status"]}, "status"
                )
                return self.store.update(rt, ns, created["metadata"]["name"], new)
            return created
        body = copy.deepcopy(obj)
        body.setdefault("metadata", {}).pop("resourceVersion", None)
        _, new = self.store.prepare_update(rt, ns, meta["name"], body)
        if rt.has_status and "status" in obj:
            new["status"] = copy.deepcopy(obj["status"])
        return self.store.update(rt, ns, meta["name"], new)

    @_on_server_loop
    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        rt = self.store.type_for_kind(api_version, kind)
        return self.store.peek(rt, namespace, name)

    @_on_server_loop
    def list(
        self, api_version: str, kind: str, namespace: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        return self.store.list(self.store.type_for_kind(api_version, kind), namespace)

    @_on_server_loop
    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Delete as the API would (finalizers hold it); True when the object is gone."""
        rt = self.store.type_for_kind(api_version, kind)
        return self.store.delete(rt, namespace, name)[1]

    @_on_server_loop
    def set_pod_phase(self, namespace: str, name: str, phase: str, **status: Any) -> dict[str, Any]:
        """What the kubelet does: write ``status.phase`` (and any extra status fields)."""
        rt = self.store.type_for("", "v1", "pods")
        pod = self.store.get(rt, namespace, name)
        new_status = {**(pod.get("status") or {}), "phase": phase, **status}
        _, new = self.store.prepare_update(rt, namespace, name, {**pod, "status": new_status}, "status")
        return self.store.update(rt, namespace, name, new)

    @_on_server_loop
    def bind_pod(self, namespace: str, name: str, node: str = "node-1") -> dict[str, Any]:
        """What the scheduler does: set ``spec.nodeName``. A bound pod is deleted gracefully
        (deletionTimestamp
        first, removal after ``pod_termination_delay``), an unbound one at once, as on a real cluster."""
        rt = self.store.type_for("", "v1", "pods")
        key = ("default" if namespace is None else namespace, name)
        pod = self.store.objects[("", "pods")].get(key)
        if pod is None:
            raise KeyError(f"no pod {namespace}/{name}")
        old = copy.deepcopy(pod)
        pod["spec"]["nodeName"] = node
        self.store._bump(pod)  # noqa: SLF001 - the scheduler writes through the binding subresource
        self.store._emit(rt, "MODIFIED", pod, old)  # noqa: SLF001
        return self.store.get(rt, namespace, name)

    @property
    def pod_termination_delay(self) -> float:
        return self.store.pod_termination_delay

    @pod_termination_delay.setter
    def pod_termination_delay(self, seconds: float) -> None:
        self.store.pod_termination_delay = seconds

    @_on_server_loop
    def ensure_namespace(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        rt = self.store.type_for("", "v1", "namespaces")
        existing = self.store.peek(rt, None, name)
        if existing is not None:
            return existing
        return self.store.create(rt, None, {"metadata": {"name": name, "labels": dict(labels or {})}})

    @_on_server_loop
    def register_crd(self, crd: dict[str, Any]) -> None:
        """Serve the kinds of an apiextensions.k8s.io/v1 CRD manifest (and store the CRD)."""
        rt = self.store.type_for("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        if self.store.peek(rt, None, crd["metadata"]["name"]) is None:
            self.store.create(rt, None, crd)

    def register_crds_from(self, path: str | Path) -> int:
        """Every CustomResourceDefinition in a YAML file or directory (the chart's crds/); how many."""
        p = Path(path)
        files = sorted(p.glob("*.yaml")) + sorted(p.glob("*.yml")) if p.is_dir() else [p]
        n = 0
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    self.register_crd(doc)
                    n += 1
        return n

    @_on_server_loop
    def issue_pod_token(
        self,
        namespace: str,
        pod_name: str,
        service_account: str | None = None,
        audiences: builtins.list[str] | tuple[str, ...] = ("taskcreds",),
        expiration_seconds: int = 3600,
    ) -> str:
        """A projected service-account token bound to the pod, as the kubelet would mount (any lifetime)."""
        pod = self.store.get(self.store.type_for("", "v1", "pods"), namespace, pod_name)
        sa_name = service_account or pod["spec"].get("serviceAccountName") or "default"
        sa = self.store.get(self.store.type_for("", "v1", "serviceaccounts"), namespace, sa_name)
        token, _ = self.tokens.issue(
            namespace=namespace,
            service_account=sa_name,
            service_account_uid=sa["metadata"]["uid"],
            audiences=list(audiences),
            expiration_seconds=expiration_seconds,
            pod=(pod_name, pod["metadata"]["uid"]),
        )
        return token

    @_on_server_loop
    def issue_token(
        self,
        namespace: str,
        service_account: str,
        audiences: builtins.list[str] | tuple[str, ...],
        expiration_seconds: int = 3600,
    ) -> str:
        """A service-account token bound to no object (a TokenRequest without boundObjectRef)."""
        sa = self.store.get(self.store.type_for("", "v1", "serviceaccounts"), namespace, service_account)
        return self.tokens.issue(
            namespace=namespace,
            service_account=service_account,
            service_account_uid=sa["metadata"]["uid"],
            audiences=list(audiences),
            expiration_seconds=expiration_seconds,
        )[0]

    def set_service_endpoint(self, namespace: str, service: str, host_port: str) -> None:
        """Where a webhook's ``clientConfig.service`` reaches (TLS name stays ``<service>.<ns>.svc``)."""
        self.call(self.admission.service_endpoints.__setitem__, (namespace, service), host_port)

    # --- what happened --------------------------------------------------------------------

    @property
    def events(self) -> builtins.list[dict[str, Any]]:
        """Every Event created (core/v1 and events.k8s.io/v1), oldest first."""
        return self.call(lambda: list(self.store.created_events))

    @property
    def requests(self) -> builtins.list[tuple[str, str]]:
        """(method, path) of every HTTP request, oldest first."""
        return self.call(lambda: list(self.server.state.requests))

    @property
    def api_calls(self) -> builtins.list[ApiCall]:
        """Every resource request in RBAC terms (verb, group, resource[/sub], namespace, name, user)."""
        return self.call(lambda: list(self.server.state.api_calls))

    @property
    def webhook_calls(self) -> builtins.list[WebhookCall]:
        return self.call(lambda: list(self.admission.calls))

    @property
    def issued_tokens(self) -> builtins.list[IssuedToken]:
        return self.call(lambda: list(self.tokens.issued))

    def set_down(self, down: bool) -> None:
        """True: every request answers 503 and open watch streams are cut; False: back to normal."""
        self.call(self.server.set_down, down)

    def set_latency(self, seconds: float) -> None:
        """Delay every request by ``seconds`` before it is served."""
        self.server.state.latency = seconds

    def watch_count(self) -> int:
        """How many watch streams are open right now."""
        return self.call(lambda: len(self.store.watchers))

    @property
    def bookmark_interval(self) -> float:
        return self.server.state.bookmark_interval

    @bookmark_interval.setter
    def bookmark_interval(self, seconds: float) -> None:
        self.server.state.bookmark_interval = seconds

    async def wait_for(self, predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> Any:  # noqa: ASYNC109
        """Poll ``predicate()`` until it returns something truthy; TimeoutError naming the predicate."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if asyncio.get_running_loop().time() >= deadline:
                raise TimeoutError(
                    f"condition not met within {timeout}s: {getattr(predicate, '__name__', predicate)}"
                )
            await asyncio.sleep(interval)


@pytest.fixture
async def kube_api() -> AsyncIterator[KubeApi]:
    """The stand-in over plain HTTP on a free loopback port, stopped at teardown."""
    async with KubeApi() as api:
        yield api


@pytest.fixture
async def kube_api_tls() -> AsyncIterator[KubeApi]:
    """The stand-in over HTTPS with its own CA (``kube_api_tls.ca.cert_pem``)."""
    async with KubeApi(tls=True) as api:
        yield api
