"""Replay every broker corpus file against the real broker over SPIFFE mTLS (see corpus/broker/README.md)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.broker_harness import POD, REVOKE_POD, TASK, LogWatch, ThreadedBroker, check_broker_answer
from tests.fuzz.harness import CORPUS

BROKER_CORPUS = CORPUS / "broker"
ENDPOINTS = {
    "issue": ("/v1/credentials", POD),
    "renew": ("/v1/credentials/api/renew", POD),
    "revoke": (f"/v1/tasks/{TASK}/revoke", REVOKE_POD),
}


def _files() -> list[Path]:
    return sorted(p for p in BROKER_CORPUS.iterdir() if p.is_file() and p.name != "README.md")


def _parts(path: Path) -> tuple[str, str]:
    """(endpoint, expected) from ``<endpoint>--<what>.<expected>.<ext>[.gz]``."""
    endpoint = path.name.split("--", 1)[0]
    parts = path.name.removesuffix(".gz").split(".")
    assert len(parts) >= 3 and endpoint in ENDPOINTS, f"{path.name}: see corpus/broker/README.md"
    return endpoint, parts[-2]


@pytest.fixture(scope="module")
def broker(broker_server: ThreadedBroker, log_watch: LogWatch) -> Iterator[ThreadedBroker]:
    log_watch.take()
    yield broker_server
    assert broker_server.issue_ok().status == 200  # still healthy after the whole corpus
    log_watch.check()


def test_corpus_is_present_and_named_by_outcome() -> None:
    files = _files()
    assert len(files) >= 30
    for path in files:
        _, expected = _parts(path)
        assert expected == "untriaged" or expected.isdigit(), path.name


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_corpus_replay(broker: ThreadedBroker, log_watch: LogWatch, path: Path) -> None:
    endpoint, expected = _parts(path)
    body = path.read_bytes()
    if path.suffix == ".gz":
        body = gzip.decompress(body)
    url, pod = ENDPOINTS[endpoint]
    client = broker.client(pod)
    answer = broker.request(client, "POST", url, body)
    status = check_broker_answer(answer, secrets=[client.token or ""])
    if expected != "untriaged":
        assert status == expected, f"{path.name}: {answer.body[:300]!r}"
    log_watch.check()
