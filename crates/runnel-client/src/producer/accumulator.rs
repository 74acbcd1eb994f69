//! Per-partition batches being filled: partitioner, batch size and linger.
//!
//! Pure logic: no I/O, no clock (callers pass `now`), no tasks. The producer
//! appends records under a lock; the sender drains batches that are full or
//! whose linger expired, when it has room in its in-flight window. Until
//! then an expired batch keeps growing, so a busy producer sends bigger
//! batches (as Kafka's accumulator does).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use runnel_batch::{BatchBuilder, Compression, NewRecord};
use runnel_proto::v1::ErrorReason;

use super::completion::BatchCompletion;
use crate::error::{Error, Result};

/// A batch that takes no more records, waiting to be encoded and sent.
#[derive(Debug)]
pub(crate) struct ClosedBatch {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: u32,
    pub(crate) builder: BatchBuilder,
    pub(crate) completion: Arc<BatchCompletion>,
    /// Bytes of the producer's buffer this batch holds (released on completion).
    pub(crate) buffered: usize,
    /// Id in [`Accumulator::outstanding`].
    pub(crate) id: u64,
}

#[derive(Debug)]
struct OpenBatch {
    builder: BatchBuilder,
    completion: Arc<BatchCompletion>,
    created: Instant,
    buffered: usize,
    id: u64,
}

#[derive(Debug)]
struct TopicBatches {
    name: Arc<str>,
    partitions: u32,
    open: Vec<Option<OpenBatch>>,
    /// Partition that unkeyed records without a partition go to.
    sticky: u32,
}

/// A record to append (borrowed from the caller's `ProducerRecord`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Append<'a> {
    pub(crate) partition: Option<u32>,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: &'a [u8],
    pub(crate) headers: &'a [(&'a str, &'a [u8])],
    /// Create time; the accumulator's clock when `None`.
    pub(crate) timestamp: Option<i64>,
    /// The record's share of the producer buffer, in bytes.
    pub(crate) size: usize,
}

/// Where an appended record went.
#[derive(Debug)]
pub(crate) struct Appended {
    pub(crate) completion: Arc<BatchCompletion>,
    pub(crate) index: u32,
    /// The record's timestamp as stored.
    pub(crate) timestamp: i64,
    /// A batch was created or closed: the sender should look again.
    pub(crate) wake_sender: bool,
}

/// The batches being filled, per topic and partition.
#[derive(Debug)]
pub(crate) struct Accumulator {
    linger: Duration,
    batch_bytes: usize,
    compression: Compression,
    topics: HashMap<Arc<str>, TopicBatches>,
    /// Full batches, in the order they closed.
    full: VecDeque<ClosedBatch>,
    /// Every batch not yet completed, by id (for `flush`).
    outstanding: HashMap<u64, Arc<BatchCompletion>>,
    next_id: u64,
    /// Seed for the first sticky partition of each topic.
    sticky_seed: u32,
    clock: WallClock,
}

/// Record timestamps derived from the monotonic `now` the caller passes,
/// saving a second clock read per record: the wall clock (ms) read at
/// `instant`, re-read at most every 100 ms (and whenever `now` is earlier).
#[derive(Debug)]
struct WallClock {
    ms: i64,
    instant: Instant,
}

impl WallClock {
    fn new() -> Self {
        WallClock {
            ms: wall_clock_ms(),
            instant: Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch at `now`.
    fn ms(&mut self, now: Instant) -> i64 {
        match now.checked_duration_since(self.instant) {
            Some(d) if d < Duration::from_millis(100) => {
                self.ms + i64::try_from(d.as_millis()).unwrap_or(0)
            }
            _ => {
                self.ms = wall_clock_ms();
                self.instant = now;
                self.ms
            }
        }
    }
}

impl Accumulator {
    pub(crate) fn new(
        linger: Duration,
        batch_bytes: usize,
        compression: Compression,
        sticky_seed: u32,
    ) -> Self {
        Accumulator {
            linger,
            batch_bytes: batch_bytes.max(1),
            compression,
            topics: HashMap::new(),
            full: VecDeque::new(),
            outstanding: HashMap::new(),
            next_id: 0,
            sticky_seed,
            clock: WallClock::new(),
        }
    }

    /// Records `topic`'s partition count (from metadata). A count that
    /// changed keeps the open batches of partitions that still exist.
    pub(crate) fn set_partitions(&mut self, topic: &str, partitions: u32) {
        let partitions = partitions.max(1);
        if let Some(t) = self.topics.get_mut(topic) {
            if partitions > t.partitions {
                t.open.resize_with(partitions as usize, || None);
                t.partitions = partitions;
            }
            return;
        }
        let name: Arc<str> = Arc::from(topic);
        let mut open = Vec::new();
        open.resize_with(partitions as usize, || None);
        self.topics.insert(
            name.clone(),
            TopicBatches {
                name,
                partitions,
                open,
                sticky: self.sticky_seed % partitions,
            },
        );
    }

    /// Appends one record to its partition's open batch; `None` when the
    /// topic is not known yet ([`Accumulator::set_partitions`]). An explicit
    /// partition outside the topic fails with `UNKNOWN_PARTITION`.
    pub(crate) fn append(
        &mut self,
        topic: &str,
        record: Append<'_>,
        now: Instant,
    ) -> Option<Result<Appended>> {
        let t = self.topics.get_mut(topic)?;
        let timestamp = match record.timestamp {
            Some(ts) => ts,
            None => self.clock.ms(now),
        };
        let partition = match (record.partition, record.key) {
            (Some(p), _) if p >= t.partitions => {
                return Some(Err(Error::local(
                    ErrorReason::UnknownPartition,
                    format!(
                        "topic \"{topic}\" has {} partitions (0-{}); there is no partition {p}",
                        t.partitions,
                        t.partitions - 1
                    ),
                )));
            }
            (Some(p), _) => p,
            (None, Some(key)) => runnel_batch::partitioner::partition_for_key(key, t.partitions),
            (None, None) => t.sticky,
        };
        let sticky = record.partition.is_none() && record.key.is_none();
        let mut partition = partition;
        let mut wake_sender = false;
        // Close the open batch first if this record would overflow it; an
        // unkeyed record then follows the sticky partition to its next one.
        loop {
            let slot = &mut t.open[partition as usize];
            let overflows = slot.as_ref().is_some_and(|open| {
                open.builder.record_count() > 0
                    && open.builder.estimated_len() + record.size > self.batch_bytes
            });
            if !overflows {
                break;
            }
            if let Some(open) = slot.take() {
                self.full.push_back(close(&t.name, partition, open));
            }
            wake_sender = true;
            if partition == t.sticky {
                t.sticky = (t.sticky + 1) % t.partitions;
                if sticky {
                    partition = t.sticky;
                }
            }
        }
        let slot = &mut t.open[partition as usize];
        let open = match slot {
            Some(open) => open,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                let completion = BatchCompletion::new(partition);
                self.outstanding.insert(id, completion.clone());
                wake_sender = true;
                slot.insert(OpenBatch {
                    builder: BatchBuilder::with_capacity(
                        self.compression,
                        self.batch_bytes.min(256 << 10),
                    ),
                    completion,
                    created: now,
                    buffered: 0,
                    id,
                })
            }
        };
        let index = open.builder.record_count();
        open.builder.push(NewRecord {
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp,
        });
        open.buffered += record.size;
        let appended = Appended {
            completion: open.completion.clone(),
            index,
            timestamp,
            wake_sender,
        };
        if open.builder.estimated_len() >= self.batch_bytes {
            if let Some(open) = slot.take() {
                self.full.push_back(close(&t.name, partition, open));
                if partition == t.sticky {
                    t.sticky = (t.sticky + 1) % t.partitions;
                }
            }
            return Some(Ok(Appended {
                wake_sender: true,
                ..appended
            }));
        }
        Some(Ok(appended))
    }

    /// Takes the batches ready to send: full ones first, then every open
    /// batch whose linger expired by `now` (all open batches when `force`).
    pub(crate) fn drain(&mut self, now: Instant, force: bool) -> Vec<ClosedBatch> {
        let mut out: Vec<ClosedBatch> = self.full.drain(..).collect();
        for t in self.topics.values_mut() {
            for (p, slot) in t.open.iter_mut().enumerate() {
                let expired = slot
                    .as_ref()
                    .is_some_and(|open| force || open.created + self.linger <= now);
                if !expired {
                    continue;
                }
                if let Some(open) = slot.take() {
                    let partition = p as u32;
                    out.push(close(&t.name, partition, open));
                    if partition == t.sticky {
                        t.sticky = (t.sticky + 1) % t.partitions;
                    }
                }
            }
        }
        out
    }

    /// When the oldest open batch's linger expires.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.topics
            .values()
            .flat_map(|t| t.open.iter().flatten())
            .map(|open| open.created + self.linger)
            .min()
    }

    /// Closes every open batch now (for `flush`) and returns the
    /// completions of every batch not yet completed.
    pub(crate) fn close_all(&mut self) -> Vec<Arc<BatchCompletion>> {
        for t in self.topics.values_mut() {
            for (p, slot) in t.open.iter_mut().enumerate() {
                if let Some(open) = slot.take() {
                    self.full.push_back(close(&t.name, p as u32, open));
                }
            }
        }
        self.outstanding.values().cloned().collect()
    }

    /// Forgets a batch that completed.
    pub(crate) fn finished(&mut self, id: u64) {
        self.outstanding.remove(&id);
    }

    /// True when no batch is open, full or outstanding.
    pub(crate) fn is_empty(&self) -> bool {
        self.outstanding.is_empty()
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn close(topic: &Arc<str>, partition: u32, open: OpenBatch) -> ClosedBatch {
    ClosedBatch {
        topic: topic.clone(),
        partition,
        builder: open.builder,
        completion: open.completion,
        buffered: open.buffered,
        id: open.id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        partition: Option<u32>,
        key: Option<&'static [u8]>,
        value: &'static [u8],
    ) -> Append<'static> {
        Append {
            partition,
            key,
            value,
            headers: &[],
            timestamp: Some(1),
            size: value.len() + 20,
        }
    }

    /// Appends to a known topic.
    fn add(
        acc: &mut Accumulator,
        topic: &str,
        record: Append<'_>,
        now: Instant,
    ) -> Result<Appended> {
        acc.append(topic, record, now).expect("the topic is known")
    }

    fn accumulator(batch_bytes: usize) -> Accumulator {
        let mut acc = Accumulator::new(Duration::from_millis(5), batch_bytes, Compression::None, 0);
        acc.set_partitions("t", 4);
        acc
    }

    #[test]
    fn partition_choice() {
        let now = Instant::now();
        let mut acc = accumulator(1 << 20);
        // (case, explicit partition, key, expected partition)
        type Case = (u32, Option<u32>, Option<&'static [u8]>, u32);
        let cases: &[Case] = &[
            (0, Some(2), None, 2),
            (1, Some(3), Some(b"k"), 3),
            (
                2,
                None,
                Some(b"21"),
                runnel_batch::partitioner::partition_for_key(b"21", 4),
            ),
            (
                3,
                None,
                Some(b"foobar"),
                runnel_batch::partitioner::partition_for_key(b"foobar", 4),
            ),
            (4, None, None, 0),
        ];
        for (case, partition, key, want) in cases {
            let appended = add(&mut acc, "t", record(*partition, *key, b"v"), now).unwrap();
            assert_eq!(appended.completion.partition(), *want, "case {case}");
        }
        let error = add(&mut acc, "t", record(Some(4), None, b"v"), now).unwrap_err();
        assert_eq!(error.reason(), Some(ErrorReason::UnknownPartition));
        assert!(acc.append("nope", record(None, None, b"v"), now).is_none());
    }

    #[test]
    fn unkeyed_records_stick_to_a_partition_until_its_batch_closes() {
        let now = Instant::now();
        let mut acc = accumulator(200);
        let mut partitions = Vec::new();
        for _ in 0..12 {
            let appended = add(&mut acc, "t", record(None, None, &[7; 50]), now).unwrap();
            partitions.push(appended.completion.partition());
        }
        // Each 200-byte batch holds one 73-byte header and two ~55-byte
        // records; the third record closes it and moves on.
        assert_eq!(partitions, [0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 1, 1]);
        // Closing by linger moves the sticky partition as well.
        let drained = acc.drain(now + Duration::from_millis(5), false);
        assert!(drained.iter().any(|b| b.partition == 1));
        let next = add(&mut acc, "t", record(None, None, b"v"), now).unwrap();
        assert_eq!(next.completion.partition(), 2);
    }

    #[test]
    fn batches_close_at_batch_bytes_or_linger() {
        let t0 = Instant::now();
        let mut acc = accumulator(300);
        let first = add(&mut acc, "t", record(Some(0), None, &[1; 100]), t0).unwrap();
        assert!(
            first.wake_sender,
            "a new batch arms the sender's linger timer"
        );
        let second = add(&mut acc, "t", record(Some(0), None, &[1; 100]), t0).unwrap();
        assert!(!second.wake_sender);
        assert_eq!((first.index, second.index), (0, 1));
        assert_eq!(acc.next_deadline(), Some(t0 + Duration::from_millis(5)));
        assert!(acc.drain(t0, false).is_empty());
        // The third record would pass 300 bytes: the batch closes first.
        let third = add(&mut acc, "t", record(Some(0), None, &[1; 100]), t0).unwrap();
        assert!(third.wake_sender);
        assert_eq!(third.index, 0);
        let full = acc.drain(t0, false);
        assert_eq!(full.len(), 1);
        assert_eq!(full[0].builder.record_count(), 2);
        // The new batch goes at its linger.
        let t1 = t0 + Duration::from_millis(4);
        assert!(acc.drain(t1, false).is_empty());
        let lingered = acc.drain(t0 + Duration::from_millis(5), false);
        assert_eq!(lingered.len(), 1);
        assert_eq!(lingered[0].builder.record_count(), 1);
        assert_eq!(acc.next_deadline(), None);
    }

    #[test]
    fn a_record_larger_than_a_batch_goes_alone() {
        let now = Instant::now();
        let mut acc = accumulator(100);
        add(&mut acc, "t", record(Some(1), None, &[0; 500]), now).unwrap();
        let full = acc.drain(now, false);
        assert_eq!(full.len(), 1);
        assert_eq!(full[0].builder.record_count(), 1);
    }

    #[test]
    fn close_all_lists_every_unfinished_batch() {
        let now = Instant::now();
        let mut acc = accumulator(1 << 20);
        add(&mut acc, "t", record(Some(0), None, b"a"), now).unwrap();
        add(&mut acc, "t", record(Some(1), None, b"b"), now).unwrap();
        let pending = acc.close_all();
        assert_eq!(pending.len(), 2);
        let batches = acc.drain(now, false);
        assert_eq!(batches.len(), 2);
        assert!(!acc.is_empty());
        for b in &batches {
            acc.finished(b.id);
        }
        assert!(acc.is_empty());
    }
}
