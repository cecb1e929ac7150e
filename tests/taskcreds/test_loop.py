"""taskcreds.loop: every taskcreds process runs on uvloop (the operator, its webhook CLI, the
sidecar, the demo), from the main thread or from a thread that owns its loop."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest
import uvloop

from taskcreds import loop as tc_loop


async def _loop_kind() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


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


def test_run_loop_raises_what_the_coroutine_raises_and_leaves_no_loop_behind() -> None:
    async def boom() -> None:
        raise ValueError("from the coroutine")

    with pytest.raises(ValueError, match="from the coroutine"):
        tc_loop.run_loop(boom())
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


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


def test_the_sidecar_entry_point_uses_the_same_loop() -> None:
    from taskcreds.sidecar import main as sidecar_main

    assert sidecar_main.run_loop is tc_loop.run_loop
