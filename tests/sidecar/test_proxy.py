"""The egress proxy with real clients (git, curl, urllib, node) against real HTTPS upstreams.

Every success case first shows the same request without the proxy getting 401: the request
succeeds only because the proxy attached the credential, which the client never had.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import secrets
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from taskcreds.sidecar.podca import PodCA, write_ca_bundle
from taskcreds.sidecar.proxy import EgressProxy, ProxyMetrics, ProxyRoute, register_proxy

from taskcreds import names
from tests.fakes.git_server import ApiServer, GitServer, TestCA, make_bare_repo

API_HOST = "api.test.local"
GIT_HOST = "git.test.local"
EVIL_HOST = "evil.test.local"  # certificate from a CA the proxy does not trust
MISMATCH_HOST = "mismatch.test.local"  # trusted CA, but the certificate names another host
OPEN_HOST = "open.test.local"  # no route: tunneled or denied


class StoreView:
    """A CredentialView over a dict, as the sidecar's store will be: tests rotate and end it."""

    def __init__(self, values: dict[tuple[str, str], str]) -> None:
        self.values = dict(values)
        self.ended = False

    def value(self, credential: str, file: str = "token") -> str | None:
        return self.values.get((credential, file))


@dataclass
class World:
    """Upstreams, the pod CA, its bundle, and a factory for proxies; everything torn down after."""

    token: str
    ca: TestCA
    api: ApiServer
    git: GitServer
    evil: ApiServer
    mismatch: ApiServer
    pod_ca: PodCA
    bundle: Path
    upstream_ca_file: Path
    tmp: Path
    ports: dict[str, int] = field(default_factory=dict)
    proxies: list[EgressProxy] = field(default_factory=list)

    def resolve(self, host: str, port: int) -> tuple[str, int]:
        """Map test hostnames (any port) onto the loopback servers; others do not exist."""
        if host in self.ports:
            return "127.0.0.1", self.ports[host]
        raise OSError(f"unknown host {host}")

    async def proxy(
        self,
        routes: list[ProxyRoute] | None = None,
        *,
        deny: bool = False,
        view: StoreView | None = None,
        metrics: ProxyMetrics | None = None,
        **settings: float,
    ) -> tuple[int, StoreView]:
        view = view or StoreView({("api", "token"): self.token, ("github", "token"): self.token})
        proxy = EgressProxy(
            DEFAULT_ROUTES if routes is None else routes,
            view,
            deny_unmatched=deny,
            ca=self.pod_ca,
            upstream_ssl=self.ca.client_context(),
            metrics=metrics,
            upstream_resolver=self.resolve,
            **settings,  # type: ignore[arg-type]
        )
        self.proxies.append(proxy)
        return await proxy.start(), view


DEFAULT_ROUTES = [
    ProxyRoute("api", (API_HOST, EVIL_HOST, MISMATCH_HOST), header="Authorization: Bearer {token}"),
    ProxyRoute("github", (GIT_HOST,), header=None, basic_username="x-access-token"),
]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    token = "tc-canary-" + secrets.token_hex(16)
    ca = TestCA()
    (tmp_path / "repos").mkdir()
    make_bare_repo(tmp_path / "repos")
    api = await ApiServer(ca, token, (API_HOST, "127.0.0.1")).start()
    git = await GitServer(ca, token, tmp_path / "repos", (GIT_HOST, "127.0.0.1")).start()
    evil = await ApiServer(TestCA("someone else's CA"), token, (EVIL_HOST,)).start()
    mismatch = await ApiServer(ca, token, ("not-" + MISMATCH_HOST,)).start()
    open_ = await ApiServer(ca, "open-token-not-ours", (OPEN_HOST,)).start()
    pod_ca = PodCA("agent-pod-1")
    (tmp_path / "shared").mkdir()
    w = World(
        token=token,
        ca=ca,
        api=api,
        git=git,
        evil=evil,
        mismatch=mismatch,
        pod_ca=pod_ca,
        bundle=write_ca_bundle(tmp_path / "shared", pod_ca),
        upstream_ca_file=ca.write_pem(tmp_path),
        tmp=tmp_path,
    )
    w.ports = {
        API_HOST: api.port,
        GIT_HOST: git.port,
        EVIL_HOST: evil.port,
        MISMATCH_HOST: mismatch.port,
        OPEN_HOST: open_.port,
    }
    w.open = open_  # type: ignore[attr-defined]
    try:
        yield w
    finally:
        for p in w.proxies:
            await p.close()
        for s in (api, git, evil, mismatch, open_):
            await s.stop()


def agent_env(w: World, proxy_port: int | None, **extra: str) -> dict[str, str]:
    """What the webhook gives the agent container: proxy and CA env, paths only, no credential."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(w.tmp / "home"),
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
    }
    (w.tmp / "home").mkdir(exist_ok=True)
    if proxy_port is not None:
        proxy = f"http://127.0.0.1:{proxy_port}"
        env |= {
            "HTTPS_PROXY": proxy,
            "HTTP_PROXY": proxy,
            "https_proxy": proxy,
            "http_proxy": proxy,
            "NO_PROXY": "localhost",
            "SSL_CERT_FILE": str(w.bundle),
            "REQUESTS_CA_BUNDLE": str(w.bundle),
            "NODE_EXTRA_CA_CERTS": str(w.bundle),
            "GIT_SSL_CAINFO": str(w.bundle),
            "CURL_CA_BUNDLE": str(w.bundle),
        }
    env |= extra
    assert all(w.token not in v for v in env.values()), "the agent's environment must not hold the token"
    return env


async def run(
    *argv: str, env: dict[str, str], cwd: Path | None = None, limit: float = 30.0
) -> tuple[int, str]:
    """Run a client to completion on a thread: the same spawn on either event loop (uvloop's own
    fork-based spawn can crash its child in a process that has gRPC's fork handlers loaded)."""
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=limit,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{argv[0]} did not finish in {limit} s") from None
    return done.returncode, done.stdout.decode(errors="replace")


def urllib_get(
    url: str,
    *,
    proxy_port: int | None,
    cafile: Path,
    headers: dict[str, str] | None = None,
    data: Any = None,
    method: str = "GET",
) -> tuple[int, bytes]:
    handlers: list[Any] = [
        urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(cafile)))
    ]
    proxies = (
        {"https": f"http://127.0.0.1:{proxy_port}", "http": f"http://127.0.0.1:{proxy_port}"}
        if proxy_port
        else {}
    )
    handlers.append(urllib.request.ProxyHandler(proxies))
    opener = urllib.request.build_opener(*handlers)
    try:
        request = urllib.request.Request(url, headers=headers or {}, data=data, method=method)  # noqa: S310
        with opener.open(request, timeout=20) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --- git over HTTPS -------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
async def test_git_clone_and_push_work_only_through_the_proxy(world: World) -> None:
    w = world
    direct = agent_env(w, None, GIT_SSL_CAINFO=str(w.upstream_ca_file))
    rc, out = await run(
        "git",
        "-c",
        f"http.curloptResolve={GIT_HOST}:{w.git.port}:127.0.0.1",
        "clone",
        f"https://{GIT_HOST}:{w.git.port}/repo.git",
        str(w.tmp / "direct"),
        env=direct,
    )
    assert rc != 0 and ("terminal prompts disabled" in out or "401" in out or "Authentication" in out), out
    assert not w.git.saw_token

    port, _ = await w.proxy()
    env = agent_env(w, port)
    work = w.tmp / "clone"
    rc, out = await run("git", "clone", f"https://{GIT_HOST}/repo.git", str(work), env=env)
    assert rc == 0, out
    assert (work / "README.md").read_text() == "hello from the test upstream\n"

    # a commit with a sizeable file, pushed back: receive-pack through the proxy
    (work / "data.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    ident = {
        "GIT_AUTHOR_NAME": "agent",
        "GIT_AUTHOR_EMAIL": "a@example.com",
        "GIT_COMMITTER_NAME": "agent",
        "GIT_COMMITTER_EMAIL": "a@example.com",
    }
    assert (await run("git", "add", "data.bin", env=env | ident, cwd=work))[0] == 0
    assert (await run("git", "commit", "-q", "-m", "agent work", env=env | ident, cwd=work))[0] == 0
    rc, out = await run("git", "push", "origin", "HEAD:refs/heads/agent", env=env | ident, cwd=work)
    assert rc == 0, out
    rc, out = await run(
        "git", "--git-dir", str(w.tmp / "repos" / "repo.git"), "log", "--format=%s", "agent", env=env
    )
    assert out.strip().splitlines()[0] == "agent work"

    # the agent never held the token: not in its env, its repo, its git config or its home
    assert w.git.saw_token
    for root in (work, w.tmp / "home"):
        for path in root.rglob("*"):
            if path.is_file():
                assert w.token.encode() not in path.read_bytes(), f"token found in {path}"
    rc, config = await run("git", "config", "--list", "--show-origin", env=env, cwd=work)
    assert w.token not in config and "credential" not in config


# --- curl, urllib, node against a bearer-token API ------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_gets_the_api_only_through_the_proxy(world: World) -> None:
    w = world
    rc, out = await run(
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--cacert",
        str(w.upstream_ca_file),
        "--resolve",
        f"{API_HOST}:{w.api.port}:127.0.0.1",
        f"https://{API_HOST}:{w.api.port}/api/whoami",
        env=agent_env(w, None),
    )
    assert out == "401"
    port, _ = await w.proxy()
    rc, out = await run("curl", "-sS", f"https://{API_HOST}/api/whoami?x=1", env=agent_env(w, port))
    assert rc == 0 and json.loads(out) == {"login": "agent-bot", "path_qs": "/api/whoami?x=1"}, out
    assert w.api.seen_auth[-1] == f"Bearer {w.token}"


async def test_urllib_gets_the_api_only_through_the_proxy(world: World) -> None:
    w = world
    status, _ = await asyncio.to_thread(
        urllib_get, f"https://127.0.0.1:{w.api.port}/api/whoami", proxy_port=None, cafile=w.upstream_ca_file
    )
    assert status == 401
    port, _ = await w.proxy()
    status, body = await asyncio.to_thread(
        urllib_get, f"https://{API_HOST}/api/whoami", proxy_port=port, cafile=w.bundle
    )
    assert status == 200 and json.loads(body)["login"] == "agent-bot"


NODE_CLIENT = r"""
// node's https ignores HTTPS_PROXY: open the CONNECT tunnel ourselves, then TLS over it
const http = require('http'), https = require('https'), tls = require('tls');
const [proxyPort, host, path] = process.argv.slice(1);
const req = http.request({host: '127.0.0.1', port: proxyPort, method: 'CONNECT', path: host + ':443'});
req.on('connect', (res, socket) => {
  if (res.statusCode !== 200) { console.log(JSON.stringify({status: res.statusCode})); return; }
  const r = https.request({host, path, servername: host,
                           createConnection: () => tls.connect({socket, servername: host})}, (resp) => {
    let body = ''; resp.on('data', (d) => body += d);
    resp.on('end', () => console.log(JSON.stringify({status: resp.statusCode, body})));
  });
  r.on('error', (e) => console.log(JSON.stringify({error: e.code || e.message})));
  r.end();
});
req.on('error', (e) => console.log(JSON.stringify({error: e.code || e.message})));
req.end();
"""

NODE_DIRECT = r"""
const https = require('https');
https.get({host: '127.0.0.1', port: process.argv[1], path: '/api/whoami', servername: 'api.test.local'},
  (resp) => { console.log(JSON.stringify({status: resp.statusCode})); resp.resume(); })
  .on('error', (e) => console.log(JSON.stringify({error: e.code || e.message})));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
async def test_node_https_gets_the_api_only_through_the_proxy(world: World) -> None:
    w = world
    direct = agent_env(w, None, NODE_EXTRA_CA_CERTS=str(w.upstream_ca_file))
    rc, out = await run("node", "-e", NODE_DIRECT, str(w.api.port), env=direct)
    assert json.loads(out) == {"status": 401}, out
    port, _ = await w.proxy()
    rc, out = await run("node", "-e", NODE_CLIENT, str(port), API_HOST, "/api/whoami", env=agent_env(w, port))
    result = json.loads(out)
    assert result["status"] == 200 and json.loads(result["body"])["login"] == "agent-bot", out


async def test_httpx_gets_the_api_only_through_the_proxy(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    httpx = pytest.importorskip("httpx", reason="httpx is in the test extra: pip install -e .[test]")
    w = world
    direct_tls = ssl.create_default_context(cafile=str(w.upstream_ca_file))
    async with httpx.AsyncClient(verify=direct_tls, trust_env=False) as client:
        assert (await client.get(f"https://127.0.0.1:{w.api.port}/api/whoami")).status_code == 401
    port, _ = await w.proxy()
    # the way the webhook configures it: the lower-case variable only, read from the environment
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
    pod_tls = ssl.create_default_context(cafile=str(w.bundle))
    async with httpx.AsyncClient(verify=pod_tls) as client:
        first = await client.get(f"https://{API_HOST}/api/whoami?n=1")
        second = await client.get(f"https://{API_HOST}/api/whoami?n=2")  # same kept-alive tunnel
    assert [r.status_code for r in (first, second)] == [200, 200]
    assert [r.json() for r in (first, second)] == [
        {"login": "agent-bot", "path_qs": "/api/whoami?n=1"},
        {"login": "agent-bot", "path_qs": "/api/whoami?n=2"},
    ]


# --- what the proxy attaches, strips and streams --------------------------------------------


async def test_placeholders_the_agent_sent_are_replaced_and_proxy_headers_dropped(world: World) -> None:
    w = world
    port, _ = await w.proxy()
    status, body = await asyncio.to_thread(
        urllib_get,
        f"https://{API_HOST}/api/headers",
        proxy_port=port,
        cafile=w.bundle,
        headers={
            "Authorization": "Bearer PLACEHOLDER",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-Agent": "1",
        },
    )
    assert status == 200
    got = json.loads(body)["names"]
    assert "proxy-authorization" not in got and "x-agent" in got
    assert w.api.seen_auth[-1] == f"Bearer {w.token}"  # one Authorization, ours


async def test_hop_by_hop_response_headers_stay_with_the_proxy(world: World) -> None:
    port, _ = await world.proxy()
    conn = await AgentConnection.open(port, API_HOST, world.bundle)
    try:
        status, headers, body = await conn.get("/api/hop-by-hop")
        assert status == 200 and body == b"ok" and headers["x-end"] == "1"
        assert "x-hop" not in headers and "keep-alive" not in headers
        assert headers["connection"] == "keep-alive"
        assert (await conn.get("/api/whoami"))[0] == 200  # the connection is still usable
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "route",
    [
        pytest.param(ProxyRoute("api", (API_HOST,), header="X-Api-Key: {token}"), id="custom header"),
        pytest.param(
            ProxyRoute("api", ("*.test.local",), header="Authorization: Bearer {token}"), id="wildcard host"
        ),
    ],
)
async def test_route_shapes_attach_the_credential(world: World, route: ProxyRoute) -> None:
    port, _ = await world.proxy([route])
    status, _ = await asyncio.to_thread(
        urllib_get, f"https://{API_HOST}/api/whoami", proxy_port=port, cafile=world.bundle
    )
    assert status == 200


async def test_large_bodies_stream_both_ways(world: World) -> None:
    w = world
    port, _ = await w.proxy()
    payload = os.urandom(5 * 1024 * 1024)

    def blocks() -> Iterator[bytes]:  # an iterable body: urllib sends it chunked
        for i in range(0, len(payload), 256 * 1024):
            yield payload[i : i + 256 * 1024]

    status, body = await asyncio.to_thread(
        urllib_get,
        f"https://{API_HOST}/api/upload",
        proxy_port=port,
        cafile=w.bundle,
        data=blocks(),
        method="POST",
    )
    assert status == 200
    assert json.loads(body) == {
        "received": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "chunked": True,
    }
    status, body = await asyncio.to_thread(
        urllib_get,
        f"https://{API_HOST}/api/upload",
        proxy_port=port,
        cafile=w.bundle,
        data=payload[:100_000],
        method="POST",
    )
    assert json.loads(body)["received"] == 100_000 and json.loads(body)["chunked"] is False
    for path, size in (("/api/stream/4000000", 4_000_000), ("/api/bytes/3000000", 3_000_000)):
        status, body = await asyncio.to_thread(
            urllib_get, f"https://{API_HOST}{path}", proxy_port=port, cafile=w.bundle
        )
        assert status == 200 and len(body) == size


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host,reason",
    [
        pytest.param(EVIL_HOST, "unable to get local issuer certificate", id="untrusted CA"),
        pytest.param(MISMATCH_HOST, "Hostname mismatch", id="name mismatch"),
    ],
)
async def test_a_wrong_upstream_certificate_gets_502_and_no_credential(
    world: World, host: str, reason: str
) -> None:
    port, _ = await world.proxy()
    status, body = await asyncio.to_thread(
        urllib_get, f"https://{host}/api/whoami", proxy_port=port, cafile=world.bundle
    )
    assert status == 502
    text = body.decode()
    assert f"the certificate of {host} failed verification" in text and reason in text, text
    assert "no credential left the pod" in text
    server = world.evil if host == EVIL_HOST else world.mismatch
    assert server.seen_auth == []  # the upstream never got a request, let alone the token


async def test_deny_by_default_refuses_unmatched_hosts_with_403(world: World) -> None:
    port, _ = await world.proxy(deny=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT {OPEN_HOST}:443 HTTP/1.1\r\nHost: {OPEN_HOST}:443\r\n\r\n".encode())
    response = (await reader.read()).decode()
    writer.close()
    assert response.startswith("HTTP/1.1 403 ")
    assert OPEN_HOST in response and f"{names.ANNOTATION_EGRESS}=deny" in response
    # plain http too, and matched hosts keep working
    status, body = await asyncio.to_thread(
        urllib_get, f"http://{OPEN_HOST}/", proxy_port=port, cafile=world.bundle
    )
    assert status == 403 and OPEN_HOST in body.decode()
    status, _ = await asyncio.to_thread(
        urllib_get, f"https://{API_HOST}/api/whoami", proxy_port=port, cafile=world.bundle
    )
    assert status == 200
    assert world.open.seen_auth == []  # type: ignore[attr-defined]


async def test_allow_mode_tunnels_unmatched_hosts_untouched(world: World) -> None:
    """End-to-end TLS of the upstream: the agent sees the upstream's own certificate, and nothing is added."""
    port, _ = await world.proxy(deny=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT {OPEN_HOST}:443 HTTP/1.1\r\nHost: {OPEN_HOST}:443\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    # trust only the upstream's CA: the pod CA is not in play for unmatched hosts
    await writer.start_tls(
        ssl.create_default_context(cafile=str(world.upstream_ca_file)), server_hostname=OPEN_HOST
    )
    peer = writer.get_extra_info("ssl_object").getpeercert()
    assert dict(x[0] for x in peer["issuer"])["commonName"] == "taskcreds upstream test CA"
    writer.write(f"GET /api/whoami HTTP/1.1\r\nHost: {OPEN_HOST}\r\nConnection: close\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 401")
    assert world.open.seen_auth == [None]  # type: ignore[attr-defined]


async def test_plain_http_to_a_matched_host_is_refused_unless_the_route_allows_it(world: World) -> None:
    w = world
    plain = await ApiServer(w.ca, w.token, (API_HOST,)).start(tls=False)
    try:
        w.ports["plain.test.local"] = plain.port
        strict = ProxyRoute("api", ("plain.test.local",), header="Authorization: Bearer {token}")
        port, _ = await w.proxy([strict])
        status, body = await asyncio.to_thread(
            urllib_get, "http://plain.test.local/api/whoami", proxy_port=port, cafile=w.bundle
        )
        assert status == 403 and "over plain HTTP" in body.decode() and plain.seen_auth == []
        lax = ProxyRoute(
            "api", ("plain.test.local",), header="Authorization: Bearer {token}", allow_http=True
        )
        port, _ = await w.proxy([lax])
        status, _ = await asyncio.to_thread(
            urllib_get, "http://plain.test.local/api/whoami", proxy_port=port, cafile=w.bundle
        )
        assert status == 200 and plain.seen_auth == [f"Bearer {w.token}"]
    finally:
        await plain.stop()


# --- the credential's life: rotation, absence, teardown --------------------------------------


class AgentConnection:
    """One kept-alive HTTPS connection through the proxy, as an agent's HTTP client holds it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, proxy_port: int, host: str, cafile: Path) -> AgentConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        writer.write(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        await writer.start_tls(ssl.create_default_context(cafile=str(cafile)), server_hostname=host)
        return cls(reader, writer)

    async def get(
        self, path: str, host: str = API_HOST, method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        else:
            body = b""
            while (size := int((await self.reader.readline()).strip(), 16)) > 0:
                body += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
            await self.reader.readexactly(2)
        return status, headers, body

    async def close(self) -> None:
        self.writer.close()


async def test_rotation_and_teardown_on_one_kept_alive_connection(world: World) -> None:
    w = world
    port, view = await w.proxy()
    conn = await AgentConnection.open(port, API_HOST, w.bundle)
    try:
        assert (await conn.get("/api/whoami"))[0] == 200
        # rotation: the store holds a new value and the upstream accepts only the new one
        w.api.token = view.values[("api", "token")] = "tc-canary-rotated-" + secrets.token_hex(8)
        assert (await conn.get("/api/whoami"))[0] == 200
        assert w.api.seen_auth[-1] == f"Bearer {w.api.token}"
        # expired and not yet refreshed: 503, nothing forwarded
        del view.values[("api", "token")]
        status, _, body = await conn.get("/api/whoami")
        assert status == 503 and b"not available right now" in body
        view.values[("api", "token")] = w.api.token
        # teardown: 403 saying why, on the same connection, and nothing reaches the upstream
        seen = len(w.api.seen_auth)
        view.ended = True
        status, headers, body = await conn.get("/api/whoami")
        assert status == 403 and b"the task has ended" in body and headers["connection"] == "keep-alive"
        assert len(w.api.seen_auth) == seen
    finally:
        await conn.close()
    conn = await AgentConnection.open(port, API_HOST, w.bundle)  # new connections too
    try:
        assert (await conn.get("/api/whoami"))[0] == 403
    finally:
        await conn.close()


# --- logs and metrics never hold the value --------------------------------------------------


async def test_logs_and_metrics_never_hold_the_value(world: World, caplog: pytest.LogCaptureFixture) -> None:
    w = world
    caplog.set_level("DEBUG")
    metrics = register_proxy()
    port, view = await w.proxy(deny=True, metrics=metrics)
    await asyncio.to_thread(urllib_get, f"https://{EVIL_HOST}/", proxy_port=port, cafile=w.bundle)
    conn = await AgentConnection.open(port, API_HOST, w.bundle)
    try:
        for _ in range(3):
            assert (await conn.get(f"/api/whoami?token={w.token}"))[0] == 200  # the query is not logged
        view.ended = True
        assert (await conn.get("/api/whoami"))[0] == 403
    finally:
        await conn.close()
    with pytest.raises(urllib.error.URLError, match="Tunnel connection failed: 403"):
        await asyncio.to_thread(urllib_get, f"https://{OPEN_HOST}/", proxy_port=port, cafile=w.bundle)

    basic = base64.b64encode(f"x:{w.token}".encode()).decode()
    records = [r for r in caplog.records if r.name.startswith("taskcreds")]
    assert records
    for record in caplog.records:
        text = record.getMessage() + json.dumps(getattr(record, "fields", {}), default=str)
        assert w.token not in text and basic not in text
    proxied = [r.fields for r in records if r.getMessage() == "proxied"]  # type: ignore[attr-defined]
    assert {
        "host": API_HOST,
        "method": "GET",
        "path": "/api/whoami",
        "status": 200,
        "credential": "api",
        "result": "forwarded",
    }.items() <= proxied[1].items()
    assert proxied[0]["result"] == "upstream_cert_error" and proxied[0]["host"] == EVIL_HOST

    exposition = generate_latest(metrics.registry).decode()
    assert w.token not in exposition

    def count(**labels: str) -> float:
        return metrics.registry.get_sample_value("taskcreds_sidecar_proxy_requests_total", labels) or 0.0

    assert count(credential="api", host=API_HOST, result="forwarded") == 3
    assert count(credential="api", host=API_HOST, result="ended") == 1
    assert count(credential="api", host=EVIL_HOST, result="upstream_cert_error") == 1
    assert count(credential="", host="", result="denied") == 1
    assert (
        metrics.registry.get_sample_value(
            "taskcreds_sidecar_proxy_request_duration_seconds_count", {"credential": "api"}
        )
        == 5
    )


# --- malformed input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes,status",
    [
        pytest.param(b"GET /api/whoami HTTP/1.1\r\nHost: x\r\n\r\n", 400, id="origin-form to the proxy"),
        pytest.param(b"CONNECT api.test.local:99999 HTTP/1.1\r\n\r\n", 400, id="bad CONNECT port"),
        pytest.param(b"GET http://a/ HTTP/2.0\r\n\r\n", 505, id="unsupported version"),
        pytest.param(
            b"GET http://a/ HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431, id="oversized head"
        ),
        pytest.param(b"GET http://a/ HTTP/1.1\r\n folded\r\n\r\n", 400, id="folded header"),
    ],
)
async def test_malformed_requests_get_a_clear_4xx(world: World, request_bytes: bytes, status: int) -> None:
    port, _ = await world.proxy()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes)
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert response.startswith(f"HTTP/1.1 {status} ".encode()), response[:200]
    assert b"taskcreds proxy:" in response


async def test_smuggling_shapes_are_refused_before_anything_is_forwarded(world: World) -> None:
    port, _ = await world.proxy()
    conn = await AgentConnection.open(port, API_HOST, world.bundle)
    conn.writer.write(
        b"POST /api/upload HTTP/1.1\r\nHost: api.test.local\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    response = await conn.reader.read()
    await conn.close()
    assert response.startswith(b"HTTP/1.1 400") and b"smuggling" in response
    assert world.api.seen_auth == []


# Requests inside an intercepted tunnel that an upstream could read differently from the proxy
# (a second request hidden in a header, whose body would be the credential header the proxy
# appends), or that would make the proxy buffer without bound: a 400 naming why, and nothing
# forwarded with the credential. (case, bytes after the request line, what the 400 says)
IN_TUNNEL_MALFORMED = [
    (
        "bare LF in a header value hides a second request",
        b"GET /api/whoami HTTP/1.1\r\nHost: api.test.local\r\nX-A: x\n\nPOST /echo HTTP/1.1\nContent-Length: 60\n"
        b"\r\n\r\n",
        b"control character",
    ),
    ("bare CR in a header value", b"GET /api/whoami HTTP/1.1\r\nX-A: x\ry\r\n\r\n", b"control character"),
    ("NUL in a header value", b"GET /api/whoami HTTP/1.1\r\nX-A: x\x00y\r\n\r\n", b"control character"),
    ("bare LF in the request target", b"GET /a\nX-Inj:1 HTTP/1.1\r\n\r\n", b"control character"),
    ("TAB in the request target", b"GET /a\tb HTTP/1.1\r\n\r\n", b"visible ASCII"),
    (
        "non-ASCII digit as Content-Length",
        "POST /api/upload HTTP/1.1\r\nContent-Length: \u00b2\r\n\r\n".encode("latin-1"),
        b"Content-Length",
    ),
    (
        "Content-Length of 5000 digits",
        b"POST /api/upload HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
        b"Content-Length",
    ),
]
CHUNKED = b"POST /api/upload HTTP/1.1\r\nHost: api.test.local\r\nTransfer-Encoding: chunked\r\n\r\n"
IN_TUNNEL_MALFORMED += [
    (f"chunk size {size!r}", CHUNKED + size + b"\r\n" + b"x" * 64, b"malformed chunk size")
    for size in (b"-1", b"0x10", b"+10", b"1_0", b"")
]
IN_TUNNEL_MALFORMED.append(("chunk-size line over 64 KiB", CHUNKED + b"1" * 70_000, b"over 65536 bytes"))


@pytest.mark.parametrize(
    ("case", "request_bytes", "says"), IN_TUNNEL_MALFORMED, ids=[c[0] for c in IN_TUNNEL_MALFORMED]
)
async def test_requests_an_upstream_could_read_differently_get_400(
    world: World, case: str, request_bytes: bytes, says: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    port, _ = await world.proxy()
    conn = await AgentConnection.open(port, API_HOST, world.bundle)
    conn.writer.write(request_bytes)
    response = await asyncio.wait_for(conn.reader.read(), 5)
    await conn.close()
    assert response.startswith(b"HTTP/1.1 400 ") and says in response, response[:300]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("taskcreds")]
    assert errors == []  # a clear answer, no traceback
    if b"chunked" not in request_bytes:  # a chunked head goes upstream before its body is read
        assert world.api.seen_auth == []


@pytest.mark.parametrize("method", ["TRACE", "TRACK"])
async def test_methods_that_echo_the_request_never_carry_the_credential(world: World, method: str) -> None:
    metrics = register_proxy()
    port, _ = await world.proxy(metrics=metrics)
    conn = await AgentConnection.open(port, API_HOST, world.bundle)
    try:
        status, _, body = await asyncio.wait_for(conn.get("/api/whoami", method=method), 5)
        assert status == 403 and b"would echo the request back" in body
        assert (await conn.get("/api/whoami"))[0] == 200  # the connection goes on
    finally:
        await conn.close()
    assert world.api.seen_auth == [f"Bearer {world.token}"]  # the GET only
    labels = {"credential": "api", "host": API_HOST, "result": "method_refused"}
    assert metrics.registry.get_sample_value("taskcreds_sidecar_proxy_requests_total", labels) == 1


async def test_an_agent_that_does_not_trust_the_pod_ca_cannot_get_the_credential(world: World) -> None:
    port, _ = await world.proxy()
    with pytest.raises(ssl.SSLCertVerificationError):
        await AgentConnection.open(port, API_HOST, world.upstream_ca_file)
    assert world.api.seen_auth == []


async def test_close_cuts_open_tunnels(world: World) -> None:
    port, _ = await world.proxy()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT {OPEN_HOST}:443 HTTP/1.1\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    await world.proxies[-1].close()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_close_with_open_connections_logs_no_error(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    port, _ = await world.proxy()
    conn = await AgentConnection.open(port, API_HOST, world.bundle)
    assert (await conn.get("/api/whoami"))[0] == 200
    await world.proxies[-1].close()
    await asyncio.sleep(0.05)  # done callbacks of the cut connections' tasks run
    assert await asyncio.wait_for(conn.reader.read(), 5) == b""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_idle_kept_alive_connections_are_closed(world: World) -> None:
    port, _ = await world.proxy(idle_timeout=0.2)
    conn = await AgentConnection.open(port, API_HOST, world.bundle)
    assert (await conn.get("/api/whoami"))[0] == 200
    assert await asyncio.wait_for(conn.reader.read(), 5) == b""  # closed by the proxy after 0.2 s idle
    await conn.close()


async def test_connections_over_the_limit_get_503_and_the_ones_served_go_on(world: World) -> None:
    metrics = register_proxy()
    port, _ = await world.proxy(max_connections=2, metrics=metrics)
    held = [await AgentConnection.open(port, API_HOST, world.bundle) for _ in range(2)]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 ") and b"2 connections are open; retry shortly" in answer
        assert (await held[0].get("/api/whoami"))[0] == 200  # the ones served are unaffected
        assert (
            metrics.registry.get_sample_value(
                "taskcreds_sidecar_proxy_requests_total",
                {"credential": "", "host": "", "result": "over_limit"},
            )
            == 1
        )
    finally:
        for conn in held:
            await conn.close()
    await asyncio.sleep(0.1)  # the two closes reach the proxy: a new connection is served again
    conn = await AgentConnection.open(port, API_HOST, world.bundle)
    try:
        assert (await conn.get("/api/whoami"))[0] == 200
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "framing", ["Content-Length: 100", "Transfer-Encoding: chunked"], ids=["sized", "chunked"]
)
async def test_a_request_body_that_stops_arriving_gets_408(world: World, framing: str) -> None:
    port, _ = await world.proxy(idle_timeout=0.3)
    conn = await AgentConnection.open(port, API_HOST, world.bundle)
    part = b"9\r\nonly-part" if "chunked" in framing else b"only-part"
    try:
        conn.writer.write(
            f"POST /api/upload HTTP/1.1\r\nHost: {API_HOST}\r\n{framing}\r\n\r\n".encode() + part
        )
        answer = await asyncio.wait_for(conn.reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"the request body stalled for 0.3 s" in answer
    finally:
        await conn.close()


async def test_head_and_bodiless_answers_keep_the_connection_in_step(world: World) -> None:
    port, _ = await world.proxy()
    conn = await AgentConnection.open(port, API_HOST, world.bundle)
    try:
        conn.writer.write(f"HEAD /api/bytes/5000 HTTP/1.1\r\nHost: {API_HOST}\r\n\r\n".encode())
        head = (await conn.reader.readuntil(b"\r\n\r\n")).decode().lower()
        assert head.startswith("http/1.1 200") and "content-length: 5000" in head
        status, _, body = await conn.get("/api/whoami")  # no body was read into the next answer
        assert status == 200 and b"agent-bot" in body
    finally:
        await conn.close()


# --- upstreams that misbehave: timeouts, closed kept-alive connections, broken HTTP ----------

RAW_HOST = "raw.test.local"


class ScriptedUpstream:
    """A TLS server answering each request with the next scripted bytes (None: stay silent);
    ``close_after`` closes the connection after an answer although it said keep-alive."""

    def __init__(self, ca: TestCA, answers: list[bytes | None], close_after: bool = False) -> None:
        self.ca, self.answers, self.close_after = ca, list(answers), close_after
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, ssl=self.ca.server_context([RAW_HOST])
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                self.requests.append(await reader.readuntil(b"\r\n\r\n"))
                answer = self.answers.pop(0)
                if answer is None:
                    await asyncio.sleep(30)
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


OK_16K = b"HTTP/1.1 200 OK\r\nContent-Length: 16384\r\nX-Up: 1\r\n\r\n" + b"z" * 16384
OK_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
)


UPSTREAM_CASES = [
    # (case, scripted answers, upstream closes after each, what the agent sees, upstream connections)
    (
        "kept-alive upstream connection is reused",
        [OK_16K, OK_16K, OK_16K],
        False,
        [(200, b"z" * 16384)] * 3,
        1,
    ),
    (
        "kept-alive connection closed by the upstream: reconnects",
        [OK_16K, OK_16K],
        True,
        [(200, b"z" * 16384), (200, b"z" * 16384)],
        2,
    ),
    (
        "chunked answer is framed again for the agent",
        [OK_CHUNKED, OK_CHUNKED],
        False,
        [(200, b"hello world"), (200, b"hello world")],
        1,
    ),
    (
        "interim 103 is dropped, the final answer relayed",
        [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK_16K],
        False,
        [(200, b"z" * 16384)],
        1,
    ),
    (
        "not HTTP at all: 502 naming why",
        [b"SSH-2.0-OpenSSH\r\n\r\n"],
        False,
        [(502, b"taskcreds proxy: raw.test.local: the upstream's status line is not HTTP/1.x\n")],
        1,
    ),
    (
        "Content-Length and a shorter body: connection cut",
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"],
        True,
        [(0, b"")],
        1,
    ),
    (
        "bytes past the response: that connection is not reused",
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond",
            OK_16K,
        ],
        False,
        [(200, b"ok"), (200, b"z" * 16384)],
        2,
    ),
    (
        "silent upstream: 504 after the read timeout",
        [None],
        False,
        [(504, b"taskcreds proxy: raw.test.local did not answer in time\n")],
        1,
    ),
]


@pytest.mark.parametrize(
    ("case", "answers", "close_after", "expected", "connections"),
    UPSTREAM_CASES,
    ids=[c[0] for c in UPSTREAM_CASES],
)
async def test_upstream_answers_the_agent_sees(
    world: World,
    case: str,
    answers: list[bytes | None],
    close_after: bool,
    expected: list[tuple[int, bytes]],
    connections: int,
) -> None:
    upstream = ScriptedUpstream(world.ca, answers, close_after)
    world.ports[RAW_HOST] = await upstream.start()
    route = ProxyRoute("api", (RAW_HOST,), header="Authorization: Bearer {token}")
    port, _ = await world.proxy([route], upstream_read_timeout=0.3)
    conn = await AgentConnection.open(port, RAW_HOST, world.bundle)
    try:
        seen = []
        for _ in expected:
            try:
                status, _, body = await asyncio.wait_for(conn.get("/x", host=RAW_HOST), 5)
            except asyncio.IncompleteReadError:
                status, body = 0, b""  # the proxy cut the connection: the agent knows the body is short
            seen.append((status, body))
            await asyncio.sleep(0.05)  # lets a closing upstream's FIN arrive before the next request
        assert seen == expected
        assert upstream.connections == connections
        assert all(f"Bearer {world.token}".encode() in r for r in upstream.requests)
    finally:
        await conn.close()
        await upstream.stop()


# --- routes updated mid-task -------------------------------------------------------------------


async def test_routes_update_without_restarting_the_listener(world: World) -> None:
    w = world
    bearer = ProxyRoute("api", (API_HOST,), header="Authorization: Bearer {token}")
    port, _ = await w.proxy([bearer], deny=True)
    proxy = w.proxies[-1]
    conn = await AgentConnection.open(port, API_HOST, w.bundle)
    try:
        assert (await conn.get("/api/whoami"))[0] == 200
        assert proxy.update_routes([bearer]) is False, "the same routes are no change"

        # a renewal brings another header: the next request on the same connection carries it
        api_key = ProxyRoute("api", (API_HOST,), header="X-Api-Key: {token}")
        assert proxy.update_routes([api_key]) is True
        status, _, _ = await conn.get("/api/whoami")
        assert status == 200 and w.api.seen_auth[-1] is None, "the old Authorization is no longer sent"

        # a new credential for another host: intercepted from the next CONNECT on (TLS with the
        # pod CA succeeds only when the proxy intercepts; a blind tunnel would show the real cert)
        assert proxy.update_routes([api_key, ProxyRoute("open", (OPEN_HOST,), header="X-Api-Key: {token}")])
        other = await AgentConnection.open(port, OPEN_HOST, w.bundle)
        await other.close()

        # the host's route is gone: deny-by-default answers 403 on the open connection and new ones
        assert proxy.update_routes([ProxyRoute("github", (GIT_HOST,), basic_username="x-access-token")])
        status, _, body = await conn.get("/api/whoami")
        assert status == 403 and b"egress to api.test.local is denied" in body
    finally:
        await conn.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT {API_HOST}:443 HTTP/1.1\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 403")
    writer.close()
    assert proxy.routes[0].credential == "github" and len(proxy.routes) == 1
