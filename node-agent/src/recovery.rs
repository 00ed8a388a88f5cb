//! Start-up: adopt what a previous agent process left in bpffs, and remove what no
//! owner claims (an apply that was interrupted, a revision left half-replaced, pins
//! without a record, records without pins).

use std::collections::BTreeSet;

use crds::names::OwnerUid;

use crate::attach::{self, Replaced, SwappedHook};
use crate::manager::Manager;
use crate::store::{LinkKind, OwnerRecord};

/// What recovery did, for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub adopted: Vec<String>,
    pub removed_owners: Vec<String>,
    pub removed_revisions: Vec<String>,
    pub relinked: usize,
    /// Owners whose record was unusable: pins kept, reported Degraded.
    pub set_aside: Vec<String>,
    /// clsact filters left by an apply that never committed (they have no pin).
    pub removed_filters: usize,
    /// Links inside pods pinned under an adopted revision that its record does not claim
    /// (an Apply that died between attaching in pods and recording them).
    pub removed_pod_links: usize,
}

/// Program ids pinned anywhere below `dir` (a revision or owner directory about to go).
fn pinned_program_ids(dir: &std::path::Path, out: &mut BTreeSet<u32>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let path = e.path();
        if path.is_dir() {
            pinned_program_ids(&path, out);
        } else if path.parent().and_then(|p| p.file_name()).is_some_and(|n| n == "progs")
            && let Ok(id) = crate::kernel::pinned_program_id(&path)
        {
            out.insert(id);
        }
    }
}

/// Remove every clsact filter that runs one of `programs`, on every interface.
fn remove_filters_of(programs: &BTreeSet<u32>) -> usize {
    if programs.is_empty() {
        return 0;
    }
    let mut n = 0;
    for (iface, idx) in crate::kernel::interfaces() {
        for direction in [crds::program::Direction::Ingress, crds::program::Direction::Egress] {
            let Ok(filters) = crate::netlink::bpf_filters(idx, direction) else { continue };
            for f in filters.iter().filter(|f| f.program_id.is_some_and(|id| programs.contains(&id))) {
                if attach::detach_tc_netlink(&iface, direction, f.priority, f.handle).is_ok() {
                    tracing::warn!(interface = %iface, ?direction, priority = f.priority, "removed a clsact filter no record claims");
                    n += 1;
                }
            }
        }
    }
    n
}

pub fn adopt(manager: &Manager) -> anyhow::Result<Recovered> {
    let layout = manager.layout().clone();
    let mut out = Recovered::default();
    // What goes, and the programs pinned in it: nothing is unpinned before the clsact
    // filters running those programs are gone, since a filter has no pin of its own and
    // the pins are how a later start (after a crash here) still finds it.
    let mut stray_programs = BTreeSet::new();
    let mut doomed = Vec::new();
    let mut forgotten = Vec::new();
    let mut unrecorded = Vec::new();
    let loaded = manager.store().load_all()?;
    let records = loaded.records;
    let mut claimed = BTreeSet::new();
    // Owners whose record is unusable keep every pin, and say so.
    for s in loaded.set_aside {
        claimed.insert(s.uid.to_string());
        out.set_aside.push(s.uid.to_string());
        manager.adopt_set_aside(&s.uid, s.reason);
    }
    for record in records {
        let Ok(uid) = OwnerUid::new(&record.uid) else { continue };
        if !layout.owner_dir(&uid).is_dir() || !record.programs.iter().all(|p| p.pin.exists()) {
            // The pins are gone (bpffs remounted, someone removed them): nothing to adopt.
            tracing::warn!(uid = %uid, "owner record without its pins; forgetting it");
            pinned_program_ids(&layout.owner_dir(&uid), &mut stray_programs);
            claimed.insert(uid.to_string());
            out.removed_owners.push(uid.to_string());
            forgotten.push((uid, record));
            continue;
        }
        // Revision directories other than the recorded one are unfinished applies.
        for entry in std::fs::read_dir(layout.owner_dir(&uid))?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name == "maps" || name == record.revision {
                continue;
            }
            // A directory is an unfinished revision; anything else is a stray pin.
            pinned_program_ids(&entry.path(), &mut stray_programs);
            doomed.push(entry.path());
            out.removed_revisions.push(format!("{uid}/{name}"));
        }
        out.relinked += relink(&record);
        out.removed_pod_links += sweep_pods(&layout, &uid, &record);
        // Recreated maps of a revision committed just before the agent died.
        if let Some(rev) = crds::revision::Revision::parse(&record.revision) {
            match crate::maps::promote_staged(&layout, &uid, &rev) {
                Ok(moved) if !moved.is_empty() => tracing::info!(uid = %uid, ?moved, "recreated maps moved into place"),
                Ok(_) => {}
                Err(e) => tracing::error!(uid = %uid, error = %e, "cannot move recreated maps into place"),
            }
        }
        crate::fault::point("recovery-after-relink", uid.as_str());
        claimed.insert(uid.to_string());
        out.adopted.push(uid.to_string());
        manager.adopt(record);
    }
    crate::fault::point("recovery-before-sweep", "all");
    // Whatever nobody claims: an owner directory, or a pin left directly under the root.
    if let Ok(dir) = std::fs::read_dir(layout.root()) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if claimed.contains(&name) {
                continue;
            }
            pinned_program_ids(&entry.path(), &mut stray_programs);
            doomed.push(entry.path());
            if let Ok(uid) = OwnerUid::new(&name) {
                unrecorded.push(uid);
            }
            out.removed_owners.push(name);
        }
    }
    out.removed_filters = remove_filters_of(&stray_programs);
    crate::fault::point("recovery-before-unpin", "all");
    for path in doomed {
        let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
    for (uid, record) in forgotten {
        manager.remove_blocking(&uid, Some(&record)).ok();
    }
    for uid in unrecorded {
        let _ = manager.store().delete(&uid);
    }
    tracing::info!(?out, "recovered state from bpffs");
    Ok(out)
}

/// Detach and unpin every link under the record's `pods/` directory that no pod of the
/// record claims: pods it does not name go whole, and a named pod keeps only its recorded
/// links. Returns how many links went.
fn sweep_pods(layout: &crds::pins::PinLayout, uid: &OwnerUid, record: &OwnerRecord) -> usize {
    let Some(rev) = crds::revision::Revision::parse(&record.revision) else { return 0 };
    let claimed: BTreeSet<std::path::PathBuf> = record
        .pods
        .iter()
        .flat_map(|p| &p.links)
        .filter_map(|l| l.link.kind.pin().map(std::path::Path::to_path_buf))
        .collect();
    let mut pins = Vec::new();
    files_under(&layout.pods_dir(uid, &rev), &mut pins);
    let mut n = 0;
    for pin in pins.into_iter().filter(|p| !claimed.contains(p)) {
        match (attach::pod::LinkPin { path: pin.clone(), link_id: 0 }).detach() {
            Ok(()) => n += 1,
            Err(e) => tracing::warn!(pin = %pin.display(), error = %e, "cannot remove a pod link no record claims"),
        }
    }
    // Directories of pods the record does not name, now empty.
    if let Ok(rd) = std::fs::read_dir(layout.pods_dir(uid, &rev)) {
        for pod in rd.flatten().filter(|e| !record.pods.iter().any(|p| e.file_name() == p.uid.as_str())) {
            let _ = std::fs::remove_dir_all(pod.path());
        }
    }
    if n > 0 {
        tracing::warn!(uid = %uid, links = n, "removed links in pods that no record claims");
    }
    n
}

/// Every file below `dir` (pins), depth first.
fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let path = e.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// A hook taken over in place by a new revision whose apply never committed (an XDP,
/// TCX or cgroup link, a clsact filter) still runs the uncommitted program: point it
/// back at the recorded one.
fn relink(record: &OwnerRecord) -> usize {
    let mut n = 0;
    for p in &record.programs {
        for l in &p.links {
            let (running, hook) = match &l.kind {
                LinkKind::Pinned { path } | LinkKind::Tcx { path, .. } => (
                    crate::kernel::pinned_link(path).ok().map(|k| k.program_id),
                    SwappedHook::Link { link_pin: path.clone() },
                ),
                LinkKind::TcNetlink { interface, direction, priority, handle } => {
                    let running = crate::kernel::ifindex(interface)
                        .and_then(|idx| crate::netlink::bpf_filters(idx, *direction).ok())
                        .and_then(|fs| fs.into_iter().find(|f| f.priority == *priority && f.handle == *handle))
                        .and_then(|f| f.program_id);
                    let hook = SwappedHook::TcFilter {
                        interface: interface.clone(),
                        direction: *direction,
                        priority: *priority,
                        handle: *handle,
                    };
                    (running, hook)
                }
            };
            if running.is_some_and(|id| id != p.program_id) {
                let r = Replaced { hook, old_program_pin: p.pin.clone() };
                match attach::restore(&r) {
                    Ok(()) => n += 1,
                    Err(e) => {
                        tracing::error!(hook = %l.hook, error = %e, "cannot re-point a hook at the recorded program")
                    }
                }
            }
        }
    }
    n
}
