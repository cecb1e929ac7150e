"""Benchmark: taskcreds-sidecar's footprint against the floor of a bare Python asyncio process.

Prints one table (exit 0 always; it is a report):

- ``floor``: ``python -c 'import asyncio'`` kept alive — the RSS no Python sidecar can go below;
- ``taskcreds-sidecar``: the real command as a subprocess with 5 credentials, a real SPIFFE
  Workload API (development authority) and the test broker double over real mutual TLS.

Measured: steady-state RSS (target <= 45 MB), time from the SVID being there to every credential on
disk (target <= 0.5 s; from the sidecar's own log timestamps) and from process start, and idle CPU
between refreshes over 10 s (target <= 0.5 %).
Run: ``.venv/bin/python bench/sidecar.py`` (about 20 s).

Where the RSS goes (import alone, this machine): asyncio 20 MB, aiohttp 35 MB, py-spiffe (grpc,
protobuf, pyOpenSSL) 50 MB; both together ~64 MB before any work. The 45 MB target needs the
Workload API client without py-spiffe (raw grpc stubs) or the HTTP stack without aiohttp.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from taskcreds.devauthority import DevAuthority, WorkloadApiServer  # noqa: E402
from tests.sidecar.conftest import SIDECAR, TOKEN, sidecar_env  # noqa: E402
from tests.sidecar.fakebroker import FakeBroker  # noqa: E402

CREDENTIALS = ["github", "db", "npm", "pypi", "registry"]
IDLE_SECONDS = 10.0


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_time(line: dict) -> float:
    return datetime.fromisoformat(line["ts"].replace("Z", "+00:00")).timestamp()


async def main() -> None:
    floor = subprocess.Popen([sys.executable, "-c", "import asyncio, time; time.sleep(30)"])
    work = Path(tempfile.mkdtemp(prefix="tc-bench-", dir="/tmp"))
    shm = Path(tempfile.mkdtemp(prefix="tc-bench-", dir="/dev/shm"))
    authority = DevAuthority("taskcreds.local", allow=True)
    api = WorkloadApiServer(authority, str(work / "agent.sock"), "spiffe://taskcreds.local/ns/team-a/sa/agent")
    api.start()
    broker = await FakeBroker(authority, credentials={n: "vault" if n == "db" else "secret" for n in CREDENTIALS},
                              ttl=600.0).start()
    (work / "token").write_text(TOKEN)
    env = sidecar_env(directory=shm, broker_url=broker.url, token_file=work / "token", socket_uri=api.socket_uri,
                      credentials=",".join(CREDENTIALS), TASKCREDS_LOG_LEVEL="info")
    log = open(work / "sidecar.log", "wb")  # noqa: SIM115
    started = time.monotonic()
    proc = subprocess.Popen([SIDECAR], env=env, stderr=log, stdout=log)
    try:
        while not all((shm / n).exists() for n in CREDENTIALS):
            if proc.poll() is not None or time.monotonic() - started > 20:
                raise SystemExit(f"sidecar did not get ready:\n{(work / 'sidecar.log').read_text()}")
            await asyncio.sleep(0.005)
        to_disk = time.monotonic() - started
        await asyncio.sleep(2.0)
        rss, floor_rss = rss_mb(proc.pid), rss_mb(floor.pid)
        anon, floor_anon = rss_mb(proc.pid, "RssAnon"), rss_mb(floor.pid, "RssAnon")
        cpu0 = cpu_seconds(proc.pid)
        await asyncio.sleep(IDLE_SECONDS)
        idle_cpu = (cpu_seconds(proc.pid) - cpu0) / IDLE_SECONDS * 100
        lines = [json.loads(x) for x in (work / "sidecar.log").read_text().splitlines() if x.startswith("{")]
        svid_at = next(log_time(x) for x in lines if x["msg"] == "SPIFFE identity ready")
        issued_at = max(log_time(x) for x in lines if x["msg"] == "credential issued")
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)
        floor.kill()
        floor.wait()
        log.close()
        await broker.stop()
        api.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)

    rows = [
        ("steady RSS, 5 credentials", f"{floor_rss:.1f} MB", f"{rss:.1f} MB", "<= 45 MB", rss <= 45),
        ("  of which anonymous (RssAnon)", f"{floor_anon:.1f} MB", f"{anon:.1f} MB", "(no shared libs)", True),
        ("SVID ready -> credentials on disk", "-", f"{(issued_at - svid_at) * 1000:.0f} ms", "<= 500 ms",
         issued_at - svid_at <= 0.5),
        ("process start -> credentials on disk", "-", f"{to_disk * 1000:.0f} ms", "(imports included)", True),
        (f"idle CPU over {IDLE_SECONDS:.0f} s", "-", f"{idle_cpu:.2f} %", "<= 0.5 %", idle_cpu <= 0.5),
    ]
    print(f"{'measure':<38} {'floor':>10} {'sidecar':>10}  {'target':<20} ok")
    for name, fl, value, target, ok in rows:
        print(f"{name:<38} {fl:>10} {value:>10}  {target:<20} {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    asyncio.run(main())
