//! Standalone mode: reconcile the BpfProgram manifests in a directory, like static pods.
//! A file added is loaded, an edit becomes a new revision, a file removed is unloaded.
//! A file that cannot be read or parsed right now (an editor mid-save, an object being
//! rebuilt) changes nothing: what it last described keeps running, and the reason is
//! logged. Only deleting the file removes its programs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crds::BpfProgram;

use crate::manager::{ApplyInput, Manager};
use crate::request::input_from_manifest;

/// One pass over a directory: the BpfPrograms found and the errors, each by file.
#[derive(Default)]
pub struct Scan {
    pub found: Vec<(PathBuf, ApplyInput)>,
    pub errors: Vec<(PathBuf, String)>,
    /// Every manifest file present, whatever it holds.
    pub present: BTreeSet<PathBuf>,
}

/// Read every manifest in `dir`.
pub fn scan(dir: &Path) -> Scan {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let mut present = BTreeSet::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(e) => {
            errors.push((dir.to_path_buf(), format!("cannot read directory: {e}")));
            return Scan { found, errors, present };
        }
    };
    files.sort();
    for path in files {
        let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if !is_yaml || path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            continue;
        }
        present.insert(path.clone());
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push((path, format!("cannot read: {e}")));
                continue;
            }
        };
        for (i, doc) in documents(&text) {
            match doc.and_then(|obj| input_from_manifest(&obj).map_err(|e| e.to_string())) {
                Ok(input) => found.push((path.clone(), input)),
                Err(e) => errors.push((path.clone(), format!("document {i}: {e}"))),
            }
        }
    }
    Scan { found, errors, present }
}

/// The BpfPrograms of one manifest file, by document number (from 1); documents of other
/// kinds are skipped. The first document that is not YAML ends the file: serde_yaml
/// cannot resume after a syntax error and would yield the same error forever (found by
/// fuzzing: the scan never returned and its error list grew without bound).
pub fn documents(text: &str) -> Vec<(usize, Result<BpfProgram, String>)> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: serde_yaml::Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                out.push((i + 1, Err(format!("not YAML: {e}"))));
                break;
            }
        };
        if value.is_null() || value.get("kind").and_then(|k| k.as_str()) != Some("BpfProgram") {
            continue;
        }
        out.push((i + 1, serde_yaml::from_value(value).map_err(|e| e.to_string())));
    }
    out
}

/// What one reconciliation pass remembers for the next.
#[derive(Default)]
pub struct Memory {
    /// Errors by file, logged when they change rather than on every pass.
    reported: BTreeMap<String, String>,
    /// Failed (owner, revision) -> when to retry and the current delay: a broken
    /// manifest is retried with exponential backoff (up to a minute), not every pass.
    retry: BTreeMap<(String, String), (Instant, Duration)>,
    /// Per manifest file, the owners it last described successfully: kept running while
    /// the file is unreadable or broken, dropped when the file is deleted.
    owners_by_file: BTreeMap<PathBuf, BTreeSet<String>>,
    /// Files broken since the first pass, whose owners nobody knows.
    unattributed: BTreeSet<PathBuf>,
    passes: u64,
}

/// What to keep this pass.
#[derive(Debug, PartialEq, Eq)]
pub enum Keep {
    /// These owners (found, or described before by a file that is broken now).
    Owners(BTreeSet<String>),
    /// Everything: a file is broken and nothing says what it described (the agent
    /// restarted since), so no owner may be taken for deleted.
    All,
}

/// The owners to keep this pass: those found, plus, for every file that exists but
/// failed to read or parse, or now describes nothing although it described owners before
/// (truncated mid-save), those it described before. Files broken at the first pass after
/// a start are `unattributed` (nothing says what they held) until they read again or go:
/// meanwhile nothing is removed. Pure.
pub fn owners_to_keep(
    found: &[(PathBuf, String)],
    present: &BTreeSet<PathBuf>,
    failed_files: &BTreeSet<PathBuf>,
    last_good: &mut BTreeMap<PathBuf, BTreeSet<String>>,
    unattributed: &mut BTreeSet<PathBuf>,
    first_pass: bool,
) -> Keep {
    if first_pass {
        unattributed.extend(failed_files.iter().cloned());
    }
    unattributed.retain(|p| present.contains(p) && failed_files.contains(p));
    let described: BTreeSet<&PathBuf> = found.iter().map(|(p, _)| p).collect();
    let mut now: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    for (path, uid) in found {
        now.entry(path.clone()).or_default().insert(uid.clone());
    }
    for path in present {
        let had = last_good.get(path).filter(|o| !o.is_empty());
        if failed_files.contains(path) || (!described.contains(path) && had.is_some()) {
            now.entry(path.clone()).or_default().extend(had.cloned().unwrap_or_default());
        }
    }
    // Files no longer present are gone: their owners go with them.
    *last_good = now;
    if !unattributed.is_empty() {
        return Keep::All;
    }
    Keep::Owners(last_good.values().flatten().cloned().collect())
}

const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Reconcile forever, every `interval`.
pub async fn run(manager: Arc<Manager>, dir: PathBuf, interval: Duration) -> anyhow::Result<()> {
    tracing::info!(dir = %dir.display(), "standalone mode: reconciling manifests");
    let mut memory = Memory::default();
    loop {
        reconcile_once(&manager, &dir, &mut memory, interval).await;
        tokio::time::sleep(interval).await;
    }
}

pub async fn reconcile_once(manager: &Arc<Manager>, dir: &Path, memory: &mut Memory, interval: Duration) {
    let reported = &mut memory.reported;
    // Off the runtime: manifests name node paths, read with a deadline (see `hostfs`).
    let owned = dir.to_path_buf();
    let Scan { found, errors, present } = match tokio::task::spawn_blocking(move || scan(&owned)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "standalone: reading the manifests failed; nothing changes this pass");
            return;
        }
    };
    let mut now: BTreeMap<String, String> = BTreeMap::new();
    let failed_files: BTreeSet<PathBuf> = errors.iter().map(|(p, _)| p.clone()).collect();
    for (path, e) in errors {
        now.insert(format!("{}", path.display()), format!("{e} (what it described before keeps running)"));
    }
    let found_uids: Vec<(PathBuf, String)> = found.iter().map(|(p, i)| (p.clone(), i.uid.to_string())).collect();
    let first_pass = memory.passes == 0;
    memory.passes += 1;
    let keep = owners_to_keep(
        &found_uids,
        &present,
        &failed_files,
        &mut memory.owners_by_file,
        &mut memory.unattributed,
        first_pass,
    );
    if keep == Keep::All {
        tracing::warn!(
            "standalone: a manifest is unreadable and its programs are not known since start; removing nothing"
        );
    }
    let mut desired = BTreeSet::new();
    for (path, input) in found {
        let uid = input.uid.to_string();
        if !desired.insert(uid.clone()) {
            now.insert(
                format!("{}", path.display()),
                format!("BpfProgram {} is defined twice; the first wins", input.name),
            );
            continue;
        }
        let (name, revision) = (input.name.clone(), input.revision.clone());
        let key = (uid.clone(), revision.to_string());
        if let Some((at, _)) = memory.retry.get(&key)
            && Instant::now() < *at
        {
            if let Some(e) = reported.get(&format!("{}: {name} {revision}", path.display())) {
                now.insert(format!("{}: {name} {revision}", path.display()), e.clone());
            }
            continue;
        }
        match manager.apply(input).await {
            Ok((state, true)) => {
                memory.retry.remove(&key);
                let maps: Vec<String> = state.maps.iter().map(|m| m.pin_path.clone()).collect();
                tracing::info!(program = %name, %revision, ?maps, "standalone: running");
            }
            Ok((_, false)) => {}
            Err(e) => {
                let delay = memory.retry.get(&key).map(|(_, d)| (*d * 2).min(MAX_RETRY_DELAY)).unwrap_or(interval);
                memory.retry.insert(key, (Instant::now() + delay, delay));
                now.insert(format!("{}: {name} {revision}", path.display()), e.to_string());
            }
        }
    }
    for (what, e) in &now {
        if reported.get(what) != Some(e) {
            tracing::error!(file = %what, error = %e, "standalone: cannot run manifest");
        }
    }
    *reported = now;
    memory.retry.retain(|(uid, _), _| desired.contains(uid));
    for state in manager.list() {
        if state.owner_uid.starts_with("standalone-")
            && !desired.contains(&state.owner_uid)
            && !matches!(&keep, Keep::All)
            && !matches!(&keep, Keep::Owners(k) if k.contains(&state.owner_uid))
            && let Ok(uid) = crds::names::OwnerUid::new(&state.owner_uid)
        {
            match manager.remove(&uid).await {
                Ok(_) => tracing::info!(program = %state.owner, "standalone: manifest gone, removed"),
                Err(e) => tracing::error!(program = %state.owner, error = %e, "standalone: cannot remove"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn broken_files_keep_their_owners_deleted_files_lose_them() {
        let owners = |v: &[&str]| Keep::Owners(v.iter().map(|s| s.to_string()).collect());
        let (mut last, mut unknown) = (BTreeMap::new(), BTreeSet::new());
        let both = BTreeSet::from([p("a.yaml"), p("b.yaml")]);
        let none = BTreeSet::new();
        let found = vec![(p("a.yaml"), "standalone-a".to_string()), (p("b.yaml"), "standalone-b".to_string())];
        let ab = owners(&["standalone-a", "standalone-b"]);
        assert_eq!(owners_to_keep(&found, &both, &none, &mut last, &mut unknown, true), ab);
        // a.yaml is mid-edit (does not parse): a keeps running, pass after pass.
        let broken_a = BTreeSet::from([p("a.yaml")]);
        assert_eq!(owners_to_keep(&found[1..], &both, &broken_a, &mut last, &mut unknown, false), ab);
        assert_eq!(owners_to_keep(&found[1..], &both, &broken_a, &mut last, &mut unknown, false), ab);
        // Truncated to nothing (present, describes nothing, no error): kept too.
        assert_eq!(owners_to_keep(&found[1..], &both, &none, &mut last, &mut unknown, false), ab);
        // Deleted: gone.
        let only_b = BTreeSet::from([p("b.yaml")]);
        assert_eq!(
            owners_to_keep(&found[1..], &only_b, &none, &mut last, &mut unknown, false),
            owners(&["standalone-b"])
        );
        // A file that never described a program (another kind) keeps nothing and blocks nothing.
        let with_other = BTreeSet::from([p("b.yaml"), p("other.yaml")]);
        let keep = owners_to_keep(&found[1..], &with_other, &none, &mut last, &mut unknown, false);
        assert_eq!(keep, owners(&["standalone-b"]));

        // After a restart (nothing remembered), a broken file: nobody knows what it held,
        // so nothing is removed until it reads again or is deleted.
        let (mut last, mut unknown) = (BTreeMap::new(), BTreeSet::new());
        assert_eq!(owners_to_keep(&found[1..], &both, &broken_a, &mut last, &mut unknown, true), Keep::All);
        assert_eq!(owners_to_keep(&found[1..], &both, &broken_a, &mut last, &mut unknown, false), Keep::All);
        assert_eq!(owners_to_keep(&found, &both, &none, &mut last, &mut unknown, false), ab, "fixed: known again");
        let (mut last, mut unknown) = (BTreeMap::new(), BTreeSet::new());
        assert_eq!(owners_to_keep(&found[1..], &both, &broken_a, &mut last, &mut unknown, true), Keep::All);
        let keep = owners_to_keep(&found[1..], &only_b, &none, &mut last, &mut unknown, false);
        assert_eq!(keep, owners(&["standalone-b"]), "deleted: decided");
    }

    /// Found by fuzzing: after a syntax error serde_yaml yields the same error again and
    /// again, so reading a file mid-edit never finished.
    #[test]
    fn a_syntax_error_ends_the_file() {
        let text = "kind: BpfProgram\nspec: {programs: [a\n---\nkind: BpfProgram\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 1, "{docs:?}");
        let (n, doc) = &docs[0];
        assert_eq!(*n, 1);
        assert!(doc.as_ref().is_err_and(|e| e.starts_with("not YAML")), "{doc:?}");
    }
}
