//! Progressive rollout end to end: a real API server, the operator, five process-mode
//! nodes. What runs where is read from the kernel (bpftool on each node's eth0, packet
//! counters) and from the agents themselves (their request counters, and the apply gate
//! that sees how many are between two revisions at once), not from our own status.
//!
//! Run: see scenarios.rs. Without KUBECONFIG each scenario prints one SKIP line.

use std::time::Duration;

use crds::BpfProgram;
use crds::rollout::Phase;
use e2e::env::{APPLY_TIMEOUT, Env, has_condition, link_ids, map_pin, ready, rollout};
use e2e::gate::ApplyGate;
use e2e::kernel;
use e2e::util::{sh, wait_for};
use kube::ResourceExt;
use serde_json::{Value, json};

const ROLE: &str = "e2e.bpfleet.dev/role";
const XDP_OBJ: &str = "xdp_counter.o";
const XDP_V2_OBJ: &str = "xdp_counter_v2.o";
const BAD_OBJ: &str = "verifier_reject.o";
const NODES: usize = 5;

/// A fleet of `NODES` nodes and an XDP program on their eth0, rolled out and settled.
struct Fleet {
    env: Env,
    nodes: Vec<usize>,
    cm: String,
    name: String,
    uid: String,
    r1: String,
}

impl Fleet {
    fn start(test: &str, objects: &[&str], extra_interface: bool) -> Option<Fleet> {
        let kubeconfig = e2e::kubeconfig_or_skip(test)?;
        let mut env = Env::start(test, &kubeconfig);
        let nodes: Vec<usize> = (0..NODES).map(|_| env.add_node(&[(ROLE, "fleet")])).collect();
        if extra_interface {
            for i in &nodes {
                env.node(*i).add_interface("dum0").unwrap_or_else(|e| panic!("{e:#}"));
            }
        }
        let cm = env.bytecode_configmap("bytecode", objects);
        let spec = env.xdp_spec(
            env.selector(&[(ROLE, "fleet")]),
            env.configmap_bytecode(&cm, XDP_OBJ),
            "count_packets",
            &["eth0"],
        );
        let name = env.create_program("rollout", spec);
        let p = env.wait_phase(&name, Phase::Complete, APPLY_TIMEOUT);
        ready(&p, NODES as i32).unwrap();
        let r1 = p.status.as_ref().and_then(|s| s.revision.clone()).unwrap();
        let uid = p.uid().unwrap();
        Some(Fleet { env, nodes, cm, name, uid, r1 })
    }

    /// The XDP program id on each node's eth0, per bpftool.
    fn xdp_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|i| match self.env.node(*i).xdp("eth0").as_slice() {
                [one] => one.id,
                other => panic!("{}: eth0 carries {other:?}", self.env.node(*i).name),
            })
            .collect()
    }

    /// Apply requests each agent received, whatever their outcome (its own counter).
    fn apply_requests(&self) -> Vec<f64> {
        self.nodes
            .iter()
            .map(|i| {
                let n = self.env.node(*i);
                let text = wait_for(Duration::from_secs(10), format!("{}: /metrics", n.name), || {
                    e2e::util::http_get(n.metrics_addr(), "/metrics").map_err(|e| format!("{e:#}"))
                });
                text.lines()
                    .filter(|l| l.starts_with("bpfleet_agent_grpc_requests_total{") && l.contains("method=\"apply\""))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            })
            .collect()
    }

    fn patch(&self, spec: Value) -> BpfProgram {
        self.env.cluster.patch_program_spec(&self.name, spec).unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn gate(&self, hold: Duration) -> ApplyGate {
        let nodes = self.nodes.iter().map(|i| (self.env.node(*i).name.clone(), self.env.node(*i).gate_dir())).collect();
        ApplyGate::open(nodes, hold)
    }

    fn bytecode(&self, key: &str) -> Value {
        self.env.configmap_bytecode(&self.cm, key)
    }
}

fn changed(before: &[u64], after: &[u64]) -> Vec<usize> {
    before.iter().zip(after).enumerate().filter(|(_, (b, a))| b != a).map(|(i, _)| i).collect()
}

#[test]
fn a_good_revision_goes_out_step_by_step_within_max_in_flight() {
    const TEST: &str = "a_good_revision_goes_out_step_by_step_within_max_in_flight";
    let Some(f) = Fleet::start(TEST, &[XDP_OBJ, XDP_V2_OBJ], false) else { return };
    let before = f.xdp_ids();
    let links_before: Vec<Vec<u64>> =
        f.nodes.iter().map(|i| link_ids(&f.env.wait_node_runs(*i, &f.uid, &f.r1))).collect();

    // Each apply is held 1.5 s between attaching the new revision and detaching the old.
    let gate = f.gate(Duration::from_millis(1500));
    f.patch(json!({
        "bytecode": f.bytecode(XDP_V2_OBJ),
        "rollout": {"steps": [{"nodes": 1, "pause": {"duration": "5s"}}, {"nodes": "60%"}, {"nodes": "100%"}], "maxInFlight": 2},
    }));

    // Step 1: one node, then a pause during which the others are untouched.
    let p = f.env.wait_program(&f.name, "step 1 done and pausing", APPLY_TIMEOUT, |p| {
        let r = rollout(p)?;
        if r.phase == Phase::Paused && r.step == 1 && r.updated_nodes == 1 { Ok(()) } else { Err(format!("{r:?}")) }
    });
    let r2 = rollout(&p).unwrap().update_revision.unwrap();
    assert_ne!(r2, f.r1);
    let during = f.xdp_ids();
    let canary = changed(&before, &during);
    assert_eq!(canary.len(), 1, "only the canary switched: {before:?} -> {during:?}");
    for (k, i) in f.nodes.iter().enumerate() {
        if canary.contains(&k) {
            continue;
        }
        let b = f.env.wait_bpf_node(*i, "still on r1", |b| match e2e::env::entry(b, &f.uid) {
            Some(e) if e.revision == f.r1 => Ok(()),
            other => Err(format!("{other:?}")),
        });
        let e = e2e::env::entry(&b, &f.uid).unwrap();
        assert_eq!(link_ids(e), links_before[k], "{}: links untouched until its turn", f.env.node(*i).name);
        assert!(link_ids(e).iter().all(|l| kernel::link_exists(*l)));
    }

    let p = f.env.wait_phase(&f.name, Phase::Complete, APPLY_TIMEOUT);
    let r = rollout(&p).unwrap();
    assert_eq!(r.stable_revision.as_deref(), Some(r2.as_str()));
    assert_eq!((r.updated_nodes, r.failed_nodes), (NODES as i32, 0));
    has_condition(&p, "Ready", "True").unwrap();
    let stats = gate.close();
    assert_eq!(stats.applies.len(), NODES, "every agent switched once: {stats:?}");
    assert!(stats.applies.values().all(|n| *n == 1), "{stats:?}");
    assert_eq!(
        stats.max_concurrent, 2,
        "never more than maxInFlight=2 between revisions, and 2 did overlap: {stats:?}"
    );

    let after = f.xdp_ids();
    assert_eq!(changed(&before, &after).len(), NODES, "every node runs a new program: {after:?}");
    for (k, i) in f.nodes.iter().enumerate() {
        let e = f.env.wait_node_runs(*i, &f.uid, &r2);
        assert!(!kernel::program_exists(before[k]) || before[k] == after[k], "old program left loaded");
        let n = f.env.node(*i);
        let pin = map_pin(&e, "packet_count");
        let c0 = kernel::read_counter(&pin).unwrap();
        n.ping(5);
        wait_for(Duration::from_secs(15), format!("{}: counter +10 (v2 counts 2 per packet)", n.name), || {
            let c = kernel::read_counter(&pin).map_err(|e| format!("{e:#}"))?;
            if c >= c0 + 10 { Ok(()) } else { Err(format!("{c0} -> {c}")) }
        });
    }
}

#[test]
fn a_bad_revision_stops_after_the_canary() {
    const TEST: &str = "a_bad_revision_stops_after_the_canary";
    let Some(f) = Fleet::start(TEST, &[XDP_OBJ, BAD_OBJ], false) else { return };
    let before = f.xdp_ids();
    let sent_before = f.apply_requests();

    // The default rollout: one node at a time, halt at the first failure. The object's
    // function makes the verifier refuse it.
    f.patch(json!({
        "bytecode": f.bytecode(BAD_OBJ),
        "programs": [{"name": "bad_access", "type": "XDP", "xdp": {"interfaces": ["eth0"]}}],
    }));
    let p = f.env.wait_phase(&f.name, Phase::Halted, APPLY_TIMEOUT);
    let r = rollout(&p).unwrap();
    assert_eq!(r.failed_nodes, 1);
    assert_eq!(r.stable_revision.as_deref(), Some(f.r1.as_str()));
    let msg = r.message.unwrap();
    assert!(msg.contains("VerifierRejected"), "the node's error is shown: {msg}");
    has_condition(&p, "Stalled", "True").unwrap();
    let stalled = e2e::env::condition(p.status.as_ref().unwrap(), "Stalled").unwrap();
    assert!(stalled.message.contains("VerifierRejected"), "{stalled:?}");

    // Give the operator time to (wrongly) go on, then ask the agents what they got.
    std::thread::sleep(Duration::from_secs(8));
    let sent = f.apply_requests();
    let got: Vec<usize> =
        sent.iter().zip(&sent_before).enumerate().filter(|(_, (a, b))| a > b).map(|(i, _)| i).collect();
    assert_eq!(got.len(), 1, "only the canary was sent the bad revision: before {sent_before:?}, after {sent:?}");
    assert_eq!(f.xdp_ids(), before, "every node still runs r1, untouched");
    let p = f.env.program(&f.name);
    assert_eq!(rollout(&p).unwrap().phase, Phase::Halted, "a halted rollout stays halted");

    // A new spec supersedes the halted rollout; a missing function also stops at the canary.
    f.patch(json!({
        "bytecode": f.bytecode(XDP_OBJ),
        "programs": [{"name": "no_such_function", "type": "XDP", "xdp": {"interfaces": ["eth0"]}}],
    }));
    let p = f.env.wait_program(&f.name, "stopped on the missing function", APPLY_TIMEOUT, |p| {
        has_condition(p, "Stalled", "True")?;
        let s = p.status.as_ref().unwrap();
        let c = e2e::env::condition(s, "Stalled").unwrap();
        if c.message.contains("no_such_function") { Ok(()) } else { Err(c.message.clone()) }
    });
    std::thread::sleep(Duration::from_secs(5));
    let again = f.apply_requests();
    let got2: Vec<usize> = again.iter().zip(&sent).enumerate().filter(|(_, (a, b))| a > b).map(|(i, _)| i).collect();
    assert!(got2.len() <= 1, "at most the canary was sent it: {sent:?} -> {again:?}");
    if let Some(k) = got2.first() {
        assert_eq!(got, vec![*k], "the canary is the same node for every revision of a program");
    }
    assert_eq!(f.xdp_ids(), before, "still r1 everywhere: {}", e2e::env::describe(&p));
}

#[test]
fn rollback_returns_to_stable_from_history_without_a_gap() {
    const TEST: &str = "rollback_returns_to_stable_from_history_without_a_gap";
    let Some(f) = Fleet::start(TEST, &[XDP_OBJ, XDP_V2_OBJ], true) else { return };
    let before = f.xdp_ids();

    // r2 also attaches to dum0; the canary waits for a resume after its step.
    f.patch(json!({
        "bytecode": f.bytecode(XDP_V2_OBJ),
        "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": ["eth0", "dum0"]}}],
        "rollout": {"steps": [{"nodes": 1, "pause": {}}, {"nodes": "100%"}], "onFailure": "Rollback"},
    }));
    let p = f.env.wait_program(&f.name, "paused after the canary", APPLY_TIMEOUT, |p| {
        let r = rollout(p)?;
        if r.phase == Phase::Paused && r.updated_nodes == 1 { Ok(()) } else { Err(format!("{r:?}")) }
    });
    let r2 = rollout(&p).unwrap().update_revision.unwrap();
    let canary = changed(&before, &f.xdp_ids());
    assert_eq!(canary.len(), 1);
    let canary = canary[0];
    let cnode = f.env.node(f.nodes[canary]);
    let counter = map_pin(&f.env.wait_node_runs(f.nodes[canary], &f.uid, &r2), "packet_count");

    // The next nodes cannot run r2 (no dum0), and r1's bytes are gone from the ConfigMap:
    // the rollback must come from history.
    for (k, i) in f.nodes.iter().enumerate() {
        if k != canary {
            sh(&format!("ip -n {} link del dum0", f.env.node(*i).netns)).unwrap();
        }
    }
    f.env.cluster.replace_configmap_key(&f.cm, XDP_OBJ, b"not an ELF any more".to_vec()).unwrap();

    // Steady traffic to the canary across the rollback: every packet must be counted.
    let c0 = kernel::read_counter(&counter).unwrap();
    const PINGS: u64 = 400;
    let ip = cnode.ip;
    let pinger = std::thread::spawn(move || sh(&format!("ping -c {PINGS} -i 0.01 -W 1 -q {ip}")));
    std::thread::sleep(Duration::from_millis(500));
    f.patch(json!({"rollout": {"steps": [{"nodes": 1, "pause": {}}, {"nodes": "100%"}], "onFailure": "Rollback",
                               "resume": {"revision": r2, "step": 1}}}));
    let p = f.env.wait_phase(&f.name, Phase::RolledBack, APPLY_TIMEOUT);
    let out = pinger.join().unwrap().unwrap();
    assert!(out.contains(&format!("{PINGS} received")), "ping lost replies: {out}");
    let r = rollout(&p).unwrap();
    let msg = r.message.clone().unwrap();
    assert!(msg.contains("InterfaceNotFound") || msg.contains("dum0"), "{msg}");
    assert!(msg.contains(&format!("rolling back to revision {}", f.r1)), "{msg}");
    has_condition(&p, "Stalled", "True").unwrap();

    // Every node runs r1 again, the canary included (sent from the ControllerRevision).
    for i in &f.nodes {
        f.env.wait_node_runs(*i, &f.uid, &f.r1);
    }
    let after = f.xdp_ids();
    assert_eq!(cnode.xdp("dum0"), vec![], "r1 does not attach to dum0");
    let c1 = kernel::read_counter(&counter).unwrap();
    assert!(
        c1 - c0 >= PINGS,
        "every echo request was counted by r2 or r1 across the switch: {c0} -> {c1} for {PINGS} packets"
    );
    for (k, id) in after.iter().enumerate() {
        if k != canary {
            assert_eq!(*id, before[k], "{}: never left r1", f.env.node(f.nodes[k]).name);
        }
    }
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(rollout(&f.env.program(&f.name)).unwrap().phase, Phase::RolledBack, "it stays rolled back");
}

#[test]
fn a_gitops_revert_reuses_the_revision_and_pause_holds_every_node() {
    const TEST: &str = "a_gitops_revert_reuses_the_revision_and_pause_holds_every_node";
    let Some(f) = Fleet::start(TEST, &[XDP_OBJ, XDP_V2_OBJ], false) else { return };
    let before = f.xdp_ids();
    let sent_before = f.apply_requests();

    // Paused through the spec: a new revision reaches no node.
    f.patch(json!({"rollout": {"paused": true}}));
    f.patch(json!({"bytecode": f.bytecode(XDP_V2_OBJ)}));
    let p = f.env.wait_phase(&f.name, Phase::Paused, APPLY_TIMEOUT);
    // Held until someone acts: suspended, neither converging nor failed (kstatus Current,
    // Argo CD Suspended), and not Ready.
    has_condition(&p, "Reconciling", "False").unwrap();
    has_condition(&p, "Stalled", "False").unwrap();
    has_condition(&p, "Ready", "False").unwrap();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(f.apply_requests(), sent_before, "a paused rollout sends nothing");
    assert_eq!(f.xdp_ids(), before);

    // Resumed: two nodes take it, then a pause step without a duration holds the rest.
    f.patch(json!({"rollout": {"paused": false, "steps": [{"nodes": 2, "pause": {}}, {"nodes": "100%"}], "maxInFlight": 2}}));
    let p = f.env.wait_program(&f.name, "two nodes updated, waiting", APPLY_TIMEOUT, |p| {
        let r = rollout(p)?;
        if r.phase == Phase::Paused && r.updated_nodes == 2 { Ok(()) } else { Err(format!("{r:?}")) }
    });
    let r2 = rollout(&p).unwrap().update_revision.unwrap();
    let mid = f.xdp_ids();
    let switched = changed(&before, &mid);
    assert_eq!(switched.len(), 2);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(f.xdp_ids(), mid, "a pause without a duration waits");
    let sent_mid = f.apply_requests();

    // The GitOps revert: the spec goes back to r1. The nodes still on it are not touched,
    // the two others switch back, and r1's history entry is reused.
    f.patch(json!({"bytecode": f.bytecode(XDP_OBJ)}));
    let p = f.env.wait_phase(&f.name, Phase::Complete, APPLY_TIMEOUT);
    let r = rollout(&p).unwrap();
    assert_eq!(r.update_revision.as_deref(), Some(f.r1.as_str()));
    assert_eq!(r.stable_revision.as_deref(), Some(f.r1.as_str()));
    let sent_after = f.apply_requests();
    let end = f.xdp_ids();
    for k in 0..NODES {
        let n = &f.env.node(f.nodes[k]).name;
        if switched.contains(&k) {
            assert_ne!(end[k], mid[k], "{n} switched back");
            assert!(sent_after[k] > sent_mid[k], "{n} was sent r1: requests {sent_mid:?} -> {sent_after:?}");
        } else {
            assert_eq!(end[k], before[k], "{n} still runs the same r1 program");
            assert_eq!(
                sent_after[k], sent_mid[k],
                "{n} was sent nothing by the revert: {sent_mid:?} -> {sent_after:?}"
            );
        }
        f.env.wait_node_runs(f.nodes[k], &f.uid, &f.r1);
    }

    // History: one ControllerRevision per revision, r1 renumbered as the newest.
    let history = f.env.cluster.controller_revisions(&f.uid).unwrap();
    let newest = history.iter().max_by_key(|(n, _)| *n).map(|(_, r)| r.clone());
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(newest.as_deref(), Some(f.r1.as_str()), "{history:?}");
    assert!(history.iter().any(|(_, r)| *r == r2));
}

#[test]
fn a_node_unhealthy_after_the_attach_halts_the_rollout() {
    const TEST: &str = "a_node_unhealthy_after_the_attach_halts_the_rollout";
    let Some(f) = Fleet::start(TEST, &[XDP_OBJ, XDP_V2_OBJ], true) else { return };
    let before = f.xdp_ids();
    let sent_before = f.apply_requests();
    f.patch(json!({
        "bytecode": f.bytecode(XDP_V2_OBJ),
        "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": ["eth0", "dum0"]}}],
        "rollout": {"steps": [{"nodes": 1, "pause": {"duration": "5m"}}, {"nodes": "100%"}]},
    }));
    f.env.wait_program(&f.name, "the canary runs it and the step pauses", APPLY_TIMEOUT, |p| {
        let r = rollout(p)?;
        if r.phase == Phase::Paused && r.updated_nodes == 1 { Ok(()) } else { Err(format!("{r:?}")) }
    });
    let canary = changed(&before, &f.xdp_ids());
    assert_eq!(canary.len(), 1);
    let cnode = f.env.node(f.nodes[canary[0]]);
    assert_eq!(cnode.xdp("dum0").len(), 1, "r2 attached to dum0 too");

    // The canary loses one of its hooks after the attach: the agent finds the link gone.
    sh(&format!("ip -n {} link del dum0", cnode.netns)).unwrap();
    let p = f.env.wait_phase(&f.name, Phase::Halted, APPLY_TIMEOUT);
    let msg = rollout(&p).unwrap().message.unwrap();
    assert!(msg.contains(&cnode.name), "the unhealthy node is named: {msg}");
    has_condition(&p, "Stalled", "True").unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let sent = f.apply_requests();
    for (k, i) in f.nodes.iter().enumerate() {
        if k != canary[0] {
            assert_eq!(sent[k], sent_before[k], "{} was never sent r2", f.env.node(*i).name);
        }
    }
    let now = f.xdp_ids();
    for k in 0..NODES {
        if k != canary[0] {
            assert_eq!(now[k], before[k], "{} still runs r1", f.env.node(f.nodes[k]).name);
        }
    }
}

#[test]
fn a_node_whose_agent_is_away_is_not_failed_at_once_and_finishes_when_it_returns() {
    const TEST: &str = "a_node_whose_agent_is_away_is_not_failed_at_once_and_finishes_when_it_returns";
    let Some(mut f) = Fleet::start(TEST, &[XDP_OBJ, XDP_V2_OBJ], false) else { return };
    let before = f.xdp_ids();
    // One node's agent goes away (its node reboots, say) just before the new revision.
    let away = f.nodes[2];
    let away_name = f.env.node(away).name.clone();
    f.env.node_mut(away).kill_agent();
    f.patch(json!({
        "bytecode": f.bytecode(XDP_V2_OBJ),
        "rollout": {"maxInFlight": 2, "failureThreshold": 1},
    }));
    // Every other node switches; the away node is waited for, then (past the operator's
    // grace period) counted failed, within the threshold: settled, not Complete.
    let p = f.env.wait_phase(&f.name, Phase::Degraded, APPLY_TIMEOUT);
    let r = rollout(&p).unwrap();
    assert_eq!((r.desired_nodes, r.updated_nodes, r.ready_nodes, r.failed_nodes), (5, 4, 4, 1), "{r:?}");
    let msg = r.message.unwrap();
    assert!(msg.contains(&format!("{away_name}: AgentUnreachable")), "the away node is named: {msg}");
    has_condition(&p, "Stalled", "True").unwrap();
    let failure = &p.status.as_ref().unwrap().failures;
    assert!(failure.iter().any(|x| x.node == away_name && x.reason == "AgentUnreachable"), "{failure:?}");
    let k = f.nodes.iter().position(|i| *i == away).unwrap();
    assert_eq!(f.xdp_ids()[k], before[k], "the away node still runs r1, untouched in its kernel");

    // It comes back: it gets the revision and the rollout completes.
    f.env.node_mut(away).start_agent().unwrap_or_else(|e| panic!("{e:#}"));
    let p = f.env.wait_phase(&f.name, Phase::Complete, APPLY_TIMEOUT);
    let r = rollout(&p).unwrap();
    assert_eq!((r.updated_nodes, r.ready_nodes, r.failed_nodes), (5, 5, 0), "{r:?}");
    has_condition(&p, "Ready", "True").unwrap();
    let after = f.xdp_ids();
    assert_ne!(after[k], before[k], "the returned node runs the new revision");
}
