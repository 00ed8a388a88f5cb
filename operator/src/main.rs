//! bpfleet-operator: see `operator` (lib.rs) and docs/architecture.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use crds::BpfProgram;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, reflector, watcher};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use operator::controller::{self, Context};
use operator::dispatch::{AgentPool, PoolConfig};
use operator::index::NodeIndex;
use operator::metrics::{self, Metrics};
use operator::{leader, resync};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// BpfPrograms reconciled at once.
const RECONCILE_CONCURRENCY: u16 = 16;

#[derive(Parser, Debug)]
#[command(name = "bpfleet-operator", version, about = "Reconciles BpfPrograms across the fleet through bpfleet agents")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Port of the agents, dialled at each Node's InternalIP.
    #[arg(long, env = "BPFLEET_AGENT_PORT", default_value_t = 50051)]
    agent_port: u16,
    /// PEM client certificate of the operator.
    #[arg(long, env = "BPFLEET_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "BPFLEET_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM CA that signs the agents' certificates.
    #[arg(long, env = "BPFLEET_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Name expected on agent certificates.
    #[arg(long, env = "BPFLEET_AGENT_SERVER_NAME", default_value = proto::DEFAULT_AGENT_SERVER_NAME)]
    agent_server_name: String,
    /// Namespace of the operator's Lease and Events.
    #[arg(long, env = "BPFLEET_NAMESPACE", default_value = "bpfleet-system")]
    namespace: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "BPFLEET_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// Agent calls in flight at once, across all nodes.
    #[arg(long, default_value_t = 64)]
    max_concurrency: usize,
    /// Timeout of one agent call, in seconds (a load can take seconds on a busy node).
    #[arg(long, default_value_t = 30)]
    call_timeout_seconds: u64,
    /// How often every agent is listed to repair drift, in seconds.
    #[arg(long, default_value_t = 60)]
    resync_seconds: u64,
    /// This process's identity in the Lease (default: the host name, i.e. the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Delete every BpfProgram and wait until every node has unloaded it (the chart's
    /// pre-delete hook). Run it before removing the operator.
    Uninstall {
        /// How long to wait for nodes to unload, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout_seconds: u64,
        /// After the timeout, release the finalizers anyway (programs may stay on
        /// unreachable nodes; see docs/install.md).
        #[arg(long)]
        force: bool,
    },
}

fn tls_config(args: &Args) -> anyhow::Result<ClientTlsConfig> {
    let read = |flag: &str, p: &Option<PathBuf>| -> anyhow::Result<Vec<u8>> {
        let p = p
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("{flag} is required: the operator talks to agents over mTLS only"))?;
        std::fs::read(p).with_context(|| format!("cannot read {flag} {}", p.display()))
    };
    let cert = read("--tls-cert", &args.tls_cert)?;
    let key = read("--tls-key", &args.tls_key)?;
    let ca = read("--tls-ca", &args.tls_ca)?;
    Ok(ClientTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(args.agent_server_name.clone()))
}

fn main() -> anyhow::Result<()> {
    operator::alloc::limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if args.log_json {
        logs.json().init();
    } else {
        logs.init();
    }

    if let Some(Command::Uninstall { timeout_seconds, force }) = &args.command {
        let client = Client::try_default().await.context("cannot build a Kubernetes client")?;
        return operator::uninstall::run(client, Duration::from_secs(*timeout_seconds), *force).await;
    }
    let mut pool_cfg = PoolConfig::new(args.agent_port, tls_config(&args)?);
    pool_cfg.call_timeout = Duration::from_secs(args.call_timeout_seconds.max(1));
    pool_cfg.max_concurrency = args.max_concurrency.max(1);
    let pool = AgentPool::new(pool_cfg);
    let client = Client::try_default().await.context("cannot build a Kubernetes client (KUBECONFIG or in-cluster)")?;
    let metrics = Arc::new(Metrics::new());
    tokio::spawn({
        let m = metrics.clone();
        let addr = args.metrics_listen;
        async move {
            if let Err(e) = metrics::serve(addr, m).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        }
    });

    let identity = match args.identity.clone() {
        Some(i) => i,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string())?,
    };
    let lease = LeaseManagerBuilder::new(client.clone(), "bpfleet-operator")
        .with_namespace(args.namespace.clone())
        .with_identity(identity.clone())
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .context("cannot set up the leader Lease")?;
    let (leader_rx, _lease_task) = lease.watch().await;
    // A standby is ready too: it can take over at once.
    metrics.ready_flag.store(true, Ordering::Relaxed);
    tracing::info!(%identity, namespace = %args.namespace, "operator started; waiting for the leader Lease");

    let resync_every = Duration::from_secs(args.resync_seconds.max(5));
    let work = move || {
        let (client, pool, metrics) = (client.clone(), pool.clone(), metrics.clone());
        async move {
            metrics.leader.set(1);
            let _not_leader = scopeguard(metrics.clone());
            let (nodes, writer) = reflector::store();
            let recorder =
                Recorder::new(client.clone(), Reporter { controller: "bpfleet-operator".into(), instance: None });
            let ctx = Arc::new(Context {
                client: client.clone(),
                pool,
                nodes,
                index: Arc::new(NodeIndex::default()),
                recorder: Some(recorder),
                metrics,
                desired: Default::default(),
            });
            // Bounded: each reconcile holds its bytecode and one request per node while
            // it dispatches; unbounded, a thousand at start-up cost ~800 MiB (benchmarks.md).
            let programs = Controller::new(Api::<BpfProgram>::all(client), watcher::Config::default())
                .with_config(kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY));
            let store = programs.store();
            let (trigger_tx, trigger_rx) = mpsc::channel(1);
            let (targeted_tx, targeted_rx) = mpsc::channel(1024);
            tokio::spawn(resync::watch_nodes(ctx.clone(), writer, trigger_tx));
            tokio::spawn(resync::watch_agents(ctx.clone(), targeted_tx.clone()));
            tokio::spawn(resync::resync_loop(ctx.clone(), store, resync_every, targeted_tx));
            controller::run(
                ctx,
                programs,
                ReceiverStream::new(trigger_rx),
                ReceiverStream::new(targeted_rx),
                std::future::pending(),
            )
            .await;
        }
    };
    tokio::select! {
        _ = leader::run_while_leader(leader_rx, work) => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("stopping"),
    }
    Ok(())
}

/// Sets the leader gauge back to 0 when the leader's work ends or is aborted.
fn scopeguard(metrics: Arc<Metrics>) -> impl Drop {
    struct Guard(Arc<Metrics>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.leader.set(0);
        }
    }
    Guard(metrics)
}
