#!/usr/bin/env bash
# Write-path benchmark, one run: PUT (create-or-update) of database services through the
# full gateway with the embedded store, against pass-through of the same bodies through a
# gateway with no database rule. Bodies carry 1 and then 10 secret fields; prints req/s,
# the ratio to pass-through, and the cost of each extra secret field.
#   bench/write.sh [CONNECTIONS]   (default 8; or CONNS=N)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${1:-${CONNS:-8}}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin om-secrets-proxy --example om-emulator
OUT=${CARGO_TARGET_DIR:-target}/release
BIN=${BIN:-$OUT/om-secrets-proxy}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
EMU=$(port); A=$(port); AA=$(port); B=$(port); BA=$(port)
OM_EMULATOR_NO_BENCH_SEED=1 $OUT/examples/om-emulator 127.0.0.1:$EMU 2>/dev/null & PIDS+=($!)
wait_port $EMU
mkdir -p $WORK/norules && cp rules/botUser.json $WORK/norules/
OMSP_UPSTREAM=http://127.0.0.1:$EMU OMSP_LOG_LEVEL=warn OMSP_LISTEN=127.0.0.1:$A OMSP_ADMIN_LISTEN=127.0.0.1:$AA \
  OMSP_EMBEDDED_PATH=$WORK/a.db $BIN serve 2>$WORK/a.log & PIDS+=($!)
OMSP_UPSTREAM=http://127.0.0.1:$EMU OMSP_LOG_LEVEL=warn OMSP_LISTEN=127.0.0.1:$B OMSP_ADMIN_LISTEN=127.0.0.1:$BA \
  OMSP_EMBEDDED_PATH=$WORK/b.db OMSP_RULES_DIR=$WORK/norules $BIN serve 2>$WORK/b.log & PIDS+=($!)
wait_port $A; wait_port $B

script() { # fields
  cat > $WORK/put$1.lua <<LUA
local n = 0
local fields = $1
request = function()
  n = n + 1
  local extra = ""
  -- Key names the safety net treats as secrets: each is one more secret field.
  local names = {"password", "secret", "token", "apiKey", "privateKey", "clientSecret", "sslKey", "credentials", "passwd"}
  for i = 2, fields do extra = extra .. string.format(',"%s":"value-%d-%d"', names[i - 1], i, n) end
  local body = string.format('{"name":"bench-%d","serviceType":"Mysql","description":"write benchmark","connection":{"config":{"type":"Mysql","username":"u","hostPort":"db:3306","authType":{"password":"pw-%d"},"connectionOptions":{"k":"v"%s}}}}', n % 100, n, extra)
  return wrk.format("PUT", "/api/v1/services/databaseServices", {["Content-Type"] = "application/json"}, body)
end
LUA
}
script 1; script 10
run() { # name port fields
  wrk -t2 -c$CONNS -d2s -s $WORK/put$3.lua "http://127.0.0.1:$2" >/dev/null 2>&1 || true
  wrk -t2 -c$CONNS -d$DURATION --latency -s $WORK/put$3.lua "http://127.0.0.1:$2" > $WORK/$1.txt
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
P1=$(run p1 $B 1); G1=$(run g1 $A 1); P10=$(run p10 $B 10); G10=$(run g10 $A 10)
STORED=$(python3 -c "import urllib.request,json; print(json.load(urllib.request.urlopen('http://127.0.0.1:$EMU/api/v1/services/databaseServices/name/bench-7'))['connection']['config']['authType']['password'])")
python3 - "$P1" "$G1" "$P10" "$G10" "$CONNS" "$STORED" <<'PY'
import sys
p1, g1, p10, g10, conns, stored = sys.argv[1:]
print(f"\nWrite path, PUT database services, {conns} connections, wrk -t2 (upstream got: {stored})")
print(f"{'write':<40}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
rows = [("pass-through, 1 secret field", p1), ("gateway + embedded store, 1 field", g1),
        ("pass-through, 10 secret fields", p10), ("gateway + embedded store, 10 fields", g10)]
for name, r in rows:
    rps, a, b, e = r.split()
    print(f"{name:<40}{float(rps):>9.0f}{float(a):>9.3f}{float(b):>9.3f}{e:>9}")
f = lambda r: float(r.split()[0])
print(f"\ngateway/pass-through: {f(g1)/f(p1):.2f}x with 1 field, {f(g10)/f(p10):.2f}x with 10 fields")
per_req = lambda r: 1e6 / f(r)
cost = ((per_req(g10) - per_req(p10)) - (per_req(g1) - per_req(p1))) / 9
print(f"cost per extra secret field: {cost:.1f} us of throughput time per request")
PY
