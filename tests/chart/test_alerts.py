"""The PrometheusRule's alerts and the dashboard's queries can match what the code exports: series
that exist and are not removed at the moment an alert is about, labels and label values the code
sets, and target labels only the chart's own ServiceMonitor/PodMonitor add."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.chart.helm import NAMESPACE, Helm
from tests.chart.kinds import of_kind, one
from tests.chart.promql import code_use, documented_values, families, problems
from tests.chart.values_sets import VALUES_SETS


def alerts_of(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rules = of_kind(docs, "PrometheusRule")
    return {r["alert"]: r for rule in rules for g in rule["spec"]["groups"] for r in g["rules"]}


def monitoring(*, service_monitor: bool, pod_monitor: bool) -> dict[str, Any]:
    return {"metrics": {"prometheusRule": {"enabled": True},
                        "serviceMonitor": {"enabled": service_monitor},
                        "podMonitor": {"enabled": pod_monitor}}}


# --- the checker itself: each kind of dead rule is caught ------------------------------------------


@pytest.mark.parametrize(
    ("expr", "why"),
    [
        pytest.param("(taskcreds_sidecar_credential_expiry_timestamp_seconds > 0) and "
                     "(taskcreds_sidecar_credential_expiry_timestamp_seconds < time())",
                     "the code removes this series", id="past-expiry over a series removed at expiry"),
        pytest.param('increase(taskcreds_sidecar_refresh_total{result="error"}[10m]) > 0',
                     'never sets result="error"', id="refresh result value the sidecar never sets"),
        pytest.param('increase(taskcreds_sidecar_refresh_total{result=~"failure|timeout"}[10m]) > 0',
                     'never sets result="timeout"', id="one regex alternative never set"),
        pytest.param('rate(taskcreds_admission_requests_total{result="failed"}[5m])',
                     'never sets result="failed"', id="admission result value outside CONTRACT section 6"),
        pytest.param('rate(taskcreds_webhook_unanswered_requests_total{reason="hangup"}[5m])',
                     'never sets reason="hangup"', id="value documented in a comment above the field"),
        pytest.param('taskcreds_sidecar_ready{credential="github"} == 0',
                     "no label 'credential'", id="label the metric does not have"),
        pytest.param("sum by (provider) (taskcreds_sidecar_ready) == 0",
                     "grouping by 'provider'", id="grouping by a label no series carries"),
        pytest.param("taskcreds_sidecar_credentials_ready == 0", "no such series", id="misspelt metric"),
        pytest.param('taskcreds_sidecar_task_ended{reason="completed"} == 1', "no label 'reason'",
                     id="task_ended carries no reason (teardown_total does)"),
    ],
)
def test_checker_refuses_rules_that_cannot_fire(expr: str, why: str) -> None:
    found = problems(expr, alert=True)
    assert any(why in p for p in found), found


def test_checker_reads_the_code_not_a_copy() -> None:
    """The removed series and enumerated values come from the code: if either scan broke, every
    rule above would pass silently."""
    use = code_use()
    assert "credential_expiry" in use.removed, "sidecar/runner.py _expire removes it at expiry"
    documented = documented_values()
    assert documented[("refresh", "result")] == {"success", "failure", "write_failure"}
    assert documented[("admission_requests", "result")] == {"injected", "skipped", "denied", "error"}
    # every value the code sets literally is one metrics.py documents for that label
    for key, values in use.literal_values.items():
        if key in documented:
            assert values <= documented[key], (key, values - documented[key])
    assert families()["ready"].labels == frozenset()
    assert families()["task_ended"].labels == frozenset() and "task_ended" not in use.removed


# --- the rendered rules and dashboard --------------------------------------------------------------


@pytest.mark.parametrize("values", [pytest.param(VALUES_SETS["monitoring"], id="monitoring"),
                                    pytest.param(monitoring(service_monitor=False, pod_monitor=False),
                                                 id="rule only")])
def test_every_alert_can_match_what_the_code_exports(helm: Helm, values: dict[str, Any]) -> None:
    alerts = alerts_of(helm.template(values))
    assert alerts
    for name, rule in alerts.items():
        assert problems(rule["expr"], alert=True) == [], name


def test_dashboard_queries_match_what_the_code_exports(helm: Helm) -> None:
    cm = one(helm.template(VALUES_SETS["monitoring"]), "ConfigMap", "-dashboard")
    dashboard = json.loads(cm["data"]["taskcreds.json"])
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "5m")
            assert problems(expr, alert=False) == [], (panel["title"], expr)


def test_sidecar_alerts_cover_missing_credentials_and_refresh_failures(helm: Helm) -> None:
    """What an SRE needs: pods without their credentials, and refreshes that keep failing (the
    former TaskcredsCredentialPastExpiry could never fire: its series is gone at expiry)."""
    alerts = alerts_of(helm.template(VALUES_SETS["monitoring"]))
    assert "TaskcredsCredentialPastExpiry" not in alerts
    ready = alerts["TaskcredsSidecarNotReady"]
    assert re.search(r"taskcreds_sidecar_ready\)\s*==\s*0", ready["expr"])
    # an ended task's sidecar is not ready on purpose: task_ended says so, also after a restart (a fresh
    # teardown counter); the teardown clause covers sidecars older than task_ended during an upgrade
    assert re.search(r"unless on \(namespace, pod\) \(max by \(namespace, pod\) "
                     r"\(taskcreds_sidecar_task_ended\)\s*==\s*1\)", ready["expr"]), ready["expr"]
    assert re.search(r"unless on \(namespace, pod\) \(max by \(namespace, pod\) "
                     r"\(taskcreds_sidecar_teardown_total\)\s*>\s*0\)", ready["expr"]), ready["expr"]
    refresh = alerts["TaskcredsSidecarRefreshFailing"]
    assert 'taskcreds_sidecar_refresh_total{result=~"failure|write_failure"}' in refresh["expr"]
    assert not {"success"} & set(re.findall(r'result=~?"([^"]*)"', refresh["expr"])[0].split("|"))
    for rule in (ready, refresh):
        assert rule["for"] == "10m"
        assert "$labels.namespace" in rule["annotations"]["summary"]
        assert "$labels.pod" in rule["annotations"]["summary"]


@pytest.mark.parametrize(
    ("service_monitor", "pod_monitor", "operator_down", "sidecar_alerts"),
    [
        pytest.param(False, False, False, False, id="neither monitor: no rule over series nobody scrapes"),
        pytest.param(True, False, True, False, id="ServiceMonitor only"),
        pytest.param(False, True, False, True, id="PodMonitor only"),
        pytest.param(True, True, True, True, id="both"),
    ],
)
def test_alerts_render_only_with_the_monitor_that_scrapes_their_series(
    helm: Helm, service_monitor: bool, pod_monitor: bool, operator_down: bool, sidecar_alerts: bool
) -> None:
    alerts = alerts_of(helm.template(monitoring(service_monitor=service_monitor, pod_monitor=pod_monitor)))
    assert ("TaskcredsOperatorDown" in alerts) is operator_down
    assert ("TaskcredsSidecarNotReady" in alerts) is sidecar_alerts
    assert ("TaskcredsSidecarRefreshFailing" in alerts) is sidecar_alerts
    assert {"TaskcredsWebhookErrors", "TaskcredsRevocationFailures", "TaskcredsWebhookCertificateExpiring"} <= set(
        alerts
    )


def test_operator_down_watches_the_targets_of_the_charts_service_monitor(helm: Helm) -> None:
    """up{service=...} carries the name of the Service a ServiceMonitor scraped: it must be the one the
    chart's ServiceMonitor selects, or absent() is true forever."""
    docs = helm.template(VALUES_SETS["monitoring"])
    expr = alerts_of(docs)["TaskcredsOperatorDown"]["expr"]
    matchers = dict(re.findall(r'(\w+)="([^"]*)"', re.search(r"up\{([^}]*)\}", expr).group(1)))  # type: ignore[union-attr]
    monitor = one(docs, "ServiceMonitor")
    services = [s for s in of_kind(docs, "Service")
                if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in services] == [matchers["service"]]
    assert matchers["namespace"] == NAMESPACE == services[0]["metadata"]["namespace"]
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
