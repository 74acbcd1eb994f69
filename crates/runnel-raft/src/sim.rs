//! Deterministic simulation of a cluster of [`Node`]s (the way TigerBeetle
//! and FoundationDB test): the node core runs unchanged over real
//! partition logs in temp directories, with a virtual clock, an in-memory
//! network that drops, delays, reorders, duplicates and partitions per
//! link, clients proposing batches, and nodes crashing and restarting.
//! Everything random comes from one seeded generator, so a seed replays
//! exactly.
//!
//! Invariants, checked after every event:
//! - at most one leader per (group, term);
//! - the high watermark and commit index never move back on a node (within
//!   one incarnation: a restart may come back lower until it hears from
//!   the leader);
//! - no offset ever holds two different committed batches: every batch
//!   below any node's HWM is recorded in a global offset -> content map;
//! - every acknowledged (acks=quorum) batch was in the committed map at its
//!   offset, was not missing from more than `n - quorum` live nodes, and is
//!   in the log of every later leader at the same offset;
//! - liveness: once the network heals and every node is up, each group
//!   elects a leader, commits a new batch and all nodes converge within a
//!   bound; then every acknowledged batch is on every node; then every
//!   node in turn takes over each group (leadership transfer) and commits.
//!
//! A crash is, at random, a process crash (every write survives), a
//! power loss (each log is cut back to what was fsynced, `Log::crash`, and
//! the `raft.state` record written since the last fsync is lost), or a
//! power loss in the middle of a `ready`: after a leader's early messages
//! went out and before any fsync.
//!
//! Replay a failure: `RUNNEL_SIM_SEED=<n> cargo test -p runnel-raft sim`.
//! More seeds: `RUNNEL_SIM_SEEDS=<n>` (default 1,000 in all).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use runnel_batch::{BatchBuilder, BatchHeader, Compression, NewRecord, VerifiedBatch};
use runnel_storage::{FlushPolicy, Log, LogConfig};

use crate::node::SplitMix64;
use crate::{
    Acks, Bootstrap, Completion, GroupId, GroupMessage, Node, NodeConfig, NodeId, Output,
    ProposeError, Role, Ticket,
};

/// Virtual milliseconds between two ticks of a node.
const TICK_MS: u64 = 10;

/// One run's shape.
#[derive(Clone, Debug)]
pub(crate) struct SimConfig {
    pub(crate) nodes: u64,
    pub(crate) groups: u64,
    /// Virtual time of the faulty phase.
    pub(crate) chaos_ms: u64,
    /// Bound on the healed phase to converge (liveness).
    pub(crate) heal_bound_ms: u64,
    pub(crate) crashes: bool,
    pub(crate) retention: bool,
}

impl SimConfig {
    pub(crate) fn small(nodes: u64) -> Self {
        SimConfig {
            nodes,
            groups: 2,
            chaos_ms: 3_000,
            heal_bound_ms: 6_000,
            crashes: true,
            retention: true,
        }
    }
}

/// What a run did, for tests and the determinism check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SimReport {
    pub(crate) acked: usize,
    pub(crate) leader_acked: usize,
    pub(crate) failed_proposals: usize,
    pub(crate) elections: usize,
    pub(crate) crashes: usize,
    pub(crate) snapshots: usize,
    pub(crate) delivered: u64,
    pub(crate) dropped: u64,
    /// Hash of the whole trace of events.
    pub(crate) trace: u64,
}

struct Packet {
    from: NodeId,
    to: NodeId,
    msg: GroupMessage,
}

struct SimNode {
    id: NodeId,
    dir: PathBuf,
    node: Option<Node>,
    incarnation: u64,
    next_tick: u64,
    restart_at: u64,
    /// Last (commit, hwm) seen per group in this incarnation.
    seen: BTreeMap<GroupId, (u64, u64)>,
}

#[derive(Clone, Debug)]
struct Proposal {
    group: GroupId,
    acks: Acks,
    hash: u64,
}

struct Sim {
    seed: u64,
    config: SimConfig,
    rng: SplitMix64,
    now: u64,
    nodes: Vec<SimNode>,
    network: BTreeMap<(u64, u64), Packet>,
    packet_seq: u64,
    /// Directed links that are cut.
    cut: BTreeSet<(NodeId, NodeId)>,
    drop_per_mille: u64,
    dup_per_mille: u64,
    max_delay_ms: u64,
    next_fault: u64,
    next_client: u64,
    next_batch_id: u64,
    /// Proposals in flight, by (node, incarnation, ticket).
    proposals: BTreeMap<(NodeId, u64, Ticket), Proposal>,
    /// Leader per (group, term).
    leaders: BTreeMap<(GroupId, u64), NodeId>,
    /// Content hash of every committed batch, by (group, base offset).
    committed: BTreeMap<(GroupId, u64), (u64, u64)>,
    /// Acknowledged (acks=quorum) batches: (group, base offset) -> hash.
    acked: BTreeMap<(GroupId, u64), u64>,
    /// Last node seen leading each group.
    believed_leader: BTreeMap<GroupId, NodeId>,
    /// acks=quorum acknowledgements per (leader node, group).
    acked_by: BTreeMap<(NodeId, GroupId), usize>,
    report: SimReport,
    trace: std::collections::hash_map::DefaultHasher,
    _root: tempfile::TempDir,
}

fn hash_of(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Identity of a stored batch for the committed map: data batches by their
/// bytes (identical on every replica, stamped fields included), control
/// batches by (term, index) since their timestamp is the storing node's.
fn batch_identity(batch: &[u8]) -> Result<(u64, u64), String> {
    let h = BatchHeader::parse(batch).map_err(|e| e.to_string())?;
    if h.attributes.is_control() {
        let mut s = std::collections::hash_map::DefaultHasher::new();
        ("control", h.raft_term, h.raft_index).hash(&mut s);
        Ok((s.finish(), h.next_offset()))
    } else {
        Ok((hash_of(&batch[..h.batch_len as usize]), h.next_offset()))
    }
}

/// Data-batch hash that ignores the stamped prefix (what a client can know).
fn payload_hash(batch: &[u8]) -> u64 {
    hash_of(&batch[runnel_batch::STAMPED_LEN..])
}

/// Whole batches of `log` in `[from, to)`, as (base offset, bytes).
fn batches_in(log: &Log, from: u64, to: u64) -> Result<Vec<(u64, Bytes)>, String> {
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let r = log.read(at, to, 1 << 20).map_err(|e| e.to_string())?;
        if r.batch_count == 0 {
            break;
        }
        let mut pos = 0usize;
        while pos < r.bytes.len() {
            let h = BatchHeader::parse(&r.bytes[pos..]).map_err(|e| e.to_string())?;
            let len = h.batch_len as usize;
            out.push((h.base_offset, r.bytes.slice(pos..pos + len)));
            pos += len;
        }
        at = r.next_offset;
    }
    Ok(out)
}

fn log_config(retention: bool) -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        max_batch_bytes: 2048,
        index_interval_bytes: 512,
        index_max_bytes: 4096,
        flush: FlushPolicy::Never,
        retention_ms: None,
        retention_bytes: retention.then_some(8192),
        segment_ms: None,
        ..Default::default()
    }
}

impl Sim {
    fn new(seed: u64, config: SimConfig) -> Sim {
        let root = crate::storage::tests::test_dir();
        let nodes = (1..=config.nodes)
            .map(|id| SimNode {
                id,
                dir: root.path().join(format!("node-{id}")),
                node: None,
                incarnation: 0,
                next_tick: 0,
                restart_at: 0,
                seen: BTreeMap::new(),
            })
            .collect();
        let mut sim = Sim {
            seed,
            config,
            rng: SplitMix64::new(seed),
            now: 0,
            nodes,
            network: BTreeMap::new(),
            packet_seq: 0,
            cut: BTreeSet::new(),
            drop_per_mille: 0,
            dup_per_mille: 0,
            max_delay_ms: 5,
            next_fault: 0,
            next_client: 0,
            next_batch_id: 0,
            proposals: BTreeMap::new(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            acked: BTreeMap::new(),
            believed_leader: BTreeMap::new(),
            acked_by: BTreeMap::new(),
            report: SimReport::default(),
            trace: std::collections::hash_map::DefaultHasher::new(),
            _root: root,
        };
        for i in 0..sim.nodes.len() {
            sim.start(i);
            sim.nodes[i].next_tick = sim.rng.below(TICK_MS);
        }
        sim.next_fault = 200 + sim.rng.below(300);
        sim
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "simulation invariant broken (seed {seed}, t={now} ms): {what}\n\
             replay: RUNNEL_SIM_SEED={seed} cargo test -p runnel-raft sim -- --nocapture",
            seed = self.seed,
            now = self.now
        );
    }

    fn event(&mut self, what: impl Hash) {
        (self.now, what).hash(&mut self.trace);
    }

    fn quorum(&self) -> usize {
        self.config.nodes as usize / 2 + 1
    }

    fn voters(&self) -> Vec<NodeId> {
        (1..=self.config.nodes).collect()
    }

    fn start(&mut self, i: usize) {
        let voters = self.voters();
        let retention = self.config.retention;
        let id = self.nodes[i].id;
        let config = NodeConfig {
            id,
            election_tick: 10,
            heartbeat_tick: 2,
            max_size_per_msg: 4096,
            max_inflight_msgs: 16,
            max_uncommitted_size: 1 << 20,
            seed: self.seed,
        };
        let mut node = match Node::new(config) {
            Ok(n) => n,
            Err(e) => self.fail(format!("node {id} config: {e}")),
        };
        for g in 0..self.config.groups {
            let dir = self.nodes[i].dir.join(format!("group-{g}"));
            let log = match Log::open(&dir, log_config(retention)) {
                Ok(l) => Arc::new(l),
                Err(e) => self.fail(format!("node {id} group {g}: opening the log: {e}")),
            };
            let bootstrap = Bootstrap {
                voters: voters.clone(),
                created_ms: 1_000_000 + g as i64,
            };
            if let Err(e) = node.open_group(g, log, &bootstrap) {
                self.fail(format!("node {id} group {g}: opening the group: {e}"));
            }
        }
        let n = &mut self.nodes[i];
        n.node = Some(node);
        n.incarnation += 1;
        n.seen.clear();
        self.event(("start", id));
        self.after(i, Output::default());
    }

    fn crash(&mut self, i: usize) {
        match self.rng.below(3) {
            0 => {
                // Crash at the node's next Ready, after its early sends.
                if let Some(node) = self.nodes[i].node.as_mut() {
                    node.crash_before_sync = true;
                }
                self.event(("arm-crash", i));
            }
            1 => self.crash_with(i, true),
            _ => self.crash_with(i, false),
        }
    }

    /// Crashes node `i` now: a process crash if `keep`, else a power loss.
    fn crash_with(&mut self, i: usize, keep: bool) {
        let Some(node) = self.nodes[i].node.take() else {
            return;
        };
        let id = self.nodes[i].id;
        self.report.crashes += 1;
        self.event(("crash", id, keep));
        // Half the time a process crash (the page cache keeps every write),
        // half the time a power loss: each log is cut back to what was
        // fsynced and the state file loses its unsynced record.
        for (g, log) in node.crash(keep) {
            if keep {
                continue;
            }
            let log = match Arc::try_unwrap(log) {
                Ok(log) => log,
                Err(_) => self.fail(format!(
                    "node {id} group {g}: the log is still shared at a crash"
                )),
            };
            if let Err(e) = log.crash() {
                self.fail(format!("node {id} group {g}: crashing the log: {e}"));
            }
        }
        self.proposals.retain(|(n, _, _), _| *n != id);
        self.nodes[i].restart_at = self.now + 50 + self.rng.below(500);
    }

    fn send(&mut self, from: NodeId, out: &mut Output) {
        let messages = std::mem::take(&mut out.messages);
        self.route(from, messages);
        for (group, to) in std::mem::take(&mut out.snapshots) {
            self.report.snapshots += 1;
            let delivered = !self.cut.contains(&(from, to));
            if let Some(node) = self.node_mut(from) {
                node.report_snapshot(group, to, delivered);
            }
        }
    }

    /// Puts messages on the network, through its faults.
    fn route(&mut self, from: NodeId, messages: Vec<(NodeId, Vec<GroupMessage>)>) {
        for (to, msgs) in messages {
            let link_up = !self.cut.contains(&(from, to));
            if !link_up {
                if let Some(node) = self.node_mut(from) {
                    node.report_unreachable(to);
                }
            }
            for msg in msgs {
                if !link_up || self.rng.below(1000) < self.drop_per_mille {
                    self.report.dropped += 1;
                    continue;
                }
                let copies = if self.rng.below(1000) < self.dup_per_mille {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let at = self.now + 1 + self.rng.below(self.max_delay_ms);
                    self.packet_seq += 1;
                    self.network.insert(
                        (at, self.packet_seq),
                        Packet {
                            from,
                            to,
                            msg: msg.clone(),
                        },
                    );
                }
            }
        }
    }

    fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.nodes
            .get_mut(id as usize - 1)
            .and_then(|n| n.node.as_mut())
    }

    /// Runs `ready` on node `i` until it has nothing more, routing and
    /// checking everything it produced; `first` is output produced before.
    fn after(&mut self, i: usize, first: Output) {
        let mut out = first;
        for round in 0.. {
            if round > 0 {
                let Some(node) = self.nodes[i].node.as_mut() else {
                    return;
                };
                let mut early = Vec::new();
                // Odd nodes take early messages through the callback, even
                // ones in the Output: both driver styles stay covered.
                out = if i % 2 == 0 {
                    node.ready_with(|to, msgs| early.push((to, msgs)))
                } else {
                    node.ready()
                };
                let stopped = node.stopped_before_sync;
                let sent_early = !early.is_empty();
                self.route(self.nodes[i].id, early);
                if stopped {
                    // Power loss between the leader's early sends and its fsync.
                    self.event(("crash-mid-ready", self.nodes[i].id));
                    self.crash_with(i, false);
                    return;
                }
                if out.is_empty() && !sent_early {
                    break;
                }
            }
            self.handle_output(i, &mut out);
            if round > 8 {
                break;
            }
        }
        self.check_node(i);
    }

    fn handle_output(&mut self, i: usize, out: &mut Output) {
        let id = self.nodes[i].id;
        if let Some((g, e)) = out.failed.first() {
            self.fail(format!("node {id} group {g} failed: {e}"));
        }
        for lc in std::mem::take(&mut out.leadership) {
            self.event(("leader", id, lc.group, lc.term, lc.role as u8));
            if lc.role == Role::Leader {
                self.report.elections += 1;
                if let Some(other) = self.leaders.insert((lc.group, lc.term), id) {
                    if other != id {
                        self.fail(format!(
                            "two leaders in group {} term {}: nodes {other} and {id}",
                            lc.group, lc.term
                        ));
                    }
                }
                self.believed_leader.insert(lc.group, id);
                self.check_leader_has_acked(i, lc.group);
            }
        }
        for (g, hwm) in std::mem::take(&mut out.high_watermarks) {
            self.event(("hwm", id, g, hwm));
            self.record_committed(i, g, hwm);
        }
        for c in std::mem::take(&mut out.completions) {
            self.complete(i, c);
        }
        self.send(id, out);
    }

    /// Records the batches below a node's new HWM in the global map.
    fn record_committed(&mut self, i: usize, g: GroupId, hwm: u64) {
        let id = self.nodes[i].id;
        let prev = self.nodes[i].seen.get(&g).map_or(0, |s| s.1);
        let Some(log) = self.nodes[i].node.as_ref().and_then(|n| n.log(g)).cloned() else {
            return;
        };
        let start = match log.log_start_offset() {
            Ok(s) => s,
            Err(e) => self.fail(format!("node {id}: {e}")),
        };
        let batches = match batches_in(&log, prev.max(start), hwm) {
            Ok(b) => b,
            Err(e) => self.fail(format!("node {id} group {g}: reading [{prev}, {hwm}): {e}")),
        };
        for (base, batch) in batches {
            let ident = match batch_identity(&batch) {
                Ok(x) => x,
                Err(e) => self.fail(format!("node {id} group {g} offset {base}: {e}")),
            };
            match self.committed.get(&(g, base)) {
                Some(have) if *have != ident => self.fail(format!(
                    "offset {base} of group {g} holds two different committed batches \
                     (node {id} has {ident:?}, recorded {have:?})"
                )),
                Some(_) => {}
                None => {
                    self.committed.insert((g, base), ident);
                }
            }
        }
    }

    fn complete(&mut self, i: usize, c: Completion) {
        let id = self.nodes[i].id;
        let inc = self.nodes[i].incarnation;
        let Some(p) = self.proposals.remove(&(id, inc, c.ticket)) else {
            self.fail(format!(
                "node {id}: completion for an unknown ticket {:?}",
                c.ticket
            ));
        };
        if p.group != c.group {
            self.fail(format!(
                "ticket {:?} completed for the wrong group",
                c.ticket
            ));
        }
        let info = match c.result {
            Ok(info) => info,
            Err(e) => {
                self.report.failed_proposals += 1;
                self.event(("failed", id, c.ticket.0));
                let _ = e;
                return;
            }
        };
        self.event(("acked", id, c.ticket.0, info.base_offset));
        let Some(log) = self.nodes[i]
            .node
            .as_ref()
            .and_then(|n| n.log(c.group))
            .cloned()
        else {
            self.fail(format!("node {id}: completion for a closed group"));
        };
        // The batch is in the leader's log at the offsets it was given.
        let found = batches_in(&log, info.base_offset, info.last_offset + 1)
            .ok()
            .and_then(|b| b.first().cloned());
        match found {
            Some((base, batch)) if base == info.base_offset && payload_hash(&batch) == p.hash => {}
            other => self.fail(format!(
                "node {id} acknowledged group {} offset {} but its log holds {:?}",
                c.group,
                info.base_offset,
                other.map(|(b, x)| (b, payload_hash(&x)))
            )),
        }
        if p.acks == Acks::Leader {
            self.report.leader_acked += 1;
            return;
        }
        self.report.acked += 1;
        *self.acked_by.entry((id, c.group)).or_default() += 1;
        // Committed: below this node's HWM, so in the committed map.
        if !self.committed.contains_key(&(c.group, info.base_offset)) {
            self.fail(format!(
                "acks=quorum batch at group {} offset {} acknowledged above the HWM",
                c.group, info.base_offset
            ));
        }
        // On a quorum: no more than n - quorum live nodes may lack it.
        let mut missing = 0;
        for n in &self.nodes {
            let Some(log) = n.node.as_ref().and_then(|x| x.log(c.group)) else {
                continue;
            };
            let has = log.durable_offset() > info.last_offset
                && batches_in(log, info.base_offset, info.last_offset + 1)
                    .ok()
                    .and_then(|b| b.first().cloned())
                    .is_some_and(|(base, b)| {
                        base == info.base_offset && payload_hash(&b) == p.hash
                    });
            if !has {
                missing += 1;
            }
        }
        if missing > self.nodes.len() - self.quorum() {
            self.fail(format!(
                "acks=quorum batch at group {} offset {} is durable on fewer than a quorum of nodes",
                c.group, info.base_offset
            ));
        }
        if let Some(old) = self.acked.insert((c.group, info.base_offset), p.hash) {
            self.fail(format!(
                "offset {} of group {} acknowledged twice (hashes {old} and {})",
                info.base_offset, c.group, p.hash
            ));
        }
    }

    /// Leader completeness: a new leader holds every acknowledged batch.
    fn check_leader_has_acked(&self, i: usize, g: GroupId) {
        let id = self.nodes[i].id;
        let Some(log) = self.nodes[i].node.as_ref().and_then(|n| n.log(g)) else {
            return;
        };
        let start = log.log_start_offset().unwrap_or(0);
        for (&(group, offset), &hash) in self.acked.range((g, 0)..(g + 1, 0)) {
            debug_assert_eq!(group, g);
            if offset < start {
                continue;
            }
            let got = batches_in(log, offset, offset + 1)
                .ok()
                .and_then(|b| b.first().cloned());
            match got {
                Some((base, b)) if base == offset && payload_hash(&b) == hash => {}
                other => self.fail(format!(
                    "new leader {id} of group {g} lacks the acknowledged batch at offset {offset} (has {:?})",
                    other.map(|(b, x)| (b, payload_hash(&x)))
                )),
            }
        }
    }

    /// Per-node monotonicity of commit and HWM.
    fn check_node(&mut self, i: usize) {
        let id = self.nodes[i].id;
        let Some(node) = self.nodes[i].node.as_ref() else {
            return;
        };
        let mut updates = Vec::new();
        for g in node.groups() {
            let Some(st) = node.status(g) else { continue };
            let prev = self.nodes[i].seen.get(&g).copied().unwrap_or((0, 0));
            if st.commit < prev.0 || st.high_watermark < prev.1 {
                self.fail(format!(
                    "node {id} group {g} went back: commit {} -> {}, hwm {} -> {}",
                    prev.0, st.commit, prev.1, st.high_watermark
                ));
            }
            if let Some(log) = node.log(g) {
                let end = log.log_end_offset().unwrap_or(0);
                if st.high_watermark > end {
                    self.fail(format!(
                        "node {id} group {g}: hwm {} past the log end {end}",
                        st.high_watermark
                    ));
                }
            }
            updates.push((g, (st.commit, st.high_watermark)));
        }
        for (g, s) in updates {
            self.nodes[i].seen.insert(g, s);
        }
    }

    /// Proposes a new batch: to `target` (node, group) or to a random
    /// group's believed leader.
    fn propose(&mut self, target: Option<(NodeId, GroupId)>) {
        let g = match target {
            Some((_, g)) => g,
            None => self.rng.below(self.config.groups),
        };
        let id = target
            .map(|(n, _)| n)
            .or_else(|| self.believed_leader.get(&g).copied())
            .unwrap_or_else(|| 1 + self.rng.below(self.config.nodes));
        let i = id as usize - 1;
        if self.nodes[i].node.is_none() {
            return;
        }
        self.next_batch_id += 1;
        let records = 1 + self.rng.below(3);
        let size = 10 + self.rng.below(300) as usize;
        let tag = format!("g{g}-b{}-", self.next_batch_id);
        let mut value = tag.into_bytes();
        value.resize(size.max(value.len()), b'x');
        let mut b = BatchBuilder::new(Compression::None);
        for r in 0..records {
            b.push(NewRecord {
                value: &value,
                timestamp: 1_000_000 + self.now as i64 + r as i64,
                ..Default::default()
            });
        }
        let batch: VerifiedBatch = match b.finish_verified() {
            Ok(b) => b,
            Err(e) => self.fail(format!("building a batch: {e}")),
        };
        let hash = payload_hash(batch.bytes());
        let acks = if target.is_none() && self.rng.below(4) == 0 {
            Acks::Leader
        } else {
            Acks::Quorum
        };
        let inc = self.nodes[i].incarnation;
        let Some(node) = self.nodes[i].node.as_mut() else {
            return;
        };
        match node.propose(g, batch, acks) {
            Ok(ticket) => {
                self.event(("propose", id, g, ticket.0));
                self.proposals.insert(
                    (id, inc, ticket),
                    Proposal {
                        group: g,
                        acks,
                        hash,
                    },
                );
                self.after(i, Output::default());
            }
            Err(ProposeError::NotLeader { leader, .. }) => {
                self.event(("not-leader", id, g));
                match leader {
                    Some(l) => self.believed_leader.insert(g, l),
                    None => self.believed_leader.remove(&g),
                };
            }
            Err(ProposeError::Retry { .. }) => self.event(("retry", id, g)),
            Err(e) => self.fail(format!("node {id}: unexpected proposal error {e}")),
        }
    }

    fn fault(&mut self) {
        let n = self.config.nodes;
        let choice = self.rng.below(10);
        match choice {
            0 | 1 => {
                // Isolate one node both ways.
                let x = 1 + self.rng.below(n);
                for y in 1..=n {
                    if y != x {
                        self.cut.insert((x, y));
                        self.cut.insert((y, x));
                    }
                }
                self.event(("isolate", x));
            }
            2 => {
                // Cut one direction of one link.
                let (x, y) = (1 + self.rng.below(n), 1 + self.rng.below(n));
                if x != y {
                    self.cut.insert((x, y));
                }
                self.event(("cut", x, y));
            }
            3 | 4 => {
                self.cut.clear();
                self.event("heal");
            }
            5 => {
                self.drop_per_mille = self.rng.below(200);
                self.dup_per_mille = self.rng.below(100);
                self.max_delay_ms = 1 + self.rng.below(60);
                self.event((
                    "weather",
                    self.drop_per_mille,
                    self.dup_per_mille,
                    self.max_delay_ms,
                ));
            }
            6 | 7 if self.config.crashes => {
                let i = self.rng.below(n) as usize;
                self.crash(i);
            }
            8 if self.config.retention => {
                for i in 0..self.nodes.len() {
                    let now = self.now as i64;
                    let groups: Vec<GroupId> = match &self.nodes[i].node {
                        Some(node) => node.groups().collect(),
                        None => continue,
                    };
                    for g in groups {
                        if let Some(node) = self.nodes[i].node.as_mut() {
                            if let Err(e) = node.apply_retention(g, now) {
                                self.fail(format!("retention on node {}: {e}", i + 1));
                            }
                        }
                    }
                }
                self.event("retention");
            }
            _ => {
                // A leader of a random group steps aside.
                let g = self.rng.below(self.config.groups);
                if let Some(&l) = self.believed_leader.get(&g) {
                    let to = 1 + self.rng.below(n);
                    if let Some(node) = self.node_mut(l) {
                        let _ = node.transfer_leader(g, to);
                    }
                    let i = l as usize - 1;
                    self.after(i, Output::default());
                    self.event(("transfer", g, l, to));
                }
            }
        }
    }

    /// Runs one event: the earliest of a delivery, a tick, a restart, a
    /// client proposal, a fault. Returns false when `until` is reached.
    fn step(&mut self, until: u64, chaos: bool) -> bool {
        let next_packet = self.network.keys().next().map(|k| k.0);
        let next_tick = self
            .nodes
            .iter()
            .filter(|n| n.node.is_some())
            .map(|n| n.next_tick)
            .min();
        let next_restart = self
            .nodes
            .iter()
            .filter(|n| n.node.is_none())
            .map(|n| n.restart_at)
            .min();
        let mut t = [next_packet, next_tick, next_restart, Some(self.next_client)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(until);
        if chaos {
            t = t.min(self.next_fault);
        }
        if t >= until {
            self.now = until;
            return false;
        }
        self.now = self.now.max(t);
        if next_packet == Some(t) {
            // Everything due now for one destination goes in one step call.
            let Some((&key, first)) = self.network.iter().next() else {
                return true;
            };
            let to = first.to;
            let due: Vec<(u64, u64)> = self
                .network
                .range(..(t + 1, 0))
                .filter(|(_, p)| p.to == to)
                .map(|(k, _)| *k)
                .collect();
            debug_assert!(due.contains(&key));
            let mut by_from: BTreeMap<NodeId, Vec<GroupMessage>> = BTreeMap::new();
            for k in due {
                if let Some(p) = self.network.remove(&k) {
                    if self.cut.contains(&(p.from, p.to)) {
                        self.report.dropped += 1;
                        continue;
                    }
                    by_from.entry(p.from).or_default().push(p.msg);
                }
            }
            let i = to as usize - 1;
            for (from, msgs) in by_from {
                if self.nodes[i].node.is_none() {
                    self.report.dropped += msgs.len() as u64;
                    continue;
                }
                self.report.delivered += msgs.len() as u64;
                self.event(("deliver", from, to, msgs.len()));
                let Some(node) = self.nodes[i].node.as_mut() else {
                    continue;
                };
                let unknown = node.step(from, msgs);
                if !unknown.is_empty() {
                    self.fail(format!(
                        "node {to}: messages for unknown groups {unknown:?}"
                    ));
                }
                self.after(i, Output::default());
            }
            return true;
        }
        if next_tick == Some(t) {
            for i in 0..self.nodes.len() {
                if self.nodes[i].node.is_some() && self.nodes[i].next_tick == t {
                    self.nodes[i].next_tick = t + TICK_MS;
                    let now = t as i64;
                    if let Some(node) = self.nodes[i].node.as_mut() {
                        node.tick(now);
                    }
                    self.after(i, Output::default());
                }
            }
            return true;
        }
        if next_restart == Some(t) {
            for i in 0..self.nodes.len() {
                if self.nodes[i].node.is_none() && self.nodes[i].restart_at == t {
                    self.start(i);
                    self.nodes[i].next_tick = t + 1 + self.rng.below(TICK_MS);
                }
            }
            return true;
        }
        if self.next_client == t {
            self.propose(None);
            self.next_client = t + 1 + self.rng.below(25);
            return true;
        }
        if chaos && self.next_fault == t {
            self.fault();
            self.next_fault = t + 50 + self.rng.below(400);
        }
        true
    }

    fn heal(&mut self) {
        self.cut.clear();
        self.drop_per_mille = 0;
        self.dup_per_mille = 0;
        self.max_delay_ms = 5;
        for i in 0..self.nodes.len() {
            if self.nodes[i].node.is_none() {
                self.start(i);
                self.nodes[i].next_tick = self.now + 1 + self.rng.below(TICK_MS);
            }
        }
        self.event("heal-all");
    }

    /// After healing: every group elects a leader that commits a new batch,
    /// and all nodes converge, within the bound.
    fn check_liveness(&mut self) {
        let deadline = self.now + self.config.heal_bound_ms;
        let start_acked = self.report.acked;
        let mut groups_done = BTreeSet::new();
        while self.now < deadline {
            // Stop the random clients once every group committed something
            // new; then wait for convergence.
            if groups_done.len() as u64 == self.config.groups {
                self.next_client = u64::MAX;
            }
            if !self.step(deadline, false) {
                break;
            }
            if self.report.acked > start_acked {
                for (&(g, _), _) in self.acked.iter() {
                    groups_done.insert(g);
                }
            }
            if groups_done.len() as u64 == self.config.groups && self.converged() {
                return;
            }
        }
        let statuses: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .flat_map(|node| {
                node.groups()
                    .filter_map(|g| node.status(g))
                    .map(|s| format!("node {} {s:?}", node.id()))
                    .collect::<Vec<_>>()
            })
            .collect();
        self.fail(format!(
            "no progress within {} ms after healing (groups with new commits: {groups_done:?})\n{}",
            self.config.heal_bound_ms,
            statuses.join("\n")
        ));
    }

    /// With the network healthy, every node of every group can take over
    /// (by leadership transfer) and commit as leader within a bound: a
    /// leader whose messages never leave, or that cannot commit, fails it.
    fn check_every_node_leads(&mut self) {
        self.next_client = u64::MAX;
        for g in 0..self.config.groups {
            for target in 1..=self.config.nodes {
                let deadline = self.now + 3_000;
                let before = self.acked_by.get(&(target, g)).copied().unwrap_or(0);
                let mut next_try = self.now;
                while self.acked_by.get(&(target, g)).copied().unwrap_or(0) == before {
                    if self.now >= deadline {
                        let st = self.nodes[target as usize - 1]
                            .node
                            .as_ref()
                            .and_then(|n| n.status(g));
                        self.fail(format!(
                            "node {target} could not lead group {g} and commit within 3 s of a healthy network: {st:?}"
                        ));
                    }
                    if self.now >= next_try {
                        next_try = self.now + 200;
                        let st = self.nodes[target as usize - 1]
                            .node
                            .as_ref()
                            .and_then(|n| n.status(g));
                        match st {
                            Some(st) if st.role == Role::Leader && st.committed_in_term => {
                                self.propose(Some((target, g)));
                            }
                            Some(st) if st.role != Role::Leader => {
                                if let Some(l) = st.leader {
                                    if let Some(node) = self.node_mut(l) {
                                        let _ = node.transfer_leader(g, target);
                                    }
                                    self.after(l as usize - 1, Output::default());
                                }
                            }
                            _ => {}
                        }
                    }
                    if !self.step(deadline.min(next_try), false) {
                        self.now = self.now.max(deadline.min(next_try));
                    }
                }
            }
        }
    }

    /// All nodes agree on the leader, commit index and HWM of every group,
    /// and every acknowledged batch is on every node.
    fn converged(&self) -> bool {
        for g in 0..self.config.groups {
            let mut seen = BTreeSet::new();
            for n in &self.nodes {
                let Some(st) = n.node.as_ref().and_then(|x| x.status(g)) else {
                    return false;
                };
                let Some(leader) = st.leader else {
                    return false;
                };
                seen.insert((leader, st.term, st.commit, st.high_watermark, st.last_index));
            }
            if seen.len() != 1 {
                return false;
            }
        }
        for n in &self.nodes {
            let Some(node) = n.node.as_ref() else {
                return false;
            };
            for (&(g, offset), &hash) in &self.acked {
                let Some(log) = node.log(g) else { return false };
                if offset < log.log_start_offset().unwrap_or(0) {
                    continue;
                }
                let ok = batches_in(log, offset, offset + 1)
                    .ok()
                    .and_then(|b| b.first().cloned())
                    .is_some_and(|(base, b)| base == offset && payload_hash(&b) == hash);
                if !ok {
                    return false;
                }
            }
        }
        true
    }

    fn run(mut self) -> SimReport {
        let chaos_until = self.config.chaos_ms;
        while self.step(chaos_until, true) {}
        self.heal();
        self.next_client = self.now + 1;
        self.check_liveness();
        self.check_every_node_leads();
        self.report.trace = self.trace.finish();
        self.report
    }
}

/// Runs one seed; a panic (an invariant, or raft-rs itself) names the seed.
pub(crate) fn run_seed(seed: u64, config: SimConfig) -> SimReport {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Sim::new(seed, config).run()
    }));
    match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "simulation seed {seed} failed; replay: RUNNEL_SIM_SEED={seed} cargo test -p runnel-raft sim -- --nocapture"
            );
            std::panic::resume_unwind(e)
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Seeds for one test: `RUNNEL_SIM_SEED` alone, or `count` seeds from
/// `first` (`RUNNEL_SIM_SEEDS` scales the total).
fn seeds(first: u64, share: u64) -> Vec<u64> {
    if let Some(s) = env_u64("RUNNEL_SIM_SEED") {
        return vec![s];
    }
    let total = env_u64("RUNNEL_SIM_SEEDS").unwrap_or(1000);
    let count = (total * share / 1000).max(1);
    (first..first + count).collect()
}

fn run_many(first: u64, share: u64, config: SimConfig) {
    let mut totals = SimReport::default();
    let seeds = seeds(first, share);
    for &seed in &seeds {
        let r = run_seed(seed, config.clone());
        totals.acked += r.acked;
        totals.leader_acked += r.leader_acked;
        totals.elections += r.elections;
        totals.crashes += r.crashes;
        totals.snapshots += r.snapshots;
        totals.failed_proposals += r.failed_proposals;
    }
    eprintln!(
        "{} seeds ({} nodes): acked {} (+{} acks=leader), failed {}, elections {}, crashes {}, snapshots {}",
        seeds.len(),
        config.nodes,
        totals.acked,
        totals.leader_acked,
        totals.failed_proposals,
        totals.elections,
        totals.crashes,
        totals.snapshots
    );
    assert!(totals.acked > 0, "the simulation acknowledged nothing");
}

#[test]
fn sim_three_nodes() {
    run_many(0, 350, SimConfig::small(3));
}

#[test]
fn sim_three_nodes_more() {
    run_many(100_000, 350, SimConfig::small(3));
}

#[test]
fn sim_five_nodes() {
    run_many(200_000, 300, SimConfig::small(5));
}

#[test]
fn sim_replays_a_seed_exactly() {
    let a = run_seed(7, SimConfig::small(3));
    let b = run_seed(7, SimConfig::small(3));
    assert_eq!(a, b);
}
