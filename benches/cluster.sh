#!/usr/bin/env bash
# Issue 5's cluster benchmarks: a 3-node `runnel dev-cluster` (RF=3,
# acks=all) against a single node measured in the same run, then the
# leader failover time (median of 10).
#
# Per side (single node, then 3 nodes), same --flush on every node:
#   produce  --partitions 8 --record-size 1024 --acks all --duration D
#            (the peak; its latency is mostly time queued in the producer)
#   produce  again at 50% of that peak (--rate, linger 0): send-to-ack
#            latency p50/p99/p99.9, the issue's produce latency
#   e2e      at 50% of the peak (linger 0): send-to-consume latency
# The disk's same-run limit (dd of 2 GiB, conv=fdatasync, twice; the
# second is the divisor) is measured first; after the 3-node side,
# benches/fsync_load.py measures the disk's own fsync latency for the same
# write pattern at the 50% rate (the floor under acks=all latency).
# Then: cargo test --release ... failover_median_of_10 (kill -9 the leader
# ten times under an acks=all writer; time to the first acknowledgement by
# the new leader).
#
#   benches/cluster.sh                    # --duration 10, flush always, failover too (~10 min)
#   benches/cluster.sh --flush never --duration 6 --no-failover
#
# Environment: RUNNEL_BIN (default target/release/runnel; built if missing).
# Output: target/cluster-bench/results-<time>/ (summary.md, results.jsonl,
# node logs).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=10
FLUSH=always
FAILOVER=1
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift ;;
    --flush) FLUSH=$2; shift ;;
    --no-failover) FAILOVER=0 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

. "$ROOT/benches/lib.sh"
bench_setup cluster-bench
PID=""
stop() { stop_pid "$PID"; PID=""; }
trap stop EXIT

wait_line() { # file pattern
  for _ in $(seq 1200); do
    if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
    kill -0 "$PID" 2>/dev/null || { cat "$1" "$OUT"/*.err >&2 2>/dev/null; exit 1; }
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2
  exit 1
}

{
  echo "# runnel cluster bench, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "source: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (uncommitted changes)')"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(free -g | awk '/^Mem:/ {print $2}') GiB"
  echo "duration per case: ${DURATION}s, flush=$FLUSH on every node"
} > "$OUT/summary.md"

dd_pair "before the runs"

side() { # label rf
  local label=$1 rf=$2
  "$BIN" topic create bench --partitions 8 --replication-factor "$rf" --bootstrap "$BOOTSTRAP" > /dev/null
  bench "$label/8p/1024/acks=all/produce" produce --topic bench --partitions 8 --record-size 1024 \
    --acks all --duration "$DURATION"
  local peak half
  peak=$(tail -1 "$RESULTS" | sed -n 's/.*"msgs_per_sec":\([0-9.]*\).*/\1/p')
  half=$(awk -v p="$peak" 'BEGIN { printf "%d", p / 2 }')
  HALF_MBS=$(awk -v h="$half" 'BEGIN { printf "%.1f", h * 1024 / 1e6 }')
  bench "$label/8p/1024/acks=all/produce@50%" produce --topic bench --partitions 8 --record-size 1024 \
    --acks all --rate "$half" --duration "$DURATION" --linger-ms 0
  "$BIN" topic create e2e --partitions 8 --replication-factor "$rf" --bootstrap "$BOOTSTRAP" > /dev/null
  bench "$label/8p/1024/acks=all/e2e@50%" e2e --topic e2e --partitions 8 --record-size 1024 \
    --acks all --rate "$half" --duration "$DURATION" --linger-ms 0
}

# One node.
rm -rf "$WORK/single"
"$BIN" broker --data-dir "$WORK/single" --listen 127.0.0.1:0 --metrics-listen off --flush "$FLUSH" \
  > "$OUT/single.out" 2> "$OUT/single.err" &
PID=$!
wait_line "$OUT/single.out" 'listening on'
BOOTSTRAP=$(sed -n 's/.*listening on \([^ ]*\) (gRPC).*/\1/p' "$OUT/single.out")
side "1 node" 1
stop
rm -rf "$WORK/single"

# Three nodes.
rm -rf "$WORK/dev"
"$BIN" dev-cluster --nodes 3 --data-dir "$WORK/dev" --base-port 29740 --flush "$FLUSH" \
  > "$OUT/dev-cluster.out" 2> "$OUT/dev-cluster.err" &
PID=$!
wait_line "$OUT/dev-cluster.out" '^bootstrap: '
BOOTSTRAP=$(sed -n 's/^bootstrap: //p' "$OUT/dev-cluster.out")
side "3 nodes RF=3" 3
"$BIN" topic describe bench --bootstrap "$BOOTSTRAP" >> "$OUT/summary.md"
stop
cp "$WORK"/dev/node-*.log "$OUT/" 2>/dev/null || true
rm -rf "$WORK/dev"

# The disk's own fsync latency for the same write pattern at the same rate
# (three nodes, eight logs each, parallel fdatasync rounds), without Runnel:
# the floor under the acks=all latency measured just before.
{
  echo
  echo "fsync floor (benches/fsync_load.py --nodes 3 --files 8 --mbps $HALF_MBS --seconds $DURATION):"
  python3 "$ROOT/benches/fsync_load.py" --nodes 3 --files 8 --mbps "$HALF_MBS" --seconds "$DURATION" --dir "$WORK/fsync-load"
} | tee -a "$OUT/summary.md" >&2
rm -rf "$WORK/fsync-load"

{
  echo
  echo "| case | msgs/s | MB/s | p50 ms | p99 ms | p99.9 ms | max ms |"
  echo "|---|---|---|---|---|---|---|"
  python3 - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for c in rows:
    r = c["result"]
    l = r["latency_us"]
    print(f'| {c["case"]} | {r["msgs_per_sec"]:,.0f} | {r["mb_per_sec"]:,.1f} | '
          f'{l["p50"]/1000:.2f} | {l["p99"]/1000:.2f} | {l["p999"]/1000:.2f} | {l["max"]/1000:.2f} |')
single = next(c["result"]["mb_per_sec"] for c in rows if c["case"].startswith("1 node") and c["case"].endswith("produce"))
three = next(c["result"]["mb_per_sec"] for c in rows if c["case"].startswith("3 nodes") and c["case"].endswith("produce"))
print(f'\n3-node RF=3 produce / single-node produce: {three / single:.2f}')
EOF
} >> "$OUT/summary.md"

if [ "$FAILOVER" = 1 ]; then
  echo "== failover (cargo test --release ... failover_median_of_10)" >&2
  cargo test --release -p runnel-cli --test cluster -- --ignored --nocapture failover_median_of_10 \
    2> "$OUT/failover.err" || { tail -50 "$OUT/failover.err" >&2; exit 1; }
  { echo; grep '^FAILOVER' "$OUT/failover.err"; } >> "$OUT/summary.md"
fi
cat "$OUT/summary.md"
echo "results in $OUT" >&2
