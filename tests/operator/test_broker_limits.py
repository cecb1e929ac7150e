"""The broker's own limits: one task per pod (durably), TokenReview fan-out, live leases per credential.

Each test drives a real broker over SPIFFE mTLS (tests/operator/test_broker_harness.py) and asserts
what a client sees: status, error code, the message, and the API calls the broker made.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import generate_latest
from taskcreds.operator import leases
from taskcreds.operator.broker.server import BROKER_KEY, BrokerServer, make_broker_app
from taskcreds.operator.broker.settings import BrokerSettings
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.taskstatus import TaskStatusHub

from taskcreds import names
from tests.operator.test_broker_harness import NS, Harness, pod_body, source, spiffe_id
from tests.operator.test_broker_harness import harness as harness  # noqa: F401  (fixture)

#: a jwt source every namespace rule accepts (audience prefixed with its namespace)
API_AUDIENCE = f"{NS}/my-api"


@pytest.fixture
async def broker(harness: Harness) -> AsyncIterator[Harness]:  # noqa: F811
    harness.cluster.put_source(source("api", "jwt", jwt={"audience": [API_AUDIENCE]}))
    yield harness


async def fresh_broker_issue(h: Harness, pod: dict[str, Any], task: str) -> Any:
    """Issue through a second broker with an empty memory: a restarted operator, or another replica."""
    app = make_broker_app(
        cluster=h.cluster,
        providers=h.providers,
        settings=h.settings,
        metrics=h.metrics,
        trust_domain="taskcreds.local",
        hub=TaskStatusHub(),
    )
    server = BrokerServer(app, lambda: h.broker_svid)
    await server.start("127.0.0.1", 0)
    old, h.server = h.server, server
    try:
        return await h.issue(h.agent(pod), task=task)
    finally:
        h.server = old
        await server.stop()


def with_sidecar(pod: dict[str, Any], task: str) -> dict[str, Any]:
    """The pod as the webhook admits it: the sidecar's env pins the task id."""
    pod["spec"]["initContainers"] = [
        {
            "name": names.SIDECAR_CONTAINER,
            "image": "sidecar",
            "restartPolicy": "Always",
            "env": [{"name": names.ENV_DIR, "value": "/run/taskcreds"}, {"name": names.ENV_TASK, "value": task}],
        }
    ]
    return pod


# --- finding 3: one task per pod ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "sidecar", "end_first", "drop_label"),
    [
        pytest.param("no sidecar, first task completed", False, True, False, id="ended-no-sidecar"),
        pytest.param("no sidecar, first task still running", False, False, False, id="running-no-sidecar"),
        pytest.param("TaskLease written before the pod-uid label", False, True, True, id="old-tasklease"),
        pytest.param("sidecar pins the task id", True, True, False, id="pinned"),
    ],
)
async def test_a_pod_cannot_start_a_second_task_on_a_fresh_broker(
    broker: Harness, case: str, sidecar: bool, end_first: bool, drop_label: bool
) -> None:
    h = broker
    body = pod_body("agent-1", task="fix-42")
    body = h.cluster.put_pod(with_sidecar(body, "fix-42") if sidecar else body)
    first = await h.issue(h.agent(body))
    assert first.status == 200, first.doc
    lease = next(iter(h.cluster.task_leases.values()))
    assert lease["metadata"]["labels"][leases.LABEL_POD_UID] == body["metadata"]["uid"]
    if drop_label:
        del lease["metadata"]["labels"][leases.LABEL_POD_UID]
    if end_first:
        h.cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "completed")
        assert (await h.issue(h.agent(body))).code == "task_terminal"
    h.cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK, "fix-43")
    pod = h.cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "running")
    lists = h.cluster.calls.get("list_task_leases", 0)

    again = await fresh_broker_issue(h, pod, "fix-43")

    assert (again.status, again.code) == (409, "task_terminal"), case
    message = again.doc["error"]["message"]
    assert "'fix-42'" in message and "'fix-43'" in message and "one task" in message, message
    assert len(h.cluster.task_leases) == 1, "no TaskLease for the refused task"
    listed = h.cluster.calls.get("list_task_leases", 0) - lists
    assert listed == (0 if sidecar else 1), "a pinned pod needs no TaskLease list"


async def test_a_new_pod_of_the_same_name_may_run_another_task(broker: Harness) -> None:
    """The predecessor's TaskLease (another uid) is no reason to refuse its successor."""
    h = broker
    first = h.add_pod("agent-1")
    assert (await h.issue(h.agent(first))).status == 200
    h.cluster.delete_pod(NS, "agent-1")
    second = h.add_pod("agent-1", task="fix-43")
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    reply = await fresh_broker_issue(h, second, "fix-43")
    assert reply.status == 200, reply.doc


async def test_the_same_task_is_not_listed_again_once_its_tasklease_exists(broker: Harness) -> None:
    h = broker
    agent = h.agent(h.add_pod("agent-1"))
    assert (await h.issue(agent)).status == 200
    lists = h.cluster.calls.get("list_task_leases", 0)
    for _ in range(3):
        assert (await h.issue(agent)).status == 200
    assert h.cluster.calls.get("list_task_leases", 0) == lists


# --- finding 4: failed TokenReviews are limited per SPIFFE ID and remembered ------------------------
class SlowReviews(MemCluster):
    """TokenReviews that take a while (an API server under load), so requests overlap in them."""

    def __init__(self) -> None:
        super().__init__()
        self.reviewing = self.peak_reviewing = 0

    async def review_token(self, token: str, audience: str) -> Any:
        self.reviewing += 1
        self.peak_reviewing = max(self.peak_reviewing, self.reviewing)
        try:
            await asyncio.sleep(0.1)
            return await super().review_token(token, audience)
        finally:
            self.reviewing -= 1


def tight_harness(cluster: MemCluster | None = None) -> Harness:
    return Harness(
        cluster=cluster,
        settings=BrokerSettings(
            namespace="taskcreds-system",
            jwt_issuer="https://broker.test",
            failed_review_burst=5,
            failed_review_rate_per_second=1.0,
            rate_burst=1000,
            rate_per_second=1000.0,
        ),
    )


@pytest.fixture
async def tight() -> AsyncIterator[Harness]:
    """A broker with small, visible limits: 5 failed reviews at once, then 1 per second."""
    h = tight_harness()
    h.put_sources()
    h.cluster.put_source(source("api", "jwt", jwt={"audience": [API_AUDIENCE]}))
    await h.start()
    yield h
    await h.close()


def reviews(h: Harness) -> int:
    return h.cluster.calls.get("review_token", 0)


@pytest.mark.parametrize(
    ("case", "token_of", "max_reviews"),
    [
        pytest.param("200 different junk tokens", lambda i: f"junk-token-{i}", 5 + 3, id="distinct"),
        pytest.param("one junk token 200 times", lambda i: "junk-token", 1, id="repeated"),
    ],
)
async def test_junk_bearer_tokens_cost_few_token_reviews(
    tight: Harness, case: str, token_of: Any, max_reviews: int
) -> None:
    h = tight
    agent = h.agent(h.add_pod("agent-1"))
    before = reviews(h)
    replies = []
    for i in range(200):
        agent.token = token_of(i)
        replies.append(await h.issue(agent))
    assert reviews(h) - before <= max_reviews, case
    assert {r.status for r in replies} <= {401, 429}
    limited = [r for r in replies if r.status == 429]
    if max_reviews > 1:
        assert limited, "the SPIFFE ID's bucket ran out"
        first = limited[0]
        assert first.code == "rate_limited" and int(first.headers["Retry-After"]) >= 1
        assert "failed their TokenReview" in first.doc["error"]["message"]
        assert "spiffe://taskcreds.local/ns/team-a/sa/agent" in first.doc["error"]["message"]
    for r in replies:
        assert "junk-token" not in r.raw.decode(), "a token is never echoed"


async def test_good_tokens_are_not_limited_and_other_identities_are_not_affected(tight: Harness) -> None:
    h = tight
    # 20 pods of one service account, each with its own (good) token: far above the burst of 5
    for i in range(20):
        reply = await h.issue(h.agent(h.add_pod(f"agent-{i}")))
        assert reply.status == 200, (i, reply.doc)
    attacker = h.agent(h.add_pod("attacker", service_account="other", credentials="legacy"))
    for i in range(20):
        attacker.token = f"junk-{i}"
        await h.issue(attacker)
    assert (await h.issue(attacker)).status == 429
    # the flood drained "other"'s bucket only: a new pod of "agent" is reviewed and served
    reply = await h.issue(h.agent(h.add_pod("agent-late")))
    assert reply.status == 200, reply.doc


async def test_good_tokens_reviewed_at_once_are_never_refused_by_the_failed_review_limit() -> None:
    """20 pods of one service account (one SPIFFE ID) start together, reviews overlapping: far above
    the burst of 5, all are served; the bucket only pays for failed reviews, and its 429 says so."""
    h = tight_harness(SlowReviews())
    h.put_sources()
    h.cluster.put_source(source("api", "jwt", jwt={"audience": [API_AUDIENCE]}))
    await h.start()
    try:
        agents = [h.agent(h.add_pod(f"agent-{i}")) for i in range(20)]
        replies = await asyncio.gather(*(h.issue(a) for a in agents))
        assert [r.status for r in replies] == [200] * 20, [r.doc for r in replies if r.status != 200]
        assert h.cluster.peak_reviewing <= 5, "they waited their turn: at most the burst at once"
        # now junk from the same identity, concurrently: the reviews that failed drain the bucket
        for i, agent in enumerate(agents):
            agent.token = f"junk-{i}"
        first = await asyncio.gather(*(h.issue(a) for a in agents[:10]))
        assert {r.status for r in first} <= {401, 429}
        after = await h.issue(agents[10])
        assert after.status == 429 and "failed their TokenReview" in after.doc["error"]["message"]
    finally:
        await h.close()


@pytest.mark.parametrize(
    ("case", "token_of"),
    [
        pytest.param("distinct junk tokens", lambda i: f"junk-token-{i}", id="distinct"),
        pytest.param("one junk token", lambda i: "junk-token", id="repeated"),
    ],
)
async def test_junk_bearer_tokens_sent_at_once_start_at_most_the_burst_of_reviews(case: str, token_of: Any) -> None:
    """60 requests from one valid SVID at the same moment, each with junk: at most 5 reviews run (and
    are made) at once, the rest are 429 without one (review of e4bd9ff: all 60 were reviewed)."""
    h = tight_harness(SlowReviews())
    h.put_sources()
    await h.start()
    try:
        agents = [h.agent(h.add_pod(f"agent-{i}")) for i in range(60)]
        for i, agent in enumerate(agents):
            agent.token = token_of(i)
        replies = await asyncio.gather(*(h.issue(a) for a in agents))
        assert h.cluster.peak_reviewing <= 5, case
        assert reviews(h) <= 5, case
        assert {r.status for r in replies} <= {401, 429}, case
        assert [r.status for r in replies].count(401) >= 1, case
        if case == "distinct junk tokens":
            statuses = [r.status for r in replies]
            # (once seen at load ~6: fewer 429s; say what came back and how many reviews ran)
            assert statuses.count(429) >= 55, (case, {s: statuses.count(s) for s in set(statuses)}, reviews(h))
        assert h.app[BROKER_KEY].review_guard.in_flight(spiffe_id()) == 0, "nothing left in flight"
    finally:
        await h.close()


async def test_a_failed_review_is_forgotten_after_its_lifetime(tight: Harness) -> None:
    h = tight
    broker = h.app[BROKER_KEY]
    clock = [1000.0]
    broker.monotonic = lambda: clock[0]
    agent = h.agent(h.add_pod("agent-1"))
    good = agent.token
    agent.token = "junk"
    assert (await h.issue(agent)).status == 401
    assert (await h.issue(agent)).status == 401
    assert reviews(h) == 1
    clock[0] += h.settings.failed_review_cache_seconds + 1
    assert (await h.issue(agent)).status == 401
    assert reviews(h) == 2
    agent.token = good
    assert (await h.issue(agent)).status == 200


# --- finding 5: live leases per (task, credential) are capped --------------------------------------
@pytest.fixture
async def capped() -> AsyncIterator[Harness]:
    """A broker allowing 3 live leases per credential, and no request rate limit in the way."""
    h = Harness(
        settings=BrokerSettings(
            namespace="taskcreds-system",
            jwt_issuer="https://broker.test",
            max_live_leases=3,
            rate_burst=1000,
            rate_per_second=1000.0,
        )
    )
    h.put_sources()
    h.cluster.put_source(source("api", "jwt", jwt={"audience": [API_AUDIENCE]}))
    await h.start()
    yield h
    await h.close()


def live(h: Harness, credential: str) -> list[dict[str, Any]]:
    lease = next(iter(h.cluster.task_leases.values()))
    return [e for e in lease["status"]["leases"] if e["credential"] == credential and not e.get("revokedAt")]


@pytest.mark.parametrize("credential", ["api", "legacy"], ids=["revocable-jwt", "static-secret"])
async def test_issue_beyond_the_live_lease_cap_is_refused_with_why(capped: Harness, credential: str) -> None:
    h = capped
    agent = h.agent(h.add_pod("agent-1", credentials=credential))
    issued = [await h.issue(agent) for _ in range(3)]
    assert [r.status for r in issued] == [200, 200, 200]
    refused = await h.issue(agent)
    assert (refused.status, refused.code) == (429, "rate_limited")
    message = refused.doc["error"]["message"]
    assert f"credential {credential!r} already has 3 live leases" in message and "(3)" in message, message
    assert "renew" in message and "nothing was issued" in message
    assert int(refused.headers["Retry-After"]) >= 1
    assert len(live(h, credential)) == 3, "nothing was issued or recorded for the refused request"


async def test_renewals_are_never_refused_and_do_not_count_what_they_superseded(capped: Harness) -> None:
    h = capped
    agent = h.agent(h.add_pod("agent-1"))
    ref = None
    for _ in range(3):
        reply = await h.issue(agent)
        assert reply.status == 200
        ref = reply.doc["credentials"][0]["leaseRef"]
    for _ in range(5):  # the cap is reached; renewing still works, again and again
        renewed = await h.call(agent, "POST", "/v1/credentials/api/renew", {"task": "fix-42", "leaseRef": ref})
        assert renewed.status == 200, renewed.doc
        ref = renewed.doc["leaseRef"]
    # the renewal revoked what it replaced (recorded so): 3 live, as before the renewals
    entries = {e["leaseRef"]: e for e in next(iter(h.cluster.task_leases.values()))["status"]["leases"]}
    assert len(live(h, "api")) == 3 and ref in {e["leaseRef"] for e in live(h, "api")}
    assert sum(e.get("revokeReason") == "superseded" for e in entries.values()) == 5
    assert (await h.issue(agent)).status == 429
    text = generate_latest(h.metrics.registry).decode()
    assert 'taskcreds_leases_active{provider="jwt"} 3.0' in text
    assert 'taskcreds_credentials_revoked_total{provider="jwt",reason="superseded"} 5.0' in text


async def test_a_lease_superseded_on_another_replica_does_not_count(capped: Harness) -> None:
    h = capped
    agent = h.agent(h.add_pod("agent-1"))
    for _ in range(3):
        assert (await h.issue(agent)).status == 200
    lease = next(iter(h.cluster.task_leases.values()))
    lease["status"]["leases"][0]["supersededAt"] = "2026-01-01T00:00:00Z"  # its holder revokes it
    assert (await h.issue(agent)).status == 200
    assert (await h.issue(agent)).status == 429


async def test_expired_leases_do_not_count(capped: Harness) -> None:
    h = capped
    agent = h.agent(h.add_pod("agent-1"))
    for _ in range(3):
        assert (await h.issue(agent)).status == 200
    lease = next(iter(h.cluster.task_leases.values()))
    lease["status"]["leases"][0]["expiresAt"] = "2026-01-01T00:00:00Z"  # past: dead, not yet swept
    assert (await h.issue(agent)).status == 200
    assert (await h.issue(agent)).status == 429


async def test_concurrent_issues_cannot_pass_the_cap_together(capped: Harness) -> None:
    import asyncio

    h = capped
    agent = h.agent(h.add_pod("agent-1"))
    replies = await asyncio.gather(*(h.issue(agent) for _ in range(8)))
    assert sorted(r.status for r in replies).count(200) <= 3
    assert len(live(h, "api")) <= 3, "issued beyond the cap were revoked again, not recorded"
