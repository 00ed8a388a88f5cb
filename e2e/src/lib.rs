//! End-to-end harness: a real API server from `KUBECONFIG`, the operator as a local
//! process, and agents as local processes in network namespaces ("process-mode nodes").
//! Without `KUBECONFIG` every scenario skips with one line. See docs/e2e.md.
//!
//! - [`env::Env`]: one scenario's world (cluster objects, PKI, nodes, operator), torn
//!   down on drop, also after a panic;
//! - [`cluster::Cluster`]: CRDs from `charts/bpfleet/crds/`, Nodes, ConfigMaps, BpfPrograms;
//! - [`node::ProcessNode`]: netns + veth `eth0` + `bpfleet-agent` on its own bpffs root;
//! - [`operator::Operator`]: `bpfleet-operator` against the cluster;
//! - [`kernel`]: what bpftool, ip and bpffs say;
//! - [`gate::ApplyGate`]: how many nodes are between revisions at once, from the agents;
//! - [`convergence`]: does every node run exactly what is desired, leaking nothing;
//! - [`installed`]: a whole cluster with the chart installed by Helm (cluster mode);
//! - [`rng::Rng`]: seeded choices, so a trial replays from its printed seed.

pub mod cluster;
pub mod convergence;
pub mod env;
pub mod gate;
pub mod installed;
pub mod kernel;
pub mod node;
pub mod operator;
pub mod prometheus;
pub mod proxy;
pub mod rng;
pub mod util;

/// The kubeconfig to use, or `None` (and one printed line) when there is none.
pub fn kubeconfig_or_skip(test: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os("KUBECONFIG") {
        Some(p) if !p.is_empty() => Some(p.into()),
        _ => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIP e2e {test}: KUBECONFIG is not set (no API server)");
            None
        }
    }
}
