//! Compiles the Workload API, node API and admin API protos with protox, so no `protoc` binary
//! is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/workload.proto",
        "proto/types.proto",
        "proto/node.proto",
        "proto/admin.proto",
        "proto/attestation.proto",
        "proto/workload_attestation.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}
