"""TaskcredsSidecarNotReady as Prometheus itself evaluates it: the rendered rule run by ``promtool test
rules`` over scraped-series histories of the sidecars it must and must not page about.

The case this rule was changed for: a sidecar restarted after teardown is a fresh process, ``ready``
0 and no teardown counter, but ``taskcreds_sidecar_task_ended`` 1, so it must stay quiet. Sidecars
older than ``task_ended`` (pods admitted before an upgrade) are covered by the teardown clause.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helm import Helm
from tests.chart.kinds import of_kind
from tests.chart.values_sets import VALUES_SETS

ALERT = "TaskcredsSidecarNotReady"
NS = "agents"
#: labels a PodMonitor scrape adds to each sidecar series (the rule groups by namespace and pod)
TARGET = 'namespace="agents",pod="{pod}",container="taskcreds-sidecar",instance="10.0.0.7:9090",job="agents/pods"'


def series(metric: str, pod: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{TARGET.format(pod=pod)}{extra}}}", "values": values}


# one minute per step; "_" no sample, "stale" a staleness marker (the process went away)
CASES = [
    pytest.param([series("taskcreds_sidecar_ready", "p", "0x20"),
                  series("taskcreds_sidecar_task_ended", "p", "0x20")],
                 True, id="running task, credentials missing for 20 min: fires"),
    pytest.param([series("taskcreds_sidecar_ready", "p", "1x20"),
                  series("taskcreds_sidecar_task_ended", "p", "0x20")],
                 False, id="running task, ready: quiet"),
    pytest.param([series("taskcreds_sidecar_ready", "p", "0x6 1x14"),
                  series("taskcreds_sidecar_task_ended", "p", "0x20")],
                 False, id="not ready for 7 min, then ready: quiet (for 10m)"),
    pytest.param([series("taskcreds_sidecar_ready", "p", "1x2 0x18"),
                  series("taskcreds_sidecar_task_ended", "p", "0x2 1x18"),
                  series("taskcreds_sidecar_teardown_total", "p", "_x2 1x18", reason="completed")],
                 False, id="task ended, sidecar idles: quiet"),
    pytest.param([series("taskcreds_sidecar_ready", "p", "1x2 0x18"),
                  series("taskcreds_sidecar_task_ended", "p", "0x2 1x18"),
                  series("taskcreds_sidecar_teardown_total", "p", "_x2 1x2 stale", reason="completed")],
                 False, id="sidecar restarted after teardown (fresh teardown counter): quiet"),
    pytest.param([series("taskcreds_sidecar_ready", "p", "1x2 0x18"),
                  series("taskcreds_sidecar_teardown_total", "p", "_x2 1x18", reason="deadline")],
                 False, id="older sidecar without task_ended, torn down: quiet (upgrade)"),
    pytest.param([series("taskcreds_sidecar_ready", "p", "0x20")],
                 True, id="older sidecar without task_ended, credentials missing: fires"),
]


def _expand(template: str, pod: str) -> str:
    """The alert's annotation with ``{{ $labels.x }}`` filled in, as Prometheus sends it."""
    labels = {"namespace": NS, "pod": pod}
    return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], template)


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool not found (Debian: apt-get install prometheus)")
    return binary


@pytest.fixture(scope="module")
def rule_groups(helm: Helm) -> dict[str, Any]:
    """The rendered PrometheusRule's groups, as a Prometheus rule file."""
    (rule,) = of_kind(helm.template(VALUES_SETS["monitoring"]), "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


@pytest.mark.parametrize(("input_series", "fires"), CASES)
def test_not_ready_alert_fires_only_for_a_task_that_has_not_ended(
        promtool: str, rule_groups: dict[str, Any], tmp_path: Path,
        input_series: list[dict[str, str]], fires: bool) -> None:
    rule = next(r for g in rule_groups["groups"] for r in g["rules"] if r.get("alert") == ALERT)
    expected = [{
        "exp_labels": {"namespace": NS, "pod": "p", **rule["labels"]},
        "exp_annotations": {k: _expand(v, "p") for k, v in rule["annotations"].items()},
    }] if fires else []
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series,
                   "alert_rule_test": [{"eval_time": "20m", "alertname": ALERT, "exp_alerts": expected}]}],
    }))
    proc = subprocess.run([promtool, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
