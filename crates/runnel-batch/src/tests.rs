//! Unit and property tests of the batch format.
//!
//! The header byte positions are restated here from the layout documented on
//! [`BatchHeader`] (not imported from `header.rs`), so that a change to the
//! on-disk layout breaks these tests instead of silently passing.

use super::*;

use std::collections::BTreeSet;

use bytes::Bytes;
use proptest::prelude::*;

use crate::varint::{put_uvarint, put_varint};

// ---------------------------------------------------------------------------
// Documented layout and helpers
// ---------------------------------------------------------------------------

const BASE_OFFSET_AT: usize = 0;
const BATCH_LEN_AT: usize = 8;
const RAFT_TERM_AT: usize = 12;
const RAFT_INDEX_AT: usize = 20;
const CRC_AT: usize = 28;
const VERSION_AT: usize = 32;
const ATTRIBUTES_AT: usize = 33;
const LAST_OFFSET_DELTA_AT: usize = 35;
const FIRST_TIMESTAMP_AT: usize = 39;
const MAX_TIMESTAMP_AT: usize = 47;
const PRODUCER_ID_AT: usize = 55;
const PRODUCER_EPOCH_AT: usize = 63;
const BASE_SEQUENCE_AT: usize = 65;
const RECORD_COUNT_AT: usize = 69;

const COMPRESSIONS: [Compression; 3] = [Compression::None, Compression::Lz4, Compression::Zstd];

fn read<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    buf[at..at + N].try_into().unwrap()
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Recomputes the CRC exactly as the format documents it: CRC-32 of
/// `CRC_START..`, stored little-endian at 28..32.
fn reseal(buf: &mut [u8]) {
    let crc = crc32fast::hash(&buf[CRC_START..]);
    put(buf, CRC_AT, &crc.to_le_bytes());
}

/// Owned version of a record, for generating inputs and comparing outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp: i64,
}

impl Rec {
    fn simple(key: Option<&[u8]>, value: &[u8], timestamp: i64) -> Rec {
        Rec {
            key: key.map(<[u8]>::to_vec),
            value: value.to_vec(),
            headers: Vec::new(),
            timestamp,
        }
    }

    fn from_view(r: &RecordView<'_>) -> Rec {
        let headers: Vec<(String, Vec<u8>)> = r
            .headers()
            .map(|(n, v)| (n.to_owned(), v.to_vec()))
            .collect();
        assert_eq!(headers.len(), r.header_count() as usize);
        Rec {
            key: r.key.map(<[u8]>::to_vec),
            value: r.value.to_vec(),
            headers,
            timestamp: r.timestamp,
        }
    }
}

/// Builds a batch from owned records.
fn build(
    compression: Compression,
    producer: Option<(i64, i16, i32)>,
    recs: &[Rec],
) -> Result<Bytes, BatchError> {
    let mut b = BatchBuilder::new(compression);
    if let Some((id, epoch, seq)) = producer {
        b.producer(id, epoch, seq);
    }
    for (i, r) in recs.iter().enumerate() {
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        b.push(NewRecord {
            key: r.key.as_deref(),
            value: &r.value,
            headers: &headers,
            timestamp: r.timestamp,
        });
        assert_eq!(b.record_count() as usize, i + 1);
    }
    b.finish()
}

/// A small, varied batch used by the deterministic tests.
fn sample(compression: Compression) -> Bytes {
    let recs = [
        Rec::simple(Some(b"k0"), b"first value", 1_700_000_000_000),
        Rec {
            key: None,
            value: b"second".repeat(20),
            headers: vec![
                ("h".into(), b"v".to_vec()),
                ("\u{e9}t\u{e9}".into(), vec![]),
            ],
            timestamp: 1_699_999_999_000,
        },
        Rec::simple(Some(b""), b"", 1_700_000_000_500),
    ];
    build(compression, Some((42, 3, 1000)), &recs).unwrap()
}

/// Decodes every record of a verified batch into owned records.
fn decode_all(bytes: &[u8]) -> Result<Vec<Rec>, BatchError> {
    let view = BatchView::new(bytes)?;
    let records = view.records()?;
    let out = records
        .iter()
        .map(|r| r.map(|r| Rec::from_view(&r)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(out)
}

/// A hand-written header (documented layout) followed by `body`, with a
/// correct CRC. `last_offset_delta` is `record_count - 1`.
fn raw_batch(record_count: u32, attributes: u16, first_timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN];
    let len = u32::try_from(HEADER_LEN + body.len()).unwrap();
    put(&mut buf, BATCH_LEN_AT, &len.to_le_bytes());
    buf[VERSION_AT] = FORMAT_VERSION;
    put(&mut buf, ATTRIBUTES_AT, &attributes.to_le_bytes());
    put(
        &mut buf,
        LAST_OFFSET_DELTA_AT,
        &record_count.wrapping_sub(1).to_le_bytes(),
    );
    put(&mut buf, FIRST_TIMESTAMP_AT, &first_timestamp.to_le_bytes());
    put(&mut buf, MAX_TIMESTAMP_AT, &first_timestamp.to_le_bytes());
    put(&mut buf, PRODUCER_ID_AT, &(-1i64).to_le_bytes());
    put(&mut buf, PRODUCER_EPOCH_AT, &(-1i16).to_le_bytes());
    put(&mut buf, BASE_SEQUENCE_AT, &(-1i32).to_le_bytes());
    put(&mut buf, RECORD_COUNT_AT, &record_count.to_le_bytes());
    buf.extend_from_slice(body);
    reseal(&mut buf);
    buf
}

/// Compresses a records section the way the format documents each codec.
fn compress(compression: Compression, records: &[u8]) -> Vec<u8> {
    match compression {
        Compression::None => records.to_vec(),
        Compression::Lz4 => lz4_flex::block::compress_prepend_size(records),
        Compression::Zstd => zstd::bulk::compress(records, 3).unwrap(),
    }
}

fn compression_bits(compression: Compression) -> u16 {
    Attributes::new(compression, TimestampType::CreateTime, false).0
}

/// One field of a hand-encoded record.
#[derive(Clone, Copy, Debug)]
enum F<'a> {
    /// A raw byte.
    B(u8),
    /// An unsigned varint.
    U(u64),
    /// A zigzag varint.
    S(i64),
    /// Raw bytes.
    Raw(&'a [u8]),
}

fn enc(fields: &[F<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        match *f {
            F::B(b) => out.push(b),
            F::U(u) => put_uvarint(&mut out, u),
            F::S(s) => put_varint(&mut out, s),
            F::Raw(r) => out.extend_from_slice(r),
        }
    }
    out
}

/// A record: its fields prefixed by their encoded length.
fn rec(fields: &[F<'_>]) -> Vec<u8> {
    let body = enc(fields);
    let mut out = enc(&[F::U(body.len() as u64)]);
    out.extend_from_slice(&body);
    out
}

/// A well-formed record at `offset_delta` (no key, value "v", no headers).
fn good_rec(offset_delta: u64) -> Vec<u8> {
    use F::*;
    rec(&[B(0), S(0), U(offset_delta), S(-1), U(1), Raw(b"v"), U(0)])
}

/// Collects a record iterator to the end, checking the iteration contract:
/// Ok items come first in offset order, at most one Err ends it, and the
/// iterator stays exhausted afterwards.
fn drain(records: &Records<'_>) -> (usize, Option<BatchError>) {
    let mut it = records.iter();
    let mut oks = 0usize;
    let mut err = None;
    for item in it.by_ref() {
        match item {
            Ok(r) => {
                assert!(err.is_none(), "Ok after Err");
                assert_eq!(r.offset_delta as usize, oks);
                oks += 1;
            }
            Err(e) => {
                assert!(err.is_none(), "two errors");
                assert!(matches!(e, BatchError::CorruptRecord { .. }), "{e:?}");
                err = Some(e);
            }
        }
        assert!(oks <= records.len() as usize + 1, "iterator does not stop");
    }
    assert!(it.next().is_none(), "iterator resumed after its end");
    (oks, err)
}

// ---------------------------------------------------------------------------
// 1. Round trip
// ---------------------------------------------------------------------------

/// Proptest settings: `cases` cases, and no regression files written into the
/// source tree (failures print their minimal input instead).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn compression_strategy() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Lz4),
        Just(Compression::Zstd),
    ]
}

fn rec_strategy(
    base: i64,
    max_key: usize,
    max_value: usize,
    max_headers: usize,
) -> impl Strategy<Value = Rec> {
    (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..=max_key)),
        proptest::collection::vec(any::<u8>(), 0..=max_value),
        proptest::collection::vec(
            (".{0,12}", proptest::collection::vec(any::<u8>(), 0..24)),
            0..=max_headers,
        ),
        -1_000_000_000_000i64..=1_000_000_000_000,
    )
        .prop_map(move |(key, value, headers, delta)| Rec {
            key,
            value,
            headers,
            timestamp: base + delta,
        })
}

fn batch_input_strategy(
    max_records: usize,
    max_key: usize,
    max_value: usize,
    max_headers: usize,
) -> impl Strategy<Value = (Compression, Option<(i64, i16, i32)>, Vec<Rec>)> {
    (-1_000_000_000_000_000i64..=1_000_000_000_000_000).prop_flat_map(move |base| {
        (
            compression_strategy(),
            proptest::option::of((any::<i64>(), any::<i16>(), any::<i32>())),
            proptest::collection::vec(
                rec_strategy(base, max_key, max_value, max_headers),
                1..=max_records,
            ),
        )
    })
}

/// Checks everything a freshly built batch must satisfy.
fn check_round_trip(
    compression: Compression,
    producer: Option<(i64, i16, i32)>,
    recs: &[Rec],
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    let view = BatchView::new(bytes).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    let h = *view.header();
    let count = recs.len() as u32;
    prop_assert_eq!(h, BatchHeader::parse(bytes).unwrap());
    prop_assert_eq!(view.as_bytes(), bytes);
    prop_assert_eq!(h.batch_len as usize, bytes.len());
    prop_assert_eq!(batch_len(bytes), Some(h.batch_len));
    prop_assert_eq!(h.format_version, FORMAT_VERSION);
    prop_assert_eq!(h.record_count, count);
    prop_assert_eq!(h.last_offset_delta, count - 1);
    prop_assert_eq!(h.first_timestamp, recs[0].timestamp);
    prop_assert_eq!(
        h.max_timestamp,
        recs.iter().map(|r| r.timestamp).max().unwrap()
    );
    let (id, epoch, seq) = producer.unwrap_or((-1, -1, -1));
    prop_assert_eq!(
        (h.producer_id, h.producer_epoch, h.base_sequence),
        (id, epoch, seq)
    );
    prop_assert_eq!(h.attributes.compression(), Ok(compression));
    prop_assert_eq!(h.attributes.timestamp_type(), TimestampType::CreateTime);
    prop_assert!(!h.attributes.is_control() && !view.is_control());
    prop_assert_eq!((h.base_offset, h.raft_term, h.raft_index), (0, 0, 0));
    prop_assert_eq!(view.base_offset(), 0);
    prop_assert_eq!(view.last_offset(), u64::from(count - 1));
    prop_assert_eq!(view.next_offset(), u64::from(count));

    let records = view
        .records()
        .map_err(|e| TestCaseError::fail(format!("{e}")))?;
    prop_assert_eq!(records.len(), count);
    prop_assert!(!records.is_empty());
    let mut n = 0usize;
    for (i, item) in records.iter().enumerate() {
        let r = item.map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(r.offset_delta as usize, i);
        prop_assert_eq!(&Rec::from_view(&r), &recs[i]);
        if compression == Compression::None {
            // Uncompressed records borrow from the batch bytes.
            let range = bytes.as_ptr_range();
            prop_assert!(range.contains(&r.value.as_ptr()) || r.value.is_empty());
        }
        n += 1;
    }
    prop_assert_eq!(n, recs.len());
    prop_assert_eq!(records.to_vec().unwrap().len(), recs.len());
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn round_trip((compression, producer, recs) in batch_input_strategy(8, 32, 2048, 4)) {
        let bytes = build(compression, producer, &recs).unwrap();
        check_round_trip(compression, producer, &recs, &bytes)?;
    }

    /// Timestamps anywhere in the i64 range survive the (wrapping) delta
    /// encoding, not only realistic ones.
    #[test]
    fn round_trip_any_timestamps(
        compression in compression_strategy(),
        timestamps in proptest::collection::vec(any::<i64>(), 1..6),
    ) {
        let recs: Vec<Rec> = timestamps.iter().map(|&t| Rec::simple(None, b"x", t)).collect();
        let bytes = build(compression, None, &recs).unwrap();
        check_round_trip(compression, None, &recs, &bytes)?;
    }
}

#[test]
fn round_trip_table() {
    // (case, compression, records)
    let big = vec![7u8; 100_000];
    let cases: Vec<(u32, Compression, Vec<Rec>)> = vec![
        (0, Compression::None, vec![Rec::simple(None, b"", 0)]),
        (1, Compression::Lz4, vec![Rec::simple(None, b"", 0)]),
        (2, Compression::Zstd, vec![Rec::simple(None, b"", 0)]),
        (3, Compression::None, vec![Rec::simple(Some(b""), b"v", -5)]),
        (4, Compression::Lz4, vec![Rec::simple(Some(&big), &big, 9)]),
        (5, Compression::Zstd, vec![Rec::simple(Some(&big), &big, 9)]),
        (
            6,
            Compression::None,
            vec![
                Rec::simple(None, b"a", i64::MIN),
                Rec::simple(None, b"b", i64::MAX),
            ],
        ),
        (
            7,
            Compression::Zstd,
            vec![
                Rec::simple(None, b"a", i64::MAX),
                Rec::simple(None, b"b", i64::MIN),
                Rec::simple(None, b"c", 0),
            ],
        ),
        (
            8,
            Compression::Lz4,
            vec![
                Rec::simple(None, b"a", -1),
                Rec::simple(None, b"b", i64::MAX),
            ],
        ),
        (
            9,
            Compression::None,
            (0..1000)
                .map(|i| Rec {
                    key: (i % 3 == 0).then(|| format!("key{i}").into_bytes()),
                    value: vec![i as u8; i % 17],
                    headers: vec![(format!("h{i}"), vec![1; i % 5]); i % 3],
                    timestamp: 1_000 - i as i64,
                })
                .collect(),
        ),
    ];
    for (case, compression, recs) in cases {
        let bytes = build(compression, None, &recs).unwrap();
        check_round_trip(compression, None, &recs, &bytes)
            .unwrap_or_else(|e| panic!("case {case}: {e}"));
        assert_eq!(decode_all(&bytes).unwrap(), recs, "case {case}");
    }
}

#[test]
fn documented_header_layout() {
    let mut b = BatchBuilder::new(Compression::Zstd);
    b.producer(0x0102_0304_0506_0708, 0x0a0b, 0x0c0d_0e0f);
    b.push(NewRecord {
        key: None,
        value: b"a",
        headers: &[],
        timestamp: 500,
    });
    b.push(NewRecord {
        key: None,
        value: b"b",
        headers: &[],
        timestamp: 900,
    });
    b.push(NewRecord {
        key: None,
        value: b"c",
        headers: &[],
        timestamp: 100,
    });
    let mut bytes = b.finish().unwrap().to_vec();
    stamp(&mut bytes, 0x1111, 0x2222, 0x3333);

    assert_eq!(u64::from_le_bytes(read(&bytes, BASE_OFFSET_AT)), 0x1111);
    assert_eq!(
        u32::from_le_bytes(read(&bytes, BATCH_LEN_AT)) as usize,
        bytes.len()
    );
    assert_eq!(u64::from_le_bytes(read(&bytes, RAFT_TERM_AT)), 0x2222);
    assert_eq!(u64::from_le_bytes(read(&bytes, RAFT_INDEX_AT)), 0x3333);
    assert_eq!(
        u32::from_le_bytes(read(&bytes, CRC_AT)),
        crc32fast::hash(&bytes[32..])
    );
    assert_eq!(bytes[VERSION_AT], 1);
    assert_eq!(u16::from_le_bytes(read(&bytes, ATTRIBUTES_AT)), 2);
    assert_eq!(u32::from_le_bytes(read(&bytes, LAST_OFFSET_DELTA_AT)), 2);
    assert_eq!(i64::from_le_bytes(read(&bytes, FIRST_TIMESTAMP_AT)), 500);
    assert_eq!(i64::from_le_bytes(read(&bytes, MAX_TIMESTAMP_AT)), 900);
    assert_eq!(
        i64::from_le_bytes(read(&bytes, PRODUCER_ID_AT)),
        0x0102_0304_0506_0708
    );
    assert_eq!(i16::from_le_bytes(read(&bytes, PRODUCER_EPOCH_AT)), 0x0a0b);
    assert_eq!(
        i32::from_le_bytes(read(&bytes, BASE_SEQUENCE_AT)),
        0x0c0d_0e0f
    );
    assert_eq!(u32::from_le_bytes(read(&bytes, RECORD_COUNT_AT)), 3);
    assert_eq!((CRC_START, STAMPED_LEN, HEADER_LEN), (32, 28, 73));
    // The records section is exactly the zstd frame.
    let records = zstd::bulk::decompress(&bytes[HEADER_LEN..], 1 << 20).unwrap();
    assert_eq!(
        records,
        [
            good_rec_with(0, 0, b"a"),
            good_rec_with(1, 400, b"b"),
            good_rec_with(2, -400, b"c")
        ]
        .concat()
    );
}

/// The documented encoding of a record without key or headers.
fn good_rec_with(offset_delta: u64, ts_delta: i64, value: &[u8]) -> Vec<u8> {
    use F::*;
    rec(&[
        B(0),
        S(ts_delta),
        U(offset_delta),
        S(-1),
        U(value.len() as u64),
        Raw(value),
        U(0),
    ])
}

#[test]
fn uncompressed_section_and_estimated_len() {
    let mut b = BatchBuilder::new(Compression::None);
    assert_eq!(b.estimated_len(), HEADER_LEN);
    assert_eq!(b.record_count(), 0);
    b.push(NewRecord {
        key: Some(b"key"),
        value: b"value",
        headers: &[("n", b"hv")],
        timestamp: 10,
    });
    b.push(NewRecord {
        key: None,
        value: b"",
        headers: &[],
        timestamp: 7,
    });
    let estimated = b.estimated_len();
    let bytes = b.finish().unwrap();
    assert_eq!(estimated, bytes.len());
    use F::*;
    let expected = [
        rec(&[
            B(0),
            S(0),
            U(0),
            S(3),
            Raw(b"key"),
            U(5),
            Raw(b"value"),
            U(1),
            U(1),
            Raw(b"n"),
            U(2),
            Raw(b"hv"),
        ]),
        rec(&[B(0), S(-3), U(1), S(-1), U(0), U(0)]),
    ]
    .concat();
    assert_eq!(&bytes[HEADER_LEN..], &expected[..]);
}

#[test]
fn view_ignores_trailing_bytes() {
    for (case, c) in COMPRESSIONS.into_iter().enumerate() {
        let bytes = sample(c);
        let mut buf = bytes.to_vec();
        buf.extend_from_slice(&[0xAB; 100]);
        let view = BatchView::new(&buf).unwrap();
        assert_eq!(view.as_bytes(), &bytes[..], "case {case}");
        assert_eq!(
            decode_all(&buf).unwrap(),
            decode_all(&bytes).unwrap(),
            "case {case}"
        );
    }
}

#[test]
fn attributes_bits() {
    // (case, compression, timestamp type, control, bits)
    let cases = [
        (
            0,
            Compression::None,
            TimestampType::CreateTime,
            false,
            0b00000,
        ),
        (
            1,
            Compression::Lz4,
            TimestampType::CreateTime,
            false,
            0b00001,
        ),
        (
            2,
            Compression::Zstd,
            TimestampType::CreateTime,
            false,
            0b00010,
        ),
        (
            3,
            Compression::None,
            TimestampType::LogAppendTime,
            false,
            0b01000,
        ),
        (
            4,
            Compression::None,
            TimestampType::CreateTime,
            true,
            0b10000,
        ),
        (
            5,
            Compression::Zstd,
            TimestampType::LogAppendTime,
            true,
            0b11010,
        ),
    ];
    for (case, c, t, control, bits) in cases {
        let a = Attributes::new(c, t, control);
        assert_eq!(a.0, bits, "case {case}");
        assert_eq!(a.compression(), Ok(c), "case {case}");
        assert_eq!(a.timestamp_type(), t, "case {case}");
        assert_eq!(a.is_control(), control, "case {case}");
    }
    assert_eq!(Compression::default(), Compression::None);
}

#[test]
fn log_append_time_and_reserved_bits_are_accepted() {
    let mut bytes = sample(Compression::Lz4).to_vec();
    // Timestamp type bit and a reserved bit: neither is rejected.
    put(
        &mut bytes,
        ATTRIBUTES_AT,
        &(1u16 | (1 << 3) | (1 << 9)).to_le_bytes(),
    );
    reseal(&mut bytes);
    let view = BatchView::new(&bytes).unwrap();
    assert_eq!(
        view.header().attributes.timestamp_type(),
        TimestampType::LogAppendTime
    );
    assert!(!view.is_control());
    assert_eq!(decode_all(&bytes).unwrap().len(), 3);
}

// ---------------------------------------------------------------------------
// 2. Stamping
// ---------------------------------------------------------------------------

fn check_stamp(original: &[u8], base_offset: u64, term: u64, index: u64) {
    let before = BatchView::new(original).unwrap();
    let prefix = stamped_prefix(original, base_offset, term, index);
    let mut stamped = original.to_vec();
    stamp(&mut stamped, base_offset, term, index);

    // Only the broker-owned fields changed; batch_len and everything covered
    // by the CRC is untouched.
    assert_eq!(
        &stamped[BATCH_LEN_AT..RAFT_TERM_AT],
        &original[BATCH_LEN_AT..RAFT_TERM_AT]
    );
    assert_eq!(&stamped[STAMPED_LEN..], &original[STAMPED_LEN..]);
    assert_eq!(prefix, stamped[..STAMPED_LEN]);
    let mut written = prefix.to_vec();
    written.extend_from_slice(&original[STAMPED_LEN..]);
    assert_eq!(written, stamped);

    let view = BatchView::new(&stamped).unwrap();
    let h = view.header();
    assert_eq!(
        (h.base_offset, h.raft_term, h.raft_index),
        (base_offset, term, index)
    );
    assert_eq!(h.crc, before.header().crc);
    assert_eq!(
        BatchHeader {
            base_offset: 0,
            raft_term: 0,
            raft_index: 0,
            ..*h
        },
        BatchHeader {
            base_offset: 0,
            raft_term: 0,
            raft_index: 0,
            ..*before.header()
        }
    );
    assert_eq!(view.base_offset(), base_offset);
    assert_eq!(view.next_offset(), base_offset + u64::from(h.record_count));
    assert_eq!(view.last_offset(), view.next_offset() - 1);
    assert_eq!(decode_all(&stamped).unwrap(), decode_all(original).unwrap());
}

#[test]
fn stamp_table() {
    // (case, base_offset, raft_term, raft_index)
    let cases = [
        (0, 0, 0, 0),
        (1, 1, 2, 3),
        (2, 1_000_000, 7, 123_456),
        (3, u64::MAX - 3, u64::MAX, u64::MAX),
        (
            4,
            0x0102_0304_0506_0708,
            0x1112_1314_1516_1718,
            0x2122_2324_2526_2728,
        ),
    ];
    for c in COMPRESSIONS {
        let original = sample(c);
        for (case, base, term, index) in cases {
            eprintln!("case {case} {c:?}");
            check_stamp(&original, base, term, index);
        }
    }
    // Stamping again overwrites the previous stamp.
    let mut bytes = sample(Compression::None).to_vec();
    stamp(&mut bytes, 10, 20, 30);
    stamp(&mut bytes, 11, 21, 31);
    let h = BatchHeader::parse(&bytes).unwrap();
    assert_eq!((h.base_offset, h.raft_term, h.raft_index), (11, 21, 31));
    // stamped_prefix does not mutate its input.
    let before = bytes.clone();
    let _ = stamped_prefix(&bytes, 1, 1, 1);
    assert_eq!(bytes, before);
}

/// A base offset whose batch would end past `u64::MAX` is an impossible
/// header, not a panic (debug) or a wrapped offset (release) later on.
#[test]
fn base_offset_overflow_is_rejected() {
    let original = sample(Compression::None); // 3 records
    // (case, base_offset, ok)
    let cases = [
        (0, u64::MAX - 3, true),
        (1, u64::MAX - 2, false),
        (2, u64::MAX, false),
    ];
    for (case, base, ok) in cases {
        let mut bytes = original.to_vec();
        stamp(&mut bytes, base, 1, 1);
        match BatchView::new(&bytes) {
            Ok(v) => {
                assert!(ok, "case {case}");
                assert_eq!(v.next_offset(), u64::MAX, "case {case}");
            }
            Err(e) => {
                assert!(!ok, "case {case}: {e}");
                assert!(
                    matches!(e, BatchError::InvalidHeader(_)),
                    "case {case}: {e}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn stamp_keeps_crc(
        c in compression_strategy(),
        base in 0u64..u64::MAX / 2,
        term in any::<u64>(),
        index in any::<u64>(),
    ) {
        check_stamp(&sample(c), base, term, index);
    }
}

#[test]
fn batch_len_reads_the_length_field() {
    let bytes = sample(Compression::None);
    for n in 0..=bytes.len() {
        let expected = (n >= 12).then_some(bytes.len() as u32);
        assert_eq!(batch_len(&bytes[..n]), expected, "prefix {n}");
    }
}

// ---------------------------------------------------------------------------
// 3. Truncated input
// ---------------------------------------------------------------------------

#[test]
fn every_truncation_is_an_error() {
    let mut batches: Vec<Bytes> = COMPRESSIONS.into_iter().map(sample).collect();
    batches.push(BatchBuilder::control(ControlKind::RaftNoop, b"", 5).unwrap());
    for (case, bytes) in batches.iter().enumerate() {
        let len = bytes.len();
        for n in 0..len {
            let prefix = &bytes[..n];
            let expected = if n < HEADER_LEN {
                BatchError::Truncated {
                    needed: HEADER_LEN,
                    available: n,
                }
            } else {
                // The header alone parses; only the view needs everything.
                assert_eq!(
                    BatchHeader::parse(prefix).unwrap(),
                    BatchHeader::parse(bytes).unwrap(),
                    "case {case} prefix {n}"
                );
                BatchError::Truncated {
                    needed: len,
                    available: n,
                }
            };
            assert_eq!(
                BatchView::new(prefix).unwrap_err(),
                expected,
                "case {case} prefix {n}"
            );
            let mut it = BatchIter::new(prefix);
            let first = it.next();
            if n == 0 {
                assert!(first.is_none(), "case {case}");
            } else {
                assert_eq!(
                    first.unwrap().unwrap_err(),
                    expected,
                    "case {case} prefix {n}"
                );
                assert!(it.next().is_none(), "case {case} prefix {n}");
                assert_eq!(it.position(), 0, "case {case} prefix {n}");
            }
        }
        assert!(BatchView::new(bytes).is_ok(), "case {case}");
    }
}

// ---------------------------------------------------------------------------
// 4. Flipped bits
// ---------------------------------------------------------------------------

/// Largest batch for which CRC-32 (IEEE) is guaranteed to detect any 4-bit
/// error: Hamming distance 5 holds for data words up to 2974 bits (Koopman),
/// and the data word here is bytes `CRC_START..batch_len`.
const HD5_MAX_BATCH_LEN: usize = CRC_START + 2974 / 8;

proptest! {
    #![proptest_config(config(512))]

    /// 1..=4 distinct bit flips at or after the CRC field are always caught.
    #[test]
    fn flips_after_crc_start_are_detected(
        (compression, producer, recs) in batch_input_strategy(3, 8, 40, 1),
        picks in proptest::collection::vec(any::<proptest::sample::Index>(), 1..=4),
    ) {
        let original = build(compression, producer, &recs).unwrap();
        prop_assume!(original.len() <= HD5_MAX_BATCH_LEN);
        let covered_bits = (original.len() - CRC_START) * 8;
        let bits: BTreeSet<usize> = picks
            .iter()
            .map(|p| CRC_START * 8 + p.index(covered_bits))
            .collect();
        let mut bytes = original.to_vec();
        for &bit in &bits {
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        prop_assert_ne!(&bytes[..], &original[..]);
        match BatchView::new(&bytes) {
            Ok(_) => prop_assert!(false, "flips {:?} not detected", bits),
            Err(
                BatchError::CrcMismatch { .. }
                | BatchError::InvalidHeader(_)
                | BatchError::UnsupportedVersion(_)
                | BatchError::UnknownCompression(_),
            ) => {}
            Err(e) => prop_assert!(false, "unexpected error {:?}", e),
        }
        let mut it = BatchIter::new(&bytes);
        prop_assert!(matches!(it.next(), Some(Err(_))));
        prop_assert!(it.next().is_none());
    }

    /// Flips in the stamped prefix, other than in `batch_len`, are not covered
    /// by the CRC by design: the batch still verifies and decodes the same.
    #[test]
    fn flips_in_stamped_fields_are_not_covered(
        c in compression_strategy(),
        picks in proptest::collection::vec(any::<proptest::sample::Index>(), 1..=4),
    ) {
        let original = sample(c);
        // Bits of bytes 0..8 and 12..28.
        let candidates: Vec<usize> = (0..STAMPED_LEN * 8)
            .filter(|b| !(BATCH_LEN_AT * 8..RAFT_TERM_AT * 8).contains(b))
            .collect();
        let bits: BTreeSet<usize> = picks.iter().map(|p| *p.get(&candidates)).collect();
        let mut bytes = original.to_vec();
        for &bit in &bits {
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        let view = BatchView::new(&bytes).unwrap();
        let h = view.header();
        prop_assert_eq!(h.base_offset, u64::from_le_bytes(read(&bytes, BASE_OFFSET_AT)));
        prop_assert_eq!(h.raft_term, u64::from_le_bytes(read(&bytes, RAFT_TERM_AT)));
        prop_assert_eq!(h.raft_index, u64::from_le_bytes(read(&bytes, RAFT_INDEX_AT)));
        prop_assert_ne!((h.base_offset, h.raft_term, h.raft_index), (0, 0, 0));
        prop_assert_eq!(decode_all(&bytes).unwrap(), decode_all(&original).unwrap());
    }
}

#[test]
fn every_batch_len_bit_flip_is_detected() {
    for (case, c) in COMPRESSIONS.into_iter().enumerate() {
        let original = sample(c);
        for bit in BATCH_LEN_AT * 8..RAFT_TERM_AT * 8 {
            let mut bytes = original.to_vec();
            bytes[bit / 8] ^= 1 << (bit % 8);
            let err = BatchView::new(&bytes).unwrap_err();
            let len = u32::from_le_bytes(read(&bytes, BATCH_LEN_AT)) as usize;
            let expected_kind = if len > original.len() {
                matches!(err, BatchError::Truncated { needed, .. } if needed == len)
            } else if len < HEADER_LEN {
                matches!(err, BatchError::InvalidHeader(_))
            } else {
                matches!(err, BatchError::CrcMismatch { .. })
            };
            assert!(expected_kind, "case {case} bit {bit}: {err:?}");
        }
    }
}

#[test]
fn every_single_bit_flip_after_crc_start_is_detected() {
    // Exhaustive over one batch of each codec (larger than the proptest's).
    for (case, c) in COMPRESSIONS.into_iter().enumerate() {
        let original = sample(c);
        let mut bytes = original.to_vec();
        for bit in CRC_START * 8..original.len() * 8 {
            bytes[bit / 8] ^= 1 << (bit % 8);
            assert!(BatchView::new(&bytes).is_err(), "case {case} bit {bit}");
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        assert_eq!(bytes, original);
    }
}

// ---------------------------------------------------------------------------
// 5. Version byte
// ---------------------------------------------------------------------------

#[test]
fn bad_version_byte() {
    for (case, version) in [0u8, 2, 3, 0x80, 0xff].into_iter().enumerate() {
        let mut bytes = sample(Compression::None).to_vec();
        bytes[VERSION_AT] = version;
        // The version is checked before the CRC: same error with a stale CRC...
        assert_eq!(
            BatchView::new(&bytes).unwrap_err(),
            BatchError::UnsupportedVersion(version),
            "case {case}"
        );
        // ...and with a correct one.
        reseal(&mut bytes);
        assert_eq!(
            BatchView::new(&bytes).unwrap_err(),
            BatchError::UnsupportedVersion(version),
            "case {case}"
        );
        assert_eq!(
            BatchHeader::parse(&bytes).unwrap_err(),
            BatchError::UnsupportedVersion(version),
            "case {case}"
        );
    }
}

// ---------------------------------------------------------------------------
// 6. Invalid header fields
// ---------------------------------------------------------------------------

#[test]
fn invalid_header_fields() {
    let base = sample(Compression::None).to_vec(); // 3 records
    type Edit = fn(&mut Vec<u8>);
    // (case, edit, expected error)
    let cases: Vec<(u32, Edit, BatchError)> = vec![
        (
            0,
            |b| put(b, RECORD_COUNT_AT, &0u32.to_le_bytes()),
            BatchError::InvalidHeader("record_count is 0"),
        ),
        (
            1,
            |b| {
                put(b, RECORD_COUNT_AT, &0u32.to_le_bytes());
                put(b, LAST_OFFSET_DELTA_AT, &u32::MAX.to_le_bytes());
            },
            BatchError::InvalidHeader("record_count is 0"),
        ),
        (
            2,
            |b| put(b, LAST_OFFSET_DELTA_AT, &3u32.to_le_bytes()),
            BatchError::InvalidHeader("last_offset_delta is not record_count - 1"),
        ),
        (
            3,
            |b| put(b, LAST_OFFSET_DELTA_AT, &1u32.to_le_bytes()),
            BatchError::InvalidHeader("last_offset_delta is not record_count - 1"),
        ),
        (
            4,
            |b| put(b, RECORD_COUNT_AT, &4u32.to_le_bytes()),
            BatchError::InvalidHeader("last_offset_delta is not record_count - 1"),
        ),
        (
            5,
            |b| put(b, ATTRIBUTES_AT, &3u16.to_le_bytes()),
            BatchError::UnknownCompression(3),
        ),
        (
            6,
            |b| put(b, ATTRIBUTES_AT, &4u16.to_le_bytes()),
            BatchError::UnknownCompression(4),
        ),
        (
            7,
            |b| put(b, ATTRIBUTES_AT, &5u16.to_le_bytes()),
            BatchError::UnknownCompression(5),
        ),
        (
            8,
            |b| put(b, ATTRIBUTES_AT, &6u16.to_le_bytes()),
            BatchError::UnknownCompression(6),
        ),
        (
            9,
            |b| put(b, ATTRIBUTES_AT, &7u16.to_le_bytes()),
            BatchError::UnknownCompression(7),
        ),
        (
            10,
            // Other attribute bits do not mask the codec bits.
            |b| put(b, ATTRIBUTES_AT, &(0xfff8u16 | 5).to_le_bytes()),
            BatchError::UnknownCompression(5),
        ),
        (
            11,
            |b| put(b, BATCH_LEN_AT, &72u32.to_le_bytes()),
            BatchError::InvalidHeader("batch_len smaller than the header"),
        ),
        (
            12,
            // Length is checked before the version.
            |b| {
                put(b, BATCH_LEN_AT, &0u32.to_le_bytes());
                b[VERSION_AT] = 9;
            },
            BatchError::InvalidHeader("batch_len smaller than the header"),
        ),
        (
            13,
            // A zeroed (preallocated, never written) region.
            |b| b.iter_mut().for_each(|x| *x = 0),
            BatchError::InvalidHeader("batch_len smaller than the header"),
        ),
    ];
    for (case, edit, expected) in cases {
        let mut bytes = base.clone();
        edit(&mut bytes);
        reseal(&mut bytes);
        assert_eq!(
            BatchHeader::parse(&bytes).unwrap_err(),
            expected,
            "case {case}"
        );
        assert_eq!(BatchView::new(&bytes).unwrap_err(), expected, "case {case}");
    }
    // An all-zero buffer of exactly the header's size.
    let zeros = [0u8; HEADER_LEN];
    assert_eq!(
        BatchView::new(&zeros).unwrap_err(),
        BatchError::InvalidHeader("batch_len smaller than the header")
    );
    // A header that is valid apart from claiming more bytes than it has.
    let mut bytes = base.clone();
    put(
        &mut bytes,
        BATCH_LEN_AT,
        &(base.len() as u32 + 1).to_le_bytes(),
    );
    assert!(BatchHeader::parse(&bytes).is_ok());
    assert_eq!(
        BatchView::new(&bytes).unwrap_err(),
        BatchError::Truncated {
            needed: base.len() + 1,
            available: base.len(),
        }
    );
}

#[test]
fn crc_mismatch_reports_both_values() {
    let mut bytes = sample(Compression::None).to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    let computed = crc32fast::hash(&bytes[CRC_START..]);
    let stored = u32::from_le_bytes(read(&bytes, CRC_AT));
    assert_ne!(stored, computed);
    assert_eq!(
        BatchView::new(&bytes).unwrap_err(),
        BatchError::CrcMismatch { stored, computed }
    );
}

// ---------------------------------------------------------------------------
// 7. Corrupt records under a valid CRC
// ---------------------------------------------------------------------------

/// (case, record_count, records section, Ok records expected before the
/// error, expected error reason); reason `None` means the section is valid.
type CorruptCase = (u32, u32, Vec<u8>, u32, Option<&'static str>);

#[test]
fn corrupt_records() {
    use F::*;
    let not_utf8: &[u8] = &[0xff, 0xfe];
    #[rustfmt::skip]
    let cases: Vec<CorruptCase> = vec![
        // Sanity: the hand encoding is what the decoder accepts.
        (0, 2, [good_rec(0), good_rec(1)].concat(), 2, None),
        (1, 1, rec(&[B(0), S(5), U(0), S(1), Raw(b"k"), U(0), U(1), U(2), Raw(b"hn"), U(0)]), 1, None),
        // Truncated record body: the length claims more than is there.
        (2, 1, [enc(&[U(20)]), good_rec(0)[1..].to_vec()].concat(), 0, Some("field runs past the record")),
        (3, 1, good_rec(0)[..4].to_vec(), 0, Some("field runs past the record")),
        (4, 1, vec![], 0, Some("bad record length")),
        (5, 1, vec![0x80], 0, Some("bad record length")),
        (6, 2, good_rec(0), 1, Some("bad record length")),
        (7, 1, rec(&[]), 0, Some("empty record")),
        // Offset delta out of sequence.
        (8, 1, good_rec(1), 0, Some("offset delta out of sequence")),
        (9, 2, [good_rec(0), good_rec(0)].concat(), 1, Some("offset delta out of sequence")),
        (10, 2, [good_rec(0), good_rec(2)].concat(), 1, Some("offset delta out of sequence")),
        (11, 3, [good_rec(0), good_rec(2), good_rec(1)].concat(), 1, Some("offset delta out of sequence")),
        // Trailing bytes after the last record.
        (12, 1, [good_rec(0), vec![0]].concat(), 1, Some("bytes left after the last record")),
        (13, 1, [good_rec(0), good_rec(1)].concat(), 1, Some("bytes left after the last record")),
        // Header name not UTF-8.
        (14, 1, rec(&[B(0), S(0), U(0), S(-1), U(0), U(1), U(2), Raw(not_utf8), U(0)]), 0, Some("header name is not UTF-8")),
        (15, 2, [
            good_rec(0),
            rec(&[B(0), S(0), U(1), S(-1), U(0), U(2), U(1), Raw(b"a"), U(0), U(1), Raw(&[0xc3]), U(0)]),
        ].concat(), 1, Some("header name is not UTF-8")),
        // Negative key lengths other than -1.
        (16, 1, rec(&[B(0), S(0), U(0), S(-2), U(0), U(0)]), 0, Some("negative key length")),
        (17, 1, rec(&[B(0), S(0), U(0), S(i64::MIN), U(0), U(0)]), 0, Some("negative key length")),
        // Lengths running past the record (or overflowing).
        (18, 1, rec(&[B(0), S(0), U(0), S(5), Raw(b"abc")]), 0, Some("field runs past the record")),
        (19, 1, rec(&[B(0), S(0), U(0), S(i64::MAX), U(0), U(0)]), 0, Some("field runs past the record")),
        (20, 1, rec(&[B(0), S(0), U(0), S(-1), U(9), Raw(b"v"), U(0)]), 0, Some("field runs past the record")),
        (21, 1, rec(&[B(0), S(0), U(0), S(-1), U(u64::MAX), U(0)]), 0, Some("length overflows")),
        (22, 1, rec(&[B(0), S(0), U(0), S(-1), U(0), U(1), U(1), Raw(b"a"), U(4), Raw(b"ab")]), 0, Some("field runs past the record")),
        // The record length itself is checked against the section.
        (23, 1, [enc(&[U(u64::MAX)]), vec![0; 8]].concat(), 0, Some("length overflows")),
        // Headers: fewer than announced, more than announced, too many.
        (24, 1, rec(&[B(0), S(0), U(0), S(-1), U(0), U(2), U(1), Raw(b"a"), U(0)]), 0, Some("bad header name length")),
        (25, 1, rec(&[B(0), S(0), U(0), S(-1), U(0), U(0), U(1), Raw(b"a"), U(0)]), 0, Some("trailing bytes after the headers")),
        (26, 1, rec(&[B(0), S(0), U(0), S(-1), U(0), U(u64::from(u32::MAX) + 1)]), 0, Some("too many headers")),
        (27, 1, rec(&[B(0), S(0), U(0), S(-1), U(0), U(1), U(1), Raw(b"a")]), 0, Some("bad header value length")),
        // Malformed varints inside a record.
        (28, 1, rec(&[B(0), Raw(&[0xff; 11])]), 0, Some("bad timestamp delta")),
        (29, 1, rec(&[B(0), S(0), Raw(&[0x80])]), 0, Some("bad offset delta")),
        (30, 1, rec(&[B(0), S(0), U(0), Raw(&[0xff; 10])]), 0, Some("bad key length")),
        (31, 1, rec(&[B(0), S(0), U(0), S(-1)]), 0, Some("bad value length")),
        (32, 1, rec(&[B(0), S(0), U(0), S(-1), U(0)]), 0, Some("bad header count")),
    ];
    for (case, count, section, oks, reason) in cases {
        for c in COMPRESSIONS {
            let body = compress(c, &section);
            let bytes = raw_batch(count, compression_bits(c), 1000, &body);
            let view = BatchView::new(&bytes).unwrap_or_else(|e| panic!("case {case} {c:?}: {e}"));
            let records = view
                .records()
                .unwrap_or_else(|e| panic!("case {case} {c:?}: {e}"));
            assert_eq!(records.len(), count, "case {case} {c:?}");
            let (got_oks, err) = drain(&records);
            assert_eq!(got_oks as u32, oks, "case {case} {c:?}");
            let expected = reason.map(|reason| BatchError::CorruptRecord { index: oks, reason });
            assert_eq!(err, expected, "case {case} {c:?}");
            assert_eq!(records.to_vec().err(), expected, "case {case} {c:?}");
        }
    }
}

fn header_strategy() -> impl Strategy<Value = (u32, u16, i64)> {
    (1u32..=6, 0u16..=2, any::<i64>())
}

proptest! {
    #![proptest_config(config(256))]

    /// Any records section under a valid header and CRC: verifying succeeds,
    /// decoding fails cleanly or succeeds, and nothing panics.
    #[test]
    fn garbage_records_never_panic(
        (count, codec, first_ts) in header_strategy(),
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let bytes = raw_batch(count, codec, first_ts, &body);
        let view = BatchView::new(&bytes).unwrap();
        if let Ok(records) = view.records() {
            let (oks, err) = drain(&records);
            prop_assert!(oks <= count as usize);
            if err.is_none() {
                prop_assert_eq!(oks, count as usize);
            }
        }
    }

    /// Same with garbage that is close to valid: a real records section with
    /// a few bytes overwritten, inserted or cut, then compressed (so the
    /// decompressed bytes, not the compressed ones, are damaged).
    #[test]
    fn mutated_records_never_panic(
        (compression, _producer, recs) in batch_input_strategy(4, 8, 64, 2),
        edits in proptest::collection::vec(
            (0u8..3, any::<proptest::sample::Index>(), any::<u8>()),
            1..6,
        ),
        count_delta in -1i64..=1,
    ) {
        let good = build(Compression::None, None, &recs).unwrap();
        let mut section = good[HEADER_LEN..].to_vec();
        for (kind, at, byte) in edits {
            let i = at.index(section.len() + 1);
            match kind {
                0 if i < section.len() => section[i] = byte,
                1 => section.insert(i, byte),
                _ => section.truncate(i),
            }
        }
        let count = (recs.len() as i64 + count_delta).max(1) as u32;
        let first_ts = recs[0].timestamp;
        let bytes = raw_batch(count, compression_bits(compression), first_ts, &compress(compression, &section));
        let view = BatchView::new(&bytes).unwrap();
        let records = view.records().unwrap();
        let (oks, err) = drain(&records);
        prop_assert!(oks <= count as usize);
        if err.is_none() {
            prop_assert_eq!(oks, count as usize);
        }
    }
}

// ---------------------------------------------------------------------------
// 8. Decompression limits and garbage
// ---------------------------------------------------------------------------

fn decompress_error(bytes: &[u8]) -> String {
    let view = BatchView::new(bytes).unwrap();
    match view.records() {
        Err(BatchError::Decompress(msg)) => msg,
        other => panic!("expected a decompression error, got {other:?}"),
    }
}

#[test]
fn lz4_size_prefix_over_the_limit() {
    let lz4 = compression_bits(Compression::Lz4);
    let payload = lz4_flex::block::compress(&good_rec(0));
    // (case, claimed size)
    let over = [
        (0, MAX_DECOMPRESSED_LEN as u32 + 1),
        (1, 1 << 30),
        (2, u32::MAX),
    ];
    for (case, claimed) in over {
        let body = [&claimed.to_le_bytes()[..], &payload].concat();
        let msg = decompress_error(&raw_batch(1, lz4, 0, &body));
        assert!(msg.contains("limit"), "case {case}: {msg}");
        assert!(msg.contains(&claimed.to_string()), "case {case}: {msg}");
    }
    // Exactly at the limit is allowed (the claim is an upper bound).
    let body = [&(MAX_DECOMPRESSED_LEN as u32).to_le_bytes()[..], &payload].concat();
    let bytes = raw_batch(1, lz4, 0, &body);
    let view = BatchView::new(&bytes).unwrap();
    let records = view.records().unwrap();
    assert_eq!(drain(&records), (1, None));
}

/// A zstd frame that declares `size` bytes of content and expands to them
/// from RLE blocks of at most 128 KiB (four bytes each).
fn zstd_rle_frame(size: usize, byte: u8) -> Vec<u8> {
    const BLOCK: usize = 128 << 10;
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd]; // magic
    out.push(0b1000_0000); // 4-byte content size, not single segment, no checksum
    out.push(10 << 3); // window: 2^(10 + 10) = 1 MiB
    out.extend_from_slice(&u32::try_from(size).unwrap().to_le_bytes());
    let mut left = size;
    loop {
        let n = left.min(BLOCK);
        left -= n;
        let last = u32::from(left == 0);
        let header = last | (1 << 1) | (u32::try_from(n).unwrap() << 3); // RLE block
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.push(byte);
        if left == 0 {
            return out;
        }
    }
}

#[test]
fn zstd_output_over_the_limit() {
    // The hand-made frame is valid.
    let small = zstd_rle_frame(300_000, 0x61);
    assert_eq!(
        zstd::bulk::decompress(&small, 1 << 20).unwrap(),
        vec![0x61; 300_000]
    );
    // Its expansion is what a capacity limit rejects.
    let mib_plus_one = zstd_rle_frame((1 << 20) + 1, 0);
    assert!(zstd::bulk::decompress(&mib_plus_one, 1 << 20).is_err());
    assert_eq!(
        zstd::bulk::decompress(&mib_plus_one, 2 << 20)
            .unwrap()
            .len(),
        (1 << 20) + 1
    );
    // A few KiB that expand to one byte more than the limit.
    let bomb = zstd_rle_frame(MAX_DECOMPRESSED_LEN + 1, 0);
    assert!(bomb.len() < 16 << 10);
    let bytes = raw_batch(1, compression_bits(Compression::Zstd), 0, &bomb);
    decompress_error(&bytes);
}

#[test]
fn garbage_compressed_bodies() {
    let lz4 = compression_bits(Compression::Lz4);
    let zstd = compression_bits(Compression::Zstd);
    let valid_zstd = zstd::bulk::compress(&good_rec(0), 3).unwrap();
    let mut bad_zstd = valid_zstd.clone();
    bad_zstd.truncate(bad_zstd.len() - 2);
    // (case, attributes, records section)
    let cases: Vec<(u32, u16, Vec<u8>)> = vec![
        (0, lz4, vec![]),
        (1, lz4, vec![1, 0, 0]),
        // Size prefix fine, then a literal run longer than the input.
        (2, lz4, vec![10, 0, 0, 0, 0xf0]),
        (3, lz4, vec![10, 0, 0, 0, 0xff, 0xff]),
        // A match before the start of the output.
        (4, lz4, vec![10, 0, 0, 0, 0x10, b'a', 0x05, 0x00]),
        // More output than the size prefix announces.
        (
            5,
            lz4,
            [
                &2u32.to_le_bytes()[..],
                &lz4_flex::block::compress(&[7; 100]),
            ]
            .concat(),
        ),
        (7, zstd, vec![0x28, 0xb5, 0x2f]),
        (8, zstd, b"definitely not a zstd frame".to_vec()),
        (9, zstd, bad_zstd),
        // A raw lz4 block under the zstd bit.
        (
            10,
            zstd,
            lz4_flex::block::compress_prepend_size(&good_rec(0)),
        ),
    ];
    for (case, attributes, body) in cases {
        let bytes = raw_batch(1, attributes, 0, &body);
        let view = BatchView::new(&bytes).unwrap_or_else(|e| panic!("case {case}: {e}"));
        assert!(
            matches!(view.records(), Err(BatchError::Decompress(_))),
            "case {case}: {:?}",
            view.records()
        );
    }
    // An empty zstd section is zero frames, which decompress to nothing: the
    // batch still fails, as a record error.
    let bytes = raw_batch(1, zstd, 0, &[]);
    let view = BatchView::new(&bytes).unwrap();
    assert_eq!(
        view.records().unwrap().to_vec().unwrap_err(),
        BatchError::CorruptRecord {
            index: 0,
            reason: "bad record length"
        }
    );
    // Sanity: the valid frame the bad one came from decodes.
    let bytes = raw_batch(1, zstd, 0, &valid_zstd);
    assert_eq!(
        drain(&BatchView::new(&bytes).unwrap().records().unwrap()),
        (1, None)
    );
}

// ---------------------------------------------------------------------------
// 9. Iterating over consecutive batches
// ---------------------------------------------------------------------------

fn several() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut next = 0u64;
    for (i, c) in [
        Compression::None,
        Compression::Zstd,
        Compression::Lz4,
        Compression::None,
    ]
    .into_iter()
    .enumerate()
    {
        let recs: Vec<Rec> = (0..=i)
            .map(|j| Rec::simple(None, format!("batch {i} record {j}").as_bytes(), j as i64))
            .collect();
        let mut bytes = build(c, None, &recs).unwrap().to_vec();
        stamp(&mut bytes, next, 1, i as u64 + 1);
        next += recs.len() as u64;
        out.push(bytes);
    }
    out.push(
        BatchBuilder::control(ControlKind::RaftNoop, b"", 99)
            .unwrap()
            .to_vec(),
    );
    out
}

#[test]
fn batch_iter_positions() {
    let batches = several();
    let buf = batches.concat();
    let mut it = BatchIter::new(&buf);
    let mut start = 0;
    let mut expected_offset = 0;
    for (i, b) in batches.iter().enumerate() {
        assert_eq!(it.position(), start, "batch {i}");
        let view = it.next().unwrap().unwrap();
        assert_eq!(view.as_bytes(), &b[..], "batch {i}");
        if i < 4 {
            assert_eq!(view.base_offset(), expected_offset, "batch {i}");
            assert_eq!(view.header().raft_index, i as u64 + 1, "batch {i}");
            expected_offset = view.next_offset();
        } else {
            assert!(view.is_control());
        }
        start += b.len();
        assert_eq!(it.position(), start, "batch {i}");
    }
    assert!(it.next().is_none());
    assert_eq!(it.position(), buf.len());
    assert!(it.next().is_none());
    assert!(BatchIter::new(&[]).next().is_none());
}

#[test]
fn batch_iter_stops_at_the_first_bad_batch() {
    let batches = several();
    let lens: Vec<usize> = batches.iter().map(Vec::len).collect();
    let start_of = |i: usize| lens[..i].iter().sum::<usize>();
    type Damage = fn(&mut Vec<Vec<u8>>);
    type IsExpected = fn(&BatchError) -> bool;
    // (case, damage, index of the bad batch, expected error kind)
    let cases: Vec<(u32, Damage, usize, IsExpected)> = vec![
        (
            0,
            |b| {
                let n = b[2].len();
                b[2][n - 1] ^= 1;
            },
            2,
            |e| matches!(e, BatchError::CrcMismatch { .. }),
        ),
        (
            1,
            |b| b[1][VERSION_AT] = 7,
            1,
            |e| *e == BatchError::UnsupportedVersion(7),
        ),
        (
            2,
            |b| {
                let n = b[4].len();
                b[4].truncate(n - 1);
            },
            4,
            |e| matches!(e, BatchError::Truncated { .. }),
        ),
        (
            3,
            // A zeroed region after two good batches (preallocated tail).
            |b| {
                b.truncate(2);
                b.push(vec![0; 200]);
            },
            2,
            |e| matches!(e, BatchError::InvalidHeader(_)),
        ),
        (
            4,
            // Only the first few bytes of a batch.
            |b| {
                b.truncate(1);
                b[0].truncate(5);
            },
            0,
            |e| matches!(e, BatchError::Truncated { .. }),
        ),
    ];
    for (case, damage, bad, is_expected) in cases {
        let mut damaged = batches.clone();
        damage(&mut damaged);
        let buf = damaged.concat();
        let mut it = BatchIter::new(&buf);
        for good in &batches[..bad] {
            let view = it.next().unwrap().unwrap();
            assert_eq!(view.as_bytes(), &good[..], "case {case}");
        }
        let err = it.next().unwrap().unwrap_err();
        assert!(is_expected(&err), "case {case}: {err:?}");
        // The position stays at the bad batch: where a log would be truncated.
        assert_eq!(it.position(), start_of(bad), "case {case}");
        assert!(it.next().is_none(), "case {case}");
        assert!(it.next().is_none(), "case {case}");
        assert_eq!(it.position(), start_of(bad), "case {case}");
    }
}

// ---------------------------------------------------------------------------
// 10. Control batches
// ---------------------------------------------------------------------------

#[test]
fn control_batches() {
    // (case, kind, payload)
    let cases: [(u32, ControlKind, &[u8]); 4] = [
        (0, ControlKind::RaftNoop, b""),
        (1, ControlKind::RaftConfChange, b"\x01\x02conf"),
        (2, ControlKind::Other(2), b"x"),
        (3, ControlKind::Other(0xfffe), b""),
    ];
    for (case, kind, payload) in cases {
        let bytes = BatchBuilder::control(kind, payload, -77).unwrap();
        let view = BatchView::new(&bytes).unwrap();
        assert!(view.is_control(), "case {case}");
        assert!(view.header().attributes.is_control(), "case {case}");
        assert_eq!(
            view.header().attributes.compression(),
            Ok(Compression::None)
        );
        assert_eq!(view.header().record_count, 1, "case {case}");
        assert_eq!(view.header().first_timestamp, -77, "case {case}");
        let records = view.records().unwrap();
        let all = records.to_vec().unwrap();
        assert_eq!(all.len(), 1, "case {case}");
        let r = all[0];
        assert_eq!(r.key, Some(&kind.code().to_le_bytes()[..]), "case {case}");
        assert_eq!(r.value, payload, "case {case}");
        assert_eq!(r.timestamp, -77, "case {case}");
        assert_eq!(r.header_count(), 0, "case {case}");
        assert_eq!(
            ControlKind::from_key(r.key.unwrap()),
            Some(kind),
            "case {case}"
        );
    }
    assert!(
        !BatchView::new(&sample(Compression::None))
            .unwrap()
            .is_control()
    );
}

#[test]
fn control_kind_codes() {
    // (case, key, parsed)
    let cases: [(u32, &[u8], Option<ControlKind>); 9] = [
        (0, &[0, 0], Some(ControlKind::RaftNoop)),
        (1, &[1, 0], Some(ControlKind::RaftConfChange)),
        (2, &[2, 0], Some(ControlKind::Other(2))),
        (3, &[0, 1], Some(ControlKind::Other(256))),
        (4, &[0xff, 0xff], Some(ControlKind::Other(u16::MAX))),
        (5, &[], None),
        (6, &[0], None),
        (7, &[0, 0, 0], None),
        (8, &[1, 0, 0, 0], None),
    ];
    for (case, key, parsed) in cases {
        assert_eq!(ControlKind::from_key(key), parsed, "case {case}");
    }
    assert_eq!(ControlKind::RaftNoop.code(), 0);
    assert_eq!(ControlKind::RaftConfChange.code(), 1);
    // Every code round-trips; known codes parse to their named kind.
    for code in 0..=u16::MAX {
        let kind = ControlKind::from_key(&code.to_le_bytes()).unwrap();
        assert_eq!(kind.code(), code);
        assert_eq!(
            matches!(kind, ControlKind::Other(_)),
            code > 1,
            "code {code}"
        );
        assert_eq!(ControlKind::Other(code).code(), code);
    }
}

// ---------------------------------------------------------------------------
// 11. Empty builder
// ---------------------------------------------------------------------------

#[test]
fn empty_builder_is_an_error() {
    for (case, c) in COMPRESSIONS.into_iter().enumerate() {
        assert_eq!(
            BatchBuilder::new(c).finish().unwrap_err(),
            BatchError::Empty,
            "case {case}"
        );
        let mut b = BatchBuilder::new(c);
        b.producer(1, 2, 3);
        assert_eq!(b.estimated_len(), HEADER_LEN);
        assert_eq!(b.finish().unwrap_err(), BatchError::Empty, "case {case}");
    }
}

#[test]
fn verified_batch_checks_once_and_keeps_the_header() {
    for (case, compression) in [Compression::None, Compression::Lz4, Compression::Zstd]
        .into_iter()
        .enumerate()
    {
        let bytes = sample(compression);
        let verified = VerifiedBatch::new(bytes.clone()).unwrap();
        let view = BatchView::new(&bytes).unwrap();
        assert_eq!(verified.header(), view.header(), "case {case}");
        assert_eq!(verified.view().as_bytes(), &bytes[..], "case {case}");

        // What the builder reports equals what a reader parses.
        let mut b = BatchBuilder::new(compression);
        b.push(NewRecord {
            key: Some(b"k"),
            value: b"v",
            headers: &[],
            timestamp: 9,
        });
        let built = b.finish_verified().unwrap();
        let parsed = BatchView::new(built.bytes()).unwrap();
        assert_eq!(built.header(), parsed.header(), "case {case}");

        // Trailing bytes and a flipped bit are refused.
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(
            matches!(
                VerifiedBatch::new(Bytes::from(longer)),
                Err(BatchError::TrailingBytes { trailing: 1, .. })
            ),
            "case {case}"
        );
        let mut flipped = bytes.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(
            matches!(
                VerifiedBatch::new(Bytes::from(flipped)),
                Err(BatchError::CrcMismatch { .. })
            ),
            "case {case}"
        );
    }
}
