"""taskcreds.loop: the long-running processes run on uvloop (the operator, its webhook CLI, the
sidecar, the demo), from the main thread or from a thread that owns its loop."""

from __future__ import annotations

import asyncio
import os
import threading
from types import SimpleNamespace
from typing import Any

import pytest
import uvloop

from taskcreds import loop as tc_loop
from taskcreds import names


async def _loop_kind() -> str:
    return tc_loop.loop_name()


def test_run_loop_runs_the_coroutine_on_uvloop_and_returns_its_value() -> None:
    async def main() -> tuple[str, int]:
        await asyncio.sleep(0)
        return await _loop_kind(), 42

    assert tc_loop.run_loop(main()) == ("uvloop", 42)


def test_run_loop_works_on_a_thread_that_owns_its_loop() -> None:
    # the test harnesses run a whole operator this way (tests/operator/running.py)
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(tc_loop.run_loop(_loop_kind())))
    thread.start()
    thread.join(10)
    assert out == ["uvloop"]


def test_run_loop_raises_what_the_coroutine_raises_and_closes_its_loop() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def boom() -> None:
        loops.append(asyncio.get_running_loop())
        raise ValueError("from the coroutine")

    with pytest.raises(ValueError, match="from the coroutine"):
        tc_loop.run_loop(boom())
    assert len(loops) == 1 and loops[0].is_closed()


def test_new_event_loop_is_uvloop() -> None:
    loop = tc_loop.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_without_uvloop_it_falls_back_to_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tc_loop, "uvloop_available", lambda: False)
    assert tc_loop.run_loop(_loop_kind()) == "asyncio"


def test_the_operator_entry_point_runs_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    from taskcreds.operator import main as operator_main

    seen: list[str] = []

    async def fake_amain(settings: Any, config: Any) -> int:
        seen.append(await _loop_kind())
        return 0

    monkeypatch.setattr(operator_main, "_amain", fake_amain)
    monkeypatch.setattr(operator_main, "setup_logging", lambda level: None)  # keep pytest's handlers
    for name in list(os.environ):
        if name.startswith("TASKCREDS_"):
            monkeypatch.delenv(name)
    assert operator_main.main() == 0
    assert seen == ["uvloop"]


def test_the_demo_entry_point_runs_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    from taskcreds import demo

    seen: list[str] = []

    async def fake_main(args: Any) -> int:
        seen.append(tc_loop.loop_name())
        return 0

    monkeypatch.setattr(demo, "_main", fake_main)
    monkeypatch.setenv(names.ENV_DEV_AUTHORITY, "1")  # run() sets it for its process; undone after
    assert demo.run(SimpleNamespace(ttl="30s", task_seconds=1.0)) == 0
    assert seen == ["uvloop"]


# the webhook CLI and the sidecar say which loop they run on in their first log line; their process
# tests check it: tests/operator/test_webhook.py::test_cli_serves_healthz_over_tls_and_exits_0_on_sigterm,
# tests/sidecar/test_sidecar_process.py::test_fetches_serves_and_tears_down_when_the_broker_says_so
