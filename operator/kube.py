"""The real :class:`~taskcreds.operator.cluster.Cluster` over kubernetes_asyncio.

The only module that imports a Kubernetes client. Objects travel as the API's JSON (plain dicts:
every call uses ``_preload_content=False`` and decodes the body itself), so callers see exactly
what :mod:`taskcreds.operator.memcluster` gives them. API errors become the Cluster error tree:
409 -> Conflict (AlreadyExists on create), 404 -> None on reads / NotFound on writes, anything
else (and connection failures) -> ClusterError. Messages name the object, never a body.

Configuration, in this order: an explicit URL (+ token, CA file), a kubeconfig file, in-cluster.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException
from taskcreds.operator.cluster import (
    AlreadyExists,
    ClusterError,
    Conflict,
    NotFound,
    PodEvent,
    TokenIdentity,
)

from taskcreds import names
from taskcreds.logs import fields

__all__ = ["KubeCluster", "connect"]

log = logging.getLogger("taskcreds.kube")

_MERGE = "application/merge-patch+json"
_JSON_PATCH = "application/json-patch+json"
_SECRET_OPAQUE = "Opaque"
# built-in Secret types the API validates (ValidateSecret) and the keys each needs; other types with
# rules (service-account-token, dockercfg, basic-auth, ssh-auth, bootstrap token) never fit our data
_SECRET_TYPE_KEYS: dict[str, tuple[str, ...]] = {
    _SECRET_OPAQUE: (),
    "kubernetes.io/tls": ("tls.crt", "tls.key"),
}
_SECRET_TYPES_WITH_RULES = ("kubernetes.io/", "bootstrap.kubernetes.io/")
_POD_NAME = "authentication.kubernetes.io/pod-name"
_POD_UID = "authentication.kubernetes.io/pod-uid"
_SA_PREFIX = "system:serviceaccount:"


async def connect(
    *,
    url: str | None = None,
    token: str | None = None,
    ca_file: str | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
    request_timeout: float = 10.0,
) -> KubeCluster:
    """A KubeCluster from an explicit URL, else a kubeconfig (argument or $KUBECONFIG), else in-cluster."""
    cfg = client.Configuration()
    if url:
        cfg.host = url
        if token:
            cfg.api_key = {"BearerToken": token}
            cfg.api_key_prefix = {"BearerToken": "Bearer"}
        if ca_file:
            cfg.ssl_ca_cert = ca_file
    elif kubeconfig or os.environ.get("KUBECONFIG"):
        await config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException as exc:
            raise ClusterError(
                f"no Kubernetes configuration: give a URL or a kubeconfig, or run in a pod ({exc})"
            ) from None
    return KubeCluster(client.ApiClient(cfg), timeout=request_timeout)


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _secret_type_fits(secret_type: str, data: dict[str, Any]) -> bool:
    """Whether ``data`` may be stored under ``secret_type`` (the API's ValidateSecret rules)."""
    if secret_type in _SECRET_TYPE_KEYS:
        return all(k in data for k in _SECRET_TYPE_KEYS[secret_type])
    return not secret_type.startswith(_SECRET_TYPES_WITH_RULES)  # custom types: free-form


class KubeCluster:
    """The Cluster protocol over one kubernetes_asyncio ApiClient (owned: closed by :meth:`close`)."""

    def __init__(self, api: client.ApiClient, *, timeout: float = 10.0) -> None:
        self.api = api
        self.timeout = timeout
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.auth = client.AuthenticationV1Api(api)
        self.admission = client.AdmissionregistrationV1Api(api)
        self.instance = socket.gethostname()

    async def close(self) -> None:
        await self.api.close()

    # --- plumbing -----------------------------------------------------------------------------
    async def _call(
        self,
        what: str,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        missing_ok: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any] | None:
        """Call an API method and decode its JSON; map errors (``what`` names the object)."""
        try:
            resp = await fn(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
            try:
                body = await resp.read()
                status = resp.status
            finally:
                resp.release()
        except ApiException as exc:
            body, status = (exc.body or b""), exc.status or 0
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ClusterError(f"{what}: Kubernetes API unreachable ({type(exc).__name__})") from None
        if 200 <= status < 300:
            return json.loads(body) if body else {}
        reason, message = "", ""
        try:
            doc = json.loads(body)
            reason, message = str(doc.get("reason") or ""), str(doc.get("message") or "")
        except (ValueError, TypeError, AttributeError):
            pass
        if status == 404:
            if missing_ok:
                return None
            raise NotFound(f"{what}: not found")
        if status == 409:
            if reason == "AlreadyExists":
                raise AlreadyExists(f"{what}: already exists")
            raise Conflict(f"{what}: conflict ({reason or 'resourceVersion changed'})")
        raise ClusterError(f"{what}: HTTP {status} {reason} {message[:200]}".rstrip())

    # --- Cluster protocol ---------------------------------------------------------------------
    async def review_token(self, token: str, audience: str) -> TokenIdentity | None:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }
        doc = await self._call("TokenReview", self.auth.create_token_review, body)
        status = (doc or {}).get("status") or {}
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        username = str(user.get("username") or "")
        if not username.startswith(_SA_PREFIX) or username.count(":") != 3:
            return None  # not a service account
        namespace, service_account = username[len(_SA_PREFIX) :].split(":")
        extra = user.get("extra") or {}
        pod_name = (extra.get(_POD_NAME) or [None])[0]
        pod_uid = (extra.get(_POD_UID) or [None])[0]
        audiences = tuple(status.get("audiences") or ())
        if audience not in audiences:
            return None
        return TokenIdentity(namespace, service_account, pod_name, pod_uid, audiences)

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._call(
            f"pod {namespace}/{name}", self.core.read_namespaced_pod, name, namespace, missing_ok=True
        )

    async def get_credential_source(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._call(
            f"CredentialSource {namespace}/{name}",
            self.custom.get_namespaced_custom_object,
            names.CRD_GROUP,
            names.CRD_VERSION,
            namespace,
            names.PLURAL_CREDENTIAL_SOURCES,
            name,
            missing_ok=True,
        )

    async def get_cluster_credential_source(self, name: str) -> dict[str, Any] | None:
        return await self._call(
            f"ClusterCredentialSource {name}",
            self.custom.get_cluster_custom_object,
            names.CRD_GROUP,
            names.CRD_VERSION,
            names.PLURAL_CLUSTER_CREDENTIAL_SOURCES,
            name,
            missing_ok=True,
        )

    async def list_credential_sources(self, kind: str) -> list[dict[str, Any]]:
        plural = (
            names.PLURAL_CLUSTER_CREDENTIAL_SOURCES
            if kind == names.KIND_CLUSTER_CREDENTIAL_SOURCE
            else names.PLURAL_CREDENTIAL_SOURCES
        )
        doc = await self._call(
            f"{kind} list", self.custom.list_cluster_custom_object, names.CRD_GROUP, names.CRD_VERSION, plural
        )
        items = doc.get("items") if isinstance(doc, dict) else None
        return [item for item in items or () if isinstance(item, dict)]

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._call(
            f"Secret {namespace}/{name}", self.core.read_namespaced_secret, name, namespace, missing_ok=True
        )

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
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
        if resource_version is not None:
            meta["resourceVersion"] = resource_version  # the API answers 409 Conflict if it moved on
        if owner is not None:
            om = owner.get("metadata") or {}
            meta["ownerReferences"] = [
                {
                    "apiVersion": owner.get("apiVersion", "v1"),
                    "kind": owner.get("kind", "Pod"),
                    "name": om.get("name"),
                    "uid": om.get("uid"),
                    "blockOwnerDeletion": False,
                }
            ]
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": _SECRET_OPAQUE,
            "metadata": meta,
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }
        what = f"Secret {namespace}/{name}"
        if resource_version is not None:
            return await self._replace_secret(what, namespace, name, body)
        try:
            created = await self._call(what, self.core.create_namespaced_secret, namespace, body)
        except AlreadyExists:
            if create_only:
                raise
            return await self._replace_secret(what, namespace, name, body)
        assert created is not None
        return created

    async def _replace_secret(
        self, what: str, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """PUT ``body`` over the stored Secret, whose ``type`` the API never lets an update change.

        A Secret left by cert-manager (switching webhook.certManager off) is ``kubernetes.io/tls``:
        the new data keeps that type when it may (tls.crt and tls.key present; extra keys are
        allowed). A type the data cannot satisfy is deleted and created again, with the read
        resourceVersion as the delete's precondition, so a concurrent writer still gets Conflict.
        """
        meta = body["metadata"]
        current = await self._call(what, self.core.read_namespaced_secret, name, namespace, missing_ok=True)
        if current is None:
            if "resourceVersion" in meta:
                raise NotFound(f"{what}: not found")
            created = await self._call(what, self.core.create_namespaced_secret, namespace, body)
            assert created is not None
            return created
        stored_type = str(current.get("type") or _SECRET_OPAQUE)
        if _secret_type_fits(stored_type, body["data"]):
            body["type"] = stored_type
            replaced = await self._call(what, self.core.replace_namespaced_secret, name, namespace, body)
            assert replaced is not None
            return replaced
        version = meta.pop("resourceVersion", None) or (current.get("metadata") or {}).get("resourceVersion")
        log.info("replacing a Secret whose type cannot hold the new data", extra=fields(
            secret=f"{namespace}/{name}", stored_type=stored_type, new_type=body["type"]))
        await self._call(what, self.core.delete_namespaced_secret, name, namespace,
                         body={"preconditions": {"resourceVersion": version}})
        try:
            created = await self._call(what, self.core.create_namespaced_secret, namespace, body)
        except AlreadyExists:  # another writer recreated it between our delete and create
            raise Conflict(f"{what}: conflict (recreated by another writer)") from None
        assert created is not None
        return created

    async def delete_secret(self, namespace: str, name: str) -> None:
        await self._call(
            f"Secret {namespace}/{name}", self.core.delete_namespaced_secret, name, namespace, missing_ok=True
        )

    async def patch_webhook_ca_bundle(self, configuration: str, ca_bundle_pem: bytes) -> None:
        what = f"MutatingWebhookConfiguration {configuration}"
        current = await self._call(what, self.admission.read_mutating_webhook_configuration, configuration)
        bundle = base64.b64encode(ca_bundle_pem).decode()
        patch = [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
            for i, _ in enumerate((current or {}).get("webhooks") or [])
        ]
        if patch:
            await self._call(
                what,
                self.admission.patch_mutating_webhook_configuration,
                configuration,
                patch,
                _content_type=_JSON_PATCH,
            )

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
        spec: dict[str, Any] = {"audiences": list(audiences), "expirationSeconds": int(expiration_seconds)}
        if bound_secret is not None:
            spec["boundObjectRef"] = {
                "apiVersion": "v1",
                "kind": "Secret",
                "name": bound_secret[0],
                "uid": bound_secret[1],
            }
        elif bound_pod is not None:
            spec["boundObjectRef"] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": bound_pod[0],
                "uid": bound_pod[1],
            }
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        doc = await self._call(
            f"TokenRequest for {namespace}/{service_account}",
            self.core.create_namespaced_service_account_token,
            service_account,
            namespace,
            body,
        )
        status = (doc or {}).get("status") or {}
        expires = datetime.fromisoformat(str(status.get("expirationTimestamp")).replace("Z", "+00:00"))
        return str(status.get("token")), expires

    async def get_task_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._call(
            f"TaskLease {namespace}/{name}",
            self.custom.get_namespaced_custom_object,
            names.CRD_GROUP,
            names.CRD_VERSION,
            namespace,
            names.PLURAL_TASK_LEASES,
            name,
            missing_ok=True,
        )

    async def list_task_leases(self, namespace: str | None = None) -> list[dict[str, Any]]:
        if namespace is None:
            doc = await self._call(
                "TaskLeases",
                self.custom.list_cluster_custom_object,
                names.CRD_GROUP,
                names.CRD_VERSION,
                names.PLURAL_TASK_LEASES,
            )
        else:
            doc = await self._call(
                f"TaskLeases in {namespace}",
                self.custom.list_namespaced_custom_object,
                names.CRD_GROUP,
                names.CRD_VERSION,
                namespace,
                names.PLURAL_TASK_LEASES,
            )
        items = list((doc or {}).get("items") or [])
        for item in items:  # list items omit apiVersion/kind
            item.setdefault("apiVersion", names.API_VERSION)
            item.setdefault("kind", names.KIND_TASK_LEASE)
        return items

    async def create_task_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = (body.get("metadata") or {}).get("name")
        doc = await self._call(
            f"TaskLease {namespace}/{name}",
            self.custom.create_namespaced_custom_object,
            names.CRD_GROUP,
            names.CRD_VERSION,
            namespace,
            names.PLURAL_TASK_LEASES,
            body,
        )
        assert doc is not None
        return doc

    async def patch_task_lease(
        self, namespace: str, name: str, patch: dict[str, Any], *, subresource: str | None = None
    ) -> dict[str, Any]:
        fn = (
            self.custom.patch_namespaced_custom_object_status
            if subresource == "status"
            else self.custom.patch_namespaced_custom_object
        )
        doc = await self._call(
            f"TaskLease {namespace}/{name}",
            fn,
            names.CRD_GROUP,
            names.CRD_VERSION,
            namespace,
            names.PLURAL_TASK_LEASES,
            name,
            patch,
            _content_type=_MERGE,
        )
        assert doc is not None
        return doc

    async def delete_task_lease(self, namespace: str, name: str) -> None:
        await self._call(
            f"TaskLease {namespace}/{name}",
            self.custom.delete_namespaced_custom_object,
            names.CRD_GROUP,
            names.CRD_VERSION,
            namespace,
            names.PLURAL_TASK_LEASES,
            name,
        )

    async def emit_event(
        self, regarding: dict[str, Any], reason: str, message: str, type_: str = "Normal"
    ) -> None:
        meta = regarding.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        now = _now_text()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name') or 'taskcreds'}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": regarding.get("apiVersion"),
                "kind": regarding.get("kind"),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": "taskcreds-operator", "host": self.instance},
            "reportingComponent": "taskcreds.io/operator",
            "reportingInstance": self.instance,
        }
        await self._call(
            f"Event about {namespace}/{meta.get('name')}", self.core.create_namespaced_event, namespace, body
        )

    async def watch_pods(
        self, namespace: str | None = None, label_selector: str | None = None
    ) -> AsyncIterator[PodEvent]:
        """Pods as ADDED first, then changes; reconnects (and replays) after any error, until cancelled."""
        delay = 0.2
        while True:
            w = watch.Watch()
            try:
                if namespace is None:
                    stream = w.stream(
                        self.core.list_pod_for_all_namespaces,
                        label_selector=label_selector or "",
                        timeout_seconds=300,
                    )
                else:
                    stream = w.stream(
                        self.core.list_namespaced_pod,
                        namespace,
                        label_selector=label_selector or "",
                        timeout_seconds=300,
                    )
                async with stream as events:
                    async for event in events:
                        kind = event.get("type")
                        raw = event.get("raw_object")
                        if kind in ("ADDED", "MODIFIED", "DELETED") and isinstance(raw, dict):
                            raw.setdefault("apiVersion", "v1")
                            raw.setdefault("kind", "Pod")
                            delay = 0.2
                            yield kind, raw
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect: the next stream starts with every pod again
                log.warning("pod watch interrupted; reconnecting", extra=fields(error=type(exc).__name__))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                w.stop()
