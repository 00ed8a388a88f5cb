//! Drift between what the cluster wants and what a node's agent reports. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crds::Health;

pub use crate::index::Reported;

/// What the cluster wants of one BpfProgram.
#[derive(Clone, Debug)]
pub struct Desired {
    pub name: String,
    /// The revision last computed for it (None until its first reconcile).
    pub revision: Option<String>,
    /// The rollout's stable revision: nodes the rollout has not reached yet run it, and
    /// that is not drift.
    pub stable: Option<String>,
    /// Shared with every program that selects the same nodes ([`crate::controller::Context::shared_targets`]).
    pub targets: Arc<BTreeSet<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repair {
    /// The agent runs an owner no BpfProgram claims: remove it.
    RemoveUnknown { uid: String, name: String },
    /// A BpfProgram is missing, stale or unhealthy on this node: reconcile it.
    Reconcile { uid: String, name: String, why: String },
}

/// Compare what one node reports (a List, or the index when the node's digest says
/// nothing changed since its last List) with the desired state. `known` holds the uid of
/// every BpfProgram that exists (reconciled or not yet); only owners outside it are removed.
pub fn diff<'a>(
    node: &str,
    known: &BTreeSet<String>,
    desired: &BTreeMap<String, Arc<Desired>>,
    reported: impl IntoIterator<Item = Reported<'a>>,
) -> Vec<Repair> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for s in reported {
        seen.insert(s.uid);
        if !known.contains(s.uid) {
            out.push(Repair::RemoveUnknown { uid: s.uid.to_string(), name: s.name.to_string() });
            continue;
        }
        match desired.get(s.uid) {
            // Exists but not reconciled yet: its first reconcile decides.
            None => {}
            Some(d) if !d.targets.contains(node) => out.push(Repair::Reconcile {
                uid: s.uid.to_string(),
                name: d.name.clone(),
                why: format!("{node} runs it but is no longer selected"),
            }),
            Some(d) => {
                let expected = d.stable.as_deref() == Some(s.revision);
                if !expected && d.revision.as_deref().is_some_and(|r| r != s.revision) {
                    out.push(Repair::Reconcile {
                        uid: s.uid.to_string(),
                        name: d.name.clone(),
                        why: format!(
                            "{node} runs revision {} instead of {}",
                            s.revision,
                            d.revision.as_deref().unwrap_or("-")
                        ),
                    });
                } else if s.health != Health::Healthy {
                    out.push(Repair::Reconcile {
                        uid: s.uid.to_string(),
                        name: d.name.clone(),
                        why: format!("{node} reports it {:?}: {}", s.health, s.last_error),
                    });
                }
            }
        }
    }
    for (uid, d) in desired {
        if d.targets.contains(node) && !seen.contains(uid.as_str()) {
            out.push(Repair::Reconcile {
                uid: uid.clone(),
                name: d.name.clone(),
                why: format!("missing on {node} (removed by hand?)"),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crds::node::NodeProgramStatus;

    fn diff(
        node: &str,
        known: &BTreeSet<String>,
        desired: &BTreeMap<String, Desired>,
        list: &[NodeProgramStatus],
    ) -> Vec<Repair> {
        let desired = desired.iter().map(|(k, v)| (k.clone(), Arc::new(v.clone()))).collect();
        super::diff(node, known, &desired, list.iter().map(Reported::of_status))
    }

    fn st(uid: &str, rev: &str, h: Health) -> NodeProgramStatus {
        NodeProgramStatus {
            owner: uid.into(),
            owner_uid: uid.into(),
            revision: rev.into(),
            health: h,
            attached: vec![],
            maps: vec![],
            last_error: (h != Health::Healthy).then(|| "link gone".into()),
            bytecode_digest: None,
            maps_recreated: vec![],
            metrics_limited: vec![],
            pods: vec![],
            pods_total: 0,
            pods_failed: 0,
        }
    }

    fn want(rev: &str, nodes: &[&str]) -> Desired {
        Desired {
            name: "p".into(),
            revision: Some(rev.into()),
            stable: None,
            targets: Arc::new(nodes.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn finds_every_kind_of_drift() {
        let desired = BTreeMap::from([
            ("ok".to_string(), want("r1", &["n"])),
            ("stale".to_string(), want("r2", &["n"])),
            ("sick".to_string(), want("r1", &["n"])),
            ("missing".to_string(), want("r1", &["n"])),
            ("moved".to_string(), want("r1", &["other"])),
            ("elsewhere".to_string(), want("r1", &["other"])),
        ]);
        let list = vec![
            st("ok", "r1", Health::Healthy),
            st("stale", "r1", Health::Healthy),
            st("sick", "r1", Health::Degraded),
            st("moved", "r1", Health::Healthy),
            st("ghost", "r1", Health::Healthy),
        ];
        let known: BTreeSet<String> = desired.keys().cloned().chain(["pending".to_string()]).collect();
        let mut list = list;
        list.push(st("pending", "r0", Health::Healthy));
        let repairs = diff("n", &known, &desired, &list);
        let kinds: Vec<(String, bool)> = repairs
            .iter()
            .map(|r| match r {
                Repair::RemoveUnknown { uid, .. } => (uid.clone(), true),
                Repair::Reconcile { uid, .. } => (uid.clone(), false),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("stale".to_string(), false),
                ("sick".to_string(), false),
                ("moved".to_string(), false),
                ("ghost".to_string(), true),
                ("missing".to_string(), false),
            ]
        );
        assert!(matches!(&repairs[4], Repair::Reconcile { why, .. } if why.contains("missing on n")));
    }

    #[test]
    fn in_sync_means_no_repairs() {
        let desired = BTreeMap::from([("a".to_string(), want("r1", &["n"]))]);
        let list = vec![st("a", "r1", Health::Healthy)];
        let known = desired.keys().cloned().collect();
        assert!(diff("n", &known, &desired, &list).is_empty());
    }
}
