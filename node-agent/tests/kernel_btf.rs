//! The kernel's BTF (~13 MiB parsed) is parsed only for a load that needs it and let go
//! when no load used it for a while, so an idle agent does not carry it.
//! Alone in its binary: the parsed copy is one per process.

mod common;

use std::time::Duration;

use agent::loader::kernel_btf;
use common::*;

#[test]
fn the_kernel_btf_is_parsed_only_for_loads_that_need_it_and_let_go_when_idle() {
    let agent = TestAgent::new();
    let rt = rt();
    let btf = kernel_btf();
    assert!(btf.available(), "this kernel has /sys/kernel/btf/vmlinux");
    btf.release_idle(Duration::ZERO);
    assert!(!btf.is_parsed());

    // An XDP counter has no CO-RE relocation: it loads and runs without the kernel BTF.
    let xdp = "bytecode: {path: /x.o}\nprograms:\n  - {name: count_packets, type: XDP, xdp: {interfaces: [lo], mode: Generic}}\n";
    let (state, _) = rt.block_on(agent.manager.apply(input("btf-xdp", xdp, "xdp_counter.o"))).unwrap();
    let id = state.attached[0].program_id;
    assert!(kernel_has_program(id), "program {id} is loaded");
    assert!(!btf.is_parsed(), "an object without CO-RE relocations must not parse the kernel BTF");

    // A Fentry program attaches through a kernel function's BTF id: the load parses it
    // (this kernel then refuses Fentry, or runs it: either way the BTF was needed).
    let fentry = "bytecode: {path: /x.o}\nprograms:\n  - {name: fentry_open, type: Fentry, fentry: {function: do_sys_openat2}}\n";
    let _ = rt.block_on(agent.manager.apply(input("btf-fentry", fentry, "multi.o")));
    assert!(btf.is_parsed(), "a Fentry load parses the kernel BTF");
    assert!(!btf.release_idle(Duration::from_secs(3600)), "kept while recently used");
    assert!(btf.is_parsed());
    assert!(btf.release_idle(Duration::ZERO), "let go once idle");
    assert!(!btf.is_parsed());
    assert!(btf.get().is_some(), "parsed again on demand from the kept file descriptor");

    let uid = |u: &str| crds::names::OwnerUid::new(u).unwrap();
    rt.block_on(agent.manager.remove(&uid("btf-xdp"))).unwrap();
    let _ = rt.block_on(agent.manager.remove(&uid("btf-fentry")));
    assert!(program_gone(id), "program {id} unloaded");
}
