//! Leader balancing: leadership goes back to the preferred leaders after
//! failovers.
//!
//! Every node runs the controller crate's rules
//! ([`ClusterState::leader_moves`]) over the leaders it knows (those of the
//! partitions it holds a replica of) every [`BALANCE_INTERVAL`], and
//! carries out the moves away from itself: for a partition it leads, it
//! asks its Raft loop to hand leadership over (raft-rs `transfer_leader`).
//! No RPC is needed, and a node that leads nothing does nothing.
//!
//! A move is made only to a replica that the leader has counted in sync in
//! two rounds in a row (so for at least one interval: a node that just
//! came back, or one that keeps dropping out, is left alone), and the Raft
//! loop checks once more that it is at most
//! [`MAX_TRANSFER_LAG`](super::super::driver::MAX_TRANSFER_LAG) entries
//! behind before it transfers. Moves only ever go to the preferred leader
//! while it is registered and unfenced, so leadership does not flap: once
//! there, no rule moves it. A transfer that fails (the target did not win
//! within an election timeout) is tried again two rounds later at the
//! earliest. Nothing moves during the first [`BALANCE_DELAY`] after start,
//! while the preferred leaders still win their first elections.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use runnel_cluster::{ClusterState, PartitionKey};
use runnel_raft::Role;

use super::ClusterNode;
use crate::cluster::driver::GroupView;
use crate::service::ShutdownSignal;

/// Time between two balancing rounds.
pub(super) const BALANCE_INTERVAL: Duration = Duration::from_secs(5);
/// No balancing this long after the node started.
pub(super) const BALANCE_DELAY: Duration = Duration::from_secs(10);

/// A leadership hand-over this node may make: (Raft group, target node).
type Move = (u64, u32);

/// What one balancing round decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Round {
    /// Transfers to ask the Raft loop for now.
    pub(super) transfers: Vec<Move>,
    /// Moves whose target is in sync now but was not last round: made next
    /// round if the target is still in sync then.
    pub(super) pending: BTreeSet<Move>,
}

/// One balancing round of node `me`: the moves away from `me` that
/// [`ClusterState::leader_moves`] lists for the leaders in `views` (the
/// groups `me` holds, by Raft group), to targets in sync now and
/// `pending` in the previous round.
pub(super) fn plan(
    state: &ClusterState,
    me: u32,
    views: &HashMap<u64, GroupView>,
    pending: &BTreeSet<Move>,
) -> Round {
    let mut leaders = BTreeMap::new();
    let mut groups = BTreeMap::new();
    for topic in state.topics().values() {
        for p in 0..topic.partitions.len() as u32 {
            let Some(group) = topic.group(p) else {
                continue;
            };
            let leader = views
                .get(&group)
                .and_then(|v| v.leader)
                .and_then(|l| u32::try_from(l).ok());
            if let Some(leader) = leader {
                let key = PartitionKey {
                    topic: topic.name.clone(),
                    partition: p,
                };
                leaders.insert(key.clone(), leader);
                groups.insert(key, group);
            }
        }
    }
    let mut round = Round::default();
    for mv in state.leader_moves(&leaders) {
        if mv.from != me {
            continue;
        }
        let Some(&group) = groups.get(&mv.partition) else {
            continue;
        };
        let in_sync = views
            .get(&group)
            .is_some_and(|v| v.role == Some(Role::Leader) && v.in_sync.contains(&u64::from(mv.to)));
        if !in_sync {
            continue;
        }
        if pending.contains(&(group, mv.to)) {
            round.transfers.push((group, mv.to));
        } else {
            round.pending.insert((group, mv.to));
        }
    }
    round
}

/// Where a stopping node hands its groups: for each group `me` leads, the
/// first voter in placement order (preferred leader first) that is in
/// sync. Groups without such a voter are left out (they fail over).
pub(super) fn handoff_targets(me: u64, views: &[(u64, GroupView)]) -> Vec<Move> {
    views
        .iter()
        .filter(|(_, v)| v.role == Some(Role::Leader))
        .filter_map(|(group, v)| {
            v.voters
                .iter()
                .find(|&&n| n != me && v.in_sync.contains(&n))
                .and_then(|&n| u32::try_from(n).ok())
                .map(|to| (*group, to))
        })
        .collect()
}

/// How often a stopping node re-asks for the hand-overs still due.
const HANDOFF_RETRY: Duration = Duration::from_millis(200);
/// How long a stopping node waits for a replica of the groups it leads to
/// come in sync before it gives up on handing them over. A leader elected
/// moments ago has no follower in sync until their first append responses
/// (one heartbeat), so giving up at the first look would leave those
/// groups to fail over; a live follower answers well within one election
/// timeout (1 s).
const NO_REPLICA_GRACE: Duration = Duration::from_secs(1);

impl ClusterNode {
    /// The view of every partition group open here, by Raft group.
    fn hosted_views<C: FromIterator<(u64, GroupView)>>(&self) -> C {
        self.hosted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(&group, shared)| (group, shared.view()))
            .collect()
    }

    /// Before a graceful stop (Kafka's controlled shutdown): hands every
    /// group this node leads, the controller's included, to an in-sync
    /// replica and waits up to `limit` until none is led here, so its
    /// partitions stay writable while it restarts instead of waiting one
    /// failover. It stops waiting early when for [`NO_REPLICA_GRACE`] no
    /// group it still leads had a replica in sync (the last node of a
    /// cluster being stopped). Groups
    /// still led then (or a follower too far behind under load at the
    /// deadline) fail over as after a crash.
    pub(crate) async fn hand_over_leadership(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let me = u64::from(self.node_id);
        // Groups that left this node once since the stop began. One that
        // comes back was handed back by a node stopping too (a whole
        // cluster stopped at once): it is not handed over again, or the
        // nodes would pass leadership around until the deadline.
        let mut moved: HashSet<u64> = HashSet::new();
        // Since when no group still led here had a replica in sync.
        let mut none_in_sync_since: Option<tokio::time::Instant> = None;
        loop {
            let mut views: Vec<(u64, GroupView)> = self.hosted_views();
            views.push((super::CONTROLLER_GROUP, self.controller.view()));
            for (group, v) in &views {
                if v.role != Some(Role::Leader) {
                    moved.insert(*group);
                }
            }
            views.retain(|(group, v)| v.role == Some(Role::Leader) && !moved.contains(group));
            if views.is_empty() {
                tracing::info!("leadership handed over");
                return;
            }
            let led = views.len();
            let targets = handoff_targets(me, &views);
            let now = tokio::time::Instant::now();
            if targets.is_empty() {
                let since = *none_in_sync_since.get_or_insert(now);
                if now.duration_since(since) >= NO_REPLICA_GRACE {
                    tracing::info!(
                        groups = led,
                        "no replica in sync to take over the groups still led here"
                    );
                    return;
                }
            } else {
                none_in_sync_since = None;
            }
            if now >= deadline {
                tracing::warn!(
                    groups = led,
                    "still leading groups at the hand-over deadline: they fail over"
                );
                return;
            }
            for (group, to) in targets {
                self.raft.transfer_leader(group, u64::from(to));
            }
            tokio::time::sleep(HANDOFF_RETRY).await;
        }
    }

    /// Runs a balancing round every [`BALANCE_INTERVAL`] (see the module
    /// docs) until `stop`.
    pub(super) async fn balance_loop(self: Arc<Self>, stop: ShutdownSignal) {
        tokio::select! {
            () = tokio::time::sleep(BALANCE_DELAY) => {}
            () = stop.wait() => return,
        }
        let mut pending = BTreeSet::new();
        loop {
            let views: HashMap<u64, GroupView> = self.hosted_views();
            let round = plan(&self.state(), self.node_id, &views, &pending);
            for &(group, to) in &round.transfers {
                tracing::debug!(group, to, "moving leadership back to the preferred leader");
                self.raft.transfer_leader(group, u64::from(to));
            }
            pending = round.pending;
            tokio::select! {
                () = tokio::time::sleep(BALANCE_INTERVAL) => {}
                () = stop.wait() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use runnel_cluster::{Command, TopicSettings};

    use super::*;

    /// Nodes 1-3 and topic "t" with 3 partitions, RF 3.
    fn state() -> ClusterState {
        let mut s = ClusterState::new();
        for id in 1..=3 {
            let c = Command::RegisterBroker {
                id,
                address: format!("n{id}:1"),
                rack: None,
            };
            s.apply(u64::from(id), &c).unwrap();
        }
        let c = Command::CreateTopic {
            name: "t".into(),
            settings: TopicSettings {
                partitions: 3,
                replication_factor: 3,
                ..TopicSettings::default()
            },
            created_ms: 1,
        };
        s.apply(4, &c).unwrap();
        s
    }

    fn view(role: Role, leader: u64, in_sync: &[u64]) -> GroupView {
        GroupView {
            role: Some(role),
            term: 2,
            leader: Some(leader),
            voters: vec![1, 2, 3],
            in_sync: in_sync.to_vec(),
        }
    }

    #[test]
    fn a_stopping_node_hands_each_group_it_leads_to_the_first_in_sync_voter() {
        let led = |voters: &[u64], in_sync: &[u64]| GroupView {
            role: Some(Role::Leader),
            term: 2,
            leader: Some(1),
            voters: voters.to_vec(),
            in_sync: in_sync.to_vec(),
        };
        let views = vec![
            (10, led(&[1, 3, 2], &[1, 2, 3])),
            (11, led(&[2, 1, 3], &[1, 3])),
            (12, led(&[1, 2, 3], &[1])),
            (13, view(Role::Follower, 2, &[1, 2, 3])),
        ];
        assert_eq!(handoff_targets(1, &views), vec![(10, 3), (11, 3)]);
    }

    #[test]
    fn hands_back_to_an_in_sync_preferred_leader_after_two_rounds() {
        let s = state();
        let topic = s.topic("t").unwrap();
        let group = |p: u32| topic.group(p).unwrap();
        let preferred = |p: usize| topic.partitions[p].preferred_leader();
        // Node 1 leads every partition; the others follow.
        let me = 1;
        let all_in_sync: HashMap<u64, GroupView> = (0..3)
            .map(|p| (group(p), view(Role::Leader, 1, &[1, 2, 3])))
            .collect();
        let moves: BTreeSet<Move> = (0..3u32)
            .filter(|&p| preferred(p as usize) != me)
            .map(|p| (group(p), preferred(p as usize)))
            .collect();
        assert_eq!(moves.len(), 2, "two partitions prefer another node");

        // Case 1: first round: nothing moves yet, both are pending.
        let r = plan(&s, me, &all_in_sync, &BTreeSet::new());
        assert_eq!(r.transfers, vec![]);
        assert_eq!(r.pending, moves);
        // Case 2: second round, still in sync: both move.
        let r = plan(&s, me, &all_in_sync, &moves);
        let got: BTreeSet<Move> = r.transfers.iter().copied().collect();
        assert_eq!(got, moves);
        assert!(r.pending.is_empty());
        // Case 3: a target out of sync in the second round is left alone
        // and starts over.
        let mut views = all_in_sync.clone();
        let (g, lagging) = *moves.iter().next().unwrap();
        let others: Vec<u64> = [1, 2, 3]
            .into_iter()
            .filter(|&n| n != u64::from(lagging))
            .collect();
        views.insert(g, view(Role::Leader, 1, &others));
        let r = plan(&s, me, &views, &moves);
        assert!(!r.transfers.contains(&(g, lagging)), "{r:?}");
        assert!(!r.pending.contains(&(g, lagging)), "{r:?}");
        assert_eq!(r.transfers.len(), 1, "{r:?}");
        // Case 4: a follower never moves anything, even with the leaders
        // it knows out of balance.
        let followed: HashMap<u64, GroupView> = (0..3)
            .map(|p| (group(p), view(Role::Follower, 1, &[1, 2, 3])))
            .collect();
        for me in [2, 3] {
            let r = plan(&s, me, &followed, &moves);
            assert_eq!(r, Round::default(), "node {me}");
        }
        // Case 5: once every preferred leader leads, nothing moves.
        for me in 1..=3 {
            let views: HashMap<u64, GroupView> = (0..3u32)
                .map(|p| {
                    let leader = u64::from(preferred(p as usize));
                    let role = if leader == u64::from(me) {
                        Role::Leader
                    } else {
                        Role::Follower
                    };
                    (group(p), view(role, leader, &[1, 2, 3]))
                })
                .collect();
            let r = plan(&s, me, &views, &moves);
            assert_eq!(r, Round::default(), "node {me}");
        }
    }
}
