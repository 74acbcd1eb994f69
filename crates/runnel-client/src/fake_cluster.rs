//! A fake cluster for routing tests: in-process tonic servers on
//! 127.0.0.1:0, one per "node", sharing one log per partition (replication
//! is not what is tested). A node serves produce, fetch and offset lookups
//! only for partitions it leads, answering `NOT_LEADER` (naming the leader
//! or not, as the test says) for the others; any node serves admin calls.
//! Tests move leaders and take nodes down while clients run.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use runnel_batch::BatchView;
use runnel_proto::REASON_METADATA_KEY;
use runnel_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use runnel_proto::v1::fetch_service_server::{FetchService, FetchServiceServer};
use runnel_proto::v1::partition_records::Data;
use runnel_proto::v1::produce_service_server::{ProduceService, ProduceServiceServer};
use runnel_proto::v1::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicRequest, CreateTopicResponse,
    DeleteTopicRequest, DeleteTopicResponse, DescribeClusterRequest, DescribeClusterResponse,
    DescribeTopicRequest, DescribeTopicResponse, ErrorReason, FetchRequest, FetchResponse,
    ListOffsetsRequest, ListOffsetsResponse, ListTopicsRequest, ListTopicsResponse, NodeInfo,
    OffsetSpec, PartitionData, PartitionDescription, PartitionOffset, PartitionResult,
    ProduceRequest, ProduceResponse, ProduceStreamRequest, ProduceStreamResponse, SubscribeRequest,
    TopicDescription,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The one topic the fake knows.
pub(crate) const TOPIC: &str = "t";

/// State shared by every node of the fake.
#[derive(Debug, Default)]
pub(crate) struct Cluster {
    /// Node id and address, by id order.
    pub(crate) nodes: Mutex<Vec<(u32, String)>>,
    /// Leader per partition (0: none).
    pub(crate) leaders: Mutex<Vec<u32>>,
    /// Whether `NOT_LEADER` names the leader (id and address).
    pub(crate) name_leader: AtomicBool,
    /// Stored batches per partition: (base offset, stamped bytes).
    logs: Mutex<HashMap<u32, Vec<(u64, Bytes)>>>,
    /// DescribeTopic calls answered, all nodes.
    pub(crate) describes: AtomicU32,
    /// Appends still to refuse with UNAVAILABLE (a transient failure).
    pub(crate) refuse: AtomicU32,
}

impl Cluster {
    /// Record values of `partition`, in offset order.
    pub(crate) fn values(&self, partition: u32) -> Vec<Vec<u8>> {
        let logs = self.logs.lock().unwrap();
        let mut out = Vec::new();
        for (_, bytes) in logs.get(&partition).into_iter().flatten() {
            let view = BatchView::new(bytes).unwrap();
            for record in view.records().unwrap().iter() {
                out.push(record.unwrap().value.to_vec());
            }
        }
        out
    }

    /// Moves `partition`'s leadership to `leader`.
    pub(crate) fn move_leader(&self, partition: u32, leader: u32) {
        self.leaders.lock().unwrap()[partition as usize] = leader;
    }

    fn address(&self, id: u32) -> String {
        let nodes = self.nodes.lock().unwrap();
        nodes
            .iter()
            .find(|(n, _)| *n == id)
            .map(|(_, a)| a.clone())
            .unwrap_or_default()
    }

    fn end_offset(&self, partition: u32) -> u64 {
        let logs = self.logs.lock().unwrap();
        logs.get(&partition)
            .and_then(|l| l.last())
            .map_or(0, |(base, bytes)| {
                base + u64::from(BatchView::new(bytes).unwrap().header().record_count)
            })
    }
}

/// Counters of one node.
#[derive(Debug, Default)]
pub(crate) struct NodeStats {
    /// ProduceStream calls opened.
    pub(crate) streams: AtomicU32,
    /// Partitions appended here (one per stored batch).
    pub(crate) appended: AtomicU32,
    /// Fetch calls answered.
    pub(crate) fetches: AtomicU32,
    /// Partitions answered with data or nothing (not NOT_LEADER) in fetches.
    pub(crate) fetched: AtomicU32,
    /// Partitions answered with NOT_LEADER (produce, fetch, lookups).
    pub(crate) not_leader: AtomicU32,
}

/// One node of the fake.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) id: u32,
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) stats: Arc<NodeStats>,
    /// While set, every call fails as an unreachable node's would.
    pub(crate) down: Arc<AtomicBool>,
    /// While set, admin calls never answer (a paused process).
    pub(crate) paused: Arc<AtomicBool>,
}

fn runnel_status(code: tonic::Code, reason: ErrorReason, message: &str) -> Status {
    let mut status = Status::new(code, message);
    if let Ok(value) = reason.as_str_name().parse() {
        status.metadata_mut().insert(REASON_METADATA_KEY, value);
    }
    status
}

impl Node {
    /// Admin calls: never answers while paused.
    async fn admin_gate(&self) -> Result<(), Status> {
        if self.paused.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.check_up()
    }

    fn check_up(&self) -> Result<(), Status> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("connection refused (fake)"));
        }
        Ok(())
    }

    /// `NOT_LEADER` for `partition`, unless this node leads it.
    fn not_leader(&self, partition: u32) -> Option<runnel_proto::v1::Error> {
        let leader = self
            .cluster
            .leaders
            .lock()
            .unwrap()
            .get(partition as usize)
            .copied()
            .unwrap_or(0);
        if leader == self.id {
            return None;
        }
        self.stats.not_leader.fetch_add(1, Ordering::SeqCst);
        let named = self.cluster.name_leader.load(Ordering::SeqCst);
        let (leader_id, leader_address) = if named && leader != 0 {
            (leader, self.cluster.address(leader))
        } else {
            (0, String::new())
        };
        Some(runnel_proto::v1::Error {
            reason: ErrorReason::NotLeader as i32,
            message: format!("node {} does not lead {TOPIC}-{partition}", self.id),
            leader_id,
            leader_address,
        })
    }

    fn handle(&self, request: &ProduceRequest) -> ProduceResponse {
        let mut results = Vec::new();
        for p in &request.partitions {
            let partition = p.partition.unwrap_or(0);
            if let Some(error) = self.not_leader(partition) {
                results.push(PartitionResult {
                    partition,
                    base_offset: None,
                    record_count: 0,
                    error: Some(error),
                });
                continue;
            }
            let refused = self
                .cluster
                .refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if refused {
                results.push(PartitionResult {
                    partition,
                    base_offset: None,
                    record_count: 0,
                    error: Some(runnel_proto::v1::Error {
                        reason: ErrorReason::Unavailable as i32,
                        message: "busy (fake)".into(),
                        ..Default::default()
                    }),
                });
                continue;
            }
            let Some(Data::Batch(bytes)) = &p.data else {
                panic!("runnel-client sends pre-encoded batches");
            };
            let mut stamped = bytes.to_vec();
            let count = BatchView::new(bytes).unwrap().header().record_count;
            let base = self.cluster.end_offset(partition);
            runnel_batch::stamp(&mut stamped, base, 1, 1);
            self.cluster
                .logs
                .lock()
                .unwrap()
                .entry(partition)
                .or_default()
                .push((base, Bytes::from(stamped)));
            self.stats.appended.fetch_add(1, Ordering::SeqCst);
            results.push(PartitionResult {
                partition,
                base_offset: Some(base),
                record_count: count,
                error: None,
            });
        }
        ProduceResponse { results }
    }
}

#[tonic::async_trait]
impl ProduceService for Node {
    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        self.check_up()?;
        Ok(Response::new(self.handle(request.get_ref())))
    }

    type ProduceStreamStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<ProduceStreamResponse, Status>> + Send>>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceStreamRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        self.check_up()?;
        self.stats.streams.fetch_add(1, Ordering::SeqCst);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let node = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                if node.down.load(Ordering::SeqCst) {
                    let _gone = tx.send(Err(Status::unavailable("node went down"))).await;
                    return;
                }
                let request = msg.request.unwrap_or_default();
                let answer = ProduceStreamResponse {
                    sequence: msg.sequence,
                    response: Some(node.handle(&request)),
                    error: None,
                };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl FetchService for Node {
    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        self.check_up()?;
        self.stats.fetches.fetch_add(1, Ordering::SeqCst);
        let mut partitions = Vec::new();
        // The response budget, spent in request order as the broker does:
        // once it is gone the remaining partitions get nothing.
        let mut budget = match request.get_ref().max_bytes {
            0 => usize::MAX,
            n => n as usize,
        };
        for p in &request.get_ref().partitions {
            let high_watermark = self.cluster.end_offset(p.partition);
            if let Some(error) = self.not_leader(p.partition) {
                partitions.push(PartitionData {
                    partition: p.partition,
                    next_offset: p.offset,
                    error: Some(error),
                    ..PartitionData::default()
                });
                continue;
            }
            self.stats.fetched.fetch_add(1, Ordering::SeqCst);
            // At most two batches per fetch: reads take several rounds.
            let mut batches = Vec::new();
            let logs = self.cluster.logs.lock().unwrap();
            for (_, bytes) in logs.get(&p.partition).into_iter().flatten() {
                let next = BatchView::new(bytes).unwrap().header().next_offset();
                if next > p.offset && batches.len() < 2 && budget > 0 {
                    batches.push(bytes.clone());
                }
            }
            drop(logs);
            let data: Vec<u8> = batches.iter().flat_map(|b| b.iter().copied()).collect();
            budget = budget.saturating_sub(data.len());
            partitions.push(PartitionData {
                partition: p.partition,
                high_watermark,
                batches: Bytes::from(data),
                ..PartitionData::default()
            });
        }
        Ok(Response::new(FetchResponse { partitions }))
    }

    type SubscribeStream = tokio_stream::Empty<Result<PartitionData, Status>>;

    async fn subscribe(
        &self,
        _: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented(""))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        self.check_up()?;
        let offsets = request
            .get_ref()
            .queries
            .iter()
            .map(|q| PartitionOffset {
                partition: q.partition,
                offset: if q.spec == OffsetSpec::Earliest as i32 {
                    0
                } else {
                    self.cluster.end_offset(q.partition)
                },
                timestamp_ms: None,
                error: self.not_leader(q.partition),
            })
            .collect();
        Ok(Response::new(ListOffsetsResponse { offsets }))
    }
}

#[tonic::async_trait]
impl AdminService for Node {
    async fn create_topic(
        &self,
        _: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        Err(Status::unimplemented(""))
    }

    async fn delete_topic(
        &self,
        _: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        Err(Status::unimplemented(""))
    }

    /// Adds partitions led by the nodes in turn.
    async fn create_partitions(
        &self,
        request: Request<CreatePartitionsRequest>,
    ) -> Result<Response<CreatePartitionsResponse>, Status> {
        self.admin_gate().await?;
        let nodes = self.cluster.nodes.lock().unwrap().len() as u32;
        let mut leaders = self.cluster.leaders.lock().unwrap();
        for p in leaders.len() as u32..request.get_ref().partitions {
            leaders.push(p % nodes + 1);
        }
        Ok(Response::new(CreatePartitionsResponse {
            topic: Some(TopicDescription {
                name: TOPIC.into(),
                ..TopicDescription::default()
            }),
        }))
    }

    async fn list_topics(
        &self,
        _: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        self.admin_gate().await?;
        Ok(Response::new(ListTopicsResponse::default()))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        self.admin_gate().await?;
        if request.get_ref().name != TOPIC {
            return Err(runnel_status(
                tonic::Code::NotFound,
                ErrorReason::UnknownTopic,
                "no such topic",
            ));
        }
        self.cluster.describes.fetch_add(1, Ordering::SeqCst);
        let leaders = self.cluster.leaders.lock().unwrap().clone();
        Ok(Response::new(DescribeTopicResponse {
            topic: Some(TopicDescription {
                name: TOPIC.into(),
                config: None,
                partitions: leaders
                    .iter()
                    .enumerate()
                    .map(|(id, leader)| PartitionDescription {
                        id: id as u32,
                        leader: *leader,
                        ..Default::default()
                    })
                    .collect(),
            }),
        }))
    }

    async fn describe_cluster(
        &self,
        _: Request<DescribeClusterRequest>,
    ) -> Result<Response<DescribeClusterResponse>, Status> {
        self.admin_gate().await?;
        let nodes = self.cluster.nodes.lock().unwrap().clone();
        Ok(Response::new(DescribeClusterResponse {
            nodes: nodes
                .into_iter()
                .map(|(id, address)| NodeInfo { id, address })
                .collect(),
            answered_by: self.id,
            controller_id: 1,
            version: "fake".into(),
        }))
    }
}

/// A running fake cluster.
pub(crate) struct FakeCluster {
    pub(crate) cluster: Arc<Cluster>,
    /// Nodes by id order (node `i + 1` at index `i`).
    pub(crate) nodes: Vec<Node>,
    /// Bootstrap list naming every node.
    pub(crate) bootstrap: String,
}

impl FakeCluster {
    /// Starts `nodes` nodes serving topic [`TOPIC`] with these partition
    /// leaders.
    pub(crate) async fn start(nodes: u32, leaders: Vec<u32>) -> FakeCluster {
        let cluster = Arc::new(Cluster {
            leaders: Mutex::new(leaders),
            name_leader: AtomicBool::new(true),
            ..Cluster::default()
        });
        let mut started = Vec::new();
        let mut addresses = Vec::new();
        for id in 1..=nodes {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap().to_string();
            let node = Node {
                id,
                cluster: cluster.clone(),
                stats: Arc::default(),
                down: Arc::default(),
                paused: Arc::default(),
            };
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(ProduceServiceServer::new(node.clone()))
                    .add_service(FetchServiceServer::new(node.clone()))
                    .add_service(AdminServiceServer::new(node.clone()))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
            );
            cluster.nodes.lock().unwrap().push((id, address.clone()));
            addresses.push(address);
            started.push(node);
        }
        FakeCluster {
            cluster,
            nodes: started,
            bootstrap: addresses.join(","),
        }
    }

    /// Node `id`.
    pub(crate) fn node(&self, id: u32) -> &Node {
        &self.nodes[id as usize - 1]
    }

    /// Node `id`'s address.
    pub(crate) fn address(&self, id: u32) -> String {
        self.cluster.address(id)
    }
}
