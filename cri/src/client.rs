//! The I/O edge: a tonic channel over the runtime's Unix socket, one bounded call per
//! question. Every decision about the answers is in `convert` and `info`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::convert::{self, check_pod_uid, check_runtime_id};
use crate::error::{CriError, Result, root_cause};
use crate::info;
use crate::model::{Container, ContainerState, PodSandbox, RuntimeVersion, SandboxState};
use crate::wire;
use crate::wire::runtime_service_client::RuntimeServiceClient;

/// Where containerd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// Containerd's state directory (`state` in its config): task bundles live under it.
pub const DEFAULT_CONTAINERD_STATE_DIR: &str = "/run/containerd";

/// Limits and places of one client. `Options::default()` suits containerd's defaults.
#[derive(Clone, Debug)]
pub struct Options {
    /// Longest wait for connecting and for each call (default 2 s).
    pub timeout: Duration,
    /// Largest answer read, in bytes (default 16 MiB, what the kubelet reads).
    pub max_message_bytes: usize,
    /// Most containers one sandbox may list before `containers` refuses (default 256).
    pub max_containers: usize,
    /// Containerd's state directory as the runtime names it (default `/run/containerd`):
    /// rootfs paths are built under it.
    pub containerd_state_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            max_message_bytes: 16 << 20,
            max_containers: 256,
            containerd_state_dir: PathBuf::from(DEFAULT_CONTAINERD_STATE_DIR),
        }
    }
}

/// A read-only client of the container runtime on this node. Cheap to clone (clones share
/// one connection, HTTP/2-multiplexed); a broken connection is dialled again on the next
/// call.
#[derive(Clone, Debug)]
pub struct Cri {
    client: RuntimeServiceClient<Channel>,
    socket: PathBuf,
    options: Arc<Options>,
}

impl Cri {
    /// Connects to the runtime at `socket` (e.g. [`DEFAULT_SOCKET`]) with the default
    /// [`Options`]. Fails at once, with [`CriError::Unreachable`], when nothing answers
    /// there within the timeout: a caller starting before the runtime retries.
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with(socket, Options::default()).await
    }

    /// [`Cri::connect`] with other limits.
    pub async fn connect_with(socket: impl AsRef<Path>, options: Options) -> Result<Self> {
        let socket = socket.as_ref().to_path_buf();
        let unreachable = |cause: String| CriError::Unreachable { socket: socket.clone(), cause };
        let dial = socket.clone();
        let connector = tower::service_fn(move |_: Uri| {
            let dial = dial.clone();
            async move { UnixStream::connect(dial).await.map(TokioIo::new) }
        });
        // The URI only fills HTTP/2's :authority; the connector ignores it.
        let endpoint =
            Endpoint::from_static("http://localhost").connect_timeout(options.timeout).timeout(options.timeout);
        let channel = match tokio::time::timeout(options.timeout, endpoint.connect_with_connector(connector)).await {
            Err(_) => return Err(unreachable(format!("no connection within {:?}", options.timeout))),
            Ok(Err(e)) => return Err(unreachable(root_cause(&e))),
            Ok(Ok(channel)) => channel,
        };
        let client = RuntimeServiceClient::new(channel).max_decoding_message_size(options.max_message_bytes);
        Ok(Self { client, socket, options: Arc::new(options) })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The runtime's name and version (a cheap liveness check, e.g. at the agent's start).
    pub async fn version(&self) -> Result<RuntimeVersion> {
        let request = wire::VersionRequest { version: "v1".into() };
        let v = self.call("Version", request, |mut c, r| async move { c.version(r).await }).await?;
        Ok(RuntimeVersion {
            runtime_name: v.runtime_name,
            runtime_version: v.runtime_version,
            runtime_api_version: v.runtime_api_version,
        })
    }

    /// The uids of the pods that have a ready sandbox on this node, sorted: what runs here
    /// now, for an agent to compare with what it has attached.
    pub async fn pod_uids(&self) -> Result<Vec<String>> {
        let request = wire::ListPodSandboxRequest { filter: Some(convert::ready_filter()) };
        let listed =
            self.call("ListPodSandbox", request, |mut c, r| async move { c.list_pod_sandbox(r).await }).await?;
        Ok(convert::ready_pod_uids(&listed.items))
    }

    /// The sandbox of the pod with uid `pod_uid` on this node, found by the label the
    /// kubelet puts on it (`io.kubernetes.pod.uid`), with its network namespace. When the
    /// pod has several (its sandbox was recreated), the ready one, else the newest. A
    /// sandbox that is not ready comes from the listing alone, without process or network.
    /// `Ok(None)`: the pod has no sandbox here (not scheduled here, not started yet, or
    /// gone meanwhile).
    pub async fn pod_sandbox(&self, pod_uid: &str) -> Result<Option<PodSandbox>> {
        check_pod_uid(pod_uid).map_err(CriError::InvalidArgument)?;
        let request = wire::ListPodSandboxRequest { filter: Some(convert::sandbox_filter(pod_uid)) };
        let listed =
            self.call("ListPodSandbox", request, |mut c, r| async move { c.list_pod_sandbox(r).await }).await?;
        let Some(chosen) = convert::choose_sandbox(pod_uid, &listed.items) else { return Ok(None) };
        check_runtime_id(&chosen.id)
            .map_err(|what| self.bad("ListPodSandbox", format!("a sandbox id bpfleet refuses: {what}")))?;
        if convert::sandbox_state(chosen.state) == SandboxState::NotReady {
            // Nothing of it can be entered, and asking a runtime about a sandbox on its way
            // out can fail for reasons of its own (containerd tidying its namespace).
            return Ok(Some(convert::not_ready_sandbox(chosen)));
        }
        let request = wire::PodSandboxStatusRequest { pod_sandbox_id: chosen.id.clone(), verbose: true };
        let call = "PodSandboxStatus";
        let answer = match self.call(call, request, |mut c, r| async move { c.pod_sandbox_status(r).await }).await {
            Err(CriError::Refused { code: tonic::Code::NotFound, .. }) => return Ok(None),
            other => other?,
        };
        let status = answer.status.ok_or_else(|| self.bad(call, format!("no status for sandbox {}", chosen.id)))?;
        let details = info::sandbox_info(&answer.info)
            .map_err(|what| self.bad(call, format!("sandbox {} details bpfleet cannot read: {what}", chosen.id)))?;
        Ok(Some(convert::pod_sandbox(&status, details)))
    }

    /// Every container of sandbox `sandbox_id` (running or not), sorted by name then
    /// attempt, each with its process and root file system while it runs. A container
    /// removed between the listing and its status is left out; an unknown sandbox has none.
    pub async fn containers(&self, sandbox_id: &str) -> Result<Vec<Container>> {
        check_runtime_id(sandbox_id).map_err(|e| CriError::InvalidArgument(format!("sandbox id {e}")))?;
        let request = wire::ListContainersRequest { filter: Some(convert::container_filter(sandbox_id)) };
        let listed = self.call("ListContainers", request, |mut c, r| async move { c.list_containers(r).await }).await?;
        let ids: Vec<String> =
            listed.containers.into_iter().filter(|c| c.pod_sandbox_id == sandbox_id).map(|c| c.id).collect();
        if ids.len() > self.options.max_containers {
            let what = format!(
                "{} containers for sandbox {sandbox_id}, more than the {} this client reads",
                ids.len(),
                self.options.max_containers
            );
            return Err(self.bad("ListContainers", what));
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            check_runtime_id(&id)
                .map_err(|what| self.bad("ListContainers", format!("a container id bpfleet refuses: {what}")))?;
            if let Some(c) = self.container(id).await? {
                out.push(c);
            }
        }
        out.sort_by(|a, b| (&a.name, a.attempt).cmp(&(&b.name, b.attempt)));
        Ok(out)
    }

    /// The ids of every running container on this node, sorted: one call, for an agent to
    /// tell which of the containers it probes stopped.
    pub async fn running_container_ids(&self) -> Result<Vec<String>> {
        let state = wire::ContainerStateValue { state: wire::ContainerState::ContainerRunning as i32 };
        let filter = wire::ContainerFilter { state: Some(state), ..Default::default() };
        let request = wire::ListContainersRequest { filter: Some(filter) };
        let listed = self.call("ListContainers", request, |mut c, r| async move { c.list_containers(r).await }).await?;
        let mut ids: Vec<String> = listed
            .containers
            .into_iter()
            .filter(|c| convert::container_state(c.state) == ContainerState::Running)
            .map(|c| c.id)
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// One container's verbose status; `None` when it is gone.
    async fn container(&self, id: String) -> Result<Option<Container>> {
        let call = "ContainerStatus";
        let request = wire::ContainerStatusRequest { container_id: id.clone(), verbose: true };
        let answer = match self.call(call, request, |mut c, r| async move { c.container_status(r).await }).await {
            Err(CriError::Refused { code: tonic::Code::NotFound, .. }) => return Ok(None),
            other => other?,
        };
        let status = answer.status.ok_or_else(|| self.bad(call, format!("no status for container {id}")))?;
        if status.id != id {
            return Err(self.bad(call, format!("the status of container {:?} when asked for {id}", status.id)));
        }
        let details = info::container_info(&answer.info)
            .map_err(|what| self.bad(call, format!("container {id} details bpfleet cannot read: {what}")))?;
        Ok(Some(convert::container(&status, details, &self.options.containerd_state_dir)))
    }

    /// One call, bounded by the timeout, its failure classified.
    async fn call<Req, Resp, Fut>(
        &self,
        name: &'static str,
        message: Req,
        send: impl FnOnce(RuntimeServiceClient<Channel>, tonic::Request<Req>) -> Fut,
    ) -> Result<Resp>
    where
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut request = tonic::Request::new(message);
        // Tells the runtime too (grpc-timeout), so it gives up when the client has.
        request.set_timeout(self.options.timeout);
        let timeout = CriError::Timeout { socket: self.socket.clone(), call: name, after: self.options.timeout };
        match tokio::time::timeout(self.options.timeout, send(self.client.clone(), request)).await {
            Err(_) => Err(timeout),
            Ok(Ok(answer)) => Ok(answer.into_inner()),
            Ok(Err(status)) => Err(match status.code() {
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => timeout,
                tonic::Code::Unavailable => {
                    CriError::Unreachable { socket: self.socket.clone(), cause: root_cause(&status) }
                }
                // Raised by this client's decoder: the answer is over `max_message_bytes`.
                tonic::Code::OutOfRange => self.bad(
                    name,
                    format!(
                        "an answer larger than the {} bytes this client reads ({}); raise the CRI message limit",
                        self.options.max_message_bytes,
                        status.message()
                    ),
                ),
                code => CriError::Refused {
                    socket: self.socket.clone(),
                    call: name,
                    code,
                    message: status.message().to_string(),
                },
            }),
        }
    }

    fn bad(&self, call: &'static str, what: String) -> CriError {
        CriError::BadAnswer { socket: self.socket.clone(), call, what }
    }
}
