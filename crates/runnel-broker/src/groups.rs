//! Consumer-group coordination on this node: the offsets topic and one
//! [`Coordinator`] (runnel-groups) per partition of it that this node leads.
//!
//! - **The offsets topic**, [`OFFSETS_TOPIC`], is an ordinary topic of
//!   [`OFFSETS_PARTITIONS`] partitions, replicated on min(3, nodes) nodes,
//!   kept forever (retention -1), created by the first group request on
//!   any node (through the controller in a cluster) and hidden from
//!   ListTopics. A group lives in partition
//!   [`runnel_groups::offsets_partition`] of it; that partition's leader
//!   coordinates the group. Any other node answers `NOT_COORDINATOR`
//!   naming the leader.
//! - **Loading.** When a request finds this node leading a partition whose
//!   coordinator is not loaded, it appends a barrier record with acks=all
//!   (which commits everything earlier leaders wrote) and replays the
//!   partition up to it. Requests of that partition wait meanwhile.
//! - **Commits** are checked against the coordinator, appended with
//!   acks=all, and applied only once stored: a commit that was answered
//!   survives any minority of nodes. Commits (and heartbeats) of one
//!   offsets partition are serialized by its lock, so the log order is the
//!   apply order.
//! - **Unloading.** A ticker (every [`TICK`]) expires members whose
//!   session passed and drops coordinators whose partition this node no
//!   longer leads; every request checks leadership too. A node that lost
//!   and regained leadership between two checks keeps its loaded state,
//!   which may then miss commits the interim leader took (membership
//!   reconverges by itself; such a window needs two elections within
//!   [`TICK`]) — unless it appends meanwhile: every append checks that
//!   its record landed right after the last one this coordinator wrote,
//!   and a gap (another leader's records, a new term's Raft no-op) makes
//!   the next request reload the partition.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_batch::{BatchBuilder, BatchIter, Compression, NewRecord, VerifiedBatch};
use runnel_groups::{Coordinator, GroupRecord, offsets_partition};
use runnel_proto::v1::TopicConfig;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use crate::cluster::node::ClusterNode;
use crate::config::TopicSettings;
use crate::error::{BrokerError, Result};
use crate::metrics::{GroupLabels, GroupPartitionLabels, Metrics};
use crate::registry::{Topic, TopicRegistry};
use crate::replica::{AckLevel, NodeRef, Replica};
use crate::service::{ShutdownSignal, now_ms};

/// Name of the internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Partitions of the offsets topic (fixed: it decides where groups live).
pub const OFFSETS_PARTITIONS: u32 = 8;
/// Replication factor of the offsets topic, at most the number of nodes.
const OFFSETS_REPLICATION: u32 = 3;
/// How often sessions are checked and leadership re-read.
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// Longest wait for a loading barrier to be committed.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read per step while replaying.
const REPLAY_READ_BYTES: usize = 1 << 20;

/// A loaded coordinator and the replica it was loaded from.
pub(crate) struct Loaded {
    /// The groups of the partition.
    pub(crate) coordinator: Coordinator,
    /// The partition's replica (reload when the registry holds another).
    replica: Arc<dyn Replica>,
    /// The offset the next record appended here should get if nobody else
    /// wrote since the load (see `stale`).
    next_offset: u64,
    /// Set when an append landed elsewhere than `next_offset`: another
    /// leader (or a Raft no-op of a new term) wrote in between, so this
    /// state may have missed records; it is reloaded before the next use.
    stale: bool,
}

impl Loaded {
    /// Appends `records` with acks=all and applies them once stored.
    pub(crate) async fn append(&mut self, group: &str, records: Vec<GroupRecord>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let batch = encode_batch(&records)?;
        // Stale until the records are applied: if this future is dropped
        // while the append is in flight (the client hung up, and the RPC
        // with it), or the append fails without saying whether it was
        // written, the records may be in the log but not in `coordinator`,
        // so the next user reloads instead of answering from memory.
        let was_stale = std::mem::replace(&mut self.stale, true);
        let appended = self
            .replica
            .append(batch, AckLevel::All)
            .await
            .map_err(|e| coordinator_error(group, &self.replica, e))?;
        self.stale = was_stale || appended.base_offset != self.next_offset;
        self.next_offset = appended.next_offset;
        for r in &records {
            self.coordinator.apply(r);
        }
        Ok(())
    }
}

/// Ticks between two refreshes of the group metrics.
const METRICS_EVERY_TICKS: u32 = 10;

/// The group coordinators of this node.
pub(crate) struct Coordinators {
    topics: Arc<TopicRegistry>,
    metrics: Arc<Metrics>,
    cluster: Option<Arc<ClusterNode>>,
    /// One slot per partition of the offsets topic.
    slots: Vec<Mutex<Option<Loaded>>>,
    /// Serializes creating the offsets topic.
    create: Mutex<()>,
    /// Origin of the monotonic clock fed to coordinators.
    origin: Instant,
}

impl Coordinators {
    pub(crate) fn new(
        topics: Arc<TopicRegistry>,
        cluster: Option<Arc<ClusterNode>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Coordinators {
            topics,
            metrics,
            cluster,
            slots: (0..OFFSETS_PARTITIONS).map(|_| Mutex::new(None)).collect(),
            create: Mutex::new(()),
            origin: Instant::now(),
        }
    }

    /// Milliseconds of the monotonic clock sessions are measured with.
    pub(crate) fn mono_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// This node.
    pub(crate) fn node(&self) -> &NodeRef {
        self.topics.node()
    }

    /// The registry (topic lookups for partition counts and lag).
    pub(crate) fn topics(&self) -> &TopicRegistry {
        &self.topics
    }

    /// Partition count of `topic`, if it exists.
    pub(crate) fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topics.get(topic).ok().map(|t| t.settings.partitions)
    }

    /// The offsets topic, created when missing.
    pub(crate) async fn offsets_topic(&self) -> Result<Arc<Topic>> {
        if let Ok(t) = self.topics.get(OFFSETS_TOPIC) {
            return Ok(t);
        }
        let _creating = self.create.lock().await;
        if let Ok(t) = self.topics.get(OFFSETS_TOPIC) {
            return Ok(t);
        }
        let nodes = self
            .cluster
            .as_ref()
            .map_or(1, |c| u32::try_from(c.peers().len()).unwrap_or(1));
        let config = TopicConfig {
            partitions: Some(OFFSETS_PARTITIONS),
            replication_factor: Some(nodes.min(OFFSETS_REPLICATION)),
            retention_ms: Some(-1),
            ..TopicConfig::default()
        };
        tracing::info!(topic = OFFSETS_TOPIC, "creating the consumer offsets topic");
        let created = match &self.cluster {
            Some(cluster) => cluster.create_topic(OFFSETS_TOPIC, Some(&config)).await,
            None => {
                let settings = TopicSettings::resolve(Some(&config), 1)?;
                self.topics.create(OFFSETS_TOPIC, settings).await
            }
        };
        match created {
            Ok(t) => Ok(t),
            Err(BrokerError::TopicAlreadyExists(_)) => self.topics.get(OFFSETS_TOPIC),
            Err(e) if e.reason() == runnel_proto::v1::ErrorReason::TopicAlreadyExists => {
                self.topics.get(OFFSETS_TOPIC).map_err(|_| {
                    BrokerError::Unavailable(
                        "the consumer offsets topic is being created; retry".into(),
                    )
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The offsets partition of `group` and its coordinator, loaded; fails
    /// with NOT_COORDINATOR when this node does not lead that partition.
    pub(crate) async fn lock(&self, group: &str) -> Result<MappedMutexGuard<'_, Loaded>> {
        runnel_groups::validate_group_name(group)?;
        let partition = offsets_partition(group, OFFSETS_PARTITIONS);
        self.lock_partition(partition, group).await
    }

    /// Partition `partition` of the offsets topic, loaded; `group` names
    /// the group asked about in errors.
    pub(crate) async fn lock_partition(
        &self,
        partition: u32,
        group: &str,
    ) -> Result<MappedMutexGuard<'_, Loaded>> {
        let topic = self.offsets_topic().await?;
        let replica = topic.partition(partition)?.clone();
        let mut slot = self.slots[partition as usize].lock().await;
        if !replica.is_leader() {
            *slot = None;
            return Err(not_coordinator(group, &replica));
        }
        let current = slot
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(&l.replica, &replica) && !l.stale);
        if !current {
            *slot = None;
            let (coordinator, next_offset) = self.load(group, &replica).await?;
            tracing::info!(partition, "loaded the group coordinator");
            *slot = Some(Loaded {
                coordinator,
                replica,
                next_offset,
                stale: false,
            });
        }
        MutexGuard::try_map(slot, Option::as_mut)
            .map_err(|_| BrokerError::Internal("coordinator slot not loaded".into()))
    }

    /// Writes a barrier (acks=all) and replays the partition up to it;
    /// returns the state and the offset after the barrier.
    async fn load(&self, group: &str, replica: &Arc<dyn Replica>) -> Result<(Coordinator, u64)> {
        let prefix = format!("{}-{:x}", self.node().id, now_ms());
        let mut coordinator = Coordinator::new(prefix);
        let batch = encode_batch(&[GroupRecord::Barrier])?;
        let appended = replica
            .append(batch, AckLevel::All)
            .await
            .map_err(|e| coordinator_error(group, replica, e))?;
        let mut hwm = replica.watch_high_watermark();
        tokio::time::timeout(LOAD_TIMEOUT, hwm.wait_for(|h| *h >= appended.next_offset))
            .await
            .map_err(|_| {
                BrokerError::Unavailable(format!(
                    "the coordinator of group {group:?} is loading; retry"
                ))
            })?
            .map_err(|_| BrokerError::Unavailable("node shutting down".into()))?;
        let mut offset = replica.offsets().log_start;
        while offset < appended.next_offset {
            let read = replica
                .read(offset, REPLAY_READ_BYTES)
                .await
                .map_err(|e| coordinator_error(group, replica, e))?;
            if read.batch_count == 0 {
                break;
            }
            for view in BatchIter::new(&read.bytes) {
                let view = view.map_err(|e| {
                    BrokerError::Internal(format!("corrupt batch in {OFFSETS_TOPIC}: {e}"))
                })?;
                if view.is_control() {
                    continue;
                }
                let base = view.header().base_offset;
                let records = view.records().map_err(|e| {
                    BrokerError::Internal(format!("corrupt batch in {OFFSETS_TOPIC}: {e}"))
                })?;
                for record in records.iter() {
                    let record = record.map_err(|e| {
                        BrokerError::Internal(format!("corrupt record in {OFFSETS_TOPIC}: {e}"))
                    })?;
                    if base + u64::from(record.offset_delta) < offset {
                        continue;
                    }
                    match GroupRecord::decode(record.value) {
                        Ok(r) => coordinator.apply(&r),
                        // A record of a later version: skip it rather than
                        // refuse to coordinate (its group may be off).
                        Err(e) => tracing::warn!(error = %e, "skipping an unreadable group record"),
                    }
                }
            }
            offset = read.next_offset;
        }
        Ok((coordinator, appended.next_offset))
    }

    /// Expires sessions and drops coordinators of partitions no longer led.
    async fn tick(&self) {
        let now = self.mono_ms();
        for slot in &self.slots {
            let Ok(mut slot) = slot.try_lock() else {
                continue;
            };
            let Some(loaded) = slot.as_mut() else {
                continue;
            };
            if !loaded.replica.is_leader() || loaded.replica.is_closed() {
                *slot = None;
                continue;
            }
            let counts = |t: &str| self.partition_count(t);
            for (group, member) in loaded.coordinator.expire(now, &counts) {
                tracing::info!(group, member, "member session expired");
            }
        }
    }

    /// Refills the group metrics from the loaded coordinators (busy ones
    /// keep their previous values out: the next refresh has them).
    fn refresh_metrics(&self) {
        let m = &self.metrics;
        m.group_members.clear();
        m.group_committed.clear();
        m.group_lag.clear();
        let node = self.node().id;
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for slot in &self.slots {
            let Ok(slot) = slot.try_lock() else {
                continue;
            };
            let Some(loaded) = slot.as_ref() else {
                continue;
            };
            for (group, _, members) in loaded.coordinator.list() {
                m.group_members
                    .get_or_create(&GroupLabels {
                        group: group.clone(),
                    })
                    .set(gauge(members as u64));
                for (tp, c) in loaded.coordinator.offsets(&group) {
                    let l = GroupPartitionLabels {
                        group: group.clone(),
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                    };
                    m.group_committed.get_or_create(&l).set(gauge(c.offset));
                    let hwm = self.topics.get(&tp.topic).ok().and_then(|t| {
                        let r = t.partitions.get(tp.partition as usize)?;
                        r.replicas()
                            .contains(&node)
                            .then(|| r.offsets().high_watermark)
                    });
                    if let Some(h) = hwm {
                        m.group_lag
                            .get_or_create(&l)
                            .set(gauge(h.saturating_sub(c.offset)));
                    }
                }
            }
        }
    }

    /// Ticks until shutdown.
    pub(crate) async fn run(self: Arc<Self>, stop: ShutdownSignal) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = interval.tick() => self.tick().await,
                () = stop.wait() => return,
            }
            ticks += 1;
            if ticks % METRICS_EVERY_TICKS == 0 {
                self.refresh_metrics();
            }
        }
    }

    /// The leader of each offsets partition (None: unknown), if the topic
    /// exists.
    pub(crate) fn leaders(&self) -> Option<Vec<(u32, bool, Option<NodeRef>)>> {
        let topic = self.topics.get(OFFSETS_TOPIC).ok()?;
        Some(
            topic
                .partitions
                .iter()
                .enumerate()
                .map(|(p, r)| (p as u32, r.is_leader(), r.leader()))
                .collect(),
        )
    }
}

/// The NOT_COORDINATOR error naming `replica`'s leader.
fn not_coordinator(group: &str, replica: &Arc<dyn Replica>) -> BrokerError {
    let leader = replica.leader();
    BrokerError::NotCoordinator {
        group: group.to_string(),
        leader_id: leader.as_ref().map_or(0, |l| l.id),
        leader_address: leader.map(|l| l.address).unwrap_or_default(),
    }
}

/// A replica failure on the offsets partition as seen by group callers.
fn coordinator_error(
    group: &str,
    replica: &Arc<dyn Replica>,
    e: crate::replica::ReplicaError,
) -> BrokerError {
    match e {
        crate::replica::ReplicaError::NotLeader { .. } => not_coordinator(group, replica),
        e => BrokerError::Unavailable(format!(
            "the coordinator of group {group:?} cannot store records now ({e}); retry"
        )),
    }
}

/// Checks topics and partitions of commits: all exist, none twice.
pub(crate) fn check_partitions<'a>(
    coordinators: &Coordinators,
    partitions: impl Iterator<Item = (&'a str, u32)>,
) -> Result<()> {
    let mut seen = BTreeSet::new();
    let mut counts = BTreeMap::new();
    for (topic, partition) in partitions {
        let count = match counts.get(topic) {
            Some(&c) => c,
            None => {
                let c = coordinators
                    .partition_count(topic)
                    .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))?;
                counts.insert(topic, c);
                c
            }
        };
        if partition >= count {
            return Err(BrokerError::UnknownPartition {
                topic: topic.to_string(),
                partition,
                count,
            });
        }
        if !seen.insert((topic, partition)) {
            return Err(BrokerError::InvalidArgument(format!(
                "offsets: {topic}-{partition} appears more than once"
            )));
        }
    }
    Ok(())
}

/// One batch of group records for the offsets topic, keyed by group (the
/// barrier, of no group, has no key).
fn encode_batch(records: &[GroupRecord]) -> Result<VerifiedBatch> {
    let encoded: Vec<Vec<u8>> = records.iter().map(GroupRecord::encode).collect();
    let mut b = BatchBuilder::new(Compression::None);
    let ts = now_ms();
    for (record, bytes) in records.iter().zip(&encoded) {
        let group = record.group();
        b.push(NewRecord {
            key: (!group.is_empty()).then_some(group.as_bytes()),
            value: bytes,
            headers: &[],
            timestamp: ts,
        });
    }
    b.finish_verified()
        .map_err(|e| BrokerError::Internal(format!("encoding group records: {e}")))
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    use super::*;
    use runnel_storage::FlushPolicy;

    use crate::config::BrokerConfig;

    /// A commit whose RPC is dropped while its append is in flight (the
    /// client hung up) is in the log; the next user of the coordinator
    /// must see it (a reload), not the memory that missed it.
    #[tokio::test]
    async fn a_commit_dropped_in_flight_is_seen_by_the_next_user() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = BrokerConfig::new(dir.path(), "127.0.0.1:0");
        config.flush = FlushPolicy::Always;
        let metrics = Arc::new(Metrics::new());
        let topics = Arc::new(
            TopicRegistry::open(&config, metrics.clone())
                .await
                .expect("registry"),
        );
        let groups = Coordinators::new(topics, None, metrics);
        let commit = GroupRecord::OffsetCommit {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
            offset: 42,
            timestamp: 1,
        };
        {
            let mut loaded = groups.lock("g").await.expect("loaded");
            let mut append = pin!(loaded.append("g", vec![commit]));
            let mut cx = Context::from_waker(Waker::noop());
            assert!(
                append.as_mut().poll(&mut cx).is_pending(),
                "an acks=all append with flush=always waits for its fsync"
            );
            // Dropped here, in flight.
        }
        let loaded = groups.lock("g").await.expect("loaded again");
        assert_eq!(
            loaded.coordinator.committed("g", "t", 0).map(|c| c.offset),
            Some(42)
        );
    }
}
