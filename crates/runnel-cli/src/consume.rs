//! `runnel consume` (placeholder until its implementation lands).

use std::process::ExitCode;

/// Arguments of `runnel consume`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConsumeArgs {}

/// Runs `runnel consume`.
pub(crate) async fn run(_args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`runnel consume` is not built yet")
}
