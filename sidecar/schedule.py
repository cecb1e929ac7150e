"""When to refresh a credential and how long to wait after a failure. Pure: no I/O, no clock.

Refresh at 2/3 of the lifetime, jittered by +-10 % of the lifetime so many pods issued together do
not refresh together, and never later than expiry minus a safety margin. Failures back off
exponentially from 1 s to 60 s, capped by a quarter of the remaining lifetime so a short-lived
credential still gets several tries before it expires, and never below ``MIN_DELAY`` (no busy loop).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

__all__ = ["next_refresh_at", "backoff", "MIN_DELAY", "MAX_DELAY", "REFRESH_FRACTION", "JITTER_FRACTION"]

REFRESH_FRACTION = 2 / 3
JITTER_FRACTION = 0.10
SAFETY_FRACTION = 0.10  # of the lifetime, at most SAFETY_MAX
SAFETY_MAX = timedelta(seconds=30)
MIN_DELAY = 0.25  # seconds
BASE_DELAY = 1.0
MAX_DELAY = 60.0


def next_refresh_at(issued_at: datetime, expires_at: datetime, now: datetime, rng: random.Random) -> datetime:
    """The moment to refresh a credential valid from ``issued_at`` to ``expires_at``.

    Always in ``[now, expires_at - margin]`` (``now`` when that window is already closed).
    """
    lifetime = expires_at - issued_at
    if lifetime <= timedelta(0):
        return now
    jitter = lifetime * rng.uniform(-JITTER_FRACTION, JITTER_FRACTION)
    target = issued_at + lifetime * REFRESH_FRACTION + jitter
    latest = expires_at - min(lifetime * SAFETY_FRACTION, SAFETY_MAX)
    return max(now, min(target, latest))


def backoff(attempt: int, rng: random.Random, *, remaining: float | None = None,
            base: float = BASE_DELAY) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    ``remaining`` is the lifetime left on the credential being refreshed (None when there is none):
    the delay never exceeds a quarter of it. ``base`` starts slower for answers that will not
    change soon (policy denials). The result is jittered to 50-100 % and at least ``MIN_DELAY``.
    """
    exponent = min(max(attempt, 1) - 1, 16)
    delay = min(base * (2 ** exponent), MAX_DELAY)
    if remaining is not None and remaining > 0:
        delay = min(delay, remaining / 4)
    return max(MIN_DELAY, delay * rng.uniform(0.5, 1.0))
