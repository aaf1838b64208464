#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/daemon_callgrind.sh: heapd's user-space instructions per request, repeatable where CPU
# time is not. heapd (one worker, log level warn) runs under callgrind counting inside
# conn.c:on_read only (framing, dispatch, the engine, the replay window, the writes' calls; not
# libuv's loop), serving heapd-bench --unix -c 50 -P 16 for DURATION seconds; prints the requests, the
# instructions and their ratio, and keeps the profile for callgrind_annotate.
#
#   bench/daemon_callgrind.sh                    # build/, 4 s, profile in a temporary directory
#   BUILD=build-rel DURATION=10 OUT=/tmp/cg bench/daemon_callgrind.sh
#   callgrind_annotate --inclusive=yes /tmp/cg/cg.out    # per function
#
# What does not grow with the requests (connections, sessions, the replay windows growing to
# their size) is in the count too; compare builds at the same duration, or take the difference
# of two durations over the difference of their requests. Under valgrind requests run about 20
# times slower, so what runs on timers (the sessions' statistics every 10 ms) weighs more per
# request here than it does at full speed.
set -euo pipefail

BUILD=${BUILD:-build}
D=${DURATION:-4}
. "$(dirname "$0")/lib.sh"
bench_need daemon_callgrind "$BUILD/bin/heapd" "$BUILD/bin/heapd-bench" -- valgrind callgrind_annotate python3
bench_scratch
out=${OUT:-$tmp}
mkdir -p "$out"
rm -f "$out/cg.out"
cat > "$tmp/heapd.yaml" << EOF2
listen: []
unix_socket: "$tmp/heapd.sock"
http: []
log_level: warn
workers: 1
EOF2
valgrind --tool=callgrind --toggle-collect=on_read --callgrind-out-file="$out/cg.out" \
    "$BUILD/bin/heapd" --config "$tmp/heapd.yaml" 2> "$tmp/valgrind.log" &
vpid=$!
pids+=("$vpid")
until [ -S "$tmp/heapd.sock" ]; do
    kill -0 "$vpid" 2> /dev/null || { cat "$tmp/valgrind.log" >&2; exit 1; }
    sleep 0.2
done
n=$("$BUILD/bin/heapd-bench" --unix "$tmp/heapd.sock" -c 50 -P 16 -d "$D" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
kill -INT "$vpid"
wait "$vpid" || true
total=$(callgrind_annotate "$out/cg.out" 2> /dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
python3 -c "import sys; n, t = int(sys.argv[1]), int(sys.argv[2]); print('heapd-bench -c 50 -P 16 -d %s: %d requests, %d instructions in on_read, %.1f per request' % (sys.argv[3], n, t, t / n))" "$n" "$total" "$D"
[ -n "${OUT:-}" ] && echo "profile: $out/cg.out"
exit 0
