//! Group commit: with `FlushPolicy::Always`, concurrent appenders share
//! fsyncs; every append returns durable; offsets and Raft indexes stay dense
//! and in one order. Runs on the default temp directory (a real file system)
//! so that an fsync takes long enough for appenders to queue behind it.

mod common;

use std::sync::Arc;
use std::sync::Barrier;
use std::thread;

use bytes::Bytes;
use common::{Rec, build_batch, stamped};
use runnel_batch::Compression;
use runnel_storage::{AppendInfo, FlushPolicy, Log, LogConfig};

const THREADS: usize = 8;
const PER_THREAD: usize = 200;

fn config() -> LogConfig {
    LogConfig {
        // Small segments: rolls happen while appenders race.
        segment_bytes: 64 << 10,
        index_interval_bytes: 1024,
        index_max_bytes: 4096,
        max_batch_bytes: 16 << 10,
        flush: FlushPolicy::Always,
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn batch(thread: usize, i: usize) -> Bytes {
    let value = format!("thread {thread} batch {i} ")
        .repeat(1 + (thread + i) % 5)
        .into_bytes();
    let rec = Rec {
        key: Some(vec![thread as u8]),
        value,
        timestamp: (i * THREADS + thread) as i64,
    };
    build_batch(&[rec], Compression::None)
}

#[test]
fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), config()).unwrap());
    let started = std::time::Instant::now();
    // Batches are built up front and the threads start together, so that
    // appenders spend their time appending and queue behind each fsync.
    let start = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = Arc::clone(&log);
            let start = Arc::clone(&start);
            let batches: Vec<Bytes> = (0..PER_THREAD).map(|i| batch(t, i)).collect();
            thread::spawn(move || {
                start.wait();
                batches
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let info = log.append(&b, 3).unwrap_or_else(|e| panic!("thread {t} append {i}: {e}"));
                        assert!(
                            log.durable_offset() > info.last_offset,
                            "thread {t} append {i} returned before it was durable: {info:?}, durable {}",
                            log.durable_offset()
                        );
                        (t, i, info, b)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<(usize, usize, AppendInfo, Bytes)> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("appender panicked"))
        .collect();
    let appends = (THREADS * PER_THREAD) as u64;
    assert_eq!(all.len() as u64, appends);

    all.sort_by_key(|(_, _, info, _)| info.base_offset);
    let mut next = 0;
    for (k, (t, i, info, _)) in all.iter().enumerate() {
        assert_eq!(
            info.base_offset, next,
            "thread {t} append {i}: offsets are dense"
        );
        assert_eq!(
            info.raft_index,
            k as u64 + 1,
            "thread {t} append {i}: raft indexes follow offsets"
        );
        assert_eq!(info.raft_term, 3);
        next = info.last_offset + 1;
    }
    for t in 0..THREADS {
        let mine: Vec<usize> = all
            .iter()
            .filter(|(tt, ..)| *tt == t)
            .map(|(_, i, ..)| *i)
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "thread {t}'s appends are in its own order"
        );
    }

    let fsyncs = log.fsync_count();
    let segments = log.segments().unwrap().len();
    eprintln!(
        "{appends} appends from {THREADS} threads: {fsyncs} fsyncs, {segments} segments, {:?}",
        started.elapsed()
    );
    assert!(segments > 1, "the test wants rolls under concurrency");
    assert!(
        fsyncs * 2 <= appends,
        "group commit: {fsyncs} fsyncs for {appends} appends"
    );
    assert_eq!(log.durable_offset(), log.log_end_offset().unwrap());

    // Every acknowledged append is on disk, in every segment (a roll's
    // seal is finished by the next group commit): a power loss keeps all.
    let log = Arc::try_unwrap(log).expect("the appenders are done");
    log.crash().unwrap();
    let (log, report) = Log::open_with_report(dir.path(), config()).unwrap();
    assert_eq!(report.recovery.truncated, None);
    assert_eq!(log.log_end_offset().unwrap(), next);
    assert_eq!(log.last_index().unwrap(), appends);
    for (t, i, info, b) in &all {
        let r = log.read(info.base_offset, u64::MAX, 1).unwrap();
        let want = stamped(b, info.base_offset, info.raft_term, info.raft_index);
        assert!(
            r.bytes[..] == want[..],
            "thread {t} append {i} after reopen"
        );
    }
}

/// `IntervalMs`: appends do not fsync; `tick` flushes once the interval has
/// passed since the last flush.
#[test]
fn interval_flush_is_driven_by_tick() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogConfig {
            flush: FlushPolicy::IntervalMs(100),
            ..config()
        },
    )
    .unwrap();
    let mut end = 0;
    let cases: &[(i64, bool)] = &[
        (1_000, true),
        (1_050, false),
        (1_099, false),
        (1_100, true),
        (1_150, false),
        (5_000, true),
    ];
    for (k, &(now, flushes)) in cases.iter().enumerate() {
        let info = log.append(&batch(0, k), 1).unwrap();
        end = info.last_offset + 1;
        let before = (log.fsync_count(), log.durable_offset());
        assert!(before.1 < end, "case {k}: the append alone is not durable");
        log.tick(now).unwrap();
        if flushes {
            assert_eq!(
                log.fsync_count(),
                before.0 + 1,
                "case {k}: tick({now}) flushes"
            );
            assert_eq!(log.durable_offset(), end, "case {k}");
        } else {
            assert_eq!(
                (log.fsync_count(), log.durable_offset()),
                before,
                "case {k}: tick({now}) waits"
            );
        }
    }
    log.close().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.log_end_offset().unwrap(), end);
}
