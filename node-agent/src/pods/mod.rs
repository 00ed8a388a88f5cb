//! Programs inside pods (`xdp.pods`, `tc.pods`). A program with `in_pods` is loaded and
//! pinned like any other, with no link on the node; it is attached inside each pod the
//! operator names for it (`ApplyRequest.pods`, by uid), in that pod's network namespace,
//! found through the container runtime (`resolve`). The pod set is not part of the
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
use crds::validate::{Attach, ValidProgram, is_dns_label, is_dns_subdomain};

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
}

impl PodRequest {
    /// "pod shop/web-0": whose namespace it is, in messages.
    pub fn context(&self) -> String {
        format!("pod {}/{}", self.namespace, self.name)
    }
}

/// A program that attaches inside pods, and where in each pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InPodProgram {
    pub name: String,
    pub hook: PodHook,
    /// Interface names inside each pod, in the spec's order (a link's index is its place
    /// here).
    pub interfaces: Vec<String>,
}

/// What kind of hook an in-pod program has on each interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodHook {
    Xdp { mode: XdpMode },
    Tc { direction: Direction, priority: u16 },
}

/// The programs of a revision that attach inside pods.
pub fn in_pod_programs(programs: &[ValidProgram]) -> Vec<InPodProgram> {
    programs
        .iter()
        .filter_map(|p| {
            let (hook, interfaces) = match &p.attach {
                Attach::Xdp { interfaces, mode, in_pods: true } => (PodHook::Xdp { mode: *mode }, interfaces),
                Attach::Tc { interfaces, direction, priority, in_pods: true } => {
                    (PodHook::Tc { direction: *direction, priority: *priority }, interfaces)
                }
                _ => return None,
            };
            let interfaces = interfaces.iter().map(|i| i.to_string()).collect();
            Some(InPodProgram { name: p.name.to_string(), hook, interfaces })
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
}

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
        let mut names = Vec::with_capacity(p.programs.len());
        for program in &p.programs {
            if !in_pods.contains(program) {
                return Err(invalid(format!(
                    "{at}: program {program:?} is not one of the request's programs that attach inside pods \
                     (xdp.pods or tc.pods){}",
                    if in_pods.is_empty() { String::new() } else { format!("; those are {in_pods:?}") }
                )));
            }
            if names.iter().any(|n: &ProgramName| n.as_str() == program) {
                return Err(invalid(format!("{at}: program {program:?} is listed twice")));
            }
            names.push(ProgramName::new(program).map_err(|e| invalid(format!("{at}: {e}")))?);
        }
        out.push(PodRequest { uid, namespace: p.namespace, name: p.name, programs: names });
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
        }
    }

    #[test]
    fn only_programs_inside_pods_are_theirs() {
        let p = in_pod_programs(&programs());
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].interfaces, ["eth0", "net1"]);
        assert_eq!(p[0].hook, PodHook::Xdp { mode: XdpMode::Auto });
        assert_eq!(p[1].interfaces, ["eth0"], "the default interface");
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
        assert!(e.contains("those are {\"in_pod\", \"tc_pod\"}"), "{e}");
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
            netns: None,
            links: vec![],
            failure: Some(f),
        };
        let a = attachment(&record);
        assert_eq!(a.reason.as_deref(), Some("AttachFailed"));
        assert!(a.link_ids.is_empty());
    }
}
