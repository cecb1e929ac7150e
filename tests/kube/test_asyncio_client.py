"""The stand-in through kubernetes_asyncio, unmodified: what operator code sees on a real cluster."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from taskcreds import names
from tests.kube.crds import cluster_credential_source_crd, credential_source_crd, task_lease_crd
from tests.kube.fixtures import KubeApi

MERGE = "application/merge-patch+json"


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "agent", "image": "busybox:1.36"}]},
    }


@pytest.fixture
async def core(kube_api: KubeApi) -> client.CoreV1Api:
    return client.CoreV1Api(await kube_api.kubernetes_asyncio_client())


@pytest.fixture
async def custom(kube_api: KubeApi) -> client.CustomObjectsApi:
    kube_api.register_crd(task_lease_crd())
    kube_api.register_crd(credential_source_crd())
    kube_api.register_crd(cluster_credential_source_crd())
    return client.CustomObjectsApi(await kube_api.kubernetes_asyncio_client())


async def test_pod_crud_keeps_api_metadata(core: client.CoreV1Api) -> None:
    created = await core.create_namespaced_pod("default", pod("p1", app="x"))
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.metadata.generation == 1
    assert created.status.phase == "Pending"
    assert created.spec.service_account_name == "default"  # defaulted as the API does
    got = await core.read_namespaced_pod("p1", "default")
    assert got.metadata.resource_version == created.metadata.resource_version
    patched = await core.patch_namespaced_pod("p1", "default", {"metadata": {"annotations": {"k": "v"}}})
    assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)
    assert patched.metadata.annotations == {"k": "v"}
    assert patched.metadata.generation == 1  # metadata changes do not bump generation
    deleted = await core.delete_namespaced_pod("p1", "default")
    assert deleted.metadata.name == "p1"
    with pytest.raises(ApiException) as e:
        await core.read_namespaced_pod("p1", "default")
    assert e.value.status == 404 and json.loads(e.value.body)["message"] == 'pods "p1" not found'


@pytest.mark.parametrize(
    ("case", "call", "status", "reason"),
    [
        ("create twice", lambda c: c.create_namespaced_pod("default", pod("dup")), 409, "AlreadyExists"),
        ("missing namespace", lambda c: c.create_namespaced_pod("nowhere", pod("p")), 404, "NotFound"),
        (
            "no containers",
            lambda c: c.create_namespaced_pod(
                "default", {"metadata": {"name": "empty"}, "spec": {"containers": []}}
            ),
            422,
            "Invalid",
        ),
        ("bad name", lambda c: c.create_namespaced_pod("default", pod("Not_A_Name")), 422, "Invalid"),
        (
            "mount of a missing volume",
            lambda c: c.create_namespaced_pod(
                "default",
                {
                    "metadata": {"name": "m"},
                    "spec": {
                        "containers": [
                            {"name": "a", "image": "i", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}
                        ]
                    },
                },
            ),
            422,
            "Invalid",
        ),
        (
            "pod spec is immutable",
            lambda c: c.patch_namespaced_pod(
                "dup",
                "default",
                {"spec": {"containers": [{"name": "agent", "env": [{"name": "A", "value": "1"}]}]}},
            ),
            422,
            "Invalid",
        ),
        (
            "non-string annotation",
            lambda c: c.patch_namespaced_pod("dup", "default", {"metadata": {"annotations": {"n": 1}}}),
            400,
            "BadRequest",
        ),
        (
            "stale resourceVersion",
            lambda c: c.replace_namespaced_pod(
                "dup", "default", {**pod("dup"), "metadata": {"name": "dup", "resourceVersion": "1"}}
            ),
            409,
            "Conflict",
        ),
        (
            "unsupported field selector",
            lambda c: c.list_namespaced_pod("default", field_selector="spec.image=x"),
            400,
            "BadRequest",
        ),
    ],
)
async def test_errors_are_api_status_objects(
    core: client.CoreV1Api, case: str, call: Any, status: int, reason: str
) -> None:
    await core.create_namespaced_pod("default", pod("dup"))
    with pytest.raises(ApiException) as e:
        await call(core)
    assert e.value.status == status, case
    body = json.loads(e.value.body)
    assert body["kind"] == "Status" and body["reason"] == reason and body["code"] == status, body


def _secret(name: str, type_: str | None, **data: str) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": name}, "stringData": data}
    if type_ is not None:
        body["type"] = type_
    return body


_TLS = "kubernetes.io/tls"
_PAIR = {"tls.crt": "c", "tls.key": "k"}


@pytest.mark.parametrize(
    ("case", "stored", "call", "error"),
    [
        # ValidateSecretUpdate: type is immutable, whatever the verb; no type on PUT means Opaque
        ("PUT Opaque over tls", _TLS, lambda c: c.replace_namespaced_secret(
            "s", "default", _secret("s", "Opaque", **_PAIR)), 'type: Invalid value: "Opaque": field is immutable'),
        ("PUT without type over tls", _TLS, lambda c: c.replace_namespaced_secret(
            "s", "default", _secret("s", None, **_PAIR)), 'type: Invalid value: "Opaque": field is immutable'),
        ("merge patch of type", _TLS, lambda c: c.patch_namespaced_secret(
            "s", "default", {"type": "Opaque"}), 'type: Invalid value: "Opaque": field is immutable'),
        ("PUT tls over Opaque", "Opaque", lambda c: c.replace_namespaced_secret(
            "s", "default", _secret("s", _TLS, **_PAIR)), f'type: Invalid value: "{_TLS}": field is immutable'),
        # ValidateSecret: kubernetes.io/tls needs tls.crt and tls.key, on create and on update
        ("create tls without tls.key", None, lambda c: c.create_namespaced_secret(
            "default", _secret("s", _TLS, **{"tls.crt": "c"})), "data[tls.key]: Required value"),
        ("create tls with no keys", None, lambda c: c.create_namespaced_secret(
            "default", _secret("s", _TLS)), "data[tls.crt]: Required value, data[tls.key]: Required value"),
        ("PUT tls dropping tls.crt", _TLS, lambda c: c.replace_namespaced_secret(
            "s", "default", _secret("s", _TLS, **{"tls.key": "k"})), "data[tls.crt]: Required value"),
    ],
)
async def test_secret_type_is_immutable_and_tls_needs_its_keys(
    core: client.CoreV1Api, case: str, stored: str | None, call: Any, error: str
) -> None:
    if stored is not None:
        await core.create_namespaced_secret("default", _secret("s", stored, **_PAIR))
    with pytest.raises(ApiException) as e:
        await call(core)
    body = json.loads(e.value.body)
    assert (e.value.status, body["reason"]) == (422, "Invalid"), case
    assert body["message"] == f'Secret "s" is invalid: {error}', case
    if stored is not None:
        assert (await core.read_namespaced_secret("s", "default")).type == stored, case


@pytest.mark.parametrize(
    ("case", "stored", "body"),
    [
        ("same tls type, extra ca.* keys", _TLS, _secret("s", _TLS, **_PAIR, **{"ca.crt": "a", "ca.key": "b"})),
        ("Opaque to Opaque", "Opaque", _secret("s", "Opaque", x="y")),
        ("no type over Opaque (defaulted)", "Opaque", _secret("s", None, x="y")),
    ],
)
async def test_secret_updates_that_keep_the_type_are_accepted(
    core: client.CoreV1Api, case: str, stored: str, body: dict[str, Any]
) -> None:
    await core.create_namespaced_secret("default", _secret("s", stored, **_PAIR))
    replaced = await core.replace_namespaced_secret("s", "default", body)
    assert replaced.type == stored, case
    assert set(replaced.data) == set(body["stringData"]), case


async def test_selectors_and_all_namespace_lists(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    await core.create_namespace({"metadata": {"name": "agents"}})
    await core.create_namespaced_pod("default", pod("a", tier="web", inject="true"))
    await core.create_namespaced_pod("agents", pod("b", tier="db", inject="true"))
    await core.create_namespaced_pod("agents", pod("c", tier="web"))

    async def names_of(**kw: Any) -> list[str]:
        res = await core.list_pod_for_all_namespaces(**kw)
        return sorted(p.metadata.name for p in res.items)

    assert await names_of() == ["a", "b", "c"]
    assert await names_of(label_selector="tier=web") == ["a", "c"]
    assert await names_of(label_selector="tier in (db,cache),inject") == ["b"]
    assert await names_of(label_selector="!inject") == ["c"]
    assert await names_of(field_selector="metadata.namespace=agents") == ["b", "c"]
    assert await names_of(field_selector="metadata.name!=a,status.phase=Pending") == ["b", "c"]
    assert sorted(p.metadata.name for p in (await core.list_namespaced_pod("agents")).items) == ["b", "c"]


async def test_generate_name_and_pagination(core: client.CoreV1Api) -> None:
    made = [
        await core.create_namespaced_config_map("default", {"metadata": {"generateName": "cm-"}})
        for _ in range(5)
    ]
    assert all(m.metadata.name.startswith("cm-") and len(m.metadata.name) == 8 for m in made)
    seen, token = [], None
    while True:
        page = await core.list_namespaced_config_map("default", limit=2, _continue=token)
        seen += [m.metadata.name for m in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert sorted(seen) == sorted(m.metadata.name for m in made)


async def test_every_patch_type(core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "p", "labels": {"a": "1", "b": "2"}, "finalizers": ["x/one"]},
            "spec": {"containers": [{"name": "agent", "image": "busybox:1"}]},
        },
    )
    merged = await core.patch_namespaced_pod(
        "p", "default", {"metadata": {"labels": {"a": None, "c": "3"}}}, _content_type=MERGE
    )
    assert merged.metadata.labels == {"b": "2", "c": "3"}
    jp = await core.patch_namespaced_pod(
        "p",
        "default",
        [
            {"op": "test", "path": "/metadata/labels/b", "value": "2"},
            {"op": "add", "path": "/metadata/annotations", "value": {"j": "p"}},
        ],
    )
    assert jp.metadata.annotations == {"j": "p"}
    # strategic merge (the client's default for dicts): finalizers merge as a set, images by container name
    sm = await core.patch_namespaced_pod(
        "p",
        "default",
        {
            "metadata": {"finalizers": ["x/two"]},
            "spec": {"containers": [{"name": "agent", "image": "busybox:2"}]},
        },
    )
    assert sm.metadata.finalizers == ["x/one", "x/two"]
    assert sm.spec.containers[0].image == "busybox:2" and sm.spec.containers[0].name == "agent"
    with pytest.raises(ApiException) as e:
        await core.patch_namespaced_pod(
            "p", "default", [{"op": "test", "path": "/metadata/labels/b", "value": "9"}]
        )
    assert e.value.status == 422
    with pytest.raises(ApiException) as e:
        await core.patch_namespaced_pod(
            "p", "default", {"metadata": {}}, _content_type="application/apply-patch+yaml"
        )
    assert e.value.status == 415


async def test_pod_status_subresource_is_separate(core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod("default", pod("p"))
    ignored = await core.patch_namespaced_pod(
        "p", "default", {"status": {"phase": "Running"}}, _content_type=MERGE
    )
    assert ignored.status.phase == "Pending"
    running = await core.patch_namespaced_pod_status(
        "p",
        "default",
        {"status": {"phase": "Running"}, "metadata": {"labels": {"no": "pe"}}},
        _content_type=MERGE,
    )
    assert running.status.phase == "Running" and not running.metadata.labels


async def test_custom_resources_with_status_subresource_and_schema(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    g, v, ns = names.CRD_GROUP, names.CRD_VERSION, "default"
    body = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND_TASK_LEASE,
        "metadata": {"name": "t1"},
        "spec": {"task": "T-1", "pod": "p", "unknown": "pruned"},
        "status": {"phase": "Active"},
    }
    created = await custom.create_namespaced_custom_object(g, v, ns, names.PLURAL_TASK_LEASES, body)
    assert "status" not in created  # status is ignored on create with a status subresource
    assert created["spec"] == {"task": "T-1", "pod": "p"}  # unknown fields are pruned
    st = await custom.patch_namespaced_custom_object_status(
        g, v, ns, names.PLURAL_TASK_LEASES, "t1", {"status": {"phase": "Active"}}, _content_type=MERGE
    )
    assert st["status"] == {"phase": "Active"}
    main = await custom.patch_namespaced_custom_object(
        g,
        v,
        ns,
        names.PLURAL_TASK_LEASES,
        "t1",
        {"spec": {"task": "T-2"}, "status": {"phase": "Revoked"}},
        _content_type=MERGE,
    )
    assert main["status"] == {"phase": "Active"} and main["spec"]["task"] == "T-2"
    assert main["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as e:
        await custom.patch_namespaced_custom_object_status(
            g, v, ns, names.PLURAL_TASK_LEASES, "t1", {"status": {"phase": "Gone"}}, _content_type=MERGE
        )
    assert e.value.status == 422 and "supported values" in e.value.body
    # kubernetes_asyncio picks json-patch for a dict body on custom objects: a real API refuses it too
    with pytest.raises(ApiException) as e:
        await custom.patch_namespaced_custom_object(g, v, ns, names.PLURAL_TASK_LEASES, "t1", {"spec": {}})
    assert e.value.status == 400 and "jsonPatchOp" in e.value.body
    ccs = await custom.create_cluster_custom_object(
        g,
        v,
        names.PLURAL_CLUSTER_CREDENTIAL_SOURCES,
        {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND_CLUSTER_CREDENTIAL_SOURCE,
            "metadata": {"name": "github"},
            "spec": {"provider": "github-app"},
        },
    )
    assert "namespace" not in ccs["metadata"]
    listed = await custom.list_cluster_custom_object(g, v, names.PLURAL_TASK_LEASES)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["t1"]
    assert listed["items"][0]["kind"] == names.KIND_TASK_LEASE  # CR lists keep kind in items


async def test_watch_streams_changes_from_a_resource_version(
    kube_api: KubeApi, core: client.CoreV1Api
) -> None:
    listed = await core.list_namespaced_pod("default")
    rv = listed.metadata.resource_version
    await core.create_namespaced_pod("default", pod("w"))
    await core.patch_namespaced_pod(
        "w", "default", {"metadata": {"annotations": {names.ANNOTATION_TASK_STATUS: "completed"}}}
    )
    await core.delete_namespaced_pod("w", "default")
    seen = []
    async with watch.Watch().stream(
        core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=1
    ) as stream:
        async for ev in stream:
            seen.append((ev["type"], ev["object"].metadata.name))
    assert seen == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]


async def test_watch_sees_live_events_and_selector_transitions(
    kube_api: KubeApi, core: client.CoreV1Api
) -> None:
    await core.create_namespaced_pod("default", pod("s", inject="true"))
    seen: list[tuple[str, str]] = []

    async def consume() -> None:
        async with watch.Watch().stream(
            core.list_namespaced_pod, "default", label_selector="inject=true", timeout_seconds=2
        ) as stream:
            async for ev in stream:
                seen.append((ev["type"], ev["object"].metadata.name))
                if len(seen) == 3:
                    return

    task = asyncio.create_task(consume())
    await kube_api.wait_for(kube_api.watch_count)
    await core.patch_namespaced_pod("s", "default", {"metadata": {"labels": {"inject": "false"}}})
    await core.patch_namespaced_pod("s", "default", {"metadata": {"labels": {"inject": "true"}}})
    await asyncio.wait_for(task, 3)
    # synthetic ADDED for the current state, then leaving/entering the selector as DELETED/ADDED
    assert seen == [("ADDED", "s"), ("DELETED", "s"), ("ADDED", "s")]


async def test_discovery_lists_resources_and_subresources(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    api = await kube_api.kubernetes_asyncio_client()
    core = await client.CoreV1Api(api).get_api_resources()
    rows = {r.name: r for r in core.resources}
    assert {"pods", "pods/status", "serviceaccounts/token", "namespaces", "events", "secrets"} <= set(rows)
    assert rows["pods"].namespaced and not rows["namespaces"].namespaced
    groups = await client.ApisApi(api).get_api_versions()
    assert {"taskcreds.io", "events.k8s.io", "coordination.k8s.io", "authentication.k8s.io"} <= {
        g.name for g in groups.groups
    }
    resp = await client.CustomObjectsApi(api).get_api_resources(names.CRD_GROUP, names.CRD_VERSION)
    listed = {r.name: r for r in resp.resources}
    assert listed["taskleases"].namespaced and "taskleases/status" in listed
    assert not listed["clustercredentialsources"].namespaced
    version = await client.VersionApi(api).get_code()
    assert version.major == "1"


async def test_unauthenticated_requests_are_refused(kube_api: KubeApi) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        async with s.get(f"{kube_api.url}/api/v1/pods") as r:
            assert r.status == 401
        async with s.get(f"{kube_api.url}/version") as r:
            assert r.status == 200


async def test_events_are_recorded_in_both_api_groups(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    api = await kube_api.kubernetes_asyncio_client()
    await core.create_namespaced_event(
        "default",
        {
            "metadata": {"generateName": "p."},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
            "reason": "Issued",
            "message": "credential github issued",
            "type": "Normal",
        },
    )
    await client.EventsV1Api(api).create_namespaced_event(
        "default",
        {
            "metadata": {"generateName": "p."},
            "regarding": {"kind": "Pod", "name": "p", "namespace": "default"},
            "reason": "Revoked",
            "note": "all leases revoked",
            "type": "Normal",
            "action": "Revoke",
            "reportingController": "taskcreds.io/operator",
            "reportingInstance": "op-1",
            "eventTime": "2026-01-01T00:00:00.000000Z",
        },
    )
    assert [(e["apiVersion"], e["reason"]) for e in kube_api.events] == [
        ("v1", "Issued"),
        ("events.k8s.io/v1", "Revoked"),
    ]
    by_reason = await core.list_namespaced_event("default", field_selector="reason=Issued")
    assert [e.reason for e in by_reason.items] == ["Issued"]


async def test_rbac_view_of_requests(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod("default", pod("r"))
    await core.patch_namespaced_pod_status(
        "r", "default", {"status": {"phase": "Running"}}, _content_type=MERGE
    )
    await core.list_pod_for_all_namespaces()
    assert {(c.verb, c.group, c.resource) for c in kube_api.api_calls} == {
        ("create", "", "pods"),
        ("patch", "", "pods/status"),
        ("list", "", "pods"),
    }
    assert ("PATCH", "/api/v1/namespaces/default/pods/r/status") in kube_api.requests


async def test_concurrent_updates_from_the_same_version_one_wins(core: client.CoreV1Api) -> None:
    cm = await core.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {"n": "0"}})
    rv = cm.metadata.resource_version

    async def write(n: str) -> int:
        body = {"metadata": {"name": "c", "resourceVersion": rv}, "data": {"n": n}}
        try:
            await core.replace_namespaced_config_map("c", "default", body)
            return 200
        except client.ApiException as e:
            return e.status

    assert sorted(await asyncio.gather(write("1"), write("2"))) == [200, 409]


async def test_no_op_write_keeps_resource_version(core: client.CoreV1Api) -> None:
    cm = await core.create_namespaced_config_map("default", {"metadata": {"name": "c", "labels": {"a": "b"}}})
    same = await core.patch_namespaced_config_map("c", "default", {"metadata": {"labels": {"a": "b"}}})
    assert same.metadata.resource_version == cm.metadata.resource_version
