//! Memory-mapped sparse indexes of a segment.
//!
//! Both index files are arrays of fixed 12-byte little-endian entries:
//!
//! - `.index` ([`OffsetEntry`]): `rel_offset u32 · rel_index u32 · position u32`
//!   — the batch whose base offset is `base_offset + rel_offset` and whose
//!   Raft index is `base_index + rel_index` starts at byte `position` of the
//!   `.log` file. One entry every `index_interval_bytes`; the first batch of
//!   a segment is never indexed (position 0 is implied), so an all-zero
//!   entry marks the end of a preallocated file. Both keys increase strictly,
//!   so the same file serves lookups by offset and by Raft index.
//! - `.timeindex` ([`TimeEntry`]): `timestamp i64 · rel_offset u32` — every
//!   batch before the one at `rel_offset` (and that batch) has timestamps
//!   `<= timestamp`; timestamps increase strictly.
//!
//! The active segment's indexes are preallocated (fallocate, so a store into
//! the map can never fault on a full disk) and mapped writable; sealed ones
//! are trimmed to their entries and mapped read-only. Indexes are derived
//! data: recovery validates them and rebuilds them from the log when needed.

use std::fs::File;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::durable::{open_rw, preallocate, set_len};
use crate::error::{Result, StorageError};

/// Size of one index entry in bytes (both index kinds).
pub const ENTRY_LEN: usize = 12;

/// One fixed-size index entry.
pub(crate) trait IndexEntry: Copy + std::fmt::Debug {
    fn decode(b: &[u8]) -> Self;
    fn encode(&self) -> [u8; ENTRY_LEN];
    /// Whether `self` may follow `prev` (strictly increasing keys).
    fn follows(&self, prev: Option<&Self>) -> bool;
}

/// An `.index` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Base offset of the batch, relative to the segment's base offset.
    pub rel_offset: u32,
    /// Raft index of the batch, relative to the segment's first Raft index.
    pub rel_index: u32,
    /// Byte position of the batch in the `.log` file.
    pub position: u32,
}

impl IndexEntry for OffsetEntry {
    fn decode(b: &[u8]) -> Self {
        OffsetEntry {
            rel_offset: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            rel_index: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            position: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
    fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0..4].copy_from_slice(&self.rel_offset.to_le_bytes());
        out[4..8].copy_from_slice(&self.rel_index.to_le_bytes());
        out[8..12].copy_from_slice(&self.position.to_le_bytes());
        out
    }
    fn follows(&self, prev: Option<&Self>) -> bool {
        match prev {
            None => self.position > 0 && self.rel_offset > 0 && self.rel_index > 0,
            Some(p) => {
                self.position > p.position
                    && self.rel_offset > p.rel_offset
                    && self.rel_index > p.rel_index
            }
        }
    }
}

/// A `.timeindex` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    /// Largest timestamp of all batches up to and including the one at `rel_offset`.
    pub timestamp: i64,
    /// Base offset (relative) of the batch where `timestamp` was reached.
    pub rel_offset: u32,
}

impl IndexEntry for TimeEntry {
    fn decode(b: &[u8]) -> Self {
        TimeEntry {
            timestamp: i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            rel_offset: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
    fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0..8].copy_from_slice(&self.timestamp.to_le_bytes());
        out[8..12].copy_from_slice(&self.rel_offset.to_le_bytes());
        out
    }
    fn follows(&self, prev: Option<&Self>) -> bool {
        match prev {
            None => self.encode() != [0u8; ENTRY_LEN],
            Some(p) => self.timestamp > p.timestamp && self.rel_offset >= p.rel_offset,
        }
    }
}

enum Map {
    ReadOnly(Mmap),
    Writable(MmapMut),
    None,
}

impl Map {
    fn bytes(&self) -> &[u8] {
        match self {
            Map::ReadOnly(m) => m,
            Map::Writable(m) => m,
            Map::None => &[],
        }
    }
}

/// A memory-mapped index file of entries `E`.
pub(crate) struct IndexFile<E> {
    path: PathBuf,
    file: File,
    map: Map,
    /// Entries written to the map.
    stored: usize,
    /// Entries not yet written to the map because the log bytes they
    /// point at may not be durable yet (see [`IndexFile::publish_while`]).
    pending: Vec<E>,
    capacity: usize,
    _entry: PhantomData<E>,
}

impl<E: IndexEntry> IndexFile<E> {
    /// Opens a sealed index read-only. `Err` with a reason (not an I/O
    /// error) when the file is missing or malformed: the caller rebuilds it.
    pub(crate) fn open_sealed(path: &Path) -> Result<Option<Self>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io("open", path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| StorageError::io("stat", path, e))?
            .len() as usize;
        if len % ENTRY_LEN != 0 {
            return Ok(None);
        }
        let map = if len == 0 {
            Map::None
        } else {
            // SAFETY: segment files are only modified by this process through
            // this crate, which never shrinks a sealed index while it is mapped.
            Map::ReadOnly(
                unsafe { Mmap::map(&file) }.map_err(|e| StorageError::io("mmap", path, e))?,
            )
        };
        let idx = IndexFile {
            path: path.to_owned(),
            file,
            map,
            stored: len / ENTRY_LEN,
            pending: Vec::new(),
            capacity: len / ENTRY_LEN,
            _entry: PhantomData,
        };
        // Entries must increase strictly; otherwise rebuild.
        let mut prev = None;
        for i in 0..idx.stored {
            let e: E = idx.entry(i);
            if !e.follows(prev.as_ref()) {
                return Ok(None);
            }
            prev = Some(e);
        }
        Ok(Some(idx))
    }

    /// Opens (creating if missing) an index for appending, preallocated to
    /// `max_bytes`. Existing entries are kept while they increase strictly;
    /// the caller validates them further against the log.
    pub(crate) fn open_active(path: &Path, max_bytes: u32) -> Result<Self> {
        let file = open_rw(path, true)?;
        let capacity = max_bytes as usize / ENTRY_LEN;
        let len = (capacity * ENTRY_LEN) as u64;
        let current = file
            .metadata()
            .map_err(|e| StorageError::io("stat", path, e))?
            .len();
        if current > len {
            set_len(&file, path, len)?;
        }
        preallocate(&file, path, len)?;
        // SAFETY: the file is preallocated to `len` and never shrunk while
        // this map exists (sealing trims it only after the last store).
        let map = unsafe { MmapOptions::new().len(len as usize).map_mut(&file) }
            .map_err(|e| StorageError::io("mmap", path, e))?;
        let mut idx = IndexFile {
            path: path.to_owned(),
            file,
            map: Map::Writable(map),
            stored: 0,
            pending: Vec::new(),
            capacity,
            _entry: PhantomData,
        };
        let mut prev = None;
        while idx.stored < capacity {
            let e = E::decode(idx.raw(idx.stored));
            if !e.follows(prev.as_ref()) {
                break;
            }
            prev = Some(e);
            idx.stored += 1;
        }
        // Zero anything after the valid prefix so later scans stop there.
        idx.truncate_to(idx.stored);
        Ok(idx)
    }

    fn raw(&self, i: usize) -> &[u8] {
        &self.map.bytes()[i * ENTRY_LEN..(i + 1) * ENTRY_LEN]
    }

    /// Number of entries, pending ones included.
    pub(crate) fn len(&self) -> usize {
        self.stored + self.pending.len()
    }

    /// Whether no further entry fits.
    pub(crate) fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    /// Entry `i` (`i < len()`).
    pub(crate) fn entry(&self, i: usize) -> E {
        match i.checked_sub(self.stored) {
            None => E::decode(self.raw(i)),
            Some(p) => self.pending[p],
        }
    }

    /// The last entry.
    pub(crate) fn last(&self) -> Option<E> {
        self.len().checked_sub(1).map(|i| self.entry(i))
    }

    /// Index of the last entry whose `key` is `<= target`, by binary search
    /// (keys increase with the entry number).
    pub(crate) fn floor<K: Ord>(&self, target: K, key: impl Fn(&E) -> K) -> Option<usize> {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if key(&self.entry(mid)) <= target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }

    /// Appends an entry, pending until published; `false` (nothing
    /// recorded) if full, out of order, or the index is sealed.
    pub(crate) fn push(&mut self, e: E) -> bool {
        if self.is_full()
            || !e.follows(self.last().as_ref())
            || !matches!(self.map, Map::Writable(_))
        {
            return false;
        }
        self.pending.push(e);
        true
    }

    /// Writes pending entries to the map, oldest first, while `durable`
    /// says the log bytes they point at are on disk. An index entry on disk
    /// thus never points past durable data, and recovery may start its scan
    /// at the last one without missing a hole written back out of order.
    pub(crate) fn publish_while(&mut self, durable: impl Fn(&E) -> bool) {
        let n = self.pending.iter().take_while(|e| durable(e)).count();
        if n == 0 {
            return;
        }
        let Map::Writable(map) = &mut self.map else {
            return;
        };
        for e in self.pending.drain(..n) {
            let at = self.stored * ENTRY_LEN;
            map[at..at + ENTRY_LEN].copy_from_slice(&e.encode());
            self.stored += 1;
        }
    }

    /// Drops entries `n..` (zeroing stored ones in a writable map).
    pub(crate) fn truncate_to(&mut self, n: usize) {
        if n >= self.stored {
            self.pending.truncate(n - self.stored);
            return;
        }
        self.pending.clear();
        if let Map::Writable(map) = &mut self.map {
            let end = (self.stored * ENTRY_LEN).min(map.len());
            let from = (n * ENTRY_LEN).min(end);
            map[from..end].fill(0);
        }
        self.stored = n;
    }

    /// Flushes the map and trims the file to its entries; the index becomes
    /// read-only in effect (no more pushes).
    /// Callers seal only after the log data is durable: pending entries
    /// are published first.
    pub(crate) fn seal(&mut self) -> Result<()> {
        self.publish_while(|_| true);
        if let Map::Writable(map) = &self.map {
            map.flush()
                .map_err(|e| StorageError::io("msync", &self.path, e))?;
        }
        set_len(&self.file, &self.path, (self.stored * ENTRY_LEN) as u64)?;
        self.file
            .sync_all()
            .map_err(|e| StorageError::io("fsync", &self.path, e))?;
        self.capacity = self.stored;
        if let Map::Writable(_) = self.map {
            // Keep the mapping (only entries below `len` are read), but
            // forbid further stores by downgrading our view.
            let map = std::mem::replace(&mut self.map, Map::None);
            if let Map::Writable(m) = map {
                self.map = Map::ReadOnly(
                    m.make_read_only()
                        .map_err(|e| StorageError::io("mprotect", &self.path, e))?,
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn e(rel: u32, pos: u32) -> OffsetEntry {
        OffsetEntry {
            rel_offset: rel,
            rel_index: rel,
            position: pos,
        }
    }

    #[test]
    fn push_floor_against_btreemap_oracle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        let mut idx = IndexFile::<OffsetEntry>::open_active(&path, 1200).unwrap();
        let mut oracle = BTreeMap::new();
        for i in 1..=100u32 {
            assert!(idx.push(e(i * 10, i * 100)), "push {i}");
            oracle.insert(i * 10, i * 100);
        }
        assert!(idx.is_full());
        assert!(!idx.push(e(5000, 50000)), "full index refuses");
        for target in 0..1100u32 {
            let got = idx
                .floor(target, |e| e.rel_offset)
                .map(|i| idx.entry(i).position);
            let want = oracle.range(..=target).next_back().map(|(_, p)| *p);
            assert_eq!(got, want, "target {target}");
        }
    }

    #[test]
    fn out_of_order_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        let mut idx = IndexFile::<OffsetEntry>::open_active(&path, 120).unwrap();
        let cases = [
            (e(0, 0), false),
            (e(5, 50), true),
            (e(5, 60), false),
            (e(6, 40), false),
            (e(7, 70), true),
        ];
        for (i, (entry, ok)) in cases.iter().enumerate() {
            assert_eq!(idx.push(*entry), *ok, "case {i}");
        }
        assert_eq!(idx.len(), 2);
    }

    #[test]
    fn reopen_keeps_valid_prefix_and_seal_trims() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        {
            let mut idx = IndexFile::<OffsetEntry>::open_active(&path, 1200).unwrap();
            for i in 1..=5u32 {
                idx.push(e(i, i * 10));
            }
            idx.publish_while(|e| e.rel_offset <= 4);
        }
        let mut idx = IndexFile::<OffsetEntry>::open_active(&path, 1200).unwrap();
        assert_eq!(idx.len(), 4, "the unpublished entry is not on disk");
        idx.truncate_to(3);
        idx.seal().unwrap();
        drop(idx);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 36);
        let sealed = IndexFile::<OffsetEntry>::open_sealed(&path)
            .unwrap()
            .unwrap();
        assert_eq!(sealed.len(), 3);
        assert_eq!(sealed.last(), Some(e(3, 30)));
    }

    #[test]
    fn damaged_sealed_index_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        let cases: &[(&str, Vec<u8>)] = &[
            ("ragged length", vec![1u8; 13]),
            (
                "decreasing",
                [e(5, 50).encode(), e(4, 60).encode()].concat(),
            ),
            ("zero entry", [0u8; 12].to_vec()),
        ];
        for (i, (what, bytes)) in cases.iter().enumerate() {
            std::fs::write(&path, bytes).unwrap();
            assert!(
                IndexFile::<OffsetEntry>::open_sealed(&path)
                    .unwrap()
                    .is_none(),
                "case {i}: {what}"
            );
        }
        std::fs::remove_file(&path).unwrap();
        assert!(
            IndexFile::<OffsetEntry>::open_sealed(&path)
                .unwrap()
                .is_none(),
            "missing"
        );
    }

    #[test]
    fn time_entries_follow_rule() {
        let a = TimeEntry {
            timestamp: 10,
            rel_offset: 3,
        };
        let cases = [
            (
                TimeEntry {
                    timestamp: 11,
                    rel_offset: 3,
                },
                true,
            ),
            (
                TimeEntry {
                    timestamp: 10,
                    rel_offset: 4,
                },
                false,
            ),
            (
                TimeEntry {
                    timestamp: 12,
                    rel_offset: 2,
                },
                false,
            ),
        ];
        for (i, (b, ok)) in cases.iter().enumerate() {
            assert_eq!(b.follows(Some(&a)), *ok, "case {i}");
        }
        assert!(
            !TimeEntry {
                timestamp: 0,
                rel_offset: 0
            }
            .follows(None)
        );
        assert!(
            TimeEntry {
                timestamp: -5,
                rel_offset: 0
            }
            .follows(None)
        );
    }
}
