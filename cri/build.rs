// Compiles the CRI subset with protox (pure Rust), so no system protoc is needed. The client
// is always generated; the server trait only for the `testing` feature (a fake runtime in
// tests), so a release agent carries no CRI server code.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/runtime/v1/runtime.proto";
    println!("cargo:rerun-if-changed={file}");
    let server = std::env::var_os("CARGO_FEATURE_TESTING").is_some();
    let fds = protox::compile([file], ["proto"])?;
    tonic_prost_build::configure().build_server(server).build_client(true).compile_fds(fds)?;
    Ok(())
}
