//! Memory with fake agents: 1,000 BpfPrograms over 50 (or 5,000) fake agents in a child
//! process, VmRSS/VmHWM of the operator side.

use super::*;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct Mem {
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
    /// Heap bytes held (allocated, not freed) now and at most so far.
    pub(crate) live_kib: u64,
    pub(crate) live_peak_kib: u64,
    /// VmRSS = RssAnon (heap, stacks) + RssFile (the executable's pages) + RssShmem.
    pub(crate) anon_kib: u64,
    pub(crate) file_kib: u64,
}

pub(crate) fn mem() -> Mem {
    Mem {
        rss_kib: read_kib("/proc/self/status", "VmRSS:").unwrap_or(0),
        hwm_kib: read_kib("/proc/self/status", "VmHWM:").unwrap_or(0),
        live_kib: (LIVE.load(Ordering::Relaxed) / 1024) as u64,
        live_peak_kib: (LIVE_PEAK.load(Ordering::Relaxed) / 1024) as u64,
        anon_kib: read_kib("/proc/self/status", "RssAnon:").unwrap_or(0),
        file_kib: read_kib("/proc/self/status", "RssFile:").unwrap_or(0),
    }
}

pub(crate) fn read_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct RssReport {
    pub(crate) programs: usize,
    pub(crate) nodes: usize,
    pub(crate) concurrency: usize,
    pub(crate) start: Mem,
    pub(crate) caches: Mem,
    pub(crate) reconciled: Mem,
    pub(crate) resynced: Mem,
    pub(crate) again: Mem,
    pub(crate) held_index_kib: u64,
    pub(crate) held_desired_kib: u64,
    pub(crate) held_programs_kib: u64,
    pub(crate) slim_index_kib: u64,
    pub(crate) resync: ResyncMode,
    pub(crate) reconcile_ms: f64,
    pub(crate) again_ms: f64,
    pub(crate) resync_ms: f64,
    pub(crate) index_entries: usize,
    pub(crate) ready: usize,
    pub(crate) drift_repairs: usize,
    pub(crate) api_requests: usize,
    pub(crate) inline_bytes: usize,
}

pub(crate) fn rss_in_child(
    object: &Path,
    programs: usize,
    nodes: usize,
    concurrency: usize,
    resync: &str,
) -> anyhow::Result<RssReport> {
    let out = Command::new(std::env::current_exe()?)
        .arg("rss")
        .arg("--object")
        .arg(object)
        .args(["--programs", &programs.to_string(), "--nodes", &nodes.to_string()])
        .args(["--concurrency", &concurrency.to_string(), "--resync", resync])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(out.status.success(), "the rss process failed ({})", out.status);
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).with_context(|| format!("rss output: {line}"))
}

/// A port free on every fake agent's address.
pub(crate) fn shared_free_port(count: usize) -> anyhow::Result<u16> {
    let ip = fake_ip;
    for _ in 0..50 {
        let first = TcpListener::bind((ip(0), 0))?;
        let port = first.local_addr()?.port();
        if (1..count).all(|i| TcpListener::bind((ip(i), port)).is_ok()) {
            return Ok(port);
        }
    }
    bail!("no port free on all of {}..{}", fake_ip(0), fake_ip(count - 1))
}

/// Fake agents in a child process (`operator-bench fake-agents`), stopped (their stdin
/// closes) when dropped.
pub(crate) struct FakeFleet {
    pub(crate) child: Child,
    pub(crate) stdin: Option<std::process::ChildStdin>,
    pub(crate) stdout: BufReader<std::process::ChildStdout>,
    pub(crate) port: u16,
    pub(crate) pki: TestPki,
    pub(crate) _dir: tempfile::TempDir,
}

impl FakeFleet {
    pub(crate) fn start(count: usize) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let pki = TestPki::generate(dir.path());
        let port = shared_free_port(count)?;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("fake-agents")
            .arg("--pki-dir")
            .arg(dir.path())
            .args(["--port", &port.to_string(), "--count", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut fleet = FakeFleet { child, stdin, stdout, port, pki, _dir: dir };
        let line = fleet.line()?;
        ensure!(line.trim() == "ready", "fake agents did not start: {line:?}");
        Ok(fleet)
    }

    pub(crate) fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(line)
    }

    /// What the fake agents were asked so far.
    pub(crate) fn stats(&mut self) -> anyhow::Result<AgentStats> {
        let stdin = self.stdin.as_mut().context("fake agents stopped")?;
        writeln!(stdin, "stats")?;
        stdin.flush()?;
        let line = self.line()?;
        serde_json::from_str(line.trim()).with_context(|| format!("fake agents' stats: {line:?}"))
    }
}

impl Drop for FakeFleet {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The operator's Node cache: `count` Nodes with the fake agents' addresses.
pub(crate) fn fake_node_store(count: usize) -> Store<Node> {
    let (store, mut writer) = reflector::store::<Node>();
    for i in 0..count {
        writer.apply_watcher_event(&watcher::Event::Apply(node(&fake_node(i), IpAddr::V4(fake_ip(i)))));
    }
    store
}

/// The operator's BpfProgram cache: `count` BpfPrograms (`rss-0000`, ...) carrying `elf_b64`
/// inline, arriving as the watcher's initial list does (pages of
/// `operator::work::PROGRAM_PAGE_SIZE` objects, JSON decoded).
pub(crate) fn program_store(
    count: usize,
    elf_b64: &str,
) -> anyhow::Result<(Store<BpfProgram>, reflector::store::Writer<BpfProgram>)> {
    let (store, mut writer): (Store<BpfProgram>, _) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for page in (0..count).collect::<Vec<_>>().chunks(operator::work::PROGRAM_PAGE_SIZE as usize) {
        let items: Vec<Value> = page
            .iter()
            .map(|i| program_json(&format!("rss-{i:04}"), &format!("rss-uid-{i:04}"), elf_b64, &format!("veth{i:04}")))
            .collect();
        let bytes = serde_json::to_vec(&json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgramList",
                                               "metadata": {"resourceVersion": "1"}, "items": items}))?;
        drop(items);
        let list: ObjectList<BpfProgram> = serde_json::from_slice(&bytes)?;
        for p in list.items {
            writer.apply_watcher_event(&watcher::Event::InitApply(p));
        }
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    Ok((store, writer))
}

pub(crate) async fn rss(
    object: &Path,
    programs: usize,
    nodes: usize,
    concurrency: usize,
    resync: ResyncMode,
) -> anyhow::Result<RssReport> {
    ensure!((1..=60_000).contains(&nodes), "1..=60000 nodes (127.1.0.2..)");
    let start = mem();
    let elf = std::fs::read(object)?;
    let elf_b64 = base64::engine::general_purpose::STANDARD.encode(&elf);
    let fakes = FakeFleet::start(nodes)?;
    let (port, pki) = (fakes.port, &fakes.pki);

    let node_store = fake_node_store(nodes);
    let (programs_store, mut writer) = program_store(programs, &elf_b64)?;

    let api = Arc::new(MockApi::default());
    let client = mock_client(api.clone());
    let mut cfg = PoolConfig::new(
        port,
        operator::agent_tls::AgentTls::from_files(pki.client_files(), agent::tls::DEFAULT_SERVER_NAME)
            .expect("test PKI"),
    );
    cfg.call_timeout = Duration::from_secs(60);
    let ctx = {
        let mut ctx = Context::new(client.clone(), AgentPool::new(cfg), node_store, Arc::new(Metrics::new()), 1);
        ctx.recorder = Some(operator::events::Recorder::new(client, "bpfleet-operator"));
        Arc::new(ctx)
    };
    let caches = mem();

    let reconcile_all = |ctx: Arc<Context>| {
        let objs = programs_store.state();
        async move {
            let calls = objs.into_iter().map(|p| reconcile(p, ctx.clone()));
            let results: Vec<_> = if concurrency == 0 {
                futures::future::join_all(calls).await
            } else {
                futures::stream::iter(calls).buffer_unordered(concurrency).collect().await
            };
            results.into_iter().filter(|r| r.is_err()).map(|r| r.unwrap_err().to_string()).collect::<Vec<_>>()
        }
    };
    let t = Instant::now();
    let errors = reconcile_all(ctx.clone()).await;
    let reconcile_ms = ms(t.elapsed());
    ensure!(errors.is_empty(), "{} reconciles failed, e.g. {}", errors.len(), errors[0]);
    let ready = api.ready_patches.load(Ordering::Relaxed);
    let reconciled = mem();

    let (tx, mut rx) = tokio::sync::mpsc::channel(programs.max(1));
    let t = Instant::now();
    match resync {
        ResyncMode::FanOut => operator::resync::resync_once(&ctx, &programs_store, &tx).await,
        // The operator streams its resync now; both modes run the production code.
        ResyncMode::Streaming => operator::resync::resync_once(&ctx, &programs_store, &tx).await,
    }
    let resync_ms = ms(t.elapsed());
    let mut drift_repairs = 0;
    while rx.try_recv().is_ok() {
        drift_repairs += 1;
    }
    let index_entries = (0..nodes).map(|i| ctx.index.all_owners(&fake_node(i)).len()).sum();
    let resynced = mem();

    // Steady state: every program reconciled again (the periodic requeue); nothing to dispatch.
    let t = Instant::now();
    let errors = reconcile_all(ctx.clone()).await;
    let again_ms = ms(t.elapsed());
    ensure!(errors.is_empty(), "{} reconciles failed, e.g. {}", errors.len(), errors[0]);
    let again = mem();

    // Who holds the heap: drop one structure at a time and see what is freed.
    let live = || (LIVE.load(Ordering::Relaxed) / 1024) as u64;
    let before = live();
    for i in 0..nodes {
        ctx.index.forget(&fake_node(i));
    }
    let held_index_kib = before.saturating_sub(live());
    let before = live();
    ctx.desired.write().unwrap_or_else(|e| e.into_inner()).clear();
    let held_desired_kib = before.saturating_sub(live());
    let before = live();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let held_programs_kib = before.saturating_sub(live());
    // The index as proposed: per node, owner uid -> (revision, health) only.
    let before = live();
    let slim: Vec<BTreeMap<String, (String, crds::Health)>> = (0..nodes)
        .map(|_| {
            (0..programs).map(|i| (format!("rss-uid-{i:04}"), (format!("{:016x}", i), crds::Health::Healthy))).collect()
        })
        .collect();
    let slim_index_kib = live().saturating_sub(before);
    drop(slim);
    drop(fakes);
    Ok(RssReport {
        programs,
        nodes,
        concurrency,
        start,
        caches,
        reconciled,
        resynced,
        again,
        held_index_kib,
        held_desired_kib,
        held_programs_kib,
        slim_index_kib,
        resync,
        reconcile_ms,
        again_ms,
        resync_ms,
        index_entries,
        ready,
        drift_repairs,
        api_requests: api.requests.load(Ordering::Relaxed),
        inline_bytes: elf_b64.len(),
    })
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub(crate) fn print_rss(reports: &[RssReport]) {
    let Some(first) = reports.first() else { return };
    println!(
        "### Memory: {} BpfPrograms over {} nodes (fake agents, mocked API server)\n",
        first.programs, first.nodes
    );
    println!(
        "Each BpfProgram carries xdp_counter.o inline ({} base64 bytes). Target: VmHWM ≤ 64 MiB.\n",
        first.inline_bytes
    );
    let conc = |r: &RssReport| {
        let c = if r.concurrency == 0 { "all at once".to_string() } else { format!("{} at a time", r.concurrency) };
        let resync = match r.resync {
            ResyncMode::FanOut => "resync as today",
            ResyncMode::Streaming => "streaming resync",
        };
        format!("reconciles {c}, {resync}")
    };
    print!("| stage: VmRSS / VmHWM (heap held / heap peak) |");
    for r in reports {
        print!(" {} |", conc(r));
    }
    println!();
    println!("|---|{}", "---:|".repeat(reports.len()));
    type Stage = fn(&RssReport) -> &Mem;
    let stages: [(&str, Stage); 5] = [
        ("process started (runtime, logging)", |r| &r.start),
        ("caches filled (Nodes, BpfPrograms; mock API, pool, PKI)", |r| &r.caches),
        ("every BpfProgram reconciled: Ready on every node", |r| &r.reconciled),
        ("one resync (List ×50, BpfNode ×50)", |r| &r.resynced),
        ("every BpfProgram reconciled again (nothing to do)", |r| &r.again),
    ];
    for (label, f) in stages {
        print!("| {label} |");
        for r in reports {
            let m = f(r);
            print!(" {} / {} ({} / {}) |", mib(m.rss_kib), mib(m.hwm_kib), mib(m.live_kib), mib(m.live_peak_kib));
        }
        println!();
    }
    println!();
    println!("| |{}", reports.iter().map(|r| format!(" {} |", conc(r))).collect::<String>());
    println!("|---|{}", "---:|".repeat(reports.len()));
    let row = |label: &str, f: &dyn Fn(&RssReport) -> String| {
        println!("| {label} |{}", reports.iter().map(|r| format!(" {} |", f(r))).collect::<String>());
    };
    row("peak (VmHWM) vs 64 MiB target", &|r| {
        let ok = if r.again.hwm_kib <= 64 * 1024 { "within" } else { "OVER" };
        format!("{} ({ok})", mib(r.again.hwm_kib))
    });
    row("final VmRSS: RssAnon + RssFile (executable pages)", &|r| {
        format!("{} + {}", mib(r.again.anon_kib), mib(r.again.file_kib))
    });
    row("first reconcile of all (Apply ×N each)", &|r| {
        format!(
            "{:.2} s: {:.0} programs/s, {:.0} applies/s",
            r.reconcile_ms / 1000.0,
            r.programs as f64 / (r.reconcile_ms / 1000.0),
            (r.programs * r.nodes) as f64 / (r.reconcile_ms / 1000.0)
        )
    });
    row("statuses Ready", &|r| format!("{}/{}", r.ready, r.programs));
    row("index entries after resync", &|r| r.index_entries.to_string());
    row("resync (List all nodes, drift check)", &|r| format!("{:.0} ms, {} repairs", r.resync_ms, r.drift_repairs));
    row("second reconcile of all (no dispatch)", &|r| {
        format!("{:.2} s: {:.0} programs/s", r.again_ms / 1000.0, r.programs as f64 / (r.again_ms / 1000.0))
    });
    row("heap held by the node index (50,000 entries)", &|r| mib(r.held_index_kib));
    row("heap held by the desired-state map", &|r| mib(r.held_desired_kib));
    row("heap held by the BpfProgram cache", &|r| mib(r.held_programs_kib));
    row("heap a slim index would hold (uid → revision, health)", &|r| mib(r.slim_index_kib));
    row("requests to the mock API server", &|r| r.api_requests.to_string());
    println!();
}
