"""The mutating admission webhook's HTTPS server: AdmissionReview in, AdmissionReview out.

No rules live here. The handler decodes the review, calls the pure ``mutate`` function
(:func:`taskcreds.operator.injection.mutate_pod` unless another one is injected), records metrics
and encodes the answer. The hot path does no I/O besides the request itself: no logging per
request, no Kubernetes calls.

Failure handling, as users see it:

- a body that is not an AdmissionReview (not JSON, not UTF-8, wrong apiVersion/kind, missing or
  mistyped fields, nested deeper than :data:`MAX_DEPTH`) -> HTTP 400 ``{"error": {...}}`` naming
  what was wrong; over :data:`MAX_BODY_BYTES` -> 413. Never a 500, never a traceback;

JSON goes through orjson (decode ~4x, encode ~5x faster than :mod:`json`; bench/webhook.py): on
this path JSON is most of the server's own work. orjson also bounds nesting (:data:`MAX_DEPTH`)
without recursion, so a deeply nested body is refused while it is parsed, at no cost for a Pod.
- a bug in ``mutate`` -> an AdmissionReview with ``allowed: false`` (status code 500 inside): an
  opted-in pod is never admitted uninjected (fail closed), and the metric says ``result="error"``.
- a request that never became an AdmissionReview (the 400/408/413 above, a client that hangs up
  mid-body) is not an admission: ``admission_requests_total`` leaves it out (its ``error`` is what
  TaskcredsWebhookErrors alerts on) and ``webhook_unanswered_requests_total{reason}`` counts it; a
  hang-up is logged at DEBUG only, since any pod able to reach the port could flood ERROR logs.

Used two ways: embedded in ``taskcreds-operator`` (it calls :func:`make_webhook_app`) and alone
as ``taskcreds webhook`` (:func:`run_standalone`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, Protocol, TypedDict

import orjson
import pybase64
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from taskcreds.operator.settings import SettingsError, parse_listen
from taskcreds.operator.tlsreload import ReloadingCertificate, TLSFilesError

from taskcreds import names
from taskcreds.logs import fields, quiet_http_parser_errors, setup_logging
from taskcreds.loop import loop_name, run_loop
from taskcreds.metrics import OperatorMetrics, register_operator

if TYPE_CHECKING:
    from taskcreds.operator.config import InjectionConfig
    from taskcreds.operator.injection import MutationResult

__all__ = [
    "make_webhook_app", "run_standalone", "serve", "parse_review", "BadReview", "ParsedReview",
    "review_for", "encode_answer", "error_review", "AdmissionReview", "AdmissionRequest", "AdmissionResponse",
    "MAX_BODY_BYTES", "MAX_DEPTH", "ADMISSION_API_VERSION",
]

log = logging.getLogger("taskcreds.operator.webhook")

ADMISSION_API_VERSION = "admission.k8s.io/v1"
#: the kube-apiserver's own limit for a request body
MAX_BODY_BYTES = 3 * 1024 * 1024
#: seconds a client may take for the TLS handshake, to send a whole body, and to stay idle
HANDSHAKE_TIMEOUT = 5.0
BODY_TIMEOUT = 10.0
KEEPALIVE_TIMEOUT = 10.0
#: orjson's nesting limit; a Pod is about 10-15 levels deep (managedFields included), and the
#: API server has already decoded it into a typed Pod, which cannot nest without bound
MAX_DEPTH = 1024
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
Result = Literal["injected", "skipped", "denied", "error"]
RESULTS: tuple[Result, ...] = ("injected", "skipped", "denied", "error")
#: why a /mutate request never became an AdmissionReview (webhook_unanswered_requests_total)
UnansweredReason = Literal["malformed", "too_large", "timeout", "disconnected", "internal"]
UNANSWERED_REASONS: tuple[UnansweredReason, ...] = (
    "malformed", "too_large", "timeout", "disconnected", "internal")


# --- wire format (admission.k8s.io/v1) --------------------------------------------------------

class GroupVersionKind(TypedDict):
    group: str
    version: str
    kind: str


class AdmissionRequest(TypedDict, total=False):
    uid: str
    kind: GroupVersionKind
    namespace: str
    name: str
    operation: str
    object: dict[str, Any]
    oldObject: dict[str, Any] | None
    dryRun: bool


class Status(TypedDict, total=False):
    code: int
    message: str
    reason: str
    status: str


class AdmissionResponse(TypedDict, total=False):
    uid: str
    allowed: bool
    patchType: Literal["JSONPatch"]
    patch: str  # base64 of the JSON patch
    warnings: list[str]
    status: Status


class AdmissionReview(TypedDict, total=False):
    apiVersion: str
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest
    response: AdmissionResponse


class MutateFunction(Protocol):
    def __call__(self, pod: dict[str, Any], config: Any, operation: str, *, namespace: str | None = None,
                 credential_check: Callable[..., Any] | None = None) -> MutationResult: ...


# --- pure: decode and encode -------------------------------------------------------------------

class BadReview(ValueError):
    """The body is not a usable AdmissionReview; the message says what and what is accepted."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ParsedReview(NamedTuple):
    """The parts of a checked AdmissionReview the handler uses (a tuple: built on every request)."""

    uid: str
    operation: str
    namespace: str | None
    kind: str | None  # request.kind.kind, when given
    pod: dict[str, Any]


def _why_not_json(body: bytes, exc: orjson.JSONDecodeError) -> str:
    """A reason a person can act on; only computed for junk, never on the happy path."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"body is not UTF-8 (invalid byte at offset {bad.start}); expected JSON"
    if "depth" in exc.msg or "recursion" in exc.msg:
        return f"JSON nested too deeply; at most {MAX_DEPTH} levels are accepted"
    return f"body is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"


def parse_review(body: bytes) -> ParsedReview:
    """Decode and check an AdmissionReview request body; raise :class:`BadReview` naming the problem."""
    if len(body) > MAX_BODY_BYTES:
        raise BadReview(f"body is {len(body)} bytes; at most {MAX_BODY_BYTES} are accepted", 413)
    if not body:
        raise BadReview("empty body; expected an admission.k8s.io/v1 AdmissionReview as JSON")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadReview(_why_not_json(body, exc)) from None
    if not isinstance(doc, dict):
        raise BadReview(f"body is a JSON {type(doc).__name__}; expected an AdmissionReview object")
    if doc.get("apiVersion") != ADMISSION_API_VERSION or doc.get("kind") != "AdmissionReview":
        raise BadReview(f"apiVersion {doc.get('apiVersion')!r} kind {doc.get('kind')!r}: expected "
                        f"apiVersion {ADMISSION_API_VERSION!r} kind 'AdmissionReview'")
    req = doc.get("request")
    if not isinstance(req, dict):
        raise BadReview("request: missing or not an object; expected the AdmissionRequest")
    uid = req.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("request.uid: missing or not a non-empty string")
    operation = req.get("operation")
    if operation not in OPERATIONS:
        raise BadReview(f"request.operation: {operation!r} is not one of {', '.join(OPERATIONS)}")
    obj = req.get("object")
    if not isinstance(obj, dict):
        raise BadReview("request.object: missing or not an object; expected the Pod being admitted")
    namespace = req.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise BadReview("request.namespace: not a string")
    kind = req.get("kind")
    kind_name: str | None = None
    if kind is not None:
        if not isinstance(kind, dict) or not isinstance(kind.get("kind"), str):
            raise BadReview("request.kind: expected {group, version, kind} with kind a string")
        kind_name = kind["kind"]
    metadata = obj.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadReview("request.object.metadata: not an object")
    return ParsedReview(uid=uid, operation=operation, namespace=namespace or None, kind=kind_name, pod=obj)


def _review(response: AdmissionResponse) -> AdmissionReview:
    return {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response}


def review_for(uid: str, result: MutationResult) -> tuple[AdmissionReview, Result]:
    """The AdmissionReview answering ``result``, and the metric's result label."""
    outcome = result.outcome
    warnings = [str(w) for w in (result.warnings or [])]
    if outcome == "denied":
        response: AdmissionResponse = {
            "uid": uid, "allowed": False,
            "status": {"code": 403, "reason": "Forbidden", "status": "Failure",
                       "message": result.message or "denied by taskcreds"},
        }
    elif outcome in ("injected", "skipped"):
        response = {"uid": uid, "allowed": True}
        if result.patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(orjson.dumps(result.patch)).decode("ascii")
    else:
        raise TypeError(f"mutate returned outcome {outcome!r}; expected injected, skipped or denied")
    if warnings:
        response["warnings"] = warnings
    return _review(response), outcome


_ALLOWED_HEAD: Final = (
    b'{"apiVersion":"' + ADMISSION_API_VERSION.encode() + b'","kind":"AdmissionReview","response":{"uid":'
)


def encode_answer(uid: str, result: MutationResult) -> tuple[bytes, Result]:
    """``orjson.dumps(review_for(uid, result)[0])`` and the label, written straight to bytes.

    The hot path: the patch is encoded once and its base64 goes into the body as is, instead of
    becoming a ``str`` that orjson would scan and copy again (3-4 kB per injected pod). Denials
    are rare and take :func:`review_for`; tests hold both to the same bytes.
    """
    outcome = result.outcome
    if outcome != "injected" and outcome != "skipped":
        answer, label = review_for(uid, result)
        return orjson.dumps(answer), label
    parts = [_ALLOWED_HEAD, orjson.dumps(uid), b',"allowed":true']
    if result.patch:
        patch = pybase64.b64encode(orjson.dumps(result.patch))  # SIMD: ~10x binascii on a 3 kB patch
        parts += (b',"patchType":"JSONPatch","patch":"', patch, b'"')
    if result.warnings:
        parts += (b',"warnings":', orjson.dumps([str(w) for w in result.warnings]))
    parts.append(b"}}")
    return b"".join(parts), outcome


def error_review(uid: str, message: str) -> AdmissionReview:
    """Fail closed: the pod opted in, so it is not admitted without its sidecar."""
    return _review({"uid": uid, "allowed": False, "status": {
        "code": 500, "reason": "InternalError", "status": "Failure", "message": message}})


def _bad_request(status: int, message: str) -> web.Response:
    code = "too_large" if status == 413 else "bad_request"
    return _json(status, {"error": {"code": code, "message": message}})


def _json(status: int, doc: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")


# --- the app ---------------------------------------------------------------------------------

def make_webhook_app(config: InjectionConfig, metrics: OperatorMetrics, *,
                     mutate: MutateFunction | None = None,
                     credential_check: Callable[..., Any] | None = None,
                     max_body: int = MAX_BODY_BYTES) -> web.Application:
    """``POST /mutate``, ``GET /healthz``, ``GET /metrics``. No global state: embed it anywhere."""
    if mutate is None:
        from taskcreds.operator.injection import mutate_pod

        # the patch is only ever serialized here: take its big values as ready JSON
        mutate = functools.partial(mutate_pod, encoded=True)
    mutate_fn: MutateFunction = mutate
    # label children resolved once: the hot path only increments
    counted = {r: metrics.admission_requests.labels(result=r) for r in RESULTS}
    unanswered = {r: metrics.webhook_unanswered_requests.labels(reason=r) for r in UNANSWERED_REASONS}
    observe = metrics.admission_duration.observe

    async def handle_mutate(request: web.Request) -> web.Response:
        started = time.perf_counter()
        # admission_requests_total counts AdmissionReviews: until one is parsed, a failure is the
        # client's (junk, too big, too slow, hung up) and goes to webhook_unanswered_requests_total,
        # so result="error" (TaskcredsWebhookErrors) means opted-in pods refused by our fault
        result: Result | None = None
        reason: UnansweredReason = "internal"
        try:
            if request.content_length is not None and request.content_length > max_body:
                reason = "too_large"
                return _bad_request(413, f"body is {request.content_length} bytes; at most {max_body} "
                                         "are accepted")
            try:
                async with asyncio.timeout(BODY_TIMEOUT):  # a body that never finishes must not pin a slot
                    body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                reason = "too_large"
                return _bad_request(413, f"body exceeds {max_body} bytes")
            except TimeoutError:
                reason = "timeout"
                return _bad_request(408, f"body not received within {BODY_TIMEOUT:g} s")
            except ConnectionError:
                # the client hung up mid-body: nobody reads an answer; routine, not our error
                reason = "disconnected"
                log.debug("admission request abandoned: the client hung up before its body arrived")
                return _bad_request(400, "the client hung up before the body arrived")
            except HttpProcessingError as exc:  # a body aiohttp cannot decode (chunking, length)
                reason = "malformed"
                return _bad_request(400, f"body could not be read ({type(exc).__name__})")
            try:
                review = parse_review(body)
            except BadReview as exc:
                reason = "too_large" if exc.status == 413 else "malformed"
                return _bad_request(exc.status, str(exc))
            result = "error"  # from here on a failure is ours: the API server gets no usable answer
            if review.kind is not None and review.kind != "Pod":
                result = "skipped"  # only Pods are ours; a wider webhook rule must not break others
                return _json(200, _review({"uid": review.uid, "allowed": True}))
            try:
                outcome = mutate_fn(review.pod, config, review.operation, namespace=review.namespace,
                                    credential_check=credential_check)
                body, result = encode_answer(review.uid, outcome)
            except Exception as exc:
                # type only: an exception's message could quote the pod, env values included
                log.error("mutation failed; pod denied (fail closed)", extra=fields(
                    uid=review.uid, namespace=review.namespace, error=type(exc).__name__))
                result = "error"
                body = orjson.dumps(error_review(
                    review.uid, f"taskcreds webhook internal error ({type(exc).__name__}); the pod "
                                "was not admitted so it never runs without its credentials sidecar"))
            return web.Response(body=body, content_type="application/json")
        except Exception as exc:  # last line: a 400 with a reason beats aiohttp's 500
            log.error("admission request failed", extra=fields(error=type(exc).__name__))
            return _bad_request(400, f"request could not be handled ({type(exc).__name__})")
        finally:
            if result is None:
                unanswered[reason].inc()
            else:
                counted[result].inc()
                observe(time.perf_counter() - started)

    async def handle_healthz(_: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def handle_metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    # one byte over the limit is enough for aiohttp to refuse; the handler answers the 413 itself
    app = web.Application(client_max_size=max_body)
    app.router.add_post("/mutate", handle_mutate)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/metrics", handle_metrics)
    return app


# --- taskcreds webhook -----------------------------------------------------------------------

async def serve(app: web.Application, tls: ReloadingCertificate, host: str, port: int,
                stop: asyncio.Event, *, poll_interval: float = 1.0,
                on_ready: Callable[[list[tuple[str, int]]], None] | None = None) -> None:
    """Serve ``app`` over TLS until ``stop`` is set; the certificate follows its files meanwhile.

    ``on_ready`` gets the bound (host, port) pairs once listening (port 0 picks a free port).
    """
    # deadlines for slow or stalled clients (the API server is neither): TLS handshake, idle
    # keep-alive (aiohttp applies it from the connection's start too) and, in the handler, the body
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0, keepalive_timeout=KEEPALIVE_TIMEOUT)
    await runner.setup()
    quiet_http_parser_errors()
    watcher: asyncio.Task[None] | None = None
    server: asyncio.base_events.Server | None = None
    try:
        assert runner.server is not None
        # asyncio's server rather than web.TCPSite: only it takes a TLS handshake deadline
        server = await asyncio.get_running_loop().create_server(
            runner.server, host, port, ssl=tls.context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            reuse_address=True, backlog=1024,
        )
        addresses = [(str(sock.getsockname()[0]), int(sock.getsockname()[1])) for sock in server.sockets]
        bound = [f"{h}:{p}" for h, p in addresses]
        expires = tls.not_after.isoformat() if tls.not_after else None
        log.info(
            "webhook serving",
            extra=fields(listen=bound, cert=str(tls.cert_file), cert_expires=expires, loop=loop_name()),
        )
        watcher = asyncio.create_task(tls.watch(poll_interval))
        if on_ready is not None:
            on_ready(addresses)
        await stop.wait()
        log.info("webhook stopping")
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if server is not None:
            server.close()
        await runner.cleanup()


def run_standalone(args: argparse.Namespace) -> int:
    """``taskcreds webhook``: exit 1 with one line on bad input; 0 after SIGINT/SIGTERM."""
    level = os.environ.get(names.ENV_LOG_LEVEL, "INFO").upper()
    setup_logging(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")

    def fail(message: str) -> int:
        print(f"taskcreds webhook: {message}", file=sys.stderr)
        return 1

    try:
        host, port = parse_listen(args.listen, variable="--listen")
    except SettingsError as exc:
        return fail(str(exc))
    try:
        from taskcreds.operator.config import ConfigError, load_config
    except ImportError as exc:
        return fail(f"the injection configuration module is not available in this build ({exc})")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return fail(f"--config {args.config}: " + "; ".join(exc.problems))
    except OSError as exc:
        return fail(f"--config {args.config}: {exc.strerror or exc}")
    metrics = register_operator()
    try:
        tls = ReloadingCertificate(args.tls_cert, args.tls_key, metrics=metrics)
    except TLSFilesError as exc:
        return fail(f"--tls-cert/--tls-key: {exc}")
    app = make_webhook_app(config, metrics)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await serve(app, tls, host, port, stop)
        except OSError as exc:
            return fail(f"--listen {args.listen}: cannot listen ({exc.strerror or exc})")
        return 0

    return run_loop(main())
