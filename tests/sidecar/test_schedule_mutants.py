"""Refresh timing cases that mutation testing found unguarded (tests/sidecar/test_schedule.py covers
the common ones).

A credential with no lifetime left to divide (expiry at or before its issue time) is refreshed at
once, even when its ``issuedAt`` lies in the future of ``now`` (the broker's clock is ahead): without
that rule the sidecar would wait until the bogus issue time instead of asking again.
"""

# ruff: noqa: S311 - seeded generators for reproducible draws; nothing here is cryptographic

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from taskcreds.sidecar.schedule import next_refresh_at

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
S = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("issued", "expires"),
    [
        (NOW + 10 * S, NOW + 10 * S),
        (NOW + 10 * S, NOW + 5 * S),
        (NOW + 10 * S, NOW - 5 * S),
        (NOW - 10 * S, NOW - 10 * S),
    ],
    ids=[
        "zero lifetime issued in the future",
        "expiry before issue, both in the future",
        "expiry before issue, expiry already past",
        "zero lifetime in the past",
    ],
)
def test_no_lifetime_refreshes_now(issued: datetime, expires: datetime) -> None:
    rng = random.Random(7)
    assert all(next_refresh_at(issued, expires, NOW, rng) == NOW for _ in range(50))
