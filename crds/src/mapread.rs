//! Reading maps through the operator: the request and answer of its map-read endpoint,
//! shared by the operator (which asks each node's agent over mTLS) and `kubectl bpfleet
//! maps` (which decodes the bytes with the maps' BTF and prints them).
//!
//! Who may read: the caller presents a service-account token minted for audience
//! [`AUDIENCE`] in header [`TOKEN_HEADER`]; the operator reviews it (TokenReview) and asks
//! the API server whether that identity may `get` the subresource `maps` of the
//! BpfProgram (or of the BpfNamespacedProgram it mirrors) — a rule RBAC can grant like any
//! other (`bpfprograms/maps`).

use serde::{Deserialize, Serialize};

/// Path of the endpoint (query: [`MapsQuery`]).
pub const PATH: &str = "/v1/maps";
/// The header carrying the caller's token (the API server's service proxy removes
/// `Authorization`, which authenticated the caller to the API server itself).
pub const TOKEN_HEADER: &str = "x-bpfleet-token";
/// The audience map-read tokens are minted for; the operator accepts no other.
pub const AUDIENCE: &str = "bpfleet.dev/maps";
/// The RBAC subresource that grants reading a program's maps.
pub const SUBRESOURCE: &str = "maps";
/// Most nodes one `allNodes` read asks at once.
pub const MAX_NODES: usize = 256;
/// Bytes of keys, values and BTF one node's agent answers at most.
pub const MAX_NODE_BYTES: u32 = 12 << 20;
/// Bytes of map contents in one answer over every node (each node gets its share, at
/// most [`MAX_NODE_BYTES`]).
pub const MAX_ANSWER_BYTES: u32 = 48 << 20;

/// What to read.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MapsQuery {
    /// The BpfProgram's name.
    pub program: String,
    /// One node; empty with `all_nodes` or when the program runs on one node only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_nodes: bool,
    /// One map by its ELF name; empty: all of them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub map: String,
    /// Most entries per map (0: the agent's default, 10,000).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_entries: u32,
    /// Longest each node's read may take (0: the agent's default, 2 s).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout_ms: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The answer: one entry per node asked, in node-name order.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MapsAnswer {
    pub program: String,
    pub nodes: Vec<NodeMaps>,
}

/// One node's maps of the program, or why they could not be read there.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeMaps {
    pub node: String,
    /// The revision the node runs; empty when it runs none.
    #[serde(default)]
    pub revision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(default)]
    pub maps: Vec<MapContents>,
}

/// A map's entries as the kernel holds them: bytes (base64), and the BTF to decode them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MapContents {
    pub name: String,
    pub map_type: String,
    pub map_id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// The node's possible CPUs for a per-CPU map, else 1.
    pub values_per_entry: u32,
    /// Base64 of the raw BTF; empty when the map has none (then `btf_note` says why).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub btf: String,
    #[serde(default)]
    pub btf_key_type_id: u32,
    #[serde(default)]
    pub btf_value_type_id: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub btf_note: String,
    pub entries: Vec<RawEntry>,
    /// Why not every entry is here; empty when all are.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub truncated: String,
    /// Why the map could not be read at all.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// One entry: the key and its value(s), base64.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RawEntry {
    pub key: String,
    pub values: Vec<String>,
}
