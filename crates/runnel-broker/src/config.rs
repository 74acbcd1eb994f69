//! Node configuration and topic settings (validated, with the defaults the
//! proto documents).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use runnel_proto::v1::{CleanupPolicy, TopicConfig};
use runnel_storage::{FlushPolicy, LogConfig};
use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, Result};

/// Settings of one node. Every default is safe (durable, local only).
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Node id (`--id`), at least 1. The data directory remembers it.
    pub node_id: u32,
    /// Address clients use to reach this node (`--advertise`), reported by
    /// DescribeCluster and in NOT_LEADER errors.
    pub advertise: String,
    /// Directory holding the node file and every topic.
    pub data_dir: PathBuf,
    /// Durability of appends for every partition. Default
    /// [`FlushPolicy::Always`]: a produce is acknowledged once on disk.
    pub flush: FlushPolicy,
    /// How often partitions get their time-based work (interval flush).
    /// Default 10 ms, or the flush interval if that is shorter.
    pub tick_interval: Duration,
    /// How often retention runs over every partition. Default 5 s.
    pub retention_interval: Duration,
    /// How long shutdown waits for open connections to finish their
    /// requests before closing them anyway (a frozen client must not keep
    /// the node up). Default 10 s.
    pub shutdown_grace: Duration,
    /// Every node of the cluster, this one included, by id (`--peers`):
    /// the address each serves clients and peers on. Empty: a single node.
    pub peers: BTreeMap<u32, String>,
    /// Most bytes of written partition data the node leaves in the page
    /// cache (`--page-cache-bytes`); older data is dropped once written
    /// back (see the `page_cache` module). 0: no limit, the kernel decides.
    /// Default [`crate::default_page_cache_bytes`].
    pub page_cache_bytes: u64,
}

impl BrokerConfig {
    /// A config with defaults for `data_dir`, node 1, advertised as `advertise`.
    pub fn new(data_dir: impl Into<PathBuf>, advertise: impl Into<String>) -> Self {
        BrokerConfig {
            node_id: 1,
            advertise: advertise.into(),
            data_dir: data_dir.into(),
            flush: FlushPolicy::Always,
            tick_interval: Duration::from_millis(10),
            retention_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            peers: BTreeMap::new(),
            page_cache_bytes: crate::default_page_cache_bytes(),
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.node_id == 0 {
            return Err(BrokerError::InvalidArgument(
                "node id must be at least 1 (0 means \"no leader\" in the API)".into(),
            ));
        }
        if self.tick_interval.is_zero() || self.retention_interval.is_zero() {
            return Err(BrokerError::InvalidArgument(
                "tick_interval and retention_interval must be above zero".into(),
            ));
        }
        if !self.peers.is_empty() && !self.peers.contains_key(&self.node_id) {
            return Err(BrokerError::InvalidArgument(format!(
                "node {} is not in --peers ({}): add {}=HOST:PORT, or start with the id its entry has",
                self.node_id,
                format_peers(&self.peers),
                self.node_id
            )));
        }
        check_advertise(self.node_id, &self.advertise, &self.peers)
            .map_err(BrokerError::InvalidArgument)
    }
}

/// Refuses an advertised address other than the node's own `--peers`
/// entry in a cluster (more than one peer). A cluster has one address per
/// node, its `--peers` entry: the other nodes dial it, and every node gives
/// it to clients (DescribeCluster, NOT_LEADER redirects), so another
/// `--advertise` would reach no client. A single node advertises anything.
pub fn check_advertise(
    node_id: u32,
    advertise: &str,
    peers: &BTreeMap<u32, String>,
) -> std::result::Result<(), String> {
    match peers.get(&node_id) {
        Some(entry) if peers.len() > 1 && entry != advertise => Err(format!(
            "--advertise {advertise} differs from node {node_id}'s --peers entry {entry}: in a \
             cluster clients and the other nodes reach a node at its --peers entry; leave \
             --advertise out or set it to {entry} (and put the address clients can reach in --peers)"
        )),
        _ => Ok(()),
    }
}

/// Most nodes in `--peers`.
pub const MAX_PEERS: usize = 9;

/// Parses `--peers`: `ID=HOST:PORT` entries separated by commas, e.g.
/// `1=10.0.0.1:9740,2=10.0.0.2:9740,3=10.0.0.3:9740`. Ids are at least 1
/// and distinct, at most [`MAX_PEERS`] entries. Host names are resolved
/// when connecting (and again on every reconnect), not here: in Compose or
/// Kubernetes a peer's name exists only once it runs.
pub fn parse_peers(text: &str) -> std::result::Result<BTreeMap<u32, String>, String> {
    let mut peers = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry
            .split_once('=')
            .ok_or_else(|| format!("\"{entry}\" is not ID=HOST:PORT"))?;
        let id: u32 = id
            .trim()
            .parse()
            .map_err(|_| format!("\"{entry}\": the id must be a number"))?;
        if id == 0 {
            return Err(format!("\"{entry}\": node ids start at 1"));
        }
        let addr = addr.trim();
        let port_ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok {
            return Err(format!("\"{entry}\": the address must be HOST:PORT"));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(format!("node {id} appears twice"));
        }
    }
    if peers.is_empty() {
        return Err("no peers given: expected ID=HOST:PORT[,ID=HOST:PORT...]".into());
    }
    if peers.len() > MAX_PEERS {
        return Err(format!("{} peers: at most {MAX_PEERS}", peers.len()));
    }
    Ok(peers)
}

/// `--peers` syntax of `peers`.
pub fn format_peers(peers: &BTreeMap<u32, String>) -> String {
    peers
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Smallest `max_record_bytes` of a topic.
pub const MIN_RECORD_BYTES: u32 = 1 << 10;
/// Largest `max_record_bytes` of a topic.
pub const MAX_RECORD_BYTES: u32 = 64 << 20;
/// Smallest `segment_bytes` of a topic.
pub const MIN_SEGMENT_BYTES: u64 = 1 << 20;
/// Largest `segment_bytes` of a topic.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// Most partitions of one topic.
pub const MAX_PARTITIONS: u32 = 10_000;
/// Longest topic name.
pub const MAX_NAME_LEN: usize = 249;

/// A topic's effective settings: every field resolved. Stored as
/// `topic.json` in the topic's directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// Number of partitions, 1-10000.
    pub partitions: u32,
    /// Replicas per partition (1 on a single node).
    pub replication_factor: u32,
    /// Retention by age in ms; -1 keeps data forever.
    pub retention_ms: i64,
    /// Retention by size in bytes per partition; -1 for no limit.
    pub retention_bytes: i64,
    /// Largest batch accepted, 1 KiB-64 MiB.
    pub max_record_bytes: u32,
    /// Segment roll size, 1 MiB-1 GiB.
    pub segment_bytes: u64,
}

impl Default for TopicSettings {
    fn default() -> Self {
        TopicSettings {
            partitions: 1,
            replication_factor: 1,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_record_bytes: 8 << 20,
            segment_bytes: 1 << 30,
        }
    }
}

impl TopicSettings {
    /// Resolves a request's config against the defaults and validates it
    /// for a cluster of `nodes` nodes.
    pub fn resolve(config: Option<&TopicConfig>, nodes: u32) -> Result<TopicSettings> {
        let d = TopicSettings::default();
        let Some(c) = config else {
            return Ok(d);
        };
        let s = TopicSettings {
            partitions: c.partitions.unwrap_or(d.partitions),
            replication_factor: c.replication_factor.unwrap_or(d.replication_factor),
            retention_ms: c.retention_ms.unwrap_or(d.retention_ms),
            retention_bytes: c.retention_bytes.unwrap_or(d.retention_bytes),
            // Unset, the record limit shrinks to fit a smaller segment:
            // a documented-valid segment_bytes alone is never refused.
            max_record_bytes: c.max_record_bytes.unwrap_or_else(|| {
                let segment = c.segment_bytes.unwrap_or(d.segment_bytes);
                u32::try_from(segment).map_or(d.max_record_bytes, |s| s.min(d.max_record_bytes))
            }),
            segment_bytes: c.segment_bytes.unwrap_or(d.segment_bytes),
        };
        match CleanupPolicy::try_from(c.cleanup_policy) {
            Ok(CleanupPolicy::Unspecified | CleanupPolicy::Delete) => {}
            Ok(CleanupPolicy::Compact) => {
                return Err(BrokerError::Unsupported(
                    "cleanup_policy COMPACT is not supported yet: use DELETE (the default)".into(),
                ));
            }
            Err(_) => {
                return Err(BrokerError::InvalidArgument(format!(
                    "cleanup_policy {} is not a known value: use DELETE",
                    c.cleanup_policy
                )));
            }
        }
        s.validate(nodes)?;
        Ok(s)
    }

    /// These settings grown to `partitions` partitions, or INVALID_ARGUMENT
    /// when that does not grow the topic or exceeds [`MAX_PARTITIONS`].
    pub fn grown_to(&self, topic: &str, partitions: u32) -> Result<TopicSettings> {
        if partitions <= self.partitions || partitions > MAX_PARTITIONS {
            return Err(BrokerError::InvalidArgument(format!(
                "partitions can only grow, up to {MAX_PARTITIONS}: topic \"{topic}\" has {}, asked for {partitions}",
                self.partitions
            )));
        }
        Ok(TopicSettings {
            partitions,
            ..self.clone()
        })
    }

    /// Checks every field's range.
    pub fn validate(&self, nodes: u32) -> Result<()> {
        let bad = |m: String| Err(BrokerError::InvalidArgument(m));
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return bad(format!(
                "partitions must be 1-{MAX_PARTITIONS}, got {}",
                self.partitions
            ));
        }
        if self.replication_factor == 0 || self.replication_factor > nodes {
            return bad(format!(
                "replication_factor must be 1-{nodes} (the number of nodes), got {}",
                self.replication_factor
            ));
        }
        if self.retention_ms < -1 || self.retention_ms == 0 {
            return bad(format!(
                "retention_ms must be -1 (forever) or above 0, got {}",
                self.retention_ms
            ));
        }
        if self.retention_bytes < -1 || self.retention_bytes == 0 {
            return bad(format!(
                "retention_bytes must be -1 (no limit) or above 0, got {}",
                self.retention_bytes
            ));
        }
        if !(MIN_RECORD_BYTES..=MAX_RECORD_BYTES).contains(&self.max_record_bytes) {
            return bad(format!(
                "max_record_bytes must be {MIN_RECORD_BYTES}-{MAX_RECORD_BYTES} (1 KiB-64 MiB), got {}",
                self.max_record_bytes
            ));
        }
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return bad(format!(
                "segment_bytes must be {MIN_SEGMENT_BYTES}-{MAX_SEGMENT_BYTES} (1 MiB-1 GiB), got {}",
                self.segment_bytes
            ));
        }
        if u64::from(self.max_record_bytes) > self.segment_bytes {
            return bad(format!(
                "max_record_bytes {} must not exceed segment_bytes {}",
                self.max_record_bytes, self.segment_bytes
            ));
        }
        Ok(())
    }

    /// The effective config as the API reports it (every field set).
    pub fn to_proto(&self) -> TopicConfig {
        TopicConfig {
            partitions: Some(self.partitions),
            replication_factor: Some(self.replication_factor),
            retention_ms: Some(self.retention_ms),
            retention_bytes: Some(self.retention_bytes),
            max_record_bytes: Some(self.max_record_bytes),
            cleanup_policy: CleanupPolicy::Delete as i32,
            segment_bytes: Some(self.segment_bytes),
        }
    }

    /// The storage config of each partition log.
    pub fn log_config(&self, flush: FlushPolicy) -> LogConfig {
        LogConfig {
            // validated: at most 1 GiB
            segment_bytes: u32::try_from(self.segment_bytes).unwrap_or(1 << 30),
            max_batch_bytes: self.max_record_bytes,
            flush,
            retention_ms: (self.retention_ms >= 0).then_some(self.retention_ms),
            retention_bytes: u64::try_from(self.retention_bytes).ok(),
            ..LogConfig::default()
        }
    }
}

/// Checks a topic name: 1-249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is longer than 249 characters")
    } else if name == "." || name == ".." {
        Some("\".\" and \"..\" are reserved")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("it holds a character outside [a-zA-Z0-9._-]")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(BrokerError::InvalidName {
            name: name.chars().take(300).collect(),
            why,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        let long = "a".repeat(249);
        let too_long = "a".repeat(250);
        let cases: [(&str, bool); 14] = [
            ("orders", true),
            ("a", true),
            ("A.b_c-9", true),
            ("...", true),
            (".a", true),
            (&long, true),
            ("", false),
            (".", false),
            ("..", false),
            (&too_long, false),
            ("a b", false),
            ("a/b", false),
            ("é", false),
            ("a~deleted", false),
        ];
        for (i, (name, ok)) in cases.iter().enumerate() {
            assert_eq!(validate_topic_name(name).is_ok(), *ok, "case {i}: {name:?}");
        }
    }

    #[test]
    fn defaults_follow_the_proto() {
        let s = TopicSettings::resolve(None, 1).unwrap();
        assert_eq!(s, TopicSettings::default());
        assert_eq!(s.partitions, 1);
        assert_eq!(s.retention_ms, 604_800_000);
        assert_eq!(s.retention_bytes, -1);
        assert_eq!(s.max_record_bytes, 8 << 20);
        assert_eq!(s.segment_bytes, 1 << 30);
        let empty = TopicSettings::resolve(Some(&TopicConfig::default()), 1).unwrap();
        assert_eq!(empty, s);
        let log = s.log_config(FlushPolicy::Never);
        assert_eq!(log.retention_bytes, None);
        assert_eq!(log.retention_ms, Some(604_800_000));
        assert!(log.validate().is_ok());
    }

    #[test]
    fn topic_config_validation() {
        let cfg = |f: fn(&mut TopicConfig)| {
            let mut c = TopicConfig::default();
            f(&mut c);
            TopicSettings::resolve(Some(&c), 1).map_err(|e| e.reason())
        };
        use runnel_proto::v1::ErrorReason::*;
        type Case = (fn(&mut TopicConfig), Option<runnel_proto::v1::ErrorReason>);
        let cases: Vec<Case> = vec![
            (|c| c.partitions = Some(0), Some(InvalidArgument)),
            (|c| c.partitions = Some(10_000), None),
            (|c| c.partitions = Some(10_001), Some(InvalidArgument)),
            (|c| c.replication_factor = Some(2), Some(InvalidArgument)),
            (|c| c.replication_factor = Some(0), Some(InvalidArgument)),
            (|c| c.retention_ms = Some(-1), None),
            (|c| c.retention_ms = Some(-2), Some(InvalidArgument)),
            (|c| c.retention_bytes = Some(1 << 20), None),
            (|c| c.retention_bytes = Some(0), Some(InvalidArgument)),
            (|c| c.max_record_bytes = Some(1023), Some(InvalidArgument)),
            (|c| c.max_record_bytes = Some(64 << 20), None),
            (
                |c| c.max_record_bytes = Some((64 << 20) + 1),
                Some(InvalidArgument),
            ),
            (
                |c| c.segment_bytes = Some((1 << 20) - 1),
                Some(InvalidArgument),
            ),
            (
                |c| c.segment_bytes = Some((1 << 30) + 1),
                Some(InvalidArgument),
            ),
            (
                |c| {
                    c.segment_bytes = Some(1 << 20);
                    c.max_record_bytes = Some(2 << 20);
                },
                Some(InvalidArgument),
            ),
            // A small segment alone lowers the default record limit.
            (|c| c.segment_bytes = Some(1 << 20), None),
            (|c| c.cleanup_policy = 2, Some(Unsupported)),
            (|c| c.cleanup_policy = 1, None),
            (|c| c.cleanup_policy = 9, Some(InvalidArgument)),
        ];
        for (i, (f, want)) in cases.into_iter().enumerate() {
            assert_eq!(cfg(f).err(), want, "case {i}");
        }
    }
}

#[cfg(test)]
mod peer_tests {
    use super::*;

    #[test]
    fn peers_parse_and_print_back() {
        let p = parse_peers("1=a:9740, 2=10.0.0.2:9740,3=[::1]:9740").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&3], "[::1]:9740");
        assert_eq!(format_peers(&p), "1=a:9740,2=10.0.0.2:9740,3=[::1]:9740");
    }

    #[test]
    fn bad_peers_are_refused_with_the_entry_named() {
        for (text, says) in [
            ("", "no peers"),
            ("1", "ID=HOST:PORT"),
            ("x=a:1", "number"),
            ("0=a:1", "start at 1"),
            ("1=a", "HOST:PORT"),
            ("1=a:0", "HOST:PORT"),
            ("1=:80", "HOST:PORT"),
            ("1=a:1,1=b:2", "twice"),
            (
                "1=a:1,2=a:2,3=a:3,4=a:4,5=a:5,6=a:6,7=a:7,8=a:8,9=a:9,10=a:10",
                "at most",
            ),
        ] {
            let e = parse_peers(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_node_must_be_among_its_peers() {
        let mut c = BrokerConfig::new("/d", "a:1");
        c.peers = parse_peers("2=a:1,3=b:1").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("node 1 is not in --peers"), "{e}");
        c.node_id = 2;
        c.validate().unwrap();
    }

    #[test]
    fn a_cluster_node_advertises_its_peers_entry() {
        // Case 1: a single node advertises anything.
        let mut c = BrokerConfig::new("/d", "lb:9");
        c.validate().unwrap();
        c.peers = parse_peers("1=a:1").unwrap();
        c.validate().unwrap();
        // Case 2: in a cluster, only its own --peers entry.
        c.peers = parse_peers("1=a:1,2=b:1").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("--advertise lb:9 differs") && e.contains("a:1"),
            "{e}"
        );
        c.advertise = "a:1".into();
        c.validate().unwrap();
    }
}
