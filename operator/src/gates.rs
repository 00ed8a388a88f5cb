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
/// How long past its window a node may go unread (its agent away) before its gate fails.
pub const READ_GRACE: Duration = Duration::from_secs(30);
/// Each reading asks the agent to keep kernel run counting on this long: a few readings'
/// worth, so counting stops soon after the last window ends.
pub const STATS_LEASE: Duration = Duration::from_secs(10);

/// Where one node's gate stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Passed,
    /// Not yet: look again after this long.
    Waiting(Duration),
    /// The gate failed: which, and the value it saw.
    Failed(String),
}

/// One node's window on one revision.
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
    /// Why the last reading failed (agent away, an older agent).
    last_error: Option<String>,
    failed: Option<String>,
    passed: bool,
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    now.duration_since(since).try_into().unwrap_or_default()
}

impl NodeGate {
    fn window(spec: &HealthSpec) -> Duration {
        Duration::from_secs(spec.window_seconds().max(0) as u64)
    }

    /// Whether the node should be read now.
    pub fn due(&self, spec: &HealthSpec, now: Timestamp) -> bool {
        spec.probes()
            && !self.passed
            && self.failed.is_none()
            && self.last_read.is_none_or(|t| elapsed(t, now) >= PROBE_EVERY)
    }

    /// Take one reading into the window.
    pub fn observe(&mut self, spec: &HealthSpec, reading: Result<&Probed, String>, now: Timestamp) {
        self.last_read = Some(now);
        let p = match reading {
            Ok(p) => p,
            Err(e) => {
                self.last_error = Some(e);
                return;
            }
        };
        if p.revision.is_empty() {
            self.last_error = Some("the agent runs no revision of the program".into());
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
                self.failed = Some(format!("map check {} failed: {why}", i + 1));
                return;
            }
        }
    }

    /// Judge the window at `now`; `started` must be set.
    pub fn verdict(&mut self, spec: &HealthSpec, programs: &[String], now: Timestamp) -> Verdict {
        if let Some(why) = &self.failed {
            return Verdict::Failed(why.clone());
        }
        if self.passed {
            return Verdict::Passed;
        }
        let started = *self.started.get_or_insert(now);
        let window = Self::window(spec);
        let gone = elapsed(started, now);
        let ran_all = !spec.must_run || programs.iter().all(|p| self.ran.contains(p));
        let read_enough = !spec.probes() || self.readings >= 2 || (!spec.must_run && self.readings >= 1);
        if gone >= window && ran_all && read_enough && self.last_error.is_none() {
            self.passed = true;
            return Verdict::Passed;
        }
        if gone < window {
            return Verdict::Waiting((window - gone).min(if spec.probes() { PROBE_EVERY } else { window - gone }));
        }
        // The window is over and something is missing.
        if spec.must_run && self.readings >= 2 && !ran_all {
            let idle: Vec<String> = programs
                .iter()
                .filter(|p| !self.ran.contains(*p))
                .map(|p| match self.baseline.get(p) {
                    Some((id, runs)) => format!("{p} (program id {id}, run count stayed at {runs})"),
                    None => format!("{p} (not reported by the agent)"),
                })
                .collect();
            let why = format!(
                "ProgramDidNotRun: {} did not run within {}s of the node switching",
                idle.join(", "),
                window.as_secs()
            );
            self.failed = Some(why.clone());
            return Verdict::Failed(why);
        }
        if gone >= window + READ_GRACE {
            let why = format!(
                "the health gate could not read the node within {}s: {}",
                (window + READ_GRACE).as_secs(),
                self.last_error.as_deref().unwrap_or("no reading answered")
            );
            self.failed = Some(why.clone());
            return Verdict::Failed(why);
        }
        Verdict::Waiting(PROBE_EVERY)
    }
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
    /// Judge the nodes of `uid` that run `revision` healthy (`running`); the others lose
    /// their window (it starts again when they are healthy on it again). `fresh`: the
    /// program has no window for this revision yet and its nodes are counted as passed
    /// (a finished rollout is not gated again after a restart).
    pub fn judge(&self, scope: Scope<'_>, running: &BTreeSet<String>, settled: bool, now: Timestamp) -> Gated {
        let Scope { uid, revision, spec, programs } = scope;
        let mut book = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        let gates = book.entry(uid.to_string()).or_default();
        if gates.revision != revision {
            gates.revision = revision.to_string();
            gates.nodes.clear();
        }
        gates.nodes.retain(|n, g| running.contains(n) || g.failed.is_some());
        let mut out = Gated::default();
        for node in running {
            let gate = gates.nodes.entry(node.clone()).or_insert_with(|| NodeGate {
                passed: settled,
                started: Some(now),
                ..Default::default()
            });
            match gate.verdict(spec, programs, now) {
                Verdict::Passed => {
                    out.passed.insert(node.clone());
                }
                Verdict::Failed(why) => {
                    out.failed.insert(node.clone(), why);
                }
                Verdict::Waiting(left) => {
                    out.wake = Some(out.wake.map_or(left, |w: Duration| w.min(left)));
                    if gate.due(spec, now) {
                        out.due.push(node.clone());
                    }
                }
            }
        }
        for (node, gate) in &gates.nodes {
            if let (false, Some(why)) = (running.contains(node), &gate.failed) {
                out.failed.insert(node.clone(), why.clone());
            }
        }
        out
    }

    /// Readings of `uid`'s nodes, taken at `now`.
    pub fn observe(
        &self,
        uid: &str,
        spec: &HealthSpec,
        readings: Vec<(String, Result<Probed, String>)>,
        now: Timestamp,
    ) {
        let mut book = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(gates) = book.get_mut(uid) else { return };
        for (node, r) in readings {
            if let Some(g) = gates.nodes.get_mut(&node) {
                g.observe(spec, r.as_ref().map_err(String::clone), now);
            }
        }
    }

    /// Forget the gate failures of `uid` (a `retry`): those nodes get a new window.
    pub fn retry(&self, uid: &str) {
        if let Some(g) = self.programs.lock().unwrap_or_else(|e| e.into_inner()).get_mut(uid) {
            g.nodes.retain(|_, n| n.failed.is_none());
        }
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

    #[test]
    fn min_ready_alone_waits_the_window() {
        let spec = HealthSpec { min_ready_seconds: 30, ..Default::default() };
        let mut g = NodeGate { started: Some(at(0)), ..Default::default() };
        assert!(!g.due(&spec, at(0)), "nothing to read without mustRun or maps");
        assert_eq!(g.verdict(&spec, &progs(), at(10)), Verdict::Waiting(Duration::from_secs(20)));
        assert_eq!(g.verdict(&spec, &progs(), at(30)), Verdict::Passed);
    }

    #[test]
    fn must_run_passes_when_the_count_rises_and_fails_when_it_stays() {
        let spec = HealthSpec { must_run: true, ..Default::default() };
        let mut g = NodeGate { started: Some(at(0)), ..Default::default() };
        g.observe(&spec, Ok(&probed(&[("count", 7, 0)], vec![])), at(0));
        g.observe(&spec, Ok(&probed(&[("count", 7, 5)], vec![])), at(2));
        assert_eq!(g.verdict(&spec, &progs(), at(4)), Verdict::Waiting(PROBE_EVERY), "the window is 10 s at least");
        assert_eq!(g.verdict(&spec, &progs(), at(10)), Verdict::Passed);

        let mut idle = NodeGate { started: Some(at(0)), ..Default::default() };
        for t in [0, 2, 4, 6, 8, 10] {
            idle.observe(&spec, Ok(&probed(&[("count", 7, 3)], vec![])), at(t));
        }
        let Verdict::Failed(why) = idle.verdict(&spec, &progs(), at(10)) else { panic!() };
        assert_eq!(
            why,
            "ProgramDidNotRun: count (program id 7, run count stayed at 3) did not run within 10s of the node switching"
        );
    }

    #[test]
    fn a_reload_is_a_new_baseline_not_a_run() {
        let spec = HealthSpec { must_run: true, ..Default::default() };
        let mut g = NodeGate { started: Some(at(0)), ..Default::default() };
        g.observe(&spec, Ok(&probed(&[("count", 7, 100)], vec![])), at(0));
        g.observe(&spec, Ok(&probed(&[("count", 8, 101)], vec![])), at(2));
        g.observe(&spec, Ok(&probed(&[("count", 8, 101)], vec![])), at(10));
        assert!(matches!(g.verdict(&spec, &progs(), at(10)), Verdict::Failed(_)));
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
        let mut g = NodeGate { started: Some(at(0)), ..Default::default() };
        g.observe(&spec, Ok(&probed(&[], vec![ReadValue::Value(0), ReadValue::Missing])), at(0));
        assert_eq!(g.verdict(&spec, &progs(), at(1)), Verdict::Waiting(PROBE_EVERY));
        g.observe(&spec, Ok(&probed(&[], vec![ReadValue::Value(90), ReadValue::Value(100)])), at(2));
        assert_eq!(
            g.verdict(&spec, &progs(), at(3)),
            Verdict::Failed("map check 1 failed: counters[1] / counters[0] = 0.9 is above the maximum 0.01".into())
        );
        let mut ok = NodeGate { started: Some(at(0)), ..Default::default() };
        ok.observe(&spec, Ok(&probed(&[], vec![ReadValue::Value(1), ReadValue::Value(1000)])), at(20));
        assert_eq!(ok.verdict(&spec, &progs(), at(20)), Verdict::Passed);
        let mut gone = NodeGate { started: Some(at(0)), ..Default::default() };
        gone.observe(
            &spec,
            Ok(&probed(&[], vec![ReadValue::Error("no map \"counters\"".into()), ReadValue::Value(0)])),
            at(0),
        );
        assert!(matches!(gone.verdict(&spec, &progs(), at(1)), Verdict::Failed(w) if w.contains("no map")));
    }

    #[test]
    fn an_unreadable_node_fails_after_the_window_and_grace() {
        let spec = HealthSpec { must_run: true, ..Default::default() };
        let mut g = NodeGate { started: Some(at(0)), ..Default::default() };
        g.observe(&spec, Err("connection refused".into()), at(0));
        assert_eq!(g.verdict(&spec, &progs(), at(20)), Verdict::Waiting(PROBE_EVERY));
        let Verdict::Failed(why) = g.verdict(&spec, &progs(), at(41)) else { panic!() };
        assert!(why.contains("connection refused"), "{why}");
    }

    #[test]
    fn the_book_starts_windows_forgets_unhealthy_nodes_and_keeps_failures() {
        let book = GateBook::default();
        let spec = HealthSpec { min_ready_seconds: 5, ..Default::default() };
        let running: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let programs = progs();
        let scope = |revision| Scope { uid: "u", revision, spec: &spec, programs: &programs };
        let g = book.judge(scope("r1"), &running, false, at(0));
        assert!(g.passed.is_empty() && g.wake == Some(Duration::from_secs(5)));
        let g = book.judge(scope("r1"), &running, false, at(5));
        assert_eq!(g.passed.len(), 2);
        // A new revision starts over; a settled one is passed at once.
        let g = book.judge(scope("r2"), &running, true, at(6));
        assert_eq!(g.passed.len(), 2);
        let g = book.judge(scope("r3"), &running, false, at(6));
        assert!(g.passed.is_empty());
    }
}
