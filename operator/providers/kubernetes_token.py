"""The ``kubernetes-token`` provider: a TokenRequest for a service account, bound to a per-lease Secret.

Kubernetes cannot revoke a service-account token, but it stops accepting a *bound* token as soon as
its bound object is deleted. The API server binds a token to a pod only for the pod's own service
account, so each lease gets its own empty binding Secret (owned by the agent's pod: it goes, and
the token dies, when the pod goes). ``revoke`` deletes that Secret: the token is dead at once.
What remains: a relying party that validates tokens offline (JWKS, no TokenReview) accepts it until
``exp`` — keep ``maxTTL`` short. The API server enforces a minimum lifetime of 10 minutes; a shorter
requested TTL is raised to that here; the broker cuts what it answers to the granted TTL
(``leases.cap_to_grant``, the real end kept as ``sourceExpiresAt``) and the sweep deletes the binding
Secret then.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from taskcreds.operator.cluster import Cluster, ClusterError
from taskcreds.operator.providers.base import Issued, IssueRequest, ProviderError
from taskcreds.operator.sources import tenant_refusal

__all__ = ["KubernetesTokenProvider", "MIN_EXPIRATION_SECONDS", "binding_secret_name"]

_NAME = "kubernetes-token"
MIN_EXPIRATION_SECONDS = 600


def _utcnow() -> datetime:
    return datetime.now(UTC)


def binding_secret_name(pod: str, nonce: str) -> str:
    """``taskcreds-bind-<pod>-<nonce>``, a valid Secret name."""
    return f"taskcreds-bind-{pod[:200]}-{nonce}"


class KubernetesTokenProvider:
    """TokenRequest for ``spec.kubernetesToken.serviceAccount`` of a ClusterCredentialSource, in the
    pod's namespace. Revoking (deleting the binding Secret it created) works for any lease."""

    name = _NAME
    #: the API server's floor on expirationSeconds: the bound of an interrupted issue's pending entry
    min_lifetime_seconds = MIN_EXPIRATION_SECONDS

    def __init__(self, cluster: Cluster, *, now: Callable[[], datetime] = _utcnow) -> None:
        self._cluster = cluster
        self._now = now

    async def issue(self, request: IssueRequest) -> Issued:
        """A token for ``serviceAccount`` bound to a new binding Secret owned by the pod.

        Only for a ClusterCredentialSource (``source_namespace`` None): a namespaced one would mint
        tokens with the operator's TokenRequest rights (:func:`~taskcreds.operator.sources.tenant_refusal`,
        checked here too so that no path makes the API call for one).
        """
        if request.source_namespace is not None:
            refusal = tenant_refusal(_NAME, request.source_spec, request.credential, request.source_namespace)
            raise ProviderError(
                _NAME,
                f"CredentialSource {request.source_namespace}/{request.credential}: {refusal}",
                retryable=False,
            )
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
        secret_name = binding_secret_name(request.pod, secrets.token_hex(5))
        owner = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": request.pod, "uid": request.pod_uid}}
        try:
            binding = await self._cluster.apply_secret(
                request.namespace,
                secret_name,
                {},
                labels={
                    "app.kubernetes.io/managed-by": "taskcreds",
                    "taskcreds.io/binding-for": request.credential[:63],
                },
                owner=owner,
            )
            token, expires = await self._cluster.create_service_account_token(
                request.namespace,
                account,
                list(audiences),
                seconds,
                None,
                bound_secret=(secret_name, binding["metadata"]["uid"]),
            )
        except ClusterError as exc:
            try:
                await self._cluster.delete_secret(request.namespace, secret_name)
            except ClusterError:
                pass  # owned by the pod: collected with it
            raise ProviderError(
                _NAME, f"TokenRequest for service account {request.namespace}/{account} failed: {exc}"
            ) from None
        digest = hashlib.sha256(token.encode()).hexdigest()[:12]
        files = request.source_spec.get("files") or ["token"]
        return Issued(
            files={files[0]: token},
            lease_ref=f"sa-token:{request.namespace}/{secret_name}:{account}:{digest}",
            issued_at=issued_at,
            expires_at=expires,
            renewable=False,
            static=False,
        )

    async def renew(self, lease_ref: str, request: IssueRequest) -> Issued:
        """A new token; the old one is revoked (its binding Secret deleted)."""
        issued = await self.issue(request)
        await self.revoke(lease_ref, request.source_spec, request.source_namespace)
        return issued

    async def revoke(self, lease_ref: str, source_spec: dict[str, Any], source_namespace: str | None) -> None:
        """Delete the binding Secret: the API server refuses the token from then on. Idempotent."""
        head, _, rest = lease_ref.partition(":")
        where = rest.split(":")[0]
        namespace, _, secret_name = where.partition("/")
        if head != "sa-token" or not namespace or not secret_name.startswith("taskcreds-bind-"):
            raise ProviderError(
                _NAME, f"lease reference {lease_ref!r} is not sa-token:<ns>/<binding>:...", retryable=False
            )
        try:
            await self._cluster.delete_secret(namespace, secret_name)
        except ClusterError as exc:
            raise ProviderError(
                _NAME, f"cannot delete binding Secret {namespace}/{secret_name}: {exc}"
            ) from None
