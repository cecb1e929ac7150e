"""Who is calling: the client's X.509-SVID (workload) and its pod-bound service-account token (pod).

Both must agree. The SVID's SPIFFE ID is parsed with a template (default
``spiffe://{trust_domain}/ns/{namespace}/sa/{serviceaccount}``, env TASKCREDS_SPIFFE_ID_TEMPLATE)
into namespace and service account; the bearer token goes through a TokenReview with audience
``taskcreds``, which must name the same namespace and service account and a pod (name and uid).
That pod is the caller's pod: every request is about it and nothing else. The token never
appears in a message or a log record.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from taskcreds.operator.broker.errors import RateLimited, Unauthenticated, Unavailable
from taskcreds.operator.broker.ratelimit import TokenBuckets
from taskcreds.operator.cluster import Cluster, ClusterError, TokenIdentity

from taskcreds import names
from taskcreds.svid import SvidError, parse_spiffe_id

__all__ = ["Caller", "SpiffeIdTemplate", "ReviewCache", "ReviewGuard", "authenticate", "bearer_token"]

_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*"


@dataclass(frozen=True)
class Caller:
    """An authenticated sidecar: its SPIFFE ID and the pod its token is bound to."""

    spiffe_id: str
    namespace: str
    service_account: str
    pod: str
    pod_uid: str


class SpiffeIdTemplate:
    """Parse client SPIFFE IDs into (namespace, service account) for one trust domain."""

    def __init__(self, template: str, trust_domain: str) -> None:
        for placeholder in ("{namespace}", "{serviceaccount}"):
            if template.count(placeholder) != 1:
                raise ValueError(f"SPIFFE ID template {template!r} must contain {placeholder} exactly once")
        self.template = template
        self.trust_domain = trust_domain
        pattern = re.escape(template)
        pattern = pattern.replace(re.escape("{trust_domain}"), re.escape(trust_domain))
        pattern = pattern.replace(re.escape("{namespace}"), f"(?P<namespace>{_DNS_LABEL})")
        pattern = pattern.replace(re.escape("{serviceaccount}"), f"(?P<sa>{_DNS_SUBDOMAIN})")
        self._regex = re.compile(pattern)  # fullmatch: "$" would accept a trailing newline

    def parse(self, spiffe_id: str) -> tuple[str, str]:
        """(namespace, service account); Unauthenticated naming what was wrong."""
        try:
            trust_domain, _ = parse_spiffe_id(spiffe_id)
        except SvidError as exc:
            raise Unauthenticated(f"client SPIFFE ID refused: {exc}") from None
        if trust_domain != self.trust_domain:
            raise Unauthenticated(
                f"client SPIFFE ID {spiffe_id!r} is in trust domain {trust_domain!r}; "
                f"only {self.trust_domain!r} is accepted"
            )
        match = self._regex.fullmatch(spiffe_id)
        if match is None:
            raise Unauthenticated(
                f"client SPIFFE ID {spiffe_id!r} does not match the template {self.template!r}"
            )
        return match.group("namespace"), match.group("sa")


class ReviewCache:
    """Positive TokenReviews remembered briefly (keyed by the token's SHA-256, never the token).

    A sidecar calls every few seconds (status long-polls, renewals); one review per token per
    ``ttl`` keeps the API server's load flat. Safe because every request still reads the pod and
    checks its uid: a token whose pod is gone is refused by that check within the cache lifetime.
    """

    def __init__(
        self, ttl: float = 30.0, size: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl, self.size, self.clock = ttl, size, clock
        self._entries: OrderedDict[bytes, tuple[float, TokenIdentity]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(token: str, audience: str) -> bytes:
        return hashlib.sha256(f"{audience}\x00{token}".encode()).digest()

    def get(self, token: str, audience: str) -> TokenIdentity | None:
        key = self._key(token, audience)
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[0] < self.clock():
            del self._entries[key]
            return None
        return hit[1]

    def put(self, token: str, audience: str, identity: TokenIdentity) -> None:
        """Remember a review; expired entries go as new ones come (oldest first), so the cache follows
        the live pods instead of filling to ``size`` with ended ones (seen in the soak)."""
        now = self.clock()
        key = self._key(token, audience)
        self._entries[key] = (now + self.ttl, identity)
        self._entries.move_to_end(key)  # entries stay in expiry order (one ttl for all)
        while self._entries:
            expires, _ = next(iter(self._entries.values()))
            if expires >= now and len(self._entries) <= self.size:
                break
            self._entries.popitem(last=False)


#: what the failed-review cache remembers (no audience: never accepted)
_FAILED = TokenIdentity("", "", None, None, ())


class ReviewGuard:
    """What bearer tokens that fail their TokenReview may cost the API server, per client SPIFFE ID.

    A valid SVID with junk tokens must not turn into one TokenReview per request: each *failed* review
    takes a token from the SPIFFE ID's bucket, and a review is only started while the bucket has one
    (else 429 without a review). Good tokens take nothing, so many pods of one service account starting
    at once are never limited by it (review MEDIUM 5). Concurrent junk that passed the check together
    leaves the bucket in debt, paid back before the next review. A token that failed is remembered
    briefly (SHA-256 of it, never the token) and answered 401 without another review.
    """

    def __init__(self, buckets: TokenBuckets, failed: ReviewCache | None = None) -> None:
        self.buckets, self.failed = buckets, failed

    def known_bad(self, token: str) -> bool:
        return self.failed is not None and self.failed.get(token, names.TOKEN_AUDIENCE) is not None

    def before(self, spiffe_id: str) -> None:
        """RateLimited (429) when this SPIFFE ID's failed reviews used up its bucket; takes nothing."""
        wait = self.buckets.wait(spiffe_id)
        if wait is not None:
            raise RateLimited(
                f"too many bearer tokens from {spiffe_id} failed their TokenReview (at most "
                f"{self.buckets.burst}, then {self.buckets.rate:g} per second): send the pod's projected "
                f"service-account token with audience {names.TOKEN_AUDIENCE!r}, after Retry-After",
                wait,
            )

    def after(self, spiffe_id: str, token: str, ok: bool | None) -> None:
        """The review's outcome: False takes a token and remembers the token as failed; True and None
        (the review itself failed: API error, not the caller's fault) cost nothing."""
        if ok is False:
            self.buckets.charge(spiffe_id)
            if self.failed is not None:
                self.failed.put(token, names.TOKEN_AUDIENCE, _FAILED)


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header; Unauthenticated otherwise (never echoes it)."""
    if not authorization:
        raise Unauthenticated("missing Authorization: Bearer <projected service-account token>")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 16384:
        raise Unauthenticated("Authorization must be 'Bearer <projected service-account token>'")
    return token


async def authenticate(
    cluster: Cluster,
    template: SpiffeIdTemplate,
    peer_id: str | None,
    authorization: str | None,
    cache: ReviewCache | None = None,
    *,
    guard: ReviewGuard | None = None,
) -> Caller:
    """The caller, proven by SVID and TokenReview together; Unauthenticated (401) otherwise.

    With ``guard``, failed reviews are limited per SPIFFE ID (RateLimited, 429) and remembered.
    """
    if peer_id is None:
        raise Unauthenticated("no client X.509-SVID: present your SVID in the TLS handshake")
    namespace, service_account = template.parse(peer_id)
    token = bearer_token(authorization)
    identity = cache.get(token, names.TOKEN_AUDIENCE) if cache is not None else None
    if identity is None and guard is not None and guard.known_bad(token):
        identity = _FAILED
    elif identity is None:
        if guard is not None:
            guard.before(peer_id)
        try:
            identity = await cluster.review_token(token, names.TOKEN_AUDIENCE)
        except ClusterError as exc:
            if guard is not None:
                guard.after(peer_id, token, None)
            raise Unavailable(f"TokenReview failed: {type(exc).__name__}; retry later") from None
        accepted = identity is not None and names.TOKEN_AUDIENCE in identity.audiences
        if guard is not None:
            guard.after(peer_id, token, accepted)
        if identity is not None and cache is not None:
            cache.put(token, names.TOKEN_AUDIENCE, identity)
    if identity is None or names.TOKEN_AUDIENCE not in identity.audiences:
        raise Unauthenticated(f"the bearer token is not authenticated for audience {names.TOKEN_AUDIENCE!r}")
    if (identity.namespace, identity.service_account) != (namespace, service_account):
        raise Unauthenticated(
            f"SVID and token disagree: SVID names service account {namespace}/{service_account}, the token "
            f"{identity.namespace}/{identity.service_account}"
        )
    if not identity.pod_name or not identity.pod_uid:
        raise Unauthenticated(
            "the bearer token is not bound to a pod: use the pod's projected "
            f"service-account token with audience {names.TOKEN_AUDIENCE!r}"
        )
    return Caller(
        spiffe_id=peer_id,
        namespace=namespace,
        service_account=service_account,
        pod=identity.pod_name,
        pod_uid=identity.pod_uid,
    )
