"""Refresh timing and backoff: pure functions, checked over many random draws."""

# ruff: noqa: S311 - seeded generators for reproducible draws; nothing here is cryptographic

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from taskcreds.sidecar.schedule import (
    MAX_DELAY,
    MIN_DELAY,
    RECOVERY_MAX_DELAY,
    REFRESH_FLOOR,
    STATUS_MAX_DELAY,
    TIME_RESOLUTION,
    backoff,
    broker_offset,
    next_refresh_at,
    retry_cap,
    timing,
)

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("lifetime", [timedelta(seconds=2), timedelta(minutes=15), timedelta(hours=12)],
                         ids=["2s", "15m", "12h"])
def test_refresh_near_two_thirds_and_before_expiry(lifetime: timedelta) -> None:
    rng = random.Random(1)
    expires = T0 + lifetime
    margin = min(lifetime * 0.1, timedelta(seconds=30))
    times = [next_refresh_at(T0, expires, T0, rng) for _ in range(2000)]
    assert all(T0 + lifetime * (2 / 3 - 0.1) <= t <= expires - margin for t in times)
    assert len(set(times)) > 100, "jittered"
    assert min(times) < T0 + lifetime * 0.6 and max(times) > T0 + lifetime * 0.72


def test_refresh_is_now_when_already_late_or_expired() -> None:
    rng = random.Random(2)
    expires = T0 + timedelta(minutes=15)
    late = T0 + timedelta(minutes=14, seconds=50)
    assert next_refresh_at(T0, expires, late, rng) == late
    assert next_refresh_at(T0, expires, expires + timedelta(hours=1), rng) == expires + timedelta(hours=1)
    assert next_refresh_at(T0, T0, T0, rng) == T0


def test_backoff_doubles_to_a_cap_and_never_busy_loops() -> None:
    rng = random.Random(3)
    firsts = [backoff(1, rng) for _ in range(500)]
    assert all(0.5 <= d <= 1.0 for d in firsts)
    assert all(MAX_DELAY / 2 <= backoff(30, rng) <= MAX_DELAY for _ in range(500))
    medians = [sorted(backoff(a, rng) for _ in range(201))[100] for a in range(1, 8)]
    assert medians == sorted(medians)
    assert backoff(10_000, rng) <= MAX_DELAY


@pytest.mark.parametrize(("remaining", "most"), [(8.0, 2.0), (1.0, MIN_DELAY), (0.01, MIN_DELAY)],
                         ids=["8s left", "1s left", "almost expired"])
def test_backoff_capped_by_remaining_lifetime(remaining: float, most: float) -> None:
    rng = random.Random(4)
    delays = [backoff(a, rng, remaining=remaining) for a in range(1, 20)]
    assert all(MIN_DELAY <= d <= most for d in delays)


def test_policy_denials_start_slower() -> None:
    rng = random.Random(5)
    assert min(backoff(1, rng, base=5.0) for _ in range(200)) >= 2.5


# The outage bug: a credential expired while the broker was down, the attempt counter had grown,
# and the next retry came ~23 s later although the agent had nothing. Each row: what is at stake
# -> the ceiling of the wait before the next retry.
@pytest.mark.parametrize(("remaining", "ready", "base", "max_delay", "cap"), [
    pytest.param(None, False, 1.0, MAX_DELAY, RECOVERY_MAX_DELAY, id="not ready: nothing issued yet or expired"),
    pytest.param(-5.0, False, 1.0, MAX_DELAY, RECOVERY_MAX_DELAY, id="expired during an outage"),
    pytest.param(0.0, True, 1.0, MAX_DELAY, RECOVERY_MAX_DELAY, id="expiring this instant"),
    pytest.param(600.0, False, 1.0, MAX_DELAY, RECOVERY_MAX_DELAY, id="valid, but another credential is missing"),
    pytest.param(600.0, True, 1.0, MAX_DELAY, 60.0, id="valid for 10 min: the long cap is fine"),
    pytest.param(40.0, True, 1.0, MAX_DELAY, 10.0, id="valid for 40 s: a quarter of what is left"),
    pytest.param(None, True, 1.0, MAX_DELAY, MAX_DELAY, id="no credential involved, ready"),
    pytest.param(None, True, 1.0, STATUS_MAX_DELAY, STATUS_MAX_DELAY, id="status long-poll, ready"),
    pytest.param(None, False, 1.0, STATUS_MAX_DELAY, RECOVERY_MAX_DELAY, id="status long-poll, not ready"),
    pytest.param(None, False, 5.0, MAX_DELAY, 5.0, id="policy denial while not ready keeps its slower base"),
])
def test_retry_cap(remaining: float | None, ready: bool, base: float, max_delay: float, cap: float) -> None:
    assert retry_cap(remaining=remaining, ready=ready, base=base, max_delay=max_delay) == cap


@pytest.mark.parametrize(("remaining", "ready", "low", "high"), [
    pytest.param(None, False, RECOVERY_MAX_DELAY / 2, RECOVERY_MAX_DELAY, id="nothing valid: 1-2 s"),
    pytest.param(-1.0, True, RECOVERY_MAX_DELAY / 2, RECOVERY_MAX_DELAY, id="expired: 1-2 s"),
    pytest.param(3600.0, True, MAX_DELAY / 2, MAX_DELAY, id="an hour left: 30-60 s"),
])
def test_after_a_long_outage_the_next_retry_is(remaining: float | None, ready: bool,
                                               low: float, high: float) -> None:
    rng = random.Random(6)
    delays = [backoff(attempt, rng, remaining=remaining, ready=ready) for attempt in range(8, 40)
              for _ in range(20)]
    assert all(low <= d <= high for d in delays)
    assert len(set(delays)) > 100, "jittered: pods that lost the broker together do not return together"


def test_recovery_retries_never_busy_loop() -> None:
    rng = random.Random(7)
    for attempt in range(1, 50):
        for remaining in (None, -1.0, 0.0, 0.1):
            delay = backoff(attempt, rng, remaining=remaining, ready=False)
            assert delay >= (0.5 if attempt == 1 else 1.0), (attempt, remaining, delay)


# Clock skew: the broker's times (whole seconds) and the sidecar's wall clock disagree. Each row: the
# broker-minus-sidecar offset known so far, the answer (issuedAt as the broker wrote it, whether it is
# a fresh issue, the call's round trip), the sidecar's clock at arrival -> the offset it concludes.
B = T0  # the broker's time when the answer arrives
OFFSETS = [
    pytest.param(0.0, B, True, 0.05, B, 0.0, id="synchronised: the local clock is trusted as is"),
    pytest.param(0.0, B - timedelta(seconds=0.9), True, 0.05, B, 0.0, id="synchronised, issuedAt rounded down"),
    pytest.param(0.0, B, True, 0.05, B + timedelta(seconds=90), -88.95,
                 id="sidecar 90 s ahead: corrected, erring by up to 1 s + the round trip towards less time"),
    pytest.param(0.0, B, True, 0.05, B - timedelta(seconds=90), 90.0, id="sidecar 90 s behind"),
    pytest.param(0.0, B - timedelta(minutes=10), False, 0.05, B + timedelta(seconds=90), 0.0,
                 id="lease extension keeps its first issuedAt: no upper bound from it"),
    pytest.param(-88.95, B - timedelta(minutes=10), False, 0.05, B + timedelta(seconds=90), -88.95,
                 id="extension while 90 s ahead: the offset learned from the first issue stays"),
    pytest.param(-88.95, B, True, 0.05, B + timedelta(seconds=30), -30.0,
                 id="the node's clock was corrected: follow it"),
]


@pytest.mark.parametrize(("previous", "issued_at", "fresh", "round_trip", "local_now", "offset"), OFFSETS)
def test_broker_offset(previous: float, issued_at: datetime, fresh: bool, round_trip: float,
                       local_now: datetime, offset: float) -> None:
    got = broker_offset(previous, issued_at, local_now, fresh=fresh, round_trip=round_trip)
    assert got == pytest.approx(offset, abs=1e-9)


@pytest.mark.parametrize("skew", [-3600.0, -90.0, -30.0, 0.0, 30.0, 90.0, 3600.0])
def test_a_skewed_sidecar_times_a_fresh_credential_like_a_synchronised_one(skew: float) -> None:
    """1 min credential issued now: expires in (59, 60] s and refreshes near 40 s, whatever the skew."""
    rng = random.Random(8)
    issued, expires = T0, T0 + timedelta(minutes=1)
    for fraction in (0.0, 0.5, 0.99):  # where within the second the broker issued it (issuedAt rounds down)
        local_now = T0 + timedelta(seconds=fraction + 0.05 + skew)
        offset = broker_offset(0.0, issued, local_now, fresh=True, round_trip=0.05)
        t = timing(issued, expires, local_now + timedelta(seconds=offset), rng)
        true_left = 60 - fraction - 0.05
        # within the broker's whole-second rounding plus the round trip of the truth, either way
        assert true_left - TIME_RESOLUTION - 0.05 <= t.expires_in <= true_left + TIME_RESOLUTION + 0.05
        assert t.expires_in > 58, "never 'expired on arrival'"
        assert 60 * (2 / 3 - 0.1) - 1.1 <= t.refresh_in <= 60 * (2 / 3 + 0.1)


@pytest.mark.parametrize(("issued", "expires", "now", "refresh_low", "refresh_high", "expires_in"), [
    pytest.param(0, 60, 0, 34.0, 46.0, 60.0, id="fresh 1 min: refresh at 2/3 +- 10 %"),
    pytest.param(0, 100, 40, 0.0, 36.7, 60.0, id="extended lease (first issuedAt kept): what is left counts"),
    pytest.param(0, 60, 59, 0.5, 0.5, 1.0, id="nearly expired: after the floor, not at once"),
    pytest.param(0, 60, 90, 0.5, 0.5, -30.0, id="already expired on the broker's clock (the runner refuses it)"),
    pytest.param(0, 0, 0, 0.5, 0.5, 0.0, id="no lifetime (the runner refuses it)"),
])
def test_timing(issued: int, expires: int, now: int, refresh_low: float, refresh_high: float,
                expires_in: float) -> None:
    rng = random.Random(9)
    at = [timing(T0 + timedelta(seconds=issued), T0 + timedelta(seconds=expires), T0 + timedelta(seconds=now), rng)
          for _ in range(500)]
    assert all(t.expires_in == expires_in for t in at)
    assert all(refresh_low <= t.refresh_in <= refresh_high for t in at)
    assert all(t.refresh_in <= max(REFRESH_FLOOR, t.expires_in) for t in at)
    assert all(t.refresh_in >= max(REFRESH_FLOOR, t.expires_in / 2) for t in at), "the floor after a success"


@pytest.mark.parametrize(("now", "expires", "refresh_in"), [
    pytest.param(40, 60, 20 * 2 / 3, id="renewed at 2/3 without moving the expiry: 2/3 of what is left"),
    pytest.param(59, 60, 2 / 3, id="1 s left: 2/3 s, not at once"),
    pytest.param(61, 60, REFRESH_FLOOR, id="already expired: the floor (the caller drops it)"),
])
def test_a_stalled_renewal_is_not_asked_again_at_once(now: int, expires: int, refresh_in: float) -> None:
    """Found in CI: a vault lease near its maxTTL was renewed 17 times in 0.4 s, each answer keeping
    the same expiry, until the broker replaced it (or its rate limit answered 429)."""
    t = timing(T0, T0 + timedelta(seconds=expires), T0 + timedelta(seconds=now), random.Random(3), stalled=True)
    assert t.refresh_in == pytest.approx(refresh_in)
    not_stalled = timing(T0, T0 + timedelta(seconds=expires), T0 + timedelta(seconds=now), random.Random(3))
    # the 2/3 point has passed: without the hint, half of what is left (never at once)
    assert not_stalled.refresh_in == pytest.approx(max(REFRESH_FLOOR, (expires - now) / 2))


def test_stalled_renewals_end_in_a_few_calls() -> None:
    """Each stalled answer leaves a third as much: from 20 s left, 5 calls reach under 0.1 s."""
    left, calls = 20.0, 0
    while left > 0.1:
        t = timing(T0, T0 + timedelta(seconds=left), T0, random.Random(1), stalled=True)
        left -= t.refresh_in
        calls += 1
    assert calls <= 6


def _answers_per_hour(ttl: float, *, whole: bool, extend: bool) -> int:
    """How many answers one credential gets in an hour of broker time, each refreshed when
    :func:`timing` says. ``whole``: issuedAt rounded down to the second as the broker writes it;
    ``extend``: every renewal extends the same lease by ``ttl`` and keeps its first issuedAt."""
    rng = random.Random(4)
    now, first, calls = 0.123, 0.0, 0
    while now < 3600:
        issued = first if extend and calls else (float(int(now)) if whole else now)
        first = issued
        t = timing(T0 + timedelta(seconds=issued), T0 + timedelta(seconds=now + ttl if extend else issued + ttl),
                   T0 + timedelta(seconds=now), rng)
        now += t.refresh_in + 0.002  # plus a round trip
        calls += 1
    return calls


@pytest.mark.parametrize(("ttl", "whole", "extend", "most"), [
    pytest.param(1.0, True, False, 2 * 3600, id="1 s lifetime, issuedAt in whole seconds: at most 2/s"),
    pytest.param(0.2, False, False, 2 * 3600, id="200 ms lifetime: the floor, 2/s"),
    pytest.param(60.0, False, True, 3600 // 20, id="a lease extended by 60 s each time: every 30-40 s"),
    pytest.param(60.0, True, False, 3600 // 33, id="1 min lifetime: every 34-46 s"),
])
def test_successful_answers_are_never_asked_for_in_a_loop(ttl: float, whole: bool, extend: bool, most: int) -> None:
    """Review finding: with TASKCREDS_TTL=1s the sidecar asked 36 times in 4 s (next_refresh_at
    returns 'now' once the 2/3 point has passed on arrival); a lease extended past 2x its ttl did too."""
    assert _answers_per_hour(ttl, whole=whole, extend=extend) <= most
