//! `runnel log verify`: check a partition directory for damage.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use runnel_storage::inspect::{self, VerifyReport};
use serde::Serialize;

use crate::Outcome;
use crate::output::OutputFormat;

/// Problems listed after the first one in text output (JSON lists all).
const MORE_PROBLEMS_SHOWN: usize = 20;

const EXAMPLES: &str = "\
Checks, reading every byte and writing none:
  - every batch: header, CRC, records decode, max timestamp;
  - offsets and raft indexes contiguous, terms never decreasing, within and across
    segments; each file name equal to its first batch's offset;
  - every .index entry points at a batch start with the entry's offset and raft index;
  - .timeindex entries increase and hold the running maximum timestamp at their batch;
  - partition.state decodes, its log start offset lies within the log, its compacted
    raft index is just below the first batch, its term runs match every batch.
Zero bytes after the last segment's data (\"preallocated space\": left by an older
build, which preallocated the active segment, or by a crash) are not damage: the
broker cuts them on open. Nor is an active segment's index with fewer entries than
its data would give (entries reach the file only after the data is fsynced).

Examples:
  runnel log verify /var/lib/runnel/data/orders-0
  for p in /var/lib/runnel/data/*/; do runnel log verify \"$p\" || echo \"DAMAGED: $p\"; done
  runnel log verify /var/lib/runnel/data/orders-0 --output json | jq '.problems[0]'

Output:
  text  a summary (segments, batches, records, bytes) when clean; otherwise the first
        bad position (file, byte, reason), what the broker will do about it and what to
        do next, then the other problems.
  json  one object: ok, dir, segments, batches, records, bytes, first_offset,
        end_offset, first_index, last_index, log_start_offset, problems (each file,
        position, kind, reason, hint) and notes (each file, note).

Exit status: 0 when clean, 1 when damage was found, 2 when the check could not run.";

/// Arguments of `runnel log verify`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    partition: super::PartitionArgs,
}

/// A validated `runnel log verify`.
#[derive(Debug)]
pub(crate) struct VerifyConfig {
    dir: PathBuf,
    output: OutputFormat,
}

impl VerifyArgs {
    /// Checks the arguments against the file system.
    pub(crate) fn resolve(self) -> anyhow::Result<VerifyConfig> {
        let (dir, output) = self.partition.resolve()?;
        Ok(VerifyConfig { dir, output })
    }
}

/// Verifies the directory and prints the report to `out`.
pub(crate) fn run(config: &VerifyConfig, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let report = inspect::verify(&config.dir)
        .with_context(|| format!("cannot verify {}", config.dir.display()))?;
    match config.output {
        OutputFormat::Text => print_text(&report, out)?,
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &ReportJson::from(&report))?;
            writeln!(out)?;
        }
    }
    Ok(if report.is_clean() {
        Outcome::Clean
    } else {
        Outcome::Damaged
    })
}

fn print_text(r: &VerifyReport, out: &mut dyn Write) -> anyhow::Result<()> {
    let summary = [
        counted(r.segments as u64, "segment"),
        counted(r.batches, "batch"),
        counted(r.records, "record"),
        counted(r.bytes, "byte"),
    ]
    .join(", ");
    match r.problems.split_first() {
        None => {
            writeln!(out, "ok: {}: {summary}", r.dir.display())?;
            if let (Some(first), Some(end)) = (r.first_offset, r.end_offset) {
                write!(out, "  offsets [{first}, {end})")?;
                if let Some(start) = r.log_start_offset {
                    write!(out, ", log start offset {start}")?;
                }
                if let (Some(a), Some(b)) = (r.first_index, r.last_index) {
                    write!(out, ", raft indexes [{a}, {b}]")?;
                }
                writeln!(out)?;
            }
        }
        Some((first, rest)) => {
            let n = counted(r.problems.len() as u64, "problem");
            writeln!(out, "damaged: {}: {n}", r.dir.display())?;
            writeln!(
                out,
                "first bad position: {} at byte {}",
                first.path.display(),
                first.position
            )?;
            writeln!(out, "  reason: {}", first.kind)?;
            writeln!(out, "  next:   {}", first.hint())?;
            if !rest.is_empty() {
                writeln!(out, "other problems:")?;
                for p in rest.iter().take(MORE_PROBLEMS_SHOWN) {
                    writeln!(out, "  {p}")?;
                }
                if rest.len() > MORE_PROBLEMS_SHOWN {
                    writeln!(
                        out,
                        "  ... and {} more (--output json lists them all)",
                        rest.len() - MORE_PROBLEMS_SHOWN
                    )?;
                }
            }
            writeln!(out, "checked: {summary}")?;
        }
    }
    for note in &r.notes {
        writeln!(out, "note: {note}")?;
    }
    Ok(())
}

/// `1 batch`, `2 batches`.
fn counted(n: u64, noun: &str) -> String {
    match (n, noun.ends_with(['s', 'h'])) {
        (1, _) => format!("1 {noun}"),
        (_, true) => format!("{n} {noun}es"),
        (_, false) => format!("{n} {noun}s"),
    }
}

#[derive(Serialize)]
struct ReportJson<'a> {
    ok: bool,
    dir: &'a Path,
    segments: usize,
    batches: u64,
    records: u64,
    bytes: u64,
    first_offset: Option<u64>,
    end_offset: Option<u64>,
    first_index: Option<u64>,
    last_index: Option<u64>,
    log_start_offset: Option<u64>,
    problems: Vec<ProblemJson<'a>>,
    notes: Vec<NoteJson<'a>>,
}

#[derive(Serialize)]
struct ProblemJson<'a> {
    file: &'a Path,
    position: u64,
    kind: &'static str,
    reason: String,
    hint: String,
}

#[derive(Serialize)]
struct NoteJson<'a> {
    file: &'a Path,
    note: String,
}

impl<'a> From<&'a VerifyReport> for ReportJson<'a> {
    fn from(r: &'a VerifyReport) -> Self {
        ReportJson {
            ok: r.is_clean(),
            dir: &r.dir,
            segments: r.segments,
            batches: r.batches,
            records: r.records,
            bytes: r.bytes,
            first_offset: r.first_offset,
            end_offset: r.end_offset,
            first_index: r.first_index,
            last_index: r.last_index,
            log_start_offset: r.log_start_offset,
            problems: r
                .problems
                .iter()
                .map(|p| ProblemJson {
                    file: &p.path,
                    position: p.position,
                    kind: p.kind.code(),
                    reason: p.kind.to_string(),
                    hint: p.hint(),
                })
                .collect(),
            notes: r
                .notes
                .iter()
                .map(|n| NoteJson {
                    file: &n.path,
                    note: n.to_string(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::empty_partition;

    fn verify_to_string(dir: &Path, output: OutputFormat) -> (Outcome, String) {
        let config = VerifyConfig {
            dir: dir.to_path_buf(),
            output,
        };
        let mut out = Vec::new();
        let outcome = run(&config, &mut out).unwrap();
        (outcome, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_new_empty_partition_is_clean() {
        let dir = empty_partition();
        let (outcome, text) = verify_to_string(dir.path(), OutputFormat::Text);
        assert_eq!(outcome, Outcome::Clean);
        assert_eq!(
            text,
            format!(
                "ok: {}: 1 segment, 0 batches, 0 records, 0 bytes\n",
                dir.path().display()
            )
        );
        let (_, json) = verify_to_string(dir.path(), OutputFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (v["ok"].as_bool(), v["end_offset"].as_u64()),
            (Some(true), None)
        );
    }

    #[test]
    fn a_damaged_state_file_is_reported() {
        let dir = empty_partition();
        std::fs::write(dir.path().join(runnel_storage::STATE_FILE), b"junk").unwrap();
        let (outcome, text) = verify_to_string(dir.path(), OutputFormat::Text);
        assert_eq!(outcome, Outcome::Damaged);
        assert!(text.contains("partition.state at byte 0"), "{text}");
        assert!(text.contains("move") && text.contains("aside"), "{text}");
    }
}
