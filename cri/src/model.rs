//! What the agent learns about a pod from the runtime, in bpfleet's own types. Paths are
//! the node's paths (as the runtime sees them); an agent in a container resolves them
//! inside its view of the host's root.

use std::path::PathBuf;

/// The runtime's name and version, as `Version` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeVersion {
    /// The runtime, e.g. `containerd`.
    pub runtime_name: String,
    /// Its version, e.g. `1.6.20~ds1`.
    pub runtime_version: String,
    /// The CRI version it serves, e.g. `v1`.
    pub runtime_api_version: String,
}

/// Whether a sandbox's namespaces are up. A pod whose sandbox was recreated (a node
/// reboot, a killed pause process) has one `NotReady` sandbox per earlier attempt next to
/// the `Ready` one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxState {
    Ready,
    NotReady,
}

/// A pod's sandbox on this node: the pause process that holds the pod's namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSandbox {
    /// The runtime's id of the sandbox (64 hex digits for containerd).
    pub id: String,
    /// The pod's namespace, name and uid, as the kubelet gave them to the runtime.
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Which sandbox of the pod this is: 0 for the first, one more each time the kubelet
    /// had to recreate it.
    pub attempt: u32,
    pub state: SandboxState,
    /// The sandbox's (pause) process in the runtime's PID namespace (the node's), while
    /// it runs.
    pub pid: Option<u32>,
    /// The pod shares the node's network namespace (`hostNetwork: true`): it has no
    /// interfaces of its own to attach to. Known for a ready sandbox only (`false`
    /// otherwise).
    pub host_network: bool,
    /// The bind mount that keeps the pod's network namespace alive, e.g.
    /// `/run/containerd/io.containerd.grpc.v1.cri/netns/cni-<uuid>` (containerd with
    /// `netns_mounts_under_state_dir`) or `/var/run/netns/cni-<uuid>`. Opening it gives
    /// the namespace (`setns(CLONE_NEWNET)`). `None` when the pod uses the node's network
    /// or the runtime has already closed the namespace (a sandbox that is not ready).
    pub network_namespace_path: Option<PathBuf>,
}

/// A container's state, as the runtime reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, never started.
    Created,
    Running,
    Exited,
    Unknown,
}

/// A container of a sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The runtime's id of the container (64 hex digits for containerd).
    pub id: String,
    /// The container's name in the pod spec (`spec.containers[].name`).
    pub name: String,
    pub state: ContainerState,
    /// 0 for the first run of this container in its sandbox, one more for each restart
    /// (`restartCount`): a restarted container is a new container with a new id.
    pub attempt: u32,
    /// The container's init process in the runtime's PID namespace (the node's), while
    /// it runs.
    pub pid: Option<u32>,
    /// The container's root file system as mounted on the node (for containerd the task
    /// bundle's `rootfs`, e.g.
    /// `/run/containerd/io.containerd.runtime.v2.task/k8s.io/<id>/rootfs`), while the
    /// container runs. A path inside the container is resolved inside this directory,
    /// never outside it.
    pub rootfs: Option<PathBuf>,
}
