"""The CRD manifests: valid CustomResourceDefinitions, and their schemas accept the agreed example
sources and refuse what the broker would refuse."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from taskcreds.operator.leases import lease_entry, task_lease_body
from taskcreds.operator.providers.base import Issued
from taskcreds.operator.sources import parse_source

from taskcreds import names

CRDS = Path(__file__).resolve().parents[2] / "charts" / "taskcreds" / "crds"

# the spec block every part of the project agreed on (issue: Broker and task lifecycle)
AGREED = yaml.safe_load("""
provider: github-app
defaultTTL: 15m
maxTTL: 1h
allowedServiceAccounts: [coding-agent]
allowedNamespaces: [agents]
files: [token]
delivery: file
jwt:        {audience: [my-api], claims: {scope: read}}
vault:
  address: http://127.0.0.1:8200
  caSecretRef: {name: openbao-ca, key: ca.crt}
  auth:
    method: token
    tokenSecretRef: {name: openbao-operator, key: token}
    approle: {roleId: "...", secretIdSecretRef: {name: x, key: secret-id}, mountPath: approle}
    kubernetes: {role: taskcreds, mountPath: kubernetes}
  mode: token
  policies: [repo-read]
  path: database/creds/readonly
  fileMap: {username: username, password: password}
githubApp:
  apiURL: https://api.github.com
  appId: "12345"
  installationId: "678"
  privateKeySecretRef: {name: github-app, key: private-key.pem}
  repositories: [agent-target-repo]
  permissions: {contents: write, pull_requests: write}
kubernetesToken: {serviceAccount: deployer, audiences: ["https://kubernetes.default.svc"]}
secret: {secretRef: {name: legacy-token, key: token}}
""")

BASE = {"defaultTTL": "15m", "maxTTL": "1h", "allowedServiceAccounts": ["coding-agent"]}
PER_PROVIDER = {
    "jwt": {"provider": "jwt", **BASE, "jwt": {"audience": ["agents/my-api"]}},
    "jwt without block": {"provider": "jwt", **BASE},
    "vault token": {"provider": "vault", **BASE, "vault": AGREED["vault"]},
    "vault dynamic": {
        "provider": "vault",
        **BASE,
        "vault": {
            "address": "https://bao:8200",
            "auth": {
                "method": "approle",
                "approle": {"roleId": "r", "secretIdSecretRef": {"name": "x", "key": "secret-id"}},
            },
            "mode": "dynamic",
            "path": "database/creds/readonly",
            "fileMap": {"username": "username"},
        },
    },
    "github-app": {"provider": "github-app", **BASE, "githubApp": AGREED["githubApp"]},
    "github-app every repository, said": {
        "provider": "github-app",
        **BASE,
        "githubApp": {
            **{k: v for k, v in AGREED["githubApp"].items() if k != "repositories"},
            "allRepositories": True,
            "permissions": {"contents": "read"},
        },
    },
    "kubernetes-token": {
        "provider": "kubernetes-token",
        **BASE,
        "kubernetesToken": AGREED["kubernetesToken"],
    },
    "secret": {"provider": "secret", **BASE, "secret": AGREED["secret"]},
}


def _crd(name: str) -> dict[str, Any]:
    return yaml.safe_load((CRDS / name).read_text())


def _schema(name: str) -> dict[str, Any]:
    return _crd(name)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _errors(crd: str, obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(_schema(crd))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def _source(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "github"}
    if kind == names.KIND_CREDENTIAL_SOURCE:
        meta["namespace"] = "agents"
    return {"apiVersion": names.API_VERSION, "kind": kind, "metadata": meta, "spec": spec}


@pytest.mark.parametrize("name", ["credentialsource.yaml", "clustercredentialsource.yaml", "tasklease.yaml"])
def test_crd_manifest_is_a_valid_crd(name: str) -> None:
    crd = _crd(name)
    kubernetes_validate.validate(crd, "1.30", strict=True)
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["group"] == names.CRD_GROUP and version["name"] == names.CRD_VERSION
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Age"}
    assert crd["spec"]["names"]["shortNames"]


def test_names_match_the_contract() -> None:
    got = {
        (_crd(f)["spec"]["names"]["kind"], _crd(f)["spec"]["names"]["plural"], _crd(f)["spec"]["scope"])
        for f in ("credentialsource.yaml", "clustercredentialsource.yaml", "tasklease.yaml")
    }
    assert got == {
        (names.KIND_CREDENTIAL_SOURCE, names.PLURAL_CREDENTIAL_SOURCES, "Namespaced"),
        (names.KIND_CLUSTER_CREDENTIAL_SOURCE, names.PLURAL_CLUSTER_CREDENTIAL_SOURCES, "Cluster"),
        (names.KIND_TASK_LEASE, names.PLURAL_TASK_LEASES, "Namespaced"),
    }
    assert "status" in _crd("tasklease.yaml")["spec"]["versions"][0]["subresources"]


def test_agreed_example_is_accepted_as_cluster_source() -> None:
    obj = _source(names.KIND_CLUSTER_CREDENTIAL_SOURCE, AGREED)
    assert _errors("clustercredentialsource.yaml", obj) == []
    assert parse_source(obj).provider == "github-app"


@pytest.mark.parametrize("case", sorted(PER_PROVIDER))
def test_each_provider_example_is_accepted_both_scopes(case: str) -> None:
    spec = PER_PROVIDER[case]
    assert _errors("credentialsource.yaml", _source(names.KIND_CREDENTIAL_SOURCE, spec)) == []
    cluster = {**spec, "allowedNamespaces": ["agents"]}
    assert (
        _errors("clustercredentialsource.yaml", _source(names.KIND_CLUSTER_CREDENTIAL_SOURCE, cluster)) == []
    )
    # and the broker reads it (kubernetes-token: only from a ClusterCredentialSource, sources.tenant_refusal)
    if case == "kubernetes-token":
        parse_source(_source(names.KIND_CLUSTER_CREDENTIAL_SOURCE, cluster))
    else:
        parse_source(_source(names.KIND_CREDENTIAL_SOURCE, spec))


def _mutate(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return out


_DELETE = object()
BAD = [
    ("unknown provider", "secret", "provider", "ldap"),
    ("provider block missing", "secret", "secret", _DELETE),
    ("vault block missing", "vault token", "vault", _DELETE),
    ("maxTTL missing", "jwt", "maxTTL", _DELETE),
    ("maxTTL not a duration", "jwt", "maxTTL", "one hour"),
    ("defaultTTL with days", "jwt", "defaultTTL", "1d"),
    ("allowedServiceAccounts missing", "jwt", "allowedServiceAccounts", _DELETE),
    ("allowedServiceAccounts empty", "jwt", "allowedServiceAccounts", []),
    ("wildcard service account", "jwt", "allowedServiceAccounts", ["*"]),
    ("unknown spec field", "jwt", "allowedNamespace", ["typo"]),
    ("file name with a slash", "jwt", "files", ["../token"]),
    ("delivery unknown", "jwt", "delivery", "env"),
    ("vault dynamic without path", "vault dynamic", "vault.path", _DELETE),
    ("vault token auth without its secret", "vault token", "vault.auth.tokenSecretRef", _DELETE),
    ("vault auth method unknown", "vault token", "vault.auth.method", "ldap"),
    ("github appId not numeric", "github-app", "githubApp.appId", "abc"),
    ("github permission level unknown", "github-app", "githubApp.permissions", {"contents": "all"}),
    ("github without permissions", "github-app", "githubApp.permissions", _DELETE),
    ("github with empty permissions", "github-app", "githubApp.permissions", {}),
    ("github with an empty repository list", "github-app", "githubApp.repositories", []),
    ("github with more than 500 repositories", "github-app", "githubApp.repositories", [f"r{i}" for i in range(501)]),
    ("github repository with its owner", "github-app", "githubApp.repositories", ["octo-org/repo"]),
    ("github allRepositories not a boolean", "github-app every repository, said", "githubApp.allRepositories", "yes"),
    ("secretRef without key", "secret", "secret.secretRef", {"name": "legacy-token"}),
    ("kubernetes token without audiences", "kubernetes-token", "kubernetesToken.audiences", _DELETE),
]


@pytest.mark.parametrize(("case", "base", "path", "value"), BAD, ids=[b[0] for b in BAD])
def test_bad_specs_are_rejected(case: str, base: str, path: str, value: Any) -> None:
    spec = _mutate(PER_PROVIDER[base], path, value)
    assert _errors("credentialsource.yaml", _source(names.KIND_CREDENTIAL_SOURCE, spec)), case


def test_allowed_namespaces_only_and_required_on_cluster_sources() -> None:
    spec = PER_PROVIDER["jwt"]
    assert _errors(
        "credentialsource.yaml",
        _source(names.KIND_CREDENTIAL_SOURCE, {**spec, "allowedNamespaces": ["agents"]}),
    )
    assert _errors("clustercredentialsource.yaml", _source(names.KIND_CLUSTER_CREDENTIAL_SOURCE, spec))


def test_task_lease_written_by_the_operator_fits_the_schema() -> None:
    from datetime import UTC, datetime, timedelta

    pod = {"metadata": {"name": "agent-1", "namespace": "agents", "uid": "u-1"}}
    body = task_lease_body(pod, "fix-42")
    now = datetime(2026, 11, 29, 10, tzinfo=UTC)
    issued = Issued(
        files={"token": "v"}, lease_ref="jwt:abc:1", issued_at=now, expires_at=now + timedelta(minutes=15)
    )
    entry = lease_entry(
        "api", "jwt", {"kind": "CredentialSource", "name": "api", "namespace": "agents"}, issued,
        source_expires_at=now + timedelta(hours=1),  # a lease cut to its grant (github-app's 1 h)
    )
    assert entry["sourceExpiresAt"] == "2026-11-29T11:00:00Z"
    body["status"] = {
        "phase": "Revoked",
        "reason": "completed",
        "revokedAt": "2026-11-29T10:05:00Z",
        "compactedLeases": 3,
        "leases": [
            {
                **entry,
                "revokedAt": "2026-11-29T10:05:00Z",
                "revokeReason": "completed",
                "attempts": 1,
                "lastError": "x",
                "notRevocable": "y",
            }
        ],
    }
    assert _errors("tasklease.yaml", body) == []
    bad = copy.deepcopy(body)
    bad["status"]["leases"][0]["value"] = "a credential value"  # no place for a value
    assert _errors("tasklease.yaml", bad)
    bad = copy.deepcopy(body)
    bad["status"]["phase"] = "Done"
    assert _errors("tasklease.yaml", bad)
    bad = copy.deepcopy(body)
    bad["status"]["compactedLeases"] = -1
    assert _errors("tasklease.yaml", bad)
    bad = copy.deepcopy(body)
    bad["status"]["leases"][0]["sourceExpiresAt"] = "in an hour"
    assert _errors("tasklease.yaml", bad)


def test_namespaced_source_cannot_name_another_namespace_secret() -> None:
    spec = _mutate(
        PER_PROVIDER["secret"], "secret.secretRef", {"name": "x", "key": "k", "namespace": "kube-system"}
    )
    assert _errors("credentialsource.yaml", _source(names.KIND_CREDENTIAL_SOURCE, spec))
    cluster = {**spec, "allowedNamespaces": ["agents"]}
    assert (
        _errors("clustercredentialsource.yaml", _source(names.KIND_CLUSTER_CREDENTIAL_SOURCE, cluster)) == []
    )


# --- proxy delivery --------------------------------------------------------------------------------
PROXY_SPECS = {
    "bearer header": {"hosts": ["api.github.com"], "header": "Authorization: Bearer {token}"},
    "basic for git with a wildcard": {
        "hosts": ["github.com", "*.githubusercontent.com"],
        "basic": {"username": "x-access-token"},
    },
    "api key over plain http": {"hosts": ["api.internal"], "header": "X-Api-Key: {token}", "allowHttp": True},
}


@pytest.mark.parametrize("case", sorted(PROXY_SPECS))
@pytest.mark.parametrize("crd", ["credentialsource.yaml", "clustercredentialsource.yaml"])
def test_proxy_specs_are_accepted_and_parsed(crd: str, case: str) -> None:
    spec = {**PER_PROVIDER["jwt"], "delivery": "proxy", "proxy": PROXY_SPECS[case]}
    if crd == "clustercredentialsource.yaml":
        obj = _source(names.KIND_CLUSTER_CREDENTIAL_SOURCE, {**spec, "allowedNamespaces": ["agents"]})
    else:
        obj = _source(names.KIND_CREDENTIAL_SOURCE, spec)
    assert _errors(crd, obj) == []
    parsed = parse_source(obj)  # and the broker reads it the same way
    assert parsed.proxy is not None and list(parsed.proxy.hosts) == PROXY_SPECS[case]["hosts"]


_HDR = "Authorization: Bearer {token}"
BAD_PROXY = [
    ("proxy delivery without proxy", {"delivery": "proxy"}),
    ("proxy settings without proxy delivery", {"proxy": {"hosts": ["a.example"], "header": _HDR}}),
    ("proxy settings with file delivery", {"delivery": "file", "proxy": {"hosts": ["a.example"], "header": _HDR}}),
    ("no hosts", {"delivery": "proxy", "proxy": {"header": _HDR}}),
    ("empty hosts", {"delivery": "proxy", "proxy": {"hosts": [], "header": _HDR}}),
    ("host with a port", {"delivery": "proxy", "proxy": {"hosts": ["a.example:443"], "header": _HDR}}),
    ("host with upper case", {"delivery": "proxy", "proxy": {"hosts": ["API.example"], "header": _HDR}}),
    ("bare star", {"delivery": "proxy", "proxy": {"hosts": ["*"], "header": _HDR}}),
    ("star in the middle", {"delivery": "proxy", "proxy": {"hosts": ["a.*.example"], "header": _HDR}}),
    ("neither header nor basic", {"delivery": "proxy", "proxy": {"hosts": ["a.example"]}}),
    (
        "both header and basic",
        {"delivery": "proxy", "proxy": {"hosts": ["a.example"], "header": _HDR, "basic": {"username": "u"}}},
    ),
    ("header without placeholder", {"delivery": "proxy", "proxy": {"hosts": ["a.example"], "header": "A: b"}}),
    ("header without name", {"delivery": "proxy", "proxy": {"hosts": ["a.example"], "header": "{token}"}}),
    (
        "header with a line break",
        {"delivery": "proxy", "proxy": {"hosts": ["a.example"], "header": "A: {token}\r\nB: c"}},
    ),
    (
        "basic username with a colon",
        {"delivery": "proxy", "proxy": {"hosts": ["a.example"], "basic": {"username": "a:b"}}},
    ),
    ("basic without username", {"delivery": "proxy", "proxy": {"hosts": ["a.example"], "basic": {}}}),
    (
        "allowHttp not a boolean",
        {"delivery": "proxy", "proxy": {"hosts": ["a.example"], "header": _HDR, "allowHttp": "yes"}},
    ),
    (
        "unknown proxy field",
        {"delivery": "proxy", "proxy": {"hosts": ["a.example"], "header": _HDR, "value": "a secret"}},
    ),
]


@pytest.mark.parametrize(("case", "extra"), BAD_PROXY, ids=[b[0] for b in BAD_PROXY])
def test_bad_proxy_specs_are_rejected_by_the_schema_and_the_broker(case: str, extra: dict[str, Any]) -> None:
    from taskcreds.operator.sources import SourceError

    spec = {**PER_PROVIDER["jwt"], **extra}
    obj = _source(names.KIND_CREDENTIAL_SOURCE, spec)
    assert _errors("credentialsource.yaml", obj), case
    cluster = _source(names.KIND_CLUSTER_CREDENTIAL_SOURCE, {**spec, "allowedNamespaces": ["agents"]})
    assert _errors("clustercredentialsource.yaml", cluster), case
    if case not in ("host with upper case",):  # the broker normalizes case; the API server stores it as written
        with pytest.raises(SourceError):
            parse_source(obj)


def test_proxy_rules_for_the_api_server_are_in_cel_too() -> None:
    """jsonschema above checks oneOf; a real API server also runs these CEL rules (same meaning)."""
    for crd in ("credentialsource.yaml", "clustercredentialsource.yaml"):
        spec = _schema(crd)["properties"]["spec"]
        rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
        assert "(has(self.delivery) && self.delivery == 'proxy') == has(self.proxy)" in rules
        proxy = spec["properties"]["proxy"]
        assert [r["rule"] for r in proxy["x-kubernetes-validations"]] == ["has(self.header) != has(self.basic)"]
        assert proxy["properties"]["hosts"]["x-kubernetes-validations"]


# --- CEL rules (x-kubernetes-validations), evaluated as the API server does (tests/kube/cel.py) ---
def _cel_causes(crd: str, spec: dict[str, Any]) -> list[str]:
    from tests.kube import schema

    causes: list[tuple[str, str]] = []
    schema.validate(spec, _schema(crd)["properties"]["spec"], "spec", causes)
    return [f"{field}: {message}" for field, message in causes]


@pytest.mark.parametrize("crd", ["credentialsource.yaml", "clustercredentialsource.yaml", "tasklease.yaml"])
def test_every_cel_rule_compiles(crd: str) -> None:
    from tests.kube import cel

    rules = list(cel.rules_in(_schema(crd)))
    for path, rule in rules:
        cel.compile_rule(rule["rule"])  # raises CelRuleError naming the rule
        assert rule.get("message"), f"{crd} {path}: a rule without a message gives users only its source"
    assert rules or crd == "tasklease.yaml"


VALID_SPECS = {
    **{f"provider {k}": v for k, v in PER_PROVIDER.items()},
    **{f"proxy {k}": {**PER_PROVIDER["jwt"], "delivery": "proxy", "proxy": v} for k, v in PROXY_SPECS.items()},
    "defaultTTL equal to maxTTL": {**PER_PROVIDER["jwt"], "defaultTTL": "1h", "maxTTL": "60m"},
    "no defaultTTL": {k: v for k, v in PER_PROVIDER["jwt"].items() if k != "defaultTTL"},
    "jwt with extra claims": {**PER_PROVIDER["jwt"], "jwt": {"audience": ["a"], "claims": {"scope": "read"}}},
}


@pytest.mark.parametrize("crd", ["credentialsource.yaml", "clustercredentialsource.yaml"])
@pytest.mark.parametrize("case", sorted(VALID_SPECS))
def test_valid_specs_pass_every_cel_rule(crd: str, case: str) -> None:
    spec = dict(VALID_SPECS[case])
    if crd == "clustercredentialsource.yaml":
        spec["allowedNamespaces"] = ["agents"]
    assert _cel_causes(crd, spec) == []


_VAULT = AGREED["vault"]
_GH = PER_PROVIDER["github-app"]
_GH_APP = AGREED["githubApp"]
_GH_REPOS_MESSAGE = "githubApp needs repositories (the repository names its tokens may reach) or allRepositories: true, not both"
CEL_REFUSED = [
    (
        "github-app naming no repositories",
        {**_GH, "githubApp": {**_GH_APP, "repositories": None}},
        _GH_REPOS_MESSAGE,
    ),
    (
        "github-app with allRepositories false and no repositories",
        {**_GH, "githubApp": {**_GH_APP, "repositories": None, "allRepositories": False}},
        _GH_REPOS_MESSAGE,
    ),
    (
        "github-app with repositories and allRepositories",
        {**_GH, "githubApp": {**_GH_APP, "allRepositories": True}},
        _GH_REPOS_MESSAGE,
    ),
    ("defaultTTL over maxTTL", {**PER_PROVIDER["jwt"], "defaultTTL": "2h"}, "defaultTTL must not exceed maxTTL"),
    ("vault provider without its block", {"provider": "vault", **BASE}, "provider vault needs spec.vault"),
    ("github-app without its block", {"provider": "github-app", **BASE}, "provider github-app needs spec.githubApp"),
    (
        "kubernetes-token without its block",
        {"provider": "kubernetes-token", **BASE},
        "provider kubernetes-token needs spec.kubernetesToken",
    ),
    ("secret without its block", {"provider": "secret", **BASE}, "provider secret needs spec.secret"),
    (
        "vault token auth without its Secret",
        {**PER_PROVIDER["vault token"], "vault": {**_VAULT, "auth": {"method": "token"}}},
        "auth.method token needs auth.tokenSecretRef",
    ),
    (
        "vault approle auth without approle",
        {**PER_PROVIDER["vault token"], "vault": {**_VAULT, "auth": {"method": "approle"}}},
        "auth.method approle needs auth.approle",
    ),
    (
        "vault kubernetes auth without its block",
        {**PER_PROVIDER["vault token"], "vault": {**_VAULT, "auth": {"method": "kubernetes"}}},
        "auth.method kubernetes needs auth.kubernetes",
    ),
    (
        "vault dynamic without path",
        {**PER_PROVIDER["vault token"], "vault": {**_VAULT, "mode": "dynamic", "path": None}},
        "vault mode dynamic needs path and fileMap",
    ),
    (
        "jwt claims setting sub",
        {**PER_PROVIDER["jwt"], "jwt": {"audience": ["a"], "claims": {"sub": "admin"}}},
        "jwt.claims must not set reserved claims",
    ),
    (
        "proxy delivery without proxy",
        {**PER_PROVIDER["jwt"], "delivery": "proxy"},
        "spec.proxy is required when spec.delivery is proxy, and only then",
    ),
    (
        "proxy block on a file credential",
        {**PER_PROVIDER["jwt"], "proxy": PROXY_SPECS["bearer header"]},
        "spec.proxy is required when spec.delivery is proxy, and only then",
    ),
    (
        "proxy with header and basic",
        {
            **PER_PROVIDER["jwt"],
            "delivery": "proxy",
            "proxy": {"hosts": ["a.example.com"], "header": _HDR, "basic": {"username": "u"}},
        },
        "spec.proxy needs exactly one of header and basic",
    ),
    (
        "wildcard over a top-level domain",
        {**PER_PROVIDER["jwt"], "delivery": "proxy", "proxy": {"hosts": ["*.com"], "header": _HDR}},
        "a '*.' host needs at least two labels after it",
    ),
]


def refused_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A CEL_REFUSED spec as sent: a copy, with the fields its case marks None removed."""
    spec = copy.deepcopy(spec)
    for block in spec.values():
        if isinstance(block, dict):
            for key in [k for k, v in block.items() if v is None]:
                del block[key]
    return spec


@pytest.mark.parametrize("crd", ["credentialsource.yaml", "clustercredentialsource.yaml"])
@pytest.mark.parametrize(("case", "spec", "message"), CEL_REFUSED, ids=[c[0] for c in CEL_REFUSED])
def test_cel_rules_refuse_with_their_message(crd: str, case: str, spec: dict[str, Any], message: str) -> None:
    spec = refused_spec(spec)
    if crd == "clustercredentialsource.yaml":
        spec["allowedNamespaces"] = ["agents"]
    causes = _cel_causes(crd, spec)
    assert any(message in c for c in causes), (case, causes)


async def test_the_api_stand_in_refuses_a_source_breaking_a_cel_rule(kube_api: Any) -> None:
    """Through the API as a user would: 422 naming the field and the rule's message; nothing stored."""
    from kubernetes_asyncio.client import ApiException, CustomObjectsApi

    kube_api.register_crds_from(CRDS)
    kube_api.ensure_namespace("agents")
    api = CustomObjectsApi(await kube_api.kubernetes_asyncio_client())
    args = (names.CRD_GROUP, names.CRD_VERSION, "agents", names.PLURAL_CREDENTIAL_SOURCES)
    body = _source(names.KIND_CREDENTIAL_SOURCE, {**PER_PROVIDER["jwt"], "defaultTTL": "2h"})
    with pytest.raises(ApiException) as info:
        await api.create_namespaced_custom_object(*args, body)
    assert info.value.status == 422
    assert "spec: Invalid value" in info.value.body and "defaultTTL must not exceed maxTTL" in info.value.body
    assert (await api.list_namespaced_custom_object(*args))["items"] == []
    await api.create_namespaced_custom_object(*args, _source(names.KIND_CREDENTIAL_SOURCE, PER_PROVIDER["jwt"]))
    assert len((await api.list_namespaced_custom_object(*args))["items"]) == 1


async def test_task_lease_spec_is_immutable_through_the_api(kube_api: Any) -> None:
    """The transition rule ``self == oldSelf``: created freely, changed never (422), status still writable."""
    from kubernetes_asyncio.client import ApiException, CustomObjectsApi

    kube_api.register_crds_from(CRDS)
    kube_api.ensure_namespace("agents")
    api = CustomObjectsApi(await kube_api.kubernetes_asyncio_client())
    args = (names.CRD_GROUP, names.CRD_VERSION, "agents", names.PLURAL_TASK_LEASES)
    MERGE = "application/merge-patch+json"  # noqa: N806
    pod = {"metadata": {"name": "agent-1", "namespace": "agents", "uid": "u-1"}}
    created = await api.create_namespaced_custom_object(*args, task_lease_body(pod, "fix-42"))
    name = created["metadata"]["name"]
    with pytest.raises(ApiException) as info:
        await api.patch_namespaced_custom_object(*args, name, {"spec": {"task": "fix-43"}}, _content_type=MERGE)
    assert info.value.status == 422 and "spec is immutable" in info.value.body
    status = {"status": {"phase": "Active", "leases": []}}
    await api.patch_namespaced_custom_object_status(*args, name, status, _content_type=MERGE)
    stored = await api.get_namespaced_custom_object(*args, name)
    assert stored["spec"]["task"] == "fix-42" and stored["status"]["phase"] == "Active"


# --- github-app: the schema and the provider refuse the same installation-wide sources ---------------
# name -> (githubApp changes (None: left out), accepted?)
GITHUB_SCOPES: dict[str, tuple[dict[str, Any], bool]] = {
    "one repository, two permissions": ({}, True),
    "every repository, said, one permission": ({"repositories": None, "allRepositories": True}, True),
    "repositories with allRepositories false": ({"allRepositories": False}, True),
    "no repositories, no permissions (a source from before the rule)": (
        {"repositories": None, "permissions": None},
        False,
    ),
    "no repositories": ({"repositories": None}, False),
    "empty repositories": ({"repositories": []}, False),
    "allRepositories false and no repositories": ({"repositories": None, "allRepositories": False}, False),
    "repositories and allRepositories": ({"allRepositories": True}, False),
    "no permissions": ({"permissions": None}, False),
    "empty permissions": ({"permissions": {}}, False),
    "501 repositories": ({"repositories": [f"r{i}" for i in range(501)]}, False),
}


@pytest.mark.parametrize("crd", ["credentialsource.yaml", "clustercredentialsource.yaml"])
@pytest.mark.parametrize("case", list(GITHUB_SCOPES))
def test_github_app_scope_is_checked_alike_by_the_schema_and_the_provider(crd: str, case: str) -> None:
    from taskcreds.operator.providers.base import ProviderError
    from taskcreds.operator.providers.github_app import parse_settings

    changes, accepted = GITHUB_SCOPES[case]
    app = {k: v for k, v in {**AGREED["githubApp"], **changes}.items() if v is not None}
    spec: dict[str, Any] = {**PER_PROVIDER["github-app"], "githubApp": app}
    namespace: str | None = "agents"
    if crd == "clustercredentialsource.yaml":
        spec["allowedNamespaces"], namespace = ["agents"], None
    kind = names.KIND_CREDENTIAL_SOURCE if namespace else names.KIND_CLUSTER_CREDENTIAL_SOURCE
    schema_says = _errors(crd, _source(kind, spec)) + _cel_causes(crd, spec)
    assert (schema_says == []) is accepted, schema_says
    try:
        parse_settings(spec, namespace, source_name="github")
        provider_says = ""
    except ProviderError as exc:
        provider_says = str(exc)
    assert (provider_says == "") is accepted, provider_says


# name -> (githubApp changes, what the API server answers)
GITHUB_APPLY_REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "no repositories": (
        {"repositories": None},
        "spec.githubApp: Invalid value: \"object\": githubApp needs repositories (the repository names its "
        "tokens may reach) or allRepositories: true, not both",
    ),
    "no permissions": ({"permissions": None}, "spec.githubApp.permissions: Required value"),
}


@pytest.mark.parametrize("case", list(GITHUB_APPLY_REFUSED))
async def test_kubectl_apply_of_an_installation_wide_github_source_is_refused(kube_api: Any, case: str) -> None:
    """What ``kubectl apply`` says, through the API stand-in: 422 naming the field; nothing stored."""
    from kubernetes_asyncio.client import ApiException, CustomObjectsApi

    kube_api.register_crds_from(CRDS)
    kube_api.ensure_namespace("agents")
    api = CustomObjectsApi(await kube_api.kubernetes_asyncio_client())
    args = (names.CRD_GROUP, names.CRD_VERSION, "agents", names.PLURAL_CREDENTIAL_SOURCES)
    changes, said = GITHUB_APPLY_REFUSED[case]
    app = {k: v for k, v in {**AGREED["githubApp"], **changes}.items() if v is not None}
    body = _source(names.KIND_CREDENTIAL_SOURCE, {**PER_PROVIDER["github-app"], "githubApp": app})
    with pytest.raises(ApiException) as info:
        await api.create_namespaced_custom_object(*args, body)
    assert info.value.status == 422, info.value.body
    assert said in json.loads(info.value.body or "{}")["message"]
    assert (await api.list_namespaced_custom_object(*args))["items"] == []
