//! Node paths played by an attacker who may write a BpfProgram (issue 21, point 6): the
//! agent binary over gRPC is sent `bytecode.path` and uprobe targets that would block a
//! reader forever (`trace_pipe`, a FIFO without a writer), that lie outside the allowed
//! prefixes, or that sit on a file system that hangs. Each is refused in time with one
//! message that tells nothing about the file, while `/healthz` keeps answering and
//! ordinary Applies keep working.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::process::*;
use common::*;
use proto::v1;
use proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

const TRACEPOINT: &str =
    "  - {name: count_openat, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat]}}\n";
const TRACE_PIPE: &str = "/sys/kernel/tracing/trace_pipe";

/// The one refusal for a node path that fails any check.
fn uniform(noun: &str, path: &str) -> String {
    format!("{noun} {path} on this node is missing, not a regular file, unreadable, or outside the allowed paths")
}

fn reason(e: &tonic::Status) -> &str {
    e.metadata().get("bpfleet-reason").and_then(|v| v.to_str().ok()).unwrap_or_default()
}

fn by_path(uid: &str, path: &str) -> v1::ApplyRequest {
    let mut req = apply_request(uid, TRACEPOINT, "tracepoint_openat.o");
    req.bytecode = Some(v1::apply_request::Bytecode::Path(path.into()));
    req
}

fn uprobe_on(uid: &str, target: &str) -> v1::ApplyRequest {
    apply_request(
        uid,
        &format!("  - {{name: count_calls, type: Uprobe, uprobe: {{target: {target}, symbol: main}}}}\n"),
        "uprobe_counter.o",
    )
}

/// Apply `req`; it must be refused within `within` with `reason` and the uniform message
/// for `noun` and `path`, and nothing more. Returns how long the refusal took.
async fn refused(
    client: &mut AgentClient<Channel>,
    req: v1::ApplyRequest,
    want: &str,
    noun: &str,
    path: &str,
) -> Duration {
    let started = Instant::now();
    let e = client.apply(req).await.expect_err("must be refused");
    let took = started.elapsed();
    assert_eq!(reason(&e), want, "{e:?}");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().starts_with(&uniform(noun, path)), "{}", e.message());
    assert!(e.message().contains("--allowed-path-prefix"), "names what to look at: {}", e.message());
    for detail in ["os error", "bytes", "sha256", "tracefs", "FIFO", "directory"] {
        assert!(!e.message().contains(detail), "{detail:?} tells about the file: {}", e.message());
    }
    took
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo {}", path.display());
}

/// Polls the agent's `/healthz` every 20 ms on a thread of its own and keeps the
/// slowest answer, until dropped.
struct HealthProbe {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, Duration, Vec<String>)>>,
}

impl HealthProbe {
    /// Once `/healthz` first answers (within 15 s).
    fn start(port: u16) -> Self {
        let up = Instant::now() + Duration::from_secs(15);
        while healthz(port) != Some(200) {
            assert!(Instant::now() < up, "/healthz never answered on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut n, mut slowest, mut bad) = (0, Duration::ZERO, Vec::new());
            while !flag.load(Ordering::SeqCst) {
                let started = Instant::now();
                match healthz(port) {
                    Some(200) => {}
                    other => bad.push(format!("{other:?} after {:?}", started.elapsed())),
                }
                slowest = slowest.max(started.elapsed());
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (n, slowest, bad)
        });
        Self { stop, thread: Some(thread) }
    }

    /// (answers, slowest answer); fails on any answer other than 200.
    fn finish(mut self) -> (usize, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        let (n, slowest, bad) = self.thread.take().unwrap().join().unwrap();
        assert!(bad.is_empty(), "/healthz failed: {bad:?}");
        (n, slowest)
    }
}

impl Drop for HealthProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The status code of GET /healthz, or None when it does not answer within 2 s.
fn healthz(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.split_whitespace().nth(1)?.parse().ok()
}

fn spawn_with_metrics(dirs: &Dirs, extra: &[&str], env: &[(&str, &str)]) -> (AgentProc, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--metrics-listen", listen.as_str()];
    args.extend_from_slice(extra);
    (AgentProc::spawn_tls_with(dirs, &args, env), port)
}

/// `trace_pipe` and a FIFO without a writer, as bytecode and as uprobe targets, alone
/// and many at once: refused within a second each with the message a missing file
/// gets; `/healthz` never waits and Applies that name real files still succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_pipe_and_fifos_are_refused_without_stalling_healthz() {
    let dirs = Dirs::new("paths");
    assert!(Path::new(TRACE_PIPE).exists(), "tracefs is not mounted at /sys/kernel/tracing");
    let fifo = dirs.tmp.path().join("no-writer.fifo");
    mkfifo(&fifo);
    let fifo = fifo.display().to_string();
    let (mut agent, metrics) = spawn_with_metrics(&dirs, &[], &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let probe = HealthProbe::start(metrics);

    let mut slowest = Duration::ZERO;
    for (i, path) in [TRACE_PIPE, fifo.as_str()].into_iter().enumerate() {
        let took =
            refused(&mut client, by_path(&format!("pipe-{i}"), path), "BytecodeNotFound", "bytecode path", path).await;
        eprintln!("bytecode path {path}: refused in {took:?}");
        slowest = slowest.max(took);
        let took =
            refused(&mut client, uprobe_on(&format!("probe-{i}"), path), "TargetNotFound", "uprobe target", path).await;
        eprintln!("uprobe target {path}: refused in {took:?}");
        slowest = slowest.max(took);
    }
    // A missing file and a directory read exactly alike.
    let dir = dirs.tmp.path().display().to_string();
    for path in ["/nonexistent/prog.o", dir.as_str()] {
        slowest =
            slowest.max(refused(&mut client, by_path("other", path), "BytecodeNotFound", "bytecode path", path).await);
    }
    assert!(slowest < Duration::from_secs(1), "a refusal took {slowest:?}");

    // What took every worker before: retries, many at once (ten rounds of 32).
    let started = Instant::now();
    for round in 0..10 {
        let storm: Vec<_> = (0..32)
            .map(|i| {
                let mut c = client.clone();
                let path = if i % 2 == 0 { TRACE_PIPE.to_string() } else { fifo.clone() };
                tokio::spawn(async move { c.apply(by_path(&format!("storm-{round}-{i}"), &path)).await })
            })
            .collect();
        for call in storm {
            let e = call.await.unwrap().expect_err("refused");
            assert_eq!(reason(&e), "BytecodeNotFound", "{e:?}");
        }
    }
    let storm_took = started.elapsed();
    eprintln!("10 rounds of 32 concurrent refusals took {storm_took:?}");
    assert!(storm_took < Duration::from_secs(5), "{storm_took:?}");

    // Meanwhile and after: real files load, by bytes and by path.
    let ok = client.apply(apply_request("fine", TRACEPOINT, "tracepoint_openat.o")).await.expect("bytes").into_inner();
    assert!(ok.changed && ok.state.unwrap().attached[0].program_id > 0);
    let real = object("tracepoint_openat.o").display().to_string();
    client.apply(by_path("fine-path", &real)).await.expect("a regular file by path");
    let (answers, slowest_health) = probe.finish();
    eprintln!("/healthz: {answers} answers, slowest {slowest_health:?}");
    assert!(answers >= 3, "only {answers} /healthz answers");
    assert!(slowest_health < Duration::from_millis(500), "/healthz took {slowest_health:?}");
    let log = agent.log();
    assert!(log.contains("tracefs pseudo file system"), "the agent's log says why: {log}");
    for uid in ["fine", "fine-path"] {
        client
            .remove(v1::RemoveRequest {
                owner: Some(v1::Owner { uid: uid.into(), name: String::new() }),
                epoch: 0,
                node_name: String::new(),
            })
            .await
            .expect("remove");
    }
}

/// With allowed prefixes (here from the environment, comma-separated), a file outside
/// them, a sibling directory sharing the prefix's spelling and a symlink from inside to
/// outside are refused exactly like a missing file; files under them load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_allowed_prefixes_read_as_missing() {
    let dirs = Dirs::new("prefix");
    let base = dirs.tmp.path();
    for d in ["bpf", "bpfx", "lib"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    let elf = object_bytes("tracepoint_openat.o");
    for f in ["bpf/ok.o", "bpfx/sibling.o", "outside.o"] {
        std::fs::write(base.join(f), &elf).unwrap();
    }
    std::os::unix::fs::symlink(base.join("outside.o"), base.join("bpf/escape.o")).unwrap();
    let s = |p: PathBuf| p.display().to_string();
    let allowed = format!("{},{}", s(base.join("bpf")), s(base.join("lib")));
    let mut agent = AgentProc::spawn_tls(&dirs, &[("BPFLEET_ALLOWED_PATH_PREFIXES", &allowed)]);
    let mut client = agent.ready_client(dirs.client_tls()).await;

    client.apply(by_path("inside", &s(base.join("bpf/ok.o")))).await.expect("inside the prefix");
    let missing = s(base.join("bpf/missing.o"));
    let mut messages = Vec::new();
    for path in
        [s(base.join("outside.o")), s(base.join("bpfx/sibling.o")), s(base.join("bpf/escape.o")), missing.clone()]
    {
        refused(&mut client, by_path("outside", &path), "BytecodeNotFound", "bytecode path", &path).await;
        let e = client.apply(by_path("outside", &path)).await.unwrap_err();
        messages.push(e.message().replace(&path, "PATH"));
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "the refusals differ: {messages:?}");
    // Uprobe targets obey the same prefixes.
    let target = object("uprobe_target").display().to_string();
    refused(&mut client, uprobe_on("probe-outside", &target), "TargetNotFound", "uprobe target", &target).await;
    client
        .remove(v1::RemoveRequest {
            owner: Some(v1::Owner { uid: "inside".into(), name: String::new() }),
            epoch: 0,
            node_name: String::new(),
        })
        .await
        .expect("remove");
}

/// A file system that never answers (a test fault point holds every node-file read):
/// the Apply is refused at the deadline with words saying so, `/healthz` and Applies by
/// bytes go on meanwhile, reads stuck past the cap are refused at once, and once the
/// file system answers again paths load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_file_system_costs_the_deadline_not_the_agent() {
    let dirs = Dirs::new("hung");
    let flags = dirs.tmp.path().join("pause");
    std::fs::create_dir_all(&flags).unwrap();
    let pause = format!("node-file-read:{}", flags.display());
    let (mut agent, metrics) = spawn_with_metrics(&dirs, &[], &[("BPFLEET_PAUSE", &pause)]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let real = object("tracepoint_openat.o").display().to_string();
    let probe = HealthProbe::start(metrics);

    let cap = agent::hostfs::MAX_IN_FLIGHT;
    let started = Instant::now();
    let hung: Vec<_> = (0..cap)
        .map(|i| {
            let mut c = client.clone();
            let path = real.clone();
            tokio::spawn(async move { c.apply(by_path(&format!("hung-{i}"), &path)).await })
        })
        .collect();
    // While they hang: an Apply by bytes goes through, and one more path is refused at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    client.apply(apply_request("by-bytes", TRACEPOINT, "tracepoint_openat.o")).await.expect("bytes need no file");
    eprintln!("Apply by bytes while {cap} reads hang: {:?}", t.elapsed());
    let t = Instant::now();
    let e = client.apply(by_path("one-more", &real)).await.expect_err("over the cap");
    let over_cap = t.elapsed();
    eprintln!("read over the cap refused in {over_cap:?}: {}", e.message());
    assert!(e.message().contains("earlier reads of node files have not finished"), "{}", e.message());
    assert!(over_cap < Duration::from_secs(1), "{over_cap:?}");
    for call in hung {
        let e = call.await.unwrap().expect_err("the read never finished");
        assert_eq!(reason(&e), "BytecodeNotFound", "{e:?}");
        assert!(e.message().contains("within 5 s") && e.message().contains(&real), "{}", e.message());
    }
    let took = started.elapsed();
    eprintln!("{cap} hung reads refused after {took:?}");
    assert!(took >= agent::hostfs::DEADLINE && took < agent::hostfs::DEADLINE + Duration::from_secs(2), "{took:?}");
    let (answers, slowest) = probe.finish();
    eprintln!("/healthz during the hang: {answers} answers, slowest {slowest:?}");
    assert!(answers >= 20 && slowest < Duration::from_millis(500), "{answers} answers, slowest {slowest:?}");

    // The file system answers again: the held reads finish and free their slots.
    let stop = Arc::new(AtomicBool::new(false));
    let unpauser = {
        let (stop, flags) = (Arc::clone(&stop), flags.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for f in std::fs::read_dir(&flags).unwrap().flatten() {
                    let _ = std::fs::remove_file(f.path());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.apply(by_path("recovered", &real)).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "paths never loaded again: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    unpauser.join().unwrap();
    for uid in ["by-bytes", "recovered"] {
        client
            .remove(v1::RemoveRequest {
                owner: Some(v1::Owner { uid: uid.into(), name: String::new() }),
                epoch: 0,
                node_name: String::new(),
            })
            .await
            .expect("remove");
    }
}

/// Standalone mode reads node paths the same way: manifests naming `trace_pipe` or a
/// FIFO are refused (logged with the uniform message) while the others run and
/// `/healthz` answers.
#[test]
fn standalone_manifests_naming_pipes_are_refused_and_the_rest_run() {
    let dirs = Dirs::new("pathsa");
    let manifests = dirs.tmp.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let fifo = dirs.tmp.path().join("no-writer.fifo");
    mkfifo(&fifo);
    let fifo = fifo.display().to_string();
    let real = object("tracepoint_openat.o").display().to_string();
    for (name, path) in [("good", real.as_str()), ("pipe", TRACE_PIPE), ("fifo", fifo.as_str())] {
        let yaml = format!(
            "apiVersion: bpfleet.dev/v1alpha1\nkind: BpfProgram\nmetadata:\n  name: {name}\nspec:\n  bytecode:\n    \
             path: {path}\n  programs:\n    - {{name: count_openat, type: Tracepoint, tracepoint: {{names: \
             [syscalls/sys_enter_openat]}}}}\n"
        );
        std::fs::write(manifests.join(format!("{name}.yaml")), yaml).unwrap();
    }
    let dir = manifests.display().to_string();
    let (agent, metrics) = spawn_with_metrics(&dirs, &["--standalone", &dir], &[]);
    let probe = HealthProbe::start(metrics);
    let deadline = Instant::now() + Duration::from_secs(15);
    let wanted = ["program=good".to_string(), uniform("bytecode path", TRACE_PIPE), uniform("bytecode path", &fifo)];
    loop {
        let log = agent.log();
        if wanted.iter().all(|w| log.contains(w.as_str())) {
            let refusals = log.lines().filter(|l| l.contains("cannot run manifest"));
            assert!(refusals.clone().all(|l| !l.contains("os error")), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "expected {wanted:?} in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Two more passes (one a second), each reading the pipes' manifests again.
    std::thread::sleep(Duration::from_millis(2500));
    let (answers, slowest) = probe.finish();
    eprintln!("standalone /healthz: {answers} answers, slowest {slowest:?}");
    assert!(answers >= 20 && slowest < Duration::from_millis(500), "{answers} answers, slowest {slowest:?}");
}
