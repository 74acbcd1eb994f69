use bytes::{Bytes, BytesMut};

use crate::header::{seal_crc, write_header};
use crate::varint::{put_uvarint, put_varint};
use crate::{
    Attributes, BatchError, BatchHeader, Compression, ControlKind, FORMAT_VERSION, HEADER_LEN,
    TimestampType,
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
        BatchBuilder {
            compression,
            control: false,
            records: Vec::new(),
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

    /// Appends one record.
    pub fn push(&mut self, record: NewRecord<'_>) {
        if self.count == 0 {
            self.first_timestamp = record.timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(record.timestamp);
        let mut body = Vec::with_capacity(16 + record.value.len());
        body.push(0u8); // attributes
        put_varint(
            &mut body,
            record.timestamp.wrapping_sub(self.first_timestamp),
        );
        put_uvarint(&mut body, u64::from(self.count));
        match record.key {
            None => put_varint(&mut body, -1),
            Some(k) => {
                put_varint(&mut body, k.len() as i64);
                body.extend_from_slice(k);
            }
        }
        put_uvarint(&mut body, record.value.len() as u64);
        body.extend_from_slice(record.value);
        put_uvarint(&mut body, record.headers.len() as u64);
        for (name, value) in record.headers {
            put_uvarint(&mut body, name.len() as u64);
            body.extend_from_slice(name.as_bytes());
            put_uvarint(&mut body, value.len() as u64);
            body.extend_from_slice(value);
        }
        put_uvarint(&mut self.records, body.len() as u64);
        self.records.extend_from_slice(&body);
        self.count += 1;
    }

    /// Number of records pushed so far.
    pub fn record_count(&self) -> u32 {
        self.count
    }

    /// Encoded size so far before compression, header included.
    pub fn estimated_len(&self) -> usize {
        HEADER_LEN + self.records.len()
    }

    /// Encodes the batch with its CRC. Offsets, term and index are zero until
    /// storage stamps them.
    pub fn finish(self) -> Result<Bytes, BatchError> {
        if self.count == 0 {
            return Err(BatchError::Empty);
        }
        let body: Vec<u8> = match self.compression {
            Compression::None => self.records,
            Compression::Lz4 => {
                if self.records.len() > u32::MAX as usize {
                    return Err(BatchError::TooLarge("records section exceeds 4 GiB"));
                }
                lz4_flex::block::compress_prepend_size(&self.records)
            }
            Compression::Zstd => zstd::bulk::compress(&self.records, 1)
                .map_err(|e| BatchError::Compress(e.to_string()))?,
        };
        let total = HEADER_LEN + body.len();
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
        let mut buf = BytesMut::zeroed(total);
        write_header(&mut buf, &header);
        buf[HEADER_LEN..].copy_from_slice(&body);
        seal_crc(&mut buf);
        Ok(buf.freeze())
    }
}
