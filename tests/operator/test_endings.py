from datetime import UTC, datetime, timedelta

import pytest
from taskcreds.operator.endings import deadline_of, parse_timestamp, task_ending, task_status_of

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def pod(annotations: dict[str, str] | None = None, phase: str | None = None, **meta: str) -> dict:
    body: dict = {
        "metadata": {
            "name": "agent",
            "creationTimestamp": "2026-11-29T10:00:00Z",
            "annotations": annotations or {},
            **meta,
        }
    }
    if phase is not None:
        body["status"] = {"phase": phase}
    return body


@pytest.mark.parametrize(
    ("name", "obj", "now", "deleted", "reason"),
    [
        ("running task goes on", pod({"taskcreds.io/task-status": "running"}), T0, False, None),
        ("absent status means running", pod(), T0, False, None),
        ("pending is not an end", pod({"taskcreds.io/task-status": "pending"}), T0, False, None),
        ("completed", pod({"taskcreds.io/task-status": "completed"}), T0, False, "completed"),
        ("failed", pod({"taskcreds.io/task-status": "failed"}), T0, False, "failed"),
        ("cancelled", pod({"taskcreds.io/task-status": "cancelled"}), T0, False, "cancelled"),
        ("pod deleted", pod(), T0, True, "pod_deleted"),
        ("pod being deleted", pod(deletionTimestamp="2026-11-29T10:01:00Z"), T0, False, "pod_deleted"),
        (
            "terminal status wins over deletion",
            pod({"taskcreds.io/task-status": "failed"}),
            T0,
            True,
            "failed",
        ),
        (
            "before the deadline",
            pod({"taskcreds.io/max-duration": "1h"}),
            T0 + timedelta(minutes=59),
            False,
            None,
        ),
        (
            "at the deadline",
            pod({"taskcreds.io/max-duration": "1h"}),
            T0 + timedelta(hours=1),
            False,
            "deadline",
        ),
        ("pod pending", pod(phase="Pending"), T0, False, None),
        ("pod running", pod(phase="Running"), T0, False, None),
        ("phase unknown (node lost) is not an end", pod(phase="Unknown"), T0, False, None),
        ("pod succeeded without a status annotation", pod(phase="Succeeded"), T0, False, "completed"),
        ("pod failed without a status annotation", pod(phase="Failed"), T0, False, "failed"),
        (
            "pod succeeded while the annotation still says running",
            pod({"taskcreds.io/task-status": "running"}, phase="Succeeded"),
            T0,
            False,
            "completed",
        ),
        (
            "terminal status wins over the phase",
            pod({"taskcreds.io/task-status": "cancelled"}, phase="Succeeded"),
            T0,
            False,
            "cancelled",
        ),
        (
            "deletion wins over the phase it caused",
            pod(phase="Failed", deletionTimestamp="2026-11-29T10:01:00Z"),
            T0,
            False,
            "pod_deleted",
        ),
        (
            "phase wins over a passed deadline",
            pod({"taskcreds.io/max-duration": "1h"}, phase="Failed"),
            T0 + timedelta(hours=2),
            False,
            "failed",
        ),
        (
            "unreadable max-duration fails closed",
            pod({"taskcreds.io/max-duration": "soon"}),
            T0,
            False,
            "deadline",
        ),
    ],
)
def test_task_ending(name: str, obj: dict, now: datetime, deleted: bool, reason: str | None) -> None:
    assert task_ending(obj, now=now, deleted=deleted) == reason, name


def test_deadline_is_creation_plus_max_duration() -> None:
    assert deadline_of(pod({"taskcreds.io/max-duration": "1h30m"})) == T0 + timedelta(minutes=90)
    assert deadline_of(pod()) is None


def test_status_default_and_timestamps() -> None:
    assert task_status_of({}) == "running"
    assert parse_timestamp("2026-11-29T10:00:00Z") == T0
    assert parse_timestamp("garbage") is None
    assert parse_timestamp(None) is None


def test_every_reason_is_a_contract_reason() -> None:
    """CONTRACT.md section 6 fixes the revoke reasons (metrics labels): the phase adds none."""
    from taskcreds.operator.endings import PHASE_REASONS

    from taskcreds import names

    assert set(PHASE_REASONS.values()) <= set(names.REVOKE_REASONS)
