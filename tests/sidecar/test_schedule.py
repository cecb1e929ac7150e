"""Refresh timing and backoff: pure functions, checked over many random draws."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from taskcreds.sidecar.schedule import MAX_DELAY, MIN_DELAY, backoff, next_refresh_at

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
