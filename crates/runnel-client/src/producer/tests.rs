//! The producer against a scripted in-process broker: batching, offsets,
//! retries, broken streams, timeouts, acks=0.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnel_batch::BatchView;
use runnel_proto::REASON_METADATA_KEY;
use runnel_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use runnel_proto::v1::partition_records::Data;
use runnel_proto::v1::produce_service_server::{ProduceService, ProduceServiceServer};
use runnel_proto::v1::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicRequest, CreateTopicResponse,
    DeleteTopicRequest, DeleteTopicResponse, DescribeClusterRequest, DescribeClusterResponse,
    DescribeTopicRequest, DescribeTopicResponse, ListTopicsRequest, ListTopicsResponse,
    PartitionDescription, PartitionResult, ProduceRequest, ProduceResponse, ProduceStreamRequest,
    ProduceStreamResponse, TopicDescription,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::*;

/// What the scripted broker does with one streamed request.
#[derive(Clone, Copy, Debug)]
enum Reply {
    /// Append and answer with offsets.
    Store,
    /// Answer every partition with this error; store nothing.
    PartitionError(ErrorReason),
    /// Fail the whole request; store nothing.
    RequestError(ErrorReason),
    /// Store, but never answer.
    Silent,
    /// End the stream with an error; store nothing.
    Break,
}

type Script = Box<dyn FnMut(u64) -> Reply + Send>;

struct Broker {
    partitions: u32,
    script: Mutex<Script>,
    /// Requests seen, in arrival order.
    requests: Mutex<u64>,
    /// Stored record values per partition, in offset order.
    stored: Mutex<HashMap<u32, Vec<Vec<u8>>>>,
    streams_opened: Mutex<u32>,
    /// DescribeTopic calls seen.
    describes: Mutex<u32>,
}

impl Broker {
    fn handle(&self, request: &ProduceRequest, reply: Reply) -> ProduceResponse {
        let mut stored = self.stored.lock().unwrap();
        let mut results = Vec::new();
        for p in &request.partitions {
            let partition = p.partition.unwrap();
            let Some(Data::Batch(bytes)) = &p.data else {
                panic!("runnel-client sends pre-encoded batches");
            };
            let view = BatchView::new(bytes).unwrap();
            let log = stored.entry(partition).or_default();
            let base = log.len() as u64;
            if let Reply::PartitionError(reason) = reply {
                results.push(PartitionResult {
                    partition,
                    base_offset: None,
                    record_count: 0,
                    error: Some(runnel_proto::v1::Error {
                        reason: reason as i32,
                        message: format!("scripted {}", reason.as_str_name()),
                        ..Default::default()
                    }),
                });
                continue;
            }
            for record in view.records().unwrap().iter() {
                log.push(record.unwrap().value.to_vec());
            }
            results.push(PartitionResult {
                partition,
                base_offset: (request.acks != Acks::None.to_proto() as i32).then_some(base),
                record_count: view.header().record_count,
                error: None,
            });
        }
        ProduceResponse { results }
    }
}

#[derive(Clone)]
struct Svc(Arc<Broker>);

#[tonic::async_trait]
impl ProduceService for Svc {
    async fn produce(
        &self,
        _: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        Err(Status::unimplemented("the client streams"))
    }

    type ProduceStreamStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<ProduceStreamResponse, Status>> + Send>>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceStreamRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        *self.0.streams_opened.lock().unwrap() += 1;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let broker = self.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                let n = {
                    let mut count = broker.requests.lock().unwrap();
                    *count += 1;
                    *count - 1
                };
                let reply = (broker.script.lock().unwrap())(n);
                let request = msg.request.unwrap();
                let answer = match reply {
                    Reply::Store | Reply::PartitionError(_) => ProduceStreamResponse {
                        sequence: msg.sequence,
                        response: Some(broker.handle(&request, reply)),
                        error: None,
                    },
                    Reply::RequestError(reason) => ProduceStreamResponse {
                        sequence: msg.sequence,
                        response: None,
                        error: Some(runnel_proto::v1::Error {
                            reason: reason as i32,
                            message: "scripted".into(),
                            ..Default::default()
                        }),
                    },
                    Reply::Silent => {
                        broker.handle(&request, reply);
                        continue;
                    }
                    Reply::Break => {
                        let _gone = tx.send(Err(Status::unavailable("scripted break"))).await;
                        return;
                    }
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
impl AdminService for Svc {
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
    async fn create_partitions(
        &self,
        _: Request<CreatePartitionsRequest>,
    ) -> Result<Response<CreatePartitionsResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn list_topics(
        &self,
        _: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        *self.0.describes.lock().unwrap() += 1;
        if request.get_ref().name != "t" {
            let mut status = Status::not_found("no such topic");
            status
                .metadata_mut()
                .insert(REASON_METADATA_KEY, "UNKNOWN_TOPIC".parse().unwrap());
            return Err(status);
        }
        Ok(Response::new(DescribeTopicResponse {
            topic: Some(TopicDescription {
                name: "t".into(),
                config: None,
                partitions: (0..self.0.partitions)
                    .map(|id| PartitionDescription {
                        id,
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
        Err(Status::unimplemented(""))
    }
}

/// Starts a scripted broker with `partitions` partitions of topic "t".
async fn broker(
    partitions: u32,
    script: impl FnMut(u64) -> Reply + Send + 'static,
) -> (Client, Arc<Broker>) {
    let broker = Arc::new(Broker {
        partitions,
        script: Mutex::new(Box::new(script)),
        requests: Mutex::new(0),
        stored: Mutex::new(HashMap::new()),
        streams_opened: Mutex::new(0),
        describes: Mutex::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let svc = Svc(broker.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ProduceServiceServer::new(svc.clone()))
            .add_service(AdminServiceServer::new(svc))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let client = Client::connect(&address).await.unwrap();
    (client, broker)
}

fn config() -> ProducerConfig {
    ProducerConfig {
        linger: Duration::from_millis(1),
        batch_bytes: 4096,
        retry_backoff: Duration::from_millis(10),
        request_timeout: Duration::from_secs(10),
        ..ProducerConfig::default()
    }
}

async fn send_all(producer: &Producer, n: usize, keyed: bool) -> Vec<DeliveryFuture> {
    let mut futures = Vec::new();
    for i in 0..n {
        let mut record = ProducerRecord::new("t", format!("v{i}"));
        if keyed {
            record = record.key(format!("k{}", i % 10));
        }
        futures.push(producer.send(record).await.unwrap());
    }
    futures
}

/// Every record is stored once, and its metadata names where.
async fn check_stored(broker: &Broker, futures: Vec<DeliveryFuture>) {
    let stored = broker.stored.lock().unwrap().clone();
    let total: usize = stored.values().map(Vec::len).sum();
    assert_eq!(total, futures.len(), "stored once each");
    for (i, f) in futures.into_iter().enumerate() {
        let meta = f.await.unwrap();
        let offset = meta.offset.unwrap() as usize;
        assert_eq!(
            stored[&meta.partition][offset],
            format!("v{i}").into_bytes(),
            "record {i}"
        );
    }
}

#[tokio::test]
async fn records_get_dense_offsets_across_partitions() {
    let (client, broker) = broker(3, |_| Reply::Store).await;
    let producer = Producer::new(&client, config()).await.unwrap();
    let futures = send_all(&producer, 2000, true).await;
    producer.flush().await.unwrap();
    assert!(futures.iter().all(DeliveryFuture::is_done));
    check_stored(&broker, futures).await;
    assert!(
        *broker.requests.lock().unwrap() < 2000,
        "records travel in batches"
    );
    producer.close().await.unwrap();
}

#[tokio::test]
async fn retriable_errors_are_retried() {
    // Three failures of each kind, then success.
    let replies = [
        Reply::PartitionError(ErrorReason::Unavailable),
        Reply::RequestError(ErrorReason::NotLeader),
        Reply::Break,
    ];
    for (case, reply) in replies.into_iter().enumerate() {
        let (client, broker) = broker(2, move |n| if n < 3 { reply } else { Reply::Store }).await;
        let producer = Producer::new(&client, config()).await.unwrap();
        let futures = send_all(&producer, 50, false).await;
        producer.flush().await.unwrap();
        check_stored(&broker, futures).await;
        if matches!(reply, Reply::Break) {
            assert!(
                *broker.streams_opened.lock().unwrap() >= 2,
                "case {case}: stream reopened"
            );
        }
        producer.close().await.unwrap();
    }
}

#[tokio::test]
async fn errors_fail_records_at_once_or_after_the_retries() {
    // (case, reply, retries, expected reason, requests the broker sees)
    let cases = [
        (
            0,
            Reply::PartitionError(ErrorReason::RecordTooLarge),
            5,
            ErrorReason::RecordTooLarge,
            1,
        ),
        (
            1,
            Reply::RequestError(ErrorReason::CorruptBatch),
            5,
            ErrorReason::CorruptBatch,
            1,
        ),
        (
            2,
            Reply::PartitionError(ErrorReason::Unavailable),
            2,
            ErrorReason::Unavailable,
            3,
        ),
    ];
    for (case, reply, retries, reason, requests) in cases {
        let (client, broker) = broker(1, move |_| reply).await;
        let producer = Producer::new(
            &client,
            ProducerConfig {
                retries,
                ..config()
            },
        )
        .await
        .unwrap();
        let f = producer.send(ProducerRecord::new("t", "x")).await.unwrap();
        let error = f.await.unwrap_err();
        assert_eq!(error.reason(), Some(reason), "case {case}: {error}");
        assert_eq!(*broker.requests.lock().unwrap(), requests, "case {case}");
        producer.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_silent_broker_times_out_and_the_batch_is_sent_again() {
    let (client, broker) = broker(1, |n| if n == 0 { Reply::Silent } else { Reply::Store }).await;
    let config = ProducerConfig {
        request_timeout: Duration::from_millis(200),
        ..config()
    };
    let producer = Producer::new(&client, config).await.unwrap();
    let f = producer.send(ProducerRecord::new("t", "x")).await.unwrap();
    let meta = f.await.unwrap();
    // At least once: the silent attempt was stored too.
    assert_eq!(meta.offset, Some(1));
    assert_eq!(broker.stored.lock().unwrap()[&0].len(), 2);
    producer.close().await.unwrap();
}

#[tokio::test]
async fn acks_none_resolves_without_offsets() {
    let (client, broker) = broker(1, |_| Reply::Store).await;
    let producer = Producer::new(
        &client,
        ProducerConfig {
            acks: Acks::None,
            ..config()
        },
    )
    .await
    .unwrap();
    let futures = send_all(&producer, 10, false).await;
    for f in futures {
        assert_eq!(f.await.unwrap().offset, None);
    }
    producer.close().await.unwrap();
    assert_eq!(broker.stored.lock().unwrap()[&0].len(), 10);
}

#[tokio::test]
async fn unknown_topics_and_partitions_fail_the_send() {
    let (client, _broker) = broker(2, |_| Reply::Store).await;
    let producer = Producer::new(&client, config()).await.unwrap();
    let error = producer
        .send(ProducerRecord::new("nope", "x"))
        .await
        .unwrap_err();
    assert_eq!(error.reason(), Some(ErrorReason::UnknownTopic));
    assert!(
        error.to_string().contains("\"nope\" does not exist"),
        "{error}"
    );
    let error = producer
        .send(ProducerRecord::new("t", "x").partition(2))
        .await
        .unwrap_err();
    assert_eq!(error.reason(), Some(ErrorReason::UnknownPartition));
    producer.close().await.unwrap();
}

#[tokio::test]
async fn a_full_buffer_waits_for_acknowledgements() {
    let (client, broker) = broker(1, |_| Reply::Store).await;
    let config = ProducerConfig {
        buffer_bytes: 1000,
        batch_bytes: 300,
        ..config()
    };
    let producer = Producer::new(&client, config).await.unwrap();
    // 100 records of ~120 buffer bytes each: twelve times the buffer.
    let mut futures = Vec::new();
    for i in 0..100 {
        let value = format!("{i:0>100}");
        futures.push(
            producer
                .send(ProducerRecord::new("t", value))
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();
    for f in futures {
        f.await.unwrap();
    }
    assert_eq!(broker.stored.lock().unwrap()[&0].len(), 100);
    producer.close().await.unwrap();
}

#[tokio::test]
async fn handles_and_futures_cross_tasks() {
    fn assert_send<T: Send + 'static>(_: &T) {}
    let (client, _broker) = broker(1, |_| Reply::Store).await;
    let producer = Producer::new(&client, config()).await.unwrap();
    let p = producer.clone();
    let send = async move { p.send(ProducerRecord::new("t", "x")).await };
    assert_send(&send);
    let delivery = tokio::spawn(send).await.unwrap().unwrap();
    assert_send(&delivery);
    assert_eq!(
        tokio::spawn(delivery).await.unwrap().unwrap().offset,
        Some(0)
    );
    producer.close().await.unwrap();
}
