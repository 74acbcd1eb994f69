use std::borrow::Cow;

use crate::varint::{get_uvarint, get_varint};
use crate::{BatchError, BatchHeader, Compression, MAX_DECOMPRESSED_LEN};

/// Kind of a control batch, stored as the key of its single record
/// (`u16` little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlKind {
    /// An empty Raft entry (a new leader's no-op). The value is empty.
    RaftNoop,
    /// A Raft configuration change. The value is the encoded change.
    RaftConfChange,
    /// A kind this build does not know (from a newer version).
    Other(u16),
}

impl ControlKind {
    /// The on-disk code.
    pub fn code(self) -> u16 {
        match self {
            ControlKind::RaftNoop => 0,
            ControlKind::RaftConfChange => 1,
            ControlKind::Other(c) => c,
        }
    }

    /// Parses a control record key.
    pub fn from_key(key: &[u8]) -> Option<Self> {
        let code = u16::from_le_bytes(key.try_into().ok()?);
        Some(match code {
            0 => ControlKind::RaftNoop,
            1 => ControlKind::RaftConfChange,
            c => ControlKind::Other(c),
        })
    }
}

/// The decoded records section of a batch: borrowed when uncompressed,
/// owned after decompression.
#[derive(Clone, Debug)]
pub struct Records<'a> {
    data: Cow<'a, [u8]>,
    count: u32,
    first_timestamp: i64,
}

impl<'a> Records<'a> {
    pub(crate) fn decode(header: &BatchHeader, body: &'a [u8]) -> Result<Self, BatchError> {
        let data = match header.attributes.compression()? {
            Compression::None => Cow::Borrowed(body),
            Compression::Lz4 => {
                let Some(size) = body.get(..4) else {
                    return Err(BatchError::Decompress(
                        "lz4 block shorter than its size prefix".into(),
                    ));
                };
                let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize;
                if size > MAX_DECOMPRESSED_LEN {
                    return Err(BatchError::Decompress(format!(
                        "lz4 block claims {size} bytes, limit is {MAX_DECOMPRESSED_LEN}"
                    )));
                }
                Cow::Owned(
                    lz4_flex::block::decompress_size_prepended(body)
                        .map_err(|e| BatchError::Decompress(e.to_string()))?,
                )
            }
            Compression::Zstd => Cow::Owned(
                zstd::bulk::decompress(body, MAX_DECOMPRESSED_LEN)
                    .map_err(|e| BatchError::Decompress(e.to_string()))?,
            ),
        };
        Ok(Records {
            data,
            count: header.record_count,
            first_timestamp: header.first_timestamp,
        })
    }

    /// Number of records the header announces.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Always false: a valid batch holds at least one record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Iterates over the records, decoding each lazily.
    ///
    /// Yields exactly `record_count` items, then checks that no bytes are
    /// left over; any malformation is a [`BatchError::CorruptRecord`] and
    /// ends the iteration.
    pub fn iter(&self) -> RecordIter<'_> {
        RecordIter {
            data: &self.data,
            pos: 0,
            index: 0,
            count: self.count,
            first_timestamp: self.first_timestamp,
            done: false,
        }
    }

    /// Decodes every record, failing on the first malformed one.
    pub fn to_vec(&self) -> Result<Vec<RecordView<'_>>, BatchError> {
        self.iter().collect()
    }
}

/// One record, borrowed from its batch.
///
/// Encoding of one record (varints are LEB128; signed ones zigzag):
///
/// | field             | encoding |
/// |-------------------|----------|
/// | `length`          | uvarint: bytes of the record after this field |
/// | `attributes`      | u8, reserved, 0 |
/// | `timestamp_delta` | varint: timestamp minus the batch's `first_timestamp` (wrapping) |
/// | `offset_delta`    | uvarint: position in the batch (0, 1, 2, ...) |
/// | `key_len`         | varint: -1 for no key |
/// | `key`             | bytes |
/// | `value_len`       | uvarint |
/// | `value`           | bytes |
/// | `header_count`    | uvarint |
/// | headers           | each: uvarint name length, UTF-8 name, uvarint value length, value |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Offset relative to the batch's base offset.
    pub offset_delta: u32,
    /// Timestamp in ms since the Unix epoch.
    pub timestamp: i64,
    /// The key, if the record has one.
    pub key: Option<&'a [u8]>,
    /// The value.
    pub value: &'a [u8],
    header_count: u32,
    headers: &'a [u8],
}

impl<'a> RecordView<'a> {
    /// Number of headers.
    pub fn header_count(&self) -> u32 {
        self.header_count
    }

    /// Iterates over `(name, value)` headers. Names were checked to be UTF-8
    /// when the record was decoded.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            data: self.headers,
            pos: 0,
            left: self.header_count,
        }
    }
}

/// Iterator over a record's headers.
#[derive(Clone, Debug)]
pub struct HeaderIter<'a> {
    data: &'a [u8],
    pos: usize,
    left: u32,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Validated by `parse_headers` when the record was decoded.
        let (name, value) = parse_header(self.data, &mut self.pos).ok()?;
        Some((name, value))
    }
}

fn take<'a>(data: &'a [u8], pos: &mut usize, len: u64) -> Result<&'a [u8], &'static str> {
    let len = usize::try_from(len).map_err(|_| "length overflows usize")?;
    let end = pos.checked_add(len).ok_or("length overflows")?;
    let out = data.get(*pos..end).ok_or("field runs past the record")?;
    *pos = end;
    Ok(out)
}

fn parse_header<'a>(data: &'a [u8], pos: &mut usize) -> Result<(&'a str, &'a [u8]), &'static str> {
    let name_len = get_uvarint(data, pos).ok_or("bad header name length")?;
    let name = take(data, pos, name_len)?;
    let name = std::str::from_utf8(name).map_err(|_| "header name is not UTF-8")?;
    let value_len = get_uvarint(data, pos).ok_or("bad header value length")?;
    let value = take(data, pos, value_len)?;
    Ok((name, value))
}

/// Iterator over the records of a batch; see [`Records::iter`].
#[derive(Clone, Debug)]
pub struct RecordIter<'a> {
    data: &'a [u8],
    pos: usize,
    index: u32,
    count: u32,
    first_timestamp: i64,
    done: bool,
}

impl<'a> RecordIter<'a> {
    fn parse_one(&mut self) -> Result<RecordView<'a>, &'static str> {
        let data = self.data;
        let len = get_uvarint(data, &mut self.pos).ok_or("bad record length")?;
        let body = take(data, &mut self.pos, len)?;
        let mut p = 0;
        let _attributes = *body.first().ok_or("empty record")?;
        p += 1;
        let ts_delta = get_varint(body, &mut p).ok_or("bad timestamp delta")?;
        let offset_delta = get_uvarint(body, &mut p).ok_or("bad offset delta")?;
        if offset_delta != u64::from(self.index) {
            return Err("offset delta out of sequence");
        }
        let key_len = get_varint(body, &mut p).ok_or("bad key length")?;
        let key = match key_len {
            -1 => None,
            n if n < 0 => return Err("negative key length"),
            n => Some(take(body, &mut p, n as u64)?),
        };
        let value_len = get_uvarint(body, &mut p).ok_or("bad value length")?;
        let value = take(body, &mut p, value_len)?;
        let header_count = get_uvarint(body, &mut p).ok_or("bad header count")?;
        let header_count = u32::try_from(header_count).map_err(|_| "too many headers")?;
        let headers = &body[p..];
        let mut hp = 0;
        for _ in 0..header_count {
            parse_header(headers, &mut hp)?;
        }
        if hp != headers.len() {
            return Err("trailing bytes after the headers");
        }
        // The builder encodes the delta with wrapping arithmetic, so any two
        // i64 timestamps round-trip; decode it the same way.
        let timestamp = self.first_timestamp.wrapping_add(ts_delta);
        Ok(RecordView {
            offset_delta: self.index,
            timestamp,
            key,
            value,
            header_count,
            headers,
        })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.index == self.count {
            self.done = true;
            if self.pos != self.data.len() {
                return Some(Err(BatchError::CorruptRecord {
                    index: self.index,
                    reason: "bytes left after the last record",
                }));
            }
            return None;
        }
        match self.parse_one() {
            Ok(r) => {
                self.index += 1;
                Some(Ok(r))
            }
            Err(reason) => {
                self.done = true;
                Some(Err(BatchError::CorruptRecord {
                    index: self.index,
                    reason,
                }))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.count - self.index) as usize;
        (0, Some(left + 1))
    }
}
