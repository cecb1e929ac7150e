"""Golden patches: ``mutate_pod``'s exact output for a fixed set of pods and configurations.

The files under tests/fixtures/golden/injection/ were written by the implementation *before* it
was optimized for the webhook's hot path (precomputed sidecar pieces, cheaper copies), so any
change in the bytes the API server receives — an operation, its order, a value, a warning, a
message — fails here. The version the ``taskcreds.io/injected`` annotation records is stored as
``{version}`` so a release does not rewrite them.

Regenerate only for a deliberate behaviour change, and review the diff:
``.venv/bin/python -m tests.operator.test_injection_golden --write``
"""

from __future__ import annotations

import copy
import functools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import pytest
import yaml
from taskcreds.operator import injection
from taskcreds.operator.config import InjectionConfig
from taskcreds.operator.injection import MutationResult, inject_object, mutate_pod

import taskcreds
from taskcreds import names

REPO = Path(__file__).resolve().parents[2]
PODS = REPO / "tests" / "fixtures" / "pods"
ADMISSION = REPO / "tests" / "fixtures" / "admission"
GOLDEN = REPO / "tests" / "fixtures" / "golden" / "injection"
VERSION_MARK = "{version}"

CONFIGS: dict[str, InjectionConfig] = {
    "default": InjectionConfig(),
    "strict": InjectionConfig.from_mapping({"injection": {"strict": True}}),
    # every knob that reaches the pod moved off its default
    "custom": InjectionConfig.from_mapping(
        {
            "sidecar": {
                "image": "registry.example.com/taskcreds/sidecar:9.9.9",
                "imagePullPolicy": "Always",
                "resources": {"requests": {}, "limits": {"memory": "64Mi"}},
                "probePort": 9300,
                "localPort": 9301,
            },
            "spiffe": {
                "socketSource": "hostPath",
                "hostPath": "/run/spire/sockets",
                "socketFile": "agent.sock",
            },
            "broker": {
                "url": "https://broker.example:443",
                "spiffeId": "spiffe://example.org/ns/tc/sa/broker",
            },
            "injection": {"mountPath": "/creds", "tmpfsSizeLimit": "4Mi", "tokenExpirationSeconds": 7200},
        }
    ),
}
POD_FILES = ["minimal.yaml", "full.yaml", "generate-name.yaml", "ephemeral.yaml", "static-secrets.yaml"]


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _pod(annotations: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """A small opted-in pod; keyword arguments go into spec (None values are kept: explicit nulls)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "labels": {names.LABEL_INJECT: "true"},
            "annotations": {
                names.ANNOTATION_TASK: "t-1",
                names.ANNOTATION_CREDENTIALS: "github",
                **(annotations or {}),
            },
        },
        "spec": {"containers": [{"name": "agent", "image": "agent:1"}], **spec},
    }


def _applied(pod: dict[str, Any], config: InjectionConfig = CONFIGS["default"]) -> dict[str, Any]:
    """The pod as the API server stores it after the first admission (plain dicts: jsonpatch copies them)."""
    return jsonpatch.apply_patch(pod, injection.mutate_pod(pod, config).patch)


def _with_extra_container(pod: dict[str, Any]) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    pod["spec"]["containers"].append({"name": "istio-proxy", "image": "istio/proxyv2:1.24.0"})
    return pod


Case = Callable[[], MutationResult]


def cases() -> Iterator[tuple[str, Case]]:
    """(name, thunk) for every golden case; thunks build their inputs fresh."""
    example_pod = REPO / "examples" / "agent-pod.yaml"
    pod_files = [(f.removesuffix(".yaml"), PODS / f) for f in POD_FILES] + [("example-pod", example_pod)]
    for stem, path in pod_files:
        for cname, config in CONFIGS.items():
            yield f"pod-{stem}-{cname}", lambda p=path, c=config: mutate_pod(_load(p), c)
        yield f"pod-{stem}-reinvoked", lambda p=path: mutate_pod(_applied(_load(p)), CONFIGS["default"])
        yield (
            f"pod-{stem}-reinvoked-extra-container",
            lambda p=path: mutate_pod(_with_extra_container(_applied(_load(p))), CONFIGS["default"]),
        )
    for path in sorted(ADMISSION.glob("*.json")):

        def review(p: Path = path) -> MutationResult:
            request = json.loads(p.read_text())["request"]
            return mutate_pod(
                request["object"],
                CONFIGS["default"],
                request["operation"],
                namespace=request.get("namespace"),
            )

        yield f"admission-{path.stem}", review
    for i, doc in enumerate(yaml.safe_load_all((PODS / "workloads.yaml").read_text())):
        yield (
            f"workload-{i}-{doc['kind']}",
            lambda d=doc: inject_object(copy.deepcopy(d), CONFIGS["default"])[1],
        )
    yield (
        "workload-example-deployment",
        lambda: inject_object(_load(REPO / "examples" / "agent-deployment.yaml"), CONFIGS["default"])[1],
    )

    variants: dict[str, tuple[dict[str, Any], InjectionConfig | None, str]] = {
        "root-user": (_pod(securityContext={"runAsUser": 0}), None, "CREATE"),
        "non-root-user": (_pod(securityContext={"runAsUser": 4242}), None, "CREATE"),
        "fs-group-only": (_pod(securityContext={"fsGroup": 3000}), None, "CREATE"),
        "ttl-and-deadline": (
            _pod(
                {names.ANNOTATION_TTL: "1500ms", names.ANNOTATION_MAX_DURATION: "2h"},
                securityContext={"fsGroup": 1},
            ),
            None,
            "CREATE",
        ),
        "many-credentials": (_pod({names.ANNOTATION_CREDENTIALS: " b, a,b ,c.d"}), None, "CREATE"),
        "explicit-nulls": (
            {**_pod(volumes=None, initContainers=None), "metadata": {**_pod()["metadata"]}},
            None,
            "CREATE",
        ),
        "no-other-annotations": (
            {
                "metadata": {
                    "labels": {names.LABEL_INJECT: "true"},
                    "annotations": {names.ANNOTATION_TASK: "t", names.ANNOTATION_CREDENTIALS: "x"},
                },
                "spec": {"containers": [{"name": "a", "image": "a"}]},
            },
            None,
            "CREATE",
        ),
        "mount-and-env-present": (
            _pod(
                containers=[
                    {
                        "name": "agent",
                        "image": "a",
                        "volumeMounts": [
                            {"name": "taskcreds", "mountPath": "/run/taskcreds", "readOnly": True}
                        ],
                        "env": [{"name": "TASKCREDS_DIR", "value": "/run/taskcreds"}],
                    },
                    {"name": "other", "image": "b", "env": [], "volumeMounts": []},
                ]
            ),
            None,
            "CREATE",
        ),
        "containers-annotation-init": (
            _pod(
                {names.ANNOTATION_CONTAINERS: "setup,agent", names.ANNOTATION_MOUNT_PATH: "/home/a/creds/"},
                initContainers=[{"name": "setup", "image": "s"}, {"name": "other", "image": "o"}],
            ),
            None,
            "CREATE",
        ),
        "escaped-annotation-keys": (
            _pod({"example.com/a~b": "x", "taskcreds.io/ttll": "1m"}),
            None,
            "CREATE",
        ),
        "network-clashes": (
            _pod(
                containers=[
                    {
                        "name": "agent",
                        "image": "a",
                        "ports": [{"containerPort": 9090}, {"containerPort": 9091}],
                    }
                ],
            ),
            None,
            "CREATE",
        ),
        "non-root-user-and-fs-group": (
            _pod(securityContext={"runAsUser": 4242, "fsGroup": 4242}),
            None,
            "CREATE",
        ),
        "host-network": (_pod(hostNetwork=True, securityContext={"fsGroup": 1}), None, "CREATE"),
        "share-process-namespace": (_pod(shareProcessNamespace=True), None, "CREATE"),
        "host-pid": (_pod(hostPID=True), None, "CREATE"),
        "windows": (_pod(os={"name": "windows"}), None, "CREATE"),
        "windows-nodes": (_pod(nodeSelector={"kubernetes.io/os": "windows"}), None, "CREATE"),
        "writable-credentials-mount": (
            _pod(
                containers=[
                    {
                        "name": "agent",
                        "image": "a",
                        "volumeMounts": [{"name": "taskcreds", "mountPath": "/run/taskcreds"}],
                    }
                ],
                initContainers=[
                    {
                        "name": "setup",
                        "image": "s",
                        "volumeMounts": [
                            {"name": "taskcreds", "mountPath": "/creds", "readOnly": False}
                        ],
                    }
                ],
                securityContext={"fsGroup": 1},
            ),
            None,
            "CREATE",
        ),
        "injected-annotation-only": (
            _pod({names.ANNOTATION_INJECTED: "0.0.1"}, securityContext={"fsGroup": 1}),
            None,
            "CREATE",
        ),
        "secrets-warned": (
            _pod(containers=[{"name": "agent", "image": "a", "envFrom": [{"secretRef": {"name": "k"}}]}]),
            None,
            "CREATE",
        ),
        "update-skipped": (_pod(), None, "UPDATE"),
        "boolean-label": (
            {**_pod(), "metadata": {"labels": {names.LABEL_INJECT: True}, "annotations": {}}},
            None,
            "CREATE",
        ),
        "not-opted-in": ({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": []}}, None, "CREATE"),
        "terminal-status": (_pod({names.ANNOTATION_TASK_STATUS: "completed"}), None, "CREATE"),
        "bad-ttl": (_pod({names.ANNOTATION_TTL: "15 minutes"}), None, "CREATE"),
        "missing-container": (_pod({names.ANNOTATION_CONTAINERS: "agent,builder"}), None, "CREATE"),
        "volume-taken": (_pod(volumes=[{"name": "taskcreds", "emptyDir": {}}]), None, "CREATE"),
        "strict-secret": (
            _pod(containers=[{"name": "agent", "image": "a", "envFrom": [{"secretRef": {"name": "k"}}]}]),
            CONFIGS["strict"],
            "CREATE",
        ),
        "malformed-env": (_pod(containers=[{"name": "agent", "image": "a", "env": "A=b"}]), None, "CREATE"),
        "malformed-security": (_pod(securityContext="root"), None, "CREATE"),
        "no-containers": ({**_pod(), "spec": {}}, None, "CREATE"),
    }
    for vname, (pod, config, operation) in variants.items():
        yield (
            f"variant-{vname}",
            lambda p=pod, c=config, o=operation: mutate_pod(copy.deepcopy(p), c or CONFIGS["default"], o),
        )
    yield (
        "variant-policy-denies",
        lambda: mutate_pod(
            _pod(),
            CONFIGS["default"],
            namespace="team-a",
            credential_check=lambda ns, sa, c: f"no {c} in {ns}/{sa}",
        ),
    )
    yield (
        "variant-policy-grants",
        lambda: mutate_pod(
            _pod(), CONFIGS["default"], namespace="team-a", credential_check=lambda ns, sa, c: None
        ),
    )

    def by_proxy(ns: str, credential: str) -> tuple[str, Any]:
        return ("proxy", {"hosts": ["api.github.com"]}) if credential == "github" else ("file", None)

    yield (
        "variant-proxy-delivery",
        lambda: mutate_pod(_pod(securityContext={"fsGroup": 1}), CONFIGS["default"], delivery=by_proxy),
    )
    yield (
        "variant-proxy-env-set-by-the-pod",
        lambda: mutate_pod(
            _pod(
                containers=[
                    {"name": "agent", "image": "a", "env": [{"name": "HTTPS_PROXY", "value": "http://corp:3128"}]}
                ],
                securityContext={"fsGroup": 1},
            ),
            CONFIGS["default"],
            delivery=by_proxy,
        ),
    )


def _mark_version(value: Any) -> Any:
    """The injected annotation's value -> ``{version}``, wherever it sits in the patch."""
    if isinstance(value, dict):
        return {
            k: (
                VERSION_MARK
                if k == names.ANNOTATION_INJECTED and v == taskcreds.__version__
                else _mark_version(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mark_version(v) for v in value]
    return value


def as_golden(result: MutationResult) -> dict[str, Any]:
    patch = []
    for op in result.patch:
        op = dict(op)
        if (
            op["path"].endswith("/" + names.ANNOTATION_INJECTED.replace("/", "~1"))
            and op["value"] == taskcreds.__version__
        ):
            op["value"] = VERSION_MARK
        else:
            op["value"] = _mark_version(op["value"])
        patch.append(op)
    return {"outcome": result.outcome, "patch": patch, "warnings": result.warnings, "message": result.message}


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


CASES = dict(cases())


def test_every_golden_file_has_a_case() -> None:
    """A case dropped from the list must not leave its expectation silently unchecked."""
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_mutation_matches_its_golden_file(name: str) -> None:
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    got = json.loads(_dump(as_golden(CASES[name]())))  # same JSON types as the file (tuples -> lists)
    assert got == expected
    # byte order of keys and operations too: the API server gets exactly these bytes
    assert _dump(got) == (GOLDEN / f"{name}.json").read_text()


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_webhooks_ready_json_patch_matches_the_golden_file(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the webhook sends (``encoded=True``: sidecar and volumes as ready JSON) is the same patch."""
    monkeypatch.setattr(sys.modules[__name__], "mutate_pod", functools.partial(mutate_pod, encoded=True))
    result = CASES[name]()
    plain = json.loads(orjson.dumps(result.patch))
    got = as_golden(MutationResult(result.outcome, plain, result.warnings, result.message))
    assert _dump(got) == (GOLDEN / f"{name}.json").read_text()


def write() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for old in GOLDEN.glob("*.json"):
        old.unlink()
    for name, case in CASES.items():
        (GOLDEN / f"{name}.json").write_text(_dump(as_golden(case())))
    print(f"wrote {len(CASES)} golden files to {GOLDEN.relative_to(REPO)}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.operator.test_injection_golden --write")
    write()
