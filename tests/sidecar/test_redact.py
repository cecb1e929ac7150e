"""Redaction: values current and past, their encodings, token shapes, streams of any size."""

from __future__ import annotations

import base64
import secrets
import tracemalloc
from urllib.parse import quote, quote_plus

import pytest
from taskcreds.sidecar.redact import MIN_LENGTH, Redactor

VALUE = "s3cr3t/v@lue+with=odd&chars"
# token shapes built at test time: no key-shaped literal sits in the repository
AWS_KEY_ID = "AKIA" + "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
PEM_KEY = "-----BEGIN RSA " + "PRIVATE KEY-----\n" + secrets.token_urlsafe(12) + "\n-----END RSA " + "PRIVATE KEY-----"


@pytest.fixture
def redactor() -> Redactor:
    r = Redactor()
    r.add("github", VALUE)
    return r


def test_current_and_rotated_away_values(redactor: Redactor) -> None:
    redactor.add("github", "second-generation-value")
    out = redactor.redact(f"old={VALUE} new=second-generation-value end")
    assert out == "old=[REDACTED:github] new=[REDACTED:github] end"


@pytest.mark.parametrize("form", [
    base64.b64encode(VALUE.encode()).decode(),
    base64.b64encode(VALUE.encode()).decode().rstrip("="),
    base64.urlsafe_b64encode(VALUE.encode()).decode(),
    base64.urlsafe_b64encode(VALUE.encode()).decode().rstrip("="),
    quote(VALUE, safe=""),
    quote_plus(VALUE),
], ids=["base64", "base64 unpadded", "base64url", "base64url unpadded", "url-encoded", "form-encoded"])
def test_encoded_forms(redactor: Redactor, form: str) -> None:
    assert form != VALUE
    out = redactor.redact(f"x {form} y")
    assert out.startswith("x [REDACTED:github]") and VALUE not in out and form not in out


@pytest.mark.parametrize("prefix", ["x-access-token:", "u:", "user:"], ids=["offset 0", "offset 2", "offset 1"])
def test_value_inside_a_longer_base64_blob(redactor: Redactor, prefix: str) -> None:
    blob = base64.b64encode(f"{prefix}{VALUE}".encode()).decode()
    out = redactor.redact(f"Authorization: Basic {blob}")
    assert "[REDACTED:github]" in out
    assert len(out) < len(f"Authorization: Basic {blob}")


@pytest.mark.parametrize(("text", "kind"), [
    ("ghp_" + "A1b2" * 9, "github-token"),
    ("ghs_" + "z9" * 18, "github-token"),
    ("github_pat_11ABCDEFG0" + "x_Y" * 20, "github-token"),
    (AWS_KEY_ID, "aws-access-key-id"),
    ("ASIAY34FZKBOKMUTVV7A", "aws-access-key-id"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk", "jwt"),
    (PEM_KEY, "private-key"),
    ("-----BEGIN " + "PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----", "private-key"),
    ("hvs.CAESIJ" + "q" * 80, "vault-token"),
    ("s.Qf1s5zigZ4OX6akYjQXJC1jY", "vault-token"),
], ids=["ghp", "ghs", "fine-grained pat", "aws akia", "aws asia", "jwt", "rsa key", "pkcs8 key",
        "vault hvs", "vault legacy"])
def test_token_shapes(text: str, kind: str) -> None:
    assert Redactor().redact(f"before {text} after") == f"before [REDACTED:{kind}] after"


@pytest.mark.parametrize("text", [
    "the ghp_ prefix alone", "AKIA too short", "eyJ not a jwt", "s.short", "x" + AWS_KEY_ID,
    "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----", "this.is.a.sentence",
], ids=["ghp prefix", "short aws", "eyJ word", "short s.", "aws inside a word", "public key", "dotted words"])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert Redactor().redact(text) == text


def test_short_values_are_not_redacted() -> None:
    r = Redactor()
    r.add("pin", "12345")
    r.add("word", "a" * MIN_LENGTH)
    assert r.redact("pin 12345 and aaaaaa") == "pin 12345 and [REDACTED:word]"


def test_longest_value_wins_when_values_overlap() -> None:
    r = Redactor()
    r.add("short", "abcdef")
    r.add("long", "abcdefghij")
    assert r.redact("abcdefghij abcdef") == "[REDACTED:long] [REDACTED:short]"


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 4096], ids=lambda c: f"{c}-byte chunks")
def test_stream_catches_values_split_across_chunks(redactor: Redactor, chunk: int) -> None:
    key = "-----BEGIN EC " + "PRIVATE KEY-----\n" + "A" * 300 + "\n-----END EC PRIVATE KEY-----"
    text = (f"start {VALUE} middle é ✓ {key} ghp_{'k' * 36} end " * 3).encode()
    stream = redactor.stream()
    out = b"".join(stream.feed(text[i:i + chunk]) for i in range(0, len(text), chunk)) + stream.finish()
    assert out == redactor.redact(text.decode()).encode()
    assert VALUE.encode() not in out and b"PRIVATE KEY" not in out
    assert stream.counts == {"github": 3, "private-key": 3, "github-token": 3}


def test_stream_passes_invalid_utf8_through(redactor: Redactor) -> None:
    text = b"\xff\xfe bytes " + VALUE.encode() + b" \xc3"
    stream = redactor.stream()
    out = stream.feed(text[:5]) + stream.feed(text[5:]) + stream.finish()
    assert out == b"\xff\xfe bytes [REDACTED:github] \xc3"


def test_fifty_megabytes_in_bounded_memory() -> None:
    r = Redactor()
    values = [secrets.token_urlsafe(24) for _ in range(10)]
    for i, v in enumerate(values):
        r.add(f"cred{i % 5}", v)
    line = b"2026-11-29T10:00:00Z INFO worker processed request id=123456 path=/api/v1/items status=200\n"
    chunk = line * (65536 // len(line)) + values[3].encode() + b"\n"
    total, leaked = 0, 0
    stream = r.stream()
    tracemalloc.start()
    try:
        while total < 50 * 1024 * 1024:
            out = stream.feed(chunk)
            total += len(chunk)
            leaked += out.count(values[3].encode())
        out = stream.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert leaked == 0
    assert stream.counts["cred3"] == total // len(chunk)
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes"


def test_long_values_like_real_jwts_are_redacted_in_every_form() -> None:
    """Values of thousands of characters (JWTs, PEM blocks) must not overflow the pattern builder."""
    import secrets

    r = Redactor()
    values = {f"cred-{i}": secrets.token_urlsafe(1500) for i in range(5)}
    for name, value in values.items():
        r.add(name, value)
    for name, value in values.items():
        text = f"Authorization: Bearer {value}\nb64: {base64.b64encode(value.encode()).decode()}"
        out = r.redact(text)
        assert value not in out
        assert out.count(f"[REDACTED:{name}]") == 2


# --- forms as tools print them ------------------------------------------------------------------

LONG = "hvs.CAESIJ" + secrets.token_urlsafe(60)  # base64 of it is over one 76-column line


def _wrap(text: str, width: int, newline: str = "\n") -> str:
    return newline.join(text[i : i + width] for i in range(0, len(text), width)) + newline


WRAPPED_CASES = {
    "base64 (76 columns)": _wrap(base64.b64encode(LONG.encode()).decode(), 76),
    "openssl base64 (64 columns)": _wrap(base64.b64encode(LONG.encode()).decode(), 64),
    "MIME (76 columns, CRLF)": _wrap(base64.b64encode(LONG.encode()).decode(), 76, "\r\n"),
    "inside a wrapped Basic blob": _wrap(base64.b64encode(f"x-access-token:{LONG}".encode()).decode(), 76),
}


@pytest.mark.parametrize("text", WRAPPED_CASES.values(), ids=WRAPPED_CASES.keys())
def test_wrapped_base64_of_a_value_is_redacted(text: str) -> None:
    r = Redactor()
    r.add("openbao", LONG)
    assert "\n" in text.strip()  # the encoded value really straddles a line break
    out = r.redact(f"$ base64 token\n{text}$ ")
    assert "[REDACTED:openbao]" in out
    joined = out.replace("\r", "").replace("\n", "")
    assert base64.b64encode(LONG.encode()).decode()[8:-8] not in joined


@pytest.mark.parametrize("chunk", [1, 7, 77, 4096])
def test_wrapped_base64_split_across_chunks_is_redacted(chunk: int) -> None:
    r = Redactor()
    r.add("openbao", LONG)
    data = ("log line\n" * 50 + WRAPPED_CASES["base64 (76 columns)"] + "log line\n" * 50).encode()
    stream = r.stream()
    out = b"".join(stream.feed(data[i : i + chunk]) for i in range(0, len(data), chunk)) + stream.finish()
    assert b"[REDACTED:openbao]" in out and out.count(b"log line\n") == 100


def test_wrapped_base64_of_something_else_is_left_alone() -> None:
    r = Redactor()
    r.add("openbao", LONG)
    text = _wrap(base64.b64encode(secrets.token_bytes(300)).decode(), 76)
    assert r.redact(text) == text


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        pytest.param("legacy-db-password-9f8e7d6c\n", "password=legacy-db-password-9f8e7d6c;", id="trailing newline"),
        pytest.param("  padded-secret-value-42 ", "x=padded-secret-value-42 y", id="surrounding spaces"),
        pytest.param('p@ss"word\\with-escapes', '{"pw": "p@ss\\"word\\\\with-escapes"}', id="JSON-escaped"),
    ],
)
def test_values_as_shells_and_json_print_them(value: str, printed: str) -> None:
    r = Redactor()
    r.add("legacy", value)
    assert "[REDACTED:legacy]" in r.redact(printed)


def _rss_mb() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) // 1024


def test_rotations_do_not_grow_memory_with_every_compile() -> None:
    """Each rotation adds values; compiling the whole set again must not leave the old regexes in
    ``re``'s module cache (it kept 512: +150 MB after 200 JWT rotations, and an OOM-killed sidecar).
    Here 40 rotations of JWT-sized values: about +9 MB with the fix, +37 MB without."""
    r = Redactor()
    r.redact("warm up")
    before = _rss_mb()
    for _ in range(40):
        value = "eyJ" + secrets.token_urlsafe(450)
        r.add("github", value)
        assert r.stale  # adding compiles nothing
        assert r.redact(f"x {value} y") == "x [REDACTED:github] y"
        assert not r.stale
    assert _rss_mb() - before < 20
