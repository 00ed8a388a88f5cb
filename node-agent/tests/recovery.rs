//! Crash recovery of the agent binary: programs outlive `kill -9`, a new process adopts
//! them, an apply interrupted before or after its commit point leaves exactly one
//! revision running, and pins nobody claims are removed at start. Checked with bpftool,
//! bpffs contents and counted packets/syscalls.

mod common;

use std::path::{Path, PathBuf};

use common::process::*;
use common::*;
use proto::v1;
use proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

fn xdp_yaml(iface: &str) -> String {
    format!("  - {{name: count_packets, type: XDP, xdp: {{interfaces: [{iface}], mode: Auto}}}}\n")
}

const OPENAT_YAML: &str =
    "  - {name: count_openat, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat]}}\n";

fn bpftool_json(cmd: &str) -> serde_json::Value {
    let out = sh(&format!("bpftool -j {cmd}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"))
}

/// Id of the program pinned at `pin`.
fn pinned_prog_id(pin: &Path) -> u32 {
    bpftool_json(&format!("prog show pinned {}", pin.display()))["id"].as_u64().unwrap() as u32
}

/// Program id a pinned link runs.
fn pinned_link_prog(pin: &Path) -> u32 {
    bpftool_json(&format!("link show pinned {}", pin.display()))["prog_id"].as_u64().unwrap() as u32
}

/// The XDP program id `ip link` reports on an interface.
fn ip_link_xdp_prog(iface: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(&sh(&format!("ip -d -j link show dev {iface}"))).unwrap();
    v[0]["xdp"]["prog"]["id"].as_u64()
}

/// Directory names directly under `dir`.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn open_files(n: usize) {
    for _ in 0..n {
        let _ = std::fs::File::open("/etc/hostname");
    }
}

/// Packets counted per ping of `n` (ARP and the like may add a few).
fn counted_per_ping(veth: &Veth, counter: &Path, n: u32) -> u64 {
    let before = read_counter(counter);
    veth.ping_from_ns(n);
    read_counter(counter) - before
}

async fn list(client: &mut AgentClient<Channel>) -> v1::ListResponse {
    client.list(v1::ListRequest::default()).await.expect("list").into_inner()
}

fn find<'a>(list: &'a v1::ListResponse, uid: &str) -> Option<&'a v1::OwnerState> {
    list.owners.iter().find(|o| o.owner.as_ref().is_some_and(|w| w.uid == uid))
}

const HEALTHY: i32 = v1::Health::Healthy as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_survive_kill_and_are_adopted() {
    let dirs = Dirs::new("recovery");
    let veth = Veth::new();
    let mut agent = AgentProc::spawn_tls(&dirs, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let xdp = client.apply(apply_request("rec-xdp", &xdp_yaml(&veth.host), "xdp_counter.o")).await.unwrap();
    let tp = client.apply(apply_request("rec-tp", OPENAT_YAML, "tracepoint_openat.o")).await.unwrap();
    let (xdp, tp) = (xdp.into_inner().state.unwrap(), tp.into_inner().state.unwrap());
    let ids: Vec<u32> = [&xdp, &tp].iter().map(|s| s.attached[0].program_id).collect();
    let links: Vec<u32> = [&xdp, &tp].iter().map(|s| s.attached[0].link_ids[0]).collect();
    let (pkt, opens) = (map_pin(&xdp, "packet_count"), map_pin(&tp, "openat_count"));
    drop(client);
    agent.kill9();

    // Nothing runs in user space now; the kernel still runs both programs.
    for id in &ids {
        assert!(kernel_has_program(*id), "program {id} died with the agent");
    }
    for id in &links {
        assert!(kernel_has_link(*id), "link {id} died with the agent");
    }
    assert!(counted_per_ping(&veth, &pkt, 5) >= 5, "XDP stopped counting after kill -9");
    let before = read_counter(&opens);
    open_files(30);
    assert!(read_counter(&opens) >= before + 30, "tracepoint stopped counting after kill -9");

    // A new process adopts both, with the same kernel ids.
    let mut agent = AgentProc::spawn_tls(&dirs, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let l = list(&mut client).await;
    assert_eq!(l.owners.len(), 2, "{l:?}");
    for (uid, state, id) in [("rec-xdp", &xdp, ids[0]), ("rec-tp", &tp, ids[1])] {
        let o = find(&l, uid).unwrap_or_else(|| panic!("{uid} not adopted: {l:?}"));
        assert_eq!(o.health, HEALTHY, "{o:?}");
        assert_eq!(o.revision, state.revision);
        assert_eq!(o.attached[0].program_id, id);
    }
    assert!(counted_per_ping(&veth, &pkt, 3) >= 3);

    // Remove through the new process: nothing left in bpffs or in the kernel.
    for uid in ["rec-xdp", "rec-tp"] {
        let r = client.remove(v1::RemoveRequest {
            owner: Some(v1::Owner { uid: uid.into(), name: String::new() }),
            epoch: 0,
            node_name: String::new(),
        });
        assert!(r.await.unwrap().into_inner().removed);
    }
    assert!(pins_under(&dirs.root).is_empty(), "left in bpffs: {:?}", pins_under(&dirs.root));
    for id in &ids {
        wait_for(5, "program unloaded", || !kernel_has_program(*id));
    }
    for id in &links {
        wait_for(5, "link gone", || !kernel_has_link(*id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_attach_on_first_apply_leaves_nothing() {
    let dirs = Dirs::new("recovery");
    let veth = Veth::new();
    let mut agent = AgentProc::spawn_tls(&dirs, &[("BPFLEET_FAULT", "after-attach")]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let req = apply_request("crash-first", &xdp_yaml(&veth.host), "xdp_counter.o");
    let err = client.apply(req.clone()).await.expect_err("the agent aborts in the middle of Apply");
    // A dropped connection, not an answer from the agent.
    assert!(err.metadata().get("bpfleet-reason").is_none(), "the agent answered instead of dying: {err:?}");
    let status = agent.wait_exit(10);
    assert!(!status.success());
    // The unfinished revision is pinned (and attached) in bpffs.
    let rev_dir = dirs.root.join("crash-first").join(&req.revision);
    let prog_pin = rev_dir.join("progs/count_packets");
    assert!(prog_pin.exists(), "no pins of the unfinished revision: {:?}", pins_under(&dirs.root));
    let orphan = pinned_prog_id(&prog_pin);
    assert_eq!(ip_link_xdp_prog(&veth.host), Some(u64::from(orphan)));

    let mut agent = AgentProc::spawn_tls(&dirs, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    assert!(!rev_dir.exists(), "unfinished revision kept: {:?}", pins_under(&dirs.root));
    assert!(pins_under(&dirs.root).is_empty(), "left in bpffs: {:?}", pins_under(&dirs.root));
    wait_for(5, "unfinished program unloaded", || !kernel_has_program(orphan));
    assert_eq!(ip_link_xdp_prog(&veth.host), None, "XDP still attached to {}", veth.host);
    let l = list(&mut client).await;
    assert!(find(&l, "crash-first").is_none(), "{l:?}");
}

/// Owner at revision A (xdp_counter: +1/packet); an apply of B (xdp_counter_v2: +2/packet)
/// crashes at `fault`. Returns (A request, B request, A's program id, B's program id,
/// the counter pin) with a fresh agent (no fault) running.
struct Upgrade {
    a: v1::ApplyRequest,
    b: v1::ApplyRequest,
    a_id: u32,
    b_id: u32,
    counter: PathBuf,
    agent: AgentProc,
    client: AgentClient<Channel>,
}

async fn crash_during_upgrade(dirs: &Dirs, veth: &Veth, fault: &str) -> Upgrade {
    let uid = "upgrade";
    let a = apply_request(uid, &xdp_yaml(&veth.host), "xdp_counter.o");
    let b = apply_request(uid, &xdp_yaml(&veth.host), "xdp_counter_v2.o");
    assert_ne!(a.revision, b.revision);
    let mut first = AgentProc::spawn_tls(dirs, &[]);
    let mut client = first.ready_client(dirs.client_tls()).await;
    let sa = client.apply(a.clone()).await.expect("apply A").into_inner().state.unwrap();
    let a_id = sa.attached[0].program_id;
    let counter = map_pin(&sa, "packet_count");
    let n = counted_per_ping(veth, &counter, 10);
    assert!((10..20).contains(&n), "A counts +1 per packet, got {n} for 10");
    drop(client);
    first.kill9();

    let mut faulty = AgentProc::spawn_tls(dirs, &[("BPFLEET_FAULT", fault)]);
    let mut client = faulty.ready_client(dirs.client_tls()).await;
    assert_eq!(find(&list(&mut client).await, uid).map(|o| o.health), Some(HEALTHY));
    client.apply(b.clone()).await.expect_err("the agent aborts in the middle of Apply B");
    assert!(!faulty.wait_exit(10).success());
    drop(client);
    let b_pin = dirs.root.join(uid).join(&b.revision).join("progs/count_packets");
    assert!(b_pin.exists(), "B was not pinned before the crash: {:?}", pins_under(&dirs.root));
    let b_id = pinned_prog_id(&b_pin);
    assert_ne!(a_id, b_id);
    // Both crash points are after the in-place link swap: B runs now.
    assert_eq!(ip_link_xdp_prog(&veth.host), Some(u64::from(b_id)));

    let mut agent = AgentProc::spawn_tls(dirs, &[]);
    let client = agent.ready_client(dirs.client_tls()).await;
    Upgrade { a, b, a_id, b_id, counter, agent, client }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_attach_during_upgrade_keeps_the_old_revision() {
    let dirs = Dirs::new("recovery");
    let veth = Veth::new();
    let mut u = crash_during_upgrade(&dirs, &veth, "after-attach").await;
    let l = list(&mut u.client).await;
    let o = find(&l, "upgrade").expect("owner kept");
    assert_eq!(o.revision, u.a.revision, "the uncommitted revision B was adopted");
    assert_eq!(o.health, HEALTHY);
    assert_eq!(o.attached[0].program_id, u.a_id);
    assert_eq!(entries(&dirs.root.join("upgrade")), {
        let mut v = vec![u.a.revision.clone(), "maps".to_string()];
        v.sort();
        v
    });
    let a_link = dirs.root.join("upgrade").join(&u.a.revision).join("links/count_packets/0");
    assert_eq!(pinned_link_prog(&a_link), u.a_id, "the XDP link still runs B");
    assert_eq!(ip_link_xdp_prog(&veth.host), Some(u64::from(u.a_id)));
    wait_for(5, "B unloaded", || !kernel_has_program(u.b_id));
    let n = counted_per_ping(&veth, &u.counter, 10);
    assert!((10..20).contains(&n), "after recovery A must count +1 per packet; counted {n} for 10");
    drop(u.client);
    u.agent.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_commit_during_upgrade_keeps_the_new_revision() {
    let dirs = Dirs::new("recovery");
    let veth = Veth::new();
    let mut u = crash_during_upgrade(&dirs, &veth, "after-commit").await;
    let l = list(&mut u.client).await;
    let o = find(&l, "upgrade").expect("owner kept");
    assert_eq!(o.revision, u.b.revision, "the committed revision B was not adopted");
    assert_eq!(o.health, HEALTHY);
    assert_eq!(o.attached[0].program_id, u.b_id);
    assert_eq!(entries(&dirs.root.join("upgrade")), {
        let mut v = vec![u.b.revision.clone(), "maps".to_string()];
        v.sort();
        v
    });
    wait_for(5, "A unloaded", || !kernel_has_program(u.a_id));
    let b_link = dirs.root.join("upgrade").join(&u.b.revision).join("links/count_packets/0");
    assert_eq!(pinned_link_prog(&b_link), u.b_id);
    assert_eq!(ip_link_xdp_prog(&veth.host), Some(u64::from(u.b_id)));
    let n = counted_per_ping(&veth, &u.counter, 10);
    assert!(n >= 20, "B must count +2 per packet; counted {n} for 10");
    drop(u.client);
    u.agent.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclaimed_pins_are_removed_at_start() {
    let dirs = Dirs::new("recovery");
    let stray = dirs.root.join("stray-owner");
    std::fs::create_dir_all(stray.join("abc")).unwrap();
    std::fs::create_dir_all(dirs.root.join("empty-stray")).unwrap();
    let pin = stray.join("abc/p");
    sh(&format!("bpftool prog load {} {} type xdp", object("xdp_counter.o").display(), pin.display()));
    let stray_id = pinned_prog_id(&pin);
    assert!(kernel_has_program(stray_id));
    // A record whose pins are gone (bpffs remounted, say) is forgotten too.
    std::fs::create_dir_all(dirs.state()).unwrap();
    let record = serde_json::json!({
        "uid": "gone-owner", "name": "gone-owner", "revision": "0123456789abcdef",
        "spec": [], "maps": [],
        "programs": [{"name": "p", "type": "XDP", "programId": 1,
                      "pin": dirs.root.join("gone-owner/0123456789abcdef/progs/p"), "links": []}]
    });
    std::fs::write(dirs.state().join("gone-owner.json"), record.to_string()).unwrap();

    let mut agent = AgentProc::spawn_tls(&dirs, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    assert!(pins_under(&dirs.root).is_empty(), "left in bpffs: {:?}", pins_under(&dirs.root));
    wait_for(5, "stray program unloaded", || !kernel_has_program(stray_id));
    assert!(!dirs.state().join("gone-owner.json").exists(), "record without pins kept");
    assert!(list(&mut client).await.owners.is_empty());
}

/// KNOWN FAILING until src/recovery.rs also removes non-directory entries of the root
/// (recovery only removes unclaimed *directories*, so a pin directly under the root keeps
/// its program loaded forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loose_pin_directly_under_the_root_is_removed_at_start() {
    let dirs = Dirs::new("recovery");
    std::fs::create_dir_all(&dirs.root).unwrap();
    let pin = dirs.root.join("loose");
    sh(&format!("bpftool prog load {} {} type xdp", object("xdp_counter.o").display(), pin.display()));
    let id = pinned_prog_id(&pin);
    let mut agent = AgentProc::spawn_tls(&dirs, &[]);
    let _client = agent.ready_client(dirs.client_tls()).await;
    assert!(pins_under(&dirs.root).is_empty(), "left in bpffs: {:?}", pins_under(&dirs.root));
    wait_for(5, "stray program unloaded", || !kernel_has_program(id));
}

/// A corrupt record, and one written by a newer agent (a downgrade), are set aside: the
/// programs keep running on their hooks, List says Degraded with the reason, Apply is
/// refused in words without touching anything, and only an explicit Remove detaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_records_are_set_aside_and_never_detach() {
    let dirs = Dirs::new("setaside");
    let veth = Veth::new();
    let mut agent = AgentProc::spawn_tls(&dirs, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let xdp = client.apply(apply_request("aside-xdp", &xdp_yaml(&veth.host), "xdp_counter.o")).await.unwrap();
    let tp = client.apply(apply_request("aside-tp", OPENAT_YAML, "tracepoint_openat.o")).await.unwrap();
    let (xdp, tp) = (xdp.into_inner().state.unwrap(), tp.into_inner().state.unwrap());
    let (xdp_link, tp_link) = (xdp.attached[0].link_ids[0], tp.attached[0].link_ids[0]);
    drop(client);
    agent.kill9();
    // One record truncated mid-write by hand, one from a future agent.
    let state = dirs.state();
    std::fs::write(state.join("aside-xdp.json"), b"{\"uid\": \"aside-xdp\", \"revis").unwrap();
    let mut newer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("aside-tp.json")).unwrap()).unwrap();
    newer["schema"] = serde_json::json!(99);
    std::fs::write(state.join("aside-tp.json"), serde_json::to_vec(&newer).unwrap()).unwrap();

    let mut agent = AgentProc::spawn_tls(&dirs, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    // The kernel still runs both, through the same links, and XDP still counts.
    assert_eq!(ip_link_xdp_prog(&veth.host), Some(u64::from(xdp.attached[0].program_id)));
    assert!(kernel_has_link(xdp_link) && kernel_has_link(tp_link));
    assert!(counted_per_ping(&veth, &map_pin(&xdp, "packet_count"), 5) >= 5);
    let l = list(&mut client).await;
    for (uid, why) in [("aside-xdp", "corrupt"), ("aside-tp", "format 99 is newer")] {
        let o = find(&l, uid).unwrap_or_else(|| panic!("{uid} is not reported: {l:?}"));
        assert_eq!(o.health, v1::Health::Degraded as i32, "{o:?}");
        assert!(o.last_error.contains(why) && o.last_error.contains("set-aside"), "{}", o.last_error);
    }
    assert!(entries(&state.join("set-aside")).len() == 2, "records kept for a person to look at");
    // Another restart (a DaemonSet rollout): still set aside, still attached.
    drop(client);
    agent.kill9();
    let mut agent = AgentProc::spawn_tls(&dirs, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    assert!(kernel_has_link(xdp_link) && kernel_has_link(tp_link), "a second start detached set-aside owners");
    let l = list(&mut client).await;
    for uid in ["aside-xdp", "aside-tp"] {
        let o = find(&l, uid).unwrap_or_else(|| panic!("{uid} is not reported after a second start: {l:?}"));
        assert_eq!(o.health, v1::Health::Degraded as i32, "{o:?}");
        assert!(o.last_error.contains("set aside"), "{}", o.last_error);
    }
    // Apply does not guess: refused, nothing touched.
    let err = client.apply(apply_request("aside-xdp", &xdp_yaml(&veth.host), "xdp_counter.o")).await.unwrap_err();
    assert_eq!(err.metadata().get("bpfleet-reason").and_then(|v| v.to_str().ok()), Some("RecordSetAside"));
    assert!(err.message().contains("remove the BpfProgram"), "{}", err.message());
    assert!(kernel_has_link(xdp_link));
    // An explicit Remove detaches and unpins.
    for uid in ["aside-xdp", "aside-tp"] {
        let r = client.remove(v1::RemoveRequest {
            owner: Some(v1::Owner { uid: uid.into(), name: String::new() }),
            epoch: 0,
            node_name: String::new(),
        });
        r.await.unwrap();
    }
    assert!(pins_under(&dirs.root).is_empty(), "{:?}", pins_under(&dirs.root));
    wait_for(5, "links gone after Remove", || !kernel_has_link(xdp_link) && !kernel_has_link(tp_link));
    assert!(entries(&state.join("set-aside")).is_empty(), "a removed owner's set-aside records go with it");
}

/// clsact filters have no pin: an agent killed after attaching one, before committing,
/// leaves it in the kernel running the unfinished program. The next agent finds it by
/// that program and removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_apply_leaves_no_clsact_filter_after_recovery() {
    let dirs = Dirs::new("rec-clsact");
    let veth = Veth::new();
    let args = ["--tc-backend", "clsact"];
    let mut agent = AgentProc::spawn_tls_with(&dirs, &args, &[("BPFLEET_FAULT", "after-attach")]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let tc = format!("  - {{name: count_tc, type: TC, tc: {{interfaces: [{}], direction: Ingress}}}}\n", veth.host);
    client.apply(apply_request("crash-tc", &tc, "tc_counter.o")).await.expect_err("the agent aborts mid-apply");
    agent.wait_exit(10);
    let filters = || sh(&format!("tc filter show dev {} ingress", veth.host));
    assert!(filters().contains("count_tc"), "the crash left no filter to recover: {}", filters());

    let mut agent = AgentProc::spawn_tls_with(&dirs, &args, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    assert!(!filters().contains("count_tc"), "recovery left the filter: {}", filters());
    assert!(pins_under(&dirs.root).is_empty(), "{:?}", pins_under(&dirs.root));
    assert!(find(&list(&mut client).await, "crash-tc").is_none());
    assert!(agent.log().contains("clsact filter no record claims"), "{}", agent.log());
}

/// An upgrade killed after its commit leaves the old revision pinned, its clsact filter
/// still attached. A recovery that then died after removing the old revision's pins, but
/// before its filter, left that filter with nothing to find it by (crash trials, seed
/// 424242, trial 177). Pins now go only after the filters: killed anywhere in recovery,
/// the next start still removes the filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_killed_midway_still_leaves_no_clsact_filter() {
    let dirs = Dirs::new("rec-clsact-twice");
    let veth = Veth::new();
    let args = ["--tc-backend", "clsact"];
    let egress = || sh(&format!("tc filter show dev {} egress", veth.host));
    let tc = |direction: &str| {
        format!("  - {{name: count_tc, type: TC, tc: {{interfaces: [{}], direction: {direction}}}}}\n", veth.host)
    };
    let mut agent = AgentProc::spawn_tls_with(&dirs, &args, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    client.apply(apply_request("crash-tc2", &tc("Egress"), "tc_counter.o")).await.expect("first revision");
    agent.kill9();
    let mut agent = AgentProc::spawn_tls_with(&dirs, &args, &[("BPFLEET_FAULT", "after-commit")]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    client.apply(apply_request("crash-tc2", &tc("Ingress"), "tc_counter.o")).await.expect_err("aborts after commit");
    agent.wait_exit(10);
    assert!(egress().contains("count_tc"), "the old revision's filter should still be there: {}", egress());

    // Each dies at its point (wait_exit fails the test otherwise).
    for point in ["recovery-before-sweep", "recovery-before-unpin"] {
        AgentProc::spawn_tls_with(&dirs, &args, &[("BPFLEET_FAULT", point)]).wait_exit(30);
    }
    let mut agent = AgentProc::spawn_tls_with(&dirs, &args, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    assert!(!egress().contains("count_tc"), "the old revision's filter outlived two recoveries: {}", egress());
    let listed = list(&mut client).await;
    let owner = find(&listed, "crash-tc2").expect("the committed revision is adopted");
    assert_eq!(owner.health, v1::Health::Healthy as i32, "{owner:?}");
    assert!(sh(&format!("tc filter show dev {} ingress", veth.host)).contains("count_tc"));
}
