//! Why something failed, in one word: `BpfProgram.status.failures[].reason`, the
//! `Ready`/`Stalled` condition reasons, the agent's gRPC error metadata
//! (`bpfleet-reason`) and metric labels. Part of the status API: names never change.

use std::fmt;

/// A machine-readable failure reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The spec breaks a rule the API server could not check (or a request is malformed).
    InvalidSpec,
    /// The object is larger than the limit for its source.
    BytecodeTooLarge,
    /// The object file given by `bytecode.path` is missing on the node.
    BytecodeNotFound,
    /// The ConfigMap (or its key) holding the object cannot be read.
    BytecodeUnavailable,
    /// The object is not the one `bytecode.digest` pins: a `path` file on the node
    /// (checked by the agent), or inline or ConfigMap bytes (checked by the operator).
    BytecodeDigestMismatch,
    /// The bytecode source is not one this cluster allows: a ConfigMap outside the
    /// operator's namespace and the namespaces labelled `bpfleet.dev/bytecode-source=allowed`.
    BytecodeSourceNotAllowed,
    /// The bytecode is not a BPF ELF object the agent can read.
    MalformedElf,
    /// A program named in the spec is not a function of the object.
    ProgramNotFound,
    /// A `globalData` entry names no variable of the object or has the wrong size.
    GlobalDataInvalid,
    /// A map pinned by an earlier revision has another shape than the object's.
    MapMismatch,
    /// The kernel verifier refused a program.
    VerifierRejected,
    /// The kernel does not support the program type.
    KernelUnsupported,
    /// An interface named in the spec does not exist on the node.
    InterfaceNotFound,
    /// A tracepoint or kernel function named in the spec does not exist.
    HookNotFound,
    /// A uprobe target or cgroup named in the spec does not exist.
    TargetNotFound,
    /// The kernel refused an attachment.
    AttachFailed,
    /// A pin in bpffs could not be created.
    PinFailed,
    /// A request from an operator that is no longer the leader (older leadership epoch).
    StaleLeaderEpoch,
    /// The agent's record of what runs could not be used; the programs stay as they are.
    RecordSetAside,
    /// The node's agent could not be reached.
    AgentUnreachable,
    /// The agent that answered runs on another node than the one the request is for: the
    /// node's address leads to another node's agent. Nothing was changed.
    WrongNode,
    /// The image cannot be fetched: not found, registry unreachable, or credentials refused (the message says which).
    ImageUnavailable,
    /// The image is not eBPF bytecode as expected: tampered blob, no ELF, too large, labels that do not match the spec, or no entry for the nodes' architecture.
    ImageInvalid,
    /// A signature policy is set and the image has no signature.
    ImageUnsigned,
    /// The image's signature does not verify for this digest.
    ImageSignatureInvalid,
    /// The image is signed, but by no key of the signature policy.
    ImageUntrustedKey,
    /// The node runs the revision, but a health gate of `spec.rollout.health` failed there
    /// (a program that did not run, a map check over its bound, no reading): the message
    /// names the gate and the value seen.
    HealthGateFailed,
    /// The agent failed in a way the user cannot fix (see its log).
    Internal,
}

impl Reason {
    pub const ALL: [Reason; 28] = [
        Reason::InvalidSpec,
        Reason::BytecodeTooLarge,
        Reason::BytecodeNotFound,
        Reason::BytecodeUnavailable,
        Reason::BytecodeDigestMismatch,
        Reason::BytecodeSourceNotAllowed,
        Reason::MalformedElf,
        Reason::ProgramNotFound,
        Reason::GlobalDataInvalid,
        Reason::MapMismatch,
        Reason::VerifierRejected,
        Reason::KernelUnsupported,
        Reason::InterfaceNotFound,
        Reason::HookNotFound,
        Reason::TargetNotFound,
        Reason::AttachFailed,
        Reason::PinFailed,
        Reason::StaleLeaderEpoch,
        Reason::RecordSetAside,
        Reason::AgentUnreachable,
        Reason::WrongNode,
        Reason::ImageUnavailable,
        Reason::ImageInvalid,
        Reason::ImageUnsigned,
        Reason::ImageSignatureInvalid,
        Reason::ImageUntrustedKey,
        Reason::HealthGateFailed,
        Reason::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSpec => "InvalidSpec",
            Reason::BytecodeTooLarge => "BytecodeTooLarge",
            Reason::BytecodeNotFound => "BytecodeNotFound",
            Reason::BytecodeUnavailable => "BytecodeUnavailable",
            Reason::BytecodeDigestMismatch => "BytecodeDigestMismatch",
            Reason::BytecodeSourceNotAllowed => "BytecodeSourceNotAllowed",
            Reason::MalformedElf => "MalformedElf",
            Reason::ProgramNotFound => "ProgramNotFound",
            Reason::GlobalDataInvalid => "GlobalDataInvalid",
            Reason::MapMismatch => "MapMismatch",
            Reason::VerifierRejected => "VerifierRejected",
            Reason::KernelUnsupported => "KernelUnsupported",
            Reason::InterfaceNotFound => "InterfaceNotFound",
            Reason::HookNotFound => "HookNotFound",
            Reason::TargetNotFound => "TargetNotFound",
            Reason::AttachFailed => "AttachFailed",
            Reason::PinFailed => "PinFailed",
            Reason::StaleLeaderEpoch => "StaleLeaderEpoch",
            Reason::RecordSetAside => "RecordSetAside",
            Reason::AgentUnreachable => "AgentUnreachable",
            Reason::WrongNode => "WrongNode",
            Reason::ImageUnavailable => "ImageUnavailable",
            Reason::ImageInvalid => "ImageInvalid",
            Reason::ImageUnsigned => "ImageUnsigned",
            Reason::ImageSignatureInvalid => "ImageSignatureInvalid",
            Reason::ImageUntrustedKey => "ImageUntrustedKey",
            Reason::HealthGateFailed => "HealthGateFailed",
            Reason::Internal => "Internal",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_and_names_are_unique() {
        let names: std::collections::BTreeSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert_eq!(format!("{r:?}"), r.as_str(), "the name is the variant's");
        }
        assert_eq!(Reason::parse("NoSuchReason"), None);
    }
}
