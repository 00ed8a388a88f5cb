//! Probe over the agent's real gRPC API with mTLS, checked against the kernel: run counts
//! against bpftool's `run_cnt`, map values against `bpftool map lookup` (per-CPU values
//! summed here), and the stats lease against `/proc/sys/kernel/bpf_stats_enabled`, also
//! across an agent killed while it holds one.
//!
//! `examples/bpf/testdata/probe_counters.c` counts this test process's getppid(2) calls
//! into maps of every shape Probe reads or refuses. Tests that write the sysctl take
//! [`SysctlGuard`]: they run one at a time and put the value they found back.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::process::*;
use common::*;
use proto::v1;
use proto::v1::agent_client::AgentClient;
use proto::v1::map_value::Result as Value;
use tokio::sync::{Mutex, MutexGuard};
use tonic::transport::Channel;

const OBJECT: &str = "probe_counters.o";
const PROGRAM: &str =
    "  - {name: count_getppid, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_getppid]}}\n";
const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The sysctl as `cat` shows it.
fn sysctl() -> String {
    sh(&format!("cat {SYSCTL}")).trim().to_string()
}

/// Held by a test that writes the sysctl: one such test at a time, and the value found
/// before is written back when it ends (passed or failed).
struct SysctlGuard {
    before: String,
    _turn: MutexGuard<'static, ()>,
}

impl SysctlGuard {
    async fn set(value: &str) -> Self {
        static TURN: Mutex<()> = Mutex::const_new(());
        let turn = TURN.lock().await;
        let before = sysctl();
        std::fs::write(SYSCTL, value).unwrap();
        Self { before, _turn: turn }
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.before);
    }
}

/// Every test's program counts this process's calls: a test that compares counts holds
/// this turn while it calls and reads, so no other test's calls land in between.
async fn calls_turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::const_new(());
    TURN.lock().await
}

/// getppid(2) `n` times from this process, on two threads (so per-CPU maps usually get
/// values on more than one CPU), during a [`calls_turn`].
fn getppid_calls(n: u64, _turn: &MutexGuard<'static, ()>) {
    std::thread::scope(|s| {
        for share in [n / 2, n - n / 2] {
            s.spawn(move || {
                for _ in 0..share {
                    // SAFETY: getppid takes no arguments and cannot fail.
                    unsafe { libc::syscall(libc::SYS_getppid) };
                }
            });
        }
    });
}

/// An agent serving mTLS and a client with the operator's identity.
async fn start_agent(dirs: &Dirs) -> (AgentProc, AgentClient<Channel>) {
    let mut agent = AgentProc::spawn_tls(dirs, &[]);
    let client = agent.ready_client(dirs.client_tls()).await;
    (agent, client)
}

/// Apply probe_counters, counting this process's calls; returns the attached state.
async fn apply(client: &mut AgentClient<Channel>, uid: &str) -> v1::OwnerState {
    let mut req = apply_request(uid, PROGRAM, OBJECT);
    req.global_data.insert("TARGET_TGID".into(), std::process::id().to_le_bytes().to_vec().into());
    let state = client.apply(req).await.expect("apply probe_counters").into_inner().state.unwrap();
    assert_eq!(state.attached.len(), 1, "{state:?}");
    state
}

fn probe_req(uid: &str, reads: &[(&str, u64)], lease: u32, node: &str) -> v1::ProbeRequest {
    v1::ProbeRequest {
        owner_uid: uid.into(),
        reads: reads.iter().map(|(m, k)| v1::MapRead { map: (*m).into(), key: *k }).collect(),
        stats_lease_seconds: lease,
        node_name: node.into(),
    }
}

/// `bpftool -j prog show id` of a program.
fn bpftool_prog(id: u32) -> serde_json::Value {
    serde_json::from_str(&sh(&format!("bpftool -j prog show id {id}"))).unwrap()
}

/// The entry at `key` of the map pinned at `pin` as bpftool shows it, summed over CPUs for
/// a per-CPU map.
fn bpftool_value(pin: &Path, key: &[u8]) -> u64 {
    bpftool_values(pin, key).iter().sum()
}

fn value(values: &[v1::MapValue], i: usize) -> &Value {
    values[i].result.as_ref().unwrap_or_else(|| panic!("read {i} has no result: {values:?}"))
}

/// (a) A lease turns an off sysctl on and gives it back when it ends; run counts rise
/// with the program's runs and agree with bpftool. A sysctl found on is never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stats_lease_turns_counting_on_and_gives_it_back() {
    let guard = SysctlGuard::set("0").await;
    let dirs = Dirs::new("probe-lease");
    let (_agent, mut client) = start_agent(&dirs).await;
    let state = apply(&mut client, "probe-lease").await;
    let prog_id = state.attached[0].program_id;
    let marker = dirs.state().join("bpf-stats-lease");
    assert_eq!(sysctl(), "0", "applying does not touch the sysctl");
    assert!(!marker.exists());

    let first = client.probe(probe_req("probe-lease", &[], 3, "probe-lease-node")).await.unwrap().into_inner();
    let leased_at = Instant::now();
    assert_eq!((first.node_name.as_str(), first.revision.as_str()), ("probe-lease-node", state.revision.as_str()));
    assert!(first.stats_enabled);
    assert_eq!(sysctl(), "1", "the lease switched counting on");
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "0", "the marker records the value to restore");
    assert_eq!(first.programs.len(), 1, "{first:?}");
    assert_eq!((first.programs[0].name.as_str(), first.programs[0].program_id), ("count_getppid", prog_id));

    getppid_calls(500, &calls_turn().await);
    let second = client.probe(probe_req("probe-lease", &[], 1, "")).await.unwrap().into_inner();
    let (a, b) = (&first.programs[0], &second.programs[0]);
    assert!(b.run_count >= a.run_count + 500, "run count {} -> {} over 500 calls", a.run_count, b.run_count);
    assert!(b.run_time_ns > a.run_time_ns, "run time {} -> {}", a.run_time_ns, b.run_time_ns);
    let shown = bpftool_prog(prog_id);
    let kernel_runs = shown["run_cnt"].as_u64().unwrap_or_else(|| panic!("bpftool shows no run_cnt: {shown}"));
    assert!(kernel_runs >= b.run_count && b.run_count > 0, "bpftool run_cnt {kernel_runs}, Probe {}", b.run_count);
    assert_eq!(shown["id"].as_u64(), Some(u64::from(b.program_id)));

    // The shorter second lease did not cut the first: on until ~3 s, then back to 0.
    wait_for(10, "the sysctl back to 0 after the lease", || sysctl() == "0");
    assert!(leased_at.elapsed() >= Duration::from_millis(2500), "restored after {:?}", leased_at.elapsed());
    assert!(!marker.exists(), "the marker goes with the lease");

    // Found on: left on after the lease, and no marker.
    drop(guard);
    let _guard = SysctlGuard::set("1").await;
    let r = client.probe(probe_req("probe-lease", &[], 1, "")).await.unwrap().into_inner();
    assert!(r.stats_enabled);
    assert!(!marker.exists(), "a sysctl found on is not the agent's to restore");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(sysctl(), "1");
    assert!(!marker.exists());
}

/// (b) Map entries as Probe reads them are what bpftool shows (per-CPU values summed);
/// entries that cannot be read say why. An owner that runs nothing gets an empty answer;
/// requests past the limits are refused with what to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_reads_match_bpftool_and_say_why_an_entry_cannot_be_read() {
    let dirs = Dirs::new("probe-maps");
    let (_agent, mut client) = start_agent(&dirs).await;
    let state = apply(&mut client, "probe-maps").await;
    let calls = 437;
    let turn = calls_turn().await;
    getppid_calls(calls, &turn);
    let reads = [
        ("calls", 0),
        ("calls", 1),
        ("small", 0),
        ("calls_percpu", 0),
        ("per_key", 7),
        ("per_key", 8),
        ("calls", 9),
        ("counters", 0),
        ("wide_key", 1),
        ("events", 0),
        ("calls", 1 << 32),
    ];
    let r = client.probe(probe_req("probe-maps", &reads, 0, "probe-maps-node")).await.unwrap().into_inner();
    assert_eq!(r.revision, state.revision);
    assert_eq!(r.values.len(), reads.len());
    for (i, (map, key)) in reads.iter().enumerate() {
        assert_eq!((r.values[i].map.as_str(), r.values[i].key), (*map, *key), "answers come in the request's order");
    }
    let pin = |name: &str| map_pin(&state, name);
    let expected = [
        (bpftool_value(&pin("calls"), &0u32.to_le_bytes()), calls),
        (bpftool_value(&pin("calls"), &1u32.to_le_bytes()), 10 * calls),
        (bpftool_value(&pin("small"), &0u32.to_le_bytes()), calls),
        (bpftool_value(&pin("calls_percpu"), &0u32.to_le_bytes()), calls),
        (bpftool_value(&pin("per_key"), &7u64.to_le_bytes()), calls),
    ];
    for (i, (shown, counted)) in expected.into_iter().enumerate() {
        assert_eq!(shown, counted, "bpftool, read {i} ({:?}): the program counted every call", reads[i]);
        assert_eq!(value(&r.values, i), &Value::Value(shown), "read {i} ({:?})", reads[i]);
    }
    let error = |i: usize| match value(&r.values, i) {
        Value::Error(e) => e.clone(),
        other => panic!("read {i} ({:?}) must fail, got {other:?}", reads[i]),
    };
    assert_eq!(error(5), "map \"per_key\" has no entry at key 8");
    assert_eq!(error(6), "map \"calls\" has no entry at key 9: it is an array of 4 entries (keys 0 to 3)");
    let unknown = error(7);
    assert!(
        unknown.starts_with(&format!("revision {} of this owner has no map \"counters\" (its maps: ", state.revision))
            && unknown.contains("calls_percpu"),
        "{unknown}"
    );
    assert!(error(8).contains("\"wide_key\" has 16-byte keys"), "{}", error(8));
    assert!(error(9).contains("\"events\" is a RingBuf map"), "{}", error(9));
    assert_eq!(error(10), "key 4294967296 does not fit map \"calls\"'s 4-byte keys");

    // The readings change nothing: same program, same values.
    let again = client.probe(probe_req("probe-maps", &reads[..1], 0, "")).await.unwrap().into_inner();
    assert_eq!(again.programs[0].program_id, state.attached[0].program_id);
    assert_eq!(value(&again.values, 0), &Value::Value(calls));
    drop(turn);

    // An owner that runs nothing here: empty revision and nothing else, no lease taken.
    let none = client.probe(probe_req("not-here", &reads, 5, "")).await.unwrap().into_inner();
    assert_eq!(none, v1::ProbeResponse { node_name: "probe-maps-node".into(), ..Default::default() });
    assert!(!dirs.state().join("bpf-stats-lease").exists());

    // Past the limits.
    let many: Vec<(&str, u64)> = (0..33).map(|k| ("calls", k)).collect();
    let err = client.probe(probe_req("probe-maps", &many, 0, "")).await.expect_err("33 reads");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("33 map reads") && err.message().contains("at most 32"), "{}", err.message());
    let err = client.probe(probe_req("probe-maps", &[], 601, "")).await.expect_err("a lease of 601 s");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("at most 600"), "{}", err.message());
    let err = client.probe(probe_req("probe-maps", &[("../calls", 0)], 0, "")).await.expect_err("a path as a map");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("reads[0].map"), "{}", err.message());
}

/// (c) An agent killed while it holds a lease leaves the sysctl on and its marker behind;
/// the next agent on that state directory puts the value back at start. An agent that
/// stops normally gives it back as it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_by_a_dead_agent_is_given_back_by_the_next_one() {
    let _guard = SysctlGuard::set("0").await;
    let dirs = Dirs::new("probe-crash");
    let marker = dirs.state().join("bpf-stats-lease");
    let (agent1, mut client) = start_agent(&dirs).await;
    apply(&mut client, "probe-crash").await;
    let r = client.probe(probe_req("probe-crash", &[], 600, "")).await.unwrap().into_inner();
    assert!(r.stats_enabled);
    assert_eq!(sysctl(), "1");
    agent1.kill9();
    assert_eq!(sysctl(), "1", "nothing put it back: the agent died holding the lease");
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "0");

    let (mut agent2, mut client) = start_agent(&dirs).await;
    assert_eq!(sysctl(), "0", "the restarted agent put the value it found back");
    assert!(!marker.exists());
    // Still probes what the first agent applied (adopted from the pins).
    let r = client.probe(probe_req("probe-crash", &[("calls", 0)], 600, "")).await.unwrap().into_inner();
    assert_eq!(r.programs.len(), 1);
    assert_eq!(sysctl(), "1");

    // SIGTERM: the agent stops serving and gives the sysctl back on its way out.
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(agent2.child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent2.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "agent did not stop on SIGTERM:\n{}", agent2.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sysctl(), "0", "given back at shutdown:\n{}", agent2.log());
    assert!(!marker.exists());
}

/// (d) A Probe for another node is refused as List is, naming both nodes; a client that is
/// not the operator is refused before any call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_for_another_node_or_from_another_identity_is_refused() {
    let dirs = Dirs::new("probe-node");
    let (agent, mut client) = start_agent(&dirs).await;
    apply(&mut client, "probe-node").await;
    let err = client.probe(probe_req("probe-node", &[("calls", 0)], 0, "other-node")).await.expect_err("other node");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(err.metadata().get("bpfleet-reason").and_then(|v| v.to_str().ok()), Some("WrongNode"));
    assert!(
        err.message().starts_with("Probe is for node \"other-node\"") && err.message().contains("\"probe-node-node\""),
        "{}",
        err.message()
    );
    let list = client.list(v1::ListRequest { node_name: "other-node".into(), ..Default::default() }).await;
    assert_eq!(list.expect_err("List for another node").code(), err.code(), "refused as List is");
    let mine = client.probe(probe_req("probe-node", &[("calls", 0)], 0, "probe-node-node")).await.unwrap();
    assert_eq!(mine.into_inner().node_name, "probe-node-node");

    let (cert, key) = dirs.pki.issue_client("someone-else");
    let impostor = agent::tls::client_config(&cert, &key, &dirs.pki.ca_cert, "bpfleet-agent").unwrap();
    let refused = match connect(&agent.url(), impostor).await {
        Ok(ch) => {
            AgentClient::new(ch).probe(probe_req("probe-node", &[], 0, "")).await.map(|_| ()).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    assert!(refused.is_err(), "a client without the operator's identity was answered");
}
