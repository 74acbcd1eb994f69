//! Black-box fault tests of issue 5: 3-node clusters of real `runnel
//! broker` processes on 127.0.0.1 (each with its own data directory),
//! killed, paused, cut off by proxies and restarted while a client writes
//! with acks=all; then every node's log is read back and compared with what
//! was acknowledged. See tests/README.md for the harness.
//!
//! A cluster test holds every place of the harness's concurrency cap, so
//! the tests of this binary run one after another whatever
//! `--test-threads` says.

#[allow(dead_code, unreachable_pub, unused_imports)]
#[path = "../support/mod.rs"]
mod support;

mod balance;
mod faults;
mod history;
mod metadata;
mod restart;
