"""Real-cluster fixtures: skipped, saying why, unless KUBECONFIG (or ~/.kube/config) reaches a cluster.

scripts/kind-e2e.sh makes such a cluster (kind-config.yaml), builds and loads the image, installs
SPIRE, OpenBao and the chart, then runs this suite. Run by hand against any cluster with:
    TASKCREDS_E2E_IMAGE=repo/taskcreds:tag KUBECONFIG=... .venv/bin/python -m pytest tests/e2e
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "taskcreds"
RELEASE = os.environ.get("TASKCREDS_E2E_RELEASE", "taskcreds")
NAMESPACE = os.environ.get("TASKCREDS_E2E_NAMESPACE", "taskcreds-system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def kube() -> Any:
    """The official kubernetes client, configured from KUBECONFIG; skips when no cluster answers."""
    try:
        from kubernetes import client, config
    except ImportError:
        pytest.skip("the kubernetes client is not installed (pip install kubernetes)")
    kubeconfig = os.environ.get("KUBECONFIG")
    try:
        config.load_kube_config(config_file=kubeconfig)
    except Exception as exc:  # no file, no context: there is no cluster to talk to
        pytest.skip(
            f"no Kubernetes cluster: set KUBECONFIG to a reachable cluster "
            f"(scripts/kind-e2e.sh makes one); loading {kubeconfig or '~/.kube/config'} failed: "
            f"{type(exc).__name__}"
        )
    api = client.ApiClient()
    try:
        client.VersionApi(api).get_code(_request_timeout=5)
    except Exception as exc:
        pytest.skip(
            f"no Kubernetes cluster reachable through KUBECONFIG={kubeconfig or '~/.kube/config'}: "
            f"{type(exc).__name__}"
        )
    return client


def _helm() -> str:
    venv_helm = REPO / ".venv" / "bin" / "helm"
    return str(venv_helm) if venv_helm.exists() else "helm"


@pytest.fixture(scope="session")
def release(kube: Any) -> dict[str, str]:
    """The chart installed (helm upgrade --install --wait: a no-op when kind-e2e.sh installed it)."""
    if os.environ.get("TASKCREDS_E2E_INSTALLED") == "1":  # scripts/kind-e2e.sh installed it already
        return {"release": RELEASE, "namespace": NAMESPACE}
    image = os.environ.get("TASKCREDS_E2E_IMAGE", "")
    args = [
        _helm(),
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "5m",
    ]
    if image:
        repo, _, tag = image.rpartition(":")
        args += [
            "--set",
            f"image.repository={repo}",
            "--set",
            f"image.tag={tag}",
            "--set",
            "image.pullPolicy=IfNotPresent",
        ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, f"helm install failed:\n{proc.stderr}"
    return {"release": RELEASE, "namespace": NAMESPACE}


@pytest.fixture
def agent_namespace(kube: Any, release: dict[str, str]) -> Iterator[str]:
    """A fresh namespace with service account coding-agent and a jwt CredentialSource granting it."""
    name = f"tc-e2e-{uuid.uuid4().hex[:8]}"
    core = kube.CoreV1Api()
    core.create_namespace({"metadata": {"name": name}})
    try:
        core.create_namespaced_service_account(name, {"metadata": {"name": "coding-agent"}})
        kube.CustomObjectsApi().create_namespaced_custom_object(
            "taskcreds.io",
            "v1alpha1",
            name,
            "credentialsources",
            {
                "apiVersion": "taskcreds.io/v1alpha1",
                "kind": "CredentialSource",
                "metadata": {"name": "api-token"},
                "spec": {
                    "provider": "jwt",
                    "defaultTTL": "15m",
                    "maxTTL": "1h",
                    "allowedServiceAccounts": ["coding-agent"],
                    "jwt": {"audience": ["e2e"]},
                },
            },
        )
        yield name
    finally:
        core.delete_namespace(name)
