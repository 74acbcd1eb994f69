//! The sans-IO multi-Raft node core: every partition group of one node.
//!
//! The broker's event loop and the simulation drive the same [`Node`]:
//! feed it time ([`Node::tick`]), messages ([`Node::step`]) and proposals
//! ([`Node::propose`]), then call [`Node::ready`] and carry out its
//! [`Output`]: send the messages (one batch per destination node), report
//! snapshot sends, answer the completed proposals, publish the high
//! watermarks. The node does the storage writes and fsyncs itself (the log
//! is synchronous), spawns nothing and reads no clock.

use std::collections::BTreeMap;
use std::sync::Arc;

use raft::eraftpb::{ConfChange, ConfChangeV2, EntryType, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole};
use runnel_batch::VerifiedBatch;
use runnel_storage::{AppendInfo, Log};

use crate::entry::check_received;
use crate::error::{ProposalError, ProposeError, RaftError};
use crate::storage::{Bootstrap, LogStorage, SnapshotData};

/// A node's id in the cluster (non-zero).
pub type NodeId = u64;

/// A Raft group's id: one per partition (the broker maps (topic,
/// partition) to it through the cluster metadata).
pub type GroupId = u64;

/// A Raft message with the group it belongs to (trap 21: `eraftpb::Message`
/// carries no group id).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupMessage {
    /// The group.
    pub group: GroupId,
    /// The message; `msg.to` is the destination node.
    pub msg: Message,
}

/// When a proposal is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// Once the leader appended it to its own log (Kafka `acks=1`).
    Leader,
    /// Once a quorum has it: committed (Kafka `acks=all`).
    Quorum,
}

/// Names one accepted proposal in the [`Completion`] that ends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// The end of a proposal: where it went, or why it did not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The group proposed to.
    pub group: GroupId,
    /// The ticket [`Node::propose`] returned.
    pub ticket: Ticket,
    /// The batch's offsets and Raft position, or the failure.
    pub result: Result<AppendInfo, ProposalError>,
}

/// A node's role in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Leads the group: takes proposals, serves reads below the HWM.
    Leader,
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for votes.
    Candidate,
    /// Asking whether it could win a vote (pre-vote).
    PreCandidate,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Role {
        match r {
            StateRole::Leader => Role::Leader,
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
        }
    }
}

/// A change of role, term or known leader in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderChange {
    /// The group.
    pub group: GroupId,
    /// Current term.
    pub term: u64,
    /// The leader this node knows of, if any.
    pub leader: Option<NodeId>,
    /// This node's role.
    pub role: Role,
}

/// What the driver must carry out after [`Node::ready`].
#[derive(Debug, Default)]
pub struct Output {
    /// Messages per destination node, in the order they must be sent,
    /// coalesced: one entry per node. Everything here may be sent at once:
    /// the writes they depend on are already durable (trap 8).
    pub messages: Vec<(NodeId, Vec<GroupMessage>)>,
    /// `(group, to)` for each `MsgSnapshot` in `messages`: after sending,
    /// call [`Node::report_snapshot`] with the outcome (trap 17).
    pub snapshots: Vec<(GroupId, NodeId)>,
    /// Proposals that ended, successfully or not.
    pub completions: Vec<Completion>,
    /// `(group, high watermark)` for each group whose HWM moved (up).
    pub high_watermarks: Vec<(GroupId, u64)>,
    /// Groups whose role, term or leader changed.
    pub leadership: Vec<LeaderChange>,
    /// Groups that failed (a storage error) and were closed; their pending
    /// proposals are in `completions`. Reopen them to recover.
    pub failed: Vec<(GroupId, String)>,
}

impl Output {
    /// True if there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.completions.is_empty()
            && self.high_watermarks.is_empty()
            && self.leadership.is_empty()
            && self.failed.is_empty()
    }
}

/// Settings of the node core; `Default` gives production values for a
/// 100 ms tick.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// Ticks without a leader's message before a follower campaigns; the
    /// timeout is drawn from `[election_tick, 2 * election_tick)`. Default 10.
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats. Default 2.
    pub heartbeat_tick: usize,
    /// Most bytes of entries in one append message. Default 1 MiB.
    pub max_size_per_msg: u64,
    /// Most append messages in flight per follower. Default 256.
    pub max_inflight_msgs: usize,
    /// Most bytes of uncommitted entries a leader takes before proposals
    /// are refused with [`ProposeError::Retry`]. Default 64 MiB.
    pub max_uncommitted_size: u64,
    /// Seed of the election-timeout randomization. raft-rs draws it from a
    /// thread RNG; the node overrides every draw with its own generator so
    /// that runs replay exactly. Give each node a different seed in
    /// production (the node id is mixed in as well).
    pub seed: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            election_tick: 10,
            heartbeat_tick: 2,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_uncommitted_size: 64 << 20,
            seed: 0,
        }
    }
}

impl NodeConfig {
    fn raft_config(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.election_tick,
            heartbeat_tick: self.heartbeat_tick,
            applied,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            // Trap 22: a partitioned node must not disrupt the cluster when
            // it comes back (pre-vote), and a leader cut off from a quorum
            // must step down (check-quorum).
            check_quorum: true,
            pre_vote: true,
            max_uncommitted_size: self.max_uncommitted_size,
            ..Default::default()
        }
    }
}

/// A Raft replica's view of one follower (the leader's progress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The node.
    pub node: NodeId,
    /// Highest Raft index known to be on it.
    pub matched: u64,
    /// In the in-sync set: recently heard from and replicating as a
    /// stream (Raft's `Replicate` state), or the leader itself.
    pub in_sync: bool,
}

/// A snapshot of one group's state on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    /// The group.
    pub group: GroupId,
    /// This node's role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: u64,
    /// On a leader: an entry of its own term is committed, so its commit
    /// index (and HWM) covers everything any earlier leader committed.
    /// Until then a new leader's HWM may be below what the old one served.
    pub committed_in_term: bool,
    /// High watermark: the end offset of the entry at the applied (=
    /// commit) index. Consumers read below it.
    pub high_watermark: u64,
    /// First stored Raft index.
    pub first_index: u64,
    /// Last stored Raft index.
    pub last_index: u64,
    /// Voters of the group.
    pub voters: Vec<NodeId>,
    /// Per-voter progress (filled on the leader only).
    pub replicas: Vec<ReplicaStatus>,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    term: u64,
    ticket: Ticket,
    acks: Acks,
}

/// A group's Ready between its writes (phase 1) and its advance (phase 3).
struct InFlight {
    rd: raft::Ready,
    /// acks=leader proposals decided by this Ready's append.
    leader_acks: Vec<(Ticket, Result<AppendInfo, ProposalError>)>,
}

/// Most threads one Ready round uses to fsync its groups' files.
const SYNC_THREADS: usize = 8;

/// Makes the writes of every Ready that needs it durable: each group's log,
/// then its state record. The groups' files are independent, so with more
/// than one group to sync they are fsynced from up to [`SYNC_THREADS`]
/// scoped threads at once instead of one after the other: a node that
/// follows many partitions otherwise pays the sum of their fsync times
/// before any of them may answer the leader (every persisted message
/// waits for the whole phase). Results come back in the order of `flights`.
fn sync_groups(flights: &mut [(GroupId, Group, InFlight)]) -> Vec<Result<(), RaftError>> {
    fn sync_one(g: &mut Group) -> Result<(), RaftError> {
        g.raw
            .mut_store()
            .sync_log()
            .and_then(|()| g.raw.mut_store().persist(true))
    }
    let mut results: Vec<Result<(), RaftError>> = flights.iter().map(|_| Ok(())).collect();
    let mut jobs: Vec<(&mut Result<(), RaftError>, &mut Group)> = results
        .iter_mut()
        .zip(flights.iter_mut())
        .filter(|(_, (_, _, flight))| flight.rd.must_sync())
        .map(|(r, (_, g, _))| (r, g))
        .collect();
    if jobs.len() <= 1 {
        for (r, g) in jobs {
            *r = sync_one(g);
        }
        return results;
    }
    let per_thread = jobs.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        for chunk in jobs.chunks_mut(per_thread) {
            scope.spawn(move || {
                for (r, g) in chunk {
                    **r = sync_one(g);
                }
            });
        }
    });
    results
}

struct Group {
    raw: RawNode<LogStorage>,
    /// Accepted proposals by Raft index (trap 20).
    pending: BTreeMap<u64, Pending>,
    hwm: u64,
    /// Last reported (role, term, leader).
    reported: (StateRole, u64, u64),
    /// (role, term) when the election timeout was last drawn, and the draw.
    timeout_key: (StateRole, u64),
    timeout: usize,
    /// The group's tick count (see [`Node::tick`]).
    ticks: u64,
    /// Tick at which each peer's last message for this group arrived: the
    /// in-sync set counts a follower heard within an election timeout.
    /// (raft-rs's own `recent_active` is cleared at every check-quorum
    /// round, so a set built on it would drop every follower for up to a
    /// heartbeat interval once per election timeout.)
    heard: BTreeMap<NodeId, u64>,
}

/// SplitMix64: a small, well-known deterministic generator.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// All Raft groups of one node, driven from one loop.
///
/// Not thread-safe by design (`&mut self` everywhere): one event loop owns
/// it. Readers of partition data use the groups' [`Log`]s, which are
/// shared ([`Node::log`]).
pub struct Node {
    config: NodeConfig,
    logger: slog::Logger,
    groups: BTreeMap<GroupId, Group>,
    rng: SplitMix64,
    now_ms: i64,
    next_ticket: u64,
    /// Completions decided outside `ready` (closed groups), handed out by the next `ready`.
    carried: Vec<Completion>,
    /// Test hook: the next `ready` stops after sending early messages,
    /// before any fsync (the simulation then crashes the node).
    #[cfg(test)]
    pub(crate) crash_before_sync: bool,
    /// Test hook: set when `crash_before_sync` fired.
    #[cfg(test)]
    pub(crate) stopped_before_sync: bool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.config.id)
            .field("groups", &self.groups.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node with no groups. Checks the configuration (trap 22:
    /// `Config::validate`, non-zero id).
    pub fn new(config: NodeConfig) -> Result<Node, RaftError> {
        config.raft_config(0).validate()?;
        let rng = SplitMix64::new(config.seed ^ config.id.wrapping_mul(0xA24B_AED4_963E_E407));
        let logger = crate::logger::root().new(slog::o!("node" => config.id));
        Ok(Node {
            config,
            logger,
            groups: BTreeMap::new(),
            rng,
            now_ms: 0,
            next_ticket: 1,
            carried: Vec::new(),
            #[cfg(test)]
            crash_before_sync: false,
            #[cfg(test)]
            stopped_before_sync: false,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The ids of the open groups.
    pub fn groups(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    /// Opens a group over its partition log: recovers it, or bootstraps it
    /// if the log is new. Every replica of a group must be opened with the
    /// same `bootstrap` (trap 14); it is ignored when the group has state.
    pub fn open_group(
        &mut self,
        group: GroupId,
        log: Arc<Log>,
        bootstrap: &Bootstrap,
    ) -> Result<GroupStatus, RaftError> {
        if self.groups.contains_key(&group) {
            return Err(RaftError::GroupExists(group));
        }
        let store = LogStorage::open(log, bootstrap)?;
        // Trap 12: raft must not hand back entries already applied.
        let config = self.config.raft_config(store.applied());
        config.validate()?;
        let hwm = store.end_offset(store.applied()).unwrap_or(0);
        let logger = self.logger.new(slog::o!("group" => group));
        let raw = RawNode::new(&config, store, &logger)?;
        let mut g = Group {
            reported: (raw.raft.state, raw.raft.term, raw.raft.leader_id),
            raw,
            pending: BTreeMap::new(),
            hwm,
            timeout_key: (StateRole::Follower, u64::MAX),
            timeout: 0,
            ticks: 0,
            heard: BTreeMap::new(),
        };
        self.fix_election_timeout(&mut g);
        self.groups.insert(group, g);
        self.status(group).ok_or(RaftError::UnknownGroup(group))
    }

    /// Closes a group: its pending proposals end with
    /// [`ProposalError::Unknown`] in the next [`Output`]. Returns its log.
    pub fn close_group(&mut self, group: GroupId) -> Result<Arc<Log>, RaftError> {
        let g = self
            .groups
            .remove(&group)
            .ok_or(RaftError::UnknownGroup(group))?;
        let log = Arc::clone(g.raw.store().log());
        self.carried
            .extend(Self::fail_all(group, g, "group closed"));
        Ok(log)
    }

    fn fail_all(group: GroupId, g: Group, reason: &'static str) -> Vec<Completion> {
        g.pending
            .into_values()
            .map(|p| Completion {
                group,
                ticket: p.ticket,
                result: Err(ProposalError::Unknown { reason }),
            })
            .collect()
    }

    /// The partition log of a group.
    pub fn log(&self, group: GroupId) -> Option<&Arc<Log>> {
        self.groups.get(&group).map(|g| g.raw.store().log())
    }

    /// Advances every group's logical clock by one tick; `now_ms` is the
    /// driver's clock, used only as the timestamp of control batches.
    pub fn tick(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
        let mut groups = std::mem::take(&mut self.groups);
        for g in groups.values_mut() {
            g.raw.tick();
            g.ticks += 1;
            self.fix_election_timeout(g);
        }
        self.groups = groups;
    }

    /// Feeds messages received from node `from`. Messages for groups not
    /// open here are returned (the broker may be missing an assignment);
    /// invalid ones (wrong sender or recipient, proposals, local message
    /// types, entries that are not valid batches, unknown peers) are
    /// dropped with a warning.
    pub fn step(&mut self, from: NodeId, messages: Vec<GroupMessage>) -> Vec<GroupId> {
        let mut unknown = Vec::new();
        let mut groups = std::mem::take(&mut self.groups);
        for GroupMessage { group, msg } in messages {
            let Some(g) = groups.get_mut(&group) else {
                if !unknown.contains(&group) {
                    unknown.push(group);
                }
                continue;
            };
            if let Err(reason) = self.check_message(from, &msg) {
                tracing::warn!(node = self.config.id, group, from, %reason, "dropping an invalid raft message");
                continue;
            }
            g.heard.insert(from, g.ticks);
            if let Err(e) = g.raw.step(msg) {
                tracing::debug!(node = self.config.id, group, from, error = %e, "raft refused a message");
            }
            self.fix_election_timeout(g);
        }
        self.groups = groups;
        unknown
    }

    fn check_message(&self, from: NodeId, msg: &Message) -> Result<(), String> {
        if msg.from != from || msg.to != self.config.id {
            return Err(format!(
                "message from {} to {} arrived from node {from} at node {}",
                msg.from, msg.to, self.config.id
            ));
        }
        match msg.get_msg_type() {
            // Trap 20: followers never forward proposals here (raft-rs 0.7
            // has no `disable_proposal_forwarding`; we only propose on the
            // leader), so a proposal from the network is refused.
            MessageType::MsgPropose => return Err("a proposal from the network".into()),
            MessageType::MsgAppend => {
                for e in msg.get_entries() {
                    check_received(e).map_err(|r| format!("entry {}: {r}", e.index))?;
                }
            }
            MessageType::MsgSnapshot => {
                SnapshotData::decode(&msg.get_snapshot().data)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Proposes a batch to a group this node leads. The batch is stored as
    /// given (its bytes are shared, not copied). The returned ticket ends in
    /// a [`Completion`] from a later [`Node::ready`]: with [`Acks::Leader`]
    /// once the batch is durable in this node's log, with [`Acks::Quorum`]
    /// once it is committed — or with an error if another entry takes its
    /// place (trap 20).
    pub fn propose(
        &mut self,
        group: GroupId,
        batch: VerifiedBatch,
        acks: Acks,
    ) -> Result<Ticket, ProposeError> {
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(ProposeError::UnknownGroup(group))?;
        let raft = &g.raw.raft;
        if raft.state != StateRole::Leader {
            let leader = (raft.leader_id != 0).then_some(raft.leader_id);
            return Err(ProposeError::NotLeader { group, leader });
        }
        if raft.lead_transferee.is_some() {
            return Err(ProposeError::Retry {
                group,
                reason: "leadership transfer in progress",
            });
        }
        if batch.view().is_control() {
            return Err(ProposeError::Invalid {
                group,
                reason: "control batches are written by the replication layer only",
            });
        }
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgPropose);
        msg.from = self.config.id;
        let entry = raft::eraftpb::Entry {
            data: batch.bytes().clone(),
            ..Default::default()
        };
        msg.mut_entries().push(entry);
        // Trap 19: ProposalDropped is expected (uncommitted limit, transfer).
        if let Err(e) = g.raw.step(msg) {
            tracing::debug!(node = self.config.id, group, error = %e, "proposal dropped");
            return Err(ProposeError::Retry {
                group,
                reason: "proposal dropped (too much uncommitted data)",
            });
        }
        let index = g.raw.raft.raft_log.last_index();
        let term = g.raw.raft.term;
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        g.pending.insert(index, Pending { term, ticket, acks });
        Ok(ticket)
    }

    /// Asks this node to campaign for leadership of a group now.
    pub fn campaign(&mut self, group: GroupId) -> Result<(), RaftError> {
        let mut groups = std::mem::take(&mut self.groups);
        let result = match groups.get_mut(&group) {
            Some(g) => {
                let r = g.raw.campaign().map_err(RaftError::from);
                self.fix_election_timeout(g);
                r
            }
            None => Err(RaftError::UnknownGroup(group)),
        };
        self.groups = groups;
        result
    }

    /// Asks the leader of a group to hand leadership to `to` (leader
    /// balancing). No-op on a follower.
    pub fn transfer_leader(&mut self, group: GroupId, to: NodeId) -> Result<(), RaftError> {
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(RaftError::UnknownGroup(group))?;
        g.raw.transfer_leader(to);
        Ok(())
    }

    /// Reports the outcome of sending a `MsgSnapshot` listed in
    /// [`Output::snapshots`] (trap 17): without it, replication to that
    /// follower stays paused.
    pub fn report_snapshot(&mut self, group: GroupId, to: NodeId, delivered: bool) {
        if let Some(g) = self.groups.get_mut(&group) {
            let status = if delivered {
                SnapshotStatus::Finish
            } else {
                SnapshotStatus::Failure
            };
            g.raw.report_snapshot(to, status);
        }
    }

    /// Reports that sending to `to` failed: every group probes it again
    /// instead of streaming to it (trap 17).
    pub fn report_unreachable(&mut self, to: NodeId) {
        for g in self.groups.values_mut() {
            g.raw.report_unreachable(to);
        }
    }

    /// Deletes old segments of a group by its log's retention settings,
    /// never past the applied index (trap 18). Returns the new first Raft
    /// index; followers behind it catch up from a snapshot.
    pub fn apply_retention(&mut self, group: GroupId, now_ms: i64) -> Result<u64, RaftError> {
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(RaftError::UnknownGroup(group))?;
        g.raw.mut_store().apply_retention(now_ms)
    }

    /// The state of a group on this node.
    pub fn status(&self, group: GroupId) -> Option<GroupStatus> {
        let g = self.groups.get(&group)?;
        let raft = &g.raw.raft;
        let store = g.raw.store();
        let commit = raft.raft_log.committed;
        let mut replicas = Vec::new();
        if raft.state == StateRole::Leader {
            for (id, pr) in raft.prs().iter() {
                // In sync: the leader itself, or a follower heard from within
                // the election timeout that takes appends as a stream
                // (Replicate), i.e. not probing nor waiting for a snapshot.
                let heard_lately = g.heard.get(id).is_some_and(|&at| {
                    g.ticks.saturating_sub(at) <= self.config.election_tick as u64
                });
                let in_sync = *id == self.config.id
                    || (heard_lately && pr.state == raft::ProgressState::Replicate);
                replicas.push(ReplicaStatus {
                    node: *id,
                    matched: pr.matched,
                    in_sync,
                });
            }
            replicas.sort_by_key(|r| r.node);
        }
        Some(GroupStatus {
            group,
            role: raft.state.into(),
            term: raft.term,
            leader: (raft.leader_id != 0).then_some(raft.leader_id),
            commit,
            committed_in_term: raft.state == StateRole::Leader && raft.commit_to_current_term(),
            high_watermark: g.hwm,
            first_index: store.first_index_cached(),
            last_index: store.last_index_cached(),
            voters: store.conf_state().voters.clone(),
            replicas,
        })
    }

    /// Handles every group's pending work in the order raft-rs requires
    /// (trap 9) and returns what the driver must do. Call it after every
    /// batch of `tick`/`step`/`propose` calls; nothing else runs between a
    /// group's `ready()` and its `advance()` (trap 10).
    ///
    /// A leader's early messages (see [`Node::ready_with`]) come first in
    /// each node's list of [`Output::messages`].
    pub fn ready(&mut self) -> Output {
        let mut early: Vec<(NodeId, Vec<GroupMessage>)> = Vec::new();
        let mut out = self.ready_with(|to, msgs| early.push((to, msgs)));
        if early.is_empty() {
            return out;
        }
        let mut merged: BTreeMap<NodeId, Vec<GroupMessage>> = BTreeMap::new();
        for (to, msgs) in early.into_iter().chain(std::mem::take(&mut out.messages)) {
            merged.entry(to).or_default().extend(msgs);
        }
        out.messages = merged.into_iter().collect();
        out
    }

    /// [`Node::ready`], handing the messages a leader may send before its
    /// own fsync (trap 8: appends and heartbeats, never votes or
    /// responses) to `send_early` after the writes of every group and
    /// before any fsync, so that followers write while the leader syncs.
    /// [`Output::messages`] holds the rest, to send after this returns.
    /// [`Output::snapshots`] lists snapshot messages sent either way.
    ///
    /// Each round runs three phases over all groups with work: (1) take the
    /// Ready, apply a snapshot, append entries, note the hard state;
    /// (2) fsync each log that must sync, then its state record; (3) send
    /// persisted messages, apply committed entries, advance. A Ready's
    /// advance can make more ready (a leader's own append commits); up to
    /// four rounds settle it.
    pub fn ready_with(&mut self, mut send_early: impl FnMut(NodeId, Vec<GroupMessage>)) -> Output {
        let mut out = Output {
            completions: std::mem::take(&mut self.carried),
            ..Default::default()
        };
        let mut messages: BTreeMap<NodeId, Vec<GroupMessage>> = BTreeMap::new();
        for _round in 0..4 {
            let ids: Vec<GroupId> = self
                .groups
                .iter()
                .filter(|(_, g)| g.raw.has_ready())
                .map(|(id, _)| *id)
                .collect();
            if ids.is_empty() {
                break;
            }
            // Phase 1: writes, no fsync.
            let mut early: BTreeMap<NodeId, Vec<GroupMessage>> = BTreeMap::new();
            let mut flights = Vec::with_capacity(ids.len());
            for group in ids {
                let Some(mut g) = self.groups.remove(&group) else {
                    continue;
                };
                match self.write_ready(group, &mut g, &mut out, &mut early) {
                    Ok(flight) => flights.push((group, g, flight)),
                    Err(e) => self.fail_group(group, g, e, &mut out),
                }
            }
            for (to, msgs) in early {
                send_early(to, msgs);
            }
            #[cfg(test)]
            if self.crash_before_sync {
                // The simulation crashes the node here: early messages are
                // out, nothing is synced. The groups are gone with it.
                self.stopped_before_sync = true;
                return out;
            }
            // Phase 2: fsync, each log before its state record; the groups'
            // files in parallel (see `sync_groups`).
            let results = sync_groups(&mut flights);
            let mut synced = Vec::with_capacity(flights.len());
            for ((group, g, flight), result) in flights.into_iter().zip(results) {
                match result {
                    Ok(()) => synced.push((group, g, flight)),
                    Err(e) => self.fail_group(group, g, e, &mut out),
                }
            }
            // Phase 3: persisted messages, apply, advance.
            for (group, mut g, flight) in synced {
                match self.finish_ready(group, &mut g, flight, &mut out, &mut messages) {
                    Ok(()) => {
                        self.groups.insert(group, g);
                    }
                    Err(e) => self.fail_group(group, g, e, &mut out),
                }
            }
        }
        let mut groups = std::mem::take(&mut self.groups);
        for (&group, g) in groups.iter_mut() {
            self.fix_election_timeout(g);
            let raft = &g.raw.raft;
            let now = (raft.state, raft.term, raft.leader_id);
            if now != g.reported {
                g.reported = now;
                out.leadership.push(LeaderChange {
                    group,
                    term: now.1,
                    leader: (now.2 != 0).then_some(now.2),
                    role: now.0.into(),
                });
            }
        }
        self.groups = groups;
        out.messages = messages.into_iter().collect();
        out
    }

    fn fail_group(&mut self, group: GroupId, g: Group, e: RaftError, out: &mut Output) {
        tracing::error!(node = self.config.id, group, error = %e, "raft group failed; closing it");
        out.completions
            .extend(Self::fail_all(group, g, "the group failed"));
        out.failed.push((group, e.to_string()));
    }

    /// Phase 1 of a Ready (trap 9, steps 1-3): the snapshot, the entries,
    /// the hard state (noted, written in phase 2 or 3).
    fn write_ready(
        &mut self,
        group: GroupId,
        g: &mut Group,
        out: &mut Output,
        early: &mut BTreeMap<NodeId, Vec<GroupMessage>>,
    ) -> Result<InFlight, RaftError> {
        let mut rd = g.raw.ready();
        // Trap 8: raft-rs fills `messages` only on a leader.
        push_messages(group, rd.take_messages(), early, out);
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            g.raw.mut_store().apply_snapshot(&snap)?;
            let index = snap.get_metadata().index;
            let rest = g.pending.split_off(&(index + 1));
            for p in std::mem::replace(&mut g.pending, rest).into_values() {
                out.completions.push(Completion {
                    group,
                    ticket: p.ticket,
                    result: Err(ProposalError::Unknown {
                        reason: "the log was replaced by a snapshot",
                    }),
                });
            }
        }
        // The entries, truncating a conflicting suffix first.
        let mut leader_acks = Vec::new();
        if !rd.entries().is_empty() {
            let infos = g.raw.mut_store().append(rd.entries(), self.now_ms)?;
            for info in infos {
                let Some(p) = g.pending.get(&info.raft_index).copied() else {
                    continue;
                };
                if p.acks != Acks::Leader {
                    continue;
                }
                g.pending.remove(&info.raft_index);
                let result = if p.term == info.raft_term {
                    Ok(info)
                } else {
                    Err(ProposalError::Superseded {
                        index: info.raft_index,
                    })
                };
                leader_acks.push((p.ticket, result));
            }
        }
        if let Some(hs) = rd.hs() {
            g.raw.mut_store().set_hard_state(hs);
        }
        Ok(InFlight { rd, leader_acks })
    }

    /// Phase 3 of a Ready (trap 9, steps 5-8), after its fsync.
    fn finish_ready(
        &mut self,
        group: GroupId,
        g: &mut Group,
        flight: InFlight,
        out: &mut Output,
        messages: &mut BTreeMap<NodeId, Vec<GroupMessage>>,
    ) -> Result<(), RaftError> {
        let InFlight {
            mut rd,
            leader_acks,
        } = flight;
        for (ticket, result) in leader_acks {
            out.completions.push(Completion {
                group,
                ticket,
                result,
            });
        }
        // What followers and candidates say goes out only now.
        push_messages(group, rd.take_persisted_messages(), messages, out);
        // Entries committed before this Ready (already durable here).
        let committed = rd.take_committed_entries();
        self.apply(group, g, committed, out)?;
        let mut light = g.raw.advance_append(rd);
        if let Some(commit) = light.commit_index() {
            g.raw.mut_store().set_commit(commit);
        }
        push_messages(group, light.take_messages(), messages, out);
        let committed = light.take_committed_entries();
        self.apply(group, g, committed, out)?;
        g.raw.advance_apply();
        // The commit and applied index; fsynced with the next must_sync.
        g.raw.mut_store().persist(false)?;
        let hwm = g
            .raw
            .store()
            .end_offset(g.raw.store().applied())
            .unwrap_or(g.hwm);
        if hwm > g.hwm {
            g.hwm = hwm;
            out.high_watermarks.retain(|(id, _)| *id != group);
            out.high_watermarks.push((group, hwm));
        }
        Ok(())
    }

    /// Applies committed entries: conf changes, proposal completions, the
    /// applied index.
    fn apply(
        &mut self,
        group: GroupId,
        g: &mut Group,
        entries: Vec<raft::eraftpb::Entry>,
        out: &mut Output,
    ) -> Result<(), RaftError> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        for e in &entries {
            match e.get_entry_type() {
                EntryType::EntryNormal => {}
                EntryType::EntryConfChange => {
                    let cs = g.raw.apply_conf_change(&parse_change::<ConfChange>(e)?)?;
                    g.raw.mut_store().set_conf_state(cs);
                }
                EntryType::EntryConfChangeV2 => {
                    let cs = g.raw.apply_conf_change(&parse_change::<ConfChangeV2>(e)?)?;
                    g.raw.mut_store().set_conf_state(cs);
                }
            }
            // Proposals at indexes this commit skipped over cannot exist
            // (commit moves one index at a time through `entries`); any
            // left below are stale and end as unknown.
            while let Some((&index, _)) = g.pending.first_key_value() {
                if index >= e.index {
                    break;
                }
                if let Some((_, p)) = g.pending.pop_first() {
                    out.completions.push(Completion {
                        group,
                        ticket: p.ticket,
                        result: Err(ProposalError::Unknown {
                            reason: "the proposal's index was passed over",
                        }),
                    });
                }
            }
            let Some(p) = g.pending.remove(&e.index) else {
                continue;
            };
            let store = g.raw.store();
            let result = match (store.end_offset(e.index - 1), store.end_offset(e.index)) {
                (Some(base), Some(end)) if p.term == e.term => Ok(AppendInfo {
                    base_offset: base,
                    last_offset: end - 1,
                    raft_index: e.index,
                    raft_term: e.term,
                }),
                _ if p.term != e.term => Err(ProposalError::Superseded { index: e.index }),
                _ => Err(ProposalError::Unknown {
                    reason: "offsets of the committed entry are not known",
                }),
            };
            out.completions.push(Completion {
                group,
                ticket: p.ticket,
                result,
            });
        }
        g.raw.mut_store().set_applied(last);
        Ok(())
    }

    /// raft-rs draws election timeouts from a thread RNG; replace every
    /// draw by one from the node's seeded generator. A draw happens only in
    /// `Raft::reset`, which every role or term change goes through, so a
    /// changed (role, term) or a timeout other than ours means a new draw.
    fn fix_election_timeout(&mut self, g: &mut Group) {
        let raft = &mut g.raw.raft;
        let key = (raft.state, raft.term);
        if key == g.timeout_key && raft.randomized_election_timeout() == g.timeout {
            return;
        }
        let min = self.config.election_tick as u64;
        let t = (min + self.rng.below(min)) as usize;
        raft.set_randomized_election_timeout(t);
        g.timeout_key = key;
        g.timeout = t;
    }

    /// Simulates a crash (tests): every group's state file loses its
    /// unsynced record unless `keep_unsynced`; returns the logs.
    #[cfg(test)]
    pub(crate) fn crash(mut self, keep_unsynced: bool) -> Vec<(GroupId, Arc<Log>)> {
        let mut logs = Vec::new();
        for (id, mut g) in std::mem::take(&mut self.groups) {
            let store = g.raw.mut_store();
            if let Err(e) = store.crash(keep_unsynced) {
                panic!("simulated crash of group {id} failed: {e}");
            }
            logs.push((id, Arc::clone(store.log())));
        }
        logs
    }
}

/// Decodes a committed conf change entry.
fn parse_change<M: protobuf::Message>(e: &raft::eraftpb::Entry) -> Result<M, RaftError> {
    M::parse_from_bytes(&e.data)
        .map_err(|err| RaftError::Config(format!("conf change at raft index {}: {err}", e.index)))
}

fn push_messages(
    group: GroupId,
    msgs: Vec<Message>,
    messages: &mut BTreeMap<NodeId, Vec<GroupMessage>>,
    out: &mut Output,
) {
    for msg in msgs {
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            out.snapshots.push((group, msg.to));
        }
        messages
            .entry(msg.to)
            .or_default()
            .push(GroupMessage { group, msg });
    }
}

#[cfg(test)]
mod tests;
