//! The gRPC service `bpfleet.agent.v1.Agent` over mTLS, plus `grpc.health.v1`.

use std::pin::Pin;
use std::sync::Arc;

use crds::names::OwnerUid;
use futures::Stream;
use proto::v1::agent_server::{Agent, AgentServer};
use proto::v1::{self, watch_event};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};

use crate::error::{AgentError, Reason};
use crate::fence::EpochFence;
use crate::manager::Manager;
use crate::request::input_from_wire;
use crate::tls::{self, ServerTls};

pub struct AgentService {
    manager: Arc<Manager>,
    fence: EpochFence,
}

impl AgentService {
    /// The service, fenced by the epoch recorded in the manager's state directory.
    pub fn new(manager: Arc<Manager>) -> Self {
        let fence = EpochFence::open(&manager.config().state_dir);
        Self { manager, fence }
    }
}

impl AgentService {
    fn count(&self, method: &str, error: Option<&AgentError>) {
        let outcome = match error {
            None => "ok",
            Some(e) if e.reason == Reason::StaleLeaderEpoch => "refused",
            Some(_) => "failed",
        };
        self.manager.metrics.request(method, outcome);
    }
}

/// The running kernel's release, e.g. `6.18.44`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn apply(&self, req: Request<v1::ApplyRequest>) -> Result<Response<v1::ApplyResponse>, Status> {
        let req = req.into_inner();
        let what = format!("Apply of {}", req.owner.as_ref().map(|o| o.name.as_str()).unwrap_or("?"));
        let result = async {
            self.fence.admit(req.epoch, &what)?;
            let input = input_from_wire(req)?;
            self.manager.apply(input).await
        }
        .await;
        self.count("apply", result.as_ref().err());
        let (state, changed) = result?;
        Ok(Response::new(v1::ApplyResponse { state: Some(state), changed }))
    }

    async fn remove(&self, req: Request<v1::RemoveRequest>) -> Result<Response<v1::RemoveResponse>, Status> {
        let req = req.into_inner();
        let owner = req.owner.ok_or_else(|| Status::invalid_argument("owner is required"))?;
        let uid = OwnerUid::new(&owner.uid).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let result = async {
            self.fence.admit(req.epoch, &format!("Remove of {}", owner.name))?;
            self.manager.remove(&uid).await
        }
        .await;
        self.count("remove", result.as_ref().err());
        Ok(Response::new(v1::RemoveResponse { removed: result? }))
    }

    async fn list(&self, _req: Request<v1::ListRequest>) -> Result<Response<v1::ListResponse>, Status> {
        Ok(Response::new(v1::ListResponse {
            node_name: self.manager.config().node_name.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel_release: kernel_release(),
            owners: self.manager.list(),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _req: Request<v1::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        // Subscribe before the snapshot so nothing falls between the two.
        let rx = self.manager.subscribe();
        let initial: Vec<Result<v1::WatchEvent, Status>> = self
            .manager
            .list()
            .into_iter()
            .map(|state| {
                Ok(v1::WatchEvent {
                    kind: watch_event::Kind::Updated as i32,
                    state: Some(state),
                    reason: "current state".into(),
                })
            })
            .collect();
        let live = BroadcastStream::new(rx).filter_map(|r| match r {
            Ok(ev) => Some(Ok(ev)),
            // A slow reader missed events: tell it to List again rather than lie.
            Err(e) => Some(Err(Status::data_loss(format!("watch fell behind ({e}); call List and Watch again")))),
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(initial).chain(live))))
    }
}

/// Serve the agent API on `listener` with mTLS until `shutdown` resolves.
pub async fn serve(
    manager: Arc<Manager>,
    listener: TcpListener,
    tls: Arc<ServerTls>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<AgentServer<AgentService>>().await;
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(
            AgentServer::new(AgentService::new(manager))
                .max_decoding_message_size(crds::limits::MAX_BYTECODE_BYTES + 64 * 1024),
        )
        .serve_with_incoming_shutdown(tls::incoming(listener, tls), shutdown)
        .await?;
    Ok(())
}
