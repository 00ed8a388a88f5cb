//! `rollout history`: a BpfProgram's revisions as the operator keeps them
//! (ControllerRevisions, see `crds::history`), as a table or one in detail.

use std::io::Write;

use anyhow::Context as _;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use crds::BpfProgram;
use crds::history::{ANNOTATION_PROGRAM, LABEL_PROGRAM_UID, LABEL_REVISION, RevisionData, owned_by_program};
use crds::program::BytecodeSource;
use crds::revision::Sha256Digest;
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::Api;
use kube::api::ListParams;

use crate::table;

/// One revision of the history, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// `.revision`: the sequence number users pick with `--to-revision`.
    pub number: i64,
    /// The revision hash (label [`LABEL_REVISION`]).
    pub hash: String,
    /// The ControllerRevision's name.
    pub object: String,
    /// RFC 3339 creation time.
    pub created: Option<String>,
    /// The data, or why it could not be read (written by a newer operator, say).
    pub data: Result<RevisionData, String>,
}

impl Entry {
    pub fn from_object(cr: &ControllerRevision) -> Entry {
        let labels = cr.metadata.labels.as_ref();
        let data = match &cr.data {
            Some(raw) => serde_json::from_value::<RevisionData>(raw.0.clone())
                .map_err(|e| format!("{} holds data this plugin cannot read: {e}", name_of(cr))),
            None => Err(format!("{} has no data", name_of(cr))),
        };
        Entry {
            number: cr.revision,
            hash: labels.and_then(|l| l.get(LABEL_REVISION)).cloned().unwrap_or_default(),
            object: name_of(cr),
            created: cr.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
            data,
        }
    }
}

fn name_of(cr: &ControllerRevision) -> String {
    cr.metadata.name.clone().unwrap_or_default()
}

/// Entries sorted by sequence number, oldest first.
pub fn entries(objects: &[ControllerRevision]) -> Vec<Entry> {
    let mut v: Vec<Entry> = objects.iter().map(Entry::from_object).collect();
    v.sort_by_key(|e| e.number);
    v
}

/// The revisions the program's status names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// Being rolled out or running: `status.rollout.updateRevision`, else `status.revision`.
    pub current: Option<String>,
    /// `status.rollout.stableRevision`.
    pub stable: Option<String>,
}

impl Marks {
    pub fn of(p: &BpfProgram) -> Marks {
        let status = p.status.as_ref();
        let rollout = status.and_then(|s| s.rollout.as_ref());
        Marks {
            current: rollout
                .and_then(|r| r.update_revision.clone())
                .or_else(|| status.and_then(|s| s.revision.clone())),
            stable: rollout.and_then(|r| r.stable_revision.clone()),
        }
    }

    pub fn is_current(&self, hash: &str) -> bool {
        self.current.as_deref() == Some(hash)
    }

    fn label(&self, hash: &str) -> String {
        let mut marks = Vec::new();
        if self.is_current(hash) {
            marks.push("current");
        }
        if self.stable.as_deref() == Some(hash) {
            marks.push("stable");
        }
        marks.join(",")
    }
}

/// `configMap ns/name[key]`, `inline`, `path /x.o`.
pub fn source_summary(b: &BytecodeSource) -> String {
    if let Some(cm) = &b.config_map {
        format!("configMap {}/{}[{}]", cm.namespace, cm.name, cm.key)
    } else if b.inline.is_some() {
        "inline".to_string()
    } else if let Some(p) = &b.path {
        format!("path {p}")
    } else {
        "none".to_string()
    }
}

/// `count_packets(XDP), count_openat(Tracepoint)`.
pub fn programs_summary(data: &RevisionData) -> String {
    data.programs.iter().map(|p| format!("{}({})", p.name, p.program_type)).collect::<Vec<_>>().join(", ")
}

pub fn render_table(entries: &[Entry], marks: &Marks) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let (source, programs) = match &e.data {
                Ok(d) => (source_summary(&d.bytecode), programs_summary(d)),
                Err(why) => ("?".to_string(), table::truncate(why, 60)),
            };
            vec![
                e.number.to_string(),
                e.hash.clone(),
                marks.label(&e.hash),
                e.created.clone().unwrap_or_default(),
                source,
                programs,
            ]
        })
        .collect();
    table::render(&["REVISION", "HASH", "MARK", "CREATED", "BYTECODE", "PROGRAMS"], &rows)
}

/// Size and digest of the recorded ELF, and whether the digest matches the bytes.
pub fn elf_summary(data: &RevisionData) -> String {
    match &data.elf {
        None => {
            let b = &data.bytecode;
            let source = match (&b.config_map, &b.inline, &b.image) {
                (Some(cm), _, _) => format!("kept in ConfigMap {}/{}, another namespace", cm.namespace, cm.name),
                (_, Some(_), _) => "in spec.bytecode.inline".to_string(),
                (_, _, Some(image)) => format!("pulled again from {}", image.url),
                _ => "node-local file".to_string(),
            };
            match &data.digest {
                Some(d) => format!("not recorded ({source}, digest {d})"),
                None => format!("not recorded ({source})"),
            }
        }
        Some(b64) => match B64.decode(b64.trim()) {
            Err(e) => format!("recorded but not valid base64 ({e})"),
            Ok(bytes) => {
                let actual = Sha256Digest::of(&bytes);
                let check = match &data.digest {
                    Some(d) if d == actual.as_str() => String::new(),
                    Some(d) => format!(" (the recorded digest {d} does NOT match these bytes)"),
                    None => String::new(),
                };
                format!("{} bytes, {actual}{check}", bytes.len())
            }
        },
    }
}

/// One revision: its identity, the ELF's size and digest, and its data as YAML without
/// the ELF bytes.
pub fn render_detail(program: &str, e: &Entry, marks: &Marks) -> anyhow::Result<String> {
    let mut out = format!("BpfProgram {program}, revision {} (hash {})", e.number, e.hash);
    let label = marks.label(&e.hash);
    if !label.is_empty() {
        out.push_str(&format!(" [{label}]"));
    }
    out.push('\n');
    out.push_str(&format!("Object:   ControllerRevision {}\n", e.object));
    if let Some(c) = &e.created {
        out.push_str(&format!("Created:  {c}\n"));
    }
    let data = match &e.data {
        Ok(d) => d,
        Err(why) => anyhow::bail!("{why}"),
    };
    out.push_str(&format!("ELF:      {}\n", elf_summary(data)));
    let mut shown = data.clone();
    shown.elf = None;
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(&shown)?);
    Ok(out)
}

/// The program's revisions, oldest first, from `namespace`.
pub async fn list(revisions: &Api<ControllerRevision>, program: &BpfProgram) -> anyhow::Result<Vec<Entry>> {
    let name = program.metadata.name.as_deref().unwrap_or_default();
    let uid = program.metadata.uid.as_deref().context("the BpfProgram has no uid")?;
    let objects = revisions
        .list(&ListParams::default().labels(&format!("{LABEL_PROGRAM_UID}={uid}")))
        .await
        .with_context(|| format!("cannot list the ControllerRevisions of BpfProgram {name}"))?;
    // The label is what the operator selects by; the annotation guards against a uid
    // label copied onto something else; only entries the operator wrote for this very
    // program (its controller owner reference) are history at all.
    let owned: Vec<ControllerRevision> = objects
        .items
        .into_iter()
        .filter(|cr| cr.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_PROGRAM)).is_none_or(|n| n == name))
        .filter(|cr| owned_by_program(&cr.metadata, uid))
        .collect();
    Ok(entries(&owned))
}

pub async fn run(
    programs: Api<BpfProgram>,
    revisions: Api<ControllerRevision>,
    namespace: &str,
    name: &str,
    revision: Option<i64>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let program = programs.get(name).await.with_context(|| format!("cannot read BpfProgram {name}"))?;
    let entries = list(&revisions, &program).await?;
    let marks = Marks::of(&program);
    match revision {
        None if entries.is_empty() => writeln!(
            out,
            "No revision history for BpfProgram {name} in namespace {namespace} (is the operator's namespace another? --namespace)"
        )?,
        None => write!(out, "{}", render_table(&entries, &marks))?,
        Some(n) => {
            let e = entries
                .iter()
                .find(|e| e.number == n)
                .with_context(|| format!("BpfProgram {name} has no revision {n}; it has {}", numbers(&entries)))?;
            write!(out, "{}", render_detail(name, e, &marks)?)?;
        }
    }
    Ok(())
}

/// `1, 2, 5` or `none`.
pub fn numbers(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "none".to_string();
    }
    entries.iter().map(|e| e.number.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{Value, json};

    pub fn revision_object(number: i64, hash: &str, data: Value) -> ControllerRevision {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": {"name": format!("xdp-counter-{hash}"), "namespace": "bpfleet-system",
                         "creationTimestamp": format!("2026-01-0{number}T10:00:00Z"),
                         "labels": {LABEL_PROGRAM_UID: "uid-1", LABEL_REVISION: hash},
                         "annotations": {ANNOTATION_PROGRAM: "xdp-counter"},
                         "ownerReferences": [{"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram",
                                              "name": "xdp-counter", "uid": "uid-1", "controller": true}]},
            "revision": number,
            "data": data,
        }))
        .unwrap()
    }

    pub fn data_cm(elf: &[u8]) -> Value {
        json!({
            "bytecode": {"configMap": {"name": "xdp-counter-bytecode", "namespace": "bpfleet-system", "key": "xdp_counter.o"}},
            "elf": B64.encode(elf),
            "digest": Sha256Digest::of(elf).as_str(),
            "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": ["eth0"], "mode": "Auto"}}],
        })
    }

    #[test]
    fn only_entries_the_operator_owns_are_history() {
        let mine = revision_object(1, "aaaaaaaaaaaaaaaa", data_cm(b"\x7fELF"));
        let owned_by = |cr: &ControllerRevision, uid: &str| owned_by_program(&cr.metadata, uid);
        assert!(owned_by(&mine, "uid-1"));
        assert!(!owned_by(&mine, "uid-2"), "another program's entry");
        let mut planted = mine.clone();
        planted.metadata.owner_references = None;
        assert!(!owned_by(&planted, "uid-1"), "labels alone do not make an entry");
        let mut not_controller = mine.clone();
        if let Some(o) = not_controller.metadata.owner_references.as_mut().and_then(|v| v.first_mut()) {
            o.controller = None;
        }
        assert!(!owned_by(&not_controller, "uid-1"));
    }

    fn marks() -> Marks {
        Marks { current: Some("cccccccccccccccc".into()), stable: Some("bbbbbbbbbbbbbbbb".into()) }
    }

    #[test]
    fn the_table_is_sorted_and_marks_current_and_stable() {
        let objects = vec![
            revision_object(3, "cccccccccccccccc", data_cm(b"\x7fELF3")),
            revision_object(
                1,
                "aaaaaaaaaaaaaaaa",
                json!({"bytecode": {"path": "/opt/x.o"}, "programs": [
                {"name": "count_openat", "type": "Tracepoint", "tracepoint": {"names": ["syscalls/sys_enter_openat"]}},
                {"name": "count_packets", "type": "XDP", "xdp": {"interfaces": ["eth0"]}}]}),
            ),
            revision_object(2, "bbbbbbbbbbbbbbbb", json!({"bytecode": {"inline": "f0VMRg=="}, "programs": []})),
            revision_object(4, "dddddddddddddddd", json!({"unknown": true})),
        ];
        let table = render_table(&entries(&objects), &marks());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].starts_with("REVISION   HASH               MARK      CREATED"), "{table}");
        assert!(lines[1].starts_with("1          aaaaaaaaaaaaaaaa             2026-01-01T10:00:00Z   path /opt/x.o"));
        assert!(lines[1].ends_with("count_openat(Tracepoint), count_packets(XDP)"));
        assert!(lines[2].contains("bbbbbbbbbbbbbbbb   stable ") && lines[2].contains("inline"));
        assert!(lines[3].contains("cccccccccccccccc   current") && lines[3].ends_with("count_packets(XDP)"));
        assert!(lines[3].contains("configMap bpfleet-system/xdp-counter-bytecode[xdp_counter.o]"));
        assert!(lines[4].contains("holds data this plugin can"), "{table}");
    }

    #[test]
    fn a_detail_shows_the_data_without_the_elf_bytes() {
        let e = Entry::from_object(&revision_object(3, "cccccccccccccccc", data_cm(b"\x7fELF-three")));
        let text = render_detail("xdp-counter", &e, &marks()).unwrap();
        let digest = Sha256Digest::of(b"\x7fELF-three");
        assert!(text.starts_with("BpfProgram xdp-counter, revision 3 (hash cccccccccccccccc) [current]\n"), "{text}");
        assert!(text.contains(&format!("ELF:      10 bytes, {digest}\n")), "{text}");
        assert!(!text.contains("elf:"), "{text}");
        assert!(text.contains("key: xdp_counter.o") && text.contains("name: count_packets"), "{text}");
        assert!(text.contains(&format!("digest: {digest}")), "{text}");
    }

    #[test]
    fn a_digest_that_does_not_match_the_bytes_is_called_out() {
        let mut d = data_cm(b"one");
        d["digest"] = json!(Sha256Digest::of(b"two").as_str());
        let data: RevisionData = serde_json::from_value(d).unwrap();
        assert!(elf_summary(&data).contains("does NOT match"), "{}", elf_summary(&data));
        let path: RevisionData = serde_json::from_value(json!({"bytecode": {"path": "/x.o"}, "programs": []})).unwrap();
        assert_eq!(elf_summary(&path), "not recorded (node-local file)");
        // A ConfigMap of another namespace than the operator's is recorded by reference.
        let mut d = data_cm(b"one");
        d["bytecode"]["configMap"]["namespace"] = json!("team-a");
        d.as_object_mut().unwrap().remove("elf");
        let by_reference: RevisionData = serde_json::from_value(d).unwrap();
        assert_eq!(
            elf_summary(&by_reference),
            format!(
                "not recorded (kept in ConfigMap team-a/xdp-counter-bytecode, another namespace, digest {})",
                Sha256Digest::of(b"one")
            )
        );
    }
}
