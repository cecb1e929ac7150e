"""Run a whole taskcreds-operator on its own thread and event loop, for tests against the API stand-in.

kopf cancels every task created after it started when it stops (it assumes the loop is its own), so
each operator gets a loop to itself, as it has the process to itself in a pod.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

from taskcreds.operator.config import load_config
from taskcreds.operator.kube import connect
from taskcreds.operator.main import OperatorParts, kopf_settings_for_taskcreds, run_operator
from taskcreds.operator.settings import OperatorSettings

from taskcreds.loop import run_loop
from taskcreds.metrics import OperatorMetrics, register_operator
from tests.kube.fixtures import KubeApi
from tests.ports import free_port

__all__ = ["Replica", "webhook_configuration"]


def webhook_configuration(namespace: str = "taskcreds-system", *, timeout: int = 5) -> dict[str, Any]:
    """The chart's MutatingWebhookConfiguration (service ``taskcreds-webhook`` in ``namespace``),
    without the caBundle: the operator patches that in itself, as it does in a cluster."""
    from taskcreds import names

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "taskcreds"},
        "webhooks": [
            {
                "name": "inject.taskcreds.io",
                "clientConfig": {
                    "service": {"namespace": namespace, "name": "taskcreds-webhook", "path": "/mutate", "port": 443}
                },
                "rules": [
                    {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
                ],
                "objectSelector": {"matchLabels": {names.LABEL_INJECT: "true"}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": timeout,
            }
        ],
    }


class Replica:
    """One taskcreds-operator on its own loop and thread (kopf owns its loop, as in a pod)."""

    def __init__(self, kube_api: KubeApi, svid: Any, token: str) -> None:
        self.ports = {"webhook": free_port(), "broker": free_port(), "metrics": free_port()}
        self.metrics: OperatorMetrics = register_operator()
        self._kube_api, self._svid, self._token = kube_api, svid, token
        self._box: dict[str, Any] = {}
        self.failure: list[BaseException] = []
        self.replica_id = f"replica-{uuid.uuid4().hex[:8]}"  # one process, several replicas: distinct ids
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            run_loop(self._run())  # the loop taskcreds-operator runs on
        except BaseException as exc:
            self.failure.append(exc)

    async def _run(self) -> None:
        cluster = await connect(url=self._kube_api.url, token=self._token)
        kopf_settings = kopf_settings_for_taskcreds()
        kopf_settings.queueing.idle_timeout = 0.3
        kopf_settings.queueing.exit_timeout = 0.3
        self._box["stop"], self._box["loop"] = asyncio.Event(), asyncio.get_running_loop()
        parts = self._box["parts"] = OperatorParts(metrics=self.metrics, replica_id=self.replica_id)
        settings = OperatorSettings(
            webhook_listen=("127.0.0.1", self.ports["webhook"]),
            broker_listen=("127.0.0.1", self.ports["broker"]),
            metrics_listen=("127.0.0.1", self.ports["metrics"]),
        )
        info = self._kube_api.kopf_connection_info()
        import kopf

        login = kopf.ConnectionInfo(server=info.server, token=self._token, ca_data=info.ca_data)
        try:
            await run_operator(
                settings,
                load_config(None),
                cluster=cluster,
                svid_source=lambda: self._svid,
                stop=self._box["stop"],
                parts=parts,
                kopf_login=lambda **_: login,
                kopf_settings=kopf_settings,
                sweep_interval=0.5,
            )
        finally:
            await cluster.close()

    def start(self) -> None:
        self.thread.start()

    @property
    def ready(self) -> bool:
        return "parts" in self._box and self._box["parts"].ready.is_set()

    def stop(self) -> None:
        if "loop" in self._box:
            self._box["loop"].call_soon_threadsafe(self._box["stop"].set)
        self.thread.join(30)

    @property
    def parts(self) -> OperatorParts:
        return self._box["parts"]

    async def wait_ready(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while not self.ready:
            assert not self.failure, f"operator failed to start: {self.failure[0]!r}"
            assert self.thread.is_alive() and time.monotonic() < deadline, f"operator not ready within {within:g} s"
            await asyncio.sleep(0.05)
