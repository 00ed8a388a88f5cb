//! The short runs CI does (root, a kernel with BPF): 10 crash trials with a fixed seed,
//! a 30-cycle soak, and a short abuse run. The full runs and their figures are in docs/reliability.md.

use std::path::PathBuf;
use std::process::Command;

use reliability::{abuse, crash, owners, soak};

/// The agent with fault points, built as the node-agent tests build it.
fn agent_bin() -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    agent::testing::build_agent(&repo);
    let status = Command::new(repo.join("examples/build.sh")).stdout(std::process::Stdio::null()).status().unwrap();
    assert!(status.success(), "examples/build.sh failed");
    reliability::process::default_bin()
}

#[test]
fn ten_crash_trials_converge_without_leaks() {
    let work = tempfile::tempdir().unwrap();
    let cfg = crash::Config {
        seed: 20261130,
        trials: 10,
        only_trial: None,
        agent_bin: agent_bin(),
        objects: owners::objects_dir(),
        max_kill_delay_ms: 30,
        max_recovery_kill_ms: 250,
    };
    let report = crash::run(&cfg, work.path()).expect("trials ran");
    assert_eq!(report.trials.len(), 10);
    let failed: Vec<_> = report.trials.iter().filter(|t| !t.converged || !t.leaks.is_empty()).collect();
    assert!(failed.is_empty(), "{}\n{failed:#?}", report.summary());
}

#[test]
fn short_soak_leaves_nothing_behind() {
    let work = tempfile::tempdir().unwrap();
    let cfg = soak::Config { cycles: 30, sample_every: 10, agent_bin: agent_bin(), objects: owners::objects_dir() };
    let r = soak::run(&cfg, work.path()).expect("soak ran");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.final_findings.is_empty(), "{:?}", r.final_findings);
    let last = r.samples.last().unwrap();
    assert_eq!(last.cycle, 30);
    assert_eq!((last.bpffs_entries, last.bpf_fds, last.ours_loaded), (0, 0, 0), "{last:?}");
}

#[test]
fn the_operator_is_served_beside_hostile_clients() {
    let work = tempfile::tempdir().unwrap();
    let r = abuse::run(&abuse::Config::short(agent_bin(), owners::objects_dir()), work.path()).expect("abuse ran");
    let summary = r.summary();
    eprintln!("{summary}");
    assert!(r.agent_alive && r.errors.is_empty(), "{summary}");
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let c = &r.counters;
    // The abuse happened, and was refused as it should be.
    assert!(n(&c.closed_by_agent) > 100, "{summary}");
    assert!(n(&c.oversized_refused) > 0 && n(&c.oversized_other) == 0, "{summary}");
    assert!(n(&c.anonymous_refused) > 0 && n(&c.anonymous_admitted) == 0, "{summary}");
    assert_eq!(n(&c.authenticated_open), 50, "{summary}");
    // The operator was served: within 2× on its kept connection, and on a new one.
    assert!(r.ratio() <= 2.0, "{summary}");
    assert_eq!(r.fresh_during.len(), 5, "{summary}");
    // Bounded: the descriptors went back, the memory stayed within 64 MiB of its start.
    assert!(r.usage_after.fds <= r.usage_before.fds, "{summary}");
    assert!(r.usage_peak.rss_kib < r.usage_before.rss_kib + 64 * 1024, "{summary}");
}

/// The checker is not vacuous: a pin, a clsact filter and a program nobody desires, put
/// there by hand with bpftool and tc, are each reported as leaks.
#[test]
fn planted_leaks_are_found() {
    use reliability::converge::{self, Desired, Node};
    use reliability::kernel::{self, Dirs, Veth, sh};
    kernel::mounts().unwrap();
    let _ = agent_bin();
    let work = tempfile::tempdir().unwrap();
    let tag = format!("{}k", std::process::id() % 10000);
    let veth = Veth::new(&tag).unwrap();
    let dirs = Dirs::new(&tag, work.path());
    std::fs::create_dir_all(dirs.root.join("stray")).unwrap();
    let pin = dirs.root.join("stray/p");
    let object = owners::objects_dir().join("tc_counter.o");
    sh(&format!("bpftool prog load {} {} type classifier", object.display(), pin.display())).unwrap();
    sh(&format!(
        "tc qdisc add dev {0} clsact && tc filter add dev {0} ingress prio 7 bpf da pinned {1}",
        veth.host,
        pin.display()
    ))
    .unwrap();
    let pool = owners::pool(&owners::objects_dir(), &veth.host, owners::TcBackend::Clsact).unwrap();
    let none: Desired = pool.iter().map(|o| (o, None)).collect();
    let seen = Default::default();
    let node = Node { root: &dirs.root, state: &dirs.state, dev: &veth.host, agent_pid: None, seen: &seen };
    let f = converge::check(&node, &none, None).unwrap();
    let all = f.leaks.join("\n");
    assert!(all.contains("pin stray/p"), "{all}");
    assert!(all.contains("clsact/ingress priority 7"), "{all}");
    assert!(all.contains("(count_tc) still loaded"), "{all}");
}
