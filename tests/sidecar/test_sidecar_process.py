"""taskcreds-sidecar as a real process: SPIFFE Workload API, fake broker over mTLS, tmpfs, signals."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest
from taskcreds.sidecar.writer import ENDED_MARKER, STARTED_MARKER

from taskcreds import names
from tests.sidecar.conftest import SIDECAR, TOKEN, run_sidecar_once, sidecar_env
from tests.sidecar.fakebroker import FakeBroker

REPO = Path(__file__).resolve().parents[2]
LEFT_AFTER_TEARDOWN = [ENDED_MARKER, STARTED_MARKER]


def credential_files(directory: Path) -> list[str]:
    """Every file anywhere in the directory (retired generations included), except markers and manifest."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()
                  and not p.name.startswith(".taskcreds-") and p.name != names.MANIFEST_FILE)


def visible_credentials(directory: Path) -> list[str]:
    """What the agent sees at the top level."""
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith(".") and p.name != names.MANIFEST_FILE)


@pytest.fixture
def env_for(broker: FakeBroker, workload_api, shm_dir: Path, token_file: Path):  # noqa: ANN001, ANN201
    api = workload_api()

    def make(**extra: str) -> dict[str, str]:
        return sidecar_env(directory=shm_dir, broker_url=broker.url, token_file=token_file,
                           socket_uri=api.socket_uri, **extra)

    make.api = api  # type: ignore[attr-defined]
    return make


async def test_fetches_serves_and_tears_down_when_the_broker_says_so(
        broker: FakeBroker, env_for, shm_dir: Path, sidecar_process) -> None:  # noqa: ANN001
    sc = sidecar_process(env_for())
    await sc.wait_for(lambda: sc.readyz() == 200, 10, "ready")
    assert (shm_dir / "github" / "token").read_text() == broker.values[0]
    assert (shm_dir / "db" / "password").read_text() == broker.values[1]
    status, body = sc.get("/readyz", base=sc.probe)
    assert status == 200
    status, metrics = sc.get("/metrics", base=sc.probe)
    assert b"taskcreds_sidecar_ready 1.0" in metrics
    assert b'taskcreds_sidecar_credential_expiry_timestamp_seconds{credential="github"}' in metrics
    assert b"taskcreds_sidecar_svid_expiry_timestamp_seconds" in metrics

    broker.set_status("completed", "completed")
    started = time.monotonic()
    await sc.wait_for(lambda: not credential_files(shm_dir), 2, "wipe")
    assert time.monotonic() - started < 1.0
    assert sorted(p.name for p in shm_dir.iterdir()) == LEFT_AFTER_TEARDOWN
    await sc.wait_for(lambda: sc.readyz() == 503, 2, "not ready after teardown")
    assert sc.get("/healthz")[0] == 200, "idle, still serving"
    metrics = sc.get("/metrics")[1]
    assert b'taskcreds_sidecar_teardown_total{reason="completed"} 1.0' in metrics
    assert broker.revoked_with == [], "the broker said it ended: it revokes on its own"
    assert await sc.aterminate() == 0
    logs = sc.logs()
    for value in broker.values + [TOKEN]:
        assert value not in logs and value.encode() not in metrics


async def test_sigterm_tears_down_revokes_and_exits_zero(broker: FakeBroker, env_for, shm_dir: Path,
                                                         sidecar_process) -> None:  # noqa: ANN001
    sc = sidecar_process(env_for())
    await sc.wait_for(lambda: sc.readyz() == 200, 10, "ready")
    assert await sc.aterminate() == 0
    assert credential_files(shm_dir) == []
    assert broker.revoked_with == ["sigterm"]


async def test_restart_after_teardown_never_fetches_again(broker: FakeBroker, env_for, shm_dir: Path,
                                                          sidecar_process) -> None:  # noqa: ANN001
    sc = sidecar_process(env_for())
    await sc.wait_for(lambda: sc.readyz() == 200, 10, "ready")
    broker.set_status("cancelled", "cancelled")
    await sc.wait_for(lambda: (shm_dir / ENDED_MARKER).exists(), 3, "teardown")
    sc.proc.kill()  # the kubelet restarts a native sidecar that exits
    sc.proc.wait()
    issued = len(broker.requests("/v1/credentials"))
    again = sidecar_process(env_for())
    await again.wait_for(lambda: again.get("/healthz")[0] == 200 if again.readyz() else False, 10, "up")
    await asyncio.sleep(0.5)
    assert again.readyz() == 503
    assert len(broker.requests("/v1/credentials")) == issued
    assert credential_files(shm_dir) == []
    assert await again.aterminate() == 0


async def test_downward_api_file_is_a_fallback(broker: FakeBroker, env_for, shm_dir: Path, tmp_path: Path,
                                               sidecar_process) -> None:  # noqa: ANN001
    podinfo = tmp_path / "podinfo"
    podinfo.mkdir()
    (podinfo / "annotations").write_text('taskcreds.io/task="task-1"\n')
    sc = sidecar_process(env_for(**{names.ENV_PODINFO_DIR: str(podinfo)}))
    await sc.wait_for(lambda: sc.readyz() == 200, 10, "ready")
    (podinfo / "annotations").write_text('taskcreds.io/task="task-1"\ntaskcreds.io/task-status="failed"\n')
    await sc.wait_for(lambda: not credential_files(shm_dir), 3, "wipe from the downward API")
    assert b'taskcreds_sidecar_teardown_total{reason="failed"} 1.0' in sc.get("/metrics")[1]
    assert broker.revoked_with == ["failed"]
    assert await sc.aterminate() == 0


async def test_max_duration_ends_the_task(broker: FakeBroker, env_for, shm_dir: Path,
                                          sidecar_process) -> None:  # noqa: ANN001
    sc = sidecar_process(env_for(**{names.ENV_MAX_DURATION: "1500ms"}))
    await sc.wait_for(lambda: sc.readyz() == 200, 10, "ready")
    await sc.wait_for(lambda: (shm_dir / ENDED_MARKER).exists(), 4, "deadline")
    assert credential_files(shm_dir) == []
    assert b'taskcreds_sidecar_teardown_total{reason="deadline"} 1.0' in sc.get("/metrics")[1]
    assert await sc.aterminate() == 0


async def test_rotates_before_expiry_and_redacts_rotated_away_values(broker: FakeBroker, env_for, shm_dir: Path,
                                                                     sidecar_process) -> None:  # noqa: ANN001
    sc = sidecar_process(env_for(**{names.ENV_TTL: "1500ms"}))
    await sc.wait_for(lambda: sc.readyz() == 200, 10, "ready")
    first = (shm_dir / "github" / "token").read_text()
    await sc.wait_for(lambda: (shm_dir / "github" / "token").read_text() != first, 4, "rotation")
    assert sc.readyz() == 200
    text = " | ".join(broker.values) + " | AKIA" + "Q" * 16
    proc = await asyncio.to_thread(subprocess.run, [str(REPO / ".venv/bin/taskcreds"), "redact", "--url", sc.local],
                                   input=text, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert "canary" not in proc.stdout
    assert proc.stdout.count("[REDACTED:github]") >= 2 and "[REDACTED:aws-access-key-id]" in proc.stdout
    assert sc.get("/v1/redact", base=sc.probe)[0] in (404, 405)
    import urllib.request
    req = urllib.request.Request(sc.probe + "/v1/redact", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=2)
    assert err.value.code == 404
    metrics = sc.get("/metrics")[1]
    assert b'taskcreds_sidecar_refresh_total{credential="github",result="success"}' in metrics
    assert await sc.aterminate() == 0
    assert not any(v in sc.logs() for v in broker.values)


async def test_broker_down_at_start_retries_with_backoff(broker: FakeBroker, env_for, shm_dir: Path,
                                                         sidecar_process) -> None:  # noqa: ANN001
    broker.fail_with = "unavailable"
    sc = sidecar_process(env_for())
    await sc.wait_for(lambda: broker.requests("/v1/credentials"), 10, "first attempt")
    await asyncio.sleep(3.0)
    attempts = len(broker.requests("/v1/credentials"))
    assert 2 <= attempts <= 5, f"{attempts} attempts in ~3 s: backoff, not a busy loop"
    assert sc.readyz() == 503 and credential_files(shm_dir) == []
    broker.fail_with = None
    await sc.wait_for(lambda: sc.readyz() == 200, 10, "ready once the broker is back")
    assert b'taskcreds_sidecar_refresh_total{credential="github",result="failure"}' in sc.get("/metrics")[1]
    assert await sc.aterminate() == 0


async def test_broker_gone_mid_task_keeps_valid_credentials_until_expiry(
        broker: FakeBroker, env_for, shm_dir: Path, sidecar_process) -> None:  # noqa: ANN001
    sc = sidecar_process(env_for(**{names.ENV_TTL: "2s"}))
    await sc.wait_for(lambda: sc.readyz() == 200, 10, "ready")
    value = (shm_dir / "github" / "token").read_text()
    await broker.stop()
    await asyncio.sleep(1.0)
    assert (shm_dir / "github" / "token").read_text() == value, "still valid: kept"
    assert sc.readyz() == 200
    await sc.wait_for(lambda: sc.readyz() == 503, 3, "expired and removed")
    assert visible_credentials(shm_dir) == []
    await sc.wait_for(lambda: not credential_files(shm_dir), 4, "retired generations shredded")
    assert sc.get("/healthz")[0] == 200
    assert await sc.aterminate() == 0


async def test_refuses_a_directory_not_on_tmpfs(env_for, tmp_path: Path) -> None:  # noqa: ANN001
    disk = tmp_path / "disk"
    disk.mkdir()
    result = await asyncio.to_thread(run_sidecar_once, env_for(**{names.ENV_DIR: str(disk)}))
    assert result.returncode == 1
    assert "not on tmpfs or ramfs" in result.stderr and "Traceback" not in result.stderr
    assert list(disk.iterdir()) == []


async def test_refuses_a_planted_symlink(env_for, shm_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    victim = tmp_path / "victim"
    victim.mkdir()
    os.symlink(victim, shm_dir / "github")
    result = await asyncio.to_thread(run_sidecar_once, env_for())
    assert result.returncode == 1 and "not created by taskcreds" in result.stderr
    assert list(victim.iterdir()) == []


async def test_bad_config_is_one_line_and_exit_2(env_for) -> None:  # noqa: ANN001
    result = await asyncio.to_thread(run_sidecar_once, env_for(**{names.ENV_TTL: "soon"}))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and names.ENV_TTL in result.stderr


def test_redact_cli_fails_closed_when_the_sidecar_is_unreachable() -> None:
    proc = subprocess.run([str(REPO / ".venv/bin/taskcreds"), "redact", "--url", "http://127.0.0.1:9"],
                          input="secret text", capture_output=True, text=True, timeout=20)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "cannot redact" in proc.stderr and "secret text" not in proc.stderr


__all__ = ["SIDECAR"]
