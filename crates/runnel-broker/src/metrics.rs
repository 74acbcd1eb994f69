//! Prometheus metrics (prometheus-client), served as text on `GET /metrics`.
//!
//! Every name starts with `runnel_`:
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `runnel_partition_log_start_offset` | gauge | topic, partition | first offset stored |
//! | `runnel_partition_high_watermark` | gauge | topic, partition | offset after the last committed record |
//! | `runnel_partition_log_end_offset` | gauge | topic, partition | offset after the last appended record |
//! | `runnel_partition_size_bytes` | gauge | topic, partition | bytes stored |
//! | `runnel_partition_leader` | gauge | topic, partition | node id of the leader this node knows, 0 for none |
//! | `runnel_partition_replicas` / `runnel_partition_in_sync_replicas` | gauge | topic, partition | replicas, and those in sync (as `topic describe` shows them) |
//! | `runnel_partition_under_replicated` | gauge | topic, partition | 1 on the partition's leader while some replica is out of sync, else 0 (sum over nodes: Kafka's UnderReplicatedPartitions) |
//! | `runnel_bytes_in_total` / `runnel_records_in_total` | counter | topic, partition | appended (acknowledged or acks=0) |
//! | `runnel_bytes_out_total` / `runnel_records_out_total` | counter | topic, partition | returned by Fetch and Subscribe (records: whole batches) |
//! | `runnel_request_duration_seconds` | histogram | rpc | time to answer each RPC (per request of a ProduceStream; until the first message of a Subscribe) |
//! | `runnel_fsync_duration_seconds` | histogram | | one group-commit `Log::flush` (flush=always) or an interval flush that synced; each call is one data fsync |
//! | `runnel_active_connections` | gauge | | open client TCP connections |
//! | `runnel_page_cache_bytes` | gauge | | written partition data left in the page cache, as the budget counts it (`--page-cache-bytes`; 0 when unlimited) |
//! | `runnel_page_cache_dropped_bytes_total` | counter | | partition data written back and dropped from the page cache to keep the budget |
//! | `runnel_group_members` | gauge | group | members of a group this node coordinates |
//! | `runnel_group_committed_offset` | gauge | group, topic, partition | the group's committed offset |
//! | `runnel_group_lag` | gauge | group, topic, partition | high watermark - committed offset (when this node holds the partition) |
//!
//! Offsets are read from the replicas at scrape time; group metrics are
//! refreshed every second by the coordinators (only the groups this node
//! coordinates appear).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::registry::TopicRegistry;

/// Labels of per-partition metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PartitionLabels {
    pub(crate) topic: String,
    pub(crate) partition: u32,
}

/// Label of per-group metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GroupLabels {
    pub(crate) group: String,
}

/// Labels of per-group, per-partition metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GroupPartitionLabels {
    pub(crate) group: String,
    pub(crate) topic: String,
    pub(crate) partition: u32,
}

/// Label of the request latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RpcLabels {
    pub(crate) rpc: &'static str,
}

fn latency_histogram() -> Histogram {
    // 20 µs .. ~42 s
    Histogram::new(exponential_buckets(0.000_02, 2.0, 22))
}

/// All metrics of a node.
pub(crate) struct Metrics {
    registry: Registry,
    log_start: Family<PartitionLabels, Gauge>,
    high_watermark: Family<PartitionLabels, Gauge>,
    log_end: Family<PartitionLabels, Gauge>,
    size_bytes: Family<PartitionLabels, Gauge>,
    leader: Family<PartitionLabels, Gauge>,
    replicas: Family<PartitionLabels, Gauge>,
    in_sync: Family<PartitionLabels, Gauge>,
    under_replicated: Family<PartitionLabels, Gauge>,
    bytes_in: Family<PartitionLabels, Counter>,
    records_in: Family<PartitionLabels, Counter>,
    bytes_out: Family<PartitionLabels, Counter>,
    records_out: Family<PartitionLabels, Counter>,
    requests: Family<RpcLabels, Histogram, fn() -> Histogram>,
    pub(crate) fsync_seconds: Histogram,
    pub(crate) connections: Gauge,
    pub(crate) page_cache_bytes: Gauge,
    pub(crate) page_cache_dropped_bytes: Counter,
    pub(crate) group_members: Family<GroupLabels, Gauge>,
    pub(crate) group_committed: Family<GroupPartitionLabels, Gauge>,
    pub(crate) group_lag: Family<GroupPartitionLabels, Gauge>,
}

/// The traffic counters of one partition, cloned out of the families once
/// so the hot path does no label lookup.
#[derive(Clone, Debug, Default)]
pub(crate) struct PartitionCounters {
    pub(crate) bytes_in: Counter,
    pub(crate) records_in: Counter,
    pub(crate) bytes_out: Counter,
    pub(crate) records_out: Counter,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("runnel");
        let m = Metrics {
            log_start: Family::default(),
            high_watermark: Family::default(),
            log_end: Family::default(),
            size_bytes: Family::default(),
            leader: Family::default(),
            replicas: Family::default(),
            in_sync: Family::default(),
            under_replicated: Family::default(),
            bytes_in: Family::default(),
            records_in: Family::default(),
            bytes_out: Family::default(),
            records_out: Family::default(),
            requests: Family::new_with_constructor(latency_histogram),
            fsync_seconds: latency_histogram(),
            connections: Gauge::default(),
            page_cache_bytes: Gauge::default(),
            page_cache_dropped_bytes: Counter::default(),
            group_members: Family::default(),
            group_committed: Family::default(),
            group_lag: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "partition_log_start_offset",
            "First offset stored",
            m.log_start.clone(),
        );
        registry.register(
            "partition_high_watermark",
            "Offset after the last committed record",
            m.high_watermark.clone(),
        );
        registry.register(
            "partition_log_end_offset",
            "Offset after the last appended record",
            m.log_end.clone(),
        );
        registry.register("partition_size_bytes", "Bytes stored", m.size_bytes.clone());
        registry.register(
            "partition_leader",
            "Node id of the partition's leader as this node knows it (0: none)",
            m.leader.clone(),
        );
        registry.register(
            "partition_replicas",
            "Replicas of the partition",
            m.replicas.clone(),
        );
        registry.register(
            "partition_in_sync_replicas",
            "Replicas of the partition in sync with its leader",
            m.in_sync.clone(),
        );
        registry.register(
            "partition_under_replicated",
            "1 on the partition's leader while a replica is out of sync",
            m.under_replicated.clone(),
        );
        registry.register("bytes_in", "Batch bytes appended", m.bytes_in.clone());
        registry.register("records_in", "Records appended", m.records_in.clone());
        registry.register(
            "bytes_out",
            "Batch bytes returned to consumers",
            m.bytes_out.clone(),
        );
        registry.register(
            "records_out",
            "Records returned to consumers",
            m.records_out.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer an RPC",
            m.requests.clone(),
        );
        registry.register(
            "fsync_duration_seconds",
            "Duration of one group-commit or interval flush of a partition log (one data fsync)",
            m.fsync_seconds.clone(),
        );
        registry.register(
            "active_connections",
            "Open client connections",
            m.connections.clone(),
        );
        registry.register(
            "page_cache_bytes",
            "Written partition data left in the page cache, as the budget counts it",
            m.page_cache_bytes.clone(),
        );
        registry.register(
            "page_cache_dropped_bytes",
            "Partition data written back and dropped from the page cache to keep the budget",
            m.page_cache_dropped_bytes.clone(),
        );
        registry.register(
            "group_members",
            "Members of a consumer group this node coordinates",
            m.group_members.clone(),
        );
        registry.register(
            "group_committed_offset",
            "A consumer group's committed offset",
            m.group_committed.clone(),
        );
        registry.register(
            "group_lag",
            "High watermark minus the group's committed offset",
            m.group_lag.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The counters of one partition.
    pub(crate) fn partition(&self, topic: &str, partition: u32) -> PartitionCounters {
        let l = PartitionLabels {
            topic: topic.to_string(),
            partition,
        };
        PartitionCounters {
            bytes_in: self.bytes_in.get_or_create_owned(&l),
            records_in: self.records_in.get_or_create_owned(&l),
            bytes_out: self.bytes_out.get_or_create_owned(&l),
            records_out: self.records_out.get_or_create_owned(&l),
        }
    }

    /// Forgets a deleted topic's partitions.
    pub(crate) fn remove_partition(&self, topic: &str, partition: u32) {
        let l = PartitionLabels {
            topic: topic.to_string(),
            partition,
        };
        for f in [
            &self.log_start,
            &self.high_watermark,
            &self.log_end,
            &self.size_bytes,
            &self.leader,
            &self.replicas,
            &self.in_sync,
            &self.under_replicated,
        ] {
            f.remove(&l);
        }
        for f in [
            &self.bytes_in,
            &self.records_in,
            &self.bytes_out,
            &self.records_out,
        ] {
            f.remove(&l);
        }
    }

    /// Starts timing one RPC; the time is recorded when the guard drops.
    pub(crate) fn time(&self, rpc: &'static str) -> RequestTimer {
        RequestTimer {
            histogram: self.requests.get_or_create_owned(&RpcLabels { rpc }),
            start: Instant::now(),
        }
    }

    /// Encodes everything, after reading the partitions' offsets and
    /// replication state.
    pub(crate) fn encode(&self, topics: &TopicRegistry) -> Result<String, std::fmt::Error> {
        let me = topics.node().id;
        for topic in topics.list() {
            for (id, replica) in topic.partitions.iter().enumerate() {
                let o = replica.offsets();
                let l = PartitionLabels {
                    topic: topic.name.clone(),
                    partition: id as u32,
                };
                let set = |f: &Family<PartitionLabels, Gauge>, v: u64| {
                    f.get_or_create(&l)
                        .set(i64::try_from(v).unwrap_or(i64::MAX));
                };
                set(&self.log_start, o.log_start);
                set(&self.high_watermark, o.high_watermark);
                set(&self.log_end, o.log_end);
                set(&self.size_bytes, replica.size_bytes());
                let leader = replica.leader().map_or(0, |l| l.id);
                let (replicas, in_sync) = (replica.replicas(), replica.in_sync_replicas());
                set(&self.leader, u64::from(leader));
                set(&self.replicas, replicas.len() as u64);
                set(&self.in_sync, in_sync.len() as u64);
                let under = leader == me && in_sync.len() < replicas.len();
                set(&self.under_replicated, u64::from(under));
            }
        }
        let mut out = String::with_capacity(16 << 10);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Records an RPC's duration on drop.
pub(crate) struct RequestTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

type MetricsState = (Arc<Metrics>, Arc<TopicRegistry>);

async fn get_metrics(State((metrics, topics)): State<MetricsState>) -> axum::response::Response {
    match metrics.encode(&topics) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics").into_response(),
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub(crate) async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    topics: Arc<TopicRegistry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(get_metrics))
        .with_state((metrics, topics));
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::debug!(?addr, "metrics endpoint serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
