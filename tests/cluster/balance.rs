//! Leadership after a node comes back: leaders move back to the preferred
//! replicas (balanced again), and every node, follower or leader, reports
//! the ISR the partition's leader sees.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use runnel_proto::v1::PartitionDescription;

use crate::support::cluster::{Addrs, agreed_leader};
use crate::support::{Cluster, ClusterOptions, eventually, with_deadline};

/// The agreed leader of each of `topic`'s `partitions` partitions among the
/// live nodes, or `None` while some partition has none.
async fn leaders(cluster: &Cluster, topic: &str, partitions: u32) -> Option<BTreeMap<u32, u32>> {
    let live = Addrs(
        cluster
            .live_ids()
            .into_iter()
            .map(|id| (id, cluster.addr(id)))
            .collect(),
    );
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        out.insert(p, agreed_leader(&live, topic, p, cluster.majority()).await?);
    }
    Some(out)
}

/// How many partitions each node leads (nodes leading none included).
fn counts(cluster: &Cluster, leaders: &BTreeMap<u32, u32>) -> BTreeMap<u32, usize> {
    let mut c: BTreeMap<u32, usize> = cluster.ids().into_iter().map(|id| (id, 0)).collect();
    for l in leaders.values() {
        *c.entry(*l).or_default() += 1;
    }
    c
}

/// Each partition's description on node `id`, by partition id.
async fn partitions_on(
    cluster: &Cluster,
    id: u32,
    topic: &str,
) -> Option<BTreeMap<u32, PartitionDescription>> {
    let d = cluster.describe_on(id, topic).await?;
    Some(d.partitions.into_iter().map(|p| (p.id, p)).collect())
}

/// Each live node's view of each partition's ISR, sorted, by (node,
/// partition); `None` while a live node does not answer.
async fn isr_views(cluster: &Cluster, topic: &str) -> Option<BTreeMap<(u32, u32), Vec<u32>>> {
    let mut out = BTreeMap::new();
    for id in cluster.live_ids() {
        for (p, d) in partitions_on(cluster, id, topic).await? {
            let mut isr = d.isr.clone();
            isr.sort_unstable();
            out.insert((id, p), isr);
        }
    }
    Some(out)
}

/// `isr` for every partition on every live node: what [`isr_views`] should
/// find.
fn everywhere(cluster: &Cluster, partitions: u32, isr: &[u32]) -> BTreeMap<(u32, u32), Vec<u32>> {
    cluster
        .live_ids()
        .into_iter()
        .flat_map(|id| (0..partitions).map(move |p| (id, p)))
        .map(|k| (k, isr.to_vec()))
        .collect()
}

/// `runnel_partition_under_replicated` of `topic` summed over the live
/// nodes' /metrics (each partition's leader reports it).
fn under_replicated(cluster: &Cluster, topic: &str) -> f64 {
    cluster
        .live_ids()
        .into_iter()
        .filter_map(|id| cluster.broker(id).metrics_addr_opt())
        .map(|addr| {
            let (_, _, body) = crate::support::metrics::scrape(addr);
            let samples = crate::support::metrics::parse(&body);
            crate::support::metrics::sum(
                &samples,
                "runnel_partition_under_replicated",
                &[("topic", topic)],
            )
            .unwrap_or(0.0)
        })
        .sum()
}

/// The transfers the nodes have logged so far.
fn transfers(cluster: &Cluster) -> Vec<String> {
    cluster.grep_stderr("handing leadership to the preferred leader")
}

/// Writes one record to every partition through the CLI (routed to each
/// partition's leader), so that a node that was down has to catch up.
fn write_each(cluster: &Cluster, via: u32, topic: &str, partitions: u32, tag: &str) {
    for p in 0..partitions {
        let value = format!("{tag}-{p}\n");
        let part = p.to_string();
        cluster.cli_ok(via, &["produce", topic, "--partition", &part], &value);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_move_back_to_the_preferred_replicas_when_a_node_returns() {
    const TOPIC: &str = "balanced";
    const PARTITIONS: u32 = 6;
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    with_deadline(Duration::from_secs(300), async {
        cluster.create_topic(1, TOPIC, PARTITIONS, 3).await;
        let preferred: BTreeMap<u32, u32> = partitions_on(&cluster, 1, TOPIC)
            .await
            .expect("node 1 describes the topic")
            .into_iter()
            .map(|(p, d)| (p, d.replicas[0]))
            .collect();
        let two_each: BTreeMap<u32, usize> = cluster.ids().into_iter().map(|id| (id, 2)).collect();
        assert_eq!(
            counts(&cluster, &preferred),
            two_each,
            "placement spreads preferred leaders: {preferred:?}"
        );
        // A new topic starts with its preferred leaders.
        eventually(
            Duration::from_secs(60),
            "the preferred leaders to lead",
            || async { (leaders(&cluster, TOPIC, PARTITIONS).await? == preferred).then_some(()) },
        )
        .await;

        // Node 3 dies: its two partitions move to nodes 1 and 2.
        let victim = 3;
        cluster.kill9(victim);
        let moved = eventually(Duration::from_secs(60), "failover off node 3", || async {
            let l = leaders(&cluster, TOPIC, PARTITIONS).await?;
            l.values().all(|&n| n != victim).then_some(l)
        })
        .await;
        eprintln!("leaders with node {victim} down: {moved:?}");
        write_each(&cluster, 1, TOPIC, PARTITIONS, "while-down");

        // It comes back: once it has caught up, it leads its two again.
        let before = transfers(&cluster).len();
        cluster.restart(victim);
        let back = Instant::now();
        let balanced = eventually(
            Duration::from_secs(60),
            "two leaders per node again",
            || async {
                let l = leaders(&cluster, TOPIC, PARTITIONS).await?;
                (counts(&cluster, &l) == two_each).then_some(l)
            },
        )
        .await;
        eprintln!(
            "BALANCED {} ms after the restart: {balanced:?}",
            back.elapsed().as_millis()
        );
        assert_eq!(balanced, preferred, "every preferred leader leads");
        let moves = transfers(&cluster);
        assert!(
            moves.len() >= before + 2,
            "two transfers at least: {moves:#?}"
        );

        // No flapping: leadership stays put over two balancing rounds,
        // and the partitions take writes.
        let until = Instant::now() + Duration::from_secs(12);
        while Instant::now() < until {
            if let Some(l) = leaders(&cluster, TOPIC, PARTITIONS).await {
                assert_eq!(l, preferred, "leadership moved again");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        write_each(&cluster, 2, TOPIC, PARTITIONS, "after");
        assert_eq!(transfers(&cluster), moves, "no transfer since");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reports_the_leaders_isr() {
    const TOPIC: &str = "isr";
    const PARTITIONS: u32 = 3;
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    with_deadline(Duration::from_secs(300), async {
        cluster.create_topic(1, TOPIC, PARTITIONS, 3).await;
        let want = everywhere(&cluster, PARTITIONS, &[1, 2, 3]);
        eventually(
            Duration::from_secs(60),
            "a full ISR on every node",
            || async { (isr_views(&cluster, TOPIC).await? == want).then_some(()) },
        )
        .await;

        // Node 3 dies (it follows two of the partitions and leads one,
        // which fails over): nodes 1 and 2 both drop it from every ISR.
        let victim = 3;
        cluster.kill9(victim);
        let want = everywhere(&cluster, PARTITIONS, &[1, 2]);
        let last = std::sync::Mutex::new(None);
        let started = Instant::now();
        let found = tokio::time::timeout(
            Duration::from_secs(60),
            eventually(
                Duration::from_secs(61),
                "node 3 out of every ISR",
                || async {
                    let v = isr_views(&cluster, TOPIC).await;
                    let done = v.as_ref() == Some(&want);
                    *last.lock().unwrap() = v;
                    done.then_some(())
                },
            ),
        )
        .await;
        assert!(
            found.is_ok(),
            "after {:?} the ISRs are {:?}\n{}",
            started.elapsed(),
            last.lock().unwrap(),
            cluster.stderr_tails(20)
        );
        eprintln!(
            "node {victim} out of every ISR on nodes 1 and 2 after {:?}",
            started.elapsed()
        );
        // /metrics: each partition's leader counts it under-replicated.
        eventually(
            Duration::from_secs(30),
            "3 partitions under-replicated in /metrics",
            || async { (under_replicated(&cluster, TOPIC) == f64::from(PARTITIONS)).then_some(()) },
        )
        .await;
        write_each(&cluster, 1, TOPIC, PARTITIONS, "while-down");

        // Back and caught up: in every ISR again, on all three nodes.
        cluster.restart(victim);
        let want = everywhere(&cluster, PARTITIONS, &[1, 2, 3]);
        eventually(
            Duration::from_secs(60),
            "node 3 back in every ISR everywhere",
            || async { (isr_views(&cluster, TOPIC).await? == want).then_some(()) },
        )
        .await;
        eventually(
            Duration::from_secs(30),
            "nothing under-replicated in /metrics",
            || async { (under_replicated(&cluster, TOPIC) == 0.0).then_some(()) },
        )
        .await;
        // The CLI shows the same through a follower (waited for: the
        // balancer may be handing a partition back to node 3 meanwhile, and
        // a new leader counts its followers in sync only once they answer).
        eventually(
            Duration::from_secs(30),
            "the full ISR of partition 0 through a follower's CLI",
            || async {
                let lead = leaders(&cluster, TOPIC, PARTITIONS).await?;
                let follower = cluster
                    .ids()
                    .into_iter()
                    .find(|id| lead.get(&0) != Some(id))?;
                let out = cluster.cli(
                    follower,
                    &["topic", "describe", TOPIC, "--output", "json"],
                    "",
                );
                if !out.status.success() {
                    return None;
                }
                let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
                let mut isr: Vec<u64> = v["partitions"][0]["isr"]
                    .as_array()
                    .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
                    .unwrap_or_default();
                isr.sort_unstable();
                (isr == [1, 2, 3]).then_some(())
            },
        )
        .await;
    })
    .await;
}

/// SIGTERM of a node (a rolling restart): before it stops serving it hands
/// every group it leads to an in-sync replica, which takes over at its
/// request (raft-rs TimeoutNow) instead of after an election timeout
/// without heartbeats; when it is gone the others agree on live leaders,
/// and an acks=all writer loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_leadership_over_before_the_node_exits() {
    const TOPIC: &str = "handoff";
    const PARTITIONS: u32 = 3;
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    with_deadline(Duration::from_secs(300), async {
        cluster.create_topic(1, TOPIC, PARTITIONS, 3).await;
        let first = eventually(Duration::from_secs(60), "a leader per partition", || async {
            leaders(&cluster, TOPIC, PARTITIONS).await
        })
        .await;
        let victim = first[&0];
        let p = crate::history::Producer::start(&cluster, TOPIC, 0, "h");
        p.wait_for_more(30, Duration::from_secs(60), &cluster).await;

        cluster.terminate_ok(victim).await;
        // At once (no waiting): every live node names a live leader for
        // every partition.
        for id in cluster.live_ids() {
            let views = partitions_on(&cluster, id, TOPIC)
                .await
                .expect("a live node describes the topic");
            for (part, d) in views {
                assert!(
                    d.leader != 0 && d.leader != victim,
                    "node {id} names leader {} for partition {part} right after node {victim} exited\n{}",
                    d.leader,
                    cluster.stderr_tails(30)
                );
            }
        }
        // It handed over while still running (it saw no group led here)
        // and the others took over on its word (raft-rs's TimeoutNow), not
        // after an election timeout without its heartbeats.
        assert!(
            !cluster.grep_stderr("leadership handed over").is_empty(),
            "the stopping node does not say it handed over\n{}",
            cluster.stderr_tails(30)
        );
        let took_over = cluster.grep_stderr(&format!("received MsgTimeoutNow from {victim}"));
        assert!(
            !took_over.is_empty(),
            "no node took over on node {victim}'s request\n{}",
            cluster.stderr_tails(30)
        );
        eprintln!("taken over on request: {took_over:?}");
        p.wait_for_more(30, Duration::from_secs(60), &cluster).await;
        cluster.restart(victim);
        p.wait_for_more(30, Duration::from_secs(60), &cluster).await;
        let h = p.stop().await;
        crate::history::check_all_nodes(&cluster, TOPIC, 0, &[("h", &h)]).await;
    })
    .await;
}
