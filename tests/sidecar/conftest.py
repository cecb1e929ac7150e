"""Fixtures for the sidecar tests: tmpfs dirs, a token file, the fake broker, SPIFFE, the sidecar process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskcreds import names
from taskcreds.devauthority import DevAuthority
from tests.sidecar.fakebroker import BROKER_ID, TOKEN, FakeBroker
from tests.spiffe.fixtures import AGENT_ID, dev_authority, workload_api  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]
SIDECAR = str(REPO / ".venv" / "bin" / "taskcreds-sidecar")


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A fresh directory on tmpfs (/dev/shm), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="tc-sidecar-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
async def broker(dev_authority: DevAuthority) -> AsyncIterator[FakeBroker]:
    b = await FakeBroker(dev_authority).start()
    yield b
    await b.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sidecar_env(*, directory: Path, broker_url: str, token_file: Path, socket_uri: str,
                credentials: str = "github,db", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKCREDS_")}
    env.update({
        names.ENV_DIR: str(directory), names.ENV_TASK: "task-1", names.ENV_CREDENTIALS: credentials,
        names.ENV_POD_NAME: "agent-0", names.ENV_POD_NAMESPACE: "team-a", names.ENV_POD_UID: "uid-1",
        names.ENV_BROKER_URL: broker_url, names.ENV_BROKER_SPIFFE_ID: BROKER_ID,
        names.ENV_TOKEN_FILE: str(token_file), names.ENV_SPIFFE_SOCKET: socket_uri,
        names.ENV_LISTEN_LOCAL: f"127.0.0.1:{free_port()}", names.ENV_LISTEN_PROBE: f"127.0.0.1:{free_port()}",
        names.ENV_LOG_LEVEL: "debug",
    })
    env.update(extra)
    return env


class SidecarProcess:
    """``taskcreds-sidecar`` as a real subprocess; stderr captured to a file for log assertions."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.local = "http://" + env[names.ENV_LISTEN_LOCAL]
        self.probe = "http://" + env[names.ENV_LISTEN_PROBE]
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([SIDECAR], env=env, stdout=self._log, stderr=self._log)

    def get(self, path: str, *, base: str | None = None, timeout: float = 2.0) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen((base or self.local) + path, timeout=timeout) as resp:
                body = resp.read()
                return resp.status, body
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def readyz(self) -> int | None:
        try:
            return self.get("/readyz")[0]
        except OSError:
            return None

    async def wait_for(self, check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            result = await asyncio.to_thread(check)
            if result:
                return result
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited {self.proc.returncode} waiting for {what}:\n{self.logs()}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def terminate(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.stop()

    async def aterminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait without blocking the event loop (the fake broker runs on it)."""
        return await asyncio.to_thread(self.terminate, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@pytest.fixture
def sidecar_process(tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    started: list[SidecarProcess] = []

    def start(env: dict[str, str]) -> SidecarProcess:
        proc = SidecarProcess(env, tmp_path / f"sidecar-{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def run_sidecar_once(env: dict[str, str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run the sidecar to completion (for refusals at start)."""
    return subprocess.run([SIDECAR], env=env, capture_output=True, text=True, timeout=timeout)


__all__ = ["SidecarProcess", "sidecar_env", "run_sidecar_once", "free_port", "AGENT_ID", "BROKER_ID", "TOKEN",
           "sys"]
