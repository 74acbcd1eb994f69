//! The partition log: an ordered list of segments, the last one active.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use runnel_batch::{BatchHeader, BatchView, HEADER_LEN, VerifiedBatch, stamped_prefix};

use crate::config::{FlushPolicy, LogConfig, RecoveryPolicy};
use crate::durable::{Faults, set_len, sync_data, sync_dir};
use crate::error::{Result, StorageError};
use crate::filename::{DELETED_SUFFIX, LOG_EXT, TMP_SUFFIX, parse_segment_file_name, segment_path};
use crate::index::sync_index;
use crate::segment::{RecoveryReport, Segment, SegmentReader};
use crate::state::PartitionState;

/// Where an appended batch went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset assigned to the batch's first record.
    pub base_offset: u64,
    /// Offset of its last record.
    pub last_offset: u64,
    /// Raft index of the batch.
    pub raft_index: u64,
    /// Raft term stamped into it.
    pub raft_term: u64,
}

/// Whole batches read from the log, as one zero-copy slice of a segment map.
#[derive(Clone, Debug, Default)]
pub struct ReadBatches {
    /// Concatenated, CRC-verified batches (possibly empty).
    pub bytes: Bytes,
    /// Base offset of the first batch; may be below the offset asked for
    /// when that offset lies inside a batch.
    pub first_offset: u64,
    /// Offset after the last batch returned: where to read next.
    pub next_offset: u64,
    /// Number of batches in `bytes`.
    pub batch_count: usize,
}

/// What a retention pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segments deleted.
    pub deleted_segments: usize,
    /// Bytes of segment data deleted.
    pub deleted_bytes: u64,
    /// Log start offset afterwards.
    pub log_start_offset: u64,
}

/// A summary of one segment, for tools and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Offset of the first batch (the file name).
    pub base_offset: u64,
    /// Offset after the last batch.
    pub next_offset: u64,
    /// Raft index of the first batch.
    pub base_index: u64,
    /// Bytes of data.
    pub size: u64,
    /// Largest record timestamp (`i64::MIN` if unknown).
    pub max_timestamp: i64,
    /// Path of the `.log` file.
    pub path: PathBuf,
}

/// What opening a log found, for logs and progress output.
#[derive(Clone, Debug, Default)]
pub struct OpenReport {
    /// Segments found.
    pub segments: usize,
    /// Recovery of the active segment.
    pub recovery: RecoveryReport,
    /// Leftover files removed (`*.deleted`, `*.tmp`, orphan indexes,
    /// segments below the compacted index).
    pub removed_files: Vec<PathBuf>,
    /// The state file was missing or damaged and was rebuilt from the segments.
    pub state_rebuilt: bool,
}

struct Inner {
    /// Ordered by base offset; the last one is active.
    segments: Vec<Segment>,
    state: PartitionState,
    failed: Option<String>,
    last_flush_ms: Option<i64>,
    /// Bumped whenever the log end moves back (truncation, reset): an
    /// fsync that began before cannot vouch for what is there now.
    generation: u64,
    /// Base offset of the segment a roll sealed whose seal is not finished
    /// (its data, or its indexes, not yet fsynced): always the one before
    /// the active segment; every segment before it is sealed and durable.
    sealing: Option<u64>,
}

impl Inner {
    fn active(&self) -> &Segment {
        // Invariant: a log always has at least one segment.
        &self.segments[self.segments.len() - 1]
    }

    fn active_mut(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    fn last_index(&self) -> u64 {
        self.active().next_index - 1
    }

    fn log_end(&self) -> u64 {
        self.active().next_offset
    }

    fn term(&self, index: u64) -> Result<u64> {
        let st = &self.state;
        if index == st.compacted_index {
            return Ok(st.compacted_term);
        }
        if index < st.compacted_index {
            return Err(StorageError::Compacted {
                index,
                first_index: st.compacted_index + 1,
            });
        }
        let last = self.last_index();
        if index > last {
            return Err(StorageError::Unavailable {
                index,
                last_index: last,
            });
        }
        Ok(st.term_of(index).unwrap_or(st.compacted_term))
    }

    /// Segment holding `offset`: the last one with `base_offset <= offset`.
    fn segment_for_offset(&self, offset: u64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1)
    }

    fn segment_for_index(&self, index: u64) -> usize {
        self.segments
            .partition_point(|s| s.base_index <= index)
            .saturating_sub(1)
    }
}

/// A partition's append-only log of batches on disk.
///
/// Thread safety: `Log` is `Send + Sync`; share it in an `Arc`. Appends,
/// truncation and retention serialize on an internal lock; reads take the
/// lock only to locate the segment and then verify and slice the mapped
/// bytes without it. With [`FlushPolicy::Always`], concurrent appenders
/// share fsyncs (group commit).
///
/// Offsets and Raft indexes: every batch is one Raft entry; offsets are
/// dense per record and Raft indexes dense per batch, both assigned by the
/// log on append.
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    inner: Mutex<Inner>,
    /// Whether an fsync for group commit is in flight.
    sync_lock: Mutex<bool>,
    /// Signalled when that fsync ends.
    synced: Condvar,
    durable_offset: AtomicU64,
    fsyncs: AtomicU64,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Opens the log in `dir`, creating it if needed, and recovers it:
    /// removes leftovers of interrupted deletions, verifies the active
    /// segment from its last index entry and truncates a torn tail,
    /// rebuilds missing or damaged indexes. Reads only the tail, whatever
    /// the log's size.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        Self::open_with_report(dir, config).map(|(log, _)| log)
    }

    /// [`Log::open`], also returning what recovery found.
    pub fn open_with_report(dir: impl AsRef<Path>, config: LogConfig) -> Result<(Log, OpenReport)> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let created = !dir.exists();
        fs::create_dir_all(&dir).map_err(|e| StorageError::io("create directory", &dir, e))?;
        if created {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let mut report = OpenReport::default();
        let mut bases = Vec::new();
        let mut others = Vec::new();
        let listing = fs::read_dir(&dir).map_err(|e| StorageError::io("list", &dir, e))?;
        for entry in listing {
            let entry = entry.map_err(|e| StorageError::io("list", &dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(DELETED_SUFFIX) || name.ends_with(TMP_SUFFIX) {
                let path = entry.path();
                fs::remove_file(&path).map_err(|e| StorageError::io("unlink", &path, e))?;
                report.removed_files.push(path);
                continue;
            }
            if let Some((base, ext)) = parse_segment_file_name(name) {
                if ext == LOG_EXT {
                    bases.push(base);
                } else {
                    others.push((base, entry.path()));
                }
            }
        }
        bases.sort_unstable();
        // A reset (`Log::reset_to`) persists the new state, flagged, before
        // it deletes anything: finish it by deleting every segment file; the
        // flag is cleared once the new empty segment exists.
        if let Ok(Some(s)) = PartitionState::load(&dir) {
            if s.reset_pending {
                tracing::warn!(dir = %dir.display(), log_start = s.log_start_offset, index = s.compacted_index,
                    "finishing a reset interrupted by a crash");
                for base in bases.drain(..) {
                    Segment::delete_files(&dir, base)?;
                    report.removed_files.push(segment_path(&dir, base, LOG_EXT));
                }
                // Indexes without their `.log` (those with one went above).
                for (base, _) in others.drain(..) {
                    Segment::delete_files(&dir, base)?;
                }
                sync_dir(&dir)?;
            }
        }
        for (base, path) in others {
            if bases.binary_search(&base).is_err() {
                fs::remove_file(&path).map_err(|e| StorageError::io("unlink", &path, e))?;
                report.removed_files.push(path);
            }
        }
        // A last segment without one complete batch was created by a roll
        // whose predecessor may not be durable (a roll leaves the sealed
        // segment's fsync to the next flush), or lost its data in a crash.
        // Drop it, and recover the predecessor as the active segment: its
        // tail gets verified and a torn end cut, as for any active segment.
        while bases.len() >= 2 {
            let last = bases[bases.len() - 1];
            if !lacks_complete_batch(&segment_path(&dir, last, LOG_EXT))? {
                break;
            }
            tracing::warn!(dir = %dir.display(), base_offset = last,
                "removing a new segment left empty by an interrupted roll");
            Segment::delete_files(&dir, last)?;
            report.removed_files.push(segment_path(&dir, last, LOG_EXT));
            bases.pop();
        }
        let (mut state, state_ok, loaded) = match PartitionState::load(&dir) {
            Ok(Some(s)) => {
                let mut state = s.clone();
                state.reset_pending = false;
                (state, true, Some(s))
            }
            Ok(None) => (PartitionState::default(), bases.is_empty(), None),
            Err(e) => {
                tracing::warn!(error = %e, "partition state damaged; rebuilding it from the segments");
                (PartitionState::default(), false, None)
            }
        };
        report.state_rebuilt = !state_ok;

        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len().max(1));
        if bases.is_empty() {
            segments.push(Segment::create(
                &dir,
                state.log_start_offset,
                state.compacted_index + 1,
                &config,
                true,
            )?);
        } else {
            let (last, sealed) = bases.split_last().unwrap_or((&0, &[]));
            for &base in sealed {
                // Only needed when the segment's first header is damaged.
                let known_base_index = || match segments.last_mut() {
                    Some(prev) => tail_of(prev, config.faults.as_deref())
                        .ok()
                        .map(|(_, next_index, _)| next_index),
                    None => state_ok.then_some(state.compacted_index + 1),
                };
                let seg = Segment::open_sealed(&dir, base, &config, known_base_index)?;
                segments.push(seg);
            }
            for i in 0..segments.len().saturating_sub(1) {
                let (next_offset, next_index) =
                    (segments[i + 1].base_offset, segments[i + 1].base_index);
                segments[i].next_offset = next_offset;
                segments[i].next_index = next_index;
            }
            // The last sealed segment's seal may not have finished before a
            // crash (a roll leaves its fsync to the next flush or roll): its
            // end is taken from the next segment's first batch for now (the
            // loop above left one there), and its data verified below.
            let last_path = segment_path(&dir, *last, LOG_EXT);
            if let Some(prev) = segments.last_mut() {
                let Some(next) = first_batch(&last_path)? else {
                    return Err(StorageError::corrupt(
                        &last_path,
                        0,
                        "no complete first batch",
                    ));
                };
                prev.next_offset = *last;
                prev.next_index = next.raft_index;
            }
            // Segments wholly at or below the compacted index were deleted by
            // retention just before a crash: finish the job.
            if state_ok {
                while segments
                    .first()
                    .is_some_and(|s| s.next_index <= state.compacted_index + 1)
                {
                    let gone = segments.remove(0);
                    Segment::delete_files(&dir, gone.base_offset)?;
                    report.removed_files.push(gone.log_path.clone());
                }
            }
            let runs = state_ok.then(|| state.clone());
            let term_of = |index: u64| runs.as_ref().and_then(|s| s.term_of(index));
            // The last sealed segment (if retention left it) is verified
            // like an active one, from its last index entry (written only
            // for durable data): intact, it is sealed again (a no-op fsync
            // if it was durable); cut short, the active segment after it
            // holds nothing that was acknowledged durable, and goes.
            let mut recovered = None;
            let prev_left = segments.last().is_some_and(|s| s.next_offset == *last);
            let prev = if prev_left { segments.pop() } else { None };
            if let Some(prev) = prev {
                let (base, base_index, end) = (
                    prev.base_offset,
                    prev.base_index,
                    (prev.next_offset, prev.next_index),
                );
                drop(prev);
                let (mut seg, recovery) =
                    Segment::recover_active(&dir, base, Some(base_index), &term_of, &config)?;
                if (seg.next_offset, seg.next_index) == end {
                    seg.seal(config.faults.as_deref())?;
                    segments.push(seg);
                } else {
                    if config.recovery == RecoveryPolicy::Refuse {
                        return Err(StorageError::corrupt(
                            &seg.log_path,
                            seg.size,
                            format!(
                                "segment ends at offset {} but the next segment starts at {last}; \
                                 recovery policy is refuse, so nothing was cut",
                                seg.next_offset
                            ),
                        ));
                    }
                    tracing::warn!(segment = %seg.log_path.display(), valid_end = recovery.valid_end,
                        reason = ?recovery.truncated, next = *last,
                        "the last sealed segment was not durable and ends short; dropping the segment after it");
                    Segment::delete_files(&dir, *last)?;
                    sync_dir(&dir)?;
                    report.removed_files.push(last_path.clone());
                    recovered = Some((seg, recovery));
                }
            }
            let (active, recovery) = match recovered {
                Some(r) => r,
                None => {
                    let expected_index = match segments.last() {
                        Some(prev) => Some(prev.next_index),
                        None if state_ok => Some(state.compacted_index + 1),
                        None => None,
                    };
                    Segment::recover_active(&dir, *last, expected_index, &term_of, &config)?
                }
            };
            if let Some(why) = &recovery.truncated {
                tracing::warn!(segment = %active.log_path.display(), valid_end = recovery.valid_end, reason = %why,
                    "truncated a torn or corrupt tail of the active segment");
            }
            report.recovery = recovery;
            segments.push(active);
            if segments.len() == 1 && state_ok && segments[0].base_index <= state.compacted_index {
                // Only possible with a damaged state file; trust the segment.
                tracing::warn!(
                    "state file's compacted index is past the first segment; trusting the segment"
                );
                state.compacted_index = segments[0].base_index - 1;
            }
        }
        report.segments = segments.len();

        let first = &segments[0];
        let last = &segments[segments.len() - 1];
        let last_index = last.next_index - 1;
        if !state_ok {
            state.compacted_index = first.base_index - 1;
            state.term_runs = rebuild_term_runs(&segments)?;
            state.compacted_term = if state.compacted_index == 0 {
                0
            } else {
                // Unknown after losing the state file: the first stored
                // term is the best available lower bound.
                state.term_runs.first().map_or(0, |r| r.0)
            };
            state.log_start_offset = first.base_offset;
        } else if first.base_index != state.compacted_index + 1 {
            return Err(StorageError::corrupt(
                &first.log_path,
                0,
                format!(
                    "log starts at raft index {} but entries up to {} are the last compacted: a segment is missing",
                    first.base_index, state.compacted_index
                ),
            ));
        }
        state.truncate_runs(last_index);
        if last.size > 0 && state.term_of(last_index) != Some(last.last_term) {
            tracing::warn!("term runs disagree with the log tail; rebuilding them");
            state.term_runs = rebuild_term_runs(&segments)?;
        }
        state.log_start_offset = state
            .log_start_offset
            .clamp(first.base_offset, last.next_offset);
        // Written only when recovery changed it: a log must open (and serve
        // reads) on a disk without a free block.
        if loaded.as_ref() != Some(&state) {
            state.store(&dir)?;
        }

        let last = segments.len() - 1;
        let active = &mut segments[last];
        sync_data(&active.file, &active.log_path, config.faults.as_deref())?;
        active.durable_size = active.size;
        let log_end = active.next_offset;
        // Index entries rebuilt by recovery now point at durable data.
        active.publish_durable(log_end);
        let log = Log {
            dir,
            config,
            inner: Mutex::new(Inner {
                segments,
                state,
                failed: None,
                last_flush_ms: None,
                generation: 0,
                sealing: None,
            }),
            sync_lock: Mutex::new(false),
            synced: Condvar::new(),
            durable_offset: AtomicU64::new(log_end),
            fsyncs: AtomicU64::new(0),
        };
        Ok((log, report))
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner.lock().map_err(|_| StorageError::Failed {
            path: self.dir.clone(),
            reason: "a thread panicked while changing the log".into(),
        })
    }

    fn writable(&self) -> Result<MutexGuard<'_, Inner>> {
        let inner = self.lock()?;
        if let Some(reason) = &inner.failed {
            return Err(StorageError::Failed {
                path: self.dir.clone(),
                reason: reason.clone(),
            });
        }
        Ok(inner)
    }

    fn fail(&self, inner: &mut Inner, err: StorageError) -> StorageError {
        tracing::error!(dir = %self.dir.display(), error = %err, "log failed; it refuses writes until reopened");
        inner.failed = Some(err.to_string());
        err
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Appends a batch as the next Raft entry under `term`; see [`Log::append_entry`].
    ///
    /// The index is taken under the same lock as the write, so concurrent
    /// appenders each get the next one.
    pub fn append(&self, batch: &[u8], term: u64) -> Result<AppendInfo> {
        self.append_at(batch, term, None)
    }

    /// Appends one batch as Raft entry `index` of `term`.
    ///
    /// The batch is verified (header and CRC) and written as received, with
    /// its base offset, term and index stamped in; `index` must be
    /// `last_index() + 1` and `term` at least the last entry's. Under
    /// [`FlushPolicy::Always`] this returns once the batch is on disk.
    /// A failed write leaves the log as it was; a failed fsync fails the log.
    pub fn append_entry(&self, batch: &[u8], term: u64, index: u64) -> Result<AppendInfo> {
        self.append_at(batch, term, Some(index))
    }

    /// Appends a batch verified on receipt (see [`Log::append`]) without
    /// checking its CRC again: the produce path checks each batch once.
    pub fn append_verified(&self, batch: &VerifiedBatch, term: u64) -> Result<AppendInfo> {
        self.check_size(batch.len())?;
        self.append_view(batch.view(), term, None)
    }

    /// [`Log::append_entry`] at `index`, or at the next index if `None`.
    fn append_at(&self, batch: &[u8], term: u64, index: Option<u64>) -> Result<AppendInfo> {
        self.check_size(batch.len())?;
        let view = BatchView::new(batch)?;
        if view.as_bytes().len() != batch.len() {
            return Err(StorageError::Invalid(format!(
                "{} bytes follow the batch of {} bytes: append one batch at a time",
                batch.len() - view.as_bytes().len(),
                view.as_bytes().len()
            )));
        }
        self.append_view(view, term, index)
    }

    fn check_size(&self, size: usize) -> Result<()> {
        let max = self.config.max_batch_bytes as usize;
        if size > max {
            return Err(StorageError::BatchTooLarge { size, max });
        }
        Ok(())
    }

    /// Appends one verified batch (every [`BatchView`] is) of checked size,
    /// exactly as it is.
    fn append_view(
        &self,
        view: BatchView<'_>,
        term: u64,
        index: Option<u64>,
    ) -> Result<AppendInfo> {
        let batch = view.as_bytes();
        let info = {
            let mut inner = self.writable()?;
            let inner = &mut *inner;
            let next_index = inner.last_index() + 1;
            let index = index.unwrap_or(next_index);
            if index != next_index {
                return Err(StorageError::Invalid(format!(
                    "raft index {index} does not follow the last index {}",
                    next_index - 1
                )));
            }
            let last_term = inner
                .state
                .term_runs
                .last()
                .map_or(inner.state.compacted_term, |r| r.0);
            if term < last_term {
                return Err(StorageError::Invalid(format!(
                    "term {term} is below the log's last term {last_term}"
                )));
            }
            let base_offset = inner.log_end();
            let mut header = *view.header();
            header.base_offset = base_offset;
            header.raft_term = term;
            header.raft_index = index;
            if inner
                .active()
                .needs_roll(batch.len() as u64, &header, &self.config)
            {
                self.roll(inner)?;
            }
            let new_run = term > last_term || inner.state.term_runs.is_empty();
            if new_run {
                // Persist the new term before any entry of it (RAFT.md, trap 2).
                inner.state.term_runs.push((term, index));
                if let Err(e) = inner.state.store(&self.dir) {
                    inner.state.term_runs.pop();
                    return Err(self.fail(inner, e));
                }
            }
            let prefix = stamped_prefix(batch, base_offset, term, index);
            let faults = self.config.faults.clone();
            if let Err(e) =
                inner
                    .active_mut()
                    .append(&prefix, batch, &header, &self.config, faults.as_deref())
            {
                if let StorageError::Failed { .. } = e {
                    return Err(self.fail(inner, e));
                }
                if new_run {
                    // The entry is not in the log: neither is its term. The
                    // run must not outlive the failure, in memory or on disk,
                    // or a retry under another term would disagree with it.
                    inner.state.term_runs.pop();
                    if let Err(store) = inner.state.store(&self.dir) {
                        return Err(self.fail(inner, store));
                    }
                }
                return Err(e);
            }
            AppendInfo {
                base_offset,
                last_offset: header.last_offset(),
                raft_index: index,
                raft_term: term,
            }
        };
        if self.config.flush == FlushPolicy::Always {
            self.sync_until(info.last_offset + 1)?;
        }
        Ok(info)
    }

    /// Seals the active segment and starts a new one at the log end,
    /// without waiting for any fsync: the sealed segment's data and the
    /// directory holding the new segment are fsynced by the next flush
    /// ([`Log::finish_seal`], outside the lock), or at the next roll if no
    /// flush came first (by then the data is long written back). A crash
    /// before that may lose the new segment's file, never anything flushed:
    /// recovery then ends the log with the sealed segment.
    /// A failure to create the new segment changes nothing; a failure to
    /// seal the old one fails the log.
    fn roll(&self, inner: &mut Inner) -> Result<()> {
        // At most one seal is unfinished, so that recovery only ever has to
        // scan the last two segments.
        self.finish_seal_locked(inner)?;
        let (base_offset, base_index) = (inner.log_end(), inner.last_index() + 1);
        // Not durable yet: the seal started below fsyncs the directory
        // (finish_seal), before any of the new segment counts as durable.
        let new = Segment::create(&self.dir, base_offset, base_index, &self.config, false)?;
        if let Err(e) = inner.active_mut().seal_start() {
            return Err(self.fail(inner, e));
        }
        inner.sealing = Some(inner.active().base_offset);
        inner.segments.push(new);
        tracing::debug!(dir = %self.dir.display(), base_offset, "rolled to a new segment");
        Ok(())
    }

    /// Finishes an unfinished seal under the lock (a roll, truncation or
    /// close with one pending): fsyncs the segment's data and indexes.
    fn finish_seal_locked(&self, inner: &mut Inner) -> Result<()> {
        let Some(base) = inner.sealing else {
            return Ok(());
        };
        let at = inner.segments.len() - 2;
        let seg = &mut inner.segments[at];
        debug_assert_eq!(seg.base_offset, base);
        let faults = self.config.faults.clone();
        if let Err(e) = seg.seal_finish(faults.as_deref()) {
            return Err(self.fail(inner, e));
        }
        let end = seg.next_offset;
        // The segment the roll created after this one (see `roll`).
        if let Err(e) = sync_dir(&self.dir) {
            return Err(self.fail(inner, e));
        }
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.durable_offset.fetch_max(end, Ordering::AcqRel);
        inner.sealing = None;
        Ok(())
    }

    /// Finishes an unfinished seal with the fsyncs outside the lock, so
    /// that appends and reads go on meanwhile: fsyncs the sealed data
    /// (then everything below the active segment is durable), writes the
    /// index entries, fsyncs the indexes and maps them. Called by the
    /// group commit's syncer (`sync_written`), one at a time; a roll,
    /// truncation or reset meanwhile makes it stop (they finish or drop
    /// the seal themselves).
    fn finish_seal(&self) -> Result<()> {
        let still = |inner: &Inner, base: u64, generation: u64| {
            inner.generation == generation && inner.sealing == Some(base)
        };
        let (file, path, size, base, generation) = {
            let inner = self.writable()?;
            let Some(base) = inner.sealing else {
                return Ok(());
            };
            let seg = &inner.segments[inner.segments.len() - 2];
            (
                seg.file.clone(),
                seg.log_path.clone(),
                seg.size,
                base,
                inner.generation,
            )
        };
        // The sealed data, then the directory: the roll created the next
        // segment without making that durable (see `roll`).
        if let Err(e) = sync_data(&file, &path, self.config.faults.as_deref())
            .and_then(|()| sync_dir(&self.dir))
        {
            let mut inner = self.lock()?;
            return Err(self.fail(&mut inner, e));
        }
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        let indexes = {
            let mut inner = self.writable()?;
            if !still(&inner, base, generation) {
                return Ok(());
            }
            let at = inner.segments.len() - 2;
            let seg = &mut inner.segments[at];
            seg.durable_size = size;
            let end = seg.next_offset;
            let indexes = seg.write_indexes();
            // Every segment before this one is sealed and durable.
            self.durable_offset.fetch_max(end, Ordering::AcqRel);
            match indexes {
                Ok(files) => files,
                Err(e) => return Err(self.fail(&mut inner, e)),
            }
        };
        for (file, path) in &indexes {
            if let Err(e) = sync_index(file, path) {
                let mut inner = self.lock()?;
                return Err(self.fail(&mut inner, e));
            }
        }
        let mut inner = self.writable()?;
        if still(&inner, base, generation) {
            let at = inner.segments.len() - 2;
            if let Err(e) = inner.segments[at].map_indexes() {
                return Err(self.fail(&mut inner, e));
            }
            inner.sealing = None;
        }
        Ok(())
    }

    /// Makes everything below `end_offset` durable, sharing the fsync with
    /// concurrent callers (group commit): one caller at a time syncs all that
    /// was written so far, outside any lock; the others wait for it and find
    /// their data covered, or one of them syncs next.
    fn sync_until(&self, end_offset: u64) -> Result<()> {
        if self.durable_offset.load(Ordering::Acquire) >= end_offset {
            return Ok(());
        }
        let poisoned = |_| StorageError::Failed {
            path: self.dir.clone(),
            reason: "a thread panicked while syncing".into(),
        };
        let mut syncing = self.sync_lock.lock().map_err(poisoned)?;
        loop {
            if self.durable_offset.load(Ordering::Acquire) >= end_offset {
                return Ok(());
            }
            if !*syncing {
                break;
            }
            syncing = self.synced.wait(syncing).map_err(poisoned)?;
        }
        *syncing = true;
        drop(syncing);
        // Ends the turn even if the sync panics, so that no waiter is stuck.
        let _turn = SyncTurn(self);
        self.sync_written()
    }

    /// fsyncs the active segment up to what is written now.
    fn sync_written(&self) -> Result<()> {
        let (file, path, written, size, base, generation) = loop {
            // The segments before the active one must be durable first.
            self.finish_seal()?;
            let inner = self.writable()?;
            if inner.sealing.is_some() {
                // A roll came in between: finish that seal too.
                continue;
            }
            let a = inner.active();
            break (
                a.file.clone(),
                a.log_path.clone(),
                a.next_offset,
                a.size,
                a.base_offset,
                inner.generation,
            );
        };
        if let Err(e) = sync_data(&file, &path, self.config.faults.as_deref()) {
            let mut inner = self.lock()?;
            return Err(self.fail(&mut inner, e));
        }
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock()?;
        // A truncation or reset since the fsync began may have cut below
        // `written` and appended new bytes there: they are not covered.
        if inner.generation == generation {
            self.durable_offset.fetch_max(written, Ordering::AcqRel);
            // The segment may have been sealed (and fully synced) meanwhile.
            let at = inner.segment_for_offset(base);
            let seg = &mut inner.segments[at];
            if seg.base_offset == base {
                seg.durable_size = seg.durable_size.max(size);
            }
            inner.active_mut().publish_durable(written);
        }
        Ok(())
    }

    /// fsyncs everything appended so far.
    pub fn flush(&self) -> Result<()> {
        let end = self.lock()?.log_end();
        self.sync_until(end)
    }

    /// Drives time-based work: with [`FlushPolicy::IntervalMs`], flushes
    /// when the interval has passed since the last flush. `now_ms` is any
    /// monotonic millisecond clock.
    pub fn tick(&self, now_ms: i64) -> Result<()> {
        let FlushPolicy::IntervalMs(ms) = self.config.flush else {
            return Ok(());
        };
        let due = {
            let mut inner = self.lock()?;
            let due = inner.last_flush_ms.is_none_or(|t| now_ms - t >= ms as i64);
            if due {
                inner.last_flush_ms = Some(now_ms);
            }
            due
        };
        if due { self.flush() } else { Ok(()) }
    }

    /// Unmaps the pages that reads have mapped into this process (the page
    /// cache keeps them; the next read faults them back in), so the pages
    /// consumers touched stay cheap to reclaim (the broker calls it once a
    /// second); see
    /// `SegmentReader::release_mapped_pages`. With `everything` false only
    /// the data [`Log::drop_cached`] already dropped (read back from disk
    /// since) is unmapped: the rest is still in the page cache budget, and
    /// unmapping it would only make the readers at the tail fault it back
    /// in; `drop_cached` unmaps what it drops. With `everything` true (no
    /// budget) every mapped page goes.
    pub fn release_mapped_pages(&self, everything: bool) -> Result<()> {
        // Advise outside the lock: appends and reads go on meanwhile.
        let readers: Vec<(SegmentReader, u64)> = self
            .lock()?
            .segments
            .iter()
            .map(|s| {
                (
                    s,
                    if everything {
                        s.size
                    } else {
                        s.dropped_bytes()
                    },
                )
            })
            .filter(|&(_, to)| to > 0)
            .map(|(s, to)| (s.reader(), to))
            .collect();
        for (reader, to) in &readers {
            reader.release_mapped_pages(*to);
        }
        Ok(())
    }

    /// Bytes of this log's data that may still be in the page cache: all
    /// that was written or recovered and not dropped by
    /// [`Log::drop_cached`] since. (Pages that reads bring back in are not
    /// counted: the kernel keeps or reclaims them as it likes.)
    pub fn cached_bytes(&self) -> Result<u64> {
        Ok(self
            .lock()?
            .segments
            .iter()
            .map(Segment::cached_bytes)
            .sum())
    }

    /// Drops the oldest cached data from the page cache until at most
    /// `keep` bytes of it stay ([`Log::cached_bytes`]); returns the bytes
    /// dropped. Data still being appended to (the part of the active
    /// segment not yet handed to writeback) stays. Unmaps what it drops
    /// (mapped pages cannot leave the page cache) and waits for its
    /// writeback, so call it off the request path; the broker does ten
    /// times a second, so that each call drops little. Reads of dropped
    /// data go to the disk.
    ///
    /// Why: a broker that writes faster than the kernel reclaims grows the
    /// page cache into all free memory; on a virtual machine whose memory
    /// the host backs lazily, each new page then costs a host fault (3x the
    /// cost of a recycled one on the benchmark machine, see
    /// benches/RESULTS.md), which ate the CPU the broker needed.
    pub fn drop_cached(&self, keep: u64) -> Result<u64> {
        let ranges = {
            let mut inner = self.lock()?;
            let total: u64 = inner.segments.iter().map(Segment::cached_bytes).sum();
            let mut excess = total.saturating_sub(keep);
            let mut ranges = Vec::new();
            for seg in &mut inner.segments {
                if excess == 0 {
                    break;
                }
                if let Some(range) = seg.take_cached(excess) {
                    excess -= range.len();
                    ranges.push(range);
                }
            }
            ranges
        };
        // Outside the lock: the writeback wait may take a while.
        let mut dropped = 0;
        for range in &ranges {
            range.drop_pages();
            dropped += range.len();
        }
        Ok(dropped)
    }

    /// Offset up to which (exclusive) appended data is known to be on disk.
    pub fn durable_offset(&self) -> u64 {
        self.durable_offset.load(Ordering::Acquire)
    }

    /// Number of fsyncs of segment data issued since open (for tests and
    /// metrics: shows group commit at work).
    pub fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// First offset consumers may read.
    pub fn log_start_offset(&self) -> Result<u64> {
        Ok(self.lock()?.state.log_start_offset)
    }

    /// Offset the next appended record will get.
    pub fn log_end_offset(&self) -> Result<u64> {
        Ok(self.lock()?.log_end())
    }

    /// First Raft index stored (`compacted index + 1`; 1 for a new log).
    pub fn first_index(&self) -> Result<u64> {
        Ok(self.lock()?.state.compacted_index + 1)
    }

    /// Last Raft index stored (0 for a new log).
    pub fn last_index(&self) -> Result<u64> {
        Ok(self.lock()?.last_index())
    }

    /// Term of Raft entry `index`, for any `index` in
    /// `[first_index() - 1, last_index()]`, answered from memory.
    pub fn term(&self, index: u64) -> Result<u64> {
        self.lock()?.term(index)
    }

    /// Summaries of all segments, oldest first.
    pub fn segments(&self) -> Result<Vec<SegmentSummary>> {
        let inner = self.lock()?;
        Ok(inner
            .segments
            .iter()
            .map(|s| SegmentSummary {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                base_index: s.base_index,
                size: s.size,
                max_timestamp: s.max_timestamp,
                path: s.log_path.clone(),
            })
            .collect())
    }

    /// Total bytes of segment data.
    pub fn size_bytes(&self) -> Result<u64> {
        Ok(self.lock()?.segments.iter().map(|s| s.size).sum())
    }

    /// Reads whole batches starting with the one that holds `offset`, up to
    /// `max_bytes` (at least one batch, so a large batch is never stuck),
    /// stopping before any batch at or past `max_offset` (e.g. the high
    /// watermark) and at the end of a segment.
    ///
    /// `offset` must lie in `[log_start_offset, log_end_offset]`; at the end
    /// (or at `max_offset`) the result is empty. Every returned batch has
    /// been CRC-verified: corrupt stored data is a
    /// [`StorageError::Corrupt`], never returned as data.
    pub fn read(&self, offset: u64, max_offset: u64, max_bytes: usize) -> Result<ReadBatches> {
        self.read_batches(offset, max_offset, max_bytes, ReadKind::Verified)
            .map(Option::unwrap_or_default)
    }

    /// [`Log::read`] without the per-batch CRC check: headers and lengths
    /// are still checked, the payload is not. For the fetch path, where the
    /// consumer verifies every batch's CRC itself (Kafka's `check.crcs`), so
    /// checking it here too would cost the broker a second pass over every
    /// byte served (about 14% of its CPU at 1 GB/s, benches/RESULTS.md).
    pub fn read_unverified(
        &self,
        offset: u64,
        max_offset: u64,
        max_bytes: usize,
    ) -> Result<ReadBatches> {
        self.read_batches(offset, max_offset, max_bytes, ReadKind::Forward)
            .map(Option::unwrap_or_default)
    }

    /// [`Log::read_unverified`] only if the read starts in the active
    /// segment within `within` bytes of its end: data written moments ago,
    /// in memory unless the kernel was short of it, so cheap enough to read
    /// on an async thread (at most `within` bytes of page mappings). `None`
    /// otherwise, without reading: read it with [`Log::read_unverified`]
    /// where blocking is fine.
    pub fn read_recent_unverified(
        &self,
        offset: u64,
        max_offset: u64,
        max_bytes: usize,
        within: u64,
    ) -> Result<Option<ReadBatches>> {
        self.read_batches(offset, max_offset, max_bytes, ReadKind::Recent(within))
    }

    fn read_batches(
        &self,
        offset: u64,
        max_offset: u64,
        max_bytes: usize,
        kind: ReadKind,
    ) -> Result<Option<ReadBatches>> {
        let (reader, start) = {
            let inner = self.lock()?;
            let (log_start, log_end) = (inner.state.log_start_offset, inner.log_end());
            if offset < log_start || offset > log_end {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    log_start,
                    log_end,
                });
            }
            if offset >= log_end.min(max_offset) {
                return Ok(Some(ReadBatches {
                    first_offset: offset,
                    next_offset: offset,
                    ..Default::default()
                }));
            }
            let i = inner.segment_for_offset(offset);
            let seg = &inner.segments[i];
            let start = seg.scan_start_for_offset(offset);
            if let ReadKind::Recent(within) = kind
                && (i + 1 != inner.segments.len() || seg.size.saturating_sub(start) > within)
            {
                return Ok(None);
            }
            (seg.reader(), start)
        };
        // Data away from the log's end may have left memory: ask for all
        // the read may return (and, for a consumer going forward, what its
        // next reads will want) in one go, and have the returned part
        // mapped before the bytes leave here. The disk then reads ahead
        // while this read's bytes are sent. (Reads near the end are in
        // memory and run on async threads, where a madvise that reads the
        // disk must not.)
        if let Some(ahead) = kind.read_ahead() {
            let end = start.saturating_add(max_bytes as u64).saturating_add(ahead);
            reader.will_need(start, end.min(reader.size));
        }
        let mut pos = skip_to(&reader, start, |h| h.next_offset() > offset)?;
        let from = pos;
        let (mut first_offset, mut next_offset, mut count) = (offset, offset, 0usize);
        while pos < reader.size {
            // Only a batch that is returned is verified, and only the first
            // one may fail the read: damage further on is reported by the
            // read that starts there, not by this one.
            let h = match reader.header(pos) {
                Ok(h) => h,
                Err(_) if count > 0 => break,
                Err(e) => return Err(e),
            };
            if count > 0 && h.base_offset != next_offset {
                break;
            }
            let len = u64::from(h.batch_len);
            if h.base_offset >= max_offset || (count > 0 && (pos + len - from) as usize > max_bytes)
            {
                break;
            }
            if kind == ReadKind::Verified {
                match reader.verified(pos) {
                    Ok(_) => {}
                    Err(_) if count > 0 => break,
                    Err(e) => return Err(e),
                }
            }
            if count == 0 {
                first_offset = h.base_offset;
            }
            next_offset = h.next_offset();
            count += 1;
            pos += len;
        }
        if kind.read_ahead().is_some() {
            reader.populate(from, pos);
        }
        Ok(Some(ReadBatches {
            bytes: reader.slice(from, pos),
            first_offset,
            next_offset,
            batch_count: count,
        }))
    }

    /// Raft entries `[low, high)` as stored batches, at most `max_bytes`
    /// in total but always at least one (raft-rs `Storage::entries`).
    /// `Compacted` below the first index, `Unavailable` past the last.
    pub fn entries(&self, low: u64, high: u64, max_bytes: Option<u64>) -> Result<Vec<Bytes>> {
        let mut out = Vec::new();
        let mut total = 0u64;
        let mut next = low;
        let max_bytes = max_bytes.unwrap_or(u64::MAX);
        while next < high {
            let (reader, start, runs) = {
                let inner = self.lock()?;
                let first = inner.state.compacted_index + 1;
                if next < first {
                    return Err(StorageError::Compacted {
                        index: next,
                        first_index: first,
                    });
                }
                let last = inner.last_index();
                if high > last + 1 {
                    return Err(StorageError::Unavailable {
                        index: high - 1,
                        last_index: last,
                    });
                }
                let seg = &inner.segments[inner.segment_for_index(next)];
                // The term is stamped outside the CRC: check it against the
                // term runs, which Raft trusts for matching.
                let runs = PartitionState {
                    term_runs: inner.state.term_runs.clone(),
                    ..Default::default()
                };
                (seg.reader(), seg.scan_start_for_index(next), runs)
            };
            let mut pos = skip_to(&reader, start, |h| h.raft_index >= next)?;
            let before = next;
            let mut next_offset = None;
            while pos < reader.size && next < high {
                // The size limit first: a batch that is not returned is not verified.
                let h = reader.header(pos)?;
                let len = u64::from(h.batch_len);
                if !out.is_empty() && total + len > max_bytes {
                    return Ok(out);
                }
                reader.verified(pos)?;
                if let Some(term) = runs.term_of(next).filter(|t| *t != h.raft_term) {
                    return Err(StorageError::corrupt(
                        &reader.path,
                        pos,
                        format!(
                            "raft index {next} carries term {} but the log recorded term {term}",
                            h.raft_term
                        ),
                    ));
                }
                if h.raft_index != next || next_offset.is_some_and(|o| h.base_offset != o) {
                    return Err(StorageError::corrupt(
                        &reader.path,
                        pos,
                        format!(
                            "batch (offset {}, raft index {}) where raft index {next} was expected",
                            h.base_offset, h.raft_index
                        ),
                    ));
                }
                next_offset = Some(h.next_offset());
                out.push(reader.slice(pos, pos + len));
                total += len;
                next += 1;
                pos += len;
            }
            if next == before {
                return Err(StorageError::corrupt(
                    &reader.path,
                    pos,
                    format!("raft index {next} not found"),
                ));
            }
        }
        Ok(out)
    }

    /// The first offset whose record timestamp is `>= timestamp`, or
    /// `None` if every stored record is older (read from the log end then).
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>> {
        let (candidates, log_start) = {
            let inner = self.lock()?;
            let log_start = inner.state.log_start_offset;
            let first = inner.segment_for_offset(log_start);
            let candidates: Vec<(SegmentReader, u64)> = inner.segments[first..]
                .iter()
                .filter(|s| s.size > 0 && s.max_timestamp >= timestamp)
                .map(|s| (s.reader(), s.scan_start_for_timestamp(timestamp)))
                .collect();
            (candidates, log_start)
        };
        for (reader, start) in candidates {
            let mut pos = start;
            while pos < reader.size {
                let h = reader.verified(pos)?;
                if h.max_timestamp >= timestamp && h.next_offset() > log_start {
                    let corrupt = |e| StorageError::corrupt(&reader.path, pos, e);
                    let view = BatchView::new(&reader.data()[pos as usize..]).map_err(corrupt)?;
                    let records = view.records().map_err(corrupt)?;
                    for r in records.iter() {
                        let r = r.map_err(corrupt)?;
                        let offset = h.base_offset + u64::from(r.offset_delta);
                        if r.timestamp >= timestamp && offset >= log_start {
                            return Ok(Some(offset));
                        }
                    }
                }
                pos += u64::from(h.batch_len);
            }
        }
        Ok(None)
    }

    /// Removes Raft entries `index..` (and their offsets), across segments
    /// and both indexes, durably. `index` must be above the compacted index;
    /// past the last index it is a no-op.
    pub fn truncate_from_index(&self, index: u64) -> Result<()> {
        let mut inner = self.writable()?;
        let inner = &mut *inner;
        if index <= inner.state.compacted_index {
            return Err(StorageError::Invalid(format!(
                "cannot truncate from raft index {index}: entries up to {} are compacted",
                inner.state.compacted_index
            )));
        }
        if index > inner.last_index() {
            return Ok(());
        }
        // Everything before the cut must be durable when this returns
        // (rare: Raft truncates seldom, and a seal is rarely pending).
        self.finish_seal_locked(inner)?;
        let mut at = inner.segment_for_index(index);
        let pos = {
            let seg = &inner.segments[at];
            let reader = seg.reader();
            skip_to(&reader, seg.scan_start_for_index(index), |h| {
                h.raft_index >= index
            })?
        };
        let header = inner.segments[at].header_at(pos)?;
        if header.raft_index != index {
            return Err(StorageError::corrupt(
                &inner.segments[at].log_path,
                pos,
                format!(
                    "raft index {} where {index} was expected",
                    header.raft_index
                ),
            ));
        }
        let new_end = header.base_offset;
        if new_end < inner.state.log_start_offset {
            return Err(StorageError::Invalid(format!(
                "cannot truncate to offset {new_end}: below the log start offset {}",
                inner.state.log_start_offset
            )));
        }
        let prev_term = inner.term(index - 1)?;
        let result = (|| {
            // Later segments go first, newest first, so that a crash leaves
            // a log that is a prefix of the old one.
            let drop_from = if pos == 0 && at > 0 { at } else { at + 1 };
            while inner.segments.len() > drop_from {
                if let Some(seg) = inner.segments.pop() {
                    Segment::delete_files(&self.dir, seg.base_offset)?;
                }
            }
            sync_dir(&self.dir)?;
            if drop_from == at {
                at -= 1;
                let seg = &mut inner.segments[at];
                seg.reactivate(&self.dir, &self.config)?;
                return Ok(());
            }
            let seg = &mut inner.segments[at];
            if !seg.active {
                seg.reactivate(&self.dir, &self.config)?;
            }
            seg.truncate_at(pos, new_end, index, prev_term)?;
            let faults = self.config.faults.clone();
            sync_data(&seg.file, &seg.log_path, faults.as_deref())?;
            seg.durable_size = seg.size;
            seg.publish_durable(new_end);
            Ok(())
        })();
        if let Err(e) = result {
            return Err(self.fail(inner, e));
        }
        inner.segments[at].last_term = prev_term;
        inner.state.truncate_runs(index - 1);
        if let Err(e) = inner.state.store(&self.dir) {
            return Err(self.fail(inner, e));
        }
        inner.generation += 1;
        // Segments before `at` are sealed and synced, and `at` was just
        // synced whole: everything below the new end is durable.
        self.durable_offset.store(new_end, Ordering::Release);
        Ok(())
    }

    /// Removes every batch at or after `offset`, which must be the base
    /// offset of a batch (or the log end, a no-op) and not below the log
    /// start offset. Used when a follower's log diverges.
    pub fn truncate_to_offset(&self, offset: u64) -> Result<()> {
        let index = {
            let inner = self.lock()?;
            let (log_start, log_end) = (inner.state.log_start_offset, inner.log_end());
            if offset >= log_end {
                return Ok(());
            }
            if offset < log_start {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    log_start,
                    log_end,
                });
            }
            let seg = &inner.segments[inner.segment_for_offset(offset)];
            let reader = seg.reader();
            let pos = skip_to(&reader, seg.scan_start_for_offset(offset), |h| {
                h.next_offset() > offset
            })?;
            let h = reader.header(pos)?;
            if h.base_offset != offset {
                return Err(StorageError::Invalid(format!(
                    "offset {offset} is inside the batch [{}, {}]: truncate at a batch boundary",
                    h.base_offset,
                    h.last_offset()
                )));
            }
            h.raft_index
        };
        self.truncate_from_index(index)
    }

    /// Drops the whole log and starts it again at `start_offset`, after Raft
    /// entry `index` of `term` (RAFT.md, trap 16: installing a snapshot).
    ///
    /// Afterwards [`Log::log_start_offset`] = [`Log::log_end_offset`] =
    /// `start_offset`, [`Log::first_index`] = `index + 1`,
    /// [`Log::last_index`] = `index`, [`Log::term`]`(index)` = `term`, and the
    /// next [`Log::append_entry`]`(.., index + 1)` (with a term of at least
    /// `term`) lands at base offset `start_offset`. Durable on return.
    ///
    /// `index` must not be below the compacted index ([`Log::compacted`]):
    /// an older snapshot is refused with [`StorageError::Invalid`] and
    /// changes nothing. `start_offset` is not checked against the old
    /// offsets (a follower's diverged tail may have gone further).
    ///
    /// Crash safety: the new state is persisted first, flagged as a pending
    /// reset, then every segment file is unlinked, the directory fsynced,
    /// the new empty segment created and the flag cleared. A crash before
    /// the state is renamed into place reopens the old log; any later one
    /// reopens the reset log (open finishes the deletions). A failure
    /// part-way fails the log; reopening finishes the reset.
    pub fn reset_to(&self, start_offset: u64, index: u64, term: u64) -> Result<()> {
        let mut inner = self.writable()?;
        let inner = &mut *inner;
        if index < inner.state.compacted_index {
            return Err(StorageError::Invalid(format!(
                "cannot reset the log to raft index {index}: entries up to {} are already compacted",
                inner.state.compacted_index
            )));
        }
        if index == u64::MAX {
            return Err(StorageError::Invalid(format!(
                "cannot reset the log to raft index {index}: no index follows it"
            )));
        }
        let mut state = PartitionState {
            log_start_offset: start_offset,
            compacted_index: index,
            compacted_term: term,
            term_runs: Vec::new(),
            reset_pending: true,
        };
        // From here on the old log may be partly gone: the flagged state
        // must be on disk before anything is unlinked.
        inner.generation += 1;
        let result = (|| {
            state.store(&self.dir)?;
            for seg in inner.segments.iter().rev() {
                Segment::delete_files(&self.dir, seg.base_offset)?;
            }
            sync_dir(&self.dir)?;
            let new = Segment::create(&self.dir, start_offset, index + 1, &self.config, true)?;
            state.reset_pending = false;
            state.store(&self.dir)?;
            Ok(new)
        })();
        let new = match result {
            Ok(new) => new,
            Err(e) => return Err(self.fail(inner, e)),
        };
        inner.segments = vec![new];
        inner.sealing = None;
        inner.state = state;
        self.durable_offset.store(start_offset, Ordering::Release);
        tracing::info!(dir = %self.dir.display(), start_offset, index, term, "log reset");
        Ok(())
    }

    /// `(index, term)` of the last Raft entry removed from the front of the
    /// log, by retention or [`Log::reset_to`]: `first_index() - 1` and its
    /// term (`(0, 0)` for a log that never lost its front). Raft's
    /// `Storage::term(first_index - 1)` answers with it.
    pub fn compacted(&self) -> Result<(u64, u64)> {
        let inner = self.lock()?;
        Ok((inner.state.compacted_index, inner.state.compacted_term))
    }

    /// Advances the log start offset to `offset` (Kafka's delete-records):
    /// records below it are no longer readable, and whole segments below it
    /// are deleted by the next [`Log::apply_retention`]. Durable on return.
    pub fn delete_records(&self, offset: u64) -> Result<u64> {
        let mut inner = self.writable()?;
        let log_end = inner.log_end();
        if offset > log_end {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start: inner.state.log_start_offset,
                log_end,
            });
        }
        if offset > inner.state.log_start_offset {
            let before = inner.state.log_start_offset;
            inner.state.log_start_offset = offset;
            if let Err(e) = inner.state.store(&self.dir) {
                inner.state.log_start_offset = before;
                return Err(e);
            }
        }
        Ok(inner.state.log_start_offset)
    }

    /// Deletes whole sealed segments, oldest first, that are wholly below
    /// the log start offset, older than `retention_ms` (by their newest
    /// timestamp, against `now_ms`), or beyond `retention_bytes`. Segments
    /// holding any offset at or past `limit_offset` are kept (pass the high
    /// watermark or Raft's applied offset; `u64::MAX` for no limit). The
    /// active segment is never deleted.
    ///
    /// The new first Raft index and the term of the entry before it are
    /// persisted before any file is unlinked.
    pub fn apply_retention(&self, now_ms: i64, limit_offset: u64) -> Result<RetentionReport> {
        let mut inner = self.writable()?;
        let inner = &mut *inner;
        let mut total: u64 = inner.segments.iter().map(|s| s.size).sum();
        let mut k = 0;
        while k + 1 < inner.segments.len() {
            let s = &inner.segments[k];
            if s.next_offset > limit_offset {
                break;
            }
            let below_start = s.next_offset <= inner.state.log_start_offset;
            let too_old = self.config.retention_ms.is_some_and(|ms| {
                s.max_timestamp != i64::MIN && now_ms.saturating_sub(s.max_timestamp) > ms
            });
            let too_big = self
                .config
                .retention_bytes
                .is_some_and(|b| total - s.size >= b);
            if !(below_start || too_old || too_big) {
                break;
            }
            total -= s.size;
            k += 1;
        }
        let mut report = RetentionReport {
            log_start_offset: inner.state.log_start_offset,
            ..Default::default()
        };
        if k == 0 {
            return Ok(report);
        }
        let new_first = &inner.segments[k];
        let compacted_index = new_first.base_index - 1;
        let compacted_term = inner.term(compacted_index)?;
        let mut state = inner.state.clone();
        state.compacted_index = compacted_index;
        state.compacted_term = compacted_term;
        state.log_start_offset = state.log_start_offset.max(new_first.base_offset);
        let keep_from = state
            .term_runs
            .partition_point(|(_, start)| *start <= compacted_index + 1);
        state.term_runs.drain(..keep_from.saturating_sub(1));
        state.store(&self.dir)?;
        inner.state = state;
        if inner.sealing.is_some() && k + 1 == inner.segments.len() {
            // The segment whose seal is unfinished goes: nothing to finish,
            // and nothing below the remaining segment is left to be durable.
            inner.sealing = None;
            self.durable_offset
                .fetch_max(inner.segments[k].base_offset, Ordering::AcqRel);
        }
        for seg in inner.segments.drain(..k) {
            report.deleted_segments += 1;
            report.deleted_bytes += seg.size;
            Segment::delete_files(&self.dir, seg.base_offset)?;
        }
        sync_dir(&self.dir)?;
        report.log_start_offset = inner.state.log_start_offset;
        tracing::info!(dir = %self.dir.display(), segments = report.deleted_segments,
            bytes = report.deleted_bytes, log_start = report.log_start_offset, "retention deleted segments");
        Ok(report)
    }

    /// Flushes and closes the log.
    pub fn close(self) -> Result<()> {
        if self.lock()?.failed.is_none() {
            self.flush()?;
            let mut inner = self.lock()?;
            self.finish_seal_locked(&mut inner)?;
        }
        Ok(())
    }

    /// Simulates a power loss, for crash tests (here and in other crates'
    /// deterministic simulations): closes the log without flushing and
    /// cuts every segment's `.log` file to exactly the bytes made durable
    /// by an fsync (a flush, a roll's seal, a truncation, open), as if the
    /// rest had never reached the disk. [`Log::open`] then recovers the
    /// durable prefix: everything below the [`Log::durable_offset`] the log
    /// reported last, nothing after it. A later append or truncation
    /// that was not yet synced is simply lost, as after a real crash.
    ///
    /// Everything else on disk is always durable when written (the state
    /// file, directory entries) or derived and validated at open (indexes
    /// only point at durable data). A file is cut by writing its durable
    /// prefix to a new file renamed over it: batches read before the crash
    /// (`Bytes` into the old file's map) stay valid.
    ///
    /// Not for production: a real process never chooses to lose data.
    #[doc(hidden)]
    pub fn crash(self) -> Result<()> {
        let inner = self
            .inner
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        for seg in &inner.segments {
            let len = file_len(&seg.log_path)?;
            if len > seg.durable_size {
                keep_prefix(&seg.log_path, seg.durable_size)?;
            }
        }
        sync_dir(&self.dir)?;
        tracing::debug!(dir = %self.dir.display(), "simulated a crash");
        Ok(())
    }
}

/// A caller's turn to fsync for everyone (see `Log::sync_until`); ends on drop.
struct SyncTurn<'a>(&'a Log);

impl Drop for SyncTurn<'_> {
    fn drop(&mut self) {
        *self
            .0
            .sync_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = false;
        self.0.synced.notify_all();
    }
}

/// Walks batch headers from `pos` (the segment start or a position from
/// the offset index, which checks its entries against the log) to the first
/// one that satisfies `found`. Offsets and Raft indexes must follow on from
/// header to header: these fields lie outside the CRC, so this is what
/// catches their damage. Returns the segment size if no header satisfies `found`.
fn skip_to(
    reader: &SegmentReader,
    mut pos: u64,
    found: impl Fn(&BatchHeader) -> bool,
) -> Result<u64> {
    let mut expected = (pos == 0).then_some((reader.base_offset, reader.base_index));
    while pos < reader.size {
        let h = reader.header(pos)?;
        if let Some((offset, index)) = expected {
            if (h.base_offset, h.raft_index) != (offset, index) {
                return Err(StorageError::corrupt(
                    &reader.path,
                    pos,
                    format!(
                        "batch (offset {}, raft index {}) where ({offset}, {index}) was expected",
                        h.base_offset, h.raft_index
                    ),
                ));
            }
        }
        if found(&h) {
            return Ok(pos);
        }
        expected = Some((h.next_offset(), h.raft_index + 1));
        pos += u64::from(h.batch_len);
    }
    Ok(pos)
}

/// `(next_offset, next_index, last_term)` of the last sealed segment, from
/// a walk of the headers after its last index entry.
///
/// Zeros after the data (left by an older build that preallocated
/// segments) are cut here, as sealing would have. (An interrupted roll
/// never gets here: open drops the empty new segment and recovers this one
/// as the active segment.)
fn tail_of(seg: &mut Segment, faults: Option<&Faults>) -> Result<(u64, u64, u64)> {
    let reader = seg.reader();
    let mut pos = seg.scan_start_for_offset(u64::MAX);
    let mut last = None;
    while pos < reader.size {
        if reader.data()[pos as usize..]
            .iter()
            .take(HEADER_LEN)
            .all(|b| *b == 0)
        {
            tracing::warn!(segment = %seg.log_path.display(), size = pos,
                "segment was not sealed before the next one was created; cutting its preallocated tail");
            set_len(&seg.file, &seg.log_path, pos)?;
            sync_data(&seg.file, &seg.log_path, faults)?;
            seg.size = pos;
            seg.durable_size = pos;
            break;
        }
        let h = reader.header(pos)?;
        pos += u64::from(h.batch_len);
        last = Some(h);
    }
    match last {
        Some(h) => Ok((h.next_offset(), h.raft_index + 1, h.raft_term)),
        None => Ok((seg.base_offset, seg.base_index, 0)),
    }
}

fn file_len(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path)
        .map_err(|e| StorageError::io("stat", path, e))?
        .len())
}

/// Replaces the file at `path` with its first `len` bytes, as a new file
/// renamed over it (maps of the old file stay valid).
fn keep_prefix(path: &Path, len: u64) -> Result<()> {
    use std::io::{Read, Write};
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    let mut from = fs::File::open(path).map_err(|e| StorageError::io("open", path, e))?;
    let mut to = fs::File::create(&tmp).map_err(|e| StorageError::io("create", &tmp, e))?;
    let copied = std::io::copy(&mut (&mut from).take(len), &mut to)
        .map_err(|e| StorageError::io("copy", &tmp, e))?;
    if copied != len {
        return Err(StorageError::Invalid(format!(
            "{} holds {copied} bytes, fewer than the {len} bytes synced",
            path.display()
        )));
    }
    to.flush().map_err(|e| StorageError::io("write", &tmp, e))?;
    to.sync_all()
        .map_err(|e| StorageError::io("fsync", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| StorageError::io("rename", path, e))?;
    Ok(())
}

/// Whether a segment file holds no complete, valid first batch.
fn lacks_complete_batch(path: &Path) -> Result<bool> {
    Ok(first_batch(path)?.is_none())
}

/// The header of a segment file's first batch, if that batch is complete
/// and valid.
fn first_batch(path: &Path) -> Result<Option<BatchHeader>> {
    use std::io::Read;
    let mut file = fs::File::open(path).map_err(|e| StorageError::io("open", path, e))?;
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match file.read(&mut head[got..]) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StorageError::io("read", path, e)),
        }
    }
    let len = file
        .metadata()
        .map_err(|e| StorageError::io("stat", path, e))?
        .len();
    let header = match BatchHeader::parse(&head) {
        Ok(h) if u64::from(h.batch_len) <= len => h,
        _ => return Ok(None),
    };
    let mut batch = vec![0u8; header.batch_len as usize];
    batch[..HEADER_LEN].copy_from_slice(&head);
    if file.read_exact(&mut batch[HEADER_LEN..]).is_err() {
        return Ok(None);
    }
    Ok(BatchView::new(&batch).ok().map(|_| header))
}

/// Rebuilds the term runs by walking every batch header (only when the
/// state file was lost or disagrees with the log).
fn rebuild_term_runs(segments: &[Segment]) -> Result<Vec<(u64, u64)>> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for seg in segments {
        let reader = seg.reader();
        let mut pos = 0;
        while pos < reader.size {
            let h = reader.header(pos)?;
            if runs.last().is_none_or(|r| h.raft_term > r.0) {
                runs.push((h.raft_term, h.raft_index));
            }
            pos += u64::from(h.batch_len);
        }
    }
    Ok(runs)
}

/// How [`Log::read_batches`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadKind {
    /// Every returned batch CRC-checked ([`Log::read`]).
    Verified,
    /// A consumer going forward, on a thread that may block
    /// ([`Log::read_unverified`]): the disk reads ahead for its next reads.
    Forward,
    /// Only if the read starts in the active segment within this many bytes
    /// of its end ([`Log::read_recent_unverified`]); never advises the disk.
    Recent(u64),
}

impl ReadKind {
    /// How far past what the read may return the disk is asked to read, if
    /// the read may touch the disk at all.
    fn read_ahead(self) -> Option<u64> {
        match self {
            ReadKind::Verified => Some(0),
            ReadKind::Forward => Some(16 << 20),
            ReadKind::Recent(_) => None,
        }
    }
}

#[cfg(test)]
mod tests;
