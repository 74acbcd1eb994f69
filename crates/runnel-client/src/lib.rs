//! The Rust client of Runnel.
//!
//! - [`Client`]: a connection to a cluster (one HTTP/2 connection per node,
//!   tuned for throughput), its metadata cache, and the admin calls: create,
//!   delete, list and describe topics, describe the cluster, look up offsets.
//! - [`Producer`]: batching per partition (size and linger), compression,
//!   one produce stream per node with a window of requests in flight,
//!   retries, acks 0/1/all. Delivery is at least once (see [`producer`]).
//! - [`Consumer`]: reads a set of partitions from explicit positions
//!   (earliest, latest, offset, timestamp) with long-poll fetches from each
//!   partition's leader, decoding and verifying batches itself.
//! - [`GroupConsumer`]: a member of a consumer group reading one topic:
//!   joins, heartbeats in the background, follows the broker's assignment
//!   (releasing a partition only after committing it), starts each
//!   partition at the group's committed offset or [`GroupConfig::reset`],
//!   commits sync, async or on an interval, and leaves on close. Group
//!   admin ([`Client::list_groups`], [`Client::describe_group`],
//!   [`Client::delete_group`], [`Client::reset_offsets`]) is on [`Client`].
//!   Group calls go to the group's coordinator, following
//!   `NOT_COORDINATOR` (see the `group` module).
//!
//! # Routing
//!
//! The client routes requests itself, as Kafka clients do:
//!
//! - The bootstrap list (`host:port[,host:port...]`) is tried in order until
//!   a node answers; that node is the *default node*, which serves calls
//!   that any node serves (topic admin, `DescribeTopic`, `DescribeCluster`,
//!   `ListTopics`; the broker forwards what needs the controller). When it
//!   cannot be reached, the next bootstrap address, then the other known
//!   nodes, take over.
//! - The first use of a topic loads its partition leaders (`DescribeTopic`)
//!   and, for leaders not known yet, every node's address
//!   (`DescribeCluster`). Produce, fetch and `ListOffsets` requests go to the
//!   partition's leader, over one connection per node shared by the whole
//!   client (made on first use).
//! - A partition whose leader is unknown (leader 0, or no address for it)
//!   goes to the default node, which forwards or redirects.
//! - `NOT_LEADER` naming the new leader (id and address, in the partition's
//!   error or the status's `google.rpc.ErrorInfo`) moves the partition at
//!   once; `NOT_LEADER` without one, `UNAVAILABLE`, or an unreachable node
//!   refreshes the topic's metadata. Refreshes are coalesced (concurrent
//!   requests for the same stale routes share one call) and spaced by
//!   [`ClientConfig::metadata_backoff`]; the failed request is then retried
//!   against the new leader ([`producer`] says what that means for order).
//!
//! On a single node every route leads to that node, over the one connection
//! made at [`Client::connect`].
//!
//! This crate owns the client side of the gRPC API in `runnel-proto` and
//! speaks the batch format of `runnel-batch`. It knows nothing of storage or
//! of the broker's insides; idempotence comes later.
//!
//! ```no_run
//! # async fn example() -> runnel_client::Result<()> {
//! use runnel_client::{Client, Producer, ProducerConfig, ProducerRecord};
//! let client = Client::connect("127.0.0.1:9740").await?;
//! let producer = Producer::new(&client, ProducerConfig::default()).await?;
//! let delivery = producer.send(ProducerRecord::new("orders", "hello").key("k1")).await?;
//! let stored = delivery.await?;
//! println!("stored at {}/{:?}", stored.partition, stored.offset);
//! producer.close().await?;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod client;
mod consumer;
mod error;
mod group;
mod metadata;
pub mod producer;

#[cfg(test)]
mod fake_cluster;
#[cfg(test)]
mod routing_tests;

pub use client::{Client, ClientConfig, OffsetSpec};
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartPosition};
pub use error::{Error, Result};
pub use group::{COORDINATOR_TIMEOUT, GroupConfig, GroupConsumer, RETRY_BACKOFF};
pub use producer::{
    Acks, Compression, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};
/// The proto types the client's calls take and return.
pub use runnel_proto::v1::{
    CleanupPolicy, DescribeClusterResponse, DescribeGroupResponse, ErrorReason, GroupSummary,
    NodeInfo, PartitionDescription, TopicConfig, TopicDescription, TopicSummary,
};
