"""MemCluster keeps the API semantics the operator relies on (so tests on it mean something)."""

from __future__ import annotations

import asyncio

import pytest
from taskcreds.operator.cluster import AlreadyExists, ClusterError, Conflict, NotFound
from taskcreds.operator.memcluster import MemCluster, merge_patch

from taskcreds import names


@pytest.mark.parametrize(
    ("target", "patch", "expected"),
    [
        ({"a": 1}, {"b": 2}, {"a": 1, "b": 2}),
        ({"a": {"x": 1, "y": 2}}, {"a": {"y": None}}, {"a": {"x": 1}}),
        ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
        ({"a": 1}, {"a": {"b": 1}}, {"a": {"b": 1}}),
    ],
)
def test_merge_patch(target: dict, patch: dict, expected: dict) -> None:
    assert merge_patch(target, patch) == expected


def lease(name: str = "l1") -> dict:
    return {
        "metadata": {"name": name, "finalizers": [names.FINALIZER_REVOKE]},
        "spec": {"task": "t", "pod": "p"},
        "status": {"phase": "ignored on create"},
    }


async def test_task_lease_resource_versions_and_status_subresource() -> None:
    mem = MemCluster()
    created = await mem.create_task_lease("ns", lease())
    assert "status" not in created  # status only through the subresource
    with pytest.raises(AlreadyExists):
        await mem.create_task_lease("ns", lease())
    rv = created["metadata"]["resourceVersion"]
    patched = await mem.patch_task_lease(
        "ns",
        "l1",
        {"metadata": {"resourceVersion": rv}, "status": {"phase": "Active"}, "spec": {"task": "x"}},
        subresource="status",
    )
    assert patched["status"] == {"phase": "Active"} and patched["spec"]["task"] == "t"
    assert patched["metadata"]["resourceVersion"] != rv
    with pytest.raises(Conflict):
        await mem.patch_task_lease(
            "ns", "l1", {"metadata": {"resourceVersion": rv}, "status": {"phase": "x"}}, subresource="status"
        )
    main = await mem.patch_task_lease(
        "ns", "l1", {"status": {"phase": "Revoked"}, "metadata": {"labels": {"a": "b"}}}
    )
    assert main["status"] == {"phase": "Active"} and main["metadata"]["labels"] == {"a": "b"}
    with pytest.raises(NotFound):
        await mem.patch_task_lease("ns", "nope", {})


async def test_finalizers_hold_deletion_and_owner_gc() -> None:
    mem = MemCluster()
    pod = mem.put_pod({"metadata": {"name": "p", "namespace": "ns"}})
    body = lease()
    body["metadata"]["ownerReferences"] = [{"kind": "Pod", "name": "p", "uid": pod["metadata"]["uid"]}]
    await mem.create_task_lease("ns", body)
    mem.delete_pod("ns", "p")
    held = await mem.get_task_lease("ns", "l1")
    assert held is not None and held["metadata"]["deletionTimestamp"]
    await mem.patch_task_lease("ns", "l1", {"metadata": {"finalizers": []}})
    assert await mem.get_task_lease("ns", "l1") is None
    await mem.create_task_lease("ns", {"metadata": {"name": "free"}, "spec": {}})
    await mem.delete_task_lease("ns", "free")
    assert await mem.get_task_lease("ns", "free") is None


async def test_tokens_die_with_their_pod_or_binding_secret() -> None:
    mem = MemCluster()
    pod = mem.put_pod({"metadata": {"name": "p", "namespace": "ns"}})
    token = mem.issue_pod_token("ns", "agent", "p", pod["metadata"]["uid"])
    ident = await mem.review_token(token, names.TOKEN_AUDIENCE)
    assert ident is not None and ident.pod_name == "p"
    assert await mem.review_token(token, "other") is None
    binding = await mem.apply_secret("ns", "bind", {}, owner=pod)
    bound, _ = await mem.create_service_account_token(
        "ns", "deployer", ["api"], 60, None, bound_secret=("bind", binding["metadata"]["uid"])
    )
    assert (await mem.review_token(bound, "api")) is not None
    await mem.delete_secret("ns", "bind")
    assert await mem.review_token(bound, "api") is None
    mem.delete_pod("ns", "p")
    assert await mem.review_token(token, names.TOKEN_AUDIENCE) is None
    with pytest.raises(NotFound):
        await mem.create_service_account_token("ns", "agent", ["x"], 600, ("p", pod["metadata"]["uid"]))


async def test_watch_replays_and_filters() -> None:
    mem = MemCluster()
    mem.put_pod({"metadata": {"name": "a", "namespace": "ns", "labels": {"x": "1"}}})
    events: list[tuple[str, str]] = []

    async def follow() -> None:
        async for kind, p in mem.watch_pods("ns", "x=1"):
            events.append((kind, p["metadata"]["name"]))

    task = asyncio.create_task(follow())
    await asyncio.sleep(0)
    mem.put_pod({"metadata": {"name": "b", "namespace": "ns"}})
    mem.set_annotation("ns", "a", "k", "v")
    mem.delete_pod("ns", "a")
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert events == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]


async def test_injected_failures() -> None:
    mem = MemCluster()
    mem.fail("get_pod", times=2)
    for _ in range(2):
        with pytest.raises(ClusterError, match="injected"):
            await mem.get_pod("ns", "p")
    assert await mem.get_pod("ns", "p") is None
