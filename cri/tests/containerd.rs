//! The client against the node's real containerd, read only: for every pod with a ready
//! sandbox, what `Cri` says is checked against the kernel's view of the processes —
//! the network namespace path really is a network namespace (`NS_GET_NSTYPE`), the very one
//! the sandbox's and the containers' processes are in; each running container's rootfs is
//! the root directory its process sees and holds the binary it runs. Pods come and go while
//! this runs (other suites use the cluster): a pod that vanishes mid-check is skipped, not
//! failed. Skips with one line when there is no containerd socket or no pod.
//!
//! `BPFLEET_CRI_SOCKET` names another socket (default `/run/containerd/containerd.sock`);
//! with `KUBECONFIG` set, the pods kubectl reports on this node are checked as well and
//! their namespace and name compared.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cri::{ContainerState, Cri, CriError, PodSandbox, SandboxState};

/// `_IO(NSIO, 0x3)`: which kind of namespace a namespace file descriptor refers to.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

fn socket() -> PathBuf {
    std::env::var_os("BPFLEET_CRI_SOCKET").map_or_else(|| PathBuf::from(cri::DEFAULT_SOCKET), PathBuf::from)
}

/// (device, inode) of what `path` names (symlinks followed): equal for the same file,
/// mount root or namespace.
fn identity(path: &Path) -> Result<(u64, u64), String> {
    let m = std::fs::metadata(path).map_err(|e| format!("stat {}: {e}", path.display()))?;
    Ok((m.dev(), m.ino()))
}

/// Opens `path` and asks the kernel what namespace it is; returns its identity.
fn network_namespace(path: &Path) -> Result<(u64, u64), String> {
    let f = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    // SAFETY: an ioctl without argument on a descriptor we own.
    let kind = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(format!("{} is not a network namespace (NS_GET_NSTYPE gave {kind})", path.display()));
    }
    let m = f.metadata().map_err(|e| format!("fstat {}: {e}", path.display()))?;
    Ok((m.dev(), m.ino()))
}

/// A process's root directory and binary, seen from the node and through the rootfs the
/// runtime names: both must be the same files.
fn check_root(what: &str, pid: u32, rootfs: &Path) -> Result<String, String> {
    let proc_root = PathBuf::from(format!("/proc/{pid}/root"));
    if identity(rootfs)? != identity(&proc_root)? {
        return Err(format!("{what}: {} is not the root of pid {pid} ({})", rootfs.display(), proc_root.display()));
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| format!("{what}: exe of {pid}: {e}"))?;
    let in_rootfs = rootfs.join(exe.strip_prefix("/").unwrap_or(&exe));
    if identity(&in_rootfs)? != identity(Path::new(&format!("/proc/{pid}/exe")))? {
        return Err(format!("{what}: {} is not the binary pid {pid} runs", in_rootfs.display()));
    }
    Ok(exe.display().to_string())
}

/// Everything checkable about one pod; `Err` says what did not hold.
async fn check_pod(cri: &Cri, s: &PodSandbox) -> Result<String, String> {
    let pid = s.pid.ok_or("a ready sandbox without pid")?;
    let pod = format!("{}/{} sandbox {}", s.namespace, s.name, &s.id[..12]);
    let sandbox_net = identity(Path::new(&format!("/proc/{pid}/ns/net")))?;
    let net = match (&s.network_namespace_path, s.host_network) {
        (Some(path), false) => {
            if network_namespace(path)? != sandbox_net {
                return Err(format!("{pod}: {} is not the network namespace of its pause process", path.display()));
            }
            format!("netns {}", path.display())
        }
        (None, true) => {
            if sandbox_net != identity(Path::new("/proc/self/ns/net"))? {
                return Err(format!("{pod}: said to use the node's network, but pid {pid} is elsewhere"));
            }
            "host network".to_string()
        }
        other => return Err(format!("{pod}: inconsistent network {other:?}")),
    };
    // The sandbox's own bundle, built the way `containers` builds a container's.
    let sandbox_root =
        cri::info::containerd_rootfs(Path::new(cri::DEFAULT_CONTAINERD_STATE_DIR), &s.id, Path::new("rootfs"))
            .ok_or("no sandbox rootfs")?;
    let pause = check_root(&pod, pid, &sandbox_root)?;
    let mut lines = vec![format!("{pod}: pid {pid} runs {pause}, {net}")];
    let containers = cri.containers(&s.id).await.map_err(|e| e.to_string())?;
    for c in &containers {
        let what = format!("{pod} container {} (attempt {})", c.name, c.attempt);
        match (c.state, c.pid, &c.rootfs) {
            (ContainerState::Running, Some(cpid), Some(rootfs)) => {
                let exe = check_root(&what, cpid, rootfs)?;
                if identity(Path::new(&format!("/proc/{cpid}/ns/net")))? != sandbox_net {
                    return Err(format!("{what}: pid {cpid} is not in its pod's network namespace"));
                }
                lines.push(format!("  {}: pid {cpid} runs {exe}, rootfs {}", c.name, rootfs.display()));
            }
            (ContainerState::Running, ..) => return Err(format!("{what}: running without pid or rootfs: {c:?}")),
            (state, None, None) => {
                // An exited container's task (and bundle) is deleted before CRI says Exited.
                let bundle = cri::info::containerd_rootfs(
                    Path::new(cri::DEFAULT_CONTAINERD_STATE_DIR),
                    &c.id,
                    Path::new("rootfs"),
                );
                if state == ContainerState::Exited && bundle.as_deref().is_some_and(Path::exists) {
                    return Err(format!("{what}: exited but its bundle rootfs exists"));
                }
                lines.push(format!("  {}: {state:?}, no process", c.name));
            }
            _ => return Err(format!("{what}: not running yet has a pid or rootfs: {c:?}")),
        }
    }
    Ok(lines.join("\n"))
}

/// uid -> (namespace, name) of the running pods kubectl reports, when KUBECONFIG is set (on
/// a cluster of several nodes, those of other nodes have no sandbox here).
fn kubectl_pods() -> BTreeMap<String, (String, String)> {
    if std::env::var_os("KUBECONFIG").is_none() {
        return BTreeMap::new();
    }
    let template = r#"jsonpath={range .items[*]}{.metadata.uid} {.metadata.namespace} {.metadata.name} {.status.phase}{"\n"}{end}"#;
    let out = std::process::Command::new("kubectl").args(["get", "pods", "-A", "-o", template]).output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        eprintln!("kubectl could not list pods; checking the runtime's pods only");
        return BTreeMap::new();
    };
    let mut pods = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let [uid, ns, name, "Running"] = line.split(' ').collect::<Vec<_>>()[..] {
            pods.insert(uid.to_string(), (ns.to_string(), name.to_string()));
        }
    }
    pods
}

#[tokio::test]
async fn every_ready_pod_is_where_the_runtime_says() {
    let socket = socket();
    if !socket.exists() {
        eprintln!("skipping: no container runtime socket at {} (runs on a node with containerd)", socket.display());
        return;
    }
    // A socket file left behind by a runtime that is not running answers nothing to check.
    let cri = match Cri::connect(&socket).await {
        Ok(cri) => cri,
        Err(e @ cri::CriError::Unreachable { .. }) => {
            eprintln!("skipping: {e} (a socket file with no runtime behind it)");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let v = cri.version().await.unwrap();
    assert_eq!(v.runtime_api_version, "v1");
    eprintln!("runtime: {} {} (CRI {})", v.runtime_name, v.runtime_version, v.runtime_api_version);

    let known = kubectl_pods();
    let mut uids = cri.pod_uids().await.unwrap();
    uids.extend(known.keys().cloned());
    uids.sort();
    uids.dedup();
    if uids.is_empty() {
        eprintln!("skipping: the container runtime at {} runs no pod", socket.display());
        return;
    }
    let (mut checked, mut gone, mut refused) = (0, 0, 0);
    for uid in &uids {
        match check_pod_settled(&cri, uid, &known).await {
            Outcome::Checked(report) => {
                eprintln!("{report}");
                checked += 1;
            }
            Outcome::Gone => gone += 1,
            Outcome::Refused(e) => {
                eprintln!("pod {uid}: {e}");
                refused += 1;
            }
        }
    }
    eprintln!(
        "{checked} pod(s) checked, {gone} gone while checking (or on another node), {refused} the runtime failed on"
    );
    if checked == 0 {
        eprintln!("skipping: no pod of the runtime could be checked");
    }
}

enum Outcome {
    Checked(String),
    /// No ready sandbox (any more) for this uid.
    Gone,
    /// The runtime answered with an error of its own about this pod (not the client's doing).
    Refused(String),
}

/// Checks one pod, again while it fails: a container restarting or a pod being deleted
/// changes processes and mounts under the check. A failure that stays while the sandbox
/// stays ready fails the test.
async fn check_pod_settled(cri: &Cri, uid: &str, known: &BTreeMap<String, (String, String)>) -> Outcome {
    let mut last = String::new();
    for _ in 0..5 {
        let s = match cri.pod_sandbox(uid).await {
            Ok(Some(s)) if s.state == SandboxState::Ready => s,
            Ok(_) => return Outcome::Gone,
            Err(e @ CriError::Refused { .. }) => return Outcome::Refused(e.to_string()),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(s.uid, uid);
        if let Some((ns, name)) = known.get(uid) {
            assert_eq!((&s.namespace, &s.name), (ns, name), "kubectl and the runtime disagree on pod {uid}");
        }
        match check_pod(cri, &s).await {
            Ok(report) => return Outcome::Checked(report),
            Err(e) => last = e,
        }
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    panic!("{last} (five times, the sandbox still ready)");
}
