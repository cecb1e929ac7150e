"""Request-head parsing, body framing, authorization and the upstream head of the egress proxy:
cases mutation testing found unguarded (tests/sidecar/test_proxy.py covers the common ones).

Each case sends raw bytes to a real :class:`EgressProxy` over plain HTTP (routes that allow it,
so no TLS is needed) in front of a plain loopback upstream that records what reaches it, and
asserts what the agent sees (status, the reason in the body) and what the upstream saw (nothing,
for a refusal; exactly one credential header, for a forwarded request). A refused request that
still reached the upstream, or a head the proxy reads differently from the upstream, is the bug.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from taskcreds.sidecar.podca import PodCA
from taskcreds.sidecar.proxy import EgressProxy, ProxyRoute

TOKEN = "tc-canary-head-0123456789abcdef"
API = "api.test.local"  # Authorization: Bearer, plain HTTP allowed
KEY = "key.test.local"  # X-Api-Key, plain HTTP allowed
STRICT = "strict.test.local"  # HTTPS only (the default)
OPEN = "open.test.local"  # no route

ROUTES = [
    ProxyRoute("api", (API,), header="Authorization: Bearer {token}", allow_http=True),
    ProxyRoute("key", (KEY,), header="X-Api-Key: {token}", allow_http=True),
    ProxyRoute("strict", (STRICT,), header="Authorization: Bearer {token}"),
    ProxyRoute("missing", ("missing.test.local",), header="Authorization: Bearer {token}", allow_http=True),
    ProxyRoute("broken", ("broken.test.local",), header="Authorization: Bearer {token}", allow_http=True),
]


class View:
    """The sidecar's credential store as the proxy sees it."""

    def __init__(self) -> None:
        self.values = {
            ("api", "token"): TOKEN,
            ("key", "token"): TOKEN,
            ("strict", "token"): TOKEN,
            ("broken", "token"): "line one\nline two",
        }
        self.ended = False

    def value(self, credential: str, file: str = "token") -> str | None:
        return self.values.get((credential, file))


@dataclass
class Upstream:
    """A plain HTTP/1.1 server that records each request (head text, body bytes) and answers 200."""

    seen: list[tuple[str, bytes]] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                headers = [line.partition(":") for line in head.split("\r\n")[1:] if line]
                index = {k.strip().lower(): v.strip() for k, _, v in headers}
                if index.get("transfer-encoding") == "chunked":
                    body = b""
                    while size := int((await reader.readline()).strip(), 16):
                        body += await reader.readexactly(size)
                        await reader.readexactly(2)
                    await reader.readexactly(2)
                else:
                    body = await reader.readexactly(int(index.get("content-length", "0")))
                self.seen.append((head, body))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def headers(self, i: int = 0) -> list[tuple[str, str]]:
        """The (lower-case name, value) pairs of request ``i``, in order."""
        lines = self.seen[i][0].split("\r\n")[1:]
        return [(k.strip().lower(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines if ln)]


@dataclass
class Rig:
    upstream: Upstream
    view: View
    proxy: EgressProxy
    port: int

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send raw bytes on a fresh connection; the first response's status and body."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(raw)
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
            length = next(
                int(v) for k, _, v in (ln.partition(":") for ln in head.split("\r\n")) if k.lower() == "content-length"
            )
            body = await asyncio.wait_for(reader.readexactly(length), 5)
            return int(head.split(" ")[1]), body
        finally:
            writer.close()


@pytest.fixture(scope="module")
def pod_ca() -> PodCA:
    return PodCA("agent-pod-head")


async def _rig(pod_ca: PodCA, *, deny: bool) -> AsyncIterator[Rig]:
    upstream = Upstream()
    upstream.server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    up_port = upstream.server.sockets[0].getsockname()[1]
    view = View()
    proxy = EgressProxy(
        ROUTES,
        view,
        deny_unmatched=deny,
        ca=pod_ca,
        upstream_resolver=lambda host, port: ("127.0.0.1", up_port),
        idle_timeout=5,
        connect_timeout=5,
        upstream_read_timeout=5,
    )
    port = await proxy.start()
    try:
        yield Rig(upstream, view, proxy, port)
    finally:
        await proxy.close()
        upstream.server.close()
        await upstream.server.wait_closed()


@pytest.fixture
async def rig(pod_ca: PodCA) -> AsyncIterator[Rig]:
    async for r in _rig(pod_ca, deny=False):
        yield r


@pytest.fixture
async def deny_rig(pod_ca: PodCA) -> AsyncIterator[Rig]:
    async for r in _rig(pod_ca, deny=True):
        yield r


def get(host: str = API, *headers: bytes, method: bytes = b"GET", version: bytes = b"HTTP/1.1") -> bytes:
    """A plain-HTTP proxy request for ``http://host/x`` with ``headers`` (each without CRLF)."""
    lines = [method + b" http://" + host.encode() + b"/x " + version, *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


# --- refused heads: (case, raw request, status, what the answer says) ----------------------------
MANY = [b"X-H%d: v" % i for i in range(129)]
REFUSED = [
    ("method that is not a token", get(API, method=b"G@T"), 400, b"method is not a valid token"),
    ("empty method", b" http://api.test.local/x HTTP/1.1\r\n\r\n", 400, b"method is not a valid token"),
    ("two spaces in the request line", b"GET  http://api.test.local/x HTTP/1.1\r\n\r\n", 400, b"request line"),
    ("four words in the request line", b"GET http://api.test.local/x y HTTP/1.1\r\n\r\n", 400, b"request line"),
    ("non-ASCII in the request line", b"GET http://api.test.local/\xe9 HTTP/1.1\r\n\r\n", 400, b"request line"),
    ("HTTP/1.2", get(API, version=b"HTTP/1.2"), 505, b"not supported"),
    ("lower-case version", get(API, version=b"http/1.1"), 505, b"not supported"),
    ("header line without a colon", get(API, b"X-A v"), 400, b"malformed header name"),
    ("space in a header name", get(API, b"X A: v"), 400, b"malformed header name"),
    ("space before the colon", get(API, b"X-A : v"), 400, b"malformed header name"),
    ("empty header name", get(API, b": v"), 400, b"malformed header name"),
    ("non-token header name", get(API, b"X(A): v"), 400, b"malformed header name"),
    ("tab-folded header line", get(API, b"X-A: v", b"\tw"), 400, b"folded"),
    ("space-folded header line", get(API, b"X-A: v", b" w"), 400, b"folded"),
    ("DEL in a header value", get(API, b"X-A: a\x7fb"), 400, b"control character"),
    ("vertical tab in a header value", get(API, b"X-A: a\x0bb"), 400, b"control character"),
    ("unit separator in a header value", get(API, b"X-A: a\x1fb"), 400, b"control character"),
    ("CR before a CRLF", get(API, b"X-A: a\r"), 400, b"control character"),
    ("129 headers", get(API, *MANY), 431, b"more than 128 request headers"),
    # body framing
    ("Transfer-Encoding gzip", get(API, b"Transfer-Encoding: gzip", method=b"POST"), 501, b"not supported"),
    (
        "Transfer-Encoding gzip, chunked",
        get(API, b"Transfer-Encoding: gzip, chunked", method=b"POST"),
        501,
        b"not supported",
    ),
    (
        "Transfer-Encoding chunked twice",
        get(API, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", method=b"POST"),
        501,
        b"not supported",
    ),
    (
        "chunked and Content-Length",
        get(API, b"Content-Length: 3", b"Transfer-Encoding: chunked", method=b"POST") + b"0\r\n\r\n",
        400,
        b"smuggling",
    ),
    (
        "two different Content-Lengths",
        get(API, b"Content-Length: 3", b"Content-Length: 4", method=b"POST") + b"abcd",
        400,
        b"Content-Length must be one",
    ),
    ("Content-Length +3", get(API, b"Content-Length: +3", method=b"POST") + b"abc", 400, b"Content-Length"),
    ("Content-Length -1", get(API, b"Content-Length: -1", method=b"POST"), 400, b"Content-Length"),
    ("Content-Length 0x3", get(API, b"Content-Length: 0x3", method=b"POST") + b"abc", 400, b"Content-Length"),
    ("empty Content-Length", get(API, b"Content-Length: ", method=b"POST"), 400, b"Content-Length"),
    (
        "19-digit Content-Length",
        get(API, b"Content-Length: 1000000000000000000", method=b"POST"),
        400,
        b"Content-Length",
    ),
]


@pytest.mark.parametrize(("case", "raw", "status", "says"), REFUSED, ids=[c[0] for c in REFUSED])
async def test_malformed_heads_are_refused_and_nothing_is_forwarded(
    rig: Rig, case: str, raw: bytes, status: int, says: bytes
) -> None:
    got, body = await rig.send(raw)
    assert (got, says in body) == (status, True), (case, body)
    assert body.startswith(b"taskcreds proxy: ")
    assert rig.upstream.seen == [], case


# --- accepted heads: (case, raw request, the body the upstream gets) -----------------------------
MAX = [b"X-H%d: v" % i for i in range(128)]
ACCEPTED = [
    ("HTTP/1.0", get(API, version=b"HTTP/1.0"), b""),
    ("128 headers", get(API, *MAX), b""),
    ("tab inside a header value", get(API, b"X-A: a\tb"), b""),
    ("an empty line before the request line (RFC 9112 2.2)", b"\r\n" + get(API), b""),
    ("Chunked in capitals", get(API, b"Transfer-Encoding: Chunked", method=b"POST") + b"3\r\nabc\r\n0\r\n\r\n", b"abc"),
    (
        "the same Content-Length twice",
        get(API, b"Content-Length: 3", b"Content-Length: 3", method=b"POST") + b"abc",
        b"abc",
    ),
    ("Content-Length with spaces around", get(API, b"Content-Length:  3 ", method=b"POST") + b"abc", b"abc"),
    (
        "hex chunk sizes, lower and upper case",
        get(API, b"Transfer-Encoding: chunked", method=b"POST")
        + b"a\r\n0123456789\r\nB\r\nabcdefghijk\r\n0\r\n\r\n",
        b"0123456789abcdefghijk",
    ),
    (
        "chunk extensions and trailers are dropped",
        get(API, b"Transfer-Encoding: chunked", method=b"POST")
        + b"3;name=value\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
        b"abc",
    ),
]


@pytest.mark.parametrize(("case", "raw", "body"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
async def test_well_formed_heads_are_forwarded_with_one_credential(
    rig: Rig, case: str, raw: bytes, body: bytes
) -> None:
    got, answer = await rig.send(raw)
    assert (got, answer) == (200, b"ok"), case
    assert len(rig.upstream.seen) == 1, case
    assert rig.upstream.seen[0][1] == body, case
    auth = [v for k, v in rig.upstream.headers() if k == "authorization"]
    assert auth == [f"Bearer {TOKEN}"], case
    assert "x-trailer" not in dict(rig.upstream.headers()), case


CHUNK_REFUSED = [
    ("chunk longer than its size", b"3\r\nabcd\r\n0\r\n\r\n"),
    ("chunk without its CRLF before EOF", b"3\r\nabc"),
]


@pytest.mark.parametrize(("case", "chunks"), CHUNK_REFUSED, ids=[c[0] for c in CHUNK_REFUSED])
async def test_a_chunk_not_followed_by_crlf_gets_400(rig: Rig, case: str, chunks: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    writer.write(get(API, b"Transfer-Encoding: chunked", method=b"POST") + chunks)
    if chunks.endswith(b"abc"):
        writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 "), (case, answer[:200])
    assert b"not followed by CRLF" in answer, case


# --- who gets the credential: (case, raw request, status, says, the upstream's credential headers) -
HEADERS = ("authorization", "x-api-key")
AUTHORIZE = [
    ("plain HTTP to an HTTPS-only route", get(STRICT), 403, b"over plain HTTP", None),
    ("plain HTTP to a route that allows it", get(API), 200, b"ok", [("authorization", f"Bearer {TOKEN}")]),
    ("TRACE to a route", get(API, method=b"TRACE"), 403, b"echo the request back", None),
    ("credential not issued yet", get("missing.test.local"), 503, b"not available right now", None),
    ("credential with a line break", get("broken.test.local"), 502, b"line break", None),
    (
        "the agent's placeholder is replaced",
        get(API, b"Authorization: Bearer placeholder", b"authorization: Basic x"),
        200,
        b"ok",
        [("authorization", f"Bearer {TOKEN}")],
    ),
    (
        "a key route drops the agent's key and Authorization",
        get(KEY, b"X-Api-Key: fake", b"Authorization: Bearer fake"),
        200,
        b"ok",
        [("x-api-key", TOKEN)],
    ),
    (
        "an unmatched host gets the agent's own header untouched",
        get(OPEN, b"Authorization: Bearer agents-own"),
        200,
        b"ok",
        [("authorization", "Bearer agents-own")],
    ),
]


@pytest.mark.parametrize(
    ("case", "raw", "status", "says", "credential"), AUTHORIZE, ids=[c[0] for c in AUTHORIZE]
)
async def test_the_credential_goes_only_where_and_how_the_route_says(
    rig: Rig, case: str, raw: bytes, status: int, says: bytes, credential: list[tuple[str, str]] | None
) -> None:
    got, body = await rig.send(raw)
    assert (got, says in body) == (status, True), (case, body)
    assert TOKEN.encode() not in body and b"line one" not in body
    if credential is None:
        assert rig.upstream.seen == [], case
    else:
        assert [(k, v) for k, v in rig.upstream.headers() if k in HEADERS] == credential, case


async def test_after_the_task_ends_no_request_carries_the_credential(rig: Rig) -> None:
    rig.view.ended = True
    got, body = await rig.send(get(API))
    assert (got, b"the task has ended" in body) == (403, True), body
    assert rig.upstream.seen == []


async def test_deny_mode_refuses_unmatched_hosts_over_plain_http(deny_rig: Rig) -> None:
    got, body = await deny_rig.send(get(OPEN))
    assert (got, b"egress to open.test.local is denied" in body) == (403, True), body
    assert deny_rig.upstream.seen == []
    assert (await deny_rig.send(get(API)))[0] == 200  # matched hosts still go through


# --- what else the upstream sees: (case, raw request, expected headers subset, absent headers) ----
UPSTREAM_HEAD = [
    (
        "Host is the URL's authority, not the agent's Host",
        get(API, b"Host: evil.example"),
        [("host", API)],
        [],
    ),
    (
        "a port other than 80 stays in Host",
        b"GET http://api.test.local:8080/x HTTP/1.1\r\n\r\n",
        [("host", f"{API}:8080")],
        [],
    ),
    ("header values are trimmed", get(API, b"X-A:   v  "), [("x-a", "v")], []),
    (
        "headers the agent's Connection names are not passed on",
        get(API, b"Connection: x-hop, keep-alive", b"X-Hop: secret", b"X-Keep: 1"),
        [("x-keep", "1")],
        ["x-hop", "connection", "keep-alive"],
    ),
    (
        "proxy headers are not passed on",
        get(API, b"Proxy-Authorization: Basic eA==", b"Proxy-Connection: keep-alive"),
        [],
        ["proxy-authorization", "proxy-connection"],
    ),
    (
        "an empty body keeps its Content-Length: 0",
        get(API, b"Content-Length: 0", method=b"POST"),
        [("content-length", "0")],
        ["transfer-encoding"],
    ),
    ("a request without a body gets no framing", get(API), [], ["content-length", "transfer-encoding"]),
    (
        "a chunked body is sent chunked, without a Content-Length",
        get(API, b"Transfer-Encoding: chunked", method=b"POST") + b"1\r\nx\r\n0\r\n\r\n",
        [("transfer-encoding", "chunked")],
        ["content-length"],
    ),
]


@pytest.mark.parametrize(
    ("case", "raw", "present", "absent"), UPSTREAM_HEAD, ids=[c[0] for c in UPSTREAM_HEAD]
)
async def test_the_upstream_head(
    rig: Rig, case: str, raw: bytes, present: list[tuple[str, str]], absent: list[str]
) -> None:
    assert (await rig.send(raw))[0] == 200, case
    headers = rig.upstream.headers()
    names_seen = [k for k, _ in headers]
    for k, v in present:
        assert [hv for hk, hv in headers if hk == k] == [v], (case, headers)
    for k in absent:
        assert k not in names_seen, (case, headers)
    assert rig.upstream.seen[0][0].startswith("GET /x HTTP/1.1\r\n") or raw.startswith(b"POST"), case


# --- CONNECT targets (deny mode, no route: a parsed target gets the 403 naming its host) -----------
CONNECT = [
    ("host and port", b"open.test.local:443", 403, b"egress to open.test.local is denied"),
    ("no port: 443", b"open.test.local", 403, b"egress to open.test.local is denied"),
    ("upper case and root dot", b"OPEN.test.local.:443", 403, b"egress to open.test.local is denied"),
    ("highest port", b"open.test.local:65535", 403, b"egress to open.test.local is denied"),
    ("lowest port", b"open.test.local:1", 403, b"egress to open.test.local is denied"),
    ("bracketed IPv6 with port", b"[::1]:8443", 403, b"egress to ::1 is denied"),
    ("bracketed IPv6 without port", b"[::1]", 403, b"egress to ::1 is denied"),
    ("port 0", b"open.test.local:0", 400, b"bad port"),
    ("port 65536", b"open.test.local:65536", 400, b"bad port"),
    ("negative port", b"open.test.local:-1", 400, b"bad port"),
    ("port with letters", b"open.test.local:44x", 400, b"bad port"),
    ("no host", b":443", 400, b"no host"),
    ("empty brackets", b"[]:443", 400, b"no host"),
]


@pytest.mark.parametrize(("case", "target", "status", "says"), CONNECT, ids=[c[0] for c in CONNECT])
async def test_connect_targets(deny_rig: Rig, case: str, target: bytes, status: int, says: bytes) -> None:
    got, body = await deny_rig.send(b"CONNECT " + target + b" HTTP/1.1\r\n\r\n")
    assert (got, says in body) == (status, True), (case, body)


async def test_a_chunked_body_with_trailers_leaves_the_connection_in_step(rig: Rig) -> None:
    # the trailers are read and dropped: left in the stream they would be taken for the next request
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
    try:
        writer.write(
            get(API, b"Transfer-Encoding: chunked", method=b"POST") + b"3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        writer.write(get(API))
        answers = []
        for _ in range(2):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            answers.append((head.split(b" ")[1], await asyncio.wait_for(reader.readexactly(2), 5)))
    finally:
        writer.close()
    assert answers == [(b"200", b"ok"), (b"200", b"ok")]
    assert [body for _, body in rig.upstream.seen] == [b"abc", b""]
