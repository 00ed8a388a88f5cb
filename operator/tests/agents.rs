//! The operator's agent pool (`operator::dispatch`) against real `bpfleet-agent` processes
//! over real gRPC + mTLS: three agents on 127.0.0.2-4 (one port, as on a fleet), a dead
//! address (127.0.0.5) and a black hole that accepts TCP but never speaks TLS (127.0.0.6).
//! What the agents claim is checked against bpffs and the kernel (bpftool).

use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent::tls::testpki::TestPki;
use crds::BpfProgramSpec;
use crds::revision::{BytecodeIdentity, Revision};
use operator::agent_tls::AgentTls;
use operator::dispatch::{AgentPool, DispatchError, Failure, NodeAddr, PoolConfig};
use operator::reports::{AgentChange, ChangeKind};
use operator::status::NodeOutcome;
use proto::v1;

const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Slack for scheduling on a loaded machine.
const MARGIN: Duration = Duration::from_millis(700);
const AGENT_IPS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
const DEAD_IP: &str = "127.0.0.5";
const BLACK_HOLE_IP: &str = "127.0.0.6";
const TRACEPOINT: &str =
    "  - {name: count_openat, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat]}}\n";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

fn sh(cmd: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(cmd).output().expect("bash");
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The agent binary, built once per test binary (another package's binary has no
/// CARGO_BIN_EXE here), plus the mounts and the example objects.
fn agent_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let bin = agent::testing::build_agent(&workspace());
        sh("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf");
        sh("mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || true");
        sh(&format!("bash {}/examples/build.sh >/dev/null", workspace().display()));
        bin
    })
    .clone()
}

/// A port free on every address the test uses, so all agents share it as on a fleet.
fn shared_free_port() -> u16 {
    for _ in 0..50 {
        let first = TcpListener::bind((AGENT_IPS[0], 0)).expect("bind 127.0.0.2:0");
        let port = first.local_addr().unwrap().port();
        let others = AGENT_IPS[1..].iter().chain([&DEAD_IP, &BLACK_HOLE_IP]);
        let held: Result<Vec<TcpListener>, _> = others.map(|ip| TcpListener::bind((*ip, port))).collect();
        if held.is_ok() {
            return port;
        }
    }
    panic!("no port free on all of 127.0.0.2-6");
}

struct AgentProc {
    node: NodeAddr,
    child: Child,
    root: PathBuf,
    log: PathBuf,
}

/// What a fan-out's callback was handed, node by node (it runs on whichever thread the
/// node's sender does).
type Got = Arc<std::sync::Mutex<Vec<(String, Result<crds::node::NodeProgramStatus, DispatchError>)>>>;

/// Three agents, their PKI and directories; processes killed and pins removed on drop.
struct Fleet {
    agents: Vec<AgentProc>,
    port: u16,
    pki: TestPki,
    _tmp: tempfile::TempDir,
}

impl Fleet {
    /// A pool that reaches the fleet's agents with the operator's identity.
    fn pool(&self) -> AgentPool {
        AgentPool::new(self.pool_config(self.tls()))
    }

    /// Nothing is left in any agent's bpffs root (checked in bpffs, not by asking them).
    fn assert_nothing_pinned(&self) {
        for agent in &self.agents {
            let left: Vec<_> =
                std::fs::read_dir(&agent.root).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
            assert!(left.is_empty(), "{}: pins left: {left:?}", agent.node.name);
        }
    }

    fn start() -> Self {
        let bin = agent_bin();
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki_dir = tmp.path().join("pki");
        std::fs::create_dir_all(&pki_dir).unwrap();
        let pki = TestPki::generate(&pki_dir);
        let port = shared_free_port();
        let agents = AGENT_IPS
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let name = format!("node-{}", (b'a' + i as u8) as char);
                let root = PathBuf::from(format!("/sys/fs/bpf/bpfleet-dispatch-{}-{name}", std::process::id()));
                let log = tmp.path().join(format!("{name}.log"));
                let args =
                    agent::testing::args::AgentArgs::new(&name, &root, &tmp.path().join(format!("state-{name}")))
                        .listen(format!("{ip}:{port}"))
                        .pki_server_tls(&pki)
                        .operator_client_name()
                        .build();
                let child = Command::new(&bin)
                    .args(args)
                    .env("NO_COLOR", "1")
                    .env("RUST_LOG", "info")
                    .env_remove("BPFLEET_FAULT")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).unwrap())
                    .spawn()
                    .expect("spawn bpfleet-agent");
                AgentProc { node: NodeAddr { name, ip: ip.parse().unwrap() }, child, root, log }
            })
            .collect();
        Fleet { agents, port, pki, _tmp: tmp }
    }

    fn nodes(&self) -> Vec<NodeAddr> {
        self.agents.iter().map(|a| a.node.clone()).collect()
    }

    /// The operator's identity of the fleet's PKI.
    fn tls(&self) -> AgentTls {
        AgentTls::from_files(self.pki.client_files(), agent::tls::DEFAULT_SERVER_NAME).expect("test PKI")
    }

    fn pool_config(&self, tls: AgentTls) -> PoolConfig {
        PoolConfig {
            port: self.port,
            tls,
            call_timeout: CALL_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
            max_concurrency: 8,
            max_connections: operator::dispatch::DEFAULT_MAX_CONNECTIONS,
            backoff_base: BACKOFF_BASE,
            backoff_max: Duration::from_secs(4),
            per_node_name: None,
            deciding_wait: operator::dispatch::DEFAULT_DECIDING_WAIT,
        }
    }

    /// Waits until every agent answers List, with a pool of its own that retries quickly.
    async fn wait_ready(&mut self) {
        let mut cfg = self.pool_config(self.tls());
        cfg.backoff_base = Duration::from_millis(1);
        cfg.backoff_max = Duration::from_millis(1);
        let probe = AgentPool::new(cfg);
        let deadline = Instant::now() + Duration::from_secs(15);
        for agent in &mut self.agents {
            loop {
                if let Ok(Some(status)) = agent.child.try_wait() {
                    panic!("agent {} exited ({status}):\n{}", agent.node.name, log(&agent.log));
                }
                if probe.list(&agent.node).await.is_ok() {
                    break;
                }
                assert!(Instant::now() < deadline, "agent {} never answered:\n{}", agent.node.name, log(&agent.log));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            let _ = agent.child.kill();
            let _ = agent.child.wait();
            // Unpinning the links detaches and frees whatever a failed test left behind.
            let _ = std::fs::remove_dir_all(&agent.root);
        }
    }
}

fn log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// An ApplyRequest as the operator builds it, for `tracepoint_openat.o`.
fn apply_request(uid: &str, programs_yaml: &str) -> v1::ApplyRequest {
    let bytes = std::fs::read(workspace().join("examples/bpf/build/tracepoint_openat.o")).expect("example object");
    let spec: BpfProgramSpec =
        serde_yaml::from_str(&format!("bytecode: {{path: /unused.o}}\nprograms:\n{programs_yaml}")).unwrap();
    let revision = Revision::compute(&spec, BytecodeIdentity::Bytes(&bytes));
    v1::ApplyRequest {
        owner: Some(owner(uid)),
        revision: revision.as_str().into(),
        bytecode: Some(v1::apply_request::Bytecode::Elf(bytes.into())),
        programs: spec.programs.iter().map(proto::program_to_wire).collect(),
        global_data: Default::default(),
        ..Default::default()
    }
}

fn owner(uid: &str) -> v1::Owner {
    v1::Owner { uid: uid.into(), name: format!("{uid}-name") }
}

/// The u64 at key 0 of a pinned array map, read by bpftool.
fn read_counter(pin: &str) -> u64 {
    let out = sh(&format!("bpftool -j map lookup pinned {pin} key 0 0 0 0"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    let bytes: Vec<u8> = v["value"]
        .as_array()
        .unwrap_or_else(|| panic!("no value in {out}"))
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect();
    u64::from_le_bytes(bytes[..8].try_into().unwrap())
}

fn kernel_has_program(id: u32) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// ESTABLISHED TCP connections from this network namespace to `ip:port` (/proc/net/tcp).
fn established_to(ip: &str, port: u16) -> usize {
    let want: std::net::Ipv4Addr = ip.parse().unwrap();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some((addr, p)) = fields.get(2).and_then(|r| r.split_once(':')) else { return false };
            // The kernel prints the network-order address as a native-endian number.
            let addr = u32::from_str_radix(addr, 16).map(|a| std::net::Ipv4Addr::from(a.to_ne_bytes()));
            fields.get(3) == Some(&"01") && addr == Ok(want) && u16::from_str_radix(p, 16) == Ok(port)
        })
        .count()
}

/// Accepts TCP on `ip:port` and holds every connection without a byte of TLS.
async fn black_hole(ip: &str, port: u16) -> Arc<AtomicUsize> {
    let listener = tokio::net::TcpListener::bind((ip, port)).await.expect("bind black hole");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(conn);
        }
    });
    accepted
}

fn node(name: &str, ip: &str) -> NodeAddr {
    NodeAddr { name: name.into(), ip: ip.parse::<IpAddr>().unwrap() }
}

/// The tests of this file start fleets on the same loopback addresses: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fan_out_to_real_agents() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start();
    fleet.wait_ready().await;
    let pool = fleet.pool();
    let port = fleet.port;
    let uid = format!("dispatch-{}", std::process::id());

    // (1) Apply everywhere: pinned under each agent's root, counting openat; again: no change.
    let req = apply_request(&uid, TRACEPOINT);
    let apply_all = |req: v1::ApplyRequest| {
        pool.fan_out(fleet.nodes(), move |pool, node| {
            let req = req.clone();
            async move { pool.apply_wire(&node, req).await }
        })
    };
    let results = apply_all(req.clone()).await;
    assert_eq!(results.len(), 3);
    let mut program_ids = Vec::new();
    let mut counters = Vec::new();
    for ((node, result), agent) in results.iter().zip(&fleet.agents) {
        assert_eq!(node, &agent.node, "results come in the order of the nodes");
        let resp = result.as_ref().unwrap_or_else(|e| {
            // E2BIG: the kernel takes at most 64 programs per tracepoint, across all processes.
            let hint = if e.to_string().contains("os error 7") { " (tracepoint full: another test?)" } else { "" };
            panic!("{}: {e}{hint}\n{}", node.name, log(&agent.log))
        });
        assert!(resp.changed, "{}: first apply must change something", node.name);
        let state = resp.state.as_ref().expect("state");
        assert_eq!(state.revision, req.revision);
        assert_eq!(state.health, v1::Health::Healthy as i32, "{}: {}", node.name, state.last_error);
        assert_eq!(state.attached.len(), 1);
        assert!(state.attached[0].program_id > 0 && kernel_has_program(state.attached[0].program_id));
        program_ids.push(state.attached[0].program_id);
        let map = state.maps.iter().find(|m| m.name == "openat_count").expect("openat_count pinned");
        assert!(map.pin_path.starts_with(agent.root.join(&uid).to_str().unwrap()), "{}", map.pin_path);
        assert!(Path::new(&map.pin_path).exists(), "{} missing", map.pin_path);
        assert!(agent.root.join(&uid).join(&req.revision).join("progs").is_dir(), "{}: no progs pinned", node.name);
        counters.push(map.pin_path.clone());
    }
    let before: Vec<u64> = counters.iter().map(|c| read_counter(c)).collect();
    for _ in 0..20 {
        std::fs::File::open("/proc/self/stat").unwrap();
    }
    for (pin, before) in counters.iter().zip(before) {
        let after = read_counter(pin);
        assert!(after >= before + 20, "{pin}: openat counted {before} -> {after}");
    }
    for (node, result) in apply_all(req.clone()).await {
        let resp = result.unwrap_or_else(|e| panic!("{}: {e}", node.name));
        assert!(!resp.changed, "{}: the same revision again must be a no-op", node.name);
    }
    let lists = pool.fan_out(fleet.nodes(), |pool, node| async move { pool.list(&node).await }).await;
    for (node, result) in lists {
        let list = result.unwrap_or_else(|e| panic!("{}: {e}", node.name));
        let state = list.programs.iter().find(|o| o.owner_uid == uid).expect("owner listed");
        assert_eq!((state.revision.as_str(), state.health), (req.revision.as_str(), crds::Health::Healthy));
    }

    // (2) A dead node and a black hole: unreachable within the timeouts, and the healthy
    // nodes answer without waiting for them.
    let accepted = black_hole(BLACK_HOLE_IP, port).await;
    let dead = node("node-dead", DEAD_IP);
    let hole = node("node-hole", BLACK_HOLE_IP);
    let mut nodes = vec![hole.clone(), dead.clone()];
    nodes.extend(fleet.nodes());
    let started = Instant::now();
    let results = pool
        .fan_out(nodes, move |pool, node| async move {
            let result = pool.list(&node).await;
            Ok::<_, DispatchError>((result, started.elapsed()))
        })
        .await;
    let total = started.elapsed();
    assert!(total < CALL_TIMEOUT + MARGIN, "fan-out took {total:?}");
    for (node, result) in results {
        let (result, took) = result.unwrap();
        match node.name.as_str() {
            // Told apart by kind: the BpfNode's AgentReachable reason.
            "node-dead" | "node-hole" => {
                let want = if node.name == "node-dead" { Failure::ConnectionRefused } else { Failure::Timeout };
                assert!(
                    matches!(&result, Err(DispatchError::Unreachable(u)) if u.kind == want),
                    "{}: {result:?}",
                    node.name
                );
            }
            _ => {
                assert!(result.is_ok(), "{}: {result:?}", node.name);
                assert!(took < CONNECT_TIMEOUT, "{} waited {took:?} for the unreachable nodes", node.name);
            }
        }
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the black hole was dialled once");
    // Right away: backing off, without dialling. (The dead node failed at once, so its first
    // window may have passed while the black hole was awaited: fail it once more first.)
    let _ = pool.list(&dead).await;
    for n in [&hole, &dead] {
        match pool.list(n).await {
            Err(DispatchError::BackingOff(left, unreached)) => {
                assert!(left <= BACKOFF_BASE.mul_f64(1.2) * 2, "{left:?}");
                let message = &unreached.message;
                assert!(message.contains(&n.ip.to_string()), "the message names the address: {message}");
                assert_ne!(unreached.kind, Failure::TransportError, "the kind of the failure that started it");
            }
            other => panic!("{}: expected BackingOff, got {other:?}", n.name),
        }
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "a node backing off was dialled");
    assert!(matches!(pool.list(&dead).await.unwrap_err().to_outcome(), NodeOutcome::Unreachable { .. }));
    // Once the window has passed, it is dialled again, and the next window is longer.
    tokio::time::sleep(pool.backoff_of(&hole.name).expect("backing off") + Duration::from_millis(20)).await;
    assert!(matches!(pool.list(&hole).await, Err(DispatchError::Unreachable(_))));
    assert!(accepted.load(Ordering::SeqCst) >= 2, "the black hole was not dialled again");
    let left = pool.backoff_of(&hole.name).expect("backing off again");
    assert!(left > BACKOFF_BASE && left <= (BACKOFF_BASE * 2).mul_f64(1.2), "second window: {left:?}");

    // (2b) The concurrency bound: with one permit, a healthy node waits for the black hole.
    let mut cfg = fleet.pool_config(fleet.tls());
    cfg.max_concurrency = 1;
    let single = AgentPool::new(cfg);
    let started = Instant::now();
    let results = single
        .fan_out(vec![hole.clone(), fleet.agents[0].node.clone()], move |pool, node| async move {
            let result = pool.list(&node).await;
            Ok::<_, DispatchError>((result.is_ok(), started.elapsed()))
        })
        .await;
    let (hole_ok, _) = results[0].1.as_ref().unwrap();
    let (healthy_ok, healthy_took) = results[1].1.as_ref().unwrap();
    assert!(!hole_ok && *healthy_ok);
    assert!(*healthy_took >= CONNECT_TIMEOUT - Duration::from_millis(50), "no bound: {healthy_took:?}");
    drop(single);

    // (3) An agent's refusal is an Agent error with its reason, and no reason to back off.
    let a = fleet.agents[0].node.clone();
    let bad = apply_request(
        &format!("{uid}-bad"),
        "  - {name: no_such_function, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat]}}\n",
    );
    let err = pool.apply_wire(&a, bad).await.expect_err("a missing function must fail");
    match &err {
        DispatchError::Agent { code, reason, message, .. } => {
            assert_eq!(
                (*code, reason.to_string().as_str()),
                (tonic::Code::InvalidArgument, "ProgramNotFound"),
                "{err}"
            );
            assert!(message.contains("no_such_function"), "{message}");
        }
        other => panic!("expected an Agent error, got {other:?}"),
    }
    match err.to_outcome() {
        NodeOutcome::Failed { reason, program, .. } => {
            assert_eq!(reason.to_string(), "ProgramNotFound");
            assert!(program.is_none_or(|p| p == "no_such_function"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.backoff_of(&a.name), None);

    // (4) Sequential calls reuse one connection.
    for _ in 0..25 {
        pool.list(&a).await.expect("list");
    }
    pool.apply_wire(&a, req.clone()).await.expect("apply again");
    assert_eq!(established_to(AGENT_IPS[0], port), 1, "calls to one agent must share one connection");

    // (5) A client certificate from a foreign CA is refused: unreachable, in bounded time.
    let p = &fleet.pki;
    let foreign =
        AgentTls::from_files([&p.foreign_client_cert, &p.foreign_client_key, &p.ca_cert], "bpfleet-agent").unwrap();
    let foreign_pool = AgentPool::new(fleet.pool_config(foreign));
    let started = Instant::now();
    let result = foreign_pool.list(&a).await;
    // (With TLS 1.3 the agent refuses the client's certificate after the client finished
    // its handshake: the client sees a closed connection, a TransportError, or the alert.)
    assert!(matches!(result, Err(DispatchError::Unreachable(_))), "foreign client: {result:?}");
    assert!(started.elapsed() < CALL_TIMEOUT + MARGIN);
    pool.list(&a).await.expect("the operator's own certificate still works");

    // (6) Remove everywhere: pins gone, programs gone from the kernel; again: nothing to do.
    let remove_all = || {
        let uid = uid.clone();
        pool.fan_out(fleet.nodes(), move |pool, node| {
            let owner = owner(&uid);
            async move { pool.remove_wire(&node, owner, 0).await }
        })
    };
    for (node, result) in remove_all().await {
        assert!(result.unwrap_or_else(|e| panic!("{}: {e}", node.name)), "{}: nothing removed", node.name);
    }
    fleet.assert_nothing_pinned();
    let deadline = Instant::now() + Duration::from_secs(3);
    for id in program_ids {
        while kernel_has_program(id) {
            assert!(Instant::now() < deadline, "program {id} still loaded after Remove");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for (node, result) in remove_all().await {
        assert!(!result.unwrap_or_else(|e| panic!("{}: {e}", node.name)), "{}: removed twice", node.name);
    }
}

/// The next event of a Watch stream about `uid`, within 10 s.
async fn next_event_for(stream: &mut operator::dispatch::AgentWatch, uid: &str) -> AgentChange {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no event about {uid} within 10 s"))
            .expect("stream broke")
            .expect("stream ended");
        if ev.program.owner_uid == uid {
            return ev;
        }
    }
}

/// The operator follows each agent's Watch stream: applies, a link removed by hand,
/// removals and the agent dying all arrive without polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_streams_report_changes_and_a_dead_agent() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start();
    fleet.wait_ready().await;
    let pool = fleet.pool();
    let node = fleet.nodes()[0].clone();
    let uid = format!("watch-{}", std::process::id());
    let mut stream = pool.watch(&node).await.expect("watch");

    let applied = pool.apply_wire(&node, apply_request(&uid, TRACEPOINT)).await.expect("apply");
    let ev = next_event_for(&mut stream, &uid).await;
    assert_eq!(ev.kind, ChangeKind::Updated);
    assert_eq!(ev.program.health, crds::Health::Healthy);

    // Someone removes the link pin on the node: the agent reports it Degraded.
    let rev = &applied.state.as_ref().unwrap().revision;
    let link = fleet.agents[0].root.join(&uid).join(rev).join("links/count_openat/0");
    std::fs::remove_file(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
    let ev = next_event_for(&mut stream, &uid).await;
    assert_eq!(ev.program.health, crds::Health::Degraded, "{ev:?}");
    assert!(ev.reason.contains("removed by someone else"), "{}", ev.reason);

    assert!(pool.remove_wire(&node, owner(&uid), 0).await.expect("remove"));
    let ev = next_event_for(&mut stream, &uid).await;
    assert_eq!(ev.kind, ChangeKind::Removed);

    // The agent dies: the stream ends at once, not at the next resync.
    let _ = fleet.agents[0].child.kill();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream of a killed agent must end within 5 s");
}

/// cert-manager renews the operator's certificate in place: the files change, the
/// operator notices and new connections use them, no restart. Here the files start as
/// a certificate the agents refuse (another CA) and are then replaced by a good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_client_certificates_are_used_without_a_restart() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start();
    fleet.wait_ready().await;
    let dir = tempfile::tempdir().unwrap();
    let files = operator::tls::ClientTlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        ca: dir.path().join("ca.crt"),
        server_name: "bpfleet-agent".into(),
    };
    std::fs::copy(&fleet.pki.foreign_client_cert, &files.cert).unwrap();
    std::fs::copy(&fleet.pki.foreign_client_key, &files.key).unwrap();
    std::fs::copy(&fleet.pki.ca_cert, &files.ca).unwrap();
    let loaded = files.load().expect("the first files are valid PEM");
    let mut cfg = fleet.pool_config(loaded.config);
    cfg.backoff_base = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(200);
    let pool = AgentPool::new(cfg);
    let node = fleet.agents[0].node.clone();
    let refused = pool.list(&node).await.expect_err("a certificate from another CA is refused");
    assert!(refused.is_unreachable(), "{refused}");

    let reload = tokio::spawn(operator::tls::reload_on_change(
        files.clone(),
        pool.clone(),
        loaded.fingerprint,
        Duration::from_millis(100),
    ));
    // A half-written renewal (empty key) is ignored, not fatal.
    std::fs::write(&files.key, b"").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::copy(&fleet.pki.client_cert, &files.cert).unwrap();
    std::fs::copy(&fleet.pki.client_key, &files.key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // An answer at all passed the pool's check that it came from this node.
    loop {
        match pool.list(&node).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "still refused after the files changed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reload.abort();
}

/// The attacker: node "node-x" sets its InternalIP to node-a's. Every call the operator
/// makes for node-x reaches node-a's agent, which refuses it (`WrongNode`): node-x is
/// unreachable, naming both nodes, and node-a runs exactly what it ran before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_address_leading_to_another_nodes_agent_changes_nothing_there() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start();
    fleet.wait_ready().await;
    // A pool per call, so the impostor's backoff does not hide the agent's refusal.
    let pool = || fleet.pool();
    let victim = fleet.nodes()[0].clone();
    let uid = format!("victim-{}", std::process::id());
    pool().apply_wire(&victim, apply_request(&uid, TRACEPOINT)).await.expect("apply on the victim");
    let impostor = NodeAddr { name: "node-x".into(), ip: victim.ip };
    let refused = |e: DispatchError| {
        let text = e.to_string();
        assert!(e.is_unreachable() && text.contains("\"node-x\"") && text.contains("\"node-a\""), "{text}");
        assert_eq!(e.unreached().map(|u| u.kind), Some(Failure::IdentityMismatch), "the agent said WrongNode: {text}");
    };
    let intruder = format!("intruder-{}", std::process::id());
    refused(pool().apply_wire(&impostor, apply_request(&intruder, TRACEPOINT)).await.expect_err("Apply for node-x"));
    refused(pool().remove_wire(&impostor, owner(&uid), 0).await.expect_err("Remove for node-x"));
    refused(pool().list(&impostor).await.expect_err("List for node-x"));
    refused(pool().watch(&impostor).await.map(|_| ()).expect_err("Watch for node-x"));
    let listed = pool().list(&victim).await.expect("the victim's own List");
    let uids: Vec<&str> = listed.programs.iter().map(|s| s.owner_uid.as_str()).collect();
    assert_eq!(uids, [uid.as_str()], "the victim runs what it ran, and nothing of node-x");
    assert!(pool().remove_wire(&victim, owner(&uid), 0).await.expect("cleanup"));
}

/// Applies asked of one agent at once (reconciles of several programs) go in one
/// ApplyBatch: each is carried out as an Apply would be (its programs loaded and counting,
/// checked in the kernel), a bad one fails alone with its own reason, and each asker gets
/// its own answer. Removed after: nothing left in bpffs or the kernel.
// One thread: the node's sender runs once all four wait (the agents are processes).
#[tokio::test(flavor = "current_thread")]
async fn applies_asked_together_go_in_one_batch_and_fail_alone() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start();
    fleet.wait_ready().await;
    let pool = fleet.pool();
    let node = fleet.nodes()[0].clone();
    let root = fleet.agents[0].root.clone();
    let uid = |i: usize| format!("batch-{}-{i}", std::process::id());
    let bad = "  - {name: no_such_function, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat]}}\n";
    let orders: Vec<operator::dispatch::ApplyOrder> = (0..4)
        .map(|i| {
            let programs = if i == 2 { bad } else { TRACEPOINT };
            operator::dispatch::ApplyOrder::from_wire(apply_request(&uid(i), programs))
        })
        .collect();
    let results = futures::future::join_all(orders.iter().map(|o| pool.apply(&node, o))).await;
    assert_eq!(pool.apply_calls(), 1, "four Applies waiting together make one call");

    let mut ids = Vec::new();
    for (i, result) in results.iter().enumerate() {
        if i == 2 {
            match result {
                Err(DispatchError::Agent { reason, message, .. }) => {
                    assert_eq!(reason.to_string(), "ProgramNotFound", "{message}");
                    assert!(message.contains("no_such_function"), "{message}");
                }
                other => panic!("the bad Apply: {other:?}"),
            }
            assert!(!root.join(uid(2)).exists(), "the failed Apply left {}", root.join(uid(2)).display());
            continue;
        }
        let state = result.as_ref().unwrap_or_else(|e| panic!("Apply {i}: {e}\n{}", log(&fleet.agents[0].log)));
        assert_eq!(state.owner_uid, uid(i), "each asker gets its own owner's answer");
        assert_eq!(state.health, crds::Health::Healthy, "{:?}", state.last_error);
        let id = state.attached.first().map(|p| p.program_id).expect("a program id");
        assert!(kernel_has_program(id), "program {id} of Apply {i} is not in the kernel");
        ids.push(id);
        let pin = &state.maps.iter().find(|m| m.name == "openat_count").expect("openat_count pinned").pin_path;
        assert!(pin.starts_with(root.join(uid(i)).to_str().unwrap()), "{pin}");
        let before = read_counter(pin);
        let deadline = Instant::now() + Duration::from_secs(3);
        while read_counter(pin) <= before {
            assert!(Instant::now() < deadline, "Apply {i}'s program does not count openat");
            let _ = std::fs::File::open("/etc/hostname");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(pool.backoff_of(&node.name), None, "an agent's refusal of one Apply is no reason to back off");

    for i in [0, 1, 3] {
        assert!(pool.remove_wire(&node, owner(&uid(i)), 0).await.expect("remove"));
    }
    let left: Vec<_> = std::fs::read_dir(&root).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "pins left: {left:?}");
    let deadline = Instant::now() + Duration::from_secs(3);
    for id in ids {
        while kernel_has_program(id) {
            assert!(Instant::now() < deadline, "program {id} still loaded after Remove");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A fan-out of one order to every node (`apply_all`) holds no future per node: the
/// fan-outs of three programs asked together reach each agent in one call, each node's
/// answer comes back with its node (programs loaded, checked in the kernel), and a node
/// whose agent is absent answers unreachable without holding up the others. Removed
/// after: nothing left in bpffs.
// One thread: the senders run once all three fan-outs wait (the agents are processes).
#[tokio::test(flavor = "current_thread")]
async fn fan_outs_asked_together_reach_each_node_in_one_call() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start();
    fleet.wait_ready().await;
    let pool = fleet.pool();
    let reachable = fleet.nodes();
    let absent = NodeAddr { name: "node-absent".into(), ip: DEAD_IP.parse().expect("ip") };
    let mut nodes = reachable.clone();
    nodes.push(absent.clone());
    let uid = |i: usize| format!("fan-out-{}-{i}", std::process::id());
    let orders: Vec<operator::dispatch::ApplyOrder> =
        (0..3).map(|i| operator::dispatch::ApplyOrder::from_wire(apply_request(&uid(i), TRACEPOINT))).collect();
    let answers: Vec<Got> = orders.iter().map(|_| Got::default()).collect();
    let fan_outs = orders.iter().zip(&answers).map(|(order, got)| {
        let got = got.clone();
        pool.apply_all(nodes.clone(), order, move |n, r, _took| got.lock().expect("lock").push((n.name.clone(), r)))
    });
    futures::future::join_all(fan_outs).await;
    assert_eq!(pool.apply_calls(), nodes.len() as u64, "one call per node for the three programs");
    let answers: Vec<_> = answers.iter().map(|got| std::mem::take(&mut *got.lock().expect("lock"))).collect();

    for (i, got) in answers.iter().enumerate() {
        let mut names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        let mut want: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        want.sort_unstable();
        assert_eq!(names, want, "fan-out {i} answers every node once");
        for (node, result) in got {
            if *node == absent.name {
                let e = result.as_ref().expect_err("no agent there");
                assert!(e.is_unreachable(), "{e}");
                continue;
            }
            let state = result.as_ref().unwrap_or_else(|e| panic!("{node}, Apply {i}: {e}"));
            assert_eq!(state.owner_uid, uid(i), "{node} answers for its own owner");
            assert_eq!(state.health, crds::Health::Healthy, "{:?}", state.last_error);
            let id = state.attached.first().map(|p| p.program_id).expect("a program id");
            assert!(kernel_has_program(id), "program {id} of Apply {i} on {node} is not in the kernel");
        }
    }

    for node in &reachable {
        for i in 0..orders.len() {
            assert!(pool.remove_wire(node, owner(&uid(i)), 0).await.expect("remove"));
        }
    }
    fleet.assert_nothing_pinned();
}

/// A fan-out's answers are recorded by the nodes' senders as they come, not queued for the
/// fan-out's own task: with that task never polled after it asked (as a reconcile's is
/// while the controller's thread decides other programs), every node's answer still
/// reaches the callback, the programs are in the kernel, and the fan-out then ends at
/// once. Removed after: nothing left in bpffs.
#[tokio::test(flavor = "current_thread")]
async fn fan_out_answers_are_recorded_while_its_task_waits() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start();
    fleet.wait_ready().await;
    let pool = fleet.pool();
    let nodes = fleet.nodes();
    let uid = format!("unpolled-{}", std::process::id());
    let order = operator::dispatch::ApplyOrder::from_wire(apply_request(&uid, TRACEPOINT));
    let got = Got::default();
    let record = got.clone();
    let mut fan_out = Box::pin(
        pool.apply_all(nodes.clone(), &order, move |n, r, _| record.lock().expect("lock").push((n.name.clone(), r))),
    );
    // Polled once: the Applies are in the outboxes and their senders spawned.
    assert!(futures::poll!(fan_out.as_mut()).is_pending(), "the fan-out waits for its answers");
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.lock().expect("lock").len() < nodes.len() {
        assert!(Instant::now() < deadline, "answers not recorded without the fan-out polled: {:?}", got.lock());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(futures::poll!(fan_out.as_mut()).is_ready(), "every Apply answered: the fan-out ends");
    for (node, result) in got.lock().expect("lock").iter() {
        let state = result.as_ref().unwrap_or_else(|e| panic!("{node}: {e}"));
        let id = state.attached.first().map(|p| p.program_id).expect("a program id");
        assert!(kernel_has_program(id), "program {id} on {node} is not in the kernel");
    }
    for node in &nodes {
        assert!(pool.remove_wire(node, owner(&uid), 0).await.expect("remove"));
    }
    fleet.assert_nothing_pinned();
}

/// While a reconcile still decides (it holds `AgentPool::deciding`), nodes are not called:
/// the Applies of the programs that decided meanwhile go with it, each node reached in one
/// call over one connection, once the last decider has put its Applies in, in a fleet past
/// the connection budget. Past the wait's bound, what waits is sent anyway; within the
/// budget nothing waits. Checked in the kernel; removed after: nothing left in bpffs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_wait_for_the_programs_still_deciding() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start();
    fleet.wait_ready().await;
    let mut cfg = fleet.pool_config(fleet.tls());
    cfg.deciding_wait = Duration::from_secs(2);
    // A fleet past the connection budget (within it, nothing waits: checked last).
    (cfg.max_concurrency, cfg.max_connections) = (1, 1);
    let pool = AgentPool::new(cfg);
    let nodes = fleet.nodes();
    assert!(nodes.len() > 1, "a fleet larger than one connection");
    pool.set_fleet(nodes.len());
    let uid = |i: usize| format!("deciding-{}-{i}", std::process::id());
    let order = |i: usize| operator::dispatch::ApplyOrder::from_wire(apply_request(&uid(i), TRACEPOINT));
    let record = |got: &Got| {
        let got = got.clone();
        move |n: &NodeAddr, r, _| got.lock().expect("lock").push((n.name.clone(), r))
    };
    let (first, second) = (Got::default(), Got::default());

    let still_deciding = pool.deciding();
    let deciding_first = pool.deciding();
    let fan_out_first = pool.apply_all(nodes.clone(), &order(0), record(&first));
    drop(deciding_first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((pool.dials(), pool.apply_calls()), (0, 0), "no node called while a program decides");
    let fan_out_second = pool.apply_all(nodes.clone(), &order(1), record(&second));
    drop(still_deciding);
    futures::join!(fan_out_first, fan_out_second);
    assert_eq!(pool.apply_calls(), nodes.len() as u64, "one call per node carries both programs");
    assert_eq!(pool.dials(), nodes.len() as u64, "one connection per node");
    for (i, got) in [&first, &second].into_iter().enumerate() {
        let got = got.lock().expect("lock");
        assert_eq!(got.len(), nodes.len(), "program {i}: every node answers");
        for (node, result) in got.iter() {
            let state = result.as_ref().unwrap_or_else(|e| panic!("{node}, program {i}: {e}"));
            let id = state.attached.first().map(|p| p.program_id).expect("a program id");
            assert!(kernel_has_program(id), "program {id} of {i} on {node} is not in the kernel");
        }
    }

    // A decider that never finishes holds nothing up past the bound.
    let _forever = pool.deciding();
    let third = Got::default();
    let started = Instant::now();
    pool.apply_all(nodes.clone(), &order(2), record(&third)).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2), "sent after {waited:?}, before the bound");
    assert!(third.lock().expect("lock").iter().all(|(_, r)| r.is_ok()), "{:?}", third.lock());

    // Within the budget connections stay open: nothing waits for a decider.
    let within = fleet.pool();
    let _deciding = within.deciding();
    let fourth = Got::default();
    let started = Instant::now();
    within.apply_all(nodes.clone(), &order(3), record(&fourth)).await;
    assert!(started.elapsed() < Duration::from_secs(2), "waited {:?} within the budget", started.elapsed());
    assert!(fourth.lock().expect("lock").iter().all(|(_, r)| r.is_ok()), "{:?}", fourth.lock());

    for node in &nodes {
        for i in 0..4 {
            assert!(pool.remove_wire(node, owner(&uid(i)), 0).await.expect("remove"));
        }
    }
    fleet.assert_nothing_pinned();
}
