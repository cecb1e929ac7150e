"""The ``vault`` provider: per-task credentials from HashiCorp Vault or OpenBao.

Two modes (``spec.vault.mode``):

- ``token`` — an orphan token per task with ``policies``, ``ttl`` = the requested lifetime and
  ``explicit_max_ttl`` = the source's ``maxTTL``. Orphan, because a child of the operator's own
  login token would die with it (an AppRole or Kubernetes login expires long before some tasks
  end). Without Vault's ``default`` policy (``no_default_policy``): it grants
  ``auth/token/renew-self``, with which the agent could keep its token alive up to ``maxTTL``,
  past the expiry the broker records (and past a revocation that failed until then). A source
  listing ``default`` in ``policies`` is refused at issue. The lease reference is the token's
  *accessor*, never the token. Needs, in the operator's
  policy, ``update`` on ``auth/token/create-orphan`` and ``auth/token/renew-accessor`` /
  ``revoke-accessor``, and the requested policies must be ones its token may hand out.
- ``dynamic`` — read ``path`` (``database/creds/<role>``, ...): a Vault lease whose data becomes the
  files through ``fileMap``. The lease reference is the lease id. A lease longer than the task may
  hold (the requested TTL, at most ``maxTTL``; the role's ``default_ttl`` is often longer) is
  shortened to it right away with a renewal of that increment; one that cannot be shortened (not
  renewable, or the renewal fails) is revoked at once and the issue fails. ``expiresAt`` is always
  the lease's real expiry.

Renewing extends the same lease and repeats the current value, which the operator keeps **in
memory only** (a Vault renewal does not return it). When the value is not held (operator restart)
or the lease can no longer be extended far enough (``explicit_max_ttl`` / the role's ``max_ttl``
reached) a replacement is issued and the old lease is revoked: the lease reference changes.

Revocation goes where the credential was issued: ``Issued.target`` records the server's address
(and, for people, the mount) on the TaskLease entry. When the source has since been pointed at
another server, :meth:`VaultProvider.revoke` does not ask that one (it would answer "invalid
accessor", which must not count as revoked) nor send the operator's credentials to an address no
longer configured: it fails visibly and is retried, and the lease is recorded not revocable once
it has expired (``leases``). A renewal in that state issues the replacement from the new server and
leaves the old lease recorded as superseded.

The operator authenticates with ``spec.vault.auth`` (``token`` from a Secret, ``approle``, or
``kubernetes`` with its own service-account token). ``kubernetes`` lends the operator's identity, so
only a ClusterCredentialSource may use it; a namespaced CredentialSource must also use https://
(http:// only to loopback). Both are refused in :func:`parse_settings`, before any network call
(see :func:`taskcreds.operator.sources.tenant_refusal`). One hvac client is cached per (address, CA,
auth) and logs in again when its token is about to expire or turns out to be revoked. hvac is
synchronous and runs through :func:`asyncio.to_thread`. Redirects are never followed (requests
would resend ``X-Vault-Token`` or a login body to wherever a server points, past
``sources.allowedAddresses``): a 3xx answer is an error naming the address.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests
from taskcreds.operator.cluster import Cluster, ClusterError
from taskcreds.operator.providers.base import (
    Issued,
    IssueRequest,
    NotRevocable,
    ProviderError,
    Undelivered,
)
from taskcreds.operator.sources import VAULT_DEFAULT_POLICY_REFUSAL, tenant_refusal

from taskcreds.durations import DurationError, parse_duration
from taskcreds.logs import fields

__all__ = [
    "VaultProvider",
    "VaultSettings",
    "VaultAuth",
    "SecretRef",
    "parse_settings",
    "parse_secret_ref",
    "read_secret_ref",
    "DEFAULT_SA_TOKEN_PATH",
]

log = logging.getLogger(__name__)

PROVIDER = "vault"
DEFAULT_SA_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
_MODES = ("token", "dynamic")
_AUTH_METHODS = ("token", "approle", "kubernetes")
_REAUTH_MARGIN = 0.1  # log in again when less than this share of the operator token's TTL is left
_T = TypeVar("_T")


# --- the spec, parsed (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class SecretRef:
    """``{name, key, namespace?}``: one key of a Kubernetes Secret."""

    name: str
    key: str
    namespace: str | None = None


@dataclass(frozen=True)
class VaultAuth:
    """How the operator itself logs in to Vault/OpenBao."""

    method: str  # token | approle | kubernetes
    token_ref: SecretRef | None = None
    role_id: str | None = None
    secret_id_ref: SecretRef | None = None
    mount_path: str | None = None
    role: str | None = None  # kubernetes auth role


@dataclass(frozen=True)
class VaultSettings:
    """``spec.vault`` of a CredentialSource, checked."""

    address: str
    auth: VaultAuth
    mode: str
    policies: tuple[str, ...] = ()
    path: str | None = None
    file_map: tuple[tuple[str, str], ...] = ()  # (response data key, file name)
    ca_ref: SecretRef | None = None
    token_file: str = "token"  # the file name in token mode
    max_ttl: int | None = None  # seconds, from spec.maxTTL


def _bad(message: str) -> ProviderError:
    return ProviderError(PROVIDER, message, retryable=False)


def parse_secret_ref(value: Any, where: str, provider: str = PROVIDER) -> SecretRef:
    """``{name, key, namespace?}`` -> SecretRef; ProviderError naming ``where`` otherwise."""
    if not isinstance(value, Mapping):
        raise ProviderError(
            provider, f"{where} must be an object {{name, key}}, got {type(value).__name__}", retryable=False
        )
    name, key, namespace = value.get("name"), value.get("key"), value.get("namespace")
    for label, item in (("name", name), ("key", key)):
        if not isinstance(item, str) or not item:
            raise ProviderError(provider, f"{where}.{label} must be a non-empty string", retryable=False)
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise ProviderError(
            provider, f"{where}.namespace must be a non-empty string when set", retryable=False
        )
    return SecretRef(name=str(name), key=str(key), namespace=namespace)


def parse_settings(spec: Mapping[str, Any], *, source_namespace: str | None) -> VaultSettings:
    """Check a CredentialSource spec for the vault provider; errors name the field and what is accepted.

    ``source_namespace`` is the namespace of a CredentialSource (None: a ClusterCredentialSource): a
    namespaced one may not log in as the operator nor use plain http:// except to loopback
    (:func:`~taskcreds.operator.sources.tenant_refusal`). Checked here too, not only when the source
    is parsed, so that no path reaches the network with such a spec.
    """
    vault = spec.get("vault")
    if not isinstance(vault, Mapping):
        raise _bad("spec.vault is missing: it needs address, auth and mode")
    if source_namespace is not None:
        refusal = tenant_refusal(PROVIDER, spec, "", source_namespace)
        if refusal:
            raise _bad(f"CredentialSource in namespace {source_namespace!r}: {refusal}")
    address = vault.get("address")
    if not isinstance(address, str) or not address.startswith(("http://", "https://")):
        raise _bad(f"spec.vault.address must be an http:// or https:// URL, got {address!r}")
    ca_ref = (
        parse_secret_ref(vault["caSecretRef"], "spec.vault.caSecretRef") if vault.get("caSecretRef") else None
    )

    raw_auth = vault.get("auth")
    if not isinstance(raw_auth, Mapping):
        raise _bad("spec.vault.auth is missing: it needs method (token | approle | kubernetes)")
    method = raw_auth.get("method", "token")
    if method not in _AUTH_METHODS:
        raise _bad(f"spec.vault.auth.method {method!r} is not one of {', '.join(_AUTH_METHODS)}")
    if method == "token":
        if "tokenSecretRef" not in raw_auth:
            raise _bad("spec.vault.auth.tokenSecretRef is required with method token")
        auth = VaultAuth(
            "token", token_ref=parse_secret_ref(raw_auth["tokenSecretRef"], "spec.vault.auth.tokenSecretRef")
        )
    elif method == "approle":
        approle = raw_auth.get("approle")
        if (
            not isinstance(approle, Mapping)
            or not approle.get("roleId")
            or "secretIdSecretRef" not in approle
        ):
            raise _bad("spec.vault.auth.approle needs roleId and secretIdSecretRef with method approle")
        auth = VaultAuth(
            "approle",
            role_id=str(approle["roleId"]),
            secret_id_ref=parse_secret_ref(
                approle["secretIdSecretRef"], "spec.vault.auth.approle.secretIdSecretRef"
            ),
            mount_path=str(approle.get("mountPath") or "approle"),
        )
    else:
        kube = raw_auth.get("kubernetes")
        if not isinstance(kube, Mapping) or not kube.get("role"):
            raise _bad("spec.vault.auth.kubernetes.role is required with method kubernetes")
        auth = VaultAuth(
            "kubernetes", role=str(kube["role"]), mount_path=str(kube.get("mountPath") or "kubernetes")
        )

    mode = vault.get("mode", "token")
    if mode not in _MODES:
        raise _bad(f"spec.vault.mode {mode!r} is not one of {', '.join(_MODES)}")
    policies = vault.get("policies") or []
    if not isinstance(policies, list) or not all(isinstance(p, str) and p for p in policies):
        raise _bad("spec.vault.policies must be a list of policy names")
    if mode == "token" and not policies:
        raise _bad("spec.vault.policies is required in mode token (the task token's policies)")
    path = vault.get("path")
    file_map: tuple[tuple[str, str], ...] = ()
    if mode == "dynamic":
        if not isinstance(path, str) or not path.strip("/"):
            raise _bad("spec.vault.path is required in mode dynamic (for example database/creds/readonly)")
        path = path.strip("/")
        raw_map = vault.get("fileMap") or {}
        if not isinstance(raw_map, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in raw_map.items()
        ):
            raise _bad("spec.vault.fileMap must map response data keys to file names (strings)")
        for name in raw_map.values():
            _check_file_name(name, "spec.vault.fileMap")
        file_map = tuple(raw_map.items())
    files = spec.get("files") or []
    token_file = files[0] if mode == "token" and isinstance(files, list) and files else "token"
    _check_file_name(token_file, "spec.files")
    max_ttl = None
    if spec.get("maxTTL"):
        try:
            max_ttl = int(parse_duration(spec["maxTTL"]))
        except DurationError as exc:
            raise _bad(f"spec.maxTTL: {exc}") from None
    return VaultSettings(
        address=address.rstrip("/"),
        auth=auth,
        mode=mode,
        policies=tuple(policies),
        path=path,
        file_map=file_map,
        ca_ref=ca_ref,
        token_file=str(token_file),
        max_ttl=max_ttl,
    )


def _check_file_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or name.startswith(".") or len(name) > 128:
        raise _bad(f"{where}: {name!r} is not a file name (no '/', no leading '.', at most 128 characters)")


# --- Secrets through the Cluster protocol ---------------------------------------------------


async def read_secret_ref(
    cluster: Cluster,
    ref: SecretRef,
    *,
    source_namespace: str | None,
    operator_namespace: str,
    provider: str = PROVIDER,
) -> str:
    """The value of one Secret key, decoded as UTF-8 text (whitespace around it stripped).

    A namespaced CredentialSource reads only Secrets of its own namespace; a cluster-scoped one
    reads the operator's namespace unless the ref names another. Errors name the Secret and key,
    never the value.
    """
    if source_namespace is not None:
        if ref.namespace not in (None, source_namespace):
            raise ProviderError(
                provider,
                f"Secret {ref.namespace}/{ref.name}: a CredentialSource in namespace "
                f"{source_namespace!r} may only use Secrets of its own namespace",
                retryable=False,
            )
        namespace = source_namespace
    else:
        namespace = ref.namespace or operator_namespace
    where = f"Secret {namespace}/{ref.name} key {ref.key!r}"
    try:
        secret = await cluster.get_secret(namespace, ref.name)
    except ClusterError as exc:
        raise ProviderError(provider, f"cannot read {where}: {type(exc).__name__}", retryable=True) from None
    if secret is None:
        raise ProviderError(provider, f"{where}: the Secret does not exist", retryable=True)
    data = secret.get("data") or {}
    if ref.key not in data:
        raise ProviderError(
            provider, f"{where}: no such key (keys: {', '.join(sorted(data)) or 'none'})", retryable=False
        )
    try:
        return base64.b64decode(data[ref.key], validate=True).decode("utf-8").strip()
    except (binascii.Error, UnicodeDecodeError, TypeError):
        raise ProviderError(provider, f"{where}: not base64-encoded UTF-8 text", retryable=False) from None


# --- the provider ---------------------------------------------------------------------------


@dataclass
class _Session:
    """One logged-in hvac client."""

    client: hvac.Client
    renew_at: float | None  # monotonic time to log in again; None: the token does not expire
    ca_file: str | None


@dataclass
class _Held:
    """A value this operator issued, kept in memory so a renewal can repeat it."""

    files: dict[str, str]
    issued_at: datetime
    expires_at: datetime

    def __repr__(self) -> str:
        return f"_Held(files={sorted(self.files)}, expires_at={self.expires_at.isoformat()})"


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class VaultProvider:
    """Vault/OpenBao tokens and dynamic secrets; implements :class:`~.base.Provider`."""

    name = PROVIDER

    def __init__(
        self,
        cluster: Cluster,
        *,
        operator_namespace: str = "taskcreds-system",
        timeout: float = 10.0,
        sa_token_path: str = DEFAULT_SA_TOKEN_PATH,
    ) -> None:
        self._cluster = cluster
        self._operator_namespace = operator_namespace
        self._timeout = timeout
        self._sa_token_path = sa_token_path
        self._sessions: dict[tuple[Any, ...], _Session] = {}
        self._locks: dict[tuple[Any, ...], asyncio.Lock] = {}
        self._held: dict[str, _Held] = {}
        self._retired: list[_Session] = []

    # -- Provider -------------------------------------------------------------------------------

    async def issue(self, request: IssueRequest) -> Issued:
        """A new token (mode token) or a new lease at ``path`` (mode dynamic) for this task."""
        settings = parse_settings(request.source_spec, source_namespace=request.source_namespace)
        if settings.mode == "token":
            issued = await self._issue_token(settings, request)
        else:
            issued = await self._issue_dynamic(settings, request)
        issued = dataclasses.replace(issued, target=_target(settings))
        self._hold(issued)
        log.info(
            "vault credential issued",
            extra=fields(
                provider=PROVIDER,
                credential=request.credential,
                task=request.task,
                namespace=request.namespace,
                pod=request.pod,
                mode=settings.mode,
                lease_ref=issued.lease_ref,
                expires_at=issued.expires_at.isoformat(),
            ),
        )
        return issued

    async def renew(self, lease_ref: str, request: IssueRequest) -> Issued:
        """Extend the lease by ``ttl_seconds`` and repeat the held value, or replace it (see module doc)."""
        settings = parse_settings(request.source_spec, source_namespace=request.source_namespace)
        moved = _moved(request.lease_target, settings)
        held = self._held.get(lease_ref)
        if moved:
            reason = moved
        elif held is not None:
            new_ttl = await self._extend(settings, request.source_namespace, lease_ref, request.ttl_seconds)
            # extended far enough: same value, same lease
            if new_ttl is not None and new_ttl * 2 >= request.ttl_seconds:
                held.expires_at = _now() + timedelta(seconds=new_ttl)
                log.info(
                    "vault lease renewed",
                    extra=fields(
                        provider=PROVIDER,
                        credential=request.credential,
                        task=request.task,
                        lease_ref=lease_ref,
                        expires_at=held.expires_at.isoformat(),
                    ),
                )
                return Issued(
                    files=dict(held.files),
                    lease_ref=lease_ref,
                    issued_at=held.issued_at,
                    expires_at=held.expires_at,
                    renewable=True,
                )
            reason = "the lease is gone" if new_ttl is None else "the lease reached its maximum lifetime"
        else:
            reason = "its value is not held by this process (another replica issued it, or a restart)"
        log.info(
            "vault lease replaced",
            extra=fields(
                provider=PROVIDER,
                credential=request.credential,
                task=request.task,
                lease_ref=lease_ref,
                reason=reason,
            ),
        )
        replacement = await self.issue(request)
        if moved:  # the old server is no longer configured: the old lease stays recorded, superseded
            return dataclasses.replace(replacement, superseded_live=True)
        try:
            await self.revoke(
                lease_ref, request.source_spec, request.source_namespace, target=request.lease_target
            )
        except ProviderError as exc:
            # keep the old lease the caller tracks and drop the new one, so nothing escapes revocation
            with contextlib.suppress(ProviderError):
                await self.revoke(replacement.lease_ref, request.source_spec, request.source_namespace)
            raise ProviderError(
                PROVIDER,
                f"renewing {lease_ref}: replacement issued but the old lease could not be "
                f"revoked ({exc}); try again",
                retryable=True,
            ) from None
        return replacement

    async def revoke(
        self,
        lease_ref: str,
        source_spec: dict[str, Any],
        source_namespace: str | None,
        *,
        target: Mapping[str, str] | None = None,
    ) -> None:
        """Revoke the token (by accessor) or the lease at the server that issued it (``target``);
        unknown ones count as revoked there. A source now pointing elsewhere is a retryable error."""
        settings = parse_settings(source_spec, source_namespace=source_namespace)
        moved = _moved(target, settings)
        if moved:
            raise ProviderError(
                PROVIDER,
                f"not revoked: {moved}, which does not know {lease_ref}; restore spec.vault.address "
                f"or revoke it there by hand (it dies at its own expiry)",
                retryable=True,
            )
        if _is_lease_id(lease_ref):
            await self._call(
                settings,
                source_namespace,
                "revoking lease",
                "sys/leases/revoke",
                lambda c: c.sys.revoke_lease(lease_ref),
            )
        else:

            def revoke_accessor(client: hvac.Client) -> None:
                try:
                    client.auth.token.revoke_accessor(lease_ref)
                except hvac.exceptions.InvalidRequest as exc:
                    if not _says(exc, "invalid accessor", "no token found"):
                        raise

            await self._call(
                settings,
                source_namespace,
                "revoking token by accessor",
                "auth/token/revoke-accessor",
                revoke_accessor,
            )
        self._held.pop(lease_ref, None)
        log.info("vault lease revoked", extra=fields(provider=PROVIDER, lease_ref=lease_ref))

    async def revoke_pending(
        self,
        intent: str,
        expires_by: datetime,
        source_spec: dict[str, Any],
        source_namespace: str | None,
    ) -> None:
        """An issue the operator stopped in the middle of: whether it created a token or lease is
        unknown and neither can be found without its accessor or lease id (listing every accessor
        needs ``sudo`` on ``auth/token/accessors``, which the operator's policy does not grant).
        Recorded not revocable, saying when it dies and how a person can find a token."""
        when = expires_by.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        mode = ((source_spec or {}).get("vault") or {}).get("mode")
        how = f"; a token has metadata taskcreds_intent={intent}" if mode == "token" else ""
        raise NotRevocable(PROVIDER, f"outcome unknown (operator stopped mid-issue); expires by {when}{how}")

    async def aclose(self) -> None:
        """Forget sessions and held values; remove temporary CA files."""
        for session in [*self._sessions.values(), *self._retired]:
            _close_session(session)
        self._sessions.clear()
        self._retired.clear()
        self._held.clear()

    # -- modes ----------------------------------------------------------------------------------

    async def _issue_token(self, settings: VaultSettings, request: IssueRequest) -> Issued:
        if "default" in settings.policies:
            # a backstop: the source is refused when read (sources.vault_policy_refusal), for issue
            # and renew; revoking tokens issued before the rule reads it without it and still works
            raise _bad(VAULT_DEFAULT_POLICY_REFUSAL)
        ttl = max(1, int(request.ttl_seconds))
        cap = max(ttl, settings.max_ttl or ttl)
        meta = {
            "task": request.task,
            "pod": request.pod,
            "namespace": request.namespace,
            "credential": request.credential,
            "service_account": request.service_account,
            "issued_by": "taskcreds",
        }
        if request.intent:  # lets a person find a token whose issue an operator crash cut short
            meta["taskcreds_intent"] = request.intent
        display = f"taskcreds-{request.namespace}-{request.credential}"[:100]

        def create(client: hvac.Client) -> dict[str, Any]:
            return client.auth.token.create_orphan(
                policies=list(settings.policies),
                no_default_policy=True,  # no renew-self: only the operator extends it, by accessor
                ttl=f"{ttl}s",
                explicit_max_ttl=f"{cap}s",
                renewable=True,
                display_name=display,
                meta=meta,
            )

        response = await self._call(
            settings, request.source_namespace, "creating a task token", "auth/token/create-orphan", create
        )
        auth = (response or {}).get("auth") or {}
        token, accessor = auth.get("client_token"), auth.get("accessor")
        if not token or not accessor:
            raise ProviderError(
                PROVIDER,
                f"{settings.address}: auth/token/create-orphan answered without a token and accessor",
                retryable=True,
            )
        now = _now()
        return Issued(
            files={settings.token_file: token},
            lease_ref=accessor,
            issued_at=now,
            expires_at=now + timedelta(seconds=int(auth.get("lease_duration") or ttl)),
            renewable=bool(auth.get("renewable", True)),
        )

    async def _issue_dynamic(self, settings: VaultSettings, request: IssueRequest) -> Issued:
        path = settings.path or ""
        response = await self._call(
            settings, request.source_namespace, "reading", path, lambda c: c.read(path)
        )
        if not isinstance(response, Mapping) or not isinstance(response.get("data"), Mapping):
            raise ProviderError(
                PROVIDER, f"{settings.address}: nothing to read at {path} (no data)", retryable=False
            )
        lease_id = response.get("lease_id")
        if not lease_id:
            raise ProviderError(
                PROVIDER,
                f"{settings.address}: {path} returned no lease (a static secret?); "
                "mode dynamic needs a leased secret such as database/creds/<role>",
                retryable=False,
            )
        data = response["data"]
        mapping = settings.file_map or tuple((key, key) for key in data)
        files: dict[str, str] = {}
        for key, file_name in mapping:
            if key not in data:
                # the lease is useless without this key: give it back before failing
                message = (
                    f"{settings.address}: {path} has no key {key!r} for spec.vault.fileMap "
                    f"(keys: {', '.join(sorted(data))})"
                )
                failed = await self._give_back(settings, request, str(lease_id))
                if failed is not None:
                    # live at Vault and not handed out: the broker records it, so it is revoked later
                    now = _now()
                    live = Issued(
                        files={}, lease_ref=str(lease_id), issued_at=now,
                        expires_at=now + timedelta(seconds=int(response.get("lease_duration") or 0)),
                        renewable=bool(response.get("renewable")), target=_target(settings),
                    )
                    raise Undelivered(
                        PROVIDER, f"{message}; giving the lease back failed too ({failed}): it is recorded "
                        f"on the TaskLease and the operator retries revoking {lease_id}", issued=live,
                    )
                raise ProviderError(PROVIDER, message, retryable=False)
            value = data[key]
            files[file_name] = value if isinstance(value, str) else str(value)
        duration = int(response.get("lease_duration") or 0)
        renewable = bool(response.get("renewable"))
        limit = max(1, int(request.ttl_seconds))
        if settings.max_ttl:
            limit = min(limit, settings.max_ttl)
        if duration > limit:
            duration = await self._shorten(settings, request, str(lease_id), duration, limit, renewable)
        now = _now()
        return Issued(
            files=files,
            lease_ref=str(lease_id),
            issued_at=now,
            expires_at=now + timedelta(seconds=duration),
            renewable=renewable,
        )

    async def _give_back(
        self, settings: VaultSettings, request: IssueRequest, lease_id: str
    ) -> ProviderError | None:
        """Revoke a lease this issue cannot hand out; the error when that failed too (None: gone)."""
        try:
            await self._call(
                settings,
                request.source_namespace,
                "revoking lease",
                "sys/leases/revoke",
                lambda c: c.sys.revoke_lease(lease_id),
            )
        except ProviderError as exc:
            return exc
        return None

    async def _shorten(
        self,
        settings: VaultSettings,
        request: IssueRequest,
        lease_id: str,
        duration: int,
        limit: int,
        renewable: bool,
    ) -> int:
        """The lease's new duration, at most ``limit``; else the lease is revoked and the issue fails
        (:class:`~.base.Undelivered`, carrying the live lease, when revoking fails too).

        The role's ``default_ttl`` is often longer than a task may hold: a renewal with a smaller
        increment shortens it. A lease that cannot be shortened would outlive what the source allows
        (its ``maxTTL``, the requested TTL), so it is given back at once rather than handed out.
        """
        why = "it is not renewable"
        if renewable:
            try:
                shorter = await self._extend(settings, request.source_namespace, lease_id, limit)
            except ProviderError as exc:
                shorter, why = None, f"shortening it failed ({exc})"
            else:
                if shorter is not None and 0 < shorter <= limit:
                    return shorter
                why = "the lease is gone" if shorter is None else f"the renewal left it at {shorter}s"
        revoked: str | None = None  # None: given back; else why not
        failed = await self._give_back(settings, request, lease_id)
        if failed is not None:
            revoked = (
                f"revoking it failed too ({failed}): it is recorded on the TaskLease and the operator "
                f"retries revoking {lease_id} (at the latest it ends at its expiry)"
            )
            log.warning(
                "vault: a lease too long for the task could not be revoked",
                extra=fields(provider=PROVIDER, lease_ref=lease_id, error=str(failed)),
            )
        cap = f"spec.maxTTL {settings.max_ttl}s" if settings.max_ttl else "no spec.maxTTL"
        message = (
            f"{settings.address}: {settings.path} gave a lease of {duration}s (the role's TTL), longer "
            f"than this task may hold ({limit}s: requested TTL {int(request.ttl_seconds)}s, {cap}), and "
            f"it cannot be shortened: {why}; {revoked or 'it was revoked'}. Lower the role's default_ttl "
            f"to at most {limit}s, or make its leases renewable"
        )
        if revoked is None:
            raise ProviderError(PROVIDER, message, retryable=False)
        # live at Vault and not handed out: the broker records it, so it is revoked later, not forgotten
        now = _now()
        live = Issued(
            files={}, lease_ref=lease_id, issued_at=now, expires_at=now + timedelta(seconds=duration),
            renewable=renewable, target=_target(settings),
        )
        raise Undelivered(PROVIDER, message, issued=live)

    async def _extend(
        self, settings: VaultSettings, source_namespace: str | None, lease_ref: str, ttl: int
    ) -> int | None:
        """Renew by ``ttl`` seconds; the real remaining lifetime, or None when the lease is gone."""
        increment = max(1, int(ttl))
        if _is_lease_id(lease_ref):

            def renew(client: hvac.Client) -> int | None:
                try:
                    answer = client.sys.renew_lease(lease_ref, increment=increment)
                except hvac.exceptions.InvalidRequest as exc:
                    if _says(exc, "lease not found", "not renewable", "invalid lease", "lease expired"):
                        return None
                    raise
                return int((answer or {}).get("lease_duration") or 0)

            return await self._call(settings, source_namespace, "renewing lease", "sys/leases/renew", renew)

        def renew_accessor(client: hvac.Client) -> int | None:
            try:
                answer = client.auth.token.renew_accessor(lease_ref, increment=f"{increment}s")
            except hvac.exceptions.InvalidRequest as exc:
                if _says(exc, "invalid accessor", "not renewable", "no token found"):
                    return None
                raise
            return int(((answer or {}).get("auth") or {}).get("lease_duration") or 0)

        return await self._call(
            settings,
            source_namespace,
            "renewing token by accessor",
            "auth/token/renew-accessor",
            renew_accessor,
        )

    def _hold(self, issued: Issued) -> None:
        now = _now()
        for ref in [r for r, h in self._held.items() if h.expires_at <= now]:
            del self._held[ref]  # expired values are useless: don't keep them around
        self._held[issued.lease_ref] = _Held(
            files=dict(issued.files), issued_at=issued.issued_at, expires_at=issued.expires_at
        )

    # -- talking to Vault -----------------------------------------------------------------------

    async def _call(
        self,
        settings: VaultSettings,
        source_namespace: str | None,
        what: str,
        path: str,
        fn: Callable[[hvac.Client], _T],
    ) -> _T:
        """Run ``fn(client)`` in a thread; log in again once if the operator's own token was refused."""
        key = self._session_key(settings, source_namespace)
        for attempt in (1, 2):
            session = await self._session(settings, source_namespace, key)
            try:
                return await asyncio.to_thread(fn, session.client)
            except hvac.exceptions.Forbidden as exc:
                if attempt == 1 and not await self._token_alive(session):
                    self._drop(key, session)
                    log.warning(
                        "vault: the operator's token was refused, logging in again",
                        extra=fields(provider=PROVIDER, address=settings.address, auth=settings.auth.method),
                    )
                    continue
                raise _translate(exc, what, settings.address, path) from None
            except Exception as exc:  # translated at this boundary: hvac and requests errors
                raise _translate(exc, what, settings.address, path) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _token_alive(self, session: _Session) -> bool:
        try:
            await asyncio.to_thread(session.client.auth.token.lookup_self)
        except hvac.exceptions.Forbidden:
            return False
        except Exception:  # noqa: BLE001 - anything else: assume alive, report the original error
            return True
        return True

    def _session_key(self, settings: VaultSettings, source_namespace: str | None) -> tuple[Any, ...]:
        return (settings.address, settings.ca_ref, settings.auth, source_namespace)

    def _drop(self, key: tuple[Any, ...], session: _Session) -> None:
        if self._sessions.get(key) is session:
            del self._sessions[key]
            # other calls may still be using it in their threads: close it at aclose(), not now
            self._retired.append(session)

    async def _session(
        self, settings: VaultSettings, source_namespace: str | None, key: tuple[Any, ...]
    ) -> _Session:
        session = self._sessions.get(key)
        if session is not None and (session.renew_at is None or time.monotonic() < session.renew_at):
            return session
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            session = self._sessions.get(key)
            if session is not None and (session.renew_at is None or time.monotonic() < session.renew_at):
                return session
            if session is not None:
                self._drop(key, session)
            session = await self._login(settings, source_namespace)
            self._sessions[key] = session
            return session

    async def _login(self, settings: VaultSettings, source_namespace: str | None) -> _Session:
        """A new client logged in with ``settings.auth`` (Secrets re-read: they may have rotated)."""
        auth = settings.auth

        async def read(ref: SecretRef) -> str:
            return await read_secret_ref(
                self._cluster,
                ref,
                source_namespace=source_namespace,
                operator_namespace=self._operator_namespace,
            )

        ca_file = None
        if settings.ca_ref is not None:
            ca_pem = await read(settings.ca_ref)
            ca_file = _write_ca(ca_pem)
        client = _client(settings.address, ca_file, self._timeout)
        try:
            if auth.method == "token":
                assert auth.token_ref is not None
                where = f"the token in Secret {auth.token_ref.name} key {auth.token_ref.key!r}"
                client.token = await read(auth.token_ref)
                answer = await asyncio.to_thread(client.auth.token.lookup_self)
                ttl = int(((answer or {}).get("data") or {}).get("ttl") or 0)
            elif auth.method == "approle":
                assert auth.secret_id_ref is not None
                where = f"AppRole login at auth/{auth.mount_path} with role_id {auth.role_id!r}"
                secret_id = await read(auth.secret_id_ref)
                answer = await asyncio.to_thread(
                    client.auth.approle.login,
                    role_id=auth.role_id,
                    secret_id=secret_id,
                    mount_point=auth.mount_path,
                )
                ttl = int(((answer or {}).get("auth") or {}).get("lease_duration") or 0)
            else:
                where = f"Kubernetes login at auth/{auth.mount_path} with role {auth.role!r}"
                jwt = self._read_sa_token()
                answer = await asyncio.to_thread(
                    client.auth.kubernetes.login, auth.role, jwt, mount_point=auth.mount_path
                )
                ttl = int(((answer or {}).get("auth") or {}).get("lease_duration") or 0)
        except ProviderError:
            _remove(ca_file)
            raise
        except (
            hvac.exceptions.Forbidden,
            hvac.exceptions.InvalidRequest,
            hvac.exceptions.Unauthorized,
        ) as exc:
            _remove(ca_file)
            raise ProviderError(
                PROVIDER,
                f"{settings.address}: the operator could not authenticate ({where}): {_vault_errors(exc)}",
                retryable=False,
            ) from None
        except Exception as exc:  # noqa: BLE001 - translated at this boundary
            _remove(ca_file)
            raise _translate(
                exc, "logging in", settings.address, f"auth/{auth.mount_path or 'token'}"
            ) from None
        renew_at = time.monotonic() + ttl * (1 - _REAUTH_MARGIN) if ttl > 0 else None
        log.info(
            "vault: operator authenticated",
            extra=fields(
                provider=PROVIDER, address=settings.address, auth=auth.method, token_ttl_seconds=ttl
            ),
        )
        return _Session(client=client, renew_at=renew_at, ca_file=ca_file)

    def _read_sa_token(self) -> str:
        try:
            with open(self._sa_token_path, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            raise ProviderError(
                PROVIDER,
                f"cannot read the operator's service-account token at "
                f"{self._sa_token_path} for Kubernetes auth: {exc.strerror}",
                retryable=False,
            ) from None


# --- helpers --------------------------------------------------------------------------------


class _Redirected(Exception):
    """A server answered 3xx: never followed (see :func:`_client`)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def _refuse_redirect(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """requests response hook: runs before requests would follow a redirect."""
    if 300 <= response.status_code < 400:
        response.close()
        raise _Redirected(response.status_code)


def _client(address: str, ca_file: str | None, timeout: float) -> hvac.Client:
    """An hvac client that never follows a redirect.

    requests drops only ``Authorization`` when a redirect changes host: ``X-Vault-Token`` and a
    login body (the operator's service-account JWT, an AppRole secret id) would go to whatever
    address the server names, past ``sources.allowedAddresses``. So no redirects at all, and a 3xx
    answer is an error (:func:`_translate`), never a silent empty result.
    """
    client = hvac.Client(url=address, verify=ca_file or True, timeout=timeout, allow_redirects=False)
    session = client.adapter.session
    session.max_redirects = 0
    session.hooks["response"].append(_refuse_redirect)
    return client


def _target(settings: VaultSettings) -> dict[str, str]:
    """Where an issued credential lives (non-secret): the server, and the mount it came from."""
    mount = "auth/token" if settings.mode == "token" else (settings.path or "").split("/", 1)[0]
    return {"address": settings.address, "mount": mount}


def _moved(target: Mapping[str, str] | None, settings: VaultSettings) -> str | None:
    """Why the recorded server is not the configured one, or None (same, or nothing recorded)."""
    recorded = (target or {}).get("address")
    if not recorded or recorded.rstrip("/") == settings.address:
        return None
    return f"issued by {recorded} but the source now points at {settings.address}"


def _is_lease_id(lease_ref: str) -> bool:
    """Lease ids are ``<path>/<id>``; token accessors never contain a slash."""
    return "/" in lease_ref


def _vault_errors(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list | tuple) and errors:
        text = "; ".join(" ".join(str(e).split()) for e in errors)
    else:
        text = type(exc).__name__
    return text[:300]


def _says(exc: BaseException, *phrases: str) -> bool:
    text = _vault_errors(exc).lower()
    return any(phrase in text for phrase in phrases)


_RETRYABLE_VAULT = (
    hvac.exceptions.InternalServerError,
    hvac.exceptions.VaultDown,
    hvac.exceptions.BadGateway,
    hvac.exceptions.RateLimitExceeded,
    hvac.exceptions.UnexpectedError,
    hvac.exceptions.VaultNotInitialized,
)


def _translate(exc: BaseException, what: str, address: str, path: str) -> ProviderError:
    """A ProviderError naming what failed, where, and whether to try again. Never a value."""
    where = f"{what} {path} at {address}"
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, _Redirected):
        return ProviderError(
            PROVIDER,
            f"{where}: answered a redirect (HTTP {exc.status}); redirects are not followed, so that the "
            f"operator's credentials and tokens go only to {address}. An HA standby redirects to the "
            f"active node: point spec.vault.address at the active node or at a load balancer that "
            f"forwards to it",
            retryable=False,
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return ProviderError(PROVIDER, f"{where}: timed out", retryable=True)
    if isinstance(exc, requests.exceptions.SSLError):
        return ProviderError(PROVIDER, f"{where}: TLS failed (check spec.vault.caSecretRef)", retryable=False)
    if isinstance(exc, requests.exceptions.ConnectionError):
        return ProviderError(
            PROVIDER, f"{where}: cannot connect (is Vault/OpenBao up and reachable?)", retryable=True
        )
    if isinstance(exc, requests.exceptions.RequestException):
        return ProviderError(PROVIDER, f"{where}: {type(exc).__name__}", retryable=True)
    if isinstance(exc, hvac.exceptions.Forbidden):
        return ProviderError(
            PROVIDER,
            f"{where}: permission denied (the operator's Vault policy does not allow it)",
            retryable=False,
        )
    if isinstance(exc, hvac.exceptions.InvalidPath):
        return ProviderError(PROVIDER, f"{where}: no such path ({_vault_errors(exc)})", retryable=False)
    if isinstance(exc, _RETRYABLE_VAULT):
        return ProviderError(PROVIDER, f"{where}: Vault failed ({_vault_errors(exc)})", retryable=True)
    if isinstance(exc, hvac.exceptions.VaultError):
        return ProviderError(PROVIDER, f"{where}: refused ({_vault_errors(exc)})", retryable=False)
    return ProviderError(PROVIDER, f"{where}: {type(exc).__name__}", retryable=True)


def _write_ca(pem: str) -> str:
    """requests wants a CA bundle path: a private temporary file holding the (public) CA certificate."""
    digest = hashlib.sha256(pem.encode()).hexdigest()[:12]
    fd, path = tempfile.mkstemp(prefix=f"taskcreds-vault-ca-{digest}-", suffix=".pem")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(pem + "\n")
    return path


def _remove(path: str | None) -> None:
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _close_session(session: _Session) -> None:
    with contextlib.suppress(Exception):
        session.client.adapter.close()
    _remove(session.ca_file)
