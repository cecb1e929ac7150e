"""Encodings of a value that must be redacted, which mutation testing found unguarded
(tests/sidecar/test_redact.py covers one value in the common encodings).

Base64 maps every 3 bytes to 4 characters, so which characters of an encoded value depend on the
value alone changes with the value's length mod 3 and with where it starts inside a longer blob
(a Basic ``user:token`` header, a JSON document encoded whole). Each case prints the value the way
an agent would and asserts the log line no longer holds it, in any form a reader could decode.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from urllib.parse import quote

import pytest
from taskcreds.sidecar.redact import Redactor

# lengths 0, 1 and 2 mod 3; bytes that make base64 and base64url differ ('+/' vs '-_')
VALUES = {
    "length 0 mod 3": "tok>>>??~~~" + "x",
    "length 1 mod 3": "tok>>>??~~~" + "xy",
    "length 2 mod 3": "tok>>>??~~~" + "xyz",
    "length 1 mod 3, a multiple of 4": "tok>>>??~~~" + "xyzwv",
}
ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "base64": base64.b64encode,
    "base64url": base64.urlsafe_b64encode,
}
PREFIXES = {"offset 0": "", "offset 1": "u", "offset 2": "us"}

BLOB_CASES = [
    (f"{v} {e} {p}", value, encode, prefix)
    for v, value in VALUES.items()
    for e, encode in ENCODERS.items()
    for p, prefix in PREFIXES.items()
]


def _leaks(text: str, value: str) -> bool:
    """True when ``value`` can be read back from ``text`` (as is, or by decoding a base64 word)."""
    if value in text:
        return True
    for word in text.replace(":", " ").split():
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            for pad in ("", "=", "=="):
                try:
                    if value.encode() in decode(word + pad):
                        return True
                except ValueError:
                    pass
    return False


@pytest.mark.parametrize(("case", "value", "encode", "prefix"), BLOB_CASES, ids=[c[0] for c in BLOB_CASES])
def test_a_value_inside_a_longer_base64_blob_is_redacted(
    case: str, value: str, encode: Callable[[bytes], bytes], prefix: str
) -> None:
    r = Redactor()
    r.add("api", value)
    blob = encode(f"{prefix}{value}".encode() + b"~suffix").decode()  # "~": its top bits are not 0
    line = f"Authorization: Basic {blob} done"
    out = r.redact(line)
    assert "[REDACTED:api]" in out, case
    assert not _leaks(out, value), (case, out)
    assert _leaks(line, value)  # the check itself can see the value when it is there
    # exactly the characters whose 6 bits all come from the value go: each one left would tell a
    # reader 6 bits of it; the ones mixing in the prefix's or suffix's bits stay
    first = -(-8 * len(prefix) // 6)
    end = 8 * (len(prefix) + len(value.encode())) // 6
    assert out == f"Authorization: Basic {blob[:first]}[REDACTED:api]{blob[end:]} done", case


FORMS = [
    ("stripped of its trailing newline", "secret-value-123\n", lambda v: v.strip()),
    ("stripped of surrounding spaces", "  secret-value-123 ", lambda v: v.strip()),
    ("JSON-escaped", 'pa"ss\\word-123', lambda v: json.dumps(v)[1:-1]),
    ("path-encoded (slash kept)", "a/b c/d?e=f", lambda v: quote(v)),
    ("unpadded base64url", "tok>>>??~~~x", lambda v: base64.urlsafe_b64encode(v.encode()).decode().rstrip("=")),
    # the whole padded encoding goes, not only the characters that depend on the value alone
    ("base64, one byte over", "tok>>>??~~~xy", lambda v: base64.b64encode(v.encode()).decode()),
    ("base64, two bytes over", "tok>>>??~~~xyz", lambda v: base64.b64encode(v.encode()).decode()),
    ("base64url, one byte over", "tok>>>??~~~xy", lambda v: base64.urlsafe_b64encode(v.encode()).decode()),
    ("unpadded base64, two bytes over", "tok>>>??~~~xyz", lambda v: base64.b64encode(v.encode()).decode().rstrip("=")),
]


@pytest.mark.parametrize(("case", "value", "form"), FORMS, ids=[c[0] for c in FORMS])
def test_printed_forms_are_redacted(case: str, value: str, form: Callable[[str], str]) -> None:
    r = Redactor()
    r.add("api", value)
    printed = form(value)
    assert printed != value, case
    assert r.redact(f"got {printed} here") == "got [REDACTED:api] here", case


def test_each_value_is_redacted_under_its_own_credential() -> None:
    r = Redactor()
    r.add("github", "first-secret-value")
    r.add("vault", "second-secret-value")
    r.add("vault", "first-secret-value")  # already known: keeps the credential it came with
    assert r.redact("first-secret-value second-secret-value") == "[REDACTED:github] [REDACTED:vault]"
