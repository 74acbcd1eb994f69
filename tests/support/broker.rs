//! A real `runnel broker` child process on 127.0.0.1 with a temporary data
//! directory, killed (SIGKILL, by pid) when dropped.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::cli::{CliOutput, run_cli_env};
use super::runnel_bin;

/// How long a broker may take from spawn to its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a broker may take to exit after SIGTERM (drain included).
const TERM_TIMEOUT: Duration = Duration::from_secs(45);

/// Load units that broker tests of one test binary may hold at once (2
/// cores on CI). A single broker takes [`SINGLE_BROKER_UNITS`], so two
/// single-broker tests run at once; a 3-node cluster
/// (`support::cluster::Cluster`) takes all of them and runs alone.
pub const MAX_LOAD_UNITS: usize = 2;
/// The units one [`Broker::start`] holds until the broker is dropped.
pub const SINGLE_BROKER_UNITS: usize = 1;

static RUNNING: Mutex<usize> = Mutex::new(0);
static RUNNING_CHANGED: Condvar = Condvar::new();

/// Units of the [`MAX_LOAD_UNITS`] held; released on drop.
pub struct Permit {
    units: usize,
}

impl Permit {
    /// Blocks until `units` (at most [`MAX_LOAD_UNITS`]) are free, then holds them.
    pub fn acquire(units: usize) -> Permit {
        let units = units.clamp(1, MAX_LOAD_UNITS);
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        while *running + units > MAX_LOAD_UNITS {
            running = RUNNING_CHANGED
                .wait(running)
                .unwrap_or_else(|p| p.into_inner());
        }
        *running += units;
        Permit { units }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        *running -= self.units;
        RUNNING_CHANGED.notify_all();
    }
}

/// Options of [`Broker::start`].
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// `--flush`: `always`, `never` or an interval in ms.
    pub flush: String,
    /// Extra arguments after the standard ones.
    pub extra_args: Vec<String>,
    /// Pass none of the standard flags (id, listen, data dir, flush): the
    /// test configures the broker through `extra_args`, `env` and `config`.
    pub bare: bool,
    /// Extra environment variables (RUNNEL_* from the outer environment
    /// are always removed); `{data_dir}` in a value is replaced as in `config`.
    pub env: Vec<(String, String)>,
    /// A TOML config file passed with `--config`; `{data_dir}` in it is
    /// replaced by [`Broker::data_dir`].
    pub config: Option<String>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            flush: "always".into(),
            extra_args: Vec::new(),
            bare: false,
            env: Vec::new(),
            config: None,
        }
    }
}

impl BrokerOptions {
    /// Default options with `--flush flush`.
    pub fn flush(flush: &str) -> Self {
        BrokerOptions {
            flush: flush.into(),
            ..Default::default()
        }
    }
}

/// A running (or stopped, between [`Broker::kill9`] / [`Broker::terminate`]
/// and [`Broker::restart`]) broker process.
pub struct Broker {
    opts: BrokerOptions,
    /// Holds the data directory and the stderr captures.
    work: TempDir,
    child: Option<Child>,
    grpc_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    /// Node id from the ready line.
    id: u32,
    /// Number of starts so far (names the stderr file of each).
    starts: u32,
    /// None for a node of a cluster: the cluster holds the place.
    _permit: Option<Permit>,
}

impl Broker {
    /// Starts a broker with node id 1 on free ports and waits for its ready line.
    ///
    /// Blocks (up to the concurrency cap, then up to 60 s for the ready line);
    /// call it from the test's own thread, not from a spawned task: the child
    /// is killed if the thread that spawned it exits (PR_SET_PDEATHSIG).
    pub fn start(opts: BrokerOptions) -> Broker {
        Broker::launch(opts, Some(Permit::acquire(SINGLE_BROKER_UNITS)))
    }

    /// Starts a broker without taking a place under the concurrency cap:
    /// for the nodes of a `Cluster`, which holds the place for all of them.
    /// Usually `bare`, with every flag in `extra_args` (`{data_dir}` in an
    /// argument is replaced by the data directory).
    pub fn start_unmetered(opts: BrokerOptions) -> Broker {
        Broker::launch(opts, None)
    }

    fn launch(opts: BrokerOptions, permit: Option<Permit>) -> Broker {
        let work = tempfile::Builder::new()
            .prefix("runnel-broker-test")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let mut broker = Broker {
            opts,
            work,
            child: None,
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_addr: None,
            id: 0,
            starts: 0,
            _permit: permit,
        };
        broker.spawn();
        broker
    }

    /// Starts the broker again on the same data directory (new ports). The
    /// previous process must have been stopped.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "restart() needs the broker stopped first (kill9 or terminate)"
        );
        self.spawn();
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let data_dir = self.data_dir();
        let stderr_path = self.stderr_path(self.starts);
        let stderr = File::create(&stderr_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", stderr_path.display()));
        let mut cmd = Command::new(runnel_bin());
        cmd.arg("broker");
        if !self.opts.bare {
            cmd.args(["--id", "1", "--listen", "127.0.0.1:0"])
                .args(["--metrics-listen", "127.0.0.1:0"])
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--flush", &self.opts.flush]);
        }
        if let Some(toml) = &self.opts.config {
            let path = self.work.path().join("broker.toml");
            let text = toml.replace("{data_dir}", &data_dir.to_string_lossy());
            std::fs::write(&path, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            cmd.arg("--config").arg(path);
        }
        let data = data_dir.to_string_lossy();
        cmd.args(
            self.opts
                .extra_args
                .iter()
                .map(|a| a.replace("{data_dir}", &data)),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("RUNNEL_") {
                cmd.env_remove(name);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.env("NO_COLOR", "1");
        cmd.envs(
            self.opts
                .env
                .iter()
                .map(|(k, v)| (k, v.replace("{data_dir}", &data))),
        );
        // SAFETY: prctl is async-signal-safe; it only sets a flag of the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", runnel_bin().display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel::<String>();
        // Reads every stdout line; the first is the ready line. Keeps draining
        // until the broker exits so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // After the ready line nobody listens: keep draining anyway.
                tx.send(line).ok();
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((id, grpc, metrics)) = parse_ready_line(&line) {
                        self.id = id;
                        self.grpc_addr = grpc;
                        self.metrics_addr = metrics;
                        assert!(
                            line.ends_with(&format!("data in {}", data_dir.display())),
                            "ready line should name the data dir {}: {line:?}",
                            data_dir.display()
                        );
                        return;
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let stderr = self.stderr();
                    self.kill9();
                    panic!(
                        "broker printed no ready line within {READY_TIMEOUT:?}; stdout: {seen:?}\nstderr:\n{stderr}"
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    self.child = None;
                    panic!(
                        "broker exited ({status:?}) before its ready line; stdout: {seen:?}\nstderr:\n{}",
                        self.stderr()
                    );
                }
            }
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL);
            // Reaping after SIGKILL cannot block for long.
            let _status = child.wait();
        }
    }

    /// Freezes the process with SIGSTOP (it keeps its sockets; peers and
    /// clients see it stop answering). [`Broker::resume`] undoes it.
    pub fn pause(&self) {
        let child = self.child.as_ref().expect("pause() on a stopped broker");
        signal(child, libc::SIGSTOP);
    }

    /// Lets a paused process run again with SIGCONT.
    pub fn resume(&self) {
        let child = self.child.as_ref().expect("resume() on a stopped broker");
        signal(child, libc::SIGCONT);
    }

    /// Whether the process was started and not stopped by this harness.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    ///
    /// Async so that the test's own runtime keeps running meanwhile: clients
    /// of the test answer the broker's GOAWAY while it drains.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("terminate() on a stopped broker");
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + TERM_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(None) => {
                    signal(&child, libc::SIGKILL);
                    let _status = child.wait();
                    panic!(
                        "broker did not exit within {TERM_TIMEOUT:?} of SIGTERM\nstderr:\n{}",
                        self.stderr()
                    );
                }
                Err(e) => panic!("cannot wait for the broker: {e}"),
            }
        }
    }

    /// SIGTERM, then asserts exit status 0.
    pub async fn terminate_ok(&mut self) {
        let status = self.terminate().await;
        assert!(
            status.success(),
            "broker exited with {status} after SIGTERM (want 0)\nstderr:\n{}",
            self.stderr()
        );
    }

    /// The gRPC address from the ready line.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// `http://<grpc addr>`, for tonic endpoints.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// The node id from the ready line.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The metrics address from the ready line, if metrics are on.
    pub fn metrics_addr_opt(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The metrics address from the ready line.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr.expect("this broker has metrics off")
    }

    /// `http://<metrics addr>/metrics`.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_addr())
    }

    /// The broker's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.work.path().join("data")
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn stderr_path(&self, start: u32) -> PathBuf {
        self.work.path().join(format!("broker-{start}.stderr"))
    }

    /// Everything the broker wrote to stderr (every start, in order).
    pub fn stderr(&self) -> String {
        let mut out = String::new();
        for start in 1..=self.starts {
            let text = std::fs::read_to_string(self.stderr_path(start)).unwrap_or_default();
            out.push_str(&format!("--- start {start} ---\n{text}"));
        }
        out
    }

    /// Runs the `runnel` CLI with RUNNEL_BOOTSTRAP pointing at this broker.
    pub fn cli(&self, args: &[&str], stdin: &str) -> CliOutput {
        let addr = self.grpc_addr.to_string();
        run_cli_env(args, stdin, &[("RUNNEL_BOOTSTRAP", addr.as_str())])
    }

    /// Like [`Broker::cli`] but asserts exit status 0; returns stdout.
    pub fn cli_ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.cli(args, stdin);
        assert!(
            out.status.success(),
            "runnel {args:?} failed: {out}\nbroker stderr:\n{}",
            self.stderr()
        );
        out.stdout
    }

    /// Every directory under the data dir that holds a `.log` file: the
    /// partition directories, whatever the layout.
    pub fn partition_dirs(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        collect_log_dirs(&self.data_dir(), &mut found);
        found.sort();
        found
    }
}

fn collect_log_dirs(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut has_log = false;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_log_dirs(&path, found);
        } else if path.extension().is_some_and(|e| e == "log") {
            has_log = true;
        }
    }
    if has_log {
        found.push(dir.to_path_buf());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() && self.starts > 0 {
            let text = self.stderr();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- last broker stderr lines (newest last) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        self.kill9();
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Parses `runnel broker <id> listening on <addr> (gRPC), metrics on
/// http://<addr>/metrics, data in <dir>` (or `..., metrics off, ...`).
pub fn parse_ready_line(line: &str) -> Option<(u32, SocketAddr, Option<SocketAddr>)> {
    let rest = line.strip_prefix("runnel broker ")?;
    let (id, rest) = rest.split_once(" listening on ")?;
    let id: u32 = id.parse().ok()?;
    let (grpc, rest) = rest.split_once(" (gRPC), ")?;
    let grpc: SocketAddr = grpc.parse().ok()?;
    let metrics = if rest.starts_with("metrics off, data in ") {
        None
    } else {
        let rest = rest.strip_prefix("metrics on http://")?;
        let (addr, rest) = rest.split_once("/metrics, ")?;
        rest.strip_prefix("data in ")?;
        Some(addr.parse().ok()?)
    };
    Some((id, grpc, metrics))
}
