"""The sidecar's SPIFFE identity: X.509-SVIDs (and JWT-SVIDs) from the Workload API, for asyncio.

py-spiffe is synchronous and streams in its own threads; this adapter hands each update to the
event loop with ``call_soon_threadsafe`` and never blocks the loop. It keeps the last good SVID
when the Workload API goes away (agent restart, CSI remount) and keeps reconnecting in the
background, so a restart of SPIRE's agent never takes the sidecar down.

The SVID's key stays in memory: TLS contexts load it through a memfd (:mod:`taskcreds.svid`).

Error tree::

    IdentityError    no SVID in time, no/invalid socket, a JWT-SVID that could not be fetched
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any, Literal

from spiffe import WorkloadApiClient
from spiffe.errors import PySpiffeError
from spiffe.workloadapi.workload_api_client import RetryPolicy

from taskcreds import names, svid
from taskcreds.logs import fields
from taskcreds.svid import SvidError, X509SvidMaterial

__all__ = ["IdentitySource", "IdentityError"]

_log = logging.getLogger(__name__)
#: how long a Workload API call (JWT-SVID fetch) may take before it counts as failed
CALL_TIMEOUT = 10.0
#: first and longest pause between reconnects to a Workload API that is gone (spiffe-helper's 1 s -> 60 s
#: is too slow for a sidecar that the agent waits on)
RECONNECT_BACKOFF = (0.1, 5.0)


class IdentityError(Exception):
    """The sidecar has no usable SPIFFE identity; the message names the socket and the reason."""


def _normalize_socket(socket_uri: str | None) -> str:
    """``unix:///abs/path`` from the argument or SPIFFE_ENDPOINT_SOCKET; a bare absolute path is accepted."""
    raw = socket_uri if socket_uri is not None else os.environ.get(names.ENV_SPIFFE_SOCKET, "")
    where = "socket_uri" if socket_uri is not None else names.ENV_SPIFFE_SOCKET
    if not raw:
        raise IdentityError(f"no SPIFFE Workload API socket: set {names.ENV_SPIFFE_SOCKET} to "
                            "unix:///<path to the agent socket>")
    if raw.startswith("/"):
        raw = "unix://" + raw
    if not raw.startswith("unix:///"):
        raise IdentityError(f"{where}={raw!r} is not a unix socket address: expected unix:///<absolute path> "
                            "(the Workload API is only served on unix sockets here)")
    return raw


class IdentitySource:
    """The current X.509-SVID of this workload, kept fresh from the Workload API.

    ``on_update`` is called on the event loop with every new SVID (first one included).
    """

    def __init__(self, socket_uri: str | None = None, *,
                 on_update: Callable[[X509SvidMaterial], None] | None = None,
                 reconnect_backoff: tuple[float, float] = RECONNECT_BACKOFF) -> None:
        self.socket_uri = _normalize_socket(socket_uri)
        self.socket_path = self.socket_uri[len("unix://"):]
        self._on_update = on_update
        self._backoff = reconnect_backoff
        self._current: X509SvidMaterial | None = None
        self._client_ctx: tuple[str, ssl.SSLContext] | None = None
        self._server_ctx: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[X509SvidMaterial] | None = None
        self._jwt_client: WorkloadApiClient | None = None
        self._problem = "no answer yet"
        self._closed = False

    def __repr__(self) -> str:
        who = self._current.spiffe_id if self._current else None
        return f"IdentitySource({self.socket_uri!r}, spiffe_id={who!r})"

    # --- life cycle ----------------------------------------------------------------------------
    async def start(self, timeout: float = 30.0) -> X509SvidMaterial:  # noqa: ASYNC109 (public API)
        """Connect and wait for the first SVID; IdentityError after ``timeout`` seconds without one."""
        if self._task is not None:
            raise IdentityError("IdentitySource.start() was already called")
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._first = self._loop.create_future()
        self._task = asyncio.create_task(self._watch(), name="spiffe-identity")
        try:
            return await asyncio.wait_for(asyncio.shield(self._first), timeout)
        except TimeoutError:
            problem = self._problem
            await self.close()
            raise IdentityError(f"no X.509-SVID from the SPIFFE Workload API at {self.socket_uri} within "
                                f"{timeout:g} s: {problem}") from None

    async def close(self) -> None:
        """Stop watching and release the connections; the last SVID stays readable."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._jwt_client = self._jwt_client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    async def __aenter__(self) -> IdentitySource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- what callers use ----------------------------------------------------------------------
    @property
    def current(self) -> X509SvidMaterial:
        if self._current is None:
            raise IdentityError(f"no X.509-SVID yet from {self.socket_uri}: await start() first")
        return self._current

    @property
    def spiffe_id(self) -> str:
        return self.current.spiffe_id

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context presenting the current SVID.

        Built once per SVID and cached: after a rotation the next call returns a new context, so
        the next connection presents the new SVID without a restart. Pass it per request
        (``session.post(url, ssl=identity.ssl_context())``).
        """
        material = self.current
        cached = self._client_ctx
        if cached is None or cached[0] != material.fingerprint:
            cached = (material.fingerprint, svid.client_context(material))
            self._client_ctx = cached
        return cached[1]

    def server_ssl_context(self, *,
                           client_cert: Literal["required", "optional"] = "required") -> ssl.SSLContext:
        """One server TLS context that follows rotations in place (new handshakes use the new SVID).

        A server keeps its SSLContext for its lifetime, so unlike :meth:`ssl_context` this is the
        same object every time, with the current chain reloaded into it on every update.
        """
        if self._server_ctx is None:
            self._server_ctx = svid.server_context(self.current, client_cert=client_cert)
        return self._server_ctx

    async def fetch_jwt_svid(self, audience: str) -> str:
        """A JWT-SVID for ``audience`` (e.g. for OpenBao's JWT auth), fetched now."""
        if not audience:
            raise IdentityError("a JWT-SVID needs an audience, e.g. 'taskcreds'")
        try:
            if self._jwt_client is None:
                self._jwt_client = await asyncio.to_thread(WorkloadApiClient, self.socket_uri, CALL_TIMEOUT)
            jwt_svid = await asyncio.to_thread(self._jwt_client.fetch_jwt_svid, {audience})
        except PySpiffeError as exc:
            raise IdentityError(f"could not fetch a JWT-SVID for audience {audience!r} from "
                                f"{self.socket_uri}: {exc}") from None
        return str(jwt_svid.token)

    # --- background ----------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Keep one X.509 stream open; py-spiffe retries lost connections, we restart failed streams."""
        assert self._loop is not None
        loop = self._loop
        first, longest = self._backoff
        delay = first
        while not self._closed:
            if not os.path.exists(self.socket_path):  # noqa: ASYNC240 (one stat, no disk I/O worth a thread)
                self._problem = f"socket file {self.socket_path} does not exist"
            else:
                failed = asyncio.Event()

                def on_success(context: Any) -> None:
                    _call_soon(loop, self._apply, context)

                def on_error(error: Exception, failed: asyncio.Event = failed) -> None:
                    _call_soon(loop, self._stream_failed, error, failed)

                try:
                    client = await asyncio.to_thread(WorkloadApiClient, self.socket_uri)
                except PySpiffeError as exc:
                    self._problem = str(exc)
                else:
                    handler = client.stream_x509_contexts(
                        on_success, on_error, retry_connect=True,
                        retry_policy=RetryPolicy(base_backoff_in_seconds=first, max_backoff=longest))
                    try:
                        await failed.wait()
                    finally:
                        handler.cancel()
                        await asyncio.to_thread(client.close)
                    delay = first
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)

    def _stream_failed(self, error: Exception, failed: asyncio.Event) -> None:
        self._problem = f"Workload API stream failed: {error}"
        _log.warning("workload api stream failed, reconnecting",
                     extra=fields(socket=self.socket_uri, error=str(error)))
        failed.set()

    def _apply(self, context: Any) -> None:
        """Take a new X.509 context from py-spiffe's thread (runs on the event loop)."""
        try:
            material = X509SvidMaterial.from_spiffe(context.default_svid, context.x509_bundle_set)
        except (SvidError, PySpiffeError) as exc:
            self._problem = f"unusable SVID from the Workload API: {exc}"
            _log.warning("unusable svid ignored", extra=fields(socket=self.socket_uri, error=str(exc)))
            return
        previous = self._current
        if previous is not None and previous.chain_der == material.chain_der \
                and previous.bundle_der == material.bundle_der:
            return
        self._current = material
        if self._server_ctx is not None:
            try:
                svid.load_svid(self._server_ctx, material)
            except SvidError as exc:
                _log.error("could not load the new svid into the server context",
                           extra=fields(spiffe_id=material.spiffe_id, error=str(exc)))
        _log.info("svid updated", extra=fields(spiffe_id=material.spiffe_id, svid=material.fingerprint[:16],
                                               expires_at=material.expires_at.isoformat()))
        if self._first is not None and not self._first.done():
            self._first.set_result(material)
        if self._on_update is not None:
            try:
                self._on_update(material)
            except Exception as exc:  # a broken listener must not stop identity updates
                _log.error("svid update listener failed", extra=fields(error=f"{type(exc).__name__}: {exc}"))


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """Hand over from py-spiffe's thread; a closed loop means nobody is listening any more."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)
