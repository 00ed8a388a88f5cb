//! What every node's agent runs, as last reported (Apply answers, List, Watch). Plain
//! data behind one lock, held only for map updates; decisions read snapshots of it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use crds::Health;
use crds::node::{BpfNodeStatus, NodeProgramStatus};
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

#[derive(Clone, Debug, Default)]
pub struct NodeEntry {
    /// Owner uid -> what runs.
    pub owners: BTreeMap<String, OwnerSummary>,
    /// (owner uid) -> (revision, why the last apply of it failed).
    pub failures: BTreeMap<String, (String, NodeOutcome)>,
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
    k8s_openapi::jiff::Timestamp::now().to_string()
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
            let cleared = e.failures.remove(&uid).is_some();
            e.last_report_time = Some(now_rfc3339());
            let new = OwnerSummary::of(state).map(|(_, s)| s);
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
        for (uid, revision) in wanted {
            if self.outcome(node, uid, revision) != outcome {
                self.record_failure(node, uid, revision, outcome.clone());
                changed.push(uid.to_string());
            }
        }
        changed
    }

    /// An Apply of `revision` failed on `node`.
    pub fn record_failure(&self, node: &str, uid: &str, revision: &str, outcome: NodeOutcome) {
        self.write(|m| {
            m.entry(node.to_string()).or_default().failures.insert(uid.to_string(), (revision.to_string(), outcome));
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
                .filter(|(_, (_, o))| matches!(o, NodeOutcome::Unreachable { .. }))
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

    /// How `node` stands with revision `want` of `uid`, for status.
    pub fn outcome(&self, node: &str, uid: &str, want: &str) -> NodeOutcome {
        self.read(|m| {
            let Some(e) = m.get(node) else { return NodeOutcome::Pending };
            if let Some((rev, outcome)) = e.failures.get(uid)
                && rev == want
            {
                return outcome.clone();
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
        idx.record_failure("n1", "u", "r2", failed.clone());
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
    fn list_replaces_what_an_apply_reported() {
        let idx = NodeIndex::default();
        idx.record_state("n1", &state("a", "r1", v1::Health::Healthy));
        assert!(idx.listed_runners("a").is_empty(), "n1 was never listed");
        let unreachable = NodeOutcome::Unreachable { message: "refused".into() };
        idx.record_failure("n1", "b", "r9", unreachable.clone());
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
