#!/usr/bin/env bash
# One command for the end-to-end path on a machine with a container engine:
#   kind cluster (kind-config.yaml) -> image built and loaded -> SPIRE (server, agent, CSI driver)
#   -> OpenBao (dev mode) -> the chart -> helm test -> pytest tests/e2e
# KEEP_CLUSTER=1 leaves the cluster up; CLUSTER_NAME, IMAGE and SPIRE_CHART_VERSION override defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER_NAME=${CLUSTER_NAME:-taskcreds}
IMAGE=${IMAGE:-taskcreds:e2e}
NAMESPACE=taskcreds-system
SPIRE_NAMESPACE=spire-mgmt
SPIRE_CHART_VERSION=${SPIRE_CHART_VERSION:-0.24.1}
TRUST_DOMAIN=cluster.local
HELM=${HELM:-$( [ -x .venv/bin/helm ] && echo .venv/bin/helm || echo helm )}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
ENGINE=${ENGINE:-docker}

say() { printf '\n==> %s\n' "$*"; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "kind-e2e: '$1' is required but not on PATH" >&2; exit 2; }; }
need kind; need kubectl; need "$ENGINE"; [ -x "$HELM" ] || need "$HELM"

export KUBECONFIG=${KUBECONFIG_E2E:-$(mktemp -t taskcreds-kubeconfig.XXXXXX)}
cleanup() {
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    echo "kind-e2e: cluster '$CLUSTER_NAME' kept; KUBECONFIG=$KUBECONFIG"
  else
    kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
    rm -f "$KUBECONFIG"
  fi
}
trap cleanup EXIT

say "kind cluster $CLUSTER_NAME"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  kind export kubeconfig --name "$CLUSTER_NAME"
else
  kind create cluster --name "$CLUSTER_NAME" --config kind-config.yaml --wait 120s
fi

say "image $IMAGE"
"$ENGINE" build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER_NAME"

say "SPIRE (server, agent, SPIFFE CSI driver) from the spiffe helm charts, version $SPIRE_CHART_VERSION"
"$HELM" repo add spiffe https://spiffe.github.io/helm-charts-hardened/ --force-update >/dev/null
"$HELM" upgrade --install spire-crds spiffe/spire-crds --namespace "$SPIRE_NAMESPACE" --create-namespace \
  --wait --timeout 5m
# the default ClusterSPIFFEID gives every pod spiffe://<td>/ns/<ns>/sa/<sa>: the chart's idTemplate
"$HELM" upgrade --install spire spiffe/spire --version "$SPIRE_CHART_VERSION" --namespace "$SPIRE_NAMESPACE" \
  --set global.spire.trustDomain="$TRUST_DOMAIN" \
  --set global.spire.clusterName="$CLUSTER_NAME" \
  --wait --timeout 10m

say "OpenBao (dev mode)"
# only the OpenBao objects: the CredentialSource in that file needs the chart's CRDs and namespace agents
kubectl apply -f examples/credentialsources/openbao.yaml --selector app.kubernetes.io/name=openbao
kubectl -n openbao rollout status deploy/openbao --timeout=180s

say "taskcreds chart"
repo=${IMAGE%:*}; tag=${IMAGE##*:}
"$HELM" upgrade --install taskcreds charts/taskcreds --namespace "$NAMESPACE" --create-namespace \
  --set image.repository="$repo" --set image.tag="$tag" --set image.pullPolicy=Never \
  --set spiffe.trustDomain="$TRUST_DOMAIN" --wait --timeout 5m
"$HELM" test taskcreds --namespace "$NAMESPACE" --logs --timeout 3m

say "pytest tests/e2e"
TASKCREDS_E2E_INSTALLED=1 TASKCREDS_E2E_IMAGE="$IMAGE" "$PYTHON" -m pytest tests/e2e -v -p no:cacheprovider
