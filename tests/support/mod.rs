//! Harness for the black-box broker tests: real `runnel broker` processes on
//! 127.0.0.1, the `runnel` CLI run as a user would, and gRPC clients.
//!
//! Shared by the test binaries through `#[path = "../support/mod.rs"] mod support;`
//! (each binary uses a different subset, hence the `dead_code` allowance at
//! the include site). See tests/README.md.

pub mod broker;
pub mod cli;
pub mod cluster;
pub mod grpc;
pub mod metrics;
pub mod proxy;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use broker::{Broker, BrokerOptions};
pub use cli::{CliOutput, run_cli};
pub use cluster::{Cluster, ClusterOptions};

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

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// `ms` (since the epoch) as RFC 3339 in the zone `offset_minutes` east of
/// UTC, with milliseconds when they are not zero: `2023-11-14T23:13:24.500+01:00`.
pub fn rfc3339(ms: i64, offset_minutes: i64) -> String {
    let local = ms + offset_minutes * 60_000;
    let (days, in_day) = (local.div_euclid(86_400_000), local.rem_euclid(86_400_000));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, sec, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    let fraction = if milli == 0 {
        String::new()
    } else {
        format!(".{milli:03}")
    };
    let zone = if offset_minutes == 0 {
        "Z".to_string()
    } else {
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        let abs = offset_minutes.abs();
        format!("{sign}{:02}:{:02}", abs / 60, abs % 60)
    };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}{fraction}{zone}")
}

/// A unique topic name for one test (brokers are per test, but names that
/// say which test made them help when reading a broker's log).
pub fn topic_name(test: &str) -> String {
    test.replace('_', "-")
}
