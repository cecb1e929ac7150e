"""The injected pod's environment by delivery, which mutation testing of ``_plan`` found unguarded
(tests/operator/test_injection.py covers the common pods; test_mutate_mutants.py the checks).

Proxy variables (HTTPS_PROXY and the CA bundle paths) belong in the agent only when at least one
of its credentials is delivered by the sidecar's proxy: a file-only pod that got them would send
all its traffic to a listener that is not there. Every container gets ``TASKCREDS_DIR`` once.
"""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest
from taskcreds.operator.config import InjectionConfig
from taskcreds.operator.injection import mutate_pod
from taskcreds.operator.injection.builders import ENV_LISTEN_PROXY

from taskcreds import names

CONFIG = InjectionConfig()


def pod(credentials: str, env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    agent: dict[str, Any] = {"name": "agent", "image": "agent:1"}
    if env is not None:
        agent["env"] = env
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "labels": {names.LABEL_INJECT: "true"},
            "annotations": {names.ANNOTATION_TASK: "t-1", names.ANNOTATION_CREDENTIALS: credentials},
        },
        "spec": {"securityContext": {"fsGroup": 1000}, "containers": [agent]},
    }


def delivery(namespace: str, credential: str) -> tuple[str, Any]:
    return ("proxy", None) if credential.startswith("api") else ("file", None)


def injected(p: dict[str, Any]) -> dict[str, Any]:
    result = mutate_pod(p, CONFIG, namespace="ns", delivery=delivery)
    assert result.outcome == "injected", result.message
    return jsonpatch.apply_patch(p, result.patch)


def env_names(container: dict[str, Any]) -> list[str]:
    return [e["name"] for e in container.get("env") or []]


MOUNT = CONFIG.injection.mount_path
CASES = [
    ("file credentials only: no proxy", "github,vault-db", None, False),
    ("one proxy credential among files: proxy", "github,api", None, True),
    ("proxy credential only: proxy", "api", None, True),
    (
        "agent already sets TASKCREDS_DIR: proxy variables added, TASKCREDS_DIR not twice",
        "api",
        [{"name": names.ENV_DIR, "value": MOUNT}],
        True,
    ),
]


@pytest.mark.parametrize(("case", "credentials", "env", "proxied"), CASES, ids=[c[0] for c in CASES])
def test_proxy_variables_only_for_proxy_delivery(
    case: str, credentials: str, env: list[dict[str, Any]] | None, proxied: bool
) -> None:
    out = injected(pod(credentials, env))
    agent = out["spec"]["containers"][0]
    sidecar = out["spec"]["initContainers"][0]
    names_in_agent = env_names(agent)
    assert names_in_agent.count(names.ENV_DIR) == 1, (case, names_in_agent)
    assert ("HTTPS_PROXY" in names_in_agent) is proxied, (case, names_in_agent)
    assert (ENV_LISTEN_PROXY in env_names(sidecar)) is proxied, case
