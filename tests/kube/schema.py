"""Custom resources through their CRD's structural schema: pruning, then validation.

What a real API server does with a CR and code can trip over: unknown fields are silently dropped
(unless ``x-kubernetes-preserve-unknown-fields``), and type, enum, required, pattern, bounds,
lengths and item / property counts (min/maxItems, min/maxProperties) are checked, and CEL rules
(``x-kubernetes-validations``, tests/kube/cel.py) evaluated (422 with every failing field). ``format`` and defaults are not applied (documented in README.md).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from tests.kube import cel, errors
from tests.kube.resources import ResourceType

__all__ = ["prune_and_validate", "prune", "validate"]

_ROOT_META = ("apiVersion", "kind", "metadata")


def prune_and_validate(
    rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``old``: the stored object on an update, for CEL transition rules (``oldSelf``)."""
    schema = rt.schema or {}
    out = copy.deepcopy(obj)
    for key in list(out):
        if key in _ROOT_META:
            continue
        props = schema.get("properties") or {}
        if key in props:
            out[key] = prune(out[key], props[key])
        elif not schema.get("x-kubernetes-preserve-unknown-fields"):
            del out[key]
    causes: list[tuple[str, str]] = []
    for key, sub in (schema.get("properties") or {}).items():
        if key in _ROOT_META:
            continue
        if key in out:
            validate(out[key], sub, key, causes, (old or {}).get(key, cel.MISSING))
    for req in schema.get("required") or []:
        if req not in _ROOT_META and req not in out:
            causes.append((req, "Required value"))
    if causes:
        name = (obj.get("metadata") or {}).get("name", "")
        raise errors.ApiError(
            422,
            "Invalid",
            f'{rt.kind}.{rt.group} "{name}" is invalid: [' + ", ".join(f"{f}: {m}" for f, m in causes) + "]",
            {
                "name": name,
                "group": rt.group,
                "kind": rt.kind,
                "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
            },
        )
    return out


def prune(value: Any, schema: dict[str, Any]) -> Any:
    """Drop the fields the schema does not know, as the API's pruning does."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        keep_unknown = (
            schema.get("x-kubernetes-preserve-unknown-fields")
            or additional is True
            or (not props and "type" not in schema)
        )
        out = {}
        for k, v in value.items():
            if k in props:
                out[k] = prune(v, props[k])
            elif isinstance(additional, dict):
                out[k] = prune(v, additional)
            elif keep_unknown:
                out[k] = v
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(v, schema["items"]) for v in value]
    return value


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def _type_ok(value: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES.get(t, object))


def validate(
    value: Any, schema: dict[str, Any], path: str, causes: list[tuple[str, str]], old: Any = cel.MISSING
) -> None:
    """Append (field, message) for everything wrong with ``value``; ``old`` feeds CEL ``oldSelf``."""
    if value is None:
        if not schema.get("nullable"):
            causes.append((path, 'Invalid value: "null": must not be null'))
        return
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _type_ok(value, "integer")):
            causes.append((path, f"Invalid value: {value!r}: must be an integer or a string"))
        return
    t = schema.get("type")
    if t and not _type_ok(value, t):
        causes.append(
            (path, f'Invalid value: "{_kind(value)}": {path} in body must be of type {t}: "{_kind(value)}"')
        )
        return
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(f'"{v}"' for v in schema["enum"])
        causes.append((path, f'Unsupported value: "{value}": supported values: {allowed}'))
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            causes.append(
                (path, f"Invalid value: \"{value}\": {path} in body should match '{schema['pattern']}'")
            )
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            causes.append((path, f"Too long: may not be longer than {schema['maxLength']}"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            causes.append(
                (path, f"Invalid value: {path} in body should be at least {schema['minLength']} chars long")
            )
    if _type_ok(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            causes.append(
                (
                    path,
                    f"Invalid value: {value}: {path} in body should be greater than or equal to "
                    f"{schema['minimum']}",
                )
            )
        if "maximum" in schema and value > schema["maximum"]:
            causes.append(
                (
                    path,
                    f"Invalid value: {value}: {path} in body should be less than or equal to "
                    f"{schema['maximum']}",
                )
            )
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append((path, f"Too many: {len(value)}: must have at most {schema['maxItems']} items"))
        if "minItems" in schema and len(value) < schema["minItems"]:
            causes.append(
                (path, f"Invalid value: {path} in body should have at least {schema['minItems']} items")
            )
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                validate(item, schema["items"], f"{path}[{i}]", causes)
    if isinstance(value, dict):
        # as kube-openapi reports them through apiextensions (kubeOpenAPIResultToFieldErrors):
        # too few properties is a field.Invalid whose value is the bound; too many a field.TooMany
        # that carries the bound as its "actual" and no maximum, hence "has too many items"
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            n = schema["minProperties"]
            causes.append((path, f"Invalid value: {n}: {path} in body should have at least {n} properties"))
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            causes.append((path, f"Too many: {schema['maxProperties']}: has too many items"))
        for req in schema.get("required") or []:
            if req not in value:
                causes.append((f"{path}.{req}", "Required value"))
        props = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        olds = old if isinstance(old, dict) else {}
        for k, v in value.items():
            if k in props:
                validate(v, props[k], f"{path}.{k}", causes, olds.get(k, cel.MISSING))
            elif isinstance(additional, dict):
                validate(v, additional, f"{path}[{k}]", causes, olds.get(k, cel.MISSING))
    if schema.get("x-kubernetes-validations"):
        causes.extend(cel.violations(value, schema, path, old))


def _kind(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
    }.get(type(value), "null")
