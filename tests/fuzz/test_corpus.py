"""Replay every corpus file (hand-picked and found by fuzzing) against the real webhook over TLS."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.fuzz.harness import CORPUS, ThreadedWebhook, check_answer

#: a denial's message is for a person reading kubectl's output: it names the value, it does not
#: repeat a megabyte of it (the API server passes it on to the client and into audit logs)
MAX_MESSAGE = 4096

#: corpus files that reproduce a bug not fixed yet (strict xfail: a fix makes them fail until removed)
KNOWN_BUGS: dict[str, str] = {}


def _files() -> list[Path]:
    # corpus/broker/ is the broker's (test_broker_corpus.py)
    return sorted(
        p for p in CORPUS.iterdir() if p.is_file() and p.name != "README.md" and not p.name.startswith(".")
    )


def _expected(path: Path) -> str:
    parts = path.name.removesuffix(".gz").split(".")
    assert len(parts) >= 3, f"{path.name}: name it <what>.<expected>.<ext> (see corpus/README.md)"
    return parts[-2]


def _cases() -> list[object]:
    return [
        pytest.param(
            p,
            id=p.name,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[p.name])] if p.name in KNOWN_BUGS else [],
        )
        for p in _files()
    ]


def test_corpus_is_present_and_named_by_outcome() -> None:
    files = _files()
    assert len(files) >= 20
    for path in files:
        assert _expected(path) in ("400", "413", "injected", "skipped", "denied", "untriaged"), path.name
    assert set(KNOWN_BUGS) <= {p.name for p in files}


@pytest.mark.parametrize("path", _cases())
def test_corpus_replay(webhook_server: ThreadedWebhook, path: Path) -> None:
    body = path.read_bytes()
    if path.suffix == ".gz":
        body = gzip.decompress(body)
    answer = webhook_server.post(body)
    outcome = check_answer(body, answer)
    expected = _expected(path)
    if expected != "untriaged":
        assert outcome == expected, f"{path.name}: {answer.body[:400]!r}"
    doc = json.loads(answer.body)
    message = (
        doc["error"]["message"] if "error" in doc else doc["response"].get("status", {}).get("message", "")
    )
    assert len(message) <= MAX_MESSAGE, f"{path.name}: a {len(message)}-character message"
    warnings = doc.get("response", {}).get("warnings", [])
    assert sum(map(len, warnings)) <= MAX_MESSAGE, (
        f"{path.name}: {sum(map(len, warnings))} characters of warnings"
    )
