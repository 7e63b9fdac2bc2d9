#!/usr/bin/env bash
# Instructions per write, counted by callgrind (deterministic, so it works on a busy machine
# where req/s does not): the PUT of bench/write.sh (a database service with one secret field,
# a new password on every request) through the full gateway with the embedded store, against
# the same PUT through a gateway with no database rule (pass-through). The upstream is the
# emulator, in its own process: only the gateway's own work is counted.
#
# A fixed client sends WARM requests, the counters are zeroed, N more requests go through on
# CONNS keep-alive connections and the counters are dumped: instructions / N is everything the
# gateway process executed per request (user space, every thread: the committer too).
#
#   bench/write_instructions.sh   Env: N (2000), WARM (300), CONNS (8), FIELDS (1),
#                                 BIN (gateway binary), EMU (emulator binary),
#                                 KEEP (a directory to keep the profiles in, for callgrind_annotate),
#                                 ROWS (which of "pass ruled" to measure; both by default)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
WARM=${WARM:-300}
CONNS=${CONNS:-8}
FIELDS=${FIELDS:-1}
ROWS=${ROWS:-pass ruled}
command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 1; }
cargo build --release --quiet --bin om-secrets-proxy --example om-emulator
OUT=${CARGO_TARGET_DIR:-target}/release
BIN=${BIN:-$OUT/om-secrets-proxy}
EMU_BIN=${EMU:-$OUT/examples/om-emulator}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }

EMU=$(port)
OM_EMULATOR_NO_BENCH_SEED=1 "$EMU_BIN" 127.0.0.1:$EMU 2>/dev/null & PIDS+=($!)
wait_port $EMU
mkdir -p "$WORK/norules" && cp rules/botUser.json "$WORK/norules/"

# The client: CONNS keep-alive connections, N PUTs in all, every answer read and checked.
cat > "$WORK/load.py" <<'PY'
import asyncio, sys
NAMES = ["password", "secret", "token", "apiKey", "privateKey", "clientSecret", "sslKey", "credentials", "passwd"]
def body(n, fields):
    extra = "".join(f',"{NAMES[i - 2]}":"value-{i}-{n}"' for i in range(2, fields + 1))
    return ('{"name":"bench-%d","serviceType":"Mysql","description":"write benchmark","connection":{"config":'
            '{"type":"Mysql","username":"u","hostPort":"db:3306","authType":{"password":"pw-%d"},'
            '"connectionOptions":{"k":"v"%s}}}}' % (n % 100, n, extra)).encode()
async def conn(port, start, n, step, fields):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    bad = 0
    for i in range(n):
        b = body(start + i * step, fields)
        w.write(b"PUT /api/v1/services/databaseServices HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(b) + b)
        head = await r.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await r.readexactly(length)
        bad += head[9:12] not in (b"200", b"201")
    w.close()
    return bad
async def main():
    port, n, c, fields, seed = (int(x) for x in sys.argv[1:6])
    shares = [n // c + (1 if i < n % c else 0) for i in range(c)]
    bad = sum(await asyncio.gather(*(conn(port, seed + i, k, c, fields) for i, k in enumerate(shares) if k)))
    if bad:
        sys.exit(f"{bad} answers were not 200/201")
asyncio.run(main())
PY

# measure NAME [ENV=VALUE...]: prints instructions per request.
measure() {
  local name=$1; shift
  local p a; p=$(port); a=$(port)
  env OMSP_UPSTREAM=http://127.0.0.1:$EMU OMSP_LOG_LEVEL=warn OMSP_LISTEN=127.0.0.1:$p \
    OMSP_ADMIN_LISTEN=127.0.0.1:$a OMSP_EMBEDDED_PATH="$WORK/$name.db" "$@" \
    valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.cg" "$BIN" serve >"$WORK/$name.log" 2>&1 &
  local pid=$!; PIDS+=($pid)
  wait_port "$p" || { echo "$name did not start" >&2; tail -5 "$WORK/$name.log" >&2; exit 1; }
  python3 "$WORK/load.py" "$p" "$WARM" "$CONNS" "$FIELDS" 0
  callgrind_control -z $pid >/dev/null 2>&1
  python3 "$WORK/load.py" "$p" "$N" "$CONNS" "$FIELDS" "$WARM"
  callgrind_control -d $pid >/dev/null 2>&1
  kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
  local ir
  ir=$(awk '/^summary:/ {s += $2} END {printf "%d\n", s}' "$WORK/$name.cg".*)
  [ -n "${KEEP:-}" ] && cat "$WORK/$name.cg".1 > "$KEEP/$name.callgrind"
  echo $((ir / N))
}

P=0; R=0
has() { [[ " $ROWS " == *" $1 "* ]]; }
has pass && P=$(measure pass OMSP_RULES_DIR="$WORK/norules")
has ruled && R=$(measure ruled)

python3 - "$P" "$R" "$N" "$CONNS" "$FIELDS" <<'PY'
import sys
p, r = int(sys.argv[1]), int(sys.argv[2])
n, conns, fields = sys.argv[3:]
print(f"\nInstructions per PUT (callgrind; {n} requests on {conns} connections; {fields} secret field(s); upstream: om-emulator)")
print(f"{'gateway':<40}{'instr/request':>14}")
for name, v in [("pass-through (no database rule)", p), ("ruled, embedded store", r)]:
    if v:
        print(f"{name:<40}{v:>14,}")
if p and r:
    print(f"\nratio pass-through/ruled = {p / r:.3f}")
PY
