#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/redis_compare.sh: heapd-bench against heapd beside redis-benchmark against
# redis-server, on this machine, in one run; prints a Markdown table (docs/PERFORMANCE.md,
# "## Daemon").
#
#   bench/redis_compare.sh                 # uses build/bin/heapd and build/bin/heapd-bench
#   BUILD=build-rel DURATION=10 WORKERS=1 bench/redis_compare.sh
#
# Both servers listen on loopback TCP, started here and stopped on exit. The modes are
# redis-benchmark's: 50 clients without pipelining (-P 1), 50 clients with 16 requests per
# pipelined batch (-P 16), and one client (-c 1 -P 1) for the latency of a lone request.
# Redis runs SET; heapd runs its default mix (alloc+decref pairs, incref+decref pairs,
# set_slot). Both clients are single-threaded and count a batch's latency the same way.
# Needs redis-server, redis-benchmark and python3 (for the table).
set -euo pipefail

BUILD=${BUILD:-build}
DURATION=${DURATION:-5}
REDIS_PORT=${REDIS_PORT:-7479}
HEAPD_PORT=${HEAPD_PORT:-7480}
WORKERS=${WORKERS:-0} # heapd worker loops; 0 = one per core (the default config)
HEAPD=$BUILD/bin/heapd
BENCH=$BUILD/bin/heapd-bench
. "$(dirname "$0")/lib.sh"
bench_need redis_compare "$HEAPD" "$BENCH" -- redis-server redis-benchmark redis-cli python3
bench_scratch

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --logfile "$tmp/redis.log" &
pids+=($!)

cat > "$tmp/heapd.yaml" << EOF
listen: ["127.0.0.1:$HEAPD_PORT"]
unix_socket: ""
http: []
log_level: warn
workers: $WORKERS
EOF
"$HEAPD" --config "$tmp/heapd.yaml" 2> "$tmp/heapd.log" &
pids+=($!)

for _ in $(seq 50); do
    redis-cli -p "$REDIS_PORT" ping > /dev/null 2>&1 &&
        "$BENCH" --port "$HEAPD_PORT" -c 1 -d 0.05 > /dev/null 2>&1 && break
    sleep 0.1
done

# redis-benchmark runs a request count: size it to take about DURATION seconds.
redis_run() { # clients pipeline
    local probe n
    probe=$(redis-benchmark -p "$REDIS_PORT" -t set -c "$1" -P "$2" -n 100000 --csv |
        sed -n 2p | cut -d, -f2 | tr -d '"')
    n=$(python3 -c "print(max(100000, int(float('$probe') * $DURATION)))")
    redis-benchmark -p "$REDIS_PORT" -t set -c "$1" -P "$2" -n "$n" --csv | sed -n 2p
}
heapd_run() { # clients pipeline
    "$BENCH" --port "$HEAPD_PORT" -c "$1" -P "$2" -d "$DURATION"
}

declare -a rows
for mode in "50 1" "50 16" "1 1"; do
    set -- $mode
    rows+=("$1|$2|$(redis_run "$1" "$2")|$(heapd_run "$1" "$2")")
done

python3 - "$(nproc)" "$(redis-server --version | cut -d' ' -f3)" "$WORKERS" "${rows[@]}" << 'EOF'
import json, sys
cores, redis_version, workers, rows = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
print("Machine: %s cores; redis-server %s; heapd workers: %s%s" % (
    cores, redis_version.replace("v=", ""), workers, " (one per core)" if workers == "0" else ""))
print()
print("| mode | Redis SET req/s | heapd ops/s | Redis p50 us | heapd p50 us "
      "| Redis p99 us | heapd p99 us |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
ok = True
for row in rows:
    clients, depth, csv, js = row.split("|", 3)
    r = [f.strip('"') for f in csv.split(",")]
    rps, p50, p99 = float(r[1]), float(r[4]) * 1000, float(r[6]) * 1000
    h = json.loads(js)
    print("| -c %s -P %s | %.0f | %.0f | %.0f | %.1f | %.0f | %.1f |"
          % (clients, depth, rps, h["ops_per_sec"], p50, h["p50_us"], p99, h["p99_us"]))
    if clients != "1" and h["ops_per_sec"] < rps:
        ok = False
    if clients == "1" and h["p50_us"] > p50:
        ok = False
print()
print("Redis reports latencies in whole microseconds (milliseconds with 3 decimals).")
print("Targets (heapd >= Redis req/s at -P 1 and -P 16; single-connection p50 <= Redis): %s"
      % ("met" if ok else "NOT met"))
EOF
