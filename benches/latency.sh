#!/usr/bin/env bash
# Produce-to-consume latency of one node against the issue-4 target (p99 <
# 5 ms at 50% of peak), and the page cache budget's effect on a node that
# has written a lot. See RESULTS.md, "Page cache budget, and
# produce-to-consume latency again".
#
#   benches/latency.sh shares                # fresh broker: produce-only peak, then
#                                            # e2e at 50% and 25% of it (1 s warm-up
#                                            # and none), the e2e capacity (produce
#                                            # and consume at once), and e2e at 50% of that
#   benches/latency.sh fill [BUDGET] [RATE]  # fresh broker with --page-cache-bytes
#                                            # BUDGET (default: the broker's); 7 GB
#                                            # produced into another topic, then three
#                                            # 10 s e2e runs at RATE (default 290000)
#   benches/latency.sh touch [GB]            # the VM's cost of fresh memory: ms per
#                                            # GB of anonymous pages first touched
#
# Every case: 8 partitions, 1 KiB records, --acks 1, --linger-ms 0, the
# bench on the same machine as the broker (data under target/latency-bench/).
# Environment: RUNNEL_BIN (default target/release/runnel; built if missing).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=${RUNNEL_BIN:-$ROOT/target/release/runnel}
[ -x "$BIN" ] || cargo build --release --bin runnel
WORK=$ROOT/target/latency-bench
mkdir -p "$WORK"
PORT=${PORT:-19292}
export RUNNEL_BOOTSTRAP=127.0.0.1:$PORT
BROKER_PID=""

start_broker() { # extra broker args...
    local dir
    dir=$(mktemp -d "$WORK/data.XXXX")
    "$BIN" broker --listen "127.0.0.1:$PORT" --data-dir "$dir" --flush never \
        --metrics-listen "127.0.0.1:$((PORT + 1))" "$@" >"$dir.log" 2>&1 &
    BROKER_PID=$!
    BROKER_DIR=$dir
    for _ in $(seq 100); do
        (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "the broker did not start; see $dir.log" >&2
    exit 1
}

stop_broker() {
    [ -n "$BROKER_PID" ] || return 0
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    rm -rf "$BROKER_DIR" "$BROKER_DIR.log"
    BROKER_PID=""
}
trap stop_broker EXIT

summary() { # label  (reads one bench JSON object on stdin)
    python3 -c '
import json, sys
j = json.load(sys.stdin); l = j["latency_us"]
print("%s: %s msgs/s  p50 %.2f  p99 %.2f  p99.9 %.2f  max %.2f ms" % (sys.argv[1], format(int(j["msgs_per_sec"]), ","), l["p50"] / 1e3, l["p99"] / 1e3, l["p999"] / 1e3, l["max"] / 1e3))
' "$1"
}

e2e() { # topic rate warmup
    "$BIN" bench e2e --topic "$1" --partitions 8 --acks 1 --linger-ms 0 --duration 10 \
        --rate "$2" --warmup "$3" --output json 2>/dev/null
}

case ${1:-shares} in
shares)
    start_broker
    peak=$("$BIN" bench produce --topic peak --partitions 8 --acks 1 --duration 8 --output json 2>/dev/null |
        python3 -c 'import json,sys; print(int(json.load(sys.stdin)["msgs_per_sec"]))')
    echo "produce-only peak: $peak records/s"
    for spec in 50:1 50:0 25:1 25:0; do
        pct=${spec%%:*}
        warmup=${spec#*:}
        rate=$((peak * pct / 100))
        e2e "e2e-$pct-$warmup" "$rate" "$warmup" | summary "e2e at $pct% ($rate/s), warm-up ${warmup} s"
    done
    cap_json=$("$BIN" bench e2e --topic capacity --partitions 8 --acks 1 --linger-ms 0 --duration 10 --output json 2>/dev/null)
    summary "e2e capacity (no --rate)" <<<"$cap_json"
    cap=$(python3 -c 'import json,sys; print(int(json.load(sys.stdin)["msgs_per_sec"]))' <<<"$cap_json")
    for warmup in 1 0; do
        rate=$((cap / 2))
        e2e "e2e-cap-$warmup" "$rate" "$warmup" | summary "e2e at 50% of the e2e capacity ($rate/s), warm-up ${warmup} s"
    done
    ;;
fill)
    budget=${2:-}
    rate=${3:-290000}
    if [ -n "$budget" ]; then start_broker --page-cache-bytes "$budget"; else start_broker; fi
    "$BIN" bench produce --topic fill --partitions 8 --acks 1 --messages 7000000 --output json 2>/dev/null |
        summary "fill, 7,000,000 records"
    for run in 1 2 3; do
        e2e "e2e-$run" "$rate" 1 | summary "e2e run $run at $rate/s, warm-up 1 s"
    done
    curl -s "127.0.0.1:$((PORT + 1))/metrics" | grep '^runnel_page_cache' || true
    awk '/^MemFree/ {printf "MemFree: %.1f GB\n", $2 / 1048576}' /proc/meminfo
    ;;
touch)
    gb=${2:-12}
    cc -O2 -o "$WORK/touch" "$ROOT/benches/touch_memory.c"
    "$WORK/touch" "$gb"
    ;;
*)
    echo "usage: benches/latency.sh shares | fill [BUDGET] [RATE] | touch [GB]" >&2
    exit 2
    ;;
esac
