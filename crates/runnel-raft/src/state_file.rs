//! `raft.state`: Raft's hard state, conf state and applied index, beside the
//! partition's segments.
//!
//! # Byte layout
//!
//! The file is two fixed slots of [`SLOT_LEN`] bytes. Each slot holds one
//! record (little-endian):
//!
//! | bytes   | field |
//! |---------|-------|
//! | 0..4    | magic `RNRF` |
//! | 4       | version (1) |
//! | 5..13   | `seq` u64: record sequence number, +1 per write |
//! | 13..21  | `term` u64 (HardState) |
//! | 21..29  | `vote` u64 (HardState) |
//! | 29..37  | `commit` u64 (HardState) |
//! | 37..45  | `applied` u64: last applied index, `<= commit` (RAFT.md trap 12) |
//! | 45      | `auto_leave` u8 (ConfState) |
//! | 46..62  | counts u32 ×4: voters, learners, voters_outgoing, learners_next |
//! | 62..    | the node ids, u64 each, in that order |
//! | next 4  | CRC-32 of every byte of the record before it |
//!
//! The rest of the slot is zero.
//!
//! # Atomicity (RAFT.md trap 11)
//!
//! A record is written in place with `pwrite`, always into the slot that
//! does *not* hold the last fsynced record; open takes the valid record with
//! the highest `seq`. A torn or lost write therefore falls back to the last
//! durable record, never to a mix, without a rename or a directory fsync
//! per update. Writes between two fsyncs all go to the same slot; the slots
//! swap roles only after an fsync. The file itself is created by writing a
//! temp file, fsyncing it, renaming it and fsyncing the directory.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use raft::eraftpb::{ConfState, HardState};

use crate::error::RaftError;

/// File name of the Raft state file in a partition directory.
pub const RAFT_STATE_FILE: &str = "raft.state";

/// Size of one record slot; the file is two of them.
pub(crate) const SLOT_LEN: usize = 4096;

const MAGIC: &[u8; 4] = b"RNRF";
const VERSION: u8 = 1;
const FIXED_LEN: usize = 62;
/// Most node ids a conf state can hold in one slot.
const MAX_IDS: usize = (SLOT_LEN - FIXED_LEN - 4) / 8;

/// What the state file holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RaftState {
    pub(crate) hard_state: HardState,
    pub(crate) conf_state: ConfState,
    pub(crate) applied: u64,
}

impl RaftState {
    /// Encodes one record with sequence number `seq`.
    fn encode(&self, seq: u64) -> Result<Vec<u8>, String> {
        let cs = &self.conf_state;
        let lists = [
            &cs.voters,
            &cs.learners,
            &cs.voters_outgoing,
            &cs.learners_next,
        ];
        let ids: usize = lists.iter().map(|l| l.len()).sum();
        if ids > MAX_IDS {
            return Err(format!(
                "conf state of {ids} node ids exceeds the {MAX_IDS} a record holds"
            ));
        }
        let hs = &self.hard_state;
        let mut out = Vec::with_capacity(FIXED_LEN + 8 * ids + 4);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        for v in [seq, hs.term, hs.vote, hs.commit, self.applied] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(u8::from(cs.auto_leave));
        for l in lists {
            out.extend_from_slice(&(l.len() as u32).to_le_bytes());
        }
        for l in lists {
            for id in l.iter() {
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Decodes a slot: `(seq, state)`, or why it is not a valid record.
    fn decode(slot: &[u8]) -> Result<(u64, RaftState), &'static str> {
        if slot.len() < FIXED_LEN + 4 {
            return Err("truncated");
        }
        if &slot[0..4] != MAGIC {
            return Err("bad magic");
        }
        if slot[4] != VERSION {
            return Err("unsupported version");
        }
        let u64_at = |p: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&slot[p..p + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |p: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&slot[p..p + 4]);
            u32::from_le_bytes(b) as usize
        };
        let counts = [u32_at(46), u32_at(50), u32_at(54), u32_at(58)];
        let ids: usize = counts.iter().sum();
        if ids > MAX_IDS {
            return Err("too many node ids");
        }
        let end = FIXED_LEN + 8 * ids;
        if slot.len() < end + 4 {
            return Err("truncated");
        }
        let stored = u32_at(end) as u32;
        if crc32fast::hash(&slot[..end]) != stored {
            return Err("crc mismatch");
        }
        let mut p = FIXED_LEN;
        let mut take = |n: usize| {
            let v: Vec<u64> = (0..n).map(|k| u64_at(p + 8 * k)).collect();
            p += 8 * n;
            v
        };
        let conf_state = ConfState {
            voters: take(counts[0]),
            learners: take(counts[1]),
            voters_outgoing: take(counts[2]),
            learners_next: take(counts[3]),
            auto_leave: slot[45] != 0,
            ..Default::default()
        };
        let hard_state = HardState {
            term: u64_at(13),
            vote: u64_at(21),
            commit: u64_at(29),
            ..Default::default()
        };
        Ok((
            u64_at(5),
            RaftState {
                hard_state,
                conf_state,
                applied: u64_at(37),
            },
        ))
    }
}

/// The open state file. Not thread-safe: owned by one group's storage.
#[derive(Debug)]
pub(crate) struct StateFile {
    path: PathBuf,
    file: File,
    /// Slot holding the last fsynced record.
    durable_slot: u64,
    /// Sequence number of the last record written.
    seq: u64,
    /// A record was written since the last fsync (into `1 - durable_slot`).
    unsynced: bool,
}

impl StateFile {
    /// Creates the file in `dir` holding `state`, durably (temp, fsync,
    /// rename, directory fsync). Fails if it exists.
    pub(crate) fn create(dir: &Path, state: &RaftState) -> Result<StateFile, RaftError> {
        let path = dir.join(RAFT_STATE_FILE);
        if path.exists() {
            return Err(RaftError::corrupt(&path, "raft state file already exists"));
        }
        let tmp = dir.join(format!("{RAFT_STATE_FILE}.tmp"));
        let record = state
            .encode(1)
            .map_err(|reason| RaftError::corrupt(&path, reason))?;
        let mut image = vec![0u8; 2 * SLOT_LEN];
        image[..record.len()].copy_from_slice(&record);
        {
            let f = File::create(&tmp).map_err(|e| RaftError::io("create", &tmp, e))?;
            f.write_all_at(&image, 0)
                .map_err(|e| RaftError::io("write", &tmp, e))?;
            f.sync_all().map_err(|e| RaftError::io("fsync", &tmp, e))?;
        }
        fs::rename(&tmp, &path).map_err(|e| RaftError::io("rename", &tmp, e))?;
        sync_dir(dir)?;
        let file = open_rw(&path)?;
        Ok(StateFile {
            path,
            file,
            durable_slot: 0,
            seq: 1,
            unsynced: false,
        })
    }

    /// Opens the file in `dir`: `None` if there is none, an error if
    /// neither slot holds a valid record.
    pub(crate) fn open(dir: &Path) -> Result<Option<(StateFile, RaftState)>, RaftError> {
        let path = dir.join(RAFT_STATE_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RaftError::io("read", &path, e)),
        };
        let mut best: Option<(u64, u64, RaftState)> = None;
        let mut reasons = Vec::new();
        for slot in 0..2u64 {
            let from = (slot as usize * SLOT_LEN).min(bytes.len());
            let to = (from + SLOT_LEN).min(bytes.len());
            match RaftState::decode(&bytes[from..to]) {
                Ok((seq, state)) => {
                    if best.as_ref().is_none_or(|b| seq > b.0) {
                        best = Some((seq, slot, state));
                    }
                }
                Err(r) => reasons.push(format!("slot {slot}: {r}")),
            }
        }
        let Some((seq, slot, state)) = best else {
            return Err(RaftError::corrupt(
                &path,
                format!("no valid record ({})", reasons.join(", ")),
            ));
        };
        let file = open_rw(&path)?;
        Ok(Some((
            StateFile {
                path,
                file,
                durable_slot: slot,
                seq,
                unsynced: false,
            },
            state,
        )))
    }

    /// Writes `state` as the newest record, without fsync: a crash before
    /// [`StateFile::sync`] may bring back the last synced record instead.
    pub(crate) fn write(&mut self, state: &RaftState) -> Result<(), RaftError> {
        let record = state
            .encode(self.seq + 1)
            .map_err(|reason| RaftError::corrupt(&self.path, reason))?;
        let slot = 1 - self.durable_slot;
        self.file
            .write_all_at(&record, slot * SLOT_LEN as u64)
            .map_err(|e| RaftError::io("write", &self.path, e))?;
        self.seq += 1;
        self.unsynced = true;
        Ok(())
    }

    /// Makes the last written record durable.
    pub(crate) fn sync(&mut self) -> Result<(), RaftError> {
        if !self.unsynced {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| RaftError::io("fsync", &self.path, e))?;
        self.durable_slot = 1 - self.durable_slot;
        self.unsynced = false;
        Ok(())
    }

    /// Simulates a crash (tests): the unsynced record, if any, is lost —
    /// its slot is zeroed, as a torn write that never reached the disk.
    #[cfg(test)]
    pub(crate) fn crash(&mut self, keep_unsynced: bool) -> Result<(), RaftError> {
        if self.unsynced && !keep_unsynced {
            let slot = 1 - self.durable_slot;
            self.file
                .write_all_at(&[0u8; SLOT_LEN], slot * SLOT_LEN as u64)
                .map_err(|e| RaftError::io("write", &self.path, e))?;
        }
        self.unsynced = false;
        Ok(())
    }
}

fn open_rw(path: &Path) -> Result<File, RaftError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| RaftError::io("open", path, e))
}

fn sync_dir(dir: &Path) -> Result<(), RaftError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RaftError::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state(term: u64, commit: u64, voters: Vec<u64>) -> RaftState {
        RaftState {
            hard_state: HardState {
                term,
                vote: 2,
                commit,
                ..Default::default()
            },
            conf_state: ConfState {
                voters,
                ..Default::default()
            },
            applied: commit,
        }
    }

    proptest! {
        #[test]
        fn record_round_trips(term in any::<u64>(), vote in any::<u64>(), commit in any::<u64>(),
                              applied in any::<u64>(), seq in any::<u64>(), auto_leave in any::<bool>(),
                              voters in proptest::collection::vec(any::<u64>(), 0..8),
                              learners in proptest::collection::vec(any::<u64>(), 0..4)) {
            let s = RaftState {
                hard_state: HardState { term, vote, commit, ..Default::default() },
                conf_state: ConfState { voters, learners, auto_leave, ..Default::default() },
                applied,
            };
            let rec = s.encode(seq).unwrap();
            let (got_seq, got) = RaftState::decode(&rec).unwrap();
            prop_assert_eq!(got_seq, seq);
            prop_assert_eq!(got, s);
        }

        #[test]
        fn any_flipped_byte_is_rejected(pos in 0usize..90, bit in 0u8..8) {
            let rec = state(3, 9, vec![1, 2, 3]).encode(5).unwrap();
            let pos = pos % rec.len();
            let mut bad = rec.clone();
            bad[pos] ^= 1 << bit;
            prop_assert!(RaftState::decode(&bad).is_err());
        }
    }

    #[test]
    fn decode_rejects_bad_input() {
        let rec = state(3, 9, vec![1, 2, 3]).encode(5).unwrap();
        let mut bad_version = rec.clone();
        bad_version[4] = 9;
        let cases: [(&[u8], &str); 4] = [
            (&rec[..10], "truncated"),
            (&rec[..rec.len() - 1], "truncated"),
            (&[0u8; 100], "bad magic"),
            (&bad_version, "unsupported version"),
        ];
        for (i, (buf, want)) in cases.iter().enumerate() {
            assert_eq!(RaftState::decode(buf).err(), Some(*want), "case {i}");
        }
    }

    #[test]
    fn create_write_sync_reopen() {
        let dir = tempfile::tempdir().unwrap();
        assert!(StateFile::open(dir.path()).unwrap().is_none());
        let mut f = StateFile::create(dir.path(), &state(1, 1, vec![1, 2, 3])).unwrap();
        assert!(StateFile::create(dir.path(), &state(1, 1, vec![1])).is_err());
        f.write(&state(2, 1, vec![1, 2, 3])).unwrap();
        f.sync().unwrap();
        f.write(&state(2, 5, vec![1, 2, 3])).unwrap();
        f.write(&state(2, 6, vec![1, 2, 3])).unwrap();
        drop(f);
        let (_, got) = StateFile::open(dir.path()).unwrap().unwrap();
        assert_eq!(got, state(2, 6, vec![1, 2, 3]));
    }

    #[test]
    fn crash_loses_only_unsynced_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = StateFile::create(dir.path(), &state(1, 1, vec![1, 2, 3])).unwrap();
        for commit in 2..6 {
            f.write(&state(4, commit, vec![1, 2, 3])).unwrap();
            f.sync().unwrap();
        }
        f.write(&state(5, 7, vec![1, 2, 3])).unwrap();
        f.write(&state(5, 8, vec![1, 2, 3])).unwrap();
        f.crash(false).unwrap();
        let (mut f, got) = StateFile::open(dir.path()).unwrap().unwrap();
        assert_eq!(
            got,
            state(4, 5, vec![1, 2, 3]),
            "back to the last synced record"
        );
        // Writing after recovery goes to the other slot and survives.
        f.write(&state(6, 5, vec![1, 2, 3])).unwrap();
        f.sync().unwrap();
        f.crash(false).unwrap();
        let (_, got) = StateFile::open(dir.path()).unwrap().unwrap();
        assert_eq!(got, state(6, 5, vec![1, 2, 3]));
    }

    #[test]
    fn both_slots_damaged_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(StateFile::create(dir.path(), &state(1, 1, vec![1])).unwrap());
        fs::write(dir.path().join(RAFT_STATE_FILE), vec![7u8; 2 * SLOT_LEN]).unwrap();
        assert!(matches!(
            StateFile::open(dir.path()),
            Err(RaftError::Corrupt { .. })
        ));
    }
}
