"""A local GitHub for GitHub App installation tokens, following GitHub's documented REST shapes.

    from tests.fakes.github import github as github_fixture  # noqa: F401  (the `github` fixture)

    async def test_x(github):
        app = github.add_app("12345", installation_id="678", repositories=["agent-target-repo"],
                             permissions={"contents": "write"})
        ...  # github.url as apiURL, app.private_key_pem in a Secret

Served over plain HTTP on 127.0.0.1 (port 0). It checks what GitHub checks:

- ``POST /app/installations/{id}/access_tokens`` needs ``Authorization: Bearer <App JWT>``: RS256,
  signed with the App's key, ``iss`` = the App id, ``iat`` not in the future, ``exp`` in the future,
  ``exp - iat`` at most 10 minutes (else 401). The installation must belong to the App (else 404).
  ``repositories`` (names) and ``repository_ids`` must be repositories of the installation,
  ``permissions`` at most what the installation was granted (else 422, GitHub's messages). Left out,
  each means "all of the installation's" (a token for every repository, every permission). Answers 201
  with a ``ghs_`` token that expires in 1 hour.
- ``GET /installation/repositories`` and ``DELETE /installation/token`` need ``Authorization: Bearer
  <token>`` (or ``token <token>``); a revoked, expired or unknown token gets 401 "Bad credentials".

``fail_next(status)`` makes the next API calls fail (5xx, rate limits); ``rejections`` records why
a JWT was refused, ``jwt_claims`` the claims of every accepted JWT.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.ports import free_port

__all__ = ["FakeGitHub", "FakeApp", "IssuedToken", "github", "new_private_key_pem", "TOKEN_LIFETIME"]

TOKEN_LIFETIME = timedelta(hours=1)  # GitHub's fixed installation-token lifetime
MAX_JWT_WINDOW = 600  # seconds: GitHub refuses an App JWT with exp more than 10 minutes after iat
_LEVELS = {"read": 1, "write": 2, "admin": 3}
_DOCS = "https://docs.github.com/rest"


def new_private_key_pem() -> str:
    """A fresh RSA 2048 key in PKCS#1 PEM, the format GitHub hands out for Apps."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


@dataclass
class FakeApp:
    app_id: str
    installation_id: str
    private_key_pem: str = field(repr=False)
    repositories: list[str]
    permissions: dict[str, str]
    owner: str = "octo-org"

    def public_key(self) -> Any:
        return serialization.load_pem_private_key(self.private_key_pem.encode(), password=None).public_key()


@dataclass
class IssuedToken:
    token: str = field(repr=False)
    installation_id: str
    repositories: list[str] | None  # None: every repository of the installation
    permissions: dict[str, str]
    expires_at: datetime
    revoked: bool = False

    @property
    def alive(self) -> bool:
        return not self.revoked and datetime.now(UTC) < self.expires_at


class FakeGitHub:
    """The fake server; start with ``await start()``, stop with ``await stop()`` (restartable)."""

    def __init__(self) -> None:
        self.apps: dict[str, FakeApp] = {}
        self.tokens: dict[str, IssuedToken] = {}
        self.rejections: list[str] = []
        self.jwt_claims: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self._failures: list[int] = []
        self._runner: web.AppRunner | None = None
        self.port = free_port()  # kept across stop()/start(): not an ephemeral one (tests/ports.py)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_app(
        self,
        app_id: str = "12345",
        *,
        installation_id: str = "678",
        repositories: list[str] | None = None,
        permissions: dict[str, str] | None = None,
        private_key_pem: str | None = None,
    ) -> FakeApp:
        app = FakeApp(
            app_id=app_id,
            installation_id=installation_id,
            private_key_pem=private_key_pem or new_private_key_pem(),
            repositories=list(
                repositories if repositories is not None else ["agent-target-repo", "other-repo"]
            ),
            permissions=dict(
                permissions
                if permissions is not None
                else {"contents": "write", "metadata": "read", "pull_requests": "write"}
            ),
        )
        self.apps[app_id] = app
        return app

    def fail_next(self, status: int, times: int = 1) -> None:
        """The next ``times`` API calls answer ``status`` (for outages and rate limits)."""
        self._failures += [status] * times

    def token(self, value: str) -> IssuedToken | None:
        return self.tokens.get(value)

    def alive_tokens(self) -> list[IssuedToken]:
        return [t for t in self.tokens.values() if t.alive]

    # -- server ------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/app/installations/{installation_id}/access_tokens", self._create_token)
        app.router.add_get("/installation/repositories", self._list_repositories)
        app.router.add_delete("/installation/token", self._revoke_token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self._failures:
            status = self._failures.pop(0)
            headers = {"x-ratelimit-remaining": "0", "retry-after": "1"} if status in (403, 429) else {}
            message = "API rate limit exceeded" if status in (403, 429) else "Server Error"
            return _error(status, message, headers=headers)
        if request.headers.get("Accept", "").split(",")[0].strip() not in (
            "application/vnd.github+json",
            "*/*",
            "",
        ):
            return _error(415, "Unsupported Accept header")
        return await handler(request)

    # -- handlers ----------------------------------------------------------------------------------

    async def _create_token(self, request: web.Request) -> web.Response:
        app = self._verify_app_jwt(request.headers.get("Authorization", ""))
        if app is None:
            return _error(401, "A JSON web token could not be decoded")
        installation_id = request.match_info["installation_id"]
        if installation_id != app.installation_id:
            return _error(404, "Not Found")
        body: dict[str, Any] = {}
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return _error(400, "Problems parsing JSON")
            if not isinstance(body, dict):
                return _error(400, "Problems parsing JSON")
        repositories = body.get("repositories")
        ids = body.get("repository_ids")
        by_id = {self._repo(app, name)["id"]: name for name in app.repositories}
        if (repositories is not None and (
            not isinstance(repositories, list) or any(r not in app.repositories for r in repositories)
        )) or (ids is not None and (not isinstance(ids, list) or any(i not in by_id for i in ids))):
            return _error(
                422,
                "There is at least one repository that does not exist or is not accessible "
                "to the parent installation.",
            )
        if ids:  # both lists may be given: the token covers their union
            repositories = list(dict.fromkeys([*(repositories or []), *(by_id[i] for i in ids)]))
        permissions = body.get("permissions")
        if permissions is None:
            permissions = dict(app.permissions)
        elif not isinstance(permissions, dict) or any(
            _LEVELS.get(str(level), 99) > _LEVELS.get(app.permissions.get(name, ""), 0)
            for name, level in permissions.items()
        ):
            return _error(422, "The permissions requested are not granted to this installation.")
        token = "ghs_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(36))
        expires = (datetime.now(UTC) + TOKEN_LIFETIME).replace(microsecond=0)
        self.tokens[token] = IssuedToken(
            token, installation_id, list(repositories) if repositories else None, dict(permissions), expires
        )
        answer: dict[str, Any] = {
            "token": token,
            "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "permissions": permissions,
            "repository_selection": "selected" if repositories else "all",
        }
        if repositories:
            answer["repositories"] = [self._repo(app, name) for name in repositories]
        return web.json_response(answer, status=201)

    async def _list_repositories(self, request: web.Request) -> web.Response:
        issued = self._token_from(request)
        if issued is None:
            return _error(401, "Bad credentials")
        app = next(a for a in self.apps.values() if a.installation_id == issued.installation_id)
        names = issued.repositories if issued.repositories is not None else app.repositories
        return web.json_response(
            {
                "total_count": len(names),
                "repository_selection": "selected" if issued.repositories is not None else "all",
                "repositories": [self._repo(app, name) for name in names],
            }
        )

    async def _revoke_token(self, request: web.Request) -> web.Response:
        issued = self._token_from(request)
        if issued is None:
            return _error(401, "Bad credentials")
        issued.revoked = True
        return web.Response(status=204)

    # -- checks ------------------------------------------------------------------------------------

    def _verify_app_jwt(self, authorization: str) -> FakeApp | None:
        scheme, _, token = authorization.partition(" ")
        if scheme != "Bearer" or not token:
            self.rejections.append("no bearer JWT")
            return None
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            self.rejections.append("not a JWT")
            return None
        if header.get("alg") != "RS256":
            self.rejections.append(f"alg {header.get('alg')!r} is not RS256")
            return None
        app = self.apps.get(str(unverified.get("iss")))
        if app is None:
            self.rejections.append(f"iss {unverified.get('iss')!r} is no App")
            return None
        try:
            claims = jwt.decode(
                token,
                app.public_key(),
                algorithms=["RS256"],
                options={"require": ["iat", "exp", "iss"]},
                leeway=0,
            )
        except jwt.InvalidSignatureError:
            self.rejections.append("signature")
            return None
        except jwt.PyJWTError as exc:
            self.rejections.append(f"claims: {exc}")
            return None
        now = datetime.now(UTC).timestamp()
        if claims["iat"] > now + 1:
            self.rejections.append("iat in the future")
            return None
        if claims["exp"] - claims["iat"] > MAX_JWT_WINDOW or claims["exp"] > now + MAX_JWT_WINDOW:
            self.rejections.append("exp more than 10 minutes ahead")
            return None
        self.jwt_claims.append(claims)
        return app

    def _token_from(self, request: web.Request) -> IssuedToken | None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme not in ("Bearer", "token"):
            return None
        issued = self.tokens.get(value)
        return issued if issued is not None and issued.alive else None

    @staticmethod
    def _repo(app: FakeApp, name: str) -> dict[str, Any]:
        return {
            "id": int(hashlib.sha256(f"{app.owner}/{name}".encode()).hexdigest()[:8], 16),  # stable
            "name": name,
            "full_name": f"{app.owner}/{name}",
            "private": True,
        }


def _error(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"message": message, "documentation_url": _DOCS}, status=status, headers=headers)


@pytest.fixture(name="github")
async def github() -> AsyncIterator[FakeGitHub]:
    """A started :class:`FakeGitHub` (no Apps yet: ``github.add_app(...)``), stopped at teardown."""
    fake = FakeGitHub()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
