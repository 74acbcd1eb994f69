use super::*;
use raft::Storage;
use raft::eraftpb::EntryType;
use runnel_batch::{Compression, NewRecord};
use runnel_storage::{FlushPolicy, LogConfig};

/// A temp dir on tmpfs when there is one: these tests fsync a lot.
pub(crate) fn test_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    tempfile::Builder::new()
        .prefix("runnel-raft-")
        .tempdir_in(base)
        .unwrap()
}

pub(crate) fn test_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        max_batch_bytes: 2048,
        index_interval_bytes: 256,
        index_max_bytes: 4096,
        flush: FlushPolicy::Never,
        retention_ms: None,
        segment_ms: None,
        ..Default::default()
    }
}

pub(crate) fn data_batch(value: &[u8], records: u32) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    for _ in 0..records {
        b.push(NewRecord {
            value,
            timestamp: 1_000,
            ..Default::default()
        });
    }
    b.finish().unwrap()
}

fn entry(index: u64, term: u64, data: Bytes) -> Entry {
    Entry {
        index,
        term,
        data,
        ..Default::default()
    }
}

fn bootstrap() -> Bootstrap {
    Bootstrap {
        voters: vec![3, 1, 2],
        created_ms: 77,
    }
}

fn open(dir: &std::path::Path, config: LogConfig) -> LogStorage {
    let log = Arc::new(Log::open(dir, config).unwrap());
    LogStorage::open(log, &bootstrap()).unwrap()
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

#[test]
fn a_new_group_starts_with_the_bootstrap_entry() {
    let dir = test_dir();
    let s = open(dir.path(), test_log_config());
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 1));
    assert_eq!(s.term(0).unwrap(), 0, "trap 2: the entry before the first");
    assert_eq!(s.term(1).unwrap(), BOOTSTRAP_TERM);
    let st = s.initial_state().unwrap();
    assert_eq!(st.hard_state.commit, 1);
    assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(s.applied(), 1);
    assert_eq!(
        s.end_offset(1),
        Some(1),
        "the bootstrap entry takes offset 0"
    );
    let e = s.entries(1, 2, None, ctx()).unwrap();
    assert_eq!((e[0].index, e[0].term, e[0].data.is_empty()), (1, 1, true));
    // Bootstrapping with other voters later changes nothing.
    drop(s);
    let log = Arc::new(Log::open(dir.path(), test_log_config()).unwrap());
    let s = LogStorage::open(
        log,
        &Bootstrap {
            voters: vec![9],
            created_ms: 1,
        },
    )
    .unwrap();
    assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
}

#[test]
fn bootstrap_refuses_bad_voters_and_foreign_logs() {
    let dir = test_dir();
    let log = Arc::new(Log::open(dir.path(), test_log_config()).unwrap());
    for voters in [vec![], vec![0, 1]] {
        let b = Bootstrap {
            voters,
            created_ms: 0,
        };
        assert!(matches!(
            LogStorage::open(Arc::clone(&log), &b),
            Err(RaftError::Config(_))
        ));
    }
    let dir = test_dir();
    let log = Arc::new(Log::open(dir.path(), test_log_config()).unwrap());
    log.append_entry(&data_batch(b"x", 1), 4, 1).unwrap();
    log.append_entry(&data_batch(b"x", 1), 4, 2).unwrap();
    assert!(matches!(
        LogStorage::open(log, &bootstrap()),
        Err(RaftError::Corrupt { .. })
    ));
}

#[test]
fn entries_are_half_open_limited_and_typed() {
    let dir = test_dir();
    let mut s = open(dir.path(), test_log_config());
    let mut cc = entry(4, 2, Bytes::from_static(b"\x12\x00"));
    cc.set_entry_type(EntryType::EntryConfChangeV2);
    let ents = vec![
        entry(2, 2, data_batch(b"a", 3)),
        entry(3, 2, Bytes::new()),
        cc,
        entry(5, 2, data_batch(b"b", 2)),
    ];
    let infos = s.append(&ents, 5).unwrap();
    let offsets: Vec<(u64, u64)> = infos
        .iter()
        .map(|i| (i.base_offset, i.last_offset))
        .collect();
    assert_eq!(offsets, vec![(1, 3), (4, 4), (5, 5), (6, 7)]);
    assert_eq!(s.end_offset(5), Some(8));
    assert_eq!(s.last_index().unwrap(), 5);
    let got = s.entries(2, 6, None, ctx()).unwrap();
    assert_eq!(got.len(), 4);
    for (g, want) in got.iter().zip(&ents) {
        assert_eq!(
            (g.index, g.term, g.get_entry_type()),
            (want.index, want.term, want.get_entry_type())
        );
    }
    assert!(got[1].data.is_empty(), "a no-op reads back empty");
    assert_eq!(
        got[2].data, ents[2].data,
        "a conf change reads back as its protobuf"
    );
    // limit_size: at least one entry, even with a zero limit.
    let cases: [(u64, u64, Option<u64>, usize); 5] = [
        (2, 6, Some(0), 1),
        (2, 6, Some(1), 1),
        (2, 6, None, 4),
        (3, 5, None, 2),
        (5, 5, None, 0),
    ];
    for (i, (low, high, max, n)) in cases.into_iter().enumerate() {
        assert_eq!(
            s.entries(low, high, max, ctx()).unwrap().len(),
            n,
            "case {i}"
        );
    }
    assert!(s.entries(2, 7, None, ctx()).is_err(), "past the last index");
}

#[test]
fn a_conflicting_append_truncates_first() {
    let dir = test_dir();
    let mut s = open(dir.path(), test_log_config());
    let ents: Vec<Entry> = (2..=5)
        .map(|i| entry(i, 2, data_batch(b"old", 1)))
        .collect();
    s.append(&ents, 0).unwrap();
    let infos = s.append(&[entry(4, 3, data_batch(b"new", 2))], 0).unwrap();
    assert_eq!(
        infos[0].base_offset, 3,
        "the new entry takes the old one's offset"
    );
    assert_eq!(s.last_index().unwrap(), 4);
    assert_eq!(s.term(4).unwrap(), 3);
    assert_eq!(s.term(3).unwrap(), 2);
    assert_eq!(s.end_offset(4), Some(5));
    assert!(s.term(5).is_err());
    // At or below the commit index, or with a gap: refused.
    s.set_commit(3);
    assert!(s.append(&[entry(3, 4, data_batch(b"x", 1))], 0).is_err());
    assert!(s.append(&[entry(6, 4, data_batch(b"x", 1))], 0).is_err());
}

#[test]
fn state_and_offsets_survive_a_reopen() {
    let dir = test_dir();
    {
        let mut s = open(dir.path(), test_log_config());
        let ents: Vec<Entry> = (2..=6).map(|i| entry(i, 2, data_batch(b"v", 2))).collect();
        s.append(&ents, 0).unwrap();
        s.sync_log().unwrap();
        s.set_hard_state(&HardState {
            term: 2,
            vote: 1,
            commit: 4,
            ..Default::default()
        });
        s.set_applied(4);
        s.persist(true).unwrap();
    }
    let s = open(dir.path(), test_log_config());
    assert_eq!(s.hard_state().commit, 4);
    assert_eq!(s.hard_state().vote, 1);
    assert_eq!(s.applied(), 4);
    assert_eq!(s.end_offset(4), Some(7));
    assert_eq!(s.end_offset(6), Some(11));
    assert_eq!(
        s.end_offset(3),
        None,
        "below the applied index is forgotten"
    );
}

#[test]
fn a_commit_past_the_log_refuses_to_start() {
    let dir = test_dir();
    {
        let mut s = open(dir.path(), test_log_config());
        s.set_commit(9);
        s.persist(true).unwrap();
    }
    let log = Arc::new(Log::open(dir.path(), test_log_config()).unwrap());
    assert!(matches!(
        LogStorage::open(log, &bootstrap()),
        Err(RaftError::Corrupt { .. })
    ));
}

#[test]
fn snapshot_means_the_log_starts_here() {
    let config = LogConfig {
        retention_bytes: Some(1),
        ..test_log_config()
    };
    let leader_dir = test_dir();
    let mut leader = open(leader_dir.path(), config.clone());
    assert!(matches!(
        leader.snapshot(0, 2),
        Err(raft::Error::Store(
            RaftStorageError::SnapshotTemporarilyUnavailable
        ))
    ));
    let big = vec![7u8; 600];
    let ents: Vec<Entry> = (2..=20).map(|i| entry(i, 3, data_batch(&big, 1))).collect();
    s_append_commit(&mut leader, &ents, 20);
    let first = leader.apply_retention(0).unwrap();
    assert!(
        first > 2,
        "retention deleted segments (first index {first})"
    );
    assert_eq!(leader.first_index().unwrap(), first);
    assert_eq!(leader.term(first - 1).unwrap(), 3);
    assert!(matches!(
        leader.entries(first - 1, first, None, ctx()),
        Err(raft::Error::Store(RaftStorageError::Compacted))
    ));
    let snap = leader.snapshot(0, 2).unwrap();
    let meta = snap.get_metadata();
    assert_eq!((meta.index, meta.term), (first - 1, 3));
    assert_eq!(meta.get_conf_state().voters, vec![1, 2, 3]);
    let data = SnapshotData::decode(&snap.data).unwrap();
    // Entry i (i >= 2) holds offset i - 1.
    assert_eq!(data.start_offset, first - 1);

    let follower_dir = test_dir();
    let mut follower = open(follower_dir.path(), config);
    follower.append(&ents[..3], 0).unwrap();
    follower.apply_snapshot(&snap).unwrap();
    assert_eq!(follower.first_index().unwrap(), first);
    assert_eq!(follower.last_index().unwrap(), first - 1);
    assert_eq!(follower.term(first - 1).unwrap(), 3);
    assert_eq!(follower.hard_state().commit, first - 1);
    assert_eq!(follower.applied(), first - 1);
    let rest: Vec<Entry> = ents.iter().filter(|e| e.index >= first).cloned().collect();
    let infos = follower.append(&rest, 0).unwrap();
    assert_eq!(
        infos[0].base_offset, data.start_offset,
        "offsets match the leader's"
    );
    assert_eq!(follower.end_offset(20), leader.end_offset(20));
}

fn s_append_commit(s: &mut LogStorage, ents: &[Entry], commit: u64) {
    s.append(ents, 0).unwrap();
    s.sync_log().unwrap();
    s.set_commit(commit);
    s.set_applied(commit);
    s.persist(true).unwrap();
}

#[test]
fn snapshot_data_round_trips_and_rejects_garbage() {
    let d = SnapshotData { start_offset: 42 };
    assert_eq!(SnapshotData::decode(&d.encode()), Ok(d));
    let cases: [&[u8]; 4] = [
        b"",
        b"\x01\x00",
        b"\x02\x00\x00\x00\x00\x00\x00\x00\x00",
        &[1u8; 10],
    ];
    for (i, c) in cases.iter().enumerate() {
        assert!(SnapshotData::decode(c).is_err(), "case {i}");
    }
}

#[test]
fn a_state_record_behind_the_log_start_is_caught_up() {
    let dir = test_dir();
    {
        let s = open(dir.path(), test_log_config());
        // A reset whose state record never reached the disk.
        s.log().reset_to(30, 12, 4).unwrap();
    }
    let s = open(dir.path(), test_log_config());
    assert_eq!(s.hard_state().commit, 12);
    assert_eq!(s.applied(), 12);
    assert_eq!(s.end_offset(12), Some(30));
    assert_eq!(s.term(12).unwrap(), 4);
    drop(s);
    let s = open(dir.path(), test_log_config());
    assert_eq!(
        s.hard_state().commit,
        12,
        "the caught-up record was persisted"
    );
}

/// One step of the model test.
#[derive(Clone, Debug)]
enum Op {
    /// Append `kinds` starting `back` entries before the end (a conflict
    /// when `back > 0`), under a term bumped by `bump`.
    Append {
        back: u64,
        bump: u64,
        kinds: Vec<u8>,
    },
    /// Commit and apply `n` more entries.
    Commit { n: u64 },
    /// Sync and reopen.
    Reopen,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0u64..3, 0u64..2, proptest::collection::vec(0u8..5, 1..4))
            .prop_map(|(back, bump, kinds)| Op::Append { back, bump, kinds }),
        2 => (0u64..4).prop_map(|n| Op::Commit { n }),
        1 => Just(Op::Reopen),
    ]
}

/// Entry for a model kind: 0 no-op, 1 conf change, 2.. a batch of that many records.
fn model_entry(index: u64, term: u64, kind: u8) -> Entry {
    let mut e = entry(index, term, Bytes::new());
    match kind {
        0 => {}
        1 => {
            e.set_entry_type(EntryType::EntryConfChangeV2);
            e.data = Bytes::from_static(b"\x12\x00");
        }
        n => e.data = data_batch(&[n; 9], u32::from(n) - 1),
    }
    e
}

fn records_of(kind: u8) -> u64 {
    if kind < 2 { 1 } else { u64::from(kind) - 1 }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// LogStorage against a Vec of (term, kind): appends with conflicts,
    /// commits, reopens; every index's term, type and offsets match.
    #[test]
    fn storage_matches_a_model(ops in proptest::collection::vec(op(), 1..25)) {
        let dir = test_dir();
        let mut s = open(dir.path(), test_log_config());
        // Index i is model[i - 1]; index 1 is the bootstrap no-op.
        let mut model: Vec<(u64, u8)> = vec![(BOOTSTRAP_TERM, 0)];
        let mut commit = 1u64;
        for op in ops {
            match op {
                Op::Append { back, bump, kinds } => {
                    let last = model.len() as u64;
                    let first = (last + 1).saturating_sub(back).max(commit + 1);
                    let term = model.last().map_or(1, |m| m.0) + bump;
                    let ents: Vec<Entry> = kinds
                        .iter()
                        .enumerate()
                        .map(|(k, &kind)| model_entry(first + k as u64, term, kind))
                        .collect();
                    s.append(&ents, 9).unwrap();
                    model.truncate(first as usize - 1);
                    model.extend(kinds.iter().map(|&k| (term, k)));
                }
                Op::Commit { n } => {
                    commit = (commit + n).min(model.len() as u64);
                    s.set_commit(commit);
                    s.set_applied(commit);
                }
                Op::Reopen => {
                    s.sync_log().unwrap();
                    s.persist(true).unwrap();
                    drop(s);
                    s = open(dir.path(), test_log_config());
                    proptest::prop_assert_eq!(s.hard_state().commit, commit);
                }
            }
            let last = model.len() as u64;
            proptest::prop_assert_eq!(s.last_index().unwrap(), last);
            proptest::prop_assert_eq!(s.first_index().unwrap(), 1);
            let got = s.entries(1, last + 1, None, ctx()).unwrap();
            proptest::prop_assert_eq!(got.len() as u64, last);
            let mut end = 0;
            for (k, (e, &(term, kind))) in got.iter().zip(&model).enumerate() {
                let index = k as u64 + 1;
                proptest::prop_assert_eq!((e.index, e.term), (index, term));
                proptest::prop_assert_eq!(s.term(index).unwrap(), term);
                let want_type = if kind == 1 { EntryType::EntryConfChangeV2 } else { EntryType::EntryNormal };
                proptest::prop_assert_eq!(e.get_entry_type(), want_type);
                proptest::prop_assert_eq!(e.data.is_empty(), kind == 0);
                end += records_of(kind);
                if index >= s.applied() {
                    proptest::prop_assert_eq!(s.end_offset(index), Some(end), "index {}", index);
                }
            }
        }
    }
}
