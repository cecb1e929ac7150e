"""The task lifecycle end to end: a pod admitted through the API, its real sidecar, real OpenBao.

Each scenario asserts what a security team asks: did the pod start only with its credentials in
place, is every credential dead at its source, are the files gone, was anything lost, and did any
issued value appear anywhere but the tmpfs files.
"""

from __future__ import annotations

import time

from taskcreds import names
from tests.scenarios.harness import Harness, hashes, record_lag

CREDS = ("api", "bao")


async def test_happy_path_task_completed(cluster: Harness) -> None:
    run = await cluster.launch("happy", CREDS)
    await cluster.wait_ready(run)
    for token in run.values[("bao", "token")]:
        assert cluster.vault_token_alive(token), "the issued OpenBao token does not work while the task runs"
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
