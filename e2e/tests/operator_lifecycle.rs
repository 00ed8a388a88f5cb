//! The operator's own life against a real API server: failover after kill -9, restart
//! without re-applying, SIGTERM handover, ConfigMap edits rolling out at once, and a
//! failing revision backing off. Kernel facts (program and link ids, revision
//! directories) and the agents' own request counters are the evidence, not the
//! operator's word. Without KUBECONFIG each scenario prints one SKIP line.

use std::time::{Duration, Instant};

use crds::BpfProgram;
use crds::revision::{BytecodeIdentity, Revision};
use e2e::env::{APPLY_TIMEOUT, Env, condition, current_status, has_condition, link_ids, program_id, ready};
use e2e::kernel;
use e2e::util::{self, wait_for};
use kube::ResourceExt;

const XDP_OBJ: &str = "xdp_counter.o";
const XDP_V2_OBJ: &str = "xdp_counter_v2.o";
const BAD_OBJ: &str = "verifier_reject.o";
/// Lease duration (15 s) + a standby's poll (1 s) + slack for a loaded machine.
const FAILOVER_LIMIT: Duration = Duration::from_secs(18);

/// Per node: (XDP program id on eth0 per the kernel, link ids per BpfNode that the
/// kernel has).
type Running = Vec<(u64, Vec<u64>)>;

fn running(env: &Env, nodes: &[usize], uid: &str, rev: &str) -> Running {
    nodes
        .iter()
        .map(|&i| {
            let e = env.wait_node_runs(i, uid, rev);
            let id = program_id(&e, "count_packets");
            let on_eth0: Vec<u64> = env.node(i).xdp("eth0").iter().map(|a| a.id).collect();
            assert_eq!(on_eth0, vec![id], "{}: eth0 carries exactly the program BpfNode names", env.node(i).name);
            let links = link_ids(&e);
            assert!(
                links.iter().all(|l| kernel::link_exists(*l)),
                "{}: links {links:?} not in kernel",
                env.node(i).name
            );
            (id, links)
        })
        .collect()
}

fn served(env: &Env, nodes: &[usize], method: &str) -> Vec<f64> {
    nodes.iter().map(|&i| env.node(i).served(method)).collect()
}

fn rev_uid(p: &BpfProgram) -> (String, String) {
    (p.status.as_ref().and_then(|s| s.revision.clone()).expect("revision"), p.uid().expect("uid"))
}

/// An XDP program from a ConfigMap on every node of the run, Ready on `n` nodes.
fn xdp_on_all(env: &mut Env, n: usize) -> (Vec<usize>, String, String, String, String) {
    let nodes: Vec<usize> = (0..n).map(|_| env.add_node(&[])).collect();
    let cm = env.bytecode_configmap("bytecode", &[XDP_OBJ, XDP_V2_OBJ]);
    let name = env.create_program(
        "xdp-counter",
        env.xdp_spec(env.selector(&[]), env.configmap_bytecode(&cm, XDP_OBJ), "count_packets", &["eth0"]),
    );
    let p = env.wait_ready(&name, n as i32);
    let (rev, uid) = rev_uid(&p);
    (nodes, cm, name, rev, uid)
}

/// The operator `op` finished a whole resync pass after `after` passes.
fn wait_resync(op: &e2e::operator::Operator, after: f64) {
    wait_for(Duration::from_secs(30), "a resync pass of the new leader", || {
        let n = op.metric("bpfleet_operator_resync_passes_total").unwrap_or(0.0);
        if n > after { Ok(()) } else { Err(format!("{n} passes")) }
    });
}

#[test]
fn leader_killed_standby_takes_over_and_touches_nothing() {
    const TEST: &str = "leader_killed_standby_takes_over_and_touches_nothing";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let mut env = Env::start(TEST, &kubeconfig);
    let mut standby = env.start_standby("b");
    let (nodes, _cm, name, rev, uid) = xdp_on_all(&mut env, 3);
    assert!(!standby.is_leader(), "two leaders at once");
    let before = running(&env, &nodes, &uid, &rev);
    let applies = served(&env, &nodes, "apply");
    let removes = served(&env, &nodes, "remove");
    let epoch_a = env.operator.as_ref().unwrap().metric("bpfleet_operator_leader_epoch").unwrap();

    let killed = Instant::now();
    env.operator.as_mut().unwrap().kill9();
    standby.wait_leader(FAILOVER_LIMIT).unwrap_or_else(|e| panic!("{e:#}"));
    let took = killed.elapsed();
    eprintln!("{TEST}: standby leads {took:?} after kill -9 of the leader");
    assert!(standby.metric("bpfleet_operator_leader_epoch").unwrap() > epoch_a, "a new leader has a newer epoch");

    // The new leader syncs, lists every agent, resyncs: and changes nothing.
    wait_resync(&standby, 0.0);
    wait_resync(&standby, 1.0);
    let p = env.wait_program(&name, "Ready on 3 nodes after failover", APPLY_TIMEOUT, |p| ready(p, 3));
    assert_eq!(rev_uid(&p).0, rev);
    assert_eq!(running(&env, &nodes, &uid, &rev), before, "program and link ids unchanged on every node");
    assert_eq!(served(&env, &nodes, "apply"), applies, "the new leader sent no Apply");
    assert_eq!(served(&env, &nodes, "remove"), removes, "the new leader sent no Remove");
    for &i in &nodes {
        assert_eq!(env.node(i).revision_dirs(&uid), vec![rev.clone()], "{}", env.node(i).name);
    }
    env.operator = Some(standby);
}

#[test]
fn operator_restart_reapplies_nothing_and_writes_nothing() {
    const TEST: &str = "operator_restart_reapplies_nothing_and_writes_nothing";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let mut env = Env::start(TEST, &kubeconfig);
    let (nodes, _cm, name, rev, uid) = xdp_on_all(&mut env, 2);
    // Let the status and BpfNodes settle, then remember exactly what is stored.
    wait_resync(env.operator.as_ref().unwrap(), 1.0);
    let before = running(&env, &nodes, &uid, &rev);
    let stored = env.program(&name).resource_version();
    let applies = served(&env, &nodes, "apply");

    env.operator.as_mut().unwrap().stop();
    let op = e2e::operator::Operator::start(env.operator_config("restarted")).unwrap_or_else(|e| panic!("{e:#}"));
    // Owned by the env from here: its teardown needs an operator, also after a failure.
    env.operator = Some(op);
    let op = env.operator.as_ref().unwrap();
    wait_resync(op, 1.0);
    assert_eq!(op.metric("bpfleet_operator_caches_synced"), Some(1.0));
    assert_eq!(served(&env, &nodes, "apply"), applies, "a restarted operator re-applies nothing");
    assert_eq!(running(&env, &nodes, &uid, &rev), before, "program and link ids unchanged");
    let p = env.program(&name);
    assert_eq!(
        p.resource_version(),
        stored,
        "the restarted operator wrote the BpfProgram (status must not move at rest): {:?}",
        p.status
    );
    ready(&p, 2).unwrap();
    // At rest: nothing written to BpfNodes either (they were already current).
    assert_eq!(op.metric("bpfleet_operator_bpfnode_writes_total"), Some(0.0));
}

#[test]
fn sigterm_hands_leadership_over_in_seconds() {
    const TEST: &str = "sigterm_hands_leadership_over_in_seconds";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let mut env = Env::start(TEST, &kubeconfig);
    let mut standby = env.start_standby("b");
    // Let the standby see the Lease held (it must not just find a free one).
    std::thread::sleep(Duration::from_secs(3));
    assert!(!standby.is_leader());
    // A standby that read the Lease is ready (it can take over); the leader is, with its
    // caches synced.
    assert!(e2e::util::http_get(standby.metrics, "/readyz").is_ok(), "the standby read the Lease: ready");
    let leader = env.operator.as_ref().unwrap();
    assert!(e2e::util::http_get(leader.metrics, "/readyz").is_ok());
    assert_eq!(leader.metric("bpfleet_operator_caches_synced"), Some(1.0), "ready means synced");

    let t = Instant::now();
    env.operator.as_mut().unwrap().sigterm();
    standby.wait_leader(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e:#}"));
    let took = t.elapsed();
    eprintln!("{TEST}: handover took {took:?}");
    assert!(took < Duration::from_secs(3), "SIGTERM handover took {took:?}");
    let status = env.operator.as_mut().unwrap().wait_exit(Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "the old leader exits cleanly on SIGTERM: {status}");

    // The new leader works: a program created now runs.
    let n = env.add_node(&[]);
    let cm = env.bytecode_configmap("bytecode", &[XDP_OBJ]);
    let name = env.create_program(
        "xdp-counter",
        env.xdp_spec(env.selector(&[]), env.configmap_bytecode(&cm, XDP_OBJ), "count_packets", &["eth0"]),
    );
    let (rev, uid) = rev_uid(&env.wait_ready(&name, 1));
    running(&env, &[n], &uid, &rev);
    env.operator = Some(standby);
}

#[test]
fn configmap_edit_reaches_every_node_within_ten_seconds() {
    const TEST: &str = "configmap_edit_reaches_every_node_within_ten_seconds";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let mut env = Env::start(TEST, &kubeconfig);
    let (nodes, cm, name, rev, uid) = xdp_on_all(&mut env, 3);
    let before = running(&env, &nodes, &uid, &rev);
    let spec = env.program(&name).spec;
    let v2 = util::object(XDP_V2_OBJ);
    let want = Revision::compute(&spec, BytecodeIdentity::Bytes(&v2)).to_string();
    assert_ne!(want, rev);

    // Replace the object under the same key: no change to the BpfProgram at all.
    let t = Instant::now();
    env.cluster.replace_configmap_key(&cm, XDP_OBJ, v2).unwrap_or_else(|e| panic!("{e:#}"));
    wait_for(Duration::from_secs(10), "every node to run the edited object", || {
        for &i in &nodes {
            let n = env.node(i);
            if n.revision_dirs(&uid) != vec![want.clone()] {
                return Err(format!("{} has revisions {:?}", n.name, n.revision_dirs(&uid)));
            }
        }
        Ok(())
    });
    eprintln!("{TEST}: a ConfigMap edit reached 3 nodes in {:?}", t.elapsed());
    let p = env.wait_program(&name, "Ready at the new revision", APPLY_TIMEOUT, |p| {
        ready(p, 3)?;
        match p.status.as_ref().and_then(|s| s.revision.as_deref()) {
            Some(r) if r == want => Ok(()),
            r => Err(format!("revision {r:?}")),
        }
    });
    assert_eq!(p.metadata.generation, Some(1), "the BpfProgram itself never changed");
    let after = running(&env, &nodes, &uid, &want);
    for (old, new) in before.iter().zip(&after) {
        assert_ne!(old.0, new.0, "a new program replaced the old one");
    }
}

#[test]
fn a_failing_revision_is_stalled_and_retried_ever_more_slowly() {
    const TEST: &str = "a_failing_revision_is_stalled_and_retried_ever_more_slowly";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let mut env = Env::start(TEST, &kubeconfig);
    let n = env.add_node(&[]);
    let cm = env.bytecode_configmap("bytecode", &[BAD_OBJ]);
    let name = env.create_program(
        "rejected",
        env.xdp_spec(env.selector(&[]), env.configmap_bytecode(&cm, BAD_OBJ), "bad_access", &["eth0"]),
    );
    let p = env.wait_program(&name, "Stalled=True with the verifier's reason", APPLY_TIMEOUT, |p| {
        has_condition(p, "Stalled", "True")?;
        has_condition(p, "Reconciling", "False")?;
        has_condition(p, "Ready", "False")?;
        let s = current_status(p)?;
        match s.failures.first() {
            Some(f) if f.reason == "VerifierRejected" && f.next_retry_time.is_some() => Ok(()),
            f => Err(format!("failure {f:?}")),
        }
    });
    let stalled = condition(p.status.as_ref().unwrap(), "Stalled").unwrap();
    assert!(stalled.message.contains("VerifierRejected"), "{}", stalled.message);

    // Follow the retries: the agent counts each refused load itself.
    let refused = |env: &Env| env.node(n).agent_metric("bpfleet_agent_apply_errors_total").unwrap_or(0.0);
    let mut seen: Vec<(i32, Instant)> = Vec::new();
    wait_for(Duration::from_secs(75), "four failed attempts", || {
        let p = env.program(&name);
        let f = p.status.as_ref().and_then(|s| s.failures.first().cloned()).ok_or("no failure")?;
        let attempts = f.attempts.unwrap_or(0);
        if seen.last().is_none_or(|(a, _)| *a != attempts) {
            seen.push((attempts, Instant::now()));
        }
        if attempts >= 4 { Ok(()) } else { Err(format!("{attempts} attempts so far")) }
    });
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
    eprintln!("{TEST}: attempts seen {:?}, gaps {gaps:?}", seen.iter().map(|s| s.0).collect::<Vec<_>>());
    assert!(gaps.len() >= 2, "saw too few attempts: {seen:?}");
    for w in gaps.windows(2) {
        assert!(w[1] > w[0] + Duration::from_secs(2), "retries must come ever more slowly: {gaps:?}");
    }
    let agent_count = refused(&env);
    assert!((4.0..=6.0).contains(&agent_count), "the agent saw {agent_count} failed applies, not a storm");
    assert!(env.node(n).xdp("eth0").is_empty(), "nothing of a rejected program is attached");
}

/// A leader cut off from the API server (it keeps running, it can still reach every
/// agent) demotes itself at its renew deadline, before the standby may take over; it
/// then neither resyncs nor removes what the new leader creates, and when the network
/// heals it stays a standby.
#[test]
fn a_partitioned_leader_demotes_itself_and_touches_nothing_after() {
    const TEST: &str = "a_partitioned_leader_demotes_itself_and_touches_nothing_after";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let mut env = Env::start(TEST, &kubeconfig);
    // The leader of this test reaches the API server through a proxy the test can cut.
    let target = e2e::proxy::api_server_addr(&kubeconfig).unwrap_or_else(|e| panic!("{e:#}"));
    let proxy = e2e::proxy::Proxy::start(target).unwrap_or_else(|e| panic!("{e:#}"));
    let proxied = env.workdir.join("kubeconfig-proxied");
    proxy.kubeconfig(&kubeconfig, &proxied).unwrap_or_else(|e| panic!("{e:#}"));
    env.operator.as_mut().unwrap().stop();
    let mut cfg = env.operator_config("partitioned");
    cfg.kubeconfig = Some(proxied);
    let partitioned = e2e::operator::Operator::start(cfg).unwrap_or_else(|e| panic!("{e:#}"));
    env.operator = Some(partitioned);
    let mut standby = env.start_standby("b");
    let (nodes, _cm, _first, _rev, _uid) = xdp_on_all(&mut env, 2);

    let cut = Instant::now();
    proxy.cut();
    let old = env.operator.as_ref().unwrap();
    wait_for(Duration::from_secs(13), "the cut-off leader to demote itself", || {
        if old.is_leader() { Err("still leading".into()) } else { Ok(()) }
    });
    let demoted = cut.elapsed();
    standby.wait_leader(FAILOVER_LIMIT).unwrap_or_else(|e| panic!("{e:#}"));
    let took_over = cut.elapsed();
    eprintln!("{TEST}: demoted after {demoted:?}, standby leads after {took_over:?}");
    assert!(demoted < took_over, "the old leader stops before the new one starts");

    // The new leader creates a program; the old one, still running and able to reach
    // every agent, must leave it alone through several of its resync periods.
    let tp_cm = env.bytecode_configmap("tp", &["tracepoint_openat.o"]);
    let tp = env.create_program(
        "openat",
        env.tracepoint_spec(
            env.selector(&[]),
            env.configmap_bytecode(&tp_cm, "tracepoint_openat.o"),
            "count_openat",
            "syscalls/sys_enter_openat",
        ),
    );
    let p = env.wait_ready(&tp, 2);
    let (rev, uid) = rev_uid(&p);
    let ids: Vec<u64> = nodes.iter().map(|&i| program_id(&env.wait_node_runs(i, &uid, &rev), "count_openat")).collect();
    let removes = served(&env, &nodes, "remove");
    std::thread::sleep(Duration::from_secs(12));
    for (k, &i) in nodes.iter().enumerate() {
        assert!(kernel::program_exists(ids[k]), "{}: the new leader's program was removed", env.node(i).name);
        assert_eq!(env.node(i).revision_dirs(&uid), vec![rev.clone()]);
    }
    assert_eq!(served(&env, &nodes, "remove"), removes, "nobody removed anything");
    let old = env.operator.as_ref().unwrap();
    assert_eq!(old.metric("bpfleet_operator_leader"), Some(0.0));

    // Healed: the old leader sees a live Lease and stays a standby.
    proxy.restore();
    std::thread::sleep(Duration::from_secs(5));
    assert!(!env.operator.as_ref().unwrap().is_leader(), "two leaders after the partition healed");
    assert!(standby.is_leader());
    let mut old = env.operator.take().unwrap();
    old.stop();
    env.operator = Some(standby);
}

/// A BpfProgram deleted and created again under the same name gets a history entry of
/// its own (ControllerRevision `<name>-<revision>`) even while the deleted one's entry is
/// still there (a garbage collector removes it only eventually; the e2e API server may
/// run none): after an operator restart a rollback reads the stable revision from it.
#[test]
fn a_program_created_again_under_its_name_owns_its_history() {
    const TEST: &str = "a_program_created_again_under_its_name_owns_its_history";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let mut env = Env::start(TEST, &kubeconfig);
    env.add_node(&[]);
    let cm = env.bytecode_configmap("bytecode", &[XDP_OBJ]);
    let spec = env.xdp_spec(env.selector(&[]), env.configmap_bytecode(&cm, XDP_OBJ), "count_packets", &["eth0"]);
    let name = env.create_program("again", spec.clone());
    let (rev, first) = rev_uid(&env.wait_ready(&name, 1));
    let history = |uid: &str| {
        let entries = env.cluster.controller_revisions(uid).unwrap_or_else(|e| panic!("{e:#}"));
        entries.into_iter().map(|(_, r)| r).collect::<Vec<_>>()
    };
    wait_for(Duration::from_secs(10), "the first program's history entry", || {
        let h = history(&first);
        if h == vec![rev.clone()] { Ok(()) } else { Err(format!("{h:?}")) }
    });

    env.cluster.delete_program(&name).unwrap_or_else(|e| panic!("{e:#}"));
    env.wait_program_gone(&name);
    env.cluster.create_program(&name, spec).unwrap_or_else(|e| panic!("{e:#}"));
    let (again, second) = rev_uid(&env.wait_ready(&name, 1));
    assert_eq!(again, rev, "the same spec and bytes: the same revision");
    assert_ne!(second, first);
    wait_for(Duration::from_secs(10), "the second program's own history entry", || {
        let h = history(&second);
        if h == vec![rev.clone()] { Ok(()) } else { Err(format!("history of the new uid: {h:?}")) }
    });
}
