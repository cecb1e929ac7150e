"""The webhook's keep-alive deadline runs from the connection's start: the reason for ``aiohttp>=3.14.4``.

``taskcreds.operator.webhook.serve`` bounds a client that connects and then sends nothing, or sends
its request head a byte at a time, only through aiohttp's keep-alive timer. Before aiohttp 3.14.4
(aio-libs/aiohttp#13681, "Fixed idle connections not being closed if no request was received")
that timer was armed only after a first response, so such a connection lived forever. This runs the
real ``serve`` over real TLS with a 0.5 s deadline, so a too-old or regressed aiohttp fails here in
about a second with its version named (tests/fuzz/test_slow_clients.py shows the same at 10 s).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from taskcreds.operator import certificates as certs
from taskcreds.operator import webhook
from taskcreds.operator.tlsreload import ReloadingCertificate

from taskcreds.metrics import register_operator

#: the deadline under test, short so every case ends in about a second
DEADLINE = 0.5
#: scheduling slack on a loaded 2-core CI runner
SLACK = 1.0
#: between two bytes of a dribbled head: the whole head would take ~5 s, ten deadlines
BYTE_EVERY = 0.05
HEAD = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nUser-Agent: dribble\r\nAccept: */*\r\n\r\n"
WHY = ("the webhook's slow-client bound needs aiohttp>=3.14.4, whose keep-alive timer starts at "
       "connection_made (aio-libs/aiohttp#13681)")


#: a client's behaviour: (what the server sent before hanging up or None if still open, whole head sent)
Client = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[tuple[bytes | None, bool]]]


@dataclass
class Listening:
    port: int
    client: ssl.SSLContext


@pytest.fixture
async def listening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Listening]:
    """The real ``webhook.serve`` on 127.0.0.1 over TLS, with KEEPALIVE_TIMEOUT shortened to DEADLINE."""
    monkeypatch.setattr(webhook, "KEEPALIVE_TIMEOUT", DEADLINE)
    now = datetime.now(UTC)
    ca_cert, ca_key = certs.make_ca("idle-deadline-ca", now)
    cert, key = certs.make_serving_cert(ca_cert, ca_key, ["localhost"], now)
    certs.write_pair_atomically(tmp_path, cert, key)
    metrics = register_operator()
    tls = ReloadingCertificate(tmp_path / "tls.crt", tmp_path / "tls.key", metrics=metrics)
    app = webhook.make_webhook_app(object(), metrics)  # type: ignore[arg-type]  # only /healthz is used
    stop = asyncio.Event()
    ready: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(webhook.serve(app, tls, "127.0.0.1", 0, stop, on_ready=ready.set_result))
    try:
        _, port = (await asyncio.wait_for(ready, 5))[0]
        yield Listening(port, ssl.create_default_context(cadata=ca_cert.decode()))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the server sent before hanging up within ``seconds``; None if it is still open."""
    received = b""
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            chunk = await asyncio.wait_for(reader.read(4096), left)
            if not chunk:
                return received
            received += chunk
    except TimeoutError:
        return None
    except (ConnectionError, ssl.SSLError):
        return received
    return None


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[bytes | None, bool]:
    return await _closed_within(reader, DEADLINE + SLACK), False


async def _dribbled_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[bytes | None, bool]:
    for byte in HEAD:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            return b"", False
        answer = await _closed_within(reader, BYTE_EVERY)
        if answer is not None:
            return answer, False
    return await _closed_within(reader, DEADLINE + SLACK), True


async def _request_then_idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[bytes | None, bool]:
    writer.write(HEAD)
    await writer.drain()
    return await _closed_within(reader, DEADLINE + SLACK), True


CASES = [
    # name, client behaviour, what the server must have sent before hanging up
    pytest.param(_silent, b"", id="TLS handshake, then silence"),
    pytest.param(_dribbled_head, b"", id="request head one byte every 50 ms"),
    # control: a whole request is answered, then the same deadline closes the idle connection
    pytest.param(_request_then_idle, b"HTTP/1.1 200", id="whole request, then idle"),
]


@pytest.mark.parametrize(("client", "answer_starts"), CASES)
async def test_a_connection_is_closed_one_deadline_after_it_opens_or_last_answered(
    listening: Listening, client: Client, answer_starts: bytes,
) -> None:
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", listening.port, ssl=listening.client, server_hostname="localhost"), 5)
    try:
        answer, head_complete = await client(reader, writer)
    finally:
        writer.close()
    took = time.monotonic() - started
    seen = f"aiohttp {aiohttp.__version__}, {DEADLINE} s keep-alive deadline, {took:.2f} s after connecting"
    assert answer is not None, f"{seen}: still open; {WHY}"
    if answer_starts == b"":
        assert not head_complete, f"{seen}: the whole dribbled head went through first; {WHY}"
    assert answer.startswith(answer_starts), f"{seen}: answered {answer[:200]!r}"
    # not cut off early by something else (handshake deadline, parser error): the keep-alive timer
    assert DEADLINE - 0.05 <= took <= DEADLINE + SLACK, seen
