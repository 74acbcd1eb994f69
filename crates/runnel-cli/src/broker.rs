//! `runnel broker` (placeholder until its implementation lands).

use std::process::ExitCode;

/// Arguments of `runnel broker`.
#[derive(Debug, clap::Args)]
pub(crate) struct BrokerArgs {}

/// Runs `runnel broker`.
pub(crate) async fn run(_args: BrokerArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`runnel broker` is not built yet")
}
