//! The log against an in-memory `Vec` model under random appends, reads,
//! Raft queries, timestamp lookups, truncations, delete-records, retention,
//! resets to a snapshot point and reopens (STYLE.md practice 11). Tiny segments and indexes make rolls
//! (by size, by full index, by age) happen every few batches.
//!
//! The whole observable state is checked after every step: offsets and
//! Raft indexes at both ends, `term(i)` over the whole stored range and
//! just outside it, every segment against the batches it must hold, and
//! every readable batch byte for byte.

mod common;

use common::{Rec, Stored, build_batch, scratch_dir, stamped};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use runnel_batch::Compression;
use runnel_storage::{FlushPolicy, Log, LogConfig, SegmentSummary, StorageError};

#[derive(Clone, Debug)]
enum Op {
    /// Append a batch of `records` records; `big` values up to 3000 bytes.
    Append {
        records: usize,
        big: bool,
        seed: u64,
        bump: bool,
        compression: u8,
    },
    /// Append with a term below the last one: refused.
    AppendStaleTerm {
        seed: u64,
    },
    /// `append_entry` with an index that does not follow the last: refused.
    AppendWrongIndex {
        ahead: bool,
        seed: u64,
    },
    Read {
        offset: u64,
        max_offset: Option<u64>,
        max_bytes: usize,
    },
    Entries {
        lo: u64,
        len: u64,
        max_bytes: Option<u64>,
    },
    TimeLookup {
        at: u64,
    },
    TruncateFromIndex {
        at: u64,
    },
    TruncateToOffset {
        at: u64,
        boundary: bool,
    },
    DeleteRecords {
        at: u64,
    },
    Retention {
        now: u64,
        limit: Option<u64>,
    },
    /// `reset_to` a snapshot point: `index` picked around the compacted
    /// and last indexes (below the compacted one is refused), the start
    /// offset around the log end, the term around the current one.
    ResetTo {
        offset: u64,
        index: u64,
        term: u64,
    },
    Flush,
    Reopen,
    Close,
    /// `Log::crash` then reopen: exactly the durable prefix survives.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        60 => (1usize..=5, prop::bool::weighted(0.3), any::<u64>(), prop::bool::weighted(0.15), 0u8..10)
            .prop_map(|(records, big, seed, bump, compression)| Op::Append { records, big, seed, bump, compression }),
        1 => any::<u64>().prop_map(|seed| Op::AppendStaleTerm { seed }),
        1 => (any::<bool>(), any::<u64>()).prop_map(|(ahead, seed)| Op::AppendWrongIndex { ahead, seed }),
        6 => (any::<u64>(), prop::option::weighted(0.3, any::<u64>()),
              prop::sample::select(vec![0usize, 1, 100, 700, 2500, 9000, usize::MAX]))
            .prop_map(|(offset, max_offset, max_bytes)| Op::Read { offset, max_offset, max_bytes }),
        4 => (any::<u64>(), 1u64..12, prop::option::weighted(0.5, prop::sample::select(vec![0u64, 1, 300, 2000, 8000])))
            .prop_map(|(lo, len, max_bytes)| Op::Entries { lo, len, max_bytes }),
        4 => any::<u64>().prop_map(|at| Op::TimeLookup { at }),
        3 => any::<u64>().prop_map(|at| Op::TruncateFromIndex { at }),
        3 => (any::<u64>(), prop::bool::weighted(0.6)).prop_map(|(at, boundary)| Op::TruncateToOffset { at, boundary }),
        3 => any::<u64>().prop_map(|at| Op::DeleteRecords { at }),
        4 => (any::<u64>(), prop::option::weighted(0.3, any::<u64>())).prop_map(|(now, limit)| Op::Retention { now, limit }),
        2 => (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(offset, index, term)| Op::ResetTo { offset, index, term }),
        1 => Just(Op::Flush),
        4 => Just(Op::Reopen),
        1 => Just(Op::Close),
        3 => Just(Op::Crash),
    ]
}

fn config() -> impl Strategy<Value = LogConfig> {
    (
        4096u32..=16384,
        64u32..=1024,
        48u32..=600,
        prop::option::weighted(0.3, 300i64..3000),
        prop::option::weighted(0.5, 200i64..2000),
        prop::option::weighted(0.5, 4096u64..60_000),
    )
        .prop_map(
            |(
                segment_bytes,
                index_interval_bytes,
                index_max_bytes,
                segment_ms,
                retention_ms,
                retention_bytes,
            )| {
                LogConfig {
                    segment_bytes,
                    segment_ms,
                    index_interval_bytes,
                    index_max_bytes,
                    max_batch_bytes: segment_bytes,
                    flush: FlushPolicy::Never,
                    retention_ms,
                    retention_bytes,
                    faults: None,
                    ..Default::default()
                }
            },
        )
}

/// What the log must hold. `batches[k]` is Raft entry `origin + k + 1`;
/// entries up to `compacted` are gone from the log but kept here for their
/// terms. `origin` is the snapshot point of the last `reset_to` (0 before).
struct Model {
    batches: Vec<Stored>,
    /// Raft index before `batches[0]`, its term, and the offset where
    /// `batches[0]` starts.
    origin: u64,
    origin_term: u64,
    origin_offset: u64,
    compacted: u64,
    log_start: u64,
    /// Offset below which the log must be durable (flushed, truncated,
    /// reset, or reopened; rolls add more that the model does not track).
    synced: u64,
    /// Term for the next append: never decreases.
    term: u64,
    /// Timestamp generator.
    clock: i64,
}

impl Model {
    fn log_end(&self) -> u64 {
        self.batches
            .last()
            .map_or(self.origin_offset, |b| b.next_offset)
    }

    fn last_index(&self) -> u64 {
        self.origin + self.batches.len() as u64
    }

    /// Position in `batches` of Raft entry `index` (`index > origin`).
    fn pos(&self, index: u64) -> usize {
        (index - self.origin - 1) as usize
    }

    fn term_of(&self, index: u64) -> u64 {
        if index == self.origin {
            self.origin_term
        } else {
            self.batches[self.pos(index)].term
        }
    }

    fn last_term(&self) -> u64 {
        self.term_of(self.last_index())
    }

    /// Stored (not compacted) batches.
    fn stored(&self) -> &[Stored] {
        &self.batches[(self.compacted - self.origin) as usize..]
    }

    /// The stored batch holding `offset`.
    fn batch_at(&self, offset: u64) -> Option<&Stored> {
        let s = self.stored();
        let i = s.partition_point(|b| b.next_offset <= offset);
        s.get(i).filter(|b| b.base_offset <= offset)
    }

    /// The records of a new batch, advancing the clock.
    fn records(&mut self, n: usize, big: bool, seed: u64) -> Vec<Rec> {
        let mut rng = common::Rng::new(seed);
        self.clock += rng.range(0, 40) as i64;
        if rng.range(0, 20) == 0 {
            self.clock += 4000;
        }
        (0..n)
            .map(|_| {
                let len = if big {
                    rng.range(0, 3001)
                } else {
                    rng.range(0, 200)
                } as usize;
                let fill = rng.next() as u8;
                let random = rng.range(0, 2) == 0;
                Rec {
                    key: (rng.range(0, 2) == 0).then(|| rng.next().to_le_bytes().to_vec()),
                    value: (0..len)
                        .map(|_| if random { rng.next() as u8 } else { fill })
                        .collect(),
                    // Not monotonic: records may go back in time a little.
                    timestamp: self.clock + rng.range(0, 60) as i64 - 30,
                }
            })
            .collect()
    }

    fn timestamps(&self) -> (i64, i64) {
        let all = self
            .stored()
            .iter()
            .flat_map(|b| b.records.iter().map(|r| r.timestamp));
        all.fold((self.clock, self.clock), |(lo, hi), t| {
            (lo.min(t), hi.max(t))
        })
    }
}

/// Maps a random `sel` into `[lo - 2, hi + 2]` (saturating), so that both
/// boundaries and just-outside values come up often.
fn pick(sel: u64, lo: u64, hi: u64) -> u64 {
    let lo2 = lo.saturating_sub(2);
    let span = hi + 2 - lo2 + 1;
    match sel % 8 {
        0 => lo,
        1 => hi,
        2 => lo2,
        3 => hi + 1,
        _ => lo2 + (sel / 8) % span,
    }
}

fn compression(c: u8) -> Compression {
    match c {
        0 => Compression::Lz4,
        1 => Compression::Zstd,
        _ => Compression::None,
    }
}

struct Harness {
    dir: tempfile::TempDir,
    config: LogConfig,
    log: Option<Log>,
    model: Model,
}

impl Harness {
    fn log(&self) -> &Log {
        self.log.as_ref().expect("log is open")
    }

    fn reopen(&mut self, close: bool) {
        let log = self.log.take().expect("log is open");
        if close {
            log.close().expect("close");
        } else {
            drop(log);
        }
        let (log, report) =
            Log::open_with_report(self.dir.path(), self.config.clone()).expect("reopen");
        self.model.synced = self.model.log_end();
        assert!(!report.state_rebuilt, "state file was rebuilt: {report:?}");
        assert_eq!(
            report.recovery.truncated, None,
            "recovery truncated a cleanly written log: {report:?}"
        );
        assert!(
            report.removed_files.is_empty(),
            "leftovers after a clean run: {report:?}"
        );
        self.log = Some(log);
    }

    fn step(&mut self, op: &Op) {
        let m = &mut self.model;
        let log = self.log.as_ref().expect("log is open");
        match *op {
            Op::Append {
                records,
                big,
                seed,
                bump,
                compression: c,
            } => {
                let recs = m.records(records, big, seed);
                let batch = build_batch(&recs, compression(c));
                if bump {
                    m.term += 1 + seed % 3;
                }
                let term = m.term;
                if batch.len() > self.config.max_batch_bytes as usize {
                    match log.append(&batch, term) {
                        Err(StorageError::BatchTooLarge { size, .. }) => {
                            assert_eq!(size, batch.len())
                        }
                        other => panic!("oversized batch: {other:?}"),
                    }
                    return;
                }
                let info = log.append(&batch, term).expect("append");
                let base = m.log_end();
                assert_eq!(info.base_offset, base);
                assert_eq!(info.last_offset, base + recs.len() as u64 - 1);
                assert_eq!(info.raft_index, m.last_index() + 1);
                assert_eq!(info.raft_term, term);
                m.batches.push(Stored {
                    base_offset: base,
                    next_offset: info.last_offset + 1,
                    index: info.raft_index,
                    term,
                    bytes: stamped(&batch, base, term, info.raft_index),
                    records: recs,
                });
            }
            Op::AppendStaleTerm { seed } => {
                let last = m.last_term();
                if last < 2 {
                    return;
                }
                let recs = m.records(1, false, seed);
                let r = log.append(&build_batch(&recs, Compression::None), last - 1);
                assert!(
                    matches!(r, Err(StorageError::Invalid(_))),
                    "stale term accepted: {r:?}"
                );
            }
            Op::AppendWrongIndex { ahead, seed } => {
                let recs = m.records(1, false, seed);
                let index = if ahead {
                    m.last_index() + 2
                } else {
                    m.last_index()
                };
                let r = log.append_entry(&build_batch(&recs, Compression::None), m.term, index);
                assert!(
                    matches!(r, Err(StorageError::Invalid(_))),
                    "index {index} accepted: {r:?}"
                );
            }
            Op::Read {
                offset,
                max_offset,
                max_bytes,
            } => {
                let offset = pick(offset, m.log_start, m.log_end());
                let max_offset = max_offset.map_or(u64::MAX, |s| pick(s, m.log_start, m.log_end()));
                let segs = log.segments().unwrap();
                check_read(log, m, &segs, offset, max_offset, max_bytes);
            }
            Op::Entries { lo, len, max_bytes } => {
                let first = m.compacted + 1;
                let lo = pick(lo, first, m.last_index() + 1).max(1);
                let hi = lo + len;
                let got = log.entries(lo, hi, max_bytes);
                if lo < first {
                    assert!(
                        matches!(got, Err(StorageError::Compacted { index, first_index }) if index == lo && first_index == first),
                        "entries({lo}, {hi}) below the first index {first}: {got:?}"
                    );
                } else if hi > m.last_index() + 1 {
                    assert!(
                        matches!(got, Err(StorageError::Unavailable { .. })),
                        "entries({lo}, {hi}) past the last index {}: {got:?}",
                        m.last_index()
                    );
                } else {
                    let got = got.expect("entries");
                    let limit = max_bytes.unwrap_or(u64::MAX);
                    let mut want = Vec::new();
                    let mut total = 0u64;
                    for b in &m.batches[m.pos(lo)..m.pos(hi)] {
                        let len = b.bytes.len() as u64;
                        if !want.is_empty() && total + len > limit {
                            break;
                        }
                        total += len;
                        want.push(&b.bytes);
                    }
                    assert_eq!(got.len(), want.len(), "entries({lo}, {hi}, {max_bytes:?})");
                    for (g, w) in got.iter().zip(want) {
                        assert!(g[..] == w[..], "entries({lo}, {hi}): bytes differ");
                    }
                }
            }
            Op::TimeLookup { at } => {
                let (lo, hi) = m.timestamps();
                let span = (hi - lo + 20) as u64;
                let ts = lo - 10 + (at % span) as i64;
                let want = common::offset_for_timestamp(m.stored(), m.log_start, ts);
                assert_eq!(
                    log.offset_for_timestamp(ts).unwrap(),
                    want,
                    "offset_for_timestamp({ts})"
                );
            }
            Op::TruncateFromIndex { at } => {
                // Half the time near the end, as Raft conflicts usually are.
                let index = if at % 2 == 0 {
                    (m.last_index() + 1).saturating_sub((at / 2) % 6)
                } else {
                    pick(at / 2, m.compacted, m.last_index() + 1)
                };
                let r = log.truncate_from_index(index);
                if index <= m.compacted {
                    assert!(
                        matches!(r, Err(StorageError::Invalid(_))),
                        "truncate_from_index({index}): {r:?}"
                    );
                } else if index > m.last_index() {
                    r.expect("truncate past the end is a no-op");
                } else if m.batches[m.pos(index)].base_offset < m.log_start {
                    assert!(
                        matches!(r, Err(StorageError::Invalid(_))),
                        "truncate_from_index({index}): {r:?}"
                    );
                } else {
                    r.unwrap_or_else(|e| panic!("truncate_from_index({index}): {e}"));
                    let keep = m.pos(index);
                    m.batches.truncate(keep);
                    m.synced = m.log_end();
                }
            }
            Op::TruncateToOffset { at, boundary } => {
                let offset = if boundary && !m.stored().is_empty() {
                    let s = m.stored();
                    let b = &s[s.len() - 1 - (at as usize / 5) % s.len().min(8)];
                    if at % 5 == 0 {
                        b.next_offset
                    } else {
                        b.base_offset
                    }
                } else {
                    pick(at, m.log_start, m.log_end())
                };
                let r = log.truncate_to_offset(offset);
                if offset >= m.log_end() {
                    r.expect("truncate at or past the end is a no-op");
                } else if offset < m.log_start {
                    assert!(
                        matches!(r, Err(StorageError::OffsetOutOfRange { .. })),
                        "truncate_to_offset({offset}): {r:?}"
                    );
                } else {
                    let b = m.batch_at(offset).expect("batch").clone();
                    if b.base_offset != offset {
                        assert!(
                            matches!(r, Err(StorageError::Invalid(_))),
                            "cut inside a batch at {offset}: {r:?}"
                        );
                    } else {
                        r.unwrap_or_else(|e| panic!("truncate_to_offset({offset}): {e}"));
                        let keep = m.pos(b.index);
                        m.batches.truncate(keep);
                        m.synced = m.log_end();
                    }
                }
            }
            Op::DeleteRecords { at } => {
                let offset = pick(at, m.log_start, m.log_end());
                let r = log.delete_records(offset);
                if offset > m.log_end() {
                    assert!(
                        matches!(r, Err(StorageError::OffsetOutOfRange { .. })),
                        "delete_records({offset}): {r:?}"
                    );
                } else {
                    m.log_start = m.log_start.max(offset);
                    assert_eq!(r.expect("delete_records"), m.log_start);
                }
            }
            Op::Retention { now, limit } => {
                let now_ms = m.clock - 2500 + (now % 5000) as i64;
                let limit = limit.map_or(u64::MAX, |l| pick(l, 0, m.log_end()));
                let segs = log.segments().unwrap();
                let (k, bytes) = expected_retention(&self.config, m, &segs, now_ms, limit);
                let report = log.apply_retention(now_ms, limit).expect("retention");
                assert_eq!(
                    (report.deleted_segments, report.deleted_bytes),
                    (k, bytes),
                    "retention(now {now_ms}, limit {limit}) over {segs:#?}"
                );
                if k > 0 {
                    m.compacted = segs[k].base_index - 1;
                    m.log_start = m.log_start.max(segs[k].base_offset);
                }
                assert_eq!(report.log_start_offset, m.log_start);
            }
            Op::ResetTo {
                offset,
                index,
                term,
            } => {
                let index = pick(index, m.compacted, m.last_index() + 3);
                let start = pick(offset, m.log_start, m.log_end() + 50);
                let term = (m.term + term % 3).saturating_sub(1).max(1);
                let r = log.reset_to(start, index, term);
                if index < m.compacted {
                    assert!(
                        matches!(r, Err(StorageError::Invalid(_))),
                        "reset_to({start}, {index}, {term}) below the compacted index: {r:?}"
                    );
                    return;
                }
                r.unwrap_or_else(|e| panic!("reset_to({start}, {index}, {term}): {e}"));
                m.batches.clear();
                (m.origin, m.origin_term, m.origin_offset) = (index, term, start);
                m.compacted = index;
                m.log_start = start;
                m.synced = start;
                m.term = m.term.max(term);
                assert_eq!(log.durable_offset(), start);
            }
            Op::Flush => {
                log.flush().expect("flush");
                assert_eq!(log.durable_offset(), m.log_end());
                m.synced = m.log_end();
            }
            Op::Reopen => self.reopen(false),
            Op::Crash => {
                let durable = log.durable_offset();
                assert!(
                    durable >= m.synced && durable <= m.log_end(),
                    "durable offset {durable} outside [{}, {}]",
                    m.synced,
                    m.log_end()
                );
                let log = self.log.take().expect("log is open");
                log.crash().expect("crash");
                let keep = m.batches.partition_point(|b| b.next_offset <= durable);
                assert!(
                    keep == m.batches.len() || m.batches[keep].base_offset == durable,
                    "durable offset {durable} inside a batch"
                );
                m.batches.truncate(keep);
                assert!(
                    m.compacted <= m.last_index(),
                    "a crash lost compacted entries"
                );
                m.log_start = m.log_start.min(m.log_end());
                let (log, report) =
                    Log::open_with_report(self.dir.path(), self.config.clone()).expect("reopen");
                assert!(!report.state_rebuilt, "state file was rebuilt: {report:?}");
                assert_eq!(report.recovery.truncated, None, "{report:?}");
                // Only a new segment emptied by the crash may be removed.
                for f in &report.removed_files {
                    let name = f.file_name().unwrap().to_string_lossy();
                    assert!(name.ends_with(".log"), "{report:?}");
                }
                m.synced = m.log_end();
                self.log = Some(log);
            }
            Op::Close => self.reopen(true),
        }
    }

    /// Everything observable, against the model.
    fn check(&self) {
        let (log, m) = (self.log(), &self.model);
        assert_eq!(log.log_start_offset().unwrap(), m.log_start, "log start");
        assert_eq!(log.log_end_offset().unwrap(), m.log_end(), "log end");
        assert_eq!(log.first_index().unwrap(), m.compacted + 1, "first index");
        assert_eq!(log.last_index().unwrap(), m.last_index(), "last index");
        assert_eq!(
            log.compacted().unwrap(),
            (m.compacted, m.term_of(m.compacted)),
            "compacted (index, term)"
        );
        for i in m.compacted..=m.last_index() {
            assert_eq!(log.term(i).unwrap(), m.term_of(i), "term({i})");
        }
        if m.compacted > 0 {
            let r = log.term(m.compacted - 1);
            assert!(
                matches!(r, Err(StorageError::Compacted { .. })),
                "term below first-1: {r:?}"
            );
        }
        let r = log.term(m.last_index() + 1);
        assert!(
            matches!(r, Err(StorageError::Unavailable { .. })),
            "term past last: {r:?}"
        );

        // Segments tile the stored batches.
        let segs = log.segments().unwrap();
        assert!(!segs.is_empty());
        let stored = m.stored();
        let mut at = 0usize;
        let mut expect_base = stored.first().map_or(m.log_end(), |b| b.base_offset);
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(
                s.base_offset, expect_base,
                "segment {i} base offset: {segs:#?}"
            );
            assert_eq!(
                s.base_index,
                m.compacted + 1 + at as u64,
                "segment {i} base index"
            );
            let mut size = 0u64;
            let mut max_ts = i64::MIN;
            while at < stored.len() && stored[at].base_offset < s.next_offset {
                size += stored[at].bytes.len() as u64;
                max_ts = max_ts.max(stored[at].max_timestamp());
                at += 1;
            }
            assert_eq!(s.size, size, "segment {i} size");
            assert_eq!(
                s.max_timestamp, max_ts,
                "segment {i} max timestamp: {segs:#?}"
            );
            let end = if at > 0 && size > 0 {
                stored[at - 1].next_offset
            } else {
                s.base_offset
            };
            assert_eq!(s.next_offset, end, "segment {i} end");
            if i + 1 < segs.len() {
                assert!(size > 0, "empty sealed segment {i}: {segs:#?}");
            }
            expect_base = s.next_offset;
        }
        assert_eq!(at, stored.len(), "segments hold every stored batch");
        assert_eq!(segs.last().unwrap().next_offset, m.log_end());
        assert!(segs[0].base_offset <= m.log_start);

        // Every readable batch, by offset; everything stored, by index.
        for b in stored.iter().filter(|b| b.next_offset > m.log_start) {
            let off = b.base_offset.max(m.log_start);
            let r = log
                .read(off, u64::MAX, 1)
                .unwrap_or_else(|e| panic!("read({off}): {e}"));
            assert_eq!(
                (r.batch_count, r.first_offset, r.next_offset),
                (1, b.base_offset, b.next_offset),
                "read({off})"
            );
            assert!(r.bytes[..] == b.bytes[..], "read({off}): bytes differ");
        }
        if m.log_start > 0 {
            let r = log.read(m.log_start - 1, u64::MAX, 1);
            assert!(
                matches!(r, Err(StorageError::OffsetOutOfRange { .. })),
                "read below the log start: {r:?}"
            );
        }
        let r = log.read(m.log_end() + 1, u64::MAX, 1);
        assert!(
            matches!(r, Err(StorageError::OffsetOutOfRange { .. })),
            "read past the end: {r:?}"
        );
        if !stored.is_empty() {
            let all = log
                .entries(m.compacted + 1, m.last_index() + 1, None)
                .expect("entries");
            assert_eq!(all.len(), stored.len());
            for (e, b) in all.iter().zip(stored) {
                assert!(e[..] == b.bytes[..], "entry {} differs", b.index);
            }
        }
    }
}

/// What `read(offset, max_offset, max_bytes)` must return, from the model
/// and the segment layout (a read stops at the end of a segment).
fn check_read(
    log: &Log,
    m: &Model,
    segs: &[SegmentSummary],
    offset: u64,
    max_offset: u64,
    max_bytes: usize,
) {
    let got = log.read(offset, max_offset, max_bytes);
    let what = format!("read({offset}, {max_offset}, {max_bytes})");
    if offset < m.log_start || offset > m.log_end() {
        assert!(
            matches!(got, Err(StorageError::OffsetOutOfRange { .. })),
            "{what}: {got:?}"
        );
        return;
    }
    let got = got.unwrap_or_else(|e| panic!("{what}: {e}"));
    if offset >= m.log_end().min(max_offset) {
        assert_eq!(
            (got.batch_count, got.bytes.len(), got.next_offset),
            (0, 0, offset),
            "{what}"
        );
        return;
    }
    let seg = &segs[segs.partition_point(|s| s.base_offset <= offset) - 1];
    let first = m.batch_at(offset).expect("batch");
    let mut want: Vec<u8> = Vec::new();
    let mut count = 0;
    let mut next = first.base_offset;
    for b in &m.stored()[(first.index - m.compacted - 1) as usize..] {
        if b.base_offset >= seg.next_offset || b.base_offset >= max_offset {
            break;
        }
        if count > 0 && want.len() + b.bytes.len() > max_bytes {
            break;
        }
        want.extend_from_slice(&b.bytes);
        count += 1;
        next = b.next_offset;
    }
    assert_eq!(
        (got.first_offset, got.next_offset, got.batch_count),
        (first.base_offset, next, count),
        "{what}"
    );
    assert!(got.bytes[..] == want[..], "{what}: bytes differ");
    // The records decode to what was appended.
    let recs = common::records_of(&got.bytes[..first.bytes.len()]);
    let want_recs: Vec<(u64, Rec)> = first
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| (first.base_offset + i as u64, r.clone()))
        .collect();
    assert_eq!(recs, want_recs, "{what}: records");
}

/// Number and bytes of the segments retention must delete: oldest first,
/// sealed only, stopping at `limit`, while wholly below the log start,
/// older than `retention_ms` or beyond `retention_bytes`.
fn expected_retention(
    c: &LogConfig,
    m: &Model,
    segs: &[SegmentSummary],
    now_ms: i64,
    limit: u64,
) -> (usize, u64) {
    let mut total: u64 = segs.iter().map(|s| s.size).sum();
    let mut k = 0;
    let mut bytes = 0;
    while k + 1 < segs.len() {
        let s = &segs[k];
        // The segment's true newest timestamp, from the model.
        let max_ts = m
            .stored()
            .iter()
            .filter(|b| b.base_offset >= s.base_offset && b.base_offset < s.next_offset)
            .map(Stored::max_timestamp)
            .max()
            .unwrap_or(i64::MIN);
        if s.next_offset > limit {
            break;
        }
        let below_start = s.next_offset <= m.log_start;
        let too_old = c
            .retention_ms
            .is_some_and(|ms| max_ts != i64::MIN && now_ms - max_ts > ms);
        let too_big = c.retention_bytes.is_some_and(|b| total - s.size >= b);
        if !(below_start || too_old || too_big) {
            break;
        }
        total -= s.size;
        bytes += s.size;
        k += 1;
    }
    (k, bytes)
}

fn run(config: LogConfig, ops: &[Op]) {
    let dir = scratch_dir();
    let log = Log::open(dir.path(), config.clone()).expect("open");
    let mut h = Harness {
        dir,
        config,
        log: Some(log),
        model: Model {
            batches: Vec::new(),
            origin: 0,
            origin_term: 0,
            origin_offset: 0,
            compacted: 0,
            log_start: 0,
            synced: 0,
            term: 1,
            clock: 1_700_000_000_000,
        },
    };
    h.check();
    for (i, op) in ops.iter().enumerate() {
        let step = std::panic::AssertUnwindSafe(|| {
            h.step(op);
            h.check();
        });
        if let Err(e) = std::panic::catch_unwind(step) {
            eprintln!("failed at step {i}: {op:?}");
            std::panic::resume_unwind(e);
        }
    }
    h.reopen(true);
    h.check();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 600,
        rng_seed: RngSeed::Fixed(0x52_55_4e_4e_45_4c),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_model(config in config(), ops in prop::collection::vec(op(), 1..200)) {
        run(config, &ops);
    }
}
