"""Task status hub: behaviour that mutation testing found unguarded (tests/operator/test_taskstatus.py
covers the rest).

- The long-poll document (``TaskState.to_json``) names the pod's task and formats the deadline the
  way docs/broker-api.md shows it.
- Callers that do not pass ``deleted`` get the pod's own answer.
- The hub forgets a deleted pod after ``FORGET_AFTER`` (memory follows the live pods) and never
  forgets a live one (its long-polls would lose their state).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from taskcreds.operator import taskstatus
from taskcreds.operator.taskstatus import TaskStatusHub, state_of

from taskcreds import names

NOW = datetime(2026, 11, 29, 10, 30, tzinfo=UTC)


def pod(uid: str | None = "u1", **annotations: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "agent-1",
        "namespace": "team-a",
        "creationTimestamp": "2026-11-29T10:00:00Z",
        "annotations": {names.ANNOTATION_TASK: "fix-42", names.ANNOTATION_CREDENTIALS: "api", **annotations},
    }
    if uid is not None:
        meta["uid"] = uid
    return {"metadata": meta}


@pytest.mark.parametrize(
    ("p", "document"),
    [
        (
            pod(),
            {"task": "fix-42", "status": "running", "terminal": False, "reason": None, "deadline": None},
        ),
        (
            pod(**{names.ANNOTATION_MAX_DURATION: "1h"}),
            {
                "task": "fix-42",
                "status": "running",
                "terminal": False,
                "reason": None,
                "deadline": "2026-11-29T11:00:00Z",
            },
        ),
        (
            pod(**{names.ANNOTATION_TASK_STATUS: "completed"}),
            {
                "task": "fix-42",
                "status": "completed",
                "terminal": True,
                "reason": "completed",
                "deadline": None,
            },
        ),
        (
            pod(**{names.ANNOTATION_MAX_DURATION: "10m"}),
            {
                "task": "fix-42",
                "status": "running",
                "terminal": True,
                "reason": "deadline",
                "deadline": "2026-11-29T10:10:00Z",
            },
        ),
    ],
    ids=["running", "running with a deadline", "completed", "deadline passed"],
)
def test_long_poll_document(p: dict[str, Any], document: dict[str, Any]) -> None:
    # state_of without deleted=: the pod decides (a running pod is not ended)
    assert state_of(p, now=NOW).to_json() == document
    hub = TaskStatusHub(now=lambda: NOW)
    assert hub.update(p) == state_of(p, now=NOW)
    assert hub.get("u1") == state_of(p, now=NOW)


def test_a_pod_without_uid_is_not_tracked() -> None:
    hub = TaskStatusHub(now=lambda: NOW)
    assert hub.update(pod(uid=None)) is None
    assert len(hub) == 0


@pytest.mark.parametrize(
    ("deleted", "remembered"),
    [(True, False), (False, True)],
    ids=["deleted pod is forgotten", "live pod is kept"],
)
async def test_forgetting_follows_deletion(
    monkeypatch: pytest.MonkeyPatch, deleted: bool, remembered: bool
) -> None:
    monkeypatch.setattr(taskstatus, "FORGET_AFTER", 0.05)
    hub = TaskStatusHub(now=lambda: NOW)
    hub.update(pod(), deleted=deleted)
    hub.update(pod(), deleted=deleted)  # a second event for the same pod changes nothing
    assert hub.get("u1") is not None, "a deleted pod is remembered for late long-polls first"
    await asyncio.sleep(0.2)
    assert (hub.get("u1") is not None) is remembered
    assert len(hub) == (1 if remembered else 0)


@pytest.mark.parametrize(
    ("seen", "expected"),
    [
        (None, ("gone-7", "running", True, "expired", None)),
        (
            pod(**{names.ANNOTATION_TASK_STATUS: "pending", names.ANNOTATION_MAX_DURATION: "1h"}),
            ("fix-42", "pending", True, "expired", "2026-11-29T11:00:00Z"),
        ),
    ],
    ids=["revoked before the hub saw the pod", "revoked while pending"],
)
def test_end_is_recorded_and_final(seen: dict[str, Any] | None, expected: tuple[Any, ...]) -> None:
    # a revoke can reach a replica whose pod watch has not seen the pod yet
    hub = TaskStatusHub(now=lambda: NOW)
    if seen is not None:
        hub.update(seen)
    ended = hub.end("u1", "expired", task="gone-7")
    doc = ended.to_json()
    assert (doc["task"], doc["status"], doc["terminal"], doc["reason"], doc["deadline"]) == expected
    assert hub.get("u1") == ended
    hub.update(pod())  # the pod says running afterwards: the ending stays
    assert hub.get("u1") == ended
