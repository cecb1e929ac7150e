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

__all__ = ["setup_logging", "JsonFormatter", "fields", "info_line", "quiet_http_parser_errors"]


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", **fields}`` on one line.

    Encoded with orjson (about 10x :mod:`json` here): the egress proxy writes one line per request.
    """

    def format(self, record: logging.LogRecord) -> str:
        error = None
        if record.exc_info and record.exc_info[0] is not None:
            # type and message only: a traceback's locals could hold anything
            error = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        extra = getattr(record, "fields", None)
        return _line(
            record.created,
            record.levelname.lower(),
            record.name,
            record.getMessage(),
            extra if isinstance(extra, dict) else None,
            error,
        )


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def _line(
    created: float, level: str, logger: str, msg: str, extra: dict[str, Any] | None, error: str | None
) -> str:
    global _second
    whole = int(created)
    cached = _second
    if cached[0] != whole:
        cached = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    out: dict[str, Any] = {
        "ts": f"{cached[1]}.{int((created - whole) * 1000):03d}Z",
        "level": level,
        "logger": logger,
        "msg": msg,
    }
    if extra:
        out.update(extra)
    if error is not None:
        out["error"] = error
    try:
        return orjson.dumps(out, default=str).decode()
    except (orjson.JSONEncodeError, TypeError):  # e.g. an int over 64 bits, a non-str key
        return json.dumps(out, default=str)


def info_line(logger: logging.Logger, msg: str, **kv: Any) -> None:
    """``logger.info(msg, extra=fields(**kv))`` for lines written per request (the egress proxy).

    Why: a LogRecord and the handler dispatch cost as much as the line itself, and the proxy
    writes one per request (bench/proxy.py). When the root logger has just the JSON handler that
    :func:`setup_logging` installs, the same line is written straight to its stream; with any other
    set-up (pytest's log capture, a handler added by an embedding program) this is plain logging.
    A failing stream is handled as logging handles it (``Handler.handleError``), never raised.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _sole_json_handler(logger)
    if handler is None:
        # makeRecord + handle: Logger.info would walk the stack for a file and line no line shows
        record = logger.makeRecord(logger.name, logging.INFO, "", 0, msg, (), None, extra={"fields": kv})
        logger.handle(record)
        return
    line = _line(time.time(), "info", logger.name, msg, kv, None) + "\n"
    handler.acquire()
    try:
        handler.stream.write(line)
        handler.stream.flush()
    except Exception:
        handler.handleError(logger.makeRecord(logger.name, logging.INFO, "", 0, msg, (), None))
    finally:
        handler.release()


def _sole_json_handler(logger: logging.Logger) -> logging.StreamHandler[Any] | None:
    """The handler setup_logging installed, when it is the only place a line from ``logger`` goes."""
    node: logging.Logger | None = logger
    while node is not None and node is not logging.root:
        if node.handlers or node.filters or not node.propagate:
            return None
        node = node.parent
    handlers = logging.root.handlers
    if len(handlers) != 1 or logging.root.filters:
        return None
    handler = handlers[0]
    if type(handler) is not logging.StreamHandler or handler.filters or handler.level > logging.INFO:
        return None
    return handler if isinstance(handler.formatter, JsonFormatter) else None


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
