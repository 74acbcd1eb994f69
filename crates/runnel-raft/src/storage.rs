//! [`raft::Storage`] over the partition log (RAFT.md traps 1-7, 11-16).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState as RaftInitialState, StorageError as RaftStorageError};
use runnel_batch::{BatchBuilder, ControlKind};
use runnel_storage::{AppendInfo, Log, StorageError};

use crate::entry::{batch_to_entry, entry_to_batch};
use crate::error::RaftError;
use crate::state_file::{RaftState, StateFile};

/// Raft index and term of the bootstrap entry every replica of a new group
/// writes identically (RAFT.md trap 14).
pub const BOOTSTRAP_INDEX: u64 = 1;
/// Term of the bootstrap entry.
pub const BOOTSTRAP_TERM: u64 = 1;

/// How a new group starts: the same on every replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootstrap {
    /// The group's voters (node ids, non-zero).
    pub voters: Vec<u64>,
    /// Timestamp of the bootstrap entry: the group's creation time, taken
    /// from the replicated metadata so every replica writes the same batch.
    pub created_ms: i64,
}

/// What a snapshot carries besides Raft's metadata: where the log starts.
///
/// Layout: version u8 (1), `start_offset` u64 LE — the offset of the first
/// entry after the snapshot index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SnapshotData {
    pub(crate) start_offset: u64,
}

const SNAPSHOT_DATA_VERSION: u8 = 1;

impl SnapshotData {
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(9);
        out.push(SNAPSHOT_DATA_VERSION);
        out.extend_from_slice(&self.start_offset.to_le_bytes());
        Bytes::from(out)
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<SnapshotData, String> {
        match buf {
            [SNAPSHOT_DATA_VERSION, rest @ ..] if rest.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(rest);
                Ok(SnapshotData {
                    start_offset: u64::from_le_bytes(b),
                })
            }
            [v, ..] if *v != SNAPSHOT_DATA_VERSION => {
                Err(format!("unsupported snapshot data version {v}"))
            }
            _ => Err(format!("snapshot data of {} bytes", buf.len())),
        }
    }
}

/// One group's Raft storage: its partition log (the Raft log itself, no
/// second copy) and the `raft.state` file beside its segments.
///
/// `first_index`, `last_index` and the end offsets of the entries not yet
/// applied are kept in memory, so raft-rs's infallible calls never touch
/// the disk (trap 3); `term` is answered from the log's in-memory term runs.
/// Writes go through `&mut self` (via `RawNode::mut_store`), reads through
/// `&self`: the node core owns the storage, so no lock is needed (trap 5).
/// Readers elsewhere (fetch) share the [`Log`] itself, which is `Sync`.
#[derive(Debug)]
pub struct LogStorage {
    log: Arc<Log>,
    file: StateFile,
    state: RaftState,
    /// `state` changed since it was last written.
    dirty: bool,
    first_index: u64,
    last_index: u64,
    /// Raft index whose end offset is `ends[0]`.
    ends_base: u64,
    /// End offsets (offset after the last record) of entries `ends_base..=last_index`.
    ends: VecDeque<u64>,
}

fn to_raft(e: StorageError) -> raft::Error {
    match e {
        StorageError::Compacted { .. } => raft::Error::Store(RaftStorageError::Compacted),
        StorageError::Unavailable { .. } => raft::Error::Store(RaftStorageError::Unavailable),
        other => raft::Error::Store(RaftStorageError::Other(Box::new(other))),
    }
}

fn other(reason: String) -> raft::Error {
    raft::Error::Store(RaftStorageError::Other(reason.into()))
}

impl LogStorage {
    /// Opens the Raft storage of the log, creating the state file (and the
    /// bootstrap entry) if the group is new.
    ///
    /// Refuses to start (trap 11) when the persisted commit index lies past
    /// `last_index` — entries it covers were lost — or when the log holds
    /// entries but there is no state file. A commit index below
    /// `first_index - 1` (a crash right after a reset or retention) is
    /// raised to it: the log only loses committed, applied entries.
    pub fn open(log: Arc<Log>, bootstrap: &Bootstrap) -> Result<LogStorage, RaftError> {
        let dir = log.dir().to_path_buf();
        let (file, mut state) = match StateFile::open(&dir)? {
            Some(found) => found,
            None => Self::bootstrap(&log, bootstrap)?,
        };
        let first_index = log.first_index()?;
        let last_index = log.last_index()?;
        // The log only loses its front at committed, applied indexes
        // (retention below the applied index, a snapshot of the leader's
        // compacted prefix). A crash between that and the state record
        // leaves the record behind: everything before the first index is
        // committed and applied, so catch the record up.
        let mut dirty = false;
        if state.hard_state.commit + 1 < first_index {
            tracing::warn!(dir = %dir.display(), commit = state.hard_state.commit, first_index,
                "raft state is behind the log start (crash after a reset or retention); catching it up");
            state.hard_state.commit = first_index - 1;
            dirty = true;
        }
        if state.applied + 1 < first_index {
            state.applied = first_index - 1;
            dirty = true;
        }
        let hs = &state.hard_state;
        if hs.commit > last_index {
            return Err(RaftError::corrupt(
                &dir,
                format!(
                    "persisted commit index {} is outside the log's [{}, {last_index}]: entries were lost",
                    hs.commit,
                    first_index - 1
                ),
            ));
        }
        if state.applied > hs.commit {
            return Err(RaftError::corrupt(
                &dir,
                format!(
                    "persisted applied index {} is outside [{}, commit {}]",
                    state.applied,
                    first_index - 1,
                    hs.commit
                ),
            ));
        }
        let mut storage = LogStorage {
            log,
            file,
            state,
            dirty,
            first_index,
            last_index,
            ends_base: 0,
            ends: VecDeque::new(),
        };
        storage.load_ends(storage.state.applied)?;
        storage.persist(dirty)?;
        Ok(storage)
    }

    /// Writes the bootstrap entry and the first state record of a new group.
    fn bootstrap(log: &Log, b: &Bootstrap) -> Result<(StateFile, RaftState), RaftError> {
        let dir = log.dir();
        if b.voters.is_empty() || b.voters.contains(&0) {
            return Err(RaftError::Config(format!(
                "voters {:?}: need at least one, none zero",
                b.voters
            )));
        }
        let (first, last) = (log.first_index()?, log.last_index()?);
        match (first, last) {
            (1, 0) => {
                let batch = BatchBuilder::control(ControlKind::RaftNoop, &[], b.created_ms)
                    .map_err(|e| RaftError::Config(format!("bootstrap batch: {e}")))?;
                log.append_entry(&batch, BOOTSTRAP_TERM, BOOTSTRAP_INDEX)?;
                log.flush()?;
            }
            // A bootstrap interrupted after the entry was written.
            (1, 1) if log.term(1)? == BOOTSTRAP_TERM => {}
            _ => {
                return Err(RaftError::corrupt(
                    dir,
                    format!(
                        "the log holds raft entries [{first}, {last}] but there is no raft state file"
                    ),
                ));
            }
        }
        let mut voters = b.voters.clone();
        voters.sort_unstable();
        voters.dedup();
        let state = RaftState {
            hard_state: HardState {
                term: BOOTSTRAP_TERM,
                vote: 0,
                commit: BOOTSTRAP_INDEX,
                ..Default::default()
            },
            conf_state: ConfState {
                voters,
                ..Default::default()
            },
            applied: BOOTSTRAP_INDEX,
        };
        let file = StateFile::create(dir, &state)?;
        Ok((file, state))
    }

    /// Rebuilds the end offsets of entries `from..=last_index`.
    fn load_ends(&mut self, from: u64) -> Result<(), RaftError> {
        self.ends.clear();
        self.ends_base = from;
        let mut next = from;
        if from + 1 == self.first_index {
            // The entry before the first: its end is where the log starts.
            self.ends.push_back(self.first_offset()?);
            next += 1;
        }
        if next <= self.last_index {
            for batch in self.log.entries(next, self.last_index + 1, None)? {
                let h = runnel_batch::BatchHeader::parse(&batch).map_err(StorageError::from)?;
                self.ends.push_back(h.next_offset());
            }
        }
        Ok(())
    }

    /// Offset of the first stored entry (the log end if there is none).
    fn first_offset(&self) -> Result<u64, RaftError> {
        let segments = self.log.segments()?;
        match segments.first() {
            Some(s) => Ok(s.base_offset),
            None => Ok(self.log.log_end_offset()?),
        }
    }

    /// The partition log.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// The persisted hard state (as last set).
    pub fn hard_state(&self) -> &HardState {
        &self.state.hard_state
    }

    /// The conf state (as last set).
    pub fn conf_state(&self) -> &ConfState {
        &self.state.conf_state
    }

    /// Last applied Raft index.
    pub fn applied(&self) -> u64 {
        self.state.applied
    }

    /// First stored Raft index.
    pub fn first_index_cached(&self) -> u64 {
        self.first_index
    }

    /// Last stored Raft index.
    pub fn last_index_cached(&self) -> u64 {
        self.last_index
    }

    /// End offset (offset after its last record) of entry `index`, for any
    /// index from the applied one to the last.
    pub fn end_offset(&self, index: u64) -> Option<u64> {
        let k = index.checked_sub(self.ends_base)?;
        self.ends.get(usize::try_from(k).ok()?).copied()
    }

    /// Appends entries from a `Ready`, truncating a conflicting suffix first
    /// (trap 6). Not durable until [`LogStorage::sync`].
    pub(crate) fn append(
        &mut self,
        entries: &[Entry],
        now_ms: i64,
    ) -> Result<Vec<AppendInfo>, RaftError> {
        let Some(first) = entries.first() else {
            return Ok(Vec::new());
        };
        let dir = self.log.dir().to_path_buf();
        if first.index <= self.state.hard_state.commit {
            return Err(RaftError::corrupt(
                &dir,
                format!(
                    "append at raft index {} would overwrite committed entries (commit {})",
                    first.index, self.state.hard_state.commit
                ),
            ));
        }
        if first.index > self.last_index + 1 {
            return Err(RaftError::corrupt(
                &dir,
                format!(
                    "append at raft index {} leaves a gap after the last index {}",
                    first.index, self.last_index
                ),
            ));
        }
        if first.index <= self.last_index {
            self.log.truncate_from_index(first.index)?;
            self.last_index = first.index - 1;
            let keep = (first.index - self.ends_base) as usize;
            self.ends.truncate(keep);
        }
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let batch = entry_to_batch(e, now_ms).map_err(|r| RaftError::corrupt(&dir, r))?;
            let info = self.log.append_entry(&batch, e.term, e.index)?;
            self.last_index = e.index;
            self.ends.push_back(info.last_offset + 1);
            out.push(info);
        }
        Ok(out)
    }

    /// Replaces the log by the snapshot's "the log starts here" (trap 16):
    /// the entry before the first becomes (index, term) of the snapshot,
    /// the commit and applied index move to it, the conf state is the
    /// snapshot's. Durable on return, the state record included.
    pub(crate) fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), RaftError> {
        let dir = self.log.dir().to_path_buf();
        let meta = snap.get_metadata();
        let data = SnapshotData::decode(&snap.data).map_err(|r| RaftError::corrupt(&dir, r))?;
        self.log
            .reset_to(data.start_offset, meta.index, meta.term)?;
        self.first_index = meta.index + 1;
        self.last_index = meta.index;
        self.ends_base = meta.index;
        self.ends.clear();
        self.ends.push_back(data.start_offset);
        let hs = &mut self.state.hard_state;
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.state.conf_state = meta.get_conf_state().clone();
        self.state.applied = meta.index;
        self.dirty = true;
        self.persist(true)
    }

    /// Records a new hard state (written by the next persist).
    pub(crate) fn set_hard_state(&mut self, hs: &HardState) {
        if self.state.hard_state != *hs {
            self.state.hard_state = hs.clone();
            self.dirty = true;
        }
    }

    /// Records a new commit index.
    pub(crate) fn set_commit(&mut self, commit: u64) {
        if self.state.hard_state.commit != commit {
            self.state.hard_state.commit = commit;
            self.dirty = true;
        }
    }

    /// Records a new conf state (trap 13).
    pub(crate) fn set_conf_state(&mut self, cs: ConfState) {
        self.state.conf_state = cs;
        self.dirty = true;
    }

    /// Records the applied index and forgets end offsets below it.
    pub(crate) fn set_applied(&mut self, applied: u64) {
        if applied <= self.state.applied {
            return;
        }
        self.state.applied = applied;
        self.dirty = true;
        while self.ends_base < applied && self.ends.len() > 1 {
            self.ends.pop_front();
            self.ends_base += 1;
        }
    }

    /// Makes appended entries durable (the log first, so that a commit
    /// index never reaches the disk ahead of the entries it covers).
    pub(crate) fn sync_log(&mut self) -> Result<(), RaftError> {
        self.log.flush()?;
        Ok(())
    }

    /// Writes the state record if it changed, and fsyncs it if `sync`.
    pub(crate) fn persist(&mut self, sync: bool) -> Result<(), RaftError> {
        if self.dirty {
            self.file.write(&self.state)?;
            self.dirty = false;
        }
        if sync {
            self.file.sync()?;
        }
        Ok(())
    }

    /// Deletes sealed segments by the log's retention settings, never past
    /// the applied index (trap 18); followers behind the new start get a
    /// snapshot. Returns the new first index.
    pub(crate) fn apply_retention(&mut self, now_ms: i64) -> Result<u64, RaftError> {
        // Retention deletes whole sealed segments: with one segment there
        // is nothing to do (and no state record to sync).
        if self.log.segments()?.len() < 2 {
            return Ok(self.first_index);
        }
        let limit = self.end_offset(self.state.applied).unwrap_or(0);
        // The commit and applied index that allow the deletion go to disk
        // before it (open would catch them up anyway; this keeps it rare).
        self.persist(true)?;
        self.log.apply_retention(now_ms, limit)?;
        self.first_index = self.log.first_index()?;
        Ok(self.first_index)
    }

    /// Simulates a crash (tests): the state file loses what was not synced.
    #[cfg(test)]
    pub(crate) fn crash(&mut self, keep_unsynced: bool) -> Result<(), RaftError> {
        self.dirty = false;
        self.file.crash(keep_unsynced)
    }
}

impl raft::Storage for LogStorage {
    fn initial_state(&self) -> raft::Result<RaftInitialState> {
        Ok(RaftInitialState::new(
            self.state.hard_state.clone(),
            self.state.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        if low < self.first_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last_index + 1 {
            // raft-rs never asks for this (MemStorage panics); say so loudly.
            return Err(other(format!(
                "entries [{low}, {high}) asked for past the last index {}",
                self.last_index
            )));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        // The log's byte limit counts batch bytes, never more than Raft's
        // protobuf size of the same entries, so it returns at least what
        // `limit_size` keeps; `limit_size` then applies Raft's exact rule.
        let batches = self.log.entries(low, high, max_size).map_err(to_raft)?;
        let mut out = Vec::with_capacity(batches.len());
        for batch in batches {
            out.push(batch_to_entry(batch).map_err(other)?);
        }
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.log.term(idx).map_err(to_raft)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    /// A snapshot means "the log starts after `first_index - 1`" (trap 16):
    /// its metadata is that index, its term and the conf state; its data
    /// the offset where the log starts. Never index 0 (trap 15).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let index = self.first_index - 1;
        if index == 0 || index < request_index {
            return Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let term = self.log.term(index).map_err(to_raft)?;
        let start_offset = match self.end_offset(index) {
            Some(o) => o,
            None => self.first_offset().map_err(|e| other(e.to_string()))?,
        };
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(self.state.conf_state.clone());
        let mut snap = Snapshot {
            data: SnapshotData { start_offset }.encode(),
            ..Default::default()
        };
        snap.set_metadata(meta);
        Ok(snap)
    }
}

#[cfg(test)]
pub(crate) mod tests;
