//! The agent never takes a working program off its hook without being asked to: not
//! when a call is dropped mid-apply, not when a user reverts to the revision that still
//! runs. Each claim is read back from the kernel (bpftool link and prog ids, the XDP
//! program on the interface), not from the agent's own answers.

mod common;

use std::time::Duration;

use common::*;

fn xdp_spec(iface: &str) -> String {
    format!(
        "bytecode: {{path: /x.o}}\nprograms:\n  - {{name: count_packets, type: XDP, xdp: {{interfaces: [{iface}], mode: Generic}}}}\n"
    )
}

/// The id of the XDP program attached to `iface`, per bpftool.
fn xdp_prog_on(iface: &str) -> Option<u64> {
    let out = sh(&format!("bpftool -j net show dev {iface}"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["xdp"].as_array().and_then(|a| a.first()).and_then(|x| x["id"].as_u64())
}

/// The program a link runs, per bpftool.
fn link_prog(link_id: u32) -> Option<u64> {
    let out =
        std::process::Command::new("bpftool").args(["-j", "link", "show", "id", &link_id.to_string()]).output().ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["prog_id"].as_u64()
}

fn revision_dirs(agent: &TestAgent, owner: &str) -> Vec<String> {
    agent
        .pins()
        .into_iter()
        .filter(|p| p.starts_with(&format!("{owner}/")) && p.matches('/').count() == 1 && !p.ends_with("/maps"))
        .collect()
}

/// The operator's call times out during a slow load and it retries: the first apply
/// still commits and records what it did; the retry waits for it, then finds the
/// revision running and touches nothing.
#[test]
fn a_dropped_call_finishes_its_apply_and_a_retry_finds_it_done() {
    let rt = rt();
    let agent = TestAgent::new();
    let veth = Veth::new();
    let spec = xdp_spec(&veth.host);
    let pause = agent::fault::pause_at("after-attach", "cancel");
    let m = agent.manager.clone();
    let first_input = input("cancel", &spec, "xdp_counter.o");
    let call = rt.spawn(async move { m.apply(first_input).await });
    std::thread::sleep(Duration::from_millis(300));
    // The caller goes away while the load is held after attaching.
    call.abort();
    let _ = rt.block_on(call);
    let m = agent.manager.clone();
    let retry_input = input("cancel", &spec, "xdp_counter.o");
    let retry = rt.spawn(async move { m.apply(retry_input).await });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!retry.is_finished(), "the retry must wait for the apply still in progress");
    pause.release();
    let (state, changed) = rt.block_on(retry).unwrap().expect("the retry succeeds");
    assert!(!changed, "the retry found the first apply's revision running and changed nothing");
    let attached = &state.attached[0];
    assert_eq!(xdp_prog_on(&veth.host), Some(u64::from(attached.program_id)), "one program on the interface");
    assert_eq!(link_prog(attached.link_ids[0]), Some(u64::from(attached.program_id)));
    assert_eq!(revision_dirs(&agent, "cancel"), vec![format!("cancel/{}", state.revision)]);
    let listed = agent.manager.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].health, crds::Health::Healthy);
    assert_eq!(listed[0].attached[0].link_ids, attached.link_ids, "the entry records the committed link");
    let before = read_counter(&map_pin(&state, "packet_count"));
    veth.ping_from_ns(5);
    assert!(read_counter(&map_pin(&state, "packet_count")) >= before + 5);
}

/// R1 runs, R2 fails (the verifier refuses it), the user reverts to R1: nothing is
/// detached or re-attached (same program, same link, in the kernel), and the owner is
/// Healthy again.
#[test]
fn reverting_to_the_running_revision_touches_nothing() {
    let rt = rt();
    let agent = TestAgent::new();
    let veth = Veth::new();
    let r1 = input("revert", &xdp_spec(&veth.host), "xdp_counter.o");
    let (s1, _) = rt.block_on(agent.manager.apply(r1.clone())).unwrap();
    let (prog, link) = (s1.attached[0].program_id, s1.attached[0].link_ids[0]);
    let bad = format!(
        "bytecode: {{path: /x.o}}\nprograms:\n  - {{name: bad_access, type: XDP, xdp: {{interfaces: [{}], mode: Generic}}}}\n",
        veth.host
    );
    let err = rt.block_on(agent.manager.apply(input("revert", &bad, "verifier_reject.o"))).unwrap_err();
    assert_eq!(err.reason, agent::error::Reason::VerifierRejected);
    assert_eq!(xdp_prog_on(&veth.host), Some(u64::from(prog)), "a failed R2 leaves R1 on the hook");
    let failed = agent.manager.list();
    assert_eq!(failed[0].health, crds::Health::Failed, "the failure is reported");

    let (s3, changed) = rt.block_on(agent.manager.apply(r1)).unwrap();
    assert!(!changed, "reverting to what runs changes nothing");
    assert_eq!((s3.attached[0].program_id, s3.attached[0].link_ids[0]), (prog, link));
    assert_eq!(xdp_prog_on(&veth.host), Some(u64::from(prog)), "the same program stays attached");
    assert_eq!(link_prog(link), Some(u64::from(prog)), "the same link runs it");
    let now = agent.manager.list();
    assert_eq!(now[0].health, crds::Health::Healthy);
    assert_eq!(now[0].last_error, None, "the failure of R2 is forgotten");
    assert_eq!(revision_dirs(&agent, "revert"), vec![format!("revert/{}", s1.revision)]);
}

/// The per-owner lock map holds only work in flight: owners that came and went leave
/// nothing behind in the agent's memory.
#[test]
fn owner_locks_are_forgotten_when_idle() {
    let rt = rt();
    let agent = TestAgent::new();
    let tp = "bytecode: {path: /x.o}\nprograms:\n  - {name: count_openat, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat]}}\n";
    for i in 0..20 {
        let owner = format!("locks-{i}");
        rt.block_on(agent.manager.apply(input(&owner, tp, "tracepoint_openat.o"))).unwrap();
        rt.block_on(agent.manager.remove(&crds::names::OwnerUid::new(&owner).unwrap())).unwrap();
    }
    // A failing apply releases its lock too.
    let _ = rt.block_on(agent.manager.apply(input("locks-bad", tp, "verifier_reject.o")));
    assert_eq!(agent.manager.locks_in_use(), 0);
    assert!(agent.pins().is_empty(), "{:?}", agent.pins());
}

/// Create the deleted pair of `veth` again (same names and addresses).
fn create_again(veth: &Veth) {
    sh(&format!(
        "ip link add {h} type veth peer name {p} netns {ns} && ip addr add {hip}/30 dev {h} && ip link set {h} up && \
         ip -n {ns} addr add {pip}/30 dev {p} && ip -n {ns} link set {p} up",
        h = veth.host,
        p = veth.peer,
        ns = veth.ns,
        hip = veth.host_ip,
        pip = veth.peer_ip
    ));
}

/// An interface deleted under an XDP program: the agent reports the owner Degraded
/// (read from the kernel: the link is detached although its pin stays) and says so on
/// Watch; when the interface comes back, the agent re-attaches the same program by
/// itself and packets are counted again.
#[test]
fn an_interface_that_comes_back_gets_its_program_back() {
    let rt = rt();
    let agent = TestAgent::new();
    let veth = Veth::new();
    let mut events = agent.manager.subscribe();
    let (state, _) = rt.block_on(agent.manager.apply(input("iface", &xdp_spec(&veth.host), "xdp_counter.o"))).unwrap();
    let prog = state.attached[0].program_id;
    let counter = map_pin(&state, "packet_count");
    while events.try_recv().is_ok() {}

    sh(&format!("ip link del {}", veth.host));
    agent.manager.refresh_health();
    let listed = agent.manager.list();
    assert_eq!(listed[0].health, crds::Health::Degraded, "{listed:?}");
    assert!(
        listed[0].last_error.as_deref().is_some_and(|e| e.contains(&veth.host) && e.contains("gone")),
        "{}",
        listed[0].last_error.as_deref().unwrap_or_default()
    );
    let ev = events.try_recv().expect("a Watch event for the change");
    assert_eq!(ev.state.health, crds::Health::Degraded);

    create_again(&veth);
    assert_eq!(xdp_prog_on(&veth.host), None, "a new interface starts without the program");
    agent.manager.refresh_health();
    assert_eq!(xdp_prog_on(&veth.host), Some(u64::from(prog)), "the same program is back on the new interface");
    let listed = agent.manager.list();
    assert_eq!(listed[0].health, crds::Health::Healthy, "{:?}", listed[0].last_error);
    let link = listed[0].attached[0].link_ids[0];
    assert_eq!(link_prog(link), Some(u64::from(prog)));
    let ev = events.try_recv().expect("a Watch event for the recovery");
    assert_eq!(ev.state.health, crds::Health::Healthy);
    let before = read_counter(&counter);
    veth.ping_from_ns(5);
    assert!(read_counter(&counter) >= before + 5, "the re-attached program counts");
}

/// A Degraded owner (one of its two XDP links removed by someone else) is repaired by
/// re-attaching that hook only: the other link keeps its id, the program is not reloaded.
#[test]
fn repairing_a_degraded_owner_reattaches_only_what_is_missing() {
    let rt = rt();
    let agent = TestAgent::new();
    let (a, b) = (Veth::new(), Veth::new());
    let spec = format!(
        "bytecode: {{path: /x.o}}\nprograms:\n  - {{name: count_packets, type: XDP, xdp: {{interfaces: [{}, {}], mode: Generic}}}}\n",
        a.host, b.host
    );
    let req = input("repair", &spec, "xdp_counter.o");
    let (s1, _) = rt.block_on(agent.manager.apply(req.clone())).unwrap();
    let (prog, links) = (s1.attached[0].program_id, s1.attached[0].link_ids.clone());
    let pin = agent.root.join("repair").join(&s1.revision).join("links/count_packets/1");
    std::fs::remove_file(&pin).unwrap();
    assert_eq!(xdp_prog_on(&b.host), None, "removing the pin detached the link");
    agent.manager.refresh_health();
    assert_eq!(agent.manager.list()[0].health, crds::Health::Degraded);

    let (s2, changed) = rt.block_on(agent.manager.apply(req)).unwrap();
    assert!(changed);
    assert_eq!(s2.attached[0].program_id, prog, "the program was not reloaded");
    assert_eq!(s2.attached[0].link_ids[0], links[0], "the working link was not touched");
    assert_ne!(s2.attached[0].link_ids[1], links[1]);
    assert_eq!(link_prog(links[0]), Some(u64::from(prog)));
    assert_eq!(xdp_prog_on(&b.host), Some(u64::from(prog)));
    assert_eq!(agent.manager.list()[0].health, crds::Health::Healthy);
}

/// BPF filters on `iface`'s clsact ingress, per `tc` (not our netlink code).
fn clsact_filters(iface: &str) -> Vec<String> {
    sh(&format!("tc filter show dev {iface} ingress"))
        .lines()
        .filter(|l| l.contains(" bpf ") && l.contains("handle"))
        .map(str::to_string)
        .collect()
}

fn tc_spec(ifaces: &[&str]) -> String {
    format!(
        "bytecode: {{path: /x.o}}\nprograms:\n  - {{name: count_tc, type: TC, tc: {{interfaces: [{}], direction: Ingress, priority: 50}}}}\n",
        ifaces.join(", ")
    )
}

/// clsact (kernels before 6.6): a failed apply takes back the filters it attached, so
/// retries do not pile them up; a failed upgrade leaves exactly the old filter; a filter
/// deleted by hand is seen (read from the kernel) and re-attached by a repair.
#[test]
fn clsact_filters_are_rolled_back_checked_and_repaired() {
    let rt = rt();
    let agent = TestAgent::with_backend(agent::attach::TcBackend::Clsact);
    let veth = Veth::new();
    let bad = input("clsact", &tc_spec(&[&veth.host, "nosuchif0"]), "tc_counter.o");
    for _ in 0..3 {
        let e = rt.block_on(agent.manager.apply(bad.clone())).unwrap_err();
        assert_eq!(e.reason, agent::error::Reason::InterfaceNotFound);
    }
    assert_eq!(clsact_filters(&veth.host), Vec::<String>::new(), "failed applies left filters");

    // R1 runs; R2 attaches its filter, then fails on its next program: R1's filter only.
    let (s1, _) = rt.block_on(agent.manager.apply(input("clsact", &tc_spec(&[&veth.host]), "tc_counter.o"))).unwrap();
    // An upgrade (another priority) that attaches on the first interface, then fails.
    let r2 = tc_spec(&[&veth.host, "nosuchif0"]).replace("priority: 50", "priority: 60");
    let e = rt.block_on(agent.manager.apply(input("clsact", &r2, "tc_counter.o"))).unwrap_err();
    assert_eq!(e.reason, agent::error::Reason::InterfaceNotFound, "{e}");
    let filters = clsact_filters(&veth.host);
    assert_eq!(filters.len(), 1, "exactly R1's filter: {filters:?}");
    assert!(filters[0].contains(&format!("id {}", s1.attached[0].program_id)), "{filters:?}");
    // Back to R1 (what runs): nothing changes, the failure is forgotten.
    let (_, changed) =
        rt.block_on(agent.manager.apply(input("clsact", &tc_spec(&[&veth.host]), "tc_counter.o"))).unwrap();
    assert!(!changed);

    // Deleted by hand: Degraded, read from the kernel; repaired with the same program.
    sh(&format!("tc filter del dev {} ingress", veth.host));
    agent.manager.refresh_health();
    let listed = agent.manager.list();
    assert_eq!(listed[0].health, crds::Health::Degraded);
    assert!(listed[0].last_error.as_deref().is_some_and(|e| e.contains("clsact")), "{:?}", listed[0].last_error);
    let (s3, changed) =
        rt.block_on(agent.manager.apply(input("clsact", &tc_spec(&[&veth.host]), "tc_counter.o"))).unwrap();
    assert!(changed);
    assert_eq!(s3.attached[0].program_id, s1.attached[0].program_id, "not reloaded");
    let filters = clsact_filters(&veth.host);
    assert_eq!(filters.len(), 1, "{filters:?}");
    let counter = map_pin(&s3, "tc_packet_count");
    let before = read_counter(&counter);
    veth.ping_from_ns(3);
    assert!(read_counter(&counter) >= before + 3);
    rt.block_on(agent.manager.remove(&crds::names::OwnerUid::new("clsact").unwrap())).unwrap();
    assert!(clsact_filters(&veth.host).is_empty());
}

/// A revision whose program pin vanished must be rebuilt; if that rebuild fails (here:
/// its interface is gone meanwhile), the owner's maps and their contents stay, and the
/// next successful apply carries on counting from where it was.
#[test]
fn a_failed_rebuild_keeps_the_owners_maps() {
    let rt = rt();
    let agent = TestAgent::new();
    let veth = Veth::new();
    let req = input("rebuild", &xdp_spec(&veth.host), "xdp_counter.o");
    let (s1, _) = rt.block_on(agent.manager.apply(req.clone())).unwrap();
    let counter = map_pin(&s1, "packet_count");
    veth.ping_from_ns(5);
    let counted = read_counter(&counter);
    assert!(counted >= 5);
    std::fs::remove_file(agent.root.join("rebuild").join(&s1.revision).join("progs/count_packets")).unwrap();
    sh(&format!("ip link del {}", veth.host));
    let e = rt.block_on(agent.manager.apply(req.clone())).unwrap_err();
    assert_eq!(e.reason, agent::error::Reason::InterfaceNotFound, "{e}");
    assert!(counter.exists(), "the failed rebuild removed the owner's maps: {:?}", agent.pins());
    assert_eq!(read_counter(&counter), counted, "the map's contents are intact");
    assert!(agent.state.join("rebuild.json").exists(), "the owner record is kept");
    create_again(&veth);
    let (s2, _) = rt.block_on(agent.manager.apply(req)).unwrap();
    assert_eq!(map_pin(&s2, "packet_count"), counter);
    veth.ping_from_ns(3);
    assert!(read_counter(&counter) >= counted + 3, "it carries on counting");
}
