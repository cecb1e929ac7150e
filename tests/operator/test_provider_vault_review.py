"""Three findings of a review of the vault provider, each against a real OpenBao (and PostgreSQL):

1. the task token carries no ``default`` policy, so the agent cannot renew it past the expiry the
   broker records (``auth/token/renew-self``);
2. redirects are never followed: a server at the allowed address cannot send the operator's token,
   AppRole secret id or service-account JWT to another address;
3. a dynamic lease longer than the task may hold that cannot be shortened is revoked at once and
   the issue fails, instead of living the role's full TTL.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import hvac
import hvac.exceptions
import pytest
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import ProviderError
from taskcreds.operator.providers.vault import VaultProvider

from tests.openbao import OPERATOR_POLICY, OpenBao, Postgres
from tests.openbao import openbao as openbao_fixture  # noqa: F401  (the `openbao` fixture)
from tests.openbao import postgres as postgres_fixture  # noqa: F401  (the `postgres` fixture)
from tests.operator.test_provider_vault import request

NS = "agents"
OPERATOR_NS = "taskcreds-system"
OPERATOR_TOKEN = "op-token-canary-review-3c1d"
NO_RENEW_TOKEN = "op-token-no-renew-canary-8e2a"  # may read and revoke leases, not renew them
SECRET_ID = "approle-secret-canary-review-41f0"
SA_JWT = "sa-jwt-canary-review-0b7e"
REPO_READ_POLICY = 'path "secret/data/app/*" { capabilities = ["read"] }'
DB_ROLES = ("long", "longctl")  # at most 8 characters: usernames keep 8 of the role name
READ_ROLES = "".join(f'path "database/creds/{r}" {{ capabilities = ["read"] }}\n' for r in DB_ROLES)


def seed(bao: OpenBao) -> None:
    root = bao.client()
    root.sys.create_or_update_policy("taskcreds-operator", OPERATOR_POLICY + READ_ROLES)
    no_renew = "\n".join(line for line in OPERATOR_POLICY.splitlines() if "sys/leases/renew" not in line)
    root.sys.create_or_update_policy("operator-no-renew", no_renew + "\n" + READ_ROLES)
    root.sys.create_or_update_policy("repo-read", REPO_READ_POLICY)
    root.secrets.kv.v2.create_or_update_secret("app/config", secret={"greeting": "hello"})
    root.auth.token.create(
        id=OPERATOR_TOKEN, policies=["taskcreds-operator", "repo-read"], ttl="1h", no_parent=True
    )
    # without Vault's default policy too: it grants sys/leases/renew
    root.auth.token.create(
        id=NO_RENEW_TOKEN, policies=["operator-no-renew"], ttl="1h", no_parent=True, no_default_policy=True
    )


@pytest.fixture(scope="module")
def bao(openbao: OpenBao) -> OpenBao:
    openbao.on_start(seed)
    return openbao


@pytest.fixture
def cluster() -> MemCluster:
    c = MemCluster()
    for namespace in (NS, OPERATOR_NS):
        c.put_secret(namespace, "openbao-operator", {"token": OPERATOR_TOKEN})
        c.put_secret(namespace, "no-renew", {"token": NO_RENEW_TOKEN})
        c.put_secret(namespace, "approle", {"secret-id": SECRET_ID})
    return c


@pytest.fixture
async def provider(cluster: MemCluster) -> Any:
    p = VaultProvider(cluster, operator_namespace=OPERATOR_NS, timeout=3)
    yield p
    await p.aclose()


TOKEN_AUTH = {"method": "token", "tokenSecretRef": {"name": "openbao-operator", "key": "token"}}


def spec(address: str, *, max_ttl: str = "10m", **vault: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "address": address,
        "auth": TOKEN_AUTH,
        "mode": "token",
        "policies": ["repo-read"],
    }
    body.update(vault)
    return {"provider": "vault", "defaultTTL": "1m", "maxTTL": max_ttl, "vault": body}


# --- 1. no default policy: the agent cannot renew its own token ---------------------------------


async def test_agent_cannot_renew_its_task_token_past_the_recorded_expiry(
    bao: OpenBao, provider: VaultProvider
) -> None:
    src = spec(bao.address)  # ttl 30 s, maxTTL 10 m: renew-self could have reached 600 s
    issued = await provider.issue(request(src, ttl=30))
    recorded = (issued.expires_at - issued.issued_at).total_seconds()
    agent = bao.client(issued.files["token"])  # all the agent has: the token file

    with pytest.raises(hvac.exceptions.Forbidden):
        agent.auth.token.renew_self(increment="600s")
    with pytest.raises(hvac.exceptions.Forbidden):
        agent.auth.token.lookup_self()  # the default policy's other grants are gone too
    token = bao.client().auth.token.lookup(issued.files["token"])["data"]
    assert token["policies"] == ["repo-read"]
    assert token["ttl"] <= recorded <= 30
    # what the source grants still works
    read = agent.secrets.kv.v2.read_secret_version("app/config", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"greeting": "hello"}
    # and the operator still extends it, by accessor
    renewed = await provider.renew(issued.lease_ref, request(src, ttl=120))
    assert renewed.lease_ref == issued.lease_ref
    assert 110 <= bao.client().auth.token.lookup(issued.files["token"])["data"]["ttl"] <= 120
    await provider.revoke(issued.lease_ref, src, NS)


@pytest.mark.parametrize(
    "policies",
    [
        pytest.param(["default"], id="only default"),
        pytest.param(["repo-read", "default"], id="default among others"),
    ],
)
async def test_a_source_asking_for_the_default_policy_is_refused_naming_why(
    bao: OpenBao, provider: VaultProvider, policies: list[str]
) -> None:
    before = _token_count(bao)
    with pytest.raises(ProviderError) as caught:
        await provider.issue(request(spec(bao.address, policies=policies), ttl=30))
    message = str(caught.value)
    assert not caught.value.retryable
    for words in ("spec.vault.policies", "'default'", "auth/token/renew-self", "past the expiry"):
        assert words in message
    assert _token_count(bao) == before, "no token was created"


async def test_tokens_of_a_source_that_lists_default_can_still_be_renewed_and_revoked(
    bao: OpenBao, provider: VaultProvider
) -> None:
    """Refused at issue only: a lease issued before the source changed (or before the upgrade)
    must not become unrevocable."""
    issued = await provider.issue(request(spec(bao.address), ttl=30))
    changed = spec(bao.address, policies=["repo-read", "default"])
    renewed = await provider.renew(issued.lease_ref, request(changed, ttl=60))
    assert renewed.lease_ref == issued.lease_ref
    await provider.revoke(issued.lease_ref, changed, NS)
    with pytest.raises(hvac.exceptions.Forbidden):
        bao.client().auth.token.lookup(issued.files["token"])


def _token_count(bao: OpenBao) -> int:
    return len(bao.client().adapter.list("/v1/auth/token/accessors")["data"]["keys"])


# --- 2. redirects are never followed ------------------------------------------------------------


class Server:
    """A tiny threaded HTTP server on 127.0.0.1:0: ``answer(method, path, body)`` -> (status,
    headers, JSON body); every request it receives is recorded (method, path, headers, body)."""

    def __init__(self, answer: Callable[[str, str, bytes], tuple[int, dict[str, str], Any]]) -> None:
        self.received: list[tuple[str, str, dict[str, str], bytes]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.received.append((self.command, self.path, dict(self.headers), body))
                status, headers, payload = answer(self.command, self.path, body)
                data = json.dumps(payload).encode() if payload is not None else b""
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_LIST = _any  # noqa: N815 - http.server's naming

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def elsewhere() -> Iterator[Server]:
    """The address a redirect points at: it must never hear from the operator."""
    server = Server(lambda method, path, body: (200, {}, {"data": {}}))
    yield server
    server.close()


def redirector(target: Server, status: int, *, answer_lookup_self: bool = False) -> Server:
    """The only allowed address, answering ``status`` -> ``target`` (same path); with
    ``answer_lookup_self`` it lets the operator's token login succeed and redirects what follows."""

    def answer(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], Any]:
        if answer_lookup_self and path == "/v1/auth/token/lookup-self":
            return 200, {}, {"data": {"ttl": 0, "policies": ["taskcreds-operator"]}}
        return status, {"Location": target.url + path}, None

    return Server(answer)


def test_control_a_following_client_would_send_the_token_elsewhere(elsewhere: Server) -> None:
    """What the fix prevents, shown with hvac's default (redirects followed): the test setup is
    able to catch a leak, so the assertions below that nothing arrives mean something."""
    front = redirector(elsewhere, 307)
    try:
        hvac.Client(url=front.url, token=OPERATOR_TOKEN, timeout=3).auth.token.lookup_self()
    finally:
        front.close()
    assert [(m, p, h.get("X-Vault-Token")) for m, p, h, _ in elsewhere.received] == [
        ("GET", "/v1/auth/token/lookup-self", OPERATOR_TOKEN)
    ]


AUTHS = {
    "token": (TOKEN_AUTH, NS),
    "approle": (
        {
            "method": "approle",
            "approle": {"roleId": "r", "secretIdSecretRef": {"name": "approle", "key": "secret-id"}},
        },
        NS,
    ),
    "kubernetes": ({"method": "kubernetes", "kubernetes": {"role": "taskcreds"}}, None),  # cluster source
}


@pytest.mark.parametrize(
    ("auth", "status", "step"),
    [
        pytest.param("token", 307, "login", id="token auth, 307 on lookup-self"),
        pytest.param("token", 308, "login", id="token auth, 308 on lookup-self"),
        pytest.param("token", 302, "login", id="token auth, 302 on lookup-self"),
        pytest.param("approle", 307, "login", id="approle login body"),
        pytest.param("kubernetes", 307, "login", id="kubernetes login with the operator's JWT"),
        pytest.param("token", 307, "issue", id="token auth, 307 on create-orphan after login"),
        pytest.param("token", 307, "revoke", id="token auth, 307 on revoke-accessor after login"),
    ],
)
async def test_a_redirect_is_refused_and_nothing_reaches_the_other_address(
    cluster: MemCluster, elsewhere: Server, tmp_path: Any, auth: str, status: int, step: str
) -> None:
    (tmp_path / "sa-token").write_text(SA_JWT)
    front = redirector(elsewhere, status, answer_lookup_self=step != "login")
    provider = VaultProvider(
        cluster, operator_namespace=OPERATOR_NS, timeout=3, sa_token_path=str(tmp_path / "sa-token")
    )
    method, source_namespace = AUTHS[auth]
    src = spec(front.url, auth=method)
    try:
        with pytest.raises(ProviderError) as caught:
            if step == "revoke":
                await provider.revoke("accessor-1", src, source_namespace)
            else:
                await provider.issue(request(src, ttl=30, source_namespace=source_namespace))
    finally:
        await provider.aclose()
        front.close()
    assert elsewhere.received == []
    assert front.received, "the allowed address was asked"
    message = str(caught.value)
    for words in (front.url, f"redirect (HTTP {status})", "not followed", "active node", "load balancer"):
        assert words in message, message
    assert elsewhere.url not in message
    for value in (OPERATOR_TOKEN, SECRET_ID, SA_JWT):
        assert value not in message
    assert not caught.value.retryable


# --- 3. a dynamic lease longer than the task may hold -------------------------------------------


@pytest.fixture(scope="module")
def database(bao: OpenBao, postgres: Postgres) -> Postgres:
    def configure(b: OpenBao) -> None:
        root = b.client()
        root.sys.enable_secrets_engine("database")
        root.secrets.database.configure(
            name="pg",
            plugin_name="postgresql-database-plugin",
            allowed_roles=list(DB_ROLES),
            connection_url=postgres.connection_url_template(),
            username="postgres",
            password=postgres.password,
            verify_connection=True,
        )
        for role in DB_ROLES:  # the role's TTL (1 h) is far above the sources' maxTTL (10 m)
            root.secrets.database.create_role(
                name=role,
                db_name="pg",
                default_ttl="1h",
                max_ttl="2h",
                creation_statements=[
                    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
                ],
            )

    bao.on_start(configure)
    return postgres


def db_users(database: Postgres, role: str) -> int:
    """PostgreSQL roles the database engine made for ``role`` (its usernames embed the role name)."""
    answer = database.psql(
        database.superuser,
        database.password,
        f"SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%-{role}-%'",  # noqa: S608 - our own role names
    )
    assert answer.returncode == 0, answer.stderr
    return int(answer.stdout.strip())


def dynamic_spec(bao: OpenBao, role: str, auth: dict[str, Any] = TOKEN_AUTH) -> dict[str, Any]:
    return spec(bao.address, mode="dynamic", path=f"database/creds/{role}", policies=[], auth=auth)


def test_control_db_users_sees_a_user_of_the_role(bao: OpenBao, database: Postgres) -> None:
    """The check below (no user left) can fail: a lease read by hand shows up, then goes."""
    lease = bao.client().read("database/creds/longctl")
    try:
        assert db_users(database, "longctl") == 1
    finally:
        bao.client().sys.revoke_lease(lease["lease_id"])
    assert db_users(database, "longctl") == 0


@pytest.mark.parametrize(
    ("ttl", "expected"),
    [
        pytest.param(60, 60, id="requested TTL below maxTTL"),
        pytest.param(900, 600, id="requested TTL above maxTTL: maxTTL"),
    ],
)
async def test_a_renewable_lease_above_max_ttl_is_shortened(
    bao: OpenBao, database: Postgres, provider: VaultProvider, ttl: int, expected: int
) -> None:
    src = dynamic_spec(bao, "long")
    issued = await provider.issue(request(src, ttl=ttl))
    lease = bao.client().sys.read_lease(issued.lease_ref)["data"]
    assert expected - 5 <= lease["ttl"] <= expected
    assert expected - 5 <= (issued.expires_at - issued.issued_at).total_seconds() <= expected
    await provider.revoke(issued.lease_ref, src, NS)


async def test_a_lease_that_cannot_be_shortened_is_revoked_and_the_issue_fails(
    bao: OpenBao, database: Postgres, provider: VaultProvider
) -> None:
    # the operator may read and revoke, not renew: the renewal that would shorten it is refused
    src = dynamic_spec(
        bao, "long", {"method": "token", "tokenSecretRef": {"name": "no-renew", "key": "token"}}
    )
    with pytest.raises(ProviderError) as caught:
        await provider.issue(request(src, ttl=60))
    message = str(caught.value)
    assert not caught.value.retryable
    for words in (
        "3600s (the role's TTL)",
        "60s",
        "spec.maxTTL 600s",
        "shortening it failed",
        "it was revoked",
    ):
        assert words in message, message
    assert _list_leases(bao, "database/creds/long") == []
    assert db_users(database, "long") == 0, "the database user was dropped"


def _list_leases(bao: OpenBao, prefix: str) -> list[str]:
    try:
        return list(bao.client().sys.list_leases(prefix)["data"]["keys"])
    except hvac.exceptions.InvalidPath:
        return []


def fake_vault(lease_duration: int, renewable: bool, renewed_to: int | None = None) -> Server:
    """A server speaking just enough Vault for one dynamic read: OpenBao's database leases are all
    renewable and honour a shorter increment; the engines that lease without renewal (AWS STS, ...)
    need a cloud. ``renewed_to``: what a renewal answers (a server that ignores the increment)."""

    def answer(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], Any]:
        if path == "/v1/auth/token/lookup-self":
            return 200, {}, {"data": {"ttl": 0}}
        if method == "GET" and path == "/v1/aws/sts/deploy":
            return (
                200,
                {},
                {
                    "lease_id": "aws/sts/deploy/lease-1",
                    "renewable": renewable,
                    "lease_duration": lease_duration,
                    "data": {"access_key": "AKIA-canary", "secret_key": "secret-canary"},
                },
            )
        if method == "PUT" and path == "/v1/sys/leases/renew" and renewed_to is not None:
            return (
                200,
                {},
                {"lease_id": "aws/sts/deploy/lease-1", "renewable": True, "lease_duration": renewed_to},
            )
        if method == "PUT" and path == "/v1/sys/leases/revoke":
            return 204, {}, None
        return 404, {}, {"errors": ["no handler"]}

    return Server(answer)


@pytest.mark.parametrize(
    ("lease_duration", "renewable", "renewed_to", "outcome", "why"),
    [
        pytest.param(3600, False, None, "revoked", "it is not renewable", id="not renewable, 1 h: refused"),
        pytest.param(60, False, None, "issued", "", id="not renewable, within the requested TTL: issued"),
        pytest.param(
            3600, True, 3600, "revoked", "the renewal left it at 3600s", id="renewal ignores the increment"
        ),
        pytest.param(3600, True, 55, "issued", "", id="renewal shortens it: issued"),
    ],
)
async def test_a_lease_too_long_that_cannot_be_shortened_is_revoked(
    provider: VaultProvider,
    lease_duration: int,
    renewable: bool,
    renewed_to: int | None,
    outcome: str,
    why: str,
) -> None:
    server = fake_vault(lease_duration, renewable, renewed_to)
    src = spec(server.url, mode="dynamic", path="aws/sts/deploy", policies=[])
    try:
        if outcome == "issued":
            issued = await provider.issue(request(src, ttl=60))
            assert issued.lease_ref == "aws/sts/deploy/lease-1" and issued.renewable is renewable
            assert (issued.expires_at - issued.issued_at).total_seconds() == min(
                lease_duration, renewed_to or 60
            )
        else:
            with pytest.raises(ProviderError) as caught:
                await provider.issue(request(src, ttl=60))
            message = str(caught.value)
            for words in ("3600s (the role's TTL)", why, "it was revoked", "default_ttl"):
                assert words in message, message
            assert "canary" not in message
    finally:
        server.close()
    revokes = [
        json.loads(body) for method, path, _, body in server.received if path == "/v1/sys/leases/revoke"
    ]
    assert revokes == ([{"lease_id": "aws/sts/deploy/lease-1"}] if outcome == "revoked" else [])
    renewals = [json.loads(body) for _, path, _, body in server.received if path == "/v1/sys/leases/renew"]
    if renewable:  # asked to shorten it to the requested TTL
        assert renewals == [{"lease_id": "aws/sts/deploy/lease-1", "increment": 60}]
    else:
        assert renewals == [], "a lease that is not renewable is not renewed"
