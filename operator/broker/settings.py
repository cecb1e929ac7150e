"""The broker's settings: one frozen dataclass, built from the operator's settings or by tests."""

from __future__ import annotations

from dataclasses import dataclass

from taskcreds.operator.settings import OperatorSettings

__all__ = ["BrokerSettings", "DEFAULT_SPIFFE_ID_TEMPLATE", "MAX_BODY_BYTES"]

DEFAULT_SPIFFE_ID_TEMPLATE = "spiffe://{trust_domain}/ns/{namespace}/sa/{serviceaccount}"
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class BrokerSettings:
    namespace: str = "taskcreds-system"
    """The operator's namespace: Secrets of ClusterCredentialSources and the JWT key Secret live here."""
    trust_domain: str | None = None
    """Accepted client trust domain; None: the broker's own SVID's trust domain."""
    spiffe_id_template: str = DEFAULT_SPIFFE_ID_TEMPLATE
    """How a client SPIFFE ID names its pod's namespace and service account."""
    jwt_secret: str = "taskcreds-jwt-keys"
    jwt_issuer: str = "https://taskcreds.taskcreds-system.svc"
    max_body_bytes: int = MAX_BODY_BYTES
    rate_per_second: float = 5.0
    """Sustained requests per second per pod (token bucket); status long-polls count too."""
    rate_burst: int = 20
    default_wait: float = 30.0
    max_wait: float = 60.0
    review_cache_seconds: float = 30.0
    """How long a positive TokenReview is reused for the same token (0: review every request)."""
    failed_review_rate_per_second: float = 1.0
    """Failed TokenReviews per second sustained per client SPIFFE ID: a review starts only while the
    reviews in flight could all fail within the bucket (at most ``failed_review_burst`` at once, others
    wait their turn) and only a failed one spends it, so junk bearer tokens cost the API server at most
    ``failed_review_burst`` reviews and then this many per second (then 429); good ones cost nothing."""
    failed_review_burst: int = 30
    failed_review_cache_seconds: float = 10.0
    """How long a failed TokenReview is remembered for the same token (0: never): a repeated junk
    token is answered 401 without another review. Keyed by the token's SHA-256, never the token."""
    max_live_leases: int = 8
    """Live (not revoked, not superseded, not expired) leases of one credential a pod's task may hold;
    an issue beyond it answers 429 until the oldest expires. Renewals are never refused by it. Keeps
    the TaskLease far below etcd's object size limit and a source's quota out of one pod's reach."""
    body_timeout: float = 10.0
    """Seconds a client has to send its request body (a stalled upload gets 400)."""
    record_attempts: int = 3
    """Tries to record a lease on its TaskLease (on resourceVersion conflicts) before giving up."""
    record_timeout: float = 15.0
    """Seconds one TaskLease write of an issue/renew may take (then: revoke again, answer 503)."""
    undo_timeout: float = 10.0
    """Seconds revoking again what a failed TaskLease write left issued may take; what is not revoked
    by then is recorded (one more write, within ``record_timeout``) so the task end revokes it."""

    @property
    def drain_timeout(self) -> float:
        """How long a stopping broker waits for issue/renew sequences still running: the tail of one
        whose credential exists (record, undo, record the rest), so none is cut off by the stop."""
        return self.record_timeout + self.undo_timeout + self.record_timeout

    @classmethod
    def from_operator(cls, settings: OperatorSettings, *, trust_domain: str | None = None) -> BrokerSettings:
        """The broker part of the operator's settings (read from its environment once, there)."""
        return cls(
            namespace=settings.namespace,
            trust_domain=trust_domain,
            spiffe_id_template=settings.spiffe_id_template,
            jwt_secret=settings.jwt_secret,
            jwt_issuer=settings.jwt_issuer,
        )
