"""Parse an opted-in pod's ``taskcreds.io/*`` annotations into an :class:`InjectionRequest`.

CONTRACT.md section 1 is the reference; the names come from :mod:`taskcreds.names`. Parsing is
pure and cheap (the webhook calls it for every admitted pod): compiled patterns, no pydantic.
Every refusal is an :class:`AnnotationError` naming the key, the value and what is accepted.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from taskcreds import names
from taskcreds.durations import ACCEPTED as DURATION_ACCEPTED
from taskcreds.durations import MAXIMUM as DURATION_MAXIMUM
from taskcreds.durations import DurationError, format_duration, parse_duration

__all__ = [
    "AnnotationError",
    "InjectionRequest",
    "normal_path",
    "parse_request",
    "parse_credentials",
    "unknown_annotations",
    "go_duration",
    "shown",
    "MAX_CREDENTIALS",
    "KNOWN_ANNOTATIONS",
    "PUBLIC_ANNOTATIONS",
]

MAX_CREDENTIALS: Final = 16
_TASK = re.compile(names.TASK_ID_PATTERN)
# DNS-1123 subdomain (CredentialSource names) and label (container names), as Kubernetes checks them
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SHOWN = 80  # longer values are cut in messages: they are for people, and one line
#: values longer than this are never remembered by the parse caches (memory stays bounded)
_CACHED_LENGTH: Final = 512

ACCEPT_TASK: Final = f"a task id matching {names.TASK_ID_PATTERN} (for example fix-issue-42)"
ACCEPT_CREDENTIALS: Final = (
    f"a comma-separated list of 1 to {MAX_CREDENTIALS} CredentialSource names "
    "(DNS-1123 subdomains such as github,vault-db)"
)
ACCEPT_STATUS: Final = "one of " + ", ".join(names.TASK_STATUSES)
ACCEPT_CONTAINERS: Final = (
    "a comma-separated list of container names (DNS-1123 labels such as agent,git-clone)"
)
ACCEPT_MOUNT_PATH: Final = "an absolute path below / without '..' (for example /run/taskcreds)"

KNOWN_ANNOTATIONS: Final = frozenset(
    {
        names.ANNOTATION_TASK,
        names.ANNOTATION_CREDENTIALS,
        names.ANNOTATION_TASK_STATUS,
        names.ANNOTATION_TTL,
        names.ANNOTATION_MAX_DURATION,
        names.ANNOTATION_CONTAINERS,
        names.ANNOTATION_MOUNT_PATH,
        names.ANNOTATION_INJECTED,
        names.ANNOTATION_EGRESS,
    }
)
_OUR_PREFIX: Final = names.PREFIX + "/"
PUBLIC_ANNOTATIONS: Final = (
    names.ANNOTATION_TASK,
    names.ANNOTATION_CREDENTIALS,
    names.ANNOTATION_TASK_STATUS,
    names.ANNOTATION_TTL,
    names.ANNOTATION_MAX_DURATION,
    names.ANNOTATION_CONTAINERS,
    names.ANNOTATION_MOUNT_PATH,
)


def shown(value: object, limit: int = _SHOWN) -> str:
    """``value`` as text for a message, cut to ``limit`` characters with an ellipsis and the full length.

    Messages quote user input so people can find it, but a 1 MiB annotation must not become a
    1 MiB denial (the API server hands it to the client and into audit logs).
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


class AnnotationError(ValueError):
    """A missing or malformed ``taskcreds.io/*`` annotation.

    ``key``, ``value`` (None when missing) and ``accepted`` are kept separately so callers can
    build their own messages; ``str()`` says all three.
    """

    def __init__(self, key: str, value: str | None, accepted: str, problem: str | None = None) -> None:
        self.key, self.value, self.accepted = key, value, accepted
        if value is None:
            text = f"{key}: missing; required: {accepted}"
        else:
            text = f'{key}: "{shown(value)}" ' + (
                f"{problem}; accepted: {accepted}" if problem else f"is not {accepted}"
            )
        super().__init__(text)


@dataclass(frozen=True, slots=True)
class InjectionRequest:
    """What an opted-in pod asks for, parsed and validated."""

    task: str
    credentials: tuple[str, ...]
    task_status: str = names.DEFAULT_TASK_STATUS
    ttl: float | None = None
    """Seconds; None: the source's default."""
    max_duration: float | None = None
    """Seconds after admission at which the task ends by itself; None: no deadline."""
    containers: tuple[str, ...] | None = None
    """Containers that get the mount; None: every regular container."""
    mount_path: str | None = None
    """None: the configured default."""


def go_duration(seconds: float) -> str:
    """Seconds -> a Go-style duration the sidecar parses back to the same value."""
    if seconds == int(seconds):
        return format_duration(seconds)
    return f"{round(seconds * 1000)}ms"


def parse_credentials(value: str, key: str = names.ANNOTATION_CREDENTIALS) -> tuple[str, ...]:
    """``"github, vault-db,github"`` -> ``("github", "vault-db")``: trimmed, deduplicated, in order.

    Remembered per raw string (pods of one workload all carry the same value); failures are not.
    """
    if len(value) <= _CACHED_LENGTH:
        return _parse_credentials_cached(value, key)
    return _parse_credentials(value, key)


@lru_cache(maxsize=1024)
def _parse_credentials_cached(value: str, key: str) -> tuple[str, ...]:
    return _parse_credentials(value, key)


def _parse_credentials(value: str, key: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for part in value.split(","):
        name = part.strip()
        if not name:
            continue
        if len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
            raise AnnotationError(
                key, value, ACCEPT_CREDENTIALS, f"names {shown(name)!r}, which is not a DNS-1123 subdomain"
            )
        seen[name] = None
    if not seen:
        raise AnnotationError(key, value, ACCEPT_CREDENTIALS, "names no credential")
    if len(seen) > MAX_CREDENTIALS:
        raise AnnotationError(key, value, ACCEPT_CREDENTIALS, f"names {len(seen)} credentials")
    return tuple(seen)


@lru_cache(maxsize=256)
def _cached_duration(text: str) -> float:
    """parse_duration, remembered: pods use a handful of distinct durations."""
    return parse_duration(text)


def _duration(key: str, value: str | None) -> float | None:
    if value is None:
        return None
    text = value.strip()
    try:
        if len(text) <= _CACHED_LENGTH:
            return _cached_duration(text)
        return parse_duration(text)
    except DurationError as exc:
        problem = ("is zero or negative" if "longer than zero" in str(exc) else
                   f"is longer than the maximum {DURATION_MAXIMUM}" if "the maximum" in str(exc) else None)
        raise AnnotationError(key, value, DURATION_ACCEPTED, problem) from None


@lru_cache(maxsize=256)
def _containers_cached(value: str) -> tuple[str, ...]:
    return _parse_containers(value)


def _containers(value: str) -> tuple[str, ...]:
    if len(value) <= _CACHED_LENGTH:
        return _containers_cached(value)
    return _parse_containers(value)


def _parse_containers(value: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for part in value.split(","):
        name = part.strip()
        if not name:
            continue
        if len(name) > 63 or not _LABEL.fullmatch(name):
            raise AnnotationError(
                names.ANNOTATION_CONTAINERS,
                value,
                ACCEPT_CONTAINERS,
                f"names {shown(name)!r}, which is not a container name",
            )
        seen[name] = None
    if not seen:
        raise AnnotationError(names.ANNOTATION_CONTAINERS, value, ACCEPT_CONTAINERS, "names no container")
    return tuple(seen)


def normal_path(path: str) -> str:
    """``posixpath.normpath`` of an absolute path, with one leading slash: normpath keeps exactly two
    (POSIX leaves "//x" implementation-defined), and Linux reads "//var" as "/var" — kept, "//"
    would pass as not "/" and "//var/..." would slip past every string comparison with a path."""
    return "/" + posixpath.normpath(path).lstrip("/")


def _mount_path(value: str) -> str:
    path = value.strip()
    normal = normal_path(path)
    if (
        not path.startswith("/")
        or ".." in path.split("/")
        or ":" in path
        or normal == "/"
        or len(path) > 1024
    ):
        raise AnnotationError(names.ANNOTATION_MOUNT_PATH, value, ACCEPT_MOUNT_PATH)
    return normal


def _not_a_string(key: str, value: Any) -> AnnotationError:
    kind = (
        "boolean"
        if isinstance(value, bool)
        else "number"
        if isinstance(value, (int, float))
        else type(value).__name__
    )
    return AnnotationError(
        key, str(value), "a string (annotation values are strings: quote it in YAML)", f"is a YAML {kind}"
    )


def parse_request(annotations: Mapping[str, Any] | None) -> InjectionRequest:
    """Parse the pod's annotations (CONTRACT.md section 1); raises AnnotationError on the first problem.

    The webhook calls this for every admitted pod, and the pods of one workload carry the same
    values: the parsed request is remembered per tuple of raw values (short ones only, so the
    cache's memory stays bounded). Refusals are never remembered, so each one is raised afresh.
    """
    annotations = annotations or {}
    get = annotations.get
    values = (
        get(names.ANNOTATION_TASK),
        get(names.ANNOTATION_CREDENTIALS),
        get(names.ANNOTATION_TASK_STATUS),
        get(names.ANNOTATION_TTL),
        get(names.ANNOTATION_MAX_DURATION),
        get(names.ANNOTATION_CONTAINERS),
        get(names.ANNOTATION_MOUNT_PATH),
    )
    total = 0
    for key, value in zip(PUBLIC_ANNOTATIONS, values, strict=True):
        if value is None:
            continue
        if not isinstance(value, str):
            raise _not_a_string(key, value)
        total += len(value)
    if total <= _CACHED_LENGTH:
        return _parse_values_cached(*values)
    return _parse_values(*values)


@lru_cache(maxsize=1024)
def _parse_values_cached(*values: str | None) -> InjectionRequest:
    return _parse_values(*values)


def _parse_values(
    task: str | None,
    raw_credentials: str | None,
    status: str | None,
    ttl: str | None,
    max_duration: str | None,
    raw_containers: str | None,
    raw_mount: str | None,
) -> InjectionRequest:
    """The values of PUBLIC_ANNOTATIONS, in that order (None: absent), checked and typed."""
    if task is None:
        raise AnnotationError(names.ANNOTATION_TASK, None, ACCEPT_TASK)
    if not _TASK.fullmatch(task):
        raise AnnotationError(names.ANNOTATION_TASK, task, ACCEPT_TASK)
    if raw_credentials is None:
        raise AnnotationError(names.ANNOTATION_CREDENTIALS, None, ACCEPT_CREDENTIALS)
    credentials = parse_credentials(raw_credentials)
    if status is None:
        status = names.DEFAULT_TASK_STATUS
    elif status not in names.TASK_STATUSES:
        raise AnnotationError(names.ANNOTATION_TASK_STATUS, status, ACCEPT_STATUS)
    return InjectionRequest(
        task=task,
        credentials=credentials,
        task_status=status,
        ttl=_duration(names.ANNOTATION_TTL, ttl),
        max_duration=_duration(names.ANNOTATION_MAX_DURATION, max_duration),
        containers=None if raw_containers is None else _containers(raw_containers),
        mount_path=None if raw_mount is None else _mount_path(raw_mount),
    )


def unknown_annotations(annotations: Mapping[str, Any] | None) -> list[str]:
    """``taskcreds.io/*`` keys this version does not know (likely typos such as ``taskcreds.io/ttls``)."""
    if not annotations:
        return []
    return sorted(k for k in annotations if k.startswith(_OUR_PREFIX) and k not in KNOWN_ANNOTATIONS)
