"""The lease sweep reads pods from the pod watch's view instead of GETting every one every interval.

Against the API stand-in (tests/kube) with the real KubeCluster, the real lifecycle handler feeding
a :class:`~taskcreds.operator.leases.PodView`, and the sweep as main.py wires it. Pod GETs are
counted at the stand-in. What must hold: in steady state a sweep makes no pod GET (it made one per
TaskLease before); a pod that went away or ended — seen or not — is still revoked, at worst
``trust_for`` + one sweep after it was last seen; an empty or stale view behaves exactly as no view.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from taskcreds.operator import leases
from taskcreds.operator.kube import KubeCluster, connect
from taskcreds.operator.leases import PodView, SweepCounts
from taskcreds.operator.lifecycle import TaskLifecycle
from taskcreds.operator.providers.base import Issued

from taskcreds import names
from taskcreds.metrics import OperatorMetrics, register_operator
from tests.kube.fixtures import KubeApi
from tests.operator.test_leases import FakeSource

NS = "agents"
TRUST = 300.0
FAST = leases.Backoff(attempts=2, base=0.001, cap=0.002)


class Clock:
    """The view's monotonic clock, moved by the test (no sleeping for ``trust_for``)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class World:
    kube: KubeApi
    cluster: KubeCluster
    vault: FakeSource = field(default_factory=FakeSource)
    clock: Clock = field(default_factory=Clock)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    metrics: OperatorMetrics = field(init=False)
    view: PodView = field(init=False)
    lifecycle: TaskLifecycle = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = register_operator(self.registry)
        self.view = PodView(trust_for=TRUST, jitter=0.0, monotonic=self.clock)
        self.lifecycle = self.make_lifecycle()

    def make_lifecycle(self, revoke: Any = None) -> TaskLifecycle:
        """The lifecycle as main.py wires it: the pod handler and the sweep share one view."""
        return TaskLifecycle(
            revoke=revoke
            or partial(
                leases.revoke_pod_task,
                self.cluster,
                {"vault": self.vault},
                metrics=self.metrics,
                backoff=FAST,
            ),
            sweep=partial(self.sweep, view=self.view),
            view=self.view,
        )

    async def sweep(self, view: PodView | None = None, *, later: timedelta = timedelta()) -> int:
        """One sweep (``later``: that much after now by the wall clock); the pod GETs it made, counted
        at the API."""
        before = self.pod_gets()
        await leases.sweep_leases(
            self.cluster,
            {"vault": self.vault},
            metrics=self.metrics,
            backoff=FAST,
            view=view,
            now=lambda: datetime.now(UTC) + later,
        )
        return self.pod_gets() - before

    def pod_gets(self) -> int:
        return sum(1 for c in self.kube.api_calls if (c.verb, c.resource) == ("get", "pods"))

    async def add_agent(
        self, name: str, *, finalizer: bool = False, max_duration: str | None = None
    ) -> dict[str, Any]:
        """An opted-in pod running its task, with one live lease recorded on its TaskLease."""
        pod = self.kube.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": NS,
                    "labels": {names.LABEL_INJECT: "true"},
                    "annotations": {
                        names.ANNOTATION_TASK: f"task-{name}",
                        names.ANNOTATION_CREDENTIALS: "db",
                        **({names.ANNOTATION_MAX_DURATION: max_duration} if max_duration else {}),
                    },
                    **({"finalizers": ["example.com/hold"]} if finalizer else {}),
                },
                "spec": {"containers": [{"name": "agent", "image": "busybox:1"}]},
            }
        )
        now = datetime.now(UTC)
        issued = Issued(files={}, lease_ref=f"ref-{name}", issued_at=now, expires_at=now + timedelta(days=1))
        source = {"kind": names.KIND_CREDENTIAL_SOURCE, "name": "db", "namespace": NS}
        await leases.record_issued(
            self.cluster, pod, f"task-{name}", [leases.lease_entry("db", "vault", source, issued)]
        )
        return pod

    async def seen(self, event: str, name: str) -> None:
        """The pod handler gets this watch event for the pod as the API has it now."""
        await self.lifecycle.on_pod_event(event, self.pod(name))

    def pod(self, name: str) -> dict[str, Any]:
        pod = self.kube.get("v1", "Pod", NS, name)
        assert pod is not None, name
        return pod

    def lease(self, name: str) -> dict[str, Any]:
        lease = self.kube.get(
            names.API_VERSION, names.KIND_TASK_LEASE, NS, leases.lease_name(name, f"task-{name}")
        )
        assert lease is not None, name
        return lease

    def revoked(self, reason: str) -> float:
        """``credentials_revoked_total{provider="vault", reason}`` as Prometheus would scrape it."""
        labels = {"provider": "vault", "reason": reason}
        return self.registry.get_sample_value("taskcreds_credentials_revoked_total", labels) or 0.0


@pytest.fixture
async def world(kube_api: KubeApi) -> AsyncIterator[World]:
    kube_api.register_crds_from("charts/taskcreds/crds")
    cluster = await connect(url=kube_api.url, token=kube_api.admin_token)
    w = World(kube_api, cluster)
    try:
        yield w
    finally:
        await w.lifecycle.close()
        await cluster.close()


PODS = 50


@pytest.mark.parametrize(
    ("view", "fed", "age", "gets", "answered"),
    [
        pytest.param(False, False, 0.0, PODS, 0, id="no view (as before): one GET per TaskLease"),
        pytest.param(True, False, 0.0, PODS, 0, id="view empty right after start: as before"),
        pytest.param(True, True, 0.0, 0, PODS, id="view fed by the pod events: no GET"),
        pytest.param(True, True, TRUST - 1, 0, PODS, id="last event just inside trust_for: no GET"),
        pytest.param(True, True, TRUST, PODS, 0, id="no event for trust_for: every pod read again"),
    ],
)
async def test_steady_state_sweep_gets(
    world: World, view: bool, fed: bool, age: float, gets: int, answered: int
) -> None:
    for i in range(PODS):
        await world.add_agent(f"agent-{i}")
    if fed:
        for i in range(PODS):
            await world.seen("ADDED", f"agent-{i}")
    world.clock.t += age
    assert await world.sweep(world.view if view else None) == gets
    assert world.vault.revoked == []  # every task runs: nothing revoked, whatever the view says
    if view:
        assert world.view.last_sweep == SweepCounts(leases=PODS, pod_gets=gets, answered_by_view=answered)
        assert len(world.view) == PODS  # learned from the events, or from the GETs
        assert await world.sweep(world.view) == 0, "the next sweep trusts what the last one read"


async def test_view_memory_is_bounded_by_live_pods(world: World) -> None:
    pods = {name: await world.add_agent(name) for name in ("gone", "done", "revoked", "alive")}
    world.kube.put(
        {
            **pods["alive"],
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                k: v for k, v in pods["alive"]["metadata"].items() if k not in ("uid", "resourceVersion")
            }
            | {"name": "no-lease"},
        }
    )
    for name in (*pods, "no-lease"):
        await world.seen("ADDED", name)
    assert len(world.view) == 5
    world.kube.delete("v1", "Pod", NS, "gone")
    await world.lifecycle.on_pod_event("DELETED", pods["gone"])  # the watch's DELETED carries the last state
    world.kube.set_pod_phase(NS, "done", "Succeeded")
    await world.seen("MODIFIED", "done")  # ended: the lifecycle revokes it, the view forgets it
    assert len(world.view) == 3
    await leases.revoke_pod_task(
        world.cluster, {"vault": world.vault}, world.pod("revoked"), "cancelled", metrics=None
    )
    await world.sweep(world.view)  # its TaskLease is Revoked: nothing left to save a GET for
    assert len(world.view) == 2
    world.clock.t += TRUST
    await world.sweep(world.view)  # stale entries go; the sweep's GET brings back the pod with a lease
    assert len(world.view) == 1 and world.pod("alive")["metadata"]["uid"] in world.view
    assert sorted(world.vault.revoked) == ["ref-done", "ref-gone", "ref-revoked"]


# --- a task that ends is still revoked by the sweep, within the stated bound ----------------------


async def failing_revoke(pod: dict[str, Any], reason: str, seen_at: float) -> None:
    """The handler's revocation hits an API error: only the sweep is left to revoke."""
    raise leases.ClusterError("the API server timed out")


@pytest.mark.parametrize(
    ("ending", "reason", "sweeps_at", "gets"),
    [
        # the GC marks the TaskLease of a deleted pod: revoked at the next sweep, no pod GET needed
        pytest.param("deleted unseen", "pod_deleted", [0.0], 0, id="deleted, no event: next sweep"),
        # its deletion held by another finalizer: nothing but the pod tells; the view is trusted up to
        # trust_for after the pod was last seen, then the GET finds the deletion
        pytest.param(
            "deletion held, unseen", "pod_deleted", [0.0, TRUST - 1, TRUST], 2, id="held, no event: trust_for"
        ),
        pytest.param("terminal, seen", "completed", [0.0], 1, id="completed, event seen: next sweep"),
        pytest.param(
            "terminal, unseen", "completed", [0.0, TRUST - 1, TRUST], 2, id="completed, no event: trust_for"
        ),
        pytest.param("finished, seen", "failed", [0.0], 1, id="phase Failed, event seen: next sweep"),
        # the lifecycle's own timer did not revoke (here: its revocation failed); the view knows the
        # deadline, so the first sweep past it reads the pod
        pytest.param("deadline passed", "deadline", [0.0], 1, id="max-duration passed: next sweep"),
    ],
)
async def test_an_ended_task_is_revoked_by_the_sweep_within_the_bound(
    world: World, ending: str, reason: str, sweeps_at: list[float], gets: int
) -> None:
    world.lifecycle = world.make_lifecycle(revoke=failing_revoke)
    await world.add_agent("bystander")
    pod = await world.add_agent(
        "agent",
        finalizer=ending.startswith("deletion held"),
        max_duration="1h" if ending == "deadline passed" else None,
    )
    for name in ("agent", "bystander"):
        await world.seen("ADDED", name)
    start = world.clock.t
    if ending.startswith("delet"):
        world.kube.delete("v1", "Pod", NS, "agent")
    elif ending.startswith("terminal"):
        world.kube.put(
            {
                **pod,
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    **pod["metadata"],
                    "annotations": {
                        **pod["metadata"]["annotations"],
                        names.ANNOTATION_TASK_STATUS: "completed",
                    },
                },
            }
        )
    elif ending.startswith("finished"):
        world.kube.set_pod_phase(NS, "agent", "Failed")
    if ending.endswith(", seen"):
        await world.seen("MODIFIED", "agent")  # the handler's revocation fails; the view forgets the pod
    for at in sweeps_at:
        assert world.revoked(reason) == 0, f"revoked before t={at}"
        world.clock.t = start + at
        await world.sweep(
            world.view, later=timedelta(hours=2) if ending == "deadline passed" else timedelta()
        )
    assert world.vault.revoked == ["ref-agent"], "the ended task's lease, and only it"
    assert world.revoked(reason) == 1
    assert world.view.last_sweep.revocations == 1
    assert world.pod_gets() == gets  # the ended pod when the view does not vouch; the bystander once stale


async def test_a_pod_replaced_under_the_same_name_is_revoked(world: World) -> None:
    old = await world.add_agent("agent")
    await world.seen("ADDED", "agent")
    world.kube.delete("v1", "Pod", NS, "agent")  # its DELETED event is never seen
    await world.kube.wait_for(lambda: world.lease("agent")["metadata"].get("deletionTimestamp"), 5)
    world.kube.put(
        {
            **old,
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                k: v
                for k, v in old["metadata"].items()
                if k not in ("uid", "resourceVersion", "creationTimestamp")
            },
        }
    )
    new = world.pod("agent")
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    await world.seen("ADDED", "agent")
    assert old["metadata"]["uid"] not in world.view and new["metadata"]["uid"] in world.view
    await world.sweep(world.view)
    assert world.vault.revoked == ["ref-agent"] and world.revoked("pod_deleted") == 1


# --- the view alone: when it vouches for a TaskLease's pod (so the sweep skips the GET) ---------


def _pod(name: str, uid: str, **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid,
            "creationTimestamp": "2026-11-29T10:00:00Z",
            "annotations": {names.ANNOTATION_TASK: "t", **annotations},
        },
        "status": {"phase": "Running"},
    }


def _lease(pod: str, uid: str) -> dict[str, Any]:
    return leases.task_lease_body(_pod(pod, uid), "t")


A, B, A2 = _pod("a", "uid-a"), _pod("b", "uid-b"), _pod("a", "uid-a2")
WITH_DEADLINE = _pod("a", "uid-a", **{names.ANNOTATION_MAX_DURATION: "1h"})
T0 = datetime(2026, 11, 29, 10, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("steps", "at", "vouches"),
    [
        pytest.param([("seen", A)], T0, True, id="seen running: vouches"),
        pytest.param([], T0, False, id="never seen (fresh start): GET"),
        pytest.param([("seen", A2)], T0, False, id="another pod of the owner's name (other uid): GET"),
        pytest.param([("seen", A), ("seen", A2)], T0, False, id="replaced while watched: GET"),
        pytest.param([("seen", A), ("wait", TRUST)], T0, False, id="nothing heard for trust_for: GET"),
        pytest.param([("seen", A), ("wait", TRUST - 1)], T0, True, id="heard just inside trust_for"),
        pytest.param(
            [("seen", WITH_DEADLINE)], T0 + timedelta(hours=1), False, id="its deadline passed: GET"
        ),
        pytest.param([("seen", A), ("ended", A)], T0, False, id="ended event: GET"),
        pytest.param([("ended", A), ("confirm", A)], T0, False, id="ended, then an older GET answer: GET"),
        pytest.param([("seen", A), ("confirm", A2)], T0, False, id="the GET found a successor: GET"),
        pytest.param([("seen", A), ("wait", 10), ("listed", B)], T0, False, id="a re-list without it: GET"),
        pytest.param([("seen", A), ("wait", 10), ("listed", A)], T0, True, id="a re-list with it"),
        pytest.param(
            [("seen", A), ("wait", 10), ("listed", B), ("wait", 1), ("listed", A)],
            T0,
            True,
            id="later in the same list",
        ),
        pytest.param(
            [("seen", A), ("wait", 10), ("listed", B), ("wait", 1), ("seen", A)],
            T0,
            True,
            id="a watch event after the re-list",
        ),
        pytest.param(
            [("seen", A), ("wait", 10), ("listed", B), ("wait", 1), ("confirm", A)],
            T0,
            True,
            id="a GET after the re-list",
        ),
        pytest.param(
            [("listed", A), ("wait", 10), ("listed", B)], T0, False, id="a second list without it: GET"
        ),
    ],
)
def test_when_the_view_vouches(steps: list[tuple[str, Any]], at: datetime, vouches: bool) -> None:
    clock = Clock()
    view = PodView(trust_for=TRUST, jitter=0.0, monotonic=clock)
    for step, arg in steps:
        if step == "wait":
            clock.t += arg
        elif step == "seen":
            view.observe(arg, live=True)
        elif step == "listed":
            view.observe(arg, live=True, listing=True)
        elif step == "ended":
            view.observe(arg, live=False)
        else:
            view.confirm(arg)
    assert view.vouches(_lease("a", "uid-a"), at) is vouches


async def test_after_a_relist_the_pods_it_did_not_bring_are_read_again(world: World) -> None:
    """kopf lists again after a 410 (its events have type None): a pod the list did not bring may have
    been deleted unseen, so the next sweep reads it; pods the list brought stay trusted."""
    for name in ("listed", "not-listed"):
        await world.add_agent(name)
        await world.seen("ADDED", name)
    world.clock.t += 60
    await world.lifecycle.on_pod_event("None", world.pod("listed"))
    assert await world.sweep(world.view) == 1
    assert world.view.last_sweep == SweepCounts(leases=2, pod_gets=1, answered_by_view=1)
    assert await world.sweep(world.view) == 0, "the GET found it: trusted again"
