"""The broker client (docs/broker-api.md): mutual TLS with the current SVID, bearer token, typed errors.

Peer check before the token: :class:`_BrokerConnector` verifies the server's SPIFFE ID right after
the TLS handshake, inside aiohttp's connection setup and before aiohttp writes the request, and
closes the connection when it is not ``TASKCREDS_BROKER_SPIFFE_ID``. So the token (and the request
body) never reach a server that merely holds *some* SVID of the trust domain. The chain itself is
verified by the SSLContext against the trust bundle during the handshake.

SVID rotation: the identity source rebuilds its SSLContext when the SVID rotates; the client
notices a new context object and opens a new connection pool with it, so the next connection
presents the new SVID. The old pool is closed once its in-flight requests (a long-poll) finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from taskcreds.sidecar.errors import (
    BrokerError,
    BrokerUnavailable,
    RateLimited,
    TokenUnavailable,
    WrongBrokerIdentity,
    error_for,
)

from taskcreds.durations import format_duration
from taskcreds.svid import SvidError, peer_spiffe_id

__all__ = ["BrokerClient", "IssuedCredential", "IssueResult", "TaskStatus", "Identity", "parse_time"]

MAX_WAIT = 60.0


class Identity(Protocol):
    """What the client needs from the identity source (taskcreds.sidecar.identity.IdentitySource)."""

    def ssl_context(self) -> ssl.SSLContext: ...


def parse_time(text: Any) -> datetime:
    """An RFC 3339 UTC time from the broker as an aware datetime."""
    if not isinstance(text, str):
        raise ValueError(f"expected an RFC 3339 time, got {type(text).__name__}")
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class IssuedCredential:
    """One credential object of the broker's answer. ``files`` holds the values: hidden from repr."""

    name: str
    provider: str
    lease_ref: str
    issued_at: datetime
    expires_at: datetime
    renewable: bool
    static: bool
    delivery: str
    files: Mapping[str, str] = field(repr=False)
    proxy: Mapping[str, Any] | None = None
    """The ``proxy`` block of a proxy-delivered credential (hosts and templates, never a value)."""

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> IssuedCredential:
        files = doc.get("files")
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise ValueError("credential 'files' must map file names to strings")
        return cls(
            name=str(doc["name"]), provider=str(doc.get("provider", "")),
            lease_ref=str(doc.get("leaseRef", "")),
            issued_at=parse_time(doc["issuedAt"]), expires_at=parse_time(doc["expiresAt"]),
            renewable=bool(doc.get("renewable", False)), static=bool(doc.get("static", False)),
            delivery=str(doc.get("delivery") or "file"), files=dict(files),
            proxy=dict(doc["proxy"]) if isinstance(doc.get("proxy"), dict) else None,
        )


@dataclass(frozen=True)
class IssueResult:
    task: str
    task_status: str
    deadline: datetime | None
    credentials: tuple[IssuedCredential, ...]


@dataclass(frozen=True)
class TaskStatus:
    task: str
    status: str
    terminal: bool
    reason: str | None
    deadline: datetime | None


class _BrokerConnector(aiohttp.TCPConnector):
    """A TCP connector that refuses any TLS peer other than the expected broker SPIFFE ID.

    ``_create_connection`` runs after the handshake and before the request is written: aiohttp's
    one place between the two. Raising here aborts the request with nothing sent.
    """

    def __init__(self, expected_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._expected_id = expected_id

    # aiohttp's own signature: the timeout is aiohttp's, applied by it
    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109
        proto = await super()._create_connection(req, traces, timeout)
        transport = proto.transport
        peer = peer_spiffe_id(transport.get_extra_info("ssl_object") if transport else None)
        if peer != self._expected_id:
            if transport is not None:
                transport.abort()
            raise WrongBrokerIdentity(
                f"the server at {req.url.host}:{req.url.port} presented SPIFFE ID {peer!r}, expected "
                f"{self._expected_id!r}; nothing was sent to it")
        return proto


class BrokerClient:
    """Calls the broker for one pod's task. Safe to use from concurrent tasks of one event loop."""

    def __init__(self, *, url: str, broker_spiffe_id: str, token_file: str, task: str,
                 identity: Identity, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.broker_spiffe_id = broker_spiffe_id
        self.token_file = token_file
        self.task = task
        self.identity = identity
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._context: ssl.SSLContext | None = None
        self._retired: list[tuple[aiohttp.ClientSession, set[asyncio.Task[Any]]]] = []
        self._inflight: dict[aiohttp.ClientSession, int] = {}

    # --- API -------------------------------------------------------------------------------------
    async def issue(self, credentials: Sequence[str] | None = None, ttl: str | None = None) -> IssueResult:
        """``POST /v1/credentials``: every named credential (all of the pod's when None), all or nothing."""
        body: dict[str, Any] = {"task": self.task}
        if credentials is not None:
            body["credentials"] = list(credentials)
        if ttl is not None:
            body["ttl"] = ttl
        doc = await self._call("POST", "/v1/credentials", body)
        try:
            return IssueResult(
                task=str(doc.get("task", self.task)), task_status=str(doc.get("taskStatus", "running")),
                deadline=parse_time(doc["deadline"]) if doc.get("deadline") else None,
                credentials=tuple(IssuedCredential.from_json(c) for c in doc["credentials"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BrokerUnavailable(f"the broker's issue answer is malformed: {exc}") from None

    async def renew(self, name: str, lease_ref: str, ttl: str | None = None) -> IssuedCredential:
        """``POST /v1/credentials/{name}/renew``: the same lease extended or a replacement."""
        body: dict[str, Any] = {"task": self.task, "leaseRef": lease_ref}
        if ttl is not None:
            body["ttl"] = ttl
        doc = await self._call("POST", f"/v1/credentials/{quote(name, safe='')}/renew", body)
        try:
            return IssuedCredential.from_json(doc)
        except (KeyError, TypeError, ValueError) as exc:
            raise BrokerUnavailable(f"the broker's renew answer for {name!r} is malformed: {exc}") from None

    # the timeout is aiohttp's per-request ClientTimeout (the session's default otherwise)
    async def revoke_task(self, reason: str, *, timeout: float | None = None) -> list[str]:  # noqa: ASYNC109
        """``POST /v1/tasks/{task}/revoke``: every credential of the task, now. Idempotent."""
        doc = await self._call("POST", f"/v1/tasks/{quote(self.task, safe='')}/revoke",
                               {"reason": reason[:64]}, timeout=timeout)
        return [str(n) for n in doc.get("revoked", [])]

    async def wait_status(self, known: str | None, wait: float = 30.0) -> TaskStatus:
        """``GET /v1/tasks/{task}/status``: at once when the status is not ``known``, else a long-poll."""
        wait = max(1.0, min(wait, MAX_WAIT))
        params = {"wait": format_duration(wait)}
        if known:
            params["known"] = known
        doc = await self._call("GET", f"/v1/tasks/{quote(self.task, safe='')}/status", None,
                               params=params, timeout=wait + self.timeout)
        try:
            return TaskStatus(
                task=str(doc.get("task", self.task)), status=str(doc["status"]),
                terminal=bool(doc.get("terminal", False)), reason=doc.get("reason"),
                deadline=parse_time(doc["deadline"]) if doc.get("deadline") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BrokerUnavailable(f"the broker's status answer is malformed: {exc}") from None

    async def close(self) -> None:
        sessions = [s for s, _ in self._retired]
        if self._session is not None:
            sessions.append(self._session)
        self._session, self._context, self._retired = None, None, []
        for session in sessions:
            await session.close()

    # --- internals -------------------------------------------------------------------------------
    def _read_token(self) -> str:
        try:
            with open(self.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise TokenUnavailable(f"cannot read the service-account token {self.token_file}: "
                                   f"{exc.strerror}") from None
        if not token:
            raise TokenUnavailable(f"the service-account token file {self.token_file} is empty")
        return token

    async def _current_session(self) -> aiohttp.ClientSession:
        context = self.identity.ssl_context()
        if self._session is None or context is not self._context:
            if self._session is not None:
                old = self._session
                if self._inflight.get(old, 0) == 0:
                    await old.close()
                else:
                    self._retired.append((old, set()))
            connector = _BrokerConnector(self.broker_spiffe_id, ssl=context, limit=8,
                                         enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
            self._context = context
        return self._session

    async def _release(self, session: aiohttp.ClientSession) -> None:
        self._inflight[session] -= 1
        if self._inflight[session] == 0:
            del self._inflight[session]
            for entry in list(self._retired):
                if entry[0] is session:
                    self._retired.remove(entry)
                    await session.close()

    # the timeout is aiohttp's per-request ClientTimeout (wait_status needs a longer one)
    async def _call(self, method: str, path: str, body: dict[str, Any] | None, *,
                    params: dict[str, str] | None = None,
                    timeout: float | None = None) -> dict[str, Any]:  # noqa: ASYNC109
        token = self._read_token()
        try:
            session = await self._current_session()
        except (OSError, SvidError) as exc:
            # a local, usually passing failure (EMFILE/ENOMEM from memfd_create loading the SVID key):
            # retried with backoff like an unreachable broker, never the end of the task
            raise BrokerUnavailable(f"cannot make a TLS context from the current SVID for {method} {path}: "
                                    f"{type(exc).__name__}: {_short(exc)}") from None
        self._inflight[session] = self._inflight.get(session, 0) + 1
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        try:
            async with session.request(
                method, self.url + path, data=data, headers=headers, params=params,
                timeout=aiohttp.ClientTimeout(total=timeout or self.timeout, sock_connect=5.0),
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except BrokerError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"broker {self.url} unreachable on {method} {path}: "
                                    f"{type(exc).__name__}: {_short(exc)}") from None
        finally:
            with contextlib.suppress(Exception):
                await self._release(session)
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = None
        if 200 <= status < 300:
            if not isinstance(doc, dict):
                raise BrokerUnavailable(f"broker answered {method} {path} with {status} and a body that is "
                                        "not a JSON object")
            return doc
        error = (doc or {}).get("error") if isinstance(doc, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        cls = error_for(status, code if isinstance(code, str) else None)
        text = f"broker refused {method} {path}: {status} {code or ''} {message or ''}".strip()
        if cls is RateLimited:
            try:
                wait = float(retry_after) if retry_after else 1.0
            except ValueError:
                wait = 1.0
            raise RateLimited(text, retry_after=max(0.0, min(wait, 300.0)), status=status)
        raise cls(text, status=status, code=code if isinstance(code, str) else None)


def _short(exc: BaseException) -> str:
    text = str(exc) or "no detail"
    return text if len(text) <= 200 else text[:200] + "..."
