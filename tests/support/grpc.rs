//! gRPC clients for a test broker and small helpers around the public API.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use runnel_batch::BatchIter;
use runnel_proto::v1::admin_service_client::AdminServiceClient;
use runnel_proto::v1::fetch_service_client::FetchServiceClient;
use runnel_proto::v1::produce_service_client::ProduceServiceClient;
use runnel_proto::v1::{
    Acks, ConsumedRecord, CreateTopicRequest, DescribeTopicRequest, ErrorReason, FetchRequest,
    Header, PartitionData, PartitionDescription, PartitionFetch, PartitionRecords, ProduceRequest,
    ProduceResponse, Record, RecordList, TopicConfig, TopicDescription, partition_records,
};
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

/// Largest message the test clients accept (fetches of whole partitions).
const MAX_MESSAGE: usize = 64 << 20;

/// Admin, produce and fetch clients sharing one connection.
#[derive(Clone)]
pub struct Clients {
    /// AdminService.
    pub admin: AdminServiceClient<Channel>,
    /// ProduceService.
    pub produce: ProduceServiceClient<Channel>,
    /// FetchService.
    pub fetch: FetchServiceClient<Channel>,
}

/// Opens a channel to `addr` (fails the test if it cannot connect in 10 s).
pub async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
}

impl Clients {
    /// Connects the three clients to `addr`.
    pub async fn connect(addr: SocketAddr) -> Clients {
        let ch = channel(addr).await;
        Clients {
            admin: AdminServiceClient::new(ch.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            produce: ProduceServiceClient::new(ch.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            fetch: FetchServiceClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        }
    }

    /// Creates a topic with `partitions` partitions and otherwise defaults.
    pub async fn create_topic(&mut self, name: &str, partitions: u32) -> TopicDescription {
        self.create_topic_with(
            name,
            TopicConfig {
                partitions: Some(partitions),
                ..Default::default()
            },
        )
        .await
    }

    /// Creates a topic with `config`.
    pub async fn create_topic_with(&mut self, name: &str, config: TopicConfig) -> TopicDescription {
        let call = self.admin.create_topic(CreateTopicRequest {
            name: name.into(),
            config: Some(config),
        });
        ok(call.await, &format!("CreateTopic {name}"))
            .topic
            .unwrap_or_else(|| panic!("CreateTopic {name} returned no topic"))
    }

    /// DescribeTopic, failing the test on error.
    pub async fn describe(&mut self, name: &str) -> TopicDescription {
        let call = self
            .admin
            .describe_topic(DescribeTopicRequest { name: name.into() });
        ok(call.await, &format!("DescribeTopic {name}"))
            .topic
            .unwrap_or_else(|| panic!("DescribeTopic {name} returned no topic"))
    }

    /// The partitions of a topic as described.
    pub async fn partitions(&mut self, name: &str) -> Vec<PartitionDescription> {
        self.describe(name).await.partitions
    }

    /// High watermark of one partition.
    pub async fn high_watermark(&mut self, topic: &str, partition: u32) -> u64 {
        let parts = self.partitions(topic).await;
        parts
            .iter()
            .find(|p| p.id == partition)
            .unwrap_or_else(|| panic!("{topic} has no partition {partition}: {parts:?}"))
            .high_watermark
    }

    /// Produces `records` to one partition with acks=all; returns the response.
    pub async fn produce_to(
        &mut self,
        topic: &str,
        partition: u32,
        records: Vec<Record>,
    ) -> Result<ProduceResponse, tonic::Status> {
        self.produce
            .produce(ProduceRequest {
                topic: topic.into(),
                partitions: vec![records_for(Some(partition), records)],
                acks: Acks::All as i32,
                timeout_ms: 0,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Produces `records` with no partition (the broker's partitioner
    /// places them), acks=all; fails the test on a call error.
    pub async fn produce_placed(&mut self, topic: &str, records: Vec<Record>) -> ProduceResponse {
        let call = self.produce.produce(ProduceRequest {
            topic: topic.into(),
            partitions: vec![records_for(None, records)],
            acks: Acks::All as i32,
            timeout_ms: 0,
        });
        ok(call.await, &format!("Produce to {topic} (placed)"))
    }

    /// Produces and asserts success; returns the base offset.
    pub async fn produce_ok(&mut self, topic: &str, partition: u32, records: Vec<Record>) -> u64 {
        let n = records.len();
        let resp = self
            .produce_to(topic, partition, records)
            .await
            .unwrap_or_else(|s| panic!("Produce to {topic}/{partition}: {}", describe_status(&s)));
        assert_eq!(resp.results.len(), 1, "one result per partition: {resp:?}");
        let result = &resp.results[0];
        assert!(result.error.is_none(), "produce failed: {resp:?}");
        assert_eq!(result.partition, partition, "{resp:?}");
        assert_eq!(result.record_count as usize, n, "{resp:?}");
        result
            .base_offset
            .unwrap_or_else(|| panic!("acks=all must return a base offset: {resp:?}"))
    }

    /// Subscribes and returns the first message (then drops the stream);
    /// fails the test on any error or an empty stream.
    pub async fn subscribe_first(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
        decode: bool,
    ) -> PartitionData {
        let call = self.fetch.subscribe(runnel_proto::v1::SubscribeRequest {
            topic: topic.into(),
            partition,
            offset,
            max_bytes: 0,
            decode,
        });
        let mut stream = ok(call.await, &format!("Subscribe {topic}/{partition}"));
        stream
            .message()
            .await
            .unwrap_or_else(|s| panic!("Subscribe stream: {}", describe_status(&s)))
            .unwrap_or_else(|| panic!("Subscribe {topic}/{partition}@{offset} ended without data"))
    }

    /// One fetch of one partition without waiting; fails the test on any error.
    pub async fn fetch_once(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
        decode: bool,
    ) -> PartitionData {
        self.try_fetch_once(topic, partition, offset, decode)
            .await
            .unwrap_or_else(|e| panic!("fetch error: {e}"))
    }

    /// One fetch of one partition without waiting; `Err` names the
    /// partition's error (e.g. OFFSET_OUT_OF_RANGE), any other failure
    /// fails the test.
    pub async fn try_fetch_once(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
        decode: bool,
    ) -> Result<PartitionData, String> {
        let call = self
            .fetch
            .fetch(fetch_request(topic, partition, offset, decode));
        let resp = ok(call.await, &format!("Fetch {topic}/{partition}@{offset}"));
        assert_eq!(
            resp.partitions.len(),
            1,
            "one PartitionData per requested partition"
        );
        let data = resp.partitions.into_iter().next().unwrap_or_default();
        assert_eq!(data.partition, partition);
        match &data.error {
            None => Ok(data),
            Some(e) => Err(format!("{e:?}")),
        }
    }

    /// Fetches every committed record of a partition from `from` up to its
    /// high watermark with `decode = true`.
    pub async fn fetch_decoded(
        &mut self,
        topic: &str,
        partition: u32,
        from: u64,
    ) -> Vec<ConsumedRecord> {
        self.try_fetch_decoded(topic, partition, from)
            .await
            .unwrap_or_else(|e| panic!("fetch error: {e}"))
    }

    /// [`Clients::fetch_decoded`], with `Err` when a fetch returns a
    /// partition error (e.g. retention moved the log start past `from`).
    pub async fn try_fetch_decoded(
        &mut self,
        topic: &str,
        partition: u32,
        from: u64,
    ) -> Result<Vec<ConsumedRecord>, String> {
        let mut out: Vec<ConsumedRecord> = Vec::new();
        let mut offset = from;
        loop {
            let data = self.try_fetch_once(topic, partition, offset, true).await?;
            for r in &data.records {
                assert!(
                    r.offset >= offset,
                    "decoded fetch from {offset} returned offset {} (records below the requested offset must be skipped)",
                    r.offset
                );
            }
            out.extend(data.records.iter().cloned());
            if data.records.is_empty() {
                if offset < data.high_watermark && data.next_offset > offset {
                    // Only control batches here (a replicated partition's
                    // Raft bootstrap, a new leader's no-op): skip them.
                    offset = data.next_offset;
                    continue;
                }
                assert!(
                    offset >= data.high_watermark,
                    "empty decoded fetch at {offset} below the high watermark {} (next_offset {})",
                    data.high_watermark,
                    data.next_offset
                );
                return Ok(out);
            }
            assert!(
                data.next_offset > offset,
                "next_offset {} did not advance past {offset}",
                data.next_offset
            );
            offset = data.next_offset;
        }
    }

    /// Fetches raw stored batches of a partition from `from` to its high
    /// watermark and decodes them with runnel-batch (records below `from`
    /// skipped, control batches ignored).
    pub async fn fetch_raw(&mut self, topic: &str, partition: u32, from: u64) -> Vec<OwnedRecord> {
        let mut out = Vec::new();
        let mut offset = from;
        loop {
            let data = self.fetch_once(topic, partition, offset, false).await;
            assert!(data.records.is_empty(), "decode=false returned records");
            if data.batches.is_empty() {
                assert!(
                    offset >= data.high_watermark,
                    "empty raw fetch at {offset} below the high watermark {}",
                    data.high_watermark
                );
                return out;
            }
            let mut next = offset;
            for batch in BatchIter::new(&data.batches) {
                let batch = batch.unwrap_or_else(|e| panic!("fetched batch does not verify: {e}"));
                next = next.max(batch.next_offset());
                if batch.is_control() {
                    continue;
                }
                let records = batch
                    .records()
                    .unwrap_or_else(|e| panic!("cannot decode fetched batch: {e}"));
                for r in records.iter() {
                    let r = r.unwrap_or_else(|e| panic!("corrupt fetched record: {e}"));
                    let off = batch.base_offset() + u64::from(r.offset_delta);
                    if off < offset {
                        continue;
                    }
                    out.push(OwnedRecord {
                        offset: off,
                        timestamp_ms: r.timestamp,
                        key: r.key.map(Bytes::copy_from_slice),
                        value: Bytes::copy_from_slice(r.value),
                        headers: r
                            .headers()
                            .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v)))
                            .collect(),
                    });
                }
            }
            assert_eq!(
                data.next_offset, next,
                "next_offset should follow the last batch returned"
            );
            assert!(next > offset, "raw fetch did not advance past {offset}");
            offset = next;
        }
    }
}

/// A decoded record, owned, in one shape for both fetch paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedRecord {
    /// Offset in the partition.
    pub offset: u64,
    /// Timestamp (ms).
    pub timestamp_ms: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Bytes,
    /// Headers in order.
    pub headers: Vec<(String, Bytes)>,
}

impl From<&ConsumedRecord> for OwnedRecord {
    fn from(r: &ConsumedRecord) -> Self {
        OwnedRecord {
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect(),
        }
    }
}

/// A fetch of one partition with no waiting.
pub fn fetch_request(topic: &str, partition: u32, offset: u64, decode: bool) -> FetchRequest {
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

/// `PartitionRecords` holding a record list.
pub fn records_for(partition: Option<u32>, records: Vec<Record>) -> PartitionRecords {
    PartitionRecords {
        partition,
        data: Some(partition_records::Data::Records(RecordList { records })),
    }
}

/// `PartitionRecords` holding a pre-encoded batch.
pub fn batch_for(partition: u32, batch: Bytes) -> PartitionRecords {
    PartitionRecords {
        partition: Some(partition),
        data: Some(partition_records::Data::Batch(batch)),
    }
}

/// Unkeyed records with these values, no headers, the broker's timestamps.
pub fn plain_records(values: &[Bytes]) -> Vec<Record> {
    values
        .iter()
        .map(|v| Record {
            value: v.clone(),
            ..Default::default()
        })
        .collect()
}

/// A record with an optional key, a value and headers.
pub fn record(key: Option<&str>, value: &str, headers: &[(&str, &str)]) -> Record {
    Record {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: Bytes::copy_from_slice(value.as_bytes()),
        headers: headers
            .iter()
            .map(|(k, v)| Header {
                key: (*k).into(),
                value: Bytes::copy_from_slice(v.as_bytes()),
            })
            .collect(),
        timestamp_ms: None,
    }
}

/// The message of a successful call; fails the test with `what` and the
/// status otherwise.
pub fn ok<T>(result: Result<tonic::Response<T>, tonic::Status>, what: &str) -> T {
    match result {
        Ok(r) => r.into_inner(),
        Err(s) => panic!("{what}: {}", describe_status(&s)),
    }
}

/// The `runnel-reason` trailer of a failed call.
pub fn reason(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(runnel_proto::REASON_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Code, message and reason of a status, for failure messages.
pub fn describe_status(status: &tonic::Status) -> String {
    format!(
        "{:?}: {:?} (reason {:?})",
        status.code(),
        status.message(),
        reason(status)
    )
}

/// Asserts that a call failed with `reason`, both as the `runnel-reason`
/// trailer and as a `google.rpc.ErrorInfo` of domain `runnel.dev`, with a
/// non-empty message. Returns the status for further checks.
pub fn assert_failed_with<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    want: ErrorReason,
) -> tonic::Status {
    let status = match result {
        Ok(v) => panic!(
            "expected failure {}, got success: {v:?}",
            want.as_str_name()
        ),
        Err(s) => s,
    };
    assert_eq!(
        reason(&status).as_deref(),
        Some(want.as_str_name()),
        "runnel-reason trailer of {}",
        describe_status(&status)
    );
    let info = status.get_details_error_info().unwrap_or_else(|| {
        panic!(
            "no google.rpc.ErrorInfo in the details of {}",
            describe_status(&status)
        )
    });
    assert_eq!(info.reason, want.as_str_name(), "ErrorInfo.reason");
    assert_eq!(info.domain, runnel_proto::ERROR_DOMAIN, "ErrorInfo.domain");
    assert!(
        !status.message().trim().is_empty(),
        "a failed call needs a human-readable message: {}",
        describe_status(&status)
    );
    status
}

/// Asserts that a per-partition error carries `want`.
pub fn assert_partition_error(error: Option<&runnel_proto::v1::Error>, want: ErrorReason) {
    let error = error.unwrap_or_else(|| panic!("expected a {} error", want.as_str_name()));
    assert_eq!(
        ErrorReason::try_from(error.reason).ok(),
        Some(want),
        "partition error {error:?}"
    );
    assert!(
        !error.message.trim().is_empty(),
        "error without message: {error:?}"
    );
}
