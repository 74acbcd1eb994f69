//! Consumer groups: a [`GroupConsumer`] that is a full member of a group
//! (joins, heartbeats in the background, follows assignment changes,
//! commits), and the group admin calls on [`Client`].
//!
//! Every call goes to the group's coordinator. The client starts at its
//! default node and follows `NOT_COORDINATOR` to the node it names; while
//! the coordinator is unknown or being elected (`NOT_COORDINATOR` without
//! an address, `UNAVAILABLE`, a node that cannot be reached) it retries
//! every [`RETRY_BACKOFF`] for up to [`COORDINATOR_TIMEOUT`].

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use runnel_proto::v1::group_service_client::GroupServiceClient;
use runnel_proto::v1::{
    CommitOffsetsRequest, DeleteGroupRequest, DescribeGroupRequest, DescribeGroupResponse,
    ErrorReason, FetchOffsetsRequest, GroupSummary, HeartbeatRequest, HeartbeatResponse,
    ListGroupsRequest, OffsetCommit, ResetOffsetsRequest, TopicPartitions,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::client::{Client, OffsetSpec};
use crate::consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartPosition};
use crate::error::{Error, Result};

/// Pause between attempts while the coordinator is unknown or unavailable.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// How long group calls keep retrying retriable failures.
pub const COORDINATOR_TIMEOUT: Duration = Duration::from_secs(30);

/// Calls on one group's coordinator, following `NOT_COORDINATOR`.
#[derive(Clone, Debug)]
struct CoordinatorRoute {
    client: Client,
    group: String,
    /// The coordinator's address, once known.
    address: Arc<Mutex<Option<Arc<str>>>>,
}

impl CoordinatorRoute {
    fn new(client: &Client, group: &str) -> Self {
        CoordinatorRoute {
            client: client.clone(),
            group: group.to_string(),
            address: Arc::new(Mutex::new(None)),
        }
    }

    fn cached(&self) -> Option<Arc<str>> {
        self.address
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, address: Option<Arc<str>>) {
        *self.address.lock().unwrap_or_else(PoisonError::into_inner) = address;
    }

    /// Runs `call` on the coordinator, retrying retriable failures for up
    /// to `patience`.
    async fn call<T, F, Fut>(&self, patience: Duration, call: F) -> Result<T>
    where
        F: Fn(GroupServiceClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let metadata = self.client.metadata();
        let limit = self.client.config().max_message_bytes;
        let deadline = Instant::now() + patience;
        loop {
            let address = match self.cached() {
                Some(a) => a,
                None => metadata.default_route()?.address,
            };
            let stub = GroupServiceClient::new(metadata.channel(&address)?)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit);
            let error = match metadata.call_on(&address, call(stub)).await {
                Ok(answer) => {
                    self.set(Some(address));
                    return Ok(answer);
                }
                Err(e) => e,
            };
            match &error {
                Error::Status {
                    reason: ErrorReason::NotCoordinator,
                    leader_address,
                    ..
                } => {
                    tracing::debug!(group = %self.group, from = %address, to = %leader_address, "coordinator moved");
                    let next = (!leader_address.is_empty() && **leader_address != *address)
                        .then(|| Arc::from(leader_address.as_str()));
                    let follow = next.is_some();
                    self.set(next);
                    if follow {
                        continue;
                    }
                }
                e if e.is_connection_error() => {
                    metadata.node_failed(&address);
                    self.set(None);
                }
                e if e.is_retriable() => {}
                _ => return Err(error),
            }
            if Instant::now() + RETRY_BACKOFF > deadline {
                return Err(error);
            }
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
    }
}

/// Partitions of `topic` as the proto carries them.
fn partitions_of(topic: &str, set: &BTreeSet<u32>) -> Vec<TopicPartitions> {
    if set.is_empty() {
        return Vec::new();
    }
    vec![TopicPartitions {
        topic: topic.to_string(),
        partitions: set.iter().copied().collect(),
    }]
}

impl Client {
    /// Every consumer group of the cluster, sorted by name.
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>> {
        let deadline = Instant::now() + COORDINATOR_TIMEOUT;
        let limit = self.config().max_message_bytes;
        loop {
            let answer = self
                .metadata()
                .call_any(|channel| async move {
                    GroupServiceClient::new(channel)
                        .max_decoding_message_size(limit)
                        .list_groups(ListGroupsRequest::default())
                        .await
                })
                .await;
            match answer {
                Ok(a) => return Ok(a.groups),
                Err(e) if e.is_retriable() && Instant::now() + RETRY_BACKOFF < deadline => {
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A group's state, members and committed offsets (with lag when the
    /// coordinator's node holds the partitions). Fails with `UNKNOWN_GROUP`.
    pub async fn describe_group(&self, group: &str) -> Result<DescribeGroupResponse> {
        let route = CoordinatorRoute::new(self, group);
        let request = DescribeGroupRequest {
            group: group.to_string(),
        };
        route
            .call(COORDINATOR_TIMEOUT, |mut s| {
                let r = request.clone();
                async move { s.describe_group(r).await }
            })
            .await
    }

    /// Deletes a group without members and its offsets.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let route = CoordinatorRoute::new(self, group);
        let request = DeleteGroupRequest {
            group: group.to_string(),
        };
        route
            .call(COORDINATOR_TIMEOUT, |mut s| {
                let r = request.clone();
                async move { s.delete_group(r).await }
            })
            .await
            .map(|_| ())
    }

    /// The committed offsets of `group` in `topic`, by partition.
    pub async fn fetch_committed(&self, group: &str, topic: &str) -> Result<BTreeMap<u32, u64>> {
        fetch_committed(&CoordinatorRoute::new(self, group), topic, &BTreeSet::new()).await
    }

    /// Sets `group`'s committed offset of every partition of `topic` to
    /// `spec` resolved now (earliest, latest, a timestamp), or to `offset`
    /// when given. Only while the group has no members (`GROUP_NOT_EMPTY`).
    /// Returns the offsets set, by partition.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        spec: Option<OffsetSpec>,
        offset: Option<u64>,
    ) -> Result<Vec<(u32, u64)>> {
        let description = self.describe_topic(topic).await?;
        let count = u32::try_from(description.partitions.len()).unwrap_or(u32::MAX);
        let offsets: Vec<u64> = match (spec, offset) {
            (_, Some(o)) => vec![o; count as usize],
            (Some(spec), None) => {
                let queries: Vec<(u32, OffsetSpec)> = (0..count).map(|p| (p, spec)).collect();
                self.list_offsets_many(topic, &queries).await?
            }
            (None, None) => {
                return Err(Error::InvalidArgument(
                    "reset to what? give an offset spec or an offset".into(),
                ));
            }
        };
        let pairs: Vec<(u32, u64)> = (0..count).zip(offsets).collect();
        let request = ResetOffsetsRequest {
            group: group.to_string(),
            offsets: pairs
                .iter()
                .map(|&(partition, offset)| OffsetCommit {
                    topic: topic.to_string(),
                    partition,
                    offset,
                })
                .collect(),
        };
        CoordinatorRoute::new(self, group)
            .call(COORDINATOR_TIMEOUT, |mut s| {
                let r = request.clone();
                async move { s.reset_offsets(r).await }
            })
            .await?;
        Ok(pairs)
    }
}

async fn fetch_committed(
    route: &CoordinatorRoute,
    topic: &str,
    partitions: &BTreeSet<u32>,
) -> Result<BTreeMap<u32, u64>> {
    let request = FetchOffsetsRequest {
        group: route.group.clone(),
        partitions: partitions_of(topic, partitions),
    };
    let answer = route
        .call(COORDINATOR_TIMEOUT, |mut s| {
            let r = request.clone();
            async move { s.fetch_offsets(r).await }
        })
        .await?;
    Ok(answer
        .offsets
        .into_iter()
        .filter(|o| o.topic == topic)
        .map(|o| (o.partition, o.offset))
        .collect())
}

/// How a [`GroupConsumer`] behaves.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// Session timeout: the coordinator removes the member when no
    /// heartbeat arrives for this long. Default 10 s.
    pub session_timeout: Duration,
    /// Commit the positions of returned records this often (checked at
    /// each poll); `None` commits only when asked. Default 5 s.
    pub auto_commit: Option<Duration>,
    /// Where to start a partition without a committed offset:
    /// [`StartPosition::Earliest`] or [`StartPosition::Latest`] (default).
    pub reset: StartPosition,
    /// Assignor asked for (`sticky`, `range`, `round-robin`); empty: the
    /// broker's default (sticky).
    pub assignor: String,
    /// Fetch settings.
    pub consumer: ConsumerConfig,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            session_timeout: Duration::from_secs(10),
            auto_commit: Some(Duration::from_secs(5)),
            reset: StartPosition::Latest,
            assignor: String::new(),
            consumer: ConsumerConfig::default(),
        }
    }
}

/// What the heartbeat task and the consumer share.
#[derive(Debug, Default)]
struct Membership {
    member_id: String,
    /// 0 until joined (and after being fenced).
    epoch: i32,
    /// The partitions the coordinator last assigned.
    assigned: BTreeSet<u32>,
    /// The partitions the consumer fetches (reported in heartbeats).
    owned: BTreeSet<u32>,
    /// Set when the member was fenced or expired: drop every partition.
    lost: bool,
    /// A failure that ends the consumer (unknown topic, bad arguments).
    fatal: Option<Error>,
    /// Stop heartbeating.
    closing: bool,
}

/// Shared between the consumer and its heartbeat task.
#[derive(Debug)]
struct Shared {
    state: Mutex<Membership>,
    /// Wakes the heartbeat task (owned partitions changed, closing).
    wake: Notify,
    /// Wakes the consumer (the assignment changed).
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A member of a consumer group reading one topic.
///
/// [`GroupConsumer::join`] starts a background task that heartbeats the
/// coordinator (joining first), and [`GroupConsumer::poll`] follows what it
/// learns: a partition taken away is committed (its position after the
/// records returned so far) and released, which the next heartbeat (sent at
/// once) reports; a partition given starts at the group's committed offset,
/// or at [`GroupConfig::reset`] when there is none. Records returned by a
/// poll count as processed at the next poll, commit or close (at least
/// once: after a crash, records since the last commit are delivered again).
///
/// A member that the coordinator no longer knows (its session expired, or
/// the coordinator moved) drops every partition without committing and
/// rejoins; it resumes from the committed offsets.
#[derive(Debug)]
pub struct GroupConsumer {
    client: Client,
    topic: String,
    config: GroupConfig,
    route: CoordinatorRoute,
    shared: Arc<Shared>,
    heartbeat: JoinHandle<()>,
    consumer: Option<Consumer>,
    /// Last committed offset per owned partition.
    committed: BTreeMap<u32, u64>,
    last_commit: Instant,
    /// Asynchronous commits in flight.
    pending_commits: Vec<JoinHandle<Result<()>>>,
}

impl GroupConsumer {
    /// Joins `group` subscribed to `topic` and starts heartbeating.
    /// Fails at once when the topic does not exist.
    pub async fn join(
        client: &Client,
        group: &str,
        topic: &str,
        config: GroupConfig,
    ) -> Result<GroupConsumer> {
        client.describe_topic(topic).await?;
        let route = CoordinatorRoute::new(client, group);
        let shared = Arc::new(Shared {
            state: Mutex::new(Membership::default()),
            wake: Notify::new(),
            changed: Notify::new(),
        });
        // The first heartbeat here, so that errors (an invalid group name,
        // session timeout) surface from join.
        let first = heartbeat_once(&route, topic, &config, &shared).await?;
        apply_answer(&shared, first);
        let heartbeat = tokio::spawn(run_heartbeats(
            route.clone(),
            topic.to_string(),
            config.clone(),
            shared.clone(),
        ));
        Ok(GroupConsumer {
            client: client.clone(),
            topic: topic.to_string(),
            config,
            route,
            shared,
            heartbeat,
            consumer: None,
            committed: BTreeMap::new(),
            last_commit: Instant::now(),
            pending_commits: Vec::new(),
        })
    }

    /// The member id the coordinator gave.
    pub fn member_id(&self) -> String {
        self.shared.lock().member_id.clone()
    }

    /// The member epoch last received.
    pub fn member_epoch(&self) -> i32 {
        self.shared.lock().epoch
    }

    /// The partitions being fetched now.
    pub fn assignment(&self) -> BTreeSet<u32> {
        self.shared.lock().owned.clone()
    }

    /// The next offset to read in each owned partition.
    pub fn positions(&self) -> BTreeMap<u32, u64> {
        let Some(c) = &self.consumer else {
            return BTreeMap::new();
        };
        c.partitions()
            .into_iter()
            .filter_map(|p| c.position(p).map(|o| (p, o)))
            .collect()
    }

    /// Moves the position of an owned `partition` (records from `offset`
    /// are returned again, and not committed until returned); ignored for
    /// a partition not owned.
    pub fn seek(&mut self, partition: u32, offset: u64) {
        if let Some(c) = &mut self.consumer {
            let _not_owned = c.seek(partition, offset);
        }
    }

    /// Brings the fetched partitions in line with the assignment.
    async fn reconcile(&mut self) -> Result<()> {
        let (assigned, lost) = {
            let mut s = self.shared.lock();
            if let Some(e) = s.fatal.clone() {
                return Err(e);
            }
            let lost = std::mem::take(&mut s.lost);
            (s.assigned.clone(), lost)
        };
        let owned: BTreeSet<u32> = self
            .consumer
            .as_ref()
            .map(|c| c.partitions().into_iter().collect())
            .unwrap_or_default();
        if lost {
            self.consumer = None;
            self.committed.clear();
            self.report_owned(BTreeSet::new());
            if owned.is_empty() && assigned.is_empty() {
                return Ok(());
            }
        } else if owned == assigned {
            return Ok(());
        }
        let owned = if lost { BTreeSet::new() } else { owned };
        // Revoked partitions: commit their positions, then release them.
        let revoked: BTreeSet<u32> = owned.difference(&assigned).copied().collect();
        if !revoked.is_empty()
            && let Err(e) = self.commit_partitions(&revoked).await
        {
            tracing::warn!(error = %e, ?revoked, "commit before releasing partitions failed");
        }
        let mut positions: BTreeMap<u32, u64> = self
            .positions()
            .into_iter()
            .filter(|(p, _)| assigned.contains(p))
            .collect();
        let added: BTreeSet<u32> = assigned.difference(&owned).copied().collect();
        if !added.is_empty() {
            let committed = fetch_committed(&self.route, &self.topic, &added).await?;
            let missing: Vec<(u32, OffsetSpec)> = added
                .iter()
                .filter(|p| !committed.contains_key(p))
                .map(|&p| {
                    let spec = match self.config.reset {
                        StartPosition::Earliest => OffsetSpec::Earliest,
                        _ => OffsetSpec::Latest,
                    };
                    (p, spec)
                })
                .collect();
            let resolved = if missing.is_empty() {
                Vec::new()
            } else {
                self.client.list_offsets_many(&self.topic, &missing).await?
            };
            for (p, o) in &committed {
                self.committed.insert(*p, *o);
            }
            positions.extend(committed);
            positions.extend(missing.iter().map(|(p, _)| *p).zip(resolved));
        }
        self.committed.retain(|p, _| assigned.contains(p));
        self.consumer = if positions.is_empty() {
            None
        } else {
            let ids: Vec<u32> = positions.keys().copied().collect();
            let mut c = Consumer::new(
                &self.client,
                &self.topic,
                Some(ids),
                StartPosition::Offset(0),
                self.config.consumer.clone(),
            )
            .await?;
            for (p, o) in &positions {
                c.seek(*p, *o)?;
            }
            Some(c)
        };
        tracing::debug!(?assigned, "assignment applied");
        self.report_owned(positions.keys().copied().collect());
        Ok(())
    }

    fn report_owned(&self, owned: BTreeSet<u32>) {
        let mut s = self.shared.lock();
        if s.owned != owned {
            s.owned = owned;
            drop(s);
            self.shared.wake.notify_one();
        }
    }

    /// Records from the owned partitions: waits up to the fetch wait (or,
    /// owning nothing, until the assignment changes or as long), follows
    /// assignment changes, and auto-commits when due. Records returned
    /// before count as processed.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>> {
        self.reconcile().await?;
        if let Some(every) = self.config.auto_commit
            && self.last_commit.elapsed() >= every
        {
            self.last_commit = Instant::now();
            if let Err(e) = self.commit().await {
                tracing::warn!(error = %e, "auto-commit failed");
            }
        }
        match &mut self.consumer {
            Some(c) => {
                let changed = self.shared.changed.notified();
                tokio::select! {
                    polled = c.poll() => polled,
                    () = changed => Ok(Vec::new()),
                }
            }
            None => {
                let _ = tokio::time::timeout(
                    self.config.consumer.max_wait,
                    self.shared.changed.notified(),
                )
                .await;
                Ok(Vec::new())
            }
        }
    }

    async fn commit_partitions(&mut self, which: &BTreeSet<u32>) -> Result<()> {
        let positions: Vec<(u32, u64)> = self
            .positions()
            .into_iter()
            .filter(|(p, o)| which.contains(p) && self.committed.get(p) != Some(o))
            .collect();
        if positions.is_empty() {
            return Ok(());
        }
        commit(&self.route, &self.shared, &self.topic, &positions).await?;
        self.committed.extend(positions);
        Ok(())
    }

    /// Commits the position of every owned partition (after the records
    /// returned so far) and waits until the coordinator stored it.
    pub async fn commit(&mut self) -> Result<()> {
        let all: BTreeSet<u32> = self.positions().keys().copied().collect();
        self.commit_partitions(&all).await
    }

    /// Starts committing the current positions and returns at once; the
    /// outcome is logged, and the next [`GroupConsumer::commit`] or
    /// [`GroupConsumer::close`] waits for it.
    pub fn commit_async(&mut self) {
        let positions: Vec<(u32, u64)> = self
            .positions()
            .into_iter()
            .filter(|(p, o)| self.committed.get(p) != Some(o))
            .collect();
        if positions.is_empty() {
            return;
        }
        self.committed.extend(positions.iter().copied());
        let (route, shared, topic) = (self.route.clone(), self.shared.clone(), self.topic.clone());
        self.pending_commits.retain(|h| !h.is_finished());
        self.pending_commits.push(tokio::spawn(async move {
            let result = commit(&route, &shared, &topic, &positions).await;
            if let Err(e) = &result {
                tracing::warn!(error = %e, "asynchronous commit failed");
            }
            result
        }));
    }

    /// Commits, leaves the group (its partitions move to the others at
    /// once) and stops heartbeating.
    pub async fn close(mut self) -> Result<()> {
        for h in std::mem::take(&mut self.pending_commits) {
            let _ = h.await;
        }
        let committed = self.commit().await;
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        let _ = (&mut self.heartbeat).await;
        let (member_id, epoch) = {
            let s = self.shared.lock();
            (s.member_id.clone(), s.epoch)
        };
        if epoch > 0 {
            let request = HeartbeatRequest {
                group: self.route.group.clone(),
                member_id,
                member_epoch: LEAVE_EPOCH,
                ..HeartbeatRequest::default()
            };
            self.route
                .call(Duration::from_secs(5), |mut s| {
                    let r = request.clone();
                    async move { s.heartbeat(r).await }
                })
                .await?;
        }
        committed
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// The member epoch that leaves a group.
const LEAVE_EPOCH: i32 = -1;

async fn commit(
    route: &CoordinatorRoute,
    shared: &Shared,
    topic: &str,
    positions: &[(u32, u64)],
) -> Result<()> {
    let (member_id, member_epoch) = {
        let s = shared.lock();
        (s.member_id.clone(), s.epoch)
    };
    let request = CommitOffsetsRequest {
        group: route.group.clone(),
        member_id,
        member_epoch,
        offsets: positions
            .iter()
            .map(|&(partition, offset)| OffsetCommit {
                topic: topic.to_string(),
                partition,
                offset,
            })
            .collect(),
    };
    route
        .call(COORDINATOR_TIMEOUT, |mut s| {
            let r = request.clone();
            async move { s.commit_offsets(r).await }
        })
        .await
        .map(|_| ())
}

async fn heartbeat_once(
    route: &CoordinatorRoute,
    topic: &str,
    config: &GroupConfig,
    shared: &Shared,
) -> Result<HeartbeatResponse> {
    let request = {
        let s = shared.lock();
        HeartbeatRequest {
            group: route.group.clone(),
            member_id: s.member_id.clone(),
            member_epoch: s.epoch,
            subscribed_topics: vec![topic.to_string()],
            owned: partitions_of(topic, &s.owned),
            session_timeout_ms: u32::try_from(config.session_timeout.as_millis())
                .unwrap_or(u32::MAX),
            assignor: config.assignor.clone(),
        }
    };
    // Within the session: past it, the member is gone anyway.
    route
        .call(config.session_timeout, |mut s| {
            let r = request.clone();
            async move { s.heartbeat(r).await }
        })
        .await
}

fn apply_answer(shared: &Shared, answer: HeartbeatResponse) {
    let assigned: BTreeSet<u32> = answer
        .assignment
        .iter()
        .flat_map(|t| t.partitions.iter().copied())
        .collect();
    let mut s = shared.lock();
    s.member_id = answer.member_id;
    s.epoch = answer.member_epoch;
    if s.assigned != assigned {
        s.assigned = assigned;
        drop(s);
        shared.changed.notify_one();
    }
}

async fn run_heartbeats(
    route: CoordinatorRoute,
    topic: String,
    config: GroupConfig,
    shared: Arc<Shared>,
) {
    let mut interval = Duration::from_millis(
        u64::try_from(config.session_timeout.as_millis() / 5).unwrap_or(3_000),
    )
    .clamp(Duration::from_millis(50), Duration::from_secs(3));
    loop {
        let woken = shared.wake.notified();
        let _ = tokio::time::timeout(interval, woken).await;
        if shared.lock().closing {
            return;
        }
        match heartbeat_once(&route, &topic, &config, &shared).await {
            Ok(answer) => {
                interval = Duration::from_millis(u64::from(answer.heartbeat_interval_ms.max(20)));
                apply_answer(&shared, answer);
            }
            Err(e) => match e.reason() {
                Some(ErrorReason::UnknownMember | ErrorReason::FencedMemberEpoch) => {
                    tracing::info!(error = %e, "member fenced or unknown; rejoining");
                    {
                        // Rejoin at once; the partitions still fetched stay
                        // reported as owned (so nobody else gets them) until
                        // the consumer drops them at its next poll.
                        let mut s = shared.lock();
                        s.epoch = 0;
                        s.assigned.clear();
                        s.lost = true;
                    }
                    shared.changed.notify_one();
                    shared.wake.notify_one();
                }
                _ if e.is_retriable() => {
                    tracing::debug!(error = %e, "heartbeat failed; retrying");
                }
                _ => {
                    shared.lock().fatal = Some(e);
                    shared.changed.notify_one();
                    return;
                }
            },
        }
    }
}
