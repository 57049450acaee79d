//! Compiles the discovery protos with protox (pure Rust, no protoc on the machine).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/trellis/discovery/v1/discovery.proto",
        "proto/trellis/identity/v1/identity.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
