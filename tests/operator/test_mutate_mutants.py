"""Pod mutation denials that mutation testing found unguarded (tests/operator/test_injection.py covers
the common ones).

A container that already mounts something at the credentials' mount path is denied with a message
naming the volume and the container, however the path is spelled: the API server would otherwise
reject the injected pod with an opaque "must be unique" error, or the agent would read the wrong
volume. A sibling path that only shares a prefix is not a collision. A container of any kind named
like the sidecar is denied on a pod not injected yet (only the annotation case was tested).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest
from taskcreds.operator.config import InjectionConfig
from taskcreds.operator.injection import mutate_pod

from taskcreds import names

CONFIG = InjectionConfig()


def pod(mount_path: str, *, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "labels": {names.LABEL_INJECT: "true"},
            "annotations": {
                names.ANNOTATION_TASK: "t-1",
                names.ANNOTATION_CREDENTIALS: "github",
                **(annotations or {}),
            },
        },
        "spec": {
            "containers": [
                {
                    "name": "agent",
                    "image": "agent:1",
                    "volumeMounts": [{"name": "work", "mountPath": mount_path}],
                }
            ],
            "volumes": [{"name": "work", "emptyDir": {}}],
        },
    }


@pytest.mark.parametrize(
    ("mount_path", "annotations", "collides_with"),
    [
        ("/run/taskcreds", {}, "/run/taskcreds"),
        ("/run/taskcreds/", {}, "/run/taskcreds"),
        ("/run//taskcreds", {}, "/run/taskcreds"),
        ("/run/./taskcreds", {}, "/run/taskcreds"),
        ("/creds", {names.ANNOTATION_MOUNT_PATH: "/creds"}, "/creds"),
    ],
    ids=["same path", "trailing slash", "double slash", "dot segment", "custom mount path"],
)
def test_a_mount_at_the_mount_path_is_denied(
    mount_path: str, annotations: dict[str, str], collides_with: str
) -> None:
    obj = pod(mount_path, annotations=annotations)
    before = copy.deepcopy(obj)
    result = mutate_pod(obj, CONFIG)
    assert (result.outcome, result.patch) == ("denied", [])
    assert (
        f'{names.ANNOTATION_MOUNT_PATH}: "{collides_with}" collides with the mount of volume '
        "'work' in container 'agent'"
    ) in (result.message or "")
    assert obj == before


@pytest.mark.parametrize(
    "mount_path",
    ["/run/taskcreds-other", "/run/taskcreds.d", "/workspace"],
    ids=["sibling with a common prefix", "sibling with a dotted suffix", "elsewhere"],
)
def test_other_mounts_are_left_alone(mount_path: str) -> None:
    obj = pod(mount_path)
    result = mutate_pod(obj, CONFIG)
    assert result.outcome == "injected", result.message
    agent = jsonpatch.apply_patch(obj, result.patch)["spec"]["containers"][0]
    assert {m["mountPath"] for m in agent["volumeMounts"]} == {mount_path, "/run/taskcreds"}


@pytest.mark.parametrize(
    "where",
    ["initContainers", "containers", "ephemeralContainers"],
    ids=["init container", "regular container", "ephemeral container"],
)
def test_a_container_named_like_the_sidecar_is_denied(where: str) -> None:
    # on a pod not injected yet: adding our sidecar beside it would duplicate the name
    obj = pod("/workspace")
    obj["spec"].setdefault(where, []).append({"name": names.SIDECAR_CONTAINER, "image": "impostor:1"})
    result = mutate_pod(obj, CONFIG)
    assert (result.outcome, result.patch) == ("denied", [])
    assert f"the pod already has a container named {names.SIDECAR_CONTAINER!r}" in (result.message or "")
