"""The runner's refresh loop under failure: the real writer (tmpfs), redactor and metrics, with a
scripted broker client (answers made per call, hangs and errors on demand) and a stand-in identity,
so each case runs in a second or two with lifetimes of about a second."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from taskcreds.sidecar.client import IssuedCredential, IssueResult, TaskStatus
from taskcreds.sidecar.config import from_env
from taskcreds.sidecar.errors import BrokerUnavailable, NotFound
from taskcreds.sidecar.redact import Redactor
from taskcreds.sidecar.runner import Runner
from taskcreds.sidecar.writer import CredentialWriter

from taskcreds.metrics import register_sidecar
from tests.sidecar.conftest import TASK, sidecar_env

Answer = Callable[[str, int], "IssuedCredential | BaseException"]


def credential(name: str, n: int, issued: datetime, expires: datetime) -> IssuedCredential:
    return IssuedCredential(name=name, provider="jwt", lease_ref=f"lease-{name}-{n}", issued_at=issued,
                            expires_at=expires, renewable=True, static=False, delivery="file",
                            files={"token": f"scripted-value-{name}-{n:06d}"})


def lasting(seconds: float, *, whole: bool = False) -> Answer:
    """Answers valid for ``seconds`` from now; ``whole``: issuedAt in whole seconds, as the broker writes it."""
    def make(name: str, n: int) -> IssuedCredential:
        now = datetime.now(UTC)
        issued = now.replace(microsecond=0) if whole else now
        return credential(name, n, issued, issued + timedelta(seconds=seconds))
    return make


class FakeIdentity:
    current = SimpleNamespace(expires_at=datetime.now(UTC) + timedelta(hours=1), spiffe_id="spiffe://test/agent")

    async def start(self, timeout: float) -> Any:  # noqa: ASYNC109 - IdentitySource.start's signature
        return self.current

    def ssl_context(self) -> Any:
        return None

    async def close(self) -> None:
        pass


@dataclass
class ScriptedClient:
    """The broker client as the runner uses it. ``issue``/``renew`` answer ``answer(name, call)``
    (raised when it is an exception); ``hang`` makes every later issue/renew wait forever (a
    partitioned broker: packets held, nothing refused). The status long-poll never answers."""

    answer: Answer
    hang: bool = False
    calls: list[tuple[str, str, float]] = field(default_factory=list)

    async def _one(self, kind: str, name: str) -> IssuedCredential:
        self.calls.append((kind, name, time.monotonic()))
        if self.hang:
            await asyncio.Event().wait()
        await asyncio.sleep(0.002)  # a round trip
        result = self.answer(name, len(self.calls))
        if isinstance(result, BaseException):
            raise result
        return result

    async def issue(self, credentials: list[str], ttl: str | None = None) -> IssueResult:
        creds = [await self._one("issue", n) for n in credentials]
        return IssueResult(TASK, "running", None, tuple(creds))

    async def renew(self, name: str, lease_ref: str, ttl: str | None = None) -> IssuedCredential:
        return await self._one("renew", name)

    async def wait_status(self, known: str | None, wait: float = 30.0) -> TaskStatus:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def revoke_task(self, reason: str, *, timeout: float | None = None) -> list[str]:  # noqa: ASYNC109
        return []

    async def close(self) -> None:
        pass


@dataclass
class Running:
    runner: Runner
    client: ScriptedClient
    directory: Path

    def on_disk(self, name: str) -> str | None:
        try:
            return (self.directory / name / "token").read_text()
        except FileNotFoundError:
            return None

    async def wait_for(self, check: Callable[[], bool], timeout: float, what: str) -> None:  # noqa: ASYNC109
        end = time.monotonic() + timeout
        while not check():
            if time.monotonic() > end:
                raise AssertionError(f"not within {timeout} s: {what}")
            await asyncio.sleep(0.01)


@pytest.fixture
async def start(shm_dir: Path) -> AsyncIterator[Callable[..., Running]]:
    tasks: list[asyncio.Task[int]] = []
    runners: list[Runner] = []

    def make(client: ScriptedClient, credentials: str = "github") -> Running:
        env = sidecar_env(directory=shm_dir, broker_url="https://127.0.0.1:1", token_file=Path("/nonexistent"),
                          socket_uri="unix:///nonexistent", credentials=credentials)
        writer = CredentialWriter(str(shm_dir), task=TASK, grace=0.2)
        writer.prepare()
        runner = Runner(from_env(env), identity=FakeIdentity(), client=client, writer=writer,  # type: ignore[arg-type]
                        redactor=Redactor(), metrics=register_sidecar())
        runners.append(runner)
        tasks.append(asyncio.create_task(runner.run()))
        return Running(runner, client, shm_dir)

    yield make
    for runner in runners:
        runner.request_stop()
    for task in tasks:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)


async def test_a_credential_is_removed_at_its_expiry_while_its_renewal_hangs(start: Callable[..., Running]) -> None:
    """A partitioned broker (the renewal neither answers nor fails) must not keep an expired
    credential on disk or the pod ready: docs/sidecar.md, 'Broker and failures'."""
    client = ScriptedClient(lasting(1.2))
    run = start(client)
    await run.wait_for(lambda: run.runner.readiness()[0], 2, "ready")
    value = run.on_disk("github")
    assert value is not None
    expires_at = time.monotonic() + run.runner.expires_in("github")
    client.hang = True  # the renewal at ~2/3 of the lifetime waits forever
    await run.wait_for(lambda: any(k == "renew" for k, _, _ in client.calls), 2, "a renewal in flight")
    await run.wait_for(lambda: run.on_disk("github") is None, 2, "the expired credential removed")
    removed_late = time.monotonic() - expires_at
    assert removed_late < 0.2, f"removed {removed_late:.2f} s after its expiry"
    ready, details = run.runner.readiness()
    assert not ready and details["missing"] == ["github"]


async def test_readiness_counts_an_expired_credential_as_missing_before_it_is_removed(
        start: Callable[..., Running]) -> None:
    """Between its expiry and the moment the loop removes it (a busy loop), /readyz already says 503."""
    run = start(ScriptedClient(lasting(30)))
    await run.wait_for(lambda: run.runner.readiness()[0], 2, "ready")
    refresh_at, _ = run.runner._due["github"]
    run.runner._due["github"] = (refresh_at, time.monotonic() - 0.001)  # as if its expiry just passed
    ready, details = run.runner.readiness()
    assert not ready and details["missing"] == ["github"]


def _no_lifetime(name: str, n: int) -> IssuedCredential:
    now = datetime.now(UTC).replace(microsecond=0)
    return credential(name, n, now, now)


@pytest.mark.parametrize(("answer", "most_calls", "ever_ready"), [
    pytest.param(_no_lifetime, 5, False, id="expiresAt == issuedAt: a failure, backed off, never written"),
    pytest.param(lasting(0.2), 6, True, id="200 ms lifetime: written, asked again after the 0.5 s floor"),
    pytest.param(lasting(1.0, whole=True), 6, True, id="1 s lifetime, issuedAt in whole seconds"),
])
async def test_useless_answers_are_not_asked_for_in_a_loop(
        start: Callable[..., Running], answer: Answer, most_calls: int, ever_ready: bool) -> None:
    """Review finding: 232 broker calls in 2 s for answers with no lifetime, 36 in 4 s at
    TASKCREDS_TTL=1s against the real broker (and as many TaskLease entries)."""
    run = start(ScriptedClient(answer))
    seen_ready, seen_on_disk = False, False
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        seen_ready = seen_ready or run.runner.readiness()[0]
        seen_on_disk = seen_on_disk or run.on_disk("github") is not None
        await asyncio.sleep(0.01)
    calls = len(run.client.calls)
    assert 2 <= calls <= most_calls, f"{calls} broker calls in 2 s"
    assert seen_ready == ever_ready and seen_on_disk == ever_ready


@pytest.mark.parametrize(("remaining", "longest"), [
    pytest.param(3000.0, 60.0, id="this credential has 50 min left: up to 60 s, another being missing or not"),
    pytest.param(20.0, 5.0, id="20 s left: a quarter of it"),
    pytest.param(0.0, 2.0, id="nothing valid of this one: within 2 s"),
])
async def test_the_retry_cap_follows_the_credential_not_the_pod(
        start: Callable[..., Running], remaining: float, longest: float) -> None:
    """Review finding: a credential with 3000 s left retried every 0.6-2 s while another one was
    missing, so in a broker outage every pod asked ~0.75 times a second indefinitely."""
    def answer(name: str, n: int) -> IssuedCredential | BaseException:
        if name == "github":
            return lasting(3600)(name, n)
        return lasting(0.3)(name, n) if n <= 2 else BrokerUnavailable("db's source is down")
    run = start(ScriptedClient(answer), credentials="github,db")
    await run.wait_for(lambda: "github" in run.runner.credentials and "db" not in run.runner.credentials, 2,
                       "db expired, github valid")
    assert not run.runner.readiness()[0], "db is missing: the pod is not ready"
    run.runner.rng = random.Random(5)  # noqa: S311 - reproducible jitter
    delays = [run.runner._delay_after(BrokerUnavailable("down"), attempt, remaining) for attempt in range(1, 13)]
    assert max(delays) <= longest
    assert max(delays) >= longest / 2, f"backs off towards {longest} s: {[round(d, 2) for d in delays]}"


async def test_a_local_error_in_a_broker_call_is_retried_not_the_end_of_the_task(
        start: Callable[..., Running]) -> None:
    """Review finding: any non-broker exception (EMFILE while loading the SVID) ended the task and
    wrote the end marker, so even a restarted sidecar never fetched again."""
    def answer(name: str, n: int) -> IssuedCredential | BaseException:
        return OSError(errno.EMFILE, "Too many open files") if n <= 2 else lasting(30)(name, n)
    run = start(ScriptedClient(answer))
    await run.wait_for(lambda: run.runner.readiness()[0], 4, "ready after two local failures")
    assert not run.runner.ending and run.runner.writer.ended() is None, "no teardown, no end marker"
    assert len(run.client.calls) == 3


async def test_a_renewal_the_broker_no_longer_knows_is_replaced_by_a_fresh_issue_at_once(
        start: Callable[..., Running]) -> None:
    """Review finding: a 404 on renew was retried with backoff on the same dead leaseRef until the
    credential expired, leaving the agent with a revoked value on disk and then none at all."""
    client = ScriptedClient(lasting(1.5))
    original = client._one

    async def one(kind: str, name: str) -> IssuedCredential:
        if kind == "renew":
            client.calls.append((kind, name, time.monotonic()))
            raise NotFound("lease 'lease-github-1' is not active: already replaced by a renewal")
        return await original(kind, name)
    client._one = one  # type: ignore[method-assign]
    run = start(client)
    await run.wait_for(lambda: run.runner.readiness()[0], 2, "ready")
    first = run.on_disk("github")
    await run.wait_for(lambda: any(k == "renew" for k, _, _ in client.calls), 2, "a renewal")
    refused_at = next(t for k, _, t in client.calls if k == "renew")
    await run.wait_for(lambda: run.on_disk("github") not in (None, first), 1, "a fresh value on disk")
    kinds = [k for k, _, _ in client.calls]
    assert kinds[:3] == ["issue", "renew", "issue"], kinds
    reissued_at = [t for k, _, t in client.calls if k == "issue"][1]
    assert reissued_at - refused_at < 0.1, "the fresh issue waited for a backoff"
    assert run.runner.readiness()[0]
    failures = [s for s in run.runner.metrics.refresh.collect()[0].samples
                if s.labels.get("result") == "failure" and s.value]
    assert failures == []
