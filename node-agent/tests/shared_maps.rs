//! `spec.maps[].from` over the agent's real gRPC API, checked in the kernel: a reader
//! that uses a writer's map holds the very same kernel map (bpftool: the writer's map id
//! is among the reader program's map ids), the reader program sees what the writer
//! program writes, upgrades of either keep the sharing, an incompatible share is refused
//! naming both shapes and leaves nothing behind, and the writer cannot recreate a map a
//! reader uses.

mod common;

use std::path::Path;

use common::process::*;
use common::*;
use proto::v1;
use proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

const WRITER: &str = "  - {name: write_shared, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_getppid]}}\n";
const READER: &str = "  - {name: read_shared, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_getppid]}}\n";

fn request(uid: &str, programs: &str, object: &str, revision: &str) -> v1::ApplyRequest {
    let mut req = apply_request(uid, programs, object);
    req.global_data.insert("TARGET_TGID".into(), std::process::id().to_le_bytes().to_vec().into());
    req.revision = revision.into();
    req
}

/// A reader of `object` whose `shared` map is the writer's.
fn reader(uid: &str, object: &str, revision: &str) -> v1::ApplyRequest {
    let mut req = request(uid, READER, object, revision);
    req.maps = vec![v1::MapPolicy {
        name: "shared".into(),
        from_program: "writer".into(),
        from_map: "shared".into(),
        from_owner_uid: "share-writer".into(),
        ..Default::default()
    }];
    req
}

fn getppid(n: usize) {
    for _ in 0..n {
        // SAFETY: getppid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
}

/// The kernel id of the map pinned at `pin` (bpftool).
fn map_id(pin: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&sh(&format!("bpftool -j map show pinned {pin}"))).unwrap();
    v["id"].as_u64().unwrap()
}

/// The map ids program `id` uses (bpftool).
fn program_maps(id: u32) -> Vec<u64> {
    let v: serde_json::Value = serde_json::from_str(&sh(&format!("bpftool -j prog show id {id}"))).unwrap();
    v["map_ids"].as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).collect()).unwrap_or_default()
}

fn pin(state: &v1::OwnerState, map: &str) -> String {
    state.maps.iter().find(|m| m.name == map).unwrap_or_else(|| panic!("no {map} in {state:?}")).pin_path.clone()
}

async fn apply(client: &mut AgentClient<Channel>, req: v1::ApplyRequest) -> v1::OwnerState {
    client.apply(req).await.unwrap_or_else(|e| panic!("apply: {e:?}")).into_inner().state.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_uses_the_writers_kernel_map_across_upgrades_of_either() {
    let dirs = Dirs::new("share");
    let mut agent = AgentProc::spawn_tls(&dirs, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let writer = apply(&mut client, request("share-writer", WRITER, "share_writer.o", "00000000000000a1")).await;
    let reader_state = apply(&mut client, reader("share-reader", "share_reader.o", "00000000000000b1")).await;
    let shared = pin(&writer, "shared");
    assert_eq!(pin(&reader_state, "shared"), shared, "the reader's record names the writer's pin");
    let id = map_id(&shared);
    let reader_prog = reader_state.attached[0].program_id;
    assert!(
        program_maps(reader_prog).contains(&id),
        "bpftool: the reader program uses map {id}: {:?}",
        program_maps(reader_prog)
    );

    getppid(20);
    let written = read_counter(Path::new(&shared));
    let seen = read_counter(Path::new(&pin(&reader_state, "seen")));
    assert!(written >= 20, "the writer counted {written}");
    assert!(seen + 1 >= written && seen > 0, "the reader program saw {seen} of the writer's {written}, in the kernel");
    // ReadMaps of either: one map.
    let read = |uid: &str| v1::ReadMapsRequest { owner_uid: uid.into(), map: "shared".into(), ..Default::default() };
    let w = client.read_maps(read("share-writer")).await.unwrap().into_inner().maps.remove(0);
    let r = client.read_maps(read("share-reader")).await.unwrap().into_inner().maps.remove(0);
    assert_eq!((w.map_id, &w.entries), (r.map_id, &r.entries));

    // A new revision of the reader, then of the writer (compatible): still one map.
    let reader2 = apply(&mut client, reader("share-reader", "share_reader.o", "00000000000000b2")).await;
    assert_ne!(reader2.attached[0].program_id, reader_prog, "a new program was loaded");
    assert!(program_maps(reader2.attached[0].program_id).contains(&id));
    let writer2 = apply(&mut client, request("share-writer", WRITER, "share_writer.o", "00000000000000a2")).await;
    assert_eq!(map_id(&pin(&writer2, "shared")), id, "the writer kept its map");
    assert!(program_maps(writer2.attached[0].program_id).contains(&id));
    getppid(5);
    assert!(read_counter(Path::new(&shared)) >= written + 5, "the count went on in the same map");

    // The writer may not recreate a map a reader uses.
    let mut recreate = request("share-writer", WRITER, "share_writer.o", "00000000000000a3");
    recreate.maps = vec![v1::MapPolicy { name: "shared".into(), on_upgrade: "Recreate".into(), ..Default::default() }];
    let err = client.apply(recreate).await.unwrap_err();
    assert!(
        err.message().contains(
            "map shared would be recreated (onUpgrade is Recreate), but BpfProgram share-reader-name uses it"
        ),
        "{}",
        err.message()
    );
    assert_eq!(map_id(&shared), id, "nothing changed");

    // The reader goes: the writer's map stays, with its count.
    client
        .remove(v1::RemoveRequest {
            owner: Some(v1::Owner { uid: "share-reader".into(), name: String::new() }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(map_id(&shared), id);
    assert!(read_counter(Path::new(&shared)) >= written + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_or_absent_share_is_refused_naming_both_and_leaves_nothing() {
    let dirs = Dirs::new("share-bad");
    let mut agent = AgentProc::spawn_tls(&dirs, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    // No writer on this node yet.
    let err = client.apply(reader("share-reader", "share_reader.o", "00000000000000b1")).await.unwrap_err();
    assert!(
        err.message().contains("spec.maps[0].from: BpfProgram writer has no map shared on this node"),
        "{}",
        err.message()
    );
    apply(&mut client, request("share-writer", WRITER, "share_writer.o", "00000000000000a1")).await;
    let err = client.apply(reader("share-narrow", "share_reader_narrow.o", "00000000000000c1")).await.unwrap_err();
    let want = "spec.maps[0]: this object's map shared (Array, key 4 bytes, value 4 bytes, 4 entries, flags 0x0) cannot use \
                BpfProgram writer's map shared (Array, key 4 bytes, value 8 bytes, 4 entries, flags 0x0): their shapes must be the same";
    assert!(err.message().contains(want), "{}", err.message());
    assert!(err.message().contains("MapMismatch") || err.code() == tonic::Code::FailedPrecondition, "{err:?}");
    // The same shape, another BTF value type.
    let err = client.apply(reader("share-struct", "share_reader_struct.o", "00000000000000d1")).await.unwrap_err();
    assert!(
        err.message().contains(
            "their BTF types differ (key __u32 and value struct halves here, key __u32 and value __u64 there)"
        ),
        "{}",
        err.message()
    );
    for uid in ["share-reader", "share-narrow", "share-struct"] {
        assert!(!dirs.root.join(uid).exists(), "nothing of {uid} is left in bpffs");
    }
    // The refused owners are listed with their failure, running nothing.
    let list = client.list(v1::ListRequest::default()).await.unwrap().into_inner();
    let running: Vec<&str> = list
        .owners
        .iter()
        .filter(|o| !o.revision.is_empty() || !o.maps.is_empty() || !o.attached.is_empty())
        .map(|o| o.owner.as_ref().unwrap().uid.as_str())
        .collect();
    assert_eq!(running, ["share-writer"], "{:?}", list.owners);
}
