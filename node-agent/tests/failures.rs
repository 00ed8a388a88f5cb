//! Every way an apply can fail leaves nothing behind (no pin, no program, no link, no
//! record) and tells the user why in words. Tests here run one at a time so the
//! kernel's program list can be compared before and after.

mod common;

use std::sync::Mutex;

use agent::error::Reason;
use common::*;

static SERIAL: Mutex<()> = Mutex::new(());

/// Apply `bytecode` with `spec`; it must fail with `reason` and a message containing
/// every one of `words`, and leave the kernel and bpffs as they were.
fn fails_cleanly(spec: &str, bytecode: Vec<u8>, reason: Reason, words: &[&str]) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let agent = TestAgent::new();
    let rt = rt();
    let before = kernel_program_ids();
    let e = rt.block_on(agent.manager.apply(input_bytes("failing", spec, bytecode))).unwrap_err();
    assert_eq!(e.reason, reason, "{e}");
    for w in words {
        assert!(e.message.contains(w), "message {:?} lacks {w:?}", e.message);
    }
    assert!(!e.message.contains("os error") || e.message.len() > 40, "a bare errno is not an explanation: {e}");
    assert!(agent.pins().is_empty(), "left in bpffs: {:?}", agent.pins());
    assert!(std::fs::read_dir(&agent.state).unwrap().next().is_none(), "owner record left");
    let new: Vec<u64> = kernel_program_ids().into_iter().filter(|id| !before.contains(id)).collect();
    for id in new {
        assert!(program_gone(id as u32), "program {id} left loaded: {}", sh(&format!("bpftool prog show id {id}")));
    }
    // The owner is reported as failed, with the reason.
    let state = agent.manager.list().pop().expect("failed owner listed");
    assert_eq!(state.health, crds::Health::Failed);
    assert!(state.last_error.as_deref().unwrap_or_default().contains(reason.as_str()));
}

fn xdp(iface: &str, function: &str) -> String {
    format!(
        "bytecode: {{path: /x.o}}\nprograms:\n  - {{name: {function}, type: XDP, xdp: {{interfaces: [{iface}], mode: Generic}}}}\n"
    )
}

#[test]
fn verifier_rejection_quotes_the_log() {
    let veth = Veth::new();
    fails_cleanly(
        &xdp(&veth.host, "bad_access"),
        object_bytes("verifier_reject.o"),
        Reason::VerifierRejected,
        &["verifier rejected", "invalid access to packet"],
    );
}

#[test]
fn missing_function_lists_the_ones_there() {
    let veth = Veth::new();
    fails_cleanly(
        &xdp(&veth.host, "count_pakets"),
        object_bytes("xdp_counter.o"),
        Reason::ProgramNotFound,
        &["\"count_pakets\" is not a program", "count_packets"],
    );
}

#[test]
fn function_of_another_type_is_named() {
    let veth = Veth::new();
    fails_cleanly(
        &xdp(&veth.host, "count_openat"),
        object_bytes("tracepoint_openat.o"),
        Reason::InvalidSpec,
        &["compiled as a Tracepoint program", "spec says type XDP"],
    );
}

#[test]
fn missing_interface_is_named() {
    fails_cleanly(
        &xdp("nosuchif0", "count_packets"),
        object_bytes("xdp_counter.o"),
        Reason::InterfaceNotFound,
        &["interface \"nosuchif0\" does not exist on this node"],
    );
}

#[test]
fn failure_of_a_later_program_detaches_the_earlier_ones() {
    let veth = Veth::new();
    let spec = format!(
        "bytecode: {{path: /x.o}}\nprograms:\n  - {{name: count_raw_sys_enter, type: RawTracepoint, rawTracepoint: {{names: [sys_enter]}}}}\n  - {{name: xdp_drop, type: XDP, xdp: {{interfaces: [{}, nosuchif1]}}}}\n",
        veth.host
    );
    fails_cleanly(&spec, object_bytes("multi.o"), Reason::InterfaceNotFound, &["nosuchif1"]);
    // xdp_drop was attached to the veth before nosuchif1 failed: traffic must flow.
    veth.ping_from_ns(2);
}

#[test]
fn missing_tracepoints_are_named() {
    fails_cleanly(
        "bytecode: {path: /x.o}\nprograms:\n  - {name: count_openat, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_nosuch]}}\n",
        object_bytes("tracepoint_openat.o"),
        Reason::HookNotFound,
        &["tracepoint syscalls/sys_enter_nosuch does not exist"],
    );
    fails_cleanly(
        "bytecode: {path: /x.o}\nprograms:\n  - {name: count_raw_sys_enter, type: RawTracepoint, rawTracepoint: {names: [no_such_raw_tp]}}\n",
        object_bytes("multi.o"),
        Reason::HookNotFound,
        &["raw tracepoint \"no_such_raw_tp\" does not exist"],
    );
}

#[test]
fn missing_uprobe_target_symbol_and_cgroup_are_named() {
    let target = object("uprobe_target");
    fails_cleanly(
        "bytecode: {path: /x.o}\nprograms:\n  - {name: count_calls, type: Uprobe, uprobe: {target: /nonexistent/bin, symbol: main}}\n",
        object_bytes("uprobe_counter.o"),
        Reason::TargetNotFound,
        &[
            "uprobe target /nonexistent/bin on this node is missing, not a regular file, unreadable, or outside the allowed paths",
        ],
    );
    fails_cleanly(
        &format!(
            "bytecode: {{path: /x.o}}\nprograms:\n  - {{name: count_calls, type: Uprobe, uprobe: {{target: {}, symbol: no_such_symbol}}}}\n",
            target.display()
        ),
        object_bytes("uprobe_counter.o"),
        Reason::TargetNotFound,
        &["no_such_symbol"],
    );
    fails_cleanly(
        "bytecode: {path: /x.o}\nprograms:\n  - {name: cgroup_count_egress, type: CgroupSkb, cgroupSkb: {cgroupPath: /sys/fs/cgroup/unified/no-such-cgroup, direction: Egress}}\n",
        object_bytes("multi.o"),
        Reason::TargetNotFound,
        &["cgroup /sys/fs/cgroup/unified/no-such-cgroup cannot be opened"],
    );
}

#[test]
fn malformed_and_foreign_objects_are_refused() {
    fails_cleanly(
        &xdp("lo", "count_packets"),
        b"definitely not an ELF".to_vec(),
        Reason::MalformedElf,
        &["not an ELF object"],
    );
    fails_cleanly(
        &xdp("lo", "count_packets"),
        object_bytes("uprobe_target"),
        Reason::MalformedElf,
        &["not eBPF", "clang -target bpf"],
    );
    let mut truncated = object_bytes("xdp_counter.o");
    truncated.truncate(truncated.len() / 2);
    fails_cleanly(&xdp("lo", "count_packets"), truncated, Reason::MalformedElf, &[]);
}

#[test]
fn oversized_bytecode_is_refused_before_parsing() {
    let mut big = object_bytes("xdp_counter.o");
    // The agent's limit is the largest any source may carry (16 MiB, from an image).
    big.resize(crds::limits::MAX_IMAGE_BYTECODE_BYTES + 1, 0);
    fails_cleanly(&xdp("lo", "count_packets"), big, Reason::BytecodeTooLarge, &["limit is 16777216 bytes"]);
}
