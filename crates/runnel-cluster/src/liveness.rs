//! Broker liveness policy: which brokers the controller leader should
//! fence or unfence, from when it last heard of each. Pure: the caller
//! passes the times.

use std::collections::BTreeMap;

use crate::BrokerId;
use crate::command::Command;
use crate::state::ClusterState;

impl ClusterState {
    /// The fence and unfence commands that make the fenced flags match
    /// liveness: a broker last heard of more than `session_timeout_ms`
    /// before `now_ms` (or never, absent from `heard_ms`) should be
    /// fenced; a fenced one heard of within it, unfenced. By broker id.
    ///
    /// Meant for the controller leader on every tick, proposing what it
    /// returns (and nothing while its earlier proposals are in flight).
    /// A new leader has no history: it seeds `heard_ms` with the time it
    /// was elected for every broker, so nobody is fenced for the election.
    /// All times in ms from the same clock (monotonic is fine).
    pub fn fencing_commands(
        &self,
        heard_ms: &BTreeMap<BrokerId, i64>,
        now_ms: i64,
        session_timeout_ms: i64,
    ) -> Vec<Command> {
        self.brokers()
            .values()
            .filter_map(|b| {
                let alive = heard_ms
                    .get(&b.id)
                    .is_some_and(|t| now_ms.saturating_sub(*t) <= session_timeout_ms);
                match (alive, b.fenced) {
                    (true, true) => Some(Command::UnfenceBroker { id: b.id }),
                    (false, false) => Some(Command::FenceBroker { id: b.id }),
                    _ => None,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_the_silent_and_unfences_the_returning() {
        let mut s = ClusterState::new();
        for id in 1..=4 {
            let c = Command::RegisterBroker {
                id,
                address: format!("n{id}:9092"),
                rack: None,
            };
            s.apply(u64::from(id), &c).unwrap();
        }
        s.apply(5, &Command::FenceBroker { id: 3 }).unwrap();
        s.apply(6, &Command::FenceBroker { id: 4 }).unwrap();
        // 1 heard just now, 2 too long ago, 3 (fenced) back, 4 (fenced)
        // still silent; 9 is not registered.
        let heard: BTreeMap<BrokerId, i64> = [(1, 10_000), (2, 3_000), (3, 9_000), (9, 10_000)]
            .into_iter()
            .collect();
        assert_eq!(
            s.fencing_commands(&heard, 10_000, 6_000),
            vec![
                Command::FenceBroker { id: 2 },
                Command::UnfenceBroker { id: 3 },
            ]
        );
        // Exactly at the timeout still counts as alive.
        assert!(s.fencing_commands(&heard, 9_000, 6_000).len() == 1);
        // Once applied, nothing more to do.
        s.apply(7, &Command::FenceBroker { id: 2 }).unwrap();
        s.apply(8, &Command::UnfenceBroker { id: 3 }).unwrap();
        assert!(s.fencing_commands(&heard, 10_000, 6_000).is_empty());
    }
}
