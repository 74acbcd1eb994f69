//! `runnel group list`.

use clap::Args;
use serde::Serialize;

use crate::connect::{AdminArgs, explain};
use crate::output::{OutputFormat, table};

const EXAMPLES: &str = "\
Examples:
  runnel group list
  runnel group list --output json | jq -r '.groups[].group'

Output:
  text  a table: GROUP, STATE, MEMBERS
  json  {\"groups\":[{\"group\":..,\"state\":..,\"members\":N}, ...]}, sorted by name
States: Empty (no members), Stable, Reconciling (partitions are moving).";

/// Arguments of `runnel group list`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub(crate) struct ListArgs {}

#[derive(Serialize)]
struct ListJson {
    groups: Vec<SummaryJson>,
}

#[derive(Serialize)]
struct SummaryJson {
    group: String,
    state: String,
    members: u32,
}

/// Lists the groups.
pub(crate) async fn run(_args: ListArgs, admin: &AdminArgs) -> anyhow::Result<()> {
    let client = admin.connect.connect().await?;
    let groups = client.list_groups().await.map_err(|e| explain(e, None))?;
    match admin.output {
        OutputFormat::Json => {
            let json = ListJson {
                groups: groups
                    .into_iter()
                    .map(|g| SummaryJson {
                        group: g.group,
                        state: g.state,
                        members: g.members,
                    })
                    .collect(),
            };
            println!("{}", serde_json::to_string(&json)?);
        }
        OutputFormat::Text if groups.is_empty() => {
            println!("no groups (a consumer creates one with `runnel consume TOPIC --group NAME`)");
        }
        OutputFormat::Text => {
            let rows: Vec<Vec<String>> = groups
                .iter()
                .map(|g| vec![g.group.clone(), g.state.clone(), g.members.to_string()])
                .collect();
            print!("{}", table(&["GROUP", "STATE", "MEMBERS"], &rows));
        }
    }
    Ok(())
}
