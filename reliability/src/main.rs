//! bpfleet-reliability: agent crash trials (default), a soak (`--soak N`) or abuse
//! (`--abuse`), as root on
//! a kernel with BPF. Needs the agent with its fault hooks armed:
//! `cargo build -p node-agent --bin bpfleet-agent-test --features test-support`.

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;
use reliability::{abuse, crash, owners, process, soak};

#[derive(Parser, Debug)]
#[command(name = "bpfleet-reliability", about = "Crash trials and soak of bpfleet-agent, checked from the kernel")]
struct Args {
    /// Seed of the trials (printed; the same seed replays the same plans). Default: from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// Number of crash trials.
    #[arg(long, default_value_t = 100)]
    trials: u64,
    /// Run only trial N of the seed.
    #[arg(long)]
    only_trial: Option<u64>,
    /// Longest random delay (ms) between sending a call and the kill, for delay kills.
    #[arg(long, default_value_t = 30)]
    max_kill_delay_ms: u64,
    /// Longest random delay (ms) between starting an agent and killing it during recovery.
    #[arg(long, default_value_t = 250)]
    max_recovery_kill_ms: u64,
    /// Soak instead of crash trials: this many apply → upgrade → remove cycles on one agent.
    #[arg(long)]
    soak: Option<u64>,
    /// Abuse instead of crash trials: hostile clients against the agent's port while an
    /// operator applies; fails when an Apply under abuse takes over 2× its time without.
    #[arg(long)]
    abuse: bool,
    /// Abuse: only these abusers (comma-separated: silent, flood, slow, garbage, anonymous,
    /// oversized, authenticated).
    #[arg(long, value_delimiter = ',')]
    abuse_only: Vec<String>,
    /// Soak: sample every N cycles (and at 1, 10, 100 and the end).
    #[arg(long, default_value_t = 1000)]
    sample_every: u64,
    /// The agent binary with its fault hooks armed (bpfleet-agent-test). Default: next to this one.
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Directory of the example objects (examples/build.sh).
    #[arg(long)]
    objects: Option<PathBuf>,
    /// Where logs and state go (kept for failed trials). Default: a temporary directory.
    #[arg(long)]
    work: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let agent_bin = args.agent_bin.unwrap_or_else(process::default_bin);
    if !agent_bin.exists() {
        bail!(
            "no agent binary at {}: build it with `cargo build -p node-agent --bin bpfleet-agent-test --features test-support` or pass --agent-bin",
            agent_bin.display()
        );
    }
    let objects = args.objects.unwrap_or_else(owners::objects_dir);
    let tmp = tempfile::Builder::new().prefix("bpfleet-reliability-").tempdir()?;
    let work = match args.work {
        Some(w) => {
            std::fs::create_dir_all(&w)?;
            w
        }
        None => tmp.path().to_path_buf(),
    };
    if args.abuse {
        let mut cfg = abuse::Config::full(agent_bin, objects);
        if !args.abuse_only.is_empty() {
            cfg = cfg.only(&args.abuse_only.iter().map(String::as_str).collect::<Vec<_>>());
        }
        let r = abuse::run(&cfg, &work)?;
        println!("abuse: {}", r.summary());
        if !r.errors.is_empty() || !r.agent_alive || r.ratio() > 2.0 {
            bail!("abuse failed: ratio {:.2}, errors {:?}", r.ratio(), r.errors);
        }
        return Ok(());
    }
    if let Some(cycles) = args.soak {
        let cfg = soak::Config { cycles, sample_every: args.sample_every, agent_bin, objects };
        let r = soak::run(&cfg, &work)?;
        let (first, last) = (r.samples.first(), r.samples.last());
        if let (Some(a), Some(b)) = (first, last) {
            println!(
                "soak: {} cycles in {:.0} s; RSS {} → {} KiB (heap in use {} → {} KiB, kept free by malloc {} → {} KiB), fds {} → {}, bpffs entries {} → {}, kernel programs {} → {}, links {} → {}, soak programs still loaded {}",
                b.cycle,
                b.seconds,
                a.rss_kib,
                b.rss_kib,
                a.heap_in_use_kib,
                b.heap_in_use_kib,
                a.heap_free_kib,
                b.heap_free_kib,
                a.fds,
                b.fds,
                a.bpffs_entries,
                b.bpffs_entries,
                a.kernel_programs,
                b.kernel_programs,
                a.kernel_links,
                b.kernel_links,
                b.ours_loaded
            );
        }
        if !r.errors.is_empty() || !r.final_findings.is_empty() {
            bail!("soak failed: errors {:?}, final check {:?}", r.errors, r.final_findings);
        }
        return Ok(());
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let cfg = crash::Config {
        seed,
        trials: args.trials,
        only_trial: args.only_trial,
        agent_bin,
        objects,
        max_kill_delay_ms: args.max_kill_delay_ms,
        max_recovery_kill_ms: args.max_recovery_kill_ms,
    };
    let report = crash::run(&cfg, &work)?;
    if report.converged() != report.trials.len() || report.leaks() > 0 {
        // Keep the failed trials' logs.
        let kept = tmp.keep();
        bail!("{} (logs of failed trials under {})", report.summary(), kept.display());
    }
    Ok(())
}
