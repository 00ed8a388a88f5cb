//! What can go wrong talking to the runtime, each case saying what to do about it. The
//! variants are for callers to classify (reachability, a slow runtime, a refusal by code,
//! an answer bpfleet cannot read, a bad argument); the messages are for people.

use std::path::PathBuf;
use std::time::Duration;

/// What to do when the socket cannot be reached: where the agent looks for it, and how the
/// chart gives it one.
pub const SOCKET_HINT: &str = "mount the node's container runtime directory into the agent at the same path \
     (chart value agent.criRuntimeDir) and name its socket with --cri-socket (agent.criSocket); containerd's \
     default is /run/containerd/containerd.sock";

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// No connection: no socket at the path, no permission, nobody listening, or the
    /// connection broke (a runtime restarting).
    #[error("cannot reach the container runtime at {}: {cause} ({SOCKET_HINT})", socket.display())]
    Unreachable { socket: PathBuf, cause: String },
    /// The runtime took longer than the client's timeout to answer.
    #[error(
        "the container runtime at {} did not answer {call} within {after:?}; it may be overloaded or hung \
         (crictl --runtime-endpoint unix://{} {call_hint} shows whether it answers anyone)",
        socket.display(), socket.display(), call_hint = crictl_for(call)
    )]
    Timeout { socket: PathBuf, call: &'static str, after: Duration },
    /// The runtime answered with an error.
    #[error("the container runtime at {} refused {call}: {code:?}{}{}", socket.display(), detail(message), refusal_hint(*code))]
    Refused { socket: PathBuf, call: &'static str, code: tonic::Code, message: String },
    /// The runtime answered, but not in a form bpfleet reads (not containerd's verbose info,
    /// an id that cannot be a file name, more containers than the limit).
    #[error("the container runtime at {} answered {call} with {what}", socket.display())]
    BadAnswer { socket: PathBuf, call: &'static str, what: String },
    /// The caller's argument is wrong (a pod uid, a sandbox id).
    #[error("{0}")]
    InvalidArgument(String),
}

pub type Result<T, E = CriError> = std::result::Result<T, E>;

fn refusal_hint(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Unimplemented => {
            " (it does not serve the CRI runtime.v1 API: bpfleet needs containerd 1.6 or newer with its CRI plugin \
             enabled)"
        }
        tonic::Code::ResourceExhausted => " (the runtime is short of resources or the answer is over its own limit)",
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            " (the agent must run as root to use the socket)"
        }
        _ => "",
    }
}

fn detail(message: &str) -> String {
    if message.is_empty() { String::new() } else { format!(": {message}") }
}

fn crictl_for(call: &str) -> &'static str {
    match call {
        "Version" => "version",
        "ListPodSandbox" | "PodSandboxStatus" => "pods",
        _ => "ps -a",
    }
}

/// The innermost cause of an error, which is what says why (a transport error alone says
/// only "transport error"; the io error under it says "Connection refused").
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = e;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    innermost.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_says_where_and_what_to_do() {
        let socket = PathBuf::from("/run/containerd/containerd.sock");
        let e =
            CriError::Unreachable { socket: socket.clone(), cause: "No such file or directory (os error 2)".into() };
        assert_eq!(
            e.to_string(),
            format!(
                "cannot reach the container runtime at /run/containerd/containerd.sock: No such file or directory \
                 (os error 2) ({SOCKET_HINT})"
            )
        );
        let e = CriError::Timeout { socket: socket.clone(), call: "ListPodSandbox", after: Duration::from_secs(2) };
        assert!(
            e.to_string().starts_with(
                "the container runtime at /run/containerd/containerd.sock did not answer ListPodSandbox within 2s"
            ),
            "{e}"
        );
        assert!(e.to_string().contains("crictl --runtime-endpoint unix:///run/containerd/containerd.sock pods"), "{e}");
        let e = CriError::Refused {
            socket,
            call: "Version",
            code: tonic::Code::Unimplemented,
            message: "unknown service runtime.v1.RuntimeService".into(),
        };
        assert!(e.to_string().contains("refused Version: Unimplemented: unknown service runtime.v1.RuntimeService (it does not serve the CRI runtime.v1 API"), "{e}");
    }

    #[test]
    fn the_root_cause_is_the_innermost_error() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no socket");
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(root_cause(&Outer(io)), "no socket");
        assert_eq!(root_cause(&Outer(std::io::Error::other("x")).0), "x");
    }
}
