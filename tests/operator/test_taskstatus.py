"""The task status hub: long-polls wake on change without polling, and terminal is final."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import time
import weakref
from datetime import UTC, datetime
from typing import Any

import pytest
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.taskstatus import TaskStatusHub, follow_pods, state_of

from taskcreds import names

NOW = datetime(2026, 11, 29, 10, 30, tzinfo=UTC)


def pod(status: str | None = None, uid: str = "u1", **extra: str) -> dict[str, Any]:
    ann = {names.ANNOTATION_TASK: "fix-42", names.ANNOTATION_CREDENTIALS: "api", **extra}
    if status:
        ann[names.ANNOTATION_TASK_STATUS] = status
    return {
        "metadata": {
            "name": "agent-1",
            "namespace": "team-a",
            "uid": uid,
            "creationTimestamp": "2026-11-29T10:00:00Z",
            "labels": {names.LABEL_INJECT: "true"},
            "annotations": ann,
        }
    }


@pytest.mark.parametrize(
    ("case", "p", "deleted", "expected"),
    [
        ("no status: running", pod(), False, ("running", False, None)),
        ("pending", pod("pending"), False, ("pending", False, None)),
        ("completed", pod("completed"), False, ("completed", True, "completed")),
        ("deleted", pod(), True, ("running", True, "pod_deleted")),
        (
            "deadline passed",
            pod(**{names.ANNOTATION_MAX_DURATION: "10m"}),
            False,
            ("running", True, "deadline"),
        ),
    ],
)
def test_state_of(
    case: str, p: dict[str, Any], deleted: bool, expected: tuple[str, bool, str | None]
) -> None:
    s = state_of(p, now=NOW, deleted=deleted)
    assert (s.status, s.terminal, s.reason) == expected


async def test_wait_returns_at_once_when_status_differs() -> None:
    hub = TaskStatusHub(now=lambda: NOW)
    hub.update(pod("pending"))
    started = time.monotonic()
    state = await hub.wait("u1", "running", 5)
    assert state is not None and state.status == "pending" and time.monotonic() - started < 0.1
    assert await hub.wait("unknown", None, 1) is None


async def test_wait_wakes_within_milliseconds_of_a_change() -> None:
    hub = TaskStatusHub(now=lambda: NOW)
    hub.update(pod())
    waiters = [asyncio.create_task(hub.wait("u1", "running", 10)) for _ in range(100)]
    await asyncio.sleep(0.05)
    changed_at = time.monotonic()
    hub.update(pod("completed"))
    states = await asyncio.gather(*waiters)
    assert time.monotonic() - changed_at < 0.1
    assert all(s is not None and s.terminal and s.reason == "completed" for s in states)


async def test_wait_times_out_with_the_current_state() -> None:
    hub = TaskStatusHub(now=lambda: NOW)
    hub.update(pod())
    started = time.monotonic()
    state = await hub.wait("u1", "running", 0.2)
    assert state is not None and state.status == "running"
    assert 0.15 < time.monotonic() - started < 1.0


async def test_terminal_is_final() -> None:
    hub = TaskStatusHub(now=lambda: NOW)
    hub.update(pod("failed"))
    hub.update(pod("running"))
    state = hub.get("u1")
    assert state is not None and (state.status, state.terminal, state.reason) == ("failed", True, "failed")
    hub.update(pod(uid="u2"))
    ended = hub.end("u2", "cancelled")
    assert ended.terminal and ended.reason == "cancelled"
    hub.update(pod("completed", uid="u2"))
    assert hub.get("u2").reason == "cancelled"  # first ending wins


async def test_follow_pods_feeds_the_hub() -> None:
    mem = MemCluster()
    mem.put_pod(pod())
    mem.put_pod({"metadata": {"name": "plain", "namespace": "team-a"}})
    hub = TaskStatusHub()
    task = asyncio.create_task(follow_pods(mem, hub))
    try:
        await asyncio.sleep(0.01)
        assert hub.get("u1") is not None and len(hub) == 1  # only opted-in pods
        waiter = asyncio.create_task(hub.wait("u1", "running", 5))
        await asyncio.sleep(0.01)
        mem.set_annotation("team-a", "agent-1", names.ANNOTATION_TASK_STATUS, "cancelled")
        state = await asyncio.wait_for(waiter, 1)
        assert state is not None and state.reason == "cancelled"
        mem.delete_pod("team-a", "agent-1")
        await asyncio.sleep(0.01)
        assert hub.get("u1").terminal
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class _Cause:
    """Stands for what kopf keeps in context variables while a handler runs: the cause, whose body
    is the whole pod."""


async def test_remembering_a_deleted_pod_keeps_nothing_of_the_handlers_context() -> None:
    # the soak found ~60 KB per ended pod held for FORGET_AFTER: the forget timer had copied the
    # kopf handler's context, and with it the cause and the pod body
    hub = TaskStatusHub(now=lambda: NOW)
    var: contextvars.ContextVar[_Cause] = contextvars.ContextVar("cause")
    holder = [_Cause()]
    alive = weakref.ref(holder[0])

    def handler() -> None:
        var.set(holder[0])
        hub.update(pod("completed", uid="gone"), deleted=True)

    contextvars.copy_context().run(handler)
    holder.clear()
    gc.collect()
    assert alive() is None, "the deleted pod's forget timer keeps the handler's context alive"
    assert hub.get("gone") is not None and hub.get("gone").terminal, "the pod is still remembered"
