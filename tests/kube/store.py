"""The in-memory object store: resourceVersions, watch history, finalizers and garbage collection.

Every method is synchronous and runs on the server's event loop, so each write is atomic, as an
etcd transaction is. Admission webhooks (async) run before :meth:`Store.create`/:meth:`Store.update`
are called; see :mod:`tests.kube.server`.
"""

from __future__ import annotations

import asyncio
import builtins
import copy
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.kube import errors, kinds, schema
from tests.kube.patching import PatchError, json_patch, merge_patch, strategic_merge_patch
from tests.kube.resources import BUILTINS, ResourceType, from_crd
from tests.kube.selectors import FieldRequirement, LabelRequirement, field_matches, match_labels

__all__ = [
    "Store",
    "WatchEvent",
    "Watcher",
    "rfc3339",
    "MERGE_PATCH",
    "JSON_PATCH",
    "STRATEGIC_PATCH",
    "APPLY_PATCH",
]

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # the API's generateName alphabet (no vowels, no 0/1/3)

GroupResource = tuple[str, str]  # (group, plural)
Key = tuple[str, str]  # (namespace or "", name)


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass
class WatchEvent:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    gr: GroupResource
    obj: dict[str, Any]
    old: dict[str, Any] | None = None


@dataclass(eq=False)
class Watcher:
    """One open watch; filters events for its resource, namespace and selectors."""

    gr: GroupResource
    namespace: str | None
    labels: list[LabelRequirement]
    fields: list[FieldRequirement]
    queue: asyncio.Queue[WatchEvent | None] = field(default_factory=asyncio.Queue)

    def _visible(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace and meta.get("namespace") != self.namespace:
            return False
        return match_labels(self.labels, meta.get("labels")) and field_matches(self.fields, obj)

    def translate(self, ev: WatchEvent) -> tuple[str, dict[str, Any]] | None:
        """The event this watcher sees: a MODIFIED that leaves (enters) its selector is DELETED (ADDED)."""
        if ev.gr != self.gr:
            return None
        now, before = self._visible(ev.obj), self._visible(ev.old)
        if ev.type == "MODIFIED":
            if now and before:
                return "MODIFIED", ev.obj
            if now:
                return "ADDED", ev.obj
            if before:
                return "DELETED", ev.obj
            return None
        return (ev.type, ev.obj) if now else None


class Store:
    """Objects by (group, plural) then (namespace, name); a global resourceVersion counter."""

    def __init__(self, history: int = 2000, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self.objects: dict[GroupResource, dict[Key, dict[str, Any]]] = {}
        self.rv = 1
        self.history: deque[WatchEvent] = deque(maxlen=history)
        self.compacted_rv = 1  # events with rv > compacted_rv are all still in history
        self.watchers: set[Watcher] = set()
        self.created_events: builtins.list[dict[str, Any]] = []
        self.listeners: builtins.list[Callable[[WatchEvent], None]] = []
        #: how long "the kubelet" takes to stop a scheduled pod's containers after a graceful delete
        self.pod_termination_delay = 0.05
        for rt in BUILTINS:
            self.add_type(rt)
        for ns in ("default", "kube-system", "kube-public"):
            self.create(self.type_for("", "v1", "namespaces"), None, {"metadata": {"name": ns}})

    # --- types ----------------------------------------------------------------------------

    def add_type(self, rt: ResourceType) -> None:
        self.types[(rt.group, rt.version, rt.plural)] = rt
        self.objects.setdefault((rt.group, rt.plural), {})

    def remove_types(self, group: str, plural: str) -> None:
        for key in [k for k in self.types if (k[0], k[2]) == (group, plural)]:
            del self.types[key]

    def type_for(self, group: str, version: str, plural: str) -> ResourceType:
        rt = self.types.get((group, version, plural))
        if rt is None:
            gv = f"{group}/{version}" if group else version
            raise errors.ApiError(
                404, "NotFound", f"the server could not find the requested resource ({plural} in {gv})"
            )
        return rt

    def type_for_kind(self, api_version: str, kind: str) -> ResourceType:
        group, _, version = api_version.rpartition("/")
        for rt in self.types.values():
            if (rt.group, rt.version, rt.kind) == (group, version, kind):
                return rt
        raise errors.ApiError(
            404,
            "NotFound",
            f"no kind {kind!r} is registered for version {api_version!r} (custom kinds need "
            "KubeApi.register_crd / register_crds_from first)",
        )

    def register_crd(self, crd: dict[str, Any]) -> builtins.list[ResourceType]:
        try:
            rts = from_crd(crd)
        except ValueError as e:
            raise errors.ApiError(422, "Invalid", f"CustomResourceDefinition is invalid: {e}") from None
        for rt in rts:
            self.add_type(rt)
        return rts

    # --- reads ----------------------------------------------------------------------------

    def _bucket(self, rt: ResourceType) -> dict[Key, dict[str, Any]]:
        return self.objects[(rt.group, rt.plural)]

    def _key(self, rt: ResourceType, namespace: str | None, name: str) -> Key:
        return ((namespace or "") if rt.namespaced else "", name)

    def _out(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(obj)
        out["apiVersion"], out["kind"] = rt.api_version, rt.kind
        return out

    def peek(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        obj = self._bucket(rt).get(self._key(rt, namespace, name))
        return self._out(rt, obj) if obj is not None else None

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.peek(rt, namespace, name)
        if obj is None:
            raise errors.not_found(rt, name)
        return obj

    def list(
        self,
        rt: ResourceType,
        namespace: str | None = None,
        labels: builtins.list[LabelRequirement] | None = None,
        fields: builtins.list[FieldRequirement] | None = None,
    ) -> builtins.list[dict[str, Any]]:
        out = []
        for (ns, _), obj in sorted(self._bucket(rt).items()):
            if rt.namespaced and namespace and ns != namespace:
                continue
            if labels and not match_labels(labels, (obj.get("metadata") or {}).get("labels")):
                continue
            if fields and not field_matches(fields, obj):
                continue
            out.append(self._out(rt, obj))
        return out

    def find_uid(self, uid: str) -> tuple[ResourceType, dict[str, Any]] | None:
        for (group, plural), bucket in self.objects.items():
            for obj in bucket.values():
                if obj["metadata"].get("uid") == uid:
                    rt = next(t for t in self.types.values() if (t.group, t.plural) == (group, plural))
                    return rt, obj
        return None

    # --- the write path -------------------------------------------------------------------

    def _emit(self, rt: ResourceType, type_: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if len(self.history) == self.history.maxlen:
            self.compacted_rv = self.history[0].rv
        ev = WatchEvent(
            self.rv,
            type_,
            (rt.group, rt.plural),
            self._out(rt, obj),
            self._out(rt, old) if old is not None else None,
        )
        self.history.append(ev)
        for w in list(self.watchers):
            w.queue.put_nowait(ev)
        for listener in list(self.listeners):
            listener(ev)

    def _bump(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def prepare_create(self, rt: ResourceType, namespace: str | None, body: Any) -> dict[str, Any]:
        """Decode and default a create body (what admission webhooks then see)."""
        if not isinstance(body, dict):
            raise errors.bad_request(f"the body of a create must be a JSON object ({rt.kind})")
        kinds.check_string_maps(body)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if obj.get("kind") not in (None, rt.kind) or obj.get("apiVersion") not in (None, rt.api_version):
            raise errors.bad_request(
                f"the API version in the data ({obj.get('apiVersion')}) does not match the expected "
                "API version "
                f"({rt.api_version}) or kind {obj.get('kind')!r} is not {rt.kind!r}"
            )
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if rt.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        for k in (
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "managedFields",
            "selfLink",
        ):
            meta.pop(k, None)
        kinds.default_object(rt, obj)
        return obj

    def create(
        self,
        rt: ResourceType,
        namespace: str | None,
        body: Any,
        *,
        dry_run: bool = False,
        prepared: bool = False,
    ) -> dict[str, Any]:
        obj = body if prepared else self.prepare_create(rt, namespace, body)
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            for _ in range(10):
                meta["name"] = meta["generateName"] + "".join(secrets.choice(_NAME_CHARS) for _ in range(5))
                if self._key(rt, namespace, meta["name"]) not in self._bucket(rt):
                    break
        kinds.default_object(rt, obj)
        if rt.namespaced:
            ns = self.objects[("", "namespaces")].get(("", namespace or ""))
            if ns is None:
                raise errors.ApiError(
                    404,
                    "NotFound",
                    f'namespaces "{namespace}" not found',
                    {"name": namespace or "", "kind": "namespaces"},
                )
            if ns["metadata"].get("deletionTimestamp"):
                raise errors.forbidden(
                    rt,
                    meta.get("name", ""),
                    f"unable to create new content in namespace {namespace} because it is being terminated",
                )
        if rt.has_status and not rt.builtin:
            obj.pop("status", None)  # CRs with a status subresource: status is ignored on create
        if (rt.group, rt.kind) == ("", "Pod"):
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        if rt.schema is not None:
            obj = schema.prune_and_validate(rt, obj)
            meta = obj["metadata"]
        causes = kinds.validate_object(rt, obj)
        if causes:
            raise errors.invalid(rt, meta.get("name", ""), causes)
        if rt.kind == "CustomResourceDefinition":
            self._check_crd(obj)
        key = self._key(rt, namespace, meta["name"])
        if key in self._bucket(rt):
            raise errors.already_exists(rt, meta["name"])
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = rfc3339(self.clock())
        meta["generation"] = 1
        if dry_run:
            meta["resourceVersion"] = ""
            return self._out(rt, obj)
        self._bump(obj)
        self._bucket(rt)[key] = obj
        self._emit(rt, "ADDED", obj, None)
        self._after_create(rt, obj)
        return self._out(rt, obj)

    def _check_crd(self, crd: dict[str, Any]) -> None:
        try:
            from_crd(crd)
        except ValueError as e:
            raise errors.ApiError(
                422, "Invalid", f'CustomResourceDefinition "{crd["metadata"].get("name")}" is invalid: {e}'
            ) from None

    def _after_create(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        if rt.kind == "Event":
            self.created_events.append(self._out(rt, obj))
        elif (rt.group, rt.kind) == ("", "Namespace"):
            # the service-account controller's job: every namespace gets a `default` ServiceAccount
            self.create(
                self.type_for("", "v1", "serviceaccounts"), meta["name"], {"metadata": {"name": "default"}}
            )
        elif rt.kind == "CustomResourceDefinition":
            for t in from_crd(obj):
                self.add_type(t)
            obj["status"] = {
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"},
                ],
                "acceptedNames": obj["spec"]["names"],
                "storedVersions": [v["name"] for v in obj["spec"]["versions"] if v.get("storage")],
            }
            old = copy.deepcopy(obj)
            self._bump(obj)
            self._emit(rt, "MODIFIED", obj, old)
        if meta.get("ownerReferences"):
            self._later(
                self._collect_orphan, rt, self._key(rt, meta.get("namespace"), meta["name"]), meta["uid"]
            )

    def prepare_update(
        self, rt: ResourceType, namespace: str | None, name: str, body: Any, subresource: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(current, candidate) for a PUT: status/main split applied, immutable metadata kept."""
        if not isinstance(body, dict):
            raise errors.bad_request(f"the body of an update must be a JSON object ({rt.kind})")
        kinds.check_string_maps(body)
        current = self._bucket(rt).get(self._key(rt, namespace, name))
        if current is None:
            raise errors.not_found(rt, name)
        meta = body.get("metadata") or {}
        if meta.get("name") not in (None, name):
            raise errors.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if rt.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        rv = meta.get("resourceVersion")
        if rv not in (None, "") and rv != current["metadata"]["resourceVersion"]:
            raise errors.conflict(rt, name)
        if meta.get("uid") not in (None, "", current["metadata"]["uid"]):
            raise errors.conflict(
                rt,
                name,
                f"Precondition failed: UID in precondition: {meta.get('uid')}, "
                f"UID in object meta: {current['metadata']['uid']}",
            )
        if subresource == "status":
            new = copy.deepcopy(current)
            if "status" in body:
                new["status"] = copy.deepcopy(body["status"])
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(body)
            new.setdefault("metadata", {})
            if rt.has_status:
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        nmeta, cmeta = new["metadata"], current["metadata"]
        for k in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "name",
            "namespace",
            "resourceVersion",
        ):
            if k in cmeta:
                nmeta[k] = cmeta[k]
            else:
                nmeta.pop(k, None)
        if not rt.namespaced:
            nmeta.pop("namespace", None)
        kinds.default_object(rt, new)
        return self._out(rt, current), new

    def prepare_patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        patch: Any,
        subresource: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        current = self._bucket(rt).get(self._key(rt, namespace, name))
        if current is None:
            raise errors.not_found(rt, name)
        base = self._out(rt, current)
        try:
            if content_type == MERGE_PATCH:
                if not isinstance(patch, dict):
                    raise PatchError("merge patch body must be a JSON object", code=400)
                result = merge_patch(base, patch)
            elif content_type == JSON_PATCH:
                result = json_patch(base, patch)
            elif content_type == STRATEGIC_PATCH:
                if not rt.builtin:
                    raise errors.unsupported_media_type(
                        f"the body of the request was in an unknown format - accepted media types include: "
                        f"{JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH} (strategic merge patch is not supported "
                        f"for custom resources)"
                    )
                result = strategic_merge_patch(base, patch)
            elif content_type == APPLY_PATCH:
                raise errors.unsupported_media_type(
                    "the stand-in API does not implement server-side apply (application/apply-patch+yaml); "
                    f"use {MERGE_PATCH}, {JSON_PATCH} or {STRATEGIC_PATCH}"
                )
            else:
                raise errors.unsupported_media_type(
                    "the body of the request was in an unknown format "
                    f"({content_type or 'no Content-Type'}) - accepted media types include: "
                    f"{JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}, {STRATEGIC_PATCH}"
                )
        except PatchError as e:
            if e.code == 400:
                raise errors.bad_request(str(e)) from None
            raise errors.ApiError(422, "Invalid", str(e)) from None
        if not isinstance(result, dict):
            raise errors.ApiError(422, "Invalid", "the patched object is not a JSON object")
        return self.prepare_update(rt, namespace, name, result, subresource)

    def update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        new: dict[str, Any],
        *,
        expect_rv: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Commit a candidate from prepare_update/prepare_patch (after admission)."""
        key = self._key(rt, namespace, name)
        current = self._bucket(rt).get(key)
        if current is None:
            raise errors.not_found(rt, name)
        if expect_rv is not None and current["metadata"]["resourceVersion"] != expect_rv:
            raise errors.conflict(rt, name)
        new = copy.deepcopy(new)
        if rt.schema is not None:
            new = schema.prune_and_validate(rt, new, current)
        cmeta, nmeta = current["metadata"], new["metadata"]
        if cmeta.get("deletionTimestamp"):
            added = [f for f in nmeta.get("finalizers") or [] if f not in (cmeta.get("finalizers") or [])]
            if added:
                raise errors.invalid(
                    rt,
                    name,
                    [
                        (
                            "metadata.finalizers",
                            "Forbidden: no new finalizers can be "
                            f"added if the object is being deleted, found new finalizers {added}",
                        )
                    ],
                )
        causes = kinds.validate_object(rt, new) + kinds.validate_update(rt, current, new)
        if causes:
            raise errors.invalid(rt, name, causes)
        if not nmeta.get("finalizers"):
            nmeta.pop("finalizers", None)
        if _spec_part(new) != _spec_part(current):
            nmeta["generation"] = cmeta.get("generation", 1) + 1
        comparable = {**new, "apiVersion": None, "kind": None}
        if comparable == {**current, "apiVersion": None, "kind": None}:
            return self._out(rt, current)  # a no-op write changes nothing, not even resourceVersion
        if dry_run:
            return self._out(rt, new)
        if rt.kind == "CustomResourceDefinition" and new.get("spec") != current.get("spec"):
            self._check_crd(new)
            self.remove_types(current["spec"]["group"], current["spec"]["names"]["plural"])
            for t in from_crd(new):
                self.add_type(t)
        old = current
        self._bump(new)
        if (
            nmeta.get("deletionTimestamp")
            and not nmeta.get("finalizers")
            and not nmeta.get("deletionGracePeriodSeconds")
        ):
            self._bucket(rt).pop(key)
            self._emit(rt, "DELETED", new, None)
            self._after_delete(rt, new)
            return self._out(rt, new)
        self._bucket(rt)[key] = new
        self._emit(rt, "MODIFIED", new, old)
        if nmeta.get("ownerReferences") != cmeta.get("ownerReferences") and nmeta.get("ownerReferences"):
            self._later(self._collect_orphan, rt, key, nmeta["uid"])
        return self._out(rt, new)

    # --- deletion and garbage collection --------------------------------------------------

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """Returns (object, gone): gone is False while finalizers hold the object."""
        options = options or {}
        key = self._key(rt, namespace, name)
        current = self._bucket(rt).get(key)
        if current is None:
            raise errors.not_found(rt, name)
        pre = options.get("preconditions") or {}
        cmeta = current["metadata"]
        if pre.get("uid") and pre["uid"] != cmeta["uid"]:
            raise errors.conflict(
                rt,
                name,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {cmeta['uid']}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != cmeta["resourceVersion"]:
            raise errors.conflict(
                rt,
                name,
                f"Precondition failed: ResourceVersion in precondition: "
                f"{pre['resourceVersion']}, ResourceVersion in object meta: {cmeta['resourceVersion']}",
            )
        if dry_run:
            return self._out(rt, current), not cmeta.get("finalizers")
        policy = options.get("propagationPolicy") or (
            "Orphan" if options.get("orphanDependents") else "Background"
        )
        if policy == "Orphan":
            self._orphan_dependents(cmeta["uid"])
        if cmeta.get("deletionTimestamp"):
            if (rt.group, rt.kind) == ("", "Pod") and str(options.get("gracePeriodSeconds")) == "0":
                self._kubelet_terminated(
                    key, cmeta["uid"]
                )  # a force delete skips the rest of the grace period
                return self._out(rt, current), key not in self._bucket(rt)
            return self._out(rt, current), False
        if (rt.group, rt.kind) == ("", "Namespace"):
            return self._delete_namespace(rt, key, current), False
        if (rt.group, rt.kind) == ("", "Pod") and (current.get("spec") or {}).get("nodeName"):
            grace = options.get("gracePeriodSeconds")
            grace = int(
                grace if grace is not None else current["spec"].get("terminationGracePeriodSeconds", 30)
            )
            if grace > 0:
                return self._delete_pod_gracefully(rt, key, current, grace), False
        if cmeta.get("finalizers"):
            old = copy.deepcopy(current)
            cmeta["deletionTimestamp"] = rfc3339(self.clock())
            cmeta["deletionGracePeriodSeconds"] = 0
            cmeta["generation"] = cmeta.get("generation", 1) + 1
            self._bump(current)
            self._emit(rt, "MODIFIED", current, old)
            return self._out(rt, current), False
        self._remove(rt, key)
        return self._out(rt, current), True

    def _delete_pod_gracefully(
        self, rt: ResourceType, key: Key, pod: dict[str, Any], grace: int
    ) -> dict[str, Any]:
        """A scheduled pod: deletionTimestamp = now + grace; the kubelet removes it once stopped."""
        old = copy.deepcopy(pod)
        meta = pod["metadata"]
        meta["deletionTimestamp"] = rfc3339(self.clock() + grace)
        meta["deletionGracePeriodSeconds"] = grace
        meta["generation"] = meta.get("generation", 1) + 1
        self._bump(pod)
        self._emit(rt, "MODIFIED", pod, old)
        try:
            asyncio.get_running_loop().call_later(
                self.pod_termination_delay, self._kubelet_terminated, key, meta["uid"]
            )
        except RuntimeError:
            self._kubelet_terminated(key, meta["uid"])
        return self._out(rt, pod)

    def _kubelet_terminated(self, key: Key, uid: str) -> None:
        """The kubelet's final delete with grace 0: gone now, or held by finalizers until they are removed."""
        rt = self.type_for("", "v1", "pods")
        pod = self._bucket(rt).get(key)
        if pod is None or pod["metadata"]["uid"] != uid:
            return
        old = copy.deepcopy(pod)
        pod["metadata"]["deletionGracePeriodSeconds"] = 0
        if not pod["metadata"].get("finalizers"):
            self._remove(rt, key)
            return
        self._bump(pod)
        self._emit(rt, "MODIFIED", pod, old)

    def _remove(self, rt: ResourceType, key: Key) -> None:
        obj = self._bucket(rt).pop(key)
        self._bump(obj)
        self._emit(rt, "DELETED", obj, None)
        self._after_delete(rt, obj)

    def _after_delete(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        if rt.kind == "CustomResourceDefinition":
            group, plural = obj["spec"]["group"], obj["spec"]["names"]["plural"]
            for (ns, name), _ in list(self.objects.get((group, plural), {}).items()):
                self.objects[(group, plural)].pop((ns, name), None)
            self.remove_types(group, plural)
        self._later(self._collect_dependents, meta["uid"])
        if rt.namespaced and meta.get("namespace"):
            self._later(self._finish_namespace, meta["namespace"])

    def _later(self, fn: Callable[..., None], *args: Any) -> None:
        """Controllers act asynchronously, promptly: on the next loop turn (or now, without a loop)."""
        try:
            asyncio.get_running_loop().call_soon(fn, *args)
        except RuntimeError:
            fn(*args)

    def _dependents(self, uid: str) -> Iterator[tuple[ResourceType, Key, dict[str, Any]]]:
        for rt in {(t.group, t.plural): t for t in self.types.values()}.values():
            for key, obj in list(self._bucket(rt).items()):
                if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or []):
                    yield rt, key, obj

    def _collect_dependents(self, uid: str) -> None:
        """The garbage collector, background propagation: delete what the gone owner owned."""
        for rt, key, obj in list(self._dependents(uid)):
            if key in self._bucket(rt) and not self._owners_alive(obj):
                try:
                    self.delete(rt, key[0] or None, key[1])
                except errors.ApiError:
                    pass

    def _owners_alive(self, obj: dict[str, Any]) -> bool:
        refs = obj["metadata"].get("ownerReferences") or []
        live = {o["metadata"]["uid"] for b in self.objects.values() for o in b.values()}
        return any(r.get("uid") in live for r in refs)

    def _collect_orphan(self, rt: ResourceType, key: Key, uid: str) -> None:
        """A dependent created with owners that do not exist (wrong uid, already gone) is collected."""
        obj = self._bucket(rt).get(key)
        if obj is None or obj["metadata"]["uid"] != uid or obj["metadata"].get("deletionTimestamp"):
            return
        if not self._owners_alive(obj):
            try:
                self.delete(rt, key[0] or None, key[1])
            except errors.ApiError:
                pass

    def _orphan_dependents(self, uid: str) -> None:
        for rt, key, obj in list(self._dependents(uid)):
            new = copy.deepcopy(obj)
            new["metadata"]["ownerReferences"] = [
                r for r in obj["metadata"]["ownerReferences"] if r.get("uid") != uid
            ]
            if not new["metadata"]["ownerReferences"]:
                del new["metadata"]["ownerReferences"]
            self.update(rt, key[0] or None, key[1], new)

    def _delete_namespace(self, rt: ResourceType, key: Key, ns: dict[str, Any]) -> dict[str, Any]:
        old = copy.deepcopy(ns)
        ns["metadata"]["deletionTimestamp"] = rfc3339(self.clock())
        ns.setdefault("status", {})["phase"] = "Terminating"
        self._bump(ns)
        self._emit(rt, "MODIFIED", ns, old)
        name = key[1]
        for t in {(t.group, t.plural): t for t in self.types.values() if t.namespaced}.values():
            for obj_ns, obj_name in list(self._bucket(t)):
                if obj_ns == name:
                    self._later(self._delete_quietly, t, obj_ns, obj_name)
        self._later(self._finish_namespace, name)
        return self._out(rt, ns)

    def _delete_quietly(self, rt: ResourceType, namespace: str, name: str) -> None:
        try:
            self.delete(rt, namespace, name)
        except errors.ApiError:
            pass

    def _finish_namespace(self, name: str) -> None:
        nsrt = self.type_for("", "v1", "namespaces")
        ns = self._bucket(nsrt).get(("", name))
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        for t in self.types.values():
            if t.namespaced and any(k[0] == name for k in self._bucket(t)):
                return
        if not ns["metadata"].get("finalizers"):
            self._remove(nsrt, ("", name))

    # --- watch ----------------------------------------------------------------------------

    def events_since(self, rv: int) -> builtins.list[WatchEvent]:
        """History after ``rv``; raises 410 Gone when part of it was compacted away."""
        if rv < self.compacted_rv:
            raise errors.gone(f"too old resource version: {rv} ({self.compacted_rv})")
        return [ev for ev in self.history if ev.rv > rv]


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}
