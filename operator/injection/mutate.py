"""The mutation pipeline: should-inject -> parse -> validate -> build -> JSONPatch. No I/O.

Everything is checked before a single operation is produced, so a pod is either injected whole
or denied untouched. The input is never modified and never deep-copied (this is the webhook's
hot path); patch values are fresh objects.

Reinvocation (``reinvocationPolicy: IfNeeded``, retries, ``taskcreds inject`` output applied to
a cluster): a pod carrying ``taskcreds.io/injected`` is completed, not injected again — only
what is missing is added (say, a container another webhook added since), and when nothing is
missing the outcome is ``skipped`` with an empty patch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, Literal

from taskcreds.operator.annotations import (
    PUBLIC_ANNOTATIONS,
    AnnotationError,
    normal_path,
    parse_request,
    shown,
    unknown_annotations,
)
from taskcreds.operator.config import InjectionConfig
from taskcreds.operator.injection import builders
from taskcreds.operator.injection.patch import add_to_list, escape

import taskcreds
from taskcreds import names

__all__ = [
    "MutationResult",
    "CredentialCheck",
    "DeliveryLookup",
    "PROXY_ENV",
    "MAX_MESSAGE",
    "Outcome",
    "mutate_pod",
    "should_inject",
    "NOT_MUTATED_OPERATIONS",
]

Outcome = Literal["injected", "skipped", "denied"]
CredentialCheck = Callable[[str, str, str], "str | None"]
"""(namespace, service account, credential) -> a denial reason, or None when granted."""
DeliveryLookup = Callable[[str, str], "tuple[str, Any]"]
"""(namespace, credential) -> ("file" | "proxy", the source's proxy settings or None)."""

#: env names set in every selected container when a credential is delivered by the sidecar's proxy
PROXY_ENV: Final = builders.PROXY_ENV_NAMES
#: every denial and warning is cut to this many characters (user input can be a megabyte)
MAX_MESSAGE: Final = 1024
#: at most this many static-secret findings are listed one by one
_MAX_LISTED: Final = 5

NOT_MUTATED_OPERATIONS: Final = frozenset({"UPDATE", "DELETE", "CONNECT"})
_SIDECAR_PATHS: Final = frozenset(
    {names.SIDECAR_PODINFO_PATH, names.SIDECAR_SPIFFE_PATH, names.SIDECAR_TOKEN_PATH}
)
_INJECTED_PATH: Final = "/metadata/annotations/" + escape(names.ANNOTATION_INJECTED)


@dataclass(frozen=True)
class MutationResult:
    """What the webhook answers: the outcome, the JSONPatch, warnings and a message for people."""

    outcome: Outcome
    patch: list[dict[str, Any]] = field(default_factory=list)
    """RFC 6902 operations against the object given; [] when skipped or denied."""
    warnings: list[str] = field(default_factory=list)
    message: str | None = None
    """Why it was denied (or skipped); None when injected."""


class _Denied(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _bounded(message: str) -> str:
    """At most MAX_MESSAGE characters: the API server passes messages on to clients and audit logs."""
    return message if len(message) <= MAX_MESSAGE else shown(message, MAX_MESSAGE - 30)


def should_inject(pod: dict[str, Any], operation: str = "CREATE") -> str | None:
    """None when the pod is ours to inject; otherwise why it is skipped."""
    if operation != "CREATE":
        return f"operation {operation}: pods are injected only when they are created"
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    if labels.get(names.LABEL_INJECT) != "true":
        return f'not opted in: the pod has no label {names.LABEL_INJECT}: "true"'
    return None


def _nested(a: str, b: str) -> bool:
    """Equal, or one inside the other: two mounts that would shadow each other's files."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


@lru_cache(maxsize=256)
def _overlaps_sidecar(mount_path: str) -> bool:
    """Whether the agent mount would shadow (or be shadowed by) one of the sidecar's own mounts.

    Remembered: nearly every pod uses the configured default, so this is one dict lookup.
    """
    return any(_nested(mount_path, own) for own in _SIDECAR_PATHS)


def _same_path(raw: Any, mount_path: str) -> bool:
    """``normal_path(str(raw)) == mount_path`` without normalizing paths that are already normal.

    ``mount_path`` is absolute and normal, so only an absolute ``raw`` can match, and an absolute path
    without ``//``, ``/.`` or a trailing ``/`` is its own normal form.
    """
    text = raw if type(raw) is str else str(raw)
    if text == mount_path:
        return True
    if "//" in text or "/." in text or text.endswith("/"):
        return normal_path(text) == mount_path
    return False


def _at_or_below(raw: Any, mount_path: str) -> bool:
    """``raw`` is ``mount_path`` or inside it. At the same path it hides the credentials; inside it,
    the container runtime must make the mount point in the (read-only) credentials volume: the
    container fails to start, or the sidecar refuses a directory it did not make."""
    if _same_path(raw, mount_path):
        return True
    text = raw if type(raw) is str else str(raw)
    if not text.startswith(mount_path + "/"):
        if "//" not in text and "/." not in text:
            return False
        text = normal_path(text)
    return text.startswith(mount_path + "/")


def _label_warnings(pod: dict[str, Any]) -> list[str]:
    """A skipped pod whose label was meant to opt in (YAML turned "true" into a boolean)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    value = labels.get(names.LABEL_INJECT) if isinstance(labels, dict) else None
    if value is None or value == "true" or value == "false":
        return []
    return [
        f'label {names.LABEL_INJECT} is {value!r}, not the string "true": the pod is not injected '
        '(quote it in YAML: "true")'
    ]


def _service_account(spec: dict[str, Any]) -> str:
    return spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"


def _describe_available(containers: list[dict[str, Any]], init: list[dict[str, Any]]) -> str:
    found = [c.get("name") for c in containers] + [c.get("name") for c in init]
    return shown(", ".join(shown(n, 63) for n in found if n and n != names.SIDECAR_CONTAINER) or "none", 300)


def _select(spec: dict[str, Any], wanted: tuple[str, ...] | None) -> list[tuple[str, int, dict[str, Any]]]:
    """(list key, index, container) for every container that gets the mount."""
    containers = spec.get("containers") or []
    init = spec.get("initContainers") or []
    if wanted is None:
        return [("containers", i, c) for i, c in enumerate(containers)]
    by_name: dict[str, tuple[str, int, dict[str, Any]]] = {}
    for i, c in enumerate(init):
        by_name.setdefault(c.get("name"), ("initContainers", i, c))
    for i, c in enumerate(containers):
        by_name[c.get("name")] = ("containers", i, c)
    raw = shown(",".join(wanted), 200)
    if names.SIDECAR_CONTAINER in wanted:
        raise _Denied(
            f'{names.ANNOTATION_CONTAINERS}: "{raw}" names {names.SIDECAR_CONTAINER}, which taskcreds '
            "adds itself; accepted: names of the pod's own containers "
            f"({_describe_available(containers, init)})"
        )
    missing = [n for n in wanted if n not in by_name]
    if missing:
        eph = {c.get("name") for c in spec.get("ephemeralContainers") or []}
        extra = " (ephemeral containers cannot get the mount)" if eph & set(missing) else ""
        absent = shown(", ".join(map(repr, missing)), 200)
        raise _Denied(
            f'{names.ANNOTATION_CONTAINERS}: "{raw}" names {absent}, which '
            f"the pod does not have{extra}; accepted: names of its containers or init containers "
            f"({_describe_available(containers, init)})"
        )
    return [by_name[n] for n in wanted]


def _network_warnings(spec: dict[str, Any], config: InjectionConfig, proxy: bool = False) -> list[str]:
    """Ports the sidecar needs that the pod already claims (host networking is denied outright)."""
    found = []
    ours = {config.sidecar.probe_port: "probePort", config.sidecar.local_port: "localPort"}
    if proxy:
        ours[config.sidecar.proxy_port] = "proxyPort"
    for group in (spec.get("initContainers") or (), spec["containers"]):
        for c in group:
            ports = c.get("ports")
            if not ports:
                continue
            for port in ports:
                number = port.get("containerPort")
                if number in ours:
                    found.append(
                        f"container {c.get('name')!r} declares port {number}, which the sidecar listens on; "
                        f"set sidecar.{ours[number]} in the injection config to a free port"
                    )
    return found


def _check_isolation(spec: dict[str, Any], proxied: list[str]) -> None:
    """Refuse pod shapes that undo the agent/sidecar boundary (docs/threat-model.md, boundary 1).

    Every check is fail closed: a pod that asks for host namespaces or a shared PID namespace
    gets no sidecar at all rather than one whose token, socket or loopback listeners others reach.
    ``proxied`` names the credentials delivered by the sidecar's proxy (for the message).
    """
    if spec.get("hostNetwork"):
        listed = ", ".join(repr(shown(c, 63)) for c in proxied[:3]) + (", ..." if len(proxied) > 3 else "")
        proxy = (
            f" (credential {listed} is delivered by that proxy)"
            if len(proxied) == 1
            else f" (credentials {listed} are delivered by that proxy)"
            if proxied
            else ""
        )
        raise _Denied(
            "spec.hostNetwork: true puts the sidecar's unauthenticated loopback listeners on the node's "
            "loopback, where every host-network process on the node reaches them: the egress proxy, "
            f"which adds this pod's credentials to requests{proxy}, and /v1/redact, which confirms "
            "guesses of the credential values; accepted: hostNetwork false or absent (an injected "
            "pod needs its own network namespace)"
        )
    for field_name in ("shareProcessNamespace", "hostPID"):
        if spec.get(field_name):
            raise _Denied(
                f"spec.{field_name}: true lets the agent containers see the sidecar's processes and, "
                "through /proc/<pid>/root, reach its service-account token and SPIFFE socket (enough to "
                f"ask the broker for credentials itself); accepted: {field_name} false or absent"
            )
    pod_os = spec.get("os")
    if isinstance(pod_os, dict) and pod_os.get("name") == "windows":
        where = "spec.os.name"
    elif (spec.get("nodeSelector") or {}).get("kubernetes.io/os") == "windows":
        where = "spec.nodeSelector kubernetes.io/os"
    else:
        return
    raise _Denied(
        f"{where}: windows: the taskcreds sidecar runs on Linux only (and its Linux security "
        "settings are invalid in a Windows pod); accepted: spec.os.name linux or absent, on Linux nodes"
    )


def _writable_mounts(spec: dict[str, Any], warnings: list[str]) -> list[str]:
    """JSON pointers of ``readOnly`` for every mount of the credentials volume that lacks it.

    CONTRACT.md promises agents a read-only mount and the writer trusts that only the sidecar
    writes the directory, so a container that already mounts it writable gets ``readOnly: true``
    (with a warning). The sidecar's own mount (an already injected pod) is left alone.
    """
    found = []
    for key in ("containers", "initContainers"):
        for i, c in enumerate(spec.get(key) or ()):
            if c.get("name") == names.SIDECAR_CONTAINER:
                continue
            for j, m in enumerate(c.get("volumeMounts") or ()):
                if m.get("name") == names.VOLUME_CREDENTIALS and m.get("readOnly") is not True:
                    found.append(f"/spec/{key}/{i}/volumeMounts/{j}/readOnly")
                    warnings.append(
                        f"container {shown(c.get('name'), 63)!r} mounts volume {names.VOLUME_CREDENTIALS} "
                        "without readOnly: true; taskcreds makes that mount read-only (only the sidecar "
                        "writes the credential directory)"
                    )
    return found


def _missing_proxy_env(
    container: dict[str, Any], wanted: list[dict[str, Any]], warnings: list[str]
) -> list[dict[str, Any]]:
    """The proxy env entries ``container`` lacks; one it sets otherwise is kept, with a warning.

    An entry equal to ours counts as present (reinvocation adds nothing). A proxy variable the
    container sets in the other spelling (``HTTPS_PROXY`` for ``https_proxy``) is its choice too:
    most tools read the lower-case name first, so adding ours would silently override it.
    """
    own = {var.get("name"): var for var in container.get("env") or ()}
    missing = []
    for entry in wanted:
        found = own.get(entry["name"])
        if found is None:
            twin = own.get(entry["name"].swapcase()) if entry["name"].swapcase() in PROXY_ENV else None
            if twin is None or (twin.get("value") == entry["value"] and "valueFrom" not in twin):
                missing.append(entry)
        elif found.get("value") != entry["value"] or "valueFrom" in found:
            warnings.append(
                f"container {shown(container.get('name'), 63)!r} sets {entry['name']} itself, so taskcreds "
                f"leaves it as it is; credentials delivered by proxy need {entry['name']}={entry['value']} "
                "in that container (remove its own value to let taskcreds set it)"
            )
    return missing


def _static_secrets(container: dict[str, Any]) -> list[str]:
    """Env variables (and envFrom sources) that put a Kubernetes Secret into the container's environment."""
    found = []
    for var in container.get("env") or ():
        value_from = var.get("valueFrom")
        if value_from and value_from.get("secretKeyRef"):
            ref = value_from["secretKeyRef"].get("name")
            found.append(f"env {shown(var.get('name'), 100)} (secretKeyRef {shown(ref, 100)})")
    for source in container.get("envFrom") or ():
        ref = source.get("secretRef")
        if ref:
            found.append(f"envFrom secretRef {shown(ref.get('name'), 100)}")
    return found


def _check_names(
    spec: dict[str, Any], containers: list[Any], init: list[Any], present_volumes: set[Any], already: bool
) -> None:
    """Refuse a pod that already uses a volume or container name taskcreds reserves.

    A pod that says it is injected (``taskcreds.io/injected``) legitimately has our volumes and our
    init container, but a regular or ephemeral container by the sidecar's name is never ours: the
    annotation is only a claim, and adding our sidecar beside it would duplicate the name.
    """
    if already:
        init = []
    clash = [] if already else [n for n in builders.OUR_VOLUMES if n in present_volumes]
    if clash:
        raise _Denied(
            f"spec.volumes: the pod already has a volume named {', '.join(map(repr, clash))}, a name "
            "taskcreds reserves; accepted: any other volume names "
            f"(reserved: {', '.join(builders.OUR_VOLUMES)})"
        )
    sidecar = names.SIDECAR_CONTAINER
    taken = False
    for group in (containers, init, spec.get("ephemeralContainers") or ()):
        for c in group:  # every one is looked at: a malformed entry is refused as such
            if c.get("name") == sidecar:
                taken = True
    if taken:
        raise _Denied(
            f"the pod already has a container named {sidecar!r}, a name taskcreds "
            "reserves (whether or not the pod carries "
            f"{names.ANNOTATION_INJECTED}); accepted: any other container name"
        )


def _plan(
    pod: dict[str, Any],
    config: InjectionConfig,
    namespace: str | None,
    credential_check: CredentialCheck | None,
    encoded: bool = False,
    delivery: DeliveryLookup | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Check everything, then build the operations. Raises _Denied before producing any.

    This is the webhook's hot path: the common case (no denial, no warning) runs straight through
    with few calls; helpers and messages are for the rare cases.
    """
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    spec = pod.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list) or not spec["containers"]:
        raise _Denied(
            "the pod has no spec.containers; accepted: a pod (or pod template) with at least one container"
        )
    try:
        request = parse_request(annotations)
    except AnnotationError as exc:
        raise _Denied(str(exc)) from None
    if request.task_status in names.TERMINAL_STATUSES:
        raise _Denied(
            f'{names.ANNOTATION_TASK_STATUS}: "{request.task_status}" is terminal, so this pod could '
            f"never get credentials; accepted when a pod is created: pending, running (or no annotation)"
        )
    unknown = unknown_annotations(annotations)
    warnings = (
        [f"{key}: unknown annotation, ignored (known: {', '.join(PUBLIC_ANNOTATIONS)})" for key in unknown]
        if unknown
        else []
    )

    already = names.ANNOTATION_INJECTED in annotations
    mount_path = request.mount_path or config.injection.mount_path
    if _overlaps_sidecar(mount_path):
        raise _Denied(
            f'{names.ANNOTATION_MOUNT_PATH}: "{mount_path}" overlaps where the sidecar mounts its own '
            f"volumes ({', '.join(sorted(_SIDECAR_PATHS))}); accepted: any other absolute path "
            "(default /run/taskcreds)"
        )
    containers = spec["containers"]
    init = spec.get("initContainers") or []
    volumes = spec.get("volumes") or []
    present_volumes = {v.get("name") for v in volumes}
    sidecar_present = False
    for c in init:
        if c.get("name") == names.SIDECAR_CONTAINER:
            sidecar_present = True
            break
    _check_names(spec, containers, init, present_volumes, already)
    ns = namespace or metadata.get("namespace") or "default"
    proxied: list[str] = []
    if delivery is not None:
        for credential in request.credentials:
            if delivery(ns, credential)[0] == "proxy":
                proxied.append(credential)
    proxy = bool(proxied)
    _check_isolation(spec, proxied)

    if request.containers is None:  # the common case: every regular container
        selected = [("containers", i, c) for i, c in enumerate(containers)]
    else:
        selected = _select(spec, request.containers)
    secret_use: list[str] = []
    changes: list[tuple[str, dict[str, Any], bool, bool, list[dict[str, Any]]]] = []
    wanted_proxy_env = builders.pieces(config).proxy_env(mount_path) if proxy else []
    for key, index, container in selected:
        mounts = container.get("volumeMounts") or ()
        has_mount = False
        for m in mounts:
            if m.get("name") == names.VOLUME_CREDENTIALS:
                has_mount = True
                break
        if not has_mount:
            for m in mounts:
                if _at_or_below(m.get("mountPath", ""), mount_path):
                    raise _Denied(
                        f'{names.ANNOTATION_MOUNT_PATH}: "{mount_path}" collides with the mount of volume '
                        f"{m.get('name')!r} in container {container.get('name')!r}; accepted: a path no "
                        f"selected container mounts anything at or below (set {names.ANNOTATION_MOUNT_PATH})"
                    )
        has_env = False
        has_secret = False
        for var in container.get("env") or ():
            if var.get("name") == names.ENV_DIR:
                if var.get("value") != mount_path or "valueFrom" in var:
                    raise _Denied(
                        f"container {container.get('name')!r} sets {names.ENV_DIR} itself; accepted: no "
                        f"{names.ENV_DIR} (taskcreds sets it to {mount_path})"
                    )
                has_env = True
            elif not has_secret and "valueFrom" in var:
                has_secret = True
        if has_secret or container.get("envFrom"):
            cname = container.get("name")
            secret_use += [f"container {cname!r}: {s}" for s in _static_secrets(container)]
        proxy_env = _missing_proxy_env(container, wanted_proxy_env, warnings) if proxy else []
        if not (has_mount and has_env) or proxy_env:
            changes.append((f"/spec/{key}/{index}", container, not has_mount, not has_env, proxy_env))
    read_only = _writable_mounts(spec, warnings)
    if secret_use:
        listed = secret_use[:_MAX_LISTED]
        more = len(secret_use) - len(listed)
        if config.injection.strict:
            raise _Denied(
                "static secrets in an agent container's environment are refused (strict mode): "
                + "; ".join(listed)
                + (f"; and {more} more" if more else "")
                + f"; accepted: credentials through {names.ANNOTATION_CREDENTIALS} (a CredentialSource "
                "with delivery: proxy keeps the value out of the agent altogether)"
            )
        warnings += [
            f"{s} puts a static Kubernetes Secret into the agent's environment; prefer a taskcreds "
            "credential (consider a CredentialSource with delivery: proxy so the agent never holds the value)"
            for s in listed
        ]
        if more:
            warnings.append(f"and {more} more static Secret references in the agent's environment")

    if credential_check is not None:
        sa = _service_account(spec)
        for credential in request.credentials:
            reason = credential_check(ns, sa, credential)
            if reason:
                raise _Denied(
                    f'{names.ANNOTATION_CREDENTIALS}: credential "{credential}" is not granted to '
                    f"service account {sa!r} in namespace {ns!r}: {reason}"
                )

    pod_security = spec.get("securityContext") or {}
    if not already and not sidecar_present:
        warnings += _network_warnings(spec, config, proxy)
        if not pod_security.get("runAsUser") and pod_security.get("fsGroup") is None:
            warnings.append(
                "the pod sets neither securityContext.runAsUser nor fsGroup: credential files (mode 0440, "
                f"uid {builders.SIDECAR_RUN_AS_USER}) are readable only by root in the agent containers; "
                "set spec.securityContext.fsGroup or runAsUser"
            )
        elif not builders.own_user(pod_security):
            warnings.append(
                f"the pod sets securityContext.runAsUser {shown(pod_security.get('runAsUser'), 20)} but no "
                "fsGroup: the sidecar runs as that uid too (the only way the agent can read the 0440 "
                "credential files), so only separate mounts keep the agent from the sidecar's token; set "
                "spec.securityContext.fsGroup to run the sidecar as its own uid "
                f"{builders.SIDECAR_RUN_AS_USER}"
            )

    # --- nothing can fail from here on: build the operations ---------------------------------
    parts = builders.pieces(config)
    ops: list[dict[str, Any]] = []
    if not already:
        if isinstance(metadata.get("annotations"), dict):
            ops.append({"op": "add", "path": _INJECTED_PATH, "value": taskcreds.__version__})
        else:
            ops.append(
                {
                    "op": "add",
                    "path": "/metadata/annotations",
                    "value": {names.ANNOTATION_INJECTED: taskcreds.__version__},
                }
            )
    new_volumes: list[Any]
    if encoded:
        new_volumes = parts.volumes_json(present_volumes)
    else:
        new_volumes = parts.volumes()
        if present_volumes:
            new_volumes = [v for v in new_volumes if v["name"] not in present_volumes]
    add_to_list(ops, spec, "volumes", "/spec", new_volumes)
    for base, container, mount, env, proxy_env in changes:
        if mount:
            add_to_list(ops, container, "volumeMounts", base, [builders.agent_mount(mount_path)])
        if env:
            add_to_list(ops, container, "env", base, [builders.agent_env(mount_path), *proxy_env])
        elif proxy_env:
            add_to_list(ops, container, "env", base, proxy_env)
    for path in read_only:
        ops.append({"op": "add", "path": path, "value": True})
    if not sidecar_present:  # last: it shifts the indices of existing init containers
        render = parts.sidecar_json if encoded else parts.sidecar
        sidecar = render(request, mount_path, pod_security, proxy)
        add_to_list(ops, spec, "initContainers", "/spec", [sidecar], at_start=True)
    return ops, warnings


def mutate_pod(
    pod: dict[str, Any],
    config: InjectionConfig,
    operation: str = "CREATE",
    *,
    namespace: str | None = None,
    credential_check: CredentialCheck | None = None,
    encoded: bool = False,
    delivery: DeliveryLookup | None = None,
) -> MutationResult:
    """Decide about one pod (or pod template) and return the JSONPatch that injects it.

    ``namespace`` is the admission request's namespace (a pod being created often has none in its
    metadata); ``credential_check`` asks policy whether the pod's service account may have each
    credential. ``pod`` is never modified.

    ``delivery`` says how each credential reaches the pod (:meth:`CredentialIndex.delivery
    <taskcreds.operator.credindex.CredentialIndex.delivery>`): when any is ``proxy``, every selected
    container gets the proxy and CA-bundle variables (paths and a loopback URL, never a value) and
    the sidecar its proxy listener; a variable a container already sets is left alone, with a warning.

    ``encoded=True`` is for callers that only serialize the patch (the webhook): the sidecar and
    volume values are then :class:`orjson.Fragment` (ready JSON, the same bytes ``orjson.dumps``
    writes for the dicts) instead of dicts, which saves building and encoding ~60 objects per pod.
    """
    try:
        skip = should_inject(pod, operation)
        if skip is not None:
            return MutationResult("skipped", [], _label_warnings(pod), skip)
        ops, warnings = _plan(pod, config, namespace, credential_check, encoded, delivery)
    except _Denied as denied:
        return MutationResult("denied", [], [], _bounded(denied.message))
    except (AttributeError, TypeError, KeyError) as exc:
        # the API server decodes pods into typed objects before admission, so only hand-written
        # YAML (taskcreds inject) gets here: say so instead of failing
        return MutationResult(
            "denied",
            [],
            [],
            f"the pod is not well-formed (a field has the wrong type or shape: "
            f"{type(exc).__name__}: {shown(exc, 200)}); accepted: a manifest the Kubernetes API accepts",
        )
    for i, warning in enumerate(warnings):
        if len(warning) > MAX_MESSAGE:
            warnings[i] = _bounded(warning)
    if not ops:
        return MutationResult("skipped", [], warnings, "already injected; nothing missing")
    return MutationResult("injected", ops, warnings, None)
