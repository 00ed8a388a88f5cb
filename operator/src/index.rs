//! What every node's agent runs, as last reported (Apply answers, List, Watch). Plain
//! data behind one lock, held only for map updates; decisions read snapshots of it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use crds::Health;
use crds::node::{BpfNodeStatus, NodeProgramStatus};
use k8s_openapi::jiff::Timestamp;
use proto::v1;

use crate::plan::Observed;
use crate::status::NodeOutcome;

/// What one node runs of one owner: only what decisions need. The full detail (ids,
/// pins) goes from each List straight into the node's BpfNode and is not kept, so the
/// index stays small at thousands of programs times hundreds of nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerSummary {
    pub name: String,
    pub revision: String,
    pub health: Health,
    pub last_error: Option<String>,
}

impl OwnerSummary {
    fn of(s: &v1::OwnerState) -> Option<(String, OwnerSummary)> {
        let owner = s.owner.as_ref()?;
        if s.revision.is_empty() {
            return None;
        }
        Some((
            owner.uid.clone(),
            OwnerSummary {
                name: owner.name.clone(),
                revision: s.revision.clone(),
                health: proto::health_from_wire(s.health),
                last_error: (!s.last_error.is_empty()).then(|| s.last_error.clone()),
            },
        ))
    }
}

/// The last apply of one owner on one node failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub revision: String,
    pub outcome: NodeOutcome,
    /// Consecutive failed applies of this revision (0 when the agent was unreachable:
    /// the connection pool backs off from those by itself).
    pub attempts: u32,
    /// No new apply of this revision before this time.
    pub next_try: Option<Timestamp>,
}

#[derive(Clone, Debug, Default)]
pub struct NodeEntry {
    /// Owner uid -> what runs.
    pub owners: BTreeMap<String, OwnerSummary>,
    /// Owner uid -> why the last apply of it failed.
    pub failures: BTreeMap<String, Failure>,
    pub agent_version: Option<String>,
    pub kernel_release: Option<String>,
    /// A List succeeded at least once: `owners` is complete, not partial.
    pub listed: bool,
    pub last_report_time: Option<String>,
}

#[derive(Debug, Default)]
pub struct NodeIndex {
    nodes: RwLock<BTreeMap<String, NodeEntry>>,
}

fn now_rfc3339() -> String {
    Timestamp::now().to_string()
}

impl NodeIndex {
    fn write<R>(&self, f: impl FnOnce(&mut BTreeMap<String, NodeEntry>) -> R) -> R {
        f(&mut self.nodes.write().unwrap_or_else(|p| p.into_inner()))
    }

    fn read<R>(&self, f: impl FnOnce(&BTreeMap<String, NodeEntry>) -> R) -> R {
        f(&self.nodes.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// An Apply answered: the owner's state on that node.
    /// Returns whether this changes what is known (status must be recomputed).
    pub fn record_state(&self, node: &str, state: &v1::OwnerState) -> bool {
        let Some(uid) = state.owner.as_ref().map(|o| o.uid.clone()) else { return false };
        self.write(|m| {
            let e = m.entry(node.to_string()).or_default();
            let new = OwnerSummary::of(state).map(|(_, s)| s);
            // Any report means the agent is reachable; a failed revision stays failed (with
            // its backoff) until the node reports it running healthy.
            let clears = |f: &Failure| match &f.outcome {
                NodeOutcome::Unreachable { .. } => true,
                _ => new.as_ref().is_some_and(|s| s.revision == f.revision && s.health == Health::Healthy),
            };
            let cleared = e.failures.get(&uid).is_some_and(clears) && e.failures.remove(&uid).is_some();
            e.last_report_time = Some(now_rfc3339());
            let old = match &new {
                Some(s) => e.owners.insert(uid, s.clone()),
                None => e.owners.remove(&uid),
            };
            cleared || old != new
        })
    }

    /// The node's agent cannot be reached: every program it should run is in doubt.
    /// Returns the uids whose outcome this changes.
    pub fn record_unreachable<'a>(
        &self,
        node: &str,
        wanted: impl Iterator<Item = (&'a str, &'a str)>,
        message: &str,
    ) -> Vec<String> {
        let outcome = NodeOutcome::Unreachable { message: message.to_string() };
        let mut changed = Vec::new();
        let now = Timestamp::now();
        for (uid, revision) in wanted {
            if self.outcome(node, uid, revision) != outcome {
                self.record_failure(node, uid, revision, outcome.clone(), now);
                changed.push(uid.to_string());
            }
        }
        changed
    }

    /// An Apply of `revision` failed on `node` at `now`. An answer from the agent (the
    /// verifier refused it, an interface is missing) backs this (node, revision) off:
    /// each further failure of the same revision doubles the wait (see
    /// [`crate::plan::retry_delay`]); a new revision starts again at once.
    pub fn record_failure(&self, node: &str, uid: &str, revision: &str, outcome: NodeOutcome, now: Timestamp) {
        self.write(|m| {
            let failures = &mut m.entry(node.to_string()).or_default().failures;
            let prev = failures.get(uid).filter(|f| f.revision == revision).map(|f| f.attempts).unwrap_or(0);
            let (attempts, next_try) = match outcome {
                NodeOutcome::Failed { .. } => {
                    let n = prev + 1;
                    let delay = crate::plan::retry_delay(n);
                    (n, now.checked_add(jiff_span(delay)).ok())
                }
                _ => (prev, None),
            };
            failures.insert(uid.to_string(), Failure { revision: revision.to_string(), outcome, attempts, next_try });
        })
    }

    /// Nodes that must not be sent `revision` of `uid` before a time (their backoff).
    pub fn retry_holds(&self, uid: &str, revision: &str, now: Timestamp) -> BTreeMap<String, Timestamp> {
        self.read(|m| {
            m.iter()
                .filter_map(|(n, e)| {
                    let f = e.failures.get(uid).filter(|f| f.revision == revision)?;
                    f.next_try.filter(|t| *t > now).map(|t| (n.clone(), t))
                })
                .collect()
        })
    }

    /// How often `node` failed `revision` of `uid` in a row, and when it is tried next.
    pub fn retry_of(&self, node: &str, uid: &str, revision: &str) -> Option<(u32, Timestamp)> {
        self.read(|m| {
            let f = m.get(node)?.failures.get(uid).filter(|f| f.revision == revision)?;
            Some((f.attempts, f.next_try?))
        })
    }

    /// A Remove succeeded.
    pub fn record_removed(&self, node: &str, uid: &str) {
        self.write(|m| {
            if let Some(e) = m.get_mut(node) {
                e.owners.remove(uid);
                e.failures.remove(uid);
            }
        })
    }

    /// A full List: replaces what is known of the node. Returns the owners whose
    /// "agent unreachable" outcome this clears (their status must be recomputed).
    pub fn record_list(&self, node: &str, list: &v1::ListResponse) -> Vec<String> {
        self.write(|m| {
            let e = m.entry(node.to_string()).or_default();
            let cleared: Vec<String> = e
                .failures
                .iter()
                .filter(|(_, f)| matches!(f.outcome, NodeOutcome::Unreachable { .. }))
                .map(|(uid, _)| uid.clone())
                .collect();
            for uid in &cleared {
                e.failures.remove(uid);
            }
            e.owners = list.owners.iter().filter_map(OwnerSummary::of).collect();
            e.agent_version = Some(list.agent_version.clone());
            e.kernel_release = Some(list.kernel_release.clone());
            e.listed = true;
            e.last_report_time = Some(now_rfc3339());
            cleared
        })
    }

    /// The node's Node object is gone.
    pub fn forget(&self, node: &str) {
        self.write(|m| m.remove(node));
    }

    /// Per node, what runs of `uid`.
    pub fn observed(&self, uid: &str) -> BTreeMap<String, Observed> {
        self.read(|m| {
            m.iter()
                .filter_map(|(n, e)| {
                    e.owners.get(uid).map(|s| (n.clone(), Observed { revision: s.revision.clone(), health: s.health }))
                })
                .collect()
        })
    }

    /// Nodes whose last full List reported `uid`. (A node never listed may have reported
    /// it only in an Apply answer; the caller decides what to do with those.)
    pub fn listed_runners(&self, uid: &str) -> BTreeSet<String> {
        self.read(|m| {
            m.iter().filter(|(_, e)| e.listed && e.owners.contains_key(uid)).map(|(n, _)| n.clone()).collect()
        })
    }

    /// Those of `nodes` whose agent never answered a full List (their state is unknown).
    pub fn never_listed<'a>(&self, nodes: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
        self.read(|m| nodes.filter(|n| !m.get(*n).is_some_and(|e| e.listed)).map(str::to_string).collect())
    }

    /// How `node` stands with revision `want` of `uid`, for status.
    pub fn outcome(&self, node: &str, uid: &str, want: &str) -> NodeOutcome {
        self.read(|m| {
            let Some(e) = m.get(node) else { return NodeOutcome::Pending };
            if let Some(f) = e.failures.get(uid)
                && f.revision == want
            {
                return f.outcome.clone();
            }
            match e.owners.get(uid) {
                Some(s) if s.revision == want && s.health == Health::Healthy => NodeOutcome::Ready,
                Some(s) if s.revision == want => NodeOutcome::Failed {
                    program: None,
                    reason: format!("{:?}", s.health),
                    message: s.last_error.clone().unwrap_or_else(|| "the agent reports a problem".into()),
                },
                _ => NodeOutcome::Pending,
            }
        })
    }

    /// Every owner a node runs: uid -> BpfProgram name.
    pub fn all_owners(&self, node: &str) -> BTreeMap<String, String> {
        self.read(|m| {
            m.get(node)
                .map(|e| e.owners.iter().map(|(uid, s)| (uid.clone(), s.name.clone())).collect())
                .unwrap_or_default()
        })
    }
}

fn jiff_span(d: std::time::Duration) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::try_from(d).unwrap_or(k8s_openapi::jiff::SignedDuration::MAX)
}

/// The BpfNode status of a node, from its agent's List.
pub fn node_status(list: &v1::ListResponse) -> BpfNodeStatus {
    let programs: Vec<NodeProgramStatus> =
        list.owners.iter().map(proto::state_to_status).filter(|s| !s.revision.is_empty()).collect();
    BpfNodeStatus {
        managed: programs.len() as i32,
        healthy: programs.iter().filter(|p| p.health == Health::Healthy).count() as i32,
        agent_version: Some(list.agent_version.clone()),
        kernel_release: Some(list.kernel_release.clone()),
        last_report_time: Some(now_rfc3339()),
        programs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(uid: &str, rev: &str, health: v1::Health) -> v1::OwnerState {
        v1::OwnerState {
            owner: Some(v1::Owner { uid: uid.into(), name: format!("{uid}-name") }),
            revision: rev.into(),
            health: health as i32,
            ..Default::default()
        }
    }

    #[test]
    fn reports_drive_outcomes() {
        let idx = NodeIndex::default();
        assert_eq!(idx.outcome("n1", "u", "r1"), NodeOutcome::Pending);
        idx.record_state("n1", &state("u", "r1", v1::Health::Healthy));
        assert_eq!(idx.outcome("n1", "u", "r1"), NodeOutcome::Ready);
        assert_eq!(idx.outcome("n1", "u", "r2"), NodeOutcome::Pending);
        let failed = NodeOutcome::Failed { program: None, reason: "VerifierRejected".into(), message: "x".into() };
        idx.record_failure("n1", "u", "r2", failed.clone(), Timestamp::now());
        assert_eq!(idx.outcome("n1", "u", "r2"), failed);
        // A success clears the failure.
        idx.record_state("n1", &state("u", "r2", v1::Health::Healthy));
        assert_eq!(idx.outcome("n1", "u", "r2"), NodeOutcome::Ready);
        idx.record_state("n1", &state("u", "r2", v1::Health::Degraded));
        assert!(matches!(idx.outcome("n1", "u", "r2"), NodeOutcome::Failed { .. }));
    }

    #[test]
    fn only_real_changes_ask_for_a_new_status() {
        let idx = NodeIndex::default();
        assert!(idx.record_state("n", &state("u", "r1", v1::Health::Healthy)));
        assert!(!idx.record_state("n", &state("u", "r1", v1::Health::Healthy)), "same report again");
        assert!(idx.record_state("n", &state("u", "r1", v1::Health::Degraded)));
        let changed = idx.record_unreachable("n", [("u", "r1"), ("v", "r2")].into_iter(), "connection refused");
        assert_eq!(changed, ["u", "v"]);
        assert!(idx.record_unreachable("n", [("u", "r1")].into_iter(), "connection refused").is_empty());
        assert!(matches!(idx.outcome("n", "v", "r2"), NodeOutcome::Unreachable { .. }));
        // The agent answers again: its report clears "unreachable".
        assert!(idx.record_state("n", &state("u", "r1", v1::Health::Healthy)));
        assert_eq!(idx.outcome("n", "u", "r1"), NodeOutcome::Ready);
    }

    #[test]
    fn failures_of_one_revision_back_off_and_a_new_revision_resets() {
        let idx = NodeIndex::default();
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let at = |s: i64| Timestamp::from_second(1_000_000 + s).unwrap();
        let failed = NodeOutcome::Failed { program: None, reason: "VerifierRejected".into(), message: "x".into() };
        idx.record_failure("n", "u", "r2", failed.clone(), t0);
        assert_eq!(idx.retry_of("n", "u", "r2"), Some((1, at(5))));
        assert_eq!(idx.retry_holds("u", "r2", at(4)).len(), 1, "held before its time");
        assert!(idx.retry_holds("u", "r2", at(5)).is_empty(), "due at its time");
        idx.record_failure("n", "u", "r2", failed.clone(), at(5));
        idx.record_failure("n", "u", "r2", failed.clone(), at(15));
        assert_eq!(idx.retry_of("n", "u", "r2"), Some((3, at(15 + 20))), "5 s, 10 s, 20 s, ...");
        assert!(idx.retry_holds("u", "r3", at(16)).is_empty(), "another revision is not held");
        idx.record_failure("n", "u", "r3", failed.clone(), at(16));
        assert_eq!(idx.retry_of("n", "u", "r3"), Some((1, at(21))), "a new revision starts over");
        // An unreachable agent is the pool's to back off from: no hold here.
        idx.record_failure("m", "u", "r3", NodeOutcome::Unreachable { message: "refused".into() }, at(16));
        assert_eq!(idx.retry_of("m", "u", "r3"), None);
        // A report of the old revision, or of the failure itself, keeps the backoff.
        idx.record_state("n", &state("u", "r1", v1::Health::Healthy));
        idx.record_state("n", &state("u", "r3", v1::Health::Failed));
        assert_eq!(idx.retry_of("n", "u", "r3"), Some((1, at(21))));
        // Success clears it.
        idx.record_state("n", &state("u", "r3", v1::Health::Healthy));
        assert_eq!(idx.retry_of("n", "u", "r3"), None);
    }

    #[test]
    fn list_replaces_what_an_apply_reported() {
        let idx = NodeIndex::default();
        idx.record_state("n1", &state("a", "r1", v1::Health::Healthy));
        assert!(idx.listed_runners("a").is_empty(), "n1 was never listed");
        let unreachable = NodeOutcome::Unreachable { message: "refused".into() };
        idx.record_failure("n1", "b", "r9", unreachable.clone(), Timestamp::now());
        assert_eq!(idx.outcome("n1", "b", "r9"), unreachable);
        let cleared = idx.record_list(
            "n1",
            &v1::ListResponse { owners: vec![state("b", "r9", v1::Health::Healthy)], ..Default::default() },
        );
        assert_eq!(cleared, ["b"], "a successful List clears 'unreachable'");
        assert_eq!(idx.outcome("n1", "b", "r9"), NodeOutcome::Ready);
        assert!(idx.listed_runners("a").is_empty());
        assert_eq!(idx.listed_runners("b"), BTreeSet::from(["n1".to_string()]));
        assert_eq!(idx.observed("b").len(), 1);
        assert_eq!(idx.all_owners("n1").len(), 1);
        idx.record_removed("n1", "b");
        assert!(idx.observed("b").is_empty());
        idx.forget("n1");
        assert!(idx.all_owners("n1").is_empty());
    }
}
