//! Soak: one agent, many apply → upgrade → remove cycles over gRPC, rotating through the
//! XDP, TC and tracepoint owners; the agent's memory and descriptors, its bpffs root and
//! the kernel's program and link counts are sampled along the way and must stay flat.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use agent::tls::testpki::TestPki;

use crate::converge::{self, Desired, Node};
use crate::kernel::{self, Dirs, Veth};
use crate::owners::{self, TcBackend};
use crate::process::{self, AgentProc, Launch};

pub struct Config {
    pub cycles: u64,
    pub sample_every: u64,
    pub agent_bin: PathBuf,
    pub objects: PathBuf,
}

/// One reading, taken after a cycle's Remove (so the agent runs nothing).
#[derive(Clone, Debug)]
pub struct Sample {
    pub cycle: u64,
    pub seconds: f64,
    pub rss_kib: u64,
    pub fds: usize,
    /// Program and link descriptors the agent holds.
    pub bpf_fds: usize,
    pub bpffs_entries: usize,
    /// Every program / link loaded in the kernel (the whole machine: other users count too).
    pub kernel_programs: usize,
    pub kernel_links: usize,
    /// Programs this soak loaded that are still loaded.
    pub ours_loaded: usize,
    /// What malloc says the agent has allocated, and keeps freed for reuse (its /metrics).
    pub heap_in_use_kib: u64,
    pub heap_free_kib: u64,
}

impl Sample {
    pub fn header() -> &'static str {
        "cycle     secs   rss_kib  heap_kib  free_kib  fds  bpf_fds  bpffs  kernel_progs  kernel_links  soak_progs_loaded"
    }

    pub fn line(&self) -> String {
        format!(
            "{:>6} {:>8.0} {:>9} {:>9} {:>9} {:>4} {:>8} {:>6} {:>13} {:>13} {:>18}",
            self.cycle,
            self.seconds,
            self.rss_kib,
            self.heap_in_use_kib,
            self.heap_free_kib,
            self.fds,
            self.bpf_fds,
            self.bpffs_entries,
            self.kernel_programs,
            self.kernel_links,
            self.ours_loaded
        )
    }
}

#[derive(Debug, Default)]
pub struct SoakReport {
    pub samples: Vec<Sample>,
    pub errors: Vec<String>,
    /// Problems of the final check (after the last Remove): leaks or wrong status.
    pub final_findings: Vec<String>,
}

fn sample(
    cycle: u64,
    started: Instant,
    pid: u32,
    root: &Path,
    seen: &BTreeSet<u32>,
    metrics: SocketAddr,
) -> anyhow::Result<Sample> {
    let text = agent::testing::http_get(metrics, "/metrics").unwrap_or_default();
    let kib = |name: &str| agent::testing::metric(&text, name).map(|b| b as u64 / 1024).unwrap_or(0);
    let view = kernel::process(pid)?;
    let progs = kernel::programs()?;
    // Give the kernel its grace period for what the last Remove released.
    let mut ours = 0;
    kernel::settle(3, || {
        ours = kernel::programs().map(|p| p.iter().filter(|p| seen.contains(&p.id)).count()).unwrap_or(usize::MAX);
        ours == 0
    });
    Ok(Sample {
        cycle,
        seconds: started.elapsed().as_secs_f64(),
        rss_kib: view.rss_kib,
        fds: view.fds,
        bpf_fds: view.prog_ids.len() + view.link_ids.len(),
        bpffs_entries: kernel::tree(root).len(),
        kernel_programs: progs.len(),
        kernel_links: kernel::links()?.len(),
        ours_loaded: ours,
        heap_in_use_kib: kib("bpfleet_agent_heap_in_use_bytes"),
        heap_free_kib: kib("bpfleet_agent_heap_free_retained_bytes"),
    })
}

pub fn run(cfg: &Config, work: &Path) -> anyhow::Result<SoakReport> {
    kernel::mounts()?;
    let pki_dir = work.join("pki");
    std::fs::create_dir_all(&pki_dir)?;
    let pki = TestPki::generate(&pki_dir);
    let tag = format!("{}s", std::process::id() % 10000);
    let veth = Veth::new(&tag)?;
    let dirs = Dirs::new(&tag, work);
    let _ = std::fs::remove_dir_all(&dirs.root);
    let pool = owners::pool(&cfg.objects, &veth.host, TcBackend::Tcx)?;
    let metrics: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let launch = Launch {
        bin: &cfg.agent_bin,
        pki: &pki,
        dirs: &dirs,
        tc_backend: TcBackend::Tcx.flag(),
        env: vec![("BPFLEET_METRICS_LISTEN".into(), metrics.to_string())],
        log: work.join("soak-agent.log"),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut report = SoakReport::default();
    let mut agent = AgentProc::spawn(&launch)?;
    let mut client = rt.block_on(agent.ready(&pki.client_config()))?;
    let pid = agent.pid();
    let started = Instant::now();
    let mut seen = BTreeSet::new();
    println!("soak: {} cycles of apply → upgrade → remove (XDP, TC, tracepoint in turn), agent pid {pid}", cfg.cycles);
    println!("{}", Sample::header());
    let first = sample(0, started, pid, &dirs.root, &seen, metrics)?;
    println!("{}", first.line());
    report.samples.push(first);
    for cycle in 1..=cfg.cycles {
        let owner = &pool[(cycle as usize - 1) % pool.len()];
        let (a, b) = (&owner.variants[0], &owner.variants[1]);
        for req in [&a.request, &b.request] {
            match rt.block_on(client.apply(req.clone())) {
                Ok(r) => seen.extend(r.into_inner().state.iter().flat_map(|s| s.attached.iter().map(|a| a.program_id))),
                Err(e) => report.errors.push(format!("cycle {cycle}: apply {}: {}", owner.uid, e.message())),
            }
        }
        if let Err(e) = rt.block_on(client.remove(process::remove_request(&owner.uid))) {
            report.errors.push(format!("cycle {cycle}: remove {}: {}", owner.uid, e.message()));
        }
        if report.errors.len() > 20 {
            anyhow::bail!("too many errors: {:?}\n{}", report.errors, agent.log_text());
        }
        let milestone = matches!(cycle, 1 | 10 | 100) || cycle % cfg.sample_every == 0 || cycle == cfg.cycles;
        if milestone {
            let s = sample(cycle, started, pid, &dirs.root, &seen, metrics)?;
            println!("{}", s.line());
            report.samples.push(s);
        }
    }
    let listed = rt.block_on(process::list(&mut client))?;
    let none: Desired = pool.iter().map(|o| (o, None)).collect();
    let node = Node { root: &dirs.root, state: &dirs.state, dev: &veth.host, agent_pid: Some(pid), seen: &seen };
    let f = converge::check(&node, &none, Some(&listed))?;
    report.final_findings.extend(f.wrong);
    report.final_findings.extend(f.leaks);
    report.final_findings.extend(converge::agent_holds_nothing(pid));
    if agent.exited() {
        report.errors.push(format!("the agent died:\n{}", agent.log_text()));
    }
    drop(client);
    drop(agent);
    Ok(report)
}
