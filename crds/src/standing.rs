//! Where a BpfProgram stands, in one word every view derives from: the operator's
//! `Reconciling`/`Stalled` conditions (and so kstatus and Flux), the Argo CD health Lua in
//! docs/install.md, and `kubectl bpfleet rollout status`'s exit code. One function decides
//! it, so no two views can tell different stories.

use crate::BpfProgramStatus;
use crate::rollout::{Phase, RolloutStatus};

/// Where a program stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Standing {
    /// The operator works towards the spec and will get there by itself: nodes switching,
    /// a timed pause, a status of an older generation.
    InProgress,
    /// Held until someone acts: a pause step without a duration, or `spec.rollout.paused`.
    /// Nothing is wrong and nothing moves (kstatus: Current; Argo CD: Suspended).
    Suspended,
    /// Settled with a failure: halted, rolled back, degraded, or a spec no node can run.
    Failed,
    /// Done: every node that runs an agent runs the spec's revision (ready when `ready`
    /// says so).
    Current,
}

impl Standing {
    /// What kstatus (Flux's health checks) calls it, given the conditions the operator
    /// writes for it.
    pub fn kstatus(self) -> &'static str {
        match self {
            Standing::InProgress => "InProgress",
            Standing::Failed => "Failed",
            Standing::Suspended | Standing::Current => "Current",
        }
    }

    /// What the Argo CD health check in docs/install.md calls it (`Current` with the
    /// `Ready` condition True is Healthy; without it, Progressing).
    pub fn argo_cd(self, ready: bool) -> &'static str {
        match self {
            Standing::InProgress => "Progressing",
            Standing::Suspended => "Suspended",
            Standing::Failed => "Degraded",
            Standing::Current if ready => "Healthy",
            Standing::Current => "Progressing",
        }
    }

    /// `Reconciling` and `Stalled`, as the operator writes them.
    pub fn reconciling(self) -> bool {
        self == Standing::InProgress
    }

    pub fn stalled(self) -> bool {
        self == Standing::Failed
    }
}

/// Where a rollout in `r.phase` stands.
pub fn of_rollout(r: &RolloutStatus) -> Standing {
    match r.phase {
        Phase::Progressing => Standing::InProgress,
        // A timed pause ends by itself (it has a start time); any other waits for someone.
        Phase::Paused if r.pause_start_time.is_some() => Standing::InProgress,
        Phase::Paused => Standing::Suspended,
        Phase::Halted | Phase::RolledBack | Phase::Degraded => Standing::Failed,
        Phase::Complete => Standing::Current,
    }
}

/// Where the program stands by its status, for its current `generation`: a status of
/// another generation says nothing yet. The conditions decide (they are written from
/// [`of_rollout`] and the node counts); the rollout phase tells a suspended program from a
/// finished one.
pub fn of_status(status: Option<&BpfProgramStatus>, generation: Option<i64>) -> Standing {
    let Some(s) = status else { return Standing::InProgress };
    if generation.is_some() && s.observed_generation != generation {
        return Standing::InProgress;
    }
    let is_true = |t: &str| s.conditions.iter().any(|c| c.type_ == t && c.status == "True");
    if s.conditions.is_empty() || is_true("Reconciling") {
        Standing::InProgress
    } else if is_true("Stalled") {
        Standing::Failed
    } else if s.rollout.as_ref().is_some_and(|r| of_rollout(r) == Standing::Suspended) {
        Standing::Suspended
    } else {
        Standing::Current
    }
}

/// The `Ready` condition is True.
pub fn ready(status: Option<&BpfProgramStatus>) -> bool {
    status.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
