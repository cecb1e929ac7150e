"""A test double of the broker, faithful to docs/broker-api.md, served over real mutual TLS.

It checks what the real broker checks that a sidecar can observe: a client SVID from the trust
domain (the handshake), the bearer token, the task id, requested credentials, terminal tasks
(409), unknown leases (404), and answers the long-poll as documented. Values are canaries
(``canary-<credential>-<n>-<random>``) so tests can search logs and metrics for them.

Knobs for tests: ``fail_with`` (answer every API call with one error code), ``stop()``/``start()``
(go away entirely and come back on the same port), ``set_status()``, ``ttl``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from taskcreds.devauthority import DevAuthority
from taskcreds.durations import DurationError, parse_duration
from taskcreds.svid import peer_spiffe_id, server_context

BROKER_ID = "spiffe://taskcreds.local/ns/taskcreds-system/sa/taskcreds-operator"
TOKEN = "projected-sa-token-" + "x" * 24
BODY = web.RequestKey("body", object)

_STATUS = {"bad_request": 400, "unauthenticated": 401, "policy_denied": 403, "not_found": 404,
           "task_terminal": 409, "too_large": 413, "rate_limited": 429, "provider_error": 502,
           "unavailable": 503}


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Seen:
    method: str
    path: str
    token: str | None
    peer: str | None
    body: dict[str, Any] | None = None
    peer_cert_sha256: str | None = None


@dataclass
class Lease:
    credential: str
    ref: str
    files: dict[str, str] = field(repr=False)
    expires_at: datetime


class FakeBroker:
    def __init__(self, authority: DevAuthority, *, spiffe_id: str = BROKER_ID, task: str = "task-1",
                 credentials: dict[str, str] | None = None, ttl: float = 30.0, token: str = TOKEN,
                 renewable: frozenset[str] = frozenset()) -> None:
        self.authority = authority
        self.spiffe_id = spiffe_id
        self.task = task
        self.sources = credentials or {"github": "github-app", "db": "vault"}
        self.ttl = ttl
        self.token = token
        self.renewable = renewable
        self.seen: list[Seen] = []
        self.values: list[str] = []  # every value ever issued (canaries)
        self.leases: dict[str, Lease] = {}
        self.status, self.reason = "running", None
        self.revoked_with: list[str] = []
        self.fail_with: str | None = None
        self.deadline: datetime | None = None
        self.port = 0
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._n = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # --- life cycle ----------------------------------------------------------------------------
    async def start(self) -> FakeBroker:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/v1/credentials", self._issue)
        app.router.add_post("/v1/credentials/{name}/renew", self._renew)
        app.router.add_post("/v1/tasks/{task}/revoke", self._revoke)
        app.router.add_get("/v1/tasks/{task}/status", self._status)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        ctx = server_context(self.authority.mint_x509_svid(self.spiffe_id, 3600))
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            self._changed.set()
            await self._runner.cleanup()
            self._runner = None

    def set_status(self, status: str, reason: str | None = None) -> None:
        self.status, self.reason = status, reason
        self._changed.set()
        self._changed = asyncio.Event()

    def requests(self, path_part: str = "") -> list[Seen]:
        return [s for s in self.seen if path_part in s.path]

    @property
    def terminal(self) -> bool:
        return self.status in ("completed", "failed", "cancelled") or bool(self.revoked_with)

    # --- handlers ------------------------------------------------------------------------------
    @staticmethod
    def error(code: str, message: str, **headers: str) -> web.Response:
        return web.Response(status=_STATUS[code], headers=headers, content_type="application/json",
                            text=json.dumps({"error": {"code": code, "message": message}}))

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        body = None
        if request.can_read_body:
            raw = await request.read()
            if len(raw) > 65536:
                return self.error("too_large", "body over 64 KiB")
            try:
                body = json.loads(raw)
            except ValueError:
                return self.error("bad_request", "body is not JSON")
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        peer = peer_spiffe_id(ssl_object)
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        self.seen.append(Seen(request.method, request.path, token, peer, body,
                              hashlib.sha256(der).hexdigest() if der else None))
        if token != self.token:
            return self.error("unauthenticated", "token review failed")
        if self.fail_with:
            extra = {"Retry-After": "1"} if self.fail_with == "rate_limited" else {}
            return self.error(self.fail_with, f"test says {self.fail_with}", **extra)
        request[BODY] = body
        return await handler(request)

    def _credential(self, name: str, ttl: float, lease: Lease | None = None) -> dict[str, Any]:
        now = datetime.now(UTC)
        if lease is None or name not in self.renewable:
            self._n += 1
            value = f"canary-{name}-{self._n}-{secrets.token_hex(8)}"
            self.values.append(value)
            files = {"username": f"user-{name}", "password": value} if self.sources[name] == "vault" \
                else {"token": value}
            lease = Lease(name, f"lease-{name}-{self._n}", files, now)
        lease.expires_at = now + timedelta(seconds=ttl)
        self.leases[lease.ref] = lease
        return {"name": name, "provider": self.sources[name], "leaseRef": lease.ref,
                "issuedAt": _rfc3339(now), "expiresAt": _rfc3339(lease.expires_at),
                "renewable": name in self.renewable, "static": False, "delivery": "file",
                "files": dict(lease.files)}

    def _ttl(self, body: dict[str, Any]) -> float | web.Response:
        if body.get("ttl") is None:
            return self.ttl
        try:
            return min(parse_duration(body["ttl"]), 3600.0)
        except DurationError as exc:
            return self.error("bad_request", str(exc))

    async def _issue(self, request: web.Request) -> web.Response:
        body = request[BODY] or {}
        if body.get("task") != self.task:
            return self.error("policy_denied", f"task {body.get('task')!r} is not this pod's task")
        if self.terminal:
            return self.error("task_terminal", f"task {self.task!r} is {self.status}")
        names = body.get("credentials") or list(self.sources)
        unknown = [n for n in names if n not in self.sources]
        if unknown:
            return self.error("policy_denied", f"credential {unknown[0]!r} is not granted")
        ttl = self._ttl(body)
        if isinstance(ttl, web.Response):
            return ttl
        return web.json_response({
            "task": self.task, "taskStatus": self.status,
            "deadline": _rfc3339(self.deadline) if self.deadline else None,
            "credentials": [self._credential(n, ttl) for n in names]})

    async def _renew(self, request: web.Request) -> web.Response:
        body = request[BODY] or {}
        name = request.match_info["name"]
        if body.get("task") != self.task:
            return self.error("policy_denied", "wrong task")
        if self.terminal:
            return self.error("task_terminal", f"task {self.task!r} is {self.status}")
        lease = self.leases.get(str(body.get("leaseRef")))
        if lease is None or lease.credential != name:
            return self.error("not_found", f"no lease {body.get('leaseRef')!r} for {name!r}")
        ttl = self._ttl(body)
        if isinstance(ttl, web.Response):
            return ttl
        return web.json_response(self._credential(name, ttl, lease))

    async def _revoke(self, request: web.Request) -> web.Response:
        if request.match_info["task"] != self.task:
            return self.error("policy_denied", "wrong task")
        self.revoked_with.append(str((request[BODY] or {}).get("reason")))
        self._changed.set()
        self._changed = asyncio.Event()
        return web.json_response({"task": self.task, "revoked": sorted(self.sources)})

    async def _status(self, request: web.Request) -> web.Response:
        if request.match_info["task"] != self.task:
            return self.error("policy_denied", "wrong task")
        try:
            wait = min(parse_duration(request.query.get("wait", "30s")), 60.0)
        except DurationError as exc:
            return self.error("bad_request", str(exc))
        known = request.query.get("known")
        if known is not None and known == self.status:
            try:
                await asyncio.wait_for(self._changed.wait(), wait)
            except TimeoutError:
                pass
        return web.json_response({
            "task": self.task, "status": self.status, "terminal": self.terminal,
            "reason": self.reason if self.terminal else None,
            "deadline": _rfc3339(self.deadline) if self.deadline else None})
