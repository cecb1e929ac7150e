"""When does a task end, and why: pure decisions over a pod, shared by the lifecycle handlers,
the broker and the demo. No I/O.

A task ends (and every credential of it is revoked at its source) when its pod's
``taskcreds.io/task-status`` turns terminal, when the pod goes away, when the pod has finished
(``status.phase`` ``Succeeded`` or ``Failed``: no container of it runs again, e.g. a Job's pod kept
around, or an evicted one), or when ``taskcreds.io/max-duration`` has passed since the pod was created.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from taskcreds import names
from taskcreds.durations import DurationError, parse_duration

__all__ = ["task_ending", "deadline_of", "task_status_of", "parse_timestamp", "PHASE_REASONS"]

#: a finished pod's ``status.phase`` -> the revoke reason. CONTRACT.md fixes the set of reasons, so
#: these map onto the terminal statuses they mean rather than adding reason values.
PHASE_REASONS: dict[str, str] = {"Succeeded": "completed", "Failed": "failed"}


def parse_timestamp(text: str | None) -> datetime | None:
    """An API timestamp (``2026-11-29T10:00:00Z``) as an aware datetime; None when absent/garbled."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _annotations(pod: dict[str, Any]) -> dict[str, str]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def task_status_of(pod: dict[str, Any]) -> str:
    """The pod's task status; absent means ``running`` (CONTRACT.md section 1)."""
    return _annotations(pod).get(names.ANNOTATION_TASK_STATUS) or names.DEFAULT_TASK_STATUS


def deadline_of(pod: dict[str, Any]) -> datetime | None:
    """Creation time + ``max-duration``; None without that annotation.

    A max-duration that cannot be read (the webhook refuses those, but an annotation can be edited
    later) ends the task at once: fail closed.
    """
    raw = _annotations(pod).get(names.ANNOTATION_MAX_DURATION)
    if raw is None:
        return None
    created = parse_timestamp((pod.get("metadata") or {}).get("creationTimestamp"))
    if created is None:
        created = datetime.fromtimestamp(0, UTC)
    try:
        return created + timedelta(seconds=parse_duration(raw))
    except DurationError:
        return created


def task_ending(pod: dict[str, Any], *, now: datetime, deleted: bool = False) -> str | None:
    """The revoke reason if this pod's task is over, else None.

    Order matters only for the reason recorded: an explicit terminal status wins over deletion,
    deletion over a finished phase (a deleted pod's containers are stopped, so it often ends
    ``Failed`` after its deletion started), the phase over the deadline.
    """
    status = task_status_of(pod)
    if status in names.TERMINAL_STATUSES:
        return status
    if deleted or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "pod_deleted"
    phase = PHASE_REASONS.get(str((pod.get("status") or {}).get("phase")))
    if phase is not None:
        return phase
    deadline = deadline_of(pod)
    if deadline is not None and now >= deadline:
        return "deadline"
    return None
