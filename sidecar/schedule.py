"""When to refresh a credential and how long to wait after a failure. Pure: no I/O, no clock.

Refresh at 2/3 of the lifetime, jittered by +-10 % of the lifetime so many pods issued together do
not refresh together, and never later than expiry minus a safety margin. After a successful answer
the next refresh is never sooner than ``REFRESH_FLOOR`` (0.5 s) nor than half of what that answer
left (:func:`timing`), so a lifetime of a second or less, an answer that arrives late in its
lifetime or a lease extended again and again is never asked for in a loop.

Failures back off exponentially from 1 s, jittered to 50-100 %, never below ``MIN_DELAY`` (no busy
loop). The ceiling depends on what is at stake (:func:`retry_cap`):

- valid credentials remain on disk: up to ``MAX_DELAY`` (60 s), and at most a quarter of the
  lifetime left so a short-lived credential still gets several tries before it expires;
- nothing valid is left of the credential being fetched (it expired, or was never issued):
  ``RECOVERY_MAX_DELAY`` (2 s), so the agent gets it back within about 2 s of the broker's return
  instead of after a backoff that grew during the whole outage. Decided per credential: one
  missing credential does not hurry the retries of another that is still valid.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["next_refresh_at", "timing", "Timing", "broker_offset", "backoff", "retry_cap", "MIN_DELAY",
           "MAX_DELAY", "BASE_DELAY", "RECOVERY_MAX_DELAY", "STATUS_MAX_DELAY", "REFRESH_FRACTION",
           "JITTER_FRACTION", "TIME_RESOLUTION", "REFRESH_FLOOR", "REFRESH_FLOOR_FRACTION"]

REFRESH_FRACTION = 2 / 3
JITTER_FRACTION = 0.10
SAFETY_FRACTION = 0.10  # of the lifetime, at most SAFETY_MAX
SAFETY_MAX = timedelta(seconds=30)
MIN_DELAY = 0.25  # seconds
REFRESH_FLOOR = 0.5
"""Seconds: the shortest wait after a successful answer before asking again (1 s lifetimes exist)."""
REFRESH_FLOOR_FRACTION = 0.5
"""After a successful answer, wait at least this share of what it left before asking again."""
BASE_DELAY = 1.0
MAX_DELAY = 60.0
RECOVERY_MAX_DELAY = 2.0
"""Ceiling while the agent has nothing valid: it is waiting, so retry often (still jittered)."""
STATUS_MAX_DELAY = 5.0
"""Ceiling for the task-status long-poll: a task that ended during an outage is torn down within
seconds of the broker's return (the downward-API fallback is much slower)."""


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


TIME_RESOLUTION = 1.0
"""The broker writes times in whole seconds (docs/broker-api.md): ``issuedAt`` may be up to this much
before the moment it stands for."""


@dataclass(frozen=True)
class Timing:
    """When to refresh and when the credential expires, in seconds after its answer arrived.

    Counted on the monotonic clock from the answer's arrival, so the sidecar's own wall clock (which
    may be minutes off the broker's) plays no part.
    """

    refresh_in: float
    expires_in: float


def timing(issued_at: datetime, expires_at: datetime, broker_now: datetime, rng: random.Random, *,
           stalled: bool = False) -> Timing:
    """The refresh rule of :func:`next_refresh_at`, as delays from ``broker_now``.

    ``issued_at``, ``expires_at`` and ``broker_now`` are all on the broker's clock: ``broker_now`` is
    its time when the answer arrived (:func:`broker_offset`; ``issued_at`` for a fresh credential).
    A renewal that extends the same lease keeps its first ``issued_at``, which is why the lifetime
    alone is not enough: what is left is ``expires_at - broker_now``.

    ``stalled``: this answer renewed the lease without moving its expiry (the source's maximum
    lifetime is near). The 2/3 point has then passed for good, and refreshing at once would ask
    again and again in a loop; instead the next refresh comes at 2/3 of what is left, so each
    answer leaves a third as much and the broker replaces the lease after a few calls.

    Whatever the rule says, ``refresh_in`` is at least ``REFRESH_FLOOR`` and half of ``expires_in``:
    an answer whose 2/3 point has passed on arrival (a 1 s lifetime with ``issuedAt`` rounded down
    to the second, a lease extended many times past its first ``issuedAt``) is used, not asked for
    again at once. A credential with less than the floor left expires before its refresh; the
    caller drops it then.
    """
    at = next_refresh_at(issued_at, expires_at, broker_now, rng)
    refresh_in = (at - broker_now).total_seconds()
    expires_in = (expires_at - broker_now).total_seconds()
    if stalled and expires_in > 0:
        refresh_in = max(refresh_in, expires_in * REFRESH_FRACTION)
    refresh_in = max(refresh_in, REFRESH_FLOOR, expires_in * REFRESH_FLOOR_FRACTION)
    return Timing(refresh_in=refresh_in, expires_in=expires_in)


def broker_offset(previous: float, issued_at: datetime, local_now: datetime, *, fresh: bool,
                  round_trip: float) -> float:
    """The broker's clock minus the sidecar's, in seconds, narrowed by one answer.

    Starts from ``previous`` (0: trust the local clock until an answer proves it wrong) and moves it
    only as far as the answer forces: the broker wrote ``issued_at`` before the answer arrived at
    ``local_now``, so the offset is at least ``issued_at - local_now``; a ``fresh`` credential (issued
    during this call, not an extension of an earlier lease) was issued at most ``round_trip`` seconds
    ago, plus the whole-second rounding, which bounds it from above. A synchronised clock is left
    alone (offset 0, the exact expiry); a skewed one is corrected to within ``TIME_RESOLUTION`` plus
    the round trip, erring towards a shorter lifetime when the sidecar's clock is ahead.
    """
    low = (issued_at - local_now).total_seconds()
    offset = max(previous, low)
    if fresh:
        offset = min(offset, low + TIME_RESOLUTION + max(0.0, round_trip))
    return offset


def retry_cap(*, remaining: float | None, ready: bool = True, base: float = BASE_DELAY,
              max_delay: float = MAX_DELAY) -> float:
    """The longest wait before a retry (before jitter).

    ``remaining``: seconds of validity left on the credential being refreshed (None: no credential
    involved, e.g. the status long-poll; 0 or less: it has expired). ``ready``: whether the sidecar
    is ready (every requested credential on disk). With nothing valid at stake the cap is
    ``RECOVERY_MAX_DELAY`` (but never below ``base``: a policy denial still waits its slower base).
    """
    if not ready or (remaining is not None and remaining <= 0):
        return min(max_delay, max(RECOVERY_MAX_DELAY, base))
    if remaining is not None:
        return min(max_delay, remaining / 4)
    return max_delay


def backoff(attempt: int, rng: random.Random, *, remaining: float | None = None, ready: bool = True,
            base: float = BASE_DELAY, max_delay: float = MAX_DELAY) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    Doubles from ``base`` up to :func:`retry_cap` (see there for ``remaining`` and ``ready``);
    ``base`` starts slower for answers that will not change soon (policy denials). The result is
    jittered to 50-100 % and at least ``MIN_DELAY``.
    """
    exponent = min(max(attempt, 1) - 1, 16)
    cap = retry_cap(remaining=remaining, ready=ready, base=base, max_delay=max_delay)
    delay = min(base * (2 ** exponent), cap)
    return max(MIN_DELAY, delay * rng.uniform(0.5, 1.0))
