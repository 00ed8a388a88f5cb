//! Where a pod's network namespace and containers are, asked of the node's container
//! runtime over its CRI socket (`--cri-socket`) by pod uid: the agent holds no Kubernetes
//! credentials, and the runtime is what knows the pods of this node. Read-only (see the
//! `cri` crate). A container's root file system is the node's path to it, as a network
//! namespace is.
//!
//! The path is the node's, as the runtime names it (`/run/containerd/…/netns/cni-…` or
//! `/run/netns/cni-…`), and is opened as it is: an agent in a container needs the
//! runtime's state directory mounted at the same path, with host-to-container mount
//! propagation so that new pods' namespaces appear in it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crds::names::PodUid;
use cri::{Container, Cri, PodSandbox, SandboxState};
use futures::StreamExt;

use super::PodRequest;
use crate::error::{AgentError, Reason};

/// The runtime's socket unless told otherwise (containerd's).
pub const DEFAULT_CRI_SOCKET: &str = cri::DEFAULT_SOCKET;
/// containerd's state directory unless told otherwise.
pub const DEFAULT_CRI_STATE_DIR: &str = cri::DEFAULT_CONTAINERD_STATE_DIR;

/// Questions to the runtime in flight at once for one Apply (each pod takes two calls).
const CONCURRENT_LOOKUPS: usize = 16;

/// A pod's network namespace, or why it has none to attach in.
pub type Resolved = Result<PathBuf, AgentError>;

/// Where a pod's hooks go, as the runtime says.
#[derive(Clone, Debug)]
pub struct Located {
    /// Its network namespace (for XDP and TC).
    pub netns: Resolved,
    /// Its containers, running or not (asked only for a pod with uprobes to attach).
    pub containers: Result<Vec<Container>, AgentError>,
}

impl Located {
    fn failed(e: AgentError) -> Self {
        Self { netns: Err(e.clone()), containers: Err(e) }
    }
}

/// Finds pods' network namespaces through the runtime at one socket. Connects on first use
/// and again after a failed connection, so an agent started before its runtime (or
/// without one, attaching in no pod) is not held up by it.
pub struct PodResolver {
    socket: PathBuf,
    /// containerd's state directory (where container roots are).
    state_dir: PathBuf,
    client: tokio::sync::Mutex<Option<Cri>>,
}

impl PodResolver {
    pub fn new(socket: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into(), state_dir: state_dir.into(), client: tokio::sync::Mutex::default() }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Where each of `pods` is, asked concurrently: its network namespace, and (the pods
    /// paired with `true`) its containers.
    pub async fn locate<'a>(
        &self,
        pods: impl IntoIterator<Item = (&'a PodRequest, bool)>,
    ) -> BTreeMap<PodUid, Located> {
        // Owned: each lookup is a future of its own, alive while others are in flight.
        let pods: Vec<(PodRequest, bool)> = pods.into_iter().map(|(p, c)| (p.clone(), c)).collect();
        if pods.is_empty() {
            return BTreeMap::new();
        }
        let cri = match self.client().await {
            Ok(c) => c,
            Err(e) => {
                return pods.iter().map(|(p, _)| (p.uid.clone(), Located::failed(runtime_error(p, &e)))).collect();
            }
        };
        futures::stream::iter(pods)
            .map(move |(p, containers)| {
                let cri = cri.clone();
                async move {
                    let found = match cri.pod_sandbox(p.uid.as_str()).await {
                        Ok(sandbox) => locate_in(&cri, &p, sandbox, containers).await,
                        Err(e) => Located::failed(runtime_error(&p, &e)),
                    };
                    (p.uid, found)
                }
            })
            .buffer_unordered(CONCURRENT_LOOKUPS)
            .collect()
            .await
    }

    /// The ids of the containers running on this node now (one call).
    pub async fn running_containers(&self) -> Result<BTreeSet<String>, AgentError> {
        let ids = match self.client().await {
            Ok(cri) => cri.running_container_ids().await,
            Err(e) => Err(e),
        };
        ids.map(|ids| ids.into_iter().collect())
            .map_err(|e| AgentError::new(Reason::AttachFailed, format!("cannot ask which containers run: {e}")))
    }

    async fn client(&self) -> Result<Cri, cri::CriError> {
        let mut held = self.client.lock().await;
        if let Some(c) = held.as_ref() {
            return Ok(c.clone());
        }
        let options = cri::Options { containerd_state_dir: self.state_dir.clone(), ..Default::default() };
        let c = Cri::connect_with(&self.socket, options).await?;
        *held = Some(c.clone());
        Ok(c)
    }
}

/// A pod's network namespace from its sandbox, and its containers when `containers`.
async fn locate_in(cri: &Cri, pod: &PodRequest, sandbox: Option<PodSandbox>, containers: bool) -> Located {
    let sandbox_id = sandbox.as_ref().filter(|s| s.state == SandboxState::Ready).map(|s| s.id.clone());
    let netns = netns_from(pod, sandbox);
    let containers = match (containers, sandbox_id, &netns) {
        (false, _, _) => Ok(Vec::new()),
        (true, Some(id), _) => cri.containers(&id).await.map_err(|e| runtime_error(pod, &e)),
        // No ready sandbox: what `netns_from` said.
        (true, None, Err(e)) => Err(e.clone()),
        (true, None, Ok(_)) => Err(AgentError::internal(format!("{} has a network but no sandbox", pod.context()))),
    };
    Located { netns, containers }
}

/// The running container `name` of a pod, among what the runtime listed (the newest
/// attempt), or why there is none to probe.
pub fn running_container<'a>(
    pod: &PodRequest,
    containers: &'a [Container],
    name: &str,
) -> Result<&'a Container, AgentError> {
    let who = format!("container {name} of {}", pod.context());
    let not_found = |why: &str| AgentError::new(Reason::TargetNotFound, format!("{who} {why}"));
    let newest = containers.iter().filter(|c| c.name == name).max_by_key(|c| c.attempt);
    match newest {
        None => Err(not_found("has not been created on this node yet")),
        Some(c) if c.state != cri::ContainerState::Running => {
            Err(not_found("is not running (it exited, or is being restarted): it is probed once it runs again"))
        }
        Some(c) if c.rootfs.is_none() => Err(not_found("runs, but the runtime names no root file system for it")),
        Some(c) => Ok(c),
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
            containers: vec![],
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
        let resolver = PodResolver::new(dir.path().join("none.sock"), dir.path());
        let p = pod();
        let found = rt.block_on(resolver.locate([(&p, true)]));
        let e = found[&p.uid].netns.as_ref().unwrap_err();
        assert_eq!(e.reason, Reason::AttachFailed);
        assert!(
            e.message.starts_with("cannot ask where pod shop/web-0 runs: cannot reach the container runtime at"),
            "{e}"
        );
        assert!(e.message.contains("--cri-socket"), "says what to fix: {e}");
        assert_eq!(found[&p.uid].containers.as_ref().unwrap_err(), e, "containers say the same");
        assert!(rt.block_on(resolver.locate([])).is_empty(), "no pod, no connection");
    }

    #[test]
    fn the_newest_running_attempt_of_a_container_is_probed_and_others_say_why_not() {
        let c = |attempt: u32, state: cri::ContainerState, rootfs: Option<&str>| Container {
            id: format!("c{attempt}"),
            name: "app".into(),
            state,
            attempt,
            pid: Some(9),
            rootfs: rootfs.map(PathBuf::from),
        };
        use cri::ContainerState::{Exited, Running};
        let listed = [c(0, Exited, None), c(1, Running, Some("/r1"))];
        assert_eq!(running_container(&pod(), &listed, "app").unwrap().id, "c1");
        let e = running_container(&pod(), &listed, "sidecar").unwrap_err();
        assert_eq!(e.reason, Reason::TargetNotFound);
        assert_eq!(e.message, "container sidecar of pod shop/web-0 has not been created on this node yet");
        let restarting = [c(0, Running, Some("/r0")), c(1, Exited, None)];
        let e = running_container(&pod(), &restarting, "app").unwrap_err();
        assert!(e.message.contains("is not running"), "the newest attempt counts: {e}");
    }
}
