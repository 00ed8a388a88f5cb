use super::*;
use crds::rollout::{Pause, ResumeStep, RolloutStep};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeSet;

use crate::plan::ProgramView;

const OLD: &str = "r0";
const NEW: &str = "r1";

fn nodes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("n{i}")).collect()
}

fn all_on(order: &[String], rev: &str) -> BTreeMap<String, Observed> {
    order.iter().map(|n| (n.clone(), Observed { revision: rev.into(), health: Health::Healthy })).collect()
}

fn step(nodes: IntOrString, pause: Option<Option<&str>>) -> RolloutStep {
    RolloutStep { nodes, pause: pause.map(|d| Pause { duration: d.map(str::to_string) }) }
}

fn pct(p: &str) -> IntOrString {
    IntOrString::String(p.into())
}

fn canary_spec() -> RolloutSpec {
    RolloutSpec {
        steps: vec![step(IntOrString::Int(1), None), step(pct("60%"), None), step(pct("100%"), None)],
        max_in_flight: Some(IntOrString::Int(2)),
        ..Default::default()
    }
}

fn stable(rev: &str) -> RolloutStatus {
    RolloutStatus {
        phase: Phase::Complete,
        stable_revision: Some(rev.into()),
        update_revision: Some(rev.into()),
        ..Default::default()
    }
}

struct World {
    order: Vec<String>,
    observed: BTreeMap<String, Observed>,
    failed: BTreeMap<String, String>,
    unreachable: BTreeSet<String>,
    status: Option<RolloutStatus>,
    settings: Settings,
    /// With health gates: the nodes that passed them.
    gated: Option<BTreeSet<String>>,
    analysis: Option<crds::health::PrometheusGate>,
    measurement: Option<Result<f64, String>>,
    action: Option<Action>,
    now: Timestamp,
}

impl World {
    fn new(n: usize, spec: RolloutSpec) -> World {
        let order = nodes(n);
        World {
            observed: all_on(&order, OLD),
            settings: Settings::resolve(Some(&spec), n),
            order,
            failed: BTreeMap::new(),
            unreachable: BTreeSet::new(),
            status: Some(stable(OLD)),
            gated: None,
            analysis: None,
            measurement: None,
            action: None,
            now: Timestamp::from_second(1_800_000_000).unwrap(),
        }
    }

    fn decide(&mut self, update: &str) -> Decision {
        let d = decide(&Input {
            update,
            order: &self.order,
            observed: &self.observed,
            failed: &self.failed,
            unreachable: &self.unreachable,
            previous: self.status.as_ref(),
            settings: &self.settings,
            gated: self.gated.as_ref(),
            gate_wait: None,
            analysis: self.analysis.as_ref(),
            measurement: self.measurement.take(),
            action: self.action.take(),
            now: self.now,
        });
        self.status = Some(d.status.clone());
        d
    }

    /// Carry the assignment out: every node sent a revision runs it, healthy, unless it
    /// is in `bad` (its apply of `bad_rev` fails and it keeps what it ran).
    fn apply(&mut self, d: &Decision, bad: &[&str], bad_rev: &str) {
        for (n, want) in &d.assign {
            match want {
                Some(w) if bad.contains(&n.as_str()) && w == bad_rev => {
                    self.failed.insert(n.clone(), "VerifierRejected: invalid mem access".into());
                }
                Some(w) => {
                    self.failed.remove(n);
                    self.observed.insert(n.clone(), Observed { revision: w.clone(), health: Health::Healthy });
                }
                None => {
                    self.observed.remove(n);
                }
            }
        }
    }

    fn count(&self, rev: &str) -> usize {
        self.observed.values().filter(|o| o.revision == rev).count()
    }

    fn switching(&self, d: &Decision) -> usize {
        d.assign.iter().filter(|(n, w)| w.as_deref() != self.observed.get(*n).map(|o| o.revision.as_str())).count()
    }
}

#[test]
fn settings_default_to_one_node_at_a_time_in_one_step() {
    let s = Settings::resolve(None, 5);
    assert_eq!(s.strategy, Strategy::Progressive);
    assert_eq!(s.steps, vec![Step { nodes: 5, pause: None }]);
    assert_eq!((s.max_in_flight, s.failure_threshold, s.on_failure), (1, 0, OnFailure::Halt));
    assert_eq!(s.deadline, DEFAULT_DEADLINE);
    // A last step short of 100% gets an implicit 100%.
    let spec = RolloutSpec { steps: vec![step(IntOrString::Int(1), Some(Some("2m")))], ..Default::default() };
    let s = Settings::resolve(Some(&spec), 5);
    assert_eq!(
        s.steps,
        vec![
            Step { nodes: 1, pause: Some(PauseUntil::Elapsed(Duration::from_secs(120))) },
            Step { nodes: 5, pause: None }
        ]
    );
}

#[test]
fn the_order_is_stable_spread_across_zones_and_per_program() {
    let names: Vec<String> = (0..6).map(|i| format!("node-{i}")).collect();
    let zone = |i: usize| if i < 3 { "a" } else { "b" };
    let ranked: Vec<Ranked<'_>> =
        names.iter().enumerate().map(|(i, n)| Ranked { name: n, zone: Some(zone(i)) }).collect();
    let first = order("uid-1", &ranked);
    let mut shuffled = ranked.clone();
    shuffled.reverse();
    assert_eq!(order("uid-1", &shuffled), first, "input order does not matter");
    let zone_of = |n: &str| zone(n.trim_start_matches("node-").parse().unwrap());
    assert_ne!(zone_of(&first[0]), zone_of(&first[1]), "the first two nodes are in different zones: {first:?}");
    assert_ne!(order("uid-2", &ranked), first, "another program picks other canaries");
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(sorted, names);
}

#[test]
fn a_good_revision_goes_out_step_by_step_within_max_in_flight() {
    let mut w = World::new(5, canary_spec());
    let mut history = Vec::new();
    for _ in 0..20 {
        let d = w.decide(NEW);
        assert!(w.switching(&d) <= 2, "at most maxInFlight nodes switch at once: {d:?}");
        history.push((d.status.step, w.count(NEW)));
        if d.status.phase == Phase::Complete {
            break;
        }
        // Nodes not yet reached keep the old revision: nothing sends them anything.
        for (n, want) in &d.assign {
            if want.as_deref() == Some(OLD) {
                assert_eq!(w.observed[n].revision, OLD);
            }
        }
        w.apply(&d, &[], "");
    }
    let st = w.status.clone().unwrap();
    assert_eq!(st.phase, Phase::Complete);
    assert_eq!(st.stable_revision.as_deref(), Some(NEW));
    assert_eq!(st.updated_nodes, 5);
    assert_eq!(w.count(NEW), 5);
    // Step 1 stops at one node (the canary) before step 2 widens to 3 of 5 (60%).
    assert_eq!(history[0], (1, 0));
    assert_eq!(history[1], (2, 1), "{history:?}");
    assert!(history.contains(&(3, 3)), "{history:?}");
}

#[test]
fn a_bad_revision_halts_after_the_canary_and_nobody_else_gets_it() {
    let mut w = World::new(5, canary_spec());
    let d = w.decide(NEW);
    let canary: Vec<String> =
        d.assign.iter().filter(|(_, r)| r.as_deref() == Some(NEW)).map(|(n, _)| n.clone()).collect();
    assert_eq!(canary.len(), 1);
    let order = w.order.clone();
    let bad: Vec<&str> = order.iter().map(String::as_str).collect();
    w.apply(&d, &bad, NEW);
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::Halted);
    assert_eq!(d.status.failed_nodes, 1);
    let msg = d.status.message.clone().unwrap();
    assert!(msg.contains(&canary[0]) && msg.contains("VerifierRejected"), "{msg}");
    assert!(d.assign.values().all(|r| r.as_deref() == Some(OLD)), "nobody is sent {NEW}: {d:?}");
    // It stays halted, also after the canary's retry would have succeeded.
    w.failed.clear();
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::Halted);
    assert!(d.assign.values().all(|r| r.as_deref() == Some(OLD)));
}

#[test]
fn a_node_unhealthy_after_the_apply_counts_as_failed() {
    let mut w = World::new(5, canary_spec());
    let d = w.decide(NEW);
    w.apply(&d, &[], "");
    let canary = w.observed.iter().find(|(_, o)| o.revision == NEW).map(|(n, _)| n.clone()).unwrap();
    w.observed.get_mut(&canary).unwrap().health = Health::Degraded;
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::Halted);
    assert!(d.status.message.unwrap().contains("unhealthy after the apply"));
}

#[test]
fn rollback_returns_updated_nodes_to_stable_and_stays() {
    let spec = RolloutSpec { on_failure: OnFailure::Rollback, ..canary_spec() };
    let mut w = World::new(5, spec);
    // Step 1 and 2 succeed on 3 nodes, then one of the next fails.
    let mut failed_one = false;
    for _ in 0..10 {
        let d = w.decide(NEW);
        if d.status.phase != Phase::Progressing {
            break;
        }
        let next: Vec<&str> = if w.count(NEW) >= 3 && !failed_one {
            failed_one = true;
            d.assign
                .iter()
                .filter(|(n, r)| r.as_deref() == Some(NEW) && w.observed[*n].revision == OLD)
                .map(|(n, _)| n.as_str())
                .collect()
        } else {
            vec![]
        };
        let next: Vec<String> = next.iter().map(|s| s.to_string()).collect();
        let next: Vec<&str> = next.iter().map(String::as_str).collect();
        w.apply(&d, &next, NEW);
    }
    let st = w.status.clone().unwrap();
    assert_eq!(st.phase, Phase::RolledBack, "{st:?}");
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::RolledBack);
    assert!(d.assign.values().all(|r| r.as_deref() == Some(OLD)), "{d:?}");
    assert!(d.status.message.unwrap().contains("rolling back to revision r0"));
}

#[test]
fn a_revert_to_stable_touches_nodes_still_on_it_and_switches_the_others_back() {
    let mut w = World::new(5, canary_spec());
    let d = w.decide(NEW);
    let order = w.order.clone();
    let all: Vec<&str> = order.iter().map(String::as_str).collect();
    w.apply(&d, &all, NEW);
    assert_eq!(w.decide(NEW).status.phase, Phase::Halted);
    // The canary's apply failed, so it still runs r0; make it one that got r1 instead.
    let canary = w.order[0].clone();
    w.failed.clear();
    w.observed.insert(canary.clone(), Observed { revision: NEW.into(), health: Health::Degraded });
    let d = w.decide(OLD);
    assert_eq!(d.assign[&canary].as_deref(), Some(OLD));
    assert_eq!(w.switching(&d), 1, "only the canary switches back: {d:?}");
    w.apply(&d, &[], "");
    let d = w.decide(OLD);
    assert_eq!(d.status.phase, Phase::Complete);
    assert_eq!(d.status.stable_revision.as_deref(), Some(OLD));
}

#[test]
fn pause_by_spec_and_by_a_step_without_duration() {
    let spec = RolloutSpec {
        steps: vec![step(IntOrString::Int(1), Some(None)), step(pct("100%"), None)],
        max_in_flight: Some(pct("100%")),
        ..Default::default()
    };
    let mut w = World::new(5, spec.clone());
    let d = w.decide(NEW);
    w.apply(&d, &[], "");
    assert_eq!(w.count(NEW), 1);
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::Paused);
    assert!(d.status.message.clone().unwrap().contains("resume"));
    assert_eq!(w.switching(&d), 0);
    // A resume for another revision does not count.
    let resume = |rev: &str| RolloutSpec { resume: Some(ResumeStep { revision: rev.into(), step: 1 }), ..spec.clone() };
    w.settings = Settings::resolve(Some(&resume("ffffffffffffffff")), 5);
    assert_eq!(w.decide(NEW).status.phase, Phase::Paused);
    w.settings = Settings::resolve(Some(&resume(NEW)), 5);
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(d.status.step, 2);
    assert_eq!(w.switching(&d), 4);
    // spec.rollout.paused holds everything, whatever the step.
    w.settings.paused = true;
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::Paused);
    assert_eq!(w.switching(&d), 0);
    w.settings.paused = false;
    let d = w.decide(NEW);
    w.apply(&d, &[], "");
    assert_eq!(w.decide(NEW).status.phase, Phase::Complete);
}

#[test]
fn a_timed_pause_ends_by_itself() {
    let spec = RolloutSpec {
        steps: vec![step(IntOrString::Int(1), Some(Some("2m")))],
        max_in_flight: Some(pct("100%")),
        ..Default::default()
    };
    let mut w = World::new(3, spec);
    let d = w.decide(NEW);
    w.apply(&d, &[], "");
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::Paused);
    assert_eq!(d.wake, Some(Duration::from_secs(120)));
    w.now += Duration::from_secs(60);
    let d = w.decide(NEW);
    assert_eq!((d.status.phase, d.wake), (Phase::Paused, Some(Duration::from_secs(60))));
    w.now += Duration::from_secs(61);
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(w.switching(&d), 2);
}

#[test]
fn a_step_over_its_deadline_counts_as_failed() {
    let spec = RolloutSpec { progress_deadline_seconds: Some(60), ..canary_spec() };
    let mut w = World::new(5, spec);
    let d = w.decide(NEW);
    // The canary never reports back.
    assert_eq!(d.status.phase, Phase::Progressing);
    w.now += Duration::from_secs(61);
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::Halted);
    assert!(d.status.message.unwrap().contains("did not finish within 60s"));
}

#[test]
fn failures_within_the_threshold_are_tolerated() {
    let spec = RolloutSpec { failure_threshold: 1, ..canary_spec() };
    let mut w = World::new(5, spec);
    let bad = w.order[0].clone();
    for _ in 0..10 {
        let d = w.decide(NEW);
        if d.status.phase == Phase::Degraded {
            break;
        }
        w.apply(&d, &[bad.as_str()], NEW);
    }
    // Every node was tried; the tolerated failure keeps it from Complete (and it is
    // retried): Degraded, a settled failure every view calls Stalled.
    let st = w.status.clone().unwrap();
    assert_eq!(st.phase, Phase::Degraded, "{st:?}");
    assert_eq!((st.updated_nodes, st.failed_nodes), (4, 1));
    assert!(st.message.as_deref().unwrap().contains("1 failed and are retried"), "{st:?}");
    // The failed node recovers: Complete.
    w.failed.clear();
    let d = w.decide(NEW);
    w.apply(&d, &[], "");
    assert_eq!(w.decide(NEW).status.phase, Phase::Complete);
}

#[test]
fn a_new_spec_supersedes_a_running_rollout_from_step_one_over_the_same_stable() {
    let mut w = World::new(5, canary_spec());
    let d = w.decide(NEW);
    w.apply(&d, &[], "");
    let on_new: Vec<String> = w.observed.iter().filter(|(_, o)| o.revision == NEW).map(|(n, _)| n.clone()).collect();
    let d = w.decide("r2");
    assert_eq!(d.status.step, 1);
    assert_eq!(d.status.stable_revision.as_deref(), Some(OLD));
    assert_eq!(d.status.update_revision.as_deref(), Some("r2"));
    // The node on the superseded revision keeps it (untouched) until it is reached.
    for n in &on_new {
        assert!(matches!(d.assign[n].as_deref(), Some(NEW) | Some("r2")), "{d:?}");
    }
    assert!(w.switching(&d) <= 2);
}

#[test]
fn a_first_install_goes_everywhere_at_once_like_a_daemonset() {
    let mut w = World::new(5, canary_spec());
    w.observed.clear();
    w.status = None;
    let d = w.decide(NEW);
    assert_eq!(w.switching(&d), 5, "{d:?}");
    let bad = w.order[0].clone();
    w.apply(&d, &[bad.as_str()], NEW);
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::Degraded, "settled with a failure: failed nodes are retried, nothing stops");
    assert_eq!(d.assign[&bad].as_deref(), Some(NEW));
    assert_eq!(d.status.stable_revision.as_deref(), Some(NEW), "settled: no node pending");
    // The next revision then rolls out over it, progressively.
    w.failed.clear();
    w.apply(&d, &[], "");
    assert_eq!(w.decide(NEW).status.phase, Phase::Complete);
    let d = w.decide("r2");
    assert_eq!(w.switching(&d), 1, "a change is progressive: {d:?}");
}

#[test]
fn a_rollback_without_a_stable_revision_removes_it() {
    let spec = RolloutSpec { on_failure: OnFailure::Rollback, ..canary_spec() };
    let mut w = World::new(5, spec);
    // r0 runs but never settled (no stable), and r1's canary fails.
    w.status = None;
    let d = w.decide(NEW);
    let order = w.order.clone();
    let all: Vec<&str> = order.iter().map(String::as_str).collect();
    w.apply(&d, &all, NEW);
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::RolledBack);
    assert!(d.assign.values().all(|r| r.as_deref() == Some(OLD)), "nodes that never got r1 keep r0: {d:?}");
    assert!(d.status.message.unwrap().contains("removing it"));
}

#[test]
fn without_a_stable_revision_a_rollback_takes_the_new_one_only_off_the_nodes_that_got_it() {
    let spec = RolloutSpec { on_failure: OnFailure::Rollback, failure_threshold: 0, ..canary_spec() };
    let mut w = World::new(5, spec);
    w.status = None;
    // r1 reached two nodes (one of them unhealthy), r0 never settled anywhere.
    let (n0, n1) = (w.order[0].clone(), w.order[1].clone());
    w.observed.insert(n0.clone(), Observed { revision: NEW.into(), health: Health::Healthy });
    w.observed.insert(n1.clone(), Observed { revision: NEW.into(), health: Health::Degraded });
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::RolledBack);
    assert_eq!((d.assign[&n0].clone(), d.assign[&n1].clone()), (None, None));
    assert!(w.order[2..].iter().all(|n| d.assign[n].as_deref() == Some(OLD)), "{d:?}");
    // And it stays so.
    let d = w.decide(NEW);
    assert_eq!(d.assign[&n0], None);
    assert_eq!(d.assign[&w.order[4]].as_deref(), Some(OLD));
}

#[test]
fn after_a_restart_with_nothing_listed_yet_a_rollout_does_not_turn_into_a_first_install() {
    let mut w = World::new(5, canary_spec());
    let d = w.decide(NEW);
    w.apply(&d, &[], "");
    // A new leader whose agents have not answered yet: the index is empty.
    w.observed.clear();
    let d = w.decide(NEW);
    assert!(d.assign.values().filter(|r| r.as_deref() == Some(NEW)).count() <= 2, "{d:?}");
    assert_ne!(d.status.phase, Phase::Complete);
}

#[test]
fn an_unreachable_node_holds_no_step_up_and_takes_no_slot() {
    let spec = RolloutSpec { steps: vec![step(IntOrString::Int(2), None)], ..canary_spec() };
    let mut w = World::new(5, spec);
    // The first ranked node is unreachable: the canary slots go to reachable ones.
    let away = w.order[0].clone();
    w.unreachable.insert(away.clone());
    for _ in 0..10 {
        let d = w.decide(NEW);
        assert_ne!(d.assign[&away].as_deref(), Some(NEW), "never sent while away... until complete: {d:?}");
        if d.status.step == 2 {
            break;
        }
        assert!(w.switching(&d) <= 2);
        w.apply(&d, &[], "");
    }
    assert_eq!(w.count(NEW), 2, "step 1 done with two reachable nodes");
}

#[test]
fn all_at_once_sends_every_node_the_revision() {
    let spec = RolloutSpec { strategy: Strategy::AllAtOnce, ..Default::default() };
    let mut w = World::new(5, spec);
    let d = w.decide(NEW);
    assert_eq!(w.switching(&d), 5);
    w.apply(&d, &[], "");
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::Complete);
    assert_eq!(d.status.stable_revision.as_deref(), Some(NEW));
}

#[test]
fn the_decision_plugs_into_plan() {
    let mut w = World::new(3, canary_spec());
    let d = w.decide(NEW);
    let targets: BTreeSet<String> = w.order.iter().cloned().collect();
    let held = BTreeSet::new();
    let view = ProgramView { desired: NEW, targets: &targets, observed: &w.observed, held: &held, pods: None };
    let actions = crate::plan::plan(&view, &d);
    assert_eq!(actions.len(), 1, "only the canary is sent anything: {actions:?}");
    assert!(actions.values().all(|a| *a == crate::plan::Action::Apply(NEW.into())));
}

fn pause_spec() -> RolloutSpec {
    RolloutSpec {
        steps: vec![
            step(IntOrString::Int(1), Some(None)),
            step(pct("60%"), Some(Some("10m"))),
            step(pct("100%"), None),
        ],
        max_in_flight: Some(IntOrString::Int(5)),
        ..Default::default()
    }
}

/// Decide and carry out until the phase stops changing.
fn settle(w: &mut World) -> RolloutStatus {
    for _ in 0..10 {
        let d = w.decide(NEW);
        w.apply(&d, &[], "");
    }
    w.status.clone().unwrap()
}

#[test]
fn a_node_counts_only_once_it_passed_its_health_gates() {
    let mut w = World::new(5, canary_spec());
    w.gated = Some(BTreeSet::new());
    let st = settle(&mut w);
    assert_eq!((st.step, st.phase), (1, Phase::Progressing), "the canary runs it, but has not passed: {st:?}");
    assert_eq!(w.count(NEW), 1);
    // Passed: the rollout goes on.
    w.gated = Some(w.order.iter().filter(|n| w.observed[*n].revision == NEW).cloned().collect());
    let d = w.decide(NEW);
    assert_eq!(d.status.step, 2, "{d:?}");
}

#[test]
fn a_failed_gate_stops_the_rollout_like_a_failed_apply() {
    let spec = RolloutSpec { on_failure: OnFailure::Rollback, ..canary_spec() };
    let mut w = World::new(5, spec);
    w.gated = Some(BTreeSet::new());
    let d = w.decide(NEW);
    w.apply(&d, &[], "");
    let canary = w.order.iter().find(|n| w.observed[*n].revision == NEW).unwrap().clone();
    w.failed.insert(
        canary.clone(),
        "HealthGateFailed: ProgramDidNotRun: count (program id 7, run count stayed at 0)".into(),
    );
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::RolledBack);
    let msg = d.status.message.unwrap();
    assert!(msg.contains(&format!("{canary}: HealthGateFailed: ProgramDidNotRun")), "{msg}");
    assert_eq!(d.assign[&canary].as_deref(), Some(OLD), "back to the stable revision");
}

#[test]
fn the_prometheus_gate_measures_each_step_end_and_fails_past_its_limit() {
    let mut w = World::new(5, canary_spec());
    w.analysis = Some(crds::health::PrometheusGate {
        address: "http://127.0.0.1:9090".into(),
        query: "drops".into(),
        min: None,
        max: Some(1.0),
        count: Some(2),
        interval_seconds: Some(10),
        failure_limit: 0,
    });
    let d = w.decide(NEW);
    w.apply(&d, &[], "");
    let d = w.decide(NEW);
    assert!(d.measure, "step 1 done: a measurement is due: {d:?}");
    assert_eq!(d.status.step, 1);
    w.measurement = Some(Ok(0.5));
    let d = w.decide(NEW);
    assert!(!d.measure, "the next one is 10 s away");
    assert_eq!(d.wake, Some(Duration::from_secs(10)));
    assert_eq!(d.status.analysis.as_ref().map(|a| (a.measurements, a.failures)), Some((1, 0)));
    w.now += Duration::from_secs(10);
    assert!(w.decide(NEW).measure);
    w.measurement = Some(Ok(0.7));
    let d = w.decide(NEW);
    assert_eq!(d.status.step, 2, "two good measurements: the next step: {d:?}");
    assert_eq!(d.status.analysis, None);
    w.apply(&d, &[], "");
    // Step 2's end measures too; an out-of-bounds value stops it.
    let d = w.decide(NEW);
    assert!(d.measure, "{d:?}");
    w.measurement = Some(Ok(3.5));
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::Halted);
    let msg = d.status.message.unwrap();
    assert!(
        msg.contains("Prometheus gate failed at the end of step 2/3") && msg.contains("3.5 is above the maximum 1"),
        "{msg}"
    );
}

#[test]
fn actions_resume_promote_abort_and_retry_a_rollout_without_a_spec_change() {
    let mut w = World::new(5, pause_spec());
    let st = settle(&mut w);
    assert_eq!((st.phase, st.step), (Phase::Paused, 1), "held after the canary: {st:?}");
    assert_eq!(crds::standing::of_rollout(&st), crds::standing::Standing::Suspended);
    // promote: past step 1; step 2 has a timed pause.
    w.action = Some(Action::Promote);
    let st = settle(&mut w);
    assert_eq!((st.phase, st.step), (Phase::Paused, 2), "{st:?}");
    assert_eq!(st.last_action.as_deref(), Some("promote"));
    assert_eq!(crds::standing::of_rollout(&st), crds::standing::Standing::InProgress, "a timed pause ends by itself");
    // promote-full: every node, no more pauses.
    w.action = Some(Action::PromoteFull);
    let st = settle(&mut w);
    assert_eq!(st.phase, Phase::Complete, "{st:?}");
    assert_eq!(w.count(NEW), 5);

    // abort: back to the stable revision; retry: from step 1 again.
    let mut w = World::new(5, pause_spec());
    settle(&mut w);
    w.action = Some(Action::Abort);
    let st = settle(&mut w);
    assert_eq!(st.phase, Phase::RolledBack);
    assert!(st.aborted && st.message.as_deref().unwrap().starts_with("aborted"), "{st:?}");
    assert_eq!(w.count(NEW), 0);
    w.action = Some(Action::Retry);
    let st = settle(&mut w);
    assert_eq!((st.phase, st.step, st.aborted), (Phase::Paused, 1, false), "{st:?}");
    assert_eq!(w.count(NEW), 1);
    // A new revision starts clean: no action carries over.
    let d = w.decide("r2");
    assert!(!d.status.aborted && d.status.last_action.is_none() && d.status.promoted_step.is_none());
}

#[test]
fn a_node_whose_agent_is_away_holds_its_step_until_it_returns_or_fails() {
    let mut w = World::new(3, RolloutSpec { max_in_flight: Some(IntOrString::Int(3)), ..Default::default() });
    let away = w.order[2].clone();
    w.unreachable.insert(away.clone());
    let st = settle(&mut w);
    assert_eq!(st.phase, Phase::Progressing, "not Complete while a node never got it: {st:?}");
    assert!(st.message.as_deref().unwrap().contains("1 wait for their agent"), "{st:?}");
    // It comes back (a reboot): it gets the revision and the rollout completes.
    w.unreachable.clear();
    assert_eq!(settle(&mut w).phase, Phase::Complete);
}

#[test]
fn counts_are_daemonset_style() {
    use crate::status::NodeOutcome;
    let targets: BTreeSet<String> = nodes(6).into_iter().collect();
    let mut observed = all_on(&nodes(6), OLD);
    for n in ["n0", "n1", "n2"] {
        observed.insert(n.into(), Observed { revision: NEW.into(), health: Health::Healthy });
    }
    observed.insert("n3".into(), Observed { revision: OLD.into(), health: Health::Degraded });
    observed.remove("n5");
    let outcomes = BTreeMap::from([
        ("n4".to_string(), NodeOutcome::WaitingForAgent { message: "x".into() }),
        ("n5".to_string(), NodeOutcome::NoAgent),
    ]);
    let gated: BTreeSet<String> = ["n0".to_string(), "n1".to_string()].into();
    let mut st = RolloutStatus::default();
    count_nodes(&mut st, NEW, &targets, &observed, &outcomes, Some(&gated));
    // n0, n1 ready; n2 in its gate window; n3 stable but unhealthy; n4 stable, healthy,
    // its agent away; n5 runs no agent.
    assert_eq!(
        (
            st.desired_nodes,
            st.updated_nodes,
            st.ready_nodes,
            st.available_nodes,
            st.unavailable_nodes,
            st.waiting_for_agent_nodes
        ),
        (5, 3, 2, 3, 2, 2)
    );
}

#[test]
fn degraded_is_settled_later_failures_and_new_nodes_stop_nothing() {
    let spec = RolloutSpec { failure_threshold: 1, on_failure: OnFailure::Rollback, ..canary_spec() };
    let mut w = World::new(5, spec);
    let bad = w.order[0].clone();
    for _ in 0..10 {
        let d = w.decide(NEW);
        w.apply(&d, &[bad.as_str()], NEW);
    }
    let st = w.status.clone().unwrap();
    assert_eq!((st.phase, st.stable_revision.as_deref()), (Phase::Degraded, Some(NEW)), "{st:?}");
    // Hours later another node fails (its agent away past its grace): nothing rolls back.
    w.now += Duration::from_secs(7200);
    w.failed.insert(w.order[3].clone(), "AgentUnreachable: gone".into());
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::Degraded, "{d:?}");
    assert!(d.assign.values().all(|r| r.as_deref() == Some(NEW)), "nobody is sent back: {d:?}");
}

#[test]
fn the_deadline_runs_from_the_last_progress_and_not_through_a_pause() {
    // Five nodes one at a time, each 40 s: 200 s for a step with a 60 s deadline.
    let spec = RolloutSpec { progress_deadline_seconds: Some(60), ..Default::default() };
    let mut w = World::new(5, spec);
    for _ in 0..5 {
        let d = w.decide(NEW);
        assert_ne!(d.status.phase, Phase::Halted, "{d:?}");
        w.now += Duration::from_secs(40);
        w.apply(&d, &[], "");
    }
    assert_eq!(w.decide(NEW).status.phase, Phase::Complete);

    // A canary held an hour at a pause that falls back is a new wait, not a late step.
    let mut w = World::new(5, pause_spec());
    let st = settle(&mut w);
    assert_eq!(st.phase, Phase::Paused);
    w.now += Duration::from_secs(3600);
    // Its link flapped: the canary is back in a health gate window (neither done nor failed).
    w.gated = Some(BTreeSet::new());
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::Progressing, "{d:?}");
    w.now += Duration::from_secs(10);
    assert_eq!(w.decide(NEW).status.phase, Phase::Progressing, "the deadline counts from the fall");
}

/// A resume lets a halted rollout go on once its failures are within the threshold; a
/// later stop needs a new one.
#[test]
fn a_stop_needs_a_new_resume_and_retry_forgets_promote_full() {
    let mut w = World::new(5, canary_spec());
    let bad = w.order[0].clone();
    let d = w.decide(NEW);
    w.apply(&d, &[bad.as_str()], NEW);
    assert_eq!(w.decide(NEW).status.phase, Phase::Halted);
    w.failed.clear();
    w.action = Some(Action::Resume);
    let d = w.decide(NEW);
    assert_eq!(d.status.phase, Phase::Progressing);
    w.apply(&d, &[bad.as_str()], NEW);
    let d = w.decide(NEW);
    assert_eq!((d.status.phase, d.status.promoted_step), (Phase::Halted, None), "halted again: {d:?}");
    w.failed.clear();
    assert_eq!(w.decide(NEW).status.phase, Phase::Halted, "the earlier resume does not lift the new halt");

    let mut w = World::new(5, pause_spec());
    settle(&mut w);
    w.action = Some(Action::PromoteFull);
    w.decide(NEW);
    w.action = Some(Action::Abort);
    settle(&mut w);
    w.action = Some(Action::Retry);
    let st = settle(&mut w);
    assert_eq!((st.phase, st.step, st.promoted_full), (Phase::Paused, 1, false), "from step 1 again: {st:?}");
}
