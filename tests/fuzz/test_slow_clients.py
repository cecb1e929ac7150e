"""Slow, stalled and malformed clients against ``taskcreds webhook``: a real subprocess over real TLS.

The kube-apiserver sends a whole review at once and waits at most its webhook timeout (<= 30 s);
anything that trickles, stalls or never finishes is not the API server, and must neither block
the API server's requests nor hold a connection (and its buffers) for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fuzz.harness import TLSPair, make_tls_pair
from tests.fuzz.strategies import FIXTURE_REVIEW, review_bytes

SLOW_CLIENTS = 50
#: what a request may take while the slow clients hang (the API server's default timeout is 10 s)
ANSWER_WITHIN = 1.0
#: the longest a stalled connection may live: the webhook's deadlines are <= 10 s (handshake 5 s,
#: keep-alive 10 s from the connection's start until a whole request head is in, body 10 s)
STALL_BOUND = 12.0
CANARY = "s3cr3t-canary-7f1e"


@dataclass
class Webhook:
    port: int
    ca: ssl.SSLContext
    proc: asyncio.subprocess.Process
    log: list[str]


@pytest.fixture
async def webhook_process(tmp_path: Path) -> AsyncIterator[Webhook]:
    tls: TLSPair = make_tls_pair(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskcreds.cli",
        "webhook",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(tls.cert),
        "--tls-key",
        str(tls.key),
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log: list[str] = []
    assert proc.stderr is not None
    try:
        port = None
        while port is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
            assert line, "taskcreds webhook exited before serving:\n" + "".join(log)
            log.append(line)
            if json.loads(line).get("msg") == "webhook serving":
                port = int(json.loads(line)["listen"][0].rsplit(":", 1)[1])

        async def drain() -> None:
            while line := await proc.stderr.readline():  # type: ignore[union-attr]
                log.append(line.decode())

        drainer = asyncio.create_task(drain())
        yield Webhook(port, ssl.create_default_context(cadata=tls.ca_pem.decode()), proc, log)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(drainer, 5)


async def _tls(server: Webhook) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port, ssl=server.ca, server_hostname="localhost")


def _head(length: int) -> bytes:
    return (
        f"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


class Stalled:
    """One misbehaving client of a given kind; ``closed_at`` is when the server hung up on it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.closed_at: float | None = None
        self.task: asyncio.Task[None] | None = None

    async def run(self, server: Webhook, started: float) -> None:
        if self.kind == "tcp, no TLS handshake":
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        else:
            reader, writer = await _tls(server)
        try:
            if self.kind == "headers one byte at a time":
                for byte in _head(100):
                    writer.write(bytes([byte]))
                    await writer.drain()
                    if await _closed_within(reader, 0.25):
                        break
                else:
                    await reader.read(1)
            elif self.kind == "body never finished":
                writer.write(_head(100_000) + b'{"apiVersion":')
                await writer.drain()
                await reader.read(1)
            else:
                await reader.read(1)  # returns b"" (or raises) once the server closes
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            self.closed_at = time.monotonic() - started
            writer.close()


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server hung up (or answered, which ends the dribble too) within ``seconds``."""
    try:
        await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return False
    return True


KINDS = ["tcp, no TLS handshake", "TLS, then silence", "headers one byte at a time", "body never finished"]


async def _timed_request(server: Webhook, body: bytes) -> tuple[float, bytes]:
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(_tls(server), 5)
    try:
        writer.write(_head(len(body)).replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n") + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return time.monotonic() - started, answer


async def test_a_normal_request_answers_within_1s_while_50_slow_clients_hang(
    webhook_process: Webhook,
) -> None:
    started = time.monotonic()
    clients = [Stalled(KINDS[i % len(KINDS)]) for i in range(SLOW_CLIENTS)]
    for c in clients:
        c.task = asyncio.create_task(c.run(webhook_process, started))
    try:
        await asyncio.sleep(0.5)  # every slow client connected and stalling
        assert all(c.closed_at is None for c in clients), "a slow client was refused outright"
        body = review_bytes(FIXTURE_REVIEW)
        for _ in range(5):
            took, answer = await _timed_request(webhook_process, body)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert FIXTURE_REVIEW["request"]["uid"].encode() in answer
            assert took < ANSWER_WITHIN, (
                f"a normal review took {took:.2f} s beside {SLOW_CLIENTS} slow clients"
            )
    finally:
        for c in clients:
            assert c.task is not None
            c.task.cancel()
        await asyncio.gather(*(c.task for c in clients if c.task), return_exceptions=True)


#: a head sent one byte at a time keeps making progress; the API server never does this
SLOW_HEAD = "headers one byte at a time"


async def test_a_request_head_sent_byte_by_byte_is_closed(webhook_process: Webhook) -> None:
    """A head trickling in (a byte every 0.25 s: the whole head would take ~25 s) is cut off by the
    keep-alive deadline, which runs from the connection's start and no byte of a partial head resets
    (aiohttp's own timer, KEEPALIVE_TIMEOUT 10 s in taskcreds.operator.webhook)."""
    client = Stalled(SLOW_HEAD)
    started = time.monotonic()
    await asyncio.wait_for(client.run(webhook_process, started), STALL_BOUND)
    assert client.closed_at is not None and client.closed_at < STALL_BOUND
    assert client.closed_at < len(_head(100)) * 0.25, "closed before the head was complete"


async def test_stalled_connections_are_closed_within_a_bounded_time(webhook_process: Webhook) -> None:
    started = time.monotonic()
    clients = [Stalled(kind) for kind in KINDS if kind != SLOW_HEAD for _ in range(2)]
    for c in clients:
        c.task = asyncio.create_task(c.run(webhook_process, started))
    try:
        await asyncio.wait([c.task for c in clients if c.task], timeout=STALL_BOUND)
        still_open = sorted({c.kind for c in clients if c.closed_at is None})
        assert not still_open, f"still open after {STALL_BOUND:.0f} s: {', '.join(still_open)}"
    finally:
        for c in clients:
            if c.task is not None:
                c.task.cancel()
        await asyncio.gather(*(c.task for c in clients if c.task), return_exceptions=True)


async def test_malformed_http_framing_is_a_400_and_never_reaches_the_log(webhook_process: Webhook) -> None:
    """Broken chunked framing is refused by aiohttp's parser before our handler runs.

    aiohttp's own 400 quotes the offending bytes back to the client that sent them (its own data,
    accepted); what must never happen is those bytes reaching the log, where they would persist.
    """
    reader, writer = await _tls(webhook_process)
    writer.write(
        b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f'{{"env": [{{"name": "TOKEN", "value": "{CANARY}"}}]}}\r\n'.encode()
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer[:100]
    await asyncio.sleep(0.3)  # let the log line arrive
    assert not any(CANARY in line for line in webhook_process.log), "the request bytes reached the log"
