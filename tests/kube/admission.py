"""Calling admission webhooks the way kube-apiserver does.

For a CREATE/UPDATE/DELETE of a resource, every MutatingWebhookConfiguration (in name order, then
each webhook in order) whose rules, namespaceSelector and objectSelector match gets an
admission.k8s.io/v1 AdmissionReview by HTTPS POST (server verified with ``caBundle``, ``?timeout=Ns``
appended to the URL like the API server does). A JSONPatch answer is applied; a denial becomes the
API's error ("admission webhook "x" denied the request: ..."), code from the response's status (at
least 400); a webhook that cannot be reached, times out or answers nonsense fails the request
(500) under failurePolicy Fail and is skipped under Ignore. Warnings go to ``Warning`` headers.
ValidatingWebhookConfigurations are called after mutation, with the final object.
Not done: reinvocationPolicy (webhooks run once), matchConditions (CEL), matchPolicy conversion.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import ssl
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import jsonpatch

from tests.kube import errors
from tests.kube.resources import ResourceType
from tests.kube.selectors import SelectorError, label_selector_matches
from tests.kube.store import Store

__all__ = ["Admission", "UserInfo", "WebhookCall"]

_SKIP_GROUPS = frozenset({"admissionregistration.k8s.io"})  # the API never calls webhooks about webhooks


@dataclass(frozen=True)
class UserInfo:
    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"username": self.username, "uid": self.uid, "groups": list(self.groups)}


@dataclass(frozen=True)
class WebhookCall:
    """A record of one webhook call, for tests to assert on."""

    configuration: str
    webhook: str
    operation: str
    resource: str
    outcome: str  # "allowed" | "patched" | "denied" | "error" | "ignored-error"
    detail: str = ""


class _WebhookFailure(Exception):
    pass


class Admission:
    def __init__(self, store: Store) -> None:
        self.store = store
        #: (namespace, service name) -> "host:port", how ``clientConfig.service`` reaches a local server
        self.service_endpoints: dict[tuple[str, str], str] = {}
        self.calls: list[WebhookCall] = []

    def _configurations(self, kind: str) -> list[dict[str, Any]]:
        rt = self.store.type_for("admissionregistration.k8s.io", "v1", kind)
        return sorted(self.store.list(rt), key=lambda c: c["metadata"]["name"])

    def _matches(
        self,
        wh: dict[str, Any],
        rt: ResourceType,
        subresource: str | None,
        operation: str,
        obj: dict[str, Any] | None,
        old: dict[str, Any] | None,
        namespace: str | None,
    ) -> bool:
        scope = "Namespaced" if rt.namespaced else "Cluster"

        def rule_ok(rule: dict[str, Any]) -> bool:
            ops, groups, versions = (
                rule.get("operations") or [],
                rule.get("apiGroups") or [],
                rule.get("apiVersions") or [],
            )
            if not ("*" in ops or operation in ops):
                return False
            if not ("*" in groups or rt.group in groups) or not ("*" in versions or rt.version in versions):
                return False
            if rule.get("scope", "*") not in ("*", scope):
                return False
            for r in rule.get("resources") or []:
                main, _, sub = r.partition("/")
                if sub:
                    if (main in ("*", rt.plural)) and subresource and (sub == "*" or sub == subresource):
                        return True
                elif not subresource and main in ("*", rt.plural):
                    return True
            return False

        if not any(rule_ok(r) for r in wh.get("rules") or []):
            return False
        try:
            if rt.namespaced or rt.kind == "Namespace":
                if rt.kind == "Namespace":
                    ns_labels = ((obj or old or {}).get("metadata") or {}).get("labels")
                else:
                    ns_rt = self.store.type_for("", "v1", "namespaces")
                    ns_obj = self.store.peek(ns_rt, None, namespace or "")
                    ns_labels = (ns_obj or {}).get("metadata", {}).get("labels")
                if not label_selector_matches(wh.get("namespaceSelector"), ns_labels):
                    return False
            selector = wh.get("objectSelector")
            if selector:
                new_ok = obj is not None and label_selector_matches(
                    selector, obj.get("metadata", {}).get("labels")
                )
                old_ok = old is not None and label_selector_matches(
                    selector, old.get("metadata", {}).get("labels")
                )
                if not (new_ok or old_ok):
                    return False
        except SelectorError:
            return False
        return True

    def _review(
        self,
        rt: ResourceType,
        subresource: str | None,
        operation: str,
        obj: dict[str, Any] | None,
        old: dict[str, Any] | None,
        namespace: str | None,
        name: str,
        user: UserInfo,
        dry_run: bool,
    ) -> dict[str, Any]:
        kind = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        resource = {"group": rt.group, "version": rt.version, "resource": rt.plural}
        options_kind = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions", "DELETE": "DeleteOptions"}.get(
            operation
        )
        request: dict[str, Any] = {
            "uid": str(uuid.uuid4()),
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "name": name,
            "operation": operation,
            "userInfo": user.as_dict(),
            "object": obj,
            "oldObject": old,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": options_kind} if options_kind else None,
        }
        if subresource:
            request["subResource"] = subresource
            request["requestSubResource"] = subresource
        if rt.namespaced:
            request["namespace"] = namespace
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}

    async def _post(self, wh: dict[str, Any], review: dict[str, Any]) -> dict[str, Any]:
        """POST the review; returns its ``response`` or raises _WebhookFailure naming what went wrong."""
        cc = wh.get("clientConfig") or {}
        timeout = int(wh.get("timeoutSeconds") or 10)
        server_hostname = None
        if cc.get("url"):
            url = cc["url"]
        else:
            svc = cc["service"]
            endpoint = self.service_endpoints.get((svc["namespace"], svc["name"]))
            if endpoint is None:
                raise _WebhookFailure(
                    f'failed to call webhook: service "{svc["name"]}" in namespace '
                    f'"{svc["namespace"]}" has no endpoints (KubeApi.admission.service_endpoints)'
                )
            url = f"https://{endpoint}{svc.get('path') or ''}"
            server_hostname = f"{svc['name']}.{svc['namespace']}.svc"
        if "v1" not in (wh.get("admissionReviewVersions") or []):
            raise _WebhookFailure(
                "failed to call webhook: webhook does not accept v1 AdmissionReview (the only "
                f"version this API speaks); admissionReviewVersions={wh.get('admissionReviewVersions')}"
            )
        if cc.get("caBundle"):
            ctx = ssl.create_default_context(cadata=base64.b64decode(cc["caBundle"]).decode())
        else:
            ctx = ssl.create_default_context()
        full_url = f"{url}{'&' if '?' in url else '?'}timeout={timeout}s"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
                async with session.post(
                    full_url,
                    json=review,
                    ssl=ctx,
                    server_hostname=server_hostname,
                    headers={"Accept": "application/json"},
                ) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise _WebhookFailure(
                            f"failed to call webhook: the server responded with the status code "
                            f"{resp.status} ({body[:200]!r})"
                        )
        except TimeoutError:
            raise _WebhookFailure(
                f'failed to call webhook: Post "{full_url}": context deadline exceeded'
            ) from None
        except (aiohttp.ClientError, ssl.SSLError, OSError) as e:
            raise _WebhookFailure(f'failed to call webhook: Post "{full_url}": {e}') from None
        try:
            answer = json.loads(body)
        except ValueError:
            raise _WebhookFailure("received invalid webhook response: the body is not JSON") from None
        if (
            not isinstance(answer, dict)
            or answer.get("apiVersion") != "admission.k8s.io/v1"
            or answer.get("kind") != "AdmissionReview"
        ):
            got = (
                f"{answer.get('apiVersion')}, Kind={answer.get('kind')}" if isinstance(answer, dict) else "?"
            )
            raise _WebhookFailure(
                "received invalid webhook response: expected webhook response of "
                f"admission.k8s.io/v1, Kind=AdmissionReview, got {got}"
            )
        response = answer.get("response")
        if not isinstance(response, dict):
            raise _WebhookFailure("received invalid webhook response: webhook response was absent")
        if response.get("uid") != review["request"]["uid"]:
            raise _WebhookFailure(
                f"received invalid webhook response: expected response.uid="
                f'"{review["request"]["uid"]}", got "{response.get("uid")}"'
            )
        return response

    async def run(
        self,
        rt: ResourceType,
        operation: str,
        obj: dict[str, Any] | None,
        old: dict[str, Any] | None,
        *,
        namespace: str | None,
        name: str,
        user: UserInfo,
        dry_run: bool = False,
        subresource: str | None = None,
        mutating: bool = True,
    ) -> tuple[dict[str, Any] | None, list[str]]:
        """Run the mutating (or validating) webhooks; returns (object, warnings) or raises ApiError."""
        if rt.group in _SKIP_GROUPS:
            return obj, []
        warnings: list[str] = []
        kind = "mutatingwebhookconfigurations" if mutating else "validatingwebhookconfigurations"
        for cfg in self._configurations(kind):
            for wh in cfg.get("webhooks") or []:
                if not self._matches(wh, rt, subresource, operation, obj, old, namespace):
                    continue
                review = self._review(rt, subresource, operation, obj, old, namespace, name, user, dry_run)
                record = (cfg["metadata"]["name"], wh["name"], operation, rt.plural)
                try:
                    response = await self._post(wh, review)
                    warnings += [str(w) for w in response.get("warnings") or []]
                    if not response.get("allowed"):
                        self.calls.append(
                            WebhookCall(
                                *record, "denied", str((response.get("status") or {}).get("message", ""))
                            )
                        )
                        raise _denied(wh["name"], response.get("status"))
                    if response.get("patch") and mutating:
                        obj = _apply(wh["name"], response, obj)
                        self.calls.append(WebhookCall(*record, "patched"))
                    else:
                        self.calls.append(WebhookCall(*record, "allowed"))
                except _WebhookFailure as e:
                    if wh.get("failurePolicy", "Fail") == "Ignore":
                        self.calls.append(WebhookCall(*record, "ignored-error", str(e)))
                        continue
                    self.calls.append(WebhookCall(*record, "error", str(e)))
                    raise errors.internal(f'failed calling webhook "{wh["name"]}": {e}') from None
                except asyncio.CancelledError:
                    raise
        return obj, warnings


def _denied(name: str, status: Any) -> errors.ApiError:
    status = status if isinstance(status, dict) else {}
    code = int(status.get("code") or 400)
    code = max(code, 400)
    by = f'admission webhook "{name}" denied the request'
    if status.get("message"):
        message = f"{by}: {status['message']}"
    elif status.get("reason"):
        message = f"{by}: {status['reason']}"
    else:
        message = f"{by} without explanation"
    return errors.ApiError(code, str(status.get("reason") or ""), message, status.get("details"))


def _apply(name: str, response: dict[str, Any], obj: dict[str, Any] | None) -> dict[str, Any]:
    if response.get("patchType") != "JSONPatch":
        raise _WebhookFailure(
            f"received invalid webhook response: patchType {response.get('patchType')!r} is not "
            '"JSONPatch", the only patch type admission.k8s.io/v1 defines'
        )
    try:
        ops = json.loads(base64.b64decode(response["patch"]))
        return jsonpatch.apply_patch(copy.deepcopy(obj), ops, in_place=False)
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        jsonpatch.JsonPatchException,
        jsonpatch.JsonPointerException,
    ) as e:
        raise _WebhookFailure(f"JSON patch from webhook {name!r} could not be applied: {e}") from None
