# Sourced by the benchmark scripts (broker.sh, cluster.sh): the binary to
# measure, a fresh results directory, and stopping what a script started.

# bench_setup NAME: sets BIN (RUNNEL_BIN, default target/release/runnel,
# built when missing), WORK (target/NAME), OUT (a new results directory in
# it) and RESULTS (an empty results.jsonl in OUT).
bench_setup() {
  BIN=${RUNNEL_BIN:-$ROOT/target/release/runnel}
  if [ ! -x "$BIN" ]; then
    echo "building $BIN (cargo build --release -p runnel-cli)" >&2
    cargo build --release -p runnel-cli
  fi
  WORK=$ROOT/target/$1
  OUT=$WORK/results-$(date +%Y%m%dT%H%M%S)
  mkdir -p "$OUT"
  RESULTS=$OUT/results.jsonl
  : > "$RESULTS"
}

# stop_pid PID: SIGTERM to a process this script started, then wait for it.
stop_pid() {
  if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
    kill -TERM "$1"
    wait "$1" || true
  fi
}

# dd_pair LABEL: the disk's same-run limit, `dd bs=1M count=2048
# conv=fdatasync` twice into WORK; prints both to stderr and OUT/summary.md
# and leaves the second (warm) figure, the divisor, in DD_LAST (MB/s).
dd_pair() {
  local f=$WORK/dd.bin i mbs
  for i in 1 2; do
    mbs=$(dd if=/dev/zero of="$f" bs=1M count=2048 conv=fdatasync 2>&1 | sed -n 's/.*, \([0-9.]*\) \([MG]B\)\/s$/\1 \2/p' |
      awk '{ if ($2 == "GB") print $1 * 1000; else print $1 }')
    echo "dd $1 #$i: $mbs MB/s" | tee -a "$OUT/summary.md" >&2
    DD_LAST=$mbs
  done
  rm -f "$f"
}

# bench LABEL ARGS...: `runnel bench ARGS --bootstrap $BOOTSTRAP --output
# json`, echoed to stderr and appended to RESULTS as {"case","dd_mbs","result"}
# (dd_mbs: DD_LAST, or null). BENCH_FILTER, when set, skips labels without it.
bench() {
  local label=$1 json
  shift
  if [ -n "${BENCH_FILTER:-}" ] && [[ "$label" != *$BENCH_FILTER* ]]; then return 0; fi
  echo "== $label ($(uptime | sed 's/.*load average/load/'))" >&2
  json=$("$BIN" bench "$@" --bootstrap "$BOOTSTRAP" --output json)
  echo "$json" >&2
  printf '{"case":"%s","dd_mbs":%s,"result":%s}\n' "$label" "${DD_LAST:-null}" "$json" >> "$RESULTS"
}
