//! What an Apply must do, decided from plain data: what the owner's record says runs,
//! what the request asks, and what the kernel shows (health problems, pinned maps, the
//! owner's directories). Pure: `plan` picks the kind of work, `load` lays a load out step
//! by step, and `manager/execute.rs` carries that out with kernel calls and rolls it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::elf::MapDef;
use crate::health::{Problem, ProblemKind};
use crate::store::OwnerRecord;

/// What the agent knows of an owner when a request for it arrives.
#[derive(Clone, Copy, Debug)]
pub struct Current<'a> {
    /// The committed revision that runs, if any.
    pub record: Option<&'a OwnerRecord>,
    /// Why the owner's record was set aside at start-up, if it was.
    pub set_aside: Option<&'a str>,
    /// What the kernel shows wrong with `record` (see `health::check`).
    pub problems: &'a [Problem],
}

/// What one Apply of `revision` does: the kind of work (a load is laid out further by
/// [`load`] once the object and bpffs are read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyPlan {
    /// The owner's record is unusable: change nothing, say why.
    Refuse(String),
    /// The revision runs, healthy: touch nothing (a revert to it after a newer revision
    /// failed costs nothing).
    Keep,
    /// The revision runs but some hooks broke: re-attach those from the pinned
    /// programs, nothing else.
    Repair(Vec<Problem>),
    /// Load and attach the revision: a first apply, an upgrade (the previous revision
    /// is replaced after the new one is attached), or the running revision with a
    /// program gone from bpffs (rebuilt from scratch: `rebuild`).
    Load { rebuild: bool },
}

/// What an Apply of `revision` does.
pub fn plan(current: &Current<'_>, revision: &str) -> ApplyPlan {
    if let Some(why) = current.set_aside {
        return ApplyPlan::Refuse(why.to_string());
    }
    match current.record {
        Some(r) if r.revision == revision => {
            if current.problems.is_empty() {
                ApplyPlan::Keep
            } else if current.problems.iter().any(|p| p.kind == ProblemKind::ProgramGone) {
                ApplyPlan::Load { rebuild: true }
            } else {
                ApplyPlan::Repair(current.problems.to_vec())
            }
        }
        _ => ApplyPlan::Load { rebuild: false },
    }
}

/// What a load starts from: the plan's kind of load, and what the object and bpffs show (read
/// after the rebuild's teardown, before anything of the new revision is made).
#[derive(Clone, Copy, Debug)]
pub struct LoadNow<'a> {
    /// The committed revision that runs, if any.
    pub running: Option<&'a OwnerRecord>,
    /// `ApplyPlan::Load { rebuild }`: the running revision is the one applied, torn down
    /// (a program of it was gone) and loaded afresh.
    pub rebuild: bool,
    /// The object's maps and their shapes, by name.
    pub object: &'a BTreeMap<String, MapDef>,
    /// The owner's pinned maps of those names, and their shapes.
    pub pinned: &'a BTreeMap<String, MapDef>,
    /// Maps with `onUpgrade: Recreate`.
    pub recreate: &'a BTreeSet<String>,
    /// Maps used from another owner (`spec.maps[].from`), checked: where they are pinned.
    pub shared: &'a BTreeMap<String, PathBuf>,
    /// The owner's directory exists: it runs, or ran, something.
    pub owner_dir_exists: bool,
    /// The revision's directory exists already.
    pub revision_dir_exists: bool,
}

/// How one load is carried out, and undone: the executor follows it and decides nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadPlan<'a> {
    /// The revision that runs until the commit and is removed after it (an upgrade). None
    /// for a first apply and for a rebuild (its revision was torn down already).
    pub previous: Option<&'a OwnerRecord>,
    /// Each map of the object, and the previous revision's pins unused after the commit.
    pub maps: MapPlan,
    /// Remove the revision's directory before loading: left by an interrupted attempt
    /// (or the torn-down revision's, already gone), nothing claims it.
    pub clear_revision_dir: bool,
    /// Where recreated maps wait for the commit, when a map is recreated: made before the load.
    pub staging: Option<PathBuf>,
    /// No owner directory before this apply: a failure removes the owner entirely (its
    /// directory and record). An owner that ran something before (also one whose revision
    /// was being rebuilt) keeps its maps and record: they are not this attempt's to throw away.
    pub fresh_owner: bool,
}

impl LoadPlan<'_> {
    /// Where the load finds (or puts) each map, by name.
    pub fn load_pins(&self) -> BTreeMap<String, PathBuf> {
        self.maps.steps.iter().map(|s| (s.name().to_string(), s.load_pin().clone())).collect()
    }

    /// The pins this load creates: a failed apply removes them.
    pub fn created_maps(&self) -> Vec<PathBuf> {
        self.maps
            .steps
            .iter()
            .filter_map(|s| match s {
                MapStep::Create { pin, .. } => Some(pin.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Lay out a load: what replaces what, which maps are reused, created or recreated, what
/// is cleared first and what a failure throws away. `pin_of` names a map's pin,
/// `staging_dir` the new revision's directory for recreated maps.
pub fn load<'a>(now: &LoadNow<'a>, pin_of: impl Fn(&str) -> PathBuf, staging_dir: &Path) -> LoadPlan<'a> {
    let previous = if now.rebuild { None } else { now.running };
    let maps_now =
        MapsNow { object: now.object, pinned: now.pinned, recreate: now.recreate, shared: now.shared, previous };
    let maps = maps(&maps_now, pin_of, |n| staging_dir.join(n));
    let staging = maps.steps.iter().any(|s| matches!(s, MapStep::Recreate { .. })).then(|| staging_dir.to_path_buf());
    LoadPlan {
        previous,
        maps,
        clear_revision_dir: now.revision_dir_exists,
        staging,
        fresh_owner: !now.owner_dir_exists,
    }
}

/// One map of the object, and where it is pinned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapStep {
    /// Pinned already (by an earlier revision) with the same shape: reuse it, contents
    /// and all (a counter keeps counting, across upgrades and rollbacks alike).
    Reuse { name: String, pin: PathBuf },
    /// Not pinned yet: the load creates and pins it (and a failed apply removes it).
    Create { name: String, pin: PathBuf },
    /// Pinned, but of another shape or with `onUpgrade: Recreate`: the load creates a
    /// fresh map at `staging` (in the new revision's directory), which replaces the pin
    /// at `pin` only when the new revision is committed. Until then the running revision
    /// keeps its map; a failed apply leaves it untouched.
    Recreate { name: String, pin: PathBuf, staging: PathBuf, why: String },
    /// Another owner's map (`spec.maps[].from`), pinned at `pin` in its directory: the load
    /// uses it; this owner never creates, moves or removes it.
    Shared { name: String, pin: PathBuf },
}

impl MapStep {
    /// Where the load finds (or puts) the map.
    pub fn load_pin(&self) -> &PathBuf {
        match self {
            MapStep::Reuse { pin, .. } | MapStep::Create { pin, .. } | MapStep::Shared { pin, .. } => pin,
            MapStep::Recreate { staging, .. } => staging,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            MapStep::Reuse { name, .. }
            | MapStep::Create { name, .. }
            | MapStep::Recreate { name, .. }
            | MapStep::Shared { name, .. } => name,
        }
    }

    /// Where the map is pinned once the revision is committed.
    pub fn pin(&self) -> &PathBuf {
        match self {
            MapStep::Reuse { pin, .. }
            | MapStep::Create { pin, .. }
            | MapStep::Recreate { pin, .. }
            | MapStep::Shared { pin, .. } => pin,
        }
    }
}

/// Maps of an apply: what each map of the object does, and which pins of the previous
/// revision become unused once the new revision is committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapPlan {
    pub steps: Vec<MapStep>,
    pub unused_after_commit: Vec<PathBuf>,
}

impl MapPlan {
    /// What the status says of recreated maps, one line each.
    pub fn recreated(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                MapStep::Recreate { name, why, .. } => Some(format!("{name}: {why}, recreated empty")),
                _ => None,
            })
            .collect()
    }
}

/// What the maps of an apply start from.
#[derive(Clone, Debug)]
pub struct MapsNow<'a> {
    /// The object's maps and their shapes, by name.
    pub object: &'a BTreeMap<String, MapDef>,
    /// The owner's pinned maps and their shapes, as the kernel shows them.
    pub pinned: &'a BTreeMap<String, MapDef>,
    /// Maps with `onUpgrade: Recreate`.
    pub recreate: &'a BTreeSet<String>,
    /// Maps used from another owner, by name: where they are pinned.
    pub shared: &'a BTreeMap<String, PathBuf>,
    /// The revision running until the commit, if it is another one than the one applied
    /// (a rebuild of the running revision is no upgrade: its maps stay).
    pub previous: Option<&'a OwnerRecord>,
}

/// Maps are pinned per owner and shared across revisions: a map the object declares is
/// reused when a pin of its name exists with the same type, key and value size, max
/// entries and flags; created when none exists; recreated (empty) when the pinned one
/// differs, or on an upgrade when its policy says so. The previous revision's maps the
/// new object no longer declares go after the commit.
pub fn maps(now: &MapsNow<'_>, pin_of: impl Fn(&str) -> PathBuf, staging_of: impl Fn(&str) -> PathBuf) -> MapPlan {
    let steps: Vec<MapStep> = now
        .object
        .iter()
        .map(|(name, want)| {
            if let Some(theirs) = now.shared.get(name) {
                return MapStep::Shared { name: name.clone(), pin: theirs.clone() };
            }
            let (name, pin) = (name.clone(), pin_of(name));
            let Some(have) = now.pinned.get(&name) else { return MapStep::Create { name, pin } };
            let why = if now.recreate.contains(&name) && now.previous.is_some() {
                Some("onUpgrade is Recreate".to_string())
            } else {
                shape_change(have, want)
            };
            match why {
                None => MapStep::Reuse { name, pin },
                Some(why) => MapStep::Recreate { staging: staging_of(&name), name, pin, why },
            }
        })
        .collect();
    let kept: BTreeSet<&PathBuf> = steps.iter().map(MapStep::pin).collect();
    let unused_after_commit = now
        .previous
        // Only this owner's own pins: a map it used from another owner is that owner's.
        .map(|p| {
            p.maps
                .iter()
                .filter(|m| m.pin_path == pin_of(&m.name) && !kept.contains(&m.pin_path))
                .map(|m| m.pin_path.clone())
                .collect()
        })
        .unwrap_or_default();
    MapPlan { steps, unused_after_commit }
}

/// How a pinned map differs from the object's definition, in words; None when its
/// contents can be kept.
pub fn shape_change(pinned: &MapDef, object: &MapDef) -> Option<String> {
    let mut diffs = Vec::new();
    let mut cmp = |what: &str, a: u32, b: u32, hex: bool| {
        if a != b {
            diffs.push(if hex { format!("{what} {a:#x} -> {b:#x}") } else { format!("{what} {a} -> {b}") });
        }
    };
    cmp("type", pinned.map_type, object.map_type, false);
    cmp("key size", pinned.key_size, object.key_size, false);
    cmp("value size", pinned.value_size, object.value_size, false);
    cmp("max entries", pinned.max_entries, object.max_entries, false);
    cmp("flags", pinned.flags, object.flags, true);
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MapRecord;

    fn record(revision: &str, maps: &[&str]) -> OwnerRecord {
        OwnerRecord {
            schema: crate::store::SCHEMA_VERSION,
            uid: "u".into(),
            name: "p".into(),
            revision: revision.into(),
            spec: vec![],
            programs: vec![],
            maps: maps.iter().map(|m| MapRecord { name: m.to_string(), pin_path: pin(m) }).collect(),
            bytecode_digest: None,
            maps_recreated: vec![],
            metrics: vec![],
            pods: vec![],
        }
    }

    fn pin(name: &str) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/bpfleet/u/maps/{name}"))
    }

    fn problem(kind: ProblemKind) -> Problem {
        Problem { program: 0, link: Some(0), kind, why: "x".into() }
    }

    #[test]
    fn what_runs_plans_what_an_apply_does() {
        let r1 = record("r1", &[]);
        let none: &[Problem] = &[];
        let cur = |record, problems| Current { record, set_aside: None, problems };
        assert_eq!(plan(&cur(None, none), "r1"), ApplyPlan::Load { rebuild: false }, "first apply");
        assert_eq!(plan(&cur(Some(&r1), none), "r1"), ApplyPlan::Keep, "what runs, healthy");
        assert_eq!(plan(&cur(Some(&r1), none), "r2"), ApplyPlan::Load { rebuild: false }, "upgrade");
        let gone = [problem(ProblemKind::InterfaceRecreated), problem(ProblemKind::LinkGone)];
        assert_eq!(plan(&cur(Some(&r1), &gone), "r1"), ApplyPlan::Repair(gone.to_vec()), "only the broken hooks");
        assert_eq!(plan(&cur(Some(&r1), &gone), "r2"), ApplyPlan::Load { rebuild: false }, "an upgrade replaces all");
        let program_gone =
            [problem(ProblemKind::LinkGone), Problem { link: None, ..problem(ProblemKind::ProgramGone) }];
        assert_eq!(plan(&cur(Some(&r1), &program_gone), "r1"), ApplyPlan::Load { rebuild: true });
        let aside = Current { record: None, set_aside: Some("corrupt"), problems: none };
        assert_eq!(plan(&aside, "r1"), ApplyPlan::Refuse("corrupt".into()), "never guess over a set-aside record");
    }

    fn def(value_size: u32, max_entries: u32) -> MapDef {
        MapDef { map_type: 2, key_size: 4, value_size, max_entries, flags: 0 }
    }

    fn staging(name: &str) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/bpfleet/u/r2/maps/{name}"))
    }

    fn map_plan(
        object: &[(&str, MapDef)],
        pinned: &[(&str, MapDef)],
        recreate: &[&str],
        prev: Option<&OwnerRecord>,
    ) -> MapPlan {
        let object: BTreeMap<String, MapDef> = object.iter().map(|(n, d)| (n.to_string(), *d)).collect();
        let pinned: BTreeMap<String, MapDef> = pinned.iter().map(|(n, d)| (n.to_string(), *d)).collect();
        let recreate: BTreeSet<String> = recreate.iter().map(|s| s.to_string()).collect();
        maps(
            &MapsNow { object: &object, pinned: &pinned, recreate: &recreate, shared: &NO_SHARED, previous: prev },
            pin,
            staging,
        )
    }

    /// A map used from another owner is loaded from that owner's pin, whatever this
    /// owner has pinned; once no longer used, it is not this owner's to remove.
    #[test]
    fn a_shared_map_is_the_owners_pin_and_never_removed_as_ours() {
        let def = MapDef { map_type: 1, key_size: 4, value_size: 8, max_entries: 16, flags: 0 };
        let object: BTreeMap<String, MapDef> = [("counts".to_string(), def)].into();
        let theirs = PathBuf::from("/b/writer/maps/counts");
        let shared: BTreeMap<String, PathBuf> = [("counts".to_string(), theirs.clone())].into();
        let none = BTreeMap::new();
        let recreate = BTreeSet::new();
        let plan = maps(
            &MapsNow { object: &object, pinned: &none, recreate: &recreate, shared: &shared, previous: None },
            pin,
            staging,
        );
        assert_eq!(plan.steps, vec![MapStep::Shared { name: "counts".into(), pin: theirs.clone() }]);
        assert_eq!(plan.steps[0].load_pin(), &theirs);
        // The revision that used it is replaced by one that has its own: the writer's pin stays.
        let mut prev = record("r1", &[]);
        prev.maps = vec![MapRecord { name: "counts".into(), pin_path: theirs.clone() }];
        let plan = maps(
            &MapsNow { object: &object, pinned: &none, recreate: &recreate, shared: &NO_SHARED, previous: Some(&prev) },
            pin,
            staging,
        );
        assert!(matches!(&plan.steps[0], MapStep::Create { .. }), "{plan:?}");
        assert!(plan.unused_after_commit.is_empty(), "{plan:?}");
    }

    #[test]
    fn maps_are_reused_created_and_retired() {
        let prev = record("r1", &["counts", "old_only"]);
        let p = map_plan(
            &[("counts", def(8, 1)), ("new_map", def(8, 1))],
            &[("counts", def(8, 1)), ("old_only", def(8, 1))],
            &[],
            Some(&prev),
        );
        assert_eq!(
            p.steps,
            vec![
                MapStep::Reuse { name: "counts".into(), pin: pin("counts") },
                MapStep::Create { name: "new_map".into(), pin: pin("new_map") },
            ]
        );
        assert_eq!(p.unused_after_commit, vec![pin("old_only")], "a counter keeps counting; the rest goes");
        assert!(p.recreated().is_empty());
        let first = map_plan(&[("counts", def(8, 1))], &[], &[], None);
        assert_eq!(first.steps, vec![MapStep::Create { name: "counts".into(), pin: pin("counts") }]);
        assert!(first.unused_after_commit.is_empty());
    }

    #[test]
    fn an_incompatible_map_is_recreated_beside_the_running_one() {
        let prev = record("r1", &["counts", "hist"]);
        let p = map_plan(
            &[("counts", def(16, 1)), ("hist", def(8, 64))],
            &[("counts", def(8, 1)), ("hist", def(8, 32))],
            &[],
            Some(&prev),
        );
        assert_eq!(
            p.steps,
            vec![
                MapStep::Recreate {
                    name: "counts".into(),
                    pin: pin("counts"),
                    staging: staging("counts"),
                    why: "value size 8 -> 16".into()
                },
                MapStep::Recreate {
                    name: "hist".into(),
                    pin: pin("hist"),
                    staging: staging("hist"),
                    why: "max entries 32 -> 64".into()
                },
            ]
        );
        assert_eq!(p.steps[0].load_pin(), &staging("counts"), "the running revision keeps its map until the commit");
        assert!(p.unused_after_commit.is_empty(), "a recreated map replaces the old pin; nothing else goes");
        assert_eq!(
            p.recreated(),
            vec!["counts: value size 8 -> 16, recreated empty", "hist: max entries 32 -> 64, recreated empty"]
        );
        let flags = MapDef { flags: 1, ..def(8, 1) };
        let types = MapDef { map_type: 1, key_size: 8, ..def(8, 1) };
        assert_eq!(shape_change(&def(8, 1), &flags).as_deref(), Some("flags 0x0 -> 0x1"));
        assert_eq!(shape_change(&def(8, 1), &types).as_deref(), Some("type 2 -> 1, key size 4 -> 8"));
    }

    #[test]
    fn recreate_policy_starts_every_new_revision_empty_but_not_a_rebuild() {
        let prev = record("r1", &["counts", "keep"]);
        let object = [("counts", def(8, 1)), ("keep", def(8, 1))];
        let pinned = object;
        let p = map_plan(&object, &pinned, &["counts"], Some(&prev));
        assert!(
            matches!(&p.steps[0], MapStep::Recreate { name, why, .. } if name == "counts" && why == "onUpgrade is Recreate")
        );
        assert_eq!(p.steps[1], MapStep::Reuse { name: "keep".into(), pin: pin("keep") }, "policies are per map");
        let rebuild = map_plan(&object, &pinned, &["counts"], None);
        assert!(rebuild.steps.iter().all(|s| matches!(s, MapStep::Reuse { .. })), "{rebuild:?}");
        let fresh = map_plan(&object, &[], &["counts"], Some(&prev));
        assert!(fresh.steps.iter().all(|s| matches!(s, MapStep::Create { .. })), "nothing pinned: just create");
    }

    fn load_now<'a>(
        running: Option<&'a OwnerRecord>,
        rebuild: bool,
        object: &'a BTreeMap<String, MapDef>,
        pinned: &'a BTreeMap<String, MapDef>,
        recreate: &'a BTreeSet<String>,
        dirs: (bool, bool),
    ) -> LoadNow<'a> {
        let (owner_dir_exists, revision_dir_exists) = dirs;
        LoadNow {
            running,
            rebuild,
            object,
            pinned,
            recreate,
            shared: &NO_SHARED,
            owner_dir_exists,
            revision_dir_exists,
        }
    }

    static NO_SHARED: BTreeMap<String, PathBuf> = BTreeMap::new();

    fn defs(maps: &[(&str, MapDef)]) -> BTreeMap<String, MapDef> {
        maps.iter().map(|(n, d)| (n.to_string(), *d)).collect()
    }

    fn staging_dir() -> PathBuf {
        PathBuf::from("/sys/fs/bpf/bpfleet/u/r2/maps")
    }

    #[test]
    fn a_first_apply_creates_everything_and_a_failure_takes_the_owner_away() {
        let (object, none, no_policy) = (defs(&[("counts", def(8, 1))]), defs(&[]), BTreeSet::new());
        let p = load(&load_now(None, false, &object, &none, &no_policy, (false, false)), pin, &staging_dir());
        assert_eq!(p.previous, None);
        assert_eq!(p.maps.steps, vec![MapStep::Create { name: "counts".into(), pin: pin("counts") }]);
        assert_eq!(p.load_pins(), BTreeMap::from([("counts".to_string(), pin("counts"))]));
        assert_eq!(p.created_maps(), vec![pin("counts")], "a failed first apply removes the maps it made");
        assert!(p.fresh_owner, "and the owner's directory and record");
        assert!(!p.clear_revision_dir);
        assert_eq!(p.staging, None);
    }

    #[test]
    fn an_upgrade_replaces_the_running_revision_after_the_commit() {
        let r1 = record("r1", &["counts", "old_only"]);
        let object = defs(&[("counts", def(8, 1)), ("new_map", def(8, 1))]);
        let pinned = defs(&[("counts", def(8, 1))]);
        let no_policy = BTreeSet::new();
        let p = load(&load_now(Some(&r1), false, &object, &pinned, &no_policy, (true, false)), pin, &staging_dir());
        assert_eq!(p.previous, Some(&r1), "removed after the commit");
        assert_eq!(
            p.maps.steps,
            vec![
                MapStep::Reuse { name: "counts".into(), pin: pin("counts") },
                MapStep::Create { name: "new_map".into(), pin: pin("new_map") },
            ]
        );
        assert_eq!(p.maps.unused_after_commit, vec![pin("old_only")], "unused maps go after the commit");
        assert_eq!(p.created_maps(), vec![pin("new_map")], "a failure removes only what it made");
        assert!(!p.fresh_owner, "an owner that runs something keeps its record and maps on a failure");
        assert_eq!(p.staging, None);
        // An interrupted attempt at this revision left its directory: cleared first.
        let p = load(&load_now(Some(&r1), false, &object, &pinned, &no_policy, (true, true)), pin, &staging_dir());
        assert!(p.clear_revision_dir);
    }

    #[test]
    fn a_recreated_map_is_staged_until_the_commit() {
        let r1 = record("r1", &["counts", "keep"]);
        let object = defs(&[("counts", def(16, 1)), ("keep", def(8, 1)), ("policy", def(8, 1))]);
        let pinned = defs(&[("counts", def(8, 1)), ("keep", def(8, 1)), ("policy", def(8, 1))]);
        let policy = BTreeSet::from(["policy".to_string()]);
        let p = load(&load_now(Some(&r1), false, &object, &pinned, &policy, (true, false)), pin, &staging_dir());
        assert_eq!(p.staging, Some(staging_dir()), "made before the load");
        assert_eq!(p.load_pins()["counts"], staging_dir().join("counts"), "the running revision keeps its map");
        assert_eq!(p.load_pins()["policy"], staging_dir().join("policy"));
        assert_eq!(p.load_pins()["keep"], pin("keep"));
        assert!(p.created_maps().is_empty(), "staged maps go with the revision directory on a failure");
        assert_eq!(
            p.maps.recreated(),
            vec!["counts: value size 8 -> 16, recreated empty", "policy: onUpgrade is Recreate, recreated empty"]
        );
    }

    #[test]
    fn a_rebuild_loads_the_running_revision_afresh_over_its_maps() {
        let r1 = record("r1", &["counts"]);
        let gone = [Problem { link: None, ..problem(ProblemKind::ProgramGone) }];
        let current = Current { record: Some(&r1), set_aside: None, problems: &gone };
        let ApplyPlan::Load { rebuild } = plan(&current, "r1") else { panic!("a program is gone: load again") };
        let object = defs(&[("counts", def(8, 1))]);
        let policy = BTreeSet::from(["counts".to_string()]);
        let p = load(&load_now(Some(&r1), rebuild, &object, &object, &policy, (true, true)), pin, &staging_dir());
        assert_eq!(p.previous, None, "torn down before the load: nothing to replace after the commit");
        assert_eq!(p.maps.steps, vec![MapStep::Reuse { name: "counts".into(), pin: pin("counts") }], "no upgrade");
        assert!(p.maps.unused_after_commit.is_empty());
        assert!(p.clear_revision_dir, "what the teardown left of the revision goes");
        assert!(!p.fresh_owner, "a failed rebuild keeps the owner's record and maps");
    }

    #[test]
    fn an_owner_without_a_record_keeps_what_it_pinned_on_a_failure() {
        // A first apply that failed earlier left the owner's maps (it had run something),
        // or the agent died before the commit: the directory exists, nothing runs.
        let object = defs(&[("counts", def(8, 1)), ("new_map", def(8, 1))]);
        let pinned = defs(&[("counts", def(8, 1))]);
        let no_policy = BTreeSet::new();
        let p = load(&load_now(None, false, &object, &pinned, &no_policy, (true, true)), pin, &staging_dir());
        assert!(!p.fresh_owner);
        assert_eq!(p.created_maps(), vec![pin("new_map")]);
        assert!(p.clear_revision_dir);
        assert_eq!(p.previous, None);
    }
}
