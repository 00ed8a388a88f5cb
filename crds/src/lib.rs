//! The bpfleet API: custom resource types, the names and limits both the operator and
//! the agent rely on, and the validation they share.

pub mod admission;
pub mod crdgen;
pub mod error;
pub mod health;
pub mod history;
pub mod limits;
pub mod mapread;
pub mod metrics;
pub mod names;
pub mod node;
pub mod pins;
pub mod program;
pub mod reason;
pub mod revision;
pub mod rollout;
pub mod sanitize;
pub mod shared_text;
pub mod standing;
pub mod tenant;
pub mod validate;

pub use admission::{BpfAdmissionPolicy, BpfAdmissionPolicySpec};
pub use node::{BpfNode, BpfNodeSpec, BpfNodeStatus, Health, NodeProgramStatus};
pub use program::{BpfProgram, BpfProgramSpec, BpfProgramStatus, ProgramSpec, ProgramType};
pub use tenant::{BpfNamespacedProgram, BpfNamespacedProgramSpec};

/// API group of every bpfleet resource.
pub const GROUP: &str = "bpfleet.dev";
/// Field manager the operator uses for server-side apply.
pub const FIELD_MANAGER: &str = "bpfleet-operator";
