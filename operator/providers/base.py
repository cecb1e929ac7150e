"""The one small interface every credential provider implements: issue, renew, revoke.

A provider turns a CredentialSource spec into a live credential at its source (OpenBao, GitHub,
the Kubernetes API, ...). Values travel only in ``Issued.files``; everything else here is safe to
log and to store on a TaskLease.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "IssueRequest",
    "Issued",
    "Provider",
    "PendingRevoker",
    "ProviderError",
    "NotRevocable",
    "HeldElsewhere",
    "Undelivered",
]


class ProviderError(Exception):
    """The credential's source failed. The message names the provider and the cause, never a value.

    ``retryable`` tells the caller whether trying again later may succeed.
    """

    def __init__(self, provider: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.retryable = retryable


class NotRevocable(ProviderError):
    """The credential cannot be revoked at its source (static secrets); said, never hidden."""

    def __init__(
        self, provider: str, message: str = "static credential: cannot be revoked at its source"
    ) -> None:
        super().__init__(provider, message, retryable=False)


class HeldElsewhere(ProviderError):
    """Only another, live operator replica can revoke this credential (it holds what revocation
    needs in memory): retry later, or let that replica revoke it. ``holder`` names the replica."""

    def __init__(self, provider: str, message: str, *, holder: str) -> None:
        super().__init__(provider, message, retryable=True)
        self.holder = holder


class Undelivered(ProviderError):
    """The source created a credential that the issue cannot hand out and could not give back
    either (a Vault lease longer than the task may hold, neither shortened nor revoked). ``issued``
    says what lives at the source (its ``files`` emptied: no value travels in an exception): the
    broker records it on the TaskLease so the sweep and the task end keep revoking it, instead of
    forgetting a live credential."""

    def __init__(self, provider: str, message: str, *, issued: Issued, retryable: bool = False) -> None:
        super().__init__(provider, message, retryable=retryable)
        self.issued = replace(issued, files={})


@dataclass(frozen=True)
class IssueRequest:
    """Who asks, for what, for how long. All fields are non-secret."""

    credential: str  # the CredentialSource name
    source_spec: dict[str, Any]  # the CredentialSource's spec (provider settings)
    source_namespace: str | None  # None for a ClusterCredentialSource
    namespace: str  # the pod's namespace
    pod: str
    pod_uid: str
    service_account: str
    task: str
    ttl_seconds: int
    #: for a renewal: the ``target`` recorded with the lease being renewed (where it must be revoked)
    lease_target: Mapping[str, str] | None = None
    #: the random id of this issue, recorded on the TaskLease (a pending entry) *before* the call:
    #: a provider that can find its credential by it afterwards (jwt: it is the ``jti``; vault token
    #: mode: token metadata) lets an issue cut short by an operator crash still be revoked
    intent: str = ""


@dataclass(frozen=True)
class Issued:
    """A live credential. ``files`` (file name -> value) is the only secret part."""

    files: dict[str, str] = field(repr=False)
    lease_ref: str  # non-secret reference used to renew/revoke (lease id, accessor, token hash)
    issued_at: datetime
    expires_at: datetime
    renewable: bool = False
    static: bool = False
    #: where revocation must go, recorded on the TaskLease entry and handed back to ``revoke``:
    #: non-secret facts only (a server address and mount, the issuing replica), never a value
    target: Mapping[str, str] | None = None
    #: from ``renew``: the lease this one replaced is still live at its source (only another
    #: replica can revoke it); the broker records it as superseded for that replica to revoke
    superseded_live: bool = False

    def __repr__(self) -> str:  # never print values, even by accident
        return (f"Issued(lease_ref={self.lease_ref!r}, files={sorted(self.files)}, "
                f"expires_at={self.expires_at.isoformat()}, renewable={self.renewable}, "
                f"static={self.static}, target={dict(self.target or {})})")


@runtime_checkable
class Provider(Protocol):
    """A credential source. Implementations must be safe to call concurrently."""

    name: str  # one of taskcreds.names.PROVIDERS

    async def issue(self, request: IssueRequest) -> Issued:
        """Create a new credential scoped to ``request`` with ``request.ttl_seconds`` lifetime."""
        ...

    async def renew(self, lease_ref: str, request: IssueRequest) -> Issued:
        """Extend a renewable lease (same value) or issue a replacement (new lease_ref).

        When a replacement is issued, the provider revokes the old lease itself.
        """
        ...

    async def revoke(self, lease_ref: str, source_spec: dict[str, Any], source_namespace: str | None) -> None:
        """Kill the credential at its source. Idempotent: an already-dead lease is success.

        Providers whose ``Issued`` carries a ``target`` also take ``target=`` (the recorded one):
        they revoke there, not wherever the source's spec points now.

        Raises NotRevocable for static credentials, ProviderError (retryable) on failure,
        HeldElsewhere when only another live replica can revoke it.
        """
        ...


@runtime_checkable
class PendingRevoker(Protocol):
    """Optional, next to :class:`Provider`: revoke what an issue of ``intent`` may have created when
    the operator stopped between the source's answer and the TaskLease write (only the pending entry
    is known: no leaseRef). Providers without it have such entries recorded not revocable."""

    async def revoke_pending(
        self,
        intent: str,
        expires_by: datetime,
        source_spec: dict[str, Any],
        source_namespace: str | None,
    ) -> None:
        """Revoke the credential issued with ``intent`` if one exists (none is success). Raises
        NotRevocable when it cannot be found afterwards, ProviderError (retryable) on failure."""
        ...
