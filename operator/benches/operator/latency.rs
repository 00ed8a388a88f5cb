//! Latency with real agents: one `bpfleet-agent` per network namespace, a BpfProgram
//! reconciled to Ready on all of them, per-agent apply time from their `/metrics`.

use super::*;

pub(crate) fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("run {}", args[0]))?;
    ensure!(out.status.success(), "`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) struct RealAgent {
    pub(crate) name: String,
    pub(crate) netns: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) child: Option<Child>,
    pub(crate) root: PathBuf,
    pub(crate) log: PathBuf,
}

impl RealAgent {
    pub(crate) fn addr(&self) -> NodeAddr {
        NodeAddr { name: self.name.clone(), ip: IpAddr::V4(self.ip) }
    }
}

/// Agents, their namespaces and pins; everything stopped and removed on drop (also when
/// the bench is interrupted or fails half-way).
pub(crate) struct Fleet {
    pub(crate) agents: Vec<RealAgent>,
    pub(crate) bpffs: PathBuf,
    /// The tmpfs holding the agents' owner records.
    pub(crate) state_mount: Option<PathBuf>,
    pub(crate) pki: TestPki,
    pub(crate) tmp: tempfile::TempDir,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for a in &mut self.agents {
            if let Some(mut c) = a.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Unpinning the links detaches the programs.
        let _ = std::fs::remove_dir_all(&self.bpffs);
        for a in &self.agents {
            let _ = sh(&["ip", "netns", "del", &a.netns]);
        }
        if let Some(dir) = self.state_mount.take() {
            let _ = sh(&["umount", &dir.to_string_lossy()]);
        }
    }
}

/// Namespaces a previous, killed run left behind; refuses to touch one that still has processes.
pub(crate) fn remove_stale_namespaces() -> anyhow::Result<()> {
    for line in sh(&["ip", "netns", "list"])?.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if !name.starts_with(NETNS_PREFIX) || !name[NETNS_PREFIX.len()..].chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let pids = sh(&["ip", "netns", "pids", name])?;
        ensure!(
            pids.trim().is_empty(),
            "network namespace {name} still has processes: is another operator bench running?"
        );
        sh(&["ip", "netns", "del", name])?;
    }
    Ok(())
}

impl Fleet {
    pub(crate) fn start(bin: &Path, count: usize) -> anyhow::Result<Fleet> {
        ensure!(bin.exists(), "{} not found: cargo build --release -p node-agent", bin.display());
        ensure!((1..=MAX_AGENTS).contains(&count), "1..={MAX_AGENTS} agents");
        remove_stale_namespaces()?;
        sh(&["bash", "-c", "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf"])?;
        let tmp = tempfile::tempdir()?;
        let pki_dir = tmp.path().join("pki");
        std::fs::create_dir_all(&pki_dir)?;
        let pki = TestPki::generate(&pki_dir);
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/bpfleet-opbench-{}", std::process::id()));
        let mut fleet = Fleet { agents: Vec::new(), bpffs, state_mount: None, pki, tmp };
        for i in 0..count {
            let netns = format!("{NETNS_PREFIX}{i}");
            let octet = (i + 1).to_string();
            let (host, peer) = (format!("10.231.{octet}.1/24"), format!("10.231.{octet}.2/24"));
            let name = format!("node-{i:02}");
            fleet.agents.push(RealAgent {
                name: name.clone(),
                netns: netns.clone(),
                ip: Ipv4Addr::new(10, 231, (i + 1) as u8, 2),
                child: None,
                root: fleet.bpffs.join(&name),
                log: fleet.tmp.path().join(format!("{name}.log")),
            });
            sh(&["ip", "netns", "add", &netns])?;
            sh(&["ip", "link", "add", &netns, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
            sh(&["ip", "addr", "add", &host, "dev", &netns])?;
            sh(&["ip", "link", "set", &netns, "up"])?;
            sh(&["ip", "-n", &netns, "addr", "add", &peer, "dev", "eth0"])?;
            sh(&["ip", "-n", &netns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", &netns, "link", "set", "lo", "up"])?;
        }
        // Owner records on a tmpfs, as /run is on a node: this machine's /run and /tmp are on
        // disk, and an fsync there would count as the agent's apply time.
        let state = fleet.tmp.path().join("state");
        std::fs::create_dir_all(&state)?;
        sh(&["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "bpfleet-opbench", &state.to_string_lossy()])?;
        fleet.state_mount = Some(state.clone());
        for a in &mut fleet.agents {
            let child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", a.netns))
                .arg("--")
                .arg(bin)
                .args(
                    agent::testing::args::AgentArgs::new(&a.name, &a.root, &state.join(format!("state-{}", a.name)))
                        .listen(format!("{}:{AGENT_PORT}", a.ip))
                        .metrics_listen(format!("{}:{METRICS_PORT}", a.ip))
                        .pki_server_tls(&fleet.pki)
                        .operator_client_name()
                        .build(),
                )
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1")
                .env_remove("BPFLEET_FAULT")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&a.log)?)
                .spawn()
                .context("spawn nsenter bpfleet-agent")?;
            a.child = Some(child);
        }
        Ok(fleet)
    }

    pub(crate) fn pool_config(&self) -> PoolConfig {
        PoolConfig::new(
            AGENT_PORT,
            operator::agent_tls::AgentTls::from_files(self.pki.client_files(), agent::tls::DEFAULT_SERVER_NAME)
                .expect("test PKI"),
        )
    }

    pub(crate) async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let mut cfg = self.pool_config();
        cfg.backoff_base = Duration::from_millis(1);
        cfg.backoff_max = Duration::from_millis(1);
        let probe = AgentPool::new(cfg);
        let deadline = Instant::now() + Duration::from_secs(60);
        for a in &mut self.agents {
            loop {
                if let Some(Ok(Some(status))) = a.child.as_mut().map(|c| c.try_wait()) {
                    bail!("agent {} exited ({status}):\n{}", a.name, log_of(&a.log));
                }
                if probe.list(&a.addr()).await.is_ok() && scrape(a.ip).is_ok() {
                    break;
                }
                ensure!(Instant::now() < deadline, "agent {} never answered:\n{}", a.name, log_of(&a.log));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }
}

pub(crate) fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// (sum of seconds, count) of the agent's apply-duration histogram, read from its /metrics.
pub(crate) fn scrape(ip: Ipv4Addr) -> anyhow::Result<(f64, u64)> {
    let mut conn = TcpStream::connect_timeout(&SocketAddr::from((ip, METRICS_PORT)), Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(conn, "GET /metrics HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let value = |name: &str| text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()));
    let sum = value(&format!("{APPLY_SUM} ")).with_context(|| format!("no {APPLY_SUM} from {ip}"))?;
    let count = value(&format!("{APPLY_COUNT} ")).with_context(|| format!("no {APPLY_COUNT} from {ip}"))?;
    Ok((sum, count as u64))
}

pub(crate) async fn scrape_all(agents: &[&RealAgent]) -> anyhow::Result<Vec<(f64, u64)>> {
    let ips: Vec<Ipv4Addr> = agents.iter().map(|a| a.ip).collect();
    tokio::task::spawn_blocking(move || ips.into_iter().map(scrape).collect()).await?
}

/// One Create→Ready measurement.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    /// From the reconcile's start to the status patch that says Ready on every target.
    pub(crate) total: Duration,
    /// Each agent's own apply (load, verify, attach, pin, record), as it reports it.
    pub(crate) applies: Vec<Duration>,
    /// Reconciles it took to reach Ready.
    pub(crate) passes: u32,
    /// The reconcile of the deleted object (Remove on every node, finalizer dropped).
    pub(crate) cleanup: Duration,
}

impl Sample {
    pub(crate) fn slowest_apply(&self) -> Duration {
        self.applies.iter().copied().max().unwrap_or_default()
    }
    pub(crate) fn operator_share(&self) -> Duration {
        self.total.saturating_sub(self.slowest_apply())
    }
}

pub(crate) struct LatencyRow {
    pub(crate) agents: usize,
    pub(crate) samples: Vec<Sample>,
}

pub(crate) static SEQ: AtomicU32 = AtomicU32::new(0);

/// Create → Ready of one new BpfProgram on `agents`, then its removal.
pub(crate) async fn one_iteration(
    ctx: &Arc<Context>,
    api: &MockApi,
    agents: &[&RealAgent],
    elf_b64: &str,
    settle: Duration,
) -> anyhow::Result<Sample> {
    let k = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = format!("opbench-{}-{k}", std::process::id());
    let uid = format!("opbench-uid-{}-{k}", std::process::id());
    let before = scrape_all(agents).await?;
    let mut obj: BpfProgram = serde_json::from_value(program_json(&name, &uid, elf_b64, "lo"))?;
    let started = Instant::now();
    let mut passes = 0;
    let total = loop {
        passes += 1;
        reconcile(Arc::new(obj.clone()), ctx.clone()).await.map_err(|e| anyhow::anyhow!("reconcile {name}: {e}"))?;
        let (at, status) = api.take_status(&name).with_context(|| format!("{name}: no status written"))?;
        if ready_true(&status) && status["readyNodes"].as_u64() == Some(agents.len() as u64) {
            break at - started;
        }
        ensure!(status["failedNodes"].as_u64().unwrap_or(0) == 0, "{name} failed: {status}");
        ensure!(passes < 20, "{name} not Ready after {passes} reconciles: {status}");
        // What the watch would deliver before the next reconcile.
        obj.status = Some(serde_json::from_value(status)?);
    };
    let after = scrape_all(agents).await?;
    let mut applies = Vec::new();
    for ((a, (s0, c0)), (s1, c1)) in agents.iter().zip(&before).zip(&after) {
        ensure!(c1 - c0 == 1, "{}: {} applies during one iteration, expected 1", a.name, c1 - c0);
        applies.push(Duration::from_secs_f64((s1 - s0).max(0.0)));
    }
    // Delete: the finalizer sends Remove to every node, then drops itself.
    let mut deleting = obj.clone();
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    let t = Instant::now();
    reconcile(Arc::new(deleting), ctx.clone()).await.map_err(|e| anyhow::anyhow!("delete {name}: {e}"))?;
    let cleanup = t.elapsed();
    for a in agents {
        let left = a.root.join(&uid);
        ensure!(!left.exists(), "{}: {} still pinned after Remove", a.name, left.display());
    }
    tokio::time::sleep(settle).await;
    Ok(Sample { total, applies, passes, cleanup })
}

pub(crate) async fn latency(
    args: &Args,
    agent_bin: &Path,
    elf: &[u8],
) -> anyhow::Result<(Vec<LatencyRow>, LatencyRow)> {
    ensure!(sh(&["id", "-u"])?.trim() == "0", "the latency part loads XDP programs: run as root (or --skip-latency)");
    ensure!(args.iterations >= 1, "--iterations must be at least 1");
    let most = args.agents.iter().copied().max().unwrap_or(0);
    eprintln!("== latency: starting {most} agents ({})", agent_bin.display());
    let mut fleet = Fleet::start(agent_bin, most)?;
    fleet.wait_ready().await?;
    let elf_b64 = base64::engine::general_purpose::STANDARD.encode(elf);
    let api = Arc::new(MockApi { record: true, ..Default::default() });
    let client = mock_client(api.clone());
    // One pool for the whole run, as in the operator: its channels stay connected.
    let pool = AgentPool::new(fleet.pool_config());
    let settle = Duration::from_millis(args.settle_ms);
    let all: Vec<&RealAgent> = fleet.agents.iter().collect();
    let nodes = |n: usize| all[..n].iter().map(|a| node(&a.name, IpAddr::V4(a.ip))).collect::<Vec<_>>();
    // Warm-up on every agent: TLS handshakes, each agent's one-time kernel BTF parse.
    eprintln!("== latency: warm-up on {most} agents");
    let warm = one_iteration(&context(client.clone(), pool.clone(), nodes(most)), &api, &all, &elf_b64, settle).await?;
    eprintln!("   first Create→Ready on {most} agents (cold): {:.1} ms", ms(warm.total));
    let mut rows = Vec::new();
    for &n in &args.agents {
        let ctx = context(client.clone(), pool.clone(), nodes(n));
        let mut samples = Vec::new();
        for i in 0..args.iterations {
            let s = one_iteration(&ctx, &api, &all[..n], &elf_b64, settle).await?;
            eprintln!(
                "   N={n:>3} #{i:<2} total {:>7.1} ms  slowest apply {:>7.1} ms  passes {}  cleanup {:>6.1} ms",
                ms(s.total),
                ms(s.slowest_apply()),
                s.passes,
                ms(s.cleanup)
            );
            samples.push(s);
        }
        rows.push(LatencyRow { agents: n, samples });
    }
    drop(fleet);
    Ok((rows, LatencyRow { agents: most, samples: vec![warm] }))
}
