//! Black-box tests of issue 4: real `runnel broker` processes on 127.0.0.1,
//! driven through the generated gRPC clients and the `runnel` CLI exactly as
//! users and scripts drive them. See tests/README.md for the harness.

#[allow(dead_code, unreachable_pub, unused_imports)]
#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod cli_contract;
mod durability;
mod metrics;
mod partitions;
mod round_trip;
mod services;
