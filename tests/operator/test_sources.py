"""CredentialSources: typed reading, resolution order, and Secret references."""

from __future__ import annotations

from typing import Any

import pytest
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import ProviderError
from taskcreds.operator.sources import (
    ProxySettings,
    SourceError,
    default_files,
    parse_source,
    read_secret_value,
    resolve_source,
    secret_namespace,
    source_from_ref,
)

from taskcreds import names


def obj(spec: dict[str, Any], *, cluster: bool = False) -> dict[str, Any]:
    if cluster:
        return {"kind": names.KIND_CLUSTER_CREDENTIAL_SOURCE, "metadata": {"name": "github"}, "spec": spec}
    return {
        "kind": names.KIND_CREDENTIAL_SOURCE,
        "metadata": {"name": "github", "namespace": "agents"},
        "spec": spec,
    }


BASE = {"provider": "jwt", "maxTTL": "1h", "allowedServiceAccounts": ["coding-agent"]}


def test_parse_defaults() -> None:
    s = parse_source(obj(BASE))
    assert (s.provider, s.default_ttl, s.max_ttl, s.files, s.delivery) == (
        "jwt",
        900,
        3600,
        ("token",),
        "file",
    )
    assert s.ref == {"kind": "CredentialSource", "name": "github", "namespace": "agents"}
    assert parse_source(obj({**BASE, "maxTTL": "5m"})).default_ttl == 300  # default never above max


@pytest.mark.parametrize(
    ("provider", "spec", "files"),
    [
        ("jwt", {}, ("token",)),
        ("github-app", {"githubApp": {}}, ("token",)),
        ("kubernetes-token", {"kubernetesToken": {}}, ("token",)),
        ("vault", {"vault": {"mode": "token"}}, ("token",)),
        (
            "vault",
            {"vault": {"mode": "dynamic", "fileMap": {"username": "user", "password": "pass"}}},
            ("user", "pass"),
        ),
        ("secret", {"secret": {"secretRef": {"name": "x", "key": "api-key"}}}, ("api-key",)),
    ],
)
def test_default_files_per_provider(provider: str, spec: dict[str, Any], files: tuple[str, ...]) -> None:
    assert default_files(provider, spec) == files


BAD = [
    ("unknown provider", {**BASE, "provider": "ldap"}, False, "spec.provider 'ldap'"),
    ("provider block missing", {**BASE, "provider": "vault"}, False, "needs spec.vault"),
    ("maxTTL missing", {k: v for k, v in BASE.items() if k != "maxTTL"}, False, "spec.maxTTL is required"),
    ("maxTTL garbled", {**BASE, "maxTTL": "1 hour"}, False, "spec.maxTTL"),
    ("default above max", {**BASE, "defaultTTL": "2h"}, False, "above spec.maxTTL"),
    (
        "no service accounts",
        {k: v for k, v in BASE.items() if k != "allowedServiceAccounts"},
        False,
        "allowedServiceAccounts is required",
    ),
    ("wildcard", {**BASE, "allowedServiceAccounts": ["*"]}, False, "no wildcard"),
    ("cluster source without namespaces", BASE, True, "allowedNamespaces is required"),
    ("bad file name", {**BASE, "files": ["a/b"]}, False, "spec.files"),
    ("duplicate files", {**BASE, "files": ["a", "a"]}, False, "spec.files"),
    ("bad delivery", {**BASE, "delivery": "env"}, False, "spec.delivery"),
]


@pytest.mark.parametrize(("case", "spec", "cluster", "message"), BAD, ids=[b[0] for b in BAD])
def test_parse_refusals_name_the_field(case: str, spec: dict[str, Any], cluster: bool, message: str) -> None:
    with pytest.raises(SourceError) as info:
        parse_source(obj(spec, cluster=cluster))
    assert message in str(info.value)
    assert "github" in str(info.value)


async def test_resolution_prefers_the_namespace() -> None:
    mem = MemCluster()
    mem.put_source(
        {
            "kind": names.KIND_CLUSTER_CREDENTIAL_SOURCE,
            "metadata": {"name": "github"},
            "spec": {**BASE, "allowedNamespaces": ["agents"], "maxTTL": "2h"},
        }
    )
    found = await resolve_source(mem, "agents", "github")
    assert (
        found is not None and found.kind == names.KIND_CLUSTER_CREDENTIAL_SOURCE and found.namespace is None
    )
    mem.put_source(obj(BASE))
    found = await resolve_source(mem, "agents", "github")
    assert found is not None and found.kind == names.KIND_CREDENTIAL_SOURCE and found.max_ttl == 3600
    assert await resolve_source(mem, "agents", "nope") is None
    again = await source_from_ref(mem, found.ref)
    assert again == found


async def test_broken_namespaced_source_does_not_fall_through() -> None:
    mem = MemCluster()
    mem.put_source(
        {
            "kind": names.KIND_CLUSTER_CREDENTIAL_SOURCE,
            "metadata": {"name": "github"},
            "spec": {**BASE, "allowedNamespaces": ["agents"]},
        }
    )
    mem.put_source(obj({**BASE, "maxTTL": "soon"}))
    with pytest.raises(SourceError):
        await resolve_source(mem, "agents", "github")


@pytest.mark.parametrize(
    ("ref", "source_ns", "expected"),
    [
        ({"name": "s", "key": "k"}, "agents", "agents"),
        ({"name": "s", "key": "k"}, None, "taskcreds-system"),
        ({"name": "s", "key": "k", "namespace": "vault"}, None, "vault"),
    ],
)
def test_secret_namespace(ref: dict[str, str], source_ns: str | None, expected: str) -> None:
    assert secret_namespace(ref, source_ns, "taskcreds-system") == expected


async def test_read_secret_value_errors_never_show_values() -> None:
    mem = MemCluster()
    mem.put_secret("agents", "s", {"k": "the-value"})
    assert (
        await read_secret_value(
            mem,
            {"name": "s", "key": "k"},
            source_namespace="agents",
            operator_namespace="op",
            provider="secret",
        )
        == b"the-value"
    )
    for ref, message in [
        ({"name": "s", "key": "other"}, "has no key 'other' (keys: k)"),
        ({"name": "missing", "key": "k"}, "Secret agents/missing not found"),
        ({"name": "s"}, "needs name and key"),
    ]:
        with pytest.raises(ProviderError) as info:
            await read_secret_value(
                mem, ref, source_namespace="agents", operator_namespace="op", provider="secret"
            )
        assert message in str(info.value) and "the-value" not in str(info.value)


@pytest.mark.parametrize(
    "ref",
    [
        {"name": "db-root", "key": "password", "namespace": "kube-system"},
        {"name": "other-tenant", "key": "token", "namespace": "team-b"},
    ],
)
def test_a_namespaced_source_cannot_reach_secrets_of_another_namespace(ref: dict[str, str]) -> None:
    """The operator reads Secrets cluster-wide: a tenant's CredentialSource must not borrow that."""
    with pytest.raises(SourceError, match="only use Secrets in its own namespace"):
        secret_namespace(ref, "agents", "taskcreds-system")
    assert secret_namespace({**ref, "namespace": "agents"}, "agents", "taskcreds-system") == "agents"


async def test_the_secret_provider_refuses_a_cross_namespace_ref_without_reading_it() -> None:
    from taskcreds.operator.memcluster import MemCluster
    from taskcreds.operator.providers.base import ProviderError
    from taskcreds.operator.sources import read_secret_value

    mem = MemCluster()
    mem.put_secret("kube-system", "db-root", {"password": "hunter2-canary"})
    with pytest.raises(ProviderError) as err:
        await read_secret_value(
            mem,
            {"name": "db-root", "key": "password", "namespace": "kube-system"},
            source_namespace="agents",
            operator_namespace="taskcreds-system",
            provider="secret",
        )
    assert not err.value.retryable
    assert "hunter2-canary" not in str(err.value)


async def test_namespaced_source_may_not_read_another_namespace() -> None:
    mem = MemCluster()
    mem.put_secret("kube-system", "admin", {"token": "cluster-admin-token"})
    with pytest.raises(ProviderError) as info:
        await read_secret_value(
            mem,
            {"name": "admin", "key": "token", "namespace": "kube-system"},
            source_namespace="agents",
            operator_namespace="op",
            provider="secret",
        )
    assert "may only use Secrets in its own namespace" in str(info.value)
    assert "cluster-admin-token" not in str(info.value)


# --- proxy delivery (spec.delivery: proxy + spec.proxy) -------------------------------------------
PROXY = {**BASE, "delivery": "proxy"}
GOOD_PROXY = [
    (
        "bearer header",
        {"hosts": ["api.github.com"], "header": "Authorization: Bearer {token}"},
        ProxySettings(("api.github.com",), header="Authorization: Bearer {token}"),
    ),
    (
        "basic for git, wildcard, upper case and a trailing dot normalized, duplicates dropped",
        {"hosts": ["GitHub.com.", "*.githubusercontent.com", "github.com"], "basic": {"username": "x-access-token"}},
        ProxySettings(("github.com", "*.githubusercontent.com"), basic_username="x-access-token"),
    ),
    (
        "custom header with spaces trimmed, plain http allowed",
        {"hosts": ["api.internal"], "header": "X-Api-Key :  {token}", "allowHttp": True},
        ProxySettings(("api.internal",), header="X-Api-Key: {token}", allow_http=True),
    ),
]


@pytest.mark.parametrize(("case", "proxy", "expected"), GOOD_PROXY, ids=[g[0] for g in GOOD_PROXY])
def test_proxy_settings_are_parsed(case: str, proxy: dict[str, Any], expected: ProxySettings) -> None:
    s = parse_source(obj({**PROXY, "proxy": proxy}))
    assert s.delivery == "proxy" and s.proxy == expected


def test_proxy_settings_travel_as_json_without_values() -> None:
    s = parse_source(obj({**PROXY, "proxy": {"hosts": ["github.com"], "basic": {"username": "x-access-token"}}}))
    assert s.proxy is not None and s.proxy.to_json() == {
        "hosts": ["github.com"],
        "header": None,
        "basicUsername": "x-access-token",
        "allowHttp": False,
    }
    assert parse_source(obj(BASE)).proxy is None


def test_every_host_the_broker_accepts_the_sidecar_route_accepts() -> None:
    """Operator and sidecar check hosts separately; a source the broker hands out must never fail
    in the sidecar (the pod would never be ready)."""
    from taskcreds.sidecar.proxy import ProxyRoute

    for _case, proxy, _expected in GOOD_PROXY:
        settings = parse_source(obj({**PROXY, "proxy": proxy})).proxy
        assert settings is not None
        route = ProxyRoute("github", settings.hosts, header=settings.header,
                           basic_username=settings.basic_username, allow_http=settings.allow_http)
        assert route.hosts == settings.hosts


BAD_PROXY = [
    ("proxy delivery without proxy", PROXY, "spec.proxy is required when spec.delivery is proxy"),
    ("proxy settings on a file source", {**BASE, "proxy": {"hosts": ["a.b"]}}, "spec.proxy is set but"),
    ("no hosts", {**PROXY, "proxy": {"header": "A: {token}"}}, "spec.proxy.hosts is required"),
    ("empty hosts", {**PROXY, "proxy": {"hosts": [], "header": "A: {token}"}}, "spec.proxy.hosts is required"),
    ("host with a path", {**PROXY, "proxy": {"hosts": ["a.b/c"], "header": "A: {token}"}},
     "spec.proxy.hosts[0] 'a.b/c' is not a host name"),
    ("bare star", {**PROXY, "proxy": {"hosts": ["ok.example", "*"], "header": "A: {token}"}},
     "spec.proxy.hosts[1] '*' is not a host name"),
    ("wildcard over a top-level domain", {**PROXY, "proxy": {"hosts": ["*.com"], "header": "A: {token}"}},
     "spec.proxy.hosts[0] '*.com' would match a whole top-level domain"),
    ("host not a string", {**PROXY, "proxy": {"hosts": [7], "header": "A: {token}"}},
     "spec.proxy.hosts[0] must be a string"),
    ("neither header nor basic", {**PROXY, "proxy": {"hosts": ["a.b"]}}, "exactly one of header"),
    ("both header and basic", {**PROXY, "proxy": {"hosts": ["a.b"], "header": "A: {token}", "basic": {"username": "u"}}},
     "exactly one of header"),
    ("header without a placeholder", {**PROXY, "proxy": {"hosts": ["a.b"], "header": "Authorization: Bearer x"}},
     "spec.proxy.header 'Authorization: Bearer x' has no placeholder"),
    ("header without a name", {**PROXY, "proxy": {"hosts": ["a.b"], "header": "{token}"}},
     "spec.proxy.header '{token}' must look like"),
    ("header placeholder names no file", {**PROXY, "proxy": {"hosts": ["a.b"], "header": "A: {password}"}},
     "placeholder {password} is not one of the source's files (token)"),
    ("header placeholder with a format spec", {**PROXY, "proxy": {"hosts": ["a.b"], "header": "A: {token:>9}"}},
     "must be a plain file name"),
    ("header the proxy manages", {**PROXY, "proxy": {"hosts": ["a.b"], "header": "Host: {token}"}},
     "header 'Host' is managed by the proxy"),
    ("header with a line break", {**PROXY, "proxy": {"hosts": ["a.b"], "header": "A: {token}\r\nB: c"}},
     "on one line"),
    ("basic username with a colon", {**PROXY, "proxy": {"hosts": ["a.b"], "basic": {"username": "a:b"}}},
     "spec.proxy.basic.username must be"),
    ("basic without a token file", {**PROXY, "files": ["password"], "proxy": {"hosts": ["a.b"], "basic": {"username": "u"}}},
     "spec.proxy.basic sends the file 'token'"),
    ("allowHttp not a boolean", {**PROXY, "proxy": {"hosts": ["a.b"], "header": "A: {token}", "allowHttp": "yes"}},
     "spec.proxy.allowHttp must be true or false"),
    ("unknown proxy field", {**PROXY, "proxy": {"hosts": ["a.b"], "header": "A: {token}", "host": "a.b"}},
     "spec.proxy.host is not a field"),
]


@pytest.mark.parametrize(("case", "spec", "message"), BAD_PROXY, ids=[b[0] for b in BAD_PROXY])
def test_proxy_refusals_name_the_field(case: str, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SourceError) as info:
        parse_source(obj(spec))
    assert message in str(info.value)
    assert "CredentialSource agents/github" in str(info.value)


# --- the tenant boundary: what a namespaced CredentialSource may not borrow ----------------------

_K8S_AUTH = {"method": "kubernetes", "kubernetes": {"role": "taskcreds"}}
_TOKEN_AUTH = {"method": "token", "tokenSecretRef": {"name": "bao", "key": "token"}}
_APPROLE_AUTH = {"method": "approle", "approle": {"roleId": "r", "secretIdSecretRef": {"name": "s", "key": "k"}}}


def vault_source(address: str, auth: dict[str, Any], *, cluster: bool) -> dict[str, Any]:
    spec = {**BASE, "provider": "vault", "vault": {"address": address, "auth": auth, "mode": "token",
                                                    "policies": ["p"]}}
    if cluster:
        spec["allowedNamespaces"] = ["agents"]
    return obj(spec, cluster=cluster)


def jwt_source(audience: Any, *, cluster: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {**BASE, "jwt": {} if audience is None else {"audience": audience}}
    if cluster:
        spec["allowedNamespaces"] = ["agents"]
    return obj(spec, cluster=cluster)


def token_source(*, cluster: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {**BASE, "provider": "kubernetes-token",
                            "kubernetesToken": {"serviceAccount": "deployer", "audiences": ["https://kubernetes.default.svc"]}}
    if cluster:
        spec["allowedNamespaces"] = ["agents"]
    return obj(spec, cluster=cluster)


def github_source(api_url: str | None, *, cluster: bool) -> dict[str, Any]:
    app: dict[str, Any] = {"appId": "1", "installationId": "2", "privateKeySecretRef": {"name": "gh", "key": "pem"},
                           "repositories": ["agent-target-repo"], "permissions": {"contents": "read"}}
    if api_url is not None:
        app["apiURL"] = api_url
    spec: dict[str, Any] = {**BASE, "provider": "github-app", "githubApp": app}
    if cluster:
        spec["allowedNamespaces"] = ["agents"]
    return obj(spec, cluster=cluster)


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        pytest.param(vault_source("https://bao:8200", _K8S_AUTH, cluster=False),
                     r"spec\.vault\.auth\.method 'kubernetes' is not accepted in a CredentialSource: it logs in "
                     r"to Vault as the operator itself .* only a ClusterCredentialSource may use it; .*method token "
                     r"\(tokenSecretRef\) or approle", id="vault kubernetes auth, namespaced"),
        pytest.param(vault_source("https://bao:8200", {"method": "cert"}, cluster=False),
                     r"spec\.vault\.auth\.method 'cert' is not accepted in a CredentialSource: a CredentialSource "
                     r"must use method token", id="vault unknown auth, namespaced"),
        pytest.param(vault_source("http://bao.bao.svc:8200", _TOKEN_AUTH, cluster=False),
                     r"spec\.vault\.address 'http://bao\.bao\.svc:8200': a CredentialSource must use https:// "
                     r"\(plain http:// only to a loopback address", id="vault http to a cluster host, namespaced"),
        pytest.param(vault_source("http://127.0.0.1@evil.example:8200", _TOKEN_AUTH, cluster=False),
                     r"a user name or password in the address is not accepted", id="vault http, loopback user info"),
        pytest.param(vault_source("http://10.0.0.1:8200", _APPROLE_AUTH, cluster=False),
                     r"must use https://", id="vault http to an IP, namespaced"),
        pytest.param(jwt_source(["shared-api"]), r"spec\.jwt\.audience 'shared-api': a CredentialSource in "
                     r"namespace 'agents' may only mint audiences that start with 'agents/' \(for example "
                     r"'agents/github'\)", id="jwt foreign audience, namespaced"),
        pytest.param(jwt_source(["agents/ok", "team-b/api"]), r"'team-b/api'.*start with 'agents/'",
                     id="jwt another namespace's audience among its own"),
        pytest.param(jwt_source("https://api.example"), r"'https://api\.example'.*start with 'agents/'",
                     id="jwt audience as a string"),
        pytest.param(jwt_source(["agents/"]), r"'agents/'.*start with 'agents/'", id="jwt the bare prefix"),
        pytest.param(jwt_source([7]), r"spec\.jwt\.audience 7", id="jwt audience not a string"),
        pytest.param(vault_source("https://bao:8200", _K8S_AUTH, cluster=True), None,
                     id="vault kubernetes auth, cluster source"),
        pytest.param(vault_source("http://bao.bao.svc:8200", _K8S_AUTH, cluster=True), None,
                     id="vault http, cluster source"),
        pytest.param(vault_source("https://bao:8200", _TOKEN_AUTH, cluster=False), None,
                     id="vault token auth over https, namespaced"),
        pytest.param(vault_source("https://bao:8200", _APPROLE_AUTH, cluster=False), None,
                     id="vault approle auth over https, namespaced"),
        pytest.param(vault_source("http://127.0.0.1:8200", _TOKEN_AUTH, cluster=False), None,
                     id="vault http to 127.0.0.1, namespaced (local OpenBao dev)"),
        pytest.param(vault_source("http://localhost:8200", _TOKEN_AUTH, cluster=False), None,
                     id="vault http to localhost, namespaced"),
        pytest.param(vault_source("http://[::1]:8200", _TOKEN_AUTH, cluster=False), None,
                     id="vault http to ::1, namespaced"),
        pytest.param(token_source(cluster=False),
                     r"spec\.provider 'kubernetes-token' is not accepted in a CredentialSource: it would mint a "
                     r"token for any service account of namespace 'agents' \(spec\.kubernetesToken\.serviceAccount\) "
                     r"with the operator's TokenRequest rights.*only a ClusterCredentialSource may use it",
                     id="kubernetes-token, namespaced"),
        pytest.param(github_source("http://ghe.infra.svc:8080", cluster=False),
                     r"spec\.githubApp\.apiURL 'http://ghe\.infra\.svc:8080': a CredentialSource must use https:// "
                     r"\(plain http:// only to a loopback address", id="github http to a cluster host, namespaced"),
        pytest.param(github_source("https://x:y@ghe.example", cluster=False),
                     r"spec\.githubApp\.apiURL .*a user name or password", id="github user info, namespaced"),
        pytest.param(token_source(cluster=True), None, id="kubernetes-token, cluster source"),
        pytest.param(github_source("http://ghe.infra.svc:8080", cluster=True), None, id="github http, cluster source"),
        pytest.param(github_source(None, cluster=False), None, id="github default apiURL, namespaced"),
        pytest.param(github_source("http://127.0.0.1:3000", cluster=False), None, id="github http to loopback"),
        pytest.param(jwt_source(["agents/api", "agents/other"]), None, id="jwt own audiences, namespaced"),
        pytest.param(jwt_source(None), None, id="jwt default audience, namespaced"),
        pytest.param(jwt_source(["shared-api"], cluster=True), None, id="jwt any audience, cluster source"),
    ],
)
def test_a_credential_source_cannot_borrow_the_operator_s_authority(
    body: dict[str, Any], refusal: str | None
) -> None:
    """Refused when the source is read (by the broker, the admission index, revocation): no network call."""
    if refusal is None:
        assert parse_source(body).name == "github"
        return
    with pytest.raises(SourceError, match=refusal) as caught:
        parse_source(body)
    assert str(caught.value).startswith("CredentialSource agents/github: ")


def test_a_namespaced_kind_without_a_namespace_is_not_read_as_cluster_scoped() -> None:
    body = vault_source("https://bao:8200", _K8S_AUTH, cluster=False)
    del body["metadata"]["namespace"]
    with pytest.raises(SourceError, match="a CredentialSource needs metadata.namespace"):
        parse_source(body)


async def test_resolving_a_namespaced_source_applies_the_tenant_rules() -> None:
    mem = MemCluster()
    body = vault_source("https://bao:8200", _K8S_AUTH, cluster=False)
    mem.put_source({**body, "metadata": {"name": "bao", "namespace": "agents"}})
    with pytest.raises(SourceError, match=r"CredentialSource agents/bao: spec\.vault\.auth\.method 'kubernetes'"):
        await resolve_source(mem, "agents", "bao")
    with pytest.raises(SourceError, match="only a ClusterCredentialSource may use it"):
        await source_from_ref(mem, {"kind": names.KIND_CREDENTIAL_SOURCE, "name": "bao", "namespace": "agents"})


# --- sources.allowedAddresses: the operator's list of servers namespaced sources may use ----------


@pytest.fixture
def allowed_addresses() -> Any:
    """Set the operator's ``sources.allowedAddresses`` for one test (restored after)."""
    from taskcreds.operator.config import SourcesConfig
    from taskcreds.operator.sources import configure_tenant_rules, tenant_rules

    before = tenant_rules()

    def configure(*patterns: str) -> None:
        configure_tenant_rules(SourcesConfig(allowed_addresses=patterns))

    yield configure
    configure_tenant_rules(before)


# name -> (the source, refused?)
_ALLOW_LIST = {
    "vault on the list, namespaced": (vault_source("https://vault.corp.example:8200", _TOKEN_AUTH, cluster=False), False),
    "vault off the list, namespaced": (vault_source("https://vault.tenant.example", _TOKEN_AUTH, cluster=False), True),
    "vault at an in-cluster service, namespaced": (
        vault_source("https://kube-dns.kube-system.svc:443", _TOKEN_AUTH, cluster=False), True),
    "vault at loopback http, not listed, namespaced": (
        vault_source("http://127.0.0.1:9090", _TOKEN_AUTH, cluster=False), True),
    "github default apiURL, listed": (github_source(None, cluster=False), False),
    "github enterprise off the list, namespaced": (github_source("https://ghe.tenant.example/api/v3", cluster=False), True),
    "vault off the list, cluster source": (vault_source("https://vault.tenant.example", _K8S_AUTH, cluster=True), False),
    "github off the list, cluster source": (github_source("https://ghe.tenant.example/api/v3", cluster=True), False),
}


@pytest.mark.parametrize("case", list(_ALLOW_LIST))
def test_namespaced_sources_reach_only_allowed_addresses(allowed_addresses: Any, case: str) -> None:
    body, refused = _ALLOW_LIST[case]
    allowed_addresses("https://*.corp.example:8200", "https://api.github.com")
    if not refused:
        assert parse_source(body).name == "github"
        return
    with pytest.raises(SourceError) as caught:
        parse_source(body)
    message = str(caught.value)
    assert message.startswith("CredentialSource agents/github: spec.")
    assert ("is not among the addresses this operator lets a CredentialSource use (its "
            "sources.allowedAddresses: https://*.corp.example:8200, https://api.github.com); use one of "
            "those, or ask the cluster admin for a ClusterCredentialSource") in message


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("https://attacker.example\\.corp.example", id="backslash: urllib3 ends the host there"),
        pytest.param("https://attacker.example%2F.corp.example", id="percent-encoded host"),
        pytest.param("https://attacker.example\t.corp.example", id="control character"),
    ],
)
def test_hosts_clients_could_read_differently_are_refused(allowed_addresses: Any, address: str) -> None:
    """urlsplit would read each host as ending in .corp.example and pass the allow-list; hvac's
    urllib3 sent "https://attacker.example\\.corp.example" to attacker.example (review reproducer)."""
    allowed_addresses("https://*.corp.example")
    with pytest.raises(SourceError, match="the host part may hold only letters, digits"):
        parse_source(vault_source(address, _TOKEN_AUTH, cluster=False))
    assert parse_source(vault_source("https://vault.corp.example", _TOKEN_AUTH, cluster=False))


def test_by_default_every_https_address_is_allowed() -> None:
    """Installs that set no list keep working (the documented default, ["*"])."""
    for body in (vault_source("https://vault.anywhere.example:8200", _TOKEN_AUTH, cluster=False),
                 github_source("https://ghe.anywhere.example/api/v3", cluster=False)):
        assert parse_source(body).name == "github"


def test_an_empty_list_lets_namespaced_sources_reach_no_server(allowed_addresses: Any) -> None:
    allowed_addresses()
    with pytest.raises(SourceError, match=r"sources\.allowedAddresses: none\)"):
        parse_source(github_source(None, cluster=False))
    assert parse_source(jwt_source(None)).provider == "jwt"  # no server: not concerned
