//! The client end to end against a fake runtime: a real tonic server speaking the CRI subset
//! on a Unix socket in a temporary directory. It answers from a table, honours the filters
//! (unless told to ignore them), records what it was asked, and can be slow.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cri::wire::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use cri::wire::{self, ContainerState as WireContainerState, PodSandboxState as WireSandboxState};
use cri::{Container, ContainerState, Cri, CriError, Options, POD_UID_LABEL, PodSandbox, SandboxState};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

struct Sandbox {
    listed: wire::PodSandbox,
    info: HashMap<String, String>,
    /// Listed, but removed before its status is asked for.
    gone: bool,
}

struct Ctr {
    listed: wire::Container,
    state: WireContainerState,
    info: HashMap<String, String>,
    gone: bool,
}

#[derive(Default)]
struct World {
    sandboxes: Vec<Sandbox>,
    containers: Vec<Ctr>,
}

#[derive(Clone, Default)]
struct Fake {
    world: Arc<World>,
    delay: Duration,
    ignore_filters: bool,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    async fn note(&self, what: String) {
        self.asked.lock().unwrap().push(what);
        tokio::time::sleep(self.delay).await;
    }
}

fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[tonic::async_trait]
impl RuntimeService for Fake {
    async fn version(&self, r: Request<wire::VersionRequest>) -> Result<Response<wire::VersionResponse>, Status> {
        self.note(format!("Version {}", r.get_ref().version)).await;
        Ok(Response::new(wire::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "fake".into(),
            runtime_version: "9.9".into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<wire::PodSandboxStatusRequest>,
    ) -> Result<Response<wire::PodSandboxStatusResponse>, Status> {
        let r = r.into_inner();
        self.note(format!("PodSandboxStatus {} verbose={}", r.pod_sandbox_id, r.verbose)).await;
        let s = self.world.sandboxes.iter().find(|s| s.listed.id == r.pod_sandbox_id && !s.gone);
        let s = s.ok_or_else(|| {
            Status::not_found(format!("an error occurred when try to find sandbox {:?}", r.pod_sandbox_id))
        })?;
        let l = &s.listed;
        let status = wire::PodSandboxStatus {
            id: l.id.clone(),
            metadata: l.metadata.clone(),
            state: l.state,
            created_at: l.created_at,
            labels: l.labels.clone(),
            ..Default::default()
        };
        let info = if r.verbose { s.info.clone() } else { HashMap::new() };
        Ok(Response::new(wire::PodSandboxStatusResponse { status: Some(status), info }))
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<wire::ListPodSandboxRequest>,
    ) -> Result<Response<wire::ListPodSandboxResponse>, Status> {
        let f = r.into_inner().filter.unwrap_or_default();
        let mut selector: Vec<_> = f.label_selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        selector.sort();
        let state = f.state.map(|v| format!(" state={}", v.state)).unwrap_or_default();
        self.note(format!("ListPodSandbox {}{state}", selector.join(","))).await;
        let wanted = |s: &wire::PodSandbox| {
            labels_match(&f.label_selector, &s.labels) && f.state.is_none_or(|v| v.state == s.state)
        };
        let items = self.world.sandboxes.iter().map(|s| s.listed.clone());
        let items = items.filter(|s| self.ignore_filters || wanted(s)).collect();
        Ok(Response::new(wire::ListPodSandboxResponse { items }))
    }

    async fn list_containers(
        &self,
        r: Request<wire::ListContainersRequest>,
    ) -> Result<Response<wire::ListContainersResponse>, Status> {
        let f = r.into_inner().filter.unwrap_or_default();
        self.note(format!("ListContainers {}", f.pod_sandbox_id)).await;
        let all = self.world.containers.iter().map(|c| c.listed.clone());
        let containers = all.filter(|c| self.ignore_filters || c.pod_sandbox_id == f.pod_sandbox_id).collect();
        Ok(Response::new(wire::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        r: Request<wire::ContainerStatusRequest>,
    ) -> Result<Response<wire::ContainerStatusResponse>, Status> {
        let r = r.into_inner();
        self.note(format!("ContainerStatus {} verbose={}", r.container_id, r.verbose)).await;
        let c = self.world.containers.iter().find(|c| c.listed.id == r.container_id && !c.gone);
        let c = c.ok_or_else(|| {
            Status::not_found(format!("an error occurred when try to find container {:?}", r.container_id))
        })?;
        let status = wire::ContainerStatus {
            id: c.listed.id.clone(),
            metadata: c.listed.metadata.clone(),
            state: c.state as i32,
            ..Default::default()
        };
        let info = if r.verbose { c.info.clone() } else { HashMap::new() };
        Ok(Response::new(wire::ContainerStatusResponse { status: Some(status), info }))
    }
}

/// Serves `fake` on a socket in a new temporary directory; the server lives as long as
/// the test's runtime.
fn serve(fake: Fake) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("containerd.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RuntimeServiceServer::new(fake))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    (dir, socket)
}

fn sandbox(
    id: &str,
    uid: &str,
    state: WireSandboxState,
    created_at: i64,
    attempt: u32,
    netns: Option<&str>,
) -> Sandbox {
    let namespaces = match netns {
        Some(p) => format!(r#"[{{"type": "pid"}}, {{"type": "network", "path": "{p}"}}]"#),
        None => r#"[{"type": "pid"}]"#.to_string(),
    };
    let pid = if state == WireSandboxState::SandboxReady { 1000 + attempt } else { 0 };
    let doc = format!(
        r#"{{"pid": {pid}, "netNamespaceClosed": {}, "runtimeSpec": {{"linux": {{"namespaces": {namespaces}}}}}}}"#,
        pid == 0
    );
    Sandbox {
        listed: cri::testing::listed_sandbox(id, uid, state, created_at, attempt),
        info: HashMap::from([("info".to_string(), doc)]),
        gone: false,
    }
}

fn container(id: &str, sandbox_id: &str, name: &str, attempt: u32, state: WireContainerState, pid: u32) -> Ctr {
    Ctr {
        listed: wire::Container {
            id: id.into(),
            pod_sandbox_id: sandbox_id.into(),
            metadata: Some(wire::ContainerMetadata { name: name.into(), attempt }),
            state: state as i32,
            ..Default::default()
        },
        state,
        info: HashMap::from([(
            "info".to_string(),
            format!(
                r#"{{"sandboxID": "{sandbox_id}", "pid": {pid}, "runtimeSpec": {{"root": {{"path": "rootfs"}}}}}}"#
            ),
        )]),
        gone: false,
    }
}

const UID: &str = "6c8f1d2e-3b4a-4c5d-9e6f-7a8b9c0d1e2f";
const OTHER_UID: &str = "0a0a0a0a-1111-2222-3333-444444444444";

fn world() -> World {
    use WireContainerState::*;
    use WireSandboxState::*;
    World {
        sandboxes: vec![
            sandbox("old", UID, SandboxNotready, 10, 0, Some("/var/run/netns/cni-old")),
            sandbox("live", UID, SandboxReady, 20, 1, Some("/run/containerd/io.containerd.grpc.v1.cri/netns/cni-live")),
            sandbox("theirs", OTHER_UID, SandboxReady, 30, 0, None),
        ],
        containers: vec![
            container("sidecar-1", "live", "sidecar", 0, ContainerRunning, 2001),
            container("app-2", "live", "app", 1, ContainerRunning, 2002),
            container("app-1", "live", "app", 0, ContainerExited, 0),
            container("their-app", "theirs", "app", 0, ContainerRunning, 3001),
        ],
    }
}

fn options(timeout: Duration) -> Options {
    Options { timeout, containerd_state_dir: "/state".into(), ..Options::default() }
}

async fn connect(socket: &Path) -> Cri {
    Cri::connect_with(socket, options(Duration::from_secs(2))).await.unwrap()
}

fn asked(fake: &Fake) -> Vec<String> {
    fake.asked.lock().unwrap().clone()
}

#[tokio::test]
async fn version_names_the_runtime() {
    let fake = Fake::default();
    let (_dir, socket) = serve(fake.clone());
    let v = connect(&socket).await.version().await.unwrap();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_version.as_str(), v.runtime_api_version.as_str()),
        ("fake", "9.9", "v1")
    );
    assert_eq!(asked(&fake), ["Version v1"]);
}

#[tokio::test]
async fn a_pod_is_found_by_its_uid_label_and_its_ready_sandbox_wins() {
    let fake = Fake { world: Arc::new(world()), ..Fake::default() };
    let (_dir, socket) = serve(fake.clone());
    let cri = connect(&socket).await;
    let s = cri.pod_sandbox(UID).await.unwrap().expect("the pod has a sandbox");
    assert_eq!(
        s,
        PodSandbox {
            id: "live".into(),
            namespace: "shop".into(),
            name: "web-0".into(),
            uid: UID.into(),
            attempt: 1,
            state: SandboxState::Ready,
            pid: Some(1001),
            host_network: false,
            network_namespace_path: Some("/run/containerd/io.containerd.grpc.v1.cri/netns/cni-live".into()),
        }
    );
    assert_eq!(
        asked(&fake),
        [format!("ListPodSandbox {POD_UID_LABEL}={UID}"), "PodSandboxStatus live verbose=true".to_string()]
    );

    let theirs = cri.pod_sandbox(OTHER_UID).await.unwrap().unwrap();
    assert!(theirs.host_network);
    assert_eq!(theirs.network_namespace_path, None);
    assert_eq!(cri.pod_sandbox("99999999-0000-0000-0000-000000000000").await.unwrap(), None);
}

#[tokio::test]
async fn the_pods_of_the_node_are_those_with_a_ready_sandbox() {
    let mut w = world();
    w.sandboxes.push(sandbox(
        "stopped",
        "11111111-2222-3333-4444-555555555555",
        WireSandboxState::SandboxNotready,
        5,
        0,
        None,
    ));
    let w = Arc::new(w);
    for ignore_filters in [false, true] {
        let fake = Fake { world: w.clone(), ignore_filters, ..Fake::default() };
        let (_dir, socket) = serve(fake.clone());
        assert_eq!(connect(&socket).await.pod_uids().await.unwrap(), [OTHER_UID, UID]);
        assert_eq!(asked(&fake), ["ListPodSandbox  state=0"]);
    }
}

#[tokio::test]
async fn a_runtime_that_ignores_the_filter_still_gives_only_the_pods_own_sandbox_and_containers() {
    let fake = Fake { world: Arc::new(world()), ignore_filters: true, ..Fake::default() };
    let (_dir, socket) = serve(fake.clone());
    let cri = connect(&socket).await;
    assert_eq!(cri.pod_sandbox(UID).await.unwrap().unwrap().id, "live");
    let ids: Vec<String> = cri.containers("theirs").await.unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["their-app"]);
}

#[tokio::test]
async fn containers_come_sorted_with_pid_and_rootfs_while_running() {
    let fake = Fake { world: Arc::new(world()), ..Fake::default() };
    let (_dir, socket) = serve(fake.clone());
    let containers = connect(&socket).await.containers("live").await.unwrap();
    let running = |id: &str, name: &str, attempt: u32, pid: u32| Container {
        id: id.into(),
        name: name.into(),
        state: ContainerState::Running,
        attempt,
        pid: Some(pid),
        rootfs: Some(format!("/state/io.containerd.runtime.v2.task/k8s.io/{id}/rootfs").into()),
    };
    assert_eq!(
        containers,
        [
            Container {
                id: "app-1".into(),
                name: "app".into(),
                state: ContainerState::Exited,
                attempt: 0,
                pid: None,
                rootfs: None
            },
            running("app-2", "app", 1, 2002),
            running("sidecar-1", "sidecar", 0, 2001),
        ]
    );
    let mut calls = asked(&fake);
    calls.sort();
    assert_eq!(
        calls,
        [
            "ContainerStatus app-1 verbose=true",
            "ContainerStatus app-2 verbose=true",
            "ContainerStatus sidecar-1 verbose=true",
            "ListContainers live"
        ]
    );
    assert_eq!(connect(&socket).await.containers("no-such-sandbox").await.unwrap(), []);
}

#[tokio::test]
async fn a_pod_whose_sandboxes_are_all_down_is_not_ready_without_asking_for_status() {
    let mut w = world();
    w.sandboxes.remove(1);
    let fake = Fake { world: Arc::new(w), ..Fake::default() };
    let (_dir, socket) = serve(fake.clone());
    let s = connect(&socket).await.pod_sandbox(UID).await.unwrap().unwrap();
    assert_eq!((s.id.as_str(), s.state, s.pid, s.network_namespace_path), ("old", SandboxState::NotReady, None, None));
    assert_eq!(asked(&fake), [format!("ListPodSandbox {POD_UID_LABEL}={UID}")]);
}

#[tokio::test]
async fn what_disappears_between_list_and_status_is_absent_not_an_error() {
    let mut w = world();
    w.sandboxes[1].gone = true;
    w.containers[0].gone = true;
    let fake = Fake { world: Arc::new(w), ..Fake::default() };
    let (_dir, socket) = serve(fake);
    let cri = connect(&socket).await;
    assert_eq!(cri.pod_sandbox(UID).await.unwrap(), None);
    let ids: Vec<String> = cri.containers("live").await.unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["app-1", "app-2"]);
}

#[tokio::test]
async fn a_slow_runtime_costs_the_timeout_and_is_named() {
    let fake = Fake { world: Arc::new(world()), delay: Duration::from_secs(30), ..Fake::default() };
    let (_dir, socket) = serve(fake);
    let cri = Cri::connect_with(&socket, options(Duration::from_millis(300))).await.unwrap();
    let started = Instant::now();
    let e = cri.pod_sandbox(UID).await.unwrap_err();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "took {took:?}");
    assert!(matches!(e, CriError::Timeout { call: "ListPodSandbox", .. }), "{e:?}");
    assert!(
        e.to_string().contains(&format!("at {} did not answer ListPodSandbox within 300ms", socket.display())),
        "{e}"
    );
}

#[tokio::test]
async fn no_socket_and_a_dead_socket_say_where_and_what_to_mount() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("containerd.sock");
    let e = Cri::connect(&missing).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, CriError::Unreachable { .. }), "{e:?}");
    assert!(text.starts_with(&format!("cannot reach the container runtime at {}: ", missing.display())), "{text}");
    assert!(text.contains("No such file or directory") && text.contains(cri::SOCKET_HINT), "{text}");

    // A socket file nobody listens on any more (a runtime that died).
    drop(std::os::unix::net::UnixListener::bind(&missing).unwrap());
    let e = Cri::connect(&missing).await.unwrap_err();
    assert!(e.to_string().contains("Connection refused"), "{e}");
}

#[tokio::test]
async fn a_runtime_gone_after_connecting_is_unreachable_on_the_next_call() {
    let fake = Fake { world: Arc::new(world()), ..Fake::default() };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("containerd.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder().add_service(RuntimeServiceServer::new(fake)).serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            async {
                stopped.await.ok();
            },
        ),
    );
    let cri = connect(&socket).await;
    cri.version().await.unwrap();
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    std::fs::remove_file(&socket).unwrap();
    let e = cri.version().await.unwrap_err();
    assert!(matches!(e, CriError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains(cri::SOCKET_HINT), "{e}");
}

#[tokio::test]
async fn answers_over_the_size_limit_are_refused() {
    let mut w = world();
    let huge = "x".repeat(200 << 10);
    w.sandboxes[1].listed.annotations.insert("kubectl.kubernetes.io/last-applied-configuration".into(), huge);
    let (_dir, socket) = serve(Fake { world: Arc::new(w), ..Fake::default() });
    let small = Options { max_message_bytes: 64 << 10, ..options(Duration::from_secs(2)) };
    let e = Cri::connect_with(&socket, small).await.unwrap().pod_sandbox(UID).await.unwrap_err();
    assert!(matches!(e, CriError::BadAnswer { call: "ListPodSandbox", .. }), "{e:?}");
    assert!(e.to_string().contains("an answer larger than the 65536 bytes this client reads"), "{e}");
    // The default limit reads it.
    assert_eq!(connect(&socket).await.pod_sandbox(UID).await.unwrap().unwrap().id, "live");
}

#[tokio::test]
async fn answers_bpfleet_cannot_read_are_named() {
    let mut w = world();
    w.sandboxes[1].info = HashMap::from([("sandboxInfo".to_string(), "{}".to_string())]);
    w.containers[1].listed.id = "../../etc".into();
    let (_dir, socket) = serve(Fake { world: Arc::new(w), ..Fake::default() });
    let cri = connect(&socket).await;
    let e = cri.pod_sandbox(UID).await.unwrap_err();
    assert!(
        e.to_string().contains(
            r#"answered PodSandboxStatus with sandbox live details bpfleet cannot read: its verbose info has no "info" entry"#
        ),
        "{e}"
    );
    let e = cri.containers("live").await.unwrap_err();
    assert!(
        e.to_string().contains(
            r#"answered ListContainers with a container id bpfleet refuses: "../../etc" is not a runtime id"#
        ),
        "{e}"
    );
}

#[tokio::test]
async fn too_many_containers_are_refused() {
    let mut w = world();
    w.containers = (0..5)
        .map(|i| container(&format!("c{i}"), "live", "app", i, WireContainerState::ContainerRunning, 10 + i))
        .collect();
    let (_dir, socket) = serve(Fake { world: Arc::new(w), ..Fake::default() });
    let few = Options { max_containers: 4, ..options(Duration::from_secs(2)) };
    let e = Cri::connect_with(&socket, few).await.unwrap().containers("live").await.unwrap_err();
    assert!(e.to_string().contains("5 containers for sandbox live, more than the 4 this client reads"), "{e}");
}

#[tokio::test]
async fn bad_arguments_are_refused_before_asking() {
    let fake = Fake::default();
    let (_dir, socket) = serve(fake.clone());
    let cri = connect(&socket).await;
    let e = cri.pod_sandbox("not a uid").await.unwrap_err();
    assert!(matches!(e, CriError::InvalidArgument(_)), "{e:?}");
    assert!(e.to_string().contains(r#"pod uid "not a uid" is not a Kubernetes uid"#), "{e}");
    let e = cri.containers("../x").await.unwrap_err();
    assert!(e.to_string().starts_with(r#"sandbox id "../x" is not a runtime id"#), "{e}");
    assert!(asked(&fake).is_empty());
}

#[tokio::test]
async fn a_server_without_the_cri_service_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("not-cri.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::default())
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    let e = connect(&socket).await.version().await.unwrap_err();
    assert!(matches!(e, CriError::Refused { code: tonic::Code::Unimplemented, .. }), "{e:?}");
    assert!(e.to_string().contains("it does not serve the CRI runtime.v1 API"), "{e}");
}
