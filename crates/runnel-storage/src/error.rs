use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Everything a log operation can fail with.
///
/// Expected outcomes (`OffsetOutOfRange`, `Compacted`, `Unavailable`,
/// `BatchTooLarge`) are kept apart from I/O failures and corruption.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The requested offset is below the log start or above the log end.
    #[error("offset {offset} out of range: the log holds [{log_start}, {log_end})")]
    OffsetOutOfRange {
        /// Offset asked for.
        offset: u64,
        /// First readable offset.
        log_start: u64,
        /// Offset the next append will get.
        log_end: u64,
    },
    /// The Raft entry was removed by retention or truncation from the front.
    #[error("raft index {index} is compacted: the log starts at index {first_index}")]
    Compacted {
        /// Index asked for.
        index: u64,
        /// First index still stored.
        first_index: u64,
    },
    /// The Raft entry is not in the log yet.
    #[error("raft index {index} is not available: the last index is {last_index}")]
    Unavailable {
        /// Index asked for.
        index: u64,
        /// Last stored index.
        last_index: u64,
    },
    /// The batch exceeds the configured maximum.
    #[error("batch of {size} bytes exceeds the maximum of {max} bytes")]
    BatchTooLarge {
        /// Size of the batch.
        size: usize,
        /// Configured limit (`max_batch_bytes`).
        max: usize,
    },
    /// The bytes handed to `append` are not a valid batch.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] runnel_batch::BatchError),
    /// An append or truncation that breaks the log's invariants (a gap in
    /// Raft indexes, a term going backwards, a cut inside a batch or below
    /// the log start).
    #[error("invalid operation: {0}")]
    Invalid(String),
    /// Stored bytes failed verification.
    #[error("corrupt data in {} at byte {position}: {reason}", path.display())]
    Corrupt {
        /// File holding the bad bytes.
        path: PathBuf,
        /// Byte position in that file.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// An I/O call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (e.g. "write", "fsync", "open").
        op: &'static str,
        /// File or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An earlier fsync or write failure left the log in an unknown state;
    /// it refuses all further writes until reopened (never retried, never
    /// ignored: see the crate docs).
    #[error("log {} is failed after an earlier I/O error and must be reopened: {reason}", path.display())]
    Failed {
        /// The partition directory.
        path: PathBuf,
        /// The error that failed it.
        reason: String,
    },
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, position: u64, reason: impl ToString) -> Self {
        StorageError::Corrupt {
            path: path.into(),
            position,
            reason: reason.to_string(),
        }
    }

    /// True when the error is the disk being full (ENOSPC or EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT)
            ),
            _ => false,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
