"""Service-account tokens: TokenRequest issues them, TokenReview checks them.

Tokens are real JWTs (ES256) signed by a key the stand-in makes at start, with the claims a
kube-apiserver writes (``iss``, ``sub``, ``aud``, ``exp``, ``kubernetes.io`` with namespace,
service account and the bound Pod or Secret). A review fails, as on a real cluster, when the token
is unknown or badly signed, expired, meant for another audience, or when its service account or
bound object was deleted or replaced (uid differs): deleting a token's bound Secret revokes it.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["TokenAuthority", "IssuedToken", "ISSUER", "API_AUDIENCES"]

ISSUER = "https://kubernetes.default.svc.cluster.local"
#: what the API server accepts when a TokenReview names no audiences (--api-audiences defaults to the issuer)
API_AUDIENCES = (ISSUER,)


@dataclass(frozen=True)
class IssuedToken:
    """What was issued, without the token itself (safe to show in test output)."""

    jti: str
    namespace: str
    service_account: str
    audiences: tuple[str, ...]
    expires_at: int
    pod_name: str | None
    pod_uid: str | None
    secret_name: str | None = None
    secret_uid: str | None = None


class TokenAuthority:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._key = ec.generate_private_key(ec.SECP256R1())
        pub = self._key.public_key().public_numbers()
        raw = pub.x.to_bytes(32, "big") + pub.y.to_bytes(32, "big")
        self.kid = hashlib.sha256(raw).hexdigest()[:16]
        self._jwk = {
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": self.kid,
            "x": _b64(pub.x.to_bytes(32, "big")),
            "y": _b64(pub.y.to_bytes(32, "big")),
        }
        self.issued: list[IssuedToken] = []

    def issue(
        self,
        *,
        namespace: str,
        service_account: str,
        service_account_uid: str,
        audiences: list[str],
        expiration_seconds: int,
        pod: tuple[str, str] | None = None,
        secret: tuple[str, str] | None = None,
    ) -> tuple[str, int]:
        """(token, expiry as unix seconds). ``pod`` / ``secret``: the bound object's (name, uid)."""
        now = int(self._clock())
        exp = now + int(expiration_seconds)
        jti = str(uuid.uuid4())
        k8s: dict[str, Any] = {
            "namespace": namespace,
            "serviceaccount": {"name": service_account, "uid": service_account_uid},
        }
        if pod:
            k8s["pod"] = {"name": pod[0], "uid": pod[1]}
        if secret:
            k8s["secret"] = {"name": secret[0], "uid": secret[1]}
        claims = {
            "iss": ISSUER,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "aud": list(audiences),
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": jti,
            "kubernetes.io": k8s,
        }
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid})
        self.issued.append(
            IssuedToken(
                jti,
                namespace,
                service_account,
                tuple(audiences),
                exp,
                pod[0] if pod else None,
                pod[1] if pod else None,
                secret[0] if secret else None,
                secret[1] if secret else None,
            )
        )
        return token, exp

    def claims(self, token: str) -> dict[str, Any] | None:
        """Verified claims (signature and issuer only; expiry and audience are the caller's)."""
        try:
            return jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["ES256"],
                issuer=ISSUER,
                options={"verify_aud": False, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            return None

    def review(
        self,
        token: str,
        audiences: list[str] | None,
        lookup: Callable[[str, str, str], dict[str, Any] | None],
    ) -> dict[str, Any]:
        """TokenReview ``status``. ``lookup(kind, namespace, name)`` reads ServiceAccounts, Secrets
        and Pods."""
        wanted = list(audiences or API_AUDIENCES)
        claims = self.claims(token)
        if claims is None:
            return _unauthenticated("invalid bearer token, token lookup failed", wanted)
        if claims["exp"] <= self._clock():
            return _unauthenticated("invalid bearer token, service account token has expired", wanted)
        aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        matched = [a for a in wanted if a in aud]
        if not matched:
            return _unauthenticated(
                "invalid bearer token, token audiences " + str(aud) + " is invalid for the "
                "target audiences " + str(wanted),
                wanted,
            )
        k8s = claims["kubernetes.io"]
        ns, sa = k8s["namespace"], k8s["serviceaccount"]
        sa_obj = lookup("ServiceAccount", ns, sa["name"])
        if sa_obj is None or sa_obj["metadata"]["uid"] != sa["uid"]:
            return _unauthenticated(
                f'invalid bearer token, serviceaccounts "{sa["name"]}" not found (or was recreated)', wanted
            )
        if "secret" in k8s:  # as the API's claims validator: checked before the pod, no extra of its own
            bound = lookup("Secret", ns, k8s["secret"]["name"])
            if bound is None:
                return _unauthenticated(
                    "invalid bearer token, service account token has been invalidated", wanted
                )
            if bound["metadata"]["uid"] != k8s["secret"]["uid"]:
                return _unauthenticated(
                    f"invalid bearer token, secret UID ({bound['metadata']['uid']}) does not match "
                    f"service account secret ref claim ({k8s['secret']['uid']})",
                    wanted,
                )
            deleting = bound["metadata"].get("deletionTimestamp")
            if deleting and _parse_time(deleting) <= self._clock():
                return _unauthenticated(
                    "invalid bearer token, service account token has been invalidated", wanted
                )
        extra: dict[str, list[str]] = {"authentication.kubernetes.io/credential-id": [f"JTI={claims['jti']}"]}
        if "pod" in k8s:
            pod = lookup("Pod", ns, k8s["pod"]["name"])
            if pod is None:
                return _unauthenticated(
                    f'invalid bearer token, pods "{k8s["pod"]["name"]}" not found', wanted
                )
            if pod["metadata"]["uid"] != k8s["pod"]["uid"]:
                return _unauthenticated(
                    f'invalid bearer token, pod "{k8s["pod"]["name"]}" uid '
                    f"({pod['metadata']['uid']}) does not match the claim ({k8s['pod']['uid']})",
                    wanted,
                )
            deleting = pod["metadata"].get("deletionTimestamp")
            if deleting and _parse_time(deleting) <= self._clock():
                return _unauthenticated(
                    f'invalid bearer token, pod "{k8s["pod"]["name"]}" is being deleted', wanted
                )
            extra["authentication.kubernetes.io/pod-name"] = [k8s["pod"]["name"]]
            extra["authentication.kubernetes.io/pod-uid"] = [k8s["pod"]["uid"]]
        return {
            "authenticated": True,
            "audiences": matched,
            "user": {
                "username": claims["sub"],
                "uid": sa["uid"],
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
                "extra": extra,
            },
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self._jwk]}

    def openid_configuration(self) -> dict[str, Any]:
        return {
            "issuer": ISSUER,
            "jwks_uri": f"{ISSUER}/openid/v1/jwks",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        }


def _unauthenticated(error: str, audiences: list[str]) -> dict[str, Any]:
    return {"authenticated": False, "error": error, "user": {}, "audiences": audiences}


def _parse_time(text: str) -> float:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
