//! Black-box tests of consumer groups (issue 6): real `runnel broker`
//! processes, `runnel consume --group` members as child processes (killed
//! with SIGKILL, stopped with SIGTERM), `runnel group` admin commands and
//! raw GroupService calls. See tests/README.md for the harness.

#[allow(dead_code, unreachable_pub, unused_imports)]
#[path = "../support/mod.rs"]
mod support;

mod bench;
mod cluster;
mod errors;
mod member;
mod sharing;
