//! `runnel produce`: one record per line of standard input.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use runnel_client::{
    Acks, Compression, DeliveryFuture, Error, Producer, ProducerConfig, ProducerRecord,
};
use std::io::{BufRead, BufReader};
use tokio::sync::mpsc;

use crate::connect::{ConnectArgs, explain};

const EXAMPLES: &str = "\
Each line of standard input is one record; the newline is not part of it. With
--key-separator, a line splits at the first SEP into key and value (a line without
SEP is an unkeyed record). Keyed records go to partition murmur2(key) mod partitions
(as in Kafka); unkeyed ones fill one partition's batch, then the next.

Examples:
  echo hello | runnel produce orders
  printf 'user1:clicked\\nuser2:bought\\n' | runnel produce orders --key-separator :
  runnel produce orders --partition 3 --header source=import --acks 1 < events.txt
  seq 1000000 | runnel produce numbers --compression lz4 --linger-ms 20

Exit status: 0 once every record was acknowledged (with --acks 0: sent); 1 otherwise,
with how many records were acknowledged and the first error.";

/// Arguments of `runnel produce`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub(crate) struct ProduceArgs {
    /// Topic to write to.
    topic: String,

    /// Send every record to this partition (default: the partitioner decides).
    #[arg(long, value_name = "N")]
    partition: Option<u32>,

    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,

    /// Acknowledgement: 0 (fire and forget), 1 (leader appended), all (replicated).
    #[arg(long, value_name = "0|1|all", default_value = "all", value_parser = parse_acks)]
    acks: Acks,

    /// A header added to every record, NAME=VALUE; repeat for more.
    #[arg(long = "header", value_name = "K=V", value_parser = parse_header)]
    headers: Vec<(String, Bytes)>,

    /// Compression of each batch.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    compression: CompressionArg,

    /// How long a batch waits for more records, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5)]
    linger_ms: u64,

    /// Largest batch, in bytes (before compression).
    #[arg(long, value_name = "B", default_value_t = 1 << 20)]
    batch_bytes: usize,

    #[command(flatten)]
    connect: ConnectArgs,
}

/// `--compression`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CompressionArg {
    /// No compression.
    None,
    /// LZ4: fast, moderate ratio.
    Lz4,
    /// Zstandard: slower, better ratio.
    Zstd,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::None => Compression::None,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
}

fn parse_acks(s: &str) -> Result<Acks, String> {
    s.parse()
}

fn parse_header(s: &str) -> Result<(String, Bytes), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => {
            Ok((name.to_string(), Bytes::copy_from_slice(value.as_bytes())))
        }
        _ => Err(format!("a header is NAME=VALUE, not {s:?}")),
    }
}

/// Turns one input line (without its newline) into a record.
fn record_of(args: &ProduceArgs, line: &[u8]) -> ProducerRecord {
    let (key, value) = match args.key_separator.as_deref().map(str::as_bytes) {
        Some(sep) if !sep.is_empty() => match find(line, sep) {
            Some(at) => (
                Some(Bytes::copy_from_slice(&line[..at])),
                Bytes::copy_from_slice(&line[at + sep.len()..]),
            ),
            None => (None, Bytes::copy_from_slice(line)),
        },
        _ => (None, Bytes::copy_from_slice(line)),
    };
    ProducerRecord {
        topic: args.topic.clone(),
        partition: args.partition,
        key,
        value,
        headers: args.headers.clone(),
        timestamp: None,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// How the deliveries went.
#[derive(Debug, Default)]
struct Tally {
    acknowledged: u64,
    failed: u64,
    first_error: Option<Error>,
}

/// Awaits the deliveries in the order the records were sent.
async fn count(mut deliveries: mpsc::UnboundedReceiver<DeliveryFuture>) -> Tally {
    let mut tally = Tally::default();
    while let Some(delivery) = deliveries.recv().await {
        match delivery.await {
            Ok(_) => tally.acknowledged += 1,
            Err(e) => {
                tally.failed += 1;
                tally.first_error.get_or_insert(e);
            }
        }
    }
    tally
}

/// Runs `runnel produce`.
pub(crate) async fn run(args: ProduceArgs) -> anyhow::Result<ExitCode> {
    if args.batch_bytes == 0 {
        bail!("--batch-bytes must be at least 1");
    }
    let client = args.connect.connect().await?;
    let config = ProducerConfig {
        acks: args.acks,
        linger: Duration::from_millis(args.linger_ms),
        batch_bytes: args.batch_bytes,
        compression: args.compression.into(),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&client, config)
        .await
        .map_err(|e| explain(e, Some(&args.topic)))?;
    let (deliveries, receiver) = mpsc::unbounded_channel();
    let counter = tokio::spawn(count(receiver));

    let mut lines = read_stdin_lines();
    let mut sent = 0u64;
    let mut send_error = None;
    'input: while let Some(chunk) = lines.recv().await {
        let chunk = chunk.context("cannot read standard input")?;
        for line in chunk {
            match producer.send(record_of(&args, &line)).await {
                Ok(delivery) => {
                    sent += 1;
                    // The counter only stops after this channel closes.
                    let _open = deliveries.send(delivery);
                }
                Err(e) => {
                    send_error = Some(e);
                    break 'input;
                }
            }
        }
    }
    let closed = producer.close().await;
    drop(deliveries);
    let tally = counter.await.context("the delivery counter failed")?;
    if let Some(e) = send_error {
        let why = explain(e, Some(&args.topic));
        if sent == 0 {
            bail!("{why:#}; no record was produced");
        }
        bail!(
            "{why:#}; stopped after {sent} record{}: {} acknowledged, {} not",
            plural(sent),
            tally.acknowledged,
            tally.failed
        );
    }
    if let Some(e) = tally.first_error {
        let why = explain(e, Some(&args.topic));
        bail!(
            "{} of {sent} record{} not acknowledged ({} acknowledged); first error: {why:#}",
            tally.failed,
            plural(sent),
            tally.acknowledged
        );
    }
    closed.map_err(|e| explain(e, Some(&args.topic)))?;
    Ok(ExitCode::SUCCESS)
}

/// Lines read from standard input (without their newline), in chunks.
type LineChunk = std::io::Result<Vec<Vec<u8>>>;

/// Reads standard input on its own thread (a blocking read must not hold a
/// runtime worker, and a reader stuck on a terminal must not keep the
/// process from exiting), handing over lines in chunks.
fn read_stdin_lines() -> mpsc::Receiver<LineChunk> {
    const LINES_PER_CHUNK: usize = 1024;
    let (sender, receiver) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut input = BufReader::with_capacity(1 << 20, std::io::stdin().lock());
        let mut chunk = Vec::with_capacity(LINES_PER_CHUNK);
        loop {
            let mut line = Vec::new();
            match input.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    chunk.push(line);
                    // Hand over a full chunk, or whatever was read before a pause.
                    if chunk.len() >= LINES_PER_CHUNK || input.buffer().is_empty() {
                        let full =
                            std::mem::replace(&mut chunk, Vec::with_capacity(LINES_PER_CHUNK));
                        if sender.blocking_send(Ok(full)).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _closed = sender.blocking_send(Err(e));
                    return;
                }
            }
        }
        if !chunk.is_empty() {
            let _closed = sender.blocking_send(Ok(chunk));
        }
    });
    receiver
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        produce: ProduceArgs,
    }

    fn args(extra: &[&str]) -> ProduceArgs {
        let argv = ["runnel-produce", "t"].iter().chain(extra).copied();
        Cli::try_parse_from(argv).unwrap().produce
    }

    #[test]
    fn lines_split_into_key_and_value() {
        let with_sep = args(&["--key-separator", "::", "--header", "a=b=c"]);
        // (case, line, key, value)
        type Case = (u32, &'static [u8], Option<&'static [u8]>, &'static [u8]);
        let cases: &[Case] = &[
            (0, b"k::v", Some(b"k"), b"v"),
            (1, b"k::v::w", Some(b"k"), b"v::w"),
            (2, b"no separator", None, b"no separator"),
            (3, b"::v", Some(b""), b"v"),
            (4, b"", None, b""),
        ];
        for (case, line, key, value) in cases {
            let r = record_of(&with_sep, line);
            assert_eq!(r.key.as_deref(), *key, "case {case}");
            assert_eq!(r.value.as_ref(), *value, "case {case}");
            assert_eq!(r.headers, [("a".to_string(), Bytes::from_static(b"b=c"))]);
        }
        let plain = record_of(&args(&[]), b"k::v");
        assert_eq!(plain.key, None);
        assert_eq!(plain.value.as_ref(), b"k::v");
    }

    #[test]
    fn flags_parse() {
        let a = args(&["--acks", "0", "--partition", "2", "--compression", "zstd"]);
        assert_eq!(a.acks, Acks::None);
        assert_eq!(a.partition, Some(2));
        assert_eq!(a.compression, CompressionArg::Zstd);
        let cli = Cli::try_parse_from(["p", "t", "--acks", "2"]);
        assert!(cli.is_err());
        let cli = Cli::try_parse_from(["p", "t", "--header", "novalue"]);
        assert!(cli.is_err());
    }
}
