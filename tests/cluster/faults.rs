//! Issue 5's fault list: kill -9 the leader or a follower, cut the leader
//! off the network, pause it past the election timeout, while a client
//! writes with acks=all; nothing acknowledged may be lost, reordered,
//! duplicated or overwritten, and the nodes must end with the same log.

use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_proto::v1::{Acks, ErrorReason, ProduceRequest};

use crate::history::{Producer, check_all_nodes, read_log, wait_converged};
use crate::support::cluster::probe_channel;
use crate::support::grpc::{assert_partition_error, plain_records, records_for};
use crate::support::{Cluster, ClusterOptions, eventually, with_deadline};

/// What the issue asks of a failover: kill to first acknowledged write.
const FAILOVER_TARGET: Duration = Duration::from_secs(3);
/// What a test asserts: generous, since a loaded 2-core machine stretches
/// elections; the measured figure is printed either way.
const FAILOVER_LIMIT: Duration = Duration::from_secs(15);

/// Time from `t0` to the first acknowledgement by a node other than
/// `old`, waiting (bounded) for it.
async fn failover_time(p: &Producer, t0: Instant, old: u32, cluster: &Cluster) -> Duration {
    let limit = FAILOVER_LIMIT + Duration::from_secs(15);
    let what = "an acknowledgement from a new leader";
    let started = Instant::now();
    loop {
        let first = p
            .acks()
            .iter()
            .filter(|a| a.at > t0 && a.node != old)
            .map(|a| a.at)
            .min();
        if let Some(at) = first {
            return at - t0;
        }
        assert!(
            started.elapsed() < limit,
            "no {what} within {limit:?} of the fault\n{}",
            cluster.stderr_tails(40)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Prints the failover figure (and, with RUNNEL_TEST_TIMELINE set, every
/// node's Raft role changes with the fault's wall-clock time) and asserts
/// the generous limit.
fn report_failover(test: &str, took: Duration, cluster: &Cluster, t0: Instant) {
    if std::env::var_os("RUNNEL_TEST_TIMELINE").is_some() {
        let fault_ms = crate::support::now_ms() - t0.elapsed().as_millis() as i64;
        eprintln!("{test}: fault at {fault_ms} ms since the epoch; role changes:");
        for l in cluster.grep_stderr("became") {
            eprintln!("  {}", &l[..l.len().min(200)]);
        }
    }
    let verdict = if took <= FAILOVER_TARGET {
        "within"
    } else {
        "OVER"
    };
    eprintln!(
        "FAILOVER {test}: {} ms from the fault to the first acknowledged write ({verdict} the {} s target)",
        took.as_millis(),
        FAILOVER_TARGET.as_secs()
    );
    assert!(
        took < FAILOVER_LIMIT,
        "{test}: failover took {took:?} (limit {FAILOVER_LIMIT:?}, target {FAILOVER_TARGET:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_leader_during_acks_all_stream() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    with_deadline(Duration::from_secs(150), async {
        let topic = "kill-leader";
        cluster.create_topic(2, topic, 1, 3).await;
        let old = cluster.leader(topic, 0, Duration::from_secs(30)).await;

        let p = Producer::start(&cluster, topic, 0, "a");
        p.wait_for_more(40, Duration::from_secs(60), &cluster).await;
        let t0 = Instant::now();
        cluster.kill9(old);
        let took = failover_time(&p, t0, old, &cluster).await;
        let new = cluster
            .leader_where(topic, 0, Duration::from_secs(30), |l| l != old)
            .await;
        p.wait_for_more(40, Duration::from_secs(60), &cluster).await;
        let h = p.stop().await;
        report_failover("kill -9 leader", took, &cluster, t0);
        eprintln!(
            "kill -9 leader {old}: new leader {new}, {} records acknowledged, {} failed or unanswered requests",
            h.acked_records(),
            h.failures.len()
        );
        assert!(h.acks.iter().any(|a| a.node == old && a.at < t0));
        check_all_nodes(&cluster, topic, 0, &[("a", &h)]).await;

        // The old leader comes back as a follower and ends with the same
        // log (whatever it appended past the commit point is gone).
        cluster.restart(old);
        let log = check_all_nodes(&cluster, topic, 0, &[("a", &h)]).await;
        assert!(log.len() >= h.acked_records());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_follower_it_catches_up_then_kill_the_leader() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    with_deadline(Duration::from_secs(180), async {
        let topic = "kill-follower";
        cluster.create_topic(1, topic, 1, 3).await;
        let leader = cluster.leader(topic, 0, Duration::from_secs(30)).await;
        let follower = *cluster
            .ids()
            .iter()
            .find(|&&id| id != leader)
            .expect("a follower");

        let p = Producer::start(&cluster, topic, 0, "a");
        p.wait_for_more(20, Duration::from_secs(60), &cluster).await;
        cluster.kill9(follower);
        // Two of three keep acknowledging.
        p.wait_for_more(150, Duration::from_secs(60), &cluster).await;
        // The leader drops the dead follower from the ISR once it has not
        // heard from it for an election timeout (1 s); 150 acks may take
        // less than that, so wait for it rather than expect it at once.
        eventually(
            Duration::from_secs(30),
            "the dead follower out of the leader's ISR",
            || async {
                let d = cluster.describe_on(leader, topic).await?;
                (!d.partitions[0].isr.contains(&follower)).then_some(())
            },
        )
        .await;

        cluster.restart(follower);
        // It catches up while the writes go on, and is in sync again.
        let started = Instant::now();
        eventually(
            Duration::from_secs(30),
            "the restarted follower back in the ISR",
            || async {
                let d = cluster.describe_on(leader, topic).await?;
                d.partitions[0].isr.contains(&follower).then_some(())
            },
        )
        .await;
        p.wait_for_more(20, Duration::from_secs(60), &cluster).await;
        let lead = cluster.describe_on(leader, topic).await.expect("leader");
        let fol = cluster.describe_on(follower, topic).await.expect("follower");
        eprintln!(
            "follower {follower} back in the ISR after {} ms; leader hwm {} log end {}, follower hwm {} log end {}",
            started.elapsed().as_millis(),
            lead.partitions[0].high_watermark,
            lead.partitions[0].log_end_offset,
            fol.partitions[0].high_watermark,
            fol.partitions[0].log_end_offset
        );

        // Now the leader dies: the caught-up follower and the third node
        // must hold everything acknowledged.
        let t0 = Instant::now();
        cluster.kill9(leader);
        let took = failover_time(&p, t0, leader, &cluster).await;
        p.wait_for_more(20, Duration::from_secs(60), &cluster).await;
        let h = p.stop().await;
        report_failover("kill -9 leader after follower catch-up", took, &cluster, t0);
        let log = check_all_nodes(&cluster, topic, 0, &[("a", &h)]).await;
        // The follower that was down reads back what it missed, itself.
        let from_follower = read_log(&cluster, follower, topic, 0).await;
        assert_eq!(from_follower, log);

        cluster.restart(leader);
        check_all_nodes(&cluster, topic, 0, &[("a", &h)]).await;
    })
    .await;
}

/// One acks=all Produce straight to `node`, bounded; `Ok(base offset)` when
/// acknowledged, `Err(why)` otherwise.
async fn produce_direct(
    cluster: &Cluster,
    node: u32,
    topic: &str,
    values: &[Bytes],
) -> Result<u64, String> {
    let mut client = runnel_proto::v1::produce_service_client::ProduceServiceClient::new(
        probe_channel(cluster.addr(node)),
    );
    let records = plain_records(values);
    let call = client.produce(ProduceRequest {
        topic: topic.into(),
        partitions: vec![records_for(Some(0), records)],
        acks: Acks::All as i32,
        timeout_ms: 1_500,
    });
    match tokio::time::timeout(Duration::from_secs(3), call).await {
        Err(_) => Err("no answer within 3 s".into()),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Ok(Ok(r)) => {
            let r = r.into_inner();
            match r.results.first() {
                Some(x) if x.error.is_none() => x
                    .base_offset
                    .ok_or_else(|| format!("acks=all without base offset: {r:?}")),
                other => Err(format!("{other:?}")),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_stops_acknowledging_and_its_suffix_is_discarded() {
    let cluster = Cluster::start(ClusterOptions {
        proxies: true,
        ..Default::default()
    })
    .await;
    with_deadline(Duration::from_secs(180), async {
        let topic = "isolate";
        cluster.create_topic(3, topic, 1, 3).await;
        let old = cluster.leader(topic, 0, Duration::from_secs(30)).await;
        let p = Producer::start(&cluster, topic, 0, "a");
        p.wait_for_more(30, Duration::from_secs(60), &cluster).await;

        let t0 = Instant::now();
        cluster.isolate(old);
        // Before it notices it lost the quorum (check-quorum takes an
        // election timeout, >= 1 s), the cut-off leader answers an acks=all
        // write that cannot commit with TIMEOUT once its timeout_ms passed.
        let mut client = runnel_proto::v1::produce_service_client::ProduceServiceClient::new(
            probe_channel(cluster.addr(old)),
        );
        let asked = Instant::now();
        let answer = client
            .produce(ProduceRequest {
                topic: topic.into(),
                partitions: vec![records_for(
                    Some(0),
                    plain_records(&[Bytes::from_static(b"stale-timeout")]),
                )],
                acks: Acks::All as i32,
                timeout_ms: 300,
            })
            .await
            .expect("a per-partition answer")
            .into_inner();
        let waited = asked.elapsed();
        assert_partition_error(
            answer.results.first().and_then(|r| r.error.as_ref()),
            ErrorReason::Timeout,
        );
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
            "TIMEOUT after {waited:?}, asked for 300 ms"
        );
        let mut stale_sent: Vec<Bytes> = vec![Bytes::from_static(b"stale-timeout")];
        // The old leader, cut off, takes writes from a client that still
        // reaches it but must not acknowledge any with acks=all.
        let mut stale_acked = Vec::new();
        let mut stale_errors = Vec::new();
        let new = loop {
            let values: Vec<Bytes> = (0..2)
                .map(|i| Bytes::from(format!("stale-{}-{i}", stale_sent.len())))
                .collect();
            stale_sent.extend(values.iter().cloned());
            match produce_direct(&cluster, old, topic, &values).await {
                Ok(off) => stale_acked.push((off, values)),
                Err(e) => stale_errors.push(e),
            }
            let ids: Vec<u32> = cluster.ids().into_iter().filter(|&i| i != old).collect();
            let mut agree = None;
            for id in &ids {
                let l = cluster
                    .describe_on(*id, topic)
                    .await
                    .map(|d| d.partitions[0].leader);
                match (agree, l) {
                    (_, None | Some(0)) => {
                        agree = None;
                        break;
                    }
                    (None, Some(l)) => agree = Some(l),
                    (Some(a), Some(l)) if a != l => {
                        agree = None;
                        break;
                    }
                    _ => {}
                }
            }
            if let Some(l) = agree.filter(|&l| l != old) {
                eprintln!(
                    "isolated leader {old}: nodes {ids:?} agree on leader {l} {} ms after the cut",
                    t0.elapsed().as_millis()
                );
                break l;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the majority side elected no new leader within 30 s\n{}",
                cluster.stderr_tails(40)
            );
        };
        let took = failover_time(&p, t0, old, &cluster).await;
        report_failover("isolated leader", took, &cluster, t0);
        p.wait_for_more(30, Duration::from_secs(60), &cluster).await;
        // A few more stale writes now that a new leader certainly exists.
        for n in 0..3 {
            let values = vec![Bytes::from(format!("stale-late-{n}"))];
            stale_sent.extend(values.iter().cloned());
            match produce_direct(&cluster, old, topic, &values).await {
                Ok(off) => stale_acked.push((off, values)),
                Err(e) => stale_errors.push(e),
            }
        }
        assert!(
            stale_acked.is_empty(),
            "the isolated old leader {old} acknowledged acks=all writes: {stale_acked:?}"
        );
        let old_view = cluster.describe_on(old, topic).await;
        eprintln!(
            "isolated leader {old}: new leader {new}; its stale writes failed with {:?}; it now says {:?}",
            &stale_errors[..stale_errors.len().min(3)],
            old_view.map(|d| d.partitions)
        );

        cluster.heal();
        p.wait_for_more(20, Duration::from_secs(60), &cluster).await;
        let h = p.stop().await;
        let log = check_all_nodes(&cluster, topic, 0, &[("a", &h)]).await;
        for (off, v) in &log {
            assert!(
                !stale_sent.contains(v),
                "offset {off} holds {:?}, written only to the isolated old leader",
                String::from_utf8_lossy(v)
            );
        }
        let d = cluster.describe_on(old, topic).await.expect("old leader");
        assert_ne!(d.partitions[0].leader, old, "the old leader did not step down: {d:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_steps_down_without_acknowledging_lost_writes() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    with_deadline(Duration::from_secs(180), async {
        let topic = "pause";
        cluster.create_topic(1, topic, 1, 3).await;
        let old = cluster.leader(topic, 0, Duration::from_secs(30)).await;
        let p = Producer::start(&cluster, topic, 0, "a");
        p.wait_for_more(30, Duration::from_secs(60), &cluster).await;

        let t0 = Instant::now();
        cluster.pause(old);
        let took = failover_time(&p, t0, old, &cluster).await;
        let new = cluster
            .leader_where(topic, 0, Duration::from_secs(30), |l| l != old)
            .await;
        p.wait_for_more(30, Duration::from_secs(60), &cluster).await;
        report_failover("SIGSTOP leader", took, &cluster, t0);

        // Resume it with writes still in flight to it from before the
        // pause, and new ones straight at it: whatever it acknowledges now
        // must survive (it is checked with the producer's history below).
        cluster.resume(old);
        let t_resume = Instant::now();
        let mut direct_acked = Vec::new();
        for n in 0..5 {
            let values = vec![Bytes::from(format!("a-direct-{n}"))];
            if let Ok(off) = produce_direct(&cluster, old, topic, &values).await {
                direct_acked.push((off, values));
            }
        }
        eventually(
            Duration::from_secs(15),
            "the resumed old leader to follow the new one",
            || async {
                let d = cluster.describe_on(old, topic).await?;
                (d.partitions[0].leader == new).then_some(())
            },
        )
        .await;
        eprintln!(
            "paused leader {old}: stepped down {} ms after SIGCONT; {} direct writes acknowledged after it",
            t_resume.elapsed().as_millis(),
            direct_acked.len()
        );
        p.wait_for_more(20, Duration::from_secs(60), &cluster).await;
        let h = p.stop().await;
        let late_from_old: Vec<_> = h
            .acks
            .iter()
            .filter(|a| a.node == old && a.at > t0)
            .collect();
        eprintln!(
            "acknowledged by the old leader after the pause: {} requests",
            late_from_old.len()
        );
        let log = check_all_nodes(&cluster, topic, 0, &[("a", &h)]).await;
        for (off, values) in &direct_acked {
            for (i, v) in values.iter().enumerate() {
                let at = off + i as u64;
                assert!(
                    log.iter().any(|(o, x)| *o == at && x == v),
                    "the resumed old leader acknowledged {:?} at {at}, which the cluster did not keep",
                    String::from_utf8_lossy(v)
                );
            }
        }
        let hwm = wait_converged(&cluster, topic, 0).await;
        assert!(hwm as usize >= h.acked_records());
    })
    .await;
}

/// Issue 5's failover benchmark, not a test: ten times, kill -9 the leader
/// of an RF=3 partition under an acks=all writer and time the first
/// acknowledgement by a new leader; restart the old one and wait until it
/// is in sync before the next round. Prints every figure and the median.
/// Run by `benches/cluster.sh` (release build):
/// `cargo test --release -p runnel-cli --test cluster -- --ignored --nocapture failover_median`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by benches/cluster.sh"]
async fn failover_median_of_10() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    with_deadline(Duration::from_secs(900), async {
        let topic = "failover-bench";
        cluster.create_topic(1, topic, 1, 3).await;
        let p = Producer::start(&cluster, topic, 0, "a");
        p.wait_for_more(40, Duration::from_secs(60), &cluster).await;
        let mut times = Vec::new();
        for round in 1..=10 {
            let old = cluster.leader(topic, 0, Duration::from_secs(30)).await;
            let t0 = Instant::now();
            cluster.kill9(old);
            let took = failover_time(&p, t0, old, &cluster).await;
            eprintln!(
                "FAILOVER round {round}: {} ms (killed leader {old})",
                took.as_millis()
            );
            times.push(took);
            cluster.restart(old);
            eventually(
                Duration::from_secs(60),
                "the restarted node back in the ISR",
                || async {
                    let leader = cluster.leader(topic, 0, Duration::from_secs(30)).await;
                    let d = cluster.describe_on(leader, topic).await?;
                    (d.partitions[0].isr.len() == 3).then_some(())
                },
            )
            .await;
            p.wait_for_more(40, Duration::from_secs(60), &cluster).await;
        }
        let h = p.stop().await;
        check_all_nodes(&cluster, topic, 0, &[("a", &h)]).await;
        times.sort();
        let ms: Vec<u128> = times.iter().map(Duration::as_millis).collect();
        eprintln!(
            "FAILOVER median of {}: {} ms (sorted: {ms:?}); {} records acknowledged, nothing lost",
            ms.len(),
            (ms[4] + ms[5]) / 2,
            h.acked_records()
        );
    })
    .await;
}

/// Retention runs on replicated partitions, and a follower that was down
/// while the leader's log start moved past everything it had catches up
/// from a snapshot ("the log starts here", RAFT.md trap 16), then holds
/// exactly the leader's records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_leaders_log_start_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    with_deadline(Duration::from_secs(180), async {
        let topic = "trimmed";
        let args = [
            "topic",
            "create",
            topic,
            "--partitions",
            "1",
            "--replication-factor",
            "3",
            "--segment-bytes",
            "1048576",
            "--retention-bytes",
            "2097152",
        ];
        eventually(Duration::from_secs(60), "topic create", || {
            let out = cluster.cli(1, &args, "");
            let done = out.status.success() || out.stderr.contains("already exists");
            async move { done.then_some(()) }
        })
        .await;
        let leader = cluster.leader(topic, 0, Duration::from_secs(30)).await;
        let follower = *cluster
            .ids()
            .iter()
            .find(|&&id| id != leader)
            .expect("a follower");
        cluster.kill9(follower);

        // About 8 MiB in 64 KiB requests: eight 1 MiB segments, of which
        // retention keeps about two.
        for i in 0..128 {
            let values: Vec<Bytes> = (0..16)
                .map(|j| Bytes::from(format!("{i:04}-{j:02}-{}", "x".repeat(4000))))
                .collect();
            let mut attempt = 0;
            loop {
                match produce_direct(&cluster, leader, topic, &values).await {
                    Ok(_) => break,
                    Err(e) => {
                        attempt += 1;
                        assert!(attempt < 20, "request {i} to leader {leader}: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        let trimmed = eventually(
            Duration::from_secs(60),
            "retention to move the leader's log start",
            || async {
                let d = cluster.describe_on(leader, topic).await?;
                let start = d.partitions[0].log_start_offset;
                (start > 0).then_some(start)
            },
        )
        .await;
        eprintln!("leader {leader} log start {trimmed}; restarting follower {follower}");

        cluster.restart(follower);
        let (start, hwm) = eventually(
            Duration::from_secs(90),
            "the follower in sync from the leader's log start",
            || async {
                let l = cluster.describe_on(leader, topic).await?;
                let f = cluster.describe_on(follower, topic).await?;
                let (l, f) = (&l.partitions[0], &f.partitions[0]);
                (l.isr.contains(&follower)
                    && f.high_watermark == l.high_watermark
                    && f.log_end_offset == l.log_end_offset
                    && f.log_start_offset > 0)
                    .then_some((f.log_start_offset.max(l.log_start_offset), l.high_watermark))
            },
        )
        .await;
        eprintln!("follower {follower} in sync: log start {start}, high watermark {hwm}");
        // Both logs read from the later log start. A retention pass (every
        // 5 s) may still move either start past it while reading: then read
        // again from the new starts.
        let nodes = &cluster;
        let read = |id: u32, from: u64| async move {
            let mut c = crate::support::grpc::Clients::connect(nodes.addr(id)).await;
            c.try_fetch_decoded(topic, 0, from)
                .await
                .ok()
                .map(|records| {
                    records
                        .into_iter()
                        .map(|r| (r.offset, r.value))
                        .collect::<Vec<_>>()
                })
        };
        let (start, from_leader, from_follower) = eventually(
            Duration::from_secs(60),
            "both logs readable from the later log start",
            || async {
                let l = cluster.describe_on(leader, topic).await?;
                let f = cluster.describe_on(follower, topic).await?;
                let from = l.partitions[0]
                    .log_start_offset
                    .max(f.partitions[0].log_start_offset);
                Some((from, read(leader, from).await?, read(follower, from).await?))
            },
        )
        .await;
        assert!(!from_leader.is_empty(), "nothing readable from {start}");
        assert_eq!(
            from_follower, from_leader,
            "the follower's records from {start} differ from the leader's"
        );
    })
    .await;
}
