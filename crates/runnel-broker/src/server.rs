//! Assembling and running a node: recovery, the tonic server, the metrics
//! endpoint, the maintenance ticker and graceful shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use runnel_proto::v1::admin_service_server::AdminServiceServer;
use runnel_proto::v1::fetch_service_server::FetchServiceServer;
use runnel_proto::v1::group_service_server::GroupServiceServer;
use runnel_proto::v1::produce_service_server::ProduceServiceServer;
use runnel_proto::v1::raft_service_server::RaftServiceServer;
use runnel_storage::FlushPolicy;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic_health::ServingStatus;

use crate::cluster::node::ClusterNode;
use crate::config::BrokerConfig;
use crate::error::{BrokerError, Result};
use crate::groups::Coordinators;
use crate::metrics::{Metrics, serve_metrics};
use crate::page_cache;
use crate::registry::TopicRegistry;
use crate::service::admin::AdminSvc;
use crate::service::fetch::FetchSvc;
use crate::service::fetch_body::FetchServer;
use crate::service::group::GroupSvc;
use crate::service::produce::ProduceSvc;
use crate::service::{NodeContext, ShutdownSignal, now_ms};

/// Longest a cluster node stopping gracefully waits for the groups it
/// leads to move to other replicas before it stops anyway.
const HANDOFF_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
/// HTTP/2 initial stream and connection windows (measured: see the issue).
pub const WINDOW_BYTES: u32 = 16 << 20;
/// Largest HTTP/2 frame a node accepts, and (as a client of other nodes)
/// asks them to send.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;
/// Largest gRPC message decoded or encoded: a request may carry a 64 MiB
/// batch per partition, a fetch response one 64 MiB batch past its budget.
pub const MAX_MESSAGE_BYTES: usize = 160 << 20;

/// Serves a node on `listener` (and `GET /metrics` on `metrics`, if given)
/// until `shutdown` resolves, then shuts down gracefully and returns.
///
/// Recovers every partition before serving. Bind port 0 to let the OS
/// choose (tests do). Same as [`Broker::open`] then [`Broker::serve`].
pub async fn serve(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    config: BrokerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    Broker::open(config)
        .await?
        .serve(listener, metrics, shutdown)
        .await
}

/// A node whose data directory is open and every partition recovered,
/// ready to serve.
pub struct Broker {
    config: BrokerConfig,
    metrics: Arc<Metrics>,
    topics: Arc<TopicRegistry>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Opens the data directory (refusing one that belongs to another node
    /// id), resolves interrupted creates and deletes, and recovers every
    /// partition. Must run inside a tokio runtime.
    pub async fn open(config: BrokerConfig) -> Result<Broker> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new());
        let topics = Arc::new(TopicRegistry::open(&config, metrics.clone()).await?);
        Ok(Broker {
            config,
            metrics,
            topics,
        })
    }

    /// Number of topics recovered.
    pub fn topic_count(&self) -> usize {
        self.topics.list().len()
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets
    /// in-flight requests finish, ends long polls and streams, and flushes
    /// and closes every log.
    pub async fn serve(
        self,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let Broker {
            config,
            metrics,
            topics,
        } = self;
        let (stop_tx, stop) = ShutdownSignal::new();
        // A cluster (several --peers): replication, metadata and the Raft
        // service between nodes.
        let (cluster, raft_svc) = if config.peers.len() > 1 {
            let (node, svc) =
                ClusterNode::start(&config, topics.clone(), metrics.clone(), stop.clone()).await?;
            (
                Some(node),
                Some(
                    RaftServiceServer::new(svc)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES),
                ),
            )
        } else {
            (None, None)
        };
        let groups = Arc::new(Coordinators::new(
            topics.clone(),
            cluster.clone(),
            metrics.clone(),
        ));
        let group_ticker = tokio::spawn(groups.clone().run(stop.clone()));
        let ctx = Arc::new(NodeContext {
            topics: topics.clone(),
            metrics: metrics.clone(),
            shutdown: stop.clone(),
            cluster: cluster.clone(),
            groups,
        });

        let ticker = tokio::spawn(run_ticker(
            topics.clone(),
            config.clone(),
            metrics.clone(),
            stop.clone(),
        ));
        let metrics_server = metrics_listener.map(|l| {
            let stop = stop.clone();
            tokio::spawn(serve_metrics(
                l,
                metrics.clone(),
                topics.clone(),
                async move { stop.wait().await },
            ))
        });

        let (health, health_svc) = tonic_health::server::health_reporter();
        health.set_serving::<AdminServiceServer<AdminSvc>>().await;
        health
            .set_serving::<ProduceServiceServer<ProduceSvc>>()
            .await;
        health.set_serving::<FetchServiceServer<FetchSvc>>().await;
        health.set_serving::<GroupServiceServer<GroupSvc>>().await;
        health.set_service_status("", ServingStatus::Serving).await;

        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(runnel_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_err =
            |e: tonic_reflection::server::Error| BrokerError::Internal(format!("reflection: {e}"));
        let reflection_v1 = reflection().build_v1().map_err(reflection_err)?;
        let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_err)?;

        let admin = AdminServiceServer::new(AdminSvc(ctx.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let produce = ProduceServiceServer::new(ProduceSvc(ctx.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let fetch = FetchServer::new(FetchSvc(ctx.clone()), MAX_MESSAGE_BYTES);

        let group = GroupServiceServer::new(GroupSvc(ctx.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);

        let gauge = metrics.connections.clone();
        let incoming = TcpListenerStream::new(listener).map(move |conn| {
            conn.map(|io| {
                if let Err(e) = io.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                CountedConn::new(io, gauge.clone())
            })
        });

        let health_on_stop = health.clone();
        let handing_over = cluster.clone();
        let signal = async move {
            shutdown.await;
            if let Some(cluster) = handing_over {
                // Still serving (clients get NOT_LEADER naming the new
                // leaders) and still speaking Raft, which the hand-over needs.
                tracing::info!("shutting down: handing leadership over");
                cluster.hand_over_leadership(HANDOFF_LIMIT).await;
            }
            tracing::info!("shutting down: finishing in-flight requests");
            health_on_stop
                .set_service_status("", ServingStatus::NotServing)
                .await;
            let _ = stop_tx.send(true);
        };
        let server = Server::builder()
            .initial_stream_window_size(WINDOW_BYTES)
            .initial_connection_window_size(WINDOW_BYTES)
            .max_frame_size(MAX_FRAME_BYTES)
            .tcp_nodelay(true)
            .add_service(health_svc)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(admin)
            .add_service(produce)
            .add_service(fetch)
            .add_service(group)
            .add_optional_service(raft_svc)
            .serve_with_incoming_shutdown(incoming, signal);
        // Graceful shutdown waits for every connection to close; a client
        // that stopped reading would hold the node up forever, so after the
        // grace period the remaining connections are abandoned (their
        // requests then find the partitions closed).
        let grace = config.shutdown_grace;
        let grace_over = {
            let stop = stop.clone();
            async move {
                stop.wait().await;
                tokio::time::sleep(grace).await;
            }
        };
        let served = tokio::select! {
            served = server => served,
            () = grace_over => {
                tracing::warn!(?grace, "connections still open after the shutdown grace period; closing them");
                Ok(())
            }
        };
        // Whatever ended the server, stop everything else: the shutdown
        // sender lived in the signal future; if the server failed before
        // shutdown, that future is dropped and the receivers see the
        // channel closed, which `ShutdownSignal::wait` treats as shutdown.
        drop(ctx);
        if let Err(e) = &served {
            tracing::error!(error = %e, "gRPC server failed");
        }
        if let Err(e) = ticker.await {
            tracing::error!(error = %e, "maintenance ticker failed");
        }
        if let Err(e) = group_ticker.await {
            tracing::error!(error = %e, "group session ticker failed");
        }
        let closed = topics.close_all().await;
        if let Some(cluster) = &cluster {
            let cluster = cluster.clone();
            let _ = tokio::task::spawn_blocking(move || cluster.stop()).await;
        }
        if let Some(server) = metrics_server {
            match server.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "metrics endpoint failed"),
                Err(e) => tracing::warn!(error = %e, "metrics endpoint task failed"),
                Ok(Ok(())) => {}
            }
        }
        served?;
        closed?;
        tracing::info!("all partitions flushed and closed");
        Ok(())
    }
}

/// How often the page cache budget is enforced (`page_cache::enforce`).
/// Often, so that each round drops little: once a second, a node taking
/// 300 MB/s dropped 300-950 MB per round, 30-110 ms of one core's kernel
/// time that showed as produce-to-consume latency spikes once a second
/// (benches/RESULTS.md, "Page cache budget in small steps").
const PAGE_BUDGET_INTERVAL: Duration = Duration::from_millis(100);
/// How often the pages reads mapped into the broker are unmapped
/// (`Log::release_mapped_pages`): with a budget, those of data it dropped
/// (read back from disk since); without, all of them.
const RELEASE_PAGES_INTERVAL: Duration = Duration::from_secs(1);

/// Runs interval flushes, retention, the release of mapped pages and the
/// page cache budget on the blocking pool.
async fn run_ticker(
    topics: Arc<TopicRegistry>,
    config: BrokerConfig,
    metrics: Arc<Metrics>,
    stop: ShutdownSignal,
) {
    let budget = config.page_cache_bytes;
    let mut period = match config.flush {
        FlushPolicy::IntervalMs(ms) => config.tick_interval.min(Duration::from_millis(ms.max(1))),
        _ => config.retention_interval,
    }
    .min(RELEASE_PAGES_INTERVAL);
    if budget > 0 {
        period = period.min(PAGE_BUDGET_INTERVAL);
    }
    let start = Instant::now();
    // Due times are measured between the ticks' scheduled instants: with
    // the clock read after each wake-up, a round due every tick came out
    // a few microseconds short every other tick and ran every second one.
    let mut last = [start; 3];
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let interval_flush = matches!(config.flush, FlushPolicy::IntervalMs(_));
    loop {
        let at = tokio::select! {
            at = tick.tick() => at.into_std(),
            () = stop.wait() => return,
        };
        // Whether the round `i`, run every `every`, is due (and if so, it
        // counts as run now).
        let mut due = |i: usize, every: Duration| {
            let due = at.saturating_duration_since(last[i]) >= every;
            if due {
                last[i] = at;
            }
            due
        };
        let retention = due(0, config.retention_interval);
        let release = due(1, RELEASE_PAGES_INTERVAL);
        let enforce = budget > 0 && due(2, PAGE_BUDGET_INTERVAL);
        if !retention && !interval_flush && !release && !enforce {
            continue;
        }
        let list = topics.list();
        let mono = i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
        let wall = now_ms();
        let metrics = metrics.clone();
        let work = tokio::task::spawn_blocking(move || {
            let mut logs = Vec::new();
            for topic in list {
                for (id, replica) in topic.partitions.iter().enumerate() {
                    if let Err(e) = replica.maintain(mono, wall, retention) {
                        tracing::warn!(topic = %topic.name, partition = id, error = %e, "partition maintenance failed");
                    }
                    let Some(log) = replica.log() else { continue };
                    // The budget's drops unmap what they drop.
                    if release && let Err(e) = log.release_mapped_pages(budget == 0) {
                        tracing::debug!(topic = %topic.name, partition = id, error = %e, "releasing mapped pages failed");
                    }
                    if enforce {
                        logs.push(log);
                    }
                }
            }
            if enforce {
                let (cached, dropped) = page_cache::enforce(&logs, budget);
                // The counter first: a scrape between the two updates then
                // sees cached + dropped at least what was written, never a
                // round's drop missing from both.
                metrics.page_cache_dropped_bytes.inc_by(dropped);
                metrics.page_cache_bytes.set(
                    cached
                        .saturating_sub(dropped)
                        .try_into()
                        .unwrap_or(i64::MAX),
                );
            }
        });
        if let Err(e) = work.await {
            tracing::error!(error = %e, "maintenance task panicked");
        }
    }
}

/// An accepted connection, counted in `runnel_active_connections` while open.
struct CountedConn {
    io: TcpStream,
    gauge: Gauge,
}

impl CountedConn {
    fn new(io: TcpStream, gauge: Gauge) -> Self {
        gauge.inc();
        CountedConn { io, gauge }
    }
}

impl Drop for CountedConn {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Connected for CountedConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for CountedConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
