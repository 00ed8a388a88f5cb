//! Rollout health gates end to end: a real API server, the operator, process-mode nodes,
//! and a real Prometheus. A gate must see the program work: a program attached where no
//! traffic flows fails `mustRun` at the canary (its kernel run count, read by bpftool,
//! stays put); a revision that drops too many packets by its own counters rolls back; a
//! Prometheus query over the agents' metrics holds or stops a step. What each node runs
//! is read from the kernel, not from our status.
//!
//! Run: see scenarios.rs (the Prometheus scenario also needs Debian's `prometheus`).
//! Without KUBECONFIG each scenario prints one SKIP line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crds::BpfProgram;
use crds::rollout::Phase;
use e2e::env::{APPLY_TIMEOUT, Env, has_condition, map_pin, rollout};
use e2e::kernel;
use e2e::prometheus::{JOB, Prometheus};
use e2e::util::{sh, wait_for};
use k8s_openapi::api::events::v1::Event;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

const ROLE: &str = "e2e.bpfleet.dev/role";
const NODES: usize = 3;
const COUNTER: &str = "xdp_counter.o";
const DROPPER: &str = "xdp_drop_every.o";

/// `NODES` nodes (each with an interface `dum0` no traffic crosses) and program `name`
/// from `spec`, first installed and Complete.
struct Fleet {
    env: Env,
    nodes: Vec<usize>,
    name: String,
}

impl Fleet {
    fn start(env: Env, spec: impl Fn(&Env, &str) -> Value) -> Fleet {
        let mut env = env;
        let nodes: Vec<usize> = (0..NODES).map(|_| env.add_node(&[(ROLE, "fleet")])).collect();
        for i in &nodes {
            let n = env.node(*i);
            n.add_interface("dum0").unwrap_or_else(|e| panic!("{e:#}"));
            // Quiet: without IPv6, nothing (neighbour discovery, MLD) ever crosses the pair.
            sh(&format!(
                "nsenter --net=/run/netns/{} sysctl -qw net.ipv6.conf.dum0.disable_ipv6=1 net.ipv6.conf.dum0p.disable_ipv6=1",
                n.netns
            ))
            .unwrap_or_else(|e| panic!("{e:#}"));
        }
        let cm = env.bytecode_configmap("bytecode", &[COUNTER, DROPPER]);
        let name = env.create_program("gated", spec(&env, &cm));
        env.wait_phase(&name, Phase::Complete, APPLY_TIMEOUT);
        Fleet { env, nodes, name }
    }

    fn patch(&self, spec: Value) -> BpfProgram {
        self.env.cluster.patch_program_spec(&self.name, spec).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The XDP program id on `ifname` of each node (None: nothing attached).
    fn xdp_ids(&self, ifname: &str) -> Vec<Option<u64>> {
        self.nodes.iter().map(|i| self.env.node(*i).xdp(ifname).first().map(|a| a.id)).collect()
    }

    /// Pings every node's eth0 until dropped, from a thread: traffic for the gates to see
    /// (losses expected: a dropping revision drops some of it).
    fn traffic(&self) -> Traffic {
        let ips: Vec<String> = self.nodes.iter().map(|i| self.env.node(*i).ip.to_string()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                for ip in &ips {
                    let _ = sh(&format!("ping -c 10 -i 0.01 -W 1 -q {ip} >/dev/null 2>&1 || true"));
                }
            }
        });
        Traffic { stop, thread: Some(thread) }
    }

    /// Every Event about the program (by its uid), as (reason, note).
    fn events(&self) -> Vec<(String, String)> {
        let uid = self.env.uid(&self.name);
        let api: Api<Event> = Api::all(self.env.cluster.client.clone());
        let list = e2e::util::block_on(api.list(&Default::default())).unwrap_or_else(|e| panic!("events: {e}"));
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid.as_str()))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }
}

struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A u32 global, as globalData takes it.
fn u32_global(v: u32) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(v.to_le_bytes())
}

fn xdp(function: &str, interfaces: &[&str]) -> Value {
    json!([{"name": function, "type": "XDP", "xdp": {"interfaces": interfaces}}])
}

#[test]
fn a_program_that_never_runs_fails_its_must_run_gate_at_the_canary() {
    const TEST: &str = "a_program_that_never_runs_fails_its_must_run_gate_at_the_canary";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let env = Env::start(TEST, &kubeconfig);
    let f = Fleet::start(env, |env, cm| {
        env.xdp_spec(env.selector(&[(ROLE, "fleet")]), env.configmap_bytecode(cm, COUNTER), "count_packets", &["eth0"])
    });
    let stats_before = kernel::bpf_stats_enabled();
    assert!(f.xdp_ids("dum0").iter().all(Option::is_none));

    // The new revision attaches to dum0, where no packet ever arrives.
    let health = json!({"mustRun": true, "minReadySeconds": 5});
    f.patch(json!({
        "programs": xdp("count_packets", &["dum0"]),
        "rollout": {"steps": [{"nodes": 1}, {"nodes": "100%"}], "health": health},
    }));
    // While the canary's window runs, the agent has the kernel count runs.
    let canary = wait_for(Duration::from_secs(30), "the canary attached to dum0 and counting runs", || {
        let ids = f.xdp_ids("dum0");
        let on: Vec<usize> = ids.iter().enumerate().filter(|(_, id)| id.is_some()).map(|(k, _)| k).collect();
        match (on.as_slice(), kernel::bpf_stats_enabled()) {
            ([k], true) => Ok(*k),
            other => Err(format!("dum0: {ids:?}, stats on: {}", other.1)),
        }
    });
    let canary_prog = f.xdp_ids("dum0")[canary].unwrap();
    let p = f.env.wait_phase(&f.name, Phase::Halted, Duration::from_secs(60));
    let r = rollout(&p).unwrap();
    let msg = r.message.clone().unwrap();
    assert!(msg.contains("HealthGateFailed: ProgramDidNotRun: count_packets"), "{msg}");
    assert!(msg.contains(&format!("program id {canary_prog}")), "the message names the kernel program: {msg}");
    assert_eq!(kernel::run_count(canary_prog), Some(0), "the kernel agrees: it never ran");
    has_condition(&p, "Stalled", "True").unwrap();
    let ids = f.xdp_ids("dum0");
    assert_eq!(ids.iter().filter(|i| i.is_some()).count(), 1, "only the canary got it: {ids:?}");
    // No gate needs run counting any more: the agent puts back what it found.
    wait_for(Duration::from_secs(30), "kernel.bpf_stats_enabled restored", || {
        if kernel::bpf_stats_enabled() == stats_before { Ok(()) } else { Err("still on".into()) }
    });
    let reasons: Vec<String> = f.events().into_iter().map(|(r, _)| r).collect();
    for want in ["RolloutProgressing", "RolloutHalted", "NodeFailed"] {
        assert!(reasons.iter().any(|r| r == want), "Event {want} with the program's uid: {reasons:?}");
    }

    // Where traffic flows, the same gate passes: each node counts once its program ran.
    let _traffic = f.traffic();
    let started = Instant::now();
    f.patch(json!({"programs": xdp("count_packets", &["eth0", "dum0"])}));
    let p = f.env.wait_phase(&f.name, Phase::Complete, APPLY_TIMEOUT);
    eprintln!("{TEST}: mustRun + minReadySeconds 5 over 2 steps: Complete after {:?}", started.elapsed());
    let r = rollout(&p).unwrap();
    assert_eq!((r.desired_nodes, r.updated_nodes, r.ready_nodes, r.available_nodes), (3, 3, 3, 3), "{r:?}");
    for (k, id) in f.xdp_ids("eth0").iter().enumerate() {
        let id = id.unwrap();
        assert!(kernel::run_count(id).unwrap_or(0) > 0 || !kernel::bpf_stats_enabled(), "node {k}: program {id}");
    }
}

#[test]
fn a_revision_whose_drops_exceed_their_bound_rolls_back() {
    const TEST: &str = "a_revision_whose_drops_exceed_their_bound_rolls_back";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let env = Env::start(TEST, &kubeconfig);
    let f = Fleet::start(env, |env, cm| {
        let mut spec = env.xdp_spec(
            env.selector(&[(ROLE, "fleet")]),
            env.configmap_bytecode(cm, DROPPER),
            "drop_every",
            &["eth0"],
        );
        spec["globalData"] = json!({"DROP_EVERY": u32_global(0)});
        spec["maps"] = json!([{"name": "counters", "onUpgrade": "Recreate"}]);
        spec["rollout"] = json!({
            "onFailure": "Rollback",
            "steps": [{"nodes": 1}, {"nodes": "100%"}],
            // "drops at most 1 % of packets", with the program's own counters.
            "health": {"minReadySeconds": 8, "maps": [{"map": "counters", "key": 1, "divideBy": {"key": 0}, "max": 0.01}]},
        });
        spec
    });
    let _traffic = f.traffic();

    // A revision dropping 1 packet in 1000 passes the gate on every node.
    let started = Instant::now();
    f.patch(json!({"globalData": {"DROP_EVERY": u32_global(1000)}}));
    let p = f.env.wait_phase(&f.name, Phase::Complete, APPLY_TIMEOUT);
    eprintln!("{TEST}: a map gate (minReadySeconds 8) over 2 steps: Complete after {:?}", started.elapsed());
    let good = rollout(&p).unwrap().update_revision.unwrap();
    let good_ids = f.xdp_ids("eth0");

    // One dropping every other packet: the canary's own counters say 50 %: rolled back.
    f.patch(json!({"globalData": {"DROP_EVERY": u32_global(2)}}));
    let p = f.env.wait_phase(&f.name, Phase::RolledBack, APPLY_TIMEOUT);
    let r = rollout(&p).unwrap();
    let msg = r.message.clone().unwrap();
    assert!(
        msg.contains("map check 1 failed: counters[1] / counters[0] = 0.") && msg.contains("above the maximum 0.01"),
        "{msg}"
    );
    assert!(msg.contains(&format!("rolling back to revision {good}")), "{msg}");
    has_condition(&p, "Stalled", "True").unwrap();
    // Every node runs the good revision again (the canary reloaded it), and drops no more.
    wait_for(APPLY_TIMEOUT, "every node back on the good revision", || {
        let b: Vec<String> = f
            .nodes
            .iter()
            .map(|i| {
                let e = f.env.wait_node_runs(*i, &f.env.uid(&f.name), &good);
                e.revision.clone()
            })
            .collect();
        if b.iter().all(|r| *r == good) { Ok(()) } else { Err(format!("{b:?}")) }
    });
    let after = f.xdp_ids("eth0");
    let moved = good_ids.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert_eq!(moved, 1, "only the canary switched (and came back): {good_ids:?} -> {after:?}");
    for i in &f.nodes {
        let e = f.env.wait_node_runs(*i, &f.env.uid(&f.name), &good);
        let pin = map_pin(&e, "counters");
        let n = f.env.node(*i);
        assert!(kernel::read_counter(&pin).is_ok(), "{}: counters pinned", n.name);
    }
}

#[test]
fn a_prometheus_query_over_the_agents_metrics_gates_each_step() {
    const TEST: &str = "a_prometheus_query_over_the_agents_metrics_gates_each_step";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    if !Prometheus::installed() {
        eprintln!("SKIP {TEST}: no prometheus binary (apt-get install prometheus)");
        return;
    }
    // The operator may query one Prometheus: the one started below, on a port chosen now.
    let port = agent::testing::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let flag = url.clone();
    let env = Env::start_with(TEST, &kubeconfig, move |_| vec![format!("--prometheus-address={flag}")]);
    let f = Fleet::start(env, |env, cm| {
        env.xdp_spec(env.selector(&[(ROLE, "fleet")]), env.configmap_bytecode(cm, COUNTER), "count_packets", &["eth0"])
    });
    let targets: Vec<std::net::SocketAddr> = f.nodes.iter().map(|i| f.env.node(*i).metrics_addr()).collect();
    let prom = Prometheus::start_on(&f.env.workdir, &targets, port);
    assert_eq!(prom.url(), url);

    // Every agent up: the gate passes at the end of step 1; the pause then waits for a
    // promote, given by annotation (no spec change).
    let query = format!("count(up{{job=\"{JOB}\"}} == 1)");
    let gate = json!({"address": url, "query": query, "min": NODES, "count": 2, "intervalSeconds": 2});
    f.patch(json!({
        "programs": xdp("count_packets", &["eth0", "dum0"]),
        "rollout": {"steps": [{"nodes": 1, "pause": {}}, {"nodes": "100%"}], "health": {"prometheus": gate}},
    }));
    let p = f.env.wait_phase(&f.name, Phase::Paused, APPLY_TIMEOUT);
    let r = rollout(&p).unwrap();
    assert_eq!(r.step, 1);
    assert_eq!(f.xdp_ids("dum0").iter().filter(|i| i.is_some()).count(), 1, "the canary only");
    assert_eq!(
        crds::standing::of_status(p.status.as_ref(), p.metadata.generation),
        crds::standing::Standing::Suspended
    );
    f.env.cluster.annotate_program(&f.name, crds::rollout::ACTION_ANNOTATION, "promote").unwrap();
    let p = f.env.wait_phase(&f.name, Phase::Complete, APPLY_TIMEOUT);
    assert!(
        !p.annotations().contains_key(crds::rollout::ACTION_ANNOTATION),
        "the operator removed the carried-out action"
    );
    assert_eq!(rollout(&p).unwrap().last_action.as_deref(), Some("promote"));
    assert!(f.xdp_ids("dum0").iter().all(Option::is_some), "every node runs it now");

    // A bound the fleet does not meet stops the rollout at the canary's step.
    // (A merge patch: `min: null` drops the earlier gate's minimum.)
    let gate = json!({"address": url, "query": query, "min": null, "max": 1, "count": 2, "intervalSeconds": 2, "failureLimit": 1});
    f.patch(json!({"programs": xdp("count_packets", &["eth0"]), "rollout": {"steps": [{"nodes": 1}, {"nodes": "100%"}], "health": {"prometheus": gate}}}));
    let p = f.env.wait_phase(&f.name, Phase::Halted, APPLY_TIMEOUT);
    let msg = rollout(&p).unwrap().message.unwrap();
    assert!(msg.contains("Prometheus gate failed at the end of step 1/2: 2 of 2 measurements failed"), "{msg}");
    assert!(msg.contains("3 is above the maximum 1"), "{msg}");
    assert_eq!(f.xdp_ids("dum0").iter().filter(|i| i.is_none()).count(), 1, "the canary only left dum0");
    let reasons: Vec<String> = f.events().into_iter().map(|(r, _)| r).collect();
    for want in ["RolloutPaused", "RolloutAction", "RolloutComplete", "RolloutHalted"] {
        assert!(reasons.iter().any(|r| r == want), "Event {want}: {reasons:?}");
    }

    // An address the operator was not given is refused before anything is asked of it.
    let elsewhere = json!({"address": "http://127.0.0.1:1", "query": "up", "min": 1});
    f.patch(json!({"rollout": {"health": {"prometheus": elsewhere}}}));
    f.env.wait_program(&f.name, "the address refused", APPLY_TIMEOUT, |p| {
        has_condition(p, "Stalled", "True")?;
        let c = e2e::env::condition(p.status.as_ref().unwrap(), "Stalled").unwrap();
        if c.message.contains("http://127.0.0.1:1 is not allowed") && c.message.contains("--prometheus-address") {
            Ok(())
        } else {
            Err(c.message.clone())
        }
    });
    drop(prom);
}
