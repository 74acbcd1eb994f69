//! The coordinator of the groups of one offsets-topic partition.
//!
//! Two kinds of state, with different lifetimes:
//!
//! - **Committed offsets** (durable): changed only by [`Coordinator::apply`]
//!   of [`GroupRecord`]s, which the broker calls after the record is stored
//!   (acks=all) and, on a new coordinator, for every record of the
//!   partition in log order. Same records, same offsets, on any node.
//! - **Membership** (soft): members, epochs, subscriptions and
//!   assignments live only in the coordinator's memory, driven by
//!   [`Coordinator::heartbeat`] and [`Coordinator::expire`]. When the
//!   coordinator moves, the new one knows no members: their next heartbeat
//!   gets `UNKNOWN_MEMBER`, they rejoin (epoch 0) and read from the
//!   committed offsets, which the new coordinator replayed. Nothing is
//!   lost but a rebalance; nothing written to the log depends on members.
//!
//! # The protocol (KIP-848 style)
//!
//! One call, the heartbeat, carries join, leave and progress: the member
//! sends its id (empty to join), its member epoch (0 to join, -1 to leave),
//! subscribed topics and the partitions it owns (has stopped fetching from
//! none of them); the coordinator answers with the id, the member's epoch
//! and the partitions it may own now. Membership, subscription or topic
//! changes bump the **group epoch** and recompute the target assignment
//! with the group's [`Assignor`]. Rebalance is incremental: a partition
//! that moves from A to B is removed from A's assignment at once, but
//! given to B only once no other member has it assigned or reports owning
//! it (A heartbeated without it, or A's session expired). Partitions that
//! do not move are never revoked.
//!
//! A member's epoch becomes the group epoch each time it is answered.
//! Heartbeats and commits carrying the current or the previous epoch (an
//! answer may have been lost) are accepted; older ones are fenced:
//! heartbeats with [`GroupError::FencedMemberEpoch`] (rejoin with epoch 0),
//! commits with [`GroupError::StaleMemberEpoch`]. A member that is gone
//! (left, expired, or the coordinator moved) gets
//! [`GroupError::UnknownMember`].

use std::collections::{BTreeMap, BTreeSet};

use crate::GroupError;
use crate::assignor::{Assignment, Assignor, TopicPartition};
use crate::record::GroupRecord;

/// Shortest session timeout a member may ask for, in ms.
pub const MIN_SESSION_TIMEOUT_MS: u64 = 200;
/// Longest session timeout, in ms.
pub const MAX_SESSION_TIMEOUT_MS: u64 = 600_000;
/// Session timeout when a member asks for none, in ms.
pub const DEFAULT_SESSION_TIMEOUT_MS: u64 = 10_000;
/// The member epoch that joins.
pub const JOIN_EPOCH: i32 = 0;
/// The member epoch that leaves.
pub const LEAVE_EPOCH: i32 = -1;

/// A committed offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The next offset the group reads.
    pub offset: u64,
    /// When it was committed (ms since the Unix epoch).
    pub timestamp: i64,
}

/// What a member sends on each heartbeat.
#[derive(Clone, Debug, Default)]
pub struct Heartbeat {
    /// Its id; empty to join as a new member.
    pub member_id: String,
    /// [`JOIN_EPOCH`], [`LEAVE_EPOCH`], or the epoch it was last given.
    pub member_epoch: i32,
    /// Topics it subscribes to; required on join, `None` keeps them.
    pub subscriptions: Option<BTreeSet<String>>,
    /// Partitions it owns now; `None` keeps what it reported last.
    pub owned: Option<BTreeSet<TopicPartition>>,
    /// Session timeout in ms (0: default); the member is removed when no
    /// heartbeat comes for that long.
    pub session_timeout_ms: u64,
    /// The assignor it wants; the group's first member chooses, later
    /// ones may not change it. `None`: the default (sticky).
    pub assignor: Option<Assignor>,
}

/// The coordinator's answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    /// The member's id (new on join).
    pub member_id: String,
    /// Its epoch (= the group epoch), or [`LEAVE_EPOCH`] after leaving.
    pub member_epoch: i32,
    /// The partitions it may own now: keep fetching these, stop the rest.
    pub assigned: BTreeSet<TopicPartition>,
    /// Send the next heartbeat within this many ms.
    pub heartbeat_interval_ms: u64,
}

/// A group as [`Coordinator::describe`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    /// Group name.
    pub group: String,
    /// `Empty`, `Stable` or `Reconciling` (see [`GroupState`]).
    pub state: GroupState,
    /// The group epoch.
    pub epoch: u32,
    /// The assignor in use.
    pub assignor: Assignor,
    /// Members by id.
    pub members: Vec<MemberDescription>,
    /// Committed offsets.
    pub offsets: BTreeMap<TopicPartition, Committed>,
}

/// A member as [`Coordinator::describe`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// Its epoch.
    pub member_epoch: u32,
    /// Subscribed topics.
    pub subscriptions: BTreeSet<String>,
    /// Partitions assigned to it now.
    pub assigned: BTreeSet<TopicPartition>,
    /// Partitions it still has to get (held by others that must release).
    pub pending: BTreeSet<TopicPartition>,
    /// Its session timeout, ms.
    pub session_timeout_ms: u64,
}

/// A group's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    /// No members (it has committed offsets).
    Empty,
    /// Every member owns exactly its target assignment.
    Stable,
    /// Partitions are moving between members.
    Reconciling,
}

impl GroupState {
    /// The name shown to users.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::Stable => "Stable",
            GroupState::Reconciling => "Reconciling",
        }
    }
}

#[derive(Clone, Debug)]
struct Member {
    epoch: u32,
    previous_epoch: u32,
    subscriptions: BTreeSet<String>,
    assigned: BTreeSet<TopicPartition>,
    owned: BTreeSet<TopicPartition>,
    session_timeout_ms: u64,
    last_seen_ms: u64,
}

#[derive(Clone, Debug, Default)]
struct Group {
    epoch: u32,
    assignor: Assignor,
    members: BTreeMap<String, Member>,
    target: Assignment,
    /// Partition counts of the subscribed topics at the last assignment.
    topics: BTreeMap<String, u32>,
    offsets: BTreeMap<TopicPartition, Committed>,
}

impl Group {
    fn state(&self) -> GroupState {
        if self.members.is_empty() {
            return GroupState::Empty;
        }
        let settled = self.members.iter().all(|(id, m)| {
            let target = self.target.get(id).cloned().unwrap_or_default();
            m.assigned == target && m.owned == target
        });
        if settled {
            GroupState::Stable
        } else {
            GroupState::Reconciling
        }
    }

    /// Recomputes the target assignment if membership, subscriptions or
    /// partition counts changed (`force`, or the counts differ).
    fn refresh(&mut self, force: bool, partitions: &dyn Fn(&str) -> Option<u32>) {
        let topics: BTreeMap<String, u32> = self
            .members
            .values()
            .flat_map(|m| m.subscriptions.iter())
            .filter_map(|t| partitions(t).map(|n| (t.clone(), n)))
            .collect();
        if !force && topics == self.topics {
            return;
        }
        self.topics = topics;
        self.epoch += 1;
        let subscriptions = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.subscriptions.clone()))
            .collect();
        self.target = self
            .assignor
            .assign(&subscriptions, &self.topics, &self.target);
    }

    /// What `id` should be assigned now: what it was told and keeps of its
    /// target, plus every target partition no other member was told it has
    /// or reports owning. (A member's assigned set is what it was last
    /// told, so it is trimmed only here, when the member hears of it.)
    fn reconcile(&mut self, id: &str) -> BTreeSet<TopicPartition> {
        let target = self.target.get(id).cloned().unwrap_or_default();
        let held_elsewhere: BTreeSet<&TopicPartition> = self
            .members
            .iter()
            .filter(|(other, _)| other.as_str() != id)
            .flat_map(|(_, m)| m.assigned.iter().chain(m.owned.iter()))
            .collect();
        let free: BTreeSet<TopicPartition> = target
            .iter()
            .filter(|tp| !held_elsewhere.contains(tp))
            .cloned()
            .collect();
        if let Some(m) = self.members.get_mut(id) {
            m.assigned.retain(|tp| target.contains(tp));
            m.assigned.extend(free);
            m.assigned.clone()
        } else {
            BTreeSet::new()
        }
    }
}

/// The groups coordinated by one partition of the offsets topic. Pure:
/// time comes in as arguments (ms of a monotonic clock for sessions, Unix
/// ms for commit timestamps).
#[derive(Clone, Debug, Default)]
pub struct Coordinator {
    groups: BTreeMap<String, Group>,
    /// Prefix of member ids made here (the broker passes something unique
    /// to this coordinator instance, e.g. node id and start time).
    id_prefix: String,
    next_member: u64,
}

/// The heartbeat interval asked of a member with this session timeout:
/// a fifth of it, between 50 ms and 3 s.
pub fn heartbeat_interval_ms(session_timeout_ms: u64) -> u64 {
    (session_timeout_ms / 5).clamp(50, 3_000)
}

impl Coordinator {
    /// An empty coordinator; new member ids start with `id_prefix`.
    pub fn new(id_prefix: impl Into<String>) -> Self {
        Coordinator {
            id_prefix: id_prefix.into(),
            ..Coordinator::default()
        }
    }

    /// Applies a stored record (after it is stored, or when replaying).
    pub fn apply(&mut self, record: &GroupRecord) {
        match record {
            GroupRecord::OffsetCommit {
                group,
                topic,
                partition,
                offset,
                timestamp,
            } => {
                self.groups
                    .entry(group.clone())
                    .or_default()
                    .offsets
                    .insert(
                        TopicPartition::new(topic.clone(), *partition),
                        Committed {
                            offset: *offset,
                            timestamp: *timestamp,
                        },
                    );
            }
            GroupRecord::GroupDeleted { group } => {
                if let Some(g) = self.groups.get_mut(group) {
                    g.offsets.clear();
                    if g.members.is_empty() {
                        self.groups.remove(group);
                    }
                }
            }
            GroupRecord::Barrier => {}
        }
    }

    /// Handles a heartbeat from a member of `group` at monotonic time
    /// `now_ms`. `partitions` gives a topic's partition count (`None`: no
    /// such topic); the broker checks a joining member's topics exist.
    pub fn heartbeat(
        &mut self,
        group: &str,
        hb: Heartbeat,
        partitions: &dyn Fn(&str) -> Option<u32>,
        now_ms: u64,
    ) -> Result<HeartbeatAnswer, GroupError> {
        let session_timeout_ms = match hb.session_timeout_ms {
            0 => DEFAULT_SESSION_TIMEOUT_MS,
            t if (MIN_SESSION_TIMEOUT_MS..=MAX_SESSION_TIMEOUT_MS).contains(&t) => t,
            t => {
                return Err(GroupError::InvalidArgument(format!(
                    "session_timeout_ms {t} is outside {MIN_SESSION_TIMEOUT_MS}-{MAX_SESSION_TIMEOUT_MS}"
                )));
            }
        };
        let interval = heartbeat_interval_ms(session_timeout_ms);
        match hb.member_epoch {
            LEAVE_EPOCH => {
                let g = self.groups.get_mut(group);
                if let Some(g) = g
                    && g.members.remove(&hb.member_id).is_some()
                {
                    g.refresh(true, partitions);
                }
                return Ok(HeartbeatAnswer {
                    member_id: hb.member_id,
                    member_epoch: LEAVE_EPOCH,
                    assigned: BTreeSet::new(),
                    heartbeat_interval_ms: interval,
                });
            }
            JOIN_EPOCH => {
                let subscriptions = hb.subscriptions.clone().unwrap_or_default();
                if subscriptions.is_empty() {
                    return Err(GroupError::InvalidArgument(
                        "a joining member must subscribe to at least one topic".into(),
                    ));
                }
                let member_id = if hb.member_id.is_empty() {
                    self.next_member += 1;
                    format!("{}-{}", self.id_prefix, self.next_member)
                } else {
                    hb.member_id.clone()
                };
                let g = self.groups.entry(group.to_string()).or_default();
                if g.members.is_empty()
                    && let Some(a) = hb.assignor
                {
                    g.assignor = a;
                }
                // A rejoin under a known id starts over: what it owned
                // before counts as released.
                g.members.insert(
                    member_id.clone(),
                    Member {
                        epoch: 0,
                        previous_epoch: 0,
                        subscriptions,
                        assigned: BTreeSet::new(),
                        owned: hb.owned.clone().unwrap_or_default(),
                        session_timeout_ms,
                        last_seen_ms: now_ms,
                    },
                );
                g.refresh(true, partitions);
                return Ok(answer(g, &member_id, interval));
            }
            epoch if epoch < 0 => {
                return Err(GroupError::InvalidArgument(format!(
                    "member_epoch {epoch}: use 0 to join, -1 to leave, or the epoch last given"
                )));
            }
            _ => {}
        }
        let epoch = hb.member_epoch as u32;
        let Some(g) = self.groups.get_mut(group) else {
            return Err(unknown_member(group, &hb.member_id));
        };
        let Some(m) = g.members.get_mut(&hb.member_id) else {
            return Err(unknown_member(group, &hb.member_id));
        };
        if epoch != m.epoch && epoch != m.previous_epoch {
            return Err(GroupError::FencedMemberEpoch {
                group: group.to_string(),
                member: hb.member_id,
                given: epoch,
                current: m.epoch,
            });
        }
        m.last_seen_ms = now_ms;
        m.session_timeout_ms = session_timeout_ms;
        if let Some(owned) = hb.owned {
            m.owned = owned;
        }
        let mut changed = false;
        if let Some(s) = hb.subscriptions
            && !s.is_empty()
            && s != m.subscriptions
        {
            m.subscriptions = s;
            changed = true;
        }
        g.refresh(changed, partitions);
        Ok(answer(g, &hb.member_id, interval))
    }

    /// Removes members whose session expired at monotonic time `now_ms`
    /// and rebalances their groups; returns `(group, member)` removed.
    pub fn expire(
        &mut self,
        now_ms: u64,
        partitions: &dyn Fn(&str) -> Option<u32>,
    ) -> Vec<(String, String)> {
        let mut removed = Vec::new();
        for (name, g) in &mut self.groups {
            let gone: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| now_ms.saturating_sub(m.last_seen_ms) > m.session_timeout_ms)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &gone {
                g.members.remove(id);
                removed.push((name.clone(), id.clone()));
            }
            if !gone.is_empty() {
                g.refresh(true, partitions);
            }
        }
        removed
    }

    /// Checks that a commit for `group` from `member_id` at `member_epoch`
    /// may be stored. An empty `member_id` (an admin tool, a consumer
    /// outside any group) may commit only while the group has no members.
    pub fn check_commit(
        &self,
        group: &str,
        member_id: &str,
        member_epoch: i32,
    ) -> Result<(), GroupError> {
        let g = self.groups.get(group);
        if member_id.is_empty() {
            return match g {
                Some(g) if !g.members.is_empty() => Err(GroupError::GroupNotEmpty {
                    group: group.to_string(),
                    members: g.members.len(),
                }),
                _ => Ok(()),
            };
        }
        let Some(m) = g.and_then(|g| g.members.get(member_id)) else {
            return Err(unknown_member(group, member_id));
        };
        let epoch = u32::try_from(member_epoch).unwrap_or(u32::MAX);
        if epoch == m.epoch || epoch == m.previous_epoch {
            Ok(())
        } else {
            Err(GroupError::StaleMemberEpoch {
                group: group.to_string(),
                member: member_id.to_string(),
                given: member_epoch,
                current: m.epoch,
            })
        }
    }

    /// Checks that `group` exists and has no members (for delete and
    /// offset resets).
    pub fn check_empty(&self, group: &str) -> Result<(), GroupError> {
        match self.groups.get(group) {
            None => Err(GroupError::UnknownGroup(group.to_string())),
            Some(g) if !g.members.is_empty() => Err(GroupError::GroupNotEmpty {
                group: group.to_string(),
                members: g.members.len(),
            }),
            Some(_) => Ok(()),
        }
    }

    /// The committed offset of `group` in `topic`-`partition`.
    pub fn committed(&self, group: &str, topic: &str, partition: u32) -> Option<Committed> {
        self.groups
            .get(group)?
            .offsets
            .get(&TopicPartition::new(topic, partition))
            .copied()
    }

    /// Every committed offset of `group` (empty for an unknown group).
    pub fn offsets(&self, group: &str) -> BTreeMap<TopicPartition, Committed> {
        self.groups
            .get(group)
            .map(|g| g.offsets.clone())
            .unwrap_or_default()
    }

    /// Whether `group` exists (has members or committed offsets).
    pub fn contains(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// Every group: name, state and member count.
    pub fn list(&self) -> Vec<(String, GroupState, usize)> {
        self.groups
            .iter()
            .map(|(name, g)| (name.clone(), g.state(), g.members.len()))
            .collect()
    }

    /// `group` with its members and offsets, or `None` if it does not exist.
    pub fn describe(&self, group: &str) -> Option<GroupDescription> {
        let g = self.groups.get(group)?;
        Some(GroupDescription {
            group: group.to_string(),
            state: g.state(),
            epoch: g.epoch,
            assignor: g.assignor,
            members: g
                .members
                .iter()
                .map(|(id, m)| {
                    let target = g.target.get(id).cloned().unwrap_or_default();
                    MemberDescription {
                        member_id: id.clone(),
                        member_epoch: m.epoch,
                        subscriptions: m.subscriptions.clone(),
                        pending: target.difference(&m.assigned).cloned().collect(),
                        assigned: m.assigned.clone(),
                        session_timeout_ms: m.session_timeout_ms,
                    }
                })
                .collect(),
            offsets: g.offsets.clone(),
        })
    }
}

fn unknown_member(group: &str, member: &str) -> GroupError {
    GroupError::UnknownMember {
        group: group.to_string(),
        member: member.to_string(),
    }
}

fn answer(g: &mut Group, id: &str, interval: u64) -> HeartbeatAnswer {
    let assigned = g.reconcile(id);
    let epoch = g.epoch;
    if let Some(m) = g.members.get_mut(id)
        && m.epoch != epoch
    {
        m.previous_epoch = m.epoch;
        m.epoch = epoch;
    }
    HeartbeatAnswer {
        member_id: id.to_string(),
        member_epoch: i32::try_from(epoch).unwrap_or(i32::MAX),
        assigned,
        heartbeat_interval_ms: interval,
    }
}

#[cfg(test)]
mod tests;
