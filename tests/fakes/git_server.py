"""Token-protected HTTPS upstreams for the egress-proxy tests: a git smart-HTTP server and an API.

Both are real aiohttp HTTPS servers on 127.0.0.1 with a certificate from their own test CA
(:class:`TestCA`, made with ``cryptography``), standing in for e.g. ``github.com`` and
``api.github.com``. They accept a request only with the expected token and record every
``Authorization`` they saw, so a test can prove the credential came from the proxy (and was
never sent to an upstream whose certificate failed).

- :class:`GitServer` runs ``git http-backend`` (CGI) for bare repositories under a temp root and
  wants HTTP Basic with the token as password (any username), like GitHub's
  ``x-access-token:<token>``.
- :class:`ApiServer` wants ``Authorization: Bearer <token>`` (or ``X-Api-Key: <token>``) and serves
  a few endpoints: ``/api/whoami``, ``/api/bytes/{n}``, ``/api/stream/{n}`` (chunked),
  ``POST /api/upload`` (counts and hashes the body), ``/api/headers`` (header names it got).

``token`` is a plain attribute: assign a new one to rotate.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import os
import shutil
import ssl
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TestCA", "ApiServer", "GitServer", "make_bare_repo"]


class TestCA:
    """A throwaway CA for upstream servers (test material only; its keys go through a memfd)."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str = "taskcreds upstream test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self.key, hashes.SHA256())
        )

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write_pem(self, directory: Path) -> Path:
        path = Path(directory) / "upstream-ca.pem"
        path.write_bytes(self.cert_pem())
        return path

    def client_context(self) -> ssl.SSLContext:
        """What the proxy's ``upstream_ssl`` is in tests: trusts this CA only, checks hostnames."""
        return ssl.create_default_context(cadata=self.cert_pem().decode())

    def server_pem(self, hostnames: Sequence[str]) -> bytes:
        """A new leaf for ``hostnames`` (1 h), certificate then PKCS#8 key, PEM: for a server to load."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for h in hostnames:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def server_context(self, hostnames: Sequence[str]) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        fd = os.memfd_create("test-upstream", os.MFD_CLOEXEC)
        try:
            os.write(fd, self.server_pem(hostnames))
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return ctx


class _HttpsServer:
    """An aiohttp app on 127.0.0.1:0 over TLS; subclasses add routes and the token check."""

    def __init__(self, ca: TestCA, hostnames: Sequence[str], token: str) -> None:
        self.ca = ca
        self.hostnames = tuple(hostnames)
        self.token = token
        self.seen_auth: list[str | None] = []  # every Authorization header received, in order
        self.port = 0
        self._runner: web.AppRunner | None = None

    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self, *, tls: bool = True) -> _HttpsServer:
        """Listen on 127.0.0.1 (a free port, in ``port``); ``tls=False`` for plain-HTTP tests."""
        app = web.Application(client_max_size=1 << 30)
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = self.ca.server_context(self.hostnames) if tls else None
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def saw_token(self) -> bool:
        """Whether any request so far carried the current token, in any accepted form."""
        return any(a is not None and self.token in _decoded(a) for a in self.seen_auth)


def _decoded(authorization: str) -> str:
    scheme, _, rest = authorization.partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(rest, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return rest
    return authorization


class ApiServer(_HttpsServer):
    """A token-protected JSON API (see module doc)."""

    def __init__(self, ca: TestCA, token: str, hostnames: Sequence[str] = ("api.test.local",)) -> None:
        super().__init__(ca, hostnames, token)
        self.uploads: list[tuple[int, str]] = []  # (bytes, sha256) per upload
        self.request_headers: list[list[str]] = []  # header names per request

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization")
        self.seen_auth.append(auth)
        self.request_headers.append(list(request.headers.keys()))
        return auth == f"Bearer {self.token}" or request.headers.get("X-Api-Key") == self.token

    def _routes(self, app: web.Application) -> None:
        @web.middleware
        async def require_token(request: web.Request, handler):  # type: ignore[no-untyped-def]
            if not self._authorized(request):
                return web.json_response(
                    {"message": "Bad credentials"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="api"'},
                )
            return await handler(request)

        app.middlewares.append(require_token)
        app.router.add_get("/api/whoami", self._whoami)
        app.router.add_get("/api/bytes/{n}", self._bytes)
        app.router.add_get("/api/stream/{n}", self._stream)
        app.router.add_post("/api/upload", self._upload)
        app.router.add_get("/api/headers", self._headers)
        app.router.add_get("/api/hop-by-hop", self._hop_by_hop)

    async def _whoami(self, request: web.Request) -> web.Response:
        return web.json_response({"login": "agent-bot", "path_qs": request.path_qs})

    async def _bytes(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.match_info["n"]), content_type="application/octet-stream")

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        block = b"y" * 8192
        while n > 0:
            await resp.write(block[:n])
            n -= len(block)
        await resp.write_eof()
        return resp

    async def _upload(self, request: web.Request) -> web.Response:
        digest, total = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            total += len(chunk)
        self.uploads.append((total, digest.hexdigest()))
        return web.json_response(
            {
                "received": total,
                "sha256": digest.hexdigest(),
                "chunked": request.headers.get("Transfer-Encoding") == "chunked",
            }
        )

    async def _hop_by_hop(self, request: web.Request) -> web.Response:
        """A response naming a hop-by-hop header in Connection, as some servers send."""
        return web.Response(
            text="ok",
            headers={
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "1",
                "Keep-Alive": "timeout=5",
                "X-End": "1",
            },
        )

    async def _headers(self, request: web.Request) -> web.Response:
        return web.json_response({"names": sorted(k.lower() for k in request.headers.keys())})


class GitServer(_HttpsServer):
    """``git http-backend`` behind HTTPS, wanting Basic auth with the token as password."""

    def __init__(
        self, ca: TestCA, token: str, root: Path, hostnames: Sequence[str] = ("git.test.local",)
    ) -> None:
        super().__init__(ca, hostnames, token)
        self.root = Path(root)
        self.backend = shutil.which("git-http-backend") or _git_exec_path("git-http-backend")

    def _routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._cgi)

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization")
        self.seen_auth.append(auth)
        if not auth or not auth.startswith("Basic "):
            return False
        _user, _, password = _decoded(auth).partition(":")
        return password == self.token

    async def _cgi(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.Response(
                status=401,
                text="authentication required\n",
                headers={"WWW-Authenticate": 'Basic realm="git"'},
            )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": request.path,
            "QUERY_STRING": request.query_string,
            "REMOTE_USER": "agent-bot",  # receive-pack (push) is enabled only for an authenticated user
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
        }
        if request.content_length is not None:
            env["CONTENT_LENGTH"] = str(request.content_length)
        for header in ("Content-Encoding", "Git-Protocol"):
            if header in request.headers:
                env["HTTP_" + header.upper().replace("-", "_")] = request.headers[header]
        proc = await asyncio.create_subprocess_exec(
            self.backend,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert proc.stdin is not None and proc.stdout is not None

        async def feed() -> None:
            try:
                async for chunk in request.content.iter_any():
                    proc.stdin.write(chunk)  # type: ignore[union-attr]
                    await proc.stdin.drain()  # type: ignore[union-attr]
            finally:
                proc.stdin.close()  # type: ignore[union-attr]

        feeder = asyncio.create_task(feed())
        try:
            status, headers = 200, {}
            while True:
                line = (await proc.stdout.readline()).rstrip(b"\r\n")
                if not line:
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                else:
                    headers[name.strip()] = value.strip()
            resp = web.StreamResponse(status=status, headers=headers)
            await resp.prepare(request)
            while chunk := await proc.stdout.read(65536):
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        finally:
            await feeder
            await proc.wait()


def _git_exec_path(tool: str) -> str:
    import subprocess

    exec_path = subprocess.run(
        ["git", "--exec-path"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return os.path.join(exec_path, tool)


def make_bare_repo(root: Path, name: str = "repo.git") -> Path:
    """A bare repository ``root/name`` with one commit on ``main`` (file README.md)."""
    import subprocess

    work = Path(tempfile.mkdtemp(prefix="tc-gitwork-"))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    try:
        src = work / "src"
        subprocess.run(["git", "init", "-q", "-b", "main", str(src)], env=env, check=True)
        (src / "README.md").write_text("hello from the test upstream\n")
        subprocess.run(["git", "-C", str(src), "add", "README.md"], env=env, check=True)
        subprocess.run(["git", "-C", str(src), "commit", "-q", "-m", "first"], env=env, check=True)
        bare = Path(root) / name
        subprocess.run(["git", "clone", "-q", "--bare", str(src), str(bare)], env=env, check=True)
        return bare
    finally:
        shutil.rmtree(work, ignore_errors=True)
