"""Who is calling: the client's X.509-SVID (workload) and its pod-bound service-account token (pod).

Both must agree. The SVID's SPIFFE ID is parsed with a template (default
``spiffe://{trust_domain}/ns/{namespace}/sa/{serviceaccount}``, env TASKCREDS_SPIFFE_ID_TEMPLATE)
into namespace and service account; the bearer token goes through a TokenReview with audience
``taskcreds``, which must name the same namespace and service account and a pod (name and uid).
That pod is the caller's pod: every request is about it and nothing else. The token never
appears in a message or a log record.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import OrderedDict, deque
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


class _Gate:
    """One SPIFFE ID's TokenReviews in flight and the requests waiting to start one (oldest first)."""

    __slots__ = ("inflight", "waiters")

    def __init__(self) -> None:
        self.inflight = 0
        self.waiters: deque[asyncio.Future[None]] = deque()


class ReviewGuard:
    """What bearer tokens that fail their TokenReview may cost the API server, per client SPIFFE ID.

    A valid SVID with junk tokens must not turn into one TokenReview per request. Each SPIFFE ID has a
    bucket of failed reviews (``burst``, refilling at ``rate``), and a review starts only while the
    reviews already in flight could all fail without overdrawing it (``tokens - in flight >= 1``): at
    most ``burst`` reviews of one ID run at once, however many requests arrive together (review of
    e4bd9ff: 1000 concurrent junk tokens started 1000 reviews). The others wait their turn, so many
    pods of one service account starting at once are reviewed a few at a time and never refused:
    only a *failed* review takes a token, and 429 comes only once failures emptied the bucket
    (review MEDIUM 5). A token that failed is remembered briefly (SHA-256 of it, never the token) and
    answered 401 without another review.
    """

    def __init__(self, buckets: TokenBuckets, failed: ReviewCache | None = None) -> None:
        self.buckets, self.failed = buckets, failed
        self._gates: dict[str, _Gate] = {}

    def known_bad(self, token: str) -> bool:
        return self.failed is not None and self.failed.get(token, names.TOKEN_AUDIENCE) is not None

    def in_flight(self, spiffe_id: str) -> int:
        """TokenReviews of ``spiffe_id`` running now."""
        gate = self._gates.get(spiffe_id)
        return 0 if gate is None else gate.inflight

    def _refused(self, spiffe_id: str) -> RateLimited:
        return RateLimited(
            f"too many bearer tokens from {spiffe_id} failed their TokenReview (at most "
            f"{self.buckets.burst}, then {self.buckets.rate:g} per second): send the pod's projected "
            f"service-account token with audience {names.TOKEN_AUDIENCE!r}, after Retry-After",
            self.buckets.wait(spiffe_id) or 1.0 / self.buckets.rate,
        )

    async def begin(self, spiffe_id: str) -> None:
        """Wait until a review of this SPIFFE ID may start, and count it in flight (pair with
        :meth:`end`); RateLimited (429) once its failed reviews used up the bucket."""
        gate = self._gates.setdefault(spiffe_id, _Gate())
        woken = False
        try:
            while True:
                tokens = self.buckets.level(spiffe_id)
                if tokens < 1.0:
                    raise self._refused(spiffe_id)
                if tokens - gate.inflight >= 1.0:
                    gate.inflight += 1
                    return
                # tokens >= 1 > tokens - inflight: a review is in flight, and its end wakes the first
                # waiter; one woken too early keeps its place at the front
                waiter = asyncio.get_running_loop().create_future()
                if woken:
                    gate.waiters.appendleft(waiter)
                else:
                    gate.waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if not waiter.done():
                        gate.waiters.remove(waiter)
                woken = True
        finally:
            # whatever this request did (started, refused, cancelled), the next waiter looks again:
            # a started review may leave room, a refusal holds for every waiter
            self._wake(spiffe_id, gate)

    def end(self, spiffe_id: str, token: str, ok: bool | None) -> None:
        """The outcome of a review :meth:`begin` let start: False takes a token and remembers the token
        as failed; True and None (the review itself failed: API error, not the caller's fault) cost
        nothing. Either way its place is free for the next waiter."""
        if ok is False:
            self.buckets.charge(spiffe_id)
            if self.failed is not None:
                self.failed.put(token, names.TOKEN_AUDIENCE, _FAILED)
        gate = self._gates.get(spiffe_id)
        if gate is not None:
            gate.inflight = max(0, gate.inflight - 1)
            self._wake(spiffe_id, gate)

    def _wake(self, spiffe_id: str, gate: _Gate) -> None:
        while gate.waiters:
            waiter = gate.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        if gate.inflight == 0 and self._gates.get(spiffe_id) is gate:
            del self._gates[spiffe_id]  # the table follows the IDs with reviews in flight


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
            await guard.begin(peer_id)
        accepted: bool | None = None  # not known: the review failed or was cancelled, costs nothing
        try:
            identity = await cluster.review_token(token, names.TOKEN_AUDIENCE)
            accepted = identity is not None and names.TOKEN_AUDIENCE in identity.audiences
        except ClusterError as exc:
            raise Unavailable(f"TokenReview failed: {type(exc).__name__}; retry later") from None
        finally:
            if guard is not None:
                guard.end(peer_id, token, accepted)
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
