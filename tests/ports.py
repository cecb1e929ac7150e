"""Free loopback ports for test servers, taken from below the kernel's ephemeral range.

Why not ``bind(0)``: that hands out an ephemeral port, the same range the kernel takes source
ports from for outgoing connections. Many test servers stop and start again on the same port
(the operator in the fault matrix, OpenBao, the broker, TCP proxies that simulate an outage).
While such a server is down, any outgoing connection on the machine may be given its port as a
source port, and the restart then fails with EADDRINUSE. CI saw this: all twelve fault-matrix
rows failed on one port while another test run was busy. Ports below the ephemeral range are
never used as source ports.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port", "free_port_pair"]

_SPAN = 12_000  # how far below the ephemeral range to look


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(width: int = 2) -> int:
    """A port ``p`` such that ``p .. p+width-1`` are free now and are no source ports later.

    OpenBao's dev mode binds the port after its own, hence pairs.
    """
    low = _ephemeral_low()
    first, last = max(1024, low - _SPAN), low - width
    rng = random.SystemRandom()  # concurrent test processes must not walk the same sequence
    for _ in range(500):
        port = rng.randrange(first, last)
        if all(_bindable(port + i) for i in range(width)):
            return port
    raise RuntimeError(f"no {width} free loopback ports found in {first}-{last + width - 1}")


def free_port() -> int:
    """One free loopback port outside the ephemeral range (see the module doc)."""
    return free_port_pair(1)
