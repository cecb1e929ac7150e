"""Who is calling the broker: pure checks that mutation testing found guarded only end to end, or not
at all (tests/security/test_broker_identity.py drives them through mTLS).

- A SPIFFE ID template without exactly one ``{namespace}`` and ``{serviceaccount}`` is refused when
  the broker is configured, naming the placeholder, instead of failing every request later.
- A client SPIFFE ID of another trust domain is refused with a message naming both trust domains,
  also when the template spells the trust domain out instead of using ``{trust_domain}``.
- The TokenReview cache drops expired reviews even when a review renewed since sits in front of
  them (the soak's memory growth), and keeps the renewed one.
"""

from __future__ import annotations

import pytest
from taskcreds.operator.broker.authn import ReviewCache, SpiffeIdTemplate, bearer_token
from taskcreds.operator.broker.errors import Unauthenticated
from taskcreds.operator.cluster import TokenIdentity

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
