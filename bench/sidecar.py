"""Benchmark: taskcreds-sidecar's footprint against the floor of a bare Python asyncio process.

Prints one table (exit 0 always; it is a report):

- ``floor``: ``python -c 'import asyncio'`` kept alive — the RSS no Python sidecar can go below;
- ``floor + spiffe`` and ``floor + spiffe + aiohttp``: the same process after importing the libraries
  issue 3 and the house rules mandate (py-spiffe for the Workload API, aiohttp for HTTP), measured in
  the same run: the RSS the sidecar cannot go below while it uses them;
- ``taskcreds-sidecar``: the real command as a subprocess with 5 credentials, a real SPIFFE
  Workload API (development authority) and the real broker (operator/broker, on the in-memory
  cluster, ``jwt`` sources) over real mutual TLS.

Measured: steady-state RSS (target <= 45 MB), time from the SVID being there to every credential on
disk (target <= 0.5 s; from the sidecar's own log timestamps) and from process start, and idle CPU
between refreshes over 10 s (target <= 0.5 %).
Run: ``.venv/bin/python bench/sidecar.py`` (about 20 s).

The 45 MB target is below ``floor + spiffe`` on this machine (~50 MB: grpc, protobuf, pyOpenSSL,
pyasn1, cryptography's Rust bindings): it cannot be met while the Workload API client is py-spiffe.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from taskcreds.operator.broker.server import BrokerServer, make_broker_app  # noqa: E402
from taskcreds.operator.broker.settings import BrokerSettings  # noqa: E402
from taskcreds.operator.memcluster import MemCluster  # noqa: E402
from taskcreds.operator.providers.registry import make_providers  # noqa: E402

from taskcreds import names  # noqa: E402
from taskcreds.devauthority import DevAuthority, WorkloadApiServer  # noqa: E402
from taskcreds.logs import setup_logging  # noqa: E402
from taskcreds.metrics import register_operator  # noqa: E402

SIDECAR = str(REPO / ".venv" / "bin" / "taskcreds-sidecar")
TRUST_DOMAIN = "taskcreds.local"
NS = "team-a"
BROKER_ID = f"spiffe://{TRUST_DOMAIN}/ns/taskcreds-system/sa/taskcreds-operator"
AGENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/{NS}/sa/agent"
FLOORS = {
    "floor (bare python, import asyncio)": "import asyncio",
    "floor + import spiffe": "import asyncio, spiffe",
    "floor + import spiffe, aiohttp.web": "import asyncio, spiffe, aiohttp.web",
}

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def start_broker(authority: DevAuthority) -> tuple[BrokerServer, int, str, str]:
    """The real broker on the in-memory cluster, a ``jwt`` source per credential: server, port, uid, token."""
    cluster = MemCluster()
    settings = BrokerSettings(namespace="taskcreds-system")
    for credential in CREDENTIALS:
        cluster.put_source(
            {
                "kind": names.KIND_CREDENTIAL_SOURCE,
                "metadata": {"name": credential, "namespace": NS},
                "spec": {"provider": "jwt", "maxTTL": "1h", "defaultTTL": "15m",
                         "allowedServiceAccounts": ["agent"], "jwt": {"audience": [credential]}},
            }
        )
    pod = cluster.put_pod(
        {
            "metadata": {
                "name": "agent-0",
                "namespace": NS,
                "labels": {names.LABEL_INJECT: "true"},
                "annotations": {
                    names.ANNOTATION_TASK: "task-1",
                    names.ANNOTATION_CREDENTIALS: ",".join(CREDENTIALS),
                },
            },
            "spec": {"serviceAccountName": "agent"},
        }
    )
    uid = pod["metadata"]["uid"]
    token = cluster.issue_pod_token(NS, "agent", "agent-0", uid)
    app = make_broker_app(cluster=cluster, providers=make_providers(cluster, settings), settings=settings,
                          metrics=register_operator(), trust_domain=TRUST_DOMAIN)
    broker_svid = authority.mint_x509_svid(BROKER_ID)
    server = BrokerServer(app, lambda: broker_svid)
    return server, await server.start("127.0.0.1", 0), uid, token


async def main() -> None:
    setup_logging("WARNING")
    floors = {
        name: subprocess.Popen([sys.executable, "-c", f"{code}; import time; time.sleep(60)"])  # noqa: ASYNC220
        for name, code in FLOORS.items()
    }
    work = Path(tempfile.mkdtemp(prefix="tc-bench-", dir="/tmp"))
    shm = Path(tempfile.mkdtemp(prefix="tc-bench-", dir="/dev/shm"))
    authority = DevAuthority(TRUST_DOMAIN, allow=True)
    api = WorkloadApiServer(authority, str(work / "agent.sock"), AGENT_ID)
    api.start()
    broker, port, uid, token = await start_broker(authority)
    (work / "token").write_text(token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKCREDS_")}
    env.update({
        names.ENV_DIR: str(shm), names.ENV_TASK: "task-1", names.ENV_CREDENTIALS: ",".join(CREDENTIALS),
        names.ENV_POD_NAME: "agent-0", names.ENV_POD_NAMESPACE: NS, names.ENV_POD_UID: uid,
        names.ENV_BROKER_URL: f"https://127.0.0.1:{port}", names.ENV_BROKER_SPIFFE_ID: BROKER_ID,
        names.ENV_TOKEN_FILE: str(work / "token"), names.ENV_SPIFFE_SOCKET: api.socket_uri,
        names.ENV_LISTEN_LOCAL: f"127.0.0.1:{free_port()}",
        names.ENV_LISTEN_PROBE: f"127.0.0.1:{free_port()}",
        names.ENV_LOG_LEVEL: "info",
    })
    log = open(work / "sidecar.log", "wb")  # noqa: SIM115
    started = time.monotonic()
    proc = subprocess.Popen([SIDECAR], env=env, stderr=log, stdout=log)  # noqa: ASYNC220
    try:
        while not all((shm / n).exists() for n in CREDENTIALS):
            if proc.poll() is not None or time.monotonic() - started > 20:
                raise SystemExit(f"sidecar did not get ready:\n{(work / 'sidecar.log').read_text()}")
            await asyncio.sleep(0.005)
        to_disk = time.monotonic() - started
        await asyncio.sleep(2.0)
        rss, anon = rss_mb(proc.pid), rss_mb(proc.pid, "RssAnon")
        floor_rss = {name: rss_mb(f.pid) for name, f in floors.items()}
        floor_anon = rss_mb(floors["floor (bare python, import asyncio)"].pid, "RssAnon")
        cpu0 = cpu_seconds(proc.pid)
        await asyncio.sleep(IDLE_SECONDS)
        idle_cpu = (cpu_seconds(proc.pid) - cpu0) / IDLE_SECONDS * 100
        lines = [json.loads(x) for x in (work / "sidecar.log").read_text().splitlines() if x.startswith("{")]
        svid_at = next(log_time(x) for x in lines if x["msg"] == "SPIFFE identity ready")
        issued_at = max(log_time(x) for x in lines if x["msg"] == "credential issued")
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)
        for f in floors.values():
            f.kill()
            f.wait()
        log.close()
        await broker.stop()
        api.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)

    print(f"{'process (RSS after imports)':<38} {'RSS':>10}")
    for name, value in floor_rss.items():
        print(f"{name:<38} {value:>7.1f} MB")
    print()
    floor_rss = floor_rss["floor (bare python, import asyncio)"]
    rows = [
        ("steady RSS, 5 credentials", f"{floor_rss:.1f} MB", f"{rss:.1f} MB", "<= 45 MB", rss <= 45),
        ("  of which anonymous (RssAnon)", f"{floor_anon:.1f} MB", f"{anon:.1f} MB", "(no shared libs)",
         True),
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
