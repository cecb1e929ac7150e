"""What kinds the stand-in serves, and the discovery documents that describe them.

A :class:`ResourceType` is one row of ``/api/v1`` or ``/apis/<group>/<version>``. Built-in rows
are listed in :data:`BUILTINS`; CustomResourceDefinitions add rows at run time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ResourceType", "BUILTINS", "from_crd", "api_versions", "api_group_list", "api_resource_list"]

RW = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for core
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = RW
    subresources: tuple[str, ...] = ()  # "status", "token", ...
    short_names: tuple[str, ...] = ()
    builtin: bool = True
    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    #: server-side only kinds (TokenReview): create answers, nothing is stored
    virtual: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def qualified(self) -> str:
        """``pods`` or ``taskleases.taskcreds.io``: how the API names the resource in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    def base_path(self, namespace: str | None) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{root}/namespaces/{namespace}/{self.plural}"
        return f"{root}/{self.plural}"


def _rt(group: str, version: str, plural: str, kind: str, namespaced: bool, **kw: Any) -> ResourceType:
    return ResourceType(group, version, plural, kind, namespaced, **kw)


BUILTINS: tuple[ResourceType, ...] = (
    _rt(
        "",
        "v1",
        "namespaces",
        "Namespace",
        False,
        subresources=("status",),
        short_names=("ns",),
        verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    ),
    _rt("", "v1", "pods", "Pod", True, subresources=("status",), short_names=("po",)),
    _rt("", "v1", "secrets", "Secret", True),
    _rt("", "v1", "configmaps", "ConfigMap", True, short_names=("cm",)),
    _rt("", "v1", "serviceaccounts", "ServiceAccount", True, subresources=("token",), short_names=("sa",)),
    _rt("", "v1", "services", "Service", True, subresources=("status",), short_names=("svc",)),
    _rt("", "v1", "events", "Event", True, short_names=("ev",)),
    _rt("events.k8s.io", "v1", "events", "Event", True, short_names=("ev",)),
    _rt("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False, verbs=("create",), virtual=True),
    _rt(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        False,
        verbs=("create",),
        virtual=True,
    ),
    _rt(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        False,
    ),
    _rt(
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        False,
    ),
    _rt(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        subresources=("status",),
        short_names=("crd", "crds"),
    ),
    _rt("coordination.k8s.io", "v1", "leases", "Lease", True),
    _rt("apps", "v1", "deployments", "Deployment", True, subresources=("status",), short_names=("deploy",)),
)


def from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """One ResourceType per served version of an apiextensions.k8s.io/v1 CRD manifest."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group: str = spec.get("group") or ""
    plural: str = names.get("plural") or ""
    kind: str = names.get("kind") or ""
    scope = spec.get("scope")
    problems = [
        f"spec.{n}" for n, v in (("group", group), ("names.plural", plural), ("names.kind", kind)) if not v
    ]
    if scope not in ("Namespaced", "Cluster"):
        problems.append("spec.scope (Namespaced or Cluster)")
    if not spec.get("versions"):
        problems.append("spec.versions")
    if problems:
        raise ValueError(f"CustomResourceDefinition is missing {', '.join(problems)}")
    expected = f"{plural}.{group}"
    if (crd.get("metadata") or {}).get("name") not in (None, expected):
        raise ValueError(f"metadata.name must be {expected!r} (spec.names.plural + '.' + spec.group)")
    out = []
    for v in spec["versions"]:
        if not v.get("served", True):
            continue
        subs = ("status",) if "status" in (v.get("subresources") or {}) else ()
        out.append(
            ResourceType(
                group,
                v["name"],
                plural,
                kind,
                scope == "Namespaced",
                subresources=subs,
                short_names=tuple(names.get("shortNames") or ()),
                builtin=False,
                schema=(v.get("schema") or {}).get("openAPIV3Schema"),
            )
        )
    return out


def _resource_entry(rt: ResourceType) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": list(rt.verbs),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    rows = [entry]
    for sub in rt.subresources:
        if sub == "token":
            rows.append(
                {
                    "name": f"{rt.plural}/token",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "group": "authentication.k8s.io",
                    "version": "v1",
                    "kind": "TokenRequest",
                    "verbs": ["create"],
                }
            )
        else:
            rows.append(
                {
                    "name": f"{rt.plural}/{sub}",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return rows


def api_versions() -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }


def api_group_list(types: Iterable[ResourceType]) -> dict[str, Any]:
    groups: dict[str, list[str]] = {}
    for rt in types:
        if rt.group:
            versions = groups.setdefault(rt.group, [])
            if rt.version not in versions:
                versions.append(rt.version)
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [api_group(g, vs) for g, vs in groups.items()],
    }


def api_group(group: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": gvs,
        "preferredVersion": gvs[0],
    }


def api_resource_list(group_version: str, types: Iterable[ResourceType]) -> dict[str, Any]:
    rows = [row for rt in types if rt.api_version == group_version for row in _resource_entry(rt)]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": rows}
