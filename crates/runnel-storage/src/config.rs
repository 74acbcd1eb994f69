//! Log configuration.

use std::sync::Arc;

use crate::durable::Faults;
use crate::error::{Result, StorageError};

/// When appended data is made durable with fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Every append returns only after its bytes are on disk. Concurrent
    /// appenders share one fsync (group commit).
    Always,
    /// fsync at most every this many milliseconds, driven by [`crate::Log::tick`].
    IntervalMs(u64),
    /// Never fsync on the append path; the OS writes back when it likes
    /// (a sealed segment is still fsynced, at the next roll at the latest,
    /// and everything on close).
    Never,
}

impl std::str::FromStr for FlushPolicy {
    type Err = String;

    /// Parses `always`, `never` or a number of milliseconds.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FlushPolicy::Always),
            "never" => Ok(FlushPolicy::Never),
            ms => ms
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .map(FlushPolicy::IntervalMs)
                .ok_or_else(|| format!("invalid flush policy {s:?}: use always, never or a number of milliseconds > 0")),
        }
    }
}

/// What opening a log does when its active segment ends in a torn or
/// corrupt batch (the tolerance policy of recovery).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryPolicy {
    /// Cut the log at the first torn or corrupt batch and go on: what a
    /// crash mid-write leaves is never acknowledged data (default).
    #[default]
    TruncateTail,
    /// Refuse to open with [`crate::StorageError::Corrupt`] naming the
    /// position, changing nothing. For a replica that must not lose entries
    /// it already reported as stored (Raft's persisted commit index), or an
    /// operator who wants to inspect first.
    Refuse,
}

/// Settings of one partition log. `Default` gives safe production values.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Roll to a new segment when the active one would exceed this many
    /// bytes. At most 4 GiB (positions are 32-bit). Default 1 GiB.
    pub segment_bytes: u32,
    /// Roll when the incoming batch's max timestamp is this many ms past the
    /// active segment's first batch (Kafka's `segment.ms`). Default 7 days.
    pub segment_ms: Option<i64>,
    /// Bytes of log between two sparse index entries. Default 4 KiB.
    pub index_interval_bytes: u32,
    /// Preallocated size of each index file; a full index rolls the
    /// segment. Default 10 MiB (873,813 entries).
    pub index_max_bytes: u32,
    /// Largest batch accepted by `append`. Default 16 MiB.
    pub max_batch_bytes: u32,
    /// Durability of appends. Default [`FlushPolicy::Always`].
    pub flush: FlushPolicy,
    /// Delete sealed segments whose newest record is older than this (ms).
    /// Default 7 days; `None` keeps them forever.
    pub retention_ms: Option<i64>,
    /// Delete the oldest sealed segments while the log is larger than this.
    /// Default `None` (no size limit).
    pub retention_bytes: Option<u64>,
    /// What recovery does with a torn or corrupt tail. Default: truncate.
    pub recovery: RecoveryPolicy,
    /// Fault injection for tests; `None` in production.
    pub faults: Option<Arc<Faults>>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            index_interval_bytes: 4096,
            index_max_bytes: 10 << 20,
            max_batch_bytes: 16 << 20,
            flush: FlushPolicy::Always,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            recovery: RecoveryPolicy::TruncateTail,
            faults: None,
        }
    }
}

impl LogConfig {
    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(StorageError::Invalid(m));
        if self.segment_bytes < 4096 {
            return bad(format!(
                "segment_bytes {} is below the minimum of 4096",
                self.segment_bytes
            ));
        }
        if self.max_batch_bytes > self.segment_bytes {
            return bad(format!(
                "max_batch_bytes {} exceeds segment_bytes {}",
                self.max_batch_bytes, self.segment_bytes
            ));
        }
        if self.index_max_bytes < 12 * 4 {
            return bad(format!(
                "index_max_bytes {} is below the minimum of 48",
                self.index_max_bytes
            ));
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be > 0".into());
        }
        if self.segment_ms.is_some_and(|ms| ms <= 0) {
            return bad("segment_ms must be > 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_policy_parses() {
        let cases = [
            ("always", Ok(FlushPolicy::Always)),
            ("never", Ok(FlushPolicy::Never)),
            ("250", Ok(FlushPolicy::IntervalMs(250))),
            ("0", Err(())),
            ("sometimes", Err(())),
        ];
        for (i, (s, want)) in cases.iter().enumerate() {
            assert_eq!(s.parse::<FlushPolicy>().map_err(|_| ()), *want, "case {i}");
        }
    }

    #[test]
    fn validate_rejects_inconsistent_settings() {
        assert!(LogConfig::default().validate().is_ok());
        let cases = [
            LogConfig {
                segment_bytes: 100,
                ..Default::default()
            },
            LogConfig {
                segment_bytes: 1 << 20,
                max_batch_bytes: 2 << 20,
                ..Default::default()
            },
            LogConfig {
                index_max_bytes: 12,
                ..Default::default()
            },
            LogConfig {
                index_interval_bytes: 0,
                ..Default::default()
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(c.validate().is_err(), "case {i}");
        }
    }
}
