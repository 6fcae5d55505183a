//! Generates the gRPC service's code from `proto/lattice/v1/documents.proto` with the
//! `protoc` of the `protoc-bin-vendored` crate: a binary shipped inside a crates.io package, so
//! the build needs no system package and downloads nothing.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let proto = root.join("lattice/v1/documents.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &[proto], &[root])?;
    Ok(())
}
