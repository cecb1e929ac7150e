"""Check a Pod or workload the way a kube-apiserver would, without one.

``assert_valid_pod_spec(obj)`` validates ``obj`` against the strict OpenAPI schema (from
kubernetes-validate) of every supported Kubernetes version, then checks the semantic rules the
schema does not carry (unique names, mounts naming volumes, emptyDir medium, quantities...).

Speed: ``kubernetes_validate.validate`` reloads and re-resolves its schema files on every call
(~15 ms); this module builds the same Draft 2020-12 validator from the same files once per
(version, kind) and remembers every (version, object) it has already passed, so calling it in
many tests (and hypothesis examples) costs well under a millisecond each. Pass
``versions=FAST_VERSIONS`` in property tests.
"""

from __future__ import annotations

import json
import posixpath
import re
from functools import cache
from typing import Any

import jsonschema
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource
from taskcreds.operator.config import QuantityError, parse_quantity
from taskcreds.operator.injection import WORKLOAD_TEMPLATES

__all__ = ["VERSIONS", "FAST_VERSIONS", "assert_valid_pod_spec", "schema_errors", "semantic_errors"]

VERSIONS: tuple[str, ...] = tuple(f"1.{minor}" for minor in range(29, 36))
"""Every Kubernetes version taskcreds supports (CONTRACT.md: 1.29 and later)."""
FAST_VERSIONS: tuple[str, ...] = ("1.29", "1.35")
"""The oldest and newest: enough for property tests that call this hundreds of times."""

_passed: set[tuple[str, str]] = set()


@cache
def _validator(version: str, kind: str, api_version: str) -> jsonschema.Validator:
    """kubernetes_validate.validate's validator for (version, kind), built once."""
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{version}.0-local-strict"
    schema = schema_contents(f"{folder}/{kind.lower()}-{group_version}.json", version)
    definitions = schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def schema_errors(obj: dict[str, Any], version: str) -> list[str]:
    """Strict-schema problems of ``obj`` for one Kubernetes version, as ``path: message`` lines."""
    validator = _validator(version, obj["kind"], obj["apiVersion"])
    return [
        f"{'.'.join(str(p) for p in err.absolute_path) or '(root)'}: {err.message}"
        for err in validator.iter_errors(obj)
    ]


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec inside a Pod or workload; None for every other kind."""
    path = WORKLOAD_TEMPLATES.get(obj.get("kind", ""))
    if path is None:
        return None
    node: Any = obj
    for key in path:
        node = node[key]
    return node["spec"]


def _quantity_errors(where: str, value: Any) -> list[str]:
    try:
        parse_quantity(value)
    except QuantityError as exc:
        return [f"{where}: {exc}"]
    return []


def semantic_errors(obj: dict[str, Any]) -> list[str]:
    """What the API server's validation refuses but the OpenAPI schema does not express."""
    spec = _pod_spec(obj)
    if spec is None:
        return []
    errors: list[str] = []
    groups = {key: spec.get(key) or [] for key in ("initContainers", "containers", "ephemeralContainers")}
    seen: set[str] = set()
    for key, items in groups.items():
        for c in items:
            if c["name"] in seen:
                errors.append(f"spec.{key}: duplicate container name {c['name']!r}")
            seen.add(c["name"])
    volumes: dict[str, dict[str, Any]] = {}
    for v in spec.get("volumes") or []:
        if v["name"] in volumes:
            errors.append(f"spec.volumes: duplicate volume name {v['name']!r}")
        volumes[v["name"]] = v
        empty_dir = v.get("emptyDir")
        if empty_dir is not None:
            if empty_dir.get("medium", "") not in ("", "Memory"):
                errors.append(
                    f"spec.volumes[{v['name']}].emptyDir.medium: {empty_dir['medium']!r} is not '' or Memory"
                )
            if "sizeLimit" in empty_dir:
                errors += _quantity_errors(
                    f"spec.volumes[{v['name']}].emptyDir.sizeLimit", empty_dir["sizeLimit"]
                )
    for key, items in groups.items():
        for c in items:
            where = f"spec.{key}[{c['name']}]"
            paths: set[str] = set()
            for m in c.get("volumeMounts") or []:
                if m["name"] not in volumes:
                    errors.append(f"{where}.volumeMounts: {m['name']!r} is not a volume of the pod")
                path = posixpath.normpath(m["mountPath"])
                if path in paths:
                    errors.append(f"{where}.volumeMounts: mountPath {path!r} used twice")
                paths.add(path)
            for kind in ("requests", "limits"):
                for res, qty in ((c.get("resources") or {}).get(kind) or {}).items():
                    errors += _quantity_errors(f"{where}.resources.{kind}.{res}", qty)
            policy = c.get("restartPolicy")
            if key == "initContainers" and policy not in (None, "Always"):
                errors.append(f"{where}.restartPolicy: {policy!r} is not Always")
            if key != "initContainers" and policy is not None:
                errors.append(f"{where}.restartPolicy: only init containers may set it")
    return errors


def assert_valid_pod_spec(obj: dict[str, Any], versions: tuple[str, ...] = VERSIONS) -> None:
    """Fail, listing every problem, unless a kube-apiserver of each version would take ``obj``.

    Any built-in kind works (Deployment, Service, ...); the semantic rules apply to pod specs.
    A kind without a schema (a CRD) raises FileNotFoundError from kubernetes-validate's files.
    """
    text = json.dumps(obj, sort_keys=True)
    problems: list[str] = []
    for version in versions:
        if (version, text) in _passed:
            continue
        found = schema_errors(obj, version)
        if found:
            problems += [f"Kubernetes {version}: {line}" for line in found]
        else:
            _passed.add((version, text))
    problems += semantic_errors(obj)
    assert not problems, (
        f"{obj.get('kind')} {((obj.get('metadata') or {}).get('name'))!r} is not valid:\n"
        + "\n".join(problems)
    )
