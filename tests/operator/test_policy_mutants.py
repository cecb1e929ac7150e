"""Broker policy decisions that mutation testing found guarded only end to end, or not at all
(tests/operator/test_policy.py covers the rest).

- The task a pod was admitted for is read from its sidecar's ``TASKCREDS_TASK`` only: another
  container's variable of that name, or a value from a reference, pins nothing, and a later task
  annotation on a pinned pod is refused (``task_changed``, 409).
- The lifetime granted is the one asked for, in whole seconds, never longer (at least 1 s).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from taskcreds.operator.broker import policy
from taskcreds.operator.broker.errors import TaskTerminal
from taskcreds.operator.sources import parse_source

from taskcreds import names

NOW = datetime(2026, 11, 29, 10, 30, tzinfo=UTC)
UID = "uid-1"


def container(name: str, env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"name": name, "image": "x", **({"env": env} if env is not None else {})}


def task_env(value: Any) -> dict[str, Any]:
    return {"name": names.ENV_TASK, "value": value}


def pod(
    task: str = "fix-42", *, init: list[dict[str, Any]] = (), containers: list[dict[str, Any]] = ()
) -> dict:
    return {
        "metadata": {
            "name": "agent-1",
            "namespace": "team-a",
            "uid": UID,
            "creationTimestamp": "2026-11-29T10:00:00Z",
            "labels": {names.LABEL_INJECT: "true"},
            "annotations": {names.ANNOTATION_TASK: task, names.ANNOTATION_CREDENTIALS: "github"},
        },
        "spec": {"initContainers": list(init), "containers": list(containers) or [container("agent")]},
    }


SIDECAR = names.SIDECAR_CONTAINER
PIN_CASES = [
    ("sidecar pins its task", pod(init=[container(SIDECAR, [task_env("fix-42")])]), "fix-42"),
    (
        "sidecar env among others",
        pod(init=[container(SIDECAR, [{"name": "A", "value": "1"}, task_env("fix-42")])]),
        "fix-42",
    ),
    ("no sidecar", pod(), None),
    ("sidecar without the variable", pod(init=[container(SIDECAR, [])]), None),
    (
        "value from a reference",
        pod(init=[container(SIDECAR, [{"name": names.ENV_TASK, "valueFrom": {}}])]),
        None,
    ),
    (
        "another container's variable",
        pod(
            init=[container("clone", [task_env("other")]), container(SIDECAR, [task_env("fix-42")])],
            containers=[container("agent", [task_env("evil")])],
        ),
        "fix-42",
    ),
    ("only another container's variable", pod(containers=[container("agent", [task_env("evil")])]), None),
]


@pytest.mark.parametrize(("case", "p", "pinned"), PIN_CASES, ids=[c[0] for c in PIN_CASES])
def test_pinned_task_is_the_sidecars(case: str, p: dict, pinned: str | None) -> None:
    assert policy.pinned_task(p) == pinned, case


def check(p: dict, task: str) -> policy.TaskView:
    return policy.check_task(
        p, namespace="team-a", pod_name="agent-1", pod_uid=UID, service_account="agent", task=task, now=NOW
    )


def test_a_pinned_pod_refuses_another_task() -> None:
    pinned = [container(SIDECAR, [task_env("fix-42")])]
    assert check(pod("fix-42", init=pinned), "fix-42").request.task == "fix-42"
    with pytest.raises(TaskTerminal) as info:
        check(pod("fix-43", init=pinned), "fix-43")
    assert info.value.reason == "task_changed"
    assert "admitted for task 'fix-42'" in info.value.message and "'fix-43' is refused" in info.value.message


def source() -> Any:
    return parse_source(
        {
            "kind": names.KIND_CREDENTIAL_SOURCE,
            "metadata": {"name": "github", "namespace": "team-a"},
            "spec": {
                "provider": "jwt",
                "maxTTL": "1h",
                "defaultTTL": "15m",
                "allowedServiceAccounts": ["agent"],
            },
        }
    )


@pytest.mark.parametrize(
    ("ttl", "granted"),
    [(0.2, 1), (1.0, 1), (1.9, 1), (90.0, 90), (3600.0, 3600), (None, 900)],
    ids=["below a second", "one second", "fraction", "90s", "maxTTL", "source default"],
)
def test_granted_lifetime_is_the_requested_one(ttl: float | None, granted: int) -> None:
    view = check(pod(), "fix-42")
    [grant] = policy.check_credentials(view, ["github"], {"github": source()}, ttl=ttl)
    assert grant.ttl_seconds == granted


def lease(
    task: str,
    *,
    owner: str | None = None,
    pod_uid: str | None = None,
    phase: str | None = "Revoked",
    held: bool = True,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"agent-1-{task}"}
    if owner is not None:
        meta["ownerReferences"] = [{"kind": "Pod", "name": "agent-1", "uid": owner}]
    spec: dict[str, Any] = {"task": task, "pod": "agent-1"}
    if pod_uid is not None:
        spec["podUID"] = pod_uid
    status: dict[str, Any] = {"leases": [{"credential": "github"}] if held else []}
    if phase is not None:
        status["phase"] = phase
    return {"metadata": meta, "spec": spec, "status": status}


ONE_TASK_CASES = [
    ("earlier task, owned by the pod", [lease("fix-41", owner=UID)], "TaskLease agent-1-fix-41, Revoked"),
    ("earlier task, podUID only", [lease("fix-41", pod_uid=UID)], "TaskLease agent-1-fix-41, Revoked"),
    (
        "earlier task still active",
        [lease("fix-41", owner=UID, phase=None)],
        "TaskLease agent-1-fix-41, Active",
    ),
    ("same task", [lease("fix-42", owner=UID, pod_uid=UID)], None),
    ("a predecessor pod of the same name", [lease("fix-41", owner="old-uid", pod_uid="old-uid")], None),
    ("earlier task never held a credential", [lease("fix-41", owner=UID, phase="Active", held=False)], None),
]


@pytest.mark.parametrize(("case", "leases", "says"), ONE_TASK_CASES, ids=[c[0] for c in ONE_TASK_CASES])
def test_one_task_per_pod(case: str, leases: list[dict[str, Any]], says: str | None) -> None:
    view = check(pod(), "fix-42")
    if says is None:
        policy.one_task_per_pod(view, leases)
        return
    with pytest.raises(TaskTerminal) as info:
        policy.one_task_per_pod(view, leases)
    assert info.value.reason == "task_changed", case
    assert "already ran task 'fix-41'" in info.value.message and says in info.value.message, case
