//! Reading partitions from explicit positions (no groups yet).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_batch::BatchIter;
use runnel_proto::v1::{ErrorReason, FetchRequest, FetchResponse, PartitionData, PartitionFetch};
use tokio::task::{self, AbortHandle, JoinHandle, JoinSet};

use crate::client::{Client, OffsetSpec};
use crate::error::{Error, Result};
use crate::metadata::Route;

/// How often a consumer waiting for a metadata refresh looks again.
const REFRESH_POLL: Duration = Duration::from_millis(5);

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
    /// Wait before fetching a partition again after its node failed or
    /// answered `UNAVAILABLE` or `NOT_LEADER` without naming the leader
    /// (metadata is re-read meanwhile). Default 100 ms.
    pub retry_backoff: Duration,
    /// How long a partition's fetches may keep failing with such retriable
    /// errors before [`Consumer::poll`] returns the error. Default 30 s.
    pub retry_timeout: Duration,
    /// Fetches in flight to one node at a time, each for its own share of
    /// the node's partitions (so a node can read and send one while the
    /// client receives another). Default 1, as in Kafka: over one HTTP/2
    /// connection a second fetch did not measurably speed up consuming
    /// (benches/RESULTS.md, "Consume: HTTP/2 frame size").
    pub fetches_per_node: usize,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_bytes: 16 << 20,
            partition_max_bytes: 4 << 20,
            min_bytes: 1,
            max_wait: Duration::from_millis(500),
            retry_backoff: Duration::from_millis(100),
            retry_timeout: Duration::from_secs(30),
            fetches_per_node: 1,
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
    /// Not fetched before this (after a retriable failure).
    not_before: Option<Instant>,
    /// Since when its fetches have failed with retriable errors.
    failing_since: Option<Instant>,
}

/// Reads a set of partitions of one topic, each from its own position.
///
/// Partitions are grouped by leader node; a node's partitions are split
/// over up to [`ConsumerConfig::fetches_per_node`] concurrent `Fetch`es, a
/// partition in one of them at a time, and the order in which partitions are
/// asked rotates from round to round, so that a response budget spent on
/// the first partitions does not starve the last ones (as KIP-74 has Kafka
/// consumers do). [`Consumer::poll`] returns what the first
/// node (and any other already done) answered; the consumer verifies each
/// batch's CRC, skips records below the position and advances the position
/// past what it returns. The next fetch of a node starts as soon as a poll
/// has taken its answer, so brokers read while the caller works (a fetch is
/// thrown away if [`Consumer::seek`] moves one of its positions).
///
/// A partition whose leader moved (`NOT_LEADER`) is fetched from the new
/// leader; a node that cannot be reached (or answers `UNAVAILABLE`) makes
/// its partitions wait [`ConsumerConfig::retry_backoff`] and re-read the
/// metadata, and fails the poll only when the partition has failed for
/// [`ConsumerConfig::retry_timeout`]. Positions are kept throughout; they
/// live only in the consumer (no groups, no commits yet).
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    topic: Arc<str>,
    partitions: Vec<PartitionState>,
    config: ConsumerConfig,
    /// Fetches in flight, at most `fetches_per_node` per node.
    fetches: JoinSet<Result<FetchResponse>>,
    /// What each fetch in flight asked for.
    asked: HashMap<task::Id, NodeFetch>,
    /// A metadata refresh running after a failure.
    refresh: Option<JoinHandle<()>>,
    /// Where in `partitions` the next round of fetches starts asking.
    rotation: usize,
}

/// A fetch in flight to one node.
#[derive(Debug)]
struct NodeFetch {
    address: Arc<str>,
    /// (partition, position) pairs, in request order.
    positions: Vec<(u32, u64)>,
    abort: AbortHandle,
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
        Ok(Consumer::from_positions(
            client,
            topic,
            ids.into_iter().zip(positions).collect(),
            config,
        ))
    }

    fn from_positions(
        client: &Client,
        topic: &str,
        positions: Vec<(u32, u64)>,
        config: ConsumerConfig,
    ) -> Consumer {
        Consumer {
            client: client.clone(),
            topic: Arc::from(topic),
            partitions: positions
                .into_iter()
                .map(|(id, position)| PartitionState {
                    id,
                    position,
                    high_watermark: None,
                    not_before: None,
                    failing_since: None,
                })
                .collect(),
            config,
            fetches: JoinSet::new(),
            asked: HashMap::new(),
            refresh: None,
            rotation: 0,
        }
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

    /// One fetch round: waits until a node answers (each fetch waits up to
    /// `max_wait` for `min_bytes`), then returns what there is (possibly
    /// nothing), each partition's records in offset order, partitions one
    /// after the other.
    ///
    /// A partition error other than a moved leader or an unavailable node
    /// (`OFFSET_OUT_OF_RANGE` after retention deleted the position, for
    /// example) fails the call when no other partition returned records;
    /// positions are not reset, so the error comes back at the next poll.
    ///
    /// Cancel-safe: dropping the future loses no records and moves no
    /// position.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>> {
        self.drop_stale_fetches();
        loop {
            self.start_fetches(Instant::now())?;
            let wake = self.next_wake();
            let joined = match (self.fetches.is_empty(), wake) {
                (true, Some(at)) => {
                    tokio::time::sleep_until(at.into()).await;
                    continue;
                }
                (true, None) => {
                    return Err(Error::InvalidArgument(
                        "this consumer reads no partition".into(),
                    ));
                }
                (false, Some(at)) => {
                    tokio::select! {
                        joined = self.fetches.join_next_with_id() => joined,
                        () = tokio::time::sleep_until(at.into()) => continue,
                    }
                }
                (false, None) => self.fetches.join_next_with_id().await,
            };
            let mut done = Vec::new();
            done.extend(joined);
            while let Some(more) = self.fetches.try_join_next_with_id() {
                done.push(more);
            }
            let mut records = Vec::new();
            let mut failure = None;
            let mut answered = false;
            for joined in done {
                let (id, result) = match joined {
                    Ok((id, result)) => (id, Ok(result)),
                    Err(e) => (e.id(), Err(e)),
                };
                let Some(fetch) = self.asked.remove(&id) else {
                    continue;
                };
                let response = match result {
                    Ok(response) => response,
                    Err(e) if e.is_cancelled() => continue,
                    Err(e) => Err(Error::Protocol(format!("the fetch task failed: {e}"))),
                };
                answered = true;
                if let Err(e) = self.on_fetched(fetch, response, &mut records) {
                    failure.get_or_insert(e);
                }
            }
            // Fetch the next round while the caller handles this one.
            self.start_fetches(Instant::now())?;
            match failure {
                Some(e) if records.is_empty() => return Err(e),
                _ if answered => return Ok(records),
                _ => continue,
            }
        }
    }

    /// Aborts fetches asked from positions that [`Consumer::seek`] moved.
    fn drop_stale_fetches(&mut self) {
        let partitions = &self.partitions;
        let stale = |positions: &[(u32, u64)]| {
            positions.iter().any(|(id, asked)| {
                partitions
                    .iter()
                    .find(|p| p.id == *id)
                    .is_none_or(|p| p.position != *asked)
            })
        };
        self.asked.retain(|_, fetch| {
            let keep = !stale(&fetch.positions);
            if !keep {
                fetch.abort.abort();
            }
            keep
        });
    }

    /// When a partition waiting out a backoff (or a metadata refresh) can be
    /// fetched again.
    fn next_wake(&self) -> Option<Instant> {
        let covered = self.covered();
        let waiting = self
            .partitions
            .iter()
            .filter(|p| !covered.contains(&p.id))
            .filter_map(|p| p.not_before)
            .min()?;
        let refreshing = self.refresh.as_ref().is_some_and(|r| !r.is_finished());
        // While metadata is being re-read, look again every few ms.
        Some(if refreshing {
            waiting.max(Instant::now() + REFRESH_POLL)
        } else {
            waiting
        })
    }

    /// Partitions some fetch in flight asked for.
    fn covered(&self) -> HashSet<u32> {
        self.asked
            .values()
            .flat_map(|f| f.positions.iter().map(|(id, _)| *id))
            .collect()
    }

    /// Starts fetches for the partitions no fetch covers, except those
    /// waiting out a backoff or a metadata refresh: a node's uncovered
    /// partitions are split over the fetches it has room for (none when it
    /// already has `fetches_per_node` in flight; they join a later one).
    fn start_fetches(&mut self, now: Instant) -> Result<()> {
        let covered = self.covered();
        let mut in_flight: HashMap<Arc<str>, usize> = HashMap::new();
        for f in self.asked.values() {
            *in_flight.entry(f.address.clone()).or_default() += 1;
        }
        let per_node = self.config.fetches_per_node.max(1);
        let refreshing = self.refresh.as_ref().is_some_and(|r| !r.is_finished());
        let metadata = self.client.metadata();
        let mut groups: Vec<(Route, Vec<(u32, u64)>)> = Vec::new();
        let n = self.partitions.len();
        let first = if n == 0 { 0 } else { self.rotation % n };
        for i in 0..n {
            let p = &self.partitions[(first + i) % n];
            if covered.contains(&p.id) {
                continue;
            }
            if p.not_before.is_some_and(|t| t > now || refreshing) {
                continue;
            }
            let route = metadata.route(&self.topic, p.id)?;
            if in_flight.get(&route.address).copied().unwrap_or(0) >= per_node {
                continue;
            }
            match groups.iter_mut().find(|(r, _)| r.address == route.address) {
                Some((_, positions)) => positions.push((p.id, p.position)),
                None => groups.push((route, vec![(p.id, p.position)])),
            }
        }
        if !groups.is_empty() {
            self.rotation = self.rotation.wrapping_add(1);
        }
        for (route, positions) in groups {
            let free = per_node - in_flight.get(&route.address).copied().unwrap_or(0);
            let size = positions.len().div_ceil(free.min(positions.len()));
            for share in positions.chunks(size) {
                self.start_fetch(route.clone(), share.to_vec());
            }
        }
        Ok(())
    }

    /// Starts a fetch of `positions` from the node of `route`, on its own task.
    fn start_fetch(&mut self, route: Route, positions: Vec<(u32, u64)>) {
        let request = FetchRequest {
            topic: self.topic.to_string(),
            partitions: positions
                .iter()
                .map(|(partition, offset)| PartitionFetch {
                    partition: *partition,
                    offset: *offset,
                    max_bytes: self.config.partition_max_bytes,
                })
                .collect(),
            min_bytes: self.config.min_bytes,
            max_wait_ms: u32::try_from(self.config.max_wait.as_millis()).unwrap_or(60_000),
            max_bytes: self.config.max_bytes,
            decode: false,
        };
        let client = self.client.clone();
        let address = route.address.clone();
        let abort = self.fetches.spawn(async move {
            let mut stub = client.fetcher(route.channel);
            let call = stub.fetch(request);
            client.metadata().call_on(&route.address, call).await
        });
        self.asked.insert(
            abort.id(),
            NodeFetch {
                address,
                positions,
                abort,
            },
        );
    }

    /// Takes one node's answer: records into `out`, moved leaders and
    /// failures into the routes and backoffs.
    fn on_fetched(
        &mut self,
        fetch: NodeFetch,
        response: Result<FetchResponse>,
        out: &mut Vec<ConsumerRecord>,
    ) -> Result<()> {
        let now = Instant::now();
        let response = match response {
            Ok(response) => response,
            Err(e) if e.is_retriable() => {
                let mut result = Ok(());
                for (id, _) in &fetch.positions {
                    if let Err(e) = self.retry_later(*id, &fetch.address, &e, now) {
                        result = Err(e);
                    }
                }
                return result;
            }
            Err(e) => return Err(e),
        };
        let mut result = Ok(());
        for data in &response.partitions {
            let asked = fetch
                .positions
                .iter()
                .find(|(id, _)| *id == data.partition)
                .map(|(_, position)| *position);
            let Some(asked) = asked else {
                return Err(Error::Protocol(format!(
                    "fetch answered partition {} which was not asked for",
                    data.partition
                )));
            };
            if self.position(data.partition) != Some(asked) {
                continue; // moved by seek since: not what the caller wants
            }
            let error = data
                .error
                .as_ref()
                .filter(|e| e.reason != ErrorReason::Unspecified as i32)
                .map(Error::from_proto);
            let outcome = match error {
                Some(e)
                    if matches!(
                        e.reason(),
                        Some(ErrorReason::NotLeader | ErrorReason::Unavailable)
                    ) =>
                {
                    self.retry_later(data.partition, &fetch.address, &e, now)
                }
                Some(e) => Err(e),
                None => self.take(data, out),
            };
            if let Err(e) = outcome {
                result = Err(e);
            }
        }
        result
    }

    /// A retriable failure of `partition` at `address`: updates the routes,
    /// waits (no wait when the new leader was named), and fails once the
    /// partition has failed for `retry_timeout`.
    fn retry_later(
        &mut self,
        partition: u32,
        address: &str,
        error: &Error,
        now: Instant,
    ) -> Result<()> {
        let metadata = self.client.metadata();
        let seen = metadata.version(&self.topic);
        let refresh = metadata.note_error(&self.topic, partition, address, error);
        if refresh && self.refresh.as_ref().is_none_or(JoinHandle::is_finished) {
            let client = self.client.clone();
            let topic = self.topic.clone();
            self.refresh = Some(tokio::spawn(async move {
                if let Err(error) = client.metadata().refresh(&topic, seen).await {
                    tracing::debug!(%topic, %error, "metadata refresh failed");
                }
            }));
        }
        let (backoff, timeout) = (self.config.retry_backoff, self.config.retry_timeout);
        let Some(state) = self.partitions.iter_mut().find(|p| p.id == partition) else {
            return Ok(());
        };
        let since = *state.failing_since.get_or_insert(now);
        if now.duration_since(since) >= timeout {
            state.failing_since = None;
            return Err(error.clone());
        }
        tracing::debug!(topic = %self.topic, partition, %error, "fetch failed, retrying");
        state.not_before = Some(if refresh { now + backoff } else { now });
        Ok(())
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
        state.failing_since = None;
        state.not_before = None;
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
        Consumer::from_positions(
            &Client::for_tests(),
            "t",
            vec![(0, position)],
            ConsumerConfig::default(),
        )
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
