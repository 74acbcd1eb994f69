//! The cluster metadata and the deterministic [`ClusterState::apply`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::BrokerId;
use crate::command::Command;
use crate::error::{ClusterError, DecodeError};
use crate::feed::{self, Applied, ReplicaChange, ReplicaId, ReplicaSpec};
use crate::format;
use crate::leadership::{self, LeaderMove, PartitionKey};
use crate::placement::{self, BrokerLoad};
use crate::settings::{MAX_PARTITIONS, TopicSettings, validate_topic_name};

/// Format version of the snapshots this code writes (and the newest it
/// reads).
pub const SNAPSHOT_VERSION: u32 = 1;

/// Longest broker address, in bytes.
pub const MAX_ADDRESS_LEN: usize = 1024;
/// Longest rack name, in bytes.
pub const MAX_RACK_LEN: usize = 255;

/// A registered broker.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    /// Broker id, at least 1.
    pub id: BrokerId,
    /// Address clients and peers use (host:port).
    pub address: String,
    /// Failure domain; replicas of a partition prefer distinct racks.
    pub rack: Option<String>,
    /// Fenced brokers get no new replicas and lead nothing after
    /// [`ClusterState::leader_moves`]; their replicas stay.
    pub fenced: bool,
}

/// A topic's identity: the Raft index of the command that created it.
///
/// Unlike the name it is never reused, so a broker can tell a recreated
/// topic from the one it replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TopicId(pub u64);

/// Raft group id of the controller group. Partition groups are numbered
/// from [`GROUPS_PER_TOPIC`] up ([`Topic::group`]).
pub const CONTROLLER_GROUP: u64 = 0;
/// Group ids reserved per topic: partition `p` of topic id `t` is group
/// `t * GROUPS_PER_TOPIC + p` (room for more than [`MAX_PARTITIONS`]).
pub const GROUPS_PER_TOPIC: u64 = 1 << 14;
/// Largest topic id (creation index) whose group ids fit in a u64; a
/// create at a higher Raft index is refused.
pub const MAX_TOPIC_ID: u64 = u64::MAX / GROUPS_PER_TOPIC - 1;

const _: () = assert!((MAX_PARTITIONS as u64) < GROUPS_PER_TOPIC);

/// Group id of a partition; `partition < GROUPS_PER_TOPIC` and
/// `topic <= MAX_TOPIC_ID`, which the state guarantees.
pub(crate) fn group_id(topic: TopicId, partition: u32) -> u64 {
    topic.0 * GROUPS_PER_TOPIC + u64::from(partition)
}

/// Where one partition's replicas live.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionAssignment {
    /// Distinct broker ids, `replication_factor` of them; the first is the
    /// preferred leader.
    pub replicas: Vec<BrokerId>,
    /// When the partition was created (ms since the Unix epoch, the
    /// proposer's clock): the timestamp of the bootstrap entry every
    /// replica of its Raft group writes identically.
    pub created_ms: i64,
}

impl PartitionAssignment {
    /// The preferred leader (the first replica).
    ///
    /// Panics on an empty list, which the state never holds.
    pub fn preferred_leader(&self) -> BrokerId {
        match self.replicas.first() {
            Some(id) => *id,
            None => panic!("a partition assignment without replicas"),
        }
    }
}

/// A topic: its settings and where each partition lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topic {
    /// Never-reused identity.
    pub id: TopicId,
    /// Topic name.
    pub name: String,
    /// Effective settings; `settings.partitions == partitions.len()`.
    pub settings: TopicSettings,
    /// Assignment of each partition, by partition id.
    pub partitions: Vec<PartitionAssignment>,
}

impl Topic {
    /// Raft group id of `partition`, when the topic has it. Never
    /// [`CONTROLLER_GROUP`], never reused by another topic or partition.
    pub fn group(&self, partition: u32) -> Option<u64> {
        ((partition as usize) < self.partitions.len()).then(|| group_id(self.id, partition))
    }
}

/// The controller's state: brokers, topics, settings, assignments.
///
/// Changed only by [`ClusterState::apply`], which is deterministic: the
/// same commands at the same indexes give the same state and results on
/// every node. No I/O, no clock, no randomness; `Send + Sync`, not
/// internally locked.
///
/// Invariants (checked on restore, [`ClusterState::check_invariants`]):
/// every partition has exactly `replication_factor` distinct replicas, all
/// registered brokers; settings are valid; topic names are valid and
/// unique; topic ids are unique, at most `applied_index` and at most
/// [`MAX_TOPIC_ID`]; `metadata_version <= applied_index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    applied_index: u64,
    metadata_version: u64,
    brokers: BTreeMap<BrokerId, Broker>,
    topics: BTreeMap<String, Topic>,
}

/// The snapshot body, format version 1.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateV1 {
    applied_index: u64,
    metadata_version: u64,
    brokers: Vec<Broker>,
    topics: Vec<Topic>,
}

impl ClusterState {
    /// An empty cluster: no brokers, no topics, nothing applied.
    pub fn new() -> Self {
        ClusterState::default()
    }

    /// The Raft index of the last entry passed to [`ClusterState::apply`],
    /// refused or not (0 before any). A snapshot taken now covers every
    /// entry up to it.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The Raft index of the last command that was applied without error:
    /// the metadata changes only when it moves, so brokers and clients
    /// compare it to know whether their copy is current. 0 before any.
    pub fn metadata_version(&self) -> u64 {
        self.metadata_version
    }

    /// Every registered broker, by id.
    pub fn brokers(&self) -> &BTreeMap<BrokerId, Broker> {
        &self.brokers
    }

    /// Every topic, by name.
    pub fn topics(&self) -> &BTreeMap<String, Topic> {
        &self.topics
    }

    /// The topic named `name`.
    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.get(name)
    }

    /// Replicas and preferred leaders per registered broker (0 for one
    /// holding none), summed over all topics.
    pub fn broker_load(&self) -> BTreeMap<BrokerId, BrokerLoad> {
        let mut load: BTreeMap<BrokerId, BrokerLoad> = self
            .brokers
            .keys()
            .map(|id| (*id, BrokerLoad::default()))
            .collect();
        for a in self.topics.values().flat_map(|t| &t.partitions) {
            for (k, id) in a.replicas.iter().enumerate() {
                let l = load.entry(*id).or_default();
                l.replicas += 1;
                if k == 0 {
                    l.preferred_leaders += 1;
                }
            }
        }
        load
    }

    /// Applies the committed entry at Raft `index` (above every index
    /// applied before).
    ///
    /// On success the state changed and `metadata_version` is `index`. A
    /// refusal ([`ClusterError`]) is as deterministic as a success and
    /// changes no metadata; only `applied_index` moves to `index`, so
    /// entries are consumed exactly once either way. An index not above
    /// `applied_index` is refused with [`ClusterError::StaleIndex`] and
    /// changes nothing at all.
    pub fn apply(&mut self, index: u64, command: &Command) -> Result<Applied, ClusterError> {
        if index <= self.applied_index {
            return Err(ClusterError::StaleIndex {
                index,
                applied: self.applied_index,
            });
        }
        self.applied_index = index;
        let applied = self.execute(index, command)?;
        self.metadata_version = index;
        Ok(applied)
    }

    /// What applying `command` next would do, without changing anything:
    /// the same answer [`ClusterState::apply`] gives if nothing is applied
    /// in between. A node calls it before proposing, to refuse at once
    /// what would be refused (the answer that counts is still the one of
    /// `apply`: another entry may land first). Costs a copy of the state.
    pub fn check(&self, command: &Command) -> Result<Applied, ClusterError> {
        let next = self.applied_index.saturating_add(1);
        self.clone().execute(next, command)
    }

    /// Validates `command` fully, then changes the state: an `Err` leaves
    /// it untouched.
    fn execute(&mut self, index: u64, command: &Command) -> Result<Applied, ClusterError> {
        match command {
            Command::RegisterBroker { id, address, rack } => {
                validate_broker(*id, address, rack.as_deref())?;
                let previous = self.brokers.get(id).cloned();
                let broker = Broker {
                    id: *id,
                    address: address.clone(),
                    rack: rack.clone(),
                    fenced: previous.as_ref().is_some_and(|b| b.fenced),
                };
                self.brokers.insert(*id, broker.clone());
                Ok(Applied::BrokerRegistered { broker, previous })
            }
            Command::FenceBroker { id } => {
                self.broker_mut(*id)?.fenced = true;
                Ok(Applied::BrokerFenced(*id))
            }
            Command::UnfenceBroker { id } => {
                self.broker_mut(*id)?.fenced = false;
                Ok(Applied::BrokerUnfenced(*id))
            }
            Command::UnregisterBroker { id } => {
                if !self.brokers.contains_key(id) {
                    return Err(ClusterError::UnknownBroker(*id));
                }
                let replicas = self.broker_load().get(id).map_or(0, |l| l.replicas);
                if replicas > 0 {
                    return Err(ClusterError::BrokerInUse { id: *id, replicas });
                }
                self.brokers
                    .remove(id)
                    .map(Applied::BrokerUnregistered)
                    .ok_or(ClusterError::UnknownBroker(*id))
            }
            Command::CreateTopic {
                name,
                settings,
                created_ms,
            } => {
                validate_topic_name(name)?;
                settings.validate()?;
                if self.topics.contains_key(name) {
                    return Err(ClusterError::TopicExists(name.clone()));
                }
                if index > MAX_TOPIC_ID {
                    return Err(ClusterError::InvalidArgument(format!(
                        "Raft index {index} is above {MAX_TOPIC_ID}, the largest topic id"
                    )));
                }
                let id = TopicId(index);
                let partitions = self.place(
                    0..settings.partitions,
                    settings.replication_factor,
                    id,
                    *created_ms,
                )?;
                let topic = Topic {
                    id,
                    name: name.clone(),
                    settings: settings.clone(),
                    partitions,
                };
                self.topics.insert(name.clone(), topic.clone());
                Ok(Applied::TopicCreated(topic))
            }
            Command::DeleteTopic { name } => self
                .topics
                .remove(name)
                .map(Applied::TopicDeleted)
                .ok_or_else(|| unknown_topic(name)),
            Command::AlterTopicConfig { name, change } => {
                let topic = self.topics.get(name).ok_or_else(|| unknown_topic(name))?;
                let settings = change.applied_to(&topic.settings)?;
                let previous = topic.settings.clone();
                let topic = self.topic_mut(name)?;
                topic.settings = settings;
                Ok(Applied::TopicAltered {
                    topic: topic.clone(),
                    previous,
                })
            }
            Command::CreatePartitions {
                name,
                partitions,
                created_ms,
            } => {
                let topic = self.topics.get(name).ok_or_else(|| unknown_topic(name))?;
                let first = topic.settings.partitions;
                if *partitions <= first || *partitions > MAX_PARTITIONS {
                    return Err(ClusterError::InvalidArgument(format!(
                        "partitions can only grow, up to {MAX_PARTITIONS}: topic {name:?} has {first}, asked for {partitions}"
                    )));
                }
                let (rf, id) = (topic.settings.replication_factor, topic.id);
                let added = self.place(first..*partitions, rf, id, *created_ms)?;
                let topic = self.topic_mut(name)?;
                topic.partitions.extend(added);
                topic.settings.partitions = *partitions;
                Ok(Applied::PartitionsCreated {
                    topic: topic.clone(),
                    first,
                })
            }
        }
    }

    /// Placement of `partitions` over the unfenced brokers, or
    /// NotEnoughBrokers. Changes nothing.
    fn place(
        &self,
        partitions: std::ops::Range<u32>,
        replication_factor: u32,
        seed: TopicId,
        created_ms: i64,
    ) -> Result<Vec<PartitionAssignment>, ClusterError> {
        let eligible: Vec<&Broker> = self.brokers.values().filter(|b| !b.fenced).collect();
        if replication_factor == 0 || replication_factor as usize > eligible.len() {
            return Err(ClusterError::NotEnoughBrokers {
                replication_factor,
                available: eligible.len() as u32,
            });
        }
        let mut load = self.broker_load();
        let lists = placement::place(&eligible, &mut load, partitions, replication_factor, seed.0);
        Ok(lists
            .into_iter()
            .map(|replicas| PartitionAssignment {
                replicas,
                created_ms,
            })
            .collect())
    }

    fn broker_mut(&mut self, id: BrokerId) -> Result<&mut Broker, ClusterError> {
        self.brokers
            .get_mut(&id)
            .ok_or(ClusterError::UnknownBroker(id))
    }

    fn topic_mut(&mut self, name: &str) -> Result<&mut Topic, ClusterError> {
        self.topics.get_mut(name).ok_or_else(|| unknown_topic(name))
    }

    /// Every replica placed on `broker`, by topic name and partition: what
    /// its disk should hold.
    pub fn replicas_on(&self, broker: BrokerId) -> Vec<ReplicaSpec> {
        self.topics
            .values()
            .flat_map(|t| feed::replicas_of(t, broker))
            .collect()
    }

    /// What `broker` must do so that the replicas it holds (`present`, with
    /// the settings each runs with) match the state: at startup, and after
    /// installing a snapshot, whose commands it never saw as [`Applied`].
    ///
    /// Removes come first (a replica of an older topic of the same name,
    /// told apart by its [`TopicId`], goes before the new one is created),
    /// then creates and reconfigures, each by topic name and partition.
    pub fn reconcile(
        &self,
        broker: BrokerId,
        present: &BTreeMap<ReplicaId, TopicSettings>,
    ) -> Vec<ReplicaChange> {
        let wanted = self.replicas_on(broker);
        let wanted_ids: BTreeSet<&ReplicaId> = wanted.iter().map(|r| &r.id).collect();
        let mut changes: Vec<ReplicaChange> = present
            .keys()
            .filter(|id| !wanted_ids.contains(id))
            .map(|id| ReplicaChange::Remove(id.clone()))
            .collect();
        for spec in wanted {
            match present.get(&spec.id) {
                None => changes.push(ReplicaChange::Create(spec)),
                Some(settings) if *settings != spec.settings => {
                    changes.push(ReplicaChange::Reconfigure(spec))
                }
                Some(_) => {}
            }
        }
        changes
    }

    /// The leadership transfers that balance leadership, given the current
    /// leader of each partition (partitions missing from `leaders` have
    /// none and are skipped: electing one is Raft's job), ordered by
    /// partition. The rules are in the crate docs, "Leadership".
    pub fn leader_moves(&self, leaders: &BTreeMap<PartitionKey, BrokerId>) -> Vec<LeaderMove> {
        leadership::leader_moves(self, leaders)
    }

    /// The whole state as snapshot bytes (JSON in a versioned envelope,
    /// like commands: `{"version":1,"body":{...}}`), for Raft snapshots of
    /// the controller group. The Raft snapshot index is `applied_index`.
    pub fn to_snapshot(&self) -> Vec<u8> {
        let body = StateV1 {
            applied_index: self.applied_index,
            metadata_version: self.metadata_version,
            brokers: self.brokers.values().cloned().collect(),
            topics: self.topics.values().cloned().collect(),
        };
        format::encode("snapshot", SNAPSHOT_VERSION, &body)
    }

    /// Restores a state from [`ClusterState::to_snapshot`] bytes of this or
    /// an older version, checking every invariant. Never panics on any
    /// input.
    pub fn from_snapshot(bytes: &[u8]) -> Result<ClusterState, DecodeError> {
        let (_version, body): (u32, StateV1) = format::decode("snapshot", SNAPSHOT_VERSION, bytes)?;
        let corrupt = |reason: String| DecodeError::Corrupt {
            what: "snapshot",
            reason,
        };
        let mut state = ClusterState {
            applied_index: body.applied_index,
            metadata_version: body.metadata_version,
            ..ClusterState::default()
        };
        for b in body.brokers {
            let id = b.id;
            if state.brokers.insert(id, b).is_some() {
                return Err(corrupt(format!("broker {id} appears twice")));
            }
        }
        for t in body.topics {
            let name = t.name.clone();
            if state.topics.insert(name.clone(), t).is_some() {
                return Err(corrupt(format!("topic {name:?} appears twice")));
            }
        }
        state.check_invariants().map_err(corrupt)?;
        Ok(state)
    }

    /// Checks every invariant listed on [`ClusterState`], saying which one
    /// is broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.metadata_version > self.applied_index {
            return Err(format!(
                "metadata_version {} is above applied_index {}",
                self.metadata_version, self.applied_index
            ));
        }
        for (id, b) in &self.brokers {
            if *id != b.id {
                return Err(format!("broker {} is filed under id {id}", b.id));
            }
            validate_broker(b.id, &b.address, b.rack.as_deref()).map_err(|e| e.to_string())?;
        }
        let mut ids = BTreeSet::new();
        for (name, t) in &self.topics {
            let what = |m: String| format!("topic {name:?}: {m}");
            if *name != t.name {
                return Err(what(format!("filed under the name of {:?}", t.name)));
            }
            validate_topic_name(name).map_err(|e| e.to_string())?;
            t.settings.validate().map_err(|e| what(e.to_string()))?;
            if t.id.0 == 0
                || t.id.0 > self.applied_index
                || t.id.0 > MAX_TOPIC_ID
                || !ids.insert(t.id)
            {
                return Err(what(format!(
                    "id {} is 0, above applied_index {}, above {MAX_TOPIC_ID} or not unique",
                    t.id.0, self.applied_index
                )));
            }
            if t.partitions.len() != t.settings.partitions as usize {
                return Err(what(format!(
                    "{} assignments for {} partitions",
                    t.partitions.len(),
                    t.settings.partitions
                )));
            }
            for (p, a) in t.partitions.iter().enumerate() {
                let distinct: BTreeSet<_> = a.replicas.iter().collect();
                if a.replicas.len() != t.settings.replication_factor as usize
                    || distinct.len() != a.replicas.len()
                {
                    return Err(what(format!(
                        "partition {p} has replicas {:?}, not {} distinct ones",
                        a.replicas, t.settings.replication_factor
                    )));
                }
                if let Some(id) = a.replicas.iter().find(|id| !self.brokers.contains_key(id)) {
                    return Err(what(format!(
                        "partition {p} has a replica on unregistered broker {id}"
                    )));
                }
            }
        }
        Ok(())
    }
}

fn unknown_topic(name: &str) -> ClusterError {
    ClusterError::UnknownTopic(name.chars().take(300).collect())
}

fn validate_broker(id: BrokerId, address: &str, rack: Option<&str>) -> Result<(), ClusterError> {
    if id == 0 {
        return Err(ClusterError::InvalidArgument(
            "broker id must be at least 1 (0 means \"no leader\" in the API)".into(),
        ));
    }
    if address.is_empty() || address.len() > MAX_ADDRESS_LEN {
        return Err(ClusterError::InvalidArgument(format!(
            "broker {id}: address must be 1-{MAX_ADDRESS_LEN} bytes, got {}",
            address.len()
        )));
    }
    match rack {
        Some(r) if r.is_empty() || r.len() > MAX_RACK_LEN => {
            Err(ClusterError::InvalidArgument(format!(
                "broker {id}: rack must be 1-{MAX_RACK_LEN} bytes when set, got {}",
                r.len()
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
