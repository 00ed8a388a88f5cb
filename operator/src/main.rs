//! bpfleet-operator. The command-line contract is fixed here (design.md); the
//! controller itself is built in issue 4 and refuses to pretend until then.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "bpfleet-operator", version, about = "Reconciles BpfPrograms across the fleet through bpfleet agents")]
struct Args {
    /// Port of the agents, dialled at each Node's InternalIP.
    #[arg(long, default_value_t = 50051)]
    agent_port: u16,
    /// PEM client certificate of the operator.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// PEM CA that signs the agents' certificates.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Name expected on agent certificates.
    #[arg(long, default_value = proto::DEFAULT_AGENT_SERVER_NAME)]
    agent_server_name: String,
    /// Namespace of the operator's Lease and Events.
    #[arg(long, default_value = "bpfleet-system")]
    namespace: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!(
        "bpfleet-operator {}: the controller is not implemented yet (tracked as issue 4); parsed {args:?}",
        env!("CARGO_PKG_VERSION")
    )
}
