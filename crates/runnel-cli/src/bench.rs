//! `runnel bench` (placeholder until its implementation lands).

use std::process::ExitCode;

/// Arguments of `runnel bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {}

/// Runs `runnel bench`.
pub(crate) async fn run(_args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`runnel bench` is not built yet")
}
