"""The admission webhook's index of CredentialSources: the broker's grant rules, without I/O.

Every grant case is decided twice — by the index and by the broker's own policy
(:func:`policy.check_credentials` over the source :func:`sources.resolve_source` would pick) — and
the two must agree; then the webhook app, with the index as its policy, denies a pod as a person
sees it through ``kubectl``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from taskcreds.operator.broker import policy
from taskcreds.operator.broker.errors import PolicyDenied
from taskcreds.operator.config import InjectionConfig
from taskcreds.operator.credindex import CredentialIndex
from taskcreds.operator.injection import mutate_pod
from taskcreds.operator.sources import SourceError, parse_source
from taskcreds.operator.webhook import make_webhook_app

from taskcreds import names
from taskcreds.metrics import register_operator
from tests.operator.test_policy import NOW, UID, pod

CS, CCS = names.KIND_CREDENTIAL_SOURCE, names.KIND_CLUSTER_CREDENTIAL_SOURCE


def source(
    kind: str,
    name: str = "github",
    *,
    namespace: str | None = "team-a",
    accounts: list[str] | None = None,
    namespaces: list[str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "provider": "jwt",
        "maxTTL": "1h",
        "allowedServiceAccounts": ["agent"] if accounts is None else accounts,
        **spec,
    }
    meta: dict[str, Any] = {"name": name}
    if kind == CCS:
        body["allowedNamespaces"] = ["team-a"] if namespaces is None else namespaces
    else:
        meta["namespace"] = namespace
    return {"apiVersion": names.API_VERSION, "kind": kind, "metadata": meta, "spec": body}


BROKEN = {"maxTTL": "forever"}

#: (case, objects in the cluster, service account, namespace, granted?, words the denial must say)
GRANT_CASES: list[tuple[str, list[dict[str, Any]], str, str, bool, list[str]]] = [
    ("namespaced source grants", [source(CS)], "agent", "team-a", True, []),
    ("no source anywhere", [], "agent", "team-a", False, ["no CredentialSource 'github'", "create one"]),
    (
        "namespaced source, other account",
        [source(CS, accounts=["builder"])],
        "agent",
        "team-a",
        False,
        ["allowedServiceAccounts of CredentialSource team-a/github is [builder]", "add 'agent'"],
    ),
    ("source of another namespace", [source(CS, namespace="team-b")], "agent", "team-a", False, ["no Cred"]),
    ("cluster source grants", [source(CCS)], "agent", "team-a", True, []),
    (
        "cluster source, namespace not allowed",
        [source(CCS, namespaces=["team-b"])],
        "agent",
        "team-a",
        False,
        ["allowedNamespaces of ClusterCredentialSource github is [team-b]", "add 'team-a'"],
    ),
    (
        "cluster source, account not allowed",
        [source(CCS, accounts=["x"])],
        "agent",
        "team-a",
        False,
        ["allowedServiceAccounts of ClusterCredentialSource github is [x]"],
    ),
    (
        "namespaced source wins over a cluster source that would grant",
        [source(CS, accounts=["builder"]), source(CCS)],
        "agent",
        "team-a",
        False,
        ["CredentialSource team-a/github"],
    ),
    (
        "namespaced source wins over a cluster source that would deny",
        [source(CS), source(CCS, namespaces=["team-b"])],
        "agent",
        "team-a",
        True,
        [],
    ),
    (
        "broken namespaced source never falls through to the cluster one",
        [source(CS, **BROKEN), source(CCS)],
        "agent",
        "team-a",
        False,
        ["cannot be used", "spec.maxTTL", "fix the source"],
    ),
    ("broken cluster source", [source(CCS, **BROKEN)], "agent", "team-a", False, ["cannot be used"]),
]


def index_of(objects: list[dict[str, Any]]) -> CredentialIndex:
    index = CredentialIndex()
    for obj in objects:
        index.update(copy.deepcopy(obj))
    index.mark_synced()
    return index


def broker_decision(objects: list[dict[str, Any]], sa: str, ns: str) -> str | None:
    """What the broker says for the same cluster: resolve as resolve_source does, then the policy."""
    ns_obj = next((o for o in objects if o["kind"] == CS and o["metadata"]["namespace"] == ns), None)
    cl_obj = next((o for o in objects if o["kind"] == CCS), None)
    chosen = ns_obj or cl_obj
    resolved: Any = None
    if chosen is not None:
        try:
            resolved = parse_source(chosen)
        except SourceError as exc:
            resolved = exc
    p = pod()
    p["metadata"]["namespace"] = ns
    p["metadata"]["annotations"][names.ANNOTATION_CREDENTIALS] = "github"
    view = policy.check_task(
        p, namespace=ns, pod_name="agent-1", pod_uid=UID, service_account=sa, task="fix-42", now=NOW
    )
    try:
        policy.check_credentials(view, ["github"], {"github": resolved})
    except PolicyDenied as exc:
        return exc.reason
    return None


@pytest.mark.parametrize(
    ("case", "objects", "sa", "ns", "granted", "words"), GRANT_CASES, ids=[c[0] for c in GRANT_CASES]
)
def test_index_decides_as_the_broker_does(
    case: str, objects: list[dict[str, Any]], sa: str, ns: str, granted: bool, words: list[str]
) -> None:
    reason = index_of(objects).check(ns, sa, "github")
    assert (reason is None) == granted, reason
    assert (broker_decision(objects, sa, ns) is None) == granted, "the table disagrees with the broker"
    for word in words:
        assert word in (reason or ""), reason


def test_before_the_first_list_nothing_is_denied() -> None:
    index = CredentialIndex()
    assert not index.synced
    assert index.check("team-a", "agent", "github") is None  # fail open: the broker still decides
    index.mark_synced()
    assert index.synced and index.check("team-a", "agent", "github") is not None


def test_updates_and_deletes_follow_the_watch() -> None:
    index = index_of([source(CS)])
    assert index.check("team-a", "agent", "github") is None
    index.update(source(CS, accounts=["builder"]))
    assert index.check("team-a", "agent", "github") is not None
    index.delete(source(CS))
    assert "no CredentialSource" in (index.check("team-a", "agent", "github") or "")
    # the kind can come from the handler rather than the body (kopf bodies carry it; lists may not)
    body = source(CCS)
    del body["kind"]
    index.update(body, CCS)
    assert index.check("team-a", "agent", "github") is None and len(index) == 1


async def test_priming_list_never_undoes_what_the_watch_said() -> None:
    index = CredentialIndex()
    index.delete(source(CS, "gone"))  # the watch saw it deleted after the list was taken
    index.update(source(CS, "fresh", accounts=["agent"]))  # and saw a newer version of this one

    async def list_kind(kind: str) -> list[dict[str, Any]]:
        if kind == CS:
            return [source(CS, "gone"), source(CS, "fresh", accounts=["old"]), source(CS, "listed")]
        return []

    await index.prime(list_kind)
    assert index.synced
    assert "no CredentialSource" in (index.check("team-a", "agent", "gone") or "")
    assert index.check("team-a", "agent", "fresh") is None
    assert index.check("team-a", "agent", "listed") is None


async def test_priming_retries_until_the_api_answers() -> None:
    calls = []

    async def flaky(kind: str) -> list[dict[str, Any]]:
        calls.append(kind)
        if len(calls) < 3:
            raise ConnectionError("API away")
        return []

    index = CredentialIndex()
    await asyncio.wait_for(index.prime(flaky, retry_delay=0.01), 5)
    assert index.synced and len(calls) >= 3


@pytest.mark.parametrize(
    ("case", "spec", "expected"),
    [
        ("file by default", {}, ("file", None)),
        ("file when asked", {"delivery": "file"}, ("file", None)),
        (
            "proxy",
            {
                "delivery": "proxy",
                "proxy": {"hosts": ["api.github.com"], "header": "Authorization: Bearer {token}"},
            },
            "proxy",
        ),
    ],
)
def test_delivery(case: str, spec: dict[str, Any], expected: Any) -> None:
    index = index_of([source(CS, **spec)])
    got = index.delivery("team-a", "github")
    if expected == "proxy":
        assert got[0] == "proxy" and got[1] is not None
    else:
        assert got == expected
    assert index.delivery("team-a", "unknown") == ("file", None)


def test_long_allowed_lists_are_cut_in_messages() -> None:
    accounts = [f"account-{i:04d}" for i in range(2000)]
    reason = index_of([source(CS, accounts=accounts)]).check("team-a", "agent", "github")
    assert reason is not None and len(reason) < 600 and "characters)" in reason


def test_checking_is_a_few_dict_lookups() -> None:
    import time

    index = index_of([source(CS, f"cred-{i}") for i in range(500)] + [source(CCS, "shared")])
    runs = 20000
    start = time.perf_counter()
    for _ in range(runs):
        index.check("team-a", "agent", "cred-7")
        index.check("team-a", "agent", "shared")
        index.delivery("team-a", "cred-7")
    assert (time.perf_counter() - start) / runs < 20e-6


# --- the webhook, with the index as its policy ----------------------------------------------


def review(obj: dict[str, Any], namespace: str = "team-a") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": obj,
        },
    }


def agent_pod(credentials: str, sa: str = "agent") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "agent-1",
            "labels": {names.LABEL_INJECT: "true"},
            "annotations": {names.ANNOTATION_TASK: "fix-42", names.ANNOTATION_CREDENTIALS: credentials},
        },
        "spec": {
            "serviceAccountName": sa,
            "securityContext": {"fsGroup": 1000},
            "containers": [{"name": "agent", "image": "agent:1"}],
        },
    }


@pytest.fixture
async def webhook_client() -> Any:
    index = index_of(
        [
            source(CS),
            source(
                CS,
                "llm",
                delivery="proxy",
                proxy={"hosts": ["api.example.com"], "header": "Authorization: Bearer {token}"},
            ),
        ]
    )
    import functools

    app = make_webhook_app(
        InjectionConfig(),
        register_operator(),
        mutate=functools.partial(mutate_pod, encoded=True, delivery=index.delivery),
        credential_check=index.check,
    )
    async with TestClient(TestServer(app)) as client:
        yield client


WEBHOOK_CASES = [
    ("granted", "github", "agent", True, []),
    (
        "no such source",
        "github,vault-db",
        "agent",
        False,
        ['credential "vault-db"', "service account 'agent'", "namespace 'team-a'", "no CredentialSource"],
    ),
    (
        "account not allowed",
        "github",
        "intruder",
        False,
        ['credential "github"', "'intruder'", "allowedServiceAccounts of CredentialSource team-a/github"],
    ),
]


@pytest.mark.parametrize(
    ("case", "credentials", "sa", "allowed", "words"), WEBHOOK_CASES, ids=[c[0] for c in WEBHOOK_CASES]
)
async def test_webhook_denies_ungranted_credentials(
    webhook_client: TestClient, case: str, credentials: str, sa: str, allowed: bool, words: list[str]
) -> None:
    resp = await webhook_client.post("/mutate", data=orjson.dumps(review(agent_pod(credentials, sa))))
    assert resp.status == 200
    answer = (await resp.json())["response"]
    assert answer["allowed"] is allowed, answer
    message = (answer.get("status") or {}).get("message", "")
    for word in words:
        assert word in message, message
    if allowed:
        assert answer["patch"]
    else:
        assert "patch" not in answer and answer["status"]["code"] == 403


async def test_webhook_sets_the_proxy_env_for_proxy_delivered_credentials(webhook_client: TestClient) -> None:
    for credentials, proxied in (("github", False), ("github,llm", True)):
        resp = await webhook_client.post("/mutate", data=orjson.dumps(review(agent_pod(credentials))))
        answer = (await resp.json())["response"]
        patch = orjson.loads(base64.b64decode(answer["patch"]))
        text = orjson.dumps(patch).decode()
        assert ("HTTPS_PROXY" in text) is proxied and ("TASKCREDS_LISTEN_PROXY" in text) is proxied
