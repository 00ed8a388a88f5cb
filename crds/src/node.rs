//! `BpfNode`: per-node truth, one object per Node, written by the operator from what
//! that node's agent reports. Keeps `BpfProgram.status` bounded however many nodes run it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::program::ProgramType;

/// A BpfNode mirrors one node's agent. Its name is the Node's name; it is owned by the
/// Node. The spec is empty: everything of interest is observed state.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "bpfleet.dev",
    version = "v1alpha1",
    kind = "BpfNode",
    plural = "bpfnodes",
    shortname = "bpfnode",
    doc = "What the bpfleet agent on one node runs: every managed BpfProgram with its kernel ids, pins and health.",
    status = "BpfNodeStatus",
    printcolumn = r#"{"name":"Managed","type":"integer","jsonPath":".status.managed"}"#,
    printcolumn = r#"{"name":"Healthy","type":"integer","jsonPath":".status.healthy"}"#,
    printcolumn = r#"{"name":"Agent","type":"string","jsonPath":".status.agentVersion"}"#,
    printcolumn = r#"{"name":"Reachable","type":"string","jsonPath":".status.conditions[?(@.type==\"AgentReachable\")].status"}"#,
    printcolumn = r#"{"name":"Heartbeat","type":"date","jsonPath":".status.lastHeartbeatTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BpfNodeSpec {}

/// What the node's agent reported last.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BpfNodeStatus {
    /// Number of BpfPrograms the agent manages on this node.
    #[serde(default)]
    pub managed: i32,
    /// Number of those that are Healthy.
    #[serde(default)]
    pub healthy: i32,
    /// Version of the node's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Kernel release of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    /// When this status last changed (RFC 3339): written only on a change, so a
    /// fleet at rest causes no writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report_time: Option<String>,
    /// When the operator last heard from this node's agent (an answer to a List, RFC 3339).
    /// Refreshed with every other write of this status and, while nothing else changes, once
    /// it is older than the operator's `--bpfnode-heartbeat-seconds` (default 600, each node
    /// a little later than that so writes spread out): it may lag the agent's last answer by
    /// that long. While `AgentReachable` is False, the last time the agent answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<String>,
    /// `AgentReachable`: True while the operator reaches this node's agent; False with the
    /// reason it does not: `NoAddress` (the Node has no InternalIP), `NoAgent` (no agent pod
    /// on the node), `AgentNotReady` (its pod is not Ready), `ConnectionRefused`, `Timeout`,
    /// `TlsFailure` (the TLS handshake failed: a certificate from another CA, or the agent
    /// refused the operator's), `IdentityMismatch` (the agent's certificate is for another
    /// node, or the agent says it is another node's), `AnswerRefused` (an answer broke the
    /// protocol: another node's name in it, too large, too many owners) or `TransportError`
    /// (any other failure to reach it); the message says more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Every BpfProgram the agent manages on this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["ownerUid"]))]
    pub programs: Vec<NodeProgramStatus>,
}

/// The type of the BpfNode condition that says whether the operator reaches the node's agent.
pub const AGENT_REACHABLE: &str = "AgentReachable";

/// Health of one BpfProgram on one node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    /// Every program attached as specified.
    Healthy,
    /// Loaded, but some attachment is missing (e.g. a link removed by someone else).
    Degraded,
    /// The last apply failed; nothing of it is running.
    Failed,
}

/// One BpfProgram as it runs on this node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeProgramStatus {
    /// Name of the owning BpfProgram.
    pub owner: String,
    /// UID of the owning BpfProgram.
    pub owner_uid: String,
    /// Revision the node runs.
    pub revision: String,
    /// Healthy, Degraded or Failed.
    pub health: Health,
    /// Kernel objects of each attached function.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attached: Vec<AttachedProgram>,
    /// Maps pinned in bpffs, for user-space readers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maps: Vec<PinnedMap>,
    /// The last error, in words, when health is not Healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// `sha256:<hex>` of the ELF object the node loaded this revision from (for `path`
    /// bytecode: the file as the agent read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytecode_digest: Option<String>,
    /// Maps this revision could not keep from the one it replaced, each with why, e.g.
    /// `counts: value size 8 -> 16, recreated empty` (another shape, or `onUpgrade:
    /// Recreate`). Compatible maps keep their contents and are not listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maps_recreated: Vec<String>,
    /// Pods of this node the program's `pods` programs attach in, each attached or with
    /// why not: at most 64 on a BpfNode, failed ones first (the agent reports every one;
    /// `podsTotal` and `podsFailed` count them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub pods: Vec<PodAttachment>,
    /// Pods the program attaches in on this node, listed or not.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pods_total: i32,
    /// Of those, pods where it is not (fully) attached.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pods_failed: i32,
    /// `spec.metrics` this node's agent could not export whole at its last scrape, each
    /// with why: more series than its `--max-metric-series-per-program` (then that many
    /// are exported), or a map it could not read. Empty when every series was exported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub metrics_limited: Vec<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Pods a BpfNode lists per program.
pub const MAX_LISTED_PODS: usize = 64;

impl NodeProgramStatus {
    /// As a BpfNode shows it: the pods counted, failed ones first, at most
    /// [`MAX_LISTED_PODS`] listed.
    pub fn bounded(mut self) -> Self {
        self.pods_total = self.pods.len() as i32;
        self.pods_failed = self.pods.iter().filter(|p| p.reason.is_some()).count() as i32;
        self.pods.sort_by(|a, b| (a.reason.is_none(), &a.uid).cmp(&(b.reason.is_none(), &b.uid)));
        self.pods.truncate(MAX_LISTED_PODS);
        self
    }
}

/// How a program stands in one pod of the node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodAttachment {
    /// The pod's metadata.uid.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// Kernel link ids of the program's attachments in the pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_ids: Vec<u32>,
    /// Why not every program is attached in it (e.g. TargetNotFound: the pod is gone or
    /// not started; InterfaceNotFound); absent when attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One loaded function and its links.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AttachedProgram {
    /// Function name in the ELF.
    pub name: String,
    /// Program type.
    #[serde(rename = "type")]
    pub program_type: ProgramType,
    /// Kernel program id (`bpftool prog show id N`).
    pub program_id: u32,
    /// Kernel link ids, one per attachment (`bpftool link show id N`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_ids: Vec<u32>,
}

/// A map pinned in bpffs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PinnedMap {
    /// Map name in the ELF.
    pub name: String,
    /// Absolute bpffs path, e.g. for `bpftool map dump pinned PATH`.
    pub pin_path: String,
}
