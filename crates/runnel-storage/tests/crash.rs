//! Crash recovery: torn tails cut at every byte, flipped bytes in the active
//! and in sealed segments, damaged or missing indexes, leftovers of
//! interrupted deletions and state writes, a damaged state file, and
//! crashes in the middle of a roll or of retention.
//!
//! A crash is simulated on a copy of a log directory: the files are edited
//! as a crash (or the disk) could have left them, then the log is reopened.
//! The active segment is preallocated with zeros past its data, so "cut at
//! byte n" means `set_len(n)` on the copy.

mod common;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use common::{
    Rec, Rng, Stored, append, assert_log_holds, build_batch, copy_dir, file_names, scratch_dir,
    simple_batch,
};
use runnel_batch::Compression;
use runnel_storage::filename::{INDEX_EXT, LOG_EXT, TIME_INDEX_EXT, segment_file_name};
use runnel_storage::{Log, LogConfig, PartitionState, STATE_FILE, StorageError};

/// Segments of 4 KiB hold 10 to 20 batches; an index entry every one or
/// two batches.
fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        index_max_bytes: 600,
        max_batch_bytes: 4096,
        ..common::small_config()
    }
}

/// A log on disk and what it must hold.
struct Built {
    dir: tempfile::TempDir,
    batches: Vec<Stored>,
    segments: Vec<SegmentLayout>,
}

/// Where each batch of one segment lies.
#[derive(Clone, Debug)]
struct SegmentLayout {
    base_offset: u64,
    /// Indexes into `Built::batches`.
    first: usize,
    end: usize,
    /// Byte position of each batch in the `.log` file, then the data size.
    positions: Vec<u64>,
}

impl SegmentLayout {
    fn file(&self, ext: &str) -> String {
        segment_file_name(self.base_offset, ext)
    }

    fn size(&self) -> u64 {
        *self.positions.last().unwrap()
    }

    /// Number of this segment's batches wholly below byte `cut`.
    fn complete_before(&self, cut: u64) -> usize {
        self.positions[1..]
            .iter()
            .take_while(|&&end| end <= cut)
            .count()
    }

    /// The batch (number within the segment) holding byte `pos`.
    fn batch_holding(&self, pos: u64) -> usize {
        self.positions[1..]
            .iter()
            .take_while(|&&end| end <= pos)
            .count()
    }
}

/// Records with jittered timestamps, so time lookups see non-monotonic data.
fn records(rng: &mut Rng, ts: i64) -> Vec<Rec> {
    let n = rng.range(1, 4) as usize;
    let len = rng.range(20, 150) as usize;
    (0..n)
        .map(|_| Rec {
            key: (rng.range(0, 2) == 0).then(|| rng.next().to_le_bytes().to_vec()),
            value: (0..len).map(|_| rng.next() as u8).collect(),
            timestamp: ts + rng.range(0, 40) as i64 - 20,
        })
        .collect()
}

/// Appends at least `count` batches, a term bump every 7, until the active
/// segment holds at least 5 batches and the last one starts a new term; then
/// drops the log without closing it, as a crash would.
fn build(seed: u64, count: usize) -> Built {
    build_with(seed, count, &config())
}

fn build_with(seed: u64, count: usize, config: &LogConfig) -> Built {
    let dir = scratch_dir();
    let log = Log::open(dir.path(), config.clone()).unwrap();
    let mut rng = Rng::new(seed);
    let (mut term, mut ts) = (1, 1_700_000_000_000i64);
    let mut batches: Vec<Stored> = Vec::new();
    let mut bumped = false;
    for i in 0.. {
        let active = log.segments().unwrap().last().unwrap().base_offset;
        let in_active = batches.iter().filter(|b| b.base_offset >= active).count();
        let done = batches.len() >= count && in_active >= 5;
        if done && bumped {
            break;
        }
        bumped = i % 7 == 6 || done;
        if bumped {
            term += 1;
        }
        ts += rng.range(0, 50) as i64;
        let recs = records(&mut rng, ts);
        batches.push(append(
            &log,
            &build_batch(&recs, Compression::None),
            &recs,
            term,
        ));
    }
    let summaries = log.segments().unwrap();
    drop(log);
    let mut segments = Vec::new();
    let mut at = 0;
    for s in &summaries {
        let first = at;
        let mut positions = vec![0];
        while at < batches.len() && batches[at].base_offset < s.next_offset {
            positions.push(positions.last().unwrap() + batches[at].bytes.len() as u64);
            at += 1;
        }
        assert_eq!(*positions.last().unwrap(), s.size);
        segments.push(SegmentLayout {
            base_offset: s.base_offset,
            first,
            end: at,
            positions,
        });
    }
    assert!(
        segments.len() >= 4,
        "want several segments, got {}",
        segments.len()
    );
    Built {
        dir,
        batches,
        segments,
    }
}

fn copy_of(src: &Path) -> tempfile::TempDir {
    let work = scratch_dir();
    copy_dir(src, work.path());
    work
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn flip(path: &Path, pos: u64, mask: u8) {
    let mut bytes = fs::read(path).unwrap();
    bytes[pos as usize] ^= mask;
    fs::write(path, bytes).unwrap();
}

/// After recovery to `kept`: a new append continues at the right offset and
/// index (with the last kept term, even if a later term was cut away),
/// and everything survives another reopen.
fn append_and_reopen(dir: &Path, log: Log, kept: &[Stored], seed: u64, ctx: &str) {
    append_and_reopen_with(dir, log, kept, seed, ctx, &config())
}

fn append_and_reopen_with(
    dir: &Path,
    log: Log,
    kept: &[Stored],
    seed: u64,
    ctx: &str,
    config: &LogConfig,
) {
    let term = kept.last().map_or(1, |b| b.term);
    let (batch, recs) = simple_batch(2, 30, 1_800_000_000_000, seed);
    let s = append(&log, &batch, &recs, term);
    let end = kept.last().map_or(0, |b| b.next_offset);
    assert_eq!(
        (s.base_offset, s.index),
        (end, kept.len() as u64 + 1),
        "{ctx}: append after recovery"
    );
    drop(log);
    let (log, report) = Log::open_with_report(dir, config.clone()).unwrap();
    assert_eq!(
        report.recovery.truncated, None,
        "{ctx}: second recovery truncated"
    );
    let mut all = kept.to_vec();
    all.push(s);
    assert_log_holds(&log, &all, &format!("{ctx}, after append and reopen"));
}

/// Time lookups and segment timestamps against brute force.
fn assert_time_lookups(log: &Log, batches: &[Stored], ctx: &str) {
    let ts: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.records.iter().map(|r| r.timestamp))
        .collect();
    let (lo, hi) = (ts.iter().min().unwrap() - 3, ts.iter().max().unwrap() + 3);
    let mut t = lo;
    while t <= hi {
        let want = common::offset_for_timestamp(batches, 0, t);
        assert_eq!(
            log.offset_for_timestamp(t).unwrap(),
            want,
            "{ctx}: offset_for_timestamp({t})"
        );
        t += 3;
    }
    for s in log.segments().unwrap() {
        let max = batches
            .iter()
            .filter(|b| b.base_offset >= s.base_offset && b.base_offset < s.next_offset)
            .map(Stored::max_timestamp)
            .max()
            .unwrap_or(i64::MIN);
        assert_eq!(
            s.max_timestamp, max,
            "{ctx}: max timestamp of segment {}",
            s.base_offset
        );
    }
}

#[test]
fn torn_active_segment_cut_at_every_byte() {
    let built = build(1, 60);
    let active = built.segments.last().unwrap().clone();
    let n = active.end - active.first;
    assert!(n >= 4, "the active segment holds {n} batches");
    let from = active.positions[n - 3];
    // Every byte of the last three batches, then a few cuts that keep some
    // of the preallocated zeros.
    let cuts = (from..=active.size()).chain([active.size() + 1, active.size() + 100]);
    for cut in cuts {
        let ctx = format!("cut at byte {cut} of the active segment");
        let work = copy_of(built.dir.path());
        set_len(&work.path().join(active.file(LOG_EXT)), cut);
        let (log, report) =
            Log::open_with_report(work.path(), config()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let keep = active.complete_before(cut);
        assert_eq!(report.recovery.valid_end, active.positions[keep], "{ctx}");
        assert!(!report.state_rebuilt, "{ctx}");
        let kept = &built.batches[..active.first + keep];
        assert_log_holds(&log, kept, &ctx);
        append_and_reopen(work.path(), log, kept, cut, &ctx);
    }
}

/// Flips bytes of the active segment's last batches. Recovery verifies the
/// active segment from its last index entry that checks out: damage there
/// or later cuts the log to the valid prefix before the damaged batch.
/// Damage before that point is not seen at open (recovery does not read
/// the whole segment); like damage in a sealed segment it is reported by
/// the reads that reach it.
fn flip_active_tail(config: &LogConfig, seed: u64, rounds: u64) {
    let built = build_with(seed, 60, config);
    let active = built.segments.last().unwrap().clone();
    let n = active.end - active.first;
    let from = active.positions[n - 3];
    // Where recovery starts verifying, from a reopen of an undamaged copy.
    let scan_start = {
        let work = copy_of(built.dir.path());
        let (_log, report) = Log::open_with_report(work.path(), config.clone()).unwrap();
        report.recovery.valid_end - report.recovery.scanned_bytes
    };
    let mut rng = Rng::new(seed ^ 0xF11B);
    for round in 0..rounds {
        let pos = rng.range(from, active.size());
        let mask = rng.range(1, 256) as u8;
        let ctx = format!(
            "round {round}: byte {pos} of the active segment ^= {mask:#04x} (scan from {scan_start})"
        );
        let work = copy_of(built.dir.path());
        let path = work.path().join(active.file(LOG_EXT));
        flip(&path, pos, mask);
        let (log, report) = Log::open_with_report(work.path(), config.clone())
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let damaged = active.batch_holding(pos);
        let kept = if pos >= scan_start {
            assert!(
                report.recovery.truncated.is_some(),
                "{ctx}: damage went unnoticed: {report:?}"
            );
            assert_eq!(
                report.recovery.valid_end, active.positions[damaged],
                "{ctx}: {report:?}"
            );
            let kept = &built.batches[..active.first + damaged];
            assert_log_holds(&log, kept, &ctx);
            kept
        } else {
            let all = &built.batches[..];
            assert_eq!(
                log.log_end_offset().unwrap(),
                all.last().unwrap().next_offset,
                "{ctx}"
            );
            let bad = &all[active.first + damaged];
            let in_term = (12..20).contains(&(pos - active.positions[damaged]));
            for b in all {
                match log.read(b.base_offset, u64::MAX, 1) {
                    Ok(r) => assert!(
                        r.bytes[..] == b.bytes[..] || (in_term && b.index == bad.index),
                        "{ctx}: batch {} read wrong data",
                        b.index
                    ),
                    Err(StorageError::Corrupt {
                        path: p, position, ..
                    }) => {
                        assert!(
                            b.index >= bad.index,
                            "{ctx}: batch {} before the damage",
                            b.index
                        );
                        if b.index == bad.index {
                            assert_eq!(
                                (p, position),
                                (path.clone(), active.positions[damaged]),
                                "{ctx}"
                            );
                        }
                    }
                    Err(e) => panic!("{ctx}: read {}: {e}", b.index),
                }
            }
            if !in_term {
                let r = log.read(bad.base_offset, u64::MAX, 1);
                assert!(
                    matches!(r, Err(StorageError::Corrupt { .. })),
                    "{ctx}: damaged batch read: {r:?}"
                );
            }
            all
        };
        if kept.len() < built.batches.len() {
            append_and_reopen_with(work.path(), log, kept, round, &ctx, config);
            continue;
        }
        // The damage stays: check the new batch only.
        let (batch, recs) = simple_batch(2, 30, 1_800_000_000_000, round);
        let s = append(&log, &batch, &recs, kept.last().unwrap().term);
        assert_eq!(
            (s.base_offset, s.index),
            (kept.last().unwrap().next_offset, kept.len() as u64 + 1),
            "{ctx}"
        );
        drop(log);
        let log = Log::open(work.path(), config.clone()).unwrap();
        let r = log.read(s.base_offset, u64::MAX, 1).unwrap();
        assert!(r.bytes[..] == s.bytes[..], "{ctx}: new batch after reopen");
    }
}

#[test]
fn flipped_bytes_in_active_tail() {
    flip_active_tail(&config(), 2, 300);
}

/// No index entries at all: recovery verifies the whole active segment, so
/// any damage cuts the log to the valid prefix.
#[test]
fn flipped_bytes_in_unindexed_active_segment() {
    let config = LogConfig {
        index_interval_bytes: 1 << 20,
        ..config()
    };
    flip_active_tail(&config, 12, 300);
}

#[test]
fn garbage_after_the_active_tail_is_ignored() {
    let built = build(3, 60);
    let active = built.segments.last().unwrap().clone();
    for (i, offset) in [0u64, 1, 50, 200].iter().enumerate() {
        let work = copy_of(built.dir.path());
        let path = work.path().join(active.file(LOG_EXT));
        // Bytes after the data: zeros (an older version preallocated
        // segments) with one garbage byte among them.
        set_len(&path, active.size() + 256);
        flip(&path, active.size() + offset, 0x5a);
        let (log, report) = Log::open_with_report(work.path(), config()).unwrap();
        assert_eq!(report.recovery.valid_end, active.size(), "case {i}");
        assert_log_holds(&log, &built.batches, &format!("case {i}"));
        append_and_reopen(
            work.path(),
            log,
            &built.batches,
            i as u64,
            &format!("case {i}"),
        );
    }
}

/// A damaged batch in an older, sealed segment is reported by the reads that
/// reach it, naming the file and position; everything else stays readable.
#[test]
fn flipped_byte_in_sealed_segment() {
    let built = build(4, 80);
    let seg = built.segments[1].clone();
    let mut rng = Rng::new(0x5EA1);
    for round in 0..300 {
        let b = seg.first + rng.range(0, (seg.end - seg.first) as u64) as usize;
        let batch = &built.batches[b];
        let start = seg.positions[b - seg.first];
        // The bytes the CRC covers (the CRC field included): from byte 28.
        let pos = start + rng.range(28, batch.bytes.len() as u64);
        let mask = rng.range(1, 256) as u8;
        let ctx = format!(
            "round {round}: byte {pos} (batch {} at {start}) of sealed segment {} ^= {mask:#04x}",
            batch.index, seg.base_offset
        );
        let work = copy_of(built.dir.path());
        let path = work.path().join(seg.file(LOG_EXT));
        flip(&path, pos, mask);
        let log = Log::open(work.path(), config()).unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
        match log.read(batch.base_offset, u64::MAX, 1) {
            Err(StorageError::Corrupt {
                path: p, position, ..
            }) => {
                assert_eq!((p, position), (path.clone(), start), "{ctx}");
            }
            other => panic!("{ctx}: read of the damaged batch: {other:?}"),
        }
        // The fetch path skips the CRC: the damage is then caught by the
        // consumer's own check, never passed on as good data.
        match log.read_unverified(batch.base_offset, u64::MAX, 1) {
            Err(StorageError::Corrupt { .. }) => {}
            Ok(r) => assert!(
                runnel_batch::BatchView::new(&r.bytes).is_err(),
                "{ctx}: an unverified read returned damaged bytes that pass the consumer's check"
            ),
            Err(e) => panic!("{ctx}: unverified read of the damaged batch: {e}"),
        }
        assert!(
            matches!(
                log.entries(batch.index, batch.index + 1, None),
                Err(StorageError::Corrupt { .. })
            ),
            "{ctx}: entries of the damaged batch"
        );
        // Everything before it reads fine; anything after is either right or
        // reported as corrupt, never wrong data.
        for other in &built.batches {
            let r = log.read(other.base_offset, u64::MAX, 1);
            if other.index < batch.index || other.base_offset >= built.segments[2].base_offset {
                let r = r.unwrap_or_else(|e| panic!("{ctx}: read batch {}: {e}", other.index));
                assert!(
                    r.bytes[..] == other.bytes[..],
                    "{ctx}: batch {}",
                    other.index
                );
            } else if let Ok(r) = r {
                assert!(
                    r.bytes[..] == other.bytes[..],
                    "{ctx}: batch {} read wrong data",
                    other.index
                );
            }
        }
        // Time lookups never panic and never return an offset from garbage.
        for t in [i64::MIN, batch.records[0].timestamp, i64::MAX] {
            match log.offset_for_timestamp(t) {
                Ok(_) | Err(StorageError::Corrupt { .. }) => {}
                Err(e) => panic!("{ctx}: offset_for_timestamp({t}): {e}"),
            }
        }
        // Appends still work.
        let (nb, recs) = simple_batch(1, 10, 1_800_000_000_000, round);
        append(&log, &nb, &recs, built.batches.last().unwrap().term);
    }
}

/// Damage to the broker-stamped offset, length or Raft index of a sealed
/// batch (outside the CRC) is never served as data: offsets and indexes
/// must follow on from batch to batch. (The term, also outside the CRC, is
/// checked against the state file only for the active segment at recovery;
/// `Log::term` answers from the state file. The Raft index of a sealed
/// segment's first batch is where the segment's first index is read from at
/// open, so nothing cross-checks it either.)
#[test]
fn flipped_prefix_in_sealed_segment() {
    let built = build(5, 80);
    let seg = built.segments[1].clone();
    for b in seg.first..seg.end {
        let batch = &built.batches[b];
        let start = seg.positions[b - seg.first];
        let fields = if b == seg.first { 0..12u64 } else { 0..28 };
        for at in fields.filter(|at| !(12..20).contains(at)) {
            let ctx = format!(
                "byte {at} of batch {} in sealed segment {}",
                batch.index, seg.base_offset
            );
            let work = copy_of(built.dir.path());
            let path = work.path().join(seg.file(LOG_EXT));
            flip(&path, start + at, 0x10);
            let log =
                Log::open(work.path(), config()).unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
            let r = log.read(batch.base_offset, u64::MAX, 1);
            assert!(
                matches!(r, Err(StorageError::Corrupt { .. })),
                "{ctx}: damaged batch read: {r:?}"
            );
            for other in &built.batches {
                match log.read(other.base_offset, u64::MAX, 1) {
                    Ok(r) => assert!(
                        r.bytes[..] == other.bytes[..],
                        "{ctx}: read {} served wrong data",
                        other.base_offset
                    ),
                    Err(StorageError::Corrupt { .. }) => {
                        assert!(
                            other.index >= batch.index,
                            "{ctx}: batch {} before the damage unreadable",
                            other.index
                        )
                    }
                    Err(e) => panic!("{ctx}: read {}: {e}", other.base_offset),
                }
                match log.entries(other.index, other.index + 1, None) {
                    Ok(e) => assert!(
                        e[0][..] == other.bytes[..],
                        "{ctx}: entry {} served wrong data",
                        other.index
                    ),
                    Err(StorageError::Corrupt { .. }) => {}
                    Err(e) => panic!("{ctx}: entries {}: {e}", other.index),
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    Delete,
    Empty,
    Ragged,
    Zeros,
    Garbage,
    /// One byte of one entry.
    Flip {
        entry: usize,
        byte: usize,
    },
}

fn damage(path: &Path, how: Damage, rng: &mut Rng) {
    let len = fs::metadata(path).unwrap().len();
    match how {
        Damage::Delete => fs::remove_file(path).unwrap(),
        Damage::Empty => set_len(path, 0),
        Damage::Ragged => set_len(path, len.saturating_sub(5).max(1)),
        Damage::Zeros => fs::write(path, vec![0u8; len as usize]).unwrap(),
        Damage::Garbage => {
            fs::write(path, (0..len).map(|_| rng.next() as u8).collect::<Vec<_>>()).unwrap()
        }
        Damage::Flip { entry, byte } => {
            let entries = len / 12;
            if entries > 0 {
                flip(
                    path,
                    (entry as u64 % entries) * 12 + byte as u64,
                    1 << (rng.next() % 8),
                );
            }
        }
    }
}

/// Indexes are derived data: whatever happened to them, reopening answers
/// every read and time lookup correctly.
#[test]
fn damaged_indexes_are_rebuilt() {
    let built = build(6, 80);
    let mut rng = Rng::new(0x1DE);
    let mut cases = vec![
        Damage::Delete,
        Damage::Empty,
        Damage::Ragged,
        Damage::Zeros,
        Damage::Garbage,
    ];
    for entry in [0, 1, 3, 1000] {
        for byte in 0..12 {
            cases.push(Damage::Flip { entry, byte });
        }
    }
    let last = built.segments.len() - 1;
    let mut case = 0;
    for seg in [1, last - 1, last] {
        for ext in [INDEX_EXT, TIME_INDEX_EXT] {
            for &how in &cases {
                case += 1;
                let ctx = format!("case {case}: {how:?} on {} of segment {seg}", ext);
                let work = copy_of(built.dir.path());
                let layout = &built.segments[seg];
                damage(&work.path().join(layout.file(ext)), how, &mut rng);
                let log =
                    Log::open(work.path(), config()).unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
                assert_log_holds(&log, &built.batches, &ctx);
                for b in &built.batches {
                    let e = log.entries(b.index, b.index + 1, None).unwrap();
                    assert!(e[0][..] == b.bytes[..], "{ctx}: entry {}", b.index);
                }
                assert_time_lookups(&log, &built.batches, &ctx);
                append_and_reopen(work.path(), log, &built.batches, case, &ctx);
            }
        }
    }
}

#[test]
fn leftovers_are_removed_at_open() {
    let built = build(7, 60);
    let work = copy_of(built.dir.path());
    let dir = work.path();
    let junk = [
        format!("{}.deleted", segment_file_name(999_999, LOG_EXT)),
        format!("{}.deleted", segment_file_name(0, INDEX_EXT)),
        format!("{STATE_FILE}.tmp"),
        segment_file_name(999_999, INDEX_EXT),
        segment_file_name(999_999, TIME_INDEX_EXT),
    ];
    for name in &junk {
        fs::write(dir.join(name), b"leftover").unwrap();
    }
    let (log, report) = Log::open_with_report(dir, config()).unwrap();
    let mut removed: Vec<PathBuf> = report.removed_files.clone();
    removed.sort();
    let mut want: Vec<PathBuf> = junk.iter().map(|n| dir.join(n)).collect();
    want.sort();
    assert_eq!(removed, want);
    let names = file_names(dir);
    for name in &junk {
        assert!(!names.contains(name), "{name} survived: {names:?}");
    }
    assert!(!report.state_rebuilt);
    assert_log_holds(&log, &built.batches, "after removing leftovers");
}

#[test]
fn damaged_state_file_is_rebuilt() {
    let built = build(8, 60);
    let mut rng = Rng::new(0x57A7E);
    type Spoil = fn(&Path, &mut Rng);
    let cases: &[(&str, Spoil)] = &[
        ("missing", |p, _| fs::remove_file(p).unwrap()),
        ("empty", |p, _| set_len(p, 0)),
        ("truncated", |p, _| set_len(p, 20)),
        ("flipped", |p, _| flip(p, 9, 0x01)),
        ("garbage", |p, r| {
            fs::write(p, (0..64).map(|_| r.next() as u8).collect::<Vec<_>>()).unwrap()
        }),
    ];
    for (i, (what, spoil)) in cases.iter().enumerate() {
        let ctx = format!("case {i}: {what} state file");
        let work = copy_of(built.dir.path());
        spoil(&work.path().join(STATE_FILE), &mut rng);
        let (log, report) =
            Log::open_with_report(work.path(), config()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert!(report.state_rebuilt, "{ctx}");
        assert_eq!(log.first_index().unwrap(), 1, "{ctx}");
        assert_eq!(log.term(0).unwrap(), 0, "{ctx}");
        assert_log_holds(&log, &built.batches, &ctx);
        append_and_reopen(work.path(), log, &built.batches, i as u64, &ctx);
    }
}

/// Retention persists the new first index and its term, then unlinks the
/// segments. A crash in between leaves segments below the compacted index:
/// open finishes the deletion.
#[test]
fn crash_during_retention_is_finished_at_open() {
    let built = build(9, 80);
    let segs = &built.segments;
    for (k, kept) in segs.iter().enumerate().skip(1) {
        let ctx = format!("retention of {k} segments interrupted before the unlink");
        let before = copy_of(built.dir.path());
        let after = copy_of(built.dir.path());
        {
            let log = Log::open(after.path(), config()).unwrap();
            log.delete_records(kept.base_offset).unwrap();
            let report = log.apply_retention(0, u64::MAX).unwrap();
            assert_eq!(report.deleted_segments, k, "{ctx}");
        }
        // The old files with the new state file.
        fs::copy(
            after.path().join(STATE_FILE),
            before.path().join(STATE_FILE),
        )
        .unwrap();
        let (log, report) =
            Log::open_with_report(before.path(), config()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(report.removed_files.len(), k, "{ctx}: {report:?}");
        let first = &built.batches[kept.first];
        assert_eq!(log.first_index().unwrap(), first.index, "{ctx}");
        assert_eq!(log.log_start_offset().unwrap(), first.base_offset, "{ctx}");
        assert_eq!(
            log.term(first.index - 1).unwrap(),
            built.batches[kept.first - 1].term,
            "{ctx}"
        );
        for b in &built.batches[kept.first..] {
            let r = log.read(b.base_offset, u64::MAX, 1).unwrap();
            assert!(r.bytes[..] == b.bytes[..], "{ctx}: batch {}", b.index);
        }
        assert_eq!(file_names(before.path()), file_names(after.path()), "{ctx}");
    }
}

/// A roll creates (and syncs) the new segment, then seals the old one. A
/// crash in between leaves the old segment unsealed and the new one empty.
/// (The zeros after the old segment's data are what an older version, which
/// preallocated segments, left there.)
#[test]
fn crash_during_roll_is_recovered() {
    let built = build(10, 60);
    let active = built.segments.last().unwrap();
    let end = built.batches.last().unwrap().next_offset;
    let work = copy_of(built.dir.path());
    let dir = work.path();
    set_len(&dir.join(active.file(LOG_EXT)), active.size() + (64 << 10));
    // What Segment::create leaves: an empty segment and empty indexes.
    for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT] {
        fs::write(dir.join(segment_file_name(end, ext)), b"").unwrap();
    }
    let (log, report) =
        Log::open_with_report(dir, config()).unwrap_or_else(|e| panic!("open: {e}"));
    assert!(!report.state_rebuilt);
    assert_log_holds(&log, &built.batches, "after a crash during a roll");
    assert_time_lookups(&log, &built.batches, "after a crash during a roll");
    append_and_reopen(dir, log, &built.batches, 0, "after a crash during a roll");
}

/// The old segment of an interrupted roll was never fsynced: its last batch
/// can be torn too. Open drops the empty new segment, recovers the old one
/// as the active segment and cuts the torn batch.
#[test]
fn crash_during_roll_with_torn_old_tail_is_recovered() {
    let built = build(10, 60);
    let active = built.segments.last().unwrap();
    let last = built.batches.last().unwrap();
    let end = last.next_offset;
    let work = copy_of(built.dir.path());
    let dir = work.path();
    let log_file = dir.join(active.file(LOG_EXT));
    let len = fs::metadata(&log_file).unwrap().len();
    // Tear the last batch of the old segment: keep its first half only.
    let f = fs::OpenOptions::new().write(true).open(&log_file).unwrap();
    let position = active.size() - last.bytes.len() as u64;
    let torn_at = position + last.bytes.len() as u64 / 2;
    f.set_len(torn_at).unwrap();
    f.set_len(len).unwrap();
    for (ext, len) in [
        (LOG_EXT, len),
        (INDEX_EXT, 600 / 12 * 12),
        (TIME_INDEX_EXT, 600 / 12 * 12),
    ] {
        fs::write(
            dir.join(segment_file_name(end, ext)),
            vec![0u8; len as usize],
        )
        .unwrap();
    }
    let (log, report) =
        Log::open_with_report(dir, config()).unwrap_or_else(|e| panic!("open: {e}"));
    assert!(
        report.recovery.truncated.is_some(),
        "the torn batch is reported: {report:?}"
    );
    assert!(
        !dir.join(segment_file_name(end, LOG_EXT)).exists(),
        "the empty new segment is gone"
    );
    let kept = &built.batches[..built.batches.len() - 1];
    assert_log_holds(&log, kept, "after a crash during a roll with a torn tail");
    append_and_reopen(
        dir,
        log,
        kept,
        0,
        "after a crash during a roll with a torn tail",
    );
}

/// `Log::reset_to` persists the flagged new state, unlinks every segment
/// (newest first), creates the new empty segment and clears the flag. A
/// crash at any point reopens either the old log or the reset one, never a
/// mix: every intermediate directory is rebuilt here and opened.
#[test]
fn crash_during_reset_yields_the_old_or_the_reset_log() {
    let built = build(11, 60);
    let segs = &built.segments;
    let (index, term) = (1000, 77);
    // A new start offset past the old end, and one that names an old segment.
    for start in [
        built.batches.last().unwrap().next_offset + 50,
        segs[1].base_offset,
    ] {
        let flagged = PartitionState {
            log_start_offset: start,
            compacted_index: index,
            compacted_term: term,
            term_runs: Vec::new(),
            reset_pending: true,
        };
        let reset_log_holds = |dir: &Path, ctx: &str| {
            let (log, report) =
                Log::open_with_report(dir, config()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert!(!report.state_rebuilt, "{ctx}");
            assert_eq!(log.log_start_offset().unwrap(), start, "{ctx}");
            assert_eq!(log.log_end_offset().unwrap(), start, "{ctx}");
            assert_eq!(log.first_index().unwrap(), index + 1, "{ctx}");
            assert_eq!(log.last_index().unwrap(), index, "{ctx}");
            assert_eq!(log.term(index).unwrap(), term, "{ctx}");
            assert_eq!(log.segments().unwrap().len(), 1, "{ctx}");
            let names = file_names(dir);
            assert_eq!(
                names,
                [
                    segment_file_name(start, INDEX_EXT),
                    segment_file_name(start, LOG_EXT),
                    segment_file_name(start, TIME_INDEX_EXT),
                    STATE_FILE.to_string()
                ],
                "{ctx}"
            );
            let (batch, _) = simple_batch(2, 30, 0, 1);
            let info = log.append_entry(&batch, term, index + 1).unwrap();
            assert_eq!(info.base_offset, start, "{ctx}");
            drop(log);
            let log = Log::open(dir, config()).unwrap();
            assert_eq!(
                (log.last_index().unwrap(), log.log_end_offset().unwrap()),
                (index + 1, start + 2),
                "{ctx}"
            );
            assert_eq!(
                PartitionState::load(dir).unwrap().map(|s| s.reset_pending),
                Some(false)
            );
        };

        // Crash before the flagged state replaced the old one: the old log.
        let work = copy_of(built.dir.path());
        fs::write(
            work.path().join(format!("{STATE_FILE}.tmp")),
            flagged.encode(),
        )
        .unwrap();
        let log = Log::open(work.path(), config()).unwrap();
        assert_log_holds(
            &log,
            &built.batches,
            "reset interrupted before the state rename",
        );
        drop(log);

        // The flagged state is in place; 0..=all segments unlinked, newest
        // first, the next one possibly half-way (its .log renamed away).
        for gone in 0..=segs.len() {
            for half in [false, true] {
                let ctx = format!("start {start}: {gone} segments unlinked, half {half}");
                let work = copy_of(built.dir.path());
                let dir = work.path();
                flagged.store(dir).unwrap();
                for seg in segs.iter().rev().take(gone) {
                    for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT] {
                        fs::remove_file(dir.join(seg.file(ext))).unwrap();
                    }
                }
                if half && gone < segs.len() {
                    let seg = &segs[segs.len() - 1 - gone];
                    let from = dir.join(seg.file(LOG_EXT));
                    fs::rename(&from, format!("{}.deleted", from.display())).unwrap();
                }
                if half && gone == segs.len() {
                    // The new segment was created, the flag not yet cleared.
                    for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT] {
                        fs::write(dir.join(segment_file_name(start, ext)), b"").unwrap();
                    }
                }
                reset_log_holds(dir, &ctx);
            }
        }

        // The whole reset, through the API.
        let work = copy_of(built.dir.path());
        let log = Log::open(work.path(), config()).unwrap();
        log.reset_to(start, index, term).unwrap();
        drop(log);
        reset_log_holds(work.path(), &format!("start {start}: reset done"));
    }
}
