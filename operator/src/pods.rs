//! Programs inside pods (`xdp.pods`, `tc.pods`, `uprobe.containers`): which pods each node runs for a
//! BpfProgram. Pure: the pods come from a watch of the namespaces programs name; this
//! turns them, with the program's selectors and its target nodes, into the pod list each
//! node's Apply carries (`ApplyRequest.pods`). The pod set is not part of the revision: a
//! pod that starts or stops changes what a node is sent, not what it runs.

use std::collections::{BTreeMap, BTreeSet};

use crds::limits::MAX_PODS_PER_OWNER;
use crds::program::{BpfProgramSpec, PodSelector};
use k8s_openapi::api::core::v1::Pod;

use crate::targets::{SelectorError, selector_matches};

/// A pod as far as programs inside pods care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The node it was scheduled to.
    pub node: String,
    pub labels: BTreeMap<String, String>,
    /// Its containers' names in spec order (where uprobes in containers probe).
    pub containers: Vec<String>,
}

impl PodInfo {
    /// A pod that runs: scheduled, `Running`, not being deleted. Others have no network
    /// namespace to attach in (yet, or any more).
    pub fn of_running(pod: &Pod) -> Option<PodInfo> {
        let meta = &pod.metadata;
        if meta.deletion_timestamp.is_some() {
            return None;
        }
        let status = pod.status.as_ref()?;
        if status.phase.as_deref() != Some("Running") {
            return None;
        }
        let spec = pod.spec.as_ref()?;
        let node = spec.node_name.clone()?;
        Some(PodInfo {
            uid: meta.uid.clone()?,
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            node,
            labels: meta.labels.clone().unwrap_or_default(),
            containers: spec.containers.iter().map(|c| c.name.clone()).collect(),
        })
    }
}

/// One pod of a node's Apply: the program functions that attach in it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodePod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub programs: Vec<String>,
    pub containers: Vec<String>,
}

/// Which pods a program attaches in: a namespace and a label selector over its pods.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PodTarget<'a> {
    pub namespace: &'a str,
    pub selector: &'a PodSelector,
}

/// The programs of `spec` that attach inside pods (`xdp.pods`, `tc.pods`,
/// `uprobe.containers`, `uretprobe.containers`), each with its pod target.
pub fn pod_programs(spec: &BpfProgramSpec) -> Vec<(&str, PodTarget<'_>)> {
    spec.programs
        .iter()
        .filter_map(|p| {
            let net = p.xdp.as_ref().and_then(|a| a.pods.as_ref()).or(p.tc.as_ref().and_then(|a| a.pods.as_ref()));
            let net = net.map(|t| PodTarget { namespace: &t.namespace, selector: &t.selector });
            let probe = p.uprobe.as_ref().or(p.uretprobe.as_ref()).and_then(|a| a.containers.as_ref());
            let probe = probe.map(|c| PodTarget { namespace: &c.namespace, selector: &c.selector });
            net.or(probe).map(|t| (p.name.as_str(), t))
        })
        .collect()
}

/// Namespaces whose pods `spec` attaches in.
pub fn namespaces(spec: &BpfProgramSpec) -> BTreeSet<String> {
    pod_programs(spec).into_iter().map(|(_, t)| t.namespace.to_string()).collect()
}

/// Per target node, the pods it must attach in (sorted by uid; each pod's programs in spec
/// order), at most [`MAX_PODS_PER_OWNER`] a node (the agent refuses more in one Apply):
/// the first by uid. Nodes without such a pod are left out; pods on other nodes are not
/// counted.
pub fn by_node<'a>(
    spec: &BpfProgramSpec,
    pods: impl IntoIterator<Item = &'a PodInfo>,
    targets: &BTreeSet<String>,
) -> Result<BTreeMap<String, Vec<NodePod>>, SelectorError> {
    let programs = pod_programs(spec);
    let selectors: Vec<(&str, &str, k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector)> =
        programs.iter().map(|(name, t)| (*name, t.namespace, t.selector.to_label_selector())).collect();
    let mut out: BTreeMap<String, Vec<NodePod>> = BTreeMap::new();
    for pod in pods {
        if !targets.contains(&pod.node) {
            continue;
        }
        let mut names = Vec::new();
        for (name, namespace, selector) in &selectors {
            if *namespace == pod.namespace && selector_matches(selector, &pod.labels)? {
                names.push(name.to_string());
            }
        }
        if !names.is_empty() {
            out.entry(pod.node.clone()).or_default().push(NodePod {
                uid: pod.uid.clone(),
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                programs: names,
                containers: pod.containers.clone(),
            });
        }
    }
    for (node, list) in out.iter_mut() {
        list.sort();
        if list.len() > MAX_PODS_PER_OWNER {
            tracing::warn!(
                node = %node,
                selected = list.len(),
                "more selected pods on one node than a program attaches in ({MAX_PODS_PER_OWNER}); the rest wait"
            );
            list.truncate(MAX_PODS_PER_OWNER);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> BpfProgramSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn pod(uid: &str, ns: &str, node: &str, labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            uid: uid.into(),
            namespace: ns.into(),
            name: format!("p-{uid}"),
            node: node.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            containers: vec!["app".into()],
        }
    }

    const SPEC: &str = r#"
bytecode: {path: /x.o}
programs:
  - {name: web_xdp, type: XDP, xdp: {pods: {namespace: shop, selector: {matchLabels: {app: web}}}}}
  - {name: all_tc, type: TC, tc: {direction: Ingress, pods: {namespace: shop}}}
  - {name: node_xdp, type: XDP, xdp: {interfaces: [eth0]}}
  - {name: db_probe, type: Uprobe, uprobe: {target: /bin/db, symbol: query, containers: {namespace: shop, selector: {matchLabels: {app: db}}}}}
"#;

    #[test]
    fn a_node_is_sent_at_most_the_pods_an_apply_takes() {
        let s = spec(SPEC);
        let pods: Vec<PodInfo> =
            (0..MAX_PODS_PER_OWNER + 3).map(|i| pod(&format!("u{i:04}"), "shop", "n1", &[("app", "web")])).collect();
        let got = by_node(&s, &pods, &BTreeSet::from(["n1".to_string()])).unwrap();
        assert_eq!(got["n1"].len(), MAX_PODS_PER_OWNER);
        assert_eq!(got["n1"][0].uid, "u0000", "the first by uid");
    }

    #[test]
    fn each_node_gets_its_own_running_selected_pods_with_the_programs_that_select_them() {
        let s = spec(SPEC);
        assert_eq!(pod_programs(&s).iter().map(|(n, _)| *n).collect::<Vec<_>>(), ["web_xdp", "all_tc", "db_probe"]);
        assert_eq!(namespaces(&s), BTreeSet::from(["shop".to_string()]));
        let pods = [
            pod("u2", "shop", "n1", &[("app", "web")]),
            pod("u1", "shop", "n1", &[("app", "db")]),
            pod("u3", "shop", "n2", &[("app", "web")]),
            pod("u4", "other", "n1", &[("app", "web")]),
            pod("u5", "shop", "n9", &[("app", "web")]),
        ];
        let targets: BTreeSet<String> = ["n1".to_string(), "n2".to_string(), "n3".to_string()].into();
        let got = by_node(&s, &pods, &targets).unwrap();
        let n1: Vec<(&str, Vec<String>)> = got["n1"].iter().map(|p| (p.uid.as_str(), p.programs.clone())).collect();
        assert_eq!(
            n1,
            [("u1", vec!["all_tc".to_string(), "db_probe".into()]), ("u2", vec!["web_xdp".into(), "all_tc".into()])]
        );
        assert_eq!(got["n1"][0].containers, ["app"], "each pod's containers go with it");
        assert_eq!(got["n2"].len(), 1);
        assert!(!got.contains_key("n3"), "no pod there");
        assert!(!got.contains_key("n9"), "not a target");
    }

    #[test]
    fn only_running_scheduled_pods_that_are_not_being_deleted_count() {
        let running: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"uid": "u", "name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "app"}, {"name": "sidecar"}]},
            "status": {"phase": "Running"},
        }))
        .unwrap();
        let info = PodInfo::of_running(&running).unwrap();
        assert_eq!(info.node, "n1");
        assert_eq!(info.containers, ["app", "sidecar"]);
        let mut pending = running.clone();
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        assert_eq!(PodInfo::of_running(&pending), None);
        let mut leaving = running.clone();
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(PodInfo::of_running(&leaving), None);
    }
}
