//! Abuse: hostile and careless clients against the agent's gRPC port while the operator
//! applies programs over its kept connection. The agent must keep answering the operator
//! (an Apply under abuse within 2× its time without) and its memory must stay bounded.
//!
//! The abusers, each a loop that starts again when the agent closes its connection:
//! - **silent**: TCP connections that never say anything, spread over many loopback
//!   source addresses, and a flood of them from one address;
//! - **slow**: a TLS record header, then one byte every 200 ms (slowloris);
//! - **garbage**: 64 KiB of random bytes instead of a handshake;
//! - **anonymous**: full TLS handshakes without a client certificate;
//! - **oversized**: the operator's own identity sending Apply messages over the limit;
//! - **authenticated**: connections with the operator's identity, held open after one List.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent::tls::DEFAULT_SERVER_NAME;
use agent::tls::testpki::TestPki;
use proto::v1;
use proto::v1::agent_client::AgentClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::kernel::{self, Dirs};
use crate::owners::{self, TcBackend};
use crate::process::{AgentProc, Launch};
use crate::rng::Rng;

pub struct Config {
    pub agent_bin: PathBuf,
    pub objects: PathBuf,
    /// Applies timed in each phase (before, during and after the abuse).
    pub tries: usize,
    /// How long the abuse runs before the timed applies start.
    pub ramp: Duration,
    pub silent: usize,
    /// Silent connections from one single address (beyond its share of handshakes).
    pub flood_one_address: usize,
    pub slow: usize,
    pub garbage: usize,
    pub anonymous: usize,
    pub oversized: usize,
    pub authenticated: usize,
    /// Loopback source addresses the silent and slow clients spread over (127.0.0.2…).
    pub source_addresses: u8,
}

impl Config {
    /// What CI runs: the same abusers, fewer of each.
    pub fn short(agent_bin: PathBuf, objects: PathBuf) -> Self {
        Config {
            tries: 20,
            ramp: Duration::from_secs(2),
            silent: 200,
            flood_one_address: 50,
            slow: 40,
            garbage: 2,
            anonymous: 2,
            oversized: 1,
            authenticated: 50,
            source_addresses: 10,
            ..Self::full(agent_bin, objects)
        }
    }

    /// What docs/reliability.md reports.
    pub fn full(agent_bin: PathBuf, objects: PathBuf) -> Self {
        Config {
            agent_bin,
            objects,
            tries: 40,
            ramp: Duration::from_secs(3),
            silent: 1000,
            flood_one_address: 200,
            slow: 200,
            garbage: 4,
            anonymous: 4,
            oversized: 2,
            // Below the agent's bound of 512 connections (node-agent/tests/tls.rs shows the bound).
            authenticated: 400,
            source_addresses: 40,
        }
    }

    /// Only the abusers named (`silent`, `flood`, `slow`, `garbage`, `anonymous`,
    /// `oversized`, `authenticated`), to see what each costs.
    pub fn only(mut self, names: &[&str]) -> Self {
        let keep = |name: &str, n: usize| if names.contains(&name) { n } else { 0 };
        self.silent = keep("silent", self.silent);
        self.flood_one_address = keep("flood", self.flood_one_address);
        self.slow = keep("slow", self.slow);
        self.garbage = keep("garbage", self.garbage);
        self.anonymous = keep("anonymous", self.anonymous);
        self.oversized = keep("oversized", self.oversized);
        self.authenticated = keep("authenticated", self.authenticated);
        self
    }
}

/// What the abusers did and what the agent answered them.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    /// Connections the agent closed (timed out, pushed out, refused).
    pub closed_by_agent: AtomicU64,
    pub connect_failed: AtomicU64,
    pub oversized_refused: AtomicU64,
    /// Oversized messages answered otherwise than with the limit's refusal.
    pub oversized_other: AtomicU64,
    pub anonymous_refused: AtomicU64,
    pub anonymous_admitted: AtomicU64,
    pub authenticated_open: AtomicU64,
    pub authenticated_refused: AtomicU64,
    /// The first few unexpected answers, in words.
    pub notes: std::sync::Mutex<Vec<String>>,
    /// The hostile abusers start when this is notified.
    hostile: tokio::sync::Notify,
}

impl Counters {
    fn note(&self, what: String) {
        let mut notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        if notes.len() < 10 && !notes.contains(&what) {
            notes.push(what);
        }
    }
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The agent's memory and descriptors.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub rss_kib: u64,
    pub fds: usize,
}

#[derive(Debug, Default)]
pub struct Report {
    /// Apply times on the operator's kept connection: before, during and after the abuse.
    pub before: Vec<Duration>,
    pub during: Vec<Duration>,
    pub after: Vec<Duration>,
    /// A new connection (TCP, TLS, HTTP/2) and an Apply on it, during the abuse.
    pub fresh_during: Vec<Duration>,
    pub usage_before: Usage,
    pub usage_peak: Usage,
    pub usage_after: Usage,
    /// VmHWM at the end: the most the agent ever had resident.
    pub hwm_kib: u64,
    /// CPU time the agent and this harness (the abusers and the operator's client) used
    /// while the abuse ran, and how long it ran.
    pub agent_cpu: Duration,
    pub harness_cpu: Duration,
    pub abuse_wall: Duration,
    /// From the end of the abuse until the agent's descriptors were back to their count before.
    pub released_in: Duration,
    pub counters: Counters,
    pub errors: Vec<String>,
    pub agent_alive: bool,
}

pub fn p50(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(s.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Report {
    /// p50 under abuse ÷ p50 without (the tries before and after together, so a machine
    /// that got busier or quieter meanwhile weighs on both sides).
    pub fn ratio(&self) -> f64 {
        let without: Vec<Duration> = self.before.iter().chain(&self.after).copied().collect();
        ms(p50(&self.during)) / ms(p50(&without)).max(0.001)
    }

    pub fn summary(&self) -> String {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "Apply p50 {:.1} ms before, {:.1} ms under abuse ({:.2}×), {:.1} ms after; new connection + Apply under abuse p50 {:.1} ms; \
             CPU over {:.1} s of abuse: agent {:.2} s, abusers and client {:.2} s; \
             agent RSS {} → peak {} → {} KiB (VmHWM {}), fds {} → peak {} → {} ({:.1} s after the abuse); abusers opened {} connections ({} closed by the agent, {} refused at connect), \
             oversized refused {} (other answers {}), anonymous handshakes refused {} (admitted {}), authenticated held {} (refused {}); errors {:?}; notes {:?}",
            ms(p50(&self.before)),
            ms(p50(&self.during)),
            self.ratio(),
            ms(p50(&self.after)),
            ms(p50(&self.fresh_during)),
            self.abuse_wall.as_secs_f64(),
            self.agent_cpu.as_secs_f64(),
            self.harness_cpu.as_secs_f64(),
            self.usage_before.rss_kib,
            self.usage_peak.rss_kib,
            self.usage_after.rss_kib,
            self.hwm_kib,
            self.usage_before.fds,
            self.usage_peak.fds,
            self.usage_after.fds,
            self.released_in.as_secs_f64(),
            n(&c.connections),
            n(&c.closed_by_agent),
            n(&c.connect_failed),
            n(&c.oversized_refused),
            n(&c.oversized_other),
            n(&c.anonymous_refused),
            n(&c.anonymous_admitted),
            n(&c.authenticated_open),
            n(&c.authenticated_refused),
            self.errors,
            c.notes.lock().map(|n| n.clone()).unwrap_or_default(),
        )
    }
}

/// User + system CPU time of process `pid` (`self` for this one).
fn cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: fields 14 and 15 are utime and stime, in ticks.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn usage(pid: u32) -> Usage {
    kernel::process(pid).map(|v| Usage { rss_kib: v.rss_kib, fds: v.fds }).unwrap_or_default()
}

fn hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn run(cfg: &Config, work: &Path) -> anyhow::Result<Report> {
    kernel::mounts()?;
    // Thousands of sockets on our side too.
    agent::kernel::raise_nofile();
    let pki_dir = work.join("pki");
    std::fs::create_dir_all(&pki_dir)?;
    let pki = TestPki::generate(&pki_dir);
    let tag = format!("{}a", std::process::id() % 10000);
    let dirs = Dirs::new(&tag, work);
    let _ = std::fs::remove_dir_all(&dirs.root);
    // The tracepoint owner: no interface needed; each Apply is an upgrade to its other revision.
    let pool = owners::pool(&cfg.objects, "lo", TcBackend::Tcx)?;
    let owner = pool.iter().find(|o| o.uid == "rel-tp").ok_or_else(|| anyhow::anyhow!("no tracepoint owner"))?;
    let requests = [owner.variants[0].request.clone(), owner.variants[1].request.clone()];
    let launch = Launch {
        bin: &cfg.agent_bin,
        pki: &pki,
        dirs: &dirs,
        tc_backend: TcBackend::Tcx.flag(),
        env: vec![],
        log: work.join("abuse-agent.log"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut agent = AgentProc::spawn(&launch)?;
    let tls = pki.client_config();
    let report = rt.block_on(async {
        let mut client = agent.ready(&tls).await?;
        abuse(cfg, &pki, &tls, agent.addr, agent.pid(), &mut client, &requests).await
    });
    let mut report = report?;
    report.agent_alive = !agent.exited();
    if !report.agent_alive {
        report.errors.push(format!("the agent died:\n{}", agent.log_text()));
    }
    let log = agent.log_text();
    if log.contains("panicked") {
        report.errors.push("the agent's log has a panic".into());
    }
    if let Ok(mut c) = rt.block_on(agent.ready(&tls)) {
        let _ = rt.block_on(c.remove(crate::process::remove_request(&owner.uid)));
    }
    drop(agent);
    Ok(report)
}

async fn timed_applies(
    client: &mut AgentClient<Channel>,
    requests: &[v1::ApplyRequest; 2],
    tries: usize,
    errors: &mut Vec<String>,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(tries);
    for i in 0..tries {
        let started = Instant::now();
        match client.apply(requests[i % 2].clone()).await {
            Ok(_) => out.push(started.elapsed()),
            Err(e) => errors.push(format!("Apply {i}: {}", e.message())),
        }
        // As the operator does between nodes' answers: not back to back.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out
}

async fn abuse(
    cfg: &Config,
    pki: &TestPki,
    tls: &ClientTlsConfig,
    addr: SocketAddr,
    pid: u32,
    client: &mut AgentClient<Channel>,
    requests: &[v1::ApplyRequest; 2],
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    // Warm the agent up, then time it alone.
    let _ = timed_applies(client, requests, 4, &mut report.errors).await;
    report.before = timed_applies(client, requests, cfg.tries, &mut report.errors).await;
    report.usage_before = usage(pid);

    let counters = Arc::new(Counters::default());
    let (agent_cpu, harness_cpu, abuse_started) = (cpu(&pid.to_string()), cpu("self"), Instant::now());
    let (stop_tx, stop) = watch::channel(false);
    let anonymous_config = anonymous_client(&pki.ca_cert)?;
    let abusers =
        spawn_abusers(cfg, addr, tls.clone(), anonymous_config, requests[0].clone(), stop.clone(), counters.clone());
    // The operator's identity holding many connections is opened first (as an operator
    // would have them), then the hostile ones.
    let opened = Instant::now();
    while counters.authenticated_open.load(Ordering::Relaxed) + counters.authenticated_refused.load(Ordering::Relaxed)
        < cfg.authenticated as u64
        && opened.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    counters.hostile.notify_one();
    // Memory and descriptors, sampled all along.
    let sampler = {
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut peak = Usage::default();
            loop {
                let u = usage(pid);
                peak.rss_kib = peak.rss_kib.max(u.rss_kib);
                peak.fds = peak.fds.max(u.fds);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.changed() => return peak,
                }
            }
        })
    };
    tokio::time::sleep(cfg.ramp).await;
    report.during = timed_applies(client, requests, cfg.tries, &mut report.errors).await;
    for i in 0..5 {
        let started = Instant::now();
        let fresh = async {
            let ch = Endpoint::from_shared(format!("https://{addr}"))?
                .tls_config(tls.clone())?
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(30))
                .connect()
                .await?;
            let mut c = AgentClient::new(ch).max_encoding_message_size(crds::limits::MAX_APPLY_MESSAGE_BYTES);
            c.apply(requests[i % 2].clone()).await?;
            anyhow::Ok(())
        };
        match fresh.await {
            Ok(()) => report.fresh_during.push(started.elapsed()),
            Err(e) => report.errors.push(format!("new connection + Apply {i} under abuse: {e:#}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    report.agent_cpu = cpu(&pid.to_string()).saturating_sub(agent_cpu);
    report.harness_cpu = cpu("self").saturating_sub(harness_cpu);
    report.abuse_wall = abuse_started.elapsed();
    report.usage_peak = sampler.await.unwrap_or_default();
    let _ = tokio::task::spawn_blocking(move || abusers.join()).await;
    // The agent lets go of closed connections on its own: wait until its descriptors are
    // back where they were (or 20 s).
    let released = Instant::now();
    while usage(pid).fds > report.usage_before.fds && released.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.released_in = released.elapsed();
    report.after = timed_applies(client, requests, cfg.tries, &mut report.errors).await;
    report.usage_after = usage(pid);
    report.hwm_kib = hwm_kib(pid);
    report.counters = Arc::try_unwrap(counters).unwrap_or_default();
    Ok(report)
}

/// The abusers run on their own thread and runtime, so they use one core at most: on this
/// 2-core machine an attacker elsewhere on the network is modelled, not one that takes the
/// node's CPUs (what the agent spends on them is measured apart).
fn spawn_abusers(
    cfg: &Config,
    addr: SocketAddr,
    tls: ClientTlsConfig,
    anonymous_config: tokio_rustls::TlsConnector,
    apply: v1::ApplyRequest,
    stop: watch::Receiver<bool>,
    counters: Arc<Counters>,
) -> std::thread::JoinHandle<()> {
    let (silent_n, flood, slow_n, garbage_n, anonymous_n, oversized_n, authenticated_n, sources) = (
        cfg.silent,
        cfg.flood_one_address,
        cfg.slow,
        cfg.garbage,
        cfg.anonymous,
        cfg.oversized,
        cfg.authenticated,
        cfg.source_addresses.max(1) as usize,
    );
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            let c = counters;
            let mut tasks = tokio::task::JoinSet::new();
            // As an operator would open them: a few at a time, not all in one burst.
            let opening = Arc::new(tokio::sync::Semaphore::new(16));
            for _ in 0..authenticated_n {
                tasks.spawn(authenticated(addr, tls.clone(), opening.clone(), stop.clone(), c.clone()));
            }
            c.hostile.notified().await;
            let source = |i: usize| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % sources) as u8));
            for i in 0..silent_n {
                tasks.spawn(silent(addr, source(i), stop.clone(), c.clone()));
            }
            for _ in 0..flood {
                tasks.spawn(silent(addr, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 250)), stop.clone(), c.clone()));
            }
            for i in 0..slow_n {
                tasks.spawn(slow(addr, source(i + 7), stop.clone(), c.clone()));
            }
            for i in 0..garbage_n {
                tasks.spawn(garbage(addr, source(i), i as u64, stop.clone(), c.clone()));
            }
            for i in 0..anonymous_n {
                tasks.spawn(anonymous(addr, source(i + 3), anonymous_config.clone(), stop.clone(), c.clone()));
            }
            for _ in 0..oversized_n {
                tasks.spawn(oversized(addr, tls.clone(), apply.clone(), stop.clone(), c.clone()));
            }
            let mut stop = stop;
            let _ = stop.changed().await;
            tasks.shutdown().await;
        });
    })
}

async fn connect_from(src: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(src, 0))?;
    tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Until the agent closes the connection (true) or the abuse stops (false).
async fn until_closed(tcp: &mut TcpStream, stop: &mut watch::Receiver<bool>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            r = tcp.read(&mut buf) => match r {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            },
            _ = stop.changed() => return false,
        }
    }
}

/// Between a closed connection and the next: many connections at once, not a connection-rate
/// flood (which is the network's to stop, not a server's).
async fn backoff(stop: &mut watch::Receiver<bool>) -> bool {
    pace(stop, Duration::from_millis(500)).await
}

/// Sleep `d`; false when the abuse stopped meanwhile.
async fn pace(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.changed() => false,
    }
}

/// The next connection from `src`, waiting out failed connects; `None` once the abuse stopped.
async fn next_connection(
    src: IpAddr,
    addr: SocketAddr,
    stop: &mut watch::Receiver<bool>,
    c: &Counters,
) -> Option<TcpStream> {
    while !*stop.borrow() {
        match connect_from(src, addr).await {
            Ok(tcp) => {
                add(&c.connections);
                return Some(tcp);
            }
            Err(_) => {
                add(&c.connect_failed);
                if !backoff(stop).await {
                    return None;
                }
            }
        }
    }
    None
}

/// The agent closed our connection: count it and wait before the next; false once stopped.
async fn closed(stop: &mut watch::Receiver<bool>, c: &Counters) -> bool {
    add(&c.closed_by_agent);
    backoff(stop).await
}

async fn silent(addr: SocketAddr, src: IpAddr, mut stop: watch::Receiver<bool>, c: Arc<Counters>) {
    while let Some(mut tcp) = next_connection(src, addr, &mut stop, &c).await {
        if !until_closed(&mut tcp, &mut stop).await || !closed(&mut stop, &c).await {
            return;
        }
    }
}

async fn slow(addr: SocketAddr, src: IpAddr, mut stop: watch::Receiver<bool>, c: Arc<Counters>) {
    while let Some(mut tcp) = next_connection(src, addr, &mut stop, &c).await {
        // A handshake record of 512 bytes, announced, then sent a byte at a time.
        let mut sent = tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.is_ok();
        let mut buf = [0u8; 64];
        while sent {
            tokio::select! {
                r = tcp.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
                _ = tokio::time::sleep(Duration::from_millis(200)) => sent = tcp.write_all(&[0]).await.is_ok(),
                _ = stop.changed() => return,
            }
        }
        if !closed(&mut stop, &c).await {
            return;
        }
    }
}

async fn garbage(addr: SocketAddr, src: IpAddr, seed: u64, mut stop: watch::Receiver<bool>, c: Arc<Counters>) {
    let mut rng = Rng::new(seed);
    let mut bytes = vec![0u8; 64 << 10];
    while let Some(mut tcp) = next_connection(src, addr, &mut stop, &c).await {
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes()[..chunk.len()]);
        }
        let _ = tcp.write_all(&bytes).await;
        if !until_closed(&mut tcp, &mut stop).await || !closed(&mut stop, &c).await {
            return;
        }
    }
}

fn anonymous_client(ca: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca)?)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn anonymous(
    addr: SocketAddr,
    src: IpAddr,
    connector: tokio_rustls::TlsConnector,
    mut stop: watch::Receiver<bool>,
    c: Arc<Counters>,
) {
    let name = ServerName::try_from(DEFAULT_SERVER_NAME).expect("a valid DNS name");
    while let Some(tcp) = next_connection(src, addr, &mut stop, &c).await {
        // TLS 1.3: the client's side may complete; the server's refusal arrives on the first read.
        let refused = match connector.connect(name.clone(), tcp).await {
            Err(_) => true,
            Ok(mut s) => {
                let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
                let mut buf = [0u8; 256];
                matches!(tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
            }
        };
        add(if refused { &c.anonymous_refused } else { &c.anonymous_admitted });
        if !backoff(&mut stop).await {
            return;
        }
    }
}

async fn operator_channel(addr: SocketAddr, tls: &ClientTlsConfig) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls.clone())?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .connect()
        .await?)
}

async fn oversized(
    addr: SocketAddr,
    tls: ClientTlsConfig,
    mut request: v1::ApplyRequest,
    mut stop: watch::Receiver<bool>,
    c: Arc<Counters>,
) {
    request.bytecode =
        Some(v1::apply_request::Bytecode::Elf(vec![0x7f; crds::limits::MAX_APPLY_MESSAGE_BYTES + (1 << 20)].into()));
    while !*stop.borrow() {
        let Ok(ch) = operator_channel(addr, &tls).await else {
            add(&c.connect_failed);
            if !backoff(&mut stop).await {
                return;
            }
            continue;
        };
        add(&c.connections);
        let mut client = AgentClient::new(ch).max_encoding_message_size(usize::MAX);
        for _ in 0..10 {
            let answer = tokio::select! {
                r = client.apply(request.clone()) => r,
                _ = stop.changed() => return,
            };
            match answer {
                Err(s) if matches!(s.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted) => {
                    add(&c.oversized_refused)
                }
                other => {
                    add(&c.oversized_other);
                    c.note(format!("oversized Apply answered {:?}", other.map(|_| "OK").map_err(|s| s.code())));
                }
            }
            // Four a second each: encoding 17 MiB is this harness's cost, not the agent's.
            if !pace(&mut stop, Duration::from_millis(250)).await {
                return;
            }
        }
    }
}

async fn authenticated(
    addr: SocketAddr,
    tls: ClientTlsConfig,
    opening: Arc<tokio::sync::Semaphore>,
    mut stop: watch::Receiver<bool>,
    c: Arc<Counters>,
) {
    let held = {
        let Ok(_turn) = opening.acquire().await else { return };
        async {
            let ch = operator_channel(addr, &tls).await?;
            AgentClient::new(ch.clone()).list(v1::ListRequest::default()).await?;
            anyhow::Ok(ch)
        }
        .await
    };
    match held {
        Ok(ch) => {
            add(&c.connections);
            add(&c.authenticated_open);
            let _ = stop.changed().await;
            drop(ch);
        }
        Err(e) => {
            // Beyond the agent's connection bound: closed after the handshake.
            add(&c.authenticated_refused);
            c.note(format!("authenticated connection refused: {e:#}"));
        }
    }
}
