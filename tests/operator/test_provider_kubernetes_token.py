"""The kubernetes-token provider: pod-scoped TokenRequests that really die when revoked."""

from __future__ import annotations

from typing import Any

import pytest
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import IssueRequest, ProviderError
from taskcreds.operator.providers.kubernetes_token import KubernetesTokenProvider

AUD = "https://kubernetes.default.svc"


@pytest.fixture
def mem() -> tuple[MemCluster, dict[str, Any]]:
    m = MemCluster()
    pod = m.put_pod(
        {"metadata": {"name": "agent-1", "namespace": "team-a"}, "spec": {"serviceAccountName": "agent"}}
    )
    return m, pod


def request(pod: dict[str, Any], ttl: int = 900, **spec: Any) -> IssueRequest:
    block = {"serviceAccount": "deployer", "audiences": [AUD], **spec}
    return IssueRequest(
        credential="deploy",
        source_spec={"provider": "kubernetes-token", "kubernetesToken": block},
        source_namespace="team-a",
        namespace="team-a",
        pod="agent-1",
        pod_uid=pod["metadata"]["uid"],
        service_account="agent",
        task="t",
        ttl_seconds=ttl,
    )


async def test_issue_then_revoke_kills_the_token(mem: tuple[MemCluster, dict[str, Any]]) -> None:
    cluster, pod = mem
    p = KubernetesTokenProvider(cluster)
    issued = await p.issue(request(pod))
    token = issued.files["token"]
    ident = await cluster.review_token(token, AUD)
    assert ident is not None and (ident.namespace, ident.service_account) == ("team-a", "deployer")
    assert token not in issued.lease_ref and issued.lease_ref.startswith(
        "sa-token:team-a/taskcreds-bind-agent-1-"
    )
    assert (issued.expires_at - issued.issued_at).total_seconds() >= 900
    await p.revoke(issued.lease_ref, {}, "team-a")
    assert await cluster.review_token(token, AUD) is None  # dead at the API server
    await p.revoke(issued.lease_ref, {}, "team-a")  # idempotent


async def test_token_dies_with_the_pod(mem: tuple[MemCluster, dict[str, Any]]) -> None:
    cluster, pod = mem
    issued = await KubernetesTokenProvider(cluster).issue(request(pod))
    cluster.delete_pod("team-a", "agent-1")  # the binding Secret is owned by the pod
    assert await cluster.review_token(issued.files["token"], AUD) is None


async def test_short_ttl_raised_to_the_api_minimum(mem: tuple[MemCluster, dict[str, Any]]) -> None:
    cluster, pod = mem
    issued = await KubernetesTokenProvider(cluster).issue(request(pod, ttl=60))
    assert (issued.expires_at - issued.issued_at).total_seconds() >= 599


async def test_renew_revokes_the_old_token(mem: tuple[MemCluster, dict[str, Any]]) -> None:
    cluster, pod = mem
    p = KubernetesTokenProvider(cluster)
    old = await p.issue(request(pod))
    new = await p.renew(old.lease_ref, request(pod))
    assert await cluster.review_token(old.files["token"], AUD) is None
    assert await cluster.review_token(new.files["token"], AUD) is not None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"serviceAccount": ""}, "needs kubernetesToken.serviceAccount"),
        ({"audiences": "x"}, "must be a list"),
    ],
)
async def test_bad_specs(mem: tuple[MemCluster, dict[str, Any]], spec: dict[str, Any], message: str) -> None:
    cluster, pod = mem
    with pytest.raises(ProviderError, match=message):
        await KubernetesTokenProvider(cluster).issue(request(pod, **spec))


async def test_api_failure_cleans_up_the_binding(mem: tuple[MemCluster, dict[str, Any]]) -> None:
    cluster, pod = mem
    cluster.fail("create_service_account_token")
    with pytest.raises(ProviderError, match="TokenRequest for service account team-a/deployer failed"):
        await KubernetesTokenProvider(cluster).issue(request(pod))
    assert not [k for k in cluster.secrets if k[1].startswith("taskcreds-bind-")]


async def test_bad_lease_ref() -> None:
    with pytest.raises(ProviderError, match="not sa-token"):
        await KubernetesTokenProvider(MemCluster()).revoke("nope", {}, None)
