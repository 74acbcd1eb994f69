//! The Runnel record batch format: encode, decode, checksum, zero-copy views.
//!
//! A **batch** is the unit of everything in Runnel: produced, replicated,
//! stored, fetched and checksummed as one piece. This crate owns its byte
//! layout and nothing else: it does no I/O, knows no files, sockets or Raft.
//! Storage stores these bytes, the client builds them, the broker stamps and
//! serves them, and nobody outside this crate knows an offset into a header.
//!
//! - [`BatchBuilder`] encodes records into a batch (optionally compressed),
//!   computing the CRC once.
//! - [`BatchView`] is a verified, zero-copy view of stored batch bytes (for
//!   example straight from a memory-mapped segment).
//! - [`BatchHeader`] parses the fixed header alone, for scans and indexes.
//! - [`stamp`] / [`stamped_prefix`] write the broker-owned fields (base offset,
//!   Raft term, Raft index), which lie before the CRC and are not covered by it.
//!
//! The byte layout is documented on [`BatchHeader`] and on [`RecordView`].

#![deny(missing_docs)]

mod builder;
mod error;
mod header;
pub mod partitioner;
mod records;
mod varint;

pub use builder::{BatchBuilder, NewRecord};
use bytes::Bytes;
pub use error::BatchError;
pub use header::{
    Attributes, BatchHeader, CRC_START, Compression, FORMAT_VERSION, HEADER_LEN, STAMPED_LEN,
    TimestampType, batch_len, stamp, stamped_prefix,
};
pub use records::{ControlKind, HeaderIter, RecordIter, RecordView, Records};

/// Largest decompressed records section accepted from a compressed batch.
///
/// Guards against a small batch that claims to expand to gigabytes.
pub const MAX_DECOMPRESSED_LEN: usize = 256 << 20;

/// A verified, zero-copy view of one stored batch.
///
/// Constructing it checks the header (version, lengths, record count) and the
/// CRC over every byte after the CRC field, so a `BatchView` never exposes
/// corrupt data. The bytes are borrowed, typically from a memory map.
#[derive(Clone, Copy, Debug)]
pub struct BatchView<'a> {
    header: BatchHeader,
    bytes: &'a [u8],
}

/// An owned batch whose header and CRC were verified (or which
/// [`BatchBuilder`] encoded), so nobody downstream checks it again.
///
/// The produce path verifies a batch once on receipt, hands this to the
/// log, and the log writes it without recomputing the CRC. Cheap to clone
/// (the bytes are shared).
#[derive(Clone, Debug)]
pub struct VerifiedBatch {
    header: BatchHeader,
    bytes: Bytes,
}

impl VerifiedBatch {
    /// Verifies `bytes` as exactly one batch (header, lengths, CRC); bytes
    /// after the batch are an error.
    pub fn new(bytes: Bytes) -> Result<Self, BatchError> {
        let header = *BatchView::new(&bytes)?.header();
        if header.batch_len as usize != bytes.len() {
            return Err(BatchError::TrailingBytes {
                batch_len: header.batch_len as usize,
                trailing: bytes.len() - header.batch_len as usize,
            });
        }
        Ok(VerifiedBatch { header, bytes })
    }

    /// A batch this crate just encoded, with its header.
    pub(crate) fn encoded(header: BatchHeader, bytes: Bytes) -> Self {
        VerifiedBatch { header, bytes }
    }

    /// A view of the batch, without verifying it again.
    pub fn view(&self) -> BatchView<'_> {
        BatchView {
            header: self.header,
            bytes: &self.bytes,
        }
    }

    /// The parsed fixed header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch's bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a batch holds at least its header and one record.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl<'a> BatchView<'a> {
    /// Verifies the batch at the start of `buf` and returns a view of exactly
    /// its `batch_len` bytes (trailing bytes in `buf` are ignored).
    pub fn new(buf: &'a [u8]) -> Result<Self, BatchError> {
        let header = BatchHeader::parse(buf)?;
        let len = header.batch_len as usize;
        if buf.len() < len {
            return Err(BatchError::Truncated {
                needed: len,
                available: buf.len(),
            });
        }
        let bytes = &buf[..len];
        let computed = crc32fast::hash(&bytes[CRC_START..]);
        if computed != header.crc {
            return Err(BatchError::CrcMismatch {
                stored: header.crc,
                computed,
            });
        }
        Ok(BatchView { header, bytes })
    }

    /// The parsed fixed header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// All bytes of the batch, header included, exactly as stored.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Offset of the first record.
    pub fn base_offset(&self) -> u64 {
        self.header.base_offset
    }

    /// Offset of the last record (inclusive).
    pub fn last_offset(&self) -> u64 {
        self.header.last_offset()
    }

    /// Offset one past the last record: where the next batch starts.
    pub fn next_offset(&self) -> u64 {
        self.header.next_offset()
    }

    /// True for control batches (Raft no-ops, configuration changes), which
    /// consumers skip.
    pub fn is_control(&self) -> bool {
        self.header.attributes.is_control()
    }

    /// The records section, decompressed if needed.
    ///
    /// Uncompressed batches borrow from the view; compressed ones allocate.
    pub fn records(&self) -> Result<Records<'a>, BatchError> {
        Records::decode(&self.header, &self.bytes[HEADER_LEN..])
    }
}

/// Iterates over consecutive batches in a buffer, verifying each.
///
/// Stops at the end of the buffer; an incomplete or corrupt batch yields one
/// error and ends the iteration.
#[derive(Clone, Debug)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    position: usize,
    failed: bool,
}

impl<'a> BatchIter<'a> {
    /// A new iterator over `buf`, which must start at a batch boundary.
    pub fn new(buf: &'a [u8]) -> Self {
        BatchIter {
            buf,
            position: 0,
            failed: false,
        }
    }

    /// Byte position in the buffer of the next batch to be returned.
    pub fn position(&self) -> usize {
        self.position
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<BatchView<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.position >= self.buf.len() {
            return None;
        }
        match BatchView::new(&self.buf[self.position..]) {
            Ok(view) => {
                self.position += view.as_bytes().len();
                Some(Ok(view))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests;
