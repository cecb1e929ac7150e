"""Parsing an opted-in pod's annotations (CONTRACT.md section 1)."""

from __future__ import annotations

import pytest
from taskcreds.operator import annotations as parsing
from taskcreds.operator.annotations import (
    AnnotationError,
    InjectionRequest,
    go_duration,
    parse_request,
    unknown_annotations,
)

from taskcreds import names

BASE = {names.ANNOTATION_TASK: "fix-issue-42", names.ANNOTATION_CREDENTIALS: "github"}


def with_(**changes: str) -> dict[str, str]:
    keys = {
        "task": names.ANNOTATION_TASK,
        "credentials": names.ANNOTATION_CREDENTIALS,
        "status": names.ANNOTATION_TASK_STATUS,
        "ttl": names.ANNOTATION_TTL,
        "max_duration": names.ANNOTATION_MAX_DURATION,
        "containers": names.ANNOTATION_CONTAINERS,
        "mount_path": names.ANNOTATION_MOUNT_PATH,
    }
    return {**BASE, **{keys[k]: v for k, v in changes.items()}}


def test_minimal_request_gets_the_defaults() -> None:
    assert parse_request(BASE) == InjectionRequest(task="fix-issue-42", credentials=("github",))
    assert parse_request(BASE).task_status == "running"


@pytest.mark.parametrize(
    ("annotations", "field", "expected"),
    [
        pytest.param(
            with_(credentials="github, vault-db ,github,"),
            "credentials",
            ("github", "vault-db"),
            id="credentials-trimmed-and-deduplicated",
        ),
        pytest.param(with_(credentials="a.b-c"), "credentials", ("a.b-c",), id="dotted-credential"),
        pytest.param(with_(status="pending"), "task_status", "pending", id="pending"),
        pytest.param(with_(ttl="1h30m"), "ttl", 5400.0, id="ttl"),
        pytest.param(with_(ttl="90s"), "ttl", 90.0, id="ttl-seconds"),
        pytest.param(with_(max_duration="2h"), "max_duration", 7200.0, id="max-duration"),
        pytest.param(
            with_(containers="agent, git-clone"), "containers", ("agent", "git-clone"), id="containers"
        ),
        pytest.param(
            with_(mount_path="/home/agent/creds/"), "mount_path", "/home/agent/creds", id="mount-path"
        ),
        pytest.param(with_(task="A" * 128), "task", "A" * 128, id="longest-task-id"),
        pytest.param(with_(task="v1.2_fix-3"), "task", "v1.2_fix-3", id="task-with-dots"),
    ],
)
def test_values_are_parsed(annotations: dict[str, str], field: str, expected: object) -> None:
    assert getattr(parse_request(annotations), field) == expected


@pytest.mark.parametrize(
    ("annotations", "key", "message"),
    [
        pytest.param(
            {names.ANNOTATION_CREDENTIALS: "github"},
            names.ANNOTATION_TASK,
            "taskcreds.io/task: missing; required: a task id matching",
            id="task-missing",
        ),
        pytest.param(
            {names.ANNOTATION_TASK: "t"},
            names.ANNOTATION_CREDENTIALS,
            "taskcreds.io/credentials: missing; required: a comma-separated list",
            id="credentials-missing",
        ),
        pytest.param(
            with_(task="-starts-with-dash"),
            names.ANNOTATION_TASK,
            'taskcreds.io/task: "-starts-with-dash" is not a task id matching',
            id="task-bad-start",
        ),
        pytest.param(with_(task="a" * 129), names.ANNOTATION_TASK, "is not a task id", id="task-too-long"),
        pytest.param(with_(task="fix-42\n"), names.ANNOTATION_TASK, "is not a task id", id="task-trailing-newline"),
        pytest.param(
            with_(task="fix issue"), names.ANNOTATION_TASK, '"fix issue" is not a task id', id="task-space"
        ),
        pytest.param(
            with_(credentials=""),
            names.ANNOTATION_CREDENTIALS,
            '"" names no credential',
            id="credentials-empty",
        ),
        pytest.param(
            with_(credentials=" , ,"),
            names.ANNOTATION_CREDENTIALS,
            "names no credential",
            id="credentials-only-commas",
        ),
        pytest.param(
            with_(credentials="GitHub"),
            names.ANNOTATION_CREDENTIALS,
            "names 'GitHub', which is not a DNS-1123 subdomain; accepted:",
            id="credentials-uppercase",
        ),
        pytest.param(
            with_(credentials="git_hub"),
            names.ANNOTATION_CREDENTIALS,
            "'git_hub'",
            id="credentials-underscore",
        ),
        pytest.param(
            with_(credentials=",".join(f"c{i}" for i in range(17))),
            names.ANNOTATION_CREDENTIALS,
            "names 17 credentials; accepted: a comma-separated list of 1 to 16",
            id="credentials-too-many",
        ),
        pytest.param(
            with_(status="done"),
            names.ANNOTATION_TASK_STATUS,
            'taskcreds.io/task-status: "done" is not one of pending, running, completed, failed, cancelled',
            id="status-unknown",
        ),
        pytest.param(
            with_(ttl="15 minutes"),
            names.ANNOTATION_TTL,
            'taskcreds.io/ttl: "15 minutes" is not a Go-style duration such as 90s, 15m or 1h30m',
            id="ttl-words",
        ),
        pytest.param(
            with_(ttl="0s"),
            names.ANNOTATION_TTL,
            '"0s" is zero or negative; accepted: a Go-style',
            id="ttl-zero",
        ),
        pytest.param(
            with_(ttl="15"), names.ANNOTATION_TTL, '"15" is not a Go-style duration', id="ttl-no-unit"
        ),
        pytest.param(
            with_(ttl="100000000000h"),
            names.ANNOTATION_TTL,
            'taskcreds.io/ttl: "100000000000h" is longer than the maximum 87600h; accepted: a Go-style',
            id="ttl-over-the-maximum",
        ),
        pytest.param(
            with_(max_duration="87601h"),
            names.ANNOTATION_MAX_DURATION,
            'taskcreds.io/max-duration: "87601h" is longer than the maximum 87600h; accepted:',
            id="max-duration-over-the-maximum",
        ),
        pytest.param(
            with_(max_duration="1d"),
            names.ANNOTATION_MAX_DURATION,
            'taskcreds.io/max-duration: "1d" is not a Go-style duration',
            id="max-duration-days",
        ),
        pytest.param(
            with_(containers="Agent"),
            names.ANNOTATION_CONTAINERS,
            "names 'Agent', which is not a container name",
            id="containers-uppercase",
        ),
        pytest.param(
            with_(containers=","), names.ANNOTATION_CONTAINERS, "names no container", id="containers-empty"
        ),
        pytest.param(
            with_(mount_path="run/creds"),
            names.ANNOTATION_MOUNT_PATH,
            'taskcreds.io/mount-path: "run/creds" is not an absolute path',
            id="mount-relative",
        ),
        pytest.param(
            with_(mount_path="/run/../etc"), names.ANNOTATION_MOUNT_PATH, "without '..'", id="mount-dotdot"
        ),
        pytest.param(
            with_(mount_path="/"),
            names.ANNOTATION_MOUNT_PATH,
            '"/" is not an absolute path below /',
            id="mount-root",
        ),
        pytest.param(with_(mount_path="/a:b"), names.ANNOTATION_MOUNT_PATH, '"/a:b"', id="mount-colon"),
    ],
)
def test_malformed_values_name_key_value_and_accepted(
    annotations: dict[str, str], key: str, message: str
) -> None:
    with pytest.raises(AnnotationError) as caught:
        parse_request(annotations)
    assert caught.value.key == key
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{key}: ")
    assert caught.value.accepted and caught.value.accepted.split()[0] in str(caught.value)


def test_long_values_are_cut_in_messages() -> None:
    with pytest.raises(AnnotationError) as caught:
        parse_request(with_(task="x" * 5000 + " "))
    assert len(str(caught.value)) < 400
    assert caught.value.value == "x" * 5000 + " "


def test_no_annotations_at_all_asks_for_the_task() -> None:
    with pytest.raises(AnnotationError, match="taskcreds.io/task: missing"):
        parse_request(None)


def test_unknown_taskcreds_keys_are_reported_others_ignored() -> None:
    annotations = {
        **BASE,
        "taskcreds.io/ttls": "5m",
        "taskcreds.io/injected": "0.1.0",
        "example.com/x": "y",
        names.ANNOTATION_EGRESS: "github.com",
    }
    assert unknown_annotations(annotations) == ["taskcreds.io/ttls"]


@pytest.mark.parametrize(
    ("seconds", "text"), [(90, "1m30s"), (5400, "1h30m"), (0.5, "500ms"), (1.25, "1250ms")]
)
def test_durations_are_handed_to_the_sidecar_losslessly(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


@pytest.mark.parametrize(
    ("case", "value", "expected"),
    [
        ("short text unchanged", "github", "github"),
        ("exactly the limit", "x" * 80, "x" * 80),
        ("cut with its length", "y" * 81, "y" * 80 + "… (81 characters)"),
        ("not a string", 12345, "12345"),
    ],
)
def test_shown_cuts_quoted_input(case: str, value: object, expected: str) -> None:
    assert parsing.shown(value) == expected


def test_remembered_parses_are_equal_and_refusals_are_raised_every_time() -> None:
    ann = {names.ANNOTATION_TASK: "t-1", names.ANNOTATION_CREDENTIALS: "a,b", names.ANNOTATION_TTL: "5m"}
    first, second = parsing.parse_request(ann), parsing.parse_request(dict(ann))
    assert first == second and first.credentials == ("a", "b") and first.ttl == 300
    bad = {**ann, names.ANNOTATION_TTL: "soon"}
    for _ in range(2):
        with pytest.raises(parsing.AnnotationError, match="taskcreds.io/ttl"):
            parsing.parse_request(bad)
    # a value too long to remember is still parsed, and still refused with a short message
    long_ok = {**ann, names.ANNOTATION_CREDENTIALS: ",".join(f"c{i}" for i in range(16)) + ",c1" * 300}
    assert len(parsing.parse_request(long_ok).credentials) == 16
    with pytest.raises(parsing.AnnotationError) as info:
        parsing.parse_request({**ann, names.ANNOTATION_CREDENTIALS: "ok,BAD" + "x" * 10_000})
    assert len(str(info.value)) < 400 and "(10006 characters)" in str(info.value)
