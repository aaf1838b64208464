#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/echo_compare.sh: heapd's CPU per request beside a trivial epoll server's
# (heapd-echo-server) answering the same frames from the same client, in one run.
#
#   bench/echo_compare.sh                          # -c 50 -P 16, 5 s each, 3 rounds
#   BUILD=build-rel CONNS=50 DEPTH=16 DURATION=5 ROUNDS=3 bench/echo_compare.sh
#
# Both servers listen on Unix sockets in a temporary directory; heapd runs one worker (the
# echo server is one thread), log level warn. Each round runs heapd-bench's default mix
# (alloc+decref, incref+decref, set_slot) against heapd, then against the echo server (the
# order alternates by round), and reads the server's CPU time (utime + stime,
# /proc/PID/stat) before and after. CPU per request = that CPU / the requests heapd-bench
# completed. The echo server parses each frame in place, reads the request id and answers a
# canned success: what any server must spend on reading, framing and writing.
set -euo pipefail

BUILD=${BUILD:-build}
CONNS=${CONNS:-50}
DEPTH=${DEPTH:-16}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
for tool in heapd heapd-bench heapd-echo-server; do
    [ -x "$BUILD/bin/$tool" ] || { echo "echo_compare: $BUILD/bin/$tool not built" >&2; exit 1; }
done

tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2> /dev/null || true
        wait "$pid" 2> /dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat > "$tmp/heapd.yaml" << EOF2
listen: []
unix_socket: "$tmp/heapd.sock"
http: []
log_level: warn
workers: 1
EOF2
"$BUILD/bin/heapd" --config "$tmp/heapd.yaml" 2> "$tmp/heapd.log" &
hpid=$!
pids+=($hpid)
"$BUILD/bin/heapd-echo-server" "$tmp/echo.sock" &
epid=$!
pids+=($epid)
until [ -S "$tmp/heapd.sock" ] && [ -S "$tmp/echo.sock" ]; do sleep 0.05; done

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
run() { # pid socket -> "cpu_ticks completed"
    local t0 t1 js
    t0=$(ticks "$1")
    js=$("$BUILD/bin/heapd-bench" --unix "$2" -c "$CONNS" -P "$DEPTH" -d "$DURATION")
    t1=$(ticks "$1")
    echo "$((t1 - t0)) $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "$js")"
}

rows=()
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then
        h=$(run "$hpid" "$tmp/heapd.sock"); e=$(run "$epid" "$tmp/echo.sock")
    else
        e=$(run "$epid" "$tmp/echo.sock"); h=$(run "$hpid" "$tmp/heapd.sock")
    fi
    rows+=("$r $h $e")
done

python3 - "$(getconf CLK_TCK)" "$CONNS" "$DEPTH" "$DURATION" "${rows[@]}" << 'EOF2'
import sys
hz, conns, depth, dur, rows = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
print("heapd-bench -c %s -P %s -d %s against each server; CPU = utime + stime of the server"
      % (conns, depth, dur))
print()
print("| round | heapd requests | heapd CPU ns/request | echo requests | echo CPU ns/request | ratio |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
ratios = []
for row in rows:
    r, ht, hn, et, en = row.split()
    h = int(ht) / hz * 1e9 / int(hn)
    e = int(et) / hz * 1e9 / int(en)
    ratios.append(h / e)
    print("| %s | %s | %.0f | %s | %.0f | %.2fx |" % (r, hn, h, en, e, h / e))
ratios.sort()
print()
print("median heapd / echo: %.2fx (target: at most 1.15x): %s"
      % (ratios[len(ratios) // 2], "met" if ratios[len(ratios) // 2] <= 1.15 else "NOT met"))
EOF2
