"""May this pod have these credentials now? Pure decisions, no I/O.

Two steps, both raising a :class:`~taskcreds.operator.broker.errors.BrokerError` with a stable
``reason`` (the ``policy_denials_total`` label) and a message a person can act on:

1. :func:`check_task` — the caller's pod is opted in, its annotations parse, the requested task is
   the pod's task, and the task is not over (terminal status, deletion, deadline, or a revoke
   already recorded — a terminal task is final even if its annotation is set back to running).
2. :func:`check_credentials` — each requested credential is listed in the pod's credentials
   annotation, resolves to a source, is granted to the pod's service account (and namespace, for
   a ClusterCredentialSource), and the TTL is within the source's ``maxTTL``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from taskcreds.operator.annotations import AnnotationError, InjectionRequest, parse_request
from taskcreds.operator.broker.errors import BadRequest, NotFound, PolicyDenied, TaskTerminal
from taskcreds.operator.endings import deadline_of, task_ending
from taskcreds.operator.sources import Source, SourceError

from taskcreds import names
from taskcreds.durations import DurationError, format_duration, parse_duration

__all__ = [
    "TaskView",
    "Grant",
    "check_task",
    "check_credentials",
    "requested_ttl",
    "pinned_task",
    "one_task_per_pod",
    "DENIAL_REASONS",
]

#: every ``reason`` label a denial can carry (stable: dashboards and alerts use them)
DENIAL_REASONS: Final = (
    "not_opted_in",
    "bad_annotations",
    "task_mismatch",
    "not_requested",
    "no_source",
    "bad_source",
    "service_account_not_allowed",
    "namespace_not_allowed",
    "ttl_above_max",
    "unknown_provider",
    "task_terminal",
)


@dataclass(frozen=True)
class TaskView:
    """The caller's pod's task, as the pod's annotations say."""

    namespace: str
    pod: str
    pod_uid: str
    service_account: str
    request: InjectionRequest
    deadline: datetime | None


@dataclass(frozen=True)
class Grant:
    """One credential the pod may have: its source and the lifetime to issue."""

    credential: str
    source: Source
    ttl_seconds: int


def check_task(
    pod: Mapping | None,
    *,
    namespace: str,
    pod_name: str,
    pod_uid: str,
    service_account: str,
    task: str,
    now: datetime,
    ended: str | None = None,
) -> TaskView:
    """The task is this pod's and still running; ``ended`` is a revoke reason already recorded."""
    if pod is None:
        raise NotFound(f"pod {namespace}/{pod_name} does not exist")
    meta = pod.get("metadata") or {}
    if meta.get("uid") != pod_uid:
        raise NotFound(f"pod {namespace}/{pod_name} with uid {pod_uid} does not exist (it was replaced)")
    labels = meta.get("labels") or {}
    if labels.get(names.LABEL_INJECT) != "true":
        raise PolicyDenied(
            "not_opted_in",
            f"pod {namespace}/{pod_name} is not opted in: label {names.LABEL_INJECT}=true is missing",
        )
    try:
        request = parse_request(meta.get("annotations") or {})
    except AnnotationError as exc:
        raise PolicyDenied("bad_annotations", f"pod {namespace}/{pod_name}: {exc}") from None
    if task != request.task:
        raise PolicyDenied(
            "task_mismatch",
            f"task {task!r} is not the task of pod {namespace}/{pod_name} "
            f"({names.ANNOTATION_TASK}={request.task!r})",
        )
    pinned = pinned_task(pod)
    if pinned is not None and pinned != task:
        raise TaskTerminal(
            "task_changed",
            f"pod {namespace}/{pod_name} was admitted for task {pinned!r} (its sidecar's "
            f"{names.ENV_TASK}); a pod runs one task: task {task!r} is refused, start a new pod for it",
        )
    reason = ended or task_ending(dict(pod), now=now)
    if reason is not None:
        raise TaskTerminal(
            reason,
            f"task {task!r} of pod {namespace}/{pod_name} has ended ({reason}); "
            "no credential is issued for it again",
        )
    return TaskView(
        namespace=namespace,
        pod=pod_name,
        pod_uid=pod_uid,
        service_account=service_account,
        request=request,
        deadline=deadline_of(dict(pod)),
    )


def pinned_task(pod: Mapping) -> str | None:
    """The task id the webhook wrote into the pod's sidecar (env ``TASKCREDS_TASK``) at admission.

    A pod's container env cannot change after creation, so unlike the annotation this is the task
    the pod was started for, on every replica and after every restart. None for a pod without an
    injected sidecar (labelled after creation, say): the broker then checks the TaskLeases instead.
    """
    spec = pod.get("spec") or {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if container.get("name") != names.SIDECAR_CONTAINER:
            continue
        for env in container.get("env") or []:
            if env.get("name") == names.ENV_TASK and isinstance(env.get("value"), str):
                return str(env["value"])
    return None


def one_task_per_pod(view: TaskView, task_leases: Sequence[Mapping]) -> None:
    """Refuse a task when this pod (by uid) already has a TaskLease of another task.

    ``task_leases`` are the pod's namespace's; those of other pods (other uids, such as a
    predecessor of the same name) do not count. The task annotation is writable by whoever may
    patch the pod, so without this a finished task could be "reopened" under a new id on a replica
    that did not see it end (restart, another replica). TaskTerminal (409) naming both tasks.
    """
    task = view.request.task
    for lease in task_leases:
        meta = lease.get("metadata") or {}
        spec = lease.get("spec") or {}
        uids = {o.get("uid") for o in meta.get("ownerReferences") or []} | {spec.get("podUID")}
        if view.pod_uid not in uids or spec.get("task") in (None, task):
            continue
        status = lease.get("status") or {}
        phase = status.get("phase") or "Active"
        if phase == "Active" and not status.get("leases"):
            continue  # that task never held a credential (its first issue failed) and has not ended
        raise TaskTerminal(
            "task_changed",
            f"pod {view.namespace}/{view.pod} already ran task {spec['task']!r} (TaskLease "
            f"{meta.get('name')}, {phase}); a pod runs one task: task {task!r} is refused, "
            "start a new pod for it",
        )


def requested_ttl(text: str | None) -> float | None:
    """A TTL from a request body; BadRequest naming it when it is not a Go duration."""
    if text is None:
        return None
    try:
        return parse_duration(text)
    except DurationError as exc:
        raise BadRequest(f"ttl: {exc}") from None


def check_credentials(
    view: TaskView,
    requested: Sequence[str] | None,
    sources: Mapping[str, Source | SourceError | None],
    *,
    ttl: float | None = None,
    providers: Sequence[str] | None = None,
) -> list[Grant]:
    """A grant per requested credential (all of the pod's when None), or the first denial.

    ``sources`` maps each name to its resolved source, None (no such source) or the SourceError
    that made it unusable. ``ttl`` is the request's; else the pod's annotation; else the source's
    default.
    """
    names_wanted = list(requested) if requested is not None else list(view.request.credentials)
    who = f"service account {view.service_account!r} in namespace {view.namespace!r}"
    grants = []
    for name in names_wanted:
        if name not in view.request.credentials:
            raise PolicyDenied(
                "not_requested",
                f"credential {name!r} is not in pod {view.namespace}/"
                f"{view.pod}'s {names.ANNOTATION_CREDENTIALS} "
                f"({','.join(view.request.credentials)})",
            )
        source = sources.get(name)
        if source is None:
            raise PolicyDenied(
                "no_source",
                f"credential {name!r}: no CredentialSource {name!r} in namespace "
                f"{view.namespace!r} and no ClusterCredentialSource {name!r}",
            )
        if isinstance(source, SourceError):
            raise PolicyDenied("bad_source", f"credential {name!r}: {source}")
        if providers is not None and source.provider not in providers:
            raise PolicyDenied(
                "unknown_provider",
                f"credential {name!r}: provider {source.provider!r} is not available in this broker",
            )
        if view.service_account not in source.allowed_service_accounts:
            raise PolicyDenied(
                "service_account_not_allowed",
                f"credential {name!r} is not granted to {who}: allowedServiceAccounts of "
                f"{source.kind} {name!r} is [{', '.join(source.allowed_service_accounts)}]",
            )
        if source.allowed_namespaces is not None and view.namespace not in source.allowed_namespaces:
            raise PolicyDenied(
                "namespace_not_allowed",
                f"credential {name!r} is not granted to {who}: allowedNamespaces of "
                f"ClusterCredentialSource {name!r} is [{', '.join(source.allowed_namespaces)}]",
            )
        lifetime = ttl if ttl is not None else view.request.ttl
        lifetime = lifetime if lifetime is not None else source.default_ttl
        if lifetime > source.max_ttl:
            raise PolicyDenied(
                "ttl_above_max",
                f"credential {name!r}: ttl {format_duration(lifetime)} is "
                f"above maxTTL {format_duration(source.max_ttl)} of "
                f"{source.kind} {name!r}",
            )
        grants.append(Grant(credential=name, source=source, ttl_seconds=max(1, int(lifetime))))
    return grants
