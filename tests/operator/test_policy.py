"""The broker's policy, pure: every refusal has a stable reason and a message naming what is wrong."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from taskcreds.operator.broker import policy
from taskcreds.operator.broker.errors import BadRequest, NotFound, PolicyDenied, TaskTerminal
from taskcreds.operator.sources import Source, SourceError, parse_source

from taskcreds import names

NOW = datetime(2026, 11, 29, 10, 30, tzinfo=UTC)
UID = "uid-1"


def pod(**annotations: str) -> dict[str, Any]:
    ann = {names.ANNOTATION_TASK: "fix-42", names.ANNOTATION_CREDENTIALS: "github,db"}
    ann.update({k if "/" in k else f"{names.PREFIX}/{k}": v for k, v in annotations.items()})
    return {
        "metadata": {
            "name": "agent-1",
            "namespace": "team-a",
            "uid": UID,
            "creationTimestamp": "2026-11-29T10:00:00Z",
            "labels": {names.LABEL_INJECT: "true"},
            "annotations": ann,
        }
    }


def src(
    name: str,
    *,
    cluster: bool = False,
    accounts: tuple[str, ...] = ("agent",),
    namespaces: tuple[str, ...] = ("team-a",),
    max_ttl: str = "1h",
    default_ttl: str = "15m",
) -> Source:
    spec: dict[str, Any] = {
        "provider": "jwt",
        "maxTTL": max_ttl,
        "defaultTTL": default_ttl,
        "allowedServiceAccounts": list(accounts),
    }
    if cluster:
        spec["allowedNamespaces"] = list(namespaces)
        return parse_source(
            {"kind": names.KIND_CLUSTER_CREDENTIAL_SOURCE, "metadata": {"name": name}, "spec": spec}
        )
    return parse_source(
        {
            "kind": names.KIND_CREDENTIAL_SOURCE,
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": spec,
        }
    )


def view(
    p: dict[str, Any] | None = None, *, task: str = "fix-42", sa: str = "agent", ended: str | None = None
) -> policy.TaskView:
    return policy.check_task(
        pod() if p is None else p,
        namespace="team-a",
        pod_name="agent-1",
        pod_uid=UID,
        service_account=sa,
        task=task,
        now=NOW,
        ended=ended,
    )


TASK_CASES = [
    ("pod gone", None, {}, NotFound, None),
    ("pod replaced (uid differs)", {"uid": "other"}, {}, NotFound, None),
    ("not opted in", {"labels": {}}, {}, PolicyDenied, "not_opted_in"),
    (
        "malformed ttl annotation",
        {"annotations": {names.ANNOTATION_TTL: "forever"}},
        {},
        PolicyDenied,
        "bad_annotations",
    ),
    ("another task", None, {"task": "other-task"}, PolicyDenied, "task_mismatch"),
    (
        "completed",
        {"annotations": {names.ANNOTATION_TASK_STATUS: "completed"}},
        {},
        TaskTerminal,
        "completed",
    ),
    ("failed", {"annotations": {names.ANNOTATION_TASK_STATUS: "failed"}}, {}, TaskTerminal, "failed"),
    (
        "cancelled",
        {"annotations": {names.ANNOTATION_TASK_STATUS: "cancelled"}},
        {},
        TaskTerminal,
        "cancelled",
    ),
    (
        "past its deadline",
        {"annotations": {names.ANNOTATION_MAX_DURATION: "20m"}},
        {},
        TaskTerminal,
        "deadline",
    ),
    ("pod being deleted", {"deletionTimestamp": "2026-11-29T10:29:00Z"}, {}, TaskTerminal, "pod_deleted"),
    ("revoked earlier, now running again", None, {"ended": "cancelled"}, TaskTerminal, "cancelled"),
]


@pytest.mark.parametrize(
    ("case", "change", "kw", "error", "reason"), TASK_CASES, ids=[c[0] for c in TASK_CASES]
)
def test_check_task_refusals(
    case: str, change: dict[str, Any] | None, kw: dict[str, Any], error: type, reason: str | None
) -> None:
    p: dict[str, Any] | None = pod()
    if case == "pod gone":
        p = None
    elif change:
        meta = p["metadata"]  # type: ignore[index]
        for key, value in change.items():
            if key == "annotations":
                meta["annotations"].update(value)
            else:
                meta[key] = value
    with pytest.raises(error) as info:
        policy.check_task(
            p,
            namespace="team-a",
            pod_name="agent-1",
            pod_uid=UID,
            service_account="agent",
            task=kw.get("task", "fix-42"),
            now=NOW,
            ended=kw.get("ended"),
        )
    if reason is not None:
        assert info.value.reason == reason
    assert "agent-1" in info.value.message


def test_check_task_ok_with_deadline() -> None:
    v = view(pod(**{"max-duration": "1h", "ttl": "5m"}))
    assert v.deadline == datetime(2026, 11, 29, 11, 0, tzinfo=UTC)
    assert v.request.ttl == 300 and v.request.credentials == ("github", "db")


CRED_CASES: list[tuple[str, Any, dict[str, Any], str | None, str]] = [
    ("not in the pod's annotation", ["slack"], {}, "not_requested", "not in pod team-a/agent-1"),
    ("no source at all", ["github"], {"github": None}, "no_source", "no CredentialSource 'github'"),
    (
        "unusable source",
        ["github"],
        {"github": SourceError("CredentialSource team-a/github: spec.maxTTL ...")},
        "bad_source",
        "spec.maxTTL",
    ),
    (
        "service account not allowed",
        ["github"],
        {"github": src("github", accounts=("builder",))},
        "service_account_not_allowed",
        "allowedServiceAccounts of CredentialSource 'github' is [builder]",
    ),
    (
        "cluster source, namespace not allowed",
        ["github"],
        {"github": src("github", cluster=True, namespaces=("x",))},
        "namespace_not_allowed",
        "allowedNamespaces of ClusterCredentialSource 'github' is [x]",
    ),
    (
        "ttl above maxTTL",
        ["github"],
        {"github": src("github"), "ttl": 7200},
        "ttl_above_max",
        "ttl 2h is above maxTTL 1h",
    ),
]


@pytest.mark.parametrize(
    ("case", "wanted", "sources", "reason", "message"), CRED_CASES, ids=[c[0] for c in CRED_CASES]
)
def test_check_credentials_refusals(
    case: str, wanted: list[str], sources: dict[str, Any], reason: str, message: str
) -> None:
    ttl = sources.pop("ttl", None)
    with pytest.raises(PolicyDenied) as info:
        policy.check_credentials(view(), wanted, sources, ttl=ttl)
    assert info.value.reason == reason and reason in policy.DENIAL_REASONS
    assert message in info.value.message


@pytest.mark.parametrize(
    ("case", "annotation_ttl", "request_ttl", "expected"),
    [
        ("source default", None, None, 900),
        ("pod annotation", "5m", None, 300),
        ("request wins", "5m", 120.0, 120),
        ("exactly maxTTL", None, 3600.0, 3600),
    ],
)
def test_ttl_choice(case: str, annotation_ttl: str | None, request_ttl: float | None, expected: int) -> None:
    p = pod(**({"ttl": annotation_ttl} if annotation_ttl else {}))
    grants = policy.check_credentials(
        view(p), None, {"github": src("github"), "db": src("db", cluster=True)}, ttl=request_ttl
    )
    assert [(g.credential, g.ttl_seconds) for g in grants] == [("github", expected), ("db", expected)]


def test_pod_annotation_ttl_above_max_is_denied_too() -> None:
    with pytest.raises(PolicyDenied) as info:
        policy.check_credentials(view(pod(ttl="3h")), ["github"], {"github": src("github")})
    assert info.value.reason == "ttl_above_max"


def test_provider_not_available() -> None:
    with pytest.raises(PolicyDenied) as info:
        policy.check_credentials(view(), ["github"], {"github": src("github")}, providers=["vault"])
    assert info.value.reason == "unknown_provider"


@pytest.mark.parametrize("text", ["forever", "0s", "-1m", ""])
def test_requested_ttl_must_be_a_duration(text: str) -> None:
    with pytest.raises(BadRequest, match="ttl"):
        policy.requested_ttl(text)


# --- one task per pod --------------------------------------------------------------------------
def _task_lease(task: str, phase: str, entries: int, uid: str = UID) -> dict[str, Any]:
    return {
        "metadata": {"name": f"agent-1-{task}", "ownerReferences": [{"uid": uid}]},
        "spec": {"task": task, "podUID": uid},
        "status": {"phase": phase, "leases": [{"credential": "github"}] * entries},
    }


ONE_TASK_CASES = [
    # (case, the pod's TaskLeases, refused)
    ("no TaskLease yet", [], False),
    ("the same task", [_task_lease("fix-42", "Active", 1)], False),
    ("another task holding a lease", [_task_lease("fix-41", "Active", 1)], True),
    ("another task that ended with nothing issued", [_task_lease("fix-41", "Revoked", 0)], True),
    (
        "another task whose first issue failed (nothing issued, not ended)",
        [_task_lease("fix-41", "Active", 0)],
        False,
    ),
    (
        "another pod's TaskLease (a predecessor of the same name)",
        [_task_lease("fix-41", "Revoked", 1, "old")],
        False,
    ),
]


@pytest.mark.parametrize(
    ("case", "task_leases", "refused"), ONE_TASK_CASES, ids=[c[0] for c in ONE_TASK_CASES]
)
def test_one_task_per_pod(case: str, task_leases: list[dict[str, Any]], refused: bool) -> None:
    if not refused:
        policy.one_task_per_pod(view(), task_leases)
        return
    with pytest.raises(TaskTerminal, match="already ran task 'fix-41'.*a pod runs one task"):
        policy.one_task_per_pod(view(), task_leases)
