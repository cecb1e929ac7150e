"""The operator's RBAC grants exactly the API calls of tests/chart/api_calls.py: no more, no less."""

from __future__ import annotations

from typing import Any

import pytest
from taskcreds.operator.main import TASK_LEASE_CRD
from taskcreds.operator.providers.jwt import DENYLIST_SUFFIX

from tests.chart.api_calls import API_CALLS, ApiCall
from tests.chart.helm import NAMESPACE, Helm
from tests.chart.kinds import of_kind, one
from tests.chart.values_sets import VALUES_SETS

# (verb, group, "resource[/subresource]", namespace or None for cluster-wide, resourceNames)
Grant = tuple[str, str, str, str | None, tuple[str, ...]]


def granted(docs: list[dict[str, Any]]) -> set[Grant]:
    """Every (verb, group, resource, namespace, names) the chart's roles give the operator's account."""
    account = one(docs, "ServiceAccount")["metadata"]["name"]
    roles = {
        (r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]): r
        for r in of_kind(docs, "ClusterRole") + of_kind(docs, "Role")
    }
    out: set[Grant] = set()
    for binding in of_kind(docs, "ClusterRoleBinding") + of_kind(docs, "RoleBinding"):
        if {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE} not in binding["subjects"]:
            continue
        ns = binding["metadata"].get("namespace")
        ref = binding["roleRef"]
        role = roles[(ref["kind"], None if ref["kind"] == "ClusterRole" else ns, ref["name"])]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.add((verb, group, resource, ns, tuple(sorted(rule.get("resourceNames", [])))))
    return out


def expected(docs: list[dict[str, Any]], values: dict[str, Any]) -> set[Grant]:
    """The table, resolved for one values set and its rendered names."""
    cert_manager = values.get("webhook", {}).get("certManager", {}).get("enabled", False)
    active = {
        "always",
        *(["self-managed-certs"] if not cert_manager else []),
        *(["token-request"] if values.get("rbac", {}).get("tokenRequest", False) else []),
    }
    env = {
        e["name"]: e.get("value")
        for e in one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    symbols = {
        "webhook-configuration": env["TASKCREDS_WEBHOOK_CONFIGURATION"],
        "webhook-secret": env["TASKCREDS_WEBHOOK_SECRET"],
        "jwt-secret": env["TASKCREDS_JWT_SECRET"],
        "tasklease-crd": TASK_LEASE_CRD,
        "jwt-denylist-secret": env["TASKCREDS_JWT_SECRET"] + DENYLIST_SUFFIX,
    }
    secret_namespaces = values.get("rbac", {}).get("secretNamespaces", [])
    token_namespaces = values.get("rbac", {}).get("tokenRequestNamespaces", [])
    out: set[Grant] = set()
    for call in API_CALLS:
        if call.when not in active:
            continue
        resource = call.resource + (f"/{call.subresource}" if call.subresource else "")
        names = tuple(sorted(symbols[n] for n in call.names))
        if (
            call.scope == "cluster"
            or (call.scope == "secret-namespaces" and not secret_namespaces)
            or (call.scope == "token-namespaces" and not token_namespaces)
        ):
            namespaces: list[str | None] = [None]
        elif call.scope == "release":
            namespaces = [NAMESPACE]
        elif call.scope == "token-namespaces":
            namespaces = sorted(set(token_namespaces))
        else:
            namespaces = sorted({NAMESPACE, *secret_namespaces})
        out.update((call.verb, call.group, resource, ns, names) for ns in namespaces)
    return out


def merge_names(grants: set[Grant]) -> set[Grant]:
    """One rule may list several resourceNames; compare per name."""
    return {(v, g, r, ns, (n,)) for v, g, r, ns, names in grants for n in names} | {
        g for g in grants if not g[4]
    }


@pytest.mark.parametrize("name", list(VALUES_SETS))
def test_rbac_grants_exactly_the_api_calls_table(helm: Helm, name: str) -> None:
    values = VALUES_SETS[name]
    docs = helm.template(values)
    have, want = merge_names(granted(docs)), merge_names(expected(docs, values))
    assert have - want == set(), "granted but not in tests/chart/api_calls.py"
    assert want - have == set(), "in tests/chart/api_calls.py but not granted"


@pytest.mark.parametrize("name", list(VALUES_SETS))
def test_rbac_has_no_wildcards(helm: Helm, name: str) -> None:
    for role in [d for d in helm.template(VALUES_SETS[name]) if d["kind"] in ("ClusterRole", "Role")]:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert not any("*" in item for item in rule.get(key, [])), (
                    f"{role['metadata']['name']}: {rule}"
                )
            assert "nonResourceURLs" not in rule


def test_secrets_are_read_by_name_only_and_written_only_in_the_release_namespace(helm: Helm) -> None:
    """Besides the kubernetes-token provider's binding Secrets (create, delete; only with
    rbac.tokenRequest, and only in rbac.tokenRequestNamespaces when that is set), and the webhook's
    own Secret (delete by name in the release namespace: a Secret of another type is recreated)."""
    for name, values in VALUES_SETS.items():
        rbac = values.get("rbac", {})
        token_namespaces = set(rbac.get("tokenRequestNamespaces", [])) or {None}
        for verb, _group, resource, ns, names in granted(helm.template(values)):
            if resource != "secrets":
                continue
            assert verb in ("get", "create", "update", "patch", "delete"), f"{name}: secrets {verb}"
            if verb in ("update", "patch"):
                assert ns == NAMESPACE and names, f"{name}: secrets {verb} must be by name in {NAMESPACE}"
            if verb == "delete" and ns == NAMESPACE and names:
                continue  # the webhook Secret, by name (the table test checks which name)
            if verb == "delete" or (verb == "create" and ns != NAMESPACE):
                assert rbac.get("tokenRequest") and ns in token_namespaces, f"{name}: secrets {verb} in {ns}"


def test_token_request_is_off_by_default_and_narrows_to_listed_namespaces(helm: Helm) -> None:
    def token_grants(values: dict[str, Any]) -> set[Grant]:
        return {g for g in granted(helm.template(values)) if g[2] == "serviceaccounts/token"}

    assert token_grants({}) == set(), "TokenRequest for any service account must be opted into"
    assert token_grants({"rbac": {"tokenRequest": True}}) == {("create", "", "serviceaccounts/token", None, ())}
    assert token_grants(VALUES_SETS["token-request-namespaces"]) == {
        ("create", "", "serviceaccounts/token", ns, ()) for ns in ("agents", "ci")
    }


def test_pods_are_never_written(helm: Helm) -> None:
    for name, values in VALUES_SETS.items():
        verbs = {g[0] for g in granted(helm.template(values)) if g[2].startswith("pods")}
        assert verbs == {"get", "list", "watch"}, f"{name}: {verbs}"


def test_secret_namespaces_narrow_secret_reads(helm: Helm) -> None:
    default = granted(helm.template({}))
    assert ("get", "", "secrets", None, ()) in default
    narrowed = granted(helm.template(VALUES_SETS["secret-namespaces"]))
    assert not [g for g in narrowed if g[2] == "secrets" and g[3] is None]
    assert {("get", "", "secrets", ns, ()) for ns in ("agents", "team-b", NAMESPACE)} <= narrowed


def test_table_rows_are_unique_and_well_formed() -> None:
    keys = [(c.verb, c.group, c.resource, c.subresource, c.scope, c.names, c.when) for c in API_CALLS]
    assert len(keys) == len(set(keys))
    for call in API_CALLS:
        assert isinstance(call, ApiCall)
        assert call.verb in ("get", "list", "watch", "create", "update", "patch", "delete")
        assert call.source
