"""The broker's HTTPS API (docs/broker-api.md) over aiohttp, served with SPIFFE mutual TLS.

:func:`make_broker_app` builds the application (handlers decode, call authn/policy/providers/
leases, encode); :class:`BrokerServer` serves it with the broker's own X.509-SVID, taken from a
callable on every handshake so a rotated SVID is presented from the next connection on. Client
certificates are optional at the TLS layer so ``/healthz`` and the JWKS work without one; every
``/v1/*`` request needs a client SVID *and* its pod's bearer token.

Values travel only in issue/renew response bodies: never in a log record, an exception message,
a metric label, an Event or the TaskLease.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from taskcreds.operator import leases
from taskcreds.operator.broker import policy
from taskcreds.operator.broker.authn import Caller, ReviewCache, ReviewGuard, SpiffeIdTemplate, authenticate
from taskcreds.operator.broker.errors import (
    BadRequest,
    BrokerError,
    NotFound,
    PolicyDenied,
    ProviderFailed,
    RateLimited,
    TaskTerminal,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from taskcreds.operator.broker.ratelimit import TokenBuckets
from taskcreds.operator.broker.settings import BrokerSettings
from taskcreds.operator.cluster import Cluster, ClusterError
from taskcreds.operator.providers.base import (
    Issued,
    IssueRequest,
    NotRevocable,
    Provider,
    ProviderError,
    Undelivered,
)
from taskcreds.operator.providers.replica import Replica, replica_from_env
from taskcreds.operator.sources import Source, SourceError, resolve_source
from taskcreds.operator.taskstatus import TaskStatusHub

from taskcreds import names
from taskcreds.durations import DurationError, parse_duration
from taskcreds.logs import fields, quiet_http_parser_errors
from taskcreds.metrics import OperatorMetrics
from taskcreds.svid import (
    SvidError,
    X509SvidMaterial,
    load_svid,
    parse_spiffe_id,
    peer_validity,
    server_context,
    spiffe_id_of,
)

__all__ = ["make_broker_app", "BrokerServer", "BROKER_KEY", "Broker", "trust_domain_of"]

log = logging.getLogger("taskcreds.broker")

_TASK = re.compile(names.TASK_ID_PATTERN)
HANDSHAKE_TIMEOUT = 5.0
#: seconds a stopping listener waits for its handlers (then cancels them; the sequences they started
#: run on and are waited for by :meth:`Broker.drain`)
SHUTDOWN_TIMEOUT = 1.0
_T = TypeVar("_T")
_PRINTABLE = re.compile(r"[^\x20-\x7e]")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Broker:
    """The request handlers and their collaborators (one per process)."""

    def __init__(
        self,
        *,
        cluster: Cluster,
        providers: Mapping[str, Provider],
        settings: BrokerSettings,
        metrics: OperatorMetrics,
        hub: TaskStatusHub,
        trust_domain: str,
        now: Callable[[], datetime] = _utcnow,
        replica: Replica | None = None,
    ) -> None:
        self.cluster = cluster
        #: this process, named on pending entries (the replica that was asking the source)
        self.replica = replica or replica_from_env(settings.namespace)
        self.providers = dict(providers)
        self.settings = settings
        self.metrics = metrics
        self.hub = hub
        self.template = SpiffeIdTemplate(settings.spiffe_id_template, trust_domain)
        self.now = now
        self.monotonic: Callable[[], float] = time.monotonic  # the rate limiters' clock (tests move it)
        #: requests per pod (after authentication)
        self.pod_limits = TokenBuckets(
            settings.rate_per_second, settings.rate_burst, lambda: self.monotonic()
        )
        self.reviews = (
            ReviewCache(settings.review_cache_seconds) if settings.review_cache_seconds > 0 else None
        )
        #: TokenReviews per client SPIFFE ID (before authentication: a token that fails costs a review)
        self.review_guard = ReviewGuard(
            TokenBuckets(
                settings.failed_review_rate_per_second,
                settings.failed_review_burst,
                lambda: self.monotonic(),
            ),
            ReviewCache(settings.failed_review_cache_seconds, clock=lambda: self.monotonic())
            if settings.failed_review_cache_seconds > 0
            else None,
        )
        self.ready = True
        self._inflight: set[asyncio.Task[Any]] = set()

    # --- plumbing -----------------------------------------------------------------------------
    async def _caller(self, request: web.Request) -> Caller:
        if not self.ready:
            raise Unavailable("the broker is shutting down; retry against another replica")
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        peer = self._peer_id(ssl_object)
        window = peer_validity(ssl_object)
        if window is not None and not window[0] <= self.now() <= window[1]:
            # the handshake checked the dates; a kept-alive connection can outlive them
            refused = Unauthenticated(
                f"the client X.509-SVID is valid from {leases.format_time(window[0])} to "
                f"{leases.format_time(window[1])}, not now: reconnect with a current SVID"
            )
            refused.close_connection = True
            raise refused
        caller = await authenticate(
            self.cluster,
            self.template,
            peer,
            request.headers.get("Authorization"),
            self.reviews,
            guard=self.review_guard,
        )
        self._rate_limit(caller.pod_uid)
        return caller

    @staticmethod
    def _peer_id(ssl_object: Any) -> str | None:
        """The client's SPIFFE ID; a client certificate that is no X.509-SVID is refused saying why
        (not treated as "no certificate")."""
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return None
        try:
            return spiffe_id_of(der)
        except SvidError as exc:
            raise Unauthenticated(f"the client certificate is not a usable X.509-SVID: {exc}") from None

    @property
    def _buckets(self) -> dict[str, Any]:
        """The per-pod buckets (the soak counts them)."""
        return self.pod_limits.entries

    def _rate_limit(self, key: str) -> None:
        wait = self.pod_limits.take(key)
        if wait is not None:
            raise RateLimited(
                f"too many requests from this pod: {self.settings.rate_per_second:g} per second "
                f"sustained, bursts of {self.settings.rate_burst}; retry after the Retry-After seconds",
                wait,
            )

    async def _json(self, request: web.Request, allowed: set[str], required: set[str]) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > self.settings.max_body_bytes:
            raise TooLarge(
                f"body of {request.content_length} bytes is over the limit of {self.settings.max_body_bytes}"
            )
        try:
            async with asyncio.timeout(self.settings.body_timeout):
                raw = await request.read()
        except TimeoutError:
            raise BadRequest(f"body not received within {self.settings.body_timeout:g} s") from None
        except web.HTTPRequestEntityTooLarge:
            raise TooLarge(f"body is over the limit of {self.settings.max_body_bytes} bytes") from None
        if len(raw) > self.settings.max_body_bytes:
            raise TooLarge(f"body is over the limit of {self.settings.max_body_bytes} bytes")
        try:
            doc = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("body is not JSON") from None
        except RecursionError:  # json.loads recurses per level: 64 KiB of "[" is far deeper than it goes
            raise BadRequest("body is not JSON: nested too deeply") from None
        if not isinstance(doc, dict):
            raise BadRequest("body must be a JSON object")
        unknown = sorted(set(doc) - allowed)
        if unknown:
            raise BadRequest(f"unknown field(s) {', '.join(unknown)}; accepted: {', '.join(sorted(allowed))}")
        missing = sorted(required - set(doc))
        if missing:
            raise BadRequest(f"missing field(s) {', '.join(missing)}")
        return doc

    @staticmethod
    def _task(value: Any) -> str:
        if not isinstance(value, str) or not _TASK.fullmatch(value):
            raise BadRequest(f"task {value!r} is not a task id matching {names.TASK_ID_PATTERN}")
        return value

    async def _pod(self, caller: Caller) -> dict[str, Any] | None:
        try:
            return await self.cluster.get_pod(caller.namespace, caller.pod)
        except ClusterError as exc:
            raise Unavailable(
                f"cannot read pod {caller.namespace}/{caller.pod}: {type(exc).__name__}"
            ) from None

    async def _lease(self, caller: Caller, task: str) -> dict[str, Any] | None:
        """This pod's TaskLease for ``task`` (None too when the name is still a predecessor's)."""
        try:
            lease = await self.cluster.get_task_lease(caller.namespace, leases.lease_name(caller.pod, task))
        except ClusterError as exc:
            raise Unavailable(f"cannot read the TaskLease: {type(exc).__name__}") from None
        return lease if leases.owned_by(lease, caller.pod_uid) else None

    def _ended(self, caller: Caller, lease: Mapping[str, Any] | None) -> str | None:
        status = (lease or {}).get("status") or {}
        if status.get("phase") in (leases.REVOKING, leases.REVOKED):
            return str(status.get("reason") or "cancelled")
        state = self.hub.get(caller.pod_uid)
        return state.reason if state is not None and state.terminal else None

    async def _view(self, caller: Caller, task: str) -> tuple[dict[str, Any], policy.TaskView, dict | None]:
        pod = await self._pod(caller)
        if pod is not None and pod["metadata"].get("uid") == caller.pod_uid:
            self.hub.update(pod)
        lease = await self._lease(caller, task)
        view = policy.check_task(
            pod,
            namespace=caller.namespace,
            pod_name=caller.pod,
            pod_uid=caller.pod_uid,
            service_account=caller.service_account,
            task=task,
            now=self.now(),
            ended=self._ended(caller, lease),
        )
        assert pod is not None
        return pod, view, lease

    async def _one_task_per_pod(self, view: policy.TaskView) -> None:
        """First issue of a task to a pod without a pinned task (no injected sidecar): refuse it when
        the pod already has a TaskLease of another task. One list of the namespace's TaskLeases, only
        until this task's own TaskLease exists (``Cluster`` has no label selector for the pod-uid label)."""
        try:
            found = await self.cluster.list_task_leases(view.namespace)
        except ClusterError as exc:
            raise Unavailable(f"cannot list TaskLeases: {type(exc).__name__}") from None
        policy.one_task_per_pod(view, found)

    def _too_many_live(self, exc: leases.TooManyLive, task: str) -> RateLimited:
        now = self.now()
        wait = (exc.next_expiry - now).total_seconds() if exc.next_expiry is not None else 60.0
        head = (f"credential {exc.credential!r} already has {exc.live} live leases for task {task!r} of "
                f"this pod, the most allowed ({exc.limit})")
        if exc.undelivered:
            # leases the task never got (the source could neither hand them out nor take them back):
            # renewing cannot free them; only their revocation at the source does
            renewable = exc.live - exc.undelivered
            head += (
                f"; {exc.undelivered} of them were granted nothing and wait to be revoked at their "
                "source (they cannot be renewed"
                + (f"; last error: {exc.last_error}" if exc.last_error else "")
                + ")"
            )
            advice = (
                f"renew one of the other {renewable} (POST /v1/credentials/{exc.credential}/renew) or "
                if renewable else ""
            ) + "retry once the sweep has revoked one (Retry-After)"
        else:
            advice = (f"renew one (POST /v1/credentials/{exc.credential}/renew) instead of issuing again, "
                      "or retry once the oldest expires (Retry-After)")
        return RateLimited(f"{head}: {advice}; nothing was issued", max(1.0, wait))

    def _live_limit(self, lease: Mapping[str, Any] | None, grants: list[policy.Grant], task: str) -> None:
        """Refuse before issuing anything when a credential already has its most live leases."""
        entries = ((lease or {}).get("status") or {}).get("leases") or []
        adding = [{"credential": g.credential} for g in grants]
        try:
            leases.check_live_limit(entries, adding, self.settings.max_live_leases, self.now())
        except leases.TooManyLive as exc:
            raise self._too_many_live(exc, task) from None

    @staticmethod
    def _asked_for(view: policy.TaskView, wanted: list[str]) -> list[str]:
        """Only names the pod's annotation lists are looked up (the rest are refused unread): a body
        naming thousands of credentials must not become thousands of API server calls."""
        return [n for n in wanted if n in view.request.credentials]

    async def _sources(self, namespace: str, wanted: list[str]) -> dict[str, Source | SourceError | None]:
        async def one(name: str) -> Source | SourceError | None:
            try:
                return await resolve_source(self.cluster, namespace, name)
            except SourceError as exc:
                return exc

        try:
            found = await asyncio.gather(*(one(n) for n in wanted))
        except ClusterError as exc:
            raise Unavailable(f"cannot read CredentialSources: {type(exc).__name__}") from None
        return dict(zip(wanted, found, strict=True))

    def _issue_request(
        self,
        view: policy.TaskView,
        grant: policy.Grant,
        lease_target: Mapping[str, str] | None = None,
        intent: str = "",
    ) -> IssueRequest:
        return IssueRequest(
            credential=grant.credential,
            source_spec=grant.source.spec,
            source_namespace=grant.source.namespace,
            namespace=view.namespace,
            pod=view.pod,
            pod_uid=view.pod_uid,
            service_account=view.service_account,
            task=view.request.task,
            ttl_seconds=grant.ttl_seconds,
            lease_target=lease_target,
            intent=intent,
        )

    def _pending(self, grant: policy.Grant, intent: str) -> dict[str, Any]:
        # a source that issues longer than asked (GitHub: always 1 h) bounds the value by that
        floor = getattr(self.providers[grant.source.provider], "min_lifetime_seconds", 0)
        return leases.pending_entry(
            grant.credential, grant.source.provider, grant.source.ref, intent, grant.ttl_seconds,
            target=self.replica.target(), now=self.now(), source_floor_seconds=floor,
        )

    async def _write_pending(
        self, pod: dict[str, Any], task: str, entries: list[dict[str, Any]], *, max_live: int | None
    ) -> dict[str, Any]:
        """Record the pending entries before any source is asked (nothing issued yet when it fails):
        a crash after the source answered then leaves them for the sweep or the task end to revoke."""
        try:
            return await self._record_timed(
                pod, task, entries, attempts=self.settings.record_attempts, max_live=max_live
            )
        except leases.TooManyLive as exc:
            raise self._too_many_live(exc, task) from None
        except leases.LeaseEnded as exc:
            raise TaskTerminal(
                exc.reason, f"task {task!r} has ended ({exc.reason}); nothing was issued"
            ) from None
        except ClusterError as exc:
            raise Unavailable(
                f"cannot write the TaskLease ({type(exc).__name__}); nothing was issued"
            ) from None

    async def _timed(self, provider: Provider, call: Awaitable[Issued]) -> Issued:
        start = time.perf_counter()
        try:
            return await call
        finally:
            self.metrics.issue_duration.labels(provider=provider.name).observe(time.perf_counter() - start)

    @staticmethod
    def _credential_json(grant: policy.Grant, issued: Issued) -> dict[str, Any]:
        """One credential object of an answer; values only in ``files`` (``proxy`` is hosts/template)."""
        doc: dict[str, Any] = {
            "name": grant.credential,
            "provider": grant.source.provider,
            "leaseRef": issued.lease_ref,
            "issuedAt": leases.format_time(issued.issued_at),
            "expiresAt": leases.format_time(issued.expires_at),
            "renewable": issued.renewable,
            "static": issued.static,
            "delivery": grant.source.delivery,
            "files": dict(issued.files),
        }
        if grant.source.proxy is not None:
            doc["proxy"] = grant.source.proxy.to_json()
        return doc

    async def _to_completion(self, sequence: Coroutine[Any, Any, _T], caller: Caller, task: str) -> _T:
        """Run an issue → record (→ undo → record the rest) sequence to its end, client or not.

        aiohttp cancels a handler when its client hangs up (sidecar timeout, sidecar teardown,
        shutdown). A credential issued at its source must then still be recorded on the TaskLease
        (so the task end revokes it) or revoked again, so the sequence runs as a task the handler
        does not own; the handler only waits for it, shielded. :meth:`drain` waits at shutdown.
        """
        job = asyncio.get_running_loop().create_task(sequence)
        self._inflight.add(job)
        job.add_done_callback(self._inflight.discard)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            if not job.done():
                log.info(
                    "client went away; what it was issued is still recorded or revoked",
                    extra=fields(namespace=caller.namespace, pod=caller.pod, task=task),
                )
                job.add_done_callback(_unawaited)
            raise

    async def drain(self, seconds: float | None = None) -> None:
        """Wait (at most ``seconds``, default ``settings.drain_timeout``) for issue/renew sequences
        whose client has gone."""
        if seconds is None:
            seconds = self.settings.drain_timeout
        if not self._inflight:
            return
        _, pending = await asyncio.wait(set(self._inflight), timeout=seconds)
        if pending:
            log.error(
                "issue sequences still running at shutdown; their credentials may outlive the task",
                extra=fields(count=len(pending)),
            )

    async def _record_timed(
        self, pod: dict[str, Any], task: str, entries: list[dict[str, Any]], **kw: Any
    ) -> dict[str, Any]:
        """:func:`leases.record_issued` within ``record_timeout``: a stuck API server is an error
        (undo, 503), not a request that holds a live credential forever."""
        try:
            async with asyncio.timeout(self.settings.record_timeout):
                return await leases.record_issued(self.cluster, pod, task, entries, **kw)
        except TimeoutError:
            raise ClusterError(f"TaskLease not written within {self.settings.record_timeout:g} s") from None

    async def _undo(self, done: list[tuple[policy.Grant, Issued]]) -> list[tuple[policy.Grant, Issued]]:
        """Revoke what this request issued; returns those that could not be revoked (to record)."""

        async def one(grant: policy.Grant, issued: Issued) -> bool:
            try:
                await self.providers[grant.source.provider].revoke(
                    issued.lease_ref, grant.source.spec, grant.source.namespace
                )
            except NotRevocable:
                return True
            except Exception:  # recorded below; revoked at task end
                return False
            return True

        jobs = [asyncio.ensure_future(one(g, i)) for g, i in done]
        if not jobs:
            return []
        _, pending = await asyncio.wait(jobs, timeout=self.settings.undo_timeout)
        for job in pending:  # a source that does not answer: recorded instead, revoked at task end
            job.cancel()
        return [pair for pair, job in zip(done, jobs, strict=True) if job in pending or not job.result()]

    # --- handlers -----------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def jwks(self, request: web.Request) -> web.Response:
        provider = self.providers.get("jwt")
        if provider is None:
            return web.json_response({"keys": []})
        try:
            await provider.ensure_keys()  # type: ignore[attr-defined]
        except ProviderError as exc:
            raise Unavailable(str(exc)) from None
        return web.json_response(provider.jwks(), headers={"Cache-Control": "max-age=60"})  # type: ignore[attr-defined]

    async def jwt_revoked(self, request: web.Request) -> web.Response:
        provider = self.providers.get("jwt")
        if provider is not None and hasattr(provider, "sync_revoked"):
            await provider.sync_revoked()  # the TaskLeases are the shared record: same on every replica
        revoked = provider.revoked() if provider is not None else []  # type: ignore[attr-defined]
        return web.json_response({"revoked": revoked})

    async def issue(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        doc = await self._json(request, {"task", "credentials", "ttl"}, {"task"})
        task = self._task(doc["task"])
        wanted = doc.get("credentials")
        if wanted is not None and (
            not isinstance(wanted, list) or not wanted or not all(isinstance(n, str) for n in wanted)
        ):
            raise BadRequest("credentials must be a non-empty list of CredentialSource names")
        ttl = doc.get("ttl")
        if ttl is not None and not isinstance(ttl, str):
            raise BadRequest("ttl must be a Go-style duration string such as 15m")
        pod, view, lease = await self._view(caller, task)
        names_wanted = list(dict.fromkeys(wanted)) if wanted else list(view.request.credentials)
        grants = policy.check_credentials(
            view,
            names_wanted,
            await self._sources(caller.namespace, self._asked_for(view, names_wanted)),
            ttl=policy.requested_ttl(ttl),
            providers=list(self.providers),
        )
        if lease is None and policy.pinned_task(pod) is None:
            await self._one_task_per_pod(view)
        self._live_limit(lease, grants, task)

        done = await self._to_completion(self._issue_and_record(caller, pod, view, grants), caller, task)
        state = self.hub.get(caller.pod_uid)
        return web.json_response(
            {
                "task": task,
                "taskStatus": state.status if state else view.request.task_status,
                "deadline": leases.format_time(view.deadline) if view.deadline else None,
                "credentials": [self._credential_json(g, i) for g, i in done],
            }
        )

    async def _issue_and_record(
        self, caller: Caller, pod: dict[str, Any], view: policy.TaskView, grants: list[policy.Grant]
    ) -> list[tuple[policy.Grant, Issued]]:
        """Issue every grant and record them all on the TaskLease, or revoke them all again.

        What can be neither revoked nor recorded is logged (leaseRefs only). Runs to its end even
        when the client has gone (:meth:`_to_completion`).
        """
        task = view.request.task
        intents = {g.credential: leases.new_intent() for g in grants}
        known = await self._write_pending(
            pod, task, [self._pending(g, intents[g.credential]) for g in grants],
            max_live=self.settings.max_live_leases,
        )

        async def one(grant: policy.Grant) -> Issued:
            provider = self.providers[grant.source.provider]
            request = self._issue_request(view, grant, intent=intents[grant.credential])
            return await self._timed(provider, provider.issue(request))

        asked_at = self.now()
        results = await asyncio.gather(*(one(g) for g in grants), return_exceptions=True)
        # what the task was granted, not what the source honours (GitHub: 1 h whatever was asked)
        source_ends: dict[str, datetime] = {}
        done = []
        for grant, result in zip(grants, results, strict=True):
            if isinstance(result, Issued):
                done.append((grant, self._granted(grant, result, asked_at, source_ends)))
            elif isinstance(result, Undelivered):  # live at its source, not handed out: revoke or record
                done.append((grant, self._granted_nothing(result, source_ends)))
        failed = [(g, r) for g, r in zip(grants, results, strict=True) if not isinstance(r, Issued)]
        if failed:
            await self._revoke_or_record(pod, task, done, intents, source_ends)
            grant, exc = failed[0]
            if isinstance(exc, asyncio.CancelledError):
                raise exc
            if not isinstance(exc, ProviderError):
                log.error(
                    "provider failed unexpectedly",
                    extra=fields(provider=grant.source.provider, error=type(exc).__name__),
                )
            cause = str(exc) if isinstance(exc, ProviderError) else f"{grant.source.provider}: internal error"
            raise ProviderFailed(f"credential {grant.credential!r}: {cause}; nothing was issued")
        entries = [
            leases.lease_entry(
                g.credential, g.source.provider, g.source.ref, i, intents[g.credential],
                source_expires_at=source_ends.get(i.lease_ref),
            )
            for g, i in done
        ]
        try:
            # each resolves its pending entry, which already counted against max_live_leases
            await self._record_timed(
                pod, task, entries, attempts=self.settings.record_attempts, known=known
            )
        except leases.LeaseEnded as exc:
            await self._revoke_or_record(pod, task, done, intents, source_ends)
            raise TaskTerminal(
                exc.reason, f"task {task!r} has ended ({exc.reason}); nothing was issued"
            ) from None
        except ClusterError as exc:
            await self._revoke_or_record(pod, task, done, intents, source_ends)
            raise Unavailable(
                f"cannot record the leases on the TaskLease ({type(exc).__name__}); nothing was issued"
            ) from None
        for grant, issued in done:
            self.metrics.credentials_issued.labels(provider=grant.source.provider).inc()
            self.metrics.leases_active.labels(provider=grant.source.provider).inc()
            log.info(
                "credential issued",
                extra=fields(
                    namespace=caller.namespace,
                    pod=caller.pod,
                    task=task,
                    credential=grant.credential,
                    provider=grant.source.provider,
                    lease_ref=issued.lease_ref,
                    expires_at=leases.format_time(issued.expires_at),
                    source_expires_at=_format_optional(source_ends.get(issued.lease_ref)),
                ),
            )
        return done

    def _granted(
        self, grant: policy.Grant, issued: Issued, asked_at: datetime, source_ends: dict[str, datetime]
    ) -> Issued:
        """``issued`` as the task may hold it (:func:`leases.cap_to_grant`); a later source expiry
        goes into ``source_ends`` (by leaseRef) for the TaskLease entry's ``sourceExpiresAt``.
        A cut lease is granted at least :data:`leases.MIN_CAPPED_GRANT`, never above ``maxTTL``."""
        floor = min(leases.MIN_CAPPED_GRANT, timedelta(seconds=float(grant.source.max_ttl)))
        capped, source_end = leases.cap_to_grant(issued, grant.ttl_seconds, asked_at, floor=floor)
        if source_end is not None:
            source_ends[capped.lease_ref] = source_end
        return capped

    @staticmethod
    def _granted_nothing(failure: Undelivered, source_ends: dict[str, datetime]) -> Issued:
        """What a source created but the issue could not hand out (nor give back): granted nothing,
        so ``expiresAt`` is its issue time and ``sourceExpiresAt`` its real end. Recorded so, the
        next sweep revokes it (reason ``expired``) and retries until it is dead at its source."""
        live = failure.issued
        if live.expires_at > live.issued_at:
            source_ends[live.lease_ref] = live.expires_at
        return replace(live, expires_at=live.issued_at)

    async def _revoke_or_record(
        self,
        pod: dict[str, Any],
        task: str,
        done: list[tuple[policy.Grant, Issued]],
        intents: Mapping[str, str],
        source_ends: Mapping[str, datetime],
    ) -> None:
        """Revoke what this request issued; record on the TaskLease what could not be revoked (in
        place of its pending entry) and drop the pending entries of the rest — one write.
        ``source_ends``: the source's own expiry of leases cut to their grant (by leaseRef)."""
        leftover = await self._undo(done)
        entries = [
            leases.lease_entry(
                g.credential, g.source.provider, g.source.ref, i, intents.get(g.credential),
                source_expires_at=source_ends.get(i.lease_ref),
            )
            for g, i in leftover
        ]
        kept = {g.credential for g, _ in leftover}
        drop = [intent for credential, intent in intents.items() if credential not in kept]
        await self._record_quietly(pod, task, entries, drop)

    async def _record_quietly(
        self, pod: dict[str, Any], task: str, entries: list[dict[str, Any]], drop: list[str]
    ) -> None:
        """Best effort: keep a record of leases we could not revoke, so the task end revokes them, and
        remove the pending entries of issues that left nothing live (else the sweep reaps them)."""
        if not entries and not drop:
            return
        try:
            await self._record_timed(pod, task, entries, drop_intents=drop, strict=False)
        except (leases.LeaseEnded, ClusterError):
            if entries:
                lease = leases.lease_name(pod["metadata"]["name"], task)
                log.error(
                    "issued lease could be neither revoked nor recorded",
                    extra=fields(lease=lease, lease_refs=[e["leaseRef"] for e in entries]),
                )

    async def renew(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        name = request.match_info["name"]
        doc = await self._json(request, {"task", "leaseRef", "ttl"}, {"task", "leaseRef"})
        task = self._task(doc["task"])
        lease_ref = doc["leaseRef"]
        ttl = doc.get("ttl")
        if not isinstance(lease_ref, str) or not lease_ref or (ttl is not None and not isinstance(ttl, str)):
            raise BadRequest("leaseRef must be a non-empty string and ttl a Go-style duration string")
        pod, view, lease = await self._view(caller, task)
        grant = policy.check_credentials(
            view,
            [name],
            await self._sources(caller.namespace, self._asked_for(view, [name])),
            ttl=policy.requested_ttl(ttl),
            providers=list(self.providers),
        )[0]
        entry = _renewable_entry(lease, name, lease_ref, task)
        issued = await self._to_completion(
            self._renew_and_record(caller, pod, view, grant, lease_ref, entry.get("target")), caller, task
        )
        return web.json_response(self._credential_json(grant, issued))

    async def _renew_and_record(
        self,
        caller: Caller,
        pod: dict[str, Any],
        view: policy.TaskView,
        grant: policy.Grant,
        lease_ref: str,
        lease_target: Mapping[str, str] | None = None,
    ) -> Issued:
        """Renew at the source and record it; a replacement that cannot be recorded is revoked, and
        what cannot be revoked either is recorded when possible (as for issue). Runs to its end even
        when the client has gone (:meth:`_to_completion`)."""
        task, name = view.request.task, grant.credential
        provider = self.providers[grant.source.provider]
        # a renewal may issue a replacement: pending first, as for an issue (never refused by the cap)
        intent = leases.new_intent()
        known = await self._write_pending(pod, task, [self._pending(grant, intent)], max_live=None)
        # read again on the write's resourceVersion: a renewal of the same lease that finished
        # meanwhile (another replica, a retried request) superseded it; renewing it again would mint
        # a live credential outside max_live_leases
        try:
            _renewable_entry(known, name, lease_ref, task)
        except NotFound:
            await self._record_quietly(pod, task, [], [intent])
            raise
        try:
            request = self._issue_request(view, grant, lease_target, intent)
            asked_at = self.now()
            issued = await self._timed(provider, provider.renew(lease_ref, request))
        except ProviderError as exc:
            if isinstance(exc, Undelivered):  # a replacement live at its source: revoke or record it
                ends: dict[str, datetime] = {}
                live = self._granted_nothing(exc, ends)
                await self._revoke_or_record(pod, task, [(grant, live)], {name: intent}, ends)
            else:
                await self._record_quietly(pod, task, [], [intent])
            raise ProviderFailed(f"credential {name!r}: {exc}") from None
        # the same rule as an issue: a replacement (github-app: a new 1 h token) or an extension is
        # granted its TTL from now, and cut there when its source honours it longer
        source_ends: dict[str, datetime] = {}
        issued = self._granted(grant, issued, asked_at, source_ends)
        source_end = source_ends.get(issued.lease_ref)
        replaced = issued.lease_ref != lease_ref
        try:
            if replaced:
                entry = leases.lease_entry(
                    name, grant.source.provider, grant.source.ref, issued, intent,
                    source_expires_at=source_end,
                )
                # an old lease only another replica can revoke: marked so that replica's sweep does;
                # otherwise the provider revoked it while renewing (Provider.renew): recorded so, and
                # it no longer counts as live (max_live_leases)
                stamp = leases.format_time(self.now())
                superseded = (
                    {lease_ref: {"supersededAt": stamp}}
                    if issued.superseded_live
                    else {lease_ref: {"revokedAt": stamp, "revokeReason": "superseded"}}
                )
                await self._record_timed(pod, task, [entry], replace=superseded, known=known)
            else:  # the same lease, extended: no new credential, its pending entry goes
                expiry = {lease_ref: {
                    "expiresAt": leases.format_time(issued.expires_at),
                    "sourceExpiresAt": _format_optional(source_end),  # None: no longer cut (removed)
                }}
                await self._record_timed(pod, task, [], replace=expiry, drop_intents=[intent], known=known)
        except leases.LeaseEnded as exc:
            await self._revoke_or_record(pod, task, [(grant, issued)], {name: intent}, source_ends)
            raise TaskTerminal(exc.reason, f"task {task!r} has ended ({exc.reason})") from None
        except leases.ReplacedGone as exc:
            # revoked or superseded after the renewal started: never answer it. A new lease is
            # revoked (recorded if that fails); an extension of the same lease is revoked already
            if replaced:
                await self._revoke_or_record(pod, task, [(grant, issued)], {name: intent}, source_ends)
            else:
                await self._record_quietly(pod, task, [], [intent])
            log.info(
                "renewal refused: its lease was revoked or superseded meanwhile",
                extra=fields(namespace=caller.namespace, pod=caller.pod, task=task, credential=name,
                             lease_ref=lease_ref, detail=exc.why),
            )
            raise NotFound(
                f"no active lease {lease_ref!r} of credential {name!r} for task {task!r} of this pod "
                f"({exc.why} while renewing; issue a new credential instead)"
            ) from None
        except ClusterError as exc:
            if replaced:
                await self._revoke_or_record(pod, task, [(grant, issued)], {name: intent}, source_ends)
            else:
                await self._record_quietly(pod, task, [], [intent])
            raise Unavailable(f"cannot record the renewal on the TaskLease ({type(exc).__name__})") from None
        self.metrics.credentials_issued.labels(provider=grant.source.provider).inc()
        if replaced and not issued.superseded_live:  # one live lease for another
            self.metrics.credentials_revoked.labels(provider=grant.source.provider, reason="superseded").inc()
        elif replaced:
            self.metrics.leases_active.labels(provider=grant.source.provider).inc()
        log.info(
            "credential renewed",
            extra=fields(
                namespace=caller.namespace,
                pod=caller.pod,
                task=task,
                credential=name,
                lease_ref=issued.lease_ref,
                previous_lease_ref=lease_ref,
            ),
        )
        return issued

    async def revoke(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        task = self._task(request.match_info["task"])
        doc = await self._json(request, {"reason"}, set())
        text = doc.get("reason") or "requested"
        if not isinstance(text, str) or len(text) > 64:
            raise BadRequest("reason must be a string of at most 64 characters")
        text = _PRINTABLE.sub("?", text)
        pod: dict[str, Any] | None
        try:
            pod, _, _ = await self._view(caller, task)
        except TaskTerminal:
            pod = await self._pod(caller)  # already over: still idempotent
        if pod is None or pod["metadata"].get("uid") != caller.pod_uid:
            raise NotFound(f"pod {caller.namespace}/{caller.pod} with uid {caller.pod_uid} does not exist")
        self.hub.end(caller.pod_uid, "cancelled", task=task)
        try:
            ended = await leases.record_ended(self.cluster, pod, task, "cancelled")
            await self.cluster.emit_event(
                pod, "TaskRevokeRequested", f"the sidecar asked to revoke task {task!r}: {text}"
            )
            outcome = await leases.revoke_task(
                self.cluster,
                self.providers,
                caller.namespace,
                ended["metadata"]["name"],
                "cancelled",
                metrics=self.metrics,
                backoff=leases.Backoff(attempts=2),
            )
            lease = await self.cluster.get_task_lease(caller.namespace, ended["metadata"]["name"])
        except ClusterError as exc:
            raise Unavailable(f"cannot record the revocation ({type(exc).__name__}); retry") from None
        entries = ((lease or {}).get("status") or {}).get("leases") or []
        revoked = sorted({e["credential"] for e in entries if e.get("revokedAt")})
        log.info(
            "task revoked by its sidecar",
            extra=fields(
                namespace=caller.namespace, pod=caller.pod, task=task, detail=text, done=outcome.done
            ),
        )
        return web.json_response({"task": task, "revoked": revoked})

    async def status(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        task = self._task(request.match_info["task"])
        try:
            wait = (
                parse_duration(request.query.get("wait", ""))
                if "wait" in request.query
                else self.settings.default_wait
            )
        except DurationError as exc:
            raise BadRequest(f"wait: {exc}") from None
        wait = min(wait, self.settings.max_wait)
        known = request.query.get("known") or None
        pod = await self._pod(caller)
        if pod is not None and pod["metadata"].get("uid") == caller.pod_uid:
            pod_task = (pod["metadata"].get("annotations") or {}).get(names.ANNOTATION_TASK)
            if pod_task != task:
                raise PolicyDenied(
                    "task_mismatch",
                    f"task {task!r} is not the task of pod {caller.namespace}/{caller.pod} ({pod_task!r})",
                )
            self.hub.update(pod)
            ended = self._ended(caller, await self._lease(caller, task))
            if ended is not None:
                self.hub.end(caller.pod_uid, ended, task=task)
        elif self.hub.get(caller.pod_uid) is None:
            raise NotFound(f"pod {caller.namespace}/{caller.pod} with uid {caller.pod_uid} does not exist")
        state = await self.hub.wait(caller.pod_uid, known, wait)
        if state is None:
            raise NotFound(f"pod {caller.namespace}/{caller.pod} is not known")
        return web.json_response({**state.to_json(), "task": task})


def _renewable_entry(
    lease: Mapping[str, Any] | None, name: str, lease_ref: str, task: str
) -> dict[str, Any]:
    """The TaskLease entry a renewal may renew, else 404 not_found. Only an active lease qualifies:
    not pending, not revoked, not superseded. A superseded one (a renewal on another replica, or
    after the source moved, replaced it; its holder revokes it) renewed again would mint one more
    live credential that max_live_leases never counts (leases.live_entries skips it)."""
    entry = leases.find_entry(lease, name, lease_ref)
    if entry is None or entry.get("pending"):
        why = ""
    elif entry.get("revokedAt"):
        why = f" (revoked: {entry.get('revokeReason') or 'no reason recorded'})"
    elif entry.get("supersededAt"):
        why = " (already replaced by a renewal; issue a new credential instead)"
    else:
        return entry
    raise NotFound(f"no active lease {lease_ref!r} of credential {name!r} for task {task!r} of this pod{why}")


def _format_optional(value: datetime | None) -> str | None:
    return leases.format_time(value) if value is not None else None


def _unawaited(job: asyncio.Task[Any]) -> None:
    """Done-callback of a sequence whose client went away: nobody else sees how it ended."""
    if job.cancelled():
        log.error("issue sequence cancelled; its credentials may be neither recorded nor revoked")
        return
    exc = job.exception()
    if exc is not None and not isinstance(exc, BrokerError):  # refusals: leftovers logged already
        log.error("issue sequence failed after its client went away", extra=fields(error=type(exc).__name__))


BROKER_KEY: web.AppKey[Broker] = web.AppKey("broker", Broker)


def _endpoint(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    broker = request.app[BROKER_KEY]
    try:
        response = await handler(request)
    except BrokerError as exc:
        if isinstance(exc, PolicyDenied):
            broker.metrics.policy_denials.labels(reason=exc.reason).inc()
        elif isinstance(exc, TaskTerminal):
            broker.metrics.policy_denials.labels(reason="task_terminal").inc()
        if exc.status >= 500 or exc.status in (401, 403):
            log.info(
                "request refused",
                extra=fields(endpoint=_endpoint(request), code=exc.code, message=exc.message),
            )
        response = web.json_response(exc.body(), status=exc.status, headers=exc.headers())
        if exc.close_connection:
            response.force_close()
    except web.HTTPException as exc:
        code = {404: "not_found", 405: "bad_request", 413: "too_large"}.get(exc.status, "bad_request")
        response = web.json_response({"error": {"code": code, "message": exc.reason}}, status=exc.status)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # no traceback to the client; type only in the log (locals may hold values)
        log.error(
            "broker handler failed", extra=fields(endpoint=_endpoint(request), error=type(exc).__name__)
        )
        response = web.json_response(
            {"error": {"code": "unavailable", "message": "internal error; retry"}}, status=503
        )
    broker.metrics.broker_requests.labels(endpoint=_endpoint(request), code=str(response.status)).inc()
    return response


def make_broker_app(
    *,
    cluster: Cluster,
    providers: Mapping[str, Provider],
    settings: BrokerSettings,
    metrics: OperatorMetrics,
    trust_domain: str,
    hub: TaskStatusHub | None = None,
    now: Callable[[], datetime] = _utcnow,
) -> web.Application:
    """The broker's aiohttp application; ``app[BROKER_KEY]`` is its :class:`Broker`."""
    broker = Broker(
        cluster=cluster,
        providers=providers,
        settings=settings,
        metrics=metrics,
        hub=hub if hub is not None else TaskStatusHub(now=now),
        trust_domain=trust_domain,
        now=now,
    )
    app = web.Application(middlewares=[_errors], client_max_size=settings.max_body_bytes)
    app[BROKER_KEY] = broker
    app.router.add_get("/healthz", broker.healthz)
    app.router.add_get("/.well-known/jwks.json", broker.jwks)
    app.router.add_get("/v1/jwt/revoked", broker.jwt_revoked)
    app.router.add_post("/v1/credentials", broker.issue)
    app.router.add_post("/v1/credentials/{name}/renew", broker.renew)
    app.router.add_post("/v1/tasks/{task}/revoke", broker.revoke)
    app.router.add_get("/v1/tasks/{task}/status", broker.status)
    return app


class BrokerServer:
    """Serve a broker app over HTTPS with the broker's current SVID (rotation-aware).

    ``svid_source`` is called at every TLS handshake (cheap: a context is rebuilt only when the
    SVID's fingerprint changes), so a rotated SVID is presented from the next connection on.
    """

    def __init__(
        self,
        app: web.Application,
        svid_source: Callable[[], X509SvidMaterial],
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        drain_timeout: float | None = None,
    ) -> None:
        self.app = app
        self.drain_timeout = drain_timeout
        self._svid_source = svid_source
        self.handshake_timeout = handshake_timeout
        self._fingerprint: str | None = None
        self._context: ssl.SSLContext | None = None
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self.port: int | None = None
        self.host: str | None = None

    def current_context(self) -> ssl.SSLContext:
        svid = self._svid_source()
        if svid.fingerprint != self._fingerprint or self._context is None:
            self._context = server_context(svid, client_cert="optional")
            self._fingerprint = svid.fingerprint
        return self._context

    def _sni(self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        try:
            current = self.current_context()
        except Exception as exc:  # keep serving with the last good SVID
            log.error("broker SVID unusable; keeping the previous one", extra=fields(error=str(exc)))
            return None
        if current is not context:
            ssl_object.context = current
        return None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; returns the bound port."""
        outer = self.current_context()
        listening = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        listening.minimum_version = ssl.TLSVersion.TLSv1_2
        listening.verify_mode = outer.verify_mode
        listening.sni_callback = self._sni  # swaps in the current SVID's context per handshake
        svid = self._svid_source()
        load_svid(listening, svid)
        # bounded waits for slow or stalled clients: handshake 5 s, idle keep-alive 75 s, body 10 s
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            keepalive_timeout=75.0,
        )
        await self._runner.setup()
        assert self._runner.server is not None
        quiet_http_parser_errors()
        server = self._runner.server

        def protocol() -> RequestHandler:
            handler = server()
            handler.__class__ = _JsonErrorHandler  # same slots; only handle_error differs
            return handler

        self._server = await asyncio.get_running_loop().create_server(
            protocol,
            host,
            port,
            ssl=listening,
            ssl_handshake_timeout=self.handshake_timeout,
            reuse_address=True,
            backlog=1024,
        )
        self.host, self.port = host, self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        self.app[BROKER_KEY].ready = False
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # handlers are cancelled by now; what they issued is still being recorded (or revoked)
        await self.app[BROKER_KEY].drain(self.drain_timeout)  # None: the broker settings' drain_timeout


class _JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, answering requests it cannot parse as the broker does."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        return _handle_error(self, request, status, exc)


def _handle_error(
    self: RequestHandler,
    request: web.BaseRequest,
    status: int = 500,
    exc: BaseException | None = None,
) -> web.StreamResponse:
    """aiohttp's answer to a request it could not parse, as a broker error: JSON, and no echo.

    aiohttp's own answer is text/plain quoting the offending bytes (an over-long ``Authorization``
    header came back with the first 100 characters of the bearer token) and it logs at ERROR: a
    client's malformed request is the client's problem, logged at INFO with its type only.
    """
    kind = type(exc).__name__ if exc is not None else f"HTTP {status}"
    self.logger.info("bad HTTP request: %s", kind)
    if request.writer.output_size > 0:
        raise ConnectionError("the response is already started; cannot send an error")
    if status >= 500:
        status, body = 503, {"error": {"code": "unavailable", "message": "internal error; retry"}}
    else:
        code = "too_large" if status == 413 else "bad_request"
        body = {"error": {"code": code, "message": f"malformed HTTP request ({kind}); nothing was done"}}
    response = web.json_response(body, status=status)
    response.force_close()
    return response


def trust_domain_of(svid: X509SvidMaterial) -> str:
    """The trust domain of an SVID (the broker accepts clients of its own trust domain by default)."""
    return parse_spiffe_id(svid.spiffe_id)[0]
