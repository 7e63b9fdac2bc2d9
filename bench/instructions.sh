#!/usr/bin/env bash
# Instructions per pass-through request, counted by callgrind (deterministic, so it works on a
# busy machine where req/s does not): the bare hyper proxy (examples/bare-proxy.rs, the HTTP
# stack's floor) against the gateway, plain and with an RS256 `Authorization: Bearer` JWT (a
# user's: the mask policy, so the JSON safety net runs) on every request.
#
# The JWT row is compared with the bare proxy forwarding the same header (the HTTP stack's
# floor for that request). Each proxy runs under `valgrind --tool=callgrind` in front of nginx serving a static 2 KB JSON
# (the shared benchmark's upstream; the emulator when nginx is missing). A fixed client sends
# WARM requests, the counters are zeroed, N more requests go through on CONNS keep-alive
# connections and the counters are dumped: instructions / N is everything the proxy process
# executed per request (user space: hyper, tokio, the gateway, malloc; not the kernel).
#
#   bench/instructions.sh   Env: N (20000), WARM (2000), CONNS (32), BIN (gateway binary),
#                           KEEP (a directory to keep the profiles in, for callgrind_annotate),
#                           ROWS (which of "bare gateway jwt" to measure; all by default)
# Neither proxy logs requests (the gateway runs with OMSP_LOG_LEVEL=warn), as in the shared script.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
WARM=${WARM:-2000}
CONNS=${CONNS:-32}
ROWS=${ROWS:-bare gateway jwt}
command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 1; }
cargo build --release --quiet --bin om-secrets-proxy --example bare-proxy --example om-emulator --example mint-jwt
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/om-secrets-proxy}
BARE=${BARE:-${CARGO_TARGET_DIR:-target}/release/examples/bare-proxy}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/up.pid" ] && kill -QUIT "$(cat "$WORK/up.pid")" 2>/dev/null || true
  sleep 0.3; rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_get() { for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$1$2" && return 0; sleep 0.1; done; return 1; }

UP=$(port)
if command -v nginx >/dev/null; then
  TARGET=/api/v1/tables/sample
  mkdir -p "$WORK/www/api/v1/tables" "$WORK/www/api/v1/system/config" "$WORK/tmp"
  SAMPLE=$(ls ../shared/bench/service.json ../../shared/bench/service.json 2>/dev/null | head -1 || true)
  [ -n "$SAMPLE" ] && cp "$SAMPLE" "$WORK/www/api/v1/tables/sample" \
    || python3 -c 'import json; print(json.dumps({"name": "x" * 2000}))' > "$WORK/www/api/v1/tables/sample"
  cp tests/fixtures/jwt/jwks.json "$WORK/www/api/v1/system/config/jwks"
  chmod -R a+rX "$WORK"
  cat > "$WORK/up.conf" <<NG
worker_processes 1; pid $WORK/up.pid; error_log $WORK/tmp/err.log warn; events { worker_connections 8192; }
http { access_log off; sendfile on; tcp_nodelay on; keepalive_requests 1000000; default_type application/json;
  client_body_temp_path $WORK/tmp/b; proxy_temp_path $WORK/tmp/p; fastcgi_temp_path $WORK/tmp/f; uwsgi_temp_path $WORK/tmp/w; scgi_temp_path $WORK/tmp/s;
  server { listen 127.0.0.1:$UP backlog=4096; root $WORK/www; } }
NG
  nginx -c "$WORK/up.conf" -p "$WORK" 2>/dev/null
  UPSTREAM_KIND="nginx, static $(stat -c %s "$WORK/www/api/v1/tables/sample") B JSON"
else
  TARGET=/__test/json2k
  ${CARGO_TARGET_DIR:-target}/release/examples/om-emulator 127.0.0.1:$UP 2>/dev/null & PIDS+=($!)
  UPSTREAM_KIND="om-emulator $TARGET (nginx not installed)"
fi
wait_get $UP $TARGET

# The client: CONNS keep-alive connections, N requests in all, every answer read and checked.
cat > "$WORK/load.py" <<'PY'
import asyncio, sys
async def conn(port, path, n, extra):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()
    bad = 0
    for _ in range(n):
        w.write(req)
        head = await r.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await r.readexactly(length)
        bad += head[9:12] != b"200"
    w.close()
    return bad
async def main():
    port, path, n, c = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    extra = "".join(h + "\r\n" for h in sys.argv[5:])
    shares = [n // c + (1 if i < n % c else 0) for i in range(c)]
    bad = sum(await asyncio.gather(*(conn(port, path, k, extra) for k in shares if k)))
    if bad:
        sys.exit(f"{bad} answers were not 200")
asyncio.run(main())
PY

# measure NAME PORT [HEADER] -- CMD...: prints instructions per request.
measure() {
  local name=$1 port=$2 header=$3; shift 4
  valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.cg" "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!; PIDS+=($pid)
  wait_get "$port" "$TARGET" || { echo "$name did not start" >&2; tail -5 "$WORK/$name.log" >&2; kill $pid; exit 1; }
  python3 "$WORK/load.py" "$port" "$TARGET" "$WARM" "$CONNS" ${header:+"$header"}
  callgrind_control -z $pid >/dev/null 2>&1
  python3 "$WORK/load.py" "$port" "$TARGET" "$N" "$CONNS" ${header:+"$header"}
  callgrind_control -d $pid >/dev/null 2>&1
  kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
  local ir
  ir=$(awk '/^summary:/ {print $2}' "$WORK/$name.cg".1)
  [ -n "${KEEP:-}" ] && cp "$WORK/$name.cg.1" "$KEEP/$name.callgrind"
  echo $((ir / N))
}

gateway_config() { # PORT ADMIN_PORT
  cat > "$WORK/gw$1.toml" <<TOML
[server]
listen = "127.0.0.1:$1"
admin_listen = "127.0.0.1:$2"
[upstream]
url = "http://127.0.0.1:$UP"
[secrets_manager]
provider = "embedded"
[secrets_manager.parameters]
path = "$WORK/secrets$1.db"
[auth]
public_key_files = ["$PWD/tests/fixtures/jwt/key1.pub.pem"]
TOML
  echo "$WORK/gw$1.toml"
}

TOKEN=$(${CARGO_TARGET_DIR:-target}/release/examples/mint-jwt user)
P1=$(port); P2=$(port); A2=$(port); P3=$(port); A3=$(port)
B=0; BJ=0; G=0; J=0
has() { [[ " $ROWS " == *" $1 "* ]]; }
has bare && B=$(measure bare $P1 "" -- "$BARE" 127.0.0.1:$P1 http://127.0.0.1:$UP)
P4=$(port)
has jwt && has bare && BJ=$(measure bare-jwt $P4 "Authorization: Bearer $TOKEN" -- "$BARE" 127.0.0.1:$P4 http://127.0.0.1:$UP)
has gateway && G=$(OMSP_LOG_LEVEL=warn measure gateway $P2 "" -- "$BIN" serve --config "$(gateway_config $P2 $A2)")
has jwt && J=$(OMSP_LOG_LEVEL=warn measure gateway-jwt $P3 "Authorization: Bearer $TOKEN" -- "$BIN" serve --config "$(gateway_config $P3 $A3)")

python3 - "$B" "$G" "$J" "$BJ" "$N" "$CONNS" "$UPSTREAM_KIND" <<'PY'
import sys
b, g, j, bj = (int(x) for x in sys.argv[1:5])
n, conns, up = sys.argv[5:]
print(f"\nInstructions per pass-through GET (callgrind; {n} requests on {conns} connections; upstream: {up})")
print(f"{'proxy':<38}{'instr/request':>14}{'bare/this':>11}")
rows = [("bare hyper proxy", b, b), ("gateway", g, b),
        ("bare hyper proxy + Bearer JWT", bj, bj), ("gateway + Bearer RS256 JWT (user)", j, bj or b)]
for name, v, ref in rows:
    if v:
        print(f"{name:<38}{v:>14,}" + (f"{ref / v:>10.2f}x" if ref else ""))
pairs = [(k, ref, v) for k, ref, v in [("plain", b, g), ("with JWT, vs the bare proxy with it", bj, j)] if ref and v]
if pairs:
    print("\nratio bare/gateway = " + ", ".join(f"{ref / v:.3f} ({k})" for k, ref, v in pairs) + "; goal >= 0.93")
PY
