//! The files of a partition directory: listing them, decoding raw index
//! entries, and reading a `.log` file with positioned reads.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError};
use crate::filename::{
    DELETED_SUFFIX, INDEX_EXT, LOG_EXT, TIME_INDEX_EXT, TMP_SUFFIX, parse_segment_file_name,
    segment_path,
};
use crate::index::{ENTRY_LEN, IndexEntry, OffsetEntry, TimeEntry};
use crate::state::STATE_FILE;

/// Bytes read at once when checking that a region holds only zeros.
const ZERO_SCAN_CHUNK: usize = 1 << 20;

/// The files of a partition directory, as found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionFiles {
    /// The partition directory.
    pub dir: PathBuf,
    /// Segments that have a `.log` file, ordered by base offset.
    pub segments: Vec<SegmentFiles>,
    /// Path of `partition.state`, if the file exists.
    pub state: Option<PathBuf>,
    /// `*.deleted` and `*.tmp` files: leftovers of an interrupted deletion or
    /// state write, removed by the broker when it opens the log.
    pub leftovers: Vec<PathBuf>,
    /// Index files whose `.log` file is missing, removed by the broker when
    /// it opens the log.
    pub orphans: Vec<PathBuf>,
}

/// The three files of one segment. The index paths are where the files
/// belong; they may be missing (the broker rebuilds them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFiles {
    /// Base offset, from the file name.
    pub base_offset: u64,
    /// The `.log` data file (exists when listed).
    pub log: PathBuf,
    /// The `.index` file.
    pub index: PathBuf,
    /// The `.timeindex` file.
    pub time_index: PathBuf,
}

/// Lists the segment files of the partition directory `dir`.
///
/// An I/O error (for example [`io::ErrorKind::NotFound`] for a missing
/// directory) is returned as [`StorageError::Io`] naming `dir`. Files with
/// other names (not 20 digits and a known extension) are ignored, as the
/// broker ignores them.
pub fn list(dir: &Path) -> Result<PartitionFiles> {
    let listing = std::fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?;
    let mut files = PartitionFiles {
        dir: dir.to_path_buf(),
        ..Default::default()
    };
    let mut bases = Vec::new();
    let mut indexes = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(DELETED_SUFFIX) || name.ends_with(TMP_SUFFIX) {
            files.leftovers.push(entry.path());
        } else if name == STATE_FILE {
            files.state = Some(entry.path());
        } else if let Some((base, ext)) = parse_segment_file_name(name) {
            match ext {
                LOG_EXT => bases.push(base),
                INDEX_EXT | TIME_INDEX_EXT => indexes.push((base, entry.path())),
                _ => {}
            }
        }
    }
    bases.sort_unstable();
    files.leftovers.sort();
    for (base, path) in indexes {
        if bases.binary_search(&base).is_err() {
            files.orphans.push(path);
        }
    }
    files.orphans.sort();
    files.segments = bases
        .into_iter()
        .map(|base| SegmentFiles {
            base_offset: base,
            log: segment_path(dir, base, LOG_EXT),
            index: segment_path(dir, base, INDEX_EXT),
            time_index: segment_path(dir, base, TIME_INDEX_EXT),
        })
        .collect();
    Ok(files)
}

/// Decodes one `.index` entry (`rel_offset u32 · rel_index u32 · position
/// u32`, little-endian; see [`OffsetEntry`]).
pub fn decode_offset_entry(raw: &[u8; ENTRY_LEN]) -> OffsetEntry {
    OffsetEntry::decode(raw)
}

/// Decodes one `.timeindex` entry (`timestamp i64 · rel_offset u32`,
/// little-endian; see [`TimeEntry`]).
pub fn decode_time_entry(raw: &[u8; ENTRY_LEN]) -> TimeEntry {
    TimeEntry::decode(raw)
}

/// The raw entries of an index file: every whole 12-byte entry, zeros
/// included, and the number of bytes after the last whole entry (0 for a
/// well-formed file). This build never writes an all-zero entry, but an
/// active segment's index written by an older build (which preallocated
/// it), or left by a crash, may end in zeros: the first all-zero entry
/// marks the end of its entries.
pub fn index_entries(bytes: &[u8]) -> (Vec<[u8; ENTRY_LEN]>, usize) {
    let chunks = bytes.chunks_exact(ENTRY_LEN);
    let ragged = chunks.remainder().len();
    let entries = chunks
        .map(|c| {
            let mut raw = [0u8; ENTRY_LEN];
            raw.copy_from_slice(c);
            raw
        })
        .collect();
    (entries, ragged)
}

/// Every whole entry of the `.index` file at `path`, decoded, zeros
/// included; none when the file cannot be read (the index is optional:
/// callers fall back to walking from the start of the segment).
pub(super) fn read_offset_entries(path: &Path) -> Vec<OffsetEntry> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let (raw, _) = index_entries(&bytes);
    raw.iter().map(decode_offset_entry).collect()
}

/// A segment `.log` file opened read-only.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: File,
    len: u64,
}

impl LogFile {
    /// Opens `path` read-only and records its current length.
    pub fn open(path: &Path) -> Result<LogFile> {
        let file = File::open(path).map_err(|e| StorageError::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| StorageError::io("stat", path, e))?
            .len();
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Length of the file in bytes when it was opened: the size of its data,
    /// plus whatever follows the data (zeros left by an older build, which
    /// preallocated the active segment, or by a crash; a torn append).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads up to `buf.len()` bytes at `position`; returns how many were
    /// read (fewer only at the end of the file, or if the file shrank).
    pub(super) fn read_at(&self, position: u64, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], position + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StorageError::io("read", &self.path, e)),
            }
        }
        Ok(done)
    }

    /// Position of the first non-zero byte at or after `position`, or
    /// `None` when only zeros follow.
    pub(super) fn first_non_zero(&self, position: u64) -> Result<Option<u64>> {
        let zeros = vec![0u8; ZERO_SCAN_CHUNK];
        let mut buf = vec![0u8; ZERO_SCAN_CHUNK];
        let mut at = position;
        while at < self.len {
            let want = usize::try_from(self.len - at).map_or(buf.len(), |n| n.min(buf.len()));
            let got = self.read_at(at, &mut buf[..want])?;
            // Slice equality is a memcmp, fast even in unoptimized builds.
            if buf[..got] != zeros[..got] {
                let i = buf[..got].iter().position(|b| *b != 0).unwrap_or(0);
                return Ok(Some(at + i as u64));
            }
            if got < want {
                break; // the file shrank while we read it
            }
            at += got as u64;
        }
        Ok(None)
    }
}
