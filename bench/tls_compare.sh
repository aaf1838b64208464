#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/tls_compare.sh: heapd over TLS beside plaintext TCP, in one run (heapd-tls-bench,
# bench/tls_compare.c): small pipelined requests, bulk reads, and new connections per second.
#
#   bench/tls_compare.sh                       # 3 s per workload and transport, 3 rounds
#   BUILD=build-rel DURATION=5 ROUNDS=5 bench/tls_compare.sh
#
# Makes a throw-away CA and server certificate with `openssl` (P-256), starts heapd with one
# worker, log level info, listening on 127.0.0.1 port 0 twice (listen and tls.listen; the
# ports are read from its log), and runs heapd-tls-bench against both. Prints its JSON.
set -euo pipefail

BUILD=${BUILD:-build}
DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-3}
. "$(dirname "$0")/lib.sh"
bench_need tls_compare "$BUILD/bin/heapd" "$BUILD/bin/heapd-tls-bench" -- openssl
bench_scratch

ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
# shellcheck disable=SC2086
openssl req -x509 $ec -keyout "$tmp/ca.key" -out "$tmp/ca.crt" -days 1 -subj /CN=bench-ca 2> /dev/null
# shellcheck disable=SC2086
openssl req $ec -keyout "$tmp/s.key" -out "$tmp/s.csr" -subj /CN=localhost 2> /dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > "$tmp/ext"
openssl x509 -req -in "$tmp/s.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
    -out "$tmp/s.crt" -days 1 -extfile "$tmp/ext" 2> /dev/null

cat > "$tmp/heapd.yaml" << EOF2
listen: ["127.0.0.1:0"]
tls: {listen: ["127.0.0.1:0"], cert: "$tmp/s.crt", key: "$tmp/s.key"}
unix_socket: ""
http: []
log_level: info
workers: 1
EOF2
"$BUILD/bin/heapd" --config "$tmp/heapd.yaml" 2> "$tmp/heapd.log" &
hpid=$!
pids+=($hpid)
until grep -qs ' ready$' "$tmp/heapd.log"; do
    kill -0 "$hpid" 2> /dev/null || { cat "$tmp/heapd.log" >&2; exit 1; }
    sleep 0.05
done
tcp=$(sed -n 's/.*listening on tcp \(127.0.0.1:[0-9]*\).*/\1/p' "$tmp/heapd.log")
tls=$(sed -n 's/.*listening on tls \(127.0.0.1:[0-9]*\).*/\1/p' "$tmp/heapd.log")
"$BUILD/bin/heapd-tls-bench" --tcp "tcp://$tcp" --tls "tls://$tls" --cacert "$tmp/ca.crt" \
    -d "$DURATION" -r "$ROUNDS"
