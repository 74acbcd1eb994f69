//! The CLI contract of issue 4 that scripts depend on: help, produce exit
//! status, consume stopping rules and output, topic admin commands.

use std::net::TcpListener;
use std::time::Duration;

use serde_json::Value;

use crate::support::cli::run_cli_timeout;
use crate::support::grpc::Clients;
use crate::support::{Broker, BrokerOptions, run_cli, with_deadline};

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn every_command_help_exits_0_and_names_its_flags() {
    let cases: [(u32, &[&str], &[&str]); 11] = [
        (
            1,
            &["--help"],
            &[
                "broker",
                "dev-cluster",
                "topic",
                "produce",
                "consume",
                "bench",
                "log",
            ],
        ),
        (
            11,
            &["dev-cluster", "--help"],
            &["--nodes", "--data-dir", "--base-port", "--flush", "Ctrl-C"],
        ),
        (
            2,
            &["broker", "--help"],
            &[
                "--id",
                "--listen",
                "--advertise",
                "--data-dir",
                "--flush",
                "--metrics-listen",
                "--config",
                "--log-format",
                "--peers",
                "--page-cache-bytes",
            ],
        ),
        (
            3,
            &["topic", "--help"],
            &["create", "alter", "list", "describe", "delete"],
        ),
        (
            4,
            &["topic", "create", "--help"],
            &[
                "--partitions",
                "--replication-factor",
                "--retention-ms",
                "--retention-bytes",
                "--bootstrap",
                "--output",
            ],
        ),
        (
            5,
            &["topic", "list", "--help"],
            &["--bootstrap", "--output"],
        ),
        (
            6,
            &["topic", "describe", "--help"],
            &["--bootstrap", "--output"],
        ),
        (
            7,
            &["produce", "--help"],
            &[
                "--partition",
                "--key-separator",
                "--acks",
                "--header",
                "--bootstrap",
            ],
        ),
        (
            8,
            &["consume", "--help"],
            &[
                "--partition",
                "--from-beginning",
                "--offset",
                "--from-time",
                "--max-messages",
                "--timeout-ms",
                "--format",
                "--bootstrap",
            ],
        ),
        (
            9,
            &["bench", "--help"],
            &["produce", "consume", "e2e", "group", "--consumers"],
        ),
        (
            10,
            &["bench", "produce", "--help"],
            &[
                "--topic",
                "--partitions",
                "--messages",
                "--duration",
                "--record-size",
                "--batch-bytes",
                "--producers",
                "--acks",
                "--keys",
                "--warmup",
                "--output",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (case, args, flags) in cases {
        let out = run_cli(args, "");
        if !out.status.success() {
            failures.push(format!(
                "case {case}: runnel {args:?} exited {}",
                out.status
            ));
            continue;
        }
        let missing: Vec<&&str> = flags.iter().filter(|f| !out.stdout.contains(**f)).collect();
        if !missing.is_empty() {
            failures.push(format!(
                "case {case}: runnel {args:?} does not mention {missing:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn consume_stops_after_idle_timeout_or_max_messages_and_prints_values_one_per_line() {
    with_deadline(LIMIT, async {
        let broker = Broker::start(BrokerOptions::flush("never"));
        broker.cli_ok(&["topic", "create", "lines"], "");
        broker.cli_ok(&["topic", "create", "empty"], "");
        broker.cli_ok(&["produce", "lines"], "v0\nv1\nv2\nv3\nv4\n");

        // Idle timeout: everything, then exit 0 after 500 ms without data.
        let out = broker.cli(
            &[
                "consume",
                "lines",
                "--from-beginning",
                "--timeout-ms",
                "500",
            ],
            "",
        );
        assert!(out.status.success(), "{out}");
        assert_eq!(out.lines(), vec!["v0", "v1", "v2", "v3", "v4"], "{out}");
        assert!(
            out.elapsed >= Duration::from_millis(500),
            "left before the idle timeout: {out}"
        );
        let out = broker.cli(
            &[
                "consume",
                "empty",
                "--from-beginning",
                "--timeout-ms",
                "500",
            ],
            "",
        );
        assert!(out.status.success(), "{out}");
        assert_eq!(out.stdout, "", "{out}");
        assert!(
            out.elapsed < Duration::from_secs(15),
            "idle timeout not honoured: {out}"
        );

        // --max-messages stops by itself (no timeout given).
        let out = broker.cli(
            &[
                "consume",
                "lines",
                "--from-beginning",
                "--max-messages",
                "3",
            ],
            "",
        );
        assert!(out.status.success(), "{out}");
        assert_eq!(out.lines(), vec!["v0", "v1", "v2"], "{out}");

        // A consumer waiting for more gets records produced after it started.
        let addr = broker.grpc_addr().to_string();
        let waiting = std::thread::spawn(move || {
            run_cli_timeout(
                &[
                    "consume",
                    "lines",
                    "--from-beginning",
                    "--max-messages",
                    "7",
                    "--bootstrap",
                    &addr,
                ],
                "",
                &[],
                Duration::from_secs(60),
            )
        });
        broker.cli_ok(&["produce", "lines"], "v5\nv6\n");
        let out = waiting
            .join()
            .unwrap_or_else(|_| panic!("consumer thread panicked"));
        assert!(out.status.success(), "{out}");
        assert_eq!(
            out.lines(),
            vec!["v0", "v1", "v2", "v3", "v4", "v5", "v6"],
            "{out}"
        );

        // --bootstrap wins over RUNNEL_BOOTSTRAP.
        let dead = dead_address();
        let real = broker.grpc_addr().to_string();
        let out = run_cli_timeout(
            &[
                "consume",
                "lines",
                "--from-beginning",
                "--max-messages",
                "1",
                "--bootstrap",
                &real,
            ],
            "",
            &[("RUNNEL_BOOTSTRAP", dead.as_str())],
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{out}");
        assert_eq!(out.lines(), vec!["v0"]);
    })
    .await;
}

/// An address nobody listens on.
fn dead_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
    drop(l);
    addr.to_string()
}

#[tokio::test]
async fn produce_exits_0_only_after_every_record_is_acknowledged() {
    with_deadline(LIMIT, async {
        let broker = Broker::start(BrokerOptions::flush("always"));
        broker.cli_ok(&["topic", "create", "acked", "--partitions", "2"], "");
        let mut c = Clients::connect(broker.grpc_addr()).await;

        let input: String = (0..500).map(|i| format!("line-{i}\n")).collect();
        broker.cli_ok(&["produce", "acked", "--partition", "1"], &input);
        // Exit 0 means acknowledged: visible at once, all in partition 1.
        assert_eq!(c.high_watermark("acked", 1).await, 500);
        assert_eq!(c.high_watermark("acked", 0).await, 0);
        let got = c.fetch_decoded("acked", 1, 0).await;
        let values: Vec<String> = got
            .iter()
            .map(|r| String::from_utf8_lossy(&r.value).into_owned())
            .collect();
        let want: Vec<String> = (0..500).map(|i| format!("line-{i}")).collect();
        assert_eq!(values, want);

        broker.cli_ok(
            &["produce", "acked", "--partition", "0", "--acks", "1"],
            "x\ny\n",
        );
        assert_eq!(c.high_watermark("acked", 0).await, 2, "--acks 1");

        // No broker: non-zero exit with a message, not a hang or a silent 0.
        let dead = dead_address();
        let out = run_cli_timeout(
            &["produce", "acked", "--bootstrap", &dead],
            "lost\n",
            &[],
            Duration::from_secs(90),
        );
        assert!(
            !out.status.success(),
            "produce without a broker exited 0: {out}"
        );
        assert!(
            out.stderr.contains(&dead),
            "the message names the address it could not reach: {out}"
        );
    })
    .await;
}

#[tokio::test]
async fn topic_commands_create_list_describe_delete_in_text_and_json() {
    with_deadline(LIMIT, async {
        let broker = Broker::start(BrokerOptions::flush("never"));
        let out = broker.cli_ok(
            &[
                "topic",
                "create",
                "events",
                "--partitions",
                "4",
                "--replication-factor",
                "1",
                "--retention-ms",
                "60000",
                "--retention-bytes",
                "1048576",
            ],
            "",
        );
        assert!(out.contains("events"), "create says what it created: {out}");
        broker.cli_ok(&["topic", "create", "audit"], "");

        let mut c = Clients::connect(broker.grpc_addr()).await;
        let d = c.describe("events").await;
        let cfg = d.config.unwrap_or_default();
        assert_eq!(cfg.partitions, Some(4));
        assert_eq!(cfg.replication_factor, Some(1));
        assert_eq!(cfg.retention_ms, Some(60_000));
        assert_eq!(cfg.retention_bytes, Some(1_048_576));

        let text = broker.cli_ok(&["topic", "list"], "");
        assert!(text.contains("events") && text.contains("audit"), "{text}");
        let json = broker.cli_ok(&["topic", "list", "--output", "json"], "");
        let v: Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("topic list --output json is not JSON ({e}): {json}"));
        let names: Vec<String> = find_names(&v);
        assert_eq!(
            names,
            vec!["audit".to_string(), "events".to_string()],
            "{json}"
        );

        let text = broker.cli_ok(&["topic", "describe", "events"], "");
        assert!(text.contains("events"), "{text}");
        let json = broker.cli_ok(&["topic", "describe", "events", "--output", "json"], "");
        let v: Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("describe --output json is not JSON ({e}): {json}"));
        assert_eq!(v["partitions"].as_array().map(Vec::len), Some(4), "{json}");

        broker.cli_ok(&["topic", "delete", "audit"], "");
        let out = broker.cli(&["topic", "describe", "audit"], "");
        assert!(
            !out.status.success(),
            "a deleted topic is still described: {out}"
        );
        assert!(
            out.stderr.contains("audit"),
            "the error names the topic: {out}"
        );
        let text = broker.cli_ok(&["topic", "list"], "");
        assert!(!text.contains("audit"), "{text}");
    })
    .await;
}

/// Topic names in `topic list --output json`: an array of objects with
/// `name`, or an object holding such an array.
fn find_names(v: &Value) -> Vec<String> {
    let list = match v {
        Value::Array(a) => a.clone(),
        Value::Object(o) => o
            .values()
            .find_map(|x| x.as_array().cloned())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    list.iter()
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn broker_settings_come_from_flags_over_env_over_the_config_file() {
    with_deadline(LIMIT, async {
        let config = r#"
id = 3
listen = "127.0.0.1:0"
metrics_listen = "off"
data_dir = "{data_dir}"
flush = "always"
"#;
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let cases: [(u32, BrokerOptions, u32); 4] = [
            (
                1,
                BrokerOptions {
                    bare: true,
                    config: Some(config.into()),
                    ..Default::default()
                },
                3,
            ),
            (
                2,
                BrokerOptions {
                    bare: true,
                    config: Some(config.into()),
                    env: env(&[("RUNNEL_ID", "7")]),
                    ..Default::default()
                },
                7,
            ),
            (
                3,
                BrokerOptions {
                    bare: true,
                    config: Some(config.into()),
                    env: env(&[("RUNNEL_ID", "7")]),
                    extra_args: vec!["--id".into(), "9".into()],
                    ..Default::default()
                },
                9,
            ),
            (
                4,
                BrokerOptions {
                    bare: true,
                    env: env(&[
                        ("RUNNEL_ID", "5"),
                        ("RUNNEL_LISTEN", "127.0.0.1:0"),
                        ("RUNNEL_METRICS_LISTEN", "off"),
                        ("RUNNEL_DATA_DIR", "{data_dir}"),
                        ("RUNNEL_LOG_FORMAT", "json"),
                    ]),
                    ..Default::default()
                },
                5,
            ),
        ];
        for (case, opts, want_id) in cases {
            let json_logs = opts.env.iter().any(|(k, _)| k == "RUNNEL_LOG_FORMAT");
            let mut broker = Broker::start(opts);
            assert_eq!(
                broker.id(),
                want_id,
                "case {case}: node id in the ready line"
            );
            assert_eq!(broker.metrics_addr_opt(), None, "case {case}: metrics off");
            let mut c = Clients::connect(broker.grpc_addr()).await;
            let cluster = c
                .admin
                .describe_cluster(runnel_proto::v1::DescribeClusterRequest {})
                .await
                .unwrap_or_else(|s| panic!("case {case}: DescribeCluster: {s:?}"))
                .into_inner();
            assert_eq!(cluster.answered_by, want_id, "case {case}: {cluster:?}");
            assert_eq!(cluster.controller_id, want_id, "case {case}: {cluster:?}");
            assert_eq!(cluster.nodes.len(), 1, "case {case}: {cluster:?}");
            assert_eq!(cluster.version, env!("CARGO_PKG_VERSION"), "case {case}");
            c.create_topic("configured", 1).await;
            drop(c);
            broker.terminate_ok().await;
            assert!(
                !broker.partition_dirs().is_empty(),
                "case {case}: the topic is stored under the configured data dir"
            );
            if json_logs {
                let stderr = broker.stderr();
                let lines: Vec<&str> = stderr
                    .lines()
                    .filter(|l| !l.starts_with("--- start") && !l.trim().is_empty())
                    .collect();
                assert!(!lines.is_empty(), "case {case}: no log lines");
                for line in lines {
                    assert!(
                        serde_json::from_str::<Value>(line).is_ok(),
                        "case {case}: --log-format json wrote a non-JSON line: {line:?}"
                    );
                }
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_fails_clearly_when_the_broker_dies_mid_run() {
    with_deadline(LIMIT, async {
        let mut broker = Broker::start(BrokerOptions::flush("always"));
        broker.cli_ok(&["topic", "create", "doomed"], "");
        let c = Clients::connect(broker.grpc_addr()).await;
        let addr = broker.grpc_addr().to_string();
        // Enough lines that the run is still going when the broker dies.
        let input: String = (0..500_000).map(|i| format!("{i:08}\n")).collect();
        let producer = std::thread::spawn(move || {
            run_cli_timeout(
                &["produce", "doomed", "--bootstrap", &addr],
                &input,
                &[],
                Duration::from_secs(90),
            )
        });
        crate::support::eventually(Duration::from_secs(60), "the first records", || {
            let mut c = c.clone();
            async move { (c.high_watermark("doomed", 0).await > 0).then_some(()) }
        })
        .await;
        broker.kill9();
        let out = tokio::task::spawn_blocking(move || producer.join())
            .await
            .unwrap_or_else(|e| panic!("join: {e}"))
            .unwrap_or_else(|_| panic!("producer thread panicked"));
        assert!(
            !out.status.success(),
            "produce exited 0 although the broker died before all records were acknowledged: {out}"
        );
        assert!(
            out.stderr.contains("not acknowledged"),
            "the message says records were not acknowledged: {out}"
        );
    })
    .await;
}

#[tokio::test]
async fn cli_errors_exit_non_zero_and_name_what_is_wrong() {
    with_deadline(LIMIT, async {
        let broker = Broker::start(BrokerOptions::flush("never"));
        broker.cli_ok(&["topic", "create", "one"], "");
        // (case, args, stdin, what stderr must mention)
        let cases: [(u32, &[&str], &str, &str); 8] = [
            (1, &["consume", "nope", "--timeout-ms", "500"], "", "nope"),
            (
                2,
                &["consume", "one", "--partition", "5", "--timeout-ms", "500"],
                "",
                "5",
            ),
            (3, &["produce", "one", "--partition", "5"], "x\n", "5"),
            (
                4,
                &["consume", "one", "--format", "%q", "--timeout-ms", "500"],
                "",
                "%q",
            ),
            (5, &["topic", "describe", "nope"], "", "nope"),
            (6, &["topic", "create", "one"], "", "one"),
            (7, &["broker", "--page-cache-bytes", "4GB"], "", "4GB"),
            (
                8,
                &["bench", "e2e", "--topic", "one", "--warmup", "soon"],
                "",
                "--warmup",
            ),
        ];
        for (case, args, stdin, mention) in cases {
            let out = broker.cli(args, stdin);
            assert!(
                !out.status.success(),
                "case {case}: runnel {args:?} succeeded: {out}"
            );
            assert!(
                out.stderr.contains(mention),
                "case {case}: the error should mention {mention:?}: {out}"
            );
        }
        let mut c = Clients::connect(broker.grpc_addr()).await;
        assert_eq!(c.high_watermark("one", 0).await, 0, "nothing was produced");
    })
    .await;
}

/// Six ports a dev-cluster of 3 nodes with this base would use, all free.
fn free_dev_cluster_base() -> u16 {
    let seed = std::process::id() as u16;
    for attempt in 0..200u16 {
        let base = 20_000 + ((seed.wrapping_mul(31).wrapping_add(attempt * 97)) % 9_000);
        let ports = [0u16, 1, 10, 11, 20, 21].map(|o| base + o);
        if ports
            .iter()
            .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        {
            return base;
        }
    }
    panic!("no free port range for a dev-cluster");
}

/// Stops a `runnel dev-cluster` by SIGINT (as Ctrl-C would) when dropped,
/// so a failing test leaves no node running; SIGKILL after 30 s.
struct DevCluster(std::process::Child);

impl DevCluster {
    fn interrupt_and_wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on the child this test started.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let deadline = std::time::Instant::now() + limit;
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => return None,
            }
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none()
            && self.interrupt_and_wait(Duration::from_secs(30)).is_none()
        {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `runnel dev-cluster` starts a 3-node cluster that serves replicated
/// topics as soon as it says so, and stops every node on Ctrl-C.
#[tokio::test(flavor = "multi_thread")]
async fn dev_cluster_serves_a_replicated_topic_and_stops_on_ctrl_c() {
    use std::io::BufRead;
    let _permit = crate::support::broker::Permit::acquire(crate::support::broker::MAX_LOAD_UNITS);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let base = free_dev_cluster_base();
    let mut child = std::process::Command::new(crate::support::runnel_bin())
        .args([
            "dev-cluster",
            "--base-port",
            &base.to_string(),
            "--flush",
            "never",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn dev-cluster: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut dev = DevCluster(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut bootstrap = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("dev-cluster not ready within 90 s; printed: {seen:#?}"));
        if let Some(b) = line.strip_prefix("bootstrap: ") {
            bootstrap = Some(b.to_string());
        }
        let done = line.contains("Ctrl-C stops every node");
        seen.push(line);
        if done {
            break;
        }
    }
    let bootstrap = bootstrap.unwrap_or_else(|| panic!("no bootstrap line in {seen:#?}"));
    assert_eq!(bootstrap.split(',').count(), 3, "{bootstrap}");
    assert!(seen[0].contains("3 nodes ready"), "{seen:#?}");

    with_deadline(LIMIT, async {
        let b = ["--bootstrap", bootstrap.as_str()];
        let out = run_cli(
            &[
                &[
                    "topic",
                    "create",
                    "dev",
                    "--partitions",
                    "3",
                    "--replication-factor",
                    "3",
                ][..],
                &b,
            ]
            .concat(),
            "",
        );
        assert!(out.status.success(), "{out}");
        let out = run_cli(
            &[&["produce", "dev", "--acks", "all"][..], &b].concat(),
            "a\nb\nc\n",
        );
        assert!(out.status.success(), "{out}");
        let out = run_cli(
            &[
                &[
                    "consume",
                    "dev",
                    "--from-beginning",
                    "--max-messages",
                    "3",
                    "--timeout-ms",
                    "10000",
                ][..],
                &b,
            ]
            .concat(),
            "",
        );
        assert!(out.status.success(), "{out}");
        let mut got = out
            .lines()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>();
        got.sort();
        assert_eq!(got, ["a", "b", "c"]);
        let out = run_cli(
            &[&["topic", "describe", "dev", "--output", "json"][..], &b].concat(),
            "",
        );
        assert!(out.status.success(), "{out}");
        let v: Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
        let parts = v["partitions"].as_array().unwrap_or_else(|| panic!("{v}"));
        assert_eq!(parts.len(), 3, "{v}");
        for p in parts {
            assert_eq!(p["replicas"].as_array().map(Vec::len), Some(3), "{v}");
            assert!(
                p["leader"].as_u64().is_some_and(|l| (1..=3).contains(&l)),
                "{v}"
            );
        }
    })
    .await;

    let status = dev
        .interrupt_and_wait(Duration::from_secs(45))
        .unwrap_or_else(|| panic!("dev-cluster did not stop within 45 s of SIGINT"));
    assert!(status.success(), "dev-cluster exit status {status}");
    for addr in bootstrap.split(',') {
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "node at {addr} still answers after dev-cluster stopped"
        );
    }
}
