//! The change feed: what an applied command changed ([`Applied`]) and the
//! replica work it asks of one broker ([`ReplicaChange`]).

use crate::BrokerId;
use crate::settings::TopicSettings;
use crate::state::{Broker, Topic, TopicId, group_id};

/// What an applied command changed: the change feed a broker follows to
/// create and remove its local replicas ([`Applied::replica_changes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A broker was added or re-registered.
    BrokerRegistered {
        /// The broker now.
        broker: Broker,
        /// The broker before, when it was registered already.
        previous: Option<Broker>,
    },
    /// A broker is fenced (also when it already was).
    BrokerFenced(BrokerId),
    /// A broker is unfenced (also when it already was).
    BrokerUnfenced(BrokerId),
    /// A broker was removed; this is what it was.
    BrokerUnregistered(Broker),
    /// A topic was created, with its assignments.
    TopicCreated(Topic),
    /// A topic was deleted; this is what it was.
    TopicDeleted(Topic),
    /// A topic's settings changed.
    TopicAltered {
        /// The topic now.
        topic: Topic,
        /// Its settings before.
        previous: TopicSettings,
    },
    /// Partitions were added to a topic.
    PartitionsCreated {
        /// The topic now.
        topic: Topic,
        /// Id of the first new partition (the count before).
        first: u32,
    },
}

/// One partition replica on one broker. Ordered by topic name, then
/// topic id, then partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId {
    /// Topic name.
    pub name: String,
    /// Topic identity: a replica of an older topic of the same name has
    /// another.
    pub topic: TopicId,
    /// Partition id.
    pub partition: u32,
}

/// A replica as a broker should run it: with `group`, `replicas` (the
/// voters) and `created_ms` it opens the partition's Raft group, the same
/// bootstrap on every replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSpec {
    /// Which replica.
    pub id: ReplicaId,
    /// The partition's Raft group id ([`crate::Topic::group`]).
    pub group: u64,
    /// All replicas of the partition (its Raft group's voters), preferred
    /// leader first.
    pub replicas: Vec<BrokerId>,
    /// The partition's creation time (ms since the Unix epoch).
    pub created_ms: i64,
    /// The topic's settings.
    pub settings: TopicSettings,
}

/// What one broker must do to its local replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaChange {
    /// Create this replica (an empty log joining the partition's group).
    Create(ReplicaSpec),
    /// Remove this replica and its data.
    Remove(ReplicaId),
    /// Run this replica with new settings.
    Reconfigure(ReplicaSpec),
}

/// The replicas of `topic` on `broker`, by partition.
pub(crate) fn replicas_of(topic: &Topic, broker: BrokerId) -> Vec<ReplicaSpec> {
    topic
        .partitions
        .iter()
        .enumerate()
        .filter(|(_, a)| a.replicas.contains(&broker))
        .map(|(p, a)| ReplicaSpec {
            id: ReplicaId {
                name: topic.name.clone(),
                topic: topic.id,
                partition: p as u32,
            },
            group: group_id(topic.id, p as u32),
            replicas: a.replicas.clone(),
            created_ms: a.created_ms,
            settings: topic.settings.clone(),
        })
        .collect()
}

impl Applied {
    /// The replica work this change asks of `broker`: one entry per
    /// partition of an affected topic that has a replica on it, by
    /// partition. Adding partitions reconfigures the existing ones (their
    /// settings hold the partition count) and creates the new ones.
    ///
    /// Following these from the first entry, or [`crate::ClusterState::reconcile`]
    /// after missing some, leaves a broker holding exactly
    /// [`crate::ClusterState::replicas_on`] (proptest in `state/tests.rs`).
    pub fn replica_changes(&self, broker: BrokerId) -> Vec<ReplicaChange> {
        match self {
            Applied::BrokerRegistered { .. }
            | Applied::BrokerFenced(_)
            | Applied::BrokerUnfenced(_)
            | Applied::BrokerUnregistered(_) => Vec::new(),
            Applied::TopicCreated(t) => replicas_of(t, broker)
                .into_iter()
                .map(ReplicaChange::Create)
                .collect(),
            // The old partitions see the new count in their settings.
            Applied::PartitionsCreated { topic, first } => replicas_of(topic, broker)
                .into_iter()
                .map(|r| {
                    if r.id.partition < *first {
                        ReplicaChange::Reconfigure(r)
                    } else {
                        ReplicaChange::Create(r)
                    }
                })
                .collect(),
            Applied::TopicDeleted(t) => replicas_of(t, broker)
                .into_iter()
                .map(|r| ReplicaChange::Remove(r.id))
                .collect(),
            Applied::TopicAltered { topic, .. } => replicas_of(topic, broker)
                .into_iter()
                .map(ReplicaChange::Reconfigure)
                .collect(),
        }
    }
}
