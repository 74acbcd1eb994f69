//! The `runnel` command line.
//!
//! One binary for every task, organised as `runnel <noun> <verb>`:
//!
//! - `runnel broker` runs a node (`runnel_broker`);
//! - `runnel topic`, `produce`, `consume` and `bench` talk to a cluster
//!   through `runnel_client`;
//! - `runnel log dump` / `runnel log verify` read a partition directory
//!   offline through `runnel_storage::inspect` and never modify it.
//!
//! Each noun is a module, each verb a file where there are several; clap
//! arguments are resolved into a validated config before anything runs.
//!
//! Exit status: 0 on success, 1 when damage was found (log tools) or a
//! command failed at its task, 2 when the command could not run (usage
//! error, missing directory, I/O error).

mod bench;
mod broker;
mod connect;
mod consume;
mod dev_cluster;
mod group;
mod log;
mod output;
mod produce;
mod topic;

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
    /// Run a broker node.
    Broker(broker::BrokerArgs),
    /// Create, list, describe and delete topics.
    Topic(topic::TopicArgs),
    /// Produce records read from stdin, one per line.
    Produce(produce::ProduceArgs),
    /// Consume records and print them (alone or as a member of a group).
    Consume(consume::ConsumeArgs),
    /// List, describe and delete consumer groups; reset their offsets.
    Group(group::GroupArgs),
    /// Start a local cluster of broker processes (Ctrl-C stops them).
    DevCluster(dev_cluster::DevClusterArgs),
    /// Measure throughput and latency of a running cluster.
    Bench(bench::BenchArgs),
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
    keep_freed_memory();
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Log(args) => return run_log(args),
        other => other,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Broker(args) => broker::run(args).await,
            Command::Topic(args) => topic::run(args).await,
            Command::Produce(args) => produce::run(args).await,
            Command::Consume(args) => consume::run(args).await,
            Command::Group(args) => group::run(args).await,
            Command::DevCluster(args) => dev_cluster::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Log(_) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs the offline log tools (synchronous, no runtime).
fn run_log(args: log::LogArgs) -> ExitCode {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = log::run(args, &mut out).and_then(|outcome| {
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

/// Keeps memory that the program frees for its own reuse instead of
/// returning it to the kernel.
///
/// glibc's malloc gives large blocks (128 KiB and up at first) back with
/// `munmap` and trims the tops of its heaps, so the next request or fetch
/// buffer of the same size is fresh memory again: a page fault and a
/// zeroed page for every 4 KiB, on both the broker and the client. On a
/// virtual machine whose host takes back the guest's free memory (as the
/// benchmark machine's does), each such page costs several times more, and
/// at 300 MB/s this was most of a core (benches/RESULTS.md, "Memory the
/// kernel takes back"). Blocks up to 32 MiB (glibc's maximum for this
/// setting) now come from the heaps, and heaps keep up to 1 GiB of free
/// space at their top: the process's memory stays at its peak and is reused.
fn keep_freed_memory() {
    // SAFETY: mallopt only changes malloc's tuning; called first thing in
    // main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
