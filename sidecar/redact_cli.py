"""``taskcreds redact [--url URL]``: stdin -> the sidecar's ``/v1/redact`` -> stdout, streaming.

Fails closed: when the sidecar cannot be reached or answers with an error, nothing is printed
(never the unredacted input) and the exit code is 1. Output only ever comes from the sidecar.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any, BinaryIO

import aiohttp

from taskcreds import names

__all__ = ["run", "DEFAULT_URL"]

DEFAULT_URL = f"http://127.0.0.1:{names.SIDECAR_LOCAL_PORT}"
_CHUNK = 64 * 1024


async def _stdin_chunks(stream: BinaryIO) -> AsyncIterator[bytes]:
    read = getattr(stream, "read1", stream.read)
    while True:
        chunk = await asyncio.to_thread(read, _CHUNK)
        if not chunk:
            return
        yield chunk


async def redact_stream(url: str, source: BinaryIO, sink: BinaryIO) -> int:
    """POST ``source`` to ``url``/v1/redact and copy the answer to ``sink``; raises on any failure.

    Returns the number of bytes written (all of them redacted by the sidecar).
    """
    written = 0
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=60.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(url.rstrip("/") + "/v1/redact", data=_stdin_chunks(source),
                                headers={"Content-Type": "text/plain; charset=utf-8"}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"the sidecar answered {resp.status} {resp.reason}")
            async for chunk in resp.content.iter_chunked(_CHUNK):
                sink.write(chunk)
                written += len(chunk)
    sink.flush()
    return written


def run(args: Any) -> int:
    url = getattr(args, "url", None) or DEFAULT_URL
    try:
        asyncio.run(redact_stream(url, sys.stdin.buffer, sys.stdout.buffer))
    except (aiohttp.ClientError, OSError, RuntimeError, TimeoutError) as exc:
        detail = str(exc) or type(exc).__name__
        print(f"taskcreds redact: cannot redact through the sidecar at {url}: {detail}. "
              "Nothing unredacted was printed; the output may be incomplete", file=sys.stderr)
        return 1
    return 0
