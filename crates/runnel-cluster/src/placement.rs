//! Replica placement.
//!
//! The rules are in the crate docs ("Placement"); this is their code.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use crate::BrokerId;
use crate::state::Broker;

/// What a broker holds, summed over all topics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerLoad {
    /// Partition replicas placed on it.
    pub replicas: u32,
    /// Partitions it is the preferred leader (first replica) of.
    pub preferred_leaders: u32,
}

/// Places partitions `partitions` of a topic over `eligible` (sorted by
/// id), updating `load`: one replica list per partition, preferred leader
/// first. `seed` (the topic id) sets the rotation start.
///
/// Panics when `replication_factor` is 0 or above `eligible.len()`: the
/// caller checks both.
pub(crate) fn place(
    eligible: &[&Broker],
    load: &mut BTreeMap<BrokerId, BrokerLoad>,
    partitions: Range<u32>,
    replication_factor: u32,
    seed: u64,
) -> Vec<Vec<BrokerId>> {
    let n = eligible.len();
    let rf = replication_factor as usize;
    assert!(
        rf >= 1 && rf <= n,
        "placement of {rf} replicas over {n} brokers: the caller must check"
    );
    let mut out = Vec::with_capacity(partitions.len());
    for p in partitions {
        // `n` fits in u64 and the result is below `n`.
        let start = ((seed % n as u64 + u64::from(p)) % n as u64) as usize;
        let rank = |i: usize| (i + n - start) % n;
        let of = |i: usize| load.get(&eligible[i].id).copied().unwrap_or_default();
        // The set is the `rf` least loaded: every broker below the load of
        // the rf-th smallest (forced), then some of those at it (pool).
        let mut by_load: Vec<u32> = (0..n).map(|i| of(i).replicas).collect();
        by_load.sort_unstable();
        let boundary = by_load[rf - 1];
        let mut forced: Vec<usize> = (0..n).filter(|&i| of(i).replicas < boundary).collect();
        forced.sort_by_key(|&i| rank(i));
        let mut pool: Vec<usize> = (0..n).filter(|&i| of(i).replicas == boundary).collect();
        // The leader: fewest preferred leaders among all who may be in it.
        let Some(leader) = forced
            .iter()
            .chain(&pool)
            .copied()
            .min_by_key(|&i| (of(i).preferred_leaders, rank(i)))
        else {
            unreachable!("rf >= 1 brokers qualify")
        };
        let mut picked = vec![leader];
        picked.extend(forced.iter().copied().filter(|&i| i != leader));
        pool.retain(|&i| i != leader);
        let mut racks: BTreeSet<&str> = picked
            .iter()
            .filter_map(|&i| eligible[i].rack.as_deref())
            .collect();
        while picked.len() < rf {
            let Some(k) = (0..pool.len()).min_by_key(|&k| {
                let i = pool[k];
                let clash = eligible[i]
                    .rack
                    .as_deref()
                    .is_some_and(|r| racks.contains(r));
                (clash, Reverse(of(i).preferred_leaders), rank(i))
            }) else {
                unreachable!("the pool holds the rest of the rf least loaded")
            };
            let i = pool.remove(k);
            if let Some(r) = eligible[i].rack.as_deref() {
                racks.insert(r);
            }
            picked.push(i);
        }
        picked[1..].sort_by_key(|&i| rank(i));
        let replicas: Vec<BrokerId> = picked.iter().map(|&i| eligible[i].id).collect();
        for (k, id) in replicas.iter().enumerate() {
            let l = load.entry(*id).or_default();
            l.replicas += 1;
            if k == 0 {
                l.preferred_leaders += 1;
            }
        }
        out.push(replicas);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brokers(racks: &[Option<&str>]) -> Vec<Broker> {
        racks
            .iter()
            .enumerate()
            .map(|(i, r)| Broker {
                id: i as u32 + 1,
                address: format!("n{}:9092", i + 1),
                rack: r.map(str::to_string),
                fenced: false,
            })
            .collect()
    }

    #[test]
    fn three_brokers_rf3_rotates_leaders() {
        let b = brokers(&[None, None, None]);
        let eligible: Vec<&Broker> = b.iter().collect();
        let mut load = BTreeMap::new();
        let got = place(&eligible, &mut load, 0..6, 3, 0);
        assert_eq!(
            got,
            vec![
                vec![1, 2, 3],
                vec![2, 3, 1],
                vec![3, 1, 2],
                vec![1, 2, 3],
                vec![2, 3, 1],
                vec![3, 1, 2],
            ]
        );
        for id in 1..=3 {
            assert_eq!(
                load[&id],
                BrokerLoad {
                    replicas: 6,
                    preferred_leaders: 2
                }
            );
        }
    }

    #[test]
    fn existing_load_is_filled_first() {
        let b = brokers(&[None, None, None, None]);
        let eligible: Vec<&Broker> = b.iter().collect();
        let mut load = BTreeMap::new();
        load.insert(
            1,
            BrokerLoad {
                replicas: 2,
                preferred_leaders: 2,
            },
        );
        load.insert(
            2,
            BrokerLoad {
                replicas: 1,
                preferred_leaders: 0,
            },
        );
        let got = place(&eligible, &mut load, 0..1, 2, 0);
        // 3 and 4 hold nothing: they get the partition.
        assert_eq!(got, vec![vec![3, 4]]);
        let got = place(&eligible, &mut load, 0..2, 1, 7);
        // Then 2, 3 and 4 tie at one replica; 2 and 4 lead nothing, and
        // the rotation (start 7 mod 4 = 3) puts 4 first, then 2.
        assert_eq!(got, vec![vec![4], vec![2]]);
        let replicas: Vec<u32> = load.values().map(|l| l.replicas).collect();
        assert_eq!(replicas, vec![2, 2, 1, 2]);
    }

    #[test]
    fn racks_break_ties() {
        let b = brokers(&[Some("a"), Some("a"), Some("b"), Some("b")]);
        let eligible: Vec<&Broker> = b.iter().collect();
        let mut load = BTreeMap::new();
        let got = place(&eligible, &mut load, 0..4, 2, 0);
        for (p, a) in got.iter().enumerate() {
            let racks: BTreeSet<_> = a
                .iter()
                .map(|id| b[*id as usize - 1].rack.clone())
                .collect();
            assert_eq!(racks.len(), 2, "partition {p}: {a:?}");
        }
    }

    #[test]
    #[should_panic(expected = "placement of 3 replicas over 2 brokers")]
    fn refuses_more_replicas_than_brokers() {
        let b = brokers(&[None, None]);
        let eligible: Vec<&Broker> = b.iter().collect();
        place(&eligible, &mut BTreeMap::new(), 0..1, 3, 0);
    }
}
