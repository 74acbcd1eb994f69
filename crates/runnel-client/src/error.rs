//! The client's error type and how broker failures map onto it.

use std::sync::Arc;
use std::time::Duration;

use runnel_batch::BatchError;
use runnel_proto::REASON_METADATA_KEY;
use runnel_proto::v1::ErrorReason;
use tonic_types::StatusExt;

/// A `Result` with the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a client call failed.
///
/// Cheap to clone (sources are shared), because one failed batch fails every
/// record's [`DeliveryFuture`](crate::DeliveryFuture) with the same error.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker refused the request, or one partition of it, and said why.
    ///
    /// Built from a gRPC status carrying the `runnel-reason` trailer, or from
    /// the `Error` of one partition in a response.
    #[error("{message} ({})", reason.as_str_name())]
    Status {
        /// Machine-readable reason.
        reason: ErrorReason,
        /// The broker's explanation.
        message: String,
        /// For `NOT_LEADER`: the leader's node id, 0 if unknown.
        leader_id: u32,
        /// For `NOT_LEADER`: the leader's address, empty if unknown.
        leader_address: String,
        /// The gRPC status, when the whole call failed.
        #[source]
        status: Option<Arc<tonic::Status>>,
    },
    /// No bootstrap address could be reached.
    #[error("cannot connect to a broker: {message}")]
    Connect {
        /// The addresses tried, as given.
        addresses: String,
        /// Each address with what went wrong there.
        message: String,
    },
    /// The connection failed or broke, or the call failed below Runnel (an
    /// HTTP/2 error, a gRPC status without a Runnel reason). Retriable.
    #[error("transport error talking to {address}: {message}")]
    Transport {
        /// The broker address.
        address: String,
        /// What happened.
        message: String,
        /// The underlying status, when there is one.
        #[source]
        status: Option<Arc<tonic::Status>>,
    },
    /// No answer within the configured request timeout. Retriable.
    #[error("no answer from the broker within {0:?}")]
    Timeout(Duration),
    /// A call was made with an invalid argument; nothing was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Records could not be encoded into a batch.
    #[error("cannot encode a batch: {0}")]
    Encode(#[source] BatchError),
    /// Fetched bytes are not valid batches (CRC or length mismatch).
    #[error("corrupt data fetched from {topic}/{partition} near offset {offset}: {source}")]
    Corrupt {
        /// Topic read.
        topic: String,
        /// Partition read.
        partition: u32,
        /// The consumer's position when the bad batch was found.
        offset: u64,
        /// What is wrong.
        #[source]
        source: BatchError,
    },
    /// The broker answered something the protocol does not allow.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The producer was closed (or its background task ended) before the
    /// record could be sent.
    #[error("the producer is closed")]
    Closed,
}

impl Error {
    /// The broker's reason, for [`Error::Status`].
    pub fn reason(&self) -> Option<ErrorReason> {
        match self {
            Error::Status { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// True when trying again later may succeed: `UNAVAILABLE`, `NOT_LEADER`,
    /// `NOT_COORDINATOR`, `TIMEOUT`, transport errors, timeouts and failed connections.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Status { reason, .. } => matches!(
                reason,
                ErrorReason::Unavailable
                    | ErrorReason::NotLeader
                    | ErrorReason::NotCoordinator
                    | ErrorReason::Timeout
            ),
            Error::Connect { .. } | Error::Transport { .. } | Error::Timeout(_) => true,
            Error::InvalidArgument(_)
            | Error::Encode(_)
            | Error::Corrupt { .. }
            | Error::Protocol(_)
            | Error::Closed => false,
        }
    }

    /// An error with a reason raised by the client itself (same shape as the
    /// broker's, so callers branch on [`Error::reason`] alike).
    pub(crate) fn local(reason: ErrorReason, message: impl Into<String>) -> Error {
        Error::Status {
            reason,
            message: message.into(),
            leader_id: 0,
            leader_address: String::new(),
            status: None,
        }
    }

    /// Maps a failed gRPC call: a status with the `runnel-reason` trailer
    /// becomes [`Error::Status`], anything else [`Error::Transport`].
    /// A `NOT_LEADER` (`NOT_COORDINATOR`) status also names the leader (the
    /// group's coordinator), when the broker knows
    /// it, in the `leader_id` and `leader_address` metadata of its
    /// `google.rpc.ErrorInfo`.
    pub(crate) fn from_status(status: tonic::Status, address: &str) -> Error {
        match reason_of(&status) {
            Some(reason) => {
                let (leader_id, leader_address) = match reason {
                    ErrorReason::NotLeader | ErrorReason::NotCoordinator => leader_of(&status),
                    _ => (0, String::new()),
                };
                Error::Status {
                    reason,
                    message: status.message().to_string(),
                    leader_id,
                    leader_address,
                    status: Some(Arc::new(status)),
                }
            }
            None => {
                let message = if status.message().is_empty() {
                    format!("{:?}", status.code())
                } else {
                    format!("{:?}: {}", status.code(), status.message())
                };
                Error::Transport {
                    address: address.to_string(),
                    message: with_sources(message, &status),
                    status: Some(Arc::new(status)),
                }
            }
        }
    }

    /// For `NOT_LEADER`: the leader's node id (0 if unknown) and address
    /// (empty if unknown), as the broker named them.
    pub(crate) fn leader(&self) -> Option<(u32, &str)> {
        match self {
            Error::Status {
                reason: ErrorReason::NotLeader,
                leader_id,
                leader_address,
                ..
            } => Some((*leader_id, leader_address.as_str())),
            _ => None,
        }
    }

    /// True when the node could not be reached or the connection broke (as
    /// opposed to a node that answered, even with an error): the client then
    /// tries another node and refreshes its metadata.
    pub(crate) fn is_connection_error(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Timeout(_) => true,
            Error::Transport { status: None, .. } => true,
            Error::Transport {
                status: Some(status),
                ..
            } => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Internal
            ),
            _ => false,
        }
    }

    /// Maps the `Error` of one partition (or of a whole streamed request).
    pub(crate) fn from_proto(error: &runnel_proto::v1::Error) -> Error {
        Error::Status {
            reason: ErrorReason::try_from(error.reason).unwrap_or(ErrorReason::Unspecified),
            message: error.message.clone(),
            leader_id: error.leader_id,
            leader_address: error.leader_address.clone(),
            status: None,
        }
    }
}

/// The reason carried by a status's `runnel-reason` trailer, if any.
pub(crate) fn reason_of(status: &tonic::Status) -> Option<ErrorReason> {
    let value = status.metadata().get(REASON_METADATA_KEY)?.to_str().ok()?;
    ErrorReason::from_str_name(value.trim())
}

/// The leader named by a `NOT_LEADER` status's `google.rpc.ErrorInfo`.
fn leader_of(status: &tonic::Status) -> (u32, String) {
    let Some(info) = status.get_details_error_info() else {
        return (0, String::new());
    };
    let id = info
        .metadata
        .get("leader_id")
        .and_then(|id| id.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let address = info
        .metadata
        .get("leader_address")
        .map(|a| a.trim().to_string())
        .unwrap_or_default();
    (id, address)
}

/// `message` followed by the chain of `error`'s sources, for errors whose
/// own text is as vague as "transport error".
pub(crate) fn with_sources(mut message: String, error: &dyn std::error::Error) -> String {
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn status_with_reason(code: tonic::Code, reason: &str) -> tonic::Status {
        let mut status = tonic::Status::new(code, "broker says no");
        if let Ok(value) = MetadataValue::try_from(reason) {
            status.metadata_mut().insert(REASON_METADATA_KEY, value);
        }
        status
    }

    #[test]
    fn statuses_map_to_reasons() {
        // (case, code, trailer, reason, retriable)
        type Case = (
            u32,
            tonic::Code,
            Option<&'static str>,
            Option<ErrorReason>,
            bool,
        );
        let cases: &[Case] = &[
            (
                0,
                tonic::Code::NotFound,
                Some("UNKNOWN_TOPIC"),
                Some(ErrorReason::UnknownTopic),
                false,
            ),
            (
                1,
                tonic::Code::Unavailable,
                Some("UNAVAILABLE"),
                Some(ErrorReason::Unavailable),
                true,
            ),
            (
                2,
                tonic::Code::FailedPrecondition,
                Some("NOT_LEADER"),
                Some(ErrorReason::NotLeader),
                true,
            ),
            (
                3,
                tonic::Code::OutOfRange,
                Some("OFFSET_OUT_OF_RANGE"),
                Some(ErrorReason::OffsetOutOfRange),
                false,
            ),
            (4, tonic::Code::Unavailable, None, None, true),
            (5, tonic::Code::Internal, Some("NO_SUCH_REASON"), None, true),
            (
                6,
                tonic::Code::DeadlineExceeded,
                Some("TIMEOUT"),
                Some(ErrorReason::Timeout),
                true,
            ),
        ];
        for (case, code, trailer, reason, retriable) in cases {
            let status = match trailer {
                Some(t) => status_with_reason(*code, t),
                None => tonic::Status::new(*code, "connection reset"),
            };
            let error = Error::from_status(status, "127.0.0.1:9740");
            assert_eq!(error.reason(), *reason, "case {case}");
            assert_eq!(error.is_retriable(), *retriable, "case {case}");
        }
    }

    #[test]
    fn status_message_is_kept() {
        let error = Error::from_status(
            status_with_reason(tonic::Code::NotFound, "UNKNOWN_TOPIC"),
            "a:1",
        );
        assert_eq!(error.to_string(), "broker says no (UNKNOWN_TOPIC)");
        let transport = Error::from_status(tonic::Status::unavailable("gone"), "a:1");
        assert_eq!(
            transport.to_string(),
            "transport error talking to a:1: Unavailable: gone"
        );
    }

    #[test]
    fn not_leader_statuses_name_the_leader() {
        // (case, leader_id metadata, leader_address metadata, expected)
        type Case<'a> = (u32, Option<&'a str>, Option<&'a str>, (u32, &'a str));
        let cases: &[Case] = &[
            (0, Some("2"), Some("h:2"), (2, "h:2")),
            (1, Some("0"), Some(""), (0, "")),
            (2, None, None, (0, "")),
            (3, Some("x"), Some("h:3"), (0, "h:3")),
        ];
        for (case, id, address, want) in cases {
            let mut info = std::collections::HashMap::new();
            if let Some(id) = id {
                info.insert("leader_id".to_string(), id.to_string());
            }
            if let Some(address) = address {
                info.insert("leader_address".to_string(), address.to_string());
            }
            let details = tonic_types::ErrorDetails::with_error_info(
                "NOT_LEADER",
                runnel_proto::ERROR_DOMAIN,
                info,
            );
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert(
                REASON_METADATA_KEY,
                MetadataValue::from_static("NOT_LEADER"),
            );
            let status = tonic::Status::with_error_details_and_metadata(
                tonic::Code::FailedPrecondition,
                "not the leader",
                details,
                metadata,
            );
            let error = Error::from_status(status, "a:1");
            assert_eq!(error.leader(), Some(*want), "case {case}");
            assert!(!error.is_connection_error(), "case {case}");
        }
        let refused = Error::from_status(tonic::Status::unavailable("tcp connect error"), "a:1");
        assert!(refused.is_connection_error());
        assert_eq!(refused.leader(), None);
        let unimplemented = Error::from_status(tonic::Status::unimplemented(""), "a:1");
        assert!(!unimplemented.is_connection_error());
    }

    #[test]
    fn partition_errors_map_to_reasons() {
        let proto = runnel_proto::v1::Error {
            reason: ErrorReason::NotLeader as i32,
            message: "node 2 leads".into(),
            leader_id: 2,
            leader_address: "h:1".into(),
        };
        let error = Error::from_proto(&proto);
        assert_eq!(error.reason(), Some(ErrorReason::NotLeader));
        assert!(error.is_retriable());
        let unknown = runnel_proto::v1::Error {
            reason: 999,
            ..Default::default()
        };
        assert_eq!(
            Error::from_proto(&unknown).reason(),
            Some(ErrorReason::Unspecified)
        );
    }
}
