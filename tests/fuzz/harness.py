"""Shared pieces of the webhook fuzz suite: a real TLS server in a thread, and the answer invariant.

The server is the real app (:func:`taskcreds.operator.webhook.make_webhook_app` with the real
:func:`mutate_pod` and the default injection config) behind the real :func:`webhook.serve` over
TLS on 127.0.0.1. It runs on its own event loop in a thread so hypothesis (synchronous) can
drive it with a plain keep-alive HTTPS client; tracemalloc sees both sides, which the memory test
relies on.

:func:`check_answer` is the one property every answer must have, whatever was sent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import os
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonpatch
from taskcreds.operator import certificates as certs
from taskcreds.operator import webhook
from taskcreds.operator.config import InjectionConfig
from taskcreds.operator.tlsreload import ReloadingCertificate

from taskcreds.metrics import register_operator
from tests.operator.validation import FAST_VERSIONS, schema_errors, semantic_errors

__all__ = [
    "CORPUS",
    "EXAMPLES",
    "EXTENDED",
    "TLSPair",
    "ThreadedWebhook",
    "Answer",
    "check_answer",
    "make_tls_pair",
    "is_valid_pod",
    "remember",
]

CORPUS = Path(__file__).resolve().parent / "corpus"
EXTENDED = bool(os.environ.get("TASKCREDS_FUZZ_EXAMPLES"))
#: hypothesis examples per test: moderate in CI, as many as asked for in a local extended run
EXAMPLES = int(os.environ.get("TASKCREDS_FUZZ_EXAMPLES") or 0) or 60


@dataclass(frozen=True)
class TLSPair:
    cert: Path
    key: Path
    ca_pem: bytes


def make_tls_pair(directory: Path) -> TLSPair:
    """A serving pair for ``localhost`` signed by a fresh CA, made by the project's own certificates.py."""
    now = datetime.now(UTC)
    ca_cert, ca_key = certs.make_ca("fuzz-ca", now)
    cert, key = certs.make_serving_cert(ca_cert, ca_key, ["localhost"], now)
    certs.write_pair_atomically(directory, cert, key)
    return TLSPair(directory / "tls.crt", directory / "tls.key", ca_cert)


class ThreadedWebhook:
    """The real webhook over real TLS on 127.0.0.1, served from a background thread."""

    def __init__(self, tls: TLSPair, config: InjectionConfig | None = None) -> None:
        self.config = config or InjectionConfig()
        self.metrics = register_operator()
        self._tls = tls
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="fuzz-webhook", daemon=True)
        self._local = threading.local()
        self.client_context = ssl.create_default_context(cadata=tls.ca_pem.decode())

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            reloading = ReloadingCertificate(self._tls.cert, self._tls.key, metrics=self.metrics)
            app = webhook.make_webhook_app(self.config, self.metrics)

            def ready(addresses: list[tuple[str, int]]) -> None:
                self.port = addresses[0][1]
                self._ready.set()

            await webhook.serve(app, reloading, "127.0.0.1", 0, self._stop, on_ready=ready)

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    def start(self) -> ThreadedWebhook:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"the webhook did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        assert not self._thread.is_alive(), "the webhook thread did not stop"

    def connection(self) -> http.client.HTTPSConnection:
        """A fresh HTTPS connection, certificate checked against the test CA."""
        return http.client.HTTPSConnection("localhost", self.port, context=self.client_context, timeout=30)

    def post(
        self, body: bytes | Iterable[bytes], headers: dict[str, str] | None = None, path: str = "/mutate"
    ) -> Answer:
        """POST ``body`` on this thread's keep-alive connection (reconnecting once if it was closed)."""
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None) or self.connection()
            self._local.conn = conn
            try:
                # an iterable body goes out chunked (http.client frames it), bytes with a Content-Length
                conn.request(
                    "POST", path, body=body, headers=hdrs, encode_chunked=not isinstance(body, bytes)
                )
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    conn.close()
                    self._local.conn = None
                return Answer(resp.status, resp.getheader("Content-Type") or "", data)
            except (ConnectionError, http.client.HTTPException, ssl.SSLError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def count(self, result: str) -> float:
        return (
            self.metrics.registry.get_sample_value("taskcreds_admission_requests_total", {"result": result})
            or 0.0
        )


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def is_valid_pod(pod: Any) -> bool:
    """Would a kube-apiserver (oldest and newest supported) accept this Pod as it is?"""
    if not isinstance(pod, dict) or pod.get("kind") != "Pod" or pod.get("apiVersion") != "v1":
        return False
    try:
        return not any(schema_errors(pod, v) for v in FAST_VERSIONS) and not semantic_errors(pod)
    except Exception:  # a shape the semantic checker cannot even walk is not a valid pod
        return False


def _request_of(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    request = doc.get("request") if isinstance(doc, dict) else None
    return request if isinstance(request, dict) else None


def check_answer(body: bytes, answer: Answer, *, validate: bool = True) -> str:
    """Assert the one property of every answer and return its kind.

    No 5xx ever; either a 400/413 JSON error with a code and a reason, or a 200 AdmissionReview
    whose uid echoes the request. A patch always applies (RFC 6902), and a pod that was valid
    before is valid after. The real ``mutate_pod`` never fails, so an ``error`` review (status
    code 500 inside, "internal error") is a bug too. Returns ``400``, ``413``, ``injected``,
    ``skipped`` or ``denied``. ``validate=False`` skips the (slower) schema check of the result.
    """
    assert answer.status < 500, f"HTTP {answer.status}: {answer.body[:300]!r}"
    assert answer.content_type.startswith("application/json"), answer.content_type
    doc = answer.json()
    if answer.status in (400, 413):
        error = doc["error"]
        assert error["code"] == ("too_large" if answer.status == 413 else "bad_request"), doc
        assert isinstance(error["message"], str) and len(error["message"]) > 5, doc
        assert "Traceback" not in error["message"]
        return str(answer.status)
    assert answer.status == 200, f"HTTP {answer.status}: {answer.body[:300]!r}"
    assert doc["apiVersion"] == "admission.k8s.io/v1" and doc["kind"] == "AdmissionReview", doc
    response = doc["response"]
    request = _request_of(body)
    assert request is not None, "a 200 answer to a body that is not an AdmissionReview"
    assert response["uid"] == request["uid"]
    assert isinstance(response["allowed"], bool)
    for warning in response.get("warnings", []):
        assert isinstance(warning, str) and warning
    if not response["allowed"]:
        status = response["status"]
        assert status["code"] != 500, f"mutate_pod raised (the webhook failed closed): {status['message']}"
        assert status["code"] == 403 and status["message"], response
        assert "patch" not in response, "a denial carries no patch"
        return "denied"
    if "patch" not in response:
        return "skipped"
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"], validate=True))
    pod = request["object"]
    patched = jsonpatch.apply_patch(pod, ops)  # raises JsonPatchConflict / JsonPointerException
    if validate and is_valid_pod(pod):
        assert is_valid_pod(patched), (
            "a valid pod came out invalid:\n"
            + "\n".join(e for v in FAST_VERSIONS for e in schema_errors(patched, v))
            + "\n".join(semantic_errors(patched))
        )
    return "injected"


def remember(body: bytes, why: str) -> Path | None:
    """In an extended local run, keep an input that broke the property as a corpus file to triage.

    CI never writes into the repository; the file name says what happened, and once the bug is
    fixed the file is renamed to its expected outcome (see corpus/README.md).
    """
    if not EXTENDED:
        return None
    # one file per test, overwritten: hypothesis replays the shrunk (smallest) failing input last
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    test = current.split("::")[-1].split(" ")[0].split("[")[0] or hashlib.sha256(body).hexdigest()[:12]
    path = CORPUS / f"found-{test}.{why}.bin"
    path.write_bytes(body)
    return path
