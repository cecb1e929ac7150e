"""Task lifecycle: watch opted-in pods and TaskLeases, revoke every credential when a task ends.

The only module that uses kopf's decorators. The decisions (is this task over, and why) are the
pure :func:`taskcreds.operator.endings.task_ending`; revocation itself is the durable engine in
:mod:`taskcreds.operator.leases`, handed in as a callable so this module stays a thin shell.

Why kopf *event* handlers rather than change handlers: they write nothing to the agent's pod (no
progress annotations, no kopf finalizer), they fire within milliseconds of the watch event, and
they run in every replica — which every replica needs anyway, because every replica's broker holds
long-polls that must wake when their task ends. Revocation is idempotent and serialised by the
TaskLease's resourceVersion, so two replicas seeing the same event is harmless.

A revocation that fails (say the API server times out before the TaskLease is marked Revoking) is
retried by this handler with capped exponential backoff until it goes through; later events for the
pod meanwhile only refresh what the retry revokes with, so a persistent error costs one attempt per
backoff step, not one per event.

Durability does not depend on this process staying up: the TaskLease finalizer keeps the record
until every lease is revoked, the first watch after a restart replays every pod (re-arming
deadlines), and :meth:`TaskLifecycle.sweep` retries what is still ``Revoking``, revokes Active
TaskLeases whose pod's task has ended, and catches pods that went away while no operator was watching.
Given a :class:`~taskcreds.operator.leases.PodView` (shared with the sweep), every pod event also
updates it, so the sweep reads from the API only the pods this replica has not heard from lately
instead of every pod with a TaskLease every interval.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from taskcreds.operator.credindex import CredentialIndex
from taskcreds.operator.endings import deadline_of, task_ending
from taskcreds.operator.leases import Backoff, PodView

from taskcreds import names
from taskcreds.logs import fields

__all__ = ["TaskLifecycle", "RevokeFn", "SweepFn", "StatusSink", "build_registry"]

log = logging.getLogger("taskcreds.lifecycle")

#: revoke(pod, reason, seen_at_monotonic) — revoke every lease of the pod's task at its source
RevokeFn = Callable[[dict[str, Any], str, float], Awaitable[None]]
#: sweep() — retry unfinished revocations, revoke leases whose pod is gone or expired
SweepFn = Callable[[], Awaitable[None]]
#: status_sink(pod, deleted) — tell the broker's long-polls about a pod's current task status
StatusSink = Callable[[dict[str, Any], bool], None]

#: backoff between the handler's own retries of a failed revocation: 1 s, 2 s, 4 s ... then every
#: minute (the sweep retries too, every SWEEP_INTERVAL); never a tight loop against a failing API
RETRY_BACKOFF = Backoff(base=1.0, cap=60.0)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _key(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"


class _Retry:
    """A failed revocation waiting for its next attempt: the pod to revoke with, and when.

    ``seen_at`` stays the moment the ending was first seen, so ``revocation_lag_seconds`` includes
    the retries."""

    __slots__ = ("pod", "reason", "seen_at", "deleted", "attempt", "handle")

    def __init__(self, pod: dict[str, Any], reason: str, seen_at: float, deleted: bool, attempt: int) -> None:
        self.pod, self.reason, self.seen_at = pod, reason, seen_at
        self.deleted, self.attempt = deleted, attempt
        self.handle: asyncio.TimerHandle | None = None


class TaskLifecycle:
    """React to pod events: feed the broker's status hub, revoke on ending, arm deadlines."""

    def __init__(
        self,
        *,
        revoke: RevokeFn,
        sweep: SweepFn | None = None,
        status_sink: StatusSink | None = None,
        now: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        retry_backoff: Backoff = RETRY_BACKOFF,
        view: PodView | None = None,
    ) -> None:
        self._revoke = revoke
        self._view = view
        self._retry_backoff = retry_backoff
        self._sweep = sweep
        self._status_sink = status_sink
        self._now = now
        self._monotonic = monotonic
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        self._latest: dict[str, dict[str, Any]] = {}
        self._ended: set[str] = set()  # revoked, or a revocation in flight: later events change nothing
        self._retries: dict[str, _Retry] = {}  # revocations that failed, waiting for their next attempt
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def on_pod_event(self, event_type: str, pod: dict[str, Any]) -> None:
        """One watch event for an opted-in pod (ADDED, MODIFIED, DELETED, or None on the first list)."""
        seen_at = self._monotonic()
        deleted = event_type == "DELETED"
        key = _key(pod)
        if self._status_sink is not None:
            self._status_sink(pod, deleted)
        reason = task_ending(pod, now=self._now(), deleted=deleted)
        if self._view is not None:  # what lets the sweep skip this pod's GET while its task runs
            self._view.observe(pod, live=reason is None, listing=event_type == "None")
        if reason is None:
            self._latest[key] = pod
            self._arm_deadline(key, pod)
            return
        self._disarm(key)
        self._latest.pop(key, None)
        retry = self._retries.get(key)
        attempt = 0
        if deleted:
            self._ended.discard(key)  # nothing more will come for this uid
            if retry is not None:  # a new fact: revoke at once, keeping the backoff step
                self._cancel_retry(key)
                attempt = retry.attempt
        elif key in self._ended:
            return  # already revoked (or being revoked) for this pod; later events change nothing
        elif retry is not None:
            retry.pod, retry.reason = pod, reason  # the scheduled retry revokes with what the pod says now
            return
        else:
            self._ended.add(key)
        await self._revoke_logged(pod, reason, seen_at, deleted=deleted, attempt=attempt)

    def _arm_deadline(self, key: str, pod: dict[str, Any]) -> None:
        deadline = deadline_of(pod)
        if deadline is None:
            self._disarm(key)
            return
        if key in self._deadlines:
            return  # max-duration is fixed at admission: the timer armed first stays right
        delay = max(0.0, (deadline - self._now()).total_seconds())
        loop = asyncio.get_running_loop()
        # an empty context: a copy of the kopf handler's would hold its cause (the pod body as first
        # seen) until the deadline, hours for a long task
        empty = contextvars.Context()
        self._deadlines[key] = loop.call_later(delay, self._deadline_passed, key, context=empty)

    def _disarm(self, key: str) -> None:
        handle = self._deadlines.pop(key, None)
        if handle is not None:
            handle.cancel()

    def _deadline_passed(self, key: str) -> None:
        self._deadlines.pop(key, None)
        pod = self._latest.pop(key, None)
        if pod is None or key in self._ended:
            return
        self._ended.add(key)
        if self._status_sink is not None:
            self._status_sink(pod, False)
        self._spawn(self._revoke_logged(pod, "deadline", self._monotonic()))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel_retry(self, key: str) -> None:
        retry = self._retries.pop(key, None)
        if retry is not None and retry.handle is not None:
            retry.handle.cancel()

    def _schedule_retry(self, key: str, retry: _Retry) -> float | None:
        self._ended.discard(key)  # not revoked: the retry (or a later deletion event) must run again
        if self._closed:
            return None  # stopping: the sweep (the next operator's, or another replica's) takes over
        delay = self._retry_backoff.delay(retry.attempt - 1)
        self._retries[key] = retry
        # an empty context, as for deadlines: the retry must not keep a kopf cause alive
        retry.handle = asyncio.get_running_loop().call_later(
            delay, self._retry_due, key, context=contextvars.Context()
        )
        return delay

    def _retry_due(self, key: str) -> None:
        retry = self._retries.pop(key, None)
        if retry is None:
            return
        if not retry.deleted:
            self._ended.add(key)
        self._spawn(
            self._revoke_logged(
                retry.pod, retry.reason, retry.seen_at, deleted=retry.deleted, attempt=retry.attempt
            )
        )

    async def _revoke_logged(
        self, pod: dict[str, Any], reason: str, seen_at: float, *, deleted: bool = False, attempt: int = 0
    ) -> None:
        meta = pod.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        where = fields(
            namespace=meta.get("namespace"),
            pod=meta.get("name"),
            task=annotations.get(names.ANNOTATION_TASK),
            reason=reason,
        )
        if attempt:
            log.info("task ended: retrying the revocation of its credentials", extra=where)
        else:
            log.info("task ended: revoking its credentials", extra=where)
        try:
            await self._revoke(pod, reason, seen_at)
        except asyncio.CancelledError:
            raise
        except Exception:  # retried here with backoff, and by the sweep; the TaskLease keeps the record
            delay = self._schedule_retry(_key(pod), _Retry(pod, reason, seen_at, deleted, attempt + 1))
            log.exception(
                "revocation did not finish; retrying (the sweep retries too)",
                extra={"fields": {**where["fields"], "attempt": attempt + 1, "retry_in_seconds": delay}},
            )

    async def sweep(self) -> None:
        """Retry unfinished revocations and catch pods that went away unseen."""
        if self._sweep is None:
            return
        try:
            await self._sweep()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("lease sweep failed; retrying at the next interval")

    async def sweep_forever(self, interval: float) -> None:
        """Run :meth:`sweep` every ``interval`` seconds until cancelled."""
        while True:
            await self.sweep()
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Cancel armed deadlines and pending retries, and wait for revocations in flight."""
        self._closed = True
        for handle in self._deadlines.values():
            handle.cancel()
        self._deadlines.clear()
        for key in list(self._retries):  # the sweep (this replica's next run, or another's) takes over
            self._cancel_retry(key)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def armed_deadlines(self) -> int:
        """How many pods have a max-duration timer armed (for tests and metrics)."""
        return len(self._deadlines)

    @property
    def pending_retries(self) -> int:
        """How many failed revocations wait for their next attempt (for tests and metrics)."""
        return len(self._retries)


def build_registry(lifecycle: TaskLifecycle, index: CredentialIndex | None = None) -> Any:
    """A kopf registry with the pod event handler (and, given an index, the source handlers).

    kopf is imported here only. The source handlers keep the admission webhook's
    :class:`~taskcreds.operator.credindex.CredentialIndex` current: every listed, added or changed
    CredentialSource / ClusterCredentialSource is indexed, every deleted one dropped.
    """
    import kopf

    registry = kopf.OperatorRegistry()

    if index is not None:
        for plural, kind in (
            (names.PLURAL_CREDENTIAL_SOURCES, names.KIND_CREDENTIAL_SOURCE),
            (names.PLURAL_CLUSTER_CREDENTIAL_SOURCES, names.KIND_CLUSTER_CREDENTIAL_SOURCE),
        ):

            @kopf.on.event(names.CRD_GROUP, names.CRD_VERSION, plural, registry=registry)  # type: ignore[arg-type]
            async def source_event(event: dict[str, Any], _kind: str = kind, **_: Any) -> None:
                obj = event.get("object")
                if not isinstance(obj, dict):
                    return
                if event.get("type") == "DELETED":
                    index.delete(obj, _kind)
                else:
                    index.update(obj, _kind)

    @kopf.on.event("v1", "pods", labels={names.LABEL_INJECT: "true"}, registry=registry)  # type: ignore[arg-type]
    async def pod_event(event: dict[str, Any], **_: Any) -> None:
        obj = event.get("object")
        if isinstance(obj, dict):
            await lifecycle.on_pod_event(str(event.get("type")), obj)

    return registry
