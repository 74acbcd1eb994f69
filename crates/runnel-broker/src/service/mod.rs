//! The gRPC services (tonic): admin, produce, fetch, group. Each converts requests
//! into registry and [`Replica`](crate::Replica) calls and errors into
//! statuses (`crate::error`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::error::BrokerError;
use crate::metrics::Metrics;
use crate::registry::TopicRegistry;
use crate::replica::ReplicaError;

pub(crate) mod admin;
pub(crate) mod fetch;
pub(crate) mod fetch_body;
pub(crate) mod group;
pub(crate) mod produce;

/// What every service shares.
pub(crate) struct NodeContext {
    pub(crate) topics: Arc<TopicRegistry>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: ShutdownSignal,
    /// Replication and metadata, when the node is part of a cluster.
    pub(crate) cluster: Option<Arc<crate::cluster::node::ClusterNode>>,
    /// Consumer-group coordinators.
    pub(crate) groups: Arc<crate::groups::Coordinators>,
}

/// Fires once when the node starts shutting down: long polls return,
/// Subscribe and ProduceStream streams end.
#[derive(Clone, Debug)]
pub struct ShutdownSignal(watch::Receiver<bool>);

impl ShutdownSignal {
    /// A signal and the sender that fires it (send `true`).
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, ShutdownSignal(rx))
    }

    /// Whether shutdown began.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown began (or the sender is gone).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// The Unix time in milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A replica failure on `topic`-`partition` as a broker error.
pub(crate) fn replica_error(topic: &str, partition: u32, e: ReplicaError) -> BrokerError {
    match e {
        ReplicaError::NotLeader { leader } => {
            let leader = leader.unwrap_or(crate::NodeRef {
                id: 0,
                address: String::new(),
            });
            BrokerError::NotLeader {
                topic: topic.to_string(),
                partition,
                leader_id: leader.id,
                leader_address: leader.address,
            }
        }
        ReplicaError::OffsetOutOfRange {
            offset,
            log_start,
            high_watermark,
        } => BrokerError::OffsetOutOfRange {
            topic: topic.to_string(),
            partition,
            offset,
            log_start,
            high_watermark,
        },
        ReplicaError::Closed => BrokerError::Unavailable(format!(
            "{topic}-{partition} is closed (the topic was deleted or the node is shutting down); retry"
        )),
        ReplicaError::Busy(_) | ReplicaError::Unavailable(_) => {
            BrokerError::Unavailable(format!("{topic}-{partition}: {e}"))
        }
        ReplicaError::Storage(source) => BrokerError::Storage {
            context: format!("{topic}-{partition}"),
            source,
        },
    }
}

/// Checks that no partition id repeats in a request.
pub(crate) fn check_unique(
    partitions: impl Iterator<Item = u32>,
    field: &str,
) -> Result<(), BrokerError> {
    let mut seen: Vec<u32> = partitions.collect();
    seen.sort_unstable();
    match seen.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(BrokerError::InvalidArgument(format!(
            "{field}: partition {} appears more than once",
            w[0]
        ))),
        None => Ok(()),
    }
}
