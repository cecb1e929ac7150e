"""``taskcreds_sidecar_task_ended``: what lets the TaskcredsSidecarNotReady alert tell a sidecar whose
task has ended (idle, ``ready`` 0 on purpose) from one that lacks its credentials. Real
``taskcreds-sidecar`` processes against the real broker (SPIFFE, mTLS, TokenReview by the API
stand-in), read through the probe listener's ``/metrics`` as Prometheus scrapes it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from taskcreds.sidecar.writer import ENDED_MARKER, CredentialWriter

from taskcreds import names
from tests.sidecar.conftest import TASK, RealBroker, SidecarProcess, sidecar_env

READY = "taskcreds_sidecar_ready"
ENDED = "taskcreds_sidecar_task_ended"
TEARDOWNS = "taskcreds_sidecar_teardown_total"


def samples(sc: SidecarProcess) -> dict[str, float]:
    """Every unlabelled sample on the probe listener's /metrics, and counters summed over labels."""
    status, body = sc.get("/metrics", base=sc.probe)
    assert status == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(bytes(body).decode()):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def readyz(sc: SidecarProcess) -> tuple[int, dict[str, object]]:
    status, body = sc.get("/readyz", base=sc.probe)
    return status, json.loads(body)


# how each case ends the task: env for the sidecar, then an action once it is ready
Ending = Callable[[RealBroker, Path], Awaitable[None]]


async def _broker_says_completed(broker: RealBroker, _: Path) -> None:
    await broker.set_status("completed")  # through the API: pod watch -> broker -> long-poll


async def _downward_api_says_failed(_: RealBroker, podinfo: Path) -> None:
    (podinfo / "annotations").write_text(f'taskcreds.io/task="{TASK}"\ntaskcreds.io/task-status="failed"\n')


async def _deadline(_: RealBroker, __: Path) -> None:
    """Nothing to do: TASKCREDS_MAX_DURATION passes by itself."""


ENDINGS = [
    pytest.param(_broker_says_completed, {}, "completed", id="broker long-poll reports completed"),
    pytest.param(_downward_api_says_failed, {}, "failed", id="downward API shows failed"),
    pytest.param(_deadline, {names.ENV_MAX_DURATION: "1500ms"}, "deadline", id="max duration passes"),
]


@pytest.mark.parametrize(("end", "extra", "reason"), ENDINGS)
async def test_task_ended_is_0_while_running_1_after_teardown_and_after_a_restart(
        broker: RealBroker, workload_api, shm_dir: Path, token_file: Path, tmp_path: Path,  # noqa: ANN001
        sidecar_process: Callable[[dict[str, str]], SidecarProcess], end: Ending, extra: dict[str, str],
        reason: str) -> None:
    podinfo = tmp_path / "podinfo"
    podinfo.mkdir()
    (podinfo / "annotations").write_text(f'taskcreds.io/task="{TASK}"\n')
    api = workload_api()

    def env() -> dict[str, str]:  # fresh listener ports per process, as a restarted container binds anew
        return sidecar_env(directory=shm_dir, broker_url=broker.url, token_file=token_file,
                           socket_uri=api.socket_uri, pod_uid=broker.uid,
                           **{names.ENV_PODINFO_DIR: str(podinfo), **extra})

    sc = sidecar_process(env())
    await sc.wait_for(lambda: sc.readyz() == 200, 10, "ready")
    running = samples(sc)
    assert (running[READY], running[ENDED]) == (1.0, 0.0), "a running task's sidecar: ready, not ended"

    await end(broker, podinfo)
    await sc.wait_for(lambda: samples(sc).get(TEARDOWNS, 0.0) == 1.0, 5, "teardown")
    torn = samples(sc)
    assert (torn[READY], torn[ENDED]) == (0.0, 1.0), "after teardown: not ready, ended"
    assert json.loads((shm_dir / ENDED_MARKER).read_text())["reason"] == reason

    sc.proc.kill()  # a crash after teardown: the kubelet starts the native sidecar again
    sc.proc.wait()
    issued = len(broker.requests("/v1/credentials"))
    again = sidecar_process(env())
    await again.wait_for(lambda: again.readyz() is not None, 10, "the restarted sidecar up")
    restarted = samples(again)
    assert (restarted[READY], restarted[ENDED], restarted.get(TEARDOWNS, 0.0)) == (0.0, 1.0, 0.0), (
        "a fresh process: its teardown counter is 0, so only task_ended says the task is over")
    status, body = readyz(again)
    assert (status, body.get("tornDown"), body.get("reason")) == (503, True, reason), "/readyz unchanged"
    assert len(broker.requests("/v1/credentials")) == issued, "nothing fetched again"
    assert await again.aterminate() == 0


@pytest.mark.parametrize(
    ("marker", "ended"),
    [
        pytest.param(True, 1.0, id="end marker in the volume: ended, with no broker or identity to ask"),
        pytest.param(False, 0.0, id="no marker, nothing reachable: not ended, so the alert may fire"),
    ],
)
async def test_a_fresh_sidecar_reads_ended_from_the_volume(
        shm_dir: Path, tmp_path: Path, sidecar_process: Callable[[dict[str, str]], SidecarProcess],
        marker: bool, ended: float) -> None:
    if marker:  # as an earlier sidecar of this pod left it (possibly an older version)
        writer = CredentialWriter(str(shm_dir), task=TASK)
        writer.mark_ended("cancelled")
        writer.close()
    token = tmp_path / "token"
    token.write_text("not-a-token\n")
    sc = sidecar_process(sidecar_env(
        directory=shm_dir, broker_url="https://127.0.0.1:9", token_file=token,
        socket_uri=f"unix://{tmp_path}/no-workload-api.sock"))
    await sc.wait_for(lambda: sc.readyz() is not None, 10, "up")
    got = samples(sc)
    assert (got[READY], got[ENDED]) == (0.0, ended)
    assert readyz(sc)[0] == 503, "/readyz: no credentials either way"
    assert await sc.aterminate() == 0
