"""JSON log lines: the shape every taskcreds process writes, and what never gets into them."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from taskcreds.logs import fields, setup_logging


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    setup_logging("INFO", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:], root.level = saved


def parsed(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_carries_time_level_logger_message_and_fields(lines: io.StringIO) -> None:
    logging.getLogger("taskcreds.x").info("issued", extra=fields(task="t1", credential="github", ttl=300))
    logging.getLogger("taskcreds.x").info("again")
    first, second = parsed(lines)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(first.pop("ts")))
    assert first == {
        "level": "info",
        "logger": "taskcreds.x",
        "msg": "issued",
        "task": "t1",
        "credential": "github",
        "ttl": 300,
    }
    assert second["msg"] == "again" and "task" not in second


def test_values_json_cannot_hold_are_written_as_text_not_dropped(lines: io.StringIO) -> None:
    class Ref:
        def __str__(self) -> str:
            return "lease/abc"

    logging.getLogger("taskcreds.x").info("odd", extra=fields(ref=Ref(), big=2**70, names=("a", "b")))
    (line,) = parsed(lines)
    assert line["ref"] == "lease/abc" and line["big"] == 2**70 and line["names"] == ["a", "b"]


def test_an_exception_is_its_type_and_message_never_a_traceback(lines: io.StringIO) -> None:
    def fail(secret_local: str) -> None:
        raise ValueError("broker answered 503")

    try:
        fail("tc-canary-not-for-logs")
    except ValueError:
        logging.getLogger("taskcreds.x").exception("renewal failed")
    text = lines.getvalue()
    (line,) = parsed(lines)
    assert line["error"] == "ValueError: broker answered 503"
    assert "Traceback" not in text and "tc-canary-not-for-logs" not in text
