//! The cluster-free half of the e2e harness, checked on this machine: process-mode nodes
//! and every kernel reading the scenarios rely on. The test plays the operator over
//! gRPC + mTLS (Apply/Remove from the host to the namespace address), so a failure here
//! points at the harness, not at the operator. Needs root; no KUBECONFIG.

use std::time::Duration;

use agent::tls::testpki::TestPki;
use crds::BpfProgramSpec;
use crds::revision::{BytecodeIdentity, Revision};
use e2e::kernel::{self, XdpAttachment};
use e2e::node::{AgentTls, ProcessNode};
use e2e::util::{self, wait_for};
use proto::v1;

fn apply_request(uid: &str, object: &str, interfaces: &str) -> v1::ApplyRequest {
    let bytes = util::object(object);
    let spec: BpfProgramSpec = serde_yaml::from_str(&format!(
        "bytecode: {{path: /unused.o}}\nprograms:\n- {{name: count_packets, type: XDP, xdp: {{interfaces: [{interfaces}], mode: Generic}}}}"
    ))
    .unwrap();
    v1::ApplyRequest {
        owner: Some(v1::Owner { uid: uid.into(), name: format!("{uid}-name") }),
        revision: Revision::compute(&spec, BytecodeIdentity::Bytes(&bytes)).as_str().into(),
        bytecode: Some(v1::apply_request::Bytecode::Elf(bytes.into())),
        programs: spec.programs.iter().map(proto::program_to_wire).collect(),
        global_data: Default::default(),
        ..Default::default()
    }
}

fn counter(node: &ProcessNode, pin: &std::path::Path, pings: u32, per_packet: u64) {
    let before = kernel::read_counter(pin).unwrap();
    node.ping(pings);
    let want = before + per_packet * u64::from(pings);
    wait_for(Duration::from_secs(10), format!("{} to reach {want}", pin.display()), || {
        let now = kernel::read_counter(pin).map_err(|e| format!("{e:#}"))?;
        if now >= want { Ok(()) } else { Err(format!("{now}")) }
    });
}

#[test]
fn process_node_kernel_readings_match_what_the_agent_reports() {
    if !util::is_root() {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIP e2e process-node kernel check: needs root (netns, bpffs, eBPF)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("bpfleet-e2e-pn-{}", util::random_suffix()));
    std::fs::create_dir_all(dir.join("pki")).unwrap();
    let pki = TestPki::generate(&dir.join("pki"));
    let bins = util::binaries();
    let name = format!("e2e-pn-{}", util::random_suffix());
    let mut node = ProcessNode::start(&name, &bins.agent, AgentTls::from_pki(&pki), pki.client_config(), &dir).unwrap();
    node.add_interface("extra0").unwrap();
    let uid = format!("e2e-pn-{}", util::random_suffix());

    // Apply v1 on eth0: what the agent reports is what bpftool, ip and bpffs show.
    let req = apply_request(&uid, "xdp_counter.o", "eth0");
    let rev1 = req.revision.clone();
    let state = node.apply(req).unwrap().state.unwrap();
    let id1 = u64::from(state.attached[0].program_id);
    assert_eq!(node.xdp("eth0"), vec![XdpAttachment { mode: "generic".into(), id: id1 }]);
    assert!(node.link_shows_xdp("eth0"));
    assert!(node.xdp("extra0").is_empty());
    assert_eq!(node.revision_dirs(&uid), vec![rev1.clone()]);
    let pin = std::path::PathBuf::from(&state.maps.iter().find(|m| m.name == "packet_count").unwrap().pin_path);
    assert_eq!(pin, node.owner_dir(&uid).join("maps/packet_count"));
    // Pings from the host enter the namespace through eth0, where XDP counts them.
    counter(&node, &pin, 10, 1);

    // SIGKILL and restart: same program, one attachment, one revision directory.
    node.kill_agent();
    assert_eq!(node.xdp("eth0"), vec![XdpAttachment { mode: "generic".into(), id: id1 }]);
    counter(&node, &pin, 3, 1);
    let list = node.restart_agent().unwrap();
    assert_eq!(list.owners.len(), 1);
    assert_eq!(u64::from(list.owners[0].attached[0].program_id), id1);
    assert_eq!(node.xdp("eth0").len(), 1);

    // New revision: a new program on the same link, the old one freed, the map kept.
    let req = apply_request(&uid, "xdp_counter_v2.o", "eth0");
    let rev2 = req.revision.clone();
    assert_ne!(rev1, rev2);
    let state = node.apply(req).unwrap().state.unwrap();
    let id2 = u64::from(state.attached[0].program_id);
    assert_ne!(id1, id2);
    assert_eq!(node.xdp("eth0"), vec![XdpAttachment { mode: "generic".into(), id: id2 }]);
    assert_eq!(node.revision_dirs(&uid), vec![rev2]);
    wait_for(Duration::from_secs(10), "the old program to be freed", || {
        if kernel::program_exists(id1) { Err("loaded".to_string()) } else { Ok(()) }
    });
    counter(&node, &pin, 10, 2);

    // A missing interface is refused in words and leaves nothing.
    let other = format!("{uid}-x");
    let err = node.apply(apply_request(&other, "xdp_counter.o", "e2e-missing")).unwrap_err();
    assert!(format!("{err:#}").contains("e2e-missing"), "{err:#}");
    assert!(!node.owner_dir(&other).exists());

    // Remove: nothing left in bpffs or on the interface.
    assert!(node.remove(v1::Owner { uid: uid.clone(), name: String::new() }).unwrap());
    assert!(node.pins().is_empty(), "{:?}", node.pins());
    assert!(node.xdp("eth0").is_empty());
    assert!(!node.link_shows_xdp("eth0"));
    wait_for(Duration::from_secs(10), "the program to be freed", || {
        if kernel::program_exists(id2) { Err("loaded".to_string()) } else { Ok(()) }
    });
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
