"""An in-memory hub of each pod's task status that the broker's long-polls wait on.

Fed by whoever sees pods change — the lifecycle handlers (``status_sink``), a pod watch
(:func:`follow_pods`, run in every replica so every replica's long-polls wake within
milliseconds), the broker's own re-read of the pod when a poll starts — and by revocations
(:meth:`TaskStatusHub.end`). Waiting is an :class:`asyncio.Event` per pod: no polling loop.

A terminal status is final: once a pod's task has ended (terminal annotation, deadline, deletion,
a revoke), later updates cannot make it running again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from taskcreds.operator.cluster import Cluster
from taskcreds.operator.endings import deadline_of, task_ending, task_status_of

from taskcreds import names
from taskcreds.logs import fields

__all__ = ["TaskState", "TaskStatusHub", "follow_pods", "state_of"]

log = logging.getLogger("taskcreds.taskstatus")

#: how long the hub remembers a deleted pod (late long-polls still get its final state)
FORGET_AFTER = 600.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TaskState:
    """A pod's task as long-polls report it (docs/broker-api.md, task status)."""

    task: str | None
    status: str
    terminal: bool
    reason: str | None
    deadline: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "status": self.status,
            "terminal": self.terminal,
            "reason": self.reason,
            "deadline": self.deadline.strftime("%Y-%m-%dT%H:%M:%SZ") if self.deadline else None,
        }


def state_of(pod: dict[str, Any], *, now: datetime, deleted: bool = False) -> TaskState:
    """The task state a pod shows now (pure)."""
    reason = task_ending(pod, now=now, deleted=deleted)
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return TaskState(
        task=annotations.get(names.ANNOTATION_TASK),
        status=task_status_of(pod),
        terminal=reason is not None,
        reason=reason,
        deadline=deadline_of(pod),
    )


class _Entry:
    __slots__ = ("state", "changed")

    def __init__(self, state: TaskState) -> None:
        self.state = state
        self.changed = asyncio.Event()


class TaskStatusHub:
    """Task states by pod uid, with waiters woken on every change. One per event loop."""

    def __init__(self, *, now: Callable[[], datetime] = _utcnow) -> None:
        self._now = now
        self._entries: dict[str, _Entry] = {}
        self._forgetting: set[str] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, uid: str) -> TaskState | None:
        entry = self._entries.get(uid)
        return entry.state if entry else None

    def _set(self, uid: str, state: TaskState) -> TaskState:
        entry = self._entries.get(uid)
        if entry is None:
            self._entries[uid] = _Entry(state)
            return state
        if entry.state.terminal:
            return entry.state  # final
        if state != entry.state:
            entry.state = state
            old, entry.changed = entry.changed, asyncio.Event()
            old.set()
        return entry.state

    def update(self, pod: dict[str, Any], deleted: bool = False) -> TaskState | None:
        """Take a pod's current state (the lifecycle handlers' ``status_sink``)."""
        uid = (pod.get("metadata") or {}).get("uid")
        if not uid:
            return None
        state = self._set(uid, state_of(pod, now=self._now(), deleted=deleted))
        if deleted and uid not in self._forgetting:  # one timer per pod, however many delete events
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule
                # an empty context: a copy of the caller's (a kopf handler's) would keep its cause,
                # the whole pod body, alive for FORGET_AFTER (the soak: ~60 KB per ended pod)
                asyncio.get_running_loop().call_later(
                    FORGET_AFTER, self._forget, uid, context=contextvars.Context()
                )
                self._forgetting.add(uid)
        return state

    def _forget(self, uid: str) -> None:
        self._entries.pop(uid, None)
        self._forgetting.discard(uid)

    def end(self, uid: str, reason: str, *, task: str | None = None) -> TaskState:
        """Record that the task has ended (a revoke): final, whatever the pod says later."""
        current = self.get(uid) or TaskState(
            task=task, status=names.DEFAULT_TASK_STATUS, terminal=False, reason=None, deadline=None
        )
        if current.terminal:
            return current
        return self._set(uid, replace(current, terminal=True, reason=reason))

    async def wait(self, uid: str, known: str | None, timeout: float) -> TaskState | None:  # noqa: ASYNC109
        """At once when the state is terminal or its status differs from ``known``; else wait for a
        change up to ``timeout`` seconds and return the state then."""
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, timeout)
        while True:
            entry = self._entries.get(uid)
            if entry is None:
                return None
            state = entry.state
            if known is None or state.terminal or state.status != known:
                return state
            remaining = end - loop.time()
            if remaining <= 0:
                return state
            try:
                await asyncio.wait_for(entry.changed.wait(), remaining)
            except TimeoutError:
                return self.get(uid)


async def follow_pods(
    cluster: Cluster,
    hub: TaskStatusHub,
    *,
    namespace: str | None = None,
    label_selector: str = f"{names.LABEL_INJECT}=true",
) -> None:
    """Feed ``hub`` from a pod watch until cancelled (run one per replica)."""
    async for event_type, pod in cluster.watch_pods(namespace, label_selector):
        state = hub.update(pod, deleted=event_type == "DELETED")
        if state is not None and state.terminal:
            meta = pod.get("metadata") or {}
            log.debug(
                "task ended",
                extra=fields(namespace=meta.get("namespace"), pod=meta.get("name"), reason=state.reason),
            )
