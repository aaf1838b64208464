#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/echo_compare.sh: heapd's CPU per request beside a trivial epoll server's
# (heapd-echo-server) answering the same frames from the same client, in one run.
#
#   bench/echo_compare.sh                          # -c 50 -P 16, 5 s each, 3 rounds
#   BUILD=build-rel CONNS=50 DEPTH=16 DURATION=5 ROUNDS=3 bench/echo_compare.sh
#   BASE=main bench/echo_compare.sh                # and the heapd of another revision
#
# With BASE=<git revision>, that revision's heapd runs in the same rounds as a third server
# (its tree exported with git archive and built, RelWithDebInfo, into $BUILD/echo-base-<sha>,
# kept for the next run), so that a change is measured beside what it changes, on the same
# machine at the same moment; the table gains its columns and its ratio to the echo server.
#
# The servers listen on Unix sockets in a temporary directory; heapd runs one worker (the
# echo server is one thread), log level warn. Each round runs heapd-bench's default mix
# (alloc+decref, incref+decref, set_slot) against each server in turn (the order rotates by
# round), and reads the server's CPU time (utime + stime, /proc/PID/stat) before and after.
# CPU per request = that CPU / the requests heapd-bench completed; user and system time are
# also printed apart (medians over the rounds). The echo server parses each frame in place, reads the request id and answers a
# canned success: what any server must spend on reading, framing and writing.
set -euo pipefail

BUILD=${BUILD:-build}
CONNS=${CONNS:-50}
DEPTH=${DEPTH:-16}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
BASE=${BASE:-}
. "$(dirname "$0")/lib.sh"
bench_need echo_compare "$BUILD/bin/heapd" "$BUILD/bin/heapd-bench" "$BUILD/bin/heapd-echo-server" \
    -- python3
base_heapd=
if [ -n "$BASE" ]; then
    repo=$(dirname "$0")/..
    sha=$(git -C "$repo" rev-parse --short=12 "$BASE^{commit}")
    bdir="$BUILD/echo-base-$sha"
    if [ ! -x "$bdir/build/bin/heapd" ]; then
        echo "echo_compare: building heapd at $BASE ($sha) in $bdir" >&2
        rm -rf "$bdir" && mkdir -p "$bdir/src"
        git -C "$repo" archive "$sha" | tar -x -C "$bdir/src"
        cmake -S "$bdir/src" -B "$bdir/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
        cmake --build "$bdir/build" -j2 --target heapd > /dev/null
    fi
    base_heapd="$bdir/build/bin/heapd"
fi

bench_scratch

config() { # name -> a config with its own socket
    cat > "$tmp/$1.yaml" << EOF2
listen: []
unix_socket: "$tmp/$1.sock"
http: []
log_level: warn
workers: 1
EOF2
}
config heapd
"$BUILD/bin/heapd" --config "$tmp/heapd.yaml" 2> "$tmp/heapd.log" &
hpid=$!
pids+=($hpid)
"$BUILD/bin/heapd-echo-server" "$tmp/echo.sock" &
epid=$!
pids+=($epid)
bpid=
if [ -n "$base_heapd" ]; then
    config base
    "$base_heapd" --config "$tmp/base.yaml" 2> "$tmp/base.log" &
    bpid=$!
    pids+=($bpid)
fi
until [ -S "$tmp/heapd.sock" ] && [ -S "$tmp/echo.sock" ] &&
      { [ -z "$bpid" ] || [ -S "$tmp/base.sock" ]; }; do sleep 0.05; done

run() { # pid socket -> "utime_ticks,stime_ticks completed"
    local u0 s0 u1 s1 js
    read -r u0 s0 < <(awk '{ print $14, $15 }' "/proc/$1/stat")
    js=$("$BUILD/bin/heapd-bench" --unix "$2" -c "$CONNS" -P "$DEPTH" -d "$DURATION")
    read -r u1 s1 < <(awk '{ print $14, $15 }' "/proc/$1/stat")
    echo "$((u1 - u0)),$((s1 - s0)) $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "$js")"
}

# Each round runs every server once; the order rotates by round, so that none always goes
# first (or, with two, alternates).
rows=()
for r in $(seq "$ROUNDS"); do
    order=(heapd echo ${bpid:+base})
    n=${#order[@]}
    declare -A got=()
    for i in $(seq 0 $((n - 1))); do
        s=${order[$(((i + r - 1) % n))]}
        case $s in
        heapd) got[heapd]=$(run "$hpid" "$tmp/heapd.sock") ;;
        echo) got[echo]=$(run "$epid" "$tmp/echo.sock") ;;
        base) got[base]=$(run "$bpid" "$tmp/base.sock") ;;
        esac
    done
    rows+=("$r ${got[heapd]} ${got[echo]} ${got[base]:-0,0 0}")
    unset got
done

python3 - "$(getconf CLK_TCK)" "$CONNS" "$DEPTH" "$DURATION" "$BASE" "${rows[@]}" << 'EOF2'
import sys
hz, conns, depth, dur, base, rows = (int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4],
                                     sys.argv[5], sys.argv[6:])
print("heapd-bench -c %s -P %s -d %s against each server; CPU = utime + stime of the server"
      % (conns, depth, dur))
print()
cols = "| round | heapd requests | heapd CPU ns/request | echo requests | echo CPU ns/request | ratio |"
if base:
    cols += " %s requests | %s CPU ns/request | %s ratio |" % (base, base, base)
print(cols)
print("| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: | ---: |" if base else ""))
ratios, bratios = [], []
parts = {"heapd": [], "echo": [], "base": []}  # (user, system) ns per request, each round
def per_request(ticks, n, who):
    u, s = (int(t) / hz * 1e9 / int(n) for t in ticks.split(","))
    parts[who].append((u, s))
    return u + s
for row in rows:
    r, ht, hn, et, en, bt, bn = row.split()
    h = per_request(ht, hn, "heapd")
    e = per_request(et, en, "echo")
    ratios.append(h / e)
    line = "| %s | %s | %.0f | %s | %.0f | %.2fx |" % (r, hn, h, en, e, h / e)
    if base:
        b = per_request(bt, bn, "base")
        bratios.append(b / e)
        line += " %s | %.0f | %.2fx |" % (bn, b, b / e)
    print(line)
print()
# The split tells where a gap is: both servers make the same system calls for the same
# frames (one read and one write per batch), so system time is about equal and the
# difference is what each does in user space.
def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]
for who, name in (("heapd", "heapd"), ("echo", "echo"), ("base", base)):
    if parts[who]:
        print("%s: user %.0f ns, system %.0f ns per request (medians)"
              % (name, median(p[0] for p in parts[who]), median(p[1] for p in parts[who])))
ratios.sort()
bratios.sort()
print()
print("median heapd / echo: %.2fx (target: at most 1.15x): %s"
      % (ratios[len(ratios) // 2], "met" if ratios[len(ratios) // 2] <= 1.15 else "NOT met"))
if base:
    print("median %s / echo: %.2fx" % (base, bratios[len(bratios) // 2]))
EOF2
