//! The records a coordinator writes to its partition of the offsets topic.
//!
//! Each record's value is one encoded [`GroupRecord`]; its key is the group
//! name (so a future compaction by key keeps per-group history together).
//! Layout, little-endian:
//!
//! ```text
//! 0      version u8 (= RECORD_VERSION, 1)
//! 1      kind u8: 1 offset commit, 2 group deleted, 3 coordinator barrier
//! 2..4   group_len u16, then group_len bytes of UTF-8
//! kind 1 (offset commit), after the group:
//!        topic_len u16, topic bytes (UTF-8), partition u32, offset u64,
//!        commit_timestamp i64 (ms since the Unix epoch)
//! kind 2 (group deleted): nothing more (every offset of the group is gone)
//! kind 3 (barrier): nothing more; the group name is empty. A new
//!        coordinator appends one with acks=all and replays up to it, so it
//!        has seen every record committed by its predecessors.
//! ```
//!
//! Nothing may follow the last field. Records are replayed in log order;
//! decoding never panics on garbage ([`RecordError`]).

/// The version written by this build.
pub const RECORD_VERSION: u8 = 1;

const KIND_COMMIT: u8 = 1;
const KIND_DELETED: u8 = 2;
const KIND_BARRIER: u8 = 3;

/// One entry of the offsets topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupRecord {
    /// `group` committed `offset` (the next offset to read) for
    /// `topic`-`partition`.
    OffsetCommit {
        /// Group name.
        group: String,
        /// Topic name.
        topic: String,
        /// Partition id.
        partition: u32,
        /// The next offset the group reads in that partition.
        offset: u64,
        /// When it was committed (ms since the Unix epoch).
        timestamp: i64,
    },
    /// The group was deleted: all its committed offsets are forgotten.
    GroupDeleted {
        /// Group name.
        group: String,
    },
    /// Written by a coordinator when it takes over; carries no state.
    Barrier,
}

/// Why bytes are not a [`GroupRecord`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The bytes end before the field at `position`.
    #[error("group record truncated: {field} at byte {position} needs more bytes")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Its byte position.
        position: usize,
    },
    /// A version this build does not read.
    #[error("group record version {0} is not supported (this build reads {RECORD_VERSION})")]
    BadVersion(u8),
    /// An unknown record kind.
    #[error("unknown group record kind {0}")]
    BadKind(u8),
    /// A name is not UTF-8.
    #[error("group record {0} is not UTF-8")]
    BadUtf8(&'static str),
    /// Bytes follow the last field.
    #[error("group record has {0} trailing bytes")]
    Trailing(usize),
}

impl GroupRecord {
    /// The group the record belongs to (empty for a barrier): the record key.
    pub fn group(&self) -> &str {
        match self {
            GroupRecord::OffsetCommit { group, .. } | GroupRecord::GroupDeleted { group } => group,
            GroupRecord::Barrier => "",
        }
    }

    /// Encodes the record (layout in the module docs).
    ///
    /// # Panics
    /// When a name is longer than 65535 bytes: callers validate names first
    /// (topics are at most 249 characters, groups at most
    /// [`crate::MAX_GROUP_NAME`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(RECORD_VERSION);
        match self {
            GroupRecord::OffsetCommit {
                group,
                topic,
                partition,
                offset,
                timestamp,
            } => {
                out.push(KIND_COMMIT);
                put_str(&mut out, group);
                put_str(&mut out, topic);
                out.extend_from_slice(&partition.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&timestamp.to_le_bytes());
            }
            GroupRecord::GroupDeleted { group } => {
                out.push(KIND_DELETED);
                put_str(&mut out, group);
            }
            GroupRecord::Barrier => {
                out.push(KIND_BARRIER);
                put_str(&mut out, "");
            }
        }
        out
    }

    /// Decodes a record written by [`GroupRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Result<GroupRecord, RecordError> {
        let mut r = Reader { bytes, position: 0 };
        let version = r.u8("version")?;
        if version != RECORD_VERSION {
            return Err(RecordError::BadVersion(version));
        }
        let kind = r.u8("kind")?;
        let group = r.string("group")?;
        let record = match kind {
            KIND_COMMIT => GroupRecord::OffsetCommit {
                group,
                topic: r.string("topic")?,
                partition: u32::from_le_bytes(r.array("partition")?),
                offset: u64::from_le_bytes(r.array("offset")?),
                timestamp: i64::from_le_bytes(r.array("timestamp")?),
            },
            KIND_DELETED => GroupRecord::GroupDeleted { group },
            KIND_BARRIER => GroupRecord::Barrier,
            other => return Err(RecordError::BadKind(other)),
        };
        match bytes.len() - r.position {
            0 => Ok(record),
            n => Err(RecordError::Trailing(n)),
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len())
        .unwrap_or_else(|_| panic!("name of {} bytes exceeds 65535", s.len()));
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], RecordError> {
        let end = self
            .position
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.position..end];
                self.position = end;
                Ok(s)
            }
            None => Err(RecordError::Truncated {
                field,
                position: self.position,
            }),
        }
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, RecordError> {
        Ok(self.take(1, field)?[0])
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], RecordError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn string(&mut self, field: &'static str) -> Result<String, RecordError> {
        let len = u16::from_le_bytes(self.array(field)?);
        let bytes = self.take(usize::from(len), field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| RecordError::BadUtf8(field))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn commit() -> GroupRecord {
        GroupRecord::OffsetCommit {
            group: "g".into(),
            topic: "orders".into(),
            partition: 3,
            offset: 42,
            timestamp: 1_700_000_000_000,
        }
    }

    proptest! {
        #[test]
        fn round_trip(group in "[a-z._-]{0,40}", topic in "[a-zA-Z0-9._-]{1,249}",
                      partition: u32, offset: u64, timestamp: i64, kind in 0..3u8) {
            let record = match kind {
                0 => GroupRecord::OffsetCommit { group, topic, partition, offset, timestamp },
                1 => GroupRecord::GroupDeleted { group },
                _ => GroupRecord::Barrier,
            };
            prop_assert_eq!(GroupRecord::decode(&record.encode()), Ok(record));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = GroupRecord::decode(&bytes);
        }
    }

    #[test]
    fn every_truncation_is_reported() {
        for record in [
            commit(),
            GroupRecord::GroupDeleted { group: "g".into() },
            GroupRecord::Barrier,
        ] {
            let bytes = record.encode();
            for len in 0..bytes.len() {
                assert!(
                    matches!(
                        GroupRecord::decode(&bytes[..len]),
                        Err(RecordError::Truncated { .. })
                    ),
                    "{record:?} cut at {len}"
                );
            }
        }
    }

    type Mutation = Box<dyn Fn(&mut Vec<u8>)>;

    #[test]
    fn bad_version_kind_utf8_and_trailing() {
        // (case, mutation, expected)
        let base = commit().encode();
        let cases: [(u32, Mutation, RecordError); 4] = [
            (1, Box::new(|b| b[0] = 2), RecordError::BadVersion(2)),
            (2, Box::new(|b| b[1] = 9), RecordError::BadKind(9)),
            (3, Box::new(|b| b[4] = 0xff), RecordError::BadUtf8("group")),
            (4, Box::new(|b| b.push(0)), RecordError::Trailing(1)),
        ];
        for (case, mutate, expected) in cases {
            let mut bytes = base.clone();
            mutate(&mut bytes);
            assert_eq!(GroupRecord::decode(&bytes), Err(expected), "case {case}");
        }
    }
}
