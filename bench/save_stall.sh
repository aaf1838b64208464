#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# What a background save costs the other sessions of its worker (bench/save_stall.c): starts
# build/bin/heapd with one worker and a data_dir in a temporary directory, runs
# heapd-save-stall against it, stops it.
#   bench/save_stall.sh [OBJECTS]        (default 4000000)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/bin}
tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
cat > "$tmp/heapd.yaml" <<CFG
listen: []
unix_socket: $tmp/heapd.sock
workers: 1
data_dir: $tmp/data
snapshot_interval: 0
snapshot_on_detach: true
admin_tokens: ["bench"]
session_max_objects: 0
session_max_bytes: 0
log_level: warn
CFG
"$BIN/heapd" --config "$tmp/heapd.yaml" &
pid=$!
for _ in $(seq 100); do [ -S "$tmp/heapd.sock" ] && break; sleep 0.05; done
"$BIN/heapd-save-stall" "unix:$tmp/heapd.sock" bench "${1:-4000000}"
