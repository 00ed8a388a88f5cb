//! The agent's memory, measured on the real `bpfleet-agent` binary in standalone mode:
//! idle on an empty manifest directory, then with the standalone examples, then running
//! one program per manifest written into it. Resident set size (VmRSS) comes from /proc/PID/status.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::testing::args::AgentArgs;
use anyhow::{Context, bail};

pub struct RssSetup<'a> {
    pub agent_bin: &'a Path,
    /// bpffs root and state directory of the agent (removed by the caller).
    pub bpffs_root: PathBuf,
    pub state_dir: PathBuf,
    /// The manifest directory and where the agent's log goes.
    pub work_dir: PathBuf,
    /// (file name, YAML) of the standalone examples (examples/standalone), loaded and
    /// removed first: the agent as the README's first command runs it.
    pub examples: Vec<(String, String)>,
    /// (file name, YAML) of every manifest to load.
    pub manifests: Vec<(String, String)>,
    /// Time the agent is left alone before a reading.
    pub settle: Duration,
}

pub struct RssReport {
    pub idle_kib: u64,
    /// Settled with the standalone examples loaded, and how many programs they are.
    pub examples_kib: u64,
    pub examples: usize,
    pub loaded_kib: u64,
    /// VmHWM: the peak resident size over the whole run.
    pub peak_kib: u64,
    pub programs: usize,
    /// From the first manifest written to the last program pinned.
    pub load_all: Duration,
}

/// The agent process; stopped (SIGTERM, then waited for) on drop.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("bpfleet-agent exited ({status}); its log ends with:\n{}", self.log_tail());
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A line of /proc/PID/status in kB, e.g. VmRSS.
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// The median of five VmRSS readings 200 ms apart, after `settle`.
fn settled_rss(agent: &mut Agent, settle: Duration) -> anyhow::Result<u64> {
    std::thread::sleep(settle);
    let mut samples = Vec::new();
    for _ in 0..5 {
        agent.check_alive()?;
        samples.push(status_kib(agent.pid(), "VmRSS")?);
        std::thread::sleep(Duration::from_millis(200));
    }
    samples.sort_unstable();
    Ok(samples[samples.len() / 2])
}

/// Programs pinned under a bpffs root (files in `<owner>/<revision>/progs/`).
fn pinned_programs(root: &Path) -> usize {
    fn walk(dir: &Path, in_progs: bool) -> usize {
        let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
        rd.flatten()
            .map(|e| {
                let p = e.path();
                match (p.is_dir(), in_progs) {
                    (true, _) => walk(&p, p.file_name().is_some_and(|n| n == "progs")),
                    (false, true) => 1,
                    (false, false) => 0,
                }
            })
            .sum()
    }
    walk(root, false)
}

fn wait_for(agent: &mut Agent, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !done() {
        agent.check_alive()?;
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}; the agent log ends with:\n{}", agent.log_tail());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn measure(setup: &RssSetup<'_>) -> anyhow::Result<RssReport> {
    let dir = setup.work_dir.join("manifests");
    std::fs::create_dir_all(&dir)?;
    let log = setup.work_dir.join("agent.log");
    let log_file = std::fs::File::create(&log)?;
    let args = AgentArgs::new("bench", &setup.bpffs_root, &setup.state_dir).standalone(&dir);
    let mut cmd = Command::new(setup.agent_bin);
    cmd.args(args.build()).env("RUST_LOG", "warn").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file);
    // SAFETY: prctl is async-signal-safe; the agent must not outlive the bench.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("cannot start {}", setup.agent_bin.display()))?;
    let mut agent = Agent { child, log };

    let idle_kib = settled_rss(&mut agent, setup.settle)?;

    write_all(&mut agent, &dir, &setup.bpffs_root, &setup.examples)?;
    let examples_kib = settled_rss(&mut agent, setup.settle)?;
    remove_all(&mut agent, &dir, &setup.bpffs_root, &setup.examples)?;

    let started = Instant::now();
    write_all(&mut agent, &dir, &setup.bpffs_root, &setup.manifests)?;
    let load_all = started.elapsed();
    let loaded_kib = settled_rss(&mut agent, setup.settle)?;
    let peak_kib = status_kib(agent.pid(), "VmHWM")?;

    // Let the agent unload everything itself before it stops (stopping keeps pins).
    remove_all(&mut agent, &dir, &setup.bpffs_root, &setup.manifests)?;
    drop(agent);
    Ok(RssReport {
        idle_kib,
        examples_kib,
        examples: setup.examples.len(),
        loaded_kib,
        peak_kib,
        programs: setup.manifests.len(),
        load_all,
    })
}

/// Writes the manifests (one program each) and waits until every program is pinned.
fn write_all(agent: &mut Agent, dir: &Path, bpffs: &Path, manifests: &[(String, String)]) -> anyhow::Result<()> {
    for (name, yaml) in manifests {
        // Written aside and renamed, so the agent never reads half a file.
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    let want = manifests.len();
    wait_for(agent, &format!("{want} programs to be pinned"), Duration::from_secs(120), || {
        pinned_programs(bpffs) >= want
    })
}

/// Removes the manifests and waits until the agent unpinned every program.
fn remove_all(agent: &mut Agent, dir: &Path, bpffs: &Path, manifests: &[(String, String)]) -> anyhow::Result<()> {
    for (name, _) in manifests {
        std::fs::remove_file(dir.join(name))?;
    }
    wait_for(agent, "the programs to be removed", Duration::from_secs(60), || pinned_programs(bpffs) == 0)
}
