//! What attaching inside pods shares (`netns`, `container`): where a hook is, named for
//! messages, and the one outcome a caller must tell apart from a failure: the pod or
//! container went away while the agent was attaching. Pods stop at any moment; their
//! attachments go with them, and that is churn, not an error to report.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{AgentError, Reason};

/// A place inside a pod as the node names it, with the caller's words for whose it is:
/// "the network namespace /run/…/cni-… (pod team-a/web-7f…)".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    kind: PlaceKind,
    path: PathBuf,
    context: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlaceKind {
    /// A pod's network namespace, a bind mount of nsfs.
    NetworkNamespace,
    /// A container's root filesystem directory.
    ContainerRoot,
}

impl Place {
    pub fn new(kind: PlaceKind, path: impl Into<PathBuf>, context: impl Into<String>) -> Self {
        Self { kind, path: path.into(), context: context.into() }
    }

    pub fn kind(&self) -> PlaceKind {
        self.kind
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The caller's words for whose place it is ("pod team-a/web-7f…").
    pub fn context(&self) -> &str {
        &self.context
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            PlaceKind::NetworkNamespace => "the network namespace",
            PlaceKind::ContainerRoot => "the container root",
        };
        write!(f, "{kind} {}", self.path.display())?;
        if !self.context.is_empty() {
            write!(f, " ({})", self.context)?;
        }
        Ok(())
    }
}

/// An attach inside a pod either fails (an [`AgentError`], classified by its reason as
/// everywhere in the agent) or finds the pod gone.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    /// The network namespace or container root no longer exists (or no longer is what
    /// its path named when the attach began): the pod or container stopped. Nothing of
    /// the attach is left behind; the caller drops the pod's attachments.
    #[error("{0} no longer exists: the pod or container stopped")]
    Gone(Place),
    #[error(transparent)]
    Failed(#[from] AgentError),
}

impl PodError {
    pub fn is_gone(&self) -> bool {
        matches!(self, PodError::Gone(_))
    }
}

/// For callers that report it like any other error: a gone pod is a missing target.
impl From<PodError> for AgentError {
    fn from(e: PodError) -> Self {
        match e {
            PodError::Gone(_) => AgentError::new(Reason::TargetNotFound, e.to_string()),
            PodError::Failed(e) => e,
        }
    }
}

/// A link pinned in bpffs: the pin keeps it attached whatever happens to the thread
/// or namespace that created it (bpffs is not per namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPin {
    pub path: PathBuf,
    /// The link's kernel id.
    pub link_id: u32,
}

impl LinkPin {
    /// Detach the link in the kernel (BPF_LINK_DETACH, where its type allows) and remove
    /// its pin. Detaching first means the hook is free even while some other process
    /// still holds the link open. A pin already gone counts as done.
    pub fn detach(&self) -> Result<(), AgentError> {
        match crate::kernel::obj_get(&self.path) {
            Ok(fd) => {
                if let Err(e) = link_detach(&fd) {
                    // Perf-event links (uprobes) cannot be detached, and a link whose
                    // interface went is detached already: the pin's removal suffices.
                    tracing::debug!(pin = %self.path.display(), error = %e, "link not detached before unpinning");
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => tracing::debug!(pin = %self.path.display(), error = %e, "cannot open the pinned link"),
        }
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(AgentError::new(
                Reason::PinFailed,
                format!("cannot remove the link pin {}: {e}", self.path.display()),
            )),
            _ => Ok(()),
        }
    }
}

/// BPF_LINK_DETACH: the link stays open but no longer attached.
fn link_detach(link: &std::os::fd::OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const BPF_LINK_DETACH: libc::c_long = 34;
    // union bpf_attr for BPF_LINK_DETACH: { __u32 link_fd; }, zero-padded.
    let attr: [u32; 2] = [link.as_raw_fd() as u32, 0];
    // SAFETY: a zero-padded bpf_attr of the size passed; the fd stays open for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_read_as_the_pod_names_them() {
        let p = Place::new(PlaceKind::NetworkNamespace, "/run/netns/cni-1", "pod team-a/web-7f");
        assert_eq!(p.to_string(), "the network namespace /run/netns/cni-1 (pod team-a/web-7f)");
        let c = Place::new(PlaceKind::ContainerRoot, "/rootfs", "");
        assert_eq!(c.to_string(), "the container root /rootfs");
        let gone = AgentError::from(PodError::Gone(p));
        assert_eq!(gone.reason, Reason::TargetNotFound);
        assert_eq!(
            gone.message,
            "the network namespace /run/netns/cni-1 (pod team-a/web-7f) no longer exists: the pod or container stopped"
        );
    }
}
