//! ProduceService: unary Produce and the bidi ProduceStream.
//!
//! A request is handled in three steps: `plan` checks everything and turns
//! each entry into one batch per partition (verifying pre-encoded batches,
//! encoding record lists) without side effects, so a bad request changes
//! nothing; `start` queues every batch on its replica (in request order);
//! `finish` awaits the acknowledgements.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runnel_batch::partitioner::partition_for_key;
use runnel_batch::{BatchBuilder, BatchError, Compression, NewRecord, VerifiedBatch};
use runnel_proto::v1::partition_records::Data;
use runnel_proto::v1::produce_service_server::ProduceService;
use runnel_proto::v1::{
    Acks, PartitionResult, ProduceRequest, ProduceResponse, ProduceStreamRequest,
    ProduceStreamResponse, Record,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{NodeContext, check_unique, now_ms, replica_error};
use crate::error::{BrokerError, Result};
use crate::registry::Topic;
use crate::replica::{AckLevel, Appended, BoxFuture, ReplicaError};

pub(crate) struct ProduceSvc(pub(crate) Arc<NodeContext>);

/// One batch bound for one partition.
struct PlannedAppend {
    partition: u32,
    /// Checked once here; the log stores it without checking it again.
    batch: VerifiedBatch,
    records: u32,
}

/// Appends queued, awaiting acknowledgement.
struct Started {
    topic: Arc<Topic>,
    acks: AckLevel,
    /// When unacknowledged appends answer TIMEOUT (`timeout_ms`).
    deadline: tokio::time::Instant,
    appends: Vec<(PlannedAppend, BoxFuture<Result<Appended, ReplicaError>>)>,
}

fn ack_level(acks: i32) -> Result<AckLevel> {
    match Acks::try_from(acks) {
        Ok(Acks::Unspecified | Acks::All) => Ok(AckLevel::All),
        Ok(Acks::Leader) => Ok(AckLevel::Leader),
        Ok(Acks::None) => Ok(AckLevel::None),
        Err(_) => Err(BrokerError::InvalidArgument(format!(
            "acks {acks} is not a known value: use ACKS_NONE, ACKS_LEADER or ACKS_ALL"
        ))),
    }
}

/// Checks a request and builds its batches. Changes nothing.
fn plan(topic: &Topic, req: ProduceRequest) -> Result<Vec<PlannedAppend>> {
    if req.partitions.is_empty() {
        return Err(BrokerError::InvalidArgument(
            "partitions is empty: send at least one PartitionRecords".into(),
        ));
    }
    check_unique(
        req.partitions.iter().filter_map(|p| p.partition),
        "partitions",
    )?;
    let max = topic.settings.max_record_bytes;
    let now = now_ms();
    let mut out = Vec::with_capacity(req.partitions.len());
    for entry in req.partitions {
        if let Some(p) = entry.partition {
            topic.partition(p)?;
        }
        match (entry.partition, entry.data) {
            (_, None) => {
                return Err(BrokerError::InvalidArgument(
                    "a PartitionRecords has neither records nor batch".into(),
                ));
            }
            (None, Some(Data::Batch(_))) => {
                return Err(BrokerError::InvalidArgument(
                    "a pre-encoded batch needs an explicit partition".into(),
                ));
            }
            (Some(partition), Some(Data::Batch(batch))) => {
                let (batch, records) = verify_batch(topic, partition, batch, max)?;
                out.push(PlannedAppend {
                    partition,
                    batch,
                    records,
                });
            }
            (Some(partition), Some(Data::Records(list))) => {
                let records: Vec<&Record> = list.records.iter().collect();
                out.push(encode(topic, partition, &records, now)?);
            }
            (None, Some(Data::Records(list))) => {
                // Keyed records by key hash, unkeyed ones all to one
                // round-robin partition; groups in order of first appearance.
                let n = topic.settings.partitions;
                let mut sticky = None;
                let mut groups: Vec<(u32, Vec<&Record>)> = Vec::new();
                for r in &list.records {
                    let p = match &r.key {
                        Some(key) => partition_for_key(key, n),
                        None => *sticky.get_or_insert_with(|| topic.next_sticky_partition()),
                    };
                    match groups.iter_mut().find(|(gp, _)| *gp == p) {
                        Some((_, g)) => g.push(r),
                        None => groups.push((p, vec![r])),
                    }
                }
                if groups.is_empty() {
                    return Err(empty_records());
                }
                for (p, records) in groups {
                    out.push(encode(topic, p, &records, now)?);
                }
            }
        }
    }
    Ok(out)
}

fn empty_records() -> BrokerError {
    BrokerError::InvalidArgument("a RecordList is empty: send at least one record".into())
}

/// Verifies a pre-encoded batch; returns it with its record count.
fn verify_batch(
    topic: &Topic,
    partition: u32,
    batch: Bytes,
    max: u32,
) -> Result<(VerifiedBatch, u32)> {
    if batch.len() > max as usize {
        return Err(BrokerError::RecordTooLarge {
            topic: topic.name.clone(),
            partition,
            what: "batch",
            size: batch.len(),
            max,
        });
    }
    let batch = VerifiedBatch::new(batch).map_err(|e| match e {
        BatchError::TrailingBytes { .. } => {
            BrokerError::InvalidArgument(format!("batch for {}-{partition}: {e}", topic.name))
        }
        source => BrokerError::CorruptBatch {
            topic: topic.name.clone(),
            partition,
            source,
        },
    })?;
    if batch.view().is_control() {
        return Err(BrokerError::InvalidArgument(
            "control batches are written by the broker, not produced".into(),
        ));
    }
    let records = batch.header().record_count;
    Ok((batch, records))
}

/// Encodes records into one batch (timestamps default to `now`).
fn encode(topic: &Topic, partition: u32, records: &[&Record], now: i64) -> Result<PlannedAppend> {
    if records.is_empty() {
        return Err(empty_records());
    }
    let max = topic.settings.max_record_bytes;
    let too_large = |size| BrokerError::RecordTooLarge {
        topic: topic.name.clone(),
        partition,
        what: "encoded record list",
        size,
        max,
    };
    let mut builder = BatchBuilder::new(Compression::None);
    let mut headers: Vec<(&str, &[u8])> = Vec::new();
    for r in records {
        headers.clear();
        headers.extend(r.headers.iter().map(|h| (h.key.as_str(), h.value.as_ref())));
        builder.push(NewRecord {
            key: r.key.as_deref(),
            value: &r.value,
            headers: &headers,
            timestamp: r.timestamp_ms.unwrap_or(now),
        });
        if builder.estimated_len() > max as usize {
            return Err(too_large(builder.estimated_len()));
        }
    }
    let count = builder.record_count();
    let batch = builder
        .finish_verified()
        .map_err(|e| BrokerError::InvalidArgument(format!("cannot encode records: {e}")))?;
    if batch.len() > max as usize {
        return Err(too_large(batch.len()));
    }
    Ok(PlannedAppend {
        partition,
        batch,
        records: count,
    })
}

/// How long acknowledgements may take when a request gives no `timeout_ms`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Queues every planned batch on its replica, in order.
fn start(
    topic: Arc<Topic>,
    acks: AckLevel,
    timeout_ms: u32,
    planned: Vec<PlannedAppend>,
) -> Started {
    let wait = match timeout_ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)),
    };
    let appends = planned
        .into_iter()
        .map(|p| {
            let replica = &topic.partitions[p.partition as usize];
            let fut = replica.append(p.batch.clone(), acks);
            (p, fut)
        })
        .collect();
    Started {
        topic,
        acks,
        deadline: tokio::time::Instant::now() + wait,
        appends,
    }
}

/// Awaits the acknowledgements and builds the response.
async fn finish(started: Started) -> ProduceResponse {
    let Started {
        topic,
        acks,
        deadline,
        appends,
    } = started;
    let mut results = Vec::with_capacity(appends.len());
    for (p, fut) in appends {
        let res = match tokio::time::timeout_at(deadline, fut).await {
            Ok(res) => res,
            Err(_) => {
                results.push(PartitionResult {
                    partition: p.partition,
                    base_offset: None,
                    record_count: 0,
                    error: Some(timed_out(&topic.name, p.partition).to_proto()),
                });
                continue;
            }
        };
        let mut result = PartitionResult {
            partition: p.partition,
            base_offset: None,
            record_count: p.records,
            error: None,
        };
        match res {
            Ok(appended) => {
                let c = &topic.counters[p.partition as usize];
                c.bytes_in.inc_by(p.batch.len() as u64);
                c.records_in.inc_by(u64::from(p.records));
                if acks != AckLevel::None {
                    result.base_offset = Some(appended.base_offset);
                }
            }
            Err(e) => {
                let e = replica_error(&topic.name, p.partition, e);
                result.record_count = 0;
                result.error = Some(e.to_proto());
            }
        }
        results.push(result);
    }
    ProduceResponse { results }
}

/// The error of an append not acknowledged before the request's deadline.
fn timed_out(topic: &str, partition: u32) -> BrokerError {
    BrokerError::Timeout(format!(
        "{topic}-{partition}: the write was not acknowledged within the request's timeout_ms \
         (replicas unreachable or slow); it may or may not be stored: retry, and expect a duplicate"
    ))
}

impl ProduceSvc {
    /// Checks and queues one request.
    fn begin(&self, req: ProduceRequest) -> Result<Started> {
        let topic = self.0.topics.get(&req.topic)?;
        let acks = ack_level(req.acks)?;
        let timeout_ms = req.timeout_ms;
        let planned = plan(&topic, req)?;
        Ok(start(topic, acks, timeout_ms, planned))
    }
}

#[tonic::async_trait]
impl ProduceService for ProduceSvc {
    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        let _t = self.0.metrics.time("Produce");
        let started = self.begin(request.into_inner())?;
        Ok(Response::new(finish(started).await))
    }

    type ProduceStreamStream = ReceiverStream<Result<ProduceStreamResponse, Status>>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceStreamRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let svc = ProduceSvc(self.0.clone());
        tokio::spawn(async move {
            let shutdown = svc.0.shutdown.clone();
            loop {
                let msg = tokio::select! {
                    msg = inbound.message() => msg,
                    () = shutdown.wait() => break,
                };
                let msg = match msg {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "produce stream ended by the client");
                        break;
                    }
                };
                let sequence = msg.sequence;
                let timer = svc.0.metrics.time("ProduceStream");
                let begun = match msg.request {
                    Some(req) => svc.begin(req),
                    None => Err(BrokerError::InvalidArgument(
                        "a ProduceStreamRequest has no request".into(),
                    )),
                };
                match begun {
                    Ok(started) => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let response = finish(started).await;
                            drop(timer);
                            let _ = tx
                                .send(Ok(ProduceStreamResponse {
                                    sequence,
                                    response: Some(response),
                                    error: None,
                                }))
                                .await;
                        });
                    }
                    Err(e) => {
                        let reply = ProduceStreamResponse {
                            sequence,
                            response: None,
                            error: Some(e.to_proto()),
                        };
                        if tx.send(Ok(reply)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_levels() {
        assert_eq!(ack_level(0).ok(), Some(AckLevel::All));
        assert_eq!(ack_level(1).ok(), Some(AckLevel::None));
        assert_eq!(ack_level(2).ok(), Some(AckLevel::Leader));
        assert_eq!(ack_level(3).ok(), Some(AckLevel::All));
        assert!(ack_level(4).is_err());
    }
}
