from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart.helm import Helm, find_helm


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helm]:
    """helm with its cache/config/data homes in a temp dir (removed by pytest's tmp_path handling)."""
    binary = find_helm()
    if binary is None:
        pytest.skip(
            "helm not found: expected .venv/bin/helm or helm on PATH (scripts/bootstrap.sh installs it)"
        )
    home: Path = tmp_path_factory.mktemp("helm-home")
    yield Helm(binary=binary, home=home)
