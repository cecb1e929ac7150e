"""What the webhook does to a pod (CONTRACT.md section 2), case by case, through the real JSONPatch."""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import pytest
import yaml
from taskcreds.operator import injection
from taskcreds.operator.annotations import InjectionRequest, parse_request
from taskcreds.operator.config import InjectionConfig
from taskcreds.operator.injection import MutationResult, builders, inject_object, mutate_pod

import taskcreds
from taskcreds import names
from tests.operator.validation import assert_valid_pod_spec

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "pods"
CONFIG = InjectionConfig()
STRICT = InjectionConfig.from_mapping({"injection": {"strict": True}})


def fixture(name: str) -> dict[str, Any]:
    return yaml.safe_load((FIXTURES / name).read_text())


def pod(
    containers: list[dict[str, Any]] | None = None, *, annotations: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    """A small opted-in pod; keyword arguments go into spec."""
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
        "spec": {"containers": containers or [{"name": "agent", "image": "agent:1"}], **spec},
    }


def inject(
    obj: dict[str, Any], config: InjectionConfig = CONFIG, **kwargs: Any
) -> tuple[dict[str, Any], MutationResult]:
    """mutate_pod, then apply its patch to the untouched original, as the API server would."""
    before = copy.deepcopy(obj)
    result = mutate_pod(obj, config, **kwargs)
    assert obj == before, "mutate_pod modified its input"
    return jsonpatch.apply_patch(obj, result.patch), result


def by_name(items: list[dict[str, Any]] | None, name: str) -> dict[str, Any]:
    return next(i for i in items or [] if i["name"] == name)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


POD_FIXTURES = ["minimal.yaml", "full.yaml", "generate-name.yaml", "ephemeral.yaml", "static-secrets.yaml"]


# --- realistic pods ------------------------------------------------------------------------


@pytest.mark.parametrize("name", POD_FIXTURES + ["example"])
def test_realistic_pods_come_out_injected_valid_and_stable(name: str) -> None:
    original = (
        yaml.safe_load((REPO / "examples" / "agent-pod.yaml").read_text())
        if name == "example"
        else fixture(name)
    )
    mutated, result = inject(original)
    assert result.outcome == "injected" and result.message is None
    assert_valid_pod_spec(mutated)
    spec = mutated["spec"]
    assert spec["initContainers"][0]["name"] == names.SIDECAR_CONTAINER
    assert mutated["metadata"]["annotations"][names.ANNOTATION_INJECTED] == taskcreds.__version__
    assert {v["name"] for v in spec["volumes"]} >= set(injection.OUR_VOLUMES)
    # everything that was there is still there, in the same order
    assert [c["name"] for c in spec["initContainers"][1:]] == [
        c["name"] for c in original["spec"].get("initContainers", [])
    ]
    assert [c["name"] for c in spec["containers"]] == [c["name"] for c in original["spec"]["containers"]]
    assert spec.get("ephemeralContainers") == original["spec"].get("ephemeralContainers")
    # a second pass (reinvocation, retry) adds nothing
    again = mutate_pod(mutated, CONFIG)
    assert (again.outcome, again.patch) == ("skipped", [])


@pytest.mark.parametrize(
    "doc", list(yaml.safe_load_all((FIXTURES / "workloads.yaml").read_text())), ids=lambda d: d["kind"]
)
def test_every_workload_kind_gets_its_pod_template_injected(doc: dict[str, Any]) -> None:
    before = copy.deepcopy(doc)
    mutated, result = inject_object(doc, CONFIG)
    assert doc == before
    assert result.outcome == "injected"
    assert jsonpatch.apply_patch(doc, result.patch) == mutated, "the patch must apply to the workload itself"
    assert_valid_pod_spec(mutated)
    template = (
        mutated["spec"]["jobTemplate"]["spec"]["template"]
        if doc["kind"] == "CronJob"
        else mutated["spec"]["template"]
    )
    assert template["spec"]["initContainers"][0]["name"] == names.SIDECAR_CONTAINER
    assert template["metadata"]["annotations"][names.ANNOTATION_INJECTED] == taskcreds.__version__
    again, second = inject_object(mutated, CONFIG)
    assert (second.outcome, second.patch, again) == ("skipped", [], mutated)


def test_the_example_deployment_injects() -> None:
    doc = yaml.safe_load((REPO / "examples" / "agent-deployment.yaml").read_text())
    mutated, result = inject_object(doc, CONFIG)
    assert result.outcome == "injected" and result.warnings == []
    assert_valid_pod_spec(mutated)


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}},
            id="configmap",
        ),
        pytest.param(
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}},
            id="deployment-without-template",
        ),
        pytest.param({"kind": "Service"}, id="service"),
    ],
)
def test_objects_without_a_pod_template_pass_unchanged(doc: dict[str, Any]) -> None:
    mutated, result = inject_object(doc, CONFIG)
    assert (mutated, result.outcome, result.patch) == (doc, "skipped", [])
    assert mutated is not doc


# --- what exactly is added ------------------------------------------------------------------


@pytest.fixture(scope="module")
def full() -> dict[str, Any]:
    mutated, result = inject(fixture("full.yaml"))
    assert result.outcome == "injected"
    return mutated


def test_volumes_are_memory_backed_and_sidecar_scoped(full: dict[str, Any]) -> None:
    vols = {v["name"]: v for v in full["spec"]["volumes"]}
    assert vols["taskcreds"] == {"name": "taskcreds", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    assert vols["taskcreds-podinfo"]["downwardAPI"]["items"] == [
        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}
    ]
    assert vols["spiffe-workload-api"] == {
        "name": "spiffe-workload-api",
        "csi": {"driver": "csi.spiffe.io", "readOnly": True},
    }
    assert vols["taskcreds-token"]["projected"]["sources"] == [
        {"serviceAccountToken": {"audience": "taskcreds", "expirationSeconds": 3600, "path": "token"}}
    ]
    # only the sidecar sees the token, the Workload API and the podinfo
    for c in full["spec"]["containers"] + full["spec"]["initContainers"][1:]:
        assert not {m["name"] for m in c.get("volumeMounts", [])} & {
            "taskcreds-token",
            "spiffe-workload-api",
            "taskcreds-podinfo",
        }


def test_sidecar_is_a_hardened_native_sidecar(full: dict[str, Any]) -> None:
    sidecar = full["spec"]["initContainers"][0]
    assert sidecar["name"] == "taskcreds-sidecar" and sidecar["restartPolicy"] == "Always"
    assert (
        sidecar["image"] == "ghcr.io/taskcreds/taskcreds:0.1.0"
        and sidecar["imagePullPolicy"] == "IfNotPresent"
    )
    assert sidecar["command"] == ["taskcreds-sidecar"]
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 9090}
    assert sidecar["startupProbe"]["periodSeconds"] == 1
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9090}
    assert sidecar["ports"] == [{"name": "tc-probe", "containerPort": 9090, "protocol": "TCP"}]
    assert sidecar["resources"] == {
        "requests": {"cpu": "10m", "memory": "48Mi"},
        "limits": {"cpu": "200m", "memory": "96Mi"},
    }
    assert sidecar["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsUser": 65532,
    }, (
        "the pod sets runAsUser 1000 and fsGroup 2000: the agent reads through the group, the sidecar has its own uid"
    )
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert mounts["taskcreds"] == {"name": "taskcreds", "mountPath": "/run/taskcreds"}
    assert mounts["taskcreds-podinfo"] == {
        "name": "taskcreds-podinfo",
        "mountPath": "/etc/taskcreds/podinfo",
        "readOnly": True,
    }
    assert (
        mounts["spiffe-workload-api"]["mountPath"] == "/spiffe-workload-api"
        and mounts["spiffe-workload-api"]["readOnly"]
    )
    assert (
        mounts["taskcreds-token"]["mountPath"] == "/var/run/secrets/taskcreds"
        and mounts["taskcreds-token"]["readOnly"]
    )


def test_sidecar_environment_is_what_the_sidecar_reads(full: dict[str, Any]) -> None:
    env = env_of(full["spec"]["initContainers"][0])
    assert env == {
        "TASKCREDS_DIR": "/run/taskcreds",
        "TASKCREDS_TASK": "fix-issue-42",
        "TASKCREDS_CREDENTIALS": "github,llm-api",
        "TASKCREDS_TTL": "10m",
        "TASKCREDS_MAX_DURATION": "1h30m",
        "TASKCREDS_POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
        "TASKCREDS_POD_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        "TASKCREDS_POD_UID": {"fieldRef": {"fieldPath": "metadata.uid"}},
        "TASKCREDS_BROKER_URL": "https://taskcreds-broker.taskcreds-system.svc:8444",
        "TASKCREDS_BROKER_SPIFFE_ID": "spiffe://cluster.local/ns/taskcreds-system/sa/taskcreds-operator",
        "TASKCREDS_TOKEN_FILE": "/var/run/secrets/taskcreds/token",
        "TASKCREDS_PODINFO_DIR": "/etc/taskcreds/podinfo",
        "TASKCREDS_LISTEN_LOCAL": "127.0.0.1:9091",
        "TASKCREDS_LISTEN_PROBE": "0.0.0.0:9090",
        "TASKCREDS_FS_GROUP": "2000",
        "SPIFFE_ENDPOINT_SOCKET": "unix:///spiffe-workload-api/spire-agent.sock",
    }


def test_optional_sidecar_env_is_absent_when_not_asked_for() -> None:
    mutated, _ = inject(fixture("minimal.yaml"))
    env = env_of(mutated["spec"]["initContainers"][0])
    assert not {"TASKCREDS_TTL", "TASKCREDS_MAX_DURATION", "TASKCREDS_FS_GROUP"} & set(env)


def test_agent_containers_get_a_read_only_path_and_never_a_value(full: dict[str, Any]) -> None:
    original = fixture("full.yaml")
    for c, before in zip(full["spec"]["containers"], original["spec"]["containers"], strict=True):
        assert c["volumeMounts"] == before["volumeMounts"] + [
            {"name": "taskcreds", "mountPath": "/run/taskcreds", "readOnly": True}
        ]
        assert c["env"] == before.get("env", []) + [{"name": "TASKCREDS_DIR", "value": "/run/taskcreds"}]
    # init containers are selected only when named
    assert full["spec"]["initContainers"][1:] == original["spec"]["initContainers"]


@pytest.mark.parametrize(
    ("security", "expected_user"),
    [
        pytest.param(None, 65532, id="no-security-context"),
        pytest.param({"fsGroup": 1000}, 65532, id="fsgroup-only"),
        pytest.param({"runAsUser": 1000}, None, id="pod-runs-as-1000-without-fsgroup-sidecar-inherits"),
        pytest.param({"runAsUser": 1000, "fsGroup": 1000}, 65532, id="pod-runs-as-1000-with-fsgroup-own-uid"),
        pytest.param({"runAsUser": 1000, "fsGroup": 0}, 65532, id="fsgroup-0-is-a-group-too"),
        pytest.param({"runAsUser": 0}, 65532, id="pod-runs-as-root-sidecar-does-not"),
    ],
)
def test_sidecar_user(security: dict[str, Any] | None, expected_user: int | None) -> None:
    extra = {"securityContext": security} if security is not None else {}
    mutated, _ = inject(pod(**extra))
    sc = mutated["spec"]["initContainers"][0]["securityContext"]
    assert sc.get("runAsUser") == expected_user and sc["runAsNonRoot"] is True


def test_configuration_reaches_the_pod() -> None:
    config = InjectionConfig.from_mapping(
        {
            "sidecar": {
                "image": "registry.local/tc:dev",
                "imagePullPolicy": "Always",
                "probePort": 19090,
                "localPort": 19091,
                "resources": {"requests": {"cpu": "5m"}, "limits": {"memory": "64Mi"}},
            },
            "spiffe": {
                "socketSource": "hostPath",
                "hostPath": "/run/spire/sockets",
                "socketFile": "agent.sock",
            },
            "broker": {"url": "https://broker.example:443", "spiffeId": "spiffe://example.org/broker"},
            "injection": {"mountPath": "/creds", "tmpfsSizeLimit": "2Mi", "tokenExpirationSeconds": 600},
        }
    )
    mutated, _ = inject(pod(securityContext={"fsGroup": 1}), config)
    assert_valid_pod_spec(mutated)
    sidecar = mutated["spec"]["initContainers"][0]
    vols = {v["name"]: v for v in mutated["spec"]["volumes"]}
    assert (sidecar["image"], sidecar["imagePullPolicy"]) == ("registry.local/tc:dev", "Always")
    assert (
        sidecar["startupProbe"]["httpGet"]["port"] == 19090 and sidecar["ports"][0]["containerPort"] == 19090
    )
    assert sidecar["resources"] == {"requests": {"cpu": "5m"}, "limits": {"memory": "64Mi"}}
    env = env_of(sidecar)
    assert (
        env["TASKCREDS_LISTEN_LOCAL"] == "127.0.0.1:19091"
        and env["TASKCREDS_LISTEN_PROBE"] == "0.0.0.0:19090"
    )
    assert env["SPIFFE_ENDPOINT_SOCKET"] == "unix:///spiffe-workload-api/agent.sock"
    assert env["TASKCREDS_BROKER_URL"] == "https://broker.example:443"
    assert env["TASKCREDS_BROKER_SPIFFE_ID"] == "spiffe://example.org/broker"
    assert env["TASKCREDS_DIR"] == "/creds"
    assert vols["spiffe-workload-api"] == {
        "name": "spiffe-workload-api",
        "hostPath": {"path": "/run/spire/sockets", "type": "Directory"},
    }
    assert vols["taskcreds"]["emptyDir"]["sizeLimit"] == "2Mi"
    assert (
        vols["taskcreds-token"]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] == 600
    )
    assert by_name(mutated["spec"]["containers"], "agent")["volumeMounts"][0]["mountPath"] == "/creds"


def test_mount_path_annotation_overrides_the_default() -> None:
    mutated, _ = inject(fixture("generate-name.yaml"))
    assert env_of(mutated["spec"]["initContainers"][0])["TASKCREDS_DIR"] == "/home/agent/.creds"
    assert (
        env_of(by_name(mutated["spec"]["initContainers"], "setup"))["TASKCREDS_DIR"] == "/home/agent/.creds"
    )


@pytest.mark.parametrize("elsewhere", ["/run/taskcreds-cache", "/run", "/home/agent/taskcreds"])
def test_mounts_beside_or_above_the_credentials_are_admitted(elsewhere: str) -> None:
    """Only a mount at or below the credentials path is denied (test_denials...): a sibling sharing
    its prefix, or a parent the credentials mount nests in, is the agent's own business."""
    agent = {"name": "agent", "image": "a", "volumeMounts": [{"name": "cache", "mountPath": elsewhere}]}
    mutated, result = inject(pod([agent], volumes=[{"name": "cache", "emptyDir": {}}]))
    assert result.message is None, result.message
    assert env_of(by_name(mutated["spec"]["containers"], "agent"))["TASKCREDS_DIR"] == "/run/taskcreds"


def test_containers_annotation_selects_init_containers_and_skips_the_rest() -> None:
    original = fixture("generate-name.yaml")  # containers: setup (init), agent; not metrics
    mutated, _ = inject(original)
    assert env_of(by_name(mutated["spec"]["initContainers"], "setup"))[names.ENV_DIR] == "/home/agent/.creds"
    assert env_of(by_name(mutated["spec"]["containers"], "agent"))[names.ENV_DIR] == "/home/agent/.creds"
    assert by_name(mutated["spec"]["containers"], "metrics") == by_name(
        original["spec"]["containers"], "metrics"
    )


# --- the patch itself -----------------------------------------------------------------------


def test_patch_creates_what_is_absent() -> None:
    bare = pod()
    del bare["metadata"]["annotations"]
    bare["metadata"]["annotations"] = {names.ANNOTATION_TASK: "t", names.ANNOTATION_CREDENTIALS: "c"}
    result = mutate_pod(bare, CONFIG)
    paths = [op["path"] for op in result.patch]
    assert "/metadata/annotations/taskcreds.io~1injected" in paths
    assert "/spec/volumes" in paths and "/spec/initContainers" in paths
    assert "/spec/containers/0/volumeMounts" in paths and "/spec/containers/0/env" in paths
    assert all(op["op"] == "add" for op in result.patch)


def test_patch_inserts_the_sidecar_first_and_appends_elsewhere() -> None:
    result = mutate_pod(fixture("full.yaml"), CONFIG)
    paths = [op["path"] for op in result.patch]
    assert paths[-1] == "/spec/initContainers/0", "the sidecar goes in last, after every index-based op"
    assert "/spec/volumes/-" in paths and "/spec/containers/1/volumeMounts/-" in paths


@pytest.mark.parametrize("field", ["volumes", "initContainers", "env"])
def test_explicit_nulls_are_replaced_not_appended_to(field: str) -> None:
    p = pod()
    if field == "env":
        p["spec"]["containers"][0]["env"] = None
    else:
        p["spec"][field] = None
    mutated, result = inject(p)
    assert result.outcome == "injected"
    assert_valid_pod_spec(mutated)


def test_annotations_added_when_the_pod_has_none_beyond_ours() -> None:
    p = pod()
    result = mutate_pod(p, CONFIG)
    assert {
        "op": "add",
        "path": "/metadata/annotations/taskcreds.io~1injected",
        "value": "0.1.0",
    } in result.patch


def test_patch_values_are_fresh_objects() -> None:
    p = pod()
    first = mutate_pod(p, CONFIG)
    assert first.patch[-1]["path"] == "/spec/initContainers"
    first.patch[-1]["value"][0]["image"] = "tampered"
    first.patch[-1]["value"][0]["resources"]["limits"]["cpu"] = "9"
    second = mutate_pod(p, CONFIG)
    assert second.patch[-1]["value"][0]["image"] == CONFIG.sidecar.image
    assert second.patch[-1]["value"][0]["resources"]["limits"]["cpu"] == "200m"


# --- skipped --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "operation", "why"),
    [
        pytest.param({}, "CREATE", "not opted in", id="no-label"),
        pytest.param({names.LABEL_INJECT: "false"}, "CREATE", "not opted in", id="label-false"),
        pytest.param({names.LABEL_INJECT: "True"}, "CREATE", "not opted in", id="label-True-is-not-true"),
        pytest.param({names.LABEL_INJECT: "true"}, "UPDATE", "operation UPDATE", id="update"),
        pytest.param({names.LABEL_INJECT: "true"}, "DELETE", "operation DELETE", id="delete"),
        pytest.param({names.LABEL_INJECT: "true"}, "CONNECT", "operation CONNECT", id="connect"),
    ],
)
def test_pods_that_are_not_ours_are_skipped(labels: dict[str, str], operation: str, why: str) -> None:
    p = pod(annotations={names.ANNOTATION_TTL: "garbage"})  # annotations are not even looked at
    p["metadata"]["labels"] = labels
    result = mutate_pod(p, CONFIG, operation)
    assert (result.outcome, result.patch) == ("skipped", [])
    assert why in (result.message or "")


def test_pod_without_metadata_is_skipped() -> None:
    assert mutate_pod({"spec": {"containers": []}}, CONFIG).outcome == "skipped"


# --- denied ---------------------------------------------------------------------------------

DENIALS = [
    (
        "task-missing",
        pod(annotations={names.ANNOTATION_TASK: None}),
        CONFIG,
        None,  # type: ignore[dict-item]
        "taskcreds.io/task: missing; required: a task id",
    ),
    (
        "ttl-malformed",
        pod(annotations={names.ANNOTATION_TTL: "15 minutes"}),
        CONFIG,
        None,
        'taskcreds.io/ttl: "15 minutes" is not a Go-style duration such as 90s, 15m or 1h30m',
    ),
    (
        "status-terminal",
        pod(annotations={names.ANNOTATION_TASK_STATUS: "completed"}),
        CONFIG,
        None,
        'taskcreds.io/task-status: "completed" is terminal',
    ),
    (
        "container-not-found",
        pod(annotations={names.ANNOTATION_CONTAINERS: "agent,builder"}),
        CONFIG,
        None,
        "taskcreds.io/containers: \"agent,builder\" names 'builder', which the pod does not have; "
        "accepted: names of "
        "its containers or init containers (agent)",
    ),
    (
        "ephemeral-container-named",
        {
            **fixture("ephemeral.yaml"),
            "metadata": {
                **fixture("ephemeral.yaml")["metadata"],
                "annotations": {
                    **fixture("ephemeral.yaml")["metadata"]["annotations"],
                    names.ANNOTATION_CONTAINERS: "debugger",
                },
            },
        },
        CONFIG,
        None,
        "ephemeral containers cannot get the mount",
    ),
    (
        "sidecar-named",
        pod(annotations={names.ANNOTATION_CONTAINERS: "taskcreds-sidecar"}),
        CONFIG,
        None,
        "names taskcreds-sidecar, which taskcreds adds itself",
    ),
    (
        "mount-collision",
        pod(
            [
                {
                    "name": "agent",
                    "image": "a",
                    "volumeMounts": [{"name": "run", "mountPath": "/run/taskcreds/"}],
                }
            ],
            volumes=[{"name": "run", "emptyDir": {}}],
        ),
        CONFIG,
        None,
        "taskcreds.io/mount-path: \"/run/taskcreds\" collides with the mount of volume 'run' "
        "in container 'agent'",
    ),
    (
        "mount-below-the-credentials",
        pod(
            [
                {
                    "name": "agent",
                    "image": "a",
                    "volumeMounts": [{"name": "cache", "mountPath": "/run/taskcreds/cache"}],
                }
            ],
            volumes=[{"name": "cache", "emptyDir": {}}],
        ),
        CONFIG,
        None,
        "taskcreds.io/mount-path: \"/run/taskcreds\" collides with the mount of volume 'cache' "
        "in container 'agent'",
    ),
    (
        "mount-at-the-credentials-two-leading-slashes",
        pod(
            [{"name": "agent", "image": "a", "volumeMounts": [{"name": "cache", "mountPath": "//run/taskcreds"}]}],
            volumes=[{"name": "cache", "emptyDir": {}}],
        ),
        CONFIG,
        None,
        "taskcreds.io/mount-path: \"/run/taskcreds\" collides with the mount of volume 'cache' "
        "in container 'agent'",
    ),
    (
        "mount-below-the-credentials-unnormalized",
        pod(
            [
                {
                    "name": "agent",
                    "image": "a",
                    "volumeMounts": [{"name": "cache", "mountPath": "/run//taskcreds/./cache/"}],
                }
            ],
            volumes=[{"name": "cache", "emptyDir": {}}],
        ),
        CONFIG,
        None,
        "taskcreds.io/mount-path: \"/run/taskcreds\" collides with the mount of volume 'cache' "
        "in container 'agent'",
    ),
    (
        "mount-on-sidecar-path",
        pod(annotations={names.ANNOTATION_MOUNT_PATH: "/spiffe-workload-api"}),
        CONFIG,
        None,
        'taskcreds.io/mount-path: "/spiffe-workload-api" overlaps where the sidecar mounts its own volumes',
    ),
    (
        "mount-on-sidecar-path-double-slash",
        pod(annotations={names.ANNOTATION_MOUNT_PATH: "//spiffe-workload-api"}),
        CONFIG,
        None,
        'taskcreds.io/mount-path: "/spiffe-workload-api" overlaps where the sidecar mounts its own volumes',
    ),
    (
        "mount-path-dotdot",
        pod(annotations={names.ANNOTATION_MOUNT_PATH: "/run/../etc"}),
        CONFIG,
        None,
        "taskcreds.io/mount-path: \"/run/../etc\" is not an absolute path below / without '..'",
    ),
    (
        "volume-name-taken",
        pod(volumes=[{"name": "taskcreds", "emptyDir": {}}]),
        CONFIG,
        None,
        "spec.volumes: the pod already has a volume named 'taskcreds', a name taskcreds reserves",
    ),
    (
        "container-name-taken",
        pod([{"name": "agent", "image": "a"}, {"name": "taskcreds-sidecar", "image": "evil"}]),
        CONFIG,
        None,
        "already has a container named 'taskcreds-sidecar'",
    ),
    (
        "env-already-set",
        pod([{"name": "agent", "image": "a", "env": [{"name": "TASKCREDS_DIR", "value": "/tmp"}]}]),
        CONFIG,
        None,
        "container 'agent' sets TASKCREDS_DIR itself",
    ),
    (
        "strict-secret-key-ref",
        fixture("static-secrets.yaml"),
        STRICT,
        None,
        "static secrets in an agent container's environment are refused (strict mode): "
        "container 'agent': env "
        "GITHUB_TOKEN (secretKeyRef github-pat); container 'agent': envFrom secretRef openai-key",
    ),
    (
        "strict-envfrom-only",
        pod([{"name": "agent", "image": "a", "envFrom": [{"secretRef": {"name": "k"}}]}]),
        STRICT,
        None,
        "envFrom secretRef k",
    ),
    (
        "policy",
        pod(),
        CONFIG,
        lambda ns, sa, cred: f"no CredentialSource {cred!r} in {ns}",
        "taskcreds.io/credentials: credential \"github\" is not granted to service account 'default' "
        "in namespace "
        "'default': no CredentialSource 'github' in default",
    ),
    ("no-containers", {**pod(), "spec": {}}, CONFIG, None, "the pod has no spec.containers"),
]


@pytest.mark.parametrize(("case", "obj", "config", "check", "message"), DENIALS, ids=[d[0] for d in DENIALS])
def test_denials_say_what_to_change_and_touch_nothing(
    case: str, obj: dict[str, Any], config: InjectionConfig, check: Any, message: str
) -> None:
    obj = {k: v for k, v in obj.items()}
    if case == "task-missing":
        obj = copy.deepcopy(obj)
        del obj["metadata"]["annotations"][names.ANNOTATION_TASK]
    before = json.dumps(obj, sort_keys=True)
    result = mutate_pod(obj, config, credential_check=check)
    assert (result.outcome, result.patch) == ("denied", [])
    assert message in (result.message or ""), result.message
    assert json.dumps(obj, sort_keys=True) == before


def test_strict_mode_does_not_look_at_unselected_containers() -> None:
    p = pod(
        [
            {"name": "agent", "image": "a"},
            {
                "name": "db",
                "image": "pg",
                "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
            },
        ],
        annotations={names.ANNOTATION_CONTAINERS: "agent"},
    )
    assert mutate_pod(p, STRICT).outcome == "injected"


def test_policy_is_asked_about_every_credential_with_the_pods_identity() -> None:
    asked: list[tuple[str, str, str]] = []

    def check(namespace: str, service_account: str, credential: str) -> str | None:
        asked.append((namespace, service_account, credential))
        return None

    p = fixture("full.yaml")
    assert mutate_pod(p, CONFIG, credential_check=check).outcome == "injected"
    assert asked == [("agents", "coding-agent", "github"), ("agents", "coding-agent", "llm-api")]
    asked.clear()
    mutate_pod(fixture("generate-name.yaml"), CONFIG, namespace="team-a", credential_check=check)
    assert asked == [("team-a", "default", "vault-db")]


# --- warnings -------------------------------------------------------------------------------


def test_static_secrets_are_a_warning_outside_strict_mode() -> None:
    mutated, result = inject(fixture("static-secrets.yaml"))
    assert result.outcome == "injected"
    assert len(result.warnings) == 2
    assert "container 'agent': env GITHUB_TOKEN (secretKeyRef github-pat)" in result.warnings[0]
    assert "container 'agent': envFrom secretRef openai-key" in result.warnings[1]
    assert not any("helper" in w for w in result.warnings), "configMapKeyRef is not a secret"
    assert_valid_pod_spec(mutated)


def test_unknown_taskcreds_annotation_is_a_warning() -> None:
    result = mutate_pod(pod(annotations={"taskcreds.io/ttls": "5m"}, securityContext={"fsGroup": 1}), CONFIG)
    assert result.outcome == "injected"
    assert result.warnings == [result.warnings[0]] and result.warnings[0].startswith(
        "taskcreds.io/ttls: unknown annotation, ignored (known: "
    )


def test_unreadable_files_are_a_warning() -> None:
    result = mutate_pod(pod(), CONFIG)
    assert any("neither securityContext.runAsUser nor fsGroup" in w for w in result.warnings)
    assert mutate_pod(pod(securityContext={"fsGroup": 1000}), CONFIG).warnings == []


# --- reinvocation ---------------------------------------------------------------------------


def test_reinvocation_completes_a_container_added_by_another_webhook() -> None:
    first, _ = inject(fixture("full.yaml"))
    first["spec"]["containers"].append({"name": "istio-proxy", "image": "istio/proxyv2:1.24.0"})
    second, result = inject(first)
    assert result.outcome == "injected"
    assert [op["path"] for op in result.patch] == [
        "/spec/containers/2/volumeMounts",
        "/spec/containers/2/env",
    ]
    assert env_of(second["spec"]["containers"][2]) == {"TASKCREDS_DIR": "/run/taskcreds"}
    assert_valid_pod_spec(second)


def test_an_injected_annotation_alone_does_not_skip_the_injection() -> None:
    p = pod(annotations={names.ANNOTATION_INJECTED: "0.0.1"}, securityContext={"fsGroup": 1})
    mutated, result = inject(p)
    assert result.outcome == "injected"
    assert mutated["metadata"]["annotations"][names.ANNOTATION_INJECTED] == "0.0.1"
    assert mutated["spec"]["initContainers"][0]["name"] == names.SIDECAR_CONTAINER
    assert_valid_pod_spec(mutated)


# --- public surface and speed -----------------------------------------------------------------


def test_public_api() -> None:
    assert {"MutationResult", "CredentialCheck", "mutate_pod", "inject_object"} <= set(injection.__all__)
    assert all(hasattr(injection, n) for n in injection.__all__)


def test_core_imports_no_io_frameworks() -> None:
    import subprocess
    import sys

    code = (
        "import sys, taskcreds.operator.injection; "
        "bad = [m for m in ('kopf', 'aiohttp', 'kubernetes', 'kubernetes_asyncio') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""


def test_mutating_a_typical_pod_is_fast() -> None:
    """bench/webhook.py holds the real budget (100 µs); this only catches a gross regression."""
    p = fixture("full.yaml")
    mutate_pod(p, CONFIG)
    runs = 300
    start = time.perf_counter()
    for _ in range(runs):
        mutate_pod(p, CONFIG)
    assert (time.perf_counter() - start) / runs < 500e-6


# --- hand-written YAML (taskcreds inject) ----------------------------------------------------


def _malformed(change: Any) -> dict[str, Any]:
    p = pod()
    change(p)
    return p


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(
            _malformed(lambda p: p["spec"].update(containers=["agent"])), id="container-is-a-string"
        ),
        pytest.param(
            _malformed(lambda p: p["spec"]["containers"][0].update(env="A=b")), id="env-is-a-string"
        ),
        pytest.param(
            _malformed(lambda p: p["spec"]["containers"][0].update(volumeMounts={"a": 1})), id="mounts-map"
        ),
        pytest.param(_malformed(lambda p: p["spec"].update(volumes=[["taskcreds"]])), id="volume-is-a-list"),
        pytest.param(
            _malformed(lambda p: p["spec"].update(securityContext="root")), id="security-is-a-string"
        ),
    ],
)
def test_malformed_pods_are_denied_not_crashed_on(obj: dict[str, Any]) -> None:
    result = mutate_pod(obj, CONFIG)
    assert (result.outcome, result.patch) == ("denied", [])
    assert (result.message or "").startswith("the pod is not well-formed")


def test_labels_that_are_not_a_map_are_denied_not_crashed_on() -> None:
    p = pod()
    p["metadata"]["labels"] = ["taskcreds.io/inject=true"]
    assert mutate_pod(p, CONFIG).outcome == "denied"


def test_a_boolean_inject_label_is_skipped_with_a_warning() -> None:
    p = pod()
    p["metadata"]["labels"][names.LABEL_INJECT] = True
    result = mutate_pod(p, CONFIG)
    assert (result.outcome, result.patch) == ("skipped", [])
    assert result.warnings == [
        'label taskcreds.io/inject is True, not the string "true": the pod is not injected '
        '(quote it in YAML: "true")'
    ]


def test_a_number_where_a_string_belongs_is_denied_with_the_fix() -> None:
    result = mutate_pod(pod(annotations={names.ANNOTATION_TASK: 42}), CONFIG)  # type: ignore[dict-item]
    assert result.outcome == "denied"
    assert result.message == (
        'taskcreds.io/task: "42" is a YAML number; accepted: a string '
        "(annotation values are strings: quote it in YAML)"
    )


@pytest.mark.parametrize("path", ["/etc/taskcreds", "/spiffe-workload-api/creds", "/var/run/secrets", "/var"])
def test_mount_paths_overlapping_the_sidecars_own_mounts_are_denied(path: str) -> None:
    result = mutate_pod(pod(annotations={names.ANNOTATION_MOUNT_PATH: path}), CONFIG)
    assert result.outcome == "denied"
    assert (result.message or "").startswith(
        f'taskcreds.io/mount-path: "{path}" overlaps where the sidecar mounts'
    )


@pytest.mark.parametrize(
    ("spec", "warning"),
    [
        pytest.param(
            {"containers": [{"name": "agent", "image": "a", "ports": [{"containerPort": 9090}]}]},
            "container 'agent' declares port 9090, which the sidecar listens on; set sidecar.probePort",
            id="probe-port-taken",
        ),
        pytest.param(
            {"containers": [{"name": "web", "image": "a", "ports": [{"containerPort": 9091}]}]},
            "container 'web' declares port 9091, which the sidecar listens on; set sidecar.localPort",
            id="local-port-taken",
        ),
    ],
)
def test_network_clashes_are_warned_about(spec: dict[str, Any], warning: str) -> None:
    result = mutate_pod(pod(securityContext={"fsGroup": 1}, **spec), CONFIG)
    assert result.outcome == "injected"
    assert len(result.warnings) == 1 and result.warnings[0].startswith(warning), result.warnings


# --- the webhook's ready-JSON rendering ----------------------------------------------------------


def test_config_derived_pieces_are_built_once_per_config() -> None:
    other = InjectionConfig.from_mapping({"sidecar": {"image": "example.com/sidecar:2"}})
    assert builders.pieces(CONFIG) is builders.pieces(CONFIG)
    assert builders.pieces(other) is not builders.pieces(CONFIG)
    assert (
        builders.sidecar_container(other, parse_request(pod()["metadata"]["annotations"]), "/c", {})["image"]
        == "example.com/sidecar:2"
    )


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(CONFIG, id="default"),
        pytest.param(
            InjectionConfig.from_mapping({"broker": {"url": "https://broker.example/@@taskcreds-env@@"}}),
            id="config-spelling-a-cut-mark",
        ),
    ],
)
@pytest.mark.parametrize(
    "security", [{}, {"runAsUser": 0}, {"runAsUser": 7, "fsGroup": 8}, {"fsGroup": 0}], ids=str
)
def test_ready_json_sidecar_is_the_dicts_bytes(config: InjectionConfig, security: dict[str, Any]) -> None:
    # builders do not validate: odd characters check the JSON escaping of every per-pod value
    request = InjectionRequest(task='a"b\\c\u2603', credentials=("x", "y.z"), ttl=90.0, max_duration=1.5)
    parts = builders.pieces(config)
    for mount in ("/run/taskcreds", '/ü/"q"'):
        assert orjson.dumps(parts.sidecar_json(request, mount, security)) == orjson.dumps(
            parts.sidecar(request, mount, security)
        )
    assert orjson.dumps(parts.volumes_json({"taskcreds-token"})) == orjson.dumps(
        [v for v in parts.volumes() if v["name"] != "taskcreds-token"]
    )


# --- isolation: pod shapes that would undo the agent/sidecar boundary ------------------------


def _by_proxy(namespace: str, credential: str) -> tuple[str, Any]:
    return "proxy", {"hosts": ["api.github.com"]}


def _by_file(namespace: str, credential: str) -> tuple[str, Any]:
    return "file", None


ISOLATION_DENIALS = {
    # name: (spec fields, delivery, the message's start, words it must contain)
    "host-network-proxy-delivery": (
        {"hostNetwork": True},
        _by_proxy,
        "spec.hostNetwork: true puts the sidecar's unauthenticated loopback listeners on the node's loopback",
        [
            "credential 'github' is delivered by that proxy",
            "/v1/redact",
            "accepted: hostNetwork false or absent",
        ],
    ),
    "host-network-file-delivery": (
        {"hostNetwork": True},
        _by_file,
        "spec.hostNetwork: true",
        ["the egress proxy", "/v1/redact", "accepted: hostNetwork false or absent"],
    ),
    "host-network-no-index": (
        {"hostNetwork": True},
        None,
        "spec.hostNetwork: true",
        ["accepted: hostNetwork false or absent"],
    ),
    "share-process-namespace": (
        {"shareProcessNamespace": True, "securityContext": {"runAsUser": 1000, "runAsNonRoot": True}},
        _by_proxy,
        "spec.shareProcessNamespace: true lets the agent containers see the sidecar's processes",
        [
            "/proc/<pid>/root",
            "service-account token and SPIFFE socket",
            "accepted: shareProcessNamespace false",
        ],
    ),
    "host-pid": ({"hostPID": True}, None, "spec.hostPID: true", ["accepted: hostPID false or absent"]),
    "windows-pod": (
        {"os": {"name": "windows"}, "nodeSelector": {"kubernetes.io/os": "windows"}},
        None,
        "spec.os.name: windows: the taskcreds sidecar runs on Linux only",
        ["accepted: spec.os.name linux or absent"],
    ),
    "windows-nodes-only": (
        {"nodeSelector": {"kubernetes.io/os": "windows"}},
        None,
        "spec.nodeSelector kubernetes.io/os: windows: the taskcreds sidecar runs on Linux only",
        ["accepted:"],
    ),
}


@pytest.mark.parametrize("already", [False, True], ids=["created", "claims-injected"])
@pytest.mark.parametrize("case", list(ISOLATION_DENIALS))
def test_pod_shapes_that_break_isolation_are_denied(case: str, already: bool) -> None:
    fields, delivery, start, words = ISOLATION_DENIALS[case]
    p = pod(**fields)
    assert_valid_pod_spec(p)  # a pod the API server accepts: only taskcreds refuses it
    if already:  # a pre-set taskcreds.io/injected never skips the checks
        p["metadata"]["annotations"][names.ANNOTATION_INJECTED] = "0.0.1"
    before = json.dumps(p, sort_keys=True)
    result = mutate_pod(p, CONFIG, encoded=True, delivery=delivery)
    assert (result.outcome, result.patch, result.warnings) == ("denied", [], [])
    assert (result.message or "").startswith(start), result.message
    assert all(w in (result.message or "") for w in words), result.message
    assert json.dumps(p, sort_keys=True) == before


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"hostNetwork": False}, id="host-network-false"),
        pytest.param({"shareProcessNamespace": False, "hostPID": False}, id="shared-pids-false"),
        pytest.param({"os": {"name": "linux"}, "nodeSelector": {"kubernetes.io/os": "linux"}}, id="linux"),
    ],
)
def test_the_accepted_values_of_those_fields_inject(fields: dict[str, Any]) -> None:
    mutated, result = inject(pod(securityContext={"fsGroup": 1}, **fields), delivery=_by_proxy)
    assert (result.outcome, result.warnings) == ("injected", [])
    assert_valid_pod_spec(mutated)


# --- the sidecar's uid, checked with the real writer and real uids ----------------------------


def _write_as(uid: int, gid: int, groups: list[int], directory: Path, fs_group: int | None) -> None:
    """Run the real CredentialWriter in a forked child under (uid, gid, groups), as the sidecar runs.

    A fork, not a new interpreter: the venv's python lives where other uids cannot execute it.
    """
    from datetime import UTC, datetime

    from taskcreds.sidecar.writer import CredentialFiles, CredentialWriter

    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit status only
        code = 1
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            writer = CredentialWriter(str(directory), fs_group=fs_group)
            writer.prepare()
            writer.write(
                [CredentialFiles("github", "test", datetime.now(UTC), {"token": "not-a-real-value"})]
            )
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the writer failed under the sidecar's uid"


@pytest.fixture
def tmpfs_dir() -> Any:
    """A fresh directory on tmpfs (the writer refuses anything else), removed afterwards."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="tc-injection-uid-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run_as(security: dict[str, Any], pod_security: dict[str, Any]) -> tuple[int, int, list[int]]:
    """(uid, gid, groups) the kubelet gives a container: its runAsUser/runAsGroup, else the pod's;
    fsGroup and supplementalGroups added. An image default stands in for an unset uid/gid."""
    uid = security.get("runAsUser", pod_security.get("runAsUser", 4000))
    gid = security.get("runAsGroup", pod_security.get("runAsGroup", uid))
    groups = [pod_security["fsGroup"]] if "fsGroup" in pod_security else []
    return uid, gid, groups + list(pod_security.get("supplementalGroups", []))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="switches uids: needs root")
@pytest.mark.parametrize(
    ("pod_security", "own_uid"),
    [
        pytest.param({"runAsUser": 1000, "fsGroup": 2000}, True, id="fsgroup-sidecar-has-its-own-uid"),
        pytest.param(
            {"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000}, True, id="fsgroup-and-run-as-group"
        ),
        pytest.param({"fsGroup": 2000}, True, id="fsgroup-only"),
        pytest.param({"runAsUser": 1000}, False, id="no-fsgroup-sidecar-shares-the-uid"),
    ],
)
def test_the_agent_reads_the_files_the_sidecar_writes_under_the_uids_injected(
    tmpfs_dir: Path, pod_security: dict[str, Any], own_uid: bool
) -> None:
    import subprocess

    mutated, result = inject(pod(securityContext=pod_security))
    assert result.outcome == "injected"
    sidecar = mutated["spec"]["initContainers"][0]
    s_uid, s_gid, s_groups = _run_as(sidecar["securityContext"], pod_security)
    a_uid, a_gid, a_groups = _run_as(
        mutated["spec"]["containers"][0].get("securityContext") or {}, pod_security
    )
    assert (s_uid != a_uid) is own_uid and s_uid != 0
    # the emptyDir as the kubelet makes it: world-writable, group fsGroup (setgid) when there is one
    os.chmod(tmpfs_dir, 0o777)  # noqa: S103 - the kubelet's emptyDir mode
    if "fsGroup" in pod_security:
        os.chown(tmpfs_dir, 0, pod_security["fsGroup"])
        os.chmod(tmpfs_dir, 0o2777)  # noqa: S103
    fs_group = env_of(sidecar).get(names.ENV_FS_GROUP)
    _write_as(s_uid, s_gid, s_groups, tmpfs_dir, int(fs_group) if fs_group is not None else None)
    token = tmpfs_dir / "github" / "token"
    agent = subprocess.run(
        ["cat", str(token)], user=a_uid, group=a_gid, extra_groups=a_groups, capture_output=True, text=True
    )
    assert agent.returncode == 0 and agent.stdout == "not-a-real-value", agent.stderr
    # and the files stay closed to a uid outside the pod's groups (what makes this test able to fail)
    stranger = subprocess.run(
        ["cat", str(token)], user=4321, group=4321, extra_groups=[], capture_output=True
    )
    assert stranger.returncode != 0
    assert (token.resolve().stat().st_uid == a_uid) is not own_uid


def test_a_pod_without_fsgroup_is_told_the_sidecar_shares_its_uid() -> None:
    _, result = inject(pod(securityContext={"runAsUser": 1000}))
    assert result.outcome == "injected"
    assert result.warnings == [
        "the pod sets securityContext.runAsUser 1000 but no fsGroup: the sidecar runs as that uid too (the "
        "only way the agent can read the 0440 credential files), so only separate mounts keep the agent "
        "from the sidecar's token; set spec.securityContext.fsGroup to run the sidecar as its own uid 65532"
    ]


# --- a credentials mount the pod already has is made read-only --------------------------------

_WRITABLE = {
    # name: (containers, init containers, containers annotation, pointers made readOnly)
    "selected-agent-no-readOnly": (
        [
            {
                "name": "agent",
                "image": "a",
                "volumeMounts": [{"name": "taskcreds", "mountPath": "/run/taskcreds"}],
            }
        ],
        [],
        None,
        ["/spec/containers/0/volumeMounts/0/readOnly"],
    ),
    "readOnly-false-among-other-mounts": (
        [
            {
                "name": "agent",
                "image": "a",
                "volumeMounts": [
                    {"name": "work", "mountPath": "/work"},
                    {"name": "taskcreds", "mountPath": "/run/taskcreds", "readOnly": False},
                ],
            }
        ],
        [],
        None,
        ["/spec/containers/0/volumeMounts/1/readOnly"],
    ),
    "unselected-init-container-elsewhere": (
        [{"name": "agent", "image": "a"}],
        [{"name": "setup", "image": "s", "volumeMounts": [{"name": "taskcreds", "mountPath": "/creds"}]}],
        None,
        ["/spec/initContainers/0/volumeMounts/0/readOnly"],
    ),
    "selected-init-and-second-init": (
        [{"name": "agent", "image": "a"}],
        [
            {"name": "first", "image": "f"},
            {
                "name": "clone",
                "image": "g",
                "volumeMounts": [{"name": "taskcreds", "mountPath": "/run/taskcreds"}],
            },
        ],
        "clone,agent",
        ["/spec/initContainers/1/volumeMounts/0/readOnly"],
    ),
}


@pytest.mark.parametrize("encoded", [False, True], ids=["dicts", "webhook-json"])
@pytest.mark.parametrize("case", list(_WRITABLE))
def test_a_writable_credentials_mount_is_made_read_only_once(case: str, encoded: bool) -> None:
    containers, init, wanted, pointers = _WRITABLE[case]
    annotations = {names.ANNOTATION_CONTAINERS: wanted} if wanted else None
    spec: dict[str, Any] = {"securityContext": {"fsGroup": 1}, "volumes": [{"name": "work", "emptyDir": {}}]}
    if init:
        spec["initContainers"] = copy.deepcopy(init)
    p = pod(copy.deepcopy(containers), annotations=annotations, **spec)
    result = mutate_pod(p, CONFIG, encoded=encoded)
    assert result.outcome == "injected"
    assert [op["path"] for op in result.patch if op["path"].endswith("/readOnly")] == pointers
    assert (
        sum("without readOnly: true; taskcreds makes that mount read-only" in w for w in result.warnings) == 1
    )
    once = jsonpatch.apply_patch(p, orjson.loads(orjson.dumps(result.patch)))  # what the API server decodes
    assert_valid_pod_spec(once)
    for c in once["spec"]["containers"] + once["spec"]["initContainers"]:
        for m in c.get("volumeMounts") or ():
            if m["name"] == names.VOLUME_CREDENTIALS:
                assert m.get("readOnly") is (c["name"] != names.SIDECAR_CONTAINER or None), (c["name"], m)
    again = mutate_pod(once, CONFIG, encoded=encoded)
    assert (again.outcome, again.patch, again.warnings) == ("skipped", [], [])
