//! `runnel group describe`.

use clap::Args;
use runnel_client::OffsetSpec;
use serde::Serialize;

use crate::connect::{AdminArgs, explain};
use crate::output::{OutputFormat, table};

const EXAMPLES: &str = "\
Examples:
  runnel group describe billing
  runnel group describe billing --output json | jq '.members[].assignments'

Output:
  text  the state, then a table of members (MEMBER, ASSIGNMENTS), then of offsets
        (TOPIC, PARTITION, COMMITTED, HIGH-WATERMARK, LAG)
  json  {\"group\":..,\"state\":..,
         \"members\":[{\"member_id\":..,\"assignments\":[{\"topic\":..,\"partition\":N}]}],
         \"offsets\":[{\"topic\":..,\"partition\":N,\"committed\":N,\"high_watermark\":N,\"lag\":N}]}
        members by id, offsets by topic and partition; lag = high_watermark - committed.
An unknown group fails with UNKNOWN_GROUP.";

/// Arguments of `runnel group describe`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub(crate) struct DescribeArgs {
    /// The group to describe.
    group: String,
}

#[derive(Serialize)]
struct GroupJson {
    group: String,
    state: String,
    members: Vec<MemberJson>,
    offsets: Vec<OffsetJson>,
}

#[derive(Serialize)]
struct MemberJson {
    member_id: String,
    assignments: Vec<AssignmentJson>,
}

#[derive(Serialize)]
struct AssignmentJson {
    topic: String,
    partition: u32,
}

#[derive(Serialize)]
struct OffsetJson {
    topic: String,
    partition: u32,
    committed: u64,
    high_watermark: u64,
    lag: u64,
}

/// Describes the group.
pub(crate) async fn run(args: DescribeArgs, admin: &AdminArgs) -> anyhow::Result<()> {
    let client = admin.connect.connect().await?;
    let d = client
        .describe_group(&args.group)
        .await
        .map_err(|e| explain(e, None))?;
    let mut offsets = Vec::with_capacity(d.offsets.len());
    for o in &d.offsets {
        // The coordinator knows the high watermark only of partitions its
        // node holds: ask the partition's leader otherwise.
        let high_watermark = match o.high_watermark {
            Some(h) => h,
            None => match client
                .list_offsets(&o.topic, o.partition, OffsetSpec::Latest)
                .await
            {
                Ok(h) => h,
                // A deleted topic keeps its committed offsets in the group.
                Err(e) => {
                    eprintln!(
                        "warning: no high watermark for {}-{} ({e}); lag shown as 0",
                        o.topic, o.partition
                    );
                    o.committed
                }
            },
        };
        offsets.push(OffsetJson {
            topic: o.topic.clone(),
            partition: o.partition,
            committed: o.committed,
            high_watermark,
            lag: high_watermark.saturating_sub(o.committed),
        });
    }
    let members: Vec<MemberJson> = d
        .members
        .iter()
        .map(|m| MemberJson {
            member_id: m.member_id.clone(),
            assignments: m
                .assignment
                .iter()
                .flat_map(|t| {
                    t.partitions.iter().map(|&partition| AssignmentJson {
                        topic: t.topic.clone(),
                        partition,
                    })
                })
                .collect(),
        })
        .collect();
    let json = GroupJson {
        group: d.group,
        state: d.state,
        members,
        offsets,
    };
    match admin.output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&json)?),
        OutputFormat::Text => {
            println!(
                "group {} is {} ({} member(s), assignor {}, epoch {}, coordinator node {})",
                json.group,
                json.state,
                json.members.len(),
                d.assignor,
                d.group_epoch,
                d.coordinator_id
            );
            if !json.members.is_empty() {
                let rows: Vec<Vec<String>> = json
                    .members
                    .iter()
                    .map(|m| {
                        let a: Vec<String> = m
                            .assignments
                            .iter()
                            .map(|a| format!("{}-{}", a.topic, a.partition))
                            .collect();
                        vec![m.member_id.clone(), a.join(",")]
                    })
                    .collect();
                print!("{}", table(&["MEMBER", "ASSIGNMENTS"], &rows));
            }
            if !json.offsets.is_empty() {
                let rows: Vec<Vec<String>> = json
                    .offsets
                    .iter()
                    .map(|o| {
                        vec![
                            o.topic.clone(),
                            o.partition.to_string(),
                            o.committed.to_string(),
                            o.high_watermark.to_string(),
                            o.lag.to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["TOPIC", "PARTITION", "COMMITTED", "HIGH-WATERMARK", "LAG"],
                        &rows
                    )
                );
            }
        }
    }
    Ok(())
}
