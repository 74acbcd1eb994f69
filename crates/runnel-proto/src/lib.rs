//! Runnel's public gRPC API, generated from `proto/runnel/v1/*.proto`.
//!
//! This crate owns only generated code: the prost messages (every `bytes`
//! field is a [`bytes::Bytes`]-compatible `prost::bytes::Bytes`), the tonic
//! clients and servers of `AdminService`, `ProduceService`,
//! `FetchService` and `GroupService`, and the file descriptor set that the
//! broker serves through gRPC reflection. The `.proto` files are the contract and carry the
//! documentation; read them, not the generated code.
//!
//! Beside it, [`wire`]: the gRPC framing of `FetchService.Fetch`, which the
//! broker writes itself so that fetched batches are not copied into tonic's
//! encode buffer.

/// Messages and services of package `runnel.v1`.
pub mod v1 {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    tonic::include_proto!("runnel.v1");
}

pub mod wire;

/// The encoded `FileDescriptorSet` of package `runnel.v1`, for
/// `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/runnel_v1_descriptor.bin"));

/// Domain of the `google.rpc.ErrorInfo` attached to every failed call.
pub const ERROR_DOMAIN: &str = "runnel.dev";

/// Name of the ASCII trailer that carries the [`v1::ErrorReason`] of a failed
/// call (its proto enum name, e.g. `UNKNOWN_TOPIC`).
pub const REASON_METADATA_KEY: &str = "runnel-reason";
