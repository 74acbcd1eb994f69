//! Node-to-node transport for Raft messages: one long-lived gRPC stream
//! per peer (`RaftService.Stream`, proto/runnel/v1/cluster.proto) carrying
//! the messages of every Raft group of this node, coalesced into batches.
//!
//! Sending never blocks the Raft loop: each peer has a bounded queue
//! drained by its own task; when the queue is full or the peer is
//! unreachable, messages are dropped and the loop is told (Raft resends
//! what matters, and `report_unreachable` pauses the follower's pipeline).
//! A peer that stops reading (SIGSTOP) fills the HTTP/2 window, then the
//! queue, then its messages are dropped: memory stays bounded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runnel_proto::v1::raft_service_client::RaftServiceClient;
use runnel_proto::v1::raft_service_server::RaftService;
use runnel_proto::v1::{RaftBatch, RaftEnvelope, RaftStreamEnd};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::server::{MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, WINDOW_BYTES};
use crate::service::ShutdownSignal;

/// Batches queued per peer before messages are dropped.
pub const PEER_QUEUE_BATCHES: usize = 1024;
/// Most messages put into one [`RaftBatch`].
pub const MAX_MESSAGES_PER_BATCH: usize = 4096;
/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest reconnect delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A peer that does not answer HTTP/2 pings for this long is unreachable.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// One Raft message of one group, protobuf-encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Raft group (0 is the controller).
    pub group: u64,
    /// The encoded `eraftpb::Message`.
    pub message: Bytes,
    /// On a leader's heartbeat: the replicas it counts in sync (itself
    /// included), for the follower to report. Empty otherwise.
    pub leader_in_sync: Vec<u32>,
}

/// Messages received from one peer, in the order it sent them.
#[derive(Debug)]
pub struct Inbound {
    /// Sending node.
    pub from: u32,
    /// The messages.
    pub messages: Vec<Envelope>,
}

/// Where received messages go; returns false once the receiver is gone.
pub type InboxFn = Arc<dyn Fn(Inbound) -> bool + Send + Sync>;
/// Called with a peer id whose messages were dropped (unreachable or slow).
pub type UnreachableFn = Arc<dyn Fn(u32) + Send + Sync>;

/// The sending side: one queue and one task per peer.
#[derive(Clone)]
pub struct Transport {
    node_id: u32,
    queues: Arc<BTreeMap<u32, mpsc::Sender<Vec<Envelope>>>>,
    unreachable: UnreachableFn,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("node_id", &self.node_id)
            .field("peers", &self.queues.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Transport {
    /// Starts a sender task for every peer in `peers` (id -> address, this
    /// node excluded). The tasks stop when `shutdown` fires.
    pub fn start(
        node_id: u32,
        peers: &BTreeMap<u32, String>,
        unreachable: UnreachableFn,
        shutdown: ShutdownSignal,
    ) -> Transport {
        let mut queues = BTreeMap::new();
        for (&id, addr) in peers {
            if id == node_id {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE_BATCHES);
            queues.insert(id, tx);
            tokio::spawn(run_peer(
                node_id,
                id,
                addr.clone(),
                rx,
                unreachable.clone(),
                shutdown.clone(),
            ));
        }
        Transport {
            node_id,
            queues: Arc::new(queues),
            unreachable,
        }
    }

    /// Queues `messages` for node `to` without waiting; false when they
    /// were dropped: `to` is not a peer, or its queue is full (then the
    /// peer is also reported unreachable).
    pub fn send(&self, to: u32, messages: Vec<Envelope>) -> bool {
        if messages.is_empty() {
            return true;
        }
        let Some(queue) = self.queues.get(&to) else {
            tracing::warn!(to, "raft message for a node that is not a peer; dropped");
            return false;
        };
        if queue.try_send(messages).is_err() {
            (self.unreachable)(to);
            return false;
        }
        true
    }
}

/// Sends everything queued for peer `id` over one stream, reconnecting
/// with backoff when it breaks.
async fn run_peer(
    node_id: u32,
    id: u32,
    addr: String,
    mut queue: mpsc::Receiver<Vec<Envelope>>,
    unreachable: UnreachableFn,
    shutdown: ShutdownSignal,
) {
    let mut backoff = MIN_BACKOFF;
    let mut last_error = String::new();
    loop {
        if shutdown.is_set() {
            return;
        }
        let connected = tokio::select! {
            c = connect(&addr) => c,
            () = shutdown.wait() => return,
        };
        let mut client = match connected {
            Ok(c) => c,
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::warn!(peer = id, %addr, error = %e, "cannot reach peer; retrying");
                    last_error = e;
                }
                if !drop_queued(&mut queue, &shutdown, backoff).await {
                    return;
                }
                unreachable(id);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let (tx, rx) = mpsc::channel::<RaftBatch>(16);
        let mut call = Box::pin(async move { client.stream(ReceiverStream::new(rx)).await });
        let mut sent_any = false;
        let ended = loop {
            tokio::select! {
                first = queue.recv() => {
                    let Some(mut messages) = first else { return };
                    while messages.len() < MAX_MESSAGES_PER_BATCH {
                        match queue.try_recv() {
                            Ok(more) => messages.extend(more),
                            Err(_) => break,
                        }
                    }
                    let batch = RaftBatch {
                        from_node: node_id,
                        to_node: id,
                        messages: messages
                            .into_iter()
                            .map(|m| RaftEnvelope {
                                group: m.group,
                                message: m.message,
                                leader_in_sync: m.leader_in_sync,
                            })
                            .collect(),
                    };
                    if tx.send(batch).await.is_err() {
                        break "the stream closed".to_string();
                    }
                    if !sent_any {
                        sent_any = true;
                        backoff = MIN_BACKOFF;
                        if !last_error.is_empty() {
                            tracing::info!(peer = id, %addr, "peer reachable again");
                            last_error.clear();
                        }
                    }
                }
                res = &mut call => {
                    break match res {
                        Ok(_) => "the peer ended the stream".to_string(),
                        Err(s) => format!("{}: {}", s.code(), s.message()),
                    };
                }
                () = shutdown.wait() => return,
            }
        };
        if ended != last_error {
            tracing::warn!(peer = id, %addr, reason = %ended, "raft stream to peer broke; reconnecting");
            last_error = ended;
        }
        unreachable(id);
        if !drop_queued(&mut queue, &shutdown, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Waits `delay` while dropping whatever is queued (Raft resends); false
/// when shutting down.
async fn drop_queued(
    queue: &mut mpsc::Receiver<Vec<Envelope>>,
    shutdown: &ShutdownSignal,
    delay: Duration,
) -> bool {
    let until = tokio::time::Instant::now() + delay;
    loop {
        tokio::select! {
            m = queue.recv() => if m.is_none() { return false },
            () = tokio::time::sleep_until(until) => return true,
            () = shutdown.wait() => return false,
        }
    }
}

async fn connect(addr: &str) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .initial_stream_window_size(WINDOW_BYTES)
        .initial_connection_window_size(WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .http2_keep_alive_interval(Duration::from_millis(500))
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    Ok(RaftServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// The receiving side: `RaftService` handing batches to the Raft loop.
pub struct RaftSvc {
    node_id: u32,
    peers: Vec<u32>,
    inbox: InboxFn,
    shutdown: ShutdownSignal,
}

impl RaftSvc {
    /// Accepts streams addressed to `node_id` from any of `peers`.
    pub fn new(node_id: u32, peers: Vec<u32>, inbox: InboxFn, shutdown: ShutdownSignal) -> Self {
        RaftSvc {
            node_id,
            peers,
            inbox,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl RaftService for RaftSvc {
    async fn stream(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<RaftStreamEnd>, Status> {
        let mut stream = request.into_inner();
        loop {
            let next = tokio::select! {
                n = stream.message() => n?,
                () = self.shutdown.wait() => None,
            };
            let Some(batch) = next else {
                return Ok(Response::new(RaftStreamEnd {}));
            };
            if batch.to_node != self.node_id {
                return Err(Status::failed_precondition(format!(
                    "this is node {}, not node {}: check --peers on node {}",
                    self.node_id, batch.to_node, batch.from_node
                )));
            }
            if !self.peers.contains(&batch.from_node) {
                return Err(Status::failed_precondition(format!(
                    "node {} is not a peer of node {} (peers {:?}): check --peers",
                    batch.from_node, self.node_id, self.peers
                )));
            }
            let inbound = Inbound {
                from: batch.from_node,
                messages: batch
                    .messages
                    .into_iter()
                    .map(|m| Envelope {
                        group: m.group,
                        message: m.message,
                        leader_in_sync: m.leader_in_sync,
                    })
                    .collect(),
            };
            if !(self.inbox)(inbound) {
                return Err(Status::unavailable("node is shutting down"));
            }
        }
    }
}
