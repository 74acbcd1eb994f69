//! A node of a cluster: the Raft loop, the transport, the controller group
//! (group 0, whose entries are `runnel_cluster::Command`s) and the
//! partition replicas this node holds.
//!
//! Every node applies the controller's committed entries in order to its
//! own [`ClusterState`], then reconciles: it opens the Raft groups of the
//! partitions assigned to it, builds the topics the services see (a
//! [`RaftReplica`] where it holds a replica, a [`RemoteReplica`] that
//! redirects elsewhere) and removes deleted ones. Topic create and delete
//! are proposed to the controller on its leader; other nodes forward them
//! there. The controller's leader registers every node of `--peers`.
//!
//! Layout under the data directory:
//!
//! ```text
//! cluster/controller/            the controller group's log (+ raft.state)
//! cluster/topics/<name>~<id>/<p>/ one partition replica (log + raft.state)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use runnel_batch::{BatchBuilder, BatchIter, Compression, NewRecord};
use runnel_cluster::{ClusterError, ClusterState, Command, ReplicaSpec, TopicId};
use runnel_proto::v1::admin_service_client::AdminServiceClient;
use runnel_proto::v1::{
    CreatePartitionsRequest, CreateTopicRequest, DeleteTopicRequest, DescribeTopicResponse,
    TopicConfig,
};
use runnel_raft::{Acks, Bootstrap, NodeConfig, Role};
use runnel_storage::{FlushPolicy, Log, LogConfig};
use tokio::sync::watch;

use super::driver::{GroupShared, ProposeFailure, RaftHandle};
use super::replica::{Peers, RaftReplica, RemoteReplica};
use super::transport::{RaftSvc, Transport};
use crate::config::{BrokerConfig, TopicSettings};
use crate::error::{BrokerError, Result};
use crate::metrics::Metrics;
use crate::registry::{Topic, TopicRegistry};
use crate::replica::Replica;
use crate::service::ShutdownSignal;

mod balance;

/// The controller's Raft group.
pub(crate) const CONTROLLER_GROUP: u64 = 0;
/// Directory of the cluster's data in the data directory.
pub(crate) const CLUSTER_DIR: &str = "cluster";
/// How long an admin call waits for the controller to commit and apply.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for other nodes to learn of a topic change.
const PROPAGATION_WAIT: Duration = Duration::from_secs(2);
/// Most apply results remembered for proposers.
const RESULTS_KEPT: usize = 1024;

/// The Raft group of a partition: unique per (topic id, partition).
pub(crate) fn partition_group(topic: TopicId, partition: u32) -> u64 {
    topic.0 * runnel_cluster::GROUPS_PER_TOPIC + u64::from(partition)
}

/// A cluster node's replication and metadata.
pub(crate) struct ClusterNode {
    node_id: u32,
    peers: Peers,
    raft: RaftHandle,
    controller: Arc<GroupShared>,
    state: RwLock<ClusterState>,
    applied: watch::Sender<u64>,
    results: Mutex<BTreeMap<u64, std::result::Result<(), ClusterError>>>,
    topics: Arc<TopicRegistry>,
    metrics: Arc<Metrics>,
    dir: PathBuf,
    /// Partition groups open here.
    hosted: Mutex<HashMap<u64, Arc<GroupShared>>>,
}

impl ClusterNode {
    /// Starts the Raft loop, the transport and the controller group, and
    /// the tasks that apply metadata and register the nodes. Returns the
    /// node and the `RaftService` to serve.
    pub(crate) async fn start(
        config: &BrokerConfig,
        topics: Arc<TopicRegistry>,
        metrics: Arc<Metrics>,
        stop: ShutdownSignal,
    ) -> Result<(Arc<ClusterNode>, RaftSvc)> {
        let node_id = config.node_id;
        let peers: Peers = Arc::new(config.peers.clone());
        let dir = config.data_dir.join(CLUSTER_DIR);
        let (handle, inbox) = RaftHandle::channel(u64::from(node_id));
        let others: BTreeMap<u32, String> = peers
            .iter()
            .filter(|(id, _)| **id != node_id)
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        let transport = Transport::start(node_id, &others, handle.unreachable_fn(), stop.clone());
        let svc = RaftSvc::new(
            node_id,
            others.keys().copied().collect(),
            handle.inbox_fn(),
            stop.clone(),
        );
        let node_config = NodeConfig {
            id: u64::from(node_id),
            seed: u64::from(node_id).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ now_nanos(),
            ..NodeConfig::default()
        };
        let raft = RaftHandle::start(node_config, transport, (handle, inbox))
            .map_err(BrokerError::Internal)?;

        let controller_dir = dir.join("controller");
        let log = open_log(
            controller_dir,
            LogConfig {
                flush: FlushPolicy::Never,
                segment_bytes: 64 << 20,
                max_batch_bytes: 1 << 20,
                // Every node rebuilds the metadata by replaying this log:
                // nothing of it may ever be deleted.
                retention_ms: None,
                retention_bytes: None,
                ..LogConfig::default()
            },
        )
        .await?;
        let controller = GroupShared::new(CONTROLLER_GROUP, log, 0);
        let bootstrap = Bootstrap {
            voters: peers.keys().map(|&id| u64::from(id)).collect(),
            created_ms: 0,
        };
        raft.open(controller.clone(), bootstrap)
            .await
            .map_err(|e| BrokerError::Internal(format!("controller group: {e}")))?;
        // The lowest id asks for votes at once: a cluster starting together
        // has a controller without waiting for an election timeout.
        if peers.keys().next() == Some(&node_id) {
            raft.campaign(CONTROLLER_GROUP);
        }

        let node = Arc::new(ClusterNode {
            node_id,
            peers,
            raft,
            controller,
            state: RwLock::new(ClusterState::new()),
            applied: watch::Sender::new(0),
            results: Mutex::new(BTreeMap::new()),
            topics,
            metrics,
            dir,
            hosted: Mutex::new(HashMap::new()),
        });
        tokio::spawn(node.clone().apply_loop(stop.clone()));
        tokio::spawn(node.clone().register_loop(stop.clone()));
        tokio::spawn(node.clone().balance_loop(stop));
        Ok((node, svc))
    }

    /// Every node of the cluster.
    pub(crate) fn peers(&self) -> &BTreeMap<u32, String> {
        &self.peers
    }

    /// The controller's leader, if known.
    pub(crate) fn controller_leader(&self) -> Option<u32> {
        self.controller
            .view()
            .leader
            .and_then(|l| u32::try_from(l).ok())
    }

    /// Stops the Raft loop (after the services stopped).
    pub(crate) fn stop(&self) {
        self.raft.stop();
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, ClusterState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies committed controller entries as they come, then reconciles.
    async fn apply_loop(self: Arc<Self>, stop: ShutdownSignal) {
        let mut hwm = self.controller.hwm.subscribe();
        let mut next = 0u64;
        loop {
            let target = *hwm.borrow_and_update();
            while next < target {
                let log = self.controller.log.clone();
                let from = next;
                let read =
                    tokio::task::spawn_blocking(move || log.read(from, target, 1 << 20)).await;
                let batches = match read {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot read the controller log; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    Err(_) => return,
                };
                if batches.batch_count == 0 {
                    break;
                }
                let mut last_index = None;
                for view in BatchIter::new(&batches.bytes) {
                    let view = match view {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::error!(error = %e, "corrupt controller entry");
                            break;
                        }
                    };
                    let index = view.header().raft_index;
                    last_index = Some(index);
                    if view.is_control() || view.next_offset() <= from {
                        continue;
                    }
                    self.apply_batch(index, &view);
                }
                next = batches.next_offset;
                self.reconcile().await;
                if let Some(i) = last_index {
                    self.applied.send_if_modified(|a| {
                        let moved = i > *a;
                        *a = (*a).max(i);
                        moved
                    });
                }
            }
            tokio::select! {
                changed = hwm.changed() => if changed.is_err() { return },
                () = stop.wait() => return,
            }
        }
    }

    fn apply_batch(&self, index: u64, view: &runnel_batch::BatchView<'_>) {
        let records = match view.records() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(index, error = %e, "undecodable controller entry skipped");
                return;
            }
        };
        for r in records.iter() {
            let res = r
                .map_err(|e| e.to_string())
                .and_then(|r| Command::decode(r.value).map_err(|e| e.to_string()));
            let outcome = match res {
                Ok(cmd) => {
                    let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
                    match state.apply(index, &cmd) {
                        Ok(applied) => {
                            tracing::info!(index, ?cmd, "metadata change applied");
                            let _ = applied;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => {
                    tracing::error!(index, error = %e, "undecodable controller command skipped");
                    Err(ClusterError::InvalidArgument(e))
                }
            };
            let mut results = self.results.lock().unwrap_or_else(PoisonError::into_inner);
            results.insert(index, outcome);
            while results.len() > RESULTS_KEPT {
                results.pop_first();
            }
        }
    }

    /// Makes the local replicas and the registry match the metadata.
    async fn reconcile(&self) {
        let (wanted, topics): (Vec<ReplicaSpec>, Vec<runnel_cluster::Topic>) = {
            let state = self.state();
            (
                state.replicas_on(self.node_id),
                state.topics().values().cloned().collect(),
            )
        };
        // Open the groups assigned here.
        for spec in &wanted {
            let group = spec.group;
            if self
                .hosted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(&group)
            {
                continue;
            }
            if let Err(e) = self.open_partition(spec, group).await {
                tracing::error!(topic = %spec.id.name, partition = spec.id.partition, error = %e, "cannot open a partition replica");
            }
        }
        // Topics: add new ones, drop deleted ones.
        let known: BTreeMap<String, TopicId> =
            topics.iter().map(|t| (t.name.clone(), t.id)).collect();
        for t in &topics {
            let present = self.topics.get(&t.name).ok().is_some_and(|existing| {
                existing.cluster_id == Some(t.id.0)
                    && existing.partitions.len() == t.partitions.len()
            });
            if !present {
                let topic = self.build_topic(t);
                self.topics.insert(topic);
            }
        }
        for existing in self.topics.list() {
            let keep = known
                .get(&existing.name)
                .is_some_and(|id| existing.cluster_id == Some(id.0));
            if !keep {
                self.remove_topic(&existing).await;
            }
        }
    }

    async fn open_partition(&self, spec: &ReplicaSpec, group: u64) -> Result<()> {
        let dir = self
            .dir
            .join("topics")
            .join(format!("{}~{}", spec.id.name, spec.id.topic.0))
            .join(spec.id.partition.to_string());
        let log = open_log(
            dir,
            settings_of(&spec.settings).log_config(FlushPolicy::Never),
        )
        .await?;
        let shared = GroupShared::new(group, log, 0);
        let created_ms = {
            let state = self.state();
            state
                .topic(&spec.id.name)
                .and_then(|t| t.partitions.get(spec.id.partition as usize))
                .map_or(0, |p| p.created_ms)
        };
        let bootstrap = Bootstrap {
            voters: spec.replicas.iter().map(|&id| u64::from(id)).collect(),
            created_ms,
        };
        self.raft
            .open(shared.clone(), bootstrap)
            .await
            .map_err(BrokerError::Internal)?;
        self.hosted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(group, shared);
        // The preferred leader asks for votes at once: the first election
        // does not wait for a timeout, and leaders start out balanced.
        if spec.replicas.first() == Some(&self.node_id) {
            self.raft.campaign(group);
        }
        Ok(())
    }

    fn build_topic(&self, t: &runnel_cluster::Topic) -> Arc<Topic> {
        let hosted = self.hosted.lock().unwrap_or_else(PoisonError::into_inner);
        let mut partitions: Vec<Arc<dyn Replica>> = Vec::with_capacity(t.partitions.len());
        let mut counters = Vec::with_capacity(t.partitions.len());
        for (p, assignment) in t.partitions.iter().enumerate() {
            let group = partition_group(t.id, p as u32);
            match hosted.get(&group) {
                Some(shared) => partitions.push(Arc::new(RaftReplica {
                    shared: shared.clone(),
                    raft: self.raft.clone(),
                    peers: self.peers.clone(),
                })),
                None => partitions.push(Arc::new(RemoteReplica {
                    replicas: assignment.replicas.clone(),
                    peers: self.peers.clone(),
                    hwm: watch::Sender::new(0),
                })),
            }
            counters.push(self.metrics.partition(&t.name, p as u32));
        }
        Arc::new(Topic {
            name: t.name.clone(),
            settings: settings_of(&t.settings),
            partitions,
            counters,
            sticky: AtomicU32::new(0),
            cluster_id: Some(t.id.0),
        })
    }

    async fn remove_topic(&self, topic: &Topic) {
        self.topics.remove(&topic.name);
        for (p, replica) in topic.partitions.iter().enumerate() {
            let _ = replica.close().await;
            self.metrics.remove_partition(&topic.name, p as u32);
            if let Some(id) = topic.cluster_id {
                self.hosted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&partition_group(TopicId(id), p as u32));
            }
        }
        if let Some(id) = topic.cluster_id {
            let dir = self.dir.join("topics").join(format!("{}~{id}", topic.name));
            let res = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await;
            if let Ok(Err(e)) = res
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(topic = %topic.name, error = %e, "cannot remove a deleted topic's files");
            }
        }
        tracing::info!(topic = %topic.name, "topic deleted");
    }

    /// On the controller's leader: registers every node of `--peers`.
    async fn register_loop(self: Arc<Self>, stop: ShutdownSignal) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(300)) => {}
                () = stop.wait() => return,
            }
            if self.controller.view().role != Some(Role::Leader) {
                continue;
            }
            let missing: Vec<(u32, String)> = {
                let state = self.state();
                self.peers
                    .iter()
                    .filter(|(id, addr)| {
                        state.brokers().get(id).is_none_or(|b| &b.address != *addr)
                    })
                    .map(|(id, a)| (*id, a.clone()))
                    .collect()
            };
            for (id, address) in missing {
                let cmd = Command::RegisterBroker {
                    id,
                    address,
                    rack: None,
                };
                if let Err(e) = self.propose(&cmd).await {
                    tracing::debug!(id, error = %e, "registering a node failed; retrying");
                }
            }
        }
    }

    /// Proposes `cmd` to the controller (this node must lead it) and waits
    /// until it is applied here; returns the apply result.
    async fn propose(&self, cmd: &Command) -> Result<()> {
        let encoded = cmd.encode();
        let mut b = BatchBuilder::new(Compression::None);
        b.push(NewRecord {
            key: None,
            value: &encoded,
            headers: &[],
            timestamp: crate::service::now_ms(),
        });
        let batch = b
            .finish_verified()
            .map_err(|e| BrokerError::Internal(format!("encoding a metadata entry: {e}")))?;
        let info = self
            .raft
            .propose(CONTROLLER_GROUP, batch, Acks::Quorum, true)
            .await
            .map_err(|e| self.not_leader_or_unavailable(e))?
            .ok_or_else(|| BrokerError::Internal("no append info".into()))?;
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(ADMIN_TIMEOUT, applied.wait_for(|a| *a >= info.raft_index))
            .await
            .map_err(|_| {
                BrokerError::Unavailable(
                    "the metadata change was not applied in time; check with describe and retry"
                        .into(),
                )
            })?
            .map_err(|_| BrokerError::Unavailable("node shutting down".into()))?;
        let result = self
            .results
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&info.raft_index)
            .cloned()
            .unwrap_or(Ok(()));
        result.map_err(cluster_error)
    }

    fn not_leader_or_unavailable(&self, e: ProposeFailure) -> BrokerError {
        match e {
            ProposeFailure::NotLeader { .. } => BrokerError::Unavailable(
                "the controller moved while the request was in flight; retry".into(),
            ),
            e => BrokerError::Unavailable(format!("metadata change failed: {e}; retry")),
        }
    }

    /// Creates a topic through the controller (forwarded to its leader).
    pub(crate) async fn create_topic(
        &self,
        name: &str,
        config: Option<&TopicConfig>,
    ) -> Result<Arc<Topic>> {
        crate::config::validate_topic_name(name)?;
        let settings = TopicSettings::resolve(config, self.peers.len() as u32)?;
        let cmd = Command::CreateTopic {
            name: name.to_string(),
            settings: runnel_cluster::TopicSettings {
                partitions: settings.partitions,
                replication_factor: settings.replication_factor,
                retention_ms: settings.retention_ms,
                retention_bytes: settings.retention_bytes,
                max_record_bytes: settings.max_record_bytes,
                segment_bytes: settings.segment_bytes,
                cleanup_policy: runnel_cluster::CleanupPolicy::Delete,
            },
            created_ms: crate::service::now_ms(),
        };
        let req = CreateTopicRequest {
            name: name.to_string(),
            config: config.cloned(),
        };
        self.through_controller(cmd, async |mut c| c.create_topic(req).await.map(drop))
            .await?;
        // Wait until this node applied it too.
        let topic = self.wait_applied(name, |t| t).await?;
        self.wait_on_every_node(name, |answer| answer.is_ok()).await;
        Ok(topic)
    }

    /// Deletes a topic through the controller (forwarded to its leader).
    pub(crate) async fn delete_topic(&self, name: &str) -> Result<()> {
        self.topics.get(name)?;
        let cmd = Command::DeleteTopic {
            name: name.to_string(),
        };
        let req = DeleteTopicRequest {
            name: name.to_string(),
        };
        self.through_controller(cmd, async |mut c| c.delete_topic(req).await.map(drop))
            .await?;
        self.wait_applied(name, |t| t.is_none().then_some(()))
            .await?;
        self.wait_on_every_node(name, |answer| {
            answer.is_err_and(|s| s.code() == tonic::Code::NotFound)
        })
        .await;
        Ok(())
    }

    /// Grows a topic through the controller (forwarded to its leader).
    pub(crate) async fn create_partitions(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<Arc<Topic>> {
        self.topics.get(name)?.settings.grown_to(name, partitions)?;
        let cmd = Command::CreatePartitions {
            name: name.to_string(),
            partitions,
            created_ms: crate::service::now_ms(),
        };
        let req = CreatePartitionsRequest {
            name: name.to_string(),
            partitions,
        };
        self.through_controller(cmd, async |mut c| c.create_partitions(req).await.map(drop))
            .await?;
        let wanted = partitions as usize;
        let topic = self
            .wait_applied(name, |t| t.filter(|t| t.partitions.len() >= wanted))
            .await?;
        self.wait_on_every_node(name, |answer| {
            answer.is_ok_and(|d| {
                d.topic
                    .as_ref()
                    .is_some_and(|t| t.partitions.len() >= wanted)
            })
        })
        .await;
        Ok(topic)
    }

    /// Carries out a metadata change: proposes `cmd` when this node leads
    /// the controller (after giving the nodes' registrations a moment when
    /// it places a new topic), else sends the same request to the leader
    /// with `forward` (its error returned as the leader's).
    async fn through_controller(
        &self,
        cmd: Command,
        forward: impl AsyncFnOnce(
            AdminServiceClient<tonic::transport::Channel>,
        ) -> std::result::Result<(), tonic::Status>,
    ) -> Result<()> {
        match self.wait_for_controller().await {
            Some(l) if l == self.node_id => {
                if matches!(cmd, Command::CreateTopic { .. }) {
                    self.wait_for_registrations().await;
                }
                self.propose(&cmd).await
            }
            Some(l) => forward(self.controller_client(l).await?)
                .await
                .map_err(BrokerError::Forwarded),
            None => Err(no_controller()),
        }
    }

    /// The controller's leader, waiting for an election in progress (a
    /// cluster that just started) up to the admin timeout.
    async fn wait_for_controller(&self) -> Option<u32> {
        let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
        loop {
            if let Some(l) = self.controller_leader() {
                return Some(l);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// On the controller's leader: gives the registration of every node
    /// of `--peers` (done right after the election) a moment to commit, so
    /// that placement sees every node.
    async fn wait_for_registrations(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.state().brokers().len() < self.peers.len()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this node's registry shows the change: `done` is given
    /// the topic as the registry holds it (None: absent) after each apply
    /// and answers what to return once the change is there.
    async fn wait_applied<T>(
        &self,
        name: &str,
        done: impl Fn(Option<Arc<Topic>>) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
        let mut applied = self.applied.subscribe();
        loop {
            if let Some(out) = done(self.topics.get(name).ok()) {
                return Ok(out);
            }
            if tokio::time::timeout_at(deadline, applied.changed())
                .await
                .is_err()
            {
                return Err(BrokerError::Unavailable(format!(
                    "the change to topic {name} is committed but not yet applied on this node; retry describe"
                )));
            }
        }
    }

    /// Waits (up to [`PROPAGATION_WAIT`]) until every other node that
    /// answers knows of the change — `done` accepts its answer to
    /// `DescribeTopic` — so a client that changed a topic can use it through
    /// any node at once (metadata reaches each node by its own apply loop,
    /// milliseconds apart). Unreachable nodes are skipped.
    async fn wait_on_every_node(
        &self,
        name: &str,
        done: impl Fn(std::result::Result<&DescribeTopicResponse, &tonic::Status>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + PROPAGATION_WAIT;
        for &id in self.peers.keys().filter(|&&id| id != self.node_id) {
            let Ok(Ok(mut client)) =
                tokio::time::timeout_at(deadline, self.controller_client(id)).await
            else {
                continue;
            };
            loop {
                let call = client.describe_topic(runnel_proto::v1::DescribeTopicRequest {
                    name: name.to_string(),
                });
                let Ok(res) = tokio::time::timeout_at(deadline, call).await else {
                    break;
                };
                let finished = match &res {
                    Ok(answer) => done(Ok(answer.get_ref())),
                    Err(s) => done(Err(s)),
                };
                if finished || tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    async fn controller_client(
        &self,
        leader: u32,
    ) -> Result<AdminServiceClient<tonic::transport::Channel>> {
        let addr = self.peers.get(&leader).ok_or_else(no_controller)?.clone();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| BrokerError::Internal(format!("controller address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(ADMIN_TIMEOUT)
            .connect()
            .await
            .map_err(|e| {
                BrokerError::Unavailable(format!(
                    "cannot reach the controller (node {leader} at {addr}): {e}; retry"
                ))
            })?;
        Ok(AdminServiceClient::new(channel))
    }
}

/// The broker's view of the controller's topic settings.
fn settings_of(s: &runnel_cluster::TopicSettings) -> TopicSettings {
    TopicSettings {
        partitions: s.partitions,
        replication_factor: s.replication_factor,
        retention_ms: s.retention_ms,
        retention_bytes: s.retention_bytes,
        max_record_bytes: s.max_record_bytes,
        segment_bytes: s.segment_bytes,
    }
}

fn no_controller() -> BrokerError {
    BrokerError::Unavailable(
        "no controller leader yet (the nodes are electing one, or fewer than a majority run); retry".into(),
    )
}

fn cluster_error(e: ClusterError) -> BrokerError {
    match e {
        ClusterError::TopicExists(name) => BrokerError::TopicAlreadyExists(name),
        ClusterError::UnknownTopic(name) => BrokerError::UnknownTopic(name),
        e => BrokerError::InvalidArgument(e.to_string()),
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Opens (creating) a replicated log; its config must say
/// [`FlushPolicy::Never`]: Raft decides when to fsync.
async fn open_log(dir: PathBuf, config: LogConfig) -> Result<Arc<Log>> {
    let path = dir.clone();
    tokio::task::spawn_blocking(move || -> Result<Arc<Log>> {
        std::fs::create_dir_all(&dir).map_err(|e| BrokerError::io("create", &dir, e))?;
        Log::open(&dir, config)
            .map(Arc::new)
            .map_err(|e| BrokerError::storage(format!("open {}", dir.display()), e))
    })
    .await
    .map_err(|e| BrokerError::Internal(format!("opening {}: {e}", path_display(&path))))?
}

fn path_display(p: &Path) -> String {
    p.display().to_string()
}
