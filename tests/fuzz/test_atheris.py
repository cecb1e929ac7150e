"""Run the atheris target (atheris_webhook.py) for a bounded number of iterations, seeded with the corpus."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.harness import CORPUS, EXAMPLES

atheris = pytest.importorskip(
    "atheris",
    reason="atheris is not installed (pip install atheris; it ships wheels for CPython 3.11 on Linux)",
)

TARGET = Path(__file__).resolve().parent / "atheris_webhook.py"
#: iterations: bounded on every run (~5 s), longer with TASKCREDS_FUZZ_EXAMPLES
RUNS = 20_000 if EXAMPLES <= 60 else EXAMPLES * 200


def test_atheris_decode_and_mutate(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    work = tmp_path / "work"
    seeds.mkdir()
    work.mkdir()
    for path in CORPUS.iterdir():
        if path.name == "README.md" or not path.is_file():  # corpus/broker/ seeds atheris_broker.py
            continue
        body = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        if len(body) <= 64 * 1024:  # libFuzzer mutates small inputs; the big ones are replayed in test_corpus
            (seeds / path.name.removesuffix(".gz")).write_bytes(body)
    proc = subprocess.run(
        [
            sys.executable,
            str(TARGET),
            f"-runs={RUNS}",
            "-max_len=8192",
            "-timeout=10",
            f"-artifact_prefix={tmp_path}/",
            str(work),
            str(seeds),
        ],
        # cwd outside the repository: its operator/ folder must not shadow the standard library's
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
    tail = "\n".join(proc.stderr.splitlines()[-30:])
    assert proc.returncode == 0 and not crashes, f"atheris found {crashes}:\n{tail}"
    assert "Done" in proc.stderr, tail
