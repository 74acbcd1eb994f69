//! The Raft loop of a node: one OS thread owns the [`runnel_raft::Node`]
//! (every partition group and the controller group of this node) and does,
//! in a loop, what the node core asks: tick every [`RAFT_TICK`], feed
//! received messages and proposals, call `ready()` (which appends and
//! fsyncs), then hand messages to the transport, acknowledge proposals and
//! publish high watermarks and leadership.
//!
//! Everything arriving while the thread is busy (an fsync) is taken in one
//! go before the next `ready()`: many proposals and messages share one
//! fsync (group commit), and a peer's messages for many groups are handled
//! together. The thread is a plain OS thread because `ready()` blocks on
//! disk by design; async callers talk to it through a channel and get
//! their answers on oneshot channels.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use runnel_batch::VerifiedBatch;
use runnel_raft::eraftpb::{Message, MessageType};
use runnel_raft::{
    Acks, AppendInfo, Bootstrap, GroupId, GroupMessage, GroupStatus, Node, NodeConfig, NodeId,
    Output, ProposalError, ProposeError, Role,
};
use runnel_storage::Log;
use tokio::sync::{oneshot, watch};

use super::node::CONTROLLER_GROUP;
use super::transport::{Envelope, Inbound, Transport};

/// Length of one Raft tick. Elections time out after 10-20 ticks (1-2 s),
/// leaders heartbeat every 2 ticks.
pub(crate) const RAFT_TICK: Duration = Duration::from_millis(100);

/// How often the loop applies retention to every group's log (between
/// rounds, never between `ready()` and `advance()`: RAFT.md trap 10).
/// A follower left behind the new log start catches up from a snapshot.
const RETENTION_INTERVAL: Duration = Duration::from_secs(5);

/// Most inputs taken before `ready()` runs (bounds the latency of a tick).
const MAX_INPUTS_PER_ROUND: usize = 4096;

/// Most Raft entries a follower may lack for leadership to be handed to
/// it ([`RaftHandle::transfer_leader`]): raft-rs sends it the rest and
/// holds new proposals until it has them, so the lag bounds that pause.
pub(crate) const MAX_TRANSFER_LAG: u64 = 64;

/// Why a proposal did not end in an acknowledgement.
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum ProposeFailure {
    /// Not the leader; redirect to `leader` if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// Known leader.
        leader: Option<NodeId>,
    },
    /// Retry later (no leader yet, transfer, too much uncommitted).
    #[error("retry later: {0}")]
    Retry(String),
    /// Certainly not written (superseded by another leader's entry).
    #[error("not written: {0}")]
    NotWritten(String),
    /// May or may not have been written.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The group is not open here or the loop stopped.
    #[error("{0}")]
    Closed(String),
}

/// What this node knows of a group's leadership and replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GroupView {
    /// This node's role; `None` before the group ran.
    pub(crate) role: Option<Role>,
    /// Current term.
    pub(crate) term: u64,
    /// Known leader.
    pub(crate) leader: Option<NodeId>,
    /// Voters, in the order the group was opened with (a partition's
    /// placement: preferred leader first).
    pub(crate) voters: Vec<NodeId>,
    /// The in-sync replicas: on the leader, itself and the followers it
    /// heard from lately that replicate as a stream; on a follower, the set
    /// the leader sent with its last heartbeat (all voters until one came).
    pub(crate) in_sync: Vec<NodeId>,
}

/// A group as the rest of the node sees it: its log, its high watermark
/// and its leadership, kept up to date by the loop.
pub(crate) struct GroupShared {
    /// The group.
    pub(crate) group: GroupId,
    /// Its partition log (readers read below the high watermark).
    pub(crate) log: Arc<Log>,
    /// The high watermark (changes whenever it moves, and once more on close).
    pub(crate) hwm: watch::Sender<u64>,
    /// Leadership and replicas.
    pub(crate) view: Mutex<GroupView>,
    /// Set once the group closed (or failed).
    pub(crate) closed: AtomicBool,
}

impl GroupShared {
    /// A group over `log` whose committed prefix ends at `hwm`.
    pub(crate) fn new(group: GroupId, log: Arc<Log>, hwm: u64) -> Arc<GroupShared> {
        Arc::new(GroupShared {
            group,
            log,
            hwm: watch::Sender::new(hwm),
            view: Mutex::new(GroupView::default()),
            closed: AtomicBool::new(false),
        })
    }

    /// The current view.
    pub(crate) fn view(&self) -> GroupView {
        self.view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

type Reply<T> = oneshot::Sender<T>;

enum Input {
    Inbound(Inbound),
    Propose {
        group: GroupId,
        batch: VerifiedBatch,
        acks: Acks,
        reply: Option<Reply<Result<AppendInfo, ProposeFailure>>>,
    },
    Open {
        shared: Arc<GroupShared>,
        bootstrap: Bootstrap,
        reply: Reply<Result<(), String>>,
    },
    Close {
        group: GroupId,
        reply: Reply<()>,
    },
    Campaign(GroupId),
    TransferLeader {
        group: GroupId,
        to: NodeId,
    },
    Unreachable(NodeId),
    Stop,
}

/// The handle async code uses to reach the loop. Cheap to clone.
#[derive(Clone)]
pub(crate) struct RaftHandle {
    tx: std_mpsc::Sender<Input>,
    node_id: NodeId,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for RaftHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftHandle")
            .field("node_id", &self.node_id)
            .finish()
    }
}

impl RaftHandle {
    /// Starts the loop of node `config.id`; messages go out through
    /// `transport` (built with [`RaftHandle::unreachable_fn`] and
    /// [`RaftHandle::inbox_fn`] of a handle made by [`RaftHandle::channel`]).
    pub(crate) fn start(
        config: NodeConfig,
        transport: Transport,
        channel: (RaftHandle, RaftInbox),
    ) -> Result<RaftHandle, String> {
        let (handle, inbox) = channel;
        let node = Node::new(config).map_err(|e| format!("raft node: {e}"))?;
        let thread = std::thread::Builder::new()
            .name(format!("raft-{}", handle.node_id))
            .spawn(move || run_loop(node, inbox.0, transport))
            .map_err(|e| format!("cannot start the raft thread: {e}"))?;
        *handle.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(thread);
        Ok(handle)
    }

    /// A handle and the receiving end its loop will own; lets the
    /// transport be built (it needs the inbox) before the loop starts.
    pub(crate) fn channel(node_id: NodeId) -> (RaftHandle, RaftInbox) {
        let (tx, rx) = std_mpsc::channel();
        (
            RaftHandle {
                tx,
                node_id,
                thread: Arc::new(Mutex::new(None)),
            },
            RaftInbox(rx),
        )
    }

    /// Where the transport delivers received messages.
    pub(crate) fn inbox_fn(&self) -> super::transport::InboxFn {
        let tx = Mutex::new(self.tx.clone());
        Arc::new(move |m| {
            tx.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .send(Input::Inbound(m))
                .is_ok()
        })
    }

    /// Where the transport reports a peer it dropped messages for.
    pub(crate) fn unreachable_fn(&self) -> super::transport::UnreachableFn {
        let tx = Mutex::new(self.tx.clone());
        Arc::new(move |peer| {
            let _ = tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .send(Input::Unreachable(u64::from(peer)));
        })
    }

    /// Opens (recovering or bootstrapping) a group.
    pub(crate) async fn open(
        &self,
        shared: Arc<GroupShared>,
        bootstrap: Bootstrap,
    ) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Open {
                shared,
                bootstrap,
                reply,
            })
            .map_err(|_| "the raft loop stopped".to_string())?;
        rx.await.map_err(|_| "the raft loop stopped".to_string())?
    }

    /// Closes a group (pending proposals fail).
    pub(crate) async fn close(&self, group: GroupId) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Input::Close { group, reply }).is_ok() {
            let _ = rx.await;
        }
    }

    /// Proposes a batch; resolves per `acks`. With `wait == false` (acks=0)
    /// nothing is waited for and the result is `Ok(None)` once queued.
    pub(crate) fn propose(
        &self,
        group: GroupId,
        batch: VerifiedBatch,
        acks: Acks,
        wait: bool,
    ) -> impl Future<Output = Result<Option<AppendInfo>, ProposeFailure>> + Send + 'static {
        let (reply, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let sent = self
            .tx
            .send(Input::Propose {
                group,
                batch,
                acks,
                reply,
            })
            .is_ok();
        async move {
            if !sent {
                return Err(ProposeFailure::Closed("the raft loop stopped".into()));
            }
            match rx {
                None => Ok(None),
                Some(rx) => match rx.await {
                    Ok(r) => r.map(Some),
                    Err(_) => Err(ProposeFailure::Unknown(
                        "the raft loop stopped before answering".into(),
                    )),
                },
            }
        }
    }

    /// Asks the group to hold an election now (a node that should lead it).
    pub(crate) fn campaign(&self, group: GroupId) {
        let _ = self.tx.send(Input::Campaign(group));
    }

    /// Asks this node, if it leads the group, to hand leadership to `to`,
    /// provided `to` is in sync and at most [`MAX_TRANSFER_LAG`] entries
    /// behind (otherwise nothing happens; the caller asks again later).
    pub(crate) fn transfer_leader(&self, group: GroupId, to: NodeId) {
        let _ = self.tx.send(Input::TransferLeader { group, to });
    }

    /// Stops the loop and waits for it (every group's log stays open:
    /// their owners close them).
    pub(crate) fn stop(&self) {
        let _ = self.tx.send(Input::Stop);
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// The receiving end of a [`RaftHandle`]'s channel.
pub(crate) struct RaftInbox(std_mpsc::Receiver<Input>);

fn now_ms() -> i64 {
    crate::service::now_ms()
}

struct LoopState {
    node: Node,
    transport: Transport,
    groups: HashMap<GroupId, Arc<GroupShared>>,
    waiting: HashMap<(GroupId, runnel_raft::Ticket), Reply<Result<AppendInfo, ProposeFailure>>>,
    /// In-sync sets of the groups this node leads, sent with heartbeats.
    leader_isr: HashMap<GroupId, Vec<u32>>,
    /// In-sync sets the leaders of groups this node follows last sent.
    reported_isr: HashMap<GroupId, Vec<NodeId>>,
    /// Each group's voters in the order it was opened with (Raft keeps
    /// them sorted), for [`GroupView::voters`].
    placement: HashMap<GroupId, Vec<NodeId>>,
}

fn run_loop(node: Node, rx: std_mpsc::Receiver<Input>, transport: Transport) {
    let mut st = LoopState {
        node,
        transport,
        groups: HashMap::new(),
        waiting: HashMap::new(),
        leader_isr: HashMap::new(),
        reported_isr: HashMap::new(),
        placement: HashMap::new(),
    };
    let mut next_tick = Instant::now() + RAFT_TICK;
    let mut next_retention = Instant::now() + RETENTION_INTERVAL;
    'run: loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        let mut inputs = 0;
        match rx.recv_timeout(wait) {
            Ok(input) => {
                if !st.handle(input) {
                    break 'run;
                }
                inputs += 1;
                while inputs < MAX_INPUTS_PER_ROUND {
                    match rx.try_recv() {
                        Ok(input) => {
                            if !st.handle(input) {
                                break 'run;
                            }
                            inputs += 1;
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break 'run,
        }
        let now = Instant::now();
        if now >= next_tick {
            st.node.tick(now_ms());
            next_tick = now + RAFT_TICK;
            st.refresh_views();
        }
        if now >= next_retention {
            next_retention = now + RETENTION_INTERVAL;
            st.apply_retention();
        }
        // A leader's appends and heartbeats leave before its own fsync, so
        // followers write while it syncs (RAFT.md trap 8); the rest after.
        let transport = st.transport.clone();
        let isr = &st.leader_isr;
        let out = st.node.ready_with(|to, messages| {
            if let Ok(to) = u32::try_from(to) {
                transport.send(to, encode(messages, isr));
            }
        });
        st.carry_out(out);
    }
    for (_, reply) in st.waiting.drain() {
        let _ = reply.send(Err(ProposeFailure::Unknown("the node is stopping".into())));
    }
    tracing::debug!("raft loop stopped");
}

impl LoopState {
    /// Handles one input; false to stop.
    fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Inbound(Inbound { from, messages }) => {
                let mut decoded = Vec::with_capacity(messages.len());
                let mut reports = Vec::new();
                for Envelope {
                    group,
                    message,
                    leader_in_sync,
                } in messages
                {
                    match Message::parse_from_bytes(&message) {
                        Ok(msg) => {
                            if !leader_in_sync.is_empty()
                                && msg.get_msg_type() == MessageType::MsgHeartbeat
                            {
                                reports.push((group, msg.term, leader_in_sync));
                            }
                            decoded.push(GroupMessage { group, msg });
                        }
                        Err(e) => {
                            tracing::warn!(from, group, error = %e, "undecodable raft message dropped");
                        }
                    }
                }
                let unknown = self.node.step(u64::from(from), decoded);
                for group in unknown {
                    tracing::trace!(from, group, "raft message for a group not open here");
                }
                self.take_isr_reports(u64::from(from), reports);
            }
            Input::Propose {
                group,
                batch,
                acks,
                reply,
            } => match self.node.propose(group, batch, acks) {
                Ok(ticket) => {
                    if let Some(reply) = reply {
                        self.waiting.insert((group, ticket), reply);
                    }
                }
                Err(e) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(match e {
                            ProposeError::NotLeader { leader, .. } => {
                                ProposeFailure::NotLeader { leader }
                            }
                            ProposeError::Retry { reason, .. } => {
                                ProposeFailure::Retry(reason.to_string())
                            }
                            e @ ProposeError::Invalid { .. } => {
                                ProposeFailure::NotWritten(e.to_string())
                            }
                            e @ ProposeError::UnknownGroup(_) => {
                                ProposeFailure::Closed(e.to_string())
                            }
                        }));
                    }
                }
            },
            Input::Open {
                shared,
                bootstrap,
                reply,
            } => {
                let group = shared.group;
                let res = self
                    .node
                    .open_group(group, shared.log.clone(), &bootstrap)
                    .map_err(|e| e.to_string())
                    .map(|status| {
                        shared.hwm.send_replace(status.high_watermark);
                        let voters = in_order(status.voters, &bootstrap.voters);
                        let mut v = shared.view.lock().unwrap_or_else(PoisonError::into_inner);
                        v.role = Some(status.role);
                        v.term = status.term;
                        v.leader = status.leader;
                        v.voters = voters.clone();
                        v.in_sync = voters;
                    });
                if res.is_ok() {
                    self.groups.insert(group, shared);
                    self.placement.insert(group, bootstrap.voters);
                }
                let _ = reply.send(res);
            }
            Input::Close { group, reply } => {
                self.forget_group(group);
                if self.node.close_group(group).is_ok()
                    && let Some(shared) = self.groups.remove(&group)
                {
                    shared.closed.store(true, Ordering::Release);
                    shared.hwm.send_modify(|_| {});
                }
                let _ = reply.send(());
            }
            Input::Campaign(group) => {
                if let Err(e) = self.node.campaign(group) {
                    tracing::debug!(group, error = %e, "campaign refused");
                }
            }
            Input::TransferLeader { group, to } => {
                let ready = self
                    .node
                    .status(group)
                    .ok_or("the group is not open here")
                    .and_then(|status| transfer_ready(&status, to));
                match ready.map(|()| self.node.transfer_leader(group, to)) {
                    Ok(Ok(())) => {
                        tracing::info!(group, to, "handing leadership to the preferred leader")
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(group, to, error = %e, "leadership transfer refused")
                    }
                    Err(why) => tracing::debug!(group, to, why, "leadership transfer skipped"),
                }
            }
            Input::Unreachable(peer) => self.node.report_unreachable(peer),
            Input::Stop => return false,
        }
        true
    }

    /// Sends, acknowledges and publishes what `ready()` decided.
    fn carry_out(&mut self, out: Output) {
        if out.is_empty() {
            return;
        }
        let snapshots: BTreeMap<NodeId, Vec<GroupId>> =
            out.snapshots
                .iter()
                .fold(BTreeMap::new(), |mut m, &(group, to)| {
                    m.entry(to).or_insert_with(Vec::new).push(group);
                    m
                });
        for (to, messages) in out.messages {
            let envelopes = encode(messages, &self.leader_isr);
            let delivered = u32::try_from(to).is_ok_and(|to| self.transport.send(to, envelopes));
            for &group in snapshots.get(&to).into_iter().flatten() {
                self.node.report_snapshot(group, to, delivered);
            }
        }
        // The high watermark first: a client that reads right after its
        // acknowledgement sees what it wrote.
        for (group, hwm) in out.high_watermarks {
            if let Some(g) = self.groups.get(&group) {
                g.hwm.send_if_modified(|h| {
                    let moved = hwm > *h;
                    *h = (*h).max(hwm);
                    moved
                });
            }
        }
        for c in out.completions {
            if let Some(reply) = self.waiting.remove(&(c.group, c.ticket)) {
                let _ = reply.send(c.result.map_err(|e| match e {
                    ProposalError::Superseded { .. } => ProposeFailure::NotWritten(e.to_string()),
                    ProposalError::Unknown { .. } => ProposeFailure::Unknown(e.to_string()),
                }));
            }
        }
        for change in out.leadership {
            if let Some(g) = self.groups.get(&change.group) {
                let mut v = g.view.lock().unwrap_or_else(PoisonError::into_inner);
                v.role = Some(change.role);
                v.term = change.term;
                v.leader = change.leader;
            }
            tracing::debug!(group = change.group, term = change.term, leader = ?change.leader, role = ?change.role, "leadership changed");
        }
        for (group, reason) in out.failed {
            tracing::error!(group, %reason, "raft group failed and was closed");
            self.forget_group(group);
            if let Some(shared) = self.groups.remove(&group) {
                shared.closed.store(true, Ordering::Release);
                shared.hwm.send_modify(|_| {});
            }
        }
    }

    /// Deletes old segments of every partition group by its topic's
    /// retention settings (never past what is applied; readers see the new
    /// log start through the log itself). A failure is logged and leaves
    /// the log as it was; the next pass tries again.
    fn apply_retention(&mut self) {
        let now = now_ms();
        // The controller's log is the metadata itself (replayed at start).
        for (&group, shared) in self.groups.iter().filter(|(g, _)| **g != CONTROLLER_GROUP) {
            if let Err(e) = self.node.apply_retention(group, now) {
                tracing::warn!(group, log = %shared.log.dir().display(), error = %e, "retention failed");
            }
        }
    }

    /// Keeps the in-sync sets that leaders sent with their heartbeats
    /// (`(group, term, set)` from node `from`): a set counts only from the
    /// leader this node now knows for that term, after the step.
    fn take_isr_reports(&mut self, from: NodeId, reports: Vec<(GroupId, u64, Vec<u32>)>) {
        for (group, term, set) in reports {
            let current = self.node.status(group).is_some_and(|s| {
                s.term == term && s.leader == Some(from) && s.role != Role::Leader
            });
            if current {
                self.reported_isr
                    .insert(group, set.into_iter().map(u64::from).collect());
            }
        }
    }

    /// Drops what the loop keeps about a group that closed.
    fn forget_group(&mut self, group: GroupId) {
        self.leader_isr.remove(&group);
        self.reported_isr.remove(&group);
        self.placement.remove(&group);
    }

    /// Refreshes every group's voters and in-sync set (once per tick).
    fn refresh_views(&mut self) {
        for (group, shared) in &self.groups {
            let Some(status) = self.node.status(*group) else {
                continue;
            };
            let in_sync: Vec<NodeId> = if status.role == Role::Leader {
                let set: Vec<NodeId> = status
                    .replicas
                    .iter()
                    .filter(|r| r.in_sync)
                    .map(|r| r.node)
                    .collect();
                self.leader_isr.insert(
                    *group,
                    set.iter().filter_map(|&n| u32::try_from(n).ok()).collect(),
                );
                set
            } else {
                self.leader_isr.remove(group);
                self.reported_isr
                    .get(group)
                    .cloned()
                    .unwrap_or_else(|| status.voters.clone())
            };
            let mut v = shared.view.lock().unwrap_or_else(PoisonError::into_inner);
            v.role = Some(status.role);
            v.term = status.term;
            v.leader = status.leader;
            v.voters = match self.placement.get(group) {
                Some(order) => in_order(status.voters, order),
                None => status.voters,
            };
            v.in_sync = in_sync;
        }
    }
}

/// `voters` sorted by their position in `order` (those missing from it
/// last, by id).
fn in_order(mut voters: Vec<NodeId>, order: &[NodeId]) -> Vec<NodeId> {
    voters.sort_by_key(|v| (order.iter().position(|o| o == v).unwrap_or(usize::MAX), *v));
    voters
}

/// Whether leadership of the group whose state on this node is `status`
/// may go to `to` now: this node leads, and `to` is another voter in sync
/// and at most [`MAX_TRANSFER_LAG`] entries behind. `Err` says why not.
pub(crate) fn transfer_ready(status: &GroupStatus, to: NodeId) -> Result<(), &'static str> {
    if status.role != Role::Leader {
        return Err("not the leader");
    }
    if status.leader == Some(to) {
        return Err("already the leader");
    }
    let replica = status
        .replicas
        .iter()
        .find(|r| r.node == to)
        .ok_or("not a voter")?;
    if !replica.in_sync {
        return Err("not in sync");
    }
    if replica.matched.saturating_add(MAX_TRANSFER_LAG) < status.last_index {
        return Err("too far behind");
    }
    Ok(())
}

/// Protobuf-encodes messages for the wire (an unencodable one is dropped
/// and logged: Raft resends what matters). A heartbeat of a group this
/// node leads carries the group's in-sync set from `leader_isr`.
fn encode(messages: Vec<GroupMessage>, leader_isr: &HashMap<GroupId, Vec<u32>>) -> Vec<Envelope> {
    messages
        .into_iter()
        .filter_map(|GroupMessage { group, msg }| match msg.write_to_bytes() {
            Ok(bytes) => Some(Envelope {
                group,
                leader_in_sync: match msg.get_msg_type() {
                    MessageType::MsgHeartbeat => {
                        leader_isr.get(&group).cloned().unwrap_or_default()
                    }
                    _ => Vec::new(),
                },
                message: bytes.into(),
            }),
            Err(e) => {
                tracing::error!(group, error = %e, "cannot encode a raft message");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use runnel_raft::ReplicaStatus;

    use super::*;

    /// Node 1 leading a group of 1-3 whose last index is 1000.
    fn leading(replicas: [(u64, bool); 3]) -> GroupStatus {
        GroupStatus {
            group: 7,
            role: Role::Leader,
            term: 3,
            leader: Some(1),
            commit: 990,
            committed_in_term: true,
            high_watermark: 5000,
            first_index: 1,
            last_index: 1000,
            voters: vec![1, 2, 3],
            replicas: replicas
                .iter()
                .enumerate()
                .map(|(i, &(matched, in_sync))| ReplicaStatus {
                    node: i as u64 + 1,
                    matched,
                    in_sync,
                })
                .collect(),
        }
    }

    #[test]
    fn voters_keep_the_placement_order() {
        assert_eq!(in_order(vec![1, 2, 3], &[3, 1, 2]), vec![3, 1, 2]);
        assert_eq!(in_order(vec![1, 2, 3, 5], &[2, 3]), vec![2, 3, 1, 5]);
        assert_eq!(in_order(vec![1, 2], &[]), vec![1, 2]);
    }

    #[test]
    fn leadership_goes_only_to_an_in_sync_caught_up_voter() {
        let lag = MAX_TRANSFER_LAG;
        let cases: [(u32, GroupStatus, NodeId, Result<(), &str>); 7] = [
            (
                1,
                leading([(1000, true), (1000, true), (990, true)]),
                2,
                Ok(()),
            ),
            (
                2,
                leading([(1000, true), (1000 - lag, true), (0, false)]),
                2,
                Ok(()),
            ),
            (
                3,
                leading([(1000, true), (999 - lag, true), (0, false)]),
                2,
                Err("too far behind"),
            ),
            (
                4,
                leading([(1000, true), (1000, false), (0, false)]),
                2,
                Err("not in sync"),
            ),
            (
                5,
                leading([(1000, true), (1000, true), (1000, true)]),
                4,
                Err("not a voter"),
            ),
            (
                6,
                leading([(1000, true), (1000, true), (1000, true)]),
                1,
                Err("already the leader"),
            ),
            (
                7,
                GroupStatus {
                    role: Role::Follower,
                    leader: Some(2),
                    ..leading([(1000, true), (1000, true), (1000, true)])
                },
                3,
                Err("not the leader"),
            ),
        ];
        for (case, status, to, want) in cases {
            assert_eq!(transfer_ready(&status, to), want, "case {case}");
        }
    }
}
