"""Annotation parsing at its limits, which mutation testing found unguarded
(tests/operator/test_annotations.py covers the common values and refusals).

Every limit is checked on both sides (the largest accepted value and the smallest refused one),
and long values, which skip the parse cache, are checked to be parsed the same way: a value that
is refused when short must not slip through (as "no ttl") when long.
"""

from __future__ import annotations

import pytest
from taskcreds.operator.annotations import AnnotationError, parse_request, unknown_annotations

from taskcreds import names

BASE = {names.ANNOTATION_TASK: "fix-issue-42", names.ANNOTATION_CREDENTIALS: "github"}
KEYS = {
    "task": names.ANNOTATION_TASK,
    "credentials": names.ANNOTATION_CREDENTIALS,
    "status": names.ANNOTATION_TASK_STATUS,
    "ttl": names.ANNOTATION_TTL,
    "max_duration": names.ANNOTATION_MAX_DURATION,
    "containers": names.ANNOTATION_CONTAINERS,
    "mount_path": names.ANNOTATION_MOUNT_PATH,
}


def with_(**changes: object) -> dict[str, object]:
    return {**BASE, **{KEYS[k]: v for k, v in changes.items()}}


def label(n: int) -> str:
    """A valid DNS label of ``n`` characters."""
    return "a" * n


LONGEST_NAME = ".".join([label(63), label(63), label(63), label(61)])  # 253 characters
SIXTEEN = ",".join(f"c{i}" for i in range(16))

ACCEPTED = [
    ("credential name of 253 characters", with_(credentials=LONGEST_NAME), "credentials", (LONGEST_NAME,)),
    ("16 credentials", with_(credentials=SIXTEEN), "credentials", tuple(f"c{i}" for i in range(16))),
    (
        "a credentials list over 512 characters (not cached)",
        with_(credentials=",".join([LONGEST_NAME, LONGEST_NAME[:-1] + "b", "github"])),
        "credentials",
        (LONGEST_NAME, LONGEST_NAME[:-1] + "b", "github"),
    ),
    ("container name of 63 characters", with_(containers=label(63)), "containers", (label(63),)),
    (
        "containers over 512 characters (not cached)",
        with_(containers=",".join(label(60) + f"{i:03d}" for i in range(9))),
        "containers",
        tuple(label(60) + f"{i:03d}" for i in range(9)),
    ),
    ("mount path of 1024 characters", with_(mount_path="/" + "a" * 1023), "mount_path", "/" + "a" * 1023),
    ("mount path normalized", with_(mount_path=" /run//x/./creds/ "), "mount_path", "/run/x/creds"),
    # normpath keeps "//": kept as "//var/...", the webhook's string checks (mutate._overlaps_sidecar)
    # missed that it is the sidecar's own token directory (mutation review)
    ("two leading slashes normalized to one", with_(mount_path="//var/run/secrets/taskcreds"), "mount_path",
     "/var/run/secrets/taskcreds"),
    ("three leading slashes normalized to one", with_(mount_path="///run/creds"), "mount_path", "/run/creds"),
    ("ttl with spaces around", with_(ttl=" 90s "), "ttl", 90.0),
    ("no ttl", BASE, "ttl", None),
    ("no max-duration", BASE, "max_duration", None),
    ("no containers: every container", BASE, "containers", None),
    ("no mount path: the default", BASE, "mount_path", None),
    ("task status given", with_(status="completed"), "task_status", "completed"),
    (
        "all values together over 512 characters (not cached)",
        with_(credentials=LONGEST_NAME + ",github", ttl="15m", containers=label(63) + "," + label(62)),
        "ttl",
        900.0,
    ),
]


@pytest.mark.parametrize(
    ("case", "annotations", "field", "expected"), ACCEPTED,
    ids=[c[0] for c in ACCEPTED],
)
def test_values_at_the_limits_are_accepted(case: str, annotations: dict, field: str, expected: object) -> None:
    assert getattr(parse_request(annotations), field) == expected, case


REFUSED = [
    ("credential name of 254 characters", with_(credentials=LONGEST_NAME + "b"), names.ANNOTATION_CREDENTIALS,
     "which is not a DNS-1123 subdomain"),
    ("container name of 64 characters", with_(containers=label(64)), names.ANNOTATION_CONTAINERS,
     "which is not a container name"),
    ("mount path of 1025 characters", with_(mount_path="/" + "a" * 1024), names.ANNOTATION_MOUNT_PATH,
     "is not an absolute path"),
    # "//" passed the "== '/'" check and came back as the mount path "//", the container's root
    ("mount path '//' is the root", with_(mount_path="//"), names.ANNOTATION_MOUNT_PATH, "is not an absolute path"),
    ("ttl over 512 characters", with_(ttl="0" * 600 + "1h"), names.ANNOTATION_TTL, "is not a Go-style duration"),
    ("max-duration over 512 characters", with_(max_duration="1" * 600 + "h"), names.ANNOTATION_MAX_DURATION,
     "is not a Go-style duration"),
    ("task status in capitals", with_(status="Completed"), names.ANNOTATION_TASK_STATUS, "is not one of"),
    ("task as a YAML number", with_(task=42), names.ANNOTATION_TASK, "is a YAML number"),
    ("ttl as a YAML boolean", with_(ttl=True), names.ANNOTATION_TTL, "is a YAML boolean"),
    ("credentials as a YAML list", with_(credentials=["github"]), names.ANNOTATION_CREDENTIALS, "is a YAML list"),
    (
        "a bad status with values over 512 characters (not cached)",
        with_(credentials=LONGEST_NAME + ",github", status="done"),
        names.ANNOTATION_TASK_STATUS,
        "is not one of",
    ),
    (
        "a missing task with values over 512 characters (not cached)",
        {names.ANNOTATION_CREDENTIALS: LONGEST_NAME + "," + LONGEST_NAME[:-1] + "b,github"},
        names.ANNOTATION_TASK,
        "missing",
    ),
]


@pytest.mark.parametrize(
    ("case", "annotations", "key", "says"), REFUSED, ids=[c[0] for c in REFUSED]
)
def test_values_past_the_limits_are_refused_by_name(case: str, annotations: dict, key: str, says: str) -> None:
    with pytest.raises(AnnotationError) as caught:
        parse_request(annotations)
    assert caught.value.key == key, case
    assert says in str(caught.value), (case, str(caught.value))


UNKNOWN = [
    ("no annotations", None, []),
    ("empty annotations", {}, []),
    ("known keys only", {**BASE, names.ANNOTATION_TTL: "1h"}, []),
    ("typo and other prefixes", {"taskcreds.io/ttls": "1h", "other.io/ttl": "1", "taskcreds.iox/a": "1"},
     ["taskcreds.io/ttls"]),
    ("sorted", {"taskcreds.io/zz": "", "taskcreds.io/aa": ""}, ["taskcreds.io/aa", "taskcreds.io/zz"]),
]


@pytest.mark.parametrize(("case", "annotations", "expected"), UNKNOWN, ids=[c[0] for c in UNKNOWN])
def test_unknown_keys(case: str, annotations: dict | None, expected: list[str]) -> None:
    assert unknown_annotations(annotations) == expected, case
