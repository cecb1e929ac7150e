"""A credential's life at its source must not exceed what the task was granted.

GitHub installation tokens live 1 h whatever was asked, a Kubernetes TokenRequest 10 minutes at least.
Both are revocable, so the broker answers (and records as ``expiresAt``) the end of the granted TTL,
records the source's own expiry as ``sourceExpiresAt``, and the sweep (``revoke_expired``) kills the
value at its source once the granted end passes — retrying a failure until the source's own end.
A static value, which nobody can cut, keeps reporting its real expiry.

Real parts: the broker over SPIFFE mTLS, the github-app provider against the GitHub fake, the
kubernetes-token provider against the Kubernetes API stand-in (TokenRequest bound to a Secret,
TokenReview, the chart's CRDs pruning what their schema lacks). Time after the granted end is the
sweep's ``now``; the sources run on the real clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from taskcreds.operator import leases
from taskcreds.operator.broker.server import BROKER_KEY
from taskcreds.operator.leases import lease_name, revoke_expired
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import Issued

from taskcreds import names
from tests.fakes.github import FakeGitHub
from tests.fakes.github import github as github  # noqa: F401  (fixture)
from tests.operator.test_broker_harness import NS, Harness, source
from tests.operator.test_broker_harness import harness as harness  # noqa: F401  (fixture)
from tests.operator.test_broker_scenario import KubeHarness, kube_world
from tests.operator.test_replicas_github import replica
from tests.operator.test_replicas_github import status_at_github as at_github  # 200 live, 401 revoked

OPERATOR_NS = "taskcreds-system"
AUD = "https://deploy.example"
GRANTED = 300  # seconds: the TTL every test asks for (leases.MIN_CAPPED_GRANT: a grant that is cut)


def at(seconds: float, since: datetime) -> Any:
    """A clock for the sweep: ``seconds`` after ``since``."""
    return lambda: since + timedelta(seconds=seconds)


def ts(text: str) -> datetime:
    value = leases.parse_timestamp(text)
    assert value is not None, text
    return value


# --- pure: what the task may hold -------------------------------------------------------------------
T0 = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)


def issued(expires_in: float, *, static: bool = False, issued_at: datetime = T0) -> Issued:
    return Issued(files={"t": "v"}, lease_ref="ref", issued_at=issued_at,
                  expires_at=T0 + timedelta(seconds=expires_in), static=static)


#: case -> (issued, ttl, asked_at, expected expires_at offset, expected source end offset or None)
CAPS = {
    "a 2 s grant of GitHub's 1 h is raised to the 5 min floor": (issued(3600), 2, T0, 300, 3600),
    "a 2 s grant of a TokenRequest's 10 min is raised to the 5 min floor": (issued(600), 2, T0, 300, 600),
    "a source that honours a 2 s TTL gets no floor (jwt, vault)": (issued(2), 2, T0, 2, None),
    "the floor never passes the source's own end: not cut": (issued(200), 2, T0, 200, None),
    "a renewal's floor runs from when it was asked": (
        issued(3600, issued_at=T0 - timedelta(minutes=5)), 2, T0, 300, 3600),
    "GitHub's 1 h cut to a 5 min grant": (issued(3600), 300, T0, 300, 3600),
    "TokenRequest's 10 min floor cut to 5 min": (issued(600), 300, T0, 300, 600),
    "a grant above the floor is the grant": (issued(3600), 900, T0, 900, 3600),
    "a source that honours the TTL is left alone": (issued(300), 300, T0, 300, None),
    "a source that ends sooner (maxTTL of Vault's mount) is left alone": (issued(30), 300, T0, 30, None),
    "a second of rounding is no cut": (issued(301), 300, T0, 301, None),
    "two seconds over are cut": (issued(302), 300, T0, 300, 302),
    "a static value reports its truth, even 1 h": (issued(3600, static=True), 300, T0, 3600, None),
    "a renewal keeps its first issuedAt: granted from when it was asked": (
        issued(3600, issued_at=T0 - timedelta(hours=2)), 300, T0, 300, 3600),
    "asked at a fraction of a second: never above the grant": (
        issued(3600), 300, T0 + timedelta(microseconds=900_000), 300, 3600),
}


def test_the_floor_given_by_the_broker_is_used_as_given() -> None:
    """The broker passes min(MIN_CAPPED_GRANT, maxTTL): a 3 s maxTTL is never exceeded."""
    capped, end = leases.cap_to_grant(issued(3600), 2, T0, floor=timedelta(seconds=3))
    assert (capped.expires_at, end) == (T0 + timedelta(seconds=3), T0 + timedelta(seconds=3600))
    assert leases.MIN_CAPPED_GRANT == timedelta(minutes=5)


@pytest.mark.parametrize("case", list(CAPS))
def test_what_the_task_may_hold(case: str) -> None:
    given, ttl, asked_at, expires, source_end = CAPS[case]
    capped, end = leases.cap_to_grant(given, ttl, asked_at)
    assert capped.expires_at == T0 + timedelta(seconds=expires), case
    assert end == (None if source_end is None else T0 + timedelta(seconds=source_end)), case
    assert (capped.files, capped.lease_ref, capped.static) == (given.files, given.lease_ref, given.static)


# --- github-app: the GitHub fake, one replica or two ----------------------------------------------------
def github_source(github: FakeGitHub, cluster: MemCluster) -> None:
    app = github.add_app("12345", installation_id="678", repositories=["repo"], permissions={"contents": "write"})
    cluster.put_secret(NS, "gh", {"key": app.private_key_pem})
    cluster.put_source(source("gh", "github-app", max_ttl="1h", githubApp={
        "apiURL": github.url, "appId": "12345", "installationId": "678",
        "privateKeySecretRef": {"name": "gh", "key": "key"}, "repositories": ["repo"],
        "permissions": {"contents": "write"}}))


@pytest.fixture
async def replicas(github: FakeGitHub) -> AsyncIterator[tuple[MemCluster, Harness, Harness]]:  # noqa: F811
    cluster = MemCluster()
    github_source(github, cluster)
    a, b = replica(cluster, "op-a"), replica(cluster, "op-b")
    await a.start()
    await b.start()
    yield cluster, a, b
    for each in (a, b):
        await each.close()
        await each.providers["github-app"].aclose()



def entry_of(cluster: MemCluster, lease_ref: str) -> dict[str, Any]:
    lease = cluster.task_leases[(NS, lease_name("agent-1", "fix-42"))]
    (entry,) = [e for e in lease["status"]["leases"] if e["leaseRef"] == lease_ref]
    return entry


async def issue_github(h: Harness) -> dict[str, Any]:
    pod = h.add_pod("agent-1", credentials="gh")
    reply = await h.issue(h.agent(pod), ttl=f"{GRANTED}s")
    assert reply.status == 200, reply.doc
    return reply.doc["credentials"][0]


async def test_a_github_token_is_granted_its_ttl_and_cut_at_github_after_it(
    github: FakeGitHub, replicas: Any  # noqa: F811
) -> None:
    cluster, a, _ = replicas
    cred = await issue_github(a)
    token, issued_at, expires_at = cred["files"]["token"], ts(cred["issuedAt"]), ts(cred["expiresAt"])
    assert timedelta(seconds=GRANTED - 1) <= expires_at - issued_at <= timedelta(seconds=GRANTED)
    entry = entry_of(cluster, cred["leaseRef"])
    assert entry["expiresAt"] == cred["expiresAt"], "the TaskLease says what the sidecar was told"
    real = github.tokens[token].expires_at
    assert ts(entry["sourceExpiresAt"]) == real and real - issued_at >= timedelta(minutes=59)
    assert "sourceExpiresAt" not in cred, "the answer carries the granted end only"

    # a sweep before the granted end leaves it alone
    assert await revoke_expired(cluster, a.providers, metrics=None, now=at(-1, expires_at)) == 0
    assert await at_github(github, token) == 200

    # the first sweep after it revokes the token at GitHub
    assert await revoke_expired(cluster, a.providers, metrics=None, now=at(30, expires_at)) == 1
    assert await at_github(github, token) == 401
    entry = entry_of(cluster, cred["leaseRef"])
    assert entry["revokeReason"] == "expired" and entry["revokedAt"] and "notRevocable" not in entry


#: when the sweep runs (seconds after the granted end, or after the source's own end) -> what it records
FAILING_REVOKES = {
    "between the granted end and GitHub's: retried": ("granted", 30, "retried"),
    "just before GitHub's own end: retried": ("source", -5, "retried"),
    "after GitHub's own end: not revocable, saying when it died": ("source", 5, "not_revocable"),
}


@pytest.mark.parametrize("case", list(FAILING_REVOKES))
async def test_a_revocation_failing_after_the_granted_end_is_retried_until_the_source_s_end(
    github: FakeGitHub, replicas: Any, case: str  # noqa: F811
) -> None:
    cluster, a, _ = replicas
    cred = await issue_github(a)
    token = cred["files"]["token"]
    entry = entry_of(cluster, cred["leaseRef"])
    anchor, offset, expected = FAILING_REVOKES[case]
    base = ts(entry["expiresAt"] if anchor == "granted" else entry["sourceExpiresAt"])

    github.fail_next(500)  # GitHub's DELETE fails once
    await revoke_expired(cluster, a.providers, metrics=None, now=at(offset, base))

    entry = entry_of(cluster, cred["leaseRef"])
    if expected == "retried":
        assert "revokedAt" not in entry and "notRevocable" not in entry, (case, entry)
        assert "HTTP 500" in entry["lastError"] and entry["attempts"] == 1, case
        assert await at_github(github, token) == 200
        # the next sweep succeeds: dead at GitHub
        await revoke_expired(cluster, a.providers, metrics=None, now=at(offset + 30, base))
        entry = entry_of(cluster, cred["leaseRef"])
        assert entry["revokeReason"] == "expired" and "notRevocable" not in entry, case
        assert await at_github(github, token) == 401
    else:
        assert entry["revokedAt"] and entry["revokeReason"] == "expired", case
        assert entry["notRevocable"].startswith(f"expired at {entry['sourceExpiresAt']} before it could"), entry


async def test_another_replica_past_the_granted_end_leaves_it_to_the_issuer_which_cuts_it(
    github: FakeGitHub, replicas: Any  # noqa: F811
) -> None:
    """Only the issuing replica holds the token: the other's sweep after the granted end is
    "held elsewhere" — not "expired, not revocable" while GitHub would honour it for an hour."""
    cluster, a, b = replicas
    cred = await issue_github(a)
    after = at(30, ts(cred["expiresAt"]))

    await revoke_expired(cluster, b.providers, metrics=None, now=after)
    entry = entry_of(cluster, cred["leaseRef"])
    assert "revokedAt" not in entry and "notRevocable" not in entry, entry
    assert "held by operator replica taskcreds-system/op-a" in entry["lastError"]
    assert await at_github(github, cred["files"]["token"]) == 200

    await revoke_expired(cluster, a.providers, metrics=None, now=after)
    assert await at_github(github, cred["files"]["token"]) == 401
    assert entry_of(cluster, cred["leaseRef"])["revokeReason"] == "expired"


#: case -> the source's permissions at renewal
RENEWALS = {
    "1 h left at GitHub: still a new token, the old one revoked (never the same value again)": "write",
    "the source's permissions changed: a new token of the new scope": "read",
}


@pytest.mark.parametrize("case", list(RENEWALS))
async def test_a_github_renewal_is_granted_its_ttl_too(
    github: FakeGitHub, replicas: Any, case: str  # noqa: F811
) -> None:
    permission = RENEWALS[case]
    cluster, a, _ = replicas
    cred = await issue_github(a)
    if permission != "write":
        src = cluster.sources[(NS, "gh")]
        src["spec"]["githubApp"]["permissions"] = {"contents": permission}
        cluster.put_source(src)
    pod = cluster.pods[(NS, "agent-1")]
    reply = await a.call(a.agent(pod), "POST", "/v1/credentials/gh/renew",
                         {"task": "fix-42", "leaseRef": cred["leaseRef"], "ttl": f"{GRANTED}s"})
    assert reply.status == 200, reply.doc
    renewed = reply.doc
    assert renewed["leaseRef"] != cred["leaseRef"], "github-app renews with a new token"
    assert renewed["files"]["token"] != cred["files"]["token"]
    assert timedelta(seconds=GRANTED - 1) <= ts(renewed["expiresAt"]) - ts(renewed["issuedAt"]) <= timedelta(
        seconds=GRANTED)
    entry = entry_of(cluster, renewed["leaseRef"])
    assert entry["expiresAt"] == renewed["expiresAt"], case
    assert ts(entry["sourceExpiresAt"]) == github.tokens[renewed["files"]["token"]].expires_at, case
    assert await at_github(github, cred["files"]["token"]) == 401, "the old token was revoked"
    assert entry_of(cluster, cred["leaseRef"])["revokeReason"] == "superseded"
    assert github.tokens[renewed["files"]["token"]].permissions == {"contents": permission}, case

    await revoke_expired(cluster, a.providers, metrics=None, now=at(1, ts(renewed["expiresAt"])))
    assert await at_github(github, renewed["files"]["token"]) == 401


# --- kubernetes-token: over the API stand-in (the chart's CRD prunes what it does not know) -------------
@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[KubeHarness]:
    async with kube_world(tmp_path) as h:
        h.kube_api.put({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": "deployer", "namespace": NS}})
        h.kube_api.put({"apiVersion": names.API_VERSION, **source(
            "deploy", "kubernetes-token", namespace=None, max_ttl="1h",
            kubernetesToken={"serviceAccount": "deployer", "audiences": [AUD]})})
        yield h


async def test_a_kubernetes_token_is_granted_its_ttl_and_its_binding_deleted_after_it(kube: KubeHarness) -> None:
    h = kube
    reply = await h.issue(h.agent(h.add_pod("agent-1", credentials="deploy")), ttl=f"{GRANTED}s")
    assert reply.status == 200, reply.doc
    (cred,) = reply.doc["credentials"]
    token, expires_at = cred["files"]["token"], ts(cred["expiresAt"])
    assert timedelta(seconds=GRANTED - 1) <= expires_at - ts(cred["issuedAt"]) <= timedelta(seconds=GRANTED)
    lease = h.lease("agent-1", "fix-42")
    assert lease is not None
    (entry,) = lease["status"]["leases"]
    assert entry["expiresAt"] == cred["expiresAt"]
    # kept through the API server's CRD schema, and it is the API server's 10-minute floor
    assert ts(entry["sourceExpiresAt"]) - ts(entry["issuedAt"]) >= timedelta(seconds=599)
    secret_name = cred["leaseRef"].split(":")[1].partition("/")[2]
    assert h.kube_api.get("v1", "Secret", NS, secret_name) is not None
    assert await h.cluster.review_token(token, AUD) is not None

    assert await revoke_expired(h.cluster, h.providers, metrics=None, now=at(-1, expires_at)) == 0
    assert await h.cluster.review_token(token, AUD) is not None
    assert await revoke_expired(h.cluster, h.providers, metrics=None, now=at(30, expires_at)) == 1

    assert h.kube_api.get("v1", "Secret", NS, secret_name) is None
    assert await h.cluster.review_token(token, AUD) is None, "the API still accepts the token"
    lease = h.lease("agent-1", "fix-42")
    assert lease is not None
    (entry,) = lease["status"]["leases"]
    assert entry["revokeReason"] == "expired" and "notRevocable" not in entry


# --- static values: reported as they are ---------------------------------------------------------------
class LongStatic:
    """The secret provider as a source whose static value says it lives for a day."""

    name = "secret"

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def issue(self, request: Any) -> Issued:
        got = await self.inner.issue(request)
        return replace(got, expires_at=got.issued_at + timedelta(days=1))

    async def revoke(self, *args: Any, **kw: Any) -> None:
        await self.inner.revoke(*args, **kw)


async def test_a_static_value_still_reports_its_truth(harness: Harness) -> None:
    h = harness
    h.app[BROKER_KEY].providers["secret"] = LongStatic(h.providers["secret"])
    reply = await h.issue(h.agent(h.add_pod("agent-1", credentials="legacy")), ttl=f"{GRANTED}s")
    assert reply.status == 200, reply.doc
    (cred,) = reply.doc["credentials"]
    assert cred["static"] is True
    assert ts(cred["expiresAt"]) - ts(cred["issuedAt"]) == timedelta(days=1), "never shorter than the source's"
    (entry,) = h.cluster.task_leases[(NS, lease_name("agent-1", "fix-42"))]["status"]["leases"]
    assert entry["expiresAt"] == cred["expiresAt"] and "sourceExpiresAt" not in entry
