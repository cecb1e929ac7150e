"""One task's whole life through the broker, run twice: on the in-memory Cluster and on KubeCluster
over the Kubernetes API stand-in (real HTTP, real TokenReview, real pod watch). Same assertions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from taskcreds.operator import leases
from taskcreds.operator.broker.settings import BrokerSettings
from taskcreds.operator.kube import connect
from taskcreds.operator.taskstatus import follow_pods

from taskcreds import names
from tests.kube.fixtures import KubeApi
from tests.operator.test_broker_harness import CANARY, NS, SA, Agent, Harness, pod_body, source

CRDS = Path(__file__).resolve().parents[2] / "charts" / "taskcreds" / "crds"


class KubeHarness(Harness):
    """The harness with KubeCluster; objects and tokens come from the stand-in."""

    def __init__(self, kube_api: KubeApi, cluster: Any) -> None:
        self.kube_api = kube_api
        super().__init__(
            cluster=cluster,
            settings=BrokerSettings(namespace="taskcreds-system", jwt_issuer="https://broker.test"),
        )

    def put_sources(self) -> None:
        api = self.kube_api
        for ns in (NS, "taskcreds-system"):
            api.ensure_namespace(ns)
        api.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SA, "namespace": NS}})
        for body in (
            source("api", "jwt", jwt={"audience": [f"{NS}/my-api"]}),
            source("legacy", "secret", secret={"secretRef": {"name": "legacy-token", "key": "token"}}),
        ):
            api.put({"apiVersion": names.API_VERSION, **body})
        api.put(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "legacy-token", "namespace": NS},
                "data": {"token": __import__("base64").b64encode(CANARY.encode()).decode()},
            }
        )

    def add_pod(self, name: str, **kw: Any) -> dict[str, Any]:
        return self.kube_api.put({"apiVersion": "v1", "kind": "Pod", **pod_body(name, **kw)})

    def set_status(self, name: str, status: str) -> None:
        pod = self.kube_api.get("v1", "Pod", NS, name)
        pod["metadata"]["annotations"][names.ANNOTATION_TASK_STATUS] = status
        self.kube_api.put(pod)

    def agent(self, pod: dict[str, Any], **kw: Any) -> Agent:
        if "token" not in kw:
            kw["token"] = self.kube_api.issue_pod_token(NS, pod["metadata"]["name"])
        return super().agent(pod, **kw)

    def lease(self, pod: str, task: str) -> dict[str, Any] | None:
        return self.kube_api.get(
            names.API_VERSION,
            names.KIND_TASK_LEASE,
            NS,
            leases.lease_name(pod, task),
        )

    def events_text(self) -> str:
        return json.dumps(self.kube_api.events)


class MemHarness(Harness):
    def set_status(self, name: str, status: str) -> None:
        self.cluster.set_annotation(NS, name, names.ANNOTATION_TASK_STATUS, status)

    def lease(self, pod: str, task: str) -> dict[str, Any] | None:
        return self.cluster.task_leases.get((NS, leases.lease_name(pod, task)))

    def events_text(self) -> str:
        return json.dumps(self.cluster.events)


@contextlib.asynccontextmanager
async def kube_world(tmp_path: Path) -> AsyncIterator[KubeHarness]:
    """A started broker harness on the Kubernetes API stand-in, with the chart's CRDs."""
    async with KubeApi() as api:
        api.register_crds_from(CRDS)
        cluster = await connect(kubeconfig=api.kubeconfig(tmp_path))
        h = KubeHarness(api, cluster)
        h.put_sources()
        await h.start()
        yield h
        await h.close()
        await cluster.close()


@pytest.fixture(params=["memcluster", "kube"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    if request.param == "memcluster":
        h: Harness = MemHarness()
        h.put_sources()
        await h.start()
        yield h
        await h.close()
        return
    async with kube_world(tmp_path) as kube_h:
        yield kube_h


async def test_task_lifecycle_end_to_end(world: Any) -> None:
    watcher = asyncio.create_task(follow_pods(world.cluster, world.hub))  # what every replica runs
    try:
        pod = world.add_pod("agent-1", credentials="api,legacy", max_duration="1h")
        agent = world.agent(pod)

        issued = await world.issue(agent, ttl="10m")
        assert issued.status == 200, issued.doc
        by_name = {c["name"]: c for c in issued.doc["credentials"]}
        assert by_name["legacy"]["files"] == {"token": CANARY} and by_name["legacy"]["static"] is True
        world.providers["jwt"].verify(by_name["api"]["files"]["token"], f"{NS}/my-api")
        lease = world.lease("agent-1", "fix-42")
        assert lease["status"]["phase"] == "Active" and len(lease["status"]["leases"]) == 2

        renewed = await world.call(
            agent,
            "POST",
            "/v1/credentials/api/renew",
            {"task": "fix-42", "leaseRef": by_name["api"]["leaseRef"]},
        )
        assert renewed.status == 200 and renewed.doc["leaseRef"] != by_name["api"]["leaseRef"]

        async def finish_task() -> None:
            await asyncio.sleep(0.2)
            world.set_status("agent-1", "completed")

        started = time.monotonic()
        finisher = asyncio.create_task(finish_task())
        polled = await world.call(
            agent, "GET", "/v1/tasks/fix-42/status", params={"wait": "10s", "known": "running"}
        )
        woke_after = time.monotonic() - started
        await finisher
        assert (polled.doc["status"], polled.doc["terminal"], polled.doc["reason"]) == (
            "completed",
            True,
            "completed",
        )
        assert woke_after < 2.0  # the watch woke it, not the timeout

        # the lifecycle handlers' revoke (bound RevokeFn)
        current = await world.cluster.get_pod(NS, "agent-1")
        outcome = await leases.revoke_pod_task(
            world.cluster, world.providers, current, "completed", time.monotonic(), metrics=world.metrics
        )
        assert outcome is not None and outcome.done
        lease = world.lease("agent-1", "fix-42")
        assert lease["status"]["phase"] == "Revoked" and not lease["metadata"].get("finalizers")
        # the renewal's provider revoked the jwt it replaced (recorded then, reason superseded)
        reasons = {e["leaseRef"]: e["revokeReason"] for e in lease["status"]["leases"]}
        assert reasons.pop(by_name["api"]["leaseRef"]) == "superseded"
        assert set(reasons.values()) == {"completed"}
        assert all(
            world.providers["jwt"].is_revoked(e["leaseRef"].split(":")[1])
            for e in lease["status"]["leases"]
            if e["provider"] == "jwt"
        )

        refused = await world.issue(agent)
        assert (refused.status, refused.code) == (409, "task_terminal")
        world.set_status("agent-1", "running")
        assert (await world.issue(agent)).status == 409  # final

        for value in [CANARY, by_name["api"]["files"]["token"], renewed.doc["files"]["token"]]:
            assert value not in json.dumps(lease) and value not in world.events_text()
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
