//! `runnel produce` (placeholder until its implementation lands).

use std::process::ExitCode;

/// Arguments of `runnel produce`.
#[derive(Debug, clap::Args)]
pub(crate) struct ProduceArgs {}

/// Runs `runnel produce`.
pub(crate) async fn run(_args: ProduceArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`runnel produce` is not built yet")
}
