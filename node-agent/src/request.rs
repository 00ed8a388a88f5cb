//! Turning what arrives into a validated `ApplyInput`: a standalone manifest here, and the
//! checks a gRPC ApplyRequest shares with it (`server::input_from_wire` converts the wire).
//! Both go through the same `crds::validate` rules an API server enforces.

use std::path::Path;

use crds::BpfProgram;
use crds::limits::MAX_BYTECODE_BYTES;
use crds::names::{MapName, OwnerUid};
use crds::revision::{BytecodeIdentity, Revision, Sha256Digest};
use crds::rollout::MapPolicy;
use crds::validate::{Bytecode, validate_spec};
use sha2::{Digest, Sha256};

use crate::error::{AgentError, Reason, Result};
use crate::manager::ApplyInput;

/// Read a node-local object (a regular file of the node, resolved inside the host root;
/// see `hostfs`), refusing oversized files without holding more than the limit.
pub fn read_bytecode_file(path: &Path) -> Result<Vec<u8>> {
    let buf = crate::hostfs::host_root().read(path, crate::hostfs::Use::Bytecode, MAX_BYTECODE_BYTES)?;
    if buf.len() > MAX_BYTECODE_BYTES {
        return Err(AgentError::new(
            Reason::BytecodeTooLarge,
            format!("{} is larger than the {MAX_BYTECODE_BYTES}-byte limit", path.display()),
        ));
    }
    Ok(buf)
}

/// A node-local file must be exactly the object the spec pins it to.
pub fn check_digest(path: &str, bytes: &[u8], expected: &str) -> Result<()> {
    let want = Sha256Digest::parse(expected).ok_or_else(|| {
        invalid(format!("expected digest {expected:?} must be sha256: followed by 64 lowercase hex characters"))
    })?;
    let have = Sha256Digest::of(bytes);
    if have != want {
        return Err(AgentError::new(
            Reason::BytecodeDigestMismatch,
            format!(
                "{path} on this node has digest {have}, but the spec pins {want}: install the intended file \
                 on this node or update bytecode.digest"
            ),
        ));
    }
    Ok(())
}

pub(crate) fn invalid(msg: impl Into<String>) -> AgentError {
    AgentError::new(Reason::InvalidSpec, msg)
}

/// Map policies name maps as the ELF does: refused here when no map could have the name.
pub(crate) fn checked_map_policies(policies: &[MapPolicy]) -> Result<Vec<MapPolicy>> {
    for p in policies {
        MapName::new(&p.name).map_err(|e| invalid(format!("spec.maps: {e}")))?;
    }
    Ok(policies.to_vec())
}

/// The owner id of a standalone manifest: readable when the name allows, hashed otherwise.
pub fn standalone_uid(name: &str) -> OwnerUid {
    let readable = format!("standalone-{}", name.replace('.', "-"));
    OwnerUid::new(&readable).unwrap_or_else(|_| {
        let h = hex_prefix(&Sha256::digest(name.as_bytes()));
        OwnerUid::new(format!("standalone-{h}")).expect("hex is a valid uid")
    })
}

fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect()
}

/// A manifest in standalone mode: no API server, no ConfigMaps.
pub fn input_from_manifest(obj: &BpfProgram) -> Result<ApplyInput> {
    let name = obj.metadata.name.clone().ok_or_else(|| invalid("metadata.name is required"))?;
    let valid = validate_spec(&obj.spec).map_err(|e| invalid(e.to_string()))?;
    if let Some(p) = crate::pods::in_pod_programs(&valid.programs).first() {
        return Err(invalid(format!(
            "program {} attaches inside pods, which needs a cluster (the operator selects the pods); in standalone \
             mode attach it to the node's interfaces (xdp.interfaces, tc.interfaces)",
            p.name
        )));
    }
    let bytecode = match &valid.bytecode {
        Bytecode::Inline(b) => b.clone(),
        Bytecode::Path { path, digest } => {
            let bytes = read_bytecode_file(path)?;
            if let Some(d) = digest {
                check_digest(&path.display().to_string(), &bytes, d.as_str())?;
            }
            bytes
        }
        Bytecode::ConfigMap(cm) => {
            return Err(invalid(format!(
                "bytecode.configMap ({}/{}) needs a cluster; in standalone mode use bytecode.path or bytecode.inline",
                cm.namespace, cm.name
            )));
        }
        Bytecode::Image(image) => {
            return Err(invalid(format!(
                "bytecode.image ({}) is pulled by the operator; agents never reach a registry. In standalone \
                 mode use bytecode.path (e.g. the ELF from `kubectl bpfleet image build`)",
                image.url
            )));
        }
    };
    let revision = Revision::compute(&obj.spec, BytecodeIdentity::Bytes(&bytecode));
    Ok(ApplyInput {
        uid: standalone_uid(&name),
        name,
        revision,
        bytecode,
        programs: valid.programs,
        spec: obj.spec.programs.clone(),
        globals: valid.globals,
        maps: checked_map_policies(&obj.spec.maps)?,
        pods: Vec::new(),
        metrics: obj.spec.metrics.clone(),
        // Standalone owners' uids follow from their names.
        map_owners: obj
            .spec
            .maps
            .iter()
            .filter_map(|m| m.from.as_ref())
            .map(|f| (f.program.clone(), standalone_uid(&f.program)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pods are selected by the operator: a manifest in standalone mode cannot name any.
    #[test]
    fn standalone_manifests_cannot_attach_inside_pods() {
        let obj: BpfProgram = serde_yaml::from_str(
            r#"
apiVersion: bpfleet.dev/v1alpha1
kind: BpfProgram
metadata: {name: in-pods}
spec:
  bytecode: {inline: AAAA}
  programs:
    - {name: count_packets, type: XDP, xdp: {pods: {namespace: shop}}}
"#,
        )
        .unwrap();
        let e = input_from_manifest(&obj).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidSpec);
        assert_eq!(
            e.message,
            "program count_packets attaches inside pods, which needs a cluster (the operator selects the pods); in \
             standalone mode attach it to the node's interfaces (xdp.interfaces, tc.interfaces)"
        );
    }
}
