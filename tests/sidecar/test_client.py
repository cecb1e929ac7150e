"""The broker client over real mutual TLS with SVIDs from the development authority."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from taskcreds.sidecar import errors
from taskcreds.sidecar.client import BrokerClient
from taskcreds.sidecar.identity import IdentitySource

from taskcreds.devauthority import DevAuthority
from tests.sidecar.fakebroker import BROKER_ID, TOKEN, FakeBroker


@pytest.fixture
async def identity(workload_api) -> AsyncIterator[IdentitySource]:  # noqa: ANN001
    api = workload_api()
    source = IdentitySource(api.socket_uri)
    source.api = api  # type: ignore[attr-defined]  (tests rotate through it)
    await source.start(10)
    yield source
    await source.close()


def make_client(broker: FakeBroker, identity: IdentitySource, token_file: Path,
                expected: str = BROKER_ID) -> BrokerClient:
    return BrokerClient(url=broker.url, broker_spiffe_id=expected, token_file=str(token_file),
                        task="task-1", identity=identity, timeout=3.0)


async def test_issue_renew_revoke_round_trip(broker: FakeBroker, identity: IdentitySource, token_file: Path) -> None:
    client = make_client(broker, identity, token_file)
    try:
        result = await client.issue(["github", "db"], "90s")
        assert [c.name for c in result.credentials] == ["github", "db"]
        github = result.credentials[0]
        assert github.files["token"] in broker.values and github.lease_ref == "lease-github-1"
        assert 85 <= (github.expires_at - github.issued_at).total_seconds() <= 91
        assert "canary" not in repr(github), "values never in repr"
        renewed = await client.renew("github", github.lease_ref)
        assert renewed.lease_ref != github.lease_ref and renewed.files["token"] != github.files["token"]
        assert await client.revoke_task("sigterm") == ["db", "github"]
        assert broker.revoked_with == ["sigterm"]
        with pytest.raises(errors.TaskTerminal):
            await client.issue()
        seen = broker.requests()
        assert {s.token for s in seen} == {TOKEN}
        assert {s.peer for s in seen} == {identity.current.spiffe_id}
    finally:
        await client.close()


@pytest.mark.parametrize(("code", "error"), [
    ("bad_request", errors.BadRequest), ("unauthenticated", errors.Unauthenticated),
    ("policy_denied", errors.PolicyDenied), ("not_found", errors.NotFound),
    ("task_terminal", errors.TaskTerminal), ("too_large", errors.TooLarge),
    ("rate_limited", errors.RateLimited), ("provider_error", errors.ProviderFailed),
    ("unavailable", errors.BrokerUnavailable),
])
async def test_error_codes_become_typed_errors(broker: FakeBroker, identity: IdentitySource, token_file: Path,
                                               code: str, error: type[errors.BrokerError]) -> None:
    broker.fail_with = code
    client = make_client(broker, identity, token_file)
    try:
        with pytest.raises(error) as raised:
            await client.issue()
        assert type(raised.value) is error and raised.value.code == code
        if code == "rate_limited":
            assert raised.value.retry_after == 1.0  # type: ignore[attr-defined]
    finally:
        await client.close()


async def test_a_server_with_another_spiffe_id_never_receives_the_token(
        dev_authority: DevAuthority, identity: IdentitySource, token_file: Path) -> None:
    impostor = await FakeBroker(dev_authority, spiffe_id="spiffe://taskcreds.local/ns/team-a/sa/agent").start()
    client = make_client(impostor, identity, token_file)
    try:
        with pytest.raises(errors.WrongBrokerIdentity, match="nothing was sent") as raised:
            await client.issue()
        assert TOKEN not in str(raised.value)
        assert impostor.seen == [], "no request reached the impostor"
    finally:
        await client.close()
        await impostor.stop()


async def test_a_broker_from_another_trust_domain_fails_the_handshake(identity: IdentitySource,
                                                                       token_file: Path) -> None:
    foreign = await FakeBroker(DevAuthority("other.example", allow=True),
                               spiffe_id="spiffe://other.example/ns/taskcreds-system/sa/taskcreds-operator").start()
    client = make_client(foreign, identity, token_file)
    try:
        with pytest.raises(errors.BrokerUnavailable):
            await client.issue()
        assert foreign.seen == []
    finally:
        await client.close()
        await foreign.stop()


async def test_the_token_file_is_read_on_every_request(broker: FakeBroker, identity: IdentitySource,
                                                       token_file: Path) -> None:
    client = make_client(broker, identity, token_file)
    try:
        await client.issue()
        token_file.write_text("rotated-by-the-kubelet")
        with pytest.raises(errors.Unauthenticated):
            await client.issue()
        assert broker.seen[-1].token == "rotated-by-the-kubelet"
        token_file.unlink()
        with pytest.raises(errors.TokenUnavailable, match=str(token_file)):
            await client.issue()
    finally:
        await client.close()


async def test_next_connection_presents_the_rotated_svid(broker: FakeBroker, identity: IdentitySource,
                                                         token_file: Path) -> None:
    client = make_client(broker, identity, token_file)
    try:
        await client.issue()
        first = broker.seen[-1].peer_cert_sha256
        assert first == identity.current.fingerprint
        identity.api.rotate()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while identity.current.fingerprint == first and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await client.issue()
        assert broker.seen[-1].peer_cert_sha256 == identity.current.fingerprint != first
    finally:
        await client.close()


async def test_long_poll_returns_when_the_status_changes(broker: FakeBroker, identity: IdentitySource,
                                                         token_file: Path) -> None:
    client = make_client(broker, identity, token_file)
    try:
        now = await client.wait_status(None)
        assert (now.status, now.terminal) == ("running", False)
        asyncio.get_running_loop().call_later(0.2, broker.set_status, "completed", "completed")
        started = time.monotonic()
        later = await client.wait_status("running", 20)
        assert (later.status, later.terminal, later.reason) == ("completed", True, "completed")
        assert time.monotonic() - started < 2
        assert broker.seen[-1].path == "/v1/tasks/task-1/status"
    finally:
        await client.close()


async def test_unreachable_broker_is_unavailable(broker: FakeBroker, identity: IdentitySource,
                                                 token_file: Path) -> None:
    await broker.stop()
    client = make_client(broker, identity, token_file)
    try:
        with pytest.raises(errors.BrokerUnavailable, match="unreachable") as raised:
            await client.issue()
        assert TOKEN not in str(raised.value)
    finally:
        await client.close()
