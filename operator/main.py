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
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from taskcreds.operator import leases
from taskcreds.operator.broker.settings import BrokerSettings
from taskcreds.operator.cluster import Cluster
from taskcreds.operator.config import ConfigError, InjectionConfig, config_from_env
from taskcreds.operator.settings import OperatorSettings, SettingsError

from taskcreds import names
from taskcreds.logs import fields, setup_logging
from taskcreds.loop import loop_name, run_loop
from taskcreds.metrics import OperatorMetrics, register_operator

__all__ = [
    "main",
    "run_operator",
    "OperatorParts",
    "kopf_settings_for_taskcreds",
    "stop_seconds",
    "task_lease_crd_problem",
    "check_task_lease_crd",
    "await_task_lease_crd",
    "CRD_APPLY_COMMAND",
]

log = logging.getLogger("taskcreds.operator")

SWEEP_INTERVAL = 30.0
"""Seconds between lease sweeps: unfinished revocations, pods gone unseen, expired leases."""

#: the bounds of the stop sequence after the drain (``run_operator``'s ``finally``), step by step
WEBHOOK_STOP_SECONDS = 10.0
"""The webhook listener closing (admission requests in progress finish)."""
SHUTDOWN_TIMEOUT = 1.0
"""A plain listener's (metrics) wait for its handlers; the broker's is broker.server.SHUTDOWN_TIMEOUT."""
KOPF_STOP_SECONDS = 10.0
"""kopf stopping its watches and handlers (then cancelled)."""
STOP_MARGIN_SECONDS = 3.0
"""The rest: cancelling what is left, closing clients, the process exiting."""


def stop_seconds(broker: BrokerSettings) -> float:
    """The worst-case time from the end of the drain to the process's exit (in the order of the stop
    sequence): webhook, broker listener, broker in-flight sequences, metrics listener, kopf, the rest.

    The chart's minimum ``terminationGracePeriodSeconds`` is ``drainSeconds`` plus this, rounded up
    (charts/taskcreds/templates/_helpers.tpl; tests/chart/test_values.py checks they agree): less,
    and the kubelet's SIGKILL can cut an issued credential off before it is recorded or revoked.
    """
    from taskcreds.operator.broker.server import SHUTDOWN_TIMEOUT as BROKER_SHUTDOWN

    return (
        WEBHOOK_STOP_SECONDS
        + BROKER_SHUTDOWN
        + broker.drain_timeout
        + SHUTDOWN_TIMEOUT
        + KOPF_STOP_SECONDS
        + STOP_MARGIN_SECONDS
    )


TASK_LEASE_CRD = f"{names.PLURAL_TASK_LEASES}.{names.CRD_GROUP}"
CRD_APPLY_COMMAND = "kubectl apply --server-side --force-conflicts -f charts/taskcreds/crds/"
"""What an admin runs before ``helm upgrade``: Helm installs crds/ once and never upgrades them."""
#: every field of ``status.leases[]`` this operator records (the chart's CRD has exactly these; a test
#: checks it). An older CRD's structural schema prunes the ones it lacks silently: revocation goes to
#: the wrong place (target), a renewal is forgotten (supersededAt), every pending entry loses its
#: intent and pending flag, so each issue's recording write finds it gone and answers 503, or a lease
#: cut to its grant loses its source's expiry (sourceExpiresAt) and a revocation failing after the
#: granted end is given up while the value still works at its source
LEASE_FIELDS = (
    "credential",
    "provider",
    "source",
    "leaseRef",
    "issuedAt",
    "expiresAt",
    "sourceExpiresAt",
    "revokedAt",
    "revokeReason",
    "renewable",
    "static",
    "notRevocable",
    "lastError",
    "attempts",
    "target",
    "supersededAt",
    "intent",
    "pending",
)
CRD_CHECK_ATTEMPTS = 6
CRD_CHECK_INTERVAL = 5.0
#: a replica whose CRD check failed checks again this often, and becomes ready once it passes
CRD_RECHECK_INTERVAL = 30.0


def task_lease_crd_problem(crd: Mapping[str, Any] | None) -> str | None:
    """What makes the installed TaskLease CRD unfit for this operator (None: it fits). Pure."""
    if crd is None:
        return f"CustomResourceDefinition {TASK_LEASE_CRD} does not exist"
    versions = (crd.get("spec") or {}).get("versions") or []
    version = next((v for v in versions if v.get("name") == names.CRD_VERSION and v.get("served")), None)
    if version is None:
        return f"CustomResourceDefinition {TASK_LEASE_CRD} does not serve version {names.CRD_VERSION}"
    node: Any = (version.get("schema") or {}).get("openAPIV3Schema") or {}
    for key in ("properties", "status", "properties", "leases", "items", "properties"):
        node = node.get(key) if isinstance(node, Mapping) else None
    missing = [f for f in LEASE_FIELDS if not isinstance(node, Mapping) or f not in node]
    if missing:
        return (
            f"CustomResourceDefinition {TASK_LEASE_CRD} is older than this operator: status.leases[] has "
            f"no {', '.join(missing)}, so the API server would drop them from every TaskLease"
        )
    return None


class _ApiStatus(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


async def _read_crd(api: Any, name: str) -> dict[str, Any] | None:
    """The CRD as JSON (None: not found); an exception with ``status`` for any other failure."""
    import json

    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        # _preload_content=False answers the raw aiohttp response (the client's types do not say so)
        resp: Any = await client.ApiextensionsV1Api(api).read_custom_resource_definition(
            name, _preload_content=False, _request_timeout=10
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    try:
        if resp.status == 404:
            return None
        if resp.status >= 400:
            raise _ApiStatus(resp.status)
        return json.loads(await resp.read())
    finally:
        resp.release()


async def _check_crd(cluster: Cluster, attempts: int, interval: float) -> tuple[str | None, str]:
    """(problem, kind): kind ``unfit`` (the CRD itself), ``forbidden`` or ``unreadable`` (the API)."""
    api = getattr(cluster, "api", None)
    if api is None:
        return None, ""
    last = ""
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(interval)
        try:
            crd = await _read_crd(api, TASK_LEASE_CRD)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            status = getattr(exc, "status", None)
            last = type(exc).__name__ if isinstance(status, int) is False else f"HTTP {status}"
            if status == 403:
                return (
                    f"cannot read CustomResourceDefinition {TASK_LEASE_CRD}: forbidden; the chart's "
                    "ClusterRole grants get on it (upgrade the chart)"
                ), "forbidden"
            log.warning(
                "cannot read the TaskLease CRD; retrying", extra=fields(crd=TASK_LEASE_CRD, error=last)
            )
            continue
        return task_lease_crd_problem(crd), "unfit"
    return f"cannot read CustomResourceDefinition {TASK_LEASE_CRD}: {last}", "unreadable"


async def check_task_lease_crd(
    cluster: Cluster, *, attempts: int = CRD_CHECK_ATTEMPTS, interval: float | None = None
) -> str | None:
    """Read the installed TaskLease CRD and say what is wrong with it (None: nothing).

    Fail closed: a CRD that cannot be read (forbidden, or the API failing ``attempts`` times, every
    ``interval`` seconds, default CRD_CHECK_INTERVAL) is a problem too. A Cluster without a Kubernetes
    API client (the in-memory one) has no CRD: None.
    """
    problem, _ = await _check_crd(cluster, attempts, CRD_CHECK_INTERVAL if interval is None else interval)
    return problem


def _crd_error(problem: str, kind: str, recheck: float) -> str:
    """The one ERROR line for a CRD problem: what this replica does, and what fixes it."""
    staying = f"staying unready (/readyz 503) and checking again every {recheck:g} s, no restart needed"
    if kind == "unfit":
        return (
            f"the TaskLease CRD does not fit this operator; {staying}. Apply the chart's CRDs: "
            f"{CRD_APPLY_COMMAND}"
        )
    if kind == "forbidden":
        return f"the operator may not read the TaskLease CRD; {staying}. Upgrade the chart (its ClusterRole)"
    return f"cannot read the TaskLease CRD from the API server; {staying}"


async def await_task_lease_crd(cluster: Cluster, stop: asyncio.Event) -> bool:
    """Until the TaskLease CRD fits (True) or ``stop`` is set (False).

    A read failure (an API outage at startup) or an unfit CRD is checked again every
    CRD_RECHECK_INTERVAL seconds, so the replica becomes ready once the API answers or an admin
    applied the chart's CRDs, without a restart. One ERROR per distinct problem, saying which.
    """
    logged: str | None = None
    attempts = CRD_CHECK_ATTEMPTS
    while not stop.is_set():
        problem, kind = await _check_crd(cluster, attempts, CRD_CHECK_INTERVAL)
        if problem is None:
            if logged is not None:
                log.info("the TaskLease CRD fits this operator now", extra=fields(crd=TASK_LEASE_CRD))
            return True
        if problem != logged:
            # fail closed: unready, so the Services keep sending work to replicas with a sound CRD
            # (maxUnavailable 0 keeps the old ones); kopf still revokes what ends meanwhile
            extra = {"command": CRD_APPLY_COMMAND} if kind == "unfit" else {}
            log.error(_crd_error(problem, kind, CRD_RECHECK_INTERVAL), extra=fields(problem=problem, **extra))
            logged = problem
        attempts = 1
        try:
            await asyncio.wait_for(stop.wait(), timeout=CRD_RECHECK_INTERVAL)
        except TimeoutError:
            pass
    return False


@dataclass
class OperatorParts:
    """What a running operator exposes (for tests and the demo)."""

    metrics: OperatorMetrics
    ports: dict[str, int] = field(default_factory=dict)
    #: this replica's name in revocation claims on TaskLeases (one replica revokes each task)
    #: the pod name when there is one, so a restarted container resumes its own claims at once
    replica_id: str = leases.REPLICA_ID
    #: set once the webhook serves with its certificate, the broker listens and kopf runs: /readyz 200
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: set when a stop begins: /readyz 503 while admission and the broker go on for the drain period
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    #: the admission webhook's view of the CredentialSources (set once the webhook is made)
    credential_index: Any = None


def _metrics_app(metrics: OperatorMetrics, ready: asyncio.Event, draining: asyncio.Event) -> web.Application:
    async def metrics_handler(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        # liveness only: the process answers. It says nothing about admission (that is /readyz)
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        # the chart's readinessProbe: 200 only while this replica should receive admissions
        if draining.is_set():
            return web.json_response({"status": "draining"}, status=503)
        if ready.is_set():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "starting"}, status=503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def _close_connections_while(draining: asyncio.Event, app: web.Application) -> None:
    """Answer with ``Connection: close`` once draining: kube-apiserver and the sidecars reconnect
    through the Service (to a ready replica) instead of reusing a keep-alive connection to this one."""

    async def on_prepare(_: web.Request, response: web.StreamResponse) -> None:
        if draining.is_set():
            response.force_close()  # close after this response
            response.headers["Connection"] = "close"  # and say so (aiohttp wrote its headers already)

    app.on_response_prepare.append(on_prepare)


def _take_signals(stop: asyncio.Event, hurry: asyncio.Event) -> None:
    """SIGTERM/SIGINT set ``stop`` (a second one sets ``hurry``: end the drain now).

    kopf adds its own handlers in the main thread when it starts; those stop kopf at once, which
    would end this process without a drain. Called after kopf started, so these are the ones that
    stay. Outside the main thread (tests, embedding) signals are the caller's business.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (hurry if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


async def _serve_plain(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
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
    take_signals: bool = False,
) -> None:
    """Run every part until ``stop`` is set. ``svid_source()`` returns the operator's current SVID.

    Stopping drains first: once ``stop`` is set, /readyz answers 503 at once, while the webhook, the
    broker and the lifecycle keep working for ``settings.drain_seconds`` (responses then close their
    connections). A terminating pod leaves the Services' endpoints on its own, but kube-apiserver
    and kube-proxy learn that a moment later; admission is fail-closed, so a replica that stopped
    listening at SIGTERM refused opted-in pods on every rollout. ``take_signals``: SIGTERM/SIGINT of
    the process set ``stop`` (a second one ends the drain early), also after kopf started.
    """
    import kopf
    from taskcreds.operator.broker.server import BrokerServer, make_broker_app, trust_domain_of
    from taskcreds.operator.certificates import ensure_webhook_certificate, maintain_webhook_certificate
    from taskcreds.operator.credindex import CredentialIndex
    from taskcreds.operator.injection import mutate_pod
    from taskcreds.operator.lifecycle import TaskLifecycle, build_registry
    from taskcreds.operator.providers.registry import make_providers
    from taskcreds.operator.sources import configure_tenant_rules
    from taskcreds.operator.taskstatus import TaskStatusHub
    from taskcreds.operator.tlsreload import ReloadingCertificate
    from taskcreds.operator.webhook import make_webhook_app, serve

    configure_tenant_rules(config.sources)  # sources.allowedAddresses, before anything reads a source
    parts = parts or OperatorParts(metrics=register_operator())
    metrics = parts.metrics
    background: list[asyncio.Task[Any]] = []
    runners: list[web.AppRunner] = []

    def spawn(coro: Awaitable[Any], name: str) -> None:
        background.append(asyncio.ensure_future(coro))
        background[-1].set_name(name)

    # 1. metrics first, so probes answer (503 on /readyz) while the rest starts
    # ``stop`` begins the drain; after it ``listeners_down`` closes the webhook, then kopf gets ``kopf_stop``
    listeners_down = asyncio.Event()
    kopf_stop = asyncio.Event()
    hurry = asyncio.Event()
    runner, port = await _serve_plain(
        _metrics_app(metrics, parts.ready, parts.draining), *settings.metrics_listen
    )
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
    _close_connections_while(parts.draining, webhook_app)
    webhook_ready: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    spawn(
        serve(
            webhook_app,
            tls,
            *settings.webhook_listen,
            listeners_down,
            on_ready=lambda addrs: None if webhook_ready.done() else webhook_ready.set_result(addrs),
        ),
        "webhook",
    )
    webhook_task = background[-1]

    # 3. the broker, with the operator's own SVID (rotation-aware)
    svid = svid_source()
    broker_settings = BrokerSettings.from_operator(settings, trust_domain=trust_domain_of(svid))
    providers = make_providers(cluster, broker_settings, metrics)
    hub = TaskStatusHub()
    broker_app = make_broker_app(
        cluster=cluster,
        providers=providers,
        settings=broker_settings,
        metrics=metrics,
        trust_domain=trust_domain_of(svid),
        hub=hub,
    )
    _close_connections_while(parts.draining, broker_app)
    broker = BrokerServer(broker_app, svid_source)
    parts.ports["broker"] = await broker.start(*settings.broker_listen)

    # 4. the lifecycle: kopf pod events -> hub + revocation; the periodic sweep
    # the pod events keep a view of live pods, so the sweep GETs only pods not heard from lately
    view = leases.PodView()
    lifecycle = TaskLifecycle(
        revoke=partial(leases.revoke_pod_task, cluster, providers, metrics=metrics, replica=parts.replica_id),
        sweep=partial(
            leases.sweep_leases, cluster, providers, metrics=metrics, replica=parts.replica_id, view=view
        ),
        status_sink=hub.update,
        view=view,
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
            stop_flag=kopf_stop,
            ready_flag=kopf_ready,
        )
    )
    spawn(lifecycle.sweep_forever(sweep_interval), "lease-sweep")
    spawn(index.prime(cluster.list_credential_sources), "credential-index")

    try:
        addrs = await asyncio.wait_for(asyncio.shield(webhook_ready), timeout=30)
        parts.ports["webhook"] = addrs[0][1]
        await asyncio.wait_for(kopf_ready.wait(), timeout=60)
        if take_signals:
            await asyncio.sleep(0)  # kopf adds its signal handlers right after starting its tasks
            _take_signals(stop, hurry)

        async def become_ready() -> None:
            """Ready once the TaskLease CRD fits (checked again in the background until it does)."""
            if await await_task_lease_crd(cluster, stop) and not stop.is_set():
                parts.ready.set()
                log.info(
                    "taskcreds-operator ready",
                    extra=fields(loop=loop_name(), **{f"{k}_port": v for k, v in parts.ports.items()}),
                )

        spawn(become_ready(), "task-lease-crd")
        if not stop.is_set():
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({stopping, kopf_task}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if stop.is_set() and not kopf_task.done() and settings.drain_seconds > 0:
                await _drain(parts, settings.drain_seconds, kopf_task, hurry)
    finally:
        log.info("taskcreds-operator stopping")
        parts.ready.clear()
        parts.draining.set()
        stop.set()
        # the listeners before kopf: a stopping kopf waits 5 s for every task started after it, and
        # the handler of a keep-alive connection (Prometheus, the API server) is one
        listeners_down.set()
        await asyncio.wait({webhook_task}, timeout=WEBHOOK_STOP_SECONDS)
        await broker.stop()
        for runner in runners:
            await runner.cleanup()
        kopf_stop.set()
        # kopf may end cancelled: never re-raise that here
        await asyncio.wait({kopf_task}, timeout=KOPF_STOP_SECONDS)
        kopf_task.cancel()
        for task in background:
            task.cancel()
        await asyncio.gather(kopf_task, *background, return_exceptions=True)
        await lifecycle.close()
        if own_cert_dir is not None:
            own_cert_dir.cleanup()


async def _drain(
    parts: OperatorParts, seconds: float, kopf_task: asyncio.Future[Any], hurry: asyncio.Event
) -> None:
    """Not ready, still serving: until ``seconds`` pass, kopf ends on its own or ``hurry`` is set."""
    parts.ready.clear()
    parts.draining.set()
    log.info("taskcreds-operator draining", extra=fields(drain_seconds=seconds))
    hurried = asyncio.ensure_future(hurry.wait())
    try:
        await asyncio.wait({kopf_task, hurried}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hurried.cancel()


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
        await run_operator(
            settings,
            config,
            cluster=cluster,
            svid_source=lambda: identity.current,
            stop=stop,
            take_signals=True,
        )
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
