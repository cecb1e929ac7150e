"""The three PATCH formats kube-apiserver accepts as JSON, as pure functions on dicts.

- JSON merge patch (RFC 7386): maps merge, ``null`` deletes, lists replace.
- JSON patch (RFC 6902), through the ``jsonpatch`` library.
- Strategic merge patch, for built-in kinds only (custom resources answer 415, as the API does):
  maps merge; the lists below merge by their key (``containers`` by ``name``, ``volumeMounts``
  by ``mountPath`` …), ``finalizers`` merge as a set; every other list replaces. Directives
  ``$patch: delete|replace|merge``, ``$deleteFromPrimitiveList/<field>`` and ``$retainKeys`` are
  honoured; ``$setElementOrder/<field>`` is accepted and ignored (order: existing items first,
  new items appended).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

__all__ = ["PatchError", "merge_patch", "json_patch", "strategic_merge_patch", "MERGE_KEYS"]


class PatchError(ValueError):
    """The patch cannot apply (the API answers 422, or 400 for a malformed body)."""

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(message)
        self.code = code


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386; returns a new value, ``target`` is not modified."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict[str, Any], patch: Any) -> dict[str, Any]:
    """RFC 6902. A non-list body is the API's 400; a failing operation its 422."""
    if not isinstance(patch, list):
        raise PatchError(
            f"json: cannot unmarshal {type(patch).__name__ if not isinstance(patch, dict) else 'object'}"
            " into Go value of type []handlers.jsonPatchOp",
            code=400,
        )
    try:
        return jsonpatch.apply_patch(target, patch, in_place=False)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
        raise PatchError(f"the server rejected our request due to an error in our request: {e}") from e
    except (TypeError, KeyError, IndexError, ValueError) as e:
        raise PatchError(f"the server rejected our request due to an error in our request: {e}") from e


#: field name -> merge key, for lists that strategic merge patch merges (core/v1 types we use)
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "ownerReferences": "uid",
    "conditions": "type",
    "readinessGates": "conditionType",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "secrets": "name",  # ServiceAccount.secrets
}
#: lists of scalars merged as sets
MERGE_SETS: frozenset[str] = frozenset({"finalizers"})


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch for the fields listed in MERGE_KEYS/MERGE_SETS; other lists replace."""
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch body must be a JSON object", code=400)
    return _smp_map(copy.deepcopy(target) if isinstance(target, dict) else {}, patch)


def _smp_map(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return {}
    if directive not in (None, "merge"):
        raise PatchError(f"Unknown patch type: {directive!r}; expected merge, replace or delete", code=400)
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(target.get(field), list):
                target[field] = [x for x in target[field] if x not in (value or [])]
            continue
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            current = target.get(key)
            merged = _smp_map(current if isinstance(current, dict) else {}, value)
            if value.get("$patch") == "delete":
                target.pop(key, None)
            else:
                target[key] = merged
        elif isinstance(value, list):
            target[key] = _smp_list(key, target.get(key), value)
        else:
            target[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        for key in list(target):
            if key not in retain:
                del target[key]
    return target


def _smp_list(field: str, current: Any, patch: list[Any]) -> list[Any]:
    current = current if isinstance(current, list) else []
    if field in MERGE_SETS:
        out = list(current)
        for item in patch:
            if item not in out:
                out.append(copy.deepcopy(item))
        return out
    key = MERGE_KEYS.get(field)
    if key is None:
        # a `$patch: replace` marker item in an atomic list is meaningless; drop directives
        return [
            copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and "$patch" in i and len(i) == 1)
        ]
    out = [copy.deepcopy(i) for i in current]
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(f"{field}: list items must be objects with a {key!r} key", code=400)
        if item.get("$patch") == "replace":
            return [copy.deepcopy(i) for i in patch if i is not item]
        if key not in item:
            raise PatchError(f"{field}: map item is missing the merge key {key!r}", code=400)
        idx = next((n for n, c in enumerate(out) if isinstance(c, dict) and c.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(_smp_map({}, item))
        else:
            out[idx] = _smp_map(out[idx], item)
    return out
