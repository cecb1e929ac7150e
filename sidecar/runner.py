"""The sidecar's life: identity -> issue -> write -> ready -> refresh ... -> teardown -> idle.

Teardown is triggered by whichever comes first:

- the broker's task-status long-poll reports a terminal status (at once);
- the downward-API ``annotations`` file shows a terminal ``taskcreds.io/task-status`` (polled about
  every second; the kubelet refreshes it only every minute or so, hence a fallback);
- ``TASKCREDS_MAX_DURATION`` has passed since the sidecar first started in this pod (recorded in
  the volume, so a restarted sidecar keeps the clock), or the broker's ``deadline``, whichever is
  earlier. The pod's creation time is not visible to the sidecar; its first start follows admission
  by seconds, and the operator enforces the exact deadline on its side;
- SIGTERM or SIGINT;
- any broker call answering ``409 task_terminal``.

Two deliveries, one store: every credential the broker sends lands in ``Runner.credentials`` (and
the redactor). ``file`` credentials are written to ``$TASKCREDS_DIR``; ``proxy`` credentials never
are: the egress proxy (:class:`ProxyDelivery`, started once the first answer names one) reads them
from the store on each request, so a rotation is attached from the next request on, and teardown
turns every matched host into a 403 at once.

After teardown the sidecar stays up serving ``/healthz`` (exiting would make the kubelet restart a
native sidecar) until SIGTERM, then exits 0. A restarted sidecar that finds the teardown marker
never fetches again; it, like the one that tore down, exports ``taskcreds_sidecar_task_ended`` 1
next to ``ready`` 0, so the TaskcredsSidecarNotReady alert leaves it alone. Valid credentials stay
on disk while the broker is away; one that expires without a replacement is removed from the set
and ``/readyz`` turns 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from taskcreds.sidecar import schedule
from taskcreds.sidecar.client import BrokerClient, IssuedCredential
from taskcreds.sidecar.config import SidecarConfig
from taskcreds.sidecar.errors import (
    BrokerError,
    BrokerUnavailable,
    NotFound,
    PolicyDenied,
    RateLimited,
    SidecarError,
    TaskTerminal,
    WriterError,
)
from taskcreds.sidecar.podca import PodCA, PodCAError, write_ca_bundle
from taskcreds.sidecar.podinfo import PodinfoError, parse_annotations, read_task_status
from taskcreds.sidecar.proxy import EgressProxy, ProxyRoute, RouteError
from taskcreds.sidecar.redact import Redactor
from taskcreds.sidecar.teardown import teardown
from taskcreds.sidecar.writer import CredentialFiles, CredentialWriter

from taskcreds import names
from taskcreds.logs import fields
from taskcreds.metrics import SidecarMetrics

__all__ = ["Runner", "IdentityLike", "ProxyDelivery", "CredentialStoreView", "egress_denied", "route_for"]

_log = logging.getLogger("taskcreds.sidecar")
_POLICY_BASE = 5.0  # seconds: first retry after a policy denial (it will not change soon)
_NO_RETRY_DELAY = 60.0  # seconds: 400/413 will not change on retry; try again rarely
_WRITE_MAX_DELAY = 30.0  # seconds: a full emptyDir rarely frees itself; retry, but not often


class IdentityLike(Protocol):
    """The identity source as the runner uses it (taskcreds.sidecar.identity.IdentitySource)."""

    async def start(self, timeout: float) -> Any: ...  # noqa: ASYNC109 - IdentitySource.start's own signature

    @property
    def current(self) -> Any: ...

    def ssl_context(self) -> Any: ...

    async def close(self) -> None: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _retryable(exc: BaseException) -> BrokerError:
    """A broker call's failure as a BrokerError. A local OSError (EMFILE, ENOMEM) passes, so it is
    retried with backoff like an unreachable broker instead of ending the task for good."""
    if isinstance(exc, BrokerError):
        return exc
    return BrokerUnavailable(f"local error calling the broker: {type(exc).__name__}: "
                             f"{getattr(exc, 'strerror', None) or exc}")


def egress_denied(podinfo_dir: str | None) -> bool:
    """Whether the pod asked for deny-by-default egress (``taskcreds.io/egress: deny``).

    Read once at start from the downward-API file; absent file, absent annotation or any other
    value means allow (the annotation is opt-in; the webhook validates it).
    """
    if not podinfo_dir:
        return False
    try:
        with open(Path(podinfo_dir) / names.PODINFO_ANNOTATIONS_FILE, encoding="utf-8") as f:
            annotations = parse_annotations(f.read())
    except (OSError, UnicodeDecodeError, PodinfoError):
        return False
    return annotations.get(names.ANNOTATION_EGRESS, "").strip().lower() == "deny"


def route_for(cred: IssuedCredential) -> ProxyRoute:
    """The proxy route of a proxy-delivered credential, from the broker's ``proxy`` block.

    RouteError (naming the field, never a value) when the block is missing or unusable.
    """
    block: Mapping[str, Any] = cred.proxy or {}
    hosts = block.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        raise RouteError(f"credential {cred.name!r} has delivery proxy but the broker sent no proxy.hosts")
    return ProxyRoute(cred.name, tuple(str(h) for h in hosts), header=block.get("header"),
                      basic_username=block.get("basicUsername"),
                      allow_http=bool(block.get("allowHttp", False)))


class CredentialStoreView:
    """The runner's credential store as the proxy reads it (taskcreds.sidecar.proxy.CredentialView).

    Only proxy-delivered credentials are attached; an expired one (by the runner's monotonic count,
    not the wall clock) reads as absent (the proxy answers 503 until its replacement arrives).
    """

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def value(self, credential: str, file: str = "token") -> str | None:
        cred = self._runner.credentials.get(credential)
        if cred is None or cred.delivery != "proxy" or self._runner.expires_in(credential) <= 0:
            return None
        return cred.files.get(file)

    @property
    def ended(self) -> bool:
        return self._runner.ending


class ProxyDelivery:
    """The egress proxy's part of the sidecar: a pod CA (key in memory only), ``ca-bundle.crt`` in
    ``$TASKCREDS_DIR`` (public material only), and the listener on loopback. Started on first need."""

    def __init__(self, config: SidecarConfig, metrics: SidecarMetrics, *, roots: Path | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.roots = roots
        self.deny_unmatched = egress_denied(config.podinfo_dir)
        self.proxy: EgressProxy | None = None
        self.port: int | None = None
        self.routes: tuple[ProxyRoute, ...] = ()

    @property
    def listening(self) -> bool:
        return self.port is not None

    def _upstream_ssl(self) -> ssl.SSLContext | None:
        if self.config.proxy_upstream_ca is None:
            return None
        return ssl.create_default_context(cafile=self.config.proxy_upstream_ca)

    def _resolver(self) -> Callable[[str, int], tuple[str, int]] | None:
        mapping = self.config.proxy_resolve
        if not mapping:
            return None

        def resolve(host: str, port: int) -> tuple[str, int]:
            if host.lower() in mapping:
                return mapping[host.lower()]
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)  # dev hook only
            return str(info[0][4][0]), int(info[0][4][1])

        return resolve

    async def start(self, routes: Sequence[ProxyRoute], view: CredentialStoreView) -> int:
        """Make the pod CA, write the bundle, listen. OSError/PodCAError when that cannot happen."""
        ca = PodCA(self.config.pod_name)
        await asyncio.to_thread(write_ca_bundle, Path(self.config.dir), ca, roots=self.roots)
        self.routes = tuple(routes)
        proxy = EgressProxy(self.routes, view, deny_unmatched=self.deny_unmatched, ca=ca,
                            upstream_ssl=self._upstream_ssl(), metrics=self.metrics,
                            upstream_resolver=self._resolver())
        self.port = await proxy.start(*self.config.listen_proxy)
        self.proxy = proxy
        return self.port

    def update_routes(self, routes: Sequence[ProxyRoute]) -> None:
        """Routes changed mid-task: the running proxy uses them from its next request."""
        self.routes = tuple(routes)
        if self.proxy is not None:
            self.proxy.update_routes(self.routes)

    async def close(self) -> None:
        if self.proxy is not None:
            await self.proxy.close()
            self.proxy = None


class Runner:
    """Orchestrates one sidecar. ``run()`` returns the process exit code."""

    def __init__(self, config: SidecarConfig, *, identity: IdentityLike, client: BrokerClient,
                 writer: CredentialWriter, redactor: Redactor, metrics: SidecarMetrics,
                 rng: random.Random | None = None, podinfo_interval: float = 1.0,
                 identity_timeout: float = 86400.0, now: Callable[[], datetime] = _utcnow,
                 proxy: ProxyDelivery | None = None) -> None:
        self.config = config
        self.identity = identity
        self.client = client
        self.writer = writer
        self.redactor = redactor
        self.metrics = metrics
        self.rng = rng or random.SystemRandom()
        self.podinfo_interval = podinfo_interval
        self.identity_timeout = identity_timeout
        self.now = now
        self.credentials: dict[str, IssuedCredential] = {}
        self.torn_down = False
        self.ending = False  # set the moment teardown is decided: the proxy stops attaching at once
        self.end_reason: str | None = None
        self.proxy = proxy
        self.view = CredentialStoreView(self)
        self._proxy_error: str | None = None
        self._ending: asyncio.Future[tuple[str, bool]] | None = None
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._deadline: float | None = None
        self._identity_ready = False
        # clock: the broker's minus ours (schedule.broker_offset); per credential, when to refresh and
        # when it expires on the monotonic clock, counted from its answer's arrival
        self._offset = 0.0
        self._due: dict[str, tuple[float, float]] = {}  # name -> (refresh at, expires at), monotonic
        # per credential, a timer that drops it at its expiry, whatever call is in flight meanwhile
        self._expiry_timers: dict[str, asyncio.TimerHandle] = {}
        # disk: the names in the last set written, and why the last write failed (None: it did not)
        self._on_disk: set[str] = set()
        self._write_error: str | None = None
        self._write_attempt = 0
        self._write_retry: asyncio.TimerHandle | None = None
        self._log_fields = {"task": config.task, "pod": f"{config.pod_namespace}/{config.pod_name}"}

    # --- public ----------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """For /readyz: ready once every requested credential is on disk and not torn down.

        On disk means written: the last write succeeded and it held exactly the credentials held now
        (a credential in memory whose write failed, e.g. ENOSPC, is not ready).
        """
        if self.torn_down:
            return False, {"tornDown": True, "reason": self.end_reason}
        # an expired credential is missing even before its expiry timer has run (a busy loop)
        missing = [n for n in self.config.credentials if n not in self.credentials or self.expires_in(n) <= 0]
        written = self._write_error is None and self._on_disk == set(self.credentials)
        disk: dict[str, Any] = {}
        if not written:
            disk["notWritten"] = sorted(set(self.credentials) - self._on_disk)
            if self._write_error:
                disk["writeError"] = self._write_error
        proxied = sorted(n for n, c in self.credentials.items() if c.delivery == "proxy")
        if not proxied:
            return not missing and written, {"missing": missing, **disk}
        listening = self.proxy is not None and self.proxy.listening
        details: dict[str, Any] = {"missing": missing, **disk, "proxy": {
            "listening": listening, "credentials": proxied,
            **({"port": self.proxy.port} if self.proxy is not None and listening else {}),
            **({"error": self._proxy_error} if self._proxy_error and not listening else {})}}
        return not missing and written and listening, details

    def expires_in(self, name: str) -> float:
        """Seconds until credential ``name`` expires (0 or less: expired), on the monotonic clock.

        Counted from its answer's arrival with the broker's own times, so a sidecar whose wall clock
        is off by minutes keeps and refreshes credentials exactly like one whose clock is right.
        """
        due = self._due.get(name)
        if due is not None:
            return due[1] - time.monotonic()
        cred = self.credentials.get(name)  # placed in the store without an answer (tests): wall clock
        return (cred.expires_at - self.now()).total_seconds() if cred is not None else 0.0

    def end(self, reason: str, *, broker_knows: bool = False) -> None:
        """Ask for teardown (idempotent: the first reason wins).

        ``broker_knows``: the broker told us the task ended, so it is revoking already.
        """
        if self._ending is not None and not self._ending.done():
            self.ending = True
            self._ending.set_result((reason, broker_knows))

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: tear down (if not yet) and exit 0."""
        self.end("sigterm")
        self._stop.set()

    def on_svid_update(self, *_: Any) -> None:
        """The identity source's rotation callback: keep the SVID expiry metric current."""
        with contextlib.suppress(Exception):
            self.metrics.svid_expiry.set(self.identity.current.expires_at.timestamp())

    async def run(self) -> int:
        self._ending = asyncio.get_running_loop().create_future()
        self.metrics.ready.set(0)
        ended = self.writer.ended()
        # ended 1 whenever the task is over, so "not ready" alerts can tell an ended task's idle sidecar
        # (restarted ones included: their teardown counter starts at 0) from one missing credentials
        self.metrics.task_ended.set(1 if ended is not None else 0)
        if ended is not None:
            self.torn_down, self.end_reason = True, str(ended.get("reason", "unknown"))
            _log.info("task already ended in this pod; not fetching again, idle until the pod ends",
                      extra=fields(**self._log_fields, reason=self.end_reason))
            await self._stop.wait()
            return 0
        started = self.writer.started_at()
        if self.config.max_duration is not None:
            self._deadline = started + self.config.max_duration
        self._spawn(self._watch_deadline())
        if self.config.podinfo_dir:
            self._spawn(self._watch_podinfo())
        self._spawn(self._main_flow())
        reason, broker_knows = await self._ending
        await self._cancel_all()
        self.end_reason = reason
        self.torn_down = True
        self.metrics.task_ended.set(1)
        if self._write_retry is not None:
            self._write_retry.cancel()
        for timer in self._expiry_timers.values():
            timer.cancel()
        self._expiry_timers.clear()
        self.credentials.clear()  # proxy values live only here: drop them (the proxy answers 403 now)
        try:
            await teardown(reason, writer=self.writer, metrics=self.metrics, task=self.config.task,
                           client=self.client if self._identity_ready and not broker_knows else None)
        except (OSError, SidecarError) as exc:
            _log.error("teardown could not wipe every file", extra=fields(
                **self._log_fields, reason=reason, error=f"{type(exc).__name__}: {exc}"))
        _log.info("torn down; idle until the pod ends", extra=fields(**self._log_fields, reason=reason))
        await self._stop.wait()
        return 0

    # --- flows -----------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            _log.error("internal task failed; tearing down", extra=fields(
                **self._log_fields, error=f"{type(exc).__name__}: {exc}"))
            self.end("error")

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _main_flow(self) -> None:
        # the identity source keeps reconnecting by itself until its first SVID: wait, saying so
        start = asyncio.ensure_future(self.identity.start(self.identity_timeout))
        try:
            while True:
                done, _ = await asyncio.wait({start}, timeout=10.0)
                if done:
                    break
                _log.warning("still waiting for a SPIFFE identity", extra=fields(**self._log_fields))
        finally:
            if not start.done():
                start.cancel()
        try:
            start.result()
        except Exception as exc:
            # no marker, no teardown: a restarted sidecar may well get an identity
            _log.error("no SPIFFE identity; not ready", extra=fields(
                **self._log_fields, error=f"{type(exc).__name__}: {exc}"))
            await asyncio.Event().wait()
        self._identity_ready = True
        self.on_svid_update()
        _log.info("SPIFFE identity ready", extra=fields(
            **self._log_fields, spiffe_id=getattr(self.identity.current, "spiffe_id", None)))
        self._spawn(self._watch_broker())
        await self._initial_issue()
        for name in self.config.credentials:
            self._spawn(self._refresh_loop(name))

    async def _initial_issue(self) -> None:
        attempt = 0
        while True:
            sent = time.monotonic()
            try:
                result = await self.client.issue(list(self.config.credentials), self.config.ttl)
            except (BrokerError, OSError) as exc:
                exc = _retryable(exc)
                if isinstance(exc, TaskTerminal):
                    self.end("task_terminal", broker_knows=True)
                    await asyncio.Event().wait()
                attempt += 1
                delay = self._delay_after(exc, attempt, 0.0)  # nothing valid yet
                self._record_failure(self.config.credentials, exc, attempt, delay)
                await asyncio.sleep(delay)
                continue
            for cred in result.credentials:
                self._accept(cred, "issued", sent=sent)
            if result.deadline is not None:
                self._tighten_deadline(result.deadline.timestamp())
            await self._ensure_proxy()
            self._publish()
            if result.task_status in names.TERMINAL_STATUSES:
                self.end(result.task_status)
            return

    async def _refresh_loop(self, name: str) -> None:
        attempt = 0
        forgotten: str | None = None  # a leaseRef the broker answered 404 for: issue anew instead
        while True:
            cred = self.credentials.get(name)
            due = self._due.get(name)
            if cred is not None and due is not None and attempt == 0 and forgotten is None:
                await asyncio.sleep(max(0.0, due[0] - time.monotonic()))
                cred = self.credentials.get(name)
            sent = time.monotonic()
            lease_ref = cred.lease_ref if cred is not None else None
            renewing = bool(lease_ref) and lease_ref != forgotten
            try:
                if renewing and lease_ref:
                    new = await self.client.renew(name, lease_ref, self.config.ttl)
                else:
                    result = await self.client.issue([name], self.config.ttl)
                    new = next(c for c in result.credentials if c.name == name)
            except TaskTerminal:
                self.end("task_terminal", broker_knows=True)
                return
            except (BrokerError, OSError, StopIteration) as exc:
                if renewing and isinstance(exc, NotFound):
                    # the lease was replaced, revoked or never recorded (a lost answer, another
                    # replica's renewal): renewing it again can only fail; a fresh issue replaces
                    # it at once, and the old value stays on disk until then (or its expiry)
                    forgotten = lease_ref
                    _log.info("the broker no longer renews this lease; issuing a new one",
                              extra=fields(credential=name))
                    continue
                error = BrokerError(f"the broker's answer did not include credential {name!r}") \
                    if isinstance(exc, StopIteration) else _retryable(exc)
                attempt += 1
                delay = self._delay_after(error, attempt, self.expires_in(name))
                self._record_failure((name,), error, attempt, delay)
                await asyncio.sleep(delay)
                continue
            # a renewal that extended the same lease keeps its first issuedAt: not a fresh issue
            fresh = cred is None or (new.lease_ref, new.issued_at) != (cred.lease_ref, cred.issued_at)
            if not self._accept(new, "refreshed", sent=sent, fresh=fresh):
                attempt += 1  # an answer expired on arrival: a failure, backed off like one
                error = BrokerUnavailable(f"the broker's answer for {name!r} had expired on arrival")
                delay = self._delay_after(error, attempt, self.expires_in(name))
                self._record_failure((name,), error, attempt, delay)
                await asyncio.sleep(delay)
                continue
            attempt, forgotten = 0, None
            await self._ensure_proxy()
            self._publish()

    def _arm_expiry(self, name: str) -> None:
        """Drop ``name`` from the set the moment it expires, independent of any call in flight
        (a renewal may hang on a partitioned broker for its whole timeout)."""
        old = self._expiry_timers.pop(name, None)
        if old is not None:
            old.cancel()
        due = self._due.get(name)
        if due is None or self.torn_down:
            return
        self._expiry_timers[name] = asyncio.get_running_loop().call_later(
            max(0.0, due[1] - time.monotonic()), self._on_expiry, name)

    def _on_expiry(self, name: str) -> None:
        self._expiry_timers.pop(name, None)
        if name not in self.credentials:
            return
        left = self.expires_in(name)
        if left > 0:  # the loop's clock may run a hair ahead of time.monotonic(): wait the rest
            loop = asyncio.get_running_loop()
            self._expiry_timers[name] = loop.call_later(left + 0.001, self._on_expiry, name)
            return
        self._expire(name)

    def _expire(self, name: str) -> None:
        cred = self.credentials.pop(name, None)
        self._due.pop(name, None)
        timer = self._expiry_timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        if cred is None or self.torn_down:
            return
        with contextlib.suppress(KeyError):
            self.metrics.credential_expiry.remove(name)
        _log.warning("credential expired without a replacement; removed", extra=fields(
            **self._log_fields, credential=name, lease=cred.lease_ref))
        self._publish()

    async def _watch_broker(self) -> None:
        known: str | None = None
        attempt = 0
        while True:
            try:
                status = await self.client.wait_status(known, 30.0)
            except TaskTerminal:
                self.end("task_terminal", broker_knows=True)
                return
            except BrokerError as exc:
                attempt += 1
                delay = self._delay_after(exc, attempt, None, schedule.STATUS_MAX_DELAY)
                _log.debug("task status long-poll failed", extra=fields(
                    **self._log_fields, attempt=attempt, error=f"{type(exc).__name__}: {exc}"))
                await asyncio.sleep(delay)
                continue
            attempt = 0
            if status.deadline is not None:
                self._tighten_deadline(status.deadline.timestamp())
            if status.terminal or status.status in names.TERMINAL_STATUSES:
                _log.info("broker reports the task ended", extra=fields(
                    **self._log_fields, status=status.status, reason=status.reason))
                self.end(status.reason or status.status, broker_knows=True)
                return
            known = status.status

    async def _watch_podinfo(self) -> None:
        assert self.config.podinfo_dir is not None
        while True:
            status = await asyncio.to_thread(read_task_status, self.config.podinfo_dir)
            if status in names.TERMINAL_STATUSES:
                _log.info("downward API shows the task ended",
                          extra=fields(**self._log_fields, status=status))
                self.end(status)
                return
            await asyncio.sleep(self.podinfo_interval)

    async def _watch_deadline(self) -> None:
        while True:
            if self._deadline is not None:
                left = self._deadline - time.time()
                if left <= 0:
                    _log.info("task deadline passed", extra=fields(**self._log_fields))
                    self.end("deadline")
                    return
                await asyncio.sleep(min(left, 1.0))
            else:
                await asyncio.sleep(1.0)

    # --- proxy delivery --------------------------------------------------------------------------
    async def _ensure_proxy(self) -> None:
        """Start the egress proxy the first time the store holds a proxy-delivered credential.

        A failure (port in use, unusable route, no system CA bundle) is logged and retried on the
        next refresh; until then /readyz says why and stays 503.
        """
        proxied = [c for c in self.credentials.values() if c.delivery == "proxy"]
        if not proxied or self.ending:
            return
        if self.proxy is None:
            self.proxy = ProxyDelivery(self.config, self.metrics)
        if self.proxy.listening:  # a renewal or new issuance may change the proxy block: follow it
            try:
                self.proxy.update_routes([route_for(c) for c in sorted(proxied, key=lambda c: c.name)])
            except RouteError as exc:
                _log.error("unusable proxy route from the broker; the previous routes stay",
                           extra=fields(**self._log_fields, error=str(exc)))
            return
        try:
            routes = [route_for(c) for c in sorted(proxied, key=lambda c: c.name)]
            port = await self.proxy.start(routes, self.view)
        except (OSError, PodCAError, RouteError, ssl.SSLError) as exc:
            self._proxy_error = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"
            _log.error("cannot start the egress proxy; not ready", extra=fields(
                **self._log_fields, error=self._proxy_error))
            self._spawn(self._retry_proxy())
            return
        self._proxy_error = None
        _log.info("egress proxy ready", extra=fields(
            **self._log_fields, port=port, credentials=[r.credential for r in routes],
            hosts=sorted({h for r in routes for h in r.hosts}),
            egress="deny" if self.proxy.deny_unmatched else "allow"))

    async def _retry_proxy(self) -> None:
        await asyncio.sleep(5.0)
        await self._ensure_proxy()
        self._publish()

    # --- helpers ---------------------------------------------------------------------------------
    def _tighten_deadline(self, broker_at: float) -> None:
        """The broker's deadline (its clock, Unix time) on ours: the clocks may disagree by minutes."""
        at = broker_at - self._offset
        if self._deadline is None or at < self._deadline:
            self._deadline = at

    def _delay_after(self, exc: BrokerError, attempt: int, remaining: float | None,
                     max_delay: float = schedule.MAX_DELAY) -> float:
        """The wait before retry ``attempt``, capped by what is at stake for this call alone.

        ``remaining``: seconds left on the credential being fetched (0 or less: nothing valid, so
        retry within ``RECOVERY_MAX_DELAY``; more: up to a quarter of it); None for a call that
        guards no credential (the status long-poll). Another credential being missing does not
        shorten this one's backoff: in an outage that would have every pod retry every ~2 s.
        """
        if isinstance(exc, RateLimited):
            return max(schedule.MIN_DELAY, exc.retry_after)
        if not exc.retryable:
            return _NO_RETRY_DELAY
        base = _POLICY_BASE if isinstance(exc, PolicyDenied) else schedule.BASE_DELAY
        return schedule.backoff(attempt, self.rng, remaining=remaining, base=base, max_delay=max_delay)

    def _record_failure(self, credentials: Any, exc: BrokerError, attempt: int, delay: float) -> None:
        for name in credentials:
            self.metrics.refresh.labels(credential=name, result="failure").inc()
        _log.warning("broker call failed; retrying", extra=fields(
            **self._log_fields, credentials=list(credentials), code=exc.code, attempt=attempt,
            retry_in=round(delay, 2), error=str(exc)))

    def _accept(self, cred: IssuedCredential, what: str, *, sent: float, fresh: bool = True) -> bool:
        """Take one credential from an answer to a call made at ``sent`` (monotonic) into the store.

        False (nothing stored, nothing written) for a credential that was not asked for, or one that
        has no lifetime or had expired by the time it arrived: the caller counts that a failure.
        """
        if cred.name not in self.config.credentials:
            _log.warning("broker sent a credential that was not asked for; ignored",
                         extra=fields(**self._log_fields, credential=cred.name))
            return False
        received, local_now = time.monotonic(), self.now()
        offset = schedule.broker_offset(self._offset, cred.issued_at, local_now, fresh=fresh,
                                        round_trip=received - sent)
        if abs(offset - self._offset) > 2 * schedule.TIME_RESOLUTION:
            _log.warning("this node's clock disagrees with the broker's; timing credentials by the broker's",
                         extra=fields(**self._log_fields, broker_minus_local_seconds=round(offset, 1)))
        self._offset = offset
        broker_now = local_now + timedelta(seconds=offset)
        held = self.credentials.get(cred.name)
        stalled = held is not None and held.lease_ref == cred.lease_ref and cred.expires_at <= held.expires_at
        due = schedule.timing(cred.issued_at, cred.expires_at, broker_now, self.rng, stalled=stalled)
        if cred.expires_at <= cred.issued_at or due.expires_in <= 0:
            _log.warning("broker answer had expired on arrival; not used", extra=fields(
                **self._log_fields, credential=cred.name, lease=cred.lease_ref,
                issued_at=cred.issued_at.isoformat(), expires_at=cred.expires_at.isoformat()))
            return False
        self._due[cred.name] = (received + due.refresh_in, received + due.expires_in)
        self._arm_expiry(cred.name)
        # known to the redactor before it is visible on disk
        self.redactor.add_files(cred.name, dict(cred.files))
        self.credentials[cred.name] = cred
        self.metrics.refresh.labels(credential=cred.name, result="success").inc()
        self.metrics.credential_expiry.labels(credential=cred.name).set(cred.expires_at.timestamp())
        _log.info(f"credential {what}", extra=fields(
            **self._log_fields, credential=cred.name, provider=cred.provider, lease=cred.lease_ref,
            expires_at=cred.expires_at.isoformat(), files=sorted(cred.files)))
        return True

    def _publish(self) -> None:
        """Write the current set (file deliveries) atomically and update readiness.

        A failed write (ENOSPC on a too-small emptyDir, ...) leaves the sidecar not ready, is logged
        with its cause, counted as ``sidecar_refresh_total{result="write_failure"}`` per credential,
        and retried with backoff (never a busy loop); the writer has removed its partial set already.
        """
        if self.torn_down:
            return
        if self._write_retry is not None:
            self._write_retry.cancel()
            self._write_retry = None
        files = [CredentialFiles(c.name, c.provider, c.expires_at, c.files) if c.delivery == "file" else
                 CredentialFiles(c.name, c.provider, c.expires_at, {}, delivery=c.delivery,
                                 hosts=tuple(str(h) for h in (c.proxy or {}).get("hosts") or ()))
                 for n in self.config.credentials if (c := self.credentials.get(n))]
        try:
            self.writer.write(files)
        except (OSError, WriterError) as exc:
            self._write_failed(files, exc)
            return
        self._on_disk = {f.name for f in files}
        if self._write_error is not None:
            _log.info("credentials written after earlier failures", extra=fields(
                **self._log_fields, attempts=self._write_attempt + 1))
        self._write_error, self._write_attempt = None, 0
        asyncio.get_running_loop().call_later(self.writer.grace + 0.05, self._collect)
        ready, _ = self.readiness()
        self.metrics.ready.set(1 if ready else 0)

    def _write_failed(self, files: Sequence[CredentialFiles], exc: Exception) -> None:
        self._write_attempt += 1
        cause = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}" if isinstance(exc, OSError) \
            else f"{type(exc).__name__}: {exc}"
        self._write_error = cause
        self.metrics.ready.set(0)
        for f in files:
            self.metrics.refresh.labels(credential=f.name, result="write_failure").inc()
        delay = schedule.backoff(self._write_attempt, self.rng, max_delay=_WRITE_MAX_DELAY)
        _log.error("cannot write credentials; not ready", extra=fields(
            **self._log_fields, dir=self.config.dir, error=cause, attempt=self._write_attempt,
            retry_in=round(delay, 2), credentials=[f.name for f in files]))
        self._write_retry = asyncio.get_running_loop().call_later(delay, self._retry_write)

    def _retry_write(self) -> None:
        self._write_retry = None
        self._publish()

    def _collect(self) -> None:
        if not self.torn_down:
            with contextlib.suppress(OSError, WriterError):
                self.writer.collect()
