//! Progressive rollout: which revision each target node must run now, and where the
//! rollout stands. Pure: the controller feeds it what the agents report and the previous
//! `status.rollout`, carries out the assignment (`plan`) and writes the new status.
//!
//! The model, for `update` (the spec's revision) over `stable` (the last revision every
//! target ran healthy):
//! - Nodes are ranked once per program (a hash of program uid and node name, zones taken
//!   in turn), so the canary is the same node after an operator restart. Nodes that
//!   already run `update` rank first.
//! - Step *i* wants its first `steps[i].nodes` ranked nodes on `update`; at most
//!   `maxInFlight` of them are switching at once. A step is done when all of them run it
//!   healthy; then its pause (if any) runs, then the next step starts.
//! - More than `failureThreshold` failed nodes, or a step over its deadline, stop the
//!   rollout: `Halt` sends `update` to no further node; `Rollback` sends every node back
//!   to `stable`. Both stick for this `update` until the spec changes or a resume.
//! - Nodes the rollout has not reached keep what they run, untouched. A node with nothing
//!   (new, or repaired) gets `stable`.
//! - A first install (no node runs another revision) goes everywhere at once, as a
//!   DaemonSet's pods do on creation.
//! - A spec whose revision is `stable` (a revert) goes to every node at once, bounded by
//!   `maxInFlight`; a new spec during a rollout starts a new rollout from step 1 over the
//!   same `stable` (nodes already on the superseded revision keep it until reached).

use std::collections::BTreeMap;
use std::time::Duration;

use crds::Health;
use crds::rollout::{Action, Amount, AnalysisStatus, OnFailure, Phase, RolloutSpec, RolloutStatus, Strategy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::ascending::{Ascending, AscendingSet};
use crate::plan::Observed;

pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);

/// What ends a step's pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseUntil {
    Elapsed(Duration),
    Resumed,
}

/// One step, resolved against the number of target nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub nodes: usize,
    pub pause: Option<PauseUntil>,
}

/// `spec.rollout` with its defaults applied, for `targets` nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub strategy: Strategy,
    pub steps: Vec<Step>,
    pub max_in_flight: usize,
    pub failure_threshold: usize,
    pub on_failure: OnFailure,
    pub deadline: Duration,
    pub paused: bool,
    /// (revision, 1-based step) the rollout may go past.
    pub resume: Option<(String, usize)>,
}

impl Settings {
    /// Invalid amounts were refused by validation before; here they fall back to the
    /// defaults rather than fail.
    pub fn resolve(spec: Option<&RolloutSpec>, targets: usize) -> Settings {
        let default = RolloutSpec::default();
        let spec = spec.unwrap_or(&default);
        let mut steps: Vec<Step> = spec
            .steps
            .iter()
            .filter_map(|s| {
                let nodes = Amount::parse(&s.nodes).ok()?.of_up(targets);
                let pause = s.pause.as_ref().map(|p| match &p.duration {
                    Some(d) => PauseUntil::Elapsed(crds::rollout::parse_duration(d).unwrap_or_default()),
                    None => PauseUntil::Resumed,
                });
                Some(Step { nodes, pause })
            })
            .collect();
        if steps.last().is_none_or(|s| s.nodes < targets) {
            steps.push(Step { nodes: targets, pause: None });
        }
        let max_in_flight = spec
            .max_in_flight
            .as_ref()
            .and_then(|m| Amount::parse(m).ok())
            .map_or(1, |a| a.of_down_at_least_one(targets));
        Settings {
            strategy: spec.strategy,
            steps,
            max_in_flight,
            failure_threshold: spec.failure_threshold.max(0) as usize,
            on_failure: spec.on_failure,
            deadline: spec.progress_deadline_seconds.map_or(DEFAULT_DEADLINE, |s| Duration::from_secs(s.max(1) as u64)),
            paused: spec.paused,
            resume: spec.resume.as_ref().map(|r| (r.revision.clone(), r.step.max(0) as usize)),
        }
    }
}

/// A target node, for ranking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranked<'a> {
    pub name: &'a str,
    pub zone: Option<&'a str>,
}

fn rank_key(seed: &str, name: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    h.finalize().into()
}

/// The order in which nodes get a new revision: the same for a program whatever the
/// operator's restarts, zones taken in turn so the first nodes spread across zones.
pub fn order(seed: &str, nodes: &[Ranked<'_>]) -> Vec<String> {
    let mut zones: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in nodes {
        zones.entry(n.zone.unwrap_or("")).or_default().push(n.name);
    }
    let mut queues: Vec<(_, Vec<&str>)> = zones
        .into_iter()
        .map(|(zone, mut members)| {
            members.sort_by_cached_key(|m| rank_key(seed, m));
            (rank_key(seed, zone), members)
        })
        .collect();
    queues.sort_by_key(|q| q.0);
    let mut out = Vec::with_capacity(nodes.len());
    let mut i = 0;
    while out.len() < nodes.len() {
        for (_, q) in &queues {
            if let Some(n) = q.get(i) {
                out.push(n.to_string());
            }
        }
        i += 1;
    }
    out
}

/// Everything a rollout decision looks at.
pub struct Input<'a> {
    /// The spec's revision.
    pub update: &'a str,
    /// Target nodes in rollout order (`order`).
    pub order: &'a [String],
    pub observed: &'a BTreeMap<String, Observed>,
    /// Nodes whose last apply of `update` failed, with the error to show.
    pub failed: &'a BTreeMap<String, String>,
    /// Nodes whose agent cannot be reached: they hold no step up and take no slot of
    /// `maxInFlight`; they get their revision when they answer again.
    pub unreachable: &'a std::collections::BTreeSet<String>,
    /// `status.rollout` as last written.
    pub previous: Option<&'a RolloutStatus>,
    pub settings: &'a Settings,
    /// Nodes that run `update` healthy and passed the health gates; `None`: no gates (a
    /// node counts as soon as it runs `update` healthy).
    pub gated: Option<&'a std::collections::BTreeSet<String>>,
    /// What the health gates wait for, for the message.
    pub gate_wait: Option<&'a str>,
    /// The Prometheus gate at each step's end.
    pub analysis: Option<&'a crds::health::PrometheusGate>,
    /// A measurement of it taken now (when the last decision asked for one).
    pub measurement: Option<Result<f64, String>>,
    /// An action (`bpfleet.dev/rollout-action`) to carry out now.
    pub action: Option<Action>,
    pub now: Timestamp,
}

/// Which revision each target node must run now (`None`: nothing yet), and the status.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub assign: BTreeMap<String, Option<String>>,
    pub status: RolloutStatus,
    /// Look again after this long (a pause or a deadline ends) even if nothing changes.
    pub wake: Option<Duration>,
    /// Take a measurement of the Prometheus gate and decide again with it.
    pub measure: bool,
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn since(then: Option<&Time>, now: Timestamp) -> Option<Duration> {
    let then = then?.0;
    now.duration_since(then).try_into().ok()
}

struct Eval<'a> {
    input: &'a Input<'a>,
}

impl Eval<'_> {
    fn runs(&self, node: &str, rev: &str) -> bool {
        self.input.observed.get(node).is_some_and(|o| o.revision == rev)
    }

    /// Runs `update` healthy and passed the health gates.
    fn updated(&self, node: &str) -> bool {
        self.input.observed.get(node).is_some_and(|o| o.revision == self.input.update && o.health == Health::Healthy)
            && self.input.gated.is_none_or(|g| g.contains(node))
    }

    fn failed(&self, node: &str) -> bool {
        self.input.failed.contains_key(node)
            || self
                .input
                .observed
                .get(node)
                .is_some_and(|o| o.revision == self.input.update && o.health != Health::Healthy)
    }

    /// What a node the rollout does not move runs: what it runs now if healthy, else
    /// `stable` (nothing when there is none yet).
    fn hold(&self, node: &str, stable: Option<&str>) -> Option<String> {
        match self.input.observed.get(node) {
            Some(o) if o.revision == self.input.update => Some(o.revision.clone()),
            Some(o) if o.health == Health::Healthy => Some(o.revision.clone()),
            _ => stable.map(str::to_string),
        }
    }

    fn away(&self, node: &str) -> bool {
        self.input.unreachable.contains(node)
    }

    /// Nodes that already run `update` first (any health), then the reachable rest in
    /// order, unreachable ones last.
    fn effective_order(&self) -> Vec<&str> {
        let (on, off): (Vec<&String>, Vec<&String>) =
            self.input.order.iter().partition(|n| self.runs(n, self.input.update));
        let (here, away): (Vec<&String>, Vec<&String>) = off.into_iter().partition(|n| !self.away(n));
        on.into_iter().chain(here).chain(away).map(String::as_str).collect()
    }

    /// A step's node needs nothing more: it runs `update` healthy, or failed it (within
    /// the threshold, retried with backoff; an agent away longer than its grace period
    /// counts as failed). A node whose agent is away for less holds its step up.
    fn done(&self, node: &str) -> bool {
        self.updated(node) || self.failed(node)
    }

    /// `want` for the first nodes of `cohort` that are not on it yet, at most
    /// `max_in_flight` switching at once; everything else held.
    fn switch(&self, cohort: &[&str], want: &str, stable: Option<&str>) -> BTreeMap<String, Option<String>> {
        let mut assign: BTreeMap<String, Option<String>> =
            self.input.order.iter().map(|n| (n.clone(), self.hold(n, stable))).collect();
        // A node in its health gate window is still switching: it keeps its slot.
        let settled = |n: &str| {
            if want == self.input.update {
                self.updated(n) || self.failed(n)
            } else {
                self.input.observed.get(n).is_some_and(|o| o.revision == want && o.health == Health::Healthy)
            }
        };
        let mut budget = self.input.settings.max_in_flight;
        for n in cohort {
            if settled(n) {
                assign.insert(n.to_string(), Some(want.to_string()));
                continue;
            }
            if budget == 0 || self.away(n) {
                continue;
            }
            budget -= 1;
            assign.insert(n.to_string(), Some(want.to_string()));
        }
        assign
    }
}

fn failed_summary(input: &Input<'_>, failed: &[&str]) -> String {
    let mut parts: Vec<String> = failed
        .iter()
        .take(3)
        .map(|n| match input.failed.get(*n) {
            Some(why) => format!("{n}: {why}"),
            None => format!("{n}: unhealthy after the apply"),
        })
        .collect();
    if failed.len() > parts.len() {
        parts.push(format!("and {} more", failed.len() - parts.len()));
    }
    parts.join("; ")
}

/// Decide one rollout step.
pub fn decide(input: &Input<'_>) -> Decision {
    let e = Eval { input };
    let s = input.settings;
    let update = input.update;
    let prev = input.previous;
    let same = prev.is_some_and(|p| p.update_revision.as_deref() == Some(update));
    let stable_owned = prev.and_then(|p| p.stable_revision.clone());
    let stable = stable_owned.as_deref();
    let total_steps = s.steps.len();
    let targets = input.order.len();
    let failed: Vec<&str> = input.order.iter().map(String::as_str).filter(|n| e.failed(n)).collect();
    let updated = input.order.iter().filter(|n| e.updated(n)).count();
    let mut status = RolloutStatus {
        phase: Phase::Progressing,
        stable_revision: stable_owned.clone(),
        update_revision: Some(update.to_string()),
        step: 1,
        total_steps: total_steps as i32,
        updated_nodes: updated as i32,
        ready_nodes: updated as i32,
        failed_nodes: failed.len() as i32,
        ..Default::default()
    };
    // What actions did to this revision's rollout stays with it (a new revision starts
    // clean), and a new action adds to it.
    let mut prev_phase = if same { prev.map(|p| p.phase) } else { None };
    let mut step = if same { prev.map_or(1, |p| p.step.max(1) as usize).min(total_steps) } else { 1 };
    // The progress deadline runs from the step's last progress: one more node counting as
    // updated starts it again (as a Deployment's progressDeadlineSeconds does).
    let progressed = prev.is_some_and(|p| updated as i32 > p.ready_nodes);
    let mut step_start = if same && !progressed { prev.and_then(|p| p.step_start_time.clone()) } else { None };
    let mut pause_start = if same { prev.and_then(|p| p.pause_start_time.clone()) } else { None };
    let mut analysis = if same { prev.and_then(|p| p.analysis.clone()) } else { None };
    if same && let Some(p) = prev {
        status.promoted_step = p.promoted_step;
        status.promoted_full = p.promoted_full;
        status.aborted = p.aborted;
        status.last_action.clone_from(&p.last_action);
        status.last_action_time.clone_from(&p.last_action_time);
    }
    if let Some(action) = input.action {
        status.last_action = Some(action.as_str().to_string());
        status.last_action_time = Some(time(input.now));
        match action {
            Action::Resume | Action::Promote => status.promoted_step = Some(step as i32),
            Action::PromoteFull => status.promoted_full = true,
            Action::Abort => status.aborted = true,
            Action::Retry => {
                status.aborted = false;
                status.promoted_step = None;
                status.promoted_full = false;
                prev_phase = None;
                step = 1;
                step_start = None;
                pause_start = None;
                analysis = None;
            }
        }
    }
    let promoted = |st: usize, status: &RolloutStatus| status.promoted_step.is_some_and(|p| p as usize >= st);
    let all: Vec<&str> = input.order.iter().map(String::as_str).collect();
    let pending = targets.saturating_sub(updated + failed.len());
    // The end of a rollout: Complete when every node counts, Degraded when every node was
    // tried and some failed (they are retried with backoff).
    let settle = |mut status: RolloutStatus| {
        status.step = total_steps as i32;
        if updated == targets {
            status.phase = Phase::Complete;
            status.stable_revision = Some(update.to_string());
            status.message = Some(format!("{updated}/{targets} nodes run revision {update}"));
        } else {
            // Every node was tried: the revision is what the fleet runs now, the failed
            // nodes tolerated (and retried). Later passes take the no-step path: a node
            // failing or joining later is no reason to stop or roll back the fleet.
            status.phase = Phase::Degraded;
            status.stable_revision = Some(update.to_string());
            status.message = Some(format!(
                "{updated}/{targets} nodes run revision {update}; {} failed and are retried: {}",
                failed.len(),
                failed_summary(input, &failed)
            ));
        }
        status
    };
    let everyone = || -> BTreeMap<String, Option<String>> {
        input.order.iter().map(|n| (n.clone(), Some(update.to_string()))).collect()
    };
    let hold_all = |e: &Eval<'_>| -> BTreeMap<String, Option<String>> {
        input.order.iter().map(|n| (n.clone(), e.hold(n, stable))).collect()
    };
    // Take the revision off the nodes: back to `stable`, or off entirely when none ran
    // everywhere yet.
    let back = |e: &Eval<'_>| -> BTreeMap<String, Option<String>> {
        all.iter()
            .map(|n| match stable {
                Some(st) => (n.to_string(), Some(st.to_string())),
                None if e.runs(n, update) => (n.to_string(), None),
                None => (n.to_string(), e.hold(n, None)),
            })
            .collect()
    };

    // An abort takes the revision back off the nodes, whatever the strategy; a settled
    // revision (already stable) has nothing to go back to, so an abort of it is dropped.
    if status.aborted && stable == Some(update) {
        status.aborted = false;
    }
    if status.aborted {
        status.phase = Phase::RolledBack;
        status.step = step as i32;
        status.message = Some(match stable {
            Some(st) => format!("aborted ({ACTION}=abort); rolling back to revision {st}"),
            None => format!("aborted ({ACTION}=abort); removing revision {update} from the nodes that got it"),
        });
        return Decision { assign: back(&e), status, wake: None, measure: false };
    }

    // All at once, a revert to the stable revision, or a full promotion: no steps.
    if s.strategy == Strategy::AllAtOnce || stable == Some(update) || status.promoted_full {
        if pending == 0 && !s.paused {
            let assign = if updated == targets { everyone() } else { e.switch(&e.effective_order(), update, stable) };
            return Decision { assign, status: settle(status), wake: None, measure: false };
        }
        let assign = if s.paused {
            status.phase = Phase::Paused;
            status.message = Some("paused by spec.rollout.paused".into());
            hold_all(&e)
        } else if s.strategy == Strategy::AllAtOnce {
            status.message = Some(format!("{updated}/{targets} nodes run revision {update}"));
            everyone()
        } else if status.promoted_full {
            status.message = Some(format!(
                "promoted in full: {updated}/{targets} nodes run revision {update}, {} at a time",
                s.max_in_flight
            ));
            e.switch(&e.effective_order(), update, stable)
        } else {
            status.message = Some(format!("returning to stable revision {update}: {updated}/{targets} nodes"));
            e.switch(&e.effective_order(), update, stable)
        };
        status.step = total_steps as i32;
        return Decision { assign, status, wake: None, measure: false };
    }

    status.step = step as i32;
    let resumed_at = |st: usize, status: &RolloutStatus| {
        promoted(st, status) || s.resume.as_ref().is_some_and(|(r, n)| r == update && *n >= st)
    };

    // Stopped rollouts stay stopped for this revision (until a retry).
    match prev_phase {
        Some(Phase::RolledBack) => {
            status.phase = Phase::RolledBack;
            status.message = prev.and_then(|p| p.message.clone());
            return Decision { assign: back(&e), status, wake: None, measure: false };
        }
        Some(Phase::Halted) if !(resumed_at(step, &status) && failed.len() <= s.failure_threshold) => {
            status.phase = Phase::Halted;
            status.message = prev.and_then(|p| p.message.clone());
            return Decision { assign: hold_all(&e), status, wake: None, measure: false };
        }
        Some(Phase::Halted) => step_start = None,
        _ => {}
    }
    if s.paused {
        status.phase = Phase::Paused;
        status.message = Some(format!("paused by spec.rollout.paused at step {step}/{total_steps}"));
        return Decision { assign: hold_all(&e), status, wake: None, measure: false };
    }

    // A first install (nothing else of the program runs anywhere) goes to every node at
    // once, as a DaemonSet's pods do on creation: there is nothing to protect yet, and
    // failed nodes are retried with backoff. It settles once no node is pending.
    let first = stable.is_none()
        && prev.is_none_or(|p| p.update_revision.as_deref() == Some(update))
        && input.order.iter().all(|n| input.observed.get(n).is_none_or(|o| o.revision == update));
    if first {
        if pending == 0 {
            return Decision { assign: everyone(), status: settle(status), wake: None, measure: false };
        }
        status.step = total_steps as i32;
        status.message =
            Some(format!("first install: {updated}/{targets} nodes run revision {update}, {} failed", failed.len()));
        return Decision { assign: everyone(), status, wake: None, measure: false };
    }

    let order = e.effective_order();
    let stop = |mut status: RolloutStatus, why: String| {
        let (phase, assign) = match s.on_failure {
            OnFailure::Rollback => (Phase::RolledBack, back(&e)),
            OnFailure::Halt => (Phase::Halted, hold_all(&e)),
        };
        status.phase = phase;
        // A resume or promote given before does not lift this stop: it takes a new one.
        status.promoted_step = None;
        status.message = Some(match phase {
            Phase::RolledBack => match stable {
                Some(st) => format!("{why}; rolling back to revision {st}"),
                None => format!("{why}; removing it from the nodes that got it (no earlier revision ran everywhere)"),
            },
            _ => format!("{why}; halted: fix the spec, revert it, or resume or retry once the nodes recover"),
        });
        Decision { assign, status, wake: None, measure: false }
    };
    if failed.len() > s.failure_threshold {
        let why = format!(
            "{} node(s) failed revision {update} at step {step}/{total_steps} (threshold {}): {}",
            failed.len(),
            s.failure_threshold,
            failed_summary(input, &failed)
        );
        return stop(status, why);
    }
    loop {
        status.step = step as i32;
        let want = s.steps[step - 1];
        let cohort = &order[..want.nodes.min(order.len())];
        let mut started = step_start.clone().unwrap_or_else(|| time(input.now));
        status.step_start_time = Some(started.clone());
        // Failed nodes within the threshold are tolerated (and retried with backoff).
        if !cohort.iter().all(|n| e.done(n)) {
            // A node that falls back during the step's pause (its nodes had all been done)
            // starts the deadline again: a long pause is not a slow step.
            if prev_phase == Some(Phase::Paused) && prev.is_some_and(|p| p.step as usize == step) {
                started = time(input.now);
                status.step_start_time = Some(started.clone());
            }
            let elapsed = since(Some(&started), input.now).unwrap_or_default();
            if elapsed > s.deadline {
                let late: Vec<&str> = cohort.iter().copied().filter(|n| !e.done(n)).collect();
                let why = format!(
                    "step {step}/{total_steps} did not finish within {}s: not ready: {}",
                    s.deadline.as_secs(),
                    late.join(", ")
                );
                return stop(status, why);
            }
            let done = cohort.iter().filter(|n| e.updated(n)).count();
            let away = cohort.iter().filter(|n| e.away(n) && !e.updated(n)).count();
            let mut message = format!("step {step}/{total_steps}: {done}/{} nodes run revision {update}", cohort.len());
            if away > 0 {
                message.push_str(&format!("; {away} wait for their agent"));
            }
            if let Some(w) = input.gate_wait {
                message.push_str(&format!("; {w}"));
            }
            status.message = Some(message);
            let assign = e.switch(cohort, update, stable);
            return Decision { assign, status, wake: Some(s.deadline.saturating_sub(elapsed)), measure: false };
        }
        // The step's nodes all count: the Prometheus gate measures its end.
        if let Some(gate) = input.analysis.filter(|_| !promoted(step, &status)) {
            let mut a = analysis
                .take()
                .filter(|a| a.step == step as i32)
                .unwrap_or(AnalysisStatus { step: step as i32, ..Default::default() });
            if let Some(m) = input.measurement.clone() {
                a.measurements += 1;
                let judged = m.and_then(|v| gate.within(v).map(|()| v));
                a.last = Some(match &judged {
                    Ok(v) => format!("{v}"),
                    Err(why) => why.clone(),
                });
                if judged.is_err() {
                    a.failures += 1;
                }
                a.last_time = Some(time(input.now));
            }
            status.analysis = Some(a.clone());
            if a.failures > gate.failure_limit {
                let why = format!(
                    "the Prometheus gate failed at the end of step {step}/{total_steps}: {} of {} measurements \
                     failed (failureLimit {}); query {:?} last gave: {}",
                    a.failures,
                    a.measurements,
                    gate.failure_limit,
                    gate.query,
                    a.last.as_deref().unwrap_or("-")
                );
                return stop(status, why);
            }
            if (a.measurements as u32) < gate.count() {
                let waited = since(a.last_time.as_ref(), input.now);
                let due = waited.is_none_or(|w| w >= gate.interval());
                status.message = Some(format!(
                    "step {step}/{total_steps} done; Prometheus gate: {}/{} measurements, {} failed{}",
                    a.measurements,
                    gate.count(),
                    a.failures,
                    a.last.as_deref().map(|l| format!(", last: {l}")).unwrap_or_default()
                ));
                let wake = waited.map_or(Duration::ZERO, |w| gate.interval().saturating_sub(w));
                return Decision {
                    assign: e.switch(cohort, update, stable),
                    status,
                    wake: Some(wake),
                    measure: due && input.measurement.is_none(),
                };
            }
        }
        if step == total_steps {
            return Decision { assign: everyone(), status: settle(status), wake: None, measure: false };
        }
        match want.pause {
            None => {}
            Some(_) if resumed_at(step, &status) => {}
            Some(PauseUntil::Resumed) => {
                status.phase = Phase::Paused;
                status.message = Some(format!(
                    "step {step}/{total_steps} done; waiting to be resumed (kubectl bpfleet rollout promote, or \
                     the annotation {ACTION}=promote)"
                ));
                return Decision { assign: e.switch(cohort, update, stable), status, wake: None, measure: false };
            }
            Some(PauseUntil::Elapsed(d)) => {
                let began = pause_start.clone().unwrap_or_else(|| time(input.now));
                let waited = since(Some(&began), input.now).unwrap_or_default();
                if waited < d {
                    status.phase = Phase::Paused;
                    status.pause_start_time = Some(began);
                    status.message = Some(format!(
                        "step {step}/{total_steps} done; pausing {}s before the next step",
                        (d - waited).as_secs()
                    ));
                    return Decision {
                        assign: e.switch(cohort, update, stable),
                        status,
                        wake: Some(d - waited),
                        measure: false,
                    };
                }
            }
        }
        step += 1;
        step_start = None;
        pause_start = None;
        status.analysis = None;
    }
}

const ACTION: &str = crds::rollout::ACTION_ANNOTATION;

/// The DaemonSet-style node counts of `status`, for `update` over `targets`: what each node
/// runs (`observed`), how it stands (`outcomes`, with agents' grace periods applied) and,
/// with health gates, which nodes passed them (`gated`).
pub fn count_nodes(
    status: &mut RolloutStatus,
    update: &str,
    targets: &std::collections::BTreeSet<String>,
    observed: &BTreeMap<String, Observed>,
    outcomes: &BTreeMap<String, crate::status::NodeOutcome>,
    gated: Option<&std::collections::BTreeSet<String>>,
) {
    use crate::status::NodeOutcome;
    let (mut desired, mut updated, mut ready, mut available, mut waiting) = (0, 0, 0, 0, 0);
    let (mut outcomes, mut observed) = (Ascending::new(outcomes), Ascending::new(observed));
    let mut gated = gated.map(AscendingSet::new);
    for n in targets {
        let outcome = outcomes.get(n);
        if matches!(outcome, Some(NodeOutcome::WaitingForAgent { .. } | NodeOutcome::NoAgent)) {
            waiting += 1;
        }
        if matches!(outcome, Some(NodeOutcome::NoAgent)) {
            continue;
        }
        desired += 1;
        let Some(o) = observed.get(n) else { continue };
        let healthy = o.health == Health::Healthy;
        if o.revision == update {
            updated += 1;
            if healthy && gated.as_mut().is_none_or(|g| g.contains(n)) {
                ready += 1;
                available += 1;
            }
        } else if healthy && !o.revision.is_empty() {
            available += 1;
        }
    }
    status.desired_nodes = desired;
    status.updated_nodes = updated;
    status.ready_nodes = ready;
    status.available_nodes = available;
    status.unavailable_nodes = desired - available;
    status.waiting_for_agent_nodes = waiting;
}

#[cfg(test)]
mod tests;
