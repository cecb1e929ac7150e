"""Two operator replicas and GitHub App tokens, which only the issuing replica holds in memory.

Whichever replica handles the task end or a renewal, the token dies at GitHub once its holder
sweeps; when the holder is gone (or restarted) the TaskLease says so instead of "revoked". Real
brokers (two, sharing one in-memory cluster), the real provider and the GitHub fake.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from taskcreds.operator.broker.server import BROKER_KEY
from taskcreds.operator.leases import lease_name, revoke_pod_task, sweep_leases
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.github_app import GitHubAppProvider
from taskcreds.operator.providers.replica import Replica

from taskcreds import names
from tests.fakes.github import FakeGitHub
from tests.fakes.github import github as github  # noqa: F401  (fixture)
from tests.operator.test_broker_harness import NS, Harness, source

OPERATOR_NS = "taskcreds-system"


async def status_at_github(github: FakeGitHub, token: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(
        f"{github.url}/installation/repositories", headers={"Authorization": f"Bearer {token}"}
    ) as r:
        return r.status


def replica(cluster: MemCluster, name: str) -> Harness:
    """A broker whose github-app provider is the replica running in operator pod ``name``."""
    pod = cluster.put_pod({"metadata": {"name": name, "namespace": OPERATOR_NS}, "spec": {"containers": []}})
    harness = Harness(cluster=cluster)
    provider = GitHubAppProvider(cluster, replica=Replica(OPERATOR_NS, name, pod["metadata"]["uid"]))
    harness.providers["github-app"] = provider
    harness.app[BROKER_KEY].providers["github-app"] = provider
    return harness


def two_replicas(github: FakeGitHub) -> tuple[MemCluster, Harness, Harness]:
    app = github.add_app("12345", installation_id="678", repositories=["repo"], permissions={"contents": "write"})
    cluster = MemCluster()
    cluster.put_secret(NS, "gh", {"key": app.private_key_pem})
    cluster.put_source(source("gh", "github-app", githubApp={
        "apiURL": github.url, "appId": "12345", "installationId": "678",
        "privateKeySecretRef": {"name": "gh", "key": "key"}, "repositories": ["repo"],
        "permissions": {"contents": "write"}}))
    return cluster, replica(cluster, "op-a"), replica(cluster, "op-b")


def entries(cluster: MemCluster) -> list[dict[str, Any]]:
    return cluster.task_leases[(NS, lease_name("agent-1", "fix-42"))]["status"]["leases"]


def phase(cluster: MemCluster) -> str:
    return cluster.task_leases[(NS, lease_name("agent-1", "fix-42"))]["status"]["phase"]


async def issue_on(harness: Harness) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = harness.add_pod("agent-1", credentials="gh")
    reply = await harness.issue(harness.agent(pod))
    assert reply.status == 200, reply.doc
    return pod, reply.doc["credentials"][0]


@pytest.fixture
async def replicas(github: FakeGitHub) -> Any:
    cluster, a, b = two_replicas(github)
    await a.start()
    await b.start()
    yield cluster, a, b
    for harness in (a, b):
        await harness.close()
        await harness.providers["github-app"].aclose()


async def test_task_end_on_the_other_replica_waits_for_the_issuer_which_revokes(
    github: FakeGitHub, replicas: Any
) -> None:
    cluster, a, b = replicas
    pod, cred = await issue_on(a)
    token = cred["files"]["token"]
    assert cred.get("target") is None, "the recorded target stays on the TaskLease, not in answers"
    assert entries(cluster)[0]["target"]["replica"] == "op-a"
    pod = cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "completed")

    out = await revoke_pod_task(cluster, b.providers, pod, "completed", metrics=None, replica="op-b")
    assert out is not None and not out.done and out.failed == ["gh"], "not reported revoked by B"
    assert phase(cluster) == "Revoking"
    entry = entries(cluster)[0]
    assert entry.get("revokedAt") is None and "notRevocable" not in entry
    assert "held by operator replica taskcreds-system/op-a" in entry["lastError"]
    assert await status_at_github(github, token) == 200

    # the issuer's sweep revokes it although B holds the revocation claim
    await sweep_leases(cluster, a.providers, metrics=None, replica="op-a")
    assert await status_at_github(github, token) == 401
    entry = entries(cluster)[0]
    assert entry["revokedAt"] and entry["revokeReason"] == "completed" and "notRevocable" not in entry
    assert phase(cluster) == "Revoked"


async def test_the_issuer_s_own_event_revokes_at_once_while_the_other_holds_the_claim(
    github: FakeGitHub, replicas: Any
) -> None:
    cluster, a, b = replicas
    pod, cred = await issue_on(a)
    pod = cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "completed")
    await revoke_pod_task(cluster, b.providers, pod, "completed", metrics=None, replica="op-b")
    out = await revoke_pod_task(cluster, a.providers, pod, "completed", metrics=None, replica="op-a")
    assert out is not None and out.claimed_by == "op-b" and out.revoked == ["gh"] and out.done
    assert await status_at_github(github, cred["files"]["token"]) == 401
    assert phase(cluster) == "Revoked"
    assert names.FINALIZER_REVOKE not in cluster.task_leases[(NS, lease_name("agent-1", "fix-42"))][
        "metadata"].get("finalizers", [])


@pytest.mark.parametrize(
    ("what_happened", "why"),
    [
        ("issuer pod deleted", "the operator replica taskcreds-system/op-a that issued it is gone"),
        ("issuer pod replaced", "the operator replica taskcreds-system/op-a that issued it is gone"),
    ],
)
async def test_issuer_gone_is_recorded_not_revocable_with_the_reason(
    github: FakeGitHub, replicas: Any, what_happened: str, why: str
) -> None:
    cluster, a, b = replicas
    pod, cred = await issue_on(a)
    cluster.delete_pod(OPERATOR_NS, "op-a")
    if what_happened == "issuer pod replaced":  # same name, another uid (a StatefulSet's)
        cluster.put_pod({"metadata": {"name": "op-a", "namespace": OPERATOR_NS}, "spec": {"containers": []}})
    pod = cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "completed")
    out = await revoke_pod_task(cluster, b.providers, pod, "completed", metrics=None, replica="op-b")
    assert out is not None and out.done and out.not_revocable == ["gh"]
    entry = entries(cluster)[0]
    assert entry["notRevocable"].startswith(f"github-app: {why}; expires at "), entry["notRevocable"]
    assert "restart" not in entry["notRevocable"]
    assert phase(cluster) == "Revoked"


async def test_a_restarted_issuer_says_so_for_its_own_tokens(github: FakeGitHub, replicas: Any) -> None:
    cluster, a, b = replicas
    pod, cred = await issue_on(a)
    pod = cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "completed")
    await revoke_pod_task(cluster, b.providers, pod, "completed", metrics=None, replica="op-b")
    assert phase(cluster) == "Revoking"
    old = a.providers["github-app"].replica
    restarted = {**a.providers, "github-app": GitHubAppProvider(cluster, replica=Replica(OPERATOR_NS, "op-a", old.uid))}
    await sweep_leases(cluster, restarted, metrics=None, replica="op-a")
    entry = entries(cluster)[0]
    assert entry["notRevocable"].startswith(
        "github-app: the operator process in taskcreds-system/op-a that issued it has restarted; expires at "
    )
    assert phase(cluster) == "Revoked"
    await restarted["github-app"].aclose()


async def test_renew_on_the_other_replica_marks_the_old_token_superseded_and_its_holder_revokes_it(
    github: FakeGitHub, replicas: Any
) -> None:
    cluster, a, b = replicas
    pod, first = await issue_on(a)
    reply = await b.call(b.agent(pod), "POST", "/v1/credentials/gh/renew",
                         {"task": "fix-42", "leaseRef": first["leaseRef"]})
    assert reply.status == 200, reply.doc
    second = reply.doc
    old, new = entries(cluster)
    assert old["leaseRef"] == first["leaseRef"] and old["supersededAt"] and not old.get("revokedAt")
    assert new["target"]["replica"] == "op-b" and "supersededAt" not in new

    # B's sweep cannot revoke it and says who will; the task goes on
    await sweep_leases(cluster, b.providers, metrics=None, replica="op-b")
    old = entries(cluster)[0]
    assert not old.get("revokedAt") and "op-a" in old["lastError"]
    assert await status_at_github(github, first["files"]["token"]) == 200

    await sweep_leases(cluster, a.providers, metrics=None, replica="op-a")
    old, new = entries(cluster)
    assert old["revokedAt"] and old["revokeReason"] == "superseded" and "notRevocable" not in old
    assert await status_at_github(github, first["files"]["token"]) == 401
    assert await status_at_github(github, second["files"]["token"]) == 200
    assert not new.get("revokedAt") and phase(cluster) == "Active"

    # and the task end on A leaves the second (held by B) to B
    pod = cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "completed")
    await revoke_pod_task(cluster, a.providers, pod, "completed", metrics=None, replica="op-a")
    await sweep_leases(cluster, b.providers, metrics=None, replica="op-b")
    assert await status_at_github(github, second["files"]["token"]) == 401
    assert phase(cluster) == "Revoked"
