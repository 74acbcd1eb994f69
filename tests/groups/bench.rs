//! `runnel bench consume` and `runnel bench group` on a replicated topic:
//! they stop at the log end although Raft no-ops take offsets that are
//! never delivered, read every record, and the group mode reports its
//! rebalance time and deletes the group it made.

use std::time::Duration;

use crate::support::{Cluster, ClusterOptions, with_deadline};

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_consume_and_group_drain_a_replicated_topic() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    with_deadline(Duration::from_secs(300), async {
        cluster.create_topic(1, "b", 4, 3).await;
        let bootstrap = cluster.bootstrap();
        let run = |args: &[&str]| {
            let mut all = vec!["bench"];
            all.extend_from_slice(args);
            all.extend_from_slice(&["--bootstrap", &bootstrap, "--output", "json"]);
            let out = crate::support::run_cli(&all, "");
            assert!(out.status.success(), "runnel {all:?}: {out}");
            json(&out.stdout)
        };
        let produced = run(&[
            "produce",
            "--topic",
            "b",
            "--partitions",
            "4",
            "--messages",
            "20000",
            "--record-size",
            "100",
            "--acks",
            "all",
        ]);
        assert_eq!(produced["messages"], 20000, "{produced}");

        let consumed = run(&["consume", "--topic", "b"]);
        assert_eq!(consumed["messages"], 20000, "{consumed}");
        assert_eq!(consumed["bytes"], 2_000_000, "{consumed}");

        let group = run(&["group", "--topic", "b", "--consumers", "2"]);
        assert_eq!(group["mode"], "group", "{group}");
        assert_eq!(group["consumers"], 2, "{group}");
        // At least once: every record, possibly a few twice.
        assert!(
            group["messages"].as_u64().is_some_and(|n| n >= 20000),
            "{group}"
        );
        let rebalance = group["rebalance_ms"].as_f64().expect("rebalance_ms");
        assert!(rebalance >= 0.0, "{group}");
        eprintln!("bench group: {group}");

        // The bench's own group is gone.
        let out = crate::support::run_cli(
            &[
                "group",
                "list",
                "--bootstrap",
                &bootstrap,
                "--output",
                "json",
            ],
            "",
        );
        assert!(out.status.success(), "{out}");
        let listed = json(&out.stdout);
        assert_eq!(
            listed["groups"].as_array().map(Vec::len),
            Some(0),
            "{listed}"
        );
    })
    .await;
}
