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

mod scale;
use proto::v1;
use proto::v1::agent_server::{Agent, AgentServer};
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
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
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
        Some(Cmd::Scale { ref object, programs, nodes, concurrency }) => {
            let object = object.clone().unwrap_or_else(|| workspace().join("examples/bpf/build/xdp_counter.o"));
            let report = runtime.block_on(scale::scale(&object, programs, nodes, concurrency))?;
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

// ---------------------------------------------------------------------------------------------
// The mocked API server

/// Answers every request the operator makes, at once: status and finalizer patches of
/// BpfPrograms (echoing a small valid object), BpfNode applies, Events (echoed). Records
/// when each BpfProgram's status first said Ready.
#[derive(Default)]
struct MockApi {
    /// BpfProgram name -> (when the status patch arrived, the status).
    statuses: Mutex<HashMap<String, (Instant, Value)>>,
    record: bool,
    ready_patches: AtomicUsize,
    requests: AtomicUsize,
    /// Requests other than GET (patches, creates, deletes).
    writes: AtomicUsize,
    /// "METHOD kind" -> requests, for the at-rest figures.
    by_kind: Mutex<BTreeMap<String, usize>>,
    /// When set, a status patch updates the BpfProgram in this cache, as the watch of a
    /// real API server would: the next reconcile sees what the last one wrote.
    feedback: Option<Feedback>,
    /// ControllerRevisions (the revision history) by name, without their data.
    revisions: Mutex<BTreeMap<String, Value>>,
}

struct Feedback {
    store: Store<BpfProgram>,
    writer: Mutex<reflector::store::Writer<BpfProgram>>,
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn mock_client(api: Arc<MockApi>) -> Client {
    let (service, mut handle): (_, Handle) = tower_test::mock::pair();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let api = api.clone();
            tokio::spawn(async move { send.send_response(api.answer(req).await) });
        }
    });
    Client::new(service, "default")
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).expect("json")))
        .expect("response")
}

fn ready_true(status: &Value) -> bool {
    status["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

impl MockApi {
    async fn answer(&self, req: Request<Body>) -> Response<Body> {
        let arrived = Instant::now();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let req_query = req.uri().query().map(str::to_string);
        let body = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if method != "GET" {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        let kind = match parts.as_slice() {
            [.., "status"] => "status",
            ["apis", _, _, "namespaces", _, kind, ..] | ["apis", _, _, kind, ..] => kind,
            _ => "other",
        };
        *self.by_kind.lock().unwrap().entry(format!("{method} {kind}")).or_default() += 1;
        match parts.as_slice() {
            ["apis", "bpfleet.dev", "v1alpha1", "bpfprograms", name, rest @ ..] => {
                if rest == ["status"] {
                    let status = body["status"].clone();
                    if ready_true(&status) {
                        self.ready_patches.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(fb) = &self.feedback
                        && let Some(p) = fb.store.get(&reflector::ObjectRef::new(name))
                    {
                        let mut obj = (*p).clone();
                        obj.status = serde_json::from_value(status.clone()).ok();
                        let rv = obj.metadata.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok());
                        obj.metadata.resource_version = Some((rv.unwrap_or(1) + 1).to_string());
                        fb.writer.lock().unwrap().apply_watcher_event(&watcher::Event::Apply(obj));
                    }
                    if self.record {
                        self.statuses.lock().unwrap().insert(name.to_string(), (arrived, status));
                    }
                }
                // A real API server answers with the whole object; the operator drops it.
                json_response(200, &program_stub(name))
            }
            ["apis", "bpfleet.dev", "v1alpha1", "bpfnodes", name, ..] => json_response(
                200,
                &json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfNode", "metadata": {"name": name}, "spec": {}}),
            ),
            ["apis", "apps", "v1", "namespaces", _, "controllerrevisions", rest @ ..] => {
                self.revision_history(&method, req_query.as_deref(), rest.first().copied(), body)
            }
            ["apis", "events.k8s.io", "v1", "namespaces", _, "events", ..] => {
                json_response(if method == "POST" { 201 } else { 200 }, &body)
            }
            _ => not_found(&method, &path),
        }
    }

    /// The revision history as an API server keeps it: List by label, create, merge-patch
    /// of the revision number, delete.
    fn revision_history(&self, method: &str, query: Option<&str>, name: Option<&str>, body: Value) -> Response<Body> {
        let mut revisions = self.revisions.lock().unwrap();
        match (method, name) {
            ("GET", None) => {
                // labelSelector=key%3Dvalue (one term, as operator::history asks).
                let selector = query
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("labelSelector=")))
                    .map(|s| s.replace("%3D", "=").replace("%2F", "/"))
                    .unwrap_or_default();
                let (key, value) = selector.split_once('=').unwrap_or(("", ""));
                let items: Vec<&Value> =
                    revisions.values().filter(|cr| key.is_empty() || cr["metadata"]["labels"][key] == value).collect();
                json_response(
                    200,
                    &json!({"apiVersion": "apps/v1", "kind": "ControllerRevisionList", "metadata": {}, "items": items}),
                )
            }
            ("GET", Some(n)) => match revisions.get(n) {
                Some(cr) => json_response(200, cr),
                None => not_found(method, n),
            },
            ("POST", _) => {
                let n = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
                // Kept as name, labels and number only: what the mock holds is not the
                // operator's memory, and the bench never reads an entry back.
                let kept = json!({"metadata": {"name": n, "labels": body["metadata"]["labels"]},
                                  "revision": body["revision"]});
                revisions.insert(n, kept);
                json_response(201, &body)
            }
            ("PATCH", Some(n)) => match revisions.get_mut(n) {
                Some(cr) => {
                    if let Some(r) = body.get("revision") {
                        cr["revision"] = r.clone();
                    }
                    json_response(200, cr)
                }
                None => not_found(method, n),
            },
            ("DELETE", Some(n)) => {
                revisions.remove(n);
                json_response(200, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
            }
            _ => not_found(method, name.unwrap_or("controllerrevisions")),
        }
    }

    fn take_status(&self, name: &str) -> Option<(Instant, Value)> {
        self.statuses.lock().unwrap().remove(name)
    }
}

fn not_found(method: &str, what: &str) -> Response<Body> {
    json_response(
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                "message": format!("the mock API server has no {method} {what}")}),
    )
}

fn program_stub(name: &str) -> Value {
    json!({
        "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram", "metadata": {"name": name},
        "spec": {"bytecode": {"path": "/stub.o"},
                 "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": ["lo"]}}]}
    })
}

/// A BpfProgram as the API server would hold it after the finalizer was added.
fn program_json(name: &str, uid: &str, elf_b64: &str, interface: &str) -> Value {
    json!({
        "apiVersion": "bpfleet.dev/v1alpha1",
        "kind": "BpfProgram",
        "metadata": {"name": name, "uid": uid, "generation": 1, "resourceVersion": "1", "finalizers": [FINALIZER]},
        "spec": {
            "nodeSelector": {},
            "bytecode": {"inline": elf_b64},
            "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": [interface], "mode": "Generic"}}]
        }
    })
}

fn node(name: &str, ip: IpAddr) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {"kubernetes.io/os": "linux"}},
        "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}]}
    }))
    .expect("node")
}

fn context(client: Client, pool: AgentPool, nodes: Vec<Node>) -> Arc<Context> {
    let (store, mut writer) = reflector::store();
    for n in nodes {
        writer.apply_watcher_event(&watcher::Event::Apply(n));
    }
    let mut ctx = Context::new(client.clone(), pool, store, Arc::new(Metrics::new()), 1);
    ctx.recorder = Some(operator::events::Recorder::new(client, "bpfleet-operator"));
    Arc::new(ctx)
}

// ---------------------------------------------------------------------------------------------
// Latency with real agents

fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("run {}", args[0]))?;
    ensure!(out.status.success(), "`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct RealAgent {
    name: String,
    netns: String,
    ip: Ipv4Addr,
    child: Option<Child>,
    root: PathBuf,
    log: PathBuf,
}

impl RealAgent {
    fn addr(&self) -> NodeAddr {
        NodeAddr { name: self.name.clone(), ip: IpAddr::V4(self.ip) }
    }
}

/// Agents, their namespaces and pins; everything stopped and removed on drop (also when
/// the bench is interrupted or fails half-way).
struct Fleet {
    agents: Vec<RealAgent>,
    bpffs: PathBuf,
    /// The tmpfs holding the agents' owner records.
    state_mount: Option<PathBuf>,
    pki: TestPki,
    tmp: tempfile::TempDir,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for a in &mut self.agents {
            if let Some(mut c) = a.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Unpinning the links detaches the programs.
        let _ = std::fs::remove_dir_all(&self.bpffs);
        for a in &self.agents {
            let _ = sh(&["ip", "netns", "del", &a.netns]);
        }
        if let Some(dir) = self.state_mount.take() {
            let _ = sh(&["umount", &dir.to_string_lossy()]);
        }
    }
}

/// Namespaces a previous, killed run left behind; refuses to touch one that still has processes.
fn remove_stale_namespaces() -> anyhow::Result<()> {
    for line in sh(&["ip", "netns", "list"])?.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if !name.starts_with(NETNS_PREFIX) || !name[NETNS_PREFIX.len()..].chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let pids = sh(&["ip", "netns", "pids", name])?;
        ensure!(
            pids.trim().is_empty(),
            "network namespace {name} still has processes: is another operator bench running?"
        );
        sh(&["ip", "netns", "del", name])?;
    }
    Ok(())
}

impl Fleet {
    fn start(bin: &Path, count: usize) -> anyhow::Result<Fleet> {
        ensure!(bin.exists(), "{} not found: cargo build --release -p node-agent", bin.display());
        ensure!((1..=MAX_AGENTS).contains(&count), "1..={MAX_AGENTS} agents");
        remove_stale_namespaces()?;
        sh(&["bash", "-c", "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf"])?;
        let tmp = tempfile::tempdir()?;
        let pki_dir = tmp.path().join("pki");
        std::fs::create_dir_all(&pki_dir)?;
        let pki = TestPki::generate(&pki_dir);
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/bpfleet-opbench-{}", std::process::id()));
        let mut fleet = Fleet { agents: Vec::new(), bpffs, state_mount: None, pki, tmp };
        for i in 0..count {
            let netns = format!("{NETNS_PREFIX}{i}");
            let octet = (i + 1).to_string();
            let (host, peer) = (format!("10.231.{octet}.1/24"), format!("10.231.{octet}.2/24"));
            let name = format!("node-{i:02}");
            fleet.agents.push(RealAgent {
                name: name.clone(),
                netns: netns.clone(),
                ip: Ipv4Addr::new(10, 231, (i + 1) as u8, 2),
                child: None,
                root: fleet.bpffs.join(&name),
                log: fleet.tmp.path().join(format!("{name}.log")),
            });
            sh(&["ip", "netns", "add", &netns])?;
            sh(&["ip", "link", "add", &netns, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
            sh(&["ip", "addr", "add", &host, "dev", &netns])?;
            sh(&["ip", "link", "set", &netns, "up"])?;
            sh(&["ip", "-n", &netns, "addr", "add", &peer, "dev", "eth0"])?;
            sh(&["ip", "-n", &netns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", &netns, "link", "set", "lo", "up"])?;
        }
        // Owner records on a tmpfs, as /run is on a node: this machine's /run and /tmp are on
        // disk, and an fsync there would count as the agent's apply time.
        let state = fleet.tmp.path().join("state");
        std::fs::create_dir_all(&state)?;
        sh(&["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "bpfleet-opbench", &state.to_string_lossy()])?;
        fleet.state_mount = Some(state.clone());
        for a in &mut fleet.agents {
            let child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", a.netns))
                .arg("--")
                .arg(bin)
                .args(["--node-name", &a.name])
                .args(["--listen", &format!("{}:{AGENT_PORT}", a.ip)])
                .args(["--metrics-listen", &format!("{}:{METRICS_PORT}", a.ip)])
                .arg("--bpffs-root")
                .arg(&a.root)
                .arg("--state-dir")
                .arg(state.join(format!("state-{}", a.name)))
                .arg("--tls-cert")
                .arg(&fleet.pki.server_cert)
                .arg("--tls-key")
                .arg(&fleet.pki.server_key)
                .arg("--tls-client-ca")
                .arg(&fleet.pki.ca_cert)
                .args(["--tls-client-name", CLIENT_NAME])
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1")
                .env_remove("BPFLEET_FAULT")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&a.log)?)
                .spawn()
                .context("spawn nsenter bpfleet-agent")?;
            a.child = Some(child);
        }
        Ok(fleet)
    }

    fn pool_config(&self) -> PoolConfig {
        PoolConfig::new(AGENT_PORT, self.pki.client_config())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let mut cfg = self.pool_config();
        cfg.backoff_base = Duration::from_millis(1);
        cfg.backoff_max = Duration::from_millis(1);
        let probe = AgentPool::new(cfg);
        let deadline = Instant::now() + Duration::from_secs(60);
        for a in &mut self.agents {
            loop {
                if let Some(Ok(Some(status))) = a.child.as_mut().map(|c| c.try_wait()) {
                    bail!("agent {} exited ({status}):\n{}", a.name, log_of(&a.log));
                }
                if probe.list(&a.addr()).await.is_ok() && scrape(a.ip).is_ok() {
                    break;
                }
                ensure!(Instant::now() < deadline, "agent {} never answered:\n{}", a.name, log_of(&a.log));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// (sum of seconds, count) of the agent's apply-duration histogram, read from its /metrics.
fn scrape(ip: Ipv4Addr) -> anyhow::Result<(f64, u64)> {
    let mut conn = TcpStream::connect_timeout(&SocketAddr::from((ip, METRICS_PORT)), Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(conn, "GET /metrics HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let value = |name: &str| text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()));
    let sum = value(&format!("{APPLY_SUM} ")).with_context(|| format!("no {APPLY_SUM} from {ip}"))?;
    let count = value(&format!("{APPLY_COUNT} ")).with_context(|| format!("no {APPLY_COUNT} from {ip}"))?;
    Ok((sum, count as u64))
}

async fn scrape_all(agents: &[&RealAgent]) -> anyhow::Result<Vec<(f64, u64)>> {
    let ips: Vec<Ipv4Addr> = agents.iter().map(|a| a.ip).collect();
    tokio::task::spawn_blocking(move || ips.into_iter().map(scrape).collect()).await?
}

/// One Create→Ready measurement.
#[derive(Clone, Debug)]
struct Sample {
    /// From the reconcile's start to the status patch that says Ready on every target.
    total: Duration,
    /// Each agent's own apply (load, verify, attach, pin, record), as it reports it.
    applies: Vec<Duration>,
    /// Reconciles it took to reach Ready.
    passes: u32,
    /// The reconcile of the deleted object (Remove on every node, finalizer dropped).
    cleanup: Duration,
}

impl Sample {
    fn slowest_apply(&self) -> Duration {
        self.applies.iter().copied().max().unwrap_or_default()
    }
    fn operator_share(&self) -> Duration {
        self.total.saturating_sub(self.slowest_apply())
    }
}

struct LatencyRow {
    agents: usize,
    samples: Vec<Sample>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Create → Ready of one new BpfProgram on `agents`, then its removal.
async fn one_iteration(
    ctx: &Arc<Context>,
    api: &MockApi,
    agents: &[&RealAgent],
    elf_b64: &str,
    settle: Duration,
) -> anyhow::Result<Sample> {
    let k = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = format!("opbench-{}-{k}", std::process::id());
    let uid = format!("opbench-uid-{}-{k}", std::process::id());
    let before = scrape_all(agents).await?;
    let mut obj: BpfProgram = serde_json::from_value(program_json(&name, &uid, elf_b64, "lo"))?;
    let started = Instant::now();
    let mut passes = 0;
    let total = loop {
        passes += 1;
        reconcile(Arc::new(obj.clone()), ctx.clone()).await.map_err(|e| anyhow::anyhow!("reconcile {name}: {e}"))?;
        let (at, status) = api.take_status(&name).with_context(|| format!("{name}: no status written"))?;
        if ready_true(&status) && status["readyNodes"].as_u64() == Some(agents.len() as u64) {
            break at - started;
        }
        ensure!(status["failedNodes"].as_u64().unwrap_or(0) == 0, "{name} failed: {status}");
        ensure!(passes < 20, "{name} not Ready after {passes} reconciles: {status}");
        // What the watch would deliver before the next reconcile.
        obj.status = Some(serde_json::from_value(status)?);
    };
    let after = scrape_all(agents).await?;
    let mut applies = Vec::new();
    for ((a, (s0, c0)), (s1, c1)) in agents.iter().zip(&before).zip(&after) {
        ensure!(c1 - c0 == 1, "{}: {} applies during one iteration, expected 1", a.name, c1 - c0);
        applies.push(Duration::from_secs_f64((s1 - s0).max(0.0)));
    }
    // Delete: the finalizer sends Remove to every node, then drops itself.
    let mut deleting = obj.clone();
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    let t = Instant::now();
    reconcile(Arc::new(deleting), ctx.clone()).await.map_err(|e| anyhow::anyhow!("delete {name}: {e}"))?;
    let cleanup = t.elapsed();
    for a in agents {
        let left = a.root.join(&uid);
        ensure!(!left.exists(), "{}: {} still pinned after Remove", a.name, left.display());
    }
    tokio::time::sleep(settle).await;
    Ok(Sample { total, applies, passes, cleanup })
}

async fn latency(args: &Args, agent_bin: &Path, elf: &[u8]) -> anyhow::Result<(Vec<LatencyRow>, LatencyRow)> {
    ensure!(sh(&["id", "-u"])?.trim() == "0", "the latency part loads XDP programs: run as root (or --skip-latency)");
    ensure!(args.iterations >= 1, "--iterations must be at least 1");
    let most = args.agents.iter().copied().max().unwrap_or(0);
    eprintln!("== latency: starting {most} agents ({})", agent_bin.display());
    let mut fleet = Fleet::start(agent_bin, most)?;
    fleet.wait_ready().await?;
    let elf_b64 = base64::engine::general_purpose::STANDARD.encode(elf);
    let api = Arc::new(MockApi { record: true, ..Default::default() });
    let client = mock_client(api.clone());
    // One pool for the whole run, as in the operator: its channels stay connected.
    let pool = AgentPool::new(fleet.pool_config());
    let settle = Duration::from_millis(args.settle_ms);
    let all: Vec<&RealAgent> = fleet.agents.iter().collect();
    let nodes = |n: usize| all[..n].iter().map(|a| node(&a.name, IpAddr::V4(a.ip))).collect::<Vec<_>>();
    // Warm-up on every agent: TLS handshakes, each agent's one-time kernel BTF parse.
    eprintln!("== latency: warm-up on {most} agents");
    let warm = one_iteration(&context(client.clone(), pool.clone(), nodes(most)), &api, &all, &elf_b64, settle).await?;
    eprintln!("   first Create→Ready on {most} agents (cold): {:.1} ms", ms(warm.total));
    let mut rows = Vec::new();
    for &n in &args.agents {
        let ctx = context(client.clone(), pool.clone(), nodes(n));
        let mut samples = Vec::new();
        for i in 0..args.iterations {
            let s = one_iteration(&ctx, &api, &all[..n], &elf_b64, settle).await?;
            eprintln!(
                "   N={n:>3} #{i:<2} total {:>7.1} ms  slowest apply {:>7.1} ms  passes {}  cleanup {:>6.1} ms",
                ms(s.total),
                ms(s.slowest_apply()),
                s.passes,
                ms(s.cleanup)
            );
            samples.push(s);
        }
        rows.push(LatencyRow { agents: n, samples });
    }
    drop(fleet);
    Ok((rows, LatencyRow { agents: most, samples: vec![warm] }))
}

// ---------------------------------------------------------------------------------------------
// A progressive rollout over real agents

/// The rollout the rollout part measures: a canary, 10%, 50%, everything; 10% in flight.
/// Every step ends in a pause without a duration, so each reconcile carries out exactly one
/// step and its time can be read; the bench resumes it as `kubectl bpfleet rollout resume`
/// would.
const ROLLOUT_STEPS: [&str; 4] = ["1", "10%", "50%", "100%"];
const ROLLOUT_IN_FLIGHT: &str = "10%";

/// One step of the measured rollout.
struct StepTime {
    step: usize,
    /// Nodes that switched revision in this step.
    switched: usize,
    /// Groups of at most maxInFlight nodes sent at once.
    batches: usize,
    /// The reconcile that carried the step out, from its call to its return.
    wall: Duration,
    /// The agents' critical path: per batch the slowest agent's own apply, summed.
    agents: Duration,
}

fn rollout_spec(step_pause: bool, resume: Option<(&str, usize)>) -> Value {
    let steps: Vec<Value> = ROLLOUT_STEPS
        .iter()
        .map(|n| {
            let nodes = n.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(*n));
            if step_pause { json!({"nodes": nodes, "pause": {}}) } else { json!({"nodes": nodes}) }
        })
        .collect();
    let mut r = json!({"steps": steps, "maxInFlight": ROLLOUT_IN_FLIGHT});
    if let Some((rev, step)) = resume {
        r["resume"] = json!({"revision": rev, "step": step});
    }
    r
}

async fn rollout_steps(count: usize, agent_bin: &Path, v1: &[u8], v2: &[u8]) -> anyhow::Result<Vec<StepTime>> {
    ensure!(sh(&["id", "-u"])?.trim() == "0", "the rollout part loads XDP programs: run as root (or --skip-rollout)");
    eprintln!("== rollout: starting {count} agents");
    let mut fleet = Fleet::start(agent_bin, count)?;
    fleet.wait_ready().await?;
    let api = Arc::new(MockApi { record: true, ..Default::default() });
    let client = mock_client(api.clone());
    let pool = AgentPool::new(fleet.pool_config());
    let all: Vec<&RealAgent> = fleet.agents.iter().collect();
    let ctx = context(client, pool, all.iter().map(|a| node(&a.name, IpAddr::V4(a.ip))).collect());
    let name = format!("opbench-rollout-{}", std::process::id());
    let uid = format!("opbench-rollout-uid-{}", std::process::id());
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut raw = program_json(&name, &uid, &b64(v1), "lo");
    raw["spec"]["rollout"] = rollout_spec(true, None);
    let mut obj: BpfProgram = serde_json::from_value(raw.clone())?;
    let rollout_of = |status: &Value| status["rollout"].clone();
    // The first install goes everywhere at once; settle it.
    for pass in 0.. {
        reconcile(Arc::new(obj.clone()), ctx.clone()).await.map_err(|e| anyhow::anyhow!("reconcile: {e}"))?;
        let (_, status) = api.take_status(&name).context("no status written")?;
        let done = rollout_of(&status)["phase"] == "Complete";
        obj.status = Some(serde_json::from_value(status)?);
        if done {
            break;
        }
        ensure!(pass < 10, "the first install did not complete: {:?}", obj.status);
    }
    // The new revision.
    raw["spec"]["bytecode"]["inline"] = json!(b64(v2));
    raw["metadata"]["generation"] = json!(2);
    let order = {
        let ranked: Vec<operator::rollout::Ranked<'_>> =
            all.iter().map(|a| operator::rollout::Ranked { name: &a.name, zone: None }).collect();
        operator::rollout::order(&uid, &ranked)
    };
    let in_flight = (count * 10 / 100).max(1);
    let mut steps = Vec::new();
    let mut status_obj = obj.status.clone();
    for step in 1..=ROLLOUT_STEPS.len() {
        let revision = status_obj.as_ref().and_then(|s| s.rollout.as_ref()).and_then(|r| r.update_revision.clone());
        // Step 1 starts with the spec change; each later one with a resume of the one before.
        raw["spec"]["rollout"] = match (&revision, step) {
            (Some(rev), s) if s > 1 => rollout_spec(true, Some((rev, s - 1))),
            _ => rollout_spec(true, None),
        };
        raw["metadata"]["generation"] = json!(1 + step);
        let mut next: BpfProgram = serde_json::from_value(raw.clone())?;
        next.status = status_obj.clone();
        let before = scrape_all(&all).await?;
        let t = Instant::now();
        reconcile(Arc::new(next), ctx.clone()).await.map_err(|e| anyhow::anyhow!("reconcile: {e}"))?;
        let wall = t.elapsed();
        let (_, status) = api.take_status(&name).context("no status written")?;
        let after = scrape_all(&all).await?;
        let r = rollout_of(&status);
        ensure!(r["failedNodes"].as_u64() == Some(0), "the rollout failed: {r}");
        ensure!(r["step"].as_u64() == Some(step as u64), "expected step {step}: {r}");
        // Who switched, in rollout order, and each one's own apply time.
        let applied: HashMap<&str, Duration> = all
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, ((_, c0), (_, c1)))| c1 > c0)
            .map(|(a, ((s0, _), (s1, _)))| (a.name.as_str(), Duration::from_secs_f64((s1 - s0).max(0.0))))
            .collect();
        let switched: Vec<Duration> = order.iter().filter_map(|n| applied.get(n.as_str()).copied()).collect();
        let agents = switched.chunks(in_flight).map(|b| b.iter().copied().max().unwrap_or_default()).sum();
        eprintln!(
            "   step {step}: {} nodes in {:.1} ms (agents' critical path {:.1} ms)",
            switched.len(),
            ms(wall),
            ms(agents)
        );
        steps.push(StepTime {
            step,
            switched: switched.len(),
            batches: switched.len().div_ceil(in_flight),
            wall,
            agents,
        });
        status_obj = Some(serde_json::from_value(status)?);
    }
    let r = status_obj.as_ref().and_then(|s| s.rollout.as_ref()).context("no rollout status")?;
    ensure!(r.phase == crds::rollout::Phase::Complete, "the rollout did not complete: {r:?}");
    ensure!(r.updated_nodes as usize == count, "{} of {count} nodes updated", r.updated_nodes);
    // Remove it everywhere before the fleet goes.
    let mut deleting: BpfProgram = serde_json::from_value(raw)?;
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    reconcile(Arc::new(deleting), ctx.clone()).await.map_err(|e| anyhow::anyhow!("delete: {e}"))?;
    drop(fleet);
    Ok(steps)
}

fn print_rollout(count: usize, steps: &[StepTime]) {
    println!(
        "### A progressive rollout over {count} real agents
"
    );
    println!(
        "Steps {} of {count} nodes, maxInFlight {ROLLOUT_IN_FLIGHT}, one reconcile per step.\n",
        ROLLOUT_STEPS.join(" → ")
    );
    println!(
        "| step | nodes switched | batches | step time (ms) | agents' critical path (ms) | operator share (ms) | per node (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let (mut wall, mut agents, mut nodes) = (Duration::ZERO, Duration::ZERO, 0);
    for s in steps {
        let share = s.wall.saturating_sub(s.agents);
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} |",
            s.step,
            s.switched,
            s.batches,
            ms(s.wall),
            ms(s.agents),
            ms(share),
            ms(share) / s.switched.max(1) as f64
        );
        wall += s.wall;
        agents += s.agents;
        nodes += s.switched;
    }
    let share = wall.saturating_sub(agents);
    println!(
        "| all | {nodes} | {} | {:.1} | {:.1} | {:.1} | {:.2} |\n",
        steps.iter().map(|s| s.batches).sum::<usize>(),
        ms(wall),
        ms(agents),
        ms(share),
        ms(share) / nodes.max(1) as f64
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile.
fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn print_latency(rows: &[LatencyRow], iterations: usize, warm: &LatencyRow) {
    // One agent alone: the kernel's (and the agent's) time for one apply, uncontended.
    let isolated = rows
        .iter()
        .find(|r| r.agents == 1)
        .map(|r| pct(r.samples.iter().map(|s| ms(s.slowest_apply())).collect(), 50.0));
    println!("### Create → Ready with N real agents ({iterations} iterations each, p50 / p90)\n");
    println!(
        "| N agents | Create→Ready | slowest agent's apply | operator share | share of total | passes | N × isolated apply | total ÷ (N × isolated) | delete (Remove ×N) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let col = |f: &dyn Fn(&Sample) -> f64| {
            let v: Vec<f64> = r.samples.iter().map(f).collect();
            (pct(v.clone(), 50.0), pct(v, 90.0))
        };
        let total = col(&|s| ms(s.total));
        let apply = col(&|s| ms(s.slowest_apply()));
        let share = col(&|s| ms(s.operator_share()));
        let frac = col(&|s| 100.0 * s.operator_share().as_secs_f64() / s.total.as_secs_f64());
        let cleanup = col(&|s| ms(s.cleanup));
        let passes = r.samples.iter().map(|s| s.passes).max().unwrap_or(0);
        let (seq, ratio) = match isolated {
            Some(iso) => {
                let seq = iso * r.agents as f64;
                (format!("{seq:.1} ms"), format!("{:.2}", total.0 / seq))
            }
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1}% / {:.1}% | {passes} | {seq} | {ratio} | {:.1} / {:.1} ms |",
            r.agents, total.0, total.1, apply.0, apply.1, share.0, share.1, frac.0, frac.1, cleanup.0, cleanup.1
        );
    }
    println!();
    if let Some(w) = warm.samples.first() {
        println!(
            "Not counted: the warm-up, the first Create→Ready on all {} agents (new mTLS connections, each agent's \
             first parse of the kernel's BTF): {:.1} ms, slowest agent's apply {:.1} ms.\n",
            warm.agents,
            ms(w.total),
            ms(w.slowest_apply())
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Memory with fake agents

#[derive(Serialize, Deserialize, Debug, Clone)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
    /// Heap bytes held (allocated, not freed) now and at most so far.
    live_kib: u64,
    live_peak_kib: u64,
    /// VmRSS = RssAnon (heap, stacks) + RssFile (the executable's pages) + RssShmem.
    anon_kib: u64,
    file_kib: u64,
}

fn mem() -> Mem {
    Mem {
        rss_kib: read_kib("/proc/self/status", "VmRSS:").unwrap_or(0),
        hwm_kib: read_kib("/proc/self/status", "VmHWM:").unwrap_or(0),
        live_kib: (LIVE.load(Ordering::Relaxed) / 1024) as u64,
        live_peak_kib: (LIVE_PEAK.load(Ordering::Relaxed) / 1024) as u64,
        anon_kib: read_kib("/proc/self/status", "RssAnon:").unwrap_or(0),
        file_kib: read_kib("/proc/self/status", "RssFile:").unwrap_or(0),
    }
}

fn read_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct RssReport {
    programs: usize,
    nodes: usize,
    concurrency: usize,
    start: Mem,
    caches: Mem,
    reconciled: Mem,
    resynced: Mem,
    again: Mem,
    held_index_kib: u64,
    held_desired_kib: u64,
    held_programs_kib: u64,
    slim_index_kib: u64,
    resync: ResyncMode,
    reconcile_ms: f64,
    again_ms: f64,
    resync_ms: f64,
    index_entries: usize,
    ready: usize,
    drift_repairs: usize,
    api_requests: usize,
    inline_bytes: usize,
}

fn rss_in_child(
    object: &Path,
    programs: usize,
    nodes: usize,
    concurrency: usize,
    resync: &str,
) -> anyhow::Result<RssReport> {
    let out = Command::new(std::env::current_exe()?)
        .arg("rss")
        .arg("--object")
        .arg(object)
        .args(["--programs", &programs.to_string(), "--nodes", &nodes.to_string()])
        .args(["--concurrency", &concurrency.to_string(), "--resync", resync])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(out.status.success(), "the rss process failed ({})", out.status);
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).with_context(|| format!("rss output: {line}"))
}

/// A port free on every fake agent's address.
fn shared_free_port(count: usize) -> anyhow::Result<u16> {
    let ip = fake_ip;
    for _ in 0..50 {
        let first = TcpListener::bind((ip(0), 0))?;
        let port = first.local_addr()?.port();
        if (1..count).all(|i| TcpListener::bind((ip(i), port)).is_ok()) {
            return Ok(port);
        }
    }
    bail!("no port free on all of {}..{}", fake_ip(0), fake_ip(count - 1))
}

/// Fake agents in a child process (`operator-bench fake-agents`), stopped (their stdin
/// closes) when dropped.
struct FakeFleet {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
    port: u16,
    pki: TestPki,
    _dir: tempfile::TempDir,
}

impl FakeFleet {
    fn start(count: usize) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let pki = TestPki::generate(dir.path());
        let port = shared_free_port(count)?;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("fake-agents")
            .arg("--pki-dir")
            .arg(dir.path())
            .args(["--port", &port.to_string(), "--count", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut fleet = FakeFleet { child, stdin, stdout, port, pki, _dir: dir };
        let line = fleet.line()?;
        ensure!(line.trim() == "ready", "fake agents did not start: {line:?}");
        Ok(fleet)
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(line)
    }

    /// What the fake agents were asked so far.
    fn stats(&mut self) -> anyhow::Result<AgentStats> {
        let stdin = self.stdin.as_mut().context("fake agents stopped")?;
        writeln!(stdin, "stats")?;
        stdin.flush()?;
        let line = self.line()?;
        serde_json::from_str(line.trim()).with_context(|| format!("fake agents' stats: {line:?}"))
    }
}

impl Drop for FakeFleet {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The operator's Node cache: `count` Nodes with the fake agents' addresses.
fn fake_node_store(count: usize) -> Store<Node> {
    let (store, mut writer) = reflector::store::<Node>();
    for i in 0..count {
        writer.apply_watcher_event(&watcher::Event::Apply(node(&fake_node(i), IpAddr::V4(fake_ip(i)))));
    }
    store
}

/// The operator's BpfProgram cache: `count` BpfPrograms (`rss-0000`, ...) carrying `elf_b64`
/// inline, arriving as the watcher's initial list does (pages of
/// `operator::work::PROGRAM_PAGE_SIZE` objects, JSON decoded).
fn program_store(
    count: usize,
    elf_b64: &str,
) -> anyhow::Result<(Store<BpfProgram>, reflector::store::Writer<BpfProgram>)> {
    let (store, mut writer): (Store<BpfProgram>, _) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for page in (0..count).collect::<Vec<_>>().chunks(operator::work::PROGRAM_PAGE_SIZE as usize) {
        let items: Vec<Value> = page
            .iter()
            .map(|i| program_json(&format!("rss-{i:04}"), &format!("rss-uid-{i:04}"), elf_b64, &format!("veth{i:04}")))
            .collect();
        let bytes = serde_json::to_vec(&json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgramList",
                                               "metadata": {"resourceVersion": "1"}, "items": items}))?;
        drop(items);
        let list: ObjectList<BpfProgram> = serde_json::from_slice(&bytes)?;
        for p in list.items {
            writer.apply_watcher_event(&watcher::Event::InitApply(p));
        }
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    Ok((store, writer))
}

async fn rss(
    object: &Path,
    programs: usize,
    nodes: usize,
    concurrency: usize,
    resync: ResyncMode,
) -> anyhow::Result<RssReport> {
    ensure!((1..=60_000).contains(&nodes), "1..=60000 nodes (127.1.0.2..)");
    let start = mem();
    let elf = std::fs::read(object)?;
    let elf_b64 = base64::engine::general_purpose::STANDARD.encode(&elf);
    let fakes = FakeFleet::start(nodes)?;
    let (port, pki) = (fakes.port, &fakes.pki);

    let node_store = fake_node_store(nodes);
    let (programs_store, mut writer) = program_store(programs, &elf_b64)?;

    let api = Arc::new(MockApi::default());
    let client = mock_client(api.clone());
    let mut cfg = PoolConfig::new(port, pki.client_config());
    cfg.call_timeout = Duration::from_secs(60);
    let ctx = {
        let mut ctx = Context::new(client.clone(), AgentPool::new(cfg), node_store, Arc::new(Metrics::new()), 1);
        ctx.recorder = Some(operator::events::Recorder::new(client, "bpfleet-operator"));
        Arc::new(ctx)
    };
    let caches = mem();

    let reconcile_all = |ctx: Arc<Context>| {
        let objs = programs_store.state();
        async move {
            let calls = objs.into_iter().map(|p| reconcile(p, ctx.clone()));
            let results: Vec<_> = if concurrency == 0 {
                futures::future::join_all(calls).await
            } else {
                futures::stream::iter(calls).buffer_unordered(concurrency).collect().await
            };
            results.into_iter().filter(|r| r.is_err()).map(|r| r.unwrap_err().to_string()).collect::<Vec<_>>()
        }
    };
    let t = Instant::now();
    let errors = reconcile_all(ctx.clone()).await;
    let reconcile_ms = ms(t.elapsed());
    ensure!(errors.is_empty(), "{} reconciles failed, e.g. {}", errors.len(), errors[0]);
    let ready = api.ready_patches.load(Ordering::Relaxed);
    let reconciled = mem();

    let (tx, mut rx) = tokio::sync::mpsc::channel(programs.max(1));
    let t = Instant::now();
    match resync {
        ResyncMode::FanOut => operator::resync::resync_once(&ctx, &programs_store, &tx).await,
        // The operator streams its resync now; both modes run the production code.
        ResyncMode::Streaming => operator::resync::resync_once(&ctx, &programs_store, &tx).await,
    }
    let resync_ms = ms(t.elapsed());
    let mut drift_repairs = 0;
    while rx.try_recv().is_ok() {
        drift_repairs += 1;
    }
    let index_entries = (0..nodes).map(|i| ctx.index.all_owners(&fake_node(i)).len()).sum();
    let resynced = mem();

    // Steady state: every program reconciled again (the periodic requeue); nothing to dispatch.
    let t = Instant::now();
    let errors = reconcile_all(ctx.clone()).await;
    let again_ms = ms(t.elapsed());
    ensure!(errors.is_empty(), "{} reconciles failed, e.g. {}", errors.len(), errors[0]);
    let again = mem();

    // Who holds the heap: drop one structure at a time and see what is freed.
    let live = || (LIVE.load(Ordering::Relaxed) / 1024) as u64;
    let before = live();
    for i in 0..nodes {
        ctx.index.forget(&fake_node(i));
    }
    let held_index_kib = before.saturating_sub(live());
    let before = live();
    ctx.desired.write().unwrap_or_else(|e| e.into_inner()).clear();
    let held_desired_kib = before.saturating_sub(live());
    let before = live();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let held_programs_kib = before.saturating_sub(live());
    // The index as proposed: per node, owner uid -> (revision, health) only.
    let before = live();
    let slim: Vec<BTreeMap<String, (String, crds::Health)>> = (0..nodes)
        .map(|_| {
            (0..programs).map(|i| (format!("rss-uid-{i:04}"), (format!("{:016x}", i), crds::Health::Healthy))).collect()
        })
        .collect();
    let slim_index_kib = live().saturating_sub(before);
    drop(slim);
    drop(fakes);
    Ok(RssReport {
        programs,
        nodes,
        concurrency,
        start,
        caches,
        reconciled,
        resynced,
        again,
        held_index_kib,
        held_desired_kib,
        held_programs_kib,
        slim_index_kib,
        resync,
        reconcile_ms,
        again_ms,
        resync_ms,
        index_entries,
        ready,
        drift_repairs,
        api_requests: api.requests.load(Ordering::Relaxed),
        inline_bytes: elf_b64.len(),
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn print_rss(reports: &[RssReport]) {
    let Some(first) = reports.first() else { return };
    println!(
        "### Memory: {} BpfPrograms over {} nodes (fake agents, mocked API server)\n",
        first.programs, first.nodes
    );
    println!(
        "Each BpfProgram carries xdp_counter.o inline ({} base64 bytes). Target: VmHWM ≤ 64 MiB.\n",
        first.inline_bytes
    );
    let conc = |r: &RssReport| {
        let c = if r.concurrency == 0 { "all at once".to_string() } else { format!("{} at a time", r.concurrency) };
        let resync = match r.resync {
            ResyncMode::FanOut => "resync as today",
            ResyncMode::Streaming => "streaming resync",
        };
        format!("reconciles {c}, {resync}")
    };
    print!("| stage: VmRSS / VmHWM (heap held / heap peak) |");
    for r in reports {
        print!(" {} |", conc(r));
    }
    println!();
    println!("|---|{}", "---:|".repeat(reports.len()));
    type Stage = fn(&RssReport) -> &Mem;
    let stages: [(&str, Stage); 5] = [
        ("process started (runtime, logging)", |r| &r.start),
        ("caches filled (Nodes, BpfPrograms; mock API, pool, PKI)", |r| &r.caches),
        ("every BpfProgram reconciled: Ready on every node", |r| &r.reconciled),
        ("one resync (List ×50, BpfNode ×50)", |r| &r.resynced),
        ("every BpfProgram reconciled again (nothing to do)", |r| &r.again),
    ];
    for (label, f) in stages {
        print!("| {label} |");
        for r in reports {
            let m = f(r);
            print!(" {} / {} ({} / {}) |", mib(m.rss_kib), mib(m.hwm_kib), mib(m.live_kib), mib(m.live_peak_kib));
        }
        println!();
    }
    println!();
    println!("| |{}", reports.iter().map(|r| format!(" {} |", conc(r))).collect::<String>());
    println!("|---|{}", "---:|".repeat(reports.len()));
    let row = |label: &str, f: &dyn Fn(&RssReport) -> String| {
        println!("| {label} |{}", reports.iter().map(|r| format!(" {} |", f(r))).collect::<String>());
    };
    row("peak (VmHWM) vs 64 MiB target", &|r| {
        let ok = if r.again.hwm_kib <= 64 * 1024 { "within" } else { "OVER" };
        format!("{} ({ok})", mib(r.again.hwm_kib))
    });
    row("final VmRSS: RssAnon + RssFile (executable pages)", &|r| {
        format!("{} + {}", mib(r.again.anon_kib), mib(r.again.file_kib))
    });
    row("first reconcile of all (Apply ×N each)", &|r| {
        format!(
            "{:.2} s: {:.0} programs/s, {:.0} applies/s",
            r.reconcile_ms / 1000.0,
            r.programs as f64 / (r.reconcile_ms / 1000.0),
            (r.programs * r.nodes) as f64 / (r.reconcile_ms / 1000.0)
        )
    });
    row("statuses Ready", &|r| format!("{}/{}", r.ready, r.programs));
    row("index entries after resync", &|r| r.index_entries.to_string());
    row("resync (List all nodes, drift check)", &|r| format!("{:.0} ms, {} repairs", r.resync_ms, r.drift_repairs));
    row("second reconcile of all (no dispatch)", &|r| {
        format!("{:.2} s: {:.0} programs/s", r.again_ms / 1000.0, r.programs as f64 / (r.again_ms / 1000.0))
    });
    row("heap held by the node index (50,000 entries)", &|r| mib(r.held_index_kib));
    row("heap held by the desired-state map", &|r| mib(r.held_desired_kib));
    row("heap held by the BpfProgram cache", &|r| mib(r.held_programs_kib));
    row("heap a slim index would hold (uid → revision, health)", &|r| mib(r.slim_index_kib));
    row("requests to the mock API server", &|r| r.api_requests.to_string());
    println!();
}

// ---------------------------------------------------------------------------------------------
// Fake agents

/// The address of fake agent `i`: 127.1.0.2, 127.1.0.3, ... 250 per /24 (loopback answers on
/// all of 127/8), so 5,000 "nodes" are 5,000 addresses with the same port, as on a fleet.
fn fake_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1 + (i / 62_500) as u8, ((i / 250) % 250) as u8, (i % 250 + 2) as u8)
}

fn fake_node(i: usize) -> String {
    format!("node-{i:05}")
}

/// What every fake agent of the child process was asked, for the at-rest traffic figures.
#[derive(Default, Serialize, Deserialize, Debug, Clone, Copy)]
struct AgentStats {
    applies: u64,
    removes: u64,
    lists_full: u64,
    lists_unchanged: u64,
    /// Encoded bytes of every List answer.
    list_bytes: u64,
    watches_open: u64,
}

#[derive(Default)]
struct Counters {
    applies: AtomicU64,
    removes: AtomicU64,
    lists_full: AtomicU64,
    lists_unchanged: AtomicU64,
    list_bytes: AtomicU64,
    watches_open: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> AgentStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AgentStats {
            applies: get(&self.applies),
            removes: get(&self.removes),
            lists_full: get(&self.lists_full),
            lists_unchanged: get(&self.lists_unchanged),
            list_bytes: get(&self.list_bytes),
            watches_open: get(&self.watches_open),
        }
    }
}

/// One node's agent without a kernel: what it runs is (owner uid -> name, revision), all
/// healthy, kept with the node's digest as the real agent computes it.
struct FakeAgent {
    node: String,
    state: Mutex<FakeState>,
    next_id: AtomicU32,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct FakeState {
    owners: HashMap<String, (String, String)>,
    digest: proto::NodeDigest,
}

impl FakeAgent {
    fn owner_state(&self, uid: &str, name: &str, revision: &str) -> v1::OwnerState {
        let id = self.next_id.fetch_add(2, Ordering::Relaxed);
        v1::OwnerState {
            maps: vec![v1::PinnedMap {
                name: "packet_count".into(),
                pin_path: format!("/sys/fs/bpf/bpfleet/{uid}/maps/packet_count"),
            }],
            owner: Some(v1::Owner { uid: uid.into(), name: name.into() }),
            revision: revision.into(),
            health: v1::Health::Healthy as i32,
            attached: vec![v1::AttachedProgram {
                name: "count_packets".into(),
                r#type: "XDP".into(),
                program_id: id,
                link_ids: vec![id + 1],
            }],
            ..Default::default()
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::WatchEvent, Status>> + Send>>;

/// Counts an open Watch stream until it is dropped.
struct OpenWatch(Arc<Counters>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.watches_open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl Agent for FakeAgent {
    async fn apply(&self, req: GrpcRequest<v1::ApplyRequest>) -> Result<GrpcResponse<v1::ApplyResponse>, Status> {
        self.counters.applies.fetch_add(1, Ordering::Relaxed);
        let req = req.into_inner();
        let owner = req.owner.ok_or_else(|| Status::invalid_argument("owner is required"))?;
        let healthy = crds::Health::Healthy;
        let changed = {
            let mut st = self.state.lock().unwrap();
            let FakeState { owners, digest } = &mut *st;
            let previous = owners.insert(owner.uid.clone(), (owner.name.clone(), req.revision.clone()));
            if let Some((name, revision)) = &previous {
                digest.remove(&owner.uid, name, revision, healthy);
            }
            digest.add(&owner.uid, &owner.name, &req.revision, healthy);
            previous.is_none_or(|(_, r)| r != req.revision)
        };
        let state = self.owner_state(&owner.uid, &owner.name, &req.revision);
        Ok(GrpcResponse::new(v1::ApplyResponse { state: Some(state), changed, node_name: self.node.clone() }))
    }

    async fn remove(&self, req: GrpcRequest<v1::RemoveRequest>) -> Result<GrpcResponse<v1::RemoveResponse>, Status> {
        self.counters.removes.fetch_add(1, Ordering::Relaxed);
        let uid = req.into_inner().owner.map(|o| o.uid).unwrap_or_default();
        let mut st = self.state.lock().unwrap();
        let removed = st.owners.remove(&uid);
        if let Some((name, revision)) = &removed {
            st.digest.remove(&uid, name, revision, crds::Health::Healthy);
        }
        Ok(GrpcResponse::new(v1::RemoveResponse { removed: removed.is_some(), node_name: self.node.clone() }))
    }

    async fn list(&self, req: GrpcRequest<v1::ListRequest>) -> Result<GrpcResponse<v1::ListResponse>, Status> {
        use prost::Message;
        let req = req.into_inner();
        let (digest, owners) = {
            let st = self.state.lock().unwrap();
            let digest = st.digest.value();
            let unchanged = req.known_digest != 0 && req.known_digest == digest;
            let owners: Vec<(String, String, String)> = if unchanged {
                Vec::new()
            } else {
                st.owners.iter().map(|(u, (n, r))| (u.clone(), n.clone(), r.clone())).collect()
            };
            (digest, (!unchanged).then_some(owners))
        };
        let unchanged = owners.is_none();
        let answer = v1::ListResponse {
            node_name: self.node.clone(),
            agent_version: "fake".into(),
            kernel_release: "fake".into(),
            owners: owners.unwrap_or_default().iter().map(|(u, n, r)| self.owner_state(u, n, r)).collect(),
            digest,
            unchanged,
            ..Default::default()
        };
        let counter = if unchanged { &self.counters.lists_unchanged } else { &self.counters.lists_full };
        counter.fetch_add(1, Ordering::Relaxed);
        self.counters.list_bytes.fetch_add(answer.encoded_len() as u64, Ordering::Relaxed);
        Ok(GrpcResponse::new(answer))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _req: GrpcRequest<v1::WatchRequest>) -> Result<GrpcResponse<WatchStream>, Status> {
        self.counters.watches_open.fetch_add(1, Ordering::Relaxed);
        let open = OpenWatch(self.counters.clone());
        // Open until the operator drops it: nothing ever changes on a fake node.
        let stream = futures::stream::pending::<Result<v1::WatchEvent, Status>>().map(move |e| {
            let _held = &open;
            e
        });
        Ok(GrpcResponse::new(Box::pin(stream)))
    }
}

/// Serves `count` fake agents on fake_ip(0..count):port until stdin closes. Prints "ready",
/// then answers each "stats" line on stdin with the counters as one JSON line.
async fn fake_agents(pki_dir: &Path, port: u16, count: usize) -> anyhow::Result<()> {
    agent::kernel::raise_nofile();
    let files = TlsFiles {
        cert: pki_dir.join("server.pem"),
        key: pki_dir.join("server.key"),
        client_ca: pki_dir.join("ca.pem"),
    };
    let tls = Arc::new(ServerTls::load(files, CLIENT_NAME)?);
    let counters = Arc::new(Counters::default());
    for i in 0..count {
        let addr = SocketAddr::from((fake_ip(i), port));
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
        let service = FakeAgent {
            node: fake_node(i),
            state: Default::default(),
            next_id: AtomicU32::new(1),
            counters: counters.clone(),
        };
        let incoming = agent::tls::incoming(listener, tls.clone());
        tokio::spawn(async move {
            let server = tonic::transport::Server::builder().add_service(
                AgentServer::new(service).max_decoding_message_size(operator::dispatch::MAX_MESSAGE_BYTES),
            );
            if let Err(e) = server.serve_with_incoming(incoming).await {
                eprintln!("fake agent {addr}: {e}");
            }
        });
    }
    println!("ready");
    std::io::stdout().flush()?;
    // Until the parent closes our stdin (or dies).
    tokio::task::spawn_blocking(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if line.trim() == "stats" {
                let json = serde_json::to_string(&counters.snapshot()).unwrap_or_default();
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{json}");
                let _ = out.flush();
            }
        }
    })
    .await?;
    Ok(())
}
