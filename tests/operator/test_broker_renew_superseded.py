# ruff: noqa: F811  (fixtures are imported by name)
"""A renewal of a lease that is no longer active — superseded, revoked, pending, unknown — is refused
with ``404 not_found`` and mints nothing at the source.

A superseded entry (a renewal on the other replica replaced it; its holder revokes it later) is not
counted live (max_live_leases); renewing it again and again would mint one live credential per call
outside the cap. Real brokers on KubeCluster over the Kubernetes API stand-in (HTTP, TokenReview,
resourceVersion conflicts), the real github-app provider against the GitHub fake, and the real jwt
provider behind a counter.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from taskcreds.operator import leases
from taskcreds.operator.broker.server import BROKER_KEY
from taskcreds.operator.kube import connect
from taskcreds.operator.providers.base import Issued, IssueRequest, Provider
from taskcreds.operator.providers.github_app import GitHubAppProvider
from taskcreds.operator.providers.replica import Replica

from taskcreds import names
from tests.fakes.github import FakeGitHub
from tests.fakes.github import github as github  # noqa: F401  (fixture)
from tests.kube.fixtures import KubeApi
from tests.operator.test_broker_harness import NS, Harness, Reply, source
from tests.operator.test_broker_scenario import CRDS, KubeHarness

TASK = "fix-42"
OPERATOR_NS = "taskcreds-system"


class Counting:
    """A real provider that counts what it is asked to mint (issue, renew)."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.minted = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def issue(self, request: IssueRequest) -> Issued:
        self.minted += 1
        return await self.inner.issue(request)

    async def renew(self, lease_ref: str, request: IssueRequest) -> Issued:
        self.minted += 1
        return await self.inner.renew(lease_ref, request)


@contextlib.asynccontextmanager
async def stand_in(tmp_path: Path) -> AsyncIterator[tuple[KubeApi, Any]]:
    async with KubeApi() as api:
        api.register_crds_from(CRDS)
        cluster = await connect(kubeconfig=api.kubeconfig(tmp_path))
        try:
            yield api, cluster
        finally:
            await cluster.close()


def lease_entries(api: KubeApi) -> list[dict[str, Any]]:
    lease = api.get(names.API_VERSION, names.KIND_TASK_LEASE, NS, leases.lease_name("agent-1", TASK))
    return list(((lease or {}).get("status") or {}).get("leases") or [])


def edit_entry(api: KubeApi, lease_ref: str, **fields: Any) -> None:
    """What another replica's write does to one entry (through the store: bumps resourceVersion)."""
    lease = api.get(names.API_VERSION, names.KIND_TASK_LEASE, NS, leases.lease_name("agent-1", TASK))
    assert lease is not None
    for entry in lease["status"]["leases"]:
        if entry.get("leaseRef") == lease_ref:
            entry.update(fields)
    api.put(lease)


async def renew(h: Harness, agent: Any, credential: str, lease_ref: str) -> Reply:
    return await h.call(
        agent, "POST", f"/v1/credentials/{credential}/renew", {"task": TASK, "leaseRef": lease_ref}
    )


# --- github-app across two replicas: the finding as it happens ---------------------------------------
def github_replica(api: KubeApi, cluster: Any, pod: str) -> KubeHarness:
    """A broker whose github-app provider is the replica running in operator pod ``pod``."""
    made = api.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "namespace": OPERATOR_NS},
            "spec": {"containers": [{"name": "operator", "image": "taskcreds"}]},
        }
    )
    h = KubeHarness(api, cluster)
    provider = GitHubAppProvider(cluster, replica=Replica(OPERATOR_NS, pod, made["metadata"]["uid"]))
    h.providers["github-app"] = provider
    h.app[BROKER_KEY].providers["github-app"] = provider
    return h


async def test_a_superseded_github_token_is_not_renewed_again_on_either_replica(
    github: FakeGitHub, tmp_path: Path
) -> None:
    app = github.add_app(
        "12345", installation_id="678", repositories=["repo"], permissions={"contents": "write"}
    )
    async with stand_in(tmp_path) as (api, cluster):
        a, b = github_replica(api, cluster, "op-a"), github_replica(api, cluster, "op-b")
        a.put_sources()
        api.put(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "gh", "namespace": NS},
                "data": {"key": base64.b64encode(app.private_key_pem.encode()).decode()},
            }
        )
        api.put(
            {
                "apiVersion": names.API_VERSION,
                **source(
                    "gh",
                    "github-app",
                    githubApp={
                        "apiURL": github.url,
                        "appId": "12345",
                        "installationId": "678",
                        "privateKeySecretRef": {"name": "gh", "key": "key"},
                        "repositories": ["repo"],
                        "permissions": {"contents": "write"},
                    },
                ),
            }
        )
        for h in (a, b):
            await h.start()
        try:
            pod = a.add_pod("agent-1", credentials="gh")
            first = await a.issue(a.agent(pod))
            assert first.status == 200, first.doc
            old_ref = first.doc["credentials"][0]["leaseRef"]
            on_b = b.agent(pod)
            renewed = await renew(b, on_b, "gh", old_ref)
            assert renewed.status == 200, renewed.doc
            old = next(e for e in lease_entries(api) if e["leaseRef"] == old_ref)
            assert old.get("supersededAt") and not old.get("revokedAt"), "B cannot revoke A's token"
            minted, entries_before = len(github.tokens), lease_entries(api)
            assert minted == 2

            for who, h, agent in (
                ("op-b again", b, on_b),
                ("op-b again", b, on_b),
                ("op-a", a, a.agent(pod)),
            ):
                refused = await renew(h, agent, "gh", old_ref)
                assert (refused.status, refused.code) == (404, "not_found"), (who, refused.doc)
                assert "already replaced by a renewal" in refused.doc["error"]["message"], who
                assert len(github.tokens) == minted, f"{who}: a token was minted at GitHub"
                assert lease_entries(api) == entries_before, f"{who}: the TaskLease changed"

            # the replacement itself renews as before (the check refuses only what is not active)
            again = await renew(b, on_b, "gh", renewed.doc["leaseRef"])
            assert again.status == 200, again.doc
            # a github-app renewal always mints a new token (never the same value again)
            assert again.doc["leaseRef"] != renewed.doc["leaseRef"] and len(github.tokens) == minted + 1
        finally:
            for h in (a, b):
                await h.close()
                await h.providers["github-app"].aclose()


# --- every state of the entry, on one replica with a counting jwt provider --------------------------
@pytest.fixture
async def jwt_broker(tmp_path: Path) -> AsyncIterator[tuple[KubeHarness, Counting]]:
    async with stand_in(tmp_path) as (api, cluster):
        h = KubeHarness(api, cluster)
        h.put_sources()
        counting = Counting(h.providers["jwt"])
        h.app[BROKER_KEY].providers["jwt"] = counting
        await h.start()
        try:
            yield h, counting
        finally:
            await h.close()


#: case -> (what the entry carries, or None for a leaseRef that names no entry; status; message part)
STATES: dict[str, tuple[dict[str, Any] | None, int, str]] = {
    "superseded on another replica": ({"supersededAt": "2026-11-29T10:00:00Z"}, 404, "already replaced"),
    "revoked": (
        {"revokedAt": "2026-11-29T10:00:00Z", "revokeReason": "superseded"},
        404,
        "revoked: superseded",
    ),
    "still pending": ({"pending": True}, 404, "no active lease"),
    "unknown leaseRef": (None, 404, "no active lease"),
    "active (control)": ({}, 200, ""),
}


@pytest.mark.parametrize("case", list(STATES))
async def test_renewing_a_lease_that_is_not_active_is_refused_and_mints_nothing(
    jwt_broker: tuple[KubeHarness, Counting], case: str
) -> None:
    h, counting = jwt_broker
    fields, status, words = STATES[case]
    agent = h.agent(h.add_pod("agent-1", credentials="api"))
    issued = await h.issue(agent)
    assert issued.status == 200, issued.doc
    ref = issued.doc["credentials"][0]["leaseRef"]
    if fields is None:
        ref = "jwt:not-a-lease-of-this-pod"
    elif fields:
        edit_entry(h.kube_api, ref, **fields)
    before, minted = lease_entries(h.kube_api), counting.minted

    reply = await renew(h, agent, "api", ref)

    assert reply.status == status, reply.doc
    if status == 200:
        assert counting.minted == minted + 1 and reply.doc["leaseRef"] != ref
        return
    assert reply.code == "not_found" and words in reply.doc["error"]["message"], reply.doc
    assert counting.minted == minted, "the source was asked for a credential"
    assert lease_entries(h.kube_api) == before, "the TaskLease changed (a pending entry left behind?)"
    text = generate_latest(h.metrics.registry).decode()
    assert 'taskcreds_credentials_issued_total{provider="jwt"} 1.0' in text


class SupersedeBeforeThePendingWrite:
    """The cluster, except that another replica's renewal of the same lease lands between this
    broker's read of the TaskLease and its pending-entry write (a resourceVersion conflict)."""

    def __init__(self, inner: Any, api: KubeApi, lease_ref: str) -> None:
        self.inner, self.api, self.lease_ref, self.fired = inner, api, lease_ref, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def patch_task_lease(self, namespace: str, name: str, body: dict[str, Any], **kw: Any) -> Any:
        if not self.fired:
            self.fired = True
            edit_entry(self.api, self.lease_ref, supersededAt="2026-11-29T10:00:00Z")
        return await self.inner.patch_task_lease(namespace, name, body, **kw)


async def test_a_lease_superseded_while_the_renewal_writes_its_pending_entry_is_refused(
    jwt_broker: tuple[KubeHarness, Counting],
) -> None:
    h, counting = jwt_broker
    agent = h.agent(h.add_pod("agent-1", credentials="api"))
    issued = await h.issue(agent)
    ref = issued.doc["credentials"][0]["leaseRef"]
    broker = h.app[BROKER_KEY]
    racing = SupersedeBeforeThePendingWrite(broker.cluster, h.kube_api, ref)
    broker.cluster = racing

    reply = await renew(h, agent, "api", ref)

    assert racing.fired, "the race was not staged"
    assert (reply.status, reply.code) == (404, "not_found"), reply.doc
    assert "already replaced" in reply.doc["error"]["message"]
    assert counting.minted == 1, "only the first issue reached the source"
    entries = lease_entries(h.kube_api)
    assert [e["leaseRef"] for e in entries] == [ref] and not any(e.get("pending") for e in entries)
