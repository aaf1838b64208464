#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# observe_cost.sh: what watching requests costs heapd, side by side in one run.
#
#   bench/observe_cost.sh [BUILD_DIR] [ROUNDS] [SECONDS]
#
# Runs heapd-bench against one heapd in three settings, alternated ROUNDS times (default 3) so
# that a noisy machine weighs on all of them alike:
#   off      slowlog_max_len 0 and no monitor: requests are not timed at all
#   slowlog  the default slowlog (128 entries, 10 ms): one coarse clock read per request
#   monitor  the default slowlog and one monitor attached, reading every record
# and prints, for each, the requests per second and the daemon's CPU time per request (user +
# system, from /proc), with the ratio to `off`. The CPU per request is the figure to compare;
# throughput moves with whatever else the machine runs.
set -euo pipefail
BUILD=${1:-build}
ROUNDS=${2:-3}
SECS=${3:-3}
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
SOCK=$DIR/heapd.sock

start_heapd() { # $1: slowlog_max_len
    cat > "$DIR/heapd.yaml" <<EOF
listen: []
unix_socket: "$SOCK"
workers: 1
log_level: warn
slowlog_max_len: $1
EOF
    "$BUILD/bin/heapd" --config "$DIR/heapd.yaml" 2>>"$DIR/heapd.log" &
    HEAPD=$!
    for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$HEAPD/stat"; }

declare -A OPS CPU
for round in $(seq "$ROUNDS"); do
    for mode in off slowlog monitor; do
        start_heapd "$([ "$mode" = off ] && echo 0 || echo 128)"
        MON=""
        if [ "$mode" = monitor ]; then
            "$BUILD/bin/heapctl" --connect "unix:$SOCK" monitor > /dev/null &
            MON=$!
            sleep 0.2
        fi
        t0=$(cpu_ticks)
        out=$("$BUILD/bin/heapd-bench" --unix "$SOCK" -c 4 -P 16 -d "$SECS")
        t1=$(cpu_ticks)
        [ -n "$MON" ] && kill "$MON" && wait "$MON" 2>/dev/null || true
        kill "$HEAPD" && wait "$HEAPD" 2>/dev/null || true
        ops=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ops_per_sec"])' "$out")
        total=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d.get("ops", 0) or float(d["ops_per_sec"]) * '"$SECS"')' "$out")
        hz=$(getconf CLK_TCK)
        OPS[$mode]="${OPS[$mode]:-} $ops"
        CPU[$mode]="${CPU[$mode]:-} $(python3 -c "print(($t1 - $t0) / $hz / $total * 1e9)")"
    done
done
python3 - "${OPS[off]}" "${OPS[slowlog]}" "${OPS[monitor]}" "${CPU[off]}" "${CPU[slowlog]}" "${CPU[monitor]}" <<'EOF'
import statistics, sys
ops = [list(map(float, a.split())) for a in sys.argv[1:4]]
cpu = [list(map(float, a.split())) for a in sys.argv[4:7]]
base = statistics.median(cpu[0])
print("%-8s %14s %18s %8s" % ("mode", "ops/s (median)", "CPU ns/op (median)", "vs off"))
for name, o, c in zip(("off", "slowlog", "monitor"), ops, cpu):
    m = statistics.median(c)
    print("%-8s %14.0f %18.0f %7.2fx" % (name, statistics.median(o), m, m / base))
EOF
