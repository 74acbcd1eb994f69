//! Cluster metadata through any node: topic create/delete on a follower of
//! the controller, `topic describe --output json` per the CLI contract on
//! every node, NOT_LEADER naming the leader, reads from any replica.

use std::time::Duration;

use runnel_proto::v1::{DescribeClusterRequest, ErrorReason};
use serde_json::Value;
use tonic_types::StatusExt;

use crate::support::grpc::{Clients, record};
use crate::support::{Cluster, ClusterOptions, eventually, with_deadline};

/// The keys of a partition in `topic describe --output json`, in order.
const PARTITION_KEYS: [&str; 8] = [
    "id",
    "leader",
    "replicas",
    "isr",
    "log_start_offset",
    "high_watermark",
    "log_end_offset",
    "size_bytes",
];
const CONFIG_KEYS: [&str; 7] = [
    "partitions",
    "replication_factor",
    "retention_ms",
    "retention_bytes",
    "max_record_bytes",
    "segment_bytes",
    "cleanup_policy",
];

fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn u64_list(v: &Value) -> Vec<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// `topic describe NAME --output json` on node `id`, parsed, with the
/// shape of the CLI contract checked; `None` while the node cannot
/// describe it (it has not applied the create yet).
fn describe_json(cluster: &Cluster, id: u32, name: &str) -> Option<Value> {
    let out = cluster.cli(id, &["topic", "describe", name, "--output", "json"], "");
    if !out.status.success() {
        return None;
    }
    let out = out.stdout;
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("describe --output json on node {id} is not JSON ({e}): {out}"));
    // serde_json keeps keys sorted unless preserve_order: check the order
    // on the text.
    let at = |key: &str, from: usize| out[from..].find(&format!("\"{key}\"")).map(|i| i + from);
    let name_at = at("name", 0).unwrap_or_else(|| panic!("no name: {out}"));
    let parts_at =
        at("partitions", name_at).unwrap_or_else(|| panic!("partitions after name: {out}"));
    at("config", parts_at).unwrap_or_else(|| panic!("config after partitions: {out}"));
    let mut from = parts_at;
    for key in PARTITION_KEYS {
        from = at(key, from).unwrap_or_else(|| panic!("{key} in order in a partition: {out}"));
    }
    let mut sorted = PARTITION_KEYS.to_vec();
    sorted.sort_unstable();
    for p in v["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("partitions: {out}"))
    {
        let mut k = keys(p);
        k.sort();
        assert_eq!(k, sorted, "partition keys on node {id}: {out}");
        for key in PARTITION_KEYS {
            let ok = match key {
                "replicas" | "isr" => p[key].is_array(),
                _ => p[key].is_u64(),
            };
            assert!(ok, "{key} has the wrong type on node {id}: {out}");
        }
    }
    let mut k = keys(&v["config"]);
    k.sort();
    let mut want = CONFIG_KEYS.to_vec();
    want.sort_unstable();
    assert_eq!(k, want, "config keys on node {id}: {out}");
    assert_eq!(v["name"], name, "{out}");
    Some(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_create_on_a_follower_shows_on_every_node_per_the_cli_contract() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    with_deadline(Duration::from_secs(150), async {
        // The controller: wait until the nodes agree on one.
        let controller = eventually(Duration::from_secs(60), "a controller leader", || async {
            let mut ids = Vec::new();
            for id in cluster.ids() {
                let mut c = Clients::connect(cluster.addr(id)).await;
                let r = c
                    .admin
                    .describe_cluster(DescribeClusterRequest {})
                    .await
                    .ok()?
                    .into_inner();
                assert_eq!(r.answered_by, id);
                let mut nodes: Vec<(u32, String)> =
                    r.nodes.into_iter().map(|n| (n.id, n.address)).collect();
                nodes.sort();
                let want: Vec<(u32, String)> = cluster
                    .ids()
                    .into_iter()
                    .map(|i| (i, cluster.addr(i).to_string()))
                    .collect();
                if nodes != want {
                    return None;
                }
                ids.push(r.controller_id);
            }
            (ids[0] != 0 && ids.iter().all(|&c| c == ids[0])).then_some(ids[0])
        })
        .await;
        let follower = *cluster
            .ids()
            .iter()
            .find(|&&id| id != controller)
            .expect("a follower");
        eprintln!("controller {controller}; creating the topic through node {follower}");
        cluster.create_topic(follower, "meta", 3, 3).await;

        // Every node describes it; leaders spread over the nodes, every
        // replica in sync on the leader's view.
        let leaders = eventually(
            Duration::from_secs(30),
            "balanced leaders, full ISRs and agreement on every node",
            || async {
                let mut per_node = Vec::new();
                for id in cluster.ids() {
                    let v = describe_json(&cluster, id, "meta")?;
                    let parts = v["partitions"].as_array()?.clone();
                    assert_eq!(parts.len(), 3, "{v}");
                    let leaders: Vec<u64> = parts
                        .iter()
                        .map(|p| p["leader"].as_u64().unwrap_or(0))
                        .collect();
                    for (i, p) in parts.iter().enumerate() {
                        assert_eq!(p["id"], i as u64, "{v}");
                        // In placement order: preferred leader first.
                        let mut replicas = u64_list(&p["replicas"]);
                        replicas.sort_unstable();
                        assert_eq!(replicas, vec![1, 2, 3], "{v}");
                        assert_eq!(p["log_start_offset"], 0, "{v}");
                        let (hwm, end) =
                            (p["high_watermark"].as_u64()?, p["log_end_offset"].as_u64()?);
                        assert!(hwm <= end, "high watermark past log end: {v}");
                        for n in u64_list(&p["isr"]) {
                            assert!((1..=3).contains(&n), "isr outside replicas: {v}");
                        }
                        // On the leader: a new partition holds the Raft
                        // bootstrap and the leader's no-op, committed.
                        let on_leader = p["leader"] == u64::from(id);
                        if on_leader && (u64_list(&p["isr"]) != vec![1, 2, 3] || hwm < 2) {
                            return None;
                        }
                    }
                    let cfg = &v["config"];
                    assert_eq!(cfg["partitions"], 3, "{v}");
                    assert_eq!(cfg["replication_factor"], 3, "{v}");
                    assert_eq!(cfg["cleanup_policy"], "delete", "{v}");
                    per_node.push(leaders);
                }
                let first = per_node[0].clone();
                let mut distinct = first.clone();
                distinct.sort_unstable();
                distinct.dedup();
                (per_node.iter().all(|l| *l == first) && distinct == vec![1, 2, 3]).then_some(first)
            },
        )
        .await;
        eprintln!("leaders of meta/0..3: {leaders:?}");

        // The text form has the contract's columns.
        let text = cluster.cli_ok(follower, &["topic", "describe", "meta"], "");
        for col in [
            "PARTITION",
            "LEADER",
            "REPLICAS",
            "ISR",
            "LOG-START",
            "HIGH-WATERMARK",
            "LOG-END",
        ] {
            assert!(text.contains(col), "{col} missing: {text}");
        }
        // topic list on every node.
        for id in cluster.ids() {
            let out = cluster.cli_ok(id, &["topic", "list"], "");
            assert!(out.contains("meta"), "node {id} does not list meta: {out}");
        }

        // A write to a follower of partition 0 is refused with NOT_LEADER
        // naming the leader; a read from that follower works below its
        // high watermark.
        let leader0 = u32::try_from(leaders[0]).unwrap_or(0);
        let other = *cluster
            .ids()
            .iter()
            .find(|&&id| id != leader0)
            .expect("a follower");
        let mut on_leader = Clients::connect(cluster.addr(leader0)).await;
        let off = on_leader
            .produce_ok("meta", 0, vec![record(Some("k"), "hello", &[])])
            .await;
        assert_eq!(
            off, 2,
            "the first record of a new partition is at offset 2 (after 2 control batches)"
        );
        let mut on_follower = Clients::connect(cluster.addr(other)).await;
        match on_follower
            .produce_to("meta", 0, vec![record(None, "to a follower", &[])])
            .await
        {
            Ok(r) => {
                let e = r.results.first().and_then(|x| x.error.clone());
                let e = e.unwrap_or_else(|| panic!("a follower acknowledged a write: {r:?}"));
                assert_eq!(e.reason, ErrorReason::NotLeader as i32, "{e:?}");
                assert_eq!(e.leader_id, leader0, "{e:?}");
                assert_eq!(e.leader_address, cluster.addr(leader0).to_string(), "{e:?}");
            }
            Err(s) => {
                let s = crate::support::grpc::assert_failed_with(
                    Err::<(), _>(s),
                    ErrorReason::NotLeader,
                );
                let info = s.get_details_error_info().expect("ErrorInfo");
                assert_eq!(
                    info.metadata.get("leader_id"),
                    Some(&leader0.to_string()),
                    "{info:?}"
                );
                assert_eq!(
                    info.metadata.get("leader_address"),
                    Some(&cluster.addr(leader0).to_string()),
                    "{info:?}"
                );
            }
        }
        let read = eventually(
            Duration::from_secs(10),
            "the record on the follower",
            || {
                let mut c = on_follower.clone();
                async move {
                    let got = c.fetch_decoded("meta", 0, 0).await;
                    (!got.is_empty()).then_some(got)
                }
            },
        )
        .await;
        assert_eq!(read.len(), 1, "{read:?}");
        assert_eq!((read[0].offset, read[0].value.as_ref()), (2, &b"hello"[..]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_delete_on_a_follower_is_gone_on_every_node() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    with_deadline(Duration::from_secs(120), async {
        cluster.create_topic(1, "doomed", 2, 3).await;
        cluster.create_topic(1, "kept", 1, 3).await;
        // Through a node that is not the controller's leader when there is
        // one (the lowest id campaigns first), and through the others.
        let out = cluster.cli_ok(3, &["topic", "delete", "doomed", "--output", "json"], "");
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("topic delete --output json is not JSON ({e}): {out}"));
        assert_eq!(v["deleted"], "doomed", "{out}");
        eventually(
            Duration::from_secs(30),
            "doomed gone on every node",
            || async {
                for id in cluster.ids() {
                    let out = cluster.cli(id, &["topic", "describe", "doomed"], "");
                    if out.status.success() {
                        return None;
                    }
                    assert!(
                        out.stderr.contains("doomed"),
                        "the error names the topic: {out}"
                    );
                }
                Some(())
            },
        )
        .await;
        // "kept" on every node, and "doomed" on none (a node that had not
        // applied its create yet would pass the check above without it).
        eventually(
            Duration::from_secs(30),
            "kept listed on every node",
            || async {
                for id in cluster.ids() {
                    let out = cluster.cli_ok(id, &["topic", "list"], "");
                    assert!(!out.contains("doomed"), "node {id}: {out}");
                    if !out.contains("kept") {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
        // Deleting it again fails and says why.
        let out = cluster.cli(2, &["topic", "delete", "doomed"], "");
        assert!(!out.status.success(), "a second delete succeeded: {out}");
        assert!(out.stderr.contains("doomed"), "{out}");
    })
    .await;
}

/// A cluster has one address per node, its `--peers` entry: `--advertise`
/// with anything else stops the node at once with a message naming both
/// (it would otherwise be silently ignored); the entry itself is accepted.
#[test]
fn a_cluster_node_refuses_an_advertise_other_than_its_peers_entry() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().to_string_lossy().into_owned();
    let ports = crate::support::cluster::free_ports(2);
    let peers = format!("1=127.0.0.1:{},2=127.0.0.1:{}", ports[0], ports[1]);
    let out = crate::support::cli::run_cli_timeout(
        &[
            "broker",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--data-dir",
            &data,
            "--peers",
            &peers,
            "--advertise",
            "clients.example.com:9740",
        ],
        "",
        &[],
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "it started: {out}");
    assert!(!out.stdout.contains("listening"), "a ready line: {out}");
    let entry = format!("127.0.0.1:{}", ports[0]);
    assert!(
        out.stderr
            .contains("--advertise clients.example.com:9740 differs")
            && out.stderr.contains(&entry),
        "the message does not name both addresses: {out}"
    );
}
