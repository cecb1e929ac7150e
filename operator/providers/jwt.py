"""The ``jwt`` provider: short-lived ES256 JWTs signed by the broker itself (the embedded default).

Signing keys live in one Secret (``TASKCREDS_JWT_SECRET`` in the operator's namespace), created
when missing. The newest key signs; older keys stay in the JWKS (``/.well-known/jwks.json``) until
every token they signed has expired, then are pruned. Rotation is by age (``rotate_every``).

Revocation: a JWT cannot be recalled once handed out. ``revoke`` records the ``jti`` in a deny
list that relying parties can consult (:meth:`JwtProvider.is_revoked`, ``GET /v1/jwt/revoked``),
but a party that only checks the signature will accept the token until ``exp``: **the short TTL is
the real bound**. Keep ``maxTTL`` of jwt sources small.

The deny list is durable and shared: ``revoke`` writes ``{jti, exp}`` (never a token) under the
key ``revoked.json`` of the same Secret before it counts as done, pruned once ``exp`` has passed;
every replica merges it into its list (at most every 2 s, on ``/v1/jwt/revoked``). So a revoked JWT
stays listed until its ``exp`` on every replica, after an operator restart, and after its pod and
TaskLease are deleted. Every write to the Secret is a resourceVersion-guarded read-modify-write,
so replicas writing keys and deny-list entries at once lose nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
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

from taskcreds.names import KIND_CLUSTER_CREDENTIAL_SOURCE, KIND_CREDENTIAL_SOURCE

__all__ = ["JwtProvider", "RESERVED_CLAIMS", "SECRET_KEY", "REVOKED_KEY"]

RESERVED_CLAIMS: Final = frozenset(
    {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "task", "pod", "namespace", "credential", "source_kind"}
)
SECRET_KEY: Final = "keys.json"  # the signing keys: [{kid, createdAt, retiredAt, pem}]
REVOKED_KEY: Final = "revoked.json"  # the deny list: [{jti, exp}] — ids and times, never a token
_WRITE_ATTEMPTS: Final = 5
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
    ) -> None:
        self._cluster = cluster
        self._ns, self._secret = secret_namespace, secret_name
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
        await self._update_secret(lambda data: data.update({SECRET_KEY: payload}) or True)

    async def _update_secret(self, mutate: Callable[[dict[str, bytes]], bool]) -> dict[str, bytes]:
        """Read-modify-write the Secret's data, guarded by resourceVersion (retried on conflict), so
        the keys and the deny list, written by any replica, never overwrite each other. ``mutate``
        changes the decoded data in place and says whether anything changed (False: no write)."""
        last: Exception | None = None
        for _ in range(_WRITE_ATTEMPTS):
            secret = await self._cluster.get_secret(self._ns, self._secret)
            data = {
                k: base64.b64decode(v) for k, v in ((secret or {}).get("data") or {}).items()
            }
            if not mutate(data):
                return data
            labels = {"app.kubernetes.io/managed-by": "taskcreds"}
            try:
                if secret is None:
                    await self._cluster.apply_secret(self._ns, self._secret, data, labels, create_only=True)
                else:
                    rv = (secret.get("metadata") or {}).get("resourceVersion")
                    await self._cluster.apply_secret(
                        self._ns, self._secret, data, labels, resource_version=rv
                    )
                return data
            except Conflict as exc:  # AlreadyExists included: another replica wrote first
                last = exc
        raise ClusterError(f"Secret {self._ns}/{self._secret}: {_WRITE_ATTEMPTS} conflicting writes ({last})")

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
            secret = await self._cluster.get_secret(self._ns, self._secret)
        except Exception:  # noqa: BLE001 - as above: answer from memory
            secret = None
        raw = ((secret or {}).get("data") or {}).get(REVOKED_KEY)
        if raw:
            self._revoked.update(_deny_list(base64.b64decode(raw)))
        self._prune()

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
        jti = secrets.token_urlsafe(16)
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
        """A fresh token; the old one goes on the deny list."""
        issued = await self.issue(request)
        await self.revoke(lease_ref, request.source_spec, request.source_namespace)
        return issued

    async def revoke(self, lease_ref: str, source_spec: dict[str, Any], source_namespace: str | None) -> None:
        parts = lease_ref.split(":")
        if len(parts) != 3 or parts[0] != "jwt" or not parts[2].isdigit():
            raise ProviderError(
                _NAME, f"lease reference {lease_ref!r} is not jwt:<jti>:<exp>", retryable=False
            )
        self._prune()
        jti, exp = parts[1], float(parts[2])
        self._revoked[jti] = exp
        if exp <= self._now().timestamp():
            return  # expired: nobody accepts it any more, nothing to keep
        now = self._now().timestamp()

        def add(data: dict[str, bytes]) -> bool:
            listed = _deny_list(data.get(REVOKED_KEY, b"[]"))
            kept = {j: e for j, e in listed.items() if e >= now}
            if listed.get(jti) == exp and len(kept) == len(listed):
                return False
            kept[jti] = exp
            data[REVOKED_KEY] = json.dumps(
                [{"jti": j, "exp": int(e)} for j, e in sorted(kept.items())]
            ).encode()
            return True

        try:
            await self._update_secret(add)
        except ClusterError as exc:  # not durable yet: not revoked yet (retried by the caller)
            raise ProviderError(
                _NAME,
                f"cannot record the revoked jti in Secret {self._ns}/{self._secret}: {type(exc).__name__}",
            ) from None

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


def _deny_list(raw: bytes) -> dict[str, float]:
    """``revoked.json`` -> {jti: exp}; unreadable entries are skipped (the list is advisory)."""
    try:
        items = json.loads(raw)
    except ValueError:
        return {}
    out: dict[str, float] = {}
    for item in items if isinstance(items, list) else []:
        jti, exp = (item.get("jti"), item.get("exp")) if isinstance(item, dict) else (None, None)
        if isinstance(jti, str) and isinstance(exp, int | float):
            out[jti] = float(exp)
    return out
