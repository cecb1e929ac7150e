"""CEL validation rules (``x-kubernetes-validations``) evaluated as the API server evaluates them.

Standard CEL comes from cel-python; the Kubernetes extension functions our CRDs use are added here
with the API server's meaning (``substring`` of the strings library, on code points). A rule runs
where its schema sits, with ``self`` bound to the value there, and only when that value is present;
under ``items`` or ``additionalProperties`` it runs once per element. A transition rule (one that
reads ``oldSelf``) runs only on an update where the old object has a value there (not on create). A rule that does not compile
is an error the API server would give when the CRD is created, so it is raised, not skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import celpy
from celpy import celtypes

__all__ = ["MISSING", "CelRuleError", "compile_rule", "rules_in", "violations"]

#: no old value at this path (a create, or a field the old object did not have)
MISSING: Any = object()


class CelRuleError(ValueError):
    """A rule that does not compile or cannot be evaluated: the CRD itself is wrong."""


def _substring(text: celtypes.StringType, start: celtypes.IntType, end: Any = None) -> celtypes.StringType:
    """Kubernetes strings extension: ``'hello'.substring(1, 3) == 'el'``; out of range is an error."""
    stop = len(text) if end is None else int(end)
    if not 0 <= int(start) <= stop <= len(text):
        raise ValueError(f"substring({start}, {end}) out of range for a string of length {len(text)}")
    return celtypes.StringType(str(text)[int(start) : stop])


_FUNCTIONS = {"substring": _substring}
_ENV = celpy.Environment()


@functools.lru_cache(maxsize=256)
def compile_rule(rule: str) -> Any:
    """The compiled program for ``rule`` (cached: CRDs are few, writes many)."""
    try:
        return _ENV.program(_ENV.compile(rule), functions=_FUNCTIONS)
    except Exception as exc:  # cel-python raises its own parse errors
        raise CelRuleError(f"CEL rule does not compile: {rule!r}: {exc}") from None


def rules_in(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (schema path, rule) of a structural schema, for tests that check each rule compiles."""
    for rule in schema.get("x-kubernetes-validations") or []:
        yield path or ".", rule
    for key, sub in (schema.get("properties") or {}).items():
        yield from rules_in(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from rules_in(schema["items"], f"{path}[*]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from rules_in(schema["additionalProperties"], f"{path}[*]")


def violations(value: Any, schema: dict[str, Any], path: str, old: Any = MISSING) -> list[tuple[str, str]]:
    """(field path, message) for every rule of ``schema`` that ``value`` breaks; rules only (no types)."""
    out: list[tuple[str, str]] = []
    for rule in schema.get("x-kubernetes-validations") or []:
        activation = {"self": celpy.json_to_cel(value)}
        if "oldSelf" in rule["rule"]:
            if old is MISSING:
                continue
            activation["oldSelf"] = celpy.json_to_cel(old)
        try:
            result = compile_rule(rule["rule"]).evaluate(activation)
        except CelRuleError:
            raise
        except Exception as exc:  # an evaluation error fails the rule, as on the API server
            out.append((path, f"Invalid value: {rule['rule']!r}: evaluation error: {exc}"))
            continue
        if isinstance(result, Exception):  # cel-python returns CELEvalError values
            out.append((path, f"Invalid value: {rule['rule']!r}: evaluation error: {result}"))
        elif not bool(result):
            message = rule.get("message") or f"failed rule: {rule['rule']}"
            out.append((path, f'Invalid value: "{_kind(value)}": {message}'))
    return out


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer"}.get(
        type(value), "number"
    )
