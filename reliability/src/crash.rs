//! Crash trials: an agent is SIGKILLed in the middle of a random sequence of Apply and
//! Remove calls (and sometimes again while it recovers), restarted, sent the desired
//! state as an operator's resync would, and then the kernel must show exactly the
//! desired programs, and nothing at all once everything is removed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::tls::testpki::TestPki;
use proto::v1::agent_client::AgentClient;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::converge::{self, Desired, Node};
use crate::kernel::{self, Dirs, Veth};
use crate::owners::{self, Owner, TcBackend};
use crate::process::{self, AgentProc, Launch};
use crate::rng::Rng;
use agent::testing::findings::Findings;

/// The fault points of an apply, then of a removal (node-agent/src/fault.rs).
pub const FAULT_POINTS: &[&str] = &["after-attach", "after-commit", "remove-after-detach", "remove-after-unpin"];
/// The fault points of recovery (node-agent/src/fault.rs).
pub const RECOVERY_POINTS: &[&str] = &["recovery-after-relink", "recovery-before-sweep", "recovery-before-unpin"];

pub struct Config {
    pub seed: u64,
    pub trials: u64,
    /// Run only this trial of the seed (to replay a failure).
    pub only_trial: Option<u64>,
    pub agent_bin: PathBuf,
    pub objects: PathBuf,
    /// Longest random delay before a kill inside a call.
    pub max_kill_delay_ms: u64,
    /// Longest random delay before a kill of a starting (recovering) agent.
    pub max_recovery_kill_ms: u64,
}

#[derive(Clone, Copy, Debug)]
pub enum Step {
    Apply { owner: usize, variant: usize },
    Remove { owner: usize },
}

/// Where the kill lands.
#[derive(Clone, Debug)]
pub enum Kill {
    /// `delay_ms` after call `step` was sent.
    Delay { step: usize, delay_ms: u64 },
    /// When the first call from `step` on reaches fault point `point` (the agent is held
    /// there with BPFLEET_PAUSE, then SIGKILLed).
    AtPoint { point: &'static str, from_step: usize },
    /// The agent aborts by itself (BPFLEET_FAULT) at the first apply reaching `point`.
    Abort { point: &'static str },
    /// Between calls, after `step` answered.
    Idle { after_step: usize },
}

/// When a starting agent is killed.
#[derive(Clone, Copy, Debug)]
pub enum RecoveryKill {
    /// This many ms after its start.
    AfterMs(u64),
    /// At this percentage of the time agents of this run took to serve (recovery runs
    /// just before serving: most of a start is loading the binary and kernel BTF).
    Aimed(u64),
    /// The agent aborts by itself (BPFLEET_FAULT) when recovery reaches `point`; an
    /// agent whose recovery never gets there (nothing to adopt) is killed once serving.
    AtPoint(&'static str),
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub tc: TcBackend,
    pub steps: Vec<Step>,
    pub kill: Kill,
    /// Kills of the restarted agent while it starts and recovers.
    pub recovery_kills: Vec<RecoveryKill>,
}

impl Plan {
    pub fn generate(rng: &mut Rng, cfg: &Config, owners: usize, variants: &[usize]) -> Self {
        let tc = if rng.chance(50) { TcBackend::Tcx } else { TcBackend::Clsact };
        let mut state: Vec<Option<usize>> = vec![None; owners];
        let n = rng.range(2, 7) as usize;
        let mut steps = Vec::with_capacity(n);
        for _ in 0..n {
            let owner = rng.below(owners as u64) as usize;
            let step = match state[owner] {
                Some(cur) if rng.chance(35) => {
                    let _ = cur;
                    Step::Remove { owner }
                }
                Some(cur) if rng.chance(85) => {
                    // An upgrade (or, rarely, the same revision again: a no-op).
                    let others: Vec<usize> = (0..variants[owner]).filter(|v| *v != cur).collect();
                    Step::Apply { owner, variant: rng.pick(&others) }
                }
                Some(cur) => Step::Apply { owner, variant: cur },
                None => Step::Apply { owner, variant: rng.below(variants[owner] as u64) as usize },
            };
            if let Step::Apply { owner, variant } = step {
                state[owner] = Some(variant);
            } else {
                state[owner] = None;
            }
            steps.push(step);
        }
        // A removal's points only where a removal follows, so the kill has a call to land in.
        let points = |from: usize| -> &'static [&'static str] {
            if steps[from..].iter().any(|s| matches!(s, Step::Remove { .. })) {
                FAULT_POINTS
            } else {
                &FAULT_POINTS[..2]
            }
        };
        let kill = match rng.below(4) {
            0 => Kill::Delay { step: rng.below(n as u64) as usize, delay_ms: rng.range(0, cfg.max_kill_delay_ms) },
            1 => {
                let from_step = rng.below(n as u64) as usize;
                Kill::AtPoint { point: rng.pick(points(from_step)), from_step }
            }
            2 => Kill::Abort { point: rng.pick(points(0)) },
            _ => Kill::Idle { after_step: rng.below(n as u64) as usize },
        };
        let recovery_kill = |rng: &mut Rng| match rng.below(3) {
            0 => RecoveryKill::AfterMs(rng.range(0, cfg.max_recovery_kill_ms)),
            1 => RecoveryKill::Aimed(rng.range(30, 100)),
            _ => RecoveryKill::AtPoint(rng.pick(RECOVERY_POINTS)),
        };
        let recovery_kills = match rng.below(10) {
            0..=3 => vec![],
            4..=7 => vec![recovery_kill(rng)],
            _ => vec![recovery_kill(rng), recovery_kill(rng)],
        };
        Plan { tc, steps, kill, recovery_kills }
    }

    /// What the spec asks at the end of the sequence: the operator keeps asking for it,
    /// whether or not the agent lived to answer.
    pub fn desired(&self, owners: usize) -> Vec<Option<usize>> {
        let mut state = vec![None; owners];
        for s in &self.steps {
            match *s {
                Step::Apply { owner, variant } => state[owner] = Some(variant),
                Step::Remove { owner } => state[owner] = None,
            }
        }
        state
    }

    pub fn describe(&self, pool: &[Owner]) -> String {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|s| match *s {
                Step::Apply { owner, variant } => format!("apply {}@{variant}", pool[owner].uid),
                Step::Remove { owner } => format!("remove {}", pool[owner].uid),
            })
            .collect();
        format!(
            "tc={} steps=[{}] kill={:?} recovery_kills={:?}",
            self.tc.flag(),
            steps.join(", "),
            self.kill,
            self.recovery_kills
        )
    }
}

/// Where the kills of a recovering agent landed.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecoveryKills {
    /// Before recovery changed anything (the process was starting, or was reading).
    pub before: usize,
    /// While recovery was changing bpffs (some of it done, its end not logged).
    pub inside: usize,
    /// After recovery finished (serving, or about to).
    pub after: usize,
    /// Of `inside`: the agent aborted at a recovery fault point.
    pub at_point: usize,
}

/// One trial's outcome.
#[derive(Debug)]
pub struct TrialReport {
    pub index: u64,
    pub plan: String,
    /// Where the main kill landed, in words.
    pub landed: String,
    pub recovery: RecoveryKills,
    pub resync_rounds: usize,
    pub converged: bool,
    pub wrong: Vec<String>,
    pub leaks: Vec<String>,
    pub took: Duration,
}

#[derive(Debug, Default)]
pub struct RunReport {
    pub seed: u64,
    pub trials: Vec<TrialReport>,
}

impl RunReport {
    pub fn converged(&self) -> usize {
        self.trials.iter().filter(|t| t.converged).count()
    }

    pub fn leaks(&self) -> usize {
        self.trials.iter().map(|t| t.leaks.len()).sum()
    }

    pub fn summary(&self) -> String {
        let mut landed: std::collections::BTreeMap<String, usize> = Default::default();
        for t in &self.trials {
            let key = t.landed.split(':').next().unwrap_or("").to_string();
            *landed.entry(key).or_default() += 1;
        }
        format!(
            "seed {}: {} trials run, {} converged, {} leaks found; kills landed: {:?}; recovery kills before/inside/after recovery: {}/{}/{} ({} of them inside at a fault point)",
            self.seed,
            self.trials.len(),
            self.converged(),
            self.leaks(),
            landed,
            self.trials.iter().map(|t| t.recovery.before).sum::<usize>(),
            self.trials.iter().map(|t| t.recovery.inside).sum::<usize>(),
            self.trials.iter().map(|t| t.recovery.after).sum::<usize>(),
            self.trials.iter().map(|t| t.recovery.at_point).sum::<usize>(),
        )
    }
}

/// Run the trials of `cfg`, printing one line per trial.
pub fn run(cfg: &Config, work: &Path) -> anyhow::Result<RunReport> {
    kernel::mounts()?;
    let pki_dir = work.join("pki");
    std::fs::create_dir_all(&pki_dir)?;
    let pki = TestPki::generate(&pki_dir);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut report = RunReport { seed: cfg.seed, trials: vec![] };
    println!(
        "crash trials: seed {} ({} trials); replay one with --seed {} --only-trial N",
        cfg.seed, cfg.trials, cfg.seed
    );
    let indices: Vec<u64> = match cfg.only_trial {
        Some(i) => vec![i],
        None => (0..cfg.trials).collect(),
    };
    let mut ready_ms = Vec::new();
    for i in indices {
        let t = rt.block_on(trial(cfg, work, &pki, i, &mut ready_ms))?;
        println!(
            "trial {:>3}: {} | landed: {} | recovery kills before/inside/after: {}/{}/{} | resync rounds: {} | {} | {:.1}s",
            t.index,
            t.plan,
            t.landed,
            t.recovery.before,
            t.recovery.inside,
            t.recovery.after,
            t.resync_rounds,
            if t.converged && t.leaks.is_empty() {
                "converged, no leak".to_string()
            } else {
                format!("FAILED wrong={:?} leaks={:?}", t.wrong, t.leaks)
            },
            t.took.as_secs_f64()
        );
        report.trials.push(t);
    }
    println!("{}", report.summary());
    Ok(report)
}

/// What a step ended as.
enum Outcome {
    Answered,
    /// We killed the agent; whether the call had answered by then.
    Killed(String),
    /// The agent died by itself (a fault point).
    Died(String),
}

struct Trial<'a> {
    pool: &'a [Owner],
    launch: Launch<'a>,
    tls: ClientTlsConfig,
    seen: BTreeSet<u32>,
    dirs: &'a Dirs,
    dev: String,
    spawned: usize,
    work: &'a Path,
}

impl Trial<'_> {
    fn spawn(&mut self, env: Vec<(String, String)>) -> anyhow::Result<AgentProc> {
        self.spawned += 1;
        self.launch.env = env;
        self.launch.log = self.work.join(format!("agent-{}.log", self.spawned));
        AgentProc::spawn(&self.launch)
    }

    /// Remember the programs the kernel holds for this node now (pins and hooks), so a
    /// later check finds them even when nothing points at them any more.
    fn observe(&mut self) {
        self.seen.extend(kernel::pinned_programs_under(&self.dirs.root));
        if let Ok(h) = kernel::interface_hooks(&self.dev) {
            self.seen.extend(h.iter().map(|h| h.prog_id));
        }
    }

    async fn call(&mut self, client: &mut AgentClient<Channel>, step: Step) -> Result<(), String> {
        match step {
            Step::Apply { owner, variant } => {
                let req = self.pool[owner].variants[variant].request.clone();
                let r = client.apply(req).await.map_err(|e| e.message().to_string())?;
                if let Some(s) = r.into_inner().state {
                    self.seen.extend(s.attached.iter().map(|a| a.program_id));
                }
                Ok(())
            }
            Step::Remove { owner } => {
                client
                    .remove(process::remove_request(&self.pool[owner].uid))
                    .await
                    .map_err(|e| e.message().to_string())?;
                Ok(())
            }
        }
    }

    /// Run `step`; kill the agent after `delay`, or at a held fault point when `kill_at_pause`.
    async fn step(
        &mut self,
        agent: &mut AgentProc,
        client: &mut AgentClient<Channel>,
        step: Step,
        deadline: Option<Instant>,
        pause_dir: Option<(&Path, bool)>,
    ) -> Outcome {
        let mut c = client.clone();
        let pool = self.pool;
        let req = async move {
            match step {
                Step::Apply { owner, variant } => c
                    .apply(pool[owner].variants[variant].request.clone())
                    .await
                    .map(|r| r.into_inner().state.map(|s| s.attached.iter().map(|a| a.program_id).collect::<Vec<_>>()))
                    .map_err(|e| e.message().to_string()),
                Step::Remove { owner } => c
                    .remove(process::remove_request(&pool[owner].uid))
                    .await
                    .map(|_| None)
                    .map_err(|e| e.message().to_string()),
            }
        };
        tokio::pin!(req);
        let started = Instant::now();
        loop {
            tokio::select! {
                r = &mut req => {
                    return match r {
                        Ok(ids) => {
                            self.seen.extend(ids.into_iter().flatten());
                            Outcome::Answered
                        }
                        Err(e) => {
                            // A fault point aborts the agent: the call fails with a broken connection.
                            let died = kernel::settle(3, || agent.exited());
                            if died { Outcome::Died(format!("aborted inside {}", describe(pool, step))) }
                            else { Outcome::Died(format!("call failed without a crash: {e}")) }
                        }
                    };
                }
                _ = tokio::time::sleep(Duration::from_millis(1)) => {
                    if let Some(d) = deadline && Instant::now() >= d {
                        agent.kill9();
                        let ms = started.elapsed().as_millis();
                        return Outcome::Killed(format!("inside {} {ms} ms after it was sent", describe(pool, step)));
                    }
                    if let Some((dir, kill)) = pause_dir
                        && let Some(flag) = held(dir)
                    {
                        if kill {
                            agent.kill9();
                            let _ = std::fs::remove_file(&flag);
                            return Outcome::Killed(format!("at {} of {}", flag.file_name().unwrap_or_default().to_string_lossy(), describe(pool, step)));
                        }
                        let _ = std::fs::remove_file(&flag);
                    }
                }
            }
        }
    }
}

fn describe(pool: &[Owner], step: Step) -> String {
    match step {
        Step::Apply { owner, variant } => format!("apply {}@{variant}", pool[owner].uid),
        Step::Remove { owner } => format!("remove {}", pool[owner].uid),
    }
}

/// A flag file of an agent held at a fault point.
fn held(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).next()
}

/// The median of the start-to-serving times seen so far (ms).
fn median(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(s.len() / 2).copied().unwrap_or(200)
}

async fn trial(
    cfg: &Config,
    work: &Path,
    pki: &TestPki,
    index: u64,
    ready_ms: &mut Vec<u64>,
) -> anyhow::Result<TrialReport> {
    let started = Instant::now();
    let mut rng = crate::rng::for_trial(cfg.seed, index);
    let tag = format!("{}x{index}", std::process::id() % 10000);
    let veth = Veth::new(&tag)?;
    let trial_work = work.join(format!("trial-{index}"));
    std::fs::create_dir_all(&trial_work)?;
    let dirs = Dirs::new(&tag, &trial_work);
    let _ = std::fs::remove_dir_all(&dirs.root);
    // The plan does not depend on the backend's pool, only on owner and variant counts.
    let pool_tcx = owners::pool(&cfg.objects, &veth.host, TcBackend::Tcx)?;
    let counts: Vec<usize> = pool_tcx.iter().map(|o| o.variants.len()).collect();
    let plan = Plan::generate(&mut rng, cfg, pool_tcx.len(), &counts);
    let pool = owners::pool(&cfg.objects, &veth.host, plan.tc)?;
    let desired_idx = plan.desired(pool.len());
    let pause_dir = trial_work.join("pause");
    std::fs::create_dir_all(&pause_dir)?;

    let mut t = Trial {
        pool: &pool,
        launch: Launch {
            bin: &cfg.agent_bin,
            pki,
            dirs: &dirs,
            tc_backend: plan.tc.flag(),
            env: vec![],
            log: PathBuf::new(),
        },
        tls: pki.client_config(),
        seen: BTreeSet::new(),
        dirs: &dirs,
        dev: veth.host.clone(),
        spawned: 0,
        work: &trial_work,
    };

    // 1. The sequence, with the kill.
    let env = match &plan.kill {
        Kill::AtPoint { point, .. } => vec![("BPFLEET_PAUSE".to_string(), format!("{point}:{}", pause_dir.display()))],
        Kill::Abort { point } => vec![("BPFLEET_FAULT".to_string(), point.to_string())],
        _ => vec![],
    };
    let mut agent = t.spawn(env)?;
    let mut client = agent.ready(&t.tls).await?;
    ready_ms.push(agent.started.elapsed().as_millis() as u64);
    let mut landed = None;
    // A delay kill's moment, fixed when its step is sent: it may land in a later call.
    let mut deadline = None;
    for (k, &step) in plan.steps.iter().enumerate() {
        let pause = match plan.kill {
            Kill::Delay { step, delay_ms } if step == k => {
                deadline = Some(Instant::now() + Duration::from_millis(delay_ms));
                None
            }
            Kill::AtPoint { from_step, .. } => Some((pause_dir.as_path(), k >= from_step)),
            _ => None,
        };
        match t.step(&mut agent, &mut client, step, deadline, pause).await {
            Outcome::Answered => {}
            Outcome::Killed(w) | Outcome::Died(w) => {
                landed = Some(w);
                break;
            }
        }
        if matches!(plan.kill, Kill::Idle { after_step } if after_step == k) {
            agent.kill9();
            landed = Some(format!("idle: between calls, after step {k}"));
            break;
        }
    }
    let landed = match landed {
        Some(w) if w.starts_with("inside") || w.starts_with("at ") || w.starts_with("aborted") => {
            format!("inside: {w}")
        }
        Some(w) => w,
        None => {
            if let Some(d) = deadline {
                tokio::time::sleep_until(d.into()).await;
            }
            agent.kill9();
            format!("after: no call reached the kill ({:?}); killed after the sequence", plan.kill)
        }
    };
    drop(client);
    drop(agent);
    t.observe();

    // 2. Kills while the next agent starts and recovers.
    let mut recovery = RecoveryKills::default();
    for kill in &plan.recovery_kills {
        let before = kernel::tree(&dirs.root);
        let mut a = match *kill {
            RecoveryKill::AtPoint(point) => {
                let mut a = t.spawn(vec![("BPFLEET_FAULT".to_string(), point.to_string())])?;
                kernel::settle(30, || a.exited() || a.log_text().contains("recovered state from bpffs"));
                a
            }
            RecoveryKill::AfterMs(ms) => {
                let a = t.spawn(vec![])?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                a
            }
            RecoveryKill::Aimed(percent) => {
                let a = t.spawn(vec![])?;
                tokio::time::sleep(Duration::from_millis(median(ready_ms) * percent / 100)).await;
                a
            }
        };
        a.kill9();
        if a.log_text().contains("BPFLEET_FAULT=") {
            recovery.inside += 1;
            recovery.at_point += 1;
        } else if a.log_text().contains("recovered state from bpffs") {
            recovery.after += 1;
        } else if kernel::tree(&dirs.root) != before {
            recovery.inside += 1;
        } else {
            recovery.before += 1;
        }
        t.observe();
    }

    // 3. Restart and resync, as the operator would: Apply what is desired, Remove the rest.
    let mut agent = t.spawn(vec![])?;
    let mut client = agent.ready(&t.tls).await?;
    ready_ms.push(agent.started.elapsed().as_millis() as u64);
    let desired: Desired = pool.iter().zip(&desired_idx).map(|(o, v)| (o, v.map(|v| &o.variants[v]))).collect();
    let mut rounds = 0;
    let mut findings = Findings::default();
    let mut call_errors = vec![];
    for round in 1..=3 {
        rounds = round;
        for (i, want) in desired_idx.iter().enumerate() {
            let step = match want {
                Some(v) => Step::Apply { owner: i, variant: *v },
                None => Step::Remove { owner: i },
            };
            if let Err(e) = t.call(&mut client, step).await {
                call_errors.push(format!("round {round}: {}: {e}", describe(&pool, step)));
            }
        }
        let listed = process::list(&mut client).await?;
        let node =
            Node { root: &dirs.root, state: &dirs.state, dev: &veth.host, agent_pid: Some(agent.pid()), seen: &t.seen };
        findings = converge::check(&node, &desired, Some(&listed))?;
        if findings.is_clean() {
            break;
        }
    }
    let converged = findings.wrong.is_empty();
    let mut wrong = findings.wrong;
    wrong.extend(call_errors);
    let mut leaks = findings.leaks;

    // 4. Remove everything: the node must be as before the trial.
    for (i, o) in pool.iter().enumerate() {
        if let Err(e) = t.call(&mut client, Step::Remove { owner: i }).await {
            wrong.push(format!("final remove of {}: {e}", o.uid));
        }
    }
    let listed = process::list(&mut client).await?;
    let none: Desired = pool.iter().map(|o| (o, None)).collect();
    let node =
        Node { root: &dirs.root, state: &dirs.state, dev: &veth.host, agent_pid: Some(agent.pid()), seen: &t.seen };
    let after = converge::check(&node, &none, Some(&listed))?;
    wrong.extend(after.wrong.into_iter().map(|w| format!("after removing everything: {w}")));
    leaks.extend(after.leaks.into_iter().map(|w| format!("after removing everything: {w}")));
    leaks.extend(converge::agent_holds_nothing(agent.pid()));
    drop(client);
    drop(agent);
    drop(veth);
    // With the agent and the interface gone, nothing this trial ever loaded may remain.
    let seen = t.seen.clone();
    if !kernel::settle(3, || seen.iter().all(|id| !kernel::program_loaded(*id))) {
        let left: Vec<u32> = seen.iter().copied().filter(|id| kernel::program_loaded(*id)).collect();
        leaks.push(format!("programs {left:?} outlive the agent and the interface"));
    }
    let plan_text = plan.describe(&pool);
    drop(t);
    drop(dirs);
    let ok = converged && wrong.is_empty() && leaks.is_empty();
    if ok {
        let _ = std::fs::remove_dir_all(&trial_work);
    }
    Ok(TrialReport {
        index,
        plan: plan_text,
        landed,
        recovery,
        resync_rounds: rounds,
        converged: converged && wrong.is_empty(),
        wrong,
        leaks,
        took: started.elapsed(),
    })
}
