"""The kubernetes-token provider: pod-scoped TokenRequests that really die when revoked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from taskcreds.operator.kube import connect
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import Issued, IssueRequest, ProviderError
from taskcreds.operator.providers.kubernetes_token import KubernetesTokenProvider
from taskcreds.operator.sources import SourceError, parse_source

from taskcreds import names
from tests.kube.fixtures import KubeApi, kube_api  # noqa: F401  (fixture)

AUD = "https://kubernetes.default.svc"


@pytest.fixture
def mem() -> tuple[MemCluster, dict[str, Any]]:
    m = MemCluster()
    pod = m.put_pod(
        {"metadata": {"name": "agent-1", "namespace": "team-a"}, "spec": {"serviceAccountName": "agent"}}
    )
    return m, pod


def request(
    pod: dict[str, Any], ttl: int = 900, *, source_namespace: str | None = None, **spec: Any
) -> IssueRequest:
    """An issue for a ClusterCredentialSource (``source_namespace`` None) unless told otherwise."""
    block = {"serviceAccount": "deployer", "audiences": [AUD], **spec}
    return IssueRequest(
        credential="deploy",
        source_spec={"provider": "kubernetes-token", "kubernetesToken": block},
        source_namespace=source_namespace,
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


@pytest.fixture
async def stand_in(kube_api: KubeApi, tmp_path: Path) -> AsyncIterator[tuple[Any, dict[str, Any]]]:  # noqa: F811
    """KubeCluster over HTTP to the API stand-in, with the agent's pod and both service accounts."""
    kube_api.ensure_namespace("team-a")
    for account in ("agent", "deployer"):
        kube_api.put({"apiVersion": "v1", "kind": "ServiceAccount",
                      "metadata": {"name": account, "namespace": "team-a"}})
    pod = kube_api.put({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent-1", "namespace": "team-a"},
                        "spec": {"serviceAccountName": "agent", "containers": [{"name": "a", "image": "x"}]}})
    cluster = await connect(kubeconfig=kube_api.kubeconfig(tmp_path))
    try:
        yield cluster, pod
    finally:
        await cluster.close()


# --- the tenant boundary: a namespaced CredentialSource may not mint tokens -----------------------

REFUSAL = (
    "CredentialSource team-a/deploy: spec.provider 'kubernetes-token' is not accepted in a "
    "CredentialSource: it would mint a token for any service account of namespace 'team-a' "
    "(spec.kubernetesToken.serviceAccount) with the operator's TokenRequest rights"
)


def test_a_namespaced_source_is_refused_when_read() -> None:
    """The broker, the admission index and the renew path all read sources through parse_source."""
    spec = {"provider": "kubernetes-token", "maxTTL": "1h", "allowedServiceAccounts": ["agent"],
            "kubernetesToken": {"serviceAccount": "deployer", "audiences": [AUD]}}
    namespaced = {"kind": names.KIND_CREDENTIAL_SOURCE,
                  "metadata": {"name": "deploy", "namespace": "team-a"}, "spec": spec}
    with pytest.raises(SourceError) as caught:
        parse_source(namespaced)
    assert str(caught.value).startswith(REFUSAL)
    assert "only a ClusterCredentialSource may use it" in str(caught.value)
    cluster = {"kind": names.KIND_CLUSTER_CREDENTIAL_SOURCE, "metadata": {"name": "deploy"},
               "spec": {**spec, "allowedNamespaces": ["team-a"]}}
    assert parse_source(cluster).provider == "kubernetes-token"


@pytest.mark.parametrize("call", ["issue", "renew"])
async def test_the_provider_refuses_a_namespaced_source_before_any_api_call(
    kube_api: KubeApi, stand_in: tuple[Any, dict[str, Any]], call: str  # noqa: F811
) -> None:
    """Defence in depth, against the API stand-in: not one request reaches the API server for a
    namespaced source; the same spec from a ClusterCredentialSource does get its token (control)."""
    cluster, pod = stand_in
    provider = KubernetesTokenProvider(cluster)
    before = len(kube_api.api_calls)
    with pytest.raises(ProviderError) as caught:
        if call == "issue":
            await provider.issue(request(pod, source_namespace="team-a"))
        else:
            await provider.renew("sa-token:team-a/taskcreds-bind-agent-1-00:deployer:0",
                                 request(pod, source_namespace="team-a"))
    assert str(caught.value).startswith(f"kubernetes-token: {REFUSAL}")
    assert not caught.value.retryable
    assert kube_api.api_calls[before:] == []
    assert kube_api.issued_tokens == []

    # control: the same spec from a ClusterCredentialSource gets its Secret-bound token
    issued = await provider.issue(request(pod))
    assert issued.files["token"] and [t.secret_name for t in kube_api.issued_tokens] == [
        issued.lease_ref.split(":")[1].partition("/")[2]
    ]
    assert {("create", "", "secrets"), ("create", "", "serviceaccounts/token")} <= {
        (c.verb, c.group, c.resource) for c in kube_api.api_calls[before:]
    }


async def test_a_lease_of_a_namespaced_source_is_still_revoked(mem: tuple[MemCluster, dict[str, Any]]) -> None:
    """Revoking only deletes the binding Secret the operator created: a lease issued before the rule
    (or by a source changed since) still dies at once."""
    cluster, pod = mem
    p = KubernetesTokenProvider(cluster)
    issued = await p.issue(request(pod))
    await p.revoke(issued.lease_ref, {"provider": "kubernetes-token"}, "team-a")
    assert await cluster.review_token(issued.files["token"], AUD) is None


# --- the real path: KubeCluster over HTTP to the API stand-in (TokenRequest bound to a Secret) -------
async def revoked_by_the_provider(
    api: KubeApi, p: KubernetesTokenProvider, issued: Issued, pod: dict[str, Any]
) -> None:
    await p.revoke(issued.lease_ref, {"provider": "kubernetes-token"}, None)
    await p.revoke(issued.lease_ref, {"provider": "kubernetes-token"}, None)  # idempotent: already gone


async def replaced_by_a_renewal(
    api: KubeApi, p: KubernetesTokenProvider, issued: Issued, pod: dict[str, Any]
) -> None:
    await p.renew(issued.lease_ref, request(pod))


async def its_pod_deleted(
    api: KubeApi, p: KubernetesTokenProvider, issued: Issued, pod: dict[str, Any]
) -> None:
    assert api.delete("v1", "Pod", "team-a", "agent-1")  # the binding Secret is owned by it: collected


#: how a lease ends -> what ends it
ENDINGS = {
    "revoked (binding Secret deleted)": revoked_by_the_provider,
    "renewed (the old token's Secret deleted)": replaced_by_a_renewal,
    "the pod deleted (garbage collection)": its_pod_deleted,
}


@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_a_token_reviews_until_its_lease_ends_then_the_api_refuses_it(
    kube_api: KubeApi, stand_in: tuple[Any, dict[str, Any]], ending: str  # noqa: F811
) -> None:
    cluster, pod = stand_in
    p = KubernetesTokenProvider(cluster)
    issued = await p.issue(request(pod))
    token = issued.files["token"]
    secret_name = issued.lease_ref.split(":")[1].partition("/")[2]
    binding = kube_api.get("v1", "Secret", "team-a", secret_name)
    assert binding is not None and binding["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
    (minted,) = kube_api.issued_tokens
    assert (minted.secret_name, minted.secret_uid, minted.pod_name) == (secret_name, binding["metadata"]["uid"], None)
    assert (minted.service_account, minted.audiences) == ("deployer", (AUD,))
    ident = await cluster.review_token(token, AUD)  # TokenReview through operator/kube.py
    assert ident is not None and (ident.namespace, ident.service_account) == ("team-a", "deployer")
    assert ident.pod_name is None  # bound to its Secret, not to the agent's pod

    await ENDINGS[ending](kube_api, p, issued, pod)

    assert kube_api.get("v1", "Secret", "team-a", secret_name) is None
    assert await cluster.review_token(token, AUD) is None, "the API still accepts the token"
