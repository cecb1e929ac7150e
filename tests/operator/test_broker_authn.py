"""The broker's TokenReview cache: hits within its lifetime, and it follows the live pods."""

from __future__ import annotations

from taskcreds.operator.broker.authn import ReviewCache
from taskcreds.operator.cluster import TokenIdentity


def _identity(i: int) -> TokenIdentity:
    return TokenIdentity("agents", "coding-agent", f"agent-{i}", f"uid-{i}", ("taskcreds",))


def test_a_review_is_remembered_for_its_lifetime_only() -> None:
    clock = [100.0]
    cache = ReviewCache(ttl=30.0, clock=lambda: clock[0])
    cache.put("token-1", "taskcreds", _identity(1))
    assert cache.get("token-1", "taskcreds") == _identity(1)
    assert cache.get("token-1", "another-audience") is None
    clock[0] += 31.0
    assert cache.get("token-1", "taskcreds") is None


def test_ended_pods_reviews_go_as_new_ones_come() -> None:
    """Found by the soak: one entry per pod ever seen stayed until the 10,000-entry cap."""
    clock = [100.0]
    cache = ReviewCache(ttl=30.0, clock=lambda: clock[0])
    for i in range(500):  # 500 pods come and go
        cache.put(f"token-{i}", "taskcreds", _identity(i))
    clock[0] += 31.0
    cache.put("token-live", "taskcreds", _identity(999))
    assert len(cache) == 1


def test_a_renewed_review_is_kept_behind_older_ones() -> None:
    """A re-review moves its entry behind the others (expiry order), so an entry that expires before
    it is not stuck behind it: the cache follows the live pods (mutation review: this test passed
    with the move deleted)."""
    clock = [100.0]
    cache = ReviewCache(ttl=30.0, clock=lambda: clock[0])
    cache.put("token-a", "taskcreds", _identity(1))  # expires 130
    clock[0] = 110.0
    cache.put("token-b", "taskcreds", _identity(2))  # expires 140
    clock[0] = 120.0
    cache.put("token-a", "taskcreds", _identity(1))  # reviewed again: expires 150, now behind b
    clock[0] = 135.0
    assert cache.get("token-a", "taskcreds") == _identity(1)  # its first lifetime has ended
    clock[0] = 145.0
    cache.put("token-c", "taskcreds", _identity(3))  # b (140) has expired: dropped, a (150) kept
    assert len(cache) == 2, "an expired entry was kept behind the renewed one"  # (get would drop it)
    assert cache.get("token-a", "taskcreds") == _identity(1)


def test_size_is_capped() -> None:
    cache = ReviewCache(ttl=30.0, size=3)
    for i in range(10):
        cache.put(f"token-{i}", "taskcreds", _identity(i))
    assert len(cache) == 3 and cache.get("token-9", "taskcreds") == _identity(9)
    assert cache.get("token-0", "taskcreds") is None
