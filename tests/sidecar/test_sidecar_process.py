"""taskcreds-sidecar as a real process against the real broker: SPIFFE Workload API, mTLS, TokenReview
by the Kubernetes API stand-in, TaskLeases, tmpfs, signals."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from taskcreds.sidecar.writer import ENDED_MARKER, STARTED_MARKER

from taskcreds import names
from tests.sidecar.conftest import (
    POD,
    SIDECAR,
    SOURCES,
    TASK,
    RealBroker,
    SidecarProcess,
    jwt_claims,
    run_sidecar_once,
    sidecar_env,
)

REPO = Path(__file__).resolve().parents[2]
LEFT_AFTER_TEARDOWN = [ENDED_MARKER, STARTED_MARKER]
PATHS = {name: f"{name}/{file}" for name, file in SOURCES.items()}  # github/token, db/password
FAILED_CALL = "broker call failed; retrying"


def credential_files(directory: Path) -> list[str]:
    """Every file anywhere in the directory (retired generations included), except markers and manifest.

    The sidecar removes generations while this walks: a directory that vanishes mid-walk means the
    walk starts again (it saw a moment that no longer exists).
    """
    for _ in range(50):
        try:
            return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()
                          and not p.name.startswith(".taskcreds-") and p.name != names.MANIFEST_FILE)
        except FileNotFoundError:
            continue
    raise AssertionError(f"{directory} kept changing under 50 walks")


def visible_credentials(directory: Path) -> list[str]:
    """What the agent sees at the top level."""
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith(".") and p.name != names.MANIFEST_FILE)


def read_values(directory: Path) -> dict[str, str]:
    """The credential values on disk now, by credential name (kept in memory only)."""
    out = {}
    for name, rel in PATHS.items():
        try:
            out[name] = (directory / rel).read_text()
        except FileNotFoundError:
            pass
    return out


def metrics_of(sc: SidecarProcess) -> bytes:
    return bytes(sc.get("/metrics", base=sc.probe)[1])


def assert_no_value_leaked(values: list[str], sc: SidecarProcess, *texts: bytes) -> None:
    """No issued value in the sidecar's log or the given outputs (explicit raise: never echo one)."""
    assert values, "no value to look for: the check would prove nothing"
    logs = sc.logs()
    for n, value in enumerate(values):
        if value in logs or any(value.encode() in t for t in texts):
            raise AssertionError(f"issued value #{n} ({len(value)} bytes) leaked")


@pytest.fixture
def env_for(broker: RealBroker, workload_api, shm_dir: Path, token_file: Path):  # noqa: ANN001, ANN201
    api = workload_api()

    def make(**extra: str) -> dict[str, str]:
        return sidecar_env(directory=shm_dir, broker_url=broker.url, token_file=token_file,
                           socket_uri=api.socket_uri, pod_uid=broker.uid, **extra)

    make.api = api  # type: ignore[attr-defined]
    return make


async def ready(sc: SidecarProcess, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a poll bound
    await sc.wait_for(lambda: sc.readyz() == 200, timeout, "ready")


async def test_fetches_serves_and_tears_down_when_the_broker_says_so(
        broker: RealBroker, env_for, shm_dir: Path, sidecar_process) -> None:  # noqa: ANN001
    sc = sidecar_process(env_for())
    await ready(sc)
    values = read_values(shm_dir)
    recorded = {e["leaseRef"] for e in broker.lease_entries()}
    for name in SOURCES:
        claims = jwt_claims(values[name])
        assert (claims["credential"], claims["pod"], claims["task"]) == (name, POD, TASK)
        assert any(claims["jti"] in ref for ref in recorded), f"{name}: its lease is on the TaskLease"
    manifest = json.loads((shm_dir / names.MANIFEST_FILE).read_text())
    assert {c["name"]: c["files"] for c in manifest["credentials"]} == {n: [f] for n, f in SOURCES.items()}
    assert sc.get("/readyz", base=sc.probe)[0] == 200
    metrics = metrics_of(sc)
    assert b"taskcreds_sidecar_ready 1.0" in metrics
    assert b'taskcreds_sidecar_credential_expiry_timestamp_seconds{credential="github"}' in metrics
    assert b"taskcreds_sidecar_svid_expiry_timestamp_seconds" in metrics
    started = [r for r in sc.log_records() if r.get("msg") == "sidecar started"]
    assert [r.get("loop") for r in started] == ["uvloop"], "the sidecar runs on uvloop"

    await broker.set_status("completed")  # through the API: pod watch -> broker -> long-poll
    patched = time.monotonic()
    await sc.wait_for(lambda: not credential_files(shm_dir), 2, "wipe")
    lag = time.monotonic() - patched
    assert lag < 1.0, f"files gone {lag:.2f} s after the annotation changed"
    assert sorted(p.name for p in shm_dir.iterdir()) == LEFT_AFTER_TEARDOWN
    await sc.wait_for(lambda: sc.readyz() == 503, 2, "not ready after teardown")
    assert sc.get("/healthz")[0] == 200, "idle, still serving"
    metrics = metrics_of(sc)
    assert b'taskcreds_sidecar_teardown_total{reason="completed"} 1.0' in metrics
    assert broker.requests("/revoke") == [], "the broker said it ended: it revokes on its own"
    assert await sc.aterminate() == 0
    assert_no_value_leaked(list(values.values()), sc, metrics)


async def test_sigterm_tears_down_revokes_and_exits_zero(broker: RealBroker, env_for, shm_dir: Path,
                                                         sidecar_process) -> None:  # noqa: ANN001
    sc = sidecar_process(env_for())
    await ready(sc)
    values = read_values(shm_dir)
    assert await sc.aterminate() == 0
    assert credential_files(shm_dir) == []
    assert [s.method for s in broker.requests(f"/v1/tasks/{TASK}/revoke")] == ["POST"]
    lease = broker.lease()
    assert lease is not None and lease["status"]["phase"] == "Revoked"
    assert all(broker.jwt_revoked(v) for v in values.values()), "every issued token is on the deny list"
    assert any("sigterm" in e.get("message", "") for e in broker.kube.events), "the reason reached an Event"


async def test_restart_after_teardown_never_fetches_again(broker: RealBroker, env_for, shm_dir: Path,
                                                          sidecar_process) -> None:  # noqa: ANN001
    sc = sidecar_process(env_for())
    await ready(sc)
    await broker.set_status("cancelled")
    await sc.wait_for(lambda: (shm_dir / ENDED_MARKER).exists(), 3, "teardown")
    sc.proc.kill()  # the kubelet restarts a native sidecar that exits
    sc.proc.wait()
    issued = len(broker.requests("/v1/credentials"))
    again = sidecar_process(env_for())
    await again.wait_for(lambda: again.readyz() is not None, 10, "up")
    await asyncio.sleep(0.5)
    assert again.readyz() == 503
    assert len(broker.requests("/v1/credentials")) == issued
    assert credential_files(shm_dir) == []
    assert await again.aterminate() == 0


async def test_downward_api_file_is_a_fallback(broker: RealBroker, env_for, shm_dir: Path, tmp_path: Path,
                                               sidecar_process) -> None:  # noqa: ANN001
    podinfo = tmp_path / "podinfo"
    podinfo.mkdir()
    (podinfo / "annotations").write_text(f'taskcreds.io/task="{TASK}"\n')
    sc = sidecar_process(env_for(**{names.ENV_PODINFO_DIR: str(podinfo)}))
    await ready(sc)
    # the kubelet's copy shows the end; the broker has not heard of it (the API object is unchanged)
    (podinfo / "annotations").write_text(f'taskcreds.io/task="{TASK}"\ntaskcreds.io/task-status="failed"\n')
    await sc.wait_for(lambda: not credential_files(shm_dir), 3, "wipe from the downward API")
    assert b'taskcreds_sidecar_teardown_total{reason="failed"} 1.0' in metrics_of(sc)
    # the sidecar tells the broker (concurrently with the wipe, best effort)
    await sc.wait_for(lambda: (broker.lease() or {}).get("status", {}).get("phase") == "Revoked", 3, "revoked")
    assert len(broker.requests("/revoke")) == 1
    assert any(": failed" in e.get("message", "") for e in broker.kube.events), "the reason reached an Event"
    assert await sc.aterminate() == 0


async def test_max_duration_ends_the_task(broker: RealBroker, env_for, shm_dir: Path,
                                          sidecar_process) -> None:  # noqa: ANN001
    sc = sidecar_process(env_for(**{names.ENV_MAX_DURATION: "1500ms"}))
    await ready(sc)
    await sc.wait_for(lambda: (shm_dir / ENDED_MARKER).exists(), 4, "deadline")
    assert credential_files(shm_dir) == []
    assert b'taskcreds_sidecar_teardown_total{reason="deadline"} 1.0' in metrics_of(sc)
    assert await sc.aterminate() == 0


async def test_rotates_before_expiry_and_redacts_rotated_away_values(broker: RealBroker, env_for, shm_dir: Path,
                                                                     sidecar_process) -> None:  # noqa: ANN001
    sc = sidecar_process(env_for(**{names.ENV_TTL: "2s"}))
    await ready(sc)
    first = read_values(shm_dir)
    await sc.wait_for(lambda: read_values(shm_dir).get("github") not in (None, first["github"]), 4, "rotation")
    assert sc.readyz() == 200
    now = read_values(shm_dir)
    assert broker.jwt_revoked(first["github"]), "the broker revoked the replaced token"
    values = [first["github"], now["github"], first["db"]]
    text = " | ".join(values) + " | AKIA" + "Q" * 16
    proc = await asyncio.to_thread(subprocess.run, [str(REPO / ".venv/bin/taskcreds"), "redact", "--url", sc.local],
                                   input=text, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert not any(v in proc.stdout for v in values), "a value, current or rotated away, survived redaction"
    assert proc.stdout.count("[REDACTED:github]") == 2 and "[REDACTED:db]" in proc.stdout
    assert "[REDACTED:aws-access-key-id]" in proc.stdout
    assert sc.get("/v1/redact", base=sc.probe)[0] in (404, 405)
    req = urllib.request.Request(sc.probe + "/v1/redact", data=b"x", method="POST")  # noqa: S310 - loopback http
    with pytest.raises(urllib.error.HTTPError) as err:
        await asyncio.to_thread(urllib.request.urlopen, req, timeout=2)  # noqa: S310 - loopback http
    assert err.value.code == 404, "/v1/redact is never reachable from outside the pod"
    metrics = metrics_of(sc)
    assert b'taskcreds_sidecar_refresh_total{credential="github",result="success"}' in metrics
    assert await sc.aterminate() == 0
    assert_no_value_leaked(values + [now["db"]], sc, metrics)


async def test_a_one_second_ttl_is_not_asked_for_in_a_loop(broker: RealBroker, env_for, shm_dir: Path,
                                                           sidecar_process) -> None:  # noqa: ANN001
    """Review finding: TASKCREDS_TTL=1s (the broker accepts it; issuedAt is in whole seconds, so many
    answers arrive past their 2/3 point) made 36 calls in 4 s at 41 % CPU. The refresh floor (0.5 s,
    or half of what an answer left) keeps two credentials to at most 4 calls a second."""
    sc = sidecar_process(env_for(**{names.ENV_TTL: "1s"}))
    await ready(sc)
    calls, cpu, t0 = len(broker.requests("/v1/credentials")), sc.cpu_seconds(), time.monotonic()
    await asyncio.sleep(3.0)
    elapsed = time.monotonic() - t0
    calls, cpu = len(broker.requests("/v1/credentials")) - calls, sc.cpu_seconds() - cpu
    assert 2 <= calls <= 4 * elapsed + 2, f"{calls} broker calls in {elapsed:.1f} s"
    assert cpu < 0.3 * elapsed, f"{cpu:.2f} s CPU in {elapsed:.1f} s"
    assert await sc.aterminate() == 0


_READER = r"""
import hashlib, json, os, select, sys
directory = sys.argv[1]
snapshots, problems, seen = 0, [], set()
while not select.select([sys.stdin], [], [], 0)[0]:  # until the test closes our stdin
    try:
        generation = os.path.join(directory, os.readlink(os.path.join(directory, "..data")))
        with open(os.path.join(generation, "taskcreds.json")) as f:
            manifest = json.load(f)
        listed = {c["name"]: c["files"] for c in manifest["credentials"]}
        if set(listed) != {"github", "db"}:
            problems.append(f"manifest lists {sorted(listed)}")
        for name, files in listed.items():
            for file in files:
                with open(os.path.join(generation, name, file)) as f:
                    value = f.read()
                if value.count(".") != 2 or not all(value.split(".")):
                    problems.append(f"{name}/{file}: not a whole token ({len(value)} bytes)")
                seen.add(hashlib.sha256(value.encode()).hexdigest())
        snapshots += 1
    except OSError as exc:
        problems.append(f"{type(exc).__name__}: {exc.strerror}")
print(json.dumps({"snapshots": snapshots, "problems": problems[:5], "distinct": len(seen)}))
"""


def _as_user(uid: int, gid: int, *argv: str) -> list[str]:
    """The system Python as another user; isolated (-I), so the repository's ``operator/`` folder
    cannot shadow the standard library's ``operator`` when run from the repository root."""
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "/usr/bin/python3", "-I", *argv]


async def test_files_are_group_readable_only_and_readers_never_see_a_partial_set(
        broker: RealBroker, env_for, shm_dir: Path, tmp_path: Path, sidecar_process) -> None:  # noqa: ANN001
    shm_dir.chmod(0o755)  # an emptyDir is world-traversable; the files themselves are not
    sc = sidecar_process(env_for(**{names.ENV_TTL: "2s", names.ENV_FS_GROUP: "1000"}))
    await ready(sc)
    for rel in PATHS.values():
        st = (shm_dir / rel).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o440, 1000), rel
    reader = subprocess.Popen(  # noqa: ASYNC220 - starts it; the wait is in a thread below
        _as_user(1000, 1000, "-c", _READER, str(shm_dir)), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        await asyncio.sleep(0.2)  # the reader's interpreter starts
        first = read_values(shm_dir)
        # each credential rotates (twice for the earlier one) while the agent's group reads flat out
        await sc.wait_for(lambda: all(read_values(shm_dir).get(n) not in (None, first[n]) for n in SOURCES),
                          5, "both rotated")
    finally:
        out, err = await asyncio.to_thread(reader.communicate, timeout=20)  # closes its stdin: stop
    assert reader.returncode == 0, err
    report: dict[str, Any] = json.loads(out)
    assert report["problems"] == [] and report["snapshots"] > 50, report
    assert report["distinct"] >= 3, f"the reader saw a rotation: {report}"
    other = await asyncio.to_thread(subprocess.run, _as_user(1001, 1001, "-c", f"open({str(shm_dir / PATHS['github'])!r})"),
                                    capture_output=True, text=True, timeout=20)
    assert other.returncode != 0 and "PermissionError" in other.stderr, "another user cannot read the files"
    assert await sc.aterminate() == 0
    assert_no_value_leaked(list(first.values()), sc)


async def test_broker_down_at_start_retries_with_backoff_not_a_busy_loop(
        broker: RealBroker, env_for, shm_dir: Path, sidecar_process) -> None:  # noqa: ANN001
    await broker.stop()
    sc = sidecar_process(env_for())
    await sc.wait_for(lambda: any(r.get("msg") == FAILED_CALL for r in sc.log_records()), 10, "first attempt")
    cpu_before, t0 = sc.cpu_seconds(), time.monotonic()
    await asyncio.sleep(3.0)
    cpu = sc.cpu_seconds() - cpu_before
    elapsed = time.monotonic() - t0
    records = sc.log_records()
    attempts = [r for r in records if r.get("msg") == FAILED_CALL]
    polls = [r for r in records if r.get("msg") == "task status long-poll failed"]
    assert 2 <= len(attempts) <= 6, f"{len(attempts)} issue attempts in ~{elapsed:.1f} s: backoff, not a busy loop"
    assert len(polls) <= 6, f"{len(polls)} status polls in ~{elapsed:.1f} s"
    assert all(0.25 <= r["retry_in"] <= 2.0 for r in attempts), [r["retry_in"] for r in attempts]
    assert cpu < 0.3 * elapsed, f"{cpu:.2f} s CPU in {elapsed:.1f} s while the broker is down"
    assert sc.readyz() == 503 and credential_files(shm_dir) == []
    await broker.start()
    back = time.monotonic()
    await ready(sc, 5)
    assert time.monotonic() - back < 3.0, "ready within a couple of seconds of the broker's return"
    assert b'taskcreds_sidecar_refresh_total{credential="github",result="failure"}' in metrics_of(sc)
    assert await sc.aterminate() == 0


async def test_broker_gone_mid_task_keeps_credentials_until_expiry_then_recovers_within_3s_of_its_return(
        broker: RealBroker, env_for, shm_dir: Path, sidecar_process) -> None:  # noqa: ANN001
    # 6 s: the jwt provider truncates issuedAt to the second and stop() waits up to 1 s for the
    # long-poll in flight; the first refresh (~4 s) comes after the broker is gone
    sc = sidecar_process(env_for(**{names.ENV_TTL: "6s"}))
    await ready(sc)
    await broker.stop()
    kept = read_values(shm_dir)
    expires = min(jwt_claims(v)["exp"] for v in kept.values())
    await asyncio.sleep(0.5)
    assert time.time() < expires - 0.5, "still valid at this point (the check below means something)"
    assert read_values(shm_dir) == kept, "still valid: kept while the broker is away"
    assert sc.readyz() == 200
    await sc.wait_for(lambda: sc.readyz() == 503, 8, "expired and removed")
    assert time.time() >= expires - 0.05, "removed at expiry, not before"
    # the two may have been issued either side of a second boundary (exp is whole seconds)
    last = max(jwt_claims(v)["exp"] for v in kept.values())
    await sc.wait_for(lambda: visible_credentials(shm_dir) == [], last - time.time() + 1.0, "both removed")
    assert time.time() >= last - 0.05, "each removed at its own expiry, not before"
    await sc.wait_for(lambda: not credential_files(shm_dir), 4, "retired generations shredded")
    assert sc.get("/healthz")[0] == 200
    # the outage goes on for a while after expiry: retries must not have backed off to ~20 s meanwhile
    await asyncio.sleep(1.0)
    await broker.start()
    back = time.monotonic()
    await sc.wait_for(lambda: sc.readyz() == 200, 6, "ready again")
    recovered = time.monotonic() - back
    assert recovered < 3.0, f"credentials back {recovered:.1f} s after the broker returned"
    fresh = read_values(shm_dir)
    assert set(fresh) == set(SOURCES) and not set(fresh.values()) & set(kept.values()), "new values"
    assert await sc.aterminate() == 0
    assert_no_value_leaked(list(kept.values()) + list(fresh.values()), sc)


async def test_svid_rotation_mid_task(broker: RealBroker, env_for, shm_dir: Path,
                                      sidecar_process) -> None:  # noqa: ANN001
    sc = sidecar_process(env_for(**{names.ENV_TTL: "2s"}))
    await ready(sc)
    first = env_for.api.current.fingerprint
    assert {s.peer_cert_sha256 for s in broker.seen} == {first}
    env_for.api.rotate()
    rotated = env_for.api.current.fingerprint
    assert rotated != first
    await sc.wait_for(lambda: any(s.peer_cert_sha256 == rotated for s in broker.requests("/v1/credentials")),
                      5, "a renewal presenting the rotated SVID")
    before = read_values(shm_dir)
    await sc.wait_for(lambda: read_values(shm_dir).get("github") not in (None, before["github"]), 4,
                      "rotation with the new SVID")
    assert sc.readyz() == 200
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


SKEW_DIR = REPO / "tests" / "scenarios" / "skewclock"


@pytest.mark.parametrize("skew", [90, -90], ids=["clock 90 s ahead", "clock 90 s behind"])
async def test_a_skewed_clock_changes_nothing(broker: RealBroker, env_for, shm_dir: Path, sidecar_process,  # noqa: ANN001
                                              skew: int) -> None:
    # 6 s credentials, the node's clock 90 s off: ready, one issue per credential, rotation before expiry
    env = env_for(**{names.ENV_TTL: "6s", "TASKCREDS_TEST_CLOCK_SKEW": str(skew),
                     "PYTHONPATH": os.pathsep.join(filter(None, [str(SKEW_DIR), os.environ.get("PYTHONPATH")]))})
    sc = sidecar_process(env)
    await ready(sc)
    first = read_values(shm_dir)
    claims = jwt_claims(first["github"])
    await asyncio.sleep(1.0)
    assert len(broker.lease_entries()) == len(SOURCES), "one issue per credential, no refresh storm"
    assert sc.readyz() == 200
    await sc.wait_for(lambda: read_values(shm_dir).get("github") not in (None, first["github"]), 6, "rotation")
    rotated = time.time()
    assert claims["iat"] + 2.0 <= rotated < claims["exp"], "refreshed near 2/3 of the lifetime, before expiry"
    assert sc.readyz() == 200
    assert len(broker.lease_entries()) <= 2 * len(SOURCES)
    assert await sc.aterminate() == 0
    assert credential_files(shm_dir) == []




async def test_a_full_volume_is_never_ready_and_teardown_leaves_no_file(
        broker: RealBroker, workload_api, token_file: Path, tiny_tmpfs: Path, sidecar_process) -> None:  # noqa: ANN001
    env = sidecar_env(directory=tiny_tmpfs, broker_url=broker.url, token_file=token_file,
                      socket_uri=workload_api().socket_uri, pod_uid=broker.uid)
    sc = sidecar_process(env)
    await sc.wait_for(lambda: "No space left on device" in sc.logs(), 10, "the write failure logged")
    status, body = sc.get("/readyz", base=sc.probe)
    assert status == 503 and "No space left on device" in body.decode(), body
    await asyncio.sleep(1.5)  # retried with backoff, never ready meanwhile, never a busy loop
    assert sc.readyz() == 503
    failures = [r for r in sc.log_records() if r.get("msg", r.get("message", "")).startswith("cannot write")]
    assert 2 <= len(failures) <= 6, f"{len(failures)} write attempts in ~2 s"
    assert b'result="write_failure"' in metrics_of(sc)
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == [STARTED_MARKER], "the partial set was removed"
    assert await sc.aterminate() == 0
    assert sorted(str(p.relative_to(tiny_tmpfs)) for p in tiny_tmpfs.rglob("*")) == LEFT_AFTER_TEARDOWN
