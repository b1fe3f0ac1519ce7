//! Generates the Rust types, clients and servers from `proto/`, and a file descriptor set for
//! gRPC reflection. `protoc` comes from `protoc-bin-vendored` (passed by path, not through the
//! environment), so a fresh machine needs nothing installed.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/annals/v1/common.proto",
    "proto/annals/v1/problems.proto",
    "proto/annals/v1/tasks.proto",
    "proto/annals/v1/agent_sessions.proto",
    "proto/annals/v1/governance.proto",
    "proto/annals/v1/queries.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let well_known = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        // Short INVALID_ARGUMENT for undecodable requests instead of tonic's INTERNAL with the
        // decoder's full message (see `schemas::edge`).
        .codec_path("crate::edge::EdgeCodec")
        .file_descriptor_set_path(out_dir.join("annals_descriptor.bin"))
        .compile_with_config(
            config,
            &PROTOS.iter().map(PathBuf::from).collect::<Vec<_>>(),
            &[PathBuf::from("proto"), well_known],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
