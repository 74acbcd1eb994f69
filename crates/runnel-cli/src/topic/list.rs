//! `runnel topic list`.

use clap::Args;
use serde::Serialize;

use crate::connect::{AdminArgs, explain};
use crate::output::{OutputFormat, table};

const EXAMPLES: &str = "\
Examples:
  runnel topic list
  runnel topic list --output json | jq -r '.topics[].name'

Output:
  text  a table: NAME, PARTITIONS, REPLICATION
  json  {\"topics\":[{\"name\":..,\"partitions\":N,\"replication_factor\":R}, ...]}, sorted by name";

/// Arguments of `runnel topic list`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub(crate) struct ListArgs {}

#[derive(Serialize)]
struct ListJson {
    topics: Vec<SummaryJson>,
}

#[derive(Serialize)]
struct SummaryJson {
    name: String,
    partitions: u32,
    replication_factor: u32,
}

/// Lists the topics.
pub(crate) async fn run(_args: ListArgs, admin: &AdminArgs) -> anyhow::Result<()> {
    let client = admin.connect.connect().await?;
    let topics = client.list_topics().await.map_err(|e| explain(e, None))?;
    match admin.output {
        OutputFormat::Json => {
            let json = ListJson {
                topics: topics
                    .into_iter()
                    .map(|t| SummaryJson {
                        name: t.name,
                        partitions: t.partitions,
                        replication_factor: t.replication_factor,
                    })
                    .collect(),
            };
            println!("{}", serde_json::to_string(&json)?);
        }
        OutputFormat::Text if topics.is_empty() => {
            println!("no topics (create one with `runnel topic create NAME`)");
        }
        OutputFormat::Text => {
            let rows: Vec<Vec<String>> = topics
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.partitions.to_string(),
                        t.replication_factor.to_string(),
                    ]
                })
                .collect();
            print!("{}", table(&["NAME", "PARTITIONS", "REPLICATION"], &rows));
        }
    }
    Ok(())
}
