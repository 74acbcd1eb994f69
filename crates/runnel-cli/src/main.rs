//! The `runnel` command line.
//!
//! One binary for every operator task, organised as `runnel <noun> <verb>`.
//! Today it holds the offline log tools:
//!
//! - `runnel log dump` prints the batches (and records) of a partition
//!   directory, like Kafka's `kafka-dump-log`;
//! - `runnel log verify` checks a partition directory for damage.
//!
//! Both read the files directly through `runnel_storage::inspect` and never
//! modify them. The broker, topic, produce, consume and bench commands join
//! as their crates land, each noun a module and each verb a file (`log/`,
//! `log/dump.rs`, ...), its clap arguments resolved into a validated config
//! before anything runs.
//!
//! Exit status: 0 on success, 1 when damage was found, 2 when the command
//! could not run (usage error, missing directory, I/O error).

mod log;
mod output;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  # check a partition directory for damage (exit status 1 if any)
  runnel log verify /var/lib/runnel/data/orders-0

  # print ten batches from offset 5000, with their records
  runnel log dump /var/lib/runnel/data/orders-0 --from-offset 5000 --max 10 --print-records

Exit status:
  0  success
  1  damage found (log verify, log dump)
  2  the command could not run: usage error, missing directory, I/O error

Environment:
  RUNNEL_OUTPUT  default of --output (text or json)";

/// Runnel: a Kafka-like distributed commit log.
#[derive(Debug, Parser)]
#[command(name = "runnel", version, after_help = EXAMPLES, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dump and verify a partition's files on disk (offline, read-only).
    #[command(long_about = log::ABOUT, after_help = log::EXAMPLES)]
    Log(log::LogArgs),
}

/// How a command that ran to its end went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Nothing wrong.
    Clean,
    /// The command worked and found damage.
    Damaged,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = match cli.command {
        Command::Log(args) => log::run(args, &mut out),
    }
    .and_then(|outcome| {
        out.flush()?;
        Ok(outcome)
    });
    match result {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Damaged) => ExitCode::from(1),
        // The reader went away (`runnel log dump ... | head`): not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            drop(out);
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
