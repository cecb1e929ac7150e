"""The HTTP face of the stand-in: kube-apiserver's URL layout, verbs, watch streams and errors.

One catch-all aiohttp handler parses ``/api/v1/...`` and ``/apis/<group>/<version>/...`` into
(resource, namespace, name, subresource), authenticates the bearer token, then dispatches to
:class:`tests.kube.store.Store` with admission webhooks around writes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.kube import errors
from tests.kube.admission import Admission, UserInfo
from tests.kube.resources import ResourceType, api_group, api_group_list, api_resource_list, api_versions
from tests.kube.selectors import SelectorError, parse_field_selector, parse_label_selector
from tests.kube.store import Store, Watcher, WatchEvent, rfc3339
from tests.kube.tokens import API_AUDIENCES, TokenAuthority

__all__ = ["ApiServer", "ApiCall", "KUBERNETES_VERSION"]

KUBERNETES_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0-taskcreds-standin",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.24",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_PUBLIC = (
    "/version",
    "/healthz",
    "/readyz",
    "/livez",
    "/.well-known/openid-configuration",
    "/openid/v1/jwks",
)


@dataclass(frozen=True)
class ApiCall:
    """One resource request in RBAC terms (what a Role rule would have to allow)."""

    verb: str  # get list watch create update patch delete deletecollection
    group: str
    resource: str  # "pods", "pods/status", "serviceaccounts/token"
    namespace: str | None
    name: str | None
    user: str


@dataclass
class _Target:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


@dataclass
class ServerState:
    down: bool = False
    latency: float = 0.0
    bookmark_interval: float = 10.0
    requests: list[tuple[str, str]] = field(default_factory=list)
    api_calls: list[ApiCall] = field(default_factory=list)


class ApiServer:
    def __init__(self, store: Store, tokens: TokenAuthority, admission: Admission, admin_token: str) -> None:
        self.store, self.tokens, self.admission, self.admin_token = store, tokens, admission, admin_token
        self.state = ServerState()
        self._streams: set[web.StreamResponse] = set()
        self._watch_tasks: set[asyncio.Task[Any]] = set()
        self.app = web.Application(middlewares=[self._middleware], client_max_size=16 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.app.on_shutdown.append(self._on_shutdown)

    # --- fault injection ------------------------------------------------------------------

    def set_down(self, down: bool) -> None:
        self.state.down = down
        if down:
            for resp in list(self._streams):
                with contextlib.suppress(Exception):
                    if resp._req is not None and resp._req.transport is not None:  # noqa: SLF001
                        resp._req.transport.close()  # noqa: SLF001
            for task in list(self._watch_tasks):
                task.cancel()

    async def _on_shutdown(self, app: web.Application) -> None:
        for w in list(self.store.watchers):
            w.queue.put_nowait(None)

    # --- plumbing -------------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.state.requests.append((request.method, request.path))
        if self.state.latency:
            await asyncio.sleep(self.state.latency)
        if self.state.down:
            return _status_response(
                errors.ApiError(
                    503,
                    "ServiceUnavailable",
                    "the server is currently unable to handle the request (KubeApi.set_down)",
                )
            )
        try:
            return await handler(request)
        except errors.ApiError as e:
            return _status_response(e)
        except web.HTTPException:
            raise
        except Exception as e:  # a bug in the stand-in: say so, as a Status, not a traceback page
            return _status_response(errors.internal(f"kube stand-in bug: {type(e).__name__}: {e}"))

    def _authenticate(self, request: web.Request) -> UserInfo:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if token and token == self.admin_token:
            return UserInfo("kubernetes-admin", "", ("system:masters", "system:authenticated"))
        if token:
            status = self.tokens.review(token, list(API_AUDIENCES), self._lookup)
            if status["authenticated"]:
                u = status["user"]
                return UserInfo(u["username"], u["uid"], tuple(u["groups"]))
        if request.path in _PUBLIC:
            return UserInfo("system:anonymous", "", ("system:unauthenticated",))
        raise errors.unauthorized()

    def _lookup(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        plural = {"ServiceAccount": "serviceaccounts", "Pod": "pods", "Secret": "secrets"}[kind]
        return self.store.peek(self.store.type_for("", "v1", plural), namespace, name)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        user = self._authenticate(request)
        path = request.path.rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        if path == "/version":
            return _json(KUBERNETES_VERSION)
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if path == "/.well-known/openid-configuration":
            return _json(self.tokens.openid_configuration())
        if path == "/openid/v1/jwks":
            return _json(self.tokens.jwks())
        if path == "/api":
            return _json(api_versions())
        if path == "/apis":
            return _json(api_group_list(self.store.types.values()))
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 2:
            if len(parts) == 2:
                versions = sorted({rt.version for rt in self.store.types.values() if rt.group == parts[1]})
                if not versions:
                    raise _not_found_path()
                return _json(api_group(parts[1], versions))
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _not_found_path()
        gv = f"{group}/{version}" if group else version
        if not any(rt.api_version == gv for rt in self.store.types.values()):
            raise _not_found_path()
        if not rest:
            if request.method != "GET":
                raise errors.method_not_allowed()
            return _json(api_resource_list(gv, self.store.types.values()))
        target = self._target(group, version, rest)
        return await self._serve(request, target, user)

    def _target(self, group: str, version: str, rest: list[str]) -> _Target:
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
            ns, rest = rest[1], rest[2:]
        else:
            ns = None
        if len(rest) > 3:
            raise _not_found_path()
        rt = self.store.type_for(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if ns is not None and not rt.namespaced:
            raise _not_found_path()
        if sub is not None and sub not in rt.subresources:
            raise _not_found_path()
        return _Target(rt, ns, name, sub)

    # --- verbs ----------------------------------------------------------------------------

    async def _serve(self, request: web.Request, t: _Target, user: UserInfo) -> web.StreamResponse:
        q = request.query
        method = request.method
        if method == "GET":
            verb = "get" if t.name else ("watch" if _bool(q.get("watch")) else "list")
        else:
            verb = {
                "POST": "create",
                "PUT": "update",
                "PATCH": "patch",
                "DELETE": "delete" if t.name else "deletecollection",
            }.get(method, method.lower())
        resource = f"{t.rt.plural}/{t.subresource}" if t.subresource else t.rt.plural
        self.state.api_calls.append(ApiCall(verb, t.rt.group, resource, t.namespace, t.name, user.username))
        if t.rt.namespaced and t.namespace is None and verb not in ("list", "watch"):
            raise errors.method_not_allowed(
                f"{verb} on {t.rt.qualified} needs a namespace in the URL (/namespaces/<ns>/{t.rt.plural})"
            )
        if t.rt.virtual and verb != "create":
            raise errors.method_not_allowed()
        dry_run = q.get("dryRun") == "All"
        if verb == "watch":
            return await self._watch(request, t)
        if verb == "list":
            return self._list(request, t)
        if verb == "get":
            return _json(self.store.get(t.rt, t.namespace, t.name or ""))
        if verb == "create":
            body = await _body(request)
            if t.subresource == "token":
                return self._token_request(t, body)
            if t.name is not None:
                raise errors.method_not_allowed()
            if t.rt.kind == "TokenReview":
                return self._token_review(body)
            if t.rt.kind == "SelfSubjectAccessReview":
                return _json(
                    {**body, "status": {"allowed": True, "reason": "the stand-in does not implement RBAC"}},
                    201,
                )
            return await self._create(t, body, user, dry_run)
        if verb in ("update", "patch"):
            if t.name is None:
                raise errors.method_not_allowed()
            body = await _body(request)
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            return await self._update(t, body, user, dry_run, ctype if verb == "patch" else None)
        if verb == "delete":
            return await self._delete(request, t, user, dry_run)
        if verb == "deletecollection":
            return await self._delete_collection(request, t, dry_run)
        raise errors.method_not_allowed()

    def _selectors(self, request: web.Request, t: _Target) -> tuple[Any, Any]:
        try:
            return (
                parse_label_selector(request.query.get("labelSelector")),
                parse_field_selector(request.query.get("fieldSelector"), t.rt.kind),
            )
        except SelectorError as e:
            raise errors.bad_request(str(e)) from None

    def _list(self, request: web.Request, t: _Target) -> web.Response:
        labels, fields = self._selectors(request, t)
        items = self.store.list(t.rt, t.namespace, labels, fields)
        start = 0
        if cont := request.query.get("continue"):
            try:
                start = int(json.loads(base64.urlsafe_b64decode(cont))["start"])
            except (ValueError, KeyError, TypeError):
                raise errors.bad_request(f"continue key is not valid: {cont!r}") from None
        meta: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        limit = int(request.query.get("limit") or 0)
        if limit > 0 and start + limit < len(items):
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"start": start + limit}).encode()
            ).decode()
            meta["remainingItemCount"] = len(items) - start - limit
            items = items[start : start + limit]
        else:
            items = items[start:]
        if t.rt.builtin:  # built-in lists omit kind/apiVersion in items; custom resource lists keep them
            for item in items:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        return _json(
            {"apiVersion": t.rt.api_version, "kind": f"{t.rt.kind}List", "metadata": meta, "items": items}
        )

    async def _create(self, t: _Target, body: Any, user: UserInfo, dry_run: bool) -> web.Response:
        obj = self.store.prepare_create(t.rt, t.namespace, body)
        name = obj["metadata"].get("name", "")
        mutated, warnings = await self.admission.run(
            t.rt, "CREATE", obj, None, namespace=t.namespace, name=name, user=user, dry_run=dry_run
        )
        if mutated is None:
            raise errors.internal("a mutating webhook returned no object")
        obj = mutated
        if obj.get("metadata", {}).get("namespace") not in (None, t.namespace) and t.rt.namespaced:
            raise errors.bad_request("a mutating webhook changed metadata.namespace")
        obj = self.store.prepare_create(t.rt, t.namespace, obj)
        _, vwarnings = await self.admission.run(
            t.rt,
            "CREATE",
            obj,
            None,
            namespace=t.namespace,
            name=name,
            user=user,
            dry_run=dry_run,
            mutating=False,
        )
        created = self.store.create(t.rt, t.namespace, obj, dry_run=dry_run, prepared=True)
        return _json(created, 201, warnings + vwarnings)

    async def _update(
        self, t: _Target, body: Any, user: UserInfo, dry_run: bool, patch_type: str | None
    ) -> web.Response:
        name = t.name or ""
        for _attempt in range(5):
            if patch_type is None:
                current, new = self.store.prepare_update(t.rt, t.namespace, name, body, t.subresource)
            else:
                current, new = self.store.prepare_patch(
                    t.rt, t.namespace, name, patch_type, body, t.subresource
                )
            expect = current["metadata"]["resourceVersion"]
            warnings: list[str] = []
            if not new["metadata"].get("deletionTimestamp") or new["metadata"].get("finalizers"):
                mutated, warnings = await self.admission.run(
                    t.rt,
                    "UPDATE",
                    new,
                    current,
                    namespace=t.namespace,
                    name=name,
                    user=user,
                    dry_run=dry_run,
                    subresource=t.subresource,
                )
                assert mutated is not None
                new = mutated
                _, vw = await self.admission.run(
                    t.rt,
                    "UPDATE",
                    new,
                    current,
                    namespace=t.namespace,
                    name=name,
                    user=user,
                    dry_run=dry_run,
                    subresource=t.subresource,
                    mutating=False,
                )
                warnings += vw
            try:
                updated = self.store.update(t.rt, t.namespace, name, new, expect_rv=expect, dry_run=dry_run)
            except errors.ApiError as e:
                if e.reason == "Conflict" and (
                    patch_type is not None or not (body.get("metadata") or {}).get("resourceVersion")
                ):
                    continue  # changed while webhooks ran: the API retries patches (and unconditional PUTs)
                raise
            return _json(updated, 200, warnings)
        raise errors.conflict(t.rt, name)

    async def _delete(self, request: web.Request, t: _Target, user: UserInfo, dry_run: bool) -> web.Response:
        options = await _body(request, default={})
        if not isinstance(options, dict):
            raise errors.bad_request("DeleteOptions must be a JSON object")
        for k in ("propagationPolicy", "gracePeriodSeconds", "orphanDependents"):
            if k in request.query:
                options.setdefault(k, request.query[k])
        current = self.store.get(t.rt, t.namespace, t.name or "")
        await self.admission.run(
            t.rt,
            "DELETE",
            None,
            current,
            namespace=t.namespace,
            name=t.name or "",
            user=user,
            dry_run=dry_run,
        )
        obj, gone = self.store.delete(t.rt, t.namespace, t.name or "", options, dry_run=dry_run)
        if not gone:
            # the API answers 200 for a held deletion, 202 only when orphanDependents=false was asked for
            return _json(obj, 202 if options.get("orphanDependents") in (False, "false") else 200)
        if t.rt.kind == "Pod" or not t.rt.builtin:
            return _json(obj, 200)
        details = {"name": obj["metadata"]["name"], "kind": t.rt.plural, "uid": obj["metadata"]["uid"]}
        if t.rt.group:
            details["group"] = t.rt.group
        return _json(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
        )

    async def _delete_collection(self, request: web.Request, t: _Target, dry_run: bool) -> web.Response:
        labels, fields = self._selectors(request, t)
        out = []
        for obj in self.store.list(t.rt, t.namespace, labels, fields):
            with contextlib.suppress(errors.ApiError):
                deleted, _ = self.store.delete(
                    t.rt, obj["metadata"].get("namespace"), obj["metadata"]["name"], dry_run=dry_run
                )
                out.append(deleted)
        return _json(
            {
                "apiVersion": t.rt.api_version,
                "kind": f"{t.rt.kind}List",
                "metadata": {"resourceVersion": str(self.store.rv)},
                "items": out,
            }
        )

    # --- tokens ---------------------------------------------------------------------------

    def _token_request(self, t: _Target, body: Any) -> web.Response:
        ns, sa_name = t.namespace or "", t.name or ""
        sa = self.store.get(self.store.type_for("", "v1", "serviceaccounts"), ns, sa_name)
        spec = dict((body or {}).get("spec") or {})
        spec.setdefault("audiences", list(API_AUDIENCES))
        spec.setdefault("expirationSeconds", 3600)
        exp = spec["expirationSeconds"]
        rt_name = "TokenRequest.authentication.k8s.io"
        if not isinstance(exp, int) or exp < 600:
            raise errors.ApiError(
                422,
                "Invalid",
                f'{rt_name} "{sa_name}" is invalid: spec.expirationSeconds: '
                f"Invalid value: {exp}: may not specify a duration less than 10 minutes",
            )
        if exp > 2**32:
            raise errors.ApiError(
                422,
                "Invalid",
                f'{rt_name} "{sa_name}" is invalid: spec.expirationSeconds: '
                f"Invalid value: {exp}: may not specify a duration larger than 2^32 seconds",
            )
        pod = secret = None
        ref = spec.get("boundObjectRef")
        if ref:
            bound = self._bound_object(ns, sa_name, ref)
            if ref.get("kind") == "Pod":
                pod = bound
            else:
                secret = bound
            spec["boundObjectRef"] = {
                "kind": ref["kind"],
                "apiVersion": "v1",
                "name": bound[0],
                "uid": bound[1],
            }
        token, expires = self.tokens.issue(
            namespace=ns,
            service_account=sa_name,
            service_account_uid=sa["metadata"]["uid"],
            audiences=spec["audiences"],
            expiration_seconds=exp,
            pod=pod,
            secret=secret,
        )
        return _json(
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "metadata": {"name": sa_name, "namespace": ns, "creationTimestamp": rfc3339(time.time())},
                "spec": spec,
                "status": {"token": token, "expirationTimestamp": rfc3339(expires)},
            },
            201,
        )

    def _bound_object(self, ns: str, sa_name: str, ref: dict[str, Any]) -> tuple[str, str]:
        """(name, uid) of a TokenRequest's ``boundObjectRef``, checked as the API's token REST storage
        does: a Pod (running as this service account) or a Secret of the namespace; the object must
        exist (404) and have the uid given, if any (409). Node bindings are not modelled (no Nodes)."""
        kind, name = ref.get("kind"), ref.get("name") or ""
        group, _, version = str(ref.get("apiVersion") or "").rpartition("/")  # the API ignores the version
        if group or kind not in ("Pod", "Secret"):
            stand_in = " (the stand-in serves no Nodes)" if kind == "Node" and not group else ""
            raise errors.bad_request(
                f"cannot bind token to object of type {group}/{version}, Kind={kind}{stand_in}"
            )
        obj = self.store.get(self.store.type_for("", "v1", "pods" if kind == "Pod" else "secrets"), ns, name)
        if ref.get("uid") and ref["uid"] != obj["metadata"]["uid"]:
            raise errors.ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind} "{name}": '
                f"the UID in the bound object reference ({ref['uid']}) does not match the UID "
                "in record. The object might have been deleted and then recreated",
            )
        if kind == "Pod" and obj["spec"].get("serviceAccountName") != sa_name:
            raise errors.bad_request(
                f"cannot bind token for serviceaccount {sa_name!r} to pod running with "
                f"different serviceaccount name ({obj['spec'].get('serviceAccountName')})"
            )
        return obj["metadata"]["name"], obj["metadata"]["uid"]

    def _token_review(self, body: Any) -> web.Response:
        spec = (body or {}).get("spec") or {}
        if not isinstance(spec.get("token"), str) or not spec["token"]:
            raise errors.ApiError(
                422, "Invalid", 'TokenReview.authentication.k8s.io "" is invalid: spec.token: Required value'
            )
        status = self.tokens.review(spec["token"], spec.get("audiences"), self._lookup)
        return _json(
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "metadata": {"creationTimestamp": None},
                "spec": spec,
                "status": status,
            },
            201,
        )

    # --- watch ----------------------------------------------------------------------------

    async def _watch(self, request: web.Request, t: _Target) -> web.StreamResponse:
        q = request.query
        labels, fields = self._selectors(request, t)
        rv_text = q.get("resourceVersion", "")
        send_initial = _bool(q.get("sendInitialEvents"))
        bookmarks = _bool(q.get("allowWatchBookmarks"))
        try:
            timeout = float(q.get("timeoutSeconds") or 1800)
            since = int(rv_text) if rv_text not in ("", "0") else None
        except ValueError:
            raise errors.bad_request(
                f'resourceVersion: Invalid value: "{rv_text}": must be an integer'
            ) from None
        if send_initial and not bookmarks:
            raise errors.ApiError(422, "Invalid", "sendInitialEvents requires allowWatchBookmarks=true")
        watcher = Watcher((t.rt.group, t.rt.plural), t.namespace if t.rt.namespaced else None, labels, fields)
        # synchronous block: the snapshot and the subscription are atomic
        backlog: list[tuple[str, dict[str, Any]]] = []
        gone: errors.ApiError | None = None
        if since is None or send_initial:
            backlog = [("ADDED", obj) for obj in self.store.list(t.rt, watcher.namespace, labels, fields)]
        else:
            try:
                for past in self.store.events_since(since):
                    if (seen := watcher.translate(past)) is not None:
                        backlog.append(seen)
            except errors.ApiError as e:
                gone = e
        last_rv = self.store.rv
        self.store.watchers.add(watcher)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        self._streams.add(resp)
        task = asyncio.current_task()
        if task is not None:
            self._watch_tasks.add(task)
        try:
            await resp.prepare(request)
            if gone is not None:
                await _write(resp, "ERROR", gone.status())
                return resp
            for type_, obj in backlog:
                await _write(resp, type_, obj)
            if send_initial:
                await _write(resp, "BOOKMARK", self._bookmark(t.rt, {"k8s.io/initial-events-end": "true"}))
            deadline = asyncio.get_running_loop().time() + timeout
            next_bookmark = asyncio.get_running_loop().time() + self.state.bookmark_interval
            while True:
                now = asyncio.get_running_loop().time()
                if now >= deadline:
                    break
                wait = min(deadline, next_bookmark) - now if bookmarks else deadline - now
                try:
                    ev: WatchEvent | None = await asyncio.wait_for(watcher.queue.get(), timeout=max(wait, 0))
                except TimeoutError:
                    if bookmarks and asyncio.get_running_loop().time() >= next_bookmark:
                        await _write(resp, "BOOKMARK", self._bookmark(t.rt))
                        next_bookmark = asyncio.get_running_loop().time() + self.state.bookmark_interval
                    continue
                if ev is None:
                    break
                if ev.rv <= last_rv:
                    continue
                if (seen := watcher.translate(ev)) is not None:
                    await _write(resp, *seen)
            return resp
        except (ConnectionResetError, asyncio.CancelledError):
            return resp
        finally:
            self.store.watchers.discard(watcher)
            self._streams.discard(resp)
            if task is not None:
                self._watch_tasks.discard(task)

    def _bookmark(self, rt: ResourceType, annotations: dict[str, str] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        if annotations:
            meta["annotations"] = annotations
        return {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}


def _bool(text: str | None) -> bool:
    """Go's strconv.ParseBool, which the API uses for query flags."""
    return text in ("1", "t", "T", "TRUE", "true", "True")


async def _write(resp: web.StreamResponse, type_: str, obj: dict[str, Any]) -> None:
    await resp.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")


async def _body(request: web.Request, default: Any = None) -> Any:
    raw = await request.read()
    if not raw:
        if default is not None:
            return default
        raise errors.bad_request("the request body is empty; expected a JSON object")
    ctype = request.headers.get("Content-Type", "")
    if "yaml" in ctype and "apply-patch" not in ctype:
        raise errors.unsupported_media_type(f"the stand-in reads JSON bodies only, got {ctype!r}")
    if "apply-patch" in ctype:
        return raw.decode(errors="replace")
    try:
        return json.loads(raw)
    except ValueError as e:
        raise errors.bad_request(f"the request body is not valid JSON: {e}") from None


def _json(obj: Any, status: int = 200, warnings: list[str] | None = None) -> web.Response:
    resp = web.Response(status=status, body=json.dumps(obj).encode(), content_type="application/json")
    for w in warnings or []:
        text = " ".join(str(w).split()).replace("\\", "\\\\").replace('"', '\\"')  # one line, quoted-string
        resp.headers.add("Warning", f'299 - "{text}"')
    return resp


def _status_response(e: errors.ApiError) -> web.Response:
    return _json(e.status(), e.code)


def _not_found_path() -> errors.ApiError:
    return errors.ApiError(404, "NotFound", "the server could not find the requested resource")
