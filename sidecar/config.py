"""The sidecar's settings, read from the environment in exactly one place.

The webhook sets these variables (taskcreds/names.py); a person running the sidecar by hand sets
the same. Every error names the variable, the value and what would be accepted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from taskcreds.sidecar.errors import ConfigError

from taskcreds import names
from taskcreds.durations import DurationError, parse_duration

__all__ = ["SidecarConfig", "from_env", "parse_listen", "parse_resolve", "CREDENTIAL_NAME",
           "DEFAULT_LISTEN_LOCAL", "DEFAULT_LISTEN_PROBE", "DEFAULT_LISTEN_PROXY", "RESERVED_NAMES"]

DEFAULT_LISTEN_LOCAL = f"127.0.0.1:{names.SIDECAR_LOCAL_PORT}"
DEFAULT_LISTEN_PROBE = f"0.0.0.0:{names.SIDECAR_PROBE_PORT}"
DEFAULT_LISTEN_PROXY = f"127.0.0.1:{names.SIDECAR_PROXY_PORT}"
#: top-level names in $TASKCREDS_DIR the sidecar writes itself: never a credential's name
RESERVED_NAMES = (names.MANIFEST_FILE, "ca-bundle.crt")
#: a CredentialSource name: a DNS subdomain (lowercase), so never hidden and never a path
CREDENTIAL_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class SidecarConfig:
    """Everything the sidecar needs to know, validated."""

    dir: str
    """tmpfs directory shared with the agent containers (``$TASKCREDS_DIR``)."""
    task: str
    """The task id (the pod's ``taskcreds.io/task``)."""
    credentials: tuple[str, ...]
    """CredentialSource names to fetch, in the annotation's order, without duplicates."""
    ttl: str | None
    """Requested lifetime, Go-style, passed to the broker as written; None: the source's default."""
    max_duration: float | None
    """Seconds after the sidecar's first start at which the task ends by itself (reason ``deadline``)."""
    pod_name: str
    pod_namespace: str
    pod_uid: str | None
    broker_url: str
    """``https://host:port`` of the broker, without a trailing slash."""
    broker_spiffe_id: str
    """The only SPIFFE ID the sidecar accepts as the broker; the token is never sent to another."""
    token_file: str
    """The pod-bound projected service-account token; re-read on every request (kubelet rotates it)."""
    podinfo_dir: str | None
    """Downward-API directory holding ``annotations``; None: no file fallback."""
    listen_local: tuple[str, int]
    listen_probe: tuple[str, int]
    listen_proxy: tuple[str, int]
    """The egress proxy's address (loopback), used only when a credential has delivery proxy."""
    proxy_upstream_ca: str | None
    """Test/dev hook: a PEM file the proxy trusts for upstreams instead of the system roots."""
    proxy_resolve: dict[str, tuple[str, int]]
    """Test/dev hook: upstream host -> (ip, port) the proxy connects to instead of resolving it."""
    fs_group: int | None
    log_level: str
    spiffe_socket: str | None
    """``unix:///path`` of the SPIFFE Workload API; None: py-spiffe's default lookup."""


def _need(env: Mapping[str, str], key: str, what: str) -> str:
    value = env.get(key, "").strip()
    if not value:
        raise ConfigError(f"{key} is not set: expected {what}")
    return value


def parse_listen(key: str, value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9091`` for IPv6) -> (host, port); port 0 picks a free port."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}={value!r} is not HOST:PORT (e.g. 127.0.0.1:9091, port 0-65535)")
    return host, int(port)


def parse_resolve(key: str, value: str) -> dict[str, tuple[str, int]]:
    """``host=ip:port[,host=ip:port]`` -> {host: (ip, port)} (the proxy's upstream override)."""
    out: dict[str, tuple[str, int]] = {}
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        host, sep, address = part.partition("=")
        if not sep or not host.strip():
            raise ConfigError(f"{key}: {part!r} is not host=ip:port (e.g. git.test.local=127.0.0.1:8443)")
        out[host.strip().lower()] = parse_listen(key, address.strip())
    return out


def from_env(env: Mapping[str, str]) -> SidecarConfig:
    """Build and validate the configuration from ``env`` (``os.environ`` in production)."""
    directory = _need(env, names.ENV_DIR, "the absolute path of the tmpfs credential directory")
    if not directory.startswith("/"):
        raise ConfigError(f"{names.ENV_DIR}={directory!r} is not an absolute path")

    task = _need(env, names.ENV_TASK, "the task id (taskcreds.io/task)")
    if not re.fullmatch(names.TASK_ID_PATTERN, task):
        raise ConfigError(f"{names.ENV_TASK}={task!r} is not a task id: expected {names.TASK_ID_PATTERN}")

    raw_creds = _need(env, names.ENV_CREDENTIALS, "comma-separated CredentialSource names, e.g. github,db")
    credentials: list[str] = []
    for part in raw_creds.split(","):
        name = part.strip()
        if not name:
            continue
        if not CREDENTIAL_NAME.fullmatch(name) or name in RESERVED_NAMES:
            raise ConfigError(f"{names.ENV_CREDENTIALS}: {name!r} is not a CredentialSource name: expected "
                              "lowercase letters, digits, '-' and '.', starting and ending with a letter or "
                              "digit")
        if name not in credentials:
            credentials.append(name)
    if not credentials:
        raise ConfigError(f"{names.ENV_CREDENTIALS}={raw_creds!r} names no credential")

    ttl = env.get(names.ENV_TTL, "").strip() or None
    if ttl is not None:
        try:
            parse_duration(ttl)
        except DurationError as exc:
            raise ConfigError(f"{names.ENV_TTL}: {exc}") from None

    max_duration = None
    raw_max = env.get(names.ENV_MAX_DURATION, "").strip()
    if raw_max:
        try:
            max_duration = parse_duration(raw_max)
        except DurationError as exc:
            raise ConfigError(f"{names.ENV_MAX_DURATION}: {exc}") from None

    broker_url = _need(env, names.ENV_BROKER_URL, "the broker's https:// URL").rstrip("/")
    parts = urlsplit(broker_url)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{names.ENV_BROKER_URL}={broker_url!r} is not an https://HOST[:PORT] URL "
                          "(the broker only speaks mutual TLS)")
    broker_id = _need(env, names.ENV_BROKER_SPIFFE_ID, "the broker's SPIFFE ID, spiffe://<trust domain>/...")
    if not re.fullmatch(r"spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)*", broker_id):
        raise ConfigError(f"{names.ENV_BROKER_SPIFFE_ID}={broker_id!r} is not a SPIFFE ID "
                          "(spiffe://<trust domain>/<path>)")

    fs_group = None
    raw_group = env.get(names.ENV_FS_GROUP, "").strip()
    if raw_group:
        if not raw_group.isdigit():
            raise ConfigError(f"{names.ENV_FS_GROUP}={raw_group!r} is not a numeric group id")
        fs_group = int(raw_group)

    level = (env.get(names.ENV_LOG_LEVEL, "").strip() or "info").lower()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"{names.ENV_LOG_LEVEL}={level!r}: expected one of {', '.join(_LOG_LEVELS)}")

    socket = env.get(names.ENV_SPIFFE_SOCKET, "").strip() or None
    if socket is not None and not socket.startswith(("unix://", "tcp://")):
        raise ConfigError(f"{names.ENV_SPIFFE_SOCKET}={socket!r}: expected unix:///path/to/socket")

    return SidecarConfig(
        dir=directory.rstrip("/") or "/",
        task=task,
        credentials=tuple(credentials),
        ttl=ttl,
        max_duration=max_duration,
        pod_name=_need(env, names.ENV_POD_NAME, "the pod's name (downward API metadata.name)"),
        pod_namespace=_need(env, names.ENV_POD_NAMESPACE,
                            "the pod's namespace (downward API metadata.namespace)"),
        pod_uid=env.get(names.ENV_POD_UID, "").strip() or None,
        broker_url=broker_url,
        broker_spiffe_id=broker_id,
        token_file=_need(env, names.ENV_TOKEN_FILE, "the path of the projected service-account token"),
        podinfo_dir=env.get(names.ENV_PODINFO_DIR, "").strip() or None,
        listen_local=parse_listen(names.ENV_LISTEN_LOCAL, env.get(names.ENV_LISTEN_LOCAL, "").strip()
                                  or DEFAULT_LISTEN_LOCAL),
        listen_probe=parse_listen(names.ENV_LISTEN_PROBE, env.get(names.ENV_LISTEN_PROBE, "").strip()
                                  or DEFAULT_LISTEN_PROBE),
        listen_proxy=parse_listen(names.ENV_LISTEN_PROXY, env.get(names.ENV_LISTEN_PROXY, "").strip()
                                  or DEFAULT_LISTEN_PROXY),
        proxy_upstream_ca=env.get(names.ENV_PROXY_UPSTREAM_CA, "").strip() or None,
        proxy_resolve=parse_resolve(names.ENV_PROXY_RESOLVE, env.get(names.ENV_PROXY_RESOLVE, "")),
        fs_group=fs_group,
        log_level=level,
        spiffe_socket=socket,
    )
