//! `runnel topic create`.

use clap::Args;
use runnel_client::TopicConfig;

use super::describe::{TopicJson, print_topic};
use crate::connect::{AdminArgs, explain};
use crate::output::OutputFormat;

const EXAMPLES: &str = "\
Absent settings take the broker's defaults: 1 partition, replication factor 1,
7 days of retention, no size limit, 8 MiB records, 1 GiB segments.

Examples:
  runnel topic create orders
  runnel topic create clicks --partitions 12 --retention-ms 3600000 --retention-bytes 10000000000
  runnel topic create audit --retention-ms -1 --output json

Output: text says what was created; json prints the topic as `runnel topic describe
--output json` does.";

/// Arguments of `runnel topic create`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub(crate) struct CreateArgs {
    /// Topic name: 1-249 characters of a-z, A-Z, 0-9, '.', '_' and '-'.
    name: String,

    /// Number of partitions, 1-10000.
    #[arg(long, value_name = "N")]
    partitions: Option<u32>,

    /// Replicas per partition (at most the number of nodes).
    #[arg(long, value_name = "R")]
    replication_factor: Option<u32>,

    /// Delete data older than this many milliseconds; -1 keeps it forever.
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    retention_ms: Option<i64>,

    /// Delete the oldest segments while a partition holds more than this many
    /// bytes; -1 for no limit.
    #[arg(long, value_name = "B", allow_negative_numbers = true)]
    retention_bytes: Option<i64>,

    /// Largest batch accepted, in bytes (1 KiB-64 MiB).
    #[arg(long, value_name = "B")]
    max_record_bytes: Option<u32>,

    /// Segment size at which a partition's log rolls, in bytes (1 MiB-1 GiB).
    #[arg(long, value_name = "B")]
    segment_bytes: Option<u64>,
}

impl CreateArgs {
    fn config(&self) -> TopicConfig {
        TopicConfig {
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            max_record_bytes: self.max_record_bytes,
            segment_bytes: self.segment_bytes,
            ..TopicConfig::default()
        }
    }
}

/// Creates the topic.
pub(crate) async fn run(args: CreateArgs, admin: &AdminArgs) -> anyhow::Result<()> {
    let client = admin.connect.connect().await?;
    let topic = client
        .create_topic(&args.name, args.config())
        .await
        .map_err(|e| explain(e, Some(&args.name)))?;
    match admin.output {
        OutputFormat::Json => print_topic(&TopicJson::from(&topic))?,
        OutputFormat::Text => {
            let replication = topic
                .config
                .as_ref()
                .and_then(|c| c.replication_factor)
                .unwrap_or(1);
            println!(
                "created topic \"{}\" with {} partition{}, replication factor {replication}",
                topic.name,
                topic.partitions.len(),
                if topic.partitions.len() == 1 { "" } else { "s" }
            );
        }
    }
    Ok(())
}
