"""The vault provider against a real OpenBao dev server (and a real PostgreSQL for dynamic secrets).

One OpenBao per module; its seed (policies, KV data, AppRole, the operator's token with a fixed id)
is registered with ``openbao.on_start`` so the server comes back the same after the restart test.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import hvac
import hvac.exceptions
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from taskcreds.operator.certificates import make_ca
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import IssueRequest, Provider, ProviderError
from taskcreds.operator.providers.vault import VaultProvider, parse_settings

from tests.openbao import OPERATOR_POLICY as OPENBAO_OPERATOR_POLICY
from tests.openbao import OpenBao, Postgres
from tests.openbao import openbao as openbao_fixture  # noqa: F401  (the `openbao` fixture)
from tests.openbao import openbao_tls as openbao_tls_fixture  # noqa: F401  (the `openbao_tls` fixture)
from tests.openbao import postgres as postgres_fixture  # noqa: F401  (the `postgres` fixture)

NS = "agents"
OPERATOR_NS = "taskcreds-system"
OPERATOR_TOKEN = "op-token-canary-5f1e2d"  # fixed id: re-created after a restart, so the Secret stays valid
ROLE_ID = "taskcreds-role-id"
SECRET_ID = "approle-secret-canary-77ab"
KV_VALUE = "kv-value-canary-91c3"

OPERATOR_POLICY = OPENBAO_OPERATOR_POLICY + 'path "database/creds/readonly" { capabilities = ["read"] }\n'
REPO_READ_POLICY = 'path "secret/data/app/*" { capabilities = ["read"] }'


def seed(bao: OpenBao) -> None:
    root = bao.client()
    root.sys.create_or_update_policy("taskcreds-operator", OPERATOR_POLICY)
    root.sys.create_or_update_policy("repo-read", REPO_READ_POLICY)
    root.secrets.kv.v2.create_or_update_secret("app/config", secret={"greeting": KV_VALUE})
    root.secrets.kv.v2.create_or_update_secret("other/config", secret={"greeting": "not yours"})
    root.auth.token.create(
        id=OPERATOR_TOKEN, policies=["taskcreds-operator", "repo-read"], ttl="1h", no_parent=True
    )
    root.sys.enable_auth_method("approle")
    root.auth.approle.create_or_update_approle(
        "taskcreds", token_policies=["taskcreds-operator", "repo-read"], token_ttl="10m"
    )
    root.auth.approle.update_role_id("taskcreds", ROLE_ID)
    root.auth.approle.create_custom_secret_id("taskcreds", SECRET_ID)


@pytest.fixture(scope="module")
def bao(openbao: OpenBao) -> OpenBao:
    openbao.on_start(seed)
    return openbao


@pytest.fixture
def cluster() -> MemCluster:
    c = MemCluster()
    c.put_secret(NS, "openbao-operator", {"token": OPERATOR_TOKEN})
    c.put_secret(NS, "approle", {"secret-id": SECRET_ID})
    c.put_secret(OPERATOR_NS, "openbao-operator", {"token": OPERATOR_TOKEN})
    return c


@pytest.fixture
async def provider(cluster: MemCluster) -> Any:
    p = VaultProvider(cluster, operator_namespace=OPERATOR_NS, timeout=3)
    yield p
    await p.aclose()


def spec(bao: OpenBao, *, auth: dict[str, Any] | None = None, **vault: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "address": bao.address,
        "auth": auth or {"method": "token", "tokenSecretRef": {"name": "openbao-operator", "key": "token"}},
        "mode": "token",
        "policies": ["repo-read"],
    }
    body.update(vault)
    return {
        "provider": "vault",
        "defaultTTL": "1m",
        "maxTTL": "10m",
        "allowedServiceAccounts": ["agent"],
        "vault": body,
    }


def request(source_spec: dict[str, Any], ttl: int = 60, *, source_namespace: str | None = NS) -> IssueRequest:
    return IssueRequest(
        credential="openbao",
        source_spec=source_spec,
        source_namespace=source_namespace,
        namespace=NS,
        pod="agent-0",
        pod_uid="uid-1",
        service_account="agent",
        task="fix-42",
        ttl_seconds=ttl,
    )


APPROLE: dict[str, Any] = {
    "method": "approle",
    "approle": {"roleId": ROLE_ID, "secretIdSecretRef": {"name": "approle", "key": "secret-id"}},
}


def token_ttl(bao: OpenBao, token: str) -> int:
    """Seconds left on a task token, as OpenBao sees it (looked up by root: task tokens have no
    ``default`` policy, so they may not look themselves up)."""
    return int(bao.client().auth.token.lookup(token)["data"]["ttl"])


def refused(bao: OpenBao, token: str) -> bool:
    """Whether OpenBao refuses the task token for what its policy grants (reading app/config)."""
    try:
        bao.client(token).secrets.kv.v2.read_secret_version("app/config", raise_on_deleted_version=True)
    except hvac.exceptions.Forbidden:
        return True
    return False


# --- token mode --------------------------------------------------------------------------------


async def test_token_mode_issue_use_renew_revoke(bao: OpenBao, provider: VaultProvider) -> None:
    assert isinstance(provider, Provider)
    src = spec(bao)
    issued = await provider.issue(request(src, ttl=30))
    token = issued.files["token"]
    assert list(issued.files) == ["token"]
    assert issued.lease_ref != token and issued.renewable
    assert 25 <= (issued.expires_at - issued.issued_at).total_seconds() <= 31

    child = bao.client(token)
    me = bao.client().auth.token.lookup(token)["data"]
    assert me["accessor"] == issued.lease_ref
    assert me["orphan"] is True
    assert me["meta"] == {
        "task": "fix-42",
        "pod": "agent-0",
        "namespace": NS,
        "credential": "openbao",
        "service_account": "agent",
        "issued_by": "taskcreds",
    }
    assert me["explicit_max_ttl"] == 600  # the source's maxTTL caps every renewal
    read = child.secrets.kv.v2.read_secret_version("app/config", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"greeting": KV_VALUE}
    with pytest.raises(hvac.exceptions.Forbidden):  # only what the policy allows
        child.secrets.kv.v2.read_secret_version("other/config", raise_on_deleted_version=True)

    renewed = await provider.renew(issued.lease_ref, request(src, ttl=300))
    assert renewed.lease_ref == issued.lease_ref and renewed.files == issued.files
    assert 290 <= token_ttl(bao, token) <= 300
    assert 290 <= (renewed.expires_at - renewed.issued_at).total_seconds() <= 302

    await provider.revoke(issued.lease_ref, src, NS)
    assert refused(bao, token)
    await provider.revoke(issued.lease_ref, src, NS)  # idempotent


async def test_renew_past_max_ttl_replaces_the_token_and_revokes_the_old(
    bao: OpenBao, provider: VaultProvider
) -> None:
    src = spec(bao)
    src["maxTTL"] = "20s"
    first = await provider.issue(request(src, ttl=20))
    second = await provider.renew(first.lease_ref, request(src, ttl=60))  # cap: 20s from creation
    assert second.lease_ref != first.lease_ref
    assert second.files["token"] != first.files["token"]
    assert refused(bao, first.files["token"])
    assert not refused(bao, second.files["token"])
    await provider.revoke(second.lease_ref, src, NS)


async def test_renew_after_operator_restart_replaces_the_token(bao: OpenBao, cluster: MemCluster) -> None:
    src = spec(bao)
    before = VaultProvider(cluster, operator_namespace=OPERATOR_NS)
    issued = await before.issue(request(src))
    after = VaultProvider(cluster, operator_namespace=OPERATOR_NS)  # holds no values
    renewed = await after.renew(issued.lease_ref, request(src))
    assert renewed.lease_ref != issued.lease_ref
    assert refused(bao, issued.files["token"]) and not refused(bao, renewed.files["token"])
    await after.revoke(renewed.lease_ref, src, NS)
    await before.aclose()
    await after.aclose()


async def test_revoke_without_holding_the_value_still_kills_the_token(
    bao: OpenBao, cluster: MemCluster
) -> None:
    src = spec(bao)
    issued = await VaultProvider(cluster).issue(request(src))
    await VaultProvider(cluster).revoke(issued.lease_ref, src, NS)  # a fresh operator: accessor is enough
    assert refused(bao, issued.files["token"])


async def test_files_name_follows_spec_files(bao: OpenBao, provider: VaultProvider) -> None:
    src = spec(bao)
    src["files"] = ["vault-token"]
    issued = await provider.issue(request(src))
    assert list(issued.files) == ["vault-token"]
    await provider.revoke(issued.lease_ref, src, NS)


# --- operator authentication -------------------------------------------------------------------


async def test_approle_login_issues_and_logs_in_again_after_its_token_is_revoked(
    bao: OpenBao, provider: VaultProvider
) -> None:
    src = spec(bao, auth=APPROLE)
    first = await provider.issue(request(src))
    assert not refused(bao, first.files["token"])
    # someone revokes every AppRole login token (the operator's own included)
    bao.client().sys.revoke_prefix("auth/approle/login")
    second = await provider.issue(request(src))
    assert not refused(bao, second.files["token"])
    assert not refused(bao, first.files["token"]), "orphan task tokens outlive the operator's login"
    for issued in (first, second):
        await provider.revoke(issued.lease_ref, src, NS)


async def test_token_auth_rereads_a_rotated_secret_after_its_token_is_revoked(
    bao: OpenBao, provider: VaultProvider, cluster: MemCluster
) -> None:
    root = bao.client()
    old = root.auth.token.create(policies=["taskcreds-operator", "repo-read"], ttl="10m", no_parent=True)
    cluster.put_secret(NS, "rotating", {"token": old["auth"]["client_token"]})
    src = spec(bao, auth={"method": "token", "tokenSecretRef": {"name": "rotating", "key": "token"}})
    await provider.revoke((await provider.issue(request(src))).lease_ref, src, NS)
    root.auth.token.revoke_accessor(old["auth"]["accessor"])
    new = root.auth.token.create(policies=["taskcreds-operator", "repo-read"], ttl="10m", no_parent=True)
    cluster.put_secret(NS, "rotating", {"token": new["auth"]["client_token"]})
    issued = await provider.issue(request(src))
    assert not refused(bao, issued.files["token"])
    await provider.revoke(issued.lease_ref, src, NS)


async def test_cluster_scoped_source_reads_secrets_from_the_operator_namespace(
    bao: OpenBao, provider: VaultProvider, cluster: MemCluster
) -> None:
    cluster.secrets.pop((NS, "openbao-operator"))
    src = spec(bao)
    issued = await provider.issue(request(src, source_namespace=None))
    await provider.revoke(issued.lease_ref, src, None)
    assert refused(bao, issued.files["token"])


async def test_concurrent_issues_share_one_login(bao: OpenBao, provider: VaultProvider) -> None:
    src = spec(bao, auth=APPROLE)
    before = approle_logins(bao)
    issued = await asyncio.gather(*(provider.issue(request(src)) for _ in range(8)))
    assert len({i.lease_ref for i in issued}) == 8
    assert approle_logins(bao) - before == 1
    await asyncio.gather(*(provider.revoke(i.lease_ref, src, NS) for i in issued))


def approle_logins(bao: OpenBao) -> int:
    """Live tokens made by AppRole logins (what the operator's cache should keep to one)."""
    root = bao.client()
    accessors = root.adapter.list("/v1/auth/token/accessors")["data"]["keys"]
    names = [root.auth.token.lookup_accessor(a)["data"]["display_name"] for a in accessors]
    return names.count("approle")


async def test_https_with_the_ca_from_a_secret(
    openbao_tls: OpenBao, provider: VaultProvider, cluster: MemCluster
) -> None:
    cluster.put_secret(NS, "openbao-ca", {"ca.crt": openbao_tls.ca_pem})
    cluster.put_secret(NS, "root", {"token": openbao_tls.root_token})
    openbao_tls.client().sys.create_or_update_policy("repo-read", REPO_READ_POLICY)
    src = spec(
        openbao_tls,
        auth={"method": "token", "tokenSecretRef": {"name": "root", "key": "token"}},
        caSecretRef={"name": "openbao-ca", "key": "ca.crt"},
    )
    issued = await provider.issue(request(src))
    root = openbao_tls.client()
    assert root.auth.token.lookup_accessor(issued.lease_ref)["data"]["policies"] == ["repo-read"]
    await provider.revoke(issued.lease_ref, src, NS)

    del src["vault"]["caSecretRef"]
    with pytest.raises(ProviderError, match="TLS failed.*caSecretRef") as caught:
        await provider.issue(request(src))
    assert not caught.value.retryable


# --- errors ------------------------------------------------------------------------------------

ERROR_CASES = [
    pytest.param(
        {"mode": "lease"}, False, ["spec.vault.mode", "'lease'", "token, dynamic"], id="unknown mode"
    ),
    pytest.param(
        {"address": "127.0.0.1:8200"}, False, ["spec.vault.address", "http://"], id="address without scheme"
    ),
    pytest.param(
        {"policies": []}, False, ["spec.vault.policies", "required"], id="token mode without policies"
    ),
    pytest.param(
        {"mode": "dynamic"}, False, ["spec.vault.path", "database/creds"], id="dynamic without path"
    ),
    pytest.param(
        {"auth": {"method": "token", "tokenSecretRef": {"name": "missing", "key": "token"}}},
        True,
        ["Secret agents/missing", "does not exist"],
        id="operator token Secret missing",
    ),
    pytest.param(
        {"auth": {"method": "token", "tokenSecretRef": {"name": "openbao-operator", "key": "tok"}}},
        False,
        ["key 'tok'", "keys: token"],
        id="operator token Secret key missing",
    ),
    pytest.param(
        {
            "auth": {
                "method": "token",
                "tokenSecretRef": {"name": "openbao-operator", "key": "token", "namespace": "other"},
            }
        },
        False,
        ["other/openbao-operator", "its own namespace"],
        id="Secret in another namespace",
    ),
    pytest.param(
        {"policies": ["root"]},
        False,
        ["auth/token/create-orphan", "http://127.0.0.1:", "vault:"],
        id="policy the operator may not hand out",
    ),
    pytest.param(
        {"mode": "dynamic", "path": "database/creds/admin"},
        False,
        ["permission denied", "database/creds/admin", "http://127.0.0.1:"],
        id="path the operator may not read",
    ),
    pytest.param(
        {"auth": {**APPROLE, "approle": {**APPROLE["approle"], "roleId": "wrong"}}},
        False,
        ["could not authenticate", "AppRole", "'wrong'"],
        id="wrong AppRole role id",
    ),
]


@pytest.mark.parametrize(("change", "retryable", "words"), ERROR_CASES)
async def test_errors_name_what_was_wrong(
    bao: OpenBao, provider: VaultProvider, change: dict[str, Any], retryable: bool, words: list[str]
) -> None:
    src = spec(bao)
    src["vault"].update(change)
    with pytest.raises(ProviderError) as caught:
        await provider.issue(request(src))
    message = str(caught.value)
    assert message.startswith("vault: ")
    assert caught.value.retryable is retryable, message
    for word in words:
        assert word in message
    for value in (OPERATOR_TOKEN, SECRET_ID):
        assert value not in message


class TokenReviewer:
    """The one Kubernetes API call OpenBao's kubernetes auth makes: a TokenReview, on loopback."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens  # token -> "system:serviceaccount:<ns>:<name>"
        self.reviews = 0
        reviewer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                reviewer.reviews += 1
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                user = reviewer.tokens.get(body.get("spec", {}).get("token", ""))
                status: dict[str, Any] = {"authenticated": False, "error": "invalid bearer token"}
                if user and self.path == "/apis/authentication.k8s.io/v1/tokenreviews":
                    status = {
                        "authenticated": True,
                        "audiences": [],
                        "user": {"username": user, "uid": "sa-uid-1", "groups": ["system:serviceaccounts"]},
                    }
                answer = json.dumps({**body, "status": status}).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def service_account_jwt(namespace: str, name: str) -> str:
    """A token shaped like a legacy service-account token (OpenBao reads its claims, the review decides)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(
        {
            "iss": "kubernetes/serviceaccount",
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/service-account.name": name,
            "kubernetes.io/serviceaccount/service-account.uid": "sa-uid-1",
        },
        key,
        algorithm="RS256",
    )


async def test_kubernetes_auth_logs_in_with_the_operator_s_service_account_token(
    bao: OpenBao, cluster: MemCluster, tmp_path: Any
) -> None:
    sa_token = service_account_jwt(OPERATOR_NS, "taskcreds-operator")
    reviewer = TokenReviewer({sa_token: f"system:serviceaccount:{OPERATOR_NS}:taskcreds-operator"})
    try:

        def configure(b: OpenBao) -> None:
            root = b.client()
            root.sys.enable_auth_method("kubernetes")
            ca_pem, _ = make_ca("test kubernetes CA", datetime.now(UTC))  # required; unused over http
            root.auth.kubernetes.configure(
                kubernetes_host=reviewer.url, disable_local_ca_jwt=True, kubernetes_ca_cert=ca_pem.decode()
            )
            root.auth.kubernetes.create_role(
                "taskcreds",
                bound_service_account_names=["taskcreds-operator"],
                bound_service_account_namespaces=[OPERATOR_NS],
                policies=["taskcreds-operator", "repo-read"],
            )

        bao.on_start(configure)
        (tmp_path / "token").write_text(sa_token + "\n")
        p = VaultProvider(cluster, sa_token_path=str(tmp_path / "token"))
        src = spec(bao, auth={"method": "kubernetes", "kubernetes": {"role": "taskcreds"}})
        # a ClusterCredentialSource: only one may log in as the operator
        issued = await p.issue(request(src, source_namespace=None))
        assert reviewer.reviews == 1
        assert not refused(bao, issued.files["token"])
        await p.revoke(issued.lease_ref, src, None)

        # a token the API server does not know: the TokenReview says no; not retryable, names the role
        (tmp_path / "token").write_text(service_account_jwt(OPERATOR_NS, "taskcreds-operator"))
        other = VaultProvider(cluster, sa_token_path=str(tmp_path / "token"))
        with pytest.raises(
            ProviderError, match="could not authenticate.*Kubernetes login.*'taskcreds'"
        ) as caught:
            await other.issue(request(src, source_namespace=None))
        assert not caught.value.retryable
        for provider_ in (p, other):
            await provider_.aclose()
    finally:
        reviewer.close()


async def test_kubernetes_api_failure_reading_the_secret_is_retryable(
    bao: OpenBao, provider: VaultProvider, cluster: MemCluster
) -> None:
    cluster.fail("get_secret")
    with pytest.raises(
        ProviderError, match="cannot read Secret agents/openbao-operator key 'token'"
    ) as caught:
        await provider.issue(request(spec(bao)))
    assert caught.value.retryable
    issued = await provider.issue(request(spec(bao)))  # the API is back
    await provider.revoke(issued.lease_ref, spec(bao), NS)


async def test_kubernetes_auth_without_a_service_account_token_says_where_it_looked(
    bao: OpenBao, cluster: MemCluster, tmp_path: Any
) -> None:
    p = VaultProvider(cluster, sa_token_path=str(tmp_path / "token"))
    src = spec(bao, auth={"method": "kubernetes", "kubernetes": {"role": "taskcreds"}})
    with pytest.raises(ProviderError, match=r"service-account token at .*/token") as caught:
        await p.issue(request(src, source_namespace=None))
    assert not caught.value.retryable


def test_parse_settings_defaults() -> None:
    settings = parse_settings(
        source_namespace=NS,
        spec={
            "vault": {
                "address": "https://vault:8200/",
                "mode": "dynamic",
                "path": "/database/creds/ro/",
                "auth": {
                    "method": "approle",
                    "approle": {"roleId": "r", "secretIdSecretRef": {"name": "s", "key": "k"}},
                },
            }
        },
    )
    assert settings.address == "https://vault:8200"
    assert settings.path == "database/creds/ro"
    assert settings.auth.mount_path == "approle"
    assert settings.file_map == ()


# --- dynamic mode: database engine + PostgreSQL ---------------------------------------------------


@pytest.fixture(scope="module")
def database(bao: OpenBao, postgres: Postgres) -> Postgres:
    def configure(b: OpenBao) -> None:
        root = b.client()
        root.sys.enable_secrets_engine("database")
        root.secrets.database.configure(
            name="pg",
            plugin_name="postgresql-database-plugin",
            allowed_roles=["readonly"],
            connection_url=postgres.connection_url_template(),
            username="postgres",
            password=postgres.password,
            verify_connection=True,
        )
        root.secrets.database.create_role(
            name="readonly",
            db_name="pg",
            default_ttl="60s",
            max_ttl="10m",
            creation_statements=[
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
                'GRANT pg_read_all_data TO "{{name}}";',
            ],
        )

    bao.on_start(configure)
    return postgres


def dynamic_spec(bao: OpenBao) -> dict[str, Any]:
    return spec(
        bao,
        mode="dynamic",
        path="database/creds/readonly",
        policies=[],
        fileMap={"username": "username", "password": "password"},
    )


async def test_dynamic_database_user_logs_in_until_revoked(
    bao: OpenBao, database: Postgres, provider: VaultProvider
) -> None:
    src = dynamic_spec(bao)
    issued = await provider.issue(request(src, ttl=60))
    assert sorted(issued.files) == ["password", "username"]
    assert issued.lease_ref.startswith("database/creds/readonly/")
    assert issued.files["password"] not in issued.lease_ref
    user, password = issued.files["username"], issued.files["password"]
    login = database.psql(user, password)
    assert login.returncode == 0, login.stderr
    assert login.stdout.strip() == user
    assert database.psql(user, "wrong-password").returncode != 0  # the password really is checked

    renewed = await provider.renew(issued.lease_ref, request(src, ttl=300))
    assert renewed.lease_ref == issued.lease_ref and renewed.files == issued.files
    lease = bao.client().sys.read_lease(issued.lease_ref)["data"]
    assert 290 <= lease["ttl"] <= 300
    assert 290 <= (renewed.expires_at - renewed.issued_at).total_seconds() <= 302

    await provider.revoke(issued.lease_ref, src, NS)
    refusal = database.psql(user, password)
    assert refusal.returncode != 0
    assert "authentication failed" in refusal.stderr or "does not exist" in refusal.stderr
    await provider.revoke(issued.lease_ref, src, NS)  # idempotent: already revoked


async def test_dynamic_lease_is_shortened_to_the_requested_ttl(
    bao: OpenBao, database: Postgres, provider: VaultProvider
) -> None:
    src = dynamic_spec(bao)
    issued = await provider.issue(request(src, ttl=20))  # the role's default_ttl is 60s
    lease = bao.client().sys.read_lease(issued.lease_ref)["data"]
    assert 15 <= lease["ttl"] <= 20
    assert 15 <= (issued.expires_at - issued.issued_at).total_seconds() <= 20
    await provider.revoke(issued.lease_ref, src, NS)


async def test_dynamic_file_map_names_the_files_and_a_missing_key_is_named(
    bao: OpenBao, database: Postgres, provider: VaultProvider
) -> None:
    src = dynamic_spec(bao)
    src["vault"]["fileMap"] = {"username": "PGUSER", "password": "PGPASSWORD"}
    issued = await provider.issue(request(src))
    assert sorted(issued.files) == ["PGPASSWORD", "PGUSER"]
    await provider.revoke(issued.lease_ref, src, NS)

    src["vault"]["fileMap"] = {"user": "PGUSER"}
    with pytest.raises(ProviderError, match=r"no key 'user'.*keys: password, username") as caught:
        await provider.issue(request(src))
    assert not caught.value.retryable


# --- no value anywhere but Issued.files ----------------------------------------------------------


async def test_no_value_in_logs_reprs_or_errors(
    bao: OpenBao, database: Postgres, provider: VaultProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    values = [OPERATOR_TOKEN, SECRET_ID]
    for src in (spec(bao), spec(bao, auth=APPROLE), dynamic_spec(bao)):
        issued = await provider.issue(request(src))
        values += list(issued.files.values())
        renewed = await provider.renew(issued.lease_ref, request(src, ttl=120))
        await provider.revoke(renewed.lease_ref, src, NS)
        for text in (repr(issued), str(issued), repr(renewed), repr(provider._held)):
            assert not any(v in text for v in values)
    broken = spec(bao, policies=["root"])
    with pytest.raises(ProviderError) as caught:
        await provider.issue(request(broken))
    assert caplog.records, "the provider logs what it does"
    logged = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    for value in values:
        assert value not in logged
        assert value not in str(caught.value)


# --- OpenBao down and back ---------------------------------------------------------------------
# Keep last: the restart wipes dev-mode state; the on_start hooks re-seed it.


async def test_openbao_down_is_retryable_and_issuance_works_when_it_is_back(
    bao: OpenBao, provider: VaultProvider
) -> None:
    src = spec(bao, auth=APPROLE)
    before = await provider.issue(request(src))
    bao.stop()
    try:
        started = time.monotonic()
        with pytest.raises(ProviderError) as caught:
            await provider.issue(request(src))
        assert caught.value.retryable
        assert time.monotonic() - started < 2
        assert bao.address in str(caught.value) and "auth/token/create-orphan" in str(caught.value)
        with pytest.raises(ProviderError) as revoke_failed:
            await provider.revoke(before.lease_ref, src, NS)
        assert revoke_failed.value.retryable
    finally:
        bao.start()  # empty again; the hooks re-seed policies, AppRole and the operator token
    # the operator's cached login token died with the old server: it must log in again by itself
    after = await provider.issue(request(src))
    assert not refused(bao, after.files["token"])
    await provider.revoke(after.lease_ref, src, NS)
    await provider.revoke(before.lease_ref, src, NS)  # unknown to the new server: success
    await asyncio.sleep(0)
