//! FetchService: Fetch (with long poll), Subscribe and ListOffsets.
//!
//! Batches are served as stored: the bytes returned by the replica are a
//! slice of the segment's memory map, handed to prost without a copy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use runnel_batch::{BatchError, BatchIter};
use runnel_proto::v1::fetch_service_server::FetchService;
use runnel_proto::v1::{
    ConsumedRecord, FetchRequest, FetchResponse, Header, ListOffsetsRequest, ListOffsetsResponse,
    OffsetSpec, PartitionData, PartitionFetch, PartitionOffset, SubscribeRequest,
};
use runnel_storage::ReadBatches;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{NodeContext, check_unique, replica_error};
use crate::error::{BrokerError, Result};
use crate::registry::Topic;
use crate::replica::Replica;

/// Per-partition `max_bytes` when the request leaves it 0.
pub const DEFAULT_PARTITION_MAX_BYTES: u32 = 1 << 20;
/// Response `max_bytes` when the request leaves it 0.
pub const DEFAULT_RESPONSE_MAX_BYTES: u32 = 16 << 20;
/// Largest `max_bytes` honoured (keeps responses under the encoding limit).
pub const MAX_RESPONSE_BYTES: u32 = 64 << 20;
/// Longest long poll.
pub const MAX_WAIT_MS: u32 = 60_000;

pub(crate) struct FetchSvc(pub(crate) Arc<NodeContext>);

fn or_default(v: u32, default: u32) -> usize {
    (if v == 0 {
        default
    } else {
        v.min(MAX_RESPONSE_BYTES)
    }) as usize
}

/// `sub` as a zero-copy slice of `whole` when it lies inside it (records of
/// uncompressed batches), else a copy (decompressed records).
fn share(whole: &Bytes, sub: &[u8]) -> Bytes {
    let start = whole.as_ptr() as usize;
    let p = sub.as_ptr() as usize;
    if p >= start && p + sub.len() <= start + whole.len() {
        whole.slice_ref(sub)
    } else {
        Bytes::copy_from_slice(sub)
    }
}

/// Decodes the records at or after `from` out of stored batches (control
/// batches skipped).
fn decode(bytes: &Bytes, from: u64) -> Result<Vec<ConsumedRecord>, BatchError> {
    let mut out = Vec::new();
    for view in BatchIter::new(bytes) {
        let view = view?;
        if view.is_control() || view.next_offset() <= from {
            continue;
        }
        let base = view.base_offset();
        let records = view.records()?;
        for r in records.iter() {
            let r = r?;
            let offset = base + u64::from(r.offset_delta);
            if offset < from {
                continue;
            }
            out.push(ConsumedRecord {
                offset,
                timestamp_ms: r.timestamp,
                key: r.key.map(|k| share(bytes, k)),
                value: share(bytes, r.value),
                headers: r
                    .headers()
                    .map(|(k, v)| Header {
                        key: k.to_string(),
                        value: share(bytes, v),
                    })
                    .collect(),
            });
        }
    }
    Ok(out)
}

/// Turns what a replica read into the response entry for one partition.
fn partition_data(
    topic: &Topic,
    partition: u32,
    offset: u64,
    read: ReadBatches,
    decode_records: bool,
) -> PartitionData {
    let o = topic.partitions[partition as usize].offsets();
    let c = &topic.counters[partition as usize];
    c.bytes_out.inc_by(read.bytes.len() as u64);
    c.records_out
        .inc_by(read.next_offset.saturating_sub(read.first_offset));
    let mut data = PartitionData {
        partition,
        high_watermark: o.high_watermark,
        log_start_offset: o.log_start,
        next_offset: read.next_offset.max(offset),
        ..Default::default()
    };
    if decode_records {
        match decode(&read.bytes, offset) {
            Ok(records) => {
                if let Some(last) = records.last() {
                    data.next_offset = last.offset + 1;
                }
                data.records = records;
            }
            Err(e) => {
                let e = BrokerError::Internal(format!(
                    "stored batch of {}-{partition} does not decode: {e}",
                    topic.name
                ));
                data.next_offset = offset;
                data.error = Some(e.to_proto());
            }
        }
    } else {
        data.batches = read.bytes;
    }
    data
}

fn error_data(partition: u32, offset: u64, e: &BrokerError) -> PartitionData {
    PartitionData {
        partition,
        next_offset: offset,
        error: Some(e.to_proto()),
        ..Default::default()
    }
}

/// Resolves when any of the receivers sees a change (or closes).
async fn any_changed(watches: &mut [watch::Receiver<u64>]) {
    let mut futs: Vec<Pin<Box<dyn Future<Output = _> + Send + '_>>> = watches
        .iter_mut()
        .map(|w| Box::pin(w.changed()) as _)
        .collect();
    std::future::poll_fn(|cx| {
        for f in futs.iter_mut() {
            if f.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await;
}

impl FetchSvc {
    /// Reads every partition once. Returns the response and its byte count.
    async fn read_once(&self, topic: &Topic, req: &FetchRequest) -> (FetchResponse, usize, bool) {
        let mut budget = or_default(req.max_bytes, DEFAULT_RESPONSE_MAX_BYTES);
        let mut total = 0usize;
        let mut failed = false;
        let mut partitions = Vec::with_capacity(req.partitions.len());
        for pf in &req.partitions {
            let PartitionFetch {
                partition,
                offset,
                max_bytes,
            } = *pf;
            let replica = match topic.partition(partition) {
                Ok(r) => r,
                Err(e) => {
                    failed = true;
                    partitions.push(error_data(partition, offset, &e));
                    continue;
                }
            };
            // The response budget is spent: the remaining partitions get
            // nothing this time (at least one batch came back already).
            let max = or_default(max_bytes, DEFAULT_PARTITION_MAX_BYTES).min(budget);
            if max == 0 {
                let o = replica.offsets();
                partitions.push(PartitionData {
                    partition,
                    high_watermark: o.high_watermark,
                    log_start_offset: o.log_start,
                    next_offset: offset,
                    ..Default::default()
                });
                continue;
            }
            match replica.read(offset, max).await {
                Ok(read) => {
                    let n = read.bytes.len();
                    total += n;
                    budget = budget.saturating_sub(n);
                    partitions.push(partition_data(topic, partition, offset, read, req.decode));
                }
                Err(e) => {
                    failed = true;
                    partitions.push(error_data(
                        partition,
                        offset,
                        &replica_error(&topic.name, partition, e),
                    ));
                }
            }
        }
        (FetchResponse { partitions }, total, failed)
    }

    async fn fetch_inner(&self, req: FetchRequest) -> Result<FetchResponse> {
        let topic = self.0.topics.get(&req.topic)?;
        if req.partitions.is_empty() {
            return Err(BrokerError::InvalidArgument(
                "partitions is empty: name at least one PartitionFetch".into(),
            ));
        }
        check_unique(req.partitions.iter().map(|p| p.partition), "partitions")?;
        let min_bytes = req.min_bytes.max(1) as usize;
        let deadline =
            Instant::now() + Duration::from_millis(u64::from(req.max_wait_ms.min(MAX_WAIT_MS)));
        loop {
            // Subscribe before reading, so no append between the read and
            // the wait goes unnoticed.
            let mut watches: Vec<watch::Receiver<u64>> = req
                .partitions
                .iter()
                .filter_map(|p| topic.partition(p.partition).ok())
                .map(|r| {
                    let mut w = r.watch_high_watermark();
                    w.borrow_and_update();
                    w
                })
                .collect();
            let (resp, total, failed) = self.read_once(&topic, &req).await;
            if total >= min_bytes
                || failed
                || Instant::now() >= deadline
                || self.0.shutdown.is_set()
            {
                return Ok(resp);
            }
            if topic.partitions.iter().any(|r| r.is_closed()) {
                return Ok(resp);
            }
            tokio::select! {
                () = any_changed(&mut watches) => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = self.0.shutdown.wait() => {}
            }
        }
    }

    async fn list_offsets_inner(&self, req: ListOffsetsRequest) -> Result<ListOffsetsResponse> {
        let topic = self.0.topics.get(&req.topic)?;
        let mut offsets = Vec::with_capacity(req.queries.len());
        for q in &req.queries {
            let mut out = PartitionOffset {
                partition: q.partition,
                ..Default::default()
            };
            let replica = match topic.partition(q.partition) {
                Ok(r) => r,
                Err(e) => {
                    out.error = Some(e.to_proto());
                    offsets.push(out);
                    continue;
                }
            };
            match OffsetSpec::try_from(q.spec) {
                Ok(OffsetSpec::Earliest) => out.offset = replica.offsets().log_start,
                Ok(OffsetSpec::Latest) => out.offset = replica.high_watermark(),
                Ok(OffsetSpec::Unspecified) => {
                    match replica.offset_for_timestamp(q.timestamp_ms).await {
                        Ok(Some((offset, ts))) => {
                            out.offset = offset;
                            out.timestamp_ms = Some(ts);
                        }
                        Ok(None) => out.offset = replica.high_watermark(),
                        Err(e) => {
                            out.error = Some(replica_error(&topic.name, q.partition, e).to_proto())
                        }
                    }
                }
                Err(_) => {
                    let e = BrokerError::InvalidArgument(format!(
                        "spec {} is not a known OffsetSpec: use EARLIEST, LATEST or UNSPECIFIED with timestamp_ms",
                        q.spec
                    ));
                    out.error = Some(e.to_proto());
                }
            }
            offsets.push(out);
        }
        Ok(ListOffsetsResponse { offsets })
    }
}

/// Streams one partition to a subscriber until it goes away, the topic is
/// deleted or the node shuts down.
async fn run_subscription(
    ctx: Arc<NodeContext>,
    topic: Arc<Topic>,
    replica: Arc<dyn Replica>,
    req: SubscribeRequest,
    tx: mpsc::Sender<Result<PartitionData, Status>>,
) {
    let max = or_default(req.max_bytes, DEFAULT_PARTITION_MAX_BYTES);
    let mut offset = req.offset;
    let mut hwm = replica.watch_high_watermark();
    loop {
        let high = *hwm.borrow_and_update();
        if replica.is_closed() {
            let e = BrokerError::Unavailable(format!(
                "{}-{} was closed (topic deleted or node shutting down)",
                topic.name, req.partition
            ));
            let _ = tx.send(Err(e.into())).await;
            return;
        }
        if offset < high {
            match replica.read(offset, max).await {
                Ok(read) => {
                    let data = partition_data(&topic, req.partition, offset, read, req.decode);
                    let empty = data.batches.is_empty() && data.records.is_empty();
                    let failed = data.error.is_some();
                    offset = data.next_offset.max(offset);
                    if (!empty || failed) && tx.send(Ok(data)).await.is_err() {
                        return;
                    }
                    if failed {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(replica_error(&topic.name, req.partition, e).into()))
                        .await;
                    return;
                }
            }
        }
        tokio::select! {
            changed = hwm.changed() => if changed.is_err() { return },
            () = ctx.shutdown.wait() => return,
            () = tx.closed() => return,
        }
    }
}

#[tonic::async_trait]
impl FetchService for FetchSvc {
    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let _t = self.0.metrics.time("Fetch");
        Ok(Response::new(self.fetch_inner(request.into_inner()).await?))
    }

    type SubscribeStream = ReceiverStream<Result<PartitionData, Status>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let _t = self.0.metrics.time("Subscribe");
        let req = request.into_inner();
        let topic = self.0.topics.get(&req.topic)?;
        let replica = topic.partition(req.partition)?.clone();
        let o = replica.offsets();
        if req.offset < o.log_start || req.offset > o.high_watermark {
            return Err(BrokerError::OffsetOutOfRange {
                topic: topic.name.clone(),
                partition: req.partition,
                offset: req.offset,
                log_start: o.log_start,
                high_watermark: o.high_watermark,
            }
            .into());
        }
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(run_subscription(self.0.clone(), topic, replica, req, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let _t = self.0.metrics.time("ListOffsets");
        Ok(Response::new(
            self.list_offsets_inner(request.into_inner()).await?,
        ))
    }
}
