"""Leases issued before an upgrade, from namespaced sources the tenant rules now refuse
(sources.tenant_refusal): the refusal blocks issue and renew, never the revocation of what exists.

A jwt revocation only deny-lists the jti, so it is done. A vault revocation would log in at the
tenant-chosen address (as the operator itself with auth.method kubernetes, or over plain http): it is
recorded not revocable at once, saying why and what to do, and the provider is never called.
"""

from __future__ import annotations

from typing import Any

import pytest
from taskcreds.operator import leases
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import Issued, IssueRequest

from tests.operator.test_broker_harness import NS, Harness, source
from tests.operator.test_leases import NOW, nm, pod, with_agent_pod


class SpyVault:
    """Records each revoke call (a real call would log in to Vault at the source's address)."""

    name = "vault"

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def issue(self, request: IssueRequest) -> Issued:  # pragma: no cover - not used here
        raise NotImplementedError

    async def renew(self, lease_ref: str, request: IssueRequest) -> Issued:  # pragma: no cover
        raise NotImplementedError

    async def revoke(
        self, lease_ref: str, source_spec: dict[str, Any], source_namespace: str | None, **_: Any
    ) -> None:
        self.calls.append(lease_ref)


def _vault(address: str, auth: dict[str, Any]) -> dict[str, Any]:
    return {"address": address, "auth": auth, "mode": "token", "policies": ["read"]}


TOKEN_AUTH = {"method": "token", "tokenSecretRef": {"name": "vault-login", "key": "token"}}
KUBE_AUTH = {"method": "kubernetes", "kubernetes": {"role": "taskcreds"}}


async def test_a_jwt_lease_of_an_old_audience_is_still_revoked_and_deny_listed() -> None:
    h = Harness()
    h.put_sources()
    await h.start()
    try:
        pod_ = h.add_pod("agent-1", credentials="api")
        reply = await h.issue(h.agent(pod_), ttl="30m")
        jti = reply.doc["credentials"][0]["leaseRef"].split(":")[1]
        # after the upgrade: the source as written before it (an audience without 'team-a/')
        h.cluster.put_source(source("api", "jwt", jwt={"audience": ["my-api"]}))
        name = leases.lease_name("agent-1", "fix-42")
        outcome = await leases.revoke_task(h.cluster, h.providers, NS, name, "completed", metrics=None)
        stored = h.cluster.task_leases[(NS, name)]["status"]
        assert outcome.done and outcome.revoked == ["api"]
        assert stored["phase"] == "Revoked"
        assert stored["leases"][0]["revokedAt"] and "notRevocable" not in stored["leases"][0]
        assert h.providers["jwt"].is_revoked(jti)
        # issuing from it stays refused
        again = await h.issue(h.agent(h.add_pod("agent-2", credentials="api")), ttl="30m")
        assert again.status != 200 and "team-a/" in str(again.doc)
    finally:
        await h.close()


@pytest.mark.parametrize(
    ("case", "vault", "refused", "says"),
    [
        (
            "kubernetes auth: the operator's identity",
            _vault("https://vault.team-a:8200", KUBE_AUTH),
            True,
            "as the operator itself",
        ),
        (
            "plain http to a non-loopback address",
            _vault("http://vault.team-a:8200", TOKEN_AUTH),
            True,
            "must use https://",
        ),
        ("a source the rules accept (control)", _vault("https://vault.team-a:8200", TOKEN_AUTH), False, ""),
    ],
)
async def test_a_vault_lease_of_a_refused_source_is_not_revocable_without_any_login(
    case: str, vault: dict[str, Any], refused: bool, says: str
) -> None:
    cluster = with_agent_pod(MemCluster())
    cluster.put_source(source("db", "vault", vault=vault))
    issued = Issued(
        files={"token": "hvs.value"},
        lease_ref="accessor-1",
        issued_at=NOW,
        expires_at=NOW.replace(year=NOW.year + 1),
        target={"address": vault["address"], "mount": "auth/token"},
    )
    entry = leases.lease_entry(
        "db", "vault", {"kind": "CredentialSource", "name": "db", "namespace": NS}, issued
    )
    await leases.record_issued(cluster, pod(cluster), "fix-42", [entry])
    spy = SpyVault()
    outcome = await leases.revoke_task(cluster, {"vault": spy}, NS, nm(cluster), "completed", metrics=None)
    stored = cluster.task_leases[(NS, nm(cluster))]["status"]
    assert outcome.done and stored["phase"] == "Revoked", case
    if not refused:
        assert spy.calls == ["accessor-1"] and "notRevocable" not in stored["leases"][0]
        return
    assert spy.calls == [], "no login at a refused source's address"
    why = stored["leases"][0]["notRevocable"]
    assert says in why and "accessor-1" in why and vault["address"] in why, why
    assert "hvs.value" not in str(stored)


class SpyProvider(SpyVault):
    """Any provider whose revocation sends nothing to a tenant-chosen server."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


@pytest.mark.parametrize(
    ("provider", "spec"),
    [
        ("kubernetes-token", {"kubernetesToken": {"serviceAccount": "deployer"}}),
        (
            "github-app",
            {"githubApp": {"apiURL": "http://github.team-a:8080", "appID": 1, "installationID": 2}},
        ),
    ],
)
async def test_other_leases_of_refused_sources_are_still_revoked(provider: str, spec: dict[str, Any]) -> None:
    """kubernetes-token deletes the binding Secret the operator made; github-app sends the token back
    to the server that minted it: neither gives a tenant anything, so both are revoked as usual."""
    cluster = with_agent_pod(MemCluster())
    cluster.put_source(source("cred", provider, **spec))
    issued = Issued(
        files={"token": "t"}, lease_ref="ref-1", issued_at=NOW, expires_at=NOW.replace(year=NOW.year + 1)
    )
    entry = leases.lease_entry(
        "cred", provider, {"kind": "CredentialSource", "name": "cred", "namespace": NS}, issued
    )
    await leases.record_issued(cluster, pod(cluster), "fix-42", [entry])
    spy = SpyProvider(provider)
    outcome = await leases.revoke_task(cluster, {provider: spy}, NS, nm(cluster), "completed", metrics=None)
    stored = cluster.task_leases[(NS, nm(cluster))]["status"]
    assert outcome.done and spy.calls == ["ref-1"]
    assert "notRevocable" not in stored["leases"][0]
