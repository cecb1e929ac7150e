"""Per-kind defaulting and validation: the parts of the API's behaviour code can trip over.

Only rules a caller could plausibly break are here (names, labels, annotation types, pod shape,
pod spec immutability, Secret base64, Secret type immutability and kubernetes.io/tls keys, webhook
configuration fields). Everything else is stored as sent. Each check returns ``(field, message)`` causes; the store turns them into a 422.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from typing import Any

from tests.kube.errors import bad_request
from tests.kube.resources import ResourceType

__all__ = ["default_object", "validate_object", "validate_update", "DNS_LABEL", "DNS_SUBDOMAIN"]

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
Causes = list[tuple[str, str]]


# --- defaulting (runs before admission, and again after mutating webhooks) --------------------


def default_object(rt: ResourceType, obj: dict[str, Any]) -> None:
    """Fill the defaults the API fills, in place."""
    fn = _DEFAULTS.get((rt.group, rt.kind))
    if fn:
        fn(obj)


def _default_pod(pod: dict[str, Any]) -> None:
    spec = pod.setdefault("spec", {})
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec["serviceAccountName"] = sa
    spec["serviceAccount"] = sa
    for key, value in (
        ("restartPolicy", "Always"),
        ("dnsPolicy", "ClusterFirst"),
        ("schedulerName", "default-scheduler"),
        ("terminationGracePeriodSeconds", 30),
        ("securityContext", {}),
        ("enableServiceLinks", True),
        ("priority", 0),
    ):
        spec.setdefault(key, value)
    for group in ("initContainers", "containers"):
        for c in spec.get(group) or []:
            if not isinstance(c, dict):
                continue
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("resources", {})
            image = str(c.get("image", ""))
            tag = image.rsplit("/", 1)[-1]
            latest = "@" not in image and (":" not in tag or tag.endswith(":latest"))
            c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
    for v in spec.get("volumes") or []:
        if isinstance(v, dict) and isinstance(v.get("emptyDir"), dict):
            v["emptyDir"] = v["emptyDir"]  # emptyDir: {} stays {}; the API adds nothing


def _default_namespace(ns: dict[str, Any]) -> None:
    meta = ns.setdefault("metadata", {})
    if meta.get("name"):
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
    ns.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    ns.setdefault("status", {}).setdefault("phase", "Active")


def _default_secret(secret: dict[str, Any]) -> None:
    secret.setdefault("type", "Opaque")
    string_data = secret.pop("stringData", None)
    if isinstance(string_data, dict):
        data = secret.setdefault("data", {})
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()


def _default_webhooks(cfg: dict[str, Any]) -> None:
    for wh in cfg.get("webhooks") or []:
        if not isinstance(wh, dict):
            continue
        wh.setdefault("failurePolicy", "Fail")
        wh.setdefault("matchPolicy", "Equivalent")
        wh.setdefault("namespaceSelector", {})
        wh.setdefault("objectSelector", {})
        wh.setdefault("timeoutSeconds", 10)
        if cfg.get("kind") != "ValidatingWebhookConfiguration":
            wh.setdefault("reinvocationPolicy", "Never")
        for rule in wh.get("rules") or []:
            if isinstance(rule, dict):
                rule.setdefault("scope", "*")
        cc = wh.get("clientConfig") or {}
        if isinstance(cc.get("service"), dict):
            cc["service"].setdefault("port", 443)


_DEFAULTS = {
    ("", "Pod"): _default_pod,
    ("", "Namespace"): _default_namespace,
    ("", "Secret"): _default_secret,
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"): _default_webhooks,
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"): _default_webhooks,
}


# --- validation -----------------------------------------------------------------------------


def check_string_maps(obj: dict[str, Any]) -> None:
    """Labels/annotations with non-string values fail to decode on a real API server (400)."""
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise bad_request("metadata must be an object")
    for field in ("labels", "annotations"):
        value = (meta or {}).get(field)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise bad_request(
                f"json: cannot unmarshal {type(value).__name__} into Go struct field "
                f"ObjectMeta.metadata.{field} of type map[string]string"
            )
        for k, v in value.items():
            if not isinstance(v, str):
                raise bad_request(
                    f"json: cannot unmarshal {_json_type(v)} into Go struct field "
                    f"ObjectMeta.metadata.{field} "
                    f"of type string (key {k!r}; {field} values must be strings, quote them)"
                )


def _json_type(v: Any) -> str:
    return {bool: "bool", int: "number", float: "number", list: "array", dict: "object"}.get(type(v), "null")


def _qualified_key(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        return "prefix part must be a lowercase RFC 1123 subdomain"
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an alphanumeric character (max 63)"
        )
    return None


def validate_metadata(rt: ResourceType, obj: dict[str, Any]) -> Causes:
    meta = obj.get("metadata") or {}
    causes: Causes = []
    name = meta.get("name", "")
    pattern, what = (
        (DNS_LABEL, "a lowercase RFC 1123 label")
        if rt.kind in ("Namespace", "Service")
        else (DNS_SUBDOMAIN, "a lowercase RFC 1123 subdomain")
    )
    if not name:
        causes.append(("metadata.name", "Required value: name or generateName is required"))
    elif len(name) > (63 if pattern is DNS_LABEL else 253) or not pattern.match(name):
        causes.append(
            (
                "metadata.name",
                f'Invalid value: "{name}": must be {what} (lowercase alphanumerics, '
                "'-' or '.', starting and ending with an alphanumeric)",
            )
        )
    for k, v in (meta.get("labels") or {}).items():
        if problem := _qualified_key(k):
            causes.append(("metadata.labels", f'Invalid value: "{k}": {problem}'))
        if len(v) > 63 or not _LABEL_VALUE.match(v):
            causes.append(
                (
                    "metadata.labels",
                    f'Invalid value: "{v}": a valid label must be an empty string or '
                    "consist of alphanumeric characters, '-', '_' or '.', start and end with an "
                    "alphanumeric character, at most 63 characters",
                )
            )
    annotations = meta.get("annotations") or {}
    for k in annotations:
        if problem := _qualified_key(k.lower()):
            causes.append(("metadata.annotations", f'Invalid value: "{k}": {problem}'))
    if sum(len(k) + len(v) for k, v in annotations.items()) > 256 * 1024:
        causes.append(("metadata.annotations", "Too long: must have at most 262144 bytes"))
    return causes


def validate_object(rt: ResourceType, obj: dict[str, Any]) -> Causes:
    causes = validate_metadata(rt, obj)
    fn = _VALIDATORS.get((rt.group, rt.kind))
    if fn:
        causes += fn(obj)
    return causes


def _validate_pod(pod: dict[str, Any]) -> Causes:
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return [("spec", "Required value")]
    causes: Causes = []
    volumes = spec.get("volumes") or []
    vol_names: set[str] = set()
    for i, v in enumerate(volumes):
        n = v.get("name", "") if isinstance(v, dict) else ""
        if not n or not DNS_LABEL.match(n):
            causes.append(
                (f"spec.volumes[{i}].name", f'Invalid value: "{n}": must be a lowercase RFC 1123 label')
            )
        elif n in vol_names:
            causes.append((f"spec.volumes[{i}].name", f'Duplicate value: "{n}"'))
        vol_names.add(n)
    if not spec.get("containers"):
        causes.append(("spec.containers", "Required value"))
    names: set[str] = set()
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            where = f"spec.{group}[{i}]"
            if not isinstance(c, dict):
                causes.append((where, "Invalid value: must be an object"))
                continue
            n = c.get("name", "")
            if not n or not DNS_LABEL.match(n):
                causes.append((f"{where}.name", f'Invalid value: "{n}": must be a lowercase RFC 1123 label'))
            elif n in names:
                causes.append((f"{where}.name", f'Duplicate value: "{n}"'))
            names.add(n)
            if not c.get("image"):
                causes.append((f"{where}.image", "Required value"))
            if "restartPolicy" in c and not (group == "initContainers" and c["restartPolicy"] == "Always"):
                causes.append(
                    (
                        f"{where}.restartPolicy",
                        f'Unsupported value: "{c["restartPolicy"]}": '
                        'supported values: "Always" (init containers only)',
                    )
                )
            paths: set[str] = set()
            for j, m in enumerate(c.get("volumeMounts") or []):
                if m.get("name") not in vol_names:
                    causes.append((f"{where}.volumeMounts[{j}].name", f'Not found: "{m.get("name")}"'))
                if not m.get("mountPath"):
                    causes.append((f"{where}.volumeMounts[{j}].mountPath", "Required value"))
                elif m["mountPath"] in paths:
                    causes.append(
                        (
                            f"{where}.volumeMounts[{j}].mountPath",
                            f'Invalid value: "{m["mountPath"]}": must be unique',
                        )
                    )
                paths.add(m.get("mountPath", ""))
            for j, e in enumerate(c.get("env") or []):
                if not _ENV_NAME.match(str(e.get("name", ""))):
                    causes.append(
                        (
                            f"{where}.env[{j}].name",
                            f'Invalid value: "{e.get("name", "")}": a valid '
                            "environment variable name must consist of alphabetic characters, digits, "
                            "'_', '-', or '.', and must not start with a digit",
                        )
                    )
                if "value" in e and not isinstance(e["value"], str):
                    causes.append((f"{where}.env[{j}].value", "Invalid value: must be a string"))
    return causes


_SECRET_TYPE_TLS = "kubernetes.io/tls"


def _validate_secret(secret: dict[str, Any]) -> Causes:
    causes: Causes = []
    for k, v in (secret.get("data") or {}).items():
        try:
            base64.b64decode(v, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise bad_request(
                f"illegal base64 data in Secret data[{k!r}]: Secret.data values are base64; "
                "use stringData for plain text"
            ) from None
    if secret.get("type") == _SECRET_TYPE_TLS:  # ValidateSecret: the TLS type needs both keys
        data = secret.get("data") or {}
        causes += [(f"data[{k}]", "Required value") for k in ("tls.crt", "tls.key") if k not in data]
    return causes


def _validate_webhooks(cfg: dict[str, Any]) -> Causes:
    causes: Causes = []
    seen: set[str] = set()
    for i, wh in enumerate(cfg.get("webhooks") or []):
        where = f"webhooks[{i}]"
        name = wh.get("name", "")
        if not name or "." not in name:
            causes.append(
                (
                    f"{where}.name",
                    f'Invalid value: "{name}": should be a domain with at least three '
                    "segments separated by dots",
                )
            )
        elif name in seen:
            causes.append((f"{where}.name", f'Duplicate value: "{name}"'))
        seen.add(name)
        if wh.get("sideEffects") not in ("None", "NoneOnDryRun"):
            causes.append(
                (f"{where}.sideEffects", 'Unsupported value: supported values: "None", "NoneOnDryRun"')
            )
        if not wh.get("admissionReviewVersions"):
            causes.append((f"{where}.admissionReviewVersions", "Required value"))
        if wh.get("failurePolicy") not in ("Fail", "Ignore"):
            causes.append((f"{where}.failurePolicy", 'Unsupported value: supported values: "Fail", "Ignore"'))
        t = wh.get("timeoutSeconds")
        if not isinstance(t, int) or not 1 <= t <= 30:
            causes.append(
                (
                    f"{where}.timeoutSeconds",
                    "Invalid value: the timeout value must be between 1 and 30 seconds",
                )
            )
        cc = wh.get("clientConfig") or {}
        if bool(cc.get("url")) == bool(cc.get("service")):
            causes.append(
                (f"{where}.clientConfig", "Required value: exactly one of url or service is required")
            )
        elif cc.get("url") and not str(cc["url"]).startswith("https://"):
            causes.append(
                (f"{where}.clientConfig.url", "Unsupported value: 'https' is the only allowed URL scheme")
            )
        if cc.get("caBundle"):
            try:
                base64.b64decode(cc["caBundle"], validate=True)
            except (binascii.Error, TypeError, ValueError):
                causes.append((f"{where}.clientConfig.caBundle", "Invalid value: must be base64"))
    return causes


def _validate_core_event(ev: dict[str, Any]) -> Causes:
    causes: Causes = []
    ns = (ev.get("metadata") or {}).get("namespace")
    inv = ev.get("involvedObject") or {}
    if inv.get("namespace") and inv["namespace"] != ns:
        causes.append(
            (
                "involvedObject.namespace",
                f'Invalid value: "{inv["namespace"]}": does not match event.namespace ({ns})',
            )
        )
    if not inv.get("namespace") and ns not in ("default", None):
        causes.append(
            (
                "involvedObject.namespace",
                'Invalid value: an event about a cluster-scoped object must be in the "default" namespace',
            )
        )
    if ev.get("type") not in (None, "", "Normal", "Warning"):
        causes.append(
            ("type", f'Unsupported value: "{ev.get("type")}": supported values: "Normal", "Warning"')
        )
    return causes


def _validate_events_v1(ev: dict[str, Any]) -> Causes:
    causes: Causes = []
    for field in ("eventTime", "reportingController", "reportingInstance", "action", "reason"):
        if not ev.get(field):
            causes.append((field, "Required value"))
    if ev.get("type") not in ("Normal", "Warning"):
        causes.append(
            ("type", f'Unsupported value: "{ev.get("type")}": supported values: "Normal", "Warning"')
        )
    ns = (ev.get("metadata") or {}).get("namespace")
    reg = ev.get("regarding") or {}
    if reg.get("namespace") and reg["namespace"] != ns:
        causes.append(
            ("regarding.namespace", f'Invalid value: "{reg["namespace"]}": does not match event.namespace')
        )
    if len(str(ev.get("note") or "")) > 1024:
        causes.append(("note", "Too long: must have at most 1024 bytes"))
    return causes


_VALIDATORS = {
    ("", "Event"): _validate_core_event,
    ("events.k8s.io", "Event"): _validate_events_v1,
    ("", "Pod"): _validate_pod,
    ("", "Secret"): _validate_secret,
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"): _validate_webhooks,
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"): _validate_webhooks,
}

_POD_MUTABLE_MESSAGE = (
    "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to "
    "existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
    "previously negative)"
)


def validate_update(rt: ResourceType, old: dict[str, Any], new: dict[str, Any]) -> Causes:
    """Rules about what an update may change (pods: spec is mostly immutable; a Secret's type is fixed)."""
    if (rt.group, rt.kind) == ("", "Secret"):
        # ValidateSecretUpdate: ValidateImmutableField(newSecret.Type, oldSecret.Type); an update
        # without a type was defaulted to Opaque first, so it too is refused for any other type
        if new.get("type") != old.get("type"):
            return [("type", f'Invalid value: "{new.get("type")}": field is immutable')]
        return []
    if (rt.group, rt.kind) != ("", "Pod"):
        return []

    def strip(spec: dict[str, Any]) -> dict[str, Any]:
        s = copy.deepcopy(spec)
        for group in ("containers", "initContainers"):
            for c in s.get(group) or []:
                if isinstance(c, dict):
                    c.pop("image", None)
        for k in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
            s.pop(k, None)
        return s

    if strip(old.get("spec") or {}) != strip(new.get("spec") or {}):
        return [("spec", _POD_MUTABLE_MESSAGE)]
    return []
