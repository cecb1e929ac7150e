"""A TCP proxy on loopback that can be slow or down: OpenBao "slow" and "down" without restarting it.

A dev-mode OpenBao forgets every token when it restarts, which would make "revoked at its source"
trivially true; behind this proxy OpenBao keeps running and keeping its tokens while the operator
cannot reach it (``set_down(True)``: the listener closes, so connects are refused, and every open
connection is cut) or reaches it slowly (``set_delay(s)``: every chunk, either way, waits ``s``).
It runs on its own loop in its own thread, so kopf's exit cannot cancel it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from tests.ports import free_port

__all__ = ["TcpProxy"]


class TcpProxy:
    """``127.0.0.1:<port>`` -> ``upstream``; the port stays the same across down/up."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()  # outside the ephemeral range: the port must stay ours while down
        self.delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()
        self._call(self._listen())

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    def set_down(self, down: bool) -> None:
        """Down: connection refused, open connections cut. Up: listening again on the same port."""
        self._call(self._close() if down else self._listen())

    def set_delay(self, seconds: float) -> None:
        self.delay = seconds

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.write_eof()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        with contextlib.suppress(Exception):
            self._loop.close()
