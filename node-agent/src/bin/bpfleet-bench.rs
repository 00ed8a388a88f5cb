//! bpfleet-bench: how long the agent takes to load and attach each example program, side
//! by side in one run with libbpf and with the bpftool/tc command line, and how much
//! memory the agent uses idle and with 100 programs. Root only; `scripts/bench.sh` builds
//! everything and runs it; docs/benchmarks.md explains each column.
//!
//! Everything happens in a private network namespace (its `lo` carries the XDP and TC
//! programs) and under a private bpffs directory, both gone when the bench ends.

#[path = "../../benches/support/libbpf.rs"]
mod libbpf;
#[path = "../../benches/support/rss.rs"]
mod rss;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::attach::TcBackend;
use agent::manager::{AgentConfig, Manager};
use agent::request::input_from_manifest;
use anyhow::{Context, bail};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeScope};
use aya::programs::{ProgramInfo, SchedClassifier, TcAttachType, TracePoint, UProbe, Xdp, XdpMode};
use aya::{Btf, EbpfLoader};
use clap::Parser;
use libbpf::{Libbpf, LibbpfHook};
use object::{Object, ObjectSymbol};

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
    /// Binary and symbol the uprobe example attaches to.
    #[arg(long, default_value = "/usr/bin/bash")]
    uprobe_target: PathBuf,
    #[arg(long, default_value = "readline")]
    uprobe_symbol: String,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
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
}

impl Drop for Dirs {
    fn drop(&mut self) {
        for d in [&self.bpffs, &self.state, &self.work] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

struct Bench {
    args: Args,
    examples: PathBuf,
    dirs: Dirs,
    rt: tokio::runtime::Runtime,
    manager: Arc<Manager>,
    libbpf: Option<Libbpf>,
    /// Object bytes by case name.
    objects: BTreeMap<&'static str, Vec<u8>>,
    /// Offset of SAMPLE_RATE in global_data.o's .rodata (for libbpf).
    sample_rate_offset: usize,
    /// Every program id loaded, to prove at the end that none is left.
    program_ids: HashSet<u32>,
}

/// Timings of one case, per method.
#[derive(Default)]
struct Timings {
    load: BTreeMap<Method, Vec<Duration>>,
    agent_remove: Vec<Duration>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: the bench loads eBPF programs (sudo scripts/bench.sh)");
    }
    // Before any thread exists, so every thread (and child) shares the private namespace.
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

    let mut bench = Bench::new(args)?;
    let env = environment(bench.libbpf.as_ref());
    let btf = measure_btf_parse(10);
    let mut results = Vec::new();
    if !bench.args.skip_latency {
        let only = bench.args.only.clone();
        for case in CASES.iter().filter(|c| only.is_empty() || only.iter().any(|o| o == c.name)) {
            results.push((case, bench.run_case(case)?));
        }
    }
    let rss = if bench.args.skip_rss { None } else { Some(bench.measure_rss()?) };
    bench.check_nothing_left()?;

    print_report(&bench, &env, &btf, &results, rss.as_ref());
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
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let manager = Manager::new(AgentConfig {
            node_name: "bench".into(),
            bpffs_root: dirs.bpffs.join("agent"),
            state_dir: dirs.state.join("agent"),
            tc_backend: TcBackend::Auto,
        })?;
        Ok(Self { args, examples, dirs, rt, manager, libbpf, objects, sample_rate_offset, program_ids: HashSet::new() })
    }

    /// A BpfProgram manifest of `case` named `name`, loading from the examples directory.
    fn manifest(&self, case: &Case, name: &str) -> String {
        let mut programs = String::new();
        for (prog, hook) in case.programs {
            let attach = match hook {
                Hook::Xdp => "type: XDP\n      xdp: {interfaces: [lo], mode: Generic}".to_string(),
                Hook::Tc => "type: TC\n      tc: {interfaces: [lo], direction: Ingress, priority: 100}".to_string(),
                Hook::Tracepoint(cat, tp) => format!("type: Tracepoint\n      tracepoint: {{names: [{cat}/{tp}]}}"),
                Hook::Uprobe | Hook::Uretprobe => {
                    let key = if matches!(hook, Hook::Uprobe) { "uprobe" } else { "uretprobe" };
                    let kind = if matches!(hook, Hook::Uprobe) { "Uprobe" } else { "Uretprobe" };
                    format!(
                        "type: {kind}\n      {key}: {{target: {}, symbol: {}}}",
                        self.args.uprobe_target.display(),
                        self.args.uprobe_symbol
                    )
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
            self.examples.display(),
            case.name
        )
    }

    /// Every method on one case, interleaved: iteration i runs the methods in an order
    /// rotated by i, so drift on a noisy machine spreads evenly over them.
    fn run_case(&mut self, case: &Case) -> anyhow::Result<Timings> {
        eprintln!(
            "== {} ({} warm-up + {} timed iterations per method)",
            case.name, self.args.warmup, self.args.iterations
        );
        let mut t = Timings::default();
        let methods: Vec<Method> =
            METHODS.iter().copied().filter(|m| *m != Method::Libbpf || self.libbpf.is_some()).collect();
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

    /// One load+attach by `m`, then its clean-up. Returns the load+attach time and, for
    /// the agent, the time of its Remove.
    fn once(&mut self, case: &Case, m: Method, i: usize) -> anyhow::Result<(Duration, Option<Duration>)> {
        match m {
            Method::Agent => self.agent_once(case, i).map(|(l, r)| (l, Some(r))),
            Method::Libbpf => self.libbpf_once(case).map(|l| (l, None)),
            Method::Cli => self.cli_once(case, i).map(|l| (l, None)),
            Method::Aya => self.aya_once(case).map(|l| (l, None)),
        }
    }

    /// The agent's whole Apply path (ELF checks, maps created and pinned, load, verify,
    /// attach, pin programs and links, owner record written) for a fresh owner, then Remove.
    fn agent_once(&mut self, case: &Case, i: usize) -> anyhow::Result<(Duration, Duration)> {
        let name = format!("bench-{}-{i}", case.name.replace('_', "-"));
        let obj: crds::BpfProgram = serde_yaml::from_str(&self.manifest(case, &name))?;
        let input = input_from_manifest(&obj)?;
        let uid = input.uid.clone();
        let start = Instant::now();
        let (state, _) = self.rt.block_on(self.manager.apply(input))?;
        let load = start.elapsed();
        self.program_ids.extend(state.attached.iter().map(|p| p.program_id));
        let start = Instant::now();
        self.rt.block_on(self.manager.remove(&uid))?;
        Ok((load, start.elapsed()))
    }

    /// libbpf in this process: open from memory, load, attach; nothing pinned.
    fn libbpf_once(&mut self, case: &Case) -> anyhow::Result<Duration> {
        let Some(lib) = &self.libbpf else { bail!("libbpf unavailable") };
        let hooks: Vec<(&str, LibbpfHook)> = case
            .programs
            .iter()
            .map(|(name, hook)| {
                let h = match hook {
                    Hook::Xdp => LibbpfHook::Xdp { ifindex: 1 },
                    Hook::Tc => LibbpfHook::Tcx { ifindex: 1 },
                    Hook::Tracepoint(..) => LibbpfHook::FromSection,
                    Hook::Uprobe | Hook::Uretprobe => LibbpfHook::Uprobe {
                        target: &self.args.uprobe_target,
                        symbol: &self.args.uprobe_symbol,
                        retprobe: matches!(hook, Hook::Uretprobe),
                    },
                };
                (*name, h)
            })
            .collect();
        let rate = case.sample_rate.map(u32::to_le_bytes);
        let patch = rate.as_ref().map(|r| (self.sample_rate_offset, &r[..]));
        let start = Instant::now();
        let loaded = lib.run(&self.objects[case.name], patch, &hooks)?;
        let elapsed = start.elapsed();
        self.program_ids.extend(loaded.program_fds.iter().filter_map(|fd| libbpf::program_id(*fd)));
        drop(loaded);
        Ok(elapsed)
    }

    /// The command line, timed as whole processes: `bpftool prog load` + `bpftool net
    /// attach xdpgeneric` (XDP), `bpftool prog load` + `tc filter add … bpf da pinned`
    /// (TC). bpftool 7.1 cannot attach tracepoints or uprobes: those are load only.
    fn cli_once(&mut self, case: &Case, i: usize) -> anyhow::Result<Duration> {
        let obj = self.examples.join(format!("{}.o", case.name));
        let pin = self.dirs.bpffs.join("cli").join(format!("{}-{i}", case.name));
        let (o, p) = (obj.to_str().context("object path")?, pin.to_str().context("pin path")?);
        let hook = case.programs[0].1;
        let start = Instant::now();
        match hook {
            Hook::Xdp => {
                sh("bpftool", &["prog", "load", o, p, "type", "xdp"])?;
                sh("bpftool", &["net", "attach", "xdpgeneric", "pinned", p, "dev", "lo"])?;
            }
            Hook::Tc => {
                sh("bpftool", &["prog", "load", o, p, "type", "classifier"])?;
                sh(
                    "tc",
                    &["filter", "add", "dev", "lo", "ingress", "pref", "100", "bpf", "direct-action", "pinned", p],
                )?;
            }
            Hook::Tracepoint(..) => sh("bpftool", &["prog", "load", o, p])?,
            Hook::Uprobe | Hook::Uretprobe => sh("bpftool", &["prog", "loadall", o, p])?,
        }
        let elapsed = start.elapsed();
        let pins: Vec<PathBuf> = if pin.is_dir() {
            std::fs::read_dir(&pin)?.flatten().map(|e| e.path()).collect()
        } else {
            vec![pin.clone()]
        };
        for p in &pins {
            self.program_ids.insert(ProgramInfo::from_pin(p)?.id());
        }
        match hook {
            Hook::Xdp => sh("bpftool", &["net", "detach", "xdpgeneric", "dev", "lo"])?,
            Hook::Tc => sh("tc", &["filter", "del", "dev", "lo", "ingress", "pref", "100"])?,
            _ => {}
        }
        if pin.is_dir() {
            std::fs::remove_dir_all(&pin)?
        } else {
            std::fs::remove_file(&pin)?
        }
        Ok(elapsed)
    }

    /// aya 0.14 used plainly: `EbpfLoader::new()` (which parses the kernel's BTF), load,
    /// attach; nothing pinned. Dropping the `Ebpf` detaches and unloads.
    fn aya_once(&mut self, case: &Case) -> anyhow::Result<Duration> {
        let bytes = &self.objects[case.name];
        let rate = case.sample_rate.map(u32::to_le_bytes);
        let start = Instant::now();
        let mut loader = EbpfLoader::new();
        if let Some(r) = &rate {
            loader.override_global("SAMPLE_RATE", &r[..], true);
        }
        let mut ebpf = loader.load(bytes)?;
        for (name, hook) in case.programs {
            let prog = ebpf.program_mut(name).with_context(|| format!("no program {name}"))?;
            match hook {
                Hook::Xdp => {
                    let p: &mut Xdp = prog.try_into()?;
                    p.load()?;
                    p.attach("lo", XdpMode::Skb)?;
                }
                Hook::Tc => {
                    let p: &mut SchedClassifier = prog.try_into()?;
                    p.load()?;
                    p.attach("lo", TcAttachType::Ingress)?;
                }
                Hook::Tracepoint(category, tp) => {
                    let p: &mut TracePoint = prog.try_into()?;
                    p.load()?;
                    p.attach(category, tp)?;
                }
                Hook::Uprobe | Hook::Uretprobe => {
                    let p: &mut UProbe = prog.try_into()?;
                    p.load()?;
                    let at = UProbeAttachLocation::Symbol(&self.args.uprobe_symbol);
                    p.attach(at, &self.args.uprobe_target, UProbeScope::AllProcesses)?;
                }
            }
        }
        let elapsed = start.elapsed();
        for (name, _) in case.programs {
            if let Some(p) = ebpf.program(name) {
                self.program_ids.insert(p.info()?.id());
            }
        }
        drop(ebpf);
        Ok(elapsed)
    }

    fn measure_rss(&mut self) -> anyhow::Result<rss::RssReport> {
        let agent_bin = match &self.args.agent_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("bpfleet-agent"),
        };
        let n = self.args.rss_programs;
        eprintln!("== agent memory: {} idle, then with {n} programs", agent_bin.display());
        let tp = CASES.iter().find(|c| c.name == "tracepoint_openat").context("tracepoint case")?;
        let manifests =
            (0..n).map(|i| (format!("rss-{i:03}.yaml"), self.manifest(tp, &format!("rss-{i:03}")))).collect();
        rss::measure(&rss::RssSetup {
            agent_bin: &agent_bin,
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

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn sorted(v: &[Duration]) -> Vec<Duration> {
    let mut s = v.to_vec();
    s.sort();
    s
}

/// "p50 / p90" in ms.
fn p50_p90(v: &[Duration]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    let s = sorted(v);
    format!("{} / {}", ms(pct(&s, 50.0)), ms(pct(&s, 90.0)))
}

/// Ratio of p50s, then the median of the per-iteration ratios (runs i of both methods
/// are neighbours in time, so this one cancels most of the machine's drift).
fn ratio(agent: &[Duration], base: &[Duration]) -> String {
    if agent.is_empty() || base.is_empty() {
        return "—".into();
    }
    let r = pct(&sorted(agent), 50.0).as_secs_f64() / pct(&sorted(base), 50.0).as_secs_f64();
    let mut paired: Vec<f64> = agent.iter().zip(base).map(|(a, b)| a.as_secs_f64() / b.as_secs_f64()).collect();
    paired.sort_by(f64::total_cmp);
    let mark = if r <= 1.5 { "✓" } else { "✗" };
    format!("**{r:.2}×** {mark} ({:.2}×)", paired[paired.len() / 2])
}

fn print_report(
    bench: &Bench,
    env: &str,
    btf: &[Duration],
    results: &[(&Case, Timings)],
    rss: Option<&rss::RssReport>,
) {
    let n = bench.args.iterations;
    println!("Machine: {env}.\n");
    if !results.is_empty() {
        println!(
            "Load + attach, milliseconds, {n} interleaved iterations per cell (p50 / p90). Ratios: agent p50 ÷ baseline p50 (✓ when ≤ 1.5×), then the median of per-iteration ratios.\n"
        );
        println!(
            "| Program | agent | libbpf (in-process) | agent ÷ libbpf | bpftool + tc CLI | agent ÷ CLI | aya 0.14, no cache | agent Remove |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for (case, t) in results {
            let get = |m| t.load.get(&m).map(Vec::as_slice).unwrap_or_default();
            let cli_attaches = matches!(case.programs[0].1, Hook::Xdp | Hook::Tc);
            let (cli, cli_ratio) = if cli_attaches {
                (p50_p90(get(Method::Cli)), ratio(get(Method::Agent), get(Method::Cli)))
            } else {
                (format!("{} (load only)", p50_p90(get(Method::Cli))), "n/a".into())
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                case.name,
                p50_p90(get(Method::Agent)),
                p50_p90(get(Method::Libbpf)),
                ratio(get(Method::Agent), get(Method::Libbpf)),
                cli,
                cli_ratio,
                p50_p90(get(Method::Aya)),
                p50_p90(&t.agent_remove),
            );
        }
        println!();
    }
    if !btf.is_empty() {
        println!(
            "Parsing the kernel's BTF with aya (`Btf::from_sys_fs`): p50 {} ms, p90 {} ms ({} runs).\n",
            ms(pct(btf, 50.0)),
            ms(pct(btf, 90.0)),
            btf.len()
        );
    }
    if let Some(r) = rss {
        let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
        let mark = if r.idle_kib <= 20 * 1024 { "✓" } else { "✗" };
        println!("| bpfleet-agent (standalone) | VmRSS |\n|---|---|");
        println!("| idle, no manifests | {} {mark} (target ≤ 20 MiB) |", mib(r.idle_kib));
        println!("| {} tracepoint programs loaded | {} |", r.programs, mib(r.loaded_kib));
        println!("| peak over the run (VmHWM) | {} |", mib(r.peak_kib));
        println!(
            "\nLoading the {} manifests took {:.2} s from the first file written to the last program pinned.",
            r.programs,
            r.load_all.as_secs_f64()
        );
    }
}
