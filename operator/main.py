"""``taskcreds-operator``: the admission webhook, the credential broker and the task lifecycle in
one asyncio process.

Everything is wired here and nowhere else: the settings (environment), the Kubernetes client, the
operator's own SVID (SPIFFE Workload API), the webhook's certificate, three listeners (webhook,
broker, metrics) and kopf with the lifecycle handlers. Each part lives in its own module; this one
only starts them, keeps them running and stops them in order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from taskcreds.operator import leases
from taskcreds.operator.cluster import Cluster
from taskcreds.operator.config import ConfigError, InjectionConfig, config_from_env
from taskcreds.operator.settings import OperatorSettings, SettingsError

from taskcreds.logs import fields, setup_logging
from taskcreds.loop import loop_name, run_loop
from taskcreds.metrics import OperatorMetrics, register_operator

__all__ = ["main", "run_operator", "OperatorParts", "kopf_settings_for_taskcreds"]

log = logging.getLogger("taskcreds.operator")

SWEEP_INTERVAL = 30.0
"""Seconds between lease sweeps: unfinished revocations, pods gone unseen, expired leases."""


@dataclass
class OperatorParts:
    """What a running operator exposes (for tests and the demo)."""

    metrics: OperatorMetrics
    ports: dict[str, int] = field(default_factory=dict)
    #: this replica's name in revocation claims on TaskLeases (one replica revokes each task)
    #: the pod name when there is one, so a restarted container resumes its own claims at once
    replica_id: str = field(
        default_factory=lambda: os.environ.get("HOSTNAME") or f"op-{uuid.uuid4().hex[:8]}"
    )
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: the admission webhook's view of the CredentialSources (set once the webhook is made)
    credential_index: Any = None


def _metrics_app(metrics: OperatorMetrics, ready: asyncio.Event) -> web.Application:
    async def metrics_handler(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if ready.is_set():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "starting"}, status=503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def _serve_plain(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, bound


def kopf_settings_for_taskcreds() -> Any:
    import kopf

    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True  # watch pods cluster-wide directly; no namespace/CRD scanning RBAC
    settings.posting.enabled = False  # our own Events only: kopf's could quote exception texts
    settings.networking.request_timeout = 30.0
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.reconnect_backoff = 1.0
    return settings


async def run_operator(
    settings: OperatorSettings,
    config: InjectionConfig,
    *,
    cluster: Cluster,
    svid_source: Callable[[], Any],
    stop: asyncio.Event,
    parts: OperatorParts | None = None,
    kopf_login: Callable[..., Any] | None = None,
    kopf_settings: Any = None,
    sweep_interval: float = SWEEP_INTERVAL,
) -> None:
    """Run every part until ``stop`` is set. ``svid_source()`` returns the operator's current SVID."""
    import kopf
    from taskcreds.operator.broker.server import BrokerServer, make_broker_app, trust_domain_of
    from taskcreds.operator.broker.settings import BrokerSettings
    from taskcreds.operator.certificates import ensure_webhook_certificate, maintain_webhook_certificate
    from taskcreds.operator.credindex import CredentialIndex
    from taskcreds.operator.injection import mutate_pod
    from taskcreds.operator.lifecycle import TaskLifecycle, build_registry
    from taskcreds.operator.providers.registry import make_providers
    from taskcreds.operator.taskstatus import TaskStatusHub
    from taskcreds.operator.tlsreload import ReloadingCertificate
    from taskcreds.operator.webhook import make_webhook_app, serve

    parts = parts or OperatorParts(metrics=register_operator())
    metrics = parts.metrics
    background: list[asyncio.Task[Any]] = []
    runners: list[web.AppRunner] = []

    def spawn(coro: Awaitable[Any], name: str) -> None:
        background.append(asyncio.ensure_future(coro))
        background[-1].set_name(name)

    # 1. metrics first, so probes answer (503 on /readyz) while the rest starts
    runner, port = await _serve_plain(_metrics_app(metrics, parts.ready), *settings.metrics_listen)
    runners.append(runner)
    parts.ports["metrics"] = port

    # 2. the webhook: its certificate (self-managed, or files cert-manager keeps current)
    own_cert_dir: tempfile.TemporaryDirectory[str] | None = None
    if settings.webhook_cert_dir:
        cert_dir = settings.webhook_cert_dir
    else:
        own_cert_dir = tempfile.TemporaryDirectory(prefix="taskcreds-webhook-")  # /tmp: memory in the chart
        cert_dir = own_cert_dir.name
        cert_args = dict(
            namespace=settings.namespace,
            secret_name=settings.webhook_secret,
            service=settings.webhook_service,
            webhook_configuration=settings.webhook_configuration,
            cert_dir=cert_dir,
        )
        await ensure_webhook_certificate(cluster, **cert_args)  # type: ignore[arg-type]
        spawn(maintain_webhook_certificate(cluster, **cert_args), "webhook-certificate")  # type: ignore[arg-type]
    tls = ReloadingCertificate(
        str(Path(cert_dir) / "tls.crt"), str(Path(cert_dir) / "tls.key"), metrics=metrics
    )
    # admission consults the sources through an in-memory index a watch keeps current (no I/O per pod)
    index = CredentialIndex()
    parts.credential_index = index
    webhook_app = make_webhook_app(
        config,
        metrics,
        mutate=partial(mutate_pod, encoded=True, delivery=index.delivery),
        credential_check=index.check,
    )
    webhook_ready: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    spawn(
        serve(
            webhook_app,
            tls,
            *settings.webhook_listen,
            stop,
            on_ready=lambda addrs: None if webhook_ready.done() else webhook_ready.set_result(addrs),
        ),
        "webhook",
    )

    # 3. the broker, with the operator's own SVID (rotation-aware)
    svid = svid_source()
    broker_settings = BrokerSettings.from_operator(settings, trust_domain=trust_domain_of(svid))
    providers = make_providers(cluster, broker_settings)
    hub = TaskStatusHub()
    broker = BrokerServer(
        make_broker_app(
            cluster=cluster,
            providers=providers,
            settings=broker_settings,
            metrics=metrics,
            trust_domain=trust_domain_of(svid),
            hub=hub,
        ),
        svid_source,
    )
    parts.ports["broker"] = await broker.start(*settings.broker_listen)

    # 4. the lifecycle: kopf pod events -> hub + revocation; the periodic sweep
    lifecycle = TaskLifecycle(
        revoke=partial(leases.revoke_pod_task, cluster, providers, metrics=metrics, replica=parts.replica_id),
        sweep=partial(leases.sweep_leases, cluster, providers, metrics=metrics, replica=parts.replica_id),
        status_sink=hub.update,
    )
    registry = build_registry(lifecycle, index)
    login = kopf_login or _default_login
    kopf.on.login(registry=registry)(login)
    kopf_ready = asyncio.Event()
    kopf_task = asyncio.ensure_future(
        kopf.operator(
            registry=registry,
            settings=kopf_settings or kopf_settings_for_taskcreds(),
            standalone=True,
            clusterwide=True,
            stop_flag=stop,
            ready_flag=kopf_ready,
        )
    )
    spawn(lifecycle.sweep_forever(sweep_interval), "lease-sweep")
    spawn(index.prime(cluster.list_credential_sources), "credential-index")

    try:
        addrs = await asyncio.wait_for(asyncio.shield(webhook_ready), timeout=30)
        parts.ports["webhook"] = addrs[0][1]
        await asyncio.wait_for(kopf_ready.wait(), timeout=60)
        parts.ready.set()
        log.info(
            "taskcreds-operator ready",
            extra=fields(loop=loop_name(), **{f"{k}_port": v for k, v in parts.ports.items()}),
        )
        # kopf installs its own SIGTERM/SIGINT handlers in the main thread: when it stops, we stop
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopping, kopf_task}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
    finally:
        log.info("taskcreds-operator stopping")
        stop.set()
        await asyncio.wait({kopf_task}, timeout=10)  # kopf may end cancelled: never re-raise that here
        kopf_task.cancel()
        for task in background:
            task.cancel()
        await asyncio.gather(kopf_task, *background, return_exceptions=True)
        await lifecycle.close()
        await broker.stop()
        for runner in runners:
            await runner.cleanup()
        if own_cert_dir is not None:
            own_cert_dir.cleanup()


def _default_login(**kwargs: Any) -> Any:
    """In a pod: the service account; elsewhere: the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    import kopf

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return kopf.login_with_service_account(**kwargs)
    return kopf.login_with_kubeconfig(**kwargs)


async def _amain(settings: OperatorSettings, config: InjectionConfig) -> int:
    from taskcreds.operator.kube import connect
    from taskcreds.sidecar.identity import IdentitySource

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    identity = IdentitySource()  # SPIFFE_ENDPOINT_SOCKET
    try:
        await identity.start(timeout=60)
    except Exception as exc:  # no SVID, no broker: say so and let the kubelet restart us
        print(f"taskcreds-operator: no SPIFFE identity from the Workload API: {exc}", file=sys.stderr)
        return 1
    cluster = await connect()
    try:
        await run_operator(settings, config, cluster=cluster, svid_source=lambda: identity.current, stop=stop)
    finally:
        await identity.close()
        close = getattr(cluster, "close", None)
        if close is not None:
            await close()
    return 0


def main() -> int:
    """Console entry point of ``taskcreds-operator``."""
    try:
        settings = OperatorSettings.from_env(os.environ)
        config = config_from_env(os.environ)
    except (SettingsError, ConfigError) as exc:
        print(f"taskcreds-operator: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    log.info("starting", extra=fields(namespace=settings.namespace))
    try:
        return run_loop(_amain(settings, config))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
