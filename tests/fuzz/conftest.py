"""Fixtures of the fuzz suite: one real TLS webhook per module, stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
