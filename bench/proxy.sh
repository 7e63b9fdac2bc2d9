#!/usr/bin/env bash
# Pass-through benchmark: the emulator upstream directly, through nginx proxy_pass (with
# upstream keepalive, when Debian's nginx is installed) and through the gateway, each loaded
# with wrk on loopback in one run; then the gateway's peak RSS with 1,000 idle keep-alive
# client connections open. Prints a table with ratios against nginx measured in the same run.
#
#   bench/proxy.sh            (needs wrk: apt-get install wrk nginx)
# Env: DURATION (default 10s), CONNS (32), PATH_UNDER_TEST (/__test/json2k, a ~2 KB JSON GET)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
TARGET=${PATH_UNDER_TEST:-/__test/json2k}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --quiet --bin om-secrets-proxy --example om-emulator --example bare-proxy
BIN=target/release/om-secrets-proxy
EMU=target/release/examples/om-emulator
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }

EMU_PORT=$(port); GW_PORT=$(port); ADMIN_PORT=$(port); NGINX_PORT=$(port); BARE_PORT=$(port)
$EMU 127.0.0.1:$EMU_PORT 2>/dev/null & EMU_PID=$!; PIDS+=($EMU_PID)
wait_port $EMU_PORT
OMSP_LISTEN=127.0.0.1:$GW_PORT OMSP_ADMIN_LISTEN=127.0.0.1:$ADMIN_PORT OMSP_UPSTREAM=http://127.0.0.1:$EMU_PORT \
  OMSP_LOG_LEVEL=warn OMSP_EMBEDDED_PATH=$WORK/secrets.db $BIN serve 2>$WORK/gw.log & GW_PID=$!; PIDS+=($GW_PID)
wait_port $GW_PORT
# The floor of the gateway's HTTP stack: hyper server + pooled client, nothing in between.
target/release/examples/bare-proxy 127.0.0.1:$BARE_PORT http://127.0.0.1:$EMU_PORT & BARE_PID=$!; PIDS+=($BARE_PID)
wait_port $BARE_PORT

HAVE_NGINX=0
if command -v nginx >/dev/null; then
  HAVE_NGINX=1
  mkdir -p $WORK/nginx
  cat > $WORK/nginx/nginx.conf <<NGX
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx; uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  upstream om { server 127.0.0.1:$EMU_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://om; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX
  nginx -p $WORK/nginx -c $WORK/nginx/nginx.conf & NGINX_PID=$!; PIDS+=($NGINX_PID)
  wait_port $NGINX_PORT
fi

# CPU time (clock ticks, user and system) of a process and its children, and of the whole machine.
ticks() { local u=0 s=0 a b; for q in $1 $(pgrep -P $1 || true); do
  read -r a b < <(awk '{print $14" "$15}' /proc/$q/stat); u=$((u+a)); s=$((s+b)); done; echo "$u $s"; }
busy() { awk '/^cpu / {print $2+$3+$4+$7+$8}' /proc/stat; }

run() { # name url pid -> "rps p50_ms p99_ms non2xx proxy_user_us proxy_sys_us machine_us" (CPU per request)
  wrk -t2 -c$CONNS -d2s "$2" >/dev/null 2>&1 || true   # warm-up
  local before after m0 m1
  before=$(ticks $3); m0=$(busy)
  wrk -t2 -c$CONNS -d$DURATION --latency "$2" > $WORK/$1.txt
  after=$(ticks $3); m1=$(busy)
  python3 - "$WORK/$1.txt" "$before" "$after" "$m0" "$m1" "$(getconf CLK_TCK)" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
(u0, s0), (u1, s1) = (map(int, x.split()) for x in sys.argv[2:4])
m0, m1, hz = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v); x = float(m.group(1))
    return x / 1000 if m.group(2) == "us" else x * 1000 if m.group(2) == "s" else x
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1)); p99 = ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
err = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
n = int(re.search(r"(\d+) requests in", t).group(1))
us = lambda ticks: ticks * 1e6 / hz / n
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {err.group(1) if err else 0} {us(u1-u0):.1f} {us(s1-s0):.1f} {us(m1-m0):.1f}")
PY
}

DIRECT=$(run direct http://127.0.0.1:$EMU_PORT$TARGET $EMU_PID)
GW=$(run gateway http://127.0.0.1:$GW_PORT$TARGET $GW_PID)
BARE=$(run bare http://127.0.0.1:$BARE_PORT$TARGET $BARE_PID)
if [ $HAVE_NGINX = 1 ]; then NGINX=$(run nginx http://127.0.0.1:$NGINX_PORT$TARGET $NGINX_PID); else NGINX=""; fi

# Peak RSS with 1,000 idle keep-alive connections (each has made one request).
python3 - $GW_PORT <<'PY' &
import socket, sys, time
port = int(sys.argv[1]); socks = []
for i in range(1000):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /api/v1/system/version HTTP/1.1\r\nHost: x\r\n\r\n")
    s.recv(4096); socks.append(s)
open("/tmp/omsp-idle-ready", "w").write("ok")
time.sleep(6)
PY
IDLE_PID=$!
for _ in $(seq 1 100); do [ -f /tmp/omsp-idle-ready ] && break; sleep 0.1; done
sleep 1
RSS_KB=$(awk '/VmHWM/ {print $2}' /proc/$GW_PID/status)
OPEN=$(curl -s http://127.0.0.1:$ADMIN_PORT/metrics | awk '/^omsp_open_connections / {print $2}')
rm -f /tmp/omsp-idle-ready; wait $IDLE_PID || true

python3 - "$DIRECT" "$GW" "$NGINX" "$RSS_KB" "$OPEN" "$CONNS" "$TARGET" "$BARE" <<'PY'
import sys
direct, gw, ngx, rss, open_conns, conns, target, bare = sys.argv[1:]
rows = [("direct (emulator)", direct), ("nginx proxy_pass", ngx), ("bare hyper proxy", bare),
        ("om-secrets-proxy", gw)]
print(f"\nPass-through, GET {target}, {conns} connections, wrk -t2")
print(f"{'target':<20}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>9}{'vs nginx':>10}"
      f"{'proxy CPU us/req':>20}{'machine us/req':>16}")
base = float(ngx.split()[0]) if ngx else None
for name, r in rows:
    if not r:
        print(f"{name:<20}{'(nginx not installed)':>40}"); continue
    rps, p50, p99, err, pu, ps, mach = r.split()
    ratio = f"{float(rps)/base:.2f}x" if base else "-"
    cpu = "-" if name.startswith("direct") else f"{pu} usr + {ps} sys"
    print(f"{name:<20}{float(rps):>10.0f}{float(p50):>10.3f}{float(p99):>10.3f}{err:>9}{ratio:>10}{cpu:>20}{mach:>16}")
if base:
    g, n = gw.split(), ngx.split()
    print(f"\ngateway/nginx throughput: {float(g[0])/float(n[0]):.2f}x (target >= 1.2x)")
    print(f"gateway p99 {g[2]} ms vs nginx p99 {n[2]} ms (target: gateway <= nginx)")
    # With both cores saturated, throughput is 1 / (machine CPU per request). A proxy that spent
    # no user-space CPU at all would still pay its kernel (socket) share.
    bound = float(n[6]) / (float(g[6]) - float(g[4]))
    print(f"upper bound for any proxy with the gateway's kernel cost and zero user-space CPU: {bound:.2f}x nginx")
print(f"gateway peak RSS with {open_conns} idle keep-alive connections: {int(rss)/1024:.1f} MiB (target <= 64 MiB)")
PY
