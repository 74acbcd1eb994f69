//! `runnel topic` (placeholder until its implementation lands).

use std::process::ExitCode;

/// Arguments of `runnel topic`.
#[derive(Debug, clap::Args)]
pub(crate) struct TopicArgs {}

/// Runs `runnel topic`.
pub(crate) async fn run(_args: TopicArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`runnel topic` is not built yet")
}
