//! Topic settings and names: the canonical types and rules.
//!
//! [`TopicSettings`] is a topic's effective configuration with every field
//! resolved. Requests carry optional fields ([`TopicOverrides`] for create,
//! [`TopicConfigChange`] for alter); they are resolved against the
//! defaults *before* a command is proposed, so a log entry never depends
//! on the defaults of the version that replays it.

use serde::{Deserialize, Serialize};

use crate::error::ClusterError;

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

/// What a topic does with old data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupPolicy {
    /// Delete whole segments older than `retention_ms` or beyond
    /// `retention_bytes`.
    #[default]
    Delete,
    /// Keep the latest record per key. A valid setting the state machine
    /// stores; [`TopicOverrides::resolve`] and
    /// [`TopicConfigChange::check_supported`] refuse it until storage
    /// implements compaction.
    Compact,
}

/// A topic's effective settings: every field resolved.
///
/// Serialized field by field with these names; this is the format of the
/// broker's `topic.json` too (a file without `cleanup_policy` reads as
/// [`CleanupPolicy::Delete`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// Number of partitions, 1-10000.
    pub partitions: u32,
    /// Replicas per partition, at least 1 and at most the number of live
    /// brokers when the topic is created.
    pub replication_factor: u32,
    /// Retention by age in ms; -1 keeps data forever.
    pub retention_ms: i64,
    /// Retention by size in bytes per partition; -1 for no limit.
    pub retention_bytes: i64,
    /// Largest batch accepted, 1 KiB-64 MiB, at most `segment_bytes`.
    pub max_record_bytes: u32,
    /// Segment roll size, 1 MiB-1 GiB.
    pub segment_bytes: u64,
    /// What happens to old data.
    #[serde(default)]
    pub cleanup_policy: CleanupPolicy,
}

impl Default for TopicSettings {
    /// The defaults the proto documents: 1 partition, 1 replica, 7 days,
    /// no size limit, 8 MiB records, 1 GiB segments, delete.
    fn default() -> Self {
        TopicSettings {
            partitions: 1,
            replication_factor: 1,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_record_bytes: 8 << 20,
            segment_bytes: 1 << 30,
            cleanup_policy: CleanupPolicy::Delete,
        }
    }
}

impl TopicSettings {
    /// Checks every field's range (not the replication factor against the
    /// brokers: that depends on the cluster, see
    /// [`crate::ClusterState::apply`]).
    ///
    /// These ranges are part of the command format: `apply` checks them, so
    /// changing one changes what replaying an old log produces. Change
    /// them only together with [`crate::COMMAND_VERSION`].
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |m: String| Err(ClusterError::InvalidArgument(m));
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return bad(format!(
                "partitions must be 1-{MAX_PARTITIONS}, got {}",
                self.partitions
            ));
        }
        if self.replication_factor == 0 {
            return bad("replication_factor must be at least 1, got 0".into());
        }
        self.validate_config()
    }

    /// The checks of everything but partitions and replication factor
    /// (the fields an alter may change).
    fn validate_config(&self) -> Result<(), ClusterError> {
        let bad = |m: String| Err(ClusterError::InvalidArgument(m));
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
}

/// A create request's settings: absent fields take the defaults.
///
/// The broker converts the proto `TopicConfig` into this (mapping the
/// proto's cleanup policy integer, where an unknown value is its own
/// INVALID_ARGUMENT) and proposes the resolved [`TopicSettings`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicOverrides {
    /// Number of partitions.
    pub partitions: Option<u32>,
    /// Replicas per partition.
    pub replication_factor: Option<u32>,
    /// Retention by age in ms.
    pub retention_ms: Option<i64>,
    /// Retention by size in bytes.
    pub retention_bytes: Option<i64>,
    /// Largest batch accepted. Unset, it is the default (8 MiB) or
    /// `segment_bytes` when that is smaller, so a valid `segment_bytes`
    /// alone is never refused.
    pub max_record_bytes: Option<u32>,
    /// Segment roll size.
    pub segment_bytes: Option<u64>,
    /// What happens to old data.
    pub cleanup_policy: Option<CleanupPolicy>,
}

impl TopicOverrides {
    /// Fills the absent fields with the defaults and validates the result,
    /// refusing [`CleanupPolicy::Compact`] as [`ClusterError::Unsupported`].
    pub fn resolve(&self) -> Result<TopicSettings, ClusterError> {
        let d = TopicSettings::default();
        let segment_bytes = self.segment_bytes.unwrap_or(d.segment_bytes);
        let s = TopicSettings {
            partitions: self.partitions.unwrap_or(d.partitions),
            replication_factor: self.replication_factor.unwrap_or(d.replication_factor),
            retention_ms: self.retention_ms.unwrap_or(d.retention_ms),
            retention_bytes: self.retention_bytes.unwrap_or(d.retention_bytes),
            max_record_bytes: self.max_record_bytes.unwrap_or_else(|| {
                u32::try_from(segment_bytes)
                    .map_or(d.max_record_bytes, |s| s.min(d.max_record_bytes))
            }),
            segment_bytes,
            cleanup_policy: self.cleanup_policy.unwrap_or(d.cleanup_policy),
        };
        check_cleanup_supported(s.cleanup_policy)?;
        s.validate()?;
        Ok(s)
    }
}

/// An alter request: the fields to change (absent ones keep their value).
/// Partitions and replication factor are not here: adding partitions is
/// [`crate::Command::CreatePartitions`]; changing the replication factor
/// is a reassignment (not implemented yet).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfigChange {
    /// New retention by age in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<i64>,
    /// New retention by size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<i64>,
    /// New largest batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_record_bytes: Option<u32>,
    /// New segment roll size (applies to segments rolled from now on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<u64>,
    /// New cleanup policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup_policy: Option<CleanupPolicy>,
}

impl TopicConfigChange {
    /// `settings` with this change applied, validated.
    pub fn applied_to(&self, settings: &TopicSettings) -> Result<TopicSettings, ClusterError> {
        let s = TopicSettings {
            retention_ms: self.retention_ms.unwrap_or(settings.retention_ms),
            retention_bytes: self.retention_bytes.unwrap_or(settings.retention_bytes),
            max_record_bytes: self.max_record_bytes.unwrap_or(settings.max_record_bytes),
            segment_bytes: self.segment_bytes.unwrap_or(settings.segment_bytes),
            cleanup_policy: self.cleanup_policy.unwrap_or(settings.cleanup_policy),
            ..settings.clone()
        };
        s.validate_config()?;
        Ok(s)
    }

    /// Refuses what this version cannot do yet (compaction); call it
    /// before proposing.
    pub fn check_supported(&self) -> Result<(), ClusterError> {
        self.cleanup_policy.map_or(Ok(()), check_cleanup_supported)
    }
}

fn check_cleanup_supported(policy: CleanupPolicy) -> Result<(), ClusterError> {
    match policy {
        CleanupPolicy::Delete => Ok(()),
        CleanupPolicy::Compact => Err(ClusterError::Unsupported(
            "cleanup_policy COMPACT is not supported yet: use DELETE (the default)".into(),
        )),
    }
}

/// Checks a topic name: 1-249 characters of `[a-zA-Z0-9._-]`, not `.` or
/// `..` (the rule of the broker and of Kafka; `~` never appears, so the
/// broker may use it in directory names).
pub fn validate_topic_name(name: &str) -> Result<(), ClusterError> {
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
        Some(why) => Err(ClusterError::InvalidName {
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
        let s = TopicOverrides::default().resolve().unwrap();
        assert_eq!(s, TopicSettings::default());
        assert_eq!(s.partitions, 1);
        assert_eq!(s.replication_factor, 1);
        assert_eq!(s.retention_ms, 604_800_000);
        assert_eq!(s.retention_bytes, -1);
        assert_eq!(s.max_record_bytes, 8 << 20);
        assert_eq!(s.segment_bytes, 1 << 30);
        assert_eq!(s.cleanup_policy, CleanupPolicy::Delete);
    }

    #[test]
    fn overrides_validation() {
        type Case = (fn(&mut TopicOverrides), Option<&'static str>);
        let cases: Vec<Case> = vec![
            (|c| c.partitions = Some(0), Some("partitions")),
            (|c| c.partitions = Some(10_000), None),
            (|c| c.partitions = Some(10_001), Some("partitions")),
            (
                |c| c.replication_factor = Some(0),
                Some("replication_factor"),
            ),
            // Against the brokers only when applied.
            (|c| c.replication_factor = Some(7), None),
            (|c| c.retention_ms = Some(-1), None),
            (|c| c.retention_ms = Some(-2), Some("retention_ms")),
            (|c| c.retention_ms = Some(0), Some("retention_ms")),
            (|c| c.retention_bytes = Some(1 << 20), None),
            (|c| c.retention_bytes = Some(0), Some("retention_bytes")),
            (
                |c| c.max_record_bytes = Some(1023),
                Some("max_record_bytes"),
            ),
            (|c| c.max_record_bytes = Some(64 << 20), None),
            (
                |c| c.max_record_bytes = Some((64 << 20) + 1),
                Some("max_record_bytes"),
            ),
            (
                |c| c.segment_bytes = Some((1 << 20) - 1),
                Some("segment_bytes"),
            ),
            (
                |c| c.segment_bytes = Some((1 << 30) + 1),
                Some("segment_bytes"),
            ),
            (
                |c| {
                    c.segment_bytes = Some(1 << 20);
                    c.max_record_bytes = Some(2 << 20);
                },
                Some("must not exceed segment_bytes"),
            ),
            // A small segment alone lowers the default record limit.
            (|c| c.segment_bytes = Some(1 << 20), None),
            (|c| c.cleanup_policy = Some(CleanupPolicy::Delete), None),
            (
                |c| c.cleanup_policy = Some(CleanupPolicy::Compact),
                Some("not supported"),
            ),
        ];
        for (i, (f, want)) in cases.into_iter().enumerate() {
            let mut o = TopicOverrides::default();
            f(&mut o);
            match (o.resolve(), want) {
                (Ok(_), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "case {i}: {e}"),
                (got, want) => panic!("case {i}: got {got:?}, want error {want:?}"),
            }
        }
        let small = TopicOverrides {
            segment_bytes: Some(1 << 20),
            ..TopicOverrides::default()
        };
        assert_eq!(small.resolve().unwrap().max_record_bytes, 1 << 20);
    }

    #[test]
    fn config_change() {
        let base = TopicSettings::default();
        let change = TopicConfigChange {
            retention_ms: Some(-1),
            segment_bytes: Some(16 << 20),
            ..TopicConfigChange::default()
        };
        let s = change.applied_to(&base).unwrap();
        assert_eq!(s.retention_ms, -1);
        assert_eq!(s.segment_bytes, 16 << 20);
        assert_eq!(s.max_record_bytes, base.max_record_bytes);
        let shrink = TopicConfigChange {
            segment_bytes: Some(1 << 20),
            ..TopicConfigChange::default()
        };
        // 8 MiB records no longer fit: refused, not silently lowered.
        assert!(shrink.applied_to(&base).is_err());
        let compact = TopicConfigChange {
            cleanup_policy: Some(CleanupPolicy::Compact),
            ..TopicConfigChange::default()
        };
        assert!(compact.check_supported().is_err());
        assert_eq!(
            compact.applied_to(&base).unwrap().cleanup_policy,
            CleanupPolicy::Compact
        );
    }

    #[test]
    fn settings_json_reads_a_broker_topic_file() {
        // topic.json as the single-node broker writes it (no cleanup_policy).
        let json = r#"{"partitions":3,"replication_factor":1,"retention_ms":604800000,
            "retention_bytes":-1,"max_record_bytes":8388608,"segment_bytes":1073741824}"#;
        let s: TopicSettings = serde_json::from_str(json).unwrap();
        assert_eq!(s.partitions, 3);
        assert_eq!(s.cleanup_policy, CleanupPolicy::Delete);
        let back: TopicSettings = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(serde_json::from_str::<TopicSettings>(r#"{"partitions":3}"#).is_err());
    }
}
