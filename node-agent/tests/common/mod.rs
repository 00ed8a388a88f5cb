//! Shared set-up for the agent's kernel tests: bpffs/tracefs mounts, the example
//! objects, a private bpffs root per test, network namespaces with veth pairs, and
//! readings taken from the kernel with bpftool (not through our own code).
#![allow(dead_code)]

pub mod fake_cri;
pub mod process;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use agent::attach::TcBackend;
use agent::manager::{AgentConfig, ApplyInput, Manager};
use crds::BpfProgramSpec;
use crds::names::OwnerUid;
use crds::revision::{BytecodeIdentity, Revision};
use crds::validate::validate_spec;

static SETUP: Once = Once::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `bpfleet-agent-test` (the agent with its fault hooks armed), built once per test
/// binary. `BPFLEET_TEST_AGENT_BIN` runs the process tests against another build instead
/// (e.g. an older commit's, to compare behaviour).
pub fn agent_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("BPFLEET_TEST_AGENT_BIN") {
            return PathBuf::from(bin);
        }
        agent::testing::build_agent(&repo())
    })
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

pub fn sh(cmd: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(cmd).output().expect("bash");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn sh_ok(cmd: &str) -> bool {
    Command::new("bash").arg("-c").arg(cmd).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Mounts and example objects, once per test binary.
pub fn setup() {
    SETUP.call_once(|| {
        sh("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf");
        sh("mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || true");
        sh(&format!("{}/examples/build.sh >/dev/null", repo().display()));
    });
}

pub fn object(name: &str) -> PathBuf {
    repo().join("examples/bpf/build").join(name)
}

pub fn object_bytes(name: &str) -> Vec<u8> {
    std::fs::read(object(name)).unwrap_or_else(|e| panic!("{}: {e}", object(name).display()))
}

/// A unique short name for this test's kernel objects (interfaces, namespaces, dirs).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id() % 100000, COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// An agent core on its own bpffs root and state dir, removed on drop.
pub struct TestAgent {
    pub manager: Arc<Manager>,
    pub root: PathBuf,
    pub state: PathBuf,
}

impl TestAgent {
    pub fn new() -> Self {
        Self::with_backend(TcBackend::Auto)
    }

    pub fn with_backend(tc_backend: TcBackend) -> Self {
        setup();
        let id = unique("t");
        let root = PathBuf::from(format!("/sys/fs/bpf/bpfleet-test-{id}"));
        let state = std::env::temp_dir().join(format!("bpfleet-state-{id}"));
        let manager = Manager::new(AgentConfig {
            node_name: "test-node".into(),
            bpffs_root: root.clone(),
            state_dir: state.clone(),
            tc_backend,
            cri_socket: state.join("no-runtime.sock"),
            cri_state_dir: state.join("no-runtime"),
            max_metric_series: agent::export::DEFAULT_MAX_SERIES,
        })
        .unwrap();
        Self { manager, root, state }
    }

    /// Files and directories under the bpffs root (relative paths), sorted.
    pub fn pins(&self) -> Vec<String> {
        pins_under(&self.root)
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

pub use agent::testing::free_port;
pub use agent::testing::tree as pins_under;

/// Poll `f` every 50 ms until it is true, or fail naming `what` after `secs`.
pub fn wait_for(secs: u64, what: &str, f: impl FnMut() -> bool) {
    agent::testing::wait::wait_until(Duration::from_secs(secs), Duration::from_millis(50), what, f)
}

/// Build an ApplyInput from manifest YAML (the spec part) and an object file.
pub fn input(owner: &str, spec_yaml: &str, object_name: &str) -> ApplyInput {
    input_bytes(owner, spec_yaml, object_bytes(object_name))
}

pub fn input_bytes(owner: &str, spec_yaml: &str, bytecode: Vec<u8>) -> ApplyInput {
    let spec: BpfProgramSpec = serde_yaml::from_str(spec_yaml).unwrap();
    let valid = validate_spec(&spec).unwrap_or_else(|e| panic!("{e}"));
    ApplyInput {
        uid: OwnerUid::new(owner).unwrap(),
        name: owner.to_string(),
        revision: Revision::compute(&spec, BytecodeIdentity::Bytes(&bytecode)),
        bytecode,
        programs: valid.programs,
        spec: spec.programs.clone(),
        globals: valid.globals,
        maps: spec.maps.clone(),
        pods: Vec::new(),
        metrics: Vec::new(),
        map_owners: Default::default(),
    }
}

/// The u64 at key 0 of a pinned array map, read by bpftool.
pub fn read_counter(pin: &Path) -> u64 {
    read_u64(pin, 0)
}

/// The u64 at `key` of a pinned array map, read by bpftool (a shorter value is
/// zero-extended).
pub fn read_u64(pin: &Path, key: u32) -> u64 {
    let k = key.to_le_bytes();
    let out = sh(&format!("bpftool -j map lookup pinned {} key {} {} {} {}", pin.display(), k[0], k[1], k[2], k[3]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    let bytes: Vec<u8> = v["value"]
        .as_array()
        .unwrap_or_else(|| panic!("no value in {out}"))
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    let mut buf = [0u8; 8];
    buf[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
    u64::from_le_bytes(buf)
}

/// Ids of every program loaded in the kernel.
pub fn kernel_program_ids() -> Vec<u64> {
    let out = sh("bpftool -j prog show");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array().unwrap().iter().filter_map(|p| p["id"].as_u64()).collect()
}

pub fn kernel_has_program(id: u32) -> bool {
    sh_ok(&format!("bpftool prog show id {id} >/dev/null 2>&1"))
}

/// Programs and links are freed by the kernel asynchronously (RCU) after their last
/// reference goes: poll for up to 3 s.
pub fn program_gone(id: u32) -> bool {
    gone_soon(|| kernel_has_program(id))
}

pub fn kernel_has_link(id: u32) -> bool {
    sh_ok(&format!("bpftool link show id {id} >/dev/null 2>&1"))
}

/// As [`program_gone`], for link `id`.
pub fn link_gone(id: u32) -> bool {
    gone_soon(|| kernel_has_link(id))
}

/// Whether `exists` turns false within 3 s (polled every 50 ms).
fn gone_soon(exists: impl Fn() -> bool) -> bool {
    (0..60).any(|_| {
        let gone = !exists();
        if !gone {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        gone
    })
}

/// A veth pair: `host` in the root namespace (10.x.y.1), `peer` in namespace `ns`
/// (10.x.y.2). Torn down on drop.
pub struct Veth {
    pub ns: String,
    pub host: String,
    pub peer: String,
    pub host_ip: String,
    pub peer_ip: String,
}

impl Veth {
    pub fn new() -> Self {
        setup();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{}", std::process::id() % 1000, n);
        let (ns, host, peer) = (format!("bfns{tag}"), format!("bfh{tag}"), format!("bfp{tag}"));
        let octet2 = (std::process::id() % 200) + 20;
        let octet3 = n % 250 + 1;
        let host_ip = format!("10.{octet2}.{octet3}.1");
        let peer_ip = format!("10.{octet2}.{octet3}.2");
        sh(&format!(
            "ip netns add {ns} && ip link add {host} type veth peer name {peer} netns {ns} && \
             ip addr add {host_ip}/30 dev {host} && ip link set {host} up && \
             ip -n {ns} addr add {peer_ip}/30 dev {peer} && ip -n {ns} link set {peer} up && ip -n {ns} link set lo up"
        ));
        Self { ns, host, peer, host_ip, peer_ip }
    }

    /// Send `n` pings from the namespace to the host side (each crosses host's ingress
    /// once and its egress once with the reply).
    pub fn ping_from_ns(&self, n: u32) {
        sh(&format!("ip netns exec {} ping -c {n} -i 0.01 -W 1 -q {} >/dev/null", self.ns, self.host_ip));
    }

    /// Same, without requiring replies (for programs that drop).
    pub fn ping_from_ns_lossy(&self, n: u32) {
        let _ = sh_ok(&format!("ip netns exec {} ping -c {n} -i 0.01 -W 1 -q {} >/dev/null", self.ns, self.host_ip));
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = sh_ok(&format!("ip link del {} 2>/dev/null; ip netns del {} 2>/dev/null", self.host, self.ns));
    }
}

/// Map pins of an owner's state, whether from the core (in-process) or the wire (gRPC).
pub trait MapPins {
    fn map_pins(&self) -> Vec<(String, String)>;
}

impl MapPins for proto::v1::OwnerState {
    fn map_pins(&self) -> Vec<(String, String)> {
        self.maps.iter().map(|m| (m.name.clone(), m.pin_path.clone())).collect()
    }
}

impl MapPins for crds::NodeProgramStatus {
    fn map_pins(&self) -> Vec<(String, String)> {
        self.maps.iter().map(|m| (m.name.clone(), m.pin_path.clone())).collect()
    }
}

/// The map pin of an applied owner, by map name.
pub fn map_pin(state: &impl MapPins, name: &str) -> PathBuf {
    let pins = state.map_pins();
    PathBuf::from(&pins.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no map {name} in {pins:?}")).1)
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The entry at `key` (its bytes) of the map pinned at `pin` as bpftool shows it: the
/// first 8 bytes of the value, little-endian, one per CPU for a per-CPU map.
pub fn bpftool_values(pin: &Path, key: &[u8]) -> Vec<u64> {
    let key: Vec<String> = key.iter().map(u8::to_string).collect();
    let out = sh(&format!("bpftool -j map lookup pinned {} key {}", pin.display(), key.join(" ")));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    let first8 = |bytes: &serde_json::Value| {
        let mut le = [0u8; 8];
        for (i, b) in bytes.as_array().unwrap_or_else(|| panic!("no value bytes in {out}")).iter().take(8).enumerate() {
            le[i] = u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
        }
        u64::from_le_bytes(le)
    };
    match v.get("values") {
        Some(per_cpu) => per_cpu.as_array().unwrap().iter().map(|c| first8(&c["value"])).collect(),
        None => vec![first8(&v["value"])],
    }
}
