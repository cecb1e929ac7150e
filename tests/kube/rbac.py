"""Does an RBAC rule set cover the API calls code made? (The stand-in does not enforce RBAC.)

    calls = [c for c in kube_api.api_calls if c.user == operator_user]
    assert uncovered(calls, rules_from(chart_docs)) == []

Matching follows kube-apiserver's RBAC authorizer: ``*`` in apiGroups, resources or verbs matches
everything (``*`` resources include subresources), ``pods/*`` matches every pods subresource, and
``resourceNames`` restricts a rule to calls that name one of them (so never list, watch,
deletecollection or create). Namespace scoping (Role vs ClusterRole) is the caller's to decide.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tests.kube.server import ApiCall

__all__ = ["rules_from", "allows", "uncovered"]


def rules_from(docs: Iterable[Any]) -> list[dict[str, Any]]:
    """Every rule of every Role/ClusterRole in ``docs`` (parsed YAML documents; others are skipped)."""
    return [
        rule
        for doc in docs
        if isinstance(doc, dict) and doc.get("kind") in ("Role", "ClusterRole")
        for rule in doc.get("rules") or []
    ]


def _resource_matches(rule_resource: str, resource: str) -> bool:
    if rule_resource in ("*", resource):
        return True
    main, _, sub = resource.partition("/")
    return bool(sub) and rule_resource == f"{main}/*"


def allows(rule: dict[str, Any], call: ApiCall) -> bool:
    if "nonResourceURLs" in rule and not rule.get("resources"):
        return False
    groups, resources, verbs = (
        rule.get("apiGroups") or [],
        rule.get("resources") or [],
        rule.get("verbs") or [],
    )
    if not ("*" in verbs or call.verb in verbs):
        return False
    if not ("*" in groups or call.group in groups):
        return False
    if not any(_resource_matches(r, call.resource) for r in resources):
        return False
    names = rule.get("resourceNames") or []
    return not names or (call.name is not None and call.name in names)


def uncovered(calls: Iterable[ApiCall], rules: list[dict[str, Any]]) -> list[ApiCall]:
    """The calls no rule allows (deduplicated, in first-seen order)."""
    out: list[ApiCall] = []
    for call in calls:
        if not any(allows(r, call) for r in rules) and call not in out:
            out.append(call)
    return out
