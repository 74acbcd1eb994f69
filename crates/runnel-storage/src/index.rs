//! The sparse indexes of a segment.
//!
//! Both index files are arrays of fixed 12-byte little-endian entries:
//!
//! - `.index` ([`OffsetEntry`]): `rel_offset u32 · rel_index u32 · position u32`
//!   — the batch whose base offset is `base_offset + rel_offset` and whose
//!   Raft index is `base_index + rel_index` starts at byte `position` of the
//!   `.log` file. One entry every `index_interval_bytes`; the first batch of
//!   a segment is never indexed (position 0 is implied), so no valid entry
//!   is all zeros. Both keys increase strictly,
//!   so the same file serves lookups by offset and by Raft index.
//! - `.timeindex` ([`TimeEntry`]): `timestamp i64 · rel_offset u32` — every
//!   batch before the one at `rel_offset` (and that batch) has timestamps
//!   `<= timestamp`; timestamps increase strictly.
//!
//! The active segment's indexes live in memory and are appended to their
//! files with `pwrite` once the data they index is durable; sealed ones are
//! mapped read-only. Indexes are derived data: recovery validates them and
//! rebuilds them from the log when needed.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::durable::{open_rw, set_len, write_at};
use crate::error::{Result, StorageError};

/// Size of one index entry in bytes (both index kinds).
pub const ENTRY_LEN: usize = 12;

/// fsyncs an index file (data and size).
pub(crate) fn sync_index(file: &File, path: &Path) -> Result<()> {
    file.sync_all()
        .map_err(|e| StorageError::io("fsync", path, e))
}

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

/// Where an index's entries live.
enum Entries<E> {
    /// A sealed index: the trimmed file, mapped read-only.
    Mapped(Option<Mmap>),
    /// The active segment's index: every entry in memory; the first
    /// `stored` of them also in the file, appended with `pwrite`.
    Active { all: Vec<E>, stored: usize },
}

/// A segment's index file of entries `E`.
///
/// The active index keeps its entries in memory (12 bytes each; at most
/// `index_max_bytes`) and appends them to the file with `pwrite` once the
/// log bytes they point at are durable. No store ever goes through a map,
/// so nothing is preallocated and a full disk is an error, never a
/// `SIGBUS`. Sealed indexes are read through a read-only map.
pub(crate) struct IndexFile<E> {
    path: PathBuf,
    file: File,
    entries: Entries<E>,
    capacity: usize,
}

fn decode_all<E: IndexEntry>(bytes: &[u8]) -> Vec<E> {
    let mut out: Vec<E> = Vec::with_capacity(bytes.len() / ENTRY_LEN);
    for chunk in bytes.chunks_exact(ENTRY_LEN) {
        let e = E::decode(chunk);
        if !e.follows(out.last()) {
            break;
        }
        out.push(e);
    }
    out
}

impl<E: IndexEntry> IndexFile<E> {
    /// Opens a sealed index read-only. `Ok(None)` when the file is missing
    /// or malformed (ragged length, entries not increasing): the caller
    /// rebuilds it from the log.
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
            None
        } else {
            // SAFETY: sealed index files are never written or shrunk by
            // this crate while mapped (a truncation reopens them as active
            // first, dropping this map).
            Some(unsafe { Mmap::map(&file) }.map_err(|e| StorageError::io("mmap", path, e))?)
        };
        let idx = IndexFile {
            path: path.to_owned(),
            file,
            entries: Entries::Mapped(map),
            capacity: len / ENTRY_LEN,
        };
        // Entries must increase strictly; otherwise rebuild.
        let mut prev = None;
        for i in 0..idx.len() {
            let e: E = idx.entry(i);
            if !e.follows(prev.as_ref()) {
                return Ok(None);
            }
            prev = Some(e);
        }
        Ok(Some(idx))
    }

    /// Opens (creating if missing) an index for appending, holding at most
    /// `max_bytes / 12` entries. The valid prefix of an existing file (while
    /// entries increase strictly) is kept, the rest cut; the caller
    /// validates the entries further against the log.
    pub(crate) fn open_active(path: &Path, max_bytes: u32) -> Result<Self> {
        let file = open_rw(path, true)?;
        let capacity = max_bytes as usize / ENTRY_LEN;
        let bytes = std::fs::read(path).map_err(|e| StorageError::io("read", path, e))?;
        let mut all = decode_all::<E>(&bytes[..bytes.len().min(capacity * ENTRY_LEN)]);
        all.truncate(capacity);
        let stored = all.len();
        if bytes.len() != stored * ENTRY_LEN {
            set_len(&file, path, (stored * ENTRY_LEN) as u64)?;
        }
        Ok(IndexFile {
            path: path.to_owned(),
            file,
            entries: Entries::Active { all, stored },
            capacity,
        })
    }

    /// Number of entries, unpublished ones included.
    pub(crate) fn len(&self) -> usize {
        match &self.entries {
            Entries::Mapped(map) => map.as_ref().map_or(0, |m| m.len() / ENTRY_LEN),
            Entries::Active { all, .. } => all.len(),
        }
    }

    /// Whether no further entry fits.
    pub(crate) fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    /// Entry `i` (`i < len()`).
    pub(crate) fn entry(&self, i: usize) -> E {
        match &self.entries {
            Entries::Mapped(map) => {
                let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
                E::decode(&bytes[i * ENTRY_LEN..(i + 1) * ENTRY_LEN])
            }
            Entries::Active { all, .. } => all[i],
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

    /// Appends an entry in memory (published to the file later); `false`
    /// (nothing recorded) if full, out of order, or the index is sealed.
    pub(crate) fn push(&mut self, e: E) -> bool {
        if self.is_full() || !e.follows(self.last().as_ref()) {
            return false;
        }
        match &mut self.entries {
            Entries::Active { all, .. } => {
                all.push(e);
                true
            }
            Entries::Mapped(_) => false,
        }
    }

    /// Appends unpublished entries to the file, oldest first, while
    /// `durable` says the log bytes they point at are on disk. An index
    /// entry in the file thus never points past durable data, and recovery
    /// may start its scan at the last one without missing a hole written
    /// back out of order. On a write error (a full disk) the entries stay
    /// unpublished and the next call tries again: the index is derived data.
    pub(crate) fn publish_while(&mut self, durable: impl Fn(&E) -> bool) -> Result<()> {
        let Entries::Active { all, stored } = &mut self.entries else {
            return Ok(());
        };
        let n = all[*stored..].iter().take_while(|e| durable(e)).count();
        if n == 0 {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(n * ENTRY_LEN);
        for e in &all[*stored..*stored + n] {
            buf.extend_from_slice(&e.encode());
        }
        write_at(
            &self.file,
            &self.path,
            &buf,
            (*stored * ENTRY_LEN) as u64,
            None,
        )?;
        *stored += n;
        Ok(())
    }

    /// Drops entries `n..`, from memory and from the file.
    pub(crate) fn truncate_to(&mut self, n: usize) -> Result<()> {
        match &mut self.entries {
            Entries::Active { all, stored } => {
                all.truncate(n);
                if n < *stored {
                    set_len(&self.file, &self.path, (n * ENTRY_LEN) as u64)?;
                    *stored = n;
                }
                Ok(())
            }
            Entries::Mapped(_) => Err(StorageError::Invalid(format!(
                "{} is sealed: reopen it as active before truncating",
                self.path.display()
            ))),
        }
    }

    /// Publishes every entry, fsyncs the file and maps it read-only.
    /// Callers seal only after the log data is durable.
    pub(crate) fn seal(&mut self) -> Result<()> {
        let file = self.finish_writes()?;
        sync_index(&file, &self.path)?;
        self.map_sealed()
    }

    /// The first step of [`IndexFile::seal`]: publishes every entry and
    /// cuts the file after them. Returns a handle to fsync the file with
    /// (outside the log's lock), before [`IndexFile::map_sealed`].
    pub(crate) fn finish_writes(&mut self) -> Result<File> {
        self.publish_while(|_| true)?;
        if let Entries::Active { stored, .. } = &self.entries {
            // Cut anything past the entries (a failed write's leftovers).
            set_len(&self.file, &self.path, (*stored * ENTRY_LEN) as u64)?;
        }
        self.file
            .try_clone()
            .map_err(|e| StorageError::io("dup", &self.path, e))
    }

    /// The path of the index file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The last step of [`IndexFile::seal`], once the written file is
    /// fsynced: maps it read-only (no more entries can be pushed).
    pub(crate) fn map_sealed(&mut self) -> Result<()> {
        if let Entries::Active { stored, .. } = &self.entries {
            let map = if *stored == 0 {
                None
            } else {
                // SAFETY: as in `open_sealed`: no more writes to this file
                // while it is mapped.
                Some(
                    unsafe { Mmap::map(&self.file) }
                        .map_err(|e| StorageError::io("mmap", &self.path, e))?,
                )
            };
            self.capacity = *stored;
            self.entries = Entries::Mapped(map);
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
            idx.publish_while(|e| e.rel_offset <= 4).unwrap();
        }
        let mut idx = IndexFile::<OffsetEntry>::open_active(&path, 1200).unwrap();
        assert_eq!(idx.len(), 4, "the unpublished entry is not on disk");
        idx.truncate_to(3).unwrap();
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
