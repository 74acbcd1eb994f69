//! Leader balancing: which partitions should transfer leadership. The
//! rules are in the crate docs ("Leadership"); this is their code.

use std::collections::BTreeMap;

use crate::BrokerId;
use crate::state::{ClusterState, PartitionAssignment};

/// A partition, named by topic and partition id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionKey {
    /// Topic name.
    pub topic: String,
    /// Partition id.
    pub partition: u32,
}

/// A leadership transfer of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderMove {
    /// The partition.
    pub partition: PartitionKey,
    /// Its current leader.
    pub from: BrokerId,
    /// The live replica to transfer leadership to.
    pub to: BrokerId,
}

/// Where one partition's leadership goes.
struct Target<'a> {
    from: BrokerId,
    to: BrokerId,
    assignment: &'a PartitionAssignment,
}

fn count(counts: &BTreeMap<BrokerId, u32>, id: BrokerId) -> u32 {
    counts.get(&id).copied().unwrap_or(0)
}

/// Points `t` at `to`, keeping the leader counts.
fn retarget(counts: &mut BTreeMap<BrokerId, u32>, t: &mut Target<'_>, to: BrokerId) {
    if let Some(c) = counts.get_mut(&t.to) {
        *c -= 1;
    }
    *counts.entry(to).or_default() += 1;
    t.to = to;
}

/// See [`ClusterState::leader_moves`].
pub(crate) fn leader_moves(
    state: &ClusterState,
    leaders: &BTreeMap<PartitionKey, BrokerId>,
) -> Vec<LeaderMove> {
    let live = |id: BrokerId| state.brokers().get(&id).is_some_and(|b| !b.fenced);
    let mut targets: BTreeMap<&PartitionKey, Target<'_>> = BTreeMap::new();
    let mut counts: BTreeMap<BrokerId, u32> = BTreeMap::new();
    let mut orphans: Vec<&PartitionKey> = Vec::new();
    for (key, &from) in leaders {
        let Some(assignment) = state
            .topic(&key.topic)
            .and_then(|t| t.partitions.get(key.partition as usize))
        else {
            continue;
        };
        let preferred = assignment.preferred_leader();
        let to = if live(preferred) {
            preferred
        } else {
            orphans.push(key);
            from
        };
        *counts.entry(to).or_default() += 1;
        targets.insert(
            key,
            Target {
                from,
                to,
                assignment,
            },
        );
    }
    // Off brokers that are not live, onto the live replica leading fewest.
    for key in &orphans {
        let Some(t) = targets.get_mut(key) else {
            continue;
        };
        if live(t.to) {
            continue;
        }
        let best = t
            .assignment
            .replicas
            .iter()
            .copied()
            .filter(|&r| live(r))
            .min_by_key(|&r| (count(&counts, r), r));
        if let Some(r) = best {
            retarget(&mut counts, t, r);
        }
    }
    // Close the widest gap while one is at least two.
    loop {
        let mut best: Option<(u32, &PartitionKey, BrokerId)> = None;
        for key in &orphans {
            let Some(t) = targets.get(key) else {
                continue;
            };
            if !live(t.to) {
                continue;
            }
            let here = count(&counts, t.to);
            let mut replicas = t.assignment.replicas.clone();
            replicas.sort_unstable();
            for r in replicas {
                if r == t.to || !live(r) {
                    continue;
                }
                let there = count(&counts, r);
                if there + 2 <= here && best.is_none_or(|(gap, _, _)| here - there > gap) {
                    best = Some((here - there, key, r));
                }
            }
        }
        let Some((_, key, r)) = best else {
            break;
        };
        if let Some(t) = targets.get_mut(key) {
            retarget(&mut counts, t, r);
        }
    }
    targets
        .into_iter()
        .filter(|(_, t)| t.from != t.to)
        .map(|(key, t)| LeaderMove {
            partition: key.clone(),
            from: t.from,
            to: t.to,
        })
        .collect()
}
