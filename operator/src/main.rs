//! bpfleet-operator: see `operator` (lib.rs) and docs/architecture.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kube::Client;
use operator::dispatch::{AgentPool, PoolConfig};
use operator::leader::{self, Elector, LeaseTiming};
use operator::metrics::{self, Metrics};
use operator::tls::{self, ClientTlsFiles};
use operator::work::{self, WorkConfig};

/// Name of the leader Lease in --namespace.
const LEASE_NAME: &str = "bpfleet-operator";

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
    /// Name expected on agent certificates; with `{node}` (e.g. `{node}.node.bpfleet.dev`),
    /// each agent's certificate must carry its own node's name (per-node identities).
    #[arg(long, env = "BPFLEET_AGENT_SERVER_NAME", default_value = proto::DEFAULT_AGENT_SERVER_NAME)]
    agent_server_name: String,
    /// Namespace of the operator's Lease and Events.
    #[arg(long, env = "BPFLEET_NAMESPACE", default_value = "bpfleet-system")]
    namespace: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "BPFLEET_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// Address of /healthz and /readyz alone, without /metrics: lets --metrics-listen stay
    /// on loopback while the kubelet probes here. Unset: only --metrics-listen serves them.
    #[arg(long, env = "BPFLEET_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    /// Agent calls in flight at once, across all nodes.
    #[arg(long, default_value_t = 64)]
    max_concurrency: usize,
    /// Agent connections kept open (each holds memory: see docs/benchmarks.md). A fleet with
    /// more nodes than this gets no Watch streams (changes on nodes show at each resync) and
    /// keeps 4 × --max-concurrency open, the least recently used closed first.
    #[arg(long, default_value_t = operator::dispatch::DEFAULT_MAX_CONNECTIONS)]
    max_agent_connections: usize,
    /// Timeout of one agent call, in seconds (a load can take seconds on a busy node).
    #[arg(long, default_value_t = 30)]
    call_timeout_seconds: u64,
    /// Label selector of the agent pods in --namespace (the chart sets the agent
    /// DaemonSet's): a selected node without a Ready agent waits for it, and gets its
    /// programs as soon as it is Ready. Unset: every node is taken to run an agent.
    #[arg(long, env = "BPFLEET_AGENT_POD_SELECTOR")]
    agent_pod_selector: Option<String>,
    /// A node whose agent was Ready and stops answering counts as failed only after this
    /// many seconds (until then its programs wait for it).
    #[arg(long, default_value_t = 60)]
    agent_unreachable_grace_seconds: u64,
    /// A Prometheus base URL (`http://prometheus.monitoring:9090`) that a BpfProgram's
    /// `spec.rollout.health.prometheus.address` may name; repeat for several. None by
    /// default: a program's author picks the address, and the operator queries only these.
    #[arg(long = "prometheus-address", value_name = "URL")]
    prometheus_addresses: Vec<String>,
    /// How often every agent is listed to repair drift, in seconds.
    #[arg(long, default_value_t = 60)]
    resync_seconds: u64,
    /// A BpfNode's status.lastHeartbeatTime is written with every other write of it and,
    /// while nothing else changes, once it is older than this many seconds (plus up to a
    /// quarter more, spread by node): a fleet of N nodes at rest costs N writes per interval.
    /// 0: only with other writes.
    #[arg(long, default_value_t = 600)]
    bpfnode_heartbeat_seconds: u64,
    /// How often the client certificate files are checked for changes, in seconds.
    #[arg(long, default_value_t = 10)]
    tls_reload_seconds: u64,
    /// This process's identity in the Lease (default: the host name, i.e. the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// A registry (`host[:port]`) to reach over plain HTTP instead of HTTPS, for
    /// `bytecode.image`; repeatable. Only for registries on a trusted network.
    #[arg(long = "insecure-registry", env = "BPFLEET_INSECURE_REGISTRIES", value_delimiter = ',')]
    insecure_registries: Vec<String>,
    /// PEM file of CA certificates to trust for registries, besides the system's.
    #[arg(long, env = "BPFLEET_REGISTRY_CA_FILE")]
    registry_ca_file: Option<std::path::PathBuf>,
    /// Signature policy for `bytecode.image`: a Secret in --namespace whose `*.pub` keys
    /// (PEM, cosign format) must have signed every image; unsigned images are refused.
    #[arg(long, env = "BPFLEET_IMAGE_SIGNATURE_KEYS_SECRET")]
    image_signature_keys_secret: Option<String>,
    /// Address ranges (CIDR, comma-separated or repeated) that registries' redirects and
    /// token realms may lead to although private, loopback or link-local. The registry an
    /// image names is reached wherever it is; this is for where it sends the operator
    /// besides itself (e.g. blob storage on a private network).
    #[arg(long, env = "BPFLEET_REGISTRY_ALLOW_PRIVATE_RANGES", value_delimiter = ',')]
    registry_allow_private_ranges: Vec<oci::Cidr>,
    /// Seconds to resolve, pull or verify one image, as a whole.
    #[arg(long, default_value_t = operator::image::DEFAULT_IMAGE_DEADLINE.as_secs())]
    image_deadline_seconds: u64,
    /// Serve map reads for `kubectl bpfleet maps` here (HTTPS with a certificate made at
    /// start; callers reach it through the API server's service proxy and present a token
    /// checked by TokenReview and SubjectAccessReview). Off when not given.
    #[arg(long)]
    maps_listen: Option<SocketAddr>,
    /// Serve the BpfProgram validating webhook (HTTPS, path /validate-bpfprogram) here,
    /// enforcing the BpfAdmissionPolicy `default`; for clusters without
    /// ValidatingAdmissionPolicy. Needs --webhook-tls-cert and --webhook-tls-key.
    #[arg(long, env = "BPFLEET_WEBHOOK_LISTEN")]
    webhook_listen: Option<SocketAddr>,
    /// PEM certificate chain the webhook serves (re-read when it changes).
    #[arg(long, env = "BPFLEET_WEBHOOK_TLS_CERT")]
    webhook_tls_cert: Option<PathBuf>,
    /// PEM private key of --webhook-tls-cert.
    #[arg(long, env = "BPFLEET_WEBHOOK_TLS_KEY")]
    webhook_tls_key: Option<PathBuf>,
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

fn tls_files(args: &Args) -> anyhow::Result<ClientTlsFiles> {
    let need = |flag: &str, p: &Option<PathBuf>| {
        p.clone().ok_or_else(|| anyhow::anyhow!("{flag} is required: the operator talks to agents over mTLS only"))
    };
    Ok(ClientTlsFiles {
        cert: need("--tls-cert", &args.tls_cert)?,
        key: need("--tls-key", &args.tls_key)?,
        ca: need("--tls-ca", &args.tls_ca)?,
        server_name: args.agent_server_name.clone(),
    })
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
    let files = tls_files(&args)?;
    let loaded = files.load()?;
    let mut pool_cfg = PoolConfig::new(args.agent_port, loaded.config);
    pool_cfg.per_node_name = args.agent_server_name.contains("{node}").then(|| args.agent_server_name.clone());
    pool_cfg.call_timeout = Duration::from_secs(args.call_timeout_seconds.max(1));
    pool_cfg.max_concurrency = args.max_concurrency.max(1);
    let nofile = proto::limits::raise_nofile();
    pool_cfg.max_connections = match &nofile {
        Ok(limit) => operator::dispatch::fit_connections(args.max_agent_connections, *limit),
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise RLIMIT_NOFILE; keeping --max-agent-connections as given");
            args.max_agent_connections
        }
    };
    let pool = AgentPool::new(pool_cfg);
    // The pool keeps at least --max-concurrency connections: say the budget it really has.
    let budget = pool.config().max_connections;
    if budget < args.max_agent_connections
        && let Ok(limit) = &nofile
    {
        tracing::warn!(
            requested = args.max_agent_connections,
            open_file_limit = limit,
            budget,
            "--max-agent-connections lowered to fit the open-file limit; raise the container's nofile limit"
        );
    }
    let client = Client::try_default().await.context("cannot build a Kubernetes client (KUBECONFIG or in-cluster)")?;
    let metrics = Arc::new(Metrics::new());
    // Bound before anything else starts: an address in use stops the start with the flag's
    // name instead of leaving probes that never answer.
    let mut http =
        vec![(metrics::bind("--metrics-listen", args.metrics_listen).await?, metrics::metrics_routes(metrics.clone()))];
    if let Some(addr) = args.health_listen {
        http.push((metrics::bind("--health-listen", addr).await?, metrics::probe_routes(metrics.clone())));
    }
    for (listener, app) in http {
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(listener, app).await {
                tracing::error!(error = %e, "metrics/health server stopped");
            }
        });
    }

    if let Some(addr) = args.maps_listen {
        let reads = operator::maps::MapReads::new(client.clone(), pool.clone());
        tokio::spawn(async move {
            if let Err(error) = operator::maps::serve(addr, reads).await {
                tracing::error!(error = %format!("{error:#}"), "map reads stopped");
                std::process::exit(1);
            }
        });
    }

    if let Some(addr) = args.webhook_listen {
        let (Some(cert), Some(key)) = (args.webhook_tls_cert.clone(), args.webhook_tls_key.clone()) else {
            anyhow::bail!(
                "--webhook-listen needs --webhook-tls-cert and --webhook-tls-key: the API server calls webhooks over HTTPS only"
            );
        };
        let view = operator::admission::PolicyView::default();
        tokio::spawn(operator::admission::follow_policy(client.clone(), view.clone()));
        let tls = operator::admission::WebhookTls { cert, key };
        // Bind now so a bad address or certificate stops the start, not a later request.
        let server = operator::admission::serve(addr, tls, view);
        tokio::spawn(async move {
            if let Err(error) = server.await {
                tracing::error!(error = %format!("{error:#}"), "admission webhook stopped");
                std::process::exit(1);
            }
        });
    }

    let identity = match args.identity.clone() {
        Some(i) => i,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string())?,
    };
    let timing = LeaseTiming::default();
    timing.check().map_err(anyhow::Error::msg)?;
    let elector = Elector::new(client.clone(), &args.namespace, LEASE_NAME, &identity, timing);
    // Ready: the leader once its caches have synced and every agent was listed; a standby
    // once it has read the Lease (it reaches the API and can take over).
    tokio::spawn({
        let (m, seen) = (metrics.clone(), elector.lease_seen());
        async move {
            loop {
                let ready =
                    metrics::readiness(m.leader.get() == 1, m.caches_synced.get() == 1, seen.load(Ordering::Relaxed));
                m.ready_flag.store(ready, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    tracing::info!(%identity, namespace = %args.namespace, "operator started; campaigning for the leader Lease");

    // Caches and registry bounds sized from the container's memory limit.
    let memory = operator::memory::MemoryBudget::from_cgroup();
    tracing::info!(
        limit = ?memory.limit,
        image_cache_bytes = memory.image_cache_bytes,
        config_map_cache_bytes = memory.config_map_cache_bytes,
        registry_bytes_in_flight = memory.registry_bytes_in_flight,
        max_pulls = memory.max_pulls,
        "memory budget"
    );
    let cfg = WorkConfig {
        resync_every: Duration::from_secs(args.resync_seconds.max(5)),
        history_namespace: args.namespace.clone(),
        images: operator::image::ImageConfig {
            namespace: args.namespace.clone(),
            insecure_registries: args.insecure_registries.clone(),
            ca_pem: match &args.registry_ca_file {
                Some(f) => Some(std::fs::read(f).with_context(|| format!("--registry-ca-file {}", f.display()))?),
                None => None,
            },
            signature_keys_secret: args.image_signature_keys_secret.clone(),
            allow_private_ranges: args.registry_allow_private_ranges.clone(),
            cache_bytes: memory.image_cache_bytes,
            max_pulls: memory.max_pulls,
            max_bytes_in_flight: memory.registry_bytes_in_flight,
            image_deadline: Duration::from_secs(args.image_deadline_seconds.max(1)),
        },
        config_map_cache_bytes: memory.config_map_cache_bytes,
        agent_pod_selector: args.agent_pod_selector.clone().filter(|s| !s.is_empty()),
        unreachable_grace: Duration::from_secs(args.agent_unreachable_grace_seconds),
        prometheus_addresses: args.prometheus_addresses.clone(),
        bpfnode_heartbeat: Duration::from_secs(args.bpfnode_heartbeat_seconds),
        ..WorkConfig::default()
    };
    let work = |epoch| work::lead(client.clone(), pool.clone(), metrics.clone(), epoch, cfg.clone());
    let reload = tls::reload_on_change(
        files,
        pool.clone(),
        loaded.fingerprint,
        Duration::from_secs(args.tls_reload_seconds.max(1)),
    );
    // Whatever ends first, the others are dropped here, the leader's work with them,
    // before the Lease is released: the next leader never overlaps this one.
    let outcome = tokio::select! {
        _ = elector.run() => Ok(()),
        r = leader::run_while_leader(elector.subscribe(), work) => r.map_err(anyhow::Error::msg),
        _ = reload => Ok(()),
        signal = shutdown_signal() => {
            tracing::info!(%signal, "stopping: handing leadership over");
            Ok(())
        }
    };
    elector.release().await;
    outcome
}

/// SIGTERM (Kubernetes stopping the pod; the operator is PID 1 in its image) or SIGINT.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
