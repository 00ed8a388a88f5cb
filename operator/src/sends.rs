//! What to send to which node, and how each node stands: pure functions over one
//! [`Snapshot`] of the index and where each node's agent stands, beside `rollout` (how far
//! a rollout may go now) and `plan` (what each node must run). The controller reads the
//! index and the agents, calls these, and carries out what they return.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crds::health::HealthSpec;
use crds::rollout::{Action as RolloutAction, RolloutStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::agents::AgentState;
use crate::ascending::{Ascending, AscendingSet};
use crate::gates::Gated;
use crate::index::Snapshot;
use crate::plan::{Action, ProgramView, plan};
use crate::rollout::{self, Decision, Settings};
use crate::status::{self, NodeOutcome};
use crate::targets::{NodeAddr, NodeInfo};

/// One pass of a rollout of `revision` over `targets`.
#[derive(Clone, Debug)]
pub struct Round<'a> {
    pub revision: &'a str,
    pub targets: &'a BTreeSet<String>,
    /// Target nodes in rollout order ([`rollout::order`]).
    pub order: &'a [String],
    pub settings: &'a Settings,
    /// `status.rollout` as the last pass left it.
    pub previous: Option<&'a RolloutStatus>,
    /// How each target stands, seen through where its agent stands ([`node_outcomes`]):
    /// an agent away past its grace period is a failed node; one away for less, a node
    /// waiting for it; a node without an agent is none of the rollout's business.
    pub outcomes: &'a BTreeMap<String, NodeOutcome>,
    /// What the health gates say, when the spec has any.
    pub gates: Option<&'a Gated>,
    pub health: Option<&'a HealthSpec>,
    /// A measurement of the Prometheus gate, taken because the last pass asked for one.
    pub measurement: Option<Result<f64, String>>,
    pub action: Option<RolloutAction>,
    /// With programs inside pods: the pods each node must be, and is, attached in.
    pub pods: Option<&'a crate::plan::PodSets>,
    pub now: Timestamp,
}

/// Where the rollout stands, and what to ask each node now. `ready`: whether a node's
/// agent is Ready. A node whose agent is not Ready is left as it is (nothing sent,
/// nothing removed) until it is Ready again.
pub fn next_step(
    snap: &Snapshot,
    round: &Round<'_>,
    ready: impl Fn(&str) -> bool,
) -> (Decision, BTreeMap<String, Action>) {
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut away: BTreeSet<String> = BTreeSet::new();
    let mut no_agent: BTreeSet<&str> = BTreeSet::new();
    let (mut given, mut indexed) = (Ascending::new(round.outcomes), Ascending::new(&snap.outcomes));
    for n in round.targets {
        let outcome = given.get(n).or_else(|| indexed.get(n)).unwrap_or(&NodeOutcome::Pending);
        match outcome {
            NodeOutcome::Unreachable { message } => {
                failed.insert(n.clone(), format!("AgentUnreachable: {message}"));
            }
            NodeOutcome::WaitingForAgent { .. } | NodeOutcome::NoAgent => {
                if *outcome == NodeOutcome::NoAgent {
                    no_agent.insert(n);
                }
                away.insert(n.clone());
            }
            o => match status::failure_text(o) {
                Some(t) => {
                    failed.insert(n.clone(), t);
                }
                None if !ready(n) => {
                    away.insert(n.clone());
                }
                None => {}
            },
        }
    }
    if let Some(g) = round.gates {
        for (n, why) in &g.failed {
            let reason = crds::reason::Reason::HealthGateFailed;
            failed.entry(n.clone()).or_insert_with(|| format!("{reason}: {why}"));
        }
    }
    // Nodes that run no agent are not the rollout's to reach (DaemonSet's desired count
    // leaves them out too); they get the program when an agent comes.
    let order: std::borrow::Cow<'_, [String]> = match no_agent.is_empty() {
        true => round.order.into(),
        false => round.order.iter().filter(|n| !no_agent.contains(n.as_str())).cloned().collect(),
    };
    let gate_wait = round.gates.filter(|g| !g.due.is_empty() || g.wake.is_some()).map(|g| {
        let waiting = order
            .iter()
            .filter(|n| snap.observed.get(*n).is_some_and(|o| o.revision == round.revision))
            .filter(|n| !g.passed.contains(*n) && !g.failed.contains_key(*n))
            .count();
        format!("{waiting} node(s) in their health gate window")
    });
    let decision = rollout::decide(&rollout::Input {
        update: round.revision,
        order: &order,
        observed: &snap.observed,
        failed: &failed,
        unreachable: &away,
        previous: round.previous,
        settings: round.settings,
        gated: round.gates.map(|g| &g.passed),
        gate_wait: gate_wait.as_deref(),
        analysis: round.health.and_then(|h| h.prometheus.as_ref()),
        measurement: round.measurement.clone(),
        action: round.action,
        now: round.now,
    });
    let held = snap.holds(round.now);
    let view = ProgramView {
        desired: round.revision,
        targets: round.targets,
        observed: &snap.observed,
        held: &held,
        pods: round.pods,
    };
    let mut actions = plan(&view, &decision);
    actions.retain(|node, _| ready(node));
    (decision, actions)
}

/// `actions` grouped by the revision each node must run; a Remove (or Keep) goes with
/// `rev`, the revision at hand. Other revisions come from history.
pub fn by_revision(actions: BTreeMap<String, Action>, rev: &str) -> BTreeMap<String, BTreeMap<String, Action>> {
    let mut out: BTreeMap<String, BTreeMap<String, Action>> = BTreeMap::new();
    for (node, action) in actions {
        let key = match &action {
            Action::Apply(r) => r.clone(),
            _ => rev.to_string(),
        };
        out.entry(key).or_default().insert(node, action);
    }
    out
}

/// Where to reach the nodes of a pass's actions, each list in name order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Addresses {
    /// Nodes to send a revision.
    pub apply: Vec<NodeAddr>,
    /// Nodes to ask anything else (a Remove; a read for a Keep).
    pub other: Vec<NodeAddr>,
    /// Nodes that must be sent a revision but have no address: they fail. (A Remove to
    /// one is dropped.)
    pub no_address: Vec<String>,
}

/// Where to reach the node of each action. `nodes` in name order (as
/// `Context::node_infos` keeps them) are read beside `actions`; in any other order, each is
/// looked up.
pub fn addresses(actions: &BTreeMap<String, Action>, nodes: &[NodeInfo]) -> Addresses {
    let mut out = Addresses::default();
    let mut put = |n: &NodeInfo, action: &Action| match (action, n.internal_ip) {
        (Action::Apply(_), Some(ip)) => out.apply.push(NodeAddr { name: n.name.clone(), ip }),
        (_, Some(ip)) => out.other.push(NodeAddr { name: n.name.clone(), ip }),
        (Action::Apply(_), None) => out.no_address.push(n.name.clone()),
        (_, None) => {}
    };
    if nodes.is_sorted_by(|a, b| a.name < b.name) {
        let mut walk = Ascending::new(actions);
        for n in nodes {
            if let Some(action) = walk.get(n.name.as_str()) {
                put(n, action);
            }
        }
    } else {
        for n in nodes {
            if let Some(action) = actions.get(&n.name) {
                put(n, action);
            }
        }
        out.apply.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        out.other.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        out.no_address.sort_unstable();
    }
    out
}

/// How each target stands with the revision, for status: the index's word, seen through
/// where its agent stands (`agent`: its state, and since when it is not Ready; see
/// [`status::agent_outcome`]). Also how long until the first grace period ends.
pub fn node_outcomes(
    snap: &Snapshot,
    targets: &BTreeSet<String>,
    agent: impl Fn(&str) -> (AgentState, Option<Timestamp>),
    grace: Duration,
    now: Timestamp,
) -> (BTreeMap<String, NodeOutcome>, Option<Duration>) {
    let mut grace_ends: Option<Duration> = None;
    let mut answered = AscendingSet::new(&snap.answered);
    let mut unreachable_since = Ascending::new(&snap.unreachable_since);
    let mut reported = Ascending::new(&snap.outcomes);
    let outcomes = targets
        .iter()
        .map(|n| {
            let (agent, not_ready_since) = agent(n);
            let view = status::AgentView {
                agent,
                not_ready_since,
                answered: answered.contains(n),
                unreachable_since: unreachable_since.get(n).copied(),
            };
            let reported = reported.get(n).cloned().unwrap_or(NodeOutcome::Pending);
            let (outcome, left) = status::agent_outcome(reported, &view, grace, now);
            if let Some(left) = left {
                grace_ends = Some(grace_ends.map_or(left, |g| g.min(left)));
            }
            (n.clone(), outcome)
        })
        .collect();
    (outcomes, grace_ends)
}

/// Per target that failed the revision: failed applies in a row, and its next try.
pub fn retries(snap: &Snapshot, targets: &BTreeSet<String>) -> BTreeMap<String, (u32, Time)> {
    targets.iter().filter_map(|n| snap.retries.get(n).map(|(a, t)| (n.clone(), (*a, Time(*t))))).collect()
}

/// Whom a deletion asks to remove the program.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupPlan {
    /// Nodes that must answer before the object may go.
    pub ask: Vec<NodeAddr>,
    /// Nodes asked in case they run it, that hold nothing up.
    pub best_effort: Vec<NodeAddr>,
    /// Nodes that must answer but cannot be asked, with why.
    pub waiting: BTreeMap<String, String>,
}

/// Remove is idempotent: ask every node that runs it (as listed: `listed_runners`) or
/// that it targets (now, or at its last reconcile). A node never listed and never
/// targeted cannot hold it; if it somehow does, drift repair removes the then-unknown
/// owner. `agent`: where each node's agent stands.
pub fn cleanup_plan(
    nodes: &[NodeInfo],
    targets: &BTreeSet<String>,
    listed_runners: &BTreeSet<String>,
    never_listed: &BTreeSet<String>,
    agent: impl Fn(&str) -> AgentState,
) -> CleanupPlan {
    let mut plan = CleanupPlan::default();
    for n in nodes {
        let relevant = targets.contains(&n.name) || listed_runners.contains(&n.name);
        if !relevant {
            // A node whose agent never answered a List may still run it: ask, but an
            // unreachable one that was never targeted does not hold the deletion up.
            if never_listed.contains(&n.name)
                && !n.deleting
                && let Some(ip) = n.internal_ip
            {
                plan.best_effort.push(NodeAddr { name: n.name.clone(), ip });
            }
            continue;
        }
        // A Node being deleted takes its programs with it: it does not block deletion.
        if n.deleting {
            continue;
        }
        // A node that runs no agent cannot be asked, and no agent will come to answer:
        // ask in case one does, but it does not hold the deletion up.
        if agent(&n.name) == AgentState::Absent {
            if listed_runners.contains(&n.name)
                && let Some(ip) = n.internal_ip
            {
                plan.best_effort.push(NodeAddr { name: n.name.clone(), ip });
            }
            continue;
        }
        match n.internal_ip {
            Some(ip) => plan.ask.push(NodeAddr { name: n.name.clone(), ip }),
            None => {
                plan.waiting.insert(n.name.clone(), "no InternalIP to reach its agent".to_string());
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use crds::Health;
    use crds::reason::Reason;

    use super::*;
    use crate::plan::Observed;
    use crate::status::FailReason;

    fn set(n: &[&str]) -> BTreeSet<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + s).unwrap()
    }

    fn info(name: &str, ip: Option<&str>, deleting: bool) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: Default::default(),
            internal_ip: ip.map(|i| i.parse().unwrap()),
            deleting,
        }
    }

    fn addr(name: &str, ip: &str) -> NodeAddr {
        NodeAddr { name: name.into(), ip: ip.parse().unwrap() }
    }

    /// Every target, in name order, with the defaults (one step: every node at once).
    fn step(snap: &Snapshot, targets: &BTreeSet<String>, ready: &[&str]) -> (Decision, BTreeMap<String, Action>) {
        let order: Vec<String> = targets.iter().cloned().collect();
        let settings = Settings::resolve(None, targets.len());
        let outcomes = BTreeMap::new();
        let round = Round {
            revision: "r2",
            targets,
            order: &order,
            settings: &settings,
            previous: None,
            outcomes: &outcomes,
            gates: None,
            health: None,
            measurement: None,
            action: None,
            pods: None,
            now: at(0),
        };
        next_step(snap, &round, |n| ready.contains(&n))
    }

    #[test]
    fn every_ready_target_is_sent_the_revision_and_held_ones_wait() {
        let targets = set(&["a", "b", "c", "d"]);
        let mut snap = Snapshot::default();
        snap.observed.insert("a".into(), Observed { revision: "r2".into(), health: Health::Healthy });
        snap.observed.insert("gone".into(), Observed { revision: "r1".into(), health: Health::Healthy });
        // b failed r2 and waits for its next try; c's agent is not Ready.
        let failed = NodeOutcome::Failed {
            program: None,
            reason: FailReason::Agent(Reason::VerifierRejected),
            message: "x".into(),
        };
        snap.outcomes.insert("b".into(), failed);
        snap.retries.insert("b".into(), (1, at(5)));
        let (decision, actions) = step(&snap, &targets, &["a", "b", "d", "gone"]);
        assert_eq!(
            actions,
            BTreeMap::from([("d".to_string(), Action::Apply("r2".into())), ("gone".to_string(), Action::Remove)])
        );
        assert!(decision.assign.contains_key("c"), "c is a target, only not sent to");
        // Past its backoff, b is sent r2 again.
        snap.retries.insert("b".into(), (1, at(-1)));
        let (_, actions) = step(&snap, &targets, &["a", "b", "d", "gone"]);
        assert_eq!(actions.get("b"), Some(&Action::Apply("r2".into())));
    }

    #[test]
    fn actions_group_by_revision_and_need_an_address() {
        let actions = BTreeMap::from([
            ("a".to_string(), Action::Apply("r2".into())),
            ("b".to_string(), Action::Apply("r1".into())),
            ("c".to_string(), Action::Remove),
        ]);
        let groups = by_revision(actions.clone(), "r2");
        assert_eq!(groups.keys().collect::<Vec<_>>(), ["r1", "r2"]);
        assert_eq!(groups["r2"].keys().collect::<Vec<_>>(), ["a", "c"]);
        let nodes = [info("a", Some("10.0.0.1"), false), info("b", None, false), info("c", None, false)];
        let found = addresses(&actions, &nodes);
        assert_eq!(found.apply, [addr("a", "10.0.0.1")]);
        assert_eq!(found.no_address, ["b"], "a Remove to a node without an address is dropped");
        assert!(found.other.is_empty());
        // Nodes out of name order are looked up, with the same result in name order.
        let nodes = [
            info("c", Some("10.0.0.3"), false),
            info("b", None, false),
            info("x", Some("10.0.0.9"), false),
            info("a", Some("10.0.0.1"), false),
        ];
        let found = addresses(&actions, &nodes);
        assert_eq!(found.apply, [addr("a", "10.0.0.1")]);
        assert_eq!(found.other, [addr("c", "10.0.0.3")]);
        assert_eq!(found.no_address, ["b"]);
        let mut sorted = nodes.clone();
        sorted.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(addresses(&actions, &sorted), found);
    }

    #[test]
    fn outcomes_read_the_snapshot_through_the_agents() {
        let targets = set(&["ready", "failed", "absent", "away"]);
        let mut snap = Snapshot::default();
        snap.outcomes.insert("ready".into(), NodeOutcome::Ready);
        snap.outcomes.insert("away".into(), NodeOutcome::Unreachable { message: "refused".into() });
        snap.unreachable_since.insert("away".into(), at(-10));
        snap.answered.insert("away".into());
        snap.retries.insert("failed".into(), (2, at(30)));
        snap.retries.insert("not-a-target".into(), (1, at(30)));
        let agent = |n: &str| (if n == "absent" { AgentState::Absent } else { AgentState::Ready }, None);
        let (outcomes, grace_ends) = node_outcomes(&snap, &targets, agent, Duration::from_secs(60), at(0));
        assert_eq!(outcomes["ready"], NodeOutcome::Ready);
        assert_eq!(outcomes["failed"], NodeOutcome::Pending);
        assert_eq!(outcomes["absent"], NodeOutcome::NoAgent);
        assert!(matches!(outcomes["away"], NodeOutcome::WaitingForAgent { .. }), "{:?}", outcomes["away"]);
        assert_eq!(grace_ends, Some(Duration::from_secs(50)));
        assert_eq!(retries(&snap, &targets), BTreeMap::from([("failed".to_string(), (2, Time(at(30))))]));
    }

    #[test]
    fn cleanup_asks_who_may_run_it_and_waits_only_for_who_must_answer() {
        let nodes = [
            info("target", Some("10.0.0.1"), false),
            info("runner", Some("10.0.0.2"), false),
            info("no-ip", None, false),
            info("deleting", Some("10.0.0.4"), true),
            info("no-agent", Some("10.0.0.5"), false),
            info("never-listed", Some("10.0.0.6"), false),
            info("unrelated", Some("10.0.0.7"), false),
        ];
        let targets = set(&["target", "no-ip", "deleting", "no-agent"]);
        let runners = set(&["runner", "no-agent"]);
        let never_listed = set(&["never-listed", "target"]);
        let agent = |n: &str| if n == "no-agent" { AgentState::Absent } else { AgentState::Ready };
        let plan = cleanup_plan(&nodes, &targets, &runners, &never_listed, agent);
        assert_eq!(plan.ask, [addr("target", "10.0.0.1"), addr("runner", "10.0.0.2")]);
        assert_eq!(plan.best_effort, [addr("no-agent", "10.0.0.5"), addr("never-listed", "10.0.0.6")]);
        assert_eq!(plan.waiting.keys().collect::<Vec<_>>(), ["no-ip"]);
    }
}
