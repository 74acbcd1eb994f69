//! `runnel topic alter`.

use clap::Args;

use super::describe::{TopicJson, print_topic};
use crate::connect::{AdminArgs, explain};
use crate::output::OutputFormat;

const EXAMPLES: &str = "\
Partitions can only be added. The new ones start empty; records already stored
keep their partitions, but a key may hash to a new partition from now on (as in
Kafka), so per-key order holds only from here on. Consumer groups reading the
topic pick the new partitions up at their next heartbeat, from their reset policy.

Examples:
  runnel topic alter orders --partitions 12
  runnel topic alter orders --partitions 12 --output json

Output: text says the new count; json prints the topic as `runnel topic describe
--output json` does.";

/// Arguments of `runnel topic alter`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub(crate) struct AlterArgs {
    /// The topic to change.
    name: String,

    /// The new total number of partitions: more than the topic has now, at
    /// most 10000.
    #[arg(long, value_name = "N")]
    partitions: u32,
}

/// Adds the partitions.
pub(crate) async fn run(args: AlterArgs, admin: &AdminArgs) -> anyhow::Result<()> {
    let client = admin.connect.connect().await?;
    let topic = client
        .create_partitions(&args.name, args.partitions)
        .await
        .map_err(|e| explain(e, Some(&args.name)))?;
    match admin.output {
        OutputFormat::Json => print_topic(&TopicJson::from(&topic))?,
        OutputFormat::Text => println!(
            "topic \"{}\" now has {} partitions",
            topic.name,
            topic.partitions.len()
        ),
    }
    Ok(())
}
