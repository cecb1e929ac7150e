"""Revocation goes to the server that issued a credential, not wherever its source points now.

A CredentialSource's ``vault.address`` moved mid-task (a migration): the new server does not know
the task's token and would answer "invalid accessor", which must not count as revoked. Real broker,
two real OpenBao servers (plain and TLS), the in-memory cluster.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import hvac.exceptions
import pytest
from taskcreds.operator.leases import lease_name, revoke_task, sweep_leases

from taskcreds import names
from tests.openbao import OPERATOR_POLICY, OpenBao
from tests.openbao import openbao as openbao  # noqa: F401  (fixture)
from tests.openbao import openbao_tls as openbao_tls  # noqa: F401  (fixture)
from tests.operator.test_broker_harness import NS, Harness, source

OP_TOKEN = "op-token-revoke-target"
LEASE = lease_name("agent-1", "fix-42")


def seed(bao: OpenBao) -> None:
    root = bao.client()
    root.sys.create_or_update_policy("taskcreds-operator", OPERATOR_POLICY)
    root.sys.create_or_update_policy("repo-read", 'path "secret/data/*" { capabilities = ["read"] }')
    try:
        root.auth.token.create(id=OP_TOKEN, policies=["taskcreds-operator", "repo-read"], ttl="1h", no_parent=True)
    except hvac.exceptions.InvalidRequest:  # seeded by an earlier test on this (shared) server
        pass


def vault_source(bao: OpenBao, *, ca: bool) -> dict[str, Any]:
    vault: dict[str, Any] = {
        "address": bao.address, "mode": "token", "policies": ["repo-read"],
        "auth": {"method": "token", "tokenSecretRef": {"name": "op", "key": "token"}},
    }
    if ca:
        vault["caSecretRef"] = {"name": "ca", "key": "ca.crt"}
    return source("bao", "vault", vault=vault)


def alive_at(bao: OpenBao, token: str) -> bool:
    try:
        # looked up by root: task tokens carry no default policy, so they cannot look themselves up
        return int(bao.client().auth.token.lookup(token)["data"]["ttl"]) > 0
    except hvac.exceptions.Forbidden:
        return False


def entries(h: Harness) -> list[dict[str, Any]]:
    return h.cluster.task_leases[(NS, LEASE)]["status"]["leases"]


@pytest.fixture
async def moved(openbao: OpenBao, openbao_tls: OpenBao) -> Any:
    """A task holding a token from ``openbao``; then its source is moved to ``openbao_tls``."""
    openbao.on_start(seed)
    openbao_tls.on_start(seed)
    h = Harness()
    h.cluster.put_secret(NS, "op", {"token": OP_TOKEN})
    h.cluster.put_secret(NS, "ca", {"ca.crt": openbao_tls.ca_pem})
    h.cluster.put_source(vault_source(openbao, ca=False))
    await h.start()
    pod = h.add_pod("agent-1", credentials="bao")
    reply = await h.issue(h.agent(pod), ttl="30m")
    assert reply.status == 200, reply.doc
    cred = reply.doc["credentials"][0]
    assert entries(h)[0]["target"] == {"address": openbao.address, "mount": "auth/token"}
    h.cluster.put_source(vault_source(openbao_tls, ca=True))
    yield h, pod, cred
    await h.close()
    await h.providers["vault"].aclose()


async def test_task_end_after_the_source_moved_fails_visibly_then_revokes_once_restored(
    openbao: OpenBao, moved: Any
) -> None:
    h, pod, cred = moved
    token = cred["files"]["token"]
    h.cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "completed")
    out = await revoke_task(h.cluster, h.providers, NS, LEASE, "completed", metrics=None)
    assert not out.done and out.revoked == [] and out.failed == ["bao"], "never reported revoked"
    entry = entries(h)[0]
    assert not entry.get("revokedAt")
    assert f"issued by {openbao.address} but the source now points at https://" in entry["lastError"]
    assert h.cluster.task_leases[(NS, LEASE)]["status"]["phase"] == "Revoking"
    assert alive_at(openbao, token)

    h.cluster.put_source(vault_source(openbao, ca=False))  # someone restores the address
    await sweep_leases(h.cluster, h.providers, metrics=None)
    assert not alive_at(openbao, token)
    entry = entries(h)[0]
    assert entry["revokedAt"] and "notRevocable" not in entry
    assert h.cluster.task_leases[(NS, LEASE)]["status"]["phase"] == "Revoked"


async def test_once_expired_it_is_recorded_not_revocable_with_the_reason(moved: Any) -> None:
    h, pod, cred = moved
    h.cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "completed")
    later = datetime.now(UTC) + timedelta(minutes=31)
    out = await revoke_task(h.cluster, h.providers, NS, LEASE, "completed", metrics=None, now=lambda: later)
    assert out.done and out.not_revocable == ["bao"]
    entry = entries(h)[0]
    assert entry["notRevocable"].startswith(f"expired at {entry['expiresAt']} before it could be revoked: ")
    assert "the source now points at" in entry["notRevocable"]


async def test_renew_after_the_source_moved_keeps_the_old_lease_recorded_as_live(
    openbao: OpenBao, openbao_tls: OpenBao, moved: Any
) -> None:
    h, pod, cred = moved
    reply = await h.call(h.agent(pod), "POST", "/v1/credentials/bao/renew",
                         {"task": "fix-42", "leaseRef": cred["leaseRef"]})
    assert reply.status == 200, reply.doc
    assert alive_at(openbao_tls, reply.doc["files"]["token"])
    old, new = entries(h)
    assert old["leaseRef"] == cred["leaseRef"] and old["supersededAt"] and not old.get("revokedAt")
    assert new["target"]["address"] == openbao_tls.address
    assert alive_at(openbao, cred["files"]["token"])  # not silently left: recorded and retried
    await sweep_leases(h.cluster, h.providers, metrics=None)
    old = entries(h)[0]
    assert not old.get("revokedAt") and "the source now points at" in old["lastError"]
