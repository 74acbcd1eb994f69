use std::ops::Range;

use crate::BatchError;

/// Format version written by this build (the `format_version` byte).
pub const FORMAT_VERSION: u8 = 1;

/// Size of the fixed batch header in bytes.
pub const HEADER_LEN: usize = 73;

/// First byte covered by the CRC: everything from `format_version` to the end
/// of the batch.
pub const CRC_START: usize = CRC.end;

/// Length of the prefix owned by the broker and storage (base offset, batch
/// length, Raft term, Raft index): the bytes before the CRC field.
pub const STAMPED_LEN: usize = CRC.start;

// Byte ranges of the fixed header fields. Nothing outside this crate knows them.
const BASE_OFFSET: Range<usize> = 0..8;
const BATCH_LEN: Range<usize> = 8..12;
const RAFT_TERM: Range<usize> = 12..20;
const RAFT_INDEX: Range<usize> = 20..28;
const CRC: Range<usize> = 28..32;
const FORMAT_VERSION_AT: usize = 32;
const ATTRIBUTES: Range<usize> = 33..35;
const LAST_OFFSET_DELTA: Range<usize> = 35..39;
const FIRST_TIMESTAMP: Range<usize> = 39..47;
const MAX_TIMESTAMP: Range<usize> = 47..55;
const PRODUCER_ID: Range<usize> = 55..63;
const PRODUCER_EPOCH: Range<usize> = 63..65;
const BASE_SEQUENCE: Range<usize> = 65..69;
const RECORD_COUNT: Range<usize> = 69..73;

const _: () = assert!(RECORD_COUNT.end == HEADER_LEN);

/// The fixed header at the start of every batch.
///
/// Byte layout, little-endian, 73 bytes:
///
/// | bytes  | field               | type | written by | notes |
/// |--------|---------------------|------|------------|-------|
/// | 0..8   | `base_offset`       | u64  | storage    | offset of the first record |
/// | 8..12  | `batch_len`         | u32  | producer   | total bytes of the batch, header included |
/// | 12..20 | `raft_term`         | u64  | leader     | term of the leader that appended the batch |
/// | 20..28 | `raft_index`        | u64  | leader     | Raft entry index: one batch is one entry |
/// | 28..32 | `crc`               | u32  | producer   | CRC-32 (crc32fast, IEEE) of bytes `32..batch_len` |
/// | 32     | `format_version`    | u8   | producer   | [`FORMAT_VERSION`] |
/// | 33..35 | `attributes`        | u16  | producer   | see [`Attributes`] |
/// | 35..39 | `last_offset_delta` | u32  | producer   | `record_count - 1` |
/// | 39..47 | `first_timestamp`   | i64  | producer   | ms since the epoch of the first record |
/// | 47..55 | `max_timestamp`     | i64  | producer   | largest record timestamp (ms) |
/// | 55..63 | `producer_id`       | i64  | producer   | -1 when not idempotent |
/// | 63..65 | `producer_epoch`    | i16  | producer   | -1 when not idempotent |
/// | 65..69 | `base_sequence`     | i32  | producer   | -1 when not idempotent |
/// | 69..73 | `record_count`      | u32  | producer   | at least 1 |
///
/// The records follow (see [`crate::RecordView`]), compressed as one block
/// when the attributes say so.
///
/// The CRC covers every byte after the CRC field: exactly what the producer
/// wrote. The fields before it are stamped by the broker, so the client
/// computes the CRC once, the broker verifies it on receipt and on recovery,
/// and nobody recomputes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record in the partition.
    pub base_offset: u64,
    /// Total length of the batch in bytes, header included.
    pub batch_len: u32,
    /// Raft term of the leader that appended this batch.
    pub raft_term: u64,
    /// Raft log index of this batch (one batch is one Raft entry).
    pub raft_index: u64,
    /// CRC-32 of bytes `CRC_START..batch_len`.
    pub crc: u32,
    /// Format version; always [`FORMAT_VERSION`] for a parsed header.
    pub format_version: u8,
    /// Compression, timestamp type and control flag.
    pub attributes: Attributes,
    /// `record_count - 1`: the last record's offset relative to `base_offset`.
    pub last_offset_delta: u32,
    /// Timestamp of the first record (ms since the Unix epoch).
    pub first_timestamp: i64,
    /// Largest record timestamp in the batch (ms since the Unix epoch).
    pub max_timestamp: i64,
    /// Idempotent producer id, -1 if none.
    pub producer_id: i64,
    /// Idempotent producer epoch, -1 if none.
    pub producer_epoch: i16,
    /// Sequence number of the first record, -1 if none.
    pub base_sequence: i32,
    /// Number of records; every batch has at least one.
    pub record_count: u32,
}

fn le<const N: usize>(buf: &[u8], range: Range<usize>) -> [u8; N] {
    // Callers check `buf.len() >= HEADER_LEN` first; ranges are constants.
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[range]);
    out
}

impl BatchHeader {
    /// Parses and sanity-checks the fixed header at the start of `buf`.
    ///
    /// Does not check the CRC (that needs the whole batch: see
    /// [`crate::BatchView::new`]); `buf` may be shorter than `batch_len`.
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated {
                needed: HEADER_LEN,
                available: buf.len(),
            });
        }
        let version = buf[FORMAT_VERSION_AT];
        let h = BatchHeader {
            base_offset: u64::from_le_bytes(le(buf, BASE_OFFSET)),
            batch_len: u32::from_le_bytes(le(buf, BATCH_LEN)),
            raft_term: u64::from_le_bytes(le(buf, RAFT_TERM)),
            raft_index: u64::from_le_bytes(le(buf, RAFT_INDEX)),
            crc: u32::from_le_bytes(le(buf, CRC)),
            format_version: version,
            attributes: Attributes(u16::from_le_bytes(le(buf, ATTRIBUTES))),
            last_offset_delta: u32::from_le_bytes(le(buf, LAST_OFFSET_DELTA)),
            first_timestamp: i64::from_le_bytes(le(buf, FIRST_TIMESTAMP)),
            max_timestamp: i64::from_le_bytes(le(buf, MAX_TIMESTAMP)),
            producer_id: i64::from_le_bytes(le(buf, PRODUCER_ID)),
            producer_epoch: i16::from_le_bytes(le(buf, PRODUCER_EPOCH)),
            base_sequence: i32::from_le_bytes(le(buf, BASE_SEQUENCE)),
            record_count: u32::from_le_bytes(le(buf, RECORD_COUNT)),
        };
        // Length first: a zeroed (preallocated, never written) region reads as
        // batch_len 0 and must be reported as such, not as a version problem.
        if (h.batch_len as usize) < HEADER_LEN {
            return Err(BatchError::InvalidHeader(
                "batch_len smaller than the header",
            ));
        }
        if version != FORMAT_VERSION {
            return Err(BatchError::UnsupportedVersion(version));
        }
        if h.record_count == 0 {
            return Err(BatchError::InvalidHeader("record_count is 0"));
        }
        if h.last_offset_delta != h.record_count - 1 {
            return Err(BatchError::InvalidHeader(
                "last_offset_delta is not record_count - 1",
            ));
        }
        h.attributes.compression()?;
        // base_offset is stamped outside the CRC, so it may be corrupt: make
        // sure `last_offset` / `next_offset` cannot overflow.
        if h.base_offset.checked_add(h.record_count.into()).is_none() {
            return Err(BatchError::InvalidHeader(
                "base_offset + record_count overflows",
            ));
        }
        Ok(h)
    }

    /// Offset of the last record (inclusive).
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.last_offset_delta)
    }

    /// Offset one past the last record.
    pub fn next_offset(&self) -> u64 {
        self.last_offset() + 1
    }
}

/// Reads `batch_len` from the start of `buf`, if at least 12 bytes are there.
pub fn batch_len(buf: &[u8]) -> Option<u32> {
    buf.get(BATCH_LEN)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Writes the broker-owned fields (base offset, Raft term, Raft index) into a
/// batch in place. They lie before the CRC, so the CRC stays valid.
///
/// # Panics
/// If `batch` is shorter than [`STAMPED_LEN`]; callers pass verified batches.
pub fn stamp(batch: &mut [u8], base_offset: u64, raft_term: u64, raft_index: u64) {
    batch[BASE_OFFSET].copy_from_slice(&base_offset.to_le_bytes());
    batch[RAFT_TERM].copy_from_slice(&raft_term.to_le_bytes());
    batch[RAFT_INDEX].copy_from_slice(&raft_index.to_le_bytes());
}

/// The first [`STAMPED_LEN`] bytes of `batch` as they are after [`stamp`]:
/// lets storage write a received batch without copying or mutating it
/// (write this prefix, then `batch[STAMPED_LEN..]`).
///
/// # Panics
/// If `batch` is shorter than [`STAMPED_LEN`]; callers pass verified batches.
pub fn stamped_prefix(
    batch: &[u8],
    base_offset: u64,
    raft_term: u64,
    raft_index: u64,
) -> [u8; STAMPED_LEN] {
    let mut prefix = [0u8; STAMPED_LEN];
    prefix.copy_from_slice(&batch[..STAMPED_LEN]);
    stamp(&mut prefix, base_offset, raft_term, raft_index);
    prefix
}

/// Writes a header into `buf[..HEADER_LEN]`, leaving the CRC field zero.
pub(crate) fn write_header(buf: &mut [u8], h: &BatchHeader) {
    buf[BASE_OFFSET].copy_from_slice(&h.base_offset.to_le_bytes());
    buf[BATCH_LEN].copy_from_slice(&h.batch_len.to_le_bytes());
    buf[RAFT_TERM].copy_from_slice(&h.raft_term.to_le_bytes());
    buf[RAFT_INDEX].copy_from_slice(&h.raft_index.to_le_bytes());
    buf[CRC].copy_from_slice(&0u32.to_le_bytes());
    buf[FORMAT_VERSION_AT] = h.format_version;
    buf[ATTRIBUTES].copy_from_slice(&h.attributes.0.to_le_bytes());
    buf[LAST_OFFSET_DELTA].copy_from_slice(&h.last_offset_delta.to_le_bytes());
    buf[FIRST_TIMESTAMP].copy_from_slice(&h.first_timestamp.to_le_bytes());
    buf[MAX_TIMESTAMP].copy_from_slice(&h.max_timestamp.to_le_bytes());
    buf[PRODUCER_ID].copy_from_slice(&h.producer_id.to_le_bytes());
    buf[PRODUCER_EPOCH].copy_from_slice(&h.producer_epoch.to_le_bytes());
    buf[BASE_SEQUENCE].copy_from_slice(&h.base_sequence.to_le_bytes());
    buf[RECORD_COUNT].copy_from_slice(&h.record_count.to_le_bytes());
}

/// Computes the CRC over `buf[CRC_START..]` and stores it in the header.
pub(crate) fn seal_crc(buf: &mut [u8]) -> u32 {
    let crc = crc32fast::hash(&buf[CRC_START..]);
    buf[CRC].copy_from_slice(&crc.to_le_bytes());
    crc
}

/// Compression codec of a batch's records section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Records stored as is.
    #[default]
    None,
    /// LZ4 block format (lz4_flex), prefixed by the decompressed size (u32 LE).
    Lz4,
    /// One Zstandard frame.
    Zstd,
}

impl Compression {
    fn bits(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }
}

/// Timestamp semantics of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    /// Timestamps set by the producer.
    CreateTime,
    /// Timestamps set by the broker on append.
    LogAppendTime,
}

/// The `attributes` bit field.
///
/// | bits | meaning |
/// |------|---------|
/// | 0..3 | compression: 0 none, 1 lz4, 2 zstd |
/// | 3    | timestamp type: 0 create time, 1 log-append time |
/// | 4    | control batch (Raft no-op, configuration change): skipped by consumers |
/// | 5..16| reserved, zero |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attributes(pub u16);

impl Attributes {
    const COMPRESSION_MASK: u16 = 0b111;
    const TIMESTAMP_TYPE: u16 = 1 << 3;
    const CONTROL: u16 = 1 << 4;

    /// Builds attributes from their parts.
    pub fn new(compression: Compression, timestamp_type: TimestampType, control: bool) -> Self {
        let mut bits = compression.bits();
        if timestamp_type == TimestampType::LogAppendTime {
            bits |= Self::TIMESTAMP_TYPE;
        }
        if control {
            bits |= Self::CONTROL;
        }
        Attributes(bits)
    }

    /// The compression codec; an error for unknown codec bits.
    pub fn compression(self) -> Result<Compression, BatchError> {
        match self.0 & Self::COMPRESSION_MASK {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Lz4),
            2 => Ok(Compression::Zstd),
            other => Err(BatchError::UnknownCompression(other)),
        }
    }

    /// The timestamp type.
    pub fn timestamp_type(self) -> TimestampType {
        if self.0 & Self::TIMESTAMP_TYPE != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    /// True for a control batch.
    pub fn is_control(self) -> bool {
        self.0 & Self::CONTROL != 0
    }
}
