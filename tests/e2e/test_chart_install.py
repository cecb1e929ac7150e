"""On a real cluster: the chart installs, the webhook injects opted-in pods and leaves others alone."""

from __future__ import annotations

import time
from typing import Any

import pytest

from taskcreds import names

PAUSE = "registry.k8s.io/pause:3.10"


def agent_pod(name: str, *, opted_in: bool, task: str = "e2e-task") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if opted_in:
        metadata["labels"] = {names.LABEL_INJECT: "true"}
        metadata["annotations"] = {names.ANNOTATION_TASK: task, names.ANNOTATION_CREDENTIALS: "api-token"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"serviceAccountName": "coding-agent", "containers": [{"name": "agent", "image": PAUSE}]},
    }


def eventually(check: Any, timeout: float = 60.0, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)


def test_operator_is_available_and_trusted(kube: Any, release: dict[str, str]) -> None:
    apps = kube.AppsV1Api()
    deploy = apps.read_namespaced_deployment(f"{release['release']}-operator", release["namespace"])
    assert (deploy.status.available_replicas or 0) >= 1

    def ca_bundle_set() -> None:
        config = kube.AdmissionregistrationV1Api().read_mutating_webhook_configuration(release["release"])
        assert config.webhooks[0].client_config.ca_bundle, "caBundle not yet patched by the operator"

    eventually(ca_bundle_set)


def test_opted_in_pod_gets_the_sidecar(kube: Any, agent_namespace: str) -> None:
    core = kube.CoreV1Api()
    pod = core.create_namespaced_pod(agent_namespace, agent_pod("agent", opted_in=True))
    spec = pod.spec
    assert pod.metadata.annotations.get(names.ANNOTATION_INJECTED), "no taskcreds.io/injected annotation"
    assert spec.init_containers and spec.init_containers[0].name == names.SIDECAR_CONTAINER
    assert spec.init_containers[0].restart_policy == "Always"
    volumes = {v.name for v in spec.volumes}
    assert {names.VOLUME_CREDENTIALS, names.VOLUME_PODINFO, names.VOLUME_SPIFFE} <= volumes
    (agent,) = spec.containers
    assert {e.name: e.value for e in agent.env or []}.get(names.ENV_DIR) == names.DEFAULT_MOUNT_PATH
    assert any(m.name == names.VOLUME_CREDENTIALS and m.read_only for m in agent.volume_mounts)


def test_pod_without_the_label_is_untouched(kube: Any, agent_namespace: str) -> None:
    core = kube.CoreV1Api()
    pod = core.create_namespaced_pod(agent_namespace, agent_pod("bystander", opted_in=False))
    assert not (pod.metadata.annotations or {}).get(names.ANNOTATION_INJECTED)
    assert not pod.spec.init_containers
    assert not {v.name for v in pod.spec.volumes or []} & {names.VOLUME_CREDENTIALS, names.VOLUME_SPIFFE}
    assert [c.name for c in pod.spec.containers] == ["agent"]


def test_malformed_opted_in_pod_is_denied_with_the_key_named(kube: Any, agent_namespace: str) -> None:
    core = kube.CoreV1Api()
    with pytest.raises(kube.ApiException) as info:
        core.create_namespaced_pod(
            agent_namespace, agent_pod("bad", opted_in=True, task="-not a task id"), dry_run="All"
        )
    assert names.ANNOTATION_TASK in info.value.body


def test_release_namespace_never_reaches_the_webhook(kube: Any, release: dict[str, str]) -> None:
    pod = agent_pod("opted-in-but-excluded", opted_in=True)
    pod["spec"].pop("serviceAccountName")
    created = kube.CoreV1Api().create_namespaced_pod(release["namespace"], pod, dry_run="All")
    assert not created.spec.init_containers
