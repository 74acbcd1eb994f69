//! Read-only inspection of a partition directory, for operator tools
//! (`runnel log dump`, `runnel log verify`).
//!
//! Owns: listing the files of a partition directory, walking the batches
//! of a `.log` file, decoding index entries, and checking a whole partition
//! for damage ([`verify`]). Does not own: repairing anything. That is
//! [`crate::Log::open`]'s job (it truncates a torn tail, rebuilds indexes,
//! removes leftovers and rewrites `partition.state`).
//!
//! # Read-only
//!
//! Nothing here creates, modifies or removes a file: files are opened
//! read-only and read with positioned reads. No memory maps are used, so a
//! broker truncating a segment while a tool reads it cannot fault the tool;
//! the tool sees a shorter file instead. Results on a live partition are a
//! best-effort snapshot: run [`verify`] with the broker stopped to be sure.
//!
//! # Untrusted input
//!
//! Every byte read is untrusted: no input makes these functions panic or
//! allocate more than the size of the file being read. Damage is reported
//! as data ([`Problem`], [`DataEnd::Unreadable`], [`CrcCheck::Mismatch`]);
//! the `Err` case of the functions is kept for I/O failures.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use runnel_batch::{BatchError, BatchHeader, BatchView, HEADER_LEN};

use crate::error::{Result, StorageError};
use crate::filename::{
    DELETED_SUFFIX, INDEX_EXT, LOG_EXT, TIME_INDEX_EXT, TMP_SUFFIX, parse_segment_file_name,
    segment_path,
};
use crate::index::{ENTRY_LEN, IndexEntry, OffsetEntry, TimeEntry};
use crate::state::{PartitionState, STATE_FILE};

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
/// included (the active segment's index files are preallocated, so an
/// all-zero entry marks their end), and the number of bytes after the
/// last whole entry (0 for a well-formed file).
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

    /// Length of the file in bytes when it was opened (for the active
    /// segment, its preallocated size, not the size of its data).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Iterates over the batches from byte `position`, which must be a
    /// batch boundary (0, or a position taken from a verified index entry).
    pub fn batches(&self, position: u64) -> Batches<'_> {
        Batches {
            file: self,
            position,
            end: None,
            failed: false,
        }
    }

    /// Reads up to `buf.len()` bytes at `position`; returns how many were
    /// read (fewer only at the end of the file, or if the file shrank).
    fn read_at(&self, position: u64, buf: &mut [u8]) -> Result<usize> {
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
    fn first_non_zero(&self, position: u64) -> Result<Option<u64>> {
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

    /// Reads the header at `position` and, if it parses and the whole batch
    /// lies within the file, the batch.
    fn batch_at(&self, position: u64) -> Result<std::result::Result<StoredBatch, Unreadable>> {
        let available = self.len.saturating_sub(position);
        let mut head = [0u8; HEADER_LEN];
        let want = usize::try_from(available).map_or(HEADER_LEN, |n| n.min(HEADER_LEN));
        let got = self.read_at(position, &mut head[..want])?;
        let header = match BatchHeader::parse(&head[..got]) {
            Ok(h) => h,
            Err(e) => return Ok(Err(Unreadable::BadHeader(e))),
        };
        let len = u64::from(header.batch_len);
        if len > available {
            return Ok(Err(Unreadable::PastEnd {
                batch_len: header.batch_len,
                available,
            }));
        }
        // Bounded by the file's length, checked just above.
        let mut bytes = vec![0u8; header.batch_len as usize];
        let got = self.read_at(position, &mut bytes)?;
        if got < bytes.len() {
            return Ok(Err(Unreadable::PastEnd {
                batch_len: header.batch_len,
                available: got as u64,
            }));
        }
        let crc = match BatchView::new(&bytes) {
            Ok(_) => CrcCheck::Ok,
            Err(BatchError::CrcMismatch { stored, computed }) => {
                CrcCheck::Mismatch { stored, computed }
            }
            Err(e) => return Ok(Err(Unreadable::BadHeader(e))),
        };
        Ok(Ok(StoredBatch {
            position,
            header,
            crc,
            bytes,
        }))
    }

    /// Whether the batch at `position` is intact and carries `offset` and
    /// `raft_index` (what recovery asks of an index entry).
    fn verified_at(&self, position: u64, offset: u64, raft_index: u64) -> Result<bool> {
        Ok(match self.batch_at(position)? {
            Ok(b) => {
                b.crc_ok() && b.header.base_offset == offset && b.header.raft_index == raft_index
            }
            Err(_) => false,
        })
    }
}

/// Result of checking a stored batch's CRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrcCheck {
    /// The CRC matches the bytes.
    Ok,
    /// The bytes changed after the producer computed the CRC.
    Mismatch {
        /// CRC stored in the header.
        stored: u32,
        /// CRC of the bytes as read.
        computed: u32,
    },
}

/// One batch as stored in a segment file: its header parsed and all of its
/// bytes read, whether or not its CRC checks out.
#[derive(Clone, Debug)]
pub struct StoredBatch {
    /// Byte position of the batch in its `.log` file.
    pub position: u64,
    /// The parsed header. When the CRC does not match, its fields are not
    /// to be trusted (the offsets, term and index are never covered by it).
    pub header: BatchHeader,
    /// Result of the CRC check.
    pub crc: CrcCheck,
    bytes: Vec<u8>,
}

impl StoredBatch {
    /// Whether the CRC matches.
    pub fn crc_ok(&self) -> bool {
        self.crc == CrcCheck::Ok
    }

    /// The batch bytes, header included, exactly as stored.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A verified view (to decode the records), only when the CRC matches.
    pub fn view(&self) -> Option<BatchView<'_>> {
        BatchView::new(&self.bytes).ok()
    }

    /// Position just after the batch: where the next one starts.
    pub fn end_position(&self) -> u64 {
        self.position + u64::from(self.header.batch_len)
    }
}

/// Why the bytes at a position are not a batch that can be walked over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// The header does not parse.
    BadHeader(BatchError),
    /// The header claims more bytes than the file holds after it.
    PastEnd {
        /// Length the header claims.
        batch_len: u32,
        /// Bytes left in the file from the batch's position.
        available: u64,
    },
    /// Zeros where a header should start, but non-zero bytes later on.
    StrayBytes {
        /// Position of the first non-zero byte.
        first_non_zero: u64,
    },
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreadable::BadHeader(e) => write!(f, "{e}"),
            Unreadable::PastEnd {
                batch_len,
                available,
            } => write!(
                f,
                "the header claims {batch_len} bytes but only {available} remain in the file"
            ),
            Unreadable::StrayBytes { first_non_zero } => write!(
                f,
                "zero bytes where a batch should start, then non-zero bytes at position {first_non_zero}"
            ),
        }
    }
}

/// How the walk over a `.log` file ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataEnd {
    /// The last batch ends exactly at the end of the file (a sealed segment).
    EndOfFile {
        /// The file's length.
        position: u64,
    },
    /// Only zero bytes follow the last batch: preallocated space of the
    /// active segment.
    Preallocated {
        /// Where the data ends and the zeros begin.
        position: u64,
        /// Number of zero bytes up to the end of the file.
        bytes: u64,
    },
    /// Bytes that are not a batch: a torn write or damage.
    Unreadable {
        /// Where the unreadable bytes begin.
        position: u64,
        /// What is wrong with them.
        reason: Unreadable,
    },
}

impl DataEnd {
    /// Whether the data ends cleanly: at the end of the file, or where only
    /// zeros follow.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            DataEnd::EndOfFile { .. } | DataEnd::Preallocated { .. }
        )
    }

    /// Where the walkable data ends.
    pub fn position(&self) -> u64 {
        match self {
            DataEnd::EndOfFile { position }
            | DataEnd::Preallocated { position, .. }
            | DataEnd::Unreadable { position, .. } => *position,
        }
    }
}

/// Iterator over the batches of a [`LogFile`]; see [`LogFile::batches`].
///
/// Yields every batch whose header parses and whose bytes lie within the
/// file, including batches whose CRC does not match (their length field is
/// not covered by the CRC, so the walk goes on after them). Stops at the
/// first bytes that are not such a batch; [`Batches::end`] then says how
/// the data ended. An I/O error is yielded once and ends the iteration.
#[derive(Debug)]
pub struct Batches<'a> {
    file: &'a LogFile,
    position: u64,
    end: Option<DataEnd>,
    failed: bool,
}

impl Batches<'_> {
    /// How the data ended, once the iteration returned `None` (and not
    /// after an I/O error).
    pub fn end(&self) -> Option<&DataEnd> {
        self.end.as_ref()
    }

    fn step(&mut self) -> Result<Option<StoredBatch>> {
        let position = self.position;
        if position >= self.file.len {
            self.end = Some(DataEnd::EndOfFile { position });
            return Ok(None);
        }
        match self.file.batch_at(position)? {
            Ok(batch) => {
                self.position = batch.end_position();
                Ok(Some(batch))
            }
            Err(reason) => {
                let end = match self.file.first_non_zero(position)? {
                    None => DataEnd::Preallocated {
                        position,
                        bytes: self.file.len - position,
                    },
                    Some(first) if first >= position + HEADER_LEN as u64 => DataEnd::Unreadable {
                        position,
                        reason: Unreadable::StrayBytes {
                            first_non_zero: first,
                        },
                    },
                    Some(_) => DataEnd::Unreadable { position, reason },
                };
                self.end = Some(end);
                Ok(None)
            }
        }
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<StoredBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.end.is_some() || self.failed {
            return None;
        }
        match self.step() {
            Ok(batch) => batch.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Where to start walking `segment`'s log to reach `offset` quickly: the
/// position of the last `.index` entry at or below `offset` whose batch
/// header carries the entry's offset, else 0. The index is untrusted and
/// optional: a missing, unreadable or wrong index only costs a longer walk.
pub fn scan_start(segment: &SegmentFiles, log: &LogFile, offset: u64) -> Result<u64> {
    let Some(rel) = offset.checked_sub(segment.base_offset) else {
        return Ok(0);
    };
    let bytes = match std::fs::read(&segment.index) {
        Ok(b) => b,
        Err(_) => return Ok(0),
    };
    let (raw, _) = index_entries(&bytes);
    let entries = raw
        .iter()
        .map(decode_offset_entry)
        .take_while(|e| e.position != 0)
        .filter(|e| u64::from(e.rel_offset) <= rel);
    let candidates: Vec<OffsetEntry> = entries.collect();
    for e in candidates.iter().rev() {
        let expected = segment.base_offset.checked_add(u64::from(e.rel_offset));
        if let Ok(b) = log.batch_at(u64::from(e.position))? {
            if Some(b.header.base_offset) == expected {
                return Ok(u64::from(e.position));
            }
        }
    }
    Ok(0)
}

/// Where in the log a problem lies, which decides what the broker does
/// about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A sealed segment (every one but the last). The broker never scans or
    /// repairs sealed segments: reads of damaged batches fail.
    Sealed,
    /// The active (last) segment, before `scan_from`, the position where
    /// the broker's recovery starts (its last index entry that checks
    /// out). Recovery does not see it: reads of damaged batches fail.
    ActiveUnscanned {
        /// Where recovery starts scanning.
        scan_from: u64,
    },
    /// The active segment, where recovery scans: the broker truncates the
    /// segment at the first bad batch it finds there when it opens the log.
    ActiveScanned,
}

/// What is wrong with an entry of an `.index` or `.timeindex` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryProblem {
    /// Not above the previous entry: for `.index`, position, relative
    /// offset and relative Raft index must all increase strictly (and the
    /// first entry cannot be the segment's first batch, never indexed); for
    /// `.timeindex`, the timestamp must increase strictly and the relative
    /// offset must not decrease.
    NotIncreasing,
    /// An all-zero entry in a sealed segment's index (sealed indexes are
    /// trimmed to their entries).
    ZeroEntry,
    /// A non-zero entry after the all-zero entry that ends a preallocated
    /// index (the active segment's).
    AfterEndMarker,
    /// `.index`: the position is not where a batch starts.
    NotABatchBoundary {
        /// The entry's position.
        position: u32,
    },
    /// `.index`: the position lies at or past the end of the data.
    PastData {
        /// The entry's position.
        position: u32,
        /// Where the data ends.
        data_end: u64,
    },
    /// `.index`: the batch at the position has another base offset.
    OffsetMismatch {
        /// Offset the entry says (segment base + relative offset).
        entry: u64,
        /// Base offset of the batch found there.
        batch: u64,
    },
    /// `.index`: the batch at the position has another Raft index.
    RaftIndexMismatch {
        /// Raft index the entry says (first index of the segment + relative).
        entry: u64,
        /// Raft index of the batch found there.
        batch: u64,
    },
    /// `.timeindex`: no batch of the segment starts at the entry's offset.
    NoSuchBatch {
        /// Offset the entry names (`u64::MAX` if it overflows).
        offset: u64,
    },
    /// `.timeindex`: the timestamp is not the largest timestamp of the
    /// segment up to and including the batch the entry names.
    NotRunningMax {
        /// The entry's timestamp.
        entry: i64,
        /// Largest batch `max_timestamp` up to that batch.
        running_max: i64,
    },
}

impl fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryProblem::NotIncreasing => write!(f, "not above the previous entry"),
            EntryProblem::ZeroEntry => write!(f, "all-zero entry in a sealed segment's index"),
            EntryProblem::AfterEndMarker => {
                write!(f, "non-zero entry after the all-zero end marker")
            }
            EntryProblem::NotABatchBoundary { position } => {
                write!(f, "position {position} is not the start of a batch")
            }
            EntryProblem::PastData { position, data_end } => write!(
                f,
                "position {position} is past the end of the data (byte {data_end})"
            ),
            EntryProblem::OffsetMismatch { entry, batch } => write!(
                f,
                "entry says offset {entry} but the batch there starts at offset {batch}"
            ),
            EntryProblem::RaftIndexMismatch { entry, batch } => write!(
                f,
                "entry says raft index {entry} but the batch there has raft index {batch}"
            ),
            EntryProblem::NoSuchBatch { offset } => {
                write!(f, "no batch of this segment starts at offset {offset}")
            }
            EntryProblem::NotRunningMax { entry, running_max } => write!(
                f,
                "timestamp {entry} but the largest timestamp up to that batch is {running_max}"
            ),
        }
    }
}

/// One thing [`verify`] found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The directory holds no `.log` file.
    NoSegments,
    /// Bytes that are not a batch, where more data follows or in a sealed
    /// segment.
    UnreadableBatch {
        /// What is wrong.
        reason: Unreadable,
        /// Where it lies.
        place: Place,
    },
    /// A batch whose CRC does not match its bytes.
    CrcMismatch {
        /// Base offset in the (untrusted) header.
        base_offset: u64,
        /// Last offset in the (untrusted) header.
        last_offset: u64,
        /// CRC stored in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
        /// Where it lies.
        place: Place,
    },
    /// An incomplete or damaged batch at the end of the active segment's
    /// data, where the broker's recovery scans: it truncates it on open.
    TornTail {
        /// What is wrong with the bytes.
        reason: String,
    },
    /// A batch whose CRC matches but whose records do not decode: the
    /// producer wrote it this way, and consumers cannot read it.
    UndecodableRecords {
        /// Base offset of the batch.
        base_offset: u64,
        /// The decoding error.
        error: BatchError,
    },
    /// The header's `max_timestamp` is not the largest record timestamp.
    MaxTimestampMismatch {
        /// Base offset of the batch.
        base_offset: u64,
        /// `max_timestamp` in the header.
        header: i64,
        /// Largest timestamp of the records.
        records: i64,
    },
    /// A batch's base offset does not follow the previous batch.
    OffsetGap {
        /// Offset expected (the previous batch's last offset + 1).
        expected: u64,
        /// Offset found.
        found: u64,
        /// Where it lies.
        place: Place,
    },
    /// A batch's Raft index does not follow the previous batch's.
    RaftIndexGap {
        /// Index expected.
        expected: u64,
        /// Index found.
        found: u64,
        /// Where it lies.
        place: Place,
    },
    /// A batch's Raft term is below the previous batch's.
    TermRegression {
        /// Term of the previous batch.
        previous: u64,
        /// Term found.
        found: u64,
        /// Where it lies.
        place: Place,
    },
    /// The first batch's offset is not the one in the file name.
    NameMismatch {
        /// Offset in the file name.
        name_offset: u64,
        /// Base offset of the first batch.
        batch_offset: u64,
    },
    /// The segment's file name does not continue the previous segment.
    SegmentGap {
        /// Offset after the previous segment's last batch.
        previous_end: u64,
        /// This segment's base offset (file name).
        base_offset: u64,
    },
    /// A sealed segment with no data.
    EmptySealedSegment,
    /// Zero bytes after the data of a sealed segment: it was never trimmed,
    /// so a roll was interrupted between creating the next segment and
    /// sealing this one.
    SealedSegmentNotTrimmed {
        /// Number of zero bytes.
        zero_bytes: u64,
    },
    /// An index file whose length is not a multiple of the entry size.
    IndexLength {
        /// File length.
        len: u64,
    },
    /// A bad `.index` entry.
    IndexEntry {
        /// Entry number (0-based).
        entry: u64,
        /// What is wrong.
        problem: EntryProblem,
    },
    /// A bad `.timeindex` entry.
    TimeIndexEntry {
        /// Entry number (0-based).
        entry: u64,
        /// What is wrong.
        problem: EntryProblem,
    },
    /// `partition.state` is missing while segments exist.
    StateMissing,
    /// `partition.state` does not decode.
    StateCorrupt {
        /// Why.
        reason: String,
    },
    /// The log start offset lies outside the stored offsets.
    LogStartOutOfRange {
        /// `log_start_offset` from the state file.
        log_start: u64,
        /// Base offset of the first segment.
        first: u64,
        /// Offset after the last batch.
        end: u64,
    },
    /// The first segment does not start right after the compacted Raft
    /// index: segments are missing (the broker refuses to open the log).
    CompactedIndexMismatch {
        /// `compacted_index` from the state file.
        compacted_index: u64,
        /// Raft index of the first stored batch.
        first_index: u64,
    },
    /// The term runs of `partition.state` disagree with a batch's term.
    TermRunMismatch {
        /// Raft index of the batch.
        raft_index: u64,
        /// Term in the batch.
        batch_term: u64,
        /// Term the runs give for that index (`None`: no run covers it).
        state_term: Option<u64>,
    },
}

impl ProblemKind {
    /// A stable snake_case name for machine-readable output.
    pub fn code(&self) -> &'static str {
        match self {
            ProblemKind::NoSegments => "no_segments",
            ProblemKind::UnreadableBatch { .. } => "unreadable_batch",
            ProblemKind::CrcMismatch { .. } => "crc_mismatch",
            ProblemKind::TornTail { .. } => "torn_tail",
            ProblemKind::UndecodableRecords { .. } => "undecodable_records",
            ProblemKind::MaxTimestampMismatch { .. } => "max_timestamp_mismatch",
            ProblemKind::OffsetGap { .. } => "offset_gap",
            ProblemKind::RaftIndexGap { .. } => "raft_index_gap",
            ProblemKind::TermRegression { .. } => "term_regression",
            ProblemKind::NameMismatch { .. } => "name_mismatch",
            ProblemKind::SegmentGap { .. } => "segment_gap",
            ProblemKind::EmptySealedSegment => "empty_sealed_segment",
            ProblemKind::SealedSegmentNotTrimmed { .. } => "sealed_segment_not_trimmed",
            ProblemKind::IndexLength { .. } => "index_length",
            ProblemKind::IndexEntry { .. } => "index_entry",
            ProblemKind::TimeIndexEntry { .. } => "time_index_entry",
            ProblemKind::StateMissing => "state_missing",
            ProblemKind::StateCorrupt { .. } => "state_corrupt",
            ProblemKind::LogStartOutOfRange { .. } => "log_start_out_of_range",
            ProblemKind::CompactedIndexMismatch { .. } => "compacted_index_mismatch",
            ProblemKind::TermRunMismatch { .. } => "term_run_mismatch",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::NoSegments => write!(f, "no segment (.log) files"),
            ProblemKind::UnreadableBatch { reason, .. } => write!(f, "unreadable batch: {reason}"),
            ProblemKind::CrcMismatch {
                base_offset,
                last_offset,
                stored,
                computed,
                ..
            } => write!(
                f,
                "crc mismatch in the batch of offsets {base_offset}..={last_offset}: \
                 stored {stored:#010x}, computed {computed:#010x}"
            ),
            ProblemKind::TornTail { reason } => {
                write!(
                    f,
                    "torn tail: incomplete batch at the end of the active segment ({reason})"
                )
            }
            ProblemKind::UndecodableRecords { base_offset, error } => {
                write!(
                    f,
                    "records of the batch at offset {base_offset} do not decode: {error}"
                )
            }
            ProblemKind::MaxTimestampMismatch {
                base_offset,
                header,
                records,
            } => write!(
                f,
                "batch at offset {base_offset}: header max_timestamp {header} but the largest \
                 record timestamp is {records}"
            ),
            ProblemKind::OffsetGap {
                expected, found, ..
            } => write!(f, "batch offset {found} where {expected} was expected"),
            ProblemKind::RaftIndexGap {
                expected, found, ..
            } => write!(f, "raft index {found} where {expected} was expected"),
            ProblemKind::TermRegression {
                previous, found, ..
            } => write!(f, "raft term {found} after term {previous}"),
            ProblemKind::NameMismatch {
                name_offset,
                batch_offset,
            } => write!(
                f,
                "the file name says offset {name_offset} but the first batch starts at {batch_offset}"
            ),
            ProblemKind::SegmentGap {
                previous_end,
                base_offset,
            } => write!(
                f,
                "segment starts at offset {base_offset} but the previous segment ends at {previous_end}"
            ),
            ProblemKind::EmptySealedSegment => write!(f, "sealed segment holds no batch"),
            ProblemKind::SealedSegmentNotTrimmed { zero_bytes } => write!(
                f,
                "{zero_bytes} zero bytes after the data of a sealed segment (an interrupted roll)"
            ),
            ProblemKind::IndexLength { len } => write!(
                f,
                "index file of {len} bytes is not a whole number of {ENTRY_LEN}-byte entries"
            ),
            ProblemKind::IndexEntry { entry, problem } => {
                write!(f, "index entry {entry}: {problem}")
            }
            ProblemKind::TimeIndexEntry { entry, problem } => {
                write!(f, "time index entry {entry}: {problem}")
            }
            ProblemKind::StateMissing => write!(f, "{STATE_FILE} is missing"),
            ProblemKind::StateCorrupt { reason } => write!(f, "{STATE_FILE} is damaged: {reason}"),
            ProblemKind::LogStartOutOfRange {
                log_start,
                first,
                end,
            } => write!(
                f,
                "log start offset {log_start} lies outside the stored offsets [{first}, {end}]"
            ),
            ProblemKind::CompactedIndexMismatch {
                compacted_index,
                first_index,
            } => write!(
                f,
                "the first stored batch has raft index {first_index} but the compacted index is \
                 {compacted_index}: raft indexes {}..{first_index} are missing",
                compacted_index.saturating_add(1)
            ),
            ProblemKind::TermRunMismatch {
                raft_index,
                batch_term,
                state_term,
            } => match state_term {
                Some(t) => write!(
                    f,
                    "term runs give term {t} for raft index {raft_index}, the batch has term {batch_term}"
                ),
                None => write!(
                    f,
                    "no term run covers raft index {raft_index} (the batch has term {batch_term})"
                ),
            },
        }
    }
}

/// A problem found by [`verify`]: where, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file holding the bad bytes.
    pub path: PathBuf,
    /// Byte position in that file (0 for whole-file problems).
    pub position: u64,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl Problem {
    /// What the broker does about it and what an operator should do next.
    pub fn hint(&self) -> String {
        let file = self.path.display();
        let replace = "If these offsets matter, stop the broker and replace this partition's \
                       directory with a copy from a healthy replica (keep the damaged copy for \
                       analysis).";
        let data = |place: &Place| match place {
            Place::Sealed => format!(
                "Sealed segments are never repaired by the broker: reads of these offsets fail. \
                 {replace}"
            ),
            Place::ActiveUnscanned { scan_from } => format!(
                "The broker's recovery starts at byte {scan_from} of the active segment (its last \
                 valid index entry) and does not see this: reads of these offsets fail. {replace}"
            ),
            Place::ActiveScanned => format!(
                "When it opens the log, the broker truncates the active segment to byte {}, \
                 dropping this batch and every one after it. {replace}",
                self.position
            ),
        };
        match &self.kind {
            ProblemKind::NoSegments => format!(
                "Check the path: a partition directory holds files like {}, {} and {STATE_FILE}.",
                crate::filename::segment_file_name(0, LOG_EXT),
                crate::filename::segment_file_name(0, INDEX_EXT)
            ),
            ProblemKind::UnreadableBatch { place, .. }
            | ProblemKind::CrcMismatch { place, .. }
            | ProblemKind::OffsetGap { place, .. }
            | ProblemKind::RaftIndexGap { place, .. }
            | ProblemKind::TermRegression { place, .. } => data(place),
            ProblemKind::TornTail { .. } => format!(
                "An append was cut short by a crash. When it opens the log, the broker truncates \
                 {file} to byte {}; nothing to do unless you want to keep the bytes (copy the file \
                 before starting the broker).",
                self.position
            ),
            ProblemKind::UndecodableRecords { .. } | ProblemKind::MaxTimestampMismatch { .. } => {
                "The CRC matches, so the producer wrote the batch this way: find the producer \
                 (see `runnel log dump --print-records`) and fix it; consumers and timestamp \
                 lookups may fail on this batch."
                    .to_string()
            }
            ProblemKind::NameMismatch { .. }
            | ProblemKind::SegmentGap { .. }
            | ProblemKind::EmptySealedSegment => format!(
                "The broker refuses to open this log or fails reads across this segment. Check \
                 whether segment files were renamed, copied or deleted by hand. {replace}"
            ),
            ProblemKind::SealedSegmentNotTrimmed { .. } => format!(
                "Sealing would have cut {file} to byte {}; a broker that does not finish the cut \
                 itself fails to read past the data. With the broker stopped, copy the file, then \
                 cut it: `truncate -s {} {file}`.",
                self.position, self.position
            ),
            ProblemKind::IndexLength { .. }
            | ProblemKind::IndexEntry { .. }
            | ProblemKind::TimeIndexEntry { .. } => {
                let log = self.path.with_extension(LOG_EXT);
                format!(
                    "Indexes are derived data. With the broker stopped, delete {} and {}; the \
                     broker rebuilds them from {} when it opens the log.",
                    self.path.with_extension(INDEX_EXT).display(),
                    self.path.with_extension(TIME_INDEX_EXT).display(),
                    log.display()
                )
            }
            ProblemKind::StateMissing
            | ProblemKind::StateCorrupt { .. }
            | ProblemKind::TermRunMismatch { .. } => format!(
                "With the broker stopped, move {file} aside: the broker rebuilds it from the \
                 segments when it opens the log (the term of the last compacted entry is then \
                 estimated; check Raft agrees)."
            ),
            ProblemKind::LogStartOutOfRange { .. } => {
                "The broker clamps the log start offset into the stored offsets when it opens the \
                 log. Check whether segments were deleted or restored by hand."
                    .to_string()
            }
            ProblemKind::CompactedIndexMismatch { .. } => format!(
                "The broker refuses to open this log: a segment is missing. Restore it from a \
                 backup, or {}",
                replace.replacen("If these offsets matter, stop", "stop", 1)
            ),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at byte {}: {}",
            self.path.display(),
            self.position,
            self.kind
        )
    }
}

/// Something [`verify`] noticed that is not damage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// The file concerned.
    pub path: PathBuf,
    /// What about it.
    pub kind: NoteKind,
}

/// What a [`Note`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    /// A `*.deleted` or `*.tmp` leftover, removed by the broker on open.
    Leftover,
    /// An index file without its `.log` file, removed by the broker on open.
    OrphanIndex,
    /// A missing index file, rebuilt by the broker on open.
    MissingIndex,
    /// A segment wholly below the compacted Raft index: a leftover of an
    /// interrupted retention, deleted by the broker on open.
    BelowCompactedIndex,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            NoteKind::Leftover => {
                "leftover of an interrupted operation; the broker removes it on open"
            }
            NoteKind::OrphanIndex => "index without its .log file; the broker removes it on open",
            NoteKind::MissingIndex => "missing; the broker rebuilds it from the log on open",
            NoteKind::BelowCompactedIndex => {
                "segment below the compacted raft index (interrupted retention); the broker deletes it on open"
            }
        };
        write!(f, "{}: {what}", self.path.display())
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The partition directory.
    pub dir: PathBuf,
    /// Segments found.
    pub segments: usize,
    /// Batches walked (including damaged ones whose header parsed).
    pub batches: u64,
    /// Records in those batches, per their headers.
    pub records: u64,
    /// Bytes of batch data (preallocated space excluded).
    pub bytes: u64,
    /// Base offset of the first batch, if any.
    pub first_offset: Option<u64>,
    /// Offset after the last intact batch, if any.
    pub end_offset: Option<u64>,
    /// Raft index of the first batch, if any.
    pub first_index: Option<u64>,
    /// Raft index of the last intact batch, if any.
    pub last_index: Option<u64>,
    /// `log_start_offset` from `partition.state`, if it decodes.
    pub log_start_offset: Option<u64>,
    /// Damage, in the order found: segments oldest first (data, then
    /// `.index`, then `.timeindex`), then `partition.state`.
    pub problems: Vec<Problem>,
    /// Things that are not damage.
    pub notes: Vec<Note>,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A batch boundary found by the walk, for the index checks.
#[derive(Clone, Copy, Debug)]
struct Mark {
    position: u64,
    base_offset: u64,
    raft_index: u64,
    raft_term: u64,
    crc_ok: bool,
    /// Largest `max_timestamp` of the segment up to and including this batch.
    running_max: i64,
}

/// What the walk of one segment's data found.
struct Walk {
    marks: Vec<Mark>,
    end: DataEnd,
}

/// Where the walk across segments stands.
#[derive(Default)]
struct Cursor {
    next_offset: Option<u64>,
    next_index: Option<u64>,
    last_term: Option<u64>,
}

/// Checks the partition directory `dir` without modifying anything.
///
/// Checks every batch's header and CRC and decodes its records; offsets
/// and Raft indexes contiguous within and across segments, terms never
/// decreasing; each file name equal to its first batch's base offset;
/// every `.index` entry pointing at a batch with its relative offset and
/// Raft index; `.timeindex` entries increasing and equal to the running
/// maximum timestamp at their batch; `partition.state` decoding, its log
/// start offset within the log, its compacted index just below the first
/// batch and its term runs agreeing with every batch.
///
/// Zero bytes after the last segment's data are preallocated space, not
/// damage. Only I/O failures are errors; damage is in the report.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let files = list(dir)?;
    let mut report = VerifyReport {
        dir: dir.to_path_buf(),
        segments: files.segments.len(),
        ..Default::default()
    };
    for path in &files.leftovers {
        report.notes.push(Note {
            path: path.clone(),
            kind: NoteKind::Leftover,
        });
    }
    for path in &files.orphans {
        report.notes.push(Note {
            path: path.clone(),
            kind: NoteKind::OrphanIndex,
        });
    }
    if files.segments.is_empty() {
        report.problems.push(Problem {
            path: dir.to_path_buf(),
            position: 0,
            kind: ProblemKind::NoSegments,
        });
        return Ok(report);
    }
    let state_path = dir.join(STATE_FILE);
    let mut state_problems = Vec::new();
    let state = match PartitionState::load(dir) {
        Ok(s) => s,
        Err(StorageError::Corrupt { reason, .. }) => {
            state_problems.push(Problem {
                path: state_path.clone(),
                position: 0,
                kind: ProblemKind::StateCorrupt { reason },
            });
            None
        }
        Err(e) => return Err(e),
    };
    if state.is_none() && files.state.is_none() {
        state_problems.push(Problem {
            path: state_path.clone(),
            position: 0,
            kind: ProblemKind::StateMissing,
        });
    }
    let mut cursor = Cursor::default();
    let mut term_mismatch: Option<Problem> = None;
    let mut first_indexes = Vec::with_capacity(files.segments.len());
    let last = files.segments.len() - 1;
    for (k, seg) in files.segments.iter().enumerate() {
        let active = k == last;
        let log = LogFile::open(&seg.log)?;
        let walk = walk_segment(&log, seg, active, &mut cursor, &mut report)?;
        first_indexes.push(walk.marks.first().map(|m| m.raft_index));
        if let Some(state) = &state {
            if term_mismatch.is_none() {
                term_mismatch = check_terms(&walk, state, &state_path);
            }
        }
        check_offset_index(seg, &walk, active, &mut report)?;
        check_time_index(seg, &walk, active, &mut report)?;
        if report.first_offset.is_none() {
            if let Some(m) = walk.marks.first() {
                report.first_offset = Some(m.base_offset);
                report.first_index = Some(m.raft_index);
            }
        }
    }
    if let Some(state) = &state {
        report.log_start_offset = Some(state.log_start_offset);
        // Segments wholly below the compacted index are leftovers of an
        // interrupted retention: the broker deletes them on open.
        let mut live = 0;
        while live < last
            && first_indexes[live + 1].is_some_and(|i| i <= state.compacted_index.saturating_add(1))
        {
            report.notes.push(Note {
                path: files.segments[live].log.clone(),
                kind: NoteKind::BelowCompactedIndex,
            });
            live += 1;
        }
        let first = &files.segments[live];
        if let Some(first_index) = first_indexes[live] {
            if first_index != state.compacted_index.saturating_add(1) {
                state_problems.push(Problem {
                    path: state_path.clone(),
                    position: 0,
                    kind: ProblemKind::CompactedIndexMismatch {
                        compacted_index: state.compacted_index,
                        first_index,
                    },
                });
            }
        }
        let end = report.end_offset.unwrap_or(first.base_offset);
        if state.log_start_offset < first.base_offset || state.log_start_offset > end {
            state_problems.push(Problem {
                path: state_path.clone(),
                position: 0,
                kind: ProblemKind::LogStartOutOfRange {
                    log_start: state.log_start_offset,
                    first: first.base_offset,
                    end,
                },
            });
        }
        state_problems.extend(term_mismatch);
    }
    for seg in &files.segments {
        for path in [&seg.index, &seg.time_index] {
            if !path.exists() {
                report.notes.push(Note {
                    path: path.clone(),
                    kind: NoteKind::MissingIndex,
                });
            }
        }
    }
    report.problems.extend(state_problems);
    Ok(report)
}

/// Walks one segment's batches, checking each and the links between them.
fn walk_segment(
    log: &LogFile,
    seg: &SegmentFiles,
    active: bool,
    cursor: &mut Cursor,
    report: &mut VerifyReport,
) -> Result<Walk> {
    let path = &seg.log;
    let problem = |report: &mut VerifyReport, position: u64, kind: ProblemKind| {
        report.problems.push(Problem {
            path: path.clone(),
            position,
            kind,
        });
    };
    if let Some(previous_end) = cursor.next_offset {
        if previous_end != seg.base_offset {
            problem(
                report,
                0,
                ProblemKind::SegmentGap {
                    previous_end,
                    base_offset: seg.base_offset,
                },
            );
        }
    }
    // The active segment's problems are judged against where the broker's
    // recovery starts scanning, known once the walk has found the batches.
    let mut marks: Vec<Mark> = Vec::new();
    let mut pending: Vec<(usize, u64)> = Vec::new();
    let mut expect_offset = Some(seg.base_offset);
    let mut running_max = i64::MIN;
    let mut walk = log.batches(0);
    for batch in walk.by_ref() {
        let batch = batch?;
        let h = batch.header;
        let pos = batch.position;
        let before = report.problems.len();
        if let CrcCheck::Mismatch { stored, computed } = batch.crc {
            // Only the CRC is reported: the links of a damaged batch mean
            // nothing (they are adopted below, hoping the damage lies after
            // the header, so that the next batch is judged on its own).
            problem(
                report,
                pos,
                ProblemKind::CrcMismatch {
                    base_offset: h.base_offset,
                    last_offset: h.last_offset(),
                    stored,
                    computed,
                    place: Place::Sealed,
                },
            );
        } else {
            for kind in check_links(seg, &h, marks.is_empty(), expect_offset, cursor) {
                problem(report, pos, kind);
            }
            if let Some(kind) = batch.view().and_then(|v| check_records(&v)) {
                problem(report, pos, kind);
            }
        }
        if active {
            pending.extend((before..report.problems.len()).map(|i| (i, pos)));
        }
        running_max = running_max.max(h.max_timestamp);
        marks.push(Mark {
            position: pos,
            base_offset: h.base_offset,
            raft_index: h.raft_index,
            raft_term: h.raft_term,
            crc_ok: batch.crc_ok(),
            running_max,
        });
        if batch.crc_ok() {
            report.end_offset = Some(h.next_offset());
            report.last_index = Some(h.raft_index);
        }
        report.batches += 1;
        report.records += u64::from(h.record_count);
        report.bytes += u64::from(h.batch_len);
        expect_offset = Some(h.next_offset());
        cursor.next_offset = Some(h.next_offset());
        cursor.next_index = h.raft_index.checked_add(1);
        cursor.last_term = Some(h.raft_term);
    }
    let end = walk.end().cloned().unwrap_or(DataEnd::EndOfFile {
        position: log.len(),
    });
    let before = report.problems.len();
    match (&end, active) {
        (DataEnd::EndOfFile { .. }, _) | (DataEnd::Preallocated { .. }, true) => {}
        (DataEnd::Preallocated { position, .. }, false) if marks.is_empty() => {
            problem(report, *position, ProblemKind::EmptySealedSegment);
        }
        (DataEnd::Preallocated { position, bytes }, false) => problem(
            report,
            *position,
            ProblemKind::SealedSegmentNotTrimmed { zero_bytes: *bytes },
        ),
        (DataEnd::Unreadable { position, reason }, _) => problem(
            report,
            *position,
            ProblemKind::UnreadableBatch {
                reason: reason.clone(),
                place: Place::Sealed,
            },
        ),
    }
    if !active && marks.is_empty() && matches!(end, DataEnd::EndOfFile { .. }) {
        problem(report, 0, ProblemKind::EmptySealedSegment);
    }
    if !end.is_clean() {
        // The walk stopped on damage: the next segment's links are unknown.
        cursor.next_offset = None;
        cursor.next_index = None;
        cursor.last_term = None;
    }
    if active {
        pending.extend((before..report.problems.len()).map(|i| (i, end.position())));
        let base_index = marks.first().map(|m| m.raft_index);
        let scan_from = recovery_start(log, seg, &marks, base_index)?;
        place_active_problems(report, &pending, &marks, &end, scan_from);
    }
    Ok(Walk { marks, end })
}

/// Checks that a batch follows the previous one: offset (or, for the
/// first batch, the file name), Raft index and term.
fn check_links(
    seg: &SegmentFiles,
    h: &BatchHeader,
    first: bool,
    expect_offset: Option<u64>,
    cursor: &Cursor,
) -> Vec<ProblemKind> {
    let mut out = Vec::new();
    if first && h.base_offset != seg.base_offset {
        out.push(ProblemKind::NameMismatch {
            name_offset: seg.base_offset,
            batch_offset: h.base_offset,
        });
    } else if let Some(expected) = expect_offset.filter(|e| *e != h.base_offset) {
        out.push(ProblemKind::OffsetGap {
            expected,
            found: h.base_offset,
            place: Place::Sealed,
        });
    }
    if let Some(expected) = cursor.next_index.filter(|e| *e != h.raft_index) {
        out.push(ProblemKind::RaftIndexGap {
            expected,
            found: h.raft_index,
            place: Place::Sealed,
        });
    }
    if let Some(previous) = cursor.last_term.filter(|t| *t > h.raft_term) {
        out.push(ProblemKind::TermRegression {
            previous,
            found: h.raft_term,
            place: Place::Sealed,
        });
    }
    out
}

/// Decodes every record of a verified batch; the first thing wrong, if any.
fn check_records(view: &BatchView<'_>) -> Option<ProblemKind> {
    let base_offset = view.base_offset();
    let undecodable = |error| ProblemKind::UndecodableRecords { base_offset, error };
    let records = match view.records() {
        Ok(r) => r,
        Err(e) => return Some(undecodable(e)),
    };
    let mut max = i64::MIN;
    for record in records.iter() {
        match record {
            Ok(r) => max = max.max(r.timestamp),
            Err(e) => return Some(undecodable(e)),
        }
    }
    (max != view.header().max_timestamp).then_some(ProblemKind::MaxTimestampMismatch {
        base_offset,
        header: view.header().max_timestamp,
        records: max,
    })
}

/// The position where the broker's recovery of the active segment starts:
/// the last entry of the `.index` file's valid prefix whose batch is intact
/// and carries the entry's offset and Raft index, else 0 (mirrors
/// `Segment::recover_active`).
fn recovery_start(
    log: &LogFile,
    seg: &SegmentFiles,
    marks: &[Mark],
    base_index: Option<u64>,
) -> Result<u64> {
    let Some(base_index) = base_index else {
        return Ok(0);
    };
    let Ok(bytes) = std::fs::read(&seg.index) else {
        return Ok(0);
    };
    let (raw, _) = index_entries(&bytes);
    let mut prefix: Vec<OffsetEntry> = Vec::new();
    for r in &raw {
        let e = decode_offset_entry(r);
        if !e.follows(prefix.last()) {
            break;
        }
        prefix.push(e);
    }
    for e in prefix.iter().rev() {
        let (Some(offset), Some(index)) = (
            seg.base_offset.checked_add(u64::from(e.rel_offset)),
            base_index.checked_add(u64::from(e.rel_index)),
        ) else {
            continue;
        };
        let position = u64::from(e.position);
        let known = marks
            .binary_search_by_key(&position, |m| m.position)
            .is_ok();
        if (known || marks.last().is_none_or(|m| position > m.position))
            && log.verified_at(position, offset, index)?
        {
            return Ok(position);
        }
    }
    Ok(0)
}

/// Gives the active segment's data problems their [`Place`], and turns
/// damage at the very end of the scanned part into a [`ProblemKind::TornTail`].
fn place_active_problems(
    report: &mut VerifyReport,
    pending: &[(usize, u64)],
    marks: &[Mark],
    end: &DataEnd,
    scan_from: u64,
) {
    let last_batch = marks.last().map(|m| m.position);
    for &(i, batch_pos) in pending {
        let problem = &mut report.problems[i];
        let place = if batch_pos >= scan_from {
            Place::ActiveScanned
        } else {
            Place::ActiveUnscanned { scan_from }
        };
        // Damage is a torn tail when nothing readable follows it.
        let at_tail = match &problem.kind {
            ProblemKind::UnreadableBatch { .. } => true,
            ProblemKind::CrcMismatch { .. } => end.is_clean() && Some(batch_pos) == last_batch,
            _ => false,
        };
        if at_tail && place == Place::ActiveScanned {
            problem.kind = ProblemKind::TornTail {
                reason: match &problem.kind {
                    ProblemKind::UnreadableBatch { reason, .. } => reason.to_string(),
                    other => other.to_string(),
                },
            };
            continue;
        }
        match &mut problem.kind {
            ProblemKind::UnreadableBatch { place: p, .. }
            | ProblemKind::CrcMismatch { place: p, .. }
            | ProblemKind::OffsetGap { place: p, .. }
            | ProblemKind::RaftIndexGap { place: p, .. }
            | ProblemKind::TermRegression { place: p, .. } => *p = place,
            _ => {}
        }
    }
}

/// Checks each intact batch's term against the state file's term runs;
/// the first disagreement, if any. Compacted entries (left behind by an
/// interrupted retention) have no runs any more and are skipped.
fn check_terms(walk: &Walk, state: &PartitionState, state_path: &Path) -> Option<Problem> {
    let stored = |m: &&Mark| m.crc_ok && m.raft_index > state.compacted_index;
    walk.marks.iter().filter(stored).find_map(|m| {
        let state_term = state.term_of(m.raft_index);
        (state_term != Some(m.raft_term)).then(|| Problem {
            path: state_path.to_path_buf(),
            position: 0,
            kind: ProblemKind::TermRunMismatch {
                raft_index: m.raft_index,
                batch_term: m.raft_term,
                state_term,
            },
        })
    })
}

/// Checks one index file of a segment: its length, where its entries end
/// (at the end of the file when sealed, at the first all-zero entry when
/// active and preallocated), and each entry up to there with `check`.
/// A missing file is not checked (the broker rebuilds it; see [`NoteKind`]).
fn check_index_file(
    path: &Path,
    active: bool,
    report: &mut VerifyReport,
    kind: fn(u64, EntryProblem) -> ProblemKind,
    mut check: impl FnMut(&[u8; ENTRY_LEN]) -> Option<EntryProblem>,
) -> Result<()> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::io("read", path, e)),
    };
    let (raw, ragged) = index_entries(&bytes);
    let zero = [0u8; ENTRY_LEN];
    let live = raw.iter().position(|r| *r == zero).unwrap_or(raw.len());
    let mut found: Vec<(usize, EntryProblem)> = raw[..live]
        .iter()
        .enumerate()
        .filter_map(|(i, r)| check(r).map(|p| (i, p)))
        .collect();
    if live < raw.len() {
        if !active {
            found.push((live, EntryProblem::ZeroEntry));
        } else if let Some(j) = raw[live..].iter().position(|r| *r != zero) {
            found.push((live + j, EntryProblem::AfterEndMarker));
        }
    }
    for (i, problem) in found {
        report.problems.push(Problem {
            path: path.to_path_buf(),
            position: (i * ENTRY_LEN) as u64,
            kind: kind(i as u64, problem),
        });
    }
    if ragged != 0 {
        report.problems.push(Problem {
            path: path.to_path_buf(),
            position: (raw.len() * ENTRY_LEN) as u64,
            kind: ProblemKind::IndexLength {
                len: bytes.len() as u64,
            },
        });
    }
    Ok(())
}

/// Checks the `.index` entries against the batches the walk found.
fn check_offset_index(
    seg: &SegmentFiles,
    walk: &Walk,
    active: bool,
    report: &mut VerifyReport,
) -> Result<()> {
    let data_end = walk.end.position();
    let base_index = walk.marks.first().map(|m| m.raft_index);
    let mut prev: Option<OffsetEntry> = None;
    let kind = |entry, problem| ProblemKind::IndexEntry { entry, problem };
    check_index_file(&seg.index, active, report, kind, |raw| {
        let e = decode_offset_entry(raw);
        let follows = e.follows(prev.as_ref());
        prev = Some(e);
        if !follows {
            return Some(EntryProblem::NotIncreasing);
        }
        let position = u64::from(e.position);
        let mark = match walk.marks.binary_search_by_key(&position, |m| m.position) {
            Ok(k) => walk.marks[k],
            // Past damage that stopped the walk, the entry cannot be checked.
            Err(_) if position >= data_end && !walk.end.is_clean() => return None,
            Err(_) if position >= data_end => {
                return Some(EntryProblem::PastData {
                    position: e.position,
                    data_end,
                });
            }
            Err(_) => {
                return Some(EntryProblem::NotABatchBoundary {
                    position: e.position,
                });
            }
        };
        let entry_offset = seg.base_offset.checked_add(u64::from(e.rel_offset));
        let entry_index = base_index.and_then(|b| b.checked_add(u64::from(e.rel_index)));
        if entry_offset != Some(mark.base_offset) {
            Some(EntryProblem::OffsetMismatch {
                entry: entry_offset.unwrap_or(u64::MAX),
                batch: mark.base_offset,
            })
        } else if entry_index != Some(mark.raft_index) {
            Some(EntryProblem::RaftIndexMismatch {
                entry: entry_index.unwrap_or(u64::MAX),
                batch: mark.raft_index,
            })
        } else {
            None
        }
    })
}

/// Checks the `.timeindex` entries against the batches the walk found.
fn check_time_index(
    seg: &SegmentFiles,
    walk: &Walk,
    active: bool,
    report: &mut VerifyReport,
) -> Result<()> {
    let mut prev: Option<TimeEntry> = None;
    let kind = |entry, problem| ProblemKind::TimeIndexEntry { entry, problem };
    check_index_file(&seg.time_index, active, report, kind, |raw| {
        let e = decode_time_entry(raw);
        let follows = e.follows(prev.as_ref());
        prev = Some(e);
        if !follows {
            return Some(EntryProblem::NotIncreasing);
        }
        let Some(offset) = seg.base_offset.checked_add(u64::from(e.rel_offset)) else {
            return Some(EntryProblem::NoSuchBatch { offset: u64::MAX });
        };
        match walk.marks.binary_search_by_key(&offset, |m| m.base_offset) {
            Ok(k) if walk.marks[k].running_max != e.timestamp => {
                Some(EntryProblem::NotRunningMax {
                    entry: e.timestamp,
                    running_max: walk.marks[k].running_max,
                })
            }
            Ok(_) => None,
            // Past damage that stopped the walk, the entry cannot be checked.
            Err(_)
                if !walk.end.is_clean()
                    && walk.marks.last().is_none_or(|m| offset > m.base_offset) =>
            {
                None
            }
            Err(_) => Some(EntryProblem::NoSuchBatch { offset }),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FlushPolicy, Log, LogConfig};
    use proptest::prelude::*;
    use runnel_batch::{BatchBuilder, Compression, NewRecord};
    use std::collections::BTreeMap;

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes: 16 << 10,
            index_interval_bytes: 512,
            index_max_bytes: 1200,
            max_batch_bytes: 8 << 10,
            flush: FlushPolicy::Never,
            retention_ms: None,
            segment_ms: None,
            ..Default::default()
        }
    }

    fn batch(i: u64, compression: Compression) -> bytes::Bytes {
        let mut b = BatchBuilder::new(compression);
        for j in 0..3u64 {
            let value = format!("value {i}.{j} {}", "x".repeat(90));
            // Timestamps go up and down so the time index is exercised.
            let ts = 1_000 + (i as i64 % 7) * 100 + j as i64;
            b.push(NewRecord {
                key: Some(b"key"),
                value: value.as_bytes(),
                headers: &[("h", b"1")],
                timestamp: ts,
            });
        }
        b.finish().unwrap()
    }

    /// A log of 200 batches of 3 records over several segments, written in
    /// two sessions (so recovery ran once), with terms rising.
    fn build(dir: &Path) {
        for session in 0..2u64 {
            let log = Log::open(dir, config()).unwrap();
            for i in session * 100..(session + 1) * 100 {
                let c = if i % 3 == 0 {
                    Compression::Lz4
                } else {
                    Compression::None
                };
                log.append(&batch(i, c), 1 + i / 40).unwrap();
            }
        }
    }

    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let b = std::fs::read(&p).unwrap();
                (p, b)
            })
            .collect()
    }

    fn log_path(dir: &Path, k: usize) -> PathBuf {
        list(dir).unwrap().segments[k].log.clone()
    }

    fn batch_positions(path: &Path) -> Vec<u64> {
        let f = LogFile::open(path).unwrap();
        f.batches(0).map(|b| b.unwrap().position).collect()
    }

    fn modify(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = std::fs::read(path).unwrap();
        f(&mut bytes);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn clean_log_verifies_and_is_not_modified() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path());
        let before = snapshot(dir.path());
        let report = verify(dir.path()).unwrap();
        assert!(report.is_clean(), "{:#?}", report.problems);
        assert!(report.segments > 3, "rolled: {}", report.segments);
        assert_eq!(report.batches, 200);
        assert_eq!(report.records, 600);
        assert_eq!(report.first_offset, Some(0));
        assert_eq!(report.end_offset, Some(600));
        assert_eq!(
            (report.first_index, report.last_index),
            (Some(1), Some(200))
        );
        assert_eq!(report.log_start_offset, Some(0));
        assert_eq!(before, snapshot(dir.path()), "verify modified a file");
    }

    #[test]
    fn clean_after_retention_truncation_and_delete_records() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path());
        let log = Log::open(dir.path(), config()).unwrap();
        log.truncate_from_index(150).unwrap();
        log.append(&batch(7, Compression::Zstd), 9).unwrap();
        log.delete_records(300).unwrap();
        let r = log.apply_retention(0, u64::MAX).unwrap();
        assert!(r.deleted_segments > 0);
        drop(log);
        let report = verify(dir.path()).unwrap();
        assert!(report.is_clean(), "{:#?}", report.problems);
        assert_eq!(report.last_index, Some(150));
        assert_eq!(report.log_start_offset, Some(300));
    }

    #[test]
    fn leftovers_of_interrupted_operations_are_notes() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path());
        // Retention that crashed after persisting the state, before unlinking.
        let first = list(dir.path()).unwrap().segments[0].clone();
        let kept: Vec<(PathBuf, Vec<u8>)> = [&first.log, &first.index, &first.time_index]
            .iter()
            .map(|p| (p.to_path_buf(), std::fs::read(p).unwrap()))
            .collect();
        let log = Log::open(dir.path(), config()).unwrap();
        log.delete_records(first.base_offset + 1).unwrap();
        let seg1 = log.segments().unwrap()[1].base_offset;
        log.delete_records(seg1).unwrap();
        assert_eq!(
            log.apply_retention(0, u64::MAX).unwrap().deleted_segments,
            1
        );
        drop(log);
        for (p, bytes) in &kept {
            std::fs::write(p, bytes).unwrap();
        }
        std::fs::write(dir.path().join("00000000000000000003.log.deleted"), b"x").unwrap();
        let report = verify(dir.path()).unwrap();
        assert!(report.is_clean(), "{:#?}", report.problems);
        let kinds: Vec<NoteKind> = report.notes.iter().map(|n| n.kind).collect();
        assert_eq!(kinds, [NoteKind::Leftover, NoteKind::BelowCompactedIndex]);
    }

    #[test]
    fn fresh_empty_log_is_clean() {
        let dir = tempfile::tempdir().unwrap();
        drop(Log::open(dir.path(), config()).unwrap());
        let report = verify(dir.path()).unwrap();
        assert!(report.is_clean(), "{:#?}", report.problems);
        assert_eq!((report.segments, report.batches), (1, 0));
    }

    /// Damage done to a built log, and the first problem verify must name:
    /// its code, file (by name suffix) and byte position.
    type Damage = fn(&Path) -> (String, &'static str, u64);

    #[test]
    fn damage_is_found_where_it_is() {
        let cases: &[(&str, Damage)] = &[
            ("flipped byte in a sealed segment", |d| {
                let path = log_path(d, 1);
                let pos = batch_positions(&path)[5];
                modify(&path, |b| b[pos as usize + 100] ^= 0x01);
                (name(&path), "crc_mismatch", pos)
            }),
            ("torn tail in the active segment", |d| {
                let files = list(d).unwrap();
                let path = files.segments.last().unwrap().log.clone();
                let f = LogFile::open(&path).unwrap();
                let mut it = f.batches(0);
                it.by_ref().for_each(drop);
                let end = it.end().unwrap().position();
                // A torn append: stamped, but only its first half written.
                let mut whole = batch(1, Compression::None).to_vec();
                runnel_batch::stamp(&mut whole, 600, 5, 201);
                modify(&path, |b| {
                    b[end as usize..end as usize + whole.len() / 2]
                        .copy_from_slice(&whole[..whole.len() / 2])
                });
                (name(&path), "torn_tail", end)
            }),
            ("index entry off a batch boundary", |d| {
                let path = list(d).unwrap().segments[0].index.clone();
                modify(&path, |b| b[12 + 8] ^= 0x01);
                (name(&path), "index_entry", 12)
            }),
            ("time index entry with a wrong timestamp", |d| {
                let path = list(d).unwrap().segments[1].time_index.clone();
                modify(&path, |b| b[24] = b[24].wrapping_add(1));
                (name(&path), "time_index_entry", 24)
            }),
            ("ragged index file", |d| {
                let path = list(d).unwrap().segments[0].index.clone();
                let len = std::fs::metadata(&path).unwrap().len();
                modify(&path, |b| b.push(7));
                (name(&path), "index_length", len)
            }),
            ("missing middle segment", |d| {
                let files = list(d).unwrap();
                for p in [
                    &files.segments[1].log,
                    &files.segments[1].index,
                    &files.segments[1].time_index,
                ] {
                    std::fs::remove_file(p).unwrap();
                }
                (name(&files.segments[2].log), "segment_gap", 0)
            }),
            ("sealed segment never trimmed (interrupted roll)", |d| {
                let path = log_path(d, 0);
                let len = std::fs::metadata(&path).unwrap().len();
                modify(&path, |b| b.resize(b.len() + 4096, 0));
                (name(&path), "sealed_segment_not_trimmed", len)
            }),
            ("garbage header in a sealed segment", |d| {
                let path = log_path(d, 2);
                let pos = batch_positions(&path)[3];
                modify(&path, |b| b[pos as usize + 32] = 9); // format version
                (name(&path), "unreadable_batch", pos)
            }),
            ("damaged state file", |d| {
                let path = d.join(STATE_FILE);
                modify(&path, |b| b[6] ^= 0xff);
                (STATE_FILE.to_string(), "state_corrupt", 0)
            }),
            ("missing state file", |d| {
                std::fs::remove_file(d.join(STATE_FILE)).unwrap();
                (STATE_FILE.to_string(), "state_missing", 0)
            }),
            ("log start past the log end", |d| {
                let mut s = PartitionState::load(d).unwrap().unwrap();
                s.log_start_offset = 10_000;
                std::fs::write(d.join(STATE_FILE), s.encode()).unwrap();
                (STATE_FILE.to_string(), "log_start_out_of_range", 0)
            }),
            ("term runs disagree with the batches", |d| {
                let mut s = PartitionState::load(d).unwrap().unwrap();
                s.term_runs[1].1 += 3;
                std::fs::write(d.join(STATE_FILE), s.encode()).unwrap();
                (STATE_FILE.to_string(), "term_run_mismatch", 0)
            }),
        ];
        for (i, (what, damage)) in cases.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            build(dir.path());
            let (file, code, position) = damage(dir.path());
            let before = snapshot(dir.path());
            let report = verify(dir.path()).unwrap();
            assert_eq!(
                before,
                snapshot(dir.path()),
                "case {i} ({what}): verify modified a file"
            );
            let first = report
                .problems
                .first()
                .unwrap_or_else(|| panic!("case {i} ({what}): clean"));
            assert_eq!(first.kind.code(), code, "case {i} ({what}): {first}");
            assert_eq!(name(&first.path), file, "case {i} ({what}): {first}");
            assert_eq!(first.position, position, "case {i} ({what}): {first}");
            assert!(!first.hint().is_empty());
        }
    }

    fn name(p: &Path) -> String {
        p.file_name().unwrap().to_string_lossy().into_owned()
    }

    #[test]
    fn torn_tail_hint_names_the_truncation_point() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path());
        let path = list(dir.path())
            .unwrap()
            .segments
            .last()
            .unwrap()
            .log
            .clone();
        let end = {
            let f = LogFile::open(&path).unwrap();
            let mut it = f.batches(0);
            it.by_ref().for_each(drop);
            it.end().unwrap().position()
        };
        modify(&path, |b| b[end as usize..end as usize + 40].fill(0xab));
        let report = verify(dir.path()).unwrap();
        let first = &report.problems[0];
        assert_eq!(first.kind.code(), "torn_tail", "{first}");
        assert!(
            first.hint().contains(&format!("to byte {end}")),
            "{}",
            first.hint()
        );
        // The broker agrees: opening the log cuts exactly there.
        let (_, open) = Log::open_with_report(dir.path(), config()).unwrap();
        assert_eq!(open.recovery.valid_end, end);
        assert!(verify(dir.path()).unwrap().is_clean());
    }

    #[test]
    fn walk_reports_how_data_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let b = batch(0, Compression::None);
        let len = b.len() as u64;
        let cases: Vec<(Vec<u8>, usize, DataEnd)> = vec![
            (vec![], 0, DataEnd::EndOfFile { position: 0 }),
            (b.to_vec(), 1, DataEnd::EndOfFile { position: len }),
            (
                [&b[..], &[0u8; 500]].concat(),
                1,
                DataEnd::Preallocated {
                    position: len,
                    bytes: 500,
                },
            ),
            (
                [&b[..], &[0u8; 100], &[1u8]].concat(),
                1,
                DataEnd::Unreadable {
                    position: len,
                    reason: Unreadable::StrayBytes {
                        first_non_zero: len + 100,
                    },
                },
            ),
            (
                b[..b.len() - 1].to_vec(),
                0,
                DataEnd::Unreadable {
                    position: 0,
                    reason: Unreadable::PastEnd {
                        batch_len: len as u32,
                        available: len - 1,
                    },
                },
            ),
        ];
        for (i, (bytes, count, end)) in cases.into_iter().enumerate() {
            std::fs::write(&path, &bytes).unwrap();
            let f = LogFile::open(&path).unwrap();
            let mut it = f.batches(0);
            let n = it
                .by_ref()
                .map(|b| b.unwrap())
                .filter(StoredBatch::crc_ok)
                .count();
            assert_eq!(n, count, "case {i}");
            assert_eq!(it.end(), Some(&end), "case {i}");
        }
    }

    #[test]
    fn scan_start_uses_only_entries_that_check_out() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path());
        let files = list(dir.path()).unwrap();
        let seg = &files.segments[0];
        let log = LogFile::open(&seg.log).unwrap();
        let boundaries = batch_positions(&seg.log);
        let last = log.batches(0).map(|b| b.unwrap()).last().unwrap().header;
        for offset in [0, 1, 20, last.base_offset, last.last_offset()] {
            let at = scan_start(seg, &log, offset).unwrap();
            assert!(boundaries.contains(&at), "offset {offset}: {at}");
            let h = log.batch_at(at).unwrap().unwrap().header;
            assert!(h.base_offset <= offset, "offset {offset}");
        }
        assert!(
            scan_start(seg, &log, last.last_offset()).unwrap() > 0,
            "the index is used"
        );
        modify(&seg.index, |b| {
            b.iter_mut().for_each(|x| *x = x.wrapping_add(3))
        });
        assert_eq!(
            scan_start(seg, &log, last.last_offset()).unwrap(),
            0,
            "a bad index is ignored"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Garbage in any file never panics and is reported as problems.
        #[test]
        fn garbage_never_panics(
            log in proptest::collection::vec(any::<u8>(), 0..600),
            index in proptest::collection::vec(any::<u8>(), 0..60),
            zeros in 0usize..200,
            keep_header in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut data = if keep_header { batch(0, Compression::None).to_vec() } else { Vec::new() };
            data.extend_from_slice(&log);
            data.resize(data.len() + zeros, 0);
            for base in [0u64, 5] {
                std::fs::write(dir.path().join(crate::filename::segment_file_name(base, LOG_EXT)), &data).unwrap();
                std::fs::write(dir.path().join(crate::filename::segment_file_name(base, INDEX_EXT)), &index).unwrap();
                std::fs::write(dir.path().join(crate::filename::segment_file_name(base, TIME_INDEX_EXT)), &index).unwrap();
            }
            std::fs::write(dir.path().join(STATE_FILE), &index).unwrap();
            let report = verify(dir.path()).unwrap();
            prop_assert!(!report.is_clean());
            for p in &report.problems {
                let _ = (p.to_string(), p.hint());
            }
        }
    }
}
