//! The client's error type and how broker failures map onto it.

use std::sync::Arc;
use std::time::Duration;

use runnel_batch::BatchError;
use runnel_proto::REASON_METADATA_KEY;
use runnel_proto::v1::ErrorReason;

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
    /// `TIMEOUT`, transport errors, timeouts and failed connections.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Status { reason, .. } => matches!(
                reason,
                ErrorReason::Unavailable | ErrorReason::NotLeader | ErrorReason::Timeout
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
    pub(crate) fn from_status(status: tonic::Status, address: &str) -> Error {
        match reason_of(&status) {
            Some(reason) => Error::Status {
                reason,
                message: status.message().to_string(),
                leader_id: 0,
                leader_address: String::new(),
                status: Some(Arc::new(status)),
            },
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
