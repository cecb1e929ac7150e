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
