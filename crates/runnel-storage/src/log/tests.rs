use super::*;
use bytes::Bytes;
use runnel_batch::{BatchBuilder, Compression, NewRecord};
use std::sync::Arc;

pub(crate) fn batch(n: usize, value_len: usize, ts: i64) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    let value = vec![b'x'; value_len];
    for i in 0..n {
        b.push(NewRecord {
            key: None,
            value: &value,
            headers: &[],
            timestamp: ts + i as i64,
        });
    }
    b.finish().unwrap()
}

fn small() -> LogConfig {
    LogConfig {
        segment_bytes: 16 << 10,
        index_interval_bytes: 512,
        index_max_bytes: 1200,
        max_batch_bytes: 8 << 10,
        flush: FlushPolicy::Never,
        retention_ms: None,
        ..Default::default()
    }
}

#[test]
fn append_read_roll_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    let mut expect = Vec::new();
    for i in 0..200u64 {
        let info = log
            .append(&batch(3, 100, i as i64 * 10), 1 + i / 50)
            .unwrap();
        assert_eq!(info.base_offset, i * 3);
        assert_eq!(info.raft_index, i + 1);
        expect.push(info);
    }
    assert!(log.segments().unwrap().len() > 3, "rolled");
    let check = |log: &Log| {
        for (i, info) in expect.iter().enumerate() {
            for off in info.base_offset..=info.last_offset {
                let r = log.read(off, u64::MAX, 1).unwrap();
                assert_eq!(r.first_offset, info.base_offset, "read {off}");
                assert_eq!(r.batch_count, 1);
                let v = BatchView::new(&r.bytes).unwrap();
                assert_eq!(v.header().raft_index, info.raft_index);
                assert_eq!(v.header().raft_term, info.raft_term);
            }
            assert_eq!(log.term(i as u64 + 1).unwrap(), info.raft_term);
        }
        assert_eq!(log.term(0).unwrap(), 0);
        assert_eq!(log.last_index().unwrap(), 200);
        let e = log.entries(10, 20, None).unwrap();
        assert_eq!(e.len(), 10);
        assert_eq!(BatchView::new(&e[0]).unwrap().header().raft_index, 10);
        assert_eq!(log.offset_for_timestamp(505).unwrap(), Some(51 * 3));
        assert_eq!(log.offset_for_timestamp(502).unwrap(), Some(50 * 3 + 2));
        assert_eq!(log.offset_for_timestamp(-5).unwrap(), Some(0));
        assert_eq!(log.offset_for_timestamp(1_000_000).unwrap(), None);
    };
    check(&log);
    drop(log);
    let log = Log::open(dir.path(), small()).unwrap();
    check(&log);
    let info = log.append(&batch(1, 10, 5000), 9).unwrap();
    assert_eq!(info.base_offset, 600);
}

#[test]
fn truncate_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    for i in 0..200u64 {
        log.append(&batch(2, 200, i as i64), 1 + i / 20).unwrap();
    }
    log.truncate_from_index(150).unwrap();
    assert_eq!(log.last_index().unwrap(), 149);
    assert_eq!(log.log_end_offset().unwrap(), 298);
    assert_eq!(log.term(149).unwrap(), 8);
    let info = log.append(&batch(1, 10, 0), 20).unwrap();
    assert_eq!((info.base_offset, info.raft_index), (298, 150));
    drop(log);
    let log = Log::open(dir.path(), small()).unwrap();
    assert_eq!(log.last_index().unwrap(), 150);
    assert_eq!(log.term(150).unwrap(), 20);
    assert_eq!(log.term(149).unwrap(), 8);
    let segs = log.segments().unwrap();
    let r = log.delete_records(segs[2].base_offset + 1).unwrap();
    assert_eq!(r, segs[2].base_offset + 1);
    let rep = log.apply_retention(0, u64::MAX).unwrap();
    assert_eq!(rep.deleted_segments, 2);
    assert_eq!(log.first_index().unwrap(), segs[2].base_index);
    let t = log.term(segs[2].base_index - 1).unwrap();
    assert!(matches!(
        log.term(segs[2].base_index - 2),
        Err(StorageError::Compacted { .. })
    ));
    drop(log);
    let log = Log::open(dir.path(), small()).unwrap();
    assert_eq!(log.term(segs[2].base_index - 1).unwrap(), t);
    assert!(matches!(
        log.read(segs[2].base_offset, u64::MAX, 100),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    log.read(segs[2].base_offset + 1, u64::MAX, 100).unwrap();
    // Below the log start offset is refused and changes nothing.
    assert!(matches!(
        log.truncate_from_index(segs[2].base_index),
        Err(StorageError::Invalid(_))
    ));
    assert!(log.truncate_from_index(segs[2].base_index - 1).is_err());
    log.truncate_from_index(segs[2].base_index + 1).unwrap();
    assert_eq!(log.last_index().unwrap(), segs[2].base_index);
    assert_eq!(log.log_end_offset().unwrap(), segs[2].base_offset + 2);
}

/// Index entries reach the index file only once the log bytes they point
/// at are fsynced, so recovery can trust them after a power loss.
#[test]
fn index_entries_on_disk_cover_only_durable_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1 << 20,
        ..small()
    };
    let log = Log::open(dir.path(), config).unwrap();
    for i in 0..50 {
        log.append(&batch(2, 300, i), 1).unwrap();
    }
    let index = dir.path().join(crate::filename::segment_file_name(
        0,
        crate::filename::INDEX_EXT,
    ));
    let stored = |path: &std::path::Path| {
        std::fs::read(path)
            .unwrap()
            .chunks(crate::ENTRY_LEN)
            .take_while(|e| e.iter().any(|b| *b != 0))
            .count()
    };
    assert_eq!(stored(&index), 0, "nothing is durable yet");
    log.flush().unwrap();
    let after_flush = stored(&index);
    assert!(
        after_flush > 10,
        "flushed data is indexed on disk ({after_flush} entries)"
    );
    for i in 0..20 {
        log.append(&batch(2, 300, i), 1).unwrap();
    }
    assert_eq!(
        stored(&index),
        after_flush,
        "new entries wait for the next fsync"
    );
    // Reads still use the pending entries.
    log.read(60, u64::MAX, 1).unwrap();
}

/// The recovery tolerance policy, tested per mode on the same torn tail.
#[test]
fn recovery_policy_per_mode() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    let mut ends = Vec::new();
    for i in 0..5 {
        ends.push(log.append(&batch(1, 100, i), 1).unwrap());
    }
    drop(log);
    let path = dir.path().join(crate::filename::segment_file_name(
        0,
        crate::filename::LOG_EXT,
    ));
    let bytes = std::fs::read(&path).unwrap();
    let batch_len = batch(1, 100, 0).len();
    // Tear the last batch: zero its second half.
    let torn = 4 * batch_len + batch_len / 2;
    let mut damaged = bytes.clone();
    damaged[torn..5 * batch_len].fill(0);
    std::fs::write(&path, &damaged).unwrap();

    let refuse = LogConfig {
        recovery: crate::RecoveryPolicy::Refuse,
        ..small()
    };
    match Log::open(dir.path(), refuse) {
        Err(StorageError::Corrupt { position, .. }) => assert_eq!(position, 4 * batch_len as u64),
        other => panic!("refuse must fail with Corrupt, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        damaged,
        "refuse changes nothing"
    );

    let (log, report) = Log::open_with_report(dir.path(), small()).unwrap();
    assert!(report.recovery.truncated.is_some());
    assert_eq!(log.log_end_offset().unwrap(), 4);
    assert_eq!(log.last_index().unwrap(), 4);
}

/// A term flipped on disk (outside the CRC) is never handed to Raft.
#[test]
fn entries_refuse_a_term_that_disagrees_with_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    for i in 0..100u64 {
        log.append(&batch(1, 500, i as i64), 1 + i / 10).unwrap();
    }
    assert!(log.segments().unwrap().len() > 2);
    drop(log);
    // Raft term of the first batch of the first (sealed) segment: bytes 12..20.
    let path = dir.path().join(crate::filename::segment_file_name(
        0,
        crate::filename::LOG_EXT,
    ));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[12] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    match log.entries(1, 3, None) {
        Err(StorageError::Corrupt {
            path: p, position, ..
        }) => {
            assert_eq!((p, position), (path, 0));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(log.term(1).unwrap(), 1, "term() answers from the runs");
    assert_eq!(
        log.entries(2, 4, None).unwrap().len(),
        2,
        "other entries are served"
    );
}

#[test]
fn append_verified_stores_what_append_stores() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = Log::open(dir_a.path(), small()).unwrap();
    let b = Log::open(dir_b.path(), small()).unwrap();
    for i in 0..40i64 {
        let bytes = batch(2, 90, i * 10);
        let via_bytes = a.append(&bytes, 1).unwrap();
        let verified = VerifiedBatch::new(bytes).unwrap();
        let via_verified = b.append_verified(&verified, 1).unwrap();
        assert_eq!(via_bytes.base_offset, via_verified.base_offset, "batch {i}");
        assert_eq!(via_bytes.last_offset, via_verified.last_offset, "batch {i}");
    }
    let ra = a.read(0, u64::MAX, usize::MAX).unwrap();
    let rb = b.read(0, u64::MAX, usize::MAX).unwrap();
    assert_eq!(ra.bytes, rb.bytes);
    // The size limit holds for verified batches too.
    let big = VerifiedBatch::new(batch(1, 9 << 10, 0)).unwrap();
    assert!(matches!(
        b.append_verified(&big, 1),
        Err(StorageError::BatchTooLarge { .. })
    ));
}

/// `reset_to` drops every segment and starts the log after a snapshot
/// point; Raft's view of it (RAFT.md, traps 1, 2, 16) holds before and
/// after a reopen, and appends continue from there.
#[test]
fn reset_to_starts_the_log_after_a_snapshot_point() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    for i in 0..120u64 {
        log.append(&batch(2, 300, i as i64), 1 + i / 40).unwrap();
    }
    assert!(log.segments().unwrap().len() > 2);
    assert_eq!(log.compacted().unwrap(), (0, 0));
    // An offset below the old log end: a follower's diverged tail went further.
    log.reset_to(100, 500, 7).unwrap();
    let check = |log: &Log, ctx: &str| {
        assert_eq!(log.log_start_offset().unwrap(), 100, "{ctx}");
        assert_eq!(log.log_end_offset().unwrap(), 100, "{ctx}");
        assert_eq!(log.durable_offset(), 100, "{ctx}");
        assert_eq!(log.first_index().unwrap(), 501, "{ctx}");
        assert_eq!(log.last_index().unwrap(), 500, "{ctx}");
        assert_eq!(log.term(500).unwrap(), 7, "{ctx}");
        assert_eq!(log.compacted().unwrap(), (500, 7), "{ctx}");
        assert!(
            matches!(
                log.term(499),
                Err(StorageError::Compacted {
                    index: 499,
                    first_index: 501
                })
            ),
            "{ctx}"
        );
        assert!(
            matches!(
                log.term(501),
                Err(StorageError::Unavailable {
                    index: 501,
                    last_index: 500
                })
            ),
            "{ctx}"
        );
        assert!(
            matches!(
                log.entries(500, 501, None),
                Err(StorageError::Compacted { .. })
            ),
            "{ctx}"
        );
        let segs = log.segments().unwrap();
        assert_eq!(segs.len(), 1, "{ctx}: {segs:?}");
        assert_eq!(
            (segs[0].base_offset, segs[0].base_index, segs[0].size),
            (100, 501, 0)
        );
        let r = log.read(100, u64::MAX, 1 << 20).unwrap();
        assert_eq!(r.batch_count, 0, "{ctx}");
    };
    check(&log, "after reset");
    let files = |d: &std::path::Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        files(dir.path()),
        [
            "00000000000000000100.index",
            "00000000000000000100.log",
            "00000000000000000100.timeindex",
            "partition.state"
        ]
    );
    drop(log);
    let (log, report) = Log::open_with_report(dir.path(), small()).unwrap();
    assert!(
        report.removed_files.is_empty() && !report.state_rebuilt,
        "{report:?}"
    );
    check(&log, "after reopen");
    // Older snapshots are refused; a term below the snapshot's too.
    assert!(matches!(
        log.reset_to(0, 499, 9),
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        log.append_entry(&batch(1, 10, 0), 6, 501),
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        log.truncate_from_index(500),
        Err(StorageError::Invalid(_))
    ));
    check(&log, "after refused calls");
    let info = log.append_entry(&batch(3, 10, 0), 7, 501).unwrap();
    assert_eq!(
        (info.base_offset, info.last_offset, info.raft_index),
        (100, 102, 501)
    );
    let info = log.append_entry(&batch(1, 10, 0), 8, 502).unwrap();
    assert_eq!(info.base_offset, 103);
    assert_eq!(
        (
            log.term(500).unwrap(),
            log.term(501).unwrap(),
            log.term(502).unwrap()
        ),
        (7, 7, 8)
    );
    log.truncate_from_index(502).unwrap();
    assert_eq!(log.last_index().unwrap(), 501);
    drop(log);
    let log = Log::open(dir.path(), small()).unwrap();
    assert_eq!(log.last_index().unwrap(), 501);
    assert_eq!(log.log_end_offset().unwrap(), 103);
    assert_eq!(log.term(500).unwrap(), 7);
    assert_eq!(
        BatchView::new(&log.entries(501, 502, None).unwrap()[0])
            .unwrap()
            .header()
            .raft_index,
        501
    );
    // Resetting to the same point again (or further) is allowed.
    log.reset_to(5000, 600, 9).unwrap();
    assert_eq!(log.append(&batch(1, 10, 0), 9).unwrap().base_offset, 5000);
}

/// Retention persists the compacted `(index, term)` before it unlinks:
/// `term(first_index - 1)` answers from memory, also after a reopen.
#[test]
fn term_before_the_first_index_survives_retention_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    for i in 0..150u64 {
        log.append(&batch(1, 400, i as i64), 1 + i / 7).unwrap();
    }
    let segs = log.segments().unwrap();
    log.delete_records(segs[3].base_offset).unwrap();
    let rep = log.apply_retention(0, u64::MAX).unwrap();
    assert_eq!(rep.deleted_segments, 3);
    let first = segs[3].base_index;
    let want = 1 + (first - 2) / 7;
    let check = |log: &Log| {
        assert_eq!(log.first_index().unwrap(), first);
        assert_eq!(log.compacted().unwrap(), (first - 1, want));
        assert_eq!(log.term(first - 1).unwrap(), want);
        assert!(matches!(
            log.term(first - 2),
            Err(StorageError::Compacted { .. })
        ));
        assert!(matches!(
            log.term(151),
            Err(StorageError::Unavailable { .. })
        ));
    };
    check(&log);
    drop(log);
    check(&Log::open(dir.path(), small()).unwrap());
}

/// `crash` keeps exactly what was fsynced: a flush, a roll's seal, a
/// truncation; appends after the last of them are lost, and batches read
/// before the crash stay readable.
#[test]
fn crash_keeps_exactly_the_durable_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    for i in 0..10 {
        log.append(&batch(2, 100, i), 1).unwrap();
    }
    log.flush().unwrap();
    assert_eq!(log.durable_offset(), 20);
    for i in 0..5 {
        log.append(&batch(2, 100, i), 2).unwrap();
    }
    let unsynced = log.read(20, u64::MAX, usize::MAX).unwrap();
    assert_eq!(log.durable_offset(), 20);
    log.crash().unwrap();
    assert_eq!(
        unsynced.batch_count, 5,
        "bytes read before the crash stay valid"
    );
    BatchView::new(&unsynced.bytes).unwrap();
    let (log, report) = Log::open_with_report(dir.path(), small()).unwrap();
    assert_eq!(report.recovery.truncated, None, "{report:?}");
    assert_eq!(log.log_end_offset().unwrap(), 20);
    assert_eq!(log.last_index().unwrap(), 10);
    assert_eq!(log.term(10).unwrap(), 1);
    assert!(matches!(
        log.term(11),
        Err(StorageError::Unavailable { .. })
    ));
    // A lost entry's term run does not outlive it: term 1 may go on.
    log.append(&batch(1, 10, 0), 1).unwrap();

    // Across rolls: a roll leaves the sealed segment's fsync to the next
    // flush or roll, so all sealed segments but the last are durable; the
    // rest is lost. A truncation is durable at once.
    for i in 0..100u64 {
        log.append(&batch(2, 300, i as i64), 3).unwrap();
    }
    let segs = log.segments().unwrap();
    assert!(segs.len() > 3);
    let sealing_base = segs[segs.len() - 2].base_offset;
    assert_eq!(log.durable_offset(), sealing_base);
    let copy = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
    }
    log.truncate_from_index(50).unwrap();
    let end = log.log_end_offset().unwrap();
    assert_eq!(log.durable_offset(), end);
    log.append(&batch(2, 300, 0), 4).unwrap();
    log.crash().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    assert_eq!(
        (log.log_end_offset().unwrap(), log.last_index().unwrap()),
        (end, 49)
    );
    {
        // The copy taken before the truncation, as a crash could have left
        // it then: the last sealed segment torn half-way (not durable), the
        // active one intact. Open cuts the torn batch and drops the active
        // segment, which follows a hole.
        let sealing = &segs[segs.len() - 2];
        let len = batch(2, 300, 0).len() as u64;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(copy.path().join(sealing.path.file_name().unwrap()))
            .unwrap();
        f.set_len(sealing.size / 2 + 7).unwrap();
        let whole = (sealing.size / 2 + 7) / len;
        let (log, report) = Log::open_with_report(copy.path(), small()).unwrap();
        assert_eq!(report.removed_files.len(), 1, "{report:?}");
        assert!(report.recovery.truncated.is_some(), "{report:?}");
        assert_eq!(
            log.log_end_offset().unwrap(),
            sealing.base_offset + 2 * whole
        );
        assert_eq!(log.segments().unwrap().len(), segs.len() - 1);
        let refuse = LogConfig {
            recovery: crate::RecoveryPolicy::Refuse,
            ..small()
        };
        drop(log);
        let log = Log::open(copy.path(), refuse).unwrap();
        assert_eq!(
            log.log_end_offset().unwrap(),
            sealing.base_offset + 2 * whole
        );
    }
    assert_eq!(log.term(49).unwrap(), 3);

    // A reset is durable at once; under flush=always every append is.
    log.reset_to(1000, 70, 5).unwrap();
    log.crash().unwrap();
    let config = LogConfig {
        flush: FlushPolicy::Always,
        ..small()
    };
    let log = Log::open(dir.path(), config.clone()).unwrap();
    assert_eq!(
        (log.first_index().unwrap(), log.log_end_offset().unwrap()),
        (71, 1000)
    );
    for i in 0..30 {
        log.append(&batch(2, 300, i), 5).unwrap();
    }
    let end = log.log_end_offset().unwrap();
    log.crash().unwrap();
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!(log.log_end_offset().unwrap(), end);
    assert_eq!(log.last_index().unwrap(), 100);
}

/// A roll does not fsync the sealed segment (it would stall the appender
/// and everyone behind the log's lock): the next flush fsyncs it with the
/// active segment, outside the lock; a failure there fails the log, and a
/// reopen still finds everything that was written.
#[test]
fn a_roll_leaves_the_seal_fsync_to_the_next_flush() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(crate::Faults::new());
    let config = LogConfig {
        faults: Some(faults.clone()),
        ..small()
    };
    let log = Log::open(dir.path(), config.clone()).unwrap();
    let mut end = 0;
    while log.segments().unwrap().len() < 2 {
        end = log.append(&batch(2, 300, 0), 1).unwrap().last_offset + 1;
    }
    let sealed = log.segments().unwrap()[0].clone();
    assert_eq!(log.fsync_count(), 0, "the roll did not fsync the data");
    assert_eq!(log.durable_offset(), 0, "nothing is durable yet");
    // Reads of the sealed segment work meanwhile.
    let r = log.read(0, u64::MAX, usize::MAX).unwrap();
    assert_eq!(r.next_offset, sealed.next_offset);
    log.flush().unwrap();
    assert_eq!(
        log.fsync_count(),
        2,
        "the sealed segment, then the active one"
    );
    assert_eq!(log.durable_offset(), end);
    // The sealed segment's indexes are on disk and mapped.
    let index = std::fs::metadata(dir.path().join(crate::filename::segment_file_name(
        0,
        crate::filename::INDEX_EXT,
    )))
    .unwrap()
    .len();
    assert!(index > 0 && index % crate::ENTRY_LEN as u64 == 0, "{index}");

    // A second roll without a flush finishes the pending seal itself.
    let segments = log.segments().unwrap().len();
    while log.segments().unwrap().len() < segments + 2 {
        end = log.append(&batch(2, 300, 0), 1).unwrap().last_offset + 1;
    }
    let segs = log.segments().unwrap();
    assert_eq!(log.durable_offset(), segs[segs.len() - 2].base_offset);

    // The fsync of the pending seal fails: the flush fails the log.
    faults.fail_syncs(true);
    let e = log.flush().unwrap_err();
    assert!(matches!(e, StorageError::Io { op: "fsync", .. }), "{e}");
    faults.clear();
    assert!(matches!(
        log.append(&batch(1, 10, 0), 1),
        Err(StorageError::Failed { .. })
    ));
    drop(log);
    let (log, report) = Log::open_with_report(dir.path(), config).unwrap();
    assert_eq!(report.recovery.truncated, None, "{report:?}");
    assert_eq!(log.log_end_offset().unwrap(), end);
    assert_eq!(log.segments().unwrap().len(), segs.len());
    log.close().unwrap();
}

/// Pages of `path` in the page cache (mincore over a fresh map).
fn resident_pages(path: &std::path::Path) -> usize {
    let file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    if len == 0 {
        return 0;
    }
    // SAFETY: a read-only map of a file no one shrinks during the test.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let page = 4096;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: `vec` has one byte per page of the mapping.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut _, len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore");
    vec.iter().filter(|b| **b & 1 == 1).count()
}

#[test]
fn drop_cached_evicts_the_oldest_data_and_reads_still_see_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    for i in 0..60u64 {
        log.append(&batch(4, 200, i as i64), 1).unwrap();
    }
    let segments = log.segments().unwrap();
    assert!(segments.len() > 3, "rolled");
    let total: u64 = segments.iter().map(|s| s.size).sum();
    assert_eq!(
        log.cached_bytes().unwrap(),
        total,
        "everything written counts"
    );
    let sealed: Vec<_> = segments[..segments.len() - 1].to_vec();
    let sealed_bytes: u64 = sealed.iter().map(|s| s.size).sum();
    assert!(
        sealed.iter().all(|s| resident_pages(&s.path) > 0),
        "fresh writes are cached"
    );

    // Keep one sealed segment's worth: only the oldest go.
    let keep = total - sealed[0].size;
    assert_eq!(log.drop_cached(keep).unwrap(), sealed[0].size);
    assert_eq!(log.cached_bytes().unwrap(), keep);
    assert_eq!(
        resident_pages(&sealed[0].path),
        0,
        "the oldest segment left the cache"
    );
    assert!(resident_pages(&sealed[1].path) > 0, "newer ones stay");

    // Keep nothing: every sealed byte goes; the active segment's bytes not
    // yet handed to writeback stay.
    assert_eq!(log.drop_cached(0).unwrap(), sealed_bytes - sealed[0].size);
    assert_eq!(log.cached_bytes().unwrap(), total - sealed_bytes);
    assert!(sealed.iter().all(|s| resident_pages(&s.path) == 0));
    assert_eq!(log.drop_cached(0).unwrap(), 0, "nothing more to drop");

    // Dropping changed nothing a reader sees.
    let mut offset = 0;
    while offset < log.log_end_offset().unwrap() {
        let r = log.read(offset, u64::MAX, 1 << 20).unwrap();
        BatchView::new(&r.bytes).unwrap();
        offset = r.next_offset;
    }
    assert_eq!(offset, 240);
    drop(log);
    let log = Log::open(dir.path(), small()).unwrap();
    assert_eq!(log.log_end_offset().unwrap(), 240);
}

#[test]
fn read_recent_serves_only_the_end_of_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    // ~430 bytes per batch: 16 KiB segments roll every ~38 batches.
    for i in 0..100u64 {
        log.append(&batch(3, 100, i as i64), 1).unwrap();
    }
    let segments = log.segments().unwrap();
    assert!(segments.len() > 2, "rolled");
    let active_base = segments.last().unwrap().base_offset;
    let end = log.log_end_offset().unwrap();

    // An older segment is never "recent", however generous the distance.
    assert!(
        log.read_recent_unverified(0, u64::MAX, 1 << 20, u64::MAX)
            .unwrap()
            .is_none()
    );
    // The last batch of the active segment is, and reads as read_unverified does.
    let last = end - 3;
    let recent = log
        .read_recent_unverified(last, u64::MAX, 1 << 20, 4096)
        .unwrap()
        .expect("the log's last batch is recent");
    let plain = log.read_unverified(last, u64::MAX, 1 << 20).unwrap();
    assert_eq!(recent.bytes, plain.bytes);
    assert_eq!(
        (recent.first_offset, recent.next_offset, recent.batch_count),
        (plain.first_offset, plain.next_offset, plain.batch_count)
    );
    // The first batch of the active segment is too far from its end for 1 KiB...
    assert!(
        log.read_recent_unverified(active_base, u64::MAX, 1 << 20, 1024)
            .unwrap()
            .is_none()
    );
    // ...and within 1 MiB: the whole segment comes back, as read_unverified gives it.
    let all = log
        .read_recent_unverified(active_base, u64::MAX, 1 << 20, 1 << 20)
        .unwrap()
        .expect("within 1 MiB");
    assert_eq!(all.next_offset, end);
    assert_eq!(
        all.bytes,
        log.read_unverified(active_base, u64::MAX, 1 << 20)
            .unwrap()
            .bytes
    );
    // At the end, an empty read; past it, the same error as any read.
    let empty = log
        .read_recent_unverified(end, u64::MAX, 1 << 20, 0)
        .unwrap()
        .unwrap();
    assert_eq!((empty.batch_count, empty.next_offset), (0, end));
    assert!(matches!(
        log.read_recent_unverified(end + 1, u64::MAX, 1 << 20, 1 << 20),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
}

/// Resident bytes (`Rss:` in /proc/self/smaps) of this process's mapping
/// that holds `addr`.
fn mapped_rss(addr: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((lo, hi)) = range.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            inside = (lo..hi).contains(&addr);
            continue;
        }
        if inside && let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap();
            return kb << 10;
        }
    }
    panic!("no mapping holds {addr:#x}");
}

/// A log of 4 MB segments holding five 1 MB batches: the first four fill
/// a sealed segment, the fifth is in the active one.
fn five_megabytes(dir: &std::path::Path) -> Log {
    let config = LogConfig {
        segment_bytes: 4 << 20,
        max_batch_bytes: 2 << 20,
        flush: FlushPolicy::Never,
        retention_ms: None,
        ..Default::default()
    };
    let log = Log::open(dir, config).unwrap();
    for i in 0..5 {
        log.append(&batch(1, 1_000_000, i), 1).unwrap();
    }
    log
}

#[test]
fn reads_of_dropped_data_come_back_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let log = five_megabytes(dir.path());
    assert_eq!(log.segments().unwrap().len(), 2);
    log.drop_cached(0).unwrap();
    let sealed = &log.segments().unwrap()[0];
    assert_eq!(resident_pages(&sealed.path), 0, "dropped");

    // The read pages in what it returns, in the calling thread: the bytes
    // are resident and mapped before anyone copies them (without it, only
    // the pages around each batch header would be).
    let read = log.read_unverified(0, u64::MAX, 8 << 20).unwrap();
    assert_eq!(read.batch_count, 4);
    let mapped = mapped_rss(read.bytes.as_ptr() as usize);
    assert!(
        mapped >= read.bytes.len() as u64 - 4096,
        "{mapped} bytes mapped of {}",
        read.bytes.len()
    );
    // Reads near the end of the log (on async threads) never touch the disk
    // that way: they read what was just written.
    assert!(
        log.read_recent_unverified(0, u64::MAX, 1 << 20, u64::MAX)
            .unwrap()
            .is_none()
    );
}

/// The page cache budget's drops unmap what they drop (mapped pages cannot
/// leave the page cache), and the periodic release leaves data still in
/// the budget mapped: unmapping it would only make readers at the tail
/// fault it back in.
#[test]
fn dropping_cached_data_unmaps_only_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let log = five_megabytes(dir.path());
    let read = log.read_unverified(0, u64::MAX, 8 << 20).unwrap();
    assert_eq!(read.batch_count, 4);
    // Touch every page, as a socket write of the response would.
    let sum = read
        .bytes
        .iter()
        .step_by(4096)
        .map(|&b| u64::from(b))
        .sum::<u64>();
    std::hint::black_box(sum);
    let addr = read.bytes.as_ptr() as usize;
    let len = read.bytes.len() as u64;
    assert!(mapped_rss(addr) >= len - 4096, "read and mapped");

    log.release_mapped_pages(false).unwrap();
    assert!(
        mapped_rss(addr) >= len - 4096,
        "data in the budget stays mapped: {} of {len}",
        mapped_rss(addr)
    );

    log.drop_cached(0).unwrap();
    assert_eq!(mapped_rss(addr), 0, "dropped data is unmapped");
    let sealed = &log.segments().unwrap()[0];
    assert_eq!(resident_pages(&sealed.path), 0, "and out of the page cache");

    // Read back from disk, it is mapped again; the periodic release
    // unmaps it (it is outside the budget).
    let again = log.read_unverified(0, u64::MAX, 8 << 20).unwrap();
    let addr = again.bytes.as_ptr() as usize;
    assert!(mapped_rss(addr) >= len - 4096);
    log.release_mapped_pages(false).unwrap();
    assert_eq!(mapped_rss(addr), 0, "read-back data is released");
}
