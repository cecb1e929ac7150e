"""One builder per piece the webhook adds (CONTRACT.md section 2): volumes, sidecar, agent mount/env.

Each returns fresh dicts (never shared with the pod or with another call), so a caller may
mutate a patch value freely. This runs on every admission, so everything that depends only on
the configuration is worked out once per config (:func:`pieces`): the per-pod builders are
plain literals over precomputed strings, which CPython builds faster than any copy of a template.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

import orjson
from taskcreds.operator.annotations import InjectionRequest, go_duration
from taskcreds.operator.config import InjectionConfig

from taskcreds import names

__all__ = [
    "OUR_VOLUMES",
    "SIDECAR_RUN_AS_USER",
    "own_user",
    "Pieces",
    "pieces",
    "volumes",
    "sidecar_container",
    "sidecar_env",
    "agent_mount",
    "agent_env",
    "PROXY_ENV_NAMES",
    "CA_BUNDLE_FILE",
    "ENV_LISTEN_PROXY",
]

#: the uid the sidecar runs as when the pod names none (the distroless "nonroot" user)
SIDECAR_RUN_AS_USER: Final = 65532
OUR_VOLUMES: Final[tuple[str, ...]] = (
    names.VOLUME_CREDENTIALS,
    names.VOLUME_PODINFO,
    names.VOLUME_SPIFFE,
    names.VOLUME_SA_TOKEN,
)
#: the sidecar's proxy listener (the sidecar reads it; taskcreds.names gains it with the proxy work)
ENV_LISTEN_PROXY: Final[str] = getattr(names, "ENV_LISTEN_PROXY", "TASKCREDS_LISTEN_PROXY")
#: the CA bundle the sidecar writes into the credentials directory (the proxy's pod CA + system roots)
CA_BUNDLE_FILE: Final = "ca-bundle.crt"
#: both spellings: curl reads only ``http_proxy`` for plain HTTP, wget and many Python/Go clients
#: read the lower-case names first or only
_PROXY_URL_ENV: Final = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
_NO_PROXY_ENV: Final = ("NO_PROXY", "no_proxy")
#: in-cluster and loopback traffic never goes through the sidecar's proxy
NO_PROXY: Final = "localhost,127.0.0.1,::1,.svc,.cluster.local"
#: the CA-bundle variables of OpenSSL/Python, requests, Node.js, git and curl
_CA_ENV: Final = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "CURL_CA_BUNDLE",
)
PROXY_ENV_NAMES: Final[tuple[str, ...]] = (*_PROXY_URL_ENV, *_NO_PROXY_ENV, *_CA_ENV)
_PROBE_PORT_NAME: Final = "tc-probe"
_TOKEN_FILE: Final = f"{names.SIDECAR_TOKEN_PATH}/{names.SIDECAR_TOKEN_FILE}"


def own_user(pod_security: dict[str, Any]) -> bool:
    """Whether the sidecar runs as its own uid (65532) rather than the pod's runAsUser.

    Its files are 0440 and dirs 0750, group fsGroup: with an fsGroup every container is in that
    group, so the agent reads them under any uid. Without one, a pod that names a non-root
    runAsUser can read them only as their owner, so the sidecar has to run as that uid. Absent or
    root: 65532, the sidecar never runs as root.
    """
    return not pod_security.get("runAsUser") or pod_security.get("fsGroup") is not None


@lru_cache(maxsize=256)
def _duration_text(seconds: float) -> str:
    """go_duration, remembered: pods use a handful of distinct TTLs, and formatting is not free."""
    return go_duration(seconds)


class Pieces:
    """The pod pieces for one configuration, with every config-derived value computed once."""

    __slots__ = (
        "config",
        "_tmpfs_size",
        "_workload_api",
        "_token_seconds",
        "_image",
        "_pull_policy",
        "_probe_port",
        "_resources",
        "_broker_url",
        "_broker_id",
        "_listen_local",
        "_listen_probe",
        "_listen_proxy",
        "_proxy_url",
        "_spiffe_socket",
        "_volume_json",
        "_json",
    )

    def __init__(self, config: InjectionConfig) -> None:
        self.config = config
        spiffe, side = config.spiffe, config.sidecar
        self._tmpfs_size = config.injection.tmpfs_size_limit
        self._token_seconds = config.injection.token_expiration_seconds
        # (kind, key, value) of the Workload API volume: a CSI driver or a node directory
        self._workload_api: tuple[str, str, Any] = (
            ("csi", names.SPIFFE_CSI_DRIVER, True)
            if spiffe.socket_source == "csi"
            else ("hostPath", spiffe.host_path, "Directory")
        )
        self._image = side.image
        self._pull_policy = side.image_pull_policy
        self._probe_port = side.probe_port
        self._resources = tuple((key, tuple(value.items())) for key, value in side.resources.as_dict.items())
        self._broker_url = config.broker.url
        self._broker_id = config.broker.spiffe_id
        self._listen_local = f"127.0.0.1:{side.local_port}"
        self._listen_probe = f"0.0.0.0:{side.probe_port}"
        self._listen_proxy = f"127.0.0.1:{side.proxy_port}"
        self._proxy_url = f"http://{self._listen_proxy}"
        self._spiffe_socket = f"unix://{names.SIDECAR_SPIFFE_PATH}/{spiffe.socket_file}"
        self._volume_json = {v["name"]: orjson.Fragment(orjson.dumps(v)) for v in self.volumes()}
        try:
            self._json: _SidecarJSON | None = _SidecarJSON(self)
        except ValueError:  # a config value spells one of the cut marks: encode each sidecar whole
            self._json = None

    def volumes(self) -> list[dict[str, Any]]:
        """The four pod volumes, in OUR_VOLUMES order."""
        kind, first, second = self._workload_api
        if kind == "csi":
            workload_api: dict[str, Any] = {
                "name": names.VOLUME_SPIFFE,
                "csi": {"driver": first, "readOnly": second},
            }
        else:
            workload_api = {"name": names.VOLUME_SPIFFE, "hostPath": {"path": first, "type": second}}
        return [
            {
                "name": names.VOLUME_CREDENTIALS,
                "emptyDir": {"medium": "Memory", "sizeLimit": self._tmpfs_size},
            },
            {
                "name": names.VOLUME_PODINFO,
                "downwardAPI": {
                    "items": [
                        {
                            "path": names.PODINFO_ANNOTATIONS_FILE,
                            "fieldRef": {"fieldPath": "metadata.annotations"},
                        }
                    ]
                },
            },
            workload_api,
            {
                "name": names.VOLUME_SA_TOKEN,
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": names.TOKEN_AUDIENCE,
                                "expirationSeconds": self._token_seconds,
                                "path": names.SIDECAR_TOKEN_FILE,
                            }
                        }
                    ]
                },
            },
        ]

    def proxy_env(self, mount_path: str) -> list[dict[str, Any]]:
        """Agent env for credentials delivered by the sidecar's proxy: a loopback URL and paths only."""
        bundle = f"{mount_path}/{CA_BUNDLE_FILE}"
        return [
            *({"name": name, "value": self._proxy_url} for name in _PROXY_URL_ENV),
            *({"name": name, "value": NO_PROXY} for name in _NO_PROXY_ENV),
            *({"name": name, "value": bundle} for name in _CA_ENV),
        ]

    def sidecar_env(
        self, request: InjectionRequest, mount_path: str, pod_security: dict[str, Any], proxy: bool = False
    ) -> list[dict[str, Any]]:
        """The sidecar's environment: exactly the names in taskcreds.names it reads."""
        env: list[dict[str, Any]] = [
            {"name": names.ENV_DIR, "value": mount_path},
            {"name": names.ENV_TASK, "value": request.task},
            {"name": names.ENV_CREDENTIALS, "value": ",".join(request.credentials)},
        ]
        if request.ttl is not None:
            env.append({"name": names.ENV_TTL, "value": _duration_text(request.ttl)})
        if request.max_duration is not None:
            env.append({"name": names.ENV_MAX_DURATION, "value": _duration_text(request.max_duration)})
        env += [
            {"name": names.ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": names.ENV_POD_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": names.ENV_POD_UID, "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": names.ENV_BROKER_URL, "value": self._broker_url},
            {"name": names.ENV_BROKER_SPIFFE_ID, "value": self._broker_id},
            {"name": names.ENV_TOKEN_FILE, "value": _TOKEN_FILE},
            {"name": names.ENV_PODINFO_DIR, "value": names.SIDECAR_PODINFO_PATH},
            {"name": names.ENV_LISTEN_LOCAL, "value": self._listen_local},
            {"name": names.ENV_LISTEN_PROBE, "value": self._listen_probe},
        ]
        if proxy:
            env.append({"name": ENV_LISTEN_PROXY, "value": self._listen_proxy})
        fs_group = pod_security.get("fsGroup")
        if fs_group is not None:
            env.append({"name": names.ENV_FS_GROUP, "value": str(fs_group)})
        env.append({"name": names.ENV_SPIFFE_SOCKET, "value": self._spiffe_socket})
        return env

    def sidecar(
        self, request: InjectionRequest, mount_path: str, pod_security: dict[str, Any], proxy: bool = False
    ) -> dict[str, Any]:
        """The native sidecar (an init container with restartPolicy Always), hardened.

        It runs as its own uid 65532 whenever the agent can read the 0440 files through the pod's
        fsGroup (or the pod names no non-root user); only a pod with a non-root runAsUser and no
        fsGroup makes it run as that uid, the one way the agent can read the files (:func:`own_user`).
        """
        security: dict[str, Any] = {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        if own_user(pod_security):
            security["runAsUser"] = SIDECAR_RUN_AS_USER
        port = self._probe_port
        return {
            "name": names.SIDECAR_CONTAINER,
            "image": self._image,
            "imagePullPolicy": self._pull_policy,
            "command": ["taskcreds-sidecar"],
            "restartPolicy": "Always",
            "ports": [{"name": _PROBE_PORT_NAME, "containerPort": port, "protocol": "TCP"}],
            "env": self.sidecar_env(request, mount_path, pod_security, proxy),
            "resources": {key: dict(value) for key, value in self._resources},
            "volumeMounts": [
                {"name": names.VOLUME_CREDENTIALS, "mountPath": mount_path},
                {"name": names.VOLUME_PODINFO, "mountPath": names.SIDECAR_PODINFO_PATH, "readOnly": True},
                {"name": names.VOLUME_SPIFFE, "mountPath": names.SIDECAR_SPIFFE_PATH, "readOnly": True},
                {"name": names.VOLUME_SA_TOKEN, "mountPath": names.SIDECAR_TOKEN_PATH, "readOnly": True},
            ],
            # the next init container (a git clone, say) starts only once every credential is on disk
            "startupProbe": {
                "httpGet": {"path": "/readyz", "port": port},
                "periodSeconds": 1,
                "timeoutSeconds": 1,
                "failureThreshold": 120,
            },
            "livenessProbe": {
                "httpGet": {"path": "/healthz", "port": port},
                "periodSeconds": 10,
                "timeoutSeconds": 2,
                "failureThreshold": 3,
            },
            "securityContext": security,
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }

    def volumes_json(self, present: set[Any] | frozenset[Any] = frozenset()) -> list[orjson.Fragment]:
        """:meth:`volumes` as ready JSON, leaving out the names in ``present``."""
        if not present:
            return list(self._volume_json.values())
        return [fragment for name, fragment in self._volume_json.items() if name not in present]

    def sidecar_json(
        self, request: InjectionRequest, mount_path: str, pod_security: dict[str, Any], proxy: bool = False
    ) -> orjson.Fragment:
        """:meth:`sidecar` as ready JSON: the same bytes ``orjson.dumps`` gives for the dict.

        For callers that only serialize the patch (the webhook): joining precomputed bytes with the
        few per-pod values skips building and then encoding ~60 dicts and lists per pod.
        """
        if self._json is None:
            return orjson.Fragment(orjson.dumps(self.sidecar(request, mount_path, pod_security, proxy)))
        return self._json.sidecar(request, mount_path, pod_security, proxy)


_MARKS: Final = ("@@taskcreds-env@@", "@@taskcreds-mount@@", "@@taskcreds-security@@")


def _value_prefix(name: str) -> bytes:
    """``{"name":<name>,"value":`` as orjson writes it: an env entry up to its value."""
    whole = orjson.dumps({"name": name, "value": ""})
    return whole[: -len(b'""}')]


class _SidecarJSON:
    """The sidecar container's JSON, cut once per config at the places that vary per pod.

    Every constant byte is taken from ``orjson.dumps`` of what :meth:`Pieces.sidecar` builds, so
    the two renderings cannot drift apart (and tests compare them over generated pods).
    """

    __slots__ = (
        "_head",
        "_mount",
        "_tail",
        "_end",
        "_own_user",
        "_pod_user",
        "_dir",
        "_task",
        "_creds",
        "_ttl",
        "_max",
        "_fixed",
        "_proxy",
        "_fs_group",
        "_socket",
    )

    def __init__(self, pieces: Pieces) -> None:
        sample = InjectionRequest(task="t", credentials=("c",))
        template = pieces.sidecar(sample, "/", {})
        # the two securityContexts: with the sidecar's own runAsUser, and running as the pod's user
        self._own_user = orjson.dumps(template["securityContext"])
        self._pod_user = orjson.dumps(pieces.sidecar(sample, "/", {"runAsUser": 1})["securityContext"])
        env = template["env"]
        template["env"], template["volumeMounts"][0]["mountPath"], template["securityContext"] = _MARKS
        encoded = orjson.dumps(template)
        cuts = []
        for mark in _MARKS:
            quoted = orjson.dumps(mark)
            if encoded.count(quoted) != 1:  # a config value holding a mark: cannot happen, but be sure
                raise ValueError(f"cannot cut the sidecar JSON: {mark!r} occurs in the configuration")
            cuts.append(quoted)
        self._head, rest = encoded.split(cuts[0])
        self._mount, rest = rest.split(cuts[1])
        self._tail, self._end = rest.split(cuts[2])
        # env: [dir, task, credentials, (ttl), (max duration), fixed..., (fsGroup), socket]
        if [e["name"] for e in env[:3]] != [names.ENV_DIR, names.ENV_TASK, names.ENV_CREDENTIALS] or (
            env[-1]["name"] != names.ENV_SPIFFE_SOCKET
        ):
            raise RuntimeError("the sidecar env layout changed; update _SidecarJSON with it")
        self._dir = b"[" + _value_prefix(names.ENV_DIR)
        self._task = b"}," + _value_prefix(names.ENV_TASK)
        self._creds = b"}," + _value_prefix(names.ENV_CREDENTIALS)
        self._ttl = b"}," + _value_prefix(names.ENV_TTL)
        self._max = b"}," + _value_prefix(names.ENV_MAX_DURATION)
        self._fixed = b"}," + b",".join(orjson.dumps(e) for e in env[3:-1])
        self._proxy = b"," + orjson.dumps({"name": ENV_LISTEN_PROXY, "value": pieces._listen_proxy})
        self._fs_group = b"," + _value_prefix(names.ENV_FS_GROUP)
        self._socket = b"," + orjson.dumps(env[-1]) + b"]"

    def sidecar(
        self, request: InjectionRequest, mount_path: str, pod_security: dict[str, Any], proxy: bool = False
    ) -> orjson.Fragment:
        dumps = orjson.dumps
        mount = dumps(mount_path)
        parts = [
            self._head,
            self._dir,
            mount,
            self._task,
            dumps(request.task),
            self._creds,
            dumps(",".join(request.credentials)),
        ]
        if request.ttl is not None:
            parts += (self._ttl, dumps(_duration_text(request.ttl)))
        if request.max_duration is not None:
            parts += (self._max, dumps(_duration_text(request.max_duration)))
        parts.append(self._fixed)
        if proxy:
            parts.append(self._proxy)
        fs_group = pod_security.get("fsGroup")
        if fs_group is not None:
            parts += (self._fs_group, dumps(str(fs_group)), b"}")
        security = self._own_user if own_user(pod_security) else self._pod_user
        parts += (self._socket, self._mount, mount, self._tail, security, self._end)
        return orjson.Fragment(b"".join(parts))


_PIECES: dict[int, Pieces] = {}
_MAX_CONFIGS: Final = 32  # a process sees one config, a few more in tests


def pieces(config: InjectionConfig) -> Pieces:
    """The :class:`Pieces` of ``config``, built on first use (configs are frozen, so never stale)."""
    found = _PIECES.get(id(config))
    if found is not None and found.config is config:
        return found
    if len(_PIECES) >= _MAX_CONFIGS:
        _PIECES.clear()
    made = _PIECES[id(config)] = Pieces(config)
    return made


def volumes(config: InjectionConfig) -> list[dict[str, Any]]:
    """The four pod volumes, in OUR_VOLUMES order."""
    return pieces(config).volumes()


def sidecar_env(
    config: InjectionConfig,
    request: InjectionRequest,
    mount_path: str,
    pod_security: dict[str, Any],
    proxy: bool = False,
) -> list[dict[str, Any]]:
    """The sidecar's environment: exactly the names in taskcreds.names it reads."""
    return pieces(config).sidecar_env(request, mount_path, pod_security, proxy)


def sidecar_container(
    config: InjectionConfig,
    request: InjectionRequest,
    mount_path: str,
    pod_security: dict[str, Any],
    proxy: bool = False,
) -> dict[str, Any]:
    """The native sidecar container for ``config`` (see :meth:`Pieces.sidecar`)."""
    return pieces(config).sidecar(request, mount_path, pod_security, proxy)


def agent_mount(mount_path: str) -> dict[str, Any]:
    """The read-only credentials mount for a selected container."""
    return {"name": names.VOLUME_CREDENTIALS, "mountPath": mount_path, "readOnly": True}


def agent_env(mount_path: str) -> dict[str, Any]:
    """``TASKCREDS_DIR=<mount path>``: a path, never a value."""
    return {"name": names.ENV_DIR, "value": mount_path}
