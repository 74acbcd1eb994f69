//! `runnel topic describe`.

use clap::Args;
use runnel_client::{CleanupPolicy, TopicConfig, TopicDescription};
use serde::Serialize;

use crate::connect::{AdminArgs, explain};
use crate::output::{OutputFormat, table};

const EXAMPLES: &str = "\
Examples:
  runnel topic describe orders
  runnel topic describe orders --output json | jq '[.partitions[].high_watermark] | add'

Output:
  text  the topic's settings, then a table with one row per partition: PARTITION,
        LEADER, REPLICAS, ISR, LOG-START, HIGH-WATERMARK, LOG-END, SIZE (bytes)
  json  {\"name\":..,\"partitions\":[{\"id\":0,\"leader\":1,\"replicas\":[1],\"isr\":[1],
        \"log_start_offset\":0,\"high_watermark\":N,\"log_end_offset\":N,\"size_bytes\":B},
        ...],\"config\":{\"partitions\":..,\"replication_factor\":..,\"retention_ms\":..,
        \"retention_bytes\":..,\"max_record_bytes\":..,\"segment_bytes\":..,
        \"cleanup_policy\":\"delete\"}}

Consumers read below the high watermark; log-end is past it while records await
replication.";

/// Arguments of `runnel topic describe`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub(crate) struct DescribeArgs {
    /// The topic to describe.
    name: String,
}

/// A topic as `--output json` prints it. The key order is part of the
/// CLI contract: name, partitions, then the additions.
#[derive(Debug, Serialize)]
pub(crate) struct TopicJson {
    name: String,
    partitions: Vec<PartitionJson>,
    config: ConfigJson,
}

#[derive(Debug, Serialize)]
struct PartitionJson {
    id: u32,
    leader: u32,
    replicas: Vec<u32>,
    isr: Vec<u32>,
    log_start_offset: u64,
    high_watermark: u64,
    log_end_offset: u64,
    size_bytes: u64,
}

#[derive(Debug, Serialize)]
struct ConfigJson {
    partitions: Option<u32>,
    replication_factor: Option<u32>,
    retention_ms: Option<i64>,
    retention_bytes: Option<i64>,
    max_record_bytes: Option<u32>,
    segment_bytes: Option<u64>,
    cleanup_policy: &'static str,
}

impl From<&TopicDescription> for TopicJson {
    fn from(topic: &TopicDescription) -> Self {
        let config = topic.config.unwrap_or_default();
        TopicJson {
            name: topic.name.clone(),
            partitions: topic
                .partitions
                .iter()
                .map(|p| PartitionJson {
                    id: p.id,
                    leader: p.leader,
                    replicas: p.replicas.clone(),
                    isr: p.isr.clone(),
                    log_start_offset: p.log_start_offset,
                    high_watermark: p.high_watermark,
                    log_end_offset: p.log_end_offset,
                    size_bytes: p.size_bytes,
                })
                .collect(),
            config: ConfigJson {
                partitions: config.partitions,
                replication_factor: config.replication_factor,
                retention_ms: config.retention_ms,
                retention_bytes: config.retention_bytes,
                max_record_bytes: config.max_record_bytes,
                segment_bytes: config.segment_bytes,
                cleanup_policy: cleanup_policy(&config),
            },
        }
    }
}

fn cleanup_policy(config: &TopicConfig) -> &'static str {
    match config.cleanup_policy() {
        CleanupPolicy::Compact => "compact",
        CleanupPolicy::Delete | CleanupPolicy::Unspecified => "delete",
    }
}

/// Prints a topic as one line of JSON.
pub(crate) fn print_topic(topic: &TopicJson) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(topic)?);
    Ok(())
}

/// The text form: settings, then one row per partition.
fn text(topic: &TopicDescription) -> String {
    let config = topic.config.unwrap_or_default();
    let show = |v: Option<i64>| v.map_or("default".to_string(), |v| v.to_string());
    let mut out = format!(
        "topic \"{}\": {} partition{}, replication factor {}\n\
         retention.ms={} retention.bytes={} max.record.bytes={} segment.bytes={} cleanup.policy={}\n\n",
        topic.name,
        topic.partitions.len(),
        if topic.partitions.len() == 1 { "" } else { "s" },
        config
            .replication_factor
            .map_or("default".to_string(), |r| r.to_string()),
        show(config.retention_ms),
        show(config.retention_bytes),
        show(config.max_record_bytes.map(i64::from)),
        config
            .segment_bytes
            .map_or("default".to_string(), |b| b.to_string()),
        cleanup_policy(&config),
    );
    let list = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let rows: Vec<Vec<String>> = topic
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.id.to_string(),
                p.leader.to_string(),
                list(&p.replicas),
                list(&p.isr),
                p.log_start_offset.to_string(),
                p.high_watermark.to_string(),
                p.log_end_offset.to_string(),
                p.size_bytes.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "PARTITION",
            "LEADER",
            "REPLICAS",
            "ISR",
            "LOG-START",
            "HIGH-WATERMARK",
            "LOG-END",
            "SIZE",
        ],
        &rows,
    ));
    out
}

/// Describes the topic.
pub(crate) async fn run(args: DescribeArgs, admin: &AdminArgs) -> anyhow::Result<()> {
    let client = admin.connect.connect().await?;
    let topic = client
        .describe_topic(&args.name)
        .await
        .map_err(|e| explain(e, Some(&args.name)))?;
    match admin.output {
        OutputFormat::Json => print_topic(&TopicJson::from(&topic))?,
        OutputFormat::Text => print!("{}", text(&topic)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_client::PartitionDescription;

    fn topic() -> TopicDescription {
        TopicDescription {
            name: "orders".into(),
            config: Some(TopicConfig {
                partitions: Some(2),
                replication_factor: Some(1),
                retention_ms: Some(-1),
                retention_bytes: Some(-1),
                max_record_bytes: Some(8 << 20),
                segment_bytes: Some(1 << 30),
                cleanup_policy: CleanupPolicy::Delete as i32,
            }),
            partitions: (0..2)
                .map(|id| PartitionDescription {
                    id,
                    leader: 1,
                    replicas: vec![1],
                    isr: vec![1],
                    log_start_offset: 0,
                    high_watermark: 10 * u64::from(id),
                    log_end_offset: 10 * u64::from(id),
                    size_bytes: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn json_starts_with_the_contract_keys() {
        let json = serde_json::to_string(&TopicJson::from(&topic())).unwrap();
        assert!(
            json.starts_with(
                "{\"name\":\"orders\",\"partitions\":[{\"id\":0,\"leader\":1,\"replicas\":[1],\
                 \"isr\":[1],\"log_start_offset\":0,\"high_watermark\":0,"
            ),
            "{json}"
        );
        assert!(json.contains("\"cleanup_policy\":\"delete\""), "{json}");
    }

    #[test]
    fn text_has_a_row_per_partition() {
        let text = text(&topic());
        assert!(text.starts_with("topic \"orders\": 2 partitions, replication factor 1\n"));
        assert!(text.contains("retention.ms=-1"), "{text}");
        assert!(text.contains("\nPARTITION  LEADER"), "{text}");
        assert_eq!(text.lines().count(), 6, "{text}");
    }
}
