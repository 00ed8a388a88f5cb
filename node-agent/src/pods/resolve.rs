//! Where a pod's network namespace is, asked of the node's container runtime over its CRI
//! socket (`--cri-socket`) by pod uid: the agent holds no Kubernetes credentials, and the
//! runtime is what knows the pods of this node. Read-only (see the `cri` crate).
//!
//! The path is the node's, as the runtime names it (`/run/containerd/…/netns/cni-…` or
//! `/run/netns/cni-…`), and is opened as it is: an agent in a container needs the
//! runtime's state directory mounted at the same path, with host-to-container mount
//! propagation so that new pods' namespaces appear in it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crds::names::PodUid;
use cri::{Cri, PodSandbox, SandboxState};
use futures::StreamExt;

use super::PodRequest;
use crate::error::{AgentError, Reason};

/// The runtime's socket unless told otherwise (containerd's).
pub const DEFAULT_CRI_SOCKET: &str = cri::DEFAULT_SOCKET;

/// Questions to the runtime in flight at once for one Apply (each pod takes two calls).
const CONCURRENT_LOOKUPS: usize = 16;

/// A pod's network namespace, or why it has none to attach in.
pub type Resolved = Result<PathBuf, AgentError>;

/// Finds pods' network namespaces through the runtime at one socket. Connects on first use
/// and again after a failed connection, so an agent started before its runtime (or
/// without one, attaching in no pod) is not held up by it.
pub struct PodResolver {
    socket: PathBuf,
    client: tokio::sync::Mutex<Option<Cri>>,
}

impl PodResolver {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into(), client: tokio::sync::Mutex::default() }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The network namespace of each of `pods`, asked concurrently.
    pub async fn netns_of<'a>(&self, pods: impl IntoIterator<Item = &'a PodRequest>) -> BTreeMap<PodUid, Resolved> {
        // Owned: each lookup is a future of its own, alive while others are in flight.
        let pods: Vec<PodRequest> = pods.into_iter().cloned().collect();
        if pods.is_empty() {
            return BTreeMap::new();
        }
        let cri = match self.client().await {
            Ok(c) => c,
            Err(e) => return pods.iter().map(|p| (p.uid.clone(), Err(runtime_error(p, &e)))).collect(),
        };
        futures::stream::iter(pods)
            .map(move |p| {
                let cri = cri.clone();
                async move {
                    let found = match cri.pod_sandbox(p.uid.as_str()).await {
                        Ok(sandbox) => netns_from(&p, sandbox),
                        Err(e) => Err(runtime_error(&p, &e)),
                    };
                    (p.uid, found)
                }
            })
            .buffer_unordered(CONCURRENT_LOOKUPS)
            .collect()
            .await
    }

    async fn client(&self) -> Result<Cri, cri::CriError> {
        let mut held = self.client.lock().await;
        if let Some(c) = held.as_ref() {
            return Ok(c.clone());
        }
        let c = Cri::connect(&self.socket).await?;
        *held = Some(c.clone());
        Ok(c)
    }
}

fn runtime_error(pod: &PodRequest, e: &cri::CriError) -> AgentError {
    AgentError::new(Reason::AttachFailed, format!("cannot ask where {} runs: {e}", pod.context()))
}

/// What the runtime's answer about a pod means for attaching in it: its network
/// namespace, or (TargetNotFound) that it has none here now, or that it has none of its
/// own (a pod on the node's network has only the node's interfaces, which programs inside
/// pods never touch).
pub fn netns_from(pod: &PodRequest, sandbox: Option<PodSandbox>) -> Resolved {
    let who = format!("{} (uid {})", pod.context(), pod.uid);
    let not_found = |why: &str| AgentError::new(Reason::TargetNotFound, format!("{who} {why}"));
    let Some(s) = sandbox else {
        return Err(not_found("has no sandbox on this node: it has not started here yet, or it is gone"));
    };
    if s.host_network {
        return Err(AgentError::new(
            Reason::AttachFailed,
            format!(
                "{who} uses the node's network (hostNetwork): it has no interfaces of its own, and programs \
                 inside pods never attach to the node's; select pods with their own network"
            ),
        ));
    }
    match (s.state, s.network_namespace_path) {
        (SandboxState::Ready, Some(path)) => Ok(path),
        (SandboxState::Ready, None) => Err(not_found("has no network namespace yet: it is still starting")),
        (SandboxState::NotReady, _) => {
            Err(not_found("is not running: its sandbox is stopped (the pod ended or is being restarted)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodRequest {
        PodRequest {
            uid: PodUid::new("6c8f1d2e-3b4a").unwrap(),
            namespace: "shop".into(),
            name: "web-0".into(),
            programs: vec![],
        }
    }

    fn sandbox(state: SandboxState, host_network: bool, netns: Option<&str>) -> PodSandbox {
        PodSandbox {
            id: "a".repeat(64),
            namespace: "shop".into(),
            name: "web-0".into(),
            uid: "6c8f1d2e-3b4a".into(),
            attempt: 0,
            state,
            pid: Some(7),
            host_network,
            network_namespace_path: netns.map(PathBuf::from),
        }
    }

    #[test]
    fn a_ready_sandbox_gives_its_namespace_and_anything_else_says_why_not() {
        let ok = netns_from(&pod(), Some(sandbox(SandboxState::Ready, false, Some("/run/netns/cni-1"))));
        assert_eq!(ok, Ok(PathBuf::from("/run/netns/cni-1")));
        let e = netns_from(&pod(), None).unwrap_err();
        assert_eq!(e.reason, Reason::TargetNotFound);
        assert_eq!(
            e.message,
            "pod shop/web-0 (uid 6c8f1d2e-3b4a) has no sandbox on this node: it has not started here yet, or it is gone"
        );
        let stopped = netns_from(&pod(), Some(sandbox(SandboxState::NotReady, false, None))).unwrap_err();
        assert_eq!(stopped.reason, Reason::TargetNotFound);
        assert!(stopped.message.contains("is not running"), "{stopped}");
        let host = netns_from(&pod(), Some(sandbox(SandboxState::Ready, true, None))).unwrap_err();
        assert_eq!(host.reason, Reason::AttachFailed);
        assert!(host.message.contains("hostNetwork"), "{host}");
    }

    #[test]
    fn no_runtime_is_every_pod_s_failure_in_words() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let resolver = PodResolver::new(dir.path().join("none.sock"));
        let p = pod();
        let found = rt.block_on(resolver.netns_of([&p]));
        let e = found[&p.uid].as_ref().unwrap_err();
        assert_eq!(e.reason, Reason::AttachFailed);
        assert!(
            e.message.starts_with("cannot ask where pod shop/web-0 runs: cannot reach the container runtime at"),
            "{e}"
        );
        assert!(e.message.contains("--cri-socket"), "says what to fix: {e}");
        assert!(rt.block_on(resolver.netns_of([])).is_empty(), "no pod, no connection");
    }
}
