#!/usr/bin/env bash
# Toolkit benchmark, one run: entities per second of `migrate` and then `audit` over the
# emulator seeded with N entities (six kinds and connection types, one secret each: 7 in 10 in
# clear, 3 in 10 as Fernet tokens), with the embedded store and with Secrets Manager on moto.
# Prints a table with ratios (the machine may be shared: compare ratios, not absolutes).
#
# Each migrated entity is one store transaction (owner marker + value: two writes) and one
# JSON Patch upstream. AWS writes go through the store's token bucket, set here to its
# maximum, secrets_manager.write_rate_per_sec = 50 (the default is 10): the moto migrate
# figure is that budget, not moto's speed.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}
TARGET=${CARGO_TARGET_DIR:-target}
VENV=build/venv
[ -x $VENV/bin/moto_server ] || { python3 -m venv $VENV; $VENV/bin/pip install --quiet 'moto[server]'; }
cargo build --release --quiet --bin om-secrets-proxy --example om-emulator
WORK=$(mktemp -d)
# Private copies: a shared target directory may be rebuilt by someone else mid-run.
cp "$TARGET/release/om-secrets-proxy" "$TARGET/release/examples/om-emulator" "$WORK/"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
KEY=$("$WORK/om-secrets-proxy" fernet generate-key)
MOTO=$(port)
$VENV/bin/moto_server -H 127.0.0.1 -p "$MOTO" > /dev/null 2>&1 & PIDS+=($!)
wait_port "$MOTO"

config() { # file emulator-port store-toml
  cat > "$1" <<EOF
[upstream]
url = "http://127.0.0.1:$2"
service_token = "bench"
[rules]
dir = "$PWD/rules"
[fernet]
key = "$KEY"
$3
EOF
}

timed() { # label command...: seconds on stdout, the command's output in $WORK/label.out
  local label=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  OMSP_LOG_LEVEL=warn "$@" > "$WORK/$label.out" 2> "$WORK/$label.err" || true
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}

measure() { # store-name store-toml: prints "entities migrate-seconds audit-seconds"
  local emu pid
  emu=$(port)
  OM_EMULATOR_NO_BENCH_SEED=1 OM_EMULATOR_FLEET=$N OM_EMULATOR_FLEET_KEY=$KEY \
    "$WORK/om-emulator" "127.0.0.1:$emu" 2> "$WORK/$1-emu.log" & pid=$!
  PIDS+=($pid)
  for _ in $(seq 1 200); do grep -q seeded "$WORK/$1-emu.log" 2>/dev/null && break; sleep 0.05; done
  config "$WORK/$1.toml" "$emu" "$2"
  local m a
  m=$(timed "$1-migrate" "$WORK/om-secrets-proxy" migrate --config "$WORK/$1.toml")
  a=$(timed "$1-audit" "$WORK/om-secrets-proxy" audit --config "$WORK/$1.toml")
  kill "$pid" 2>/dev/null || true
  grep -q " 0 failed" "$WORK/$1-migrate.out" || { echo "migrate with $1 failed:" >&2; tail -5 "$WORK/$1-migrate.out" "$WORK/$1-migrate.err" >&2; exit 1; }
  grep -q "; clean" "$WORK/$1-audit.out" || { echo "audit with $1 is not clean:" >&2; tail -3 "$WORK/$1-audit.out" >&2; exit 1; }
  local n
  n=$(sed -n 's/^migrate: \([0-9]*\) entities read.*/\1/p' "$WORK/$1-migrate.out")
  echo "$n $m $a"
}

EMBEDDED=$(measure embedded "[secrets_manager.parameters]
path = \"$WORK/embedded.db\"")
MOTO_ROW=$(measure moto "[secrets_manager]
provider = \"managed-aws\"
write_rate_per_sec = 50
[secrets_manager.parameters]
region = \"us-east-1\"
access_key_id = \"testing\"
secret_access_key = \"testing\"
endpoint_url = \"http://127.0.0.1:$MOTO\"")

python3 - "$N" "$EMBEDDED" "$MOTO_ROW" <<'PY'
import sys
n, emb, moto = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
def rates(row):
    e, m, a = int(row[0]), float(row[1]), float(row[2])
    return e, m, a, e / m, e / a
E, M = rates(emb), rates(moto)
print(f"\nmigrate then audit, {n} seeded entities with one secret each (plus 13 without), one run")
print(f"{'store':<28}{'command':<10}{'entities':>10}{'seconds':>10}{'entities/s':>12}")
for name, r in (("embedded", E), ("Secrets Manager on moto", M)):
    print(f"{name:<28}{'migrate':<10}{r[0]:>10}{r[1]:>10.2f}{r[3]:>12.0f}")
    print(f"{name:<28}{'audit':<10}{r[0]:>10}{r[2]:>10.2f}{r[4]:>12.0f}")
print(f"\naudit/migrate speed: {E[4]/E[3]:.1f}x embedded, {M[4]/M[3]:.1f}x moto")
print(f"embedded/moto speed: {E[3]/M[3]:.1f}x migrate, {E[4]/M[4]:.1f}x audit")
print("(moto migrate is bound by write_rate_per_sec = 50: two writes per entity)")
PY
