//! Reading partitions from explicit positions (no groups yet).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runnel_batch::BatchIter;
use runnel_proto::v1::{ErrorReason, FetchRequest, FetchResponse, PartitionData, PartitionFetch};
use tokio::task::JoinHandle;

use crate::client::{Client, OffsetSpec};
use crate::error::{Error, Result};

/// Where a [`Consumer`] starts in each partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartPosition {
    /// The first record still stored (log start offset).
    Earliest,
    /// After the last committed record: only records produced from now on.
    Latest,
    /// This offset in every partition; a fetch fails with
    /// `OFFSET_OUT_OF_RANGE` if a partition does not hold it.
    Offset(u64),
    /// The first record with a timestamp at or after this (ms since the
    /// Unix epoch); the high watermark if every record is older.
    Timestamp(i64),
}

/// How a [`Consumer`] fetches.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Most bytes per fetch response, across partitions. Default 16 MiB.
    pub max_bytes: u32,
    /// Most bytes per partition per fetch (at least one batch is returned
    /// even if larger). Default 4 MiB.
    pub partition_max_bytes: u32,
    /// A fetch waits until this many bytes are available... Default 1.
    pub min_bytes: u32,
    /// ...or this long (long poll), at most 60 s. Default 500 ms.
    pub max_wait: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_bytes: 16 << 20,
            partition_max_bytes: 4 << 20,
            min_bytes: 1,
            max_wait: Duration::from_millis(500),
        }
    }
}

/// A record read from a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic it was read from.
    pub topic: Arc<str>,
    /// Partition it was read from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// Timestamp in ms since the Unix epoch.
    pub timestamp: i64,
    /// Key, when it has one.
    pub key: Option<Bytes>,
    /// The payload (shares the fetched buffer when the batch was not
    /// compressed).
    pub value: Bytes,
    /// Headers, in order.
    pub headers: Vec<(String, Bytes)>,
}

#[derive(Clone, Debug)]
struct PartitionState {
    id: u32,
    position: u64,
    high_watermark: Option<u64>,
}

/// Reads a set of partitions of one topic, each from its own position.
///
/// Every [`Consumer::poll`] returns one `Fetch` call over all the
/// partitions; the consumer verifies each batch's CRC, skips records below
/// the position and advances the position past what it returns. The next
/// fetch starts as soon as a poll returns, so the broker reads while the
/// caller works (it is thrown away if [`Consumer::seek`] moves a position).
/// Positions live only in the consumer (no groups, no commits yet).
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    topic: Arc<str>,
    partitions: Vec<PartitionState>,
    config: ConsumerConfig,
    prefetch: Option<Prefetch>,
}

/// A fetch started ahead, from `positions`.
#[derive(Debug)]
struct Prefetch {
    positions: Vec<u64>,
    task: JoinHandle<Result<FetchResponse>>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(prefetch) = self.prefetch.take() {
            prefetch.task.abort();
        }
    }
}

impl Consumer {
    /// A consumer of `partitions` of `topic` (`None`: all of them), each
    /// starting at `start`, resolved now through `ListOffsets`.
    pub async fn new(
        client: &Client,
        topic: &str,
        partitions: Option<Vec<u32>>,
        start: StartPosition,
        config: ConsumerConfig,
    ) -> Result<Consumer> {
        let description = client.describe_topic(topic).await?;
        let count = u32::try_from(description.partitions.len()).unwrap_or(u32::MAX);
        let ids: Vec<u32> = match partitions {
            None => (0..count).collect(),
            Some(ids) => {
                let mut seen = std::collections::HashSet::new();
                for id in &ids {
                    if *id >= count {
                        return Err(Error::local(
                            ErrorReason::UnknownPartition,
                            format!(
                                "topic \"{topic}\" has {count} partitions (0-{}); there is no partition {id}",
                                count.saturating_sub(1)
                            ),
                        ));
                    }
                    if !seen.insert(*id) {
                        return Err(Error::InvalidArgument(format!(
                            "partition {id} is listed twice"
                        )));
                    }
                }
                ids
            }
        };
        let positions: Vec<u64> = match start {
            StartPosition::Offset(offset) => vec![offset; ids.len()],
            StartPosition::Earliest => resolve(client, topic, &ids, OffsetSpec::Earliest).await?,
            StartPosition::Latest => resolve(client, topic, &ids, OffsetSpec::Latest).await?,
            StartPosition::Timestamp(ts) => {
                resolve(client, topic, &ids, OffsetSpec::Timestamp(ts)).await?
            }
        };
        Ok(Consumer {
            client: client.clone(),
            topic: Arc::from(topic),
            partitions: ids
                .into_iter()
                .zip(positions)
                .map(|(id, position)| PartitionState {
                    id,
                    position,
                    high_watermark: None,
                })
                .collect(),
            config,
            prefetch: None,
        })
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partitions read, in fetch order.
    pub fn partitions(&self) -> Vec<u32> {
        self.partitions.iter().map(|p| p.id).collect()
    }

    /// The next offset to read in `partition`, if it is one of ours.
    pub fn position(&self, partition: u32) -> Option<u64> {
        self.state(partition).map(|p| p.position)
    }

    /// The high watermark of `partition` as of the last fetch.
    pub fn high_watermark(&self, partition: u32) -> Option<u64> {
        self.state(partition).and_then(|p| p.high_watermark)
    }

    /// Moves the position of `partition` (for replay).
    pub fn seek(&mut self, partition: u32, offset: u64) -> Result<()> {
        match self.partitions.iter_mut().find(|p| p.id == partition) {
            Some(p) => {
                p.position = offset;
                Ok(())
            }
            None => Err(Error::InvalidArgument(format!(
                "this consumer does not read partition {partition}"
            ))),
        }
    }

    fn state(&self, partition: u32) -> Option<&PartitionState> {
        self.partitions.iter().find(|p| p.id == partition)
    }

    /// One fetch round: waits up to `max_wait` for `min_bytes`, then returns
    /// what there is (possibly nothing), each partition's records in offset
    /// order, partitions one after the other.
    ///
    /// A partition error (`OFFSET_OUT_OF_RANGE` after retention deleted the
    /// position, for example) fails the call; positions are not reset.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>> {
        let positions = self.positions();
        let fetch = match self.prefetch.take() {
            Some(prefetch) if prefetch.positions == positions => prefetch,
            Some(stale) => {
                stale.task.abort();
                self.start_fetch()
            }
            None => self.start_fetch(),
        };
        let response = fetch
            .task
            .await
            .map_err(|e| Error::Protocol(format!("the fetch task failed: {e}")))??;
        let mut records = Vec::new();
        for data in &response.partitions {
            self.take(data, &mut records)?;
        }
        // Fetch the next round while the caller handles this one.
        self.prefetch = Some(self.start_fetch());
        Ok(records)
    }

    fn positions(&self) -> Vec<u64> {
        self.partitions.iter().map(|p| p.position).collect()
    }

    /// Starts a fetch from the current positions on its own task.
    fn start_fetch(&self) -> Prefetch {
        let request = FetchRequest {
            topic: self.topic.to_string(),
            partitions: self
                .partitions
                .iter()
                .map(|p| PartitionFetch {
                    partition: p.id,
                    offset: p.position,
                    max_bytes: self.config.partition_max_bytes,
                })
                .collect(),
            min_bytes: self.config.min_bytes,
            max_wait_ms: u32::try_from(self.config.max_wait.as_millis()).unwrap_or(60_000),
            max_bytes: self.config.max_bytes,
            decode: false,
        };
        let client = self.client.clone();
        Prefetch {
            positions: self.positions(),
            task: tokio::spawn(async move { client.call(client.fetcher().fetch(request)).await }),
        }
    }

    /// Decodes one partition's batches into `out`, advancing its position.
    fn take(&mut self, data: &PartitionData, out: &mut Vec<ConsumerRecord>) -> Result<()> {
        let topic = self.topic.clone();
        let Some(state) = self.partitions.iter_mut().find(|p| p.id == data.partition) else {
            return Err(Error::Protocol(format!(
                "fetch answered partition {} which was not asked for",
                data.partition
            )));
        };
        if let Some(error) = data
            .error
            .as_ref()
            .filter(|e| e.reason != ErrorReason::Unspecified as i32)
        {
            return Err(Error::from_proto(error));
        }
        state.high_watermark = Some(data.high_watermark);
        let corrupt = |position: u64, source| Error::Corrupt {
            topic: topic.to_string(),
            partition: data.partition,
            offset: position,
            source,
        };
        for batch in BatchIter::new(&data.batches) {
            let batch = batch.map_err(|e| corrupt(state.position, e))?;
            let next = batch.next_offset();
            if batch.is_control() || next <= state.position {
                state.position = state.position.max(next);
                continue;
            }
            let base = batch.base_offset();
            let decoded = batch.records().map_err(|e| corrupt(state.position, e))?;
            for record in decoded.iter() {
                let record = record.map_err(|e| corrupt(state.position, e))?;
                let offset = base + u64::from(record.offset_delta);
                if offset < state.position {
                    continue;
                }
                out.push(ConsumerRecord {
                    topic: topic.clone(),
                    partition: data.partition,
                    offset,
                    timestamp: record.timestamp,
                    key: record.key.map(|k| share(&data.batches, k)),
                    value: share(&data.batches, record.value),
                    headers: record
                        .headers()
                        .map(|(name, value)| (name.to_string(), share(&data.batches, value)))
                        .collect(),
                });
            }
            state.position = next;
        }
        Ok(())
    }
}

/// `part` as a `Bytes`: a zero-copy slice of `whole` when it lies inside it
/// (uncompressed batches), a copy otherwise (decompressed records).
fn share(whole: &Bytes, part: &[u8]) -> Bytes {
    let start = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    if p >= start && p + part.len() <= start + whole.len() && !part.is_empty() {
        whole.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

async fn resolve(client: &Client, topic: &str, ids: &[u32], spec: OffsetSpec) -> Result<Vec<u64>> {
    let queries: Vec<(u32, OffsetSpec)> = ids.iter().map(|id| (*id, spec)).collect();
    client.list_offsets_many(topic, &queries).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_batch::{BatchBuilder, Compression, NewRecord, stamp};

    fn batch(base: u64, values: &[&[u8]], compression: Compression) -> Vec<u8> {
        let mut b = BatchBuilder::new(compression);
        for v in values {
            b.push(NewRecord {
                key: Some(b"k"),
                value: v,
                headers: &[("h", b"x")],
                timestamp: 10,
            });
        }
        let mut bytes = b.finish().unwrap().to_vec();
        stamp(&mut bytes, base, 1, 1);
        bytes
    }

    fn consumer(position: u64) -> Consumer {
        Consumer {
            client: Client::for_tests(),
            topic: Arc::from("t"),
            partitions: vec![PartitionState {
                id: 0,
                position,
                high_watermark: None,
            }],
            config: ConsumerConfig::default(),
            prefetch: None,
        }
    }

    fn data(batches: Vec<u8>) -> PartitionData {
        PartitionData {
            partition: 0,
            high_watermark: 5,
            batches: Bytes::from(batches),
            ..PartitionData::default()
        }
    }

    #[tokio::test]
    async fn records_below_the_position_are_skipped() {
        for (case, compression) in [Compression::None, Compression::Lz4, Compression::Zstd]
            .into_iter()
            .enumerate()
        {
            let mut bytes = batch(0, &[b"a", b"b", b"c"], compression);
            bytes.extend(batch(3, &[b"d", b"e"], compression));
            let mut c = consumer(1);
            let mut out = Vec::new();
            c.take(&data(bytes), &mut out).unwrap();
            let got: Vec<(u64, &[u8])> = out.iter().map(|r| (r.offset, r.value.as_ref())).collect();
            assert_eq!(
                got,
                [(1, &b"b"[..]), (2, b"c"), (3, b"d"), (4, b"e")],
                "case {case}"
            );
            assert_eq!(c.position(0), Some(5), "case {case}");
            assert_eq!(c.high_watermark(0), Some(5), "case {case}");
            assert_eq!(
                out[0].headers,
                [("h".to_string(), Bytes::from_static(b"x"))]
            );
            assert_eq!(out[0].key.as_deref(), Some(&b"k"[..]));
        }
    }

    #[tokio::test]
    async fn corrupt_batches_and_partition_errors_fail() {
        let mut bytes = batch(0, &[b"a"], Compression::None);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let mut c = consumer(0);
        let error = c.take(&data(bytes), &mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                error,
                Error::Corrupt {
                    partition: 0,
                    offset: 0,
                    ..
                }
            ),
            "{error}"
        );

        let mut out_of_range = data(Vec::new());
        out_of_range.error = Some(runnel_proto::v1::Error {
            reason: ErrorReason::OffsetOutOfRange as i32,
            message: "offset 9 is past the high watermark 5".into(),
            ..Default::default()
        });
        let error = c.take(&out_of_range, &mut Vec::new()).unwrap_err();
        assert_eq!(error.reason(), Some(ErrorReason::OffsetOutOfRange));
        assert_eq!(c.position(0), Some(0));
    }

    /// A broker holding partition 0 as ten one-record batches ("v0".."v9"),
    /// answering each fetch with at most `per_fetch` batches.
    #[derive(Clone)]
    struct TenRecords {
        per_fetch: usize,
        fetches: Arc<std::sync::Mutex<Vec<u64>>>,
    }

    #[tonic::async_trait]
    impl runnel_proto::v1::fetch_service_server::FetchService for TenRecords {
        async fn fetch(
            &self,
            request: tonic::Request<FetchRequest>,
        ) -> std::result::Result<tonic::Response<FetchResponse>, tonic::Status> {
            let wanted = request.get_ref().partitions[0].offset;
            self.fetches.lock().unwrap().push(wanted);
            let mut bytes = Vec::new();
            for offset in (wanted..10).take(self.per_fetch) {
                bytes.extend(batch(
                    offset,
                    &[format!("v{offset}").as_bytes()],
                    Compression::None,
                ));
            }
            Ok(tonic::Response::new(FetchResponse {
                partitions: vec![PartitionData {
                    partition: 0,
                    high_watermark: 10,
                    batches: Bytes::from(bytes),
                    ..PartitionData::default()
                }],
            }))
        }

        type SubscribeStream =
            tokio_stream::Empty<std::result::Result<PartitionData, tonic::Status>>;

        async fn subscribe(
            &self,
            _: tonic::Request<runnel_proto::v1::SubscribeRequest>,
        ) -> std::result::Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
            Err(tonic::Status::unimplemented(""))
        }

        async fn list_offsets(
            &self,
            _: tonic::Request<runnel_proto::v1::ListOffsetsRequest>,
        ) -> std::result::Result<
            tonic::Response<runnel_proto::v1::ListOffsetsResponse>,
            tonic::Status,
        > {
            Err(tonic::Status::unimplemented(""))
        }
    }

    #[tokio::test]
    async fn polls_read_on_with_a_prefetch_that_seek_discards() {
        let broker = TenRecords {
            per_fetch: 3,
            fetches: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    runnel_proto::v1::fetch_service_server::FetchServiceServer::new(broker.clone()),
                )
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let mut c = consumer(1);
        c.client = Client::connect(&address).await.unwrap();
        let values = |records: Vec<ConsumerRecord>| -> Vec<(u64, Bytes)> {
            records.into_iter().map(|r| (r.offset, r.value)).collect()
        };
        let v = |o: u64| (o, Bytes::from(format!("v{o}")));
        assert_eq!(values(c.poll().await.unwrap()), [v(1), v(2), v(3)]);
        assert_eq!(values(c.poll().await.unwrap()), [v(4), v(5), v(6)]);
        c.seek(0, 2).unwrap();
        assert_eq!(values(c.poll().await.unwrap()), [v(2), v(3), v(4)]);
        assert_eq!(c.position(0), Some(5));
        assert!(c.seek(7, 0).is_err());
        // Every poll started the next fetch from where it ended; the one
        // started from 7 was thrown away by the seek (whether or not it had
        // reached the broker yet).
        let fetches = broker.fetches.lock().unwrap().clone();
        let fetches: Vec<u64> = fetches.into_iter().filter(|o| *o != 7).collect();
        assert_eq!(&fetches[..3], [1, 4, 2], "{fetches:?}");
    }
}
