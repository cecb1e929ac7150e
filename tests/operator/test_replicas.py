"""Two operator replicas against one API (the chart's default), and the chart's RBAC against the
calls the operator really makes.

Both replicas serve the webhook and the broker and both see every pod event; revocation must still
happen exactly once per lease at its source, with the TaskLease finishing Revoked. Every API call
either replica made, under its own service-account identity, must be allowed by the Role and
ClusterRole the chart renders.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from taskcreds import names
from taskcreds.devauthority import DevAuthority
from taskcreds.svid import client_context
from tests.chart.helm import Helm, find_helm
from tests.kube.fixtures import KubeApi
from tests.kube.rbac import rules_from, uncovered
from tests.kube.tokens import API_AUDIENCES
from tests.operator.running import Replica, webhook_configuration

CRDS = Path(__file__).resolve().parents[2] / "charts" / "taskcreds" / "crds"
TD = "taskcreds.local"
OPERATOR_SA = "taskcreds-operator"
OPERATOR_USER = f"system:serviceaccount:taskcreds-system:{OPERATOR_SA}"


@pytest.fixture
def helm_binary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helm]:
    binary = find_helm()
    if binary is None:
        pytest.skip("helm not found: expected .venv/bin/helm (scripts/bootstrap.sh installs it)")
    yield Helm(binary=binary, home=tmp_path_factory.mktemp("helm-home"))


async def test_two_replicas_revoke_every_lease_once_within_the_charts_rbac(
    kube_api: KubeApi, helm_binary: Helm
) -> None:
    kube_api.register_crds_from(CRDS)
    for ns in ("taskcreds-system", "agents"):
        kube_api.ensure_namespace(ns)
    for ns, sa in (("taskcreds-system", OPERATOR_SA), ("agents", "coding-agent")):
        kube_api.put(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}}
        )
    kube_api.put(webhook_configuration(timeout=10))
    kube_api.put(
        {
            "apiVersion": names.API_VERSION,
            "kind": "CredentialSource",
            "metadata": {"name": "api", "namespace": "agents"},
            "spec": {
                "provider": "jwt",
                "defaultTTL": "10m",
                "maxTTL": "1h",
                "allowedServiceAccounts": ["coding-agent"],
            },
        }
    )
    authority = DevAuthority(TD, allow=True)
    operator_svid = authority.mint_x509_svid(f"spiffe://{TD}/ns/taskcreds-system/sa/{OPERATOR_SA}")
    token = kube_api.issue_token("taskcreds-system", OPERATOR_SA, list(API_AUDIENCES))
    replicas = [Replica(kube_api, operator_svid, token) for _ in range(2)]
    for replica in replicas:
        replica.start()
    try:
        deadline = time.monotonic() + 60
        while not all(r.ready for r in replicas):
            assert not any(r.failure for r in replicas), [r.failure for r in replicas]
            assert time.monotonic() < deadline, "replicas not ready within 60 s"
            await asyncio.sleep(0.05)
        # the API server reaches the webhook Service: the first replica's endpoint
        kube_api.set_service_endpoint(
            "taskcreds-system", "taskcreds-webhook", f"127.0.0.1:{replicas[0].ports['webhook']}"
        )

        from kubernetes_asyncio import client as k8s

        core = k8s.CoreV1Api(await kube_api.kubernetes_asyncio_client())
        pods = [f"agent-{i}" for i in range(3)]
        for pod in pods:
            await core.create_namespaced_pod(
                "agents",
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": pod,
                        "namespace": "agents",
                        "labels": {names.LABEL_INJECT: "true"},
                        "annotations": {
                            names.ANNOTATION_TASK: f"task-{pod}",
                            names.ANNOTATION_CREDENTIALS: "api",
                        },
                    },
                    "spec": {
                        "serviceAccountName": "coding-agent",
                        "securityContext": {"fsGroup": 1000},
                        "containers": [{"name": "agent", "image": "example.com/agent:1"}],
                    },
                },
            )
        # each pod's sidecar gets its credential from either replica's broker (as a Service would spread them)
        async with aiohttp.ClientSession() as http:
            agent_svid = authority.mint_x509_svid(f"spiffe://{TD}/ns/agents/sa/coding-agent")
            for i, pod in enumerate(pods):
                broker = replicas[i % 2].ports["broker"]
                pod_token = kube_api.issue_pod_token("agents", pod, "coding-agent")
                async with http.post(
                    f"https://127.0.0.1:{broker}/v1/credentials",
                    json={"task": f"task-{pod}"},
                    ssl=client_context(agent_svid),
                    headers={"Authorization": f"Bearer {pod_token}"},
                ) as r:
                    assert r.status == 200, await r.text()
        # every task ends at once; both replicas see every event
        for pod in pods:
            await core.patch_namespaced_pod(
                pod, "agents", {"metadata": {"annotations": {names.ANNOTATION_TASK_STATUS: "completed"}}}
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            leases = kube_api.list(names.API_VERSION, "TaskLease", "agents")
            done = [
                lease
                for lease in leases
                if (lease.get("status") or {}).get("phase") == "Revoked"
                and names.FINALIZER_REVOKE not in (lease["metadata"].get("finalizers") or [])
            ]
            if len(done) == len(pods):
                break
            await asyncio.sleep(0.05)
        assert len(done) == len(pods), leases
        assert all(
            e.get("revokedAt") and e.get("revokeReason") == "completed"
            for lease in done
            for e in lease["status"]["leases"]
        )
        # revoked once per lease at its source, whichever replica did it
        revoked = sum(
            r.metrics.credentials_revoked.labels(provider="jwt", reason="completed")._value.get()
            for r in replicas
        )
        assert revoked == len(pods), (
            [
                r.metrics.credentials_revoked.labels(provider="jwt", reason="completed")._value.get()
                for r in replicas
            ],
            [lease["status"] for lease in done],
        )
    finally:
        for replica in replicas:
            replica.stop()
    assert not any(r.failure for r in replicas), [r.failure for r in replicas]

    # the chart's RBAC allows every call the operator made under its own identity
    calls = [c for c in kube_api.api_calls if c.user == OPERATOR_USER]
    assert calls, "the operator made no API call under its service account"
    chart = helm_binary.template()
    missing = uncovered(calls, rules_from(chart))
    assert missing == [], f"the chart's Role/ClusterRole would refuse: {sorted(set(missing))}"
