"""The lifecycle's kopf handler against the API stand-in: a pod's phase change reaches it (M3).

kopf's ``on.event`` handler gets every watch event of an opted-in pod, status-only writes (the
kubelet's ``pods/status``) included: a pod that goes Running -> Succeeded without any task-status
annotation ends its task and is revoked, one that stays Running is not.
"""

from __future__ import annotations

from typing import Any

import kopf
import pytest
from kubernetes_asyncio import client
from taskcreds.operator.lifecycle import TaskLifecycle, build_registry

from taskcreds import names
from tests.kube.fixtures import KubeApi
from tests.kube.test_kopf import running


@pytest.mark.parametrize(
    ("phase", "reason"),
    [
        pytest.param("Succeeded", "completed", id="Running to Succeeded"),
        pytest.param("Failed", "failed", id="Running to Failed"),
    ],
)
async def test_a_finished_pod_is_revoked_through_kopf(kube_api: KubeApi, phase: str, reason: str) -> None:
    revoked: list[tuple[str, str]] = []
    seen: dict[str, str] = {}  # pod name -> the phase the status sink last saw

    async def revoke(pod: dict[str, Any], why: str, seen_at: float) -> None:
        revoked.append((pod["metadata"]["name"], why))

    def sink(pod: dict[str, Any], deleted: bool) -> None:
        seen[pod["metadata"]["name"]] = (pod.get("status") or {}).get("phase", "")

    lifecycle = TaskLifecycle(revoke=revoke, status_sink=sink)
    registry = build_registry(lifecycle)
    kopf.on.login(registry=registry)(lambda **_: kube_api.kopf_connection_info())
    core = client.CoreV1Api(await kube_api.kubernetes_asyncio_client())
    for name in ("agent", "still-running"):
        await core.create_namespaced_pod(
            "default",
            {
                "metadata": {
                    "name": name,
                    "labels": {names.LABEL_INJECT: "true"},
                    "annotations": {names.ANNOTATION_TASK: "fix-42", names.ANNOTATION_CREDENTIALS: "api"},
                },
                "spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "busybox:1"}]},
            },
        )
    async with running(kube_api, registry):
        for name in ("agent", "still-running"):
            kube_api.set_pod_phase("default", name, "Running")
        # kopf batches a pod's quick successive events: wait for what the handler last saw
        await kube_api.wait_for(lambda: seen == {"agent": "Running", "still-running": "Running"})
        assert revoked == []
        kube_api.set_pod_phase("default", "agent", phase)  # the kubelet: every container has exited
        await kube_api.wait_for(lambda: revoked == [("agent", reason)])
        assert seen == {"agent": phase, "still-running": "Running"}  # the broker's status hub too
    await lifecycle.close()
    assert revoked == [("agent", reason)]


async def test_kopf_pod_events_feed_the_sweeps_pod_view(kube_api: KubeApi) -> None:
    """Through kopf's real watch — the initial list (events of type None), ADDED, DELETED — the view
    learns every opted-in pod, so a sweep right after makes no pod GET; a deleted pod leaves it."""
    from taskcreds.operator import leases
    from taskcreds.operator.kube import connect

    kube_api.register_crds_from("charts/taskcreds/crds")
    cluster = await connect(url=kube_api.url, token=kube_api.admin_token)
    view = leases.PodView()

    async def revoke(pod: dict[str, Any], why: str, seen_at: float) -> None:
        pass

    lifecycle = TaskLifecycle(revoke=revoke, view=view)
    registry = build_registry(lifecycle)
    kopf.on.login(registry=registry)(lambda **_: kube_api.kopf_connection_info())
    core = client.CoreV1Api(await kube_api.kubernetes_asyncio_client())

    async def create(name: str) -> dict[str, Any]:
        await core.create_namespaced_pod(
            "default",
            {
                "metadata": {
                    "name": name,
                    "labels": {names.LABEL_INJECT: "true"},
                    "annotations": {names.ANNOTATION_TASK: f"t-{name}", names.ANNOTATION_CREDENTIALS: "api"},
                },
                "spec": {"containers": [{"name": "a", "image": "busybox:1"}]},
            },
        )
        pod = kube_api.get("v1", "Pod", "default", name)
        assert pod is not None
        await leases.ensure_task_lease(cluster, pod, f"t-{name}")
        return pod

    def pod_gets() -> int:
        return sum(1 for c in kube_api.api_calls if (c.verb, c.resource) == ("get", "pods"))

    try:
        listed = await create("listed")  # there before kopf starts: its initial list
        async with running(kube_api, registry):
            added = await create("added")
            await kube_api.wait_for(lambda: len(view) == 2)
            before = pod_gets()
            await leases.sweep_leases(cluster, {}, metrics=None, view=view)
            assert pod_gets() == before
            assert view.last_sweep == leases.SweepCounts(leases=2, pod_gets=0, answered_by_view=2)
            await core.delete_namespaced_pod("listed", "default")
            await kube_api.wait_for(lambda: len(view) == 1)
            assert added["metadata"]["uid"] in view and listed["metadata"]["uid"] not in view
    finally:
        await lifecycle.close()
        await cluster.close()
