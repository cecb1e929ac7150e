"""The stand-in checks minProperties / maxProperties of a CR schema as a real API server does.

Why: the chart's CRDs say ``githubApp.permissions`` has ``minProperties: 1``; a stand-in that ignored
it would store ``permissions: {}``, which a real cluster refuses at ``kubectl apply``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskcreds import names
from tests.kube.schema import validate

CRDS = Path(__file__).resolve().parents[2] / "charts" / "taskcreds" / "crds"

LABELS = {
    "type": "object",
    "minProperties": 1,
    "maxProperties": 2,
    "additionalProperties": {"type": "string"},
}
FIXED = {"type": "object", "minProperties": 1, "properties": {"a": {"type": "string"}}}

# name -> (schema, value, causes the API server lists)
CASES: dict[str, tuple[dict[str, Any], Any, list[tuple[str, str]]]] = {
    "empty object under minProperties 1": (
        LABELS, {}, [("spec.m", "Invalid value: 1: spec.m in body should have at least 1 properties")]),
    "exactly the minimum": (LABELS, {"a": "1"}, []),
    "exactly the maximum": (LABELS, {"a": "1", "b": "2"}, []),
    "one over maxProperties 2": (
        LABELS, {"a": "1", "b": "2", "c": "3"}, [("spec.m", "Too many: 2: has too many items")]),
    "counts and property types both reported": (
        LABELS, {"a": "1", "b": "2", "c": 3},
        [("spec.m", "Too many: 2: has too many items"),
         ("spec.m[c]", 'Invalid value: "integer": spec.m[c] in body must be of type string: "integer"')]),
    "declared properties count too": (FIXED, {"a": "x"}, []),
    "not an object: the type error alone": (
        LABELS, [], [("spec.m", 'Invalid value: "array": spec.m in body must be of type object: "array"')]),
    "null where nullable: no count": ({**LABELS, "nullable": True}, None, []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_property_counts(case: str) -> None:
    schema, value, expected = CASES[case]
    causes: list[tuple[str, str]] = []
    validate(value, schema, "spec.m", causes)
    assert causes == expected, case


def _source(permissions: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{names.CRD_GROUP}/{names.CRD_VERSION}",
        "kind": names.KIND_CREDENTIAL_SOURCE,
        "metadata": {"name": "gh", "namespace": "agents"},
        "spec": {
            "provider": "github-app",
            "maxTTL": "1h",
            "allowedServiceAccounts": ["coding-agent"],
            "githubApp": {
                "appId": "12345",
                "installationId": "678",
                "privateKeySecretRef": {"name": "github-app", "key": "private-key.pem"},
                "repositories": ["agent-target-repo"],
                "permissions": permissions,
            },
        },
    }


async def test_kubectl_apply_of_empty_github_permissions_is_refused(kube_api: Any) -> None:
    """Through the stand-in's HTTP API with the chart's CRD: 422 naming the field, nothing stored;
    the same source with one permission is stored (so the refusal is the count, nothing else)."""
    from kubernetes_asyncio.client import ApiException, CustomObjectsApi

    crd = yaml.safe_load((CRDS / "credentialsource.yaml").read_text())
    assert '"minProperties": 1' in json.dumps(crd)  # what this test is about is still in the chart
    kube_api.register_crds_from(CRDS)
    kube_api.ensure_namespace("agents")
    api = CustomObjectsApi(await kube_api.kubernetes_asyncio_client())
    args = (names.CRD_GROUP, names.CRD_VERSION, "agents", names.PLURAL_CREDENTIAL_SOURCES)
    with pytest.raises(ApiException) as info:
        await api.create_namespaced_custom_object(*args, _source({}))
    assert info.value.status == 422, info.value.body
    assert (
        "spec.githubApp.permissions: Invalid value: 1: spec.githubApp.permissions in body should have at "
        "least 1 properties" in json.loads(info.value.body or "{}")["message"]
    )
    assert (await api.list_namespaced_custom_object(*args))["items"] == []
    await api.create_namespaced_custom_object(*args, _source({"contents": "read"}))
    assert len((await api.list_namespaced_custom_object(*args))["items"]) == 1
