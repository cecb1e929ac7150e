"""The real broker over real SPIFFE mTLS on 127.0.0.1, served from a thread, for the broker fuzz suite.

The broker is :class:`tests.operator.test_broker_harness.Harness` (the real aiohttp app, real
``jwt``/``secret`` providers, the in-memory Cluster) started on its own event loop in a thread, so
hypothesis (synchronous) drives it with a plain keep-alive HTTPS client that presents a valid
X.509-SVID and sends its pod's bound token: fuzzed requests get past authentication and reach the
body parsing. Rate limits are lifted and long-polls capped at 50 ms so examples stay fast.

:func:`check_broker_answer` is the property every answer must have, whatever was sent, and
:class:`LogWatch` the one every log record must have (no ERROR, no traceback, no value).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from taskcreds.operator.broker.settings import BrokerSettings

from taskcreds.svid import X509SvidMaterial, client_context
from tests.operator.test_broker_harness import CANARY, NS, SA, Harness, spiffe_id

__all__ = [
    "ThreadedBroker",
    "BrokerAnswer",
    "LogWatch",
    "check_broker_answer",
    "CODES",
    "TASK",
    "POD",
    "REVOKE_POD",
    "CANARY",
    "status_path",
]

TASK = "fix-42"
#: the pod every "is it still healthy" request is made for (never revoked by the fuzzer)
POD = "agent-1"
#: the pod the revoke endpoint is fuzzed with (a valid fuzzed revoke ends its task, by design)
REVOKE_POD = "agent-revoke"

#: HTTP status -> the only ``code`` docs/broker-api.md allows with it
CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "policy_denied",
    404: "not_found",
    405: "bad_request",
    409: "task_terminal",
    413: "too_large",
    429: "rate_limited",
}


@dataclass(frozen=True)
class BrokerAnswer:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Client:
    """One sidecar's view: its SVID, its pod's token, a keep-alive connection per thread."""

    svid: X509SvidMaterial | None
    token: str | None
    context: ssl.SSLContext
    local: threading.local = field(default_factory=threading.local)


class ThreadedBroker:
    """The real broker over SPIFFE mTLS on 127.0.0.1, on its own loop in a background thread."""

    def __init__(self, settings: BrokerSettings | None = None) -> None:
        self.settings = settings or BrokerSettings(
            namespace="taskcreds-system",
            jwt_issuer="https://broker.test",
            rate_per_second=1e9,
            rate_burst=10**9,
            max_wait=0.05,
            default_wait=0.05,
            body_timeout=2.0,
            # the fuzzer checks parsing; its health check issues after every test, so the live-lease
            # cap and the failed-review budget (tested in tests/operator/test_broker_limits.py) are off
            max_live_leases=10**9,
            failed_review_burst=10**9,
        )
        self.loop = asyncio.new_event_loop()
        self.harness: Harness | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-broker", daemon=True)
        self.port = 0
        self.pods: dict[str, dict[str, Any]] = {}

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self._stopping = asyncio.Event()
            h = Harness(settings=self.settings)
            h.put_sources()
            for name in (POD, REVOKE_POD):
                self.pods[name] = h.add_pod(name, task=TASK, credentials="api,legacy")
            await h.start()
            self.harness = h
            self.port = h.server.port or 0
            self._ready.set()
            try:
                await self._stopping.wait()
            finally:
                await h.close()

        try:
            self.loop.run_until_complete(main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    def start(self) -> ThreadedBroker:
        self._thread.start()
        if not self._ready.wait(15) or self._error is not None:
            raise RuntimeError(f"the broker did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._stopping is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(15)
        assert not self._thread.is_alive(), "the broker thread did not stop"

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the broker's loop (the in-memory cluster belongs to it)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    # --- clients ------------------------------------------------------------------------------
    def client(
        self,
        pod: str = POD,
        *,
        svid: X509SvidMaterial | None = None,
        svid_id: str | None = None,
        token: str | None = None,
        no_svid: bool = False,
    ) -> Client:
        """A sidecar of ``pod``: a fresh SVID of its service account and a token bound to it."""
        assert self.harness is not None
        h = self.harness
        meta = self.pods[pod]["metadata"]
        if svid is None and not no_svid:
            svid = h.authority.mint_x509_svid(svid_id or spiffe_id(NS, SA))
        if token is None:
            token = h.cluster.issue_pod_token(NS, SA, meta["name"], meta["uid"])
        if svid is not None:
            context = client_context(svid)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.load_verify_locations(cadata=h.authority.bundle_pem().decode())
        return Client(svid=svid, token=token, context=context)

    def request(
        self,
        client: Client,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> BrokerAnswer:
        """One request on the client's keep-alive connection for this thread (reconnects once)."""
        hdrs = {"Content-Type": "application/json"}
        if client.token:
            hdrs["Authorization"] = f"Bearer {client.token}"
        hdrs.update(headers or {})
        for attempt in (1, 2):
            conn = getattr(client.local, "conn", None) or http.client.HTTPSConnection(
                "127.0.0.1", self.port, context=client.context, timeout=30
            )
            client.local.conn = conn
            try:
                conn.request(
                    method,
                    path,
                    body=body,
                    headers=hdrs,
                    encode_chunked=body is not None and not isinstance(body, bytes),
                )
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    conn.close()
                    client.local.conn = None
                return BrokerAnswer(
                    resp.status, resp.getheader("Content-Type") or "", data, dict(resp.getheaders())
                )
            except (ConnectionError, http.client.HTTPException, ssl.SSLError):
                conn.close()
                client.local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def issue_ok(self, client: Client | None = None) -> BrokerAnswer:
        """A valid issue request for the healthy pod: must be 200 whatever was sent before."""
        body = json.dumps({"task": TASK, "credentials": ["api"], "ttl": "5m"}).encode()
        return self.request(client or self.client(), "POST", "/v1/credentials", body)

    def cluster_calls(self) -> dict[str, int]:
        assert self.harness is not None
        return dict(self.harness.cluster.calls)


class LogWatch(logging.Handler):
    """Every record from every logger: ERROR ones, tracebacks and secret values are the bug."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.secrets: set[str] = {CANARY}
        self._lock_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_records:
            self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        with self._lock_records:
            out, self.records = self.records, []
        return out

    def check(self) -> None:
        """No record at ERROR or above, none with a traceback, none holding a secret value."""
        for record in self.take():
            text = record.getMessage() + json.dumps(
                {k: str(v) for k, v in vars(record).items() if k not in ("msg", "args")}
            )
            where = f"{record.name} {record.levelname}: {record.getMessage()[:200]}"
            assert record.levelno < logging.ERROR, f"an ERROR record: {where}"
            assert record.exc_info is None and "Traceback" not in text, f"a traceback: {where}"
            for secret in self.secrets:
                assert secret not in text, f"a secret value in a log record: {record.name}"


def check_broker_answer(answer: BrokerAnswer, *, secrets: Iterable[str] = ()) -> str:
    """Assert the property of every broker answer and return its status as text.

    Never 5xx (the fuzzed broker has a working cluster and providers, so a 502/503 is a bug too);
    always a JSON body; every non-2xx carries ``{"error": {"code", "message"}}`` with the code
    docs/broker-api.md pairs with that status and a message that says something and holds no
    traceback; no secret (the canary Secret value, a bearer token) outside a 200.
    """
    head = answer.body[:300]
    assert answer.status < 500, f"HTTP {answer.status}: {head!r}"
    assert answer.content_type.startswith("application/json"), (answer.status, answer.content_type, head)
    doc = answer.json()
    assert isinstance(doc, dict), head
    if answer.status >= 300:
        error = doc.get("error")
        assert isinstance(error, dict), head
        assert error.get("code") == CODES.get(answer.status), (answer.status, error)
        message = error.get("message")
        assert isinstance(message, str) and len(message) > 5, (answer.status, error)
        assert "Traceback" not in message and 'File "' not in message, message[:300]
        assert len(message) <= 4096, f"a {len(message)}-character error message"
        text = answer.body.decode()
        for secret in (*secrets, CANARY):
            assert secret not in text, "a secret value in an error body"
        if answer.status == 429:
            assert int(answer.headers.get("Retry-After", "0")) >= 1
    else:
        assert answer.status == 200, head
    return str(answer.status)


def status_path(task: str = TASK, **query: str) -> str:
    """The status long-poll path for ``task`` (percent-encoded), with a query."""
    return f"/v1/tasks/{quote(task, safe='')}/status" + (f"?{urlencode(query)}" if query else "")
