"""The stand-in's pure parts: patches, selectors, CR schemas (named cases, no server)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kube import errors
from tests.kube.crds import task_lease_crd
from tests.kube.patching import PatchError, json_patch, merge_patch, strategic_merge_patch
from tests.kube.rbac import rules_from, uncovered
from tests.kube.resources import from_crd
from tests.kube.schema import prune_and_validate
from tests.kube.selectors import (
    SelectorError,
    label_selector_matches,
    match_labels,
    parse_field_selector,
    parse_label_selector,
)
from tests.kube.server import ApiCall

POD = {
    "spec": {
        "containers": [
            {"name": "a", "image": "i:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "j:1"},
        ],
        "volumes": [{"name": "v", "emptyDir": {}}],
    },
    "metadata": {"finalizers": ["f/1"], "labels": {"x": "1"}},
}


@pytest.mark.parametrize(
    ("case", "patch", "expect"),
    [
        (
            "maps merge, null deletes",
            {"metadata": {"labels": {"x": None, "y": "2"}}},
            lambda r: r["metadata"]["labels"] == {"y": "2"},
        ),
        (
            "lists replace",
            {"metadata": {"finalizers": ["f/2"]}},
            lambda r: r["metadata"]["finalizers"] == ["f/2"],
        ),
        ("scalar replaces object", {"spec": 1}, lambda r: r["spec"] == 1),
    ],
)
def test_merge_patch(case: str, patch: dict[str, Any], expect: Any) -> None:
    assert expect(merge_patch(POD, patch)), case


@pytest.mark.parametrize(
    ("case", "patch", "expect"),
    [
        (
            "containers merge by name",
            {"spec": {"containers": [{"name": "b", "image": "j:2"}]}},
            lambda r: (
                [(c["name"], c["image"]) for c in r["spec"]["containers"]] == [("a", "i:1"), ("b", "j:2")]
            ),
        ),
        (
            "new container appended",
            {"spec": {"containers": [{"name": "c", "image": "k"}]}},
            lambda r: [c["name"] for c in r["spec"]["containers"]] == ["a", "b", "c"],
        ),
        (
            "env merges by name inside a container",
            {"spec": {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}]}},
            lambda r: [e["name"] for e in r["spec"]["containers"][0]["env"]] == ["X", "Y"],
        ),
        (
            "$patch: delete removes an item",
            {"spec": {"volumes": [{"name": "v", "$patch": "delete"}]}},
            lambda r: r["spec"]["volumes"] == [],
        ),
        (
            "finalizers merge as a set",
            {"metadata": {"finalizers": ["f/1", "f/2"]}},
            lambda r: r["metadata"]["finalizers"] == ["f/1", "f/2"],
        ),
        (
            "$deleteFromPrimitiveList",
            {"metadata": {"$deleteFromPrimitiveList/finalizers": ["f/1"]}},
            lambda r: r["metadata"]["finalizers"] == [],
        ),
        (
            "$patch: replace on a map",
            {"metadata": {"labels": {"$patch": "replace", "z": "3"}}},
            lambda r: r["metadata"]["labels"] == {"z": "3"},
        ),
        (
            "unlisted lists replace",
            {"spec": {"tolerations": [{"key": "k"}]}},
            lambda r: r["spec"]["tolerations"] == [{"key": "k"}],
        ),
    ],
)
def test_strategic_merge_patch(case: str, patch: dict[str, Any], expect: Any) -> None:
    result = strategic_merge_patch(POD, patch)
    assert expect(result), (case, result)
    assert POD["spec"]["containers"][1]["image"] == "j:1"  # the input is never modified


@pytest.mark.parametrize(
    ("case", "patch", "code"),
    [
        ("object instead of a list", {"op": "add"}, 400),
        ("failed test", [{"op": "test", "path": "/metadata/labels/x", "value": "2"}], 422),
        ("missing path", [{"op": "replace", "path": "/nope/deeper", "value": 1}], 422),
    ],
)
def test_json_patch_errors(case: str, patch: Any, code: int) -> None:
    with pytest.raises(PatchError) as e:
        json_patch(POD, patch)
    assert e.value.code == code, case


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("a=1", {"a": "1"}, True),
        ("a==1", {"a": "2"}, False),
        ("a!=1", {}, True),
        ("a in (1, 2),b", {"a": "2", "b": ""}, True),
        ("a notin (1)", {"a": "1"}, False),
        ("!a", {"b": "1"}, True),
        ("taskcreds.io/inject=true", {"taskcreds.io/inject": "true"}, True),
    ],
)
def test_label_selector_text(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert match_labels(parse_label_selector(selector), labels) is matches


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x"]}]}, {"a": "y"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {}, True),
        (
            {"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]},
            {"a": "1"},
            False,
        ),
    ],
)
def test_structured_label_selector(selector: dict[str, Any], labels: dict[str, str], matches: bool) -> None:
    assert label_selector_matches(selector, labels) is matches


@pytest.mark.parametrize(
    ("case", "text", "kind"),
    [
        ("bad syntax", "a in (", None),
        ("unsupported field", "spec.containers=x", "Pod"),
    ],
)
def test_selector_errors(case: str, text: str, kind: str | None) -> None:
    with pytest.raises(SelectorError):
        if kind:
            parse_field_selector(text, kind)
        else:
            parse_label_selector(text)


LEASE_RT = from_crd(task_lease_crd())[0]


@pytest.mark.parametrize(
    ("case", "obj", "error"),
    [
        (
            "enum",
            {"spec": {"task": "t", "pod": "p"}, "status": {"phase": "Bogus"}},
            'Unsupported value: "Bogus"',
        ),
        ("required", {"spec": {"task": "t"}}, "spec.pod: Required value"),
        ("type", {"spec": {"task": 1, "pod": "p"}}, "must be of type string"),
    ],
)
def test_schema_validation(case: str, obj: dict[str, Any], error: str) -> None:
    with pytest.raises(errors.ApiError) as e:
        prune_and_validate(LEASE_RT, {"metadata": {"name": "x"}, **obj})
    assert e.value.code == 422 and error in e.value.message, (case, e.value.message)


def test_schema_prunes_unknown_fields() -> None:
    out = prune_and_validate(
        LEASE_RT,
        {
            "metadata": {"name": "x", "annotations": {"k": "v"}},
            "extra": 1,
            "spec": {"task": "t", "pod": "p", "value": "s3cr3t"},
            "status": {"leases": [{"credential": "c", "token": "s3cr3t"}]},
        },
    )
    assert out == {
        "metadata": {"name": "x", "annotations": {"k": "v"}},
        "spec": {"task": "t", "pod": "p"},
        "status": {"leases": [{"credential": "c"}]},
    }


def _call(verb: str, group: str, resource: str, name: str | None = None) -> ApiCall:
    return ApiCall(verb, group, resource, "ns", name, "system:serviceaccount:taskcreds:operator")


RULES = rules_from(
    [
        {
            "kind": "ClusterRole",
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
                {
                    "apiGroups": ["taskcreds.io"],
                    "resources": ["taskleases", "taskleases/status"],
                    "verbs": ["*"],
                },
                {
                    "apiGroups": ["admissionregistration.k8s.io"],
                    "resources": ["mutatingwebhookconfigurations"],
                    "verbs": ["get", "patch"],
                    "resourceNames": ["taskcreds"],
                },
                {"apiGroups": [""], "resources": ["serviceaccounts/*"], "verbs": ["create"]},
            ],
        },
        {"kind": "ConfigMap", "data": {}},
    ]
)


@pytest.mark.parametrize(
    ("case", "call", "allowed"),
    [
        ("listed verb", _call("watch", "", "pods"), True),
        ("unlisted verb", _call("delete", "", "pods"), False),
        ("subresource needs its own entry", _call("patch", "", "pods/status"), False),
        ("wildcard verbs", _call("deletecollection", "taskcreds.io", "taskleases"), True),
        ("status subresource listed", _call("patch", "taskcreds.io", "taskleases/status"), True),
        ("other group", _call("get", "apps", "pods"), False),
        (
            "resourceNames match",
            _call("patch", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "taskcreds"),
            True,
        ),
        (
            "resourceNames exclude others",
            _call("patch", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "other"),
            False,
        ),
        (
            "resourceNames never cover list",
            _call("list", "admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
            False,
        ),
        ("x/* covers subresources", _call("create", "", "serviceaccounts/token", "default"), True),
    ],
)
def test_rbac_coverage(case: str, call: ApiCall, allowed: bool) -> None:
    assert (uncovered([call], RULES) == []) is allowed, case
