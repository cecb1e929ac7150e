"""The sidecar's real BrokerClient against the real broker: both sides of docs/broker-api.md agree."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from taskcreds.sidecar.client import BrokerClient
from taskcreds.sidecar.errors import PolicyDenied, TaskTerminal, WrongBrokerIdentity

from taskcreds import names
from taskcreds.svid import X509SvidMaterial, client_context
from tests.operator.test_broker_harness import (  # noqa: F401  (harness is a fixture)
    BROKER_ID,
    CANARY,
    NS,
    Harness,
    harness,
)


class _Identity:
    def __init__(self, svid: X509SvidMaterial) -> None:
        self._context = client_context(svid)

    def ssl_context(self) -> ssl.SSLContext:
        return self._context


def _client(
    h: Harness, tmp_path: Path, pod_name: str, *, broker_id: str = BROKER_ID, task: str = "fix-42"
) -> BrokerClient:
    pod = h.cluster.pods[(NS, pod_name)]
    agent = h.agent(pod)
    token_file = tmp_path / f"{pod_name}.token"
    token_file.write_text(agent.token or "")
    assert agent.svid is not None
    return BrokerClient(
        url=h.url,
        broker_spiffe_id=broker_id,
        token_file=str(token_file),
        task=task,
        identity=_Identity(agent.svid),
    )


async def test_sidecar_client_full_cycle(harness: Harness, tmp_path: Path) -> None:  # noqa: F811
    harness.add_pod("agent-1", credentials="api,legacy")
    client = _client(harness, tmp_path, "agent-1")
    try:
        result = await client.issue(ttl="10m")
        assert result.task_status == "running" and result.deadline is None
        creds = {c.name: c for c in result.credentials}
        assert creds["legacy"].files == {"token": CANARY} and creds["legacy"].static
        renewed = await client.renew("api", creds["api"].lease_ref)
        assert renewed.lease_ref != creds["api"].lease_ref and renewed.expires_at > renewed.issued_at

        async def complete() -> None:
            await asyncio.sleep(0.1)
            harness.hub.update(
                harness.cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "completed")
            )

        waker = asyncio.create_task(complete())
        status = await client.wait_status("running", 5)
        await waker
        assert status.terminal and status.reason == "completed"
        with pytest.raises(TaskTerminal):
            await client.issue()
        assert await client.revoke_task("sigterm") == ["api", "legacy"]
    finally:
        await client.close()


async def test_sidecar_client_refusals_map_to_its_errors(harness: Harness, tmp_path: Path) -> None:  # noqa: F811
    harness.add_pod("agent-1")
    wrong_task = _client(harness, tmp_path, "agent-1", task="not-mine")
    impostor = _client(harness, tmp_path, "agent-1", broker_id=f"spiffe://taskcreds.local/ns/{NS}/sa/agent")
    try:
        with pytest.raises(PolicyDenied, match="task_mismatch|is not the task"):
            await wrong_task.issue()
        with pytest.raises(WrongBrokerIdentity):  # the broker is not who the sidecar expects: nothing sent
            await impostor.issue()
    finally:
        await wrong_task.close()
        await impostor.close()
