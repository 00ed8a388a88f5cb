//! What each node must do for one BpfProgram. Pure. Which revision node N must run now
//! is the rollout's answer ([`crate::rollout::Decision`]: every target at once, or step by
//! step for a progressive strategy); this turns it, with what N runs and its backoff, into
//! an Apply, a Remove or nothing.

use std::collections::{BTreeMap, BTreeSet};

use crds::Health;

use crate::ascending::{Ascending, AscendingSet, union};
use crate::rollout::Decision;

/// What a node's agent last reported for one owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub revision: String,
    pub health: Health,
}

/// Everything the decision for one program may look at.
#[derive(Clone, Copy, Debug)]
pub struct ProgramView<'a> {
    /// The revision the spec asks for.
    pub desired: &'a str,
    /// Nodes the selector picks.
    pub targets: &'a BTreeSet<String>,
    /// Per node, what runs there now.
    pub observed: &'a BTreeMap<String, Observed>,
    /// Nodes that failed the revision they must run and wait for their next try
    /// (backoff): they are left alone until then.
    pub held: &'a BTreeSet<String>,
    /// For a program with programs inside pods: per node, the pods it must attach in and
    /// those it reports attached in (`None`: no program inside pods).
    pub pods: Option<&'a PodSets>,
}

/// Pods each node must attach in, and is attached in, as [`crate::index::pod_digest`]s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodSets {
    pub wanted: BTreeMap<String, u64>,
    pub attached: BTreeMap<String, u64>,
}

impl PodSets {
    /// `node` is attached in exactly the pods it must be (none wanted: none attached).
    pub fn in_step(&self, node: &str) -> bool {
        self.wanted.get(node).copied().unwrap_or(0) == self.attached.get(node).copied().unwrap_or(0)
    }
}

/// How long a node waits before it is sent a revision it failed `attempts` times in a
/// row: 5 s, doubling, at most 5 minutes. A new revision starts again at once.
pub fn retry_delay(attempts: u32) -> std::time::Duration {
    let secs = 5u64.saturating_mul(1u64 << attempts.saturating_sub(1).min(16));
    std::time::Duration::from_secs(secs.min(300))
}

/// What to ask one node's agent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Run this revision (Apply is idempotent, so re-sending it is safe).
    Apply(String),
    /// Remove everything of the owner.
    Remove,
    /// Nothing to do: the node runs what it must, healthy.
    Keep,
}

/// What to ask one node, given the revision the rollout assigns it (`want`), what it runs
/// and whether it is held.
fn action_for(
    node: &str,
    want: Option<&str>,
    observed: Option<&Observed>,
    held: bool,
    view: &ProgramView<'_>,
) -> Action {
    match (want, observed) {
        // Runs what it must; with pods, in exactly the pods it must (a pod that starts or
        // stops is the same revision sent again with the new pod set).
        (Some(want), Some(o))
            if o.revision == want && o.health == Health::Healthy && view.pods.is_none_or(|p| p.in_step(node)) =>
        {
            Action::Keep
        }
        (Some(want), _) if want == view.desired && held => Action::Keep,
        (Some(want), _) => Action::Apply(want.to_string()),
        (None, Some(_)) => Action::Remove,
        (None, None) => Action::Keep,
    }
}

/// Decisions for every node that is a target or runs something of the owner; nodes
/// with nothing to do are left out. (Every map is read beside one walk in name order.)
pub fn plan(view: &ProgramView<'_>, rollout: &Decision) -> BTreeMap<String, Action> {
    let mut assign = Ascending::new(&rollout.assign);
    let mut observed = Ascending::new(view.observed);
    let mut held = AscendingSet::new(view.held);
    union(view.targets.iter(), view.observed.keys())
        .filter_map(|n| {
            let want = assign.get(n.as_str()).and_then(Option::as_deref);
            match action_for(n, want, observed.get(n.as_str()), held.contains(n.as_str()), view) {
                Action::Keep => None,
                a => Some((n.clone(), a)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: &[&str]) -> BTreeSet<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn obs(entries: &[(&str, &str, Health)]) -> BTreeMap<String, Observed> {
        entries.iter().map(|(n, r, h)| (n.to_string(), Observed { revision: r.to_string(), health: *h })).collect()
    }

    /// A rollout that assigns `rev` to each of `nodes` (`None`: nothing yet).
    fn assign(nodes: &[(&str, Option<&str>)]) -> Decision {
        let assign = nodes.iter().map(|(n, r)| (n.to_string(), r.map(str::to_string))).collect();
        Decision { assign, status: Default::default(), wake: None, measure: false }
    }

    /// Every target at once.
    fn all_at_once(view: &ProgramView<'_>) -> Decision {
        let assign = view.targets.iter().map(|n| (n.clone(), Some(view.desired.to_string()))).collect();
        Decision { assign, status: Default::default(), wake: None, measure: false }
    }

    #[test]
    fn new_targets_get_the_revision_others_lose_it() {
        let targets = set(&["a", "b"]);
        let observed = obs(&[("b", "r1", Health::Healthy), ("c", "r1", Health::Healthy)]);
        let view = ProgramView { desired: "r1", targets: &targets, observed: &observed, held: &set(&[]), pods: None };
        let p = plan(&view, &all_at_once(&view));
        assert_eq!(p.get("a"), Some(&Action::Apply("r1".into())));
        assert_eq!(p.get("b"), None, "b already runs r1 healthy");
        assert_eq!(p.get("c"), Some(&Action::Remove));
    }

    #[test]
    fn stale_failed_or_degraded_nodes_are_reapplied() {
        let targets = set(&["a", "b", "c"]);
        let observed = obs(&[("a", "r0", Health::Healthy), ("b", "r1", Health::Failed), ("c", "r1", Health::Degraded)]);
        let view = ProgramView { desired: "r1", targets: &targets, observed: &observed, held: &set(&[]), pods: None };
        let p = plan(&view, &all_at_once(&view));
        assert!(p.values().all(|a| *a == Action::Apply("r1".into())), "{p:?}");
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn nodes_in_backoff_are_left_alone_until_their_next_try() {
        let targets = set(&["a", "b"]);
        let observed = obs(&[("a", "r0", Health::Healthy)]);
        let held = set(&["a"]);
        let view = ProgramView { desired: "r1", targets: &targets, observed: &observed, held: &held, pods: None };
        let p = plan(&view, &all_at_once(&view));
        assert_eq!(p, BTreeMap::from([("b".to_string(), Action::Apply("r1".into()))]), "a keeps r0 until then");
        // A node held for r1 but no longer targeted still loses it.
        let (targets, observed) = (set(&[]), obs(&[("a", "r1", Health::Failed)]));
        let view = ProgramView { desired: "r1", targets: &targets, observed: &observed, held: &held, pods: None };
        assert_eq!(plan(&view, &all_at_once(&view)), BTreeMap::from([("a".to_string(), Action::Remove)]));
    }

    #[test]
    fn retries_wait_longer_each_time_up_to_five_minutes() {
        let secs: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_delay(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn no_targets_and_nothing_observed_means_nothing_to_do() {
        let (targets, observed) = (set(&[]), obs(&[]));
        let view = ProgramView { desired: "r1", targets: &targets, observed: &observed, held: &set(&[]), pods: None };
        assert!(plan(&view, &all_at_once(&view)).is_empty());
    }

    #[test]
    fn a_node_on_the_revision_is_sent_it_again_when_its_pods_change() {
        let targets = set(&["a", "b"]);
        let observed = obs(&[("a", "r1", Health::Healthy), ("b", "r1", Health::Healthy)]);
        let pods = PodSets {
            wanted: BTreeMap::from([("a".to_string(), 7), ("b".to_string(), 9)]),
            attached: BTreeMap::from([("a".to_string(), 7), ("b".to_string(), 8)]),
        };
        let view =
            ProgramView { desired: "r1", targets: &targets, observed: &observed, held: &set(&[]), pods: Some(&pods) };
        // b runs r1 but not in the pods it must: the same revision again, with its pods.
        assert_eq!(plan(&view, &all_at_once(&view)), BTreeMap::from([("b".to_string(), Action::Apply("r1".into()))]));
        // Its last pod gone: nothing wanted, something attached: sent again to detach.
        let gone = PodSets { wanted: BTreeMap::new(), attached: BTreeMap::from([("a".to_string(), 7)]) };
        let view = ProgramView { pods: Some(&gone), ..view };
        assert_eq!(plan(&view, &all_at_once(&view)).get("a"), Some(&Action::Apply("r1".into())));
    }

    /// The rollout decides per node: here every node but one stays on the revision it
    /// runs (a canary), and one is not assigned anything yet.
    #[test]
    fn the_rollout_decides_per_node() {
        let targets = set(&["a", "b", "c"]);
        let observed = obs(&[("a", "r0", Health::Healthy), ("b", "r0", Health::Healthy)]);
        let view = ProgramView { desired: "r1", targets: &targets, observed: &observed, held: &set(&[]), pods: None };
        let p = plan(&view, &assign(&[("a", Some("r1")), ("b", Some("r0")), ("c", None)]));
        assert_eq!(p, BTreeMap::from([("a".to_string(), Action::Apply("r1".into()))]));
    }
}
