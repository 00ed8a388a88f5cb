//! The runtime-specific part of a verbose status: containerd puts one JSON document under
//! `info["info"]` of `PodSandboxStatus` and `ContainerStatus` (verbose). Read here, as plain
//! data, are only the fields bpfleet needs:
//!
//! - sandbox: `pid` (the pause process), `netNamespaceClosed`, and the OCI runtime spec's
//!   `runtimeSpec.linux.namespaces[]`, whose `{"type": "network", "path": …}` entry names
//!   the pod's network namespace (no such entry: the pod uses the node's network);
//! - container: `pid` (its init process) and `runtimeSpec.root.path`, the root file
//!   system, relative to the task's bundle directory (containerd writes `rootfs`).
//!
//! A pid of 0 means no process (a stopped sandbox, a container not running).
//!
//! What containerd 1.6.20 (Debian 12, CRI v1) answers, checked on a node of the lab cluster
//! (`tests/containerd.rs` holds it against the kernel):
//! - `info` has the one key `info`. The sandbox document's keys: `pid`, `processStatus`,
//!   `netNamespaceClosed`, `image`, `snapshotKey`, `snapshotter`, `runtimeHandler`,
//!   `runtimeType`, `runtimeOptions`, `config`, `runtimeSpec`, `cniResult`; the container
//!   document's: `sandboxID`, `pid`, `removing`, `snapshotKey`, `snapshotter`,
//!   `runtimeType`, `runtimeOptions`, `config`, `runtimeSpec`.
//! - The network entry's path is `/run/containerd/io.containerd.grpc.v1.cri/netns/cni-<uuid>`
//!   with `netns_mounts_under_state_dir = true` (`/var/run/netns/cni-<uuid>` without), an
//!   nsfs bind mount: the namespace the pause process and every container of the pod are
//!   in. A `hostNetwork` pod's spec has no network entry. (A container's own spec names
//!   its network as `/proc/<pause pid>/ns/net`, which is not read here.)
//! - `pid` is in the node's PID namespace: the pause process for a sandbox, the
//!   container's first process for a container; 0 once it exited.
//! - `runtimeSpec.root.path` is `rootfs`, relative to the task bundle
//!   `/run/containerd/io.containerd.runtime.v2.task/k8s.io/<id>/`. While the task exists it
//!   is an overlay mount in the node's mount namespace, the very directory the container's
//!   processes see as `/` (same device and inode as `/proc/<pid>/root`); the bundle is gone
//!   once the container has exited.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// The key of `info` whose value is the runtime's JSON document.
pub const INFO_KEY: &str = "info";

/// The containerd namespace the CRI plugin keeps Kubernetes' containers in.
pub const CONTAINERD_K8S_NAMESPACE: &str = "k8s.io";

/// Where containerd's runc v2 shims keep task bundles, under its state directory.
pub const TASK_STATE_SUBDIR: &str = "io.containerd.runtime.v2.task";

/// What a sandbox's verbose info says about where the pod lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxInfo {
    pub pid: Option<u32>,
    pub host_network: bool,
    pub network_namespace_path: Option<PathBuf>,
}

/// What a container's verbose info says about where the container lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub pid: Option<u32>,
    /// `runtimeSpec.root.path` as written (relative to the bundle, or absolute).
    pub root: Option<PathBuf>,
}

#[derive(Deserialize)]
struct SandboxDoc {
    #[serde(default)]
    pid: u32,
    #[serde(default, rename = "netNamespaceClosed")]
    net_namespace_closed: bool,
    #[serde(rename = "runtimeSpec")]
    runtime_spec: Option<Spec>,
}

#[derive(Deserialize)]
struct ContainerDoc {
    #[serde(default)]
    pid: u32,
    #[serde(rename = "runtimeSpec")]
    runtime_spec: Option<Spec>,
}

/// The few fields of an OCI runtime spec (config.json) read here.
#[derive(Deserialize)]
struct Spec {
    root: Option<Root>,
    linux: Option<Linux>,
}

#[derive(Deserialize)]
struct Root {
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct Linux {
    #[serde(default)]
    namespaces: Vec<Namespace>,
}

#[derive(Deserialize)]
struct Namespace {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

/// Reads a sandbox's verbose `info`. Errors say what is missing, for a message about the
/// runtime's answer.
pub fn sandbox_info(info: &HashMap<String, String>) -> Result<SandboxInfo, String> {
    let doc: SandboxDoc = document(info)?;
    let spec = doc.runtime_spec.ok_or("it has no runtimeSpec")?;
    let namespaces = spec.linux.map(|l| l.namespaces).unwrap_or_default();
    let network = namespaces.iter().find(|n| n.kind == "network");
    let host_network = network.is_none();
    let network_namespace_path = match network {
        None => None,
        Some(_) if doc.net_namespace_closed => None,
        Some(n) if n.path.is_empty() => {
            return Err("its network namespace has no path (runtimeSpec.linux.namespaces[type=network].path)".into());
        }
        Some(n) => Some(absolute(&n.path, "runtimeSpec.linux.namespaces[type=network].path")?),
    };
    Ok(SandboxInfo { pid: nonzero(doc.pid), host_network, network_namespace_path })
}

/// Reads a container's verbose `info`.
pub fn container_info(info: &HashMap<String, String>) -> Result<ContainerInfo, String> {
    let doc: ContainerDoc = document(info)?;
    let root = doc.runtime_spec.and_then(|s| s.root).map(|r| r.path).filter(|p| !p.is_empty()).map(PathBuf::from);
    Ok(ContainerInfo { pid: nonzero(doc.pid), root })
}

/// Where containerd has mounted a running container's root file system on the node:
/// `<state_dir>/io.containerd.runtime.v2.task/k8s.io/<id>/<root>`, `root` being the
/// spec's `root.path` (`rootfs`). An absolute `root` is taken as it is. `None` when the
/// spec's root is a path that could leave the bundle (`..`).
pub fn containerd_rootfs(state_dir: &Path, container_id: &str, root: &Path) -> Option<PathBuf> {
    if root.is_absolute() {
        return Some(root.to_path_buf());
    }
    if !root.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        return None;
    }
    Some(state_dir.join(TASK_STATE_SUBDIR).join(CONTAINERD_K8S_NAMESPACE).join(container_id).join(root))
}

fn document<T: for<'de> Deserialize<'de>>(info: &HashMap<String, String>) -> Result<T, String> {
    let text = info.get(INFO_KEY).ok_or_else(|| {
        let mut keys: Vec<&str> = info.keys().map(String::as_str).collect();
        keys.sort_unstable();
        format!("its verbose info has no {INFO_KEY:?} entry (keys: {keys:?}); bpfleet reads containerd's layout")
    })?;
    serde_json::from_str(text).map_err(|e| format!("its verbose info[{INFO_KEY:?}] is not the JSON expected: {e}"))
}

fn absolute(path: &str, field: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(path);
    if p.is_absolute() { Ok(p) } else { Err(format!("{field} is {path:?}, not an absolute path")) }
}

fn nonzero(pid: u32) -> Option<u32> {
    (pid != 0).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(json: &str) -> HashMap<String, String> {
        HashMap::from([(INFO_KEY.to_string(), json.to_string())])
    }

    /// Trimmed from what containerd 1.6 answers for a pod sandbox on a CNI network.
    const POD_SANDBOX: &str = r#"{
        "pid": 4242, "processStatus": "running", "netNamespaceClosed": false,
        "image": "bpfk.local/pause:3.7",
        "runtimeSpec": {"ociVersion": "1.0.2-dev", "root": {"path": "rootfs", "readonly": true},
            "linux": {"namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network", "path": "/run/containerd/io.containerd.grpc.v1.cri/netns/cni-0b6e"}]}}}"#;

    #[test]
    fn a_pod_sandbox_gives_its_pid_and_network_namespace() {
        let s = sandbox_info(&info(POD_SANDBOX)).unwrap();
        assert_eq!(s.pid, Some(4242));
        assert!(!s.host_network);
        assert_eq!(s.network_namespace_path, Some("/run/containerd/io.containerd.grpc.v1.cri/netns/cni-0b6e".into()));
    }

    #[test]
    fn a_host_network_sandbox_has_no_network_namespace_entry() {
        let s = sandbox_info(&info(
            r#"{"pid": 7, "runtimeSpec": {"linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}}}"#,
        ))
        .unwrap();
        assert!(s.host_network);
        assert_eq!(s.network_namespace_path, None);
    }

    #[test]
    fn a_stopped_sandbox_has_no_pid_and_a_closed_namespace() {
        let s = sandbox_info(&info(
            r#"{"pid": 0, "netNamespaceClosed": true,
                "runtimeSpec": {"linux": {"namespaces": [{"type": "network", "path": "/var/run/netns/cni-1"}]}}}"#,
        ))
        .unwrap();
        assert_eq!(s, SandboxInfo { pid: None, host_network: false, network_namespace_path: None });
    }

    #[test]
    fn sandbox_info_that_is_not_containerds_is_refused_with_what_is_missing() {
        let e = sandbox_info(&HashMap::from([("sandboxInfo".to_string(), "{}".to_string())])).unwrap_err();
        assert!(e.contains(r#"no "info" entry (keys: ["sandboxInfo"])"#), "{e}");
        let e = sandbox_info(&info("not json")).unwrap_err();
        assert!(e.contains("not the JSON expected"), "{e}");
        let e = sandbox_info(&info(r#"{"pid": 1}"#)).unwrap_err();
        assert!(e.contains("no runtimeSpec"), "{e}");
        let e = sandbox_info(&info(r#"{"pid": -1, "runtimeSpec": {}}"#)).unwrap_err();
        assert!(e.contains("not the JSON expected"), "{e}");
    }

    #[test]
    fn a_network_namespace_path_must_be_absolute_and_present() {
        let e = sandbox_info(&info(
            r#"{"runtimeSpec": {"linux": {"namespaces": [{"type": "network", "path": "netns/x"}]}}}"#,
        ))
        .unwrap_err();
        assert!(e.contains(r#"is "netns/x", not an absolute path"#), "{e}");
        let e =
            sandbox_info(&info(r#"{"runtimeSpec": {"linux": {"namespaces": [{"type": "network"}]}}}"#)).unwrap_err();
        assert!(e.contains("has no path"), "{e}");
    }

    #[test]
    fn a_container_gives_its_pid_and_root() {
        let c = container_info(&info(
            r#"{"sandboxID": "abc", "pid": 5151, "removing": false, "runtimeSpec": {"root": {"path": "rootfs"}}}"#,
        ))
        .unwrap();
        assert_eq!(c, ContainerInfo { pid: Some(5151), root: Some("rootfs".into()) });
        let exited = container_info(&info(r#"{"pid": 0, "runtimeSpec": {"root": {"path": ""}}}"#)).unwrap();
        assert_eq!(exited, ContainerInfo { pid: None, root: None });
    }

    #[test]
    fn the_rootfs_is_in_the_task_bundle_and_never_leaves_it() {
        let state = Path::new("/run/containerd");
        assert_eq!(
            containerd_rootfs(state, "c0ffee", Path::new("rootfs")),
            Some("/run/containerd/io.containerd.runtime.v2.task/k8s.io/c0ffee/rootfs".into())
        );
        assert_eq!(containerd_rootfs(state, "c0ffee", Path::new("/mnt/root")), Some("/mnt/root".into()));
        assert_eq!(containerd_rootfs(state, "c0ffee", Path::new("../../etc")), None);
    }
}
