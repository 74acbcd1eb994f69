//! `runnel broker`: runs a node.
//!
//! Settings come from flags, then `RUNNEL_*` environment variables, then a
//! TOML file (`--config`), then defaults, in that order of precedence; they
//! are resolved into a [`BrokerSettings`] before anything starts.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::ValueEnum;
use runnel_broker::{Broker, BrokerConfig, FlushPolicy};
use serde::Deserialize;
use tokio::net::TcpListener;

/// `runnel broker --help`: how the node behaves, then the examples.
const LONG_HELP: &str = "\
With no flags, starts a durable single node: data in ./data, gRPC on
127.0.0.1:9740, Prometheus metrics on http://127.0.0.1:9741/metrics, every
produce acknowledged only once on disk (--flush always). When it is ready
(listening, every partition recovered) it prints one line to stdout:

  runnel broker <id> listening on <addr> (gRPC), metrics on http://<addr>/metrics, data in <dir>

Logs go to stderr (filter with RUST_LOG, e.g. RUST_LOG=runnel_broker=debug).
SIGTERM or SIGINT shuts down gracefully: in-flight requests finish, every
log is flushed and closed, exit status 0.

Each setting is taken from its flag, else its RUNNEL_* environment variable,
else the --config TOML file (same names in snake_case: id, listen,
advertise, data_dir, flush, metrics_listen, log_format, peers,
page_cache_bytes), else its default.

Page cache: the node keeps at most --page-cache-bytes of the partition data
it wrote in the OS page cache. Ten times a second the oldest data beyond that is
written back and dropped (partitions holding little keep theirs; the largest
are cut first), so a node that writes for hours does not fill memory with
cached log pages. Consumers near the end of a log read from memory; reads of
dropped data go to the disk. 0 leaves it all to the kernel.

Examples:
  # a durable node with the defaults
  runnel broker

  # fastest: acknowledge once in the page cache, fsync only when segments roll
  runnel broker --flush never --data-dir /var/lib/runnel

  # any free ports (the ready line shows which), no metrics
  runnel broker --listen 127.0.0.1:0 --metrics-listen off

  # reachable from other hosts
  runnel broker --listen 0.0.0.0:9740 --advertise broker1.example.com:9740

  # node 2 of a 3-node cluster (run the same on every node, with its --id)
  runnel broker --id 2 --listen 0.0.0.0:9740 --data-dir /var/lib/runnel \\
    --peers 1=host1:9740,2=host2:9740,3=host3:9740

  # from a file; flags and RUNNEL_* variables still win
  runnel broker --config /etc/runnel/broker.toml

A config file:
  id = 1
  listen = \"0.0.0.0:9740\"
  advertise = \"broker1.example.com:9740\"
  data_dir = \"/var/lib/runnel\"
  flush = \"always\"          # or \"never\", or a number of milliseconds: 100
  metrics_listen = \"0.0.0.0:9741\"   # or \"off\"
  log_format = \"json\"
  page_cache_bytes = \"8GiB\"       # or a number of bytes; 0: no limit
  peers = \"1=host1:9740,2=host2:9740,3=host3:9740\"";

/// `runnel broker -h`: a pointer to the long help.
const SHORT_HELP: &str = "\
Examples:
  runnel broker
  runnel broker --listen 127.0.0.1:0 --metrics-listen off --flush never
  runnel broker --config /etc/runnel/broker.toml

See --help for defaults, the ready line, precedence and the config file.";

/// Default `--listen`.
const DEFAULT_LISTEN: &str = "127.0.0.1:9740";
/// Default `--metrics-listen`.
const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9741";
/// Default `--data-dir`.
const DEFAULT_DATA_DIR: &str = "./data";

/// How logs are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Arguments of `runnel broker`.
#[derive(Debug, Default, clap::Args)]
#[command(after_help = SHORT_HELP, after_long_help = LONG_HELP)]
pub(crate) struct BrokerArgs {
    /// Node id, at least 1 [default: 1]. The data directory remembers it.
    #[arg(long, value_name = "N", env = "RUNNEL_ID")]
    id: Option<u32>,

    /// Address for gRPC clients [default: 127.0.0.1:9740]; port 0 picks a free one.
    #[arg(long, value_name = "HOST:PORT", env = "RUNNEL_LISTEN")]
    listen: Option<String>,

    /// Address clients are told to use [default: the address actually bound;
    /// with --peers, this node's entry, the only value a cluster accepts].
    #[arg(long, value_name = "HOST:PORT", env = "RUNNEL_ADVERTISE")]
    advertise: Option<String>,

    /// Directory for the node's data [default: ./data].
    #[arg(long, value_name = "DIR", env = "RUNNEL_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// When appends reach the disk on a single node: always (acknowledge
    /// after fsync), never (page cache), or every <ms> milliseconds
    /// [default: always]. With --peers every partition is a Raft group,
    /// which always fsyncs before it acknowledges or votes, whatever this says.
    #[arg(long, value_name = "always|never|MS", env = "RUNNEL_FLUSH", value_parser = parse_flush)]
    flush: Option<FlushPolicy>,

    /// Address of the Prometheus endpoint (GET /metrics), or "off" [default: 127.0.0.1:9741].
    #[arg(long, value_name = "HOST:PORT|off", env = "RUNNEL_METRICS_LISTEN")]
    metrics_listen: Option<String>,

    /// Every node of the cluster, this one included: ID=HOST:PORT,... (the
    /// address each node serves clients and peers on, and the address
    /// clients are given for it). Without it, a single node.
    #[arg(long, value_name = "ID=HOST:PORT,...", env = "RUNNEL_PEERS", value_parser = parse_peers_arg)]
    peers: Option<BTreeMap<u32, String>>,

    /// Most bytes of written partition data left in the page cache; the
    /// oldest beyond it is written back and dropped every 100 ms. A number
    /// of bytes, or with a KiB|MiB|GiB|TiB suffix; 0: no limit [default: a
    /// quarter of the machine's memory, at most 2GiB].
    #[arg(long, value_name = "BYTES", env = "RUNNEL_PAGE_CACHE_BYTES", value_parser = parse_byte_size)]
    page_cache_bytes: Option<u64>,

    /// TOML file with any of the settings above (snake_case names).
    #[arg(long, value_name = "FILE", env = "RUNNEL_CONFIG")]
    config: Option<PathBuf>,

    /// Log format on stderr [default: text].
    #[arg(long, value_enum, value_name = "FORMAT", env = "RUNNEL_LOG_FORMAT")]
    log_format: Option<LogFormat>,
}

fn parse_flush(s: &str) -> Result<FlushPolicy, String> {
    s.parse()
}

/// A byte count: digits, optionally followed by KiB, MiB, GiB or TiB (also
/// K, M, G, T; powers of 1024).
fn parse_byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}: give bytes, or a number with KiB, MiB, GiB or TiB"
            ));
        }
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count: give e.g. 4294967296 or 4GiB"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_peers_arg(s: &str) -> Result<BTreeMap<u32, String>, String> {
    runnel_broker::parse_peers(s)
}

/// `flush` in the TOML file: a word or a number of milliseconds.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum FileFlush {
    Ms(u64),
    Word(String),
}

/// A byte count in the TOML file: a number, or a string with a unit.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum FileBytes {
    Number(u64),
    Text(String),
}

/// The `--config` file. Unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u32>,
    listen: Option<String>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    flush: Option<FileFlush>,
    metrics_listen: Option<String>,
    log_format: Option<LogFormat>,
    peers: Option<String>,
    page_cache_bytes: Option<FileBytes>,
}

impl FileConfig {
    fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read the config file {} (--config)", path.display())
        })?;
        Self::parse(&text)
            .with_context(|| format!("invalid config file {} (--config)", path.display()))
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        // toml's message names the key and line, including unknown keys.
        Ok(toml::from_str(text)?)
    }
}

/// Every setting of the node, resolved and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BrokerSettings {
    id: u32,
    listen: String,
    advertise: Option<String>,
    data_dir: PathBuf,
    flush: FlushPolicy,
    /// `None`: metrics off.
    metrics_listen: Option<String>,
    log_format: LogFormat,
    /// Empty: a single node.
    peers: BTreeMap<u32, String>,
    /// `None`: the default (a quarter of memory, at most 2 GiB).
    page_cache_bytes: Option<u64>,
}

impl BrokerSettings {
    /// Flags and environment (already merged by clap) over the file over defaults.
    fn resolve(args: BrokerArgs, file: FileConfig) -> anyhow::Result<Self> {
        let flush = match (args.flush, file.flush) {
            (Some(f), _) => f,
            (None, Some(FileFlush::Ms(ms))) => ms
                .to_string()
                .parse()
                .map_err(|e: String| anyhow::anyhow!("flush in the config file: {e}"))?,
            (None, Some(FileFlush::Word(w))) => w
                .parse()
                .map_err(|e: String| anyhow::anyhow!("flush in the config file: {e}"))?,
            (None, None) => FlushPolicy::Always,
        };
        let metrics_listen = args
            .metrics_listen
            .or(file.metrics_listen)
            .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.to_string());
        let id = args.id.or(file.id).unwrap_or(1);
        if id == 0 {
            bail!("--id must be at least 1");
        }
        let peers = match (args.peers, file.peers) {
            (Some(p), _) => p,
            (None, Some(text)) => runnel_broker::parse_peers(&text)
                .map_err(|e| anyhow::anyhow!("peers in the config file: {e}"))?,
            (None, None) => BTreeMap::new(),
        };
        if !peers.is_empty() && !peers.contains_key(&id) {
            bail!(
                "node {id} is not in --peers ({}): add {id}=HOST:PORT or start with --id set to this node's entry",
                runnel_broker::format_peers(&peers)
            );
        }
        let advertise = args
            .advertise
            .or(file.advertise)
            .or_else(|| peers.get(&id).cloned());
        if let Some(a) = &advertise {
            runnel_broker::check_advertise(id, a, &peers).map_err(anyhow::Error::msg)?;
        }
        let page_cache_bytes = match (args.page_cache_bytes, file.page_cache_bytes) {
            (Some(b), _) => Some(b),
            (None, Some(FileBytes::Number(b))) => Some(b),
            (None, Some(FileBytes::Text(t))) => Some(
                parse_byte_size(&t)
                    .map_err(|e| anyhow::anyhow!("page_cache_bytes in the config file: {e}"))?,
            ),
            (None, None) => None,
        };
        Ok(BrokerSettings {
            id,
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
            advertise,
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            flush,
            metrics_listen: (!metrics_listen.eq_ignore_ascii_case("off")).then_some(metrics_listen),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            peers,
            page_cache_bytes,
        })
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal, and never when NO_COLOR is set: log
    // files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn bind(addr: &str, flag: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}: choose another address with {flag} HOST:PORT (port 0 picks a free one)")
    })?;
    let local = listener
        .local_addr()
        .with_context(|| format!("cannot read the address bound for {flag}"))?;
    Ok((listener, local))
}

/// Creates the data directory and checks that it is writable, naming the
/// flag in the error.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let hint = "choose another directory with --data-dir DIR";
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}: {hint}", dir.display()))?;
    let probe = dir.join(".write-test~");
    std::fs::write(&probe, b"").with_context(|| {
        format!(
            "the data directory {} is not writable: {hint}",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()))
}

/// Resolves SIGTERM or SIGINT.
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the broker");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The line printed on stdout once the node is ready.
fn ready_line(id: u32, grpc: SocketAddr, metrics: Option<SocketAddr>, data_dir: &Path) -> String {
    let metrics = match metrics {
        Some(addr) => format!("metrics on http://{addr}/metrics"),
        None => "metrics off".to_string(),
    };
    format!(
        "runnel broker {id} listening on {grpc} (gRPC), {metrics}, data in {}",
        data_dir.display()
    )
}

/// Runs `runnel broker`.
pub(crate) async fn run(args: BrokerArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let settings = BrokerSettings::resolve(args, file)?;
    init_logging(settings.log_format);

    let data_dir = prepare_data_dir(&settings.data_dir)?;
    let (listener, grpc_addr) = bind(&settings.listen, "--listen").await?;
    let metrics = match &settings.metrics_listen {
        Some(addr) => Some(bind(addr, "--metrics-listen").await?),
        None => None,
    };
    let mut config = BrokerConfig::new(
        &data_dir,
        settings
            .advertise
            .clone()
            .unwrap_or_else(|| grpc_addr.to_string()),
    );
    config.node_id = settings.id;
    config.flush = settings.flush;
    config.peers = settings.peers.clone();
    if let Some(bytes) = settings.page_cache_bytes {
        config.page_cache_bytes = bytes;
    }
    tracing::info!(id = settings.id, flush = ?settings.flush, data_dir = %data_dir.display(), "opening the data directory");
    let broker = Broker::open(config).await.with_context(|| {
        format!(
            "cannot open the data directory {} (--data-dir)",
            data_dir.display()
        )
    })?;
    tracing::info!(topics = broker.topic_count(), "every partition recovered");

    let line = ready_line(
        settings.id,
        grpc_addr,
        metrics.as_ref().map(|m| m.1),
        &data_dir,
    );
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").context("cannot write to stdout")?;
        out.flush().context("cannot write to stdout")?;
    }
    broker
        .serve(listener, metrics.map(|m| m.0), termination())
        .await
        .context("the broker failed")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = BrokerSettings::resolve(BrokerArgs::default(), FileConfig::default()).unwrap();
        assert_eq!(
            s,
            BrokerSettings {
                id: 1,
                listen: "127.0.0.1:9740".into(),
                advertise: None,
                data_dir: PathBuf::from("./data"),
                flush: FlushPolicy::Always,
                metrics_listen: Some("127.0.0.1:9741".into()),
                log_format: LogFormat::Text,
                peers: BTreeMap::new(),
                page_cache_bytes: None,
            }
        );
    }

    #[test]
    fn page_cache_bytes_takes_units_from_flag_and_file() {
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert_eq!(parse_byte_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_byte_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_byte_size("2k"), Ok(2048));
        assert_eq!(parse_byte_size("0"), Ok(0));
        for bad in ["", "GiB", "4 GB", "-1", "1.5GiB", "99999999999TiB"] {
            assert!(parse_byte_size(bad).is_err(), "{bad:?}");
        }
        let file = FileConfig::parse("page_cache_bytes = \"1GiB\"").unwrap();
        let s = BrokerSettings::resolve(BrokerArgs::default(), file).unwrap();
        assert_eq!(s.page_cache_bytes, Some(1 << 30));
        let file = FileConfig::parse("page_cache_bytes = 0").unwrap();
        let s = BrokerSettings::resolve(BrokerArgs::default(), file).unwrap();
        assert_eq!(s.page_cache_bytes, Some(0));
        let args = BrokerArgs {
            page_cache_bytes: Some(5),
            ..Default::default()
        };
        let file = FileConfig::parse("page_cache_bytes = 7").unwrap();
        assert_eq!(
            BrokerSettings::resolve(args, file)
                .unwrap()
                .page_cache_bytes,
            Some(5)
        );
        let file = FileConfig::parse("page_cache_bytes = \"lots\"").unwrap();
        let e = BrokerSettings::resolve(BrokerArgs::default(), file).unwrap_err();
        assert!(format!("{e:#}").contains("page_cache_bytes"), "{e:#}");
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let file = FileConfig::parse(
            "id = 3\nlisten = \"0.0.0.0:1\"\ndata_dir = \"/d\"\nflush = 250\nmetrics_listen = \"off\"\nlog_format = \"json\"\n",
        )
        .unwrap();
        let args = BrokerArgs {
            id: Some(7),
            flush: Some(FlushPolicy::Never),
            ..Default::default()
        };
        let s = BrokerSettings::resolve(args, file).unwrap();
        assert_eq!(s.id, 7);
        assert_eq!(s.flush, FlushPolicy::Never);
        assert_eq!(s.listen, "0.0.0.0:1");
        assert_eq!(s.data_dir, PathBuf::from("/d"));
        assert_eq!(s.metrics_listen, None);
        assert_eq!(s.log_format, LogFormat::Json);

        let file = FileConfig::parse("flush = \"always\"").unwrap();
        let s = BrokerSettings::resolve(BrokerArgs::default(), file).unwrap();
        assert_eq!(s.flush, FlushPolicy::Always);
        let file = FileConfig::parse("flush = 100").unwrap();
        let s = BrokerSettings::resolve(BrokerArgs::default(), file).unwrap();
        assert_eq!(s.flush, FlushPolicy::IntervalMs(100));
    }

    #[test]
    fn bad_files_are_refused() {
        let cases = [
            "colour = 1",
            "id = \"one\"",
            "flush = \"sometimes\"",
            "flush = 0",
            "id = 0",
        ];
        for (i, text) in cases.iter().enumerate() {
            let res = FileConfig::parse(text)
                .and_then(|f| BrokerSettings::resolve(BrokerArgs::default(), f));
            assert!(res.is_err(), "case {i}: {text}");
        }
        let e = FileConfig::parse("colour = 1").unwrap_err();
        assert!(format!("{e:#}").contains("colour"), "{e:#}");
    }

    #[test]
    fn peers_come_from_flag_or_file_and_name_the_advertised_address() {
        let file = FileConfig::parse("id = 2\npeers = \"1=h1:9740,2=h2:9740,3=h3:9740\"").unwrap();
        let s = BrokerSettings::resolve(BrokerArgs::default(), file).unwrap();
        assert_eq!(s.peers.len(), 3);
        assert_eq!(s.advertise.as_deref(), Some("h2:9740"));
        // A cluster node advertises its --peers entry and nothing else.
        let args = BrokerArgs {
            id: Some(3),
            advertise: Some("lb:1".into()),
            peers: Some(runnel_broker::parse_peers("1=a:1,3=c:1").unwrap()),
            ..Default::default()
        };
        let e = BrokerSettings::resolve(args, FileConfig::default()).unwrap_err();
        assert!(
            format!("{e:#}").contains("--advertise lb:1 differs from node 3's --peers entry c:1"),
            "{e:#}"
        );
        let args = BrokerArgs {
            id: Some(3),
            advertise: Some("c:1".into()),
            peers: Some(runnel_broker::parse_peers("1=a:1,3=c:1").unwrap()),
            ..Default::default()
        };
        let s = BrokerSettings::resolve(args, FileConfig::default()).unwrap();
        assert_eq!(s.advertise.as_deref(), Some("c:1"));
        let file = FileConfig::parse("peers = \"2=a:1,3=b:1\"").unwrap();
        let e = BrokerSettings::resolve(BrokerArgs::default(), file).unwrap_err();
        assert!(
            format!("{e:#}").contains("node 1 is not in --peers"),
            "{e:#}"
        );
        let file = FileConfig::parse("peers = \"1=a\"").unwrap();
        let e = BrokerSettings::resolve(BrokerArgs::default(), file).unwrap_err();
        assert!(
            format!("{e:#}").contains("peers in the config file"),
            "{e:#}"
        );
    }

    #[test]
    fn ready_line_is_exact() {
        let grpc: SocketAddr = "127.0.0.1:9740".parse().unwrap();
        let metrics: SocketAddr = "127.0.0.1:9741".parse().unwrap();
        assert_eq!(
            ready_line(1, grpc, Some(metrics), Path::new("/d")),
            "runnel broker 1 listening on 127.0.0.1:9740 (gRPC), metrics on http://127.0.0.1:9741/metrics, data in /d"
        );
        assert_eq!(
            ready_line(2, grpc, None, Path::new("/d")),
            "runnel broker 2 listening on 127.0.0.1:9740 (gRPC), metrics off, data in /d"
        );
    }
}
