#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/cluster_compare.sh: heapd's throughput through HAProxy (deploy/haproxy/haproxy.cfg,
# as shipped) beside the same load sent straight to the nodes, for 1 node and for 3 nodes,
# in one run; prints a Markdown table with the ratios (docs/PERFORMANCE.md, "## Behind a
# balancer").
#
#   bench/cluster_compare.sh                # build/bin/heapd, build/bin/heapd-bench, haproxy
#   BUILD=build-rel DURATION=10 CLIENTS=48 bench/cluster_compare.sh
#
# Three nodes (workers: 1 each) and HAProxy listen on loopback, started here and stopped on
# exit. The load is heapd-bench's default mix (alloc+decref, incref+decref, set_slot), from
# three heapd-bench processes of CLIENTS/3 connections each, run at the same time: for 3
# nodes, straight to one node each or all three to HAProxy (which spreads the connections,
# leastconn); for 1 node, all three to node 1 straight or to HAProxy with node 1 as its only
# server. Modes: one request in flight per connection (-P 1: every request pays the extra
# hop) and 16 (-P 16). Needs haproxy and python3 (for the table).
set -euo pipefail

BUILD=${BUILD:-build}
DURATION=${DURATION:-5}
CLIENTS=${CLIENTS:-30}
BASE_PORT=${BASE_PORT:-7520} # HAProxy on BASE_PORT, node i on BASE_PORT+10i (HTTP +1)
HEAPD=$BUILD/bin/heapd
BENCH=$BUILD/bin/heapd-bench
CFG=$(dirname "$0")/../deploy/haproxy/haproxy.cfg

. "$(dirname "$0")/lib.sh"
bench_need cluster_compare "$HEAPD" "$BENCH" -- haproxy python3
bench_scratch
lb_pid=

port() { echo $((BASE_PORT + 10 * $1)); }
for i in 1 2 3; do
    cat > "$tmp/n$i.yaml" << EOF
listen: ["127.0.0.1:$(port "$i")"]
unix_socket: ""
http: ["127.0.0.1:$(($(port "$i") + 1))"]
log_level: warn
workers: 1
node_id: n$i
advertise_url: tcp://127.0.0.1:$(port "$i")
EOF
    "$HEAPD" --config "$tmp/n$i.yaml" 2> "$tmp/n$i.log" &
    pids+=($!)
done
for i in 1 2 3; do
    for _ in $(seq 50); do
        "$BENCH" --port "$(port "$i")" -c 1 -d 0.05 > /dev/null 2>&1 && break
        sleep 0.1
    done
done

# balancer NODE NODE NODE: HAProxy on the shipped config with those three servers.
balancer() {
    [ -z "$lb_pid" ] || bench_stop "$lb_pid"
    HEAPD_LB_BIND=127.0.0.1:$BASE_PORT \
        HEAPD_NODE1=127.0.0.1:$(port "$1") HEAPD_NODE1_HTTP=$(($(port "$1") + 1)) \
        HEAPD_NODE2=127.0.0.1:$(port "$2") HEAPD_NODE2_HTTP=$(($(port "$2") + 1)) \
        HEAPD_NODE3=127.0.0.1:$(port "$3") HEAPD_NODE3_HTTP=$(($(port "$3") + 1)) \
        haproxy -f "$CFG" -db 2> "$tmp/haproxy.log" &
    lb_pid=$!
    pids+=("$lb_pid")
    for _ in $(seq 50); do
        "$BENCH" --port "$BASE_PORT" -c 1 -d 0.05 > /dev/null 2>&1 && return
        sleep 0.1
    done
    echo "cluster_compare: haproxy did not start:" >&2
    cat "$tmp/haproxy.log" >&2
    exit 1
}

# run DEPTH PORT PORT PORT: three heapd-bench at once, one to each port; prints the sum of
# their ops/s and the worst of their p50 and p99.
run() {
    local depth=$1
    shift
    local k=0 benches=()
    for p in "$@"; do
        "$BENCH" --port "$p" -c $((CLIENTS / 3)) -P "$depth" -d "$DURATION" > "$tmp/r$k.json" &
        benches+=($!)
        k=$((k + 1))
    done
    for b in "${benches[@]}"; do wait "$b"; done
    python3 - "$tmp"/r0.json "$tmp"/r1.json "$tmp"/r2.json << 'EOF'
import json, sys
rs = [json.load(open(f)) for f in sys.argv[1:]]
print(json.dumps({"ops": sum(r["ops_per_sec"] for r in rs),
                  "p50": max(r["p50_us"] for r in rs), "p99": max(r["p99_us"] for r in rs)}))
EOF
}
declare -a rows
LB=$BASE_PORT
balancer 1 1 1
for depth in 1 16; do
    rows+=("1|$depth|$(run "$depth" "$(port 1)" "$(port 1)" "$(port 1)")|$(run "$depth" $LB $LB $LB)")
done
balancer 1 2 3
for depth in 1 16; do
    rows+=("3|$depth|$(run "$depth" "$(port 1)" "$(port 2)" "$(port 3)")|$(run "$depth" $LB $LB $LB)")
done

python3 - "$(nproc)" "$(haproxy -v | head -1 | cut -d' ' -f3)" "$CLIENTS" "$DURATION" \
    "${rows[@]}" << 'EOF'
import json, sys
cores, version, clients, duration, rows = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
print("Machine: %s cores; HAProxy %s; heapd nodes with 1 worker each; %s connections "
      "(3 heapd-bench of %d), %s s per run" % (cores, version, clients, int(clients) // 3,
                                               duration))
print()
print("| nodes | mode | direct ops/s | through HAProxy ops/s | ratio | direct p50 / p99 us "
      "| HAProxy p50 / p99 us |")
print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
for row in rows:
    nodes, depth, d, b = row.split("|", 3)
    d, b = json.loads(d), json.loads(b)
    print("| %s | -P %s | %.0f | %.0f | %.2f | %.0f / %.0f | %.0f / %.0f |"
          % (nodes, depth, d["ops"], b["ops"], b["ops"] / d["ops"], d["p50"], d["p99"],
             b["p50"], b["p99"]))
EOF
