//! bpfleet-bench: how long the agent takes to load and attach each example program, side
//! by side in one run with libbpf and with the bpftool/tc command line, and how much
//! memory the agent uses idle and with 100 programs. Root only; `scripts/bench.sh` builds
//! everything and runs it; docs/benchmarks.md explains each column.
//!
//! Everything happens in a private network namespace (its `lo` carries the XDP and TC
//! programs) and under a private bpffs directory, both gone when the bench ends. The
//! agent method runs in a worker process exactly as `bpfleet-agent` does (kernel BTF
//! hidden from aya, see `worker.rs`); the baselines run here, where it is not hidden.

mod baselines;
mod grpc;
mod kernel;
mod libbpf;
mod report;
mod rss;
mod spread;
mod worker;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aya::Btf;
use clap::Parser;
use libbpf::Libbpf;
use object::{Object, ObjectSymbol};
use worker::{AgentWorker, WorkerSetup};

#[derive(Parser, Debug)]
#[command(name = "bpfleet-bench", about = "Load+attach latency and memory of bpfleet-agent against libbpf and bpftool")]
struct Args {
    /// Timed iterations per program and method.
    #[arg(long, default_value_t = 30)]
    iterations: usize,
    /// Untimed iterations per program and method first (page cache, feature probes).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Directory of the example objects (examples/build.sh).
    #[arg(long, default_value = "examples/bpf/build")]
    examples: PathBuf,
    /// Only these programs (comma-separated: xdp_counter,tc_counter,tracepoint_openat,uprobe_counter,global_data).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these methods (comma-separated: agent,libbpf,cli,aya).
    #[arg(long, value_enum, value_delimiter = ',')]
    methods: Vec<Method>,
    /// Binary and symbol the uprobe example attaches to.
    #[arg(long, default_value = "/usr/bin/bash")]
    uprobe_target: PathBuf,
    #[arg(long, default_value = "readline")]
    uprobe_symbol: String,
    /// Pause after each clean-up, so the kernel's deferred teardown of the hooks (RCU
    /// grace periods) ends before the next run starts instead of inside its timing.
    #[arg(long, default_value_t = 100)]
    pause_ms: u64,
    /// The same for uprobes, whose teardown takes longer: registering a uprobe while the
    /// previous one at the same place is still being freed waits for it (up to ~200 ms).
    #[arg(long, default_value_t = 250)]
    uprobe_pause_ms: u64,
    /// Each pause is lengthened by a different fraction of this span in each iteration
    /// (the same for every method), so that every method starts its runs at every point
    /// of the scheduler tick, and grace periods (which end on ticks) favour none of them.
    /// 0: fixed pauses, which lock each method to one phase of the tick.
    #[arg(long, default_value_t = 20)]
    tick_spread_ms: u64,
    /// Parent of the agent's state directories: tmpfs, as /run/bpfleet is on a node.
    #[arg(long, default_value = "/dev/shm")]
    state_base: PathBuf,
    /// The agent binary for the memory measurement (default: next to this binary).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Programs loaded for the "with N programs" memory reading.
    #[arg(long, default_value_t = 100)]
    rss_programs: usize,
    /// Seconds the agent is left alone before each memory reading.
    #[arg(long, default_value_t = 3)]
    rss_settle: u64,
    #[arg(long)]
    skip_latency: bool,
    /// Skip the idle comparison (the agent binary over gRPC vs the bpftool/tc CLI).
    #[arg(long)]
    skip_idle: bool,
    /// How long the agent and the kernel are left alone before each idle Apply.
    #[arg(long, default_value_t = 250)]
    idle_ms: u64,
    /// Tries per program in the idle comparison (each: idle and busy, agent and CLI).
    #[arg(long, default_value_t = 20)]
    idle_iterations: usize,
    /// In the idle comparison, open a new connection for every Apply (a one-shot client)
    /// instead of keeping one (as the operator does).
    #[arg(long)]
    idle_fresh_connections: bool,
    #[arg(long)]
    skip_rss: bool,
}

#[derive(Clone, Copy, Debug)]
enum Hook {
    Xdp,
    Tc,
    Tracepoint(&'static str, &'static str),
    Uprobe,
    Uretprobe,
}

/// One example object and how its programs are attached.
struct Case {
    name: &'static str,
    programs: &'static [(&'static str, Hook)],
    /// `SAMPLE_RATE` global (global_data.o), set like spec.globalData does.
    sample_rate: Option<u32>,
}

const CASES: &[Case] = &[
    Case { name: "xdp_counter", programs: &[("count_packets", Hook::Xdp)], sample_rate: None },
    Case { name: "tc_counter", programs: &[("count_tc", Hook::Tc)], sample_rate: None },
    Case {
        name: "tracepoint_openat",
        programs: &[("count_openat", Hook::Tracepoint("syscalls", "sys_enter_openat"))],
        sample_rate: None,
    },
    Case {
        name: "uprobe_counter",
        programs: &[("count_calls", Hook::Uprobe), ("count_returns", Hook::Uretprobe)],
        sample_rate: None,
    },
    Case { name: "global_data", programs: &[("sampled_count", Hook::Xdp)], sample_rate: Some(4) },
];

/// The memory measurement's programs: tracepoint_openat.o spread over four tracepoints,
/// because the kernel runs at most 64 BPF programs per tracepoint (E2BIG beyond).
const RSS_CASES: [Case; 4] = [
    rss_case(&[("count_openat", Hook::Tracepoint("syscalls", "sys_enter_openat"))]),
    rss_case(&[("count_openat", Hook::Tracepoint("syscalls", "sys_exit_openat"))]),
    rss_case(&[("count_openat", Hook::Tracepoint("syscalls", "sys_enter_close"))]),
    rss_case(&[("count_openat", Hook::Tracepoint("syscalls", "sys_exit_close"))]),
];

const fn rss_case(programs: &'static [(&'static str, Hook)]) -> Case {
    Case { name: "tracepoint_openat", programs, sample_rate: None }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Method {
    Agent,
    Libbpf,
    Cli,
    Aya,
}

const METHODS: [Method; 4] = [Method::Agent, Method::Libbpf, Method::Cli, Method::Aya];

/// What the bench owns in the kernel and on disk; removed on drop (removing a bpffs
/// directory unpins, and so detaches and unloads, everything pinned in it).
struct Dirs {
    bpffs: PathBuf,
    state: PathBuf,
    work: PathBuf,
    /// Whether iproute2's bpffs directories (tc/globals, and ip and xdp linking to it)
    /// were absent before `tc filter … bpf` created them.
    iproute2_dirs_are_ours: bool,
}

impl Drop for Dirs {
    fn drop(&mut self) {
        for d in [&self.bpffs, &self.state, &self.work] {
            let _ = std::fs::remove_dir_all(d);
        }
        if self.iproute2_dirs_are_ours {
            let fs = Path::new("/sys/fs/bpf");
            // Only while empty: anything in them is someone else's.
            if std::fs::remove_dir(fs.join("tc/globals")).is_ok() && std::fs::remove_dir(fs.join("tc")).is_ok() {
                for link in ["ip", "xdp"] {
                    if fs.join(link).read_link().is_ok() {
                        let _ = std::fs::remove_file(fs.join(link));
                    }
                }
            }
        }
    }
}

struct Bench {
    args: Args,
    examples: PathBuf,
    /// The agent method's process; declared before `dirs` so that it has exited (and
    /// released what it holds) before they are removed.
    worker: Option<AgentWorker>,
    dirs: Dirs,
    libbpf: Option<Libbpf>,
    /// Object bytes by case name.
    objects: BTreeMap<&'static str, Vec<u8>>,
    /// Offset of SAMPLE_RATE in global_data.o's .rodata (for libbpf).
    sample_rate_offset: usize,
    /// Programs loaded by the current run, and by every run so far.
    run_ids: HashSet<u32>,
    program_ids: HashSet<u32>,
}

/// Timings of one case, per method.
#[derive(Default)]
struct Timings {
    load: BTreeMap<Method, Vec<Duration>>,
    agent_remove: Vec<Duration>,
}

fn main() -> anyhow::Result<()> {
    // The agent worker (this binary re-executed by `Bench::start_worker`) goes its own way
    // before anything else, as bpfleet-agent's main() does.
    if std::env::args_os().nth(1).is_some_and(|a| a == worker::SUBCOMMAND) {
        return worker::main();
    }
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: the bench loads eBPF programs (sudo scripts/bench.sh)");
    }
    // Before any thread or child exists, so all of them (the agent worker too) share it.
    // SAFETY: unshare on the only thread of the process.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!("cannot create a private network namespace: {}", std::io::Error::last_os_error());
    }
    sh("ip", &["link", "set", "lo", "up"])?;
    sh("tc", &["qdisc", "add", "dev", "lo", "clsact"])?;
    agent::kernel::check_bpffs(Path::new("/sys/fs/bpf"))?;
    if !Path::new("/sys/kernel/tracing/events").exists() && !Path::new("/sys/kernel/debug/tracing/events").exists() {
        bail!("tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing");
    }
    remove_stale_runs();

    let btf_kib = btf_resident_kib();
    let mut bench = Bench::new(args)?;
    let env = environment(bench.libbpf.as_ref());
    let btf = measure_btf_parse(10);
    let mut results = Vec::new();
    if !bench.args.skip_latency {
        bench.start_worker()?;
        let only = bench.args.only.clone();
        for case in CASES.iter().filter(|c| only.is_empty() || only.iter().any(|o| o == c.name)) {
            results.push((case, bench.run_case(case)?));
        }
    }
    if let Some(mut w) = bench.worker.take() {
        w.stop()?;
    }
    let mut idle = Vec::new();
    if !bench.args.skip_idle {
        let only = bench.args.only.clone();
        let idle_cases = ["xdp_counter", "tc_counter", "tracepoint_openat"];
        for case in CASES.iter().filter(|c| idle_cases.contains(&c.name)) {
            if only.is_empty() || only.iter().any(|o| o == case.name) {
                idle.push((case, bench.run_idle(case)?));
            }
        }
    }
    let rss = if bench.args.skip_rss { None } else { Some(bench.measure_rss()?) };
    bench.check_nothing_left()?;

    print_report(&bench, &env, (&btf, btf_kib), &results, rss.as_ref());
    print_idle(&bench, &idle);
    Ok(())
}

impl Bench {
    fn new(args: Args) -> anyhow::Result<Self> {
        let examples = std::fs::canonicalize(&args.examples)
            .with_context(|| format!("{}: build the examples first (examples/build.sh)", args.examples.display()))?;
        let tag = format!("bpfleet-bench-{}", std::process::id());
        let dirs = Dirs {
            bpffs: Path::new("/sys/fs/bpf").join(&tag),
            state: args.state_base.join(&tag),
            work: std::env::temp_dir().join(&tag),
            iproute2_dirs_are_ours: !Path::new("/sys/fs/bpf/tc").exists(),
        };
        for d in [&dirs.bpffs, &dirs.state, &dirs.work] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        std::fs::create_dir_all(dirs.bpffs.join("cli"))?;
        let mut objects = BTreeMap::new();
        for case in CASES {
            let path = examples.join(format!("{}.o", case.name));
            objects.insert(case.name, std::fs::read(&path).with_context(|| format!("{}", path.display()))?);
        }
        let sample_rate_offset = symbol_offset(&objects["global_data"], "SAMPLE_RATE")?;
        let libbpf = match Libbpf::open() {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("libbpf baseline skipped: {e:#}");
                None
            }
        };
        Ok(Self {
            args,
            examples,
            worker: None,
            dirs,
            libbpf,
            objects,
            sample_rate_offset,
            run_ids: HashSet::new(),
            program_ids: HashSet::new(),
        })
    }

    /// Start the agent worker, if the agent method runs.
    fn start_worker(&mut self) -> anyhow::Result<()> {
        if !self.args.methods.is_empty() && !self.args.methods.contains(&Method::Agent) {
            return Ok(());
        }
        self.worker = Some(AgentWorker::spawn(&WorkerSetup {
            examples: &self.examples,
            uprobe_target: &self.args.uprobe_target,
            uprobe_symbol: &self.args.uprobe_symbol,
            bpffs_root: self.dirs.bpffs.join("agent"),
            state_dir: self.dirs.state.join("agent"),
        })?);
        Ok(())
    }

    fn manifest(&self, case: &Case, name: &str) -> String {
        manifest(case, name, &self.examples, &self.args.uprobe_target, &self.args.uprobe_symbol)
    }

    /// Every method on one case, interleaved: iteration i runs the methods in an order
    /// rotated by i, so drift on a noisy machine spreads evenly over them.
    fn run_case(&mut self, case: &Case) -> anyhow::Result<Timings> {
        eprintln!(
            "== {} ({} warm-up + {} timed iterations per method)",
            case.name, self.args.warmup, self.args.iterations
        );
        let mut t = Timings::default();
        let methods: Vec<Method> = METHODS
            .iter()
            .copied()
            .filter(|m| self.args.methods.is_empty() || self.args.methods.contains(m))
            .filter(|m| *m != Method::Libbpf || self.libbpf.is_some())
            .collect();
        for i in 0..self.args.warmup + self.args.iterations {
            let timed = i >= self.args.warmup;
            for k in 0..methods.len() {
                let m = methods[(i + k) % methods.len()];
                let (load, remove) = self.once(case, m, i).with_context(|| format!("{} via {m:?}", case.name))?;
                if timed {
                    t.load.entry(m).or_default().push(load);
                    if let Some(r) = remove {
                        t.agent_remove.push(r);
                    }
                }
            }
        }
        Ok(t)
    }

    /// One load+attach by `m`, then its clean-up, which ends only when the kernel has
    /// released its programs. Returns the load+attach time and, for the agent, the time
    /// of its Remove.
    fn once(&mut self, case: &Case, m: Method, i: usize) -> anyhow::Result<(Duration, Option<Duration>)> {
        std::thread::sleep(self.tick_offset(i, self.args.iterations));
        self.run_ids.clear();
        let timing = match m {
            Method::Agent => self.agent_once(case, i).map(|(l, r)| (l, Some(r))),
            Method::Libbpf => self.libbpf_once(case).map(|l| (l, None)),
            Method::Cli => self.cli_once(case, i).map(|l| (l, None)),
            Method::Aya => self.aya_once(case).map(|l| (l, None)),
        }?;
        if let Err(left) = kernel::wait_gone(&self.run_ids, Duration::from_secs(5)) {
            bail!("programs {left:?} are still loaded 5 s after their clean-up");
        }
        self.program_ids.extend(self.run_ids.iter().copied());
        let uprobe = case.programs.iter().any(|(_, h)| matches!(h, Hook::Uprobe | Hook::Uretprobe));
        std::thread::sleep(Duration::from_millis(if uprobe { self.args.uprobe_pause_ms } else { self.args.pause_ms }));
        Ok(timing)
    }

    /// The agent's whole Apply path (ELF checks, maps created and pinned, load, verify,
    /// attach, pin programs and links, owner record written) for a fresh owner, then
    /// Remove; both run and are timed in the agent worker.
    fn agent_once(&mut self, case: &Case, i: usize) -> anyhow::Result<(Duration, Duration)> {
        let w = self.worker.as_mut().context("the agent worker is not running")?;
        let (load, ids) = w.apply(case.name, i)?;
        self.run_ids.extend(ids);
        Ok((load, w.remove(case.name, i)?))
    }

    /// Where in the scheduler tick iteration `i` (warm-ups first) of `n` timed ones starts:
    /// see spread.rs.
    fn tick_offset(&self, i: usize, n: usize) -> Duration {
        let span = Duration::from_millis(self.args.tick_spread_ms);
        i.checked_sub(self.args.warmup).map_or(Duration::ZERO, |timed| spread::offset(timed, n, span))
    }

    /// The agent binary over gRPC against the CLI, each after `idle_ms` of quiet ("idle")
    /// and right after the previous run settled ("busy"), interleaved.
    fn run_idle(&mut self, case: &Case) -> anyhow::Result<IdleTimings> {
        eprintln!("== {} idle vs busy, agent over gRPC vs CLI ({} tries)", case.name, self.args.idle_iterations);
        let agent_bin = match &self.args.agent_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("bpfleet-agent"),
        };
        // Like with like: the CLI baseline attaches TC as a clsact filter (bpftool 7.1 has
        // no TCX), so here the agent does too.
        let extra: &[&str] = if case.name == "tc_counter" { &["--tc-backend", "clsact"] } else { &[] };
        let mut agent = grpc::GrpcAgent::spawn(
            &agent_bin,
            extra,
            self.dirs.bpffs.join(format!("grpc-{}", case.name)),
            self.dirs.state.join(format!("grpc-{}", case.name)),
            &self.dirs.work.join(format!("grpc-{}", case.name)),
        )?;
        let idle = Duration::from_millis(self.args.idle_ms);
        let mut t = IdleTimings::default();
        for i in 0..self.args.warmup + self.args.idle_iterations {
            let timed = i >= self.args.warmup;
            for (pause, agent_times, cli_times) in [(idle, 0, 1), (Duration::ZERO, 2, 3)] {
                let uid = format!("idle-{}-{i}-{}", case.name.replace('_', "-"), agent_times);
                let req = grpc::request(&self.manifest(case, &uid), &uid)?;
                let pause = pause + self.tick_offset(i, self.args.idle_iterations);
                std::thread::sleep(pause);
                self.run_ids.clear();
                let (took, ids) =
                    if self.args.idle_fresh_connections { agent.apply_fresh(req) } else { agent.apply(req) }
                        .with_context(|| format!("{}", agent.log.display()))?;
                self.run_ids.extend(ids);
                agent.remove(&uid)?;
                if let Err(left) = kernel::wait_gone(&self.run_ids, Duration::from_secs(5)) {
                    bail!("programs {left:?} are still loaded 5 s after their Remove");
                }
                self.program_ids.extend(self.run_ids.iter().copied());
                std::thread::sleep(pause);
                self.run_ids.clear();
                let cli = self.cli_once(case, 10_000 + i)?;
                if let Err(left) = kernel::wait_gone(&self.run_ids, Duration::from_secs(5)) {
                    bail!("programs {left:?} are still loaded 5 s after their clean-up");
                }
                self.program_ids.extend(self.run_ids.iter().copied());
                if timed {
                    t.0[agent_times].push(took);
                    t.0[cli_times].push(cli);
                }
            }
        }
        Ok(t)
    }

    fn measure_rss(&mut self) -> anyhow::Result<rss::RssReport> {
        let agent_bin = match &self.args.agent_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("bpfleet-agent"),
        };
        let n = self.args.rss_programs;
        eprintln!("== agent memory: {} idle, then with {n} programs", agent_bin.display());
        let manifests = (0..n)
            .map(|i| (format!("rss-{i:03}.yaml"), self.manifest(&RSS_CASES[i % 4], &format!("rss-{i:03}"))))
            .collect();
        // The README's first command runs these (scripts/demo.sh): XDP and TC packet
        // counters and the openat tracepoint counter (the uprobe one needs bash's path).
        let standalone = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/standalone");
        let examples = ["xdp-counter.yaml", "tc-counter.yaml", "tracepoint-openat.yaml"]
            .iter()
            .map(|f| {
                let yaml = std::fs::read_to_string(standalone.join(f)).with_context(|| f.to_string())?;
                Ok((f.to_string(), yaml.replace("@BUILD_DIR@", &self.examples.to_string_lossy())))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        rss::measure(&rss::RssSetup {
            agent_bin: &agent_bin,
            examples,
            bpffs_root: self.dirs.bpffs.join("rss"),
            state_dir: self.dirs.state.join("rss"),
            work_dir: self.dirs.work.join("rss"),
            manifests,
            settle: Duration::from_secs(self.args.rss_settle),
        })
    }

    /// No program this bench loaded may still be in the kernel (their release is
    /// asynchronous, so allow a moment).
    fn check_nothing_left(&self) -> anyhow::Result<()> {
        let mut left = Vec::new();
        for _ in 0..40 {
            left = aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .map(|p| p.id())
                .filter(|id| self.program_ids.contains(id))
                .collect();
            if left.is_empty() {
                eprintln!("== clean: none of the {} programs loaded is left in the kernel", self.program_ids.len());
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("programs left in the kernel after the bench: {left:?}")
    }
}

/// Idle comparison: [agent idle, CLI idle, agent busy, CLI busy].
#[derive(Default)]
struct IdleTimings([Vec<Duration>; 4]);

fn p50(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn print_idle(bench: &Bench, rows: &[(&Case, IdleTimings)]) {
    if rows.is_empty() {
        return;
    }
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    println!();
    println!(
        "### Idle and busy: the agent binary over mTLS gRPC vs the CLI ({} tries, p50; idle = {} ms of quiet first)",
        bench.args.idle_iterations, bench.args.idle_ms
    );
    println!();
    println!("| program | agent idle | CLI idle | ratio | agent busy | CLI busy | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (case, t) in rows {
        let [ai, ci, ab, cb] = [p50(&t.0[0]), p50(&t.0[1]), p50(&t.0[2]), p50(&t.0[3])];
        let r = |a: Duration, b: Duration| format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64().max(1e-9));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            case.name,
            ms(ai),
            ms(ci),
            r(ai, ci),
            ms(ab),
            ms(cb),
            r(ab, cb)
        );
    }
}

/// A BpfProgram manifest of `case` named `name`, loading from the examples directory.
fn manifest(case: &Case, name: &str, examples: &Path, uprobe_target: &Path, uprobe_symbol: &str) -> String {
    let mut programs = String::new();
    for (prog, hook) in case.programs {
        let attach = match hook {
            Hook::Xdp => "type: XDP\n      xdp: {interfaces: [lo], mode: Generic}".to_string(),
            Hook::Tc => "type: TC\n      tc: {interfaces: [lo], direction: Ingress, priority: 100}".to_string(),
            Hook::Tracepoint(cat, tp) => format!("type: Tracepoint\n      tracepoint: {{names: [{cat}/{tp}]}}"),
            Hook::Uprobe | Hook::Uretprobe => {
                let key = if matches!(hook, Hook::Uprobe) { "uprobe" } else { "uretprobe" };
                let kind = if matches!(hook, Hook::Uprobe) { "Uprobe" } else { "Uretprobe" };
                format!("type: {kind}\n      {key}: {{target: {}, symbol: {uprobe_symbol}}}", uprobe_target.display())
            }
        };
        programs.push_str(&format!("    - name: {prog}\n      {attach}\n"));
    }
    let globals = match case.sample_rate {
        Some(r) => format!("  globalData: {{SAMPLE_RATE: \"{}\"}}\n", base64(&r.to_le_bytes())),
        None => String::new(),
    };
    format!(
        "apiVersion: bpfleet.dev/v1alpha1\nkind: BpfProgram\nmetadata: {{name: {name}}}\nspec:\n  nodeSelector: {{}}\n  \
         bytecode: {{path: \"{}/{}.o\"}}\n{globals}  programs:\n{programs}",
        examples.display(),
        case.name
    )
}

/// Run a command; fail with its stderr.
fn sh(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("cannot run {cmd}"))?;
    if !out.status.success() {
        bail!("`{cmd} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Offset of a global variable in its section.
fn symbol_offset(elf: &[u8], name: &str) -> anyhow::Result<usize> {
    let file = object::File::parse(elf)?;
    let sym = file.symbols().find(|s| s.name() == Ok(name)).with_context(|| format!("no symbol {name}"))?;
    Ok(usize::try_from(sym.address())?)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Directories of earlier runs that were killed before cleaning up.
fn remove_stale_runs() {
    for base in [Path::new("/sys/fs/bpf"), Path::new("/dev/shm"), &std::env::temp_dir()] {
        let Ok(rd) = std::fs::read_dir(base) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("bpfleet-bench-").and_then(|p| p.parse::<u32>().ok()) else { continue };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("removing {} (left by an interrupted run)", e.path().display());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// p50/p90 of the kernel BTF parse aya does in `EbpfLoader::new()`.
fn measure_btf_parse(n: usize) -> Vec<Duration> {
    let mut v: Vec<Duration> = (0..n)
        .filter_map(|_| {
            let start = Instant::now();
            Btf::from_sys_fs().ok().map(|_| start.elapsed())
        })
        .collect();
    v.sort();
    v
}

/// Resident memory a parsed kernel BTF holds (measured first, in a fresh process).
fn btf_resident_kib() -> Option<u64> {
    let before = rss::status_kib(std::process::id(), "VmRSS").ok()?;
    let btf = Btf::from_sys_fs().ok()?;
    let after = rss::status_kib(std::process::id(), "VmRSS").ok()?;
    drop(btf);
    Some(after.saturating_sub(before))
}

fn environment(libbpf: Option<&Libbpf>) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let bpftool = Command::new("bpftool")
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_string())
        .unwrap_or_default();
    let libbpf = libbpf.map(|l| l.version.clone()).unwrap_or_else(|| "none".into());
    format!("kernel {}, {cpus} CPUs, {bpftool}, libbpf {libbpf}", kernel.trim())
}

fn print_report(
    bench: &Bench,
    env: &str,
    (btf, btf_kib): (&[Duration], Option<u64>),
    results: &[(&Case, Timings)],
    rss: Option<&rss::RssReport>,
) {
    println!("Machine: {env}.\n");
    if !results.is_empty() {
        let rows: Vec<report::Row> = results
            .iter()
            .map(|(case, t)| {
                let get = |m| t.load.get(&m).map(Vec::as_slice).unwrap_or_default();
                report::Row {
                    program: case.name,
                    agent: get(Method::Agent),
                    agent_remove: &t.agent_remove,
                    libbpf: get(Method::Libbpf),
                    cli: get(Method::Cli),
                    cli_attaches: matches!(case.programs[0].1, Hook::Xdp | Hook::Tc),
                    aya: get(Method::Aya),
                }
            })
            .collect();
        println!("{}", report::latency_table(bench.args.iterations, &rows));
        println!("{}", report::mode_table(&rows));
    }
    if !btf.is_empty() {
        println!(
            "Parsing the kernel's BTF with aya (`Btf::from_sys_fs`): p50 {} ms, p90 {} ms ({} runs); \
             one parsed copy holds {:.1} MiB.\n",
            report::ms(report::pct(btf, 50.0)),
            report::ms(report::pct(btf, 90.0)),
            btf.len(),
            btf_kib.unwrap_or_default() as f64 / 1024.0
        );
    }
    if let Some(r) = rss {
        print!("{}", report::rss_table(r));
    }
}
