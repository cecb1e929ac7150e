"""What the code really exports, read from the code, and a check of PromQL expressions against it.

An alert is only worth having if it can fire: its selectors must name series the code exports with
labels and label values the code sets, and it must not wait on a series the code removes at the very
moment the alert is about (the sidecar drops a credential's expiry gauge when the credential expires).
Sources: the metric objects of taskcreds/metrics.py (names, label names), its ``# labels:`` comments
(the values of enumerated labels, CONTRACT.md section 6) and the code's ``.labels(...)`` /
``.remove(...)`` / ``.clear()`` calls.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from taskcreds.metrics import register_operator, register_sidecar
from tests.chart.helm import REPO

#: labels Prometheus adds to every scraped series of a ServiceMonitor/PodMonitor target
TARGET_LABELS = frozenset({"namespace", "pod", "container", "endpoint", "job", "instance", "service"})
CODE_DIRS = ("taskcreds", "operator", "sidecar")

_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_METRIC = re.compile(r"\b(taskcreds_[a-z_]+)\b")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_FIELD = re.compile(r"^\s*(\w+):\s*\w+\s*(?:#\s*labels:\s*(.*))?$")
_LABELS_ABOVE = re.compile(r"^\s*#\s*labels:\s*(.*)$")
_ENUM = re.compile(r"(\w+)\s*=\s*([\w|]+)")


@dataclass(frozen=True)
class Family:
    """One metric family: its field in the metrics dataclass, sample names and label names."""

    field: str
    samples: frozenset[str]
    labels: frozenset[str]


def families() -> dict[str, Family]:
    """Every metric family of both registries, by dataclass field name."""
    out: dict[str, Family] = {}
    for metrics in (register_operator(), register_sidecar()):
        for f in dataclasses.fields(metrics):
            metric = getattr(metrics, f.name)
            if not isinstance(metric, Counter | Gauge | Histogram):
                continue
            name, labels = metric._name, frozenset(metric._labelnames)  # noqa: SLF001 (no public API)
            if isinstance(metric, Counter):
                samples = {name + "_total"}
            elif isinstance(metric, Histogram):
                samples = {name + "_bucket", name + "_sum", name + "_count"}
            else:
                samples = {name}
            out[f.name] = Family(f.name, frozenset(samples), labels)
    return out


def by_sample() -> dict[str, Family]:
    return {s: fam for fam in families().values() for s in fam.samples}


def documented_values() -> dict[tuple[str, str], frozenset[str]]:
    """(field, label) -> the values metrics.py documents (``# labels: result = a|b|c``)."""
    source = (REPO / "taskcreds" / "metrics.py").read_text()
    out: dict[tuple[str, str], frozenset[str]] = {}
    above = ""  # a "# labels: ..." comment on the lines just above a field
    for line in source.splitlines():
        comment = _LABELS_ABOVE.match(line)
        if comment:
            above = comment.group(1)
            continue
        m = _FIELD.match(line)
        if m:
            text = m.group(2) or above
            for label, values in _ENUM.findall(text.split(";")[0]):
                out[(m.group(1), label)] = frozenset(values.split("|"))
        if not line.lstrip().startswith("#"):
            above = ""
    return out


def _metric_field(node: ast.expr) -> str | None:
    """``x.metrics.refresh`` / ``metrics.refresh`` -> "refresh"."""
    if not isinstance(node, ast.Attribute):
        return None
    owner = node.value
    if (isinstance(owner, ast.Name) and owner.id == "metrics") or (
        isinstance(owner, ast.Attribute) and owner.attr == "metrics"
    ):
        return node.attr
    return None


@dataclass(frozen=True)
class CodeUse:
    """What the code does with the metrics: literal label values set, families it removes series of."""

    literal_values: dict[tuple[str, str], frozenset[str]]
    removed: frozenset[str]


def code_use(root: Path = REPO) -> CodeUse:
    values: dict[tuple[str, str], set[str]] = {}
    removed: set[str] = set()
    known = set(families())
    for d in CODE_DIRS:
        for path in (root / d).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                field = _metric_field(node.func.value)
                if field not in known:
                    continue
                if node.func.attr in ("remove", "clear"):
                    removed.add(field)
                elif node.func.attr == "labels":
                    for kw in node.keywords:
                        if kw.arg and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                            values.setdefault((field, kw.arg), set()).add(kw.value.value)
    return CodeUse({k: frozenset(v) for k, v in values.items()}, frozenset(removed))


def problems(expr: str, *, alert: bool, removed: frozenset[str] | None = None) -> list[str]:
    """Why ``expr`` cannot match what the code exports (empty: fine).

    ``alert``: also refuse series the code removes (an alert on them waits for what never comes).
    """
    fams = by_sample()
    enums = documented_values()
    gone = code_use().removed if removed is None else removed
    out: list[str] = []
    used = set(_METRIC.findall(expr))
    for sample in sorted(used):
        fam = fams.get(sample)
        if fam is None:
            out.append(f"{sample}: no such series in taskcreds/metrics.py")
        elif alert and fam.field in gone:
            out.append(f"{sample}: the code removes this series (metrics.{fam.field}.remove/clear), "
                       "so an alert over it cannot see the state it is about")
    for name, body in _SELECTOR.findall(expr):
        fam = fams.get(name)
        if fam is None:
            continue
        allowed = fam.labels | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
        for label, op, value in _MATCHER.findall(body):
            if label not in allowed:
                out.append(f'{name}{{{label}{op}"{value}"}}: the code sets no label {label!r} on it')
                continue
            values = enums.get((fam.field, label))
            if values is None:
                continue
            wanted = value.split("|") if op in ("=~", "!~") else [value]
            for v in wanted:
                if v not in values:
                    out.append(f'{name}{{{label}{op}"{value}"}}: the code never sets {label}="{v}" '
                               f"(it sets {'|'.join(sorted(values))})")
    labels_here = set(TARGET_LABELS)
    for sample in used:
        if sample in fams:
            labels_here |= fams[sample].labels | ({"le"} if sample.endswith("_bucket") else set())
    for group in _GROUPING.findall(expr):
        for label in (x.strip() for x in group.split(",")):
            if label and label not in labels_here:
                out.append(f"grouping by {label!r}: no series in this expression carries it")
    return out


__all__ = ["code_use", "documented_values", "families", "problems"]
