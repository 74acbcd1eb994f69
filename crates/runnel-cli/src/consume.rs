//! `runnel consume`: print records of a topic.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use runnel_client::{
    Consumer, ConsumerConfig, ConsumerRecord, GroupConfig, GroupConsumer, StartPosition,
};

use crate::connect::{ConnectArgs, explain};

const EXAMPLES: &str = "\
Starts at the end of each partition (new records only) unless told otherwise, and
runs until Ctrl-C or SIGTERM, --max-messages or --timeout-ms. Records of one
partition print in offset order.

Format tokens (like kcat -f):
  %t topic   %p partition   %o offset   %k key   %v value (also %s)
  %T timestamp (ms since the Unix epoch)   %h headers as k=v,k2=v2   %% a '%'
  \\n newline   \\t tab   \\r carriage return   \\\\ backslash
Keys, values and headers print as raw bytes. A newline is added after each record
unless FMT ends with one.

With --group G the consumer joins consumer group G: the group's members share the
topic's partitions (the broker assigns them and moves them when members come and go),
each partition starts at the group's committed offset (or, with none, at the end, or
the beginning with --from-beginning), positions are committed every --auto-commit-ms
and on exit, and the member leaves the group cleanly on exit (Ctrl-C, SIGTERM,
--max-messages, --timeout-ms). Delivery is at least once: after a crash, records
printed since the last commit are printed again by whoever takes the partition.

Examples:
  runnel consume orders --from-beginning --timeout-ms 1000
  runnel consume orders --group billing
  runnel consume orders --group billing --from-beginning --session-timeout-ms 3000 --auto-commit-ms 500
  runnel consume orders --partition 2 --offset 5000 --max-messages 10
  runnel consume orders --from-time 2024-05-01T12:00:00Z --format '%p/%o %k=%v'
  runnel consume orders --from-time 2024-05-01T14:00:00.250+02:00 --max-messages 1
  runnel consume orders --from-time 1714564800000 --format '%T\\t%h\\t%v\\n'

Exit status: 0 when stopped as asked; 1 on an error (unknown topic, offset out of
range, lost connection).";

/// Arguments of `runnel consume`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub(crate) struct ConsumeArgs {
    /// Topic to read.
    topic: String,

    /// Read only this partition (default: all).
    #[arg(long, value_name = "N", conflicts_with = "group")]
    partition: Option<u32>,

    /// Consume as a member of this consumer group (see below).
    #[arg(long, value_name = "G")]
    group: Option<String>,

    /// With --group: the broker removes this member when it hears nothing for
    /// this long, 200-600000 ms.
    #[arg(long, value_name = "MS", default_value_t = 10_000, requires = "group")]
    session_timeout_ms: u64,

    /// With --group: commit the position this often (and on exit).
    #[arg(long, value_name = "MS", default_value_t = 1_000, requires = "group")]
    auto_commit_ms: u64,

    /// With --group: how the broker spreads partitions over the members,
    /// chosen by the group's first member: sticky (members keep what they
    /// have), range (consecutive partitions) or round-robin.
    #[arg(long, value_name = "NAME", requires = "group", value_parser = ["sticky", "range", "round-robin"])]
    assignor: Option<String>,

    /// Start at the first record still stored.
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    from_beginning: bool,

    /// Start at this offset (in every partition read).
    #[arg(long, value_name = "N", conflicts_with_all = ["from_time", "group"])]
    offset: Option<u64>,

    /// Start at the first record at or after this time: RFC 3339
    /// (2024-05-01T12:00:00Z, or with an offset such as +02:00; none means
    /// UTC) or milliseconds since the Unix epoch.
    #[arg(long, value_name = "TIME", value_parser = parse_time, conflicts_with = "group")]
    from_time: Option<i64>,

    /// Stop after printing this many records.
    #[arg(long, value_name = "N")]
    max_messages: Option<u64>,

    /// Stop when no record arrived for this many milliseconds.
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,

    /// How to print each record (see below); default: the value alone.
    #[arg(long, value_name = "FMT", default_value = "%v\\n", value_parser = Format::parse)]
    format: Format,

    #[command(flatten)]
    connect: ConnectArgs,
}

impl ConsumeArgs {
    fn start(&self) -> StartPosition {
        match (self.from_beginning, self.offset, self.from_time) {
            (true, _, _) => StartPosition::Earliest,
            (_, Some(offset), _) => StartPosition::Offset(offset),
            (_, _, Some(ms)) => StartPosition::Timestamp(ms),
            _ => StartPosition::Latest,
        }
    }
}

/// Parses RFC 3339 or epoch milliseconds into epoch milliseconds.
pub(crate) fn parse_time(s: &str) -> Result<i64, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map_err(|_| format!("{s:?} is too large for milliseconds since the epoch"));
    }
    let timestamp = s
        .parse::<jiff::Timestamp>()
        .or_else(|with_offset| {
            // No offset given: read it as UTC.
            s.parse::<jiff::civil::DateTime>()
                .and_then(|civil| civil.to_zoned(jiff::tz::TimeZone::UTC))
                .map(|zoned| zoned.timestamp())
                .map_err(|_| with_offset)
        })
        .map_err(|e| {
            format!(
                "{s:?} is neither RFC 3339 (2024-05-01T12:00:00Z, 2024-05-01T14:00:00+02:00) \
                 nor epoch milliseconds: {e}"
            )
        })?;
    Ok(timestamp.as_millisecond())
}

/// One piece of a `--format`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
    Headers,
}

/// A parsed `--format`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Format(Vec<Piece>);

impl Format {
    fn parse(s: &str) -> Result<Format, String> {
        let mut pieces = Vec::new();
        let mut literal = Vec::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            let token = match c {
                '%' => match chars.next() {
                    Some('t') => Piece::Topic,
                    Some('p') => Piece::Partition,
                    Some('o') => Piece::Offset,
                    Some('k') => Piece::Key,
                    Some('v' | 's') => Piece::Value,
                    Some('T') => Piece::Timestamp,
                    Some('h') => Piece::Headers,
                    Some('%') => {
                        literal.push(b'%');
                        continue;
                    }
                    Some(other) => {
                        return Err(format!(
                            "unknown format token %{other} (use %t %p %o %k %v %T %h or %%)"
                        ));
                    }
                    None => return Err("the format ends with a lone %".into()),
                },
                '\\' => {
                    let unescaped = match chars.next() {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some('\\') => '\\',
                        Some(other) => {
                            literal.push(b'\\');
                            other
                        }
                        None => '\\',
                    };
                    let mut buf = [0; 4];
                    literal.extend_from_slice(unescaped.encode_utf8(&mut buf).as_bytes());
                    continue;
                }
                other => {
                    let mut buf = [0; 4];
                    literal.extend_from_slice(other.encode_utf8(&mut buf).as_bytes());
                    continue;
                }
            };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(token);
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        match pieces.last_mut() {
            Some(Piece::Literal(l)) if l.last() == Some(&b'\n') => {}
            Some(Piece::Literal(l)) => l.push(b'\n'),
            _ => pieces.push(Piece::Literal(b"\n".to_vec())),
        }
        Ok(Format(pieces))
    }

    fn write(&self, record: &ConsumerRecord, out: &mut Vec<u8>) {
        for piece in &self.0 {
            match piece {
                Piece::Literal(bytes) => out.extend_from_slice(bytes),
                Piece::Topic => out.extend_from_slice(record.topic.as_bytes()),
                Piece::Partition => out.extend_from_slice(record.partition.to_string().as_bytes()),
                Piece::Offset => out.extend_from_slice(record.offset.to_string().as_bytes()),
                Piece::Key => out.extend_from_slice(record.key.as_deref().unwrap_or_default()),
                Piece::Value => out.extend_from_slice(&record.value),
                Piece::Timestamp => out.extend_from_slice(record.timestamp.to_string().as_bytes()),
                Piece::Headers => {
                    for (i, (name, value)) in record.headers.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(name.as_bytes());
                        out.push(b'=');
                        out.extend_from_slice(value);
                    }
                }
            }
        }
    }
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ignored = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ignored = tokio::signal::ctrl_c().await;
    }
}

/// Longest single fetch wait: bounds how late `--timeout-ms` notices idleness.
const MAX_POLL_WAIT: Duration = Duration::from_millis(500);

/// Runs `runnel consume`.
pub(crate) async fn run(args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    if args.max_messages == Some(0) {
        return Ok(ExitCode::SUCCESS);
    }
    let idle_limit = args.timeout_ms.map(Duration::from_millis);
    let max_wait = idle_limit.map_or(MAX_POLL_WAIT, |t| t.min(MAX_POLL_WAIT));
    let config = ConsumerConfig {
        max_wait,
        ..ConsumerConfig::default()
    };
    let client = args.connect.connect().await?;
    if let Some(group) = &args.group {
        return run_group(&args, client, group, config, idle_limit).await;
    }
    let partitions = args.partition.map(|p| vec![p]);
    let mut consumer = Consumer::new(&client, &args.topic, partitions, args.start(), config)
        .await
        .map_err(|e| explain(e, Some(&args.topic)))?;

    let stop = stop_requested();
    tokio::pin!(stop);
    let mut printer = Printer::new(&args, idle_limit);
    loop {
        let records = tokio::select! {
            biased;
            () = &mut stop => break,
            polled = consumer.poll() => polled.map_err(|e| explain(e, Some(&args.topic)))?,
        };
        if records.is_empty() {
            if printer.idle_too_long() {
                break;
            }
            continue;
        }
        printer.format(&records);
        printer.write()?;
        if printer.done() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints records as `--format` says, up to `--max-messages`, and knows
/// when consuming should stop; shared by the plain and the group loop.
struct Printer<'a> {
    args: &'a ConsumeArgs,
    idle_limit: Option<Duration>,
    printed: u64,
    last_record: Instant,
    buf: Vec<u8>,
}

impl<'a> Printer<'a> {
    fn new(args: &'a ConsumeArgs, idle_limit: Option<Duration>) -> Printer<'a> {
        Printer {
            args,
            idle_limit,
            printed: 0,
            last_record: Instant::now(),
            buf: Vec::with_capacity(1 << 16),
        }
    }

    /// After an empty poll: whether nothing has come for `--timeout-ms`.
    fn idle_too_long(&self) -> bool {
        self.idle_limit
            .is_some_and(|limit| self.last_record.elapsed() >= limit)
    }

    /// Formats `records` (all, or up to `--max-messages`) for one write;
    /// returns how many it took.
    fn format(&mut self, records: &[ConsumerRecord]) -> usize {
        self.last_record = Instant::now();
        self.buf.clear();
        for (i, record) in records.iter().enumerate() {
            self.args.format.write(record, &mut self.buf);
            self.printed += 1;
            if self.done() {
                return i + 1;
            }
        }
        records.len()
    }

    /// Writes what [`Printer::format`] formatted to standard output.
    fn write(&self) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(&self.buf)
            .and_then(|()| out.flush())
            .context("cannot write to standard output")
    }

    /// Whether `--max-messages` records have been printed.
    fn done(&self) -> bool {
        self.args
            .max_messages
            .is_some_and(|max| self.printed >= max)
    }
}

/// `runnel consume --group`: the same loop as a group member.
async fn run_group(
    args: &ConsumeArgs,
    client: runnel_client::Client,
    group: &str,
    consumer: ConsumerConfig,
    idle_limit: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let config = GroupConfig {
        session_timeout: Duration::from_millis(args.session_timeout_ms),
        auto_commit: Some(Duration::from_millis(args.auto_commit_ms)),
        reset: if args.from_beginning {
            StartPosition::Earliest
        } else {
            StartPosition::Latest
        },
        assignor: args.assignor.clone().unwrap_or_default(),
        consumer,
    };
    let mut member = GroupConsumer::join(&client, group, &args.topic, config)
        .await
        .map_err(|e| explain(e, Some(&args.topic)))?;
    let stop = stop_requested();
    tokio::pin!(stop);
    let mut printer = Printer::new(args, idle_limit);
    let outcome: anyhow::Result<()> = loop {
        let records = tokio::select! {
            biased;
            () = &mut stop => break Ok(()),
            polled = member.poll() => match polled {
                Ok(r) => r,
                Err(e) => break Err(explain(e, Some(&args.topic))),
            },
        };
        if records.is_empty() {
            if printer.idle_too_long() {
                break Ok(());
            }
            continue;
        }
        let taken = printer.format(&records);
        // Records not printed are not committed: move back to the first
        // one of each partition.
        let mut rewind: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
        for r in &records[taken..] {
            rewind.entry(r.partition).or_insert(r.offset);
        }
        for (p, o) in rewind {
            member.seek(p, o);
        }
        if let Err(e) = printer.write() {
            break Err(e);
        }
        if printer.done() {
            break Ok(());
        }
    };
    // Commit what was printed and leave, whatever ended the loop.
    let closed = member.close().await;
    outcome?;
    closed.map_err(|e| explain(e, Some(&args.topic)))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        consume: ConsumeArgs,
    }

    fn parse(extra: &[&str]) -> Result<ConsumeArgs, clap::Error> {
        let argv = ["runnel-consume", "t"].iter().chain(extra).copied();
        Cli::try_parse_from(argv).map(|c| c.consume)
    }

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: Arc::from("orders"),
            partition: 2,
            offset: 41,
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from_static(b"k1")),
            value: Bytes::from_static(b"hello"),
            headers: vec![
                ("a".into(), Bytes::from_static(b"1")),
                ("b".into(), Bytes::from_static(b"2")),
            ],
        }
    }

    #[test]
    fn formats_print_like_kcat() {
        // (case, format, output)
        let cases: &[(u32, &str, &str)] = &[
            (0, "%v\\n", "hello\n"),
            (1, "%v", "hello\n"),
            (2, "%t/%p/%o %k=%v", "orders/2/41 k1=hello\n"),
            (3, "%T\\t%h\\n", "1700000000000\ta=1,b=2\n"),
            (4, "100%% %s\\n\\n", "100% hello\n\n"),
            (5, "%k\\\\%v\\r\\n", "k1\\hello\r\n"),
            (6, "\u{e9}%v", "\u{e9}hello\n"),
        ];
        for (case, fmt, want) in cases {
            let format = Format::parse(fmt).unwrap();
            let mut out = Vec::new();
            format.write(&record(), &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), *want, "case {case}: {fmt}");
        }
        for bad in ["%x", "abc%"] {
            assert!(Format::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn start_positions() {
        // (case, flags, start)
        let cases: &[(u32, &[&str], StartPosition)] = &[
            (0, &[], StartPosition::Latest),
            (1, &["--from-beginning"], StartPosition::Earliest),
            (2, &["--offset", "7"], StartPosition::Offset(7)),
            (
                3,
                &["--from-time", "1700000000000"],
                StartPosition::Timestamp(1_700_000_000_000),
            ),
            (
                4,
                &["--from-time", "2023-11-14T22:13:20Z"],
                StartPosition::Timestamp(1_700_000_000_000),
            ),
            (
                5,
                &["--from-time", "2023-11-14T22:13:20.5Z"],
                StartPosition::Timestamp(1_700_000_000_500),
            ),
            (
                6,
                &["--from-time", "2023-11-14T23:13:20.5+01:00"],
                StartPosition::Timestamp(1_700_000_000_500),
            ),
            (
                7,
                &["--from-time", "2023-11-14T17:13:20-05:00"],
                StartPosition::Timestamp(1_700_000_000_000),
            ),
            (
                8,
                &["--from-time", "2023-11-14T22:13:20"],
                StartPosition::Timestamp(1_700_000_000_000),
            ),
            (
                9,
                &["--from-time", "2023-11-14 22:13:20"],
                StartPosition::Timestamp(1_700_000_000_000),
            ),
        ];
        for (case, flags, start) in cases {
            assert_eq!(parse(flags).unwrap().start(), *start, "case {case}");
        }
        for (case, bad) in [
            &["--from-beginning", "--offset", "1"][..],
            &["--offset", "1", "--from-time", "5"],
            &["--from-time", "yesterday"],
        ]
        .iter()
        .enumerate()
        {
            assert!(parse(bad).is_err(), "case {case}");
        }
    }
}
