"""The task lifecycle end to end: a pod admitted through the API, its real sidecar, real OpenBao.

Each scenario asserts what a security team asks: did the pod start only with its credentials in
place, is every credential dead at its source, are the files gone, was anything lost, and did any
issued value appear anywhere but the tmpfs files.
"""

from __future__ import annotations

import time

import pytest
from taskcreds.operator.endings import parse_timestamp

from taskcreds import names
from tests.scenarios.harness import Harness, hashes, record_lag

CREDS = ("api", "bao")


async def test_happy_path_task_completed(cluster: Harness) -> None:
    run = await cluster.launch("happy", CREDS)
    await cluster.wait_ready(run)
    cluster.assert_vault(run, "bao", alive=True)  # the issued OpenBao token works while the task runs
    assert cluster.run_agent(run) == hashes(run)

    t0 = await cluster.set_annotation(run, names.ANNOTATION_TASK_STATUS, "completed")
    lease = await cluster.wait_revoked(run)
    revoked_at = time.monotonic()
    await cluster.wait_files_gone(run)
    record_lag("happy path", "completed", t0, revoked_at, time.monotonic())

    await cluster.assert_dead_at_source(run, lease, reason="completed")
    assert not run.partial_reads
    cluster.finish(run)
    await cluster.assert_no_leaks()


@pytest.mark.parametrize("status", ["failed", "cancelled"])
async def test_task_ends_with_status(cluster: Harness, status: str) -> None:
    run = await cluster.launch(f"ends-{status}", CREDS)
    await cluster.wait_ready(run)
    t0 = await cluster.set_annotation(run, names.ANNOTATION_TASK_STATUS, status)
    lease = await cluster.wait_revoked(run)
    revoked_at = time.monotonic()
    await cluster.wait_files_gone(run)
    record_lag(f"task {status}", status, t0, revoked_at, time.monotonic())
    await cluster.assert_dead_at_source(run, lease, reason=status)
    cluster.finish(run)
    await cluster.assert_no_leaks()


async def test_rotation_replaces_values_and_kills_the_old_ones(cluster: Harness) -> None:
    run = await cluster.launch("rotation", ("api-fast", "bao-fast"))
    await cluster.wait_ready(run)
    await cluster.watch_values(run, 6.0)  # jwt 3s TTL: new token every ~2s; vault maxTTL 5s: replaced

    jwts, tokens = run.values[("api-fast", "token")], run.values[("bao-fast", "token")]
    assert len(jwts) >= 2, f"the jwt on disk never changed in 6 s ({len(jwts)} values)"
    assert len(tokens) >= 2, f"the OpenBao token was never replaced after its maxTTL ({len(tokens)} values)"
    assert not run.partial_reads, f"a reader saw an incomplete set: {run.partial_reads}"
    cluster.assert_vault(run, "bao-fast", alive=False, which=slice(0, -1))  # replaced: dead
    cluster.assert_vault(run, "bao-fast", alive=True)
    # the agent reads a current, complete set: the one on disk just before it ran or, when a
    # rotation (every ~2 s here) landed while it ran, the one just after
    cluster.collect(run)
    before = hashes(run)
    seen = cluster.run_agent(run)
    cluster.collect(run)
    assert seen in (before, hashes(run)), "the agent read neither the set before it ran nor the one after"

    t0 = await cluster.set_annotation(run, names.ANNOTATION_TASK_STATUS, "completed")
    lease = await cluster.wait_revoked(run)
    revoked_at = time.monotonic()
    await cluster.wait_files_gone(run)
    record_lag(
        "rotation, then completed",
        "completed",
        t0,
        revoked_at,
        time.monotonic(),
        f"{len(jwts)} jwt, {len(tokens)} vault values",
    )
    assert len(lease["status"]["leases"]) >= len(jwts) + len(tokens) - 1  # nothing lost
    await cluster.assert_dead_at_source(run, lease, reason="completed")
    cluster.finish(run)
    await cluster.assert_no_leaks()


async def test_pod_deleted(cluster: Harness) -> None:
    cluster.kube.pod_termination_delay = 3.0  # the kubelet takes its time: the pod lingers, terminating
    run = await cluster.launch("deleted", CREDS)
    cluster.kube.bind_pod("agents", run.name)
    await cluster.wait_ready(run)
    t0 = await cluster.delete_pod(run)
    run.local.stop_sidecar()  # the kubelet sends SIGTERM to every container at once
    lease = await cluster.wait_revoked(run)
    revoked_at = time.monotonic()
    await cluster.wait_files_gone(run)
    record_lag("pod deleted", "pod_deleted", t0, revoked_at, time.monotonic(), "sidecar SIGTERMed too")
    await cluster.assert_dead_at_source(run, lease, reason={"pod_deleted"})
    cluster.finish(run)
    await cluster.assert_no_leaks()


async def test_max_duration(cluster: Harness) -> None:
    run = await cluster.launch("deadline", CREDS, **{names.ANNOTATION_MAX_DURATION: "3s"})
    created = time.monotonic()
    # the deadline the operator keeps: creationTimestamp (whole seconds, as the API writes it) + 3 s
    stamp = parse_timestamp(run.local.pod["metadata"]["creationTimestamp"])
    assert stamp is not None
    deadline = time.monotonic() - (time.time() - (stamp.timestamp() + 3.0))
    await cluster.wait_ready(run)
    lease = await cluster.wait_revoked(run, timeout=10)
    revoked_at = time.monotonic()
    await cluster.wait_files_gone(run)
    record_lag(
        "max-duration 3s", "deadline", deadline, revoked_at, time.monotonic(), "from creationTimestamp + 3s"
    )
    assert revoked_at >= deadline - 0.05, "revoked before max-duration passed"
    assert revoked_at - created < 5, "revoked long after max-duration"
    await cluster.assert_dead_at_source(run, lease, reason="deadline")
    cluster.finish(run)
    await cluster.assert_no_leaks()


async def test_sidecar_sigkilled_then_task_completes(cluster: Harness) -> None:
    run = await cluster.launch("sigkill", CREDS)
    await cluster.wait_ready(run)
    run.local.kill_sidecar()  # no teardown of its own
    t0 = await cluster.set_annotation(run, names.ANNOTATION_TASK_STATUS, "completed")
    lease = await cluster.wait_revoked(run)
    revoked_at = time.monotonic()
    await cluster.assert_dead_at_source(run, lease, reason="completed")  # by the operator alone
    assert run.on_disk() == set(CREDS), "files vanished without a sidecar: the test would prove nothing"
    cluster.start_sidecar(run)  # the kubelet restarts a native sidecar: it finds the task over and wipes
    await cluster.wait_files_gone(run)
    record_lag(
        "sidecar SIGKILLed, completed",
        "completed",
        t0,
        revoked_at,
        time.monotonic(),
        "files wiped by the restarted sidecar",
    )
    cluster.finish(run)
    await cluster.assert_no_leaks()
