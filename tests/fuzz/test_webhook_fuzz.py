"""Fuzzing the admission webhook: the real app, the real mutate_pod, real TLS on loopback.

Whatever arrives, the answer is a 400/413 JSON error with a reason or a well-formed AdmissionReview
echoing the request's uid; a patch always applies and keeps a valid pod valid (harness.check_answer).
``TASKCREDS_FUZZ_EXAMPLES=5000`` runs every property longer locally (and keeps what breaks under
corpus/ to triage).
"""

from __future__ import annotations

import gc
import json
import threading
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from taskcreds.operator import webhook
from taskcreds.operator.config import InjectionConfig
from taskcreds.operator.injection import MutationResult, mutate_pod

from tests.fuzz.harness import EXAMPLES, EXTENDED, Answer, ThreadedWebhook, check_answer, remember
from tests.fuzz.strategies import (
    FIXTURE_REVIEW,
    field_paths,
    json_objects,
    json_values,
    pods,
    replaced,
    review_bytes,
    reviews_of,
)

#: an extended local run may take minutes per property; CI keeps the project's 120 s per test
pytestmark = pytest.mark.timeout(0 if EXTENDED else 120)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
FIXTURE_BYTES = review_bytes(FIXTURE_REVIEW)
PATHS = field_paths(FIXTURE_REVIEW)


def exercise(
    server: ThreadedWebhook, body: bytes, headers: dict[str, str] | None = None, *, validate: bool = True
) -> str:
    """Send ``body``; assert the answer's property; keep the input when it breaks (extended runs)."""
    answer = server.post(body, headers)
    try:
        return check_answer(body, answer, validate=validate)
    except Exception:
        remember(body, "untriaged")
        raise


# --- bytes, JSON, reviews ---------------------------------------------------------------------


@FUZZ
@given(body=st.binary(max_size=2048))
@example(body=b"")
@example(body=b"\xff\xfe\x00{")
@example(body=b"\xef\xbb\xbf{}")  # a UTF-8 byte-order mark
def test_random_bytes(webhook_server: ThreadedWebhook, body: bytes) -> None:
    assert exercise(webhook_server, body) == "400"


@FUZZ
@given(cut=st.integers(0, len(FIXTURE_BYTES) - 1))
def test_truncated_reviews_are_400(webhook_server: ThreadedWebhook, cut: int) -> None:
    assert exercise(webhook_server, FIXTURE_BYTES[:cut]) == "400"


@FUZZ
@given(data=st.data())
def test_byte_flips_in_a_real_review(webhook_server: ThreadedWebhook, data: st.DataObject) -> None:
    body = bytearray(FIXTURE_BYTES)
    for _ in range(data.draw(st.integers(1, 8))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    exercise(webhook_server, bytes(body))


@FUZZ
@given(doc=json_values)
def test_random_json(webhook_server: ThreadedWebhook, doc: Any) -> None:
    exercise(webhook_server, review_bytes(doc))


@FUZZ
@given(path=st.sampled_from(PATHS), value=json_values, delete=st.integers(0, 4).map(lambda n: n == 0))
def test_wrong_type_at_every_field(
    webhook_server: ThreadedWebhook, path: tuple[Any, ...], value: Any, delete: bool
) -> None:
    """Every member of a real AdmissionReview, replaced by any JSON value (or removed)."""
    exercise(webhook_server, review_bytes(replaced(FIXTURE_REVIEW, path, value, delete)))


WRONG_TYPES: list[Any] = [None, -1, 1.5, True, "x", [None], {"": None}]  # one of each JSON type


def test_every_field_with_every_wrong_type(webhook_server: ThreadedWebhook) -> None:
    """Exhaustive, not sampled: each member of the fixture review, set to each JSON type, or removed."""
    failures = []
    for path in PATHS:
        for value in [*WRONG_TYPES, "DELETE"]:
            body = review_bytes(replaced(FIXTURE_REVIEW, path, value, delete=value == "DELETE"))
            try:
                exercise(webhook_server, body, validate=False)  # validity: test_plausible_pods
            except AssertionError as exc:
                failures.append(f"{'.'.join(map(str, path))} = {value!r}: {str(exc)[:200]}")
    assert len(PATHS) > 80
    assert not failures, "\n".join(failures)


@FUZZ
@given(
    pod=pods(),
    operation=st.sampled_from(["CREATE"] * 6 + ["UPDATE", "DELETE", "CONNECT"]),
    namespace=st.sampled_from(["team-a", None, ""]),
)
def test_plausible_pods(
    webhook_server: ThreadedWebhook, pod: dict[str, Any], operation: str, namespace: str | None
) -> None:
    """Valid pods with random taskcreds annotations: never a 400, and a valid pod stays valid."""
    outcome = exercise(webhook_server, review_bytes(reviews_of(pod, operation, namespace)))
    assert outcome in ("injected", "skipped", "denied")
    if operation != "CREATE":
        assert outcome == "skipped"


@FUZZ
@given(pod=pods(), path_and_value=st.data())
def test_plausible_pods_with_one_field_broken(
    webhook_server: ThreadedWebhook, pod: dict[str, Any], path_and_value: st.DataObject
) -> None:
    """Hand-written manifests: one member of a plausible pod turned into any JSON value."""
    path = path_and_value.draw(st.sampled_from(field_paths(pod)))
    broken = replaced(pod, path, path_and_value.draw(json_values))
    exercise(webhook_server, review_bytes(reviews_of(broken)))


# --- sizes and shapes chosen by hand ------------------------------------------------------------


def _with_pod_field(value_json: str) -> bytes:
    doc = reviews_of(json.loads(json.dumps(FIXTURE_REVIEW["request"]["object"])))
    doc["request"]["object"]["spec"]["x"] = "PLACEHOLDER"
    return review_bytes(doc).replace(b'"PLACEHOLDER"', value_json.encode())


SHAPES: list[tuple[str, bytes, str]] = [
    ("nested lists 10k levels", _with_pod_field("[" * 10_000 + "]" * 10_000), "400"),
    ("nested objects 10k levels", _with_pod_field('{"a":' * 10_000 + "1" + "}" * 10_000), "400"),
    ("nested 10k levels, unterminated", b"[" * 10_000, "400"),
    (
        "huge array of numbers under 3 MiB",
        _with_pod_field("[" + ",".join(["0"] * 1_400_000) + "]"),
        "injected",
    ),
    (
        "huge array as spec.containers",
        review_bytes(
            reviews_of({**FIXTURE_REVIEW["request"]["object"], "spec": {"containers": [0] * 1_000_000}})
        ),
        "denied",
    ),
    (
        "huge object of annotations",
        review_bytes(
            reviews_of(
                {
                    **FIXTURE_REVIEW["request"]["object"],
                    "metadata": {
                        **FIXTURE_REVIEW["request"]["object"]["metadata"],
                        "annotations": {f"k{i}": "v" for i in range(100_000)},
                    },
                }
            )
        ),
        "denied",
    ),
    ("integer beyond 64 bits", _with_pod_field("1" + "0" * 400), "400"),
    ("lone surrogate escape", _with_pod_field('"\\ud800"'), "400"),
    ("NUL and controls in a string", _with_pod_field(json.dumps("\x00\x01\u2028")), "injected"),
    ("duplicate keys", FIXTURE_BYTES[:-1] + b', "kind": "AdmissionReview"}', "injected"),
]


@pytest.mark.parametrize("name, body, expected", SHAPES, ids=[s[0] for s in SHAPES])
def test_extreme_shapes(webhook_server: ThreadedWebhook, name: str, body: bytes, expected: str) -> None:
    assert len(body) <= webhook.MAX_BODY_BYTES, f"{name} is {len(body)} bytes"
    assert exercise(webhook_server, body) == expected


@pytest.mark.parametrize("how", ["content-length", "chunked"])
def test_oversize_bodies_are_413(webhook_server: ThreadedWebhook, how: str) -> None:
    big = b"[" + b"0," * (webhook.MAX_BODY_BYTES // 2) + b"0]"
    if how == "chunked":
        answer = webhook_server.post(_chunks(big))
    else:
        answer = webhook_server.post(big)
    assert check_answer(big, answer) == "413"


def _chunks(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    view = memoryview(data)
    for i in range(0, len(view), size):
        yield bytes(view[i : i + size])


def test_memory_stays_bounded_under_a_burst_of_oversize_bodies(webhook_server: ThreadedWebhook) -> None:
    """16 clients at once, each sending 8 MiB (declared and chunked): the server never holds them whole.

    aiohttp stops reading at the 3 MiB limit, so the peak is bounded by clients x limit no matter
    how large the bodies are; a server reading bodies whole would peak near 16 x 8 MiB = 128 MiB.
    """
    body = b"[" + b"0," * (4 * 1024 * 1024) + b"0]"  # 8 MiB, made before tracing starts
    clients = 16
    statuses: list[int] = []
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            if i % 2:
                answer: Answer = webhook_server.post(_chunks(body))
            else:
                answer = webhook_server.post(body)
            statuses.append(answer.status)
        except (ConnectionError, OSError) as exc:  # the server may close a connection it refused early
            errors.append(exc)

    gc.collect()
    tracemalloc.start()
    try:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not any(t.is_alive() for t in threads)
    assert statuses and set(statuses) == {413}, (statuses, errors)
    assert len(statuses) >= clients // 2, errors
    bound = clients * (webhook.MAX_BODY_BYTES + 1024 * 1024) // 2 + 16 * 1024 * 1024
    assert peak < bound, (
        f"peak {peak / 2**20:.1f} MiB while refusing oversize bodies; bound {bound / 2**20:.1f} MiB"
    )
    # and the server still answers normally afterwards
    assert check_answer(FIXTURE_BYTES, webhook_server.post(FIXTURE_BYTES)) == "injected"


# --- the pure core, without a server -------------------------------------------------------------

CONFIGS = [InjectionConfig(), InjectionConfig.from_mapping({"injection": {"strict": True}})]


def _never_raises(pod: Any, config: InjectionConfig, operation: str, namespace: str | None) -> MutationResult:
    result = mutate_pod(pod, config, operation, namespace=namespace, credential_check=lambda ns, sa, c: None)
    assert isinstance(result, MutationResult)
    assert result.outcome in ("injected", "skipped", "denied")
    if result.outcome == "denied":
        assert result.patch == [] and result.message
    json.dumps(result.patch)  # the webhook must be able to encode it
    return result


@FUZZ
@given(
    pod=json_objects,
    config=st.sampled_from(CONFIGS),
    operation=st.sampled_from(["CREATE", "UPDATE"]),
    namespace=st.none() | st.text(max_size=5),
)
def test_mutate_pod_on_arbitrary_dicts_returns_a_result(
    pod: dict[str, Any], config: InjectionConfig, operation: str, namespace: str | None
) -> None:
    _never_raises(pod, config, operation, namespace)


@FUZZ
@given(pod=pods(), data=st.data(), config=st.sampled_from(CONFIGS))
def test_mutate_pod_on_broken_pods_returns_a_result(
    pod: dict[str, Any], data: st.DataObject, config: InjectionConfig
) -> None:
    """A plausible pod with 1-3 members replaced by any JSON value: a result, never an exception."""
    for _ in range(data.draw(st.integers(1, 3))):
        paths = field_paths(pod)
        if not paths:
            break
        pod = replaced(pod, data.draw(st.sampled_from(paths)), data.draw(json_values))
    result = _never_raises(pod, config, "CREATE", "team-a")
    if result.outcome == "injected":
        import jsonpatch

        jsonpatch.apply_patch(pod, result.patch)
