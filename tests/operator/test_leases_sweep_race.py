"""The sweep meets a TaskLease collected between its list and its write (seen in the soak, tests/soak):
the expired lease is still revoked at its source and the sweep goes on instead of failing whole."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from taskcreds.operator import leases
from taskcreds.operator.memcluster import MemCluster

from taskcreds import names
from tests.operator.test_leases import FAST, NOW, NS, FakeSource, cluster, entry, nm, pod  # noqa: F401 (fixture)


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
