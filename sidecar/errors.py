"""Every error the sidecar raises, in one tree, so callers react by type, never by message text.

::

    SidecarError
      ConfigError              an environment variable with a value the sidecar cannot use
      WriterError              the credential directory is unusable or unsafe
        NotInMemoryFilesystem  the directory is not on tmpfs/ramfs: nothing is written
        UnsafeName             a credential or file name that could escape the directory
        UnsafeEntry            something in the directory the sidecar did not create (planted symlink)
      BrokerError              the broker answered with an error (``code`` as in docs/broker-api.md)
        BadRequest             400 bad_request      do not retry the same request
        Unauthenticated        401 unauthenticated  retry with backoff
        PolicyDenied           403 policy_denied    retry with a long backoff
        NotFound               404 not_found        renew: issue anew at once; issue: retry with backoff
        TaskTerminal           409 task_terminal    tear down now, never fetch again
        TooLarge               413 too_large
        RateLimited            429 rate_limited     wait ``retry_after`` seconds
        ProviderFailed         502 provider_error   retry with backoff
        BrokerUnavailable      503 unavailable, or the broker cannot be reached at all
          WrongBrokerIdentity  the TLS peer is not the expected broker SPIFFE ID (token never sent)
          TokenUnavailable     the projected service-account token file cannot be read

Messages name what was wrong and what would be accepted; none ever holds a credential value,
a token or a key.
"""

from __future__ import annotations

__all__ = [
    "SidecarError", "ConfigError", "WriterError", "NotInMemoryFilesystem", "UnsafeName", "UnsafeEntry",
    "BrokerError", "BadRequest", "Unauthenticated", "PolicyDenied", "NotFound", "TaskTerminal",
    "TooLarge", "RateLimited", "ProviderFailed", "BrokerUnavailable", "WrongBrokerIdentity",
    "TokenUnavailable", "error_for",
]


class SidecarError(Exception):
    """Base of every error the sidecar raises on purpose."""


class ConfigError(SidecarError):
    """A bad environment variable; the message names it and what is accepted."""


class WriterError(SidecarError):
    """The credential directory cannot be used safely."""


class NotInMemoryFilesystem(WriterError):
    """The directory is not tmpfs or ramfs: credentials would reach a disk."""


class UnsafeName(WriterError):
    """A credential or file name that is empty, hidden, or could leave the directory."""


class UnsafeEntry(WriterError):
    """An entry in the directory the sidecar did not create, e.g. a planted symlink."""


class BrokerError(SidecarError):
    """An error answer from the broker, or no answer at all."""

    status: int = 0
    code: str = "error"
    retryable: bool = True

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class BadRequest(BrokerError):
    status, code, retryable = 400, "bad_request", False


class Unauthenticated(BrokerError):
    status, code = 401, "unauthenticated"


class PolicyDenied(BrokerError):
    status, code = 403, "policy_denied"


class NotFound(BrokerError):
    status, code = 404, "not_found"


class TaskTerminal(BrokerError):
    status, code, retryable = 409, "task_terminal", False


class TooLarge(BrokerError):
    status, code, retryable = 413, "too_large", False


class RateLimited(BrokerError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ProviderFailed(BrokerError):
    status, code = 502, "provider_error"


class BrokerUnavailable(BrokerError):
    status, code = 503, "unavailable"


class WrongBrokerIdentity(BrokerUnavailable):
    code = "wrong_broker_identity"


class TokenUnavailable(BrokerUnavailable):
    code = "token_unavailable"


_BY_CODE: dict[str, type[BrokerError]] = {
    cls.code: cls for cls in (BadRequest, Unauthenticated, PolicyDenied, NotFound, TaskTerminal,
                              TooLarge, RateLimited, ProviderFailed, BrokerUnavailable)
}
_BY_STATUS: dict[int, type[BrokerError]] = {cls.status: cls for cls in _BY_CODE.values()}


def error_for(status: int, code: str | None) -> type[BrokerError]:
    """The error class for an answer: by the documented ``code`` first, then by HTTP status.

    Unknown 4xx answers are treated as bad requests (not retried), unknown 5xx as unavailable.
    """
    if code and code in _BY_CODE:
        return _BY_CODE[code]
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return BadRequest if 400 <= status < 500 else BrokerUnavailable
