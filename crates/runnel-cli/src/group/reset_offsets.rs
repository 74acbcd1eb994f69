//! `runnel group reset-offsets`.

use clap::Args;
use runnel_client::OffsetSpec;
use serde::Serialize;

use crate::connect::{AdminArgs, explain};
use crate::output::{OutputFormat, table};

const EXAMPLES: &str = "\
Sets the group's committed offset of every partition of the topic; its next
member starts there. Only while the group has no members (GROUP_NOT_EMPTY
otherwise): stop its consumers first. Creates the group if it does not exist.

Examples:
  runnel group reset-offsets billing --topic orders --to-earliest    # replay everything stored
  runnel group reset-offsets billing --topic orders --to-latest      # skip to the end
  runnel group reset-offsets billing --topic orders --to-offset 1000
  runnel group reset-offsets billing --topic orders --to-time 2024-05-01T12:00:00Z
  runnel group reset-offsets billing --topic orders --to-time 1714564800000

Output:
  text  a table: PARTITION, OFFSET
  json  {\"group\":..,\"topic\":..,\"offsets\":[{\"partition\":N,\"offset\":N}, ...]}";

/// Arguments of `runnel group reset-offsets`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
#[command(group(clap::ArgGroup::new("to").required(true)
    .args(["to_earliest", "to_latest", "to_offset", "to_time"])))]
pub(crate) struct ResetOffsetsArgs {
    /// The group.
    group: String,

    /// The topic whose offsets to set (every partition).
    #[arg(long, value_name = "TOPIC")]
    topic: String,

    /// To the first record still stored.
    #[arg(long)]
    to_earliest: bool,

    /// To the high watermark (only records produced from now on).
    #[arg(long)]
    to_latest: bool,

    /// To this offset in every partition.
    #[arg(long, value_name = "N")]
    to_offset: Option<u64>,

    /// To the first record at or after this time: RFC 3339 or milliseconds
    /// since the Unix epoch (as `consume --from-time`).
    #[arg(long, value_name = "TIME", value_parser = crate::consume::parse_time)]
    to_time: Option<i64>,
}

#[derive(Serialize)]
struct ResetJson {
    group: String,
    topic: String,
    offsets: Vec<OffsetJson>,
}

#[derive(Serialize)]
struct OffsetJson {
    partition: u32,
    offset: u64,
}

/// Resets the offsets.
pub(crate) async fn run(args: ResetOffsetsArgs, admin: &AdminArgs) -> anyhow::Result<()> {
    let spec = match (args.to_earliest, args.to_latest, args.to_time) {
        (true, _, _) => Some(OffsetSpec::Earliest),
        (_, true, _) => Some(OffsetSpec::Latest),
        (_, _, Some(ms)) => Some(OffsetSpec::Timestamp(ms)),
        _ => None,
    };
    let client = admin.connect.connect().await?;
    let set = client
        .reset_offsets(&args.group, &args.topic, spec, args.to_offset)
        .await
        .map_err(|e| explain(e, Some(&args.topic)))?;
    match admin.output {
        OutputFormat::Json => {
            let json = ResetJson {
                group: args.group,
                topic: args.topic,
                offsets: set
                    .into_iter()
                    .map(|(partition, offset)| OffsetJson { partition, offset })
                    .collect(),
            };
            println!("{}", serde_json::to_string(&json)?);
        }
        OutputFormat::Text => {
            let rows: Vec<Vec<String>> = set
                .iter()
                .map(|(p, o)| vec![p.to_string(), o.to_string()])
                .collect();
            print!("{}", table(&["PARTITION", "OFFSET"], &rows));
        }
    }
    Ok(())
}
