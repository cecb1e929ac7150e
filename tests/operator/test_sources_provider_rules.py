"""Provider rules checked when a source is read (sources.provider_refusal), not only at issue.

A github-app source without ``repositories`` (or ``allRepositories: true``) or ``permissions``, and a
vault token-mode source whose ``policies`` include ``default``, can never issue. Read-time refusal
makes the webhook deny such a pod at ``kubectl apply`` and the broker answer 403 policy_denied (the
sidecar backs off long) instead of admitting it and answering 502 provider_error forever. Revoking
what was issued before must never be blocked by them (``issue_rules=False``).

Real parts: the webhook's aiohttp handler with the operator's CredentialIndex, the real broker over
SPIFFE mTLS, the GitHub fake, real OpenBao.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import hvac
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from taskcreds.operator import leases, webhook
from taskcreds.operator.config import load_config
from taskcreds.operator.credindex import CredentialIndex
from taskcreds.operator.injection import mutate_pod
from taskcreds.operator.sources import SourceError, parse_source

from taskcreds import names
from taskcreds.metrics import register_operator
from tests.fakes.github import FakeApp, FakeGitHub
from tests.fakes.github import github as github  # noqa: F401  (fixture)
from tests.openbao import OpenBao
from tests.openbao import openbao as openbao  # noqa: F401  (fixture)
from tests.operator.test_broker_harness import NS, Harness, source
from tests.operator.test_webhook import load_review

OPERATOR_NS = "taskcreds-system"  # the harness broker's namespace: a cluster source's Secrets live there
KEY_REF = {"name": "gh-app", "key": "key.pem"}
TOKEN_REF = {"name": "bao-login", "key": "token"}


def github_block(api_url: str = "https://api.github.com", **changes: Any) -> dict[str, Any]:
    """``spec.githubApp``: a narrow, valid one; ``changes`` set or (None) drop fields."""
    app: dict[str, Any] = {
        "apiURL": api_url,
        "appId": "12345",
        "installationId": "678",
        "privateKeySecretRef": KEY_REF,
        "repositories": ["agent-target-repo"],
        "permissions": {"contents": "read"},
    }
    app.update(changes)
    return {k: v for k, v in app.items() if v is not None}


def vault_block(address: str = "https://bao.team-a:8200", **changes: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "address": address,
        "auth": {"method": "token", "tokenSecretRef": TOKEN_REF},
        "mode": "token",
        "policies": ["repo-read"],
    }
    block.update(changes)
    return block


REPOS_MESSAGE = (
    "spec.githubApp.repositories is missing or empty: name the repositories its tokens may reach (names "
    "without the owner, for example repositories: [agent-target-repo]), or set allRepositories: true to "
    "give every repository of installation 678"
)
PERMISSIONS_MESSAGE = (
    "spec.githubApp.permissions is missing or empty: state what its tokens may do, as permission: read, "
    "write or admin (for example permissions: {contents: read}); without it GitHub grants every "
    "permission of installation 678"
)
DEFAULT_POLICY_MESSAGE = (
    "spec.vault.policies may not contain 'default': Vault's default policy allows auth/token/renew-self, "
    "so the agent could keep its task token alive past the expiry the broker records"
)

# name -> (provider, its block, the refusal after "<Kind> <ns/>name: " (None: accepted))
CASES: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "github-app without repositories": (
        "github-app", {"githubApp": github_block(repositories=None)}, REPOS_MESSAGE),
    "github-app with an empty repository list": (
        "github-app", {"githubApp": github_block(repositories=[])}, REPOS_MESSAGE),
    "github-app without repositories, allRepositories: true": (
        "github-app", {"githubApp": github_block(repositories=None, allRepositories=True)}, None),
    "github-app with allRepositories: false said": (
        "github-app", {"githubApp": github_block(repositories=None, allRepositories=False)}, REPOS_MESSAGE),
    "github-app without permissions": (
        "github-app", {"githubApp": github_block(permissions=None)}, PERMISSIONS_MESSAGE),
    "github-app with empty permissions": (
        "github-app", {"githubApp": github_block(permissions={})}, PERMISSIONS_MESSAGE),
    "github-app naming repositories and permissions": ("github-app", {"githubApp": github_block()}, None),
    "vault token mode with policies [default, x]": (
        "vault", {"vault": vault_block(policies=["default", "repo-read"])}, DEFAULT_POLICY_MESSAGE),
    "vault token mode (the default mode) with [default] alone": (
        "vault", {"vault": {k: v for k, v in vault_block(policies=["default"]).items() if k != "mode"}},
        DEFAULT_POLICY_MESSAGE),
    "vault token mode with policies [x]": ("vault", {"vault": vault_block()}, None),
    "vault dynamic mode: policies are not the credential's": (
        "vault", {"vault": vault_block(mode="dynamic", path="database/creds/ro", policies=["default"])}, None),
}


def source_obj(provider: str, blocks: dict[str, Any], *, cluster: bool, name: str = "cred") -> dict[str, Any]:
    return source(name, provider, namespace=None if cluster else NS, **copy.deepcopy(blocks))


def where(name: str, *, cluster: bool) -> str:
    return f"ClusterCredentialSource {name}" if cluster else f"CredentialSource {NS}/{name}"


# --- the pure check -------------------------------------------------------------------------------


@pytest.mark.parametrize("cluster", [False, True], ids=["CredentialSource", "ClusterCredentialSource"])
@pytest.mark.parametrize("case", list(CASES))
def test_reading_a_source_refuses_what_its_provider_would_refuse(case: str, cluster: bool) -> None:
    provider, blocks, refusal = CASES[case]
    body = source_obj(provider, blocks, cluster=cluster)
    if refusal is None:
        assert parse_source(body).provider == provider
        return
    with pytest.raises(SourceError) as caught:
        parse_source(body)
    # one clear line: the source, the setting, what is accepted; no provider prefix, no name twice
    assert str(caught.value).startswith(f"{where('cred', cluster=cluster)}: {refusal}"), str(caught.value)
    assert str(caught.value).count("cred") == 1


@pytest.mark.parametrize("case", [c for c, (_, _, refusal) in CASES.items() if refusal])
def test_revocation_reads_a_refused_source_without_the_issue_rules(case: str) -> None:
    """``leases._revoke_entry`` reads with the rules off."""
    provider, blocks, _ = CASES[case]
    for cluster in (False, True):
        parsed = parse_source(source_obj(provider, blocks, cluster=cluster), issue_rules=False)
        assert (parsed.provider, parsed.name) == (provider, "cred")


@settings(max_examples=150, deadline=None)
@given(
    app=st.dictionaries(
        st.sampled_from(["appId", "installationId", "privateKeySecretRef", "repositories", "permissions",
                         "allRepositories", "apiURL"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=5),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
            max_leaves=6,
        ),
    )
)
def test_any_github_block_is_a_source_error_or_a_source(app: dict[str, Any]) -> None:
    """The admission index and the broker catch SourceError only: nothing else may escape."""
    try:
        parse_source(source_obj("github-app", {"githubApp": app}, cluster=False))
    except SourceError:
        pass


# --- admission: the real webhook handler with the operator's index ----------------------------------


@pytest.fixture
async def admit() -> AsyncIterator[Any]:
    """``admit(source_object) -> (AdmissionReview response, denied count)`` for a pod asking for it."""
    metrics = register_operator()
    index = CredentialIndex()
    app = webhook.make_webhook_app(
        load_config(None),
        metrics,
        mutate=partial(mutate_pod, encoded=True, delivery=index.delivery),
        credential_check=index.check,
    )
    index.mark_synced()
    client = TestClient(TestServer(app))
    await client.start_server()

    async def run(obj: dict[str, Any]) -> tuple[dict[str, Any], float]:
        index.update(obj, obj["kind"])
        review = load_review("opted-in-pod.json")
        review["request"]["object"]["metadata"]["annotations"][names.ANNOTATION_CREDENTIALS] = "cred"
        resp = await client.post("/mutate", data=json.dumps(review), headers={"Content-Type": "application/json"})
        assert resp.status == 200
        denied = metrics.admission_requests.labels(result="denied")._value.get()
        return (await resp.json())["response"], denied

    yield run
    await client.close()


@pytest.mark.parametrize("cluster", [False, True], ids=["CredentialSource", "ClusterCredentialSource"])
@pytest.mark.parametrize("case", list(CASES))
async def test_admission_denies_a_pod_naming_a_source_that_can_never_issue(
    admit: Any, case: str, cluster: bool
) -> None:
    provider, blocks, refusal = CASES[case]
    response, denied = await admit(source_obj(provider, blocks, cluster=cluster))
    if refusal is None:
        assert response["allowed"] is True and response["patchType"] == "JSONPatch", response
        assert denied == 0
        return
    assert response["allowed"] is False and response["status"]["code"] == 403, response
    message = response["status"]["message"]
    assert f"{where('cred', cluster=cluster)}: {refusal}" in message and "fix the source" in message, message
    assert denied == 1


# --- the broker: 403 policy_denied, not 502 ---------------------------------------------------------


@pytest.mark.parametrize("cluster", [False, True], ids=["CredentialSource", "ClusterCredentialSource"])
@pytest.mark.parametrize("case", [c for c, (_, _, refusal) in CASES.items() if refusal])
async def test_the_broker_refuses_such_a_source_with_403_before_any_call(case: str, cluster: bool) -> None:
    """The addresses lead nowhere: a provider call would be a 502/503, never this 403."""
    provider, blocks, refusal = CASES[case]
    h = Harness()
    h.cluster.put_source(source_obj(provider, blocks, cluster=cluster))
    await h.start()
    try:
        reply = await h.issue(h.agent(h.add_pod("agent-1", credentials="cred")))
    finally:
        await h.close()
    assert (reply.status, reply.code) == (403, "policy_denied"), reply.doc
    assert reply.doc["error"]["message"].startswith(f"credential 'cred': {where('cred', cluster=cluster)}: {refusal}")
    assert h.metrics.policy_denials.labels(reason="bad_source")._value.get() == 1
    assert h.cluster.task_leases == {}  # nothing pending, nothing issued


# --- revoking what was issued before: never blocked --------------------------------------------------


async def revoked_at_end(h: Harness) -> dict[str, Any]:
    """End the task of agent-1 (completed) with the broker's providers; the stored lease entry."""
    name = leases.lease_name("agent-1", "fix-42")
    outcome = await leases.revoke_task(h.cluster, h.providers, NS, name, "completed", metrics=None)
    stored = h.cluster.task_leases[(NS, name)]["status"]
    assert outcome.done and outcome.revoked == ["cred"], (outcome, stored)
    assert stored["phase"] == "Revoked"
    return dict(stored["leases"][0])


@pytest.mark.parametrize("cluster", [False, True], ids=["CredentialSource", "ClusterCredentialSource"])
@pytest.mark.parametrize("narrowing", ["repositories", "permissions"])
async def test_a_github_token_from_a_source_now_refused_is_still_revoked_at_github(
    github: FakeGitHub, cluster: bool, narrowing: str  # noqa: F811
) -> None:
    app: FakeApp = github.add_app("12345", installation_id="678", repositories=["agent-target-repo"],
                                  permissions={"contents": "read"})
    h = Harness()
    h.cluster.put_secret(OPERATOR_NS if cluster else NS, KEY_REF["name"], {KEY_REF["key"]: app.private_key_pem})
    h.cluster.put_source(source_obj("github-app", {"githubApp": github_block(github.url)}, cluster=cluster))
    await h.start()
    try:
        reply = await h.issue(h.agent(h.add_pod("agent-1", credentials="cred")))
        assert reply.status == 200, reply.doc
        token = reply.doc["credentials"][0]["files"]["token"]
        # the source as it was written before the rule (or edited since): refused when read
        old = source_obj("github-app", {"githubApp": github_block(github.url, **{narrowing: None})}, cluster=cluster)
        h.cluster.put_source(old)
        again = await h.issue(h.agent(h.add_pod("agent-2", credentials="cred")))
        assert (again.status, again.code) == (403, "policy_denied"), again.doc
        issued = github.token(token)
        assert issued is not None and issued.alive
        entry = await revoked_at_end(h)
    finally:
        await h.close()
        await h.providers["github-app"].aclose()  # type: ignore[attr-defined]
    assert entry["revokedAt"] and "notRevocable" not in entry, entry
    assert not issued.alive, "revoked at GitHub"
    assert github.alive_tokens() == []


@pytest.fixture(scope="module")
def bao(openbao: OpenBao) -> OpenBao:  # noqa: F811
    openbao.on_start(lambda b: b.client().sys.create_or_update_policy(
        "repo-read", 'path "secret/data/app/*" { capabilities = ["read"] }'))
    return openbao


def token_alive(bao: OpenBao, token: str) -> bool:
    """Asked as root: a task token without the default policy may not look itself up."""
    try:
        bao.client().auth.token.lookup(token)
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
        return False
    return True


@pytest.mark.parametrize("cluster", [False, True], ids=["CredentialSource", "ClusterCredentialSource"])
async def test_a_vault_token_from_a_source_now_refused_is_still_revoked_at_openbao(
    bao: OpenBao, cluster: bool
) -> None:
    h = Harness()
    h.cluster.put_secret(OPERATOR_NS if cluster else NS, TOKEN_REF["name"], {TOKEN_REF["key"]: bao.root_token})
    h.cluster.put_source(source_obj("vault", {"vault": vault_block(bao.address)}, cluster=cluster))
    await h.start()
    try:
        reply = await h.issue(h.agent(h.add_pod("agent-1", credentials="cred")))
        assert reply.status == 200, reply.doc
        token = reply.doc["credentials"][0]["files"]["token"]
        assert token_alive(bao, token)
        refused = vault_block(bao.address, policies=["default", "repo-read"])
        h.cluster.put_source(source_obj("vault", {"vault": refused}, cluster=cluster))
        again = await h.issue(h.agent(h.add_pod("agent-2", credentials="cred")))
        assert (again.status, again.code) == (403, "policy_denied"), again.doc
        entry = await revoked_at_end(h)
    finally:
        await h.close()
        await h.providers["vault"].aclose()  # type: ignore[attr-defined]
    assert entry["revokedAt"] and "notRevocable" not in entry, entry
    assert not token_alive(bao, token), "revoked at OpenBao"
