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
