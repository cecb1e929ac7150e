"""The sidecar's egress proxy: attaches proxy-delivered credentials the agent never holds.

The agent points HTTPS_PROXY/HTTP_PROXY at ``127.0.0.1:<port>``. For a host one of the routes
matches, the proxy answers the agent's ``CONNECT``, terminates its TLS with a leaf from the pod
CA (:mod:`taskcreds.sidecar.podca`), and forwards each HTTP/1.1 request to the real host over a
fully verified TLS connection, replacing whatever ``Authorization`` (or the route's own header)
the agent sent with the credential. Every other host gets a blind ``CONNECT`` tunnel (end-to-end
TLS, nothing read or added), or a 403 when the pod asked for deny-by-default egress
(annotation ``taskcreds.io/egress: deny``). After teardown matched hosts get a 403 saying the task
has ended. Plain-HTTP requests to a matched host are refused unless the route allows them:
a credential would cross the network in clear text.

Every request is logged (host, method, path without query, status, credential name, result) and
counted; no value ever goes into a log line, a metric, an error body or an exception.

Bodies stream both ways (``git push`` sends large packs, chunked): nothing is buffered whole.
Request heads are bounded (:data:`MAX_HEAD_BYTES`, :data:`MAX_HEADERS`), idle keep-alive
connections are closed after ``idle_timeout``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import logging
import math
import re
import ssl
import string
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from taskcreds.sidecar.podca import PodCA, PodCAError, normalize_hostname
from yarl import URL

from taskcreds import names
from taskcreds.logs import fields, info_line
from taskcreds.metrics import SidecarMetrics, register_sidecar

__all__ = [
    "ProxyRoute",
    "CredentialView",
    "EgressProxy",
    "ProxyMetrics",
    "register_proxy",
    "match_route",
    "RouteError",
    "MAX_HEAD_BYTES",
    "MAX_HEADERS",
]

_log = logging.getLogger("taskcreds.sidecar.proxy")

MAX_HEAD_BYTES = 64 * 1024  # request line + headers
MAX_HEADERS = 128
_CHUNK = 64 * 1024
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token (header names)
# a control character in a request head other than HTAB, or a CR or LF that is not part of a CRLF
# line end: an upstream that splits lines on a bare LF would read a second request into it, one
# the proxy never saw and whose body would be the credential header it appends (RFC 9110 5.5)
_HEAD_CTL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")
_TARGET = re.compile(r"[\x21-\x7e]+")  # a request target: visible ASCII, nothing else
_DIGITS = re.compile(r"[0-9]{1,18}")  # a Content-Length: ASCII digits only ("²".isdigit() is True)
_DIGITS_B = re.compile(rb"[0-9]{1,18}")
# a chunk-size line: hex digits only (int(..., 16) would take "-1", "0x10", "+1", "1_0"), then
# optional extensions, which are dropped
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\n")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,253}$")  # credential and file names
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_HOP_BY_HOP_BYTES = frozenset(h.encode() for h in _HOP_BY_HOP)
#: request headers never passed upstream (the proxy writes Host and the body's framing itself)
_DROP = _HOP_BY_HOP | {"host", "expect", "content-length"}
_NO_BODY_STATUS = frozenset({204, 304})


class RouteError(ValueError):
    """A proxy route that cannot be used; the message names the field and what is accepted."""


# --- routes (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyRoute:
    """One proxy-delivered credential: which hosts get it, and how it is attached.

    ``hosts`` are exact names (``api.example.com``) or ``*.suffix`` (any name ending in
    ``.suffix``, never the bare suffix). Exactly one of ``header`` (a template such as
    ``"Authorization: Bearer {token}"``; ``{name}`` is the credential's file ``name``) and
    ``basic_username`` (HTTP Basic with the ``token`` file as password, as git over HTTPS wants).
    ``allow_http`` lets the credential go to these hosts over plain HTTP too (default: refused).
    """

    credential: str
    hosts: tuple[str, ...]
    header: str | None = None
    basic_username: str | None = None
    allow_http: bool = False
    header_name: str = field(init=False, repr=False, compare=False)
    _template: str = field(init=False, repr=False, compare=False)
    files: tuple[str, ...] = field(init=False, repr=False, compare=False)
    drop: frozenset[str] = field(init=False, repr=False, compare=False)  # request headers not passed on
    # the last values read and the header made from them: most requests reuse it
    _rendered: tuple[tuple[str | None, ...], str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"proxy route for credential {self.credential!r}"
        if not isinstance(self.credential, str) or not _NAME.fullmatch(self.credential):
            raise RouteError(f"{where}: the credential name must be letters, digits, '.', '_', '-'")
        hosts = (self.hosts,) if isinstance(self.hosts, str) else tuple(self.hosts)
        if not hosts:
            raise RouteError(f"{where}: hosts is empty; list exact names or '*.suffix' patterns")
        object.__setattr__(self, "hosts", tuple(_normalize_pattern(where, h) for h in hosts))
        if (self.header is None) == (self.basic_username is None):
            raise RouteError(
                f"{where}: set exactly one of header (e.g. 'Authorization: Bearer {{token}}') "
                "and basic_username (HTTP Basic with the token as password)"
            )
        if self.header is not None:
            name, template, files = _parse_header_template(where, self.header)
        else:
            username = self.basic_username or ""
            if not username or ":" in username or any(c in username for c in "\r\n\0"):
                raise RouteError(
                    f"{where}: basic_username {username!r} must be non-empty, without ':' or line breaks"
                )
            name, template, files = "Authorization", "", ("token",)
        object.__setattr__(self, "header_name", name)
        object.__setattr__(self, "_template", template)
        object.__setattr__(self, "files", files)
        object.__setattr__(self, "drop", _DROP | {"authorization", name.lower()})
        object.__setattr__(self, "_rendered", ((), ""))

    def matches(self, host: str) -> str | None:
        """The pattern of this route that matches ``host`` (normalized), or None."""
        for pattern in self.hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return pattern
            elif host == pattern:
                return pattern
        return None

    def render(self, view: CredentialView) -> str | None:
        """The header value with the credential filled in; None when a file is not available.

        Raises RouteError (naming the file, never its content) for a value that would break
        the header: line breaks or NUL.
        """
        raw = tuple(view.value(self.credential, file) for file in self.files)
        if None in raw:
            object.__setattr__(self, "_rendered", ((), ""))  # keep no copy of a value that is gone
            return None
        if self._rendered[0] == raw:
            return self._rendered[1]
        values: dict[str, str] = {}
        for file, value in zip(self.files, raw, strict=True):
            assert value is not None
            value = value.strip("\r\n") if self.basic_username is not None or file == "token" else value
            if "\n" in value or "\r" in value or "\0" in value:
                raise RouteError(
                    f"credential {self.credential!r} file {file!r} holds a line break or NUL; "
                    "it cannot be sent in an HTTP header"
                )
            values[file] = value
        if self.basic_username is not None:
            userpass = f"{self.basic_username}:{values['token']}".encode()
            rendered = "Basic " + base64.b64encode(userpass).decode("ascii")
        else:
            rendered = self._template.format_map(values)
        object.__setattr__(self, "_rendered", (raw, rendered))
        return rendered


def _normalize_pattern(where: str, pattern: str) -> str:
    if not isinstance(pattern, str):
        raise RouteError(f"{where}: host {pattern!r} is not a string")
    wildcard = pattern.startswith("*.")
    try:
        host = normalize_hostname(pattern[2:] if wildcard else pattern)
    except PodCAError:
        raise RouteError(
            f"{where}: host {pattern!r} is neither a DNS name nor '*.' followed by one "
            "(a wildcard matches names below the suffix, never the suffix itself)"
        ) from None
    if wildcard and "." not in host:
        raise RouteError(
            f"{where}: host {pattern!r} would match a whole top-level domain; use at least '*.example.com'"
        )
    return "*." + host if wildcard else host


def _parse_header_template(where: str, header: str) -> tuple[str, str, tuple[str, ...]]:
    name, sep, template = header.partition(":")
    name, template = name.strip(), template.strip()
    if not sep or not _TOKEN.fullmatch(name):
        raise RouteError(f"{where}: header {header!r} must look like 'Name: value with {{token}}'")
    if name.lower() in _HOP_BY_HOP or name.lower() in ("host", "content-length"):
        raise RouteError(f"{where}: header {name!r} is managed by the proxy and cannot carry a credential")
    if any(c in template for c in "\r\n\0"):
        raise RouteError(f"{where}: header {name!r} template holds a line break")
    files: list[str] = []
    try:
        for _literal, field_name, spec, conversion in string.Formatter().parse(template):
            if field_name is None:
                continue
            if not _NAME.fullmatch(field_name) or spec or conversion:
                raise RouteError(
                    f"{where}: header placeholder {{{field_name}}} must be a plain file name "
                    "such as {token} (no format spec or conversion)"
                )
            if field_name not in files:
                files.append(field_name)
    except ValueError as exc:
        raise RouteError(
            f"{where}: header template {template!r} is malformed ({exc}); "
            "write literal braces as '{{' and '}}'"
        ) from None
    if not files:
        raise RouteError(
            f"{where}: header {header!r} has no placeholder; put the credential in with {{token}}"
        )
    return name, template, tuple(files)


def match_route(routes: Sequence[ProxyRoute], host: str) -> tuple[ProxyRoute, str] | None:
    """The route for ``host`` and the pattern that matched: an exact name beats a wildcard,
    a longer wildcard suffix beats a shorter one, then the first route listed wins."""
    try:
        host = normalize_hostname(host)
    except PodCAError:
        return None
    best: tuple[ProxyRoute, str] | None = None
    best_rank = (-1, -1)
    for route in routes:
        pattern = route.matches(host)
        if pattern is None:
            continue
        rank = (0, len(pattern)) if pattern.startswith("*.") else (1, len(pattern))
        if rank > best_rank:
            best, best_rank = (route, pattern), rank
    return best


class CredentialView(Protocol):
    """What the proxy reads: the sidecar's credential store implements it."""

    def value(self, credential: str, file: str = "token") -> str | None:
        """The current value of one file of a credential; None when absent or expired."""
        ...

    @property
    def ended(self) -> bool:
        """True once the task was torn down: nothing is attached any more."""
        ...


# --- metrics ------------------------------------------------------------------------------------

#: the proxy's metrics are the sidecar's (``proxy_requests``, ``proxy_duration``); these names stay
#: for callers that made the proxy's metrics on their own
ProxyMetrics = SidecarMetrics
register_proxy = register_sidecar


# --- HTTP/1.1 parsing ---------------------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class _Head:
    """A parsed request head; ``index`` maps lower-case names to their values."""

    __slots__ = ("method", "target", "version", "headers", "index")

    def __init__(self, method: str, target: str, version: str, headers: list[tuple[str, str]]) -> None:
        self.method, self.target, self.version, self.headers = method, target, version, headers
        index: dict[str, list[str]] = {}
        for k, v in headers:
            lk = k.lower()
            if lk in index:
                index[lk].append(v)
            else:
                index[lk] = [v]
        self.index = index

    def get(self, name: str) -> list[str]:
        """The values of header ``name`` (lower case)."""
        return self.index.get(name, _NONE)

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of header ``name`` (lower case), lower-cased."""
        values = self.index.get(name)
        if values is None:
            return _NO_TOKENS
        return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}

    @property
    def keep_alive(self) -> bool:
        conn = self.tokens("connection") | self.tokens("proxy-connection")
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn


_NONE: list[str] = []  # shared: never appended to
_NO_TOKENS: set[str] = set()  # shared: never added to


def _parse_head(data: bytes) -> _Head:
    if _HEAD_CTL.search(data):
        raise _BadRequest(
            400, "the request head has a control character, or a CR or LF outside a CRLF line end: refused"
        )
    lines = data.rstrip(b"\r\n").split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise _BadRequest(400, "the request line is not 'METHOD target HTTP/1.1'") from None
    if not _TARGET.fullmatch(target):
        raise _BadRequest(400, "the request target has a character other than visible ASCII")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest(505, f"HTTP version {version!r} is not supported; use HTTP/1.1")
    if not _TOKEN.fullmatch(method):
        raise _BadRequest(400, "the request method is not a valid token")
    if len(lines) - 1 > MAX_HEADERS:
        raise _BadRequest(431, f"more than {MAX_HEADERS} request headers")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line or line[:1] in (b" ", b"\t"):
            raise _BadRequest(400, "folded or empty header lines are not accepted")
        name, sep, value = line.partition(b":")
        sname = name.decode("latin-1")
        if not sep or not _TOKEN.fullmatch(sname):
            raise _BadRequest(400, f"malformed header name {sname[:64]!r}")
        headers.append((sname, value.strip(b" \t").decode("latin-1")))
    return _Head(method, target, version, headers)


class _Deadline:
    """When the connection's task must have made progress by; one sweeper task enforces them all.

    ``asyncio.timeout`` per read costs a timer handle, a heap push and pop and a cancel each time:
    with three reads per proxied request that was a tenth of the proxy's time. Here a read only
    stores a number, and the sweeper (:meth:`EgressProxy._sweep`) cancels the task when it passes.
    """

    __slots__ = ("at", "fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.at = math.inf
        self.fired = False
        self.task = task

    def expired(self) -> bool:
        """True (once) when a CancelledError came from this deadline rather than from a close."""
        if not self.fired:
            return False
        self.fired = False
        self.task.uncancel()
        return True


#: the deadline of the agent connection the current task serves (set in EgressProxy._accept)
_DEADLINE: contextvars.ContextVar[_Deadline] = contextvars.ContextVar("taskcreds_proxy_deadline")


async def _read_head(reader: asyncio.StreamReader, idle: float) -> _Head | None:
    """The next request head, or None on a clean EOF or idle timeout before any byte."""
    dl = _DEADLINE.get(None)
    try:
        if dl is None:
            async with asyncio.timeout(idle):
                data = await reader.readuntil(b"\r\n\r\n")
        else:
            dl.at = time.monotonic() + idle
            try:
                data = await reader.readuntil(b"\r\n\r\n")
            except asyncio.CancelledError:
                if dl.expired():
                    return None
                raise
            finally:
                dl.at = math.inf
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise _BadRequest(400, "the connection closed in the middle of a request head") from None
    except asyncio.LimitOverrunError:
        raise _BadRequest(431, f"request head larger than {MAX_HEAD_BYTES} bytes") from None
    except TimeoutError:
        return None
    return _parse_head(data.lstrip(b"\r\n"))


class _Body:
    """The request body's framing, read lazily as an async iterator; ``done`` once fully read.

    Each piece must arrive within ``stall`` seconds (the agent connection's idle timeout): an agent
    that stops sending mid-body gets a 408 instead of holding an upstream connection open forever.
    """

    def __init__(self, reader: asyncio.StreamReader, head: _Head, stall: float = math.inf) -> None:
        self.reader = reader
        self.stall = stall
        self.length: int | None = 0
        self.chunked = False
        self.done = True
        if "transfer-encoding" not in head.index and "content-length" not in head.index:
            return  # most requests: no body
        te = [t for v in head.get("transfer-encoding") for t in v.lower().replace(" ", "").split(",") if t]
        cl = {v.strip() for v in head.get("content-length")}
        self.length = None
        if te:
            if cl:
                raise _BadRequest(
                    400, "both Transfer-Encoding and Content-Length: refused (request smuggling)"
                )
            if te != ["chunked"]:
                raise _BadRequest(501, f"Transfer-Encoding {','.join(te)!r} is not supported; use chunked")
            self.chunked = True
        elif cl:
            if len(cl) != 1 or not _DIGITS.fullmatch(next(iter(cl))):
                raise _BadRequest(400, "Content-Length must be one non-negative integer (at most 18 digits)")
            self.length = int(next(iter(cl)))
        else:
            self.length = 0
        self.done = self.length == 0

    @property
    def present(self) -> bool:
        return self.chunked or bool(self.length)

    async def chunks(self) -> AsyncIterator[bytes]:
        dl = _DEADLINE.get(None)
        pieces = (
            self._dechunk()
            if self.chunked
            else self._exactly(self.length or 0, "the request body ended before Content-Length")
        )
        try:
            while True:
                if dl is not None:
                    dl.at = time.monotonic() + self.stall  # only while waiting for the agent
                try:
                    chunk = await anext(pieces)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if dl is not None and dl.expired():
                        raise _BadRequest(
                            408, f"the request body stalled for {self.stall:g} s; the proxy stopped waiting"
                        ) from None
                    raise
                finally:
                    if dl is not None:
                        dl.at = math.inf
                yield chunk
        finally:
            await pieces.aclose()
        self.done = True

    async def _exactly(self, size: int, short: str) -> AsyncGenerator[bytes, None]:
        """``size`` body bytes in pieces as they arrive; a 400 saying ``short`` if the agent stops."""
        while size:
            chunk = await self.reader.read(min(size, _CHUNK))
            if not chunk:
                raise _BadRequest(400, short)
            size -= len(chunk)
            yield chunk

    async def _line(self) -> bytes:
        """One line of chunked framing (size line or trailer), bounded by the reader's limit."""
        try:
            return await self.reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(400, f"a chunk-size or trailer line is over {MAX_HEAD_BYTES} bytes") from None
        except asyncio.IncompleteReadError:
            raise _BadRequest(400, "the request body ended inside its chunked framing") from None

    async def _dechunk(self) -> AsyncGenerator[bytes, None]:
        while True:
            match = _CHUNK_LINE.fullmatch(await self._line())
            if match is None:
                raise _BadRequest(400, "malformed chunk size in the request body (hex digits expected)")
            size = int(match[1], 16)
            if size == 0:
                while (await self._line()) not in (b"\r\n", b"\n"):
                    pass  # trailers are dropped
                return
            async for chunk in self._exactly(size, "the request body ended inside a chunk"):
                yield chunk
            try:
                crlf = await self.reader.readexactly(2)
            except asyncio.IncompleteReadError:
                crlf = b""
            if crlf != b"\r\n":
                raise _BadRequest(400, "a chunk of the request body is not followed by CRLF")

    async def drain(self) -> None:
        async for _ in self.chunks():
            pass


def _split_hostport(value: str, default_port: int) -> tuple[str, int]:
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_s = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    if not port_s:
        port = default_port
    elif port_s.isdigit() and 0 < int(port_s) < 65536:
        port = int(port_s)
    else:
        raise _BadRequest(400, f"bad port in {value[:200]!r}")
    if not host:
        raise _BadRequest(400, f"no host in {value[:200]!r}")
    return host.lower().rstrip("."), port


def _response(status: int, reason: str, body: str, *, close: bool) -> bytes:
    data = (body.rstrip("\n") + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\nConnection: {'close' if close else 'keep-alive'}\r\n"
        "X-Taskcreds-Proxy: 1\r\n\r\n"
    )
    return head.encode() + data


_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


class _Refusal(Exception):
    """An answer the proxy gives itself (never reaching the upstream)."""

    def __init__(self, status: int, result: str, body: str) -> None:
        super().__init__(body)
        self.status, self.result, self.body = status, result, body


# --- the upstream side: a lean keep-alive pool and an HTTP/1.1 response reader ----------------
#
# Why not aiohttp's client: per request it builds a URL, a multidict, a request and a response
# object, a payload writer and a timer task; at 16 KiB that cost more than both TLS legs together
# (bench/proxy.py: 0.34x direct with aiohttp, see docs/proxy.md). A request head here is one
# bytes join, the response head one split, and the body moves in as few writes as it arrived in.

_UPSTREAM_LIMIT = 256 * 1024  # the largest upstream response head; also the read buffer's size
_COALESCE = 64 * 1024  # a body up to this size with a Content-Length is relayed in one write
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# methods whose answer is the request itself (Apache httpd answers TRACE by default): never sent
# with a credential attached
_ECHO_METHODS = frozenset({"TRACE", "TRACK"})


class _UpstreamError(Exception):
    """The upstream broke HTTP/1.1 (or closed without an answer); the message names how, no bytes."""


class _Stale(_UpstreamError):
    """A reused kept-alive connection was closed by the upstream before any answer: safe to retry."""


@dataclass(eq=False)
class _Conn:
    """One upstream connection; back in the pool only when its last response was fully read."""

    key: tuple[str, str, int]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def _unread(conn: _Conn) -> int:
    """Bytes the upstream sent past the response just relayed (asyncio has no public accessor).

    A connection holding any is out of step: reused, its next "response" would be those bytes.
    """
    return len(conn.reader._buffer)  # type: ignore[attr-defined]  # noqa: SLF001


class _UpstreamPool:
    """Kept-alive connections per (scheme, host, port); TLS fully verified against ``ssl_context``."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        resolve: Callable[[str, int], tuple[str, int]] | None,
        connect_timeout: float,
        *,
        max_idle_per_host: int = 16,
        idle_ttl: float = 20.0,
    ) -> None:
        self._ssl = ssl_context
        self._resolve = resolve
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle_per_host
        self._idle_ttl = idle_ttl
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}

    async def get(self, scheme: str, host: str, port: int) -> tuple[_Conn, bool]:
        """A connection to the host and whether it was reused (reused ones may turn out stale)."""
        key = (scheme, host, port)
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self._idle_ttl and not conn.reader.at_eof() and not _unread(conn):
                if not conn.writer.is_closing():
                    return conn, True
            conn.close()
        return await self.open(key), False

    async def open(self, key: tuple[str, str, int]) -> _Conn:
        scheme, host, port = key
        addr, aport = self._resolve(host, port) if self._resolve is not None else (host, port)
        tls = scheme == "https"
        async with asyncio.timeout(self._connect_timeout):
            reader, writer = await asyncio.open_connection(
                addr,
                aport,
                ssl=self._ssl if tls else None,
                server_hostname=host if tls else None,
                ssl_handshake_timeout=self._connect_timeout if tls else None,
                limit=_UPSTREAM_LIMIT,
            )
        return _Conn(key, reader, writer)

    def put(self, conn: _Conn) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self._max_idle or conn.writer.is_closing() or _unread(conn):
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


@dataclass
class _Response:
    """An upstream response head: raw header lines kept as sent, framing decided once."""

    status: int
    reason: bytes
    lines: list[bytes]  # "Name: value" lines, hop-by-hop and framing headers already removed
    length: int | None  # the body's Content-Length (0: no body at all), None: chunked or until EOF
    chunked: bool
    reusable: bool  # the upstream keeps the connection open after this response
    bodiless: bool  # HEAD, 1xx, 204, 304: no body whatever the headers say


def _parse_response(data: bytes, *, head_only: bool) -> _Response:
    lines = data[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise _UpstreamError("the upstream's status line is not HTTP/1.x")
    status = int(code)
    out: list[bytes] = []
    length: int | None = None
    cl_line = b""
    te: list[bytes] = []
    conn_tokens: set[bytes] = set()
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name[-1:] in (b" ", b"\t") or line[:1] in (b" ", b"\t"):
            raise _UpstreamError("the upstream sent a malformed header line")
        lname = name.lower()
        value = value.strip(b" \t")
        if lname == b"content-length":
            if not _DIGITS_B.fullmatch(value) or (length is not None and length != int(value)):
                raise _UpstreamError("the upstream sent a bad Content-Length")
            length, cl_line = int(value), line
            continue  # written again by the relay, once
        if lname == b"transfer-encoding":
            te.extend(t.strip().lower() for t in value.split(b",") if t.strip())
            continue
        if lname == b"connection":
            conn_tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
            continue
        if lname in _HOP_BY_HOP_BYTES:
            continue
        out.append(line)
    if conn_tokens:
        out = [ln for ln in out if ln.partition(b":")[0].lower() not in conn_tokens]
    chunked = bool(te)
    if te and te[-1] != b"chunked":
        raise _UpstreamError("the upstream's Transfer-Encoding does not end in chunked")
    bodiless = head_only or status in _NO_BODY_STATUS or status < 200
    if bodiless:
        if cl_line:
            out.append(cl_line)  # the size of what a GET would get: the agent's to see
        length, chunked = 0, False
    elif chunked:
        length = None  # Transfer-Encoding wins over Content-Length (RFC 9112 6.3)
    reusable = (
        b"close" not in conn_tokens
        and (version == b"HTTP/1.1" or b"keep-alive" in conn_tokens)
        and (length is not None or chunked)
    )
    return _Response(status, reason, out, length, chunked, reusable, bodiless)


# --- the proxy ----------------------------------------------------------------------------------


class _Exchange:
    """What one request turned into, for the log line and the metrics."""

    __slots__ = ("host", "method", "path", "credential", "pattern", "status", "result", "started")

    def __init__(self, host: str, method: str, path: str, status: int = 0, result: str = "forwarded") -> None:
        self.host, self.method, self.path = host, method, path
        self.credential = self.pattern = ""
        self.status, self.result = status, result
        self.started = time.perf_counter()


class EgressProxy:
    """HTTP(S) forward proxy on loopback attaching proxy-delivered credentials (see module doc).

    At most ``max_connections`` agent connections are served at once; one more gets a 503.
    """

    def __init__(
        self,
        routes: Sequence[ProxyRoute],
        view: CredentialView,
        *,
        deny_unmatched: bool,
        ca: PodCA,
        upstream_ssl: ssl.SSLContext | None = None,
        metrics: SidecarMetrics | None = None,
        upstream_resolver: Callable[[str, int], tuple[str, int]] | None = None,
        idle_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        upstream_read_timeout: float = 300.0,
        tunnel_idle_timeout: float = 600.0,
        max_connections: int = 512,
    ) -> None:
        self._routes = tuple(routes)
        self._view = view
        self._deny = deny_unmatched
        self._ca = ca
        self._upstream_ssl = upstream_ssl or ssl.create_default_context()
        self._metrics = metrics
        self._resolve = upstream_resolver
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._read_timeout = upstream_read_timeout
        self._tunnel_idle_timeout = tunnel_idle_timeout
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._pool: _UpstreamPool | None = None
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._durations: dict[str, Any] = {}
        self._deadlines: set[_Deadline] = set()
        self._sweeper: asyncio.Task[None] | None = None
        # deadlines are checked this often: a timeout fires up to one tick late
        self._tick = min(1.0, max(0.02, min(idle_timeout, upstream_read_timeout) / 4))
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    @property
    def routes(self) -> tuple[ProxyRoute, ...]:
        return self._routes

    def update_routes(self, routes: Sequence[ProxyRoute]) -> bool:
        """Use these routes from now on, without restarting the listener; True when they changed.

        A renewal or a new issuance may bring a changed ``proxy`` block (hosts, header) or a new
        proxy-delivered credential mid-task. New connections and the next request on every
        intercepted kept-alive connection use the new routes; open blind tunnels are left alone
        (nothing is attached to them).
        """
        routes = tuple(routes)
        if routes == self._routes:
            return False
        self._routes = routes
        _log.info(
            "egress proxy routes updated",
            extra=fields(
                credentials=[r.credential for r in routes], hosts=sorted({h for r in routes for h in r.hosts})
            ),
        )
        return True

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0 picks a free port) and return the bound port."""
        self._pool = _UpstreamPool(self._upstream_ssl, self._resolve, self._connect_timeout)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        self._server = await asyncio.start_server(self._accept, host, port, limit=MAX_HEAD_BYTES)
        bound = int(self._server.sockets[0].getsockname()[1])
        _log.info(
            "egress proxy listening",
            extra=fields(
                address=f"{host}:{bound}",
                routes=[r.credential for r in self._routes],
                egress="deny" if self._deny else "allow",
            ),
        )
        return bound

    async def close(self) -> None:
        """Stop listening, cut every open connection and tunnel, close upstream connections."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep(self) -> None:
        """Cancel each connection task whose deadline passed (see :class:`_Deadline`)."""
        while True:
            await asyncio.sleep(self._tick)
            now = time.monotonic()
            for dl in [d for d in self._deadlines if d.at <= now]:
                dl.at, dl.fired = math.inf, True
                dl.task.cancel()

    # --- connections ---------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= self._max_connections:
            # each connection holds memory, a file descriptor and maybe an upstream connection: a
            # runaway agent must not take the sidecar (and its renewals) down with it
            writer.write(
                _response(
                    503,
                    "Service Unavailable",
                    f"taskcreds proxy: {self._max_connections} connections are open; retry shortly",
                    close=True,
                )
            )
            self._record(_Exchange(host="", method="", path="", status=503, result="over_limit"))
            await _close(writer)
            return
        self._tasks.add(task)
        deadline = _Deadline(task)
        _DEADLINE.set(deadline)  # this task runs in its own context: no other connection sees it
        self._deadlines.add(deadline)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass  # the agent went away; nothing to answer
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # cut by close(): end normally, as Python 3.11's start_server callback calls
            # task.exception() on its task, which logs an error for every cancelled one
        except Exception:
            _log.exception("egress proxy connection failed")
        finally:
            self._deadlines.discard(deadline)
            self._tasks.discard(task)
            await _close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await _read_head(reader, self._idle_timeout)
        except _BadRequest as exc:
            writer.write(
                _response(
                    exc.status, _REASONS.get(exc.status, "Error"), f"taskcreds proxy: {exc}", close=True
                )
            )
            return
        if head is None:
            return
        if head.method == "CONNECT":
            await self._connect(head, reader, writer)
            return
        # plain HTTP, absolute-form targets; each request names its own host
        while head is not None:
            if not await self._plain_http(head, reader, writer):
                return
            try:
                head = await _read_head(reader, self._idle_timeout)
            except _BadRequest as exc:
                writer.write(
                    _response(
                        exc.status, _REASONS.get(exc.status, "Error"), f"taskcreds proxy: {exc}", close=True
                    )
                )
                return
            if head is not None and head.method == "CONNECT":
                await self._connect(head, reader, writer)
                return

    async def _connect(self, head: _Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ex = _Exchange(host="", method="CONNECT", path="")
        try:
            host, port = _split_hostport(head.target, 443)
        except _BadRequest as exc:
            ex.status, ex.result = exc.status, "bad_request"
            writer.write(_response(exc.status, "Bad Request", f"taskcreds proxy: CONNECT {exc}", close=True))
            self._record(ex)
            return
        ex.host = f"{host}:{port}"
        routes = self._routes
        found = match_route(routes, host)
        if found is None:
            await self._tunnel_or_deny(ex, host, port, reader, writer)
            return
        # intercept: answer, take over the agent's TLS with our leaf, then speak HTTP/1.1 inside
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        try:
            context = self._ca.server_context_for(host)
            await writer.start_tls(context, ssl_handshake_timeout=self._connect_timeout)
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
            # typically: the agent does not trust the pod CA (its CA bundle env is missing)
            _log.warning(
                "agent TLS handshake with the egress proxy failed; does the agent trust the pod CA bundle?",
                extra=fields(host=host, credential=found[0].credential, error=type(exc).__name__),
            )
            return
        authority = host if port == 443 else f"{host}:{port}"
        while True:
            try:
                inner = await _read_head(reader, self._idle_timeout)
            except _BadRequest as exc:
                writer.write(
                    _response(
                        exc.status, _REASONS.get(exc.status, "Error"), f"taskcreds proxy: {exc}", close=True
                    )
                )
                return
            if inner is None:
                return
            if self._routes is not routes:  # updated mid-connection: this request follows the new ones
                routes = self._routes
                found = match_route(routes, host)
            path = inner.target
            if not path.startswith("/"):
                parsed = URL(path, encoded=True) if "://" in path else None
                if parsed is None or parsed.host is None or parsed.host.lower().rstrip(".") != host:
                    writer.write(
                        _response(
                            400,
                            "Bad Request",
                            "taskcreds proxy: inside a tunnel to "
                            f"{authority} the request target must be a path",
                            close=True,
                        )
                    )
                    return
                path = parsed.raw_path_qs or "/"
            keep = await self._exchange(
                inner,
                reader,
                writer,
                scheme="https",
                host=host,
                port=port,
                authority=authority,
                path=path,
                found=found,
            )
            if not keep:
                return

    async def _plain_http(
        self, head: _Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if not head.target.lower().startswith("http://"):
            msg = (
                "taskcreds proxy: this is a forward proxy; send absolute http:// URLs or CONNECT "
                "(set HTTPS_PROXY/HTTP_PROXY to this address)"
            )
            with contextlib.suppress(_BadRequest):
                _Body(reader, head)
            writer.write(_response(400, "Bad Request", msg, close=True))
            self._record(_Exchange(host="", method=head.method, path="", status=400, result="bad_request"))
            return False
        url = URL(head.target, encoded=True)
        if url.host is None:
            writer.write(_response(400, "Bad Request", "taskcreds proxy: the URL names no host", close=True))
            return False
        host = url.host.lower().rstrip(".")
        port = url.port or 80
        authority = host if port == 80 else f"{host}:{port}"
        return await self._exchange(
            head,
            reader,
            writer,
            scheme="http",
            host=host,
            port=port,
            authority=authority,
            path=url.raw_path_qs or "/",
            found=match_route(self._routes, host),
        )

    async def _tunnel_or_deny(
        self, ex: _Exchange, host: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._deny:
            ex.status, ex.result = 403, "denied"
            writer.write(_response(403, "Forbidden", _deny_message(host), close=True))
            self._record(ex)
            return
        try:
            addr, aport = self._resolve(host, port) if self._resolve else (host, port)
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(addr, aport), self._connect_timeout
            )
        except (TimeoutError, OSError) as exc:
            ex.status, ex.result = 502, "upstream_error"
            writer.write(
                _response(
                    502,
                    "Bad Gateway",
                    f"taskcreds proxy: cannot reach {host}:{port} ({type(exc).__name__})",
                    close=True,
                )
            )
            self._record(ex)
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        ex.status, ex.result = 200, "tunneled"
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            await _close(up_writer)
            self._record(ex)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await asyncio.wait_for(src.read(_CHUNK), self._tunnel_idle_timeout)
                if not data:
                    break
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()
        except (TimeoutError, OSError):
            dst.close()

    # --- one request ---------------------------------------------------------------------------
    async def _exchange(
        self,
        head: _Head,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        scheme: str,
        host: str,
        port: int,
        authority: str,
        path: str,
        found: tuple[ProxyRoute, str] | None,
    ) -> bool:
        """Answer one request; True when the agent's connection can carry another one."""
        ex = _Exchange(host=authority, method=head.method, path=path.split("?", 1)[0])
        keep = head.keep_alive
        try:
            body = _Body(reader, head, self._idle_timeout)
        except _BadRequest as exc:
            ex.status, ex.result = exc.status, "bad_request"
            writer.write(
                _response(
                    exc.status, _REASONS.get(exc.status, "Error"), f"taskcreds proxy: {exc}", close=True
                )
            )
            self._record(ex)
            return False
        route = None
        if found is not None:
            route, ex.pattern = found
            ex.credential = route.credential
        try:
            auth = self._authorize(route, scheme, host, ex)
            headers = self._upstream_head(head, route, auth, authority, path, body)
        except _Refusal as refusal:
            ex.status, ex.result = refusal.status, refusal.result
            # an unread body would be taken for the next request: close instead of draining it
            close = not keep or body.present
            writer.write(
                _response(refusal.status, _REASONS.get(refusal.status, "Error"), refusal.body, close=close)
            )
            self._record(ex)
            return not close
        if body.present and "100-continue" in head.tokens("expect"):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            keep = await self._forward(
                head, body, writer, keep, ex, scheme, host, port, authority, path, headers
            )
        except _BadRequest as exc:
            ex.status, ex.result = exc.status, "bad_request"
            writer.write(_response(exc.status, "Bad Request", f"taskcreds proxy: {exc}", close=True))
            keep = False
        except _RelayBroken:
            ex.result, keep = "upstream_error", False
        except ssl.SSLCertVerificationError as exc:
            ex.status, ex.result, keep = 502, "upstream_cert_error", False
            reason = exc.verify_message or type(exc).__name__
            writer.write(
                _response(
                    502,
                    "Bad Gateway",
                    (
                        f"taskcreds proxy: the certificate of {authority} failed verification ({reason}); "
                        "the request was not sent and no credential left the pod"
                    ),
                    close=True,
                )
            )
        except ssl.SSLError as exc:
            ex.status, ex.result, keep = 502, "upstream_cert_error", False
            writer.write(
                _response(
                    502,
                    "Bad Gateway",
                    (
                        f"taskcreds proxy: TLS with {authority} failed ({type(exc).__name__}); "
                        "the request was not sent and no credential left the pod"
                    ),
                    close=True,
                )
            )
        except TimeoutError:
            ex.status, ex.result, keep = 504, "upstream_timeout", False
            writer.write(
                _response(
                    504, "Gateway Timeout", f"taskcreds proxy: {authority} did not answer in time", close=True
                )
            )
        except _UpstreamError as exc:
            ex.status, ex.result, keep = 502, "upstream_error", False
            writer.write(_response(502, "Bad Gateway", f"taskcreds proxy: {authority}: {exc}", close=True))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            ex.status, ex.result, keep = 502, "upstream_error", False
            writer.write(
                _response(
                    502,
                    "Bad Gateway",
                    f"taskcreds proxy: {authority} failed: {type(exc).__name__}",
                    close=True,
                )
            )
        self._record(ex)
        return keep

    async def _forward(
        self,
        head: _Head,
        body: _Body,
        writer: asyncio.StreamWriter,
        keep: bool,
        ex: _Exchange,
        scheme: str,
        host: str,
        port: int,
        authority: str,
        path: str,
        request_head: bytes,
    ) -> bool:
        """Send the request upstream on a pooled connection and relay the answer; True: keep-alive."""
        assert self._pool is not None
        conn, reused = await self._pool.get(scheme, host, port)
        try:
            try:
                resp = await self._send(conn, head, body, request_head, reused)
            except _Stale:
                # the upstream closed an idle connection as we reused it; nothing was answered, and
                # the request has no body: send it once more on a new connection
                conn.close()
                conn = await self._pool.open(conn.key)
                resp = await self._send(conn, head, body, request_head, False)
            ex.status = resp.status
            keep = await self._relay(head, resp, conn.reader, writer, keep) and body.done
        except BaseException:
            conn.close()
            raise
        if resp.reusable and body.done:
            self._pool.put(conn)
        else:
            conn.close()
        return keep

    async def _send(
        self, conn: _Conn, head: _Head, body: _Body, request_head: bytes, reused: bool
    ) -> _Response:
        """Write the request (streaming its body) and read the response head, skipping 1xx."""
        w = conn.writer
        if body.chunked:
            w.write(request_head)
            async for chunk in body.chunks():
                w.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                await w.drain()
            w.write(b"0\r\n\r\n")
        elif body.present:
            w.write(request_head)
            async for chunk in body.chunks():
                w.write(chunk)
                await w.drain()
        else:
            w.write(request_head)
        await w.drain()
        retry = reused and not body.present and head.method in _IDEMPOTENT
        head_only = head.method == "HEAD"
        while True:
            dl = _DEADLINE.get()
            dl.at = time.monotonic() + self._read_timeout
            try:
                data = await conn.reader.readuntil(b"\r\n\r\n")
            except asyncio.CancelledError:
                if dl.expired():
                    raise TimeoutError() from None
                raise
            except asyncio.IncompleteReadError as exc:
                if not exc.partial and retry:
                    raise _Stale("the kept-alive connection was closed") from None
                raise _UpstreamError("the upstream closed the connection without an answer") from None
            except ConnectionResetError:
                if retry:
                    raise _Stale("the kept-alive connection was reset") from None
                raise
            except asyncio.LimitOverrunError:
                raise _UpstreamError(
                    f"the upstream's response head is over {_UPSTREAM_LIMIT} bytes"
                ) from None
            finally:
                dl.at = math.inf
            resp = _parse_response(data, head_only=head_only)
            if resp.status >= 200:
                return resp
            if resp.status == 101:
                raise _UpstreamError("the upstream switched protocols; Upgrade is not proxied")
            retry = False  # an interim answer (100, 103): the real one follows

    def _authorize(self, route: ProxyRoute | None, scheme: str, host: str, ex: _Exchange) -> str | None:
        """The header value to attach (None: attach nothing), or a _Refusal."""
        if route is None:
            if self._deny:
                raise _Refusal(403, "denied", _deny_message(host))
            return None
        if ex.method in _ECHO_METHODS:
            raise _Refusal(
                403,
                "method_refused",
                (
                    f"taskcreds proxy: {ex.method} to {host} is refused: the upstream would echo the "
                    f"request back, credential {route.credential!r} included"
                ),
            )
        if self._view.ended:
            raise _Refusal(
                403,
                "ended",
                (
                    f"taskcreds proxy: the task has ended; credential {route.credential!r} is no longer "
                    f"attached to requests for {host}"
                ),
            )
        if scheme == "http" and not route.allow_http:
            raise _Refusal(
                403,
                "plain_http_refused",
                (
                    f"taskcreds proxy: refusing to send credential {route.credential!r} to {host} over plain "
                    f"HTTP; use https://{host}/ (or set allowHttp on the route)"
                ),
            )
        try:
            value = route.render(self._view)
        except RouteError as exc:
            raise _Refusal(502, "no_credential", f"taskcreds proxy: {exc}") from None
        if value is None:
            raise _Refusal(
                503,
                "no_credential",
                (
                    f"taskcreds proxy: credential {route.credential!r} is not available right now "
                    "(not issued yet, or expired and not yet refreshed); retry shortly"
                ),
            )
        return value

    def _upstream_head(
        self,
        head: _Head,
        route: ProxyRoute | None,
        auth: str | None,
        authority: str,
        path: str,
        body: _Body,
    ) -> bytes:
        """The request head for the upstream: the agent's headers minus hop-by-hop ones and any
        placeholder credential, plus the real one and the body's framing."""
        drop = _DROP if route is None else route.drop
        conn_tokens = head.tokens("connection")
        if conn_tokens:
            drop = drop | conn_tokens
        lines = [f"{head.method} {path} HTTP/1.1", f"Host: {authority}"]
        lines.extend(f"{name}: {value}" for name, value in head.headers if name.lower() not in drop)
        if body.chunked:
            lines.append("Transfer-Encoding: chunked")
        elif body.length or "content-length" in head.index:
            lines.append(f"Content-Length: {body.length}")
        out = "\r\n".join(lines).encode("latin-1") + b"\r\n"
        if route is not None and auth is not None:
            out += route.header_name.encode("ascii") + b": " + auth.encode() + b"\r\n"
        return out + b"\r\n"

    async def _relay(
        self,
        head: _Head,
        resp: _Response,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        keep: bool,
    ) -> bool:
        """Write the upstream's response to the agent, streaming; True when keep-alive holds.

        The head goes out with the first piece of the body, and each piece as it arrived: a
        16 KiB answer usually leaves in one write (one TLS record pair, one send).
        """
        length = resp.length
        no_body = resp.bodiless
        chunk_out = length is None and head.version == "HTTP/1.1"  # framed again for the agent
        if length is None and not chunk_out:
            keep = False  # HTTP/1.0 agent: the body ends when the connection does
        status = (
            b"HTTP/1.1 %d %b" % (resp.status, resp.reason) if resp.reason else b"HTTP/1.1 %d" % resp.status
        )
        lines = [status, *resp.lines]
        if length is not None and not no_body:
            lines.append(b"Content-Length: %d" % length)
        if chunk_out:
            lines.append(b"Transfer-Encoding: chunked")
        lines.append(b"Connection: keep-alive" if keep else b"Connection: close")
        pending = b"\r\n".join(lines) + b"\r\n\r\n"
        if no_body or length == 0:
            writer.write(pending)
            await writer.drain()
            return keep
        if length is not None and length <= _COALESCE:
            # small bodies (most API answers) go out with the head in one write: one TLS flight,
            # one send, one wake-up of the agent; bounded by _COALESCE, so nothing large is held
            pending += await self._read_exactly(reader, length)
            writer.write(pending)
            await writer.drain()
            return keep
        try:
            async for chunk in self._body_pieces(resp, reader):
                if chunk_out:
                    pending += b"%x\r\n%b\r\n" % (len(chunk), chunk)
                else:
                    pending += chunk
                writer.write(pending)
                pending = b""
                await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise _RelayBroken() from exc
        except _UpstreamError as exc:
            raise _RelayBroken() from exc
        if chunk_out:
            pending += b"0\r\n\r\n"
        if pending:
            writer.write(pending)
            await writer.drain()
        return keep

    async def _read_exactly(self, reader: asyncio.StreamReader, n: int) -> bytes:
        """``n`` body bytes, arriving within ``upstream_read_timeout`` of each other (as a whole:
        a small body that trickles for that long is a stuck upstream)."""
        dl = _DEADLINE.get()
        dl.at = time.monotonic() + self._read_timeout
        try:
            return await reader.readexactly(n)
        except asyncio.CancelledError:
            if dl.expired():
                raise _RelayBroken() from None
            raise
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise _RelayBroken() from exc
        finally:
            dl.at = math.inf

    async def _body_pieces(self, resp: _Response, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        """The response body as it arrives (de-chunked), bounded pieces, never the whole body.

        Each read must bring something within ``upstream_read_timeout`` (TimeoutError otherwise).
        """
        dl, timeout = _DEADLINE.get(), self._read_timeout
        try:
            if resp.length is not None:
                remaining = resp.length
                while remaining:
                    dl.at = time.monotonic() + timeout
                    chunk = await reader.read(min(remaining, _UPSTREAM_LIMIT))
                    if not chunk:
                        raise _UpstreamError("the upstream's body ended before its Content-Length")
                    remaining -= len(chunk)
                    dl.at = math.inf
                    yield chunk
            elif resp.chunked:
                while True:
                    dl.at = time.monotonic() + timeout
                    match = _CHUNK_LINE.fullmatch(await reader.readuntil(b"\r\n"))
                    if match is None:
                        raise _UpstreamError("the upstream sent a malformed chunk size")
                    size = int(match[1], 16)
                    if size == 0:
                        while await reader.readuntil(b"\r\n") != b"\r\n":
                            pass  # trailers are dropped
                        return
                    while size:
                        chunk = await reader.read(min(size, _UPSTREAM_LIMIT))
                        if not chunk:
                            raise _UpstreamError("the upstream's body ended inside a chunk")
                        size -= len(chunk)
                        dl.at = math.inf
                        yield chunk
                        dl.at = time.monotonic() + timeout
                    if await reader.readexactly(2) != b"\r\n":
                        raise _UpstreamError("a chunk of the upstream's body is not followed by CRLF")
            else:
                while True:  # delimited by the upstream closing the connection
                    dl.at = time.monotonic() + timeout
                    chunk = await reader.read(_UPSTREAM_LIMIT)
                    if not chunk:
                        return
                    dl.at = math.inf
                    yield chunk
        except asyncio.CancelledError:
            if dl.expired():
                raise TimeoutError() from None
            raise
        finally:
            dl.at = math.inf

    def _record(self, ex: _Exchange) -> None:
        duration = time.perf_counter() - ex.started
        info_line(
            _log,
            "proxied",
            host=ex.host,
            method=ex.method,
            path=ex.path,
            status=ex.status,
            credential=ex.credential or None,
            result=ex.result,
            duration_ms=round(duration * 1000, 2),
        )
        if self._metrics is not None:
            key = (ex.credential, ex.pattern, ex.result)
            counter = self._counters.get(key)
            if counter is None:  # label values are bounded by the routes: the cache is too
                counter = self._counters[key] = self._metrics.proxy_requests.labels(
                    credential=ex.credential, host=ex.pattern, result=ex.result
                )
            counter.inc()
            observe = self._durations.get(ex.credential)
            if observe is None:
                observe = self._durations[ex.credential] = self._metrics.proxy_duration.labels(
                    credential=ex.credential
                ).observe
            observe(duration)


class _RelayBroken(Exception):
    """The upstream failed after the response head went out: the agent's connection must close."""


def _deny_message(host: str) -> str:
    return (
        f"taskcreds proxy: egress to {host} is denied: this pod has annotation "
        f"{names.ANNOTATION_EGRESS}=deny and no proxy route lists {host}"
    )


async def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 1.0)
