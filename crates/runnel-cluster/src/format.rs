//! The versioned JSON envelope shared by commands and snapshots:
//! `{"version":N,"body":...}`.
//!
//! Decoding reads the version first (ignoring everything else), refuses a
//! version above the one this code writes, then reads the whole envelope
//! strictly (unknown fields are errors, so an entry is never half
//! understood).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::DecodeError;

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    version: u32,
    body: &'a T,
}

#[derive(Deserialize)]
struct VersionProbe {
    version: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn<T> {
    #[allow(dead_code)]
    version: u32,
    body: T,
}

/// Encodes `body` under `version`. Never fails: every type this crate
/// encodes is representable in JSON (strings, integers, sequences, maps
/// with string keys), so an error here is a bug in this crate.
pub(crate) fn encode<T: Serialize>(what: &'static str, version: u32, body: &T) -> Vec<u8> {
    match serde_json::to_vec(&EnvelopeOut { version, body }) {
        Ok(bytes) => bytes,
        Err(e) => panic!("encoding a {what} as JSON failed, which its types rule out: {e}"),
    }
}

/// Decodes an envelope of a version in `1..=supported`, returning the
/// version found and the body.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    supported: u32,
    bytes: &[u8],
) -> Result<(u32, T), DecodeError> {
    let corrupt = |e: serde_json::Error| DecodeError::Corrupt {
        what,
        reason: e.to_string(),
    };
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(corrupt)?;
    if probe.version == 0 {
        return Err(DecodeError::Corrupt {
            what,
            reason: "version 0 was never written".into(),
        });
    }
    if probe.version > supported {
        return Err(DecodeError::UnsupportedVersion {
            what,
            found: probe.version,
            supported,
        });
    }
    let envelope: EnvelopeIn<T> = serde_json::from_slice(bytes).map_err(corrupt)?;
    Ok((probe.version, envelope.body))
}
