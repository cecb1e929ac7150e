"""The durable JWT deny list under load: bursts of revocations (a Job's pods ending together) all
succeed in a few batched writes, a full list never fails a revoke or blocks key rotation, and
renewals do not grow it (review findings HIGH 1, HIGH 2, LOW 12).

Real providers and brokers over the in-memory cluster, with API latency where contention matters.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import pytest
from taskcreds.operator import leases
from taskcreds.operator.cluster import ClusterError
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import IssueRequest, ProviderError
from taskcreds.operator.providers.jwt import DENYLIST_SUFFIX, REVOKED_KEY, SECRET_KEY, JwtProvider

from tests.operator.test_broker_harness import NS, Harness, pod_body

SYSTEM = "taskcreds-system"
SECRET_LIMIT = 1 << 20  # kube-apiserver refuses Secret data over 1 MiB


class ApiLike(MemCluster):
    """10 ms per Secret read and write, Secret data capped at 1 MiB, and every write to the deny list
    counted: what a real API server does to these read-modify-writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: dict[str, int] = {}

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        await asyncio.sleep(0.01)
        return await super().get_secret(namespace, name)

    async def apply_secret(self, namespace: str, name: str, data: dict[str, bytes], *a: Any, **k: Any) -> Any:
        await asyncio.sleep(0.01)
        if sum(len(v) for v in data.values()) > SECRET_LIMIT:
            raise ClusterError(f"Secret {namespace}/{name} is invalid: data: Too long: must have at most 1048576 bytes")
        self.writes[name] = self.writes.get(name, 0) + 1
        return await super().apply_secret(namespace, name, data, *a, **k)


def jwt_provider(cluster: MemCluster, **kw: Any) -> JwtProvider:
    return JwtProvider(cluster, secret_namespace=SYSTEM, secret_name="taskcreds-jwt", issuer="https://x", **kw)


def request(i: int) -> IssueRequest:
    return IssueRequest(
        credential="api", source_spec={"provider": "jwt", "jwt": {}}, source_namespace=None, namespace=NS,
        pod=f"agent-{i}", pod_uid=f"u{i}", service_account="agent", task="fix-42", ttl_seconds=1800,
    )


def stored(cluster: MemCluster, secret: str = "taskcreds-jwt" + DENYLIST_SUFFIX) -> dict[str, int]:
    data = (cluster.secrets.get((SYSTEM, secret)) or {}).get("data") or {}
    return json.loads(base64.b64decode(data[REVOKED_KEY])) if REVOKED_KEY in data else {}


def jti(lease_ref: str) -> str:
    return lease_ref.split(":")[1]


@pytest.mark.parametrize("replicas", [1, 3], ids=["one replica", "three replicas"])
async def test_a_burst_of_100_revocations_all_succeed_in_a_few_writes(replicas: int) -> None:
    cluster = ApiLike()
    providers = [jwt_provider(cluster) for _ in range(replicas)]
    issued = [await providers[0].issue(request(i)) for i in range(100)]
    results = await asyncio.gather(
        *(providers[i % replicas].revoke(x.lease_ref, {}, None) for i, x in enumerate(issued)),
        return_exceptions=True,
    )
    assert [r for r in results if r is not None] == []
    assert set(stored(cluster)) == {jti(x.lease_ref) for x in issued}
    # one writer per replica: the burst is coalesced (was one write attempt per revoke, 95 failing)
    assert cluster.writes["taskcreds-jwt" + DENYLIST_SUFFIX] <= 4 * replicas
    fresh = jwt_provider(cluster)
    await fresh.sync_revoked(max_age=0)
    assert {r["jti"] for r in fresh.revoked()} == {jti(x.lease_ref) for x in issued}


async def test_a_burst_of_100_task_ends_leaves_no_tasklease_revoking() -> None:
    cluster = ApiLike()
    provider = jwt_provider(cluster)
    names = []
    for i in range(100):
        pod = cluster.put_pod(pod_body(f"agent-{i}"))
        x = await provider.issue(request(i))
        ref = {"kind": "ClusterCredentialSource", "name": "api"}
        await leases.record_issued(cluster, pod, "fix-42", [leases.lease_entry("api", "jwt", ref, x)])
        names.append(leases.lease_name(f"agent-{i}", "fix-42"))
    cluster.put_source({
        "kind": "ClusterCredentialSource", "metadata": {"name": "api"},
        "spec": {"provider": "jwt", "maxTTL": "1h", "allowedNamespaces": [NS], "allowedServiceAccounts": ["agent"]},
    })
    outcomes = await asyncio.gather(
        *(leases.revoke_task(cluster, {"jwt": provider}, NS, n, "completed", metrics=None) for n in names)
    )
    assert [o.lease for o in outcomes if not o.done] == [], "left Revoking for the next sweep"
    assert len(stored(cluster)) == 100


async def test_a_write_that_fails_fails_every_revocation_in_its_batch_and_the_retry_goes_through() -> None:
    cluster = ApiLike()
    provider = jwt_provider(cluster)
    issued = [await provider.issue(request(i)) for i in range(5)]
    cluster.fail("get_secret", ClusterError("API unreachable"))
    results = await asyncio.gather(*(provider.revoke(x.lease_ref, {}, None) for x in issued), return_exceptions=True)
    assert {str(r) for r in results} == {
        f"jwt: cannot record the revoked jti in Secret {SYSTEM}/taskcreds-jwt-revoked: ClusterError"
    }, "the batch shares the one failed write"
    assert all(isinstance(r, ProviderError) and r.retryable for r in results)
    assert await asyncio.gather(*(provider.revoke(x.lease_ref, {}, None) for x in issued)) == [None] * 5
    assert len(stored(cluster)) == 5


def fill(cluster: MemCluster, secret: str, exp: int, max_bytes: int) -> int:
    """The deny list as a flood of task ends leaves it: as many unexpired ids as fit in max_bytes."""
    entries: dict[str, int] = {}
    size = 2
    while size + 22 + 3 + len(str(exp)) + 1 <= max_bytes:
        entries[f"{len(entries):022d}"] = exp
        size += 22 + 3 + len(str(exp)) + 1
    cluster.put_secret(SYSTEM, secret, {REVOKED_KEY: json.dumps(entries, separators=(",", ":"))})
    return len(entries)


async def test_a_full_deny_list_fails_no_tenant_and_blocks_no_key_rotation(caplog: pytest.LogCaptureFixture) -> None:
    cluster = ApiLike()
    a, b = Harness(cluster=cluster), Harness(cluster=cluster)  # two replicas
    a.put_sources()
    await a.start()
    await b.start()
    try:
        jwt_a = a.providers["jwt"]
        assert isinstance(jwt_a, JwtProvider)
        jwt_a.metrics = a.metrics
        pod = a.add_pod("victim", credentials="api")
        agent = a.agent(pod)
        cred = (await a.issue(agent, ttl="30m")).doc["credentials"][0]
        deny_secret = a.settings.jwt_secret + DENYLIST_SUFFIX
        filled = fill(cluster, deny_secret, int(cred["leaseRef"].split(":")[2]) + 86000, jwt_a.deny_max_bytes)

        renewed = await a.call(agent, "POST", "/v1/credentials/api/renew", {"task": "fix-42", "leaseRef": cred["leaseRef"]})
        assert renewed.status == 200, renewed.doc
        assert (await jwt_a.rotate()) in {k["kid"] for k in jwt_a.jwks()["keys"]}, "key rotation is not blocked"
        caplog.set_level(logging.ERROR, logger="taskcreds.providers.jwt")
        ended = await a.call(agent, "POST", "/v1/tasks/fix-42/revoke", {})
        assert ended.status == 200, ended.doc
        lease = cluster.task_leases[(NS, leases.lease_name("victim", "fix-42"))]
        assert lease["status"]["phase"] == "Revoked", lease["status"]
        live = jti(renewed.doc["leaseRef"])
        assert live not in stored(cluster, deny_secret) and len(stored(cluster, deny_secret)) == filled
        # still denied: through its TaskLease on every replica, and on the replica that revoked it
        reply = await b.call(b.agent(pod, no_svid=True), "GET", "/v1/jwt/revoked")
        assert {live, jti(cred["leaseRef"])} <= {r["jti"] for r in reply.doc["revoked"]}
        assert jwt_a.is_revoked(live)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and errors[0].fields["not_stored"] == 1, [r.getMessage() for r in errors]  # type: ignore[attr-defined]
        assert errors[0].fields["stored"] == filled  # type: ignore[attr-defined]
        assert live not in json.dumps(errors[0].fields), "counts only, never an id"  # type: ignore[attr-defined]
        assert a.metrics.registry.get_sample_value("taskcreds_jwt_denylist_overflow_total") == 1
    finally:
        await a.close()
        await b.close()


async def test_renewals_do_not_grow_the_durable_list_and_the_replaced_ids_stay_listed() -> None:
    """LOW 12: a client renewing in a loop adds nothing to the durable list; each replaced jti is
    listed (through its TaskLease) on every replica; the task's end writes the live one."""
    cluster = MemCluster()
    a, b = Harness(cluster=cluster), Harness(cluster=cluster)
    a.put_sources()
    await a.start()
    await b.start()
    try:
        pod = a.add_pod("agent-1", credentials="api")
        agent = a.agent(pod)
        ref = (await a.issue(agent, ttl="30m")).doc["credentials"][0]["leaseRef"]
        replaced = []
        for _ in range(15):  # within the per-pod burst of 20
            reply = await a.call(agent, "POST", "/v1/credentials/api/renew", {"task": "fix-42", "leaseRef": ref})
            assert reply.status == 200, reply.doc
            replaced.append(jti(ref))
            ref = reply.doc["leaseRef"]
        deny_secret = a.settings.jwt_secret + DENYLIST_SUFFIX
        assert stored(cluster, deny_secret) == {}
        listed = await b.call(b.agent(pod, no_svid=True), "GET", "/v1/jwt/revoked")
        assert set(replaced) <= {r["jti"] for r in listed.doc["revoked"]}
        assert jti(ref) not in {r["jti"] for r in listed.doc["revoked"]}
        assert (await a.call(agent, "POST", "/v1/tasks/fix-42/revoke", {})).status == 200
        assert set(stored(cluster, deny_secret)) == {jti(ref)}
        keys = cluster.secrets[(SYSTEM, a.settings.jwt_secret)]["data"]
        assert set(keys) == {SECRET_KEY}, "the signing-key Secret holds keys only"
    finally:
        await a.close()
        await b.close()


def test_the_operator_gives_the_jwt_provider_its_metrics() -> None:
    from taskcreds.operator.broker.settings import BrokerSettings
    from taskcreds.operator.providers.registry import make_providers

    from taskcreds.metrics import register_operator

    metrics = register_operator()
    providers = make_providers(MemCluster(), BrokerSettings(namespace=SYSTEM, jwt_issuer="https://x"), metrics)
    assert getattr(providers["jwt"], "metrics", None) is metrics
