//! Running the `runnel` CLI with arguments, stdin and a timeout.

use std::fmt;
use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::runnel_bin;

/// Longest a CLI command may run before the test kills it and fails.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished CLI command left behind.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything written to stdout (lossy UTF-8).
    pub stdout: String,
    /// Everything written to stderr (lossy UTF-8).
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl CliOutput {
    /// Stdout split into lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Runs `runnel ARGS` with `stdin`, no RUNNEL_* variables from the outer
/// environment, and [`CLI_TIMEOUT`].
pub fn run_cli(args: &[&str], stdin: &str) -> CliOutput {
    run_cli_env(args, stdin, &[])
}

/// Runs `runnel ARGS` with `stdin` and extra environment variables.
pub fn run_cli_env(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> CliOutput {
    run_cli_timeout(args, stdin, env, CLI_TIMEOUT)
}

/// Runs `runnel ARGS`; kills it (by pid) and panics if it runs past `limit`.
pub fn run_cli_timeout(
    args: &[&str],
    stdin: &str,
    env: &[(&str, &str)],
    limit: Duration,
) -> CliOutput {
    let mut cmd = Command::new(runnel_bin());
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RUNNEL_") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn runnel {args:?}: {e}"));
    let pid = child.id();
    let mut child_stdin = child.stdin.take().expect("stdin is piped");
    let input = stdin.as_bytes().to_vec();
    // Feed stdin from its own thread: a command may print before it has read
    // everything, and both pipes must move at once.
    let feeder = std::thread::spawn(move || {
        // A command that exits early closes its stdin: not our failure.
        child_stdin.write_all(&input).ok();
    });
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        out.read_to_end(&mut buf).ok();
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        err.read_to_end(&mut buf).ok();
        buf
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        tx.send(child.wait()).ok();
    });
    let status = match rx.recv_timeout(limit) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => panic!("cannot wait for runnel {args:?}: {e}"),
        Err(_) => {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) on our own child, which has not been reaped
                // (the waiter thread is still blocked in wait()).
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            let stdout = out_reader.join().unwrap_or_default();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "runnel {args:?} did not finish within {limit:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
    };
    let elapsed = started.elapsed();
    feeder.join().ok();
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    CliOutput {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed,
    }
}
