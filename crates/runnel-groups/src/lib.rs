//! Runnel consumer groups: membership, broker-side assignment with
//! incremental rebalance, and the offset-commit records of the offsets
//! topic.
//!
//! Owns: the per-partition [`Coordinator`] state machine (members, member
//! and group epochs, session expiry, target assignment and its incremental
//! reconciliation, commit fencing, committed offsets rebuilt from
//! records); the [`Assignor`]s (range, round-robin, sticky); the
//! versioned [`GroupRecord`] encoding stored in the offsets topic; the
//! group name rule.
//!
//! Does not own: the offsets topic itself, Raft, which node coordinates a
//! group, clocks and timers (runnel-broker: it appends records with
//! acks=all and applies them once stored, replays a partition when its
//! node becomes the leader, ticks [`Coordinator::expire`], maps
//! [`GroupError`] to gRPC statuses); fetching records (the client).
//!
//! The crate is pure and synchronous: no I/O, no threads, no clock, no
//! randomness.
//!
//! # Design
//!
//! The protocol follows Kafka's KIP-848 (the "new" consumer group
//! protocol) rather than the classic JoinGroup/SyncGroup dance: the broker
//! assigns, and one heartbeat call carries join, leave and the partitions
//! a member owns. This keeps a thin client in any language to two calls
//! (Heartbeat and CommitOffsets), makes rebalances incremental by
//! construction (a member never stops the partitions it keeps), and
//! needs no group-wide barrier, so one slow member delays only the
//! partitions it must give up. See [`coordinator`] for the rules.
//!
//! Membership is soft state: only commits and group deletions are
//! written to the log. After a coordinator change, members learn
//! `UNKNOWN_MEMBER`, rejoin and resume from the committed offsets. Writing
//! membership too (as Kafka does) would spare that one rebalance at the
//! cost of a replicated write per membership change; with sessions of
//! seconds and failover of about as long, the rebalance is the cheaper
//! price.
//!
//! # Use
//!
//! ```
//! use std::collections::BTreeSet;
//! use runnel_groups::{Coordinator, GroupRecord, Heartbeat, JOIN_EPOCH};
//!
//! let mut c = Coordinator::new("n1");
//! let topics = |t: &str| (t == "orders").then_some(4);
//! let a = c.heartbeat("g", Heartbeat {
//!     member_epoch: JOIN_EPOCH,
//!     subscriptions: Some(BTreeSet::from(["orders".to_string()])),
//!     ..Heartbeat::default()
//! }, &topics, 0)?;
//! assert_eq!(a.assigned.len(), 4);
//! // Commit: check, store the record (acks=all), then apply it.
//! c.check_commit("g", &a.member_id, a.member_epoch)?;
//! let record = GroupRecord::OffsetCommit {
//!     group: "g".into(), topic: "orders".into(), partition: 0, offset: 10, timestamp: 0,
//! };
//! let stored = record.encode();
//! c.apply(&GroupRecord::decode(&stored)?);
//! assert_eq!(c.committed("g", "orders", 0).map(|o| o.offset), Some(10));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

pub mod assignor;
pub mod coordinator;
pub mod record;

pub use assignor::{Assignment, Assignor, TopicPartition};
pub use coordinator::{
    Committed, Coordinator, DEFAULT_SESSION_TIMEOUT_MS, GroupDescription, GroupState, Heartbeat,
    HeartbeatAnswer, JOIN_EPOCH, LEAVE_EPOCH, MAX_SESSION_TIMEOUT_MS, MIN_SESSION_TIMEOUT_MS,
    MemberDescription, heartbeat_interval_ms,
};
pub use record::{GroupRecord, RECORD_VERSION, RecordError};

/// Longest group name, in bytes.
pub const MAX_GROUP_NAME: usize = 249;

/// Why a group operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The member is not in the group (never joined, left, expired, or the
    /// coordinator moved): rejoin with epoch 0.
    #[error(
        "member {member:?} is not in group {group:?} (it left, its session expired, or the coordinator moved); rejoin with member_epoch 0"
    )]
    UnknownMember {
        /// Group name.
        group: String,
        /// Member id.
        member: String,
    },
    /// A heartbeat with an epoch older than the member's previous one:
    /// the member was fenced and must rejoin with epoch 0.
    #[error(
        "member {member:?} of group {group:?} sent epoch {given}, but its epoch is {current}; rejoin with member_epoch 0"
    )]
    FencedMemberEpoch {
        /// Group name.
        group: String,
        /// Member id.
        member: String,
        /// Epoch sent.
        given: u32,
        /// The member's epoch.
        current: u32,
    },
    /// A commit from an older member epoch (a stale generation).
    #[error(
        "commit from member {member:?} of group {group:?} carries epoch {given}, but its epoch is {current}: the assignment moved on; heartbeat, then commit what you still own"
    )]
    StaleMemberEpoch {
        /// Group name.
        group: String,
        /// Member id.
        member: String,
        /// Epoch sent.
        given: i32,
        /// The member's epoch.
        current: u32,
    },
    /// The operation needs a group without members.
    #[error(
        "group {group:?} has {members} active member(s); stop its consumers (or wait for their sessions to expire) first"
    )]
    GroupNotEmpty {
        /// Group name.
        group: String,
        /// Members it has.
        members: usize,
    },
    /// No such group (no members, no committed offsets).
    #[error(
        "group {0:?} does not exist (no members and no committed offsets); list groups with `runnel group list`"
    )]
    UnknownGroup(String),
    /// A request field is out of range; the message says which.
    #[error("{0}")]
    InvalidArgument(String),
}

/// Checks a group name: 1-249 bytes of `[a-zA-Z0-9._-]`.
pub fn validate_group_name(name: &str) -> Result<(), GroupError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_GROUP_NAME {
        "it is longer than 249 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "it holds a character outside [a-zA-Z0-9._-]"
    } else {
        return Ok(());
    };
    Err(GroupError::InvalidArgument(format!(
        "invalid group name {:?}: {why}; use 1-249 characters of [a-zA-Z0-9._-]",
        name.chars().take(300).collect::<String>()
    )))
}

/// The partition of the offsets topic (of `partitions` partitions) that
/// holds `group`: FNV-1a (32-bit) of the name modulo `partitions`. Stable
/// across versions and nodes; changing it would orphan committed offsets.
///
/// # Panics
/// When `partitions` is 0.
pub fn offsets_partition(group: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "the offsets topic has no partitions");
    let mut hash: u32 = 0x811c_9dc5;
    for b in group.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions
}

#[cfg(test)]
mod tests {
    #[test]
    fn offsets_partition_is_stable() {
        // Known FNV-1a values: a change here orphans stored offsets.
        // (case, group, partitions, expected)
        let cases = [
            (1, "", 8, 0x811c_9dc5 % 8),
            (2, "a", 8, 0xe40c_292c % 8),
            (3, "g", 1, 0),
        ];
        for (case, group, n, expected) in cases {
            assert_eq!(super::offsets_partition(group, n), expected, "case {case}");
        }
    }
}
