"""The JWT deny list (``GET /v1/jwt/revoked``) keeps a revoked, unexpired token listed on every
replica, after an operator restart and after its pod and TaskLease are gone — until its ``exp``.

Real brokers sharing one in-memory cluster; the revoked ids live in the deny-list Secret next to the
jwt signing-key Secret (ids and expiry times only, never a token).
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from taskcreds.operator.cluster import ClusterError
from taskcreds.operator.leases import lease_name
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import IssueRequest, ProviderError
from taskcreds.operator.providers.jwt import DENYLIST_SUFFIX, REVOKED_KEY, JwtProvider

from tests.operator.test_broker_harness import NS, Harness


async def listed(h: Harness, pod: dict, jti: str) -> bool:
    reply = await h.call(h.agent(pod, no_svid=True), "GET", "/v1/jwt/revoked")
    assert reply.status == 200, reply.doc
    return any(r["jti"] == jti for r in reply.doc["revoked"])


@pytest.mark.parametrize("who_asks", ["the other replica", "a restarted operator"])
async def test_a_revoked_jwt_stays_listed_after_its_pod_and_tasklease_are_gone(who_asks: str) -> None:
    a = Harness()
    a.put_sources()
    await a.start()
    b = Harness(cluster=a.cluster)
    await b.start()
    try:
        pod = a.add_pod("agent-1", credentials="api")
        cred = (await a.issue(a.agent(pod), ttl="30m")).doc["credentials"][0]
        jti = cred["leaseRef"].split(":")[1]
        assert (await a.call(a.agent(pod), "POST", "/v1/tasks/fix-42/revoke", {})).status == 200
        assert await listed(a, pod, jti)
        # the Job controller deletes the finished pod; GC deletes its (released) TaskLease
        a.cluster.delete_pod(NS, "agent-1")
        if (NS, lease_name("agent-1", "fix-42")) in a.cluster.task_leases:
            await a.cluster.delete_task_lease(NS, lease_name("agent-1", "fix-42"))
        assert (NS, lease_name("agent-1", "fix-42")) not in a.cluster.task_leases
        if who_asks == "a restarted operator":
            await a.close()
            a = Harness(cluster=b.cluster)
            await a.start()
            asker = a
        else:
            asker = b
        assert await listed(asker, pod, jti)
        secrets = a.cluster.secrets
        stored = secrets[("taskcreds-system", a.settings.jwt_secret + DENYLIST_SUFFIX)]["data"][REVOKED_KEY]
        assert json.loads(base64.b64decode(stored)) == {jti: int(cred["leaseRef"].split(":")[2])}
        assert "eyJ" not in base64.b64decode(stored).decode(), "ids and times only, never a token"
        assert REVOKED_KEY not in secrets[("taskcreds-system", a.settings.jwt_secret)]["data"], (
            "the signing-key Secret holds keys only"
        )
    finally:
        await a.close()
        await b.close()


def request(ttl: int = 60) -> IssueRequest:
    return IssueRequest(
        credential="api", source_spec={"jwt": {"audience": [f"{NS}/api"]}}, source_namespace=NS, namespace=NS,
        pod="agent-1", pod_uid="u1", service_account="agent", task="fix-42", ttl_seconds=ttl,
    )


class SlowReads(MemCluster):
    """A Secret read answers, then the caller is suspended: replicas' read-modify-writes interleave."""

    async def get_secret(self, namespace: str, name: str) -> dict | None:
        secret = await super().get_secret(namespace, name)
        await asyncio.sleep(0.01)
        return secret


async def test_entries_are_pruned_at_exp_and_replicas_writing_at_once_lose_none() -> None:
    cluster = SlowReads()
    clock = [datetime(2026, 11, 29, 10, 0, tzinfo=UTC)]
    make = lambda: JwtProvider(  # noqa: E731
        cluster, secret_namespace="taskcreds-system", secret_name="jwt", issuer="https://b", now=lambda: clock[0]
    )
    a, b = make(), make()
    short = await a.issue(request(60))
    longs = [await a.issue(request(3600)) for _ in range(4)]
    await a.revoke(short.lease_ref, {}, NS)
    # two replicas revoking concurrently: the resourceVersion-guarded writes keep every id
    await asyncio.gather(*(p.revoke(i.lease_ref, {}, NS) for p, i in zip((a, b, a, b), longs, strict=True)))
    fresh = make()
    await fresh.sync_revoked(max_age=0)
    assert {r["jti"] for r in fresh.revoked()} == {i.lease_ref.split(":")[1] for i in [short, *longs]}
    await fresh.ensure_keys()
    kids = lambda p: [k["kid"] for k in p.jwks()["keys"]]  # noqa: E731
    assert kids(fresh) == kids(a), "the signing keys survived the deny-list writes"
    clock[0] += timedelta(minutes=2)  # the short one expired: dropped from the list and the Secret
    extra = await a.issue(request(3600))
    await b.revoke(extra.lease_ref, {}, NS)
    stored = json.loads(base64.b64decode(cluster.secrets[("taskcreds-system", "jwt-revoked")]["data"][REVOKED_KEY]))
    assert short.lease_ref.split(":")[1] not in stored and len(stored) == 5
    assert short.lease_ref.split(":")[1] not in {r["jti"] for r in b.revoked()}


async def test_a_revocation_that_cannot_be_recorded_is_a_retryable_failure() -> None:
    cluster = MemCluster()
    provider = JwtProvider(cluster, secret_namespace="taskcreds-system", secret_name="jwt", issuer="https://b")
    issued = await provider.issue(request())
    cluster.fail("get_secret", ClusterError("API unreachable"))
    with pytest.raises(ProviderError) as caught:
        await provider.revoke(issued.lease_ref, {}, NS)
    assert caught.value.retryable and "cannot record the revoked jti in Secret taskcreds-system/jwt-revoked" in str(caught.value)
    await provider.revoke(issued.lease_ref, {}, NS)  # the retry goes through
    fresh = JwtProvider(cluster, secret_namespace="taskcreds-system", secret_name="jwt", issuer="https://b")
    await fresh.sync_revoked(max_age=0)
    assert fresh.is_revoked(issued.lease_ref.split(":")[1])
