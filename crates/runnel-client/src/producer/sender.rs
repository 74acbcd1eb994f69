//! The producer's background task: encodes closed batches, sends them over
//! one `ProduceStream`, matches answers by sequence, retries, completes.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use runnel_proto::v1::partition_records::Data;
use runnel_proto::v1::{
    Acks as ProtoAcks, ErrorReason, PartitionRecords, ProduceRequest, ProduceStreamRequest,
    ProduceStreamResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

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
}

/// A request sent and not yet answered.
#[derive(Debug)]
struct InFlight {
    /// Its batches; empty with acks=0, whose batches complete when sent.
    batches: Vec<Batch>,
    sent_at: Instant,
}

/// An open `ProduceStream`.
#[derive(Debug)]
struct Connection {
    requests: mpsc::Sender<ProduceStreamRequest>,
    responses: Streaming<ProduceStreamResponse>,
}

/// What woke the sender.
enum Event {
    Response(std::result::Result<Option<ProduceStreamResponse>, tonic::Status>),
    Woken,
    Deadline,
}

/// Runs until the producer is closed and every batch is completed.
pub(crate) async fn run(client: Client, shared: Arc<Shared>) {
    let mut sender = Sender {
        client,
        shared,
        pending: VecDeque::new(),
        in_flight: BTreeMap::new(),
        next_sequence: 0,
        connection: None,
        reconnect_at: None,
        refreshed: HashMap::new(),
    };
    sender.run().await;
}

struct Sender {
    client: Client,
    shared: Arc<Shared>,
    /// Encoded batches waiting for room in the window, by batch id.
    pending: VecDeque<Batch>,
    in_flight: BTreeMap<u64, InFlight>,
    next_sequence: u64,
    connection: Option<Connection>,
    /// After a failed connect: not before this.
    reconnect_at: Option<Instant>,
    /// When each topic's metadata was last refreshed after `NOT_LEADER`.
    refreshed: HashMap<Arc<str>, Instant>,
}

impl Sender {
    async fn run(&mut self) {
        let max_in_flight = self.shared.config.max_in_flight;
        loop {
            let now = Instant::now();
            let closing = self.shared.closed.load(Ordering::Acquire);
            if self.in_flight.len() < max_in_flight && !self.has_eligible(now) {
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
                Event::Response(Ok(Some(response))) => self.on_response(response),
                Event::Response(Ok(None)) => {
                    self.on_broken(self.transport_error("the broker closed the produce stream"))
                }
                Event::Response(Err(status)) => {
                    let error = Error::from_status(status, self.client.address());
                    self.on_broken(error);
                }
                Event::Woken => {}
                Event::Deadline => self.check_timeouts(Instant::now()),
            }
        }
        // Ends the request stream: the broker ends the call.
        self.connection = None;
    }

    /// Waits for an answer, a wake-up from the producer, or `deadline`.
    async fn wait(&mut self, deadline: Option<Instant>) -> Event {
        let shared = self.shared.clone();
        let response = async {
            match self.connection.as_mut() {
                Some(c) => c.responses.message().await,
                None => std::future::pending().await,
            }
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            r = response => Event::Response(r),
            () = shared.wake.notified() => Event::Woken,
            () = sleep => Event::Deadline,
        }
    }

    /// The next moment something is due: a linger, a retry, a reconnect, or a
    /// request timeout.
    fn deadline(&self, now: Instant) -> Option<Instant> {
        let timeout = self.shared.config.request_timeout;
        let oldest = self.in_flight.values().map(|f| f.sent_at + timeout).min();
        if self.in_flight.len() >= self.shared.config.max_in_flight {
            return oldest;
        }
        let linger = self.shared.lock().next_deadline();
        let retry = self
            .pending
            .iter()
            .filter_map(|b| b.not_before)
            .filter(|t| *t > now)
            .min();
        [oldest, linger, retry, self.reconnect_at]
            .into_iter()
            .flatten()
            .min()
    }

    fn has_eligible(&self, now: Instant) -> bool {
        self.pending.iter().any(|b| b.eligible(now))
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

    /// Sends requests while the window has room and batches are eligible.
    async fn send_eligible(&mut self, now: Instant) {
        let max_in_flight = self.shared.config.max_in_flight;
        while self.in_flight.len() < max_in_flight && self.has_eligible(now) {
            if self.connection.is_none() && !self.connect(now).await {
                return;
            }
            let Some((topic, batches)) = self.next_request(now) else {
                return;
            };
            let sequence = self.next_sequence;
            self.next_sequence += 1;
            let request = self.request(sequence, &topic, &batches);
            let sent = match &self.connection {
                Some(c) => c.requests.send(request).await.is_ok(),
                None => false,
            };
            if !sent {
                // Never reached the broker: not an attempt.
                self.requeue(batches);
                self.on_broken(self.transport_error("the produce stream is closed"));
                return;
            }
            let batches = if self.shared.config.acks == super::Acks::None {
                for batch in batches {
                    self.finish(batch, Ok(None));
                }
                Vec::new()
            } else {
                batches
            };
            self.in_flight.insert(
                sequence,
                InFlight {
                    batches,
                    sent_at: Instant::now(),
                },
            );
        }
    }

    /// Opens the produce stream; on failure, counts an attempt against every
    /// pending batch and backs off. Returns whether a connection is open.
    async fn connect(&mut self, now: Instant) -> bool {
        if self.reconnect_at.is_some_and(|t| t > now) {
            return false;
        }
        match self.open().await {
            Ok(connection) => {
                self.connection = Some(connection);
                self.reconnect_at = None;
                true
            }
            Err(error) => {
                tracing::debug!(%error, "cannot open the produce stream");
                self.reconnect_at = Some(now + self.shared.config.retry_backoff);
                let pending: Vec<Batch> = self.pending.drain(..).collect();
                for batch in pending {
                    self.retry_or_fail(batch, error.clone(), now);
                }
                false
            }
        }
    }

    async fn open(&self) -> Result<Connection> {
        let config = &self.shared.config;
        let (requests, receiver) = mpsc::channel(config.max_in_flight + 1);
        let mut stub = self.client.producer_stub();
        let call = stub.produce_stream(ReceiverStream::new(receiver));
        let response = tokio::time::timeout(config.request_timeout, call)
            .await
            .map_err(|_| Error::Timeout(config.request_timeout))?
            .map_err(|status| Error::from_status(status, self.client.address()))?;
        Ok(Connection {
            requests,
            responses: response.into_inner(),
        })
    }

    /// Takes the next request's batches: eligible batches of one topic, one
    /// per partition, in batch order, up to `MAX_REQUEST_BYTES`. A batch
    /// waiting for its backoff holds back the later batches of its partition.
    fn next_request(&mut self, now: Instant) -> Option<(Arc<str>, Vec<Batch>)> {
        let mut topic: Option<Arc<str>> = None;
        let mut chosen: Vec<Batch> = Vec::new();
        let mut bytes = 0usize;
        let mut held: HashSet<(Arc<str>, u32)> = HashSet::new();
        let mut i = 0;
        while i < self.pending.len() {
            let batch = &self.pending[i];
            let key = (batch.topic.clone(), batch.partition);
            if held.contains(&key) {
                i += 1;
                continue;
            }
            let same_topic = topic.as_ref().is_none_or(|t| *t == batch.topic);
            if !batch.eligible(now)
                || (same_topic && chosen.iter().any(|c| c.partition == batch.partition))
            {
                held.insert(key);
                i += 1;
                continue;
            }
            if !same_topic {
                i += 1;
                continue;
            }
            if !chosen.is_empty() && bytes + batch.bytes.len() > MAX_REQUEST_BYTES {
                break;
            }
            let Some(batch) = self.pending.remove(i) else {
                break;
            };
            bytes += batch.bytes.len();
            topic.get_or_insert_with(|| batch.topic.clone());
            chosen.push(batch);
        }
        topic.map(|t| (t, chosen))
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
                timeout_ms: u32::try_from(config.request_timeout.as_millis()).unwrap_or(u32::MAX),
            }),
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
        if let Some(error) = response
            .error
            .as_ref()
            .filter(|e| e.reason != ErrorReason::Unspecified as i32)
        {
            let error = Error::from_proto(error);
            for batch in flight.batches {
                self.retry_or_fail(batch, error.clone(), now);
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
                    self.retry_or_fail(batch, Error::from_proto(e), now);
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

    /// The stream broke (or went silent): drop it and retry what was in flight.
    fn on_broken(&mut self, error: Error) {
        tracing::debug!(%error, "produce stream broken");
        self.connection = None;
        let now = Instant::now();
        let flights = std::mem::take(&mut self.in_flight);
        for flight in flights.into_values() {
            for batch in flight.batches {
                self.retry_or_fail(batch, error.clone(), now);
            }
        }
    }

    fn check_timeouts(&mut self, now: Instant) {
        let timeout = self.shared.config.request_timeout;
        if self.in_flight.values().any(|f| f.sent_at + timeout <= now) {
            self.on_broken(Error::Timeout(timeout));
        }
    }

    /// Schedules `batch` again after the backoff if `error` is retriable
    /// and attempts remain; fails it otherwise.
    fn retry_or_fail(&mut self, mut batch: Batch, error: Error, now: Instant) {
        if error.reason() == Some(ErrorReason::NotLeader) {
            self.refresh_metadata(&batch.topic, now);
        }
        let config = &self.shared.config;
        if error.is_retriable() && batch.attempts < config.retries {
            batch.attempts += 1;
            batch.not_before = Some(now + config.retry_backoff);
            tracing::debug!(topic = %batch.topic, partition = batch.partition, attempt = batch.attempts, %error, "retrying batch");
            self.requeue(vec![batch]);
        } else {
            self.finish(batch, Err(error));
        }
    }

    /// Re-reads `topic`'s metadata in the background, at most once per
    /// retry backoff. Today it refreshes the partition count only: requests
    /// still go to the bootstrap connection, which forwards or redirects;
    /// routing to leaders comes with replication.
    fn refresh_metadata(&mut self, topic: &Arc<str>, now: Instant) {
        let backoff = self.shared.config.retry_backoff;
        if self
            .refreshed
            .get(topic)
            .is_some_and(|last| now < *last + backoff)
        {
            return;
        }
        self.refreshed.insert(topic.clone(), now);
        let client = self.client.clone();
        let shared = self.shared.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            match client.describe_topic(&topic).await {
                Ok(description) => {
                    let partitions = u32::try_from(description.partitions.len()).unwrap_or(0);
                    if partitions > 0 {
                        shared.lock().set_partitions(&topic, partitions);
                    }
                }
                Err(error) => tracing::debug!(%topic, %error, "metadata refresh failed"),
            }
        });
    }

    /// Puts batches back, keeping the pending queue in batch order.
    fn requeue(&mut self, batches: Vec<Batch>) {
        self.pending.extend(batches);
        self.pending.make_contiguous().sort_by_key(|b| b.id);
    }

    fn finish(&mut self, batch: Batch, result: Result<Option<u64>>) {
        batch.completion.complete(result);
        self.release(batch.buffered, batch.id);
    }

    fn release(&self, buffered: usize, id: u64) {
        self.shared.buffer.add_permits(buffered);
        self.shared.lock().finished(id);
    }

    fn transport_error(&self, message: &str) -> Error {
        Error::Transport {
            address: self.client.address().to_string(),
            message: message.to_string(),
            status: None,
        }
    }
}
