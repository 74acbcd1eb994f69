use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn topics(t: &str) -> Option<u32> {
    match t {
        "t" => Some(6),
        "u" => Some(3),
        _ => None,
    }
}

fn subs(names: &[&str]) -> Option<BTreeSet<String>> {
    Some(names.iter().map(|s| s.to_string()).collect())
}

fn join(c: &mut Coordinator, now: u64) -> HeartbeatAnswer {
    c.heartbeat(
        "g",
        Heartbeat {
            member_epoch: JOIN_EPOCH,
            subscriptions: subs(&["t"]),
            session_timeout_ms: 1_000,
            ..Heartbeat::default()
        },
        &topics,
        now,
    )
    .expect("join")
}

/// A member as a client runs it: owns what it was last assigned.
fn beat(c: &mut Coordinator, a: &HeartbeatAnswer, now: u64) -> Result<HeartbeatAnswer, GroupError> {
    c.heartbeat(
        "g",
        Heartbeat {
            member_id: a.member_id.clone(),
            member_epoch: a.member_epoch,
            owned: Some(a.assigned.clone()),
            session_timeout_ms: 1_000,
            ..Heartbeat::default()
        },
        &topics,
        now,
    )
}

#[test]
fn a_partition_moves_only_after_its_owner_releases_it() {
    let mut c = Coordinator::new("n1");
    let a = join(&mut c, 0);
    let a = beat(&mut c, &a, 1).unwrap();
    assert_eq!(a.assigned.len(), 6);
    let b = join(&mut c, 2);
    // A still owns everything: B gets nothing yet.
    assert!(b.assigned.is_empty(), "{b:?}");
    assert_eq!(c.describe("g").unwrap().state, GroupState::Reconciling);
    // A learns it keeps 3; it releases the others on its next heartbeat.
    let a = beat(&mut c, &a, 3).unwrap();
    assert_eq!(a.assigned.len(), 3);
    let b = beat(&mut c, &b, 4).unwrap();
    assert!(b.assigned.is_empty(), "A has not reported the release yet");
    let a2 = beat(&mut c, &a, 5).unwrap();
    assert_eq!(a2.assigned, a.assigned, "A's kept partitions never moved");
    let b = beat(&mut c, &b, 6).unwrap();
    assert_eq!(b.assigned.len(), 3);
    assert!(b.assigned.is_disjoint(&a2.assigned));
    beat(&mut c, &b, 7).unwrap();
    assert_eq!(c.describe("g").unwrap().state, GroupState::Stable);
}

#[test]
fn expired_members_release_their_partitions() {
    let mut c = Coordinator::new("n1");
    let a = join(&mut c, 0);
    let a = beat(&mut c, &a, 0).unwrap();
    let b = join(&mut c, 100);
    // A never heartbeats again: after its session (1 s) B gets all.
    assert!(c.expire(900, &topics).is_empty());
    let removed = c.expire(1_001, &topics);
    assert_eq!(removed, vec![("g".to_string(), a.member_id.clone())]);
    let b = beat(&mut c, &b, 1_002).unwrap();
    assert_eq!(b.assigned.len(), 6);
    assert!(matches!(
        beat(&mut c, &a, 1_003),
        Err(GroupError::UnknownMember { .. })
    ));
}

#[test]
fn commits_are_fenced_by_member_epoch() {
    let mut c = Coordinator::new("n1");
    let a1 = join(&mut c, 0);
    let _b = join(&mut c, 1);
    let a2 = beat(&mut c, &a1, 2).unwrap();
    let _d = join(&mut c, 3);
    let a3 = beat(&mut c, &a2, 4).unwrap();
    assert!(a1.member_epoch < a2.member_epoch && a2.member_epoch < a3.member_epoch);
    // (case, member, epoch, accepted)
    let cases = [
        (1, a3.member_id.as_str(), a3.member_epoch, true),
        (2, a3.member_id.as_str(), a2.member_epoch, true),
        (3, a3.member_id.as_str(), a1.member_epoch, false),
        (4, "nobody", a3.member_epoch, false),
        (5, "", 0, false),
    ];
    for (case, member, epoch, ok) in cases {
        assert_eq!(
            c.check_commit("g", member, epoch).is_ok(),
            ok,
            "case {case}"
        );
    }
    assert!(matches!(
        c.check_commit("g", &a3.member_id, a1.member_epoch),
        Err(GroupError::StaleMemberEpoch { .. })
    ));
    // A heartbeat from two epochs back is fenced.
    assert!(matches!(
        beat(&mut c, &a1, 5),
        Err(GroupError::FencedMemberEpoch { .. })
    ));
}

#[test]
fn leave_then_admin_operations() {
    let mut c = Coordinator::new("n1");
    let a = join(&mut c, 0);
    assert!(matches!(
        c.check_empty("g"),
        Err(GroupError::GroupNotEmpty { .. })
    ));
    assert!(matches!(
        c.check_empty("other"),
        Err(GroupError::UnknownGroup(_))
    ));
    c.apply(&GroupRecord::OffsetCommit {
        group: "g".into(),
        topic: "t".into(),
        partition: 1,
        offset: 5,
        timestamp: 9,
    });
    let left = c
        .heartbeat(
            "g",
            Heartbeat {
                member_id: a.member_id.clone(),
                member_epoch: LEAVE_EPOCH,
                ..Heartbeat::default()
            },
            &topics,
            1,
        )
        .unwrap();
    assert_eq!(left.member_epoch, LEAVE_EPOCH);
    assert_eq!(c.check_empty("g"), Ok(()));
    assert_eq!(c.check_commit("g", "", 0), Ok(()));
    assert_eq!(c.describe("g").unwrap().state, GroupState::Empty);
    c.apply(&GroupRecord::GroupDeleted { group: "g".into() });
    assert!(!c.contains("g"));
    assert_eq!(c.committed("g", "t", 1), None);
}

#[test]
fn new_partitions_and_subscription_changes_are_picked_up() {
    let count = std::cell::Cell::new(2u32);
    let parts = |t: &str| (t == "t").then(|| count.get());
    let mut c = Coordinator::new("n1");
    let a = c
        .heartbeat(
            "g",
            Heartbeat {
                member_epoch: JOIN_EPOCH,
                subscriptions: subs(&["t"]),
                ..Heartbeat::default()
            },
            &parts,
            0,
        )
        .unwrap();
    assert_eq!(a.assigned.len(), 2);
    count.set(5);
    let hb = Heartbeat {
        member_id: a.member_id.clone(),
        member_epoch: a.member_epoch,
        owned: Some(a.assigned.clone()),
        ..Heartbeat::default()
    };
    let a2 = c.heartbeat("g", hb, &parts, 1).unwrap();
    assert_eq!(a2.assigned.len(), 5);
    assert!(a2.member_epoch > a.member_epoch);
}

#[test]
fn bad_requests() {
    let mut c = Coordinator::new("n1");
    // (case, heartbeat)
    let cases = [
        (
            1,
            Heartbeat {
                member_epoch: JOIN_EPOCH,
                ..Heartbeat::default()
            },
        ),
        (
            2,
            Heartbeat {
                member_epoch: JOIN_EPOCH,
                subscriptions: subs(&["t"]),
                session_timeout_ms: 10,
                ..Heartbeat::default()
            },
        ),
        (
            3,
            Heartbeat {
                member_epoch: -7,
                subscriptions: subs(&["t"]),
                ..Heartbeat::default()
            },
        ),
    ];
    for (case, hb) in cases {
        assert!(
            matches!(
                c.heartbeat("g", hb, &topics, 0),
                Err(GroupError::InvalidArgument(_))
            ),
            "case {case}"
        );
    }
    assert!(crate::validate_group_name("ok.name-1_x").is_ok());
    for bad in ["", "a b", "é", &"x".repeat(250)] {
        assert!(crate::validate_group_name(bad).is_err(), "{bad:?}");
    }
}

/// One step of the model test.
#[derive(Clone, Debug)]
enum Step {
    Join,
    Beat(usize),
    Leave(usize),
    /// A member goes silent for good (its session will expire).
    Crash(usize),
    Tick(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => Just(Step::Join),
        6 => (0..8usize).prop_map(Step::Beat),
        1 => (0..8usize).prop_map(Step::Leave),
        1 => (0..8usize).prop_map(Step::Crash),
        2 => (1..800u64).prop_map(Step::Tick),
    ]
}

proptest! {
    /// Random joins, heartbeats, leaves, crashes and time: what members
    /// believe they own never overlaps, and once the survivors heartbeat
    /// a few rounds every partition has exactly one owner and the group
    /// is stable.
    #[test]
    fn ownership_never_overlaps_and_converges(steps in proptest::collection::vec(step(), 1..80),
                                               assignor in 0..3u8) {
        let assignor = [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky][assignor as usize];
        let mut c = Coordinator::new("n1");
        // Live members as clients see themselves (None: crashed).
        let mut clients: Vec<Option<HeartbeatAnswer>> = Vec::new();
        let mut now = 0u64;
        let check = |clients: &Vec<Option<HeartbeatAnswer>>| {
            let mut seen = BTreeMap::new();
            for a in clients.iter().flatten() {
                for tp in &a.assigned {
                    if let Some(other) = seen.insert(tp.clone(), a.member_id.clone()) {
                        return Err(format!("{tp:?} owned by {other} and {}", a.member_id));
                    }
                }
            }
            Ok(())
        };
        for s in steps {
            match s {
                Step::Join => {
                    let a = c.heartbeat("g", Heartbeat {
                        member_epoch: JOIN_EPOCH,
                        subscriptions: subs(&["t", "u"]),
                        session_timeout_ms: 1_000,
                        assignor: Some(assignor),
                        ..Heartbeat::default()
                    }, &topics, now).unwrap();
                    clients.push(Some(a));
                }
                Step::Beat(i) => {
                    if let Some(Some(a)) = clients.get(i) {
                        match beat(&mut c, a, now) {
                            Ok(next) => clients[i] = Some(next),
                            // Expired: the client drops everything.
                            Err(GroupError::UnknownMember { .. }) => clients[i] = None,
                            Err(e) => prop_assert!(false, "{e}"),
                        }
                    }
                }
                Step::Leave(i) => {
                    if let Some(Some(a)) = clients.get(i) {
                        c.heartbeat("g", Heartbeat {
                            member_id: a.member_id.clone(),
                            member_epoch: LEAVE_EPOCH,
                            ..Heartbeat::default()
                        }, &topics, now).unwrap();
                        clients[i] = None;
                    }
                }
                Step::Crash(i) => {
                    // It stops heartbeating; it may still believe it owns
                    // its partitions until its session expires.
                    if i < clients.len() {
                        clients[i] = None;
                        c.expire(now + 1_001, &topics);
                        now += 1_001;
                        // Survivors that missed the window are expired too.
                        for cl in clients.iter_mut() {
                            if let Some(a) = cl && beat(&mut c, a, now).is_err() {
                                *cl = None;
                            }
                        }
                    }
                }
                Step::Tick(ms) => {
                    now += ms;
                    let gone = c.expire(now, &topics);
                    for cl in clients.iter_mut() {
                        if let Some(a) = cl && gone.iter().any(|(_, m)| *m == a.member_id) {
                            *cl = None;
                        }
                    }
                }
            }
            prop_assert_eq!(check(&clients), Ok(()));
        }
        // Survivors heartbeat a few rounds.
        for _ in 0..4 {
            for cl in clients.iter_mut() {
                if let Some(a) = cl {
                    *cl = Some(beat(&mut c, a, now).unwrap());
                }
            }
            prop_assert_eq!(check(&clients), Ok(()));
        }
        let live = clients.iter().flatten().count();
        let owned: usize = clients.iter().flatten().map(|a| a.assigned.len()).sum();
        if live > 0 {
            prop_assert_eq!(owned, 9);
            prop_assert_eq!(c.describe("g").unwrap().state, GroupState::Stable);
        }
    }
}
