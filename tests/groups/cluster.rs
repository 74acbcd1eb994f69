//! Groups on a 3-node cluster: the coordinator's node killed (the group
//! goes on with its committed offsets); partitions added to the topic.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use runnel_proto::v1::admin_service_client::AdminServiceClient;
use runnel_proto::v1::group_service_client::GroupServiceClient;
use runnel_proto::v1::{DescribeClusterRequest, FindCoordinatorRequest};

use crate::member::{Member, committed, describe, wait_balanced, wait_committed};
use crate::support::cluster::probe_channel;
use crate::support::{Cluster, ClusterOptions, eventually, with_deadline};

#[tokio::test(flavor = "multi_thread")]
async fn the_group_survives_its_coordinator_s_node() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    with_deadline(Duration::from_secs(400), async {
        cluster.create_topic(1, "events", 6, 3).await;
        let bootstrap = cluster.bootstrap();
        let extra = ["--session-timeout-ms", "6000", "--auto-commit-ms", "200"];
        let mut a = Member::start(&bootstrap, "events", "gc", &extra);
        let mut b = Member::start(&bootstrap, "events", "gc", &extra);
        wait_balanced(&bootstrap, "gc", 2, 6, Duration::from_secs(120)).await;
        // Every node lists the group (it asks the coordinators).
        for id in cluster.ids() {
            let out = cluster.cli_ok(id, &["group", "list", "--output", "json"], "");
            let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
            assert_eq!(v["groups"][0]["group"], "gc", "node {id}: {v}");
            assert_eq!(v["groups"][0]["members"], 2, "node {id}: {v}");
        }
        let produce = |via: &str, prefix: &str| {
            let input: String = (0..300).map(|i| format!("{prefix}-{i}\n")).collect();
            let out = crate::support::run_cli(&["produce", "events", "--bootstrap", via], &input);
            assert!(out.status.success(), "{out}");
        };
        produce(&bootstrap, "one");
        let first = high_watermarks(&cluster).await;
        // High watermarks count control batches (Raft no-ops) too.
        assert!(first.values().sum::<u64>() >= 300, "{first:?}");
        wait_committed(&bootstrap, "gc", &first, Duration::from_secs(120)).await;
        // Kill the coordinator's node.
        let coordinator = {
            let mut g = GroupServiceClient::new(probe_channel(cluster.addr(1)));
            g.find_coordinator(FindCoordinatorRequest { group: "gc".into() })
                .await
                .expect("find coordinator")
                .into_inner()
                .node_id
        };
        assert!(coordinator > 0);
        let before = committed(&describe(&bootstrap, "gc").expect("describe"));
        cluster.kill9(coordinator);
        let killed = Instant::now();
        let live: Vec<String> = cluster
            .live_ids()
            .iter()
            .map(|&id| cluster.addr(id).to_string())
            .collect();
        let live = live.join(",");
        // The new coordinator has the offsets, and the members rejoin it.
        let d = eventually(Duration::from_secs(120), "a new coordinator", || {
            let d = describe(&live, "gc");
            async move { d }
        })
        .await;
        let after = committed(&d);
        assert!(
            before
                .iter()
                .all(|(p, o)| after.get(p).copied().unwrap_or(0) >= *o),
            "committed offsets lost: {before:?} -> {after:?}"
        );
        wait_balanced(&live, "gc", 2, 6, Duration::from_secs(120)).await;
        println!(
            "COORDINATOR FAILOVER: members rebalanced {:?} after kill -9",
            killed.elapsed()
        );
        produce(&live, "two");
        let second = high_watermarks(&cluster).await;
        assert!(second.values().sum::<u64>() >= 600, "{second:?}");
        wait_committed(&live, "gc", &second, Duration::from_secs(120)).await;
        let lines = [a.terminate().await, b.terminate().await].concat();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (_, _, v) in &lines {
            *seen.entry(v.clone()).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 600, "every record consumed");
        // Redelivery is possible only for the uncommitted tail at the
        // failover; everything before `before` was read once.
        for (p, o, v) in &lines {
            if seen[v] > 1 {
                assert!(
                    *o >= before.get(p).copied().unwrap_or(0),
                    "{v} at {p}/{o} redelivered"
                );
            }
        }
    })
    .await;
}

/// The highest high watermark any live node reports, per partition.
async fn high_watermarks(c: &Cluster) -> BTreeMap<u32, u64> {
    let mut m = BTreeMap::new();
    for id in c.live_ids() {
        if let Some(d) = c.describe_on(id, "events").await {
            for p in d.partitions {
                let e = m.entry(p.id).or_insert(0);
                *e = (*e).max(p.high_watermark);
            }
        }
    }
    m
}

/// `topic alter --partitions` sent to a node that is not the controller:
/// every node serves the new partitions at once, and a group reading the
/// topic takes them over at its next heartbeat and reads what they hold
/// (its reset policy is earliest), each partition owned by one member.
#[tokio::test(flavor = "multi_thread")]
async fn partitions_added_to_a_topic_are_placed_served_and_picked_up_by_groups() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    with_deadline(Duration::from_secs(300), async {
        cluster.create_topic(1, "events", 2, 3).await;
        let bootstrap = cluster.bootstrap();
        let extra = ["--session-timeout-ms", "6000", "--auto-commit-ms", "200"];
        let mut a = Member::start(&bootstrap, "events", "gp", &extra);
        let mut b = Member::start(&bootstrap, "events", "gp", &extra);
        wait_balanced(&bootstrap, "gp", 2, 2, Duration::from_secs(120)).await;

        let controller = AdminServiceClient::new(probe_channel(cluster.addr(1)))
            .describe_cluster(DescribeClusterRequest {})
            .await
            .expect("describe cluster")
            .into_inner()
            .controller_id;
        let via = cluster
            .ids()
            .into_iter()
            .find(|&id| id != controller)
            .expect("a node that is not the controller");
        let json = cluster.cli_ok(
            via,
            &[
                "topic",
                "alter",
                "events",
                "--partitions",
                "6",
                "--output",
                "json",
            ],
            "",
        );
        let v: serde_json::Value = serde_json::from_str(json.trim()).expect("json");
        assert_eq!(v["partitions"].as_array().map(Vec::len), Some(6), "{json}");
        // Every node knows the new partitions (the call waits up to 2 s
        // for that, best effort: waited for here, on a loaded machine),
        // and the new replicas are spread: each node holds a replica of
        // each (RF 3) and the preferred leaders differ.
        for id in cluster.ids() {
            let d = eventually(
                Duration::from_secs(20),
                "6 partitions on every node",
                || async {
                    let d = cluster.describe_on(id, "events").await?;
                    (d.partitions.len() == 6).then_some(d)
                },
            )
            .await;
            for p in &d.partitions {
                let mut replicas = p.replicas.clone();
                replicas.sort_unstable();
                assert_eq!(replicas, vec![1, 2, 3], "node {id}: {d:?}");
            }
        }
        // Records go to every partition, acks=all, through every node.
        for p in 0..6u32 {
            let via = cluster.addr(cluster.ids()[p as usize % 3]).to_string();
            let input: String = (0..50).map(|i| format!("p{p}-{i}\n")).collect();
            let part = p.to_string();
            let out = crate::support::run_cli(
                &[
                    "produce",
                    "events",
                    "--partition",
                    &part,
                    "--acks",
                    "all",
                    "--bootstrap",
                    &via,
                ],
                &input,
            );
            assert!(out.status.success(), "{out}");
        }
        let d = wait_balanced(&bootstrap, "gp", 2, 6, Duration::from_secs(120)).await;
        assert_eq!(
            crate::member::assignments(&d)
                .values()
                .map(std::collections::BTreeSet::len)
                .collect::<Vec<_>>(),
            vec![3, 3],
            "{d}"
        );
        let hwm = high_watermarks(&cluster).await;
        assert_eq!(hwm.len(), 6, "{hwm:?}");
        wait_committed(&bootstrap, "gp", &hwm, Duration::from_secs(120)).await;
        let per_member = [a.terminate().await, b.terminate().await];
        let mut owner: BTreeMap<u32, usize> = BTreeMap::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (i, lines) in per_member.iter().enumerate() {
            for (p, _, v) in lines {
                assert_eq!(*owner.entry(*p).or_insert(i), i, "partition {p} read twice");
                *seen.entry(v.clone()).or_insert(0) += 1;
            }
        }
        assert_eq!(seen.len(), 300, "every record consumed");
        assert!(seen.values().all(|&n| n == 1), "none consumed twice");
    })
    .await;
}
