//! Carrying out what `apply_plan` decided, with kernel calls: a load (observe what the object and
//! bpffs show, lay the load out with `apply_plan::load`, follow it, commit or roll back), a
//! repair of broken hooks, and the removal of a revision. Nothing here decides.
//!
//! The order of the steps is what crash recovery relies on: the record is saved (the
//! commit) after every hook is attached; recreated maps take their names over and the
//! previous revision goes only after it; a failure undoes the attempt's steps in reverse,
//! then removes its revision directory and the maps it created, and a brand-new owner's
//! directory and record.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crds::names::{MapName, OwnerUid};
use crds::revision::Revision;
use crds::rollout::MapUpgrade;

use super::pods::PodWork;
use super::{ApplyInput, Manager, tcx_peers};
use crate::apply_plan::{self, LoadPlan};
use crate::attach::{self, AttachCtx, Undo};
use crate::elf::{self, MapDef};
use crate::error::{AgentError, Reason, Result};
use crate::maps;
use crate::store::{LinkKind, MapRecord, OwnerRecord};

/// What bpffs shows of the owner before a load.
struct Seen {
    pinned: BTreeMap<String, MapDef>,
    owner_dir_exists: bool,
    revision_dir_exists: bool,
}

impl Manager {
    /// Load and attach `input.revision`: a first apply, an upgrade of `running`, or with
    /// `rebuild` the running revision itself, torn down first.
    pub(super) fn load_blocking(
        &self,
        input: &ApplyInput,
        running: Option<&OwnerRecord>,
        rebuild: bool,
        pods: &PodWork,
    ) -> Result<OwnerRecord> {
        let info = elf::inspect(&input.bytecode)?;
        for p in &input.programs {
            info.check_program(p.name.as_str(), p.attach.program_type())?;
        }
        info.check_globals(&input.globals)?;
        crate::export::check(&input.bytecode, &info.maps, &input.metrics)?;
        if rebuild && let Some(running) = running {
            self.remove_revision(running, None);
        }
        let seen = self.observe(input, &info.maps)?;
        let recreate: BTreeSet<String> =
            input.maps.iter().filter(|m| m.on_upgrade == MapUpgrade::Recreate).map(|m| m.name.clone()).collect();
        let shared = maps::shared::resolve(&self.layout, &input.maps, &input.map_owners, &info.maps, &input.bytecode)?;
        let now = apply_plan::LoadNow {
            running,
            rebuild,
            object: &info.maps,
            pinned: &seen.pinned,
            recreate: &recreate,
            shared: &shared,
            owner_dir_exists: seen.owner_dir_exists,
            revision_dir_exists: seen.revision_dir_exists,
        };
        let staging = maps::staging_dir(&self.layout, &input.uid, &input.revision);
        let plan = apply_plan::load(&now, |n| self.map_pin(&input.uid, n), &staging);
        let records = self.records();
        for step in &plan.maps.steps {
            if let apply_plan::MapStep::Recreate { name, pin, why, .. } = step {
                let change = format!("would be recreated ({why})");
                maps::shared::check_not_used(&records, input.uid.as_str(), name, pin, &change)?;
            }
        }
        for pin in &plan.maps.unused_after_commit {
            let name = pin.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            maps::shared::check_not_used(&records, input.uid.as_str(), &name, pin, "is not in this revision")?;
        }
        let btf = info
            .needs_kernel_btf(input.programs.iter().map(|p| p.attach.program_type()))
            .then(|| crate::loader::kernel_btf().get())
            .flatten();
        self.execute(input, &plan, pods, btf.as_deref())
    }

    /// The owner's pinned maps of the object's names, and which of its directories exist.
    fn observe(&self, input: &ApplyInput, object: &BTreeMap<String, MapDef>) -> Result<Seen> {
        for name in object.keys() {
            MapName::new(name).map_err(|e| AgentError::new(Reason::MalformedElf, e.to_string()))?;
        }
        let mut pinned = BTreeMap::new();
        for name in object.keys() {
            let pin = self.map_pin(&input.uid, name);
            if pin.exists() {
                pinned.insert(name.clone(), maps::pinned_def(&pin, name)?);
            }
        }
        Ok(Seen {
            pinned,
            owner_dir_exists: self.layout.owner_dir(&input.uid).exists(),
            revision_dir_exists: self.layout.revision_dir(&input.uid, &input.revision).exists(),
        })
    }

    /// Where an owner's map of `name` (checked by `observe`) is pinned.
    fn map_pin(&self, owner: &OwnerUid, name: &str) -> std::path::PathBuf {
        self.layout.map(owner, &MapName::new(name).expect("map names are checked before the plan"))
    }

    /// Follow a load's plan: prepare the directories, attach and commit, attach in the
    /// pods (taking over the previous revision's pod links), then finish the upgrade; or
    /// roll the attempt back.
    fn execute(
        &self,
        input: &ApplyInput,
        plan: &LoadPlan<'_>,
        pods: &PodWork,
        btf: Option<&aya::Btf>,
    ) -> Result<OwnerRecord> {
        if plan.clear_revision_dir {
            let _ = std::fs::remove_dir_all(self.layout.revision_dir(&input.uid, &input.revision));
        }
        // Maps are pinned per owner and reused across revisions when compatible.
        create_dir(&self.layout.maps_dir(&input.uid))?;
        if let Some(staging) = &plan.staging {
            create_dir(staging)?;
        }
        let mut undo: Vec<Undo> = Vec::new();
        match self.attach_and_commit(input, plan, btf, &mut undo) {
            Ok(record) => {
                let record = self.carry_out_pods(&record, plan.previous, pods);
                self.finish_upgrade(input, plan, &record);
                Ok(record)
            }
            Err(e) => {
                self.roll_back(input, plan, &undo);
                Err(e)
            }
        }
    }

    /// Load the object, attach every program, and save the record: the commit point, from
    /// which a restarted agent adopts the new revision.
    fn attach_and_commit(
        &self,
        input: &ApplyInput,
        plan: &LoadPlan<'_>,
        btf: Option<&aya::Btf>,
        undo: &mut Vec<Undo>,
    ) -> Result<OwnerRecord> {
        let mut ebpf = self.loader.load(&input.bytecode, &input.globals, &plan.load_pins(), btf)?;
        let mut peers = self.tc_peers();
        let mut programs = Vec::new();
        for p in &input.programs {
            let ctx = AttachCtx {
                layout: &self.layout,
                owner: &input.uid,
                revision: &input.revision,
                btf,
                previous: plan.previous,
                tc_peers: &peers,
                tc_backend: self.cfg.tc_backend,
            };
            let record = attach::load_and_attach(&mut ebpf, p, &ctx, undo)?;
            // Later programs of this apply are ordered against this one too.
            peers.extend(tcx_peers(&record));
            programs.push(record);
        }
        let record = OwnerRecord {
            schema: crate::store::SCHEMA_VERSION,
            uid: input.uid.to_string(),
            name: input.name.clone(),
            revision: input.revision.to_string(),
            spec: input.spec.clone(),
            programs,
            maps: plan
                .maps
                .steps
                .iter()
                .map(|s| MapRecord { name: s.name().to_string(), pin_path: s.pin().clone() })
                .collect(),
            bytecode_digest: Some(crds::revision::Sha256Digest::of(&input.bytecode).to_string()),
            maps_recreated: plan.maps.recreated(),
            metrics: input.metrics.clone(),
            // Committed without pods: they are attached after the commit (see `execute`).
            pods: Vec::new(),
        };
        crate::fault::point("after-attach", input.uid.as_str());
        self.store.save(&record).map_err(|e| AgentError::internal(format!("cannot write owner record: {e}")))?;
        Ok(record)
    }

    /// After the commit: recreated maps take their names over from the previous
    /// revision's, then the previous revision and the maps it alone used go.
    fn finish_upgrade(&self, input: &ApplyInput, plan: &LoadPlan<'_>, record: &OwnerRecord) {
        if let Err(e) = maps::promote_staged(&self.layout, &input.uid, &input.revision) {
            tracing::error!(owner = %input.name, error = %e, "cannot move recreated maps into place");
        }
        if let Some(previous) = plan.previous {
            crate::fault::point("after-commit", input.uid.as_str());
            self.remove_revision(previous, Some(record));
            for unused in &plan.maps.unused_after_commit {
                let _ = std::fs::remove_file(unused);
            }
        }
    }

    /// Undo a failed attempt: its steps in reverse, then its revision directory and the
    /// maps it created, and for a brand-new owner the owner's directory and record.
    fn roll_back(&self, input: &ApplyInput, plan: &LoadPlan<'_>, undo: &[Undo]) {
        for u in undo.iter().rev() {
            u.run();
        }
        let _ = std::fs::remove_dir_all(self.layout.revision_dir(&input.uid, &input.revision));
        for m in plan.created_maps() {
            let _ = std::fs::remove_file(m);
        }
        if plan.fresh_owner {
            let _ = std::fs::remove_dir_all(self.layout.owner_dir(&input.uid));
            let _ = self.store.delete(&input.uid);
        }
    }

    /// Re-attach the broken hooks of a running revision from its pinned programs, and
    /// nothing else: the links that work keep their ids. `problems` are of hooks (a
    /// program gone is a rebuild, see `apply_plan::plan`).
    pub(super) fn repair_blocking(
        &self,
        record: &OwnerRecord,
        problems: &[crate::health::Problem],
    ) -> Result<OwnerRecord> {
        let valid = crds::validate::validate_programs(&record.spec)
            .map_err(|e| AgentError::internal(format!("the recorded spec no longer validates: {e}")))?;
        let peers = self.tc_peers();
        let mut repaired = record.clone();
        for problem in problems {
            let Some(li) = problem.link else { continue };
            let program = &record.programs[problem.program];
            let Some(spec) = valid.iter().find(|v| v.name.as_str() == program.name) else {
                return Err(AgentError::internal(format!("{} is not in the recorded spec", program.name)));
            };
            let link = &program.links[li];
            let new = attach::reattach(program, spec, li, link.kind.pin(), &peers)?;
            // A stale filter still there (another program) goes; the kernel may have
            // handed the new filter the old one's handle, which stays.
            if let LinkKind::TcNetlink { interface, direction, priority, handle } = &link.kind
                && new.kind != link.kind
            {
                let _ = attach::detach_tc_netlink(interface, *direction, *priority, *handle);
            }
            repaired.programs[problem.program].links[li] = new;
        }
        self.store.save(&repaired).map_err(|e| AgentError::internal(format!("cannot write owner record: {e}")))?;
        Ok(repaired)
    }

    /// Detach and unpin one revision of an owner (its maps stay), in pods too. Clsact
    /// filters and pod links its `successor` took over in place (same hook and handle, or
    /// link) stay: they run the successor.
    pub(super) fn remove_revision(&self, record: &OwnerRecord, successor: Option<&OwnerRecord>) {
        self.detach_revision_pods(record, successor);
        let taken_over = |kind: &LinkKind| {
            successor.is_some_and(|s| s.programs.iter().flat_map(|p| &p.links).any(|l| &l.kind == kind))
        };
        for p in &record.programs {
            for l in &p.links {
                if taken_over(&l.kind) {
                    continue;
                }
                if let LinkKind::TcNetlink { interface, direction, priority, handle } = &l.kind {
                    let _ = attach::detach_tc_netlink(interface, *direction, *priority, *handle);
                }
            }
        }
        if let (Ok(uid), Some(rev)) = (OwnerUid::new(&record.uid), Revision::parse(&record.revision)) {
            let dir = self.layout.revision_dir(&uid, &rev);
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove revision pins");
            }
        }
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| AgentError::new(Reason::PinFailed, format!("cannot create {}: {e}", dir.display())))
}
