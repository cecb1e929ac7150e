"""A real TLS handshake on loopback between two contexts, reporting who saw whom."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from dataclasses import dataclass

from taskcreds.svid import peer_spiffe_id

__all__ = ["Handshake", "handshake", "TlsServer"]


@dataclass
class Handshake:
    server_saw: str | None  # the client's SPIFFE ID as the server read it
    client_saw: str | None  # the server's SPIFFE ID as the client read it
    server_saw_leaf: str | None  # sha256 of the client's leaf certificate
    version: str | None


class TlsServer:
    """An asyncio TLS server on 127.0.0.1:0 that records every client's SPIFFE ID and leaf hash."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.seen: list[tuple[str | None, str | None]] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> TlsServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        obj = writer.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True) if obj else None
        self.seen.append((peer_spiffe_id(obj), hashlib.sha256(der).hexdigest() if der else None))
        try:
            writer.write(b"ok")
            await writer.drain()
            await reader.read(1)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def connect(self, context: ssl.SSLContext) -> Handshake:
        """Connect, finish the handshake, read the server's answer; raises ssl.SSLError when refused."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port, ssl=context), 5)
        try:
            # TLS 1.3 reports a refused client certificate only on the first read
            data = await asyncio.wait_for(reader.read(2), 5)
            if data != b"ok":
                raise ssl.SSLError(f"server closed the connection (got {data!r})")
            obj = writer.get_extra_info("ssl_object")
            server_saw, leaf = self.seen[-1]
            return Handshake(server_saw=server_saw, client_saw=peer_spiffe_id(obj), server_saw_leaf=leaf,
                             version=obj.version())
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass


async def handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> Handshake:
    async with TlsServer(server_context) as server:
        return await server.connect(client_context)
