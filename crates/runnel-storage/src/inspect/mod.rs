//! Read-only inspection of a partition directory, for operator tools
//! (`runnel log dump`, `runnel log verify`).
//!
//! Owns: listing the files of a partition directory, walking the batches
//! of a `.log` file, decoding index entries, and checking a whole partition
//! for damage ([`verify()`]). Does not own: repairing anything. That is
//! [`crate::Log::open`]'s job (it cuts a torn tail and any zeros after the
//! active segment's data, rebuilds indexes, removes leftovers and rewrites
//! `partition.state`).
//!
//! # Read-only
//!
//! Nothing here creates, modifies or removes a file: files are opened
//! read-only and read with positioned reads. No memory maps are used, so a
//! broker truncating a segment while a tool reads it cannot fault the tool;
//! the tool sees a shorter file instead. Results on a live partition are a
//! best-effort snapshot: run [`verify()`] with the broker stopped to be sure.
//!
//! # Untrusted input
//!
//! Every byte read is untrusted: no input makes these functions panic or
//! allocate more than the size of the file being read. Damage is reported
//! as data ([`Problem`], [`DataEnd::Unreadable`], [`CrcCheck::Mismatch`]);
//! the `Err` case of the functions is kept for I/O failures.
//!
//! # Parts
//!
//! - `files`: listing a partition directory ([`list`]), raw index entries,
//!   and [`LogFile`], a `.log` file opened read-only with positioned reads;
//! - `walk`: walking a `.log` file's batches ([`LogFile::batches`],
//!   [`DataEnd`]) and finding where to start for an offset ([`scan_start`]);
//! - `problem`: what [`verify()`] reports ([`VerifyReport`], [`Problem`],
//!   [`Note`]) and the hint each problem gives operators;
//! - `verify`: the checks themselves;
//! - `damage` (tests only): damaging a partition on purpose and proving a
//!   tool left it alone, shared with `tests/log_tools.rs` through `#[path]`.

mod files;
mod problem;
mod verify;
mod walk;

#[cfg(test)]
mod damage;
#[cfg(test)]
mod tests;

pub use files::{
    LogFile, PartitionFiles, SegmentFiles, decode_offset_entry, decode_time_entry, index_entries,
    list,
};
pub use problem::{EntryProblem, Note, NoteKind, Place, Problem, ProblemKind, VerifyReport};
pub use verify::verify;
pub use walk::{Batches, CrcCheck, DataEnd, StoredBatch, Unreadable, scan_start};
