"""The official sync client, kubeconfig files over HTTPS, and fault injection."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
from kubernetes import client as sync_client
from kubernetes_asyncio import client, config, watch

from tests.kube.fixtures import KubeApi

POD = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "busybox:1"}]}}


async def test_official_sync_client_basic_calls(kube_api: KubeApi) -> None:
    def run() -> tuple[str, list[str], str]:
        api = sync_client.ApiClient(kube_api.kubernetes_sync_configuration())
        core = sync_client.CoreV1Api(api)
        core.create_namespaced_secret("default", {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
        secret = core.read_namespaced_secret("s", "default")
        core.patch_namespaced_secret("s", "default", {"metadata": {"labels": {"a": "b"}}})
        listed = [s.metadata.name for s in core.list_namespaced_secret("default", label_selector="a=b").items]
        status = core.delete_namespaced_secret("s", "default")
        api.close()
        return secret.data["k"], listed, status["status"] if isinstance(status, dict) else status.status

    data, listed, status = await asyncio.to_thread(run)
    assert data == "dg=="  # stringData is stored base64-encoded in data
    assert listed == ["s"]
    assert status == "Success"


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_kubeconfig(tls: bool, tmp_path: Path) -> None:
    async with KubeApi(tls=tls) as api:
        assert api.url.startswith(f"{'https' if tls else 'http'}://127.0.0.1:")
        await _read_default_namespace(api.kubeconfig(tmp_path / "config"))


async def _read_default_namespace(path: str) -> None:
    api = await config.new_client_from_config(config_file=path)
    try:
        ns = await client.CoreV1Api(api).read_namespace("default")
        assert ns.metadata.name == "default"
    finally:
        await api.close()


async def test_down_answers_503_and_cuts_watches(kube_api: KubeApi) -> None:
    core = client.CoreV1Api(await kube_api.kubernetes_asyncio_client())
    ended = asyncio.Event()

    async def watch_forever() -> None:
        try:
            async with watch.Watch().stream(
                core.list_namespaced_pod, "default", timeout_seconds=30
            ) as stream:
                async for _ in stream:
                    pass
        except Exception:  # noqa: BLE001, S110 - a cut stream may surface as a client error
            pass
        ended.set()

    task = asyncio.create_task(watch_forever())
    await kube_api.wait_for(kube_api.watch_count)
    kube_api.set_down(True)
    await asyncio.wait_for(ended.wait(), 5)
    with pytest.raises(client.ApiException) as e:
        await core.list_namespaced_pod("default")
    assert e.value.status == 503
    kube_api.set_down(False)
    assert (await core.list_namespaced_pod("default")).items == []
    await task


async def test_latency_delays_every_request(kube_api: KubeApi) -> None:
    core = client.CoreV1Api(await kube_api.kubernetes_asyncio_client())
    kube_api.set_latency(0.2)
    start = time.monotonic()
    await core.list_namespaced_pod("default")
    assert time.monotonic() - start >= 0.2
    kube_api.set_latency(0)


async def raw_watch(kube_api: KubeApi, query: str, until: int) -> list[dict]:
    """Read a watch stream line by line (no client library in between)."""
    out: list[dict] = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {kube_api.admin_token}"}) as s:
        async with s.get(f"{kube_api.url}/api/v1/namespaces/default/configmaps?watch=1&{query}") as r:
            assert r.status == 200
            async for line in r.content:
                out.append(json.loads(line))
                if len(out) >= until:
                    break
    return out


async def test_too_old_resource_version_is_410_gone() -> None:
    async with KubeApi(history=3) as api:
        for i in range(6):
            api.put(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": f"c{i}", "namespace": "default"},
                }
            )
        events = await raw_watch(api, "resourceVersion=2&timeoutSeconds=1", 1)
        assert events[0]["type"] == "ERROR"
        assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"


async def test_initial_events_then_bookmark(kube_api: KubeApi) -> None:
    kube_api.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}})
    events = await raw_watch(
        kube_api,
        "sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1",
        2,
    )
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_periodic_bookmarks(kube_api: KubeApi) -> None:
    kube_api.bookmark_interval = 0.1
    events = await raw_watch(
        kube_api,
        f"resourceVersion={kube_api.list('v1', 'Namespace')[0]['metadata']['resourceVersion']}"
        "&allowWatchBookmarks=true&timeoutSeconds=2",
        2,
    )
    assert [e["type"] for e in events] == ["BOOKMARK", "BOOKMARK"]
    assert int(events[0]["object"]["metadata"]["resourceVersion"]) > 0


async def test_timeout_seconds_ends_the_stream(kube_api: KubeApi) -> None:
    start = time.monotonic()
    events = await raw_watch(kube_api, "timeoutSeconds=0.3", 100)
    assert events == [] and time.monotonic() - start < 2
