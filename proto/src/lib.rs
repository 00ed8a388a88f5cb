//! `bpfleet.agent.v1`: generated tonic code plus the conversions between the wire types
//! and the `crds` types, written once for both sides.

#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("bpfleet.agent.v1");
}

/// The part of CSI v1 the agent's map volumes serve (see `proto/csi/v1/csi.proto`).
#[allow(clippy::all)]
pub mod csi {
    tonic::include_proto!("csi.v1");
}

/// The kubelet's plugin registration.
#[allow(clippy::all)]
pub mod registration {
    tonic::include_proto!("pluginregistration");
}

mod convert;
mod digest;
pub mod limits;

pub use convert::{
    WireError, health_from_wire, health_to_wire, map_policy_from_wire, map_policy_to_wire, metric_from_wire,
    metric_to_wire, program_from_wire, program_to_wire, state_to_status, status_to_wire,
};
pub use digest::{NodeDigest, pods_hash};

/// gRPC metadata key carrying a machine-readable failure reason (e.g. `VerifierRejected`).
pub const REASON_KEY: &str = "bpfleet-reason";
/// gRPC metadata key naming the program (ELF function) a failure is about.
pub const PROGRAM_KEY: &str = "bpfleet-program";
/// The DNS name the operator's client certificate carries; agents accept no other.
pub const DEFAULT_OPERATOR_CLIENT_NAME: &str = "bpfleet-operator";
/// The DNS name every agent certificate carries, so one certificate serves every node.
pub const DEFAULT_AGENT_SERVER_NAME: &str = "bpfleet-agent";
