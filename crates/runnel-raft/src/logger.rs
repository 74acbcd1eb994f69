//! raft-rs logs through `slog`; this drain forwards its records to `tracing`.
//!
//! raft-rs 0.7 takes a `slog::Logger` and nothing else. Its default logger
//! (slog-term, slog-envlogger, slog-stdlog) would print to stderr beside our
//! `tracing` output with its own filter, so the default features are off and
//! this drain turns each record into a `tracing` event (target
//! `runnel_raft::raft`) with the record's key-value pairs in the message.
//! The level check comes first: nothing is formatted for a disabled level.

use std::fmt::{self, Write as _};

use slog::{Drain, KV, Key, Level, OwnedKVList, Record, Serializer};

/// A `slog` drain that emits `tracing` events.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TracingDrain;

fn tracing_level(level: Level) -> tracing::Level {
    match level {
        Level::Critical | Level::Error => tracing::Level::ERROR,
        Level::Warning => tracing::Level::WARN,
        Level::Info => tracing::Level::INFO,
        Level::Debug => tracing::Level::DEBUG,
        Level::Trace => tracing::Level::TRACE,
    }
}

/// Collects `key=value` pairs into one string.
struct KvText(String);

impl Serializer for KvText {
    fn emit_arguments(&mut self, key: Key, val: &fmt::Arguments<'_>) -> slog::Result {
        // Writing into a String cannot fail.
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

macro_rules! emit {
    ($level:expr, $($arg:tt)+) => {
        match $level {
            tracing::Level::ERROR => tracing::error!(target: "runnel_raft::raft", $($arg)+),
            tracing::Level::WARN => tracing::warn!(target: "runnel_raft::raft", $($arg)+),
            tracing::Level::INFO => tracing::info!(target: "runnel_raft::raft", $($arg)+),
            tracing::Level::DEBUG => tracing::debug!(target: "runnel_raft::raft", $($arg)+),
            tracing::Level::TRACE => tracing::trace!(target: "runnel_raft::raft", $($arg)+),
        }
    };
}

fn enabled(level: tracing::Level) -> bool {
    match level {
        tracing::Level::ERROR => {
            tracing::enabled!(target: "runnel_raft::raft", tracing::Level::ERROR)
        }
        tracing::Level::WARN => {
            tracing::enabled!(target: "runnel_raft::raft", tracing::Level::WARN)
        }
        tracing::Level::INFO => {
            tracing::enabled!(target: "runnel_raft::raft", tracing::Level::INFO)
        }
        tracing::Level::DEBUG => {
            tracing::enabled!(target: "runnel_raft::raft", tracing::Level::DEBUG)
        }
        tracing::Level::TRACE => {
            tracing::enabled!(target: "runnel_raft::raft", tracing::Level::TRACE)
        }
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let level = tracing_level(record.level());
        if !enabled(level) {
            return Ok(());
        }
        let mut kv = KvText(String::new());
        // Serializing into a String cannot fail; a failing value just drops
        // out of the message.
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        emit!(level, "{msg}{}", kv.0);
        Ok(())
    }
}

/// The root logger handed to raft-rs: everything goes to `tracing`.
pub(crate) fn root() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_one_to_one() {
        let cases = [
            (Level::Critical, tracing::Level::ERROR),
            (Level::Error, tracing::Level::ERROR),
            (Level::Warning, tracing::Level::WARN),
            (Level::Info, tracing::Level::INFO),
            (Level::Debug, tracing::Level::DEBUG),
            (Level::Trace, tracing::Level::TRACE),
        ];
        for (i, (from, to)) in cases.into_iter().enumerate() {
            assert_eq!(tracing_level(from), to, "case {i}");
        }
    }

    #[test]
    fn logging_without_a_subscriber_is_harmless() {
        let log = root().new(slog::o!("group" => 7u64));
        slog::info!(log, "became leader at term {}", 3; "raft_id" => 1u64);
    }
}
