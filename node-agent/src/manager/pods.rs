//! Carrying out what `pods::plan` decided: which recorded links are dead (read from the
//! kernel), where the pods to attach in are (asked of the runtime, before any kernel
//! work), then per pod: detach what goes, attach what is missing (taking over the replaced
//! revision's links in place), and record the outcome. Nothing here decides.
//!
//! Pods are independent of one another and of the owner: a pod that is gone, not started
//! or missing an interface is recorded with why, and the Apply goes on. Pods are worked on
//! a few at a time (each attach waits in the kernel for an RCU grace period, and a pod's
//! namespace is entered on a thread of its own).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crds::NodeProgramStatus;
use crds::names::{InterfaceName, OwnerUid, PodUid, ProgramName};
use crds::revision::Revision;
use crds::validate::ValidProgram;

use super::{ApplyInput, ChangeKind, Manager};
use crate::attach::TcPeer;
use crate::attach::container::ContainerRoot;
use crate::attach::in_pod::{self, PodAttach, TakeOver};
use crate::attach::netns::PodNetns;
use crate::attach::pod::{PlaceKind, PodError};
use crate::error::{AgentError, Reason, Result};
use crate::pods::plan::{self, HookStep, LinkKey, PodPlan, PodSteps, PodsNow};
use crate::pods::resolve::{Located, running_container};
use crate::pods::{InPodProgram, PodHook, PodRequest, failure, in_pod_programs};
use crate::store::{LinkKind, OwnerRecord, PodLinkRecord, PodRecord};

/// Pods worked on at once.
const PARALLEL_PODS: usize = 8;

/// The pod part of one Apply, planned and with the pods to attach in found, before any
/// kernel work.
pub(super) struct PodWork {
    pub programs: Vec<InPodProgram>,
    pub plan: PodPlan,
    /// Where each pod with hooks to attach is.
    pub places: BTreeMap<PodUid, Located>,
}

impl PodWork {
    pub fn is_noop(&self) -> bool {
        self.plan.is_noop()
    }
}

/// Where one pod's links of one revision go.
struct PodCtx<'a> {
    owner: &'a OwnerUid,
    revision: &'a Revision,
    record: &'a OwnerRecord,
    previous: Option<&'a OwnerRecord>,
    programs: &'a [InPodProgram],
}

impl Manager {
    /// Plan the pods of `input` against what runs: `running` is the record of the same
    /// revision (an Apply that loads nothing), `previous` the one a load replaces. Then find
    /// the network namespace of every pod with something to attach.
    pub(super) async fn prepare_pods(
        &self,
        input: &ApplyInput,
        running: Option<&OwnerRecord>,
        previous: Option<&OwnerRecord>,
    ) -> PodWork {
        self.plan_pods(&input.programs, &input.pods, running, previous, BTreeSet::new()).await
    }

    /// `dead`: links found dead beyond what the kernel shows (probes of stopped containers).
    async fn plan_pods(
        &self,
        programs: &[ValidProgram],
        requested: &[PodRequest],
        running: Option<&OwnerRecord>,
        previous: Option<&OwnerRecord>,
        mut dead: BTreeSet<LinkKey>,
    ) -> PodWork {
        let programs = in_pod_programs(programs);
        let recorded = |r: Option<&OwnerRecord>| r.map(|r| r.pods.clone()).unwrap_or_default();
        let (running_pods, previous_pods) = (recorded(running), recorded(previous));
        for r in [running, previous].into_iter().flatten() {
            dead.extend(dead_links(r));
        }
        let now =
            PodsNow { programs: &programs, running: &running_pods, previous: &previous_pods, dead: &dead, requested };
        let plan = plan::plan(&now);
        let probes = |steps: &PodSteps| steps.attach.iter().any(|h| !programs[h.program].hook.is_network());
        let to_locate = plan.pods.iter().filter(|p| !p.attach.is_empty()).map(|p| (&p.pod, probes(p)));
        let places = self.pod_resolver.locate(to_locate).await;
        PodWork { programs, plan, places }
    }

    /// Carry out `work` for the revision `record` runs (committed), `previous` being the
    /// revision it replaced (whose pod links are taken over where planned). Returns the
    /// record with its pods as they stand now, saved when they changed. A record that
    /// cannot be saved is logged, not fatal: a restarted agent then finds pod pins no
    /// record claims and removes them, and the next Apply attaches those pods again.
    pub(super) fn carry_out_pods(
        &self,
        record: &OwnerRecord,
        previous: Option<&OwnerRecord>,
        work: &PodWork,
    ) -> OwnerRecord {
        let (Ok(owner), Some(revision)) = (OwnerUid::new(&record.uid), Revision::parse(&record.revision)) else {
            tracing::error!(uid = %record.uid, "owner record names no valid owner or revision; pods left as they are");
            return record.clone();
        };
        let ctx = PodCtx { owner: &owner, revision: &revision, record, previous, programs: &work.programs };
        for gone in &work.plan.dropped {
            self.drop_pod(&ctx, gone);
        }
        let peers = self.pod_tc_peers();
        let pods = in_parallel(&work.plan.pods, |steps| {
            let located = work.places.get(&steps.pod.uid);
            let peers = peers.get(steps.pod.uid.as_str()).map(Vec::as_slice).unwrap_or_default();
            self.sync_pod(&ctx, steps, located, peers)
        });
        crate::fault::point("pods-after-attach", &record.uid);
        let mut updated = record.clone();
        updated.pods = pods;
        if updated.pods != record.pods
            && let Err(e) = self.store.save(&updated)
        {
            tracing::error!(owner = %record.name, error = %e, "cannot write owner record with its pods");
        }
        updated
    }

    /// Bring the pods of the revision that runs to what `pods` planned. Changed: what is
    /// reported of the pods (attached, detached, or why not) is not what it was; then Watch
    /// says so with `why`.
    pub(super) async fn sync_pods(
        self: Arc<Self>,
        uid: &str,
        pods: PodWork,
        why: &str,
    ) -> Result<(NodeProgramStatus, bool)> {
        let Some(mut entry) = self.entry(uid).filter(|e| e.record.is_some()) else {
            return Ok((self.state_or_bare(uid), false));
        };
        let record = entry.record.clone().expect("filtered on a record");
        let this = Arc::clone(&self);
        let rec = record.clone();
        let updated = tokio::task::spawn_blocking(move || this.carry_out_pods(&rec, None, &pods))
            .await
            .map_err(|e| AgentError::internal(format!("pod task failed: {e}")))?;
        let reported = |r: &OwnerRecord| r.pods.iter().map(crate::pods::attachment).collect::<Vec<_>>();
        let changed = reported(&updated) != reported(&record);
        entry.record = Some(updated);
        self.set_entry(uid, Some(entry));
        let state = self.state_or_bare(uid);
        if changed {
            tracing::info!(uid = %uid, pods = state.pods.len(), "{why}");
            self.emit(ChangeKind::Updated, state.clone(), why.into());
        }
        Ok((state, changed))
    }

    /// Pods whose links died since they were made, of every owner not busy: the pod
    /// stopped (its namespace went, and its interfaces with it), its sandbox was made
    /// again (a new namespace), or a probed container stopped (the runtime no longer
    /// lists it running). Each such owner's pods are brought back to its record as an
    /// Apply of the same revision and pods would: the dead links go (nothing left of them
    /// in bpffs), the pod is looked up again and attached in its new namespace or its
    /// restarted container, or reported gone (TargetNotFound); Watch says so. With
    /// `retry`, pods that found nothing to attach to before (TargetNotFound: not started,
    /// a container not running yet) are tried again too; other failures wait for the next
    /// Apply.
    pub async fn heal_pods(self: &Arc<Self>, retry: bool) {
        let owners: Vec<(String, OwnerRecord)> = {
            let map = self.entries.read().unwrap_or_else(|p| p.into_inner());
            map.iter()
                .filter_map(|(uid, e)| e.record.clone().map(|r| (uid.clone(), r)))
                .filter(|(_, r)| !r.pods.is_empty())
                .collect()
        };
        let probes_containers =
            owners.iter().any(|(_, r)| r.pods.iter().any(|p| p.links.iter().any(|l| l.container.is_some())));
        // One question for every owner: which containers run. Unanswered, none is judged.
        let running = match probes_containers {
            true => self.pod_resolver.running_containers().await.ok(),
            false => None,
        };
        for (uid, record) in owners {
            let stopped = running.as_ref().map(|r| stopped_containers(&record, r)).unwrap_or_default();
            let waiting = retry
                && record
                    .pods
                    .iter()
                    .any(|p| p.failure.as_ref().is_some_and(|f| f.reason == Reason::TargetNotFound.as_str()));
            // Without `retry` (the frequent pass), only stopped containers count.
            if stopped.is_empty() && !waiting && (!retry || dead_links(&record).is_empty()) {
                continue;
            }
            let Some(_lock) = self.try_lock_owner(&uid) else { continue };
            // Still the same record under the lock?
            if self.entry(&uid).and_then(|e| e.record).as_ref() != Some(&record) {
                continue;
            }
            let Ok(programs) = crds::validate::validate_programs(&record.spec) else { continue };
            let requested: Vec<PodRequest> = record.pods.iter().filter_map(recorded_request).collect();
            let work = self.plan_pods(&programs, &requested, Some(&record), None, stopped).await;
            if work.is_noop() {
                continue;
            }
            let result = Arc::clone(self).sync_pods(&uid, work, "pod links died: attached again or released").await;
            if let Err(e) = result {
                tracing::warn!(uid = %uid, error = %e, "cannot bring pods back to their record");
            }
        }
    }

    /// One requested pod: detach what goes, then attach what is missing.
    fn sync_pod(&self, ctx: &PodCtx<'_>, steps: &PodSteps, located: Option<&Located>, peers: &[TcPeer]) -> PodRecord {
        let pod = &steps.pod;
        let recorded_netns = steps.netns.as_ref().map(|p| PodNetns::new(p, pod.context()));
        for l in &steps.detach {
            if let Err(e) = in_pod::detach(recorded_netns.as_ref(), &l.link) {
                tracing::warn!(pod = %pod.context(), link = l.link.link_id, error = %e, "cannot detach a link in a pod");
            }
        }
        let mut out = PodRecord {
            uid: pod.uid.to_string(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            programs: pod.programs.iter().map(|p| p.to_string()).collect(),
            containers: pod.containers.clone(),
            netns: steps.netns.clone(),
            links: steps.keep.clone(),
            failure: None,
        };
        // A container name the pod does not have: said once, whatever else attaches.
        for program in ctx.programs.iter().filter(|p| pod.programs.iter().any(|n| n.as_str() == p.name)) {
            let missing = program.missing_in(pod);
            if !missing.is_empty() && out.failure.is_none() {
                let e = AgentError::for_program(
                    Reason::TargetNotFound,
                    &program.name,
                    format!(
                        "{} has no container named {} (its containers: {}): fix containerNames of {}",
                        pod.context(),
                        missing.join(", "),
                        pod.containers.join(", "),
                        program.name
                    ),
                );
                out.failure = Some(failure(&e));
            }
        }
        if steps.attach.is_empty() {
            self.tidy_pod_dir(ctx, &pod.uid);
            return out;
        }
        let Some(located) = located else {
            out.failure = Some(failure(&AgentError::internal(format!("{} was not looked up", pod.context()))));
            return out;
        };
        let (net, probes): (Vec<&HookStep>, Vec<&HookStep>) =
            steps.attach.iter().partition(|h| ctx.programs[h.program].hook.is_network());
        for step in probes {
            let program = &ctx.programs[step.program];
            match self.attach_in_container(ctx, pod, program, step, &located.containers) {
                Ok(link) => out.links.push(link),
                Err(e) => {
                    tracing::info!(pod = %pod.context(), program = %program.name, error = %e, "not probed in container");
                    out.failure.get_or_insert_with(|| failure(&e));
                }
            }
        }
        if net.is_empty() {
            out.links.sort_by(|a, b| (&a.program, a.index).cmp(&(&b.program, b.index)));
            self.tidy_pod_dir(ctx, &pod.uid);
            return out;
        }
        let path = match &located.netns {
            Ok(path) => path.clone(),
            Err(e) => {
                out.failure = Some(failure(e));
                return out;
            }
        };
        out.netns = Some(path.clone());
        let netns = PodNetns::new(&path, pod.context());
        let mut peers = peers.to_vec();
        for step in net {
            let program = &ctx.programs[step.program];
            match self.attach_hook(ctx, &pod.uid, program, step, &netns, &peers) {
                Ok(link) => {
                    if let LinkKind::Tcx { interface, direction, priority, .. } = &link.kind {
                        let program_id = program_id(ctx.record, &program.name);
                        peers.push(TcPeer {
                            interface: interface.clone(),
                            direction: *direction,
                            priority: *priority,
                            program_id,
                        });
                    }
                    out.links.push(PodLinkRecord {
                        program: program.name.clone(),
                        index: step.index,
                        link,
                        container: None,
                    });
                }
                Err(PodError::Gone(place)) => {
                    // The pod stopped meanwhile: whatever it still has of this owner goes
                    // (its interfaces went, and with them every attachment).
                    for l in std::mem::take(&mut out.links) {
                        let _ = in_pod::detach(Some(&netns), &l.link);
                    }
                    self.tidy_pod_dir(ctx, &pod.uid);
                    out.failure = Some(failure(&PodError::Gone(place).into()));
                    return out;
                }
                Err(PodError::Failed(e)) => {
                    tracing::info!(pod = %pod.context(), program = %program.name, error = %e, "not attached in pod");
                    out.failure.get_or_insert_with(|| failure(&e));
                }
            }
        }
        out.links.sort_by(|a, b| (&a.program, a.index).cmp(&(&b.program, b.index)));
        self.tidy_pod_dir(ctx, &pod.uid);
        out
    }

    /// Where `program`'s link at `index` in pod `pod` is pinned (its directory made), and
    /// the program's own pin.
    fn pod_pins(
        &self,
        ctx: &PodCtx<'_>,
        pod: &PodUid,
        name: &ProgramName,
        index: usize,
    ) -> std::result::Result<(std::path::PathBuf, std::path::PathBuf), AgentError> {
        let program_pin = self.layout.program(ctx.owner, ctx.revision, name);
        let pin = self.layout.pod_link(ctx.owner, ctx.revision, pod, name, index);
        if let Some(dir) = pin.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                AgentError::for_program(
                    Reason::PinFailed,
                    name.as_str(),
                    format!("cannot create {}: {e}", dir.display()),
                )
            })?;
        }
        Ok((program_pin, pin))
    }

    /// Probe `program`'s binary inside the pod's running container `step.place`, pinned
    /// under the revision's pod directory. A container that stopped meanwhile is a
    /// failure of this hook alone (TargetNotFound), tried again when it runs.
    fn attach_in_container(
        &self,
        ctx: &PodCtx<'_>,
        pod: &PodRequest,
        program: &InPodProgram,
        step: &HookStep,
        containers: &std::result::Result<Vec<cri::Container>, AgentError>,
    ) -> std::result::Result<PodLinkRecord, AgentError> {
        let containers = containers.as_ref().map_err(Clone::clone)?;
        let container = running_container(pod, containers, &step.place)?;
        let (PodHook::Uprobe { ret }, Some(probe)) = (program.hook, &program.probe) else {
            return Err(AgentError::internal(format!("{} is not a uprobe", program.name)));
        };
        let name = ProgramName::new(&program.name).map_err(|e| AgentError::internal(e.to_string()))?;
        let rootfs = container.rootfs.as_ref().ok_or_else(|| AgentError::internal("no root file system"))?;
        let context = format!("container {} of {}", step.place, pod.context());
        let gone = |e: PodError| match e {
            PodError::Gone(place) if place.kind() == PlaceKind::ContainerRoot => AgentError::new(
                Reason::TargetNotFound,
                format!("{} stopped while it was being probed: it is probed once it runs again", place.context()),
            ),
            other => other.into(),
        };
        let root = ContainerRoot::open(rootfs, context).map_err(gone)?;
        let (program_pin, pin) = self.pod_pins(ctx, &pod.uid, &name, step.index)?;
        let link = in_pod::attach_probe(&name, &program_pin, ret, probe, &root, &step.place, &pin).map_err(gone)?;
        Ok(PodLinkRecord {
            program: program.name.clone(),
            index: step.index,
            link,
            container: Some(container.id.clone()),
        })
    }

    /// Attach one hook of `program` in the pod's network namespace, pinned under the
    /// revision's pod directory.
    fn attach_hook(
        &self,
        ctx: &PodCtx<'_>,
        pod: &PodUid,
        program: &InPodProgram,
        step: &HookStep,
        netns: &PodNetns,
        peers: &[TcPeer],
    ) -> std::result::Result<crate::store::LinkRecord, PodError> {
        let name = ProgramName::new(&program.name).map_err(|e| AgentError::internal(e.to_string()))?;
        let interface = InterfaceName::new(&step.place).map_err(|e| AgentError::internal(e.to_string()))?;
        let (program_pin, pin) = self.pod_pins(ctx, pod, &name, step.index)?;
        let take_over = step.take_over.as_ref();
        let old_program_pin =
            take_over.and_then(|t| ctx.previous?.programs.iter().find(|p| p.name == t.program).map(|p| p.pin.clone()));
        let take_over = match (take_over.and_then(|t| t.link.kind.pin()), &old_program_pin) {
            (Some(link_pin), Some(old_program_pin)) => Some(TakeOver { link_pin, old_program_pin }),
            _ => None,
        };
        let a = PodAttach {
            program: &name,
            program_pin: &program_pin,
            hook: program.hook,
            interface: &interface,
            tc_backend: self.cfg.tc_backend,
            tc_peers: peers,
        };
        in_pod::attach(&a, netns, &pin, take_over)
    }

    /// A pod no longer requested: every link goes, and its directory.
    fn drop_pod(&self, ctx: &PodCtx<'_>, pod: &PodRecord) {
        let netns = pod.netns.as_ref().map(|p| PodNetns::new(p, format!("pod {}/{}", pod.namespace, pod.name)));
        for l in &pod.links {
            if let Err(e) = in_pod::detach(netns.as_ref(), &l.link) {
                tracing::warn!(pod = %pod.uid, link = l.link.link_id, error = %e, "cannot detach a link in a pod");
            }
        }
        if let Ok(uid) = PodUid::new(&pod.uid) {
            remove_dir(&self.layout.pod_dir(ctx.owner, ctx.revision, &uid));
        }
        tracing::info!(pod = %pod.uid, owner = %ctx.record.name, "detached from a pod no longer requested");
    }

    /// Remove what a pod's directory holds that no link uses: empty program directories,
    /// and the pod's directory once empty.
    fn tidy_pod_dir(&self, ctx: &PodCtx<'_>, pod: &PodUid) {
        let dir = self.layout.pod_dir(ctx.owner, ctx.revision, pod);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(&dir);
        let _ = std::fs::remove_dir(self.layout.pods_dir(ctx.owner, ctx.revision));
    }

    /// bpfleet's TCX links in each pod, of every owner (this one's too): what orders a new
    /// one by priority, as on the node.
    fn pod_tc_peers(&self) -> BTreeMap<String, Vec<TcPeer>> {
        let map = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let mut out: BTreeMap<String, Vec<TcPeer>> = BTreeMap::new();
        for r in map.values().filter_map(|e| e.record.as_ref()) {
            for pod in &r.pods {
                for l in &pod.links {
                    if let LinkKind::Tcx { interface, direction, priority, .. } = &l.link.kind {
                        out.entry(pod.uid.clone()).or_default().push(TcPeer {
                            interface: interface.clone(),
                            direction: *direction,
                            priority: *priority,
                            program_id: program_id(r, &l.program),
                        });
                    }
                }
            }
        }
        out
    }

    /// Detach every pod link of `record` that `successor` did not take over (clsact filters
    /// inside the pod's namespace): before its revision directory goes.
    pub(super) fn detach_revision_pods(&self, record: &OwnerRecord, successor: Option<&OwnerRecord>) {
        let kept: BTreeSet<u32> = successor
            .iter()
            .flat_map(|s| s.pods.iter().flat_map(|p| &p.links))
            .map(|l| l.link.link_id)
            .filter(|id| *id != 0)
            .collect();
        for pod in &record.pods {
            let netns = pod.netns.as_ref().map(|p| PodNetns::new(p, format!("pod {}/{}", pod.namespace, pod.name)));
            for l in pod.links.iter().filter(|l| !kept.contains(&l.link.link_id)) {
                if let Err(e) = in_pod::detach(netns.as_ref(), &l.link) {
                    tracing::warn!(pod = %pod.uid, link = l.link.link_id, error = %e, "cannot detach a link in a pod");
                }
            }
        }
    }
}

/// A recorded pod as the request that made it.
fn recorded_request(p: &PodRecord) -> Option<PodRequest> {
    Some(PodRequest {
        uid: PodUid::new(&p.uid).ok()?,
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        programs: p.programs.iter().filter_map(|n| ProgramName::new(n).ok()).collect(),
        containers: p.containers.clone(),
    })
}

/// The probes of `record` whose container no longer runs (`running`: the ids of those
/// that do).
fn stopped_containers(record: &OwnerRecord, running: &BTreeSet<String>) -> BTreeSet<LinkKey> {
    record
        .pods
        .iter()
        .flat_map(|p| p.links.iter().map(move |l| (p, l)))
        .filter(|(_, l)| l.container.as_ref().is_some_and(|c| !running.contains(c)))
        .map(|(p, l)| LinkKey::of(p, l))
        .collect()
}

/// The kernel id of a record's program, by name (0 when it has none of that name).
fn program_id(record: &OwnerRecord, name: &str) -> u32 {
    record.programs.iter().find(|p| p.name == name).map_or(0, |p| p.program_id)
}

/// The pod links of `record` that no longer work: their pin gone, detached (the pod's
/// interface, or namespace, went), or running another program than the record's. A clsact
/// filter counts as working while its namespace exists (checking more would mean entering
/// every pod).
fn dead_links(record: &OwnerRecord) -> Vec<LinkKey> {
    let mut out = Vec::new();
    for pod in &record.pods {
        for l in &pod.links {
            let works = match &l.link.kind {
                LinkKind::Pinned { path } | LinkKind::Tcx { path, .. } => crate::kernel::pinned_link(path)
                    .is_ok_and(|k| k.ifindex != Some(0) && k.program_id == program_id(record, &l.program)),
                LinkKind::TcNetlink { .. } => pod.netns.as_deref().is_some_and(Path::exists),
            };
            if !works {
                out.push(LinkKey::of(pod, l));
            }
        }
    }
    out
}

/// Run `f` on each item on up to [`PARALLEL_PODS`] threads; the results in the items' order.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_PODS.min(items.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()).expect("every item was worked on"))
        .collect()
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove pod pins");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_work_keeps_the_order() {
        let items: Vec<usize> = (0..50).collect();
        let out = in_parallel(&items, |i| {
            std::thread::sleep(std::time::Duration::from_millis((50 - *i as u64) % 7));
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(in_parallel(&[3], |i| i + 1), vec![4]);
        assert!(in_parallel(&[] as &[u8], |i| *i).is_empty());
    }
}
