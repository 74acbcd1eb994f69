//! Commands: the entries of the controller's Raft log, and their encoding.
//!
//! # Encoding
//!
//! One command per entry, as JSON in a versioned envelope:
//!
//! ```text
//! {"version":1,"body":{"type":"create_topic","name":"orders","settings":{...}}}
//! ```
//!
//! - `version` is [`COMMAND_VERSION`] at the time of writing. A node reads
//!   every version up to its own and refuses a newer one with
//!   [`DecodeError::UnsupportedVersion`] (it must stop applying and be
//!   upgraded: skipping an entry would make its state diverge).
//! - `body` is a [`Command`], tagged by `type` in snake case. Unknown
//!   fields are refused, never ignored.
//! - Evolving: adding a command or an optional field (with a serde
//!   default) raises the version, so older nodes refuse rather than
//!   misread it, while newer nodes still read every old entry. Changing
//!   what an existing command means, including the validation ranges of
//!   [`TopicSettings::validate`] and the placement of
//!   [`crate::ClusterState::apply`], also raises the version, and the
//!   decoder then keeps the old meaning for old entries.

use serde::{Deserialize, Serialize};

use crate::BrokerId;
use crate::error::DecodeError;
use crate::format;
use crate::settings::{TopicConfigChange, TopicSettings};

/// Format version of the commands this code writes (and the newest it
/// reads).
pub const COMMAND_VERSION: u32 = 1;

/// A change to the cluster metadata, proposed to the controller's Raft
/// group and applied by [`crate::ClusterState::apply`] once committed.
///
/// Commands carry resolved values only (for instance
/// [`TopicSettings`], never "the default"), so applying one depends on
/// nothing but the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Adds a broker, or updates the address and rack of a registered one
    /// (a restart on a new address). A new broker starts unfenced; a
    /// registered one keeps its fenced flag.
    RegisterBroker {
        /// Broker id, at least 1 (0 means "no leader" in the API).
        id: BrokerId,
        /// Address clients and peers use (host:port), 1-1024 bytes.
        address: String,
        /// Failure domain, for spreading replicas; 1-255 bytes when set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rack: Option<String>,
    },
    /// Marks a broker fenced: no new replicas are placed on it and it is
    /// not a target of preferred leader moves. Its replicas stay.
    FenceBroker {
        /// The broker.
        id: BrokerId,
    },
    /// Clears a broker's fenced flag.
    UnfenceBroker {
        /// The broker.
        id: BrokerId,
    },
    /// Removes a broker that holds no replica (decommissioning; move its
    /// replicas away first).
    UnregisterBroker {
        /// The broker.
        id: BrokerId,
    },
    /// Creates a topic; its replicas are placed on the unfenced brokers.
    CreateTopic {
        /// Topic name (see [`crate::validate_topic_name`]).
        name: String,
        /// Resolved settings ([`crate::TopicOverrides::resolve`]).
        settings: TopicSettings,
        /// Creation time, ms since the Unix epoch, from the proposer's
        /// clock ([`crate::PartitionAssignment::created_ms`]).
        created_ms: i64,
    },
    /// Deletes a topic and all its partitions.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Changes a topic's retention, record, segment or cleanup settings.
    AlterTopicConfig {
        /// Topic name.
        name: String,
        /// The fields to change.
        change: TopicConfigChange,
    },
    /// Grows a topic to `partitions` partitions (never shrinks); the new
    /// ones are placed like a create.
    CreatePartitions {
        /// Topic name.
        name: String,
        /// The new total number of partitions, above the current one.
        partitions: u32,
        /// Creation time of the new partitions, ms since the Unix epoch,
        /// from the proposer's clock.
        created_ms: i64,
    },
}

impl Command {
    /// The entry bytes of this command (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        format::encode("command", COMMAND_VERSION, self)
    }

    /// Reads entry bytes written by [`Command::encode`] of this or an older
    /// version. Never panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        format::decode("command", COMMAND_VERSION, bytes).map(|(_version, c)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::CleanupPolicy;
    use proptest::prelude::*;

    fn samples() -> Vec<Command> {
        vec![
            Command::RegisterBroker {
                id: 1,
                address: "10.0.0.1:9092".into(),
                rack: None,
            },
            Command::RegisterBroker {
                id: 2,
                address: "n2:9092".into(),
                rack: Some("eu-1a".into()),
            },
            Command::FenceBroker { id: 3 },
            Command::UnfenceBroker { id: 3 },
            Command::CreateTopic {
                name: "orders".into(),
                settings: TopicSettings::default(),
                created_ms: 1_764_000_000_000,
            },
            Command::DeleteTopic {
                name: "orders".into(),
            },
            Command::AlterTopicConfig {
                name: "orders".into(),
                change: TopicConfigChange {
                    retention_bytes: Some(1 << 30),
                    cleanup_policy: Some(CleanupPolicy::Delete),
                    ..TopicConfigChange::default()
                },
            },
            Command::CreatePartitions {
                name: "orders".into(),
                partitions: 12,
                created_ms: 1_764_000_000_001,
            },
            Command::UnregisterBroker { id: 3 },
        ]
    }

    #[test]
    fn round_trip() {
        for (i, c) in samples().into_iter().enumerate() {
            assert_eq!(Command::decode(&c.encode()).unwrap(), c, "case {i}");
        }
    }

    /// The exact bytes of version 1: entries in existing logs look like
    /// this forever, so this test must keep passing unchanged.
    #[test]
    fn version_1_bytes_are_stable() {
        let cases: [(&str, Command); 3] = [
            (
                r#"{"version":1,"body":{"type":"register_broker","id":2,"address":"n2:9092","rack":"eu-1a"}}"#,
                samples()[1].clone(),
            ),
            (
                r#"{"version":1,"body":{"type":"create_topic","name":"orders","settings":{"partitions":1,"replication_factor":1,"retention_ms":604800000,"retention_bytes":-1,"max_record_bytes":8388608,"segment_bytes":1073741824,"cleanup_policy":"delete"},"created_ms":1764000000000}}"#,
                samples()[4].clone(),
            ),
            (
                r#"{"version":1,"body":{"type":"alter_topic_config","name":"orders","change":{"retention_bytes":1073741824,"cleanup_policy":"delete"}}}"#,
                samples()[6].clone(),
            ),
        ];
        for (i, (json, command)) in cases.into_iter().enumerate() {
            assert_eq!(
                String::from_utf8(command.encode()).unwrap(),
                json,
                "case {i}"
            );
            assert_eq!(
                Command::decode(json.as_bytes()).unwrap(),
                command,
                "case {i}"
            );
        }
    }

    #[test]
    fn refuses_bad_input() {
        let cases: [(&str, &str); 9] = [
            ("", "corrupt command"),
            ("{}", "missing field `version`"),
            (r#"{"version":0,"body":{}}"#, "version 0"),
            (
                r#"{"version":2,"body":{"type":"teleport"}}"#,
                "format version 2",
            ),
            (r#"{"version":1}"#, "missing field `body`"),
            (
                r#"{"version":1,"body":{"type":"teleport"}}"#,
                "unknown variant",
            ),
            (
                r#"{"version":1,"body":{"type":"delete_topic","name":"a","force":true}}"#,
                "unknown field",
            ),
            (
                r#"{"version":1,"body":{"type":"delete_topic","name":"a"},"extra":1}"#,
                "unknown field",
            ),
            (
                r#"{"version":1,"body":{"type":"fence_broker","id":-1}}"#,
                "invalid value",
            ),
        ];
        for (i, (json, want)) in cases.into_iter().enumerate() {
            let e = Command::decode(json.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(want), "case {i}: {e}");
        }
    }

    #[test]
    fn truncated_and_flipped_bytes_never_panic() {
        for c in samples() {
            let bytes = c.encode();
            for len in 0..bytes.len() {
                assert!(
                    Command::decode(&bytes[..len]).is_err(),
                    "prefix {len} of {c:?}"
                );
            }
            for i in 0..bytes.len() {
                for bit in 0..8 {
                    let mut b = bytes.clone();
                    b[i] ^= 1 << bit;
                    // Some flips still decode (a digit of an id changed):
                    // the point is that none panics.
                    let _ = Command::decode(&b);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Command::decode(&bytes);
        }

        #[test]
        fn encoded_commands_round_trip(
            id in any::<u32>(),
            name in "[a-zA-Z0-9._-]{1,40}",
            address in "\\PC{0,40}",
            partitions in any::<u32>(),
            retention in any::<Option<i64>>(),
        ) {
            let commands = [
                Command::RegisterBroker { id, address: address.clone(), rack: Some(address) },
                Command::CreatePartitions { name: name.clone(), partitions, created_ms: retention.unwrap_or(0) },
                Command::AlterTopicConfig {
                    name,
                    change: TopicConfigChange { retention_ms: retention, ..TopicConfigChange::default() },
                },
            ];
            for c in commands {
                prop_assert_eq!(Command::decode(&c.encode()).unwrap(), c);
            }
        }
    }
}
