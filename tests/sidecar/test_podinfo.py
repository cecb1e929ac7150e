"""The downward-API annotations file, in the kubelet's own format."""

from __future__ import annotations

from pathlib import Path

import pytest
from taskcreds.sidecar.podinfo import PodinfoError, parse_annotations, read_task_status

KUBELET_FILE = (
    'kubectl.kubernetes.io/last-applied-configuration="{\\"apiVersion\\":\\"v1\\",\\"kind\\":\\"Pod\\"}\\n"\n'
    'note="caf\\u00e9 \\xe2\\x9c\\x93 tab\\there \\\\ back \\101"\n'
    'taskcreds.io/credentials="github,db"\n'
    'taskcreds.io/task="fix-issue-42"\n'
    'taskcreds.io/task-status="completed"'
)


def test_parses_go_quoted_values() -> None:
    annotations = parse_annotations(KUBELET_FILE)
    assert annotations["kubectl.kubernetes.io/last-applied-configuration"] == '{"apiVersion":"v1","kind":"Pod"}\n'
    assert annotations["note"] == "café ✓ tab\there \\ back A"
    assert annotations["taskcreds.io/task-status"] == "completed"


@pytest.mark.parametrize("line", ['key=value', 'key="open', 'key="bad \\q escape"', '="no key"'],
                         ids=["unquoted", "unterminated", "unknown escape", "no key"])
def test_malformed_lines_name_the_line(line: str) -> None:
    with pytest.raises(PodinfoError, match="line 2"):
        parse_annotations('a="b"\n' + line)


@pytest.mark.parametrize(("content", "status"), [
    ('taskcreds.io/task="t"', "running"),
    ('taskcreds.io/task-status="cancelled"\n', "cancelled"),
    ('garbage', None),
], ids=["absent means running", "terminal", "unreadable"])
def test_read_task_status(tmp_path: Path, content: str, status: str | None) -> None:
    (tmp_path / "annotations").write_text(content)
    assert read_task_status(str(tmp_path)) == status


def test_missing_file_is_no_answer(tmp_path: Path) -> None:
    assert read_task_status(str(tmp_path / "nope")) is None
