//! Harness for the black-box broker tests: real `runnel broker` processes on
//! 127.0.0.1, the `runnel` CLI run as a user would, and gRPC clients.
//!
//! Shared by the test binaries through `#[path = "../support/mod.rs"] mod support;`
//! (each binary uses a different subset, hence the `dead_code` allowance at
//! the include site). See tests/README.md.

pub mod broker;
pub mod cli;
pub mod grpc;
pub mod metrics;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use broker::{Broker, BrokerOptions};
pub use cli::{CliOutput, run_cli};

/// The `runnel` binary cargo built for this test run.
pub fn runnel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_runnel"))
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is crates/runnel-cli.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a test body with an overall deadline, so that a hang fails the test
/// instead of stalling CI. Brokers owned by the future are killed when it is
/// dropped.
pub async fn with_deadline<T>(limit: Duration, body: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, body).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {limit:?}"),
    }
}

/// Polls `probe` until it returns `Some`, failing with `what` after `limit`.
/// For conditions outside this process (a port answering, an offset
/// reached); the interval is short and the wait bounded.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a broker, connects the gRPC clients and creates `topic` with
/// `partitions` partitions: the opening of most broker tests.
pub async fn start_with_topic(
    opts: BrokerOptions,
    topic: &str,
    partitions: u32,
) -> (Broker, grpc::Clients) {
    let broker = Broker::start(opts);
    let mut c = grpc::Clients::connect(broker.grpc_addr()).await;
    c.create_topic(topic, partitions).await;
    (broker, c)
}

/// A unique topic name for one test (brokers are per test, but names that
/// say which test made them help when reading a broker's log).
pub fn topic_name(test: &str) -> String {
    test.replace('_', "-")
}
