use bytes::Bytes;

use crate::header::{seal_crc, write_header};
use crate::varint::{put_uvarint, put_varint, uvarint_len, varint_len};
use crate::{
    Attributes, BatchError, BatchHeader, Compression, ControlKind, FORMAT_VERSION, HEADER_LEN,
    TimestampType, VerifiedBatch,
};

/// A record to encode: what a producer hands to [`BatchBuilder::push`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NewRecord<'a> {
    /// Optional key (used by the partitioner and by compaction).
    pub key: Option<&'a [u8]>,
    /// The payload.
    pub value: &'a [u8],
    /// `(name, value)` headers.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// Timestamp in ms since the Unix epoch.
    pub timestamp: i64,
}

/// Encodes records into one batch.
///
/// ```
/// use runnel_batch::{BatchBuilder, BatchView, Compression, NewRecord};
/// let mut b = BatchBuilder::new(Compression::None);
/// b.push(NewRecord { key: Some(b"k"), value: b"v", headers: &[], timestamp: 7 });
/// let bytes = b.finish().unwrap();
/// let view = BatchView::new(&bytes).unwrap();
/// assert_eq!(view.header().record_count, 1);
/// ```
#[derive(Clone, Debug)]
pub struct BatchBuilder {
    compression: Compression,
    control: bool,
    records: Vec<u8>,
    count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

impl BatchBuilder {
    /// An empty builder whose records section will use `compression`.
    pub fn new(compression: Compression) -> Self {
        Self::with_capacity(compression, 0)
    }

    /// An empty builder with room for `bytes` of encoded records, so a
    /// batch of known size grows without reallocating.
    pub fn with_capacity(compression: Compression, bytes: usize) -> Self {
        let mut records = Vec::with_capacity(HEADER_LEN + bytes);
        // The header is written in front of the records at `finish`; an
        // uncompressed batch is then frozen in place, never copied.
        records.resize(HEADER_LEN, 0);
        BatchBuilder {
            compression,
            control: false,
            records,
            count: 0,
            first_timestamp: 0,
            max_timestamp: i64::MIN,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }

    /// A finished control batch of one record: key = `kind`, value = `payload`.
    pub fn control(kind: ControlKind, payload: &[u8], timestamp: i64) -> Result<Bytes, BatchError> {
        let mut b = BatchBuilder::new(Compression::None);
        b.control = true;
        let key = kind.code().to_le_bytes();
        b.push(NewRecord {
            key: Some(&key),
            value: payload,
            headers: &[],
            timestamp,
        });
        b.finish()
    }

    /// Sets the idempotent-producer fields.
    pub fn producer(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> &mut Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Appends one record, encoding it straight into the batch buffer (no
    /// intermediate copy).
    pub fn push(&mut self, record: NewRecord<'_>) {
        if self.count == 0 {
            self.first_timestamp = record.timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(record.timestamp);
        let delta = record.timestamp.wrapping_sub(self.first_timestamp);
        let key_len = record.key.map_or(-1, |k| k.len() as i64);
        let mut body_len = 1
            + varint_len(delta)
            + uvarint_len(u64::from(self.count))
            + varint_len(key_len)
            + record.key.map_or(0, <[u8]>::len)
            + uvarint_len(record.value.len() as u64)
            + record.value.len()
            + uvarint_len(record.headers.len() as u64);
        for (name, value) in record.headers {
            body_len += uvarint_len(name.len() as u64)
                + name.len()
                + uvarint_len(value.len() as u64)
                + value.len();
        }
        let out = &mut self.records;
        out.reserve(uvarint_len(body_len as u64) + body_len);
        put_uvarint(out, body_len as u64);
        out.push(0u8); // attributes
        put_varint(out, delta);
        put_uvarint(out, u64::from(self.count));
        put_varint(out, key_len);
        if let Some(k) = record.key {
            out.extend_from_slice(k);
        }
        put_uvarint(out, record.value.len() as u64);
        out.extend_from_slice(record.value);
        put_uvarint(out, record.headers.len() as u64);
        for (name, value) in record.headers {
            put_uvarint(out, name.len() as u64);
            out.extend_from_slice(name.as_bytes());
            put_uvarint(out, value.len() as u64);
            out.extend_from_slice(value);
        }
        self.count += 1;
    }

    /// Number of records pushed so far.
    pub fn record_count(&self) -> u32 {
        self.count
    }

    /// Encoded size so far before compression, header included.
    pub fn estimated_len(&self) -> usize {
        self.records.len()
    }

    /// Encodes the batch with its CRC. Offsets, term and index are zero until
    /// storage stamps them.
    pub fn finish(self) -> Result<Bytes, BatchError> {
        self.finish_verified().map(|b| b.bytes().clone())
    }

    /// [`BatchBuilder::finish`] as a [`VerifiedBatch`]: this crate encoded
    /// it, so it is not checked again on its way into storage.
    pub fn finish_verified(self) -> Result<VerifiedBatch, BatchError> {
        if self.count == 0 {
            return Err(BatchError::Empty);
        }
        let records = &self.records[HEADER_LEN..];
        let mut buf: Vec<u8> = match self.compression {
            Compression::None => self.records,
            Compression::Lz4 => {
                if records.len() > u32::MAX as usize {
                    return Err(BatchError::TooLarge("records section exceeds 4 GiB"));
                }
                let mut buf = vec![0u8; HEADER_LEN];
                buf.extend_from_slice(&lz4_flex::block::compress_prepend_size(records));
                buf
            }
            Compression::Zstd => {
                let mut buf = vec![0u8; HEADER_LEN];
                buf.extend_from_slice(
                    &zstd::bulk::compress(records, 1)
                        .map_err(|e| BatchError::Compress(e.to_string()))?,
                );
                buf
            }
        };
        let total = buf.len();
        let batch_len =
            u32::try_from(total).map_err(|_| BatchError::TooLarge("batch exceeds 4 GiB"))?;
        let header = BatchHeader {
            base_offset: 0,
            batch_len,
            raft_term: 0,
            raft_index: 0,
            crc: 0,
            format_version: FORMAT_VERSION,
            attributes: Attributes::new(self.compression, TimestampType::CreateTime, self.control),
            last_offset_delta: self.count - 1,
            first_timestamp: self.first_timestamp,
            max_timestamp: self.max_timestamp,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            record_count: self.count,
        };
        write_header(&mut buf, &header);
        let crc = seal_crc(&mut buf);
        Ok(VerifiedBatch::encoded(
            BatchHeader { crc, ..header },
            Bytes::from(buf),
        ))
    }
}
