"""A pod's short TTL must not drive minting at a source that honours its credentials longer anyway.

The reviewer's reproducer: a real sidecar Runner (real BrokerClient over SPIFFE mTLS, real writer on
tmpfs) asking TTL 2 s of the real broker, against github-app + the GitHub fake and kubernetes-token +
the Kubernetes API stand-in. Before the floor every refresh (every ~1.3 s) minted a new token (10 in
10 s: ~3600 mints + 3600 DELETEs an hour from one pod, against an App installation's ~5000/h shared
by every tenant).

Now a cut credential is granted at least ``leases.MIN_CAPPED_GRANT`` (5 min, never above the
source's maxTTL). Every github-app renewal still mints a new token and revokes the old (no in-place
extension: it handed out values already revoked). The bound: a pod refreshes a cut credential at most
about every 3.3 min (2/3 of the grant), so at most ~18 mints an hour per pod and credential, and a
copied value works at its source at most max(granted TTL, 5 min) + one sweep interval (30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from taskcreds.operator.memcluster import MemCluster
from taskcreds.sidecar.client import BrokerClient
from taskcreds.sidecar.config import from_env
from taskcreds.sidecar.redact import Redactor
from taskcreds.sidecar.runner import Runner
from taskcreds.sidecar.writer import CredentialWriter

from taskcreds import names
from taskcreds.metrics import register_sidecar
from taskcreds.svid import client_context
from tests.fakes.github import FakeGitHub
from tests.fakes.github import github as github  # noqa: F401  (fixture)
from tests.operator.test_broker_harness import BROKER_ID, NS, Harness, source
from tests.operator.test_broker_scenario import KubeHarness, kube_world
from tests.operator.test_lifetime_cap import AUD, at_github, replica
from tests.sidecar.conftest import sidecar_env

TASK = "fix-42"
#: how long each sidecar runs: at TTL 2 s the unfixed broker minted a token every ~1.3 s
RUN_SECONDS = 6.0


class _Identity:
    """The sidecar's identity, from an SVID the harness's development authority minted."""

    def __init__(self, svid: Any) -> None:
        self._context = client_context(svid)
        self.current = type("Current", (), {"expires_at": svid.expires_at, "spiffe_id": svid.spiffe_id})()

    async def start(self, timeout: float) -> Any:  # noqa: ASYNC109 - IdentitySource.start's signature
        return self.current

    def ssl_context(self) -> Any:
        return self._context

    async def close(self) -> None:
        pass


@dataclass
class Sidecar:
    runner: Runner
    client: BrokerClient
    directory: Path
    renewals: list[str]  # leaseRefs the runner asked to renew
    #: cleared: renewals wait (so a test reads GitHub and the TaskLease between two of them)
    gate: asyncio.Event

    def on_disk(self, credential: str) -> str | None:
        try:
            return (self.directory / credential / "token").read_text()
        except FileNotFoundError:
            return None


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Callable[..., Sidecar]]:
    """Start a real Runner against a harness's broker for one pod; stopped and removed afterwards."""
    started: list[tuple[Runner, asyncio.Task[int], BrokerClient, Path]] = []

    def make(h: Harness, pod: dict[str, Any], credential: str, ttl: str) -> Sidecar:
        agent = h.agent(pod)
        assert agent.svid is not None
        token_file = tmp_path / "sa.token"
        token_file.write_text(agent.token or "")
        directory = Path(tempfile.mkdtemp(prefix="tc-churn-", dir="/dev/shm"))
        identity = _Identity(agent.svid)
        client = BrokerClient(url=h.url, broker_spiffe_id=BROKER_ID, token_file=str(token_file), task=TASK,
                              identity=identity)  # type: ignore[arg-type]
        renewals: list[str] = []
        renew = client.renew
        gate = asyncio.Event()
        gate.set()

        async def counted(name: str, lease_ref: str, ttl: str | None = None) -> Any:
            await gate.wait()
            renewals.append(lease_ref)
            return await renew(name, lease_ref, ttl)

        client.renew = counted  # type: ignore[method-assign]
        env = sidecar_env(directory=directory, broker_url=h.url, token_file=token_file,
                          socket_uri="unix:///nonexistent", credentials=credential,
                          **{names.ENV_TASK: TASK, names.ENV_TTL: ttl, names.ENV_LOG_LEVEL: "info"})
        writer = CredentialWriter(str(directory), task=TASK, grace=0.2)
        writer.prepare()
        runner = Runner(from_env(env), identity=identity, client=client, writer=writer,  # type: ignore[arg-type]
                        redactor=Redactor(), metrics=register_sidecar())
        started.append((runner, asyncio.create_task(runner.run()), client, directory))
        return Sidecar(runner, client, directory, renewals, gate)

    yield make
    for runner, task, client, directory in started:
        runner.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        with contextlib.suppress(Exception):
            await client.close()
        shutil.rmtree(directory, ignore_errors=True)


async def ready_within(s: Sidecar, seconds: float) -> None:
    end = time.monotonic() + seconds
    while not s.runner.readiness()[0]:
        assert time.monotonic() < end, f"sidecar not ready within {seconds} s: {s.runner.readiness()}"
        await asyncio.sleep(0.02)


async def run_watching(s: Sidecar, seconds: float, check: Callable[[], Any]) -> None:
    """Let the sidecar run ``seconds``; it must stay ready throughout (``check`` too, each tick)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ready, why = s.runner.readiness()
        assert ready, f"sidecar went unready: {why}"
        await check()
        await asyncio.sleep(0.25)


def github_world(github: FakeGitHub, max_ttl: str) -> MemCluster:  # noqa: F811
    cluster = MemCluster()
    app = github.add_app("12345", installation_id="678", repositories=["repo"], permissions={"contents": "write"})
    cluster.put_secret(NS, "gh", {"key": app.private_key_pem})
    cluster.put_source(source("gh", "github-app", max_ttl=max_ttl, default_ttl="2s", githubApp={
        "apiURL": github.url, "appId": "12345", "installationId": "678",
        "privateKeySecretRef": {"name": "gh", "key": "key"}, "repositories": ["repo"],
        "permissions": {"contents": "write"}}))
    return cluster


#: case -> (the source's maxTTL, the grant answered, whether any renewal happens within RUN_SECONDS)
GITHUB_CASES = {
    "TTL 2 s under maxTTL 1 h: granted the 5 min floor, one token, no renewal": ("1h", 300, False),
    "TTL 2 s under maxTTL 3 s: the floor stays under maxTTL; each renewal a new token, the old revoked": (
        "3s", 3, True),
}


async def settled(s: Sidecar, github: FakeGitHub) -> None:  # noqa: F811
    """Wait (<= 3 s) for a moment between renewals: the value on disk is the one token alive at GitHub."""
    end = time.monotonic() + 3
    while True:
        alive = [t.token for t in github.alive_tokens()]
        if alive == [s.on_disk("gh")] and s.runner.credentials["gh"].expires_at > datetime.now(UTC):
            return
        assert time.monotonic() < end, f"{len(alive)} tokens alive at GitHub, the one on disk among them: " \
            f"{s.on_disk('gh') in alive}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("case", list(GITHUB_CASES))
async def test_a_2s_ttl_sidecar_does_not_churn_github_tokens(
    github: FakeGitHub, sidecar: Callable[..., Sidecar], case: str  # noqa: F811
) -> None:
    max_ttl, grant, renews = GITHUB_CASES[case]
    cluster = github_world(github, max_ttl)
    h = replica(cluster, "op-a")
    await h.start()
    try:
        s = sidecar(h, h.add_pod("agent-1", credentials="gh"), "gh", "2s")
        await ready_within(s, 5)
        held = s.runner.credentials["gh"]
        span = (held.expires_at - held.issued_at).total_seconds()
        assert grant - 1 <= span <= grant, (case, span)
        minted = lambda: [r for r in github.requests if r[0] == "POST" and r[1].endswith("/access_tokens")]  # noqa: E731
        deleted = lambda: [r for r in github.requests if r[0] == "DELETE"]  # noqa: E731

        async def valid_at_github() -> None:
            value = s.on_disk("gh")
            assert value is not None, "the token file went away"
            if not renews:  # a renewal revokes the old token before the sidecar writes the new one
                assert await at_github(github, value) == 200, "the value on disk no longer works at GitHub"

        await run_watching(s, RUN_SECONDS, valid_at_github)
        s.gate.clear()  # no renewal starts now; one under way ends
        await settled(s, github)

        if not renews:
            assert len(minted()) == 1, (case, len(minted()))
            assert deleted() == [] and s.renewals == [], case
        else:
            # the admin's maxTTL 3 s wins over the floor: each renewal mints, and revokes the old token
            assert len(s.renewals) >= 2, (case, s.renewals)
            assert len(minted()) == 1 + len(s.renewals), case
            assert len(deleted()) == len(s.renewals), "every replaced token was revoked at GitHub"
            assert len(set(s.renewals)) == len(s.renewals), "each renewal renewed the previous new lease"
        assert len(github.alive_tokens()) == 1, "only the token on disk works at GitHub"
        entries = cluster.task_leases[(NS, next(k[1] for k in cluster.task_leases))]["status"]["leases"]
        live = [e for e in entries if "revokedAt" not in e]
        current = s.runner.credentials["gh"]
        assert [e["leaseRef"] for e in live] == [current.lease_ref], case
        assert live[0]["expiresAt"] == current.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        s.gate.set()
    finally:
        await h.close()
        await h.providers["github-app"].aclose()


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[KubeHarness]:
    async with kube_world(tmp_path) as h:
        h.kube_api.put({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": "deployer", "namespace": NS}})
        h.kube_api.put({"apiVersion": names.API_VERSION, **source(
            "deploy", "kubernetes-token", namespace=None, max_ttl="1h", default_ttl="2s",
            kubernetesToken={"serviceAccount": "deployer", "audiences": [AUD]})})
        yield h


async def test_a_2s_ttl_sidecar_does_not_churn_kubernetes_tokens(
    kube: KubeHarness, sidecar: Callable[..., Sidecar]
) -> None:
    h = kube
    s = sidecar(h, h.add_pod("agent-1", credentials="deploy"), "deploy", "2s")
    await ready_within(s, 5)
    held = s.runner.credentials["deploy"]
    assert timedelta(seconds=299) <= held.expires_at - held.issued_at <= timedelta(seconds=300)

    def token_requests() -> int:
        return sum(1 for c in h.kube_api.api_calls
                   if c.verb == "create" and c.resource == "serviceaccounts/token" and c.name == "deployer")

    async def valid_at_the_api() -> None:
        value = s.on_disk("deploy")
        assert value is not None and await h.cluster.review_token(value, AUD) is not None

    await run_watching(s, RUN_SECONDS, valid_at_the_api)
    assert token_requests() == 1, token_requests()
    assert s.renewals == []
