//! The agent's errors: a machine-readable reason (becomes `BpfProgram.status.failures[].reason`
//! and a metric label), the program at fault when there is one, and a message in words.

use std::fmt;

/// Why an operation failed. The names are part of the status API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidSpec,
    BytecodeTooLarge,
    BytecodeNotFound,
    MalformedElf,
    ProgramNotFound,
    GlobalDataInvalid,
    MapMismatch,
    VerifierRejected,
    KernelUnsupported,
    InterfaceNotFound,
    HookNotFound,
    TargetNotFound,
    AttachFailed,
    PinFailed,
    BytecodeDigestMismatch,
    StaleLeaderEpoch,
    RecordSetAside,
    Internal,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSpec => "InvalidSpec",
            Reason::BytecodeTooLarge => "BytecodeTooLarge",
            Reason::BytecodeNotFound => "BytecodeNotFound",
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
            Reason::BytecodeDigestMismatch => "BytecodeDigestMismatch",
            Reason::StaleLeaderEpoch => "StaleLeaderEpoch",
            Reason::RecordSetAside => "RecordSetAside",
            Reason::Internal => "Internal",
        }
    }

    pub const ALL: [Reason; 18] = [
        Reason::InvalidSpec,
        Reason::BytecodeTooLarge,
        Reason::BytecodeNotFound,
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
        Reason::BytecodeDigestMismatch,
        Reason::StaleLeaderEpoch,
        Reason::RecordSetAside,
        Reason::Internal,
    ];

    /// The gRPC code: the caller's input (InvalidArgument), the node's state
    /// (FailedPrecondition), or the agent itself (Internal).
    fn code(self) -> tonic::Code {
        match self {
            Reason::InvalidSpec
            | Reason::BytecodeTooLarge
            | Reason::MalformedElf
            | Reason::ProgramNotFound
            | Reason::GlobalDataInvalid
            | Reason::VerifierRejected => tonic::Code::InvalidArgument,
            Reason::Internal | Reason::PinFailed => tonic::Code::Internal,
            _ => tonic::Code::FailedPrecondition,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentError {
    pub reason: Reason,
    pub program: Option<String>,
    pub message: String,
}

impl AgentError {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self { reason, program: None, message: message.into() }
    }

    pub fn for_program(reason: Reason, program: impl Into<String>, message: impl Into<String>) -> Self {
        Self { reason, program: Some(program.into()), message: message.into() }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Reason::Internal, message)
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.program {
            Some(p) => write!(f, "{}: program {p}: {}", self.reason.as_str(), self.message),
            None => write!(f, "{}: {}", self.reason.as_str(), self.message),
        }
    }
}

impl std::error::Error for AgentError {}

impl From<AgentError> for tonic::Status {
    fn from(e: AgentError) -> Self {
        let mut status = tonic::Status::new(e.reason.code(), e.message.clone());
        let md = status.metadata_mut();
        if let Ok(v) = e.reason.as_str().parse() {
            md.insert(proto::REASON_KEY, v);
        }
        if let Some(p) = e.program.as_deref().and_then(|p| p.parse().ok()) {
            md.insert(proto::PROGRAM_KEY, p);
        }
        status
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

/// An error with its chain of causes, e.g. "`bpf_link_create` failed: Invalid argument
/// (os error 22)": aya's top-level messages often omit the cause.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !msg.contains(&s_text) {
            msg = format!("{msg}: {s_text}");
        }
        source = s.source();
    }
    msg
}
