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
