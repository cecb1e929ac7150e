"""The downward-API ``annotations`` file, as the kubelet writes it. Pure parsing plus one read.

The kubelet writes one ``key="value"`` line per annotation, sorted, the value quoted with Go's
``strconv.Quote`` (``\\n``, ``\\"``, ``\\\\``, ``\\xNN``, ``\\uNNNN``, ``\\UNNNNNNNN``, octal ``\\NNN``
...). The kubelet refreshes this file about once a minute, which is why it is only the fallback
to the broker's long-poll for learning that the task ended.
"""

from __future__ import annotations

import os

from taskcreds import names

__all__ = ["parse_annotations", "unquote_go", "read_task_status", "PodinfoError"]

_SIMPLE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
           "\\": "\\", '"': '"', "'": "'"}


class PodinfoError(ValueError):
    """A line of the annotations file that is not ``key="go-quoted value"``."""


def unquote_go(quoted: str) -> str:
    """Decode a Go double-quoted string literal (with its quotes)."""
    if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
        raise PodinfoError(f"not a Go-quoted string: {quoted[:40]!r}")
    body, out, i = quoted[1:-1], [], 0
    pending: bytearray = bytearray()  # \xNN and octal escapes are bytes, joined as UTF-8

    def flush() -> None:
        if pending:
            out.append(pending.decode("utf-8", "replace"))
            pending.clear()

    while i < len(body):
        ch = body[i]
        if ch != "\\":
            flush()
            out.append(ch)
            i += 1
            continue
        if i + 1 >= len(body):
            raise PodinfoError("dangling backslash in a Go-quoted string")
        esc = body[i + 1]
        if esc in _SIMPLE:
            flush()
            out.append(_SIMPLE[esc])
            i += 2
        elif esc == "x":
            pending.append(int(body[i + 2:i + 4], 16))
            i += 4
        elif esc in "uU":
            width = 4 if esc == "u" else 8
            flush()
            out.append(chr(int(body[i + 2:i + 2 + width], 16)))
            i += 2 + width
        elif esc in "01234567":
            pending.append(int(body[i + 1:i + 4], 8) & 0xFF)
            i += 4
        else:
            raise PodinfoError(f"unknown escape \\{esc} in a Go-quoted string")
    flush()
    return "".join(out)


def parse_annotations(text: str) -> dict[str, str]:
    """Every annotation in the file; a malformed line raises PodinfoError naming its number."""
    result: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise PodinfoError(f"line {number} is not key=\"value\"")
        try:
            result[key] = unquote_go(value)
        except (PodinfoError, ValueError) as exc:
            raise PodinfoError(f"line {number} ({key}): {exc}") from None
    return result


def read_task_status(podinfo_dir: str) -> str | None:
    """The task status the downward API shows now; None when the file is missing or unreadable.

    An absent annotation means ``running`` (CONTRACT.md section 1).
    """
    try:
        with open(os.path.join(podinfo_dir, names.PODINFO_ANNOTATIONS_FILE), encoding="utf-8") as f:
            annotations = parse_annotations(f.read())
    except (OSError, UnicodeDecodeError, PodinfoError):
        return None
    return annotations.get(names.ANNOTATION_TASK_STATUS) or names.DEFAULT_TASK_STATUS
