//! In-process tests: a node served on 127.0.0.1:0 with a temp dir, driven
//! through the generated tonic clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_batch::{BatchBuilder, Compression, NewRecord};
use runnel_proto::v1::admin_service_client::AdminServiceClient;
use runnel_proto::v1::fetch_service_client::FetchServiceClient;
use runnel_proto::v1::partition_records::Data;
use runnel_proto::v1::produce_service_client::ProduceServiceClient;
use runnel_proto::v1::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::error::{BrokerError, status_for};
use crate::{BrokerConfig, FlushPolicy};

struct TestBroker {
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<crate::Result<()>>>,
    dir: tempfile::TempDir,
    channel: Channel,
}

impl TestBroker {
    async fn start(dir: Option<tempfile::TempDir>, flush: FlushPolicy) -> TestBroker {
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        let mut config = BrokerConfig::new(dir.path(), addr.to_string());
        config.flush = flush;
        config.retention_interval = Duration::from_millis(50);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::serve(listener, Some(metrics), config, async move {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .initial_stream_window_size(crate::WINDOW_BYTES)
            .initial_connection_window_size(crate::WINDOW_BYTES)
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap();
        // The port accepts connections as soon as it is bound; answering a
        // call means the data directory is open (and locked).
        AdminServiceClient::new(channel.clone())
            .list_topics(ListTopicsRequest {})
            .await
            .unwrap();
        TestBroker {
            addr,
            metrics_addr,
            stop: Some(stop),
            task: Some(task),
            dir,
            channel,
        }
    }

    fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    fn produce(&self) -> ProduceServiceClient<Channel> {
        ProduceServiceClient::new(self.channel.clone())
    }

    fn fetch(&self) -> FetchServiceClient<Channel> {
        FetchServiceClient::new(self.channel.clone())
            .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
    }

    /// Graceful shutdown; returns the data directory.
    async fn stop(mut self) -> tempfile::TempDir {
        drop(self.stop.take());
        let task = self.task.take().unwrap();
        drop(self.channel);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("shutdown within 10 s")
            .unwrap()
            .unwrap();
        self.dir
    }

    async fn create(&self, name: &str, partitions: u32) {
        self.admin()
            .create_topic(CreateTopicRequest {
                name: name.into(),
                config: Some(TopicConfig {
                    partitions: Some(partitions),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }

    async fn scrape(&self) -> String {
        let mut s = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}

fn record(key: Option<&str>, value: &str) -> Record {
    Record {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: Bytes::copy_from_slice(value.as_bytes()),
        headers: vec![Header {
            key: "h".into(),
            value: Bytes::from_static(b"v"),
        }],
        timestamp_ms: None,
    }
}

fn records_request(topic: &str, partition: Option<u32>, records: Vec<Record>) -> ProduceRequest {
    ProduceRequest {
        topic: topic.into(),
        partitions: vec![PartitionRecords {
            partition,
            data: Some(Data::Records(RecordList { records })),
        }],
        acks: Acks::All as i32,
        timeout_ms: 0,
    }
}

fn batch(values: &[&str], timestamp: i64) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    for v in values {
        b.push(NewRecord {
            key: None,
            value: v.as_bytes(),
            headers: &[],
            timestamp,
        });
    }
    b.finish().unwrap()
}

fn batch_request(topic: &str, partition: u32, batch: Bytes) -> ProduceRequest {
    ProduceRequest {
        topic: topic.into(),
        partitions: vec![PartitionRecords {
            partition: Some(partition),
            data: Some(Data::Batch(batch)),
        }],
        acks: Acks::Leader as i32,
        timeout_ms: 0,
    }
}

fn reason(status: &tonic::Status) -> String {
    status
        .metadata()
        .get(runnel_proto::REASON_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn fetch_request(topic: &str, partition: u32, offset: u64, decode: bool) -> FetchRequest {
    FetchRequest {
        topic: topic.into(),
        partitions: vec![PartitionFetch {
            partition,
            offset,
            max_bytes: 0,
        }],
        min_bytes: 0,
        max_wait_ms: 0,
        max_bytes: 0,
        decode,
    }
}

#[test]
fn every_reason_maps_to_code_and_trailer() {
    use runnel_proto::v1::ErrorReason as R;
    let cases = [
        (R::UnknownTopic, Code::NotFound),
        (R::UnknownPartition, Code::NotFound),
        (R::InvalidName, Code::InvalidArgument),
        (R::InvalidArgument, Code::InvalidArgument),
        (R::OffsetOutOfRange, Code::OutOfRange),
        (R::RecordTooLarge, Code::InvalidArgument),
        (R::CorruptBatch, Code::InvalidArgument),
        (R::NotLeader, Code::FailedPrecondition),
        (R::TopicAlreadyExists, Code::AlreadyExists),
        (R::Unavailable, Code::Unavailable),
        (R::Timeout, Code::DeadlineExceeded),
        (R::Internal, Code::Internal),
        (R::Unsupported, Code::Unimplemented),
    ];
    for (i, (r, code)) in cases.into_iter().enumerate() {
        let s = status_for(r, "m", HashMap::new());
        assert_eq!(s.code(), code, "case {i}");
        assert_eq!(reason(&s), r.as_str_name(), "case {i}");
        let info = s
            .get_error_details()
            .error_info()
            .cloned()
            .expect("error info");
        assert_eq!(info.reason, r.as_str_name(), "case {i}");
        assert_eq!(info.domain, runnel_proto::ERROR_DOMAIN, "case {i}");
    }
    let s: tonic::Status = BrokerError::UnknownTopic("t".into()).into();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::NotFound, "UNKNOWN_TOPIC")
    );
    assert!(
        s.message().contains("runnel topic create t"),
        "{}",
        s.message()
    );
    let e = BrokerError::NotLeader {
        topic: "t".into(),
        partition: 0,
        leader_id: 2,
        leader_address: "h:1".into(),
    };
    let p = e.to_proto();
    assert_eq!((p.leader_id, p.leader_address.as_str()), (2, "h:1"));
    let s: tonic::Status = e.into();
    assert_eq!(s.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn admin_lifecycle_and_errors() {
    let b = TestBroker::start(None, FlushPolicy::Never).await;
    let mut admin = b.admin();
    let created = admin
        .create_topic(CreateTopicRequest {
            name: "orders".into(),
            config: Some(TopicConfig {
                partitions: Some(3),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(created.partitions.len(), 3);
    let cfg = created.config.unwrap();
    assert_eq!(cfg.retention_ms, Some(604_800_000));
    assert_eq!(created.partitions[2].leader, 1);
    assert_eq!(created.partitions[2].replicas, vec![1]);

    let again = admin
        .create_topic(CreateTopicRequest {
            name: "orders".into(),
            config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (again.code(), reason(&again).as_str()),
        (Code::AlreadyExists, "TOPIC_ALREADY_EXISTS")
    );

    let bad = admin
        .create_topic(CreateTopicRequest {
            name: "a/b".into(),
            config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&bad), "INVALID_NAME");
    let rf = admin
        .create_topic(CreateTopicRequest {
            name: "x".into(),
            config: Some(TopicConfig {
                replication_factor: Some(3),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&rf), "INVALID_ARGUMENT");
    assert!(
        rf.message().contains("replication_factor"),
        "{}",
        rf.message()
    );

    let list = admin
        .list_topics(ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.topics.len(), 1);
    let cluster = admin
        .describe_cluster(DescribeClusterRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cluster.nodes[0].address, b.addr.to_string());

    admin
        .delete_topic(DeleteTopicRequest {
            name: "orders".into(),
        })
        .await
        .unwrap();
    let gone = admin
        .describe_topic(DescribeTopicRequest {
            name: "orders".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (gone.code(), reason(&gone).as_str()),
        (Code::NotFound, "UNKNOWN_TOPIC")
    );
    // The name is free again, with fresh data.
    b.create("orders", 1).await;
    let dir = b.stop().await;
    let topics: Vec<_> = std::fs::read_dir(dir.path().join("topics"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(topics, vec!["orders".to_string()]);
}

#[tokio::test]
async fn produce_fetch_list_offsets_and_restart() {
    let b = TestBroker::start(None, FlushPolicy::Always).await;
    b.create("t", 2).await;
    let mut produce = b.produce();
    let mut fetch = b.fetch();

    // A record list to partition 1, then a pre-encoded batch.
    let resp = produce
        .produce(records_request(
            "t",
            Some(1),
            vec![
                Record {
                    timestamp_ms: Some(100),
                    ..record(Some("k"), "a")
                },
                Record {
                    timestamp_ms: Some(200),
                    ..record(None, "b")
                },
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results[0].base_offset, Some(0));
    assert_eq!(resp.results[0].record_count, 2);
    let resp = produce
        .produce(batch_request("t", 1, batch(&["c", "d", "e"], 1_000)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results[0].base_offset, Some(2));

    // Decoded from offset 1: the first batch is returned whole, records
    // below the offset skipped.
    let data = fetch
        .fetch(fetch_request("t", 1, 1, true))
        .await
        .unwrap()
        .into_inner()
        .partitions
        .remove(0);
    assert!(data.error.is_none());
    let values: Vec<_> = data.records.iter().map(|r| r.value.clone()).collect();
    assert_eq!(
        values,
        vec![
            Bytes::from("b"),
            Bytes::from("c"),
            Bytes::from("d"),
            Bytes::from("e")
        ]
    );
    assert_eq!(data.records[0].offset, 1);
    assert_eq!(data.records[0].headers[0].key, "h");
    assert_eq!(data.records[0].timestamp_ms, 200);
    assert_eq!(data.high_watermark, 5);
    assert_eq!(data.next_offset, 5);

    // Raw batches.
    let data = fetch
        .fetch(fetch_request("t", 1, 0, false))
        .await
        .unwrap()
        .into_inner()
        .partitions
        .remove(0);
    let views: Vec<_> = runnel_batch::BatchIter::new(&data.batches)
        .map(|v| v.unwrap().base_offset())
        .collect();
    assert_eq!(views, vec![0, 2]);

    // At the high watermark: empty, no error; past it: OFFSET_OUT_OF_RANGE.
    let at_end = fetch
        .fetch(fetch_request("t", 1, 5, false))
        .await
        .unwrap()
        .into_inner();
    assert!(at_end.partitions[0].error.is_none());
    assert!(at_end.partitions[0].batches.is_empty());
    assert_eq!(at_end.partitions[0].next_offset, 5);
    let past = fetch
        .fetch(fetch_request("t", 1, 6, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        past.partitions[0].error.as_ref().map(|e| e.reason),
        Some(ErrorReason::OffsetOutOfRange as i32)
    );

    let offsets = fetch
        .list_offsets(ListOffsetsRequest {
            topic: "t".into(),
            queries: vec![
                OffsetQuery {
                    partition: 1,
                    spec: OffsetSpec::Earliest as i32,
                    timestamp_ms: 0,
                },
                OffsetQuery {
                    partition: 1,
                    spec: OffsetSpec::Latest as i32,
                    timestamp_ms: 0,
                },
                OffsetQuery {
                    partition: 1,
                    spec: OffsetSpec::Unspecified as i32,
                    timestamp_ms: 500,
                },
                OffsetQuery {
                    partition: 1,
                    spec: OffsetSpec::Unspecified as i32,
                    timestamp_ms: i64::MAX,
                },
                OffsetQuery {
                    partition: 9,
                    spec: OffsetSpec::Latest as i32,
                    timestamp_ms: 0,
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .offsets;
    assert_eq!(offsets[0].offset, 0);
    assert_eq!(offsets[1].offset, 5);
    assert_eq!(
        (offsets[2].offset, offsets[2].timestamp_ms),
        (2, Some(1_000))
    );
    assert_eq!((offsets[3].offset, offsets[3].timestamp_ms), (5, None));
    assert_eq!(
        offsets[4].error.as_ref().map(|e| e.reason),
        Some(ErrorReason::UnknownPartition as i32)
    );

    let metrics = b.scrape().await;
    assert!(
        metrics.contains("runnel_partition_high_watermark{topic=\"t\",partition=\"1\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runnel_records_in_total{topic=\"t\",partition=\"1\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runnel_request_duration_seconds_count{rpc=\"Produce\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("runnel_active_connections 1"), "{metrics}");
    assert!(
        metrics.contains("runnel_fsync_duration_seconds_count"),
        "{metrics}"
    );

    // Restart on the same directory: everything is back.
    let dir = b.stop().await;
    let b = TestBroker::start(Some(dir), FlushPolicy::Always).await;
    let data = b
        .fetch()
        .fetch(fetch_request("t", 1, 0, true))
        .await
        .unwrap()
        .into_inner()
        .partitions
        .remove(0);
    assert_eq!(data.records.len(), 5);
    assert_eq!(data.high_watermark, 5);
    b.stop().await;
}

#[tokio::test]
async fn bad_produce_requests_change_nothing() {
    let b = TestBroker::start(None, FlushPolicy::Never).await;
    b.admin()
        .create_topic(CreateTopicRequest {
            name: "t".into(),
            config: Some(TopicConfig {
                max_record_bytes: Some(1024),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut produce = b.produce();
    let mut corrupt = batch(&["x"], 1).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let big = "x".repeat(2000);
    let cases: Vec<(ProduceRequest, Code, &str)> = vec![
        (
            records_request("nope", None, vec![record(None, "a")]),
            Code::NotFound,
            "UNKNOWN_TOPIC",
        ),
        (
            records_request("t", Some(3), vec![record(None, "a")]),
            Code::NotFound,
            "UNKNOWN_PARTITION",
        ),
        (
            records_request("t", None, vec![]),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            batch_request("t", 0, Bytes::from(corrupt)),
            Code::InvalidArgument,
            "CORRUPT_BATCH",
        ),
        (
            batch_request("t", 0, Bytes::from_static(b"garbage")),
            Code::InvalidArgument,
            "CORRUPT_BATCH",
        ),
        (
            batch_request("t", 0, batch(&[&big], 1)),
            Code::InvalidArgument,
            "RECORD_TOO_LARGE",
        ),
        (
            records_request("t", Some(0), vec![record(None, &big)]),
            Code::InvalidArgument,
            "RECORD_TOO_LARGE",
        ),
        (
            ProduceRequest {
                acks: 17,
                ..records_request("t", None, vec![record(None, "a")])
            },
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
    ];
    for (i, (req, code, why)) in cases.into_iter().enumerate() {
        let s = produce.produce(req).await.unwrap_err();
        assert_eq!(
            (s.code(), reason(&s).as_str()),
            (code, why),
            "case {i}: {}",
            s.message()
        );
    }
    let d = b
        .admin()
        .describe_topic(DescribeTopicRequest { name: "t".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.topic.unwrap().partitions[0].log_end_offset, 0);
    b.stop().await;
}

#[tokio::test]
async fn partitioner_places_keyed_and_unkeyed_records() {
    let b = TestBroker::start(None, FlushPolicy::Never).await;
    b.create("p", 4).await;
    let mut produce = b.produce();
    let keys = ["a", "b", "c", "d", "e", "f"];
    let records = keys.iter().map(|k| record(Some(k), k)).collect();
    let resp = produce
        .produce(records_request("p", None, records))
        .await
        .unwrap()
        .into_inner();
    for r in &resp.results {
        assert!(r.error.is_none());
    }
    let total: u32 = resp.results.iter().map(|r| r.record_count).sum();
    assert_eq!(total, 6);
    // Each key is where murmur2 says.
    for k in keys {
        let p = runnel_batch::partitioner::partition_for_key(k.as_bytes(), 4);
        let data = b
            .fetch()
            .fetch(fetch_request("p", p, 0, true))
            .await
            .unwrap()
            .into_inner()
            .partitions
            .remove(0);
        assert!(
            data.records
                .iter()
                .any(|r| r.key.as_deref() == Some(k.as_bytes())),
            "key {k}"
        );
    }
    // Unkeyed records of one request stay together.
    let records = (0..10).map(|i| record(None, &i.to_string())).collect();
    let resp = produce
        .produce(records_request("p", None, records))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results.len(), 1);
    assert_eq!(resp.results[0].record_count, 10);
    b.stop().await;
}

#[tokio::test]
async fn long_poll_and_subscribe_see_new_data() {
    let b = TestBroker::start(None, FlushPolicy::Always).await;
    b.create("t", 1).await;
    let mut fetch = b.fetch();
    let mut sub = fetch
        .subscribe(SubscribeRequest {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
            decode: true,
        })
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    let poll = tokio::spawn({
        let mut fetch = b.fetch();
        async move {
            let mut req = fetch_request("t", 0, 0, true);
            req.max_wait_ms = 20_000;
            fetch.fetch(req).await.unwrap().into_inner()
        }
    });
    // Let the poll reach its wait; it must not return empty meanwhile.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!poll.is_finished());
    b.produce()
        .produce(records_request("t", Some(0), vec![record(None, "hello")]))
        .await
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.partitions[0].records[0].value, Bytes::from("hello"));
    assert!(started.elapsed() < Duration::from_secs(10));
    let msg = tokio::time::timeout(Duration::from_secs(10), sub.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(msg.records[0].value, Bytes::from("hello"));

    // A long poll with nothing coming returns empty at its deadline.
    let mut req = fetch_request("t", 0, 1, false);
    req.max_wait_ms = 200;
    let t = Instant::now();
    let resp = fetch.fetch(req).await.unwrap().into_inner();
    assert!(t.elapsed() >= Duration::from_millis(190));
    assert!(resp.partitions[0].batches.is_empty());

    // Shutdown ends the subscription.
    let mut again = fetch
        .subscribe(SubscribeRequest {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            max_bytes: 0,
            decode: false,
        })
        .await
        .unwrap()
        .into_inner();
    drop(sub);
    let waiter = tokio::spawn(async move { again.message().await });
    b.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(end, Ok(None) | Err(_)));
}

#[tokio::test]
async fn produce_stream_answers_every_request() {
    let b = TestBroker::start(None, FlushPolicy::Always).await;
    b.create("s", 1).await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut responses = b
        .produce()
        .produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for seq in 0..20u64 {
        let request = if seq == 7 {
            records_request("missing", None, vec![record(None, "x")])
        } else {
            batch_request("s", 0, batch(&["a", "b"], 5))
        };
        tx.send(ProduceStreamRequest {
            sequence: seq,
            request: Some(request),
        })
        .await
        .unwrap();
    }
    drop(tx);
    let mut seen = HashMap::new();
    while let Some(r) = responses.message().await.unwrap() {
        seen.insert(r.sequence, r);
    }
    assert_eq!(seen.len(), 20);
    assert_eq!(
        seen[&7].error.as_ref().map(|e| e.reason),
        Some(ErrorReason::UnknownTopic as i32)
    );
    // In the order sent: request n (n < 7) at offset 2n.
    for seq in 0..7u64 {
        let base = seen[&seq].response.as_ref().unwrap().results[0].base_offset;
        assert_eq!(base, Some(2 * seq), "sequence {seq}");
    }
    b.stop().await;
}

#[tokio::test]
async fn data_dir_of_another_node_is_refused() {
    let b = TestBroker::start(None, FlushPolicy::Never).await;
    // Not while it runs, whatever the id.
    let config = BrokerConfig::new(b.dir.path(), "x:1");
    let err = crate::Broker::open(config).await.unwrap_err();
    assert!(
        err.to_string().contains("in use by another running broker"),
        "{err}"
    );
    let dir = b.stop().await;
    let mut config = BrokerConfig::new(dir.path(), "x:1");
    config.node_id = 2;
    let err = crate::Broker::open(config).await.unwrap_err();
    assert!(err.to_string().contains("--id 1"), "{err}");
}

#[tokio::test]
async fn health_and_reflection_answer() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let b = TestBroker::start(None, FlushPolicy::Never).await;
    let mut health = HealthClient::new(b.channel.clone());
    for service in [
        "",
        "runnel.v1.AdminService",
        "runnel.v1.ProduceService",
        "runnel.v1.FetchService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, 1, "{service:?} is SERVING");
    }
    let mut reflection = ServerReflectionClient::new(b.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "runnel.v1.AdminService",
        "runnel.v1.ProduceService",
        "runnel.v1.FetchService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    b.stop().await;
}

#[tokio::test]
async fn deleting_a_topic_ends_its_subscriptions() {
    let b = TestBroker::start(None, FlushPolicy::Never).await;
    b.create("gone", 1).await;
    let mut sub = b
        .fetch()
        .subscribe(SubscribeRequest {
            topic: "gone".into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
            decode: false,
        })
        .await
        .unwrap()
        .into_inner();
    b.admin()
        .delete_topic(DeleteTopicRequest {
            name: "gone".into(),
        })
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), sub.message())
        .await
        .unwrap();
    let status = end.unwrap_err();
    assert_eq!(reason(&status), "UNAVAILABLE");
    b.stop().await;
}

/// Rough throughput of the broker alone (run with
/// `cargo test --release -p runnel-broker throughput -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a test"]
async fn throughput() {
    let flush = match std::env::var("FLUSH").as_deref() {
        Ok("always") => FlushPolicy::Always,
        _ => FlushPolicy::Never,
    };
    let b = TestBroker::start(None, flush).await;
    b.create("bench", 1).await;
    let value = "x".repeat(1024);
    let one = batch(&vec![value.as_str(); 256], crate::service::now_ms());
    let batches: u64 = std::env::var("BATCHES")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(4096);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut responses = b
        .produce()
        .produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let t = Instant::now();
    let sender = tokio::spawn(async move {
        for seq in 0..batches {
            let mut req = batch_request("bench", 0, one.clone());
            req.acks = Acks::Leader as i32;
            tx.send(ProduceStreamRequest {
                sequence: seq,
                request: Some(req),
            })
            .await
            .unwrap();
        }
    });
    let mut n = 0;
    while let Some(r) = responses.message().await.unwrap() {
        assert!(r.error.is_none());
        n += 1;
        if n == batches {
            break;
        }
    }
    sender.await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let bytes = (batches * 256 * 1024) as f64;
    println!("produce: {:.0} MB/s ({flush:?})", bytes / secs / 1e6);

    let t = Instant::now();
    let mut fetch = b.fetch();
    let mut offset = 0;
    let mut got = 0usize;
    while offset < batches * 256 {
        let mut req = fetch_request("bench", 0, offset, false);
        req.partitions[0].max_bytes = 4 << 20;
        let d = fetch
            .fetch(req)
            .await
            .unwrap()
            .into_inner()
            .partitions
            .remove(0);
        got += d.batches.len();
        assert!(
            d.next_offset > offset,
            "stuck at {offset}: {:?} hwm {}",
            d.error,
            d.high_watermark
        );
        offset = d.next_offset;
    }
    let secs = t.elapsed().as_secs_f64();
    println!("fetch: {:.0} MB/s", got as f64 / secs / 1e6);
    b.stop().await;
}

#[tokio::test]
async fn startup_resolves_interrupted_creates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let topics = dir.path().join(crate::TOPICS_DIR);
    std::fs::create_dir_all(topics.join("half").join("0")).unwrap();
    std::fs::create_dir_all(topics.join("old~deleted-17").join("0")).unwrap();
    let b = TestBroker::start(Some(dir), FlushPolicy::Never).await;
    let list = b
        .admin()
        .list_topics(ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.topics.is_empty(), "{list:?}");
    let left: Vec<_> = std::fs::read_dir(&topics).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    b.stop().await;
}

#[tokio::test]
async fn acks_none_answers_without_offsets_and_interval_flush_serves() {
    let b = TestBroker::start(None, FlushPolicy::IntervalMs(5)).await;
    b.create("fire", 1).await;
    let mut req = records_request("fire", Some(0), vec![record(None, "x"), record(None, "y")]);
    req.acks = Acks::None as i32;
    let resp = b.produce().produce(req).await.unwrap().into_inner();
    assert_eq!(resp.results[0].base_offset, None);
    assert!(resp.results[0].error.is_none());
    // The records arrive: a long poll waits for them.
    let mut fetch = fetch_request("fire", 0, 0, true);
    fetch.max_wait_ms = 10_000;
    fetch.min_bytes = 1;
    let data = b
        .fetch()
        .fetch(fetch)
        .await
        .unwrap()
        .into_inner()
        .partitions
        .remove(0);
    assert_eq!(data.records.len(), 2);
    assert_eq!(data.next_offset, 2);
    b.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_produce_streams_without_waiting_for_the_grace() {
    let b = TestBroker::start(None, FlushPolicy::Always).await;
    b.create("open", 1).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut responses = b
        .produce()
        .produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(ProduceStreamRequest {
        sequence: 1,
        request: Some(batch_request("open", 0, batch(&["a"], 1))),
    })
    .await
    .unwrap();
    let first = responses.message().await.unwrap().unwrap();
    assert_eq!(first.response.unwrap().results[0].base_offset, Some(0));
    // The client keeps its request stream open (tx alive) while the node stops.
    let t = Instant::now();
    let dir = b.stop().await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t.elapsed()
    );
    drop(tx);
    let b = TestBroker::start(Some(dir), FlushPolicy::Always).await;
    let data = b
        .fetch()
        .fetch(fetch_request("open", 0, 0, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(data.partitions[0].records.len(), 1);
    b.stop().await;
}

/// A grow that crashed before `topic.json` was rewritten leaves partition
/// directories the topic does not count: they are not served, and the next
/// grow replaces them with empty logs.
#[tokio::test]
async fn an_interrupted_grow_keeps_the_old_count_and_the_next_grow_starts_empty() {
    let b = TestBroker::start(None, FlushPolicy::Always).await;
    b.create("g", 1).await;
    let dir = b.stop().await;
    // A leftover partition 1 holding a record (a copy of partition 0 after
    // a write, made while the broker was stopped).
    let topic = dir.path().join(crate::TOPICS_DIR).join("g");
    let b = TestBroker::start(Some(dir), FlushPolicy::Always).await;
    b.produce()
        .produce(ProduceRequest {
            topic: "g".into(),
            partitions: vec![PartitionRecords {
                partition: Some(0),
                data: Some(Data::Records(RecordList {
                    records: vec![record(None, "kept")],
                })),
            }],
            acks: Acks::All as i32,
            timeout_ms: 0,
        })
        .await
        .unwrap();
    let dir = b.stop().await;
    let (from, to) = (topic.join("0"), topic.join("1"));
    std::fs::create_dir_all(&to).unwrap();
    for f in std::fs::read_dir(&from).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
    let b = TestBroker::start(Some(dir), FlushPolicy::Always).await;
    let describe = |b: &TestBroker| {
        let mut admin = b.admin();
        async move {
            admin
                .describe_topic(DescribeTopicRequest { name: "g".into() })
                .await
                .unwrap()
                .into_inner()
                .topic
                .unwrap()
        }
    };
    assert_eq!(describe(&b).await.partitions.len(), 1);
    let grown = b
        .admin()
        .create_partitions(CreatePartitionsRequest {
            name: "g".into(),
            partitions: 2,
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    let hwm: Vec<u64> = grown.partitions.iter().map(|p| p.high_watermark).collect();
    assert_eq!(hwm, vec![1, 0], "{grown:?}");
    let dir = b.stop().await;
    let b = TestBroker::start(Some(dir), FlushPolicy::Always).await;
    let d = describe(&b).await;
    let hwm: Vec<u64> = d.partitions.iter().map(|p| p.high_watermark).collect();
    assert_eq!(hwm, vec![1, 0], "{d:?}");
    b.stop().await;
}
