//! A Runnel node: the gRPC services over partition replicas.
//!
//! Owns: the tonic server (AdminService, ProduceService, FetchService,
//! GroupService from `proto/runnel/v1`, plus gRPC health and reflection),
//! the consumer-group coordinators over the internal offsets topic
//! (`groups`: loading, commits with acks=all, session ticks; the state
//! machine itself is runnel-groups), the topic registry
//! persisted in the data directory, the [`Replica`] interface through which
//! every partition is reached and its single-node implementation
//! [`LocalReplica`], request validation and the mapping of errors to gRPC
//! statuses, Prometheus metrics on `GET /metrics`, background maintenance
//! (interval flush, retention) and graceful shutdown.
//!
//! Does not own: the log on disk (runnel-storage), the batch format
//! (runnel-batch), the generated API (runnel-proto), argument parsing and
//! logging setup (the `runnel broker` command in runnel-cli), replication
//! (runnel-raft, next issue: a Raft replica slots in behind [`Replica`]).
//!
//! # Use
//!
//! [`serve`] takes bound listeners and a shutdown future (mini-redis
//! style), so tests and embedders bind port 0:
//!
//! ```no_run
//! # async fn run() -> Result<(), runnel_broker::BrokerError> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let addr = listener.local_addr().unwrap().to_string();
//! let config = runnel_broker::BrokerConfig::new("/tmp/runnel-data", addr);
//! runnel_broker::serve(listener, None, config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
//!
//! [`Broker::open`] then [`Broker::serve`] does the same in two steps, so a
//! caller can report readiness once recovery is done.
//!
//! # Data directory
//!
//! ```text
//! <data-dir>/
//!   node.json                   {"node_id": N}: a node refuses a directory of another id
//!   node.lock                   flock'ed by the running node: a second process is refused
//!   topics/
//!     <name>/
//!       topic.json              the topic's settings (TopicSettings), written last on create
//!       0/ 1/ ...               one runnel-storage partition log per partition
//!     <name>~deleted-<nanos>/   a topic being deleted (removed at startup if left over)
//! ```
//!
//! Small files are written to a temp file, fsynced and renamed. A topic
//! directory without `topic.json` is an interrupted create and is removed
//! at startup, as is anything whose name holds `~` (never part of a topic
//! name).
//!
//! # Durability and the high watermark
//!
//! With flush=always a produce is acknowledged, and its records become
//! visible to consumers, only once fsynced; concurrent producers share
//! fsyncs (see [`LocalReplica`]). With flush=never or an interval, records
//! are visible and acknowledged once written to the page cache.
//!
//! # Shutdown
//!
//! When the shutdown future resolves the node stops accepting, reports
//! NOT_SERVING on health, ends long polls, Subscribe and ProduceStream
//! streams (queued produce requests are still answered), waits for open
//! connections up to [`BrokerConfig::shutdown_grace`], then finishes every
//! queued append and flushes every log.
//!
//! # Errors
//!
//! Every failed call carries a gRPC code, the `runnel-reason` trailer and
//! a `google.rpc.ErrorInfo` ([`BrokerError`], [`error::status_for`]).

#![deny(missing_docs)]

pub mod cluster;
mod config;
pub mod error;
mod groups;
mod metrics;
mod page_cache;
mod registry;
mod replica;
mod server;
mod service;

pub use config::{
    BrokerConfig, MAX_NAME_LEN, MAX_PARTITIONS, MAX_PEERS, MAX_RECORD_BYTES, MAX_SEGMENT_BYTES,
    MIN_RECORD_BYTES, MIN_SEGMENT_BYTES, TopicSettings, check_advertise, format_peers, parse_peers,
    validate_topic_name,
};
pub use error::{BrokerError, Result};
pub use groups::{OFFSETS_PARTITIONS, OFFSETS_TOPIC};
pub use page_cache::{DEFAULT_PAGE_CACHE_MAX, default_page_cache_bytes};
pub use registry::{LOCK_FILE, NODE_FILE, TOPIC_FILE, TOPICS_DIR};
pub use replica::{
    AckLevel, Appended, BoxFuture, LOCAL_TERM, LocalReplica, MAX_QUEUED_BYTES, NodeRef,
    PartitionOffsets, Replica, ReplicaError, log_flush_policy,
};
pub use runnel_storage::FlushPolicy;
pub use server::{Broker, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, WINDOW_BYTES, serve};
pub use service::fetch::{
    DEFAULT_PARTITION_MAX_BYTES, DEFAULT_RESPONSE_MAX_BYTES, MAX_RESPONSE_BYTES, MAX_WAIT_MS,
};

#[cfg(test)]
mod tests;
