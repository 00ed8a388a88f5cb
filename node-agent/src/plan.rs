//! What an Apply must do, decided from plain data: what the owner's record says runs,
//! what the request asks, and what the kernel shows (health problems, pinned maps).
//! Pure: `manager.rs` carries a plan out with kernel calls and rolls it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

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

/// The decision for one Apply of `revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
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

/// Decide what an Apply of `revision` does.
pub fn decide(current: &Current<'_>, revision: &str) -> Decision {
    if let Some(why) = current.set_aside {
        return Decision::Refuse(why.to_string());
    }
    match current.record {
        Some(r) if r.revision == revision => {
            if current.problems.is_empty() {
                Decision::Keep
            } else if current.problems.iter().any(|p| p.kind == ProblemKind::ProgramGone) {
                Decision::Load { rebuild: true }
            } else {
                Decision::Repair(current.problems.to_vec())
            }
        }
        _ => Decision::Load { rebuild: false },
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
}

impl MapStep {
    /// Where the load finds (or puts) the map.
    pub fn load_pin(&self) -> &PathBuf {
        match self {
            MapStep::Reuse { pin, .. } | MapStep::Create { pin, .. } => pin,
            MapStep::Recreate { staging, .. } => staging,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            MapStep::Reuse { name, .. } | MapStep::Create { name, .. } | MapStep::Recreate { name, .. } => name,
        }
    }

    /// Where the map is pinned once the revision is committed.
    pub fn pin(&self) -> &PathBuf {
        match self {
            MapStep::Reuse { pin, .. } | MapStep::Create { pin, .. } | MapStep::Recreate { pin, .. } => pin,
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
        .map(|p| p.maps.iter().map(|m| m.pin_path.clone()).filter(|m| !kept.contains(m)).collect())
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
        }
    }

    fn pin(name: &str) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/bpfleet/u/maps/{name}"))
    }

    fn problem(kind: ProblemKind) -> Problem {
        Problem { program: 0, link: Some(0), kind, why: "x".into() }
    }

    #[test]
    fn what_runs_decides_what_an_apply_does() {
        let r1 = record("r1", &[]);
        let none: &[Problem] = &[];
        let cur = |record, problems| Current { record, set_aside: None, problems };
        assert_eq!(decide(&cur(None, none), "r1"), Decision::Load { rebuild: false }, "first apply");
        assert_eq!(decide(&cur(Some(&r1), none), "r1"), Decision::Keep, "what runs, healthy");
        assert_eq!(decide(&cur(Some(&r1), none), "r2"), Decision::Load { rebuild: false }, "upgrade");
        let gone = [problem(ProblemKind::InterfaceRecreated), problem(ProblemKind::LinkGone)];
        assert_eq!(decide(&cur(Some(&r1), &gone), "r1"), Decision::Repair(gone.to_vec()), "only the broken hooks");
        assert_eq!(decide(&cur(Some(&r1), &gone), "r2"), Decision::Load { rebuild: false }, "an upgrade replaces all");
        let program_gone =
            [problem(ProblemKind::LinkGone), Problem { link: None, ..problem(ProblemKind::ProgramGone) }];
        assert_eq!(decide(&cur(Some(&r1), &program_gone), "r1"), Decision::Load { rebuild: true });
        let aside = Current { record: None, set_aside: Some("corrupt"), problems: none };
        assert_eq!(decide(&aside, "r1"), Decision::Refuse("corrupt".into()), "never guess over a set-aside record");
    }

    fn def(value_size: u32, max_entries: u32) -> MapDef {
        MapDef { map_type: 2, key_size: 4, value_size, max_entries, flags: 0 }
    }

    fn staging(name: &str) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/bpfleet/u/r2/maps/{name}"))
    }

    fn plan(
        object: &[(&str, MapDef)],
        pinned: &[(&str, MapDef)],
        recreate: &[&str],
        prev: Option<&OwnerRecord>,
    ) -> MapPlan {
        let object: BTreeMap<String, MapDef> = object.iter().map(|(n, d)| (n.to_string(), *d)).collect();
        let pinned: BTreeMap<String, MapDef> = pinned.iter().map(|(n, d)| (n.to_string(), *d)).collect();
        let recreate: BTreeSet<String> = recreate.iter().map(|s| s.to_string()).collect();
        maps(&MapsNow { object: &object, pinned: &pinned, recreate: &recreate, previous: prev }, pin, staging)
    }

    #[test]
    fn maps_are_reused_created_and_retired() {
        let prev = record("r1", &["counts", "old_only"]);
        let p = plan(
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
        let first = plan(&[("counts", def(8, 1))], &[], &[], None);
        assert_eq!(first.steps, vec![MapStep::Create { name: "counts".into(), pin: pin("counts") }]);
        assert!(first.unused_after_commit.is_empty());
    }

    #[test]
    fn an_incompatible_map_is_recreated_beside_the_running_one() {
        let prev = record("r1", &["counts", "hist"]);
        let p = plan(
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
        let p = plan(&object, &pinned, &["counts"], Some(&prev));
        assert!(
            matches!(&p.steps[0], MapStep::Recreate { name, why, .. } if name == "counts" && why == "onUpgrade is Recreate")
        );
        assert_eq!(p.steps[1], MapStep::Reuse { name: "keep".into(), pin: pin("keep") }, "policies are per map");
        let rebuild = plan(&object, &pinned, &["counts"], None);
        assert!(rebuild.steps.iter().all(|s| matches!(s, MapStep::Reuse { .. })), "{rebuild:?}");
        let fresh = plan(&object, &[], &["counts"], Some(&prev));
        assert!(fresh.steps.iter().all(|s| matches!(s, MapStep::Create { .. })), "nothing pinned: just create");
    }
}
