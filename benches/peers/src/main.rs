//! Load driver for the peer comparison of `benches/peers.sh`: NATS JetStream
//! and RabbitMQ streams, driven with the workload of `runnel bench` (the same
//! record size, record count and in-flight window), printing one JSON object
//! in the shape of `runnel bench --output json`.
//!
//! Not a member of the Runnel workspace: it is built only by
//! `benches/peers.sh`, never by CI.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc};

#[derive(Parser)]
#[command(about = "Produce/consume load against NATS JetStream or RabbitMQ streams")]
struct Cli {
    #[command(subcommand)]
    system: System,
}

#[derive(Subcommand)]
enum System {
    /// NATS JetStream (file storage, 1 replica).
    Nats {
        #[command(flatten)]
        common: Common,
        /// Server address (host:port).
        #[arg(long, default_value = "127.0.0.1:4222")]
        server: String,
    },
    /// RabbitMQ streams (stream protocol, plugin rabbitmq_stream).
    Rabbitmq {
        #[command(flatten)]
        common: Common,
        /// Host of the stream listener.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port of the stream listener.
        #[arg(long, default_value_t = 5552)]
        port: u16,
        /// Records per publish frame (0: as many as fit in 256 KiB, at most the window).
        #[arg(long, default_value_t = 0)]
        publish_batch: usize,
        /// Consume: chunks the server may send ahead of the client.
        #[arg(long, default_value_t = 10)]
        credit: u16,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Write `--messages` records into a new stream.
    Produce,
    /// Read `--messages` records from the start of the stream.
    Consume,
}

#[derive(Args)]
struct Common {
    /// produce (recreates the stream) or consume (from the first record).
    #[arg(value_enum)]
    mode: Mode,
    /// Stream name.
    #[arg(long, default_value = "bench")]
    stream: String,
    /// Records to produce or consume.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Bytes per record value.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Produce: most records sent and not yet acknowledged.
    #[arg(long, default_value_t = 4096)]
    window: usize,
    /// Consume: records asked for per pull (NATS) and per latency sample (both).
    #[arg(long, default_value_t = 4096)]
    fetch_batch: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
}

/// What one run measured.
struct Report {
    system: &'static str,
    client: &'static str,
    elapsed: Duration,
    bytes_seen: u64,
    hist: Histogram<u64>,
    extra: serde_json::Value,
}

fn new_hist() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Record values: slices of 1 MiB of noise (no compression anywhere, but no
/// run of zeros either).
struct Payloads {
    pool: Bytes,
    size: usize,
}

impl Payloads {
    fn new(size: usize) -> Self {
        let len = (1 << 20) + size;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut pool = Vec::with_capacity(len);
        while pool.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            pool.extend_from_slice(&x.to_le_bytes());
        }
        pool.truncate(len);
        Payloads {
            pool: Bytes::from(pool),
            size,
        }
    }

    fn get(&self, i: u64) -> Bytes {
        let start = usize::try_from(i.wrapping_mul(4099) % (1 << 20)).unwrap_or(0);
        self.pool.slice(start..start + self.size)
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (common, report) = match cli.system {
        System::Nats { common, server } => {
            let deadline = Duration::from_secs(common.timeout_s);
            let fut = nats(&common, &server);
            let report = tokio::time::timeout(deadline, fut)
                .await
                .context("timed out")??;
            (common, report)
        }
        System::Rabbitmq {
            common,
            host,
            port,
            publish_batch,
            credit,
        } => {
            let deadline = Duration::from_secs(common.timeout_s);
            let fut = rabbitmq(&common, &host, port, publish_batch, credit);
            let report = tokio::time::timeout(deadline, fut)
                .await
                .context("timed out")??;
            (common, report)
        }
    };
    let bytes = common.messages * common.record_size as u64;
    ensure!(
        report.bytes_seen == bytes,
        "{} record bytes seen, {bytes} expected",
        report.bytes_seen
    );
    let secs = report.elapsed.as_secs_f64();
    let h = &report.hist;
    let out = serde_json::json!({
        "system": report.system,
        "client": report.client,
        "mode": match common.mode { Mode::Produce => "produce", Mode::Consume => "consume" },
        "record_size": common.record_size,
        "messages": common.messages,
        "bytes": bytes,
        "window": common.window,
        "elapsed_s": secs,
        "msgs_per_sec": common.messages as f64 / secs,
        "mb_per_sec": bytes as f64 / secs / 1e6,
        "latency_us": {
            "p50": h.value_at_quantile(0.5),
            "p99": h.value_at_quantile(0.99),
            "p999": h.value_at_quantile(0.999),
            "max": h.max(),
        },
        "details": report.extra,
    });
    println!("{out}");
    Ok(())
}

// ---------------------------------------------------------------- NATS

async fn nats(c: &Common, server: &str) -> anyhow::Result<Report> {
    use async_nats::jetstream::{self, consumer, stream};

    let client = async_nats::ConnectOptions::new()
        .connect(server)
        .await
        .with_context(|| format!("connecting to nats at {server}"))?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(120))
        .ack_timeout(Duration::from_secs(120))
        .max_ack_inflight(c.window + 1)
        .backpressure_on_inflight(true)
        .build(client.clone());
    let subject = async_nats::Subject::from(format!("{}.records", c.stream));
    match c.mode {
        Mode::Produce => {
            let _ = js.delete_stream(&c.stream).await;
            js.create_stream(stream::Config {
                name: c.stream.clone(),
                subjects: vec![subject.to_string()],
                storage: stream::StorageType::File,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .context("creating the stream")?;
            let payloads = Payloads::new(c.record_size);
            let window = Arc::new(Semaphore::new(c.window));
            let (tx, mut rx) = mpsc::unbounded_channel::<(
                Instant,
                jetstream::context::PublishAckFuture,
                tokio::sync::OwnedSemaphorePermit,
            )>();
            // Acks come back in publish order: one task awaits them in order
            // and timestamps each as it completes.
            let acker = tokio::spawn(async move {
                let mut hist = new_hist()?;
                while let Some((sent, ack, permit)) = rx.recv().await {
                    ack.await.context("publish ack")?;
                    hist.saturating_record(micros(sent.elapsed()));
                    drop(permit);
                }
                anyhow::Ok(hist)
            });
            let start = Instant::now();
            for i in 0..c.messages {
                let permit = window.clone().acquire_owned().await?;
                let sent = Instant::now();
                let ack = js
                    .publish(subject.clone(), payloads.get(i))
                    .await
                    .context("publish")?;
                if tx.send((sent, ack, permit)).is_err() {
                    break;
                }
            }
            drop(tx);
            let hist = acker.await??;
            let elapsed = start.elapsed();
            let info = js.get_stream(&c.stream).await?.info().await?.clone();
            ensure!(
                info.state.messages == c.messages,
                "stream holds {} messages",
                info.state.messages
            );
            Ok(Report {
                system: "nats-jetstream",
                client: "async-nats",
                elapsed,
                bytes_seen: c.messages * c.record_size as u64,
                hist,
                extra: serde_json::json!({
                    "storage": "file", "replicas": 1,
                    "stream_bytes": info.state.bytes,
                }),
            })
        }
        Mode::Consume => {
            let stream = js
                .get_stream(&c.stream)
                .await
                .context("getting the stream")?;
            let _ = stream.delete_consumer("bench").await;
            let consumer: consumer::PullConsumer = stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some("bench".into()),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ack_policy: consumer::AckPolicy::None,
                    ..Default::default()
                })
                .await
                .context("creating the consumer")?;
            let mut hist = new_hist()?;
            let start = Instant::now();
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(c.fetch_batch)
                .messages()
                .await?;
            let (mut seen, mut bytes, mut group) = (0u64, 0u64, Instant::now());
            while seen < c.messages {
                let Some(msg) = messages.next().await else {
                    bail!("stream of messages ended after {seen}");
                };
                let msg = msg.context("receiving")?;
                seen += 1;
                bytes += msg.payload.len() as u64;
                if seen % c.fetch_batch as u64 == 0 || seen == c.messages {
                    hist.saturating_record(micros(group.elapsed()));
                    group = Instant::now();
                }
            }
            let elapsed = start.elapsed();
            drop(messages);
            let _ = stream.delete_consumer("bench").await;
            Ok(Report {
                system: "nats-jetstream",
                client: "async-nats",
                elapsed,
                bytes_seen: bytes,
                hist,
                extra: serde_json::json!({
                    "consumer": "pull, ack none, deliver all",
                    "fetch_batch": c.fetch_batch,
                    "latency": "per fetch_batch records received",
                }),
            })
        }
    }
}

// ---------------------------------------------------------------- RabbitMQ

async fn rabbitmq(
    c: &Common,
    host: &str,
    port: u16,
    publish_batch: usize,
    credit: u16,
) -> anyhow::Result<Report> {
    use rabbitmq_stream_client::types::{
        Message, MessageResult, OffsetSpecification, ResponseKind,
    };
    use rabbitmq_stream_client::{Client, ClientOptions, Environment};
    use std::collections::HashMap;

    let env = Environment::builder()
        .host(host)
        .port(port)
        .build()
        .await
        .with_context(|| format!("connecting to rabbitmq streams at {host}:{port}"))?;
    match c.mode {
        Mode::Produce => {
            let _ = env.delete_stream(&c.stream).await;
            env.stream_creator()
                .create(&c.stream)
                .await
                .context("creating the stream")?;
            let batch = if publish_batch == 0 {
                (256 * 1024 / c.record_size.max(1)).clamp(1, c.window)
            } else {
                publish_batch.min(c.window)
            };
            let producer = env
                .producer()
                .build(&c.stream)
                .await
                .context("creating the producer")?;
            let payloads = Payloads::new(c.record_size);
            let window = Arc::new(Semaphore::new(c.window));
            let hist = Arc::new(std::sync::Mutex::new(new_hist()?));
            let failed = Arc::new(AtomicU64::new(0));
            let permits = u32::try_from(c.window).context("window too large")?;
            let start = Instant::now();
            let mut i = 0u64;
            while i < c.messages {
                let n = (c.messages - i).min(batch as u64);
                window
                    .acquire_many(n as u32)
                    .await
                    .context("window")?
                    .forget();
                let msgs: Vec<Message> = (i..i + n)
                    .map(|k| Message::builder().body(payloads.get(k).to_vec()).build())
                    .collect();
                i += n;
                let (window, hist, failed) = (window.clone(), hist.clone(), failed.clone());
                let sent = Instant::now();
                producer
                    .batch_send(msgs, move |status| {
                        match status {
                            Ok(s) if s.confirmed() => {
                                if let Ok(mut h) = hist.lock() {
                                    h.saturating_record(micros(sent.elapsed()));
                                }
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        window.add_permits(1);
                        std::future::ready(())
                    })
                    .await
                    .context("publish")?;
            }
            // Every confirm returns its permit: the whole window back means
            // nothing is unconfirmed.
            drop(window.acquire_many(permits).await.context("window")?);
            let elapsed = start.elapsed();
            let failed = failed.load(Ordering::Relaxed);
            ensure!(failed == 0, "{failed} records not confirmed");
            let _ = producer.close().await;
            let hist = match hist.lock() {
                Ok(h) => h.clone(),
                Err(_) => bail!("histogram lock poisoned"),
            };
            Ok(Report {
                system: "rabbitmq-stream",
                client: "rabbitmq-stream-client",
                elapsed,
                bytes_seen: c.messages * c.record_size as u64,
                hist,
                extra: serde_json::json!({
                    "publish_batch": batch,
                    "publish": "batch_send, confirms",
                }),
            })
        }
        Mode::Consume => {
            // The stream protocol's own client (the Consumer API of 0.4 grants
            // one chunk of credit at a time): `credit` chunks in flight, one
            // more granted per chunk received.
            let client = Client::connect(ClientOptions::builder().host(host).port(port).build())
                .await
                .context("connecting the consumer")?;
            let (tx, mut rx) = mpsc::unbounded_channel::<anyhow::Result<(u64, u64)>>();
            let granter = client.clone();
            let handler = move |item: MessageResult| {
                let (tx, granter) = (tx.clone(), granter.clone());
                async move {
                    match item {
                        Some(Ok(response)) => {
                            if let ResponseKind::Deliver(d) = response.kind_ref() {
                                let bytes: usize = d
                                    .messages
                                    .iter()
                                    .map(|m| m.data().map_or(0, <[u8]>::len))
                                    .sum();
                                let _ = tx.send(Ok((d.messages.len() as u64, bytes as u64)));
                                granter.credit(1, 1).await?;
                            }
                        }
                        Some(Err(e)) => {
                            let _ = tx.send(Err(anyhow::anyhow!("consumer: {e}")));
                        }
                        None => {
                            let _ = tx.send(Err(anyhow::anyhow!("connection closed")));
                        }
                    }
                    Ok(())
                }
            };
            client.set_handler(handler).await;
            let mut hist = new_hist()?;
            let start = Instant::now();
            let response = client
                .subscribe(
                    1,
                    &c.stream,
                    OffsetSpecification::First,
                    credit,
                    HashMap::new(),
                )
                .await
                .context("subscribe")?;
            ensure!(response.is_ok(), "subscribe: {:?}", response.code());
            let (mut seen, mut bytes, mut group, mut next_mark) =
                (0u64, 0u64, Instant::now(), c.fetch_batch as u64);
            while seen < c.messages {
                let Some(chunk) = rx.recv().await else {
                    bail!("consumer ended after {seen}");
                };
                let (n, b) = chunk?;
                seen += n;
                bytes += b;
                while seen >= next_mark || seen >= c.messages {
                    hist.saturating_record(micros(group.elapsed()));
                    group = Instant::now();
                    next_mark += c.fetch_batch as u64;
                    if seen >= c.messages {
                        break;
                    }
                }
            }
            let elapsed = start.elapsed();
            ensure!(
                seen == c.messages,
                "{seen} records read, {} expected",
                c.messages
            );
            let _ = client.unsubscribe(1).await;
            let _ = client.close().await;
            Ok(Report {
                system: "rabbitmq-stream",
                client: "rabbitmq-stream-client",
                elapsed,
                bytes_seen: bytes,
                hist,
                extra: serde_json::json!({
                    "consumer": "subscribe from offset first",
                    "credit": credit,
                    "latency": "per fetch_batch records received",
                }),
            })
        }
    }
}
