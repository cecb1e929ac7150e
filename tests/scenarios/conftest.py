"""Fixtures for the one-machine end-to-end scenarios, and the revocation-lag table at the end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.openbao import OpenBao
from tests.openbao import openbao as openbao  # noqa: F401, PLC0414  (module-scoped fixture)
from tests.scenarios.faults import FAULT_ROWS, markdown_table
from tests.scenarios.harness import LAG_ROWS, Harness


@pytest.fixture(scope="module")
def cluster(openbao: OpenBao) -> Iterator[Harness]:  # noqa: F811
    """One stand-in API, operator and OpenBao per test module (restart scenarios restart them)."""
    harness = Harness(openbao)
    try:
        harness.start_operator()
        yield harness
    finally:
        harness.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    write = terminalreporter.write_line
    if FAULT_ROWS:
        write("")
        write("taskcreds fault matrix (tests/scenarios/faults.py)")
        for line in markdown_table(FAULT_ROWS).splitlines():
            write(line)
    if not LAG_ROWS:
        return
    write("")
    write(
        "taskcreds scenarios: revocation lag (trigger -> TaskLease Revoked + finalizer released; -> files gone)"
    )
    write(f"{'scenario':<34} {'reason':<12} {'revoked':>9} {'files gone':>11}  note")
    for row in LAG_ROWS:
        rev = "-" if row.revoked_s is None else f"{row.revoked_s * 1000:7.0f}ms"
        files = "-" if row.files_gone_s is None else f"{row.files_gone_s * 1000:8.0f}ms"
        write(f"{row.scenario:<34} {row.reason:<12} {rev:>9} {files:>11}  {row.note}")
