//! Golden revisions: an upgrade of bpfleet never rolls the fleet by itself.
//!
//! A node re-applies a BpfProgram when its revision changes. If a new release computed
//! another revision for an unchanged spec, every node would re-apply every program after
//! the upgrade, though no user changed anything. `golden/specs/*.yaml` is a corpus of
//! manifests (every program type, every bytecode source, global data, map policies,
//! rollout settings, node selectors) and `golden/revisions.txt` pins the revision the
//! operator computes for each. `BPFLEET_BLESS_REVISIONS=1` rewrites the golden file, for
//! a deliberate change only.

mod apiserver;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use crds::program::ImageBytecode;
use crds::revision::{BytecodeIdentity, Revision, Sha256Digest};
use crds::rollout::{OnFailure, RolloutSpec, Strategy};
use crds::validate::validate_spec;
use crds::{BpfProgram, BpfProgramStatus, ProgramType};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResourceExt;
use serde_json::{Value, json};

const BLESS: &str = "BPFLEET_BLESS_REVISIONS";
const REGENERATE: &str = "BPFLEET_BLESS_REVISIONS=1 cargo test -p crds --test revisions";
const GOLDEN_FILE: &str = "crds/tests/golden/revisions.txt";

fn golden() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// What the ConfigMap of every `configMap` spec holds, and the ELF layer of every
/// `image` spec's image: an ELF identification header, then bytes of a fixed xorshift32
/// up to 4 KiB. Part of the golden input: never change it.
fn object() -> Vec<u8> {
    let mut out = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
    let mut x: u32 = 0x2545_f491;
    while out.len() < 4096 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(x as u8);
    }
    out
}

const OBJECT_DIGEST: &str = "sha256:2bdea2ab6b5769dc52df3008bff2c481d0c97d8169a0cece2699cee186f114fd";

/// The corpus: (file name, the manifest as written, the manifest parsed), by file name.
fn corpus() -> Vec<(String, Value, BpfProgram)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(golden().join("specs")).expect("crds/tests/golden/specs") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let file = path.file_name().and_then(|f| f.to_str()).expect("a UTF-8 file name").to_string();
        let text = std::fs::read_to_string(&path).expect("a readable spec");
        let raw: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let parsed: BpfProgram = serde_json::from_value(raw.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
        out.push((file, raw, parsed));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 20, "only {} specs in crds/tests/golden/specs", out.len());
    out
}

/// The revision the operator computes for `p` when its ConfigMap or image holds
/// `object`: operator/src/bytecode.rs `resolve` (inline decoded after a trim, path and
/// digest passed through, a ConfigMap's key read as bytes), operator/src/image.rs
/// `Images::resolve` (the ELF of the pulled image: neither its url nor its digest) and
/// `Payload::revision`.
fn revision(p: &BpfProgram, object: &[u8]) -> Revision {
    let src = &p.spec.bytecode;
    if let Some(b64) = &src.inline {
        let bytes = B64.decode(b64.trim()).expect("inline bytecode is base64");
        return Revision::compute(&p.spec, BytecodeIdentity::Bytes(&bytes));
    }
    if let Some(path) = &src.path {
        let digest = src.digest.as_deref().map(|d| Sha256Digest::parse(d).expect("a canonical digest"));
        return Revision::compute(&p.spec, BytecodeIdentity::Path(path, digest.as_ref()));
    }
    assert!(src.config_map.is_some() || src.image.is_some(), "a spec without bytecode");
    Revision::compute(&p.spec, BytecodeIdentity::Bytes(object))
}

fn parse_golden(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (file, rev) = l.split_once(' ').unwrap_or_else(|| panic!("{GOLDEN_FILE}: bad line {l:?}"));
            (file.to_string(), rev.trim().to_string())
        })
        .collect()
}

fn render_golden(revisions: &BTreeMap<String, String>) -> String {
    let mut out = format!(
        "# The revision the operator computes for each spec of crds/tests/golden/specs (crds/tests/revisions.rs).\n\
         # A changed line means every node re-applies that BpfProgram after an upgrade.\n\
         # Regenerate only for a deliberate change: {REGENERATE}\n"
    );
    for (file, rev) in revisions {
        out.push_str(&format!("{file} {rev}\n"));
    }
    out
}

#[test]
fn the_object_is_fixed() {
    assert_eq!(
        Sha256Digest::of(&object()).as_str(),
        OBJECT_DIGEST,
        "object() is part of the golden input: restore it rather than blessing new revisions"
    );
}

#[test]
fn revisions_of_the_corpus_are_pinned() {
    let object = object();
    let now: BTreeMap<String, String> =
        corpus().iter().map(|(file, _, p)| (file.clone(), revision(p, &object).to_string())).collect();
    let path = golden().join("revisions.txt");
    if std::env::var(BLESS).is_ok_and(|v| v == "1") {
        std::fs::write(&path, render_golden(&now)).expect("write the golden file");
        eprintln!("{BLESS}=1: wrote {} revisions to {GOLDEN_FILE}", now.len());
        return;
    }
    let pinned = parse_golden(&std::fs::read_to_string(&path).unwrap_or_default());
    let mut changed = Vec::new();
    let mut unpinned = Vec::new();
    for (file, rev) in &now {
        match pinned.get(file) {
            Some(old) if old == rev => {}
            Some(old) => changed.push(format!("  {file}: pinned {old}, now {rev}")),
            None => unpinned.push(format!("  {file}: not pinned yet (now {rev})")),
        }
    }
    let gone: Vec<String> = pinned
        .keys()
        .filter(|f| !now.contains_key(*f))
        .map(|f| format!("  {f}: pinned, but no longer in crds/tests/golden/specs"))
        .collect();
    let mut msg = String::new();
    if !changed.is_empty() {
        msg.push_str(&format!(
            "{} of {} BpfProgram revisions differ from {GOLDEN_FILE}:\n{}\n\n\
             A changed revision means that after an upgrade to this build every node re-applies every \
             BpfProgram whose spec did not change: the operator rolls the \"new\" revision out across \
             the fleet (steps, pauses, every program loaded again with new program ids) though no \
             user asked for it.\n\
             Usual causes: a field added to programs[], globalData or maps that is serialised at its \
             default (give it `skip_serializing_if` so specs that do not set it hash as before; \
             `Revision::compute` hashes `maps` and the path digest only when set for that reason), \
             a field of those structs reordered or renamed, a change to `Revision::compute`, or to \
             how the operator resolves bytecode.\n\
             Only if every program must roll on upgrade (say so in the release notes), regenerate \
             and commit {GOLDEN_FILE}:\n    {REGENERATE}\n",
            changed.len(),
            now.len(),
            changed.join("\n")
        ));
    }
    if !unpinned.is_empty() || !gone.is_empty() {
        msg.push_str(&format!(
            "\nThe corpus and {GOLDEN_FILE} disagree:\n{}\n\
             A spec added to the corpus is pinned, and one removed is unpinned, by regenerating:\n    {REGENERATE}\n\
             (check first that no existing line changes).\n",
            unpinned.iter().chain(&gone).cloned().collect::<Vec<_>>().join("\n")
        ));
    }
    assert!(msg.is_empty(), "\n{msg}");
}

/// Strings of every `enum` in a schema node's `enum` list.
fn enum_values(s: &Value) -> Vec<String> {
    s["enum"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
}

fn spec_schema() -> Value {
    let crd = serde_json::to_value(BpfProgram::crd()).expect("the CRD serialises");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

#[test]
fn corpus_has_every_program_type() {
    let schema = spec_schema();
    let mut want: BTreeSet<String> =
        enum_values(&schema["properties"]["programs"]["items"]["properties"]["type"]).into_iter().collect();
    want.extend(ProgramType::ALL.iter().map(|t| t.as_str().to_string()));
    assert!(want.len() >= 12, "the schema lists {want:?}");
    let have: BTreeSet<String> = corpus()
        .iter()
        .flat_map(|(_, _, p)| p.spec.programs.iter().map(|q| q.program_type.as_str().to_string()))
        .collect();
    let missing: Vec<&String> = want.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "program types without a spec in crds/tests/golden/specs: {missing:?}. Add one spec per type (so \
         its revision is pinned before any release ships it), then pin it: {REGENERATE}"
    );
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// Every leaf of a schema: `programs[].xdp.mode`, `globalData` (a map), `programs[].xdp.interfaces[]`.
fn schema_fields(s: &Value, path: &str, out: &mut BTreeSet<String>) {
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            schema_fields(v, &join(path, k), out);
        }
    } else if let Some(items) = s.get("items") {
        schema_fields(items, &format!("{path}[]"), out);
    } else {
        out.insert(path.to_string());
    }
}

/// Every path a manifest sets, in the same notation.
fn set_fields(v: &Value, path: &str, out: &mut BTreeSet<String>) {
    out.insert(path.to_string());
    match v {
        Value::Object(m) => m.iter().for_each(|(k, v)| set_fields(v, &join(path, k), out)),
        Value::Array(a) => a.iter().for_each(|v| set_fields(v, &format!("{path}[]"), out)),
        _ => {}
    }
}

#[test]
fn corpus_sets_every_spec_field() {
    let mut want = BTreeSet::new();
    schema_fields(&spec_schema(), "", &mut want);
    let mut have = BTreeSet::new();
    for (_, raw, _) in corpus() {
        set_fields(&raw["spec"], "", &mut have);
    }
    let missing: Vec<&String> = want.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "spec fields that no spec in crds/tests/golden/specs sets: {missing:?}. Add a spec that sets each \
         (so a release cannot change how it hashes unnoticed), then pin it: {REGENERATE}"
    );
}

#[test]
fn corpus_specs_are_accepted() {
    // The operator computes no revision for a spec the API server or the validation
    // refuses: such a spec would pin nothing.
    let crd = BpfProgram::crd();
    for (file, raw, p) in corpus() {
        apiserver::admit(&crd, &raw).unwrap_or_else(|e| panic!("{file}: {e:#?}"));
        validate_spec(&p.spec).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

/// The manifest with every defaulted field the API server fills in written out.
fn with_defaults_written(mut raw: Value) -> Value {
    let spec = &mut raw["spec"];
    for (field, default) in [("nodeSelector", json!({})), ("globalData", json!({})), ("maps", json!([]))] {
        if spec.get(field).is_none() {
            spec[field] = default;
        }
    }
    for m in spec["maps"].as_array_mut().into_iter().flatten() {
        m.as_object_mut().map(|m| m.entry("onUpgrade").or_insert(json!("Keep")));
    }
    for p in spec["programs"].as_array_mut().into_iter().flatten() {
        for (block, field, default) in [
            ("xdp", "mode", json!("Auto")),
            ("tc", "priority", json!(1000)),
            ("kprobe", "offset", json!(0)),
            ("kretprobe", "offset", json!(0)),
        ] {
            if let Some(b) = p.get_mut(block).and_then(Value::as_object_mut) {
                b.entry(field).or_insert(default);
            }
        }
    }
    if let Some(img) = spec["bytecode"].get_mut("image").and_then(Value::as_object_mut) {
        img.entry("pullPolicy").or_insert(json!("IfNotPresent"));
    }
    raw
}

#[test]
fn what_the_revision_leaves_out() {
    let object = object();
    for (file, raw, p) in corpus() {
        let base = revision(&p, &object);
        let same = |what: &str, q: &BpfProgram| {
            assert_eq!(revision(q, &object), base, "{file}: {what} changed the revision");
        };

        // Where and how it rolls out, and everything outside the spec.
        let mut q = p.clone();
        q.spec.node_selector = LabelSelector {
            match_labels: Some([("pool".to_string(), "edge".to_string())].into()),
            ..Default::default()
        };
        same("the node selector", &q);
        q.spec.node_selector = LabelSelector::default();
        same("an empty node selector", &q);
        let mut q = p.clone();
        q.spec.rollout = None;
        q.spec.revision_history_limit = None;
        same("removing the rollout settings", &q);
        q.spec.rollout = Some(RolloutSpec {
            strategy: Strategy::AllAtOnce,
            max_in_flight: Some(IntOrString::String("50%".into())),
            failure_threshold: 7,
            on_failure: OnFailure::Rollback,
            progress_deadline_seconds: Some(60),
            paused: true,
            ..Default::default()
        });
        q.spec.revision_history_limit = Some(42);
        same("other rollout settings and revisionHistoryLimit", &q);
        let mut q = p.clone();
        q.metadata.name = Some("renamed".into());
        q.metadata.uid = Some("0b7e9f0a-5c1d-4a8e-9d3f-2e6c8b1a4f70".into());
        q.metadata.generation = Some(99);
        q.metadata.labels = Some([("team".to_string(), "net".to_string())].into());
        q.metadata.annotations = Some([("bpfleet.dev/resolve-image".to_string(), "2".to_string())].into());
        q.status = Some(BpfProgramStatus { revision: Some("0000000000000000".into()), ..Default::default() });
        same("metadata and status", &q);

        // Defaults written out, as the API server stores them.
        let q: BpfProgram = serde_json::from_value(with_defaults_written(raw.clone())).expect("defaults parse");
        same("writing the defaults out", &q);

        // The operator hashes the bytes it resolved, never where they came from: a
        // ConfigMap or image holding the same object is the same revision, wherever it is.
        let src = &p.spec.bytecode;
        if src.config_map.is_some() || src.image.is_some() {
            let mut q = p.clone();
            q.spec.bytecode = Default::default();
            q.spec.bytecode.inline = Some(B64.encode(&object).into());
            same("inline bytes equal to the ConfigMap's or image's", &q);
            let mut q = p.clone();
            q.spec.bytecode = Default::default();
            q.spec.bytecode.image = Some(ImageBytecode {
                url: "other.example/moved/elsewhere:v9".into(),
                digest: Some(Sha256Digest::of(b"another manifest").to_string()),
                pull_policy: crds::program::PullPolicy::Never,
                pull_secret: Some("other-creds".into()),
            });
            same("another image (url, digest, pull settings) with the same ELF", &q);
            // ...and the bytes are pinned: another object is another revision.
            assert_ne!(revision(&p, b"\x7fELF another object"), base, "{file}: the object's bytes are not hashed");
        }
    }
}

#[test]
fn the_order_written_is_part_of_the_revision() {
    // As docs/architecture.md says: programs, interfaces and map policies are hashed as
    // listed, so a reordered list is a new revision (and a release that sorted them
    // before hashing would roll every unsorted spec: the golden file would say so).
    let object = object();
    let (file, _, p) = corpus().into_iter().find(|(f, _, _)| f == "everything.yaml").expect("everything.yaml");
    let base = revision(&p, &object);
    let mut q = p.clone();
    q.spec.programs.reverse();
    assert_ne!(revision(&q, &object), base, "{file}: programs reordered");
    let mut q = p.clone();
    q.spec.programs[0].xdp.as_mut().expect("an XDP program first").interfaces.reverse();
    assert_ne!(revision(&q, &object), base, "{file}: interfaces reordered");
    let mut q = p.clone();
    q.spec.maps.reverse();
    assert_ne!(revision(&q, &object), base, "{file}: map policies reordered");
}
