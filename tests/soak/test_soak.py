"""The soak, shortened for CI: 60 pods over ~20 s against one real operator, the same bounds as the
full 10-minute run (``python -m tests.soak``). Each bound is its own named test on one shared run."""

from __future__ import annotations

import asyncio
import math
from collections import Counter

import pytest

from tests.soak.soak import Bounds, PodRecord, SoakParams, SoakResult, markdown, pct, run_soak

CI = SoakParams(pods=60, duration=20.0, concurrency=15, sample_every=1.0, idle_timeout=0.5)
CHECKS = [
    "leases left",
    "revocations stuck",
    "errors",
    "file descriptors",
    "loop tasks",
    "threads",
    "lifecycle tables",
    "api connections",
    "revocation lag",
    "rss",
    "operator errors logged",
    "every pod ran",
]


@pytest.fixture(scope="module")
def soak() -> SoakResult:
    result = asyncio.run(run_soak(CI))
    print("\n" + markdown(result))
    return result


@pytest.mark.parametrize("check", CHECKS)
def test_shortened_soak_holds_every_bound(soak: SoakResult, check: str) -> None:
    checks = soak.checks()
    assert check in checks, f"the soak has no check named {check!r}: {sorted(checks)}"
    assert checks[check] is None, f"{checks[check]}\n\n{markdown(soak)}"


def test_shortened_soak_exercised_what_it_claims(soak: SoakResult) -> None:
    """Renewals, all three endings and the long-poll really happened: bounds on nothing prove nothing."""
    endings = Counter(p.ending for p in soak.pods if p.lag_s is not None)
    assert set(endings) == {"completed", "failed", "deleted"}, endings
    assert len(soak.renew_s) >= CI.pods, f"only {len(soak.renew_s)} renewals"
    told = [p for p in soak.pods if p.sidecar_told_s is not None and p.ending != "deleted"]
    assert len(told) >= CI.pods * 2 // 3 - 1, "the status long-poll did not tell most sidecars the task ended"
    assert soak.peak_live >= CI.concurrency // 2, f"peak live pods {soak.peak_live}"
    assert soak.long_runner["renewals"] >= 10 and soak.long_runner["entries"] >= 10, soak.long_runner


# --- the bounds themselves can fail (synthetic results, no operator) -----------------------------------


def _result(**changes: object) -> SoakResult:
    """A result that holds every bound, with ``changes`` applied."""
    r = SoakResult(SoakParams(pods=2), Bounds())
    r.pods = [
        PodRecord("soak-0000", "completed", 2, lag_s=0.05),
        PodRecord("soak-0001", "deleted", 2, lag_s=0.04),
    ]
    base = {
        "own_fds": 15,
        "tasks": 40,
        "threads": 5,
        "api_conns": 6,
        "lifecycle_latest": 0,
        "lifecycle_ended": 0,
        "lifecycle_deadlines": 0,
        "rss_kb": 100 * 1024,
    }
    r.before, r.after = dict(base), dict(base)
    r.samples = [(float(t), {"rss_kb": 100 * 1024}) for t in range(10)]
    r.load_window = (0.0, 9.0)
    for key, value in changes.items():
        if key.startswith("after_"):
            r.after[key[6:]] = value
        else:
            setattr(r, key, value)
    return r


@pytest.mark.parametrize(
    ("case", "changes", "broken"),
    [
        ("a TaskLease left behind", {"leases_left": 1}, "leases left"),
        ("a TaskLease collected but never Revoked", {"leases_not_revoked": 1}, "leases left"),
        ("a revocation that never finished", {"stuck": ["soak-0001"]}, "revocations stuck"),
        ("a renewal failed mid-task", {"errors": Counter({"renew: BrokerUnavailable": 1})}, "errors"),
        ("five more fds after the run", {"after_own_fds": 20}, "file descriptors"),
        ("three more loop tasks after the run", {"after_tasks": 43}, "loop tasks"),
        ("a pod left in the lifecycle table", {"after_lifecycle_latest": 1}, "lifecycle tables"),
        ("API connections beyond the pools", {"after_api_conns": 500}, "api connections"),
        (
            "no lag measured",
            {"pods": [PodRecord(f"soak-000{i}", "failed", 2) for i in range(2)]},
            "revocation lag",
        ),
        (
            "a slow revocation",
            {"pods": [PodRecord(f"soak-000{i}", "failed", 2, lag_s=9.0) for i in range(2)]},
            "revocation lag",
        ),
        (
            "the sweep failed once",
            {"after_warnings": {"ERROR taskcreds.lifecycle": 1}},
            "operator errors logged",
        ),
        (
            "RSS climbing 40 MB",
            {"samples": [(float(t), {"rss_kb": (100 + 5 * t) * 1024}) for t in range(10)]},
            "rss",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_broken_bound_is_reported_by_name(case: str, changes: dict[str, object], broken: str) -> None:
    assert _result().failures() == [], "the baseline result must hold every bound"
    checks = _result(**changes).checks()
    assert [name for name, message in checks.items() if message] == [broken], (case, checks)


def test_percentile_is_nearest_rank() -> None:
    assert pct([], 0.99) != pct([], 0.99)  # NaN: no figure is not a fast figure
    assert math.isnan(pct([], 0.5))
    assert pct([3.0, 1.0, 2.0], 0.5) == 2.0
    assert pct([float(i) for i in range(1, 101)], 0.99) == 99.0


def test_rss_per_running_pod_fits_the_ramp_up_and_ignores_the_drain() -> None:
    r = SoakResult(SoakParams(pods=2), Bounds())
    ramp = [
        (float(t), {"rss_kb": (100 + 0.5 * live) * 1024, "live_pods": live})
        for t, live in enumerate(range(0, 201, 20))
    ]
    # draining: pods end, CPython keeps the memory; a fit over these would halve the figure
    drain = [
        (20.0 + t, {"rss_kb": 200 * 1024, "live_pods": live}) for t, live in enumerate(range(180, -1, -20))
    ]
    r.samples = ramp + drain
    assert r.rss_per_live_pod() == pytest.approx(0.5)
    r.samples = ramp[:2]
    assert math.isnan(r.rss_per_live_pod())  # too few samples: no figure, not a small one
