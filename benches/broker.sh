#!/usr/bin/env bash
# End-to-end benchmarks of a single Runnel node with `runnel bench` (issue 4).
#
# For each flush policy (never, always) a fresh broker on 127.0.0.1 with its
# data under target/broker-bench/, preceded by the disk's same-run limit
# (dd of 2 GiB with conv=fdatasync, twice; the second, warm one is the
# divisor, as in RESULTS.md). Then, per case, a fresh topic:
#   produce   --partitions 1|8  --record-size 100|1024  --acks 1|all
#   consume   of what the produce stored (flush=never only)
# and, with flush=never: keyed records (--keys 10000), and produce-to-
# consume latency (e2e) at 50% of the measured peak; with flush=always:
# 8 producers. Each case's JSON (runnel bench --output json) goes to
# results.jsonl; summary.md gets a table with ratios.
#
#   benches/broker.sh                   # every case, --duration 8 each (~10 min)
#   benches/broker.sh --quick           # --duration 2, fewer cases
#   benches/broker.sh --duration 15 --filter 'never/8p/1024'
#
# Environment: RUNNEL_BIN (default target/release/runnel; built if missing).
# Output: target/broker-bench/results-<time>/ (summary.md, results.jsonl,
# broker stderr logs).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=8
FILTER=""
QUICK=0
DD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; DURATION=2 ;;
    --duration) DURATION=$2; shift ;;
    --filter) FILTER=$2; shift ;;
    --no-dd) DD=0 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

. "$ROOT/benches/lib.sh"
bench_setup broker-bench
BROKER_PID=""
stop_broker() { stop_pid "$BROKER_PID"; BROKER_PID=""; }
trap stop_broker EXIT

start_broker() { # flush
  local flush=$1 dir=$WORK/data-$1
  rm -rf "$dir"
  "$BIN" broker --data-dir "$dir" --listen 127.0.0.1:0 --metrics-listen off --flush "$flush" \
    > "$OUT/broker-$flush.out" 2> "$OUT/broker-$flush.err" &
  BROKER_PID=$!
  for _ in $(seq 600); do
    if grep -q 'listening on' "$OUT/broker-$flush.out" 2>/dev/null; then break; fi
    kill -0 "$BROKER_PID" 2>/dev/null || { cat "$OUT/broker-$flush.err" >&2; exit 1; }
    sleep 0.1
  done
  BOOTSTRAP=$(sed -n 's/.*listening on \([^ ]*\) (gRPC).*/\1/p' "$OUT/broker-$flush.out")
  [ -n "$BOOTSTRAP" ] || { echo "broker did not report its address" >&2; exit 1; }
}

BENCH_FILTER=$FILTER

{
  echo "# runnel bench, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "source: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (uncommitted changes)')"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(free -g | awk '/^Mem:/ {print $2}') GiB"
  echo "duration per case: ${DURATION}s"
  echo
} > "$OUT/summary.md"

SIZES="1024 100"
PARTS="1 8"
ACKS="1 all"
if [ "$QUICK" = 1 ]; then PARTS="8"; fi

for flush in never always; do
  [ "$DD" = 1 ] && dd_pair "before flush=$flush"
  start_broker "$flush"
  for size in $SIZES; do
    for parts in $PARTS; do
      for acks in $ACKS; do
        topic="p-$flush-$parts-$size-$acks"
        bench "$flush/${parts}p/$size/acks=$acks/produce" produce --topic "$topic" --partitions "$parts" \
          --record-size "$size" --acks "$acks" --duration "$DURATION"
        if [ "$flush" = never ] && [ "$acks" = 1 ]; then
          bench "$flush/${parts}p/$size/acks=$acks/consume" consume --topic "$topic"
        fi
        "$BIN" topic delete "$topic" --bootstrap "$BOOTSTRAP" > /dev/null 2>&1 || true
      done
    done
  done
  if [ "$flush" = never ]; then
    for size in $SIZES; do
      bench "$flush/8p/$size/acks=1/keys=10000/produce" produce --topic "k-$size" --partitions 8 \
        --record-size "$size" --acks 1 --keys 10000 --duration "$DURATION"
      "$BIN" topic delete "k-$size" --bootstrap "$BOOTSTRAP" > /dev/null 2>&1 || true
    done
    # Latency at half of the peak rate measured above for 1 KiB, 8 partitions, acks=1.
    peak=$(grep '"case":"never/8p/1024/acks=1/produce"' "$RESULTS" | sed -n 's/.*"msgs_per_sec":\([0-9.]*\).*/\1/p' | head -1)
    if [ -n "$peak" ]; then
      half=$(awk -v p="$peak" 'BEGIN { printf "%d", p / 2 }')
      bench "$flush/8p/1024/acks=1/e2e@50%" e2e --topic e2e --partitions 8 --record-size 1024 --acks 1 \
        --rate "$half" --duration "$DURATION" --linger-ms 0
      "$BIN" topic delete e2e --bootstrap "$BOOTSTRAP" > /dev/null 2>&1 || true
    fi
  else
    for size in 1024; do
      bench "$flush/8p/$size/acks=1/producers=8/produce" produce --topic "m-$size" --partitions 8 \
        --record-size "$size" --acks 1 --producers 8 --duration "$DURATION"
      "$BIN" topic delete "m-$size" --bootstrap "$BOOTSTRAP" > /dev/null 2>&1 || true
    done
  fi
  stop_broker
  rm -rf "$WORK/data-$flush"
done

{
  echo
  echo "| case | msgs/s | MB/s | ratio to dd #2 | p50 ms | p99 ms | p99.9 ms | max ms |"
  echo "|---|---|---|---|---|---|---|---|"
  python3 - "$RESULTS" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    c = json.loads(line)
    r = c["result"]
    dd = c["dd_mbs"]
    ratio = f'{r["mb_per_sec"] / dd:.2f}' if dd and r["mode"] == "produce" else ""
    l = r["latency_us"]
    print(f'| {c["case"]} | {r["msgs_per_sec"]:,.0f} | {r["mb_per_sec"]:,.1f} | {ratio} | '
          f'{l["p50"]/1000:.2f} | {l["p99"]/1000:.2f} | {l["p999"]/1000:.2f} | {l["max"]/1000:.2f} |')
EOF
} >> "$OUT/summary.md"
cat "$OUT/summary.md"
echo "results in $OUT" >&2
