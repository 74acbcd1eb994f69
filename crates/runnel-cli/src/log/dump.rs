//! `runnel log dump`: print the batches, and optionally the records, of a
//! partition directory.

use std::io::Write;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use runnel_batch::{BatchView, Compression, ControlKind, TimestampType};
use runnel_storage::inspect::{self, DataEnd, LogFile, SegmentFiles, StoredBatch};
use serde::Serialize;

use crate::Outcome;
use crate::output::{Encoding, OutputFormat, Shown};

const EXAMPLES: &str = "\
Examples:
  # every batch of the partition, one line each
  runnel log dump /var/lib/runnel/data/orders-0

  # ten batches from the one holding offset 5000, with their records
  runnel log dump /var/lib/runnel/data/orders-0 --from-offset 5000 --max 10 --print-records

  # batches whose CRC does not match, as JSON
  runnel log dump /var/lib/runnel/data/orders-0 --output json \\
    | jq -c 'select(.type == \"batch\" and .crc_ok == false)'

Output:
  text  per segment a heading, one line per batch (offsets, byte position, size, raft
        term and index, record count, first and max timestamp in ms, compression,
        control flag, crc ok/BAD), with --print-records one line per record (offset,
        timestamp, key, value, headers; text when printable UTF-8, else 0x-hex), and
        how the segment's data ends: at the end of the file; before zeros
        (\"preallocated space\", left by an older build or a crash: not damage); or
        at unreadable bytes (damage, or an append cut short by a crash).
  json  JSON Lines: one object per line, \"type\" being \"segment\", \"batch\" (records
        under \"records\" with --print-records) or \"end\" (\"how\": \"end_of_file\",
        \"preallocated\" with \"preallocated_bytes\", or \"unreadable\" with \"reason\").

Exit status: 0 when every batch shown is intact, 1 when a batch has a bad CRC or
unreadable bytes were met (run `runnel log verify` for what to do), 2 on errors.";

/// Arguments of `runnel log dump`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub(crate) struct DumpArgs {
    #[command(flatten)]
    partition: super::PartitionArgs,

    /// Start with the batch holding this offset (found through the offset index).
    #[arg(long, value_name = "OFFSET")]
    from_offset: Option<u64>,

    /// Print at most this many batches.
    #[arg(long, value_name = "BATCHES")]
    max: Option<NonZeroU64>,

    /// Also print every record: offset, timestamp, key, value and headers.
    #[arg(long)]
    print_records: bool,
}

/// A validated `runnel log dump`.
#[derive(Debug)]
pub(crate) struct DumpConfig {
    dir: PathBuf,
    from_offset: u64,
    max_batches: u64,
    print_records: bool,
    output: OutputFormat,
}

impl DumpArgs {
    /// Checks the arguments against the file system.
    pub(crate) fn resolve(self) -> anyhow::Result<DumpConfig> {
        let (dir, output) = self.partition.resolve()?;
        Ok(DumpConfig {
            dir,
            from_offset: self.from_offset.unwrap_or(0),
            max_batches: self.max.map_or(u64::MAX, NonZeroU64::get),
            print_records: self.print_records,
            output,
        })
    }
}

/// Prints the batches `config` asks for to `out`.
pub(crate) fn run(config: &DumpConfig, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let dir = &config.dir;
    let files = inspect::list(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    if files.segments.is_empty() {
        bail!(
            "{} holds no segment (.log) file: check that it is a partition directory",
            dir.display()
        );
    }
    // The last segment whose base offset is at or below --from-offset holds it.
    let first = files
        .segments
        .partition_point(|s| s.base_offset <= config.from_offset)
        .saturating_sub(1);
    let mut printer = Printer {
        out,
        format: config.output,
        print_records: config.print_records,
    };
    let mut shown = 0u64;
    let mut damaged = false;
    let mut log_end = None;
    for seg in &files.segments[first..] {
        let log = LogFile::open(&seg.log)
            .with_context(|| format!("cannot open {}", seg.log.display()))?;
        printer.segment(seg, &log)?;
        let start = inspect::scan_start(seg, &log, config.from_offset)
            .with_context(|| format!("cannot read {}", seg.index.display()))?;
        let mut batches = log.batches(start);
        for batch in batches.by_ref() {
            let batch = batch.with_context(|| format!("cannot read {}", seg.log.display()))?;
            log_end = Some(batch.header.next_offset());
            if batch.header.next_offset() <= config.from_offset {
                continue;
            }
            if shown == config.max_batches {
                printer.stopped(config.max_batches)?;
                return Ok(outcome(damaged));
            }
            damaged |= !batch.crc_ok();
            printer.batch(&seg.log, &batch)?;
            shown += 1;
        }
        if let Some(end) = batches.end() {
            damaged |= matches!(end, DataEnd::Unreadable { .. });
            printer.end(&seg.log, end)?;
        }
    }
    if shown == 0 && config.from_offset > 0 {
        printer.nothing_from(config.from_offset, log_end)?;
    }
    Ok(outcome(damaged))
}

fn outcome(damaged: bool) -> Outcome {
    if damaged {
        Outcome::Damaged
    } else {
        Outcome::Clean
    }
}

struct Printer<'a> {
    out: &'a mut dyn Write,
    format: OutputFormat,
    print_records: bool,
}

impl Printer<'_> {
    fn json(&mut self, value: &impl Serialize) -> anyhow::Result<()> {
        serde_json::to_writer(&mut *self.out, value)?;
        writeln!(self.out)?;
        Ok(())
    }

    fn segment(&mut self, seg: &SegmentFiles, log: &LogFile) -> anyhow::Result<()> {
        match self.format {
            OutputFormat::Text => writeln!(
                self.out,
                "segment {}: base offset {}, {} bytes",
                seg.log.display(),
                seg.base_offset,
                log.len()
            )?,
            OutputFormat::Json => self.json(&SegmentJson {
                r#type: "segment",
                file: &seg.log,
                base_offset: seg.base_offset,
                file_bytes: log.len(),
            })?,
        }
        Ok(())
    }

    fn batch(&mut self, file: &Path, batch: &StoredBatch) -> anyhow::Result<()> {
        let h = &batch.header;
        let view = batch.view();
        let records = match (&view, self.print_records) {
            (Some(v), true) => Some(decode_records(v, self.format)),
            _ => None,
        };
        let control = view
            .filter(|v| v.is_control())
            .and_then(|v| control_kind(&v));
        let compression = compression_name(h.attributes.compression().ok());
        match self.format {
            OutputFormat::Text => {
                writeln!(
                    self.out,
                    "offsets {}..={} position {} size {} term {} index {} records {} \
                     first_ts {} max_ts {} compression {} control {} crc {}",
                    h.base_offset,
                    h.last_offset(),
                    batch.position,
                    h.batch_len,
                    h.raft_term,
                    h.raft_index,
                    h.record_count,
                    h.first_timestamp,
                    h.max_timestamp,
                    compression,
                    match (h.attributes.is_control(), control) {
                        (false, _) => "no".to_string(),
                        (true, Some(kind)) => format!("yes ({kind})"),
                        (true, None) => "yes".to_string(),
                    },
                    if batch.crc_ok() { "ok" } else { "BAD" }
                )?;
                if self.print_records && view.is_none() {
                    writeln!(self.out, "  records not shown: the CRC does not match")?;
                }
                if let Some(records) = &records {
                    for r in &records.records {
                        writeln!(self.out, "  {}", record_line(r))?;
                    }
                    if let Some(e) = &records.error {
                        writeln!(self.out, "  records do not decode: {e}")?;
                    }
                }
            }
            OutputFormat::Json => {
                let (crc_ok, crc_stored, crc_computed) = match batch.crc {
                    inspect::CrcCheck::Ok => (true, h.crc, h.crc),
                    inspect::CrcCheck::Mismatch { stored, computed } => (false, stored, computed),
                };
                self.json(&BatchJson {
                    r#type: "batch",
                    file,
                    position: batch.position,
                    base_offset: h.base_offset,
                    last_offset: h.last_offset(),
                    size: h.batch_len,
                    raft_term: h.raft_term,
                    raft_index: h.raft_index,
                    record_count: h.record_count,
                    first_timestamp: h.first_timestamp,
                    max_timestamp: h.max_timestamp,
                    timestamp_type: match h.attributes.timestamp_type() {
                        TimestampType::CreateTime => "create_time",
                        TimestampType::LogAppendTime => "log_append_time",
                    },
                    compression,
                    control: h.attributes.is_control(),
                    control_kind: control,
                    producer_id: h.producer_id,
                    producer_epoch: h.producer_epoch,
                    base_sequence: h.base_sequence,
                    crc_ok,
                    crc_stored,
                    crc_computed,
                    records: records.as_ref().map(|r| r.records.as_slice()),
                    records_error: records.as_ref().and_then(|r| r.error.clone()),
                })?;
            }
        }
        Ok(())
    }

    fn end(&mut self, file: &Path, end: &DataEnd) -> anyhow::Result<()> {
        let (how, preallocated_bytes, reason) = match end {
            DataEnd::EndOfFile { .. } => ("end_of_file", None, None),
            DataEnd::Preallocated { bytes, .. } => ("preallocated", Some(*bytes), None),
            DataEnd::Unreadable { reason, .. } => ("unreadable", None, Some(reason.to_string())),
        };
        match self.format {
            OutputFormat::Text => match end {
                DataEnd::EndOfFile { position } => {
                    writeln!(self.out, "end of data at byte {position} (end of file)")?
                }
                DataEnd::Preallocated { position, bytes } => writeln!(
                    self.out,
                    "end of data at byte {position} ({bytes} bytes of preallocated space follow)"
                )?,
                DataEnd::Unreadable { position, reason } => writeln!(
                    self.out,
                    "UNREADABLE bytes at byte {position}: {reason} (run `runnel log verify` on \
                     the directory for what to do)"
                )?,
            },
            OutputFormat::Json => self.json(&EndJson {
                r#type: "end",
                file,
                position: end.position(),
                how,
                preallocated_bytes,
                reason,
            })?,
        }
        Ok(())
    }

    fn stopped(&mut self, max: u64) -> anyhow::Result<()> {
        if self.format == OutputFormat::Text {
            writeln!(self.out, "stopped after {max} batches (--max)")?;
        }
        Ok(())
    }

    fn nothing_from(&mut self, offset: u64, log_end: Option<u64>) -> anyhow::Result<()> {
        if self.format == OutputFormat::Text {
            match log_end {
                Some(end) => writeln!(
                    self.out,
                    "no batch holds offset {offset} or later: the log ends at offset {end}"
                )?,
                None => writeln!(self.out, "no batch holds offset {offset} or later")?,
            }
        }
        Ok(())
    }
}

fn compression_name(c: Option<Compression>) -> &'static str {
    match c {
        Some(Compression::None) => "none",
        Some(Compression::Lz4) => "lz4",
        Some(Compression::Zstd) => "zstd",
        None => "unknown",
    }
}

/// The kind of a control batch, from its first record's key.
fn control_kind(view: &BatchView<'_>) -> Option<String> {
    let records = view.records().ok()?;
    let first = records.iter().next()?.ok()?;
    Some(match ControlKind::from_key(first.key?)? {
        ControlKind::RaftNoop => "raft_noop".to_string(),
        ControlKind::RaftConfChange => "raft_conf_change".to_string(),
        ControlKind::Other(code) => format!("control_{code}"),
    })
}

struct DecodedRecords {
    records: Vec<RecordJson>,
    /// Why decoding stopped early, if it did.
    error: Option<String>,
}

fn decode_records(view: &BatchView<'_>, format: OutputFormat) -> DecodedRecords {
    let show = |b: &[u8]| match format {
        OutputFormat::Text => Shown::for_terminal(b),
        OutputFormat::Json => Shown::for_json(b),
    };
    let mut out = DecodedRecords {
        records: Vec::new(),
        error: None,
    };
    let records = match view.records() {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    for record in records.iter() {
        match record {
            Ok(r) => {
                let key = r.key.map(show);
                let value = show(r.value);
                out.records.push(RecordJson {
                    offset: view.base_offset() + u64::from(r.offset_delta),
                    timestamp: r.timestamp,
                    key_encoding: key.as_ref().map(|k| k.encoding),
                    key: key.map(|k| k.text),
                    value: value.text,
                    value_encoding: value.encoding,
                    headers: r
                        .headers()
                        .map(|(name, value)| {
                            let value = show(value);
                            HeaderJson {
                                name: name.to_string(),
                                value: value.text,
                                value_encoding: value.encoding,
                            }
                        })
                        .collect(),
                });
            }
            Err(e) => {
                out.error = Some(e.to_string());
                break;
            }
        }
    }
    out
}

fn record_line(r: &RecordJson) -> String {
    let shown = |text: &str, encoding: Encoding| {
        Shown {
            text: text.to_string(),
            encoding,
        }
        .quoted()
    };
    let key = match (&r.key, r.key_encoding) {
        (Some(k), Some(e)) => shown(k, e),
        _ => "none".to_string(),
    };
    let mut line = format!(
        "record offset {} ts {} key {key} value {}",
        r.offset,
        r.timestamp,
        shown(&r.value, r.value_encoding)
    );
    if !r.headers.is_empty() {
        line.push_str(" headers");
        for h in &r.headers {
            line.push_str(&format!(
                " {:?}={}",
                h.name,
                shown(&h.value, h.value_encoding)
            ));
        }
    }
    line
}

#[derive(Serialize)]
struct SegmentJson<'a> {
    r#type: &'static str,
    file: &'a Path,
    base_offset: u64,
    file_bytes: u64,
}

#[derive(Serialize)]
struct BatchJson<'a> {
    r#type: &'static str,
    file: &'a Path,
    position: u64,
    base_offset: u64,
    last_offset: u64,
    size: u32,
    raft_term: u64,
    raft_index: u64,
    record_count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    timestamp_type: &'static str,
    compression: &'static str,
    control: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    control_kind: Option<String>,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    crc_ok: bool,
    crc_stored: u32,
    crc_computed: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    records: Option<&'a [RecordJson]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    records_error: Option<String>,
}

#[derive(Serialize)]
struct RecordJson {
    offset: u64,
    timestamp: i64,
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_encoding: Option<Encoding>,
    value: String,
    value_encoding: Encoding,
    headers: Vec<HeaderJson>,
}

#[derive(Serialize)]
struct HeaderJson {
    name: String,
    value: String,
    value_encoding: Encoding,
}

#[derive(Serialize)]
struct EndJson<'a> {
    r#type: &'static str,
    file: &'a Path,
    position: u64,
    how: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    preallocated_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::empty_partition;

    #[test]
    fn an_empty_partition_dumps_its_empty_segment() {
        let dir = empty_partition();
        let dump = DumpConfig {
            dir: dir.path().to_path_buf(),
            from_offset: 0,
            max_batches: u64::MAX,
            print_records: true,
            output: OutputFormat::Json,
        };
        let mut out = Vec::new();
        assert_eq!(run(&dump, &mut out).unwrap(), Outcome::Clean);
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            (lines[0]["type"].as_str(), lines[0]["base_offset"].as_u64()),
            (Some("segment"), Some(0))
        );
        assert_eq!(lines[1]["how"], "end_of_file");
        assert_eq!(lines[1]["position"].as_u64(), Some(0), "{lines:?}");
    }
}
