"""RFC 6902 JSONPatch operations that apply cleanly to the object as the webhook received it.

Kubernetes omits empty lists and maps, so every helper first checks whether the parent exists:
adding to an absent list means adding the whole list (``add`` on a member that holds ``null``
replaces it, which also covers explicit nulls).
"""

from __future__ import annotations

from typing import Any

__all__ = ["escape", "add_to_list", "add_to_map", "prefixed"]


def escape(token: str) -> str:
    """One JSON-pointer reference token: ``~`` -> ``~0``, ``/`` -> ``~1`` (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def add_to_list(
    ops: list[dict[str, Any]],
    parent: dict[str, Any],
    key: str,
    path: str,
    items: list[dict[str, Any]],
    *,
    at_start: bool = False,
) -> None:
    """Append ``items`` to ``parent[key]`` (or insert them at its start), creating the list if absent."""
    if not items:
        return
    if not isinstance(parent.get(key), list):
        ops.append({"op": "add", "path": f"{path}/{key}", "value": items})
        return
    if at_start:
        for index, item in enumerate(items):
            ops.append({"op": "add", "path": f"{path}/{key}/{index}", "value": item})
        return
    for item in items:
        ops.append({"op": "add", "path": f"{path}/{key}/-", "value": item})


def add_to_map(
    ops: list[dict[str, Any]], parent: dict[str, Any], key: str, path: str, entries: dict[str, Any]
) -> None:
    """Set ``entries`` in the map ``parent[key]``, creating the map if absent."""
    if not entries:
        return
    if not isinstance(parent.get(key), dict):
        ops.append({"op": "add", "path": f"{path}/{key}", "value": entries})
        return
    for name, value in entries.items():
        ops.append({"op": "add", "path": f"{path}/{key}/{escape(name)}", "value": value})


def prefixed(ops: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """The same operations against an object that holds the patched one at ``prefix``."""
    if not prefix:
        return ops
    return [{**op, "path": prefix + op["path"]} for op in ops]
