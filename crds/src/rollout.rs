//! `spec.rollout` and `status.rollout`: how a new revision reaches the target nodes.
//!
//! The default (no `spec.rollout`) is what DaemonSet's RollingUpdate does: one node at a
//! time (`maxInFlight: 1`) over all nodes in one step, stopping at the first failure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod cel;
mod rules;

pub use cel::MAX_NODE_COUNT;
pub use rules::{
    Amount, MAX_DURATION_DIGITS, MAX_FAILURE_THRESHOLD, MAX_MAP_POLICIES, MAX_PROGRESS_DEADLINE_SECONDS,
    MAX_REVISION_HISTORY_LIMIT, MAX_STEPS, parse_duration, validate, validate_history,
};
pub(crate) use rules::{map_name, within};

/// How a new revision reaches the target nodes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.resume) || self.resume.step <= (has(self.steps) ? size(self.steps) : 0) + 1").message("resume.step must be at most the number of steps + 1 (the implicit last step of 100%)"))]
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
    /// step below 100% is followed by an implicit 100%. Steps do not shrink: a count is
    /// at least every earlier count, a percentage at least every earlier percentage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new(cel::steps_do_not_shrink()).message("steps must not shrink: each step's nodes must be at least the nodes of every earlier step written the same way (a count after counts, a percentage after percentages)"))]
    pub steps: Vec<RolloutStep>,
    /// Nodes switching revision at the same moment (sent the new revision and not yet
    /// running it healthy), as a count or a percentage of the target nodes (rounded
    /// down, at least 1): 1 to 100000, or `"1%"` to `"100%"`. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(cel::max_in_flight()).message("maxInFlight must be a node count from 1 to 100000 (3 or \"3\") or a percentage from \"1%\" to \"100%\""))]
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
    /// go on. `kubectl bpfleet rollout pause` sets it (`resume` clears it). A rollout held
    /// by it is suspended: neither in progress nor failed.
    #[serde(default)]
    pub paused: bool,
    /// Lets the rollout of `revision` go past step `step`: ends a pause without a
    /// duration, or restarts a halted rollout at that step once its failed nodes are
    /// within `failureThreshold`; it applies to that revision only. Kept for specs written
    /// this way: the annotation `bpfleet.dev/rollout-action=resume` (or `promote`) does
    /// the same without a revision hash in the spec.
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
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// How many target nodes run the new revision once this step is done: a count from
    /// 0 to 100000 (`1` or `"1"`) or a percentage from `"0%"` to `"100%"` (`"25%"`).
    #[x_kube(validation = Rule::new(cel::step_nodes()).message("nodes must be a node count from 0 to 100000 (3 or \"3\") or a percentage from \"0%\" to \"100%\""))]
    pub nodes: IntOrString,
    /// Wait after the step's nodes all run the new revision healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
}

/// A wait between steps.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Pause {
    /// How long: a whole number of seconds, minutes or hours of at most 7 digits, e.g.
    /// `30s`, `2m`, `1h`. Omitted: until resumed or promoted (the annotation
    /// `bpfleet.dev/rollout-action`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{1,7}[smh]$')").message("pause.duration must be a whole number of seconds, minutes or hours of at most 7 digits, e.g. 30s, 2m or 1h"))]
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
    /// Use the map of another BpfProgram instead of creating one: this object's map of
    /// `name` becomes that program's kernel map (`map` of `program`), so a writer and its
    /// readers see the same entries. The owner must run on every node this program runs
    /// on; the two maps' type, key and value sizes, entries, flags and BTF types must agree
    /// (the apply fails naming both shapes otherwise). While any program uses its maps,
    /// the owner's deletion waits (condition reason `MapsInUse` names the users), and the
    /// owner cannot recreate a shared map. Not with `onUpgrade: Recreate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<MapSource>,
}

/// Another BpfProgram's map (see `spec.maps[].from`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MapSource {
    /// The owning BpfProgram's name.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub program: String,
    /// The map's name in the owner's ELF object.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.]*$"))]
    pub map: String,
}

/// See `spec.maps[].onUpgrade`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[schemars(extend("maxLength" = 16))]
pub enum MapUpgrade {
    #[default]
    Keep,
    Recreate,
}
