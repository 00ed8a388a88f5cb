//! What agents report, in the operator's own types: the agent pool ([`crate::dispatch`])
//! turns every answer into these, so the index, resync and drift never see the wire.

use crds::Health;
use crds::node::{BpfNodeStatus, NodeProgramStatus};

/// Everything an agent runs, as one List read it (all pages).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentList {
    pub agent_version: String,
    pub kernel_release: String,
    /// The node digest ([`proto::NodeDigest`]) of `programs`, computed by the operator.
    /// In an [`Listed::Unchanged`] answer: the agent's own, the one asked with.
    pub digest: u64,
    /// Every owner the agent reported, one entry each (an entry with an empty revision
    /// runs nothing).
    pub programs: Vec<NodeProgramStatus>,
}

/// A List answer.
#[derive(Debug)]
pub enum Listed {
    /// Every owner (all pages), with the digest of them.
    Full(AgentList),
    /// The agent's digest is the one asked with: no owners, only the agent's identity.
    Unchanged(AgentList),
}

/// One change an agent's Watch stream reported.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentChange {
    pub kind: ChangeKind,
    /// The owner's state now (for `Removed`, the last one the agent knew).
    pub program: NodeProgramStatus,
    /// Why, in the agent's words (for logs).
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The owner's state changed (applied, adopted, health changed).
    Updated,
    /// Everything of the owner is gone.
    Removed,
}

/// One `Probe` answer: what the health gates read of an owner on a node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Probed {
    /// The revision the owner runs there; empty for none.
    pub revision: String,
    pub programs: Vec<ProgramRuns>,
    /// One per map entry asked for, in the order asked.
    pub values: Vec<ReadValue>,
    /// Whether the kernel counts program runs now.
    pub stats_enabled: bool,
}

/// A program's kernel run count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramRuns {
    pub name: String,
    /// Kernel program id: a reload is a new id, counting from 0.
    pub id: u32,
    pub runs: u64,
}

/// One map entry read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadValue {
    Value(u64),
    /// The map has no entry at the key (yet): a counter not created is at 0.
    Missing,
    /// The entry cannot be read (no such map, a key that is not 4 or 8 bytes).
    Error(String),
}

impl ReadValue {
    /// What an agent answered for one read.
    pub fn from_wire(v: Option<proto::v1::map_value::Result>) -> ReadValue {
        use proto::v1::map_value::Result as R;
        match v {
            Some(R::Value(v)) => ReadValue::Value(v),
            // A hash map's key not created yet; an array index out of range is an error.
            Some(R::Error(e)) if e.contains("has no entry") && !e.contains("is an array") => ReadValue::Missing,
            Some(R::Error(e)) => ReadValue::Error(crds::sanitize::for_status(&e)),
            None => ReadValue::Missing,
        }
    }
}

/// The BpfNode status of a node, from its agent's List.
pub fn node_status(list: &AgentList) -> BpfNodeStatus {
    let programs: Vec<NodeProgramStatus> =
        list.programs.iter().filter(|s| !s.revision.is_empty()).cloned().map(NodeProgramStatus::bounded).collect();
    BpfNodeStatus {
        managed: programs.len() as i32,
        healthy: programs.iter().filter(|p| p.health == Health::Healthy).count() as i32,
        agent_version: Some(list.agent_version.clone()),
        kernel_release: Some(list.kernel_release.clone()),
        last_report_time: Some(k8s_openapi::jiff::Timestamp::now().to_string()),
        programs,
        // AgentReachable and the heartbeat: bpfnode::write_if_changed.
        ..Default::default()
    }
}
