#!/usr/bin/env bash
# Makes a development CA and a server certificate for localhost (openssl from Debian).
set -euo pipefail
cd "$(dirname "$0")"
command -v openssl >/dev/null || { echo "openssl is needed: apt-get install openssl" >&2; exit 1; }
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=om-secrets-proxy dev CA" \
  -keyout dev-ca.key -out dev-ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA dev-ca.pem -CAkey dev-ca.key -CAcreateserial -days 825 \
  -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext dev-ca.srl
chmod 600 server.key dev-ca.key
echo "wrote $(pwd)/dev-ca.pem, server.pem, server.key"
