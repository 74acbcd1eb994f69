//! The replica interface: how the broker reaches every partition.
//!
//! The gRPC services never touch a [`Log`] directly; they go through a
//! [`Replica`]. Today the only implementation is [`LocalReplica`], a single
//! node that appends to its own log. Replication (next issue) adds a Raft
//! replica behind the same trait:
//!
//! - [`Replica::append`] proposes the batch to the partition's Raft group
//!   and resolves for [`AckLevel::Leader`] once the leader appended it and
//!   for [`AckLevel::All`] once a quorum did (the commit index passed it);
//!   on a follower it fails at once with [`ReplicaError::NotLeader`]
//!   naming the leader ([`Replica::leader`]), which clients get as
//!   `NOT_LEADER` with the leader's address.
//! - The high watermark becomes the Raft commit index mapped to offsets;
//!   [`Replica::watch_high_watermark`] fires when it moves, which is all
//!   long polls and Subscribe wait on.
//! - [`Replica::read`] serves only below the high watermark on any replica.
//!
//! Everything that may block on disk runs on tokio's blocking pool, never
//! on a runtime worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;
use runnel_batch::{BatchView, VerifiedBatch};
use runnel_storage::{FlushPolicy, Log, ReadBatches, StorageError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// A boxed, sendable future (what [`Replica`] methods return).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The Raft term a single node stamps on every batch it appends.
pub const LOCAL_TERM: u64 = 1;

/// Most bytes waiting in one partition's append queue before appends are
/// refused with [`ReplicaError::Busy`] (back-pressure for acks=0 floods).
pub const MAX_QUEUED_BYTES: usize = 512 << 20;

/// How many replicas must have a write before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckLevel {
    /// Nobody waits (acks=0). The append still happens; failures are logged.
    None,
    /// The leader appended it (and fsynced it with flush=always).
    Leader,
    /// A quorum appended it. On a single node, the same as `Leader`.
    All,
}

/// Where an appended batch landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Offset of its first record.
    pub base_offset: u64,
    /// Offset after its last record.
    pub next_offset: u64,
}

/// A node as clients reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRef {
    /// Node id.
    pub id: u32,
    /// Client address (host:port).
    pub address: String,
}

/// A partition's offsets: `log_start <= high_watermark <= log_end`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// First offset still stored.
    pub log_start: u64,
    /// Offset after the last committed record: consumers read below it.
    pub high_watermark: u64,
    /// Offset after the last appended record.
    pub log_end: u64,
}

/// Why a replica operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicaError {
    /// This replica does not lead the partition.
    #[error("not the leader")]
    NotLeader {
        /// The leader, when known.
        leader: Option<NodeRef>,
    },
    /// The offset is outside `[log_start, high_watermark]`.
    #[error("offset {offset} out of range [{log_start}, {high_watermark}]")]
    OffsetOutOfRange {
        /// Offset asked for.
        offset: u64,
        /// First offset stored.
        log_start: u64,
        /// The high watermark.
        high_watermark: u64,
    },
    /// The replica is closed (topic deleted, node shutting down).
    #[error("the partition is closed (topic deleted or node shutting down)")]
    Closed,
    /// Too much is queued; retry later.
    #[error("the partition's append queue is full ({0} bytes waiting); retry later")]
    Busy(usize),
    /// Replication could not take or confirm the write now (no leader
    /// yet, leadership moved, outcome unknown); retry.
    #[error("{0}")]
    Unavailable(String),
    /// The log failed.
    #[error(transparent)]
    Storage(Arc<StorageError>),
}

impl From<StorageError> for ReplicaError {
    fn from(e: StorageError) -> Self {
        ReplicaError::Storage(Arc::new(e))
    }
}

/// One partition replica, as the services see it. `Send + Sync`; shared in
/// an `Arc`.
pub trait Replica: Send + Sync + 'static {
    /// Appends a verified batch (its offsets are assigned here).
    ///
    /// The batch is queued before `append` returns, so batches appear in
    /// the log in the order of `append` calls, whether or not the futures
    /// are awaited (acks=0 drops the future). The future resolves per
    /// `acks` (see [`AckLevel`]).
    fn append(
        &self,
        batch: VerifiedBatch,
        acks: AckLevel,
    ) -> BoxFuture<Result<Appended, ReplicaError>>;

    /// The current high watermark.
    fn high_watermark(&self) -> u64 {
        *self.watch_high_watermark().borrow()
    }

    /// A receiver that changes whenever the high watermark moves, and once
    /// more when the replica closes (then [`Replica::is_closed`] is true).
    fn watch_high_watermark(&self) -> watch::Receiver<u64>;

    /// Whole stored batches from the one holding `offset`, up to `max_bytes`
    /// (at least one batch), never at or beyond the high watermark.
    /// `offset` must lie in `[log_start, high_watermark]`; at the high
    /// watermark the result is empty. Headers are checked, CRCs are not:
    /// whoever consumes the bytes verifies them (the Rust consumer does, and
    /// the broker's decoding path does through `BatchView`), as Kafka leaves
    /// it to `check.crcs`, so the broker does not pass over every byte twice.
    fn read(&self, offset: u64, max_bytes: usize) -> BoxFuture<Result<ReadBatches, ReplicaError>>;

    /// The first committed offset whose record timestamp is `>= timestamp`,
    /// with that record's timestamp; `None` when every record is older.
    fn offset_for_timestamp(
        &self,
        timestamp: i64,
    ) -> BoxFuture<Result<Option<(u64, i64)>, ReplicaError>>;

    /// Current offsets (cheap: no lock shared with appends).
    fn offsets(&self) -> PartitionOffsets;

    /// Bytes stored (briefly takes the log's lock).
    fn size_bytes(&self) -> u64;

    /// The node leading this partition, when known.
    fn leader(&self) -> Option<NodeRef>;

    /// Whether this node leads the partition.
    fn is_leader(&self) -> bool;

    /// Node ids holding a replica.
    fn replicas(&self) -> Vec<u32>;

    /// Node ids of replicas caught up with the leader.
    fn in_sync_replicas(&self) -> Vec<u32>;

    /// Time-based work (interval flush, retention). Blocking: call it from
    /// the blocking pool. `mono_ms` is a monotonic clock, `wall_ms` the Unix
    /// time (retention compares it with record timestamps).
    fn maintain(&self, mono_ms: i64, wall_ms: i64, retention: bool) -> Result<(), ReplicaError>;

    /// The partition's log on this node, for the node-wide page cache work
    /// (unmapping read pages, the page cache budget). Default: none.
    fn log(&self) -> Option<Arc<Log>> {
        None
    }

    /// Whether [`Replica::close`] has finished: reads fail, appends too.
    fn is_closed(&self) -> bool;

    /// Stops taking appends, finishes the queued ones, flushes the log.
    /// Further appends fail with [`ReplicaError::Closed`].
    fn close(&self) -> BoxFuture<Result<(), ReplicaError>>;
}

/// One queued append.
struct AppendRequest {
    batch: VerifiedBatch,
    done: Option<oneshot::Sender<Result<Appended, ReplicaError>>>,
}

/// An append done, waiting for its fsync.
struct Unsynced {
    next_offset: u64,
    done: Option<oneshot::Sender<Result<Appended, ReplicaError>>>,
    appended: Appended,
}

/// State shared by a [`LocalReplica`] and its tasks.
struct Shared {
    log: Arc<Log>,
    hwm: watch::Sender<u64>,
    log_start: AtomicU64,
    log_end: AtomicU64,
    queued_bytes: AtomicUsize,
    closed: AtomicBool,
    fsync_seconds: Histogram,
}

impl Shared {
    fn publish_hwm(&self, hwm: u64) {
        self.hwm.send_if_modified(|h| {
            let moved = hwm > *h;
            if moved {
                *h = hwm;
            }
            moved
        });
    }
}

/// The single-node replica: the partition log on this node, always leader.
///
/// Appends go through a queue to one appender task per partition, which
/// writes every queued batch in one blocking-pool call (so the order of
/// [`Replica::append`] calls is the log order). With flush=always the log
/// is opened with [`FlushPolicy::Never`] and a second task, the syncer,
/// fsyncs everything written so far with one [`Log::flush`] while the
/// appender goes on writing: group commit across every producer of the
/// partition, and writes never wait for an fsync. Appends are acknowledged
/// and the high watermark moves only once the fsync covering them returns.
/// With flush=never or an interval, the high watermark is the log end
/// once appended.
pub struct LocalReplica {
    node: NodeRef,
    shared: Arc<Shared>,
    queue: Mutex<Option<mpsc::UnboundedSender<AppendRequest>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for LocalReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalReplica")
            .field("dir", &self.shared.log.dir())
            .finish_non_exhaustive()
    }
}

impl LocalReplica {
    /// Starts a replica over an open log (from within a tokio runtime).
    /// `durable` means the broker's flush policy is `always`: the log must
    /// then have been opened with [`FlushPolicy::Never`] (see
    /// [`log_flush_policy`]); the replica fsyncs it itself.
    pub fn start(
        node: NodeRef,
        log: Log,
        durable: bool,
        fsync_seconds: Histogram,
    ) -> Result<Self, StorageError> {
        let log_end = log.log_end_offset()?;
        let shared = Arc::new(Shared {
            log_start: AtomicU64::new(log.log_start_offset()?),
            log_end: AtomicU64::new(log_end),
            // Everything recovered from disk counts as committed.
            hwm: watch::Sender::new(log_end),
            log: Arc::new(log),
            queued_bytes: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            fsync_seconds,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        let sync_tx = if durable {
            let (sync_tx, sync_rx) = mpsc::unbounded_channel();
            tasks.push(tokio::spawn(run_syncer(shared.clone(), sync_rx)));
            Some(sync_tx)
        } else {
            None
        };
        tasks.push(tokio::spawn(run_appender(shared.clone(), rx, sync_tx)));
        Ok(LocalReplica {
            node,
            shared,
            queue: Mutex::new(Some(tx)),
            tasks: Mutex::new(tasks),
        })
    }
}

/// The policy to open a partition log with under the broker's `flush`:
/// `always` becomes `never` because [`LocalReplica`] fsyncs itself.
pub fn log_flush_policy(flush: FlushPolicy) -> FlushPolicy {
    match flush {
        FlushPolicy::Always => FlushPolicy::Never,
        other => other,
    }
}

fn closed_result() -> Result<Appended, ReplicaError> {
    Err(ReplicaError::Closed)
}

/// Writes queued batches in order, in one blocking call per wake-up.
async fn run_appender(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<AppendRequest>,
    sync_tx: Option<mpsc::UnboundedSender<Unsynced>>,
) {
    let mut buf = Vec::with_capacity(64);
    while rx.recv_many(&mut buf, 256).await > 0 {
        let reqs = std::mem::take(&mut buf);
        let log = shared.log.clone();
        let written = tokio::task::spawn_blocking(move || {
            reqs.into_iter()
                .map(|r| {
                    let len = r.batch.len();
                    let res = log.append_verified(&r.batch, LOCAL_TERM);
                    (r.done, len, res)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                // The senders were dropped with the closure: every waiter
                // sees its channel closed and reports the replica closed.
                tracing::error!(dir = %shared.log.dir().display(), error = %e, "append task panicked");
                continue;
            }
        };
        let mut end = None;
        for (done, len, res) in written {
            shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            match res {
                Ok(info) => {
                    let appended = Appended {
                        base_offset: info.base_offset,
                        next_offset: info.last_offset + 1,
                    };
                    end = Some(appended.next_offset);
                    shared
                        .log_end
                        .fetch_max(appended.next_offset, Ordering::AcqRel);
                    match &sync_tx {
                        Some(sync) => {
                            let unsynced = Unsynced {
                                next_offset: appended.next_offset,
                                done,
                                appended,
                            };
                            if let Err(mpsc::error::SendError(u)) = sync.send(unsynced) {
                                if let Some(done) = u.done {
                                    let _ = done.send(closed_result());
                                }
                            }
                        }
                        None => {
                            if let Some(done) = done {
                                let _ = done.send(Ok(appended));
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(dir = %shared.log.dir().display(), error = %e, "append failed");
                    if let Some(done) = done {
                        let _ = done.send(Err(e.into()));
                    }
                }
            }
        }
        if let (Some(end), None) = (end, &sync_tx) {
            shared.publish_hwm(end);
        }
    }
}

/// Makes written batches durable, many per fsync, then acknowledges them.
async fn run_syncer(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Unsynced>) {
    let mut buf = Vec::with_capacity(64);
    while rx.recv_many(&mut buf, 4096).await > 0 {
        let waiters = std::mem::take(&mut buf);
        let need = waiters.iter().map(|w| w.next_offset).max().unwrap_or(0);
        let log = shared.log.clone();
        let fsync = shared.fsync_seconds.clone();
        let res = tokio::task::spawn_blocking(move || {
            if log.durable_offset() >= need {
                return Ok(log.durable_offset());
            }
            let t = Instant::now();
            let res = log.flush();
            fsync.observe(t.elapsed().as_secs_f64());
            res.map(|()| log.durable_offset())
        })
        .await;
        let res = match res {
            Ok(r) => r.map_err(ReplicaError::from),
            Err(e) => Err(ReplicaError::Storage(Arc::new(StorageError::Invalid(
                format!("fsync task failed: {e}"),
            )))),
        };
        match res {
            Ok(durable) => {
                // Durable data may run ahead of what the appender has
                // reported; never publish past the reported log end.
                let log_end = shared.log_end.load(Ordering::Acquire);
                shared.publish_hwm(durable.min(log_end).max(need));
                for w in waiters {
                    if let Some(done) = w.done {
                        let _ = done.send(Ok(w.appended));
                    }
                }
            }
            Err(e) => {
                tracing::error!(dir = %shared.log.dir().display(), error = %e, "fsync failed; the partition refuses writes until the node restarts");
                for w in waiters {
                    if let Some(done) = w.done {
                        let _ = done.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

impl Replica for LocalReplica {
    fn append(
        &self,
        batch: VerifiedBatch,
        acks: AckLevel,
    ) -> BoxFuture<Result<Appended, ReplicaError>> {
        let len = batch.len();
        let queued = self.shared.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if queued > MAX_QUEUED_BYTES {
            self.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return Box::pin(std::future::ready(Err(ReplicaError::Busy(queued))));
        }
        let (done, rx) = if acks == AckLevel::None {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        let sent = {
            let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            match queue.as_ref() {
                Some(q) => q.send(AppendRequest { batch, done }).is_ok(),
                None => false,
            }
        };
        if !sent {
            self.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return Box::pin(std::future::ready(closed_result()));
        }
        Box::pin(async move {
            match rx {
                // acks=0: nobody learns the outcome; the appender logs failures.
                None => Ok(Appended {
                    base_offset: 0,
                    next_offset: 0,
                }),
                Some(rx) => rx.await.unwrap_or_else(|_| closed_result()),
            }
        })
    }

    fn watch_high_watermark(&self) -> watch::Receiver<u64> {
        self.shared.hwm.subscribe()
    }

    fn read(&self, offset: u64, max_bytes: usize) -> BoxFuture<Result<ReadBatches, ReplicaError>> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Box::pin(std::future::ready(Err(ReplicaError::Closed)));
        }
        read_committed(
            self.shared.log.clone(),
            *self.shared.hwm.borrow(),
            self.shared.log_start.load(Ordering::Acquire),
            offset,
            max_bytes,
        )
    }

    fn offset_for_timestamp(
        &self,
        timestamp: i64,
    ) -> BoxFuture<Result<Option<(u64, i64)>, ReplicaError>> {
        committed_offset_for_timestamp(
            self.shared.log.clone(),
            *self.shared.hwm.borrow(),
            timestamp,
        )
    }

    fn offsets(&self) -> PartitionOffsets {
        PartitionOffsets {
            log_start: self.shared.log_start.load(Ordering::Acquire),
            high_watermark: *self.shared.hwm.borrow(),
            log_end: self.shared.log_end.load(Ordering::Acquire),
        }
    }

    fn size_bytes(&self) -> u64 {
        self.shared.log.size_bytes().unwrap_or(0)
    }

    fn leader(&self) -> Option<NodeRef> {
        Some(self.node.clone())
    }

    fn is_leader(&self) -> bool {
        true
    }

    fn replicas(&self) -> Vec<u32> {
        vec![self.node.id]
    }

    fn in_sync_replicas(&self) -> Vec<u32> {
        vec![self.node.id]
    }

    fn maintain(&self, mono_ms: i64, wall_ms: i64, retention: bool) -> Result<(), ReplicaError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let log = &self.shared.log;
        if let FlushPolicy::IntervalMs(_) = log.config().flush {
            let before = log.fsync_count();
            let t = Instant::now();
            log.tick(mono_ms)?;
            if log.fsync_count() != before {
                self.shared.fsync_seconds.observe(t.elapsed().as_secs_f64());
            }
            // The log end is what we publish as the high watermark already.
        }
        if retention {
            let hwm = *self.shared.hwm.borrow();
            let report = log.apply_retention(wall_ms, hwm)?;
            self.shared
                .log_start
                .fetch_max(report.log_start_offset, Ordering::AcqRel);
        }
        Ok(())
    }

    fn log(&self) -> Option<Arc<Log>> {
        Some(self.shared.log.clone())
    }

    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    fn close(&self) -> BoxFuture<Result<(), ReplicaError>> {
        // Dropping the sender ends the appender once the queue is drained,
        // which drops the syncer's sender in turn.
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(queue);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let shared = self.shared.clone();
        Box::pin(async move {
            for t in tasks {
                let _ = t.await;
            }
            shared.closed.store(true, Ordering::Release);
            let log = shared.log.clone();
            let res = tokio::task::spawn_blocking(move || log.flush())
                .await
                .map_err(|_| ReplicaError::Closed)?;
            // Wake every long poll and subscription: they see the end.
            shared.hwm.send_modify(|_| {});
            res.map_err(ReplicaError::from)
        })
    }
}

/// Whole stored batches from the one holding `offset` below `hwm` (see
/// [`Replica::read`]): data near the end of the active segment on the
/// calling thread, anything older on the blocking pool; any replica serves
/// reads this way, whatever keeps its high watermark.
pub(crate) fn read_committed(
    log: Arc<Log>,
    hwm: u64,
    log_start: u64,
    offset: u64,
    max_bytes: usize,
) -> BoxFuture<Result<ReadBatches, ReplicaError>> {
    if offset < log_start || offset > hwm {
        return Box::pin(std::future::ready(Err(ReplicaError::OffsetOutOfRange {
            offset,
            log_start,
            high_watermark: hwm,
        })));
    }
    if offset == hwm {
        return Box::pin(std::future::ready(Ok(ReadBatches {
            first_offset: offset,
            next_offset: offset,
            ..Default::default()
        })));
    }
    // Data written moments ago (what a consumer at the tail asks for) is
    // read here, without a handoff to the blocking pool and back; older
    // data may need the disk and is read there.
    let res = match log.read_recent_unverified(offset, hwm, max_bytes, RECENT_READ_BYTES) {
        Ok(Some(read)) => Ok(read),
        Ok(None) => {
            return Box::pin(async move {
                let res = tokio::task::spawn_blocking(move || {
                    log.read_unverified(offset, hwm, max_bytes)
                })
                .await
                .map_err(|_| ReplicaError::Closed)?;
                committed_read_result(res, offset, hwm)
            });
        }
        Err(e) => Err(e),
    };
    Box::pin(std::future::ready(committed_read_result(res, offset, hwm)))
}

/// How far from the end of the active segment a read may start and still be
/// served on the async thread ([`Log::read_recent_unverified`]).
const RECENT_READ_BYTES: u64 = 1 << 20;

fn committed_read_result(
    res: Result<ReadBatches, StorageError>,
    offset: u64,
    hwm: u64,
) -> Result<ReadBatches, ReplicaError> {
    res.map_err(|e| match e {
        StorageError::OffsetOutOfRange { log_start, .. } => ReplicaError::OffsetOutOfRange {
            offset,
            log_start,
            high_watermark: hwm,
        },
        e => e.into(),
    })
}

/// [`Replica::offset_for_timestamp`] over a log whose committed part ends
/// at `hwm`.
pub(crate) fn committed_offset_for_timestamp(
    log: Arc<Log>,
    hwm: u64,
    timestamp: i64,
) -> BoxFuture<Result<Option<(u64, i64)>, ReplicaError>> {
    Box::pin(async move {
        tokio::task::spawn_blocking(move || -> Result<Option<(u64, i64)>, ReplicaError> {
            let Some(offset) = log.offset_for_timestamp(timestamp)? else {
                return Ok(None);
            };
            if offset >= hwm {
                return Ok(None);
            }
            let read = log.read(offset, hwm, 1)?;
            let view = BatchView::new(&read.bytes).map_err(StorageError::from)?;
            let base = view.base_offset();
            let records = view.records().map_err(StorageError::from)?;
            for r in records.iter() {
                let r = r.map_err(StorageError::from)?;
                if base + u64::from(r.offset_delta) == offset {
                    return Ok(Some((offset, r.timestamp)));
                }
            }
            Ok(Some((offset, view.header().max_timestamp)))
        })
        .await
        .map_err(|_| ReplicaError::Closed)?
    })
}
