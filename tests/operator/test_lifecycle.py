"""TaskLifecycle reacts to pod events: revoke once on ending, deadlines, status feed."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from taskcreds.operator.leases import Backoff
from taskcreds.operator.lifecycle import TaskLifecycle, build_registry

T0 = datetime.now(UTC).replace(microsecond=0)


def pod(
    status: str | None = None,
    *,
    uid: str = "u1",
    max_duration: str | None = None,
    created: datetime | None = None,
) -> dict[str, Any]:
    created = created or datetime.now(UTC)
    ann = {"taskcreds.io/task": "t1", "taskcreds.io/credentials": "api"}
    if status:
        ann["taskcreds.io/task-status"] = status
    if max_duration:
        ann["taskcreds.io/max-duration"] = max_duration
    return {
        "metadata": {
            "name": "agent",
            "namespace": "agents",
            "uid": uid,
            "annotations": ann,
            "labels": {"taskcreds.io/inject": "true"},
            "creationTimestamp": created.isoformat().replace("+00:00", "Z"),
        }
    }


class Recorder:
    def __init__(self, fail: int = 0) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail
        self.statuses: list[tuple[str, bool]] = []

    async def revoke(self, p: dict[str, Any], reason: str, seen_at: float) -> None:
        self.calls.append((p["metadata"]["uid"], reason))
        if self.fail:
            self.fail -= 1
            raise RuntimeError("provider down")

    def sink(self, p: dict[str, Any], deleted: bool) -> None:
        self.statuses.append(
            (p["metadata"]["annotations"].get("taskcreds.io/task-status", "running"), deleted)
        )


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
async def test_terminal_status_revokes_once_with_its_reason(status: str) -> None:
    rec = Recorder()
    lc = TaskLifecycle(revoke=rec.revoke, status_sink=rec.sink)
    await lc.on_pod_event("ADDED", pod())
    await lc.on_pod_event("MODIFIED", pod(status))
    await lc.on_pod_event("MODIFIED", pod(status))  # a later unrelated change
    assert rec.calls == [("u1", status)]
    assert rec.statuses[-1] == (status, False)


async def test_running_and_pending_do_not_revoke() -> None:
    rec = Recorder()
    lc = TaskLifecycle(revoke=rec.revoke)
    for status in (None, "pending", "running"):
        await lc.on_pod_event("MODIFIED", pod(status))
    assert rec.calls == []


async def test_pod_deleted_revokes_even_after_completion() -> None:
    """Deletion always re-runs revocation: it is idempotent, and a missed earlier one is caught."""
    rec = Recorder()
    lc = TaskLifecycle(revoke=rec.revoke)
    await lc.on_pod_event("ADDED", pod())
    await lc.on_pod_event("DELETED", pod())
    assert rec.calls == [("u1", "pod_deleted")]


async def test_deadline_fires_revocation_without_any_further_event() -> None:
    rec = Recorder()
    lc = TaskLifecycle(revoke=rec.revoke, status_sink=rec.sink)
    await lc.on_pod_event("ADDED", pod(max_duration="200ms"))
    assert lc.armed_deadlines == 1 and rec.calls == []
    await asyncio.sleep(0.35)
    assert rec.calls == [("u1", "deadline")]
    assert lc.armed_deadlines == 0
    await lc.close()


async def test_deadline_already_passed_at_first_sight_revokes_at_once() -> None:
    rec = Recorder()
    lc = TaskLifecycle(revoke=rec.revoke)
    await lc.on_pod_event(None, pod(max_duration="1m", created=T0 - timedelta(hours=1)))  # type: ignore[arg-type]
    assert rec.calls == [("u1", "deadline")]


async def test_completion_before_deadline_disarms_the_timer() -> None:
    rec = Recorder()
    lc = TaskLifecycle(revoke=rec.revoke)
    await lc.on_pod_event("ADDED", pod(max_duration="300ms"))
    await lc.on_pod_event("MODIFIED", pod("completed", max_duration="300ms"))
    await asyncio.sleep(0.4)
    assert rec.calls == [("u1", "completed")]
    assert lc.armed_deadlines == 0


async def test_a_failing_revocation_is_logged_not_raised_and_the_sweep_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder(fail=1)
    swept: list[int] = []

    async def sweep() -> None:
        swept.append(1)

    lc = TaskLifecycle(revoke=rec.revoke, sweep=sweep)
    await lc.on_pod_event("MODIFIED", pod("failed"))
    assert rec.calls == [("u1", "failed")]
    assert "revocation did not finish; retrying" in caplog.text
    assert lc.pending_retries == 1
    await lc.sweep()
    assert swept == [1]
    await lc.close()
    assert lc.pending_retries == 0  # stopping hands the retry to the sweep


FAST_RETRY = Backoff(base=0.05, cap=0.1)


async def _until(predicate: Any, within: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not predicate():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_failed_revocation_is_retried_by_the_handler_until_it_succeeds() -> None:
    """One API error must not end it: the handler itself retries, later events do not revoke twice."""
    rec = Recorder(fail=2)
    lc = TaskLifecycle(revoke=rec.revoke, retry_backoff=FAST_RETRY)
    await lc.on_pod_event("MODIFIED", pod("completed"))
    await lc.on_pod_event("MODIFIED", pod("completed"))  # during the backoff: no extra attempt
    assert rec.calls == [("u1", "completed")]
    await _until(lambda: len(rec.calls) == 3 and lc.pending_retries == 0)
    await lc.on_pod_event("MODIFIED", pod("completed"))  # revoked now: later events change nothing
    await asyncio.sleep(0.15)
    assert rec.calls == [("u1", "completed")] * 3
    await lc.close()


async def test_a_persistent_error_is_retried_with_backoff_not_per_event() -> None:
    rec = Recorder(fail=10_000)
    lc = TaskLifecycle(revoke=rec.revoke, retry_backoff=Backoff(base=0.05, cap=0.2))
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < 0.5:  # a chatty pod: an event every 10 ms
        await lc.on_pod_event("MODIFIED", pod("failed"))
        await asyncio.sleep(0.01)
    await lc.close()
    # first try at 0, retries after 0.05, 0.1, 0.2, 0.2 s: at most 5 in 0.5 s, whatever the event rate
    assert 2 <= len(rec.calls) <= 5, rec.calls


@pytest.mark.parametrize(
    "ending",
    [
        pytest.param(("MODIFIED", "completed"), id="terminal status"),
        pytest.param(("DELETED", None), id="pod deleted"),
    ],
)
async def test_deletion_during_a_pending_retry_revokes_at_once(ending: tuple[str, str | None]) -> None:
    rec = Recorder(fail=1)
    lc = TaskLifecycle(revoke=rec.revoke, retry_backoff=Backoff(base=30.0, cap=30.0))
    event, status = ending
    await lc.on_pod_event(event, pod(status))
    assert lc.pending_retries == 1
    await lc.on_pod_event("DELETED", pod(status))  # a new fact: no waiting out a 30 s backoff
    expected = status or "pod_deleted"  # an explicit terminal status wins over deletion
    assert rec.calls == [("u1", expected)] * 2
    assert lc.pending_retries == 0
    await lc.close()


async def test_a_failed_deadline_revocation_is_retried() -> None:
    rec = Recorder(fail=1)
    lc = TaskLifecycle(revoke=rec.revoke, retry_backoff=FAST_RETRY)
    await lc.on_pod_event("ADDED", pod(max_duration="100ms"))
    await _until(lambda: len(rec.calls) == 2 and lc.pending_retries == 0)
    assert rec.calls == [("u1", "deadline"), ("u1", "deadline")]
    await lc.close()


def test_registry_has_the_pod_event_handler_filtered_on_the_inject_label() -> None:
    registry = build_registry(TaskLifecycle(revoke=Recorder().revoke))
    handlers = list(registry._watching.get_all_handlers())  # kopf keeps watching handlers here
    assert len(handlers) == 1
    assert handlers[0].labels == {"taskcreds.io/inject": "true"}


class _Cause:
    """Stands for what kopf keeps in context variables while a handler runs (the cause and its pod)."""


async def test_an_armed_deadline_keeps_nothing_of_the_handlers_context() -> None:
    # a deadline can be hours away: the timer must not hold the kopf cause (the pod body) that long
    rec = Recorder()
    lc = TaskLifecycle(revoke=rec.revoke)
    var: contextvars.ContextVar[_Cause] = contextvars.ContextVar("cause")
    holder = [_Cause()]
    alive = weakref.ref(holder[0])

    async def handler() -> None:
        var.set(holder[0])
        await lc.on_pod_event("ADDED", pod(max_duration="2h"))

    task = asyncio.get_running_loop().create_task(handler(), context=contextvars.copy_context())
    await task
    del task  # a finished task keeps its context, and the loop its wake-up handle until it runs on
    await asyncio.sleep(0)
    holder.clear()
    gc.collect()
    assert lc.armed_deadlines == 1
    assert alive() is None, "the armed deadline keeps the handler's context alive"
    await lc.close()
