use super::*;
use crate::feed::{ReplicaId, ReplicaSpec};
use crate::settings::{CleanupPolicy, TopicConfigChange};
use proptest::prelude::*;

/// A state driven by a counter of Raft indexes.
struct Driver {
    state: ClusterState,
    index: u64,
}

impl Driver {
    fn new() -> Self {
        Driver {
            state: ClusterState::new(),
            index: 0,
        }
    }

    fn with_brokers(n: u32) -> Self {
        let mut d = Driver::new();
        for id in 1..=n {
            d.apply(register(id)).unwrap();
        }
        d
    }

    fn apply(&mut self, command: Command) -> Result<Applied, ClusterError> {
        self.index += 1;
        self.state.apply(self.index, &command)
    }
}

fn register(id: BrokerId) -> Command {
    Command::RegisterBroker {
        id,
        address: format!("n{id}:9092"),
        rack: None,
    }
}

/// Creation time of every topic made by [`create`].
const CREATED_MS: i64 = 1_764_000_000_000;

fn create(name: &str, partitions: u32, replication_factor: u32) -> Command {
    Command::CreateTopic {
        name: name.into(),
        settings: TopicSettings {
            partitions,
            replication_factor,
            ..TopicSettings::default()
        },
        created_ms: CREATED_MS,
    }
}

fn grow(name: &str, partitions: u32) -> Command {
    Command::CreatePartitions {
        name: name.into(),
        partitions,
        created_ms: CREATED_MS + 1,
    }
}

fn spread(values: impl Iterator<Item = u32>) -> u32 {
    let v: Vec<u32> = values.collect();
    v.iter().max().unwrap_or(&0) - v.iter().min().unwrap_or(&0)
}

#[test]
fn register_fence_unfence() {
    let mut d = Driver::with_brokers(2);
    assert_eq!(
        d.apply(Command::FenceBroker { id: 2 }).unwrap(),
        Applied::BrokerFenced(2)
    );
    assert!(d.state.brokers()[&2].fenced);
    // Re-registering moves the address and keeps the fence.
    let again = Command::RegisterBroker {
        id: 2,
        address: "new:9092".into(),
        rack: Some("r1".into()),
    };
    let Applied::BrokerRegistered { broker, previous } = d.apply(again).unwrap() else {
        panic!("not a registration")
    };
    assert_eq!(broker.address, "new:9092");
    assert!(broker.fenced);
    assert_eq!(previous.unwrap().address, "n2:9092");
    d.apply(Command::UnfenceBroker { id: 2 }).unwrap();
    assert!(!d.state.brokers()[&2].fenced);
    assert_eq!(d.state.metadata_version(), d.index);
    let gone = d.state.brokers()[&2].clone();
    assert_eq!(
        d.apply(Command::UnregisterBroker { id: 2 }).unwrap(),
        Applied::BrokerUnregistered(gone)
    );
    assert_eq!(
        d.state.brokers().keys().copied().collect::<Vec<_>>(),
        vec![1]
    );
}

#[test]
fn check_predicts_apply_and_changes_nothing() {
    let mut d = Driver::with_brokers(3);
    let before = d.state.clone();
    let predicted = d.state.check(&create("t", 3, 2)).unwrap();
    assert_eq!(d.state, before);
    assert_eq!(d.apply(create("t", 3, 2)).unwrap(), predicted);
    assert_eq!(
        d.state.check(&create("t", 3, 2)).unwrap_err(),
        ClusterError::TopicExists("t".into())
    );
}

/// Refusals: each is the same on every node and changes no metadata.
#[test]
fn refusals_change_nothing() {
    let long_rack = "r".repeat(256);
    let cases: Vec<(Command, ClusterError)> = vec![
        (
            Command::RegisterBroker {
                id: 0,
                address: "a:1".into(),
                rack: None,
            },
            ClusterError::InvalidArgument(
                "broker id must be at least 1 (0 means \"no leader\" in the API)".into(),
            ),
        ),
        (
            Command::RegisterBroker {
                id: 4,
                address: String::new(),
                rack: None,
            },
            ClusterError::InvalidArgument("broker 4: address must be 1-1024 bytes, got 0".into()),
        ),
        (
            Command::RegisterBroker {
                id: 4,
                address: "a:1".into(),
                rack: Some(long_rack),
            },
            ClusterError::InvalidArgument(
                "broker 4: rack must be 1-255 bytes when set, got 256".into(),
            ),
        ),
        (
            Command::FenceBroker { id: 9 },
            ClusterError::UnknownBroker(9),
        ),
        (
            Command::UnfenceBroker { id: 9 },
            ClusterError::UnknownBroker(9),
        ),
        (
            Command::UnregisterBroker { id: 9 },
            ClusterError::UnknownBroker(9),
        ),
        (
            Command::UnregisterBroker { id: 1 },
            ClusterError::BrokerInUse { id: 1, replicas: 2 },
        ),
        (
            create("a/b", 1, 1),
            ClusterError::InvalidName {
                name: "a/b".into(),
                why: "it holds a character outside [a-zA-Z0-9._-]",
            },
        ),
        (
            create("..", 1, 1),
            ClusterError::InvalidName {
                name: "..".into(),
                why: "\".\" and \"..\" are reserved",
            },
        ),
        (
            create("t", 0, 1),
            ClusterError::InvalidArgument("partitions must be 1-10000, got 0".into()),
        ),
        (
            create("t", 1, 0),
            ClusterError::InvalidArgument("replication_factor must be at least 1, got 0".into()),
        ),
        (
            create("t", 1, 4),
            ClusterError::NotEnoughBrokers {
                replication_factor: 4,
                available: 3,
            },
        ),
        (
            create("orders", 1, 1),
            ClusterError::TopicExists("orders".into()),
        ),
        (
            Command::DeleteTopic { name: "t".into() },
            ClusterError::UnknownTopic("t".into()),
        ),
        (
            Command::AlterTopicConfig {
                name: "t".into(),
                change: TopicConfigChange::default(),
            },
            ClusterError::UnknownTopic("t".into()),
        ),
        (
            Command::AlterTopicConfig {
                name: "orders".into(),
                change: TopicConfigChange {
                    retention_ms: Some(0),
                    ..TopicConfigChange::default()
                },
            },
            ClusterError::InvalidArgument(
                "retention_ms must be -1 (forever) or above 0, got 0".into(),
            ),
        ),
        (
            grow("orders", 2),
            ClusterError::InvalidArgument(
                "partitions can only grow, up to 10000: topic \"orders\" has 2, asked for 2".into(),
            ),
        ),
        (
            grow("orders", 10_001),
            ClusterError::InvalidArgument(
                "partitions can only grow, up to 10000: topic \"orders\" has 2, asked for 10001"
                    .into(),
            ),
        ),
        (grow("t", 3), ClusterError::UnknownTopic("t".into())),
    ];
    let mut d = Driver::with_brokers(3);
    d.apply(create("orders", 2, 3)).unwrap();
    for (i, (command, want)) in cases.into_iter().enumerate() {
        let before = d.state.clone();
        assert_eq!(d.apply(command).unwrap_err(), want, "case {i}");
        assert_eq!(d.state.applied_index(), d.index, "case {i}");
        assert_eq!(
            d.state.metadata_version(),
            before.metadata_version(),
            "case {i}"
        );
        assert_eq!(d.state.brokers(), before.brokers(), "case {i}");
        assert_eq!(d.state.topics(), before.topics(), "case {i}");
    }
}

#[test]
fn stale_index_changes_nothing() {
    let mut d = Driver::with_brokers(1);
    let before = d.state.clone();
    for index in [0, d.index] {
        assert_eq!(
            d.state.apply(index, &create("t", 1, 1)).unwrap_err(),
            ClusterError::StaleIndex {
                index,
                applied: d.index
            }
        );
        assert_eq!(d.state, before);
    }
    // Indexes may skip (entries the controller does not see: empty
    // entries, configuration changes).
    assert!(d.state.apply(d.index + 10, &create("t", 1, 1)).is_ok());
}

#[test]
fn fenced_brokers_get_no_replicas() {
    let mut d = Driver::with_brokers(3);
    d.apply(Command::FenceBroker { id: 2 }).unwrap();
    assert_eq!(
        d.apply(create("t", 4, 3)).unwrap_err(),
        ClusterError::NotEnoughBrokers {
            replication_factor: 3,
            available: 2
        }
    );
    d.apply(create("t", 4, 2)).unwrap();
    let topic = d.state.topic("t").unwrap();
    assert!(topic.partitions.iter().all(|a| !a.replicas.contains(&2)));
    d.apply(Command::UnfenceBroker { id: 2 }).unwrap();
    // Broker 2 holds nothing: the next topic fills it first.
    let Applied::TopicCreated(u) = d.apply(create("u", 4, 1)).unwrap() else {
        panic!("not a create")
    };
    assert!(u.partitions.iter().all(|a| a.replicas == vec![2]));
}

#[test]
fn create_delete_recreate_and_the_change_feed() {
    let mut d = Driver::with_brokers(3);
    let Applied::TopicCreated(t) = d.apply(create("orders", 6, 2)).unwrap() else {
        panic!("not a create")
    };
    assert_eq!(t.id, TopicId(d.index));
    assert_eq!(d.state.topic("orders"), Some(&t));
    // 12 replicas over 3 brokers: 4 each, 2 preferred leaders each.
    for (id, l) in d.state.broker_load() {
        assert_eq!(
            l,
            BrokerLoad {
                replicas: 4,
                preferred_leaders: 2
            },
            "broker {id}"
        );
    }
    let created = Applied::TopicCreated(t.clone());
    let mine = created.replica_changes(1);
    assert_eq!(mine.len(), 4);
    for c in &mine {
        let ReplicaChange::Create(spec) = c else {
            panic!("not a create: {c:?}")
        };
        assert_eq!((spec.id.name.as_str(), spec.id.topic), ("orders", t.id));
        assert_eq!(
            spec.replicas,
            t.partitions[spec.id.partition as usize].replicas
        );
        assert!(spec.replicas.contains(&1));
        assert_eq!(spec.settings, t.settings);
    }
    // The same as what the state says broker 1 holds.
    let held: Vec<ReplicaChange> = d
        .state
        .replicas_on(1)
        .into_iter()
        .map(ReplicaChange::Create)
        .collect();
    assert_eq!(held, mine);
    let deleted = d
        .apply(Command::DeleteTopic {
            name: "orders".into(),
        })
        .unwrap();
    assert_eq!(deleted, Applied::TopicDeleted(t.clone()));
    let removed: Vec<ReplicaChange> = mine
        .iter()
        .map(|c| match c {
            ReplicaChange::Create(spec) => ReplicaChange::Remove(spec.id.clone()),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(deleted.replica_changes(1), removed);
    assert!(d.state.topics().is_empty());
    // Same name again: a new identity.
    let Applied::TopicCreated(again) = d.apply(create("orders", 1, 1)).unwrap() else {
        panic!("not a create")
    };
    assert_ne!(again.id, t.id);
    // Registrations ask nothing of replicas.
    assert!(d.apply(register(4)).unwrap().replica_changes(4).is_empty());
}

#[test]
fn alter_reconfigures_local_replicas() {
    let mut d = Driver::with_brokers(3);
    d.apply(create("t", 3, 1)).unwrap();
    let applied = d
        .apply(Command::AlterTopicConfig {
            name: "t".into(),
            change: TopicConfigChange {
                retention_bytes: Some(1 << 30),
                cleanup_policy: Some(CleanupPolicy::Compact),
                ..TopicConfigChange::default()
            },
        })
        .unwrap();
    let Applied::TopicAltered { topic, previous } = &applied else {
        panic!("not an alter")
    };
    assert_eq!(
        previous,
        &TopicSettings {
            partitions: 3,
            ..TopicSettings::default()
        }
    );
    assert_eq!(topic.settings.retention_bytes, 1 << 30);
    assert_eq!(topic.settings.cleanup_policy, CleanupPolicy::Compact);
    assert_eq!(d.state.topic("t"), Some(topic));
    for broker in 1..=3 {
        let changes = applied.replica_changes(broker);
        assert_eq!(changes.len(), 1, "broker {broker}");
        assert!(
            matches!(&changes[0], ReplicaChange::Reconfigure(spec) if spec.settings == topic.settings)
        );
    }
}

/// A broker back from a long absence (or installing a snapshot) compares
/// its disk with the state.
#[test]
fn reconcile_compares_the_disk_with_the_state() {
    let mut d = Driver::with_brokers(2);
    d.apply(create("kept", 2, 2)).unwrap();
    d.apply(create("altered", 1, 2)).unwrap();
    d.apply(create("recreated", 1, 2)).unwrap();
    d.apply(create("deleted", 1, 2)).unwrap();
    // What broker 1's disk holds: everything as of now.
    let disk: BTreeMap<ReplicaId, TopicSettings> = d
        .state
        .replicas_on(1)
        .into_iter()
        .map(|r| (r.id, r.settings))
        .collect();
    assert!(d.state.reconcile(1, &disk).is_empty());
    // While it was away:
    d.apply(Command::AlterTopicConfig {
        name: "altered".into(),
        change: TopicConfigChange {
            retention_ms: Some(-1),
            ..TopicConfigChange::default()
        },
    })
    .unwrap();
    d.apply(Command::DeleteTopic {
        name: "recreated".into(),
    })
    .unwrap();
    d.apply(create("recreated", 1, 2)).unwrap();
    d.apply(Command::DeleteTopic {
        name: "deleted".into(),
    })
    .unwrap();
    d.apply(create("new", 1, 2)).unwrap();
    let id = |name: &str| d.state.topic(name).unwrap().id;
    let old = |name: &str| disk.keys().find(|r| r.name == name).unwrap().clone();
    let spec = |name: &str| {
        d.state
            .replicas_on(1)
            .into_iter()
            .find(|r| r.id.name == name)
            .unwrap()
    };
    let changes = d.state.reconcile(1, &disk);
    assert_eq!(
        changes,
        vec![
            ReplicaChange::Remove(old("deleted")),
            ReplicaChange::Remove(old("recreated")),
            ReplicaChange::Reconfigure(spec("altered")),
            ReplicaChange::Create(spec("new")),
            ReplicaChange::Create(spec("recreated")),
        ]
    );
    assert_ne!(old("recreated").topic, id("recreated"));
}

#[test]
fn create_partitions_places_only_the_new_ones() {
    let mut d = Driver::with_brokers(3);
    d.apply(create("t", 2, 2)).unwrap();
    let before = d.state.topic("t").unwrap().clone();
    let applied = d.apply(grow("t", 6)).unwrap();
    let Applied::PartitionsCreated { topic, first } = &applied else {
        panic!("not a partitions create")
    };
    assert_eq!(*first, 2);
    assert_eq!(topic.settings.partitions, 6);
    assert_eq!(topic.partitions[..2], before.partitions[..]);
    assert_eq!(topic.id, before.id);
    for broker in 1..=3 {
        for c in applied.replica_changes(broker) {
            match c {
                ReplicaChange::Create(spec) => assert!(spec.id.partition >= 2),
                ReplicaChange::Reconfigure(spec) => {
                    assert!(spec.id.partition < 2);
                    assert_eq!(spec.settings.partitions, 6);
                }
                ReplicaChange::Remove(id) => panic!("removes {id:?}"),
            }
        }
    }
    let load = d.state.broker_load();
    assert_eq!(spread(load.values().map(|l| l.replicas)), 0);
    assert_eq!(spread(load.values().map(|l| l.preferred_leaders)), 0);
}

#[test]
fn leader_moves_restore_preferred_leaders() {
    let mut d = Driver::with_brokers(3);
    d.apply(create("t", 3, 3)).unwrap();
    let t = d.state.topic("t").unwrap().clone();
    let preferred: Vec<u32> = t.partitions.iter().map(|a| a.preferred_leader()).collect();
    // Topic id 4 over 3 brokers: the rotation starts at the second.
    assert_eq!(preferred, vec![2, 3, 1]);
    let key = |topic: &str, partition| PartitionKey {
        topic: topic.into(),
        partition,
    };
    // Broker 2 took over everything (say 1 and 3 restarted).
    let mut leaders: BTreeMap<PartitionKey, BrokerId> = (0..3).map(|p| (key("t", p), 2)).collect();
    // Unknown topics and partitions are skipped.
    leaders.insert(key("gone", 0), 2);
    leaders.insert(key("t", 7), 2);
    let moves = d.state.leader_moves(&leaders);
    assert_eq!(
        moves,
        vec![
            LeaderMove {
                partition: key("t", 1),
                from: 2,
                to: 3
            },
            LeaderMove {
                partition: key("t", 2),
                from: 2,
                to: 1
            },
        ]
    );
    // Balanced leadership asks for nothing.
    let balanced: BTreeMap<PartitionKey, BrokerId> = (0..3u32)
        .map(|p| (key("t", p), preferred[p as usize]))
        .collect();
    assert!(d.state.leader_moves(&balanced).is_empty());
    // A fenced preferred leader is not a target: partition 1 stays on 2
    // (2 leads two, 1 leads one: a gap of one is balanced enough).
    d.apply(Command::FenceBroker { id: 3 }).unwrap();
    assert_eq!(d.state.leader_moves(&leaders), moves[1..].to_vec());
    // A fenced broker still leading hands over to the live replica leading
    // fewest (1 and 2 lead one each: the lower id).
    assert_eq!(
        d.state.leader_moves(&balanced),
        vec![LeaderMove {
            partition: key("t", 1),
            from: 3,
            to: 1
        }]
    );
}

/// Broker 1 is fenced for long: its partitions' leadership spreads over
/// the other live replicas instead of piling up where Raft put it.
#[test]
fn leader_moves_spread_the_partitions_of_a_fenced_broker() {
    let mut d = Driver::with_brokers(4);
    d.apply(create("t", 8, 3)).unwrap();
    d.apply(Command::FenceBroker { id: 1 }).unwrap();
    let t = d.state.topic("t").unwrap().clone();
    // Raft elected the first live follower everywhere broker 1 led.
    let leaders: BTreeMap<PartitionKey, BrokerId> = t
        .partitions
        .iter()
        .enumerate()
        .map(|(p, a)| {
            let leader = if a.preferred_leader() == 1 {
                a.replicas[1]
            } else {
                a.preferred_leader()
            };
            (
                PartitionKey {
                    topic: "t".into(),
                    partition: p as u32,
                },
                leader,
            )
        })
        .collect();
    let moves = d.state.leader_moves(&leaders);
    let mut after = leaders.clone();
    for m in &moves {
        assert_eq!(after[&m.partition], m.from);
        after.insert(m.partition.clone(), m.to);
    }
    let mut counts: BTreeMap<BrokerId, u32> = BTreeMap::new();
    for b in after.values() {
        *counts.entry(*b).or_default() += 1;
    }
    assert!(!counts.contains_key(&1));
    assert!(
        spread(counts.values().copied()) <= 1,
        "{counts:?} after {moves:?}"
    );
}

#[test]
fn snapshot_round_trip_and_stable_bytes() {
    let mut d = Driver::with_brokers(2);
    d.apply(Command::RegisterBroker {
        id: 3,
        address: "n3:9092".into(),
        rack: Some("r".into()),
    })
    .unwrap();
    d.apply(Command::FenceBroker { id: 3 }).unwrap();
    d.apply(create("t", 2, 2)).unwrap();
    let _ = d.apply(create("t", 2, 2)); // refused: moves applied_index only
    let bytes = d.state.to_snapshot();
    let restored = ClusterState::from_snapshot(&bytes).unwrap();
    assert_eq!(restored, d.state);
    assert_eq!(restored.applied_index(), 6);
    assert_eq!(restored.metadata_version(), 5);
    // Version 1 snapshots look like this forever.
    let v1 = r#"{"version":1,"body":{"applied_index":6,"metadata_version":5,"brokers":[{"id":1,"address":"n1:9092","rack":null,"fenced":false},{"id":2,"address":"n2:9092","rack":null,"fenced":false},{"id":3,"address":"n3:9092","rack":"r","fenced":true}],"topics":[{"id":5,"name":"t","settings":{"partitions":2,"replication_factor":2,"retention_ms":604800000,"retention_bytes":-1,"max_record_bytes":8388608,"segment_bytes":1073741824,"cleanup_policy":"delete"},"partitions":[{"replicas":[2,1],"created_ms":1764000000000},{"replicas":[1,2],"created_ms":1764000000000}]}]}}"#;
    assert_eq!(String::from_utf8(bytes).unwrap(), v1);
    assert_eq!(ClusterState::from_snapshot(v1.as_bytes()).unwrap(), d.state);
}

#[test]
fn corrupt_snapshots_are_refused() {
    let good = {
        let mut d = Driver::with_brokers(2);
        d.apply(create("t", 1, 2)).unwrap();
        String::from_utf8(d.state.to_snapshot()).unwrap()
    };
    let cases: [(&str, &str, &str); 9] = [
        (r#""id":2,"#, r#""id":1,"#, "broker 1 appears twice"),
        (
            r#""replicas":[2,1]"#,
            r#""replicas":[2,9]"#,
            "unregistered broker 9",
        ),
        (
            r#""replicas":[2,1]"#,
            r#""replicas":[2,2]"#,
            "not 2 distinct ones",
        ),
        (
            r#""partitions":[{"replicas":[2,1],"created_ms":1764000000000}]"#,
            r#""partitions":[{"replicas":[2,1],"created_ms":1},{"replicas":[1,2],"created_ms":1}]"#,
            "2 assignments for 1 partitions",
        ),
        (r#""name":"t""#, r#""name":"a/b""#, "invalid topic name"),
        (r#""id":3,"#, r#""id":4,"#, "above applied_index"),
        (
            r#""metadata_version":3"#,
            r#""metadata_version":4"#,
            "metadata_version 4 is above applied_index 3",
        ),
        (
            r#""retention_bytes":-1"#,
            r#""retention_bytes":0"#,
            "retention_bytes must be",
        ),
        (r#""version":1"#, r#""version":2"#, "format version 2"),
    ];
    assert!(ClusterState::from_snapshot(good.as_bytes()).is_ok());
    for (i, (from, to, want)) in cases.into_iter().enumerate() {
        assert!(good.contains(from), "case {i}: {from} not in {good}");
        let bad = good.replacen(from, to, 1);
        let e = ClusterState::from_snapshot(bad.as_bytes()).unwrap_err();
        assert!(e.to_string().contains(want), "case {i}: {e}");
    }
    let bytes = good.as_bytes();
    for len in 0..bytes.len() {
        assert!(
            ClusterState::from_snapshot(&bytes[..len]).is_err(),
            "prefix {len}"
        );
    }
    for i in 0..bytes.len() {
        let mut b = bytes.to_vec();
        b[i] ^= 0x20;
        if let Ok(s) = ClusterState::from_snapshot(&b) {
            assert_eq!(s.check_invariants(), Ok(()));
        }
    }
}

// ---- model tests over random command sequences ----

const NAMES: [&str; 5] = ["a", "b", "c", "d", ".."];

fn topic_name() -> impl Strategy<Value = String> {
    prop::sample::select(&NAMES[..]).prop_map(str::to_string)
}

/// Creates only (some refused), on brokers registered up front.
fn create_only(brokers: u32) -> impl Strategy<Value = Command> {
    prop_oneof![
        3 => (topic_name(), 0..20u32, 0..=brokers + 1)
            .prop_map(|(n, p, rf)| create(&n, p, rf)),
        1 => (topic_name(), 0..40u32)
            .prop_map(|(name, partitions)| grow(&name, partitions)),
    ]
}

/// Anything: brokers come, go fenced and back; topics come and go.
fn any_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        1 => (0..6u32, prop::option::of(prop::sample::select(&["r1", "r2"][..])))
            .prop_map(|(id, rack)| Command::RegisterBroker {
                id,
                address: format!("n{id}:9092"),
                rack: rack.map(str::to_string),
            }),
        1 => (0..6u32).prop_map(|id| Command::FenceBroker { id }),
        1 => (0..6u32).prop_map(|id| Command::UnfenceBroker { id }),
        1 => (0..6u32).prop_map(|id| Command::UnregisterBroker { id }),
        4 => (topic_name(), 0..12u32, 0..5u32).prop_map(|(n, p, rf)| create(&n, p, rf)),
        2 => topic_name().prop_map(|name| Command::DeleteTopic { name }),
        1 => (topic_name(), prop::option::of(-2..3i64))
            .prop_map(|(name, r)| Command::AlterTopicConfig {
                name,
                change: TopicConfigChange {
                    retention_ms: r.map(|r| r * 1000),
                    ..TopicConfigChange::default()
                },
            }),
        1 => (topic_name(), 0..16u32)
            .prop_map(|(name, partitions)| grow(&name, partitions)),
    ]
}

proptest! {
    /// On a fixed set of brokers, creates keep replica counts within one
    /// per broker, and preferred leaders within one (one replication
    /// factor for all topics) or two (mixed factors; observed bound, see
    /// placement.rs).
    #[test]
    fn creates_stay_balanced(
        brokers in 1..8u32,
        commands in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        uniform_rf in prop::option::of(any::<prop::sample::Index>()),
        seed_commands in prop::collection::vec(create_only(7), 30),
    ) {
        let mut d = Driver::with_brokers(brokers);
        let uniform_rf = uniform_rf.map(|i| 1 + i.index(brokers as usize) as u32);
        for pick in commands {
            let mut c = seed_commands[pick.index(seed_commands.len())].clone();
            if let (Command::CreateTopic { settings, .. }, Some(rf)) = (&mut c, uniform_rf) {
                settings.replication_factor = rf;
            }
            let _ = d.apply(c);
            prop_assert_eq!(d.state.check_invariants(), Ok(()));
            let load = d.state.broker_load();
            prop_assert!(spread(load.values().map(|l| l.replicas)) <= 1, "{:?}", load);
            let bound = if uniform_rf.is_some() { 1 } else { 2 };
            prop_assert!(spread(load.values().map(|l| l.preferred_leaders)) <= bound, "{:?}", load);
        }
    }

    /// Any sequence: invariants hold, refusals change no metadata, two
    /// nodes applying the same entries agree on every result and state,
    /// snapshots restore the same state, and applying on from a restored
    /// snapshot equals applying on from the original.
    #[test]
    fn any_sequence_is_deterministic(
        commands in prop::collection::vec(any_command(), 0..60),
        gaps in prop::collection::vec(1..3u64, 60),
        snapshot_at in any::<prop::sample::Index>(),
    ) {
        let mut a = ClusterState::new();
        let mut b = ClusterState::new();
        let cut = snapshot_at.index(commands.len() + 1);
        let mut index = 0;
        for (k, c) in commands.iter().enumerate() {
            if k == cut {
                b = ClusterState::from_snapshot(&a.to_snapshot()).unwrap();
                prop_assert_eq!(&b, &a);
            }
            index += gaps[k];
            let c = Command::decode(&c.encode()).unwrap();
            let before = a.clone();
            let checked = a.check(&c);
            prop_assert_eq!(&a, &before);
            let ra = a.apply(index, &c);
            // The dry run agrees (a topic id is the index: only the next
            // one is predicted).
            if gaps[k] == 1 {
                prop_assert_eq!(&checked, &ra);
            } else {
                prop_assert_eq!(checked.is_ok(), ra.is_ok());
            }
            let rb = b.apply(index, &c);
            prop_assert_eq!(&ra, &rb);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.check_invariants(), Ok(()));
            prop_assert_eq!(a.applied_index(), index);
            match ra {
                Ok(_) => prop_assert_eq!(a.metadata_version(), index),
                Err(_) => {
                    prop_assert_eq!(a.metadata_version(), before.metadata_version());
                    prop_assert_eq!(a.brokers(), before.brokers());
                    prop_assert_eq!(a.topics(), before.topics());
                }
            }
        }
        prop_assert_eq!(ClusterState::from_snapshot(&a.to_snapshot()).unwrap(), a);
    }
}

proptest! {
    /// Leader moves go from the current leader to a live replica, put every
    /// partition with a live preferred leader back on it, leave no gap of
    /// two or more that a move of the others could close, and ask for
    /// nothing once applied.
    #[test]
    fn leader_moves_balance(
        commands in prop::collection::vec(any_command(), 0..60),
        picks in prop::collection::vec(prop::option::of(any::<prop::sample::Index>()), 200),
    ) {
        let mut d = Driver::new();
        for c in commands {
            let _ = d.apply(c);
        }
        let s = &d.state;
        let live = |id: BrokerId| s.brokers().get(&id).is_some_and(|b| !b.fenced);
        let mut leaders = BTreeMap::new();
        let mut picks = picks.into_iter().cycle();
        for t in s.topics().values() {
            for (p, a) in t.partitions.iter().enumerate() {
                if let Some(Some(i)) = picks.next() {
                    let key = PartitionKey { topic: t.name.clone(), partition: p as u32 };
                    leaders.insert(key, a.replicas[i.index(a.replicas.len())]);
                }
            }
        }
        let moves = s.leader_moves(&leaders);
        let mut after = leaders.clone();
        let mut moved = BTreeSet::new();
        for m in &moves {
            prop_assert!(moved.insert(m.partition.clone()), "moved twice: {:?}", m);
            prop_assert_eq!(leaders[&m.partition], m.from);
            let a = &s.topic(&m.partition.topic).unwrap().partitions[m.partition.partition as usize];
            prop_assert!(a.replicas.contains(&m.to) && live(m.to) && m.to != m.from, "{:?}", m);
            after.insert(m.partition.clone(), m.to);
        }
        let mut counts: BTreeMap<BrokerId, u32> = BTreeMap::new();
        for b in after.values() {
            *counts.entry(*b).or_default() += 1;
        }
        let count = |id| counts.get(&id).copied().unwrap_or(0);
        for (key, leader) in &after {
            let a = &s.topic(&key.topic).unwrap().partitions[key.partition as usize];
            if live(a.preferred_leader()) {
                prop_assert_eq!(*leader, a.preferred_leader());
            } else if live(*leader) {
                for r in a.replicas.iter().filter(|r| live(**r)) {
                    prop_assert!(count(*r) + 2 > count(*leader), "{:?}: {} could take it from {}", key, r, leader);
                }
            } else {
                prop_assert!(!a.replicas.iter().any(|r| live(*r)), "{:?} stays on {}", key, leader);
            }
        }
        prop_assert!(s.leader_moves(&after).is_empty());
    }
}

/// A broker's disk as the change feed builds it.
type Disk = BTreeMap<ReplicaId, (Vec<BrokerId>, TopicSettings)>;

fn disk_of(specs: Vec<ReplicaSpec>) -> Disk {
    specs
        .into_iter()
        .map(|r| (r.id, (r.replicas, r.settings)))
        .collect()
}

/// Applies `changes` to `disk`, refusing a create of a present replica and
/// a remove or reconfigure of an absent one.
fn follow(disk: &mut Disk, changes: Vec<ReplicaChange>) -> Result<(), String> {
    for c in changes {
        match c {
            ReplicaChange::Create(r) => {
                if disk
                    .insert(r.id.clone(), (r.replicas, r.settings))
                    .is_some()
                {
                    return Err(format!("created twice: {:?}", r.id));
                }
            }
            ReplicaChange::Remove(id) => {
                disk.remove(&id)
                    .ok_or(format!("removed but absent: {id:?}"))?;
            }
            ReplicaChange::Reconfigure(r) => {
                let entry = disk
                    .get_mut(&r.id)
                    .ok_or(format!("reconfigured but absent: {:?}", r.id))?;
                *entry = (r.replicas, r.settings);
            }
        }
    }
    Ok(())
}

proptest! {
    /// A broker that follows the change feed from the start, and one that
    /// reconciles after missing part of it (a restart, a snapshot), both
    /// end up holding exactly what the state places on them.
    #[test]
    fn following_the_feed_or_reconciling_matches_the_state(
        commands in prop::collection::vec(any_command(), 0..60),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(commands.len() + 1);
        let mut d = Driver::new();
        let mut followed: BTreeMap<BrokerId, Disk> = BTreeMap::new();
        let mut stale: BTreeMap<BrokerId, Disk> = BTreeMap::new();
        for (k, c) in commands.into_iter().enumerate() {
            if k == cut {
                stale = (0..6).map(|b| (b, disk_of(d.state.replicas_on(b)))).collect();
            }
            if let Ok(applied) = d.apply(c) {
                for b in 0..6 {
                    let disk = followed.entry(b).or_default();
                    prop_assert_eq!(follow(disk, applied.replica_changes(b)), Ok(()));
                }
            }
        }
        for b in 0..6 {
            let want = disk_of(d.state.replicas_on(b));
            prop_assert_eq!(&followed.remove(&b).unwrap_or_default(), &want, "broker {} following", b);
            let mut disk = stale.remove(&b).unwrap_or_default();
            let present = disk.iter().map(|(id, (_, s))| (id.clone(), s.clone())).collect();
            prop_assert_eq!(follow(&mut disk, d.state.reconcile(b, &present)), Ok(()));
            prop_assert_eq!(&disk, &want, "broker {} reconciling", b);
        }
    }
}

#[test]
fn raft_groups_and_creation_times() {
    let mut d = Driver::with_brokers(2);
    d.apply(create("a", 3, 2)).unwrap();
    d.apply(create("b", 2, 1)).unwrap();
    d.apply(grow("b", 3)).unwrap();
    let (a, b) = (d.state.topic("a").unwrap(), d.state.topic("b").unwrap());
    let mut groups = BTreeSet::new();
    for t in [a, b] {
        for p in 0..t.settings.partitions {
            let g = t.group(p).unwrap();
            assert_ne!(g, CONTROLLER_GROUP);
            assert!(groups.insert(g), "group {g} twice");
        }
        assert_eq!(t.group(t.settings.partitions), None);
    }
    assert_eq!(a.group(2), Some(a.id.0 * GROUPS_PER_TOPIC + 2));
    // Partitions added later keep their own creation time.
    let times: Vec<i64> = b.partitions.iter().map(|p| p.created_ms).collect();
    assert_eq!(times, vec![CREATED_MS, CREATED_MS, CREATED_MS + 1]);
    // The change feed hands a broker what opening the group needs.
    for spec in d.state.replicas_on(1) {
        let t = d.state.topic(&spec.id.name).unwrap();
        let p = &t.partitions[spec.id.partition as usize];
        assert_eq!(spec.group, t.group(spec.id.partition).unwrap());
        assert_eq!(
            (&spec.replicas, spec.created_ms),
            (&p.replicas, p.created_ms)
        );
    }
    // Group ids must fit in a u64: a create past MAX_TOPIC_ID is refused.
    let before = d.state.clone();
    let err = d
        .state
        .apply(MAX_TOPIC_ID + 1, &create("c", 1, 1))
        .unwrap_err();
    assert!(matches!(err, ClusterError::InvalidArgument(m) if m.contains("largest topic id")));
    assert_eq!(d.state.topics(), before.topics());
    assert!(d.state.apply(MAX_TOPIC_ID + 2, &register(3)).is_ok());
}

/// The largest topic over nine brokers: exact balance, quickly.
#[test]
fn large_topic_is_balanced() {
    let mut d = Driver::with_brokers(9);
    let start = std::time::Instant::now();
    d.apply(create("big", MAX_PARTITIONS, 3)).unwrap();
    d.apply(create("small", 7, 2)).unwrap();
    let load = d.state.broker_load();
    assert!(spread(load.values().map(|l| l.replicas)) <= 1, "{load:?}");
    assert!(
        spread(load.values().map(|l| l.preferred_leaders)) <= 1,
        "{load:?}"
    );
    let restored = ClusterState::from_snapshot(&d.state.to_snapshot()).unwrap();
    assert_eq!(restored, d.state);
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}
