//! The broker's error type and its mapping to gRPC statuses.
//!
//! Every failed call carries three things (see `proto/runnel/v1/common.proto`):
//! a gRPC status code, the `runnel-reason` ASCII trailer holding the
//! [`ErrorReason`] enum name, and a `google.rpc.ErrorInfo` (domain
//! [`runnel_proto::ERROR_DOMAIN`]) in the status details. The mapping lives
//! here and only here: the tonic boundary.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use runnel_batch::BatchError;
use runnel_proto::v1::{self, ErrorReason};
use runnel_storage::StorageError;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Everything a broker operation can fail with.
///
/// Expected outcomes a client can act on (unknown topic, offset out of
/// range, not leader, ...) are kept apart from I/O failures, which keep
/// their source.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The topic does not exist.
    #[error("topic {0:?} does not exist: create it with `runnel topic create {0}`")]
    UnknownTopic(String),
    /// The topic exists but has no such partition.
    #[error(
        "topic {topic:?} has no partition {partition}: it has {count} (0-{last}); describe it with `runnel topic describe {topic}`",
        last = count.saturating_sub(1)
    )]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Partition asked for.
        partition: u32,
        /// Number of partitions of the topic.
        count: u32,
    },
    /// A topic name breaks the naming rule.
    #[error(
        "invalid topic name {name:?}: {why}; use 1-249 characters of [a-zA-Z0-9._-], not \".\" or \"..\""
    )]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A request field is out of range or inconsistent; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// A fetch or lookup offset outside `[log_start_offset, high_watermark]`.
    #[error(
        "offset {offset} is out of range for {topic}-{partition}: it holds [{log_start}, {high_watermark}]; \
         start from the earliest or latest offset (ListOffsets) instead"
    )]
    OffsetOutOfRange {
        /// Topic name.
        topic: String,
        /// Partition id.
        partition: u32,
        /// Offset asked for.
        offset: u64,
        /// First offset still stored.
        log_start: u64,
        /// Offset after the last committed record.
        high_watermark: u64,
    },
    /// A batch (or record list, once encoded) larger than the topic allows.
    #[error(
        "{what} for {topic}-{partition} is {size} bytes, above the topic's max_record_bytes of {max}: \
         send smaller batches or create the topic with a larger max_record_bytes"
    )]
    RecordTooLarge {
        /// Topic name.
        topic: String,
        /// Partition id.
        partition: u32,
        /// "batch" or "encoded record list".
        what: &'static str,
        /// Size in bytes.
        size: usize,
        /// The topic's limit.
        max: u32,
    },
    /// A pre-encoded batch failed verification.
    #[error("corrupt batch for {topic}-{partition}: {source}; the producer must re-encode it")]
    CorruptBatch {
        /// Topic name.
        topic: String,
        /// Partition id.
        partition: u32,
        /// What verification found.
        #[source]
        source: BatchError,
    },
    /// This node does not lead the partition.
    #[error("node does not lead {topic}-{partition}{}; refresh metadata and retry", leader_hint(*.leader_id, .leader_address))]
    NotLeader {
        /// Topic name.
        topic: String,
        /// Partition id.
        partition: u32,
        /// The leader's id, 0 if unknown.
        leader_id: u32,
        /// The leader's client address, empty if unknown.
        leader_address: String,
    },
    /// A topic with this name exists.
    #[error("topic {0:?} already exists: describe it with `runnel topic describe {0}`")]
    TopicAlreadyExists(String),
    /// The node cannot take the request now (shutting down, log failed,
    /// disk full, queue full). Retriable.
    #[error("{0}")]
    Unavailable(String),
    /// The feature asked for is not supported by this version.
    #[error("{0}")]
    Unsupported(String),
    /// A write was not acknowledged within the request's `timeout_ms`; it
    /// may or may not be stored. Retriable.
    #[error("{0}")]
    Timeout(String),
    /// A partition log failed.
    #[error("{context}: {source}")]
    Storage {
        /// What was being done.
        context: String,
        /// The storage error.
        #[source]
        source: Arc<StorageError>,
    },
    /// A file operation of the broker itself (registry, node file) failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The data directory holds something this node refuses to use.
    #[error("{0}")]
    DataDir(String),
    /// Serving failed (transport error).
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A broken invariant or a background task that died.
    #[error("internal error: {0}")]
    Internal(String),
    /// This node does not coordinate the consumer group.
    #[error("node does not coordinate group {group:?}{}; retry there", leader_hint(*.leader_id, .leader_address))]
    NotCoordinator {
        /// Group name.
        group: String,
        /// The coordinator's id, 0 if unknown.
        leader_id: u32,
        /// The coordinator's client address, empty if unknown.
        leader_address: String,
    },
    /// A consumer-group operation was refused.
    #[error(transparent)]
    Group(#[from] runnel_groups::GroupError),
    /// The answer of another node this request was forwarded to (the
    /// controller's leader), passed on unchanged.
    #[error("{}", .0.message())]
    Forwarded(Status),
}

fn leader_hint(id: u32, address: &str) -> String {
    match (id, address) {
        (0, _) => String::new(),
        (id, "") => format!(" (node {id} does)"),
        (id, addr) => format!(" (node {id} at {addr} does)"),
    }
}

/// Result alias for this crate.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

impl BrokerError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BrokerError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn storage(
        context: impl Into<String>,
        source: impl Into<Arc<StorageError>>,
    ) -> Self {
        BrokerError::Storage {
            context: context.into(),
            source: source.into(),
        }
    }

    /// The machine-readable reason sent to clients.
    pub fn reason(&self) -> ErrorReason {
        use BrokerError::*;
        match self {
            UnknownTopic(_) => ErrorReason::UnknownTopic,
            UnknownPartition { .. } => ErrorReason::UnknownPartition,
            InvalidName { .. } => ErrorReason::InvalidName,
            InvalidArgument(_) => ErrorReason::InvalidArgument,
            OffsetOutOfRange { .. } => ErrorReason::OffsetOutOfRange,
            RecordTooLarge { .. } => ErrorReason::RecordTooLarge,
            CorruptBatch { .. } => ErrorReason::CorruptBatch,
            NotLeader { .. } => ErrorReason::NotLeader,
            TopicAlreadyExists(_) => ErrorReason::TopicAlreadyExists,
            Unavailable(_) => ErrorReason::Unavailable,
            Unsupported(_) => ErrorReason::Unsupported,
            Timeout(_) => ErrorReason::Timeout,
            Storage { source, .. } => match &**source {
                // A failed or full log refuses writes until it is reopened:
                // another replica (or a later retry) may take them.
                StorageError::Failed { .. } => ErrorReason::Unavailable,
                e if e.is_disk_full() => ErrorReason::Unavailable,
                _ => ErrorReason::Internal,
            },
            Io { .. } | DataDir(_) | Transport(_) | Internal(_) => ErrorReason::Internal,
            NotCoordinator { .. } => ErrorReason::NotCoordinator,
            Group(e) => {
                use runnel_groups::GroupError as G;
                match e {
                    G::UnknownMember { .. } => ErrorReason::UnknownMember,
                    G::FencedMemberEpoch { .. } => ErrorReason::FencedMemberEpoch,
                    G::StaleMemberEpoch { .. } => ErrorReason::StaleMemberEpoch,
                    G::GroupNotEmpty { .. } => ErrorReason::GroupNotEmpty,
                    G::UnknownGroup(_) => ErrorReason::UnknownGroup,
                    G::InvalidArgument(_) => ErrorReason::InvalidArgument,
                }
            }
            Forwarded(status) => status
                .metadata()
                .get(runnel_proto::REASON_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
                .and_then(ErrorReason::from_str_name)
                .unwrap_or(match status.code() {
                    Code::Unavailable => ErrorReason::Unavailable,
                    _ => ErrorReason::Internal,
                }),
        }
    }

    /// The gRPC status code for [`BrokerError::reason`].
    pub fn code(&self) -> Code {
        code_for(self.reason())
    }

    /// The per-partition `Error` message of multi-partition responses.
    pub fn to_proto(&self) -> v1::Error {
        let (leader_id, leader_address) = match self {
            BrokerError::NotLeader {
                leader_id,
                leader_address,
                ..
            }
            | BrokerError::NotCoordinator {
                leader_id,
                leader_address,
                ..
            } => (*leader_id, leader_address.clone()),
            _ => (0, String::new()),
        };
        v1::Error {
            reason: self.reason() as i32,
            message: self.to_string(),
            leader_id,
            leader_address,
        }
    }
}

/// The gRPC code every reason maps to.
pub fn code_for(reason: ErrorReason) -> Code {
    match reason {
        ErrorReason::Unspecified | ErrorReason::Internal => Code::Internal,
        ErrorReason::UnknownTopic | ErrorReason::UnknownPartition => Code::NotFound,
        ErrorReason::InvalidName
        | ErrorReason::InvalidArgument
        | ErrorReason::RecordTooLarge
        | ErrorReason::CorruptBatch => Code::InvalidArgument,
        ErrorReason::OffsetOutOfRange => Code::OutOfRange,
        ErrorReason::NotLeader
        | ErrorReason::NotCoordinator
        | ErrorReason::UnknownMember
        | ErrorReason::FencedMemberEpoch
        | ErrorReason::StaleMemberEpoch
        | ErrorReason::GroupNotEmpty => Code::FailedPrecondition,
        ErrorReason::UnknownGroup => Code::NotFound,
        ErrorReason::TopicAlreadyExists => Code::AlreadyExists,
        ErrorReason::Unavailable => Code::Unavailable,
        ErrorReason::Timeout => Code::DeadlineExceeded,
        ErrorReason::Unsupported => Code::Unimplemented,
    }
}

/// Builds the status of a failed call: code, message, reason trailer and
/// `google.rpc.ErrorInfo`.
pub fn status_for(
    reason: ErrorReason,
    message: impl Into<String>,
    info: HashMap<String, String>,
) -> Status {
    let name = reason.as_str_name();
    let mut metadata = MetadataMap::new();
    metadata.insert(
        runnel_proto::REASON_METADATA_KEY,
        MetadataValue::from_static(name),
    );
    let details = ErrorDetails::with_error_info(name, runnel_proto::ERROR_DOMAIN, info);
    Status::with_error_details_and_metadata(code_for(reason), message, details, metadata)
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Status {
        if let BrokerError::Forwarded(status) = e {
            return status;
        }
        let mut info = HashMap::new();
        match &e {
            BrokerError::NotLeader {
                leader_id,
                leader_address,
                ..
            }
            | BrokerError::NotCoordinator {
                leader_id,
                leader_address,
                ..
            } => {
                info.insert("leader_id".to_string(), leader_id.to_string());
                info.insert("leader_address".to_string(), leader_address.clone());
            }
            BrokerError::UnknownTopic(topic) | BrokerError::TopicAlreadyExists(topic) => {
                info.insert("topic".to_string(), topic.clone());
            }
            _ => {}
        }
        if e.reason() == ErrorReason::Internal {
            tracing::error!(error = %e, "request failed inside the node");
        }
        status_for(e.reason(), e.to_string(), info)
    }
}
