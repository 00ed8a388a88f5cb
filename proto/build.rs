// Compiles the .proto with protox (pure Rust), so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/bpfleet/agent/v1/agent.proto";
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([file], ["proto"])?;
    // `bytes` fields as `Bytes`: the operator sends one object to many nodes, and each
    // per-node request then shares the same buffer instead of copying it.
    tonic_prost_build::configure().build_server(true).build_client(true).bytes(".bpfleet.agent.v1").compile_fds(fds)?;
    // The kubelet's side of map volumes: CSI (the part a node driver serves) and plugin
    // registration.
    let kubelet = ["proto/csi/v1/csi.proto", "proto/pluginregistration/v1/registration.proto"];
    for f in kubelet {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(kubelet, ["proto"])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
