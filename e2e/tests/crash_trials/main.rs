//! Operator crash trials (issue 12, point 1): SIGKILL the operator, one node's agent, or
//! both, at a seeded moment of a create, upgrade, progressive rollout step, rollback or
//! delete (or while an agent holds an apply at a fault point), restart what was killed
//! (sometimes killing it again while it recovers), and check that the fleet converges:
//! every node runs exactly what the spec says and nothing else, read from bpftool, tc,
//! ip and each agent's bpffs tree; BpfProgram and BpfNode status true.
//!
//! One environment (three process-mode nodes, one operator) serves every trial of a
//! run. Each trial first brings the cluster to its own starting state, unharmed, so any
//! trial replays alone.
//!
//! - `BPFLEET_CRASH_SEED` (default 424242): the seed, printed first;
//! - `BPFLEET_OPERATOR_TRIALS` (default 12): how many trials;
//! - `BPFLEET_CRASH_TRIAL=N`: replay only trial N of the seed.
//!
//! Without KUBECONFIG it prints one SKIP line. See docs/reliability.md.

mod plan;
mod world;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::rng;
use plan::{Action, Moment, Plan, Victim};
use world::World;

const TEST: &str = "operator_crash_trials";
const NODES: usize = 3;
/// The node whose agent holds gated applies after the commit (the others after the
/// attach). That point is reached only by an apply that replaces a revision.
const AFTER_COMMIT_NODE: usize = 1;
const DEFAULT_SEED: u64 = 424_242;
const DEFAULT_TRIALS: u64 = 12;
/// From the restart of what was killed to a converged fleet. The operator backs off
/// from an unreachable agent, so an agent restart may wait for its next attempt.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(150);
/// How long a gated kill waits for an apply to reach the fault point.
const GATE_TIMEOUT: Duration = Duration::from_secs(12);
/// Trials that failed before the run gives up (the world may be broken for the rest).
const MAX_FAILURES: usize = 3;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).map(|v| v.parse().unwrap_or_else(|e| panic!("{name}={v}: {e}")))
}

/// The class of a landing for the summary: its words without the counts.
fn landing_class(landed: &str) -> String {
    let head = landed.split(" [status").next().unwrap_or(landed);
    head.split(" (").next().unwrap_or(head).to_string()
}

#[test]
fn operator_crash_trials() {
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let seed = env_u64("BPFLEET_CRASH_SEED").unwrap_or(DEFAULT_SEED);
    let trials = env_u64("BPFLEET_OPERATOR_TRIALS").unwrap_or(DEFAULT_TRIALS);
    let only = env_u64("BPFLEET_CRASH_TRIAL");
    let indices: Vec<u64> = match only {
        Some(t) => vec![t],
        None => (0..trials).collect(),
    };
    eprintln!(
        "{TEST}: seed {seed}, {} trial(s){} (replay one: BPFLEET_CRASH_SEED={seed} BPFLEET_CRASH_TRIAL=N)",
        indices.len(),
        only.map(|t| format!(" (only trial {t})")).unwrap_or_default()
    );
    let started = Instant::now();
    let mut world = World::start(&kubeconfig);
    world.checker_finds_planted_leaks();
    let (mut run, mut converged, mut leaks, mut failed) = (0, 0, 0, Vec::new());
    let mut landings: BTreeMap<String, usize> = BTreeMap::new();
    let mut victims: BTreeMap<String, usize> = BTreeMap::new();
    for &i in &indices {
        let plan = Plan::draw(&mut rng::for_trial(seed, i));
        let o = world.run(i, &plan);
        run += 1;
        leaks += o.leaks;
        let kind = match plan.moment {
            Moment::Delay(_) => "delay",
            Moment::Gate(_) | Moment::GateCanary => "gate",
        };
        *landings.entry(format!("{kind}: {}", landing_class(&o.landed))).or_default() += 1;
        let victim = match plan.victim {
            Victim::Operator => "operator",
            Victim::Agent(_) => "agent",
            Victim::Both(_) => "operator+agent",
        };
        *victims.entry(victim.to_string()).or_default() += 1;
        if let Some(r) = &o.recovery {
            for part in r.split("; ") {
                let class = if part.starts_with("operator") {
                    "recovery: operator after it led".to_string()
                } else {
                    format!("recovery: agent {}", part.split('(').nth(1).unwrap_or("").trim_end_matches(')'))
                };
                *landings.entry(class).or_default() += 1;
            }
        }
        eprintln!(
            "trial {i}: {} | landed: {}{} | {} {:.1}s after the kill | leaks {}",
            plan.describe(),
            o.landed,
            o.recovery.as_ref().map(|r| format!(" | recovery: {r}")).unwrap_or_default(),
            if o.converged { "converged" } else { "NOT converged" },
            o.took.as_secs_f64(),
            o.leaks
        );
        if o.converged && o.leaks == 0 {
            converged += 1;
        } else {
            for w in &o.findings.wrong {
                eprintln!("    wrong: {w}");
            }
            for l in &o.findings.leaks {
                eprintln!("    leak: {l}");
            }
            eprintln!(
                "----- operator (last lines) -----\n{}",
                world.env.operator.as_ref().map(|o| o.log_tail(40)).unwrap_or_default()
            );
            for n in &world.env.nodes {
                eprintln!("----- agent {} (last lines) -----\n{}", n.name, n.log_tail(15));
            }
            failed.push(i);
            if failed.len() >= MAX_FAILURES {
                eprintln!("{TEST}: {MAX_FAILURES} trials failed, stopping the run");
                break;
            }
        }
    }
    eprintln!("{TEST}: kills by victim: {victims:?}");
    for (class, n) in &landings {
        eprintln!("{TEST}: landed {class}: {n}");
    }
    eprintln!(
        "seed {seed}: {run} trials run, {converged} converged, {leaks} leaks ({:.0}s)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "trials {failed:?} of seed {seed} did not converge cleanly (replay with BPFLEET_CRASH_TRIAL)"
    );
    assert_eq!(leaks, 0);
}

#[test]
fn plans_replay_from_the_seed_and_cover_every_choice() {
    let draw = |t| Plan::draw(&mut rng::for_trial(424_242, t)).describe();
    assert_eq!(draw(7), draw(7));
    let plans: Vec<Plan> = (0..200).map(|t| Plan::draw(&mut rng::for_trial(1, t))).collect();
    for a in [Action::Create, Action::Upgrade, Action::Rollout, Action::Rollback, Action::Delete] {
        assert!(plans.iter().any(|p| p.action == a), "{a:?} never drawn");
    }
    assert!(plans.iter().any(|p| matches!(p.moment, Moment::Gate(_))));
    assert!(plans.iter().any(|p| p.moment == Moment::GateCanary));
    assert!(plans.iter().any(|p| p.recovery_kill.is_some()));
    for p in &plans {
        assert_eq!(p.pre[&p.slot].is_none(), p.action == Action::Create, "{}", p.describe());
        assert_ne!(p.pre[&p.slot], p.to, "{}", p.describe());
        if p.action == Action::Delete {
            assert!(matches!(p.moment, Moment::Delay(_)), "a delete reaches no apply fault point");
        }
        if p.moment == Moment::GateCanary {
            assert_eq!(p.action, Action::Rollback);
        }
    }
}
