"""Token buckets keyed by a string (a pod uid, a client SPIFFE ID), forgetting idle keys.

One table per limit; a bucket holds ``burst`` tokens and refills at ``rate`` per second. A full
bucket is the same as a new one, so full buckets are pruned (every ``prune_every`` seconds, or when
the table passes ``max_keys``): the table follows the live clients instead of every one ever seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["TokenBuckets"]

#: buckets are pruned of full (idle) ones this often, so they follow the live clients
PRUNE_EVERY = 60.0
MAX_KEYS = 50_000


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, burst: int, now: float) -> None:
        self.tokens = float(burst)
        self.stamp = now


class TokenBuckets:
    """``take(key)``: None when a token was taken, else the seconds until one is available (``wait``
    and ``charge`` split the two, for a cost known only afterwards)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        prune_every: float = PRUNE_EVERY,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.rate, self.burst, self.clock = max(rate, 1e-6), max(1, burst), clock
        self.prune_every, self.max_keys = prune_every, max_keys
        self.entries: dict[str, _Bucket] = {}
        self.pruned = clock()

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled; a flood of distinct keys within one refill clears all."""
        refill = self.burst / self.rate
        self.entries = {k: b for k, b in self.entries.items() if now - b.stamp < refill}
        if len(self.entries) > self.max_keys:
            self.entries.clear()
        self.pruned = now

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self.entries.get(key)
        if bucket is None:
            if now - self.pruned > self.prune_every or len(self.entries) > self.max_keys:
                self._prune(now)
            bucket = self.entries[key] = _Bucket(self.burst, now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        return bucket

    def take(self, key: str) -> float | None:
        bucket = self._bucket(key, self.clock())
        if bucket.tokens < 1.0:
            return (1.0 - bucket.tokens) / self.rate
        bucket.tokens -= 1.0
        return None

    def level(self, key: str) -> float:
        """The tokens in ``key``'s bucket now (below 1: empty; below 0: in debt)."""
        return self._bucket(key, self.clock()).tokens

    def wait(self, key: str) -> float | None:
        """Like :meth:`take` without taking: None when a token is there, else the seconds until one is."""
        bucket = self._bucket(key, self.clock())
        return None if bucket.tokens >= 1.0 else (1.0 - bucket.tokens) / self.rate

    def charge(self, key: str) -> None:
        """Take a token after the fact (for something already done that counts). Concurrent ones that
        all passed :meth:`wait` may leave the bucket in debt (at most ``burst``): it refills from there."""
        bucket = self._bucket(key, self.clock())
        bucket.tokens = max(-float(self.burst), bucket.tokens - 1.0)

    def give_back(self, key: str) -> None:
        """Return a token taken in advance for something that turned out not to count."""
        bucket = self.entries.get(key)
        if bucket is not None:
            bucket.tokens = min(float(self.burst), bucket.tokens + 1.0)
