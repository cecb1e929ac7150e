"""Suite-wide fixtures. No test may reach a real cluster unless it is under tests/e2e."""

from __future__ import annotations

import os

import pytest

# shared fixtures usable in every test without importing them by name
pytest_plugins = ["tests.spiffe.fixtures", "tests.kube.fixtures"]


@pytest.fixture(autouse=True)
def _no_real_cluster(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Outside tests/e2e, hide any KUBECONFIG so nothing can touch a real cluster by accident."""
    if "e2e" not in request.node.nodeid.split(os.sep)[1:2] and "tests/e2e" not in request.node.nodeid:
        monkeypatch.delenv("KUBECONFIG", raising=False)
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
