//! The checks of [`verify`]: one walk over each segment's batches, then
//! its `.index` and `.timeindex` against what the walk found, then
//! `partition.state` against the whole log.

use std::io;
use std::path::Path;

use runnel_batch::{BatchHeader, BatchView};

use super::files::{LogFile, SegmentFiles, index_entries, list, read_offset_entries};
use super::problem::{EntryProblem, Note, NoteKind, Place, Problem, ProblemKind, VerifyReport};
use super::walk::{CrcCheck, DataEnd};
use crate::error::{Result, StorageError};
use crate::index::{ENTRY_LEN, IndexEntry, OffsetEntry, TimeEntry};
use crate::state::{PartitionState, STATE_FILE};

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
/// Zero bytes after the last segment's data are not damage: older builds
/// preallocated the active segment, and a crash can leave zeros where the
/// file grew but the data did not reach the disk (the broker cuts them on
/// open). Neither is an active index holding fewer entries than the data
/// would give: entries reach the file only after the data they point at is
/// fsynced. Only I/O failures are errors; damage is in the report.
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
/// `Segment::recover_active`). The file may lag the log (entries reach it
/// only after the data they point at is fsynced; with the `never` flush
/// policy it may hold none), and recovery starts from what is on disk.
fn recovery_start(
    log: &LogFile,
    seg: &SegmentFiles,
    marks: &[Mark],
    base_index: Option<u64>,
) -> Result<u64> {
    let Some(base_index) = base_index else {
        return Ok(0);
    };
    let mut prefix: Vec<OffsetEntry> = Vec::new();
    for e in read_offset_entries(&seg.index) {
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
/// (at the end of the file when sealed; when active, at the first all-zero
/// entry if any: zeros left by an older build, which preallocated the
/// active index, or by a crash), and each entry up to there: above the
/// previous one (the rule the broker's index enforces), then `check`.
/// A missing file is not checked (the broker rebuilds it; see [`NoteKind`]).
fn check_index_file<E: IndexEntry>(
    path: &Path,
    active: bool,
    report: &mut VerifyReport,
    kind: fn(u64, EntryProblem) -> ProblemKind,
    mut check: impl FnMut(E) -> Option<EntryProblem>,
) -> Result<()> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::io("read", path, e)),
    };
    let (raw, ragged) = index_entries(&bytes);
    let zero = [0u8; ENTRY_LEN];
    let live = raw.iter().position(|r| *r == zero).unwrap_or(raw.len());
    let mut prev: Option<E> = None;
    let mut found: Vec<(usize, EntryProblem)> = raw[..live]
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let e = E::decode(r);
            let follows = e.follows(prev.as_ref());
            prev = Some(e);
            let problem = if follows {
                check(e)
            } else {
                Some(EntryProblem::NotIncreasing)
            };
            problem.map(|p| (i, p))
        })
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
    let kind = |entry, problem| ProblemKind::IndexEntry { entry, problem };
    check_index_file(&seg.index, active, report, kind, |e: OffsetEntry| {
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
    let kind = |entry, problem| ProblemKind::TimeIndexEntry { entry, problem };
    check_index_file(&seg.time_index, active, report, kind, |e: TimeEntry| {
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
