//! bpfleet end to end: a real API server (`KUBECONFIG`), the operator as a local process,
//! and process-mode nodes (a network namespace each, `eth0` a veth to the host, an agent
//! inside on its own bpffs root). Every scenario asserts both in the kernel (bpftool, ip,
//! bpffs, packet counters) and in the API (BpfProgram status, BpfNode objects).
//!
//! Run (root, a cluster you can write to; see docs/e2e.md):
//!   sudo -E env "PATH=$PATH" KUBECONFIG=$KUBECONFIG cargo test -p e2e -- --test-threads=1
//! Without KUBECONFIG each scenario prints one SKIP line and passes.

use std::path::Path;
use std::time::Duration;

use crds::BpfProgram;
use e2e::env::{
    APPLY_TIMEOUT, DEGRADE_TIMEOUT, Env, RECOVER_TIMEOUT, condition, current_status, entry, has_condition, link_ids,
    map_pin, program_id, ready,
};
use e2e::kernel::{self, XdpAttachment};
use e2e::node::ProcessNode;
use e2e::util::wait_for;
use kube::ResourceExt;

/// Label the scenarios select nodes by (next to the run label every selector has).
const ROLE: &str = "e2e.bpfleet.dev/role";
const XDP_OBJ: &str = "xdp_counter.o";
const XDP_V2_OBJ: &str = "xdp_counter_v2.o";
const TP_OBJ: &str = "tracepoint_openat.o";
const BAD_OBJ: &str = "verifier_reject.o";
const COUNTER_TIMEOUT: Duration = Duration::from_secs(15);
/// Programs and links are freed by the kernel asynchronously after their last reference.
const KERNEL_FREE_TIMEOUT: Duration = Duration::from_secs(15);

/// Ping `node` `pings` times from the host and wait until the XDP counter at `pin` grew
/// by at least `per_packet * pings`; returns the new value.
fn counter_grows(node: &ProcessNode, pin: &Path, pings: u32, per_packet: u64) -> u64 {
    let before = kernel::read_counter(pin).unwrap_or_else(|e| panic!("{}: {e:#}", node.name));
    node.ping(pings);
    let want = before + per_packet * u64::from(pings);
    wait_for(COUNTER_TIMEOUT, format!("{}: {} to reach {want}", node.name, pin.display()), || {
        let now = kernel::read_counter(pin).map_err(|e| format!("{e:#}"))?;
        if now >= want { Ok(now) } else { Err(format!("it is {now} (was {before})")) }
    })
}

/// Exactly one XDP program on `ifname` of `node`, the one with kernel id `id`.
fn assert_xdp_is(node: &ProcessNode, ifname: &str, id: u64) {
    let seen = node.xdp(ifname);
    assert_eq!(
        seen,
        vec![XdpAttachment { mode: "generic".into(), id }],
        "{}: {ifname} must carry exactly program {id}",
        node.name
    );
    assert!(node.link_shows_xdp(ifname), "{}: ip link does not show XDP on {ifname}", node.name);
}

fn assert_no_xdp(node: &ProcessNode, ifname: &str) {
    assert_eq!(node.xdp(ifname), vec![], "{}: {ifname} must carry no XDP program", node.name);
    assert!(!node.link_shows_xdp(ifname), "{}: ip link still shows XDP on {ifname}", node.name);
}

fn wait_program_freed(id: u64) {
    wait_for(KERNEL_FREE_TIMEOUT, format!("kernel program {id} to be freed"), || {
        if kernel::program_exists(id) { Err("still loaded".to_string()) } else { Ok(()) }
    });
}

fn wait_link_freed(id: u64) {
    wait_for(KERNEL_FREE_TIMEOUT, format!("kernel link {id} to be freed"), || {
        if kernel::link_exists(id) { Err("still exists".to_string()) } else { Ok(()) }
    });
}

/// A reconciled BpfProgram's status revision and its uid.
/// The BpfNode's `AgentReachable` condition.
fn agent_reachable(b: &crds::BpfNode) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    b.status.as_ref()?.conditions.iter().find(|c| c.type_ == crds::node::AGENT_REACHABLE)
}

fn rev_uid(p: &BpfProgram) -> (String, String) {
    let rev = p.status.as_ref().and_then(|s| s.revision.clone()).expect("a reconciled program has a revision");
    (rev, p.uid().expect("a stored object has a uid"))
}

#[test]
fn apply_runs_programs_on_exactly_the_selected_nodes() {
    const TEST: &str = "apply_runs_programs_on_exactly_the_selected_nodes";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let mut env = Env::start(TEST, &kubeconfig);
    let (a, b, c) = (env.add_node(&[(ROLE, "edge")]), env.add_node(&[(ROLE, "edge")]), env.add_node(&[(ROLE, "core")]));
    let cm = env.bytecode_configmap("bytecode", &[XDP_OBJ, TP_OBJ]);
    let xdp = env.create_program(
        "xdp-counter",
        env.xdp_spec(env.selector(&[(ROLE, "edge")]), env.configmap_bytecode(&cm, XDP_OBJ), "count_packets", &["eth0"]),
    );
    let tp = env.create_program(
        "openat",
        env.tracepoint_spec(
            env.selector(&[]),
            env.configmap_bytecode(&cm, TP_OBJ),
            "count_openat",
            "syscalls/sys_enter_openat",
        ),
    );

    // Status: Ready on the two edge nodes, settled, for this generation.
    let p = env.wait_ready(&xdp, 2);
    has_condition(&p, "Progressing", "False").unwrap();
    let (rev, uid) = rev_uid(&p);

    // Kernel and BpfNode, on each selected node: the program, its link, its pins, packets counted.
    for i in [a, b] {
        let e = env.wait_node_runs(i, &uid, &rev);
        let n = env.node(i);
        let id = program_id(&e, "count_packets");
        assert_xdp_is(n, "eth0", id);
        let links = link_ids(&e);
        assert_eq!(links.len(), 1, "{}: one link for one interface: {e:?}", n.name);
        assert!(links.iter().all(|l| kernel::link_exists(*l)), "{}: links {links:?} not in the kernel", n.name);
        assert!(
            n.owner_dir(&uid).join(&rev).join("progs/count_packets").exists(),
            "{}: program not pinned: {:?}",
            n.name,
            n.pins()
        );
        assert_eq!(n.revision_dirs(&uid), vec![rev.clone()], "{}", n.name);
        let pin = map_pin(&e, "packet_count");
        assert_eq!(pin, n.owner_dir(&uid).join("maps/packet_count"), "BpfNode must point into {}'s own root", n.name);
        counter_grows(n, &pin, 10, 1);
    }

    // The unselected node runs nothing of it, in the kernel and per its BpfNode.
    let n = env.node(c);
    assert_no_xdp(n, "eth0");
    assert!(!n.owner_dir(&uid).exists(), "{}: unselected node has pins of {xdp}: {:?}", n.name, n.pins());
    env.wait_node_runs_nothing_of(c, &uid);

    // The tracepoint program selects every node of the run: each has its own copy and counts.
    let p = env.wait_ready(&tp, 3);
    let (tp_rev, tp_uid) = rev_uid(&p);
    let mut ids = Vec::new();
    for i in [a, b, c] {
        let e = env.wait_node_runs(i, &tp_uid, &tp_rev);
        let id = program_id(&e, "count_openat");
        assert!(kernel::program_exists(id), "program {id} of {} not in the kernel", env.node(i).name);
        ids.push(id);
        let pin = map_pin(&e, "openat_count");
        let before = kernel::read_counter(&pin).unwrap();
        wait_for(COUNTER_TIMEOUT, format!("{} to count openat", pin.display()), || {
            let _ = std::fs::read("/etc/hostname");
            let now = kernel::read_counter(&pin).map_err(|e| format!("{e:#}"))?;
            if now > before { Ok(()) } else { Err(format!("still {now}")) }
        });
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each node's agent loads its own program");
}

#[test]
fn node_label_change_moves_the_program() {
    const TEST: &str = "node_label_change_moves_the_program";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let mut env = Env::start(TEST, &kubeconfig);
    let (a, b) = (env.add_node(&[(ROLE, "edge")]), env.add_node(&[]));
    let cm = env.bytecode_configmap("bytecode", &[XDP_OBJ]);
    let xdp = env.create_program(
        "xdp-counter",
        env.xdp_spec(env.selector(&[(ROLE, "edge")]), env.configmap_bytecode(&cm, XDP_OBJ), "count_packets", &["eth0"]),
    );
    let p = env.wait_ready(&xdp, 1);
    let (rev, uid) = rev_uid(&p);
    let old_id = program_id(&env.wait_node_runs(a, &uid, &rev), "count_packets");
    assert_xdp_is(env.node(a), "eth0", old_id);
    assert_no_xdp(env.node(b), "eth0");

    // Move the label from a to b.
    env.set_node_labels(a, &[(ROLE, None)]);
    env.set_node_labels(b, &[(ROLE, Some("edge"))]);

    // Kernel: a carries nothing, b carries exactly one program.
    let new_id = wait_for(APPLY_TIMEOUT, "the XDP program to move from node a to node b", || {
        let (on_a, on_b) = (env.node(a).xdp("eth0"), env.node(b).xdp("eth0"));
        match (on_a.as_slice(), on_b.as_slice()) {
            ([], [only]) => Ok(only.id),
            _ => Err(format!("a: {on_a:?}, b: {on_b:?}")),
        }
    });
    assert_xdp_is(env.node(b), "eth0", new_id);
    assert_no_xdp(env.node(a), "eth0");
    assert!(!env.node(a).owner_dir(&uid).exists(), "node a keeps pins: {:?}", env.node(a).pins());
    wait_program_freed(old_id);

    // Status: still one target, Ready; same generation and revision (the selector is
    // not part of what a node runs). BpfNodes: b runs it, a does not.
    let p = env.wait_program(&xdp, "Ready on node b", APPLY_TIMEOUT, |p| ready(p, 1));
    assert_eq!(p.metadata.generation, Some(1), "a Node label change is not a spec change");
    assert_eq!(rev_uid(&p).0, rev, "moving a program between nodes is not a new revision");
    let e = env.wait_node_runs(b, &uid, &rev);
    assert_eq!(program_id(&e, "count_packets"), new_id, "BpfNode of b names the program the kernel runs");
    env.wait_node_runs_nothing_of(a, &uid);
    counter_grows(env.node(b), &map_pin(&e, "packet_count"), 10, 1);
}

#[test]
fn agent_killed_and_restarted_degrades_then_recovers_without_duplicates() {
    const TEST: &str = "agent_killed_and_restarted_degrades_then_recovers_without_duplicates";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let mut env = Env::start(TEST, &kubeconfig);
    let (a, b) = (env.add_node(&[]), env.add_node(&[]));
    let cm = env.bytecode_configmap("bytecode", &[XDP_OBJ]);
    let xdp = env.create_program(
        "xdp-counter",
        env.xdp_spec(env.selector(&[]), env.configmap_bytecode(&cm, XDP_OBJ), "count_packets", &["eth0"]),
    );
    let p = env.wait_ready(&xdp, 2);
    let (rev, uid) = rev_uid(&p);
    let e = env.wait_node_runs(a, &uid, &rev);
    let (id, links, pin) = (program_id(&e, "count_packets"), link_ids(&e), map_pin(&e, "packet_count"));
    let a_name = env.node(a).name.clone();

    // SIGKILL: the agent cannot clean up, and must not need to: what is pinned keeps running.
    env.node_mut(a).kill_agent();
    assert_xdp_is(env.node(a), "eth0", id);
    counter_grows(env.node(a), &pin, 5, 1);

    // First node a waits for its agent (within the operator's grace period): not a
    // failure, nothing Stalled.
    env.wait_program(&xdp, "node a waiting for its agent", DEGRADE_TIMEOUT, |p| {
        let s = current_status(p)?;
        if (s.target_nodes, s.ready_nodes, s.failed_nodes, s.waiting_nodes) != (2, 1, 0, 1) {
            return Err(format!(
                "want targets/ready/failed/waiting 2/1/0/1, have {}/{}/{}/{}",
                s.target_nodes, s.ready_nodes, s.failed_nodes, s.waiting_nodes
            ));
        }
        has_condition(p, "Reconciling", "True")?;
        has_condition(p, "Stalled", "False")
    });
    // After the grace period: node a unreachable (a failure), node b unaffected.
    let p = env.wait_program(&xdp, "node a reported unreachable", DEGRADE_TIMEOUT, |p| {
        let s = current_status(p)?;
        let f = s.failures.iter().find(|f| f.node == a_name).ok_or("node a is not among the failures")?;
        if f.reason != "AgentUnreachable" {
            return Err(format!("node a failed with {}, want AgentUnreachable", f.reason));
        }
        if (s.target_nodes, s.ready_nodes, s.failed_nodes) != (2, 1, 1) {
            return Err("want targets/ready/failed 2/1/1".into());
        }
        has_condition(p, "Ready", "False")?;
        has_condition(p, "Degraded", "True")
    });
    let s = p.status.as_ref().unwrap();
    assert_eq!(s.failures.len(), 1, "only node a failed: {:?}", s.failures);
    assert!(!s.failures[0].message.trim().is_empty(), "the failure says why");
    // Node a's BpfNode says why too (nothing listens: ConnectionRefused), written apart
    // from what the node runs, which it still lists; the heartbeat stays at its last answer.
    let down = env.wait_bpf_node(a, "AgentReachable=False, ConnectionRefused", |b| {
        let s = b.status.as_ref().ok_or("no status")?;
        let c = agent_reachable(b).ok_or("no AgentReachable")?;
        if (c.status.as_str(), c.reason.as_str()) != ("False", "ConnectionRefused") {
            return Err(format!("AgentReachable {} {}: {}", c.status, c.reason, c.message));
        }
        if entry(b, &uid).is_none() || s.last_heartbeat_time.is_none() {
            return Err(format!("the programs and the heartbeat must stay: {s:?}"));
        }
        Ok(())
    });
    let heartbeat = down.status.as_ref().and_then(|s| s.last_heartbeat_time.clone());
    assert!(agent_reachable(&down).unwrap().message.contains(&a_name), "{down:?}");

    // Restart on the same bpffs root and state directory: it adopts its pins.
    let list = env.node_mut(a).restart_agent().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(list.owners.len(), 1, "the restarted agent adopted exactly one owner: {list:?}");
    let p = env.wait_program(&xdp, "Ready again on both nodes", RECOVER_TIMEOUT, |p| ready(p, 2));
    assert_eq!(rev_uid(&p).0, rev);
    let s = p.status.as_ref().unwrap();
    assert!(condition(s, "Degraded").is_some_and(|c| c.status == "False"));

    // No duplicates: the same program and link, one revision directory, one of each pin.
    let e = env.wait_node_runs(a, &uid, &rev);
    assert_eq!(program_id(&e, "count_packets"), id, "the adopted program is the one that ran before");
    assert_eq!(link_ids(&e), links, "the adopted link is the one that existed before");
    let up = env.wait_bpf_node(a, "AgentReachable=True again", |b| match agent_reachable(b) {
        Some(c) if c.status == "True" => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let s = up.status.as_ref().unwrap();
    let at = |t: &Option<String>| t.as_deref().and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
    assert!(
        at(&s.last_heartbeat_time) > at(&heartbeat),
        "a newer heartbeat: {:?} after {heartbeat:?}",
        s.last_heartbeat_time
    );
    assert!(agent_reachable(&up).unwrap().last_transition_time > agent_reachable(&down).unwrap().last_transition_time);
    let n = env.node(a);
    assert_xdp_is(n, "eth0", id);
    assert_eq!(n.revision_dirs(&uid), vec![rev.clone()], "pins: {:?}", n.pins());
    let rev_dir = n.owner_dir(&uid).join(&rev);
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&rev_dir.join("progs")), vec!["count_packets"]);
    assert_eq!(names(&rev_dir.join("links/count_packets")), vec!["0"]);
    assert_eq!(env.node(a).list().unwrap().owners.len(), 1);
    counter_grows(n, &pin, 5, 1);
    assert_xdp_is(env.node(b), "eth0", program_id(&env.wait_node_runs(b, &uid, &rev), "count_packets"));
}

#[test]
fn node_deleted_drops_out_and_does_not_block_deletion() {
    const TEST: &str = "node_deleted_drops_out_and_does_not_block_deletion";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let mut env = Env::start(TEST, &kubeconfig);
    let (a, b) = (env.add_node(&[]), env.add_node(&[]));
    let cm = env.bytecode_configmap("bytecode", &[XDP_OBJ]);
    let xdp = env.create_program(
        "xdp-counter",
        env.xdp_spec(env.selector(&[]), env.configmap_bytecode(&cm, XDP_OBJ), "count_packets", &["eth0"]),
    );
    let p = env.wait_ready(&xdp, 2);
    let (rev, uid) = rev_uid(&p);
    let a_id = program_id(&env.wait_node_runs(a, &uid, &rev), "count_packets");
    env.wait_node_runs(b, &uid, &rev);
    let b_name = env.node(b).name.clone();

    // The Node object goes (the machine left the cluster; its agent keeps running here).
    env.delete_node_object(b);
    wait_for(Duration::from_secs(30), format!("Node {b_name} to be deleted"), || {
        match env.cluster.node_exists(&b_name) {
            Ok(false) => Ok(()),
            Ok(true) => Err("still there".to_string()),
            Err(e) => Err(format!("{e:#}")),
        }
    });
    env.wait_program(&xdp, "one target left, Ready", APPLY_TIMEOUT, |p| ready(p, 1));
    wait_for(Duration::from_secs(60), format!("BpfNode {b_name} to be deleted"), || {
        match env.cluster.bpf_node(&b_name) {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err("still there".to_string()),
            Err(e) => Err(format!("{e:#}")),
        }
    });
    assert_xdp_is(env.node(a), "eth0", a_id);

    // Deleting the program is not held up by the node that left.
    env.cluster.delete_program(&xdp).unwrap_or_else(|e| panic!("{e:#}"));
    env.wait_program_gone(&xdp);
    let n = env.node(a);
    assert_no_xdp(n, "eth0");
    assert!(!n.owner_dir(&uid).exists(), "{}: pins left: {:?}", n.name, n.pins());
    wait_program_freed(a_id);
}

#[test]
fn program_deleted_leaves_nothing_in_any_kernel_or_bpffs() {
    const TEST: &str = "program_deleted_leaves_nothing_in_any_kernel_or_bpffs";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let mut env = Env::start(TEST, &kubeconfig);
    let nodes = [env.add_node(&[]), env.add_node(&[]), env.add_node(&[])];
    let cm = env.bytecode_configmap("bytecode", &[XDP_OBJ, TP_OBJ]);
    let xdp = env.create_program(
        "xdp-counter",
        env.xdp_spec(env.selector(&[]), env.configmap_bytecode(&cm, XDP_OBJ), "count_packets", &["eth0"]),
    );
    let tp = env.create_program(
        "openat",
        env.tracepoint_spec(
            env.selector(&[]),
            env.configmap_bytecode(&cm, TP_OBJ),
            "count_openat",
            "syscalls/sys_enter_openat",
        ),
    );
    let (xdp_rev, xdp_uid) = rev_uid(&env.wait_ready(&xdp, 3));
    let (tp_rev, tp_uid) = rev_uid(&env.wait_ready(&tp, 3));
    // What each node runs, per BpfNode, checked against the kernel.
    let mut xdp_objs = Vec::new();
    let mut tp_objs = Vec::new();
    for &i in &nodes {
        let e = env.wait_node_runs(i, &xdp_uid, &xdp_rev);
        let id = program_id(&e, "count_packets");
        assert_xdp_is(env.node(i), "eth0", id);
        xdp_objs.push((id, link_ids(&e), map_pin(&e, "packet_count")));
        let e = env.wait_node_runs(i, &tp_uid, &tp_rev);
        let id = program_id(&e, "count_openat");
        assert!(kernel::program_exists(id));
        tp_objs.push((id, link_ids(&e)));
    }

    // Delete the XDP program: gone from the API once every node removed it.
    env.cluster.delete_program(&xdp).unwrap_or_else(|e| panic!("{e:#}"));
    env.wait_program_gone(&xdp);
    for (k, &i) in nodes.iter().enumerate() {
        let n = env.node(i);
        assert_no_xdp(n, "eth0");
        assert!(!n.owner_dir(&xdp_uid).exists(), "{}: pins of the deleted program: {:?}", n.name, n.pins());
        let (id, links, pin) = &xdp_objs[k];
        assert!(!pin.exists(), "{}: map pin {} left", n.name, pin.display());
        wait_program_freed(*id);
        links.iter().for_each(|l| wait_link_freed(*l));
        // The other program is untouched.
        let (tp_id, tp_links) = &tp_objs[k];
        assert!(kernel::program_exists(*tp_id), "{}: the tracepoint program went too", n.name);
        assert!(tp_links.iter().all(|l| kernel::link_exists(*l)), "{}: tracepoint links went too", n.name);
        assert_eq!(n.revision_dirs(&tp_uid), vec![tp_rev.clone()]);
    }
    for &i in &nodes {
        env.wait_node_runs_nothing_of(i, &xdp_uid);
    }
    env.wait_ready(&tp, 3);

    // Delete the last program: every bpffs root is empty, every kernel object freed.
    env.cluster.delete_program(&tp).unwrap_or_else(|e| panic!("{e:#}"));
    env.wait_program_gone(&tp);
    for (k, &i) in nodes.iter().enumerate() {
        let n = env.node(i);
        assert_eq!(n.pins(), Vec::<String>::new(), "{}: bpffs root {} not empty", n.name, n.bpffs_root.display());
        let (tp_id, tp_links) = &tp_objs[k];
        wait_program_freed(*tp_id);
        tp_links.iter().for_each(|l| wait_link_freed(*l));
        assert!(n.list().unwrap().owners.is_empty(), "{}: the agent still manages something", n.name);
        env.wait_bpf_node(i, "manages nothing", |b| match b.status.as_ref().map(|s| s.managed) {
            Some(0) => Ok(()),
            other => Err(format!("managed = {other:?}")),
        });
    }
}

#[test]
fn bad_bytecode_or_missing_interface_fails_only_that_node() {
    const TEST: &str = "bad_bytecode_or_missing_interface_fails_only_that_node";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let mut env = Env::start(TEST, &kubeconfig);
    let (a, b, c) = (env.add_node(&[]), env.add_node(&[(ROLE, "bad")]), env.add_node(&[]));
    // extra0 exists on a and b only.
    for i in [a, b] {
        env.node(i).add_interface("extra0").unwrap_or_else(|e| panic!("{e:#}"));
    }
    let (b_name, c_name) = (env.node(b).name.clone(), env.node(c).name.clone());
    let cm = env.bytecode_configmap("bytecode", &[XDP_OBJ, BAD_OBJ]);

    // A healthy program everywhere, to show the failures below leave it alone.
    let good = env.create_program(
        "xdp-counter",
        env.xdp_spec(env.selector(&[]), env.configmap_bytecode(&cm, XDP_OBJ), "count_packets", &["eth0"]),
    );
    let (good_rev, good_uid) = rev_uid(&env.wait_ready(&good, 3));
    let good_ids: Vec<u64> =
        [a, b, c].iter().map(|&i| program_id(&env.wait_node_runs(i, &good_uid, &good_rev), "count_packets")).collect();

    // Missing interface: every node is selected, c has no extra0.
    let extra = env.create_program(
        "xdp-extra",
        env.xdp_spec(env.selector(&[]), env.configmap_bytecode(&cm, XDP_OBJ), "count_packets", &["extra0"]),
    );
    let p = env.wait_program(&extra, "failed on node c only", APPLY_TIMEOUT, |p| {
        let s = current_status(p)?;
        if (s.target_nodes, s.ready_nodes, s.failed_nodes) != (3, 2, 1) {
            return Err("want targets/ready/failed 3/2/1".into());
        }
        has_condition(p, "Ready", "False")?;
        has_condition(p, "Degraded", "True")
    });
    let s = p.status.as_ref().unwrap();
    assert_eq!(s.failures.len(), 1, "{:?}", s.failures);
    let f = &s.failures[0];
    assert_eq!((f.node.as_str(), f.reason.as_str()), (c_name.as_str(), "InterfaceNotFound"), "{f:?}");
    assert_eq!(f.program.as_deref(), Some("count_packets"));
    assert!(f.message.contains("extra0"), "the message names the interface: {:?}", f.message);
    let ready_c = condition(s, "Ready").unwrap();
    assert_eq!(ready_c.reason, "NodeFailures");
    assert!(ready_c.message.contains(&c_name) && ready_c.message.contains("extra0"), "{:?}", ready_c.message);
    let (extra_rev, extra_uid) = rev_uid(&p);
    for i in [a, b] {
        let e = env.wait_node_runs(i, &extra_uid, &extra_rev);
        assert_xdp_is(env.node(i), "extra0", program_id(&e, "count_packets"));
    }
    assert!(!env.node(c).owner_dir(&extra_uid).exists(), "a failed apply leaves no pins: {:?}", env.node(c).pins());
    env.wait_bpf_node(c, "does not report the failed program Healthy", |bn| match entry(bn, &extra_uid) {
        Some(e) if e.health == crds::Health::Healthy => Err("Healthy".into()),
        _ => Ok(()),
    });

    // Bad bytecode: the verifier refuses it on the one node that selects it.
    let bad = env.create_program(
        "verifier-reject",
        env.xdp_spec(env.selector(&[(ROLE, "bad")]), env.configmap_bytecode(&cm, BAD_OBJ), "bad_access", &["eth0"]),
    );
    let p = env.wait_program(&bad, "failed on node b", APPLY_TIMEOUT, |p| {
        let s = current_status(p)?;
        if (s.target_nodes, s.ready_nodes, s.failed_nodes) != (1, 0, 1) {
            return Err("want targets/ready/failed 1/0/1".into());
        }
        has_condition(p, "Ready", "False")
    });
    let s = p.status.as_ref().unwrap();
    let f = &s.failures[0];
    assert_eq!((f.node.as_str(), f.reason.as_str()), (b_name.as_str(), "VerifierRejected"), "{f:?}");
    assert_eq!(f.program.as_deref(), Some("bad_access"));
    for words in ["verifier rejected", "invalid access to packet"] {
        assert!(f.message.contains(words), "the message should say {words:?}: {:?}", f.message);
    }
    let bad_uid = p.uid().unwrap();
    assert!(!env.node(b).owner_dir(&bad_uid).exists(), "a rejected program leaves no pins: {:?}", env.node(b).pins());

    // The others are unaffected: same revision, same kernel programs, still counting.
    let p = env.wait_ready(&good, 3);
    assert_eq!(rev_uid(&p).0, good_rev);
    for (k, i) in [a, b, c].into_iter().enumerate() {
        let e = env.wait_node_runs(i, &good_uid, &good_rev);
        assert_eq!(program_id(&e, "count_packets"), good_ids[k]);
        assert_xdp_is(env.node(i), "eth0", good_ids[k]);
        counter_grows(env.node(i), &map_pin(&e, "packet_count"), 5, 1);
    }
}

#[test]
fn spec_edit_rolls_out_a_new_revision_everywhere() {
    const TEST: &str = "spec_edit_rolls_out_a_new_revision_everywhere";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let mut env = Env::start(TEST, &kubeconfig);
    let nodes = [env.add_node(&[]), env.add_node(&[])];
    let cm = env.bytecode_configmap("bytecode", &[XDP_OBJ, XDP_V2_OBJ]);
    let xdp = env.create_program(
        "xdp-counter",
        env.xdp_spec(env.selector(&[]), env.configmap_bytecode(&cm, XDP_OBJ), "count_packets", &["eth0"]),
    );
    let p1 = env.wait_ready(&xdp, 2);
    let (rev1, uid) = rev_uid(&p1);
    let gen1 = p1.metadata.generation.unwrap();
    let mut before = Vec::new();
    for &i in &nodes {
        let e = env.wait_node_runs(i, &uid, &rev1);
        let pin = map_pin(&e, "packet_count");
        let count = counter_grows(env.node(i), &pin, 5, 1);
        before.push((program_id(&e, "count_packets"), pin, count));
    }

    // The edit: the second revision of the object (adds 2 per packet, same map).
    let edited =
        env.cluster.patch_program_spec(&xdp, serde_json::json!({"bytecode": env.configmap_bytecode(&cm, XDP_V2_OBJ)}));
    let gen2 = edited.unwrap_or_else(|e| panic!("{e:#}")).metadata.generation.unwrap();
    assert!(gen2 > gen1, "a spec edit moves the generation ({gen1} -> {gen2})");
    let p2 = env.wait_program(&xdp, "Ready at a new revision", APPLY_TIMEOUT, |p| {
        ready(p, 2)?;
        match p.status.as_ref().and_then(|s| s.revision.as_deref()) {
            Some(r) if r != rev1 => Ok(()),
            other => Err(format!("revision is still {other:?}")),
        }
    });
    assert_eq!(p2.status.as_ref().unwrap().observed_generation, Some(gen2));
    let (rev2, _) = rev_uid(&p2);

    for (k, &i) in nodes.iter().enumerate() {
        let e = env.wait_node_runs(i, &uid, &rev2);
        let n = env.node(i);
        let (old_id, old_pin, old_count) = &before[k];
        let new_id = program_id(&e, "count_packets");
        assert_ne!(new_id, *old_id, "{}: a new revision is a new kernel program", n.name);
        assert_xdp_is(n, "eth0", new_id);
        assert_eq!(n.revision_dirs(&uid), vec![rev2.clone()], "{}: the old revision is gone: {:?}", n.name, n.pins());
        wait_program_freed(*old_id);
        // Maps live at the owner level: the counter carried over and the new code runs (2 per packet).
        let pin = map_pin(&e, "packet_count");
        assert_eq!(&pin, old_pin);
        let now = kernel::read_counter(&pin).unwrap();
        assert!(now >= *old_count, "{}: the counter went back from {old_count} to {now}", n.name);
        let pings = 20;
        let after = counter_grows(n, &pin, pings, 2);
        assert!(after >= now + 2 * u64::from(pings), "{}: v2 counts 2 per packet", n.name);
    }
}
