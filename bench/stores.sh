#!/usr/bin/env bash
# Starts moto from build/venv (installing it if needed) and runs the store benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=build/venv
[ -x $VENV/bin/moto_server ] || { python3 -m venv $VENV; $VENV/bin/pip install --quiet 'moto[server]'; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$VENV/bin/moto_server -H 127.0.0.1 -p $PORT > /dev/null 2>&1 & MOTO=$!
trap 'kill $MOTO' EXIT
for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
OMSP_TEST_MOTO_URL=http://127.0.0.1:$PORT cargo bench --bench stores
