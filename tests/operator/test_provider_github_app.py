"""The github-app provider against a local GitHub that checks App JWTs, scoping and revocation."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from taskcreds.operator.broker.server import BROKER_KEY
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import (
    HeldElsewhere,
    IssueRequest,
    Provider,
    ProviderError,
)
from taskcreds.operator.providers.github_app import (
    GitHubAppProvider,
    TokenNotHeld,
    app_jwt,
    lease_ref_for,
    parse_settings,
)
from taskcreds.operator.providers.replica import Replica

from tests.fakes.github import FakeApp, FakeGitHub, new_private_key_pem
from tests.fakes.github import github as github_fixture  # noqa: F401  (the `github` fixture)
from tests.operator.test_broker_harness import NS as HARNESS_NS
from tests.operator.test_broker_harness import Harness, source

NS = "agents"
OPERATOR_NS = "taskcreds-system"


@pytest.fixture
def app(github: FakeGitHub) -> FakeApp:
    return github.add_app(
        "12345",
        installation_id="678",
        repositories=["agent-target-repo", "other-repo"],
        permissions={"contents": "write", "metadata": "read", "pull_requests": "write"},
    )


@pytest.fixture
def cluster(app: FakeApp) -> MemCluster:
    c = MemCluster()
    c.put_secret(NS, "github-app", {"private-key.pem": app.private_key_pem})
    c.put_secret(OPERATOR_NS, "github-app", {"private-key.pem": app.private_key_pem})
    return c


@pytest.fixture
async def provider(cluster: MemCluster) -> Any:
    p = GitHubAppProvider(cluster, operator_namespace=OPERATOR_NS, timeout=2)
    yield p
    await p.aclose()


def spec(github: FakeGitHub, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiURL": github.url,
        "appId": "12345",
        "installationId": "678",
        "privateKeySecretRef": {"name": "github-app", "key": "private-key.pem"},
        "repositories": ["agent-target-repo"],
        "permissions": {"contents": "write", "pull_requests": "write"},
    }
    body.update(changes)
    body = {k: v for k, v in body.items() if v is not None}  # None: the setting left out
    return {
        "provider": "github-app",
        "defaultTTL": "15m",
        "maxTTL": "1h",
        "allowedServiceAccounts": ["agent"],
        "githubApp": body,
    }


def request(source_spec: dict[str, Any], ttl: int = 900, source_namespace: str | None = NS) -> IssueRequest:
    return IssueRequest(
        credential="github",
        source_spec=source_spec,
        source_namespace=source_namespace,
        namespace=NS,
        pod="agent-0",
        pod_uid="uid-1",
        service_account="agent",
        task="fix-42",
        ttl_seconds=ttl,
    )


async def repositories_seen_with(github: FakeGitHub, token: str) -> tuple[int, list[str]]:
    """What an agent sees using the token: ``GET /installation/repositories``."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{github.url}/installation/repositories",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json"},
        ) as response,
    ):
        body = await response.json()
        return response.status, [r["name"] for r in body.get("repositories", [])]


# --- issue, use, revoke, renew -------------------------------------------------------------------


async def test_issue_is_scoped_to_the_repositories_and_permissions_asked(
    github: FakeGitHub, provider: GitHubAppProvider
) -> None:
    assert isinstance(provider, Provider)
    issued = await provider.issue(request(spec(github), ttl=900))
    token = issued.files["token"]
    assert token.startswith("ghs_") and list(issued.files) == ["token"]
    assert await repositories_seen_with(github, token) == (200, ["agent-target-repo"])
    at_github = github.token(token)
    assert at_github is not None
    assert at_github.permissions == {"contents": "write", "pull_requests": "write"}
    # GitHub's lifetime is 1 h whatever was asked; expiresAt tells the truth
    assert issued.expires_at == at_github.expires_at
    assert abs((issued.expires_at - datetime.now(UTC)) - timedelta(hours=1)) < timedelta(seconds=5)
    assert not issued.renewable
    assert issued.lease_ref.startswith("ghs:678:") and token not in issued.lease_ref
    assert token[4:12] not in issued.lease_ref
    # the App JWT: iss = app id, iat backdated, a window of at most 10 minutes
    claims = github.jwt_claims[-1]
    assert claims["iss"] == "12345"
    assert claims["exp"] - claims["iat"] <= 600
    assert claims["iat"] <= time.time() - 55


async def test_revoke_makes_the_token_fail_and_is_idempotent(
    github: FakeGitHub,
    provider: GitHubAppProvider,
) -> None:
    src = spec(github)
    issued = await provider.issue(request(src))
    await provider.revoke(issued.lease_ref, src, NS)
    assert (await repositories_seen_with(github, issued.files["token"]))[0] == 401
    await provider.revoke(issued.lease_ref, src, NS)  # already revoked: success


async def test_revoke_of_a_token_github_already_forgot_is_success(
    github: FakeGitHub,
    provider: GitHubAppProvider,
) -> None:
    src = spec(github)
    issued = await provider.issue(request(src))
    token = github.token(issued.files["token"])
    assert token is not None
    token.revoked = True  # e.g. revoked by hand in GitHub
    await provider.revoke(issued.lease_ref, src, NS)


async def test_renew_rotates_the_token_and_revokes_the_old(
    github: FakeGitHub,
    provider: GitHubAppProvider,
) -> None:
    src = spec(github)
    first = await provider.issue(request(src))
    second = await provider.renew(first.lease_ref, request(src))
    assert second.lease_ref != first.lease_ref
    assert second.files["token"] != first.files["token"]
    assert (await repositories_seen_with(github, first.files["token"]))[0] == 401
    assert await repositories_seen_with(github, second.files["token"]) == (200, ["agent-target-repo"])
    await provider.revoke(second.lease_ref, src, NS)
    assert github.alive_tokens() == []


# renew -> the TTL asked: whatever it is, and however long GitHub would honour the held token
_RENEW_TTLS = {"a 2 s TTL": 2, "15 min": 900, "the token's whole hour": 3600}


@pytest.mark.parametrize("case", list(_RENEW_TTLS))
async def test_renew_never_answers_the_held_token_again(
    github: FakeGitHub, provider: GitHubAppProvider, case: str
) -> None:
    """An answer of the held token would hand out a value the sweep, another replica or GitHub
    (secret scanning, an org admin) may have revoked meanwhile; a copy would work while the task renews."""
    src = spec(github)
    first = await provider.issue(request(src))
    renewed = await provider.renew(first.lease_ref, request(src, ttl=_RENEW_TTLS[case]))
    assert renewed.lease_ref != first.lease_ref and renewed.files != first.files, case
    assert (await repositories_seen_with(github, first.files["token"]))[0] == 401, case
    assert len([r for r in github.requests if r[0] == "POST" and r[1].endswith("/access_tokens")]) == 2
    await provider.revoke(renewed.lease_ref, src, NS)
    assert github.alive_tokens() == []


# what another replica (or this pod restarted) does with a token it does not hold: name -> (the
# issuer recorded on the entry, whether the issuer's pod still runs, what revoke raises and says)
_NOT_HELD = {
    "issuer not recorded (an entry from before the target was)": (
        None, True, TokenNotHeld, "token not held by this operator process (issuer not recorded); expires at {exp}"),
    "issuer is another live replica: wait for it": (
        "op-a", True, HeldElsewhere,
        "token held by operator replica taskcreds-system/op-a, which revokes it (until it expires at {exp})"),
    "issuer's pod is gone": (
        "op-a", False, TokenNotHeld, "the operator replica taskcreds-system/op-a that issued it is gone; expires at {exp}"),
    "this pod's own process restarted": (
        "op-b", True, TokenNotHeld,
        "the operator process in taskcreds-system/op-b that issued it has restarted; expires at {exp}"),
}


@pytest.mark.parametrize("case", list(_NOT_HELD))
async def test_a_token_not_held_here_waits_for_a_live_issuer_or_says_why_not(
    github: FakeGitHub, cluster: MemCluster, case: str
) -> None:
    issuer_pod, alive, raised, text = _NOT_HELD[case]
    uids = {}
    for name in ("op-a", "op-b"):
        uids[name] = cluster.put_pod({"metadata": {"name": name, "namespace": OPERATOR_NS}})["metadata"]["uid"]
    src = spec(github)
    issuer = GitHubAppProvider(cluster, replica=Replica(OPERATOR_NS, issuer_pod or "op-a", uids[issuer_pod or "op-a"]))
    issued = await issuer.issue(request(src))
    assert issued.target == issuer.replica.target()
    if not alive:
        cluster.delete_pod(OPERATOR_NS, issuer_pod)
    here = GitHubAppProvider(cluster, replica=Replica(OPERATOR_NS, "op-b", uids["op-b"]))
    target = issued.target if issuer_pod else None
    with pytest.raises(raised) as caught:
        await here.revoke(issued.lease_ref, src, NS, target=target)
    expected = issued.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert str(caught.value) == "github-app: " + text.format(exp=expected)
    assert caught.value.retryable is (raised is HeldElsewhere)
    assert "restart" not in str(caught.value) or case == "this pod's own process restarted"
    assert await repositories_seen_with(github, issued.files["token"]) == (200, ["agent-target-repo"])
    # renewing there: a new token; the old one is left to its holder and said to be still live
    renewed = await here.renew(issued.lease_ref, request(src))
    assert renewed.superseded_live and renewed.target == here.replica.target()
    assert (await repositories_seen_with(github, issued.files["token"]))[0] == 200
    await here.revoke(renewed.lease_ref, src, NS, target=renewed.target)
    await issuer.revoke(issued.lease_ref, src, NS, target=issued.target)  # the holder can, always
    assert github.alive_tokens() == []
    for p in (issuer, here):
        await p.aclose()


async def test_an_expired_token_not_held_is_not_revocable_saying_it_expired(provider: GitHubAppProvider) -> None:
    expired_at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    expired_ref = lease_ref_for("678", "ghs_gone", expired_at)
    with pytest.raises(TokenNotHeld) as caught:
        await provider.revoke(expired_ref, {}, NS, target={"replica": "op-a", "replicaNamespace": OPERATOR_NS})
    stamp = expired_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert str(caught.value) == f"github-app: expired at {stamp} before it was revoked"


async def test_cluster_scoped_source_reads_the_key_from_the_operator_namespace(
    github: FakeGitHub, provider: GitHubAppProvider, cluster: MemCluster
) -> None:
    cluster.secrets.pop((NS, "github-app"))
    src = spec(github)
    issued = await provider.issue(request(src, source_namespace=None))
    await provider.revoke(issued.lease_ref, src, None)


async def test_all_repositories_only_when_said_and_still_only_the_permissions_named(
    github: FakeGitHub, provider: GitHubAppProvider
) -> None:
    src = spec(github, repositories=None, allRepositories=True, permissions={"contents": "read"})
    issued = await provider.issue(request(src))
    assert await repositories_seen_with(github, issued.files["token"]) == (
        200,
        ["agent-target-repo", "other-repo"],
    )
    at_github = github.token(issued.files["token"])
    assert at_github is not None and at_github.permissions == {"contents": "read"}
    await provider.revoke(issued.lease_ref, src, NS)


# what a source that would mint an installation-wide token gets: refused before any network call,
# naming the source, the setting and what would be accepted. name -> (githubApp changes, source
# namespace (None: a ClusterCredentialSource), the exact message)
_TOO_WIDE: dict[str, tuple[dict[str, Any], str | None, str]] = {
    "no repositories and no permissions (a source from before the rule)": (
        {"repositories": None, "permissions": None}, NS,
        "github-app: CredentialSource agents/github: spec.githubApp.repositories is missing or empty: name the "
        "repositories its tokens may reach (names without the owner, for example repositories: "
        "[agent-target-repo]), or set allRepositories: true to give every repository of installation 678"),
    "empty repositories": (
        {"repositories": []}, NS,
        "github-app: CredentialSource agents/github: spec.githubApp.repositories is missing or empty: name the "
        "repositories its tokens may reach (names without the owner, for example repositories: "
        "[agent-target-repo]), or set allRepositories: true to give every repository of installation 678"),
    "allRepositories false is not a choice of repositories": (
        {"repositories": None, "allRepositories": False}, None,
        "github-app: ClusterCredentialSource github: spec.githubApp.repositories is missing or empty"),
    "allRepositories as a string": (
        {"repositories": None, "allRepositories": "true"}, NS,
        "github-app: CredentialSource agents/github: spec.githubApp.allRepositories must be true or false, "
        "got 'true'"),
    "both repositories and allRepositories": (
        {"allRepositories": True}, NS,
        "github-app: CredentialSource agents/github: spec.githubApp sets both repositories and "
        "allRepositories: true; keep one (repositories to limit the token to them, allRepositories: true for "
        "every repository)"),
    "no permissions": (
        {"permissions": None}, NS,
        "github-app: CredentialSource agents/github: spec.githubApp.permissions is missing or empty: state what "
        "its tokens may do, as permission: read, write or admin (for example permissions: {contents: read}); "
        "without it GitHub grants every permission of installation 678"),
    "empty permissions, cluster source": (
        {"permissions": {}}, None,
        "github-app: ClusterCredentialSource github: spec.githubApp.permissions is missing or empty"),
    "all repositories, but no permissions": (
        {"repositories": None, "allRepositories": True, "permissions": {}}, NS,
        "github-app: CredentialSource agents/github: spec.githubApp.permissions is missing or empty"),
    "more repositories than GitHub takes": (
        {"repositories": [f"repo-{i}" for i in range(501)]}, NS,
        "github-app: CredentialSource agents/github: spec.githubApp.repositories names 501 repositories; GitHub "
        "accepts at most 500 in one token (say allRepositories: true for all of them)"),
}


@pytest.mark.parametrize("case", list(_TOO_WIDE))
async def test_a_source_that_would_mint_an_installation_wide_token_is_refused_before_github(
    github: FakeGitHub, provider: GitHubAppProvider, case: str
) -> None:
    changes, namespace, message = _TOO_WIDE[case]
    src = spec(github, **changes)
    with pytest.raises(ProviderError) as caught:
        await provider.issue(request(src, source_namespace=namespace))
    assert str(caught.value).startswith(message), str(caught.value)
    assert not caught.value.retryable
    assert github.requests == [] and github.tokens == {}  # nothing asked of GitHub, nothing minted


# --- refusals and errors -------------------------------------------------------------------------

REFUSALS = [
    pytest.param(
        {"permissions": {"administration": "write"}},
        ["HTTP 422", "not granted", "administration: write"],
        id="permission the App does not have",
    ),
    pytest.param(
        {"permissions": {"metadata": "write"}},
        ["HTTP 422", "not granted"],
        id="permission level above the grant",
    ),
    pytest.param(
        {"repositories": ["someone-elses-repo"]},
        ["HTTP 422", "not accessible", "someone-elses-repo"],
        id="repository outside the installation",
    ),
    pytest.param(
        {"installationId": "999"},
        ["HTTP 404", "installation 999 not found for app 12345"],
        id="unknown installation",
    ),
    pytest.param({"appId": "54321"}, ["HTTP 401", "App JWT of app 54321", "check appId"], id="wrong app id"),
]


@pytest.mark.parametrize(("change", "words"), REFUSALS)
async def test_github_refusals_are_not_retryable_and_say_why(
    github: FakeGitHub,
    provider: GitHubAppProvider,
    change: dict[str, Any],
    words: list[str],
) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.issue(request(spec(github, **change)))
    assert not caught.value.retryable
    assert str(caught.value).startswith("github-app: ")
    for word in words:
        assert word in str(caught.value)
    assert github.alive_tokens() == []


async def test_a_key_that_is_not_the_app_s_is_refused_by_signature(
    github: FakeGitHub, provider: GitHubAppProvider, cluster: MemCluster
) -> None:
    cluster.put_secret(NS, "github-app", {"private-key.pem": new_private_key_pem()})
    with pytest.raises(ProviderError, match="HTTP 401.*private key in Secret github-app") as caught:
        await provider.issue(request(spec(github)))
    assert not caught.value.retryable
    assert github.rejections == ["signature"]


SPEC_ERRORS = [
    pytest.param({"appId": "my-app"}, "spec.githubApp.appId must be a number", id="app id not a number"),
    pytest.param({"installationId": None}, "spec.githubApp.installationId", id="installation id missing"),
    pytest.param({"apiURL": "api.github.com"}, "spec.githubApp.apiURL must be an https:// URL", id="api url"),
    pytest.param({"permissions": {"contents": "all"}}, "'all' is not one of read, write, admin", id="level"),
    pytest.param({"repositories": ["octo-org/repo"]}, "without the owner", id="owner in repository"),
    pytest.param(
        {"privateKeySecretRef": {"name": "github-app"}}, "privateKeySecretRef.key", id="ref without key"
    ),
]


@pytest.mark.parametrize(("change", "words"), SPEC_ERRORS)
async def test_spec_errors_name_the_field(
    github: FakeGitHub,
    provider: GitHubAppProvider,
    change: dict[str, Any],
    words: str,
) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.issue(request(spec(github, **change)))
    assert words in str(caught.value) and not caught.value.retryable
    assert github.requests == []  # refused before talking to GitHub


async def test_secret_problems_name_the_secret(
    github: FakeGitHub,
    provider: GitHubAppProvider,
    cluster: MemCluster,
) -> None:
    cluster.put_secret(NS, "github-app", {"private-key.pem": "not a key"})
    with pytest.raises(ProviderError, match="Secret github-app key 'private-key.pem' does not hold an RSA"):
        await provider.issue(request(spec(github)))
    cluster.secrets.pop((NS, "github-app"))
    with pytest.raises(
        ProviderError, match="Secret agents/github-app key 'private-key.pem': the Secret does not"
    ):
        await provider.issue(request(spec(github)))


async def test_kubernetes_api_failure_reading_the_key_is_retryable(
    github: FakeGitHub, provider: GitHubAppProvider, cluster: MemCluster
) -> None:
    cluster.fail("get_secret")
    with pytest.raises(ProviderError, match="cannot read Secret agents/github-app") as caught:
        await provider.issue(request(spec(github)))
    assert caught.value.retryable and github.requests == []


async def test_github_down_or_failing_is_retryable_and_issuance_resumes(
    github: FakeGitHub, provider: GitHubAppProvider
) -> None:
    src = spec(github)
    github.fail_next(502)
    with pytest.raises(ProviderError, match="HTTP 502") as caught:
        await provider.issue(request(src))
    assert caught.value.retryable
    github.fail_next(403)  # secondary rate limit
    with pytest.raises(ProviderError, match="rate limited") as caught:
        await provider.issue(request(src))
    assert caught.value.retryable

    issued = await provider.issue(request(src))
    await github.stop()
    try:
        started = time.monotonic()
        with pytest.raises(ProviderError, match=f"{github.url}.*cannot connect") as caught:
            await provider.issue(request(src))
        assert caught.value.retryable and time.monotonic() - started < 2
        with pytest.raises(ProviderError) as revoke_failed:
            await provider.revoke(issued.lease_ref, src, NS)
        assert revoke_failed.value.retryable
    finally:
        await github.start()  # same port, same state
    await provider.revoke(issued.lease_ref, src, NS)
    assert github.alive_tokens() == []


async def test_renew_keeps_the_old_lease_when_it_cannot_be_revoked(
    github: FakeGitHub,
    provider: GitHubAppProvider,
) -> None:
    src = spec(github)
    first = await provider.issue(request(src))
    original_revoke = provider.revoke
    calls: list[str] = []

    async def flaky_revoke(lease_ref: str, source_spec: dict[str, Any], source_namespace: str | None) -> None:
        calls.append(lease_ref)
        if lease_ref == first.lease_ref and len(calls) == 1:
            github.fail_next(503)
        await original_revoke(lease_ref, source_spec, source_namespace)

    provider.revoke = flaky_revoke  # type: ignore[method-assign]
    with pytest.raises(ProviderError, match=f"renewing {first.lease_ref}") as caught:
        await provider.renew(first.lease_ref, request(src))
    assert caught.value.retryable
    # the old token is still tracked and alive; the replacement was taken back
    assert [t.token for t in github.alive_tokens()] == [first.files["token"]]
    provider.revoke = original_revoke  # type: ignore[method-assign]
    await provider.revoke(first.lease_ref, src, NS)


# --- no value anywhere but Issued.files ----------------------------------------------------------


async def test_no_token_or_key_in_logs_reprs_or_errors(
    github: FakeGitHub,
    provider: GitHubAppProvider,
    app: FakeApp,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    src = spec(github)
    issued = await provider.issue(request(src))
    renewed = await provider.renew(issued.lease_ref, request(src))
    await provider.revoke(renewed.lease_ref, src, NS)
    errors = []
    for change in ({"permissions": {"administration": "write"}}, {"appId": "54321"}):
        with pytest.raises(ProviderError) as caught:
            await provider.issue(request(spec(github, **change)))
        errors.append(str(caught.value))
    key_body = "".join(app.private_key_pem.splitlines()[1:-1])
    secrets_ = [issued.files["token"], renewed.files["token"], key_body[20:60]]
    assert caplog.records
    logged = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    for value in secrets_:
        for text in (logged, repr(issued), repr(renewed), repr(provider._held), *errors):
            assert value not in text


# --- the pure parts ---------------------------------------------------------------------------------


def test_app_jwt_claims(app: FakeApp) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(app.private_key_pem.encode(), password=None)
    token = app_jwt("12345", key, now=1_700_000_000)  # type: ignore[arg-type]
    claims = jwt.decode(token, app.public_key(), algorithms=["RS256"], options={"verify_exp": False})
    assert claims == {"iat": 1_700_000_000 - 60, "exp": 1_700_000_000 + 540, "iss": "12345"}
    assert jwt.get_unverified_header(token)["alg"] == "RS256"


def test_parse_settings_defaults() -> None:
    settings = parse_settings(
        {
            "files": ["gh-token"],
            "githubApp": {
                "appId": 12345,
                "installationId": "678",
                "privateKeySecretRef": {"name": "k", "key": "pem"},
                "repositories": ["agent-target-repo"],
                "permissions": {"contents": "read"},
            },
        }
    )
    assert settings.api_url == "https://api.github.com"
    assert (settings.app_id, settings.installation_id, settings.token_file) == ("12345", "678", "gh-token")
    assert settings.repositories == ("agent-target-repo",) and settings.permissions == (("contents", "read"),)
    assert settings.all_repositories is False


# --- the fake checks what GitHub checks (a fake that accepts anything proves nothing) ---------------

FAKE_JWT_CASES = [
    pytest.param(
        lambda now: {"iat": now - 60, "exp": now + 540, "iss": "12345"}, "RS256", True, None, id="valid"
    ),
    pytest.param(
        lambda now: {"iat": now - 60, "exp": now + 600, "iss": "12345"},
        "RS256",
        False,
        "exp more than 10 minutes ahead",
        id="window over 10 minutes",
    ),
    pytest.param(
        lambda now: {"iat": now - 700, "exp": now - 100, "iss": "12345"},
        "RS256",
        False,
        "claims:",
        id="expired",
    ),
    pytest.param(
        lambda now: {"iat": now + 120, "exp": now + 300, "iss": "12345"},
        "RS256",
        False,
        "iat",
        id="issued in the future",
    ),
    pytest.param(
        lambda now: {"iat": now - 60, "exp": now + 540, "iss": "99"},
        "RS256",
        False,
        "is no App",
        id="unknown issuer",
    ),
    pytest.param(
        lambda now: {"iat": now - 60, "exp": now + 540}, "RS256", False, "is no App", id="no issuer"
    ),
    pytest.param(
        lambda now: {"iat": now - 60, "exp": now + 540, "iss": "12345"},
        "HS256",
        False,
        "not RS256",
        id="HMAC instead of RS256",
    ),
]


@pytest.mark.parametrize(("claims", "alg", "accepted", "reason"), FAKE_JWT_CASES)
async def test_fake_github_verifies_the_app_jwt(
    github: FakeGitHub,
    app: FakeApp,
    claims: Any,
    alg: str,
    accepted: bool,
    reason: str | None,
) -> None:
    from cryptography.hazmat.primitives import serialization

    key: Any = serialization.load_pem_private_key(app.private_key_pem.encode(), password=None)
    if alg == "HS256":
        key = "shared-secret-that-is-long-enough-for-hs256"
    token = jwt.encode(claims(int(time.time())), key, algorithm=alg)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{github.url}/app/installations/678/access_tokens",
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        assert (response.status == 201) is accepted, await response.text()
    if reason:
        assert reason in github.rejections[-1]


# --- renewing a lease whose token has expired (review diff_findings LOW 9) -------------------------


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(None, id="issuer not recorded"),
        pytest.param({"replica": "op-a", "replicaNamespace": OPERATOR_NS}, id="issued by another replica"),
    ],
)
async def test_renewing_an_expired_lease_issues_a_fresh_token(
    github: FakeGitHub, provider: GitHubAppProvider, target: dict[str, str] | None
) -> None:
    """A sidecar cut off past its token's expiry renews: it gets a new token at the first attempt
    (nothing to revoke: GitHub refuses the old one already), and no token is minted and thrown away."""
    src = spec(github)
    expired_ref = lease_ref_for("678", "ghs_gone", datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1))
    renewed = await provider.renew(expired_ref, request(src))
    assert renewed.lease_ref != expired_ref and not renewed.superseded_live
    assert await repositories_seen_with(github, renewed.files["token"]) == (200, ["agent-target-repo"])
    assert [t.token for t in github.alive_tokens()] == [renewed.files["token"]]  # one minted, kept
    assert len(github.tokens) == 1
    assert not [r for r in github.requests if r[0] == "DELETE"]
    await provider.revoke(renewed.lease_ref, src, NS, target=target)
    assert github.alive_tokens() == []


# --- the tenant boundary: where a namespaced source may send the App's JWT ------------------------

# name -> (apiURL, namespaced?, what the refusal says; None: accepted)
_API_URLS = {
    "http to a cluster host, namespaced": (
        "http://github-proxy.infra.svc:8080", NS,
        "spec.githubApp.apiURL 'http://github-proxy.infra.svc:8080': a CredentialSource must use https:// "
        "(plain http:// only to a loopback address"),
    "http to an IP, namespaced": ("http://10.0.0.7", NS, "a CredentialSource must use https://"),
    "user info, namespaced": ("https://user:pw@ghe.example.com", NS, "a user name or password"),
    "http to a cluster host, cluster source": ("http://github-proxy.infra.svc:8080", None, None),
}


@pytest.mark.parametrize("case", list(_API_URLS))
async def test_a_namespaced_source_may_send_the_app_jwt_over_https_only(
    github: FakeGitHub, provider: GitHubAppProvider, case: str
) -> None:
    api_url, namespace, refusal = _API_URLS[case]
    src = spec(github, apiURL=api_url)
    if refusal is None:  # accepted: the provider goes on to call it (nothing listens there)
        with pytest.raises(ProviderError, match="cannot connect|timed out"):
            await provider.issue(request(src, source_namespace=namespace))
        return
    with pytest.raises(ProviderError) as caught:
        await provider.issue(request(src, source_namespace=namespace))
    assert str(caught.value).startswith(f"github-app: CredentialSource in namespace {NS!r}: ")
    assert refusal in str(caught.value) and not caught.value.retryable


# --- redirects are never followed: a followed one would carry the request past allowedAddresses ----


class _Recorder:
    """A second local server: records every request that reaches it (none should)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []  # method, path, body

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path, await request.text()))
        return web.json_response({"token": "ghs_recorded", "expires_at": "2099-01-01T00:00:00Z"}, status=201)


async def _serve(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


# name -> (the method the API redirects, the redirect status)
_REDIRECTS = {
    "issue: 307 (method and body kept)": ("POST", 307),
    "issue: 308 permanent": ("POST", 308),
    "issue: 302 found": ("POST", 302),
    "issue: 301 moved": ("POST", 301),
    "revoke: 307": ("DELETE", 307),
}


@pytest.mark.parametrize("case", list(_REDIRECTS))
async def test_a_redirect_from_the_api_is_an_error_and_never_followed(
    github: FakeGitHub, provider: GitHubAppProvider, case: str
) -> None:
    method, status = _REDIRECTS[case]
    recorder = _Recorder()
    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    async def api(request: web.Request) -> web.Response:
        if request.method != method:  # the other call answers as GitHub would
            return web.json_response({"token": "ghs_" + "a" * 36, "expires_at": expires}, status=201)
        return web.Response(status=status, headers={"Location": f"{elsewhere}{request.path}"})

    recorder_runner, elsewhere = await _serve(recorder.handle)
    api_runner, api_url = await _serve(api)
    try:
        src = spec(github, apiURL=api_url)
        if method == "POST":
            with pytest.raises(ProviderError) as caught:
                await provider.issue(request(src))
            where = f"POST {api_url}/app/installations/678/access_tokens"
            assert not caught.value.retryable  # the configuration is wrong: trying again will not help
        else:
            issued = await provider.issue(request(src))
            with pytest.raises(ProviderError) as caught:
                await provider.revoke(issued.lease_ref, src, NS)
            where = f"DELETE {api_url}/installation/token"
            assert caught.value.retryable  # a live token: the TaskLease keeps trying until it expires
            assert issued.files["token"] not in str(caught.value)
        assert str(caught.value) == (
            f"github-app: {where}: HTTP {status} is a redirect, and redirects are not followed: set "
            "spec.githubApp.apiURL to the address that serves the GitHub API itself"
        )
        assert elsewhere not in str(caught.value)
        assert recorder.seen == []  # the second server received nothing
        # a client that follows redirects does reach the recorder (so the check above can fail)
        path = "/app/installations/678/access_tokens" if method == "POST" else "/installation/token"
        async with aiohttp.ClientSession() as http, http.request(method, api_url + path, json={}) as followed:
            assert followed.status == 201
        assert [seen[1] for seen in recorder.seen] == [path]
    finally:
        await api_runner.cleanup()
        await recorder_runner.cleanup()



# --- a source written before the rule: the operator fails closed, saying why ------------------------


async def test_the_broker_refuses_to_issue_from_a_source_written_before_the_rule(
    github: FakeGitHub, app: FakeApp
) -> None:
    """What a sidecar is told when its pod names an (already applied) source with neither repositories
    nor permissions: the same clear refusal, nothing minted at GitHub, nothing recorded as live."""
    harness = Harness()
    harness.cluster.put_secret(HARNESS_NS, "github-app", {"private-key.pem": app.private_key_pem})
    harness.cluster.put_source(source("gh", "github-app", githubApp={
        "apiURL": github.url, "appId": "12345", "installationId": "678",
        "privateKeySecretRef": {"name": "github-app", "key": "private-key.pem"}}))
    provider = GitHubAppProvider(harness.cluster, operator_namespace=OPERATOR_NS)
    harness.providers["github-app"] = provider
    harness.app[BROKER_KEY].providers["github-app"] = provider
    await harness.start()
    try:
        reply = await harness.issue(harness.agent(harness.add_pod("agent-1", credentials="gh")))
    finally:
        await harness.close()
        await provider.aclose()
    # refused when the source is read (sources.provider_refusal): 403, which the sidecar does not hammer
    assert reply.status == 403 and reply.doc["error"]["code"] == "policy_denied", reply.doc
    assert reply.doc["error"]["message"] == (
        f"credential 'gh': CredentialSource {HARNESS_NS}/gh: spec.githubApp.repositories is missing "
        "or empty: name the repositories its tokens may reach (names without the owner, for example "
        "repositories: [agent-target-repo]), or set allRepositories: true to give every repository of "
        "installation 678"
    )
    assert github.requests == [] and github.tokens == {}


async def test_renewing_after_the_source_lost_its_scope_is_refused_and_the_old_token_still_revoked(
    github: FakeGitHub, provider: GitHubAppProvider
) -> None:
    first = await provider.issue(request(spec(github)))
    widened = spec(github, permissions=None)  # the source edited to leave permissions out
    with pytest.raises(ProviderError, match="spec.githubApp.permissions is missing or empty") as caught:
        await provider.renew(first.lease_ref, request(widened))
    assert not caught.value.retryable
    assert [t.token for t in github.alive_tokens()] == [first.files["token"]]  # no wider token minted
    await provider.revoke(first.lease_ref, widened, NS)  # revoking needs no scope: still done
    assert github.alive_tokens() == []


# --- the fake answers a token request as GitHub does (what the refusals above rely on) --------------
_NOT_ACCESSIBLE = (
    "There is at least one repository that does not exist or is not accessible to the parent installation."
)
# name -> (request body, HTTP status, repositories the token reaches (201) or GitHub's message (422))
_FAKE_TOKEN_REQUESTS: dict[str, tuple[dict[str, Any], int, Any]] = {
    "nothing named: every repository (why a source must name them)": (
        {}, 201, ["agent-target-repo", "other-repo"]),
    "one repository by name": ({"repositories": ["other-repo"]}, 201, ["other-repo"]),
    "a repository not in the installation": ({"repositories": ["someone-elses-repo"]}, 422, _NOT_ACCESSIBLE),
    "one repository in, one out": (
        {"repositories": ["agent-target-repo", "someone-elses-repo"]}, 422, _NOT_ACCESSIBLE),
    "one repository by id": ({"repository_ids": ["id:other-repo"]}, 201, ["other-repo"]),
    "an id not in the installation": ({"repository_ids": [1]}, 422, _NOT_ACCESSIBLE),
    "a permission above the grant": (
        {"repositories": ["other-repo"], "permissions": {"metadata": "write"}}, 422,
        "The permissions requested are not granted to this installation."),
}


@pytest.mark.parametrize("case", list(_FAKE_TOKEN_REQUESTS))
async def test_fake_github_answers_token_requests_as_github(github: FakeGitHub, app: FakeApp, case: str) -> None:
    from cryptography.hazmat.primitives import serialization

    body, status, expected = _FAKE_TOKEN_REQUESTS[case]
    if "repository_ids" in body:  # ids as GitHub shows them (GET /installation/repositories)
        body = {"repository_ids": [
            github._repo(app, i[3:])["id"] if isinstance(i, str) else i for i in body["repository_ids"]
        ]}
    key: Any = serialization.load_pem_private_key(app.private_key_pem.encode(), password=None)
    token = app_jwt("12345", key, time.time())
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{github.url}/app/installations/678/access_tokens",
            json=body,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json"},
        ) as response,
    ):
        answer = await response.json()
    assert response.status == status, answer
    if status == 422:
        assert answer["message"] == expected and github.tokens == {}
        return
    assert await repositories_seen_with(github, answer["token"]) == (200, expected)
    assert answer["repository_selection"] == ("all" if not body else "selected")
