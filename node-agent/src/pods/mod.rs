//! Programs inside pods (`xdp.pods`, `tc.pods`, `uprobe.containers`). A program with
//! `in_pods` is loaded and pinned like any other, with no link on the node; it is attached
//! inside each pod the operator names for it (`ApplyRequest.pods`, by uid): XDP and TC in
//! that pod's network namespace, a uprobe on the binary inside each of its containers,
//! both found through the container runtime (`resolve`). The pod set is not part of the
//! revision: an Apply of the running revision with other pods attaches in the new ones and
//! detaches from the gone ones, reloading nothing (`plan` says what, `manager/pods.rs`
//! does it).
//!
//! A pod that is gone or not started, or whose interface is missing, is that pod's failure
//! (reported in its [`PodAttachment`]), never the owner's: the owner stays Healthy when
//! its node-level part is.

pub mod plan;
pub mod resolve;

use std::collections::BTreeSet;

use crds::limits::MAX_PODS_PER_OWNER;
use crds::names::{PodUid, ProgramName};
use crds::node::PodAttachment;
use crds::program::Direction;
use crds::program::XdpMode;
use crds::validate::{Attach, UprobeTarget, ValidProgram, is_dns_label, is_dns_subdomain};

use crate::error::{AgentError, Reason};
use crate::store::{PodFailure, PodRecord};

/// Longest message a pod's state carries: an owner's answer holds one per pod.
const MAX_POD_MESSAGE: usize = 512;

/// One pod of an Apply: who it is, and the owner's programs that attach in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRequest {
    pub uid: PodUid,
    pub namespace: String,
    pub name: String,
    pub programs: Vec<ProgramName>,
    /// The pod's containers by name, in spec order (where uprobes in containers go).
    pub containers: Vec<String>,
}

impl PodRequest {
    /// "pod shop/web-0": whose namespace it is, in messages.
    pub fn context(&self) -> String {
        format!("pod {}/{}", self.namespace, self.name)
    }
}

/// A program that attaches inside pods, and where in each pod.
#[derive(Clone, Debug, PartialEq)]
pub struct InPodProgram {
    pub name: String,
    pub hook: PodHook,
    /// XDP and TC: interface names inside each pod, in the spec's order (a link's index is
    /// its place here). Uprobes: the container names to probe (every container of the pod
    /// when empty).
    pub places: Vec<String>,
    /// Uprobes: the binary (a path inside the container) and where in it.
    pub probe: Option<UprobeTarget>,
}

/// What kind of hook an in-pod program has on each interface or container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodHook {
    Xdp {
        mode: XdpMode,
    },
    Tc {
        direction: Direction,
        priority: u16,
    },
    /// A uprobe (`ret`: a uretprobe) on a binary inside each container.
    Uprobe {
        ret: bool,
    },
}

impl PodHook {
    /// Whether it attaches in the pod's network namespace (not in its containers).
    pub fn is_network(&self) -> bool {
        !matches!(self, PodHook::Uprobe { .. })
    }
}

impl InPodProgram {
    /// The container names a uprobe names that `pod` does not have.
    pub fn missing_in(&self, pod: &PodRequest) -> Vec<String> {
        match self.hook {
            PodHook::Uprobe { .. } => self.places.iter().filter(|c| !pod.containers.contains(c)).cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Where the program attaches in `pod`: (index, interface or container name). An
    /// interface's index is its place in the spec's list; a container's, its place in the
    /// pod's spec (so a link's pin names the same hook on every Apply).
    pub fn hooks_in(&self, pod: &PodRequest) -> Vec<(usize, String)> {
        match self.hook {
            PodHook::Uprobe { .. } => pod
                .containers
                .iter()
                .enumerate()
                .filter(|(_, c)| self.places.is_empty() || self.places.contains(c))
                .map(|(i, c)| (i, c.clone()))
                .collect(),
            _ => self.places.iter().cloned().enumerate().collect(),
        }
    }
}

/// The programs of a revision that attach inside pods.
pub fn in_pod_programs(programs: &[ValidProgram]) -> Vec<InPodProgram> {
    programs
        .iter()
        .filter_map(|p| {
            let names = |list: &[crds::names::InterfaceName]| list.iter().map(|i| i.to_string()).collect();
            let (hook, places, probe) = match &p.attach {
                Attach::Xdp { interfaces, mode, in_pods: true } => {
                    (PodHook::Xdp { mode: *mode }, names(interfaces), None)
                }
                Attach::Tc { interfaces, direction, priority, in_pods: true } => {
                    (PodHook::Tc { direction: *direction, priority: *priority }, names(interfaces), None)
                }
                Attach::Uprobe { probe, ret, containers: Some(containers) } => {
                    (PodHook::Uprobe { ret: *ret }, containers.clone(), Some(probe.clone()))
                }
                _ => return None,
            };
            Some(InPodProgram { name: p.name.to_string(), hook, places, probe })
        })
        .collect()
}

/// A pod as the wire names it, before it is checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInput {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub programs: Vec<String>,
    pub containers: Vec<String>,
}

/// Most containers a pod's request names (a pod has far fewer).
const MAX_POD_CONTAINERS: usize = 64;

/// Check the pods of an Apply against its programs: at most [`MAX_PODS_PER_OWNER`], each
/// once, with a pod uid, namespace and name as Kubernetes gives them, and naming only
/// programs of the request that attach inside pods. Every refusal says which pod and what
/// to fix.
pub fn check_pods(pods: Vec<PodInput>, programs: &[ValidProgram]) -> Result<Vec<PodRequest>, AgentError> {
    let invalid = |msg: String| AgentError::new(Reason::InvalidSpec, msg);
    if pods.len() > MAX_PODS_PER_OWNER {
        return Err(invalid(format!(
            "the request names {} pods; at most {MAX_PODS_PER_OWNER} per program and node are attached in",
            pods.len()
        )));
    }
    let in_pods: BTreeSet<String> = in_pod_programs(programs).into_iter().map(|p| p.name).collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(pods.len());
    for (i, p) in pods.into_iter().enumerate() {
        let at = format!("pods[{i}] ({}/{})", p.namespace, p.name);
        let uid = PodUid::new(&p.uid).map_err(|e| invalid(format!("{at}: {e}")))?;
        if !seen.insert(uid.clone()) {
            return Err(invalid(format!("{at}: pod uid {uid} is listed twice")));
        }
        if !is_dns_label(&p.namespace) {
            return Err(invalid(format!("{at}: namespace {:?} is not a namespace name", p.namespace)));
        }
        if !is_dns_subdomain(&p.name) {
            return Err(invalid(format!("{at}: name {:?} is not a pod name", p.name)));
        }
        if p.programs.is_empty() {
            return Err(invalid(format!("{at}: names no program to attach in it")));
        }
        if p.containers.len() > MAX_POD_CONTAINERS {
            return Err(invalid(format!(
                "{at}: names {} containers; at most {MAX_POD_CONTAINERS}",
                p.containers.len()
            )));
        }
        for (j, c) in p.containers.iter().enumerate() {
            if !is_dns_label(c) {
                return Err(invalid(format!("{at}: containers[{j}] {c:?} is not a container name")));
            }
            if p.containers[..j].contains(c) {
                return Err(invalid(format!("{at}: container {c:?} is listed twice")));
            }
        }
        let mut names = Vec::with_capacity(p.programs.len());
        for program in &p.programs {
            if !in_pods.contains(program) {
                return Err(invalid(format!(
                    "{at}: program {program:?} is not one of the request's programs that attach inside pods \
                     (xdp.pods, tc.pods or uprobe.containers){}",
                    if in_pods.is_empty() { String::new() } else { format!("; those are {in_pods:?}") }
                )));
            }
            if names.iter().any(|n: &ProgramName| n.as_str() == program) {
                return Err(invalid(format!("{at}: program {program:?} is listed twice")));
            }
            names.push(ProgramName::new(program).map_err(|e| invalid(format!("{at}: {e}")))?);
        }
        out.push(PodRequest { uid, namespace: p.namespace, name: p.name, programs: names, containers: p.containers });
    }
    Ok(out)
}

/// A pod's failure as recorded: its reason and words, cut to a bounded length.
pub fn failure(e: &AgentError) -> PodFailure {
    let mut message = e.message.clone();
    if message.len() > MAX_POD_MESSAGE {
        let mut end = MAX_POD_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    PodFailure { reason: e.reason.as_str().to_string(), message }
}

/// How a recorded pod is reported (List, Watch, Apply's answer).
pub fn attachment(p: &PodRecord) -> PodAttachment {
    PodAttachment {
        uid: p.uid.clone(),
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        link_ids: p.links.iter().map(|l| l.link.link_id).collect(),
        reason: p.failure.as_ref().map(|f| f.reason.clone()),
        message: p.failure.as_ref().map(|f| f.message.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn programs() -> Vec<ValidProgram> {
        let spec: crds::BpfProgramSpec = serde_yaml::from_str(
            r#"
bytecode: {path: /x.o}
programs:
  - {name: in_pod, type: XDP, xdp: {pods: {namespace: shop, interfaces: [eth0, net1]}}}
  - {name: tc_pod, type: TC, tc: {direction: Egress, priority: 5, pods: {namespace: shop}}}
  - {name: on_node, type: XDP, xdp: {interfaces: [eth0]}}
  - {name: in_app, type: Uretprobe, uretprobe: {target: /bin/app, symbol: serve, containers: {namespace: shop, containerNames: [app]}}}
"#,
        )
        .unwrap();
        crds::validate::validate_spec(&spec).unwrap().programs
    }

    fn pod(uid: &str, programs: &[&str]) -> PodInput {
        PodInput {
            uid: uid.into(),
            namespace: "shop".into(),
            name: format!("web-{uid}"),
            programs: programs.iter().map(|p| p.to_string()).collect(),
            containers: vec!["app".into()],
        }
    }

    #[test]
    fn only_programs_inside_pods_are_theirs() {
        let p = in_pod_programs(&programs());
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].places, ["eth0", "net1"]);
        assert_eq!(p[0].hook, PodHook::Xdp { mode: XdpMode::Auto });
        assert_eq!(p[1].places, ["eth0"], "the default interface");
        assert_eq!(p[2].hook, PodHook::Uprobe { ret: true });
        assert_eq!(p[2].probe.as_ref().map(|t| t.target.clone()), Some("/bin/app".into()));
        let mut pod = check_pods(vec![pod("a-1", &["in_app"])], &programs()).unwrap().remove(0);
        pod.containers = vec!["init-done".into(), "sidecar".into(), "app".into()];
        assert_eq!(p[2].hooks_in(&pod), [(2, "app".to_string())], "named containers, by their place in the pod");
        assert_eq!(p[0].hooks_in(&pod), [(0, "eth0".to_string()), (1, "net1".to_string())]);
        let every = InPodProgram { places: vec![], ..p[2].clone() };
        assert_eq!(every.hooks_in(&pod).len(), 3, "no names: every container");
        assert_eq!(p[1].hook, PodHook::Tc { direction: Direction::Egress, priority: 5 });
    }

    #[test]
    fn pods_are_checked_against_the_programs() {
        let programs = programs();
        let ok = check_pods(vec![pod("a-1", &["in_pod", "tc_pod"]), pod("b-2", &["tc_pod"])], &programs).unwrap();
        assert_eq!(ok[0].uid.as_str(), "a-1");
        assert_eq!(ok[0].context(), "pod shop/web-a-1");
        let refused = |pods: Vec<PodInput>| check_pods(pods, &programs).unwrap_err().message;
        let e = refused(vec![pod("a-1", &["on_node"])]);
        assert!(e.starts_with("pods[0] (shop/web-a-1): program \"on_node\" is not one of"), "{e}");
        assert!(e.contains("those are {\"in_app\", \"in_pod\", \"tc_pod\"}"), "{e}");
        let mut twice = pod("a-1", &["in_app"]);
        twice.containers = vec!["app".into(), "app".into()];
        assert!(refused(vec![twice]).contains("container \"app\" is listed twice"));
        let mut bad = pod("a-1", &["in_app"]);
        bad.containers = vec!["../x".into()];
        assert!(refused(vec![bad]).contains("\"../x\" is not a container name"));
        assert!(refused(vec![pod("a-1", &["in_pod"]), pod("a-1", &["tc_pod"])]).contains("listed twice"));
        assert!(refused(vec![pod("a-1", &["in_pod", "in_pod"])]).contains("program \"in_pod\" is listed twice"));
        assert!(refused(vec![pod("A-1", &["in_pod"])]).contains("invalid pod uid \"A-1\""));
        assert!(refused(vec![pod("../x", &["in_pod"])]).contains("invalid pod uid"), "never a path");
        assert!(refused(vec![pod("a-1", &[])]).contains("names no program"));
        let mut bad_ns = pod("a-1", &["in_pod"]);
        bad_ns.namespace = "Shop".into();
        assert!(refused(vec![bad_ns]).contains("namespace \"Shop\" is not a namespace name"));
        let too_many: Vec<PodInput> = (0..=MAX_PODS_PER_OWNER).map(|i| pod(&format!("p-{i}"), &["in_pod"])).collect();
        assert!(refused(too_many).contains(&format!("at most {MAX_PODS_PER_OWNER}")));
    }

    #[test]
    fn failures_are_bounded_and_reported() {
        let long = AgentError::new(Reason::AttachFailed, "é".repeat(MAX_POD_MESSAGE));
        let f = failure(&long);
        assert!(f.message.len() <= MAX_POD_MESSAGE + '…'.len_utf8(), "{}", f.message.len());
        assert_eq!(f.reason, "AttachFailed");
        let record = PodRecord {
            uid: "a-1".into(),
            namespace: "shop".into(),
            name: "web".into(),
            programs: vec!["in_pod".into()],
            containers: vec![],
            netns: None,
            links: vec![],
            failure: Some(f),
        };
        let a = attachment(&record);
        assert_eq!(a.reason.as_deref(), Some("AttachFailed"));
        assert!(a.link_ids.is_empty());
    }
}
