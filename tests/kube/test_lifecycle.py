"""Deletion as the API does it: finalizers hold objects, the garbage collector follows owners."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes_asyncio import client, watch

from taskcreds import names
from tests.kube.crds import task_lease_crd
from tests.kube.fixtures import KubeApi

MERGE = "application/merge-patch+json"
G, V, TL = names.CRD_GROUP, names.CRD_VERSION, names.PLURAL_TASK_LEASES


def pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "agent", "image": "busybox:1"}]}}


def lease(name: str, owner: dict[str, Any] | None, finalizers: list[str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "finalizers": finalizers or []}
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND_TASK_LEASE,
        "metadata": meta,
        "spec": {"task": "T", "pod": owner["metadata"]["name"] if owner else "none"},
    }


@pytest.fixture
async def apis(kube_api: KubeApi) -> tuple[client.CoreV1Api, client.CustomObjectsApi]:
    kube_api.register_crd(task_lease_crd())
    api = await kube_api.kubernetes_asyncio_client()
    return client.CoreV1Api(api), client.CustomObjectsApi(api)


async def test_finalizer_holds_object_until_removed(kube_api: KubeApi, apis: Any) -> None:
    core, custom = apis
    await custom.create_namespaced_custom_object(
        G, V, "default", TL, lease("l1", None, [names.FINALIZER_REVOKE])
    )
    held = await custom.delete_namespaced_custom_object(G, V, "default", TL, "l1")
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == [
        names.FINALIZER_REVOKE
    ]
    still = await custom.get_namespaced_custom_object(G, V, "default", TL, "l1")
    assert still["metadata"]["deletionTimestamp"] == held["metadata"]["deletionTimestamp"]
    # deleting again changes nothing; adding a finalizer while deleting is refused
    again = await custom.delete_namespaced_custom_object(G, V, "default", TL, "l1")
    assert again["metadata"]["resourceVersion"] == held["metadata"]["resourceVersion"]
    with pytest.raises(client.ApiException) as e:
        await custom.patch_namespaced_custom_object(
            G,
            V,
            "default",
            TL,
            "l1",
            {"metadata": {"finalizers": [names.FINALIZER_REVOKE, "other/x"]}},
            _content_type=MERGE,
        )
    assert e.value.status == 422
    rv = held["metadata"]["resourceVersion"]
    await custom.patch_namespaced_custom_object(
        G, V, "default", TL, "l1", {"metadata": {"finalizers": None}}, _content_type=MERGE
    )
    assert kube_api.get(names.API_VERSION, names.KIND_TASK_LEASE, "default", "l1") is None
    types = []
    async with watch.Watch().stream(
        custom.list_namespaced_custom_object, G, V, "default", TL, resource_version=rv, timeout_seconds=0.3
    ) as stream:
        async for ev in stream:
            types.append(ev["type"])
    assert types == ["DELETED"]


async def test_removing_finalizers_from_a_live_object_is_an_update(kube_api: KubeApi, apis: Any) -> None:
    core, _ = apis
    await core.create_namespaced_config_map("default", {"metadata": {"name": "c", "finalizers": ["x/y"]}})
    cm = await core.patch_namespaced_config_map(
        "c", "default", {"metadata": {"finalizers": None}}, _content_type=MERGE
    )
    assert cm.metadata.finalizers is None and cm.metadata.deletion_timestamp is None
    assert kube_api.get("v1", "ConfigMap", "default", "c") is not None


async def test_owner_deletion_collects_dependents_honouring_their_finalizers(
    kube_api: KubeApi, apis: Any
) -> None:
    core, custom = apis
    owner = (await core.create_namespaced_pod("default", pod("agent"))).to_dict()
    owner = {"metadata": {"name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]}}
    await custom.create_namespaced_custom_object(
        G, V, "default", TL, lease("held", owner, [names.FINALIZER_REVOKE])
    )
    await custom.create_namespaced_custom_object(G, V, "default", TL, lease("free", owner))
    await core.delete_namespaced_pod("agent", "default")
    await kube_api.wait_for(
        lambda: kube_api.get(names.API_VERSION, names.KIND_TASK_LEASE, "default", "free") is None
    )
    held = kube_api.get(names.API_VERSION, names.KIND_TASK_LEASE, "default", "held")
    assert held is not None and held["metadata"]["deletionTimestamp"]
    await custom.patch_namespaced_custom_object(
        G, V, "default", TL, "held", {"metadata": {"finalizers": []}}, _content_type=MERGE
    )
    assert kube_api.list(names.API_VERSION, names.KIND_TASK_LEASE) == []


async def test_dependent_of_a_missing_owner_is_collected(kube_api: KubeApi, apis: Any) -> None:
    _, custom = apis
    ghost = {"metadata": {"name": "ghost", "uid": "00000000-0000-0000-0000-000000000000"}}
    await custom.create_namespaced_custom_object(G, V, "default", TL, lease("orphan", ghost))
    await kube_api.wait_for(
        lambda: kube_api.get(names.API_VERSION, names.KIND_TASK_LEASE, "default", "orphan") is None
    )


async def test_orphan_propagation_keeps_dependents(kube_api: KubeApi, apis: Any) -> None:
    core, custom = apis
    created = await core.create_namespaced_pod("default", pod("agent"))
    owner = {"metadata": {"name": "agent", "uid": created.metadata.uid}}
    await custom.create_namespaced_custom_object(G, V, "default", TL, lease("kept", owner))
    await core.delete_namespaced_pod("agent", "default", propagation_policy="Orphan")
    kept = kube_api.get(names.API_VERSION, names.KIND_TASK_LEASE, "default", "kept")
    assert kept is not None and "ownerReferences" not in kept["metadata"]


async def test_namespace_deletion_removes_its_contents(kube_api: KubeApi, apis: Any) -> None:
    core, _ = apis
    await core.create_namespace({"metadata": {"name": "doomed"}})
    await core.create_namespaced_pod("doomed", pod("p"))
    await core.create_namespaced_config_map("doomed", {"metadata": {"name": "held", "finalizers": ["x/y"]}})
    await core.delete_namespace("doomed")
    ns = await core.read_namespace("doomed")
    assert ns.status.phase == "Terminating"
    with pytest.raises(client.ApiException) as e:
        await core.create_namespaced_config_map("doomed", {"metadata": {"name": "late"}})
    assert e.value.status == 403
    await kube_api.wait_for(lambda: kube_api.get("v1", "Pod", "doomed", "p") is None)
    assert kube_api.get("v1", "Namespace", None, "doomed") is not None  # held by the finalized ConfigMap
    await core.patch_namespaced_config_map(
        "held", "doomed", {"metadata": {"finalizers": None}}, _content_type=MERGE
    )
    await kube_api.wait_for(lambda: kube_api.get("v1", "Namespace", None, "doomed") is None)


async def test_delete_preconditions(apis: Any) -> None:
    core, _ = apis
    created = await core.create_namespaced_pod("default", pod("p"))
    with pytest.raises(client.ApiException) as e:
        await core.delete_namespaced_pod("p", "default", body={"preconditions": {"uid": "not-the-uid"}})
    assert e.value.status == 409
    await core.delete_namespaced_pod("p", "default", body={"preconditions": {"uid": created.metadata.uid}})


async def test_new_namespace_gets_default_service_account(kube_api: KubeApi, apis: Any) -> None:
    core, _ = apis
    await core.create_namespace({"metadata": {"name": "agents", "labels": {"team": "a"}}})
    sa = await core.read_namespaced_service_account("default", "agents")
    assert sa.metadata.uid
    ns = await core.read_namespace("agents")
    assert ns.metadata.labels == {"team": "a", "kubernetes.io/metadata.name": "agents"}


async def test_scheduled_pod_is_deleted_gracefully(kube_api: KubeApi, apis: Any) -> None:
    core, _ = apis
    await core.create_namespaced_pod("default", pod("running"))
    kube_api.bind_pod("default", "running")
    kube_api.pod_termination_delay = 0.2
    held = await core.delete_namespaced_pod("running", "default")
    assert held.metadata.deletion_timestamp and held.metadata.deletion_grace_period_seconds == 30
    assert kube_api.get("v1", "Pod", "default", "running") is not None  # containers still stopping
    await kube_api.wait_for(lambda: kube_api.get("v1", "Pod", "default", "running") is None)


async def test_scheduled_pod_with_finalizer_waits_for_it(kube_api: KubeApi, apis: Any) -> None:
    core, _ = apis
    await core.create_namespaced_pod(
        "default", {**pod("held"), "metadata": {"name": "held", "finalizers": ["x/y"]}}
    )
    kube_api.bind_pod("default", "held")
    await core.delete_namespaced_pod("held", "default", grace_period_seconds=5)
    await kube_api.wait_for(
        lambda: (
            (kube_api.get("v1", "Pod", "default", "held") or {})
            .get("metadata", {})
            .get("deletionGracePeriodSeconds")
            == 0
        )
    )
    await core.patch_namespaced_pod(
        "held", "default", {"metadata": {"$deleteFromPrimitiveList/finalizers": ["x/y"]}}
    )
    assert kube_api.get("v1", "Pod", "default", "held") is None


@pytest.mark.parametrize(
    ("case", "event", "ok"),
    [
        (
            "matching namespace",
            {"involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"}},
            True,
        ),
        ("namespace mismatch", {"involvedObject": {"kind": "Pod", "name": "p", "namespace": "other"}}, False),
        (
            "bad type",
            {"involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"}, "type": "Info"},
            False,
        ),
    ],
)
async def test_core_event_validation(apis: Any, case: str, event: dict[str, Any], ok: bool) -> None:
    core, _ = apis
    body = {"metadata": {"generateName": "e."}, "reason": "R", "message": "m", **event}
    if ok:
        await core.create_namespaced_event("default", body)
    else:
        with pytest.raises(client.ApiException) as e:
            await core.create_namespaced_event("default", body)
        assert e.value.status == 422, case
