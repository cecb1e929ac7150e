"""The operator process's settings, read from its environment in exactly one place.

The Helm chart sets these variables (names in :mod:`taskcreds.names`); every one has a default
that works for a chart install named ``taskcreds`` in ``taskcreds-system``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from taskcreds import names

__all__ = ["OperatorSettings", "SettingsError", "parse_listen", "ENV_DRAIN_SECONDS", "DRAIN_SECONDS"]

ENV_DRAIN_SECONDS = names.ENV_DRAIN_SECONDS
"""Seconds a stopping operator keeps serving admission and the broker (re-exported from names)."""
DRAIN_SECONDS = 5.0
"""The process's drain when the variable is unset: time for kube-apiserver and kube-proxy to drop this
pod's endpoints after it turned terminating (usually 1-2 s; more on a loaded control plane)."""
MAX_DRAIN_SECONDS = 120.0


class SettingsError(ValueError):
    """An environment variable with a value the operator cannot use; names it and what is accepted."""


def parse_listen(value: str, *, variable: str = "listen address") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); raises SettingsError naming the value."""
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise SettingsError(f"{variable}: {value!r} is not HOST:PORT (for example 0.0.0.0:8443)")
    return host, int(port_text)


@dataclass(frozen=True)
class OperatorSettings:
    namespace: str = "taskcreds-system"
    """Namespace the operator runs in: Secrets of cluster-scoped sources and its own Secrets live here."""
    config_file: str | None = None
    """Injection config YAML (the chart's ConfigMap); None: built-in defaults."""
    webhook_listen: tuple[str, int] = ("0.0.0.0", 8443)
    broker_listen: tuple[str, int] = ("0.0.0.0", 8444)
    metrics_listen: tuple[str, int] = ("0.0.0.0", 8080)
    webhook_configuration: str = "taskcreds"
    """MutatingWebhookConfiguration whose caBundle the operator keeps current (self-managed certs)."""
    webhook_service: str = "taskcreds-webhook"
    webhook_secret: str = "taskcreds-webhook-tls"
    webhook_cert_dir: str | None = None
    """Set when cert-manager (or anything else) provides tls.crt/tls.key: the operator only reloads them."""
    jwt_secret: str = "taskcreds-jwt-keys"
    jwt_issuer: str = "https://taskcreds.taskcreds-system.svc"
    spiffe_id_template: str = "spiffe://{trust_domain}/ns/{namespace}/sa/{serviceaccount}"
    log_level: str = "INFO"
    drain_seconds: float = 0.0
    """After SIGTERM: /readyz says 503 at once, admission and the broker go on this long, then stop.
    0 here (tests, embedding); the process reads :data:`ENV_DRAIN_SECONDS`, default :data:`DRAIN_SECONDS`."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OperatorSettings:
        """Read every setting; unknown values fail with the variable's name."""
        d = cls()
        get = environ.get
        level = get(names.ENV_LOG_LEVEL, d.log_level).upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"{names.ENV_LOG_LEVEL}: {level!r} is not one of DEBUG, INFO, WARNING, ERROR")
        template = get(names.ENV_SPIFFE_ID_TEMPLATE, d.spiffe_id_template)
        for field in ("{namespace}", "{serviceaccount}"):
            if field not in template:
                raise SettingsError(f"{names.ENV_SPIFFE_ID_TEMPLATE}: {template!r} must contain {field}")
        drain_text = get(ENV_DRAIN_SECONDS, "").strip()
        try:
            drain = float(drain_text) if drain_text else DRAIN_SECONDS
        except ValueError:
            drain = -1.0
        if not 0 <= drain <= MAX_DRAIN_SECONDS:  # also NaN
            raise SettingsError(
                f"{ENV_DRAIN_SECONDS}: {drain_text!r} is not a number of seconds"
                f" from 0 to {MAX_DRAIN_SECONDS:g}"
            )
        return cls(
            namespace=get(names.ENV_OPERATOR_NAMESPACE, d.namespace),
            config_file=get(names.ENV_CONFIG_FILE) or None,
            webhook_listen=parse_listen(
                get(names.ENV_WEBHOOK_LISTEN, "0.0.0.0:8443"), variable=names.ENV_WEBHOOK_LISTEN
            ),
            broker_listen=parse_listen(
                get(names.ENV_BROKER_LISTEN, "0.0.0.0:8444"), variable=names.ENV_BROKER_LISTEN
            ),
            metrics_listen=parse_listen(
                get(names.ENV_METRICS_LISTEN, "0.0.0.0:8080"), variable=names.ENV_METRICS_LISTEN
            ),
            webhook_configuration=get(names.ENV_WEBHOOK_CONFIGURATION, d.webhook_configuration),
            webhook_service=get(names.ENV_WEBHOOK_SERVICE, d.webhook_service),
            webhook_secret=get(names.ENV_WEBHOOK_SECRET, d.webhook_secret),
            webhook_cert_dir=get(names.ENV_WEBHOOK_CERT_DIR) or None,
            jwt_secret=get(names.ENV_JWT_SECRET, d.jwt_secret),
            jwt_issuer=get(names.ENV_JWT_ISSUER, d.jwt_issuer),
            spiffe_id_template=template,
            log_level=level,
            drain_seconds=drain,
        )
