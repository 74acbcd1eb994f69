//! `runnel bench`: throughput and latency of a running cluster, measured
//! through runnel-client exactly as an application would use it.
//!
//! - `produce`: producers send records as fast as the window allows (or at
//!   `--rate`); latency is `send()` to acknowledgement, per record.
//! - `consume`: a consumer reads what the topic holds from the earliest
//!   offset; latency is per fetch call.
//! - `e2e`: a consumer follows the topic's end while producers send;
//!   latency is from the producer's `send()` to the consumer's receipt, per
//!   record (the send time travels in the first 8 bytes of each value).
//! - `group`: `--consumers` members of one consumer group drain what the
//!   topic holds; then one member leaves, and the time until the others
//!   own every partition is the rebalance time.
//!
//! Figures: msgs/s and MB/s (10^6 bytes of record values per second), and
//! latency percentiles from an HDR histogram (microsecond resolution).

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use clap::ValueEnum;
use hdrhistogram::Histogram;
use runnel_client::{
    Acks, Client, Compression, Consumer, ConsumerConfig, DeliveryFuture, ErrorReason, GroupConfig,
    GroupConsumer, Producer, ProducerConfig, ProducerRecord, StartPosition, TopicConfig,
};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::connect::AdminArgs;
use crate::output::OutputFormat;

const ABOUT: &str = "\
Measure throughput and latency of a running cluster.

The benchmark uses runnel-client exactly as an application would: producers
batch records (--batch-bytes, --linger-ms) and keep --max-in-flight requests
on the wire; consumers fetch with long polls. It creates the topic when it
does not exist (with --partitions).

Modes:
  produce  send --messages records (or for --duration) as fast as acks
           allow, or at --rate; latency = send() to acknowledgement
  consume  read the topic from its earliest offset (what a previous
           `bench produce` stored); latency = one fetch call
  e2e      a consumer follows the topic's end while producers send;
           latency = producer send() to consumer receipt (use --rate to
           measure latency below saturation, --warmup to leave the first
           seconds out)
  group    --consumers members of one consumer group (--group, default a
           new one) drain what the topic holds from its earliest offset
           (throughput); then one member leaves cleanly and the time until
           the others own every partition is reported as the rebalance
           time; latency = one poll

While it runs, progress goes to stderr. At the end it prints msgs/s, MB/s
(10^6 bytes of record values per second) and latency p50/p99/p99.9/max.";

const EXAMPLES: &str = "\
Examples:
  # 1 KiB records, leader acks, 8 partitions
  runnel bench produce --topic bench --partitions 8 --messages 2000000 --acks 1

  # read them back
  runnel bench consume --topic bench

  # 100-byte records over 10,000 keys (smaller batches per partition)
  runnel bench produce --topic keyed --partitions 8 --record-size 100 --keys 10000

  # produce-to-consume latency at 200,000 records/s for 20 s, as JSON
  runnel bench e2e --topic lat --rate 200000 --duration 20 --output json

  # the same, with latency over the steady state after 2 s of warm-up
  runnel bench e2e --topic lat --rate 200000 --duration 20 --warmup 2

  # a group of 4 consumers drains the topic; rebalance time when one leaves
  runnel bench group --topic bench --consumers 4

JSON output (--output json), one object:
  {\"mode\":..,\"topic\":..,\"partitions\":N,\"record_size\":B,\"batch_bytes\":B,
   \"acks\":\"0|1|all\",\"producers\":N,\"keys\":N|null,\"messages\":N,\"bytes\":N,
   \"elapsed_s\":F,\"msgs_per_sec\":F,\"mb_per_sec\":F,
   \"latency_us\":{\"p50\":N,\"p99\":N,\"p999\":N,\"max\":N},\"warmup_s\":F}
  group adds \"consumers\":N and \"rebalance_ms\":F.";

/// What `runnel bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// Producer throughput and send-to-ack latency.
    Produce,
    /// Consumer throughput over stored data.
    Consume,
    /// Produce-to-consume latency (and throughput) with both running.
    E2e,
    /// A consumer group drains stored data; rebalance time when one member leaves.
    Group,
}

/// Arguments of `runnel bench`.
#[derive(Debug, clap::Args)]
#[command(long_about = ABOUT, after_help = EXAMPLES)]
pub(crate) struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    mode: Mode,
    #[command(flatten)]
    admin: AdminArgs,
    /// Topic to use (created with --partitions when missing).
    #[arg(long)]
    topic: String,
    /// Partitions of the topic when the bench creates it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10000))]
    partitions: u32,
    /// Records to send (produce, e2e) or to read (consume; default: all
    /// stored when it starts).
    #[arg(long, conflicts_with = "duration")]
    messages: Option<u64>,
    /// Run for this many seconds instead of a record count.
    #[arg(long)]
    duration: Option<f64>,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(8..=64 << 20))]
    record_size: u32,
    /// Producer batch size in bytes (records per request per partition).
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(1024..=64 << 20))]
    batch_bytes: u32,
    /// How long a producer batch waits for more records, in ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Concurrent producers, each with its own connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    producers: u32,
    /// Acknowledgement level: 0, 1 or all.
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    acks: Acks,
    /// Keyed records over this many distinct keys (default: no keys; the
    /// sticky partitioner then fills one partition's batch at a time).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    keys: Option<u64>,
    /// Batch compression: none, lz4 or zstd.
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    compression: Compression,
    /// Produce requests in flight per producer.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_in_flight: u32,
    /// Target total send rate in records/s (default: as fast as possible).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Leave the records sent in the first S seconds out of the latency
    /// figures (produce, e2e): connections, caches and allocators warm up
    /// there. Throughput still counts them. Default 0: every record.
    #[arg(long, value_name = "S", default_value_t = 0.0, value_parser = parse_warmup)]
    warmup: f64,
    /// Members of the consumer group (group mode).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=256))]
    consumers: u32,
    /// Consumer group (group mode; default: a new group named
    /// bench-<ms since the epoch>, deleted at the end).
    #[arg(long)]
    group: Option<String>,
}

fn parse_warmup(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!(
            "--warmup must be a number of seconds, 0 or more, not {s:?}"
        )),
    }
}

fn parse_acks(s: &str) -> Result<Acks, String> {
    s.parse()
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    match s.to_ascii_lowercase().as_str() {
        "none" => Ok(Compression::None),
        "lz4" => Ok(Compression::Lz4),
        "zstd" => Ok(Compression::Zstd),
        other => Err(format!(
            "compression must be none, lz4 or zstd, not {other:?}"
        )),
    }
}

/// The figures of one run (`--output json` prints exactly this).
#[derive(Debug, Serialize)]
struct Report {
    mode: Mode,
    topic: String,
    partitions: u32,
    record_size: u32,
    batch_bytes: u32,
    acks: String,
    producers: u32,
    keys: Option<u64>,
    messages: u64,
    bytes: u64,
    elapsed_s: f64,
    msgs_per_sec: f64,
    mb_per_sec: f64,
    latency_us: Latency,
    /// Seconds at the start whose records the latency leaves out (`--warmup`).
    warmup_s: f64,
    /// Group members (group mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    consumers: Option<u32>,
    /// From one member's leaving (after the drain) to the others owning
    /// every partition, in ms (group mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    rebalance_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Latencies in µs, 1 µs to 10 min, 3 significant digits.
fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

/// How much to do: a count, or a deadline.
#[derive(Clone, Copy, Debug)]
enum Amount {
    Messages(u64),
    Duration(Duration),
}

/// Runs `runnel bench`.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let client = args.admin.connect.connect().await?;
    let amount = match (args.messages, args.duration) {
        (_, Some(s)) if !(s > 0.0 && s.is_finite()) => {
            bail!("--duration must be a positive number of seconds")
        }
        (_, Some(s)) => Amount::Duration(Duration::from_secs_f64(s)),
        (Some(0), None) => bail!("--messages must be at least 1"),
        (Some(n), None) => Amount::Messages(n),
        (None, None) if matches!(args.mode, Mode::Consume | Mode::Group) => {
            Amount::Messages(u64::MAX)
        }
        (None, None) => Amount::Messages(1_000_000),
    };
    let partitions = match args.mode {
        Mode::Consume | Mode::Group => existing_partitions(&client, &args.topic).await?,
        Mode::Produce | Mode::E2e => ensure_topic(&client, &args).await?,
    };
    let consumed_bytes = AtomicU64::new(0);
    let mut rebalance = None;
    let progress = Progress::start(args.mode, args.admin.output == OutputFormat::Text);
    let outcome = match args.mode {
        Mode::Produce => produce(&args, amount, Instant::now(), &progress.done, None).await,
        Mode::Consume => consume(&client, &args, amount, &progress, &consumed_bytes).await,
        Mode::E2e => e2e(&client, &args, amount, &progress).await,
        Mode::Group => group(
            &client,
            &args,
            amount,
            partitions,
            &progress,
            &consumed_bytes,
        )
        .await
        .map(|(messages, elapsed, latency, took)| {
            rebalance = Some(took);
            (messages, elapsed, latency)
        }),
    };
    progress.finish();
    let (messages, elapsed, latency, value_bytes) = match (args.mode, outcome?) {
        // consume counts the bytes it received: the topic may hold records
        // of any size, whatever --record-size says.
        (Mode::Consume | Mode::Group, (messages, elapsed, latency)) => {
            let bytes = consumed_bytes.load(Ordering::Relaxed);
            (messages, elapsed, latency, bytes)
        }
        (_, (messages, elapsed, latency)) => (
            messages,
            elapsed,
            latency,
            messages * u64::from(args.record_size),
        ),
    };
    let bytes = value_bytes;
    let record_size = bytes.checked_div(messages).map_or(args.record_size, |avg| {
        u32::try_from(avg).unwrap_or(u32::MAX)
    });
    let secs = elapsed.as_secs_f64().max(1e-9);
    let report = Report {
        mode: args.mode,
        topic: args.topic.clone(),
        partitions,
        record_size,
        batch_bytes: args.batch_bytes,
        acks: args.acks.to_string(),
        producers: args.producers,
        keys: args.keys,
        messages,
        bytes,
        elapsed_s: secs,
        msgs_per_sec: messages as f64 / secs,
        mb_per_sec: bytes as f64 / secs / 1e6,
        latency_us: Latency::of(&latency),
        warmup_s: args.warmup,
        consumers: (args.mode == Mode::Group).then_some(args.consumers),
        rebalance_ms: rebalance.map(|d: Duration| d.as_secs_f64() * 1000.0),
    };
    match args.admin.output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&report)?),
        OutputFormat::Text => print_text(&report),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(r: &Report) {
    let keys = r
        .keys
        .map_or_else(|| "no keys".to_owned(), |k| format!("{k} keys"));
    match r.mode {
        Mode::Consume => println!(
            "Consume {} records (avg {} B), topic {} ({} partitions)",
            r.messages, r.record_size, r.topic, r.partitions
        ),
        Mode::Group => println!(
            "Group of {} consumers: {} records (avg {} B), topic {} ({} partitions); rebalance after one left: {:.0} ms",
            r.consumers.unwrap_or(0),
            r.messages,
            r.record_size,
            r.topic,
            r.partitions,
            r.rebalance_ms.unwrap_or(f64::NAN)
        ),
        Mode::Produce | Mode::E2e => println!(
            "{:?} {} records x {} B, topic {} ({} partitions), acks={}, batch {} B, {} producer(s), {}",
            r.mode,
            r.messages,
            r.record_size,
            r.topic,
            r.partitions,
            r.acks,
            r.batch_bytes,
            r.producers,
            keys
        ),
    }
    println!(
        "  {:.0} msgs/s  {:.1} MB/s  in {:.2} s",
        r.msgs_per_sec, r.mb_per_sec, r.elapsed_s
    );
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "  latency ms: p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        ms(r.latency_us.p50),
        ms(r.latency_us.p99),
        ms(r.latency_us.p999),
        ms(r.latency_us.max)
    );
    if r.warmup_s > 0.0 {
        println!(
            "  (latency leaves out the records sent in the first {} s)",
            r.warmup_s
        );
    }
}

async fn existing_partitions(client: &Client, topic: &str) -> anyhow::Result<u32> {
    let description = client.describe_topic(topic).await.with_context(|| {
        format!(
            "cannot describe topic {topic:?} (run `runnel bench produce --topic {topic}` first)"
        )
    })?;
    Ok(description.partitions.len() as u32)
}

/// Creates the topic when missing; returns its partition count.
async fn ensure_topic(client: &Client, args: &BenchArgs) -> anyhow::Result<u32> {
    match client.describe_topic(&args.topic).await {
        Ok(description) => {
            let n = description.partitions.len() as u32;
            if n != args.partitions {
                eprintln!(
                    "note: topic {:?} exists with {n} partitions; using them (--partitions {} ignored)",
                    args.topic, args.partitions
                );
            }
            Ok(n)
        }
        Err(e) if e.reason() == Some(ErrorReason::UnknownTopic) => {
            let config = TopicConfig {
                partitions: Some(args.partitions),
                max_record_bytes: Some(
                    args.batch_bytes
                        .max(8 << 20)
                        .saturating_add(1 << 20)
                        .min(64 << 20),
                ),
                ..TopicConfig::default()
            };
            client
                .create_topic(&args.topic, config)
                .await
                .with_context(|| format!("cannot create topic {:?}", args.topic))?;
            Ok(args.partitions)
        }
        Err(e) => Err(e).with_context(|| format!("cannot describe topic {:?}", args.topic)),
    }
}

/// Values for records: consecutive slices of one buffer of noise, so a
/// record costs no allocation, and the buffer (1 MiB) stays in the CPU
/// cache like an application's freshly made values would (incompressible,
/// like real payloads after compression).
struct Payloads {
    pool: Bytes,
    size: usize,
}

impl Payloads {
    fn new(size: usize) -> Payloads {
        let len = (1 << 20).max(size * 2);
        let mut pool = BytesMut::with_capacity(len);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while pool.len() + 8 <= len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            pool.put_u64_le(x);
        }
        pool.resize(len, 0);
        Payloads {
            pool: pool.freeze(),
            size,
        }
    }

    fn value(&self, i: u64) -> Bytes {
        let slots = (self.pool.len() - self.size) as u64;
        let start = (i.wrapping_mul(self.size as u64 + 1) % slots) as usize;
        self.pool.slice(start..start + self.size)
    }

    /// A value whose first 8 bytes are `stamp` (ns since the bench began).
    fn stamped(&self, i: u64, stamp: u64) -> Bytes {
        let mut v = BytesMut::from(&self.value(i)[..]);
        v[..8].copy_from_slice(&stamp.to_le_bytes());
        v.freeze()
    }
}

/// Sent, acknowledged and received counts for the progress line.
struct Progress {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(mode: Mode, show: bool) -> Progress {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = show.then(|| {
            let done = done.clone();
            let stop = stop.clone();
            let tty = std::io::stderr().is_terminal();
            tokio::spawn(async move {
                let start = Instant::now();
                let every = if tty {
                    Duration::from_millis(250)
                } else {
                    Duration::from_secs(5)
                };
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                let mut last = (0u64, start);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let n = done.load(Ordering::Relaxed);
                    let now = Instant::now();
                    let rate =
                        (n - last.0) as f64 / now.duration_since(last.1).as_secs_f64().max(1e-9);
                    last = (n, now);
                    let verb = match mode {
                        Mode::Produce => "acknowledged",
                        Mode::Consume | Mode::E2e | Mode::Group => "received",
                    };
                    let line = format!(
                        "{:6.1} s  {n} records {verb}  ({rate:.0} records/s)",
                        start.elapsed().as_secs_f64()
                    );
                    if tty {
                        eprint!("\r\x1b[2K{line}");
                    } else {
                        eprintln!("{line}");
                    }
                }
                if tty {
                    eprintln!();
                }
            })
        });
        Progress { done, stop, task }
    }

    fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task {
            task.abort();
            if std::io::stderr().is_terminal() {
                eprintln!();
            }
        }
    }
}

/// Records a producer has in flight: (delivery, send time), in chunks.
type Pending = Vec<(DeliveryFuture, Instant)>;

/// Runs the producers; returns (records acknowledged, elapsed, latency).
/// Acknowledged records are added to `acked` as they arrive. With
/// `stamp_base`, each value carries its send time (for e2e).
async fn produce(
    args: &BenchArgs,
    amount: Amount,
    start: Instant,
    acked: &Arc<AtomicU64>,
    stamp_base: Option<Instant>,
) -> anyhow::Result<(u64, Duration, Histogram<u64>)> {
    let payloads = Arc::new(Payloads::new(args.record_size as usize));
    let keys: Arc<Vec<Bytes>> = Arc::new(
        (0..args.keys.unwrap_or(0).min(10_000_000))
            .map(|k| Bytes::from(format!("key-{k}")))
            .collect(),
    );
    let config = ProducerConfig {
        acks: args.acks,
        linger: Duration::from_millis(args.linger_ms),
        batch_bytes: args.batch_bytes as usize,
        compression: args.compression,
        max_in_flight: args.max_in_flight as usize,
        ..ProducerConfig::default()
    };
    let producers = u64::from(args.producers);
    let measured_from = start + Duration::from_secs_f64(args.warmup);
    let mut tasks = JoinSet::new();
    for p in 0..producers {
        let share = match amount {
            Amount::Messages(n) => Amount::Messages(n / producers + u64::from(p < n % producers)),
            other => other,
        };
        let client = args.admin.connect.connect().await?;
        let producer = Producer::new(&client, config.clone()).await?;
        let topic = args.topic.clone();
        let payloads = payloads.clone();
        let keys = keys.clone();
        let rate = args.rate.map(|r| (r as f64 / producers as f64).max(1e-3));
        let done = acked.clone();
        tasks.spawn(async move {
            // Latency is taken by a collector that awaits deliveries in send
            // order, so each is measured when its batch is acknowledged. In
            // e2e the consumer measures and the acknowledgement latency is
            // not reported: the collector only checks and counts, without a
            // clock read per record on the cores the broker shares.
            let (tx, mut rx) = mpsc::channel::<Pending>(1024);
            let ack_latency = stamp_base.is_none();
            let collector = tokio::spawn(async move {
                let mut latency = histogram();
                let mut acked = 0u64;
                let mut last_ack = Instant::now();
                while let Some(chunk) = rx.recv().await {
                    let n = chunk.len() as u64;
                    for (delivery, sent) in chunk {
                        delivery.await?;
                        if ack_latency && sent >= measured_from {
                            latency.saturating_record(sent.elapsed().as_micros() as u64);
                        }
                    }
                    // Deliveries complete in send order: the chunk's last is
                    // the latest acknowledgement.
                    last_ack = Instant::now();
                    acked += n;
                    done.fetch_add(n, Ordering::Relaxed);
                }
                anyhow::Ok((acked, last_ack, latency))
            });
            let mut chunk: Pending = Vec::with_capacity(256);
            let mut i = 0u64;
            loop {
                match share {
                    Amount::Messages(n) if i >= n => break,
                    Amount::Duration(d) if i % 256 == 0 && start.elapsed() >= d => break,
                    _ => {}
                }
                if let Some(rate) = rate
                    && i % 64 == 0
                {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    if due > Instant::now() {
                        // Hand what was sent to the collector before idling:
                        // latency is taken when the collector sees an
                        // acknowledgement, and a partial chunk would
                        // otherwise wait for 256 sends (seconds at low rates).
                        if !chunk.is_empty() {
                            let part = std::mem::replace(&mut chunk, Vec::with_capacity(256));
                            if tx.send(part).await.is_err() {
                                break;
                            }
                        }
                        tokio::time::sleep_until(due.into()).await;
                    }
                }
                let sent = Instant::now();
                let value = match stamp_base {
                    Some(base) => {
                        payloads.stamped(i + p, sent.duration_since(base).as_nanos() as u64)
                    }
                    None => payloads.value(i + p * 7919),
                };
                let mut record = ProducerRecord::new(topic.clone(), value);
                if !keys.is_empty() {
                    record = record
                        .key(keys[((i * producers + p) % keys.len() as u64) as usize].clone());
                }
                chunk.push((producer.send(record).await?, sent));
                if chunk.len() == 256 {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(256));
                    if tx.send(full).await.is_err() {
                        break; // the collector failed: its error is returned below
                    }
                }
                i += 1;
            }
            if !chunk.is_empty() {
                let _ = tx.send(chunk).await;
            }
            drop(tx);
            let flushed = producer.close().await;
            let collected = collector.await.context("the latency collector stopped")??;
            flushed?;
            anyhow::Ok(collected)
        });
    }
    let mut total = 0u64;
    let mut end = start;
    let mut latency = histogram();
    while let Some(result) = tasks.join_next().await {
        let (acked, last_ack, h) = result.context("a producer task stopped")??;
        total += acked;
        end = end.max(last_ack);
        latency.add(&h).ok();
    }
    Ok((total, end.duration_since(start), latency))
}

/// Reads the topic from the earliest offset; returns (records, elapsed,
/// latency per fetch).
async fn consume(
    client: &Client,
    args: &BenchArgs,
    amount: Amount,
    progress: &Progress,
    consumed_bytes: &AtomicU64,
) -> anyhow::Result<(u64, Duration, Histogram<u64>)> {
    let mut consumer = Consumer::new(
        client,
        &args.topic,
        None,
        StartPosition::Earliest,
        ConsumerConfig::default(),
    )
    .await?;
    // What is stored now: read up to it (or --messages / --duration).
    let plan = read_target(client, &args.topic, &consumer.partitions(), amount).await?;
    let mut latency = histogram();
    let start = Instant::now();
    let mut received = 0u64;
    while !plan.done(received, |p| consumer.position(p)) {
        if let Amount::Duration(d) = amount
            && start.elapsed() >= d
        {
            break;
        }
        let t = Instant::now();
        let records = consumer.poll().await?;
        latency.saturating_record(t.elapsed().as_micros() as u64);
        received += records.len() as u64;
        let bytes: usize = records.iter().map(|r| r.value.len()).sum();
        consumed_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        progress.add(records.len() as u64);
    }
    Ok((received, start.elapsed(), latency))
}

/// Where a reading mode stops: at the log end offsets the partitions had
/// when it started, or after `--messages` records. (Offsets are not a
/// record count: a replicated partition's Raft no-ops take offsets too and
/// are never delivered.)
struct ReadPlan {
    /// Log end offset per partition at the start.
    ends: BTreeMap<u32, u64>,
    /// `--messages`, when given.
    limit: Option<u64>,
}

impl ReadPlan {
    /// Whether `received` records, or the positions `position(p)` gives,
    /// complete the plan.
    fn done(&self, received: u64, position: impl Fn(u32) -> Option<u64>) -> bool {
        self.limit.is_some_and(|n| received >= n)
            || self
                .ends
                .iter()
                .all(|(&p, &end)| position(p).is_some_and(|at| at >= end))
    }
}

/// The [`ReadPlan`] for `partitions` of `topic`; fails when they hold nothing.
async fn read_target(
    client: &Client,
    topic: &str,
    partitions: &[u32],
    amount: Amount,
) -> anyhow::Result<ReadPlan> {
    let mut stored = 0u64;
    let mut ends = BTreeMap::new();
    for &p in partitions {
        let earliest = client
            .list_offsets(topic, p, runnel_client::OffsetSpec::Earliest)
            .await?;
        let latest = client
            .list_offsets(topic, p, runnel_client::OffsetSpec::Latest)
            .await?;
        stored += latest.saturating_sub(earliest);
        ends.insert(p, latest);
    }
    if stored == 0 {
        bail!("topic {topic:?} holds no records: run `runnel bench produce --topic {topic}` first");
    }
    let limit = match amount {
        Amount::Messages(n) if n != u64::MAX => Some(n),
        _ => None,
    };
    Ok(ReadPlan { ends, limit })
}

/// What the members of a group bench share.
#[derive(Default)]
struct GroupProgress {
    /// Each member's assignment after its last poll.
    assignments: Mutex<Vec<BTreeSet<u32>>>,
    /// Furthest position any member reached per partition.
    positions: Mutex<BTreeMap<u32, u64>>,
    /// Set to make member 0 leave the group.
    leave: AtomicBool,
    /// Set to make every member stop.
    stop: AtomicBool,
}

/// `--consumers` members of one group drain the topic from its earliest
/// offset; the throughput is over the drain. Then member 0 leaves cleanly;
/// the rebalance time is from then until the other members' assignments
/// cover every partition. Returns (records, elapsed, latency per poll,
/// rebalance time).
async fn group(
    client: &Client,
    args: &BenchArgs,
    amount: Amount,
    partitions: u32,
    progress: &Progress,
    consumed_bytes: &AtomicU64,
) -> anyhow::Result<(u64, Duration, Histogram<u64>, Duration)> {
    let all: Vec<u32> = (0..partitions).collect();
    let plan = read_target(client, &args.topic, &all, amount).await?;
    let named = args.group.is_some();
    let group = args.group.clone().unwrap_or_else(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("bench-{ms}")
    });
    let config = GroupConfig {
        reset: StartPosition::Earliest,
        ..GroupConfig::default()
    };
    let members = args.consumers as usize;
    let shared = Arc::new(GroupProgress {
        assignments: Mutex::new(vec![BTreeSet::new(); members]),
        ..GroupProgress::default()
    });
    // Records received by all members: the progress counter.
    let received = &progress.done;
    let bytes = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..members {
        let mut member = GroupConsumer::join(client, &group, &args.topic, config.clone())
            .await
            .with_context(|| format!("member {i} cannot join group {group:?}"))?;
        let (shared, received, bytes) = (shared.clone(), received.clone(), bytes.clone());
        tasks.spawn(async move {
            let mut latency = histogram();
            while !shared.stop.load(Ordering::Acquire) {
                if i == 0 && shared.leave.load(Ordering::Acquire) {
                    member.close().await?;
                    return anyhow::Ok(latency);
                }
                let t = Instant::now();
                let records = member.poll().await?;
                if !records.is_empty() {
                    latency.saturating_record(t.elapsed().as_micros() as u64);
                }
                let n = records.len() as u64;
                let b: usize = records.iter().map(|r| r.value.len()).sum();
                bytes.fetch_add(b as u64, Ordering::Relaxed);
                received.fetch_add(n, Ordering::Relaxed);
                shared
                    .assignments
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)[i] = member.assignment();
                let mut at = shared
                    .positions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                for (p, o) in member.positions() {
                    let e = at.entry(p).or_insert(o);
                    *e = (*e).max(o);
                }
            }
            member.close().await?;
            anyhow::Ok(latency)
        });
    }
    let mut latency = histogram();
    let mut rebalance: Option<Duration> = None;
    let mut drained: Option<Instant> = None;
    let mut last = (0u64, Instant::now());
    let outcome = loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let now = Instant::now();
        let r = received.load(Ordering::Relaxed);
        if r != last.0 {
            last = (r, now);
        } else if now.duration_since(last.1) > Duration::from_secs(60) {
            break Err(anyhow::anyhow!("no record arrived for 60 s ({r} received)"));
        }
        let complete = {
            let at = shared
                .positions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            plan.done(r, |p| at.get(&p).copied())
        };
        if drained.is_none() && complete {
            // Drained: member 0 leaves now.
            drained = Some(now);
            shared.leave.store(true, Ordering::Release);
        }
        if let (Some(t0), None) = (drained, rebalance) {
            let owned: BTreeSet<u32> = shared
                .assignments
                .lock()
                .unwrap_or_else(PoisonError::into_inner)[1..]
                .iter()
                .flatten()
                .copied()
                .collect();
            if owned.len() == all.len() {
                rebalance = Some(now - t0);
            }
        }
        if let (Some(end), Some(took)) = (drained, rebalance) {
            break Ok((end, took));
        }
        // Member 0 ends after leaving; any other end is an error.
        match tasks.try_join_next() {
            None => {}
            Some(Ok(Ok(h))) => {
                latency.add(&h).ok();
            }
            Some(Ok(Err(e))) => break Err(e.context("a group member failed")),
            Some(Err(e)) => break Err(anyhow::anyhow!("a group member panicked: {e}")),
        }
    };
    shared.stop.store(true, Ordering::Release);
    while let Some(result) = tasks.join_next().await {
        let h = result.context("a group member panicked")??;
        latency.add(&h).ok();
    }
    if !named && let Err(e) = client.delete_group(&group).await {
        eprintln!("could not delete the bench group {group:?}: {e}");
    }
    let (end, took) = outcome?;
    consumed_bytes.store(bytes.load(Ordering::Relaxed), Ordering::Relaxed);
    Ok((received.load(Ordering::Relaxed), end - start, latency, took))
}

/// Producers and a consumer at once; latency is send to receipt.
async fn e2e(
    client: &Client,
    args: &BenchArgs,
    amount: Amount,
    progress: &Progress,
) -> anyhow::Result<(u64, Duration, Histogram<u64>)> {
    let mut consumer = Consumer::new(
        client,
        &args.topic,
        None,
        StartPosition::Latest,
        ConsumerConfig {
            max_wait: Duration::from_millis(100),
            ..ConsumerConfig::default()
        },
    )
    .await?;
    let base = Instant::now();
    // Send times are stamped in ns since `base`.
    let measured_from =
        u64::try_from(Duration::from_secs_f64(args.warmup).as_nanos()).unwrap_or(u64::MAX);
    let produced_all = Arc::new(AtomicU64::new(u64::MAX));
    let reader = {
        let produced_all = produced_all.clone();
        let done = progress.done.clone();
        tokio::spawn(async move {
            let mut latency = histogram();
            let mut received = 0u64;
            let mut idle_since = Instant::now();
            loop {
                if received >= produced_all.load(Ordering::Acquire) {
                    break;
                }
                let records = consumer.poll().await?;
                let now = base.elapsed().as_nanos() as u64;
                if records.is_empty() {
                    if idle_since.elapsed() > Duration::from_secs(30) {
                        bail!("no record arrived for 30 s ({received} received)");
                    }
                    continue;
                }
                idle_since = Instant::now();
                for r in &records {
                    let stamp = r
                        .value
                        .get(..8)
                        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
                    if stamp >= measured_from {
                        latency.saturating_record(now.saturating_sub(stamp) / 1000);
                    }
                }
                received += records.len() as u64;
                done.fetch_add(records.len() as u64, Ordering::Relaxed);
            }
            anyhow::Ok((received, base.elapsed(), latency))
        })
    };
    // Progress counts what the consumer received; acknowledgements go uncounted.
    let acked = Arc::new(AtomicU64::new(0));
    let produced = produce(args, amount, base, &acked, Some(base)).await;
    let (sent, _, _) = match produced {
        Ok(figures) => figures,
        Err(e) => {
            reader.abort();
            return Err(e);
        }
    };
    produced_all.store(sent, Ordering::Release);
    let (received, elapsed, latency) = reader.await.context("the consumer task stopped")??;
    Ok((received, elapsed, latency))
}
