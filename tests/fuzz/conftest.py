"""Fixtures of the fuzz suite: one real TLS webhook (or broker) per module, stopped at the end."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.broker_harness import LogWatch, ThreadedBroker
from tests.fuzz.harness import ThreadedWebhook, TLSPair, make_tls_pair


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> TLSPair:
    return make_tls_pair(Path(tmp_path_factory.mktemp("fuzz-tls")))


@pytest.fixture(scope="module")
def webhook_server(tls_pair: TLSPair) -> Iterator[ThreadedWebhook]:
    server = ThreadedWebhook(tls_pair).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def broker_server() -> Iterator[ThreadedBroker]:
    """The real broker over SPIFFE mTLS, one per module."""
    server = ThreadedBroker().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def log_watch() -> Iterator[LogWatch]:
    """Every log record of the module's tests, taskcreds and aiohttp at DEBUG (restored after)."""
    watch = LogWatch()
    loggers = [logging.getLogger(n) for n in ("taskcreds", "aiohttp")]
    levels = [lg.level for lg in loggers]
    root = logging.getLogger()
    root.addHandler(watch)
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    try:
        yield watch
    finally:
        root.removeHandler(watch)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
