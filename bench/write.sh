#!/usr/bin/env bash
# Write-path benchmark, one run: PUT (create-or-update) of database services through the
# full gateway with the embedded store, against pass-through of the same bodies through a
# gateway with no database rule. Bodies carry 1 and then 10 secret fields; prints req/s,
# the ratio to pass-through, and the cost of each extra secret field.
#
# Every measurement starts its own emulator and gateway: the emulator keeps each entity's
# versions and every change event, so an upstream shared by the rows makes a later row pay
# for the earlier rows' history (measured: the emulator's CPU per request grows by about a
# third over two rows). Rows alternate over ROUNDS rounds and the medians are reported, so
# drifting machine load falls on both sides of a ratio.
#   bench/write.sh [CONNECTIONS]   Env: CONNS (8), ROUNDS (3), DURATION (10s), FIELDS ("1 10")
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${1:-${CONNS:-8}}
ROUNDS=${ROUNDS:-3}
FIELDS=${FIELDS:-1 10}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin om-secrets-proxy --example om-emulator
OUT=${CARGO_TARGET_DIR:-target}/release
BIN=${BIN:-$OUT/om-secrets-proxy}
WORK=$(mktemp -d)
PIDS=()
stop_all() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; for p in "${PIDS[@]:-}"; do wait "$p" 2>/dev/null || true; done; PIDS=(); }
cleanup() { stop_all; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
mkdir -p $WORK/norules && cp rules/botUser.json $WORK/norules/

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

# One measurement on a fresh emulator and gateway: prints "req/s p50 p99 non-2xx".
measure() { # kind(pass|gateway) fields round
  local emu gw admin db="$WORK/$1-$2-$3.db" rules=()
  emu=$(port); gw=$(port); admin=$(port)
  OM_EMULATOR_NO_BENCH_SEED=1 $OUT/examples/om-emulator 127.0.0.1:$emu 2>/dev/null & PIDS+=($!)
  wait_port $emu
  [ "$1" = pass ] && rules=(OMSP_RULES_DIR=$WORK/norules)
  env OMSP_UPSTREAM=http://127.0.0.1:$emu OMSP_LOG_LEVEL=warn OMSP_LISTEN=127.0.0.1:$gw \
    OMSP_ADMIN_LISTEN=127.0.0.1:$admin OMSP_EMBEDDED_PATH=$db "${rules[@]}" $BIN serve 2>$WORK/gw.log & PIDS+=($!)
  wait_port $gw
  wrk -t2 -c$CONNS -d2s -s $WORK/put$2.lua "http://127.0.0.1:$gw" >/dev/null 2>&1 || true
  wrk -t2 -c$CONNS -d$DURATION --latency -s $WORK/put$2.lua "http://127.0.0.1:$gw" > $WORK/wrk.txt
  if [ "$1" = gateway ] && [ ! -s $WORK/stored ]; then
    python3 -c "import urllib.request,json; print(json.load(urllib.request.urlopen('http://127.0.0.1:$emu/api/v1/services/databaseServices/name/bench-7'))['connection']['config']['authType']['password'])" > $WORK/stored
  fi
  stop_all
  python3 - "$WORK/wrk.txt" <<'PY'
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

: > $WORK/results
for f in $FIELDS; do
  script $f
  for r in $(seq 1 $ROUNDS); do
    # Alternate which side goes first, so a drift in load does not favour one.
    if [ $((r % 2)) -eq 1 ]; then order="pass gateway"; else order="gateway pass"; fi
    for kind in $order; do echo "$f $kind $(measure $kind $f $r)" >> $WORK/results; done
  done
done
python3 - "$WORK/results" "$CONNS" "$(cat $WORK/stored)" "$ROUNDS" "$DURATION" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
conns, stored, rounds, duration = sys.argv[2:]
print(f"\nWrite path, PUT database services, {conns} connections, wrk -t2, {duration} per round, "
      f"{rounds} rounds, a fresh emulator and gateway per measurement (upstream got: {stored})")
print(f"{'write':<40}{'req/s (median; each round)':>44}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
med = {}
for f in sorted({r[0] for r in rows}, key=int):
    for kind, label in [("pass", f"pass-through, {f} secret field(s)"), ("gateway", f"gateway + embedded store, {f} field(s)")]:
        rs = [r for r in rows if r[0] == f and r[1] == kind]
        rps = [float(r[2]) for r in rs]
        med[(f, kind)] = statistics.median(rps)
        each = ", ".join(f"{x:.0f}" for x in rps)
        print(f"{label:<40}{med[(f, kind)]:>9.0f} ({each:>32}){statistics.median(float(r[3]) for r in rs):>9.3f}"
              f"{statistics.median(float(r[4]) for r in rs):>9.3f}{sum(int(r[5]) for r in rs):>9}")
for f in sorted({r[0] for r in rows}, key=int):
    per_round = [float(g[2]) / float(p[2]) for p, g in zip([r for r in rows if r[0] == f and r[1] == "pass"],
                                                           [r for r in rows if r[0] == f and r[1] == "gateway"])]
    print(f"gateway/pass-through with {f} field(s): {med[(f, 'gateway')] / med[(f, 'pass')]:.2f}x "
          f"(per round: {', '.join(f'{x:.2f}' for x in per_round)})")
fs = sorted({r[0] for r in rows}, key=int)
if len(fs) >= 2:
    a, b = fs[0], fs[-1]
    per_req = lambda k: 1e6 / med[k]
    cost = ((per_req((b, "gateway")) - per_req((b, "pass"))) - (per_req((a, "gateway")) - per_req((a, "pass")))) / (int(b) - int(a))
    print(f"cost per extra secret field: {cost:.1f} us of throughput time per request")
PY
