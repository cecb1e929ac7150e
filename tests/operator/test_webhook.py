"""The admission server over real TLS on loopback: what the kube-apiserver (and a prober) sees."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from taskcreds.operator import certificates as certs
from taskcreds.operator import webhook
from taskcreds.operator.tlsreload import ReloadingCertificate

from taskcreds.metrics import OperatorMetrics, register_operator

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "admission"
ROOT = Path(__file__).resolve().parents[2]


def load_review(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


# --- a stand-in for the pure mutation core: the server must have no rules of its own ---------

@dataclass(frozen=True)
class FakeResult:
    outcome: str
    patch: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    message: str | None = None


@dataclass
class Recorder:
    """Answers by the pod's ``case`` annotation and remembers how it was called."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, pod: dict[str, Any], config: Any, operation: str, *, namespace: str | None = None,
                 credential_check: Any = None) -> FakeResult:
        self.calls.append({"operation": operation, "namespace": namespace, "config": config,
                           "credential_check": credential_check})
        case = pod.get("metadata", {}).get("annotations", {}).get("case", "inject")
        if case == "raise":
            raise RuntimeError("boom: env GITHUB_TOKEN=s3cr3t-value")  # must never reach the answer
        if case == "nonsense":
            return FakeResult("maybe")
        if case == "skip":
            return FakeResult("skipped")
        if case == "deny":
            return FakeResult("denied", message="taskcreds.io/ttl: 'soon' is not a duration such as 15m")
        warning = "container agent: env GITHUB_TOKEN comes from a Secret"
        return FakeResult("injected", warnings=[warning], patch=[
            {"op": "add", "path": "/metadata/annotations/taskcreds.io~1injected", "value": "test"},
            {"op": "add", "path": "/spec/volumes/-", "value": {"name": "taskcreds",
                                                               "emptyDir": {"medium": "Memory"}}},
        ])


def review_with(case: str | None = None, **request: Any) -> dict[str, Any]:
    doc = load_review("opted-in-pod.json")
    if case is not None:
        doc["request"]["object"]["metadata"]["annotations"]["case"] = case
    doc["request"].update(request)
    return doc


# --- a real server on loopback ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    """A serving pair for 'localhost' from certificates.py, and its CA."""
    now = datetime.now(UTC)
    ca_cert, ca_key = certs.make_ca("webhook-test-ca", now)
    cert, key = certs.make_serving_cert(ca_cert, ca_key, ["localhost"], now)
    d = tmp_path_factory.mktemp("tls")
    certs.write_pair_atomically(d, cert, key)
    return d / "tls.crt", d / "tls.key", ca_cert


@dataclass
class Server:
    url: str
    metrics: OperatorMetrics
    mutate: Recorder
    session: aiohttp.ClientSession
    config: object

    async def post(self, body: bytes | dict[str, Any], **kw: Any) -> tuple[int, Any]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        async with self.session.post(self.url + "/mutate", data=data, server_hostname="localhost",
                                     headers={"Content-Type": "application/json"}, **kw) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    def count(self, result: str) -> float:
        return self.metrics.registry.get_sample_value(
            "taskcreds_admission_requests_total", {"result": result}) or 0.0

    def unanswered(self, reason: str) -> float:
        return self.metrics.registry.get_sample_value(
            "taskcreds_webhook_unanswered_requests_total", {"reason": reason}) or 0.0


@pytest.fixture
async def server(tls_files: tuple[Path, Path, bytes]) -> AsyncIterator[Server]:
    cert, key, ca = tls_files
    metrics = register_operator()
    tls = ReloadingCertificate(cert, key, metrics=metrics)
    mutate = Recorder()
    config = object()  # the server passes it through untouched
    app = webhook.make_webhook_app(config, metrics, mutate=mutate, credential_check=len)  # type: ignore[arg-type]
    stop = asyncio.Event()
    ready: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(webhook.serve(app, tls, "127.0.0.1", 0, stop, on_ready=ready.set_result))
    host, port = (await asyncio.wait_for(ready, 5))[0]
    client_ctx = ssl.create_default_context(cadata=ca.decode())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as session:
        yield Server(f"https://{host}:{port}", metrics, mutate, session, config)
    stop.set()
    await asyncio.wait_for(task, 10)


def decoded_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    return json.loads(base64.b64decode(response["patch"]))


# --- round trips -------------------------------------------------------------------------------

async def test_injected_pod_gets_a_jsonpatch_that_applies(server: Server) -> None:
    review = review_with()
    status, answer = await server.post(review)
    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(review["request"]["object"], decoded_patch(response))
    assert patched["metadata"]["annotations"]["taskcreds.io/injected"] == "test"
    assert patched["spec"]["volumes"][-1]["name"] == "taskcreds"
    assert response["warnings"] == ["container agent: env GITHUB_TOKEN comes from a Secret"]
    assert server.count("injected") == 1


async def test_mutate_gets_the_pod_operation_namespace_config_and_credential_check(server: Server) -> None:
    await server.post(review_with(operation="UPDATE", namespace="team-b"))
    assert server.mutate.calls == [{"operation": "UPDATE", "namespace": "team-b", "config": server.config,
                                    "credential_check": len}]


@pytest.mark.parametrize("case, allowed, has_patch, status_code, result", [
    ("skip", True, False, None, "skipped"),
    ("deny", False, False, 403, "denied"),
    ("raise", False, False, 500, "error"),
    ("nonsense", False, False, 500, "error"),
])
async def test_outcomes(server: Server, case: str, allowed: bool, has_patch: bool, status_code: int | None,
                        result: str) -> None:
    review = review_with(case)
    status, answer = await server.post(review)
    assert status == 200, "an answer about the pod is always a 200 AdmissionReview"
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is allowed
    assert ("patch" in response) is has_patch
    assert response.get("status", {}).get("code") == status_code
    assert server.count(result) == 1


async def test_denial_carries_the_message_a_person_acts_on(server: Server) -> None:
    _, answer = await server.post(review_with("deny"))
    assert answer["response"]["status"]["message"] == "taskcreds.io/ttl: 'soon' is not a duration such as 15m"


async def test_a_bug_in_mutate_fails_closed_without_leaking_its_message(server: Server) -> None:
    _, answer = await server.post(review_with("raise"))
    message = answer["response"]["status"]["message"]
    assert "RuntimeError" in message and "not admitted" in message
    assert "s3cr3t" not in json.dumps(answer)


async def test_other_kinds_are_allowed_untouched(server: Server) -> None:
    review = review_with(kind={"group": "apps", "version": "v1", "kind": "Deployment"})
    status, answer = await server.post(review)
    assert status == 200 and answer["response"] == {"uid": review["request"]["uid"], "allowed": True}
    assert server.mutate.calls == []


# --- junk ---------------------------------------------------------------------------------------

def _nested(depth: int) -> bytes:
    """A review whose pod holds a list ``depth`` levels deep (the review itself adds 4)."""
    doc = review_with()
    doc["request"]["object"]["spec"]["x"] = "NESTED"
    return json.dumps(doc).replace('"NESTED"', "[" * depth + "]" * depth).encode()


def _without(*path: str) -> dict[str, Any]:
    doc = review_with()
    target = doc
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return doc


JUNK: list[tuple[str, bytes | dict[str, Any], str]] = [
    ("empty body", b"", "empty body"),
    ("not JSON", b"hello", "not JSON"),
    ("truncated JSON", json.dumps(review_with()).encode()[:200], "not JSON"),
    ("not UTF-8", b'{"apiVersion": "\xff\xfe"}', "not UTF-8"),
    ("a JSON array", b"[1, 2]", "expected an AdmissionReview object"),
    ("a JSON string", b'"AdmissionReview"', "expected an AdmissionReview object"),
    ("v1beta1", review_with() | {"apiVersion": "admission.k8s.io/v1beta1"}, "expected apiVersion"),
    ("wrong kind", review_with() | {"kind": "Pod"}, "kind 'AdmissionReview'"),
    ("no request", _without("request"), "request: missing"),
    ("request is a list", review_with() | {"request": []}, "request: missing or not an object"),
    ("no uid", _without("request", "uid"), "request.uid"),
    ("uid is a number", review_with(uid=42), "request.uid"),
    ("empty uid", review_with(uid=""), "request.uid"),
    ("no object", _without("request", "object"), "request.object"),
    ("object is null", review_with(object=None), "request.object"),
    ("object is a string", review_with(object="pod"), "request.object"),
    ("bad operation", review_with(operation="PATCH"), "request.operation"),
    ("namespace is a number", review_with(namespace=7), "request.namespace"),
    ("kind is a string", review_with(kind="Pod"), "request.kind"),
    ("metadata is a list", review_with(object={"metadata": []}), "request.object.metadata"),
    ("nested 2000 deep", _nested(2000), "nested too deeply"),
    ("nested 100000 deep", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
]


@pytest.mark.parametrize("name, body, reason", JUNK, ids=[j[0] for j in JUNK])
async def test_junk_is_a_400_with_a_reason(server: Server, name: str, body: bytes | dict[str, Any],
                                           reason: str) -> None:
    status, answer = await server.post(body)
    assert status == 400, answer
    assert answer["error"]["code"] == "bad_request"
    assert reason in answer["error"]["message"]
    assert "Traceback" not in answer["error"]["message"]
    assert server.mutate.calls == []
    # not an admission: client junk must not trip TaskcredsWebhookErrors (result="error")
    assert [server.count(r) for r in webhook.RESULTS] == [0, 0, 0, 0]
    assert server.unanswered("malformed") == 1


async def test_nesting_within_the_limit_is_served(server: Server) -> None:
    status, _ = await server.post(_nested(webhook.MAX_DEPTH - 10))
    assert status == 200


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_3_mib_is_a_413(server: Server, chunked: bool) -> None:
    big = b"{" + b" " * webhook.MAX_BODY_BYTES + b"}"

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 1 << 20):
            yield big[i:i + (1 << 20)]

    status, answer = await server.post(chunks() if chunked else big)  # type: ignore[arg-type]
    assert status == 413
    assert answer["error"]["code"] == "too_large"
    assert str(webhook.MAX_BODY_BYTES) in answer["error"]["message"]
    assert (server.count("error"), server.unanswered("too_large")) == (0, 1)


async def test_a_body_just_under_the_limit_is_read(server: Server) -> None:
    doc = review_with()
    doc["request"]["object"]["metadata"]["annotations"]["padding"] = "x" * (webhook.MAX_BODY_BYTES - 10_000)
    status, answer = await server.post(doc)
    assert status == 200 and answer["response"]["allowed"] is True


async def _half_a_body(server: Server, ca: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open TLS to /mutate, promise a 1000-byte body and send only its start."""
    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(
        host, int(port), ssl=ssl.create_default_context(cadata=ca.decode()), server_hostname="localhost")
    writer.write(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"apiVersion\":")
    await writer.drain()
    return reader, writer


async def _until(predicate: Any) -> None:
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 - polling a counter, no event to wait on
            await asyncio.sleep(0.02)


async def test_a_client_hanging_up_mid_body_is_no_admission_error_and_no_error_log(
        server: Server, tls_files: tuple[Path, Path, bytes], caplog: pytest.LogCaptureFixture) -> None:
    """Any pod that can reach the port can do this: it must neither trip TaskcredsWebhookErrors
    nor flood the operator's ERROR log."""
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        _, writer = await _half_a_body(server, tls_files[2])
        await asyncio.sleep(0.05)
        writer.close()
    await _until(lambda: server.unanswered("disconnected") == 3)
    assert [server.count(r) for r in webhook.RESULTS] == [0, 0, 0, 0]
    loud = [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == []
    assert any(r.levelno == logging.DEBUG and "hung up" in r.getMessage() for r in caplog.records)


async def test_a_body_that_never_finishes_is_a_408_and_no_admission_error(
        server: Server, tls_files: tuple[Path, Path, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook, "BODY_TIMEOUT", 0.2)
    reader, writer = await _half_a_body(server, tls_files[2])
    try:
        status_line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    assert (server.count("error"), server.unanswered("timeout")) == (0, 1)


async def test_a_valid_review_after_client_mistakes_is_still_counted(server: Server) -> None:
    """The counters stay per outcome: junk and a hang-up do not hide or dilute real results."""
    await server.post(b"junk")
    await server.post(review_with("raise"))
    await server.post(review_with("inject"))
    assert [server.count(r) for r in webhook.RESULTS] == [1, 0, 0, 1]
    assert server.unanswered("malformed") == 1


async def test_wrong_method_is_not_a_500(server: Server) -> None:
    async with server.session.get(server.url + "/mutate", server_hostname="localhost") as resp:
        assert resp.status == 405


# --- health and metrics --------------------------------------------------------------------

async def test_healthz(server: Server) -> None:
    async with server.session.get(server.url + "/healthz", server_hostname="localhost") as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ok"}


async def test_metrics_endpoint_shows_counters_duration_and_certificate_expiry(
        server: Server, tls_files: tuple[Path, Path, bytes]) -> None:
    for case in ("inject", "inject", "skip", "deny", "raise"):
        await server.post(review_with(case))
    await server.post(b"junk")
    async with server.session.get(server.url + "/metrics", server_hostname="localhost") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    count = lambda r: samples[("taskcreds_admission_requests_total", (("result", r),))]  # noqa: E731
    # the junk body is no admission: only the bug in mutate ("raise") is an error
    assert (count("injected"), count("skipped"), count("denied"), count("error")) == (2, 1, 1, 1)
    assert samples[("taskcreds_admission_duration_seconds_count", ())] == 5
    assert samples[("taskcreds_webhook_unanswered_requests_total", (("reason", "malformed"),))] == 1
    expiry = certs.not_after(tls_files[0].read_bytes()).timestamp()
    assert samples[("taskcreds_webhook_certificate_expiry_timestamp_seconds", ())] == expiry


# --- the pure decoder, without a server -----------------------------------------------------

def test_parse_review_reads_the_fixture() -> None:
    parsed = webhook.parse_review((FIXTURES / "opted-in-pod.json").read_bytes())
    assert (parsed.uid, parsed.operation, parsed.namespace, parsed.kind) == (
        "705ab4f5-6393-11e8-b7cc-42010a800002", "CREATE", "team-a", "Pod")
    assert parsed.pod["metadata"]["labels"]["taskcreds.io/inject"] == "true"


def test_review_for_an_empty_patch_has_no_patch_type() -> None:
    review, result = webhook.review_for("u", FakeResult("injected"))
    assert review["response"] == {"uid": "u", "allowed": True} and result == "injected"


def _golden_results() -> list[Any]:
    from tests.operator.test_injection_golden import CASES

    return [case() for _, case in sorted(CASES.items())]


@pytest.mark.parametrize("result", [
    pytest.param(FakeResult("injected"), id="injected-no-patch"),
    pytest.param(FakeResult("skipped", warnings=["w \u00e9 \"quoted\""]), id="skipped-with-warning"),
    pytest.param(FakeResult("injected", patch=[{"op": "add", "path": "/a~1b", "value": {"k": [1, None]}}],
                            warnings=["one", "two"]), id="injected-with-warnings"),
    pytest.param(FakeResult("denied", message="no"), id="denied"),
    pytest.param(FakeResult("denied"), id="denied-without-message"),
    *(pytest.param(r, id=f"golden-{i}") for i, r in enumerate(_golden_results())),
])
@pytest.mark.parametrize("uid", ["705ab4f5-6393-11e8-b7cc-42010a800002", 'odd "uid" \\ \u2603'])
def test_the_fast_encoder_writes_the_same_bytes_as_the_reference(result: Any, uid: str) -> None:
    """encode_answer is the hot path's shortcut; review_for + orjson is the readable reference."""
    review, label = webhook.review_for(uid, result)
    body, fast_label = webhook.encode_answer(uid, result)
    assert (body, fast_label) == (orjson.dumps(review), label)
    assert json.loads(body) == review


def test_the_fast_encoder_refuses_an_unknown_outcome_like_the_reference() -> None:
    with pytest.raises(TypeError, match="outcome 'maybe'"):
        webhook.encode_answer("u", FakeResult("maybe"))


# --- taskcreds webhook, as a real subprocess ---------------------------------------------------

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "taskcreds.cli", "webhook", *args]


@pytest.mark.parametrize("name, args, message", [
    ("listen without port", ["--listen", "localhost"], "--listen: 'localhost' is not HOST:PORT"),
    ("listen with a word port", ["--listen", "127.0.0.1:https"], "is not HOST:PORT"),
    ("missing certificate file", ["--listen", "127.0.0.1:0", "--tls-cert", "/nonexistent/tls.crt"],
     "cannot read /nonexistent/tls.crt"),
    ("key of another pair", ["--listen", "127.0.0.1:0", "--tls-key", "OTHER_KEY"], "does not belong"),
    ("certificate file holds a key", ["--listen", "127.0.0.1:0", "--tls-cert", "KEY"],
     "does not hold a PEM certificate"),
    ("missing config", ["--listen", "127.0.0.1:0", "--config", "/nonexistent/config.yaml"], "--config"),
    ("port in use", ["--listen", "BUSY"], "cannot listen"),
    ("config with bad values", ["--listen", "127.0.0.1:0", "--config", "BAD_CONFIG"],
     "sidecar.probePort: 99999 is not a TCP port (1-65535); injection.mountPath: 'relative'"),
])
def test_cli_refuses_bad_arguments_with_one_line(tls_files: tuple[Path, Path, bytes], tmp_path: Path,
                                                 name: str, args: list[str], message: str) -> None:
    cert, key, _ = tls_files
    other_key = tmp_path / "other.key"
    other_key.write_bytes(certs.make_ca("other", datetime.now(UTC))[1])
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        bad_config = tmp_path / "config.yaml"
        bad_config.write_text("sidecar: {probePort: 99999}\ninjection: {mountPath: relative}\n")
        subst = {"OTHER_KEY": str(other_key), "KEY": str(key), "BAD_CONFIG": str(bad_config),
                 "BUSY": f"127.0.0.1:{busy.getsockname()[1]}"}
        args = [subst.get(a, a) for a in args]
        defaults = (("--tls-cert", str(cert)), ("--tls-key", str(key)))
        full = args + sum(([flag, value] for flag, value in defaults if flag not in args), [])
        proc = subprocess.run(_cli(*full), capture_output=True, text=True, timeout=30, cwd=ROOT)
    finally:
        busy.close()
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("taskcreds webhook: ") and message in last, proc.stderr
    assert "Traceback" not in proc.stderr


async def test_cli_serves_healthz_over_tls_and_exits_0_on_sigterm(
        tls_files: tuple[Path, Path, bytes]) -> None:
    cert, key, ca = tls_files
    proc = await asyncio.create_subprocess_exec(
        *_cli("--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)),
        stderr=asyncio.subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stderr is not None
        port = None
        while port is None:
            line = await asyncio.wait_for(proc.stderr.readline(), 20)
            assert line, "the webhook exited before serving"
            record = json.loads(line)
            if record["msg"] == "webhook serving":
                port = int(record["listen"][0].rsplit(":", 1)[1])
                assert record["loop"] == "uvloop", "the webhook CLI runs on the operator's loop"
        client_ctx = ssl.create_default_context(cadata=ca.decode())
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as session:
            async with session.get(f"https://127.0.0.1:{port}/healthz", server_hostname="localhost") as resp:
                assert resp.status == 200 and await resp.json() == {"status": "ok"}
            status, answer = await _post_json(session, port, load_review("plain-pod.json"))
            assert status == 200 and answer["response"]["uid"] == "9a4f1a1c-0d7e-4b0e-9b57-1c0b8e6f3a10"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        rest = (await proc.stderr.read()).decode()
        assert all(json.loads(line) for line in rest.splitlines()), "every log line is JSON"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _post_json(session: aiohttp.ClientSession, port: int, body: dict[str, Any]) -> tuple[int, Any]:
    url = f"https://127.0.0.1:{port}/mutate"
    async with session.post(url, json=body, server_hostname="localhost") as resp:
        return resp.status, await resp.json()


# --- with the real mutation core and the default configuration -------------------------------

@pytest.fixture
async def real_server(tls_files: tuple[Path, Path, bytes]) -> AsyncIterator[Server]:
    from taskcreds.operator.config import load_config

    cert, key, ca = tls_files
    metrics = register_operator()
    tls = ReloadingCertificate(cert, key, metrics=metrics)
    config = load_config(None)
    app = webhook.make_webhook_app(config, metrics)
    stop = asyncio.Event()
    ready: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(webhook.serve(app, tls, "127.0.0.1", 0, stop, on_ready=ready.set_result))
    host, port = (await asyncio.wait_for(ready, 5))[0]
    client_ctx = ssl.create_default_context(cadata=ca.decode())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as session:
        yield Server(f"https://{host}:{port}", metrics, Recorder(), session, config)
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_real_opted_in_pod_is_injected_once(real_server: Server) -> None:
    review = load_review("opted-in-pod.json")
    status, answer = await real_server.post(review)
    response = answer["response"]
    assert status == 200 and response["allowed"] is True and response["patchType"] == "JSONPatch"
    pod = jsonpatch.apply_patch(review["request"]["object"], decoded_patch(response))
    assert pod["spec"]["initContainers"][0]["name"] == "taskcreds-sidecar"
    assert {"name": "TASKCREDS_DIR", "value": "/run/taskcreds"} in pod["spec"]["containers"][0]["env"]
    # reinvocation / retry: the injected pod comes back and is left alone
    review["request"]["object"] = pod
    _, again = await real_server.post(review)
    assert again["response"]["allowed"] is True and "patch" not in again["response"]
    assert (real_server.count("injected"), real_server.count("skipped")) == (1, 1)


@pytest.mark.parametrize("fixture, allowed, result, says", [
    ("plain-pod.json", True, "skipped", None),
    ("malformed-ttl-pod.json", False, "denied", "taskcreds.io/ttl"),
    ("static-secret-env-pod.json", True, "injected", "GITHUB_TOKEN"),
])
async def test_real_fixtures(real_server: Server, fixture: str, allowed: bool, result: str,
                             says: str | None) -> None:
    review = load_review(fixture)
    _, answer = await real_server.post(review)
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"] and response["allowed"] is allowed
    assert real_server.count(result) == 1
    if not allowed:
        assert response["status"]["code"] == 403 and says in response["status"]["message"]
    elif says:
        assert any(says in w for w in response["warnings"])
