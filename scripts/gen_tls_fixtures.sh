#!/bin/sh
# Writes the TLS fixtures of tests/store/service_test.cc: a test CA, a server
# certificate for localhost / 127.0.0.1 signed by it, and a second CA the
# server's certificate does not chain to. Valid for 100 years; test use only.
set -eu
out="${1:-$(dirname "$0")/../tests/fixtures/tls}"
mkdir -p "$out"
cd "$out"
days=36500
openssl req -x509 -newkey rsa:2048 -nodes -days $days -subj "/CN=tessera test CA" \
  -keyout ca.key -out ca.pem
openssl req -x509 -newkey rsa:2048 -nodes -days $days -subj "/CN=tessera other CA" \
  -keyout other_ca.key -out other_ca.pem
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days $days \
  -extfile server.ext -out server.pem
rm -f server.csr server.ext ca.srl ca.key other_ca.key
