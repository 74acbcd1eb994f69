//! GET /metrics: Prometheus text whose figures move with the traffic.

use std::time::Duration;

use runnel_proto::v1::Record;

use crate::support::grpc::record;
use crate::support::metrics::{Sample, parse, scrape, sum};
use crate::support::{Broker, BrokerOptions, start_with_topic, with_deadline};

// Metric names as the broker registers them (crates/runnel-broker).
const HIGH_WATERMARK: &str = "runnel_partition_high_watermark";
const LOG_END_OFFSET: &str = "runnel_partition_log_end_offset";
const LOG_START_OFFSET: &str = "runnel_partition_log_start_offset";
const RECORDS_IN: &str = "runnel_records_in_total";
const BYTES_IN: &str = "runnel_bytes_in_total";
const RECORDS_OUT: &str = "runnel_records_out_total";
const BYTES_OUT: &str = "runnel_bytes_out_total";
const REQUEST_LATENCY_COUNT: &str = "runnel_request_duration_seconds_count";
const REQUEST_LATENCY_BUCKET: &str = "runnel_request_duration_seconds_bucket";
const FSYNC_COUNT: &str = "runnel_fsync_duration_seconds_count";
const ACTIVE_CONNECTIONS: &str = "runnel_active_connections";
const RPC_LABEL: &str = "rpc";
const PAGE_CACHE: &str = "runnel_page_cache_bytes";
const PAGE_CACHE_DROPPED: &str = "runnel_page_cache_dropped_bytes_total";

fn samples(broker: &Broker) -> Vec<Sample> {
    let (code, content_type, body) = scrape(broker.metrics_addr());
    assert_eq!(code, 200, "GET {}: {body}", broker.metrics_url());
    assert!(
        content_type.starts_with("text/plain")
            || content_type.starts_with("application/openmetrics-text"),
        "content type {content_type:?}"
    );
    parse(&body)
}

fn value(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    sum(s, name, labels).unwrap_or_else(|| {
        let names: std::collections::BTreeSet<&str> = s.iter().map(|x| x.name.as_str()).collect();
        panic!("no sample {name}{labels:?}; the broker exports: {names:?}")
    })
}

#[tokio::test]
async fn metrics_move_with_produce_and_fetch() {
    with_deadline(Duration::from_secs(120), async {
        // flush=always, so that every acknowledged produce is an fsync.
        let (broker, mut c) = start_with_topic(BrokerOptions::flush("always"), "metered", 2).await;
        let topic = [("topic", "metered")];
        let p0 = [("topic", "metered"), ("partition", "0")];
        let produce_rpc = [(RPC_LABEL, "Produce")];
        let fetch_rpc = [(RPC_LABEL, "Fetch")];

        let before = samples(&broker);
        assert_eq!(value(&before, HIGH_WATERMARK, &p0), 0.0);
        // One node leads, holds and keeps in sync every partition.
        let id = f64::from(broker.id());
        assert_eq!(value(&before, "runnel_partition_leader", &p0), id);
        assert_eq!(value(&before, "runnel_partition_replicas", &p0), 1.0);
        assert_eq!(
            value(&before, "runnel_partition_in_sync_replicas", &p0),
            1.0
        );
        assert_eq!(
            value(&before, "runnel_partition_under_replicated", &p0),
            0.0
        );
        let records_in = sum(&before, RECORDS_IN, &topic).unwrap_or(0.0);
        let bytes_in = sum(&before, BYTES_IN, &topic).unwrap_or(0.0);
        let produce_calls = sum(&before, REQUEST_LATENCY_COUNT, &produce_rpc).unwrap_or(0.0);
        let fsyncs = sum(&before, FSYNC_COUNT, &[]).unwrap_or(0.0);
        assert!(
            value(&before, ACTIVE_CONNECTIONS, &[]) >= 1.0,
            "our gRPC connection is open"
        );

        let records: Vec<Record> = (0..50)
            .map(|i| record(None, &format!("{i:0100}"), &[]))
            .collect();
        c.produce_ok("metered", 0, records).await;
        c.produce_ok("metered", 0, vec![record(None, "one more", &[])])
            .await;

        let mid = samples(&broker);
        assert_eq!(value(&mid, HIGH_WATERMARK, &p0), 51.0);
        assert_eq!(value(&mid, LOG_END_OFFSET, &p0), 51.0);
        assert_eq!(value(&mid, LOG_START_OFFSET, &p0), 0.0);
        assert_eq!(
            value(
                &mid,
                HIGH_WATERMARK,
                &[("topic", "metered"), ("partition", "1")]
            ),
            0.0
        );
        assert_eq!(
            value(&mid, RECORDS_IN, &topic) - records_in,
            51.0,
            "records in"
        );
        let grew = value(&mid, BYTES_IN, &topic) - bytes_in;
        assert!(
            grew >= 50.0 * 100.0,
            "bytes in grew by {grew}, want >= 5000"
        );
        assert_eq!(
            value(&mid, REQUEST_LATENCY_COUNT, &produce_rpc) - produce_calls,
            2.0,
            "produce latency histogram counts each call"
        );
        assert!(
            value(&mid, FSYNC_COUNT, &[]) - fsyncs >= 1.0,
            "flush=always produces fsync"
        );
        let inf = [(RPC_LABEL, "Produce"), ("le", "+Inf")];
        assert_eq!(
            value(&mid, REQUEST_LATENCY_BUCKET, &inf),
            value(&mid, REQUEST_LATENCY_COUNT, &produce_rpc),
            "the +Inf bucket holds every observation"
        );
        let records_out = sum(&mid, RECORDS_OUT, &topic).unwrap_or(0.0);
        let bytes_out = sum(&mid, BYTES_OUT, &topic).unwrap_or(0.0);
        let fetch_calls = sum(&mid, REQUEST_LATENCY_COUNT, &fetch_rpc).unwrap_or(0.0);

        let got = c.fetch_raw("metered", 0, 0).await;
        assert_eq!(got.len(), 51);

        let after = samples(&broker);
        assert!(
            value(&after, RECORDS_OUT, &topic) - records_out >= 51.0,
            "records out"
        );
        assert!(
            value(&after, BYTES_OUT, &topic) - bytes_out >= 5000.0,
            "bytes out"
        );
        assert!(
            value(&after, REQUEST_LATENCY_COUNT, &fetch_rpc) - fetch_calls >= 1.0,
            "fetch latency histogram"
        );
    })
    .await;
}

/// `--page-cache-bytes`: past the budget, the oldest written data leaves
/// the page cache (the metrics show it) and still reads back whole.
#[tokio::test]
async fn the_page_cache_budget_drops_old_data_and_reads_still_see_it() {
    with_deadline(Duration::from_secs(120), async {
        const BUDGET: u64 = 1 << 20;
        const SEGMENT: u64 = 1 << 20;
        let broker = Broker::start(BrokerOptions {
            extra_args: vec!["--page-cache-bytes".into(), "1MiB".into()],
            ..BrokerOptions::flush("never")
        });
        let mut c = crate::support::grpc::Clients::connect(broker.grpc_addr()).await;
        c.create_topic_with(
            "cached",
            runnel_proto::v1::TopicConfig {
                partitions: Some(2),
                segment_bytes: Some(SEGMENT),
                max_record_bytes: Some(128 << 10),
                ..Default::default()
            },
        )
        .await;
        let before = samples(&broker);
        assert_eq!(value(&before, PAGE_CACHE_DROPPED, &[]), 0.0);
        // About 3 MB per partition: two or three sealed segments each.
        let batches = 48u64;
        for partition in 0..2 {
            for b in 0..batches {
                let records: Vec<Record> = (0..64)
                    .map(|i| record(None, &format!("{partition}-{b}-{i:0>996}"), &[]))
                    .collect();
                c.produce_ok("cached", partition, records).await;
            }
        }
        // Every 100 ms the node cuts its cache down to the budget; only
        // the active segments (never handed to writeback yet) may stay
        // above it. A round that ran during the writes reports the cache
        // as it was then: wait for one that saw everything written.
        let written = 2 * batches * 64 * 1000;
        let last = std::sync::Mutex::new((0, 0));
        let found = tokio::time::timeout(
            Duration::from_secs(60),
            crate::support::eventually(
                Duration::from_secs(61),
                "the page cache budget to drop old data",
                || {
                    let s = samples(&broker);
                    let cached = value(&s, PAGE_CACHE, &[]) as u64;
                    let dropped = value(&s, PAGE_CACHE_DROPPED, &[]) as u64;
                    *last.lock().unwrap() = (cached, dropped);
                    std::future::ready(
                        (dropped > 0
                            && cached <= BUDGET + 2 * SEGMENT
                            && cached + dropped >= written)
                            .then_some(()),
                    )
                },
            ),
        )
        .await;
        let (cached, dropped) = *last.lock().unwrap();
        assert!(
            found.is_ok(),
            "after 60 s: cached {cached} (budget {BUDGET} + two active segments), dropped \
             {dropped}; together they should cover the {written} value bytes written"
        );
        for partition in 0..2u32 {
            let got = c.fetch_decoded("cached", partition, 0).await;
            assert_eq!(got.len() as u64, batches * 64, "partition {partition}");
            for (n, r) in got.iter().enumerate() {
                let (b, i) = (n / 64, n % 64);
                assert_eq!(
                    r.value,
                    format!("{partition}-{b}-{i:0>996}").as_bytes(),
                    "partition {partition} offset {n}"
                );
            }
        }
    })
    .await;
}
