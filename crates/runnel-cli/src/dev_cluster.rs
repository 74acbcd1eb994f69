//! `runnel dev-cluster`: a local cluster of broker processes with one
//! command, for trying Runnel out and for benchmarks.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const LONG_HELP: &str = "\
Starts --nodes `runnel broker` processes on 127.0.0.1 that form one
cluster, waits until every node is ready, prints the bootstrap list and
example commands, and keeps running until Ctrl-C (SIGINT) or SIGTERM,
which stops every node gracefully (SIGKILL after 15 s).

Node i (from 1) serves gRPC on BASE + 10*(i-1) and metrics on the next
port: with the default base, 9740/9741, 9750/9751, 9760/9761. Its data is in
DIR/node-i, its log (stderr) in DIR/node-i.log. Restarting dev-cluster on
the same --data-dir brings the same cluster back with its data.

A node that dies is reported; the others keep running (try kill -9 on one
of them: the cluster goes on with a majority).

Examples:
  runnel dev-cluster
  runnel dev-cluster --nodes 5 --data-dir /tmp/runnel-dev --base-port 19740

Every node runs with --peers, so every partition is a Raft group, and Raft
groups always fsync before they acknowledge or vote (a lost vote or entry
could elect two leaders or lose an acknowledged record): --flush is passed
on but has no effect on them.";

/// Arguments of `runnel dev-cluster`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = LONG_HELP)]
pub(crate) struct DevClusterArgs {
    /// Number of nodes (1-9; odd numbers tolerate the most failures).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    nodes: u32,

    /// Directory for the nodes' data and logs.
    #[arg(long, value_name = "DIR", default_value = "./dev-cluster")]
    data_dir: PathBuf,

    /// gRPC port of node 1; node i uses BASE + 10*(i-1), metrics the next port.
    #[arg(long, value_name = "PORT", default_value_t = 9740)]
    base_port: u16,

    /// --flush of every node: always, never or a number of milliseconds
    /// (no effect today: Raft groups always fsync, see below).
    #[arg(long, value_name = "always|never|MS", default_value = "always")]
    flush: String,
}

struct Node {
    id: u32,
    grpc: String,
    metrics: String,
    dir: PathBuf,
    log: PathBuf,
    child: Child,
}

fn port(base: u16, offset: u32) -> anyhow::Result<u16> {
    u16::try_from(u32::from(base) + offset)
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("--base-port {base} leaves no room for the nodes' ports"))
}

/// Runs `runnel dev-cluster`.
pub(crate) async fn run(args: DevClusterArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the runnel binary to start nodes")?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create {} (choose another --data-dir)",
            args.data_dir.display()
        )
    })?;
    let mut addrs = Vec::new();
    for i in 0..args.nodes {
        addrs.push((
            i + 1,
            format!("127.0.0.1:{}", port(args.base_port, 10 * i)?),
            format!("127.0.0.1:{}", port(args.base_port, 10 * i + 1)?),
        ));
    }
    let peers = addrs
        .iter()
        .map(|(id, grpc, _)| format!("{id}={grpc}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Node> = Vec::new();
    for (id, grpc, metrics) in &addrs {
        match start_node(&exe, &args, *id, grpc, metrics, &peers) {
            Ok(node) => nodes.push(node),
            Err(e) => {
                stop_all(&mut nodes);
                return Err(e);
            }
        }
    }
    if let Err(e) = wait_ready(&mut nodes).await {
        stop_all(&mut nodes);
        return Err(e);
    }
    if let Err(e) = wait_controller(&nodes[0].grpc).await {
        stop_all(&mut nodes);
        return Err(e);
    }
    let bootstrap = nodes
        .iter()
        .map(|n| n.grpc.clone())
        .collect::<Vec<_>>()
        .join(",");
    let rf = args.nodes.min(3);
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "runnel dev-cluster: {} nodes ready", nodes.len())?;
        for n in &nodes {
            writeln!(
                out,
                "  node {}: {} (gRPC), http://{}/metrics, data {}, log {}",
                n.id,
                n.grpc,
                n.metrics,
                n.dir.display(),
                n.log.display()
            )?;
        }
        writeln!(out, "bootstrap: {bootstrap}")?;
        writeln!(out)?;
        writeln!(out, "Try, in another terminal:")?;
        writeln!(out, "  export RUNNEL_BOOTSTRAP={bootstrap}")?;
        writeln!(
            out,
            "  runnel topic create orders --partitions 6 --replication-factor {rf}"
        )?;
        writeln!(out, "  runnel topic describe orders")?;
        writeln!(out, "  seq 1 1000 | runnel produce orders --acks all")?;
        writeln!(
            out,
            "  runnel consume orders --from-beginning --timeout-ms 2000"
        )?;
        writeln!(
            out,
            "  runnel bench produce --topic bench --partitions 6 --acks all --duration 10"
        )?;
        writeln!(out)?;
        writeln!(out, "Ctrl-C stops every node.")?;
        out.flush()?;
    }

    let outcome = supervise(&mut nodes).await;
    stop_all(&mut nodes);
    outcome
}

fn start_node(
    exe: &Path,
    args: &DevClusterArgs,
    id: u32,
    grpc: &str,
    metrics: &str,
    peers: &str,
) -> anyhow::Result<Node> {
    let dir = args.data_dir.join(format!("node-{id}"));
    let log = args.data_dir.join(format!("node-{id}.log"));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let child = std::process::Command::new(exe)
        .arg("broker")
        .args(["--id", &id.to_string()])
        .args(["--listen", grpc])
        .args(["--metrics-listen", metrics])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--peers", peers])
        .args(["--flush", &args.flush])
        // The nodes get no terminal: Ctrl-C reaches dev-cluster only, which
        // then stops them in order.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start node {id}"))?;
    Ok(Node {
        id,
        grpc: grpc.to_string(),
        metrics: metrics.to_string(),
        dir,
        log,
        child,
    })
}

use std::os::unix::process::CommandExt as _;

/// Waits for every node's ready line (60 s at most).
async fn wait_ready(nodes: &mut [Node]) -> anyhow::Result<()> {
    let mut readers = Vec::new();
    for n in nodes.iter_mut() {
        let Some(stdout) = n.child.stdout.take() else {
            bail!("node {} has no stdout", n.id);
        };
        let (id, log) = (n.id, n.log.clone());
        readers.push(tokio::task::spawn_blocking(
            move || -> anyhow::Result<()> {
                let mut lines = BufReader::new(stdout).lines();
                match lines.next() {
                    Some(Ok(line)) if line.contains("listening on") => {
                        // Keep draining so the node never blocks on a full pipe.
                        std::thread::spawn(move || for _ in lines {});
                        Ok(())
                    }
                    _ => bail!(
                        "node {id} stopped before it was ready: see {} (last lines below)\n{}",
                        log.display(),
                        tail(&log, 15)
                    ),
                }
            },
        ));
    }
    let deadline = Duration::from_secs(60);
    for r in readers {
        tokio::time::timeout(deadline, r)
            .await
            .context("a node was not ready within 60 s: see its log in --data-dir")?
            .context("waiting for a node failed")??;
    }
    Ok(())
}

/// Waits until the cluster elected its controller (30 s at most), so that
/// the commands printed next work at once.
async fn wait_controller(grpc: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(client) = runnel_client::Client::connect(grpc).await
            && let Ok(c) = client.describe_cluster().await
            && c.controller_id != 0
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the nodes started but elected no controller within 30 s: see their logs in --data-dir"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs until a signal; reports nodes that die. Ok(exit status).
async fn supervise(nodes: &mut [Node]) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut alive: Vec<bool> = vec![true; nodes.len()];
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for (i, n) in nodes.iter_mut().enumerate() {
            if alive[i]
                && let Ok(Some(status)) = n.child.try_wait()
            {
                alive[i] = false;
                eprintln!(
                    "runnel dev-cluster: node {} exited ({status}); the others keep running. Its log: {}",
                    n.id,
                    n.log.display()
                );
            }
        }
        if alive.iter().all(|a| !a) {
            eprintln!("runnel dev-cluster: every node exited");
            return Ok(ExitCode::from(1));
        }
    }
    eprintln!("runnel dev-cluster: stopping every node");
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM to every node, SIGKILL to those still running after 15 s.
fn stop_all(nodes: &mut [Node]) {
    for n in nodes.iter() {
        if let Ok(pid) = i32::try_from(n.child.id()) {
            // SAFETY: kill(2) on a child we started; no memory involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for n in nodes.iter_mut() {
        loop {
            match n.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!(
                        "runnel dev-cluster: node {} did not stop in 15 s; killing it",
                        n.id
                    );
                    let _ = n.child.kill();
                    let _ = n.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
