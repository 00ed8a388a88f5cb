//! ReadMaps over the agent's real gRPC API with mTLS, checked against the kernel: every
//! entry's key and value bytes against `bpftool map dump` of the same pin, the BTF the
//! answer carries decodes the maps' own types, and every bound (entries, bytes, time)
//! ends an answer with words that say so. Nothing of the owner changes.
//!
//! `examples/bpf/testdata/probe_counters.c` counts this test process's getppid(2) calls
//! into maps of several shapes (arrays, per-CPU array and hash, a struct-keyed hash, a
//! ring buffer).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::process::*;
use common::*;
use proto::v1;
use proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

const OBJECT: &str = "probe_counters.o";
const PROGRAM: &str =
    "  - {name: count_getppid, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_getppid]}}\n";

fn read_req(uid: &str, map: &str, max_entries: u32, max_bytes: u32) -> v1::ReadMapsRequest {
    v1::ReadMapsRequest {
        owner_uid: uid.into(),
        map: map.into(),
        max_entries,
        max_bytes,
        timeout_ms: 0,
        node_name: String::new(),
    }
}

/// Every entry of the map pinned at `pin` as bpftool dumps it: key bytes -> the value
/// bytes of each CPU (one for a plain map).
fn bpftool_dump(pin: &Path) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
    let out = sh(&format!("bpftool -j map dump pinned {}", pin.display()));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    let bytes = |a: &serde_json::Value| -> Vec<u8> {
        a.as_array()
            .unwrap_or_else(|| panic!("no bytes in {a}"))
            .iter()
            .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
            .collect()
    };
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let values = match e.get("values") {
                Some(per_cpu) => per_cpu.as_array().unwrap().iter().map(|c| bytes(&c["value"])).collect(),
                None => vec![bytes(&e["value"])],
            };
            (bytes(&e["key"]), values)
        })
        .collect()
}

fn entries(m: &v1::MapDump) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
    m.entries.iter().map(|e| (e.key.to_vec(), e.values.iter().map(|v| v.to_vec()).collect())).collect()
}

async fn start(dirs: &Dirs, uid: &str) -> (AgentProc, AgentClient<Channel>, v1::OwnerState) {
    let mut agent = AgentProc::spawn_tls(dirs, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let mut req = apply_request(uid, PROGRAM, OBJECT);
    req.global_data.insert("TARGET_TGID".into(), std::process::id().to_le_bytes().to_vec().into());
    let state = client.apply(req).await.expect("apply probe_counters").into_inner().state.unwrap();
    (agent, client, state)
}

/// Each readable map's entries are bpftool's, byte for byte (per-CPU values per CPU); the
/// BTF decodes the maps' key and value types by name; a ring buffer says it has no
/// entries; the owner's programs are the same kernel objects afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_is_what_bpftool_dumps_and_the_btf_names_the_types() {
    let dirs = Dirs::new("read-maps");
    let (_agent, mut client, state) = start(&dirs, "read-maps").await;
    for _ in 0..300 {
        // SAFETY: getppid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let answer = client.read_maps(read_req("read-maps", "", 0, 0)).await.unwrap().into_inner();
    assert_eq!(answer.revision, state.revision);
    let names: Vec<&str> = answer.maps.iter().map(|m| m.name.as_str()).collect();
    for want in ["calls", "calls_percpu", "per_key", "wide_key", "events"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let pins: BTreeMap<&str, &str> = state.maps.iter().map(|m| (m.name.as_str(), m.pin_path.as_str())).collect();
    let mut compared = 0;
    for m in &answer.maps {
        if m.name == "events" {
            assert_eq!(m.type_name, "RingBuf");
            assert!(m.error.contains("ring buffer holds events"), "{}", m.error);
            assert!(m.entries.is_empty());
            continue;
        }
        assert!(m.error.is_empty() && m.truncated.is_empty(), "{}: {} {}", m.name, m.error, m.truncated);
        let kernel = bpftool_dump(Path::new(pins[m.name.as_str()]));
        assert_eq!(entries(m), kernel, "map {} differs from bpftool's dump", m.name);
        assert!(!m.btf.is_empty(), "map {} has BTF: {}", m.name, m.btf_note);
        let btf = mapview::Btf::parse(&m.btf).unwrap_or_else(|e| panic!("{}: {e}", m.name));
        assert_eq!(btf.size_of(m.btf_value_type_id), Some(m.value_size), "{}", m.name);
        assert_eq!(btf.size_of(m.btf_key_type_id), Some(m.key_size), "{}", m.name);
        compared += 1;
    }
    assert!(compared >= 4, "{compared} maps compared");
    let percpu = answer.maps.iter().find(|m| m.name == "calls_percpu").unwrap();
    assert_eq!(percpu.type_name, "PerCpuArray");
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    assert!(
        percpu.values_per_entry >= 1
            && percpu.entries.iter().all(|e| e.values.len() == percpu.values_per_entry as usize),
        "{cpus}"
    );
    let wide = answer.maps.iter().find(|m| m.name == "wide_key").unwrap();
    let btf = mapview::Btf::parse(&wide.btf).unwrap();
    assert_eq!(btf.type_name(wide.btf_key_type_id), "struct wide");
    // Nothing changed: the same program, read again.
    let again = client.list(v1::ListRequest::default()).await.unwrap().into_inner();
    let owner = again.owners.iter().find(|o| o.owner.as_ref().unwrap().uid == "read-maps").unwrap();
    assert_eq!(owner.attached[0].program_id, state.attached[0].program_id);
}

/// The bounds: entries per map and bytes end an answer with a sentence saying which; a
/// map the revision does not have names those it has; requests past the agent's limits
/// and for another node are refused; an owner that runs nothing gets an empty answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_cut_answers_with_words_and_bad_requests_are_refused() {
    let dirs = Dirs::new("read-limits");
    let (_agent, mut client, _state) = start(&dirs, "read-limits").await;
    let one = client.read_maps(read_req("read-limits", "calls", 1, 0)).await.unwrap().into_inner();
    assert_eq!(one.maps.len(), 1);
    assert_eq!(one.maps[0].entries.len(), 1);
    assert!(one.maps[0].truncated.contains("only the first 1 are here"), "{}", one.maps[0].truncated);
    let small = client.read_maps(read_req("read-limits", "calls", 0, 16)).await.unwrap().into_inner();
    assert!(small.maps[0].truncated.contains("byte limit"), "{:?}", small.maps[0]);

    let missing = client.read_maps(read_req("read-limits", "nope", 0, 0)).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    assert!(
        missing.message().contains("has no map \"nope\"") && missing.message().contains("calls"),
        "{}",
        missing.message()
    );
    let too_many = client.read_maps(read_req("read-limits", "", 100_001, 0)).await.unwrap_err();
    assert!(too_many.message().contains("max_entries is 100001; at most 100000"), "{}", too_many.message());
    let mut other = read_req("read-limits", "", 0, 0);
    other.node_name = "someone-else".into();
    let wrong = client.read_maps(other).await.unwrap_err();
    assert!(wrong.message().contains("leads to another node's agent"), "{}", wrong.message());
    let nothing = client.read_maps(read_req("not-here", "", 0, 0)).await.unwrap().into_inner();
    assert!(nothing.revision.is_empty() && nothing.maps.is_empty(), "{nothing:?}");
}
