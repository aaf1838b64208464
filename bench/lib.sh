# SPDX-License-Identifier: MIT
# bench/lib.sh: what the comparison scripts share, sourced by them (not run): checking that
# the programs they need are there, and a scratch directory whose servers are stopped and
# which is removed however the script ends.
#
#   . "$(dirname "$0")/lib.sh"
#   bench_need NAME PROGRAM... [-- COMMAND...]  # built programs (paths), then installed commands
#   bench_scratch                                # sets $tmp and an empty $pids; traps the exit
#   "$HEAPD" --config "$tmp/heapd.yaml" & pids+=($!)
#   bench_stop "$pid"                            # stops one server early

# Exits with a message naming the script when a built program or an installed command is
# missing.
bench_need() {
    local name=$1 tool
    shift
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        [ -x "$1" ] || { echo "$name: $1 not built (cmake --build ${BUILD:-build})" >&2; exit 1; }
        shift
    done
    [ $# -eq 0 ] || shift
    for tool in "$@"; do
        command -v "$tool" > /dev/null || { echo "$name: $tool not installed" >&2; exit 1; }
    done
}

# Stops a server and reaps it; a server already gone is no error.
bench_stop() {
    kill "$1" 2> /dev/null || true
    wait "$1" 2> /dev/null || true
}

bench_cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        bench_stop "$pid"
    done
    rm -rf "$tmp"
}

bench_scratch() {
    tmp=$(mktemp -d)
    pids=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}
