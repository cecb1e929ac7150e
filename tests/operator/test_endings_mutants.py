"""When a task has ended: cases that mutation testing found unguarded (tests/operator/test_endings.py
covers the common ones).

- A pod whose ``creationTimestamp`` is missing or garbled but which carries a max-duration is
  counted from the epoch: its deadline has passed, so the task is over (fail closed), rather than
  the check crashing and the task running without a deadline.
- Callers that do not say whether the pod was deleted (the broker's policy check, the lease sweep)
  get the pod's own answer: a running pod is not ended.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from taskcreds.operator.endings import deadline_of, task_ending

from taskcreds import names

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def pod(annotations: dict[str, str], **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "agent", "annotations": annotations, **meta}}


@pytest.mark.parametrize(
    "meta",
    [{}, {"creationTimestamp": None}, {"creationTimestamp": "yesterday"}],
    ids=["no creationTimestamp", "null creationTimestamp", "garbled creationTimestamp"],
)
def test_max_duration_without_creation_time_ends_the_task(meta: dict[str, Any]) -> None:
    obj = pod({names.ANNOTATION_MAX_DURATION: "1h"}, **meta)
    assert deadline_of(obj) == EPOCH + timedelta(hours=1)
    assert task_ending(obj, now=NOW) == "deadline"


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (pod({}), None),
        (pod({names.ANNOTATION_TASK_STATUS: "running"}), None),
        (pod({names.ANNOTATION_MAX_DURATION: "1h"}, creationTimestamp="2026-11-29T09:30:00Z"), None),
        (pod({names.ANNOTATION_TASK_STATUS: "completed"}), "completed"),
        (pod({}, deletionTimestamp="2026-11-29T09:59:00Z"), "pod_deleted"),
    ],
    ids=["no status", "running", "before its deadline", "completed", "being deleted"],
)
def test_without_the_deleted_flag_the_pod_decides(obj: dict[str, Any], reason: str | None) -> None:
    assert task_ending(obj, now=NOW) == reason
