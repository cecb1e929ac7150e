"""Small CRD manifests for tests (the chart's own CRDs load with ``KubeApi.register_crds_from``)."""

from __future__ import annotations

from typing import Any

from taskcreds import names

__all__ = ["crd_manifest", "task_lease_crd", "credential_source_crd", "cluster_credential_source_crd"]


def crd_manifest(
    *,
    group: str,
    kind: str,
    plural: str,
    scope: str = "Namespaced",
    version: str = "v1alpha1",
    status_subresource: bool = False,
    schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    ver: dict[str, Any] = {
        "name": version,
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": schema or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        },
    }
    if status_subresource:
        ver["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": scope,
            "versions": [ver],
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
        },
    }


_OPEN = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def task_lease_crd() -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["task", "pod"],
                "properties": {"task": {"type": "string"}, "pod": {"type": "string"}},
            },
            "status": {
                "type": "object",
                "properties": {
                    "phase": {"type": "string", "enum": ["Active", "Revoking", "Revoked"]},
                    "leases": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "credential": {"type": "string"},
                                "provider": {"type": "string"},
                                "reference": {"type": "string"},
                                "issuedAt": {"type": "string"},
                                "expiresAt": {"type": "string"},
                                "revokedAt": {"type": "string"},
                                "revokeReason": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    }
    return crd_manifest(
        group=names.CRD_GROUP,
        kind=names.KIND_TASK_LEASE,
        plural=names.PLURAL_TASK_LEASES,
        status_subresource=True,
        schema=schema,
    )


def credential_source_crd() -> dict[str, Any]:
    schema = {"type": "object", "properties": {"spec": _OPEN, "status": _OPEN}}
    return crd_manifest(
        group=names.CRD_GROUP,
        kind=names.KIND_CREDENTIAL_SOURCE,
        plural=names.PLURAL_CREDENTIAL_SOURCES,
        schema=schema,
    )


def cluster_credential_source_crd() -> dict[str, Any]:
    schema = {"type": "object", "properties": {"spec": _OPEN, "status": _OPEN}}
    return crd_manifest(
        group=names.CRD_GROUP,
        kind=names.KIND_CLUSTER_CREDENTIAL_SOURCE,
        plural=names.PLURAL_CLUSTER_CREDENTIAL_SOURCES,
        scope="Cluster",
        schema=schema,
    )
