"""Every Prometheus metric taskcreds exports (CONTRACT.md section 6), in one place.

Each process builds its own registry with one register function, so tests can make a
fresh set and the operator and sidecar never share state. Label values are names and
reasons, never credential values.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["OperatorMetrics", "SidecarMetrics", "register_operator", "register_sidecar", "PREFIX"]

PREFIX = "taskcreds_"
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_PROXY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class OperatorMetrics:
    """Metrics of ``taskcreds-operator`` and ``taskcreds webhook``."""

    registry: CollectorRegistry
    admission_requests: Counter  # labels: result = injected|skipped|denied|error
    admission_duration: Histogram
    credentials_issued: Counter  # labels: provider
    credentials_revoked: Counter  # labels: provider, reason
    issue_duration: Histogram  # labels: provider
    revocation_lag: Histogram
    revocation_failures: Counter  # labels: provider
    leases_active: Gauge  # labels: provider
    policy_denials: Counter  # labels: reason
    webhook_certificate_expiry: Gauge
    broker_requests: Counter  # labels: endpoint, code
    jwt_denylist_overflow: Counter  # revoked jwt ids the full durable deny list could not take
    # labels: reason = malformed|too_large|timeout|disconnected|internal; /mutate requests that never
    # became an AdmissionReview, so admission_requests_total{result="error"} means real failures only
    webhook_unanswered_requests: Counter


def register_operator(registry: CollectorRegistry | None = None) -> OperatorMetrics:
    """Create the operator's metrics in ``registry`` (a fresh one when omitted)."""
    reg = registry if registry is not None else CollectorRegistry()
    return OperatorMetrics(
        registry=reg,
        admission_requests=Counter(
            PREFIX + "admission_requests_total",
            "AdmissionReviews answered, by result.",
            ["result"],
            registry=reg,
        ),
        admission_duration=Histogram(
            PREFIX + "admission_duration_seconds",
            "Time to answer one AdmissionReview.",
            buckets=_FAST,
            registry=reg,
        ),
        credentials_issued=Counter(
            PREFIX + "credentials_issued_total",
            "Credentials issued (and re-issued on refresh).",
            ["provider"],
            registry=reg,
        ),
        credentials_revoked=Counter(
            PREFIX + "credentials_revoked_total",
            "Credentials revoked at their source.",
            ["provider", "reason"],
            registry=reg,
        ),
        issue_duration=Histogram(
            PREFIX + "issue_duration_seconds",
            "Time a provider took to issue one credential.",
            ["provider"],
            buckets=_SLOW,
            registry=reg,
        ),
        revocation_lag=Histogram(
            PREFIX + "revocation_lag_seconds",
            "From a terminal task status being seen to every lease revoked at its source.",
            buckets=_SLOW,
            registry=reg,
        ),
        revocation_failures=Counter(
            PREFIX + "revocation_failures_total",
            "Revocation attempts that failed (retried).",
            ["provider"],
            registry=reg,
        ),
        leases_active=Gauge(
            PREFIX + "leases_active",
            "Credentials issued and not yet revoked or expired.",
            ["provider"],
            registry=reg,
        ),
        policy_denials=Counter(
            PREFIX + "policy_denials_total",
            "Broker requests refused by policy, by reason.",
            ["reason"],
            registry=reg,
        ),
        webhook_certificate_expiry=Gauge(
            PREFIX + "webhook_certificate_expiry_timestamp_seconds",
            "Unix time at which the webhook's serving certificate expires.",
            registry=reg,
        ),
        broker_requests=Counter(
            PREFIX + "broker_requests_total",
            "Broker HTTP requests, by endpoint and status code.",
            ["endpoint", "code"],
            registry=reg,
        ),
        jwt_denylist_overflow=Counter(
            PREFIX + "jwt_denylist_overflow_total",
            "Revoked jwt ids the full durable deny list could not take (listed while TaskLeases exist).",
            registry=reg,
        ),
        webhook_unanswered_requests=Counter(
            PREFIX + "webhook_unanswered_requests_total",
            "Webhook requests that carried no AdmissionReview to answer (bad body, too large, too slow, "
            "client hung up), by reason; not in admission_requests_total.",
            ["reason"],
            registry=reg,
        ),
    )


@dataclass(frozen=True)
class SidecarMetrics:
    """Metrics of ``taskcreds-sidecar``."""

    registry: CollectorRegistry
    credential_expiry: Gauge  # labels: credential
    refresh: Counter  # labels: credential, result = success|failure|write_failure (tmpfs write failed)
    svid_expiry: Gauge
    teardown: Counter  # labels: reason
    ready: Gauge
    #: 1 once this pod's task has ended: set at teardown and by a sidecar restarted after it (the end
    #: marker is in the volume, its teardown counter starts at 0), so alerts can tell "ended" from
    #: "not ready"; never removed
    task_ended: Gauge
    redactions: Counter  # labels: credential (or token kind)
    #: egress proxy (docs/proxy.md). ``host`` is the route pattern that matched, empty for unmatched
    #: hosts, so the label's values are bounded by the pod's routes
    proxy_requests: Counter  # labels: credential, host, result
    proxy_duration: Histogram  # labels: credential


def register_sidecar(registry: CollectorRegistry | None = None) -> SidecarMetrics:
    """Create the sidecar's metrics in ``registry`` (a fresh one when omitted)."""
    reg = registry if registry is not None else CollectorRegistry()
    return SidecarMetrics(
        registry=reg,
        credential_expiry=Gauge(
            PREFIX + "sidecar_credential_expiry_timestamp_seconds",
            "Unix time at which the credential on disk expires.",
            ["credential"],
            registry=reg,
        ),
        refresh=Counter(
            PREFIX + "sidecar_refresh_total",
            "Credential fetches and refreshes, by result.",
            ["credential", "result"],
            registry=reg,
        ),
        svid_expiry=Gauge(
            PREFIX + "sidecar_svid_expiry_timestamp_seconds",
            "Unix time at which the sidecar's X.509-SVID expires.",
            registry=reg,
        ),
        teardown=Counter(
            PREFIX + "sidecar_teardown_total",
            "Teardowns of the credential directory, by reason.",
            ["reason"],
            registry=reg,
        ),
        ready=Gauge(PREFIX + "sidecar_ready", "1 when every requested credential is on disk.", registry=reg),
        task_ended=Gauge(
            PREFIX + "sidecar_task_ended",
            "1 once this pod's task has ended (teardown done, also after a sidecar restart); 0 before.",
            registry=reg,
        ),
        redactions=Counter(
            PREFIX + "sidecar_redactions_total",
            "Values replaced by /v1/redact.",
            ["credential"],
            registry=reg,
        ),
        proxy_requests=Counter(
            PREFIX + "sidecar_proxy_requests_total",
            "Requests and tunnels through the egress proxy, by credential, matched host pattern and "
            "result (forwarded|tunneled|denied|ended|no_credential|plain_http_refused|method_refused|"
            "upstream_cert_error|upstream_error|upstream_timeout|bad_request|over_limit).",
            ["credential", "host", "result"],
            registry=reg,
        ),
        proxy_duration=Histogram(
            PREFIX + "sidecar_proxy_request_duration_seconds",
            "From a request's head read to its response's end, through the proxy.",
            ["credential"],
            buckets=_PROXY,
            registry=reg,
        ),
    )
