//! Partition replicas of a cluster: [`RaftReplica`] (this node holds a
//! replica of the partition's Raft group) and [`RemoteReplica`] (it does
//! not: every request is redirected to the leader).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use runnel_batch::VerifiedBatch;
use runnel_raft::{Acks, Role};
use runnel_storage::{Log, ReadBatches};

use super::driver::{GroupShared, ProposeFailure, RaftHandle};
use crate::replica::{
    AckLevel, Appended, BoxFuture, NodeRef, PartitionOffsets, Replica, ReplicaError,
    committed_offset_for_timestamp, read_committed,
};

/// The nodes of the cluster by id, as clients reach them.
pub(crate) type Peers = Arc<BTreeMap<u32, String>>;

fn node_ref(peers: &Peers, id: u64) -> Option<NodeRef> {
    let id = u32::try_from(id).ok()?;
    peers.get(&id).map(|address| NodeRef {
        id,
        address: address.clone(),
    })
}

fn ids(nodes: &[u64]) -> Vec<u32> {
    nodes
        .iter()
        .filter_map(|&n| u32::try_from(n).ok())
        .collect()
}

/// A replica of a partition's Raft group on this node.
pub(crate) struct RaftReplica {
    pub(crate) shared: Arc<GroupShared>,
    pub(crate) raft: RaftHandle,
    pub(crate) peers: Peers,
}

impl RaftReplica {
    fn failure(&self, e: ProposeFailure) -> ReplicaError {
        match e {
            ProposeFailure::NotLeader { leader } => ReplicaError::NotLeader {
                leader: leader.and_then(|l| node_ref(&self.peers, l)),
            },
            ProposeFailure::Closed(_) => ReplicaError::Closed,
            e @ (ProposeFailure::Retry(_)
            | ProposeFailure::NotWritten(_)
            | ProposeFailure::Unknown(_)) => ReplicaError::Unavailable(e.to_string()),
        }
    }
}

impl Replica for RaftReplica {
    fn append(
        &self,
        batch: VerifiedBatch,
        acks: AckLevel,
    ) -> BoxFuture<Result<Appended, ReplicaError>> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Box::pin(std::future::ready(Err(ReplicaError::Closed)));
        }
        let (raft_acks, wait) = match acks {
            AckLevel::None => (Acks::Leader, false),
            AckLevel::Leader => (Acks::Leader, true),
            AckLevel::All => (Acks::Quorum, true),
        };
        let records = u64::from(batch.header().record_count);
        let fut = self.raft.propose(self.shared.group, batch, raft_acks, wait);
        let this = RaftReplica {
            shared: self.shared.clone(),
            raft: self.raft.clone(),
            peers: self.peers.clone(),
        };
        Box::pin(async move {
            match fut.await {
                Ok(Some(info)) => Ok(Appended {
                    base_offset: info.base_offset,
                    next_offset: info.last_offset + 1,
                }),
                // acks=0: nobody looks at the offsets.
                Ok(None) => Ok(Appended {
                    base_offset: 0,
                    next_offset: records,
                }),
                Err(e) => Err(this.failure(e)),
            }
        })
    }

    fn watch_high_watermark(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.hwm.subscribe()
    }

    fn read(&self, offset: u64, max_bytes: usize) -> BoxFuture<Result<ReadBatches, ReplicaError>> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Box::pin(std::future::ready(Err(ReplicaError::Closed)));
        }
        read_committed(
            self.shared.log.clone(),
            *self.shared.hwm.borrow(),
            self.shared.log.log_start_offset().unwrap_or(0),
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
        let log = &self.shared.log;
        PartitionOffsets {
            log_start: log.log_start_offset().unwrap_or(0),
            high_watermark: *self.shared.hwm.borrow(),
            log_end: log.log_end_offset().unwrap_or(0),
        }
    }

    fn size_bytes(&self) -> u64 {
        self.shared.log.size_bytes().unwrap_or(0)
    }

    fn leader(&self) -> Option<NodeRef> {
        self.shared
            .view()
            .leader
            .and_then(|l| node_ref(&self.peers, l))
    }

    fn is_leader(&self) -> bool {
        self.shared.view().role == Some(Role::Leader)
    }

    fn replicas(&self) -> Vec<u32> {
        ids(&self.shared.view().voters)
    }

    fn in_sync_replicas(&self) -> Vec<u32> {
        ids(&self.shared.view().in_sync)
    }

    fn maintain(&self, _mono_ms: i64, _wall_ms: i64, _retention: bool) -> Result<(), ReplicaError> {
        // The Raft loop fsyncs what it appends and applies retention
        // itself (driver::RETENTION_INTERVAL): the log's start may only
        // move with the Raft storage that owns it (RAFT.md trap 18).
        Ok(())
    }

    fn log(&self) -> Option<Arc<Log>> {
        Some(self.shared.log.clone())
    }

    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    fn close(&self) -> BoxFuture<Result<(), ReplicaError>> {
        let raft = self.raft.clone();
        let shared = self.shared.clone();
        Box::pin(async move {
            raft.close(shared.group).await;
            shared.closed.store(true, Ordering::Release);
            shared.hwm.send_modify(|_| {});
            let log = shared.log.clone();
            tokio::task::spawn_blocking(move || log.flush())
                .await
                .map_err(|_| ReplicaError::Closed)?
                .map_err(ReplicaError::from)
        })
    }
}

/// A partition this node holds no replica of: requests are redirected to
/// its preferred leader (the node most likely to lead it).
pub(crate) struct RemoteReplica {
    pub(crate) replicas: Vec<u32>,
    pub(crate) peers: Peers,
    pub(crate) hwm: tokio::sync::watch::Sender<u64>,
}

impl RemoteReplica {
    fn redirect(&self) -> ReplicaError {
        ReplicaError::NotLeader {
            leader: self.leader(),
        }
    }
}

impl Replica for RemoteReplica {
    fn append(
        &self,
        _batch: VerifiedBatch,
        _acks: AckLevel,
    ) -> BoxFuture<Result<Appended, ReplicaError>> {
        Box::pin(std::future::ready(Err(self.redirect())))
    }

    fn watch_high_watermark(&self) -> tokio::sync::watch::Receiver<u64> {
        self.hwm.subscribe()
    }

    fn read(&self, _offset: u64, _max: usize) -> BoxFuture<Result<ReadBatches, ReplicaError>> {
        Box::pin(std::future::ready(Err(self.redirect())))
    }

    fn offset_for_timestamp(
        &self,
        _ts: i64,
    ) -> BoxFuture<Result<Option<(u64, i64)>, ReplicaError>> {
        Box::pin(std::future::ready(Err(self.redirect())))
    }

    fn offsets(&self) -> PartitionOffsets {
        PartitionOffsets::default()
    }

    fn size_bytes(&self) -> u64 {
        0
    }

    fn leader(&self) -> Option<NodeRef> {
        let first = *self.replicas.first()?;
        node_ref(&self.peers, u64::from(first))
    }

    fn is_leader(&self) -> bool {
        false
    }

    fn replicas(&self) -> Vec<u32> {
        self.replicas.clone()
    }

    fn in_sync_replicas(&self) -> Vec<u32> {
        Vec::new()
    }

    fn maintain(&self, _mono_ms: i64, _wall_ms: i64, _retention: bool) -> Result<(), ReplicaError> {
        Ok(())
    }

    fn is_closed(&self) -> bool {
        false
    }

    fn close(&self) -> BoxFuture<Result<(), ReplicaError>> {
        self.hwm.send_modify(|_| {});
        Box::pin(std::future::ready(Ok(())))
    }
}
