//! The producer's background task: encodes closed batches, routes each to
//! its partition's leader, sends them over one `ProduceStream` per node,
//! matches answers by sequence, retries, completes.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_proto::v1::partition_records::Data;
use runnel_proto::v1::{
    Acks as ProtoAcks, ErrorReason, PartitionRecords, ProduceRequest, ProduceStreamRequest,
    ProduceStreamResponse,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::Shared;
use super::accumulator::ClosedBatch;
use super::completion::BatchCompletion;
use crate::client::Client;
use crate::error::{Error, Result};

/// Most batch bytes packed into one request (a single larger batch still
/// goes, alone).
const MAX_REQUEST_BYTES: usize = 16 << 20;

/// An encoded batch, sent or waiting to be (again).
#[derive(Debug)]
struct Batch {
    topic: Arc<str>,
    partition: u32,
    bytes: Bytes,
    completion: Arc<BatchCompletion>,
    buffered: usize,
    id: u64,
    /// Failed attempts so far.
    attempts: u32,
    /// Not to be sent before this (retry backoff).
    not_before: Option<Instant>,
}

impl Batch {
    fn eligible(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| t <= now)
    }

    fn key(&self) -> (Arc<str>, u32) {
        (self.topic.clone(), self.partition)
    }
}

/// A request sent and not yet answered.
#[derive(Debug)]
struct InFlight {
    /// The node it went to.
    address: Arc<str>,
    /// Its batches; empty with acks=0, whose batches complete when sent.
    batches: Vec<Batch>,
    sent_at: Instant,
}

/// An open `ProduceStream` to one node.
#[derive(Debug)]
struct Connection {
    /// Tells this stream's answers from those of an earlier one to the node.
    id: u64,
    requests: mpsc::Sender<ProduceStreamRequest>,
    /// Forwards the stream's answers to the sender's event queue.
    reader: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Dropping `requests` ends the request stream (the broker ends the
        // call); the reader's answers would be for nobody.
        self.reader.abort();
    }
}

/// A partition's batches in flight: the per-partition order rules.
#[derive(Debug, Default)]
struct PartitionFlight {
    /// Batches of it in flight (acks 1 or all).
    in_flight: usize,
    /// The node they went to.
    address: Option<Arc<str>>,
    /// The first batch of it waiting to be retried: until it is answered,
    /// the partition has at most one batch in flight.
    retrying: Option<u64>,
}

/// What the sender's background helpers report.
#[derive(Debug)]
enum Event {
    /// An answer, the end, or the failure of a produce stream.
    Stream {
        connection: u64,
        item: std::result::Result<Option<ProduceStreamResponse>, tonic::Status>,
    },
    /// A metadata refresh of this topic ended (well or not).
    Refreshed(Arc<str>),
}

/// What woke the sender.
enum Wake {
    Event(Event),
    Woken,
    Deadline,
}

/// The next request: batches of one topic for one node.
struct Selection {
    topic: Arc<str>,
    /// The node's address.
    address: Arc<str>,
    /// Indexes into `pending`, ascending.
    indexes: Vec<usize>,
}

/// Runs until the producer is closed and every batch is completed.
pub(crate) async fn run(client: Client, shared: Arc<Shared>) {
    Sender::new(client, shared).run().await;
}

struct Sender {
    client: Client,
    shared: Arc<Shared>,
    /// Encoded batches waiting for room in the window, by batch id.
    pending: VecDeque<Batch>,
    in_flight: BTreeMap<u64, InFlight>,
    next_sequence: u64,
    /// One produce stream per node address.
    connections: HashMap<Arc<str>, Connection>,
    next_connection: u64,
    /// After a failed connect to a node: not before this.
    reconnect_at: HashMap<Arc<str>, Instant>,
    /// Partitions with batches in flight or being retried.
    partitions: HashMap<(Arc<str>, u32), PartitionFlight>,
    /// Topics whose metadata is being refreshed: their batches wait for it.
    refreshing: HashSet<Arc<str>>,
    events: mpsc::UnboundedReceiver<Event>,
    events_tx: mpsc::UnboundedSender<Event>,
}

impl Sender {
    fn new(client: Client, shared: Arc<Shared>) -> Sender {
        let (events_tx, events) = mpsc::unbounded_channel();
        Sender {
            client,
            shared,
            pending: VecDeque::new(),
            in_flight: BTreeMap::new(),
            next_sequence: 0,
            connections: HashMap::new(),
            next_connection: 0,
            reconnect_at: HashMap::new(),
            partitions: HashMap::new(),
            refreshing: HashSet::new(),
            events,
            events_tx,
        }
    }

    async fn run(&mut self) {
        loop {
            let now = Instant::now();
            let closing = self.shared.closed.load(Ordering::Acquire);
            if !self.window_full() && self.select(now).is_none() {
                let closed = self.shared.lock().drain(now, closing);
                for batch in closed {
                    self.encode(batch);
                }
            }
            self.send_eligible(now).await;
            if closing
                && self.pending.is_empty()
                && self.in_flight.is_empty()
                && self.shared.lock().is_empty()
            {
                break;
            }
            let deadline = self.deadline(now);
            match self.wait(deadline).await {
                Wake::Event(Event::Stream { connection, item }) => {
                    self.on_stream(connection, item);
                }
                Wake::Event(Event::Refreshed(topic)) => {
                    self.refreshing.remove(&topic);
                }
                Wake::Woken => {}
                Wake::Deadline => self.check_timeouts(Instant::now()),
            }
        }
        // Ends the request streams: the brokers end the calls.
        self.connections.clear();
    }

    /// Waits for an event, a wake-up from the producer, or `deadline`.
    async fn wait(&mut self, deadline: Option<Instant>) -> Wake {
        let shared = self.shared.clone();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            // Never `None`: the sender holds `events_tx`.
            Some(event) = self.events.recv() => Wake::Event(event),
            () = shared.wake.notified() => Wake::Woken,
            () = sleep => Wake::Deadline,
        }
    }

    /// Every node's window is full (`max_in_flight` requests per node with
    /// a stream; one node when there is none yet).
    fn window_full(&self) -> bool {
        let nodes = self.connections.len().max(1);
        self.in_flight.len() >= self.shared.config.max_in_flight * nodes
    }

    /// The next moment something is due: a linger, a retry, a reconnect, or a
    /// request timeout.
    fn deadline(&self, now: Instant) -> Option<Instant> {
        let timeout = self.shared.config.request_timeout;
        let oldest = self.in_flight.values().map(|f| f.sent_at + timeout).min();
        if self.window_full() {
            return oldest;
        }
        let linger = self.shared.lock().next_deadline();
        let retry = self
            .pending
            .iter()
            .filter_map(|b| b.not_before)
            .filter(|t| *t > now)
            .min();
        let reconnect = self
            .reconnect_at
            .values()
            .filter(|t| **t > now)
            .min()
            .copied();
        [oldest, linger, retry, reconnect]
            .into_iter()
            .flatten()
            .min()
    }

    fn encode(&mut self, closed: ClosedBatch) {
        let ClosedBatch {
            topic,
            partition,
            builder,
            completion,
            buffered,
            id,
        } = closed;
        if self.client.metadata().is_stale(&topic) {
            // Old routes: reload them (the batch waits for it), so that
            // partitions added to the topic come into use.
            self.request_refresh(&topic);
        }
        match builder.finish() {
            Ok(bytes) => self.pending.push_back(Batch {
                topic,
                partition,
                bytes,
                completion,
                buffered,
                id,
                attempts: 0,
                not_before: None,
            }),
            Err(e) => {
                completion.complete(Err(Error::Encode(e)));
                self.release(buffered, id);
            }
        }
    }

    /// The node `batch` goes to now: its partition's leader, or the default
    /// node.
    fn target(&self, batch: &Batch) -> Arc<str> {
        self.client
            .metadata()
            .target(&batch.topic, batch.partition)
            .1
    }

    /// Picks the next request without taking it: eligible batches of one
    /// topic for one node, one per partition, in batch order, up to
    /// `MAX_REQUEST_BYTES`, on a node with room in its window. A batch that
    /// cannot go holds back the later batches of its partition: one waiting
    /// for its backoff or for its topic's metadata; one whose partition
    /// still has batches in flight to another node (its leader moved), or
    /// has a retried batch in flight.
    fn select(&self, now: Instant) -> Option<Selection> {
        let max_in_flight = self.shared.config.max_in_flight;
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for flight in self.in_flight.values() {
            *per_node.entry(&flight.address).or_default() += 1;
        }
        let node_ready = |address: &str| {
            per_node.get(address).copied().unwrap_or(0) < max_in_flight
                && self.reconnect_at.get(address).is_none_or(|t| *t <= now)
        };
        let mut chosen: Option<(Arc<str>, Arc<str>)> = None;
        let mut indexes: Vec<usize> = Vec::new();
        let mut bytes = 0usize;
        let mut held: HashSet<(Arc<str>, u32)> = HashSet::new();
        for (i, batch) in self.pending.iter().enumerate() {
            let key = batch.key();
            if held.contains(&key) {
                continue;
            }
            if !batch.eligible(now) || self.refreshing.contains(&batch.topic) {
                held.insert(key);
                continue;
            }
            let address = self.target(batch);
            let blocked = self.partitions.get(&key).is_some_and(|p| {
                p.in_flight > 0 && (p.retrying.is_some() || p.address.as_ref() != Some(&address))
            });
            if blocked || !node_ready(&address) {
                held.insert(key);
                continue;
            }
            match &chosen {
                None => chosen = Some((batch.topic.clone(), address)),
                Some((topic, to)) => {
                    if *topic != batch.topic || *to != address {
                        continue;
                    }
                    if indexes
                        .iter()
                        .any(|j| self.pending[*j].partition == batch.partition)
                    {
                        held.insert(key);
                        continue;
                    }
                    if bytes + batch.bytes.len() > MAX_REQUEST_BYTES {
                        break;
                    }
                }
            }
            bytes += batch.bytes.len();
            indexes.push(i);
        }
        chosen.map(|(topic, address)| Selection {
            topic,
            address,
            indexes,
        })
    }

    /// Sends requests while nodes have room and batches can go.
    async fn send_eligible(&mut self, now: Instant) {
        while let Some(selection) = self.select(now) {
            let address = selection.address.clone();
            if !self.connections.contains_key(&address) && !self.connect(&address, now).await {
                continue; // its batches were rescheduled; others may go
            }
            let batches = self.take(&selection);
            let sequence = self.next_sequence;
            self.next_sequence += 1;
            let request = self.request(sequence, &selection.topic, &batches);
            let sent = match self.connections.get(&address) {
                Some(c) => c.requests.send(request).await.is_ok(),
                None => false,
            };
            if !sent {
                // Never reached the broker: not an attempt.
                self.requeue(batches);
                self.reconnect_at
                    .insert(address.clone(), now + self.shared.config.retry_backoff);
                let error = transport_error(&address, "the produce stream is closed");
                self.on_broken(&address, error);
                return;
            }
            self.sent(sequence, address, batches);
        }
    }

    /// Takes the batches of `selection` out of `pending`, in batch order.
    fn take(&mut self, selection: &Selection) -> Vec<Batch> {
        let mut batches = Vec::with_capacity(selection.indexes.len());
        for i in selection.indexes.iter().rev() {
            if let Some(batch) = self.pending.remove(*i) {
                batches.push(batch);
            }
        }
        batches.reverse();
        batches
    }

    /// `batches` went to `address` as request `sequence`: they are in
    /// flight (with acks=0, delivered).
    fn sent(&mut self, sequence: u64, address: Arc<str>, batches: Vec<Batch>) {
        let batches = if self.shared.config.acks == super::Acks::None {
            for batch in batches {
                self.finish(batch, Ok(None));
            }
            Vec::new()
        } else {
            for batch in &batches {
                let flight = self.partitions.entry(batch.key()).or_default();
                flight.in_flight += 1;
                flight.address = Some(address.clone());
            }
            batches
        };
        self.in_flight.insert(
            sequence,
            InFlight {
                address,
                batches,
                sent_at: Instant::now(),
            },
        );
    }

    /// Opens the produce stream to the node at `address`; on failure,
    /// counts an attempt against every pending batch for that node and backs
    /// off. Returns whether a stream is open.
    async fn connect(&mut self, address: &Arc<str>, now: Instant) -> bool {
        match self.open(address).await {
            Ok(connection) => {
                tracing::debug!(%address, "produce stream open");
                self.connections.insert(address.clone(), connection);
                self.reconnect_at.remove(address);
                true
            }
            Err(error) => {
                tracing::debug!(%address, %error, "cannot open the produce stream");
                self.reconnect_at
                    .insert(address.clone(), now + self.shared.config.retry_backoff);
                let pending: Vec<Batch> = self.pending.drain(..).collect();
                for batch in pending {
                    if self.target(&batch) == *address {
                        self.retry_or_fail(batch, address, error.clone(), now);
                    } else {
                        self.pending.push_back(batch);
                    }
                }
                false
            }
        }
    }

    async fn open(&mut self, address: &str) -> Result<Connection> {
        let config = &self.shared.config;
        let channel = self.client.metadata().channel(address)?;
        let (requests, receiver) = mpsc::channel(config.max_in_flight + 1);
        let mut stub = self.client.producer_stub(channel);
        let call = stub.produce_stream(ReceiverStream::new(receiver));
        let response = tokio::time::timeout(config.request_timeout, call)
            .await
            .map_err(|_| Error::Timeout(config.request_timeout))?
            .map_err(|status| Error::from_status(status, address))?;
        let mut responses = response.into_inner();
        let id = self.next_connection;
        self.next_connection += 1;
        let events = self.events_tx.clone();
        let reader = tokio::spawn(async move {
            loop {
                let item = responses.message().await;
                let end = !matches!(item, Ok(Some(_)));
                if events
                    .send(Event::Stream {
                        connection: id,
                        item,
                    })
                    .is_err()
                    || end
                {
                    break;
                }
            }
        });
        Ok(Connection {
            id,
            requests,
            reader,
        })
    }

    fn request(&self, sequence: u64, topic: &str, batches: &[Batch]) -> ProduceStreamRequest {
        let config = &self.shared.config;
        let acks: ProtoAcks = config.acks.to_proto();
        ProduceStreamRequest {
            sequence,
            request: Some(ProduceRequest {
                topic: topic.to_string(),
                partitions: batches
                    .iter()
                    .map(|b| PartitionRecords {
                        partition: Some(b.partition),
                        data: Some(Data::Batch(b.bytes.clone())),
                    })
                    .collect(),
                acks: acks as i32,
                // The broker answers TIMEOUT (retriable, per partition) a
                // little before this client would give up on the request.
                timeout_ms: u32::try_from((config.request_timeout * 9 / 10).as_millis())
                    .unwrap_or(u32::MAX)
                    .max(1),
            }),
        }
    }

    /// Takes what a produce stream reported, unless it is an old stream's.
    fn on_stream(
        &mut self,
        connection: u64,
        item: std::result::Result<Option<ProduceStreamResponse>, tonic::Status>,
    ) {
        let Some(address) = self
            .connections
            .iter()
            .find(|(_, c)| c.id == connection)
            .map(|(address, _)| address.clone())
        else {
            return;
        };
        match item {
            Ok(Some(response)) => self.on_response(response),
            Ok(None) => {
                let error = transport_error(&address, "the broker closed the produce stream");
                self.on_broken(&address, error);
            }
            Err(status) => {
                let error = Error::from_status(status, &address);
                self.on_broken(&address, error);
            }
        }
    }

    fn on_response(&mut self, response: ProduceStreamResponse) {
        let now = Instant::now();
        let Some(flight) = self.in_flight.remove(&response.sequence) else {
            tracing::warn!(
                sequence = response.sequence,
                "answer to no request in flight"
            );
            return;
        };
        let address = flight.address;
        for batch in &flight.batches {
            self.landed(batch);
        }
        if let Some(error) = response
            .error
            .as_ref()
            .filter(|e| e.reason != ErrorReason::Unspecified as i32)
        {
            let error = Error::from_proto(error);
            for batch in flight.batches {
                self.retry_or_fail(batch, &address, error.clone(), now);
            }
            return;
        }
        let results = response.response.map(|r| r.results).unwrap_or_default();
        for batch in flight.batches {
            let Some(result) = results.iter().find(|r| r.partition == batch.partition) else {
                let partition = batch.partition;
                self.finish(
                    batch,
                    Err(Error::Protocol(format!(
                        "the broker answered no result for partition {partition}"
                    ))),
                );
                continue;
            };
            match (&result.error, result.base_offset) {
                (Some(e), _) if e.reason != ErrorReason::Unspecified as i32 => {
                    self.retry_or_fail(batch, &address, Error::from_proto(e), now);
                }
                (_, Some(base)) => self.finish(batch, Ok(Some(base))),
                (_, None) => {
                    let partition = batch.partition;
                    self.finish(
                        batch,
                        Err(Error::Protocol(format!(
                            "the broker acknowledged partition {partition} without an offset"
                        ))),
                    );
                }
            }
        }
    }

    /// A batch left flight (answered, or its stream broke).
    fn landed(&mut self, batch: &Batch) {
        if let Some(flight) = self.partitions.get_mut(&batch.key()) {
            flight.in_flight = flight.in_flight.saturating_sub(1);
            if flight.in_flight == 0 {
                flight.address = None;
            }
        }
    }

    /// The stream to `address` broke (or went silent): drop it and retry
    /// what was in flight on it.
    fn on_broken(&mut self, address: &Arc<str>, error: Error) {
        tracing::debug!(%address, %error, "produce stream broken");
        self.connections.remove(address);
        let now = Instant::now();
        let sequences: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.address == *address)
            .map(|(s, _)| *s)
            .collect();
        for sequence in sequences {
            let Some(flight) = self.in_flight.remove(&sequence) else {
                continue;
            };
            for batch in &flight.batches {
                self.landed(batch);
            }
            for batch in flight.batches {
                self.retry_or_fail(batch, address, error.clone(), now);
            }
        }
    }

    fn check_timeouts(&mut self, now: Instant) {
        let timeout = self.shared.config.request_timeout;
        let late: HashSet<Arc<str>> = self
            .in_flight
            .values()
            .filter(|f| f.sent_at + timeout <= now)
            .map(|f| f.address.clone())
            .collect();
        for address in late {
            self.on_broken(&address, Error::Timeout(timeout));
        }
    }

    /// Schedules `batch` (which failed at `address` with `error`) again if
    /// `error` is retriable and attempts remain; fails it otherwise. What the
    /// error says about leaders goes to the metadata first: a named new
    /// leader is used at once (no backoff), otherwise the topic's metadata
    /// is refreshed and the batch waits for it and for the backoff.
    fn retry_or_fail(&mut self, mut batch: Batch, address: &str, error: Error, now: Instant) {
        let config = self.shared.clone();
        let config = &config.config;
        if !error.is_retriable() || batch.attempts >= config.retries {
            self.finish(batch, Err(error));
            return;
        }
        let metadata = self.client.metadata();
        let refresh = metadata.note_error(&batch.topic, batch.partition, address, &error);
        if refresh {
            self.request_refresh(&batch.topic);
        }
        batch.attempts += 1;
        batch.not_before = if error.leader().is_some() && !refresh {
            None
        } else {
            Some(now + backoff(config, batch.attempts))
        };
        tracing::debug!(topic = %batch.topic, partition = batch.partition, attempt = batch.attempts, %error, "retrying batch");
        let flight = self.partitions.entry(batch.key()).or_default();
        flight.retrying = Some(flight.retrying.map_or(batch.id, |r| r.min(batch.id)));
        self.requeue(vec![batch]);
    }

    /// Re-reads `topic`'s metadata in the background (one refresh per topic
    /// at a time; the metadata cache coalesces with other users and spaces
    /// refreshes), then updates its partition count.
    fn request_refresh(&mut self, topic: &Arc<str>) {
        if !self.refreshing.insert(topic.clone()) {
            return;
        }
        let seen = self.client.metadata().version(topic);
        let client = self.client.clone();
        let shared = self.shared.clone();
        let events = self.events_tx.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let metadata = client.metadata();
            match metadata.refresh(&topic, seen).await {
                Ok(()) => {
                    if let Some(partitions) = metadata.partition_count(&topic)
                        && partitions > 0
                    {
                        shared.lock().set_partitions(&topic, partitions);
                    }
                }
                Err(error) => tracing::debug!(%topic, %error, "metadata refresh failed"),
            }
            let _gone = events.send(Event::Refreshed(topic));
        });
    }

    /// Puts batches back, keeping the pending queue in batch order.
    fn requeue(&mut self, batches: Vec<Batch>) {
        self.pending.extend(batches);
        self.pending.make_contiguous().sort_by_key(|b| b.id);
    }

    fn finish(&mut self, batch: Batch, result: Result<Option<u64>>) {
        let key = batch.key();
        if let Some(flight) = self.partitions.get_mut(&key) {
            if flight.retrying == Some(batch.id) {
                flight.retrying = None;
            }
            if flight.in_flight == 0 && flight.retrying.is_none() {
                self.partitions.remove(&key);
            }
        }
        batch.completion.complete(result);
        self.release(batch.buffered, batch.id);
    }

    fn release(&self, buffered: usize, id: u64) {
        self.shared.buffer.add_permits(buffered);
        self.shared.lock().finished(id);
    }
}

/// The wait before attempt `attempts` + 1: `retry_backoff` doubled per
/// attempt, at most `retry_backoff_max`.
fn backoff(config: &super::ProducerConfig, attempts: u32) -> Duration {
    let doubled = config
        .retry_backoff
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
    doubled.min(config.retry_backoff_max.max(config.retry_backoff))
}

fn transport_error(address: &str, message: &str) -> Error {
    Error::Transport {
        address: address.to_string(),
        message: message.to_string(),
        status: None,
    }
}

#[cfg(test)]
mod tests;
