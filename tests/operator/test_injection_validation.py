"""The validation helper itself: it must fail on what a kube-apiserver would refuse."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from tests.operator.validation import VERSIONS, assert_valid_pod_spec, schema_errors

GOOD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p"},
    "spec": {
        "initContainers": [
            {
                "name": "side",
                "image": "s",
                "restartPolicy": "Always",
                "volumeMounts": [{"name": "v", "mountPath": "/v"}],
            }
        ],
        "containers": [{"name": "a", "image": "a", "resources": {"limits": {"memory": "1Gi"}}}],
        "volumes": [{"name": "v", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
    },
}


def broken(change: Any) -> dict[str, Any]:
    obj = copy.deepcopy(GOOD)
    change(obj["spec"])
    return obj


BAD = {
    "unknown-field": (lambda s: s["containers"][0].update(imagee="x"), "imagee"),
    "wrong-type": (lambda s: s["containers"][0].update(ports="80"), "ports"),
    "duplicate-container": (
        lambda s: s["containers"].append({"name": "side", "image": "x"}),
        "duplicate container name 'side'",
    ),
    "duplicate-volume": (
        lambda s: s["volumes"].append({"name": "v", "emptyDir": {}}),
        "duplicate volume name 'v'",
    ),
    "mount-without-volume": (
        lambda s: s["containers"][0].update(volumeMounts=[{"name": "nope", "mountPath": "/x"}]),
        "'nope' is not a volume of the pod",
    ),
    "same-mount-path-twice": (
        lambda s: s["initContainers"][0]["volumeMounts"].append({"name": "v", "mountPath": "/v/"}),
        "mountPath '/v' used twice",
    ),
    "emptydir-medium": (
        lambda s: s["volumes"][0]["emptyDir"].update(medium="Disk"),
        "'Disk' is not '' or Memory",
    ),
    "bad-quantity": (
        lambda s: s["containers"][0]["resources"]["limits"].update(memory="1GB"),
        "'1GB' is not a Kubernetes",
    ),
    "bad-size-limit": (lambda s: s["volumes"][0]["emptyDir"].update(sizeLimit="big"), "sizeLimit"),
    "init-restart-policy": (
        lambda s: s["initContainers"][0].update(restartPolicy="OnFailure"),
        "is not Always",
    ),
}


def test_a_valid_pod_passes_every_version() -> None:
    assert_valid_pod_spec(GOOD)
    assert VERSIONS[0] == "1.29" and VERSIONS[-1] == "1.35"


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_pods_fail_with_a_reason(case: str) -> None:
    change, reason = BAD[case]
    with pytest.raises(AssertionError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        assert_valid_pod_spec(broken(change))


@pytest.mark.parametrize("case", ["unknown-field", "wrong-type"])
def test_cached_validator_agrees_with_kubernetes_validate(case: str) -> None:
    obj = broken(BAD[case][0])
    assert schema_errors(obj, "1.35")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, "1.35", strict=True)
    assert schema_errors(GOOD, "1.29") == []
    kubernetes_validate.validate(GOOD, "1.29", strict=True)


def test_other_kinds_are_schema_checked_only() -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s"},
        "spec": {"ports": [{"port": 443, "targetPort": 8443}], "selector": {"app": "x"}},
    }
    assert_valid_pod_spec(service)
    with pytest.raises(AssertionError, match="portt"):
        assert_valid_pod_spec({**service, "spec": {"ports": [{"portt": 1}]}})
