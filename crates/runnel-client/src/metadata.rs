//! The client's picture of the cluster: which node leads each partition,
//! where each node is, and one connection per node.
//!
//! - Nodes come from `DescribeCluster` (id and advertised address), leaders
//!   from `DescribeTopic`, loaded the first time a topic is used.
//! - One tonic [`Channel`] (one HTTP/2 connection) per node address, made
//!   lazily and shared by every producer, consumer and admin call of the
//!   client.
//! - Calls that any node serves (admin calls, metadata) go to the *default
//!   node*: the bootstrap address that answered. When it cannot be reached,
//!   the next bootstrap address, then the other known nodes, are tried, and
//!   the first that answers becomes the default.
//! - A partition with no known leader (leader 0, or a leader whose address is
//!   not known) is routed to the default node, which forwards or redirects.
//! - Refreshes ([`Metadata::refresh`]) are coalesced — callers that saw the
//!   same version of a topic's routes share one `DescribeTopic` — and spaced
//!   by [`ClientConfig::metadata_backoff`]. A `NOT_LEADER` that names the new
//!   leader updates the routes at once, without a call
//!   ([`Metadata::leader_moved`]).
//!
//! An advertised address whose host is unspecified (`0.0.0.0`, `[::]`: a
//! node listening on every interface without `--advertise`) is taken with
//! the host of the address that described it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use runnel_proto::v1::ErrorReason;
use runnel_proto::v1::admin_service_client::AdminServiceClient;
use runnel_proto::v1::{
    DescribeClusterRequest, DescribeClusterResponse, DescribeTopicRequest, TopicDescription,
};
use tonic::transport::Channel;

use crate::client::{ClientConfig, admin_stub, endpoint};
use crate::error::{Error, Result};

/// Where the requests for one partition (or for any node) go: the leader,
/// or the default node (which forwards or redirects) when none is known.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    /// The node's address (the key of its connection).
    pub(crate) address: Arc<str>,
    /// The shared connection to it.
    pub(crate) channel: Channel,
}

/// The leaders of one topic's partitions.
#[derive(Clone, Debug)]
struct TopicRoutes {
    /// Leader node id per partition, 0 when there is none.
    leaders: Vec<u32>,
    /// Changes with every refresh and leader move (unique across topics).
    version: u64,
    /// When `DescribeTopic` last answered for it.
    refreshed_at: Instant,
}

#[derive(Debug)]
struct State {
    /// The address that calls any node serves go to.
    default: Arc<str>,
    /// Node id to client address.
    nodes: HashMap<u32, Arc<str>>,
    /// One connection per address.
    channels: HashMap<Arc<str>, Channel>,
    topics: HashMap<Arc<str>, TopicRoutes>,
    next_version: u64,
    /// When `DescribeCluster` last answered.
    cluster_refreshed_at: Option<Instant>,
}

/// The metadata cache and connection pool shared by a client's clones.
#[derive(Debug)]
pub(crate) struct Metadata {
    config: ClientConfig,
    bootstrap: Vec<Arc<str>>,
    state: Mutex<State>,
    /// Held while a refresh runs: concurrent refreshes queue, and find the
    /// routes already refreshed when their turn comes.
    refreshing: tokio::sync::Mutex<()>,
}

impl Metadata {
    /// A cache knowing only the bootstrap list, with `default` (one of its
    /// addresses) connected through `channel`.
    pub(crate) fn new(
        config: ClientConfig,
        bootstrap: Vec<String>,
        default: &str,
        channel: Channel,
    ) -> Metadata {
        let default: Arc<str> = Arc::from(default);
        let mut channels = HashMap::new();
        channels.insert(default.clone(), channel);
        Metadata {
            config,
            bootstrap: bootstrap.into_iter().map(Arc::from).collect(),
            state: Mutex::new(State {
                default,
                nodes: HashMap::new(),
                channels,
                topics: HashMap::new(),
                next_version: 1,
                cluster_refreshed_at: None,
            }),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared connection to `address`, made (lazily) on first use.
    pub(crate) fn channel(&self, address: &str) -> Result<Channel> {
        let mut state = self.lock();
        if let Some(channel) = state.channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = endpoint(address, &self.config)?.connect_lazy();
        state.channels.insert(Arc::from(address), channel.clone());
        Ok(channel)
    }

    fn route_to(&self, address: Arc<str>) -> Result<Route> {
        let channel = self.channel(&address)?;
        Ok(Route { address, channel })
    }

    /// The default node: where calls that any node serves go.
    pub(crate) fn default_route(&self) -> Result<Route> {
        let address = self.lock().default.clone();
        self.route_to(address)
    }

    /// Where `topic`/`partition`'s requests go, without the connection: the
    /// leader's id and address, or leader 0 and the default node's address
    /// when no leader is known (or the topic is not loaded).
    pub(crate) fn target(&self, topic: &str, partition: u32) -> (u32, Arc<str>) {
        let state = self.lock();
        let leader = state
            .topics
            .get(topic)
            .and_then(|t| t.leaders.get(partition as usize))
            .copied()
            .unwrap_or(0);
        match state.nodes.get(&leader).filter(|_| leader != 0) {
            Some(address) => (leader, address.clone()),
            None => (0, state.default.clone()),
        }
    }

    /// [`Metadata::target`] with the connection to it.
    pub(crate) fn route(&self, topic: &str, partition: u32) -> Result<Route> {
        let (_, address) = self.target(topic, partition);
        self.route_to(address)
    }

    /// Sets `topic`'s leaders and the nodes' addresses, as a refresh would.
    #[cfg(test)]
    pub(crate) fn set_routes(&self, topic: &str, leaders: Vec<u32>, nodes: &[(u32, &str)]) {
        let mut state = self.lock();
        for (id, address) in nodes {
            state.nodes.insert(*id, Arc::from(*address));
        }
        let version = state.next_version;
        state.next_version += 1;
        state.topics.insert(
            Arc::from(topic),
            TopicRoutes {
                leaders,
                version,
                refreshed_at: Instant::now(),
            },
        );
    }

    /// Drops `topic`'s routes (it was deleted): its next use loads them anew.
    pub(crate) fn forget(&self, topic: &str) {
        self.lock().topics.remove(topic);
    }

    /// The version of `topic`'s routes, `None` when it is not loaded.
    pub(crate) fn version(&self, topic: &str) -> Option<u64> {
        self.lock().topics.get(topic).map(|t| t.version)
    }

    /// Number of partitions of `topic`, when loaded.
    pub(crate) fn partition_count(&self, topic: &str) -> Option<u32> {
        self.lock()
            .topics
            .get(topic)
            .map(|t| u32::try_from(t.leaders.len()).unwrap_or(u32::MAX))
    }

    /// Whether `topic`'s routes are loaded and older than
    /// [`ClientConfig::metadata_max_age`].
    pub(crate) fn is_stale(&self, topic: &str) -> bool {
        let max_age = self.config.metadata_max_age;
        self.lock()
            .topics
            .get(topic)
            .is_some_and(|t| t.refreshed_at.elapsed() >= max_age)
    }

    /// Takes a `NOT_LEADER` that named the new leader: routes `partition` to
    /// `leader_id` at once. Returns false (nothing changed: refresh instead)
    /// when the leader is unknown (0) or neither the answer nor the cache
    /// knows its address.
    pub(crate) fn leader_moved(
        &self,
        topic: &str,
        partition: u32,
        leader_id: u32,
        leader_address: &str,
    ) -> bool {
        if leader_id == 0 {
            return false;
        }
        let mut state = self.lock();
        if !leader_address.is_empty() {
            // The node's address as its peers know it now (it may have
            // restarted elsewhere).
            let address = reachable(leader_address, &state.default);
            if state.nodes.get(&leader_id).is_none_or(|a| **a != *address) {
                state.nodes.insert(leader_id, Arc::from(address.as_str()));
            }
        }
        if !state.nodes.contains_key(&leader_id) {
            return false;
        }
        let version = state.next_version;
        let Some(routes) = state.topics.get_mut(topic) else {
            return false;
        };
        let Some(slot) = routes.leaders.get_mut(partition as usize) else {
            return false;
        };
        *slot = leader_id;
        routes.version = version;
        state.next_version += 1;
        tracing::debug!(topic, partition, leader_id, "partition leader moved");
        true
    }

    /// Takes what a failed request for `topic`/`partition` sent to
    /// `address` says about the cluster. Returns true when the topic's
    /// routes should be refreshed: `NOT_LEADER` without a usable leader,
    /// `UNAVAILABLE`, or a node that could not be reached (which also stops
    /// being the default node). A `NOT_LEADER` naming the leader moves the
    /// partition at once and needs no refresh.
    pub(crate) fn note_error(
        &self,
        topic: &str,
        partition: u32,
        address: &str,
        error: &Error,
    ) -> bool {
        if let Some((leader_id, leader_address)) = error.leader() {
            return !self.leader_moved(topic, partition, leader_id, leader_address);
        }
        if error.is_connection_error() {
            self.node_failed(address);
            return true;
        }
        matches!(
            error.reason(),
            Some(ErrorReason::Unavailable | ErrorReason::Timeout)
        )
    }

    /// `address` could not be reached: if it is the default node, the next
    /// call that any node serves starts with another one.
    pub(crate) fn node_failed(&self, address: &str) {
        let candidates = self.candidates();
        let mut state = self.lock();
        if &*state.default != address {
            return;
        }
        if let Some(next) = candidates.iter().find(|c| &***c != address) {
            tracing::debug!(failed = address, next = %next, "switching the default node");
            state.default = next.clone();
        }
    }

    /// Addresses to try for a call any node serves: the default node, the
    /// bootstrap list, then every known node; without repeats.
    fn candidates(&self) -> Vec<Arc<str>> {
        let state = self.lock();
        let mut seen = HashSet::new();
        let mut nodes: Vec<(&u32, &Arc<str>)> = state.nodes.iter().collect();
        nodes.sort();
        std::iter::once(&state.default)
            .chain(self.bootstrap.iter())
            .chain(nodes.into_iter().map(|(_, a)| a))
            .filter(|a| seen.insert(Arc::clone(a)))
            .cloned()
            .collect()
    }

    /// Runs a call that any node serves, under
    /// [`ClientConfig::metadata_timeout`]: on the default node, then — when a
    /// node cannot be reached or does not answer in time — on the next
    /// candidate. The node that answers becomes the default.
    ///
    /// Only for calls that are safe to repeat: a call whose connection broke
    /// may have run on the node that lost it.
    pub(crate) async fn call_any<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let timeout = self
            .config
            .metadata_timeout
            .min(self.config.request_timeout);
        let mut last = None;
        for address in self.candidates() {
            let channel = self.channel(&address)?;
            match self.call_within(timeout, &address, call(channel)).await {
                Err(e) if e.is_connection_error() => {
                    tracing::debug!(%address, error = %e, "node unreachable, trying the next");
                    last = Some(e);
                }
                Ok(answer) => {
                    self.lock().default = address;
                    return Ok(answer);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Protocol("no node to ask".into())))
    }

    /// Runs one unary call to `address` under the request timeout, mapping
    /// its status.
    pub(crate) async fn call_on<T>(
        &self,
        address: &str,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        self.call_within(self.config.request_timeout, address, call)
            .await
    }

    async fn call_within<T>(
        &self,
        timeout: Duration,
        address: &str,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Error::from_status(status, address)),
            Err(_elapsed) => Err(Error::Timeout(timeout)),
        }
    }

    fn admin(&self, channel: Channel) -> AdminServiceClient<Channel> {
        admin_stub(channel, self.config.max_message_bytes)
    }

    /// `DescribeTopic` on any node; caches the topic's leaders, and the
    /// nodes' addresses when a leader is a node not known yet.
    pub(crate) async fn describe_topic(&self, topic: &str) -> Result<TopicDescription> {
        let request = DescribeTopicRequest {
            name: topic.to_string(),
        };
        let response = self
            .call_any(|channel| {
                let request = request.clone();
                async move { self.admin(channel).describe_topic(request).await }
            })
            .await?;
        let description = response
            .topic
            .ok_or_else(|| Error::Protocol("DescribeTopic answered without the topic".into()))?;
        let mut leaders = vec![0; description.partitions.len()];
        for p in &description.partitions {
            match leaders.get_mut(p.id as usize) {
                Some(slot) => *slot = p.leader,
                None => {
                    return Err(Error::Protocol(format!(
                        "DescribeTopic of \"{topic}\" lists partition {} of {}",
                        p.id,
                        description.partitions.len()
                    )));
                }
            }
        }
        let unknown_node = {
            let state = self.lock();
            leaders
                .iter()
                .any(|l| *l != 0 && !state.nodes.contains_key(l))
        };
        if unknown_node {
            // Without addresses the partitions go to the default node, which
            // forwards: a failure here is not the caller's.
            if let Err(error) = self.refresh_cluster().await {
                tracing::debug!(%error, "DescribeCluster failed; routing through the default node");
            }
        }
        let mut state = self.lock();
        let version = state.next_version;
        state.next_version += 1;
        state.topics.insert(
            Arc::from(topic),
            TopicRoutes {
                leaders,
                version,
                refreshed_at: Instant::now(),
            },
        );
        Ok(description)
    }

    /// `DescribeCluster` on any node; caches every node's address. At most
    /// once per [`ClientConfig::metadata_backoff`] (a call within it is a
    /// no-op).
    async fn refresh_cluster(&self) -> Result<()> {
        let backoff = self.config.metadata_backoff;
        if self
            .lock()
            .cluster_refreshed_at
            .is_some_and(|t| t.elapsed() < backoff)
        {
            return Ok(());
        }
        self.describe_cluster().await?;
        self.lock().cluster_refreshed_at = Some(Instant::now());
        Ok(())
    }

    /// `DescribeCluster` on any node, caching every node's address.
    pub(crate) async fn describe_cluster(&self) -> Result<DescribeClusterResponse> {
        let response = self
            .call_any(|channel| async move {
                self.admin(channel)
                    .describe_cluster(DescribeClusterRequest {})
                    .await
            })
            .await?;
        let mut state = self.lock();
        // `call_any` made the node that answered the default.
        let via = state.default.clone();
        for node in &response.nodes {
            if node.id == 0 || node.address.trim().is_empty() {
                continue;
            }
            let address = Arc::from(reachable(node.address.trim(), &via).as_str());
            state.nodes.insert(node.id, address);
        }
        Ok(response)
    }

    /// Re-reads `topic`'s routes unless they changed since the caller saw
    /// `seen` (another refresh or a leader move came first); waits for a
    /// refresh already running instead of starting a second one, and leaves
    /// [`ClientConfig::metadata_backoff`] between two refreshes of a topic.
    pub(crate) async fn refresh(&self, topic: &str, seen: Option<u64>) -> Result<()> {
        let _turn = self.refreshing.lock().await;
        let (version, refreshed_at) = {
            let state = self.lock();
            match state.topics.get(topic) {
                Some(t) => (Some(t.version), Some(t.refreshed_at)),
                None => (None, None),
            }
        };
        if version.is_some() && version != seen {
            return Ok(());
        }
        if let Some(at) = refreshed_at {
            let due = at + self.config.metadata_backoff;
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        // Leaders may have moved to nodes that joined or restarted at
        // another address: re-read the nodes too (failing that, the routes
        // still refresh; unknown nodes go through the default node).
        self.lock().cluster_refreshed_at = None;
        if let Err(error) = self.refresh_cluster().await {
            tracing::debug!(%error, "DescribeCluster failed during a refresh");
        }
        self.describe_topic(topic).await.map(|_| ())
    }
}

/// `advertised`, with the host of `via` when its own host is unspecified.
fn reachable(advertised: &str, via: &str) -> String {
    let Some((host, port)) = advertised.rsplit_once(':') else {
        return advertised.to_string();
    };
    if !matches!(host, "0.0.0.0" | "[::]" | "::" | "") {
        return advertised.to_string();
    }
    let bare = via.strip_prefix("http://").unwrap_or(via);
    match bare.rsplit_once(':') {
        Some((via_host, _)) => format!("{via_host}:{port}"),
        None => advertised.to_string(),
    }
}

#[cfg(test)]
mod tests;
