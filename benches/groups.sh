#!/usr/bin/env bash
# Issue 6's consumer-group benchmark: a group of 4 consumers draining an
# 8-partition RF=3 topic on a 3-node `runnel dev-cluster`, and the
# rebalance time when one member leaves; a single plain consumer reading
# the same topic is the same-run reference.
#
#   runnel bench produce --topic groups --partitions 8 --acks all --messages N
#   runnel bench consume --topic groups                      (reference)
#   runnel bench group --topic groups --consumers 4           (--runs times)
#
#   benches/groups.sh                       # 1,000,000 x 1 KiB, 3 group runs (~3 min)
#   benches/groups.sh --messages 200000 --runs 1
#
# Environment: RUNNEL_BIN (default target/release/runnel; built if missing).
# Output: target/groups-bench/results-<time>/ (summary.md, results.jsonl, node logs).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MESSAGES=1000000
RUNS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --messages) MESSAGES=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

. "$ROOT/benches/lib.sh"
bench_setup groups-bench
PID=""
stop() { stop_pid "$PID"; PID=""; }
trap stop EXIT

{
  echo "# runnel groups bench, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "source: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (uncommitted changes)')"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(free -g | awk '/^Mem:/ {print $2}') GiB"
  echo "3-node dev-cluster, topic 'groups': 8 partitions, RF=3, $MESSAGES x 1 KiB records"
} > "$OUT/summary.md"

rm -rf "$WORK/dev"
"$BIN" dev-cluster --nodes 3 --data-dir "$WORK/dev" --base-port 29740 \
  > "$OUT/dev-cluster.out" 2> "$OUT/dev-cluster.err" &
PID=$!
for _ in $(seq 1200); do
  grep -q '^bootstrap: ' "$OUT/dev-cluster.out" 2>/dev/null && break
  kill -0 "$PID" 2>/dev/null || { cat "$OUT/dev-cluster.err" >&2; exit 1; }
  sleep 0.1
done
BOOTSTRAP=$(sed -n 's/^bootstrap: //p' "$OUT/dev-cluster.out")
[ -n "$BOOTSTRAP" ] || { echo "dev-cluster did not report its bootstrap list" >&2; exit 1; }

"$BIN" topic create groups --partitions 8 --replication-factor 3 --bootstrap "$BOOTSTRAP" > /dev/null
bench "produce acks=all" produce --topic groups --partitions 8 --acks all --messages "$MESSAGES"
bench "1 plain consumer" consume --topic groups
for run in $(seq "$RUNS"); do
  bench "group of 4, run $run" group --topic groups --consumers 4
done
stop
cp "$WORK"/dev/node-*.log "$OUT/" 2>/dev/null || true
rm -rf "$WORK/dev"

{
  echo
  echo "| case | msgs/s | MB/s | rebalance ms | p50 ms | p99 ms |"
  echo "|---|---|---|---|---|---|"
  python3 - "$RESULTS" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    c = json.loads(line)
    r = c["result"]
    l = r["latency_us"]
    reb = f'{r["rebalance_ms"]:.0f}' if "rebalance_ms" in r else ""
    print(f'| {c["case"]} | {r["msgs_per_sec"]:,.0f} | {r["mb_per_sec"]:,.1f} | {reb} | '
          f'{l["p50"]/1000:.2f} | {l["p99"]/1000:.2f} |')
PY
} >> "$OUT/summary.md"
cat "$OUT/summary.md"
echo "results in $OUT" >&2
