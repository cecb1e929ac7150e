"""Hypothesis strategies: JSON values, AdmissionReviews, and structurally plausible pods.

``pods()`` draws pods the API server would accept (unique DNS-label container names, mounts that
name volumes, quantities that parse) with random taskcreds annotations, labels and containers;
a minority get a malformed annotation or a reserved name so denials are reached too.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from taskcreds import names

__all__ = [
    "json_values",
    "json_objects",
    "reviews_of",
    "pods",
    "FIXTURE_REVIEW",
    "field_paths",
    "review_bytes",
]

FIXTURE_REVIEW: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "admission" / "opted-in-pod.json").read_text()
)

# every JSON scalar, unicode included (hypothesis' text excludes lone surrogates: JSON can't carry them)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=25,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)


def review_bytes(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def reviews_of(
    pod: dict[str, Any], operation: str = "CREATE", namespace: str | None = "team-a"
) -> dict[str, Any]:
    """An admission.k8s.io/v1 AdmissionReview for ``pod``, shaped like the kube-apiserver's."""
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": operation,
        "userInfo": {"username": "system:serviceaccount:team-a:dispatcher"},
        "object": pod,
        "oldObject": None,
        "dryRun": False,
    }
    if namespace is not None:
        request["namespace"] = namespace
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def field_paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path inside ``doc`` (dict keys and list indices), the root excluded."""
    out: list[tuple[Any, ...]] = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        out.append(prefix + (key,))
        out += field_paths(value, prefix + (key,))
    return out


def replaced(doc: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> Any:
    """A copy of ``doc`` with the member at ``path`` set to ``value`` (or removed)."""
    out = copy.deepcopy(doc)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


# presence flags: hypothesis favours small integers, so weights are spelled out
often = st.sampled_from([True] * 11 + [False])
rarely = st.sampled_from([True] + [False] * 3)
dns_labels = st.from_regex(r"\A[a-z]([-a-z0-9]{0,10}[a-z0-9])?\Z")
# annotation values a person (or a confused agent) might write; most valid, some not
_good_task = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z")
task_ids = st.one_of(
    _good_task,
    _good_task,
    _good_task,
    _good_task,
    st.sampled_from(["", "-lead", "a" * 129, "täsk", "fix issue"]),
)
_good_credentials = st.lists(dns_labels, min_size=1, max_size=4).map(",".join)
credential_lists = st.one_of(
    _good_credentials,
    _good_credentials,
    _good_credentials,
    _good_credentials,
    st.sampled_from(["", ",", "GitHub", "a,,b", "x" * 254, ",".join(f"c{i}" for i in range(17))]),
)
durations = st.one_of(
    st.sampled_from(["90s", "15m", "1h"]),
    st.sampled_from(["90s", "15m", "1h30m", "500ms", "2h", "0s", "-5m", "soon", "15", "1e3s"]),
    st.integers(1, 10_000).map(lambda n: f"{n}s"),
    st.text(max_size=8),
)
statuses = st.sampled_from(["running", "pending"] * 4 + [*names.TASK_STATUSES, "RUNNING", "done", ""])
mount_paths = st.sampled_from(
    [
        "/creds",
        "/creds",
        "/secrets/task",
        "/creds",
        "/run/taskcreds",
        "/workspace",
        "relative",
        "/",
        "/a/../b",
        "/run/secrets/kubernetes.io/serviceaccount",
        "/c:d",
        "/créds",
        "/x//y/",
    ]
)
label_values = st.from_regex(r"\A([A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?)?\Z")
env_names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,15}\Z")


@st.composite
def containers(draw: st.DrawFn, names_: list[str], volumes: list[str], init: bool) -> list[dict[str, Any]]:
    out = []
    paths = ["/workspace", "/cache", "/home/agent", "/var/log", "/tmp", "/run", "/run/taskcreds", "/creds"]
    for name in names_:
        c: dict[str, Any] = {"name": name, "image": draw(st.sampled_from(["alpine:3", "ghcr.io/x/agent:1"]))}
        if volumes and draw(st.booleans()):
            mounts = draw(
                st.lists(
                    st.tuples(st.sampled_from(volumes), st.sampled_from(paths)),
                    max_size=3,
                    unique_by=lambda t: t[1],
                )
            )
            c["volumeMounts"] = [
                {"name": v, "mountPath": p, "readOnly": draw(st.booleans())} for v, p in mounts
            ]
        if draw(st.booleans()):
            env = draw(
                st.lists(st.tuples(env_names, st.text(max_size=30)), max_size=3, unique_by=lambda t: t[0])
            )
            c["env"] = [{"name": n, "value": v} for n, v in env]
            if draw(st.integers(0, 4)) == 0:
                c["env"].append({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}})
            if draw(st.integers(0, 9)) == 0:
                c["env"].append({"name": names.ENV_DIR, "value": draw(st.sampled_from(paths))})
        if draw(st.integers(0, 5)) == 0:
            c["envFrom"] = [{"secretRef": {"name": "legacy"}}]
        if draw(st.booleans()):
            c["ports"] = [{"containerPort": draw(st.sampled_from([8080, 9090, 9091, 3000]))}]
        if draw(st.booleans()):
            c["resources"] = {
                "requests": {
                    "cpu": draw(st.sampled_from(["100m", "1", "0.5"])),
                    "memory": draw(st.sampled_from(["64Mi", "1Gi", "500M"])),
                }
            }
        if init and draw(st.booleans()):
            c["restartPolicy"] = "Always"
        if draw(st.booleans()):
            c["command"] = draw(st.lists(st.text(max_size=10), max_size=3))
        out.append(c)
    return out


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    """A pod the API server would accept, with random taskcreds annotations, labels and containers."""
    all_names = draw(st.lists(dns_labels, min_size=1, max_size=5, unique=True))
    if (
        draw(st.integers(0, 15)) == 0 and names.SIDECAR_CONTAINER not in all_names
    ):  # the name taskcreds reserves
        all_names.append(names.SIDECAR_CONTAINER)
    split = draw(st.integers(0, len(all_names) - 1))
    init_names, regular = all_names[:split], all_names[split:]
    volumes = draw(st.lists(st.sampled_from(["work", "cache", "home", "data"]), max_size=3, unique=True))
    if draw(st.integers(0, 12)) == 0:  # a name taskcreds reserves
        volumes.append(draw(st.sampled_from(["taskcreds", "taskcreds-podinfo", "spiffe-workload-api"])))
    spec: dict[str, Any] = {"containers": draw(containers(regular, volumes, init=False))}
    if init_names:
        spec["initContainers"] = draw(containers(init_names, volumes, init=True))
    if volumes:
        spec["volumes"] = [{"name": v, "emptyDir": {}} for v in volumes]
    security = draw(st.sampled_from([None, {}, {"fsGroup": 1000}, {"runAsUser": 1000, "runAsNonRoot": True}]))
    if security is not None:
        spec["securityContext"] = security
    for key, strategy in (
        ("serviceAccountName", dns_labels),
        ("restartPolicy", st.sampled_from(["Never", "Always"])),
        ("hostNetwork", st.sampled_from([False] * 7 + [True])),  # True is denied early: keep it rare
    ):
        if draw(st.booleans()):
            spec[key] = draw(strategy)

    labels = draw(st.dictionaries(dns_labels, label_values, max_size=3))
    inject = draw(st.sampled_from(["true"] * 8 + ["false", "True", None]))
    if inject is not None:
        labels[names.LABEL_INJECT] = inject
    annotations: dict[str, str] = draw(
        st.dictionaries(
            st.sampled_from(
                [
                    "note",
                    "example.com/owner",
                    "kubectl.kubernetes.io/last-applied-configuration",
                    "taskcreds.io/ttls",
                    "taskcreds.io/unknown",
                ]
            ),
            st.text(max_size=40),
            max_size=3,
        )
    )
    if draw(often):
        annotations[names.ANNOTATION_TASK] = draw(task_ids)
    if draw(often):
        annotations[names.ANNOTATION_CREDENTIALS] = draw(credential_lists)
    optional = (
        (names.ANNOTATION_TTL, durations),
        (names.ANNOTATION_MAX_DURATION, durations),
        (names.ANNOTATION_TASK_STATUS, statuses),
        (names.ANNOTATION_MOUNT_PATH, mount_paths),
        (
            names.ANNOTATION_CONTAINERS,
            st.lists(st.sampled_from(all_names + ["missing", "Bad_Name"]), min_size=1, max_size=3).map(
                ",".join
            ),
        ),
        (names.ANNOTATION_INJECTED, st.sampled_from(["0.1.0", "0.0.1"])),
    )
    for key, strategy in optional:
        if draw(rarely):
            annotations[key] = draw(strategy)
    metadata: dict[str, Any] = {"labels": labels, "annotations": annotations, "namespace": "team-a"}
    metadata["name" if draw(st.booleans()) else "generateName"] = "agent-"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
