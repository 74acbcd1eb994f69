//! Benchmarks of the partition log on the real disk: appends (flush never
//! and always, one and many appenders), sequential reads from warm and cold
//! page cache, and opening a large log. `benches/storage.sh` runs them next
//! to the disk's own `dd` figures; results are in `benches/RESULTS.md`.
//!
//! ```text
//! cargo bench -p runnel-storage --bench log                # everything
//! cargo bench -p runnel-storage --bench log -- append_never/64KiB
//! RUNNEL_BENCH_APPEND_MIB=256 RUNNEL_BENCH_OPEN_MIB=512 \
//!   cargo bench -p runnel-storage --bench log -- --quick  # a quick look
//! ```
//!
//! | group | what one iteration does (timed part) |
//! |---|---|
//! | `append_never/{16KiB,64KiB,1MiB}` | appends `RUNNEL_BENCH_APPEND_MIB` of pre-built batches to a new log with `flush = never`, then `flush()` (one fdatasync) — the same work as `dd conv=fdatasync` |
//! | `append_pagecache/...` | the same without the final fsync, `RUNNEL_BENCH_PAGECACHE_MIB` (below one segment): the CPU cost of the append path |
//! | `append_always/{N}x64KiB` | N threads append `RUNNEL_BENCH_SYNC_MIB` in total with `flush = always` (group commit); fsyncs per append go to the extras |
//! | `append_rolls/64KiB` | the broker's shape across rolls: one thread appends `RUNNEL_BENCH_ROLL_MIB` with `flush = never` to segments of `RUNNEL_BENCH_ROLL_SEGMENT_MIB` (256), while a syncer thread calls `flush()` back to back, then a final `flush()`; per-append latency percentiles and the slowest append go to the extras |
//! | `crc32/1MiB` | `crc32fast` over 64 MiB of batches: the ceiling for verified reads |
//! | `read_warm/64KiB` | reads a `RUNNEL_BENCH_READ_MIB` log from its start to its end with `Log::read(offset, u64::MAX, 1 MiB)`, pages cached and mapped |
//! | `read_cold/64KiB` | the same after the log is closed and its pages evicted (`RUNNEL_BENCH_COLD`) |
//! | `open_4GiB/{clean,unclean,cold,index_lost}` | `Log::open` of a `RUNNEL_BENCH_OPEN_MIB` log (whole 1 GiB segments, the active one a batch short of full: the most recovery can have to scan) after `close()`, after a drop without close (one unsynced batch at the tail), with the page cache evicted, and with the last sealed segment's indexes deleted (rebuilt by a full scan) |
//!
//! Records are `RUNNEL_BENCH_RECORD_BYTES` (1024) of noise without key;
//! a batch of "64 KiB" holds 64 such records (66,185 bytes with framing).
//! Throughput counts whole stored batch bytes. Fixture logs for reads and
//! open are created once under the bench directory and reused.
//!
//! Environment: `RUNNEL_BENCH_DIR` (default `target/runnel-bench`, must be
//! on the disk), `RUNNEL_BENCH_BATCH_KIB` (`16,64,1024`),
//! `RUNNEL_BENCH_APPENDERS` (`1,8`), `RUNNEL_BENCH_SAMPLES` (10),
//! `RUNNEL_BENCH_COLD` (`drop` or `fadvise`).

use std::fs;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use runnel_batch::{BatchBuilder, Compression, NewRecord};
use runnel_storage::{FlushPolicy, Log, LogConfig, StorageError};

mod disk;

const MIB: u64 = 1 << 20;
/// Bytes of batches kept in memory to append from: larger than the CPU
/// caches, so each append reads its source from memory as a received
/// batch would.
const POOL_BYTES: usize = 64 << 20;
const TIMESTAMP: i64 = 1_750_000_000_000;
const TERM: u64 = 1;
/// `max_bytes` of each read, as a fetch would ask.
const READ_MAX_BYTES: usize = 1 << 20;

/// Sizes of one run, from the environment (see the crate-level table).
struct Sizes {
    record_bytes: usize,
    batch_kib: Vec<u64>,
    append_mib: u64,
    pagecache_mib: u64,
    sync_mib: u64,
    appenders: Vec<u64>,
    read_mib: u64,
    open_mib: u64,
    samples: usize,
    roll_mib: u64,
    roll_segment_mib: u64,
    evict: disk::Evict,
}

impl Sizes {
    fn from_env() -> Sizes {
        Sizes {
            record_bytes: disk::env_u64("RUNNEL_BENCH_RECORD_BYTES", 1024, 1024) as usize,
            batch_kib: disk::env_list("RUNNEL_BENCH_BATCH_KIB", &[16, 64, 1024]),
            append_mib: disk::env_u64("RUNNEL_BENCH_APPEND_MIB", 2048, 4),
            pagecache_mib: disk::env_u64("RUNNEL_BENCH_PAGECACHE_MIB", 512, 4),
            sync_mib: disk::env_u64("RUNNEL_BENCH_SYNC_MIB", 256, 2),
            appenders: disk::env_list("RUNNEL_BENCH_APPENDERS", &[1, 8]),
            read_mib: disk::env_u64("RUNNEL_BENCH_READ_MIB", 1024, 4),
            open_mib: disk::env_u64("RUNNEL_BENCH_OPEN_MIB", 4096, 4),
            samples: disk::env_u64("RUNNEL_BENCH_SAMPLES", 10, 10) as usize,
            roll_mib: disk::env_u64("RUNNEL_BENCH_ROLL_MIB", 2048, 4),
            roll_segment_mib: disk::env_u64("RUNNEL_BENCH_ROLL_SEGMENT_MIB", 256, 1),
            evict: disk::Evict::from_env(),
        }
    }
}

/// Pre-built batches of `records` records each, all the same length.
struct Pool {
    batches: Vec<Bytes>,
    batch_len: u64,
}

impl Pool {
    fn new(records: usize, record_bytes: usize) -> Pool {
        let mut batches = Vec::new();
        let mut total = 0usize;
        let mut seed = 1;
        while total < POOL_BYTES || batches.len() < 16 {
            let value = disk::noise(record_bytes * records, seed);
            seed += 1;
            let mut b = BatchBuilder::new(Compression::None);
            for (i, v) in value.chunks(record_bytes).enumerate() {
                b.push(NewRecord {
                    key: None,
                    value: v,
                    headers: &[],
                    timestamp: TIMESTAMP + i as i64,
                });
            }
            let batch = b.finish().expect("batch");
            total += batch.len();
            batches.push(batch);
        }
        let batch_len = batches[0].len() as u64;
        assert!(
            batches.iter().all(|b| b.len() as u64 == batch_len),
            "batches differ in length"
        );
        Pool { batches, batch_len }
    }

    fn for_kib(kib: u64, sizes: &Sizes) -> Pool {
        let pool = Pool::new(records_for(kib, sizes), sizes.record_bytes);
        assert_eq!(
            pool.batch_len,
            batch_len(kib, sizes),
            "framing differs from batch_len()"
        );
        pool
    }

    fn get(&self, i: usize) -> &[u8] {
        &self.batches[i % self.batches.len()]
    }
}

fn records_for(kib: u64, sizes: &Sizes) -> usize {
    (kib * 1024) as usize / sizes.record_bytes
}

/// Length of a batch of `kib` KiB of records, known before any pool is
/// built (criterion wants the throughput before the routine runs).
fn batch_len(kib: u64, sizes: &Sizes) -> u64 {
    let value = vec![7u8; sizes.record_bytes];
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..records_for(kib, sizes) {
        b.push(NewRecord {
            key: None,
            value: &value,
            headers: &[],
            timestamp: TIMESTAMP + i as i64,
        });
    }
    b.finish().expect("batch").len() as u64
}

/// `16KiB`, `1MiB`, `4GiB`.
fn label(kib: u64) -> String {
    match kib {
        k if k % (1 << 20) == 0 => format!("{}GiB", k >> 20),
        k if k % 1024 == 0 => format!("{}MiB", k >> 10),
        k => format!("{k}KiB"),
    }
}

fn config(flush: FlushPolicy) -> LogConfig {
    LogConfig {
        flush,
        ..LogConfig::default()
    }
}

/// Ends one append iteration: closes the log, deletes it, and syncs the
/// file system so that the next iteration starts without a backlog.
fn end_iteration(log: Log, dir: tempfile::TempDir) {
    log.close().expect("close");
    drop(dir);
    disk::sync_fs(&disk::data_dir());
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

/// Files of a log directory, for eviction and residency checks.
fn files_of(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list log directory")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    files_of(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect()
}

/// `(segment file, bytes of data)` of the log in `dir` (opens it briefly).
fn data_extents(dir: &Path) -> Vec<(PathBuf, u64)> {
    let log = Log::open(dir, config(FlushPolicy::Never)).expect("open");
    let v = log
        .segments()
        .expect("segments")
        .into_iter()
        .map(|s| (s.path, s.size))
        .collect();
    log.close().expect("close");
    v
}

fn append_never(c: &mut Criterion, sizes: &Sizes) {
    let mut g = c.benchmark_group("append_never");
    g.sample_size(sizes.samples)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
    for &kib in &sizes.batch_kib {
        let id = label(kib);
        let len = batch_len(kib, sizes);
        let n = (sizes.append_mib * MIB / len).max(1);
        g.throughput(Throughput::Bytes(n * len));
        let mut pool = None;
        g.bench_function(BenchmarkId::from_parameter(&id), |b| {
            let pool = pool.get_or_insert_with(|| Pool::for_kib(kib, sizes));
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let dir = disk::scratch_dir("append-never-");
                    let log =
                        Log::open(dir.path().join("p"), config(FlushPolicy::Never)).expect("open");
                    log.append(pool.get(0), TERM).expect("first append");
                    let fsyncs = log.fsync_count();
                    let mut slowest = Duration::ZERO;
                    let mut lat_ms = Vec::with_capacity(n as usize);
                    let t = Instant::now();
                    for i in 0..n {
                        let a = Instant::now();
                        log.append(pool.get(1 + i as usize), TERM).expect("append");
                        let e = a.elapsed();
                        slowest = slowest.max(e);
                        lat_ms.push(e.as_secs_f64() * 1e3);
                    }
                    let segment_bytes = u64::from(LogConfig::default().segment_bytes);
                    let (roll_ms, other_ms, others_over) = roll_split(&lat_ms, len, segment_bytes);
                    let appended = t.elapsed();
                    log.flush().expect("flush");
                    let d = t.elapsed();
                    timed += d;
                    disk::note(
                        &format!("append_never/{id}"),
                        &[
                            ("MB_per_s", mb_per_s(n * len, d)),
                            // Where the time goes: appends (the roll's seal
                            // fsync included: see slowest_append_ms), then
                            // the final flush.
                            ("appends_s", appended.as_secs_f64()),
                            ("flush_s", (d - appended).as_secs_f64()),
                            ("slowest_append_ms", slowest.as_secs_f64() * 1e3),
                            ("slowest_roll_ms", roll_ms),
                            ("slowest_other_ms", other_ms),
                            ("others_over_20ms", others_over),
                            ("fsyncs", (log.fsync_count() - fsyncs) as f64),
                            ("segments", log.segments().expect("segments").len() as f64),
                        ],
                    );
                    end_iteration(log, dir);
                }
                timed
            });
        });
    }
    g.finish();
}

fn append_pagecache(c: &mut Criterion, sizes: &Sizes) {
    let mut g = c.benchmark_group("append_pagecache");
    g.sample_size(sizes.samples)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
    for &kib in &sizes.batch_kib {
        let id = label(kib);
        let len = batch_len(kib, sizes);
        let n = (sizes.pagecache_mib * MIB / len).max(1);
        g.throughput(Throughput::Bytes(n * len));
        let mut pool = None;
        g.bench_function(BenchmarkId::from_parameter(&id), |b| {
            let pool = pool.get_or_insert_with(|| Pool::for_kib(kib, sizes));
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let dir = disk::scratch_dir("append-pagecache-");
                    let log =
                        Log::open(dir.path().join("p"), config(FlushPolicy::Never)).expect("open");
                    log.append(pool.get(0), TERM).expect("first append");
                    let t = Instant::now();
                    for i in 0..n {
                        log.append(pool.get(1 + i as usize), TERM).expect("append");
                    }
                    let d = t.elapsed();
                    timed += d;
                    assert_eq!(
                        log.segments().expect("segments").len(),
                        1,
                        "rolled: lower RUNNEL_BENCH_PAGECACHE_MIB"
                    );
                    disk::note(
                        &format!("append_pagecache/{id}"),
                        &[("MB_per_s", mb_per_s(n * len, d))],
                    );
                    end_iteration(log, dir);
                }
                timed
            });
        });
    }
    g.finish();
}

/// What [`append_concurrently`] measured.
struct Concurrent {
    elapsed: Duration,
    fsyncs: u64,
    /// Latency of each append (ms), sorted.
    latencies_ms: Vec<f64>,
}

/// `appenders` threads append `total` batches of `pool` with flush=always.
fn append_concurrently(log: &Log, pool: &Pool, appenders: u64, total: u64) -> Concurrent {
    let per_thread = total / appenders;
    let start = Arc::new(Barrier::new(appenders as usize + 1));
    let fsyncs = log.fsync_count();
    let (elapsed, mut latencies_ms) = std::thread::scope(|s| {
        let threads: Vec<_> = (0..appenders)
            .map(|t| {
                let start = start.clone();
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(per_thread as usize);
                    start.wait();
                    for i in 0..per_thread {
                        let a = Instant::now();
                        // Concurrent `append`s each take the next index.
                        log.append(pool.get((t * per_thread + i) as usize), TERM)
                            .expect("concurrent append");
                        lat.push(a.elapsed().as_secs_f64() * 1e3);
                    }
                    lat
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        let lat: Vec<f64> = threads
            .into_iter()
            .flat_map(|h| h.join().expect("appender"))
            .collect();
        (t.elapsed(), lat)
    });
    latencies_ms.sort_by(f64::total_cmp);
    assert_eq!(
        log.durable_offset(),
        log.log_end_offset().expect("end"),
        "an append returned before it was durable"
    );
    Concurrent {
        elapsed,
        fsyncs: log.fsync_count() - fsyncs,
        latencies_ms,
    }
}

/// Latencies (ms, in append order) of the appends that rolled and of the
/// others: `(slowest roll, slowest other, others over 20 ms)`. Batches all
/// have length `len`, so append `j` (the log's `j + 1`-th, after one first
/// append) rolls when `j + 1` is a multiple of the batches per segment.
fn roll_split(lat_ms: &[f64], len: u64, segment_bytes: u64) -> (f64, f64, f64) {
    let per_segment = (segment_bytes / len).max(1) as usize;
    let (mut roll, mut other, mut over) = (0f64, 0f64, 0f64);
    for (j, &l) in lat_ms.iter().enumerate() {
        if (j + 1) % per_segment == 0 {
            roll = roll.max(l);
        } else {
            other = other.max(l);
            over += f64::from(u8::from(l > 20.0));
        }
    }
    (roll, other, over)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn append_always(c: &mut Criterion, sizes: &Sizes) {
    let mut g = c.benchmark_group("append_always");
    g.sample_size(sizes.samples)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
    let kib_list = disk::env_list("RUNNEL_BENCH_SYNC_BATCH_KIB", &[64]);
    for &kib in &kib_list {
        let len = batch_len(kib, sizes);
        let mut pool = None;
        for &appenders in &sizes.appenders {
            let total = ((sizes.sync_mib * MIB / len).max(appenders) / appenders) * appenders;
            g.throughput(Throughput::Bytes(total * len));
            let id = format!("{appenders}x{}", label(kib));
            g.bench_function(BenchmarkId::from_parameter(&id), |b| {
                let pool = pool.get_or_insert_with(|| Pool::for_kib(kib, sizes));
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let dir = disk::scratch_dir("append-always-");
                        let log = Log::open(dir.path().join("p"), config(FlushPolicy::Always))
                            .expect("open");
                        log.append(pool.get(0), TERM).expect("first append");
                        let run = append_concurrently(&log, pool, appenders, total);
                        let (d, fsyncs) = (run.elapsed, run.fsyncs);
                        timed += d;
                        disk::note(
                            &format!("append_always/{id}"),
                            &[
                                ("MB_per_s", mb_per_s(total * len, d)),
                                ("appends", total as f64),
                                ("fsyncs", fsyncs as f64),
                                ("fsyncs_per_append", fsyncs as f64 / total as f64),
                                ("appends_per_s", total as f64 / d.as_secs_f64()),
                                ("p50_ms", percentile(&run.latencies_ms, 0.5)),
                                ("p99_ms", percentile(&run.latencies_ms, 0.99)),
                            ],
                        );
                        end_iteration(log, dir);
                    }
                    timed
                });
            });
        }
    }
    g.finish();
}

/// One appender across rolls with a syncer flushing back to back (the
/// broker's appender and syncer tasks): what a roll costs the appends.
fn append_rolls(c: &mut Criterion, sizes: &Sizes) {
    let mut g = c.benchmark_group("append_rolls");
    g.sample_size(sizes.samples)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
    let kib = 64;
    let len = batch_len(kib, sizes);
    let n = (sizes.roll_mib * MIB / len).max(1);
    let segment_bytes = u32::try_from(sizes.roll_segment_mib * MIB).expect("segment below 4 GiB");
    let cfg = LogConfig {
        segment_bytes,
        max_batch_bytes: segment_bytes.min(16 << 20),
        ..config(FlushPolicy::Never)
    };
    g.throughput(Throughput::Bytes(n * len));
    let mut pool = None;
    g.bench_function(BenchmarkId::from_parameter(label(kib)), |b| {
        let pool = pool.get_or_insert_with(|| Pool::for_kib(kib, sizes));
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let dir = disk::scratch_dir("append-rolls-");
                let log = Log::open(dir.path().join("p"), cfg.clone()).expect("open");
                log.append(pool.get(0), TERM).expect("first append");
                let stop = std::sync::atomic::AtomicBool::new(false);
                let mut lat_ms = Vec::with_capacity(n as usize);
                let (d, flushes) = std::thread::scope(|s| {
                    let syncer = s.spawn(|| {
                        let mut flushes = 0u64;
                        while !stop.load(std::sync::atomic::Ordering::Acquire) {
                            if log.durable_offset() < log.log_end_offset().expect("end") {
                                log.flush().expect("flush");
                                flushes += 1;
                            } else {
                                std::thread::sleep(Duration::from_micros(200));
                            }
                        }
                        flushes
                    });
                    let t = Instant::now();
                    for i in 0..n {
                        let a = Instant::now();
                        log.append(pool.get(1 + i as usize), TERM).expect("append");
                        lat_ms.push(a.elapsed().as_secs_f64() * 1e3);
                    }
                    stop.store(true, std::sync::atomic::Ordering::Release);
                    let flushes = syncer.join().expect("syncer");
                    log.flush().expect("flush");
                    (t.elapsed(), flushes)
                });
                timed += d;
                let (roll_ms, other_ms, others_over) =
                    roll_split(&lat_ms, len, u64::from(segment_bytes));
                lat_ms.sort_by(f64::total_cmp);
                disk::note(
                    &format!("append_rolls/{}", label(kib)),
                    &[
                        ("MB_per_s", mb_per_s(n * len, d)),
                        ("p50_ms", percentile(&lat_ms, 0.5)),
                        ("p99_ms", percentile(&lat_ms, 0.99)),
                        ("p999_ms", percentile(&lat_ms, 0.999)),
                        ("slowest_append_ms", lat_ms.last().copied().unwrap_or(0.0)),
                        // Stalls: a roll's seal fsync under the lock was one.
                        (
                            "appends_over_20ms",
                            lat_ms.iter().filter(|&&l| l > 20.0).count() as f64,
                        ),
                        ("slowest_roll_ms", roll_ms),
                        ("slowest_other_ms", other_ms),
                        ("others_over_20ms", others_over),
                        ("flushes", flushes as f64),
                        ("segments", log.segments().expect("segments").len() as f64),
                    ],
                );
                end_iteration(log, dir);
            }
            timed
        });
    });
    g.finish();
}

/// Batches for the open fixture: about `mib` MiB in whole segments, the
/// last one (the active segment, which recovery scans) one batch short of
/// full: the worst case for open.
fn open_fixture_batches(mib: u64, len: u64) -> u64 {
    let per_segment = u64::from(LogConfig::default().segment_bytes) / len;
    let segments = (mib * MIB / (per_segment * len)).max(1);
    segments * per_segment - 1
}

/// A log of `batches` batches of `kib` KiB under the bench directory,
/// created once (flush never, then closed) and reused while its marker file
/// exists. Returns its directory and last Raft index.
fn fixture(name: &str, batches: u64, kib: u64, sizes: &Sizes) -> (PathBuf, u64) {
    let base = disk::data_dir().join("fixtures");
    let dir = base.join(format!("{name}-{batches}x{kib}KiB-{}B", sizes.record_bytes));
    let marker = dir.with_extension("complete");
    if let Ok(s) = fs::read_to_string(&marker) {
        return (dir, s.trim().parse().expect("marker holds the last index"));
    }
    let _ignored = fs::remove_dir_all(&dir);
    fs::create_dir_all(&base).expect("fixture directory");
    eprintln!("[runnel-bench] creating fixture {} (once)", dir.display());
    let pool = Pool::for_kib(kib, sizes);
    let log = Log::open(&dir, config(FlushPolicy::Never)).expect("open fixture");
    let t = Instant::now();
    for i in 0..batches {
        log.append(pool.get(i as usize), TERM)
            .expect("append fixture");
    }
    let last = log.last_index().expect("last index");
    log.close().expect("close fixture");
    eprintln!("[runnel-bench] fixture written in {:.1?}", t.elapsed());
    fs::write(&marker, format!("{last}\n")).expect("marker");
    (dir, last)
}

/// Reads the whole log sequentially as a consumer would; returns (bytes, batches).
fn read_all(log: &Log) -> (u64, u64) {
    let end = log.log_end_offset().expect("end");
    let mut offset = log.log_start_offset().expect("start");
    let (mut bytes, mut batches) = (0u64, 0u64);
    while offset < end {
        let r = log.read(offset, u64::MAX, READ_MAX_BYTES).expect("read");
        assert!(r.next_offset > offset, "read made no progress at {offset}");
        bytes += r.bytes.len() as u64;
        batches += r.batch_count as u64;
        black_box(&r.bytes);
        offset = r.next_offset;
    }
    (bytes, batches)
}

/// Checks that `Log::read` verifies CRCs: a byte flipped in a stored record
/// while the log is open (so recovery plays no part) must come back as
/// `Corrupt`, never as data.
fn check_read_verifies_crc(sizes: &Sizes) {
    let dir = disk::scratch_dir("crc-check-");
    let path = dir.path().join("p");
    let pool = Pool::for_kib(64, sizes);
    let log = Log::open(&path, config(FlushPolicy::Never)).expect("open");
    for i in 0..32 {
        log.append(pool.get(i), TERM).expect("append");
    }
    log.flush().expect("flush");
    let seg = segment_files(&path).remove(0);
    let at = 5 * pool.batch_len + pool.batch_len / 2;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .expect("open segment");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at).expect("read byte");
    file.write_all_at(&[byte[0] ^ 0x40], at).expect("flip byte");
    // A read returns the intact batches before the damage and stops there;
    // the read that starts at the damaged batch reports it.
    let ok = log
        .read(0, u64::MAX, READ_MAX_BYTES)
        .expect("batches before the flip read fine");
    assert_eq!(ok.batch_count, 5, "the read stops before the damaged batch");
    match log.read(ok.next_offset, u64::MAX, READ_MAX_BYTES) {
        Err(StorageError::Corrupt { position, .. }) => assert_eq!(position, 5 * pool.batch_len),
        other => panic!(
            "a flipped byte was not detected by Log::read: {:?}",
            other.map(|r| (r.first_offset, r.next_offset, r.batch_count))
        ),
    }
}

fn crc32_reference(c: &mut Criterion, sizes: &Sizes) {
    let mut g = c.benchmark_group("crc32");
    g.sample_size(sizes.samples.max(20));
    let mut pool = None;
    g.throughput(Throughput::Bytes(POOL_BYTES as u64));
    g.bench_function("64MiB", |b| {
        let pool = pool.get_or_insert_with(|| Pool::for_kib(1024, sizes));
        let total: u64 = pool.batches.iter().map(|b| b.len() as u64).sum();
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let mut done = 0u64;
                for batch in &pool.batches {
                    black_box(crc32fast::hash(black_box(batch)));
                    done += batch.len() as u64;
                    if done >= POOL_BYTES as u64 {
                        break;
                    }
                }
            }
            let d = t.elapsed();
            // Scale to exactly POOL_BYTES per iteration.
            d.mul_f64(POOL_BYTES as f64 / total.min(POOL_BYTES as u64) as f64)
        });
    });
    g.finish();
}

/// The read fixture, opened, its pages cached and mapped by a first pass.
struct WarmLog {
    log: Log,
    bytes: u64,
    batches: u64,
    resident: f64,
}

fn reads(c: &mut Criterion, sizes: &Sizes) {
    let kib = 64;
    let id = label(kib);
    let len = batch_len(kib, sizes);
    let read_batches = (sizes.read_mib * MIB / len).max(1);
    let bytes = read_batches * len;

    let mut g = c.benchmark_group("read_warm");
    g.sample_size(sizes.samples)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Bytes(bytes));
    let mut warm: Option<WarmLog> = None;
    g.bench_function(&id, |b| {
        let w = warm.get_or_insert_with(|| {
            check_read_verifies_crc(sizes);
            let (dir, _) = fixture("read", read_batches, kib, sizes);
            let log = Log::open(&dir, config(FlushPolicy::Never)).expect("open");
            let (total, batches) = read_all(&log);
            assert_eq!(total, bytes, "fixture size");
            let extents = log
                .segments()
                .expect("segments")
                .into_iter()
                .map(|s| (s.path, s.size))
                .collect::<Vec<_>>();
            WarmLog {
                log,
                bytes: total,
                batches,
                resident: disk::resident_fraction(&extents),
            }
        });
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let (n, _) = read_all(&w.log);
                assert_eq!(n, w.bytes);
            }
            let d = t.elapsed();
            disk::note(
                &format!("read_warm/{id}"),
                &[
                    ("MB_per_s", mb_per_s(w.bytes * iters, d)),
                    ("resident_fraction", w.resident),
                    ("batches", w.batches as f64),
                ],
            );
            d
        });
    });
    g.finish();
    drop(warm);

    let mut g = c.benchmark_group("read_cold");
    g.sample_size(sizes.samples)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function(&id, |b| {
        let (dir, _) = fixture("read", read_batches, kib, sizes);
        let segments = data_extents(&dir);
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                sizes.evict.evict(&files_of(&dir));
                let evicted = disk::resident_fraction(&segments);
                let log = Log::open(&dir, config(FlushPolicy::Never)).expect("open");
                let opened = disk::resident_fraction(&segments);
                let t = Instant::now();
                let (n, _) = read_all(&log);
                let d = t.elapsed();
                timed += d;
                assert_eq!(n, bytes);
                disk::note(
                    &format!("read_cold/{id}"),
                    &[
                        ("MB_per_s", mb_per_s(n, d)),
                        ("resident_after_evict", evicted),
                        ("resident_after_open", opened),
                    ],
                );
            }
            timed
        });
    });
    g.finish();
}

/// Times `Log::open` of `dir` after `before` (untimed) ran; closes it after.
fn time_open(dir: &Path, iters: u64, mut before: impl FnMut(u64)) -> Duration {
    let mut timed = Duration::ZERO;
    for i in 0..iters {
        before(i);
        let t = Instant::now();
        let log = Log::open(dir, config(FlushPolicy::Always)).expect("open");
        timed += t.elapsed();
        log.close().expect("close");
    }
    timed
}

fn open(c: &mut Criterion, sizes: &Sizes) {
    let kib = 64;
    let open_batches = open_fixture_batches(sizes.open_mib, batch_len(kib, sizes));
    let group = format!("open_{}", label(sizes.open_mib * 1024));
    let ms = |d: Duration, iters: u64| d.as_secs_f64() * 1e3 / iters as f64;
    let mut g = c.benchmark_group(&group);
    g.sample_size(sizes.samples)
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(200));
    g.bench_function("clean", |b| {
        let (dir, _) = fixture("open", open_batches, kib, sizes);
        b.iter_custom(|iters| {
            let d = time_open(&dir, iters, |_| {});
            disk::note(&format!("{group}/clean"), &[("ms", ms(d, iters))]);
            d
        });
    });

    let mut pool = None;
    let cut_to_fixture = |dir: &Path, last: u64| {
        let log = Log::open(dir, config(FlushPolicy::Always)).expect("open");
        log.truncate_from_index(last + 1).expect("truncate");
        log.close().expect("close");
    };
    g.bench_function("unclean", |b| {
        let (dir, last) = fixture("open", open_batches, kib, sizes);
        let pool = pool.get_or_insert_with(|| Pool::for_kib(kib, sizes));
        cut_to_fixture(&dir, last);
        b.iter_custom(|iters| {
            let d = time_open(&dir, iters, |i| {
                let log = Log::open(&dir, config(FlushPolicy::Never)).expect("open");
                log.append(pool.get(i as usize), TERM).expect("append");
                drop(log); // no close: the batch is in the page cache only
            });
            disk::note(&format!("{group}/unclean"), &[("ms", ms(d, iters))]);
            d
        });
        cut_to_fixture(&dir, last);
    });
    g.finish();

    let mut g = c.benchmark_group(&group);
    g.sample_size(sizes.samples)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
    g.bench_function("cold", |b| {
        let (dir, _) = fixture("open", open_batches, kib, sizes);
        let segments = data_extents(&dir);
        b.iter_custom(|iters| {
            let mut evicted = 0.0;
            let d = time_open(&dir, iters, |_| {
                sizes.evict.evict(&files_of(&dir));
                evicted = disk::resident_fraction(&segments);
            });
            disk::note(
                &format!("{group}/cold"),
                &[("ms", ms(d, iters)), ("resident_after_evict", evicted)],
            );
            d
        });
    });
    g.bench_function("index_lost", |b| {
        let (dir, _) = fixture("open", open_batches, kib, sizes);
        b.iter_custom(|iters| {
            let mut rebuilt = 0;
            let d = time_open(&dir, iters, |_| {
                let segments = segment_files(&dir);
                // The last sealed segment (the only one in a smoke test).
                let victim = &segments[segments.len().saturating_sub(2)];
                rebuilt = fs::metadata(victim).expect("stat").len();
                for ext in ["index", "timeindex"] {
                    fs::remove_file(victim.with_extension(ext)).expect("remove index");
                }
            });
            disk::note(
                &format!("{group}/index_lost"),
                &[
                    ("ms", ms(d, iters)),
                    ("rebuilt_segment_MiB", rebuilt as f64 / MIB as f64),
                ],
            );
            d
        });
    });
    g.finish();
}

fn main() {
    let sizes = Sizes::from_env();
    let dir = disk::data_dir();
    eprintln!(
        "[runnel-bench] dir {} ({}), cold = {}, record {} B",
        dir.display(),
        disk::fs_type(&dir),
        sizes.evict.name(),
        sizes.record_bytes
    );
    let mut c = Criterion::default()
        .sample_size(sizes.samples)
        .configure_from_args();
    append_never(&mut c, &sizes);
    append_pagecache(&mut c, &sizes);
    append_always(&mut c, &sizes);
    append_rolls(&mut c, &sizes);
    crc32_reference(&mut c, &sizes);
    reads(&mut c, &sizes);
    open(&mut c, &sizes);
    c.final_summary();
    disk::finish("log");
}
