//! Members sharing a topic: each partition one owner, everything consumed
//! once; a member killed; reset-offsets replays.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use runnel_proto::v1::Record;

use crate::member::{Line, Member, committed, describe, wait_balanced, wait_committed};
use crate::support::{BrokerOptions, now_ms, start_with_topic, with_deadline};

const LIMIT: Duration = Duration::from_secs(240);

fn records(prefix: &str, n: usize, ts: Option<i64>) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            key: None,
            value: format!("{prefix}-{i}").into_bytes().into(),
            headers: vec![],
            timestamp_ms: ts,
        })
        .collect()
}

/// Every value printed, with how many times.
fn counts(lines: &[Line]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, _, v) in lines {
        *m.entry(v.clone()).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn three_members_share_six_partitions_and_consume_everything_once() {
    let (broker, mut c) = start_with_topic(BrokerOptions::default(), "orders", 6).await;
    let bootstrap = broker.endpoint();
    with_deadline(LIMIT, async {
        let extra = [
            "--session-timeout-ms",
            "5000",
            "--auto-commit-ms",
            "200",
            "--assignor",
            "range",
        ];
        let mut members: Vec<Member> = (0..3)
            .map(|_| Member::start(&bootstrap, "orders", "g3", &extra))
            .collect();
        let d = wait_balanced(&bootstrap, "g3", 3, 6, Duration::from_secs(60)).await;
        // Range: two consecutive partitions each.
        for (m, parts) in crate::member::assignments(&d) {
            let parts: Vec<u32> = parts.into_iter().collect();
            assert!(
                parts.len() == 2 && parts[1] == parts[0] + 1,
                "{m} owns {parts:?}: {d}"
            );
        }
        let text = broker.cli_ok(&["group", "describe", "g3"], "");
        assert!(text.contains("assignor range"), "{text}");
        let mut hwm = BTreeMap::new();
        for p in 0..6 {
            let base = c
                .produce_ok("orders", p, records(&format!("p{p}"), 100, None))
                .await;
            hwm.insert(p, base + 100);
        }
        wait_committed(&bootstrap, "g3", &hwm, Duration::from_secs(60)).await;
        let phase_one: Vec<Vec<Line>> = members.iter().map(Member::lines).collect();
        // Each partition was read by exactly one member.
        let mut owner: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, lines) in phase_one.iter().enumerate() {
            for (p, _, _) in lines {
                let o = *owner.entry(*p).or_insert(i);
                assert_eq!(o, i, "partition {p} read by members {o} and {i}");
            }
        }
        assert_eq!(owner.len(), 6, "every partition read: {owner:?}");
        let seen = counts(&phase_one.concat());
        assert_eq!(seen.len(), 600, "every record consumed");
        assert!(seen.values().all(|&n| n == 1), "none consumed twice");
        // One member leaves cleanly (SIGTERM: commit, leave): the other two
        // take its partitions at their next heartbeat.
        let mut leaver = members.pop().expect("three members");
        let left_at = std::time::Instant::now();
        let mut outputs = vec![leaver.terminate().await];
        wait_balanced(&bootstrap, "g3", 2, 6, Duration::from_secs(60)).await;
        println!("REBALANCE after a clean leave: {:?}", left_at.elapsed());
        for p in 0..6 {
            let base = c
                .produce_ok("orders", p, records(&format!("q{p}"), 10, None))
                .await;
            hwm.insert(p, base + 10);
        }
        wait_committed(&bootstrap, "g3", &hwm, Duration::from_secs(60)).await;
        for m in &mut members {
            outputs.push(m.terminate().await);
        }
        // A clean leave commits first: still nothing twice, nothing missed.
        let seen = counts(&outputs.concat());
        assert_eq!(seen.len(), 660, "every record consumed");
        assert!(seen.values().all(|&n| n == 1), "none consumed twice");
        // They left: the group is empty, its offsets kept.
        let d = describe(&bootstrap, "g3").expect("describe");
        assert_eq!(d["state"], "Empty", "{d}");
        assert_eq!(committed(&d), hwm);
        // /metrics has the group's members, committed offsets and lag.
        let addr = broker.metrics_addr();
        let want = hwm[&3] as f64;
        crate::support::eventually(Duration::from_secs(30), "group metrics", || {
            let (_, _, body) = crate::support::metrics::scrape(addr);
            let samples = crate::support::metrics::parse(&body);
            let g = [("group", "g3")];
            let p3 = [("group", "g3"), ("topic", "orders"), ("partition", "3")];
            let found = crate::support::metrics::sum(&samples, "runnel_group_members", &g)
                == Some(0.0)
                && crate::support::metrics::sum(&samples, "runnel_group_committed_offset", &p3)
                    == Some(want)
                && crate::support::metrics::sum(&samples, "runnel_group_lag", &p3) == Some(0.0);
            async move { found.then_some(()) }
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_member_s_partitions_move_within_the_session_timeout() {
    let (broker, mut c) = start_with_topic(BrokerOptions::default(), "moves", 6).await;
    let bootstrap = broker.endpoint();
    with_deadline(LIMIT, async {
        let session = Duration::from_millis(3000);
        let extra = ["--session-timeout-ms", "3000", "--auto-commit-ms", "100"];
        let mut a = Member::start(&bootstrap, "moves", "gk", &extra);
        let mut b = Member::start(&bootstrap, "moves", "gk", &extra);
        let d = wait_balanced(&bootstrap, "gk", 2, 6, Duration::from_secs(60)).await;
        let mut hwm = BTreeMap::new();
        for p in 0..6 {
            let base = c
                .produce_ok("moves", p, records(&format!("a{p}"), 200, None))
                .await;
            hwm.insert(p, base + 200);
        }
        // Kill A while it reads (once it printed something).
        crate::support::eventually(Duration::from_secs(30), "member A to print", || {
            let n = a.lines().len();
            async move { (n > 0).then_some(()) }
        })
        .await;
        let printed_by_a = a.kill9();
        let killed = Instant::now();
        let at_kill = committed(&describe(&bootstrap, "gk").expect("describe"));
        let a_parts: BTreeSet<u32> = printed_by_a.iter().map(|l| l.0).collect();
        // B takes every partition within the session timeout (plus a
        // margin for a loaded machine).
        wait_balanced(&bootstrap, "gk", 1, 6, Duration::from_secs(60)).await;
        let moved_after = killed.elapsed();
        println!("REBALANCE after kill -9: {moved_after:?} (session {session:?})");
        assert!(
            moved_after < session + Duration::from_secs(10),
            "{moved_after:?}"
        );
        for p in 0..6 {
            let base = c
                .produce_ok("moves", p, records(&format!("b{p}"), 50, None))
                .await;
            hwm.insert(p, base + 50);
        }
        wait_committed(&bootstrap, "gk", &hwm, Duration::from_secs(60)).await;
        let printed_by_b = b.terminate().await;
        // Nothing skipped.
        let all = [printed_by_a.clone(), printed_by_b.clone()].concat();
        let seen = counts(&all);
        assert_eq!(seen.len(), 6 * 250, "every record consumed");
        // Redelivered: only A's uncommitted tail; B's own partitions never twice.
        let a_values: BTreeSet<&String> = printed_by_a.iter().map(|l| &l.2).collect();
        for (p, o, v) in &printed_by_b {
            if seen[v] > 1 {
                assert!(a_values.contains(v), "{v} printed twice by B");
                assert!(a_parts.contains(p));
                assert!(
                    *o >= at_kill.get(p).copied().unwrap_or(0),
                    "{v} at {p}/{o} redelivered although committed ({at_kill:?})"
                );
            }
        }
        // B resumed each of A's partitions exactly at the committed offset.
        for p in &a_parts {
            let first = printed_by_b.iter().filter(|l| l.0 == *p).map(|l| l.1).min();
            assert_eq!(
                first,
                Some(at_kill.get(p).copied().unwrap_or(0)),
                "partition {p}"
            );
        }
        let _ = d;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_offsets_to_earliest_and_to_a_time_replays_exactly_from_there() {
    let (broker, mut c) = start_with_topic(BrokerOptions::default(), "replay", 2).await;
    let bootstrap = broker.endpoint();
    with_deadline(LIMIT, async {
        let t0 = now_ms();
        // 10 records per partition, one per second of (past) time.
        for p in 0..2u32 {
            for i in 0..10i64 {
                c.produce_ok(
                    "replay",
                    p,
                    records(&format!("r{p}-{i}"), 1, Some(t0 + i * 1000)),
                )
                .await;
            }
        }
        let consume = |extra: &[&str]| {
            let mut args = vec![
                "consume",
                "replay",
                "--group",
                "gr",
                "--from-beginning",
                "--timeout-ms",
                "3000",
                "--format",
                "%v",
                "--bootstrap",
                &bootstrap,
            ];
            args.extend_from_slice(extra);
            let out = crate::support::run_cli(&args, "");
            assert!(out.status.success(), "{out}");
            let mut v: Vec<String> = out.stdout.lines().map(str::to_string).collect();
            v.sort();
            v
        };
        assert_eq!(consume(&[]).len(), 20);
        assert!(
            consume(&[]).is_empty(),
            "everything committed: nothing again"
        );
        let out = broker.cli_ok(
            &[
                "group",
                "reset-offsets",
                "gr",
                "--topic",
                "replay",
                "--to-earliest",
            ],
            "",
        );
        assert!(out.contains("PARTITION"), "{out}");
        assert_eq!(consume(&[]).len(), 20, "replayed from the earliest");
        let at = (t0 + 6000).to_string();
        let out = broker.cli_ok(
            &[
                "group",
                "reset-offsets",
                "gr",
                "--topic",
                "replay",
                "--to-time",
                &at,
                "--output",
                "json",
            ],
            "",
        );
        let json: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        assert_eq!(json["offsets"][0]["offset"], 6, "{json}");
        let mut want: Vec<String> = (0..2)
            .flat_map(|p| (6..10).map(move |i| format!("r{p}-{i}-0")))
            .collect();
        want.sort();
        assert_eq!(consume(&[]), want, "replayed exactly from the time");
        // --to-offset, and refused while a member is in the group.
        broker.cli_ok(
            &[
                "group",
                "reset-offsets",
                "gr",
                "--topic",
                "replay",
                "--to-offset",
                "9",
            ],
            "",
        );
        assert_eq!(consume(&[]).len(), 2);
        let mut m = Member::start(
            &bootstrap,
            "replay",
            "gr",
            &["--session-timeout-ms", "5000"],
        );
        wait_balanced(&bootstrap, "gr", 1, 2, Duration::from_secs(60)).await;
        let out = broker.cli(
            &[
                "group",
                "reset-offsets",
                "gr",
                "--topic",
                "replay",
                "--to-earliest",
            ],
            "",
        );
        assert!(
            !out.status.success() && out.stderr.contains("GROUP_NOT_EMPTY"),
            "{out}"
        );
        let out = broker.cli(&["group", "delete", "gr"], "");
        assert!(
            !out.status.success() && out.stderr.contains("GROUP_NOT_EMPTY"),
            "{out}"
        );
        m.terminate().await;
        broker.cli_ok(&["group", "delete", "gr"], "");
        let out = broker.cli_ok(&["group", "list", "--output", "json"], "");
        assert_eq!(out.trim(), r#"{"groups":[]}"#);
        // The internal topic is not listed.
        let out = broker.cli_ok(&["topic", "list", "--output", "json"], "");
        assert!(!out.contains("__consumer_offsets"), "{out}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn committed_offsets_survive_a_broker_restart() {
    let (mut broker, mut c) = start_with_topic(BrokerOptions::default(), "durable", 3).await;
    with_deadline(LIMIT, async {
        for p in 0..3 {
            c.produce_ok("durable", p, records(&format!("d{p}"), 10, None))
                .await;
        }
        let consume = |b: &crate::support::Broker| {
            let out = b.cli(
                &[
                    "consume",
                    "durable",
                    "--group",
                    "gd",
                    "--from-beginning",
                    "--timeout-ms",
                    "3000",
                ],
                "",
            );
            assert!(out.status.success(), "{out}");
            out.stdout.lines().count()
        };
        assert_eq!(consume(&broker), 30);
        let before = committed(&describe(&broker.endpoint(), "gd").expect("describe"));
        broker.terminate_ok().await;
        broker.restart();
        let after = committed(&describe(&broker.endpoint(), "gd").expect("describe after restart"));
        assert_eq!(before, after);
        assert_eq!(consume(&broker), 0, "resumed from the committed offsets");
        let mut c = crate::support::grpc::Clients::connect(broker.grpc_addr()).await;
        c.produce_ok("durable", 1, records("late", 4, None)).await;
        assert_eq!(consume(&broker), 4);
    })
    .await;
}
