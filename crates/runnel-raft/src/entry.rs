//! How a Raft entry is stored as one batch, and read back.
//!
//! The partition log IS the Raft log: one entry, one batch, one or more
//! offsets (RAFT.md trap 7). Raft sees three kinds of entry; each is stored
//! as a batch so that Raft indexes and offsets both stay dense:
//!
//! | Raft entry                                   | entry data seen by Raft | stored batch |
//! |----------------------------------------------|-------------------------|--------------|
//! | a produced batch (`EntryNormal`)             | the batch bytes         | the batch, as received |
//! | a no-op (`EntryNormal`, empty data: a new leader's entry, a rejected conf change) | empty | control batch `RaftNoop`, one offset |
//! | a conf change (`EntryConfChange`/`V2`)       | the protobuf change     | control batch `RaftConfChange`, value = `[1 or 2]` ++ protobuf, one offset |
//!
//! The batch header's Raft term and index (stamped by storage, outside the
//! CRC) give the entry's term and index back. A control batch carries the
//! storing node's clock as its timestamp, so control batches of the same
//! entry may differ in that field between replicas; their offsets never do.

use bytes::Bytes;
use raft::eraftpb::{Entry, EntryType};
use runnel_batch::{BatchBuilder, BatchHeader, BatchView, ControlKind};

/// Code for a v1 `ConfChange` in a `RaftConfChange` control batch.
const CONF_CHANGE_V1: u8 = 1;
/// Code for a `ConfChangeV2`.
const CONF_CHANGE_V2: u8 = 2;

/// Why stored or received bytes are not a valid entry.
pub(crate) type EntryError = String;

/// The batch that stores `entry`: the entry data itself for a produced
/// batch, a control batch (timestamp `now_ms`) otherwise.
pub(crate) fn entry_to_batch(entry: &Entry, now_ms: i64) -> Result<Bytes, EntryError> {
    let control = |kind, payload: &[u8]| {
        BatchBuilder::control(kind, payload, now_ms)
            .map_err(|e| format!("encoding a control batch: {e}"))
    };
    match entry.get_entry_type() {
        EntryType::EntryNormal if entry.data.is_empty() => control(ControlKind::RaftNoop, &[]),
        EntryType::EntryNormal => Ok(entry.data.clone()),
        EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
            let code = if entry.get_entry_type() == EntryType::EntryConfChange {
                CONF_CHANGE_V1
            } else {
                CONF_CHANGE_V2
            };
            let mut payload = Vec::with_capacity(1 + entry.data.len());
            payload.push(code);
            payload.extend_from_slice(&entry.data);
            control(ControlKind::RaftConfChange, &payload)
        }
    }
}

/// The Raft entry stored as `batch` (a whole stored batch with its
/// stamped header; the data of a produced batch is `batch` itself, not a
/// copy).
pub(crate) fn batch_to_entry(batch: Bytes) -> Result<Entry, EntryError> {
    let header = BatchHeader::parse(&batch).map_err(|e| e.to_string())?;
    let mut entry = Entry {
        term: header.raft_term,
        index: header.raft_index,
        ..Default::default()
    };
    if !header.attributes.is_control() {
        entry.data = batch;
        return Ok(entry);
    }
    let view = BatchView::new(&batch).map_err(|e| e.to_string())?;
    let records = view.records().map_err(|e| e.to_string())?;
    let record = records
        .iter()
        .next()
        .ok_or("control batch without a record")?
        .map_err(|e| e.to_string())?;
    let kind = record
        .key
        .and_then(ControlKind::from_key)
        .ok_or("control record without a kind")?;
    match kind {
        ControlKind::RaftNoop => {}
        ControlKind::RaftConfChange => {
            let (code, change) = record
                .value
                .split_first()
                .ok_or("empty conf change record")?;
            entry.set_entry_type(match *code {
                CONF_CHANGE_V1 => EntryType::EntryConfChange,
                CONF_CHANGE_V2 => EntryType::EntryConfChangeV2,
                c => return Err(format!("unknown conf change code {c}")),
            });
            entry.data = Bytes::copy_from_slice(change);
        }
        ControlKind::Other(code) => return Err(format!("unknown control batch kind {code}")),
    }
    Ok(entry)
}

/// Checks an entry received from a peer before Raft takes it: a produced
/// batch must be exactly one valid batch (header, CRC), not a control batch
/// (those are made by the storing node). Conf changes are checked when
/// applied.
pub(crate) fn check_received(entry: &Entry) -> Result<(), EntryError> {
    if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
        return Ok(());
    }
    let view = BatchView::new(&entry.data).map_err(|e| e.to_string())?;
    if view.as_bytes().len() != entry.data.len() {
        return Err(format!(
            "{} bytes after the batch",
            entry.data.len() - view.as_bytes().len()
        ));
    }
    if view.is_control() {
        return Err("a control batch as entry data".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_batch::{Compression, NewRecord, stamp};

    fn data_batch(value: &[u8]) -> Bytes {
        let mut b = BatchBuilder::new(Compression::None);
        b.push(NewRecord {
            value,
            timestamp: 5,
            ..Default::default()
        });
        b.finish().unwrap()
    }

    fn stored(batch: &Bytes, term: u64, index: u64) -> Bytes {
        let mut v = batch.to_vec();
        stamp(&mut v, 40, term, index);
        Bytes::from(v)
    }

    #[test]
    fn entries_round_trip_through_batches() {
        let normal = Entry {
            data: data_batch(b"hello"),
            ..Default::default()
        };
        let noop = Entry::default();
        let mut v1 = Entry {
            data: Bytes::from_static(b"\x08\x01"),
            ..Default::default()
        };
        v1.set_entry_type(EntryType::EntryConfChange);
        let mut v2 = Entry {
            data: Bytes::from_static(b"\x12\x00"),
            ..Default::default()
        };
        v2.set_entry_type(EntryType::EntryConfChangeV2);
        for (i, e) in [normal, noop, v1, v2].into_iter().enumerate() {
            let batch = entry_to_batch(&e, 1_000).unwrap();
            let got = batch_to_entry(stored(&batch, 7, 9)).unwrap();
            assert_eq!((got.term, got.index), (7, 9), "case {i}");
            assert_eq!(got.get_entry_type(), e.get_entry_type(), "case {i}");
            if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                // The stored batch carries its stamped header: same batch, new stamp.
                assert_eq!(
                    got.data[runnel_batch::STAMPED_LEN..],
                    e.data[runnel_batch::STAMPED_LEN..],
                    "case {i}"
                );
            } else {
                assert_eq!(got.data, e.data, "case {i}");
            }
        }
    }

    #[test]
    fn received_entries_are_checked() {
        let good = data_batch(b"x");
        let mut trailing = good.to_vec();
        trailing.push(0);
        let mut flipped = good.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let control = BatchBuilder::control(ControlKind::RaftNoop, &[], 0).unwrap();
        let cases: [(Bytes, bool); 5] = [
            (good, true),
            (Bytes::new(), true),
            (Bytes::from(trailing), false),
            (Bytes::from(flipped), false),
            (control, false),
        ];
        for (i, (data, ok)) in cases.into_iter().enumerate() {
            let e = Entry {
                data,
                ..Default::default()
            };
            assert_eq!(check_received(&e).is_ok(), ok, "case {i}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for len in [0usize, 10, 73, 200] {
            assert!(
                batch_to_entry(Bytes::from(vec![0xAB; len])).is_err(),
                "len {len}"
            );
        }
    }
}
