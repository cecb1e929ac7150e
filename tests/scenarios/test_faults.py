"""The fault matrix in CI: every fault of tests/scenarios/faults.py as one case, asserting its row.

A row passes when every issued value is dead at its source, the files are gone, the pod either
never turned ready or turned ready only with its credentials on disk, no lease was lost, and the
fault's own expectations held. The table is printed at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.openbao import OpenBao
from tests.scenarios.faults import FAULT_ROWS, FAULTS, KUBELET_LAG, FaultCluster, run_fault
from tests.scenarios.harness import Harness

#: faults that show a real weakness in the product, not fixable in tests/scenarios (see the README)
KNOWN: dict[str, str] = {}


@pytest.fixture(scope="module")
def faults(openbao: OpenBao) -> Iterator[FaultCluster]:
    harness = Harness(openbao, kubelet_lag=KUBELET_LAG)
    fc = FaultCluster(harness)
    try:
        harness.start_operator()
        yield fc
    finally:
        fc.close()
        harness.close()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN[n])) if n in KNOWN else n
        for n in FAULTS
    ],
)
async def test_fault(faults: FaultCluster, name: str) -> None:
    row = await run_fault(faults, name)
    FAULT_ROWS.append(row)
    assert row.ok, f"{name}: {row.problems or row}"
