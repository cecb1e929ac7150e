"""The broker client against the real broker, over real mutual TLS with SVIDs from the development
authority, TokenReview by the Kubernetes API stand-in."""

from __future__ import annotations

import asyncio
import errno
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from taskcreds.sidecar import errors
from taskcreds.sidecar.client import BrokerClient
from taskcreds.sidecar.identity import IdentitySource

from taskcreds.devauthority import DevAuthority
from taskcreds.svid import SvidError
from tests.sidecar.conftest import BROKER_ID, POD, TASK, RealBroker, jwt_claims, sha256


@pytest.fixture
async def identity(workload_api) -> AsyncIterator[IdentitySource]:  # noqa: ANN001
    api = workload_api()
    source = IdentitySource(api.socket_uri)
    source.api = api  # type: ignore[attr-defined]  (tests rotate through it)
    await source.start(10)
    yield source
    await source.close()


@pytest.fixture
async def client(broker: RealBroker, identity: IdentitySource, token_file: Path) -> AsyncIterator[BrokerClient]:
    c = make_client(broker.url, identity, token_file)
    yield c
    await c.close()


def make_client(url: str, identity: IdentitySource, token_file: Path, *, expected: str = BROKER_ID,
                task: str = TASK) -> BrokerClient:
    return BrokerClient(url=url, broker_spiffe_id=expected, token_file=str(token_file), task=task,
                        identity=identity, timeout=3.0)


async def test_issue_renew_revoke_round_trip(broker: RealBroker, client: BrokerClient, identity: IdentitySource,
                                             token_file: Path) -> None:
    result = await client.issue(["github", "db"], "90s")
    assert [c.name for c in result.credentials] == ["github", "db"]
    github, db = result.credentials
    assert set(github.files) == {"token"} and set(db.files) == {"password"}, "the sources' spec.files"
    claims = jwt_claims(github.files["token"])
    assert (claims["credential"], claims["pod"], claims["task"]) == ("github", POD, TASK)
    assert 89 <= (github.expires_at - github.issued_at).total_seconds() <= 90
    assert github.files["token"] not in repr(github), "values never in repr"
    recorded = {e["leaseRef"] for e in broker.lease_entries()}
    assert {github.lease_ref, db.lease_ref} <= recorded, "the broker recorded both leases on the TaskLease"

    renewed = await client.renew("github", github.lease_ref)
    assert renewed.lease_ref != github.lease_ref and renewed.files["token"] != github.files["token"]
    assert broker.jwt_revoked(github.files["token"]), "the replaced token is on the deny list"

    assert await client.revoke_task("sigterm") == ["db", "github"]
    lease = broker.lease()
    assert lease is not None and lease["status"]["phase"] == "Revoked"
    assert broker.jwt_revoked(renewed.files["token"]) and broker.jwt_revoked(db.files["password"])
    with pytest.raises(errors.TaskTerminal):
        await client.issue()
    assert {s.token_sha256 for s in broker.seen} == {sha256(token_file.read_text().strip())}
    assert {s.peer_cert_sha256 for s in broker.seen} == {identity.current.fingerprint}


async def _flood(client: BrokerClient) -> None:
    """More status reads than the broker's per-pod burst (20) allows."""
    for _ in range(40):
        await client.wait_status(None)


# Each documented error code, produced by the real broker the way it happens in a cluster.
CASES: list[tuple[str, type[errors.BrokerError], Callable[[RealBroker, BrokerClient, Path], Awaitable[object]]]] = [
    ("bad_request", errors.BadRequest, lambda b, c, t: c.issue(ttl="soon")),
    ("unauthenticated", errors.Unauthenticated,
     lambda b, c, t: (t.write_text("not-a-token"), c.issue())[1]),
    ("policy_denied", errors.PolicyDenied, lambda b, c, t: c.issue(["not-granted"])),
    ("not_found", errors.NotFound, lambda b, c, t: c.renew("github", "jwt:no-such-lease:1")),
    ("task_terminal", errors.TaskTerminal, lambda b, c, t: c.revoke_task("test")),  # then issue (below)
    ("too_large", errors.TooLarge, lambda b, c, t: c.issue(["x" * 100] * 1000)),
    ("rate_limited", errors.RateLimited, lambda b, c, t: _flood(c)),
    ("provider_error", errors.ProviderFailed, lambda b, c, t: c.issue(["broken"])),
    ("unavailable", errors.BrokerUnavailable, lambda b, c, t: (b.kube.set_down(True), c.issue())[1]),
]


@pytest.mark.parametrize(("code", "error", "cause"), CASES, ids=[c[0] for c in CASES])
async def test_error_codes_become_typed_errors(
        broker: RealBroker, client: BrokerClient, token_file: Path, code: str, error: type[errors.BrokerError],
        cause: Callable[[RealBroker, BrokerClient, Path], Awaitable[object]]) -> None:
    if code == "provider_error":  # the pod must ask for the broken source for the broker to try it
        broker.add_pod("agent-broken", credentials="broken")
        token_file.write_text(broker.token("agent-broken"))
    try:
        with pytest.raises(error) as raised:
            await cause(broker, client, token_file)
            await client.issue()  # task_terminal: the call after the revoke
    finally:
        broker.kube.set_down(False)
    assert type(raised.value) is error and raised.value.code == code
    assert token_file.read_text().strip() not in str(raised.value), "never the token in a message"
    if code == "rate_limited":
        assert raised.value.retry_after >= 1.0  # type: ignore[attr-defined]


async def test_a_server_with_another_spiffe_id_never_receives_the_token(
        broker: RealBroker, dev_authority: DevAuthority, identity: IdentitySource, token_file: Path) -> None:
    url = await broker.serve_as(dev_authority.mint_x509_svid("spiffe://taskcreds.local/ns/team-a/sa/agent"))
    client = make_client(url, identity, token_file)
    try:
        with pytest.raises(errors.WrongBrokerIdentity, match="nothing was sent") as raised:
            await client.issue()
        assert token_file.read_text().strip() not in str(raised.value)
        assert broker.seen == [], "no request reached the impostor"
    finally:
        await client.close()


async def test_a_broker_from_another_trust_domain_fails_the_handshake(
        broker: RealBroker, identity: IdentitySource, token_file: Path) -> None:
    foreign = DevAuthority("other.example", allow=True)
    url = await broker.serve_as(
        foreign.mint_x509_svid("spiffe://other.example/ns/taskcreds-system/sa/taskcreds-operator"))
    client = make_client(url, identity, token_file)
    try:
        with pytest.raises(errors.BrokerUnavailable):
            await client.issue()
        assert broker.seen == []
    finally:
        await client.close()


async def test_the_token_file_is_read_on_every_request(broker: RealBroker, client: BrokerClient,
                                                       token_file: Path) -> None:
    await client.issue()
    token_file.write_text("rotated-but-garbage")
    with pytest.raises(errors.Unauthenticated):
        await client.issue()
    assert broker.seen[-1].token_sha256 == sha256("rotated-but-garbage")
    rotated = broker.token()  # the kubelet's next projected token for the same pod
    token_file.write_text(rotated)
    await client.issue()
    assert broker.seen[-1].token_sha256 == sha256(rotated)
    token_file.unlink()
    with pytest.raises(errors.TokenUnavailable, match=str(token_file)):
        await client.issue()


async def test_next_connection_presents_the_rotated_svid(broker: RealBroker, client: BrokerClient,
                                                         identity: IdentitySource) -> None:
    await client.issue()
    first = broker.seen[-1].peer_cert_sha256
    assert first == identity.current.fingerprint
    identity.api.rotate()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while identity.current.fingerprint == first and time.monotonic() < deadline:  # noqa: ASYNC110 - set by a thread
        await asyncio.sleep(0.02)
    await client.issue()
    assert broker.seen[-1].peer_cert_sha256 == identity.current.fingerprint != first


async def test_long_poll_returns_when_the_status_changes(broker: RealBroker, client: BrokerClient) -> None:
    now = await client.wait_status(None)
    assert (now.status, now.terminal) == ("running", False)

    async def complete() -> None:
        await asyncio.sleep(0.2)
        await broker.set_status("completed")

    patcher = asyncio.create_task(complete())
    started = time.monotonic()
    later = await client.wait_status("running", 20)
    await patcher
    assert (later.status, later.terminal, later.reason) == ("completed", True, "completed")
    assert time.monotonic() - started < 1.5
    assert broker.seen[-1].path == f"/v1/tasks/{TASK}/status"


async def test_unreachable_broker_is_unavailable(broker: RealBroker, client: BrokerClient,
                                                 token_file: Path) -> None:
    await broker.stop()
    with pytest.raises(errors.BrokerUnavailable, match="unreachable") as raised:
        await client.issue()
    assert token_file.read_text().strip() not in str(raised.value)


class _FailingOnce:
    """The identity source, whose next ``ssl_context()`` calls fail as a loaded node makes them fail."""

    def __init__(self, real: IdentitySource, failures: list[Exception]) -> None:
        self.real, self.failures = real, failures

    def ssl_context(self) -> ssl.SSLContext:
        if self.failures:
            raise self.failures.pop(0)
        return self.real.ssl_context()


@pytest.mark.parametrize("failure", [
    pytest.param(OSError(errno.EMFILE, "Too many open files"), id="memfd_create: EMFILE"),
    pytest.param(SvidError("the SVID's key does not match its certificate"), id="SvidError"),
])
async def test_a_local_tls_setup_failure_is_retryable_and_sends_nothing(
        broker: RealBroker, identity: IdentitySource, token_file: Path, failure: Exception) -> None:
    """Review finding: an OSError from loading the SVID escaped as a non-broker error and the runner
    ended the task for good. It is BrokerUnavailable (retried with backoff); the next call works."""
    client = make_client(broker.url, _FailingOnce(identity, [failure]), token_file)  # type: ignore[arg-type]
    try:
        with pytest.raises(errors.BrokerUnavailable, match=type(failure).__name__) as raised:
            await client.issue()
        assert raised.value.retryable
        assert broker.seen == [], "nothing reached the broker"
        result = await client.issue()
        assert [c.name for c in result.credentials] == ["github", "db"]
    finally:
        await client.close()
