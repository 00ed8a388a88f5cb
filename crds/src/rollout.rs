//! `spec.rollout` and `status.rollout`: how a new revision reaches the target nodes.
//!
//! The default (no `spec.rollout`) is what DaemonSet's RollingUpdate does: one node at a
//! time (`maxInFlight: 1`) over all nodes in one step, stopping at the first failure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a new revision reaches the target nodes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// `Progressive` (default): nodes switch in steps, at most `maxInFlight` at a time,
    /// and a failure stops the rollout. `AllAtOnce`: every target node is sent the new
    /// revision at once and failures are retried node by node.
    #[serde(default)]
    pub strategy: Strategy,
    /// Each step widens the set of nodes that run the new revision, as a node count or
    /// a percentage of the target nodes (rounded up, at least one node), optionally
    /// followed by a pause. The nodes of early steps are chosen deterministically and
    /// spread across `topology.kubernetes.io/zone`. Default: one step of 100%. A last
    /// step below 100% is followed by an implicit 100%.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub steps: Vec<RolloutStep>,
    /// Nodes switching revision at the same moment (sent the new revision and not yet
    /// running it healthy), as a count or a percentage of the target nodes (rounded
    /// down, at least 1). Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<IntOrString>,
    /// Failed nodes tolerated before the rollout stops (`onFailure`). Default: 0.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100000))]
    pub failure_threshold: i32,
    /// What a stopped rollout does: `Halt` (default) keeps every node where it is and
    /// sends the new revision to no further node; `Rollback` returns the updated nodes
    /// to `status.rollout.stableRevision`.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// A step whose nodes do not all run the new revision healthy within this many
    /// seconds counts as failed. Default: 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub progress_deadline_seconds: Option<i32>,
    /// True holds the rollout where it is (no node is sent a new revision); false lets it
    /// go on. `kubectl bpfleet rollout pause|resume` set it.
    #[serde(default)]
    pub paused: bool,
    /// Lets the rollout of `revision` go past step `step`: ends a pause without a
    /// duration, or restarts a halted rollout at that step once its failed nodes are
    /// within `failureThreshold`. Set by `kubectl bpfleet rollout resume`; it applies
    /// to that revision only, so a later revision pauses again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<ResumeStep>,
    /// What must hold before a node that runs the new revision counts as updated, and
    /// before each step ends: a time healthy, programs that ran, map checks, a
    /// Prometheus query. Omitted: a node counts once its agent reports every link attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::HealthSpec>,
}

/// Annotation that steers a rollout without touching the spec (so nothing but the
/// manifest is in Git): `resume`, `promote`, `promote-full`, `abort` or `retry`. The
/// operator carries it out for the current `updateRevision`, records it in
/// `status.rollout`, and removes the annotation. `kubectl bpfleet rollout
/// resume|promote|abort|retry` set it.
pub const ACTION_ANNOTATION: &str = "bpfleet.dev/rollout-action";

/// A value of [`ACTION_ANNOTATION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// End the current pause (timed or not) and `spec.rollout.paused`-free holds; restart
    /// a halted rollout at its step once its failed nodes are within `failureThreshold`.
    Resume,
    /// Go past the current step now, skipping what remains of its pause.
    Promote,
    /// Skip every remaining step and pause: all target nodes, `maxInFlight` at a time.
    PromoteFull,
    /// Stop the rollout and return every updated node to `stableRevision`.
    Abort,
    /// Start a halted, rolled-back or aborted rollout of `updateRevision` again from step 1,
    /// with failed nodes tried again at once.
    Retry,
}

impl Action {
    pub const ALL: [Action; 5] = [Action::Resume, Action::Promote, Action::PromoteFull, Action::Abort, Action::Retry];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Resume => "resume",
            Action::Promote => "promote",
            Action::PromoteFull => "promote-full",
            Action::Abort => "abort",
            Action::Retry => "retry",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// See `spec.rollout.strategy`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[schemars(extend("maxLength" = 16))]
pub enum Strategy {
    #[default]
    Progressive,
    AllAtOnce,
}

/// See `spec.rollout.onFailure`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[schemars(extend("maxLength" = 16))]
pub enum OnFailure {
    #[default]
    Halt,
    Rollback,
}

/// One step of a progressive rollout.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// How many target nodes run the new revision once this step is done: a count
    /// (`1`) or a percentage (`"25%"`).
    pub nodes: IntOrString,
    /// Wait after the step's nodes all run the new revision healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
}

/// A wait between steps.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Pause {
    /// How long, e.g. `30s`, `2m`, `1h`. Omitted: until resumed (`spec.rollout.resume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16), regex(pattern = r"^[0-9]+(s|m|h)$"))]
    pub duration: Option<String>,
}

/// See `spec.rollout.resume`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResumeStep {
    /// The revision whose rollout goes on (`status.rollout.updateRevision`).
    #[schemars(length(min = 16, max = 16), regex(pattern = r"^[0-9a-f]{16}$"))]
    pub revision: String,
    /// The step (1-based, as in `status.rollout.step`) the rollout may go past.
    #[schemars(range(min = 1, max = 17))]
    pub step: i32,
}

/// Where a rollout stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[schemars(extend("maxLength" = 16))]
pub enum Phase {
    /// Nodes are being switched to `updateRevision`.
    #[default]
    Progressing,
    /// Held by `spec.rollout.paused` or by a pause step.
    Paused,
    /// Stopped after more than `failureThreshold` nodes failed: no further node is sent
    /// `updateRevision`.
    Halted,
    /// Stopped after failures, and the updated nodes went back to `stableRevision`.
    RolledBack,
    /// Every target node that runs an agent runs `updateRevision` and counts as ready; it
    /// is now `stableRevision`.
    Complete,
    /// Every node was tried and some failed `updateRevision`, within `failureThreshold` (or
    /// with `AllAtOnce`, a first install or a revert, which stop for nothing). The failed
    /// nodes are tried again with backoff; it becomes `Complete` when they recover.
    Degraded,
}

/// Observed progress of the rollout of the current revision.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub phase: Phase,
    /// The revision the last completed rollout put on every target node (nodes within
    /// `failureThreshold` aside); nodes the rollout has not reached yet run it, and a
    /// rollback returns to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// The revision being rolled out (`status.revision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// The current step, 1-based; `totalSteps` when the last step is reached.
    #[serde(default)]
    pub step: i32,
    /// Number of steps of this rollout (with the implicit last 100%).
    #[serde(default)]
    pub total_steps: i32,
    /// Target nodes that run an agent: the nodes the rollout must reach (DaemonSet's
    /// desiredNumberScheduled).
    #[serde(default)]
    pub desired_nodes: i32,
    /// Target nodes that run `updateRevision`, healthy or not.
    #[serde(default)]
    pub updated_nodes: i32,
    /// Updated nodes that are healthy and passed the health gates (`spec.rollout.health`).
    #[serde(default)]
    pub ready_nodes: i32,
    /// Target nodes that run some revision of the program healthy: ready nodes, and nodes
    /// that still run `stableRevision` healthy.
    #[serde(default)]
    pub available_nodes: i32,
    /// `desiredNodes` - `availableNodes`: nodes switching, failed, unreachable or not run yet.
    #[serde(default)]
    pub unavailable_nodes: i32,
    /// Target nodes without a Ready agent (starting, away for less than the grace period,
    /// or no agent at all); they are not failed.
    #[serde(default)]
    pub waiting_for_agent_nodes: i32,
    /// Target nodes that failed `updateRevision` (apply failed, unhealthy after it, a
    /// health gate failed, or unreachable past the grace period).
    #[serde(default)]
    pub failed_nodes: i32,
    /// What the rollout waits for or why it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the current step started sending nodes the new revision (progress deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_start_time: Option<Time>,
    /// When the current step's pause began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_start_time: Option<Time>,
    /// The Prometheus gate at the end of the current step, while it measures or once it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,
    /// Steps (1-based) a `resume` or `promote` action let this revision go past.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_step: Option<i32>,
    /// A `promote-full` action sent this revision to every node, skipping steps and pauses.
    #[serde(default, skip_serializing_if = "is_false")]
    pub promoted_full: bool,
    /// An `abort` action stopped this revision's rollout.
    #[serde(default, skip_serializing_if = "is_false")]
    pub aborted: bool,
    /// The last action (`bpfleet.dev/rollout-action`) carried out, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action_time: Option<Time>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Measurements of `spec.rollout.health.prometheus` at the end of one step.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// The step (1-based) whose end is measured.
    pub step: i32,
    /// Measurements taken.
    pub measurements: i32,
    /// Measurements that failed.
    pub failures: i32,
    /// The last measurement: its value, or why there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// When the last measurement was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<Time>,
}

/// How a map of the object is treated when a new revision replaces the running one.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MapPolicy {
    /// The map's name in the ELF object.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.]*$"))]
    pub name: String,
    /// `Keep` (default): a map whose type, key and value sizes, max entries and flags
    /// match the running revision's keeps its contents across upgrades and rollbacks
    /// (an incompatible one is recreated empty, and the node's status says so).
    /// `Recreate`: start empty with every new revision.
    #[serde(default)]
    pub on_upgrade: MapUpgrade,
}

/// See `spec.maps[].onUpgrade`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[schemars(extend("maxLength" = 16))]
pub enum MapUpgrade {
    #[default]
    Keep,
    Recreate,
}

/// A node count as written in `steps[].nodes` and `maxInFlight`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    /// 0..=100.
    Percent(u32),
}

impl Amount {
    /// `3`, `"3"` or `"25%"`.
    pub fn parse(v: &IntOrString) -> Result<Amount, String> {
        match v {
            IntOrString::Int(n) if *n >= 0 => Ok(Amount::Count(*n as u32)),
            IntOrString::Int(n) => Err(format!("{n} is negative")),
            IntOrString::String(s) => {
                let bad = || format!("{s:?} is neither a node count nor a percentage such as \"25%\"");
                match s.strip_suffix('%') {
                    Some(p) => match p.parse::<u32>() {
                        Ok(p) if p <= 100 => Ok(Amount::Percent(p)),
                        _ => Err(format!("{s:?} is not a percentage between 0% and 100%")),
                    },
                    None => s.parse::<u32>().map(Amount::Count).map_err(|_| bad()),
                }
            }
        }
    }

    /// Nodes out of `total`: percentages rounded up (a step of 1% of 5 nodes is 1
    /// node), capped at `total`.
    pub fn of_up(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => (n as usize).min(total),
            Amount::Percent(p) => (total * p as usize).div_ceil(100).min(total),
        }
    }

    /// Nodes out of `total`: percentages rounded down, at least 1.
    pub fn of_down_at_least_one(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => (n as usize).max(1),
            Amount::Percent(p) => (total * p as usize / 100).max(1),
        }
    }
}

/// A pause duration: `30s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{s:?} is not a duration such as 30s, 2m or 1h");
    // The unit is one ASCII byte; a multi-byte last character is no unit (and no place
    // to split: found by fuzzing, `split_at` panicked on "Λ").
    let at = s.len().checked_sub(1).filter(|&i| s.is_char_boundary(i)).ok_or_else(bad)?;
    let (n, unit) = s.split_at(at);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(bad()),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// What the schema cannot say about `spec.rollout`: amounts, durations, step order.
/// Each error is (field path, what to fix).
pub fn validate(r: &RolloutSpec) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    let mut last: Option<Amount> = None;
    for (i, step) in r.steps.iter().enumerate() {
        let field = format!("rollout.steps[{i}].nodes");
        match Amount::parse(&step.nodes) {
            Ok(a) => {
                let shrinks = match (last, a) {
                    (Some(Amount::Count(x)), Amount::Count(y)) | (Some(Amount::Percent(x)), Amount::Percent(y)) => {
                        y < x
                    }
                    _ => false,
                };
                if shrinks {
                    errs.push((
                        field,
                        "steps must not shrink: each step's nodes is at least the previous step's".into(),
                    ));
                }
                last = Some(a);
            }
            Err(e) => errs.push((field, e)),
        }
        if let Some(d) = step.pause.as_ref().and_then(|p| p.duration.as_deref())
            && let Err(e) = parse_duration(d)
        {
            errs.push((format!("rollout.steps[{i}].pause.duration"), e));
        }
    }
    if let Some(m) = &r.max_in_flight {
        match Amount::parse(m) {
            Ok(Amount::Count(0)) | Ok(Amount::Percent(0)) => {
                errs.push(("rollout.maxInFlight".into(), "must allow at least one node (1 or more, or 1%-100%)".into()))
            }
            Ok(_) => {}
            Err(e) => errs.push(("rollout.maxInFlight".into(), e)),
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> IntOrString {
        IntOrString::String(v.into())
    }

    #[test]
    fn amounts_parse_and_round() {
        assert_eq!(Amount::parse(&IntOrString::Int(3)), Ok(Amount::Count(3)));
        assert_eq!(Amount::parse(&s("3")), Ok(Amount::Count(3)));
        assert_eq!(Amount::parse(&s("25%")), Ok(Amount::Percent(25)));
        for bad in ["", "%", "x", "101%", "-1", "2.5%"] {
            assert!(Amount::parse(&s(bad)).is_err(), "{bad}");
        }
        assert!(Amount::parse(&IntOrString::Int(-1)).is_err());
        assert_eq!(Amount::Percent(1).of_up(5), 1, "a canary of 1% of a small fleet is one node");
        assert_eq!(Amount::Percent(25).of_up(5), 2);
        assert_eq!(Amount::Percent(0).of_up(5), 0);
        assert_eq!(Amount::Count(9).of_up(5), 5);
        assert_eq!(Amount::Percent(10).of_down_at_least_one(5), 1);
        assert_eq!(Amount::Percent(50).of_down_at_least_one(5), 2);
        assert_eq!(Amount::Count(0).of_down_at_least_one(5), 1);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap().as_secs(), 30);
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert_eq!(parse_duration("1h").unwrap().as_secs(), 3600);
        for bad in ["", "s", "1d", "m2", "1.5m", "Λ", "1Λ", "é"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rollout_specs_are_checked_with_the_field_to_fix() {
        let step = |n: IntOrString, d: Option<&str>| RolloutStep {
            nodes: n,
            pause: d.map(|d| Pause { duration: Some(d.into()) }),
        };
        let ok = RolloutSpec {
            steps: vec![step(IntOrString::Int(1), Some("2m")), step(s("25%"), None), step(s("100%"), None)],
            max_in_flight: Some(s("10%")),
            ..Default::default()
        };
        assert!(validate(&ok).is_empty());
        let bad = RolloutSpec {
            steps: vec![step(s("50%"), Some("2d")), step(s("25%"), None), step(s("x"), None)],
            max_in_flight: Some(IntOrString::Int(0)),
            ..Default::default()
        };
        let fields: Vec<String> = validate(&bad).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "rollout.steps[0].pause.duration",
                "rollout.steps[1].nodes",
                "rollout.steps[2].nodes",
                "rollout.maxInFlight"
            ]
        );
    }
}
