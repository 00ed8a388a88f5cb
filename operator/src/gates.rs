//! Health gates (`spec.rollout.health`): whether a node that runs the new revision healthy
//! counts as ready. Each such node gets a window from the moment the operator first sees
//! it healthy on the revision: it passes once the window (`minReadySeconds`, at least 10 s
//! with `mustRun`) is over, every program's kernel run count rose in it (`mustRun`) and
//! every map check held at every reading; it fails at the first broken map check, or when
//! the window ends without a run or a reading. The readings come from the agents' `Probe`
//! call; this module only keeps the windows and judges them. The book is memory only: after
//! an operator restart, nodes in the middle of a rollout are gated again from scratch (a
//! finished rollout is not gated again).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use crds::health::HealthSpec;
use k8s_openapi::jiff::Timestamp;

use crate::reports::{Probed, ReadValue};

/// How often a node in its window is read.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long past its window an agent that answers but cannot give a reading (an agent
/// without `Probe`, an owner it does not run) may go before the gate fails. An agent that
/// does not answer at all is the unreachable grace period's business, not a gate's.
pub const READ_GRACE: Duration = Duration::from_secs(30);
/// Each reading asks the agent to keep kernel run counting on this long: a few readings'
/// worth, so counting stops soon after the last window ends.
pub const STATS_LEASE: Duration = Duration::from_secs(10);
/// A failed gate opens a new window after this long (doubling to [`MAX_RETRY`]): a program
/// that starts running, or a map that comes back under its bound, lets the node count.
pub const FIRST_RETRY: Duration = Duration::from_secs(60);
pub const MAX_RETRY: Duration = Duration::from_secs(600);

/// Where one node's gate stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Passed,
    /// Not yet: look again after this long.
    Waiting(Duration),
    /// The gate failed: which, and the value it saw. The node counts as failed until a
    /// later window passes.
    Failed(String),
}

/// Why a reading could not be taken.
#[derive(Clone, Debug, PartialEq)]
pub enum ReadError {
    /// The agent did not answer (a transport failure): the node waits, the unreachable
    /// grace period decides when it fails.
    Unreachable(String),
    /// The agent answered without a reading.
    Refused(String),
}

/// One node's gate on one revision: its current window, and the last failure.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeGate {
    pub started: Option<Timestamp>,
    /// Per program: (kernel program id, run count) at its first reading.
    baseline: BTreeMap<String, (u32, u64)>,
    /// Programs whose run count rose.
    ran: BTreeSet<String>,
    /// Readings that answered.
    readings: u32,
    last_read: Option<Timestamp>,
    /// Why the last reading failed.
    last_error: Option<ReadError>,
    /// A map check broke in this window.
    broken: Option<String>,
    /// The last failed window: why, when the next window opens, failures in a row.
    failed: Option<(String, Timestamp, u32)>,
    passed: bool,
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    now.duration_since(since).try_into().unwrap_or_default()
}

fn retry_after(attempts: u32) -> Duration {
    FIRST_RETRY.saturating_mul(1 << attempts.saturating_sub(1).min(8)).min(MAX_RETRY)
}

impl NodeGate {
    fn window(spec: &HealthSpec) -> Duration {
        Duration::from_secs(spec.window_seconds().max(0) as u64)
    }

    /// Whether the node should be read now.
    pub fn due(&self, spec: &HealthSpec, now: Timestamp) -> bool {
        spec.probes()
            && !self.passed
            && self.started.is_some()
            && self.broken.is_none()
            && self.last_read.is_none_or(|t| elapsed(t, now) >= PROBE_EVERY)
    }

    /// Take one reading of `revision` into the window.
    pub fn observe(&mut self, spec: &HealthSpec, revision: &str, reading: Result<&Probed, ReadError>, now: Timestamp) {
        if self.started.is_none() {
            return;
        }
        self.last_read = Some(now);
        let p = match reading {
            Ok(p) => p,
            Err(e) => {
                self.last_error = Some(e);
                return;
            }
        };
        if p.revision != revision {
            // Taken while the node switched: no reading of this window.
            self.last_error = Some(ReadError::Refused(if p.revision.is_empty() {
                "the agent runs no revision of the program".into()
            } else {
                format!("the agent runs revision {}, not {revision}", p.revision)
            }));
            return;
        }
        self.last_error = None;
        self.readings += 1;
        for prog in &p.programs {
            match self.baseline.get(&prog.name) {
                Some((id, runs)) if *id == prog.id => {
                    if prog.runs > *runs {
                        self.ran.insert(prog.name.clone());
                    }
                }
                // First sight, or reloaded (a new id counts from 0): a new baseline.
                _ => {
                    self.baseline.insert(prog.name.clone(), (prog.id, prog.runs));
                }
            }
        }
        for (i, check) in spec.maps.iter().enumerate() {
            let value = |v: Option<&ReadValue>| -> Result<u64, String> {
                match v {
                    Some(ReadValue::Value(v)) => Ok(*v),
                    // An entry not created yet is a counter still at 0 (a hash map's key).
                    Some(ReadValue::Missing) => Ok(0),
                    Some(ReadValue::Error(e)) => Err(e.clone()),
                    None => Err("the agent did not answer this read".into()),
                }
            };
            let (vi, di) = read_slots(spec)[i];
            let judged = value(p.values.get(vi)).and_then(|v| {
                let d = match di {
                    Some(di) => Some(value(p.values.get(di))?),
                    None => None,
                };
                check.judge(v, d)
            });
            if let Err(why) = judged {
                self.broken = Some(format!("map check {} failed: {why}", i + 1));
                return;
            }
        }
    }

    /// Start a window now, unless one runs or a failed one's retry is not due.
    fn open(&mut self, now: Timestamp) {
        if self.started.is_some() || self.passed || self.failed.as_ref().is_some_and(|(_, at, _)| now < *at) {
            return;
        }
        let failed = self.failed.take();
        *self = NodeGate { started: Some(now), failed, ..Default::default() };
    }

    /// Judge the window at `now` (opening one when none runs).
    pub fn verdict(&mut self, spec: &HealthSpec, programs: &[String], now: Timestamp) -> Verdict {
        if self.passed {
            return Verdict::Passed;
        }
        self.open(now);
        let Some(started) = self.started else {
            // A failed window waits for its retry.
            let (why, at, _) = self.failed.clone().expect("no window only after a failure");
            return Verdict::Failed(format!("{why} (checked again in {}s)", elapsed(now, at).as_secs()));
        };
        match self.judge_window(spec, programs, started, now) {
            Ok(()) => {
                self.passed = true;
                self.failed = None;
                Verdict::Passed
            }
            Err(Some(why)) => {
                let attempts = self.failed.as_ref().map_or(0, |f| f.2) + 1;
                let at = now.checked_add(jiff_span(retry_after(attempts))).unwrap_or(now);
                self.failed = Some((why.clone(), at, attempts));
                self.started = None;
                Verdict::Failed(why)
            }
            // A retried window runs: the node still counts as failed, by its last failure.
            Err(None) => match &self.failed {
                Some((why, _, _)) => Verdict::Failed(why.clone()),
                None => Verdict::Waiting(self.wait(spec, started, now)),
            },
        }
    }

    fn wait(&self, spec: &HealthSpec, started: Timestamp, now: Timestamp) -> Duration {
        let left = Self::window(spec).saturating_sub(elapsed(started, now));
        if spec.probes() || left.is_zero() { PROBE_EVERY.min(left.max(PROBE_EVERY)) } else { left }
    }

    /// `Ok`: passed; `Err(Some)`: failed, why; `Err(None)`: not yet.
    fn judge_window(
        &self,
        spec: &HealthSpec,
        programs: &[String],
        started: Timestamp,
        now: Timestamp,
    ) -> Result<(), Option<String>> {
        if let Some(why) = &self.broken {
            return Err(Some(why.clone()));
        }
        let window = Self::window(spec);
        let gone = elapsed(started, now);
        let ran_all = !spec.must_run || programs.iter().all(|p| self.ran.contains(p));
        let read_enough = !spec.probes() || self.readings >= 2 || (!spec.must_run && self.readings >= 1);
        if gone >= window && ran_all && read_enough && self.last_error.is_none() {
            return Ok(());
        }
        if gone < window {
            return Err(None);
        }
        if spec.must_run && self.readings >= 2 && !ran_all {
            let idle: Vec<String> = programs
                .iter()
                .filter(|p| !self.ran.contains(*p))
                .map(|p| match self.baseline.get(p) {
                    Some((id, runs)) => format!("{p} (program id {id}, run count stayed at {runs})"),
                    None => format!("{p} (not reported by the agent)"),
                })
                .collect();
            return Err(Some(format!(
                "ProgramDidNotRun: {} did not run within {}s of the node switching",
                idle.join(", "),
                window.as_secs()
            )));
        }
        match &self.last_error {
            Some(ReadError::Refused(why)) if gone >= window + READ_GRACE => Err(Some(format!(
                "the health gate could not read the node within {}s: {why}",
                (window + READ_GRACE).as_secs()
            ))),
            _ => Err(None),
        }
    }
}

fn out_wake(wake: &mut Option<Duration>, d: Duration) {
    *wake = Some(wake.map_or(d, |w| w.min(d)));
}

fn jiff_span(d: Duration) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::try_from(d).unwrap_or(k8s_openapi::jiff::SignedDuration::MAX)
}

/// For each map check, the index of its value's read and of its divisor's read in
/// [`reads`].
fn read_slots(spec: &HealthSpec) -> Vec<(usize, Option<usize>)> {
    let all = reads(spec);
    let at = |m: &str, k: u64| all.iter().position(|(am, ak)| am == m && *ak == k).unwrap_or(0);
    spec.maps
        .iter()
        .map(|c| {
            let d = c.divide_by.as_ref().map(|d| at(d.map.as_deref().unwrap_or(&c.map), d.key));
            (at(&c.map, c.key), d)
        })
        .collect()
}

/// The distinct map entries a spec's checks read, in a stable order.
pub fn reads(spec: &HealthSpec) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    let mut add = |m: &str, k: u64| {
        if !out.iter().any(|(om, ok)| om == m && *ok == k) {
            out.push((m.to_string(), k));
        }
    };
    for c in &spec.maps {
        add(&c.map, c.key);
        if let Some(d) = &c.divide_by {
            add(d.map.as_deref().unwrap_or(&c.map), d.key);
        }
    }
    out
}

/// The windows of every program's rollout, by program uid.
#[derive(Debug, Default)]
pub struct GateBook {
    programs: Mutex<HashMap<String, ProgramGates>>,
}

#[derive(Debug, Default)]
struct ProgramGates {
    revision: String,
    nodes: HashMap<String, NodeGate>,
}

/// Whose gates: a program's revision, its health spec and its programs' names.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    pub uid: &'a str,
    pub revision: &'a str,
    pub spec: &'a HealthSpec,
    pub programs: &'a [String],
}

/// What the gates say about a program's nodes now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gated {
    /// Nodes that run the revision healthy and passed.
    pub passed: BTreeSet<String>,
    /// Nodes whose gate failed, with why.
    pub failed: BTreeMap<String, String>,
    /// Nodes to read now.
    pub due: Vec<String>,
    /// Look again after this long.
    pub wake: Option<Duration>,
}

impl GateBook {
    /// Judge the nodes of `uid` that run `revision` healthy and whose agent is here
    /// (`running`). The others lose their window (a new one starts when they are back),
    /// but keep a failure: it counts until a later window passes.
    /// `passed_before`: nodes that count as passed when first seen.
    pub fn judge(
        &self,
        scope: Scope<'_>,
        running: &BTreeSet<String>,
        passed_before: &BTreeSet<String>,
        now: Timestamp,
    ) -> Gated {
        let Scope { uid, revision, spec, programs } = scope;
        let mut book = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        let gates = book.entry(uid.to_string()).or_default();
        if gates.revision != revision {
            gates.revision = revision.to_string();
            gates.nodes.clear();
        }
        gates.nodes.retain(|n, g| running.contains(n) || g.failed.is_some());
        for (n, g) in gates.nodes.iter_mut() {
            if !running.contains(n) && !g.passed {
                // Away: its window stops; the failure stays.
                *g = NodeGate { failed: g.failed.take(), ..Default::default() };
            }
        }
        let mut out = Gated::default();
        let mut wake = |d: Duration| out_wake(&mut out.wake, d);
        for node in running {
            let gate = gates
                .nodes
                .entry(node.clone())
                .or_insert_with(|| NodeGate { passed: passed_before.contains(node), ..Default::default() });
            match gate.verdict(spec, programs, now) {
                Verdict::Passed => {
                    out.passed.insert(node.clone());
                }
                Verdict::Failed(why) => {
                    match (gate.started, &gate.failed) {
                        (None, Some((_, at, _))) => wake(elapsed(now, *at).max(PROBE_EVERY)),
                        _ => wake(PROBE_EVERY),
                    }
                    if gate.due(spec, now) {
                        out.due.push(node.clone());
                    }
                    out.failed.insert(node.clone(), why);
                }
                Verdict::Waiting(left) => {
                    wake(left);
                    if gate.due(spec, now) {
                        out.due.push(node.clone());
                    }
                }
            }
        }
        for (node, gate) in &gates.nodes {
            if let (false, Some((why, _, _))) = (running.contains(node), &gate.failed) {
                out.failed.insert(node.clone(), why.clone());
            }
        }
        out
    }

    /// Readings of `uid`'s nodes of `revision`, taken at `now`.
    pub fn observe(&self, scope: Scope<'_>, readings: Vec<(String, Result<Probed, ReadError>)>, now: Timestamp) {
        let mut book = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(gates) = book.get_mut(scope.uid).filter(|g| g.revision == scope.revision) else { return };
        for (node, r) in readings {
            if let Some(g) = gates.nodes.get_mut(&node) {
                g.observe(scope.spec, scope.revision, r.as_ref().map_err(Clone::clone), now);
            }
        }
    }

    /// Forget the gate failures of `uid` (a `retry`): those nodes get a new window at once.
    pub fn retry(&self, uid: &str) {
        if let Some(g) = self.programs.lock().unwrap_or_else(|e| e.into_inner()).get_mut(uid) {
            g.nodes.retain(|_, n| n.failed.is_none());
        }
    }

    /// Programs with gate state (for tests and the memory figures).
    pub fn programs(&self) -> usize {
        self.programs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The program is gone.
    pub fn forget(&self, uid: &str) {
        self.programs.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }

    /// How long a reading asks kernel run counting to stay on: only `mustRun` needs it.
    pub fn lease(spec: &HealthSpec) -> Duration {
        if spec.must_run { STATS_LEASE } else { Duration::ZERO }
    }
}

#[cfg(test)]
mod tests {
    use crds::health::{MapCheck, MapEntry};

    use super::*;
    use crate::reports::ProgramRuns;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + s).unwrap()
    }

    fn probed(runs: &[(&str, u32, u64)], values: Vec<ReadValue>) -> Probed {
        Probed {
            revision: "r1".into(),
            programs: runs.iter().map(|(n, id, r)| ProgramRuns { name: n.to_string(), id: *id, runs: *r }).collect(),
            values,
            stats_enabled: true,
        }
    }

    fn progs() -> Vec<String> {
        vec!["count".to_string()]
    }

    fn window(start: i64) -> NodeGate {
        NodeGate { started: Some(at(start)), ..Default::default() }
    }

    fn read(g: &mut NodeGate, spec: &HealthSpec, p: Probed, t: i64) {
        g.observe(spec, "r1", Ok(&p), at(t));
    }

    #[test]
    fn min_ready_alone_waits_the_window() {
        let spec = HealthSpec { min_ready_seconds: 30, ..Default::default() };
        let mut g = window(0);
        assert!(!g.due(&spec, at(0)), "nothing to read without mustRun or maps");
        assert_eq!(g.verdict(&spec, &progs(), at(10)), Verdict::Waiting(Duration::from_secs(20)));
        assert_eq!(g.verdict(&spec, &progs(), at(30)), Verdict::Passed);
    }

    #[test]
    fn must_run_passes_when_the_count_rises_and_fails_when_it_stays() {
        let spec = HealthSpec { must_run: true, ..Default::default() };
        let mut g = window(0);
        read(&mut g, &spec, probed(&[("count", 7, 0)], vec![]), 0);
        read(&mut g, &spec, probed(&[("count", 7, 5)], vec![]), 2);
        assert_eq!(g.verdict(&spec, &progs(), at(4)), Verdict::Waiting(PROBE_EVERY), "the window is 10 s at least");
        assert_eq!(g.verdict(&spec, &progs(), at(10)), Verdict::Passed);

        let mut idle = window(0);
        for t in [0, 2, 4, 6, 8, 10] {
            read(&mut idle, &spec, probed(&[("count", 7, 3)], vec![]), t);
        }
        let Verdict::Failed(why) = idle.verdict(&spec, &progs(), at(10)) else { panic!() };
        assert_eq!(
            why,
            "ProgramDidNotRun: count (program id 7, run count stayed at 3) did not run within 10s of the node switching"
        );
    }

    #[test]
    fn a_failed_gate_is_checked_again_later_and_counts_failed_meanwhile() {
        let spec = HealthSpec { must_run: true, ..Default::default() };
        let mut g = window(0);
        for t in [0, 2, 10] {
            read(&mut g, &spec, probed(&[("count", 7, 3)], vec![]), t);
        }
        assert!(matches!(g.verdict(&spec, &progs(), at(10)), Verdict::Failed(_)));
        // Until the retry, no window and no reading; still failed.
        let Verdict::Failed(why) = g.verdict(&spec, &progs(), at(30)) else { panic!() };
        assert!(why.contains("checked again in 40s"), "{why}");
        assert!(!g.due(&spec, at(30)));
        // A minute after the failure a new window opens; the node counts failed until it passes.
        assert!(matches!(g.verdict(&spec, &progs(), at(70)), Verdict::Failed(_)));
        assert!(g.due(&spec, at(70)));
        read(&mut g, &spec, probed(&[("count", 7, 3)], vec![]), 70);
        read(&mut g, &spec, probed(&[("count", 7, 9)], vec![]), 72);
        assert_eq!(g.verdict(&spec, &progs(), at(80)), Verdict::Passed, "it runs now");
    }

    #[test]
    fn a_reload_is_a_new_baseline_not_a_run() {
        let spec = HealthSpec { must_run: true, ..Default::default() };
        let mut g = window(0);
        read(&mut g, &spec, probed(&[("count", 7, 100)], vec![]), 0);
        read(&mut g, &spec, probed(&[("count", 8, 101)], vec![]), 2);
        read(&mut g, &spec, probed(&[("count", 8, 101)], vec![]), 10);
        assert!(matches!(g.verdict(&spec, &progs(), at(10)), Verdict::Failed(_)));
    }

    #[test]
    fn a_reading_of_another_revision_is_no_reading() {
        let spec = HealthSpec { must_run: true, ..Default::default() };
        let mut g = window(0);
        let mut other = probed(&[("count", 7, 0)], vec![]);
        other.revision = "r0".into();
        g.observe(&spec, "r1", Ok(&other), at(0));
        other.programs[0].runs = 50;
        g.observe(&spec, "r1", Ok(&other), at(2));
        assert_eq!(g.readings, 0);
    }

    #[test]
    fn a_broken_map_check_fails_at_once_with_the_value() {
        let spec = HealthSpec {
            min_ready_seconds: 20,
            maps: vec![MapCheck {
                map: "counters".into(),
                key: 1,
                divide_by: Some(MapEntry { map: None, key: 0 }),
                max: 0.01,
            }],
            ..Default::default()
        };
        assert_eq!(reads(&spec), vec![("counters".to_string(), 1), ("counters".to_string(), 0)]);
        let mut g = window(0);
        read(&mut g, &spec, probed(&[], vec![ReadValue::Value(0), ReadValue::Missing]), 0);
        assert_eq!(g.verdict(&spec, &progs(), at(1)), Verdict::Waiting(PROBE_EVERY));
        read(&mut g, &spec, probed(&[], vec![ReadValue::Value(90), ReadValue::Value(100)]), 2);
        assert_eq!(
            g.verdict(&spec, &progs(), at(3)),
            Verdict::Failed("map check 1 failed: counters[1] / counters[0] = 0.9 is above the maximum 0.01".into())
        );
        let mut ok = window(0);
        read(&mut ok, &spec, probed(&[], vec![ReadValue::Value(1), ReadValue::Value(1000)]), 20);
        assert_eq!(ok.verdict(&spec, &progs(), at(20)), Verdict::Passed);
        let mut gone = window(0);
        let no_map = vec![ReadValue::Error("no map \"counters\"".into()), ReadValue::Value(0)];
        read(&mut gone, &spec, probed(&[], no_map), 0);
        assert!(matches!(gone.verdict(&spec, &progs(), at(1)), Verdict::Failed(w) if w.contains("no map")));
    }

    #[test]
    fn an_agent_that_does_not_answer_waits_one_that_refuses_fails() {
        let spec = HealthSpec { must_run: true, ..Default::default() };
        let mut away = window(0);
        away.observe(&spec, "r1", Err(ReadError::Unreachable("connection refused".into())), at(0));
        assert_eq!(away.verdict(&spec, &progs(), at(100)), Verdict::Waiting(PROBE_EVERY), "the grace period decides");
        let mut old = window(0);
        old.observe(&spec, "r1", Err(ReadError::Refused("Unimplemented: no Probe".into())), at(0));
        assert_eq!(old.verdict(&spec, &progs(), at(20)), Verdict::Waiting(PROBE_EVERY));
        let Verdict::Failed(why) = old.verdict(&spec, &progs(), at(41)) else { panic!() };
        assert!(why.contains("no Probe"), "{why}");
    }

    #[test]
    fn the_book_starts_windows_stops_them_for_away_nodes_and_keeps_failures() {
        let book = GateBook::default();
        let spec = HealthSpec { min_ready_seconds: 5, ..Default::default() };
        let running: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let programs = progs();
        let scope = |revision| Scope { uid: "u", revision, spec: &spec, programs: &programs };
        let none = BTreeSet::new();
        let g = book.judge(scope("r1"), &running, &none, at(0));
        assert!(g.passed.is_empty() && g.wake == Some(Duration::from_secs(5)));
        // b goes away at 3 s: its window stops; back at 4 s, a new one starts.
        let only_a: BTreeSet<String> = ["a".to_string()].into();
        book.judge(scope("r1"), &only_a, &none, at(3));
        let g = book.judge(scope("r1"), &running, &none, at(5));
        assert_eq!(g.passed, only_a);
        let g = book.judge(scope("r1"), &running, &none, at(10));
        assert_eq!(g.passed.len(), 2);
        // A new revision starts over, except for nodes known to have passed.
        let g = book.judge(scope("r2"), &running, &only_a, at(11));
        assert_eq!(g.passed, only_a);
        book.forget("u");
        assert_eq!(book.programs(), 0);
    }
}
