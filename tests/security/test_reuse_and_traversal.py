# ruff: noqa: F811  (the harness fixture is imported by name)
"""Reuse after revocation, and path traversal in task and credential names, against the real
broker (SPIFFE mTLS on loopback) and the real admission mutation. The writer's own refusals are
tests/sidecar/test_writer.py::test_rejects_names_that_could_escape and its symlink tests.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from taskcreds.operator.config import InjectionConfig
from taskcreds.operator.injection import mutate_pod

from taskcreds import names
from tests.operator.test_broker_harness import NS, Harness, harness  # noqa: F401  (harness is a fixture)


async def _issued(h: Harness, pod: dict[str, Any]) -> dict[str, Any]:
    reply = await h.issue(h.agent(pod), credentials=["api"])
    assert reply.status == 200, reply.doc
    return reply.doc["credentials"][0]


@pytest.mark.parametrize("how", ["sidecar revoke", "status completed", "status failed", "pod deleted"])
async def test_nothing_is_reissued_or_renewed_after_the_task_ends(harness: Harness, how: str) -> None:
    pod = harness.add_pod("agent-1")
    agent = harness.agent(pod)
    cred = await _issued(harness, pod)
    if how == "sidecar revoke":
        assert (
            await harness.call(agent, "POST", "/v1/tasks/fix-42/revoke", {"reason": "done"})
        ).status == 200
    elif how == "pod deleted":
        harness.cluster.delete_pod(NS, "agent-1")
    else:
        harness.cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, how.split()[1])
    renew = await harness.call(
        agent, "POST", "/v1/credentials/api/renew", {"task": "fix-42", "leaseRef": cred["leaseRef"]}
    )
    again = await harness.issue(agent)
    expected = (401, "unauthenticated") if how == "pod deleted" else (409, "task_terminal")
    assert (renew.status, renew.code) == expected, renew.doc
    assert (again.status, again.code) == expected, again.doc
    if how == "sidecar revoke":  # the revoked token is published for relying parties that check
        jti = cred["leaseRef"].split(":")[1]
        published = await harness.call(harness.agent(pod, no_svid=True), "GET", "/v1/jwt/revoked")
        assert jti in [r["jti"] for r in published.doc["revoked"]]
        status = await harness.call(agent, "GET", "/v1/tasks/fix-42/status", params={"known": "running"})
        assert (status.doc["terminal"], status.doc["reason"]) == (True, "cancelled")
        # and setting the annotation back to running changes nothing: a revoke is final
        harness.cluster.set_annotation(NS, "agent-1", names.ANNOTATION_TASK_STATUS, "running")
        assert (await harness.issue(agent)).status == 409


#: (case, method, path, body, expected status, expected code)
TRAVERSAL: list[tuple[str, str, str, Any, int, str]] = [
    ("task in body with ../", "POST", "/v1/credentials", {"task": "../fix-42"}, 400, "bad_request"),
    ("task in body with /", "POST", "/v1/credentials", {"task": "fix-42/../../x"}, 400, "bad_request"),
    ("task in body with NUL", "POST", "/v1/credentials", {"task": "fix-42\x00"}, 400, "bad_request"),
    ("task in status path, encoded /", "GET", "/v1/tasks/..%2Ffix-42/status", None, 400, "bad_request"),
    (
        "task in revoke path, encoded ../..",
        "POST",
        "/v1/tasks/fix-42%2F..%2F..%2Fx/revoke",
        {},
        400,
        "bad_request",
    ),
    ("task in revoke path, dot-dot", "POST", "/v1/tasks/../revoke", {}, 404, "not_found"),
    (
        "credential in body with ../",
        "POST",
        "/v1/credentials",
        {"task": "fix-42", "credentials": ["../api"]},
        403,
        "policy_denied",
    ),
    (
        "credential in body with /",
        "POST",
        "/v1/credentials",
        {"task": "fix-42", "credentials": ["api/../legacy"]},
        403,
        "policy_denied",
    ),
    (
        "credential in renew path, encoded ../",
        "POST",
        "/v1/credentials/..%2Flegacy/renew",
        {"task": "fix-42", "leaseRef": "x"},
        403,
        "policy_denied",
    ),
    (
        "credential in renew path, NUL",
        "POST",
        "/v1/credentials/api%00/renew",
        {"task": "fix-42", "leaseRef": "x"},
        403,
        "policy_denied",
    ),
]


@pytest.mark.parametrize(
    ("case", "method", "path", "body", "status", "code"), TRAVERSAL, ids=[t[0] for t in TRAVERSAL]
)
async def test_traversal_in_broker_names_is_refused_before_any_lookup(
    harness: Harness, case: str, method: str, path: str, body: Any, status: int, code: str
) -> None:
    pod = harness.add_pod("agent-1", credentials="api")
    agent = harness.agent(pod)
    before = dict(harness.cluster.calls)
    reply = await harness.call(agent, method, path, body)
    assert (reply.status, reply.code) == (status, code), reply.doc
    looked_up = {k for k, v in harness.cluster.calls.items() if v != before.get(k, 0)}
    assert not {k for k in looked_up if "credential_source" in k or "secret" in k}, looked_up
    assert (await harness.issue(agent)).status == 200  # the control


FIXTURE = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "admission" / "opted-in-pod.json").read_text()
)["request"]["object"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (names.ANNOTATION_TASK, "../fix-42"),
        (names.ANNOTATION_TASK, "fix-42/../../etc"),
        (names.ANNOTATION_TASK, ".."),
        (names.ANNOTATION_CREDENTIALS, "../github"),
        (names.ANNOTATION_CREDENTIALS, "github,../../etc/passwd"),
        (names.ANNOTATION_CREDENTIALS, "a/b"),
        (names.ANNOTATION_CREDENTIALS, ".."),
        (names.ANNOTATION_MOUNT_PATH, "/run/../etc"),
    ],
)
def test_traversal_in_annotations_is_denied_at_admission(key: str, value: str) -> None:
    pod = copy.deepcopy(FIXTURE)
    pod["metadata"]["annotations"][key] = value
    result = mutate_pod(
        pod, InjectionConfig(), "CREATE", namespace="team-a", credential_check=lambda *a: None
    )
    assert result.outcome == "denied" and result.patch == []
    assert key in result.message and value in result.message, result.message
