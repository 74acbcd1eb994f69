#!/usr/bin/env bash
# Runnel beside NATS JetStream and RabbitMQ streams, in the same run (issue 4).
#
# For each run: the disk's same-run limit (dd of 2 GiB with conv=fdatasync,
# twice; the second, warm one is the divisor, as in RESULTS.md), then for
# each system a fresh server on 127.0.0.1 with its data under
# target/peers-bench/, which gets, for each record size (1 KiB, then 100 B),
# a produce of N records with at most W unacknowledged, then a consume of
# the same N records from the start of the log. Same N, record size and W
# for the three systems. Servers are stopped by PID after each system (and
# on any exit); `uptime` is noted before each case.
#
#   benches/peers.sh                    # 3 runs, 2,000,000 x 1 KiB and 5,000,000 x 100 B (~10 min idle)
#   benches/peers.sh --quick            # 1 run, 100,000 x 1 KiB and 500,000 x 100 B
#   benches/peers.sh --only nats --runs 1 --messages 200000
#   benches/peers.sh --only runnel --build-runnel
#
# Options:
#   --runs R (3)          --messages N (the count for both sizes)
#   --messages-1k N       --messages-100 N
#   --window-bytes B      1 MiB: W = B / record size records unacknowledged;
#                         runnel gets --batch-bytes B/8 --max-in-flight 8
#                         (8 is its producer's default requests in flight)
#   --only nats|rabbitmq|runnel (repeatable)
#   --build-runnel        cargo build --release -p runnel-cli first
#   --no-dd, --no-install
#   --nats-args / --rabbitmq-args / --runnel-args "..."   extra options for
#                         the driver or `runnel bench`, e.g. "--fetch-batch
#                         1000" or "--credit 1 --publish-batch 100" (see
#                         benches/peers/target/release/runnel-peers-bench nats --help)
#
# Environment: RUNNEL_BIN (default target/release/runnel).
# Installs nats-server and rabbitmq-server from Debian if missing. The
# driver of the two peers is the standalone cargo project benches/peers
# (not a workspace member; built here into benches/peers/target). Runnel's
# side is `target/release/runnel broker --flush never` and `runnel bench`;
# if this runnel has no working `bench`, its cells are skipped with a message.
# Output: target/peers-bench/results-<time>/ (results.jsonl, one JSON object
# per case with run, load and dd; summary.md with medians and ratios; logs).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=3
MSGS_1K=2000000
MSGS_100=5000000
WINDOW_BYTES=$((1 << 20))
RUNNEL_ARGS=""
ONLY=""
BUILD_RUNNEL=0
DD=1
INSTALL=1
NATS_ARGS=""
RABBITMQ_ARGS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) RUNS=1; MSGS_1K=100000; MSGS_100=500000 ;;
    --runs) RUNS=$2; shift ;;
    --messages) MSGS_1K=$2; MSGS_100=$2; shift ;;
    --messages-1k) MSGS_1K=$2; shift ;;
    --messages-100) MSGS_100=$2; shift ;;
    --window-bytes) WINDOW_BYTES=$2; shift ;;
    --only) case "$2" in nats|rabbitmq|runnel) ONLY="$ONLY $2" ;; *) echo "--only nats|rabbitmq|runnel" >&2; exit 2 ;; esac; shift ;;
    --build-runnel) BUILD_RUNNEL=1 ;;
    --no-dd) DD=0 ;;
    --no-install) INSTALL=0 ;;
    --nats-args) NATS_ARGS=$2; shift ;;
    --rabbitmq-args) RABBITMQ_ARGS=$2; shift ;;
    --runnel-args) RUNNEL_ARGS=$2; shift ;;
    -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$ONLY" ] || ONLY="nats rabbitmq runnel"
wants() { case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

BASE=$ROOT/target/peers-bench
OUT=$BASE/results-$(date +%Y%m%dT%H%M%S)
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/run.log" >&2; }

fs=$(findmnt -no FSTYPE -T "$BASE" 2>/dev/null || stat -f -c %T "$BASE")
case "$fs" in tmpfs|ramfs) echo "$BASE is on $fs: the comparison needs the disk" >&2; exit 1 ;; esac

# ------------------------------------------------------------ processes

PIDS=()
stop_pid() { # stop_pid PID: TERM, wait up to 60 s, then KILL
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 600; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid did not stop on TERM within 60 s: KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
stop_all() { # newest first: rabbitmq before its epmd
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]}"; done
  PIDS=()
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  local p used
  used=$(ss -Htan | awk '{print $4}' | sed 's/.*://' | sort -u)
  while :; do
    p=$((20000 + RANDOM % 40000))
    grep -qx "$p" <<<"$used" || { echo "$p"; return; }
  done
}

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # wait_port PORT PID WHAT
  local deadline=$((SECONDS + 120))
  until port_answers "$1"; do
    kill -0 "$2" 2>/dev/null || { log "$3 exited before listening"; return 1; }
    [ $SECONDS -lt $deadline ] || { log "$3: port $1 not answering after 120 s"; return 1; }
    sleep 0.1
  done
}

# ------------------------------------------------------------ setup

if [ "$INSTALL" = 1 ]; then
  missing=""
  if wants nats && ! command -v nats-server >/dev/null; then missing="$missing nats-server"; fi
  if wants rabbitmq && [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then missing="$missing rabbitmq-server"; fi
  if [ -n "$missing" ]; then
    log "installing$missing (apt-cache policy:$(apt-cache policy $missing | awk '/Candidate/ {printf " %s", $2}'))"
    # The packages' own services are not started (policy-rc.d in containers;
    # elsewhere stop them yourself: this script runs its own instances).
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing >"$OUT/apt.log" 2>&1 \
      || { apt-get update >>"$OUT/apt.log" 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing >>"$OUT/apt.log" 2>&1; }
  fi
fi

DRIVER=$ROOT/benches/peers/target/release/runnel-peers-bench
if wants nats || wants rabbitmq; then
  log "building the peer driver (benches/peers)"
  (cd benches/peers && CARGO_TARGET_DIR=target cargo build --release --locked -q)
fi

RUNNEL=${RUNNEL_BIN:-$ROOT/target/release/runnel}
RUNNEL_OK=0
if wants runnel; then
  if [ "$BUILD_RUNNEL" = 1 ]; then
    log "building runnel (cargo build --release -p runnel-cli)"
    cargo build --release -p runnel-cli -q
  fi
  if [ ! -x "$RUNNEL" ]; then
    log "SKIP runnel: $RUNNEL missing (run with --build-runnel, or cargo build --release -p runnel-cli)"
  elif ! "$RUNNEL" bench produce --help >"$OUT/runnel-bench-help.txt" 2>&1; then
    log "SKIP runnel: this runnel has no working 'bench produce' ($(head -c 200 "$OUT/runnel-bench-help.txt" | tr '\n' ' '))"
  else
    RUNNEL_OK=1
  fi
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "source: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (uncommitted changes)')"
  echo "nproc: $(nproc); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); ram: $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
  echo "fs: $fs on $(df --output=source "$BASE" | tail -1); kernel: $(uname -r)"
  echo "nats-server: $(nats-server --version 2>/dev/null || echo none)"
  echo "rabbitmq-server: $(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo none); erlang: $(dpkg-query -W -f '${Version}' erlang-base 2>/dev/null || echo none)"
  echo "driver crates: $(grep -A1 -E '^name = "(async-nats|rabbitmq-stream-client|tokio)"$' benches/peers/Cargo.lock | grep version | tr -d '"' | paste -sd' ')"
  echo "runnel: $([ "$RUNNEL_OK" = 1 ] && "$RUNNEL" --version 2>/dev/null || echo 'skipped')"
  echo "runs: $RUNS; 1 KiB x $MSGS_1K; 100 B x $MSGS_100; window: $WINDOW_BYTES bytes of records"
} | tee "$OUT/machine.txt" >&2

# ------------------------------------------------------------ measuring

DD_WARM=""
measure_dd() {
  local i f line secs
  f=$BASE/dd.bin
  for i in 1 2; do
    line=$(dd if=/dev/zero of="$f" bs=1M count=2048 conv=fdatasync 2>&1 | tail -1)
    rm -f "$f"
    secs=$(sed -E 's/.*copied, ([0-9.]+) s.*/\1/' <<<"$line")
    DD_WARM=$(awk -v s="$secs" 'BEGIN { printf "%.0f", 2147483648 / s / 1e6 }')
    log "dd #$i: $line ($DD_WARM MB/s)"
  done
}

# record RUN SYSTEM JSON: adds run, load, dd to the driver's JSON line
record() {
  local load
  load=$(awk '{print $1}' /proc/loadavg)
  jq -c --argjson run "$1" --arg load_before "$LOAD_BEFORE" --arg load_after "$load" \
    --arg dd "${DD_WARM:-}" --argjson scpu "$(awk -v a="$CPU_BEFORE" -v b="$(server_cpu)" 'BEGIN { printf "%.2f", b - a }')" \
    --argjson ccpu "$CLIENT_CPU" \
    '. + {run: $run, load_before: $load_before, load_after: $load_after, dd_mb_per_sec: $dd, server_cpu_s: $scpu, client_cpu_s: $ccpu}' \
    <<<"$2" >>"$RESULTS"
  tail -1 "$RESULTS" | jq -r '"    \(.system) \(.mode) \(.record_size) B: \(.msgs_per_sec | floor) msg/s, \(.mb_per_sec * 10 | floor / 10) MB/s, p99 \(.latency_us.p99) us, CPU s server \(.server_cpu_s) client \(.client_cpu_s) in \(.elapsed_s * 100 | floor / 100) s"' | tee -a "$OUT/run.log" >&2
}

# CPU seconds (user + system) used so far by the server's processes.
SERVER_PIDS=""
server_cpu() {
  local pid t=0 v
  for pid in $SERVER_PIDS; do
    v=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    t=$((t + v))
  done
  awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}

# timed OUTFILE CMD...: runs CMD with stdout to OUTFILE, stderr to the
# system's log; sets CLIENT_CPU to its CPU seconds (user + system).
timed() {
  local outfile=$1 tf rc=0
  shift
  tf=$(mktemp "$OUT/time.XXXXXX")
  /usr/bin/time -f '%U %S' -o "$tf" "$@" >"$outfile" || rc=$?
  CLIENT_CPU=$(awk 'END { printf "%.2f", $1 + $2 }' "$tf")
  rm -f "$tf"
  return $rc
}

window_for() { echo $((WINDOW_BYTES / $1)); }
count_for() { if [ "$1" = 1024 ]; then echo "$MSGS_1K"; else echo "$MSGS_100"; fi; }

run_peer_cases() { # run_peer_cases RUN SYSTEM DRIVER-ARGS...
  local run=$1 system=$2 size n w mode json
  shift 2
  for size in 1024 100; do
    n=$(count_for $size); w=$(window_for $size)
    for mode in produce consume; do
      LOAD_BEFORE=$(awk '{print $1}' /proc/loadavg)
      log "run $run $system $mode ${size} B x $n, window $w (load $LOAD_BEFORE)"
      CPU_BEFORE=$(server_cpu)
      if timed "$OUT/case.json" "$DRIVER" "$system" "$@" "$mode" --stream "bench-$size" --messages "$n" \
          --record-size "$size" --window "$w" 2>>"$OUT/$system-driver.log"; then
        json=$(cat "$OUT/case.json")
        record "$run" "$json"
      else
        log "FAILED: $system $mode $size (see $OUT/$system-driver.log)"
      fi
    done
  done
}

bench_nats() {
  local run=$1 dir port pid
  dir=$BASE/nats-data; rm -rf "$dir"; mkdir -p "$dir"
  port=$(free_port)
  nats-server -js -sd "$dir" -a 127.0.0.1 -p "$port" >"$OUT/nats-$run.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  wait_port "$port" "$pid" nats-server || return 1
  SERVER_PIDS=$pid
  run_peer_cases "$run" nats --server "127.0.0.1:$port" $NATS_ARGS
  stop_all
  rm -rf "$dir"
}

bench_rabbitmq() {
  local run=$1 dir port sport dport eport node pid epid deadline
  dir=$BASE/rabbitmq-data; rm -rf "$dir"; mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
  port=$(free_port); sport=$(free_port); dport=$(free_port); eport=$(free_port)
  node=runnelpeers@localhost
  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$port
stream.listeners.tcp.1 = 127.0.0.1:$sport
stream.advertised_host = 127.0.0.1
stream.advertised_port = $sport
EOF
  echo '[rabbitmq_stream].' >"$dir/enabled_plugins"
  export HOME=$dir/home ERL_EPMD_PORT=$eport ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_NODENAME=$node RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$port \
    RABBITMQ_DIST_PORT=$dport RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf \
    RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins RABBITMQ_MNESIA_BASE=$dir/mnesia \
    RABBITMQ_LOG_BASE=$dir/log \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  # Our own epmd (foreground, loopback, its own port) so that we stop what we started.
  epmd -address 127.0.0.1 -port "$eport" >"$OUT/epmd-$run.log" 2>&1 &
  epid=$!; PIDS+=("$epid")
  wait_port "$eport" "$epid" epmd || return 1
  /usr/lib/rabbitmq/bin/rabbitmq-server >"$OUT/rabbitmq-$run.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  deadline=$((SECONDS + 180))
  until /usr/lib/rabbitmq/bin/rabbitmqctl -n "$node" -q await_startup --timeout 60 >>"$OUT/rabbitmqctl.log" 2>&1; do
    kill -0 "$pid" 2>/dev/null || { log "rabbitmq-server exited (see $OUT/rabbitmq-$run.log)"; return 1; }
    [ $SECONDS -lt $deadline ] || { log "rabbitmq not started after 180 s"; return 1; }
    sleep 0.5
  done
  wait_port "$sport" "$pid" "rabbitmq stream listener" || return 1
  SERVER_PIDS="$pid $(pgrep -P "$pid" | tr '\n' ' ')"
  run_peer_cases "$run" rabbitmq --host 127.0.0.1 --port "$sport" $RABBITMQ_ARGS
  stop_all
  unset HOME ERL_EPMD_PORT ERL_EPMD_ADDRESS RABBITMQ_NODENAME RABBITMQ_NODE_IP_ADDRESS \
    RABBITMQ_NODE_PORT RABBITMQ_DIST_PORT RABBITMQ_CONFIG_FILE RABBITMQ_ENABLED_PLUGINS_FILE \
    RABBITMQ_MNESIA_BASE RABBITMQ_LOG_BASE RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS
  export HOME=$ORIG_HOME
  rm -rf "$dir"
}
ORIG_HOME=$HOME

bench_runnel() {
  local run=$1 dir pid addr deadline size n w mode json extra
  dir=$BASE/runnel-data; rm -rf "$dir"; mkdir -p "$dir"
  "$RUNNEL" broker --flush never --data-dir "$dir" --listen 127.0.0.1:0 --metrics-listen off \
    >"$OUT/runnel-$run.out" 2>"$OUT/runnel-$run.log" &
  pid=$!; PIDS+=("$pid")
  deadline=$((SECONDS + 60))
  until addr=$(sed -nE 's/^runnel broker [0-9]+ listening on ([^ ]+) \(gRPC\).*/\1/p' "$OUT/runnel-$run.out") && [ -n "$addr" ]; do
    kill -0 "$pid" 2>/dev/null || { log "runnel broker exited (see $OUT/runnel-$run.log)"; return 1; }
    [ $SECONDS -lt $deadline ] || { log "runnel broker not ready after 60 s"; return 1; }
    sleep 0.1
  done
  SERVER_PIDS=$pid
  for size in 1024 100; do
    n=$(count_for $size); w=$(window_for $size)
    for mode in produce consume; do
      LOAD_BEFORE=$(awk '{print $1}' /proc/loadavg)
      extra=()
      if [ "$mode" = produce ] && grep -q -- '--batch-bytes' "$OUT/runnel-bench-help.txt"; then
        extra=(--batch-bytes $((WINDOW_BYTES / 8)))
        if grep -q -- '--max-in-flight' "$OUT/runnel-bench-help.txt"; then extra+=(--max-in-flight 8); fi
      fi
      log "run $run runnel $mode ${size} B x $n ${extra[*]} $RUNNEL_ARGS (load $LOAD_BEFORE)"
      CPU_BEFORE=$(server_cpu)
      if timed "$OUT/case.json" env RUNNEL_BOOTSTRAP="$addr" "$RUNNEL" bench "$mode" --topic "bench-$size" \
          --partitions 1 --messages "$n" --record-size "$size" --acks 1 "${extra[@]}" $RUNNEL_ARGS \
          --output json 2>>"$OUT/runnel-bench.log"; then
        json=$(cat "$OUT/case.json")
        record "$run" "$(jq -c --argjson w "$w" '. + {system: "runnel", window: $w}' <<<"$json")"
      else
        log "FAILED: runnel $mode $size (see $OUT/runnel-bench.log)"
      fi
    done
  done
  stop_all
  rm -rf "$dir"
}

for ((run = 1; run <= RUNS; run++)); do
  log "=== run $run of $RUNS, uptime: $(uptime)"
  if [ "$DD" = 1 ]; then measure_dd; fi
  if wants nats; then bench_nats "$run" || { stop_all; log "nats run $run failed"; }; fi
  if wants rabbitmq; then bench_rabbitmq "$run" || { stop_all; log "rabbitmq run $run failed"; }; fi
  if wants runnel && [ "$RUNNEL_OK" = 1 ]; then bench_runnel "$run" || { stop_all; log "runnel run $run failed"; }; fi
done

# ------------------------------------------------------------ summary

python3 - "$RESULTS" "$OUT/summary.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = {}
for sysname in ("runnel", "nats-jetstream", "rabbitmq-stream"):
    for size in (1024, 100):
        for mode in ("produce", "consume"):
            rs = [r for r in rows if r["system"] == sysname and r["record_size"] == size and r["mode"] == mode]
            if rs:
                med[(sysname, size, mode)] = (
                    statistics.median(r["msgs_per_sec"] for r in rs),
                    statistics.median(r["mb_per_sec"] for r in rs),
                    statistics.median(r["latency_us"]["p99"] for r in rs),
                    len(rs), rs[0]["messages"])
dds = sorted({float(r["dd_mb_per_sec"]) for r in rows if r.get("dd_mb_per_sec")})
out = []
out.append("| case | runnel msg/s | runnel MB/s | NATS JetStream msg/s | MB/s | RabbitMQ stream msg/s | MB/s | runnel / max(peers) |")
out.append("|---|---|---|---|---|---|---|---|")
def cell(k):
    v = med.get(k)
    return ("%s" % f"{v[0]:,.0f}", "%.1f" % v[1]) if v else ("pending", "pending")
for size in (1024, 100):
    for mode in ("produce", "consume"):
        n = next((v[4] for k, v in med.items() if k[1] == size), 0)
        r, nt, rb = cell(("runnel", size, mode)), cell(("nats-jetstream", size, mode)), cell(("rabbitmq-stream", size, mode))
        peers = [med[k][0] for k in (("nats-jetstream", size, mode), ("rabbitmq-stream", size, mode)) if k in med]
        ratio = "%.2fx" % (med[("runnel", size, mode)][0] / max(peers)) if ("runnel", size, mode) in med and peers else "pending"
        label = f"{'1 KiB' if size == 1024 else '100 B'} {mode} ({n:,})"
        out.append(f"| {label} | {r[0]} | {r[1]} | {nt[0]} | {nt[1]} | {rb[0]} | {rb[1]} | {ratio} |")
out.append("")
out.append("p99 latency (us, median of runs): " + "; ".join(
    f"{k[0]} {k[1]} B {k[2]} {v[2]}" for k, v in sorted(med.items())))
out.append("")
out.append("| system | case | elapsed s | server CPU s | client CPU s | cores busy (server + client) |")
out.append("|---|---|---|---|---|---|")
for sysname in ("runnel", "nats-jetstream", "rabbitmq-stream"):
    for size in (1024, 100):
        for mode in ("produce", "consume"):
            rs = [r for r in rows if r["system"] == sysname and r["record_size"] == size and r["mode"] == mode]
            if not rs or "server_cpu_s" not in rs[0]:
                continue
            el = statistics.median(r["elapsed_s"] for r in rs)
            sc = statistics.median(r["server_cpu_s"] for r in rs)
            cc = statistics.median(r["client_cpu_s"] for r in rs)
            busy = statistics.median((r["server_cpu_s"] + r["client_cpu_s"]) / r["elapsed_s"] for r in rs)
            out.append(f"| {sysname} | {'1 KiB' if size == 1024 else '100 B'} {mode} | {el:.1f} | {sc:.1f} | {cc:.1f} | {busy:.2f} |")
out.append("")
out.append("runs per cell: " + ", ".join(sorted({str(v[3]) for v in med.values()})))
if dds:
    out.append("dd #2 (divisor, MB/s) per run: " + ", ".join("%.0f" % d for d in dds) + "; median %.0f" % statistics.median(dds))
    fr = []
    for sysname in ("runnel", "nats-jetstream", "rabbitmq-stream"):
        for size in (1024, 100):
            rs = [r["mb_per_sec"] / float(r["dd_mb_per_sec"]) for r in rows if r["system"] == sysname
                  and r["record_size"] == size and r["mode"] == "produce" and r.get("dd_mb_per_sec")]
            if rs:
                fr.append(f"{sysname} {size} B {statistics.median(rs):.2f}")
    out.append("produce MB/s / same-run dd #2 (median of runs): " + "; ".join(fr))
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
log "results in $OUT"
