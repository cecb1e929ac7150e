"""Pure pod mutation: plan, builders and JSONPatch. No I/O.

Pipeline (vault-k8s style): should-inject -> parse annotations -> validate -> build pieces
(``builders``: volumes, sidecar, agent mount and env) -> JSONPatch (``patch``). The webhook calls
:func:`mutate_pod`; ``taskcreds inject`` calls :func:`inject_object`.
"""

from taskcreds.operator.injection.builders import OUR_VOLUMES, SIDECAR_RUN_AS_USER, sidecar_container, volumes
from taskcreds.operator.injection.mutate import (
    CredentialCheck,
    MutationResult,
    Outcome,
    mutate_pod,
    should_inject,
)
from taskcreds.operator.injection.workloads import WORKLOAD_TEMPLATES, inject_object, pod_template

__all__ = [
    "CredentialCheck",
    "MutationResult",
    "Outcome",
    "mutate_pod",
    "inject_object",
    "should_inject",
    "pod_template",
    "WORKLOAD_TEMPLATES",
    "OUR_VOLUMES",
    "SIDECAR_RUN_AS_USER",
    "sidecar_container",
    "volumes",
]
