#!/usr/bin/env bash
# Storage benchmarks of runnel-storage beside the disk's own figures.
#
# Each run goes group by group (append_always, append_never,
# append_pagecache, reads and open, store_path). Before each writing group:
# an fsync probe (64 KiB O_DSYNC writes) and `dd` writing DD_MIB MiB with
# conv=fdatasync twice on the bench file system; the first after a pause is
# slower on a virtual disk with a write-back cache, so ratios divide by the
# second, warm one, measured right before the group. After the reads, a
# cold `dd` read of the read fixture. Then a summary of medians over the
# runs, each figure's ratio to its own divisor, and pass/fail against the
# targets of the storage issue.
#
#   benches/storage.sh                      # 3 runs, full sizes (~40 min)
#   benches/storage.sh --quick              # 1 run, small sizes (~3 min)
#   benches/storage.sh --runs 5 --filter 'append_always'
#   benches/storage.sh --profile 'append_never/64KiB'   # perf record + report
#
# Environment: RUNNEL_BENCH_DIR (default target/runnel-bench; must be on the
# disk, not tmpfs), the RUNNEL_BENCH_* sizes of crates/runnel-storage/benches/
# log.rs, DD_MIB (default RUNNEL_BENCH_APPEND_MIB or 2048).
# Output: target/runnel-bench/results-<time>/ (summary.md, raw logs, TSV).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=3
FILTER=""
STORE_PATH=1
PROFILE=""
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; RUNS=1 ;;
    --runs) RUNS=$2; shift ;;
    --filter) FILTER=$2; shift ;;
    --no-store-path) STORE_PATH=0 ;;
    --profile) PROFILE=$2; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then
  export RUNNEL_BENCH_APPEND_MIB=${RUNNEL_BENCH_APPEND_MIB:-512}
  export RUNNEL_BENCH_PAGECACHE_MIB=${RUNNEL_BENCH_PAGECACHE_MIB:-256}
  export RUNNEL_BENCH_SYNC_MIB=${RUNNEL_BENCH_SYNC_MIB:-64}
  export RUNNEL_BENCH_READ_MIB=${RUNNEL_BENCH_READ_MIB:-256}
  export RUNNEL_BENCH_OPEN_MIB=${RUNNEL_BENCH_OPEN_MIB:-1024}
  export RUNNEL_BENCH_STORE_MIB=${RUNNEL_BENCH_STORE_MIB:-64}
fi
DD_MIB=${DD_MIB:-${RUNNEL_BENCH_APPEND_MIB:-2048}}
export RUNNEL_BENCH_DIR=${RUNNEL_BENCH_DIR:-$ROOT/target/runnel-bench}
mkdir -p "$RUNNEL_BENCH_DIR"
OUT=$ROOT/target/runnel-bench/results-$(date +%Y%m%dT%H%M%S)
mkdir -p "$OUT"
CRITERION=${CARGO_TARGET_DIR:-$ROOT/target}/criterion

fs=$(findmnt -no FSTYPE -T "$RUNNEL_BENCH_DIR" 2>/dev/null || stat -f -c %T "$RUNNEL_BENCH_DIR")
case "$fs" in tmpfs|ramfs) echo "$RUNNEL_BENCH_DIR is on $fs: set RUNNEL_BENCH_DIR to the disk" >&2; exit 1 ;; esac

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  if [ "$(git -C "$ROOT" rev-parse --show-toplevel 2>/dev/null)" = "$ROOT" ]; then
    echo "source: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (uncommitted changes)')"
  else
    echo "source: ${RUNNEL_BENCH_SOURCE:-$ROOT (not a git checkout)}"
  fi
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "ram: $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
  dev=$(df --output=source "$RUNNEL_BENCH_DIR" | tail -1)
  echo "fs: $fs on $dev ($(findmnt -no OPTIONS -T "$RUNNEL_BENCH_DIR" 2>/dev/null))"
  if [ "$fs" = ext4 ]; then
    if ls /proc/fs/jbd2/ 2>/dev/null | grep -q "^$(basename "$dev")"; then echo "ext4 journal: yes"; else echo "ext4 journal: none (no jbd2 for $dev)"; fi
  fi
  echo "device write cache: $(cat /sys/block/"$(basename "$dev")"/queue/write_cache 2>/dev/null || echo '?')"
  echo "kernel: $(uname -r)"
  echo "rustc: $(rustc --version)"
  echo "read_ahead_kb: $(cat /sys/block/"$(basename "$(df --output=source "$RUNNEL_BENCH_DIR" | tail -1)")"/queue/read_ahead_kb 2>/dev/null || echo '?')"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  env | grep '^RUNNEL_BENCH_' | sort
  echo "DD_MIB=$DD_MIB"
} | tee "$OUT/machine.txt"

cargo bench -p runnel-storage --no-run 2>&1 | tail -3

# dd_write N: MB/s (10^6 bytes/s) of an N MiB write with conv=fdatasync.
dd_write() {
  local f="$RUNNEL_BENCH_DIR/dd.tmp" line
  rm -f "$f"
  line=$(dd if=/dev/zero of="$f" bs=1M count="$1" conv=fdatasync 2>&1 | tail -1)
  rm -f "$f"
  sync -f "$RUNNEL_BENCH_DIR"
  # "2147483648 bytes (2.1 GB, 2.0 GiB) copied, 2.1 s, 1.0 GB/s"
  awk '{ for (i = 1; i <= NF; i++) if ($i == "copied,") printf "%.1f\n", $1 / $(i+1) / 1e6 }' <<<"$line"
}

drop_cache_of() {
  if echo 3 2>/dev/null >/proc/sys/vm/drop_caches; then echo drop_caches;
  else dd if="$1" iflag=nocache count=0 status=none; echo fadvise; fi
}

# dd_read FILE: MB/s of a cold sequential read of FILE.
dd_read() {
  local how line
  how=$(drop_cache_of "$1")
  line=$(dd if="$1" of=/dev/null bs=8M 2>&1 | tail -1)
  awk -v how="$how" '{ for (i = 1; i <= NF; i++) if ($i == "copied,") printf "%.1f %s\n", $1 / $(i+1) / 1e6, how }' <<<"$line"
}

# collect RUN SINCE: criterion medians of benches updated after SINCE.
collect() {
  python3 - "$CRITERION" "$2" "$1" <<'PY' >>"$OUT/figures.tsv"
import json, os, sys
root, since, run = sys.argv[1], float(sys.argv[2]), sys.argv[3]
for dirpath, dirs, files in os.walk(root):
    if os.path.basename(dirpath) != "new" or "benchmark.json" not in files:
        continue
    bj = os.path.join(dirpath, "benchmark.json")
    if os.path.getmtime(bj) < since:
        continue
    b = json.load(open(bj))
    e = json.load(open(os.path.join(dirpath, "estimates.json")))
    ns = e["median"]["point_estimate"]
    tp = (b.get("throughput") or {}).get("Bytes")
    mbs = tp / (ns / 1e9) / 1e6 if tp else ""
    print(f"{run}\t{b['full_id']}\t{ns:.0f}\t{tp or ''}\t{mbs if mbs == '' else round(mbs, 1)}")
PY
}

if [ -n "$PROFILE" ]; then
  bin=$(ls -t target/release/deps/log-* | grep -v '\.d$' | head -1)
  echo "warm dd: $(dd_write "$DD_MIB") MB/s, $(dd_write "$DD_MIB") MB/s"
  name=$(tr '/' '_' <<<"$PROFILE")
  perf record --call-graph dwarf,32768 -F 499 -o "$OUT/perf-$name.data" -- \
    "$bin" --bench "$PROFILE" --profile-time 10 2>&1 | tail -5
  # Inclusive (children) and self time per symbol; the full call graph
  # stays in the .data file (perf report -i ... --stdio).
  { perf report -i "$OUT/perf-$name.data" --stdio --children --sort symbol -g none --percent-limit 2 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | grep -Ev 'criterion::|std::|core::|alloca|lang_start|libc_start|_start|main$' || true; } \
    | head -60 | tee "$OUT/perf-$name-inclusive.txt"
  { perf report -i "$OUT/perf-$name.data" --stdio --no-children --sort symbol -g none --percent-limit 0.7 2>/dev/null \
      | grep -v '^#' | grep -v '^$' || true; } | head -40 | tee "$OUT/perf-$name-self.txt"
  echo "profile: $OUT/perf-$name.*"
  exit 0
fi

printf 'run\tid\tmedian_ns\tbytes\tMB_per_s\n' >"$OUT/figures.tsv"
printf 'run\tgroup\tprobe_64k_dsync_MBps\tdd1\tdd2\n' >"$OUT/dd.tsv"
: >"$OUT/dd_read.tsv"

# fsync probe: 64 KiB O_DSYNC writes, MB/s (one write + one flush each).
probe() {
  local f="$RUNNEL_BENCH_DIR/probe.tmp" line
  line=$(dd if=/dev/zero of="$f" bs=64k count=300 oflag=dsync 2>&1 | tail -1)
  rm -f "$f"
  awk '{ for (i = 1; i <= NF; i++) if ($i == "copied,") printf "%.1f\n", $1 / $(i+1) / 1e6 }' <<<"$line"
}

# group RUN NAME BENCH FILTER DD: runs one criterion group, after a dd pair
# (the warm-up and the divisor) when DD=1.
group() {
  local run=$1 name=$2 bench=$3 filter=$4 with_dd=$5 p d1 d2 since
  if [ -n "$FILTER" ] && ! grep -Eq "$FILTER" <<<"$name"; then return; fi
  if [ "$with_dd" = 1 ]; then
    p=$(probe); d1=$(dd_write "$DD_MIB"); d2=$(dd_write "$DD_MIB")
    echo "-- $name: fsync probe $p MB/s; dd ${DD_MIB} MiB: first $d1 MB/s, second $d2 MB/s"
    printf '%s\t%s\t%s\t%s\t%s\n' "$run" "$name" "$p" "$d1" "$d2" >>"$OUT/dd.tsv"
  else
    echo "-- $name"
  fi
  since=$(date +%s)
  RUNNEL_BENCH_EXTRAS="$OUT/run$run-$name-extras.json" \
    cargo bench -p runnel-storage --bench "$bench" -- "$filter" 2>&1 | tee "$OUT/run$run-$name.txt" \
    | grep -E '^[a-z_0-9]+/|thrpt:|\[runnel-bench\] [a-z]' | grep -v 'extras written' || true
  collect "$run" "$since"
}

for run in $(seq 1 "$RUNS"); do
  echo "== run $run of $RUNS"
  # flush=always first: its fsyncs suffer most from the backlog the
  # multi-GiB append groups leave in the virtual disk's cache.
  group "$run" append_always log append_always 1
  group "$run" append_never log append_never 1
  group "$run" append_pagecache log append_pagecache 0
  group "$run" read_open log '^(crc32|read_|open_)' 0
  if [ "$STORE_PATH" = 1 ]; then group "$run" store_path store_path store_path 1; fi
  seg=$(ls "$RUNNEL_BENCH_DIR"/fixtures/read-*/*.log 2>/dev/null | head -1 || true)
  if [ -n "$seg" ]; then
    r=$(dd_read "$seg")
    echo "-- cold dd read (bs=8M) of $(basename "$(dirname "$seg")"): $r"
    printf '%s\t%s\n' "$run" "$r" >>"$OUT/dd_read.tsv"
  fi
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"

python3 - "$OUT" "${RUNNEL_BENCH_OPEN_MIB:-4096}" <<'PY' | tee "$OUT/summary.md"
import csv, json, glob, statistics as st, sys
out, open_mib = sys.argv[1], int(sys.argv[2])
med = lambda v: st.median(v) if v else float("nan")
dd = {}  # (run, group) -> row
for row in csv.DictReader(open(f"{out}/dd.tsv"), delimiter="\t"):
    dd[(row["run"], row["group"])] = {k: float(row[k]) for k in ("probe_64k_dsync_MBps", "dd1", "dd2")}
ddr = {}
for row in csv.reader(open(f"{out}/dd_read.tsv"), delimiter="\t"):
    ddr[row[0]] = (float(row[1].split()[0]), row[1].split()[1])
fig = {}
for row in csv.DictReader(open(f"{out}/figures.tsv"), delimiter="\t"):
    fig.setdefault(row["id"], {})[row["run"]] = row
runs = sorted({r for r, _ in dd} | set(ddr) | {r for v in fig.values() for r in v}, key=int)
print("## Disk baseline (MB/s = 10^6 B/s)\n")
print("dd write = `dd if=/dev/zero bs=1M conv=fdatasync`, run twice right before the group it is compared with;")
print("the second (warm) figure is the divisor. fsync probe = 64 KiB `oflag=dsync` writes.\n")
print("| run | before group | fsync probe | dd #1 | dd #2 (divisor) |")
print("|---|---|---|---|---|")
for (r, g), d in sorted(dd.items(), key=lambda x: (int(x[0][0]), x[0][1])):
    print(f"| {r} | {g} | {d['probe_64k_dsync_MBps']:.0f} | {d['dd1']:.0f} | {d['dd2']:.0f} |")
print(f"| all | median | {med([d['probe_64k_dsync_MBps'] for d in dd.values()]):.0f} | "
      f"{med([d['dd1'] for d in dd.values()]):.0f} | {med([d['dd2'] for d in dd.values()]):.0f} |")
if ddr:
    print(f"\nCold dd read (bs=8M, {next(iter(ddr.values()))[1]}): " +
          ", ".join(f"run {r} {v[0]:.0f}" for r, v in sorted(ddr.items())) + f"; median {med([v[0] for v in ddr.values()]):.0f} MB/s")
def divisor(bid, run):
    if bid.startswith("read_cold"):
        return ddr.get(run, (None,))[0]
    group = bid.split("/")[0]
    if group == "append_pagecache":
        group = "append_never"
    d = dd.get((run, group))
    return d["dd2"] if d else None
print("\n## Criterion medians per run (ratio to the same run's divisor)\n")
print("| bench | " + " | ".join(f"run {r}" for r in runs) + " | median | median ratio |")
print("|---|" + "---|" * (len(runs) + 2))
summary = {}
for bid in sorted(fig):
    cells, vals, ratios = [], [], []
    for r in runs:
        row = fig[bid].get(r)
        if not row:
            cells.append("")
            continue
        if row["MB_per_s"]:
            v = float(row["MB_per_s"])
            base = divisor(bid, r)
            cells.append(f"{v:.0f}" + (f" ({v / base:.2f})" if base else ""))
            vals.append(v)
            if base:
                ratios.append(v / base)
        else:
            v = float(row["median_ns"]) / 1e6
            cells.append(f"{v:.2f} ms")
            vals.append(v)
    m = med(vals)
    is_rate = bool(fig[bid][next(iter(fig[bid]))]["MB_per_s"])
    summary[bid] = (m, med(ratios) if ratios else None)
    print(f"| {bid} | " + " | ".join(cells) + f" | {m:.1f} {'MB/s' if is_rate else 'ms'} | " +
          (f"{med(ratios):.2f}" if ratios else "") + " |")
print("\n(read_cold divides by the cold dd read; append_pagecache by append_never's dd; crc32 and read_warm have none.)\n")
print("## Targets\n")
print("| target | figure (median of runs) | result |")
print("|---|---|---|")
def target(name, bid, ok, shown):
    if bid not in summary:
        print(f"| {name} | not run | - |"); return
    print(f"| {name} | {shown(summary[bid])} | {'PASS' if ok(summary[bid]) else 'FAIL'} |")
for size in ("64KiB", "1MiB"):
    target(f"append flush=never {size} batches >= 70% of dd", f"append_never/{size}",
           lambda s: s[1] >= 0.70, lambda s: f"{s[0]:.0f} MB/s = {s[1]:.0%} of dd")
target("flush=always, 8 appenders, 64 KiB >= 40% of dd", "append_always/8x64KiB",
       lambda s: s[1] >= 0.40, lambda s: f"{s[0]:.0f} MB/s = {s[1]:.0%} of dd")
target("warm sequential read >= 2 GB/s", "read_warm/64KiB",
       lambda s: s[0] >= 2000, lambda s: f"{s[0] / 1000:.2f} GB/s")
g = f"open_{open_mib // 1024}GiB" if open_mib % 1024 == 0 else f"open_{open_mib}MiB"
for v in ("clean", "unclean", "cold"):
    target(f"open a {g[5:]} log ({v}) < 200 ms", f"{g}/{v}", lambda s: s[0] < 200, lambda s: f"{s[0]:.1f} ms")
print("\n## Extras (median over every iteration of every run)\n")
extras = {}
for f in sorted(glob.glob(f"{out}/run*-extras.json")):
    for bid, fields in json.load(open(f)).items():
        for k, v in fields.items():
            extras.setdefault(bid, {}).setdefault(k, []).extend(v["values"])
for bid in sorted(extras):
    if bid.startswith("store_path"):
        continue
    kv = ", ".join(f"{k} {med(v):.4g}" for k, v in sorted(extras[bid].items()))
    print(f"- {bid}: {kv}")
PY
echo "results in $OUT"
