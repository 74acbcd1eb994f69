//! Compiles proto/runnel/v1 with protox (pure Rust, no system `protoc`) and
//! generates prost messages and tonic clients and servers. Every `bytes`
//! field becomes `bytes::Bytes`, so payloads move without copies. The file
//! descriptor set is written beside the code for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

const FILES: [&str; 6] = [
    "runnel/v1/common.proto",
    "runnel/v1/admin.proto",
    "runnel/v1/produce.proto",
    "runnel/v1/fetch.proto",
    "runnel/v1/cluster.proto",
    "runnel/v1/group.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script compiled for one checkout may run
    // for another when target directories are shared.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    for file in FILES {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(FILES, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("runnel_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
