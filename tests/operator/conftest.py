"""The operator runs on uvloop (``taskcreds.loop.run_loop``); its in-process tests run there too."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

#: modules that also run on asyncio's own loop: the TLS servers (webhook certificate reload, the
#: broker's SVID rotation and mTLS checks), the parts where the two loops' TLS transports differ,
#: so the fallback where no uvloop wheel exists stays tested
BOTH_LOOPS = frozenset({"test_tlsreload.py", "test_broker.py", "test_broker_authn.py", "test_webhook.py"})
#: tests that spawn a process from the loop: uvloop's fork-based spawn can crash the child in a test
#: process that has gRPC loaded (seen in tests/sidecar); the operator itself spawns nothing
SPAWNS_FROM_THE_LOOP = frozenset({"test_cli_serves_healthz_over_tls_and_exits_0_on_sigterm"})


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    import uvloop

    if getattr(item, "originalname", item.name) in SPAWNS_FROM_THE_LOOP:
        return {"asyncio": asyncio.new_event_loop}
    if item.path.name in BOTH_LOOPS:
        return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}
