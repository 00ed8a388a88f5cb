//! Has the fleet converged? The kernel first (see `e2e::convergence`), then what users
//! read: BpfProgram status, BpfNode entries, each agent's List.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use agent::testing::findings::Findings;
use crds::rollout::Phase;
use crds::{BpfProgram, Health};
use e2e::convergence::{self, Want};
use e2e::env;
use kube::ResourceExt;

use super::{Expect, World};
use crate::NODES;
use crate::plan::Slot;

impl World {
    pub(super) fn wait_converged(
        &mut self,
        expect: &BTreeMap<Slot, Expect>,
        timeout: Duration,
    ) -> (bool, Findings, Duration) {
        let t = Instant::now();
        loop {
            let f = self.check(expect);
            if f.is_clean() {
                return (true, f, t.elapsed());
            }
            if t.elapsed() >= timeout {
                return (false, f, t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// One look at the kernel, bpffs, the agents and the API against `expect`.
    pub(super) fn check(&mut self, expect: &BTreeMap<Slot, Expect>) -> Findings {
        let mut f = Findings::default();
        let wants: Vec<Want> = expect
            .values()
            .filter_map(|e| match e {
                Expect::Absent => None,
                Expect::Runs { uid, variant, revision, .. } => Some(Want {
                    uid: uid.clone(),
                    revision: revision.clone(),
                    function: variant.function().into(),
                    maps: vec![variant.map().into()],
                    links: variant.links(),
                    xdp: variant.interfaces().iter().map(|i| i.to_string()).collect(),
                }),
            })
            .collect();
        let mut desired = BTreeSet::new();
        for i in 0..NODES {
            let node = self.env.node(i);
            let interfaces = self.interfaces(i);
            desired.extend(convergence::check_node(node, interfaces, &wants, &mut self.seen, &mut f));
        }
        let links = NODES * wants.iter().map(|w| w.links).sum::<usize>();
        convergence::check_kernel(&desired, links, &self.seen, &mut f);
        // Ask the API and the agents only once the kernel is right (cheaper, and their
        // view is what a user reads, so it must agree with the kernel's).
        if f.is_clean() {
            self.check_status(expect, &wants, &mut f);
        }
        f
    }

    fn check_status(&mut self, expect: &BTreeMap<Slot, Expect>, wants: &[Want], f: &mut Findings) {
        for (slot, e) in expect {
            let name = &self.slots[slot].name;
            let got = match self.env.cluster.program(name) {
                Ok(p) => p,
                Err(err) => {
                    f.wrong.push(format!("BpfProgram {name}: {err:#}"));
                    continue;
                }
            };
            match (e, got) {
                (Expect::Absent, None) => {}
                (Expect::Absent, Some(p)) => {
                    f.wrong.push(format!("BpfProgram {name} still exists ({})", p.uid().unwrap_or_default()))
                }
                (Expect::Runs { .. }, None) => f.wrong.push(format!("BpfProgram {name} does not exist")),
                (Expect::Runs { status_revision, revision, phase, .. }, Some(p)) => {
                    if let Err(why) = program_status(&p, status_revision, revision, *phase) {
                        f.wrong.push(format!("BpfProgram {name}: {why}"));
                    }
                }
            }
        }
        for i in 0..NODES {
            let node = &self.env.node(i).name;
            match self.env.cluster.bpf_node(node) {
                Ok(Some(b)) => {
                    let entries = b.status.map(|s| s.programs).unwrap_or_default();
                    for e in &entries {
                        self.seen.extend(e.attached.iter().map(|a| u64::from(a.program_id)));
                        match wants.iter().find(|w| w.uid == e.owner_uid) {
                            None => f.wrong.push(format!("BpfNode {node} lists {} ({})", e.owner_uid, e.revision)),
                            Some(w) if w.revision != e.revision || e.health != Health::Healthy => {
                                f.wrong.push(format!(
                                    "BpfNode {node}: {} at {} {:?}, want {} Healthy",
                                    e.owner_uid, e.revision, e.health, w.revision
                                ))
                            }
                            Some(_) => {}
                        }
                    }
                    for w in wants {
                        if !entries.iter().any(|e| e.owner_uid == w.uid) {
                            f.wrong.push(format!("BpfNode {node} has no entry for {}", w.uid));
                        }
                    }
                }
                Ok(None) => f.wrong.push(format!("BpfNode {node} does not exist")),
                Err(e) => f.wrong.push(format!("BpfNode {node}: {e:#}")),
            }
            match self.env.node(i).list() {
                Ok(list) => {
                    let mut got = BTreeSet::new();
                    for o in &list.owners {
                        self.seen.extend(o.attached.iter().map(|a| u64::from(a.program_id)));
                        let uid = o.owner.as_ref().map(|o| o.uid.clone()).unwrap_or_default();
                        let healthy = o.health == proto::v1::Health::Healthy as i32;
                        match wants.iter().find(|w| w.uid == uid) {
                            Some(w) if w.revision == o.revision && healthy => {}
                            _ => {
                                f.wrong.push(format!("agent {node} lists {uid} at {} health {}", o.revision, o.health))
                            }
                        }
                        got.insert(uid);
                    }
                    for w in wants.iter().filter(|w| !got.contains(&w.uid)) {
                        f.wrong.push(format!("agent {node} does not list {}", w.uid));
                    }
                }
                Err(e) => f.wrong.push(format!("agent {node}: List: {e:#}")),
            }
        }
    }
}

/// The status of a program that runs `revision` (status says `status_revision`) in
/// rollout phase `phase`: Ready on every node unless rolled back.
fn program_status(p: &BpfProgram, status_revision: &str, revision: &str, phase: Phase) -> Result<(), String> {
    let s = env::current_status(p)?;
    if s.revision.as_deref() != Some(status_revision) {
        return Err(format!("status.revision {:?}, want {status_revision}", s.revision));
    }
    let r = s.rollout.as_ref().ok_or("no status.rollout")?;
    if r.phase != phase {
        return Err(format!("rollout {:?} ({:?}), want {phase:?}", r.phase, r.message));
    }
    if r.stable_revision.as_deref() != Some(revision) {
        return Err(format!("stableRevision {:?}, want {revision}", r.stable_revision));
    }
    if phase == Phase::Complete {
        env::ready(p, NODES as i32)?;
    }
    Ok(())
}
