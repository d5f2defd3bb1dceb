#!/usr/bin/env bash
# Instructions per proxied request with TLS to the upstream, counted by callgrind: waypost (a
# service with `tls: {ca}`) or HAProxy (`server … ssl verify required`, one thread,
# `http-reuse always`) in front of one HTTPS upstream, loaded over plaintext keep-alive
# (ab -n N -c 8 -k, a bodiless GET answered with 13 bytes). The HTTPS upstream is an HAProxy
# terminating TLS in front of examples/upstream.rs; neither is counted, only the proxy under
# valgrind. Certificates are made with the openssl CLI in a temp dir. Ports 28080/28090 (proxy),
# 29443 (TLS upstream), 29001 (plain upstream behind it).
#   usage: bench/callgrind-tls.sh [N] [waypost|haproxy]   (needs valgrind, ab, haproxy, openssl)
#   WAYPOST=path/to/waypost bench/callgrind-tls.sh …   profiles another waypost build
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/callgrind-count.sh
N="${1:-10000}"
TARGET="${2:-waypost}"
for tool in valgrind ab haproxy openssl; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y valgrind apache2-utils haproxy openssl" >&2; exit 1; }
done
cargo build -q --release --bin waypost --example upstream
out=target/callgrind/tls-$TARGET
rm -rf "$out" && mkdir -p "$out"
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

# A CA and a certificate for the name `echo` (the service name waypost verifies by default).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=bench-ca \
  -keyout "$tmp/ca.key" -out "$tmp/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=echo \
  -keyout "$tmp/echo.key" -out "$tmp/echo.csr" 2>/dev/null
printf 'subjectAltName=DNS:echo\n' >"$tmp/san"
openssl x509 -req -in "$tmp/echo.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
  -days 30 -extfile "$tmp/san" -out "$tmp/echo.pem" 2>/dev/null
cat "$tmp/echo.pem" "$tmp/echo.key" >"$tmp/echo-bundle.pem"

target/release/examples/upstream --listen 127.0.0.1:29001 --name echo-1 >"$out/upstream.log" 2>&1 &
pids+=($!)
cat >"$tmp/front.cfg" <<EOF
global
    nbthread 1
defaults
    mode http
    option http-keep-alive
    timeout connect 1s
    timeout client 30s
    timeout server 30s
frontend tls_in
    bind 127.0.0.1:29443 ssl crt $tmp/echo-bundle.pem
    default_backend plain
backend plain
    http-reuse always
    server s1 127.0.0.1:29001
EOF
haproxy -db -f "$tmp/front.cfg" >"$out/front.log" 2>&1 &
pids+=($!)

cat >"$tmp/waypost.yaml" <<EOF
listen: 127.0.0.1:28080
admin: {listen: 127.0.0.1:28090}
log: {level: warn}
services:
  echo:
    tls: {ca: $tmp/ca.pem}
    resolver:
      static:
        instances:
          - address: 127.0.0.1:29443
EOF
cat >"$tmp/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
frontend echo_in
    bind 127.0.0.1:28080
    default_backend echo
backend echo
    server s1 127.0.0.1:29443 ssl verify required ca-file $tmp/ca.pem sni str(echo) verifyhost echo
EOF
case "$TARGET" in
  waypost) proxy=("${WAYPOST:-target/release/waypost}" run --config "$tmp/waypost.yaml") ;;
  haproxy) proxy=(haproxy -db -f "$tmp/haproxy.cfg") ;;
  *) echo "unknown target $TARGET (waypost or haproxy)" >&2; exit 2 ;;
esac
sleep 0.3
load=(http://127.0.0.1:28080/)
callgrind_count "$TARGET (GET over TLS to the upstream)" "${proxy[@]}"
