"""JSON log lines: the shape every taskcreds process writes, and what never gets into them."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from taskcreds.logs import fields, info_line, setup_logging


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


def test_a_per_request_line_is_the_same_line_logging_writes(
    lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = logging.getLogger("taskcreds.sidecar.proxy")
    with monkeypatch.context() as patch:  # the point of info_line: no LogRecord, no handler dispatch
        # as in the sidecar: the JSON handler alone (pytest adds its own while a test runs)
        patch.setattr(logging.root, "handlers", [h for h in logging.root.handlers if getattr(h, "stream", None) is lines])
        patch.setattr(logging.Logger, "makeRecord", lambda *a, **k: pytest.fail("a LogRecord was made"))
        info_line(log, "proxied", host="api.example.com", status=200, credential=None, duration_ms=1.25)
    log.info("proxied", extra=fields(host="api.example.com", status=200, credential=None, duration_ms=1.25))
    fast, slow = parsed(lines)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(fast.pop("ts")))
    slow.pop("ts")
    assert fast == slow == {
        "level": "info",
        "logger": "taskcreds.sidecar.proxy",
        "msg": "proxied",
        "host": "api.example.com",
        "status": 200,
        "credential": None,
        "duration_ms": 1.25,
    }


def test_a_per_request_line_follows_the_level(lines: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.root, "handlers", [h for h in logging.root.handlers if getattr(h, "stream", None) is lines])
    logging.getLogger().setLevel("WARNING")
    info_line(logging.getLogger("taskcreds.sidecar.proxy"), "proxied", status=200)
    assert lines.getvalue() == ""


def test_a_per_request_line_goes_through_logging_when_anything_else_listens(
    lines: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")  # pytest's capture handler: a second handler on the root logger
    log = logging.getLogger("taskcreds.sidecar.proxy")
    info_line(log, "proxied", status=200)
    assert [r.fields for r in caplog.records if r.getMessage() == "proxied"] == [{"status": 200}]  # type: ignore[attr-defined]
    assert parsed(lines)[0]["status"] == 200  # and the JSON handler still writes it


def test_a_filter_on_the_way_still_applies(lines: io.StringIO) -> None:
    parent = logging.getLogger("taskcreds.sidecar")

    class DropAll(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return False

    drop = DropAll()
    logging.root.handlers[:] = [h for h in logging.root.handlers if getattr(h, "stream", None) is lines]
    child = logging.getLogger("taskcreds.sidecar.proxy")
    child.addFilter(drop)
    try:
        info_line(child, "proxied", status=200)
    finally:
        child.removeFilter(drop)
    assert lines.getvalue() == "" and parent is child.parent


def test_a_failing_stream_is_logging_s_problem_not_the_caller_s(
    lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.root, "handlers", [h for h in logging.root.handlers if getattr(h, "stream", None) is lines])
    monkeypatch.setattr(logging, "raiseExceptions", False)  # as in production: a bad stream is skipped
    lines.close()  # e.g. stderr gone
    info_line(logging.getLogger("taskcreds.sidecar.proxy"), "proxied", status=200)  # does not raise
