"""The operator under soak, in a process of its own (``multiprocessing`` spawn).

Why a separate process: the simulated sidecars and the Kubernetes API stand-in share the soak
driver's process, so the driver's RSS and file descriptors would say nothing about the operator.
Here RSS, open fds, threads and the asyncio tasks of the operator's loop are the operator's alone,
as in its pod. The child answers ``"stats"`` on its pipe and stops on ``"stop"``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
from collections import Counter
from typing import Any

__all__ = ["operator_child", "Stats"]

Stats = dict[str, Any]


class _LogCounter(logging.Handler):
    """Counts the operator's WARNING+ records by logger and keeps the first few messages (no values:
    the operator never logs one, by contract; the soak also sweeps these texts)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname} {record.name}"] += 1
        if len(self.samples) < 20:
            try:
                self.samples.append(f"{record.levelname} {record.name}: {record.getMessage()[:300]}")
            except Exception:  # noqa: BLE001 - an unrenderable record is still counted
                self.samples.append(f"{record.levelname} {record.name}: (unrenderable)")


def _rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _socket_ports() -> dict[str, tuple[int, int, str]]:
    """socket inode -> (local port, remote port, state) from /proc/self/net/tcp{,6}."""
    out: dict[str, tuple[int, int, str]] = {}
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = open(table, encoding="ascii").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
            out[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state)
    return out


def fd_kinds(ports: dict[str, int]) -> dict[str, int]:
    """Open fds by what they are: listeners, connections by peer (kube API, broker clients, ...)."""
    by_port = {v: k for k, v in ports.items()}
    sockets = _socket_ports()
    kinds: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inode = target[8:-1]
            if inode not in sockets:
                kinds["socket (unix or closed)"] += 1
                continue
            local, remote, state = sockets[inode]
            if state == "0A":
                kinds[f"listen {by_port.get(local, local)}"] += 1
            elif local in by_port:
                kinds[f"conn to {by_port[local]}"] += 1
            elif remote in by_port:
                kinds[f"client conn to {by_port[remote]}"] += 1
            else:
                kinds[f"conn out to :{remote} state {state}"] += 1
        else:
            kinds[
                target.split(":", 1)[0] if ":" in target else ("file" if target.startswith("/") else target)
            ] += 1
    return dict(kinds)


def _find(cls_path: str) -> list[Any]:
    """Instances of a class by qualified name (once, after start: the soak's window into state that
    ``run_operator`` keeps in locals)."""
    module, _, name = cls_path.rpartition(".")
    return [o for o in gc.get_objects() if type(o).__module__ == module and type(o).__name__ == name]


def operator_child(conn: Any, kube_url: str, token: str, svid: Any, idle_timeout: float) -> None:
    """Entry point of the child process: run the whole operator until told to stop."""
    from taskcreds.logs import setup_logging
    from taskcreds.loop import run_loop

    setup_logging("WARNING")
    counter = _LogCounter()
    logging.getLogger().addHandler(counter)
    run_loop(_amain(conn, kube_url, token, svid, idle_timeout, counter))  # the operator's own loop


async def _amain(
    conn: Any, kube_url: str, token: str, svid: Any, idle_timeout: float, counter: _LogCounter
) -> None:
    import kopf
    from taskcreds.operator.config import load_config
    from taskcreds.operator.kube import connect
    from taskcreds.operator.main import OperatorParts, kopf_settings_for_taskcreds, run_operator
    from taskcreds.operator.settings import OperatorSettings

    from taskcreds.metrics import register_operator

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    cluster = await connect(url=kube_url, token=token)
    kopf_settings = kopf_settings_for_taskcreds()
    kopf_settings.queueing.idle_timeout = idle_timeout
    kopf_settings.queueing.exit_timeout = 2.0
    parts = OperatorParts(metrics=register_operator(), replica_id="soak-operator")
    settings = OperatorSettings(
        webhook_listen=("127.0.0.1", 0), broker_listen=("127.0.0.1", 0), metrics_listen=("127.0.0.1", 0)
    )
    login = kopf.ConnectionInfo(server=kube_url, token=token)
    runner = asyncio.ensure_future(
        run_operator(
            settings,
            load_config(None),
            cluster=cluster,
            svid_source=lambda: svid,
            stop=stop,
            parts=parts,
            kopf_login=lambda **_: login,
            kopf_settings=kopf_settings,
        )
    )
    ready = asyncio.ensure_future(parts.ready.wait())
    await asyncio.wait({runner, ready}, timeout=90, return_when=asyncio.FIRST_COMPLETED)
    if not parts.ready.is_set():
        ready.cancel()
        error = runner.exception() if runner.done() else None
        conn.send(("failed", repr(error) if error else "not ready within 90 s"))
        runner.cancel()
        await cluster.close()
        return
    conn.send(("ready", dict(parts.ports)))
    kube_port = int(kube_url.rsplit(":", 1)[1].split("/")[0])
    hubs = _find("taskcreds.operator.taskstatus.TaskStatusHub")
    lifecycles = _find("taskcreds.operator.lifecycle.TaskLifecycle")
    brokers = _find("taskcreds.operator.broker.server.Broker")

    def type_counts() -> dict[str, int]:
        counts: Counter[str] = Counter(type(o).__qualname__ for o in gc.get_objects())
        return dict(counts.most_common(40))

    async def stats(deep: bool = False) -> Stats:
        life = lifecycles[0] if lifecycles else None
        broker = brokers[0] if brokers else None
        return {
            "rss_kb": _rss_kb(),
            "fds": len(os.listdir("/proc/self/fd")),
            "threads": threading.active_count(),
            "tasks": len(asyncio.all_tasks(loop)),
            "hub_entries": len(hubs[0]) if hubs else -1,
            "lifecycle_latest": len(life._latest) if life else -1,  # noqa: SLF001 - soak introspection
            "lifecycle_ended": len(life._ended) if life else -1,  # noqa: SLF001
            "lifecycle_deadlines": len(life._deadlines) if life else -1,  # noqa: SLF001
            "rate_buckets": len(broker._buckets) if broker else -1,  # noqa: SLF001
            "review_cache": len(getattr(broker.reviews, "_entries", ()) or ())
            if broker and broker.reviews
            else 0,
            "types": type_counts() if deep else {},
            "fd_kinds": fd_kinds({**parts.ports, "kube-api": kube_port}),
            "warnings": dict(counter.counts),
            "warning_samples": list(counter.samples),
        }

    def serve_commands() -> None:
        while True:
            try:
                command = conn.recv()
            except (EOFError, OSError):
                command = "stop"
            if command in ("stats", "deep-stats"):
                conn.send(asyncio.run_coroutine_threadsafe(stats(command == "deep-stats"), loop).result(30))
            else:
                loop.call_soon_threadsafe(stop.set)
                return

    threading.Thread(target=serve_commands, name="soak-commands", daemon=True).start()
    try:
        await runner
    finally:
        await cluster.close()
