use super::*;

#[test]
fn splitmix_is_uniform_enough_and_deterministic() {
    let mut a = SplitMix64::new(5);
    let mut b = SplitMix64::new(5);
    let mut counts = [0u32; 10];
    for _ in 0..10_000 {
        let x = a.below(10);
        assert_eq!(x, b.below(10));
        counts[x as usize] += 1;
    }
    assert!(
        counts.iter().all(|&c| (800..1200).contains(&c)),
        "{counts:?}"
    );
}

#[test]
fn config_is_validated() {
    let cases = [
        (
            NodeConfig {
                id: 0,
                ..Default::default()
            },
            false,
        ),
        (
            NodeConfig {
                heartbeat_tick: 0,
                ..Default::default()
            },
            false,
        ),
        (
            NodeConfig {
                election_tick: 2,
                heartbeat_tick: 2,
                ..Default::default()
            },
            false,
        ),
        (
            NodeConfig {
                max_inflight_msgs: 0,
                ..Default::default()
            },
            false,
        ),
        (NodeConfig::default(), true),
    ];
    for (i, (c, ok)) in cases.into_iter().enumerate() {
        assert_eq!(Node::new(c).is_ok(), ok, "case {i}");
    }
}

use std::collections::{BTreeMap, BTreeSet};

use crate::storage::tests::{data_batch, test_dir, test_log_config};

const G: GroupId = 7;

/// A tiny lossless cluster: every message is delivered at the next pump,
/// except to or from nodes in `cut`.
struct Cluster {
    nodes: Vec<Node>,
    queue: Vec<(NodeId, NodeId, Vec<GroupMessage>)>,
    completions: Vec<(NodeId, Completion)>,
    hwm: BTreeMap<NodeId, u64>,
    cut: BTreeSet<NodeId>,
    now: i64,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn new(n: u64) -> Cluster {
        let dir = test_dir();
        let voters: Vec<NodeId> = (1..=n).collect();
        let nodes = voters
            .iter()
            .map(|&id| {
                let mut node = Node::new(NodeConfig {
                    id,
                    seed: 42,
                    ..Default::default()
                })
                .unwrap();
                let log = Log::open(dir.path().join(format!("n{id}")), test_log_config()).unwrap();
                let b = Bootstrap {
                    voters: voters.clone(),
                    created_ms: 5,
                };
                let st = node.open_group(G, Arc::new(log), &b).unwrap();
                assert_eq!((st.commit, st.high_watermark), (1, 1));
                node
            })
            .collect();
        Cluster {
            nodes,
            queue: Vec::new(),
            completions: Vec::new(),
            hwm: BTreeMap::new(),
            cut: BTreeSet::new(),
            now: 0,
            _dir: dir,
        }
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    fn pump(&mut self) {
        for _ in 0..50 {
            for node in &mut self.nodes {
                let id = node.id();
                let out = node.ready();
                for (to, msgs) in out.messages {
                    self.queue.push((id, to, msgs));
                }
                for (group, to) in out.snapshots {
                    node.report_snapshot(group, to, true);
                }
                self.completions
                    .extend(out.completions.into_iter().map(|c| (id, c)));
                for (_, h) in out.high_watermarks {
                    self.hwm.insert(id, h);
                }
                assert!(out.failed.is_empty(), "{:?}", out.failed);
            }
            if self.queue.is_empty() {
                return;
            }
            for (from, to, msgs) in std::mem::take(&mut self.queue) {
                if self.cut.contains(&from) || self.cut.contains(&to) {
                    continue;
                }
                let unknown = self.node(to).step(from, msgs);
                assert!(unknown.is_empty());
            }
        }
    }

    fn tick(&mut self) {
        self.now += 100;
        let now = self.now;
        for node in &mut self.nodes {
            node.tick(now);
        }
        self.pump();
    }

    /// Cuts every node but `leader` off.
    fn isolate_followers_of(&mut self, leader: NodeId) {
        let ids: Vec<NodeId> = self
            .nodes
            .iter()
            .map(|n| n.id())
            .filter(|&id| id != leader)
            .collect();
        self.cut.extend(ids);
    }

    fn leader(&mut self) -> NodeId {
        for _ in 0..100 {
            self.tick();
            let leaders: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|n| !self.cut.contains(&n.id()))
                .filter(|n| {
                    n.status(G)
                        .is_some_and(|s| s.role == Role::Leader && s.committed_in_term)
                })
                .map(|n| n.id())
                .collect();
            if let [l] = leaders[..] {
                return l;
            }
        }
        panic!("no leader elected");
    }
}

fn verified(value: &[u8], records: u32) -> VerifiedBatch {
    VerifiedBatch::new(data_batch(value, records)).unwrap()
}

#[test]
fn a_leader_is_elected_and_acks_quorum_writes_with_offsets() {
    let mut c = Cluster::new(3);
    let l = c.leader();
    // Offset 0: the bootstrap entry; 1: the leader's no-op.
    let t1 = c
        .node(l)
        .propose(G, verified(b"a", 3), Acks::Quorum)
        .unwrap();
    let t2 = c
        .node(l)
        .propose(G, verified(b"b", 2), Acks::Quorum)
        .unwrap();
    c.pump();
    let done: Vec<(Ticket, u64, u64)> = c
        .completions
        .iter()
        .map(|(_, c)| {
            let info = c.result.clone().unwrap();
            (c.ticket, info.base_offset, info.last_offset)
        })
        .collect();
    assert_eq!(done, vec![(t1, 2, 4), (t2, 5, 6)]);
    c.tick();
    for id in 1..=3 {
        assert_eq!(c.hwm.get(&id), Some(&7), "node {id}");
        let st = c.node(id).status(G).unwrap();
        assert_eq!(st.high_watermark, 7);
        assert_eq!(st.leader, Some(l));
    }
    let st = c.node(l).status(G).unwrap();
    assert_eq!(st.replicas.len(), 3);
    assert!(st.replicas.iter().all(|r| r.in_sync), "{:?}", st.replicas);
}

#[test]
fn proposals_are_refused_with_a_reason() {
    let mut c = Cluster::new(3);
    let l = c.leader();
    let f = if l == 1 { 2 } else { 1 };
    let cases: Vec<(NodeId, GroupId, VerifiedBatch, ProposeError)> = vec![
        (
            f,
            G,
            verified(b"x", 1),
            ProposeError::NotLeader {
                group: G,
                leader: Some(l),
            },
        ),
        (l, 99, verified(b"x", 1), ProposeError::UnknownGroup(99)),
        (
            l,
            G,
            VerifiedBatch::new(
                runnel_batch::BatchBuilder::control(runnel_batch::ControlKind::RaftNoop, &[], 0)
                    .unwrap(),
            )
            .unwrap(),
            ProposeError::Invalid {
                group: G,
                reason: "control batches are written by the replication layer only",
            },
        ),
    ];
    for (i, (node, group, batch, want)) in cases.into_iter().enumerate() {
        assert_eq!(
            c.node(node).propose(group, batch, Acks::Quorum),
            Err(want),
            "case {i}"
        );
    }
}

#[test]
fn acks_leader_completes_without_a_quorum_and_quorum_waits() {
    let mut c = Cluster::new(3);
    let l = c.leader();
    c.isolate_followers_of(l);
    let t_leader = c
        .node(l)
        .propose(G, verified(b"a", 1), Acks::Leader)
        .unwrap();
    let t_quorum = c
        .node(l)
        .propose(G, verified(b"b", 1), Acks::Quorum)
        .unwrap();
    c.pump();
    let tickets: Vec<Ticket> = c.completions.iter().map(|(_, c)| c.ticket).collect();
    assert_eq!(
        tickets,
        vec![t_leader],
        "only the acks=leader proposal is done"
    );
    assert_eq!(
        c.completions[0].1.result.as_ref().map(|i| i.base_offset),
        Ok(2)
    );
    // Heal: the quorum proposal commits.
    c.cut.clear();
    for _ in 0..5 {
        c.tick();
    }
    assert!(
        c.completions
            .iter()
            .any(|(_, x)| x.ticket == t_quorum && x.result.is_ok()),
        "{:?}",
        c.completions
    );
}

#[test]
fn an_isolated_leaders_proposals_are_superseded() {
    let mut c = Cluster::new(3);
    let old = c.leader();
    c.cut.insert(old);
    let t = c
        .node(old)
        .propose(G, verified(b"lost", 1), Acks::Quorum)
        .unwrap();
    c.pump();
    // The majority elects a new leader and writes at the same offsets.
    let new = c.leader();
    assert_ne!(new, old);
    c.node(new)
        .propose(G, verified(b"kept", 1), Acks::Quorum)
        .unwrap();
    c.pump();
    c.cut.clear();
    for _ in 0..10 {
        c.tick();
    }
    let mine: Vec<&Completion> = c
        .completions
        .iter()
        .filter(|(n, x)| *n == old && x.ticket == t)
        .map(|(_, x)| x)
        .collect();
    assert_eq!(mine.len(), 1, "{:?}", c.completions);
    assert!(
        matches!(mine[0].result, Err(ProposalError::Superseded { .. })),
        "{:?}",
        mine[0]
    );
    let hwms: BTreeSet<u64> = (1..=3)
        .map(|id| c.node(id).status(G).unwrap().high_watermark)
        .collect();
    assert_eq!(hwms.len(), 1, "all nodes converge: {hwms:?}");
}

#[test]
fn invalid_messages_are_dropped_and_unknown_groups_reported() {
    let mut c = Cluster::new(3);
    let l = c.leader();
    let f = if l == 1 { 2 } else { 1 };
    let before = c.node(f).status(G).unwrap();
    let mut propose = Message::default();
    propose.set_msg_type(MessageType::MsgPropose);
    propose.from = l;
    propose.to = f;
    propose.mut_entries().push(raft::eraftpb::Entry {
        data: data_batch(b"sneaky", 1),
        ..Default::default()
    });
    let mut bad_append = Message::default();
    bad_append.set_msg_type(MessageType::MsgAppend);
    bad_append.from = l;
    bad_append.to = f;
    bad_append.term = before.term;
    bad_append.index = before.last_index;
    bad_append.log_term = before.term;
    bad_append.mut_entries().push(raft::eraftpb::Entry {
        index: before.last_index + 1,
        term: before.term,
        data: bytes::Bytes::from_static(b"not a batch"),
        ..Default::default()
    });
    let mut wrong_sender = bad_append.clone();
    wrong_sender.from = 3;
    let msgs = vec![
        GroupMessage {
            group: G,
            msg: propose,
        },
        GroupMessage {
            group: G,
            msg: bad_append,
        },
        GroupMessage {
            group: G,
            msg: wrong_sender,
        },
        GroupMessage {
            group: 5,
            msg: Message::default(),
        },
    ];
    assert_eq!(c.node(f).step(l, msgs), vec![5]);
    c.pump();
    assert_eq!(c.node(f).status(G).unwrap().last_index, before.last_index);
}

#[test]
fn closing_a_group_ends_its_proposals_as_unknown() {
    let mut c = Cluster::new(3);
    let l = c.leader();
    c.isolate_followers_of(l);
    let t = c
        .node(l)
        .propose(G, verified(b"a", 1), Acks::Quorum)
        .unwrap();
    c.pump();
    let log = c.node(l).close_group(G).unwrap();
    assert!(log.last_index().unwrap() >= 3);
    let out = c.node(l).ready();
    assert_eq!(out.completions.len(), 1);
    assert_eq!(out.completions[0].ticket, t);
    assert!(matches!(
        out.completions[0].result,
        Err(ProposalError::Unknown { .. })
    ));
    assert!(c.node(l).status(G).is_none());
}

/// The leader's in-sync set holds every follower that keeps answering, at
/// every tick (raft-rs clears its `recent_active` flags at each check-quorum
/// round; a set built on them lost every follower for a heartbeat interval
/// once per election timeout), and drops a follower silent for longer than
/// an election timeout.
#[test]
fn the_in_sync_set_is_steady_while_followers_answer_and_drops_a_silent_one() {
    let mut c = Cluster::new(3);
    let l = c.leader();
    let in_sync = |c: &mut Cluster| -> Vec<NodeId> {
        let st = c.node(l).status(G).unwrap();
        st.replicas
            .iter()
            .filter(|r| r.in_sync)
            .map(|r| r.node)
            .collect()
    };
    for tick in 0..60 {
        // Between a tick and the answers it causes, as a describe may see it.
        c.now += 100;
        let now = c.now;
        for node in &mut c.nodes {
            node.tick(now);
        }
        assert_eq!(
            in_sync(&mut c),
            vec![1, 2, 3],
            "tick {tick}, before the answers"
        );
        c.pump();
        assert_eq!(in_sync(&mut c), vec![1, 2, 3], "tick {tick}");
    }
    let f = if l == 3 { 2 } else { 3 };
    c.cut.insert(f);
    let election = NodeConfig::default().election_tick;
    for _ in 0..=election + 1 {
        c.tick();
    }
    let want: Vec<NodeId> = (1..=3).filter(|&n| n != f).collect();
    assert_eq!(in_sync(&mut c), want);
    c.cut.clear();
    for _ in 0..5 {
        c.tick();
    }
    assert_eq!(in_sync(&mut c), vec![1, 2, 3]);
}
