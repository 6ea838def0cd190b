//! Compiles the .proto files with protox (pure Rust): a fresh machine needs no system protoc.
use std::path::PathBuf;

const FILES: &[&str] = &[
    "proto/imrpc/common.proto",
    "proto/ptypes/controller.proto",
    "proto/imrpc/proxy.proto",
    "proto/longhornguard/agent/v1/agent.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for f in FILES {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(FILES, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&out)
        .compile_fds(fds)?;
    Ok(())
}
