//! Standalone mode of the agent binary (`--standalone DIR`): a manifest written is
//! loaded, an edit becomes a new revision that replaces the old, a deleted manifest is
//! unloaded, a ConfigMap source is refused in words, and every example in
//! examples/standalone runs. Checked with bpffs, bpftool and counted events.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// An agent in standalone mode with its own bpffs root, state and manifest directories.
/// The process is SIGKILLed and the root removed on drop.
struct Standalone {
    child: Child,
    root: PathBuf,
    tmp: tempfile::TempDir,
    log: PathBuf,
}

impl Standalone {
    /// `netns`: run the agent in that network namespace (only the network: `ip netns exec`
    /// would also remount /sys and so hide the bpffs and tracefs mounts from it).
    fn start(netns: Option<&str>) -> Self {
        setup();
        let root = PathBuf::from(format!("/sys/fs/bpf/bpfleet-standalone-{}", unique("s")));
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("manifests")).unwrap();
        let log = tmp.path().join("agent.log");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(agent_bin());
                c
            }
            None => Command::new(agent_bin()),
        };
        cmd.args(["--node-name", "standalone-node", "--standalone-interval", "1"])
            .arg("--standalone")
            .arg(tmp.path().join("manifests"))
            .arg("--bpffs-root")
            .arg(&root)
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("BPFLEET_FAULT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("spawn bpfleet-agent");
        Self { child, root, tmp, log }
    }

    fn manifests(&self) -> PathBuf {
        self.tmp.path().join("manifests")
    }

    /// Write a manifest atomically (the agent never reads half a file).
    fn write(&self, file: &str, yaml: &str) {
        let tmp = self.manifests().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.manifests().join(file)).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("agent exited ({st}):\n{}", self.log());
        }
    }

    /// Poll `f` until it is true; fails with the agent's log after `secs`.
    fn wait_for(&mut self, secs: u64, what: &str, mut f: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f(self) {
            self.alive();
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; pins: {:?}\nagent log:\n{}",
                pins_under(&self.root),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Revision directories of a standalone owner (everything but `maps`).
    fn revisions(&self, name: &str) -> Vec<String> {
        let dir = self.root.join(format!("standalone-{name}"));
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| n != "maps").collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The pinned program `prog` of the only revision of owner `name`.
    fn program_pin(&self, name: &str, prog: &str) -> Option<PathBuf> {
        let revs = self.revisions(name);
        let [rev] = revs.as_slice() else { return None };
        let p = self.root.join(format!("standalone-{name}")).join(rev).join("progs").join(prog);
        p.exists().then_some(p)
    }

    /// The first link pin of a program: present once the program is attached.
    fn link_pin(&self, name: &str, prog: &str) -> Option<PathBuf> {
        let rev = self.revisions(name).into_iter().next()?;
        let p = self.root.join(format!("standalone-{name}")).join(rev).join("links").join(prog).join("0");
        p.exists().then_some(p)
    }

    fn map_pin(&self, name: &str, map: &str) -> PathBuf {
        self.root.join(format!("standalone-{name}")).join("maps").join(map)
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn pinned_prog_id(pin: &Path) -> u32 {
    let out = sh(&format!("bpftool -j prog show pinned {}", pin.display()));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    v["id"].as_u64().unwrap() as u32
}

fn wait_gone(secs: u64, id: u32) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while kernel_has_program(id) {
        assert!(Instant::now() < deadline, "program {id} still in the kernel");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn open_files(n: usize) {
    for _ in 0..n {
        let _ = std::fs::File::open("/etc/hostname");
    }
}

fn manifest(name: &str, bytecode: &str, programs: &str) -> String {
    format!(
        "apiVersion: bpfleet.dev/v1alpha1\nkind: BpfProgram\nmetadata:\n  name: {name}\nspec:\n  nodeSelector: {{}}\n  \
         bytecode:\n    {bytecode}\n  programs:\n{programs}"
    )
}

#[test]
fn manifest_added_edited_and_deleted() {
    let mut agent = Standalone::start(None);
    let veth = Veth::new();

    // (a) A manifest appears: its program is pinned and counts openat(2).
    let tp = manifest(
        "sa-prog",
        &format!("path: {}", object("tracepoint_openat.o").display()),
        "    - {name: count_openat, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat]}}\n",
    );
    agent.write("prog.yaml", &tp);
    agent.wait_for(10, "the tracepoint program attached", |a| a.link_pin("sa-prog", "count_openat").is_some());
    let first_rev = agent.revisions("sa-prog");
    let tp_id = pinned_prog_id(&agent.program_pin("sa-prog", "count_openat").unwrap());
    assert!(kernel_has_program(tp_id));
    let counter = agent.map_pin("sa-prog", "openat_count");
    agent.wait_for(5, "openat_count pinned", |_| counter.exists());
    let before = read_counter(&counter);
    open_files(40);
    let after = read_counter(&counter);
    assert!(after >= before + 40, "openat counted {before} -> {after}");

    // (b) The manifest is edited: a new revision replaces the old one.
    let xdp = manifest(
        "sa-prog",
        &format!("path: {}", object("xdp_counter.o").display()),
        &format!("    - {{name: count_packets, type: XDP, xdp: {{interfaces: [{}], mode: Generic}}}}\n", veth.host),
    );
    agent.write("prog.yaml", &xdp);
    agent.wait_for(10, "the XDP revision replacing the tracepoint one", |a| {
        a.revisions("sa-prog").len() == 1 && a.link_pin("sa-prog", "count_packets").is_some()
    });
    let second_rev = agent.revisions("sa-prog");
    assert_eq!(second_rev.len(), 1);
    assert_ne!(first_rev, second_rev);
    wait_gone(5, tp_id);
    assert!(!counter.exists(), "the old revision's map is no longer used and must be unpinned");
    let xdp_id = pinned_prog_id(&agent.program_pin("sa-prog", "count_packets").unwrap());
    assert!(sh(&format!("ip -d link show dev {}", veth.host)).contains(&format!("id {xdp_id}")));
    let packets = agent.map_pin("sa-prog", "packet_count");
    let before = read_counter(&packets);
    veth.ping_from_ns(5);
    assert!(read_counter(&packets) >= before + 5);

    // (c) The manifest is deleted: everything goes.
    std::fs::remove_file(agent.manifests().join("prog.yaml")).unwrap();
    agent.wait_for(10, "the owner removed from bpffs", |a| pins_under(&a.root).is_empty());
    wait_gone(5, xdp_id);
    assert!(!sh(&format!("ip -d link show dev {}", veth.host)).contains("xdp"), "XDP still attached");
}

#[test]
fn config_map_bytecode_needs_a_cluster() {
    let mut agent = Standalone::start(None);
    let cm = manifest(
        "sa-configmap",
        "configMap: {name: xdp-counter-bytecode, namespace: bpfleet-system, key: xdp_counter.o}",
        "    - {name: count_openat, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat]}}\n",
    );
    agent.write("cm.yaml", &cm);
    agent.wait_for(10, "an error about configMap in the log", |a| a.log().contains("needs a cluster"));
    let log = agent.log();
    let line = log.lines().find(|l| l.contains("needs a cluster")).unwrap();
    assert!(line.contains("configMap") && line.contains("bytecode.path"), "unhelpful message: {line}");
    assert!(pins_under(&agent.root).is_empty(), "something was loaded: {:?}", pins_under(&agent.root));
}

/// The uprobe example counts readline() in bash: an interactive bash reading commands.
fn run_interactive_bash() {
    let _ = Command::new("/usr/bin/bash")
        .args(["--norc", "--noprofile", "-i"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"true\ntrue\nexit\n")?;
            c.wait()
        });
}

#[test]
fn every_standalone_example_runs() {
    setup();
    let ns = unique("bfsa");
    sh(&format!("ip netns add {ns} && ip netns exec {ns} ip link set lo up"));
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = sh_ok(&format!("ip netns del {}", self.0));
        }
    }
    let _ns = Ns(ns.clone());
    let mut agent = Standalone::start(Some(&ns));
    let build = repo().join("examples/bpf/build").canonicalize().unwrap();
    let mut names = Vec::new();
    for e in std::fs::read_dir(repo().join("examples/standalone")).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap().replace("@BUILD_DIR@", build.to_str().unwrap());
        let file = e.file_name().to_string_lossy().to_string();
        names.push(file.trim_end_matches(".yaml").to_string());
        agent.write(&file, &text);
    }
    names.sort();
    assert_eq!(names, ["tc-counter", "tracepoint-openat", "uprobe-counter", "xdp-counter"]);
    let programs = [
        ("tc-counter", "count_tc"),
        ("tracepoint-openat", "count_openat"),
        ("uprobe-counter", "count_calls"),
        ("uprobe-counter", "count_returns"),
        ("xdp-counter", "count_packets"),
    ];
    agent.wait_for(15, "every example attached", |a| programs.iter().all(|(n, p)| a.link_pin(n, p).is_some()));
    let ids: Vec<u32> = programs.iter().map(|(n, p)| pinned_prog_id(&agent.program_pin(n, p).unwrap())).collect();
    for id in &ids {
        assert!(kernel_has_program(*id));
    }

    // Each example counts what it says it counts.
    let read = |name: &str, map: &str| read_counter(&agent.map_pin(name, map));
    let (xdp0, tc0, tp0, up0, ret0) = (
        read("xdp-counter", "packet_count"),
        read("tc-counter", "tc_packet_count"),
        read("tracepoint-openat", "openat_count"),
        read("uprobe-counter", "uprobe_count"),
        read("uprobe-counter", "uretprobe_count"),
    );
    sh(&format!("ip netns exec {ns} ping -c 3 -i 0.01 -W 1 -q 127.0.0.1 >/dev/null"));
    open_files(20);
    run_interactive_bash();
    assert!(read("xdp-counter", "packet_count") >= xdp0 + 3, "XDP on lo did not count");
    assert!(read("tc-counter", "tc_packet_count") >= tc0 + 3, "TC on lo did not count");
    assert!(read("tracepoint-openat", "openat_count") >= tp0 + 20, "tracepoint did not count");
    assert!(read("uprobe-counter", "uprobe_count") > up0, "uprobe on bash readline did not count");
    assert!(read("uprobe-counter", "uretprobe_count") > ret0, "uretprobe on bash readline did not count");

    // All manifests gone: everything unloaded.
    for name in &names {
        std::fs::remove_file(agent.manifests().join(format!("{name}.yaml"))).unwrap();
    }
    agent.wait_for(10, "every example removed", |a| pins_under(&a.root).is_empty());
    for id in ids {
        wait_gone(5, id);
    }
}

/// A manifest caught mid-edit (not YAML), or whose object is mid-rebuild (missing,
/// truncated), leaves the running version attached and counting; fixing the file rolls
/// on; only deleting it removes the program.
#[test]
fn broken_files_keep_the_last_good_version_running() {
    let mut agent = Standalone::start(None);
    let obj = agent.tmp.path().join("prog.o");
    std::fs::copy(object("tracepoint_openat.o"), &obj).unwrap();
    let good = manifest(
        "sa-keep",
        &format!("path: {}", obj.display()),
        "    - {name: count_openat, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat]}}\n",
    );
    agent.write("keep.yaml", &good);
    agent.wait_for(10, "the program attached", |a| a.link_pin("sa-keep", "count_openat").is_some());
    let id = pinned_prog_id(&agent.program_pin("sa-keep", "count_openat").unwrap());
    let counter = agent.map_pin("sa-keep", "openat_count");
    let still_running = |a: &Standalone, why: &str| {
        assert!(kernel_has_program(id), "{why}: the running program was unloaded");
        assert_eq!(a.revisions("sa-keep").len(), 1, "{why}");
        let before = read_counter(&counter);
        open_files(20);
        assert!(read_counter(&counter) >= before + 20, "{why}: it stopped counting");
    };

    // Mid-edit: half a YAML document.
    agent.write("keep.yaml", &good[..good.len() / 2]);
    std::thread::sleep(Duration::from_secs(3));
    still_running(&agent, "manifest mid-edit");
    assert!(agent.log().contains("keeps running"), "the reason is logged:\n{}", agent.log());
    // Truncated to nothing (an editor that empties the file before writing it).
    agent.write("keep.yaml", "");
    std::thread::sleep(Duration::from_secs(3));
    still_running(&agent, "manifest emptied mid-save");
    agent.write("keep.yaml", &good);

    // The object mid-rebuild: truncated, then missing.
    std::fs::write(&obj, b"\x7fELF").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    still_running(&agent, "object truncated");
    std::fs::remove_file(&obj).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    still_running(&agent, "object missing");
    agent.alive();

    // Only deleting the manifest removes it.
    std::fs::remove_file(agent.manifests().join("keep.yaml")).unwrap();
    agent.wait_for(10, "the owner removed", |a| pins_under(&a.root).is_empty());
    wait_gone(5, id);
}
