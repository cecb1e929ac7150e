"""Inject a Pod or the pod template of a workload (what ``taskcreds inject`` and GitOps users need).

The webhook only ever sees Pods; injecting a Deployment's template up front gives the same pods
(the webhook then finds them already injected and adds nothing).
"""

from __future__ import annotations

import copy
from typing import Any, Final

import jsonpatch
from taskcreds.operator.config import InjectionConfig
from taskcreds.operator.injection.mutate import CredentialCheck, MutationResult, mutate_pod
from taskcreds.operator.injection.patch import prefixed

__all__ = ["WORKLOAD_TEMPLATES", "inject_object", "pod_template"]

#: kind -> where its pod (template) lives
WORKLOAD_TEMPLATES: Final[dict[str, tuple[str, ...]]] = {
    "Pod": (),
    "PodTemplate": ("template",),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def pod_template(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The pod (template) inside ``obj`` and its JSON pointer; (None, reason) when there is none."""
    kind = obj.get("kind")
    path = WORKLOAD_TEMPLATES.get(kind) if isinstance(kind, str) else None
    if path is None:
        return None, f"kind {kind!r} has no pod template; accepted kinds: {', '.join(WORKLOAD_TEMPLATES)}"
    node: Any = obj
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return None, f"{kind} has no {'.'.join(path)}"
    return node, "".join("/" + key for key in path)


def inject_object(
    obj: dict[str, Any], config: InjectionConfig, *, credential_check: CredentialCheck | None = None
) -> tuple[dict[str, Any], MutationResult]:
    """Mutate a Pod or a workload's pod template exactly as the webhook would mutate its pods.

    Returns a mutated deep copy (``obj`` is untouched) and the result, whose patch applies to ``obj``.
    Objects without a pod template are returned unchanged as ``skipped``.
    """
    template, where = pod_template(obj)
    if template is None:
        return copy.deepcopy(obj), MutationResult("skipped", [], [], where)
    metadata = obj.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    result = mutate_pod(template, config, namespace=namespace, credential_check=credential_check)
    if not result.patch:
        return copy.deepcopy(obj), result
    ops = prefixed(result.patch, where)
    return jsonpatch.apply_patch(obj, ops), MutationResult(
        result.outcome, ops, result.warnings, result.message
    )
