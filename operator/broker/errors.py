"""The broker's answers other than 2xx, one class per stable ``code`` (docs/broker-api.md).

Tree::

    BrokerError                 status, code, message (for people; never a credential value)
      BadRequest                400 bad_request
      Unauthenticated           401 unauthenticated
      PolicyDenied              403 policy_denied   (+ reason: the policy_denials_total label)
      NotFound                  404 not_found
      TaskTerminal              409 task_terminal   (+ reason: completed|failed|cancelled|deadline|...)
      TooLarge                  413 too_large
      RateLimited               429 rate_limited    (+ retry_after seconds)
      ProviderFailed            502 provider_error
      Unavailable               503 unavailable
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MAX_MESSAGE",
    "BrokerError",
    "BadRequest",
    "Unauthenticated",
    "PolicyDenied",
    "NotFound",
    "TaskTerminal",
    "TooLarge",
    "RateLimited",
    "ProviderFailed",
    "Unavailable",
]


#: longest message sent or logged: names quoted from a request body (up to 64 KiB) are cut
MAX_MESSAGE = 2048


class BrokerError(Exception):
    status = 500
    code = "internal"
    #: close the connection after answering (the client must handshake again, e.g. with a new SVID)
    close_connection = False

    def __init__(self, message: str) -> None:
        if len(message) > MAX_MESSAGE:
            cut = MAX_MESSAGE - 64
            message = f"{message[:cut]}… ({len(message) - cut} more characters)"
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(BrokerError):
    status, code = 400, "bad_request"


class Unauthenticated(BrokerError):
    status, code = 401, "unauthenticated"


class PolicyDenied(BrokerError):
    status, code = 403, "policy_denied"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NotFound(BrokerError):
    status, code = 404, "not_found"


class TaskTerminal(BrokerError):
    status, code = 409, "task_terminal"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TooLarge(BrokerError):
    status, code = 413, "too_large"


class RateLimited(BrokerError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, int(self.retry_after + 0.999)))}


class ProviderFailed(BrokerError):
    status, code = 502, "provider_error"


class Unavailable(BrokerError):
    status, code = 503, "unavailable"
