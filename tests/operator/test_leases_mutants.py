"""What a task may hold and what still counts as live, at the edges mutation testing found
unguarded (tests/operator/test_lifetime_cap.py and test_leases.py cover the common cases).

``cap_to_grant``: a lease longer than the task's grant is cut to the grant (never below the 5 min
floor, never when the source ends within a second of it), a static one is never cut, and the
grant runs from when the source was asked or issued, whichever is later. ``dies_by`` and
``live_entries``: a lease counts while its value may still work anywhere, and not a second longer.

Written against leases.py as of commit 359a68b; another engineer is changing ``cap_to_grant`` and
``live_entries``: a change of these edges should change this table on purpose, not by accident.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from taskcreds.operator.leases import cap_to_grant, dies_by, live_entries
from taskcreds.operator.providers.base import Issued

T0 = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)


def issued(expires_in: float, *, issued_after: float = 0.0, static: bool = False) -> Issued:
    return Issued(
        files={"token": "not-a-real-value"},
        lease_ref="ref-1",
        issued_at=T0 + timedelta(seconds=issued_after),
        expires_at=T0 + timedelta(seconds=expires_in),
        static=static,
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# (case, issued, ttl, asked at (s after T0), expected expiry (s after T0), expected source expiry or None)
CAPS = [
    ("source ends before the grant: untouched", issued(300), 600, 0, 300, None),
    ("source ends at the grant: untouched", issued(600), 600, 0, 600, None),
    ("source ends within the 1 s slack: untouched", issued(601), 600, 0, 601, None),
    ("source ends 2 s past the grant: cut", issued(602), 600, 0, 600, 602),
    ("one hour for a 10 minute grant: cut", issued(3600), 600, 0, 600, 3600),
    ("static value: never cut", issued(3600, static=True), 600, 0, 3600, None),
    ("grant below the 5 min floor: the floor", issued(3600), 10, 0, 300, 3600),
    ("grant at the floor", issued(3600), 300, 0, 300, 3600),
    ("grant 1 s below the floor: the floor", issued(3600), 299, 0, 300, 3600),
    ("floor reaching the source's end: untouched", issued(301), 10, 0, 301, None),
    ("floor ending 2 s before the source: cut to the floor", issued(302), 10, 0, 300, 302),
    ("asked later than issued: grant from the ask", issued(3600), 600, 100, 700, 3600),
    ("issued later than asked: grant from the issue", issued(3600, issued_after=50), 600, 0, 650, 3600),
    ("fractional grant rounded down to the second", issued(3600), 600.7, 0, 600, 3600),
]


@pytest.mark.parametrize(("case", "lease", "ttl", "asked", "expires", "source"), CAPS, ids=[c[0] for c in CAPS])
def test_cap_to_grant(
    case: str, lease: Issued, ttl: float, asked: float, expires: float, source: float | None
) -> None:
    held, source_expiry = cap_to_grant(lease, ttl, at(asked))
    assert (held.expires_at, source_expiry) == (at(expires), None if source is None else at(source)), case
    assert (held.files, held.lease_ref, held.issued_at) == (lease.files, lease.lease_ref, lease.issued_at)


def ts(seconds: float) -> str:
    return at(seconds).isoformat().replace("+00:00", "Z")


DIES = [
    ("granted end only", {"expiresAt": ts(60)}, 60),
    ("source end later than the grant", {"expiresAt": ts(60), "sourceExpiresAt": ts(3600)}, 3600),
    ("source end recorded earlier than the grant", {"expiresAt": ts(60), "sourceExpiresAt": ts(30)}, 60),
    ("source end only", {"sourceExpiresAt": ts(90)}, 90),
    ("garbled granted end", {"expiresAt": "soon", "sourceExpiresAt": ts(90)}, 90),
    ("no end at all", {}, None),
]


@pytest.mark.parametrize(("case", "entry", "expected"), DIES, ids=[c[0] for c in DIES])
def test_dies_by_is_the_later_end(case: str, entry: dict[str, Any], expected: float | None) -> None:
    got = dies_by(entry)
    assert got == (None if expected is None else at(expected)), case


def entry(credential: str = "github", **fields: Any) -> dict[str, Any]:
    return {"credential": credential, "leaseRef": fields.pop("ref", "r"), **fields}


LIVE = [
    ("ahead of its grant", entry(expiresAt=ts(120)), True),
    ("past its grant, source still honours it", entry(expiresAt=ts(60), sourceExpiresAt=ts(3600)), True),
    ("past both ends", entry(expiresAt=ts(60), sourceExpiresAt=ts(90)), False),
    ("ending exactly now", entry(expiresAt=ts(100)), False),
    ("ending a second from now", entry(expiresAt=ts(101)), True),
    ("no recorded end (a static value)", entry(), True),
    ("revoked", entry(expiresAt=ts(3600), revokedAt=ts(50)), False),
    ("superseded by a renewal", entry(expiresAt=ts(3600), supersededAt=ts(50)), False),
    ("another credential", entry("vault", expiresAt=ts(3600)), False),
]


@pytest.mark.parametrize(("case", "lease", "live"), LIVE, ids=[c[0] for c in LIVE])
def test_live_entries_at_100_s(case: str, lease: dict[str, Any], live: bool) -> None:
    others = [entry("vault", ref="v", expiresAt=ts(3600)), entry(ref="g2", expiresAt=ts(3600))]
    got = live_entries([others[0], lease, others[1]], "github", at(100))
    expected = ([lease] if live else []) + [others[1]]
    assert got == expected, case
