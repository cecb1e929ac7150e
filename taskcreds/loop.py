"""The loop the long-running processes run on (operator, webhook, sidecar, demo): uvloop, else asyncio's.

Why uvloop, measured on this project's own paths:

- memory: asyncio's pure-Python TLS transport allocates and zero-fills a 256 KiB read buffer per
  connection; uvloop's is compiled and touches only what it reads. 200 TLS connections (both
  ends in one process) grew RSS by 113 MB on asyncio and 16 MB on uvloop. The operator's broker
  holds one mTLS connection per running sidecar: at ~200 live agent pods the soak put an
  asyncio operator at the 256Mi limit the chart had then (tests/soak/README.md, docs/install.md);
- speed: the egress proxy moves every byte through two TLS transports (bench/proxy.py: 16 KiB
  throughput through the proxy 0.44 -> 0.51x direct at one connection, 0.46 -> 0.53x at four).

kopf's own CLI picks uvloop the same way when it is installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["loop_name", "new_event_loop", "run_loop", "uvloop_available"]

T = TypeVar("T")


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - a platform without a uvloop wheel
        return False
    return True


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop of the kind :func:`run_loop` runs (for threads that own their loop)."""
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if uvloop_available():
        import uvloop

        factory = uvloop.new_event_loop
    return factory()


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop :func:`new_event_loop` makes; any thread may call it."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: which loop runs this coroutine (logged at start, so a process that
    fell back to asyncio's loop, with its costlier TLS connections, says so)."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
