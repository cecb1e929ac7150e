"""README.md lists every metric the operator and the sidecar export, with the labels they carry."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client import CollectorRegistry

from taskcreds import metrics
from tests.chart.helm import REPO

README = (REPO / "README.md").read_text()
SECTION = README[README.index("## Metrics") : README.index("## Documentation")]


def exported() -> list[tuple[str, tuple[str, ...]]]:
    """(name, label names) of every metric the two processes register."""
    out = []
    for register in (metrics.register_operator, metrics.register_sidecar):
        registered = register(CollectorRegistry())
        for field in dataclasses.fields(registered):
            collector = getattr(registered, field.name)
            if isinstance(collector, CollectorRegistry):
                continue
            (family,) = collector.describe()
            name = f"{family.name}_total" if family.type == "counter" else family.name
            out.append((name, tuple(collector._labelnames)))  # noqa: SLF001 - no public accessor
    return out


@pytest.mark.parametrize(("name", "labels"), exported(), ids=[n for n, _ in exported()])
def test_the_readme_lists_every_metric(name: str, labels: tuple[str, ...]) -> None:
    assert f"`{name}" in SECTION, f"{name} is exported but README.md's Metrics section does not name it"
    written = SECTION.split(f"`{name}", 1)[1].split("`", 1)[0]
    if written.startswith("{"):
        assert set(written.strip("{}").split(",")) == set(labels), (name, written, labels)
