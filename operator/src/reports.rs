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

/// The BpfNode status of a node, from its agent's List.
pub fn node_status(list: &AgentList) -> BpfNodeStatus {
    let programs: Vec<NodeProgramStatus> = list.programs.iter().filter(|s| !s.revision.is_empty()).cloned().collect();
    BpfNodeStatus {
        managed: programs.len() as i32,
        healthy: programs.iter().filter(|p| p.health == Health::Healthy).count() as i32,
        agent_version: Some(list.agent_version.clone()),
        kernel_release: Some(list.kernel_release.clone()),
        last_report_time: Some(k8s_openapi::jiff::Timestamp::now().to_string()),
        programs,
    }
}
