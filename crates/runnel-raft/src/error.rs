//! Errors of the replication layer.

use std::path::PathBuf;

use thiserror::Error;

use crate::{GroupId, NodeId};

/// Failures opening, persisting or driving a Raft group.
#[derive(Debug, Error)]
pub enum RaftError {
    /// The partition log failed (I/O, corruption, or an append that breaks
    /// its invariants). The group stops; reopen it to recover.
    #[error("partition log: {0}")]
    Storage(#[from] runnel_storage::StorageError),
    /// An I/O call on the Raft state file failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// File involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Persisted state failed verification or contradicts the log; the
    /// group refuses to start rather than lose or invent entries.
    #[error("corrupt raft state in {}: {reason}", path.display())]
    Corrupt {
        /// File or directory involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// raft-rs refused a call (bad configuration, a storage error it saw).
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The group is not open on this node.
    #[error("group {0} is not open on this node")]
    UnknownGroup(GroupId),
    /// The group is already open on this node.
    #[error("group {0} is already open on this node")]
    GroupExists(GroupId),
}

impl RaftError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RaftError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        RaftError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Why a proposal was not accepted by [`crate::Node::propose`]: the
/// caller should redirect or retry; nothing was written.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProposeError {
    /// This node does not lead the group (RAFT.md trap 19). `leader` is
    /// the leader this node knows of, if any: redirect the client there.
    #[error("not the leader of group {group} (leader: {leader:?})")]
    NotLeader {
        /// The group.
        group: GroupId,
        /// Known leader, if any.
        leader: Option<NodeId>,
    },
    /// The leader refused the proposal for now: a leadership transfer is
    /// in progress or too much is uncommitted. Retry after a backoff.
    #[error("group {group} cannot take proposals right now: {reason}")]
    Retry {
        /// The group.
        group: GroupId,
        /// Why.
        reason: &'static str,
    },
    /// The batch cannot be proposed (a control batch).
    #[error("invalid proposal to group {group}: {reason}")]
    Invalid {
        /// The group.
        group: GroupId,
        /// Why.
        reason: &'static str,
    },
    /// The group is not open on this node.
    #[error("group {0} is not open on this node")]
    UnknownGroup(GroupId),
}

/// How an accepted proposal ended without being acknowledged.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProposalError {
    /// Another entry was committed (or, for acks=leader, appended) at the
    /// proposal's index: it is certainly not in the log. Safe to retry.
    #[error("superseded by a new leader's entry at raft index {index}")]
    Superseded {
        /// Raft index the proposal had.
        index: u64,
    },
    /// The outcome cannot be known here: the log was replaced by a snapshot
    /// past the proposal, or the group was closed. It may or may not be
    /// committed; a retry may duplicate it.
    #[error("outcome unknown: {reason}")]
    Unknown {
        /// Why.
        reason: &'static str,
    },
}
