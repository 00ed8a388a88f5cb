//! The agent method of bpfleet-bench, run as `bpfleet-agent` runs: in a process of its
//! own (this binary again, `bpfleet-bench agent-worker …`) whose first act is
//! `hide_kernel_btf_from_aya()`, which puts the process in a private mount namespace.
//! The baselines stay in the parent, which still sees `/sys/kernel/btf/vmlinux` (so plain
//! aya still parses it, and bpftool children are unaffected).
//!
//! The worker inherits the parent's private network namespace (it is spawned after the
//! parent's `unshare(CLONE_NEWNET)`) and serves one request per line on stdin, one reply
//! per line on stdout:
//!
//! - `apply CASE I` → `ok NANOS ID,ID,…`: `Manager::apply` of the example CASE under the
//!   owner name of iteration I, timed in the worker; the ids of the programs it loaded.
//! - `remove CASE I` → `ok NANOS`: `Manager::remove` of that owner, timed.
//! - any failure → `err MESSAGE`. End of input: the worker exits.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use agent::attach::TcBackend;
use agent::manager::{AgentConfig, Manager};
use agent::request::input_from_manifest;
use anyhow::{Context, bail};
use clap::Parser;

use crate::{CASES, manifest};

/// argv[1] that makes bpfleet-bench an agent worker (not in `--help`).
pub const SUBCOMMAND: &str = "agent-worker";

#[derive(Parser, Debug)]
#[command(name = "agent-worker")]
struct WorkerArgs {
    #[arg(long)]
    examples: PathBuf,
    #[arg(long)]
    uprobe_target: PathBuf,
    #[arg(long)]
    uprobe_symbol: String,
    #[arg(long)]
    bpffs_root: PathBuf,
    #[arg(long)]
    state_dir: PathBuf,
}

/// The worker's main: argv is `bpfleet-bench agent-worker --examples … …`.
pub fn main() -> anyhow::Result<()> {
    // First, while the process has a single thread, as bpfleet-agent's main() does it.
    if let Err(e) = agent::loader::hide_kernel_btf_from_aya() {
        bail!("agent worker: cannot hide the kernel BTF from aya as bpfleet-agent does: {e}");
    }
    if aya::Btf::from_sys_fs().is_ok() {
        bail!("agent worker: /sys/kernel/btf/vmlinux is still readable after hide_kernel_btf_from_aya()");
    }
    let args = WorkerArgs::parse_from(std::env::args_os().skip(1));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    agent::kernel::raise_memlock();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let manager = Manager::new(AgentConfig {
        node_name: "bench".into(),
        bpffs_root: args.bpffs_root.clone(),
        state_dir: args.state_dir.clone(),
        tc_backend: TcBackend::Auto,
        cri_socket: agent::pods::resolve::DEFAULT_CRI_SOCKET.into(),
        cri_state_dir: agent::pods::resolve::DEFAULT_CRI_STATE_DIR.into(),
        max_metric_series: agent::export::DEFAULT_MAX_SERIES,
    })?;
    // Requests arrive through the runtime's I/O driver and are served by a task on a worker
    // thread, as the agent's gRPC server serves them, not by `block_on` from this thread.
    let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
    rt.block_on(async move {
        let requests = tokio::net::unix::pipe::Receiver::from_owned_fd(stdin)?;
        tokio::spawn(serve_all(args, manager, requests)).await?
    })
}

async fn serve_all(
    args: WorkerArgs,
    manager: std::sync::Arc<Manager>,
    requests: tokio::net::unix::pipe::Receiver,
) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let mut owners = HashMap::new();
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut lines = tokio::io::BufReader::new(requests).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serve(&args, &manager, &mut owners, &line).await {
            Ok(r) => format!("ok {r}"),
            Err(e) => format!("err {}", format!("{e:#}").replace('\n', " ")),
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}

/// One request; the reply without its `ok`.
async fn serve(
    args: &WorkerArgs,
    manager: &std::sync::Arc<Manager>,
    owners: &mut HashMap<String, crds::names::OwnerUid>,
    line: &str,
) -> anyhow::Result<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [verb, case, i] = words[..] else { bail!("bad request {line:?}") };
    let case = CASES.iter().find(|c| c.name == case).with_context(|| format!("no case {case}"))?;
    let name = owner_name(case.name, i);
    match verb {
        "apply" => {
            let yaml = manifest(case, &name, &args.examples, &args.uprobe_target, &args.uprobe_symbol);
            let obj: crds::BpfProgram = serde_yaml::from_str(&yaml)?;
            let input = input_from_manifest(&obj)?;
            owners.insert(name, input.uid.clone());
            let start = Instant::now();
            let (state, _) = manager.apply(input).await?;
            let load = start.elapsed();
            let ids: Vec<String> = state.attached.iter().map(|p| p.program_id.to_string()).collect();
            Ok(format!("{} {}", load.as_nanos(), ids.join(",")))
        }
        "remove" => {
            let uid = owners.remove(&name).with_context(|| format!("{name} was not applied"))?;
            let start = Instant::now();
            manager.remove(&uid).await?;
            Ok(start.elapsed().as_nanos().to_string())
        }
        _ => bail!("bad request {line:?}"),
    }
}

fn owner_name(case: &str, i: &str) -> String {
    format!("bench-{}-{i}", case.replace('_', "-"))
}

/// The parent's handle on the worker. Dropping it closes the worker's stdin and waits for
/// it to exit (killing it after 10 s), so the programs it holds are released before the
/// bench removes its bpffs directory. The worker also dies with the bench (PDEATHSIG).
pub struct AgentWorker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

pub struct WorkerSetup<'a> {
    pub examples: &'a Path,
    pub uprobe_target: &'a Path,
    pub uprobe_symbol: &'a str,
    pub bpffs_root: PathBuf,
    pub state_dir: PathBuf,
}

impl AgentWorker {
    /// Start the worker (in the caller's network namespace) and wait until it is ready.
    pub fn spawn(setup: &WorkerSetup<'_>) -> anyhow::Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg(SUBCOMMAND)
            .arg("--examples")
            .arg(setup.examples)
            .arg("--uprobe-target")
            .arg(setup.uprobe_target)
            .args(["--uprobe-symbol", setup.uprobe_symbol])
            .arg("--bpffs-root")
            .arg(&setup.bpffs_root)
            .arg("--state-dir")
            .arg(&setup.state_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe; the worker must not outlive the bench.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("cannot start the agent worker")?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("agent worker stdout")?);
        let mut w = Self { child, stdin, stdout };
        let ready = w.read_line()?;
        if ready != "ready" {
            bail!("agent worker said {ready:?} instead of ready");
        }
        Ok(w)
    }

    fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("the agent worker exited ({status}); see its error above");
        }
        Ok(line.trim_end().to_string())
    }

    fn request(&mut self, req: &str) -> anyhow::Result<String> {
        let stdin = self.stdin.as_mut().context("agent worker stopped")?;
        // One write, so the worker wakes once (writeln! on a pipe writes twice).
        stdin.write_all(format!("{req}\n").as_bytes())?;
        stdin.flush()?;
        let reply = self.read_line()?;
        match reply.split_once(' ').unwrap_or((&reply, "")) {
            ("ok", rest) => Ok(rest.to_string()),
            ("err", msg) => bail!("agent worker: {msg}"),
            _ => bail!("agent worker: unexpected reply {reply:?}"),
        }
    }

    /// `Manager::apply` of `case` for owner `i`: its time and the ids of its programs.
    pub fn apply(&mut self, case: &str, i: usize) -> anyhow::Result<(Duration, Vec<u32>)> {
        let reply = self.request(&format!("apply {case} {i}"))?;
        let (nanos, ids) = reply.split_once(' ').unwrap_or((&reply, ""));
        let ids = ids.split(',').filter(|s| !s.is_empty()).map(str::parse).collect::<Result<_, _>>()?;
        Ok((Duration::from_nanos(nanos.parse()?), ids))
    }

    /// `Manager::remove` of owner `i` of `case`: its time.
    pub fn remove(&mut self, case: &str, i: usize) -> anyhow::Result<Duration> {
        Ok(Duration::from_nanos(self.request(&format!("remove {case} {i}"))?.parse()?))
    }

    /// End the worker (end of its input) and check that it exited cleanly.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the agent worker exited with {status}");
                }
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the agent worker did not exit within 10 s of its input closing; killed");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for AgentWorker {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("{e:#}");
        }
    }
}
