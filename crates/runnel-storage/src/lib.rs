//! Runnel's partition log: the storage engine every partition replica sits on.
//!
//! Owns: segment files on disk (`.log` data, sparse `.index`, `.timeindex`),
//! appends with durable group commit, reads by offset, by Raft index and by
//! timestamp, recovery after a crash, retention, truncation, and the small
//! `partition.state` file that lets Raft ask `term(i)` for any stored entry.
//! Does not own: networking, Raft itself (runnel-raft drives this log
//! through [`Log::append_entry`], [`Log::entries`], [`Log::term`],
//! [`Log::truncate_from_index`] and, to install a snapshot,
//! [`Log::reset_to`]), or the batch byte layout (runnel-batch).
//!
//! The API is plain synchronous Rust: no async runtime, no background
//! threads, no clock reads. Time-based work takes the time as an argument
//! ([`Log::tick`], [`Log::apply_retention`]).
//!
//! # On-disk layout
//!
//! ```text
//! <partition-dir>/
//!   00000000000000000000.log        batches, back to back (runnel-batch format)
//!   00000000000000000000.index      sparse: rel offset, rel raft index -> byte position
//!   00000000000000000000.timeindex  sparse: max timestamp so far -> rel offset
//!   00000000000000052311.log        next segment, named by its base offset
//!   ...
//!   partition.state                 log start offset, compacted (index, term), term runs
//! ```
//!
//! # Durability rules
//!
//! - A new segment file is created, fsynced, then its directory fsynced.
//! - A roll does not wait for the sealed segment's fsync (it would stall
//!   every appender and reader behind the log's lock for as long as the
//!   segment's writeback takes): the next flush fsyncs it outside the lock,
//!   or the next roll if none came first, whatever the flush policy. At
//!   most one seal is unfinished at a time, so recovery only ever scans
//!   the tails of the last two segments. [`Log::durable_offset`] stays
//!   below a sealed segment until it is durable: an acknowledgement under
//!   [`FlushPolicy::Always`] still follows the durability of its bytes and
//!   of all bytes before them.
//! - A failed append cuts back to where it began; a failed fsync fails the
//!   log (it refuses writes until reopened: never retried, never ignored).
//! - Small state is written to a temp file, fsynced and renamed.
//! - Deletions rename to `*.deleted` first; startup removes leftovers.
//! - Whatever removes entries from the front (retention, [`Log::reset_to`])
//!   persists the new first index and the term before it in
//!   `partition.state` before unlinking anything; a reset flags the state
//!   until it is complete, and open finishes a flagged reset.
//!
//! # Write path
//!
//! The active segment grows by `pwrite` (the batch as received, its 28-byte
//! broker prefix stamped separately so the payload is never copied or
//! mutated) and is read through a shared read-only map that reaches past
//! the end of the file; only written bytes are ever read. Index entries are
//! kept in memory and appended with `pwrite` after the data they point at
//! is fsynced. Nothing is written through a map and nothing is
//! preallocated, so a full disk is an `ENOSPC` error, never a `SIGBUS`, and
//! a broker with thousands of partitions reserves no disk it does not use
//! (`pwrite` vs. stores into a map, measured: `benches/RESULTS.md`).

#![deny(missing_docs)]

mod config;
mod durable;
mod error;
pub mod filename;
mod index;
pub mod inspect;
mod log;
mod segment;
mod state;

pub use config::{FlushPolicy, LogConfig, RecoveryPolicy};
pub use durable::Faults;
pub use error::{Result, StorageError};
pub use index::{ENTRY_LEN, OffsetEntry, TimeEntry};
pub use log::{AppendInfo, Log, OpenReport, ReadBatches, RetentionReport, SegmentSummary};
pub use segment::RecoveryReport;
pub use state::{PartitionState, STATE_FILE};
