"""The one-machine scenarios (tests/scenarios) on a real cluster, with the official kubernetes client.

Skipped, saying why, unless KUBECONFIG reaches a cluster with the chart, SPIRE and the CSI driver
(scripts/kind-e2e.sh makes one). The agent container is busybox: it waits for its credential
file and prints only its sha256. The value itself is read once through exec, kept in memory, and
used for the canary sweep over pod logs (every container, the operator's too), Events, TaskLeases
and pod annotations.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from taskcreds import names

AGENT_IMAGE = "busybox:1.36"
CRED = "api-token"  # the jwt CredentialSource the agent_namespace fixture creates


def eventually(check: Any, timeout: float = 90.0, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)


def agent_pod(name: str, *, labelled: bool = True, **annotations: str) -> dict[str, Any]:
    script = (
        f'while [ ! -s "$TASKCREDS_DIR/{CRED}/token" ]; do sleep 0.2; done; '
        f'sha256sum "$TASKCREDS_DIR/{CRED}/token" | cut -d" " -f1; sleep 3600'
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {names.LABEL_INJECT: "true"} if labelled else {"app": "plain"},
            "annotations": {
                names.ANNOTATION_TASK: f"task-{name}",
                names.ANNOTATION_CREDENTIALS: CRED,
                **annotations,
            },
        },
        "spec": {
            "serviceAccountName": "coding-agent",
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "agent", "image": AGENT_IMAGE, "command": ["sh", "-c", script]}],
        },
    }


class Scenario:
    """One agent pod on the cluster, and what a security team checks about it."""

    def __init__(self, kube: Any, namespace: str, name: str) -> None:
        self.kube, self.ns, self.name = kube, namespace, name
        self.core = kube.CoreV1Api()
        self.custom = kube.CustomObjectsApi()
        self.values: list[str] = []  # memory only

    def create(self, **annotations: str) -> None:
        self.core.create_namespaced_pod(self.ns, agent_pod(self.name, **annotations))

    def wait_running(self) -> None:
        def running() -> None:
            pod = self.core.read_namespaced_pod(self.name, self.ns)
            statuses = {c.name: c for c in pod.status.container_statuses or []}
            assert "agent" in statuses and statuses["agent"].state.running, pod.status.phase
            # the agent started only after the sidecar's startupProbe (/readyz: every file on disk)
            sidecar = {c.name: c for c in pod.status.init_container_statuses or []}[names.SIDECAR_CONTAINER]
            assert sidecar.started

        eventually(running)
        eventually(lambda: self._assert(len(self.logs("agent").strip()) == 64, "agent printed no hash"))

    @staticmethod
    def _assert(ok: bool, message: str) -> None:
        if not ok:
            raise AssertionError(message)

    def read_value(self) -> None:
        from kubernetes.stream import stream

        value = stream(
            self.core.connect_get_namespaced_pod_exec,
            self.name,
            self.ns,
            container="agent",
            command=["sh", "-c", f'cat "$TASKCREDS_DIR/{CRED}/token"'],
            stderr=False,
            stdin=False,
            stdout=True,
            tty=False,
        )
        assert value, "the agent could not read its credential"
        self.values.append(value)

    def logs(self, container: str) -> str:
        try:
            return str(self.core.read_namespaced_pod_log(self.name, self.ns, container=container))
        except Exception:  # noqa: BLE001 - a container that never ran has no log
            return ""

    def files_left(self) -> str:
        from kubernetes.stream import stream

        return str(
            stream(
                self.core.connect_get_namespaced_pod_exec,
                self.name,
                self.ns,
                container="agent",
                command=[
                    "sh",
                    "-c",
                    f'ls -A "$TASKCREDS_DIR" | grep -v -e "^{names.MANIFEST_FILE}$" -e "^\\.\\." || true; '
                    f'ls -d "$TASKCREDS_DIR"/..data 2>/dev/null || true',
                ],
                stderr=False,
                stdin=False,
                stdout=True,
                tty=False,
            )
        ).strip()

    def set_status(self, status: str) -> float:
        t0 = time.monotonic()
        self.core.patch_namespaced_pod(
            self.name, self.ns, {"metadata": {"annotations": {names.ANNOTATION_TASK_STATUS: status}}}
        )
        return t0

    def lease(self) -> dict[str, Any]:
        items = self.custom.list_namespaced_custom_object(
            names.CRD_GROUP, names.CRD_VERSION, self.ns, names.PLURAL_TASK_LEASES
        )["items"]
        mine = [i for i in items if i["spec"].get("pod") == self.name]
        assert mine, f"no TaskLease for pod {self.name}"
        return dict(mine[0])

    def wait_revoked(self, reason: str) -> dict[str, Any]:
        def revoked() -> dict[str, Any]:
            lease = self.lease()
            assert (lease.get("status") or {}).get("phase") == "Revoked", lease.get("status")
            assert names.FINALIZER_REVOKE not in (lease["metadata"].get("finalizers") or [])
            return lease

        lease = eventually(revoked, timeout=60, interval=0.2)
        for entry in lease["status"]["leases"]:
            assert entry.get("revokedAt"), entry
        assert reason in {e.get("revokeReason") for e in lease["status"]["leases"]}
        return lease

    def sweep(self, release_namespace: str) -> None:
        """No issued value in any log, Event, TaskLease or pod annotation (raw, base64, URL-encoded)."""
        hay: dict[str, str] = {}
        pod = self.core.read_namespaced_pod(self.name, self.ns)
        hay["pod"] = json.dumps(self.kube.ApiClient().sanitize_for_serialization(pod))
        for c in [names.SIDECAR_CONTAINER, "agent"]:
            hay[f"log {c}"] = self.logs(c)
        events = self.core.list_namespaced_event(self.ns)
        hay["events"] = json.dumps(self.kube.ApiClient().sanitize_for_serialization(events))
        hay["taskleases"] = json.dumps(self.lease())
        for op in self.core.list_namespaced_pod(release_namespace).items:
            for c in op.spec.containers:
                try:
                    hay[f"operator {op.metadata.name}/{c.name}"] = self.core.read_namespaced_pod_log(
                        op.metadata.name, release_namespace, container=c.name, since_seconds=600
                    )
                except Exception:  # noqa: BLE001, S112 - a container without logs has nothing to leak
                    continue
        for value in self.values:
            for form in (
                value,
                base64.b64encode(value.encode()).decode(),
                urllib.parse.quote(value, safe=""),
            ):
                found = [where for where, text in hay.items() if form in text]
                assert not found, f"an issued value appears in: {found}"


@pytest.fixture
def scenario(kube: Any, agent_namespace: str) -> Scenario:
    return Scenario(kube, agent_namespace, f"agent-{uuid.uuid4().hex[:6]}")


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_task_ends(scenario: Scenario, release: dict[str, str], status: str) -> None:
    scenario.create()
    scenario.wait_running()
    scenario.read_value()
    t0 = scenario.set_status(status)
    scenario.wait_revoked(status)
    lag = time.monotonic() - t0
    eventually(lambda: scenario._assert(scenario.files_left() == "", "credential files still present"))
    print(f"revocation lag ({status}): {lag * 1000:.0f} ms")
    scenario.sweep(release["namespace"])


def test_max_duration(scenario: Scenario, release: dict[str, str]) -> None:
    scenario.create(**{names.ANNOTATION_MAX_DURATION: "45s"})  # enough for the pod to start
    scenario.wait_running()
    scenario.read_value()
    scenario.wait_revoked("deadline")
    eventually(lambda: scenario._assert(scenario.files_left() == "", "credential files still present"))
    scenario.sweep(release["namespace"])


def test_pod_deleted(scenario: Scenario, release: dict[str, str]) -> None:
    scenario.create()
    scenario.wait_running()
    scenario.read_value()
    name = scenario.lease()["metadata"]["name"]
    scenario.core.delete_namespaced_pod(scenario.name, scenario.ns)

    def gone_or_revoked() -> None:
        items = scenario.custom.list_namespaced_custom_object(
            names.CRD_GROUP, names.CRD_VERSION, scenario.ns, names.PLURAL_TASK_LEASES
        )["items"]
        lease = next((i for i in items if i["metadata"]["name"] == name), None)
        # the TaskLease is owned by the pod: once revoked, its finalizer goes and GC removes it
        assert lease is None or (lease.get("status") or {}).get("phase") == "Revoked"

    eventually(gone_or_revoked, timeout=60)


@contextlib.contextmanager
def operator_down(kube: Any, release: dict[str, str]) -> Iterator[None]:
    """The operator Deployment scaled to 0 (webhook and broker gone) until the block ends."""
    apps = kube.AppsV1Api()
    deployments = apps.list_namespaced_deployment(release["namespace"]).items
    operator = next(
        d for d in deployments if "operator" in d.metadata.name or d.metadata.name == release["release"]
    )
    replicas = operator.spec.replicas
    apps.patch_namespaced_deployment_scale(
        operator.metadata.name, release["namespace"], {"spec": {"replicas": 0}}
    )
    core = kube.CoreV1Api()
    try:

        def no_endpoints() -> None:
            pods = core.list_namespaced_pod(release["namespace"]).items
            assert not [p for p in pods if p.metadata.name.startswith(operator.metadata.name)]

        eventually(no_endpoints, timeout=120)
        yield
    finally:
        apps.patch_namespaced_deployment_scale(
            operator.metadata.name, release["namespace"], {"spec": {"replicas": replicas}}
        )


def test_webhook_down_refuses_opted_in_pods(kube: Any, release: dict[str, str], agent_namespace: str) -> None:
    core = kube.CoreV1Api()
    with operator_down(kube, release):
        with pytest.raises(kube.exceptions.ApiException) as refused:
            core.create_namespaced_pod(agent_namespace, agent_pod("no-webhook"))
        assert "failed calling webhook" in refused.value.body
        core.create_namespaced_pod(agent_namespace, agent_pod("plain", labelled=False))


def test_task_ends_while_the_broker_is_down(scenario: Scenario, release: dict[str, str]) -> None:
    """Fault matrix row "broker down mid-task" (tests/scenarios/faults.py) on a real cluster: the
    sidecar wipes its files from the downward-API file alone; the operator revokes once it is back."""
    scenario.create()
    scenario.wait_running()
    scenario.read_value()
    with operator_down(scenario.kube, release):
        scenario.set_status("completed")
        eventually(lambda: scenario._assert(scenario.files_left() == "", "credential files still present"))
    scenario.wait_revoked("completed")
    scenario.sweep(release["namespace"])
