//! `partition.state`: the small state file beside the segments.
//!
//! Byte layout (little-endian), written atomically (temp, fsync, rename):
//!
//! | bytes | field |
//! |-------|-------|
//! | 0..4  | magic `RNPS` |
//! | 4     | version (1) |
//! | 5..13 | `log_start_offset` u64 |
//! | 13..21| `compacted_index` u64: Raft index of the last entry removed from the front (0 if none) |
//! | 21..29| `compacted_term` u64: its term |
//! | 29..33| `run_count` u32 |
//! | ..    | `run_count` × (`term` u64, `start_index` u64): first Raft index of each term |
//! | (v2)  | 1 byte of flags: bit 0 = a reset is pending (see below) |
//! | last 4| CRC-32 of every byte before it |
//!
//! Version 2 differs only by the flags byte, and is written only while
//! [`crate::Log::reset_to`] runs: the state then already describes the reset
//! log (start offset, `(index, term)` before its first entry, no runs) while
//! old segment files may still lie beside it, and opening deletes every
//! segment file before starting the new log. Otherwise version 1 is written.
//!
//! The term runs let `term(i)` be answered from memory for any stored index
//! without reading segments (Raft needs it to never fail). A run is persisted
//! before the first batch of its term is written; retention persists the
//! compacted `(index, term)` before unlinking segments (RAFT.md, trap 2).

use std::path::Path;

use crate::durable::write_atomically;
use crate::error::{Result, StorageError};

/// File name of the state file in a partition directory.
pub const STATE_FILE: &str = "partition.state";

const MAGIC: &[u8; 4] = b"RNPS";
const VERSION: u8 = 1;
/// Version 1 plus a flags byte, written only while a reset is pending.
const VERSION_FLAGS: u8 = 2;
const FLAG_RESET_PENDING: u8 = 1;
const FIXED_LEN: usize = 33;

/// Contents of `partition.state`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionState {
    /// First offset consumers may read (advanced by retention and delete-records).
    pub log_start_offset: u64,
    /// Raft index of the last entry removed from the front (0 if none).
    pub compacted_index: u64,
    /// Term of that entry (0 if none).
    pub compacted_term: u64,
    /// `(term, first raft index of that term)`, both strictly increasing.
    pub term_runs: Vec<(u64, u64)>,
    /// A [`crate::Log::reset_to`] was begun and may not have finished: every
    /// segment file in the directory predates this state and is deleted at
    /// open (a crash mid-reset yields the reset log, never a mix).
    pub reset_pending: bool,
}

impl PartitionState {
    /// Encodes the state with its CRC.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + 16 * self.term_runs.len() + 5);
        out.extend_from_slice(MAGIC);
        out.push(if self.reset_pending {
            VERSION_FLAGS
        } else {
            VERSION
        });
        out.extend_from_slice(&self.log_start_offset.to_le_bytes());
        out.extend_from_slice(&self.compacted_index.to_le_bytes());
        out.extend_from_slice(&self.compacted_term.to_le_bytes());
        out.extend_from_slice(&(self.term_runs.len() as u32).to_le_bytes());
        for (term, start) in &self.term_runs {
            out.extend_from_slice(&term.to_le_bytes());
            out.extend_from_slice(&start.to_le_bytes());
        }
        if self.reset_pending {
            out.push(FLAG_RESET_PENDING);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and verifies; the error says what is wrong.
    pub fn decode(buf: &[u8]) -> Result<Self, &'static str> {
        if buf.len() < FIXED_LEN + 4 {
            return Err("truncated");
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(body) != crc {
            return Err("crc mismatch");
        }
        if &body[0..4] != MAGIC {
            return Err("bad magic");
        }
        let flags_len = match body[4] {
            VERSION => 0,
            VERSION_FLAGS => 1,
            _ => return Err("unsupported version"),
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let count = u32::from_le_bytes([body[29], body[30], body[31], body[32]]) as usize;
        if body.len() != FIXED_LEN + 16 * count + flags_len {
            return Err("length does not match the run count");
        }
        let flags = if flags_len == 1 {
            body[body.len() - 1]
        } else {
            0
        };
        if flags & !FLAG_RESET_PENDING != 0 {
            return Err("unknown flags");
        }
        let term_runs: Vec<(u64, u64)> = (0..count)
            .map(|i| (u64_at(FIXED_LEN + 16 * i), u64_at(FIXED_LEN + 16 * i + 8)))
            .collect();
        if term_runs
            .windows(2)
            .any(|w| w[1].0 <= w[0].0 || w[1].1 <= w[0].1)
        {
            return Err("term runs are not increasing");
        }
        Ok(PartitionState {
            log_start_offset: u64_at(5),
            compacted_index: u64_at(13),
            compacted_term: u64_at(21),
            term_runs,
            reset_pending: flags & FLAG_RESET_PENDING != 0,
        })
    }

    /// Reads the state file: `Ok(None)` if absent, `Err(Corrupt)` if damaged.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(buf) => PartitionState::decode(&buf)
                .map(Some)
                .map_err(|reason| StorageError::corrupt(&path, 0, reason)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("read", path, e)),
        }
    }

    /// Writes the state file atomically.
    pub fn store(&self, dir: &Path) -> Result<()> {
        write_atomically(&dir.join(STATE_FILE), &self.encode())
    }

    /// Term of Raft index `i`, from the runs (`None` before the first run).
    pub fn term_of(&self, i: u64) -> Option<u64> {
        let at = self.term_runs.partition_point(|(_, start)| *start <= i);
        at.checked_sub(1).map(|k| self.term_runs[k].0)
    }

    /// Drops runs that start above `last_index`.
    pub fn truncate_runs(&mut self, last_index: u64) {
        self.term_runs.retain(|(_, start)| *start <= last_index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(start in any::<u64>(), ci in any::<u64>(), ct in any::<u64>(), n in 0usize..20, reset in any::<bool>()) {
            let s = PartitionState {
                log_start_offset: start,
                compacted_index: ci,
                compacted_term: ct,
                term_runs: (0..n as u64).map(|i| (i * 2 + 1, i * 10 + 1)).collect(),
                reset_pending: reset,
            };
            prop_assert_eq!(s.encode()[4], if reset { 2 } else { 1 });
            prop_assert_eq!(PartitionState::decode(&s.encode()), Ok(s));
        }

        #[test]
        fn flipped_or_truncated_is_rejected(flip in 0usize..60, cut in 0usize..60) {
            let s = PartitionState { log_start_offset: 7, compacted_index: 3, compacted_term: 2, term_runs: vec![(2, 1), (5, 9)], reset_pending: flip % 2 == 0 };
            let good = s.encode();
            let mut bad = good.clone();
            let at = flip % bad.len();
            bad[at] ^= 0x40;
            prop_assert!(PartitionState::decode(&bad).is_err());
            let cut = cut % good.len();
            prop_assert!(PartitionState::decode(&good[..cut]).is_err());
        }
    }

    #[test]
    fn term_lookup() {
        let s = PartitionState {
            term_runs: vec![(1, 1), (3, 10), (4, 20)],
            ..Default::default()
        };
        let cases = [
            (0, None),
            (1, Some(1)),
            (9, Some(1)),
            (10, Some(3)),
            (19, Some(3)),
            (20, Some(4)),
            (999, Some(4)),
        ];
        for (i, (index, term)) in cases.iter().enumerate() {
            assert_eq!(s.term_of(*index), *term, "case {i}");
        }
    }
}
