//! What an Apply must do, decided from plain data: what the owner's record says runs,
//! what the request asks, and what the kernel shows (health problems, pinned maps).
//! Pure: `manager.rs` carries a plan out with kernel calls and rolls it back.

use std::collections::BTreeSet;
use std::path::PathBuf;

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
    /// Pinned already (by an earlier revision): reuse it, if its shape matches.
    Reuse { name: String, pin: PathBuf },
    /// Not pinned yet: the load creates and pins it (and a failed apply removes it).
    Create { name: String, pin: PathBuf },
}

/// Maps of an apply: what each map of the object does, and which pins of the previous
/// revision become unused once the new revision is committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapPlan {
    pub steps: Vec<MapStep>,
    pub unused_after_commit: Vec<PathBuf>,
}

/// Maps are pinned per owner and shared across revisions: a map the object declares is
/// reused when a pin of its name exists (`pinned`), created otherwise; the previous
/// revision's maps the new object no longer declares go after the commit.
pub fn maps(
    object_maps: &[String],
    pinned: &BTreeSet<String>,
    previous: Option<&OwnerRecord>,
    pin_of: impl Fn(&str) -> PathBuf,
) -> MapPlan {
    let steps: Vec<MapStep> = object_maps
        .iter()
        .map(|name| {
            let pin = pin_of(name);
            if pinned.contains(name) {
                MapStep::Reuse { name: name.clone(), pin }
            } else {
                MapStep::Create { name: name.clone(), pin }
            }
        })
        .collect();
    let kept: BTreeSet<&PathBuf> = steps
        .iter()
        .map(|s| match s {
            MapStep::Reuse { pin, .. } | MapStep::Create { pin, .. } => pin,
        })
        .collect();
    let unused_after_commit = previous
        .map(|p| p.maps.iter().map(|m| m.pin_path.clone()).filter(|m| !kept.contains(m)).collect())
        .unwrap_or_default();
    MapPlan { steps, unused_after_commit }
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

    #[test]
    fn maps_are_reused_created_and_retired() {
        let prev = record("r1", &["counts", "old_only"]);
        let pinned = BTreeSet::from(["counts".to_string(), "old_only".to_string()]);
        let plan = maps(&["counts".into(), "new_map".into()], &pinned, Some(&prev), pin);
        assert_eq!(
            plan.steps,
            vec![
                MapStep::Reuse { name: "counts".into(), pin: pin("counts") },
                MapStep::Create { name: "new_map".into(), pin: pin("new_map") },
            ]
        );
        assert_eq!(plan.unused_after_commit, vec![pin("old_only")], "a counter keeps counting; the rest goes");
        let first = maps(&["counts".into()], &BTreeSet::new(), None, pin);
        assert_eq!(first.steps, vec![MapStep::Create { name: "counts".into(), pin: pin("counts") }]);
        assert!(first.unused_after_commit.is_empty());
    }
}
