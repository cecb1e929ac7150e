"""Fuzzing the broker: every endpoint, the real app, real SPIFFE mTLS on loopback, a valid SVID and token.

Whatever arrives — random bytes, truncated or deeply nested JSON, wrong types, unicode and NUL in
names, path traversal, oversize bodies, wrong content types, bogus methods and paths — the answer
is never a 5xx, always JSON, every error names its stable code and says what was wrong, no log
record is at ERROR or carries a traceback or a value (broker_harness), and afterwards a valid
request still gets its credential. ``TASKCREDS_FUZZ_EXAMPLES=5000`` runs it longer.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import tracemalloc
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from taskcreds.operator.broker.settings import MAX_BODY_BYTES

from tests.fuzz.broker_harness import (
    POD,
    REVOKE_POD,
    TASK,
    BrokerAnswer,
    LogWatch,
    ThreadedBroker,
    check_broker_answer,
    status_path,
)
from tests.fuzz.harness import EXAMPLES, EXTENDED
from tests.fuzz.strategies import json_values

pytestmark = pytest.mark.timeout(0 if EXTENDED else 120)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

#: endpoint -> (method, path for the healthy pod, a valid body, its fields)
BODY_ENDPOINTS: dict[str, tuple[str, dict[str, Any]]] = {
    "issue": ("/v1/credentials", {"task": TASK, "credentials": ["api"], "ttl": "5m"}),
    "renew": ("/v1/credentials/api/renew", {"task": TASK, "leaseRef": "jwt:nope:1", "ttl": "5m"}),
    "revoke": (f"/v1/tasks/{TASK}/revoke", {"reason": "sigterm"}),
}

#: strings that have broken parsers, path handling or messages elsewhere
NASTY = [
    "",
    " ",
    "\x00",
    "fix-42\x00",
    "../../etc/passwd",
    "..",
    "/",
    "%2e%2e%2f",
    "..%2fsecrets",
    "a/../b",
    "\\..\\..\\windows",
    "\u202e\u0000\ud7ff",
    "\U0001f600" * 50,
    "x" * 5000,
    "fix-42 ",
    "FIX-42",
    "fix-42\n",
    "${jndi:ldap://x}",
    "{{7*7}}",
    "'; DROP TABLE leases; --",
]
nasty_text = st.sampled_from(NASTY) | st.text(max_size=64)


@pytest.fixture(scope="module")
def broker(broker_server: ThreadedBroker, log_watch: LogWatch) -> Iterator[ThreadedBroker]:
    """The module's broker; after every test a valid request still succeeds and the logs are clean."""
    log_watch.take()
    yield broker_server


@pytest.fixture(autouse=True)
def still_healthy(broker: ThreadedBroker, log_watch: LogWatch) -> Iterator[None]:
    yield
    answer = broker.issue_ok()
    assert answer.status == 200, answer.body[:300]
    log_watch.check()


def send(
    broker: ThreadedBroker,
    watch: LogWatch,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    pod: str = POD,
    headers: dict[str, str] | None = None,
) -> BrokerAnswer:
    """One request as a sidecar of ``pod``; the answer and the logs must keep the property."""
    client = _clients(broker, pod)
    answer = broker.request(client, method, path, body, headers)
    check_broker_answer(answer, secrets=[client.token or ""])
    watch.secrets.add(client.token or "")
    watch.check()
    return answer


_CLIENTS: dict[tuple[int, str], Any] = {}


def _clients(broker: ThreadedBroker, pod: str) -> Any:
    """One client per (broker, pod): keep-alive connections, a single TokenReview."""
    key = (id(broker), pod)
    if key not in _CLIENTS:
        _CLIENTS[key] = broker.client(pod)
    return _CLIENTS[key]


def _endpoint(name: str) -> tuple[str, str]:
    path, _ = BODY_ENDPOINTS[name]
    return path, REVOKE_POD if name == "revoke" else POD


# --- bodies -----------------------------------------------------------------------------------


@FUZZ
@given(endpoint=st.sampled_from(sorted(BODY_ENDPOINTS)), body=st.binary(max_size=2048))
@example(endpoint="issue", body=b"")
@example(endpoint="issue", body=b"\xef\xbb\xbf{}")
@example(endpoint="renew", body=b"\xff\xfe\x00{")
@example(endpoint="issue", body=b"null")
@example(endpoint="issue", body=b'"\\ud800"')
def test_random_bytes(broker: ThreadedBroker, log_watch: LogWatch, endpoint: str, body: bytes) -> None:
    path, pod = _endpoint(endpoint)
    send(broker, log_watch, "POST", path, body, pod=pod)


@FUZZ
@given(endpoint=st.sampled_from(sorted(BODY_ENDPOINTS)), data=st.data())
def test_truncated_valid_bodies(
    broker: ThreadedBroker, log_watch: LogWatch, endpoint: str, data: Any
) -> None:
    path, pod = _endpoint(endpoint)
    full = json.dumps(BODY_ENDPOINTS[endpoint][1]).encode()
    cut = data.draw(st.integers(0, len(full) - 1), label="cut")
    answer = send(broker, log_watch, "POST", path, full[:cut], pod=pod)
    # only the empty body is valid JSON-by-default ({}); every real truncation is a 400 naming JSON
    if cut > 0 and endpoint != "revoke":
        assert answer.status == 400 and "JSON" in answer.json()["error"]["message"], answer.body


@FUZZ
@given(endpoint=st.sampled_from(sorted(BODY_ENDPOINTS)), doc=json_values)
def test_random_json(broker: ThreadedBroker, log_watch: LogWatch, endpoint: str, doc: Any) -> None:
    path, pod = _endpoint(endpoint)
    answer = send(broker, log_watch, "POST", path, json.dumps(doc).encode(), pod=pod)
    if not isinstance(doc, dict):
        assert answer.status == 400 and "JSON object" in answer.json()["error"]["message"]


@FUZZ
@given(
    endpoint=st.sampled_from(sorted(BODY_ENDPOINTS)),
    data=st.data(),
    value=json_values | nasty_text | st.lists(nasty_text, max_size=8),
)
def test_every_field_with_any_value(
    broker: ThreadedBroker, log_watch: LogWatch, endpoint: str, data: Any, value: Any
) -> None:
    """One field of a valid body replaced (or removed, or an unknown one added): refused by name."""
    path, pod = _endpoint(endpoint)
    doc = dict(BODY_ENDPOINTS[endpoint][1])
    key = data.draw(st.sampled_from([*doc, "extra", "Task", ""]), label="field")
    remove = data.draw(st.booleans(), label="remove") and key in doc
    if remove:
        del doc[key]
    else:
        doc[key] = value
    answer = send(broker, log_watch, "POST", path, json.dumps(doc).encode(), pod=pod)
    if answer.status == 400:
        message = answer.json()["error"]["message"]
        assert key in message or "JSON" in message or "task" in message or "ttl" in message, message


@FUZZ
@given(name=nasty_text, task=nasty_text, use_task_field=st.booleans(), raw_slashes=st.booleans())
@example(name="../../secrets/x", task=TASK, use_task_field=False, raw_slashes=True)
@example(name="api", task="../" + TASK, use_task_field=True, raw_slashes=True)
@example(name="api\x00", task=TASK + "\x00", use_task_field=True, raw_slashes=False)
def test_names_in_paths_and_bodies(
    broker: ThreadedBroker, log_watch: LogWatch, name: str, task: str, use_task_field: bool, raw_slashes: bool
) -> None:
    """Credential and task names with traversal, NUL, unicode: a 4xx naming them, never a lookup gone astray."""
    safe = "/." if raw_slashes else ""
    renew = {"task": task if use_task_field else TASK, "leaseRef": "jwt:x:1"}
    answers = [
        send(
            broker,
            log_watch,
            "POST",
            f"/v1/credentials/{quote(name, safe=safe)}/renew",
            json.dumps(renew).encode(),
        ),
        send(
            broker,
            log_watch,
            "POST",
            "/v1/credentials",
            json.dumps({"task": task, "credentials": [name]}).encode(),
        ),
        send(broker, log_watch, "GET", f"/v1/tasks/{quote(task, safe=safe)}/status?wait=10ms"),
        send(broker, log_watch, "POST", f"/v1/tasks/{quote(task, safe=safe)}/revoke", b"{}", pod=REVOKE_POD),
    ]
    for answer in answers:
        if answer.status == 200:  # only the pod's own task and credential names get anywhere
            assert task == TASK or (answer is answers[0] and not use_task_field)


@FUZZ
@given(
    wait=nasty_text | st.sampled_from(["1h", "0s", "-1s", "999999999h", "1e9s", "0.0001ms"]), known=nasty_text
)
def test_status_query(broker: ThreadedBroker, log_watch: LogWatch, wait: str, known: str) -> None:
    answer = send(broker, log_watch, "GET", status_path(wait=wait, known=known))
    if answer.status == 200:
        doc = answer.json()
        assert doc["task"] == TASK and doc["terminal"] is False and doc["status"] == "running"


# --- methods, paths, headers --------------------------------------------------------------------

PATHS = [
    "/v1/credentials",
    "/v1/credentials/api/renew",
    f"/v1/tasks/{TASK}/revoke",
    f"/v1/tasks/{TASK}/status",
    "/.well-known/jwks.json",
    "/v1/jwt/revoked",
    "/healthz",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "BREW"]


@FUZZ
@given(
    method=st.sampled_from(METHODS),
    path=st.sampled_from(PATHS)
    | st.builds(
        lambda p, s: p + s, st.sampled_from(PATHS), st.sampled_from(["/", "//", "/..", "?x=1", "/%00"])
    )
    | st.text(alphabet="/.%az09-_~", max_size=40).map(lambda p: "/" + p),
)
@example(method="BREW", path="/v1/credentials")  # aiohttp answered text/plain quoting the request line
def test_methods_and_paths(broker: ThreadedBroker, log_watch: LogWatch, method: str, path: str) -> None:
    pod = REVOKE_POD if "revoke" in path else POD
    client = _clients(broker, pod)
    answer = broker.request(client, method, path, b"{}" if method in ("POST", "PUT", "PATCH") else None)
    if method == "HEAD":
        assert answer.status < 500 and answer.body == b""
        return
    check_broker_answer(answer, secrets=[client.token or ""])
    log_watch.check()


CONTENT_TYPES = [
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/json; charset=latin-1",
    "",
    "\u00e9/\u00e9".encode().decode("latin-1"),
]


@FUZZ
@given(
    content_type=st.sampled_from(CONTENT_TYPES),
    authorization=st.sampled_from(["", "Bearer", "Bearer ", "Basic abc", "bearer x", "Bearer " + "A" * 20000])
    | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
)
@example(content_type="application/json", authorization="Bearer " + "A" * 20000)  # was echoed back
def test_headers(broker: ThreadedBroker, log_watch: LogWatch, content_type: str, authorization: str) -> None:
    body = json.dumps(BODY_ENDPOINTS["issue"][1]).encode()
    client = _clients(broker, POD)
    answer = broker.request(client, "POST", "/v1/credentials", body, {"Content-Type": content_type})
    check_broker_answer(answer, secrets=[client.token or ""])
    forged = broker.request(client, "POST", "/v1/credentials", body, {"Authorization": authorization})
    check_broker_answer(forged, secrets=[client.token or ""])
    message = forged.json()["error"]["message"]
    if len(authorization) < 8000:  # one of three fixed messages: the header is never quoted
        assert forged.status == 401 and message in AUTH_MESSAGES, message
    else:  # over aiohttp's header line limit: refused by the parser, as JSON, echoing nothing
        assert (forged.status, message) == (400, "malformed HTTP request (LineTooLong); nothing was done")
    log_watch.check()


AUTH_MESSAGES = {
    "missing Authorization: Bearer <projected service-account token>",
    "Authorization must be 'Bearer <projected service-account token>'",
    "the bearer token is not authenticated for audience 'taskcreds'",
}


# --- extreme shapes and sizes -------------------------------------------------------------------


def _issue_with(value_json: str) -> bytes:
    return b'{"task": "fix-42", "credentials": ' + value_json.encode() + b"}"


def _padded(size: int) -> bytes:
    base = _issue_with(json.dumps(["api"]))
    return base[:-1] + b" " * (size - len(base)) + b"}"


SHAPES: list[tuple[str, str, bytes, int]] = [
    ("nested lists 30k levels", "/v1/credentials", _issue_with("[" * 30_000 + "]" * 30_000), 400),
    ("nested objects 10k levels", "/v1/credentials", _issue_with('{"a":' * 10_000 + "1" + "}" * 10_000), 400),
    ("nested 60k levels, unterminated", "/v1/credentials", b"[" * 60_000, 400),
    ("whole body nested 30k", f"/v1/tasks/{TASK}/revoke", b"[" * 30_000 + b"]" * 30_000, 400),
    (
        "ttl nested 20k",
        "/v1/credentials/api/renew",
        b'{"task":"fix-42","leaseRef":"x","ttl":' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        400,
    ),
    ("integer of 5000 digits", "/v1/credentials", _issue_with("1" + "0" * 5000), 400),
    ("lone surrogate name", "/v1/credentials", _issue_with('["\\ud800"]'), 403),
    ("NUL in a name", "/v1/credentials", _issue_with('["api\\u0000"]'), 403),
    ("60 KB string name", "/v1/credentials", _issue_with(json.dumps(["a" * 60_000])), 403),
    ("6k distinct names", "/v1/credentials", _issue_with(json.dumps([f"c{i}" for i in range(6_000)])), 403),
    ("9k copies of a granted name", "/v1/credentials", _issue_with(json.dumps(["api"] * 9_000)), 200),
    ("duplicate keys, last wins", "/v1/credentials", b'{"task": "nope", "task": "fix-42"}', 200),
    ("reason of 65 characters", f"/v1/tasks/{TASK}/revoke", json.dumps({"reason": "r" * 65}).encode(), 400),
    (
        "leaseRef of 60 KB",
        "/v1/credentials/api/renew",
        json.dumps({"task": TASK, "leaseRef": "x" * 60_000}).encode(),
        404,
    ),
    ("exactly the limit", "/v1/credentials", _padded(MAX_BODY_BYTES), 200),
    ("one byte over the limit", "/v1/credentials", _padded(MAX_BODY_BYTES + 1), 413),
]


@pytest.mark.parametrize(("name", "path", "body", "expected"), SHAPES, ids=[s[0] for s in SHAPES])
def test_extreme_shapes(
    broker: ThreadedBroker, log_watch: LogWatch, name: str, path: str, body: bytes, expected: int
) -> None:
    pod = REVOKE_POD if "revoke" in path else POD
    if name.startswith(("exactly", "one byte")):
        assert len(body) == MAX_BODY_BYTES + (name.startswith("one byte")), len(body)
    else:
        assert len(body) <= MAX_BODY_BYTES, f"{name} is {len(body)} bytes"
    answer = send(broker, log_watch, "POST", path, body, pod=pod)
    assert answer.status == expected, answer.body[:300]


def test_many_names_do_not_fan_out_to_the_api_server(broker: ThreadedBroker, log_watch: LogWatch) -> None:
    """A request naming 6,000 credentials is refused by the pod's annotation, before any lookup.

    Found by this suite: the broker resolved every requested name (two API GETs each for a name
    that exists nowhere) before checking that the pod asked for it — one 64 KiB request became
    20,000 API server calls.
    """
    before = broker.cluster_calls()
    body = _issue_with(json.dumps([f"c{i}" for i in range(6_000)]))
    answer = send(broker, log_watch, "POST", "/v1/credentials", body)
    assert answer.status == 403 and "'c0' is not in pod" in answer.json()["error"]["message"]
    after = broker.cluster_calls()
    lookups = sum(after.get(k, 0) - before.get(k, 0) for k in after if "credential_source" in k)
    assert lookups <= 4, f"{lookups} CredentialSource lookups for one refused request"


def _chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    view = memoryview(data)
    for i in range(0, len(view), size):
        yield bytes(view[i : i + size])


@pytest.mark.parametrize("how", ["content-length", "chunked"])
@pytest.mark.parametrize("path", ["/v1/credentials", "/v1/credentials/api/renew", f"/v1/tasks/{TASK}/revoke"])
def test_oversize_bodies_are_413(broker: ThreadedBroker, log_watch: LogWatch, how: str, path: str) -> None:
    big = b'{"task": "' + b"a" * (MAX_BODY_BYTES * 2) + b'"}'
    pod = REVOKE_POD if "revoke" in path else POD
    client = _clients(broker, pod)
    answer = broker.request(client, "POST", path, _chunks(big) if how == "chunked" else big)
    assert check_broker_answer(answer) == "413"
    assert str(MAX_BODY_BYTES) in answer.json()["error"]["message"]
    log_watch.check()


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_memory_stays_bounded_under_oversize_bodies(broker: ThreadedBroker, log_watch: LogWatch) -> None:
    """8 clients x 4 rounds of 4 MiB bodies (declared and chunked): the broker never holds them whole."""
    body = b'{"task": "' + b"a" * (4 * 1024 * 1024) + b'"}'  # made before measuring
    clients, rounds = 8, 4
    statuses: list[int] = []
    errors: list[BaseException] = []

    def send_many(i: int) -> None:
        client = broker.client(POD)
        for r in range(rounds):
            try:
                chunked = (i + r) % 2 == 1
                answer = broker.request(client, "POST", "/v1/credentials", _chunks(body) if chunked else body)
                statuses.append(answer.status)
            except (ConnectionError, OSError) as exc:  # a refused upload may be cut off early
                errors.append(exc)

    gc.collect()
    rss_before = _rss()
    tracemalloc.start()
    try:
        threads = [threading.Thread(target=send_many, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    gc.collect()
    growth = _rss() - rss_before
    assert not any(t.is_alive() for t in threads)
    assert statuses and set(statuses) == {413}, (statuses, errors)
    assert len(statuses) >= clients * rounds // 2, errors
    # a broker reading these whole would hold 8 x 4 MiB at once (and the client side is counted too)
    bound = 16 * 1024 * 1024
    assert peak < bound, f"traced peak {peak / 2**20:.1f} MiB; bound {bound / 2**20:.0f} MiB"
    assert growth < 48 * 1024 * 1024, f"RSS grew {growth / 2**20:.1f} MiB"
    log_watch.check()
