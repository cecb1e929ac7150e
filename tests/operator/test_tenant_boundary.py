"""A tenant's namespaced CredentialSource never borrows the operator's identity or the cluster's authority.

Whoever may write a CredentialSource in a namespace is trusted with that namespace only. These tests
drive the real broker (SPIFFE mTLS, tests/operator/test_broker_harness.py) and the real providers
against a recording HTTP server, and assert what a pod and a relying party see: a refusal naming the
source, the field and what is accepted, before any byte leaves the operator. Each case has a control
(the same spec on a ClusterCredentialSource) that proves the recording server would have seen it.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from aiohttp import web
from taskcreds.operator.broker.settings import BrokerSettings
from taskcreds.operator.credindex import CredentialIndex
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import IssueRequest, ProviderError
from taskcreds.operator.providers.registry import make_providers
from taskcreds.operator.providers.vault import VaultProvider

from tests.operator.test_broker_harness import SA, Harness, source
from tests.operator.test_broker_harness import harness as harness  # noqa: F401  (fixture)

OPERATOR_TOKEN = "operator-sa-token-CANARY-41d7e0"
TENANT = "team-b"
K8S_AUTH = {"method": "kubernetes", "kubernetes": {"role": "anything"}}


@dataclass
class Recorder:
    """An HTTP server that records every request it gets (path, Vault token header, JSON body)."""

    host: str = "127.0.0.1"
    port: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    async def start(self, bind: str = "127.0.0.1") -> None:
        async def record(request: web.Request) -> web.Response:
            body = await request.json() if request.can_read_body else None
            self.received.append(
                {"path": request.path, "token": request.headers.get("X-Vault-Token"), "body": body}
            )
            if request.path == "/v1/auth/token/lookup-self":
                return web.json_response({"data": {"ttl": 0}})
            return web.json_response({"errors": ["permission denied"]}, status=403)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, bind, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def url(self, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}"

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    r = Recorder()
    await r.start()
    yield r
    await r.close()


def vault_block(address: str, auth: dict[str, Any]) -> dict[str, Any]:
    return {"address": address, "auth": auth, "mode": "token", "policies": ["x"]}


def with_operator_token(h: Harness, tmp_path: Path) -> None:
    """The broker's vault provider, as in production but reading its SA token from here."""
    (tmp_path / "token").write_text(OPERATOR_TOKEN)
    from taskcreds.operator.broker.server import BROKER_KEY

    h.app[BROKER_KEY].providers["vault"] = VaultProvider(h.cluster, sa_token_path=str(tmp_path / "token"))


# --- finding 1: vault auth.method kubernetes logs in as the operator ------------------------------


async def test_a_namespaced_vault_source_never_sends_the_operator_s_token(
    harness: Harness, recorder: Recorder, tmp_path: Path  # noqa: F811
) -> None:
    with_operator_token(harness, tmp_path)
    harness.cluster.put_source(
        source("exfil", "vault", namespace=TENANT, accounts=("builder",),
               vault=vault_block(recorder.url(), K8S_AUTH))
    )
    pod = harness.add_pod("tenant-pod", namespace=TENANT, service_account="builder", credentials="exfil")
    reply = await harness.issue(harness.agent(pod))
    assert (reply.status, reply.code) == (403, "policy_denied"), reply.doc
    message = reply.doc["error"]["message"]
    for words in ("CredentialSource team-b/exfil", "spec.vault.auth.method 'kubernetes'",
                  "only a ClusterCredentialSource may use it", "method token (tokenSecretRef) or approle"):
        assert words in message, message
    assert recorder.received == []
    assert OPERATOR_TOKEN not in reply.raw.decode()

    # control: the same spec on a ClusterCredentialSource (cluster-admin's) does log in as the operator
    harness.cluster.put_source(
        source("admin-bao", "vault", namespace=None, accounts=("builder",),
               allowedNamespaces=[TENANT], vault=vault_block(recorder.url(), K8S_AUTH))
    )
    pod = harness.add_pod("admin-pod", namespace=TENANT, service_account="builder", credentials="admin-bao")
    reply = await harness.issue(harness.agent(pod))
    assert reply.status == 502, reply.doc  # the recorder refuses the login
    assert [r["body"]["jwt"] for r in recorder.received] == [OPERATOR_TOKEN]


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (else None: skip). A UDP connect sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_a_namespaced_vault_source_may_not_use_plain_http_beyond_loopback(
    harness: Harness, tmp_path: Path  # noqa: F811
) -> None:
    host = _non_loopback_address()
    if host is None:
        pytest.skip("this machine has no non-loopback address")
    outside = Recorder(host=host)
    await outside.start(bind=host)
    try:
        harness.cluster.put_secret(TENANT, "bao", {"token": "tenant-own-token"})
        auth = {"method": "token", "tokenSecretRef": {"name": "bao", "key": "token"}}
        harness.cluster.put_source(
            source("plain", "vault", namespace=TENANT, accounts=("builder",), vault=vault_block(outside.url(), auth))
        )
        pod = harness.add_pod("tenant-pod", namespace=TENANT, service_account="builder", credentials="plain")
        reply = await harness.issue(harness.agent(pod))
        assert (reply.status, reply.code) == (403, "policy_denied"), reply.doc
        assert "a CredentialSource must use https://" in reply.doc["error"]["message"]
        assert outside.received == []
        # control: the same address is reachable; a ClusterCredentialSource may use it
        harness.cluster.put_secret("taskcreds-system", "bao", {"token": "admin-token"})
        harness.cluster.put_source(
            source("plain", "vault", namespace=None, accounts=("builder",), allowedNamespaces=[TENANT],
                   vault=vault_block(outside.url(), auth))
        )
        harness.cluster.sources.pop((TENANT, "plain"))  # the namespaced one would be found first
        reply = await harness.issue(harness.agent(pod))
        assert [r["token"] for r in outside.received][:1] == ["admin-token"], reply.doc
    finally:
        await outside.close()


@pytest.mark.parametrize("call", ["issue", "renew", "revoke"])
async def test_the_vault_provider_refuses_it_too_before_any_network_call(
    recorder: Recorder, tmp_path: Path, call: str
) -> None:
    """Defence in depth: a caller that skipped the source's parsing still gets nothing sent."""
    (tmp_path / "token").write_text(OPERATOR_TOKEN)
    provider = VaultProvider(MemCluster(), sa_token_path=str(tmp_path / "token"))
    spec = {"provider": "vault", "vault": vault_block(recorder.url(), K8S_AUTH)}
    req = IssueRequest(credential="exfil", source_spec=spec, source_namespace=TENANT, namespace=TENANT,
                       pod="p", pod_uid="u", service_account="builder", task="t", ttl_seconds=60)
    with pytest.raises(ProviderError, match=r"namespace 'team-b': spec\.vault\.auth\.method 'kubernetes'") as caught:
        if call == "issue":
            await provider.issue(req)
        elif call == "renew":
            await provider.renew("accessor-1", req)
        else:
            await provider.revoke("accessor-1", spec, TENANT)
    assert not caught.value.retryable
    assert recorder.received == []
    await provider.aclose()


def test_admission_names_why_such_a_source_cannot_be_used() -> None:
    index = CredentialIndex()
    index.update(source("exfil", "vault", namespace=TENANT, accounts=("builder",),
                        vault=vault_block("https://bao:8200", K8S_AUTH)))
    index.mark_synced()
    reason = index.check(TENANT, "builder", "exfil")
    assert reason is not None and "spec.vault.auth.method 'kubernetes'" in reason and "fix the source" in reason


# --- finding 2: jwt audiences of a namespaced source ---------------------------------------------


async def test_a_namespaced_jwt_source_cannot_mint_a_cluster_source_s_audience(harness: Harness) -> None:  # noqa: F811
    outsider = harness.add_pod("outsider", namespace=TENANT, service_account=SA, credentials="shared")
    denied = await harness.issue(harness.agent(outsider))
    assert (denied.status, denied.code) == (403, "policy_denied"), denied.doc  # allowedNamespaces [team-a]
    # the tenant writes its own source of that name, with the cluster source's audience: refused
    harness.cluster.put_source(
        source("shared", "jwt", namespace=TENANT, jwt={"audience": ["shared-api"], "claims": {"scope": "admin"}})
    )
    reply = await harness.issue(harness.agent(outsider))
    assert (reply.status, reply.code) == (403, "policy_denied"), reply.doc
    message = reply.doc["error"]["message"]
    assert "CredentialSource team-b/shared: spec.jwt.audience 'shared-api'" in message
    assert "may only mint audiences that start with 'team-b/'" in message
    # with its own prefix it gets a token; the cluster source's relying party refuses it
    harness.cluster.put_source(
        source("shared", "jwt", namespace=TENANT, jwt={"audience": ["team-b/shared-api"]})
    )
    reply = await harness.issue(harness.agent(outsider))
    assert reply.status == 200, reply.doc
    token = reply.doc["credentials"][0]["files"]["token"]
    from taskcreds.operator.broker.server import BROKER_KEY

    signer = harness.app[BROKER_KEY].providers["jwt"]
    with pytest.raises(pyjwt.InvalidAudienceError):
        signer.verify(token, "shared-api")
    claims = signer.verify(token, "team-b/shared-api")
    assert (claims["source_kind"], claims["namespace"]) == ("CredentialSource", TENANT)


async def test_the_cluster_source_s_tokens_say_so(harness: Harness) -> None:  # noqa: F811
    pod = harness.add_pod("agent-1", credentials="shared")
    reply = await harness.issue(harness.agent(pod))
    assert reply.status == 200, reply.doc
    from taskcreds.operator.broker.server import BROKER_KEY

    token = reply.doc["credentials"][0]["files"]["token"]
    claims = harness.app[BROKER_KEY].providers["jwt"].verify(token, "shared-api")
    assert claims["source_kind"] == "ClusterCredentialSource"


# --- finding 6: the operator's namespace, whatever it is called -----------------------------------


async def test_cluster_sources_read_secrets_from_the_operator_s_own_namespace(recorder: Recorder) -> None:
    cluster = MemCluster()
    cluster.put_secret("taskcreds-system", "bao", {"token": "token-in-the-default-namespace"})
    cluster.put_secret("tc-ops", "bao", {"token": "token-in-the-operator-namespace"})
    providers = make_providers(cluster, BrokerSettings(namespace="tc-ops", jwt_issuer="https://broker.test"))
    spec = {"provider": "vault", "vault": vault_block(
        recorder.url(), {"method": "token", "tokenSecretRef": {"name": "bao", "key": "token"}})}
    req = IssueRequest(credential="bao", source_spec=spec, source_namespace=None, namespace="agents",
                       pod="p", pod_uid="u", service_account="agent", task="t", ttl_seconds=60)
    with pytest.raises(ProviderError):
        await providers["vault"].issue(req)  # the recorder refuses to create the task's token
    assert [r["token"] for r in recorder.received][:1] == ["token-in-the-operator-namespace"]
    await providers["vault"].aclose()  # type: ignore[attr-defined]

    github = {"provider": "github-app", "githubApp": {
        "appId": "1", "installationId": "2", "privateKeySecretRef": {"name": "gh-app", "key": "key.pem"},
        "repositories": ["repo"], "permissions": {"contents": "read"}}}
    with pytest.raises(ProviderError, match="Secret tc-ops/gh-app key 'key.pem': the Secret does not exist"):
        await providers["github-app"].issue(
            IssueRequest(credential="gh", source_spec=github, source_namespace=None, namespace="agents",
                         pod="p", pod_uid="u", service_account="agent", task="t", ttl_seconds=60)
        )
    close = getattr(providers["github-app"], "aclose", None)
    if close is not None:
        await close()


# --- the examples people copy show only setups the operator accepts --------------------------------

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "credentialsources").glob("*.yaml"))


def _example_sources() -> list[tuple[str, dict[str, Any]]]:
    import yaml

    docs = [(p.name, d) for p in EXAMPLES for d in yaml.safe_load_all(p.read_text()) if d]
    return [(f, d) for f, d in docs if d.get("kind") in ("CredentialSource", "ClusterCredentialSource")]


@pytest.mark.parametrize(("file", "doc"), _example_sources(),
                         ids=[f"{f}:{d['metadata']['name']}" for f, d in _example_sources()])
def test_every_example_source_is_accepted(file: str, doc: dict[str, Any]) -> None:
    from taskcreds.operator.sources import parse_source

    assert parse_source(doc).name == doc["metadata"]["name"]


# --- kubernetes-token: TokenRequest with the operator's rights -------------------------------------

DEPLOYER = {"serviceAccount": "deployer", "audiences": ["https://kubernetes.default.svc"]}


async def test_a_namespaced_source_cannot_mint_service_account_tokens(harness: Harness) -> None:  # noqa: F811
    """A tenant who may write CredentialSources but not `create serviceaccounts/token` gains nothing:
    refused before any API call; the cluster admin's ClusterCredentialSource is the way (control)."""
    secrets_before = set(harness.cluster.secrets)
    harness.cluster.put_source(source("deploy", "kubernetes-token", namespace=TENANT, accounts=("builder",),
                                      kubernetesToken=DEPLOYER))
    pod = harness.add_pod("tenant-pod", namespace=TENANT, service_account="builder", credentials="deploy")
    reply = await harness.issue(harness.agent(pod))
    assert (reply.status, reply.code) == (403, "policy_denied"), reply.doc
    message = reply.doc["error"]["message"]
    for words in ("CredentialSource team-b/deploy", "spec.provider 'kubernetes-token' is not accepted",
                  "spec.kubernetesToken.serviceAccount", "only a ClusterCredentialSource may use it"):
        assert words in message, message
    assert set(harness.cluster.secrets) == secrets_before  # no binding Secret, so no TokenRequest

    harness.cluster.sources.pop((TENANT, "deploy"))
    harness.cluster.put_source(source("deploy", "kubernetes-token", namespace=None, accounts=("builder",),
                                      allowedNamespaces=[TENANT], kubernetesToken=DEPLOYER))
    reply = await harness.issue(harness.agent(pod))
    assert reply.status == 200, reply.doc
    ident = await harness.cluster.review_token(reply.doc["credentials"][0]["files"]["token"],
                                               "https://kubernetes.default.svc")
    assert ident is not None and (ident.namespace, ident.service_account) == (TENANT, "deployer")


# --- sources.allowedAddresses ----------------------------------------------------------------------


async def test_the_allow_list_stops_a_namespaced_source_before_it_calls_out(
    harness: Harness, recorder: Recorder  # noqa: F811
) -> None:
    """With sources.allowedAddresses set, a tenant's vault address elsewhere (here a loopback
    listener, as an in-cluster service would be) is refused and nothing reaches it; listed, it does."""
    from taskcreds.operator.config import SourcesConfig
    from taskcreds.operator.sources import configure_tenant_rules, tenant_rules

    before = tenant_rules()
    harness.cluster.put_secret(TENANT, "bao", {"token": "tenant-own-token"})
    auth = {"method": "token", "tokenSecretRef": {"name": "bao", "key": "token"}}
    harness.cluster.put_source(source("bao", "vault", namespace=TENANT, accounts=("builder",),
                                      vault=vault_block(recorder.url(), auth)))
    pod = harness.add_pod("tenant-pod", namespace=TENANT, service_account="builder", credentials="bao")
    try:
        configure_tenant_rules(SourcesConfig(allowed_addresses=("https://vault.corp.example",)))
        reply = await harness.issue(harness.agent(pod))
        assert (reply.status, reply.code) == (403, "policy_denied"), reply.doc
        assert (f"spec.vault.address '{recorder.url()}' is not among the addresses this operator lets a "
                "CredentialSource use (its sources.allowedAddresses: https://vault.corp.example)") \
            in reply.doc["error"]["message"]
        assert recorder.received == []
        configure_tenant_rules(SourcesConfig(allowed_addresses=(f"http://127.0.0.1:{recorder.port}",)))
        await harness.issue(harness.agent(pod))
        assert [r["token"] for r in recorder.received][:1] == ["tenant-own-token"]
    finally:
        configure_tenant_rules(before)
