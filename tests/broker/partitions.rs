//! `runnel topic alter --partitions N` on one node: the new partitions
//! serve produce and fetch at once, survive a restart, and every bad grow
//! is refused without changing anything.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Broker, BrokerOptions, with_deadline};

const LIMIT: Duration = Duration::from_secs(120);

fn partition_count(broker: &Broker, topic: &str) -> usize {
    let json = broker.cli_ok(&["topic", "describe", topic, "--output", "json"], "");
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    v["partitions"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn topic_alter_adds_partitions_that_serve_at_once_and_survive_a_restart() {
    with_deadline(LIMIT, async {
        let mut broker = Broker::start(BrokerOptions::flush("always"));
        broker.cli_ok(&["topic", "create", "grow", "--partitions", "2"], "");
        broker.cli_ok(&["produce", "grow", "--partition", "1"], "old-1\n");

        let out = broker.cli_ok(&["topic", "alter", "grow", "--partitions", "3"], "");
        assert!(out.contains("3 partitions"), "{out}");
        let json = broker.cli_ok(
            &[
                "topic",
                "alter",
                "grow",
                "--partitions",
                "5",
                "--output",
                "json",
            ],
            "",
        );
        let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        let parts = v["partitions"].as_array().cloned().unwrap_or_default();
        assert_eq!(parts.len(), 5, "{json}");
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p["id"], i, "{json}");
            let records = u64::from(i == 1);
            assert_eq!(p["high_watermark"], records, "{json}");
        }

        // The new partitions take records and serve them back.
        broker.cli_ok(&["produce", "grow", "--partition", "4"], "new-4a\nnew-4b\n");
        let read = |broker: &Broker, p: &str| {
            broker.cli_ok(
                &[
                    "consume",
                    "grow",
                    "--partition",
                    p,
                    "--from-beginning",
                    "--max-messages",
                    "2",
                    "--timeout-ms",
                    "2000",
                ],
                "",
            )
        };
        assert_eq!(read(&broker, "4"), "new-4a\nnew-4b\n");
        assert_eq!(
            read(&broker, "1"),
            "old-1\n",
            "old partitions keep their records"
        );

        // Refused, changing nothing: shrink, same count, too many, unknown
        // topic, the internal offsets topic.
        for (case, args, needle) in [
            (
                1,
                &["topic", "alter", "grow", "--partitions", "4"][..],
                "only grow",
            ),
            (
                2,
                &["topic", "alter", "grow", "--partitions", "5"],
                "only grow",
            ),
            (
                3,
                &["topic", "alter", "grow", "--partitions", "10001"],
                "10000",
            ),
            (4, &["topic", "alter", "nope", "--partitions", "9"], "nope"),
            (
                5,
                &["topic", "alter", "__consumer_offsets", "--partitions", "99"],
                "internal",
            ),
        ] {
            let out = broker.cli(args, "");
            assert!(!out.status.success(), "case {case} succeeded: {out}");
            assert!(out.stderr.contains(needle), "case {case}: {out}");
        }
        assert_eq!(partition_count(&broker, "grow"), 5);

        // kill -9 with flush=always: the grow and the acknowledged records
        // on the new partition are there after the restart.
        broker.kill9();
        broker.restart();
        assert_eq!(partition_count(&broker, "grow"), 5);
        assert_eq!(read(&broker, "4"), "new-4a\nnew-4b\n");
        broker.cli_ok(&["produce", "grow", "--partition", "3"], "after\n");
        assert_eq!(read(&broker, "3"), "after\n");
    })
    .await;
}
