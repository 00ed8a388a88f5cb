//! operator-bench: the operator's share of a BpfProgram's way to Ready, and its memory with
//! 1,000 BpfPrograms over 50 nodes. `scripts/bench-operator.sh` builds and runs it;
//! docs/benchmarks.md (section "Operator") explains every number.
//!
//! There is no API server on the bench machine: `controller::reconcile` runs against a mocked
//! kube `Client` (tower-test) that answers every request at once, in process. Everything on the
//! agent side is real in the latency part and fake in the memory part:
//!
//! - **latency**: N real `bpfleet-agent` processes (N = 1, 10, 50), each in a network namespace
//!   of its own (`bpfob<i>`, reached over a veth pair at 10.231.<i+1>.2, mTLS with a test PKI),
//!   so that one BpfProgram (XDP on `lo`, generic mode) attaches on every "node" the way one
//!   spec attaches to `eth0` on every node of a cluster. Per iteration: reconcile a new
//!   BpfProgram (finalizer present) until its status says Ready on all N nodes; each agent's
//!   own apply time comes from its `/metrics` (`bpfleet_agent_apply_duration_seconds`); then a
//!   reconcile of the deleted object removes it everywhere.
//! - **rss** (a fresh process, so nothing of the latency part counts): 50 fake agents in a
//!   child process (`fake-agents`: tonic servers over the same mTLS, no kernel), 1,000
//!   BpfPrograms in a reflector store, all reconciled, then one resync pass; VmRSS/VmHWM of
//!   the operator side from /proc/self/status.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::tls::testpki::{CLIENT_NAME, TestPki};
use agent::tls::{ServerTls, TlsFiles};
use anyhow::{Context as _, bail, ensure};
use base64::Engine;
use clap::{Parser, Subcommand};
use crds::BpfProgram;
use futures::{Stream, StreamExt};
use http::{Request, Response};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::client::Body;
use kube::core::ObjectList;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use operator::controller::{Context, FINALIZER, reconcile};
use operator::dispatch::{AgentPool, NodeAddr, PoolConfig};
use operator::metrics::Metrics;

mod fake_agents;
mod latency;
mod mock_api;
mod rollout;
mod rss;
mod scale;

use fake_agents::*;
use latency::*;
use mock_api::*;
use proto::v1;
use proto::v1::agent_server::{Agent, AgentServer};
use rollout::*;
use rss::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

/// The agents' gRPC and metrics ports: the same in every namespace, as on a fleet.
const AGENT_PORT: u16 = 50051;
const METRICS_PORT: u16 = 9464;
const NETNS_PREFIX: &str = "bpfob";
/// Largest fleet the latency part supports: one /24 per agent inside 10.231.0.0/16.
const MAX_AGENTS: usize = 200;
const APPLY_SUM: &str = "bpfleet_agent_apply_duration_seconds_sum";
const APPLY_COUNT: &str = "bpfleet_agent_apply_duration_seconds_count";

#[derive(Parser, Debug)]
#[command(name = "operator-bench", about = "Create→Ready latency and memory of bpfleet-operator (mocked API server)")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Timed iterations per fleet size (one untimed warm-up pass comes first).
    #[arg(long, default_value_t = 15)]
    iterations: usize,
    /// Fleet sizes of the latency part (real agents).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 10, 50])]
    agents: Vec<usize>,
    /// The agent binary (a release build).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// The XDP object every BpfProgram carries inline (examples/build.sh).
    #[arg(long)]
    object: Option<PathBuf>,
    /// BpfPrograms of the memory part.
    #[arg(long, default_value_t = 1000)]
    programs: usize,
    /// Nodes (fake agents) of the memory part.
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// Configurations of the memory part, each in a fresh process: reconciles in flight
    /// (0 = all at once, kube's Controller default: what a starting operator does with every
    /// existing BpfProgram) and the resync (`fan-out` as the operator does, `streaming` as
    /// proposed in docs/benchmarks.md).
    #[arg(long, value_delimiter = ',', default_values_t = ["0:fan-out".to_string(), "16:fan-out".to_string(), "16:streaming".to_string()])]
    memory: Vec<String>,
    /// Pause after each removal, so the kernel's deferred teardown ends outside the timing.
    #[arg(long, default_value_t = 100)]
    settle_ms: u64,
    #[arg(long)]
    skip_latency: bool,
    #[arg(long)]
    skip_rss: bool,
    /// Real agents of the rollout part (a progressive rollout of a new revision).
    #[arg(long, default_value_t = 50)]
    rollout_agents: usize,
    #[arg(long)]
    skip_rollout: bool,
    /// Passed by `cargo bench`: without it (e.g. `cargo test --all-targets`) the bench does nothing.
    #[arg(long, hide = true, global = true)]
    bench: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Internal: serve fake agents (no kernel work) on 127.0.0.2.. until stdin closes.
    FakeAgents {
        #[arg(long)]
        pki_dir: PathBuf,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        count: usize,
    },
    /// The operator at fleet scale (docs/benchmarks.md; scripts/bench-scale.sh): N fake
    /// agents × P BpfPrograms; cold start, a resync, at rest, two spec changes. Prints one
    /// JSON line.
    Scale {
        #[arg(long)]
        object: Option<PathBuf>,
        #[arg(long)]
        programs: usize,
        #[arg(long)]
        nodes: usize,
        /// Reconciles in flight (the operator's default).
        #[arg(long, default_value_t = operator::work::DEFAULT_RECONCILE_CONCURRENCY as usize)]
        concurrency: usize,
        /// The pool's connection budget (the operator's `--max-agent-connections`).
        #[arg(long, default_value_t = operator::dispatch::DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
    },
    /// Internal: the operator side of the memory part; prints one JSON line.
    Rss {
        #[arg(long)]
        object: PathBuf,
        #[arg(long)]
        programs: usize,
        #[arg(long)]
        nodes: usize,
        #[arg(long)]
        concurrency: usize,
        /// Resync as the operator does (`fan-out`: every List at once, all answers kept until
        /// the pass ends) or as proposed (`streaming`: 4 at a time, each used and dropped).
        #[arg(long, value_enum, default_value_t = ResyncMode::FanOut)]
        resync: ResyncMode,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum ResyncMode {
    FanOut,
    Streaming,
}

/// Counts the bytes the program holds (allocated and not yet freed), next to what the
/// allocator (glibc malloc, as in the operator) keeps from the kernel (VmRSS).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static LIVE_PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    LIVE_PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call goes to `System` unchanged; the counters are only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target"))
}

fn main() -> anyhow::Result<()> {
    // As the operator's main does.
    operator::alloc::limit_malloc_arenas();
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match args.cmd {
        Some(Cmd::FakeAgents { pki_dir, port, count }) => runtime.block_on(fake_agents(&pki_dir, port, count)),
        Some(Cmd::Scale { ref object, programs, nodes, concurrency, max_connections }) => {
            let object = object.clone().unwrap_or_else(|| workspace().join("examples/bpf/build/xdp_counter.o"));
            let report = runtime.block_on(scale::scale(&object, programs, nodes, concurrency, max_connections))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Some(Cmd::Rss { ref object, programs, nodes, concurrency, resync }) => {
            let report = runtime.block_on(rss(object, programs, nodes, concurrency, resync))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        // `cargo test --all-targets` runs bench targets without `--bench`: do nothing there.
        None if !args.bench => {
            eprintln!("operator-bench: run it with scripts/bench-operator.sh or cargo bench (or pass --bench)");
            Ok(())
        }
        None => runtime.block_on(async {
            tokio::select! {
                r = run(&args) => r,
                _ = tokio::signal::ctrl_c() => bail!("interrupted (agents stopped, namespaces and pins removed)"),
            }
        }),
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let object = args.object.clone().unwrap_or_else(|| workspace().join("examples/bpf/build/xdp_counter.o"));
    let elf = std::fs::read(&object).with_context(|| format!("{} (run examples/build.sh)", object.display()))?;
    println!("{}\n", machine());
    if !args.skip_latency {
        let agent_bin = args.agent_bin.clone().unwrap_or_else(|| target_dir().join("release/bpfleet-agent"));
        let (rows, warm) = latency(args, &agent_bin, &elf).await?;
        print_latency(&rows, args.iterations, &warm);
    }
    if !args.skip_rollout {
        let agent_bin = args.agent_bin.clone().unwrap_or_else(|| target_dir().join("release/bpfleet-agent"));
        let v2 = object.with_file_name("xdp_counter_v2.o");
        let elf_v2 = std::fs::read(&v2).with_context(|| format!("{} (run examples/build.sh)", v2.display()))?;
        let steps = rollout_steps(args.rollout_agents, &agent_bin, &elf, &elf_v2).await?;
        print_rollout(args.rollout_agents, &steps);
    }
    if !args.skip_rss {
        let mut reports = Vec::new();
        for config in &args.memory {
            let (c, resync) = config.split_once(':').unwrap_or((config, "fan-out"));
            let c: usize = c.parse().with_context(|| format!("--memory {config}: CONCURRENCY:RESYNC"))?;
            eprintln!("== memory: {} BpfPrograms over {} fake agents, {config}", args.programs, args.nodes);
            reports.push(rss_in_child(&object, args.programs, args.nodes, c, resync)?);
        }
        print_rss(&reports);
    }
    Ok(())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_kib = read_kib("/proc/meminfo", "MemTotal:").unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!("Machine: {cpus} CPUs ({model}), {:.1} GiB RAM, Linux {}.", mem_kib as f64 / 1024.0 / 1024.0, kernel.trim())
}
