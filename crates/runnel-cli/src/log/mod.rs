//! `runnel log`: offline tools over a partition directory.
//!
//! They read the segment files directly, without a broker, and never modify
//! them (unlike the broker, which repairs a log when it opens it).

mod dump;
mod verify;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use runnel_storage::STATE_FILE;
use runnel_storage::filename::{LOG_EXT, segment_file_name};

use crate::Outcome;
use crate::output::OutputFormat;

pub(crate) const ABOUT: &str = "\
Dump and verify a partition's files on disk (offline, read-only).

A partition directory holds the partition's segments, three files each, named by
the segment's first offset (00000000000000000000.log with the batches, .index and
.timeindex), and partition.state. These tools read the files directly, without a
broker, and never modify them: the broker repairs what it can when it opens a
log, these tools only report. Run them with the broker stopped for a consistent
view; on a live partition the newest batches may be missing or torn.";

pub(crate) const EXAMPLES: &str = "\
Examples:
  runnel log verify /var/lib/runnel/data/orders-0
  runnel log dump /var/lib/runnel/data/orders-0 --from-offset 5000 --max 10 --print-records
  runnel log dump /var/lib/runnel/data/orders-0 --output json | jq 'select(.type == \"batch\")'";

/// Arguments of `runnel log`.
#[derive(Debug, Args)]
#[command(arg_required_else_help = true)]
pub(crate) struct LogArgs {
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Print the batches of a partition directory, optionally with their records.
    Dump(dump::DumpArgs),
    /// Check a partition directory for damage; exit status 1 if any is found.
    Verify(verify::VerifyArgs),
}

/// The arguments every `runnel log` command takes.
#[derive(Debug, Args)]
struct PartitionArgs {
    /// The partition directory (holding 00000000000000000000.log, ...).
    #[arg(value_name = "PARTITION_DIR")]
    dir: PathBuf,

    /// Output format.
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        default_value_t,
        env = "RUNNEL_OUTPUT",
        display_order = 100
    )]
    output: OutputFormat,
}

impl PartitionArgs {
    /// The directory, checked to be one, and the output format.
    fn resolve(&self) -> anyhow::Result<(PathBuf, OutputFormat)> {
        Ok((partition_dir(&self.dir)?, self.output))
    }
}

/// Runs a `runnel log` command, writing its results to `out`.
pub(crate) fn run(args: LogArgs, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    match args.command {
        LogCommand::Dump(args) => dump::run(&args.resolve()?, out),
        LogCommand::Verify(args) => verify::run(&args.resolve()?, out),
    }
}

/// Checks that `path` names a partition directory, with an error that says
/// what to do otherwise.
fn partition_dir(path: &Path) -> anyhow::Result<PathBuf> {
    let example = segment_file_name(0, LOG_EXT);
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(path.to_path_buf()),
        Ok(_) => {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            bail!(
                "{} is a file, not a partition directory: pass the directory that holds it \
                 ({}) instead",
                path.display(),
                parent.display()
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "partition directory {} does not exist: check the path (a partition directory \
             holds files like {example} and {STATE_FILE})",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// For the commands' tests: a new partition directory holding an empty log,
/// as a broker leaves it.
#[cfg(test)]
fn empty_partition() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = runnel_storage::LogConfig {
        segment_bytes: 1 << 20,
        max_batch_bytes: 1 << 20,
        index_max_bytes: 4096,
        ..Default::default()
    };
    drop(runnel_storage::Log::open(dir.path(), config).unwrap());
    dir
}
