"""One logging setup for every taskcreds process: JSON lines on stderr.

Log records carry names and references (task, pod, credential, lease reference), never values:
pass structured fields with ``extra={"fields": {...}}``. Anything that may hold a value must not
be logged at all; there is no after-the-fact scrubbing here.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import orjson

__all__ = ["setup_logging", "JsonFormatter", "fields", "quiet_http_parser_errors"]


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", **fields}`` on one line.

    Encoded with orjson (about 10x :mod:`json` here): the egress proxy writes one line per request.
    """

    _second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        out: dict[str, Any] = {
            "ts": f"{cached[1]}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info and record.exc_info[0] is not None:
            # type and message only: a traceback's locals could hold anything
            out["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        try:
            return orjson.dumps(out, default=str).decode()
        except (orjson.JSONEncodeError, TypeError):  # e.g. an int over 64 bits, a non-str key
            return json.dumps(out, default=str)


def fields(**kv: Any) -> dict[str, Any]:
    """``logger.info("issued", extra=fields(task=..., credential=...))``."""
    return {"fields": kv}


def setup_logging(level: str | int = "INFO", stream: Any = None) -> None:
    """Route the root logger to JSON lines; idempotent."""
    # no JSON line shows the process or thread: not looking them up saves a syscall and a few
    # microseconds per record (the egress proxy logs every request)
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    root = logging.getLogger()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
    for noisy in ("aiohttp.access", "kubernetes_asyncio", "urllib3", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _TypeOnly(logging.Filter):
    """Reduce a logged exception to its type: aiohttp's HTTP parse errors quote the request bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None:
            record.msg, record.args = f"bad HTTP request: {record.exc_info[0].__name__}", None
            record.exc_info, record.exc_text = None, None
        return True


def quiet_http_parser_errors() -> None:
    """Keep request bytes (which can hold tokens or pod env values) out of aiohttp's error logs."""
    target = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _TypeOnly) for f in target.filters):
        target.addFilter(_TypeOnly())
