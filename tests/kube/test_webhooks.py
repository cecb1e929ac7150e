"""Mutating webhooks called over real HTTPS, as kube-apiserver calls them."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio import client

from taskcreds import names
from tests.kube.certs import TestCA
from tests.kube.fixtures import KubeApi

Reply = Callable[[dict[str, Any]], Any]


class WebhookServer:
    """A loopback HTTPS admission server whose answer each test decides."""

    def __init__(self, ca: TestCA, tmp: Path) -> None:
        self.ca, self.tmp = ca, tmp
        self.reviews: list[dict[str, Any]] = []
        self.queries: list[str] = []
        self.reply: Reply = lambda req: {"allowed": True}
        self.delay = 0.0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        review = await request.json()
        self.reviews.append(review)
        self.queries.append(request.query_string)
        if self.delay:
            await asyncio.sleep(self.delay)
        response = {"uid": review["request"]["uid"], **self.reply(review["request"])}
        return web.json_response(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/mutate", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(
            self._runner, sock, ssl_context=self.ca.issue(["127.0.0.1"]).server_context(self.tmp)
        )
        await site.start()
        self.url = f"https://127.0.0.1:{sock.getsockname()[1]}/mutate"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def hook(tmp_path: Path) -> AsyncIterator[WebhookServer]:
    server = WebhookServer(TestCA(), tmp_path)
    await server.start()
    yield server
    await server.stop()


def configuration(
    hook: WebhookServer,
    *,
    failure_policy: str = "Fail",
    timeout: int = 2,
    namespace_selector: dict[str, Any] | None = None,
    ca: bytes | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "taskcreds"},
        "webhooks": [
            {
                "name": "inject.taskcreds.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": failure_policy,
                "timeoutSeconds": timeout,
                "clientConfig": {
                    "url": hook.url,
                    "caBundle": base64.b64encode(ca or hook.ca.cert_pem).decode(),
                },
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                    }
                ],
                "objectSelector": {"matchLabels": {names.LABEL_INJECT: "true"}},
                "namespaceSelector": namespace_selector
                or {
                    "matchExpressions": [
                        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}
                    ]
                },
            }
        ],
    }


def pod(name: str | None = None, inject: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": {names.LABEL_INJECT: "true"} if inject else {}}
    meta.update({"name": name} if name else {"generateName": "agent-"})
    return {"metadata": meta, "spec": {"containers": [{"name": "agent", "image": "busybox:1"}]}}


def jsonpatch(ops: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "allowed": True,
        "patchType": "JSONPatch",
        "patch": base64.b64encode(json.dumps(ops).encode()).decode(),
    }


@pytest.fixture
async def core(kube_api: KubeApi) -> client.CoreV1Api:
    return client.CoreV1Api(await kube_api.kubernetes_asyncio_client())


async def test_mutation_is_applied_and_review_is_shaped_like_the_apis(
    kube_api: KubeApi, hook: WebhookServer, core: client.CoreV1Api
) -> None:
    kube_api.put(configuration(hook))
    hook.reply = lambda req: jsonpatch(
        [
            {"op": "add", "path": "/metadata/annotations", "value": {names.ANNOTATION_INJECTED: "test"}},
            {
                "op": "add",
                "path": "/spec/volumes",
                "value": [{"name": names.VOLUME_CREDENTIALS, "emptyDir": {"medium": "Memory"}}],
            },
        ]
    )
    created = await core.create_namespaced_pod("default", pod())
    assert created.metadata.annotations == {names.ANNOTATION_INJECTED: "test"}
    assert [v.name for v in created.spec.volumes] == [names.VOLUME_CREDENTIALS]
    req = hook.reviews[0]["request"]
    assert hook.reviews[0]["apiVersion"] == "admission.k8s.io/v1"
    assert req["operation"] == "CREATE" and req["namespace"] == "default"
    assert req["kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert req["resource"] == {"group": "", "version": "v1", "resource": "pods"}
    # generateName pods reach webhooks without a name, uid or creationTimestamp, but defaulted
    assert req["name"] == "" and "name" not in req["object"]["metadata"]
    assert "uid" not in req["object"]["metadata"]
    assert req["object"]["spec"]["serviceAccountName"] == "default"
    assert req["userInfo"]["username"] == "kubernetes-admin"
    assert hook.queries == ["timeout=2s"]
    assert [c.outcome for c in kube_api.webhook_calls] == ["patched"]


async def test_denial_is_surfaced_with_the_webhooks_message(
    kube_api: KubeApi, hook: WebhookServer, core: client.CoreV1Api
) -> None:
    kube_api.put(configuration(hook))
    hook.reply = lambda req: {
        "allowed": False,
        "status": {"code": 403, "message": "taskcreds.io/ttl: 'soon' is not a duration; use e.g. 15m"},
    }
    with pytest.raises(client.ApiException) as e:
        await core.create_namespaced_pod("default", pod("denied"))
    body = json.loads(e.value.body)
    assert e.value.status == 403 and body["kind"] == "Status"
    assert body["message"] == (
        'admission webhook "inject.taskcreds.io" denied the request: taskcreds.io/ttl: '
        "'soon' is not a duration; use e.g. 15m"
    )
    assert kube_api.get("v1", "Pod", "default", "denied") is None


async def test_denial_without_code_is_400(
    kube_api: KubeApi, hook: WebhookServer, core: client.CoreV1Api
) -> None:
    kube_api.put(configuration(hook))
    hook.reply = lambda req: {"allowed": False}
    with pytest.raises(client.ApiException) as e:
        await core.create_namespaced_pod("default", pod("denied"))
    assert e.value.status == 400 and "denied the request without explanation" in e.value.body


@pytest.mark.parametrize(
    ("case", "arrange"),
    [
        ("webhook down", "stop"),
        ("webhook too slow", "slow"),
        ("untrusted certificate", "wrong-ca"),
        ("bad patch type", "bad-patch"),
    ],
)
@pytest.mark.parametrize("policy", ["Fail", "Ignore"])
async def test_failure_policy(
    kube_api: KubeApi, hook: WebhookServer, core: client.CoreV1Api, case: str, arrange: str, policy: str
) -> None:
    other_ca = TestCA("someone else").cert_pem if arrange == "wrong-ca" else None
    kube_api.put(configuration(hook, failure_policy=policy, timeout=1, ca=other_ca))
    if arrange == "stop":
        await hook.stop()
    elif arrange == "slow":
        hook.delay = 1.5
    elif arrange == "bad-patch":
        hook.reply = lambda req: {**jsonpatch([]), "patchType": "MergePatch"}
    if policy == "Ignore":
        created = await core.create_namespaced_pod("default", pod("p"))
        assert created.metadata.annotations is None  # admitted unchanged
        assert [c.outcome for c in kube_api.webhook_calls] == ["ignored-error"]
    else:
        with pytest.raises(client.ApiException) as e:
            await core.create_namespaced_pod("default", pod("p"))
        assert e.value.status == 500, case
        assert 'failed calling webhook "inject.taskcreds.io"' in json.loads(e.value.body)["message"]
        assert kube_api.get("v1", "Pod", "default", "p") is None


async def test_selectors_decide_who_is_called(
    kube_api: KubeApi, hook: WebhookServer, core: client.CoreV1Api
) -> None:
    kube_api.put(configuration(hook, namespace_selector={"matchLabels": {"agents": "yes"}}))
    kube_api.ensure_namespace("agents", {"agents": "yes"})
    await core.create_namespaced_pod("default", pod("in-other-namespace"))
    await core.create_namespaced_pod("agents", pod("not-opted-in", inject=False))
    assert hook.reviews == []
    await core.create_namespaced_pod("agents", pod("opted-in"))
    assert [r["request"]["name"] for r in hook.reviews] == ["opted-in"]
    await core.patch_namespaced_pod("opted-in", "agents", {"metadata": {"annotations": {"a": "b"}}})
    assert len(hook.reviews) == 1  # rules name CREATE only


async def test_warnings_reach_the_client(kube_api: KubeApi, hook: WebhookServer) -> None:
    kube_api.put(configuration(hook))
    hook.reply = lambda req: {"allowed": True, "warnings": ["container agent reads a Secret through env"]}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {kube_api.admin_token}"}) as s:
        async with s.post(f"{kube_api.url}/api/v1/namespaces/default/pods", json=pod("w")) as r:
            assert r.status == 201
            assert r.headers.getall("Warning") == ['299 - "container agent reads a Secret through env"']


async def test_invalid_result_after_mutation_is_rejected(
    kube_api: KubeApi, hook: WebhookServer, core: client.CoreV1Api
) -> None:
    kube_api.put(configuration(hook))
    hook.reply = lambda req: jsonpatch(
        [
            {
                "op": "add",
                "path": "/spec/containers/0/volumeMounts",
                "value": [{"name": "missing-volume", "mountPath": "/run/taskcreds"}],
            }
        ]
    )
    with pytest.raises(client.ApiException) as e:
        await core.create_namespaced_pod("default", pod("broken"))
    assert e.value.status == 422 and "missing-volume" in e.value.body


async def test_service_reference_reaches_a_local_endpoint(
    kube_api: KubeApi, hook: WebhookServer, core: client.CoreV1Api, tmp_path: Path
) -> None:
    # a serving cert for the Service DNS name, the way the operator's own certificate is made
    cfg = configuration(hook)
    port = hook.url.split(":")[2].split("/")[0]
    await hook.stop()
    hook.tmp = tmp_path
    hook.ca = TestCA()
    app_cert = hook.ca.issue(["taskcreds-webhook.taskcreds.svc"])
    runner_app = web.Application()
    runner_app.router.add_post("/mutate", hook._handle)
    runner = web.AppRunner(runner_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", int(port), ssl_context=app_cert.server_context(tmp_path))
    await site.start()
    try:
        wh = cfg["webhooks"][0]
        wh["clientConfig"] = {
            "service": {
                "namespace": "taskcreds",
                "name": "taskcreds-webhook",
                "path": "/mutate",
                "port": 443,
            },
            "caBundle": base64.b64encode(hook.ca.cert_pem).decode(),
        }
        kube_api.put(cfg)
        kube_api.set_service_endpoint("taskcreds", "taskcreds-webhook", f"127.0.0.1:{port}")
        await core.create_namespaced_pod("default", pod("via-service"))
        assert [c.outcome for c in kube_api.webhook_calls] == ["allowed"]
    finally:
        await runner.cleanup()


async def test_update_reviews_carry_the_old_object(
    kube_api: KubeApi, hook: WebhookServer, core: client.CoreV1Api
) -> None:
    cfg = configuration(hook)
    cfg["webhooks"][0]["rules"][0]["operations"] = ["UPDATE"]
    kube_api.put(cfg)
    await core.create_namespaced_pod("default", pod("u"))
    assert hook.reviews == []
    hook.reply = lambda req: jsonpatch([{"op": "add", "path": "/metadata/labels/seen", "value": "yes"}])
    updated = await core.patch_namespaced_pod("u", "default", {"metadata": {"annotations": {"a": "b"}}})
    req = hook.reviews[0]["request"]
    assert req["operation"] == "UPDATE" and req["name"] == "u"
    assert req["oldObject"]["metadata"].get("annotations") is None
    assert req["object"]["metadata"]["annotations"] == {"a": "b"}
    assert updated.metadata.labels["seen"] == "yes"
