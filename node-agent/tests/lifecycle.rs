//! Apply is idempotent per (owner, revision); a new revision replaces the old one
//! without a gap and leaves nothing of it behind; removal leaves nothing at all; owners
//! proceed in parallel while one owner's applies are serialized. (Maps across revisions:
//! `maps.rs`.)

mod common;

use std::time::Duration;

use common::*;
use crds::names::OwnerUid;

fn xdp_spec(iface: &str) -> String {
    format!(
        "bytecode: {{path: /x.o}}\nprograms:\n  - {{name: count_packets, type: XDP, xdp: {{interfaces: [{iface}], mode: Generic}}}}\n"
    )
}

#[test]
fn same_revision_twice_is_a_no_op() {
    let agent = TestAgent::new();
    let veth = Veth::new();
    let rt = rt();
    let (a, changed_a) =
        rt.block_on(agent.manager.apply(input("idem", &xdp_spec(&veth.host), "xdp_counter.o"))).unwrap();
    let pins = agent.pins();
    let (b, changed_b) =
        rt.block_on(agent.manager.apply(input("idem", &xdp_spec(&veth.host), "xdp_counter.o"))).unwrap();
    assert!(changed_a && !changed_b);
    assert_eq!(a, b);
    assert_eq!(pins, agent.pins());
    assert!(kernel_has_link(a.attached[0].link_ids[0]));
}

#[test]
fn xdp_upgrade_swaps_the_program_on_the_same_link_without_loss() {
    let agent = TestAgent::new();
    let veth = Veth::new();
    let rt = rt();
    let v1 = input("upgrade", &xdp_spec(&veth.host), "xdp_counter.o");
    let rev1 = v1.revision.clone();
    let (s1, _) = rt.block_on(agent.manager.apply(v1)).unwrap();
    let counter = map_pin(&s1, "packet_count");
    veth.ping_from_ns(3);
    let before = read_counter(&counter);
    assert!(before >= 3);

    // Traffic flows during the upgrade; every request must still be answered.
    let flood = std::process::Command::new("ip")
        .args(["netns", "exec", &veth.ns, "ping", "-c", "300", "-i", "0.003", "-W", "1", "-q", &veth.host_ip])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let v2 = input("upgrade", &xdp_spec(&veth.host), "xdp_counter_v2.o");
    let (s2, changed) = rt.block_on(agent.manager.apply(v2)).unwrap();
    let out = flood.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(changed);
    assert!(summary.contains(" 0% packet loss"), "packets lost during the upgrade: {summary}");

    // The same kernel link now runs the new program (an atomic BPF_LINK_UPDATE).
    assert_eq!(s1.attached[0].link_ids, s2.attached[0].link_ids);
    let link = sh(&format!("bpftool -j link show id {}", s2.attached[0].link_ids[0]));
    assert!(link.contains(&format!("\"prog_id\":{}", s2.attached[0].program_id)), "{link}");
    assert!(program_gone(s1.attached[0].program_id), "old program still loaded");
    assert!(!agent.pins().iter().any(|p| p.contains(rev1.as_str())), "old revision pins left: {:?}", agent.pins());

    // The map survived the upgrade and the new program adds 2 per packet.
    let mid = read_counter(&counter);
    assert!(mid > before);
    veth.ping_from_ns(2);
    let after = read_counter(&counter);
    assert!(after >= mid + 4 && (after - mid).is_multiple_of(2), "v2 must add 2 per packet: {mid} -> {after}");
}

#[test]
fn tcx_and_tracepoint_upgrades_replace_their_links() {
    let agent = TestAgent::new();
    let veth = Veth::new();
    let rt = rt();
    let spec = |prio: u32| {
        format!(
            "bytecode: {{path: /x.o}}\nprograms:\n  - {{name: count_tc, type: TC, tc: {{interfaces: [{}], direction: Ingress, priority: {prio}}}}}\n",
            veth.host
        )
    };
    let (s1, _) = rt.block_on(agent.manager.apply(input("tcx-up", &spec(10), "tc_counter.o"))).unwrap();
    let (s2, _) = rt.block_on(agent.manager.apply(input("tcx-up", &spec(20), "tc_counter.o"))).unwrap();
    assert_ne!(s1.revision, s2.revision);
    assert!(!kernel_has_link(s1.attached[0].link_ids[0]), "old TCX link left attached");
    assert!(kernel_has_link(s2.attached[0].link_ids[0]));
    let counter = map_pin(&s2, "tc_packet_count");
    let before = read_counter(&counter);
    veth.ping_from_ns(3);
    assert!(read_counter(&counter) >= before + 3);

    let tp = |extra: &str| {
        format!(
            "bytecode: {{path: /x.o}}\nprograms:\n  - {{name: count_openat, type: Tracepoint, tracepoint: {{names: [syscalls/sys_enter_openat{extra}]}}}}\n"
        )
    };
    let (t1, _) = rt.block_on(agent.manager.apply(input("tp-up", &tp(""), "tracepoint_openat.o"))).unwrap();
    let (t2, _) = rt
        .block_on(agent.manager.apply(input("tp-up", &tp(", syscalls/sys_enter_open"), "tracepoint_openat.o")))
        .unwrap();
    assert_eq!(t2.attached[0].link_ids.len(), 2);
    assert!(!kernel_has_link(t1.attached[0].link_ids[0]));
    assert!(program_gone(t1.attached[0].program_id));
}

#[test]
fn remove_leaves_nothing_in_bpffs_or_the_kernel() {
    let agent = TestAgent::new();
    let veth = Veth::new();
    let rt = rt();
    let spec = format!(
        "bytecode: {{path: /x.o}}\nprograms:\n  - {{name: count_packets, type: XDP, xdp: {{interfaces: [{}], mode: Generic}}}}\n",
        veth.host
    );
    let (s, _) = rt.block_on(agent.manager.apply(input("gone", &spec, "xdp_counter.o"))).unwrap();
    assert!(!agent.pins().is_empty());
    let uid = OwnerUid::new("gone").unwrap();
    assert!(rt.block_on(agent.manager.remove(&uid)).unwrap());
    assert!(agent.pins().is_empty(), "left in bpffs: {:?}", agent.pins());
    assert!(!kernel_has_link(s.attached[0].link_ids[0]));
    assert!(program_gone(s.attached[0].program_id));
    assert!(!sh(&format!("ip -d link show dev {}", veth.host)).contains("xdpgeneric"));
    assert!(std::fs::read_dir(&agent.state).unwrap().next().is_none(), "owner record left");
    // Idempotent.
    assert!(!rt.block_on(agent.manager.remove(&uid)).unwrap());
    assert!(agent.manager.list().is_empty());
}

#[test]
fn owners_apply_in_parallel_and_one_owner_is_serialized() {
    let agent = TestAgent::new();
    let rt = rt();
    let tp = "bytecode: {path: /x.o}\nprograms:\n  - {name: count_openat, type Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat]}}\n"
        .replace("type Tracepoint", "type: Tracepoint");
    // Hold owner "slow" after its programs are loaded and verified.
    let pause = agent::fault::pause_at("after-attach", "slow");
    let m = agent.manager.clone();
    let slow_input = input("slow", &tp, "tracepoint_openat.o");
    let slow = rt.spawn(async move { m.apply(slow_input).await });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!slow.is_finished());
    // Another owner is not held up by it.
    let fast = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), agent.manager.apply(input("fast", &tp, "tracepoint_openat.o")))
            .await
    });
    assert!(fast.expect("owner 'fast' waited for owner 'slow'").is_ok());
    // A second apply of the held owner waits for the first.
    let m = agent.manager.clone();
    let veth = Veth::new();
    let second_input = input("slow", &xdp_spec(&veth.host), "xdp_counter.o");
    let second = rt.spawn(async move { m.apply(second_input).await });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!second.is_finished(), "a second apply of the same owner must wait");
    pause.release();
    let first = rt.block_on(slow).unwrap().unwrap();
    let second = rt.block_on(second).unwrap().unwrap();
    assert_ne!(first.0.revision, second.0.revision);
    let now = agent.manager.list().into_iter().find(|s| s.owner_uid == "slow").unwrap();
    assert_eq!(now.revision, second.0.revision, "the later apply wins");
    let slow_dirs: Vec<String> =
        agent.pins().into_iter().filter(|p| p.starts_with("slow/") && p.matches('/').count() == 1).collect();
    let mut want = vec!["slow/maps".to_string(), format!("slow/{}", second.0.revision)];
    want.sort();
    assert_eq!(slow_dirs, want);
}
