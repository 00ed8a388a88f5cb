//! Maps across revisions, read from the kernel with bpftool: a compatible map keeps its
//! contents across an upgrade and a rollback (a counter keeps counting); an incompatible
//! one is recreated empty and the owner's state says why; `onUpgrade: Recreate` starts
//! every new revision at zero; a failed apply leaves the running revision's map pinned
//! and untouched.

mod common;

use std::path::Path;

use common::*;

fn xdp_spec(iface: &str, maps: &str) -> String {
    format!(
        "bytecode: {{path: /x.o}}\n{maps}programs:\n  - {{name: count_packets, type: XDP, xdp: {{interfaces: [{iface}], mode: Generic}}}}\n"
    )
}

/// Kernel id and value size of the map pinned at `pin`.
fn map_identity(pin: &Path) -> (u64, u64) {
    let v: serde_json::Value =
        serde_json::from_str(&sh(&format!("bpftool -j map show pinned {}", pin.display()))).unwrap();
    (v["id"].as_u64().unwrap(), v["bytes_value"].as_u64().unwrap())
}

fn recreated(agent: &TestAgent) -> Vec<String> {
    agent.manager.list().pop().unwrap().maps_recreated
}

#[test]
fn a_counter_keeps_counting_across_an_upgrade_and_a_rollback() {
    let agent = TestAgent::new();
    let veth = Veth::new();
    let rt = rt();
    let spec = xdp_spec(&veth.host, "");
    let (s1, _) = rt.block_on(agent.manager.apply(input("keep", &spec, "xdp_counter.o"))).unwrap();
    let pin = map_pin(&s1, "packet_count");
    let map = map_identity(&pin);
    veth.ping_from_ns(3);
    let c1 = read_counter(&pin);
    assert!(c1 >= 3);

    // Upgrade: v2 adds 2 per packet to the same map.
    let (s2, changed) = rt.block_on(agent.manager.apply(input("keep", &spec, "xdp_counter_v2.o"))).unwrap();
    assert!(changed && s2.revision != s1.revision);
    assert_eq!(map_pin(&s2, "packet_count"), pin);
    assert_eq!(map_identity(&pin), map, "the same kernel map, not a copy");
    assert!(s2.maps_recreated.is_empty(), "{s2:?}");
    let c2 = read_counter(&pin);
    assert!(c2 >= c1, "kept its contents: {c1} -> {c2}");
    veth.ping_from_ns(2);
    let c3 = read_counter(&pin);
    assert!(c3 >= c2 + 4, "v2 counts on: {c2} -> {c3}");

    // Rollback to the first revision: still the same map, still counting.
    let (s3, changed) = rt.block_on(agent.manager.apply(input("keep", &spec, "xdp_counter.o"))).unwrap();
    assert!(changed);
    assert_eq!(s3.revision, s1.revision);
    assert_eq!(map_identity(&pin), map);
    assert!(s3.maps_recreated.is_empty());
    let c4 = read_counter(&pin);
    assert!(c4 >= c3, "kept across the rollback: {c3} -> {c4}");
    veth.ping_from_ns(2);
    assert!(read_counter(&pin) >= c4 + 2);
}

#[test]
fn an_incompatible_map_is_recreated_empty_and_reported() {
    let agent = TestAgent::new();
    let veth = Veth::new();
    let rt = rt();
    let spec = xdp_spec(&veth.host, "");
    let (s1, _) = rt.block_on(agent.manager.apply(input("wide", &spec, "xdp_counter.o"))).unwrap();
    let pin = map_pin(&s1, "packet_count");
    veth.ping_from_ns(20);
    let (old_id, old_size) = map_identity(&pin);
    assert_eq!(old_size, 8);
    assert!(read_counter(&pin) >= 20);

    // packet_count becomes {packets, bytes}: value size 8 -> 16.
    let (s2, _) = rt.block_on(agent.manager.apply(input("wide", &spec, "xdp_counter_wide.o"))).unwrap();
    assert_eq!(s2.maps_recreated, vec!["packet_count: value size 8 -> 16, recreated empty".to_string()]);
    assert_eq!(recreated(&agent), s2.maps_recreated, "List says so too");
    assert_eq!(map_pin(&s2, "packet_count"), pin, "the fresh map took the pin over");
    let (new_id, new_size) = map_identity(&pin);
    assert!(new_id != old_id && new_size == 16);
    assert!(read_counter(&pin) < 20, "starts empty");
    veth.ping_from_ns(2);
    assert!(read_counter(&pin) >= 2, "the new revision counts into the new map");
    assert!(!agent.pins().iter().any(|p| p.contains(&format!("{}/maps", s2.revision))), "{:?}", agent.pins());

    // And max entries 1 -> 4 the same way.
    let (s3, _) = rt.block_on(agent.manager.apply(input("wide", &spec, "map_mismatch.o"))).unwrap();
    assert_eq!(
        s3.maps_recreated,
        vec!["packet_count: value size 16 -> 8, max entries 1 -> 4, recreated empty".to_string()]
    );
}

#[test]
fn on_upgrade_recreate_starts_every_new_revision_at_zero() {
    let agent = TestAgent::new();
    let veth = Veth::new();
    let rt = rt();
    let spec = xdp_spec(&veth.host, "maps: [{name: packet_count, onUpgrade: Recreate}]\n");
    let (s1, _) = rt.block_on(agent.manager.apply(input("fresh", &spec, "xdp_counter.o"))).unwrap();
    let pin = map_pin(&s1, "packet_count");
    veth.ping_from_ns(20);
    assert!(read_counter(&pin) >= 20);
    let (old_id, _) = map_identity(&pin);
    let (s2, _) = rt.block_on(agent.manager.apply(input("fresh", &spec, "xdp_counter_v2.o"))).unwrap();
    assert_eq!(s2.maps_recreated, vec!["packet_count: onUpgrade is Recreate, recreated empty".to_string()]);
    assert_ne!(map_identity(&pin).0, old_id);
    assert!(read_counter(&pin) < 20, "starts at zero");
    // Applying the running revision again changes nothing, contents included.
    veth.ping_from_ns(2);
    let c = read_counter(&pin);
    let (_, changed) = rt.block_on(agent.manager.apply(input("fresh", &spec, "xdp_counter_v2.o"))).unwrap();
    assert!(!changed);
    assert!(read_counter(&pin) >= c);
}

#[test]
fn a_failed_apply_leaves_the_running_map_pinned_and_untouched() {
    let agent = TestAgent::new();
    let veth = Veth::new();
    let rt = rt();
    let (s1, _) = rt.block_on(agent.manager.apply(input("fail", &xdp_spec(&veth.host, ""), "xdp_counter.o"))).unwrap();
    let pin = map_pin(&s1, "packet_count");
    veth.ping_from_ns(3);
    let map = map_identity(&pin);
    let pins = agent.pins();
    // The new object needs a fresh map (value size 16) and then fails to attach: its
    // map was made beside the running one and goes with the failed attempt.
    let broken = xdp_spec(&format!("{}, nosuchif0", veth.host), "");
    let e = rt.block_on(agent.manager.apply(input("fail", &broken, "xdp_counter_wide.o"))).unwrap_err();
    assert!(e.message.contains("nosuchif0"), "{e}");
    assert_eq!(map_identity(&pin), map, "the running revision's map stays pinned");
    assert_eq!(agent.pins(), pins, "a failed upgrade must not change bpffs");
    let before = read_counter(&pin);
    veth.ping_from_ns(2);
    assert!(read_counter(&pin) >= before + 2, "the running revision keeps counting into it");
    let state = agent.manager.list().pop().unwrap();
    assert_eq!(state.revision, s1.revision);
    assert!(state.maps_recreated.is_empty());
}
