"""TokenRequest and TokenReview: pod-bound service-account tokens, checked like the API does."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes_asyncio import client

from taskcreds import names
from tests.kube.fixtures import KubeApi

POD = {"metadata": {"name": "agent"}, "spec": {"containers": [{"name": "a", "image": "busybox:1"}]}}


@pytest.fixture
async def core(kube_api: KubeApi) -> client.CoreV1Api:
    return client.CoreV1Api(await kube_api.kubernetes_asyncio_client())


async def review(kube_api: KubeApi, token: str, audiences: list[str] | None) -> dict[str, Any]:
    api = client.AuthenticationV1Api(await kube_api.kubernetes_asyncio_client())
    res = await api.create_token_review({"spec": {"token": token, "audiences": audiences}})
    return res.status.to_dict()


async def test_token_request_bound_to_a_pod_reviews_with_pod_identity(
    kube_api: KubeApi, core: client.CoreV1Api
) -> None:
    p = await core.create_namespaced_pod("default", POD)
    tr = await core.create_namespaced_service_account_token(
        "default",
        "default",
        {
            "spec": {
                "audiences": [names.TOKEN_AUDIENCE],
                "expirationSeconds": 600,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "agent", "uid": p.metadata.uid},
            }
        },
    )
    assert tr.status.token and tr.status.expiration_timestamp
    status = await review(kube_api, tr.status.token, [names.TOKEN_AUDIENCE])
    assert status["authenticated"] is True
    assert status["audiences"] == [names.TOKEN_AUDIENCE]
    assert status["user"]["username"] == "system:serviceaccount:default:default"
    assert status["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["agent"]
    assert status["user"]["extra"]["authentication.kubernetes.io/pod-uid"] == [p.metadata.uid]


@pytest.mark.parametrize(
    ("case", "arrange", "audiences", "error"),
    [
        ("wrong audience", None, ["vault"], "audiences"),
        ("pod deleted", "delete", [names.TOKEN_AUDIENCE], "not found"),
        ("pod replaced (same name, new uid)", "replace", [names.TOKEN_AUDIENCE], "does not match"),
        ("expired", "expire", [names.TOKEN_AUDIENCE], "expired"),
        ("service account recreated", "sa", [names.TOKEN_AUDIENCE], "serviceaccounts"),
        ("not a token at all", "garbage", [names.TOKEN_AUDIENCE], "invalid bearer token"),
    ],
)
async def test_review_refuses(
    kube_api: KubeApi,
    core: client.CoreV1Api,
    case: str,
    arrange: str | None,
    audiences: list[str],
    error: str,
) -> None:
    await core.create_namespaced_pod("default", POD)
    token = kube_api.issue_pod_token(
        "default", "agent", audiences=[names.TOKEN_AUDIENCE], expiration_seconds=60
    )
    if arrange == "delete":
        await core.delete_namespaced_pod("agent", "default")
    elif arrange == "replace":
        await core.delete_namespaced_pod("agent", "default")
        await core.create_namespaced_pod("default", POD)
    elif arrange == "expire":
        kube_api.advance_clock(61)
    elif arrange == "sa":
        await core.delete_namespaced_service_account("default", "default")
        await core.create_namespaced_service_account("default", {"metadata": {"name": "default"}})
    elif arrange == "garbage":
        token = "not.a.jwt"
    status = await review(kube_api, token, audiences)
    assert status["authenticated"] is not True, case
    assert error in status["error"], (case, status["error"])
    assert not status.get("user") or not status["user"].get("username")


@pytest.mark.parametrize(
    ("case", "spec", "sa", "code"),
    [
        ("service account missing", {"audiences": ["x"]}, "nobody", 404),
        ("shorter than 10 minutes", {"audiences": ["x"], "expirationSeconds": 60}, "default", 422),
        (
            "bound pod missing",
            {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "ghost"}},
            "default",
            404,
        ),
        (
            "bound pod uid differs",
            {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "agent", "uid": "0000"}},
            "default",
            409,
        ),
        (
            "pod runs as another service account",
            {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "agent"}},
            "other",
            400,
        ),
    ],
)
async def test_token_request_refusals(
    core: client.CoreV1Api, case: str, spec: dict[str, Any], sa: str, code: int
) -> None:
    await core.create_namespaced_pod("default", POD)
    await core.create_namespaced_service_account("default", {"metadata": {"name": "other"}})
    with pytest.raises(client.ApiException) as e:
        await core.create_namespaced_service_account_token(sa, "default", {"spec": spec})
    assert e.value.status == code, case


async def test_service_account_tokens_authenticate_to_the_api(
    kube_api: KubeApi, core: client.CoreV1Api
) -> None:
    import aiohttp

    tr = await core.create_namespaced_service_account_token("default", "default", {"spec": {}})
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tr.status.token}"}) as s:
        async with s.get(f"{kube_api.url}/api/v1/namespaces/default/pods") as r:
            assert r.status == 200
    assert kube_api.api_calls[-1].user == "system:serviceaccount:default:default"
    # a token for another audience is not an API credential
    token = kube_api.issue_token("default", "default", audiences=["taskcreds"], expiration_seconds=600)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s:
        async with s.get(f"{kube_api.url}/api/v1/namespaces/default/pods") as r:
            assert r.status == 401
