"""Parts going away and coming back: broker/operator, OpenBao, the operator mid-revocation, the webhook.

Each of these restarts something shared, so this module has its own operator and OpenBao.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from kubernetes_asyncio.client.exceptions import ApiException
from taskcreds.operator.endings import parse_timestamp

from taskcreds import names
from tests.scenarios.harness import NS, Harness, hashes, record_lag


async def test_broker_restart_sidecar_keeps_credentials_and_reconnects(cluster: Harness) -> None:
    # the broker lives in the operator process: restarting it is restarting the operator
    # 1 min TTLs: what was issued must outlive the outage (a 3 s one rightly expires during it)
    run = await cluster.launch("broker-restart", ("api", "bao"))
    await cluster.wait_ready(run)
    cluster.stop_operator()
    down = time.monotonic()
    await cluster.watch_values(run, 1.0)
    assert run.on_disk() == {"api", "bao"}, "the sidecar dropped its files while the broker was down"
    cluster.assert_vault(run, "bao", alive=True)  # the token lives at OpenBao, not in the broker
    await asyncio.to_thread(cluster.start_operator)
    up = time.monotonic()
    assert cluster.run_agent(run) == hashes(run)
    assert not run.partial_reads

    t0 = await cluster.set_annotation(run, names.ANNOTATION_TASK_STATUS, "completed")
    lease = await cluster.wait_revoked(run)
    revoked_at = time.monotonic()
    await cluster.wait_files_gone(run)
    files_at = time.monotonic()
    record_lag("broker (operator) restart", "completed", t0, revoked_at, files_at, f"down {up - down:.1f}s")
    # the sidecar reconnected: it learned the end from the broker, before the kubelet's file refresh
    assert "broker reports the task ended" in run.sidecar_log()
    assert files_at - t0 < cluster.kubelet_lag
    await cluster.assert_dead_at_source(run, lease, reason="completed")
    cluster.finish(run)
    await cluster.assert_no_leaks()


async def test_openbao_restart_sidecar_keeps_credentials_operator_retries(cluster: Harness) -> None:
    run = await cluster.launch("bao-restart", ("api", "bao-fast"))
    await cluster.wait_ready(run)
    cluster.bao.stop()
    await cluster.watch_values(run, 1.5)  # a renewal falls into the outage: it fails and is retried
    assert run.on_disk() == {"api", "bao-fast"}, "the sidecar dropped its files while OpenBao was down"
    await asyncio.to_thread(cluster.bao.start)  # dev mode: empty again, re-seeded; old tokens are gone
    await cluster.watch_values(run, 3.5)
    tokens = run.values[("bao-fast", "token")]
    assert len(tokens) >= 2, "no new OpenBao token after OpenBao came back"
    cluster.assert_vault(run, "bao-fast", alive=True)
    assert not run.partial_reads

    t0 = await cluster.set_annotation(run, names.ANNOTATION_TASK_STATUS, "completed")
    lease = await cluster.wait_revoked(run)
    revoked_at = time.monotonic()
    await cluster.wait_files_gone(run)
    record_lag(
        "OpenBao restart", "completed", t0, revoked_at, time.monotonic(), f"{len(tokens)} vault values"
    )
    await cluster.assert_dead_at_source(run, lease, reason="completed")
    cluster.finish(run)
    await cluster.assert_no_leaks()


async def test_operator_restart_mid_revocation(cluster: Harness) -> None:
    run = await cluster.launch("op-restart", ("api", "bao"))
    await cluster.wait_ready(run)
    cluster.bao.stop()  # the vault revoke fails until OpenBao is back
    t0 = await cluster.set_annotation(run, names.ANNOTATION_TASK_STATUS, "completed")
    revoking = await cluster.wait_lease(run, "Revoking")
    assert names.FINALIZER_REVOKE in revoking["metadata"]["finalizers"]
    cluster.stop_operator()  # mid-revocation: only the TaskLease remembers what is left to do
    await asyncio.to_thread(cluster.bao.start)  # re-seeded (dev mode itself forgot the old tokens)
    restarted = time.time()
    await asyncio.to_thread(cluster.start_operator)
    ready = time.monotonic()
    lease = await cluster.wait_revoked(run)
    revoked_at = time.monotonic()
    await cluster.wait_files_gone(run)
    record_lag(
        "operator restart mid-revocation",
        "completed",
        t0,
        revoked_at,
        time.monotonic(),
        f"OpenBao down + restart; {(revoked_at - ready) * 1000:.0f}ms after the new operator was ready",
    )
    # durability: the vault lease was revoked by the restarted operator, from the TaskLease alone
    for entry in lease["status"]["leases"]:
        if entry["provider"] == "vault":
            at = parse_timestamp(entry["revokedAt"])
            assert at is not None and at.timestamp() >= int(restarted), entry
    await cluster.assert_dead_at_source(run, lease, reason="completed", check_jwt_list=True)
    cluster.finish(run)
    await cluster.assert_no_leaks()


async def test_webhook_down_refuses_opted_in_pods(cluster: Harness) -> None:
    cluster.stop_operator()
    try:
        with pytest.raises(ApiException) as refused:
            await cluster.create_pod(cluster.pod_manifest("no-webhook", "t-1", ["api"]))
        assert refused.value.status == 500
        message = json.loads(refused.value.body)["message"]
        assert 'failed calling webhook "inject.taskcreds.io"' in message, message
        assert cluster.kube.get("v1", "Pod", NS, "no-webhook") is None, "an opted-in pod ran uninjected"
        plain = await cluster.create_pod(cluster.pod_manifest("plain", "t-2", ["api"], labelled=False))
        assert names.ANNOTATION_INJECTED not in plain["metadata"]["annotations"]
    finally:
        await asyncio.to_thread(cluster.start_operator)


async def test_jwt_deny_list_survives_an_operator_restart(cluster: Harness) -> None:
    run = await cluster.launch("deny-list", ("api",))
    await cluster.wait_ready(run)
    await cluster.set_annotation(run, names.ANNOTATION_TASK_STATUS, "completed")
    lease = await cluster.wait_revoked(run)
    await cluster.assert_dead_at_source(run, lease, reason="completed")  # listed before the restart
    cluster.finish(run)
    cluster.stop_operator()
    await asyncio.to_thread(cluster.start_operator)
    await cluster.assert_dead_at_source(run, lease, reason="completed")  # and after it
