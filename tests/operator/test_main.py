"""taskcreds-operator as it runs in a cluster, against the Kubernetes API stand-in.

One operator process (run_operator) with every part: the API stand-in calls its webhook over HTTPS
exactly as kube-apiserver does (caBundle the operator patched in itself), a client with an SVID and a
pod-bound token gets credentials from its broker, and a task-status change seen through kopf's watch
revokes them at their source.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import ssl
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from taskcreds.operator.settings import ENV_DRAIN_SECONDS, OperatorSettings

from taskcreds import names
from taskcreds.devauthority import DevAuthority
from taskcreds.svid import client_context
from tests.kube.fixtures import KubeApi
from tests.operator import running
from tests.operator.running import Replica, webhook_configuration
from tests.ports import free_port

CRDS = Path(__file__).resolve().parents[2] / "charts" / "taskcreds" / "crds"
TD = "taskcreds.local"
OPERATOR_ID = f"spiffe://{TD}/ns/taskcreds-system/sa/taskcreds-operator"
AGENT_ID = f"spiffe://{TD}/ns/agents/sa/coding-agent"


def agent_pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "agent-1",
            "namespace": "agents",
            "labels": {names.LABEL_INJECT: "true"},
            "annotations": {names.ANNOTATION_TASK: "fix-42", names.ANNOTATION_CREDENTIALS: "api"},
        },
        "spec": {
            "serviceAccountName": "coding-agent",
            "securityContext": {"fsGroup": 1000, "runAsUser": 1000},
            "containers": [{"name": "agent", "image": "example.com/agent:1"}],
        },
    }


def prepare_cluster(kube_api: KubeApi) -> tuple[DevAuthority, dict[str, int]]:
    """What a chart install leaves in the API (CRDs, namespaces, webhook configuration, one jwt
    source for coding-agent); returns the SPIFFE authority and the operator's ports."""
    kube_api.register_crds_from(CRDS)
    for ns in ("taskcreds-system", "agents"):
        kube_api.ensure_namespace(ns)
    kube_api.put(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "coding-agent", "namespace": "agents"},
        }
    )
    ports = {"webhook": free_port(), "broker": free_port(), "metrics": free_port()}
    kube_api.put(webhook_configuration())
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
    kube_api.set_service_endpoint("taskcreds-system", "taskcreds-webhook", f"127.0.0.1:{ports['webhook']}")
    return DevAuthority(TD, allow=True), ports


@pytest.fixture
async def operator(kube_api: KubeApi) -> Any:
    authority, ports = prepare_cluster(kube_api)
    operator_svid = authority.mint_x509_svid(OPERATOR_ID)
    replica = Replica(kube_api, operator_svid, kube_api.admin_token)
    replica.ports = {"webhook": ports["webhook"], "broker": ports["broker"], "metrics": ports["metrics"]}
    replica.start()
    await replica.wait_ready()
    yield kube_api, authority, replica.parts
    await asyncio.to_thread(replica.stop)
    assert not replica.thread.is_alive(), "operator did not stop within 30 s"
    assert not replica.failure, f"operator stopped with {replica.failure[0]!r}"


async def test_operator_admits_issues_and_revokes_through_a_real_api_flow(operator: Any) -> None:
    kube_api, authority, parts = operator

    # the operator made its webhook CA and patched it in: the API server can now call it over TLS
    mwc = kube_api.get("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", None, "taskcreds")
    assert mwc["webhooks"][0]["clientConfig"].get("caBundle")
    secret = kube_api.get("v1", "Secret", "taskcreds-system", "taskcreds-webhook-tls")
    assert set(secret["data"]) >= {"tls.crt", "tls.key", "ca.crt"}

    # a pod created through the API is injected by the operator's webhook
    api = await kube_api.kubernetes_asyncio_client()
    from kubernetes_asyncio import client as k8s

    core = k8s.CoreV1Api(api)
    created = await core.create_namespaced_pod("agents", agent_pod())
    init = [c.name for c in created.spec.init_containers or []]
    assert init[0] == names.SIDECAR_CONTAINER
    assert created.metadata.annotations[names.ANNOTATION_INJECTED]

    # its sidecar (here: a client with its SVID and pod-bound token) gets a credential from the broker
    svid = authority.mint_x509_svid(AGENT_ID)
    token = kube_api.issue_pod_token("agents", "agent-1", "coding-agent")
    ctx: ssl.SSLContext = client_context(svid)
    url = f"https://127.0.0.1:{parts.ports['broker']}/v1/credentials"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, json={"task": "fix-42"}, ssl=ctx, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            body = await resp.json()
            assert resp.status == 200, body
    issued = body["credentials"][0]
    assert issued["name"] == "api" and issued["provider"] == "jwt"
    value = issued["files"]["token"]

    # the task completes: the operator sees it on its watch and revokes at the source
    seen = time.monotonic()
    await core.patch_namespaced_pod(
        "agent-1",
        "agents",
        {"metadata": {"annotations": {names.ANNOTATION_TASK_STATUS: "completed"}}},
    )
    lease = None
    while time.monotonic() - seen < 10:
        leases = kube_api.list(names.API_VERSION, "TaskLease", "agents")
        lease = leases[0] if leases else None
        released = lease and names.FINALIZER_REVOKE not in (lease["metadata"].get("finalizers") or [])
        if released and (lease.get("status") or {}).get("phase") == "Revoked":
            break
        await asyncio.sleep(0.02)
    assert lease is not None and lease["status"]["phase"] == "Revoked", lease
    assert all(e.get("revokedAt") for e in lease["status"]["leases"])
    assert names.FINALIZER_REVOKE not in (lease["metadata"].get("finalizers") or [])

    # and the broker refuses the task from now on
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, json={"task": "fix-42"}, ssl=ctx, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 409
            assert (await resp.json())["error"]["code"] == "task_terminal"

    # metrics tell an SRE what happened; no value anywhere in them, the TaskLease or the Events
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{parts.ports['metrics']}/metrics") as resp:
            text = await resp.text()
    assert 'taskcreds_admission_requests_total{result="injected"} 1.0' in text
    assert 'taskcreds_credentials_revoked_total{provider="jwt",reason="completed"} 1.0' in text
    assert "taskcreds_revocation_lag_seconds_count 1.0" in text
    assert "taskcreds_webhook_certificate_expiry_timestamp_seconds" in text
    everything = str(kube_api.list(names.API_VERSION, "TaskLease")) + str(kube_api.events) + text
    assert value not in everything
    assert base64.b64encode(value.encode()).decode()[:40] not in everything


async def test_operator_health_endpoints(operator: Any) -> None:
    _, _, parts = operator
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz"):
            async with http.get(f"http://127.0.0.1:{parts.ports['metrics']}{path}") as resp:
                assert resp.status == 200


async def test_operator_webhook_denies_a_credential_no_source_grants(operator: Any) -> None:
    """A source created through the API reaches the webhook's index by the watch; a pod asking for it
    under a service account it does not list is refused at create time, naming what would grant it."""
    kube_api, _, parts = operator
    api = await kube_api.kubernetes_asyncio_client()
    from kubernetes_asyncio import client as k8s
    from kubernetes_asyncio.client.exceptions import ApiException

    custom = k8s.CustomObjectsApi(api)
    await custom.create_namespaced_custom_object(
        names.CRD_GROUP,
        names.CRD_VERSION,
        "agents",
        names.PLURAL_CREDENTIAL_SOURCES,
        {
            "apiVersion": names.API_VERSION,
            "kind": "CredentialSource",
            "metadata": {"name": "deploy-keys", "namespace": "agents"},
            "spec": {"provider": "jwt", "maxTTL": "1h", "allowedServiceAccounts": ["release-bot"]},
        },
    )
    index = parts.credential_index
    deadline = time.monotonic() + 10
    while not (index.synced and index.resolve("agents", "deploy-keys") is not None):
        assert time.monotonic() < deadline, "the index never saw the new CredentialSource"
        await asyncio.sleep(0.02)

    pod = agent_pod()
    pod["metadata"]["name"] = "agent-2"
    pod["metadata"]["annotations"][names.ANNOTATION_CREDENTIALS] = "api,deploy-keys"
    core = k8s.CoreV1Api(api)
    with pytest.raises(ApiException) as info:
        await core.create_namespaced_pod("agents", pod)
    message = json.loads(info.value.body)["message"]
    assert 'admission webhook "inject.taskcreds.io" denied the request' in message
    for words in ("deploy-keys", "coding-agent", "agents", "allowedServiceAccounts", "release-bot"):
        assert words in message, message
    assert kube_api.get("v1", "Pod", "agents", "agent-2") is None
    # the granted credential alone still goes through
    pod["metadata"]["annotations"][names.ANNOTATION_CREDENTIALS] = "api"
    created = await core.create_namespaced_pod("agents", pod)
    assert created.spec.init_containers[0].name == names.SIDECAR_CONTAINER


async def test_operator_tests_run_on_the_loop_the_operator_runs_on() -> None:
    # tests/operator/conftest.py: a TLS transport on asyncio's loop behaves (and costs) differently
    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


DRAIN = 1.5
"""Drain of the stopping operators below: long enough to act inside it, short for the suite."""


async def _status(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, dict[str, Any], str]:
    async with http.get(url, **kwargs) as resp:
        return resp.status, await resp.json(), resp.headers.get("Connection", "")


async def _until_unready(http: aiohttp.ClientSession, readyz: str, since: float) -> tuple[float, dict[str, Any]]:
    """Seconds from ``since`` until /readyz stops answering 200, and its body then."""
    while True:
        code, body, _ = await _status(http, readyz)
        if code != 200:
            assert code == 503, (code, body)
            return time.monotonic() - since, body
        assert time.monotonic() - since < 5, "/readyz still 200 five seconds after the stop"
        await asyncio.sleep(0.01)


async def test_a_stopping_operator_turns_unready_at_once_and_admits_and_issues_while_it_drains(
    kube_api: KubeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rollout and drain: the Service still routes admissions here for a moment after the stop
    (endpoints propagate late), and admission is fail-closed, so refusing them then refuses users'
    pods. /readyz must say 503 at once; the webhook and the broker must answer until the drain ends."""
    from kubernetes_asyncio import client as k8s

    authority, ports = prepare_cluster(kube_api)
    monkeypatch.setattr(running, "OperatorSettings", partial(OperatorSettings, drain_seconds=DRAIN))
    replica = Replica(kube_api, authority.mint_x509_svid(OPERATOR_ID), kube_api.admin_token)
    replica.ports = dict(ports)
    replica.start()
    try:
        await replica.wait_ready()
        core = k8s.CoreV1Api(await kube_api.kubernetes_asyncio_client())
        readyz = f"http://127.0.0.1:{ports['metrics']}/readyz"
        broker = f"https://127.0.0.1:{ports['broker']}/v1/credentials"
        ctx = client_context(authority.mint_x509_svid(AGENT_ID))
        async with aiohttp.ClientSession() as http:
            assert (await _status(http, readyz))[0] == 200
            stopped = time.monotonic()
            stopping = asyncio.ensure_future(asyncio.to_thread(replica.stop))
            unready_after, body = await _until_unready(http, readyz, stopped)
            assert body == {"status": "draining"}

            created = await core.create_namespaced_pod("agents", agent_pod())
            admitted_after = time.monotonic() - stopped
            assert created.spec.init_containers[0].name == names.SIDECAR_CONTAINER

            token = kube_api.issue_pod_token("agents", "agent-1", "coding-agent")
            async with http.post(
                broker, json={"task": "fix-42"}, ssl=ctx, headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                assert resp.status == 200, await resp.text()
                # the caller reconnects through the Service, to a replica that is not stopping
                assert resp.headers.get("Connection", "").lower() == "close"
            issued_after = time.monotonic() - stopped
            assert not stopping.done(), "the operator stopped before its drain ended"
            await stopping
            stopped_after = time.monotonic() - stopped
    finally:
        if replica.thread.is_alive():
            await asyncio.to_thread(replica.stop)
    assert not replica.failure, replica.failure
    assert unready_after < 0.5, f"/readyz said 200 for {unready_after:.2f} s after the stop"
    assert max(admitted_after, issued_after) < DRAIN
    assert DRAIN <= stopped_after < DRAIN + 15, stopped_after

    # once it has stopped, the API server cannot reach it: the opted-in pod is refused (fail-closed)
    from kubernetes_asyncio.client.exceptions import ApiException

    pod = agent_pod()
    pod["metadata"]["name"] = "agent-after"
    with pytest.raises(ApiException) as info:
        await core.create_namespaced_pod("agents", pod)
    assert "inject.taskcreds.io" in json.loads(info.value.body)["message"]


async def test_the_operator_process_drains_on_sigterm_before_it_exits(
    kube_api: KubeApi, workload_api: Any, tmp_path: Path
) -> None:
    """The real ``taskcreds-operator``: kopf takes SIGTERM in the main thread when it starts; the
    process must still drain (readiness off at once, webhook answering) and exit 0 afterwards."""
    authority, ports = prepare_cluster(kube_api)
    spiffe = workload_api(OPERATOR_ID, authority=authority)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "TASKCREDS_"))}
    env.update(
        {
            "KUBECONFIG": kube_api.kubeconfig(tmp_path),
            names.ENV_SPIFFE_SOCKET: spiffe.socket_uri,
            names.ENV_WEBHOOK_LISTEN: f"127.0.0.1:{ports['webhook']}",
            names.ENV_BROKER_LISTEN: f"127.0.0.1:{ports['broker']}",
            names.ENV_METRICS_LISTEN: f"127.0.0.1:{ports['metrics']}",
            ENV_DRAIN_SECONDS: str(DRAIN),
        }
    )
    log = tmp_path / "operator.log"
    binary = Path(sys.executable).with_name("taskcreds-operator")
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(binary), env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        readyz = f"http://127.0.0.1:{ports['metrics']}/readyz"
        webhook = f"https://127.0.0.1:{ports['webhook']}/healthz"
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:
                assert proc.returncode is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "not ready within 30 s: " + log.read_text()[-2000:]
                with contextlib.suppress(aiohttp.ClientError):
                    if (await _status(http, readyz))[0] == 200:
                        break
                await asyncio.sleep(0.05)
            code, _, connection = await _status(http, webhook, ssl=False)
            assert (code, connection.lower()) == (200, "")  # keep-alive while serving

            proc.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            unready_after, body = await _until_unready(http, readyz, stopped)
            assert body == {"status": "draining"}
            await asyncio.sleep(DRAIN / 2)
            code, _, connection = await _status(http, webhook, ssl=False)
            assert (code, connection.lower()) == (200, "close"), "the webhook stopped answering in the drain"
            assert proc.returncode is None
        rc = await asyncio.wait_for(proc.wait(), timeout=DRAIN + 25)
        exited_after = time.monotonic() - stopped
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log.read_text()
    assert rc == 0, text[-2000:]
    assert unready_after < 0.5, unready_after
    assert exited_after >= DRAIN, exited_after
    assert "taskcreds-operator draining" in text


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 5.0), ("0", 0.0), ("2.5", 2.5), ("120", 120.0), ("-1", None), ("nan", None), ("121", None), ("5s", None)],
    ids=["unset: 5 s", "off", "fraction", "maximum", "negative", "nan", "too long", "with unit"],
)
def test_drain_seconds_from_the_environment(value: str | None, expected: float | None) -> None:
    from taskcreds.operator.settings import SettingsError

    env = {} if value is None else {ENV_DRAIN_SECONDS: value}
    if expected is None:
        with pytest.raises(SettingsError, match=ENV_DRAIN_SECONDS):
            OperatorSettings.from_env(env)
    else:
        assert OperatorSettings.from_env(env).drain_seconds == expected
    assert OperatorSettings().drain_seconds == 0.0  # tests and embedding stop at once


async def test_operator_takes_over_the_secret_cert_manager_left_and_serves(kube_api: KubeApi) -> None:
    """Switching webhook.certManager off: the webhook Secret is cert-manager's kubernetes.io/tls one
    without ca.key, and a Secret's type is immutable (422 on an Opaque PUT). The operator must start,
    store its own pair under that type, and be called over TLS with the caBundle it patched in."""
    from datetime import UTC, datetime

    from cryptography import x509
    from taskcreds.operator import certificates as certs

    authority, ports = prepare_cluster(kube_api)
    now = datetime.now(UTC)
    cm_ca, cm_ca_key = certs.make_ca("cert-manager-ca", now)
    cm_leaf, cm_key = certs.make_serving_cert(
        cm_ca, cm_ca_key, certs.dns_names_for("taskcreds-webhook", "taskcreds-system"), now
    )
    kube_api.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": "taskcreds-webhook-tls", "namespace": "taskcreds-system",
                         "annotations": {"cert-manager.io/certificate-name": "taskcreds-webhook"}},
            "data": {k: base64.b64encode(v).decode()
                     for k, v in {"ca.crt": cm_ca, "tls.crt": cm_leaf, "tls.key": cm_key}.items()},
        }
    )
    replica = Replica(kube_api, authority.mint_x509_svid(OPERATOR_ID), kube_api.admin_token)
    replica.ports = dict(ports)
    replica.start()
    try:
        await replica.wait_ready()
        secret = kube_api.get("v1", "Secret", "taskcreds-system", "taskcreds-webhook-tls")
        assert secret["type"] == "kubernetes.io/tls"
        assert set(secret["data"]) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
        mwc = kube_api.get("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", None, "taskcreds")
        bundle = x509.load_pem_x509_certificates(base64.b64decode(mwc["webhooks"][0]["clientConfig"]["caBundle"]))
        leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
        leaf.verify_directly_issued_by(bundle[0])  # the operator's new CA signed what it serves
        assert x509.load_pem_x509_certificate(cm_ca) in bundle  # cert-manager's leaf stays trusted meanwhile

        # the API server calls the webhook over TLS, verified with that caBundle: the pod is injected
        from kubernetes_asyncio import client as k8s

        core = k8s.CoreV1Api(await kube_api.kubernetes_asyncio_client())
        created = await core.create_namespaced_pod("agents", agent_pod())
        assert created.spec.init_containers[0].name == names.SIDECAR_CONTAINER
        assert kube_api.webhook_calls, "the webhook was never called"
    finally:
        await asyncio.to_thread(replica.stop)
    assert not replica.failure, f"operator stopped with {replica.failure[0]!r}"
