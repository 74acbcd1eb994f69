//! Helpers shared by the integration tests: batch building, scratch
//! directories, directory copies, a seeded RNG and whole-log checks.
//!
//! Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::fs;
use std::path::Path;

use bytes::Bytes;
use runnel_batch::{BatchBuilder, BatchView, Compression, NewRecord, stamp};
use runnel_storage::{FlushPolicy, Log, LogConfig};

/// One record as the test model knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rec {
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Vec<u8>,
    pub(crate) timestamp: i64,
}

/// Encodes `records` into one unstamped batch.
pub(crate) fn build_batch(records: &[Rec], compression: Compression) -> Bytes {
    let mut b = BatchBuilder::new(compression);
    for r in records {
        b.push(NewRecord {
            key: r.key.as_deref(),
            value: &r.value,
            headers: &[],
            timestamp: r.timestamp,
        });
    }
    b.finish().expect("non-empty batch")
}

/// A batch of `n` records of `value_len` bytes, timestamps `ts, ts+1, ..`,
/// values derived from `seed` so that batches differ.
pub(crate) fn simple_batch(n: usize, value_len: usize, ts: i64, seed: u64) -> (Bytes, Vec<Rec>) {
    let mut rng = Rng::new(seed);
    let recs: Vec<Rec> = (0..n)
        .map(|i| Rec {
            key: None,
            value: (0..value_len).map(|_| rng.next() as u8).collect(),
            timestamp: ts + i as i64,
        })
        .collect();
    (build_batch(&recs, Compression::None), recs)
}

/// The bytes the log stores for `batch` appended at `base_offset` as
/// Raft entry `index` of `term`.
pub(crate) fn stamped(batch: &[u8], base_offset: u64, term: u64, index: u64) -> Vec<u8> {
    let mut v = batch.to_vec();
    stamp(&mut v, base_offset, term, index);
    v
}

/// Decodes the records of one stored batch as `(offset, Rec)`.
pub(crate) fn records_of(stored: &[u8]) -> Vec<(u64, Rec)> {
    let view = BatchView::new(stored).expect("verified batch");
    let base = view.base_offset();
    view.records()
        .expect("records")
        .iter()
        .map(|r| {
            let r = r.expect("record");
            (
                base + u64::from(r.offset_delta),
                Rec {
                    key: r.key.map(<[u8]>::to_vec),
                    value: r.value.to_vec(),
                    timestamp: r.timestamp,
                },
            )
        })
        .collect()
}

/// A temporary directory where fsync is cheap (`/dev/shm` when available):
/// for tests that check logic and simulate crashes by editing files, not
/// tests that measure fsync. Falls back to the default temp directory.
pub(crate) fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("runnel-test-")
            .tempdir_in(shm)
        {
            return d;
        }
    }
    tempfile::Builder::new()
        .prefix("runnel-test-")
        .tempdir()
        .expect("temp dir")
}

/// Copies every regular file of `from` into `to` (created if needed).
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Sorted file names in `dir`.
pub(crate) fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A small-segment configuration that rolls often and never fsyncs on append.
pub(crate) fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 << 10,
        segment_ms: None,
        index_interval_bytes: 256,
        index_max_bytes: 600,
        max_batch_bytes: 8 << 10,
        flush: FlushPolicy::Never,
        retention_ms: None,
        retention_bytes: None,
        faults: None,
        ..Default::default()
    }
}

/// SplitMix64: a tiny seeded RNG for deterministic loops.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo < hi, "empty range {lo}..{hi}");
        lo + self.next() % (hi - lo)
    }
}

/// A batch the test appended, as the log must store it.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) base_offset: u64,
    pub(crate) next_offset: u64,
    pub(crate) index: u64,
    pub(crate) term: u64,
    /// The stamped bytes.
    pub(crate) bytes: Vec<u8>,
    pub(crate) records: Vec<Rec>,
}

impl Stored {
    pub(crate) fn max_timestamp(&self) -> i64 {
        self.records
            .iter()
            .map(|r| r.timestamp)
            .max()
            .unwrap_or(i64::MIN)
    }
}

/// Appends `batch` (built from `records`) and returns what must be stored.
pub(crate) fn append(log: &Log, batch: &Bytes, records: &[Rec], term: u64) -> Stored {
    let info = log.append(batch, term).expect("append");
    assert_eq!(
        info.last_offset + 1 - info.base_offset,
        records.len() as u64
    );
    Stored {
        base_offset: info.base_offset,
        next_offset: info.last_offset + 1,
        index: info.raft_index,
        term,
        bytes: stamped(batch, info.base_offset, term, info.raft_index),
        records: records.to_vec(),
    }
}

/// Checks that `log` holds exactly `batches` (the whole log from index 1,
/// nothing compacted): ends, every batch by offset and by index, terms.
pub(crate) fn assert_log_holds(log: &Log, batches: &[Stored], ctx: &str) {
    let end = batches.last().map_or(0, |b| b.next_offset);
    assert_eq!(log.log_end_offset().unwrap(), end, "{ctx}: log end");
    assert_eq!(
        log.last_index().unwrap(),
        batches.len() as u64,
        "{ctx}: last index"
    );
    for b in batches {
        for off in [b.base_offset, b.next_offset - 1] {
            let r = log
                .read(off, u64::MAX, 1)
                .unwrap_or_else(|e| panic!("{ctx}: read {off}: {e}"));
            assert_eq!(r.batch_count, 1, "{ctx}: read {off}");
            assert_eq!(r.first_offset, b.base_offset, "{ctx}: read {off}");
            assert_eq!(r.next_offset, b.next_offset, "{ctx}: read {off}");
            assert!(
                r.bytes[..] == b.bytes[..],
                "{ctx}: bytes of the batch at {off} differ"
            );
        }
        assert_eq!(
            log.term(b.index).unwrap(),
            b.term,
            "{ctx}: term({})",
            b.index
        );
    }
    if !batches.is_empty() {
        let all = log.entries(1, batches.len() as u64 + 1, None).unwrap();
        assert_eq!(all.len(), batches.len(), "{ctx}: entries");
        for (e, b) in all.iter().zip(batches) {
            assert!(e[..] == b.bytes[..], "{ctx}: entry {} differs", b.index);
        }
    }
    let r = log.read(end, u64::MAX, 1 << 20).unwrap();
    assert_eq!(
        (r.batch_count, r.bytes.len()),
        (0, 0),
        "{ctx}: read at the end"
    );
}

/// Brute-force `offset_for_timestamp` over `batches`, honouring `log_start`.
pub(crate) fn offset_for_timestamp(batches: &[Stored], log_start: u64, ts: i64) -> Option<u64> {
    batches
        .iter()
        .flat_map(|b| {
            b.records
                .iter()
                .enumerate()
                .map(move |(i, r)| (b.base_offset + i as u64, r.timestamp))
        })
        .find(|&(off, t)| off >= log_start && t >= ts)
        .map(|(off, _)| off)
}
