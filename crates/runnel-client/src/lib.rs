//! The Rust client of Runnel.
//!
//! - [`Client`]: a connection to a cluster (one HTTP/2 connection, tuned for
//!   throughput) and the admin calls: create, delete, list and describe
//!   topics, describe the cluster, look up offsets.
//! - [`Producer`]: batching per partition (size and linger), compression,
//!   one produce stream with a window of requests in flight, retries,
//!   acks 0/1/all. Delivery is at least once (see [`producer`]).
//! - [`Consumer`]: reads a set of partitions from explicit positions
//!   (earliest, latest, offset, timestamp) with long-poll fetches, decoding
//!   and verifying batches itself.
//!
//! This crate owns the client side of the gRPC API in `runnel-proto` and
//! speaks the batch format of `runnel-batch`. It knows nothing of storage or
//! of the broker's insides; consumer groups and idempotence come later.
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
pub mod producer;

pub use client::{Client, ClientConfig, OffsetSpec};
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartPosition};
pub use error::{Error, Result};
pub use producer::{
    Acks, Compression, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};
/// The proto types the client's calls take and return.
pub use runnel_proto::v1::{
    CleanupPolicy, DescribeClusterResponse, ErrorReason, NodeInfo, PartitionDescription,
    TopicConfig, TopicDescription, TopicSummary,
};
