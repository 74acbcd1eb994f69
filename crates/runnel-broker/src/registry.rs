//! The topic registry: which topics exist, their settings and their
//! partition replicas, persisted in the data directory (layout in the crate
//! docs).
//!
//! A topic exists exactly when `topics/<name>/topic.json` does:
//!
//! - create writes the partition directories first and `topic.json` last
//!   (temp file, fsync, rename, fsync the directory), so a crash mid-create
//!   leaves a directory without `topic.json`, which startup removes;
//! - delete closes the replicas, renames the directory to
//!   `<name>~deleted-<nanos>` (the commit point: `~` never appears in a
//!   topic name) and then removes it; startup removes any leftover.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use runnel_storage::{FlushPolicy, Log};
use serde::{Deserialize, Serialize};

use crate::config::{BrokerConfig, TopicSettings, validate_topic_name};
use crate::error::{BrokerError, Result};
use crate::metrics::{Metrics, PartitionCounters};
use crate::replica::{LocalReplica, NodeRef, Replica, log_flush_policy};

/// Name of the node file in the data directory.
pub const NODE_FILE: &str = "node.json";
/// Lock file in the data directory: held (flock) by the running node, so a
/// second process on the same directory is refused.
pub const LOCK_FILE: &str = "node.lock";
/// Directory holding the topics, in the data directory.
pub const TOPICS_DIR: &str = "topics";
/// Name of a topic's settings file.
pub const TOPIC_FILE: &str = "topic.json";
/// Marks a directory being deleted (never part of a topic name).
const DELETED_MARK: &str = "~deleted";

/// The contents of `node.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    /// The id of the node owning the directory.
    node_id: u32,
}

/// A topic and its partitions.
pub(crate) struct Topic {
    pub(crate) name: String,
    pub(crate) settings: TopicSettings,
    /// Replicas, by partition id.
    pub(crate) partitions: Vec<Arc<dyn Replica>>,
    /// Traffic counters, by partition id.
    pub(crate) counters: Vec<PartitionCounters>,
    /// Round-robin position for unkeyed records without a partition.
    pub(crate) sticky: AtomicU32,
    /// The controller's id of the topic (a cluster); `None` on a single node.
    pub(crate) cluster_id: Option<u64>,
}

impl Topic {
    /// The replica of `partition`, or UNKNOWN_PARTITION.
    pub(crate) fn partition(&self, partition: u32) -> Result<&Arc<dyn Replica>> {
        self.partitions
            .get(partition as usize)
            .ok_or_else(|| BrokerError::UnknownPartition {
                topic: self.name.clone(),
                partition,
                count: self.settings.partitions,
            })
    }

    /// The partition for the unkeyed records of the next request.
    pub(crate) fn next_sticky_partition(&self) -> u32 {
        self.sticky.fetch_add(1, Ordering::Relaxed) % self.settings.partitions
    }
}

/// Every topic of this node.
pub(crate) struct TopicRegistry {
    topics_dir: PathBuf,
    node: NodeRef,
    flush: FlushPolicy,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes create and delete (held across their I/O).
    admin: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    /// Holds the data directory's lock while the registry lives.
    _lock: fs::File,
}

impl TopicRegistry {
    /// Opens the data directory (creating it), checks that it belongs to
    /// this node, resolves leftovers and recovers every partition.
    pub(crate) async fn open(config: &BrokerConfig, metrics: Arc<Metrics>) -> Result<Self> {
        let data_dir = config.data_dir.clone();
        let (node_id, flush) = (config.node_id, config.flush);
        let (lock, found) =
            tokio::task::spawn_blocking(move || open_data_dir(&data_dir, node_id, flush))
                .await
                .map_err(|e| BrokerError::Internal(format!("recovery task failed: {e}")))??;
        let registry = TopicRegistry {
            topics_dir: config.data_dir.join(TOPICS_DIR),
            node: NodeRef {
                id: config.node_id,
                address: config.advertise.clone(),
            },
            flush: config.flush,
            topics: RwLock::new(BTreeMap::new()),
            admin: tokio::sync::Mutex::new(()),
            metrics,
            _lock: lock,
        };
        for (name, settings, logs) in found {
            let topic = registry.start_topic(name.clone(), settings, logs)?;
            registry.write().insert(name, topic);
        }
        Ok(registry)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Topic>>> {
        self.topics.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Topic>>> {
        self.topics.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// This node.
    pub(crate) fn node(&self) -> &NodeRef {
        &self.node
    }

    /// The topic named `name`, or UNKNOWN_TOPIC.
    pub(crate) fn get(&self, name: &str) -> Result<Arc<Topic>> {
        self.read()
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownTopic(name.chars().take(300).collect()))
    }

    /// Adds (or replaces) a topic built elsewhere (a cluster's metadata).
    pub(crate) fn insert(&self, topic: Arc<Topic>) {
        self.write().insert(topic.name.clone(), topic);
    }

    /// Forgets a topic (a cluster's metadata deleted it).
    pub(crate) fn remove(&self, name: &str) -> Option<Arc<Topic>> {
        self.write().remove(name)
    }

    /// Every topic, sorted by name.
    pub(crate) fn list(&self) -> Vec<Arc<Topic>> {
        self.read().values().cloned().collect()
    }

    fn start_topic(
        &self,
        name: String,
        settings: TopicSettings,
        logs: Vec<Log>,
    ) -> Result<Arc<Topic>> {
        let (partitions, counters) = self.start_replicas(&name, 0, logs)?;
        Ok(Arc::new(Topic {
            name,
            settings,
            partitions,
            counters,
            sticky: AtomicU32::new(0),
            cluster_id: None,
        }))
    }

    /// Starts the replicas of partitions `first..` over `logs`, with their
    /// counters.
    fn start_replicas(&self, name: &str, first: u32, logs: Vec<Log>) -> Result<Started> {
        let durable = self.flush == FlushPolicy::Always;
        let mut partitions: Vec<Arc<dyn Replica>> = Vec::with_capacity(logs.len());
        let mut counters = Vec::with_capacity(logs.len());
        for (id, log) in (first..).zip(logs) {
            let replica = LocalReplica::start(
                self.node.clone(),
                log,
                durable,
                self.metrics.fsync_seconds.clone(),
            )
            .map_err(|e| BrokerError::storage(format!("start {name}-{id}"), e))?;
            partitions.push(Arc::new(replica));
            counters.push(self.metrics.partition(name, id));
        }
        Ok((partitions, counters))
    }

    /// Creates a topic, all or nothing.
    pub(crate) async fn create(&self, name: &str, settings: TopicSettings) -> Result<Arc<Topic>> {
        validate_topic_name(name)?;
        let _admin = self.admin.lock().await;
        if self.read().contains_key(name) {
            return Err(BrokerError::TopicAlreadyExists(name.to_string()));
        }
        let dir = self.topics_dir.join(name);
        let (s, flush) = (settings.clone(), self.flush);
        let logs = tokio::task::spawn_blocking(move || {
            let res = create_topic_files(&dir, &s, flush);
            if res.is_err() {
                let _ = fs::remove_dir_all(&dir);
            }
            res
        })
        .await
        .map_err(|e| BrokerError::Internal(format!("create task failed: {e}")))??;
        let topic = self.start_topic(name.to_string(), settings, logs)?;
        self.write().insert(name.to_string(), topic.clone());
        tracing::info!(
            topic = name,
            partitions = topic.settings.partitions,
            "created topic"
        );
        Ok(topic)
    }

    /// Grows topic `name` to `partitions` partitions. The new partitions'
    /// logs are made first and `topic.json` is rewritten last (the commit
    /// point): after a crash in between the topic keeps its old count, and
    /// the next grow replaces the leftover directories.
    pub(crate) async fn add_partitions(&self, name: &str, partitions: u32) -> Result<Arc<Topic>> {
        let _admin = self.admin.lock().await;
        let old = self.get(name)?;
        let settings = old.settings.grown_to(name, partitions)?;
        let dir = self.topics_dir.join(name);
        let (s, first, flush) = (settings.clone(), old.settings.partitions, self.flush);
        let logs = tokio::task::spawn_blocking(move || add_partition_files(&dir, &s, first, flush))
            .await
            .map_err(|e| BrokerError::Internal(format!("create partitions task failed: {e}")))??;
        let (added, added_counters) = self.start_replicas(name, first, logs)?;
        let topic = Arc::new(Topic {
            name: name.to_string(),
            settings,
            partitions: old.partitions.iter().cloned().chain(added).collect(),
            counters: old.counters.iter().cloned().chain(added_counters).collect(),
            sticky: AtomicU32::new(old.sticky.load(Ordering::Relaxed)),
            cluster_id: None,
        });
        self.write().insert(name.to_string(), topic.clone());
        tracing::info!(
            topic = name,
            from = first,
            to = partitions,
            "added partitions"
        );
        Ok(topic)
    }

    /// Deletes a topic and its data.
    pub(crate) async fn delete(&self, name: &str) -> Result<()> {
        let _admin = self.admin.lock().await;
        let topic = self
            .write()
            .remove(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.chars().take(300).collect()))?;
        for (id, replica) in topic.partitions.iter().enumerate() {
            if let Err(e) = replica.close().await {
                tracing::warn!(topic = name, partition = id, error = %e, "closing a deleted partition failed");
            }
            self.metrics.remove_partition(name, id as u32);
        }
        let dir = self.topics_dir.join(name);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let doomed = self
            .topics_dir
            .join(format!("{name}{DELETED_MARK}-{nanos}"));
        let topics_dir = self.topics_dir.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            fs::rename(&dir, &doomed).map_err(|e| BrokerError::io("rename", &dir, e))?;
            sync_dir(&topics_dir)?;
            fs::remove_dir_all(&doomed).map_err(|e| BrokerError::io("remove", &doomed, e))
        })
        .await
        .map_err(|e| BrokerError::Internal(format!("delete task failed: {e}")))??;
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Closes every replica: finishes queued appends and flushes each log.
    pub(crate) async fn close_all(&self) -> Result<()> {
        let mut first_error = None;
        for topic in self.list() {
            for (id, replica) in topic.partitions.iter().enumerate() {
                if let Err(e) = replica.close().await {
                    tracing::error!(topic = %topic.name, partition = id, error = %e, "closing partition failed");
                    first_error.get_or_insert(BrokerError::Unavailable(format!(
                        "closing {}-{id} failed: {e}",
                        topic.name
                    )));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

type Recovered = Vec<(String, TopicSettings, Vec<Log>)>;

/// Replicas with their counters, by partition id.
type Started = (Vec<Arc<dyn Replica>>, Vec<PartitionCounters>);

/// Takes the directory's lock (non-blocking) or fails naming the problem.
fn lock_data_dir(data_dir: &Path) -> Result<fs::File> {
    use std::os::fd::AsRawFd;
    let path = data_dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| BrokerError::io("open", &path, e))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Err(BrokerError::DataDir(format!(
                "data directory {} is in use by another running broker: stop it or use another --data-dir",
                data_dir.display()
            )));
        }
        return Err(BrokerError::io("lock", &path, e));
    }
    Ok(file)
}

/// Locks the directory, checks or writes `node.json`, removes leftovers,
/// opens every topic's partition logs. Blocking.
fn open_data_dir(
    data_dir: &Path,
    node_id: u32,
    flush: FlushPolicy,
) -> Result<(fs::File, Recovered)> {
    let topics_dir = data_dir.join(TOPICS_DIR);
    fs::create_dir_all(&topics_dir)
        .map_err(|e| BrokerError::io("create data directory", &topics_dir, e))?;
    let lock = lock_data_dir(data_dir)?;
    let node_path = data_dir.join(NODE_FILE);
    match fs::read(&node_path) {
        Ok(bytes) => {
            let node: NodeFile = serde_json::from_slice(&bytes).map_err(|e| {
                BrokerError::DataDir(format!(
                    "{} is not a valid node file ({e}); fix or remove it, or use another --data-dir",
                    node_path.display()
                ))
            })?;
            if node.node_id != node_id {
                return Err(BrokerError::DataDir(format!(
                    "data directory {} belongs to node {}, not {node_id}: start with --id {} or use another --data-dir",
                    data_dir.display(),
                    node.node_id,
                    node.node_id
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let json = serde_json::to_vec_pretty(&NodeFile { node_id })
                .map_err(|e| BrokerError::Internal(e.to_string()))?;
            write_atomic(&node_path, &json)?;
        }
        Err(e) => return Err(BrokerError::io("read", &node_path, e)),
    }
    let mut found = Vec::new();
    let entries = fs::read_dir(&topics_dir).map_err(|e| BrokerError::io("list", &topics_dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| BrokerError::io("list", &topics_dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.contains('~') {
            tracing::info!(dir = %path.display(), "removing leftover of an interrupted write");
            remove_path(&path)?;
            continue;
        }
        if !path.is_dir() {
            continue;
        }
        if validate_topic_name(&name).is_err() {
            tracing::warn!(dir = %path.display(), "ignoring a directory that is not a topic");
            continue;
        }
        if !path.join(TOPIC_FILE).exists() {
            tracing::info!(dir = %path.display(), "removing a topic whose creation did not finish");
            remove_path(&path)?;
            continue;
        }
        names.push((name, path));
    }
    names.sort();
    for (name, path) in names {
        let file = path.join(TOPIC_FILE);
        let bytes = fs::read(&file).map_err(|e| BrokerError::io("read", &file, e))?;
        let settings: TopicSettings = serde_json::from_slice(&bytes).map_err(|e| {
            BrokerError::DataDir(format!("{} is not a valid topic file: {e}", file.display()))
        })?;
        settings
            .validate(u32::MAX)
            .map_err(|e| BrokerError::DataDir(format!("{}: {e}", file.display())))?;
        let mut logs = Vec::with_capacity(settings.partitions as usize);
        for p in 0..settings.partitions {
            let dir = path.join(p.to_string());
            let (log, report) =
                Log::open_with_report(&dir, settings.log_config(log_flush_policy(flush)))
                    .map_err(|e| BrokerError::storage(format!("recover {name}-{p}"), e))?;
            if let Some(why) = &report.recovery.truncated {
                tracing::warn!(topic = %name, partition = p, reason = %why, "recovery cut a torn tail");
            }
            logs.push(log);
        }
        tracing::info!(topic = %name, partitions = settings.partitions, "recovered topic");
        found.push((name, settings, logs));
    }
    sync_dir(&topics_dir)?;
    Ok((lock, found))
}

/// Creates a topic's directory, partition logs and (last) `topic.json`.
fn create_topic_files(
    dir: &Path,
    settings: &TopicSettings,
    flush: FlushPolicy,
) -> Result<Vec<Log>> {
    if dir.exists() {
        remove_path(dir)?;
    }
    fs::create_dir_all(dir).map_err(|e| BrokerError::io("create directory", dir, e))?;
    let logs = add_partition_files(dir, settings, 0, flush)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(logs)
}

/// Creates the logs of partitions `first..settings.partitions` of the
/// topic in `dir` (replacing leftovers of an interrupted grow), then
/// rewrites `topic.json`. On failure the new directories are removed.
fn add_partition_files(
    dir: &Path,
    settings: &TopicSettings,
    first: u32,
    flush: FlushPolicy,
) -> Result<Vec<Log>> {
    let pdir = |p: u32| dir.join(p.to_string());
    let created = (|| {
        let mut logs = Vec::with_capacity((settings.partitions - first) as usize);
        for p in first..settings.partitions {
            let path = pdir(p);
            if path.exists() {
                remove_path(&path)?;
            }
            let log =
                Log::open(&path, settings.log_config(log_flush_policy(flush))).map_err(|e| {
                    BrokerError::storage(format!("create partition {}", path.display()), e)
                })?;
            logs.push(log);
        }
        sync_dir(dir)?;
        let json = serde_json::to_vec_pretty(settings)
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        write_atomic(&dir.join(TOPIC_FILE), &json)?;
        Ok(logs)
    })();
    if created.is_err() {
        for p in first..settings.partitions {
            let _ = fs::remove_dir_all(pdir(p));
        }
    }
    created
}

fn remove_path(path: &Path) -> Result<()> {
    let res = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    res.map_err(|e| BrokerError::io("remove", path, e))
}

/// Writes `bytes` to `path` through a temp file: write, fsync, rename,
/// fsync the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push("~tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::File::create(&tmp).map_err(|e| BrokerError::io("create", &tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| BrokerError::io("write", &tmp, e))?;
    f.sync_all()
        .map_err(|e| BrokerError::io("fsync", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| BrokerError::io("rename", &tmp, e))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| BrokerError::io("fsync directory", dir, e))
}
