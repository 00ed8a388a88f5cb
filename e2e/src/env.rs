//! One scenario's world: the cluster (CRDs, namespace), the test PKI, process-mode
//! nodes with their Node objects, and the operator. Dropping it removes everything,
//! also when the scenario panics; on a failure it prints the logs and keeps them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use agent::tls::testpki::TestPki;
use crds::node::NodeProgramStatus;
use crds::{BpfNode, BpfProgram, BpfProgramStatus, Health};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::node::{AGENT_PORT, AgentTls, ProcessNode};
use crate::operator::{Operator, OperatorConfig};
use crate::util::{self, wait_for};

/// A program is applied on every selected node well within this.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(90);
/// BpfNodes are written on every resync (5 s here).
pub const BPFNODE_TIMEOUT: Duration = Duration::from_secs(60);
/// An unreachable agent shows in status within this.
pub const DEGRADE_TIMEOUT: Duration = Duration::from_secs(90);
/// A restarted agent is back in status within this (the operator backs off from an
/// unreachable agent, up to minutes after many failures).
pub const RECOVER_TIMEOUT: Duration = Duration::from_secs(180);
/// A deleted BpfProgram is gone from the API (finalizer done) within this.
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(60);

/// Scenarios share one cluster: they run one at a time whatever `--test-threads` says.
static SERIAL: Mutex<()> = Mutex::new(());

pub struct Env {
    pub cluster: Cluster,
    pub pki: TestPki,
    pub nodes: Vec<ProcessNode>,
    pub operator: Option<Operator>,
    /// Logs, PKI and agent state of this run; kept when the scenario fails.
    pub workdir: PathBuf,
    test: String,
    _serial: MutexGuard<'static, ()>,
}

impl Env {
    /// Connect to the cluster of `kubeconfig`, install the CRDs, create the run's
    /// namespace and start the operator. Panics (after cleaning up) when any step fails.
    pub fn start(test: &str, kubeconfig: &Path) -> Env {
        Self::start_with(test, kubeconfig, |_| Vec::new())
    }

    /// As [`Env::start`], the operator with more arguments, made once the run's namespace
    /// exists (e.g. a Secret it names).
    pub fn start_with(test: &str, kubeconfig: &Path, args: impl FnOnce(&Cluster) -> Vec<String>) -> Env {
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        assert!(util::is_root(), "e2e {test}: needs root (network namespaces, bpffs, eBPF); run it with sudo -E");
        util::host_setup();
        let _ = util::binaries();
        let run = util::random_suffix()[..6].to_string();
        let workdir = std::env::temp_dir().join(format!("bpfleet-e2e-{run}"));
        std::fs::create_dir_all(workdir.join("pki")).expect("work directory");
        let pki = TestPki::generate(&workdir.join("pki"));
        let cluster = Cluster::connect(kubeconfig, &run).unwrap_or_else(|e| panic!("e2e {test}: {e:#}"));
        eprintln!("e2e {test}: run {run}, work directory {}", workdir.display());
        let mut env =
            Env { cluster, pki, nodes: Vec::new(), operator: None, workdir, test: test.into(), _serial: serial };
        // From here on, Drop cleans up whatever exists.
        env.cluster.check_no_foreign_programs().unwrap_or_else(|e| panic!("{e:#}"));
        env.cluster.install_crds().unwrap_or_else(|e| panic!("{e:#}"));
        env.cluster.create_namespace().unwrap_or_else(|e| panic!("{e:#}"));
        let mut cfg = env.operator_config("a");
        cfg.extra_args = args(&env.cluster);
        let op = Operator::start(cfg).unwrap_or_else(|e| panic!("{e:#}"));
        env.operator = Some(op);
        env
    }

    /// How operator process `id` of this run is started (identity `e2e-<run>-<id>`,
    /// log `operator-<id>.log`).
    pub fn operator_config(&self, id: &str) -> OperatorConfig<'_> {
        OperatorConfig {
            bin: &util::binaries().operator,
            pki: &self.pki,
            namespace: &self.cluster.namespace,
            agent_port: AGENT_PORT,
            resync_seconds: 5,
            identity: format!("e2e-{}-{id}", self.cluster.run),
            log: self.workdir.join(format!("operator-{id}.log")),
            kubeconfig: None,
            extra_args: Vec::new(),
        }
    }

    /// Another operator process of this run, as a standby (it leads once the Lease is free).
    pub fn start_standby(&self, id: &str) -> Operator {
        Operator::start_standby(self.operator_config(id)).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn run(&self) -> &str {
        &self.cluster.run
    }

    /// `<base>-<run>`: object names unique to this run.
    pub fn name(&self, base: &str) -> String {
        format!("{base}-{}", self.cluster.run)
    }

    // ---- nodes -------------------------------------------------------------------

    /// Start a process-mode node (namespace, veth, agent) and create its Node object
    /// with `labels` (plus the run label) and its namespace address as InternalIP.
    /// Returns its index in `nodes`.
    pub fn add_node(&mut self, labels: &[(&str, &str)]) -> usize {
        let i = self.nodes.len();
        let name = format!("e2e-node-{i}-{}", self.cluster.run);
        let node = ProcessNode::start(
            &name,
            &util::binaries().agent,
            AgentTls::from_pki(&self.pki),
            self.pki.client_config(),
            &self.workdir,
        )
        .unwrap_or_else(|e| panic!("process-mode node {name}: {e:#}"));
        let ip = node.ip;
        self.nodes.push(node);
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.cluster.create_node(&name, ip, &labels).unwrap_or_else(|e| panic!("{e:#}"));
        i
    }

    pub fn node(&self, i: usize) -> &ProcessNode {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut ProcessNode {
        &mut self.nodes[i]
    }

    /// Set (`Some`) or remove (`None`) labels on node `i`'s Node object.
    pub fn set_node_labels(&self, i: usize, labels: &[(&str, Option<&str>)]) {
        self.cluster.set_node_labels(&self.nodes[i].name, labels).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Delete node `i`'s Node object (its agent keeps running, like a machine that left).
    pub fn delete_node_object(&self, i: usize) {
        self.cluster.delete_node(&self.nodes[i].name).unwrap_or_else(|e| panic!("{e:#}"));
    }

    // ---- programs ----------------------------------------------------------------

    /// A ConfigMap in the run's namespace holding example objects under their file names.
    pub fn bytecode_configmap(&self, base: &str, objects: &[&str]) -> String {
        let name = self.name(base);
        let entries: Vec<(&str, Vec<u8>)> = objects.iter().map(|o| (*o, util::object(o))).collect();
        self.cluster.create_bytecode_configmap(&name, &entries).unwrap_or_else(|e| panic!("{e:#}"));
        name
    }

    /// A nodeSelector picking this run's nodes that carry `labels`.
    pub fn selector(&self, labels: &[(&str, &str)]) -> Value {
        selector(&self.cluster.run, labels)
    }

    /// `bytecode.configMap` of a ConfigMap made by [`Env::bytecode_configmap`].
    pub fn configmap_bytecode(&self, configmap: &str, key: &str) -> Value {
        configmap_bytecode(&self.cluster.namespace, configmap, key)
    }

    /// See [`xdp_spec`].
    pub fn xdp_spec(&self, selector: Value, bytecode: Value, function: &str, interfaces: &[&str]) -> Value {
        xdp_spec(selector, bytecode, function, interfaces)
    }

    /// See [`tracepoint_spec`].
    pub fn tracepoint_spec(&self, selector: Value, bytecode: Value, function: &str, tracepoint: &str) -> Value {
        tracepoint_spec(selector, bytecode, function, tracepoint)
    }

    /// Create BpfProgram `<base>-<run>`; returns its name.
    pub fn create_program(&self, base: &str, spec: Value) -> String {
        let name = self.name(base);
        self.cluster.create_program(&name, spec).unwrap_or_else(|e| panic!("{e:#}"));
        name
    }

    pub fn program(&self, name: &str) -> BpfProgram {
        self.cluster
            .program(name)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .unwrap_or_else(|| panic!("BpfProgram {name} does not exist"))
    }

    pub fn uid(&self, name: &str) -> String {
        self.program(name).uid().expect("a stored object has a uid")
    }

    /// Poll BpfProgram `name` until `check` accepts it.
    pub fn wait_program(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&BpfProgram) -> Result<(), String>,
    ) -> BpfProgram {
        wait_for(timeout, format!("BpfProgram {name}: {what}"), || {
            let p = self.cluster.program(name).map_err(|e| format!("{e:#}"))?.ok_or("it does not exist")?;
            check(&p).map_err(|why| format!("{why}\n{}", describe(&p)))?;
            Ok(p)
        })
    }

    /// Ready=True for the current generation, on exactly `targets` nodes, none failed.
    /// Wait until program `name`'s rollout (for its current generation) is in `phase`.
    pub fn wait_phase(&self, name: &str, phase: crds::rollout::Phase, timeout: Duration) -> BpfProgram {
        self.wait_program(name, &format!("rollout {phase:?}"), timeout, |p| {
            let r = rollout(p)?;
            if r.phase == phase { Ok(()) } else { Err(format!("rollout is {:?}: {:?}", r.phase, r.message)) }
        })
    }

    pub fn wait_ready(&self, name: &str, targets: i32) -> BpfProgram {
        self.wait_program(name, &format!("Ready on {targets} node(s)"), APPLY_TIMEOUT, |p| ready(p, targets))
    }

    /// Poll node `i`'s BpfNode until `check` accepts it.
    pub fn wait_bpf_node(&self, i: usize, what: &str, check: impl Fn(&BpfNode) -> Result<(), String>) -> BpfNode {
        let node = &self.nodes[i].name;
        wait_for(BPFNODE_TIMEOUT, format!("BpfNode {node}: {what}"), || {
            let b = self.cluster.bpf_node(node).map_err(|e| format!("{e:#}"))?.ok_or("it does not exist")?;
            check(&b).map_err(|why| format!("{why}\n{}", serde_yaml::to_string(&b.status).unwrap_or_default()))?;
            Ok(b)
        })
    }

    /// Node `i`'s BpfNode reports owner `uid` at `revision`, Healthy; returns that entry.
    pub fn wait_node_runs(&self, i: usize, uid: &str, revision: &str) -> NodeProgramStatus {
        let b = self.wait_bpf_node(i, &format!("runs {uid} at revision {revision}, Healthy"), |b| {
            let e = entry(b, uid).ok_or("no entry for the owner")?;
            if e.revision != revision || e.health != Health::Healthy {
                return Err(format!("entry at revision {} is {:?}", e.revision, e.health));
            }
            Ok(())
        });
        entry(&b, uid).cloned().expect("checked above")
    }

    /// Node `i`'s BpfNode has no entry for owner `uid`.
    pub fn wait_node_runs_nothing_of(&self, i: usize, uid: &str) {
        self.wait_bpf_node(i, &format!("has no entry for {uid}"), |b| match entry(b, uid) {
            Some(e) => Err(format!("still lists it ({:?} at {})", e.health, e.revision)),
            None => Ok(()),
        });
    }

    /// Wait until BpfProgram `name` is gone from the API.
    pub fn wait_program_gone(&self, name: &str) {
        wait_for(DELETE_TIMEOUT, format!("BpfProgram {name} to be deleted"), || match self.cluster.program(name) {
            Ok(None) => Ok(()),
            Ok(Some(p)) => Err(describe(&p)),
            Err(e) => Err(format!("{e:#}")),
        })
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        // 1. Programs first, while the operator can still remove them from the nodes.
        let forced = self.cluster.delete_run_programs(Duration::from_secs(30));
        // 2. The operator, then the nodes (agents, pins, namespaces).
        if let Some(op) = self.operator.as_mut() {
            op.stop();
        }
        let logs: Vec<(String, String)> = self
            .operator
            .iter()
            .map(|o| ("operator".to_string(), o.log_tail(60)))
            .chain(self.nodes.iter().map(|n| (format!("agent {}", n.name), n.log_tail(25))))
            .collect();
        self.operator = None;
        self.nodes.clear();
        // 3. Cluster objects, the namespace, the CRDs this run installed.
        let problems = self.cluster.teardown();
        let mut err = std::io::stderr().lock();
        use std::io::Write as _;
        if !forced.is_empty() {
            let _ = writeln!(
                err,
                "e2e {}: teardown removed the finalizer of BpfPrograms the operator did not delete in 30s: {}",
                self.test,
                forced.join("; ")
            );
        }
        for p in &problems {
            let _ = writeln!(err, "e2e {}: teardown: {p}", self.test);
        }
        if failed {
            for (who, text) in logs {
                let _ = writeln!(err, "----- {who} (last lines) -----\n{text}");
            }
            let _ = writeln!(err, "e2e {}: failed; logs kept in {}", self.test, self.workdir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.workdir);
        }
    }
}

// ---- specs (pure) -----------------------------------------------------------------

/// A nodeSelector picking the nodes of run `run` that carry `labels`.
pub fn selector(run: &str, labels: &[(&str, &str)]) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(crate::cluster::RUN_LABEL.to_string(), json!(run));
    for (k, v) in labels {
        m.insert(k.to_string(), json!(v));
    }
    json!({"matchLabels": m})
}

/// `bytecode` from key `key` of ConfigMap `namespace/name`.
pub fn configmap_bytecode(namespace: &str, name: &str, key: &str) -> Value {
    json!({"configMap": {"name": name, "namespace": namespace, "key": key}})
}

/// A one-program XDP spec (generic mode: works on every interface).
pub fn xdp_spec(selector: Value, bytecode: Value, function: &str, interfaces: &[&str]) -> Value {
    json!({
        "nodeSelector": selector,
        "bytecode": bytecode,
        "programs": [{"name": function, "type": "XDP", "xdp": {"interfaces": interfaces, "mode": "Generic"}}],
    })
}

/// A one-program tracepoint spec.
pub fn tracepoint_spec(selector: Value, bytecode: Value, function: &str, tracepoint: &str) -> Value {
    json!({
        "nodeSelector": selector,
        "bytecode": bytecode,
        "programs": [{"name": function, "type": "Tracepoint", "tracepoint": {"names": [tracepoint]}}],
    })
}

// ---- status checks (pure) ---------------------------------------------------------

/// The condition `type_` of a status.
pub fn condition<'a>(s: &'a BpfProgramStatus, type_: &str) -> Option<&'a Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

/// The status for the object's current generation, or why not.
/// `status.rollout`, when the status is of the current generation.
pub fn rollout(p: &BpfProgram) -> Result<crds::rollout::RolloutStatus, String> {
    let s = p.status.as_ref().ok_or("no status yet")?;
    if s.observed_generation != p.metadata.generation {
        return Err(format!("status is for generation {:?}", s.observed_generation));
    }
    s.rollout.clone().ok_or_else(|| "no status.rollout".to_string())
}

pub fn current_status(p: &BpfProgram) -> Result<&BpfProgramStatus, String> {
    let s = p.status.as_ref().ok_or("no status yet")?;
    if s.observed_generation != p.metadata.generation {
        return Err(format!(
            "status is for generation {:?}, the object is at {:?}",
            s.observed_generation, p.metadata.generation
        ));
    }
    Ok(s)
}

/// Condition `type_` has `status` and was computed for the current generation.
pub fn has_condition(p: &BpfProgram, type_: &str, status: &str) -> Result<(), String> {
    let s = current_status(p)?;
    let c = condition(s, type_).ok_or(format!("no {type_} condition"))?;
    if c.status != status {
        return Err(format!("{type_} is {} ({}: {})", c.status, c.reason, c.message));
    }
    if c.observed_generation != p.metadata.generation {
        return Err(format!("{type_} is for generation {:?}", c.observed_generation));
    }
    Ok(())
}

/// Ready=True on exactly `targets` nodes of the current generation, nothing failed.
pub fn ready(p: &BpfProgram, targets: i32) -> Result<(), String> {
    let s = current_status(p)?;
    if (s.target_nodes, s.ready_nodes, s.failed_nodes) != (targets, targets, 0) {
        return Err(format!(
            "targets/ready/failed are {}/{}/{}, want {targets}/{targets}/0",
            s.target_nodes, s.ready_nodes, s.failed_nodes
        ));
    }
    if !s.failures.is_empty() {
        return Err(format!("failures listed: {:?}", s.failures));
    }
    if s.revision.as_deref().is_none_or(|r| r.len() != 16) {
        return Err(format!("revision is {:?}", s.revision));
    }
    has_condition(p, "Ready", "True")?;
    has_condition(p, "Degraded", "False")
}

/// The BpfNode entry of owner `uid`.
pub fn entry<'a>(b: &'a BpfNode, uid: &str) -> Option<&'a NodeProgramStatus> {
    b.status.as_ref()?.programs.iter().find(|p| p.owner_uid == uid)
}

/// The pinned path a BpfNode entry gives for map `map`.
pub fn map_pin(e: &NodeProgramStatus, map: &str) -> PathBuf {
    PathBuf::from(&e.maps.iter().find(|m| m.name == map).unwrap_or_else(|| panic!("no map {map} in {e:?}")).pin_path)
}

/// The one kernel program id of function `function` in a BpfNode entry.
pub fn program_id(e: &NodeProgramStatus, function: &str) -> u64 {
    let a = e
        .attached
        .iter()
        .find(|a| a.name == function)
        .unwrap_or_else(|| panic!("{function} is not attached per BpfNode: {e:?}"));
    u64::from(a.program_id)
}

/// The kernel link ids of every function in a BpfNode entry.
pub fn link_ids(e: &NodeProgramStatus) -> Vec<u64> {
    e.attached.iter().flat_map(|a| a.link_ids.iter().map(|l| u64::from(*l))).collect()
}

/// Generation and status as YAML, for failure messages.
pub fn describe(p: &BpfProgram) -> String {
    format!(
        "generation {:?}, status:\n{}",
        p.metadata.generation,
        serde_yaml::to_string(&p.status).unwrap_or_else(|e| e.to_string())
    )
}

#[cfg(test)]
mod tests {
    use crds::BpfProgramSpec;

    use super::*;

    fn valid(spec: Value) -> BpfProgramSpec {
        let spec: BpfProgramSpec = serde_json::from_value(spec).expect("spec deserializes");
        crds::validate::validate_spec(&spec).unwrap_or_else(|e| panic!("{e}"));
        spec
    }

    /// The specs the scenarios create pass the same validation the operator applies.
    #[test]
    fn scenario_specs_are_valid() {
        let bc = configmap_bytecode("bpfleet-e2e-abc123", "bytecode-abc123", "xdp_counter.o");
        let spec = valid(xdp_spec(selector("abc123", &[("e2e.bpfleet.dev/role", "edge")]), bc.clone(), "f", &["eth0"]));
        let labels = spec.node_selector.match_labels.unwrap();
        assert_eq!(labels.get(crate::cluster::RUN_LABEL).map(String::as_str), Some("abc123"));
        assert_eq!(labels.len(), 2);
        valid(xdp_spec(selector("abc123", &[]), bc.clone(), "count_packets", &["eth0", "extra0"]));
        valid(tracepoint_spec(selector("abc123", &[]), bc, "count_openat", "syscalls/sys_enter_openat"));
    }

    fn program(generation: i64, status: Value) -> BpfProgram {
        serde_json::from_value(json!({
            "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram",
            "metadata": {"name": "p", "generation": generation},
            "spec": xdp_spec(json!({}), json!({"path": "/x.o"}), "f", &["eth0"]),
            "status": status,
        }))
        .unwrap()
    }

    fn cond(type_: &str, status: &str, generation: i64) -> Value {
        json!({"type": type_, "status": status, "reason": "R", "message": "m",
               "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"})
    }

    #[test]
    fn ready_needs_the_current_generation_and_every_target() {
        let ok = json!({"observedGeneration": 2, "revision": "0123456789abcdef", "targetNodes": 2, "readyNodes": 2,
                        "conditions": [cond("Ready", "True", 2), cond("Degraded", "False", 2)]});
        assert_eq!(ready(&program(2, ok.clone()), 2), Ok(()));
        assert!(ready(&program(2, ok.clone()), 3).is_err(), "wrong target count");
        assert!(ready(&program(3, ok), 2).unwrap_err().contains("generation"), "stale status");
        let stale_cond = json!({"observedGeneration": 2, "revision": "0123456789abcdef", "targetNodes": 1,
                                "readyNodes": 1, "conditions": [cond("Ready", "True", 1)]});
        assert!(ready(&program(2, stale_cond), 1).is_err(), "condition of an older generation");
        let failing = json!({"observedGeneration": 1, "revision": "0123456789abcdef", "targetNodes": 2,
                             "readyNodes": 1, "failedNodes": 1,
                             "conditions": [cond("Ready", "False", 1), cond("Degraded", "True", 1)]});
        let p = program(1, failing);
        assert!(ready(&p, 2).is_err());
        assert_eq!(has_condition(&p, "Degraded", "True"), Ok(()));
        assert!(ready(&program(1, json!(null)), 1).unwrap_err().contains("no status"));
    }
}
