"""Every name other programs rely on (CONTRACT.md), in one place.

Labels, annotations, CRD coordinates, volume/container names, env vars and ports.
Metric names live in :mod:`taskcreds.metrics`. Change CONTRACT.md before changing any value here.
"""

from __future__ import annotations

from typing import Final, Literal

PREFIX: Final = "taskcreds.io"

# --- opting a pod in (CONTRACT.md section 1) ---------------------------------------------
LABEL_INJECT: Final = f"{PREFIX}/inject"
ANNOTATION_TASK: Final = f"{PREFIX}/task"
ANNOTATION_CREDENTIALS: Final = f"{PREFIX}/credentials"
ANNOTATION_TASK_STATUS: Final = f"{PREFIX}/task-status"
ANNOTATION_TTL: Final = f"{PREFIX}/ttl"
ANNOTATION_MAX_DURATION: Final = f"{PREFIX}/max-duration"
ANNOTATION_CONTAINERS: Final = f"{PREFIX}/containers"
ANNOTATION_MOUNT_PATH: Final = f"{PREFIX}/mount-path"
#: written by the webhook: the injector version; its presence stops a second injection
ANNOTATION_INJECTED: Final = f"{PREFIX}/injected"
#: issue 8 (proxy delivery): deny-by-default egress for the pod
ANNOTATION_EGRESS: Final = f"{PREFIX}/egress"

TASK_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

TaskStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
TASK_STATUSES: Final[tuple[str, ...]] = ("pending", "running", "completed", "failed", "cancelled")
TERMINAL_STATUSES: Final[frozenset[str]] = frozenset({"completed", "failed", "cancelled"})
DEFAULT_TASK_STATUS: Final = "running"

# --- revocation reasons (CONTRACT.md section 6) ---------------------------------------------
RevokeReason = Literal["completed", "failed", "cancelled", "deadline", "pod_deleted", "expired"]
REVOKE_REASONS: Final[tuple[str, ...]] = (
    "completed", "failed", "cancelled", "deadline", "pod_deleted", "expired",
)

# --- what the webhook adds (CONTRACT.md section 2) ------------------------------------------
VOLUME_CREDENTIALS: Final = "taskcreds"
VOLUME_PODINFO: Final = "taskcreds-podinfo"
VOLUME_SPIFFE: Final = "spiffe-workload-api"
VOLUME_SA_TOKEN: Final = "taskcreds-token"
SIDECAR_CONTAINER: Final = "taskcreds-sidecar"
SPIFFE_CSI_DRIVER: Final = "csi.spiffe.io"
TOKEN_AUDIENCE: Final = "taskcreds"
DEFAULT_MOUNT_PATH: Final = "/run/taskcreds"

ENV_DIR: Final = "TASKCREDS_DIR"

# --- sidecar (CONTRACT.md section 4) --------------------------------------------------------
SIDECAR_PROBE_PORT: Final = 9090  # all interfaces: /healthz, /readyz, /metrics only
SIDECAR_LOCAL_PORT: Final = 9091  # 127.0.0.1: adds POST /v1/redact
MANIFEST_FILE: Final = "taskcreds.json"
DATA_DIR_LINK: Final = "..data"
FILE_MODE: Final = 0o440

# --- CRDs (CONTRACT.md section 3) -----------------------------------------------------------
CRD_GROUP: Final = PREFIX
CRD_VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{CRD_GROUP}/{CRD_VERSION}"
KIND_CREDENTIAL_SOURCE: Final = "CredentialSource"
KIND_CLUSTER_CREDENTIAL_SOURCE: Final = "ClusterCredentialSource"
KIND_TASK_LEASE: Final = "TaskLease"
PLURAL_CREDENTIAL_SOURCES: Final = "credentialsources"
PLURAL_CLUSTER_CREDENTIAL_SOURCES: Final = "clustercredentialsources"
PLURAL_TASK_LEASES: Final = "taskleases"
FINALIZER_REVOKE: Final = f"{PREFIX}/revoke"
PROVIDERS: Final[tuple[str, ...]] = ("jwt", "vault", "github-app", "kubernetes-token", "secret")
LeasePhase = Literal["Active", "Revoking", "Revoked"]
