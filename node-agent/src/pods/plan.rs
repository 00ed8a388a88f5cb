//! What an Apply does in pods, decided from plain data: the in-pod programs of the revision
//! that runs after it, the pods recorded for that revision (or for the revision it
//! replaces), which recorded links the kernel shows dead, and the pods requested. Pure:
//! `manager/pods.rs` resolves the pods that need attaching and carries the plan out.
//!
//! A hook is one program on one interface (by its index in the program's list), or in one
//! container (by its index in the pod's), in one pod.
//! A requested hook with a live link of the running revision is kept as it is (no reload,
//! same link id); one without is attached, taking over the replaced revision's link on the
//! same hook in place where there is one (an XDP or TCX link; see `attach::swap`); a link
//! of the running revision that is not requested any more, or dead, goes. Pods no longer
//! requested go with every link they have.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::{InPodProgram, PodHook, PodRequest};
use crate::store::{LinkKind, PodLinkRecord, PodRecord};

/// A recorded link, by where it is: pod, program and interface index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkKey {
    pub pod: String,
    pub program: String,
    pub index: usize,
}

impl LinkKey {
    pub fn of(pod: &PodRecord, link: &PodLinkRecord) -> Self {
        Self { pod: pod.uid.clone(), program: link.program.clone(), index: link.index }
    }
}

/// What a pod plan starts from.
#[derive(Clone, Copy, Debug)]
pub struct PodsNow<'a> {
    /// The in-pod programs of the revision that runs after the Apply.
    pub programs: &'a [InPodProgram],
    /// That revision's pods as recorded, when it runs already (empty for a load).
    pub running: &'a [PodRecord],
    /// The pods of the revision a load replaces (empty otherwise): links the new revision
    /// takes over in place.
    pub previous: &'a [PodRecord],
    /// Recorded links (of `running` or `previous`) the kernel shows detached or gone.
    pub dead: &'a BTreeSet<LinkKey>,
    pub requested: &'a [PodRequest],
}

/// One hook to attach.
#[derive(Clone, Debug, PartialEq)]
pub struct HookStep {
    /// Index in `PodsNow::programs`.
    pub program: usize,
    /// Index of the interface in the program's list, or of the container in the pod's.
    pub index: usize,
    /// The interface's or the container's name.
    pub place: String,
    /// The replaced revision's link on this hook, switched to the new program in place.
    pub take_over: Option<PodLinkRecord>,
}

/// What happens in one requested pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodSteps {
    pub pod: PodRequest,
    /// Whether the running revision has a record of the pod (a new one must get one, even
    /// with nothing to attach).
    pub recorded: bool,
    /// The pod's network namespace as recorded (where the kept links are).
    pub netns: Option<PathBuf>,
    /// Links kept as they are.
    pub keep: Vec<PodLinkRecord>,
    /// Links of the running revision that go first: not requested any more, or dead.
    pub detach: Vec<PodLinkRecord>,
    pub attach: Vec<HookStep>,
}

/// What an Apply does in pods.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPlan {
    /// One per requested pod, in the request's order.
    pub pods: Vec<PodSteps>,
    /// Pods of the running revision no longer requested: every link goes, and their
    /// directory.
    pub dropped: Vec<PodRecord>,
}

impl PodPlan {
    /// Nothing to attach or detach: the pods stand as recorded.
    pub fn is_noop(&self) -> bool {
        self.dropped.is_empty() && self.pods.iter().all(|p| p.recorded && p.attach.is_empty() && p.detach.is_empty())
    }

    /// The pods that need their network namespace found: those with hooks to attach.
    pub fn to_resolve(&self) -> impl Iterator<Item = &PodRequest> {
        self.pods.iter().filter(|p| !p.attach.is_empty()).map(|p| &p.pod)
    }
}

/// Plan the pods of an Apply.
pub fn plan(now: &PodsNow<'_>) -> PodPlan {
    let mut taken = BTreeSet::new();
    let pods = now
        .requested
        .iter()
        .map(|pod| {
            let running = now.running.iter().find(|r| r.uid == pod.uid.as_str());
            let wanted = wanted_hooks(now.programs, pod);
            let (mut keep, mut detach) = (Vec::new(), Vec::new());
            for (r, l) in running.iter().flat_map(|r| r.links.iter().map(move |l| (r, l))) {
                let requested = wanted
                    .iter()
                    .any(|(p, i, place)| now.programs[*p].name == l.program && *i == l.index && *place == l.link.hook);
                if requested && !now.dead.contains(&LinkKey::of(r, l)) {
                    keep.push(l.clone());
                } else {
                    detach.push(l.clone());
                }
            }
            let attach = wanted
                .into_iter()
                .filter(|(p, i, _)| !keep.iter().any(|k| k.program == now.programs[*p].name && k.index == *i))
                .map(|(p, i, place)| {
                    let take_over = previous_link(now, pod, &now.programs[p], &place, &taken);
                    if let Some((key, _)) = &take_over {
                        taken.insert(key.clone());
                    }
                    HookStep { program: p, index: i, place, take_over: take_over.map(|(_, link)| link) }
                })
                .collect();
            let netns = running.and_then(|r| r.netns.clone());
            PodSteps { pod: pod.clone(), recorded: running.is_some(), netns, keep, detach, attach }
        })
        .collect();
    let dropped =
        now.running.iter().filter(|r| !now.requested.iter().any(|p| p.uid.as_str() == r.uid)).cloned().collect();
    PodPlan { pods, dropped }
}

/// The hooks a pod asks for: (program index, place index, place name), in program then
/// place order.
fn wanted_hooks(programs: &[InPodProgram], pod: &PodRequest) -> Vec<(usize, usize, String)> {
    programs
        .iter()
        .enumerate()
        .filter(|(_, p)| pod.programs.iter().any(|n| n.as_str() == p.name))
        .flat_map(|(pi, p)| p.hooks_in(pod).into_iter().map(move |(i, place)| (pi, i, place)))
        .collect()
}

/// The replaced revision's live link that the hook takes over: on XDP, the pod's XDP link
/// on the same interface (one XDP program per interface, whichever function it was); on
/// TCX, the same function's link on the same interface, direction and priority. A clsact
/// filter is never taken over: the new one is added, then the old one removed; nor is a
/// uprobe (a perf-event link runs one program for good).
fn previous_link(
    now: &PodsNow<'_>,
    pod: &PodRequest,
    program: &InPodProgram,
    iface: &str,
    taken: &BTreeSet<LinkKey>,
) -> Option<(LinkKey, PodLinkRecord)> {
    let previous = now.previous.iter().find(|r| r.uid == pod.uid.as_str())?;
    previous
        .links
        .iter()
        .filter(|l| {
            let key = LinkKey::of(previous, l);
            !now.dead.contains(&key) && !taken.contains(&key) && l.link.hook == iface
        })
        .find(|l| match (&program.hook, &l.link.kind) {
            (PodHook::Xdp { .. }, LinkKind::Pinned { .. }) => true,
            (PodHook::Tc { direction, priority }, LinkKind::Tcx { direction: d, priority: p, .. }) => {
                l.program == program.name && d == direction && p == priority
            }
            _ => false,
        })
        .map(|l| (LinkKey::of(previous, l), l.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LinkRecord, PodFailure};
    use crds::names::{PodUid, ProgramName};
    use crds::program::{Direction, XdpMode};

    fn programs() -> Vec<InPodProgram> {
        vec![
            InPodProgram {
                name: "count".into(),
                hook: PodHook::Xdp { mode: XdpMode::Auto },
                places: vec!["eth0".into(), "net1".into()],
                probe: None,
            },
            InPodProgram {
                name: "shape".into(),
                hook: PodHook::Tc { direction: Direction::Egress, priority: 10 },
                places: vec!["eth0".into()],
                probe: None,
            },
            InPodProgram {
                name: "probe".into(),
                hook: PodHook::Uprobe { ret: false },
                places: vec![],
                probe: Some(crds::validate::UprobeTarget {
                    target: "/bin/app".into(),
                    symbol: Some("serve".into()),
                    offset: 0,
                    pid: None,
                }),
            },
        ]
    }

    fn request(uid: &str, programs: &[&str]) -> PodRequest {
        PodRequest {
            uid: PodUid::new(uid).unwrap(),
            namespace: "shop".into(),
            name: format!("web-{uid}"),
            programs: programs.iter().map(|p| ProgramName::new(*p).unwrap()).collect(),
            containers: vec!["app".into(), "sidecar".into()],
        }
    }

    fn xdp_link(program: &str, index: usize, iface: &str, id: u32) -> PodLinkRecord {
        let path = PathBuf::from(format!("/pins/{program}/{index}"));
        PodLinkRecord {
            program: program.into(),
            index,
            link: LinkRecord { hook: iface.into(), link_id: id, kind: LinkKind::Pinned { path } },
            container: None,
        }
    }

    fn tcx_link(program: &str, iface: &str, priority: u16, id: u32) -> PodLinkRecord {
        let kind = LinkKind::Tcx {
            path: PathBuf::from(format!("/pins/{program}/0")),
            interface: iface.into(),
            direction: Direction::Egress,
            priority,
        };
        let link = LinkRecord { hook: iface.into(), link_id: id, kind };
        PodLinkRecord { program: program.into(), index: 0, link, container: None }
    }

    fn record(uid: &str, programs: &[&str], links: Vec<PodLinkRecord>) -> PodRecord {
        PodRecord {
            uid: uid.into(),
            namespace: "shop".into(),
            name: format!("web-{uid}"),
            programs: programs.iter().map(|p| p.to_string()).collect(),
            containers: vec!["app".into(), "sidecar".into()],
            netns: Some(PathBuf::from(format!("/run/netns/{uid}"))),
            links,
            failure: None,
        }
    }

    fn now<'a>(
        programs: &'a [InPodProgram],
        running: &'a [PodRecord],
        previous: &'a [PodRecord],
        dead: &'a BTreeSet<LinkKey>,
        requested: &'a [PodRequest],
    ) -> PodsNow<'a> {
        PodsNow { programs, running, previous, dead, requested }
    }

    fn hooks(steps: &PodSteps) -> Vec<(usize, usize, Option<u32>)> {
        steps.attach.iter().map(|h| (h.program, h.index, h.take_over.as_ref().map(|t| t.link.link_id))).collect()
    }

    #[test]
    fn new_pods_get_every_hook_they_name() {
        let (programs, none) = (programs(), BTreeSet::new());
        let requested = [request("a", &["count", "shape"]), request("b", &["shape"])];
        let p = plan(&now(&programs, &[], &[], &none, &requested));
        assert_eq!(hooks(&p.pods[0]), vec![(0, 0, None), (0, 1, None), (1, 0, None)]);
        assert_eq!(hooks(&p.pods[1]), vec![(1, 0, None)]);
        assert!(p.dropped.is_empty() && !p.is_noop());
        assert_eq!(p.to_resolve().map(|r| r.uid.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn the_same_pods_again_touch_nothing_and_resolve_nothing() {
        let (programs, none) = (programs(), BTreeSet::new());
        let a = record("a", &["count"], vec![xdp_link("count", 0, "eth0", 7), xdp_link("count", 1, "net1", 8)]);
        let running = [a];
        let requested = [request("a", &["count"])];
        let p = plan(&now(&programs, &running, &[], &none, &requested));
        assert!(p.is_noop(), "{p:?}");
        assert_eq!(p.pods[0].keep.len(), 2);
        assert_eq!(p.pods[0].netns, Some(PathBuf::from("/run/netns/a")));
        assert_eq!(p.to_resolve().count(), 0, "no runtime call for pods that stand");
    }

    #[test]
    fn gone_pods_are_dropped_and_others_keep_their_links() {
        let (programs, none) = (programs(), BTreeSet::new());
        let running = [
            record("a", &["shape"], vec![tcx_link("shape", "eth0", 10, 7)]),
            record("b", &["shape"], vec![tcx_link("shape", "eth0", 10, 8)]),
        ];
        let requested = [request("b", &["shape"]), request("c", &["shape"])];
        let p = plan(&now(&programs, &running, &[], &none, &requested));
        assert_eq!(p.dropped.iter().map(|r| r.uid.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(p.pods[0].keep.iter().map(|l| l.link.link_id).collect::<Vec<_>>(), [8], "b keeps its link id");
        assert!(p.pods[0].attach.is_empty() && p.pods[0].detach.is_empty());
        assert_eq!(hooks(&p.pods[1]), vec![(1, 0, None)]);
    }

    #[test]
    fn a_program_no_longer_named_and_a_dead_link_go() {
        let programs = programs();
        let a = record(
            "a",
            &["count", "shape"],
            vec![xdp_link("count", 0, "eth0", 7), xdp_link("count", 1, "net1", 8), tcx_link("shape", "eth0", 10, 9)],
        );
        let running = [a.clone()];
        let dead = BTreeSet::from([LinkKey::of(&a, &a.links[1])]);
        let requested = [request("a", &["count"])];
        let p = plan(&now(&programs, &running, &[], &dead, &requested));
        let ids = |v: &[PodLinkRecord]| v.iter().map(|l| l.link.link_id).collect::<Vec<_>>();
        assert_eq!(ids(&p.pods[0].keep), [7]);
        assert_eq!(ids(&p.pods[0].detach), [8, 9], "the dead link and the unnamed program's");
        assert_eq!(hooks(&p.pods[0]), vec![(0, 1, None)], "the dead hook is attached again");
    }

    #[test]
    fn a_failed_pod_is_tried_again_for_what_it_lacks() {
        let (programs, none) = (programs(), BTreeSet::new());
        let mut a = record("a", &["count"], vec![xdp_link("count", 0, "eth0", 7)]);
        a.failure = Some(PodFailure { reason: "InterfaceNotFound".into(), message: "net1".into() });
        let running = [a];
        let p = plan(&now(&programs, &running, &[], &none, &[request("a", &["count"])]));
        assert_eq!(hooks(&p.pods[0]), vec![(0, 1, None)]);
        assert_eq!(p.pods[0].keep.len(), 1);
    }

    #[test]
    fn a_new_revision_takes_over_the_links_it_can() {
        let programs = programs();
        let old = record(
            "a",
            &["count", "shape"],
            vec![xdp_link("renamed", 0, "eth0", 7), xdp_link("count", 1, "net1", 8), tcx_link("shape", "eth0", 20, 9)],
        );
        let gone = record("z", &["count"], vec![xdp_link("count", 0, "eth0", 11)]);
        let previous = [old.clone(), gone];
        let dead = BTreeSet::from([LinkKey::of(&old, &old.links[1])]);
        let requested = [request("a", &["count", "shape"])];
        let p = plan(&now(&programs, &[], &previous, &dead, &requested));
        // XDP: the interface's link whatever the function; a dead one is not; TCX only on
        // the same priority (20 -> 10: attached beside it, the old one goes with its revision).
        assert_eq!(hooks(&p.pods[0]), vec![(0, 0, Some(7)), (0, 1, None), (1, 0, None)]);
        assert!(p.dropped.is_empty(), "the previous revision's pods go with it, not by the plan");
        let same_priority = [record("a", &["shape"], vec![tcx_link("shape", "eth0", 10, 9)])];
        let p = plan(&now(&programs, &[], &same_priority, &BTreeSet::new(), &[request("a", &["shape"])]));
        assert_eq!(hooks(&p.pods[0]), vec![(1, 0, Some(9))]);
    }

    #[test]
    fn clsact_filters_are_never_taken_over() {
        let programs = programs();
        let filter = PodLinkRecord {
            program: "shape".into(),
            index: 0,
            link: LinkRecord {
                hook: "eth0".into(),
                link_id: 0,
                kind: LinkKind::TcNetlink {
                    interface: "eth0".into(),
                    direction: Direction::Egress,
                    priority: 10,
                    handle: 1,
                },
            },
            container: None,
        };
        let previous = [record("a", &["shape"], vec![filter])];
        let p = plan(&now(&programs, &[], &previous, &BTreeSet::new(), &[request("a", &["shape"])]));
        assert_eq!(hooks(&p.pods[0]), vec![(1, 0, None)]);
    }

    #[test]
    fn uprobes_go_in_every_container_and_a_stopped_one_is_probed_again() {
        let (programs, none) = (programs(), BTreeSet::new());
        let p = plan(&now(&programs, &[], &[], &none, &[request("a", &["probe"])]));
        let places: Vec<(usize, &str)> = p.pods[0].attach.iter().map(|h| (h.index, h.place.as_str())).collect();
        assert_eq!(places, [(0, "app"), (1, "sidecar")], "every container, by its place in the pod");
        let mut app = xdp_link("probe", 0, "app", 7);
        app.container = Some("c1".into());
        let mut sidecar = xdp_link("probe", 1, "sidecar", 8);
        sidecar.container = Some("c2".into());
        let a = record("a", &["probe"], vec![app, sidecar]);
        let running = [a.clone()];
        let p = plan(&now(&programs, &running, &[], &none, &[request("a", &["probe"])]));
        assert!(p.is_noop(), "both containers probed: nothing to do");
        // The sidecar restarted: its probe is dead (its container went) and it is probed again.
        let dead = BTreeSet::from([LinkKey::of(&a, &a.links[1])]);
        let p = plan(&now(&programs, &running, &[], &dead, &[request("a", &["probe"])]));
        assert_eq!(p.pods[0].detach.iter().map(|l| l.link.link_id).collect::<Vec<_>>(), [8]);
        assert_eq!(hooks(&p.pods[0]), vec![(2, 1, None)], "never taken over: a new probe");
    }
}
