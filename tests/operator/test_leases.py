"""TaskLeases and the revocation engine: durable, idempotent, visible when a source fails."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import generate_latest
from taskcreds.operator import leases
from taskcreds.operator.cluster import ClusterError
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import Issued, IssueRequest, NotRevocable, ProviderError

from taskcreds import names
from taskcreds.metrics import register_operator

NS = "team-a"
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


class FakeSource:
    """A provider whose revocations are counted and can be made to fail (the source is down)."""

    name = "vault"

    def __init__(self, failures: int = 0, *, not_revocable: bool = False) -> None:
        self.failures = failures
        self.not_revocable = not_revocable
        self.revoked: list[str] = []
        self.calls = 0

    async def issue(self, request: IssueRequest) -> Issued:  # pragma: no cover - not used here
        raise NotImplementedError

    async def renew(self, lease_ref: str, request: IssueRequest) -> Issued:  # pragma: no cover
        raise NotImplementedError

    async def revoke(self, lease_ref: str, source_spec: dict[str, Any], source_namespace: str | None) -> None:
        self.calls += 1
        if self.not_revocable:
            raise NotRevocable(self.name)
        if self.failures > 0:
            self.failures -= 1
            raise ProviderError(self.name, "connection refused to 127.0.0.1:8200")
        self.revoked.append(lease_ref)


def entry(
    ref: str,
    credential: str = "db",
    provider: str = "vault",
    expires: timedelta = timedelta(minutes=15),
    static: bool = False,
) -> dict[str, Any]:
    issued = Issued(
        files={"password": "hunter2"}, lease_ref=ref, issued_at=NOW, expires_at=NOW + expires, static=static
    )
    return leases.lease_entry(
        credential,
        provider,
        {"kind": names.KIND_CREDENTIAL_SOURCE, "name": credential, "namespace": NS},
        issued,
    )


@pytest.fixture
def cluster() -> MemCluster:
    return with_agent_pod(MemCluster())


def with_agent_pod(mem: MemCluster) -> MemCluster:
    """``mem`` with the opted-in pod agent-1 (task fix-42, credential db) the tests here use."""
    mem.put_pod(
        {
            "metadata": {
                "name": "agent-1",
                "namespace": NS,
                "labels": {names.LABEL_INJECT: "true"},
                "annotations": {names.ANNOTATION_TASK: "fix-42", names.ANNOTATION_CREDENTIALS: "db"},
            },
            "spec": {"serviceAccountName": "agent"},
        }
    )
    return mem


def pod(cluster: MemCluster) -> dict[str, Any]:
    return cluster.pods[(NS, "agent-1")]


def nm(cluster: MemCluster) -> str:
    return leases.lease_name("agent-1", "fix-42")


FAST = leases.Backoff(attempts=4, base=0.001, cap=0.004)


@pytest.mark.parametrize(
    ("pod_name", "task"),
    [
        ("agent-1", "fix-42"),
        ("Agent_Weird.Name", "t"),
        ("p" * 253, "x" * 128),
    ],
)
def test_lease_name_is_stable_and_valid(pod_name: str, task: str) -> None:
    name = leases.lease_name(pod_name, task)
    assert name == leases.lease_name(pod_name, task)
    assert len(name) <= 253 and name == name.lower() and name[0].isalnum() and name[-1].isalnum()
    assert leases.lease_name(pod_name, task + "2") != name


async def test_record_creates_owned_lease_with_finalizer(cluster: MemCluster) -> None:
    lease = await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("l1")])
    assert lease["metadata"]["finalizers"] == [names.FINALIZER_REVOKE]
    assert lease["metadata"]["ownerReferences"][0]["uid"] == pod(cluster)["metadata"]["uid"]
    assert lease["spec"] == {"task": "fix-42", "pod": "agent-1", "podUID": pod(cluster)["metadata"]["uid"]}
    await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("l2")])
    stored = cluster.task_leases[(NS, nm(cluster))]
    assert [e["leaseRef"] for e in stored["status"]["leases"]] == ["l1", "l2"]
    assert "hunter2" not in str(stored)


async def test_record_survives_a_concurrent_writer(cluster: MemCluster) -> None:
    await asyncio.gather(
        *(
            leases.record_issued(cluster, pod(cluster), "fix-42", [entry(f"l{i}")], attempts=20)
            for i in range(8)
        )
    )
    refs = sorted(e["leaseRef"] for e in cluster.task_leases[(NS, nm(cluster))]["status"]["leases"])
    assert refs == sorted(f"l{i}" for i in range(8))  # none lost to a conflict


async def test_record_refused_once_revoking(cluster: MemCluster) -> None:
    await leases.record_ended(cluster, pod(cluster), "fix-42", "cancelled")
    with pytest.raises(leases.LeaseEnded) as info:
        await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("late")])
    assert info.value.reason == "cancelled"


async def test_revoke_task_revokes_everything_and_releases(cluster: MemCluster) -> None:
    await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("l1"), entry("l2", "github", "jwt")])
    vault, jwt = FakeSource(), FakeSource()
    metrics = register_operator()
    outcome = await leases.revoke_task(
        cluster,
        {"vault": vault, "jwt": jwt},
        NS,
        nm(cluster),
        "completed",
        metrics=metrics,
        seen_at=0.0,
        backoff=FAST,
    )
    assert outcome.done and sorted(outcome.revoked) == ["db", "github"]
    assert (vault.revoked, jwt.revoked) == (["l1"], ["l2"])
    stored = cluster.task_leases[(NS, nm(cluster))]
    assert stored["status"]["phase"] == "Revoked" and stored["status"]["reason"] == "completed"
    assert stored["metadata"]["finalizers"] == []
    assert all(e["revokedAt"] and e["revokeReason"] == "completed" for e in stored["status"]["leases"])
    text = generate_latest(metrics.registry).decode()
    assert 'taskcreds_credentials_revoked_total{provider="vault",reason="completed"} 1.0' in text
    assert "taskcreds_revocation_lag_seconds_count 1.0" in text
    again = await leases.revoke_task(
        cluster, {"vault": vault, "jwt": jwt}, NS, nm(cluster), "failed", metrics=metrics
    )
    assert again.done and (vault.calls, jwt.calls) == (1, 1)  # idempotent: nothing revoked twice


async def test_failures_are_retried_visibly_then_succeed(cluster: MemCluster) -> None:
    await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("l1")])
    vault = FakeSource(failures=2)
    metrics = register_operator()
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    outcome = await leases.revoke_task(
        cluster,
        {"vault": vault},
        NS,
        nm(cluster),
        "completed",
        metrics=metrics,
        backoff=leases.Backoff(attempts=5, base=0.1, cap=0.15),
        sleep=fake_sleep,
        now=lambda: NOW,  # before the entry's expiry: failures are retried, not given up
    )
    assert outcome.done and vault.revoked == ["l1"]
    assert sleeps == [0.1, 0.15]  # capped exponential
    assert metrics.revocation_failures.labels(provider="vault")._value.get() == 2
    warnings = [e for e in cluster.events if e["type"] == "Warning"]
    assert len(warnings) == 2 and "connection refused" in warnings[0]["message"]
    assert warnings[0]["regarding"]["uid"] == pod(cluster)["metadata"]["uid"]
    (done,) = cluster.task_leases[(NS, nm(cluster))]["status"]["leases"]
    assert done["attempts"] == 2 and "lastError" not in done


async def test_attempts_exhausted_keeps_finalizer_and_says_why(cluster: MemCluster) -> None:
    await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("l1")])
    outcome = await leases.revoke_task(
        cluster, {"vault": FakeSource(failures=99)}, NS, nm(cluster), "completed", metrics=None, backoff=FAST,
        now=lambda: NOW,
    )
    assert not outcome.done and outcome.failed == ["db"]
    stored = cluster.task_leases[(NS, nm(cluster))]
    assert stored["status"]["phase"] == "Revoking"
    assert stored["metadata"]["finalizers"] == [names.FINALIZER_REVOKE]
    assert "connection refused" in stored["status"]["leases"][0]["lastError"]
    # the source comes back; the sweep finishes the job
    (result,) = await leases.sweep_leases(cluster, {"vault": FakeSource()}, metrics=None, backoff=FAST)
    assert result.done and cluster.task_leases[(NS, nm(cluster))]["status"]["phase"] == "Revoked"


async def test_a_revocation_still_failing_after_expiry_is_recorded_not_revocable_with_why(
    cluster: MemCluster,
) -> None:
    await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("l1")])
    before, after = NOW + timedelta(minutes=14), NOW + timedelta(minutes=16)
    down = FakeSource(failures=99)
    first = await leases.revoke_task(
        cluster, {"vault": down}, NS, nm(cluster), "completed", metrics=None, backoff=FAST, now=lambda: before
    )
    assert not first.done and first.failed == ["db"]
    (result,) = await leases.sweep_leases(cluster, {"vault": down}, metrics=None, backoff=FAST, now=lambda: after)
    assert result.done and result.not_revocable == ["db"]
    (stored,) = cluster.task_leases[(NS, nm(cluster))]["status"]["leases"]
    assert stored["notRevocable"] == (
        "expired at 2026-11-29T10:15:00Z before it could be revoked: vault: connection refused to 127.0.0.1:8200"
    )


#: when the sweep's revocation fails (minutes after issue; granted 15 min, the source honours 60) ->
#: what is recorded
CUT_FAILURES = {
    "before the granted end: not yet due": (14, "untouched"),
    "after the granted end, live at its source: retried": (16, "retried"),
    "a minute before the source's end: retried": (59, "retried"),
    "after the source's end: not revocable, saying when it died": (61, "not_revocable"),
}


@pytest.mark.parametrize("case", list(CUT_FAILURES))
async def test_a_lease_cut_to_its_grant_is_retried_until_its_source_s_end(cluster: MemCluster, case: str) -> None:
    cut = {**entry("l1"), "sourceExpiresAt": "2026-11-29T11:00:00Z"}
    await leases.record_issued(cluster, pod(cluster), "fix-42", [cut])
    minutes, expected = CUT_FAILURES[case]
    down = FakeSource(failures=99)
    await leases.revoke_expired(cluster, {"vault": down}, metrics=None, now=lambda: NOW + timedelta(minutes=minutes))
    (stored,) = cluster.task_leases[(NS, nm(cluster))]["status"]["leases"]
    if expected == "untouched":
        assert down.calls == 0 and "lastError" not in stored and "revokedAt" not in stored, case
    elif expected == "retried":
        assert down.calls == 1 and stored["attempts"] == 1, case
        assert "revokedAt" not in stored and "notRevocable" not in stored, (case, stored)
    else:
        assert stored["revokeReason"] == "expired", case
        assert stored["notRevocable"] == (
            "expired at 2026-11-29T11:00:00Z before it could be revoked: vault: connection refused to 127.0.0.1:8200"
        )


@pytest.mark.parametrize(
    ("case", "change", "expected"),
    [
        ("granted only", {}, "2026-11-29T10:15:00Z"),
        ("the source honours it longer", {"sourceExpiresAt": "2026-11-29T11:00:00Z"}, "2026-11-29T11:00:00Z"),
        ("a source expiry before the grant (edited by hand)", {"sourceExpiresAt": "2026-11-29T10:01:00Z"},
         "2026-11-29T10:15:00Z"),
        ("unreadable grant", {"expiresAt": "soon", "sourceExpiresAt": "2026-11-29T11:00:00Z"},
         "2026-11-29T11:00:00Z"),
        ("nothing readable", {"expiresAt": "soon"}, None),
    ],
)
def test_when_a_value_dies_at_its_source(case: str, change: dict[str, Any], expected: str | None) -> None:
    got = leases.dies_by({**entry("l1"), **change})
    assert (leases.format_time(got) if got else None) == expected, case


async def test_a_renewal_replace_of_none_removes_the_field(cluster: MemCluster) -> None:
    """A lease extended so that it no longer outlives its grant loses its sourceExpiresAt."""
    cut = {**entry("l1"), "sourceExpiresAt": "2026-11-29T11:00:00Z"}
    await leases.record_issued(cluster, pod(cluster), "fix-42", [cut])
    await leases.record_issued(cluster, pod(cluster), "fix-42", [], replace={
        "l1": {"expiresAt": "2026-11-29T10:30:00Z", "sourceExpiresAt": None}})
    (stored,) = cluster.task_leases[(NS, nm(cluster))]["status"]["leases"]
    assert stored["expiresAt"] == "2026-11-29T10:30:00Z" and "sourceExpiresAt" not in stored


async def test_static_and_unavailable_providers(cluster: MemCluster) -> None:
    await leases.record_issued(
        cluster,
        pod(cluster),
        "fix-42",
        [entry("s1", "legacy", "secret", static=True), entry("x1", "gh", "github-app")],
    )
    outcome = await leases.revoke_task(
        cluster,
        {"secret": FakeSource(not_revocable=True)},
        NS,
        nm(cluster),
        "completed",
        metrics=None,
        backoff=FAST,
        now=lambda: NOW,
    )
    assert not outcome.done and outcome.not_revocable == ["legacy"] and outcome.failed == ["gh"]
    entries = {e["credential"]: e for e in cluster.task_leases[(NS, nm(cluster))]["status"]["leases"]}
    assert entries["legacy"]["revokedAt"] and "cannot be revoked" in entries["legacy"]["notRevocable"]
    assert "not available" in entries["gh"]["lastError"]


async def test_durable_across_a_crash_mid_revocation(cluster: MemCluster) -> None:
    await leases.record_issued(cluster, pod(cluster), "fix-42", [entry(f"l{i}") for i in range(3)])
    vault = FakeSource()
    # the write that marks Revoking succeeds, the write recording the results dies: a crash mid-way
    original = cluster.patch_task_lease
    writes = 0

    async def crashing(*args: Any, **kwargs: Any) -> Any:
        nonlocal writes
        writes += 1
        if writes == 2:
            raise ClusterError("operator killed")
        return await original(*args, **kwargs)

    cluster.patch_task_lease = crashing  # type: ignore[method-assign]
    with pytest.raises(ClusterError):
        await leases.revoke_task(
            cluster, {"vault": vault}, NS, nm(cluster), "completed", metrics=None, backoff=FAST
        )
    stored = cluster.task_leases[(NS, nm(cluster))]
    assert stored["status"]["phase"] == "Revoking"  # the intent survived
    assert stored["metadata"]["finalizers"] == [names.FINALIZER_REVOKE]
    assert not any(e.get("revokedAt") for e in stored["status"]["leases"])
    cluster.patch_task_lease = original  # type: ignore[method-assign]
    # a new operator process: nothing in memory, everything from the TaskLease
    outcome = await leases.revoke_task(
        cluster, {"vault": FakeSource()}, NS, nm(cluster), "pod_deleted", metrics=None
    )
    assert outcome.done
    stored = cluster.task_leases[(NS, nm(cluster))]
    assert stored["status"]["phase"] == "Revoked"
    assert stored["status"]["reason"] == "completed"  # the first reason wins
    assert {e["revokeReason"] for e in stored["status"]["leases"]} == {"completed"}


async def test_issue_racing_revoke_never_leaves_an_unrecorded_lease(cluster: MemCluster) -> None:
    await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("l0")])
    vault = FakeSource()

    async def issue(i: int) -> str:
        try:
            await leases.record_issued(cluster, pod(cluster), "fix-42", [entry(f"n{i}")], attempts=50)
            return "recorded"
        except leases.LeaseEnded:
            return "refused"

    results = await asyncio.gather(
        leases.revoke_task(
            cluster, {"vault": vault}, NS, nm(cluster), "completed", metrics=None, backoff=FAST
        ),
        *(issue(i) for i in range(5)),
    )
    recorded = {f"n{i}" for i, r in enumerate(results[1:]) if r == "recorded"}
    stored = cluster.task_leases[(NS, nm(cluster))]
    # every recorded lease is revoked (by this run, or a re-run the sweep does)
    await leases.sweep_leases(cluster, {"vault": vault}, metrics=None, backoff=FAST)
    stored = cluster.task_leases[(NS, nm(cluster))]
    assert {e["leaseRef"] for e in stored["status"]["leases"]} == recorded | {"l0"}
    assert set(vault.revoked) == recorded | {"l0"}


async def test_revoke_pod_task_records_the_end_even_with_nothing_issued(cluster: MemCluster) -> None:
    outcome = await leases.revoke_pod_task(cluster, {}, pod(cluster), "deadline", metrics=None)
    assert outcome is not None and outcome.done
    assert cluster.task_leases[(NS, nm(cluster))]["status"]["phase"] == "Revoked"
    with pytest.raises(leases.LeaseEnded):
        await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("late")])
    no_task = {"metadata": {"name": "x", "namespace": NS, "uid": "u", "annotations": {}}}
    assert await leases.revoke_pod_task(cluster, {}, no_task, "completed", metrics=None) is None


async def test_orphans_found_and_swept(cluster: MemCluster) -> None:
    await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("l1")])
    assert await leases.find_orphaned_leases(cluster) == []
    name = nm(cluster)
    lease = cluster.task_leases[(NS, name)]
    cluster.delete_pod(NS, "agent-1")  # GC marks the lease deleted; the finalizer holds it
    assert cluster.task_leases[(NS, name)]["metadata"]["deletionTimestamp"]
    orphans = await leases.find_orphaned_leases(cluster)
    assert [o["metadata"]["name"] for o in orphans] == [lease["metadata"]["name"]]
    vault = FakeSource()
    (outcome,) = await leases.sweep_leases(cluster, {"vault": vault}, metrics=None, backoff=FAST)
    assert outcome.done and vault.revoked == ["l1"]
    assert (NS, name) not in cluster.task_leases  # finalizer released: the API deletes it


async def test_replaced_pod_uid_is_an_orphan(cluster: MemCluster) -> None:
    await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("l1")])
    old = cluster.pods.pop((NS, "agent-1"))
    cluster.put_pod({**old, "metadata": {k: v for k, v in old["metadata"].items() if k != "uid"}})
    assert len(await leases.find_orphaned_leases(cluster)) == 1


async def test_revoke_expired_only_past_expiry(cluster: MemCluster) -> None:
    await leases.record_issued(
        cluster,
        pod(cluster),
        "fix-42",
        [entry("old", expires=timedelta(minutes=1)), entry("new", expires=timedelta(hours=1))],
    )
    vault = FakeSource()
    count = await leases.revoke_expired(
        cluster, {"vault": vault}, metrics=None, now=lambda: NOW + timedelta(minutes=5)
    )
    assert count == 1 and vault.revoked == ["old"]
    entries = {e["leaseRef"]: e for e in cluster.task_leases[(NS, nm(cluster))]["status"]["leases"]}
    assert entries["old"]["revokeReason"] == "expired" and "revokedAt" not in entries["new"]
    assert cluster.task_leases[(NS, nm(cluster))]["status"]["phase"] == "Active"


def test_count_active() -> None:
    lease = {
        "status": {
            "leases": [{"provider": "jwt"}, {"provider": "jwt", "revokedAt": "x"}, {"provider": "vault"}]
        }
    }
    assert leases.count_active([lease]) == {"jwt": 1, "vault": 1}


async def test_one_replica_revokes_while_its_claim_is_fresh_another_takes_over_when_stale(
    cluster: MemCluster,
) -> None:
    """Every replica sees the same pod event; the first to claim the TaskLease revokes at the source."""
    await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("l1")])
    source = FakeSource(failures=10)  # replica A's attempts all fail: the source is down
    clock = [NOW]
    a = await leases.revoke_task(cluster, {"vault": source}, NS, nm(cluster), "completed", metrics=None,
                                 backoff=leases.Backoff(attempts=1, base=0.001, cap=0.001),
                                 now=lambda: clock[0], replica="replica-a")
    assert not a.done and a.claimed_by is None
    calls_by_a = source.calls
    b = await leases.revoke_task(cluster, {"vault": FakeSource()}, NS, nm(cluster), "completed",
                                 metrics=None, backoff=FAST, now=lambda: clock[0], replica="replica-b")
    assert b.claimed_by == "replica-a" and not b.done, "a fresh claim is left to its holder"
    assert source.calls == calls_by_a
    clock[0] = NOW + timedelta(seconds=leases.CLAIM_SECONDS + 1)  # replica A died mid-revocation
    healthy = FakeSource()
    c = await leases.revoke_task(cluster, {"vault": healthy}, NS, nm(cluster), "completed", metrics=None,
                                 backoff=FAST, now=lambda: clock[0], replica="replica-b")
    assert c.done and healthy.revoked == ["l1"]
    stored = cluster.task_leases[(NS, nm(cluster))]
    assert stored["status"]["phase"] == "Revoked"
    assert stored["status"]["revoker"]["id"] == "replica-b"


@pytest.mark.parametrize(
    ("case", "change", "dropped"),
    [
        ("revoked, expired long ago", {"revokedAt": "2026-11-29T09:00:00Z", "expiresAt": "2026-11-29T09:00:00Z"}, True),
        ("revoked, expired within the grace", {"revokedAt": "2026-11-29T09:57:00Z", "expiresAt": "2026-11-29T09:57:00Z"}, False),
        ("revoked early, not yet expired", {"revokedAt": "2026-11-29T09:00:00Z", "expiresAt": "2026-11-29T11:00:00Z"}, False),
        ("expired but not revoked yet (the sweep revokes first)", {"expiresAt": "2026-11-29T09:00:00Z"}, False),
        ("static value, never expires", {"revokedAt": "2026-11-29T09:00:00Z", "expiresAt": "2026-11-29T09:00:00Z", "static": True}, False),
        ("unreadable expiry", {"revokedAt": "2026-11-29T09:00:00Z", "expiresAt": "soon"}, False),
        ("cut to its grant, revoked at its source long ago", {"revokedAt": "2026-11-29T09:00:00Z",
         "expiresAt": "2026-11-29T09:00:00Z", "sourceExpiresAt": "2026-11-29T09:59:00Z"}, True),
        ("cut to its grant, not revocable, still live at its source", {"revokedAt": "2026-11-29T09:00:00Z",
         "expiresAt": "2026-11-29T09:00:00Z", "sourceExpiresAt": "2026-11-29T09:59:00Z", "notRevocable": "gone"},
         False),
        ("cut to its grant, not revocable, dead at its source long ago", {"revokedAt": "2026-11-29T09:00:00Z",
         "expiresAt": "2026-11-29T08:00:00Z", "sourceExpiresAt": "2026-11-29T09:00:00Z", "notRevocable": "gone"},
         True),
    ],
)
def test_compact_entries(case: str, change: dict[str, Any], dropped: bool) -> None:
    item = {**entry("l1"), **change}
    kept, gone = leases.compact_entries([item], NOW)
    assert (gone == [item], kept == [item]) == (dropped, not dropped), case


async def test_a_long_task_with_short_ttls_stays_under_the_crd_item_limit(cluster: MemCluster) -> None:
    """3,000 renewals of a 1-minute credential, with the sweep running: the list stays bounded.

    Without compaction every renewal adds an entry and the CRD's ``maxItems: 2000`` would refuse
    the write after ~2,000 renewals: the broker could no longer record and the task would starve.
    """
    vault, clock = FakeSource(), [NOW]
    for i in range(3000):
        clock[0] = NOW + timedelta(seconds=40 * i)
        issued = entry(f"l{i}", expires=timedelta(minutes=1))
        issued["issuedAt"] = leases.format_time(clock[0])
        issued["expiresAt"] = leases.format_time(clock[0] + timedelta(minutes=1))
        await leases.record_issued(cluster, pod(cluster), "fix-42", [issued], now=lambda: clock[0])
        if i % 45 == 0:  # the sweep, every 30 s of operator time
            await leases.revoke_expired(cluster, {"vault": vault}, metrics=None, now=lambda: clock[0])
    status = cluster.task_leases[(NS, nm(cluster))]["status"]
    assert len(status["leases"]) < 40
    assert status["compactedLeases"] + len(status["leases"]) == 3000  # every issuance accounted for
    assert status["leases"][-1]["leaseRef"] == "l2999" and "revokedAt" not in status["leases"][-1]


async def test_compaction_is_logged_by_lease_reference(cluster: MemCluster, caplog: pytest.LogCaptureFixture) -> None:
    old = {**entry("old"), "revokedAt": "2026-11-29T08:00:00Z", "expiresAt": "2026-11-29T08:00:00Z"}
    await leases.record_issued(cluster, pod(cluster), "fix-42", [old])
    with caplog.at_level("INFO", logger="taskcreds.leases"):
        await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("new")], now=lambda: NOW)
    status = cluster.task_leases[(NS, nm(cluster))]["status"]
    assert [e["leaseRef"] for e in status["leases"]] == ["new"] and status["compactedLeases"] == 1
    dropped = [r for r in caplog.records if r.getMessage() == "expired lease dropped from the TaskLease"]
    assert [r.fields["lease_ref"] for r in dropped] == ["old"]  # type: ignore[attr-defined]
