"""The fuzz suite's oracle (harness.check_answer) refuses every kind of wrong answer: it can fail."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.fuzz.harness import Answer, check_answer
from tests.fuzz.strategies import FIXTURE_REVIEW, review_bytes

BODY = review_bytes(FIXTURE_REVIEW)
UID = FIXTURE_REVIEW["request"]["uid"]


def review(response: dict[str, Any]) -> Answer:
    doc = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
    return Answer(200, "application/json", json.dumps(doc).encode())


def patched(ops: list[dict[str, Any]]) -> Answer:
    patch = base64.b64encode(json.dumps(ops).encode()).decode()
    return review({"uid": UID, "allowed": True, "patchType": "JSONPatch", "patch": patch})


GOOD: list[tuple[str, Answer, str]] = [
    (
        "400 with a reason",
        Answer(
            400,
            "application/json",
            b'{"error": {"code": "bad_request", "message": "empty body; expected JSON"}}',
        ),
        "400",
    ),
    ("denial", review({"uid": UID, "allowed": False, "status": {"code": 403, "message": "no"}}), "denied"),
    ("allowed, no patch", review({"uid": UID, "allowed": True}), "skipped"),
    ("patch that applies", patched([{"op": "add", "path": "/metadata/labels/x", "value": "y"}]), "injected"),
]

BAD: list[tuple[str, Answer]] = [
    ("a 500", Answer(500, "text/plain", b"Internal Server Error")),
    ("a 502", Answer(502, "application/json", b"{}")),
    ("a 400 in text/plain", Answer(400, "text/plain", b"Bad Request")),
    (
        "a 400 without a reason",
        Answer(400, "application/json", b'{"error": {"code": "bad_request", "message": ""}}'),
    ),
    (
        "a 413 with the wrong code",
        Answer(413, "application/json", b'{"error": {"code": "x", "message": "too big!"}}'),
    ),
    ("uid not echoed", review({"uid": "other", "allowed": True})),
    (
        "fail-closed error review",
        review({"uid": UID, "allowed": False, "status": {"code": 500, "message": "bug"}}),
    ),
    (
        "denial with a patch",
        review({"uid": UID, "allowed": False, "status": {"code": 403, "message": "no"}, "patch": "W10="}),
    ),
    ("patch that does not apply", patched([{"op": "replace", "path": "/spec/nothing/0", "value": 1}])),
    (
        "patch that breaks a valid pod",
        patched([{"op": "add", "path": "/spec/containers/-", "value": {"name": "agent", "image": "x"}}]),
    ),
]


@pytest.mark.parametrize("name, answer, kind", GOOD, ids=[g[0] for g in GOOD])
def test_oracle_accepts(name: str, answer: Answer, kind: str) -> None:
    assert check_answer(BODY, answer) == kind


@pytest.mark.parametrize("name, answer", BAD, ids=[b[0] for b in BAD])
def test_oracle_refuses(name: str, answer: Answer) -> None:
    with pytest.raises(Exception):  # noqa: B017 - AssertionError, KeyError or a jsonpatch error
        check_answer(BODY, answer)
