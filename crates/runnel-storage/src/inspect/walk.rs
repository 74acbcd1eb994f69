//! Walking the batches of a `.log` file: each batch's header parsed and its
//! CRC checked, and how the data ends (end of file, zeros up to the end of
//! the file, or unreadable bytes).

use std::fmt;

use runnel_batch::{BatchError, BatchHeader, BatchView, HEADER_LEN};

use super::files::{LogFile, SegmentFiles, read_offset_entries};
use crate::error::Result;
use crate::index::OffsetEntry;

impl LogFile {
    /// Iterates over the batches from byte `position`, which must be a
    /// batch boundary (0, or a position taken from a verified index entry).
    pub fn batches(&self, position: u64) -> Batches<'_> {
        Batches {
            file: self,
            position,
            end: None,
            failed: false,
        }
    }

    /// Reads the header at `position` and, if it parses and the whole batch
    /// lies within the file, the batch.
    pub(super) fn batch_at(
        &self,
        position: u64,
    ) -> Result<std::result::Result<StoredBatch, Unreadable>> {
        let available = self.len().saturating_sub(position);
        let mut head = [0u8; HEADER_LEN];
        let want = usize::try_from(available).map_or(HEADER_LEN, |n| n.min(HEADER_LEN));
        let got = self.read_at(position, &mut head[..want])?;
        let header = match BatchHeader::parse(&head[..got]) {
            Ok(h) => h,
            Err(e) => return Ok(Err(Unreadable::BadHeader(e))),
        };
        let len = u64::from(header.batch_len);
        if len > available {
            return Ok(Err(Unreadable::PastEnd {
                batch_len: header.batch_len,
                available,
            }));
        }
        // Bounded by the file's length, checked just above.
        let mut bytes = vec![0u8; header.batch_len as usize];
        let got = self.read_at(position, &mut bytes)?;
        if got < bytes.len() {
            return Ok(Err(Unreadable::PastEnd {
                batch_len: header.batch_len,
                available: got as u64,
            }));
        }
        let crc = match BatchView::new(&bytes) {
            Ok(_) => CrcCheck::Ok,
            Err(BatchError::CrcMismatch { stored, computed }) => {
                CrcCheck::Mismatch { stored, computed }
            }
            Err(e) => return Ok(Err(Unreadable::BadHeader(e))),
        };
        Ok(Ok(StoredBatch {
            position,
            header,
            crc,
            bytes,
        }))
    }

    /// Whether the batch at `position` is intact and carries `offset` and
    /// `raft_index` (what recovery asks of an index entry).
    pub(super) fn verified_at(&self, position: u64, offset: u64, raft_index: u64) -> Result<bool> {
        Ok(match self.batch_at(position)? {
            Ok(b) => {
                b.crc_ok() && b.header.base_offset == offset && b.header.raft_index == raft_index
            }
            Err(_) => false,
        })
    }
}

/// Result of checking a stored batch's CRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrcCheck {
    /// The CRC matches the bytes.
    Ok,
    /// The bytes changed after the producer computed the CRC.
    Mismatch {
        /// CRC stored in the header.
        stored: u32,
        /// CRC of the bytes as read.
        computed: u32,
    },
}

/// One batch as stored in a segment file: its header parsed and all of its
/// bytes read, whether or not its CRC checks out.
#[derive(Clone, Debug)]
pub struct StoredBatch {
    /// Byte position of the batch in its `.log` file.
    pub position: u64,
    /// The parsed header. When the CRC does not match, its fields are not
    /// to be trusted (the offsets, term and index are never covered by it).
    pub header: BatchHeader,
    /// Result of the CRC check.
    pub crc: CrcCheck,
    bytes: Vec<u8>,
}

impl StoredBatch {
    /// Whether the CRC matches.
    pub fn crc_ok(&self) -> bool {
        self.crc == CrcCheck::Ok
    }

    /// The batch bytes, header included, exactly as stored.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A verified view (to decode the records), only when the CRC matches.
    pub fn view(&self) -> Option<BatchView<'_>> {
        BatchView::new(&self.bytes).ok()
    }

    /// Position just after the batch: where the next one starts.
    pub fn end_position(&self) -> u64 {
        self.position + u64::from(self.header.batch_len)
    }
}

/// Why the bytes at a position are not a batch that can be walked over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// The header does not parse.
    BadHeader(BatchError),
    /// The header claims more bytes than the file holds after it.
    PastEnd {
        /// Length the header claims.
        batch_len: u32,
        /// Bytes left in the file from the batch's position.
        available: u64,
    },
    /// Zeros where a header should start, but non-zero bytes later on.
    StrayBytes {
        /// Position of the first non-zero byte.
        first_non_zero: u64,
    },
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreadable::BadHeader(e) => write!(f, "{e}"),
            Unreadable::PastEnd {
                batch_len,
                available,
            } => write!(
                f,
                "the header claims {batch_len} bytes but only {available} remain in the file"
            ),
            Unreadable::StrayBytes { first_non_zero } => write!(
                f,
                "zero bytes where a batch should start, then non-zero bytes at position {first_non_zero}"
            ),
        }
    }
}

/// How the walk over a `.log` file ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataEnd {
    /// The last batch ends exactly at the end of the file: the normal end
    /// of every segment (sealed ones are trimmed to their data, and the
    /// active one grows by appends, nothing preallocated).
    EndOfFile {
        /// The file's length.
        position: u64,
    },
    /// Only zero bytes follow the last batch, up to the end of the file.
    /// Not damage in the active segment: older builds preallocated it, and
    /// a crash can leave zeros where the file grew but the data did not
    /// reach the disk. The broker cuts them when it opens the log. (In a
    /// sealed segment, zeros are a problem: see
    /// [`ProblemKind::SealedSegmentNotTrimmed`](super::ProblemKind::SealedSegmentNotTrimmed).)
    Preallocated {
        /// Where the data ends and the zeros begin.
        position: u64,
        /// Number of zero bytes up to the end of the file.
        bytes: u64,
    },
    /// Bytes that are not a batch: damage, or a torn write (at the end of
    /// the active segment, typically a header that claims more bytes than
    /// remain in the file: [`Unreadable::PastEnd`]).
    Unreadable {
        /// Where the unreadable bytes begin.
        position: u64,
        /// What is wrong with them.
        reason: Unreadable,
    },
}

impl DataEnd {
    /// Whether the data ends cleanly: at the end of the file, or where only
    /// zeros follow (clean for the active segment; [`verify`](super::verify())
    /// reports zeros after a sealed segment's data).
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            DataEnd::EndOfFile { .. } | DataEnd::Preallocated { .. }
        )
    }

    /// Where the walkable data ends.
    pub fn position(&self) -> u64 {
        match self {
            DataEnd::EndOfFile { position }
            | DataEnd::Preallocated { position, .. }
            | DataEnd::Unreadable { position, .. } => *position,
        }
    }
}

/// Iterator over the batches of a [`LogFile`]; see [`LogFile::batches`].
///
/// Yields every batch whose header parses and whose bytes lie within the
/// file, including batches whose CRC does not match (their length field is
/// not covered by the CRC, so the walk goes on after them). Stops at the
/// first bytes that are not such a batch; [`Batches::end`] then says how
/// the data ended. An I/O error is yielded once and ends the iteration.
#[derive(Debug)]
pub struct Batches<'a> {
    file: &'a LogFile,
    position: u64,
    end: Option<DataEnd>,
    failed: bool,
}

impl Batches<'_> {
    /// How the data ended, once the iteration returned `None` (and not
    /// after an I/O error).
    pub fn end(&self) -> Option<&DataEnd> {
        self.end.as_ref()
    }

    fn step(&mut self) -> Result<Option<StoredBatch>> {
        let position = self.position;
        if position >= self.file.len() {
            self.end = Some(DataEnd::EndOfFile { position });
            return Ok(None);
        }
        match self.file.batch_at(position)? {
            Ok(batch) => {
                self.position = batch.end_position();
                Ok(Some(batch))
            }
            Err(reason) => {
                let end = match self.file.first_non_zero(position)? {
                    None => DataEnd::Preallocated {
                        position,
                        bytes: self.file.len() - position,
                    },
                    Some(first) if first >= position + HEADER_LEN as u64 => DataEnd::Unreadable {
                        position,
                        reason: Unreadable::StrayBytes {
                            first_non_zero: first,
                        },
                    },
                    Some(_) => DataEnd::Unreadable { position, reason },
                };
                self.end = Some(end);
                Ok(None)
            }
        }
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<StoredBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.end.is_some() || self.failed {
            return None;
        }
        match self.step() {
            Ok(batch) => batch.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Where to start walking `segment`'s log to reach `offset` quickly: the
/// position of the last `.index` entry at or below `offset` whose batch
/// header carries the entry's offset, else 0. The index is untrusted and
/// optional: a missing, unreadable or wrong index, or an active segment's
/// index that lags the log (its entries reach the file only after the data
/// they point at is fsynced), only costs a longer walk. All-zero entries
/// (an older build's preallocated index) end the entries.
pub fn scan_start(segment: &SegmentFiles, log: &LogFile, offset: u64) -> Result<u64> {
    let Some(rel) = offset.checked_sub(segment.base_offset) else {
        return Ok(0);
    };
    let candidates: Vec<OffsetEntry> = read_offset_entries(&segment.index)
        .into_iter()
        .take_while(|e| e.position != 0)
        .filter(|e| u64::from(e.rel_offset) <= rel)
        .collect();
    for e in candidates.iter().rev() {
        let expected = segment.base_offset.checked_add(u64::from(e.rel_offset));
        if let Ok(b) = log.batch_at(u64::from(e.position))? {
            if Some(b.header.base_offset) == expected {
                return Ok(u64::from(e.position));
            }
        }
    }
    Ok(0)
}
