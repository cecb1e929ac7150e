"""A Vault dynamic lease the broker could neither hand out nor give back is recorded, then revoked.

A lease longer than the task may hold is shortened by a renewal, or revoked. When both fail (Vault
5xx, a timeout, a policy without sys/leases/renew and revoke) the lease — a database user — lives at
Vault for the role's TTL. The issue still fails, but the lease goes on the TaskLease (granted nothing:
``expiresAt`` is its issue time, ``sourceExpiresAt`` Vault's end), so the sweep keeps revoking it
instead of nobody knowing. Real broker over mTLS; Vault is the review's small fake ``Server``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from taskcreds.operator.broker.server import BROKER_KEY
from taskcreds.operator.leases import lease_name, revoke_expired

from tests.operator.test_broker_harness import NS, Harness, source
from tests.operator.test_provider_vault_review import Server

LEASE = "database/creds/long/lease-1"  # the first; the n-th is lease-n
OPERATOR_NS = "taskcreds-system"


class FlakyVault:
    """One dynamic read answering a 1 h renewable lease; renew and revoke fail with 503 until
    ``healed``. Counts every lease it handed out and every revoke that worked."""

    def __init__(self) -> None:
        self.healed = False
        self.leases = 0
        self.revoked: list[str] = []
        self.server = Server(self.answer)

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], Any]:
        if path == "/v1/auth/token/lookup-self":
            return 200, {}, {"data": {"ttl": 0}}
        if method == "GET" and path == "/v1/database/creds/long":
            self.leases += 1
            return 200, {}, {"lease_id": f"{LEASE[:-2]}-{self.leases}", "renewable": True, "lease_duration": 3600,
                             "data": {"username": "v-long-canary", "password": "pw-canary-5d1e"}}
        if path in ("/v1/sys/leases/renew", "/v1/sys/leases/revoke") and not self.healed:
            return 503, {}, {"errors": ["Vault is sealed"]}
        if method == "PUT" and path == "/v1/sys/leases/revoke":
            self.revoked.append(json.loads(body)["lease_id"])
            return 204, {}, None
        return 404, {}, {"errors": ["no handler"]}


#: why the lease cannot be handed out: longer than the task may hold (60 s asked of a 1 h lease),
#: or its answer lacks a key spec.vault.fileMap names (review of 5c72a58: that path forgot it too)
WHY = {
    "too long to hand out": ({}, "60s"),
    "a fileMap key missing": ({"fileMap": {"username": "PGUSER", "dbname": "PGDATABASE"}}, "1h"),
}


@pytest.fixture(params=list(WHY))
async def world(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Harness, FlakyVault, str]]:
    vault = FlakyVault()
    h = Harness()
    h.cluster.put_secret(OPERATOR_NS, "vault-op", {"token": "op-token-canary-77"})
    h.cluster.put_source(source("db", "vault", namespace=None, max_ttl="1h", default_ttl="1m", vault={
        "address": vault.server.url, "mode": "dynamic", "path": "database/creds/long",
        "auth": {"method": "token", "tokenSecretRef": {"name": "vault-op", "key": "token"}},
        **WHY[request.param][0]}))
    await h.start()
    try:
        yield h, vault, WHY[request.param][1]
    finally:
        await h.close()
        vault.server.close()


def entries(h: Harness) -> list[dict[str, Any]]:
    return h.cluster.task_leases[(NS, lease_name("agent-1", "fix-42"))]["status"]["leases"]


async def test_a_lease_neither_shortened_nor_revoked_is_recorded_and_the_sweep_revokes_it(
    world: tuple[Harness, FlakyVault, str],
) -> None:
    h, vault, ttl = world
    reply = await h.issue(h.agent(h.add_pod("agent-1", credentials="db")), ttl=ttl)
    assert (reply.status, reply.code) == (502, "provider_error"), reply.doc
    message = reply.doc["error"]["message"]
    assert "nothing was issued" in message and "retries revoking" in message, message
    assert "canary" not in reply.raw.decode(), "no value in the refusal"
    assert vault.leases == 1

    (entry,) = entries(h)
    assert entry["leaseRef"] == LEASE and "pending" not in entry and "revokedAt" not in entry, entry
    source_end = datetime.fromisoformat(entry["sourceExpiresAt"].replace("Z", "+00:00"))
    assert source_end - datetime.now(UTC) > timedelta(minutes=59), "Vault's own end, kept for the retries"
    assert "canary" not in json.dumps(entry)

    # the sweep, while Vault still refuses: retried, still unrevoked
    soon = lambda: datetime.now(UTC) + timedelta(seconds=2)  # noqa: E731
    await revoke_expired(h.cluster, h.providers, metrics=None, now=soon)
    (entry,) = entries(h)
    assert "revokedAt" not in entry and "Vault is sealed" in entry["lastError"], entry
    assert vault.revoked == []

    vault.healed = True
    await revoke_expired(h.cluster, h.providers, metrics=None, now=soon)
    (entry,) = entries(h)
    assert entry["revokedAt"] and "notRevocable" not in entry, entry
    assert vault.revoked == [LEASE], "the lease was revoked at Vault"


async def test_a_full_live_limit_of_leases_granted_nothing_says_so(
    world: tuple[Harness, FlakyVault, str],
) -> None:
    """Review (LOW): with max_live_leases of such leases waiting for revocation, the next issue's
    429 said only "already has 8 live leases ... renew one" — which cannot be done for them."""
    h, vault, ttl = world
    limit = h.app[BROKER_KEY].settings.max_live_leases
    agent = h.agent(h.add_pod("agent-1", credentials="db"))
    for _ in range(limit):
        reply = await h.issue(agent, ttl=ttl)
        assert (reply.status, reply.code) == (502, "provider_error"), reply.doc
    # the sweep tries (Vault still sealed): each entry now carries the provider's last error
    await revoke_expired(h.cluster, h.providers, metrics=None, now=lambda: datetime.now(UTC) + timedelta(seconds=2))
    assert all("Vault is sealed" in e["lastError"] for e in entries(h)), entries(h)

    refused = await h.issue(agent, ttl=ttl)
    assert (refused.status, refused.code) == (429, "rate_limited"), refused.doc
    message = refused.doc["error"]["message"]
    assert f"already has {limit} live leases" in message, message
    assert f"{limit} of them were granted nothing and wait to be revoked" in message, message
    assert "cannot be renewed" in message and "renew one" not in message, message
    assert "last error:" in message and "Vault is sealed" in message, message
    assert "canary" not in refused.raw.decode()
    assert vault.leases == limit, "nothing was issued"
