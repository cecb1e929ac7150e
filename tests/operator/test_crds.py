"""The CRD manifests: valid CustomResourceDefinitions, and their schemas accept the agreed example
sources and refuse what the broker would refuse."""

from __future__ import annotations

import copy
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
    "jwt": {"provider": "jwt", **BASE, "jwt": {"audience": ["my-api"]}},
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
    parse_source(_source(names.KIND_CREDENTIAL_SOURCE, spec))  # and the broker reads it


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
        "api", "jwt", {"kind": "CredentialSource", "name": "api", "namespace": "agents"}, issued
    )
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
