"""The sweep and the lifecycle's revocation meet a TaskLease collected under them (seen in the soak,
tests/soak): what was revoked at its source stays revoked, a collected lease counts as done (its
finalizer was released), and nothing raises into the sweep or the pod handlers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from taskcreds.operator import leases
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import ProviderError

from taskcreds import names
from tests.operator.test_leases import (  # noqa: F401 (cluster: a fixture)
    FAST,
    NOW,
    NS,
    FakeSource,
    cluster,
    entry,
    nm,
    pod,
    with_agent_pod,
)


class _CollectedWhileRevoking(FakeSource):
    """Revokes at the source, and meanwhile the TaskLease is collected (its task ended elsewhere)."""

    def __init__(self, mem: MemCluster) -> None:
        super().__init__()
        self.mem = mem

    async def revoke(self, lease_ref: str, source_spec: dict[str, Any], source_namespace: str | None) -> None:
        await super().revoke(lease_ref, source_spec, source_namespace)
        self.mem.task_leases.pop((NS, nm(self.mem)), None)


async def test_revoke_expired_survives_a_lease_collected_mid_sweep(cluster: MemCluster) -> None:  # noqa: F811
    await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("old", expires=timedelta(minutes=1))])
    vault = _CollectedWhileRevoking(cluster)
    count = await leases.revoke_expired(
        cluster, {"vault": vault}, metrics=None, now=lambda: NOW + timedelta(minutes=5)
    )
    assert vault.revoked == ["old"] and count == 1
    assert (NS, nm(cluster)) not in cluster.task_leases


async def test_sweep_goes_on_past_an_orphan_collected_mid_revocation(cluster: MemCluster) -> None:  # noqa: F811
    """Two orphaned TaskLeases; the first is collected while its lease is revoked: the second is still swept."""
    second = cluster.put_pod(
        {
            "metadata": {
                "name": "agent-2",
                "namespace": NS,
                "labels": {names.LABEL_INJECT: "true"},
                "annotations": {names.ANNOTATION_TASK: "fix-43", names.ANNOTATION_CREDENTIALS: "db"},
            },
            "spec": {"serviceAccountName": "agent"},
        }
    )
    await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("a")])
    await leases.record_issued(cluster, second, "fix-43", [entry("b")])
    cluster.pods.clear()  # both pods gone: both TaskLeases are orphans
    vault = _CollectedWhileRevoking(cluster)
    await leases.sweep_leases(cluster, {"vault": vault}, metrics=None, backoff=FAST)
    assert sorted(vault.revoked) == ["a", "b"]


# --- the lifecycle's revocation meets the same race (seen in a 10-minute soak at ~200 running pods:
# a pod's 'failed' and its deletion both revoke; the first finished, released the finalizer and the
# TaskLease was collected under the second, which logged an ERROR and left it to the sweep) --------


async def test_revoke_task_is_done_when_the_lease_is_collected_while_it_revokes(cluster: MemCluster) -> None:  # noqa: F811
    await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("a")])
    vault = _CollectedWhileRevoking(cluster)
    outcome = await leases.revoke_task(cluster, {"vault": vault}, NS, nm(cluster), "failed", metrics=None)
    assert vault.revoked == ["a"], "revoked at its source before the TaskLease went"
    assert outcome.done


class _CollectsOnClaim(MemCluster):
    """The TaskLease is collected between revoke_task's read and its claim (another revocation
    finished in between and the pod is gone)."""

    async def patch_task_lease(
        self, namespace: str, name: str, patch: dict[str, Any], *, subresource: str | None = None
    ) -> dict[str, Any]:
        if subresource == "status" and (patch.get("status") or {}).get("revoker"):
            self.task_leases.pop((namespace, name), None)
        return await super().patch_task_lease(namespace, name, patch, subresource=subresource)


async def test_revoke_task_is_done_when_the_lease_is_collected_before_its_claim() -> None:
    mem = with_agent_pod(_CollectsOnClaim())
    await leases.record_issued(mem, pod(mem), "fix-42", [entry("a")])
    vault = FakeSource()
    outcome = await leases.revoke_task(mem, {"vault": vault}, NS, nm(mem), "pod_deleted", metrics=None)
    assert outcome.done and vault.revoked == []  # gone: its finalizer was released, so it was revoked


async def test_recording_an_ending_tolerates_the_lease_collected_under_it() -> None:
    mem = with_agent_pod(_CollectsOnStatusPatch())
    await leases.record_issued(mem, pod(mem), "fix-42", [entry("a")])
    mem.armed = True
    await leases.record_ended(mem, pod(mem), "fix-42", "failed")  # no NotFound out of it


class _CollectsOnStatusPatch(MemCluster):
    armed = False

    async def patch_task_lease(
        self, namespace: str, name: str, patch: dict[str, Any], *, subresource: str | None = None
    ) -> dict[str, Any]:
        if self.armed and subresource == "status":
            self.armed = False
            self.task_leases.pop((namespace, name), None)
        return await super().patch_task_lease(namespace, name, patch, subresource=subresource)


async def test_a_lease_deleted_while_a_revocation_fails_is_not_reported_done(
    cluster: MemCluster,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    # only a person removing the finalizer can do this; nothing is left to retry from, so say so
    await leases.record_issued(cluster, pod(cluster), "fix-42", [entry("a")])

    class _DownAndDeleted(FakeSource):
        async def revoke(self, lease_ref: str, source_spec: dict[str, Any], source_namespace: str | None) -> None:
            cluster.task_leases.pop((NS, nm(cluster)), None)
            raise ProviderError("the source is down")

    with caplog.at_level("WARNING", logger="taskcreds.leases"):
        outcome = await leases.revoke_task(
            cluster, {"vault": _DownAndDeleted()}, NS, nm(cluster), "failed", metrics=None, backoff=FAST,
            now=lambda: NOW,
        )
    assert not outcome.done and outcome.failed == ["db"]
    assert "task lease deleted while revocations were failing" in caplog.text
