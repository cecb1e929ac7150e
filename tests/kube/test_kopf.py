"""A real kopf operator against the stand-in: list+watch, annotation handlers, delete finalizers, status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from kubernetes_asyncio import client

from taskcreds import names
from tests.kube.crds import task_lease_crd
from tests.kube.fixtures import KubeApi

MERGE = "application/merge-patch+json"


@contextlib.asynccontextmanager
async def running(
    kube_api: KubeApi, registry: kopf.OperatorRegistry, initial_streaming: bool = False
) -> AsyncIterator[None]:
    """kopf.operator() in a task, scanning disabled, standalone; stopped through its stop flag."""
    settings = kopf.OperatorSettings()
    settings.watching.initial_streaming = initial_streaming
    settings.scanning.disabled = True
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 10
    settings.networking.request_timeout = 5
    # kopf keeps an idle per-object worker for 5 s and waits for it at exit: keep tests fast
    settings.queueing.idle_timeout = 0.3
    settings.queueing.exit_timeout = 0.3
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        kopf.operator(
            registry=registry,
            settings=settings,
            standalone=True,
            clusterwide=True,
            stop_flag=stop,
            ready_flag=ready,
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            pytest.fail("kopf did not stop within 10 s of its stop flag")


async def test_kopf_handlers_fire_on_annotation_change_and_deletion(kube_api: KubeApi) -> None:
    registry = kopf.OperatorRegistry()
    seen: list[tuple[str, Any]] = []

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kube_api.kopf_connection_info()

    @kopf.on.field(
        "v1",
        "pods",
        field=["metadata", "annotations", names.ANNOTATION_TASK_STATUS],
        labels={names.LABEL_INJECT: "true"},
        registry=registry,
    )
    def status_changed(old: Any, new: Any, name: str, body: kopf.Body, **_: Any) -> None:
        seen.append(("field", (name, old, new)))
        kopf.info(body, reason="TaskStatus", message=f"task status is now {new}")

    @kopf.on.delete("v1", "pods", labels={names.LABEL_INJECT: "true"}, registry=registry)
    def deleted(name: str, **_: Any) -> None:
        seen.append(("delete", name))

    core = client.CoreV1Api(await kube_api.kubernetes_asyncio_client())
    await core.create_namespaced_pod(
        "default",
        {
            "metadata": {
                "name": "agent",
                "labels": {names.LABEL_INJECT: "true"},
                "annotations": {names.ANNOTATION_TASK_STATUS: "running"},
            },
            "spec": {"containers": [{"name": "a", "image": "busybox:1"}]},
        },
    )
    await core.create_namespaced_pod(
        "default",
        {"metadata": {"name": "bystander"}, "spec": {"containers": [{"name": "a", "image": "busybox:1"}]}},
    )

    async with running(kube_api, registry):
        # kopf puts its finalizer on the pods its delete handler covers (and only those)
        await kube_api.wait_for(
            lambda: (
                (kube_api.get("v1", "Pod", "default", "agent") or {}).get("metadata", {}).get("finalizers")
            )
        )
        assert "finalizers" not in kube_api.get("v1", "Pod", "default", "bystander")["metadata"]
        await core.patch_namespaced_pod(
            "agent",
            "default",
            {"metadata": {"annotations": {names.ANNOTATION_TASK_STATUS: "completed"}}},
            _content_type=MERGE,
        )
        await kube_api.wait_for(lambda: any(kind == "field" and v[2] == "completed" for kind, v in seen))
        await core.delete_namespaced_pod("agent", "default")
        await kube_api.wait_for(lambda: kube_api.get("v1", "Pod", "default", "agent") is None)

    assert ("delete", "agent") in seen
    assert [v for kind, v in seen if kind == "field"] == [
        ("agent", None, "running"),
        ("agent", "running", "completed"),
    ]
    # kopf.info() becomes a core/v1 Event about the pod
    assert [(e["reason"], e["involvedObject"]["name"], e["message"]) for e in kube_api.events] == [
        ("TaskStatus", "agent", "task status is now running"),
        ("TaskStatus", "agent", "task status is now completed"),
    ]


def phase(kube_api: KubeApi, name: str) -> str | None:
    lease = kube_api.get(names.API_VERSION, names.KIND_TASK_LEASE, "default", name) or {}
    return lease.get("status", {}).get("phase")


@pytest.mark.parametrize("initial_streaming", [False, True], ids=["list-then-watch", "sendInitialEvents"])
async def test_kopf_custom_resource_handler_patches_status(
    kube_api: KubeApi, initial_streaming: bool
) -> None:
    kube_api.register_crd(task_lease_crd())
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kube_api.kopf_connection_info()

    @kopf.on.create(names.CRD_GROUP, names.CRD_VERSION, names.PLURAL_TASK_LEASES, registry=registry)
    def created(patch: kopf.Patch, **_: Any) -> None:
        patch.status["phase"] = "Active"

    kube_api.put(
        {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND_TASK_LEASE,
            "metadata": {"name": "before", "namespace": "default"},
            "spec": {"task": "T-0", "pod": "x"},
        }
    )
    async with running(kube_api, registry, initial_streaming):
        custom = client.CustomObjectsApi(await kube_api.kubernetes_asyncio_client())
        await custom.create_namespaced_custom_object(
            names.CRD_GROUP,
            names.CRD_VERSION,
            "default",
            names.PLURAL_TASK_LEASES,
            {
                "apiVersion": names.API_VERSION,
                "kind": names.KIND_TASK_LEASE,
                "metadata": {"name": "t"},
                "spec": {"task": "T-1", "pod": "agent"},
            },
        )
        for name in ("before", "t"):  # one existed before kopf started, one is created while it runs
            await kube_api.wait_for(lambda n=name: phase(kube_api, n) == "Active")
    assert any(c.resource == "taskleases/status" and c.verb == "patch" for c in kube_api.api_calls)
