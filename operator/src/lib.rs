//! bpfleet-operator: reconciles BpfPrograms across the fleet through the node agents.
//! The pure core (`targets`, `plan`, `status`, `drift`) decides; the edges (kube, gRPC)
//! only carry out and observe.

pub mod plan;
pub mod status;
pub mod targets;
