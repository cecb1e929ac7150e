"""docs/threat-model.md says "a test named here exists in the repository": every `tests/...py` and
`::test_name` it cites (a bare `::name` refers to the file named last before it, in its table row
or paragraph) must exist."""

from __future__ import annotations

import re

import pytest

from tests.chart.helm import REPO

THREAT_MODEL = (REPO / "docs" / "threat-model.md").read_text()
_CITATION = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`::(\w+)`")


def citations() -> list[tuple[str, str | None]]:
    """(file, test name or None) for every test the page cites, in order."""
    out: list[tuple[str, str | None]] = []
    current = None
    for line in THREAT_MODEL.splitlines():
        if line.startswith(("|", "- ")) or not line.strip():
            current = None  # a new table row, list item or paragraph
        for match in _CITATION.finditer(line):
            if match.group(1):
                current = match.group(1)
                out.append((current, match.group(2)))
            else:
                assert current is not None, f"`::{match.group(3)}` before any file in: {line[:120]}"
                out.append((current, match.group(3)))
    return out


def test_the_page_cites_tests() -> None:
    assert len(citations()) > 50


@pytest.mark.parametrize(("path", "name"), citations(), ids=[f"{p}::{n}" if n else p for p, n in citations()])
def test_every_cited_test_exists(path: str, name: str | None) -> None:
    file = REPO / path
    assert file.is_file(), f"docs/threat-model.md cites {path}, which does not exist"
    if name:
        assert re.search(rf"^(async )?def {name}\(", file.read_text(), re.M), f"{path} has no {name}"
