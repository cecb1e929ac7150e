"""The ``kubernetes-token`` provider: a TokenRequest for a service account, bound to the agent's pod.

The token carries ``spec.kubernetesToken.audiences`` and is bound (``boundObjectRef``) to the
calling pod, so the API server stops accepting it when that pod is deleted, and it expires after
its lifetime. Kubernetes offers no way to revoke one earlier short of deleting the bound object or
the service account: ``revoke`` says so (:class:`NotRevocable`), and the TaskLease records that
the token dies with the pod. The API server enforces a minimum lifetime of 10 minutes; a shorter
requested TTL is raised to that and ``expiresAt`` tells the truth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from taskcreds.operator.cluster import Cluster, ClusterError
from taskcreds.operator.providers.base import Issued, IssueRequest, NotRevocable, ProviderError

__all__ = ["KubernetesTokenProvider", "MIN_EXPIRATION_SECONDS"]

_NAME = "kubernetes-token"
MIN_EXPIRATION_SECONDS = 600


def _utcnow() -> datetime:
    return datetime.now(UTC)


class KubernetesTokenProvider:
    """TokenRequest for ``spec.kubernetesToken.serviceAccount`` in the pod's namespace."""

    name = _NAME

    def __init__(self, cluster: Cluster, *, now: Callable[[], datetime] = _utcnow) -> None:
        self._cluster = cluster
        self._now = now

    async def issue(self, request: IssueRequest) -> Issued:
        spec = request.source_spec.get("kubernetesToken") or {}
        account = spec.get("serviceAccount")
        audiences = spec.get("audiences") or []
        if not isinstance(account, str) or not account:
            raise ProviderError(
                _NAME, f"source {request.credential!r} needs kubernetesToken.serviceAccount", retryable=False
            )
        if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
            raise ProviderError(
                _NAME,
                f"kubernetesToken.audiences of {request.credential!r} must be a list of strings",
                retryable=False,
            )
        seconds = max(MIN_EXPIRATION_SECONDS, int(request.ttl_seconds))
        issued_at = self._now().replace(microsecond=0)
        try:
            token, expires = await self._cluster.create_service_account_token(
                request.namespace, account, list(audiences), seconds, (request.pod, request.pod_uid)
            )
        except ClusterError as exc:
            raise ProviderError(
                _NAME, f"TokenRequest for service account {request.namespace}/{account} failed: {exc}"
            ) from None
        digest = hashlib.sha256(token.encode()).hexdigest()[:16]
        files = request.source_spec.get("files") or ["token"]
        return Issued(
            files={files[0]: token},
            lease_ref=f"sa-token:{request.namespace}/{account}:{request.pod}:{digest}",
            issued_at=issued_at,
            expires_at=expires,
            renewable=False,
            static=False,
        )

    async def renew(self, lease_ref: str, request: IssueRequest) -> Issued:
        """A new token; the old one lives until its expiry or the pod's deletion (see module doc)."""
        return await self.issue(request)

    async def revoke(self, lease_ref: str, source_spec: dict[str, Any], source_namespace: str | None) -> None:
        raise NotRevocable(
            _NAME,
            "bound service-account token: Kubernetes cannot revoke it early; "
            "it stops working when the pod is deleted or at its expiry",
        )
