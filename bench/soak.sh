#!/usr/bin/env bash
# Soak, run by hand (not in CI): 100,000 mixed requests at 256 connections through one
# release gateway with OpenBao (`bao server -dev`, started here) in front of the emulator
# (examples/soak.rs: bot and user reads of single services and lists, creates and updates
# with passwords, pass-through GETs). Prints the figures and PASS/FAIL: zero failed requests,
# zero plaintext upstream, every bot read right, RSS at the end within 10% of RSS after the
# first 10,000 requests.
#   bench/soak.sh [REQUESTS] [CONNECTIONS]     (default 100000 256)
# The bao binary: $BAO_BIN, else build/venv/bin/bao (./scripts/test.sh installs it), else PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${1:-100000}
CONNS=${2:-256}
cargo build --release --quiet --bin om-secrets-proxy --example soak
TARGET=${CARGO_TARGET_DIR:-target}
BAO=${BAO_BIN:-$( [ -x build/venv/bin/bao ] && echo build/venv/bin/bao || command -v bao || true)}
[ -n "$BAO" ] || { echo "no bao binary: set BAO_BIN or run ./scripts/test.sh once" >&2; exit 1; }
# The 256 connections and the gateway's upstream and store pools need file descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d)
BAO_PID=
cleanup() { [ -n "$BAO_PID" ] && kill "$BAO_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TOKEN=soak-root
HOME=$WORK "$BAO" server -dev -dev-root-token-id=$TOKEN -dev-listen-address=127.0.0.1:$PORT > "$WORK/bao.log" 2>&1 &
BAO_PID=$!
for _ in $(seq 1 100); do
  curl -fs -o /dev/null "http://127.0.0.1:$PORT/v1/sys/health" && break
  sleep 0.2
done
"$TARGET/release/examples/soak" "$TARGET/release/om-secrets-proxy" "http://127.0.0.1:$PORT" "$TOKEN" "$REQUESTS" "$CONNS"
