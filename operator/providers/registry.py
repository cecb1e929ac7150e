"""Build the providers the broker serves, by name (the values of ``spec.provider``)."""

from __future__ import annotations

import importlib
import logging

from taskcreds.operator.broker.settings import BrokerSettings
from taskcreds.operator.cluster import Cluster
from taskcreds.operator.providers.base import Provider
from taskcreds.operator.providers.jwt import JwtProvider
from taskcreds.operator.providers.kubernetes_token import KubernetesTokenProvider
from taskcreds.operator.providers.secret import SecretProvider

from taskcreds.logs import fields
from taskcreds.metrics import OperatorMetrics

__all__ = ["make_providers"]

log = logging.getLogger("taskcreds.providers")

#: optional providers: name -> "module:Class", each constructed as
#: Class(cluster, operator_namespace=settings.namespace): a ClusterCredentialSource's secretRef
#: without a namespace names a Secret of the operator's own namespace, whatever it is called
_OPTIONAL = {
    "vault": "taskcreds.operator.providers.vault:VaultProvider",
    "github-app": "taskcreds.operator.providers.github_app:GitHubAppProvider",
}


def make_providers(
    cluster: Cluster, settings: BrokerSettings, metrics: OperatorMetrics | None = None
) -> dict[str, Provider]:
    """jwt, secret and kubernetes-token always; vault and github-app when their modules import.
    ``metrics``: where the jwt provider counts ids its full deny list could not take."""
    providers: dict[str, Provider] = {
        "jwt": JwtProvider(
            cluster,
            secret_namespace=settings.namespace,
            secret_name=settings.jwt_secret,
            issuer=settings.jwt_issuer,
            metrics=metrics,
        ),
        "secret": SecretProvider(cluster, operator_namespace=settings.namespace),
        "kubernetes-token": KubernetesTokenProvider(cluster),
    }
    for name, target in _OPTIONAL.items():
        module_name, cls_name = target.split(":")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError) as exc:
            log.warning("provider not available", extra=fields(provider=name, error=str(exc)))
            continue
        providers[name] = cls(cluster, operator_namespace=settings.namespace)
    return providers
