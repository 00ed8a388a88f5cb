//! The bodies of the cargo-fuzz targets in `fuzz/`, kept here so the corpus replay test
//! (`tests/fuzz_corpus.rs`, run by `cargo test`) feeds every corpus file through exactly
//! what the fuzzer ran. Each takes arbitrary bytes and must return without panicking,
//! whatever it is given; only pure code is reached (no kernel, no file reads).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crds::names::{MapName, OwnerUid};
use crds::revision::Revision;
use crds::validate::{validate_global_bytes, validate_programs, validate_spec};
use crds::{BpfProgram, BpfProgramSpec, ProgramType};
use prost::Message;
use proto::v1;

use crate::apply_plan;

/// Where node-local bytecode paths are pointed: nothing is ever read from the fuzzer's
/// machine (an input naming `/dev/zero` or a FIFO would otherwise block or allocate).
const NO_SUCH_FILE: &str = "/nonexistent/bpfleet-fuzz/object.o";

/// ELF intake: the checks `Manager::load_blocking` runs before anything is loaded.
pub fn elf_intake(data: &[u8]) {
    let Ok(info) = crate::elf::inspect(data) else { return };
    for name in info.programs.keys().map(String::as_str).chain(["", "missing"]) {
        for t in ProgramType::ALL {
            let _ = info.check_program(name, t);
        }
    }
    // Every global at its own size (accepted) and one byte longer (refused).
    let exact: Vec<_> = info
        .globals
        .iter()
        .filter_map(|(name, (size, _))| Some((crds::names::GlobalName::new(name).ok()?, usize::try_from(*size).ok()?)))
        .filter(|(_, size)| *size <= 4096)
        .collect();
    let fits: Vec<_> = exact.iter().map(|(n, s)| (n.clone(), vec![0u8; *s])).collect();
    let _ = info.check_globals(&fits);
    let off: Vec<_> = exact.iter().map(|(n, s)| (n.clone(), vec![0u8; s + 1])).collect();
    let _ = info.check_globals(&off);
    for name in info.maps.keys() {
        let _ = MapName::new(name);
    }
    // The map plan against itself (every map reused) and against nothing pinned.
    let none = BTreeMap::new();
    let recreate: BTreeSet<String> = info.maps.keys().cloned().collect();
    for pinned in [&info.maps, &none] {
        let now = apply_plan::MapsNow {
            object: &info.maps,
            pinned,
            recreate: &recreate,
            shared: &BTreeMap::new(),
            previous: None,
        };
        let _ = apply_plan::maps(&now, |n: &str| PathBuf::from(n), |n: &str| PathBuf::from(n)).recreated();
    }
}

/// Manifests: every YAML (or JSON) document as a `BpfProgram` and as a bare spec,
/// through the validation the operator and a standalone agent run.
pub fn manifest(data: &[u8]) {
    if let Ok(obj) = serde_json::from_slice::<BpfProgram>(data) {
        bpf_program(obj);
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    // As a standalone agent reads a manifest file.
    for (_, doc) in crate::standalone::documents(text) {
        if let Ok(obj) = doc {
            bpf_program(obj);
        }
    }
    // Every document as a bare spec (the operator validates specs of any origin).
    for doc in serde_yaml::Deserializer::from_str(text) {
        match <serde_yaml::Value as serde::Deserialize>::deserialize(doc) {
            Ok(value) => {
                if let Ok(spec) = serde_yaml::from_value::<BpfProgramSpec>(value) {
                    spec_checks(&spec);
                }
            }
            // serde_yaml repeats a syntax error forever (see `standalone::documents`).
            Err(_) => break,
        }
    }
}

fn spec_checks(spec: &BpfProgramSpec) {
    let _ = validate_spec(spec);
    if let Some(r) = &spec.rollout {
        let _ = crds::rollout::validate(r);
    }
}

fn bpf_program(mut obj: BpfProgram) {
    spec_checks(&obj.spec);
    if obj.spec.bytecode.path.is_some() {
        obj.spec.bytecode.path = Some(NO_SUCH_FILE.into());
    }
    let _ = crate::request::input_from_manifest(&obj);
}

/// gRPC messages: the same bytes decoded as each request and response, then converted
/// as the agent (requests) and the operator (responses) convert them.
pub fn wire(data: &[u8]) {
    if let Ok(req) = v1::ApplyRequest::decode(data) {
        for p in req.programs.iter().cloned() {
            if let Ok(spec) = proto::program_from_wire(p) {
                let _ = validate_programs(std::slice::from_ref(&spec));
            }
        }
        for m in req.maps.iter().cloned() {
            let _ = proto::map_policy_from_wire(m);
        }
        let _ = validate_global_bytes(req.global_data.iter());
        let _ = crate::server::input_from_wire(without_file_reads(req));
    }
    if let Ok(req) = v1::RemoveRequest::decode(data) {
        let _ = req.owner.map(|o| OwnerUid::new(o.uid));
    }
    if let Ok(resp) = v1::ApplyResponse::decode(data) {
        let _ = resp.state.as_ref().map(proto::state_to_status);
    }
    if let Ok(ev) = v1::WatchEvent::decode(data) {
        let _ = ev.state.as_ref().map(proto::state_to_status);
    }
    if let Ok(list) = v1::ListResponse::decode(data) {
        let _: Vec<_> = list.owners.iter().map(proto::state_to_status).collect();
        // The same bytes as a page request over these owners, as `Agent::list` pages.
        if let Ok(req) = v1::ListRequest::decode(data) {
            let size = (req.page_size as usize).max(1);
            let _ = crate::server::page(list.owners, &req.page_token, size, crds::limits::MAX_LIST_PAGE_BYTES);
        }
    }
}

/// A path the agent would read is replaced; one it refuses unread is kept.
fn without_file_reads(mut req: v1::ApplyRequest) -> v1::ApplyRequest {
    if let Some(v1::apply_request::Bytecode::Path(p)) = &req.bytecode
        && p.starts_with('/')
        && !p.split('/').any(|s| s == "..")
    {
        req.bytecode = Some(v1::apply_request::Bytecode::Path(NO_SUCH_FILE.into()));
    }
    req
}

/// Owner records: a state-directory file's bytes, then what start-up and the next Apply
/// derive from a record.
pub fn owner_record(data: &[u8]) {
    let Ok(record) = crate::store::parse_record_bytes(data) else { return };
    let _ = OwnerUid::new(&record.uid);
    let _ = Revision::parse(&record.revision);
    let _ = validate_programs(&record.spec);
    for p in &record.programs {
        for l in &p.links {
            let _ = l.kind.pin();
        }
    }
    let current = apply_plan::Current { record: Some(&record), set_aside: None, problems: &[] };
    let _ = apply_plan::plan(&current, &record.revision);
    let none = BTreeMap::new();
    let recreate = record.maps.iter().map(|m| m.name.clone()).collect();
    let now = apply_plan::MapsNow {
        object: &none,
        pinned: &none,
        recreate: &recreate,
        shared: &BTreeMap::new(),
        previous: Some(&record),
    };
    let _ = apply_plan::maps(&now, |n: &str| PathBuf::from(n), |n: &str| PathBuf::from(n));
}
