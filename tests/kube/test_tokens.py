"""TokenRequest and TokenReview: pod- and Secret-bound service-account tokens, checked like the API does."""

from __future__ import annotations

import json
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


# --- Secret-bound tokens: what makes revocation by Secret deletion work on a real cluster ------------
BINDING = {"metadata": {"name": "binding"}}


async def secret_bound_token(core: client.CoreV1Api, uid: str | None = None) -> str:
    secret = await core.create_namespaced_secret("default", BINDING)
    ref = {"kind": "Secret", "apiVersion": "v1", "name": "binding", "uid": uid or secret.metadata.uid}
    tr = await core.create_namespaced_service_account_token(
        "default", "default", {"spec": {"audiences": ["deploy"], "boundObjectRef": ref}}
    )
    assert tr.spec.bound_object_ref.kind == "Secret" and tr.spec.bound_object_ref.uid == secret.metadata.uid
    return str(tr.status.token)


async def test_a_secret_bound_token_reviews_until_its_secret_is_deleted(
    kube_api: KubeApi, core: client.CoreV1Api
) -> None:
    token = await secret_bound_token(core)
    status = await review(kube_api, token, ["deploy"])
    assert status["authenticated"] is True
    assert status["user"]["username"] == "system:serviceaccount:default:default"
    assert "authentication.kubernetes.io/pod-name" not in status["user"]["extra"]  # bound to no pod
    assert kube_api.issued_tokens[-1].secret_name == "binding"

    await core.delete_namespaced_secret("binding", "default")
    status = await review(kube_api, token, ["deploy"])
    assert status["authenticated"] is not True
    assert status["error"] == "invalid bearer token, service account token has been invalidated"


async def test_a_secret_bound_token_dies_with_its_secret_even_when_one_of_that_name_comes_back(
    kube_api: KubeApi, core: client.CoreV1Api
) -> None:
    token = await secret_bound_token(core)
    await core.delete_namespaced_secret("binding", "default")
    await core.create_namespaced_secret("default", BINDING)
    status = await review(kube_api, token, ["deploy"])
    assert status["authenticated"] is not True
    assert "does not match service account secret ref claim" in status["error"]


@pytest.mark.parametrize(
    ("case", "ref", "code", "words"),
    [
        (
            "bound Secret missing",
            {"kind": "Secret", "apiVersion": "v1", "name": "ghost"},
            404,
            'secrets "ghost"',
        ),
        (
            "bound Secret uid differs",
            {"kind": "Secret", "apiVersion": "v1", "name": "binding", "uid": "0000"},
            409,
            "does not match the UID in record",
        ),
        (
            "a kind the API cannot bind",
            {"kind": "ConfigMap", "apiVersion": "v1", "name": "binding"},
            400,
            "cannot bind token to object of type /v1, Kind=ConfigMap",
        ),
        (
            "a Secret of another group",
            {"kind": "Secret", "apiVersion": "example.com/v1", "name": "binding"},
            400,
            "cannot bind token to object of type example.com/v1, Kind=Secret",
        ),
    ],
)
async def test_secret_binding_refusals(
    core: client.CoreV1Api, case: str, ref: dict[str, Any], code: int, words: str
) -> None:
    await core.create_namespaced_secret("default", BINDING)
    with pytest.raises(client.ApiException) as e:
        await core.create_namespaced_service_account_token(
            "default", "default", {"spec": {"boundObjectRef": ref}}
        )
    assert e.value.status == code, case
    assert words in json.loads(e.value.body)["message"], (case, e.value.body)
