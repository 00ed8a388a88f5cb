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
}

/// Read every manifest in `dir`.
pub fn scan(dir: &Path) -> Scan {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(e) => {
            errors.push((dir.to_path_buf(), format!("cannot read directory: {e}")));
            return Scan { found, errors };
        }
    };
    files.sort();
    for path in files {
        let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if !is_yaml || path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            continue;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push((path, format!("cannot read: {e}")));
                continue;
            }
        };
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value: serde_yaml::Value = match serde::Deserialize::deserialize(doc) {
                Ok(v) => v,
                Err(e) => {
                    errors.push((path.clone(), format!("document {}: not YAML: {e}", i + 1)));
                    continue;
                }
            };
            if value.is_null() || value.get("kind").and_then(|k| k.as_str()) != Some("BpfProgram") {
                continue;
            }
            let parsed: Result<BpfProgram, _> = serde_yaml::from_value(value);
            match parsed.map_err(|e| e.to_string()).and_then(|obj| input_from_manifest(&obj).map_err(|e| e.to_string()))
            {
                Ok(input) => found.push((path.clone(), input)),
                Err(e) => errors.push((path.clone(), format!("document {}: {e}", i + 1))),
            }
        }
    }
    Scan { found, errors }
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
}

/// The owners to keep this pass: those found, plus, for every file that exists but
/// failed to read or parse in part or whole, those it described before. Pure.
pub fn owners_to_keep(
    found: &[(PathBuf, String)],
    failed_files: &BTreeSet<PathBuf>,
    last_good: &mut BTreeMap<PathBuf, BTreeSet<String>>,
) -> BTreeSet<String> {
    let mut now: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    for (path, uid) in found {
        now.entry(path.clone()).or_default().insert(uid.clone());
    }
    for path in failed_files {
        let kept = last_good.get(path).cloned().unwrap_or_default();
        now.entry(path.clone()).or_default().extend(kept);
    }
    // Files neither found nor failing are gone: their owners go with them.
    *last_good = now;
    last_good.values().flatten().cloned().collect()
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
    let Scan { found, errors } = scan(dir);
    let mut now: BTreeMap<String, String> = BTreeMap::new();
    let failed_files: BTreeSet<PathBuf> = errors.iter().map(|(p, _)| p.clone()).collect();
    for (path, e) in errors {
        now.insert(format!("{}", path.display()), format!("{e} (what it described before keeps running)"));
    }
    let found_uids: Vec<(PathBuf, String)> = found.iter().map(|(p, i)| (p.clone(), i.uid.to_string())).collect();
    let keep = owners_to_keep(&found_uids, &failed_files, &mut memory.owners_by_file);
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
            && !keep.contains(&state.owner_uid)
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
        let mut last = BTreeMap::new();
        let found = vec![(p("a.yaml"), "standalone-a".to_string()), (p("b.yaml"), "standalone-b".to_string())];
        let keep = owners_to_keep(&found, &BTreeSet::new(), &mut last);
        assert_eq!(keep.len(), 2);
        // a.yaml is mid-edit (does not parse): a keeps running.
        let keep = owners_to_keep(&found[1..], &BTreeSet::from([p("a.yaml")]), &mut last);
        assert_eq!(keep, BTreeSet::from(["standalone-a".to_string(), "standalone-b".to_string()]));
        // Still broken on the next pass: still kept.
        let keep = owners_to_keep(&found[1..], &BTreeSet::from([p("a.yaml")]), &mut last);
        assert!(keep.contains("standalone-a"));
        // Deleted: gone.
        let keep = owners_to_keep(&found[1..], &BTreeSet::new(), &mut last);
        assert_eq!(keep, BTreeSet::from(["standalone-b".to_string()]));
        // A broken file never seen good keeps nothing.
        let keep = owners_to_keep(&[], &BTreeSet::from([p("new.yaml")]), &mut last);
        assert!(keep.is_empty());
    }
}
