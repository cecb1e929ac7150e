"""A real broker on loopback for the broker tests: SPIFFE mTLS with SVIDs minted by the development
authority, the in-memory Cluster (or any Cluster), real providers, real HTTP clients.

    from tests.operator.test_broker_harness import harness  # noqa: F401  (pytest fixture)
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from taskcreds.operator.broker.server import BrokerServer, make_broker_app
from taskcreds.operator.broker.settings import BrokerSettings
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.registry import make_providers
from taskcreds.operator.taskstatus import TaskStatusHub

from taskcreds import names
from taskcreds.devauthority import DevAuthority
from taskcreds.metrics import register_operator
from taskcreds.svid import X509SvidMaterial, client_context

TRUST_DOMAIN = "taskcreds.local"
NS = "team-a"
SA = "agent"
BROKER_ID = f"spiffe://{TRUST_DOMAIN}/ns/taskcreds-system/sa/taskcreds-operator"
CANARY = "canary-legacy-secret-value-7f3a9c"


def spiffe_id(namespace: str = NS, service_account: str = SA) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def pod_body(
    name: str,
    *,
    task: str = "fix-42",
    credentials: str = "api",
    namespace: str = NS,
    service_account: str = SA,
    opted_in: bool = True,
    **annotations: str,
) -> dict[str, Any]:
    extra = {f"{names.PREFIX}/{k.replace('_', '-')}": v for k, v in annotations.items()}
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {names.LABEL_INJECT: "true"} if opted_in else {},
            "annotations": {names.ANNOTATION_TASK: task, names.ANNOTATION_CREDENTIALS: credentials, **extra},
        },
        "spec": {"serviceAccountName": service_account, "containers": [{"name": "agent", "image": "x"}]},
    }


def source(
    name: str,
    provider: str,
    *,
    namespace: str | None = NS,
    max_ttl: str = "1h",
    default_ttl: str = "15m",
    accounts: tuple[str, ...] = (SA,),
    **blocks: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "provider": provider,
        "defaultTTL": default_ttl,
        "maxTTL": max_ttl,
        "allowedServiceAccounts": list(accounts),
        **blocks,
    }
    if namespace is None:
        spec.setdefault("allowedNamespaces", [NS])
        return {"kind": names.KIND_CLUSTER_CREDENTIAL_SOURCE, "metadata": {"name": name}, "spec": spec}
    return {
        "kind": names.KIND_CREDENTIAL_SOURCE,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


@dataclass
class Agent:
    """One sidecar: its SVID, its pod-bound token, an mTLS client session."""

    pod: dict[str, Any]
    svid: X509SvidMaterial | None
    token: str | None
    session: aiohttp.ClientSession


@dataclass
class Reply:
    status: int
    doc: Any
    headers: Any
    raw: bytes = field(repr=False, default=b"")

    @property
    def code(self) -> str | None:
        return (self.doc or {}).get("error", {}).get("code") if isinstance(self.doc, dict) else None


class Harness:
    def __init__(self, cluster: Any = None, settings: BrokerSettings | None = None) -> None:
        self.authority = DevAuthority(TRUST_DOMAIN, allow=True)
        self.cluster = cluster or MemCluster()
        self.settings = settings or BrokerSettings(
            namespace="taskcreds-system", jwt_issuer="https://broker.test"
        )
        self.metrics = register_operator()
        self.providers = make_providers(self.cluster, self.settings)
        self.hub = TaskStatusHub()
        self.broker_svid = self.authority.mint_x509_svid(BROKER_ID)
        self.app = make_broker_app(
            cluster=self.cluster,
            providers=self.providers,
            settings=self.settings,
            metrics=self.metrics,
            trust_domain=TRUST_DOMAIN,
            hub=self.hub,
        )
        self.server = BrokerServer(self.app, lambda: self.broker_svid)
        self._sessions: list[aiohttp.ClientSession] = []

    async def start(self) -> None:
        await self.server.start("127.0.0.1", 0)

    async def close(self) -> None:
        for session in self._sessions:
            await session.close()
        await self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    def put_sources(self) -> None:
        """The standard sources: jwt ``api``, static ``legacy`` (canary value), cluster jwt ``shared``."""
        mem = self.cluster
        mem.put_source(source("api", "jwt", jwt={"audience": [f"{NS}/my-api"], "claims": {"scope": "read"}}))
        mem.put_source(
            source("legacy", "secret", secret={"secretRef": {"name": "legacy-token", "key": "token"}})
        )
        mem.put_secret(NS, "legacy-token", {"token": CANARY})
        mem.put_source(source("shared", "jwt", namespace=None, jwt={"audience": ["shared-api"]}))
        mem.put_source(source("broken", "secret", secret={"secretRef": {"name": "missing", "key": "token"}}))

    def add_pod(self, name: str, **kw: Any) -> dict[str, Any]:
        return self.cluster.put_pod(pod_body(name, **kw))

    def agent(
        self,
        pod: dict[str, Any],
        *,
        svid_id: str | None = None,
        token: str | None = None,
        audiences: tuple[str, ...] = (names.TOKEN_AUDIENCE,),
        svid: X509SvidMaterial | None = None,
        no_svid: bool = False,
    ) -> Agent:
        meta = pod["metadata"]
        if svid is None and not no_svid:
            sa = pod["spec"]["serviceAccountName"]
            svid = self.authority.mint_x509_svid(svid_id or spiffe_id(meta["namespace"], sa))
        if token is None:
            token = self.cluster.issue_pod_token(
                meta["namespace"], pod["spec"]["serviceAccountName"], meta["name"], meta["uid"], audiences
            )
        if svid is not None:
            context = client_context(svid)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.load_verify_locations(cadata=self.authority.bundle_pem().decode())
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        self._sessions.append(session)
        return Agent(pod=pod, svid=svid, token=token, session=session)

    async def call(
        self,
        agent: Agent,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        hdrs = {"Content-Type": "application/json"}
        if agent.token:
            hdrs["Authorization"] = f"Bearer {agent.token}"
        hdrs.update(headers or {})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with agent.session.request(
            method, self.url + path, data=data, headers=hdrs, params=params
        ) as resp:
            content = await resp.read()
            try:
                doc = json.loads(content) if content else None
            except ValueError:
                doc = None
            return Reply(resp.status, doc, resp.headers, content)

    async def issue(self, agent: Agent, task: str = "fix-42", **body: Any) -> Reply:
        return await self.call(agent, "POST", "/v1/credentials", {"task": task, **body})


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    h.put_sources()
    await h.start()
    yield h
    await h.close()
