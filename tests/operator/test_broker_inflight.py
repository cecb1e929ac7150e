# ruff: noqa: F811  (fixtures are imported by name)
"""A credential issued at its source is always either recorded on the TaskLease or revoked again.

aiohttp cancels a handler when its client hangs up (the sidecar's 10 s timeout while the API server
is slow, the sidecar cancelling in-flight calls at teardown, the broker stopping). The issue/renew →
record → undo sequence must run to its end anyway, so the task end revokes what was issued.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from taskcreds.operator.broker.server import BROKER_KEY
from taskcreds.operator.broker.settings import BrokerSettings
from taskcreds.operator.cluster import ClusterError
from taskcreds.operator.leases import lease_name, revoke_task
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import Issued, IssueRequest, Provider, ProviderError

from taskcreds import names
from tests.openbao import OPERATOR_POLICY, OpenBao
from tests.openbao import openbao as openbao_fixture  # noqa: F401  (the `openbao` fixture)
from tests.operator.test_broker_harness import NS, Agent, Harness, Reply, source

LEASE = lease_name("agent-1", "fix-42")


class StallingCluster(MemCluster):
    """An API server whose TaskLease status writes recording an answer can be slow or fail once.

    Only writes that record what a source answered (no unresolved pending entry left) stall or fail:
    the pending entry written before the source is asked goes through (tests/operator/
    test_broker_crash_window.py covers what follows when the operator stops after it).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stall = 0.0
        self.fail_next = 0
        self.recording = asyncio.Event()  # set when a stalled write has started

    async def patch_task_lease(self, namespace, name, patch, subresource=None):  # type: ignore[override]
        written = (patch.get("status") or {}).get("leases") or []
        if subresource == "status" and written and not any(
            e.get("pending") and not e.get("revokedAt") for e in written
        ):
            if self.fail_next:
                self.fail_next -= 1
                raise ClusterError("Kubernetes API unreachable (TimeoutError)")
            if self.stall:
                self.recording.set()
                await asyncio.sleep(self.stall)
        return await super().patch_task_lease(namespace, name, patch, subresource=subresource)

    def entries(self) -> list[dict[str, Any]]:
        lease = self.task_leases.get((NS, LEASE)) or {}
        return list((lease.get("status") or {}).get("leases") or [])


class UnrevocableJwt:
    """The jwt provider, except that revoke fails while ``failing`` (a source that is down)."""

    name = "jwt"

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.failing = False
        self.issued: list[str] = []

    async def issue(self, request: IssueRequest) -> Issued:
        issued = await self.inner.issue(request)
        self.issued.append(issued.lease_ref)
        return issued

    async def renew(self, lease_ref: str, request: IssueRequest) -> Issued:
        issued = await self.inner.renew(lease_ref, request)
        self.issued.append(issued.lease_ref)
        return issued

    async def revoke(self, lease_ref: str, source_spec: dict[str, Any], source_namespace: str | None) -> None:
        if self.failing:
            raise ProviderError("jwt", "source unreachable")
        await self.inner.revoke(lease_ref, source_spec, source_namespace)


async def eventually(check: Callable[[], bool], within: float = 4.0) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def end_task(h: Harness, cluster: StallingCluster) -> None:
    """The task ends and the operator revokes what the TaskLease knows (as the lifecycle does)."""
    cluster.stall = 0.0
    cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "completed")
    outcome = await revoke_task(cluster, h.providers, NS, LEASE, "completed", metrics=None)
    assert outcome.done, outcome


#: how the client is lost -> how long the TaskLease write takes meanwhile
HANG_UPS = {
    "client gives up": 1.0,  # the sidecar's timeout, or its teardown cancelling in-flight calls
    # aiohttp's shutdown waits shutdown_timeout (1 s) twice, then cancels the handler
    "broker stops": 3.0,
}
#: how long the write may still take once the client is lost: stop() returns only when it is done
SETTLE = {"client gives up": 4.0, "broker stops": 0.0}


async def hang_up(
    h: Harness, cluster: StallingCluster, start: Callable[[], asyncio.Task[Reply]], how: str
) -> None:
    """Lose the client while its lease is being written: it gives up, or the broker stops."""
    cluster.stall = HANG_UPS[how]
    call = start()
    await asyncio.wait_for(cluster.recording.wait(), 5)
    if how == "client gives up":
        call.cancel()
    else:
        await h.server.stop()
    await asyncio.gather(call, return_exceptions=True)


# --- OpenBao: a real source whose tokens outlive the task unless revoked ------------------------------
def seeded(bao: OpenBao) -> str:
    token = f"op-{uuid.uuid4().hex[:12]}"

    def seed(b: OpenBao) -> None:
        root = b.client()
        root.sys.create_or_update_policy("taskcreds-operator", OPERATOR_POLICY)
        root.sys.create_or_update_policy("repo-read", 'path "secret/data/*" { capabilities = ["read"] }')
        root.auth.token.create(
            id=token, policies=["taskcreds-operator", "repo-read"], ttl="1h", no_parent=True
        )

    bao.on_start(seed)
    return token


def bao_source(name: str, bao: OpenBao) -> dict[str, Any]:
    """A vault token-mode source on ``bao``, logging in with the :func:`seeded` token (Secret bao-op)."""
    return source(
        name,
        "vault",
        vault={
            "address": bao.address,
            "mode": "token",
            "policies": ["repo-read"],
            "auth": {"method": "token", "tokenSecretRef": {"name": "bao-op", "key": "token"}},
        },
    )


def live_task_tokens(bao: OpenBao) -> set[str]:
    """Accessors of the live tokens the broker issued (display name ``token-taskcreds-...``)."""
    root = bao.client()
    out = set()
    for accessor in root.auth.token.list_accessors()["data"]["keys"]:
        meta = root.auth.token.lookup_accessor(accessor)["data"]
        if "taskcreds" in str(meta.get("display_name")):
            out.add(accessor)
    return out


@pytest.mark.parametrize("how", list(HANG_UPS))
async def test_issued_while_the_client_goes_is_recorded_and_revoked_at_task_end(
    openbao: OpenBao, how: str
) -> None:
    cluster = StallingCluster()
    h = Harness(cluster=cluster)
    cluster.put_secret(NS, "bao-op", {"token": seeded(openbao)})
    cluster.put_source(bao_source("bao", openbao))
    await h.start()
    try:
        agent = h.agent(h.add_pod("agent-1", credentials="bao"))
        before = live_task_tokens(openbao)
        await hang_up(h, cluster, lambda: asyncio.create_task(h.issue(agent, ttl="10m")), how)
        issued = live_task_tokens(openbao) - before
        assert len(issued) == 1, "the provider call finishes whatever the client does"
        recorded = lambda: {e["leaseRef"] for e in cluster.entries()} == issued  # noqa: E731
        assert await eventually(recorded, SETTLE[how]), "the token issued at OpenBao is not on the TaskLease"
        await end_task(h, cluster)
        assert not live_task_tokens(openbao) & issued, "the token outlives the task at OpenBao"
    finally:
        await h.close()


# --- renew: the replacement is recorded, or revoked, or recorded because it could not be revoked ----
async def jwt_harness(cluster: StallingCluster) -> tuple[Harness, UnrevocableJwt, Agent, str]:
    h = Harness(cluster=cluster)
    h.put_sources()
    jwt = UnrevocableJwt(h.providers["jwt"])
    h.app[BROKER_KEY].providers["jwt"] = jwt
    await h.start()
    agent = h.agent(h.add_pod("agent-1", credentials="api"))
    first = await h.issue(agent, ttl="10m")
    assert first.status == 200, first.doc
    return h, jwt, agent, first.doc["credentials"][0]["leaseRef"]


def renew(h: Harness, agent: Agent, lease_ref: str) -> asyncio.Task[Reply]:
    body = {"task": "fix-42", "leaseRef": lease_ref, "ttl": "10m"}
    return asyncio.create_task(h.call(agent, "POST", "/v1/credentials/api/renew", body))


def denied(h: Harness, lease_ref: str) -> bool:
    """The jwt lease ``jwt:<jti>:<exp>`` is on the broker's deny list (revoked at its source)."""
    jti = lease_ref.split(":")[1]
    return jti in {r["jti"] for r in h.providers["jwt"].revoked()}  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", list(HANG_UPS))
async def test_replacement_renewed_while_the_client_goes_is_recorded_and_revoked(how: str) -> None:
    cluster = StallingCluster()
    h, jwt, agent, first = await jwt_harness(cluster)
    try:
        await hang_up(h, cluster, lambda: renew(h, agent, first), how)
        replacement = jwt.issued[-1]
        assert replacement != first
        recorded = lambda: replacement in {e["leaseRef"] for e in cluster.entries()}  # noqa: E731
        assert await eventually(recorded, SETTLE[how]), "the replacement is not on the TaskLease"
        await end_task(h, cluster)
        assert denied(h, replacement), "the replacement outlives the task"
    finally:
        await h.close()


async def test_replacement_that_can_be_neither_recorded_nor_revoked_at_once_is_recorded() -> None:
    """L1: the TaskLease write fails once, then the source refuses the undo: record it after all."""
    cluster = StallingCluster()
    h, jwt, agent, first = await jwt_harness(cluster)
    try:
        cluster.fail_next, jwt.failing = 1, True
        reply = await renew(h, agent, first)
        assert (reply.status, reply.code) == (503, "unavailable"), reply.doc
        replacement = jwt.issued[-1]
        entry = next((e for e in cluster.entries() if e["leaseRef"] == replacement), None)
        assert entry is not None and not entry.get("revokedAt"), "the live replacement is not recorded"
        jwt.failing = False
        await end_task(h, cluster)
        assert denied(h, replacement), "the replacement outlives the task"
    finally:
        await h.close()


async def test_a_stuck_tasklease_write_is_bounded_and_the_credential_revoked_again() -> None:
    cluster = StallingCluster()
    settings = BrokerSettings(
        namespace="taskcreds-system", jwt_issuer="https://broker.test", record_timeout=0.5
    )
    h = Harness(cluster=cluster, settings=settings)
    h.put_sources()
    jwt = UnrevocableJwt(h.providers["jwt"])
    h.app[BROKER_KEY].providers["jwt"] = jwt
    await h.start()
    try:
        agent = h.agent(h.add_pod("agent-1", credentials="api"))
        cluster.stall = 5.0
        start = time.monotonic()
        reply = await h.issue(agent, ttl="10m")
        assert (reply.status, reply.code) == (503, "unavailable"), reply.doc
        assert time.monotonic() - start < 3.0
        (issued,) = jwt.issued
        assert denied(h, issued), "the credential whose record timed out is still valid"
    finally:
        await h.close()
