//! Failing writes and fsyncs: injected through `LogConfig::faults`, and a
//! real full disk (a small tmpfs, when the test may mount one).
//!
//! Rules under test (crate docs, "Durability rules"): a failed append cuts
//! back to where it began and leaves the log usable; a failed fsync fails
//! the log until it is reopened; a full disk is a typed error, never a crash.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{Stored, append, assert_log_holds, scratch_dir, simple_batch};
use runnel_storage::filename::{LOG_EXT, segment_file_name};
use runnel_storage::{Faults, FlushPolicy, Log, LogConfig, StorageError};

fn config(faults: &Arc<Faults>) -> LogConfig {
    LogConfig {
        segment_bytes: 8192,
        index_interval_bytes: 512,
        index_max_bytes: 600,
        max_batch_bytes: 4096,
        faults: Some(Arc::clone(faults)),
        ..common::small_config()
    }
}

/// Appends `n` batches of ~300 bytes under `term`.
fn fill(log: &Log, batches: &mut Vec<Stored>, n: usize, term: u64) {
    for _ in 0..n {
        let k = batches.len() as u64;
        let (b, recs) = simple_batch(2, 120, 1_700_000_000_000 + k as i64 * 10, k);
        batches.push(append(log, &b, &recs, term));
    }
}

/// The bytes of the active segment file from `from` on, `len` of them.
fn active_bytes(dir: &Path, log: &Log, from: u64, len: usize) -> Vec<u8> {
    let active = log.segments().unwrap().last().unwrap().clone();
    let data = fs::read(dir.join(segment_file_name(active.base_offset, LOG_EXT))).unwrap();
    let at = from as usize;
    data.get(at..at + len).map_or_else(Vec::new, <[u8]>::to_vec)
}

/// A failed write (ENOSPC after `writes` good ones: the prefix or the body
/// of the batch) leaves the log as it was, on disk too; the retry lands at
/// the same offset and index, under any term not below the last stored one.
#[test]
fn failed_write_is_cut_back() {
    // (writes before the failure, roll on the failing append, term of the failing append, term of the retry)
    let cases: &[(i64, bool, u64, Option<u64>)] = &[
        (0, false, 2, Some(2)),
        (1, false, 2, Some(2)),
        (0, true, 2, Some(2)),
        (1, true, 2, Some(2)),
        (1, false, 5, Some(7)),
        (0, false, 5, Some(3)),
        (1, true, 5, Some(2)),
        (0, false, 2, None),
        (1, true, 5, None),
    ];
    for (i, &(writes, roll, failing_term, retry_term)) in cases.iter().enumerate() {
        let ctx = format!("case {i}");
        let dir = scratch_dir();
        let faults = Arc::new(Faults::new());
        let log = Log::open(dir.path(), config(&faults)).unwrap();
        let mut batches = Vec::new();
        fill(&log, &mut batches, 10, 1);
        fill(&log, &mut batches, 3, 2);
        if roll {
            // Fill the active segment so that the next batch rolls.
            let segs = log.segments().unwrap().len();
            while log.segments().unwrap().last().unwrap().size + 400 < 8192 {
                fill(&log, &mut batches, 1, 2);
            }
            assert_eq!(log.segments().unwrap().len(), segs, "{ctx}: no roll yet");
        }
        let end = batches.last().unwrap().next_offset;
        let active_size = log.segments().unwrap().last().unwrap().size;

        faults.fail_write_after(writes, libc::ENOSPC);
        let (b, _) = simple_batch(2, 600, 1_800_000_000_000, 99);
        let err = log.append(&b, failing_term).expect_err("the write fails");
        assert!(err.is_disk_full(), "{ctx}: {err}");
        faults.clear();
        let active = log.segments().unwrap().last().unwrap().clone();
        let torn_at = if active.base_offset == end {
            0
        } else {
            active_size
        };
        assert_eq!(active.size, torn_at, "{ctx}: nothing counted as written");
        assert!(
            active_bytes(dir.path(), &log, torn_at, b.len())
                .iter()
                .all(|x| *x == 0),
            "{ctx}: the torn half-write is still in the file"
        );
        assert_log_holds(&log, &batches, &ctx);
        assert_eq!(log.term(batches.len() as u64).unwrap(), 2, "{ctx}");

        if let Some(term) = retry_term {
            let (b, recs) = simple_batch(1, 50, 1_800_000_000_000, 100);
            let s = append(&log, &b, &recs, term);
            assert_eq!(
                (s.base_offset, s.index),
                (end, batches.len() as u64 + 1),
                "{ctx}: the retry"
            );
            batches.push(s);
        }
        drop(log);
        let (log, report) = Log::open_with_report(dir.path(), config(&faults)).unwrap();
        assert!(
            !report.state_rebuilt,
            "{ctx}: the state file must stay valid: {report:?}"
        );
        assert_eq!(report.recovery.truncated, None, "{ctx}: {report:?}");
        assert_log_holds(&log, &batches, &format!("{ctx}, reopened"));
        let last = batches.last().unwrap();
        let r = log.append(&simple_batch(1, 10, 0, 7).0, last.term).unwrap();
        assert_eq!(r.base_offset, last.next_offset, "{ctx}");
    }
}

fn is_failed(r: &Result<impl std::fmt::Debug, StorageError>) -> bool {
    matches!(r, Err(StorageError::Failed { .. }))
}

/// A failed fsync fails the log: every later write is refused (never
/// retried), reads go on, and reopening recovers.
#[test]
fn failed_fsync_fails_the_log() {
    let dir = scratch_dir();
    let faults = Arc::new(Faults::new());
    let cfg = LogConfig {
        flush: FlushPolicy::Always,
        ..config(&faults)
    };
    let log = Log::open(dir.path(), cfg.clone()).unwrap();
    let mut acked = Vec::new();
    fill(&log, &mut acked, 30, 1);
    let segs = log.segments().unwrap();
    assert!(segs.len() > 1);

    faults.fail_syncs(true);
    let (b, recs) = simple_batch(2, 120, 1_800_000_000_000, 500);
    match log.append(&b, 1) {
        Err(StorageError::Io { op: "fsync", .. }) => {}
        other => panic!("append with a failing fsync: {other:?}"),
    }
    faults.clear();
    let (b2, _) = simple_batch(1, 10, 1_800_000_000_000, 501);
    assert!(
        is_failed(&log.append(&b2, 1)),
        "append after a failed fsync"
    );
    assert!(is_failed(&log.append_entry(&b2, 1, 99)), "append_entry");
    assert!(
        is_failed(&log.truncate_from_index(2)),
        "truncate_from_index"
    );
    assert!(is_failed(&log.truncate_to_offset(0)), "truncate_to_offset");
    assert!(is_failed(&log.delete_records(1)), "delete_records");
    assert!(
        is_failed(&log.apply_retention(i64::MAX, u64::MAX)),
        "apply_retention"
    );
    assert!(is_failed(&log.flush()), "flush");
    // Reads still work.
    for s in &acked {
        let r = log.read(s.base_offset, u64::MAX, 1).unwrap();
        assert!(
            r.bytes[..] == s.bytes[..],
            "read {} of a failed log",
            s.index
        );
        assert_eq!(log.term(s.index).unwrap(), 1);
    }
    assert_eq!(log.entries(1, 31, None).unwrap().len(), 30);
    drop(log);

    let log = Log::open(dir.path(), cfg.clone()).unwrap();
    // The unacknowledged batch may or may not have survived: here it did
    // (only the fsync "failed"); either way it is whole.
    let end = log.log_end_offset().unwrap();
    let acked_end = acked.last().unwrap().next_offset;
    if end != acked_end {
        acked.push(common::Stored {
            base_offset: acked_end,
            next_offset: acked_end + 2,
            index: 31,
            term: 1,
            bytes: common::stamped(&b, acked_end, 1, 31),
            records: recs,
        });
    }
    assert_log_holds(&log, &acked, "reopened after a failed fsync");
    fill(&log, &mut acked, 5, 2);
    assert_log_holds(&log, &acked, "appends after the reopen");
}

/// A roll does no fsync (on ext4 one would wait for the journal to take the
/// sealed segment's dirty data, stalling appends under the log's lock): the
/// sealed data and the directory entry of the new segment are fsynced by
/// the next flush. With fsyncs failing, the rolling append succeeds, the
/// flush fails and fails the log, and after a reopen every batch is there
/// (the one that rolled may or may not be, whole).
#[test]
fn failed_fsync_after_a_roll() {
    let dir = scratch_dir();
    let faults = Arc::new(Faults::new());
    let log = Log::open(dir.path(), config(&faults)).unwrap();
    let mut batches = Vec::new();
    while log.segments().unwrap().last().unwrap().size + 400 < 8192 {
        fill(&log, &mut batches, 1, 1);
    }
    let segments = log.segments().unwrap().len();
    faults.fail_syncs(true);
    let (b, recs) = simple_batch(2, 600, 1_800_000_000_000, 7);
    let index = batches.len() as u64 + 1;
    let info = log.append(&b, 1).expect("a roll does not fsync");
    let rolled_base = batches.last().unwrap().next_offset;
    assert_eq!(info.base_offset, rolled_base);
    assert_eq!(log.segments().unwrap().len(), segments + 1, "rolled");
    let err = log.flush().expect_err("the seal's fsync fails");
    assert!(matches!(err, StorageError::Io { op: "fsync", .. }), "{err}");
    faults.clear();
    let refused = log.append(&b, 1).expect_err("a failed log refuses appends");
    assert!(matches!(refused, StorageError::Failed { .. }), "{refused}");
    drop(log);
    let log = Log::open(dir.path(), config(&faults)).unwrap();
    if log.log_end_offset().unwrap() != rolled_base {
        batches.push(common::Stored {
            base_offset: rolled_base,
            next_offset: rolled_base + 2,
            index,
            term: 1,
            bytes: common::stamped(&b, rolled_base, 1, index),
            records: recs,
        });
    }
    assert_log_holds(&log, &batches, "reopened after a failed flush");
    fill(&log, &mut batches, 3, 2);
    assert_log_holds(&log, &batches, "appends after the reopen");
}

/// A failed interval flush (driven by `tick`) fails the log too.
#[test]
fn failed_interval_flush_fails_the_log() {
    let dir = scratch_dir();
    let faults = Arc::new(Faults::new());
    let cfg = LogConfig {
        flush: FlushPolicy::IntervalMs(10),
        ..config(&faults)
    };
    let log = Log::open(dir.path(), cfg.clone()).unwrap();
    let mut batches = Vec::new();
    fill(&log, &mut batches, 3, 1);
    faults.fail_syncs(true);
    assert!(log.tick(100).is_err(), "tick with a failing fsync");
    faults.clear();
    assert!(is_failed(&log.append(&simple_batch(1, 1, 0, 1).0, 1)));
    drop(log);
    let log = Log::open(dir.path(), cfg).unwrap();
    assert_log_holds(&log, &batches, "reopened");
}

/// A tmpfs mounted for the test; unmounted on drop, even after a failure.
struct Tmpfs {
    path: PathBuf,
    // Dropped after the unmount: removes the mount point.
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().to_path_buf();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs { path, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        match Command::new("umount").arg(&self.path).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("could not unmount {}: {other:?}", self.path.display()),
        }
    }
}

/// Writes a file until the disk is full; returns its path.
fn fill_disk(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = fs::File::create(&path).unwrap();
    let chunk = vec![0xAAu8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    path
}

/// A real full disk: appends until the file system is full, then checks the
/// error, the data, a reopen on the full disk, and recovery once retention
/// frees space.
#[test]
fn real_full_disk() {
    let fs = match Tmpfs::mount("2m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipping: cannot mount tmpfs ({why})");
            return;
        }
    };
    let dir = fs.path.join("partition-0");
    let cfg = LogConfig {
        segment_bytes: 256 << 10,
        segment_ms: None,
        index_interval_bytes: 4096,
        index_max_bytes: 4096,
        max_batch_bytes: 64 << 10,
        flush: FlushPolicy::Always,
        retention_ms: None,
        retention_bytes: None,
        faults: None,
        ..Default::default()
    };
    let log = Log::open(&dir, cfg.clone()).unwrap();
    let mut acked: Vec<Stored> = Vec::new();
    let mut rng = common::Rng::new(0xD15C);
    let err = loop {
        assert!(acked.len() < 10_000, "the disk never filled up");
        let k = acked.len() as u64;
        let (b, recs) = simple_batch(
            rng.range(1, 4) as usize,
            rng.range(1000, 20_000) as usize,
            k as i64,
            k,
        );
        match log.append(&b, 1) {
            Ok(info) => acked.push(Stored {
                base_offset: info.base_offset,
                next_offset: info.last_offset + 1,
                index: info.raft_index,
                term: 1,
                bytes: common::stamped(&b, info.base_offset, 1, info.raft_index),
                records: recs,
            }),
            Err(e) => break e,
        }
    };
    eprintln!(
        "disk full after {} batches in {} segments: {err}",
        acked.len(),
        log.segments().unwrap().len()
    );
    assert!(
        err.is_disk_full(),
        "a full disk must be a disk-full error: {err:?}"
    );
    assert!(
        log.segments().unwrap().len() > 2,
        "several segments before the disk filled"
    );
    assert_log_holds(&log, &acked, "full disk");
    // Still full: the same typed error, the log is not failed by it.
    let (b, _) = simple_batch(1, 30_000, 0, 1);
    let again = log.append(&b, 1).expect_err("still full");
    assert!(again.is_disk_full(), "{again:?}");
    drop(log);

    // Reopen on the full disk, then on a disk without a single free byte.
    let log = Log::open(&dir, cfg.clone()).unwrap_or_else(|e| panic!("reopen on a full disk: {e}"));
    assert_log_holds(&log, &acked, "reopened on a full disk");
    drop(log);
    let filler = fill_disk(&fs.path);
    let log = Log::open(&dir, cfg.clone())
        .unwrap_or_else(|e| panic!("reopen on a disk with no free byte: {e}"));
    assert_log_holds(&log, &acked, "reopened on a disk with no free byte");
    assert!(log.append(&b, 1).expect_err("no space").is_disk_full());
    drop(log);
    fs::remove_file(filler).unwrap();

    // Retention frees whole segments; appends go on.
    let log = Log::open(&dir, cfg.clone()).unwrap();
    let segs = log.segments().unwrap();
    let keep_from = segs[segs.len() - 2].base_offset;
    log.delete_records(keep_from).unwrap();
    let report = log.apply_retention(0, u64::MAX).unwrap();
    assert_eq!(report.deleted_segments, segs.len() - 2);
    let mut kept: Vec<Stored> = acked
        .iter()
        .filter(|s| s.base_offset >= keep_from)
        .cloned()
        .collect();
    for k in 0..40u64 {
        let (b, recs) = simple_batch(2, 8000, k as i64, 1000 + k);
        kept.push(append(&log, &b, &recs, 1));
    }
    assert!(
        log.segments().unwrap().len() > 2,
        "rolled into the freed space"
    );
    for s in &kept {
        let r = log.read(s.base_offset, u64::MAX, 1).unwrap();
        assert!(
            r.bytes[..] == s.bytes[..],
            "batch {} after retention",
            s.index
        );
    }
    drop(log);
    let log = Log::open(&dir, cfg).unwrap();
    assert_eq!(
        log.log_end_offset().unwrap(),
        kept.last().unwrap().next_offset
    );
    assert_eq!(log.first_index().unwrap(), kept[0].index);
}
