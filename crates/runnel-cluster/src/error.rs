//! Errors: why a command was refused ([`ClusterError`]) and why bytes could
//! not be read as a command or a snapshot ([`DecodeError`]).

use crate::BrokerId;

/// Why a command was refused, or why settings are invalid.
///
/// Every variant except [`ClusterError::StaleIndex`] is a deterministic
/// outcome of [`crate::ClusterState::apply`]: it depends only on the state
/// and the command, so every node applying the same entry refuses it the
/// same way, and a refused command changes no metadata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The topic name breaks the naming rule.
    #[error("invalid topic name {name:?}: {why}")]
    InvalidName {
        /// The name (its first 300 characters).
        name: String,
        /// Which part of the rule it breaks.
        why: &'static str,
    },
    /// A setting or argument is out of range; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// A valid value this version does not implement (refused before
    /// proposing, never by `apply`).
    #[error("{0}")]
    Unsupported(String),
    /// A topic of this name exists.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// No topic of this name.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// No broker of this id is registered.
    #[error("unknown broker {0}")]
    UnknownBroker(BrokerId),
    /// The broker still holds replicas, so it cannot be removed.
    #[error("broker {id} holds {replicas} partition replicas: move them away before removing it")]
    BrokerInUse {
        /// The broker.
        id: BrokerId,
        /// Replicas it holds.
        replicas: u32,
    },
    /// Fewer unfenced brokers than the replication factor asks for.
    #[error(
        "replication_factor {replication_factor} needs that many live brokers, {available} are registered and unfenced"
    )]
    NotEnoughBrokers {
        /// Replicas asked for.
        replication_factor: u32,
        /// Registered, unfenced brokers.
        available: u32,
    },
    /// The Raft index is not above the last one applied: a driver bug
    /// (entries must be applied once each, in order). Changes nothing.
    #[error("index {index} is not after the last applied index {applied}")]
    StaleIndex {
        /// The index passed to `apply`.
        index: u64,
        /// The last index applied.
        applied: u64,
    },
}

/// Bytes that are not a command or snapshot this version can read.
///
/// A node meeting an undecodable entry in the controller log must stop
/// applying (it is an older version than the node that wrote it, or the
/// entry is corrupt): skipping it would let its state diverge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Written by a newer version: upgrade this node.
    #[error("{what} has format version {found}; this node reads up to {supported}: upgrade it")]
    UnsupportedVersion {
        /// "command" or "snapshot".
        what: &'static str,
        /// Version found in the bytes.
        found: u32,
        /// Newest version this code reads.
        supported: u32,
    },
    /// Not valid JSON of the expected shape, or a snapshot whose contents
    /// break the state's invariants.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// "command" or "snapshot".
        what: &'static str,
        /// What is wrong (with the position for JSON errors).
        reason: String,
    },
}
