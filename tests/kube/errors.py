"""API errors as kube-apiserver writes them: a ``Status`` object with reason, code and details."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "not_found",
    "already_exists",
    "conflict",
    "invalid",
    "bad_request",
    "forbidden",
    "method_not_allowed",
    "gone",
    "unsupported_media_type",
    "internal",
    "unauthorized",
]


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            out["details"] = self.details
        return out


def _details(rt: Any, name: str | None, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name or "", "kind": rt.plural}
    if rt.group:
        d["group"] = rt.group
    d.update(extra)
    return d


def not_found(rt: Any, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def already_exists(rt: Any, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', _details(rt, name))


def conflict(
    rt: Any,
    name: str,
    why: str = "the object has been modified; please apply your changes to the latest version and try again",
) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}',
        _details(rt, name),
    )


def invalid(rt: Any, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """422 with one cause per (field, message), the message joining them as the API does."""
    text = ", ".join(f"{f}: {m}" for f, m in causes)
    return ApiError(
        422,
        "Invalid",
        f'{rt.kind} "{name}" is invalid: {text}',
        _details(
            rt, name, causes=[{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes]
        ),
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def forbidden(rt: Any, name: str, why: str) -> ApiError:
    return ApiError(403, "Forbidden", f'{rt.qualified} "{name}" is forbidden: {why}', _details(rt, name))


def method_not_allowed(
    message: str = "the server does not allow this method on the requested resource",
) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def unsupported_media_type(message: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", message)


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}")


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")
