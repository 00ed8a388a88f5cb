//! Pure decisions over the runtime's answers: what to ask for, which of a pod's sandboxes
//! is the pod's, what the runtime's ids may be, and the conversion of the wire types into
//! bpfleet's (`model`). No I/O here; `client.rs` calls these.

use std::collections::HashMap;
use std::path::Path;

use crate::info::{ContainerInfo, SandboxInfo, containerd_rootfs};
use crate::model::{Container, ContainerState, PodSandbox, SandboxState};
use crate::wire;

/// The label the kubelet puts on every sandbox and container it creates, with the pod's uid.
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";

/// Longest pod uid accepted (Kubernetes uids are 36-character UUIDs).
const MAX_UID_LEN: usize = 128;
/// Longest runtime id accepted (containerd's are 64 hex digits; its limit is 76).
const MAX_ID_LEN: usize = 128;

/// A pod uid is what the API server gives: a UUID, ASCII letters, digits and dashes.
pub fn check_pod_uid(uid: &str) -> Result<(), String> {
    if uid.is_empty() || uid.len() > MAX_UID_LEN || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!(
            "pod uid {uid:?} is not a Kubernetes uid (1 to {MAX_UID_LEN} ASCII letters, digits and dashes, \
             as in metadata.uid)"
        ));
    }
    Ok(())
}

/// A sandbox or container id from the runtime (or from a caller) becomes a path component
/// (the task bundle), so it must be one plain name: ASCII letters, digits, `.`, `_`, `-`,
/// not starting with `.`.
pub fn check_runtime_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a runtime id (1 to {MAX_ID_LEN} ASCII letters, digits, '.', '_' or '-', not starting with '.')"
        ))
    }
}

/// Asks the runtime for the sandboxes of one pod: the kubelet labels each with the pod's uid.
pub fn sandbox_filter(pod_uid: &str) -> wire::PodSandboxFilter {
    wire::PodSandboxFilter {
        label_selector: HashMap::from([(POD_UID_LABEL.to_string(), pod_uid.to_string())]),
        ..Default::default()
    }
}

/// Asks the runtime for every ready sandbox.
pub fn ready_filter() -> wire::PodSandboxFilter {
    let state = wire::PodSandboxStateValue { state: wire::PodSandboxState::SandboxReady as i32 };
    wire::PodSandboxFilter { state: Some(state), ..Default::default() }
}

/// The uids of the pods with a ready sandbox, sorted, each once. Sandboxes the kubelet did
/// not make (no uid label) are not pods and are left out, as are any not ready.
pub fn ready_pod_uids(listed: &[wire::PodSandbox]) -> Vec<String> {
    let mut uids: Vec<String> = listed
        .iter()
        .filter(|s| sandbox_state(s.state) == SandboxState::Ready)
        .filter_map(|s| s.labels.get(POD_UID_LABEL).cloned())
        .collect();
    uids.sort_unstable();
    uids.dedup();
    uids
}

/// Asks the runtime for the containers of one sandbox.
pub fn container_filter(sandbox_id: &str) -> wire::ContainerFilter {
    wire::ContainerFilter { pod_sandbox_id: sandbox_id.to_string(), ..Default::default() }
}

/// The sandbox that is the pod's now, among what the runtime listed: only sandboxes of this
/// pod count (the filter is checked again, whatever the runtime did with it); a ready one
/// wins over the not-ready ones that earlier attempts leave behind; among equals, the newest
/// (creation time, then attempt).
pub fn choose_sandbox<'a>(pod_uid: &str, listed: &'a [wire::PodSandbox]) -> Option<&'a wire::PodSandbox> {
    listed.iter().filter(|s| belongs_to(pod_uid, s)).max_by_key(|s| {
        let attempt = s.metadata.as_ref().map_or(0, |m| m.attempt);
        (sandbox_state(s.state) == SandboxState::Ready, s.created_at, attempt)
    })
}

fn belongs_to(pod_uid: &str, s: &wire::PodSandbox) -> bool {
    let by_label = s.labels.get(POD_UID_LABEL).map(String::as_str);
    let by_metadata = s.metadata.as_ref().map(|m| m.uid.as_str());
    by_label == Some(pod_uid) || (by_label.is_none() && by_metadata == Some(pod_uid))
}

/// An unknown value (a newer runtime) is not ready: nothing is attached to it.
pub fn sandbox_state(wire_state: i32) -> SandboxState {
    match wire::PodSandboxState::try_from(wire_state) {
        Ok(wire::PodSandboxState::SandboxReady) => SandboxState::Ready,
        _ => SandboxState::NotReady,
    }
}

pub fn container_state(wire_state: i32) -> ContainerState {
    match wire::ContainerState::try_from(wire_state) {
        Ok(wire::ContainerState::ContainerCreated) => ContainerState::Created,
        Ok(wire::ContainerState::ContainerRunning) => ContainerState::Running,
        Ok(wire::ContainerState::ContainerExited) => ContainerState::Exited,
        Ok(wire::ContainerState::ContainerUnknown) | Err(_) => ContainerState::Unknown,
    }
}

/// A sandbox from its status and verbose info.
pub fn pod_sandbox(status: &wire::PodSandboxStatus, info: SandboxInfo) -> PodSandbox {
    let meta = status.metadata.clone().unwrap_or_default();
    PodSandbox {
        id: status.id.clone(),
        namespace: meta.namespace,
        name: meta.name,
        uid: meta.uid,
        attempt: meta.attempt,
        state: sandbox_state(status.state),
        pid: info.pid,
        host_network: info.host_network,
        network_namespace_path: info.network_namespace_path,
    }
}

/// A sandbox that is not ready, from the listing alone: no process, no namespace to enter.
pub fn not_ready_sandbox(listed: &wire::PodSandbox) -> PodSandbox {
    let meta = listed.metadata.clone().unwrap_or_default();
    PodSandbox {
        id: listed.id.clone(),
        namespace: meta.namespace,
        name: meta.name,
        uid: meta.uid,
        attempt: meta.attempt,
        state: SandboxState::NotReady,
        pid: None,
        host_network: false,
        network_namespace_path: None,
    }
}

/// A container from its status and verbose info. The root file system is given only while
/// the container runs (the bundle exists from start until the task is deleted); `None` also
/// when the spec's root would leave the bundle.
pub fn container(status: &wire::ContainerStatus, info: ContainerInfo, state_dir: &Path) -> Container {
    let meta = status.metadata.clone().unwrap_or_default();
    let state = container_state(status.state);
    let running = state == ContainerState::Running && info.pid.is_some();
    let rootfs = if running { info.root.and_then(|r| containerd_rootfs(state_dir, &status.id, &r)) } else { None };
    Container { id: status.id.clone(), name: meta.name, state, attempt: meta.attempt, pid: info.pid, rootfs }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::listed_sandbox as listed;

    use wire::PodSandboxState::{SandboxNotready as NotReady, SandboxReady as Ready};

    #[test]
    fn the_ready_sandbox_wins_over_newer_not_ready_ones() {
        let all = [
            listed("old", "u1", NotReady, 10, 0),
            listed("live", "u1", Ready, 20, 1),
            listed("dying", "u1", NotReady, 30, 2),
        ];
        assert_eq!(choose_sandbox("u1", &all).unwrap().id, "live");
    }

    #[test]
    fn among_equals_the_newest_wins_then_the_latest_attempt() {
        let all = [listed("a", "u1", NotReady, 10, 0), listed("b", "u1", NotReady, 30, 1)];
        assert_eq!(choose_sandbox("u1", &all).unwrap().id, "b");
        let same_time = [listed("a", "u1", Ready, 10, 2), listed("b", "u1", Ready, 10, 1)];
        assert_eq!(choose_sandbox("u1", &same_time).unwrap().id, "a");
    }

    #[test]
    fn other_pods_sandboxes_never_count_even_if_the_runtime_ignored_the_filter() {
        let all = [listed("theirs", "u2", Ready, 50, 0), listed("mine", "u1", NotReady, 1, 0)];
        assert_eq!(choose_sandbox("u1", &all).unwrap().id, "mine");
        assert_eq!(choose_sandbox("u3", &all), None);
        assert_eq!(choose_sandbox("u1", &[]), None);
        // A label that disagrees with the metadata: the label (what was filtered on) decides.
        let mut odd = listed("odd", "u1", Ready, 1, 0);
        odd.labels.insert(POD_UID_LABEL.into(), "u9".into());
        assert_eq!(choose_sandbox("u1", std::slice::from_ref(&odd)), None);
        odd.labels.clear();
        assert_eq!(choose_sandbox("u1", std::slice::from_ref(&odd)).unwrap().id, "odd");
    }

    #[test]
    fn the_filters_ask_for_one_pod_and_one_sandbox() {
        let f = sandbox_filter("0b5f-11");
        assert_eq!(f.label_selector, HashMap::from([(POD_UID_LABEL.to_string(), "0b5f-11".to_string())]));
        assert_eq!((f.id.as_str(), f.state), ("", None));
        let c = container_filter("abc");
        assert_eq!((c.pod_sandbox_id.as_str(), c.id.as_str(), c.state, c.label_selector.len()), ("abc", "", None, 0));
    }

    #[test]
    fn the_pods_of_the_node_are_the_uids_of_ready_sandboxes_once_each() {
        let mut unlabelled = listed("x", "u9", Ready, 1, 0);
        unlabelled.labels.clear();
        let all = [
            listed("a", "u2", Ready, 1, 0),
            listed("b", "u1", NotReady, 1, 0),
            listed("c", "u1", Ready, 2, 1),
            listed("d", "u3", NotReady, 1, 0),
            listed("e", "u2", Ready, 3, 1),
            unlabelled,
        ];
        assert_eq!(ready_pod_uids(&all), ["u1", "u2"]);
        assert_eq!(ready_filter().state, Some(wire::PodSandboxStateValue { state: Ready as i32 }));
    }

    #[test]
    fn pod_uids_and_runtime_ids_are_checked_before_use() {
        assert!(check_pod_uid("6c8f1d2e-3b4a-4c5d-9e6f-7a8b9c0d1e2f").is_ok());
        for bad in ["", "a/b", "uid with space", &"a".repeat(129)] {
            let e = check_pod_uid(bad).unwrap_err();
            assert!(e.contains("is not a Kubernetes uid"), "{bad:?}: {e}");
        }
        assert!(check_runtime_id(&"f".repeat(64)).is_ok());
        assert!(check_runtime_id("my_box-1.2").is_ok());
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "a\0b", &"f".repeat(129)] {
            let e = check_runtime_id(bad).unwrap_err();
            assert!(e.contains("is not a runtime id"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn states_map_and_unknown_values_are_not_ready() {
        assert_eq!(sandbox_state(Ready as i32), SandboxState::Ready);
        assert_eq!(sandbox_state(NotReady as i32), SandboxState::NotReady);
        assert_eq!(sandbox_state(99), SandboxState::NotReady);
        assert_eq!(container_state(1), ContainerState::Running);
        assert_eq!(container_state(0), ContainerState::Created);
        assert_eq!(container_state(2), ContainerState::Exited);
        assert_eq!(container_state(42), ContainerState::Unknown);
    }

    fn status(id: &str, state: wire::ContainerState) -> wire::ContainerStatus {
        wire::ContainerStatus {
            id: id.into(),
            metadata: Some(wire::ContainerMetadata { name: "app".into(), attempt: 3 }),
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_running_container_has_its_bundle_rootfs_and_a_stopped_one_none() {
        let state_dir = Path::new("/run/containerd");
        let running = container(
            &status("c1", wire::ContainerState::ContainerRunning),
            ContainerInfo { pid: Some(77), root: Some("rootfs".into()) },
            state_dir,
        );
        assert_eq!(
            running,
            Container {
                id: "c1".into(),
                name: "app".into(),
                state: ContainerState::Running,
                attempt: 3,
                pid: Some(77),
                rootfs: Some("/run/containerd/io.containerd.runtime.v2.task/k8s.io/c1/rootfs".into()),
            }
        );
        let exited = container(
            &status("c2", wire::ContainerState::ContainerExited),
            ContainerInfo { pid: None, root: Some("rootfs".into()) },
            state_dir,
        );
        assert_eq!((exited.state, exited.pid, exited.rootfs), (ContainerState::Exited, None, None));
    }

    #[test]
    fn a_sandbox_not_ready_is_named_without_process_or_network() {
        let s = not_ready_sandbox(&listed("gone", "u1", NotReady, 5, 2));
        assert_eq!(
            (s.id.as_str(), s.namespace.as_str(), s.name.as_str(), s.uid.as_str()),
            ("gone", "shop", "web-0", "u1")
        );
        assert_eq!(
            (s.attempt, s.state, s.pid, s.host_network, s.network_namespace_path),
            (2, SandboxState::NotReady, None, false, None)
        );
    }

    #[test]
    fn a_sandbox_takes_its_pod_from_the_metadata_and_its_place_from_the_info() {
        let st = wire::PodSandboxStatus {
            id: "s1".into(),
            metadata: Some(wire::PodSandboxMetadata {
                name: "web-0".into(),
                uid: "u1".into(),
                namespace: "shop".into(),
                attempt: 1,
            }),
            state: Ready as i32,
            ..Default::default()
        };
        let info = SandboxInfo {
            pid: Some(9),
            host_network: false,
            network_namespace_path: Some("/var/run/netns/cni-1".into()),
        };
        let s = pod_sandbox(&st, info);
        assert_eq!(
            (s.id.as_str(), s.namespace.as_str(), s.name.as_str(), s.uid.as_str()),
            ("s1", "shop", "web-0", "u1")
        );
        assert_eq!((s.attempt, s.state, s.pid), (1, SandboxState::Ready, Some(9)));
        assert_eq!(s.network_namespace_path, Some("/var/run/netns/cni-1".into()));
    }
}
