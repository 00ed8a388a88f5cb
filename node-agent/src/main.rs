//! bpfleet-agent: see `agent` (lib.rs) and docs/architecture.md.
//!
//! `bin/bpfleet-agent-test.rs` runs this same `main` with the test fault hooks armed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent::attach::TcBackend;
use agent::manager::{AgentConfig, Manager};
use agent::stats::RunCounting;
use agent::tls::{ServerTls, TlsFiles};
use agent::{metrics, recovery, server, standalone};
use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "bpfleet-agent", version, about = "Loads, attaches and pins eBPF programs on this node for bpfleet")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Where the node's root filesystem is seen (the chart mounts it read-only at /host):
    /// `bytecode.path` and uprobe targets name files of the node and are resolved inside it.
    #[arg(long, env = "BPFLEET_HOST_ROOT", default_value = "/")]
    host_root: PathBuf,
    /// Admit a node path (`bytecode.path`, uprobe target) only when the file it resolves
    /// to (symlinks followed, inside the host root) lies under this node directory.
    /// Repeatable; unset admits any regular file. E.g. `--allowed-path-prefix /opt/bpf`.
    #[arg(long = "allowed-path-prefix", env = "BPFLEET_ALLOWED_PATH_PREFIXES", value_delimiter = ',')]
    allowed_path_prefixes: Vec<PathBuf>,
    /// Whether the agent runs in the host's PID namespace (the chart sets it from
    /// `agent.hostPID`); unset, it is read from /proc/self/status. Without it a uprobe
    /// scoped to one process (`uprobe.pid`) is refused.
    #[arg(long, env = "BPFLEET_HOST_PID")]
    host_pid: Option<bool>,
    /// This node's name, as in its Node object.
    #[arg(long, env = "BPFLEET_NODE_NAME")]
    node_name: Option<String>,
    /// Address of the gRPC server (mTLS only).
    #[arg(long, env = "BPFLEET_LISTEN", default_value = "0.0.0.0:50051")]
    listen: SocketAddr,
    /// bpffs directory under which everything is pinned.
    #[arg(long, env = "BPFLEET_BPFFS_ROOT", default_value = crds::pins::DEFAULT_ROOT)]
    bpffs_root: PathBuf,
    /// Directory of the owner records that let a restarted agent adopt its pins.
    #[arg(long, env = "BPFLEET_STATE_DIR", default_value = "/run/bpfleet")]
    state_dir: PathBuf,
    /// PEM server certificate (carrying the name the operator expects, e.g. bpfleet-agent).
    #[arg(long, env = "BPFLEET_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "BPFLEET_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM CA that signs the operator's client certificate.
    #[arg(long, env = "BPFLEET_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Accept only client certificates carrying this DNS name: the operator's identity.
    /// Another certificate of the same CA (e.g. the agents' own) is refused.
    #[arg(long, env = "BPFLEET_TLS_CLIENT_NAME", default_value = proto::DEFAULT_OPERATOR_CLIENT_NAME)]
    tls_client_name: String,
    /// How often certificate files are checked for changes, in seconds.
    #[arg(long, default_value_t = 5)]
    tls_reload_seconds: u64,
    /// Address of /metrics and /healthz (off when unset).
    #[arg(long, env = "BPFLEET_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Address of /healthz alone, without /metrics: lets --metrics-listen stay on loopback
    /// (with the host network, an open port is open on the node's address) while the
    /// kubelet probes here. Unset: only --metrics-listen serves it.
    #[arg(long, env = "BPFLEET_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    /// No cluster, no gRPC: reconcile the BpfProgram manifests in this directory.
    #[arg(long)]
    standalone: Option<PathBuf>,
    /// Seconds between standalone reconciliations.
    #[arg(long, default_value_t = 1)]
    standalone_interval: u64,
    /// The container runtime's CRI socket (containerd's): where the pods that programs
    /// attach inside (`xdp.pods`, `tc.pods`, `uprobe.containers`) are found, by uid, with
    /// their network namespaces and containers. Read-only; only asked when an Apply names
    /// pods.
    #[arg(long, env = "BPFLEET_CRI_SOCKET", default_value = agent::pods::resolve::DEFAULT_CRI_SOCKET)]
    cri_socket: PathBuf,
    /// containerd's state directory, where running containers' root file systems are
    /// mounted (`<dir>/io.containerd.runtime.v2.task/k8s.io/<id>/rootfs`): where uprobes
    /// in containers find their binaries. k3s: /run/k3s/containerd.
    #[arg(long, env = "BPFLEET_CRI_STATE_DIR", default_value = agent::pods::resolve::DEFAULT_CRI_STATE_DIR)]
    cri_state_dir: PathBuf,
    /// Most series the maps of one program export on /metrics (spec.metrics). A program
    /// whose maps hold more entries exports this many, and its BpfNode entry says which
    /// metric was cut (metricsLimited).
    #[arg(long, default_value_t = agent::export::DEFAULT_MAX_SERIES)]
    max_metric_series_per_program: usize,
    /// TC mechanism: auto (TCX when the kernel has it), tcx, or clsact.
    #[arg(long, value_enum, default_value_t = TcBackend::Auto)]
    tc_backend: TcBackend,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Mount bpffs at PATH unless a bpf filesystem is already mounted there, then exit
    /// (the chart's init container: the image has no shell and no mount tools).
    MountBpffs {
        #[arg(default_value = "/sys/fs/bpf")]
        path: PathBuf,
    },
    /// Serve map volumes to pods: the CSI node driver csi.bpfleet.dev (the chart's `csi`
    /// container, privileged for its mounts). Reads what runs from --state-dir; loads nothing.
    Csi {
        /// Where the driver's socket goes (the kubelet's plugins/csi.bpfleet.dev).
        #[arg(long, default_value = "/var/lib/kubelet/plugins/csi.bpfleet.dev")]
        socket_dir: PathBuf,
        /// The kubelet's plugin registration directory.
        #[arg(long, default_value = "/var/lib/kubelet/plugins_registry")]
        registration_dir: PathBuf,
        /// Namespaces whose pods may mount maps (comma-separated or repeated); none by default.
        #[arg(long = "csi-namespaces", value_delimiter = ',')]
        namespaces: Vec<String>,
        /// Namespaces whose pods may mount maps writable (`writable: "true"`); none by default.
        #[arg(long = "csi-writable-namespaces", value_delimiter = ',')]
        writable_namespaces: Vec<String>,
    },
}

pub fn main() -> anyhow::Result<()> {
    agent::alloc::without_thread_caches();
    agent::alloc::tune();
    let args = Args::parse();
    init_tracing(args.log_json);
    if agent::fault::process_hooks_armed() {
        // Not naming the variables: scripts/images.sh looks for them in the shipped binary.
        tracing::warn!("test build (bpfleet-agent-test): the fault hooks are armed; never run it in production");
    }
    if let Some(Command::MountBpffs { path }) = &args.command {
        let mounted = agent::kernel::mount_bpffs(path)?;
        tracing::info!(path = %path.display(), mounted, "bpffs {}", if mounted { "mounted" } else { "already mounted" });
        return Ok(());
    }
    if let Some(Command::Csi { socket_dir, registration_dir, namespaces, writable_namespaces }) = &args.command {
        let node_name = match args.node_name.clone() {
            Some(n) => n,
            None => agent::kernel::hostname().context("cannot read the host name; pass --node-name")?,
        };
        let cfg = agent::csi::CsiConfig {
            node_name,
            socket_dir: socket_dir.clone(),
            registration_dir: registration_dir.clone(),
            state_dir: args.state_dir.clone(),
            namespaces: namespaces.clone(),
            writable_namespaces: writable_namespaces.clone(),
        };
        return tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(agent::csi::serve(cfg));
    }
    agent::hostfs::configure(&args.host_root, &args.allowed_path_prefixes)?;
    if let Some(host) = args.host_pid {
        agent::kernel::set_host_pid(host);
    }
    if !args.allowed_path_prefixes.is_empty() {
        let allowed = agent::hostfs::host_root().allowed();
        tracing::info!(?allowed, "bytecode paths and uprobe targets only under these node directories");
    }
    // Before any thread exists: see `hide_kernel_btf_from_aya`.
    if let Err(e) = agent::loader::hide_kernel_btf_from_aya() {
        tracing::warn!(error = %e, "cannot share the parsed kernel BTF with aya; every load parses it again (slower)");
    }
    // Two workers whatever the node's size: the agent mostly waits (loads run on blocking
    // threads), and every thread is memory paid on every node.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    agent::kernel::raise_memlock();
    agent::kernel::raise_nofile();
    agent::kernel::check_bpffs(&args.bpffs_root)?;
    // Refuse a bad configuration before recovery touches anything in bpffs.
    let tls = match &args.standalone {
        Some(_) => None,
        None => {
            let (Some(cert), Some(key), Some(client_ca)) =
                (args.tls_cert.clone(), args.tls_key.clone(), args.tls_client_ca.clone())
            else {
                bail!(
                    "the agent serves mTLS only: pass --tls-cert, --tls-key and --tls-client-ca (or use --standalone DIR without a cluster)"
                );
            };
            Some(Arc::new(ServerTls::load(TlsFiles { cert, key, client_ca }, &args.tls_client_name)?))
        }
    };

    let node_name = match args.node_name.clone() {
        Some(n) => n,
        None => agent::kernel::hostname().context("cannot read the host name; pass --node-name")?,
    };
    let manager = Manager::new(AgentConfig {
        node_name: node_name.clone(),
        bpffs_root: args.bpffs_root.clone(),
        state_dir: args.state_dir.clone(),
        tc_backend: args.tc_backend,
        cri_socket: args.cri_socket.clone(),
        cri_state_dir: args.cri_state_dir.clone(),
        max_metric_series: args.max_metric_series_per_program,
    })?;
    let recovered = tokio::task::spawn_blocking({
        let m = Arc::clone(&manager);
        move || recovery::adopt(&m)
    })
    .await??;
    tracing::info!(node = %node_name, adopted = recovered.adopted.len(), "agent starting");
    // Puts back kernel.bpf_stats_enabled if this agent died holding a Probe's stats lease,
    // and keeps run counting on while the agent runs.
    let counting = Arc::new(RunCounting::start(&args.state_dir));

    let m = Arc::clone(&manager);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        for n in 0u64.. {
            tick.tick().await;
            let refreshed = Arc::clone(&m);
            let _ = tokio::task::spawn_blocking(move || refreshed.refresh_health()).await;
            m.heal_pods(true).await;
            // An idle agent holds no parsed kernel BTF, and what a burst of work freed goes
            // back to the kernel (docs/benchmarks.md, node agent memory).
            if !agent::loader::kernel_btf().release_idle(agent::loader::KEEP_PARSED_BTF) && n % 5 == 0 {
                agent::alloc::trim();
            }
        }
    });
    // A probe holds its container's root file system mounted: the runtime, unmounting it
    // when the container stops, retries for a few seconds only. Stopped containers (one
    // question to the runtime, only while some container is probed) are looked for more
    // often than the rest.
    let m = Arc::clone(&manager);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        // A long pass is not followed by a burst of catch-up passes.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            m.heal_pods(false).await;
        }
    });
    if let Some(dir) = args.standalone {
        serve_http(args.metrics_listen, args.health_listen, &manager).await?;
        tokio::select! {
            r = standalone::run(manager, dir, Duration::from_secs(args.standalone_interval.max(1))) => r?,
            _ = shutdown_signal() => tracing::info!("stopping; programs stay attached (pinned)"),
        }
        return Ok(());
    }

    let Some(tls) = tls else { bail!("internal: TLS configuration missing") };
    tls.spawn_reloader(Duration::from_secs(args.tls_reload_seconds.max(1)));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", args.listen))?;
    // /healthz (the pod's readiness) answers only once the gRPC port listens: an operator
    // that sees the agent Ready dials it at once.
    serve_http(args.metrics_listen, args.health_listen, &manager).await?;
    tracing::info!(listen = %args.listen, "serving bpfleet.agent.v1 over mTLS");
    let served = server::serve(manager, Arc::clone(&counting), listener, tls, async {
        shutdown_signal().await;
        tracing::info!("stopping; programs stay attached (pinned)");
    })
    .await;
    // No Probe can extend a lease any more: give kernel.bpf_stats_enabled back now.
    counting.release();
    served
}

/// Bind --metrics-listen and --health-listen (an address in use stops the start, naming
/// its flag) and serve them in the background.
async fn serve_http(
    metrics_listen: Option<SocketAddr>,
    health_listen: Option<SocketAddr>,
    manager: &Arc<Manager>,
) -> anyhow::Result<()> {
    let mut http = Vec::new();
    if let Some(addr) = metrics_listen {
        http.push((metrics::bind("--metrics-listen", addr).await?, metrics::metrics_routes(Arc::clone(manager))));
    }
    if let Some(addr) = health_listen {
        http.push((metrics::bind("--health-listen", addr).await?, metrics::probe_routes(Arc::clone(manager))));
    }
    for (listener, app) in http {
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(listener, app).await {
                tracing::error!(error = %e, "metrics/health server stopped");
            }
        });
    }
    Ok(())
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
