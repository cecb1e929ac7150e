"""The ``secret`` provider: hands out one key of an existing Secret, as is (static passthrough).

For legacy tokens that cannot be minted per task. The value is long-lived and shared: it is marked
``static`` on the TaskLease and in the broker's answer, and revocation says plainly that it cannot
be revoked at its source (:class:`NotRevocable`) — rotate it yourself. The webhook warns about
pods using such sources; prefer any other provider.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from taskcreds.operator.cluster import Cluster
from taskcreds.operator.providers.base import Issued, IssueRequest, NotRevocable, ProviderError
from taskcreds.operator.sources import read_secret_value

__all__ = ["SecretProvider"]

_NAME = "secret"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SecretProvider:
    """Static passthrough of ``spec.secret.secretRef``."""

    name = _NAME

    def __init__(
        self, cluster: Cluster, *, operator_namespace: str, now: Callable[[], datetime] = _utcnow
    ) -> None:
        self._cluster = cluster
        self._operator_namespace = operator_namespace
        self._now = now

    async def issue(self, request: IssueRequest) -> Issued:
        ref: dict[str, Any] = (request.source_spec.get("secret") or {}).get("secretRef") or {}
        raw = await read_secret_value(
            self._cluster,
            ref,
            source_namespace=request.source_namespace,
            operator_namespace=self._operator_namespace,
            provider=_NAME,
        )
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProviderError(
                _NAME,
                f"Secret {ref.get('name')!r} key {ref.get('key')!r} is not UTF-8 "
                "text; only text values can be written as files",
                retryable=False,
            ) from None
        files = request.source_spec.get("files") or [str(ref.get("key"))]
        now = self._now().replace(microsecond=0)
        namespace = ref.get("namespace") or request.source_namespace or self._operator_namespace
        return Issued(
            files={files[0]: value},
            lease_ref=f"secret:{namespace}/{ref['name']}#{ref['key']}",
            issued_at=now,
            expires_at=now + timedelta(seconds=request.ttl_seconds),
            renewable=False,
            static=True,
        )

    async def renew(self, lease_ref: str, request: IssueRequest) -> Issued:
        """Re-read the Secret (it may have been rotated by its owner)."""
        return await self.issue(request)

    async def revoke(self, lease_ref: str, source_spec: dict[str, Any], source_namespace: str | None) -> None:
        raise NotRevocable(
            _NAME, "static Secret value: cannot be revoked at its source; rotate the Secret to end its use"
        )
