# ruff: noqa: F811  (the harness fixture is imported by name)
"""The broker over real SPIFFE mTLS on loopback: who may get what, and what they see."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any

import aiohttp
import jwt
import pytest
from prometheus_client import generate_latest
from taskcreds.operator.broker.settings import BrokerSettings
from taskcreds.operator.leases import lease_name

from taskcreds import names
from taskcreds.devauthority import DevAuthority
from taskcreds.svid import client_context
from tests.operator.test_broker_harness import (  # noqa: F401  (harness is a fixture)
    CANARY,
    NS,
    Harness,
    harness,
    spiffe_id,
)


async def test_issue_jwt_records_lease_and_verifies(harness: Harness) -> None:
    pod = harness.add_pod("agent-1", credentials="api")
    agent = harness.agent(pod)
    reply = await harness.issue(agent, ttl="10m")
    assert reply.status == 200, reply.doc
    (cred,) = reply.doc["credentials"]
    assert (cred["name"], cred["provider"], cred["delivery"], cred["static"]) == ("api", "jwt", "file", False)
    claims = harness.providers["jwt"].verify(cred["files"]["token"], f"{NS}/my-api")
    assert claims["sub"] == f"system:taskcreds:{NS}:agent-1"
    assert (claims["task"], claims["pod"], claims["credential"], claims["scope"]) == (
        "fix-42",
        "agent-1",
        "api",
        "read",
    )
    assert claims["exp"] - claims["iat"] == 600
    lease = harness.cluster.task_leases[(NS, lease_name("agent-1", "fix-42"))]
    assert lease["status"]["phase"] == "Active"
    assert [e["leaseRef"] for e in lease["status"]["leases"]] == [cred["leaseRef"]]
    assert lease["metadata"]["finalizers"] == [names.FINALIZER_REVOKE]
    assert lease["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
    assert cred["files"]["token"] not in json.dumps(lease)


async def test_jwks_and_healthz_need_no_client_certificate(harness: Harness) -> None:
    pod = harness.add_pod("agent-1")
    anonymous = harness.agent(pod, no_svid=True)
    health = await harness.call(anonymous, "GET", "/healthz")
    assert (health.status, health.doc) == (200, {"status": "ok"})
    jwks = await harness.call(anonymous, "GET", "/.well-known/jwks.json")
    assert jwks.status == 200 and jwks.doc["keys"] and all(k["kid"] for k in jwks.doc["keys"])
    # a relying party verifies an issued token with nothing but the JWKS
    token = (await harness.issue(harness.agent(pod))).doc["credentials"][0]["files"]["token"]
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.doc["keys"] if k["kid"] == kid)
    claims = jwt.decode(
        token, jwt.algorithms.ECAlgorithm.from_jwk(key), algorithms=["ES256"], audience=f"{NS}/my-api"
    )
    assert claims["iss"] == "https://broker.test"
    refused = await harness.issue(anonymous)
    assert (refused.status, refused.code) == (401, "unauthenticated")


async def test_renew_replaces_and_records_both_leases(harness: Harness) -> None:
    pod = harness.add_pod("agent-1")
    agent = harness.agent(pod)
    first = (await harness.issue(agent)).doc["credentials"][0]
    reply = await harness.call(
        agent,
        "POST",
        "/v1/credentials/api/renew",
        {"task": "fix-42", "leaseRef": first["leaseRef"], "ttl": "5m"},
    )
    assert reply.status == 200, reply.doc
    assert reply.doc["leaseRef"] != first["leaseRef"]
    jti = first["leaseRef"].split(":")[1]
    assert harness.providers["jwt"].is_revoked(jti)  # the replaced token is on the deny list
    published = await harness.call(harness.agent(pod, no_svid=True), "GET", "/v1/jwt/revoked")
    assert [r["jti"] for r in published.doc["revoked"]] == [jti]  # relying parties can check it
    lease = harness.cluster.task_leases[(NS, lease_name("agent-1", "fix-42"))]
    assert [e["leaseRef"] for e in lease["status"]["leases"]] == [first["leaseRef"], reply.doc["leaseRef"]]
    unknown = await harness.call(
        agent, "POST", "/v1/credentials/api/renew", {"task": "fix-42", "leaseRef": "jwt:x:1"}
    )
    assert (unknown.status, unknown.code) == (404, "not_found")


async def test_revoke_then_refuse_forever(harness: Harness) -> None:
    pod = harness.add_pod("agent-1", credentials="api,legacy")
    agent = harness.agent(pod)
    issued = await harness.issue(agent)
    assert issued.status == 200
    reply = await harness.call(agent, "POST", "/v1/tasks/fix-42/revoke", {"reason": "sigterm"})
    assert (reply.status, reply.doc) == (200, {"task": "fix-42", "revoked": ["api", "legacy"]})
    lease = harness.cluster.task_leases[(NS, lease_name("agent-1", "fix-42"))]
    assert lease["status"]["phase"] == "Revoked"
    assert lease["metadata"].get("finalizers") in (None, [])
    static = next(e for e in lease["status"]["leases"] if e["credential"] == "legacy")
    assert static["static"] and "cannot be revoked" in static["notRevocable"]
    again = await harness.issue(agent)
    assert (again.status, again.code) == (409, "task_terminal")
    twice = await harness.call(agent, "POST", "/v1/tasks/fix-42/revoke", {})
    assert twice.status == 200  # idempotent


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
async def test_terminal_task_is_final(harness: Harness, status: str) -> None:
    pod = harness.add_pod("agent-1")
    agent = harness.agent(pod)
    assert (await harness.issue(agent)).status == 200
    harness.cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, status)
    reply = await harness.issue(agent)
    assert (reply.status, reply.code) == (409, "task_terminal")
    assert status in reply.doc["error"]["message"]
    harness.cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "running")
    still = await harness.issue(agent)
    assert (still.status, still.code) == (409, "task_terminal")


async def test_deadline_passed_is_terminal(harness: Harness) -> None:
    pod = harness.add_pod("agent-1", max_duration="1s")
    harness.cluster.pods[(NS, "agent-1")]["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"
    reply = await harness.issue(harness.agent(pod))
    assert (reply.status, reply.code) == (409, "task_terminal")
    assert "deadline" in reply.doc["error"]["message"]


async def test_status_long_poll_wakes_on_change(harness: Harness) -> None:
    pod = harness.add_pod("agent-1", max_duration="1h")
    agent = harness.agent(pod)
    now = await harness.call(agent, "GET", "/v1/tasks/fix-42/status")
    assert now.status == 200
    assert (now.doc["status"], now.doc["terminal"], now.doc["reason"]) == ("running", False, None)
    assert now.doc["deadline"].endswith("Z")

    async def complete_soon() -> None:
        await asyncio.sleep(0.2)
        pod_now = harness.cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "completed")
        harness.hub.update(pod_now)  # what the pod watch / lifecycle handlers do

    started = time.monotonic()
    changer = asyncio.create_task(complete_soon())
    polled = await harness.call(
        agent, "GET", "/v1/tasks/fix-42/status", params={"wait": "10s", "known": "running"}
    )
    elapsed = time.monotonic() - started
    await changer
    assert polled.doc == {
        "task": "fix-42",
        "status": "completed",
        "terminal": True,
        "reason": "completed",
        "deadline": now.doc["deadline"],
    }
    assert 0.15 < elapsed < 2.0


async def test_status_long_poll_times_out_with_current_state(harness: Harness) -> None:
    pod = harness.add_pod("agent-1")
    agent = harness.agent(pod)
    started = time.monotonic()
    reply = await harness.call(
        agent, "GET", "/v1/tasks/fix-42/status", params={"wait": "300ms", "known": "running"}
    )
    assert reply.status == 200 and reply.doc["status"] == "running"
    assert 0.25 < time.monotonic() - started < 2.0
    bad = await harness.call(agent, "GET", "/v1/tasks/fix-42/status", params={"wait": "soon"})
    assert (bad.status, bad.code) == (400, "bad_request")


async def test_ttl_above_max_is_denied_by_name(harness: Harness) -> None:
    pod = harness.add_pod("agent-1")
    reply = await harness.issue(harness.agent(pod), ttl="2h")
    assert (reply.status, reply.code) == (403, "policy_denied")
    assert reply.doc["error"]["message"] == (
        "credential 'api': ttl 2h is above maxTTL 1h of CredentialSource 'api'"
    )
    assert harness.metrics.policy_denials.labels(reason="ttl_above_max")._value.get() == 1


async def test_all_or_nothing(harness: Harness) -> None:
    pod = harness.add_pod("agent-1", credentials="api,broken")
    reply = await harness.issue(harness.agent(pod))
    assert (reply.status, reply.code) == (502, "provider_error")
    assert (
        "broken" in reply.doc["error"]["message"] and "taskcreds-system" not in reply.doc["error"]["message"]
    )
    revoked = harness.providers["jwt"].revoked()
    assert len(revoked) == 1  # the jwt issued in the same request was revoked
    lease = harness.cluster.task_leases.get((NS, lease_name("agent-1", "fix-42")))
    assert not (lease or {}).get("status", {}).get("leases")


async def test_cluster_source_granted_by_namespace(harness: Harness) -> None:
    pod = harness.add_pod("agent-1", credentials="shared")
    assert (await harness.issue(harness.agent(pod))).status == 200
    harness.cluster.put_source(
        {
            "kind": names.KIND_CLUSTER_CREDENTIAL_SOURCE,
            "metadata": {"name": "other"},
            "spec": {
                "provider": "jwt",
                "maxTTL": "1h",
                "allowedServiceAccounts": ["agent"],
                "allowedNamespaces": ["team-b"],
            },
        }
    )
    pod2 = harness.add_pod("agent-2", credentials="other")
    reply = await harness.issue(harness.agent(pod2))
    assert (reply.status, reply.code) == (403, "policy_denied")
    assert "allowedNamespaces" in reply.doc["error"]["message"]


@pytest.mark.parametrize(
    ("case", "expected_status", "expected_code", "message_part"),
    [
        ("svid of another service account", 401, "unauthenticated", "disagree"),
        ("token with another audience", 401, "unauthenticated", "audience"),
        ("no bearer token", 401, "unauthenticated", "Bearer"),
        ("token not bound to a pod", 401, "unauthenticated", "not bound to a pod"),
        ("svid path outside the template", 401, "unauthenticated", "template"),
        ("service account not granted", 403, "policy_denied", "allowedServiceAccounts"),
        ("pod not opted in", 403, "policy_denied", "not opted in"),
        ("credential not in the pod's annotation", 403, "policy_denied", "not in pod"),
        ("unknown credential source", 403, "policy_denied", "no CredentialSource"),
        ("another task than the pod's", 403, "policy_denied", "is not the task of pod"),
    ],
)
async def test_refusals(
    harness: Harness, case: str, expected_status: int, expected_code: str, message_part: str
) -> None:
    pod = harness.add_pod("agent-1", credentials="api")
    body: dict = {}
    task = "fix-42"
    if case == "svid of another service account":
        agent = harness.agent(pod, svid_id=spiffe_id(NS, "other-sa"))
    elif case == "token with another audience":
        agent = harness.agent(pod, audiences=("https://kubernetes.default.svc",))
    elif case == "no bearer token":
        agent = harness.agent(pod)
        agent.token = None
    elif case == "token not bound to a pod":
        agent = harness.agent(pod, token=harness.cluster.issue_pod_token(NS, "agent"))
    elif case == "svid path outside the template":
        agent = harness.agent(pod, svid_id="spiffe://taskcreds.local/workload/agent")
    elif case == "service account not granted":
        pod = harness.add_pod("agent-2", service_account="builder")
        agent = harness.agent(pod)
    elif case == "pod not opted in":
        pod = harness.add_pod("agent-2", opted_in=False)
        agent = harness.agent(pod)
    elif case == "credential not in the pod's annotation":
        agent = harness.agent(pod)
        body = {"credentials": ["legacy"]}
    elif case == "unknown credential source":
        pod = harness.add_pod("agent-2", credentials="nope")
        agent = harness.agent(pod)
    else:
        agent = harness.agent(pod)
        task = "someone-elses-task"
    reply = await harness.issue(agent, task=task, **body)
    assert (reply.status, reply.code) == (expected_status, expected_code), reply.doc
    assert message_part in reply.doc["error"]["message"]


async def test_second_pod_of_same_service_account_cannot_get_first_pods_task(harness: Harness) -> None:
    first = harness.add_pod("agent-1", task="task-one")
    second = harness.add_pod("agent-2", task="task-two")
    assert (await harness.issue(harness.agent(first), task="task-one")).status == 200
    thief = harness.agent(second)  # same namespace and service account, its own valid token and SVID
    for path, body in [
        ("/v1/credentials", {"task": "task-one"}),
        ("/v1/tasks/task-one/revoke", {"reason": "x"}),
    ]:
        reply = await harness.call(thief, "POST", path, body)
        assert (reply.status, reply.code) == (403, "policy_denied"), path
    status = await harness.call(thief, "GET", "/v1/tasks/task-one/status")
    assert status.status == 403
    # a token of the first pod presented with the second pod's SVID still names the first pod only
    stolen = harness.agent(second, token=harness.agent(first).token)
    reply = await harness.issue(stolen, task="task-two")
    assert (reply.status, reply.code) == (403, "policy_denied")


async def test_token_of_deleted_pod_or_replaced_uid_is_refused(harness: Harness) -> None:
    pod = harness.add_pod("agent-1")
    agent = harness.agent(pod)
    harness.cluster.delete_pod(NS, "agent-1")
    harness.add_pod("agent-1")  # same name, new uid
    reply = await harness.issue(agent)
    assert (reply.status, reply.code) == (401, "unauthenticated")


async def test_wrong_trust_domain_refused() -> None:
    h = Harness(settings=BrokerSettings(jwt_issuer="https://broker.test"))
    h.put_sources()
    # the broker accepts only clients of "other.local": a valid taskcreds.local SVID is refused
    from taskcreds.operator.broker.server import make_broker_app

    h.app = make_broker_app(
        cluster=h.cluster,
        providers=h.providers,
        settings=h.settings,
        metrics=h.metrics,
        trust_domain="other.local",
        hub=h.hub,
    )
    from taskcreds.operator.broker.server import BrokerServer

    h.server = BrokerServer(h.app, lambda: h.broker_svid)
    await h.start()
    try:
        reply = await h.issue(h.agent(h.add_pod("agent-1")))
        assert (reply.status, reply.code) == (401, "unauthenticated")
        assert "trust domain 'taskcreds.local'" in reply.doc["error"]["message"]
    finally:
        await h.close()


async def test_svid_from_a_foreign_authority_fails_the_handshake(harness: Harness) -> None:
    foreign = DevAuthority("taskcreds.local", allow=True)  # same name, other CA
    pod = harness.add_pod("agent-1")
    agent = harness.agent(pod, svid=foreign.mint_x509_svid(spiffe_id()))
    with pytest.raises(aiohttp.ClientError):
        await harness.issue(agent)


@pytest.mark.parametrize(
    ("case", "raw", "status", "code"),
    [
        ("not json", b"{nope", 400, "bad_request"),
        ("not an object", b"[1]", 400, "bad_request"),
        ("unknown field", b'{"task": "fix-42", "extra": 1}', 400, "bad_request"),
        ("missing task", b"{}", 400, "bad_request"),
        ("bad task id", b'{"task": "../etc"}', 400, "bad_request"),
        ("bad ttl", b'{"task": "fix-42", "ttl": "forever"}', 400, "bad_request"),
        ("over 64 KiB", b'{"task": "' + b"a" * 70000 + b'"}', 413, "too_large"),
    ],
)
async def test_malformed_requests(harness: Harness, case: str, raw: bytes, status: int, code: str) -> None:
    pod = harness.add_pod("agent-1")
    reply = await harness.call(harness.agent(pod), "POST", "/v1/credentials", raw=raw)
    assert (reply.status, reply.code) == (status, code), case


async def test_unknown_path_is_json_404(harness: Harness) -> None:
    reply = await harness.call(harness.agent(harness.add_pod("agent-1")), "GET", "/v1/nope")
    assert (reply.status, reply.code) == (404, "not_found")


async def test_rate_limited_per_pod(harness: Harness) -> None:
    pod = harness.add_pod("agent-1")
    agent = harness.agent(pod)
    other = harness.agent(harness.add_pod("agent-2"))
    codes = [(await harness.call(agent, "GET", "/v1/tasks/fix-42/status")).status for _ in range(25)]
    assert 429 in codes and codes[0] == 200
    limited = await harness.call(agent, "GET", "/v1/tasks/fix-42/status")
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    assert (await harness.call(other, "GET", "/v1/tasks/fix-42/status")).status == 200  # per pod


async def test_broker_svid_rotation_is_presented_to_new_connections(harness: Harness) -> None:
    async def presented() -> str:
        _, writer = await asyncio.open_connection(
            "127.0.0.1",
            harness.server.port,
            ssl=client_context(harness.authority.mint_x509_svid(spiffe_id())),
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()
        return hashlib.sha256(der).hexdigest()

    before = await presented()
    assert before == harness.broker_svid.fingerprint
    harness.broker_svid = harness.authority.mint_x509_svid(harness.broker_svid.spiffe_id)
    after = await presented()
    assert after == harness.broker_svid.fingerprint != before


async def test_no_value_in_logs_leases_events_or_metrics(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pod = harness.add_pod("agent-1", credentials="api,legacy")
    agent = harness.agent(pod)
    reply = await harness.issue(agent)
    assert reply.status == 200
    values = [v for c in reply.doc["credentials"] for v in c["files"].values()]
    assert CANARY in values
    await harness.call(
        agent,
        "POST",
        "/v1/credentials/legacy/renew",
        {"task": "fix-42", "leaseRef": reply.doc["credentials"][1]["leaseRef"]},
    )
    await harness.call(agent, "POST", "/v1/tasks/fix-42/revoke", {"reason": "done"})
    leases_json = json.dumps(list(harness.cluster.task_leases.values()), default=str)
    events_json = json.dumps(harness.cluster.events)
    metrics_text = generate_latest(harness.metrics.registry).decode()
    logs = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert any("credential issued" in r.getMessage() for r in caplog.records)
    for value in values:
        for where, text in [
            ("lease", leases_json),
            ("events", events_json),
            ("metrics", metrics_text),
            ("logs", logs),
        ]:
            assert value not in text, where
        assert agent.token not in logs


async def test_metrics_count_issuance_and_requests(harness: Harness) -> None:
    pod = harness.add_pod("agent-1")
    await harness.issue(harness.agent(pod))
    text = generate_latest(harness.metrics.registry).decode()
    assert 'taskcreds_credentials_issued_total{provider="jwt"} 1.0' in text
    assert 'taskcreds_leases_active{provider="jwt"} 1.0' in text
    assert 'taskcreds_broker_requests_total{code="200",endpoint="/v1/credentials"} 1.0' in text
    assert 'taskcreds_issue_duration_seconds_count{provider="jwt"} 1.0' in text


async def test_stalled_handshake_is_closed() -> None:
    h = Harness()
    from taskcreds.operator.broker.server import BrokerServer as Server

    h.server = Server(h.app, lambda: h.broker_svid, handshake_timeout=0.3)
    await h.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.server.port)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the server, nothing said
        assert time.monotonic() - started < 2.0
        writer.close()
    finally:
        await h.close()


async def test_stalled_body_is_refused() -> None:
    h = Harness(settings=BrokerSettings(jwt_issuer="https://broker.test", body_timeout=0.3))
    h.put_sources()
    await h.start()
    try:
        pod = h.add_pod("agent-1")
        agent = h.agent(pod)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", h.server.port, ssl=client_context(agent.svid)
        )
        writer.write(
            b"POST /v1/credentials HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + agent.token.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert head.startswith(b"HTTP/1.1 400")
        writer.close()
    finally:
        await h.close()


async def test_malformed_http_never_logs_its_bytes(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pod = harness.add_pod("agent-1")
    agent = harness.agent(pod)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", harness.server.port, ssl=client_context(agent.svid)
    )
    # a header line without its colon: aiohttp's parser error quotes the offending line, token and all
    writer.write(b"GET /healthz HTTP/1.1\r\nAuthorization Bearer " + agent.token.encode() + b"\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(reader.read(), 3)
    writer.close()
    assert agent.token not in caplog.text
    assert all(agent.token not in str(r.__dict__) for r in caplog.records)


async def test_pod_recreated_under_the_same_name_waits_for_its_predecessor(harness: Harness) -> None:
    old = harness.add_pod("agent-1")
    assert (await harness.issue(harness.agent(old))).status == 200
    harness.cluster.delete_pod(NS, "agent-1")  # its TaskLease waits for revocation (finalizer)
    new = harness.add_pod("agent-1")  # a StatefulSet's replacement: same name, same task, new uid
    agent = harness.agent(new)
    busy = await harness.issue(agent)
    assert (busy.status, busy.code) == (503, "unavailable")  # retryable, not task_terminal
    status = await harness.call(agent, "GET", "/v1/tasks/fix-42/status")
    assert status.doc["terminal"] is False  # the predecessor's ending is not this pod's
    from taskcreds.operator.leases import sweep_leases

    (outcome,) = await sweep_leases(harness.cluster, harness.providers, metrics=None)
    assert outcome.done and (NS, lease_name("agent-1", "fix-42")) not in harness.cluster.task_leases
    reply = await harness.issue(agent)
    assert reply.status == 200, reply.doc
    lease = harness.cluster.task_leases[(NS, lease_name("agent-1", "fix-42"))]
    assert lease["metadata"]["ownerReferences"][0]["uid"] == new["metadata"]["uid"]


async def test_token_reviews_are_cached_but_a_gone_pod_is_still_refused(harness: Harness) -> None:
    pod = harness.add_pod("agent-1")
    agent = harness.agent(pod)
    before = harness.cluster.calls.get("review_token", 0)
    for _ in range(5):
        assert (await harness.call(agent, "GET", "/v1/tasks/fix-42/status")).status == 200
    assert harness.cluster.calls["review_token"] - before == 1
    harness.cluster.delete_pod(NS, "agent-1")
    harness.add_pod("agent-1")  # same name, new uid: the cached review names the old uid
    reply = await harness.issue(agent)
    assert (reply.status, reply.code) == (404, "not_found")


PROXY_CASES = [
    (
        "bearer header for an API",
        {"hosts": ["api.github.com", "*.githubusercontent.com"], "header": "Authorization: Bearer {token}"},
        {
            "hosts": ["api.github.com", "*.githubusercontent.com"],
            "header": "Authorization: Bearer {token}",
            "basicUsername": None,
            "allowHttp": False,
        },
    ),
    (
        "basic for git, plain http allowed",
        {"hosts": ["git.internal"], "basic": {"username": "x-access-token"}, "allowHttp": True},
        {"hosts": ["git.internal"], "header": None, "basicUsername": "x-access-token", "allowHttp": True},
    ),
]


@pytest.mark.parametrize(("case", "proxy", "expected"), PROXY_CASES, ids=[c[0] for c in PROXY_CASES])
async def test_proxy_source_answers_carry_the_proxy_block_and_no_value_in_it(
    harness: Harness, case: str, proxy: dict[str, Any], expected: dict[str, Any]
) -> None:
    from tests.operator.test_broker_harness import source

    harness.cluster.put_source(
        source("gh", "secret", secret={"secretRef": {"name": "legacy-token", "key": "token"}},
               delivery="proxy", proxy=proxy, files=["token"])
    )
    pod = harness.add_pod("agent-1", credentials="gh,legacy")
    agent = harness.agent(pod)
    reply = await harness.issue(agent)
    assert reply.status == 200, reply.doc
    creds = {c["name"]: c for c in reply.doc["credentials"]}
    assert creds["gh"]["delivery"] == "proxy" and creds["gh"]["proxy"] == expected
    assert creds["gh"]["files"] == {"token": CANARY}, "the value still travels in files, for the sidecar's store"
    assert CANARY not in json.dumps(creds["gh"]["proxy"])
    assert creds["legacy"]["delivery"] == "file" and "proxy" not in creds["legacy"]
    renewed = await harness.call(
        agent, "POST", "/v1/credentials/gh/renew", {"task": "fix-42", "leaseRef": creds["gh"]["leaseRef"]}
    )
    assert renewed.status == 200, renewed.doc
    assert renewed.doc["delivery"] == "proxy" and renewed.doc["proxy"] == expected


def test_rate_buckets_follow_the_live_pods(harness: Harness) -> None:
    """Ended pods' buckets are forgotten once refilled (the soak saw one per pod ever seen, kept)."""
    from taskcreds.operator.broker.errors import RateLimited
    from taskcreds.operator.broker.server import BROKER_KEY

    broker = harness.app[BROKER_KEY]
    clock = [1000.0]
    broker.monotonic = lambda: clock[0]
    broker.pod_limits.pruned = clock[0]
    for i in range(300):  # 300 pods, a request each
        broker._rate_limit(f"uid-{i}")
    assert len(broker._buckets) == 300
    clock[0] += 61.0  # past the prune interval and a full refill (burst 20 at 5/s: 4 s)
    broker._rate_limit("uid-live")
    assert set(broker._buckets) == {"uid-live"}
    clock[0] += 59.0
    for _ in range(20):  # a pod spends its whole burst just before the next prune
        broker._rate_limit("uid-busy")
    clock[0] += 2.0
    broker._rate_limit("uid-new")  # prunes: uid-busy has not refilled (2 s of 4), it keeps its limit
    assert set(broker._buckets) == {"uid-busy", "uid-new"}
    with pytest.raises(RateLimited):
        for _ in range(20):
            broker._rate_limit("uid-busy")
