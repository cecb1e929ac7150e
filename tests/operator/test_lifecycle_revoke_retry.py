"""A task's end always reaches revocation at the source (review finding H3, and M3 for the sweep).

One API error when the lifecycle handler starts revoking (before the TaskLease is Revoking) used to
mean no revocation while the pod lived: the handler marked the pod ended, later events were ignored,
and the sweep only retried Revoking or orphaned TaskLeases. Now the handler retries with backoff and
the sweep revokes Active TaskLeases whose pod's task has ended. Real broker, jwt provider, MemCluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from taskcreds.operator.leases import Backoff, lease_name, revoke_pod_task, sweep_leases
from taskcreds.operator.lifecycle import TaskLifecycle

from taskcreds import names
from tests.operator.test_broker_harness import NS, Harness

FAST = Backoff(attempts=2, base=0.01, cap=0.05)


@dataclass
class Issued:
    h: Harness
    jti: str

    @property
    def lease(self) -> dict[str, Any]:
        return self.h.cluster.task_leases[(NS, lease_name("agent-1", "fix-42"))]

    @property
    def revoked_at_source(self) -> bool:
        return bool(self.h.providers["jwt"].is_revoked(self.jti))


@pytest.fixture
async def issued() -> AsyncIterator[Issued]:
    """A running task with one JWT issued by the broker and recorded on its TaskLease."""
    h = Harness()
    h.put_sources()
    await h.start()
    try:
        pod = h.add_pod("agent-1", credentials="api", max_duration="1h")
        reply = await h.issue(h.agent(pod), ttl="30m")
        assert reply.status == 200, reply.doc
        yield Issued(h, reply.doc["credentials"][0]["leaseRef"].split(":")[1])
    finally:
        await h.close()


def lifecycle(h: Harness, *, retry: Backoff, sweep: bool = True) -> TaskLifecycle:
    """The lifecycle as main.py wires it, with a test's retry backoff."""
    return TaskLifecycle(
        revoke=partial(revoke_pod_task, h.cluster, h.providers, metrics=None, backoff=FAST),
        sweep=partial(sweep_leases, h.cluster, h.providers, metrics=None, backoff=FAST) if sweep else None,
        retry_backoff=retry,
    )


async def test_one_api_error_on_terminal_status_still_revokes(issued: Issued) -> None:
    """The reviewer's reproducer: one failed read, another event, three sweeps."""
    h = issued.h
    life = TaskLifecycle(  # exactly as the reproducer (and main.py) build it: default retry backoff
        revoke=partial(revoke_pod_task, h.cluster, h.providers, metrics=None),
        sweep=partial(sweep_leases, h.cluster, h.providers, metrics=None),
    )
    done = h.cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "completed")
    h.cluster.fail("get_task_lease")  # one 500 / timeout from the API server
    await life.on_pod_event("MODIFIED", done)
    await life.on_pod_event("MODIFIED", done)  # a later event for the same pod
    for _ in range(3):
        await life.sweep()
    await life.close()
    assert issued.lease["status"]["phase"] == "Revoked"
    assert issued.lease["status"]["reason"] == "completed"
    assert [bool(e.get("revokedAt")) for e in issued.lease["status"]["leases"]] == [True]
    assert issued.revoked_at_source


async def test_the_handler_retries_on_its_own(issued: Issued) -> None:
    """No sweep at all: the handler's own retry (with backoff) finishes the revocation."""
    h = issued.h
    life = lifecycle(h, sweep=False, retry=Backoff(base=0.05, cap=0.1))
    done = h.cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "failed")
    h.cluster.fail("get_task_lease", times=2)  # two attempts fail, the third goes through
    await life.on_pod_event("MODIFIED", done)
    assert issued.lease["status"]["phase"] == "Active" and life.pending_retries == 1
    for _ in range(100):
        if issued.lease["status"]["phase"] == "Revoked":
            break
        await asyncio.sleep(0.02)
    await life.close()
    assert issued.lease["status"]["phase"] == "Revoked"
    assert issued.lease["status"]["reason"] == "failed"
    assert issued.revoked_at_source
    assert life.pending_retries == 0


def _completed(h: Harness) -> None:
    h.cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "completed")


def _succeeded(h: Harness) -> None:
    pod = h.cluster.pods[(NS, "agent-1")]
    h.cluster.put_pod({**pod, "status": {"phase": "Succeeded"}})


def _failed(h: Harness) -> None:
    pod = h.cluster.pods[(NS, "agent-1")]
    h.cluster.put_pod({**pod, "status": {"phase": "Failed", "reason": "Evicted"}})


def _nothing(h: Harness) -> None:
    pass


@pytest.mark.parametrize(
    ("end", "hours_later", "reason"),
    [
        pytest.param(_completed, 0, "completed", id="terminal annotation"),
        pytest.param(_succeeded, 0, "completed", id="pod phase Succeeded, no annotation"),
        pytest.param(_failed, 0, "failed", id="pod phase Failed (evicted), no annotation"),
        pytest.param(_nothing, 2, "deadline", id="max-duration passed"),
    ],
)
async def test_the_sweep_revokes_an_active_lease_whose_task_ended(
    issued: Issued, end: Any, hours_later: int, reason: str
) -> None:
    """No event handler ran (or its revoke failed and the operator stopped): the sweep alone revokes."""
    h = issued.h
    end(h)
    now = datetime.now(UTC) + timedelta(hours=hours_later)
    (outcome,) = await sweep_leases(h.cluster, h.providers, metrics=None, backoff=FAST, now=lambda: now)
    assert outcome.done and outcome.revoked == ["api"]
    assert issued.lease["status"]["phase"] == "Revoked"
    assert issued.lease["status"]["reason"] == reason
    assert issued.revoked_at_source


async def test_the_sweep_leaves_a_running_task_alone(issued: Issued) -> None:
    h = issued.h
    pod = h.cluster.pods[(NS, "agent-1")]
    h.cluster.put_pod({**pod, "status": {"phase": "Running"}})
    before = h.cluster.calls.get("get_pod", 0)
    assert await sweep_leases(h.cluster, h.providers, metrics=None, backoff=FAST) == []
    assert issued.lease["status"]["phase"] == "Active" and not issued.revoked_at_source
    assert h.cluster.calls.get("get_pod", 0) - before == 1  # one pod read per unrevoked TaskLease


async def test_an_api_error_on_one_lease_does_not_stop_the_sweep(issued: Issued) -> None:
    """The first TaskLease's pod cannot be read: the sweep still revokes the second, retries the first."""
    h = issued.h
    other = h.add_pod("agent-2", task="fix-43", credentials="api")
    assert (await h.issue(h.agent(other), "fix-43", ttl="30m")).status == 200
    for name in ("agent-1", "agent-2"):
        h.cluster.set_annotation(NS, name, names.ANNOTATION_TASK_STATUS, "completed")
    h.cluster.fail("get_pod")  # the first read of the sweep
    outcomes = await sweep_leases(h.cluster, h.providers, metrics=None, backoff=FAST)
    assert [o.done for o in outcomes] == [True]
    outcomes = await sweep_leases(h.cluster, h.providers, metrics=None, backoff=FAST)
    assert [o.done for o in outcomes] == [True]
    assert issued.revoked_at_source
    leases = h.cluster.task_leases.values()
    assert sorted(lease["status"]["phase"] for lease in leases) == ["Revoked", "Revoked"]


async def test_a_late_ending_of_a_replaced_pod_leaves_its_successor_alone() -> None:
    """A retry (or a late event) for a pod that was replaced under the same name must not revoke the
    new pod's task, which has the same TaskLease name."""
    h = Harness()
    h.put_sources()
    await h.start()
    try:
        old = h.add_pod("agent-1", credentials="api")
        new = h.cluster.put_pod({**old, "metadata": {**old["metadata"], "uid": "successor-uid"}})
        reply = await h.issue(h.agent(new), ttl="30m")
        assert reply.status == 200, reply.doc
        jti = reply.doc["credentials"][0]["leaseRef"].split(":")[1]
        ended = {**old, "metadata": {**old["metadata"], "annotations": {
            **old["metadata"]["annotations"], names.ANNOTATION_TASK_STATUS: "completed"}}}
        outcome = await revoke_pod_task(h.cluster, h.providers, ended, "completed", metrics=None, backoff=FAST)
        assert outcome is not None and outcome.done and outcome.revoked == []
        lease = h.cluster.task_leases[(NS, lease_name("agent-1", "fix-42"))]
        assert lease["status"]["phase"] == "Active"
        assert not h.providers["jwt"].is_revoked(jti)
    finally:
        await h.close()
