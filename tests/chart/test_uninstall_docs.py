"""docs/install.md "Uninstalling" deletes the operator-made key Secrets by name and finds them by
label: those names and labels must be what the chart tells the operator and what the operator
really writes (a real jwt provider and the webhook certificate code, on the in-memory cluster)."""

from __future__ import annotations

import re
from typing import Any

from taskcreds.operator.certificates import _LABELS as WEBHOOK_SECRET_LABELS

from taskcreds import names
from tests.chart.helm import NAMESPACE, REPO, Helm
from tests.chart.kinds import one
from tests.operator.test_broker_harness import Harness, harness  # noqa: F401  (fixture)

SECTION = (lambda text: text[text.index("## Uninstalling") : text.index("## README draft")])(
    (REPO / "docs" / "install.md").read_text()
)


def operator_env(helm: Helm) -> dict[str, Any]:
    pod = one(helm.template({}), "Deployment", "-operator")["spec"]["template"]["spec"]
    return {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}


def deleted_secrets() -> set[str]:
    match = re.search(rf"kubectl -n {NAMESPACE} delete secret ([^`]*?)--ignore-not-found", SECTION)
    assert match, "no `kubectl delete secret` in Uninstalling"
    return set(match.group(1).replace("\\", " ").split())


async def test_the_delete_command_names_every_secret_the_operator_writes(
    helm: Helm, harness: Harness  # noqa: F811
) -> None:
    env = operator_env(helm)
    assert env[names.ENV_JWT_SECRET] == harness.settings.jwt_secret, "the harness writes the chart's name"
    pod = harness.add_pod("agent-1")
    agent = harness.agent(pod)
    assert (await harness.issue(agent)).status == 200
    assert (await harness.call(agent, "POST", "/v1/tasks/fix-42/revoke", {})).status == 200
    written = {
        name: (secret.get("metadata") or {}).get("labels") or {}
        for (namespace, name), secret in harness.cluster.secrets.items()
        if namespace == "taskcreds-system"
    }
    assert len(written) == 2, written  # the signing keys and the revoked list
    assert set(written) | {env[names.ENV_WEBHOOK_SECRET]} <= deleted_secrets()
    for labels in written.values():
        (selector,) = [f"{k}={v}" for k, v in labels.items()]
        assert f"get secrets -l {selector}" in SECTION


def test_the_webhook_secret_labels_in_the_docs_are_the_codes() -> None:
    for key, value in WEBHOOK_SECRET_LABELS.items():
        assert f"`{key}={value}`" in SECTION
