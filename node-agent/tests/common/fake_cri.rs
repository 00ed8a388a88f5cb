//! A fake container runtime for the pod tests: a real tonic server speaking the CRI subset
//! (`cri::wire`) on a Unix socket in a temporary directory, on a thread and runtime of its
//! own. Pods are what the test says they are: a uid, a namespace and name, and the path of
//! a real network namespace the test made (`ip netns add`), and its containers, each a
//! directory the test made as its root file system. It answers the calls an agent makes to
//! find a pod (ListPodSandbox by the kubelet's uid label, then a verbose PodSandboxStatus
//! in containerd's format) and its containers (ListContainers, a verbose ContainerStatus),
//! and counts the calls.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cri::wire::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use cri::wire::{self, PodSandboxState};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// A pod as the fake runtime knows it.
#[derive(Clone, Debug)]
pub struct FakePod {
    pub namespace: String,
    pub name: String,
    pub netns: PathBuf,
}

/// A container as the fake runtime knows it.
#[derive(Clone, Debug)]
pub struct FakeContainer {
    pub id: String,
    pub pod_uid: String,
    pub name: String,
    pub attempt: u32,
    pub rootfs: PathBuf,
    pub running: bool,
}

#[derive(Clone, Default)]
struct World {
    pods: Arc<Mutex<BTreeMap<String, FakePod>>>,
    containers: Arc<Mutex<Vec<FakeContainer>>>,
    calls: Arc<AtomicUsize>,
}

/// The fake runtime, serving until dropped.
pub struct FakeCri {
    world: World,
    socket: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeCri {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let world = World::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (w, s) = (world.clone(), socket.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = UnixListener::bind(&s).unwrap();
                ready_tx.send(()).unwrap();
                tonic::transport::Server::builder()
                    .add_service(RuntimeServiceServer::new(w))
                    .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        ready.recv().unwrap();
        Self { world, socket, _dir: dir, stop: Some(stop), thread: Some(thread) }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The runtime now runs pod `uid` with its network namespace at `netns`.
    pub fn add(&self, uid: &str, namespace: &str, name: &str, netns: &Path) {
        let pod = FakePod { namespace: namespace.into(), name: name.into(), netns: netns.to_path_buf() };
        self.world.pods.lock().unwrap().insert(uid.to_string(), pod);
    }

    /// Pod `uid` now runs container `name` (id `id`, its root file system the directory
    /// `rootfs`); its earlier attempts under that name, if any, have exited.
    pub fn run_container(&self, uid: &str, name: &str, id: &str, rootfs: &Path) {
        let mut all = self.world.containers.lock().unwrap();
        let mut attempt = 0;
        for c in all.iter_mut().filter(|c| c.pod_uid == uid && c.name == name) {
            c.running = false;
            attempt = attempt.max(c.attempt + 1);
        }
        all.push(FakeContainer {
            id: id.into(),
            pod_uid: uid.into(),
            name: name.into(),
            attempt,
            rootfs: rootfs.to_path_buf(),
            running: true,
        });
    }

    /// Container `id` exited.
    pub fn stop_container(&self, id: &str) {
        for c in self.world.containers.lock().unwrap().iter_mut().filter(|c| c.id == id) {
            c.running = false;
        }
    }

    /// Calls answered so far.
    pub fn calls(&self) -> usize {
        self.world.calls.load(Ordering::SeqCst)
    }
}

impl Drop for FakeCri {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sandbox_id(uid: &str) -> String {
    format!("sb-{uid}")
}

fn metadata(uid: &str, pod: &FakePod) -> wire::PodSandboxMetadata {
    wire::PodSandboxMetadata { name: pod.name.clone(), uid: uid.into(), namespace: pod.namespace.clone(), attempt: 0 }
}

#[tonic::async_trait]
impl RuntimeService for World {
    async fn version(&self, _: Request<wire::VersionRequest>) -> Result<Response<wire::VersionResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(wire::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "fake".into(),
            runtime_version: "1".into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<wire::ListPodSandboxRequest>,
    ) -> Result<Response<wire::ListPodSandboxResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let filter = r.into_inner().filter.unwrap_or_default();
        let wanted = filter.label_selector.get(cri::POD_UID_LABEL).cloned();
        let pods = self.pods.lock().unwrap();
        let items = pods
            .iter()
            .filter(|(uid, _)| wanted.as_ref().is_none_or(|w| w == *uid))
            .map(|(uid, pod)| wire::PodSandbox {
                id: sandbox_id(uid),
                metadata: Some(metadata(uid, pod)),
                state: PodSandboxState::SandboxReady as i32,
                created_at: 1,
                labels: HashMap::from([(cri::POD_UID_LABEL.to_string(), uid.clone())]),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(wire::ListPodSandboxResponse { items }))
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<wire::PodSandboxStatusRequest>,
    ) -> Result<Response<wire::PodSandboxStatusResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let id = r.into_inner().pod_sandbox_id;
        let pods = self.pods.lock().unwrap();
        let (uid, pod) = pods
            .iter()
            .find(|(uid, _)| sandbox_id(uid) == id)
            .ok_or_else(|| Status::not_found(format!("an error occurred when try to find sandbox {id:?}")))?;
        let info = format!(
            r#"{{"pid": 4242, "netNamespaceClosed": false, "runtimeSpec": {{"linux": {{"namespaces": [{{"type": "pid"}}, {{"type": "network", "path": "{}"}}]}}}}}}"#,
            pod.netns.display()
        );
        let status = wire::PodSandboxStatus {
            id,
            metadata: Some(metadata(uid, pod)),
            state: PodSandboxState::SandboxReady as i32,
            created_at: 1,
            ..Default::default()
        };
        Ok(Response::new(wire::PodSandboxStatusResponse {
            status: Some(status),
            info: HashMap::from([("info".to_string(), info)]),
        }))
    }

    async fn list_containers(
        &self,
        r: Request<wire::ListContainersRequest>,
    ) -> Result<Response<wire::ListContainersResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let filter = r.into_inner().filter.unwrap_or_default();
        let containers = self
            .containers
            .lock()
            .unwrap()
            .iter()
            .filter(|c| filter.pod_sandbox_id.is_empty() || filter.pod_sandbox_id == sandbox_id(&c.pod_uid))
            .filter(|c| filter.state.as_ref().is_none_or(|s| s.state == state(c) as i32))
            .map(|c| wire::Container {
                id: c.id.clone(),
                pod_sandbox_id: sandbox_id(&c.pod_uid),
                metadata: Some(wire::ContainerMetadata { name: c.name.clone(), attempt: c.attempt }),
                state: state(c) as i32,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(wire::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        r: Request<wire::ContainerStatusRequest>,
    ) -> Result<Response<wire::ContainerStatusResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let id = r.into_inner().container_id;
        let all = self.containers.lock().unwrap();
        let c = all.iter().find(|c| c.id == id).ok_or_else(|| Status::not_found(format!("no container {id:?}")))?;
        let pid = if c.running { 4343 } else { 0 };
        let info = format!(r#"{{"pid": {pid}, "runtimeSpec": {{"root": {{"path": "{}"}}}}}}"#, c.rootfs.display());
        let status = wire::ContainerStatus {
            id: c.id.clone(),
            metadata: Some(wire::ContainerMetadata { name: c.name.clone(), attempt: c.attempt }),
            state: state(c) as i32,
            ..Default::default()
        };
        Ok(Response::new(wire::ContainerStatusResponse {
            status: Some(status),
            info: HashMap::from([("info".to_string(), info)]),
        }))
    }
}

fn state(c: &FakeContainer) -> wire::ContainerState {
    if c.running { wire::ContainerState::ContainerRunning } else { wire::ContainerState::ContainerExited }
}
