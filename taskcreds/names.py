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
    "completed",
    "failed",
    "cancelled",
    "deadline",
    "pod_deleted",
    "expired",
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
SIDECAR_PROXY_PORT: Final = 9092  # 127.0.0.1: the egress proxy, when a credential has delivery proxy
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

# --- the sidecar's environment, set by the webhook (the sidecar reads exactly these) --------
ENV_TASK: Final = "TASKCREDS_TASK"
ENV_CREDENTIALS: Final = "TASKCREDS_CREDENTIALS"  # comma-separated, as in the annotation
ENV_TTL: Final = "TASKCREDS_TTL"  # Go duration; absent: the source's default
ENV_MAX_DURATION: Final = "TASKCREDS_MAX_DURATION"  # Go duration; absent: none
ENV_POD_NAME: Final = "TASKCREDS_POD_NAME"  # fieldRef metadata.name
ENV_POD_NAMESPACE: Final = "TASKCREDS_POD_NAMESPACE"  # fieldRef metadata.namespace
ENV_POD_UID: Final = "TASKCREDS_POD_UID"  # fieldRef metadata.uid
ENV_BROKER_URL: Final = "TASKCREDS_BROKER_URL"
ENV_BROKER_SPIFFE_ID: Final = "TASKCREDS_BROKER_SPIFFE_ID"
ENV_TOKEN_FILE: Final = "TASKCREDS_TOKEN_FILE"  # the pod-bound projected SA token (audience taskcreds)
ENV_PODINFO_DIR: Final = "TASKCREDS_PODINFO_DIR"  # downward-API volume: file "annotations"
ENV_LISTEN_LOCAL: Final = "TASKCREDS_LISTEN_LOCAL"  # default 127.0.0.1:9091
ENV_LISTEN_PROBE: Final = "TASKCREDS_LISTEN_PROBE"  # default 0.0.0.0:9090
ENV_LISTEN_PROXY: Final = "TASKCREDS_LISTEN_PROXY"  # default 127.0.0.1:9092 (egress proxy, docs/proxy.md)
#: test/dev hooks only (never set by the webhook): a PEM file the proxy trusts for upstreams instead
#: of the system roots, and ``host=ip:port[,host=ip:port]`` upstream address overrides
ENV_PROXY_UPSTREAM_CA: Final = "TASKCREDS_PROXY_UPSTREAM_CA"
ENV_PROXY_RESOLVE: Final = "TASKCREDS_PROXY_RESOLVE"
ENV_FS_GROUP: Final = "TASKCREDS_FS_GROUP"  # the pod's fsGroup, when it has one
ENV_LOG_LEVEL: Final = "TASKCREDS_LOG_LEVEL"
#: "1" lets the SPIFFE development authority start (taskcreds demo and tests only)
ENV_DEV_AUTHORITY: Final = "TASKCREDS_DEV_AUTHORITY"
ENV_SPIFFE_SOCKET: Final = "SPIFFE_ENDPOINT_SOCKET"  # unix:///spiffe-workload-api/<socket file>

SIDECAR_PODINFO_PATH: Final = "/etc/taskcreds/podinfo"
SIDECAR_TOKEN_PATH: Final = "/var/run/secrets/taskcreds"
SIDECAR_TOKEN_FILE: Final = "token"
SIDECAR_SPIFFE_PATH: Final = "/spiffe-workload-api"
PODINFO_ANNOTATIONS_FILE: Final = "annotations"

# --- the operator's environment (the chart sets these) ---------------------------------------
ENV_CONFIG_FILE: Final = "TASKCREDS_CONFIG"  # injection config YAML (ConfigMap), see operator/config.py
ENV_OPERATOR_NAMESPACE: Final = "TASKCREDS_NAMESPACE"
ENV_DRAIN_SECONDS: Final = "TASKCREDS_DRAIN_SECONDS"  # seconds serving on after SIGTERM (default 5)
ENV_WEBHOOK_LISTEN: Final = "TASKCREDS_WEBHOOK_LISTEN"  # default 0.0.0.0:8443
ENV_BROKER_LISTEN: Final = "TASKCREDS_BROKER_LISTEN"  # default 0.0.0.0:8444
ENV_METRICS_LISTEN: Final = "TASKCREDS_METRICS_LISTEN"  # default 0.0.0.0:8080 (/metrics, /healthz)
ENV_WEBHOOK_CONFIGURATION: Final = "TASKCREDS_WEBHOOK_CONFIGURATION"  # MutatingWebhookConfiguration name
ENV_WEBHOOK_SERVICE: Final = "TASKCREDS_WEBHOOK_SERVICE"  # Service name, for the serving cert's DNS names
ENV_WEBHOOK_SECRET: Final = "TASKCREDS_WEBHOOK_SECRET"  # Secret holding the webhook CA and serving cert
ENV_WEBHOOK_CERT_DIR: Final = "TASKCREDS_WEBHOOK_CERT_DIR"  # set: use tls.crt/tls.key there (cert-manager)
ENV_JWT_SECRET: Final = "TASKCREDS_JWT_SECRET"  # Secret holding the jwt provider's signing keys
ENV_JWT_ISSUER: Final = "TASKCREDS_JWT_ISSUER"
ENV_SPIFFE_ID_TEMPLATE: Final = (
    "TASKCREDS_SPIFFE_ID_TEMPLATE"  # default spiffe://{trust_domain}/ns/{namespace}/sa/{serviceaccount}
)
