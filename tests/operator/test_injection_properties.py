"""Properties over generated pods: idempotence, untouched bystanders, all-or-nothing denials."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from taskcreds.operator.config import InjectionConfig
from taskcreds.operator.injection import mutate_pod

from taskcreds import names
from tests.operator.validation import FAST_VERSIONS, assert_valid_pod_spec

CONFIGS = [
    InjectionConfig(),
    InjectionConfig.from_mapping({"injection": {"strict": True}, "spiffe": {"socketSource": "hostPath"}}),
]
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# our reserved names appear rarely, so most examples get past them to the other rules
container_names = st.sampled_from(
    ["agent", "git-clone", "sandbox", "proxy", "setup", "lint", "tests", "build", "shell"] * 3
    + ["taskcreds-sidecar"]
)
volume_names = st.sampled_from(
    ["workspace", "cache", "logs", "home", "tmp", "data", "work", "conf"] * 3 + ["taskcreds"]
)
paths = st.sampled_from(["/workspace", "/cache", "/run/taskcreds", "/home/agent", "/var/log", "/tmp", "/run"])


@st.composite
def containers(draw: st.DrawFn, names_: list[str], volumes: list[str], init: bool) -> list[dict[str, Any]]:
    out = []
    for name in names_:
        c: dict[str, Any] = {"name": name, "image": f"example/{name}:1"}
        if volumes and draw(st.booleans()):
            mounts = draw(
                st.lists(st.tuples(st.sampled_from(volumes), paths), max_size=3, unique_by=lambda t: t[1])
            )
            c["volumeMounts"] = [{"name": v, "mountPath": p} for v, p in mounts]
        if draw(st.booleans()):
            env = [{"name": "MODE", "value": "fast"}]
            if draw(st.booleans()):
                env.append({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}})
            if draw(st.integers(0, 19)) == 0:
                env.append({"name": names.ENV_DIR, "value": draw(paths)})
            if draw(st.integers(0, 5)) == 0:  # a corporate proxy of its own: kept, with a warning
                env.append({"name": "HTTPS_PROXY", "value": "http://proxy.corp:3128"})
            c["env"] = env
        if draw(st.integers(0, 4)) == 0:
            c["envFrom"] = [{"secretRef": {"name": "legacy"}}]
        if init and draw(st.booleans()):
            c["restartPolicy"] = "Always"
        if draw(st.booleans()):
            c["securityContext"] = {
                "runAsUser": draw(st.integers(1, 5000)),
                "allowPrivilegeEscalation": False,
            }
        out.append(c)
    return out


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    all_names = draw(st.lists(container_names, min_size=1, max_size=5, unique=True))
    split = draw(st.integers(0, len(all_names) - 1))
    init_names, regular_names = all_names[:split], all_names[split:]
    volumes = draw(st.lists(volume_names, max_size=4, unique=True))
    spec: dict[str, Any] = {
        "containers": draw(containers(regular_names, volumes, init=False)),
    }
    if init_names or draw(st.booleans()):
        spec["initContainers"] = draw(containers(init_names, volumes, init=True))
    if volumes or draw(st.booleans()):
        spec["volumes"] = [{"name": v, "emptyDir": {}} for v in volumes]
    security = draw(
        st.sampled_from([None, {}, {"fsGroup": 1000}, {"runAsUser": 1000}, {"runAsUser": 0, "fsGroup": 5}])
    )
    if security is not None:
        spec["securityContext"] = security
    if draw(st.booleans()):
        spec["serviceAccountName"] = "agent"
    annotations: dict[str, str] = {
        names.ANNOTATION_TASK: "task-1",
        names.ANNOTATION_CREDENTIALS: "github,vault",
    }
    if draw(st.booleans()):
        pick = draw(st.lists(st.sampled_from(all_names + ["missing"]), min_size=1, max_size=3, unique=True))
        annotations[names.ANNOTATION_CONTAINERS] = ",".join(pick)
    if draw(st.booleans()):
        annotations[names.ANNOTATION_MOUNT_PATH] = draw(
            st.sampled_from(["/creds", "/run/taskcreds", "/workspace"])
        )
    if draw(st.booleans()):
        annotations[names.ANNOTATION_TTL] = draw(st.sampled_from(["90s", "15m", "1h30m", "soon"]))
    metadata: dict[str, Any] = {"labels": {names.LABEL_INJECT: "true"}, "annotations": annotations}
    metadata["name" if draw(st.booleans()) else "generateName"] = "agent-"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def _all_by_proxy(namespace: str, credential: str) -> tuple[str, Any]:
    return "proxy", None


def _vault_by_proxy(namespace: str, credential: str) -> tuple[str, Any]:
    return ("proxy", None) if credential == "vault" else ("file", None)


#: how credentials reach the pod: the index's answer (None: no index, as in `taskcreds inject`)
deliveries = st.sampled_from([None, _all_by_proxy, _vault_by_proxy])


def selected_names(pod: dict[str, Any]) -> set[str]:
    wanted = pod["metadata"]["annotations"].get(names.ANNOTATION_CONTAINERS)
    if wanted is None:
        return {c["name"] for c in pod["spec"]["containers"]}
    return set(wanted.split(","))


@SETTINGS
@given(pod=pods(), config=st.sampled_from(CONFIGS), delivery=deliveries)
def test_injection_is_idempotent_and_valid(
    pod: dict[str, Any], config: InjectionConfig, delivery: Any
) -> None:
    result = mutate_pod(pod, config, delivery=delivery)
    if result.outcome != "injected":
        return
    once = jsonpatch.apply_patch(pod, result.patch)
    assert_valid_pod_spec(once, FAST_VERSIONS)
    again = mutate_pod(once, config, delivery=delivery)
    assert (again.outcome, again.patch) == ("skipped", [])
    if delivery is not None:  # every selected container has the proxy, or warned that it keeps its own
        chosen = selected_names(pod)
        for c in once["spec"]["containers"] + (once["spec"].get("initContainers") or []):
            if c["name"] in chosen:
                env = {e["name"]: e.get("value") for e in c.get("env") or []}
                assert env["HTTPS_PROXY"] in ("http://127.0.0.1:9092", "http://proxy.corp:3128")
                assert env["SSL_CERT_FILE"] == env[names.ENV_DIR] + "/ca-bundle.crt"
                if env["HTTPS_PROXY"] != "http://127.0.0.1:9092":
                    assert any(c["name"] in w and "HTTPS_PROXY" in w for w in result.warnings)


@SETTINGS
@given(pod=pods(), config=st.sampled_from(CONFIGS))
def test_unselected_containers_are_byte_for_byte_untouched(
    pod: dict[str, Any], config: InjectionConfig
) -> None:
    result = mutate_pod(pod, config)
    if result.outcome != "injected":
        return
    mutated = jsonpatch.apply_patch(pod, result.patch)
    chosen = selected_names(pod)
    before = {
        c["name"]: json.dumps(c, sort_keys=True)
        for key in ("containers", "initContainers")
        for c in pod["spec"].get(key) or []
    }
    after = {
        c["name"]: json.dumps(c, sort_keys=True)
        for key in ("containers", "initContainers")
        for c in mutated["spec"].get(key) or []
    }
    for name, text in before.items():
        if name not in chosen:
            assert after[name] == text, name
        else:
            c = json.loads(after[name])
            assert {
                "name": names.ENV_DIR,
                "value": mutated["spec"]["initContainers"][0]["env"][0]["value"],
            } in c["env"]
            assert any(m["name"] == names.VOLUME_CREDENTIALS and m["readOnly"] for m in c["volumeMounts"])


@SETTINGS
@given(pod=pods(), config=st.sampled_from(CONFIGS))
def test_a_denial_leaves_the_pod_unchanged(pod: dict[str, Any], config: InjectionConfig) -> None:
    before = copy.deepcopy(pod)
    result = mutate_pod(pod, config)
    assert pod == before
    if result.outcome == "denied":
        assert result.patch == [] and result.message
        assert result.message.count(":") >= 1  # "<what>: <value> ... accepted: ..." — never empty or bare
    else:
        assert result.outcome == "injected" and result.message is None


@SETTINGS
@given(pod=pods())
def test_outcome_follows_the_rules(pod: dict[str, Any]) -> None:
    """Denied exactly when a rule says so; the generator hits both sides of every rule."""
    spec, annotations = pod["spec"], pod["metadata"]["annotations"]
    chosen = selected_names(pod)
    mount = annotations.get(names.ANNOTATION_MOUNT_PATH, names.DEFAULT_MOUNT_PATH)
    everything = spec["containers"] + (spec.get("initContainers") or [])
    present = {c["name"] for c in everything}
    selected = [c for c in everything if c["name"] in chosen]
    should_deny = (
        annotations.get(names.ANNOTATION_TTL) == "soon"
        or any(v["name"] == "taskcreds" for v in spec.get("volumes") or [])
        or names.SIDECAR_CONTAINER in present
        or bool(chosen - present)
        or any(m["mountPath"] == mount for c in selected for m in c.get("volumeMounts") or [])
        or any(
            e["name"] == names.ENV_DIR and e.get("value") != mount
            for c in selected
            for e in c.get("env") or []
        )
    )
    assert (mutate_pod(pod, CONFIGS[0]).outcome == "denied") == should_deny


@SETTINGS
@given(
    pod=pods(),
    config=st.sampled_from(CONFIGS),
    max_duration=st.sampled_from([None, "2h", "1500ms"]),
    delivery=deliveries,
)
def test_the_webhooks_ready_json_patch_is_the_same_bytes(
    pod: dict[str, Any], config: InjectionConfig, max_duration: str | None, delivery: Any
) -> None:
    """``encoded=True`` (what the webhook sends) must serialize exactly like the plain dicts."""
    if max_duration is not None:
        pod["metadata"]["annotations"][names.ANNOTATION_MAX_DURATION] = max_duration
    plain = mutate_pod(pod, config, namespace="ns", delivery=delivery)
    encoded = mutate_pod(pod, config, namespace="ns", encoded=True, delivery=delivery)
    assert orjson.dumps(encoded.patch) == orjson.dumps(plain.patch)
    assert (encoded.outcome, encoded.warnings, encoded.message) == (
        plain.outcome,
        plain.warnings,
        plain.message,
    )
