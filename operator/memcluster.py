"""An in-memory :class:`~taskcreds.operator.cluster.Cluster` for ``taskcreds demo`` and tests.

Same semantics the real API has where our code relies on them: resourceVersion bumps on every
write and optimistic-concurrency conflicts, JSON merge patches, the status subresource, finalizers
with deletionTimestamp, owner-reference garbage collection of TaskLeases when their pod goes,
pod-bound service-account tokens that stop authenticating once the pod is gone, and a pod watch.
Objects go in and come out as deep copies, so callers can never mutate the store by accident.

Test hooks: ``put_pod``/``put_secret``/``put_source``, ``issue_pod_token``, ``set_annotation``,
``delete_pod``, ``events``, and ``fail(op, exc, times)`` to make the next calls of an operation fail.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from taskcreds.operator.cluster import (
    AlreadyExists,
    ClusterError,
    Conflict,
    NotFound,
    PodEvent,
    TokenIdentity,
)

from taskcreds import names

__all__ = ["MemCluster", "merge_patch"]

Key = tuple[str, str]


def _kept_secret_type(stored: str, data: dict[str, Any]) -> str | None:
    """The type a replace keeps, or None when the data cannot satisfy it (as kube.py decides)."""
    if stored == "kubernetes.io/tls":
        return stored if {"tls.crt", "tls.key"} <= set(data) else None
    if stored == "Opaque" or not stored.startswith(("kubernetes.io/", "bootstrap.kubernetes.io/")):
        return stored
    return None


def _copy(obj: Any) -> Any:
    """A deep copy of JSON-shaped data (what the API's wire format would give: no shared state)."""
    if obj is None:
        return None
    return orjson.loads(orjson.dumps(obj))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge, ``None`` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return _copy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _now_text(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Token:
    identity: TokenIdentity
    expires_at: datetime
    bound_secret: tuple[str, str, str] | None = None  # (namespace, name, uid)


class MemCluster:
    """The Cluster protocol over dicts. Safe within one event loop (no awaits inside a write)."""

    def __init__(self, *, now: Any = None) -> None:
        self._now = now or (lambda: datetime.now(UTC))
        self._rv = 0
        self.pods: dict[Key, dict[str, Any]] = {}
        self.secrets: dict[Key, dict[str, Any]] = {}
        self.sources: dict[Key, dict[str, Any]] = {}
        self.cluster_sources: dict[str, dict[str, Any]] = {}
        self.task_leases: dict[Key, dict[str, Any]] = {}
        self.webhook_configurations: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._tokens: dict[str, _Token] = {}
        self._watchers: list[tuple[str | None, dict[str, str], asyncio.Queue[PodEvent]]] = []
        self._faults: dict[str, list[BaseException]] = {}
        self.calls: dict[str, int] = {}

    # --- test hooks ---------------------------------------------------------------------------
    def fail(self, op: str, exc: BaseException | None = None, times: int = 1) -> None:
        """Make the next ``times`` calls of method ``op`` raise ``exc`` (default ClusterError)."""
        err = exc or ClusterError(f"{op}: injected failure")
        self._faults.setdefault(op, []).extend([err] * times)

    def _enter(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        pending = self._faults.get(op)
        if pending:
            raise pending.pop(0)

    def _bump(self, obj: dict[str, Any]) -> None:
        self._rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)

    def put_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        """Create or replace a pod (fills uid, creationTimestamp, resourceVersion) and tell watchers."""
        pod = _copy(pod)
        meta = pod.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        key = (meta["namespace"], meta["name"])
        old = self.pods.get(key)
        meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
        meta.setdefault(
            "creationTimestamp", old["metadata"]["creationTimestamp"] if old else _now_text(self._now())
        )
        pod.setdefault("apiVersion", "v1")
        pod.setdefault("kind", "Pod")
        self._bump(pod)
        self.pods[key] = pod
        self._notify("MODIFIED" if old else "ADDED", pod)
        return _copy(pod)

    def set_annotation(self, namespace: str, name: str, key: str, value: str | None) -> dict[str, Any]:
        """Set (or with None remove) one pod annotation, as ``kubectl annotate`` would."""
        pod = _copy(self.pods[(namespace, name)])
        annotations = pod["metadata"].setdefault("annotations", {})
        if value is None:
            annotations.pop(key, None)
        else:
            annotations[key] = value
        return self.put_pod(pod)

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod: watchers see DELETED, its tokens stop working, its TaskLeases are collected."""
        pod = self.pods.pop((namespace, name), None)
        if pod is None:
            return
        uid = pod["metadata"]["uid"]
        pod["metadata"]["deletionTimestamp"] = _now_text(self._now())
        self._notify("DELETED", pod)
        for key, lease in list(self.task_leases.items()):
            owners = lease["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == uid for o in owners):
                self._delete_lease(key)
        for key, secret in list(self.secrets.items()):
            if any(o.get("uid") == uid for o in secret["metadata"].get("ownerReferences") or []):
                del self.secrets[key]

    def put_secret(
        self, namespace: str, name: str, data: dict[str, bytes | str], secret_type: str = "Opaque"  # noqa: S107
    ) -> None:
        """Store a Secret as another writer would (``secret_type``: e.g. cert-manager's kubernetes.io/tls)."""
        body = self._secret_body(
            namespace, name, {k: v.encode() if isinstance(v, str) else v for k, v in data.items()}, None
        )
        body["type"] = secret_type
        self.secrets[(namespace, name)] = body

    def put_source(self, body: dict[str, Any]) -> None:
        """Store a CredentialSource (namespaced) or ClusterCredentialSource, by its ``kind``."""
        body = _copy(body)
        body.setdefault("apiVersion", names.API_VERSION)
        self._bump(body)
        meta = body["metadata"]
        if body.get("kind") == names.KIND_CLUSTER_CREDENTIAL_SOURCE:
            self.cluster_sources[meta["name"]] = body
        else:
            body.setdefault("kind", names.KIND_CREDENTIAL_SOURCE)
            self.sources[(meta["namespace"], meta["name"])] = body

    def issue_pod_token(
        self,
        namespace: str,
        service_account: str,
        pod_name: str | None = None,
        pod_uid: str | None = None,
        audiences: tuple[str, ...] = (names.TOKEN_AUDIENCE,),
        ttl: float = 3600.0,
    ) -> str:
        """A projected service-account token as the kubelet would mount it (opaque here)."""
        token = "memtoken." + secrets.token_urlsafe(24)
        self._tokens[token] = _Token(
            TokenIdentity(namespace, service_account, pod_name, pod_uid, tuple(audiences)),
            self._now() + timedelta(seconds=ttl),
        )
        return token

    # --- watch --------------------------------------------------------------------------------
    def _notify(self, kind: str, pod: dict[str, Any]) -> None:
        for namespace, selector, queue in self._watchers:
            if _matches(pod, namespace, selector):
                queue.put_nowait((kind, _copy(pod)))

    async def watch_pods(
        self, namespace: str | None = None, label_selector: str | None = None
    ) -> AsyncIterator[PodEvent]:
        selector = _parse_selector(label_selector)
        queue: asyncio.Queue[PodEvent] = asyncio.Queue()
        entry = (namespace, selector, queue)
        self._watchers.append(entry)
        try:
            for pod in list(self.pods.values()):
                if _matches(pod, namespace, selector):
                    yield ("ADDED", _copy(pod))
            while True:
                yield await queue.get()
        finally:
            self._watchers.remove(entry)

    # --- Cluster protocol ---------------------------------------------------------------------
    async def review_token(self, token: str, audience: str) -> TokenIdentity | None:
        self._enter("review_token")
        entry = self._tokens.get(token)
        if entry is None or entry.expires_at <= self._now() or audience not in entry.identity.audiences:
            return None
        ident = entry.identity
        if entry.bound_secret is not None:  # dies with its binding Secret
            secret = self.secrets.get(entry.bound_secret[:2])
            if secret is None or secret["metadata"]["uid"] != entry.bound_secret[2]:
                return None
        if ident.pod_name is not None:  # bound tokens die with their pod
            pod = self.pods.get((ident.namespace, ident.pod_name))
            if pod is None or pod["metadata"]["uid"] != ident.pod_uid:
                return None
        return ident

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._enter("get_pod")
        pod = self.pods.get((namespace, name))
        return _copy(pod) if pod else None

    async def get_credential_source(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._enter("get_credential_source")
        return _copy(self.sources.get((namespace, name)))

    async def get_cluster_credential_source(self, name: str) -> dict[str, Any] | None:
        self._enter("get_cluster_credential_source")
        return _copy(self.cluster_sources.get(name))

    async def list_credential_sources(self, kind: str) -> list[dict[str, Any]]:
        self._enter("list_credential_sources")
        if kind == names.KIND_CLUSTER_CREDENTIAL_SOURCE:
            return [_copy(body) for body in self.cluster_sources.values()]
        return [_copy(body) for body in self.sources.values()]

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._enter("get_secret")
        return _copy(self.secrets.get((namespace, name)))

    def _secret_body(
        self,
        namespace: str,
        name: str,
        data: dict[str, bytes],
        labels: dict[str, str] | None,
        owner: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        old = self.secrets.get((namespace, name))
        # a Secret's type is immutable in the API: KubeCluster keeps the stored type when the data
        # fits it (kubernetes.io/tls with tls.crt and tls.key) and else deletes and recreates it
        kept = _kept_secret_type(str(old.get("type") or "Opaque"), data) if old else None
        if kept is None:
            old = None  # new, or recreated under a new uid
        secret_type = kept or "Opaque"
        meta: dict[str, Any] = {
            "namespace": namespace,
            "name": name,
            "labels": dict(labels or {}),
            "uid": old["metadata"]["uid"] if old else str(uuid.uuid4()),
        }
        if owner is not None:
            meta["ownerReferences"] = [_owner_ref(owner)]
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": secret_type,
            "metadata": meta,
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }
        self._bump(body)
        return body

    async def apply_secret(
        self,
        namespace: str,
        name: str,
        data: dict[str, bytes],
        labels: dict[str, str] | None = None,
        *,
        owner: dict[str, Any] | None = None,
        create_only: bool = False,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        self._enter("apply_secret")
        existing = self.secrets.get((namespace, name))
        if create_only and existing is not None:
            raise AlreadyExists(f"Secret {namespace}/{name} exists")
        if resource_version is not None:
            current = (existing or {}).get("metadata", {}).get("resourceVersion")
            if existing is None:
                raise NotFound(f"Secret {namespace}/{name} not found")
            if current != resource_version:
                raise Conflict(f"Secret {namespace}/{name} changed (resourceVersion {current})")
        body = self._secret_body(namespace, name, data, labels, owner)
        self.secrets[(namespace, name)] = body
        return _copy(body)

    async def delete_secret(self, namespace: str, name: str) -> None:
        self._enter("delete_secret")
        self.secrets.pop((namespace, name), None)

    async def patch_webhook_ca_bundle(self, configuration: str, ca_bundle_pem: bytes) -> None:
        self._enter("patch_webhook_ca_bundle")
        config = self.webhook_configurations.get(configuration)
        if config is None:
            raise NotFound(f"MutatingWebhookConfiguration {configuration!r} not found")
        for hook in config.setdefault("webhooks", []):
            hook.setdefault("clientConfig", {})["caBundle"] = base64.b64encode(ca_bundle_pem).decode()
        self._bump(config)

    async def create_service_account_token(
        self,
        namespace: str,
        service_account: str,
        audiences: list[str],
        expiration_seconds: int,
        bound_pod: tuple[str, str] | None,
        *,
        bound_secret: tuple[str, str] | None = None,
    ) -> tuple[str, datetime]:
        self._enter("create_service_account_token")
        if bound_secret is not None:
            secret = self.secrets.get((namespace, bound_secret[0]))
            if secret is None or secret["metadata"]["uid"] != bound_secret[1]:
                raise NotFound(f"secret {namespace}/{bound_secret[0]} with uid {bound_secret[1]} not found")
        if bound_pod is not None:
            pod = self.pods.get((namespace, bound_pod[0]))
            if pod is None or pod["metadata"]["uid"] != bound_pod[1]:
                raise NotFound(f"pod {namespace}/{bound_pod[0]} with uid {bound_pod[1]} not found")
        seconds = max(600, int(expiration_seconds))  # the API server's minimum
        token = self.issue_pod_token(
            namespace,
            service_account,
            bound_pod[0] if bound_pod else None,
            bound_pod[1] if bound_pod else None,
            tuple(audiences),
            seconds,
        )
        if bound_secret is not None:
            self._tokens[token].bound_secret = (namespace, *bound_secret)
        return token, self._tokens[token].expires_at.replace(microsecond=0)

    async def get_task_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._enter("get_task_lease")
        return _copy(self.task_leases.get((namespace, name)))

    async def list_task_leases(self, namespace: str | None = None) -> list[dict[str, Any]]:
        self._enter("list_task_leases")
        return [
            _copy(v)
            for (ns, _), v in sorted(self.task_leases.items())
            if namespace is None or ns == namespace
        ]

    async def create_task_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._enter("create_task_lease")
        body = _copy(body)
        meta = body.setdefault("metadata", {})
        meta["namespace"] = namespace
        key = (namespace, meta["name"])
        if key in self.task_leases:
            raise AlreadyExists(f"TaskLease {namespace}/{meta['name']} already exists")
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now_text(self._now())
        meta.pop("resourceVersion", None)
        body.setdefault("apiVersion", names.API_VERSION)
        body.setdefault("kind", names.KIND_TASK_LEASE)
        body.pop("status", None)  # status only through the subresource, as with the real API
        self._bump(body)
        self.task_leases[key] = body
        return _copy(body)

    async def patch_task_lease(
        self, namespace: str, name: str, patch: dict[str, Any], *, subresource: str | None = None
    ) -> dict[str, Any]:
        self._enter("patch_task_lease")
        key = (namespace, name)
        current = self.task_leases.get(key)
        if current is None:
            raise NotFound(f"TaskLease {namespace}/{name} not found")
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected is not None and expected != current["metadata"]["resourceVersion"]:
            raise Conflict(f"TaskLease {namespace}/{name}: resourceVersion {expected} is stale")
        if subresource == "status":
            allowed = {"status": patch.get("status")} if "status" in patch else {}
        else:
            allowed = {k: v for k, v in patch.items() if k != "status"}
        updated = merge_patch(current, allowed)
        updated["metadata"] = merge_patch(
            current["metadata"],
            {
                k: v
                for k, v in (allowed.get("metadata") or {}).items()
                if k not in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp")
            },
        )
        self._bump(updated)
        if updated["metadata"].get("deletionTimestamp") and not updated["metadata"].get("finalizers"):
            del self.task_leases[key]
        else:
            self.task_leases[key] = updated
        return _copy(updated)

    async def delete_task_lease(self, namespace: str, name: str) -> None:
        self._enter("delete_task_lease")
        if (namespace, name) not in self.task_leases:
            raise NotFound(f"TaskLease {namespace}/{name} not found")
        self._delete_lease((namespace, name))

    def _delete_lease(self, key: Key) -> None:
        lease = self.task_leases[key]
        if lease["metadata"].get("finalizers"):
            lease["metadata"].setdefault("deletionTimestamp", _now_text(self._now()))
            self._bump(lease)
        else:
            del self.task_leases[key]

    async def emit_event(
        self, regarding: dict[str, Any], reason: str, message: str, type_: str = "Normal"
    ) -> None:
        self._enter("emit_event")
        meta = regarding.get("metadata") or {}
        self.events.append(
            {
                "type": type_,
                "reason": reason,
                "message": message,
                "regarding": {
                    "apiVersion": regarding.get("apiVersion"),
                    "kind": regarding.get("kind"),
                    "namespace": meta.get("namespace"),
                    "name": meta.get("name"),
                    "uid": meta.get("uid"),
                },
                "eventTime": _now_text(self._now()),
            }
        )


def _owner_ref(owner: dict[str, Any]) -> dict[str, Any]:
    meta = owner.get("metadata") or {}
    return {
        "apiVersion": owner.get("apiVersion", "v1"),
        "kind": owner.get("kind", "Pod"),
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "blockOwnerDeletion": False,
    }


def _parse_selector(selector: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (selector or "").split(","):
        if part.strip():
            key, _, value = part.partition("=")
            out[key.strip()] = value.strip().lstrip("=")
    return out


def _matches(pod: dict[str, Any], namespace: str | None, selector: dict[str, str]) -> bool:
    meta = pod.get("metadata") or {}
    if namespace is not None and meta.get("namespace") != namespace:
        return False
    labels = meta.get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())
