//! The batching producer.
//!
//! Records are appended to per-partition batches (encoded as they arrive with
//! [`runnel_batch::BatchBuilder`]); a background sender task takes batches
//! that are full (`batch_bytes`) or whose `linger` expired, routes each to
//! its partition's leader (see the [crate docs](crate#routing)), packs
//! batches of several partitions of one topic led by the same node into one
//! request, and sends it as pre-encoded `batch` bytes over that node's
//! `ProduceStream`: one stream per node, with up to `max_in_flight`
//! requests unanswered on each.
//!
//! Delivery is **at least once**: a batch whose request failed with a
//! retriable error (`UNAVAILABLE`, `NOT_LEADER`, `TIMEOUT`, a broken or
//! silent connection, which is then re-opened) is sent again, up to
//! `retries` times, and may then be stored twice if the first attempt was in
//! fact stored. A `NOT_LEADER` that names the new leader sends the batch
//! there at once; other retriable errors refresh the topic's metadata and
//! wait `retry_backoff` (doubling per attempt up to `retry_backoff_max`).
//! Other errors fail the batch's records at once; a batch that runs out of
//! retries fails with the last error. There is no idempotent producer yet.
//!
//! # Order within a partition
//!
//! - With `max_in_flight = 1` per node, a partition's batches are stored in
//!   the order they were sent, across retries and leader moves.
//! - With more in flight, the batches of a partition are pipelined in order
//!   on one stream, and these rules keep retries in order: a batch waiting
//!   for a retry holds back every later batch of its partition; while a
//!   retried batch is in flight its partition has nothing else in flight;
//!   and a partition's batches go to a new leader only once none is in
//!   flight to the old one. When a leader moves, every batch in flight to it
//!   fails with `NOT_LEADER` and all are retried, in order, on the new
//!   leader: nothing is reordered.
//! - What is not guaranteed (as with Kafka without idempotence): when a
//!   batch fails with a transient error (`UNAVAILABLE`, `TIMEOUT`, a broken
//!   stream) while later batches of its partition were already in flight and
//!   succeed, the retried batch lands after them.

mod accumulator;
mod completion;
mod sender;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use runnel_proto::v1::ErrorReason;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use self::accumulator::{Accumulator, Append};
pub use self::completion::{DeliveryFuture, RecordMetadata};
use crate::client::Client;
use crate::error::{Error, Result};
pub use runnel_batch::Compression;

/// How many replicas must have a batch before the producer counts it as
/// delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Acks {
    /// Fire and forget (`0`): a record's future resolves once its request was
    /// handed to the connection; its offset is unknown (`None`) and a
    /// failure on the broker goes unseen.
    None,
    /// The partition leader appended the batch (`1`).
    Leader,
    /// A quorum of replicas appended it (`all`); equal to `Leader` on a
    /// single node.
    #[default]
    All,
}

impl Acks {
    pub(crate) fn to_proto(self) -> runnel_proto::v1::Acks {
        match self {
            Acks::None => runnel_proto::v1::Acks::None,
            Acks::Leader => runnel_proto::v1::Acks::Leader,
            Acks::All => runnel_proto::v1::Acks::All,
        }
    }
}

impl fmt::Display for Acks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        })
    }
}

impl FromStr for Acks {
    type Err = String;

    /// Parses `0`, `1` or `all` (also `none`, `leader`, `-1`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "0" | "none" => Ok(Acks::None),
            "1" | "leader" => Ok(Acks::Leader),
            "all" | "-1" => Ok(Acks::All),
            other => Err(format!("acks must be 0, 1 or all, not {other:?}")),
        }
    }
}

/// How a [`Producer`] batches and sends.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// Acknowledgement level. Default [`Acks::All`].
    pub acks: Acks,
    /// How long a batch waits for more records before it is sent. Default 5 ms.
    pub linger: Duration,
    /// A batch closes when it reaches this many encoded bytes (before
    /// compression). Default 1 MiB. Must not exceed the topic's
    /// `max_record_bytes` (default 8 MiB) or the broker refuses it.
    pub batch_bytes: usize,
    /// Compression of each batch's records. Default none.
    pub compression: Compression,
    /// Requests sent to one node and not yet answered, at most. Default 8.
    pub max_in_flight: usize,
    /// Times a batch is sent again after a retriable error. Default 10,
    /// which with the default backoffs rides out about 7 s of leader
    /// elections and unreachable nodes.
    pub retries: u32,
    /// Wait before sending a failed batch again, doubled per attempt.
    /// Default 100 ms. (No wait after a `NOT_LEADER` that names the new
    /// leader.)
    pub retry_backoff: Duration,
    /// Longest wait between two attempts. Default 1 s.
    pub retry_backoff_max: Duration,
    /// Longest wait for a request's answer before the connection is taken
    /// for dead and its requests retried. Default 30 s.
    pub request_timeout: Duration,
    /// Record bytes held (batching, in flight) before `send` waits for room:
    /// the producer's memory bound. Default 64 MiB.
    pub buffer_bytes: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes: 1 << 20,
            compression: Compression::None,
            max_in_flight: 8,
            retries: 10,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            buffer_bytes: 64 << 20,
        }
    }
}

/// A record to send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    /// Topic to write to.
    pub topic: String,
    /// Partition; `None` lets the partitioner choose: murmur2 of the key for
    /// keyed records, a sticky partition for unkeyed ones (all unkeyed
    /// records go to one partition until its batch closes, then the next).
    pub partition: Option<u32>,
    /// Optional key.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Headers, in order; names may repeat.
    pub headers: Vec<(String, Bytes)>,
    /// Create time in ms since the Unix epoch; the producer's clock when `None`.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    /// An unkeyed record for `topic`.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            value: value.into(),
            ..ProducerRecord::default()
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the partition.
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// State shared by the producer handles and the sender task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) accumulator: Mutex<Accumulator>,
    /// Wakes the sender: a batch was created or filled, a flush or close began.
    pub(crate) wake: Notify,
    /// Free bytes of the producer buffer.
    pub(crate) buffer: Semaphore,
    /// No more records are accepted; the sender drains and stops.
    pub(crate) closed: AtomicBool,
    pub(crate) config: ProducerConfig,
}

impl Shared {
    pub(crate) fn new(config: ProducerConfig, sticky_seed: u32) -> Shared {
        Shared {
            accumulator: Mutex::new(Accumulator::new(
                config.linger,
                config.batch_bytes,
                config.compression,
                sticky_seed,
            )),
            wake: Notify::new(),
            buffer: Semaphore::new(config.buffer_bytes),
            closed: AtomicBool::new(false),
            config,
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Accumulator> {
        self.accumulator
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sends records in batches; see the [module docs](self) for delivery
/// guarantees.
///
/// Cheap to clone; clones share the batches and the streams, so many
/// tasks can send through one producer. Dropping the last clone lets the
/// background sender deliver what was sent and stop; call
/// [`Producer::close`] to wait for that.
#[derive(Clone, Debug)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    shared: Arc<Shared>,
    sender: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

/// Largest buffer the semaphore can count (its permits are `u32` per call).
const MAX_BUFFER_BYTES: usize = u32::MAX as usize;

impl Producer {
    /// A producer sending through `client`'s connection.
    ///
    /// Starts the background sender task on the current tokio runtime.
    pub async fn new(client: &Client, config: ProducerConfig) -> Result<Producer> {
        if config.batch_bytes == 0 || config.max_in_flight == 0 || config.buffer_bytes == 0 {
            return Err(Error::InvalidArgument(
                "batch_bytes, max_in_flight and buffer_bytes must be at least 1".into(),
            ));
        }
        let mut config = config;
        config.buffer_bytes = config.buffer_bytes.min(MAX_BUFFER_BYTES);
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let shared = Arc::new(Shared::new(config, seed));
        let task = tokio::spawn(sender::run(client.clone(), shared.clone()));
        Ok(Producer {
            inner: Arc::new(Inner {
                client: client.clone(),
                shared,
                sender: Mutex::new(Some(task)),
            }),
        })
    }

    /// Adds `record` to its partition's batch and returns a future for its
    /// delivery.
    ///
    /// Waits only when the producer buffer is full (backpressure) or, the
    /// first time a topic is used, for its metadata. Fails at once for an
    /// unknown topic (`UNKNOWN_TOPIC`) or partition (`UNKNOWN_PARTITION`).
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let shared = &self.inner.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let size = record_size(&record).min(shared.config.buffer_bytes);
        acquire(&shared.buffer, size).await?;
        let header_refs: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_ref()))
            .collect();
        let append = Append {
            partition: record.partition,
            key: record.key.as_deref(),
            value: &record.value,
            headers: &header_refs,
            timestamp: record.timestamp,
            size,
        };
        // One lock and one clock read per record when the topic is known
        // (the common case).
        let now = Instant::now();
        let appended = shared.lock().append(&record.topic, append, now);
        let result = match appended {
            Some(result) => result,
            None => match self.load_metadata(&record.topic).await {
                Ok(()) => shared
                    .lock()
                    .append(&record.topic, append, Instant::now())
                    .unwrap_or_else(|| {
                        Err(Error::Protocol(format!(
                            "no metadata for topic \"{}\" after loading it",
                            record.topic
                        )))
                    }),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(appended) => {
                if appended.wake_sender {
                    shared.wake.notify_one();
                }
                // A task sending in a tight loop never waits, so the sender
                // task it just woke (queued on this worker's LIFO slot, which
                // other workers cannot steal) would not run until the buffer
                // filled; giving way when the budget is spent keeps the
                // pipeline moving.
                tokio::task::coop::consume_budget().await;
                Ok(DeliveryFuture::new(
                    appended.completion,
                    appended.index,
                    appended.timestamp,
                ))
            }
            Err(e) => {
                shared.buffer.add_permits(size);
                Err(e)
            }
        }
    }

    /// Fetches `topic`'s metadata (partition count and leaders).
    async fn load_metadata(&self, topic: &str) -> Result<()> {
        let description =
            self.inner
                .client
                .describe_topic(topic)
                .await
                .map_err(|e| match e.reason() {
                    Some(ErrorReason::UnknownTopic) => Error::local(
                        ErrorReason::UnknownTopic,
                        format!("topic \"{topic}\" does not exist"),
                    ),
                    _ => e,
                })?;
        let partitions = u32::try_from(description.partitions.len()).unwrap_or(u32::MAX);
        if partitions == 0 {
            return Err(Error::Protocol(format!(
                "the broker describes topic \"{topic}\" with no partitions"
            )));
        }
        self.inner.shared.lock().set_partitions(topic, partitions);
        Ok(())
    }

    /// Sends every open batch now and waits until every record sent before
    /// this call is acknowledged or failed. Individual failures are reported
    /// by the records' futures, not here.
    pub async fn flush(&self) -> Result<()> {
        let pending = self.inner.shared.lock().close_all();
        self.inner.shared.wake.notify_one();
        for batch in pending {
            batch.wait().await;
        }
        Ok(())
    }

    /// Flushes, then stops the sender task. Other clones of this producer
    /// fail their later sends with [`Error::Closed`].
    pub async fn close(self) -> Result<()> {
        self.flush().await?;
        let shared = &self.inner.shared;
        shared.closed.store(true, Ordering::Release);
        shared.wake.notify_one();
        let task = self
            .inner
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.await
                .map_err(|e| Error::Protocol(format!("the producer's sender task failed: {e}")))?;
        }
        Ok(())
    }
}

/// Takes `size` bytes from the buffer, waiting for room if needed. The
/// permits are returned by the sender when the record's batch completes.
async fn acquire(buffer: &Semaphore, size: usize) -> Result<()> {
    let n = u32::try_from(size).unwrap_or(u32::MAX);
    match buffer.try_acquire_many(n) {
        Ok(permit) => permit.forget(),
        Err(_) => buffer
            .acquire_many(n)
            .await
            .map_err(|_| Error::Closed)?
            .forget(),
    }
    Ok(())
}

/// A record's share of the producer buffer: its encoded size, roughly.
fn record_size(record: &ProducerRecord) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum();
    record.key.as_ref().map_or(0, Bytes::len) + record.value.len() + headers + 16
}

#[cfg(test)]
mod acks_tests {
    use super::*;

    #[test]
    fn acks_parse_and_print() {
        let cases = [
            ("0", Acks::None),
            ("1", Acks::Leader),
            ("all", Acks::All),
            ("ALL", Acks::All),
        ];
        for (i, (text, acks)) in cases.iter().enumerate() {
            assert_eq!(text.parse::<Acks>().unwrap(), *acks, "case {i}");
        }
        assert!("2".parse::<Acks>().is_err());
        assert_eq!(Acks::None.to_string(), "0");
        assert_eq!(Acks::All.to_string(), "all");
    }
}

#[cfg(test)]
mod tests;
