"""What the operator needs from Kubernetes, as one Protocol.

Two implementations: :mod:`taskcreds.operator.kube` (the real API through kubernetes_asyncio,
the only module that imports a Kubernetes client) and :mod:`taskcreds.operator.memcluster`
(in memory, for ``taskcreds demo`` and unit tests). Objects are plain dicts in the API's
JSON shape, so both behave alike and tests compare them directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

__all__ = ["Cluster", "TokenIdentity", "ClusterError", "Conflict", "AlreadyExists", "NotFound", "PodEvent"]


class ClusterError(Exception):
    """The Kubernetes API failed or is unreachable (retryable)."""


class Conflict(ClusterError):
    """Optimistic concurrency lost (HTTP 409): re-read and retry."""


class AlreadyExists(Conflict):
    """Create of an object that exists (HTTP 409 AlreadyExists): read it instead."""


class NotFound(ClusterError):
    """Patch or delete of an object that does not exist (HTTP 404)."""


#: one pod watch event: ("ADDED" | "MODIFIED" | "DELETED", pod)
PodEvent = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class TokenIdentity:
    """What a TokenReview of a pod-bound projected service-account token proved."""

    namespace: str
    service_account: str
    pod_name: str | None
    pod_uid: str | None
    audiences: tuple[str, ...]


class Cluster(Protocol):
    async def review_token(self, token: str, audience: str) -> TokenIdentity | None:
        """TokenReview; None when the token is not authenticated for ``audience``."""
        ...

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def get_credential_source(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def get_cluster_credential_source(self, name: str) -> dict[str, Any] | None: ...

    async def list_credential_sources(self, kind: str) -> list[dict[str, Any]]:
        """Every CredentialSource (all namespaces) or ClusterCredentialSource, by ``kind``.

        Only for the admission index's first full list; a watch keeps it current afterwards.
        """
        ...

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret with ``data`` base64 as the API returns it."""
        ...

    async def apply_secret(
        self,
        namespace: str,
        name: str,
        data: dict[str, bytes],
        labels: dict[str, str] | None = None,
        *,
        owner: dict[str, Any] | None = None,
        create_only: bool = False,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Create or replace a Secret (webhook CA, JWT signing keys, token binding objects).

        ``owner`` (an object with apiVersion/kind/metadata.name/uid) becomes its ownerReference.
        Concurrency between replicas: ``create_only`` raises AlreadyExists when the Secret exists;
        ``resource_version`` replaces only that version (Conflict otherwise). Neither: last writer wins.
        """
        ...

    async def delete_secret(self, namespace: str, name: str) -> None:
        """Delete a Secret; an absent one is success."""
        ...

    async def patch_webhook_ca_bundle(self, configuration: str, ca_bundle_pem: bytes) -> None:
        """Set ``caBundle`` on every webhook of a MutatingWebhookConfiguration."""
        ...

    async def create_service_account_token(
        self,
        namespace: str,
        service_account: str,
        audiences: list[str],
        expiration_seconds: int,
        bound_pod: tuple[str, str] | None,
        *,
        bound_secret: tuple[str, str] | None = None,
    ) -> tuple[str, datetime]:
        """TokenRequest; returns (token, expiration). ``bound_pod``/``bound_secret`` are (name, uid):
        the token stops authenticating when that object is deleted."""
        ...

    async def get_task_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def list_task_leases(self, namespace: str | None = None) -> list[dict[str, Any]]: ...

    async def create_task_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create; AlreadyExists when the name is taken."""
        ...

    async def patch_task_lease(
        self, namespace: str, name: str, patch: dict[str, Any], *, subresource: str | None = None
    ) -> dict[str, Any]:
        """JSON merge patch; ``subresource="status"`` for the status subresource.

        A patch carrying ``metadata.resourceVersion`` raises Conflict unless it is still current
        (optimistic concurrency, as the API server does); NotFound when the lease is gone.
        """
        ...

    async def emit_event(
        self, regarding: dict[str, Any], reason: str, message: str, type_: str = "Normal"
    ) -> None:
        """Record an Event about ``regarding`` (an object with apiVersion/kind/metadata)."""
        ...

    async def delete_task_lease(self, namespace: str, name: str) -> None:
        """Delete (with finalizers: mark deleted; gone once the last finalizer is removed)."""
        ...

    def watch_pods(
        self, namespace: str | None = None, label_selector: str | None = None
    ) -> AsyncIterator[PodEvent]:
        """Every pod as ADDED first, then changes, until cancelled; reconnects by itself."""
        ...
