//! The workload of the fault tests and its checker.
//!
//! [`Producer`] writes one partition with acks=all over ProduceStream (a
//! window of requests in flight), following the leader: it asks every node
//! who leads, writes to the node a majority names, and when the stream
//! breaks, a request fails or an answer takes too long, it finds the
//! leader again and goes on. Every request carries fresh values (its
//! sequence number), so a retried write is a different write and an
//! ambiguous one (sent, never answered) may be stored or not, but never
//! twice. It records every acknowledgement with the node and the instant.
//!
//! [`check`] compares a partition's log as read back with that history.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_proto::v1::produce_service_client::ProduceServiceClient;
use runnel_proto::v1::{Acks, ProduceRequest, ProduceStreamRequest};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::cluster::{Addrs, Cluster, agreed_leader};
use crate::support::eventually;
use crate::support::grpc::{Clients, plain_records, records_for};

/// Requests a stream keeps in flight.
const WINDOW: usize = 4;
/// Records per request.
const PER_REQUEST: usize = 3;
/// An acks=all answer slower than this counts as lost: the producer gives
/// up on the stream and finds the leader again.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(4);
/// How often the producer asks the nodes who leads.
const LEADER_POLL: Duration = Duration::from_millis(150);
/// The broker-side acks=all timeout asked for in every request.
const BROKER_TIMEOUT_MS: u32 = 3_000;

/// One acknowledged request.
#[derive(Clone, Debug)]
pub(crate) struct Ack {
    /// Node that acknowledged it.
    pub(crate) node: u32,
    /// Offset of its first record.
    pub(crate) base_offset: u64,
    /// The values written at `base_offset..`.
    pub(crate) values: Vec<Bytes>,
    /// When the acknowledgement arrived.
    pub(crate) at: Instant,
}

/// What a [`Producer`] did.
#[derive(Debug, Default)]
pub(crate) struct History {
    /// Every acknowledged request, in the order the answers arrived.
    pub(crate) acks: Vec<Ack>,
    /// Every value ever sent (acknowledged or not).
    pub(crate) sent: HashSet<Bytes>,
    /// Requests that failed or were never answered, with why.
    pub(crate) failures: Vec<String>,
}

impl History {
    /// Acknowledged records.
    pub(crate) fn acked_records(&self) -> usize {
        self.acks.iter().map(|a| a.values.len()).sum()
    }
}

/// A producer task following the leader of one partition.
pub(crate) struct Producer {
    stop: watch::Sender<bool>,
    acked: Arc<AtomicU64>,
    shared: Arc<std::sync::Mutex<History>>,
    task: JoinHandle<()>,
}

impl Producer {
    /// Starts writing `topic`/`partition` through the nodes at `addrs`.
    /// `tag` goes into every value (tells producers apart in one log).
    pub(crate) fn start(cluster: &Cluster, topic: &str, partition: u32, tag: &str) -> Producer {
        let (stop, stop_rx) = watch::channel(false);
        let acked = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(std::sync::Mutex::new(History::default()));
        let task = tokio::spawn(run(
            cluster.addrs(),
            cluster.majority(),
            topic.to_string(),
            partition,
            tag.to_string(),
            stop_rx,
            acked.clone(),
            shared.clone(),
        ));
        Producer {
            stop,
            acked,
            shared,
            task,
        }
    }

    /// Acknowledged requests so far.
    pub(crate) fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// A copy of the acknowledgements so far.
    pub(crate) fn acks(&self) -> Vec<Ack> {
        lock(&self.shared).acks.clone()
    }

    /// Waits until `n` more requests than now are acknowledged.
    pub(crate) async fn wait_for_more(&self, n: u64, limit: Duration, cluster: &Cluster) {
        let target = self.acked() + n;
        let started = Instant::now();
        while self.acked() < target {
            if started.elapsed() > limit || self.task.is_finished() {
                let h = lock(&self.shared);
                let last: Vec<&String> = h.failures.iter().rev().take(10).collect();
                panic!(
                    "the producer got {} of {n} more acknowledgements within {limit:?}; last failures (newest first): {last:#?}\n{}",
                    self.acked() + n - target,
                    cluster.stderr_tails(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops sending, waits for answers in flight (bounded) and returns
    /// the history.
    pub(crate) async fn stop(self) -> History {
        self.stop.send_replace(true);
        match tokio::time::timeout(Duration::from_secs(20), self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the producer task failed: {e}"),
            Err(_) => panic!("the producer did not stop within 20 s"),
        }
        std::mem::take(&mut *lock(&self.shared))
    }
}

fn lock(m: &std::sync::Mutex<History>) -> std::sync::MutexGuard<'_, History> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The value of record `i` of request `seq` of producer `tag`.
pub(crate) fn value(tag: &str, seq: u64, i: usize) -> Bytes {
    Bytes::from(format!("{tag}-s{seq:07}-r{i}-{}", "v".repeat(60)))
}

/// `(seq, i)` of a value written by producer `tag`, `None` for others.
pub(crate) fn seq_of(tag: &str, v: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(v).ok()?;
    let rest = s.strip_prefix(tag)?.strip_prefix("-s")?;
    let mut fields = rest.split('-');
    let seq = fields.next()?.parse().ok()?;
    let i = fields.next()?.strip_prefix('r')?.parse().ok()?;
    Some((seq, i))
}

#[allow(clippy::too_many_arguments)]
async fn run(
    addrs: Addrs,
    majority: usize,
    topic: String,
    partition: u32,
    tag: String,
    mut stop: watch::Receiver<bool>,
    acked: Arc<AtomicU64>,
    shared: Arc<std::sync::Mutex<History>>,
) {
    // Who leads, as a majority of nodes says, refreshed in the background:
    // a stream to a node that lost the leadership is abandoned at once
    // instead of waiting out ANSWER_TIMEOUT, as a client refreshing its
    // metadata would. Failover times then measure the cluster.
    let (leader_tx, mut leader_rx) = watch::channel(None::<u32>);
    let watcher = {
        let (addrs, topic) = (addrs.clone(), topic.clone());
        tokio::spawn(async move {
            loop {
                let l = agreed_leader(&addrs, &topic, partition, majority).await;
                if l.is_some() {
                    leader_tx.send_if_modified(|cur| {
                        let changed = *cur != l;
                        *cur = l;
                        changed
                    });
                }
                if leader_tx.is_closed() {
                    return;
                }
                tokio::time::sleep(LEADER_POLL).await;
            }
        })
    };
    let mut seq = 0u64;
    while !*stop.borrow() {
        let Some(leader) = *leader_rx.borrow_and_update() else {
            tokio::select! {
                _ = leader_rx.changed() => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        let addr = addrs.0[&leader];
        let why = stream_to(
            leader,
            addr,
            &topic,
            partition,
            &tag,
            &mut seq,
            &mut stop,
            &mut leader_rx,
            &acked,
            &shared,
        )
        .await;
        if let Some(why) = why {
            lock(&shared).failures.push(format!("node {leader}: {why}"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    watcher.abort();
}

/// Writes to `leader` over one ProduceStream until something goes wrong
/// (returns why) or the producer is stopped and its answers are in (None).
#[allow(clippy::too_many_arguments)]
async fn stream_to(
    leader: u32,
    addr: SocketAddr,
    topic: &str,
    partition: u32,
    tag: &str,
    seq: &mut u64,
    stop: &mut watch::Receiver<bool>,
    leader_now: &mut watch::Receiver<Option<u32>>,
    acked: &AtomicU64,
    shared: &std::sync::Mutex<History>,
) -> Option<String> {
    let mut client = ProduceServiceClient::new(probe_channel_long(addr));
    let (tx, rx) = tokio::sync::mpsc::channel::<ProduceStreamRequest>(WINDOW);
    let opened = tokio::time::timeout(
        ANSWER_TIMEOUT,
        client.produce_stream(ReceiverStream::new(rx)),
    )
    .await;
    let mut responses = match opened {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => return Some(format!("stream did not open: {s:?}")),
        Err(_) => return Some("stream did not open in time".into()),
    };
    let mut in_flight: HashMap<u64, (Vec<Bytes>, Instant)> = HashMap::new();
    loop {
        let stopping = *stop.borrow();
        while !stopping && in_flight.len() < WINDOW {
            let values: Vec<Bytes> = (0..PER_REQUEST).map(|i| value(tag, *seq, i)).collect();
            let records = plain_records(&values);
            let req = ProduceStreamRequest {
                sequence: *seq,
                request: Some(ProduceRequest {
                    topic: topic.into(),
                    partitions: vec![records_for(Some(partition), records)],
                    acks: Acks::All as i32,
                    timeout_ms: BROKER_TIMEOUT_MS,
                }),
            };
            lock(shared).sent.extend(values.iter().cloned());
            in_flight.insert(*seq, (values, Instant::now()));
            *seq += 1;
            if tx.send(req).await.is_err() {
                return Some("stream closed while sending".into());
            }
        }
        if stopping && in_flight.is_empty() {
            return None;
        }
        let oldest = in_flight.values().map(|(_, t)| *t).min();
        let wait = oldest.map_or(ANSWER_TIMEOUT, |t| {
            ANSWER_TIMEOUT.saturating_sub(t.elapsed())
        });
        let next = tokio::select! {
            m = tokio::time::timeout(wait, responses.message()) => m,
            _ = stop.changed(), if !stopping => continue,
            _ = leader_now.changed() => {
                match *leader_now.borrow_and_update() {
                    Some(l) if l != leader => {
                        return Some(format!(
                            "node {l} leads now, {} unanswered",
                            in_flight.len()
                        ));
                    }
                    _ => continue,
                }
            }
        };
        let resp = match next {
            Ok(Ok(Some(resp))) => resp,
            Ok(Ok(None)) => return Some(format!("stream ended, {} unanswered", in_flight.len())),
            Ok(Err(s)) => return Some(format!("stream failed: {s:?}")),
            Err(_) => {
                return Some(format!(
                    "no answer within {ANSWER_TIMEOUT:?}, {} unanswered",
                    in_flight.len()
                ));
            }
        };
        let Some((values, _)) = in_flight.remove(&resp.sequence) else {
            panic!("an answer for unknown sequence {}: {resp:?}", resp.sequence);
        };
        if let Some(e) = resp.error {
            return Some(format!("request {} failed: {e:?}", resp.sequence));
        }
        let Some(r) = resp.response else {
            panic!("answer {} has neither response nor error", resp.sequence);
        };
        assert_eq!(r.results.len(), 1, "one result per partition: {r:?}");
        let result = &r.results[0];
        if let Some(e) = &result.error {
            return Some(format!("request {} failed: {e:?}", resp.sequence));
        }
        let base_offset = result
            .base_offset
            .unwrap_or_else(|| panic!("acks=all without a base offset: {r:?}"));
        assert_eq!(result.record_count as usize, values.len(), "{r:?}");
        lock(shared).acks.push(Ack {
            node: leader,
            base_offset,
            values,
            at: Instant::now(),
        });
        acked.fetch_add(1, Ordering::SeqCst);
    }
}

/// A channel for a long-lived stream: a short connect timeout, no request
/// timeout (the stream has its own answer deadline).
fn probe_channel_long(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy()
}

/// Every committed record of a partition as node `id` serves it: offset
/// and value, from offset 0 to its high watermark.
pub(crate) async fn read_log(
    cluster: &Cluster,
    id: u32,
    topic: &str,
    partition: u32,
) -> Vec<(u64, Bytes)> {
    let mut c = Clients::connect(cluster.addr(id)).await;
    c.fetch_decoded(topic, partition, 0)
        .await
        .into_iter()
        .map(|r| (r.offset, r.value))
        .collect()
}

/// Waits until every live node has the same high watermark and log end
/// for `topic`/`partition` as the leader, with nobody writing; returns it.
pub(crate) async fn wait_converged(cluster: &Cluster, topic: &str, partition: u32) -> u64 {
    let ids = cluster.live_ids();
    let what = format!("nodes {ids:?} to agree on {topic}/{partition}'s offsets");
    let started = Instant::now();
    let limit = Duration::from_secs(30);
    let found = tokio::time::timeout(
        limit,
        eventually(limit + Duration::from_secs(1), &what, || {
            let ids = ids.clone();
            async move {
                let mut seen = Vec::new();
                for id in ids {
                    let d = cluster.describe_on(id, topic).await?;
                    let p = d.partitions.into_iter().find(|p| p.id == partition)?;
                    seen.push((p.high_watermark, p.log_end_offset));
                }
                let first = *seen.first()?;
                (seen.iter().all(|&s| s == first) && first.0 == first.1).then_some(first.0)
            }
        }),
    )
    .await;
    match found {
        Ok(hwm) => hwm,
        Err(_) => {
            let mut views = String::new();
            for id in cluster.live_ids() {
                views.push_str(&format!(
                    "node {id}: {:?}\n",
                    cluster.describe_on(id, topic).await.map(|d| d.partitions)
                ));
            }
            panic!(
                "nodes did not converge on {topic}/{partition} within {:?}:\n{views}{}",
                started.elapsed(),
                cluster.stderr_tails(30)
            )
        }
    }
}

/// Waits until the live nodes converge, reads the partition from each and
/// asserts that they hold the same records, then [`check`]s the history
/// against it. Returns the log.
pub(crate) async fn check_all_nodes(
    cluster: &Cluster,
    topic: &str,
    partition: u32,
    histories: &[(&str, &History)],
) -> Vec<(u64, Bytes)> {
    let hwm = wait_converged(cluster, topic, partition).await;
    let ids = cluster.live_ids();
    let mut logs = BTreeMap::new();
    for &id in &ids {
        logs.insert(id, read_log(cluster, id, topic, partition).await);
    }
    let (&first_id, first) = logs.iter().next().expect("at least one live node");
    for (id, log) in &logs {
        if log != first {
            let diff = first_difference(first, log);
            panic!(
                "{topic}/{partition}: node {id} and node {first_id} hold different logs below the common high watermark {hwm}: {diff}"
            );
        }
    }
    for (tag, h) in histories {
        check(first, tag, h);
    }
    first.clone()
}

fn first_difference(a: &[(u64, Bytes)], b: &[(u64, Bytes)]) -> String {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            return format!("record #{i}: {x:?} vs {y:?}");
        }
    }
    format!("{} records vs {}", a.len(), b.len())
}

/// Checks a partition's log (offset, value), as read back, against what
/// producer `tag` did:
/// - every acknowledged record is at the offset it was acknowledged with;
/// - no offset was acknowledged twice (never reused for different data);
/// - every record of `tag` in the log was sent, and appears once;
/// - `tag`'s records appear in the order they were sent (one producer, so
///   a record stored after a later one was reordered).
pub(crate) fn check(log: &[(u64, Bytes)], tag: &str, h: &History) {
    let by_offset: BTreeMap<u64, &Bytes> = log.iter().map(|(o, v)| (*o, v)).collect();
    assert_eq!(
        by_offset.len(),
        log.len(),
        "an offset repeats in the log read back"
    );
    let mut acked_offsets: HashMap<u64, &Bytes> = HashMap::new();
    for a in &h.acks {
        for (i, v) in a.values.iter().enumerate() {
            let off = a.base_offset + i as u64;
            if let Some(prev) = acked_offsets.insert(off, v) {
                panic!(
                    "offset {off} was acknowledged twice: for {:?} and for {:?} (by node {})",
                    String::from_utf8_lossy(prev),
                    String::from_utf8_lossy(v),
                    a.node
                );
            }
            match by_offset.get(&off) {
                Some(&got) if got == v => {}
                got => panic!(
                    "acknowledged record lost or changed: offset {off} was acknowledged by node {} for {:?}, the log holds {:?} ({} records acknowledged in all, log of {} records up to offset {:?})",
                    a.node,
                    String::from_utf8_lossy(v),
                    got.map(|g| String::from_utf8_lossy(g)),
                    h.acked_records(),
                    log.len(),
                    log.last().map(|(o, _)| *o)
                ),
            }
        }
    }
    let mut seen: HashSet<&Bytes> = HashSet::new();
    let mut last: Option<(u64, u64)> = None;
    for (off, v) in log {
        let Some(s) = seq_of(tag, v) else { continue };
        assert!(
            h.sent.contains(v),
            "offset {off} holds {:?}, which producer {tag} never sent",
            String::from_utf8_lossy(v)
        );
        assert!(
            seen.insert(v),
            "offset {off}: {:?} is stored twice",
            String::from_utf8_lossy(v)
        );
        assert!(
            last.is_none_or(|l| s > l),
            "offset {off}: {:?} stored after {last:?}: out of the order sent",
            String::from_utf8_lossy(v)
        );
        last = Some(s);
    }
}
