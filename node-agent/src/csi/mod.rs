//! Map volumes for pods: a CSI node driver (`csi.bpfleet.dev`, ephemeral inline volumes)
//! that the kubelet finds through its plugin registration, run as the agent DaemonSet's
//! `csi` container (`bpfleet-agent csi`). It mounts a bpffs holding only the maps a pod's
//! volume names (see [`volume`]), after checking the pod's namespace may, and reads what
//! runs from the agent's state directory (read-only); it loads and attaches nothing.

pub mod volume;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proto::csi::identity_server::{Identity, IdentityServer};
use proto::csi::node_server::{Node, NodeServer};
use proto::csi::{self as pb};
use proto::registration::registration_server::{Registration, RegistrationServer};
use proto::registration::{InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::store::OwnerRecord;
use volume::Refused;

/// The driver's name: a pod's `csi.driver`, the CSIDriver object's name.
pub const DRIVER: &str = "csi.bpfleet.dev";

/// How the driver runs.
#[derive(Clone, Debug)]
pub struct CsiConfig {
    pub node_name: String,
    /// Where the driver's socket is (the kubelet's `plugins/csi.bpfleet.dev`).
    pub socket_dir: PathBuf,
    /// The kubelet's `plugins_registry` directory.
    pub registration_dir: PathBuf,
    /// The agent's state directory: the records of what runs here.
    pub state_dir: PathBuf,
    /// Namespaces whose pods may mount maps read-only, and those that may mount them writable.
    pub namespaces: Vec<String>,
    pub writable_namespaces: Vec<String>,
}

/// The records of what runs here, read without changing the directory (the agent owns it).
fn records(state_dir: &Path) -> Vec<OwnerRecord> {
    let Ok(dir) = std::fs::read_dir(state_dir) else { return Vec::new() };
    dir.flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json") && !n.starts_with('.')))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|bytes| crate::store::parse_record_bytes(&bytes).ok())
        .collect()
}

fn status(r: Refused) -> Status {
    match r {
        Refused::Invalid(m) => Status::invalid_argument(m),
        Refused::Denied(m) => Status::permission_denied(m),
        Refused::NotFound(m) => Status::not_found(m),
        Refused::Failed(m) => Status::internal(m),
    }
}

/// The target path the kubelet gives, refused unless absolute and plain (no `..`).
fn target(path: &str) -> Result<PathBuf, Status> {
    let p = PathBuf::from(path);
    let plain = p.is_absolute() && p.components().all(|c| !matches!(c, std::path::Component::ParentDir));
    if plain {
        Ok(p)
    } else {
        Err(Status::invalid_argument(format!("target_path {path:?} is not an absolute plain path")))
    }
}

#[derive(Clone)]
struct Driver {
    cfg: std::sync::Arc<CsiConfig>,
}

#[tonic::async_trait]
impl Identity for Driver {
    async fn get_plugin_info(
        &self,
        _: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<pb::GetPluginInfoResponse>, Status> {
        Ok(Response::new(pb::GetPluginInfoResponse {
            name: DRIVER.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<pb::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(pb::GetPluginCapabilitiesResponse {}))
    }

    async fn probe(&self, _: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeResponse>, Status> {
        Ok(Response::new(pb::ProbeResponse { ready: Some(pb::BoolValue { value: true }) }))
    }
}

#[tonic::async_trait]
impl Node for Driver {
    async fn node_publish_volume(
        &self,
        req: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        let target = target(&req.target_path)?;
        let context: BTreeMap<String, String> = req.volume_context.into_iter().collect();
        let cfg = self.cfg.clone();
        let done = tokio::task::spawn_blocking(move || {
            let asked = volume::request(&context, req.readonly)?;
            volume::check_target(&asked, &target)?;
            volume::allowed(&asked, &cfg.namespaces, &cfg.writable_namespaces)?;
            let pins = volume::pins(&asked, &records(&cfg.state_dir))?;
            volume::publish(&target, &pins, asked.writable)?;
            tracing::info!(volume = %req.volume_id, program = %asked.program, namespace = %asked.namespace, maps = pins.len(), writable = asked.writable, target = %target.display(), "map volume published");
            Ok::<_, Refused>(())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        done.map_err(|r| {
            tracing::info!(refused = ?r, "map volume refused");
            status(r)
        })?;
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        let req = req.into_inner();
        let target = target(&req.target_path)?;
        tokio::task::spawn_blocking(move || volume::unpublish(&target))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status)?;
        tracing::info!(volume = %req.volume_id, "map volume unpublished");
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {}))
    }

    async fn node_get_info(
        &self,
        _: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse { node_id: self.cfg.node_name.clone(), max_volumes_per_node: 0 }))
    }
}

#[derive(Clone)]
struct Registrar {
    endpoint: String,
}

#[tonic::async_trait]
impl Registration for Registrar {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: "CSIPlugin".into(),
            name: DRIVER.into(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec!["1.0.0".into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let s = req.into_inner();
        if s.plugin_registered {
            tracing::info!("the kubelet registered {DRIVER}");
        } else {
            tracing::error!(error = %s.error, "the kubelet did not register {DRIVER}");
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// A fresh listening socket at `path` (a stale one from an earlier run is replaced).
fn listen(path: &Path) -> anyhow::Result<UnixListenerStream> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    Ok(UnixListenerStream::new(l))
}

/// Serve the driver and its registration until SIGTERM or SIGINT, then remove both
/// sockets, the registration's first: a socket left behind would have the kubelet retry a
/// dead plugin with a growing backoff (up to two minutes) that also holds up the next
/// agent's registration at the same path, so its pods' map volumes would wait for it.
pub async fn serve(cfg: CsiConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    serve_until(cfg, stop).await
}

/// [`serve`] until `stop` completes.
pub async fn serve_until(cfg: CsiConfig, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let socket = cfg.socket_dir.join("csi.sock");
    let registration = cfg.registration_dir.join(format!("{DRIVER}-reg.sock"));
    let driver = Driver { cfg: std::sync::Arc::new(cfg) };
    let csi = listen(&socket)?;
    let reg = listen(&registration)?;
    tracing::info!(socket = %socket.display(), registration = %registration.display(), namespaces = ?driver.cfg.namespaces, "{DRIVER} serving");
    let registrar = Registrar { endpoint: socket.display().to_string() };
    let csi_server = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(driver.clone()))
        .add_service(NodeServer::new(driver))
        .serve_with_incoming(csi);
    let reg_server =
        tonic::transport::Server::builder().add_service(RegistrationServer::new(registrar)).serve_with_incoming(reg);
    let served = tokio::select! {
        r = async { tokio::try_join!(csi_server, reg_server).map(|_| ()) } => r.map_err(anyhow::Error::from),
        () = stop => {
            tracing::info!("{DRIVER} stopping: its sockets are removed");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(&registration);
    let _ = std::fs::remove_file(&socket);
    served
}
