//! Where agents run. Installed by the chart, the operator watches the agent DaemonSet's
//! pods in its own namespace (`--agent-pod-selector`): a selected node whose agent is not
//! Ready is *waiting* for it — not dialled, not failed, nothing removed from it — and gets
//! its programs as soon as its agent turns Ready instead of at the next resync. Without a
//! selector (agents started by hand, process-mode nodes) every node is taken to run one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

/// How a node's agent stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentState {
    /// An agent pod on the node is Ready (or agents are not tracked).
    Ready,
    /// An agent pod exists on the node but is not Ready yet (starting, restarting).
    Starting,
    /// No agent pod on the node: the DaemonSet leaves it out (its nodeSelector, a taint
    /// it does not tolerate) or has not created one yet.
    Absent,
}

/// Agent pods by node, as last seen.
#[derive(Debug)]
pub struct Agents {
    /// `None`: not tracked, every node runs an agent.
    nodes: Option<RwLock<BTreeMap<String, Seen>>>,
    /// Turns true once the first List of agent pods is in.
    synced: tokio::sync::watch::Sender<bool>,
}

/// One node's agent pods, as last seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    ready: bool,
    /// Not Ready: since when (the Ready condition's last transition), when known.
    since: Option<Timestamp>,
}

impl Agents {
    /// Every node is taken to run an agent.
    pub fn untracked() -> Agents {
        Agents { nodes: None, synced: tokio::sync::watch::Sender::new(true) }
    }

    /// Agents are known from their pods (none known yet).
    pub fn tracked() -> Agents {
        Agents { nodes: Some(RwLock::new(BTreeMap::new())), synced: tokio::sync::watch::Sender::new(false) }
    }

    pub fn is_tracked(&self) -> bool {
        self.nodes.is_some()
    }

    /// Resolves once what agents run where is known (at once when not tracked).
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn state(&self, node: &str) -> AgentState {
        self.state_since(node).0
    }

    /// The node's agent and, for one not Ready, since when it has not been.
    pub fn state_since(&self, node: &str) -> (AgentState, Option<Timestamp>) {
        let Some(nodes) = &self.nodes else { return (AgentState::Ready, None) };
        match nodes.read().unwrap_or_else(|e| e.into_inner()).get(node) {
            Some(Seen { ready: true, .. }) => (AgentState::Ready, None),
            Some(Seen { ready: false, since }) => (AgentState::Starting, *since),
            None => (AgentState::Absent, None),
        }
    }

    pub fn is_ready(&self, node: &str) -> bool {
        self.state(node) == AgentState::Ready
    }

    /// Replace what is known with `pods` (the agent pods now). Returns the nodes whose
    /// agent turned Ready (they must be sent their programs now) and those whose agent
    /// stopped being Ready.
    pub fn update<'a>(&self, pods: impl Iterator<Item = &'a Pod>) -> (BTreeSet<String>, BTreeSet<String>) {
        let Some(nodes) = &self.nodes else { return Default::default() };
        let mut now: BTreeMap<String, Seen> = BTreeMap::new();
        for pod in pods {
            let Some(node) = pod_node(pod) else { continue };
            // A terminating agent still holds the node (not Absent), but takes no work.
            let ready = pod.metadata.deletion_timestamp.is_none() && pod_ready(pod);
            let since = if ready { None } else { not_ready_since(pod) };
            let e = now.entry(node).or_insert(Seen { ready: false, since });
            if ready {
                *e = Seen { ready: true, since: None };
            } else if !e.ready {
                // Of several pods on a node (a replacement beside the old one), the
                // outage began at the latest transition.
                e.since = e.since.max(since);
            }
        }
        let mut map = nodes.write().unwrap_or_else(|e| e.into_inner());
        let was_ready = |m: &BTreeMap<String, Seen>, n: &str| m.get(n).is_some_and(|s| s.ready);
        let became: BTreeSet<String> =
            now.iter().filter(|(n, s)| s.ready && !was_ready(&map, n)).map(|(n, _)| n.clone()).collect();
        let lost: BTreeSet<String> =
            map.iter().filter(|(n, s)| s.ready && !was_ready(&now, n)).map(|(n, _)| n.clone()).collect();
        *map = now;
        (became, lost)
    }
}

/// When the pod's Ready condition last turned (False), from the kubelet's record, so an
/// outage's age survives an operator restart.
fn not_ready_since(pod: &Pod) -> Option<Timestamp> {
    let cs = pod.status.as_ref()?.conditions.as_ref()?;
    cs.iter().find(|c| c.type_ == "Ready").and_then(|c| c.last_transition_time.as_ref()).map(|t| t.0)
}

/// The node an agent pod runs on, or is meant for: a DaemonSet pod names its node in a
/// node affinity on `metadata.name` and gets `spec.nodeName` only once scheduled (a
/// node that cannot take it yet still has an agent coming).
pub fn pod_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = &spec.node_name {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().flat_map(|t| t.match_fields.iter().flatten()).find_map(|f| {
        let one = f.values.as_deref().filter(|v| v.len() == 1)?;
        (f.key == "metadata.name" && f.operator == "In").then(|| one[0].clone())
    })
}

/// A pod is Ready when its `Ready` condition is True (kubelet: every readiness probe
/// passes, i.e. the agent answers `/healthz`).
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Watch the agent pods matching `selector` in `namespace`, keeping `agents` current.
/// Calls `on_change(became_ready, stopped_being_ready)` after every change and once
/// the first List is in. Returns the store (ready once the first List is in).
pub fn watch(
    client: Client,
    namespace: &str,
    selector: &str,
    agents: Arc<Agents>,
    mut on_change: impl FnMut(BTreeSet<String>, BTreeSet<String>) + Send + 'static,
) -> (Store<Pod>, impl std::future::Future<Output = ()> + Send + 'static) {
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().labels(selector);
    let reader = store.clone();
    let run = async move {
        let stream = watcher(api, config).default_backoff().reflect(writer);
        futures::pin_mut!(stream);
        loop {
            match stream.try_next().await {
                Ok(Some(watcher::Event::Init)) | Ok(Some(watcher::Event::InitApply(_))) => {}
                Ok(Some(ev)) => {
                    let pods = reader.state();
                    let (became, lost) = agents.update(pods.iter().map(|p| p.as_ref()));
                    // The first List only says where agents run: the initial sync reads
                    // them all; nothing turned Ready.
                    if matches!(ev, watcher::Event::InitDone) && !*agents.synced.borrow() {
                        agents.synced.send_replace(true);
                        continue;
                    }
                    if !became.is_empty() || !lost.is_empty() {
                        tracing::info!(ready = ?became, not_ready = ?lost, "agents changed");
                        on_change(became, lost);
                    }
                }
                Ok(None) => break,
                Err(e) => tracing::warn!(error = %e, "agent pod watch"),
            }
        }
    };
    (store, run)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};

    use super::*;

    fn pod(node: &str, ready: bool) -> Pod {
        Pod {
            spec: Some(PodSpec { node_name: Some(node.into()), ..Default::default() }),
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn set(n: &[&str]) -> BTreeSet<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn untracked_agents_are_everywhere() {
        let a = Agents::untracked();
        assert_eq!(a.state("any"), AgentState::Ready);
        assert_eq!(a.update([pod("n", false)].iter()), Default::default());
        assert!(a.is_ready("n"));
    }

    #[test]
    fn pods_tell_which_nodes_have_a_ready_agent() {
        let a = Agents::tracked();
        assert_eq!(a.state("n1"), AgentState::Absent, "nothing seen yet");
        let (became, lost) = a.update([pod("n1", true), pod("n2", false)].iter());
        assert_eq!((became, lost), (set(&["n1"]), set(&[])));
        assert_eq!(a.state("n1"), AgentState::Ready);
        assert_eq!(a.state("n2"), AgentState::Starting);
        assert_eq!(a.state("n3"), AgentState::Absent);
        // n2 turns Ready, n1's agent restarts.
        let (became, lost) = a.update([pod("n1", false), pod("n2", true)].iter());
        assert_eq!((became, lost), (set(&["n2"]), set(&["n1"])));
        // A replacement pod beside the old one: Ready if either is.
        let (became, _) = a.update([pod("n1", false), pod("n1", true), pod("n2", true)].iter());
        assert_eq!(became, set(&["n1"]));
        // The pod of n2 is gone (uninstall, node drained).
        let (_, lost) = a.update([pod("n1", true)].iter());
        assert_eq!(lost, set(&["n2"]));
        assert_eq!(a.state("n2"), AgentState::Absent);
    }

    #[test]
    fn an_unscheduled_daemonset_pod_names_its_node_by_affinity() {
        use k8s_openapi::api::core::v1::{
            Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
        };
        let mut p = pod("x", false);
        p.spec = Some(PodSpec {
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_fields: Some(vec![NodeSelectorRequirement {
                                key: "metadata.name".into(),
                                operator: "In".into(),
                                values: Some(vec!["joining".into()]),
                            }]),
                            ..Default::default()
                        }],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(pod_node(&p).as_deref(), Some("joining"));
        let a = Agents::tracked();
        a.update([p].iter());
        assert_eq!(a.state("joining"), AgentState::Starting, "its agent is coming: the node waits for it");
    }

    #[test]
    fn a_terminating_agent_takes_no_work() {
        let a = Agents::tracked();
        let mut p = pod("n1", true);
        p.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
        a.update([p].iter());
        assert_eq!(a.state("n1"), AgentState::Starting);
    }
}
