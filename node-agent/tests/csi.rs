//! Map volumes (`bpfleet-agent csi`), driven over its real CSI socket as the kubelet
//! drives it, checked in the kernel: the kubelet's registration answers who the driver
//! is; a published volume is a bpffs of its own holding only the maps named, which a
//! process without any privilege (`nobody`) reads — the same counter bpftool reads from
//! the owner's pin — and cannot write; a writable volume lets it write; unpublish leaves
//! no mount and no directory (mounts counted in /proc/self/mountinfo before and after);
//! a namespace not allowed, a program not running here, a map it does not have, are
//! refused with what to do and leave nothing.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::*;
use common::*;
use hyper_util::rt::TokioIo;
use proto::csi::identity_client::IdentityClient;
use proto::csi::node_client::NodeClient;
use proto::csi::{GetPluginInfoRequest, NodePublishVolumeRequest, NodeUnpublishVolumeRequest};
use proto::registration::InfoRequest;
use proto::registration::registration_client::RegistrationClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

const PROGRAM: &str =
    "  - {name: count_getppid, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_getppid]}}\n";

/// Unmounts what a test published when it ends, passed or failed (a failed assertion must
/// not leave a bpffs mounted on the machine).
struct Unmount(Vec<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = agent::csi::volume::unpublish(p);
        }
    }
}

/// A channel to the unix socket at `path`.
async fn channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dial = path.clone();
        let connector = tower::service_fn(move |_: Uri| {
            let dial = dial.clone();
            async move { UnixStream::connect(dial).await.map(TokioIo::new) }
        });
        match Endpoint::from_static("http://localhost").connect_with_connector(connector).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "{}: {e}", path.display());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

struct Driver {
    child: Child,
}

impl Driver {
    /// `bpfleet-agent csi` serving under `sockets` and registering in `registry`, its log
    /// in the test's directory.
    fn spawn(dirs: &Dirs, sockets: &Path, registry: &Path, args: &[&str]) -> Self {
        let child = Command::new(agent_bin())
            .args(["--node-name", "csi-node", "--state-dir"])
            .arg(dirs.state())
            .arg("csi")
            .arg("--socket-dir")
            .arg(sockets)
            .arg("--registration-dir")
            .arg(registry)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dirs.tmp.path().join("csi.log")).unwrap())
            .spawn()
            .unwrap();
        Driver { child }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bind-mount-free copies of `mapcat`: reads key 0 of the pinned map (as u64) with
/// BPF_F_RDONLY, or writes `value` there with `write`.
fn mapcat() -> PathBuf {
    let out = std::env::temp_dir().join(format!("bpfleet-mapcat-{}", std::process::id()));
    if !out.exists() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/apps/mapcat.c");
        sh(&format!("cc -O2 -static -o {} {}", out.display(), src.display()));
    }
    out
}

/// `mapcat ARGS` as user nobody: (success, stdout + stderr).
fn as_nobody(args: &[&str]) -> (bool, String) {
    let out = Command::new("runuser").args(["-u", "nobody", "--"]).arg(mapcat()).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn bpf_mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(" - bpf ")).count()
}

fn publish_req(target: &Path, ns: &str, program: &str, maps: &str, writable: bool) -> NodePublishVolumeRequest {
    let mut ctx = HashMap::new();
    ctx.insert("program".to_string(), program.to_string());
    ctx.insert("maps".to_string(), maps.to_string());
    ctx.insert("csi.storage.k8s.io/pod.namespace".to_string(), ns.to_string());
    ctx.insert("csi.storage.k8s.io/ephemeral".to_string(), "true".to_string());
    // The kubelet's target is under the pod's own directory: pods/<uid>/volumes/…
    let uid = target.iter().skip_while(|c| *c != "pods").nth(1).unwrap().to_string_lossy().to_string();
    ctx.insert("csi.storage.k8s.io/pod.uid".to_string(), uid);
    if writable {
        ctx.insert("writable".to_string(), "true".to_string());
    }
    NodePublishVolumeRequest {
        volume_id: format!("csi-{}", target.display()),
        target_path: target.display().to_string(),
        volume_context: ctx,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_without_privilege_reads_only_the_maps_its_volume_names() {
    let dirs = Dirs::new("csi");
    let mut agent = AgentProc::spawn_tls(&dirs, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let mut req = apply_request("csi-owner", PROGRAM, "probe_counters.o");
    req.global_data.insert("TARGET_TGID".into(), std::process::id().to_le_bytes().to_vec().into());
    let state = client.apply(req).await.unwrap().into_inner().state.unwrap();
    let owner_pin = state.maps.iter().find(|m| m.name == "calls").unwrap().pin_path.clone();

    let kubelet = dirs.tmp.path().join("kubelet");
    let (sockets, registry) = (kubelet.join("plugins/csi.bpfleet.dev"), kubelet.join("plugins_registry"));
    let _driver = Driver::spawn(
        &dirs,
        &sockets,
        &registry,
        &["--csi-namespaces", "team-a", "--csi-writable-namespaces", "team-b"],
    );
    // The kubelet's registration, then the driver itself.
    let info = RegistrationClient::new(channel(&registry.join("csi.bpfleet.dev-reg.sock")).await)
        .get_info(InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.r#type.as_str(), info.name.as_str()), ("CSIPlugin", "csi.bpfleet.dev"));
    assert_eq!(PathBuf::from(&info.endpoint), sockets.join("csi.sock"));
    let csi = channel(&sockets.join("csi.sock")).await;
    let name =
        IdentityClient::new(csi.clone()).get_plugin_info(GetPluginInfoRequest {}).await.unwrap().into_inner().name;
    assert_eq!(name, "csi.bpfleet.dev");
    let mut node = NodeClient::new(csi);

    for _ in 0..30 {
        // SAFETY: getppid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let before = bpf_mounts();
    let pod = dirs.tmp.path().join("pods/uid-1/volumes/kubernetes.io~csi/maps/mount");
    let rw = dirs.tmp.path().join("pods/uid-2/volumes/kubernetes.io~csi/maps/mount");
    let bad = dirs.tmp.path().join("pods/uid-3/volumes/kubernetes.io~csi/maps/mount");
    let _unmount = Unmount(vec![pod.clone(), rw.clone(), bad.clone()]);
    std::fs::set_permissions(dirs.tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    node.node_publish_volume(publish_req(&pod, "team-a", "csi-owner-name", "calls", false)).await.unwrap();
    assert_eq!(bpf_mounts(), before + 1, "one bpffs for the volume");
    let listed: Vec<String> =
        std::fs::read_dir(&pod).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    assert_eq!(listed, ["calls"], "only the map the volume names (not even the kernel's maps.debug, progs.debug)");
    let (ok, out) = as_nobody(&[pod.join("calls").to_str().unwrap()]);
    let count = read_counter(Path::new(&owner_pin));
    assert!(ok, "{out}");
    assert_eq!(out.trim(), count.to_string(), "nobody reads the owner's counter (bpftool: {count})");
    assert!(count >= 30);
    let (ok, out) = as_nobody(&[pod.join("calls").to_str().unwrap(), "write", "7"]);
    assert!(!ok && (out.contains("Read-only file system") || out.contains("Permission denied")), "read-only: {out}");
    // Publishing again (a kubelet retry) changes nothing.
    node.node_publish_volume(publish_req(&pod, "team-a", "csi-owner-name", "calls", false)).await.unwrap();
    assert_eq!(bpf_mounts(), before + 1);
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: "v".into(),
        target_path: pod.display().to_string(),
    })
    .await
    .unwrap();
    assert_eq!(bpf_mounts(), before, "no mount left");
    assert!(!pod.exists(), "no directory left");
    assert!(Path::new(&owner_pin).exists(), "the owner's pin stays");

    // A writable volume: the unprivileged process writes the kernel map.
    node.node_publish_volume(publish_req(&rw, "team-b", "csi-owner-name", "small", true)).await.unwrap();
    let (ok, out) = as_nobody(&[rw.join("small").to_str().unwrap(), "write", "7"]);
    assert!(ok, "{out}");
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: "v".into(),
        target_path: rw.display().to_string(),
    })
    .await
    .unwrap();
    assert_eq!(bpf_mounts(), before);

    // Refusals, nothing left after each.
    for (ns, program, maps, code, want) in [
        (
            "default",
            "csi-owner-name",
            "calls",
            tonic::Code::PermissionDenied,
            "pods of namespace \"default\" may not mount",
        ),
        ("team-a", "not-here", "calls", tonic::Code::NotFound, "BpfProgram not-here does not run on this node"),
        ("team-a", "csi-owner-name", "nope", tonic::Code::NotFound, "has no map nope (its maps: "),
        ("team-a", "csi-owner-name", "../calls", tonic::Code::InvalidArgument, "volumeAttributes.maps"),
    ] {
        let err = node.node_publish_volume(publish_req(&bad, ns, program, maps, false)).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(want), "{want}: {}", err.message());
        assert_eq!(bpf_mounts(), before);
        assert!(!crate_is_bpffs(&bad), "nothing mounted");
    }
    // Writable only for the namespaces allowed to write.
    let err = node.node_publish_volume(publish_req(&bad, "team-a", "csi-owner-name", "small", true)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("may not mount BpfProgram maps writable"), "{}", err.message());
    // A target outside the pod's own volume directory.
    let mut elsewhere = publish_req(&bad, "team-a", "csi-owner-name", "calls", false);
    elsewhere.target_path = dirs.tmp.path().join("elsewhere").display().to_string();
    let err = node.node_publish_volume(elsewhere).await.unwrap_err();
    assert!(err.message().contains("is not a volume directory of pod uid-3"), "{}", err.message());
    assert_eq!(bpf_mounts(), before);
    drop(agent);
}

fn crate_is_bpffs(p: &Path) -> bool {
    agent::kernel::is_bpffs(p).unwrap_or(false)
}

/// Stopped (SIGTERM, as the kubelet stops the DaemonSet's `csi` container), the driver
/// removes its registration and driver sockets: a registration socket left behind has
/// the kubelet retry a dead plugin with a backoff of up to two minutes that holds up the
/// next agent's registration at the same path (seen on a real cluster: a reinstall's map
/// volumes waited for it).
#[tokio::test]
async fn a_stopped_driver_leaves_no_socket_behind() {
    let dirs = Dirs::new("csi-stop");
    let kubelet = dirs.tmp.path().join("kubelet");
    let (sockets, registry) = (kubelet.join("plugins/csi.bpfleet.dev"), kubelet.join("plugins_registry"));
    let registration = registry.join("csi.bpfleet.dev-reg.sock");
    // A stale socket of an earlier run is replaced, not an error.
    std::fs::create_dir_all(&registry).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&registration).unwrap());
    let mut driver = Driver::spawn(&dirs, &sockets, &registry, &[]);
    let info = RegistrationClient::new(channel(&registration).await).get_info(InfoRequest {}).await.unwrap();
    assert_eq!(info.into_inner().name, "csi.bpfleet.dev");
    assert!(sockets.join("csi.sock").exists());
    // SAFETY: kill sends a signal to our own child.
    unsafe { libc::kill(driver.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = driver.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the driver did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(dirs.tmp.path().join("csi.log")).unwrap_or_default();
    assert!(status.success(), "{status}: {log}");
    assert!(!registration.exists(), "the registration socket is left behind");
    assert!(!sockets.join("csi.sock").exists(), "the driver socket is left behind");
}
