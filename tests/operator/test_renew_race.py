"""A renewal must never answer 200 with a lease someone revoked or superseded while it ran.

The reviewer's race: the sweep lists the TaskLease, then revokes an entry past its granted end and
writes ``revokedAt`` — between the provider's answer to a renewal and the broker recording it. Or a
second replica's renewal of the same lease lands first and marks it superseded. Before the fix the
record step updated the dead entry anyway and the sidecar got a value that no longer worked (or two
live replacements of one lease). Now the record refuses (``leases.ReplacedGone``): a new lease the
renewal produced is revoked at its source, and the answer is 404 not_found, so the sidecar issues
anew at once (sidecar/runner.py). Real broker over mTLS; the real vault provider against a small
Vault fake, the real github-app provider against the GitHub fake; the sweep is ``revoke_expired``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from taskcreds.operator.broker.server import BROKER_KEY
from taskcreds.operator.leases import lease_name, revoke_expired

from tests.fakes.github import FakeGitHub
from tests.fakes.github import github as github  # noqa: F401  (fixture)
from tests.operator.test_broker_harness import NS, Harness, source
from tests.operator.test_lifetime_cap import at, at_github, issue_github, ts
from tests.operator.test_lifetime_cap import replicas as replicas  # noqa: F401  (fixture)
from tests.operator.test_provider_vault_review import Server

OPERATOR_NS = "taskcreds-system"
TTL = 30  # seconds: the lease's life at Vault and the grant (the sweep runs just after it)


class LeasingVault:
    """Dynamic leases of TTL seconds, renewable while not revoked; says which are still live."""

    def __init__(self) -> None:
        self.issued: list[str] = []
        self.revoked: set[str] = set()
        self.server = Server(self.answer)

    def live(self) -> list[str]:
        return [lease for lease in self.issued if lease not in self.revoked]

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], Any]:
        if path == "/v1/auth/token/lookup-self":
            return 200, {}, {"data": {"ttl": 0}}
        if method == "GET" and path == "/v1/database/creds/app":
            lease = f"database/creds/app/lease-{len(self.issued) + 1}"
            self.issued.append(lease)
            return 200, {}, {"lease_id": lease, "renewable": True, "lease_duration": TTL,
                             "data": {"username": "v-app", "password": f"pw-canary-{len(self.issued)}"}}
        if method == "PUT" and path == "/v1/sys/leases/renew":
            doc = json.loads(body)
            if doc["lease_id"] in self.revoked:
                return 400, {}, {"errors": ["lease not found"]}
            return 200, {}, {"lease_id": doc["lease_id"], "renewable": True,
                             "lease_duration": int(doc.get("increment") or TTL)}
        if method == "PUT" and path == "/v1/sys/leases/revoke":
            self.revoked.add(json.loads(body)["lease_id"])
            return 204, {}, None
        return 404, {}, {"errors": ["no handler"]}


@pytest.fixture
async def vault_world() -> AsyncIterator[tuple[Harness, LeasingVault]]:
    vault = LeasingVault()
    h = Harness()
    h.cluster.put_secret(OPERATOR_NS, "vault-op", {"token": "op-token-canary-77"})
    h.cluster.put_source(source("db", "vault", namespace=None, max_ttl="1h", default_ttl="30s", vault={
        "address": vault.server.url, "mode": "dynamic", "path": "database/creds/app",
        "auth": {"method": "token", "tokenSecretRef": {"name": "vault-op", "key": "token"}}}))
    await h.start()
    try:
        yield h, vault
    finally:
        await h.close()
        vault.server.close()


def between_answer_and_record(h: Harness, provider: str, meanwhile: Callable[[], Awaitable[None]]) -> None:
    """The broker's provider renews for real, then ``meanwhile`` runs before the broker records."""
    held = h.app[BROKER_KEY].providers[provider]
    renew = held.renew

    async def racing(lease_ref: str, request: Any) -> Any:
        answer = await renew(lease_ref, request)
        await meanwhile()
        return answer

    held.renew = racing


def entries(cluster: Any) -> list[dict[str, Any]]:
    return cluster.task_leases[(NS, lease_name("agent-1", "fix-42"))]["status"]["leases"]


async def renew(h: Harness, agent: Any, name: str, lease_ref: str, ttl: str) -> Any:
    return await h.call(agent, "POST", f"/v1/credentials/{name}/renew",
                        {"task": "fix-42", "leaseRef": lease_ref, "ttl": ttl})


async def test_a_vault_extension_the_sweep_revoked_meanwhile_is_refused(
    vault_world: tuple[Harness, LeasingVault],
) -> None:
    h, vault = vault_world
    agent = h.agent(h.add_pod("agent-1", credentials="db"))
    reply = await h.issue(agent, ttl=f"{TTL}s")
    assert reply.status == 200, reply.doc
    (cred,) = reply.doc["credentials"]
    swept: list[int] = []

    async def sweep() -> None:  # past the old granted end: the sweep revokes the lease at Vault
        swept.append(await revoke_expired(h.cluster, h.providers, metrics=None, now=at(1, ts(cred["expiresAt"]))))

    between_answer_and_record(h, "vault", sweep)
    refused = await renew(h, agent, "db", cred["leaseRef"], f"{TTL}s")

    assert swept == [1]
    assert (refused.status, refused.code) == (404, "not_found"), refused.doc
    message = refused.doc["error"]["message"]
    assert "revoked (expired) while renewing" in message and "issue a new credential" in message, message
    assert "canary" not in refused.raw.decode()
    assert vault.live() == [], "nothing live at Vault"
    (entry,) = entries(h.cluster)
    assert entry["leaseRef"] == cred["leaseRef"] and entry["revokeReason"] == "expired", entry
    assert ts(entry["expiresAt"]) == ts(cred["expiresAt"]), "the refused extension was not recorded"


async def test_a_github_renewal_whose_lease_the_sweep_revoked_meanwhile_revokes_its_new_token(
    github: FakeGitHub, replicas: Any,  # noqa: F811
) -> None:
    cluster, a, _ = replicas
    cred = await issue_github(a)
    agent = a.agent(cluster.pods[(NS, "agent-1")])

    async def sweep() -> None:
        await revoke_expired(cluster, a.providers, metrics=None, now=at(1, ts(cred["expiresAt"])))

    between_answer_and_record(a, "github-app", sweep)
    refused = await renew(a, agent, "gh", cred["leaseRef"], "300s")

    assert (refused.status, refused.code) == (404, "not_found"), refused.doc
    assert "while renewing" in refused.doc["error"]["message"]
    assert len(github.tokens) == 2, "the renewal did mint a replacement"
    assert github.alive_tokens() == [], "the replacement was revoked, the old one too: nothing works at GitHub"
    assert await at_github(github, cred["files"]["token"]) == 401
    assert [e["leaseRef"] for e in entries(cluster) if "revokedAt" not in e] == [], entries(cluster)


async def test_two_replicas_renewing_one_token_leave_one_live_replacement(
    github: FakeGitHub, replicas: Any,  # noqa: F811
) -> None:
    """A's renewal of T1 answers; before A records, B's renewal of T1 lands (T1 superseded, T3
    minted). A's record is refused: its T2 is revoked and A answers 404; B's T3 is the one live lease."""
    cluster, a, b = replicas
    cred = await issue_github(a)
    pod = cluster.pods[(NS, "agent-1")]
    on_a, on_b = a.agent(pod), b.agent(pod)
    on_b_reply: list[Any] = []

    async def b_renews() -> None:
        on_b_reply.append(await renew(b, on_b, "gh", cred["leaseRef"], "300s"))

    between_answer_and_record(a, "github-app", b_renews)
    refused = await renew(a, on_a, "gh", cred["leaseRef"], "300s")

    (won,) = on_b_reply
    assert won.status == 200, won.doc
    assert (refused.status, refused.code) == (404, "not_found"), refused.doc
    assert "superseded by another renewal while renewing" in refused.doc["error"]["message"]
    assert len(github.tokens) == 3
    assert [t.token for t in github.alive_tokens()] == [won.doc["files"]["token"]], "only B's replacement works"
    live = [e for e in entries(cluster) if "revokedAt" not in e and "supersededAt" not in e]
    assert [e["leaseRef"] for e in live] == [won.doc["leaseRef"]], entries(cluster)
    # T1: A revoked it while renewing; the entry B marked superseded stays for A's sweep to settle
    await revoke_expired(cluster, a.providers, metrics=None, now=at(1, ts(won.doc["expiresAt"]) - timedelta(seconds=2)))
    assert await at_github(github, cred["files"]["token"]) == 401
