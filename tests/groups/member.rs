//! A `runnel consume --group` child process whose output lines are
//! collected as they come, and helpers to read a group's state.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use crate::support::{eventually, run_cli, runnel_bin};

/// One printed record: partition, offset, value.
pub(crate) type Line = (u32, u64, String);

/// A group member process printing `%p %o %v` per record.
pub(crate) struct Member {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<Line>>>,
    reader: Option<JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
}

impl Member {
    /// Starts `runnel consume TOPIC --group GROUP --from-beginning` with
    /// extra arguments.
    pub(crate) fn start(bootstrap: &str, topic: &str, group: &str, extra: &[&str]) -> Member {
        let mut cmd = Command::new(runnel_bin());
        cmd.args([
            "consume",
            topic,
            "--group",
            group,
            "--from-beginning",
            "--format",
            "%p %o %v\\n",
            "--bootstrap",
            bootstrap,
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("RUNNEL_") {
                cmd.env_remove(name);
            }
        }
        let mut child = cmd.spawn().expect("spawn runnel consume");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.splitn(3, ' ');
                let parsed = (|| {
                    let p = parts.next()?.parse().ok()?;
                    let o = parts.next()?.parse().ok()?;
                    Some((p, o, parts.next()?.to_string()))
                })();
                match parsed {
                    Some(l) => sink.lock().unwrap().push(l),
                    None => panic!("unexpected consume output line {line:?}"),
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                let mut s = err_sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Member {
            child: Some(child),
            lines,
            reader: Some(reader),
            stderr,
        }
    }

    /// Lines printed so far.
    pub(crate) fn lines(&self) -> Vec<Line> {
        self.lines.lock().unwrap().clone()
    }

    /// What it wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            let pid = i32::try_from(child.id()).expect("pid fits");
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// SIGKILL, then wait for it; returns what it printed.
    pub(crate) fn kill9(&mut self) -> Vec<Line> {
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(10));
        self.lines()
    }

    /// SIGTERM (commit and leave), then wait for a clean exit; returns what
    /// it printed.
    pub(crate) async fn terminate(&mut self) -> Vec<Line> {
        self.signal(libc::SIGTERM);
        let status = self.wait(Duration::from_secs(45));
        assert!(
            status == Some(true),
            "consumer did not exit cleanly after SIGTERM: {status:?}\n{}",
            self.stderr()
        );
        self.lines()
    }

    /// Waits for the process to exit (success or not); None if it is still
    /// running after `limit` (then it is killed).
    fn wait(&mut self, limit: Duration) -> Option<bool> {
        let mut child = self.child.take()?;
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s.success()),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `runnel group describe GROUP --output json` through `bootstrap`, or
/// None if it fails.
pub(crate) fn describe(bootstrap: &str, group: &str) -> Option<Value> {
    let out = run_cli(
        &[
            "group",
            "describe",
            group,
            "--output",
            "json",
            "--bootstrap",
            bootstrap,
        ],
        "",
    );
    if !out.status.success() {
        return None;
    }
    serde_json::from_str(out.stdout.trim()).ok()
}

/// Partitions assigned to each member in a description.
pub(crate) fn assignments(d: &Value) -> BTreeMap<String, BTreeSet<u32>> {
    d["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .map(|m| {
                    let parts = m["assignments"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x["partition"].as_u64())
                                .map(|p| p as u32)
                                .collect()
                        })
                        .unwrap_or_default();
                    (m["member_id"].as_str().unwrap_or("").to_string(), parts)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Committed offset per partition in a description.
pub(crate) fn committed(d: &Value) -> BTreeMap<u32, u64> {
    d["offsets"]
        .as_array()
        .map(|o| {
            o.iter()
                .filter_map(|x| Some((x["partition"].as_u64()? as u32, x["committed"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the group has `members` members that together own each of
/// `partitions` partitions exactly once, and is Stable.
pub(crate) async fn wait_balanced(
    bootstrap: &str,
    group: &str,
    members: usize,
    partitions: u32,
    limit: Duration,
) -> Value {
    eventually(
        limit,
        &format!("group {group} stable with {members} members"),
        || {
            let d = describe(bootstrap, group);
            async move {
                let d = d?;
                let a = assignments(&d);
                let mut all: Vec<u32> = a.values().flatten().copied().collect();
                all.sort_unstable();
                let want: Vec<u32> = (0..partitions).collect();
                (d["state"] == "Stable" && a.len() == members && all == want).then_some(d)
            }
        },
    )
    .await
}

/// Waits until the group's committed offsets reach `hwm` in every partition.
pub(crate) async fn wait_committed(
    bootstrap: &str,
    group: &str,
    hwm: &BTreeMap<u32, u64>,
    limit: Duration,
) -> Value {
    eventually(limit, &format!("group {group} to commit {hwm:?}"), || {
        let d = describe(bootstrap, group);
        async move {
            let d = d?;
            let c = committed(&d);
            hwm.iter()
                .all(|(p, h)| c.get(p).copied().unwrap_or(0) >= *h)
                .then_some(d)
        }
    })
    .await
}
