//! Produce/consume round trips across partitions, and replay from an offset
//! or a timestamp, Subscribe and long-poll Fetch.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use runnel_batch::partitioner::partition_for_key;
use runnel_proto::v1::{
    ListOffsetsRequest, OffsetQuery, OffsetSpec, PartitionOffset, Record, SubscribeRequest,
    TopicConfig,
};
use serde_json::Value;

use crate::support::grpc::{Clients, OwnedRecord, record};
use crate::support::{self, Broker, BrokerOptions, start_with_topic, with_deadline};

const PARTITIONS: u32 = 3;

/// One line of `--format '%p %o %k %v %h'`.
#[derive(Debug)]
struct Line {
    partition: u32,
    offset: u64,
    key: String,
    value: String,
    headers: String,
}

fn parse_line(line: &str) -> Line {
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f.len(), 5, "want '%p %o %k %v %h', got {line:?}");
    Line {
        partition: f[0]
            .parse()
            .unwrap_or_else(|_| panic!("bad %p in {line:?}")),
        offset: f[1]
            .parse()
            .unwrap_or_else(|_| panic!("bad %o in {line:?}")),
        key: f[2].into(),
        value: f[3].into(),
        headers: f[4].into(),
    }
}

#[tokio::test]
async fn keyed_records_with_headers_round_trip_across_partitions() {
    with_deadline(Duration::from_secs(180), async {
        let broker = Broker::start(BrokerOptions::default());
        let topic = "orders";
        broker.cli_ok(
            &[
                "topic",
                "create",
                topic,
                "--partitions",
                &PARTITIONS.to_string(),
            ],
            "",
        );

        // 40 records over 7 keys, produced by the CLI with two headers each.
        let sent: Vec<(String, String)> = (0..40)
            .map(|i| (format!("user-{}", i % 7), format!("v{i:03}")))
            .collect();
        let input: String = sent.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        broker.cli_ok(
            &[
                "produce",
                topic,
                "--key-separator",
                ":",
                "--header",
                "a=b",
                "--header",
                "trace=t-1",
            ],
            &input,
        );

        // Expected placement: the documented partitioner, in send order.
        let mut expected: BTreeMap<u32, Vec<(String, String)>> = BTreeMap::new();
        for (k, v) in &sent {
            expected
                .entry(partition_for_key(k.as_bytes(), PARTITIONS))
                .or_default()
                .push((k.clone(), v.clone()));
        }
        assert!(
            expected.len() > 1,
            "7 keys should spread over several partitions"
        );

        // The CLI consumer.
        let out = broker.cli_ok(
            &[
                "consume",
                topic,
                "--from-beginning",
                "--format",
                "%p %o %k %v %h",
                "--max-messages",
                "40",
                "--timeout-ms",
                "20000",
            ],
            "",
        );
        let lines: Vec<Line> = out.lines().map(parse_line).collect();
        assert_eq!(lines.len(), 40, "consume printed:\n{out}");
        let mut consumed: BTreeMap<u32, Vec<&Line>> = BTreeMap::new();
        for l in &lines {
            assert_eq!(
                l.partition,
                partition_for_key(l.key.as_bytes(), PARTITIONS),
                "key {} landed in the wrong partition",
                l.key
            );
            assert_eq!(l.headers, "a=b,trace=t-1", "headers of {l:?}");
            consumed.entry(l.partition).or_default().push(l);
        }
        for (p, want) in &expected {
            let mut got = consumed.remove(p).unwrap_or_default();
            got.sort_by_key(|l| l.offset);
            let kv: Vec<(String, String)> = got
                .iter()
                .map(|l| (l.key.clone(), l.value.clone()))
                .collect();
            assert_eq!(&kv, want, "partition {p}: records out of order or missing");
            for pair in got.windows(2) {
                assert_eq!(
                    pair[1].offset,
                    pair[0].offset + 1,
                    "offsets dense in partition {p}"
                );
            }
        }
        assert!(
            consumed.is_empty(),
            "records in unexpected partitions: {consumed:?}"
        );

        // The same data through gRPC: decoded and raw fetches agree, headers intact.
        let mut c = Clients::connect(broker.grpc_addr()).await;
        let parts = c.partitions(topic).await;
        assert_eq!(parts.len(), PARTITIONS as usize);
        for p in 0..PARTITIONS {
            let want = expected.get(&p).cloned().unwrap_or_default();
            let decoded: Vec<OwnedRecord> = c
                .fetch_decoded(topic, p, 0)
                .await
                .iter()
                .map(OwnedRecord::from)
                .collect();
            let raw = c.fetch_raw(topic, p, 0).await;
            assert_eq!(
                decoded, raw,
                "partition {p}: decode=true and raw batches differ"
            );
            let kv: Vec<(String, String)> = decoded
                .iter()
                .map(|r| {
                    let key = r
                        .key
                        .as_ref()
                        .map(|k| String::from_utf8_lossy(k).into_owned());
                    (
                        key.unwrap_or_default(),
                        String::from_utf8_lossy(&r.value).into_owned(),
                    )
                })
                .collect();
            assert_eq!(kv, want, "partition {p} through gRPC");
            for r in &decoded {
                assert_eq!(
                    r.headers,
                    vec![
                        ("a".to_string(), Bytes::from_static(b"b")),
                        ("trace".to_string(), Bytes::from_static(b"t-1"))
                    ],
                    "headers of offset {} in partition {p}",
                    r.offset
                );
            }
            let hwm = parts[p as usize].high_watermark;
            if let Some(last) = decoded.last() {
                assert_eq!(
                    hwm,
                    last.offset + 1,
                    "partition {p}: high watermark after the last record"
                );
            }
        }

        // `topic describe --output json` shows the same offsets.
        let json = broker.cli_ok(&["topic", "describe", topic, "--output", "json"], "");
        let v: Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("describe --output json is not JSON ({e}): {json}"));
        assert_eq!(v["name"], topic);
        let jparts = v["partitions"]
            .as_array()
            .unwrap_or_else(|| panic!("no partitions: {v}"));
        assert_eq!(jparts.len(), PARTITIONS as usize);
        for (i, jp) in jparts.iter().enumerate() {
            assert_eq!(jp["id"], i as u64, "{jp}");
            assert_eq!(jp["leader"], 1, "{jp}");
            assert_eq!(jp["replicas"], serde_json::json!([1]), "{jp}");
            assert_eq!(jp["isr"], serde_json::json!([1]), "{jp}");
            assert_eq!(jp["log_start_offset"], parts[i].log_start_offset, "{jp}");
            assert_eq!(jp["high_watermark"], parts[i].high_watermark, "{jp}");
        }

        // The broker's own partitioner (no partition in the request) places
        // keyed records like the client's, and one unkeyed request lands
        // whole in one partition (sticky).
        let keyed: Vec<Record> = (0..12)
            .map(|i| record(Some(&format!("k{i}")), &format!("g{i}"), &[]))
            .collect();
        let resp = c.produce_placed(topic, keyed).await;
        let total: u32 = resp.results.iter().map(|r| r.record_count).sum();
        assert_eq!(total, 12, "{resp:?}");
        for p in 0..PARTITIONS {
            let got: Vec<String> = c
                .fetch_decoded(topic, p, 0)
                .await
                .iter()
                .filter(|r| r.value.starts_with(b"g"))
                .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
                .collect();
            let want: Vec<String> = (0..12)
                .map(|i| format!("k{i}"))
                .filter(|k| partition_for_key(k.as_bytes(), PARTITIONS) == p)
                .collect();
            assert_eq!(got, want, "broker-side partitioner, partition {p}");
        }
        let unkeyed: Vec<Record> = (0..5)
            .map(|i| record(None, &format!("u{i}"), &[]))
            .collect();
        let resp = c.produce_placed(topic, unkeyed).await;
        assert_eq!(
            resp.results.len(),
            1,
            "unkeyed records of one request go to one partition: {resp:?}"
        );
        assert_eq!(resp.results[0].record_count, 5);
    })
    .await;
}

/// A time long past (2023-11-14T22:13:20Z): records stamped with it are
/// beyond any default retention.
const T0: i64 = 1_700_000_000_000;

/// The log start offset of partition 0 of each topic.
async fn log_starts(c: &mut Clients, topics: &[&str]) -> Vec<u64> {
    let mut starts = Vec::with_capacity(topics.len());
    for topic in topics {
        starts.push(c.partitions(topic).await.remove(0).log_start_offset);
    }
    starts
}

async fn list_offset(c: &mut Clients, topic: &str, query: OffsetQuery) -> PartitionOffset {
    let resp = c
        .fetch
        .list_offsets(ListOffsetsRequest {
            topic: topic.into(),
            queries: vec![query],
        })
        .await
        .unwrap_or_else(|s| panic!("ListOffsets {query:?}: {s:?}"))
        .into_inner();
    assert_eq!(resp.offsets.len(), 1, "{resp:?}");
    let o = resp.offsets[0].clone();
    assert!(o.error.is_none(), "ListOffsets {query:?}: {o:?}");
    assert_eq!(o.partition, query.partition);
    o
}

fn spec(partition: u32, spec: OffsetSpec) -> OffsetQuery {
    OffsetQuery {
        partition,
        spec: spec as i32,
        timestamp_ms: 0,
    }
}

fn at_time(partition: u32, timestamp_ms: i64) -> OffsetQuery {
    OffsetQuery {
        partition,
        spec: OffsetSpec::Unspecified as i32,
        timestamp_ms,
    }
}

#[tokio::test]
async fn replay_from_offset_and_from_timestamp() {
    with_deadline(Duration::from_secs(180), async {
        let broker = Broker::start(BrokerOptions::flush("never"));
        let topic = "replay";
        // Record `i` of partition 1 has timestamp `t0 + i * 1000`: an hour
        // ago on a whole second (recent enough for the default retention).
        let t0 = (support::now_ms() / 1000 - 3600) * 1000;
        let mut c = Clients::connect(broker.grpc_addr()).await;
        c.create_topic(topic, 2).await;

        // Partition 1: ten records, one request (one batch) each, with
        // timestamps one second apart.
        let mut base = None;
        for i in 0..10i64 {
            let mut r = record(None, &format!("r{i}"), &[]);
            r.timestamp_ms = Some(t0 + i * 1000);
            let off = c.produce_ok(topic, 1, vec![r]).await;
            let first = *base.get_or_insert(off);
            assert_eq!(off, first + i as u64, "offsets dense in partition 1");
        }
        let b = base.unwrap_or_default();
        // Partition 0: one batch of five records (for mid-batch fetches).
        let p0: Vec<Record> = (0..5)
            .map(|i| record(None, &format!("z{i}"), &[]))
            .collect();
        let p0_base = c.produce_ok(topic, 0, p0).await;

        // ListOffsets.
        assert_eq!(
            list_offset(&mut c, topic, spec(1, OffsetSpec::Earliest))
                .await
                .offset,
            0
        );
        assert_eq!(
            list_offset(&mut c, topic, spec(1, OffsetSpec::Latest))
                .await
                .offset,
            b + 10
        );
        assert_eq!(
            list_offset(&mut c, topic, spec(0, OffsetSpec::Latest))
                .await
                .offset,
            p0_base + 5
        );
        let found = list_offset(&mut c, topic, at_time(1, t0 + 4500)).await;
        assert_eq!(found.offset, b + 5, "first record at or after t0 + 4.5 s");
        assert_eq!(found.timestamp_ms, Some(t0 + 5000), "{found:?}");
        let exact = list_offset(&mut c, topic, at_time(1, t0 + 3000)).await;
        assert_eq!(exact.offset, b + 3, "a record exactly at the timestamp");
        assert_eq!(
            list_offset(&mut c, topic, at_time(1, t0 - 1)).await.offset,
            b
        );
        let after = list_offset(&mut c, topic, at_time(1, t0 + 60_000)).await;
        assert_eq!(
            after.offset,
            b + 10,
            "a timestamp after every record gives the high watermark"
        );

        // Mid-batch fetch: the batch comes back whole, decoded records skip
        // what lies below the requested offset.
        let decoded = c.fetch_decoded(topic, 0, p0_base + 2).await;
        let vals: Vec<&[u8]> = decoded.iter().map(|r| r.value.as_ref()).collect();
        assert_eq!(vals, vec![&b"z2"[..], b"z3", b"z4"]);
        assert_eq!(decoded[0].offset, p0_base + 2);
        let raw = c.fetch_raw(topic, 0, p0_base + 2).await;
        assert_eq!(raw.len(), 3, "{raw:?}");

        // The CLI: --offset, --from-time epoch-ms and RFC 3339.
        let values = |from: &[&str]| -> Vec<String> {
            let mut args = vec!["consume", topic, "--partition", "1", "--timeout-ms", "1000"];
            args.extend_from_slice(from);
            broker
                .cli_ok(&args, "")
                .lines()
                .map(str::to_string)
                .collect()
        };
        let range = |a: i64| -> Vec<String> { (a..10).map(|i| format!("r{i}")).collect() };
        let offset3 = (b + 3).to_string();
        assert_eq!(values(&["--offset", &offset3]), range(3), "--offset");
        let t5 = (t0 + 5000).to_string();
        assert_eq!(
            values(&["--from-time", &t5]),
            range(5),
            "--from-time epoch-ms"
        );
        assert_eq!(
            values(&["--from-time", &support::rfc3339(t0 + 5000, 0)]),
            range(5),
            "--from-time RFC 3339 (UTC)"
        );
        assert_eq!(values(&["--from-beginning"]), range(0), "--from-beginning");

        // %T prints the record timestamps (ms).
        let out = broker.cli_ok(
            &[
                "consume",
                topic,
                "--partition",
                "1",
                "--from-beginning",
                "--format",
                "%o %T %v",
                "--max-messages",
                "10",
            ],
            "",
        );
        let want: Vec<String> = (0..10i64)
            .map(|i| format!("{} {} r{i}", b + i as u64, t0 + i * 1000))
            .collect();
        assert_eq!(out.lines().collect::<Vec<_>>(), want);

        // RFC 3339 with a UTC offset other than Z: applied, not ignored.
        assert_eq!(
            values(&["--from-time", &support::rfc3339(t0 + 4500, 60)]),
            range(5),
            "--from-time RFC 3339 with an offset and fraction"
        );
        assert_eq!(
            values(&["--from-time", &support::rfc3339(t0 + 5000, -300)]),
            range(5),
            "--from-time RFC 3339 with a negative offset"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_pushes_stored_then_new_batches_and_fetch_long_polls() {
    with_deadline(Duration::from_secs(120), async {
        let (_broker, mut c) = start_with_topic(BrokerOptions::flush("never"), "live", 1).await;
        c.produce_ok(
            "live",
            0,
            vec![record(None, "old-0", &[]), record(None, "old-1", &[])],
        )
        .await;

        let mut sub = c
            .fetch
            .subscribe(SubscribeRequest {
                topic: "live".into(),
                partition: 0,
                offset: 1,
                max_bytes: 0,
                decode: true,
            })
            .await
            .unwrap_or_else(|s| panic!("subscribe: {s:?}"))
            .into_inner();
        let mut seen: Vec<(u64, String)> = Vec::new();
        let mut producer = c.clone();
        let mut produced_new = false;
        while seen.len() < 3 {
            let msg = sub
                .message()
                .await
                .unwrap_or_else(|s| panic!("subscribe stream: {s:?}"))
                .unwrap_or_else(|| panic!("subscribe ended after {seen:?}"));
            assert!(msg.error.is_none(), "{msg:?}");
            seen.extend(
                msg.records
                    .iter()
                    .map(|r| (r.offset, String::from_utf8_lossy(&r.value).into_owned())),
            );
            if !produced_new {
                // The stored data came first; now commit more while subscribed.
                producer
                    .produce_ok("live", 0, vec![record(None, "new-2", &[])])
                    .await;
                producer
                    .produce_ok("live", 0, vec![record(None, "new-3", &[])])
                    .await;
                produced_new = true;
            }
        }
        let want: Vec<(u64, String)> = vec![
            (1, "old-1".into()),
            (2, "new-2".into()),
            (3, "new-3".into()),
        ];
        assert_eq!(
            seen[..3],
            want[..],
            "stored records from offset 1, then pushed ones"
        );
        drop(sub);

        // Long poll with nothing coming: empty after about max_wait_ms.
        let started = std::time::Instant::now();
        let mut req = crate::support::grpc::fetch_request("live", 0, 4, true);
        req.max_wait_ms = 500;
        req.min_bytes = 1;
        let resp = c
            .fetch
            .fetch(req)
            .await
            .unwrap_or_else(|s| panic!("long poll: {s:?}"))
            .into_inner();
        let waited = started.elapsed();
        assert!(resp.partitions[0].records.is_empty(), "{resp:?}");
        assert!(
            waited >= Duration::from_millis(450) && waited < Duration::from_secs(10),
            "max_wait_ms=500 answered after {waited:?}"
        );

        // Long poll: a fetch at the high watermark waits for the next commit
        // and returns it well before max_wait_ms.
        let mut poller = c.clone();
        let waiting = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut req = crate::support::grpc::fetch_request("live", 0, 4, true);
            req.max_wait_ms = 30_000;
            req.min_bytes = 1;
            let resp = poller
                .fetch
                .fetch(req)
                .await
                .unwrap_or_else(|s| panic!("long poll: {s:?}"))
                .into_inner();
            (resp, started.elapsed())
        });
        // Still waiting 300 ms later: with no data the long poll must hold
        // (this pause is the behaviour under test, not a wait for readiness).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "a fetch with max_wait_ms=30000 and no data returned at once"
        );
        c.produce_ok("live", 0, vec![record(None, "polled", &[])])
            .await;
        let (resp, waited) = waiting
            .await
            .unwrap_or_else(|e| panic!("poller panicked: {e}"));
        let p = &resp.partitions[0];
        assert_eq!(p.records.len(), 1, "{p:?}");
        assert_eq!(p.records[0].value.as_ref(), b"polled");
        assert!(
            waited < Duration::from_secs(20),
            "the long poll answered after {waited:?}, not when data arrived"
        );
    })
    .await;
}

#[tokio::test]
async fn large_records_up_to_the_default_limit_round_trip() {
    with_deadline(Duration::from_secs(180), async {
        let (broker, mut c) = start_with_topic(BrokerOptions::flush("never"), "large", 1).await;
        // 6 MiB: above gRPC's 4 MiB default message limit, below the
        // topic's default max_record_bytes (8 MiB).
        let big: String = (0..6 << 20)
            .map(|i| (b'a' + (i % 26) as u8) as char)
            .collect();
        let base = c
            .produce_ok("large", 0, vec![record(None, &big, &[])])
            .await;
        let got = c.fetch_decoded("large", 0, base).await;
        assert_eq!(got.len(), 1);
        assert!(
            got[0].value == big.as_bytes(),
            "6 MiB value came back changed"
        );

        // The CLI's producer and consumer handle it too.
        broker.cli_ok(&["produce", "large"], &format!("{big}\n"));
        let out = broker.cli_ok(
            &[
                "consume",
                "large",
                "--offset",
                "1",
                "--partition",
                "0",
                "--max-messages",
                "1",
            ],
            "",
        );
        assert_eq!(out.len(), big.len() + 1, "one 6 MiB line");
        assert!(
            out.trim_end() == big,
            "the CLI round trip changed the value"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_to_one_partition_get_disjoint_dense_offsets() {
    with_deadline(Duration::from_secs(120), async {
        let (broker, mut c) = start_with_topic(BrokerOptions::flush("always"), "shared", 1).await;
        let mut tasks = Vec::new();
        for producer in 0..4 {
            let mut c = Clients::connect(broker.grpc_addr()).await;
            tasks.push(tokio::spawn(async move {
                let mut ranges = Vec::new();
                for call in 0..25 {
                    let n = 1 + (call % 3);
                    let records = (0..n)
                        .map(|i| record(None, &format!("p{producer}-c{call}-{i}"), &[]))
                        .collect();
                    let base = c.produce_ok("shared", 0, records).await;
                    ranges.push((base, n as u64, producer, call));
                }
                ranges
            }));
        }
        let mut ranges = Vec::new();
        for t in tasks {
            ranges.extend(t.await.unwrap_or_else(|e| panic!("producer panicked: {e}")));
        }
        ranges.sort();
        let mut next = 0;
        for (base, n, _, _) in &ranges {
            assert_eq!(
                *base, next,
                "offset ranges overlap or leave a gap: {ranges:?}"
            );
            next = base + n;
        }
        assert_eq!(c.high_watermark("shared", 0).await, next);
        // Each range holds exactly the records of the call that got it.
        let stored = c.fetch_decoded("shared", 0, 0).await;
        for (base, n, producer, call) in &ranges {
            for i in 0..*n {
                let r = &stored[(base + i) as usize];
                assert_eq!(r.offset, base + i);
                assert_eq!(
                    String::from_utf8_lossy(&r.value),
                    format!("p{producer}-c{call}-{i}"),
                    "offset {}",
                    base + i
                );
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_deleted_topic_stays_deleted_and_its_name_starts_empty() {
    with_deadline(Duration::from_secs(120), async {
        let (mut broker, mut c) = start_with_topic(BrokerOptions::flush("never"), "gone", 2).await;
        c.create_topic("kept", 1).await;
        c.produce_ok("gone", 1, vec![record(None, "old", &[])])
            .await;
        c.produce_ok("kept", 0, vec![record(None, "stays", &[])])
            .await;
        broker.cli_ok(&["topic", "delete", "gone"], "");

        // Recreated under the same name: empty, new partition count.
        c.create_topic("gone", 1).await;
        assert_eq!(c.high_watermark("gone", 0).await, 0);
        assert!(c.fetch_decoded("gone", 0, 0).await.is_empty());
        c.produce_ok("gone", 0, vec![record(None, "new", &[])])
            .await;
        broker.cli_ok(&["topic", "delete", "gone"], "");
        drop(c);

        // A restart does not bring it back.
        broker.terminate_ok().await;
        broker.restart();
        let mut c = Clients::connect(broker.grpc_addr()).await;
        let listed = c
            .admin
            .list_topics(runnel_proto::v1::ListTopicsRequest {})
            .await
            .unwrap_or_else(|s| panic!("ListTopics: {s:?}"))
            .into_inner();
        let names: Vec<&str> = listed.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["kept"],
            "a deleted topic came back after restart"
        );
        assert_eq!(c.fetch_decoded("kept", 0, 0).await.len(), 1);
        let dirs = broker.partition_dirs();
        assert_eq!(dirs.len(), 1, "the deleted topic's files remain: {dirs:?}");
    })
    .await;
}

#[tokio::test]
async fn retention_deletes_old_segments_and_reads_start_at_the_log_start() {
    with_deadline(Duration::from_secs(120), async {
        let broker = Broker::start(BrokerOptions::flush("never"));
        let mut c = Clients::connect(broker.grpc_addr()).await;
        let small_segments = |retention_ms: i64, retention_bytes: i64| TopicConfig {
            partitions: Some(1),
            segment_bytes: Some(1 << 20),
            // The broker wants max_record_bytes <= segment_bytes.
            max_record_bytes: Some(128 << 10),
            retention_ms: Some(retention_ms),
            retention_bytes: Some(retention_bytes),
            ..Default::default()
        };
        // By size: keep about 1 MiB. By time: records from 2023, keep an hour.
        c.create_topic_with("by-size", small_segments(-1, 1 << 20))
            .await;
        c.create_topic_with("by-time", small_segments(3_600_000, -1))
            .await;
        let value = "r".repeat(1000);
        for topic in ["by-size", "by-time"] {
            for batch in 0..56i64 {
                let records: Vec<Record> = (0..64)
                    .map(|_| {
                        let mut r = record(None, &value, &[]);
                        r.timestamp_ms = Some(T0 + batch);
                        r
                    })
                    .collect();
                c.produce_ok(topic, 0, records).await;
            }
        }
        let total = 56 * 64;
        // Retention runs every 5 s and deletes all it may in one pass; a
        // pass during the writes deletes only part. Wait for log starts
        // that a later pass left as they were: the final ones.
        let starts = crate::support::eventually(
            Duration::from_secs(90),
            "retention to delete segments and then stop",
            || {
                let mut c = c.clone();
                async move {
                    let before = log_starts(&mut c, &["by-size", "by-time"]).await;
                    if before.contains(&0) {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(5_500)).await;
                    let after = log_starts(&mut c, &["by-size", "by-time"]).await;
                    (before == after).then_some(after)
                }
            },
        )
        .await;
        for (topic, start) in ["by-size", "by-time"].into_iter().zip(starts) {
            let p = c.partitions(topic).await.remove(0);
            assert_eq!(p.high_watermark, total, "{topic}: {p:?}");
            assert!(start < total, "{topic}: the active segment stays: {p:?}");
            let earliest = list_offset(&mut c, topic, spec(0, OffsetSpec::Earliest)).await;
            assert_eq!(earliest.offset, start, "{topic}: ListOffsets earliest");
            // Below the log start: out of range.
            let resp = c
                .fetch
                .fetch(crate::support::grpc::fetch_request(topic, 0, 0, true))
                .await;
            match resp {
                Ok(r) => crate::support::grpc::assert_partition_error(
                    r.into_inner().partitions[0].error.as_ref(),
                    runnel_proto::v1::ErrorReason::OffsetOutOfRange,
                ),
                Err(s) => {
                    crate::support::grpc::assert_failed_with::<()>(
                        Err(s),
                        runnel_proto::v1::ErrorReason::OffsetOutOfRange,
                    );
                }
            }
            // What is left reads back whole, from the log start.
            let rest = c.fetch_decoded(topic, 0, start).await;
            assert_eq!(rest.len() as u64, total - start, "{topic}");
            assert_eq!(rest[0].offset, start);
            // The CLI's --from-beginning starts at the log start.
            let out = broker.cli_ok(
                &[
                    "consume",
                    topic,
                    "--from-beginning",
                    "--format",
                    "%o",
                    "--max-messages",
                    "1",
                ],
                "",
            );
            assert_eq!(out.trim(), start.to_string(), "{topic}: --from-beginning");
        }
        let by_size = c.partitions("by-size").await.remove(0);
        assert!(
            by_size.size_bytes <= 3 << 20,
            "retention_bytes=1 MiB keeps at most a segment or two: {by_size:?}"
        );
    })
    .await;
}

/// The harness's RFC 3339 formatter, on known instants (the replay test
/// depends on it).
#[test]
fn harness_formats_rfc3339_like_the_spec() {
    let cases: [(u32, i64, i64, &str); 4] = [
        (1, T0, 0, "2023-11-14T22:13:20Z"),
        (2, T0 + 4500, 60, "2023-11-14T23:13:24.500+01:00"),
        (3, T0 + 5000, -300, "2023-11-14T17:13:25-05:00"),
        (4, 951_782_400_000, 0, "2000-02-29T00:00:00Z"),
    ];
    for (case, ms, offset, want) in cases {
        assert_eq!(support::rfc3339(ms, offset), want, "case {case}");
    }
}
