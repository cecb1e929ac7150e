# ruff: noqa: F811  (fixtures are imported by name)
"""An operator that dies between the source's answer and the TaskLease write leaves no credential
unrecorded: the pending entry written before the source was asked is revoked by its intent (jwt: the
jti) or recorded not revocable, at task end or by the sweep after the grace.

The crash: a provider wrapper that keeps the source's answer and then never returns; the broker's
issue sequence is then cancelled (nothing after the provider call runs, as in an OOM-kill) and the
broker dropped without draining. Another "process" (fresh providers on the same cluster) revokes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from taskcreds.operator import leases
from taskcreds.operator.broker.server import BROKER_KEY
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import Issued, IssueRequest, Provider, ProviderError
from taskcreds.operator.providers.registry import make_providers

from taskcreds import names
from tests.openbao import OpenBao
from tests.openbao import openbao as openbao_fixture  # noqa: F401  (the `openbao` fixture)
from tests.operator.test_broker_harness import NS, Harness, source
from tests.operator.test_broker_inflight import bao_source, seeded  # an operator token on OpenBao
from tests.operator.test_broker_scenario import KubeHarness, kube_world

TASK = "fix-42"
LEASE = leases.lease_name("agent-1", TASK)


class CrashAfterAnswer:
    """A provider whose source answers, after which the operator process dies (never returns)."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name = inner.name
        self.min_lifetime_seconds = getattr(inner, "min_lifetime_seconds", 0)
        self.answered: list[Issued] = []
        self.answer = asyncio.Event()

    async def issue(self, request: IssueRequest) -> Issued:
        issued = await self.inner.issue(request)
        self.answered.append(issued)
        self.answer.set()
        await asyncio.Event().wait()  # the process is gone: nothing after the answer runs
        raise AssertionError("unreachable")

    async def renew(self, lease_ref: str, request: IssueRequest) -> Issued:
        return await self.inner.renew(lease_ref, request)

    async def revoke(self, lease_ref: str, source_spec: dict[str, Any], source_namespace: str | None) -> None:
        await self.inner.revoke(lease_ref, source_spec, source_namespace)


async def crash_mid_issue(h: Harness, provider: str) -> Issued:
    """Issue through a provider that dies after its source answered; drop the broker undrained."""
    crashing = CrashAfterAnswer(h.providers[provider])
    broker = h.app[BROKER_KEY]
    broker.providers[provider] = crashing
    await h.start()
    agent = h.agent(h.add_pod("agent-1", credentials="api"))
    call = asyncio.create_task(h.issue(agent, ttl="10m"))
    await asyncio.wait_for(crashing.answer.wait(), 10)
    for job in list(broker._inflight):  # the process dies: its issue sequence stops where it is
        job.cancel()
    call.cancel()
    await asyncio.gather(call, *broker._inflight, return_exceptions=True)
    await h.close()  # nothing left to drain
    return crashing.answered[0]


def entries(cluster: MemCluster) -> list[dict[str, Any]]:
    return list(((cluster.task_leases.get((NS, LEASE)) or {}).get("status") or {}).get("leases") or [])


def jti_of(issued: Issued) -> str:
    return issued.lease_ref.split(":")[1]


# --- jwt: the intent is the jti, so a pending entry is deny-listed without the token -------------------
async def task_ends(cluster: MemCluster, providers: dict[str, Provider]) -> None:
    cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "completed")
    outcome = await leases.revoke_task(cluster, providers, NS, LEASE, "completed", metrics=None)
    assert outcome.done, outcome


async def sweep_after_grace(cluster: MemCluster, providers: dict[str, Provider]) -> None:
    later = datetime.now(UTC) + leases.PENDING_GRACE + timedelta(seconds=1)
    await leases.sweep_leases(cluster, providers, metrics=None, now=lambda: later)


#: who finds the pending entry -> the revokeReason it gets
FINDERS = {"task end": (task_ends, "completed"), "sweep after the grace": (sweep_after_grace, "interrupted")}


@pytest.mark.parametrize("finder", list(FINDERS))
async def test_jwt_answered_but_never_recorded_is_deny_listed(finder: str) -> None:
    h = Harness()
    h.put_sources()
    answered = await crash_mid_issue(h, "jwt")
    (pending,) = entries(h.cluster)
    assert pending["pending"] is True and pending["intent"] == jti_of(answered)

    restarted = make_providers(h.cluster, h.settings)  # the operator after its restart
    find, reason = FINDERS[finder]
    await find(h.cluster, restarted)

    (entry,) = entries(h.cluster)
    assert entry["revokedAt"] and entry["revokeReason"] == reason and "notRevocable" not in entry
    fresh = make_providers(h.cluster, h.settings)["jwt"]  # any replica, from the durable list
    await fresh.sync_revoked(max_age=0)  # type: ignore[attr-defined]
    assert jti_of(answered) in {r["jti"] for r in fresh.revoked()}  # type: ignore[attr-defined]
    listed = {r["jti"]: r["exp"] for r in fresh.revoked()}  # type: ignore[attr-defined]
    assert listed[jti_of(answered)] >= answered.expires_at.timestamp(), "listed until the token's exp"


async def test_the_sweep_leaves_a_pending_entry_alone_within_the_grace() -> None:
    h = Harness()
    h.put_sources()
    await crash_mid_issue(h, "jwt")
    await leases.sweep_leases(h.cluster, make_providers(h.cluster, h.settings), metrics=None)
    (entry,) = entries(h.cluster)
    assert entry["pending"] is True and not entry.get("revokedAt"), "an issue in flight was disturbed"


# --- vault token mode (real OpenBao): not findable without its accessor: said so, finalizer released --


async def test_vault_token_answered_but_never_recorded_is_recorded_not_revocable(openbao: OpenBao) -> None:
    h = Harness()
    h.cluster.put_secret(NS, "bao-op", {"token": seeded(openbao)})
    h.cluster.put_source(bao_source("api", openbao))
    answered = await crash_mid_issue(h, "vault")
    (pending,) = entries(h.cluster)
    meta = openbao.client().auth.token.lookup_accessor(answered.lease_ref)["data"]["meta"]
    assert meta["taskcreds_intent"] == pending["intent"], "a person can find the token by its intent"

    await task_ends(h.cluster, make_providers(h.cluster, h.settings))

    (entry,) = entries(h.cluster)
    assert entry["revokedAt"], "the finalizer waits for it forever"
    assert "outcome unknown (operator stopped mid-issue); expires by " in entry["notRevocable"]
    assert entry["expiresAt"] in entry["notRevocable"]
    expires_by = leases.parse_timestamp(entry["expiresAt"])
    assert expires_by is not None and expires_by >= answered.expires_at, "the bound is not a bound"
    assert h.cluster.task_leases[(NS, LEASE)]["metadata"]["finalizers"] == []


# --- the normal path: one more write per issue, no pending entry left, CRD keeps the fields -----------
@pytest.fixture
async def kube_harness(tmp_path: Path) -> AsyncIterator[KubeHarness]:
    async with kube_world(tmp_path) as h:
        yield h


def status_writes(h: KubeHarness) -> int:
    return sum(1 for c in h.kube_api.api_calls if c.verb == "patch" and c.resource == "taskleases/status")


class DownSource:
    """The jwt provider behind a source that fails every issue (the source is down)."""

    name = "jwt"

    async def issue(self, request: IssueRequest) -> Issued:
        raise ProviderError("jwt", "source unreachable")


#: what the source does -> (HTTP status class, new entries on the TaskLease after it)
OUTCOMES = {"issued": (2, 1), "source fails": (5, 0)}


@pytest.mark.parametrize("case", list(OUTCOMES))
async def test_each_issue_costs_one_more_write_and_leaves_no_pending_entry(
    kube_harness: KubeHarness, case: str
) -> None:
    h = kube_harness
    h.kube_api.put({"apiVersion": names.API_VERSION, **source("api", "jwt", jwt={"audience": [f"{NS}/a"]})})
    status, left = OUTCOMES[case]
    agent = h.agent(h.add_pod("agent-1", credentials="api"))
    warm = await h.issue(agent, ttl="10m")  # the TaskLease exists from here on
    assert warm.status == 200, warm.doc
    before = status_writes(h)
    if case == "source fails":
        h.app[BROKER_KEY].providers["jwt"] = DownSource()

    reply = await h.issue(agent, ttl="10m")

    assert reply.status // 100 == status, reply.doc
    assert status_writes(h) - before == 2, "the pending entry is one write, resolving it the other"
    stored = (h.lease("agent-1", TASK) or {})["status"]["leases"]
    assert not [e for e in stored if e.get("pending")], "a pending entry is left behind"
    assert len(stored) == 1 + left
    if left:  # the real entry keeps its intent: the jti, through the API server (not pruned)
        assert stored[-1]["intent"] == stored[-1]["leaseRef"].split(":")[1]


async def test_a_source_that_issues_longer_than_asked_bounds_the_pending_entry_by_that() -> None:
    """GitHub's tokens live 1 h whatever TTL was asked (kubernetes-token: at least 10 min): the
    "expires by" of an interrupted issue must not promise an admin the credential died sooner."""
    h = Harness()
    h.put_sources()
    h.providers["jwt"].min_lifetime_seconds = 3600  # type: ignore[attr-defined]  (as github-app says)
    before = datetime.now(UTC)
    await crash_mid_issue(h, "jwt")  # asked for 10 minutes
    (pending,) = entries(h.cluster)
    # expiresAt: what the task was granted (10 min + the grace); the value itself dies by the source's 1 h
    granted = leases.parse_timestamp(pending["expiresAt"])
    assert granted is not None and granted <= datetime.now(UTC) + timedelta(seconds=600) + leases.PENDING_GRACE
    assert leases.parse_timestamp(pending["sourceExpiresAt"]) >= before + timedelta(seconds=3600)
    dies = leases.dies_by(pending)
    assert dies is not None and dies >= before + timedelta(seconds=3600)
    assert pending["leaseRef"].endswith(f":{int(dies.timestamp())}"), "the leaseRef names when it dies"
