"""One builder per piece the webhook adds (CONTRACT.md section 2): volumes, sidecar, agent mount/env.

Each returns fresh dicts (never shared with the pod or with another call), so a caller may
mutate a patch value freely. Plain literals, no copying or pydantic: this runs on every admission.
"""

from __future__ import annotations

from typing import Any, Final

from taskcreds.operator.annotations import InjectionRequest, go_duration
from taskcreds.operator.config import InjectionConfig

from taskcreds import names

__all__ = [
    "OUR_VOLUMES",
    "SIDECAR_RUN_AS_USER",
    "volumes",
    "sidecar_container",
    "sidecar_env",
    "agent_mount",
    "agent_env",
]

#: the uid the sidecar runs as when the pod names none (the distroless "nonroot" user)
SIDECAR_RUN_AS_USER: Final = 65532
OUR_VOLUMES: Final[tuple[str, ...]] = (
    names.VOLUME_CREDENTIALS,
    names.VOLUME_PODINFO,
    names.VOLUME_SPIFFE,
    names.VOLUME_SA_TOKEN,
)
_PROBE_PORT_NAME: Final = "tc-probe"


def volumes(config: InjectionConfig) -> list[dict[str, Any]]:
    """The four pod volumes, in OUR_VOLUMES order."""
    spiffe = config.spiffe
    if spiffe.socket_source == "csi":
        workload_api: dict[str, Any] = {
            "name": names.VOLUME_SPIFFE,
            "csi": {"driver": names.SPIFFE_CSI_DRIVER, "readOnly": True},
        }
    else:
        workload_api = {
            "name": names.VOLUME_SPIFFE,
            "hostPath": {"path": spiffe.host_path, "type": "Directory"},
        }
    return [
        {
            "name": names.VOLUME_CREDENTIALS,
            "emptyDir": {"medium": "Memory", "sizeLimit": config.injection.tmpfs_size_limit},
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
                            "expirationSeconds": config.injection.token_expiration_seconds,
                            "path": names.SIDECAR_TOKEN_FILE,
                        }
                    }
                ]
            },
        },
    ]


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def sidecar_env(
    config: InjectionConfig, request: InjectionRequest, mount_path: str, pod_security: dict[str, Any]
) -> list[dict[str, Any]]:
    """The sidecar's environment: exactly the names in taskcreds.names it reads."""
    env: list[dict[str, Any]] = [
        {"name": names.ENV_DIR, "value": mount_path},
        {"name": names.ENV_TASK, "value": request.task},
        {"name": names.ENV_CREDENTIALS, "value": ",".join(request.credentials)},
    ]
    if request.ttl is not None:
        env.append({"name": names.ENV_TTL, "value": go_duration(request.ttl)})
    if request.max_duration is not None:
        env.append({"name": names.ENV_MAX_DURATION, "value": go_duration(request.max_duration)})
    env += [
        _field_env(names.ENV_POD_NAME, "metadata.name"),
        _field_env(names.ENV_POD_NAMESPACE, "metadata.namespace"),
        _field_env(names.ENV_POD_UID, "metadata.uid"),
        {"name": names.ENV_BROKER_URL, "value": config.broker.url},
        {"name": names.ENV_BROKER_SPIFFE_ID, "value": config.broker.spiffe_id},
        {"name": names.ENV_TOKEN_FILE, "value": f"{names.SIDECAR_TOKEN_PATH}/{names.SIDECAR_TOKEN_FILE}"},
        {"name": names.ENV_PODINFO_DIR, "value": names.SIDECAR_PODINFO_PATH},
        {"name": names.ENV_LISTEN_LOCAL, "value": f"127.0.0.1:{config.sidecar.local_port}"},
        {"name": names.ENV_LISTEN_PROBE, "value": f"0.0.0.0:{config.sidecar.probe_port}"},
    ]
    fs_group = pod_security.get("fsGroup")
    if fs_group is not None:
        env.append({"name": names.ENV_FS_GROUP, "value": str(fs_group)})
    env.append(
        {
            "name": names.ENV_SPIFFE_SOCKET,
            "value": f"unix://{names.SIDECAR_SPIFFE_PATH}/{config.spiffe.socket_file}",
        }
    )
    return env


def sidecar_container(
    config: InjectionConfig, request: InjectionRequest, mount_path: str, pod_security: dict[str, Any]
) -> dict[str, Any]:
    """The native sidecar (an init container with restartPolicy Always), hardened.

    It runs as the pod's runAsUser when the pod sets a non-root one, so the agent (same uid) can
    read the 0440 files; otherwise as 65532, and the files' group is the pod's fsGroup.
    """
    side = config.sidecar
    security: dict[str, Any] = {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod_user = pod_security.get("runAsUser")
    if not pod_user:  # absent or root: the sidecar never runs as root
        security["runAsUser"] = SIDECAR_RUN_AS_USER
    resources = {key: dict(value) for key, value in side.resources.as_dict.items()}
    return {
        "name": names.SIDECAR_CONTAINER,
        "image": side.image,
        "imagePullPolicy": side.image_pull_policy,
        "command": ["taskcreds-sidecar"],
        "restartPolicy": "Always",
        "ports": [{"name": _PROBE_PORT_NAME, "containerPort": side.probe_port, "protocol": "TCP"}],
        "env": sidecar_env(config, request, mount_path, pod_security),
        "resources": resources,
        "volumeMounts": [
            {"name": names.VOLUME_CREDENTIALS, "mountPath": mount_path},
            {"name": names.VOLUME_PODINFO, "mountPath": names.SIDECAR_PODINFO_PATH, "readOnly": True},
            {"name": names.VOLUME_SPIFFE, "mountPath": names.SIDECAR_SPIFFE_PATH, "readOnly": True},
            {"name": names.VOLUME_SA_TOKEN, "mountPath": names.SIDECAR_TOKEN_PATH, "readOnly": True},
        ],
        # the next init container (a git clone, say) starts only once every credential is on disk
        "startupProbe": {
            "httpGet": {"path": "/readyz", "port": side.probe_port},
            "periodSeconds": 1,
            "timeoutSeconds": 1,
            "failureThreshold": 120,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": side.probe_port},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "securityContext": security,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def agent_mount(mount_path: str) -> dict[str, Any]:
    """The read-only credentials mount for a selected container."""
    return {"name": names.VOLUME_CREDENTIALS, "mountPath": mount_path, "readOnly": True}


def agent_env(mount_path: str) -> dict[str, Any]:
    """``TASKCREDS_DIR=<mount path>``: a path, never a value."""
    return {"name": names.ENV_DIR, "value": mount_path}
