//! `operator-bench scale`: the operator's cost at fleet size (docs/benchmarks.md, "The
//! operator at fleet scale"; `scripts/bench-scale.sh` runs the matrix and plots it).
//!
//! One process holds what the operator holds, for N nodes × P BpfPrograms: the Node and
//! BpfProgram caches, the agent pool (mTLS channels within its connection budget), the node
//! index, the desired-state map, the revision history (ControllerRevisions in the mock), a
//! Watch stream to every agent while the fleet fits the budget. The agents are fake (a child
//! process, the real gRPC service over the same mTLS, no kernel work) and listen on N
//! loopback addresses; the API server is mocked, statefully: a status patch updates the
//! cached BpfProgram as the watch of a real API server would, so a reconcile sees what the
//! last one wrote and "nothing changed" means no write.
//!
//! In order, each timed on the operator's side:
//! 1. cold start: the first List of every agent (`initial_sync`), then reconciles (16 at a
//!    time, as the operator runs them) until every BpfProgram's status says Ready;
//! 2. a Watch stream opened to every agent (`resync::watch_agents`, as the operator does);
//! 3. a first resync (every agent read in full: the index holds Apply answers, not a List);
//! 4. at rest: one resync pass and one requeue of every BpfProgram, with the API requests
//!    and the agent traffic they cause — the operator does one of the first a minute and one
//!    of the second every five;
//! 5. one spec change of one BpfProgram with `strategy: AllAtOnce`: from the reconcile's
//!    start until every node answered and the status was written;
//! 6. one spec change of another, Progressive (steps 1, 10 %, 50 %, 100 %, maxInFlight
//!    10 %, no pauses), reconciled until complete.

use super::*;

/// Passes per minute at rest: a resync every 60 s (`WorkConfig::resync_every`), a requeue
/// of every settled BpfProgram every 300 s (`controller::STEADY`).
const RESYNCS_PER_MIN: f64 = 1.0;
const REQUEUES_PER_MIN: f64 = 0.2;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ScaleReport {
    pub nodes: usize,
    pub programs: usize,
    pub machine: String,
    /// VmHWM at the end: the peak of the whole run.
    pub peak_rss_kib: u64,
    pub stages: Vec<(String, Mem)>,
    pub cold_ready_s: f64,
    pub cold_passes: usize,
    /// Agent connections made (TCP connect + TLS handshake) from the start until every
    /// BpfProgram was Ready.
    #[serde(default)]
    pub cold_dials: u64,
    /// Apply and ApplyBatch calls made in the cold start (each carries one Apply or more).
    #[serde(default)]
    pub cold_apply_calls: u64,
    pub first_resync_ms: f64,
    pub resync_pass_ms: f64,
    pub requeue_pass_ms: f64,
    /// What one resync pass and one requeue of everything asked of the API server at rest,
    /// by "METHOD kind".
    pub api_resync_pass: BTreeMap<String, usize>,
    pub api_requeue_pass: BTreeMap<String, usize>,
    pub api_requests_per_min_at_rest: f64,
    pub api_writes_per_min_at_rest: f64,
    /// Agent calls and List bytes per node in one resync pass at rest.
    pub agent_calls_per_node_per_pass: f64,
    pub agent_bytes_per_node_per_pass: f64,
    pub agent_full_lists_at_rest: u64,
    /// The first resync's List bytes per node (every owner), for comparison.
    pub agent_bytes_per_node_full_list: f64,
    pub change_all_at_once_s: f64,
    pub change_all_at_once_applies: u64,
    pub change_progressive_s: f64,
    pub change_progressive_applies: u64,
    pub change_progressive_reconciles: usize,
    pub index_entries: usize,
    pub watches_open: u64,
    /// The pool's connection budget, and the connections open at rest.
    pub max_connections: usize,
    pub connections_at_rest: usize,
    pub heap_at_rest_kib: u64,
}

fn delta(after: &BTreeMap<String, usize>, before: &BTreeMap<String, usize>) -> BTreeMap<String, usize> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

fn is_write(kind: &str) -> bool {
    !kind.starts_with("GET ")
}

fn ready(p: &BpfProgram) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| c.type_ == operator::status::READY && c.status == "True")
            && s.target_nodes > 0
            && s.ready_nodes == s.target_nodes
    })
}

/// Reconciles every cached BpfProgram, `concurrency` at a time; returns the failures.
async fn reconcile_all(ctx: &Arc<Context>, store: &Store<BpfProgram>, concurrency: usize) -> Vec<String> {
    let calls = store.state().into_iter().map(|p| reconcile(p, ctx.clone()));
    let results: Vec<_> = futures::stream::iter(calls).buffer_unordered(concurrency).collect().await;
    results.into_iter().filter_map(|r| r.err().map(|e| e.to_string())).collect()
}

/// The spec change: the program's XDP interface gets another name (a new revision).
fn changed(p: &BpfProgram, rollout: Option<Value>) -> anyhow::Result<BpfProgram> {
    let mut raw = serde_json::to_value(p)?;
    let ifaces = &mut raw["spec"]["programs"][0]["xdp"]["interfaces"];
    *ifaces = json!([format!("{}-v2", ifaces[0].as_str().unwrap_or("eth"))]);
    if let Some(r) = rollout {
        raw["spec"]["rollout"] = r;
    }
    let generation = raw["metadata"]["generation"].as_i64().unwrap_or(1);
    raw["metadata"]["generation"] = json!(generation + 1);
    Ok(serde_json::from_value(raw)?)
}

pub async fn scale(
    object: &Path,
    programs: usize,
    nodes: usize,
    concurrency: usize,
    max_connections: usize,
) -> anyhow::Result<ScaleReport> {
    ensure!(programs >= 2, "at least 2 BpfPrograms (one is changed AllAtOnce, one Progressive)");
    agent::kernel::raise_nofile();
    let mut stages = vec![("process started".to_string(), mem())];
    let elf_b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(object)?);
    eprintln!("== scale {nodes} nodes × {programs} BpfPrograms: starting the fake agents");
    let mut fakes = FakeFleet::start(nodes)?;
    let node_store = fake_node_store(nodes);
    let (store, writer) = program_store(programs, &elf_b64)?;
    drop(elf_b64);
    let api = Arc::new(MockApi {
        feedback: Some(Feedback { store: store.clone(), writer: Mutex::new(writer) }),
        ..Default::default()
    });
    let client = mock_client(api.clone());
    let mut cfg = PoolConfig::new(
        fakes.port,
        operator::agent_tls::AgentTls::from_files(fakes.pki.client_files(), agent::tls::DEFAULT_SERVER_NAME)
            .expect("test PKI"),
    );
    cfg.call_timeout = Duration::from_secs(60);
    cfg.max_connections = max_connections;
    let ctx = {
        let mut ctx = Context::new(client.clone(), AgentPool::new(cfg), node_store, Arc::new(Metrics::new()), 1);
        ctx.recorder = Some(operator::events::Recorder::new(client.clone(), "bpfleet-operator"));
        ctx.history = operator::history::History::new(client, "bpfleet-system".into());
        Arc::new(ctx)
    };
    stages.push(("caches filled".into(), mem()));

    // 1. Cold start.
    eprintln!("   cold start");
    let t = Instant::now();
    operator::resync::initial_sync(&ctx).await;
    stages.push(("cold start: every agent listed".into(), mem()));
    let mut cold_passes = 0;
    loop {
        cold_passes += 1;
        let errors = reconcile_all(&ctx, &store, concurrency).await;
        ensure!(errors.is_empty(), "{} reconciles failed, e.g. {}", errors.len(), errors[0]);
        if store.state().iter().all(|p| ready(p)) {
            break;
        }
        ensure!(cold_passes < 5, "not every BpfProgram Ready after {cold_passes} passes");
    }
    let cold_ready_s = t.elapsed().as_secs_f64();
    let cold_dials = ctx.pool.dials();
    let cold_apply_calls = ctx.pool.apply_calls();
    eprintln!(
        "   every BpfProgram Ready after {cold_ready_s:.1} s ({cold_passes} passes, {cold_dials} dials, {cold_apply_calls} Apply calls)"
    );
    stages.push(("every BpfProgram Ready on every node".into(), mem()));

    // 2. A Watch stream to every agent.
    let (tx, mut rx) = tokio::sync::mpsc::channel(programs.max(1) * 4);
    let watches = tokio::spawn(operator::resync::watch_agents(ctx.clone(), tx.clone()));
    // A fleet larger than the connection budget gets none (resync::watch_agents).
    let expected = if nodes <= ctx.pool.config().max_connections { nodes as u64 } else { 0 };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut watches_open = 0;
    tokio::time::sleep(Duration::from_secs(6)).await;
    while watches_open < expected {
        ensure!(Instant::now() < deadline, "only {watches_open} of {expected} Watch streams opened");
        tokio::time::sleep(Duration::from_millis(500)).await;
        watches_open = fakes.stats()?.watches_open;
    }
    ensure!(fakes.stats()?.watches_open == expected, "Watch streams: {watches_open}, expected {expected}");
    stages.push(("a Watch stream open to every agent".into(), mem()));

    // 3. The first resync reads every agent in full.
    eprintln!("   first resync");
    let before = fakes.stats()?;
    let t = Instant::now();
    operator::resync::resync_once(&ctx, &store, &tx).await;
    let first_resync_ms = ms(t.elapsed());
    eprintln!("   first resync: {first_resync_ms:.0} ms");
    let after = fakes.stats()?;
    ensure!(after.lists_full - before.lists_full == nodes as u64, "the first resync must read every agent");
    let agent_bytes_per_node_full_list = (after.list_bytes - before.list_bytes) as f64 / nodes as f64;
    stages.push(("first resync (every agent read in full)".into(), mem()));

    // 4. At rest.
    eprintln!("   at rest");
    while rx.try_recv().is_ok() {}
    let api_before = api.by_kind.lock().unwrap().clone();
    let agents_before = fakes.stats()?;
    let t = Instant::now();
    operator::resync::resync_once(&ctx, &store, &tx).await;
    let resync_pass_ms = ms(t.elapsed());
    let agents_after = fakes.stats()?;
    let api_mid = api.by_kind.lock().unwrap().clone();
    let t = Instant::now();
    let errors = reconcile_all(&ctx, &store, concurrency).await;
    let requeue_pass_ms = ms(t.elapsed());
    ensure!(errors.is_empty(), "{} reconciles failed at rest, e.g. {}", errors.len(), errors[0]);
    let api_resync_pass = delta(&api_mid, &api_before);
    let api_requeue_pass = delta(&api.by_kind.lock().unwrap(), &api_mid);
    let mut drift = 0;
    while rx.try_recv().is_ok() {
        drift += 1;
    }
    ensure!(drift == 0, "{drift} reconciles asked for at rest");
    let per_min = |f: &dyn Fn(&str) -> bool| {
        let count = |m: &BTreeMap<String, usize>| m.iter().filter(|(k, _)| f(k)).map(|(_, v)| *v).sum::<usize>() as f64;
        count(&api_resync_pass) * RESYNCS_PER_MIN + count(&api_requeue_pass) * REQUEUES_PER_MIN
    };
    let calls = |s: &AgentStats| s.applies + s.removes + s.lists_full + s.lists_unchanged;
    let agent_calls_per_node_per_pass = (calls(&agents_after) - calls(&agents_before)) as f64 / nodes as f64;
    let agent_bytes_per_node_per_pass = (agents_after.list_bytes - agents_before.list_bytes) as f64 / nodes as f64;
    let agent_full_lists_at_rest = agents_after.lists_full - agents_before.lists_full;
    stages.push(("at rest: a resync and a requeue of everything".into(), mem()));
    let heap_at_rest_kib = (LIVE.load(Ordering::Relaxed) / 1024) as u64;
    let connections_at_rest = ctx.pool.open_connections();

    // 5. One spec change, AllAtOnce.
    eprintln!("   a spec change, AllAtOnce");
    let first = store.get(&reflector::ObjectRef::new("rss-0000")).context("rss-0000")?;
    let next = changed(&first, Some(json!({"strategy": "AllAtOnce"})))?;
    let applies_before = fakes.stats()?.applies;
    let t = Instant::now();
    reconcile(Arc::new(next.clone()), ctx.clone()).await.map_err(|e| anyhow::anyhow!("reconcile: {e}"))?;
    let change_all_at_once_s = t.elapsed().as_secs_f64();
    eprintln!("   AllAtOnce: {change_all_at_once_s:.2} s");
    let change_all_at_once_applies = fakes.stats()?.applies - applies_before;
    let status = store.get(&reflector::ObjectRef::new("rss-0000")).and_then(|p| p.status.clone());
    ensure!(
        change_all_at_once_applies == nodes as u64,
        "{change_all_at_once_applies} applies for {nodes} nodes; status: {}",
        serde_json::to_string(&status)?
    );

    // 6. One spec change, Progressive.
    eprintln!("   a spec change, Progressive");
    let second = store.get(&reflector::ObjectRef::new("rss-0001")).context("rss-0001")?;
    let rollout =
        json!({"steps": [{"nodes": 1}, {"nodes": "10%"}, {"nodes": "50%"}, {"nodes": "100%"}], "maxInFlight": "10%"});
    let mut next = changed(&second, Some(rollout))?;
    let applies_before = fakes.stats()?.applies;
    let t = Instant::now();
    let mut change_progressive_reconciles = 0;
    loop {
        change_progressive_reconciles += 1;
        reconcile(Arc::new(next.clone()), ctx.clone()).await.map_err(|e| anyhow::anyhow!("reconcile: {e}"))?;
        // What the status patch left in the cache, with this spec.
        let written = store.get(&reflector::ObjectRef::new("rss-0001")).context("rss-0001")?;
        next.status = written.status.clone();
        let phase = next.status.as_ref().and_then(|s| s.rollout.as_ref()).map(|r| r.phase);
        if phase == Some(crds::rollout::Phase::Complete) {
            break;
        }
        ensure!(change_progressive_reconciles < 50, "the rollout did not complete: {:?}", next.status);
    }
    let change_progressive_s = t.elapsed().as_secs_f64();
    eprintln!("   Progressive: {change_progressive_s:.2} s in {change_progressive_reconciles} reconciles");
    let change_progressive_applies = fakes.stats()?.applies - applies_before;
    ensure!(change_progressive_applies == nodes as u64, "{change_progressive_applies} applies for {nodes} nodes");
    stages.push(("after both spec changes".into(), mem()));

    watches.abort();
    let index_entries = ctx.index.entries();
    let peak_rss_kib = mem().hwm_kib;
    drop(fakes);
    Ok(ScaleReport {
        nodes,
        programs,
        machine: machine(),
        peak_rss_kib,
        stages,
        cold_ready_s,
        cold_passes,
        cold_dials,
        cold_apply_calls,
        first_resync_ms,
        resync_pass_ms,
        requeue_pass_ms,
        api_requests_per_min_at_rest: per_min(&|_| true),
        api_writes_per_min_at_rest: per_min(&is_write),
        api_resync_pass,
        api_requeue_pass,
        agent_calls_per_node_per_pass,
        agent_bytes_per_node_per_pass,
        agent_full_lists_at_rest,
        agent_bytes_per_node_full_list,
        change_all_at_once_s,
        change_all_at_once_applies,
        change_progressive_s,
        change_progressive_applies,
        change_progressive_reconciles,
        index_entries,
        watches_open,
        max_connections: ctx.pool.config().max_connections,
        connections_at_rest,
        heap_at_rest_kib,
    })
}
