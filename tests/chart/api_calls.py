"""Every Kubernetes API call taskcreds-operator makes, as one table — the source of its RBAC.

tests/chart/test_rbac.py asserts the chart's ClusterRole and Roles grant exactly these calls (no
more, no less) for every values set. The lead cross-checks the table against the API stand-in's
request log, so a new call in the code means a new row here first, then a rule in the chart.

Columns:
- ``verb``, ``group`` (``""`` is core), ``resource``, ``subresource``
- ``scope``: ``cluster`` (any namespace or cluster-scoped: ClusterRole), ``release`` (the operator's
  own namespace: Role), ``secret-namespaces`` (any namespace, narrowed to a Role per namespace by
  ``rbac.secretNamespaces``), ``token-namespaces`` (any namespace, narrowed to a Role per namespace
  by ``rbac.tokenRequestNamespaces``)
- ``names``: symbolic resourceNames the rule is limited to (resolved from the rendered chart)
- ``when``: the values under which the call exists (``always``, ``self-managed-certs`` = cert-manager
  off, ``token-request`` = ``rbac.tokenRequest``)
- ``source``: who makes it
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ApiCall", "API_CALLS", "Scope", "When"]

Scope = Literal["cluster", "release", "secret-namespaces", "token-namespaces"]
When = Literal["always", "self-managed-certs", "token-request"]


@dataclass(frozen=True)
class ApiCall:
    verb: str
    group: str
    resource: str
    subresource: str | None
    scope: Scope
    source: str
    names: tuple[str, ...] = ()
    when: When = "always"


_TASKCREDS = "taskcreds.io"

API_CALLS: tuple[ApiCall, ...] = (
    # --- pods: Cluster.get_pod (broker) and kopf's watch. Never written: the handlers are kopf.on.event,
    # which keep no progress annotations and add no finalizer (operator/lifecycle.py build_registry)
    ApiCall("get", "", "pods", None, "cluster", "Cluster.get_pod"),
    ApiCall("list", "", "pods", None, "cluster", "kopf: initial listing of pods (cluster-wide)"),
    ApiCall("watch", "", "pods", None, "cluster", "kopf: task-status annotation and deletion"),
    # --- events: Cluster.emit_event (events.k8s.io) and kopf's own events (core) ----------------
    ApiCall("create", "", "events", None, "cluster", "kopf: kopf.event/info/warn"),
    ApiCall("patch", "", "events", None, "cluster", "kopf: repeated events"),
    ApiCall("create", "events.k8s.io", "events", None, "cluster", "Cluster.emit_event"),
    ApiCall("patch", "events.k8s.io", "events", None, "cluster", "Cluster.emit_event (series)"),
    # --- authentication: Cluster.review_token (broker) ----------------------------------------------
    ApiCall("create", "authentication.k8s.io", "tokenreviews", None, "cluster", "Cluster.review_token"),
    # --- kubernetes-token provider (operator/providers/kubernetes_token.py), in the pod's namespace ---
    ApiCall(
        "create",
        "",
        "serviceaccounts",
        "token",
        "token-namespaces",
        "Cluster.create_service_account_token",
        when="token-request",
    ),
    ApiCall(
        "create", "", "secrets", None, "token-namespaces", "apply_secret: per-lease binding Secret",
        when="token-request",
    ),
    ApiCall(
        "delete", "", "secrets", None, "token-namespaces", "delete_secret: revoke (the token dies with it)",
        when="token-request",
    ),
    # --- policy: Cluster.get_credential_source / get_cluster_credential_source, kopf indexes ---------
    *(
        ApiCall(verb, _TASKCREDS, plural, None, "cluster", "Cluster.get_*credential_source, kopf")
        for plural in ("credentialsources", "clustercredentialsources")
        for verb in ("get", "list", "watch")
    ),
    # --- TaskLeases: Cluster.*_task_lease and kopf's lifecycle handlers ------------------------------
    ApiCall(
        "get",
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        None,
        "cluster",
        "main.check_task_lease_crd: is the installed TaskLease CRD this release's (at startup)",
        names=("tasklease-crd",),
    ),
    ApiCall("get", _TASKCREDS, "taskleases", None, "cluster", "Cluster.get_task_lease"),
    ApiCall("list", _TASKCREDS, "taskleases", None, "cluster", "Cluster.list_task_leases (sweep)"),
    ApiCall("watch", _TASKCREDS, "taskleases", None, "cluster", "kopf: finalizer taskcreds.io/revoke"),
    ApiCall("create", _TASKCREDS, "taskleases", None, "cluster", "Cluster.create_task_lease"),
    ApiCall("update", _TASKCREDS, "taskleases", None, "cluster", "lifecycle: finalizer removal by replace"),
    ApiCall("patch", _TASKCREDS, "taskleases", None, "cluster", "Cluster.patch_task_lease, kopf"),
    ApiCall(
        "delete", _TASKCREDS, "taskleases", None, "cluster", "lifecycle: sweep of leases whose pod is gone"
    ),
    ApiCall("get", _TASKCREDS, "taskleases", "status", "cluster", "Cluster.patch_task_lease(subresource)"),
    ApiCall("update", _TASKCREDS, "taskleases", "status", "cluster", "Cluster.patch_task_lease(subresource)"),
    ApiCall("patch", _TASKCREDS, "taskleases", "status", "cluster", "Cluster.patch_task_lease(subresource)"),
    # --- webhook certificate (operator/certificates.py), self-managed mode only ----------------------
    ApiCall(
        "get",
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        None,
        "cluster",
        "Cluster.patch_webhook_ca_bundle (read webhooks)",
        names=("webhook-configuration",),
        when="self-managed-certs",
    ),
    ApiCall(
        "patch",
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        None,
        "cluster",
        "Cluster.patch_webhook_ca_bundle",
        names=("webhook-configuration",),
        when="self-managed-certs",
    ),
    # --- the operator's own Secrets: Cluster.get_secret / apply_secret -------------------------------
    # create cannot be limited by name in Kubernetes RBAC
    ApiCall("create", "", "secrets", None, "release", "Cluster.apply_secret (first write)"),
    *(
        ApiCall(
            verb,
            "",
            "secrets",
            None,
            "release",
            "Cluster.get_secret / apply_secret (jwt keys; deny list in <keys>-revoked)",
            names=("jwt-secret", "jwt-denylist-secret"),
        )
        for verb in ("get", "update", "patch")
    ),
    *(
        ApiCall(
            verb,
            "",
            "secrets",
            None,
            "release",
            "ensure_webhook_certificate (delete: a Secret of another type, recreated; types are immutable)",
            names=("webhook-secret",),
            when="self-managed-certs",
        )
        for verb in ("get", "update", "patch", "delete")
    ),
    # --- providers: Cluster.get_secret on Secrets named by CredentialSources ------------------------
    ApiCall("get", "", "secrets", None, "secret-namespaces", "providers (github-app, vault, secret)"),
)
