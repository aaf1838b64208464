#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/session_memory.sh: memory per idle session with N connected sessions, heapd beside
# Redis's memory per idle client, on this machine, in one run.
#
#   bench/session_memory.sh                    # N=10000, build/bin/heapd
#   BUILD=build-rel N=20000 bench/session_memory.sh
#
# Both servers listen on Unix sockets in a temporary directory (no ports), started here and
# stopped on exit. For each, one client connects first (so that one-time costs are paid),
# the server's resident memory (VmRSS) is read, N more idle clients connect (heapd: hello, so
# each has its own session with an empty heap, and a ping; Redis: a PING), and VmRSS is read
# again once all have been answered and have stayed idle for IDLE seconds (default 5: Redis
# shrinks an idle client's query buffer after 2 s, heapd its buffers as soon as a connection
# has nothing buffered). The figure is the growth divided by N. Redis's own counts (INFO:
# connected_clients, used_memory) are read while its clients are connected.
set -euo pipefail

BUILD=${BUILD:-build}
N=${N:-10000}
IDLE=${IDLE:-5}
HEAPD=$BUILD/bin/heapd
CLIENTS=$BUILD/bin/heapd-idle-clients
. "$(dirname "$0")/lib.sh"
bench_need session_memory "$HEAPD" "$CLIENTS" -- redis-server
bench_scratch
ulimit -n $((N + 1024))

rss() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$1/status"; }

# Starts N+1 clients of kind $1 at $2 against server pid $3; prints "before after".
measure() {
    local kind=$1 addr=$2 pid=$3 before after
    mkfifo "$tmp/hold1" "$tmp/holdn"
    "$CLIENTS" "$kind" "$addr" 1 < "$tmp/hold1" > "$tmp/out1" &
    pids+=($!)
    exec 3> "$tmp/hold1"
    until grep -q ready "$tmp/out1" 2> /dev/null; do sleep 0.05; done
    sleep 0.2
    before=$(rss "$pid")
    "$CLIENTS" "$kind" "$addr" "$N" < "$tmp/holdn" > "$tmp/outn" &
    pids+=($!)
    exec 4> "$tmp/holdn"
    until grep -q ready "$tmp/outn" 2> /dev/null; do sleep 0.1; done
    sleep "$IDLE"
    after=$(rss "$pid")
    extra=""
    if [ "$kind" = redis ]; then
        extra=$(redis-cli -s "$addr" info | tr -d '\r' |
            awk -F: '/^connected_clients:/ { c = $2 } /^used_memory:/ { u = $2 } END { print c, u }')
    fi
    echo "$before $after $extra"
    exec 3>&- 4>&-
    rm -f "$tmp/hold1" "$tmp/holdn"
}

redis-server --port 0 --unixsocket "$tmp/redis.sock" --save "" --appendonly no \
    --maxclients $((N + 100)) --daemonize no --logfile "$tmp/redis.log" &
rpid=$!
pids+=($rpid)
until [ -S "$tmp/redis.sock" ]; do sleep 0.05; done
read -r rb ra redis_clients redis_used < <(measure redis "$tmp/redis.sock" "$rpid")

cat > "$tmp/heapd.yaml" << EOF2
listen: []
unix_socket: "$tmp/heapd.sock"
http: []
log_level: warn
max_connections: $((N + 100))
max_sessions: $((N + 100))
EOF2
"$HEAPD" --config "$tmp/heapd.yaml" 2> "$tmp/heapd.log" &
hpid=$!
pids+=($hpid)
until [ -S "$tmp/heapd.sock" ]; do sleep 0.05; done
read -r hb ha < <(measure heapd "unix:$tmp/heapd.sock" "$hpid")

python3 - "$N" "$rb" "$ra" "$hb" "$ha" "$redis_used" "$redis_clients" \
    "$(redis-server --version | cut -d' ' -f3)" "$IDLE" << 'EOF2'
import sys
n, rb, ra, hb, ha, used, clients, ver, idle = sys.argv[1:]
n, rb, ra, hb, ha = int(n), int(rb), int(ra), int(hb), int(ha)
r, h = (ra - rb) / n, (ha - hb) / n
print("Idle connections: %d, idle %s s (Redis %s: %s connected clients, used_memory %s bytes)"
      % (n, idle, ver.replace("v=", ""), clients, used))
print()
print("| server | RSS before | RSS with %d more | per idle client |" % n)
print("| --- | ---: | ---: | ---: |")
print("| redis-server | %.1f MiB | %.1f MiB | %.0f B |" % (rb / 2**20, ra / 2**20, r))
print("| heapd (each a session) | %.1f MiB | %.1f MiB | %.0f B |" % (hb / 2**20, ha / 2**20, h))
print()
print("heapd / Redis: %.2fx (target: at most 1x): %s" % (h / r, "met" if h <= r else "NOT met"))
EOF2
