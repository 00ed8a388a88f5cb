//! A progressive rollout over real agents: how long each step takes.

use super::*;

/// The rollout the rollout part measures: a canary, 10%, 50%, everything; 10% in flight.
/// Every step ends in a pause without a duration, so each reconcile carries out exactly one
/// step and its time can be read; the bench resumes it with `spec.rollout.resume`.
pub(crate) const ROLLOUT_STEPS: [&str; 4] = ["1", "10%", "50%", "100%"];
pub(crate) const ROLLOUT_IN_FLIGHT: &str = "10%";

/// One step of the measured rollout.
pub(crate) struct StepTime {
    pub(crate) step: usize,
    /// Nodes that switched revision in this step.
    pub(crate) switched: usize,
    /// Groups of at most maxInFlight nodes sent at once.
    pub(crate) batches: usize,
    /// The reconcile that carried the step out, from its call to its return.
    pub(crate) wall: Duration,
    /// The agents' critical path: per batch the slowest agent's own apply, summed.
    pub(crate) agents: Duration,
}

pub(crate) fn rollout_spec(step_pause: bool, resume: Option<(&str, usize)>) -> Value {
    let steps: Vec<Value> = ROLLOUT_STEPS
        .iter()
        .map(|n| {
            let nodes = n.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(*n));
            if step_pause { json!({"nodes": nodes, "pause": {}}) } else { json!({"nodes": nodes}) }
        })
        .collect();
    let mut r = json!({"steps": steps, "maxInFlight": ROLLOUT_IN_FLIGHT});
    if let Some((rev, step)) = resume {
        r["resume"] = json!({"revision": rev, "step": step});
    }
    r
}

pub(crate) async fn rollout_steps(
    count: usize,
    agent_bin: &Path,
    v1: &[u8],
    v2: &[u8],
) -> anyhow::Result<Vec<StepTime>> {
    ensure!(sh(&["id", "-u"])?.trim() == "0", "the rollout part loads XDP programs: run as root (or --skip-rollout)");
    eprintln!("== rollout: starting {count} agents");
    let mut fleet = Fleet::start(agent_bin, count)?;
    fleet.wait_ready().await?;
    let api = Arc::new(MockApi { record: true, ..Default::default() });
    let client = mock_client(api.clone());
    let pool = AgentPool::new(fleet.pool_config());
    let all: Vec<&RealAgent> = fleet.agents.iter().collect();
    let ctx = context(client, pool, all.iter().map(|a| node(&a.name, IpAddr::V4(a.ip))).collect());
    let name = format!("opbench-rollout-{}", std::process::id());
    let uid = format!("opbench-rollout-uid-{}", std::process::id());
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut raw = program_json(&name, &uid, &b64(v1), "lo");
    raw["spec"]["rollout"] = rollout_spec(true, None);
    let mut obj: BpfProgram = serde_json::from_value(raw.clone())?;
    let rollout_of = |status: &Value| status["rollout"].clone();
    // The first install goes everywhere at once; settle it.
    for pass in 0.. {
        reconcile(Arc::new(obj.clone()), ctx.clone()).await.map_err(|e| anyhow::anyhow!("reconcile: {e}"))?;
        let (_, status) = api.take_status(&name).context("no status written")?;
        let done = rollout_of(&status)["phase"] == "Complete";
        obj.status = Some(serde_json::from_value(status)?);
        if done {
            break;
        }
        ensure!(pass < 10, "the first install did not complete: {:?}", obj.status);
    }
    // The new revision.
    raw["spec"]["bytecode"]["inline"] = json!(b64(v2));
    raw["metadata"]["generation"] = json!(2);
    let order = {
        let ranked: Vec<operator::rollout::Ranked<'_>> =
            all.iter().map(|a| operator::rollout::Ranked { name: &a.name, zone: None }).collect();
        operator::rollout::order(&uid, &ranked)
    };
    let in_flight = (count * 10 / 100).max(1);
    let mut steps = Vec::new();
    let mut status_obj = obj.status.clone();
    for step in 1..=ROLLOUT_STEPS.len() {
        let revision = status_obj.as_ref().and_then(|s| s.rollout.as_ref()).and_then(|r| r.update_revision.clone());
        // Step 1 starts with the spec change; each later one with a resume of the one before.
        raw["spec"]["rollout"] = match (&revision, step) {
            (Some(rev), s) if s > 1 => rollout_spec(true, Some((rev, s - 1))),
            _ => rollout_spec(true, None),
        };
        raw["metadata"]["generation"] = json!(1 + step);
        let mut next: BpfProgram = serde_json::from_value(raw.clone())?;
        next.status = status_obj.clone();
        let before = scrape_all(&all).await?;
        let t = Instant::now();
        reconcile(Arc::new(next), ctx.clone()).await.map_err(|e| anyhow::anyhow!("reconcile: {e}"))?;
        let wall = t.elapsed();
        let (_, status) = api.take_status(&name).context("no status written")?;
        let after = scrape_all(&all).await?;
        let r = rollout_of(&status);
        ensure!(r["failedNodes"].as_u64() == Some(0), "the rollout failed: {r}");
        ensure!(r["step"].as_u64() == Some(step as u64), "expected step {step}: {r}");
        // Who switched, in rollout order, and each one's own apply time.
        let applied: HashMap<&str, Duration> = all
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, ((_, c0), (_, c1)))| c1 > c0)
            .map(|(a, ((s0, _), (s1, _)))| (a.name.as_str(), Duration::from_secs_f64((s1 - s0).max(0.0))))
            .collect();
        let switched: Vec<Duration> = order.iter().filter_map(|n| applied.get(n.as_str()).copied()).collect();
        let agents = switched.chunks(in_flight).map(|b| b.iter().copied().max().unwrap_or_default()).sum();
        eprintln!(
            "   step {step}: {} nodes in {:.1} ms (agents' critical path {:.1} ms)",
            switched.len(),
            ms(wall),
            ms(agents)
        );
        steps.push(StepTime {
            step,
            switched: switched.len(),
            batches: switched.len().div_ceil(in_flight),
            wall,
            agents,
        });
        status_obj = Some(serde_json::from_value(status)?);
    }
    let r = status_obj.as_ref().and_then(|s| s.rollout.as_ref()).context("no rollout status")?;
    ensure!(r.phase == crds::rollout::Phase::Complete, "the rollout did not complete: {r:?}");
    ensure!(r.updated_nodes as usize == count, "{} of {count} nodes updated", r.updated_nodes);
    // Remove it everywhere before the fleet goes.
    let mut deleting: BpfProgram = serde_json::from_value(raw)?;
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    reconcile(Arc::new(deleting), ctx.clone()).await.map_err(|e| anyhow::anyhow!("delete: {e}"))?;
    drop(fleet);
    Ok(steps)
}

pub(crate) fn print_rollout(count: usize, steps: &[StepTime]) {
    println!(
        "### A progressive rollout over {count} real agents
"
    );
    println!(
        "Steps {} of {count} nodes, maxInFlight {ROLLOUT_IN_FLIGHT}, one reconcile per step.\n",
        ROLLOUT_STEPS.join(" → ")
    );
    println!(
        "| step | nodes switched | batches | step time (ms) | agents' critical path (ms) | operator share (ms) | per node (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let (mut wall, mut agents, mut nodes) = (Duration::ZERO, Duration::ZERO, 0);
    for s in steps {
        let share = s.wall.saturating_sub(s.agents);
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} |",
            s.step,
            s.switched,
            s.batches,
            ms(s.wall),
            ms(s.agents),
            ms(share),
            ms(share) / s.switched.max(1) as f64
        );
        wall += s.wall;
        agents += s.agents;
        nodes += s.switched;
    }
    let share = wall.saturating_sub(agents);
    println!(
        "| all | {nodes} | {} | {:.1} | {:.1} | {:.1} | {:.2} |\n",
        steps.iter().map(|s| s.batches).sum::<usize>(),
        ms(wall),
        ms(agents),
        ms(share),
        ms(share) / nodes.max(1) as f64
    );
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile.
pub(crate) fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub(crate) fn print_latency(rows: &[LatencyRow], iterations: usize, warm: &LatencyRow) {
    // One agent alone: the kernel's (and the agent's) time for one apply, uncontended.
    let isolated = rows
        .iter()
        .find(|r| r.agents == 1)
        .map(|r| pct(r.samples.iter().map(|s| ms(s.slowest_apply())).collect(), 50.0));
    println!("### Create → Ready with N real agents ({iterations} iterations each, p50 / p90)\n");
    println!(
        "| N agents | Create→Ready | slowest agent's apply | operator share | share of total | passes | N × isolated apply | total ÷ (N × isolated) | delete (Remove ×N) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let col = |f: &dyn Fn(&Sample) -> f64| {
            let v: Vec<f64> = r.samples.iter().map(f).collect();
            (pct(v.clone(), 50.0), pct(v, 90.0))
        };
        let total = col(&|s| ms(s.total));
        let apply = col(&|s| ms(s.slowest_apply()));
        let share = col(&|s| ms(s.operator_share()));
        let frac = col(&|s| 100.0 * s.operator_share().as_secs_f64() / s.total.as_secs_f64());
        let cleanup = col(&|s| ms(s.cleanup));
        let passes = r.samples.iter().map(|s| s.passes).max().unwrap_or(0);
        let (seq, ratio) = match isolated {
            Some(iso) => {
                let seq = iso * r.agents as f64;
                (format!("{seq:.1} ms"), format!("{:.2}", total.0 / seq))
            }
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1}% / {:.1}% | {passes} | {seq} | {ratio} | {:.1} / {:.1} ms |",
            r.agents, total.0, total.1, apply.0, apply.1, share.0, share.1, frac.0, frac.1, cleanup.0, cleanup.1
        );
    }
    println!();
    if let Some(w) = warm.samples.first() {
        println!(
            "Not counted: the warm-up, the first Create→Ready on all {} agents (new mTLS connections, each agent's \
             first parse of the kernel's BTF): {:.1} ms, slowest agent's apply {:.1} ms.\n",
            warm.agents,
            ms(w.total),
            ms(w.slowest_apply())
        );
    }
}
