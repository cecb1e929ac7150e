"""KubeCluster (kubernetes_asyncio) against the Kubernetes API stand-in: the same semantics as
MemCluster, checked call by call, plus the durable revocation engine over HTTP."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
from taskcreds.operator import leases
from taskcreds.operator.cluster import AlreadyExists, ClusterError, Conflict, NotFound
from taskcreds.operator.kube import KubeCluster, connect
from taskcreds.operator.providers.jwt import JwtProvider

from taskcreds import names
from taskcreds.metrics import register_operator
from tests.kube.fixtures import KubeApi, kube_api  # noqa: F401  (fixture)

CRDS = Path(__file__).resolve().parents[2] / "charts" / "taskcreds" / "crds"
NS = "team-a"


def pod_body(name: str, *, task: str = "fix-42", sa: str = "agent") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {names.LABEL_INJECT: "true"},
            "annotations": {names.ANNOTATION_TASK: task, names.ANNOTATION_CREDENTIALS: "api"},
        },
        "spec": {"serviceAccountName": sa, "containers": [{"name": "agent", "image": "busybox:1"}]},
    }


@pytest.fixture
async def kube(kube_api: KubeApi, tmp_path: Path) -> Any:  # noqa: F811
    kube_api.register_crds_from(CRDS)
    kube_api.ensure_namespace(NS)
    kube_api.put(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "agent", "namespace": NS}}
    )
    cluster = await connect(kubeconfig=kube_api.kubeconfig(tmp_path))
    yield cluster
    await cluster.close()


async def test_connect_by_url_and_missing_config(kube_api: KubeApi, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    cluster = await connect(url=kube_api.url, token=kube_api.admin_token)
    try:
        assert await cluster.get_pod("default", "nope") is None
    finally:
        await cluster.close()
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with pytest.raises(ClusterError, match="no Kubernetes configuration"):
        await connect()


async def test_token_review_names_the_pod(kube: KubeCluster, kube_api: KubeApi) -> None:  # noqa: F811
    pod = kube_api.put(pod_body("agent-1"))
    token = kube_api.issue_pod_token(NS, "agent-1")
    ident = await kube.review_token(token, names.TOKEN_AUDIENCE)
    assert ident is not None
    assert (ident.namespace, ident.service_account, ident.pod_name, ident.pod_uid) == (
        NS,
        "agent",
        "agent-1",
        pod["metadata"]["uid"],
    )
    assert await kube.review_token(token, "vault") is None
    assert await kube.review_token("garbage", names.TOKEN_AUDIENCE) is None


async def test_pods_secrets_and_sources(kube: KubeCluster, kube_api: KubeApi) -> None:  # noqa: F811
    kube_api.put(pod_body("agent-1"))
    pod = await kube.get_pod(NS, "agent-1")
    assert pod["metadata"]["annotations"][names.ANNOTATION_TASK] == "fix-42"
    assert pod["metadata"]["creationTimestamp"].endswith("Z")
    await kube.apply_secret(NS, "keys", {"a": b"one"})
    await kube.apply_secret(NS, "keys", {"a": b"two"})  # replace
    secret = await kube.get_secret(NS, "keys")
    assert base64.b64decode(secret["data"]["a"]) == b"two"
    kube_api.put(
        {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND_CREDENTIAL_SOURCE,
            "metadata": {"name": "api", "namespace": NS},
            "spec": {"provider": "jwt", "maxTTL": "1h", "allowedServiceAccounts": ["agent"]},
        }
    )
    kube_api.put(
        {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND_CLUSTER_CREDENTIAL_SOURCE,
            "metadata": {"name": "shared"},
            "spec": {
                "provider": "jwt",
                "maxTTL": "1h",
                "allowedServiceAccounts": ["agent"],
                "allowedNamespaces": [NS],
            },
        }
    )
    assert (await kube.get_credential_source(NS, "api"))["spec"]["provider"] == "jwt"
    assert (await kube.get_cluster_credential_source("shared"))["spec"]["allowedNamespaces"] == [NS]
    assert await kube.get_credential_source(NS, "shared") is None


async def test_service_account_token_bound_to_pod(kube: KubeCluster, kube_api: KubeApi) -> None:  # noqa: F811
    pod = kube_api.put(pod_body("agent-1"))
    token, expires = await kube.create_service_account_token(
        NS, "agent", ["https://kubernetes.default.svc"], 600, ("agent-1", pod["metadata"]["uid"])
    )
    assert expires.tzinfo is not None
    ident = await kube.review_token(token, "https://kubernetes.default.svc")
    assert ident is not None and ident.service_account == "agent" and ident.pod_name == "agent-1"
    kube_api.delete("v1", "Pod", NS, "agent-1")
    assert await kube.review_token(token, "https://kubernetes.default.svc") is None  # died with its pod
    with pytest.raises(ClusterError):
        await kube.create_service_account_token(NS, "nobody", ["x"], 600, None)
    await kube.apply_secret(NS, "binding", {})
    await kube.delete_secret(NS, "binding")
    await kube.delete_secret(NS, "binding")  # absent is success
    assert await kube.get_secret(NS, "binding") is None


async def test_task_lease_conflicts_status_and_finalizers(kube: KubeCluster, kube_api: KubeApi) -> None:  # noqa: F811
    pod = kube_api.put(pod_body("agent-1"))
    body = leases.task_lease_body(pod, "fix-42")
    created = await kube.create_task_lease(NS, body)
    with pytest.raises(AlreadyExists):
        await kube.create_task_lease(NS, body)
    name = created["metadata"]["name"]
    rv = created["metadata"]["resourceVersion"]
    updated = await kube.patch_task_lease(
        NS,
        name,
        {"metadata": {"resourceVersion": rv}, "status": {"phase": "Active", "leases": []}},
        subresource="status",
    )
    assert updated["status"]["phase"] == "Active"
    with pytest.raises(Conflict):
        await kube.patch_task_lease(
            NS,
            name,
            {"metadata": {"resourceVersion": rv}, "status": {"phase": "Revoked"}},
            subresource="status",
        )
    assert [item["metadata"]["name"] for item in await kube.list_task_leases(NS)] == [name]
    assert len(await kube.list_task_leases()) == 1
    await kube.delete_task_lease(NS, name)  # held by the finalizer
    held = await kube.get_task_lease(NS, name)
    assert held is not None and held["metadata"].get("deletionTimestamp")
    await kube.patch_task_lease(NS, name, {"metadata": {"finalizers": []}})
    assert await kube.get_task_lease(NS, name) is None
    with pytest.raises(NotFound):
        await kube.patch_task_lease(NS, name, {"status": {"phase": "Active"}}, subresource="status")


async def test_events_and_webhook_ca_bundle(kube: KubeCluster, kube_api: KubeApi) -> None:  # noqa: F811
    pod = kube_api.put(pod_body("agent-1"))
    await kube.emit_event(pod, "RevocationFailed", "could not revoke api (vault: down)", "Warning")
    (event,) = [e for e in kube_api.events if e.get("reason") == "RevocationFailed"]
    assert event["type"] == "Warning" and event["involvedObject"]["uid"] == pod["metadata"]["uid"]
    kube_api.put(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "taskcreds"},
            "webhooks": [
                {
                    "name": "inject.taskcreds.io",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "clientConfig": {"service": {"name": "w", "namespace": "taskcreds-system"}},
                }
            ],
        }
    )
    await kube.patch_webhook_ca_bundle("taskcreds", b"-----BEGIN CERTIFICATE-----\n")
    config = kube_api.get(
        "admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", None, "taskcreds"
    )
    assert base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]).startswith(b"-----BEGIN")


async def test_watch_pods_replays_then_streams(kube: KubeCluster, kube_api: KubeApi) -> None:  # noqa: F811
    kube_api.put(pod_body("agent-1"))
    kube_api.put({**pod_body("plain"), "metadata": {"name": "plain", "namespace": NS}})
    seen: list[tuple[str, str, str | None]] = []

    async def follow() -> None:
        async for kind, pod in kube.watch_pods(None, f"{names.LABEL_INJECT}=true"):
            status = (pod["metadata"].get("annotations") or {}).get(names.ANNOTATION_TASK_STATUS)
            seen.append((kind, pod["metadata"]["name"], status))

    task = asyncio.create_task(follow())
    try:
        await kube_api.wait_for(lambda: seen, timeout=5)
        pod = kube_api.get("v1", "Pod", NS, "agent-1")
        pod["metadata"]["annotations"][names.ANNOTATION_TASK_STATUS] = "completed"
        kube_api.put(pod)
        await kube_api.wait_for(lambda: any(s[2] == "completed" for s in seen), timeout=5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert seen[0] == ("ADDED", "agent-1", None)
    assert all(name == "agent-1" for _, name, _ in seen)  # the label selector holds


async def test_revoke_task_over_http_releases_finalizer(kube: KubeCluster, kube_api: KubeApi) -> None:  # noqa: F811
    pod = kube_api.put(pod_body("agent-1"))
    jwt = JwtProvider(kube, secret_namespace="taskcreds-system", secret_name="jwt-keys", issuer="https://t")
    kube_api.ensure_namespace("taskcreds-system")
    from datetime import UTC, datetime, timedelta

    from taskcreds.operator.providers.base import Issued

    now = datetime.now(UTC)
    entries = [
        leases.lease_entry(
            "api",
            "jwt",
            {"kind": names.KIND_CREDENTIAL_SOURCE, "name": "api", "namespace": NS},
            Issued(
                files={},
                lease_ref=f"jwt:id{i}:{int(now.timestamp()) + 60}",
                issued_at=now,
                expires_at=now + timedelta(minutes=1),
            ),
        )
        for i in range(3)
    ]
    await leases.record_issued(kube, pod, "fix-42", entries)
    metrics = register_operator()
    outcome = await leases.revoke_pod_task(kube, {"jwt": jwt}, pod, "completed", metrics=metrics)
    assert outcome is not None and outcome.done and sorted(outcome.revoked) == ["api", "api", "api"]
    lease = kube_api.get(
        names.API_VERSION,
        names.KIND_TASK_LEASE,
        NS,
        leases.lease_name("agent-1", "fix-42"),
    )
    assert lease["status"]["phase"] == "Revoked"
    assert not lease["metadata"].get("finalizers")
    assert all(e["revokeReason"] == "completed" for e in lease["status"]["leases"])
    assert all(jwt.is_revoked(f"id{i}") for i in range(3))
