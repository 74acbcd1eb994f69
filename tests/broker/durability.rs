//! Restart and crash: SIGTERM keeps everything; kill -9 with flush=always
//! loses nothing that was acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use runnel_batch::{BatchBuilder, Compression, NewRecord};
use runnel_proto::v1::produce_service_client::ProduceServiceClient;
use runnel_proto::v1::{
    Acks, ConsumedRecord, ListTopicsRequest, ProduceRequest, ProduceStreamRequest, Record,
    TopicConfig, TopicDescription,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::support::grpc::{Clients, batch_for, channel, record, records_for};
use crate::support::{Broker, BrokerOptions, eventually, run_cli, start_with_topic, with_deadline};

/// Everything a client can observe about the broker's data.
#[derive(Debug, PartialEq)]
struct Snapshot {
    topics: Vec<String>,
    /// Per topic: description without `size_bytes` (a storage detail), and
    /// every record of every partition.
    described: BTreeMap<String, (TopicDescription, Vec<Vec<ConsumedRecord>>)>,
}

async fn snapshot(c: &mut Clients) -> Snapshot {
    let listed = c
        .admin
        .list_topics(ListTopicsRequest {})
        .await
        .unwrap_or_else(|s| panic!("ListTopics: {s:?}"))
        .into_inner();
    let topics: Vec<String> = listed.topics.iter().map(|t| t.name.clone()).collect();
    let mut described = BTreeMap::new();
    for name in &topics {
        let mut d = c.describe(name).await;
        for p in &mut d.partitions {
            p.size_bytes = 0;
        }
        let mut records = Vec::new();
        for p in &d.partitions {
            records.push(c.fetch_decoded(name, p.id, p.log_start_offset).await);
        }
        described.insert(name.clone(), (d, records));
    }
    Snapshot { topics, described }
}

fn lz4_batch(values: &[&str]) -> Bytes {
    let mut b = BatchBuilder::new(Compression::Lz4);
    for (i, v) in values.iter().enumerate() {
        b.push(NewRecord {
            key: Some(b"pre"),
            value: v.as_bytes(),
            headers: &[("h", b"1")],
            timestamp: crate::support::now_ms() + i as i64,
        });
    }
    b.finish()
        .unwrap_or_else(|e| panic!("cannot build a batch: {e}"))
}

#[tokio::test]
async fn restart_after_sigterm_keeps_topics_offsets_and_records() {
    with_deadline(Duration::from_secs(180), async {
        // flush=never: only the graceful shutdown makes the data durable.
        let mut broker = Broker::start(BrokerOptions::flush("never"));
        broker.cli_ok(&["topic", "create", "alpha", "--partitions", "3"], "");
        let input: String = (0..30).map(|i| format!("k{}:a{i}\n", i % 5)).collect();
        broker.cli_ok(&["produce", "alpha", "--key-separator", ":"], &input);

        let mut c = Clients::connect(broker.grpc_addr()).await;
        c.create_topic_with(
            "beta",
            TopicConfig {
                partitions: Some(1),
                retention_ms: Some(3_600_000),
                max_record_bytes: Some(65_536),
                ..Default::default()
            },
        )
        .await;
        for chunk in 0..4 {
            let records: Vec<Record> = (0..5)
                .map(|i| {
                    record(
                        Some("b"),
                        &format!("b{chunk}-{i}"),
                        &[("n", &i.to_string())],
                    )
                })
                .collect();
            c.produce_ok("beta", 0, records).await;
        }
        let resp = c
            .produce
            .produce(ProduceRequest {
                topic: "beta".into(),
                partitions: vec![batch_for(0, lz4_batch(&["pre-0", "pre-1", "pre-2"]))],
                acks: Acks::All as i32,
                timeout_ms: 0,
            })
            .await
            .unwrap_or_else(|s| panic!("pre-encoded produce: {s:?}"))
            .into_inner();
        assert!(resp.results[0].error.is_none(), "{resp:?}");

        let before = snapshot(&mut c).await;
        assert_eq!(before.topics, vec!["alpha".to_string(), "beta".to_string()]);
        let alpha_records: usize = before.described["alpha"].1.iter().map(Vec::len).sum();
        assert_eq!(alpha_records, 30);
        assert_eq!(before.described["beta"].1[0].len(), 23);
        drop(c);

        broker.terminate_ok().await;
        broker.restart();
        let mut c = Clients::connect(broker.grpc_addr()).await;
        let after = snapshot(&mut c).await;
        assert_eq!(after, before, "a restart changed what clients see");

        // Writing continues where the log ended.
        let hwm = after.described["beta"].0.partitions[0].high_watermark;
        let off = c
            .produce_ok("beta", 0, vec![record(None, "after", &[])])
            .await;
        assert_eq!(off, hwm, "first offset after restart");
        drop(c);

        broker.terminate_ok().await;
        let dirs = broker.partition_dirs();
        assert_eq!(dirs.len(), 4, "3 + 1 partition directories: {dirs:?}");
        for dir in dirs {
            let dir = dir.to_string_lossy().into_owned();
            let out = run_cli(&["log", "verify", &dir], "");
            assert!(out.status.success(), "runnel log verify {dir}: {out}");
        }
    })
    .await;
}

/// Partitions written by the stream producer (3 is the unary producer's).
const STREAM_PARTITIONS: [u32; 3] = [0, 1, 2];
const UNARY_PARTITION: u32 = 3;
/// Records per partition per request.
const PER_REQUEST: usize = 4;
/// Requests a stream keeps in flight.
const WINDOW: usize = 8;
/// Acknowledged requests to wait for before killing the broker.
const ACKED_BEFORE_KILL: u64 = 120;

/// One acknowledged append: values written at `base_offset..`.
#[derive(Debug)]
struct Acked {
    partition: u32,
    base_offset: u64,
    values: Vec<Bytes>,
}

fn value(seq: u64, partition: u32, i: usize) -> Bytes {
    // Padded to about 100 bytes so that batches are not trivially small.
    Bytes::from(format!("s{seq:06}-p{partition}-r{i}-{}", "x".repeat(80)))
}

/// Unkeyed records with these values and the broker's timestamps.
fn plain_records(values: &[Bytes]) -> Vec<Record> {
    values
        .iter()
        .map(|v| Record {
            value: v.clone(),
            ..Default::default()
        })
        .collect()
}

/// Sequence number and record index a value was written with.
fn seq_of(v: &[u8]) -> (u64, u64) {
    let s = String::from_utf8_lossy(v);
    let field = |prefix: char, i: usize| {
        s.split('-')
            .nth(i)
            .and_then(|f| f.strip_prefix(prefix))
            .and_then(|d| d.parse().ok())
    };
    match (field('s', 0), field('r', 2)) {
        (Some(seq), Some(i)) => (seq, i),
        _ => panic!("a record this test did not write: {s:?}"),
    }
}

/// Streams requests over ProduceStream with a window of [`WINDOW`] until the
/// stream breaks; returns every acknowledged append and the number sent.
async fn stream_producer(ch: Channel, acked_count: Arc<AtomicU64>) -> (Vec<Acked>, u64) {
    let mut client = ProduceServiceClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel::<ProduceStreamRequest>(WINDOW);
    let mut acked = Vec::new();
    let mut responses = match client.produce_stream(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => panic!("ProduceStream did not open: {s:?}"),
    };
    let mut in_flight: HashMap<u64, Vec<(u32, Vec<Bytes>)>> = HashMap::new();
    let mut seq = 0u64;
    'outer: loop {
        while in_flight.len() < WINDOW {
            let mut parts = Vec::new();
            let mut sent = Vec::new();
            for &p in &STREAM_PARTITIONS {
                let values: Vec<Bytes> = (0..PER_REQUEST).map(|i| value(seq, p, i)).collect();
                if p == 2 {
                    // One partition as a pre-encoded batch, stored as received.
                    let mut b = BatchBuilder::new(Compression::None);
                    for v in &values {
                        b.push(NewRecord {
                            key: None,
                            value: v,
                            headers: &[],
                            timestamp: crate::support::now_ms(),
                        });
                    }
                    let batch = b.finish().unwrap_or_else(|e| panic!("batch: {e}"));
                    parts.push(batch_for(p, batch));
                } else {
                    parts.push(records_for(Some(p), plain_records(&values)));
                }
                sent.push((p, values));
            }
            let req = ProduceStreamRequest {
                sequence: seq,
                request: Some(ProduceRequest {
                    topic: "durable".into(),
                    partitions: parts,
                    acks: Acks::All as i32,
                    timeout_ms: 0,
                }),
            };
            if tx.send(req).await.is_err() {
                break 'outer;
            }
            in_flight.insert(seq, sent);
            seq += 1;
        }
        let resp = match responses.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) | Err(_) => break,
        };
        let sent = in_flight
            .remove(&resp.sequence)
            .unwrap_or_else(|| panic!("response for unknown sequence {}", resp.sequence));
        assert!(
            resp.error.is_none(),
            "request {} failed: {resp:?}",
            resp.sequence
        );
        let Some(r) = resp.response else {
            panic!("response {} has neither response nor error", resp.sequence)
        };
        assert_eq!(
            r.results.len(),
            sent.len(),
            "one result per partition: {r:?}"
        );
        for (result, (p, values)) in r.results.iter().zip(sent) {
            assert_eq!(result.partition, p, "results in request order: {r:?}");
            if result.error.is_some() {
                continue;
            }
            let base_offset = result
                .base_offset
                .unwrap_or_else(|| panic!("acks=all without base offset: {r:?}"));
            assert_eq!(result.record_count as usize, values.len());
            acked.push(Acked {
                partition: p,
                base_offset,
                values,
            });
        }
        acked_count.fetch_add(1, Ordering::SeqCst);
    }
    (acked, seq)
}

/// Unary Produce calls to [`UNARY_PARTITION`], one at a time, until one fails.
async fn unary_producer(ch: Channel) -> Vec<Acked> {
    let mut client = ProduceServiceClient::new(ch);
    let mut acked = Vec::new();
    for seq in 0.. {
        let values: Vec<Bytes> = (0..PER_REQUEST)
            .map(|i| value(seq, UNARY_PARTITION, i))
            .collect();
        let records = plain_records(&values);
        let resp = client
            .produce(ProduceRequest {
                topic: "durable".into(),
                partitions: vec![records_for(Some(UNARY_PARTITION), records)],
                acks: Acks::All as i32,
                timeout_ms: 0,
            })
            .await;
        let Ok(resp) = resp else { break };
        let r = resp.into_inner();
        let Some(base_offset) = r.results.first().and_then(|x| x.base_offset) else {
            break;
        };
        acked.push(Acked {
            partition: UNARY_PARTITION,
            base_offset,
            values,
        });
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_with_flush_always_loses_no_acknowledged_record() {
    with_deadline(Duration::from_secs(240), async {
        let (mut broker, c) = start_with_topic(BrokerOptions::flush("always"), "durable", 4).await;

        let acked_count = Arc::new(AtomicU64::new(0));
        let stream = tokio::spawn(stream_producer(
            channel(broker.grpc_addr()).await,
            acked_count.clone(),
        ));
        let unary = tokio::spawn(unary_producer(channel(broker.grpc_addr()).await));
        eventually(Duration::from_secs(120), "acknowledged stream requests", || {
            let n = acked_count.load(Ordering::SeqCst);
            // A producer that stopped early fails below with its own message.
            let stopped = stream.is_finished() || unary.is_finished();
            async move { (n >= ACKED_BEFORE_KILL || stopped).then_some(()) }
        })
        .await;
        assert!(
            !unary.is_finished(),
            "the unary producer stopped before the kill:\n{}",
            broker.stderr()
        );
        broker.kill9();
        let (mut acked, sent) = stream
            .await
            .unwrap_or_else(|e| panic!("stream producer panicked: {e}"));
        let acked_requests = acked.len() / STREAM_PARTITIONS.len();
        assert!(
            sent > acked_requests as u64,
            "the kill should land while requests are in flight (sent {sent}, acked {acked_requests})"
        );
        acked.extend(unary.await.unwrap_or_else(|e| panic!("unary producer panicked: {e}")));
        drop(c);

        broker.restart();
        let mut c = Clients::connect(broker.grpc_addr()).await;
        let mut logs: BTreeMap<u32, BTreeMap<u64, Bytes>> = BTreeMap::new();
        for p in 0..4 {
            let records = c.fetch_decoded("durable", p, 0).await;
            let log = logs.entry(p).or_default();
            let mut last_seq = None;
            for r in records {
                // Appended in the order sent: (sequence, index) only grows,
                // so nothing is reordered or stored twice.
                let s = seq_of(&r.value);
                assert!(
                    last_seq.is_none_or(|l| s > l),
                    "partition {p}: record {s:?} after {last_seq:?} (out of order or duplicated)"
                );
                last_seq = Some(s);
                log.insert(r.offset, r.value);
            }
        }
        let mut per_partition: BTreeMap<u32, usize> = BTreeMap::new();
        for a in &acked {
            let log = &logs[&a.partition];
            for (i, v) in a.values.iter().enumerate() {
                let off = a.base_offset + i as u64;
                assert_eq!(
                    log.get(&off),
                    Some(v),
                    "partition {}: acknowledged record at offset {off} lost or changed after kill -9",
                    a.partition
                );
            }
            *per_partition.entry(a.partition).or_default() += a.values.len();
        }
        for p in 0..4u32 {
            let acked_here = per_partition.get(&p).copied().unwrap_or(0);
            assert!(acked_here > 0, "partition {p}: nothing was acknowledged before the kill");
        }
    })
    .await;
}

#[tokio::test]
async fn sigterm_exits_0_and_keeps_data_even_while_a_client_is_unresponsive() {
    with_deadline(Duration::from_secs(120), async {
        // flush=never: the data survives only if shutdown really flushes.
        let mut broker = Broker::start(BrokerOptions::flush("never"));
        let addr = broker.grpc_addr();
        let mut c = Clients::connect(addr).await;
        c.create_topic("frozen", 1).await;
        c.produce_ok("frozen", 0, vec![record(None, "kept", &[])])
            .await;

        // A client that completes the HTTP/2 handshake and then stops
        // reading and answering (a frozen or stopped process).
        let mut frozen =
            std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
        frozen
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .unwrap_or_else(|e| panic!("handshake: {e}"));
        frozen
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap_or_else(|e| panic!("timeout: {e}"));
        let mut settings = [0u8; 9];
        frozen
            .read_exact(&mut settings)
            .unwrap_or_else(|e| panic!("the broker did not answer the handshake: {e}"));
        assert_eq!(settings[3], 4, "the broker's first frame is SETTINGS");
        drop(c);

        broker.terminate_ok().await;
        drop(frozen);
        broker.restart();
        let mut c = Clients::connect(broker.grpc_addr()).await;
        let got = c.fetch_decoded("frozen", 0, 0).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].value.as_ref(), b"kept");
    })
    .await;
}

#[tokio::test]
async fn a_second_broker_on_the_same_data_dir_is_refused() {
    with_deadline(Duration::from_secs(120), async {
        let (broker, mut c) = start_with_topic(BrokerOptions::flush("never"), "owned", 1).await;
        c.produce_ok("owned", 0, vec![record(None, "mine", &[])])
            .await;
        let dir = broker.data_dir().to_string_lossy().into_owned();
        // Two writers on one log would corrupt it: the second must stop
        // with a clear message (not serve, not hang).
        let out = crate::support::cli::run_cli_timeout(
            &[
                "broker",
                "--id",
                "2",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                "--data-dir",
                &dir,
            ],
            "",
            &[],
            Duration::from_secs(30),
        );
        assert!(!out.status.success(), "a second broker ran on {dir}: {out}");
        assert!(
            !out.stdout.contains("listening"),
            "it even printed a ready line: {out}"
        );
        assert!(!out.stderr.trim().is_empty(), "no message: {out}");
        // The first one is unharmed.
        let got = c.fetch_decoded("owned", 0, 0).await;
        assert_eq!(got.len(), 1);
        c.produce_ok("owned", 0, vec![record(None, "still mine", &[])])
            .await;
    })
    .await;
}
