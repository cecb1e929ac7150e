"""Label and field selectors, parsed and matched as kube-apiserver does.

Label selectors take both syntaxes (``a=b,c!=d`` and ``env in (x,y),!legacy,tier``) and the
structured ``LabelSelector`` shape used by webhooks (matchLabels + matchExpressions). Field
selectors accept only the fields the real API supports for each kind (unknown fields are a 400,
as on a real cluster, so code that relies on an unsupported field fails here first).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SelectorError",
    "LabelRequirement",
    "parse_label_selector",
    "match_labels",
    "label_selector_matches",
    "parse_field_selector",
    "field_matches",
    "FIELD_SELECTORS",
]


class SelectorError(ValueError):
    """A selector that the API would refuse (HTTP 400)."""


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        value = labels.get(self.key)
        if self.op == "=":
            return has and value == self.values[0]
        if self.op == "!=":
            return not has or value != self.values[0]
        if self.op == "in":
            return has and value in self.values
        if self.op == "notin":
            return not has or value not in self.values
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        raise SelectorError(f"unknown operator {self.op!r}")


_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def parse_label_selector(text: str | None) -> list[LabelRequirement]:
    """``?labelSelector=`` text to requirements; raises SelectorError on bad syntax."""
    if not text:
        return []
    out: list[LabelRequirement] = []
    for part in _split_top_level(text):
        if m := _SET_RE.match(part):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            out.append(LabelRequirement(m.group(1), m.group(2), values))
        elif m := _EQ_RE.match(part):
            op = "=" if m.group(2) in ("=", "==") else "!="
            out.append(LabelRequirement(m.group(1), op, (m.group(3),)))
        elif m := _EXISTS_RE.match(part):
            out.append(LabelRequirement(m.group(2), "!" if m.group(1) else "exists"))
        else:
            raise SelectorError(f"unable to parse requirement: {part.strip()!r}")
    return out


def match_labels(requirements: list[LabelRequirement], labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    return all(r.matches(labels) for r in requirements)


_EXPR_OPS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}


def label_selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """A structured LabelSelector (matchLabels + matchExpressions); empty/None matches everything."""
    if not selector:
        return True
    reqs = [LabelRequirement(k, "=", (v,)) for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        op = _EXPR_OPS.get(expr.get("operator", ""))
        if op is None:
            raise SelectorError(
                f"matchExpressions operator {expr.get('operator')!r} is not one of {sorted(_EXPR_OPS)}"
            )
        reqs.append(LabelRequirement(expr["key"], op, tuple(expr.get("values") or ())))
    return match_labels(reqs, labels)


# --- field selectors -------------------------------------------------------------------------


def _path(*keys: str) -> Callable[[dict[str, Any]], str]:
    def get(obj: dict[str, Any]) -> str:
        cur: Any = obj
        for k in keys:
            cur = cur.get(k) if isinstance(cur, dict) else None
        return "" if cur is None else str(cur)

    return get


_COMMON = {"metadata.name": _path("metadata", "name"), "metadata.namespace": _path("metadata", "namespace")}
#: kind -> extra supported fields (a subset of the real API's, the ones code commonly uses)
FIELD_SELECTORS: dict[str, dict[str, Callable[[dict[str, Any]], str]]] = {
    "Pod": {
        "spec.nodeName": _path("spec", "nodeName"),
        "spec.serviceAccountName": _path("spec", "serviceAccountName"),
        "spec.restartPolicy": _path("spec", "restartPolicy"),
        "spec.schedulerName": _path("spec", "schedulerName"),
        "status.phase": _path("status", "phase"),
        "status.podIP": _path("status", "podIP"),
        "status.nominatedNodeName": _path("status", "nominatedNodeName"),
    },
    "Event": {
        "involvedObject.kind": _path("involvedObject", "kind"),
        "involvedObject.namespace": _path("involvedObject", "namespace"),
        "involvedObject.name": _path("involvedObject", "name"),
        "involvedObject.uid": _path("involvedObject", "uid"),
        "involvedObject.apiVersion": _path("involvedObject", "apiVersion"),
        "involvedObject.resourceVersion": _path("involvedObject", "resourceVersion"),
        "involvedObject.fieldPath": _path("involvedObject", "fieldPath"),
        "reason": _path("reason"),
        "reportingComponent": _path("reportingComponent"),
        "source": _path("source", "component"),
        "type": _path("type"),
        # events.k8s.io/v1 names
        "regarding.kind": _path("regarding", "kind"),
        "regarding.name": _path("regarding", "name"),
        "regarding.namespace": _path("regarding", "namespace"),
        "regarding.uid": _path("regarding", "uid"),
    },
    "Secret": {"type": _path("type")},
    "Namespace": {"status.phase": _path("status", "phase")},
}


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    negate: bool
    value: str
    getter: Callable[[dict[str, Any]], str]

    def matches(self, obj: dict[str, Any]) -> bool:
        return (self.getter(obj) == self.value) != self.negate


def parse_field_selector(text: str | None, kind: str) -> list[FieldRequirement]:
    """``?fieldSelector=`` text for ``kind``; unsupported fields raise SelectorError like the API."""
    if not text:
        return []
    supported = {**_COMMON, **FIELD_SELECTORS.get(kind, {})}
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^([^=!]+?)\s*(==|=|!=)\s*(.*)$", part)
        if not m:
            raise SelectorError(f"invalid selector: {part!r}; expected field=value or field!=value")
        field, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if field not in supported:
            raise SelectorError(f"field label not supported: {field}")
        out.append(FieldRequirement(field, op == "!=", value, supported[field]))
    return out


def field_matches(requirements: list[FieldRequirement], obj: dict[str, Any]) -> bool:
    return all(r.matches(obj) for r in requirements)
