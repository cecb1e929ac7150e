"""The broker's token buckets on a fake clock, which mutation testing found unguarded (the broker
tests drive them through requests, never past a refill or a prune).

What a client sees: ``burst`` requests at once, then one every ``1/rate`` seconds; the wait it is
told is exact; a key idle for a full refill is forgotten (and comes back full); a flood of distinct
keys cannot grow the table without bound; a token given back or charged moves the next wait.
"""

from __future__ import annotations

import pytest
from taskcreds.operator.broker.ratelimit import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def buckets(rate: float = 2.0, burst: int = 3, **kw: float) -> tuple[TokenBuckets, Clock]:
    clock = Clock()
    return TokenBuckets(rate, burst, clock, **kw), clock  # type: ignore[arg-type]


# (case, rate, burst, seconds between takes, how many takes, the answers: None = taken, else the wait)
TAKES = [
    ("burst of 3 at once, then a wait of 1/rate", 2.0, 3, 0.0, 4, [None, None, None, 0.5]),
    ("a burst of 0 still lets one through", 2.0, 0, 0.0, 2, [None, 0.5]),
    ("a burst of 1: one, then wait", 4.0, 1, 0.0, 2, [None, 0.25]),
    ("refill at the rate: one every 0.5 s", 2.0, 1, 0.5, 4, [None, None, None, None]),
    ("just under the refill: wait the rest", 2.0, 1, 0.25, 2, [None, 0.25]),
    ("refill never exceeds the burst", 1.0, 2, 100.0, 4, [None, None, None, None]),
]


@pytest.mark.parametrize(("case", "rate", "burst", "step", "n", "answers"), TAKES, ids=[c[0] for c in TAKES])
def test_take(case: str, rate: float, burst: int, step: float, n: int, answers: list[float | None]) -> None:
    b, clock = buckets(rate, burst)
    got = []
    for _ in range(n):
        got.append(b.take("pod"))
        clock.now += step
    assert got == pytest.approx(answers), case


def test_refill_is_capped_at_the_burst() -> None:
    b, clock = buckets(rate=1.0, burst=2)
    clock.now += 3600
    assert [b.take("pod") for _ in range(3)] == [None, None, 1.0]


def test_keys_are_independent() -> None:
    b, _ = buckets(rate=1.0, burst=1)
    assert (b.take("a"), b.take("b"), b.take("a")) == (None, None, 1.0)


def test_a_refused_take_costs_nothing() -> None:
    b, clock = buckets(rate=1.0, burst=1)
    assert b.take("pod") is None
    assert b.take("pod") == 1.0 and b.take("pod") == 1.0
    clock.now += 1.0
    assert b.take("pod") is None


def test_wait_says_when_without_taking() -> None:
    b, clock = buckets(rate=2.0, burst=1)
    assert b.wait("pod") is None and b.wait("pod") is None  # nothing taken
    assert b.take("pod") is None
    assert b.wait("pod") == pytest.approx(0.5)
    clock.now += 0.5
    assert b.wait("pod") is None


def test_charge_after_the_fact_can_go_into_debt_down_to_minus_burst() -> None:
    b, clock = buckets(rate=1.0, burst=2)
    b.charge("pod")
    assert b.level("pod") == pytest.approx(1.0)  # one charge costs one token
    for _ in range(4):
        b.charge("pod")
    assert b.level("pod") == pytest.approx(-2.0)  # five charged, at most burst of debt
    assert b.wait("pod") == pytest.approx(3.0)  # from -2 to 1 at 1 per second
    clock.now += 3.0
    assert b.wait("pod") is None


def test_give_back_returns_a_token_but_never_past_the_burst() -> None:
    b, _ = buckets(rate=1.0, burst=2)
    assert b.take("pod") is None and b.take("pod") is None
    b.give_back("pod")
    assert b.level("pod") == pytest.approx(1.0)
    b.give_back("pod")
    b.give_back("pod")
    assert b.level("pod") == pytest.approx(2.0)
    b.give_back("never-seen")  # an unknown key is not created
    assert len(b) == 1


def test_idle_keys_are_forgotten_at_the_next_prune_after_a_refill() -> None:
    b, clock = buckets(rate=1.0, burst=2, prune_every=10.0)
    b.take("idle")
    clock.now += 5.0
    b.take("busy")
    clock.now += 5.5  # prune due; "idle" refilled 10.5 s ago (> 2 s), "busy" 5.5 s ago (> 2 s too)
    b.take("new")
    assert len(b) == 1  # both refilled: forgotten, only the new key is left
    clock.now += 1.0
    b.take("new2")  # no prune before prune_every
    assert len(b) == 2
    b.take("new")
    b.take("new")  # emptied; a full refill (2 s) before the next prune
    clock.now += 10.5
    b.take("new3")
    assert len(b) == 1


def test_a_key_still_refilling_is_not_forgotten() -> None:
    b, clock = buckets(rate=0.1, burst=1, prune_every=1.0)  # a refill takes 10 s
    assert b.take("pod") is None
    clock.now += 5.0
    b.take("other")  # prunes: "pod" is half refilled and must keep its debt
    assert len(b) == 2
    assert b.take("pod") == pytest.approx(5.0)


def test_a_flood_of_distinct_keys_is_bounded() -> None:
    b, clock = buckets(rate=0.001, burst=1, prune_every=1e9, max_keys=10)
    for i in range(11):
        b.take(f"k{i}")
    assert len(b) == 11  # the table may pass max_keys by one before it is pruned
    b.take("k11")  # over max_keys: pruned (nothing has refilled), cleared, the new key added
    assert len(b) == 1
    assert b.take("k0") is None  # forgotten: comes back full


def test_clear_forgets_every_key() -> None:
    b, _ = buckets(rate=1.0, burst=1)
    b.take("a")
    b.clear()
    assert len(b) == 0 and b.take("a") is None


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1)], ids=["zero rate", "negative rate"])
def test_a_zero_rate_waits_long_but_finite(rate: float, burst: int) -> None:
    b, _ = buckets(rate=rate, burst=burst)
    assert b.take("pod") is None
    wait = b.take("pod")
    assert wait is not None and 1e5 < wait < 1e7


def test_a_table_at_max_keys_after_a_prune_keeps_its_debts() -> None:
    b, clock = buckets(rate=0.001, burst=1, prune_every=10.0, max_keys=2)
    b.take("k0")
    b.take("k1")
    clock.now += 11.0  # prune due; neither key has refilled (1000 s)
    b.take("k2")  # the table holds max_keys after the prune: not over it, nothing cleared
    assert len(b) == 3
    assert b.take("k0") is not None  # k0 still has to wait
