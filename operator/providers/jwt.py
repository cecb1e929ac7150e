"""The ``jwt`` provider: short-lived ES256 JWTs signed by the broker itself (the embedded default).

Signing keys live in one Secret (``TASKCREDS_JWT_SECRET`` in the operator's namespace), created
when missing. The newest key signs; older keys stay in the JWKS (``/.well-known/jwks.json``) until
every token they signed has expired, then are pruned. Rotation is by age (``rotate_every``).

Revocation: a JWT cannot be recalled once handed out. ``revoke`` records the ``jti`` in a deny
list that relying parties can consult (:meth:`JwtProvider.is_revoked`, ``GET /v1/jwt/revoked``),
but a party that only checks the signature will accept the token until ``exp``: **the short TTL is
the real bound**. Keep ``maxTTL`` of jwt sources small.

The deny list is durable and shared, and kept apart from the signing keys: a task-end ``revoke``
writes ``{jti, exp}`` (never a token) to the key ``revoked.json`` of its own Secret,
``<TASKCREDS_JWT_SECRET>-revoked`` (:data:`DENYLIST_SUFFIX`), before it counts as done; entries are
dropped once ``exp`` has passed. Every replica merges that Secret and the revoked jwt entries of
every TaskLease into its list (at most every 2 s, on ``/v1/jwt/revoked``), so a revoked JWT stays
listed until its ``exp`` on every replica, after an operator restart, and after its pod and
TaskLease are deleted.

Writes are batched: one writer per replica takes every pending ``{jti, exp}`` into one
resourceVersion-guarded read-modify-write (retried on conflict with jittered backoff), so a burst of
revocations costs a few writes, not one each. The stored list is capped (``deny_max_bytes``, far
below the 1 MiB Secret limit): an entry that does not fit is not an error — the revocation still
counts, the ``jti`` stays listed while its TaskLease exists (and on this replica until ``exp``),
and one ERROR per batch plus ``taskcreds_jwt_denylist_overflow_total`` say how many did not fit.

A renewal does not write the durable list: the replaced ``jti`` is listed on this replica at once
and on every replica through its TaskLease entry (recorded revoked, reason ``superseded``) until it
expires. So the list grows with task ends, not with renewals (a client renewing in a loop cannot
fill it); the price is that a replaced, unexpired JWT is no longer listed once its pod and
TaskLease are deleted — it was held by the same sidecar as its (listed) replacement, and is valid
only until its own ``exp`` (the sidecar renews at 2/3 of the lifetime).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from taskcreds.operator.cluster import Cluster, ClusterError, Conflict
from taskcreds.operator.providers.base import Issued, IssueRequest, ProviderError
from taskcreds.operator.sources import jwt_audiences, tenant_refusal

from taskcreds.logs import fields
from taskcreds.metrics import OperatorMetrics
from taskcreds.names import KIND_CLUSTER_CREDENTIAL_SOURCE, KIND_CREDENTIAL_SOURCE

__all__ = ["JwtProvider", "RESERVED_CLAIMS", "SECRET_KEY", "REVOKED_KEY", "DENYLIST_SUFFIX", "DENY_MAX_BYTES"]

log = logging.getLogger("taskcreds.providers.jwt")

RESERVED_CLAIMS: Final = frozenset(
    {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "task", "pod", "namespace", "credential", "source_kind"}
)
SECRET_KEY: Final = "keys.json"  # the signing keys: [{kid, createdAt, retiredAt, pem}]
REVOKED_KEY: Final = "revoked.json"  # the deny list: {jti: exp} — ids and times, never a token
DENYLIST_SUFFIX: Final = "-revoked"  # the deny list's Secret: <jwt Secret>-revoked (chart Role names it)
DENY_MAX_BYTES: Final = 512 * 1024  # ~13,000 entries; the Secret limit is 1 MiB
_WRITE_ATTEMPTS: Final = 8
_BACKOFF_BASE, _BACKOFF_CAP = 0.02, 1.0  # seconds; full jitter between conflicting writes
_NAME = "jwt"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Key:
    kid: str
    created_at: float
    retired_at: float | None
    private: ec.EllipticCurvePrivateKey

    def to_json(self) -> dict[str, Any]:
        pem = self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return {"kid": self.kid, "createdAt": self.created_at, "retiredAt": self.retired_at, "pem": pem}

    def __repr__(self) -> str:  # never the key
        return f"_Key(kid={self.kid!r})"


def _new_key(now: float) -> _Key:
    return _Key(secrets.token_hex(8), now, None, ec.generate_private_key(ec.SECP256R1()))


class JwtProvider:
    """Broker-signed JWTs. Keys load lazily from the Secret on first use."""

    name = _NAME

    def __init__(
        self,
        cluster: Cluster,
        *,
        secret_namespace: str,
        secret_name: str,
        issuer: str,
        now: Callable[[], datetime] = _utcnow,
        rotate_every: float = 86400.0,
        max_token_ttl: float = 86400.0,
        reload_every: float = 60.0,
        deny_max_bytes: int = DENY_MAX_BYTES,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self._cluster = cluster
        self._ns, self._secret = secret_namespace, secret_name
        self._deny_secret = secret_name + DENYLIST_SUFFIX
        self.deny_max_bytes = deny_max_bytes
        self.metrics = metrics
        self.issuer = issuer
        self._now = now
        self.rotate_every = rotate_every
        self.max_token_ttl = max_token_ttl
        self._reload_every = reload_every
        self._keys: list[_Key] = []  # oldest first; the last signs
        self._loaded_at = -1e18
        self._lock = asyncio.Lock()
        self._revoked: dict[str, float] = {}  # jti -> exp (unix)
        self._revoked_synced_at = -1e18  # monotonic time of the last merge from the TaskLeases
        # the one writer of this replica: revocations wait on it; what arrives during a write is next
        self._pending: dict[str, float] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._writer: asyncio.Task[None] | None = None

    # --- keys ---------------------------------------------------------------------------------
    async def _read(self) -> list[_Key] | None:
        secret = await self._cluster.get_secret(self._ns, self._secret)
        if secret is None:
            return None
        raw = (secret.get("data") or {}).get(SECRET_KEY)
        if raw is None:
            return []
        try:
            entries = json.loads(base64.b64decode(raw))
            keys = []
            for e in entries:
                private = serialization.load_pem_private_key(e["pem"].encode(), password=None)
                if not isinstance(private, ec.EllipticCurvePrivateKey):
                    raise ValueError("not an EC key")
                keys.append(_Key(str(e["kid"]), float(e["createdAt"]), e.get("retiredAt"), private))
            return keys
        except (ValueError, KeyError, TypeError):
            raise ProviderError(
                _NAME,
                f"Secret {self._ns}/{self._secret} key {SECRET_KEY} is not a "
                "taskcreds JWT key set; delete it to have a new one made",
                retryable=False,
            ) from None

    async def _write(self, keys: list[_Key]) -> None:
        payload = json.dumps([k.to_json() for k in keys]).encode()

        def put(data: dict[str, bytes]) -> bool:
            data.pop(REVOKED_KEY, None)  # where a pre-release build kept the deny list: never again
            data[SECRET_KEY] = payload
            return True

        await self._update_secret(self._secret, put)

    async def _update_secret(self, name: str, mutate: Callable[[dict[str, bytes]], bool]) -> dict[str, bytes]:
        """Read-modify-write a Secret's data, guarded by resourceVersion (retried on conflict after a
        jittered backoff), so replicas writing at once never overwrite each other. ``mutate`` changes
        the decoded data in place and says whether anything changed (False: no write)."""
        last: Exception | None = None
        for attempt in range(_WRITE_ATTEMPTS):
            if attempt:
                delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt)
                await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - jitter, not a secret
            secret = await self._cluster.get_secret(self._ns, name)
            data = {
                k: base64.b64decode(v) for k, v in ((secret or {}).get("data") or {}).items()
            }
            if not mutate(data):
                return data
            labels = {"app.kubernetes.io/managed-by": "taskcreds"}
            try:
                if secret is None:
                    await self._cluster.apply_secret(self._ns, name, data, labels, create_only=True)
                else:
                    rv = (secret.get("metadata") or {}).get("resourceVersion")
                    await self._cluster.apply_secret(self._ns, name, data, labels, resource_version=rv)
                return data
            except Conflict as exc:  # AlreadyExists included: another replica wrote first
                last = exc
        raise ClusterError(f"Secret {self._ns}/{name}: {_WRITE_ATTEMPTS} conflicting writes ({last})")

    async def ensure_keys(self, *, force_reload: bool = False) -> None:
        """Load the key set (create it when missing, rotate by age, prune expired keys)."""
        mono = time.monotonic()
        if not force_reload and self._keys and mono - self._loaded_at < self._reload_every:
            if self._now().timestamp() - self._keys[-1].created_at < self.rotate_every:
                return
        async with self._lock:
            try:
                keys = await self._read()
                now = self._now().timestamp()
                changed = False
                if not keys:
                    keys = [_new_key(now)]
                    changed = True
                elif now - keys[-1].created_at >= self.rotate_every:
                    keys[-1].retired_at = now
                    keys.append(_new_key(now))
                    changed = True
                kept = [k for k in keys if k.retired_at is None or k.retired_at + self.max_token_ttl > now]
                changed = changed or len(kept) != len(keys)
                if changed:
                    await self._write(kept)
                    reread = await self._read()  # another replica may have written first: adopt theirs
                    kept = reread or kept
            except ClusterError as exc:
                raise ProviderError(
                    _NAME,
                    f"cannot read or write signing keys in Secret "
                    f"{self._ns}/{self._secret}: {type(exc).__name__}",
                ) from None
            self._keys = kept
            self._loaded_at = mono

    async def rotate(self) -> str:
        """Start signing with a new key now (old keys stay published); returns the new ``kid``."""
        async with self._lock:
            keys = await self._read() or []
            now = self._now().timestamp()
            if keys:
                keys[-1].retired_at = now
            keys.append(_new_key(now))
            await self._write(keys)
            self._keys = keys
            self._loaded_at = time.monotonic()
            return keys[-1].kid

    def jwks(self) -> dict[str, Any]:
        """The public keys, each with ``kid``, for ``/.well-known/jwks.json``."""
        out = []
        for k in self._keys:
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(k.private.public_key(), as_dict=True)
            jwk.update({"kid": k.kid, "alg": "ES256", "use": "sig"})
            out.append(jwk)
        return {"keys": out}

    # --- deny list ----------------------------------------------------------------------------
    def is_revoked(self, jti: str) -> bool:
        """True when the token with this ``jti`` was revoked (relying parties may check this)."""
        return jti in self._revoked

    def revoked(self) -> list[dict[str, Any]]:
        """Revoked, not yet expired tokens: ``[{"jti", "exp"}]``."""
        self._prune()
        return [{"jti": j, "exp": int(e)} for j, e in sorted(self._revoked.items())]

    async def sync_revoked(self, *, max_age: float = 2.0) -> None:
        """Merge the revoked, unexpired jwt leases recorded on every TaskLease into the deny list.

        The TaskLeases are the durable, shared record: this is what makes ``/v1/jwt/revoked`` the
        same on every replica and after an operator restart (the in-memory list alone was neither).
        Listed at most every ``max_age`` seconds; a failed list keeps the current list.
        """
        if time.monotonic() - self._revoked_synced_at < max_age:
            return
        self._revoked_synced_at = time.monotonic()
        try:
            task_leases = await self._cluster.list_task_leases(None)
        except Exception:  # the API is away: answer from memory, try again next time
            return
        for lease in task_leases:
            for entry in (lease.get("status") or {}).get("leases") or []:
                ref = str(entry.get("leaseRef") or "")
                parts = ref.split(":")
                revoked = entry.get("provider") == _NAME and entry.get("revokedAt")
                if revoked and len(parts) == 3 and parts[2].isdigit():
                    self._revoked.setdefault(parts[1], float(parts[2]))
        try:
            secret = await self._cluster.get_secret(self._ns, self._deny_secret)
        except Exception:  # noqa: BLE001 - as above: answer from memory
            secret = None
        raw = ((secret or {}).get("data") or {}).get(REVOKED_KEY)
        if raw:
            self._revoked.update(_deny_list(base64.b64decode(raw)))
        self._prune()

    async def _persist(self, jti: str, exp: float) -> None:
        """Have ``{jti, exp}`` written to the durable list by this replica's one writer; returns once
        a write that included it is done (or it did not fit: see :meth:`_write_batch`)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending[jti] = exp
        self._waiters.append(done)
        writer = self._writer
        if writer is None or writer.done() or writer.get_loop() is not loop:
            self._writer = loop.create_task(self._write_pending(), name="jwt-denylist-writer")
        await done

    async def _write_pending(self) -> None:
        """Write what is pending, batch after batch, until nothing is; each batch is one
        read-modify-write whatever its size. A failed batch fails its waiters (their revocations are
        retried by their callers); a cancelled writer fails every waiter."""
        while self._pending:
            batch, waiters = self._pending, self._waiters
            self._pending, self._waiters = {}, []
            try:
                await self._write_batch(batch)
            except asyncio.CancelledError:
                self._fail([*waiters, *self._waiters], "the operator is stopping")
                self._pending, self._waiters = {}, []
                raise
            except Exception as exc:  # noqa: BLE001 - ClusterError mostly; never leave a waiter hanging
                self._fail(waiters, type(exc).__name__)
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _fail(self, waiters: list[asyncio.Future[None]], why: str) -> None:
        message = f"cannot record the revoked jti in Secret {self._ns}/{self._deny_secret}: {why}"
        for waiter in waiters:
            if not waiter.done():  # a caller that gave up has cancelled its own
                waiter.set_exception(ProviderError(_NAME, message))

    async def _write_batch(self, batch: dict[str, float]) -> None:
        """Add ``batch`` to the stored list (expired entries pruned) in one guarded write. Entries that
        would take the list past ``deny_max_bytes`` are left out: logged (counts only) and counted;
        they stay listed through their TaskLeases and this replica's memory."""
        left_out = 0
        stored_count = 0

        def add(data: dict[str, bytes]) -> bool:
            nonlocal left_out, stored_count
            now = self._now().timestamp()
            listed = _deny_list(data.get(REVOKED_KEY, b"{}"))
            kept = {j: e for j, e in listed.items() if e >= now}
            size = len(_encode(kept))
            left_out = 0
            # the longest-lived first: when only some fit, those that would stay listed longest do
            for jti, exp in sorted(batch.items(), key=lambda item: -item[1]):
                if exp < now or kept.get(jti) == exp:
                    continue
                cost = len(json.dumps(jti)) + len(str(int(exp))) + 2  # "jti":exp plus a comma
                if size + cost > self.deny_max_bytes:
                    left_out += 1
                    continue
                kept[jti] = exp
                size += cost
            stored_count = len(kept)
            if kept == listed:
                return False
            data[REVOKED_KEY] = _encode(kept)
            return True

        await self._update_secret(self._deny_secret, add)
        if left_out:
            log.error(
                "jwt deny list full: revoked ids not stored durably (listed while their TaskLeases exist)",
                extra=fields(
                    secret=f"{self._ns}/{self._deny_secret}", not_stored=left_out, stored=stored_count,
                    max_bytes=self.deny_max_bytes,
                ),
            )
            if self.metrics is not None:
                self.metrics.jwt_denylist_overflow.inc(left_out)

    def _prune(self) -> None:
        now = self._now().timestamp()
        for jti, exp in list(self._revoked.items()):
            if exp < now:
                del self._revoked[jti]

    # --- Provider -----------------------------------------------------------------------------
    async def issue(self, request: IssueRequest) -> Issued:
        """A token for ``spec.jwt.audience`` (default: the source's name, ``<namespace>/<name>`` for a
        CredentialSource). A CredentialSource's audiences must start with ``<namespace>/``: the one
        signing key signs for every source, so nothing else keeps a tenant from minting a token a
        relying party of a ClusterCredentialSource or of another namespace would accept."""
        spec = request.source_spec.get("jwt") or {}
        refusal = tenant_refusal(_NAME, request.source_spec, request.credential, request.source_namespace)
        if refusal:
            raise ProviderError(
                _NAME, f"CredentialSource {request.source_namespace}/{request.credential}: {refusal}",
                retryable=False,
            )
        audience = jwt_audiences(request.source_spec, request.credential, request.source_namespace)
        if not all(isinstance(a, str) and a for a in audience):
            raise ProviderError(
                _NAME, f"jwt.audience of {request.credential!r} must be a list of non-empty strings",
                retryable=False,
            )
        extra = spec.get("claims") or {}
        if not isinstance(extra, dict):
            raise ProviderError(_NAME, f"jwt.claims of {request.credential!r} must be a map", retryable=False)
        clash = sorted(RESERVED_CLAIMS & set(extra))
        if clash:
            raise ProviderError(
                _NAME,
                f"jwt.claims of {request.credential!r} may not set reserved claims {', '.join(clash)}",
                retryable=False,
            )
        await self.ensure_keys()
        signer = self._keys[-1]
        now = self._now().replace(microsecond=0)
        ttl = min(float(request.ttl_seconds), self.max_token_ttl)
        exp = now + timedelta(seconds=ttl)
        # the broker's intent, recorded on the TaskLease before this call: a token whose issue was cut
        # short by an operator crash can still be deny-listed from its pending entry (revoke_pending)
        jti = request.intent or secrets.token_urlsafe(16)
        claims = {
            **extra,
            "iss": self.issuer,
            "sub": f"system:taskcreds:{request.namespace}:{request.pod}",
            "aud": audience if len(audience) != 1 else audience[0],
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(exp.timestamp()),
            "jti": jti,
            "task": request.task,
            "pod": request.pod,
            "namespace": request.namespace,
            "credential": request.credential,
            "source_kind": (
                KIND_CLUSTER_CREDENTIAL_SOURCE if request.source_namespace is None else KIND_CREDENTIAL_SOURCE
            ),
        }
        token = jwt.encode(
            claims, signer.private, algorithm="ES256", headers={"kid": signer.kid, "typ": "JWT"}
        )
        files = request.source_spec.get("files") or ["token"]
        return Issued(
            files={files[0]: token},
            lease_ref=f"jwt:{jti}:{int(exp.timestamp())}",
            issued_at=now,
            expires_at=exp,
            renewable=False,
            static=False,
        )

    async def renew(self, lease_ref: str, request: IssueRequest) -> Issued:
        """A fresh token. The old one is listed here at once and, through its TaskLease entry (the
        broker records it revoked, reason ``superseded``), on every replica until it expires; it is
        not written to the durable list, which grows with task ends only (module docstring)."""
        jti, exp = _parse_ref(lease_ref)
        issued = await self.issue(request)
        self._prune()
        if exp > self._now().timestamp():
            self._revoked[jti] = exp
        return issued

    async def revoke(self, lease_ref: str, source_spec: dict[str, Any], source_namespace: str | None) -> None:
        """Deny-list the token: done once the durable list has it (written in a batch with every
        revocation pending on this replica) or it did not fit there; a failed write is retryable."""
        jti, exp = _parse_ref(lease_ref)
        self._prune()
        if exp <= self._now().timestamp():
            return  # expired: nobody accepts it any more, nothing to keep
        self._revoked[jti] = exp
        await self._persist(jti, exp)

    async def revoke_pending(
        self,
        intent: str,
        expires_by: datetime,
        source_spec: dict[str, Any],
        source_namespace: str | None,
    ) -> None:
        """Deny-list the token an interrupted issue may have signed: its ``jti`` is the intent, and
        ``expires_by`` (the pending entry's expiresAt) is no earlier than its ``exp``."""
        if not intent or ":" in intent:
            raise ProviderError(_NAME, f"intent {intent!r} cannot be a jti", retryable=False)
        await self.revoke(f"jwt:{intent}:{int(expires_by.timestamp())}", source_spec, source_namespace)

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        """Check a token as a careful relying party would (signature, aud, exp, deny list)."""
        kid = jwt.get_unverified_header(token).get("kid")
        key = next((k for k in self._keys if k.kid == kid), None)
        if key is None:
            raise jwt.InvalidKeyError(f"unknown kid {kid!r}")
        claims: dict[str, Any] = jwt.decode(
            token, key.private.public_key(), algorithms=["ES256"], audience=audience, issuer=self.issuer
        )
        if self.is_revoked(str(claims.get("jti"))):
            raise jwt.InvalidTokenError(f"token {claims.get('jti')} was revoked")
        return claims


def _parse_ref(lease_ref: str) -> tuple[str, float]:
    """``jwt:<jti>:<exp>`` -> (jti, exp)."""
    parts = lease_ref.split(":")
    if len(parts) != 3 or parts[0] != "jwt" or not parts[1] or not parts[2].isdigit():
        raise ProviderError(_NAME, f"lease reference {lease_ref!r} is not jwt:<jti>:<exp>", retryable=False)
    return parts[1], float(parts[2])


def _encode(revoked: dict[str, float]) -> bytes:
    """{jti: exp} -> ``revoked.json``: one compact JSON object, ~40 bytes an entry."""
    return json.dumps({j: int(e) for j, e in sorted(revoked.items())}, separators=(",", ":")).encode()


def _deny_list(raw: bytes) -> dict[str, float]:
    """``revoked.json`` -> {jti: exp}; unreadable entries are skipped (the list is advisory)."""
    try:
        items = json.loads(raw)
    except ValueError:
        return {}
    pairs = items.items() if isinstance(items, dict) else []
    return {
        j: float(e)
        for j, e in pairs
        if isinstance(j, str) and isinstance(e, int | float) and not isinstance(e, bool)
    }
