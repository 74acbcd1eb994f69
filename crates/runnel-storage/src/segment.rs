//! One segment: a `.log` file of consecutive batches plus its two indexes.
//!
//! The active (last) segment grows by `pwrite` (nothing is preallocated:
//! a broker with many partitions reserves no disk it does not use) and is
//! read through a shared read-only map of `segment_bytes` that extends past
//! the end of the file; only written bytes `[0, size)` are ever touched, so
//! reads of freshly appended data come straight from the page cache. Sealing trims the file to its data, fsyncs it and its indexes.
//! A segment never shrinks below data a reader may hold, except by
//! truncation, which Raft only does above the high watermark.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{Advice, Mmap, MmapOptions, UncheckedAdvice};
use runnel_batch::{BatchHeader, BatchView, HEADER_LEN, STAMPED_LEN};

use crate::config::{LogConfig, RecoveryPolicy};
use crate::durable::{Faults, open_rw, set_len, sync_data, sync_dir, write_at};
use crate::error::{Result, StorageError};
use crate::filename::{INDEX_EXT, LOG_EXT, TIME_INDEX_EXT, segment_path};
use crate::index::{IndexFile, OffsetEntry, TimeEntry};

/// Owner of a mapped segment, so `Bytes` can point into the map.
pub(crate) struct MapOwner(pub(crate) Arc<Mmap>);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// What recovery of an active segment found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes scanned and verified.
    pub scanned_bytes: u64,
    /// Batches scanned and verified.
    pub scanned_batches: u64,
    /// Position where the valid data ends.
    pub valid_end: u64,
    /// Why the scan stopped before the end of the file, if it did on
    /// something other than zeros (a torn or corrupt batch).
    pub truncated: Option<String>,
}

pub(crate) struct Segment {
    pub(crate) base_offset: u64,
    /// Raft index of the first batch (or of the next one, when empty).
    pub(crate) base_index: u64,
    pub(crate) next_offset: u64,
    pub(crate) next_index: u64,
    /// Bytes of valid data.
    pub(crate) size: u64,
    /// Bytes of the `.log` file known to be on disk (covered by an fsync):
    /// what a power loss keeps (see `Log::crash`).
    pub(crate) durable_size: u64,
    pub(crate) log_path: PathBuf,
    pub(crate) file: Arc<File>,
    map: Arc<Mmap>,
    offset_index: IndexFile<OffsetEntry>,
    time_index: IndexFile<TimeEntry>,
    /// Largest timestamp in the segment (`i64::MIN` when unknown/empty).
    pub(crate) max_timestamp: i64,
    max_timestamp_rel: u32,
    /// `max_timestamp` of the first batch: the age basis for rolling.
    pub(crate) rolling_timestamp: Option<i64>,
    bytes_since_index: u64,
    /// Position up to which writeback to disk has been started.
    writeback_started: u64,
    /// Position below which the page cache was dropped
    /// ([`Segment::take_cached`]).
    uncached: u64,
    /// Term of the last batch (active segment only; 0 when unknown).
    pub(crate) last_term: u64,
    pub(crate) active: bool,
}

fn map_file(file: &File, path: &Path, len: u64) -> Result<Mmap> {
    // A zero-length map is not allowed; map one page that is never read.
    let len = usize::try_from(len.max(1))
        .map_err(|_| StorageError::Invalid(format!("{} is too large to map", path.display())))?;
    // SAFETY: the file is only written by this crate, through pwrite on the
    // same page cache; it is never shrunk below bytes a reader can reach
    // (readers only touch [0, size) of a segment).
    unsafe { MmapOptions::new().len(len).map(file) }.map_err(|e| StorageError::io("mmap", path, e))
}

impl Segment {
    /// Creates a new, empty active segment; with `durable`, also makes its
    /// creation durable (fsyncs the empty file and the directory). A roll
    /// passes `false`: on ext4 (data=ordered) any fsync waits for the
    /// journal to take the dirty data of the segment just sealed, which
    /// stalled the appender for up to a second under the log's lock; the
    /// roll's seal fsyncs the directory instead, outside the lock, before
    /// anything in the new segment counts as durable
    /// (`Log::finish_seal`).
    pub(crate) fn create(
        dir: &Path,
        base_offset: u64,
        base_index: u64,
        config: &LogConfig,
        durable: bool,
    ) -> Result<Segment> {
        let log_path = segment_path(dir, base_offset, LOG_EXT);
        let result = (|| {
            let file = open_rw(&log_path, true)?;
            set_len(&file, &log_path, 0)?;
            let offset_index = IndexFile::open_active(
                &segment_path(dir, base_offset, INDEX_EXT),
                config.index_max_bytes,
            )?;
            let time_index = IndexFile::open_active(
                &segment_path(dir, base_offset, TIME_INDEX_EXT),
                config.index_max_bytes,
            )?;
            if durable {
                sync_data(&file, &log_path, config.faults.as_deref())?;
                sync_dir(dir)?;
            }
            let map = map_file(&file, &log_path, u64::from(config.segment_bytes))?;
            Ok(Segment {
                base_offset,
                base_index,
                next_offset: base_offset,
                next_index: base_index,
                size: 0,
                durable_size: 0,
                log_path: log_path.clone(),
                file: Arc::new(file),
                map: Arc::new(map),
                offset_index,
                time_index,
                max_timestamp: i64::MIN,
                max_timestamp_rel: 0,
                rolling_timestamp: None,
                bytes_since_index: 0,
                writeback_started: 0,
                uncached: 0,
                last_term: 0,
                active: true,
            })
        })();
        if result.is_err() {
            // Leave nothing half-created behind (e.g. after ENOSPC).
            for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT] {
                let _ignored = fs::remove_file(segment_path(dir, base_offset, ext));
            }
        }
        result
    }

    /// Opens a sealed segment: no scan, only its first header and its
    /// indexes (rebuilt from the log if missing or damaged). `next_offset`
    /// and `next_index` are set by the caller from the following segment.
    ///
    /// `known_base_index` is asked for the segment's first Raft index only
    /// when the first header is damaged: the segment then still opens (the
    /// damage is reported by the reads that reach it) if the caller knows it.
    pub(crate) fn open_sealed(
        dir: &Path,
        base_offset: u64,
        config: &LogConfig,
        known_base_index: impl FnOnce() -> Option<u64>,
    ) -> Result<Segment> {
        let log_path = segment_path(dir, base_offset, LOG_EXT);
        let file = open_rw(&log_path, false)?;
        let size = file_len(&file, &log_path)?;
        let map = map_file(&file, &log_path, size)?;
        let first = match BatchHeader::parse(&map[..(size as usize).min(HEADER_LEN)]) {
            Ok(h) if h.base_offset == base_offset => Ok(h),
            Ok(h) => Err(format!(
                "first batch has offset {} but the file name says {base_offset}",
                h.base_offset
            )),
            Err(e) => Err(e.to_string()),
        };
        let (base_index, rolling_timestamp) = match first {
            Ok(h) => (h.raft_index, Some(h.max_timestamp)),
            Err(reason) => match known_base_index() {
                Some(index) => {
                    tracing::warn!(segment = %log_path.display(), %reason,
                        "first batch header of a sealed segment is damaged; opening it anyway");
                    (index, None)
                }
                None => return Err(StorageError::corrupt(&log_path, 0, reason)),
            },
        };
        let index_path = segment_path(dir, base_offset, INDEX_EXT);
        let time_path = segment_path(dir, base_offset, TIME_INDEX_EXT);
        let sealed = (
            IndexFile::<OffsetEntry>::open_sealed(&index_path)?,
            IndexFile::<TimeEntry>::open_sealed(&time_path)?,
        );
        let fresh = || -> Result<(IndexFile<OffsetEntry>, IndexFile<TimeEntry>)> {
            tracing::warn!(segment = %log_path.display(), "index missing or damaged; rebuilding it from the log");
            for p in [&index_path, &time_path] {
                let _ignored = fs::remove_file(p);
            }
            Ok((
                IndexFile::open_active(&index_path, config.index_max_bytes)?,
                IndexFile::open_active(&time_path, config.index_max_bytes)?,
            ))
        };
        let (offset_index, time_index, mut rebuild) = match sealed {
            (Some(oi), Some(ti))
                if oi
                    .last()
                    .is_none_or(|e| u64::from(e.position) + HEADER_LEN as u64 <= size) =>
            {
                (oi, ti, false)
            }
            _ => {
                let (oi, ti) = fresh()?;
                (oi, ti, true)
            }
        };
        let mut seg = Segment {
            base_offset,
            base_index,
            next_offset: base_offset,
            next_index: base_index,
            size,
            durable_size: size,
            log_path: log_path.clone(),
            file: Arc::new(file),
            map: Arc::new(map),
            offset_index,
            time_index,
            max_timestamp: i64::MIN,
            max_timestamp_rel: 0,
            rolling_timestamp,
            bytes_since_index: 0,
            writeback_started: 0,
            uncached: 0,
            last_term: 0,
            active: false,
        };
        if !rebuild {
            // The last time entry gives the segment's newest timestamp
            // (retention by age, time lookups): it must match the log.
            match seg.time_index.last() {
                Some(t) if seg.time_entry_matches(&t) => {
                    seg.max_timestamp = t.timestamp;
                    seg.max_timestamp_rel = t.rel_offset;
                }
                _ => {
                    (seg.offset_index, seg.time_index) = fresh()?;
                    rebuild = true;
                }
            }
        }
        if rebuild {
            seg.rebuild_indexes(config)?;
        }
        Ok(seg)
    }

    /// Scans a sealed segment and writes fresh indexes for it. Stops at the
    /// first invalid batch (reads past it report the corruption).
    fn rebuild_indexes(&mut self, config: &LogConfig) -> Result<()> {
        let map = self.map.clone();
        let mut pos = 0u64;
        while pos < self.size {
            let h = match BatchView::new(&map[pos as usize..self.size as usize]) {
                // Offsets and indexes lie outside the CRC: they must follow on.
                Ok(v)
                    if (v.header().base_offset, v.header().raft_index)
                        == (self.next_offset, self.next_index) =>
                {
                    *v.header()
                }
                Ok(v) => {
                    tracing::warn!(segment = %self.log_path.display(), position = pos,
                        offset = v.header().base_offset, index = v.header().raft_index,
                        "batch out of sequence while rebuilding the index; indexing stops here");
                    break;
                }
                Err(e) => {
                    tracing::warn!(segment = %self.log_path.display(), position = pos, error = %e,
                        "corrupt batch while rebuilding the index; indexing stops here");
                    break;
                }
            };
            self.note_batch(pos, &h, config);
            pos += u64::from(h.batch_len);
            self.next_offset = h.next_offset();
            self.next_index = h.raft_index + 1;
        }
        self.seal_indexes()
    }

    /// Recovers the last segment of a log: verifies batches from the last
    /// index entry that still checks out, truncates at the first torn or
    /// corrupt batch, fixes the indexes, and maps it for appends.
    ///
    /// `base_index` is the Raft index the first batch must carry, when known;
    /// `term_of(index)` the term the entry must carry, when known (from the
    /// state file, which records each term before its first entry: the
    /// term lies outside the batch CRC).
    pub(crate) fn recover_active(
        dir: &Path,
        base_offset: u64,
        base_index: Option<u64>,
        term_of: &dyn Fn(u64) -> Option<u64>,
        config: &LogConfig,
    ) -> Result<(Segment, RecoveryReport)> {
        let log_path = segment_path(dir, base_offset, LOG_EXT);
        let file = open_rw(&log_path, false)?;
        let file_size = file_len(&file, &log_path)?;
        let map = Arc::new(map_file(&file, &log_path, file_size)?);
        let scan_map = map.clone();
        let data: &[u8] = if file_size == 0 {
            &[]
        } else {
            &scan_map[..file_size as usize]
        };
        let base_index = match base_index {
            Some(i) => i,
            None => BatchHeader::parse(data).map(|h| h.raft_index).unwrap_or(1),
        };
        let mut seg = Segment {
            base_offset,
            base_index,
            next_offset: base_offset,
            next_index: base_index,
            size: 0,
            // Set by the caller once it has fsynced the recovered data.
            durable_size: 0,
            log_path: log_path.clone(),
            file: Arc::new(file),
            map,
            offset_index: IndexFile::open_active(
                &segment_path(dir, base_offset, INDEX_EXT),
                config.index_max_bytes,
            )?,
            time_index: IndexFile::open_active(
                &segment_path(dir, base_offset, TIME_INDEX_EXT),
                config.index_max_bytes,
            )?,
            max_timestamp: i64::MIN,
            max_timestamp_rel: 0,
            rolling_timestamp: None,
            bytes_since_index: 0,
            writeback_started: 0,
            uncached: 0,
            last_term: 0,
            active: true,
        };
        // The batch an index entry points at must be intact and carry the
        // entry's offsets; otherwise drop the entry and try the one before.
        let verified_at = |pos: u64, offset: u64, index: u64| -> Option<BatchHeader> {
            let v = BatchView::new(data.get(pos as usize..)?).ok()?;
            let h = *v.header();
            let term_ok = term_of(index).is_none_or(|t| t == h.raft_term);
            (h.base_offset == offset && h.raft_index == index && term_ok).then_some(h)
        };
        let mut start: Option<(u64, BatchHeader)> = None;
        while let Some(e) = seg.offset_index.last() {
            let offset = base_offset + u64::from(e.rel_offset);
            if let Some(h) = verified_at(
                u64::from(e.position),
                offset,
                base_index + u64::from(e.rel_index),
            ) {
                start = Some((u64::from(e.position), h));
                break;
            }
            seg.offset_index.truncate_to(seg.offset_index.len() - 1)?;
        }
        if let Some((pos, h)) = start {
            // Time entries up to the restart point are kept; the last one
            // gives the running max timestamp and must match the log.
            let rel = (h.base_offset - base_offset) as u32;
            let keep = seg
                .time_index
                .floor(rel, |t| t.rel_offset)
                .map_or(0, |i| i + 1);
            seg.time_index.truncate_to(keep)?;
            seg.size = pos + u64::from(h.batch_len);
            if seg
                .time_index
                .last()
                .is_some_and(|t| !seg.time_entry_matches(&t))
            {
                tracing::warn!(segment = %log_path.display(), "time index does not match the log; rebuilding both indexes");
                seg.time_index.truncate_to(0)?;
                start = None;
            }
            seg.size = 0;
        }
        if start.is_none() {
            seg.offset_index.truncate_to(0)?;
            seg.time_index.truncate_to(0)?;
            start = verified_at(0, base_offset, base_index).map(|h| (0, h));
        }
        let mut report = RecoveryReport::default();
        if let Some((pos, h)) = start {
            // Time entries past the restart point are re-derived by the scan.
            let rel = (h.base_offset - base_offset) as u32;
            let keep = seg
                .time_index
                .floor(rel, |t| t.rel_offset)
                .map_or(0, |i| i + 1);
            seg.time_index.truncate_to(keep)?;
            if let Some(t) = seg.time_index.last() {
                seg.max_timestamp = t.timestamp;
                seg.max_timestamp_rel = t.rel_offset;
            }
            seg.rolling_timestamp = if pos == 0 {
                None
            } else {
                BatchHeader::parse(data).ok().map(|f| f.max_timestamp)
            };
            // Account for the start batch without indexing it again.
            seg.bytes_since_index = 0;
            seg.observe_timestamp(&h);
            if seg.rolling_timestamp.is_none() {
                seg.rolling_timestamp = Some(h.max_timestamp);
            }
            seg.bytes_since_index = u64::from(h.batch_len);
            seg.last_term = h.raft_term;
            seg.next_offset = h.next_offset();
            seg.next_index = h.raft_index + 1;
            let mut pos = pos + u64::from(h.batch_len);
            report.scanned_batches = 1;
            report.scanned_bytes = u64::from(h.batch_len);
            loop {
                let rest = &data[pos as usize..];
                if rest.is_empty() {
                    break;
                }
                match BatchView::new(rest) {
                    Ok(v) => {
                        let h = *v.header();
                        let why = if h.base_offset != seg.next_offset {
                            Some(format!(
                                "batch offset {} where {} was expected",
                                h.base_offset, seg.next_offset
                            ))
                        } else if h.raft_index != seg.next_index {
                            Some(format!(
                                "raft index {} where {} was expected",
                                h.raft_index, seg.next_index
                            ))
                        } else if h.raft_term < seg.last_term {
                            Some(format!(
                                "raft term {} after term {}",
                                h.raft_term, seg.last_term
                            ))
                        } else {
                            term_of(h.raft_index)
                                .filter(|t| *t != h.raft_term)
                                .map(|t| {
                                    format!(
                                        "raft term {} where the state file says {t}",
                                        h.raft_term
                                    )
                                })
                        };
                        if let Some(why) = why {
                            report.truncated = Some(why);
                            break;
                        }
                        seg.note_batch(pos, &h, config);
                        seg.last_term = h.raft_term;
                        seg.next_offset = h.next_offset();
                        seg.next_index = h.raft_index + 1;
                        pos += u64::from(h.batch_len);
                        report.scanned_batches += 1;
                        report.scanned_bytes += u64::from(h.batch_len);
                    }
                    Err(e) => {
                        if rest.iter().take(HEADER_LEN).any(|b| *b != 0) {
                            report.truncated = Some(e.to_string());
                        }
                        break;
                    }
                }
            }
            seg.size = pos;
        } else if data.iter().take(HEADER_LEN).any(|b| *b != 0) {
            report.truncated = Some(match BatchView::new(data) {
                Err(e) => e.to_string(),
                Ok(_) => "first batch does not carry the segment's offset and index".into(),
            });
        }
        report.valid_end = seg.size;
        if let (RecoveryPolicy::Refuse, Some(why)) = (config.recovery, &report.truncated) {
            return Err(StorageError::corrupt(
                &log_path,
                seg.size,
                format!(
                    "{why}; recovery policy is refuse, so nothing was cut: inspect with \
                     `runnel log verify`, or open with the truncate policy to drop the tail"
                ),
            ));
        }
        // Cut whatever follows the valid prefix (a torn batch, stale bytes,
        // the zeros of a segment preallocated by an older version): appends
        // continue at `size`.
        set_len(&seg.file, &log_path, seg.size)?;
        let capacity = u64::from(config.segment_bytes).max(seg.size);
        seg.map = Arc::new(map_file(&seg.file, &log_path, capacity)?);
        Ok((seg, report))
    }

    fn observe_timestamp(&mut self, h: &BatchHeader) {
        if h.max_timestamp > self.max_timestamp || self.max_timestamp == i64::MIN {
            self.max_timestamp = h.max_timestamp;
            self.max_timestamp_rel = (h.base_offset - self.base_offset) as u32;
        }
    }

    /// Updates indexes and timestamps for a batch written at `pos`.
    fn note_batch(&mut self, pos: u64, h: &BatchHeader, config: &LogConfig) {
        self.observe_timestamp(h);
        if self.rolling_timestamp.is_none() {
            self.rolling_timestamp = Some(h.max_timestamp);
        }
        if pos > 0 && self.bytes_since_index >= u64::from(config.index_interval_bytes) {
            let entry = OffsetEntry {
                rel_offset: (h.base_offset - self.base_offset) as u32,
                rel_index: (h.raft_index - self.base_index) as u32,
                position: pos as u32,
            };
            if self.offset_index.push(entry) {
                self.push_time_entry();
                self.bytes_since_index = 0;
            }
        }
        self.bytes_since_index += u64::from(h.batch_len);
    }

    fn push_time_entry(&mut self) {
        let grows = self
            .time_index
            .last()
            .is_none_or(|t| self.max_timestamp > t.timestamp);
        if grows && self.max_timestamp != i64::MIN {
            let _full_is_fine = self.time_index.push(TimeEntry {
                timestamp: self.max_timestamp,
                rel_offset: self.max_timestamp_rel,
            });
        }
    }

    /// Writes the pending index entries of batches below `durable_offset`
    /// (everything fsynced) to the index maps.
    pub(crate) fn publish_durable(&mut self, durable_offset: u64) {
        let base = self.base_offset;
        let published = self
            .offset_index
            .publish_while(|e| base + u64::from(e.rel_offset) < durable_offset)
            .and_then(|()| {
                self.time_index
                    .publish_while(|e| base + u64::from(e.rel_offset) < durable_offset)
            });
        if let Err(e) = published {
            // Derived data: the entries stay in memory and are written by
            // the next fsync, or rebuilt by recovery.
            tracing::warn!(segment = %self.log_path.display(), error = %e, "could not write index entries; will retry");
        }
    }

    /// Whether a batch of `len` bytes with `h`'s offsets must go to a new
    /// segment (size, index space, 32-bit relative offsets, age).
    pub(crate) fn needs_roll(&self, len: u64, h: &BatchHeader, config: &LogConfig) -> bool {
        if self.size == 0 {
            return false;
        }
        let rel_overflow = h.last_offset() - self.base_offset > u64::from(u32::MAX)
            || self.next_index - self.base_index >= u64::from(u32::MAX);
        let too_old = match (config.segment_ms, self.rolling_timestamp) {
            (Some(ms), Some(first)) => h.max_timestamp.saturating_sub(first) >= ms,
            _ => false,
        };
        self.size + len > u64::from(config.segment_bytes)
            || self.offset_index.is_full()
            || self.time_index.is_full()
            || rel_overflow
            || too_old
    }

    /// Writes a verified batch at the end, with its broker-owned prefix
    /// replaced by `prefix`. On failure nothing is counted as written.
    pub(crate) fn append(
        &mut self,
        prefix: &[u8; STAMPED_LEN],
        batch: &[u8],
        h: &BatchHeader,
        config: &LogConfig,
        faults: Option<&Faults>,
    ) -> Result<()> {
        debug_assert!(self.active);
        let pos = self.size;
        let written = write_at(&self.file, &self.log_path, prefix, pos, faults).and_then(|()| {
            write_at(
                &self.file,
                &self.log_path,
                &batch[STAMPED_LEN..],
                pos + STAMPED_LEN as u64,
                faults,
            )
        });
        if let Err(e) = written {
            // Cut the partial batch so that no torn bytes linger after `size`.
            set_len(&self.file, &self.log_path, pos).map_err(|cleanup| StorageError::Failed {
                path: self.log_path.clone(),
                reason: format!("{e}; then could not cut the partial batch: {cleanup}"),
            })?;
            return Err(e);
        }
        self.note_batch(pos, h, config);
        self.size = pos + u64::from(h.batch_len);
        self.next_offset = h.next_offset();
        self.next_index = h.raft_index + 1;
        self.last_term = h.raft_term;
        self.start_writeback();
        Ok(())
    }

    /// Starts (without waiting for) writeback of every `WRITEBACK_STEP`
    /// bytes appended, so that the disk works while the appender goes on
    /// and the fsync at a roll or flush finds little left to write (what
    /// RocksDB calls `bytes_per_sync`). Only a hint: durability still comes
    /// from fsync alone.
    fn start_writeback(&mut self) {
        const WRITEBACK_STEP: u64 = 8 << 20;
        if self.size < self.writeback_started + WRITEBACK_STEP {
            return;
        }
        let (from, len) = (self.writeback_started, self.size - self.writeback_started);
        let (Ok(from_off), Ok(len_off)) =
            (libc::off64_t::try_from(from), libc::off64_t::try_from(len))
        else {
            return;
        };
        // SAFETY: a plain syscall on a descriptor we own; no memory is passed.
        let rc = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                from_off,
                len_off,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc != 0 {
            tracing::debug!(segment = %self.log_path.display(), error = %std::io::Error::last_os_error(),
                "sync_file_range failed; writeback is left to the kernel");
        }
        self.writeback_started = self.size;
    }

    /// Bytes at the start of the file that [`Segment::take_cached`] took
    /// out of the page cache.
    pub(crate) fn dropped_bytes(&self) -> u64 {
        self.uncached
    }

    /// Bytes of data the page cache may still hold (not yet dropped).
    pub(crate) fn cached_bytes(&self) -> u64 {
        self.size.saturating_sub(self.uncached)
    }

    /// Takes up to `max` of the oldest cached bytes out of the account and
    /// returns them as a range to drop ([`drop_cached_range`]): only data
    /// whose writeback was started (all of a sealed segment), so that the
    /// drop rarely has to wait for the disk.
    pub(crate) fn take_cached(&mut self, max: u64) -> Option<CachedRange> {
        let written = if self.active {
            self.writeback_started
        } else {
            self.size
        };
        let to = written.min(self.uncached.saturating_add(max));
        if to <= self.uncached {
            return None;
        }
        let range = CachedRange {
            file: self.file.clone(),
            map: self.map.clone(),
            path: self.log_path.clone(),
            from: self.uncached,
            to,
        };
        self.uncached = to;
        Some(range)
    }

    fn seal_indexes(&mut self) -> Result<()> {
        self.push_time_entry();
        self.offset_index.seal()?;
        self.time_index.seal()
    }

    /// Makes the segment immutable: trims the file to its data, records the
    /// final time index entry, fsyncs everything.
    pub(crate) fn seal(&mut self, faults: Option<&Faults>) -> Result<()> {
        self.seal_start()?;
        self.seal_finish(faults)
    }

    /// The part of [`Segment::seal`] a roll does: no more appends, the file
    /// trimmed to its data. Its bytes and indexes are made durable later
    /// ([`Segment::seal_finish`], or the steps of `Log::finish_seal`).
    pub(crate) fn seal_start(&mut self) -> Result<()> {
        set_len(&self.file, &self.log_path, self.size)?;
        self.active = false;
        Ok(())
    }

    /// The rest of [`Segment::seal`]: fsyncs the data, then writes, fsyncs
    /// and maps the indexes.
    pub(crate) fn seal_finish(&mut self, faults: Option<&Faults>) -> Result<()> {
        sync_data(&self.file, &self.log_path, faults)?;
        self.durable_size = self.size;
        self.seal_indexes()
    }

    /// After the data of a sealed segment is durable: writes every index
    /// entry and returns handles to fsync both index files with, outside
    /// the log's lock, before [`Segment::map_indexes`].
    pub(crate) fn write_indexes(&mut self) -> Result<[(File, PathBuf); 2]> {
        self.push_time_entry();
        let offsets = self.offset_index.finish_writes()?;
        let times = self.time_index.finish_writes()?;
        Ok([
            (offsets, self.offset_index.path().to_owned()),
            (times, self.time_index.path().to_owned()),
        ])
    }

    /// Maps the indexes written by [`Segment::write_indexes`] once fsynced.
    pub(crate) fn map_indexes(&mut self) -> Result<()> {
        self.offset_index.map_sealed()?;
        self.time_index.map_sealed()
    }

    /// Reopens a sealed segment for appends at `size` (before truncation).
    pub(crate) fn reactivate(&mut self, dir: &Path, config: &LogConfig) -> Result<()> {
        let capacity = u64::from(config.segment_bytes).max(self.size);
        self.map = Arc::new(map_file(&self.file, &self.log_path, capacity)?);
        let entries = (self.offset_index.len(), self.time_index.len());
        self.offset_index = IndexFile::open_active(
            &segment_path(dir, self.base_offset, INDEX_EXT),
            config.index_max_bytes,
        )?;
        self.time_index = IndexFile::open_active(
            &segment_path(dir, self.base_offset, TIME_INDEX_EXT),
            config.index_max_bytes,
        )?;
        self.offset_index.truncate_to(entries.0)?;
        self.time_index.truncate_to(entries.1)?;
        self.active = true;
        Ok(())
    }

    /// Cuts the segment so that it ends at byte `pos`, where the batch with
    /// `next_offset`/`next_index` started. The caller makes it active.
    pub(crate) fn truncate_at(
        &mut self,
        pos: u64,
        next_offset: u64,
        next_index: u64,
        last_term: u64,
    ) -> Result<()> {
        let rel = next_offset.saturating_sub(self.base_offset);
        let keep = self
            .offset_index
            .floor(rel.saturating_sub(1), |e| u64::from(e.rel_offset))
            .map_or(0, |i| i + 1);
        self.offset_index
            .truncate_to(if pos == 0 { 0 } else { keep })?;
        let keep_t = self
            .time_index
            .floor(rel.saturating_sub(1), |e| u64::from(e.rel_offset))
            .map_or(0, |i| i + 1);
        self.time_index
            .truncate_to(if pos == 0 { 0 } else { keep_t })?;
        // Physically cut so that a crash can never bring the removed
        // batches back.
        set_len(&self.file, &self.log_path, pos)?;
        self.size = pos;
        self.durable_size = self.durable_size.min(pos);
        self.writeback_started = self.writeback_started.min(pos);
        self.uncached = self.uncached.min(pos);
        self.next_offset = next_offset;
        self.next_index = next_index;
        self.last_term = last_term;
        // Recompute the per-segment running values from the indexes.
        self.max_timestamp = i64::MIN;
        self.max_timestamp_rel = 0;
        if let Some(t) = self.time_index.last() {
            self.max_timestamp = t.timestamp;
            self.max_timestamp_rel = t.rel_offset;
        }
        let mut scan = self
            .offset_index
            .last()
            .map_or(0, |e| u64::from(e.position));
        self.bytes_since_index = 0;
        self.rolling_timestamp = None;
        if pos > 0 {
            self.rolling_timestamp = self.header_at(0).ok().map(|h| h.max_timestamp);
        }
        while scan < pos {
            let h = self.header_at(scan)?;
            self.observe_timestamp(&h);
            self.bytes_since_index += u64::from(h.batch_len);
            scan += u64::from(h.batch_len);
        }
        Ok(())
    }

    /// Parses the header of the batch at `pos` (no CRC check) and checks
    /// that the whole batch lies within the segment.
    pub(crate) fn header_at(&self, pos: u64) -> Result<BatchHeader> {
        let data = &self.map[..self.size as usize];
        let h = BatchHeader::parse(data.get(pos as usize..).unwrap_or(&[]))
            .map_err(|e| StorageError::corrupt(&self.log_path, pos, e))?;
        if pos + u64::from(h.batch_len) > self.size {
            return Err(StorageError::corrupt(
                &self.log_path,
                pos,
                format!(
                    "batch of {} bytes runs past the end of the segment ({} bytes)",
                    h.batch_len, self.size
                ),
            ));
        }
        Ok(h)
    }

    /// Position to start scanning from for the batch holding `offset`.
    pub(crate) fn scan_start_for_offset(&self, offset: u64) -> u64 {
        let rel = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        self.offset_index
            .floor(rel, |e| e.rel_offset)
            .map_or(0, |i| self.indexed_position(i))
    }

    /// Position to start scanning from for the batch with Raft index `index`.
    pub(crate) fn scan_start_for_index(&self, index: u64) -> u64 {
        let rel = index
            .saturating_sub(self.base_index)
            .min(u64::from(u32::MAX)) as u32;
        self.offset_index
            .floor(rel, |e| e.rel_index)
            .map_or(0, |i| self.indexed_position(i))
    }

    /// Byte position named by offset index entry `i`, if the batch there
    /// carries the entry's offset and Raft index. Indexes are derived data
    /// that a damaged disk may have changed: a wrong entry sends the caller
    /// to the start of the segment instead (slower, never wrong).
    fn indexed_position(&self, i: usize) -> u64 {
        let e = self.offset_index.entry(i);
        let pos = u64::from(e.position);
        match self.header_at(pos) {
            Ok(h)
                if h.base_offset == self.base_offset + u64::from(e.rel_offset)
                    && h.raft_index == self.base_index + u64::from(e.rel_index) =>
            {
                pos
            }
            _ => {
                tracing::warn!(segment = %self.log_path.display(), entry = i, ?e,
                    "offset index entry does not match the log; scanning from the segment start");
                0
            }
        }
    }

    /// Whether time index entry `t` matches the log: the batch at its
    /// relative offset is where the segment reached its timestamp.
    fn time_entry_matches(&self, t: &TimeEntry) -> bool {
        let offset = self.base_offset + u64::from(t.rel_offset);
        let mut pos = self.scan_start_for_offset(offset);
        while let Ok(h) = self.header_at(pos) {
            if h.base_offset >= offset {
                return h.base_offset == offset && h.max_timestamp == t.timestamp;
            }
            pos += u64::from(h.batch_len);
        }
        false
    }

    /// Position to start scanning from for the first offset whose
    /// timestamp is `>= ts`: after every batch known to be older.
    pub(crate) fn scan_start_for_timestamp(&self, ts: i64) -> u64 {
        match self.time_index.floor(ts.saturating_sub(1), |t| t.timestamp) {
            Some(i) => {
                let t = self.time_index.entry(i);
                if self.time_entry_matches(&t) {
                    self.scan_start_for_offset(self.base_offset + u64::from(t.rel_offset))
                } else {
                    tracing::warn!(segment = %self.log_path.display(), entry = i, ?t,
                        "time index entry does not match the log; scanning from the segment start");
                    0
                }
            }
            None => 0,
        }
    }

    /// A snapshot of what a reader needs, taken under the log's lock.
    pub(crate) fn reader(&self) -> SegmentReader {
        SegmentReader {
            map: self.map.clone(),
            size: self.size,
            path: self.log_path.clone(),
            base_offset: self.base_offset,
            base_index: self.base_index,
        }
    }

    /// Removes the segment's files (after it was dropped from the log).
    pub(crate) fn delete_files(dir: &Path, base_offset: u64) -> Result<()> {
        for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT] {
            let path = segment_path(dir, base_offset, ext);
            let mut deleted = path.clone().into_os_string();
            deleted.push(crate::filename::DELETED_SUFFIX);
            match fs::rename(&path, &deleted) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io("rename", path, e)),
            }
            fs::remove_file(&deleted)
                .map_err(|e| StorageError::io("unlink", PathBuf::from(&deleted), e))?;
        }
        Ok(())
    }
}

/// Lock-free read access to a segment's bytes `[0, size)`.
pub(crate) struct SegmentReader {
    map: Arc<Mmap>,
    pub(crate) size: u64,
    pub(crate) path: PathBuf,
    /// Offset and Raft index the batch at position 0 must carry.
    pub(crate) base_offset: u64,
    pub(crate) base_index: u64,
}

impl SegmentReader {
    pub(crate) fn data(&self) -> &[u8] {
        &self.map[..self.size as usize]
    }

    /// Verifies the batch at `pos` and returns its header.
    pub(crate) fn verified(&self, pos: u64) -> Result<BatchHeader> {
        let rest = self.data().get(pos as usize..).unwrap_or(&[]);
        BatchView::new(rest)
            .map(|v| *v.header())
            .map_err(|e| StorageError::corrupt(&self.path, pos, e))
    }

    /// Parses the header at `pos` without checking the CRC.
    pub(crate) fn header(&self, pos: u64) -> Result<BatchHeader> {
        let rest = self.data().get(pos as usize..).unwrap_or(&[]);
        let h = BatchHeader::parse(rest).map_err(|e| StorageError::corrupt(&self.path, pos, e))?;
        if pos + u64::from(h.batch_len) > self.size {
            return Err(StorageError::corrupt(
                &self.path,
                pos,
                "batch runs past the end of the segment",
            ));
        }
        Ok(h)
    }

    /// Drops the pages of `[0, to)` from this process's page tables
    /// (`MADV_DONTNEED` on the read map). The page cache keeps them and the
    /// next read faults them back in; what changes is that pages a
    /// consumer read once no longer stay mapped into the broker, where they
    /// make reclaim slow under memory pressure (benches/RESULTS.md, "Where
    /// the misses come from"). Best effort: a failure only leaves them mapped.
    pub(crate) fn release_mapped_pages(&self, to: u64) {
        unmap_pages(&self.map, &self.path, 0, to.min(self.size));
    }

    /// Starts reading `[from, to)` of the map from disk in the background
    /// (`MADV_WILLNEED`): one large read instead of a small one per page
    /// fault. Best effort.
    pub(crate) fn will_need(&self, from: u64, to: u64) {
        self.advise(Advice::WillNeed, from, to);
    }

    /// Maps `[from, to)` into the page tables now, waiting for whatever is
    /// not in memory (`MADV_POPULATE_READ`), so that whoever copies the
    /// bytes later (a socket write on an async thread) does not wait for
    /// the disk. Best effort: without it, the copy faults the pages in.
    pub(crate) fn populate(&self, from: u64, to: u64) {
        self.advise(Advice::PopulateRead, from, to);
    }

    fn advise(&self, advice: Advice, from: u64, to: u64) {
        let Some((at, len)) = map_range(&self.map, from, to) else {
            return;
        };
        if let Err(e) = self.map.advise_range(advice, at, len) {
            tracing::debug!(path = %self.path.display(), error = %e, ?advice, "madvise failed");
        }
    }

    /// Zero-copy bytes `[from, to)` of the segment.
    pub(crate) fn slice(&self, from: u64, to: u64) -> Bytes {
        Bytes::from_owner(MapOwner(self.map.clone())).slice(from as usize..to as usize)
    }
}

/// Bytes `[from, to)` of a segment file whose pages are to leave the page
/// cache ([`Segment::take_cached`]).
pub(crate) struct CachedRange {
    file: Arc<File>,
    map: Arc<Mmap>,
    path: PathBuf,
    from: u64,
    to: u64,
}

/// `[from, to)` cut to the map, as (offset, length); `None` when empty.
fn map_range(map: &Mmap, from: u64, to: u64) -> Option<(usize, usize)> {
    let to = usize::try_from(to).unwrap_or(usize::MAX).min(map.len());
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(to);
    (from < to).then_some((from, to - from))
}

/// `MADV_DONTNEED` on `[from, to)` of a read map (`path` names it in the
/// log): the pages leave this process's page tables, not the page cache.
fn unmap_pages(map: &Mmap, path: &Path, from: u64, to: u64) {
    let Some((at, len)) = map_range(map, from, to) else {
        return;
    };
    // SAFETY: the map is a shared, read-only mapping of a file. On such a
    // mapping MADV_DONTNEED only removes page table entries: a later access
    // (also by a reader holding `Bytes` into the map) reads the same file
    // contents back from the page cache. It never zeroes data, which is
    // what makes the advice unsafe on private mappings.
    if let Err(e) = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, at, len) } {
        tracing::debug!(path = %path.display(), error = %e, "madvise(DONTNEED) failed");
    }
}

impl CachedRange {
    /// Length of the range in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.to - self.from
    }

    /// Writes the range's dirty pages back (waiting for it) and drops its
    /// pages from the page cache. Only a hint to the kernel: pages that are
    /// mapped, or dirtied again meanwhile, stay. Never changes the file.
    pub(crate) fn drop_pages(&self) {
        let (Ok(from), Ok(len)) = (
            libc::off64_t::try_from(self.from),
            libc::off64_t::try_from(self.len()),
        ) else {
            return;
        };
        // Mapped pages cannot leave the page cache: unmap them first.
        unmap_pages(&self.map, &self.path, self.from, self.to);
        let fd = self.file.as_raw_fd();
        // SAFETY: plain syscalls on a descriptor we own; no memory is passed.
        let rc = unsafe {
            libc::sync_file_range(
                fd,
                from,
                len,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        };
        if rc != 0 {
            tracing::debug!(segment = %self.path.display(), error = %std::io::Error::last_os_error(),
                "sync_file_range before dropping cached pages failed");
        }
        // SAFETY: as above.
        let rc = unsafe { libc::posix_fadvise(fd, from, len, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            tracing::debug!(segment = %self.path.display(), error = %std::io::Error::from_raw_os_error(rc),
                "posix_fadvise(DONTNEED) failed; the kernel keeps the pages");
        }
    }
}

fn file_len(file: &File, path: &Path) -> Result<u64> {
    Ok(file
        .metadata()
        .map_err(|e| StorageError::io("stat", path, e))?
        .len())
}
