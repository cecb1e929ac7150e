"""Who is calling the broker: pure checks that mutation testing found guarded only end to end, or not
at all (tests/security/test_broker_identity.py drives them through mTLS).

- A SPIFFE ID template without exactly one ``{namespace}`` and ``{serviceaccount}`` is refused when
  the broker is configured, naming the placeholder, instead of failing every request later.
- A client SPIFFE ID of another trust domain is refused with a message naming both trust domains,
  also when the template spells the trust domain out instead of using ``{trust_domain}``.
- ``authenticate`` refuses a token that is not bound to a pod (401 saying so), one of another
  service account or audience, and a caller without an SVID; a cached review is not repeated.
- The TokenReview cache drops expired reviews even when a review renewed since sits in front of
  them (the soak's memory growth), and keeps the renewed one.
"""

from __future__ import annotations

from typing import Any

import pytest
from taskcreds.operator.broker.authn import (
    ReviewCache,
    ReviewGuard,
    SpiffeIdTemplate,
    authenticate,
    bearer_token,
)
from taskcreds.operator.broker.errors import Unauthenticated, Unavailable
from taskcreds.operator.broker.ratelimit import TokenBuckets
from taskcreds.operator.cluster import TokenIdentity
from taskcreds.operator.memcluster import MemCluster

DEFAULT = "spiffe://{trust_domain}/ns/{namespace}/sa/{serviceaccount}"


@pytest.mark.parametrize(
    ("template", "missing"),
    [
        ("spiffe://{trust_domain}/sa/{serviceaccount}", "{namespace}"),
        ("spiffe://{trust_domain}/ns/{namespace}", "{serviceaccount}"),
        ("spiffe://{trust_domain}/ns/{namespace}/x/{namespace}/sa/{serviceaccount}", "{namespace}"),
        ("spiffe://{trust_domain}/ns/{namespace}/sa/{serviceaccount}/{serviceaccount}", "{serviceaccount}"),
    ],
    ids=["no namespace", "no service account", "namespace twice", "service account twice"],
)
def test_template_needs_each_placeholder_once(template: str, missing: str) -> None:
    with pytest.raises(ValueError, match=rf"must contain {missing} exactly once"):
        SpiffeIdTemplate(template, "example.org")


@pytest.mark.parametrize(
    ("template", "spiffe_id", "says"),
    [
        (
            DEFAULT,
            "spiffe://other.org/ns/team-a/sa/agent",
            "is in trust domain 'other.org'; only 'example.org' is accepted",
        ),
        (
            "spiffe://other.org/ns/{namespace}/sa/{serviceaccount}",
            "spiffe://other.org/ns/team-a/sa/agent",
            "is in trust domain 'other.org'; only 'example.org' is accepted",
        ),
        (DEFAULT, "spiffe://example.org/ns/team-a/sa/agent/extra", "does not match the template"),
        (DEFAULT, "spiffe://example.org/ns/Team-A/sa/agent", "does not match the template"),
    ],
    ids=[
        "other trust domain",
        "other trust domain spelled out in the template",
        "extra path segment",
        "namespace not a DNS label",
    ],
)
def test_foreign_or_malformed_ids_are_refused(template: str, spiffe_id: str, says: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        SpiffeIdTemplate(template, "example.org").parse(spiffe_id)
    assert says in info.value.message


def test_an_id_of_the_template_names_namespace_and_account() -> None:
    parsed = SpiffeIdTemplate(DEFAULT, "example.org").parse("spiffe://example.org/ns/team-a/sa/agent.v2")
    assert parsed == ("team-a", "agent.v2")


def test_expired_reviews_behind_a_renewed_one_are_dropped() -> None:
    def identity(i: int) -> TokenIdentity:
        return TokenIdentity("team-a", "agent", f"agent-{i}", f"uid-{i}", ("taskcreds",))

    clock = [100.0]
    cache = ReviewCache(ttl=30.0, clock=lambda: clock[0])
    cache.put("token-a", "taskcreds", identity(1))
    cache.put("token-b", "taskcreds", identity(2))
    clock[0] += 20.0
    cache.put("token-a", "taskcreds", identity(1))  # reviewed again: lives until 150
    clock[0] += 15.0  # 135: token-b (until 130) has expired
    cache.put("token-c", "taskcreds", identity(3))
    assert len(cache) == 2
    assert cache.get("token-a", "taskcreds") == identity(1)
    assert cache.get("token-b", "taskcreds") is None


@pytest.mark.parametrize(
    ("header", "token", "says"),
    [
        (None, None, "missing Authorization"),
        ("", None, "missing Authorization"),
        ("Bearer abc.def", "abc.def", None),
        ("bearer abc.def", "abc.def", None),
        ("Bearer  abc.def ", "abc.def", None),
        ("Basic abc", None, "must be 'Bearer"),
        ("Bearer ", None, "must be 'Bearer"),
        ("Bearer " + "a" * 16384, "a" * 16384, None),
        ("Bearer " + "a" * 16385, None, "must be 'Bearer"),
    ],
    ids=[
        "absent",
        "empty",
        "bearer",
        "lower-case scheme",
        "extra spaces",
        "basic",
        "no token",
        "largest accepted",
        "oversized",
    ],
)
def test_bearer_token(header: str | None, token: str | None, says: str | None) -> None:
    if says is None:
        assert bearer_token(header) == token
        return
    with pytest.raises(Unauthenticated) as info:
        bearer_token(header)
    assert says in info.value.message
    assert "abc" not in info.value.message, "the token is never echoed"


SVID = "spiffe://example.org/ns/team-a/sa/agent"


def cluster_with_pod() -> MemCluster:
    mem = MemCluster()
    mem.put_pod({"metadata": {"name": "agent-1", "namespace": "team-a", "uid": "uid-1"}})
    return mem


AUTH_CASES = [
    ("pod-bound token", SVID, lambda m: m.issue_pod_token("team-a", "agent", "agent-1", "uid-1"), None),
    (
        "no client SVID",
        None,
        lambda m: m.issue_pod_token("team-a", "agent", "agent-1", "uid-1"),
        "no client",
    ),
    (
        "token not bound to a pod",
        SVID,
        lambda m: m.issue_pod_token("team-a", "agent"),
        "not bound to a pod",
    ),
    (
        "token of another service account",
        SVID,
        lambda m: m.issue_pod_token("team-a", "builder", "agent-1", "uid-1"),
        "SVID and token disagree",
    ),
    (
        "token for another audience",
        SVID,
        lambda m: m.issue_pod_token("team-a", "agent", "agent-1", "uid-1", audiences=("vault",)),
        "not authenticated for audience 'taskcreds'",
    ),
    ("junk token", SVID, lambda m: "junk", "not authenticated for audience 'taskcreds'"),
]


@pytest.mark.parametrize(("case", "peer", "token_of", "says"), AUTH_CASES, ids=[c[0] for c in AUTH_CASES])
async def test_authenticate(case: str, peer: str | None, token_of: Any, says: str | None) -> None:
    mem = cluster_with_pod()
    template = SpiffeIdTemplate(DEFAULT, "example.org")
    header = f"Bearer {token_of(mem)}"
    if says is None:
        caller = await authenticate(mem, template, peer, header)
        assert (caller.namespace, caller.service_account, caller.pod, caller.pod_uid) == (
            "team-a",
            "agent",
            "agent-1",
            "uid-1",
        )
        return
    with pytest.raises(Unauthenticated) as info:
        await authenticate(mem, template, peer, header)
    assert says in info.value.message, case


async def test_a_cached_review_is_not_repeated() -> None:
    mem = cluster_with_pod()
    template, cache = SpiffeIdTemplate(DEFAULT, "example.org"), ReviewCache()
    header = f"Bearer {mem.issue_pod_token('team-a', 'agent', 'agent-1', 'uid-1')}"
    first = await authenticate(mem, template, SVID, header, cache)
    second = await authenticate(mem, template, SVID, header, cache)
    assert first == second and first.pod == "agent-1"
    assert mem.calls["review_token"] == 1


@pytest.mark.parametrize("guarded", [True, False], ids=["with a review guard", "without"])
async def test_a_failed_token_review_is_unavailable_and_costs_nothing(guarded: bool) -> None:
    # an API outage is not the caller's fault: 503 "retry later", no failed-review charge, nothing in flight
    mem = cluster_with_pod()
    mem.fail("review_token")
    guard = ReviewGuard(TokenBuckets(rate=1.0, burst=1)) if guarded else None
    header = f"Bearer {mem.issue_pod_token('team-a', 'agent', 'agent-1', 'uid-1')}"
    template = SpiffeIdTemplate(DEFAULT, "example.org")
    with pytest.raises(Unavailable, match="TokenReview failed: ClusterError; retry later"):
        await authenticate(mem, template, SVID, header, guard=guard)
    caller = await authenticate(mem, template, SVID, header, guard=guard)  # burst 1: still not charged
    assert caller.pod == "agent-1"
    if guard is not None:
        assert guard.in_flight(SVID) == 0
