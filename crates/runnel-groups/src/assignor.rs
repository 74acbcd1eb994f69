//! Broker-side partition assignors: pure functions from members, their
//! subscriptions and the current assignment to a target assignment.
//!
//! Every assignor gives each partition of a subscribed topic exactly one
//! owner among the members subscribed to it. When every member subscribes
//! to the same topics, the members' partition counts differ by at most one
//! (range balances per topic, so across several topics its totals may
//! differ by more, as in Kafka).

use std::collections::{BTreeMap, BTreeSet};

/// A topic partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition id.
    pub partition: u32,
}

impl TopicPartition {
    /// `topic`-`partition`.
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

/// Partitions by member id.
pub type Assignment = BTreeMap<String, BTreeSet<TopicPartition>>;

/// How partitions are spread over a group's members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Assignor {
    /// Per topic, members (by id) get consecutive ranges of partitions.
    Range,
    /// All partitions (by topic, then id) dealt to members in turn.
    RoundRobin,
    /// Balanced like round-robin, but members keep as many of the
    /// partitions they own as balance allows, so a rebalance moves as few
    /// partitions as possible. The default.
    #[default]
    Sticky,
}

impl Assignor {
    /// The assignor named `name` (`range`, `round-robin`/`roundrobin`,
    /// `sticky`; empty gives the default, sticky).
    pub fn parse(name: &str) -> Option<Assignor> {
        match name {
            "" | "sticky" => Some(Assignor::Sticky),
            "range" => Some(Assignor::Range),
            "round-robin" | "roundrobin" => Some(Assignor::RoundRobin),
            _ => None,
        }
    }

    /// Its name, as [`Assignor::parse`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "round-robin",
            Assignor::Sticky => "sticky",
        }
    }

    /// The target assignment of `subscriptions` (member id -> topics) over
    /// `partitions` (topic -> partition count), given the `current` one
    /// (only sticky looks at it). Every member appears in the result, with
    /// an empty set when it gets nothing. Topics missing from `partitions`
    /// are ignored.
    pub fn assign(
        self,
        subscriptions: &BTreeMap<String, BTreeSet<String>>,
        partitions: &BTreeMap<String, u32>,
        current: &Assignment,
    ) -> Assignment {
        let mut out: Assignment = subscriptions
            .keys()
            .map(|m| (m.clone(), BTreeSet::new()))
            .collect();
        match self {
            Assignor::Range => range(subscriptions, partitions, &mut out),
            Assignor::RoundRobin => round_robin(subscriptions, partitions, &mut out),
            Assignor::Sticky => sticky(subscriptions, partitions, current, &mut out),
        }
        out
    }
}

/// Every partition of the subscribed topics, by topic then id.
fn all_partitions(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
) -> Vec<TopicPartition> {
    let topics: BTreeSet<&String> = subscriptions.values().flatten().collect();
    topics
        .into_iter()
        .filter_map(|t| partitions.get(t).map(|&n| (t, n)))
        .flat_map(|(t, n)| (0..n).map(move |p| TopicPartition::new(t.clone(), p)))
        .collect()
}

fn range(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    out: &mut Assignment,
) {
    for (topic, &count) in partitions {
        let members: Vec<&String> = subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if members.is_empty() {
            continue;
        }
        let n = members.len() as u32;
        let (each, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, member) in members.into_iter().enumerate() {
            let take = each + u32::from((i as u32) < extra);
            let set = out.entry(member.clone()).or_default();
            set.extend((next..next + take).map(|p| TopicPartition::new(topic.clone(), p)));
            next += take;
        }
    }
}

fn round_robin(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    out: &mut Assignment,
) {
    let members: Vec<&String> = subscriptions.keys().collect();
    let mut turn = 0;
    for tp in all_partitions(subscriptions, partitions) {
        // The next member (in turn) subscribed to the topic.
        for _ in 0..members.len() {
            let member = members[turn % members.len()];
            turn += 1;
            if subscriptions[member].contains(&tp.topic) {
                out.entry(member.clone()).or_default().insert(tp);
                break;
            }
        }
    }
}

fn sticky(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    current: &Assignment,
    out: &mut Assignment,
) {
    let all = all_partitions(subscriptions, partitions);
    if subscriptions.is_empty() {
        return;
    }
    let members = subscriptions.len();
    let floor = all.len() / members;
    // How many members may hold floor + 1.
    let mut extra_slots = all.len() % members;
    let valid = |member: &String, tp: &TopicPartition| {
        subscriptions[member].contains(&tp.topic)
            && partitions.get(&tp.topic).is_some_and(|&n| tp.partition < n)
    };
    let mut taken: BTreeSet<TopicPartition> = BTreeSet::new();
    // Keep up to floor of what each member owns (members with most first
    // get the extra slots, so fewer partitions move).
    let mut by_size: Vec<(&String, Vec<TopicPartition>)> = subscriptions
        .keys()
        .map(|m| {
            let owned = current
                .get(m)
                .map(|s| s.iter().filter(|tp| valid(m, tp)).cloned().collect())
                .unwrap_or_default();
            (m, owned)
        })
        .collect();
    by_size.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    for (member, owned) in by_size {
        let mut keep = floor;
        if owned.len() > floor && extra_slots > 0 {
            keep += 1;
            extra_slots -= 1;
        }
        let set = out.entry(member.clone()).or_default();
        for tp in owned {
            if set.len() >= keep {
                break;
            }
            if taken.insert(tp.clone()) {
                set.insert(tp);
            }
        }
    }
    // Deal the rest, each to the least loaded member subscribed to it.
    for tp in all {
        if taken.contains(&tp) {
            continue;
        }
        let target = out
            .iter()
            .filter(|(m, _)| subscriptions[*m].contains(&tp.topic))
            .min_by_key(|(m, set)| (set.len(), (*m).clone()))
            .map(|(m, _)| m.clone());
        if let Some(m) = target {
            taken.insert(tp.clone());
            out.entry(m).or_default().insert(tp);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn subs(members: usize, topics: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
        (0..members)
            .map(|i| {
                (
                    format!("m{i:02}"),
                    topics.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    fn counts(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn check_exactly_once(a: &Assignment, partitions: &BTreeMap<String, u32>) {
        let mut seen = BTreeSet::new();
        for set in a.values() {
            for tp in set {
                assert!(seen.insert(tp.clone()), "{tp:?} assigned twice in {a:?}");
            }
        }
        let total: u32 = partitions.values().sum();
        assert_eq!(
            seen.len(),
            total as usize,
            "every partition assigned: {a:?}"
        );
    }

    fn spread(a: &Assignment) -> usize {
        let sizes: Vec<usize> = a.values().map(BTreeSet::len).collect();
        sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0)
    }

    #[test]
    fn examples() {
        // (case, assignor, members, partitions of "t", expected sizes by member)
        let cases = [
            (1, Assignor::Range, 3, 6, vec![2, 2, 2]),
            (2, Assignor::Range, 3, 7, vec![3, 2, 2]),
            (3, Assignor::RoundRobin, 4, 6, vec![2, 2, 1, 1]),
            (4, Assignor::Sticky, 3, 6, vec![2, 2, 2]),
            (5, Assignor::Sticky, 7, 6, vec![1, 1, 1, 1, 1, 1, 0]),
        ];
        for (case, assignor, members, n, sizes) in cases {
            let p = counts(&[("t", n)]);
            let a = assignor.assign(&subs(members, &["t"]), &p, &Assignment::new());
            check_exactly_once(&a, &p);
            let got: Vec<usize> = a.values().map(BTreeSet::len).collect();
            assert_eq!(got, sizes, "case {case}");
        }
        // Range gives consecutive partitions.
        let a = Assignor::Range.assign(&subs(2, &["t"]), &counts(&[("t", 4)]), &Assignment::new());
        assert_eq!(a["m00"], [0, 1].map(|p| TopicPartition::new("t", p)).into());
    }

    #[test]
    fn sticky_moves_only_what_must_move() {
        let p = counts(&[("t", 6)]);
        let two = Assignor::Sticky.assign(&subs(2, &["t"]), &p, &Assignment::new());
        let three = Assignor::Sticky.assign(&subs(3, &["t"]), &p, &two);
        // The third member takes one from each of the first two.
        for m in ["m00", "m01"] {
            assert_eq!(three[m].len(), 2);
            assert!(three[m].is_subset(&two[m]), "{m} keeps its own");
        }
        // m01 leaves: m00 and m02 keep theirs and share m01's.
        let mut s = subs(3, &["t"]);
        s.remove("m01");
        let after = Assignor::Sticky.assign(&s, &p, &three);
        assert!(three["m00"].is_subset(&after["m00"]));
        assert!(three["m02"].is_subset(&after["m02"]));
        check_exactly_once(&after, &p);
    }

    #[test]
    fn only_subscribers_get_a_topic() {
        let mut s = subs(2, &["a"]);
        s.insert("x".into(), ["b".to_string()].into());
        let p = counts(&[("a", 4), ("b", 2), ("c", 3)]);
        for assignor in [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky] {
            let a = assignor.assign(&s, &p, &Assignment::new());
            assert_eq!(a["x"].len(), 2, "{assignor:?}");
            assert!(a["x"].iter().all(|tp| tp.topic == "b"), "{assignor:?}");
            assert!(
                a.values().flatten().all(|tp| tp.topic != "c"),
                "{assignor:?}"
            );
        }
    }

    fn arb_current(members: usize, n: u32) -> impl Strategy<Value = Assignment> {
        // A random earlier assignment, possibly naming gone members and
        // partitions that no longer exist, and overlapping.
        proptest::collection::vec((0..members + 2, 0..n + 3), 0..24).prop_map(|pairs| {
            let mut a = Assignment::new();
            for (m, p) in pairs {
                a.entry(format!("m{m:02}"))
                    .or_default()
                    .insert(TopicPartition::new("t", p));
            }
            a
        })
    }

    proptest! {
        #[test]
        fn balanced_and_exactly_once(members in 1usize..9, n in 0u32..40, m in 0u32..10,
                                     current in arb_current(8, 40)) {
            let p = counts(&[("t", n), ("u", m)]);
            let s = subs(members, &["t", "u"]);
            for assignor in [Assignor::RoundRobin, Assignor::Sticky] {
                let a = assignor.assign(&s, &p, &current);
                check_exactly_once(&a, &p);
                prop_assert!(spread(&a) <= 1, "{:?}: {:?}", assignor, a);
            }
            let a = Assignor::Range.assign(&s, &p, &current);
            check_exactly_once(&a, &p);
        }

        #[test]
        fn sticky_keeps_the_most_it_can(members in 1usize..9, n in 0u32..40, leave in 0usize..9) {
            // Assignment of `members`, then one member leaves or one joins:
            // the members that stay lose only what balance requires.
            let p = counts(&[("t", n)]);
            let before = Assignor::Sticky.assign(&subs(members, &["t"]), &p, &Assignment::new());
            let mut s = subs(members + 1, &["t"]);
            if leave < members && members > 1 {
                s.remove(&format!("m{leave:02}"));
                s.remove(&format!("m{members:02}"));
            }
            let after = Assignor::Sticky.assign(&s, &p, &before);
            check_exactly_once(&after, &p);
            prop_assert!(spread(&after) <= 1);
            let quota_max = (n as usize).div_ceil(s.len());
            for (m, set) in &after {
                let old = before.get(m).cloned().unwrap_or_default();
                let kept = set.intersection(&old).count();
                // A member keeps all it had, up to the new (ceil) quota;
                // at worst it is trimmed to the floor.
                prop_assert!(kept >= old.len().min(quota_max.saturating_sub(1)),
                    "{} kept {} of {:?} -> {:?}", m, kept, old, set);
            }
        }
    }
}
