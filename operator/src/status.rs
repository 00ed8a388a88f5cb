//! `BpfProgram.status` from what the nodes report. Pure. Conditions follow the
//! Kubernetes conventions and kstatus: `Ready`, `Progressing`, `Degraded`, each with
//! `observedGeneration`, and a `lastTransitionTime` that only moves when its status does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crds::limits::MAX_STATUS_FAILURES;
use crds::program::NodeFailure;
use crds::reason::Reason;
use crds::{BpfProgramStatus, Health};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
/// kstatus: True while the operator works towards the spec (InProgress).
pub const RECONCILING: &str = "Reconciling";
/// kstatus: True when progress stopped on an error (Failed).
pub const STALLED: &str = "Stalled";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// How one target node stands with the desired revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeOutcome {
    /// Runs the desired revision, every program attached.
    Ready,
    /// Not there yet (being applied, or not reported).
    Pending,
    /// The agent refused or failed the apply.
    Failed { program: Option<String>, reason: FailReason, message: String },
    /// The agent could not be reached (for longer than the grace period).
    Unreachable { message: String },
    /// The node's agent is not Ready yet, or stopped answering less than the grace
    /// period ago: the node waits for it (Reconciling), it has not failed.
    WaitingForAgent { message: String },
    /// The node runs no agent at all (the agent DaemonSet leaves it out). Counted as
    /// waiting; it holds nothing up.
    NoAgent,
}

/// Why a node failed, as `status.failures[].reason` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// The agent refused or failed the apply, for a documented reason.
    Agent(Reason),
    /// The node runs the revision but reports it unhealthy.
    Health(Health),
    /// A reason no [`Reason`] names (another agent version's), or the gRPC code of an
    /// error the agent sent without one.
    Other(String),
}

impl std::fmt::Display for FailReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailReason::Agent(r) => f.write_str(r.as_str()),
            FailReason::Health(h) => write!(f, "{h:?}"),
            FailReason::Other(s) => f.write_str(s),
        }
    }
}

impl From<&str> for FailReason {
    /// A reason as an agent names it.
    fn from(s: &str) -> Self {
        Reason::parse(s).map_or_else(|| FailReason::Other(s.to_string()), FailReason::Agent)
    }
}

/// How a failed node reads in a rollout's messages: "reason (program): message".
pub fn failure_text(outcome: &NodeOutcome) -> Option<String> {
    let NodeOutcome::Failed { program, reason, message } = outcome else { return None };
    Some(match program {
        Some(prog) => format!("{reason} ({prog}): {message}"),
        None => format!("{reason}: {message}"),
    })
}

/// Where a node's agent stands, for [`agent_outcome`].
#[derive(Clone, Copy, Debug)]
pub struct AgentView {
    pub agent: crate::agents::AgentState,
    /// An agent pod that is not Ready: since when (its Ready condition's last transition).
    pub not_ready_since: Option<Timestamp>,
    /// The agent has answered this operator before (it ran; it did not just never start).
    pub answered: bool,
    /// Since when calls to it fail, as the index recorded.
    pub unreachable_since: Option<Timestamp>,
}

/// A node's outcome as status shows it: what its agent last reported (`reported`),
/// except where its agent is not there to say.
///
/// - no agent pod: `NoAgent`, unless the node reported running it (or failing it): a
///   rolling update of the agents removes a pod before its replacement comes;
/// - an agent pod not Ready: what it reported, when that was running or failing;
///   otherwise `WaitingForAgent`, and `Unreachable` (a failure) once an agent that ran has
///   been away longer than `grace`;
/// - a Ready agent that stopped answering: `WaitingForAgent` for `grace` from its first
///   failed call (an agent never reached fails at once).
///
/// Also returns how long until a grace period ends, when one runs.
pub fn agent_outcome(
    reported: NodeOutcome,
    a: &AgentView,
    grace: Duration,
    now: Timestamp,
) -> (NodeOutcome, Option<Duration>) {
    use crate::agents::AgentState;
    let settled = matches!(reported, NodeOutcome::Ready | NodeOutcome::Failed { .. });
    let left_since = |since: Timestamp| -> Option<Duration> {
        let gone: Duration = now.duration_since(since).try_into().unwrap_or_default();
        grace.checked_sub(gone).filter(|l| !l.is_zero())
    };
    match a.agent {
        AgentState::Absent if settled => (reported, None),
        AgentState::Absent => (NodeOutcome::NoAgent, None),
        AgentState::Starting if settled => (reported, None),
        AgentState::Starting => match a.not_ready_since.filter(|_| a.answered) {
            Some(since) => match left_since(since) {
                Some(left) => (waiting_since(since, grace, "its agent pod is not Ready"), Some(left)),
                None => (
                    NodeOutcome::Unreachable { message: format!("its agent pod has not been Ready since {since}") },
                    None,
                ),
            },
            None => (NodeOutcome::WaitingForAgent { message: "its agent pod is not Ready".into() }, None),
        },
        AgentState::Ready => {
            let NodeOutcome::Unreachable { message } = &reported else { return (reported, None) };
            match a.unreachable_since.filter(|_| a.answered).and_then(|s| left_since(s).map(|l| (s, l))) {
                Some((since, left)) => (waiting_since(since, grace, message), Some(left)),
                None => (reported, None),
            }
        }
    }
}

fn waiting_since(since: Timestamp, grace: Duration, why: &str) -> NodeOutcome {
    NodeOutcome::WaitingForAgent {
        message: format!("its agent is away since {since} ({why}); counted failed after {}s", grace.as_secs()),
    }
}

/// A problem with the spec itself: no node can run it until it is fixed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecProblem {
    pub reason: Reason,
    pub message: String,
}

pub struct StatusInput<'a> {
    pub generation: Option<i64>,
    pub revision: Option<&'a str>,
    pub targets: &'a BTreeSet<String>,
    pub outcomes: &'a BTreeMap<String, NodeOutcome>,
    pub spec_problem: Option<&'a SpecProblem>,
    /// Per failed node: failed applies in a row and the time of the next try.
    pub retries: &'a BTreeMap<String, (u32, Time)>,
    pub previous: Option<&'a BpfProgramStatus>,
    /// Where the rollout of `revision` stands (see `rollout`).
    pub rollout: Option<&'a crds::rollout::RolloutStatus>,
    pub now: Time,
}

fn condition(type_: &str, ok: bool, reason: &str, message: String, input: &StatusInput<'_>) -> Condition {
    let status = if ok { "True" } else { "False" }.to_string();
    // Keep the transition time while the status stays the same.
    let last_transition_time = input
        .previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| input.now.clone());
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: input.generation,
        last_transition_time,
    }
}

/// "node-7: VerifierRejected: …" lines, the first few, for condition messages.
fn summarize(failures: &[NodeFailure], total: usize) -> String {
    let mut parts: Vec<String> = failures
        .iter()
        .take(3)
        .map(|f| match &f.program {
            Some(p) => format!("{}: {} ({p}): {}", f.node, f.reason, f.message),
            None => format!("{}: {}: {}", f.node, f.reason, f.message),
        })
        .collect();
    if total > parts.len() {
        parts.push(format!("and {} more", total - parts.len()));
    }
    parts.join("; ")
}

pub fn compute(input: &StatusInput<'_>) -> BpfProgramStatus {
    let total = input.targets.len();
    let mut ready = 0usize;
    let mut pending = 0usize;
    let mut no_agent = 0usize;
    let mut waits: Vec<String> = Vec::new();
    let mut failures = Vec::new();
    for node in input.targets {
        match input.outcomes.get(node).unwrap_or(&NodeOutcome::Pending) {
            NodeOutcome::Ready => ready += 1,
            NodeOutcome::Pending => pending += 1,
            NodeOutcome::NoAgent => no_agent += 1,
            NodeOutcome::WaitingForAgent { message } => waits.push(format!("{node} ({message})")),
            NodeOutcome::Failed { program, reason, message } => {
                let retry = input.retries.get(node);
                failures.push(NodeFailure {
                    node: node.clone(),
                    program: program.clone(),
                    reason: reason.to_string(),
                    message: message.clone(),
                    attempts: retry.map(|(n, _)| *n as i32),
                    next_retry_time: retry.map(|(_, t)| t.clone()),
                })
            }
            NodeOutcome::Unreachable { message } => failures.push(NodeFailure {
                node: node.clone(),
                program: None,
                reason: Reason::AgentUnreachable.into(),
                message: message.clone(),
                attempts: None,
                next_retry_time: None,
            }),
        }
    }
    let failed = failures.len();
    let starting = waits.len();
    let waiting = starting + no_agent;
    // Nodes that run (or are about to run) an agent: the ones the program can be on.
    let active = total - no_agent;
    let wait_summary = {
        let mut parts: Vec<String> = waits.iter().take(3).cloned().collect();
        if starting > parts.len() {
            parts.push(format!("and {} more", starting - parts.len()));
        }
        format!("{starting} node(s) wait for their agent: {}", parts.join("; "))
    };
    let no_agent_note = match no_agent {
        0 => String::new(),
        n => format!("; {n} selected node(s) run no bpfleet agent"),
    };
    let rev = input.revision.unwrap_or("-");
    let conditions = if let Some(problem) = input.spec_problem {
        vec![
            condition(READY, false, problem.reason.as_str(), problem.message.clone(), input),
            condition(RECONCILING, false, problem.reason.as_str(), "waiting for the spec to be fixed".into(), input),
            condition(STALLED, true, problem.reason.as_str(), problem.message.clone(), input),
            condition(PROGRESSING, false, problem.reason.as_str(), "waiting for the spec to be fixed".into(), input),
            condition(DEGRADED, true, problem.reason.as_str(), problem.message.clone(), input),
        ]
    } else {
        let summary = summarize(&failures, failed);
        let (ready_ok, ready_reason, ready_msg) = if total == 0 {
            (true, "NoTargetNodes", "no node matches nodeSelector".to_string())
        } else if active == 0 {
            (
                false,
                "NoAgents",
                format!(
                    "none of the {total} selected node(s) runs a bpfleet agent (see the agent DaemonSet's \
                     nodeSelector and tolerations)"
                ),
            )
        } else if ready == active {
            (true, "AllNodesReady", format!("{ready}/{active} nodes run revision {rev}{no_agent_note}"))
        } else if failed > 0 {
            (false, "NodeFailures", format!("{failed}/{total} nodes failed: {summary}"))
        } else if pending == 0 && starting > 0 {
            (false, "WaitingForAgents", format!("{ready}/{active} nodes run revision {rev}; {wait_summary}"))
        } else {
            (false, "Progressing", format!("{ready}/{active} nodes run revision {rev}{no_agent_note}"))
        };
        let (prog_ok, prog_reason, prog_msg) = if pending > 0 {
            (true, "Applying", format!("applying revision {rev}: {pending}/{total} nodes pending"))
        } else if starting > 0 && failed == 0 {
            (true, "WaitingForAgents", wait_summary.clone())
        } else if failed > 0 {
            (false, "Stalled", format!("revision {rev} settled with {failed} failed nodes"))
        } else {
            (false, "Complete", format!("revision {rev} applied"))
        };
        let degraded = if failed > 0 {
            condition(DEGRADED, true, "NodeFailures", format!("{failed}/{total} nodes failed: {summary}"), input)
        } else {
            condition(DEGRADED, false, "NoFailures", "no node reports a failure".into(), input)
        };
        // kstatus reads Reconciling before Stalled: a program with failed nodes is
        // Stalled (Flux: Failed) even while other nodes are still pending.
        let (reconciling, stalled) = if failed > 0 {
            (
                condition(RECONCILING, false, "NodeFailures", format!("{failed}/{total} nodes failed"), input),
                condition(STALLED, true, "NodeFailures", format!("{failed}/{total} nodes failed: {summary}"), input),
            )
        } else if pending > 0 {
            (
                condition(
                    RECONCILING,
                    true,
                    "Applying",
                    format!("applying revision {rev}: {pending}/{total} nodes pending"),
                    input,
                ),
                condition(STALLED, false, "NoFailures", "no node reports a failure".into(), input),
            )
        } else if starting > 0 {
            (
                condition(RECONCILING, true, "WaitingForAgents", wait_summary.clone(), input),
                condition(STALLED, false, "NoFailures", "no node reports a failure".into(), input),
            )
        } else {
            (
                condition(RECONCILING, false, ready_reason, format!("revision {rev} applied"), input),
                condition(STALLED, false, "NoFailures", "no node reports a failure".into(), input),
            )
        };
        vec![
            condition(READY, ready_ok, ready_reason, ready_msg, input),
            reconciling,
            stalled,
            condition(PROGRESSING, prog_ok, prog_reason, prog_msg, input),
            degraded,
        ]
    };
    let conditions = match (input.spec_problem, input.rollout) {
        (None, Some(r)) => with_rollout(conditions, r, input),
        _ => conditions,
    };
    failures.sort_by(|a, b| a.node.cmp(&b.node));
    failures.truncate(MAX_STATUS_FAILURES);
    // Agent and registry text enters the status here: control characters go (issue 21).
    crds::sanitize::program_status(BpfProgramStatus {
        observed_generation: input.generation,
        revision: input.revision.map(str::to_string),
        target_nodes: total as i32,
        ready_nodes: ready as i32,
        failed_nodes: failed as i32,
        waiting_nodes: waiting as i32,
        conditions,
        failures,
        // A spec problem computes no rollout: keep the last one (its stable revision,
        // a halt) rather than forget it.
        rollout: input.rollout.cloned().or_else(|| input.previous.and_then(|p| p.rollout.clone())),
        image: input.previous.and_then(|p| p.image.clone()),
        // Counted by the caller, which knows the pods (programs inside pods).
        target_pods: 0,
        ready_pods: 0,
        failed_pods: 0,
    })
}

/// With a rollout, its phase decides how the program stands ([`crds::standing`]): the
/// kstatus conditions say exactly that (`Reconciling` for InProgress, `Stalled` for
/// Failed, neither for Suspended and Current), and `Ready` is True only once the rollout is
/// Complete (a node in its health gate window, or a paused canary, is not the spec done).
fn with_rollout(
    mut conditions: Vec<Condition>,
    r: &crds::rollout::RolloutStatus,
    input: &StatusInput<'_>,
) -> Vec<Condition> {
    use crds::rollout::Phase;
    use crds::standing::{Standing, of_rollout};
    let message = r.message.clone().unwrap_or_default();
    let reason = match r.phase {
        Phase::Progressing => "RolloutProgressing",
        Phase::Paused => "RolloutPaused",
        Phase::Halted => "RolloutHalted",
        Phase::RolledBack => "RolledBack",
        Phase::Degraded => "RolloutDegraded",
        Phase::Complete => "RolloutComplete",
    };
    let node_stalled = conditions.iter().any(|c| c.type_ == STALLED && c.status == "True");
    let mut set = |type_: &str, ok: bool| {
        let c = condition(type_, ok, reason, message.clone(), input);
        match conditions.iter_mut().find(|x| x.type_ == type_) {
            Some(x) => *x = c,
            None => conditions.push(c),
        }
    };
    let standing = of_rollout(r);
    if standing == Standing::Current || (r.phase == Phase::Degraded && node_stalled) {
        // The node counts already tell Complete's story (and which nodes run no agent),
        // and Degraded's: `NodeFailures`, each failed node with its error.
        return conditions;
    }
    set(READY, false);
    set(RECONCILING, standing.reconciling());
    set(STALLED, standing.stalled());
    set(PROGRESSING, standing == Standing::InProgress);
    if standing == Standing::Failed {
        set(DEGRADED, true);
    }
    conditions
}

/// Status while a deletion waits for nodes to remove the program.
pub fn deleting(
    previous: Option<&BpfProgramStatus>,
    waiting: &BTreeMap<String, String>,
    now: Time,
) -> BpfProgramStatus {
    let nodes: Vec<String> = waiting.iter().take(5).map(|(n, why)| format!("{n} ({why})")).collect();
    let more = waiting.len().saturating_sub(nodes.len());
    let message = format!(
        "deleting: waiting for {} node(s) to remove the program: {}{}",
        waiting.len(),
        nodes.join(", "),
        if more > 0 { format!(" and {more} more") } else { String::new() }
    );
    deleting_because(previous, "Deleting", &message, now)
}

/// The status of a program whose deletion waits, with `reason` and `message` on its
/// conditions (`Deleting`: nodes still to remove it; `MapsInUse`: programs using its maps).
pub fn deleting_because(
    previous: Option<&BpfProgramStatus>,
    reason: &str,
    message: &str,
    now: Time,
) -> BpfProgramStatus {
    let mut status = previous.cloned().unwrap_or_default();
    let message = message.to_string();
    let input = StatusInput {
        generation: status.observed_generation,
        revision: None,
        targets: &BTreeSet::new(),
        outcomes: &BTreeMap::new(),
        spec_problem: None,
        retries: &BTreeMap::new(),
        previous,
        rollout: None,
        now,
    };
    status.conditions = vec![
        condition(READY, false, reason, message.clone(), &input),
        condition(RECONCILING, true, reason, message.clone(), &input),
        condition(STALLED, false, reason, "deletion in progress".into(), &input),
        condition(PROGRESSING, true, reason, message, &input),
        condition(DEGRADED, false, reason, "deletion in progress".into(), &input),
    ];
    status
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn targets(n: &[&str]) -> BTreeSet<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn cond<'a>(s: &'a BpfProgramStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    fn failed(reason: &str, msg: &str) -> NodeOutcome {
        NodeOutcome::Failed { program: Some("count_packets".into()), reason: reason.into(), message: msg.into() }
    }

    fn input<'a>(
        targets: &'a BTreeSet<String>,
        outcomes: &'a BTreeMap<String, NodeOutcome>,
        previous: Option<&'a BpfProgramStatus>,
        now: i64,
    ) -> StatusInput<'a> {
        StatusInput {
            generation: Some(4),
            revision: Some("5f1c2a0000000000"),
            targets,
            outcomes,
            spec_problem: None,
            retries: &NO_RETRIES,
            previous,
            rollout: None,
            now: t(now),
        }
    }

    static NO_RETRIES: BTreeMap<String, (u32, Time)> = BTreeMap::new();

    #[test]
    fn all_ready() {
        let tg = targets(&["a", "b"]);
        let out = BTreeMap::from([("a".into(), NodeOutcome::Ready), ("b".into(), NodeOutcome::Ready)]);
        let s = compute(&input(&tg, &out, None, 10));
        assert_eq!((s.target_nodes, s.ready_nodes, s.failed_nodes), (2, 2, 0));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, READY).reason, "AllNodesReady");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert!(s.conditions.iter().all(|c| c.observed_generation == Some(4)));
        assert_eq!(s.observed_generation, Some(4));
    }

    #[test]
    fn pending_nodes_are_progressing_not_failed() {
        let tg = targets(&["a", "b", "c"]);
        let out = BTreeMap::from([("a".into(), NodeOutcome::Ready)]);
        let s = compute(&input(&tg, &out, None, 10));
        assert_eq!((s.ready_nodes, s.failed_nodes), (1, 0));
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, READY).message, "1/3 nodes run revision 5f1c2a0000000000");
        assert_eq!(cond(&s, PROGRESSING).status, "True");
        assert_eq!(cond(&s, PROGRESSING).message, "applying revision 5f1c2a0000000000: 2/3 nodes pending");
    }

    /// What kstatus (sigs.k8s.io/cli-utils, used by Flux health checks) makes of a
    /// status: its generic rules for custom resources.
    fn kstatus(s: &BpfProgramStatus, generation: i64) -> &'static str {
        if s.observed_generation != Some(generation) {
            return "InProgress";
        }
        let is_true = |t: &str| s.conditions.iter().any(|c| c.type_ == t && c.status == "True");
        if is_true(RECONCILING) {
            "InProgress"
        } else if is_true(STALLED) {
            "Failed"
        } else {
            "Current"
        }
    }

    #[test]
    fn gitops_tools_read_converging_failing_and_done() {
        let tg = targets(&["a", "b"]);
        let half = BTreeMap::from([("a".into(), NodeOutcome::Ready)]);
        let s = compute(&input(&tg, &half, None, 10));
        assert_eq!(kstatus(&s, 4), "InProgress");
        assert_eq!(kstatus(&s, 5), "InProgress", "a newer generation is not observed yet");
        let all = BTreeMap::from([("a".into(), NodeOutcome::Ready), ("b".into(), NodeOutcome::Ready)]);
        assert_eq!(kstatus(&compute(&input(&tg, &all, None, 10)), 4), "Current");
        // A failed node with another still pending: Failed, with the retry in status.
        let tg3 = targets(&["a", "b", "c"]);
        let bad = BTreeMap::from([("a".into(), NodeOutcome::Ready), ("b".into(), failed("VerifierRejected", "R0"))]);
        let retries = BTreeMap::from([("b".to_string(), (3, t(50)))]);
        let mut i = input(&tg3, &bad, None, 10);
        i.retries = &retries;
        let s = compute(&i);
        assert_eq!(kstatus(&s, 4), "Failed");
        assert_eq!(cond(&s, STALLED).reason, "NodeFailures");
        assert!(cond(&s, STALLED).message.contains("b: VerifierRejected (count_packets): R0"));
        assert_eq!((s.failures[0].attempts, s.failures[0].next_retry_time.clone()), (Some(3), Some(t(50))));
        // A spec nobody can run is Failed too.
        let problem = SpecProblem { reason: Reason::InvalidSpec, message: "x".into() };
        let mut i = input(&tg, &half, None, 10);
        i.spec_problem = Some(&problem);
        assert_eq!(kstatus(&compute(&i), 4), "Failed");
        // Deleting is InProgress.
        let d = deleting(Some(&s), &BTreeMap::from([("a".to_string(), "x".to_string())]), t(20));
        assert_eq!(kstatus(&d, 4), "InProgress");
        for c in &compute(&input(&tg, &all, None, 10)).conditions {
            assert_eq!(c.observed_generation, Some(4), "{}", c.type_);
        }
    }

    #[test]
    fn failures_are_counted_named_and_capped() {
        let names: Vec<String> = (0..40).map(|i| format!("node-{i:02}")).collect();
        let tg: BTreeSet<String> = names.iter().cloned().collect();
        let mut out: BTreeMap<String, NodeOutcome> = names.iter().map(|n| (n.clone(), NodeOutcome::Ready)).collect();
        for n in &names[..20] {
            out.insert(n.clone(), failed("VerifierRejected", "invalid access to packet"));
        }
        out.insert("node-39".into(), NodeOutcome::Unreachable { message: "connect timeout".into() });
        let s = compute(&input(&tg, &out, None, 10));
        assert_eq!((s.target_nodes, s.ready_nodes, s.failed_nodes), (40, 19, 21));
        assert_eq!(s.failures.len(), MAX_STATUS_FAILURES);
        assert_eq!(s.failures[0].node, "node-00");
        let ready = cond(&s, READY);
        assert_eq!(ready.reason, "NodeFailures");
        assert!(
            ready.message.starts_with(
                "21/40 nodes failed: node-00: VerifierRejected (count_packets): invalid access to packet; node-01"
            ),
            "{}",
            ready.message
        );
        assert!(ready.message.ends_with("and 18 more"), "{}", ready.message);
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(cond(&s, PROGRESSING).reason, "Stalled");
    }

    #[test]
    fn unreachable_agent_degrades_then_recovers() {
        let tg = targets(&["a"]);
        let down = BTreeMap::from([("a".into(), NodeOutcome::Unreachable { message: "refused".into() })]);
        let s1 = compute(&input(&tg, &down, None, 10));
        assert_eq!(s1.failures[0].reason, "AgentUnreachable");
        assert_eq!(cond(&s1, DEGRADED).status, "True");
        let up = BTreeMap::from([("a".into(), NodeOutcome::Ready)]);
        let s2 = compute(&input(&tg, &up, Some(&s1), 20));
        assert_eq!(cond(&s2, DEGRADED).status, "False");
        assert_eq!(cond(&s2, DEGRADED).last_transition_time, t(20));
        assert!(s2.failures.is_empty());
    }

    #[test]
    fn transition_time_moves_only_with_status() {
        let tg = targets(&["a", "b"]);
        let half = BTreeMap::from([("a".into(), NodeOutcome::Ready)]);
        let s1 = compute(&input(&tg, &half, None, 10));
        // Same statuses later, different message: times stay.
        let s2 = compute(&input(&tg, &BTreeMap::new(), Some(&s1), 20));
        for c in &s2.conditions {
            assert_eq!(c.last_transition_time, t(10), "{}", c.type_);
        }
        // Ready flips: only Ready and Progressing move.
        let all = BTreeMap::from([("a".into(), NodeOutcome::Ready), ("b".into(), NodeOutcome::Ready)]);
        let s3 = compute(&input(&tg, &all, Some(&s2), 30));
        assert_eq!(cond(&s3, READY).last_transition_time, t(30));
        assert_eq!(cond(&s3, PROGRESSING).last_transition_time, t(30));
        assert_eq!(cond(&s3, DEGRADED).last_transition_time, t(10));
    }

    #[test]
    fn no_targets_is_ready() {
        let tg = targets(&[]);
        let s = compute(&input(&tg, &BTreeMap::new(), None, 10));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, READY).reason, "NoTargetNodes");
    }

    #[test]
    fn spec_problems_block_every_node() {
        let tg = targets(&["a"]);
        let problem = SpecProblem {
            reason: Reason::BytecodeUnavailable,
            message: "ConfigMap bpfleet-system/x has no key y.o".into(),
        };
        let none = BTreeMap::new();
        let mut i = input(&tg, &none, None, 10);
        i.spec_problem = Some(&problem);
        let s = compute(&i);
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, READY).reason, "BytecodeUnavailable");
        assert_eq!(cond(&s, DEGRADED).message, "ConfigMap bpfleet-system/x has no key y.o");
    }

    #[test]
    fn deletion_names_the_nodes_holding_it_up() {
        let waiting = BTreeMap::from([("node-3".to_string(), "agent unreachable: connection refused".to_string())]);
        let s = deleting(None, &waiting, t(5));
        let ready = cond(&s, READY);
        assert_eq!(ready.reason, "Deleting");
        assert!(ready.message.contains("node-3 (agent unreachable: connection refused)"), "{}", ready.message);
    }

    /// Every rollout phase (and both kinds of pause), through the status the operator
    /// writes: the kstatus conditions, what kstatus makes of them and the one standing
    /// (`crds::standing`) every other view derives from all tell the same story.
    #[test]
    fn every_rollout_phase_reads_the_same_in_every_view() {
        use crds::rollout::{Phase, RolloutStatus};
        use crds::standing::{Standing, of_status};
        let tg = targets(&["a", "b"]);
        let all = BTreeMap::from([("a".to_string(), NodeOutcome::Ready), ("b".to_string(), NodeOutcome::Ready)]);
        let half = BTreeMap::from([("a".to_string(), NodeOutcome::Ready), ("b".to_string(), NodeOutcome::Pending)]);
        let one_failed = BTreeMap::from([
            ("a".to_string(), NodeOutcome::Ready),
            ("b".to_string(), failed("VerifierRejected", "R1")),
        ]);
        let timed = RolloutStatus { pause_start_time: Some(t(90)), ..Default::default() };
        // (phase, extra rollout fields, node outcomes, standing, kstatus, Ready, Reconciling, Stalled)
        type Row<'a> =
            (Phase, RolloutStatus, &'a BTreeMap<String, NodeOutcome>, Standing, &'a str, &'a str, &'a str, &'a str);
        let table: Vec<Row<'_>> = vec![
            (
                Phase::Progressing,
                Default::default(),
                &half,
                Standing::InProgress,
                "InProgress",
                "False",
                "True",
                "False",
            ),
            // A failure within failureThreshold while the rollout goes on is still progress.
            (
                Phase::Progressing,
                Default::default(),
                &one_failed,
                Standing::InProgress,
                "InProgress",
                "False",
                "True",
                "False",
            ),
            (Phase::Paused, timed.clone(), &half, Standing::InProgress, "InProgress", "False", "True", "False"),
            (Phase::Paused, Default::default(), &half, Standing::Suspended, "Current", "False", "False", "False"),
            (Phase::Halted, Default::default(), &one_failed, Standing::Failed, "Failed", "False", "False", "True"),
            (Phase::RolledBack, Default::default(), &half, Standing::Failed, "Failed", "False", "False", "True"),
            (Phase::Degraded, Default::default(), &one_failed, Standing::Failed, "Failed", "False", "False", "True"),
            (Phase::Complete, Default::default(), &all, Standing::Current, "Current", "True", "False", "False"),
        ];
        for (phase, extra, outcomes, standing, ks, ready, reconciling, stalled) in table {
            let r = RolloutStatus { phase, message: Some(format!("{phase:?} says why")), ..extra };
            let mut i = input(&tg, outcomes, None, 100);
            i.rollout = Some(&r);
            let s = compute(&i);
            let what = format!("{phase:?} (pause started: {})", r.pause_start_time.is_some());
            assert_eq!(of_status(Some(&s), Some(4)), standing, "{what}");
            assert_eq!(kstatus(&s, 4), ks, "{what}");
            assert_eq!(standing.kstatus(), ks, "{what}");
            let got = (
                cond(&s, READY).status.as_str(),
                cond(&s, RECONCILING).status.as_str(),
                cond(&s, STALLED).status.as_str(),
            );
            assert_eq!(got, (ready, reconciling, stalled), "{what}");
            match phase {
                // Settled with failed nodes: each node and its error say why.
                Phase::Degraded => assert!(cond(&s, READY).message.contains("b: VerifierRejected"), "{what}"),
                Phase::Complete => {}
                _ => assert_eq!(cond(&s, READY).message, format!("{phase:?} says why"), "{what}: the rollout says why"),
            }
            assert_eq!(s.rollout.as_ref(), Some(&r));
        }
    }

    #[test]
    fn nodes_waiting_for_their_agent_reconcile_and_never_stall() {
        let tg = targets(&["n1", "n2", "n3"]);
        let waiting = NodeOutcome::WaitingForAgent { message: "agent pod not Ready".into() };
        let outcomes: BTreeMap<String, NodeOutcome> = [
            ("n1".to_string(), NodeOutcome::Ready),
            ("n2".to_string(), waiting),
            ("n3".to_string(), NodeOutcome::NoAgent),
        ]
        .into();
        let s = compute(&input(&tg, &outcomes, None, 1));
        assert_eq!((s.target_nodes, s.ready_nodes, s.failed_nodes, s.waiting_nodes), (3, 1, 0, 2));
        assert_eq!((cond(&s, READY).status.as_str(), cond(&s, READY).reason.as_str()), ("False", "WaitingForAgents"));
        assert!(cond(&s, READY).message.contains("n2 (agent pod not Ready)"), "{}", cond(&s, READY).message);
        assert_eq!(cond(&s, RECONCILING).status, "True");
        assert_eq!(cond(&s, STALLED).status, "False", "waiting is not a failure");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert!(s.failures.is_empty());

        // n2's agent is Ready and runs it; n3 still runs no agent: Ready, with a note.
        let outcomes: BTreeMap<String, NodeOutcome> = [
            ("n1".to_string(), NodeOutcome::Ready),
            ("n2".to_string(), NodeOutcome::Ready),
            ("n3".to_string(), NodeOutcome::NoAgent),
        ]
        .into();
        let s = compute(&input(&tg, &outcomes, None, 2));
        assert_eq!((s.ready_nodes, s.waiting_nodes), (2, 1));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(
            cond(&s, READY).message,
            "2/2 nodes run revision 5f1c2a0000000000; 1 selected node(s) run no bpfleet agent"
        );
        assert_eq!(cond(&s, RECONCILING).status, "False");
        assert_eq!(cond(&s, STALLED).status, "False");
    }

    #[test]
    fn selected_nodes_without_any_agent_hold_nothing_up() {
        let tg = targets(&["n1"]);
        let outcomes: BTreeMap<String, NodeOutcome> = [("n1".to_string(), NodeOutcome::NoAgent)].into();
        let s = compute(&input(&tg, &outcomes, None, 1));
        // Nothing runs it: not Ready (kubectl wait keeps waiting), yet nothing to do or
        // fix here either (kstatus: Current).
        assert_eq!((cond(&s, READY).status.as_str(), cond(&s, READY).reason.as_str()), ("False", "NoAgents"));
        assert_eq!(cond(&s, RECONCILING).status, "False");
        assert_eq!(cond(&s, STALLED).status, "False");
        assert_eq!(s.waiting_nodes, 1);
    }

    #[test]
    fn a_failure_beside_a_waiting_node_is_still_stalled() {
        let tg = targets(&["n1", "n2"]);
        let outcomes: BTreeMap<String, NodeOutcome> = [
            ("n1".to_string(), failed("VerifierRejected", "R1 invalid mem access")),
            ("n2".to_string(), NodeOutcome::WaitingForAgent { message: "starting".into() }),
        ]
        .into();
        let s = compute(&input(&tg, &outcomes, None, 1));
        assert_eq!(cond(&s, STALLED).status, "True");
        assert_eq!(cond(&s, RECONCILING).status, "False");
        assert_eq!((s.failed_nodes, s.waiting_nodes), (1, 1));
    }

    mod agents {
        use std::time::Duration;

        use super::super::*;
        use crate::agents::AgentState::{self, Absent, Ready as Up, Starting};

        const GRACE: Duration = Duration::from_secs(60);

        fn at(secs: i64) -> Timestamp {
            Timestamp::from_second(1_000_000 + secs).unwrap()
        }

        fn view(agent: AgentState, not_ready: Option<i64>, answered: bool, unreachable: Option<i64>) -> AgentView {
            AgentView { agent, not_ready_since: not_ready.map(at), answered, unreachable_since: unreachable.map(at) }
        }

        fn unreachable() -> NodeOutcome {
            NodeOutcome::Unreachable { message: "connection refused".into() }
        }

        fn failed() -> NodeOutcome {
            NodeOutcome::Failed { program: None, reason: "VerifierRejected".into(), message: "R1".into() }
        }

        /// (what the node reported, where its agent stands, now) -> the kind of outcome
        /// shown and whether a grace period runs.
        #[test]
        fn what_status_shows_of_a_node_by_where_its_agent_stands() {
            let kind = |o: &NodeOutcome| match o {
                NodeOutcome::Ready => "Ready",
                NodeOutcome::Pending => "Pending",
                NodeOutcome::Failed { .. } => "Failed",
                NodeOutcome::Unreachable { .. } => "Unreachable",
                NodeOutcome::WaitingForAgent { .. } => "Waiting",
                NodeOutcome::NoAgent => "NoAgent",
            };
            let cases: Vec<(&str, NodeOutcome, AgentView, i64, &str, bool)> = vec![
                ("ready agent, running", NodeOutcome::Ready, view(Up, None, true, None), 0, "Ready", false),
                ("ready agent, pending", NodeOutcome::Pending, view(Up, None, true, None), 0, "Pending", false),
                ("stopped answering 10 s ago", unreachable(), view(Up, None, true, Some(-10)), 0, "Waiting", true),
                ("stopped answering 61 s ago", unreachable(), view(Up, None, true, Some(-61)), 0, "Unreachable", false),
                ("never answered", unreachable(), view(Up, None, false, Some(-1)), 0, "Unreachable", false),
                (
                    "restarting, still runs it",
                    NodeOutcome::Ready,
                    view(Starting, Some(-5), true, None),
                    0,
                    "Ready",
                    false,
                ),
                ("restarting, failed before", failed(), view(Starting, Some(-5), true, None), 0, "Failed", false),
                ("restarting, pending", NodeOutcome::Pending, view(Starting, Some(-5), true, None), 0, "Waiting", true),
                (
                    "away 2 min, pending",
                    NodeOutcome::Pending,
                    view(Starting, Some(-120), true, None),
                    0,
                    "Unreachable",
                    false,
                ),
                (
                    "away 2 min, unreachable",
                    unreachable(),
                    view(Starting, Some(-120), true, Some(-120)),
                    0,
                    "Unreachable",
                    false,
                ),
                (
                    "joining, never ran",
                    NodeOutcome::Pending,
                    view(Starting, Some(-600), false, None),
                    0,
                    "Waiting",
                    false,
                ),
                ("no pod, never ran", NodeOutcome::Pending, view(Absent, None, false, None), 0, "NoAgent", false),
                ("pod replaced, still runs it", NodeOutcome::Ready, view(Absent, None, true, None), 0, "Ready", false),
            ];
            for (what, reported, v, now, want, grace_runs) in cases {
                let (got, left) = agent_outcome(reported, &v, GRACE, at(now));
                assert_eq!((kind(&got), left.is_some()), (want, grace_runs), "{what}: {got:?}");
            }
        }

        #[test]
        fn the_waiting_message_does_not_change_while_the_outage_lasts() {
            let v = view(Up, None, true, Some(0));
            let (a, left_a) = agent_outcome(unreachable(), &v, GRACE, at(5));
            let (b, left_b) = agent_outcome(unreachable(), &v, GRACE, at(30));
            assert_eq!(a, b, "a message that moved with the clock would rewrite status on every reconcile");
            assert_eq!((left_a, left_b), (Some(Duration::from_secs(55)), Some(Duration::from_secs(30))));
        }
    }

    #[test]
    fn failure_reasons_read_as_before() {
        assert_eq!(FailReason::from("VerifierRejected"), FailReason::Agent(Reason::VerifierRejected));
        assert_eq!(FailReason::from("FromANewerAgent"), FailReason::Other("FromANewerAgent".into()));
        assert_eq!(FailReason::Health(Health::Degraded).to_string(), "Degraded");
        let failed = |program: Option<&str>| NodeOutcome::Failed {
            program: program.map(Into::into),
            reason: FailReason::Agent(Reason::ProgramNotFound),
            message: "no f".into(),
        };
        assert_eq!(failure_text(&failed(Some("f"))).as_deref(), Some("ProgramNotFound (f): no f"));
        assert_eq!(failure_text(&failed(None)).as_deref(), Some("ProgramNotFound: no f"));
        assert_eq!(failure_text(&NodeOutcome::Pending), None);
    }
}
