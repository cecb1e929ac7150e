"""``max_live_leases`` counts a capped credential until it is dead at its source, not until its
granted end: a github-app token past ``expiresAt`` still works at GitHub until the sweep revokes it
(30 s, or up to 1 h while GitHub's DELETE fails). Before the fix, 11 issues 1.2 s apart with ttl=1s
all answered 200 and left 11 live tokens at GitHub against a limit of 8."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from taskcreds.operator import leases
from taskcreds.operator.broker.server import BROKER_KEY

from tests.fakes.github import FakeGitHub
from tests.fakes.github import github as github  # noqa: F401  (fixture)
from tests.operator.test_capped_churn import github_world
from tests.operator.test_lifetime_cap import at_github, replica, ts

T0 = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)


def entry(granted: float, source: float | None = None, **extra: Any) -> dict[str, Any]:
    """An entry granted until T0 + ``granted`` s, honoured by its source until T0 + ``source`` s."""
    body = {"credential": "gh", "leaseRef": f"ref-{granted}-{source}",
            "expiresAt": leases.format_time(T0 + timedelta(seconds=granted)), **extra}
    if source is not None:
        body["sourceExpiresAt"] = leases.format_time(T0 + timedelta(seconds=source))
    return body


#: case -> (entry, whether it counts as live at T0, when it should stop counting, seconds after T0)
LIVE = {
    "within its grant": (entry(10), True, 10),
    "past its grant, nothing longer at the source": (entry(-10), False, None),
    "cut, past its grant, alive at GitHub: counts; the next sweep frees it": (entry(-10, 3000), True, 30),
    "cut, past its grant, its source end near: frees then": (entry(-10, 5), True, 5),
    "cut, within its grant": (entry(20, 3000), True, 20),
    "cut, dead at its source too": (entry(-20, -10), False, None),
    "cut but revoked": (entry(-10, 3000, revokedAt="2026-11-29T09:59:55Z"), False, None),
    "cut but superseded (its holder revokes it)": (entry(-10, 3000, supersededAt="2026-11-29T09:59:55Z"),
                                                   False, None),
}


@pytest.mark.parametrize("case", list(LIVE))
def test_what_counts_as_live(case: str) -> None:
    given, live, frees = LIVE[case]
    assert (leases.live_entries([given], "gh", T0) == [given]) is live, case
    if live:
        with pytest.raises(leases.TooManyLive) as caught:
            leases.check_live_limit([given], [{"credential": "gh"}], 1, T0)
        assert caught.value.next_expiry == T0 + timedelta(seconds=frees), case
    else:
        leases.check_live_limit([given], [{"credential": "gh"}], 1, T0)


async def test_capped_github_tokens_past_their_grant_still_count_against_max_live_leases(
    github: FakeGitHub,  # noqa: F811
) -> None:
    """maxTTL 3 s keeps the grant floor at 3 s, so real time passes the grants in a few seconds."""
    cluster = github_world(github, "3s")
    a = replica(cluster, "op-a")
    await a.start()
    try:
        limit = a.app[BROKER_KEY].settings.max_live_leases
        pod = a.add_pod("agent-1", credentials="gh")
        tokens = []
        for _ in range(limit):
            reply = await a.issue(a.agent(pod), ttl="1s")
            assert reply.status == 200, reply.doc
            tokens.append(reply.doc["credentials"][0]["files"]["token"])
        granted_end = ts(reply.doc["credentials"][0]["expiresAt"])
        assert granted_end - ts(reply.doc["credentials"][0]["issuedAt"]) == timedelta(seconds=3)

        # every grant has ended, no sweep has run: all still work at GitHub
        await asyncio.sleep((granted_end - datetime.now(UTC)).total_seconds() + 0.5)
        assert [await at_github(github, t) for t in tokens] == [200] * limit

        refused = await a.issue(a.agent(pod), ttl="1s")
        assert (refused.status, refused.code) == (429, "rate_limited"), refused.doc
        assert f"{limit} live leases" in refused.doc["error"]["message"]
        assert 1 <= float(refused.headers["Retry-After"]) <= 30, "retry after the next sweep, not GitHub's hour"
        assert len(github.alive_tokens()) == limit, "nothing more minted at GitHub"

        # the sweep revokes them at GitHub: issuing works again
        await leases.revoke_expired(cluster, a.providers, metrics=None)
        assert github.alive_tokens() == []
        again = await a.issue(a.agent(pod), ttl="1s")
        assert again.status == 200, again.doc
    finally:
        await a.close()
        await a.providers["github-app"].aclose()
