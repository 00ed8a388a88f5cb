//! `rollout undo`: put the spec fields of an earlier revision (bytecode, programs,
//! globalData, maps, metrics) back with one merge patch, without ever restoring a different
//! program than the one recorded.

use std::io::Write;

use anyhow::Context as _;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use crds::history::RevisionData;
use crds::limits::MAX_BYTECODE_BYTES;
use crds::program::BytecodeSource;
use crds::revision::{BytecodeIdentity, Revision, Sha256Digest};
use crds::{BpfProgram, BpfProgramSpec};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Map, Value, json};

use crate::history::{self, Entry};

/// What `undo` goes back to.
#[derive(Debug, PartialEq)]
pub enum Target<'a> {
    Revert(&'a Entry),
    /// `--to-revision` named the revision that is already current: nothing to do.
    AlreadyCurrent(&'a Entry),
}

/// `to`: the entry with that sequence number. Default: the newest entry whose hash is
/// none of `current` (the status's revision and update revision), i.e. the revision before
/// the one being rolled out, which is the stable one after a halted rollout.
pub fn choose_target<'a>(entries: &'a [Entry], current: &[&str], to: Option<i64>) -> Result<Target<'a>, String> {
    match to {
        Some(n) => {
            let e = entries.iter().find(|e| e.number == n).ok_or_else(|| {
                format!("there is no revision {n} in the history (it has {})", history::numbers(entries))
            })?;
            Ok(if current.contains(&e.hash.as_str()) { Target::AlreadyCurrent(e) } else { Target::Revert(e) })
        }
        None => entries
            .iter()
            .rev()
            .find(|e| !current.contains(&e.hash.as_str()))
            .map(Target::Revert)
            .ok_or_else(|| "there is no earlier revision in the history to go back to".to_string()),
    }
}

/// The bytecode source to put back, and a note when it is not the recorded source itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Restored {
    pub bytecode: BytecodeSource,
    pub note: Option<String>,
}

/// `config_map_now`: for ConfigMap bytecode, what the named key holds today (or why it
/// cannot be read). A ConfigMap that changed since the revision was recorded would
/// restore a different program under the old revision's name, so the recorded bytes go
/// back inline instead, if they fit; otherwise undo refuses.
pub fn restore_bytecode(
    number: i64,
    data: &RevisionData,
    config_map_now: Option<Result<Vec<u8>, String>>,
) -> Result<Restored, String> {
    let Some(cm) = &data.bytecode.config_map else {
        return Ok(Restored { bytecode: data.bytecode.clone(), note: None });
    };
    let at = format!("ConfigMap {}/{} key {}", cm.namespace, cm.name, cm.key);
    let recorded_elf = match &data.elf {
        Some(b64) => Some(
            B64.decode(b64.trim())
                .map_err(|e| format!("revision {number} records an ELF object that is not valid base64 ({e})"))?,
        ),
        None => None,
    };
    let recorded = match (&data.digest, &recorded_elf) {
        (Some(d), _) => d.clone(),
        (None, Some(bytes)) => Sha256Digest::of(bytes).to_string(),
        (None, None) => {
            return Err(format!(
                "revision {number} records neither the ELF object nor its digest, so whether {at} still holds \
                 that program cannot be checked; restore it by hand"
            ));
        }
    };
    let why = match config_map_now {
        Some(Ok(bytes)) => {
            let now = Sha256Digest::of(&bytes);
            if now.as_str() == recorded {
                return Ok(Restored { bytecode: data.bytecode.clone(), note: None });
            }
            format!("{at} now holds another object ({now}) than revision {number} ran ({recorded})")
        }
        Some(Err(e)) => e,
        None => format!("{at} was not read"),
    };
    match recorded_elf {
        Some(bytes) if bytes.len() <= MAX_BYTECODE_BYTES => Ok(Restored {
            bytecode: BytecodeSource { inline: Some(B64.encode(&bytes).into()), ..Default::default() },
            note: Some(format!(
                "{why}; restoring the recorded object ({} bytes, {recorded}) as spec.bytecode.inline instead of \
                 the ConfigMap reference",
                bytes.len()
            )),
        }),
        Some(bytes) => Err(format!(
            "{why}, and the recorded object ({} bytes) is larger than inline bytecode allows ({MAX_BYTECODE_BYTES} \
             bytes). Put the object with digest {recorded} back under {at}, then run undo again",
            bytes.len()
        )),
        None => Err(format!(
            "{why}, and revision {number} does not record the object itself. Put the object with digest {recorded} \
             back under {at}, then run undo again"
        )),
    }
}

/// The merge patch that makes `current` run `data` with `bytecode`. A merge patch merges
/// objects key by key, so every key of `bytecode` and `globalData` the target lacks is
/// sent as null; lists (programs, maps) are replaced whole. `resource_version` makes the
/// API server refuse the patch if the program changed since it was read.
pub fn undo_patch(
    current: &BpfProgramSpec,
    resource_version: Option<&str>,
    bytecode: &BytecodeSource,
    data: &RevisionData,
) -> Value {
    let source = json!({
        "inline": bytecode.inline,
        "configMap": bytecode.config_map,
        "path": bytecode.path,
        "digest": bytecode.digest,
    });
    let global_data = if data.global_data.is_empty() {
        Value::Null
    } else {
        let mut m: Map<String, Value> = current.global_data.keys().map(|k| (k.clone(), Value::Null)).collect();
        m.extend(data.global_data.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))));
        Value::Object(m)
    };
    let maps = if data.maps.is_empty() { Value::Null } else { json!(data.maps) };
    let metrics = if data.metrics.is_empty() { Value::Null } else { json!(data.metrics) };
    let mut patch = json!({
        "spec": {"bytecode": source, "programs": data.programs, "globalData": global_data, "maps": maps, "metrics": metrics}
    });
    if let Some(rv) = resource_version {
        patch["metadata"] = json!({"resourceVersion": rv});
    }
    patch
}

/// The revision the patched spec hashes to, when the bytes are known here (inline and
/// recorded bytes, or a path): should be the entry's hash.
pub fn expected_revision(current: &BpfProgramSpec, bytecode: &BytecodeSource, data: &RevisionData) -> Option<Revision> {
    let mut spec = current.clone();
    spec.bytecode = bytecode.clone();
    spec.programs = data.programs.clone();
    spec.global_data = data.global_data.clone();
    spec.maps = data.maps.clone();
    spec.metrics = data.metrics.clone();
    if let Some(p) = &bytecode.path {
        let digest = bytecode.digest.as_deref().and_then(Sha256Digest::parse);
        return Some(Revision::compute(&spec, BytecodeIdentity::Path(p, digest.as_ref())));
    }
    let b64 = bytecode.inline.as_deref().or(data.elf.as_deref())?;
    let bytes = B64.decode(b64.trim()).ok()?;
    Some(Revision::compute(&spec, BytecodeIdentity::Bytes(&bytes)))
}

/// The object under `key`: `binaryData` (raw) or `data` (base64 text), as the operator
/// reads it.
pub fn config_map_bytes(cm: &ConfigMap, key: &str) -> Result<Vec<u8>, String> {
    if let Some(b) = cm.binary_data.as_ref().and_then(|d| d.get(key)) {
        return Ok(b.0.clone());
    }
    if let Some(text) = cm.data.as_ref().and_then(|d| d.get(key)) {
        return B64.decode(text.trim()).map_err(|e| format!("key {key} is in data but is not base64 ({e})"));
    }
    Err(format!("the ConfigMap has no key {key}"))
}

pub struct Args<'a> {
    pub name: &'a str,
    pub to_revision: Option<i64>,
    pub field_manager: &'a str,
}

pub async fn run(
    client: Client,
    revisions: Api<ControllerRevision>,
    args: Args<'_>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let name = args.name;
    let programs: Api<BpfProgram> = Api::all(client.clone());
    let program = programs.get(name).await.with_context(|| format!("cannot read BpfProgram {name}"))?;
    let entries = history::list(&revisions, &program).await?;
    let status = program.status.as_ref();
    let current: Vec<&str> = [
        status.and_then(|s| s.revision.as_deref()),
        status.and_then(|s| s.rollout.as_ref()).and_then(|r| r.update_revision.as_deref()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let entry = match choose_target(&entries, &current, args.to_revision) {
        Ok(Target::Revert(e)) => e,
        Ok(Target::AlreadyCurrent(e)) => {
            writeln!(out, "skipped: revision {} ({}) is already the current revision of {name}", e.number, e.hash)?;
            return Ok(());
        }
        Err(why) => anyhow::bail!("cannot undo BpfProgram {name}: {why}"),
    };
    let data = entry.data.as_ref().map_err(|why| anyhow::anyhow!("cannot undo to revision {}: {why}", entry.number))?;
    let config_map_now = match &data.bytecode.config_map {
        None => None,
        Some(cm) => {
            let at = format!("ConfigMap {}/{}", cm.namespace, cm.name);
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &cm.namespace);
            Some(match api.get_opt(&cm.name).await {
                Ok(Some(obj)) => config_map_bytes(&obj, &cm.key).map_err(|e| format!("{at}: {e}")),
                Ok(None) => Err(format!("{at} does not exist any more")),
                Err(e) => Err(format!("cannot read {at}: {e}")),
            })
        }
    };
    let restored = restore_bytecode(entry.number, data, config_map_now)
        .map_err(|why| anyhow::anyhow!("refusing to undo BpfProgram {name} to revision {}: {why}", entry.number))?;
    let patch = undo_patch(&program.spec, program.metadata.resource_version.as_deref(), &restored.bytecode, data);
    let params = PatchParams { field_manager: Some(args.field_manager.to_string()), ..Default::default() };
    programs
        .patch(name, &params, &Patch::Merge(&patch))
        .await
        .with_context(|| format!("cannot patch BpfProgram {name}"))?;
    if let Some(note) = &restored.note {
        writeln!(out, "note: {note}")?;
    }
    writeln!(
        out,
        "bpfprogram.bpfleet.dev/{name} rolled back to revision {}: spec.bytecode ({}), spec.programs, \
         spec.globalData and spec.maps restored",
        entry.number,
        history::source_summary(&restored.bytecode)
    )?;
    match expected_revision(&program.spec, &restored.bytecode, data) {
        Some(r) if r.as_str() != entry.hash => writeln!(
            out,
            "warning: the restored spec hashes to revision {r}, not {} as recorded; the operator rolls out {r}",
            entry.hash
        )?,
        _ => writeln!(out, "expected revision: {}", entry.hash)?,
    }
    if program.spec.rollout.as_ref().is_some_and(|r| r.paused) {
        writeln!(out, "the rollout is paused: run `kubectl bpfleet rollout resume {name}` to let it go on")?;
    }
    writeln!(out, "follow it with: kubectl bpfleet rollout status {name}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::tests::{data_cm, revision_object};

    fn entries(hashes: &[&str]) -> Vec<Entry> {
        let objects: Vec<ControllerRevision> =
            hashes.iter().enumerate().map(|(i, h)| revision_object(i as i64 + 1, h, data_cm(h.as_bytes()))).collect();
        history::entries(&objects)
    }

    #[test]
    fn the_default_target_is_the_newest_revision_that_is_not_current() {
        let e = entries(&["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "cccccccccccccccc"]);
        let pick = |current: &[&str], to| match choose_target(&e, current, to) {
            Ok(Target::Revert(e)) => Ok(e.number),
            Ok(Target::AlreadyCurrent(e)) => Err(format!("already {}", e.number)),
            Err(why) => Err(why),
        };
        assert_eq!(pick(&["cccccccccccccccc"], None), Ok(2));
        // Halted rollout: update revision c, status.revision c, the stable b is the target.
        assert_eq!(pick(&["cccccccccccccccc", "cccccccccccccccc"], None), Ok(2));
        // The current revision need not be the newest entry (a status not updated yet).
        assert_eq!(pick(&["bbbbbbbbbbbbbbbb"], None), Ok(3));
        assert_eq!(pick(&[], None), Ok(3));
        assert_eq!(pick(&["cccccccccccccccc"], Some(1)), Ok(1));
        assert_eq!(pick(&["cccccccccccccccc"], Some(3)), Err("already 3".into()));
        assert_eq!(
            pick(&["cccccccccccccccc"], Some(7)),
            Err("there is no revision 7 in the history (it has 1, 2, 3)".into())
        );
        let one = entries(&["aaaaaaaaaaaaaaaa"]);
        assert!(choose_target(&one, &["aaaaaaaaaaaaaaaa"], None).unwrap_err().contains("no earlier revision"));
    }

    fn data(v: Value) -> RevisionData {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn an_unchanged_config_map_is_restored_as_a_reference() {
        let d = data(data_cm(b"\x7fELF-old"));
        let r = restore_bytecode(2, &d, Some(Ok(b"\x7fELF-old".to_vec()))).unwrap();
        assert_eq!(r, Restored { bytecode: d.bytecode.clone(), note: None });
    }

    #[test]
    fn a_changed_or_missing_config_map_restores_the_recorded_bytes_inline() {
        let d = data(data_cm(b"\x7fELF-old"));
        let r = restore_bytecode(2, &d, Some(Ok(b"\x7fELF-new".to_vec()))).unwrap();
        assert_eq!(
            r.bytecode,
            BytecodeSource { inline: Some(B64.encode(b"\x7fELF-old").into()), ..Default::default() }
        );
        let note = r.note.unwrap();
        assert!(note.contains("now holds another object") && note.contains("spec.bytecode.inline"), "{note}");
        let r = restore_bytecode(2, &d, Some(Err("ConfigMap x/y does not exist any more".into()))).unwrap();
        assert!(r.bytecode.inline.is_some());
        assert!(r.note.unwrap().starts_with("ConfigMap x/y does not exist any more; restoring"));
    }

    #[test]
    fn a_changed_config_map_without_bytes_that_fit_inline_is_refused() {
        let big = vec![7u8; MAX_BYTECODE_BYTES + 1];
        let d = data(data_cm(&big));
        let err = restore_bytecode(2, &d, Some(Ok(b"other".to_vec()))).unwrap_err();
        assert!(err.contains("larger than inline bytecode allows") && err.contains("run undo again"), "{err}");
        // Exactly the limit still fits.
        let d = data(data_cm(&big[1..]));
        assert!(restore_bytecode(2, &d, Some(Ok(b"other".to_vec()))).unwrap().bytecode.inline.is_some());
        let mut no_elf = data_cm(b"old");
        no_elf.as_object_mut().unwrap().remove("elf");
        let err = restore_bytecode(2, &data(no_elf.clone()), Some(Ok(b"new".to_vec()))).unwrap_err();
        assert!(err.contains("does not record the object itself"), "{err}");
        // Without bytes, a matching digest is still enough to restore the reference.
        assert!(restore_bytecode(2, &data(no_elf), Some(Ok(b"old".to_vec()))).unwrap().note.is_none());
    }

    #[test]
    fn inline_and_path_sources_are_restored_as_recorded() {
        let d = data(
            json!({"bytecode": {"path": "/opt/x.o", "digest": format!("sha256:{}", "a".repeat(64))}, "programs": []}),
        );
        assert_eq!(restore_bytecode(1, &d, None).unwrap(), Restored { bytecode: d.bytecode.clone(), note: None });
    }

    fn spec(v: Value) -> BpfProgramSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_patch_replaces_every_restored_field_and_clears_what_the_revision_lacks() {
        let current = spec(json!({
            "bytecode": {"path": "/opt/new.o"},
            "globalData": {"SAMPLE_RATE": "ZAAAAA==", "NEW_FLAG": "AQ=="},
            "programs": [{"name": "new_fn", "type": "Tracepoint", "tracepoint": {"names": ["a/b"]}}],
            "maps": [{"name": "counts", "onUpgrade": "Recreate"}],
            "rollout": {"paused": true},
        }));
        let mut old = data_cm(b"old");
        old["globalData"] = json!({"SAMPLE_RATE": "CgAAAA=="});
        let old = data(old);
        let patch = undo_patch(&current, Some("42"), &old.bytecode, &old);
        assert_eq!(
            patch,
            json!({
                "metadata": {"resourceVersion": "42"},
                "spec": {
                    "bytecode": {"inline": null, "path": null, "digest": null,
                                 "configMap": {"name": "xdp-counter-bytecode", "namespace": "bpfleet-system", "key": "xdp_counter.o"}},
                    "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": ["eth0"], "mode": "Auto"}}],
                    "globalData": {"SAMPLE_RATE": "CgAAAA==", "NEW_FLAG": null},
                    "maps": null,
                    "metrics": null,
                }
            })
        );
    }

    #[test]
    fn the_restored_spec_hashes_to_the_recorded_revision() {
        let current = spec(json!({"bytecode": {"path": "/opt/new.o"}, "programs": []}));
        let old = data(data_cm(b"\x7fELF-old"));
        // What the operator computed for that spec, with the ConfigMap bytes.
        let mut then = current.clone();
        then.bytecode = old.bytecode.clone();
        then.programs = old.programs.clone();
        let hash = Revision::compute(&then, BytecodeIdentity::Bytes(b"\x7fELF-old"));
        assert_eq!(expected_revision(&current, &old.bytecode, &old), Some(hash.clone()));
        // Inline carries the same bytes, so the same revision.
        let inline = BytecodeSource { inline: Some(B64.encode(b"\x7fELF-old").into()), ..Default::default() };
        assert_eq!(expected_revision(&current, &inline, &old), Some(hash));
    }

    #[test]
    fn config_map_bytes_come_from_binary_data_or_base64_data() {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"},
            "binaryData": {"a.o": "f0VMRg=="}, "data": {"b.o": "f0VMRg==\n", "c.o": "not base64!"}}))
        .unwrap();
        assert_eq!(config_map_bytes(&cm, "a.o").unwrap(), b"\x7fELF");
        assert_eq!(config_map_bytes(&cm, "b.o").unwrap(), b"\x7fELF");
        assert!(config_map_bytes(&cm, "c.o").unwrap_err().contains("not base64"));
        assert_eq!(config_map_bytes(&cm, "d.o").unwrap_err(), "the ConfigMap has no key d.o");
    }
}
