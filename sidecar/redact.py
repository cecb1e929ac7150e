"""Redaction of this pod's credential values and of well-known token shapes. Pure: memory only.

Every value issued to the pod during the task (current and rotated-away) is replaced by
``[REDACTED:<credential>]``, as are its encodings an agent is likely to print: standard and
URL-safe base64 (with and without padding, and at each of the three byte offsets, so the value is
also caught inside a longer base64 blob such as an HTTP Basic ``user:token`` header, and across
the line breaks of wrapped base64 as ``base64``, ``openssl`` and MIME print it), its URL-encoded
and JSON-escaped forms, and the value without surrounding whitespace. Well-known token shapes are
replaced by ``[REDACTED:<kind>]`` even when this pod never saw them: GitHub tokens, AWS access key
ids, JWTs, PEM private keys, Vault/OpenBao tokens.

Values (and encoded forms) shorter than ``MIN_LENGTH`` characters are not redacted: short strings
match ordinary text far too often to be worth it. Values are kept only in this process's memory.

All needles are compiled into one regular expression (a trie of alternatives, longest first),
rebuilt only when a new value arrives. :class:`RedactStream` processes a body chunk by chunk,
holding back a window as long as the longest possible match, so a value split across chunks is
still caught while memory stays bounded.
"""

from __future__ import annotations

import base64
import bisect
import codecs
import json
import re
import threading
from collections import Counter
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

__all__ = ["Redactor", "RedactStream", "TOKEN_SHAPES", "MIN_LENGTH", "encoded_forms", "label"]

MIN_LENGTH = 6
_PEM_MAX = 16384
# kind -> pattern. Each starts with a literal and checks the character before it with a
# look-behind placed after that literal, so the regex engine can jump between literal prefixes
# (hundreds of MB/s) instead of trying every position. Every pattern has a bounded length: the
# stream's window depends on it.
TOKEN_SHAPES: dict[str, str] = {
    "private-key": rf"-----BEGIN[A-Z0-9 ]{{0,40}} PRIVATE KEY-----[\s\S]{{0,{_PEM_MAX}}}?"
                   r"-----END[A-Z0-9 ]{0,40} PRIVATE KEY-----",
    "github-token": r"(?:gh[pousr]_(?<![A-Za-z0-9_]..._)[A-Za-z0-9]{30,251}"
                    r"|github_pat_(?<![A-Za-z0-9_]github_pat_)[A-Za-z0-9_]{22,244})",
    "aws-access-key-id": r"A[KS]IA(?<![A-Za-z0-9]....)[A-Z0-9]{16}(?![A-Za-z0-9])",
    "jwt": r"eyJ(?<![A-Za-z0-9_-]...)[A-Za-z0-9_-]{4,2048}\.[A-Za-z0-9_-]{4,8192}\.[A-Za-z0-9_-]{0,1024}",
    "vault-token": r"(?:hv[sbr]\.(?<![A-Za-z0-9_.]....)[A-Za-z0-9_-]{20,512}"
                   r"|s\.(?<![A-Za-z0-9_.]..)[A-Za-z0-9]{24,64}(?![A-Za-z0-9]))",
}
_SHAPES_MAX = _PEM_MAX + 200  # longest possible shape match (PEM dominates), in characters
_SHAPE_REGEXES = tuple((kind, re.compile(pattern)) for kind, pattern in TOKEN_SHAPES.items())


def label(name: str) -> str:
    return f"[REDACTED:{name}]"


def encoded_forms(value: str) -> set[str]:
    """The value and the encodings of it worth catching, each at least MIN_LENGTH long.

    A value with surrounding whitespace (a Secret made from a file ending in a newline) is also
    caught without it: ``$(cat file)`` and most tools print it stripped.
    """
    forms: set[str] = set()
    for text in {value, value.strip()}:
        forms |= _forms(text)
    return {f for f in forms if len(f) >= MIN_LENGTH}


def _forms(value: str) -> set[str]:
    raw = value.encode("utf-8", "surrogateescape")
    # JSON-escaped too: agents print values inside JSON, where quotes and backslashes gain a "\\"
    forms = {value, quote(value, safe=""), quote_plus(value, safe=""), quote(value), json.dumps(value)[1:-1]}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode()
        forms.update({whole, whole.rstrip("=")})
        # the value inside a longer base64 text starts at one of three byte offsets; keep only the
        # characters that depend on the value alone
        for offset in (1, 2):
            text = encode(b"\0" * offset + raw).decode().rstrip("=")
            lead = {1: 2, 2: 3}[offset]
            tail = 1 if (offset + len(raw)) % 3 else 0
            forms.add(text[lead: len(text) - tail])
        forms.add(whole.rstrip("=")[: len(whole.rstrip("=")) - (1 if len(raw) % 3 else 0)])
    return forms


# Base64 as tools print it: broken into lines (``base64`` and MIME every 76 characters, ``openssl``
# every 64), so an encoded value may straddle line breaks. A break worth looking at is a newline
# with at least 16 base64 characters before it and one after; literal first, look-behind after it,
# so the engine jumps from newline to newline.
_B64 = "A-Za-z0-9+/=_-"
_BREAK = re.compile(rf"\n(?:(?<=[{_B64}]{{16}}\n)|(?<=[{_B64}]{{16}}\r\n))(?=[{_B64}])")
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-")
_WRAPPED = re.compile(rf"[{_B64}]+(?:\r?\n[{_B64}]+)+")
_LINE = re.compile(r"[^\r\n]+")


def _trie_pattern(words: Iterable[str]) -> str:
    """One regex alternation for many literals, factored by common prefixes (fast to match)."""
    trie: dict[str, dict] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, dict]) -> str:
        # recursion goes one level per branching point, not per character: a chain of single
        # children becomes one literal (a JWT is ~600 characters; per-character recursion overflowed)
        end = "" in node
        branches = []
        for ch, child in sorted(node.items()):
            if ch == "":
                continue
            label = [ch]
            while len(child) == 1 and "" not in child:
                (next_ch, child), = child.items()
                label.append(next_ch)
            branches.append(re.escape("".join(label)) + build(child))
        if not branches:
            return ""
        # longest match first: try the longer continuations before ending here
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if end else body

    return build(trie)


def _unwrapped(text: str, start: int, end: int) -> tuple[list[int], list[int]]:
    """Where each line of ``text[start:end]`` starts, with the line breaks removed and in ``text``."""
    at_joined: list[int] = []
    at_text: list[int] = []
    size = 0
    for line in _LINE.finditer(text, start, end):
        at_joined.append(size)
        at_text.append(line.start())
        size += line.end() - line.start()
    return at_joined, at_text


def _place(i: int, at_joined: list[int], at_text: list[int]) -> int:
    """Where index ``i`` of the joined text is in the original one."""
    k = bisect.bisect_right(at_joined, i) - 1
    return at_text[k] + i - at_joined[k]


class _Compiled:
    """One immutable snapshot: the regexes, which needle belongs to which credential, the window.

    The values are one trie-shaped alternation; each token shape is its own regex (one combined
    alternation would lose the engine's literal-prefix search and run several times slower).
    """

    def __init__(self, needles: dict[str, str]) -> None:
        self.needles = needles
        self.values = re.compile(_trie_pattern(needles)) if needles else None
        # a needle broken over lines of 16+ characters is at most 2 characters longer per line
        self.window = max([_SHAPES_MAX, *(len(n) + 2 * (len(n) // 16 + 1) for n in needles)]) + 1

    def matches(self, text: str, start: int, limit: int) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, name) of matches starting in ``[start, limit)``, leftmost-longest."""
        found: list[tuple[int, int, str]] = []
        regexes = list(_SHAPE_REGEXES)
        if self.values is not None:
            regexes.insert(0, ("", self.values))
        for kind, regex in regexes:
            for match in regex.finditer(text, start):
                if match.start() >= limit:
                    break
                found.append((match.start(), match.end(), kind or self.needles[match.group()]))
        if self.values is not None:
            found.extend(self._wrapped(text, start, limit))
        if len(found) > 1:
            found.sort(key=lambda m: (m[0], -m[1]))
            kept, last_end = [], -1
            for item in found:
                if item[0] >= last_end:
                    kept.append(item)
                    last_end = item[1]
            found = kept
        return found

    def _wrapped(self, text: str, start: int, limit: int) -> list[tuple[int, int, str]]:
        """Matches of the values across the line breaks of wrapped base64 (see ``_BREAK``)."""
        assert self.values is not None
        found: list[tuple[int, int, str]] = []
        covered, stop = start, min(len(text), limit + self.window)
        while (brk := _BREAK.search(text, covered, stop)) is not None:
            # back to where this line's base64 starts (not before ``covered``, nor a window back)
            first = end = brk.start() - (text[brk.start() - 1] == "\r")
            floor = max(covered, end - self.window)
            while first > floor and text[first - 1] in _B64_CHARS:
                first -= 1
            block = _WRAPPED.match(text, first)
            if block is None:  # cannot happen (the break has base64 on both sides); never loop
                covered = brk.end()
                continue
            covered = block.end()
            # C speed; lines are mapped back only on a match
            joined = block.group().replace("\r\n", "").replace("\n", "")
            places: tuple[list[int], list[int]] | None = None
            for match in self.values.finditer(joined):
                if places is None:
                    places = _unwrapped(text, block.start(), block.end())
                at_joined, at_text = places
                m_start = _place(match.start(), at_joined, at_text)
                m_end = _place(match.end() - 1, at_joined, at_text) + 1
                if start <= m_start < limit and m_end - m_start > match.end() - match.start():
                    found.append((m_start, m_end, self.needles[match.group()]))
        return found

    def replace(self, text: str, counts: Counter[str], start: int = 0,
                cut: int | None = None) -> tuple[str, int]:
        """Redact matches starting in ``[start, cut)``; returns (output, index where output stops).

        Text before ``start`` is context only (look-behinds see it) and is not part of the output.
        """
        limit = len(text) if cut is None else cut
        out, pos = [], start
        for m_start, m_end, name in self.matches(text, start, limit):
            counts[name] += 1
            out.append(text[pos:m_start])
            out.append(label(name))
            pos = m_end
        end = max(pos, limit)
        out.append(text[pos:end])
        return "".join(out), end


class Redactor:
    """The set of values to redact. Thread-safe; values only ever grow during a task."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._needles: dict[str, str] = {}
        self._compiled = _Compiled({})
        self._stale = False

    def add(self, credential: str, value: str) -> None:
        """Remember ``value`` (and its encodings) as belonging to ``credential``, for the task's life.

        Cheap: the regexes are compiled again on the next redaction, not here, so a rotation costs
        the sidecar's loop nothing and several values arriving together cost one compile.
        """
        forms = encoded_forms(value)
        with self._lock:
            new = {f: credential for f in forms if f not in self._needles}
            if not new:
                return
            self._needles = {**self._needles, **new}
            self._stale = True

    @property
    def stale(self) -> bool:
        """True when values arrived since the last compile (:meth:`refresh` compiles them)."""
        return self._stale

    def refresh(self) -> None:
        """Compile the regexes for every value known now (a no-op when nothing changed).

        ``re.compile`` keeps its last 512 patterns in a module-level cache: each compile of the
        ever-growing value set stayed there, so memory grew with every rotation until the sidecar
        was OOM-killed (+150 MB after 200 JWT rotations). The cache is purged after each compile.
        """
        with self._lock:
            if not self._stale:
                return
            compiled = _Compiled(self._needles)
            re.purge()
            self._compiled, self._stale = compiled, False

    def add_files(self, credential: str, files: dict[str, str]) -> None:
        for value in files.values():
            self.add(credential, value)

    @property
    def size(self) -> int:
        """How many needles (values and encoded forms) are known."""
        return len(self._needles)

    def redact(self, text: str, counts: Counter[str] | None = None) -> str:
        """``text`` with every known value and token shape replaced."""
        return self.compiled.replace(text, counts if counts is not None else Counter())[0]

    def stream(self) -> RedactStream:
        return RedactStream(self)

    @property
    def compiled(self) -> _Compiled:
        """The regexes for every value known now (compiled first when values arrived since)."""
        if self._stale:
            self.refresh()
        return self._compiled


class RedactStream:
    """Redacts a byte stream chunk by chunk (UTF-8; invalid bytes pass through unchanged).

    Each :meth:`feed` returns the output that is final so far; :meth:`finish` returns the rest.
    Memory is bounded by one chunk plus the window (the longest possible match).
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._carry = ""
        self._context = ""
        self.counts: Counter[str] = Counter()

    def feed(self, chunk: bytes) -> bytes:
        return self._process(self._decoder.decode(chunk), final=False)

    def finish(self) -> bytes:
        return self._process(self._decoder.decode(b"", final=True), final=True)

    def _process(self, text: str, *, final: bool) -> bytes:
        compiled = self._redactor.compiled
        # the carry keeps one character before it as look-behind context (self._context)
        buf = self._context + self._carry + text
        start = len(self._context)
        cut = None if final else len(buf) - compiled.window
        if cut is not None and cut <= start:
            self._carry = buf[start:]
            return b""
        # a match starting before the cut is complete: no match is longer than the window
        out, end = compiled.replace(buf, self.counts, start, cut)
        self._context = buf[end - 1:end] if end > 0 else ""
        self._carry = buf[end:]
        return out.encode("utf-8", "surrogateescape")
