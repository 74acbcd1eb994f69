//! Bad input: each case gets a clear error, and the broker keeps serving
//! other clients afterwards.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prost::Message;
use runnel_batch::{BatchBuilder, CRC_START, Compression, HEADER_LEN, NewRecord};
use runnel_proto::v1::{
    Acks, CreateTopicRequest, DeleteTopicRequest, DescribeTopicRequest, ErrorReason,
    ListOffsetsRequest, OffsetQuery, OffsetSpec, ProduceRequest, ProduceStreamRequest,
    ProduceStreamResponse, Record, SubscribeRequest, TopicConfig,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::support::grpc::{
    Clients, assert_failed_with, assert_partition_error, batch_for, fetch_request, record,
    records_for,
};
use crate::support::{Broker, BrokerOptions, run_cli, start_with_topic, with_deadline};

const LIMIT: Duration = Duration::from_secs(120);

/// A new client creates a topic, produces and reads back: the broker still
/// serves everyone else.
async fn assert_still_serves(broker: &Broker, tag: &str) {
    let mut c = Clients::connect(broker.grpc_addr()).await;
    let topic = format!("still-serving-{tag}");
    c.create_topic(&topic, 1).await;
    let base = c
        .produce_ok(&topic, 0, vec![record(Some("k"), "alive", &[])])
        .await;
    let got = c.fetch_decoded(&topic, 0, base).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].value.as_ref(), b"alive");
}

fn produce_request(
    topic: &str,
    partitions: Vec<runnel_proto::v1::PartitionRecords>,
) -> ProduceRequest {
    ProduceRequest {
        topic: topic.into(),
        partitions,
        acks: Acks::All as i32,
        timeout_ms: 0,
    }
}

#[tokio::test]
async fn unknown_topic_fails_with_not_found_and_unknown_topic_reason() {
    with_deadline(LIMIT, async {
        let broker = Broker::start(BrokerOptions::flush("never"));
        let mut c = Clients::connect(broker.grpc_addr()).await;

        // Every RPC that names a topic: NOT_FOUND + UNKNOWN_TOPIC.
        let latest = OffsetQuery {
            partition: 0,
            spec: OffsetSpec::Latest as i32,
            timestamp_ms: 0,
        };
        let name = || "nope".to_string();
        let calls: [(&str, Result<(), tonic::Status>); 5] = [
            (
                "Produce",
                c.produce_to("nope", 0, vec![record(None, "v", &[])])
                    .await
                    .map(drop),
            ),
            (
                "Fetch",
                c.fetch
                    .fetch(fetch_request("nope", 0, 0, true))
                    .await
                    .map(drop),
            ),
            (
                "DescribeTopic",
                c.admin
                    .describe_topic(DescribeTopicRequest { name: name() })
                    .await
                    .map(drop),
            ),
            (
                "DeleteTopic",
                c.admin
                    .delete_topic(DeleteTopicRequest { name: name() })
                    .await
                    .map(drop),
            ),
            (
                "ListOffsets",
                c.fetch
                    .list_offsets(ListOffsetsRequest {
                        topic: name(),
                        queries: vec![latest],
                    })
                    .await
                    .map(drop),
            ),
        ];
        for (rpc, result) in calls {
            let s = assert_failed_with(result, ErrorReason::UnknownTopic);
            assert_eq!(s.code(), Code::NotFound, "{rpc}: {s:?}");
            assert!(
                s.message().contains("nope"),
                "{rpc}: the message names the topic: {s:?}"
            );
        }

        // A partition the topic does not have: UNKNOWN_PARTITION, as a call
        // error or as that partition's error.
        c.create_topic("one", 1).await;
        match c.produce_to("one", 7, vec![record(None, "v", &[])]).await {
            Ok(resp) => assert_partition_error(
                resp.results.first().and_then(|r| r.error.as_ref()),
                ErrorReason::UnknownPartition,
            ),
            Err(s) => {
                assert_failed_with::<()>(Err(s), ErrorReason::UnknownPartition);
            }
        }
        assert_eq!(c.high_watermark("one", 0).await, 0, "nothing stored");

        // The CLI says which topic is missing and exits non-zero.
        let out = broker.cli(&["produce", "nope"], "hello\n");
        assert!(
            !out.status.success(),
            "produce to a missing topic succeeded: {out}"
        );
        assert!(
            out.stderr.contains("nope"),
            "the error names the topic: {out}"
        );

        assert_still_serves(&broker, "unknown-topic").await;
    })
    .await;
}

#[tokio::test]
async fn invalid_topic_names_are_refused_with_invalid_name() {
    with_deadline(LIMIT, async {
        let broker = Broker::start(BrokerOptions::flush("never"));
        let mut c = Clients::connect(broker.grpc_addr()).await;
        let too_long = "a".repeat(250);
        let cases: [(u32, &str); 8] = [
            (1, "bad name!"),
            (2, ""),
            (3, "."),
            (4, ".."),
            (5, "a/b"),
            (6, &too_long),
            (7, "caf\u{e9}"),
            (8, "tab\there"),
        ];
        for (case, name) in cases {
            let result = c
                .admin
                .create_topic(CreateTopicRequest {
                    name: name.into(),
                    config: None,
                })
                .await;
            let s = assert_failed_with(result, ErrorReason::InvalidName);
            assert_eq!(
                s.code(),
                Code::InvalidArgument,
                "case {case} ({name:?}): {s:?}"
            );
        }
        // The edges that are valid.
        for name in ["a".repeat(249).as_str(), "A.b_c-9", "..."] {
            c.create_topic(name, 1).await;
        }
        let s = assert_failed_with(
            c.admin
                .create_topic(CreateTopicRequest {
                    name: "A.b_c-9".into(),
                    config: None,
                })
                .await,
            ErrorReason::TopicAlreadyExists,
        );
        assert_eq!(s.code(), Code::AlreadyExists);
        // Out-of-range settings: INVALID_ARGUMENT, nothing created.
        for (case, config) in [
            (
                1,
                TopicConfig {
                    partitions: Some(0),
                    ..Default::default()
                },
            ),
            (
                2,
                TopicConfig {
                    max_record_bytes: Some(100),
                    ..Default::default()
                },
            ),
        ] {
            let s = assert_failed_with(
                c.admin
                    .create_topic(CreateTopicRequest {
                        name: format!("bad-config-{case}"),
                        config: Some(config),
                    })
                    .await,
                ErrorReason::InvalidArgument,
            );
            assert_eq!(s.code(), Code::InvalidArgument, "config case {case}");
        }

        let out = broker.cli(&["topic", "create", "bad name!"], "");
        assert!(!out.status.success(), "invalid name accepted: {out}");
        assert!(
            out.stderr.contains("bad name!") && out.stderr.to_lowercase().contains("name"),
            "the error names the topic and says what is wrong: {out}"
        );
        let listed = broker.cli_ok(&["topic", "list"], "");
        assert!(
            !listed.contains("bad"),
            "a refused topic was listed:\n{listed}"
        );

        assert_still_serves(&broker, "invalid-name").await;
    })
    .await;
}

#[tokio::test]
async fn oversized_records_are_refused_and_nothing_is_stored() {
    with_deadline(LIMIT, async {
        let broker = Broker::start(BrokerOptions::flush("never"));
        let mut c = Clients::connect(broker.grpc_addr()).await;
        broker.cli_ok(
            &["topic", "create", "small", "--max-record-bytes", "1024"],
            "",
        );
        let cfg = c.describe("small").await.config.unwrap_or_default();
        assert_eq!(cfg.max_record_bytes, Some(1024), "--max-record-bytes");
        let big = "x".repeat(2000);
        assert_failed_with(
            c.produce_to("small", 0, vec![record(None, &big, &[])])
                .await,
            ErrorReason::RecordTooLarge,
        );
        // Many small records that add up past the limit in one batch.
        let many: Vec<Record> = (0..20)
            .map(|_| record(None, &"y".repeat(100), &[]))
            .collect();
        assert_failed_with(
            c.produce_to("small", 0, many).await,
            ErrorReason::RecordTooLarge,
        );
        // A pre-encoded batch past the limit.
        let mut b = BatchBuilder::new(Compression::None);
        b.push(NewRecord {
            key: None,
            value: big.as_bytes(),
            headers: &[],
            timestamp: 1,
        });
        let batch = b.finish().unwrap_or_else(|e| panic!("batch: {e}"));
        assert_failed_with(
            c.produce
                .produce(produce_request("small", vec![batch_for(0, batch)]))
                .await,
            ErrorReason::RecordTooLarge,
        );
        assert_eq!(c.high_watermark("small", 0).await, 0, "nothing stored");
        let off = c
            .produce_ok("small", 0, vec![record(None, &"z".repeat(100), &[])])
            .await;
        assert_eq!(off, 0);

        let out = broker.cli(&["produce", "small"], &format!("{big}\n"));
        assert!(
            !out.status.success(),
            "an oversized line was accepted: {out}"
        );
        assert!(!out.stderr.trim().is_empty(), "no error message: {out}");
        assert_eq!(c.high_watermark("small", 0).await, 1, "nothing more stored");

        assert_still_serves(&broker, "oversized").await;
    })
    .await;
}

#[tokio::test]
async fn fetch_outside_the_log_is_offset_out_of_range() {
    with_deadline(LIMIT, async {
        let (broker, mut c) = start_with_topic(BrokerOptions::flush("never"), "five", 1).await;
        let records: Vec<Record> = (0..5)
            .map(|i| record(None, &format!("v{i}"), &[]))
            .collect();
        c.produce_ok("five", 0, records).await;

        for decode in [true, false] {
            match c.fetch.fetch(fetch_request("five", 0, 100, decode)).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    assert_eq!(resp.partitions.len(), 1, "{resp:?}");
                    let p = &resp.partitions[0];
                    assert_partition_error(p.error.as_ref(), ErrorReason::OffsetOutOfRange);
                    assert!(p.records.is_empty() && p.batches.is_empty(), "{p:?}");
                }
                Err(s) => {
                    assert_failed_with::<()>(Err(s), ErrorReason::OffsetOutOfRange);
                }
            }
        }
        // At the high watermark is not out of range: nothing yet, no error.
        let resp = c
            .fetch
            .fetch(fetch_request("five", 0, 5, true))
            .await
            .unwrap_or_else(|s| panic!("fetch at the high watermark: {s:?}"))
            .into_inner();
        let p = &resp.partitions[0];
        assert!(p.error.is_none(), "{p:?}");
        assert!(p.records.is_empty());
        assert_eq!(p.next_offset, 5);

        // The CLI reports it too instead of hanging or printing nothing.
        let out = broker.cli(
            &[
                "consume",
                "five",
                "--partition",
                "0",
                "--offset",
                "100",
                "--timeout-ms",
                "2000",
            ],
            "",
        );
        assert!(
            !out.status.success()
                && (out.stderr.to_lowercase().contains("range")
                    || out.stderr.to_lowercase().contains("offset")),
            "consume --offset past the end should fail with an out-of-range error: {out}"
        );

        assert_still_serves(&broker, "out-of-range").await;
    })
    .await;
}

fn good_batch(values: &[&str]) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    for v in values {
        b.push(NewRecord {
            key: Some(b"k"),
            value: v.as_bytes(),
            headers: &[("h", b"v")],
            timestamp: crate::support::now_ms(),
        });
    }
    b.finish().unwrap_or_else(|e| panic!("batch: {e}"))
}

#[tokio::test]
async fn corrupt_pre_encoded_batches_are_refused_and_nothing_is_stored() {
    with_deadline(LIMIT, async {
        let (broker, mut c) = start_with_topic(BrokerOptions::flush("never"), "batches", 1).await;
        let good = good_batch(&["one", "two", "three"]);
        let flip = |at: usize| -> Bytes {
            let mut b = BytesMut::from(&good[..]);
            b[at] ^= 0x01;
            b.freeze()
        };
        let cases: Vec<(u32, &str, Bytes)> = vec![
            (1, "flipped record byte", flip(good.len() - 3)),
            (2, "flipped crc", flip(CRC_START - 1)),
            (3, "flipped header byte under the CRC", flip(CRC_START + 10)),
            (4, "truncated", good.slice(..good.len() - 5)),
            (5, "header only", good.slice(..HEADER_LEN)),
            (6, "not a batch", Bytes::from_static(b"hello, broker")),
        ];
        for (case, what, bytes) in cases {
            let result = c
                .produce
                .produce(produce_request("batches", vec![batch_for(0, bytes)]))
                .await;
            let status = match result {
                Ok(r) => panic!("case {case} ({what}) was accepted: {r:?}"),
                Err(s) => s,
            };
            assert_failed_with::<()>(Err(status), ErrorReason::CorruptBatch);
            assert_eq!(
                c.high_watermark("batches", 0).await,
                0,
                "case {case} ({what}) stored something"
            );
        }

        // The good batch is stored as received: every byte the CRC covers
        // comes back unchanged.
        let resp = c
            .produce
            .produce(produce_request("batches", vec![batch_for(0, good.clone())]))
            .await
            .unwrap_or_else(|s| panic!("good batch: {s:?}"))
            .into_inner();
        assert_eq!(resp.results[0].base_offset, Some(0), "{resp:?}");
        let data = c
            .fetch
            .fetch(fetch_request("batches", 0, 0, false))
            .await
            .unwrap_or_else(|s| panic!("fetch: {s:?}"))
            .into_inner();
        let stored = &data.partitions[0].batches;
        assert_eq!(stored.len(), good.len(), "one batch, same length");
        assert_eq!(
            &stored[CRC_START..],
            &good[CRC_START..],
            "stored as received"
        );

        assert_still_serves(&broker, "corrupt-batch").await;
    })
    .await;
}

/// Reads from a raw connection until the peer closes it (EOF or reset);
/// returns what it read, or panics if it stays open past `limit`.
fn read_until_closed(mut s: TcpStream, limit: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(limit)).expect("set a read timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return got;
            }
            Err(e) => {
                panic!("the broker kept a garbage connection open ({e}); read so far {got:?}")
            }
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test]
async fn garbage_bytes_on_the_grpc_port_do_not_disturb_other_clients() {
    with_deadline(LIMIT, async {
        let broker = Broker::start(BrokerOptions::flush("never"));
        let addr: SocketAddr = broker.grpc_addr();
        // A client that connects and says nothing stays connected meanwhile.
        let idle = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));

        let mut noise = vec![0u8; 64 << 10];
        let mut x: u32 = 0x9e37_79b9;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let mut preface_then_junk = H2_PREFACE.to_vec();
        preface_then_junk.extend_from_slice(&[0xff; 64]);
        let mut half_settings = H2_PREFACE.to_vec();
        // A SETTINGS frame header announcing 12 bytes, followed by only 3.
        half_settings.extend_from_slice(&[0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 3, 0]);
        let cases: [(u32, &str, Vec<u8>, bool); 4] = [
            (1, "random bytes", noise, true),
            (
                2,
                "HTTP/1.1 request",
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                true,
            ),
            (
                3,
                "HTTP/2 preface then junk frames",
                preface_then_junk,
                true,
            ),
            (
                4,
                "half a SETTINGS frame, then hang up",
                half_settings,
                false,
            ),
        ];
        for (case, what, bytes, wait_for_close) in cases {
            let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
            // The broker may close while we write: that is a fine answer.
            s.write_all(&bytes).ok();
            if wait_for_close {
                read_until_closed(s, Duration::from_secs(20));
            } else {
                drop(s);
            }
            let mut c = Clients::connect(addr).await;
            let listed = c
                .admin
                .list_topics(runnel_proto::v1::ListTopicsRequest {})
                .await;
            assert!(
                listed.is_ok(),
                "case {case} ({what}): broker stopped serving: {listed:?}"
            );
        }
        assert_still_serves(&broker, "garbage").await;
        drop(idle);
    })
    .await;
}

/// A gRPC message frame: compressed flag, big-endian length, message.
fn grpc_frame(msg: &[u8], claimed_len: usize) -> Bytes {
    let mut f = Vec::with_capacity(5 + msg.len());
    f.push(0);
    f.extend_from_slice(&(claimed_len as u32).to_be_bytes());
    f.extend_from_slice(msg);
    Bytes::from(f)
}

fn stream_request(seq: u64, partition: u32) -> Vec<u8> {
    ProduceStreamRequest {
        sequence: seq,
        request: Some(produce_request(
            "midstream",
            vec![records_for(
                Some(partition),
                vec![record(None, "a", &[]), record(None, "b", &[])],
            )],
        )),
    }
    .encode_to_vec()
}

/// Opens a raw HTTP/2 connection and a ProduceStream call on it.
async fn raw_produce_stream(
    addr: SocketAddr,
) -> (
    h2::SendStream<Bytes>,
    h2::client::ResponseFuture,
    h2::PingPong,
    tokio::task::JoinHandle<()>,
) {
    raw_call(addr, "runnel.v1.ProduceService/ProduceStream").await
}

/// Opens a raw HTTP/2 connection and a call of `method` on it.
async fn raw_call(
    addr: SocketAddr,
    method: &str,
) -> (
    h2::SendStream<Bytes>,
    h2::client::ResponseFuture,
    h2::PingPong,
    tokio::task::JoinHandle<()>,
) {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let (send, mut conn) = h2::client::handshake(tcp)
        .await
        .unwrap_or_else(|e| panic!("h2 handshake: {e}"));
    let ping = conn.ping_pong().expect("ping_pong is taken once");
    let driver = tokio::spawn(async move {
        // Ends with an error when we hang up: expected.
        conn.await.ok();
    });
    let mut send = send
        .ready()
        .await
        .unwrap_or_else(|e| panic!("h2 not ready: {e}"));
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a valid request");
    let (resp, stream) = send
        .send_request(req, false)
        .unwrap_or_else(|e| panic!("send_request: {e}"));
    (stream, resp, ping, driver)
}

/// Waits until the server has read everything sent before (PING is answered
/// in order after the frames preceding it).
async fn round_trip(ping: &mut h2::PingPong) {
    ping.ping(h2::Ping::opaque())
        .await
        .unwrap_or_else(|e| panic!("ping: {e}"));
}

/// Sends `body` (with `encoding` as grpc-encoding, if any) as a whole Fetch
/// call over raw HTTP/2; returns its grpc-status and grpc-message, from
/// the trailers or, for an early error, the headers.
async fn raw_fetch(addr: SocketAddr, body: Bytes) -> (String, String) {
    let (mut stream, resp, _ping, driver) = raw_call(addr, "runnel.v1.FetchService/Fetch").await;
    stream
        .send_data(body, true)
        .unwrap_or_else(|e| panic!("send_data: {e}"));
    let resp = resp.await.unwrap_or_else(|e| panic!("Fetch answer: {e}"));
    let (parts, mut body) = resp.into_parts();
    let mut headers = parts.headers;
    if !headers.contains_key("grpc-status") {
        while let Some(data) = body.data().await {
            data.unwrap_or_else(|e| panic!("Fetch body: {e}"));
        }
        headers = body
            .trailers()
            .await
            .unwrap_or_else(|e| panic!("Fetch trailers: {e}"))
            .expect("a Fetch answer ends with trailers");
    }
    driver.abort();
    let get = |k: &str| {
        headers
            .get(k)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    (get("grpc-status"), get("grpc-message"))
}

#[tokio::test]
async fn malformed_fetch_calls_get_a_grpc_error_and_the_broker_serves_on() {
    with_deadline(LIMIT, async {
        let (broker, _) = start_with_topic(BrokerOptions::flush("never"), "rawfetch", 1).await;
        let addr = broker.grpc_addr();
        let good = fetch_request("rawfetch", 0, 0, false).encode_to_vec();
        // A good one first: status 0 (OK).
        let (status, _) = raw_fetch(addr, grpc_frame(&good, good.len())).await;
        assert_eq!(status, "0");
        let mut compressed = grpc_frame(&good, good.len()).to_vec();
        compressed[0] = 1;
        let mut two = grpc_frame(&good, good.len()).to_vec();
        two.extend_from_slice(&grpc_frame(&good, good.len()));
        let cases: Vec<(&str, Bytes, Code, &str)> = vec![
            (
                "empty",
                Bytes::new(),
                Code::Internal,
                "no complete gRPC message",
            ),
            (
                "truncated",
                grpc_frame(&good[..2], good.len()),
                Code::Internal,
                "prefix says",
            ),
            (
                "two messages",
                Bytes::from(two),
                Code::Internal,
                "exactly one message",
            ),
            (
                "garbage",
                grpc_frame(&[0xff; 9], 9),
                Code::Internal,
                "does not decode",
            ),
            (
                "compressed",
                Bytes::from(compressed),
                Code::Unimplemented,
                "uncompressed",
            ),
        ];
        for (case, body, code, says) in cases {
            let (status, message) = raw_fetch(addr, body).await;
            assert_eq!(status, (code as i32).to_string(), "{case}: {message}");
            let message = percent_decode(&message);
            assert!(message.contains(says), "{case}: {message}");
        }
        assert_still_serves(&broker, "rawfetch").await;
    })
    .await;
}

/// Undoes grpc-message's percent-encoding (enough for ASCII messages).
fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let mut rest = s.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        let hex = tail.get(..2).and_then(|h| std::str::from_utf8(h).ok());
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(v) if b == b'%' => {
                out.push(v);
                rest = &tail[2..];
            }
            _ => {
                out.push(b);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_disconnect_mid_stream_leave_the_broker_serving_and_the_log_sound() {
    with_deadline(LIMIT, async {
        let mut broker = Broker::start(BrokerOptions::flush("always"));
        let addr = broker.grpc_addr();
        let mut c = Clients::connect(addr).await;
        c.create_topic("midstream", 3).await;

        // 1. A complete request (acknowledged), then half of the next one,
        //    then the TCP connection goes away.
        let (mut stream, resp, mut ping, driver) = raw_produce_stream(addr).await;
        let whole = stream_request(1, 1);
        stream
            .send_data(grpc_frame(&whole, whole.len()), false)
            .unwrap_or_else(|e| panic!("send: {e}"));
        let resp = resp
            .await
            .unwrap_or_else(|e| panic!("response headers: {e}"));
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = BytesMut::new();
        while got.len() < 5
            || got.len() < 5 + u32::from_be_bytes([got[1], got[2], got[3], got[4]]) as usize
        {
            let chunk = body
                .data()
                .await
                .unwrap_or_else(|| panic!("stream ended before the first response"))
                .unwrap_or_else(|e| panic!("response body: {e}"));
            body.flow_control().release_capacity(chunk.len()).ok();
            got.extend_from_slice(&chunk);
        }
        let first = ProduceStreamResponse::decode(&got[5..])
            .unwrap_or_else(|e| panic!("not a ProduceStreamResponse: {e}"));
        assert_eq!(first.sequence, 1);
        assert!(first.error.is_none(), "{first:?}");
        let half = stream_request(2, 0);
        stream
            .send_data(grpc_frame(&half[..half.len() / 2], half.len()), false)
            .unwrap_or_else(|e| panic!("send: {e}"));
        round_trip(&mut ping).await;
        driver.abort();
        drop((stream, body, ping));

        // 2. Half a request, then the call is cancelled (RST_STREAM) on a
        //    connection that stays up.
        let (mut stream, _resp, mut ping, driver) = raw_produce_stream(addr).await;
        let half = stream_request(3, 0);
        stream
            .send_data(grpc_frame(&half[..half.len() / 2], half.len()), false)
            .unwrap_or_else(|e| panic!("send: {e}"));
        round_trip(&mut ping).await;
        stream.send_reset(h2::Reason::CANCEL);
        round_trip(&mut ping).await;

        // 3. A tonic client sends three whole requests and drops the call
        //    without reading a response.
        {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let mut client = c.produce.clone();
            for seq in 0..3 {
                tx.send(ProduceStreamRequest {
                    sequence: seq,
                    request: Some(produce_request(
                        "midstream",
                        vec![records_for(
                            Some(2),
                            vec![record(None, "c", &[]), record(None, "d", &[])],
                        )],
                    )),
                })
                .await
                .unwrap_or_else(|_| panic!("queue a request"));
            }
            let call = client.produce_stream(ReceiverStream::new(rx)).await;
            drop(call);
        }

        // 4. A subscriber that reads one message and goes away.
        {
            let msg = c.subscribe_first("midstream", 1, 0, true).await;
            assert_eq!(msg.records.len(), 2, "{msg:?}");
        }

        assert_eq!(
            c.high_watermark("midstream", 0).await,
            0,
            "half requests stored nothing"
        );
        assert_eq!(
            c.high_watermark("midstream", 1).await,
            2,
            "the whole request was stored"
        );
        let p2 = c.high_watermark("midstream", 2).await;
        assert!(p2 % 2 == 0 && p2 <= 6, "whole requests only: {p2}");
        driver.abort();
        assert_still_serves(&broker, "midstream").await;
        drop(c);

        broker.terminate_ok().await;
        let dirs = broker.partition_dirs();
        assert!(dirs.len() >= 3, "partition directories: {dirs:?}");
        for dir in dirs {
            let dir = dir.to_string_lossy().into_owned();
            let out = run_cli(&["log", "verify", &dir], "");
            assert!(out.status.success(), "runnel log verify {dir}: {out}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_failed_request_on_a_produce_stream_is_answered_and_the_stream_goes_on() {
    with_deadline(LIMIT, async {
        let (_broker, mut c) =
            start_with_topic(BrokerOptions::flush("never"), "midstream", 1).await;
        let two = || {
            vec![records_for(
                Some(0),
                vec![record(None, "a", &[]), record(None, "b", &[])],
            )]
        };
        let mut corrupt = BytesMut::from(&good_batch(&["x"])[..]);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        let requests = vec![
            (1, produce_request("midstream", two())),
            (2, produce_request("no-such-topic", two())),
            (3, produce_request("midstream", two())),
            (
                4,
                produce_request("midstream", vec![batch_for(0, corrupt.freeze())]),
            ),
            (5, produce_request("midstream", two())),
        ];
        let stream = tokio_stream::iter(requests.into_iter().map(|(sequence, request)| {
            ProduceStreamRequest {
                sequence,
                request: Some(request),
            }
        }));
        let mut responses = c
            .produce
            .produce_stream(stream)
            .await
            .unwrap_or_else(|s| panic!("ProduceStream: {s:?}"))
            .into_inner();
        let mut by_seq = std::collections::BTreeMap::new();
        while by_seq.len() < 5 {
            let resp = responses
                .message()
                .await
                .unwrap_or_else(|s| panic!("the stream failed after {by_seq:?}: {s:?}"))
                .unwrap_or_else(|| panic!("the stream ended after {by_seq:?}"));
            assert!(
                by_seq.insert(resp.sequence, resp.clone()).is_none(),
                "two responses for {}",
                resp.sequence
            );
        }
        let base = |seq: u64| {
            let r = &by_seq[&seq];
            assert!(r.error.is_none(), "request {seq}: {r:?}");
            r.response
                .as_ref()
                .and_then(|x| x.results.first())
                .and_then(|x| x.base_offset)
                .unwrap_or_else(|| panic!("request {seq} has no base offset: {r:?}"))
        };
        assert_eq!(
            (base(1), base(3), base(5)),
            (0, 2, 4),
            "appended in order sent"
        );
        assert_partition_error(by_seq[&2].error.as_ref(), ErrorReason::UnknownTopic);
        assert_partition_error(by_seq[&4].error.as_ref(), ErrorReason::CorruptBatch);
        assert!(by_seq[&2].response.is_none() && by_seq[&4].response.is_none());
        assert_eq!(c.high_watermark("midstream", 0).await, 6);

        // acks=none: answered without offsets, appended all the same.
        let resp = c
            .produce
            .produce(ProduceRequest {
                acks: Acks::None as i32,
                ..produce_request("midstream", two())
            })
            .await
            .unwrap_or_else(|s| panic!("acks=none: {s:?}"))
            .into_inner();
        assert!(
            resp.results.iter().all(|r| r.base_offset.is_none()),
            "acks=none returns no offsets: {resp:?}"
        );
        let mut probe = c.clone();
        crate::support::eventually(Duration::from_secs(10), "the acks=none records", || {
            let mut probe = probe.clone();
            async move { (probe.high_watermark("midstream", 0).await == 8).then_some(()) }
        })
        .await;
        probe
            .produce_ok("midstream", 0, vec![record(None, "c", &[])])
            .await;
    })
    .await;
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument_and_change_nothing() {
    with_deadline(LIMIT, async {
        let (broker, mut c) = start_with_topic(BrokerOptions::flush("never"), "strict", 2).await;
        let one = || vec![record(None, "v", &[])];
        let unplaced_batch = runnel_proto::v1::PartitionRecords {
            partition: None,
            data: Some(runnel_proto::v1::partition_records::Data::Batch(
                good_batch(&["x"]),
            )),
        };
        let cases: Vec<(u32, &str, ProduceRequest)> = vec![
            (1, "no partitions", produce_request("strict", vec![])),
            (
                2,
                "a partition twice",
                produce_request(
                    "strict",
                    vec![records_for(Some(0), one()), records_for(Some(0), one())],
                ),
            ),
            (
                3,
                "empty record list",
                produce_request("strict", vec![records_for(Some(0), vec![])]),
            ),
            (
                4,
                "a batch without a partition",
                produce_request("strict", vec![unplaced_batch]),
            ),
            (
                5,
                "no data",
                produce_request(
                    "strict",
                    vec![runnel_proto::v1::PartitionRecords {
                        partition: Some(0),
                        data: None,
                    }],
                ),
            ),
        ];
        for (case, what, req) in cases {
            let result = c.produce.produce(req).await;
            let s = match result {
                Ok(r) => panic!("case {case} ({what}) was accepted: {r:?}"),
                Err(s) => s,
            };
            assert_failed_with::<()>(Err(s.clone()), ErrorReason::InvalidArgument);
            assert_eq!(s.code(), Code::InvalidArgument, "case {case} ({what})");
        }
        for p in 0..2 {
            assert_eq!(c.high_watermark("strict", p).await, 0, "nothing stored");
        }

        // A fetch naming a partition twice.
        let mut twice = fetch_request("strict", 0, 0, true);
        twice.partitions.push(twice.partitions[0]);
        let s = assert_failed_with(c.fetch.fetch(twice).await, ErrorReason::InvalidArgument);
        assert_eq!(s.code(), Code::InvalidArgument);

        // max_bytes=1 still returns one whole batch.
        c.produce_ok(
            "strict",
            0,
            vec![record(None, "a", &[]), record(None, "b", &[])],
        )
        .await;
        c.produce_ok("strict", 0, vec![record(None, "c", &[])])
            .await;
        let mut small = fetch_request("strict", 0, 0, false);
        small.partitions[0].max_bytes = 1;
        let resp = c
            .fetch
            .fetch(small)
            .await
            .unwrap_or_else(|s| panic!("fetch max_bytes=1: {s:?}"))
            .into_inner();
        let p = &resp.partitions[0];
        let batches: Vec<_> = runnel_batch::BatchIter::new(&p.batches).collect();
        assert_eq!(batches.len(), 1, "exactly one whole batch: {p:?}");
        assert_eq!(p.next_offset, 2, "{p:?}");

        assert_still_serves(&broker, "malformed").await;
    })
    .await;
}

/// Subscribes to `pos` at (partition, offset) and expects `want`, as the
/// call status or as the first message's error, not a silent end.
async fn assert_subscribe_refused(c: &mut Clients, partition: u32, offset: u64, want: ErrorReason) {
    let result = c
        .fetch
        .subscribe(SubscribeRequest {
            topic: "pos".into(),
            partition,
            offset,
            max_bytes: 0,
            decode: true,
        })
        .await;
    let first = match result {
        Err(s) => Err(s),
        Ok(stream) => stream.into_inner().message().await,
    };
    match first {
        Err(s) => {
            assert_failed_with::<()>(Err(s), want);
        }
        Ok(Some(m)) => assert_partition_error(m.error.as_ref(), want),
        Ok(None) => panic!("subscribe at {partition}/{offset} ended silently"),
    }
}

#[tokio::test]
async fn subscribe_and_list_offsets_report_bad_positions() {
    with_deadline(LIMIT, async {
        let (broker, mut c) = start_with_topic(BrokerOptions::flush("never"), "pos", 1).await;
        c.produce_ok(
            "pos",
            0,
            vec![record(None, "a", &[]), record(None, "b", &[])],
        )
        .await;

        // Raw Subscribe from offset 1: whole verified batches, the first one
        // starting at or before 1.
        let msg = c.subscribe_first("pos", 0, 1, false).await;
        let batch = runnel_batch::BatchView::new(&msg.batches)
            .unwrap_or_else(|e| panic!("subscribed bytes do not verify: {e}"));
        assert!(
            batch.base_offset() <= 1 && batch.next_offset() == 2,
            "{msg:?}"
        );

        // Past the end, and a partition that does not exist.
        assert_subscribe_refused(&mut c, 0, 50, ErrorReason::OffsetOutOfRange).await;
        assert_subscribe_refused(&mut c, 3, 0, ErrorReason::UnknownPartition).await;

        // ListOffsets for a partition that does not exist.
        let result = c
            .fetch
            .list_offsets(ListOffsetsRequest {
                topic: "pos".into(),
                queries: vec![OffsetQuery {
                    partition: 3,
                    spec: OffsetSpec::Latest as i32,
                    timestamp_ms: 0,
                }],
            })
            .await;
        match result {
            Ok(r) => assert_partition_error(
                r.into_inner()
                    .offsets
                    .first()
                    .and_then(|o| o.error.as_ref()),
                ErrorReason::UnknownPartition,
            ),
            Err(s) => {
                assert_failed_with::<()>(Err(s), ErrorReason::UnknownPartition);
            }
        }
        assert_still_serves(&broker, "positions").await;
    })
    .await;
}
