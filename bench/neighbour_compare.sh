#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/neighbour_compare.sh: a light session's ping latency beside a session collecting a
# large heap back to back, on one worker, with long requests off the loop (offload_above as
# shipped) and, as the peer in the same run, with every request on the loop
# (offload_above: 0, heapd before issue 11).
#
#   bench/neighbour_compare.sh                 # 4,000,000 objects, at least 20000 pings per phase
#   BUILD=build OBJECTS=1000000 SAMPLES=5000 bench/neighbour_compare.sh
#
# Each heapd runs on a Unix socket in a temporary directory with `workers: 1`, no object
# limit and 1 GiB per session, started here and stopped on exit; heapd-neighbour-bench
# (bench/neighbour_bench.c) prints the idle and busy figures.
set -euo pipefail

BUILD=${BUILD:-build}
OBJECTS=${OBJECTS:-4000000}
SAMPLES=${SAMPLES:-20000}
HEAPD=$BUILD/bin/heapd
BENCH=$BUILD/bin/heapd-neighbour-bench
. "$(dirname "$0")/lib.sh"
bench_need neighbour_compare "$HEAPD" "$BENCH"
bench_scratch

run() {
    local offload=$1
    rm -f "$tmp/heapd.sock"
    cat > "$tmp/heapd.yaml" <<YAML
listen: []
unix_socket: "$tmp/heapd.sock"
workers: 1
session_max_objects: 0
session_max_bytes: 1GiB
offload_above: $offload
log_level: warn
YAML
    "$HEAPD" --config "$tmp/heapd.yaml" 2> "$tmp/heapd.log" &
    local pid=$!
    pids+=("$pid")
    until [ -S "$tmp/heapd.sock" ]; do sleep 0.05; done # it appears once heapd listens
    echo "== offload_above: $offload"
    "$BENCH" "unix:$tmp/heapd.sock" --objects "$OBJECTS" --samples "$SAMPLES"
    bench_stop "$pid"
}

echo "heapd-neighbour-bench, $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
run "$(awk '/^offload_above:/ { print $2 }' config/heapd.yaml)"
run 0
