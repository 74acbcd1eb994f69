//! What [`verify`](super::verify()) reports: problems (damage) with where
//! they lie and what to do about them, and notes (things that are not
//! damage).

use std::fmt;
use std::path::PathBuf;

use runnel_batch::BatchError;

use super::walk::Unreadable;
use crate::filename::{INDEX_EXT, LOG_EXT, TIME_INDEX_EXT, segment_file_name};
use crate::index::ENTRY_LEN;
use crate::state::STATE_FILE;

/// Where in the log a problem lies, which decides what the broker does
/// about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A sealed segment (every one but the last). The broker never scans or
    /// repairs sealed segments: reads of damaged batches fail.
    Sealed,
    /// The active (last) segment, before `scan_from`, the position where
    /// the broker's recovery starts (the last entry of its `.index` file on
    /// disk that checks out; 0 when there is none, as the file may lag the
    /// log: entries reach it only after the data they point at is fsynced).
    /// Recovery does not see it: reads of damaged batches fail.
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
    /// A non-zero entry after the all-zero entry that ends the active
    /// segment's entries. (Only an active index may end in zeros: written
    /// by an older build, which preallocated it, or left by a crash.)
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

/// One thing [`verify`](super::verify()) found wrong.
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
    /// Typically an append cut short by a crash: its header claims more
    /// bytes than remain in the file, or (when the file grew but not all of
    /// the data reached the disk) its CRC does not match.
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
    /// Zero bytes after the data of a sealed segment, which sealing trims
    /// to its data. Left by an older build (which preallocated the active
    /// segment) when a roll was interrupted between creating the next
    /// segment and sealing this one, or by a crash that left zeros at the
    /// end of the file.
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

/// A problem found by [`verify`](super::verify()): where, and what.
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
                segment_file_name(0, LOG_EXT),
                segment_file_name(0, INDEX_EXT)
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

/// Something [`verify`](super::verify()) noticed that is not damage.
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

/// What [`verify`](super::verify()) found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The partition directory.
    pub dir: PathBuf,
    /// Segments found.
    pub segments: usize,
    /// Batches walked, including those whose CRC does not match (not an
    /// incomplete batch at the end of a file, which is not walked).
    pub batches: u64,
    /// Records in those batches, per their headers.
    pub records: u64,
    /// Bytes of the batches walked (zeros and unreadable bytes after the
    /// data excluded).
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
