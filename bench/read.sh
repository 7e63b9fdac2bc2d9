#!/usr/bin/env bash
# Read-path benchmark, one run, on a list of 50 database services (~100 KB):
#   pass-through  - a gateway with no database rule, the same body streamed to a bot;
#   masked        - the full gateway, read as a user (every password masked);
#   resolved      - the full gateway, read as a bot with a warm cache (every password resolved).
# Loads each with wrk on loopback and prints req/s, p50, p99 and the ratios the issue targets.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-16}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin om-secrets-proxy --example om-emulator --example mint-jwt
BIN=target/release/om-secrets-proxy
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }

EMU=$(port); A=$(port); AA=$(port); B=$(port); BA=$(port)
OM_EMULATOR_NO_BENCH_SEED=1 target/release/examples/om-emulator 127.0.0.1:$EMU 2>/dev/null & PIDS+=($!)
wait_port $EMU
mkdir -p $WORK/norules && cp rules/botUser.json $WORK/norules/
cat > $WORK/gw.toml <<TOML
[auth]
public_key_files = ["$PWD/tests/fixtures/jwt/key1.pub.pem"]
TOML
common() { echo OMSP_UPSTREAM=http://127.0.0.1:$EMU OMSP_LOG_LEVEL=warn; }
env $(common) OMSP_LISTEN=127.0.0.1:$A OMSP_ADMIN_LISTEN=127.0.0.1:$AA OMSP_EMBEDDED_PATH=$WORK/a.db \
  $BIN serve --config $WORK/gw.toml 2>$WORK/a.log & PIDS+=($!)
env $(common) OMSP_LISTEN=127.0.0.1:$B OMSP_ADMIN_LISTEN=127.0.0.1:$BA OMSP_EMBEDDED_PATH=$WORK/b.db OMSP_RULES_DIR=$WORK/norules \
  $BIN serve --config $WORK/gw.toml 2>$WORK/b.log & PIDS+=($!)
wait_port $A; wait_port $B
BOT=$(target/release/examples/mint-jwt bot)
USER_TOKEN=$(target/release/examples/mint-jwt user)

# 50 services written through the full gateway: values in its store, references upstream.
python3 - $A <<'PY'
import json, sys, urllib.request
port = sys.argv[1]
for i in range(50):
    body = {"name": f"bench-mysql-{i:03}", "serviceType": "Mysql",
            "description": "A benchmark service with the size of a real one. " * 9,
            "tags": [{"tagFQN": f"Tier.Tier{t}", "source": "Classification", "labelType": "Manual", "state": "Confirmed"} for t in range(8)],
            "connection": {"config": {"type": "Mysql", "scheme": "mysql+pymysql", "username": "openmetadata_user",
                "authType": {"password": f"bench-password-{i}"}, "hostPort": "mysql.internal.example:3306",
                "databaseSchema": "analytics", "supportsMetadataExtraction": True, "supportsDBTExtraction": True,
                "supportsProfiler": True, "supportsQueryComment": True, "connectionOptions": {}, "connectionArguments": {}}}}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/services/databaseServices", data=json.dumps(body).encode(),
                                 method="PUT", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
PY
URL_PATH="/api/v1/services/databaseServices?limit=50"
SIZE=$(curl -s "http://127.0.0.1:$B$URL_PATH" -H "Authorization: Bearer $BOT" | wc -c)
CHECK=$(curl -s "http://127.0.0.1:$A$URL_PATH" -H "Authorization: Bearer $BOT" | grep -o 'bench-password-[0-9]*' | wc -l)
MASKS=$(curl -s "http://127.0.0.1:$A$URL_PATH" -H "Authorization: Bearer $USER_TOKEN" | grep -o '\*\*\*\*\*\*\*\*\*' | wc -l)

run() { # name url token
  wrk -t2 -c$CONNS -d2s -H "Authorization: Bearer $3" "$2" >/dev/null 2>&1 || true
  wrk -t2 -c$CONNS -d$DURATION --latency -H "Authorization: Bearer $3" "$2" > $WORK/$1.txt
  python3 - "$WORK/$1.txt" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v); x = float(m.group(1))
    return x / 1000 if m.group(2) == "us" else x * 1000 if m.group(2) == "s" else x
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1)); p99 = ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
err = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {err.group(1) if err else 0}")
PY
}
PASS=$(run pass "http://127.0.0.1:$B$URL_PATH" "$BOT")
MASKED=$(run masked "http://127.0.0.1:$A$URL_PATH" "$USER_TOKEN")
RESOLVED=$(run resolved "http://127.0.0.1:$A$URL_PATH" "$BOT")
python3 - "$PASS" "$MASKED" "$RESOLVED" "$SIZE" "$CHECK" "$MASKS" "$CONNS" <<'PY'
import sys
p, m, r, size, check, masks, conns = sys.argv[1:]
print(f"\nRead path, GET list of 50 database services ({int(size)/1024:.0f} KB), {conns} connections, wrk -t2")
print(f"(sanity: bot saw {check} resolved passwords, user saw {masks} masks)")
print(f"{'read':<32}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
for name, row in [("pass-through (no rules)", p), ("masked (user)", m), ("resolved (bot, warm cache)", r)]:
    rps, p50, p99, e = row.split()
    print(f"{name:<32}{float(rps):>9.0f}{float(p50):>9.3f}{float(p99):>9.3f}{e:>9}")
fp, fm, fr = float(p.split()[0]), float(m.split()[0]), float(r.split()[0])
print(f"\nmasked / pass-through = {fm/fp:.2f}x (target >= 0.6x)")
print(f"resolved / masked     = {fr/fm:.2f}x (target >= 0.8x)")
PY
