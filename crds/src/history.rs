//! Revision history: each revision a BpfProgram ran is kept as an `apps/v1`
//! ControllerRevision in the operator's namespace (as Kubernetes keeps a DaemonSet's),
//! owned by the BpfProgram so it goes with it. Rollbacks and `kubectl bpfleet rollout
//! undo` read it, so neither depends on a ConfigMap still holding the old bytes.
//!
//! The object: name [`object_name`], labels [`LABEL_PROGRAM_UID`] and [`LABEL_REVISION`],
//! annotation [`ANNOTATION_PROGRAM`], `.revision` a sequence number that grows each time a
//! revision becomes the one rolled out (a revert renumbers the old one, as for
//! Deployments), `.data` a [`RevisionData`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::program::{BytecodeSource, ProgramSpec};
use crate::rollout::MapPolicy;

/// The owning BpfProgram's uid.
pub const LABEL_PROGRAM_UID: &str = "bpfleet.dev/program-uid";
/// The revision hash (`status.revision`).
pub const LABEL_REVISION: &str = "bpfleet.dev/revision";
/// The owning BpfProgram's name (names can exceed a label value's 63 characters).
pub const ANNOTATION_PROGRAM: &str = "bpfleet.dev/program";

/// Everything a node needs to run one revision, and the spec fields it came from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionData {
    /// `spec.bytecode` as it was (what `rollout undo` restores).
    pub bytecode: BytecodeSource,
    /// The ELF object, base64, when the operator had the bytes (inline and ConfigMap
    /// bytecode); absent for `path` bytecode, which nodes read themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elf: Option<String>,
    /// `sha256:…` of the ELF object, or the digest `path` bytecode is pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub programs: Vec<ProgramSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub global_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maps: Vec<MapPolicy>,
    /// spec.metrics of the revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<crate::metrics::MetricSpec>,
}

/// The ControllerRevision's name: `<program>-<revision>`, the program name cut so the
/// whole stays a valid object name (253 characters).
/// Whether an object (a ControllerRevision) is a history entry the operator wrote for the
/// BpfProgram `uid`: its controller is that BpfProgram. The labels alone can be copied
/// onto anything, so neither `rollout undo` nor a rollback trusts an entry without this.
pub fn owned_by_program(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true)
            && o.kind == "BpfProgram"
            && o.api_version.starts_with("bpfleet.dev/")
            && o.uid == uid
    })
}

pub fn object_name(program: &str, revision: &str) -> String {
    let keep = 253 - 1 - revision.len();
    let mut cut = program.len().min(keep);
    while !program.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = program[..cut].trim_end_matches(['-', '.']);
    format!("{head}-{revision}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_an_object_name() {
        assert_eq!(object_name("xdp-counter", "0123456789abcdef"), "xdp-counter-0123456789abcdef");
        let long = "a".repeat(253);
        let n = object_name(&long, "0123456789abcdef");
        assert_eq!(n.len(), 253);
        assert!(n.ends_with("-0123456789abcdef"));
        let dashed = format!("{}-{}", "a".repeat(235), "b".repeat(17));
        assert!(!object_name(&dashed, "0123456789abcdef").contains("--"));
    }
}
