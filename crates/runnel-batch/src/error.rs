use thiserror::Error;

/// Why bytes are not a valid batch (or a batch could not be built).
///
/// Every decoding failure of untrusted bytes is one of these: decoding never
/// panics.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The buffer ends before the batch (or a field) does.
    #[error("truncated batch: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes required.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The format version byte is not one this build understands.
    #[error("unsupported batch format version {0} (this build reads version 1)")]
    UnsupportedVersion(u8),
    /// The CRC stored in the header does not match the bytes.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC read from the header.
        stored: u32,
        /// CRC computed over the bytes.
        computed: u32,
    },
    /// A header field holds an impossible value.
    #[error("invalid batch header: {0}")]
    InvalidHeader(&'static str),
    /// The compression bits name no known codec.
    #[error("unknown compression codec {0}")]
    UnknownCompression(u16),
    /// A record inside the batch is malformed.
    #[error("corrupt record {index}: {reason}")]
    CorruptRecord {
        /// Position of the record within the batch (0-based).
        index: u32,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The compressed records section could not be decompressed.
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// The records section could not be compressed.
    #[error("compression failed: {0}")]
    Compress(String),
    /// The batch would exceed the format's limits.
    #[error("batch too large: {0}")]
    TooLarge(&'static str),
    /// Bytes follow the batch where exactly one batch was expected.
    #[error("{trailing} bytes follow the batch of {batch_len} bytes: send exactly one batch")]
    TrailingBytes {
        /// Length of the batch, from its header.
        batch_len: usize,
        /// Bytes after it.
        trailing: usize,
    },
    /// A builder was finished with no records: every batch holds at least one.
    #[error("a batch needs at least one record")]
    Empty,
}
