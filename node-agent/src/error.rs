//! The agent's errors: a machine-readable reason (becomes `BpfProgram.status.failures[].reason`
//! and a metric label), the program at fault when there is one, and a message in words.
//! `server.rs` turns it into a gRPC status.

use std::fmt;

/// Why an operation failed: one list for agent, operator and status (`crds::reason`).
pub use crds::reason::Reason;

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

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

/// An error with its chain of causes (see `crds::error::chain`).
pub use crds::error::chain;

/// The errno a failed kernel call returned, wherever it sits in `e`'s chain of
/// causes: classify failures by kind, never by the wording of a message (which an
/// aya upgrade may change).
pub fn errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    use aya::programs::links::LinkError;
    use aya::programs::{ProgramError, TcError, XdpError};
    use aya::sys::{NetlinkError, SyscallError};
    let direct = |err: &(dyn std::error::Error + 'static)| -> Option<i32> {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        if let Some(s) = err.downcast_ref::<SyscallError>() {
            return s.io_error.raw_os_error();
        }
        if let Some(n) = err.downcast_ref::<NetlinkError>() {
            return n.raw_os_error();
        }
        if let Some(t) = err.downcast_ref::<TcError>() {
            return match t {
                TcError::NetlinkError(n) => n.raw_os_error(),
                TcError::IoError(io) => io.raw_os_error(),
                _ => None,
            };
        }
        if let Some(l) = err.downcast_ref::<LinkError>() {
            return match l {
                LinkError::SyscallError(s) => s.io_error.raw_os_error(),
                _ => None,
            };
        }
        match err.downcast_ref::<ProgramError>()? {
            ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
            ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
            ProgramError::XdpError(XdpError::NetlinkError(n)) => n.raw_os_error(),
            ProgramError::TcError(TcError::NetlinkError(n)) => n.raw_os_error(),
            ProgramError::TcError(TcError::IoError(io)) => io.raw_os_error(),
            _ => None,
        }
    };
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(n) = direct(err) {
            return Some(n);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use aya::programs::ProgramError;
    use aya::sys::SyscallError;

    use super::*;

    #[test]
    fn errnos_are_found_through_aya_wrappers() {
        let syscall = |n| SyscallError { call: "bpf_link_create", io_error: std::io::Error::from_raw_os_error(n) };
        assert_eq!(errno(&ProgramError::SyscallError(syscall(libc::EBUSY))), Some(libc::EBUSY));
        assert_eq!(errno(&syscall(libc::E2BIG)), Some(libc::E2BIG));
        assert_eq!(errno(&std::io::Error::from_raw_os_error(libc::ENOENT)), Some(libc::ENOENT));
        assert_eq!(errno(&ProgramError::UnexpectedProgramType), None);
        // Whatever the message says, only the number counts.
        let reworded = std::io::Error::other("os error 16 busy");
        assert_eq!(errno(&reworded), None);
    }
}
