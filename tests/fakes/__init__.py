"""Local stand-ins for outside services (GitHub in github.py), and the smallest Cluster the providers need.

Providers read Secrets only through ``Cluster.get_secret``; :class:`SecretsCluster` is that one
method over a dict, with the API's base64 ``data`` shape, for provider tests that need nothing else.
"""

from __future__ import annotations

import base64
from typing import Any

__all__ = ["SecretsCluster"]


class SecretsCluster:
    """``get_secret`` over an in-memory store; ``put`` to add or replace, ``reads`` counts calls."""

    def __init__(self) -> None:
        self._secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.reads = 0

    def put(self, namespace: str, name: str, data: dict[str, str | bytes]) -> None:
        encoded = {
            k: base64.b64encode(v.encode() if isinstance(v, str) else v).decode() for k, v in data.items()
        }
        self._secrets[(namespace, name)] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"namespace": namespace, "name": name},
            "data": encoded,
        }

    def delete(self, namespace: str, name: str) -> None:
        self._secrets.pop((namespace, name), None)

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        secret = self._secrets.get((namespace, name))
        return None if secret is None else {**secret, "data": dict(secret["data"])}
