//! The cluster the trials share, and one trial: bring it to the plan's starting
//! state, act, kill, restart what was killed, wait for convergence.

mod check;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use agent::testing::findings::Findings;
use crds::BpfProgram;
use crds::revision::{BytecodeIdentity, Revision};
use crds::rollout::Phase;
use e2e::env::{self, Env};
use e2e::operator::Operator;
use e2e::util;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::plan::{Action, Moment, Plan, SLOTS, Slot, Variant};
use crate::{AFTER_COMMIT_NODE, CONVERGE_TIMEOUT, GATE_TIMEOUT, NODES, TEST};

// ---- what must hold after a trial ------------------------------------------------------

/// What a slot must look like once converged.
#[derive(Clone, Debug)]
pub enum Expect {
    Absent,
    Runs {
        uid: String,
        variant: Variant,
        /// What the nodes run.
        revision: String,
        /// `status.revision` (differs after a rollback: the spec's failed revision).
        status_revision: String,
        phase: Phase,
    },
}

pub struct SlotState {
    name: String,
    uid: Option<String>,
    variant: Option<Variant>,
}

/// How one trial went.
pub struct Outcome {
    pub landed: String,
    pub recovery: Option<String>,
    pub converged: bool,
    pub leaks: usize,
    pub took: Duration,
    pub findings: Findings,
}

pub struct World {
    pub env: Env,
    pub cm: String,
    pub slots: BTreeMap<Slot, SlotState>,
    /// Every program id seen during the run: any still loaded at a check must be desired.
    pub seen: BTreeSet<u64>,
    pub operators_started: usize,
    /// Nodes that have dum0 now (a rollback trial deletes it after the canary).
    pub dum0: Vec<bool>,
}

impl World {
    pub fn start(kubeconfig: &Path) -> World {
        let mut env = Env::start(TEST, kubeconfig);
        for _ in 0..NODES {
            env.add_node(&[]);
        }
        for i in 0..NODES {
            env.node(i).add_interface("dum0").unwrap_or_else(|e| panic!("{e:#}"));
        }
        // Node 1 holds gated applies after the commit (old revision not yet removed),
        // the others after the attach (new revision attached, not yet committed).
        env.node_mut(AFTER_COMMIT_NODE).set_pause_point("after-commit");
        env.node_mut(AFTER_COMMIT_NODE).restart_agent().unwrap_or_else(|e| panic!("{e:#}"));
        let objects: Vec<&str> = vec!["xdp_counter.o", "xdp_counter_v2.o", "tracepoint_openat.o"];
        let cm = env.bytecode_configmap("crash-bytecode", &objects);
        let slots =
            SLOTS.iter().map(|s| (*s, SlotState { name: env.name(s.base()), uid: None, variant: None })).collect();
        World { env, cm, slots, seen: BTreeSet::new(), operators_started: 0, dum0: vec![true; NODES] }
    }

    /// The checker must see what it is meant to find: plant a pinned program under node
    /// 0's bpffs root, attach it as XDP to dum0, add a tc filter there, then remove them.
    pub fn checker_finds_planted_leaks(&mut self) {
        let node = self.env.node(0);
        let (ns, pin) = (node.netns.clone(), node.bpffs_root.join("planted-by-the-test"));
        let build = util::repo_root().join("examples/bpf/build");
        let plant = format!(
            "bpftool prog load {b}/xdp_counter.o {p} type xdp && \
             nsenter --net=/run/netns/{ns} ip link set dev dum0 xdpgeneric pinned {p} && \
             nsenter --net=/run/netns/{ns} tc qdisc add dev dum0 clsact && \
             nsenter --net=/run/netns/{ns} tc filter add dev dum0 ingress bpf da obj {b}/tc_counter.o sec classifier",
            b = build.display(),
            p = pin.display()
        );
        util::sh(&plant).unwrap_or_else(|e| panic!("planting leaks: {e:#}"));
        let nothing: BTreeMap<Slot, Expect> = SLOTS.iter().map(|s| (*s, Expect::Absent)).collect();
        let found = self.check(&nothing);
        util::sh_quiet(&format!(
            "nsenter --net=/run/netns/{ns} ip link set dev dum0 xdpgeneric off; \
             nsenter --net=/run/netns/{ns} tc qdisc del dev dum0 clsact; rm -f {}",
            pin.display()
        ));
        let text = found.leaks.join("\n");
        for what in ["pin planted-by-the-test", "dum0 runs XDP", "tc filters on dum0"] {
            assert!(text.contains(what), "the checker missed the planted {what}: {found:?}");
        }
        let (clean, after, _) = self.wait_converged(&nothing, Duration::from_secs(10));
        assert!(clean, "planted leaks removed, the checker still finds {after:?}");
        eprintln!("{TEST}: the checker found the planted pin, XDP program and tc filter ({} leaks)", found.leaks.len());
    }

    fn interfaces(&self, i: usize) -> &'static [&'static str] {
        if self.dum0[i] { &["eth0", "dum0"] } else { &["eth0"] }
    }

    fn spec(&self, v: Variant, rollout: Value) -> Value {
        json!({
            "nodeSelector": self.env.selector(&[]),
            "bytecode": self.env.configmap_bytecode(&self.cm, v.object()),
            "programs": v.programs(),
            "rollout": rollout,
        })
    }

    /// The revision the operator must give the stored spec of `name` (computed here
    /// from the object's bytes, not read from status).
    fn revision_of(&self, name: &str, v: Variant) -> String {
        let spec = self.env.program(name).spec;
        Revision::compute(&spec, BytecodeIdentity::Bytes(&util::object(v.object()))).to_string()
    }

    fn create(&mut self, slot: Slot, v: Variant) -> BpfProgram {
        let mut spec = self.spec(v, Value::Null);
        spec.as_object_mut().map(|m| m.remove("rollout"));
        let name = self.slots[&slot].name.clone();
        let p = self.env.cluster.create_program(&name, spec).unwrap_or_else(|e| panic!("{e:#}"));
        let s = self.slots.get_mut(&slot).expect("every slot exists");
        s.uid = p.uid();
        s.variant = Some(v);
        p
    }

    fn patch(&mut self, slot: Slot, v: Variant, rollout: Value) {
        let name = self.slots[&slot].name.clone();
        self.env.cluster.patch_program_spec(&name, self.spec(v, rollout)).unwrap_or_else(|e| panic!("{e:#}"));
        self.slots.get_mut(&slot).expect("every slot exists").variant = Some(v);
    }

    fn delete(&mut self, slot: Slot) {
        let name = self.slots[&slot].name.clone();
        self.env.cluster.delete_program(&name).unwrap_or_else(|e| panic!("{e:#}"));
        self.slots.get_mut(&slot).expect("every slot exists").variant = None;
    }

    /// A slot that runs `variant` at its stored spec's revision, rolled out.
    fn expect_runs(&self, slot: Slot) -> Expect {
        let s = &self.slots[&slot];
        match (s.variant, &s.uid) {
            (Some(v), Some(uid)) => {
                let revision = self.revision_of(&s.name, v);
                Expect::Runs {
                    uid: uid.clone(),
                    variant: v,
                    status_revision: revision.clone(),
                    revision,
                    phase: Phase::Complete,
                }
            }
            _ => Expect::Absent,
        }
    }

    /// Bring every slot to `pre` without harm, and wait until it converged.
    fn settle(&mut self, pre: &BTreeMap<Slot, Option<Variant>>) -> Result<(), Findings> {
        for i in 0..NODES {
            if !self.dum0[i] {
                self.env.node(i).add_interface("dum0").unwrap_or_else(|e| panic!("{e:#}"));
                self.dum0[i] = true;
            }
        }
        for (slot, want) in pre {
            let now = self.slots[slot].variant;
            match (now, want) {
                (None, None) => {}
                (Some(_), None) => self.delete(*slot),
                (None, Some(v)) => {
                    self.create(*slot, *v);
                }
                (Some(a), Some(b)) if a == *b => {}
                (Some(_), Some(b)) => self.patch(*slot, *b, Value::Null),
            }
        }
        let expect: BTreeMap<Slot, Expect> = SLOTS.iter().map(|s| (*s, self.expect_runs(*s))).collect();
        let (ok, f, _) = self.wait_converged(&expect, CONVERGE_TIMEOUT);
        if ok { Ok(()) } else { Err(f) }
    }

    // ---- one trial -----------------------------------------------------------------

    pub fn run(&mut self, index: u64, plan: &Plan) -> Outcome {
        if let Err(f) = self.settle(&plan.pre) {
            return Outcome {
                landed: "setup did not converge".into(),
                recovery: None,
                converged: false,
                leaks: f.leaks.len(),
                took: Duration::ZERO,
                findings: f,
            };
        }
        let slot = plan.slot;
        let pre_expect = self.expect_runs(slot);
        // A rollback needs a canary on the bad revision first (unharmed): then the nodes
        // after it lose dum0, so the next step fails and the rollout rolls back.
        let canary = if plan.action == Action::Rollback {
            match self.pause_after_the_canary(slot) {
                Ok(c) => Some(c),
                Err(why) => {
                    return Outcome {
                        landed: format!("setup: {why}"),
                        recovery: None,
                        converged: false,
                        leaks: 0,
                        took: Duration::ZERO,
                        findings: Findings { wrong: vec![why], leaks: vec![] },
                    };
                }
            }
        } else {
            None
        };
        let gate_node = match plan.moment {
            Moment::Gate(n) => Some(n),
            Moment::GateCanary => canary,
            Moment::Delay(_) => None,
        };
        let gate = gate_node.map(|n| {
            let dir = self.env.node(n).gate_dir();
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            (n, dir)
        });

        // The action under test.
        match (plan.action, plan.to) {
            (Action::Create, Some(v)) => {
                self.create(slot, v);
            }
            (Action::Upgrade, Some(v)) => self.patch(slot, v, Value::Null),
            (Action::Rollout, Some(v)) => self.patch(
                slot,
                v,
                json!({"steps": [{"nodes": 1, "pause": {"duration": "2s"}}, {"nodes": "100%"}], "maxInFlight": 2}),
            ),
            (Action::Rollback, Some(_)) => {
                // Resume past the canary's pause: the next node fails, the canary goes back.
                let name = self.slots[&slot].name.clone();
                let wide = self.revision_of(&name, Variant::XdpWide);
                let resume = json!({"rollout": {"resume": {"revision": wide, "step": 1}}});
                self.env.cluster.patch_program_spec(&name, resume).unwrap_or_else(|e| panic!("{e:#}"));
            }
            (Action::Delete, None) => self.delete(slot),
            other => panic!("inconsistent plan {other:?}"),
        }
        let uid = self.slots[&slot].uid.clone().unwrap_or_default();
        let old_rev = match &pre_expect {
            Expect::Runs { revision, .. } => Some(revision.clone()),
            Expect::Absent => None,
        };

        // The kill.
        let held = match (plan.moment, &gate) {
            (Moment::Delay(ms), _) => {
                std::thread::sleep(Duration::from_millis(ms));
                None
            }
            (_, Some((n, dir))) => Some((*n, wait_flag(dir))),
            (_, None) => None,
        };
        if plan.victim.operator() {
            self.env.operator.as_mut().expect("an operator runs").kill9();
        }
        if let Some(n) = plan.victim.agent() {
            self.env.node_mut(n).kill_agent();
        }
        let killed = Instant::now();
        let landed = match held {
            Some((n, Some(point))) if Some(n) == canary => format!("held at {point} on the canary (node{n})"),
            Some((n, Some(point))) => format!("held at {point} on node{n}"),
            Some((n, None)) => format!(
                "node{n} reached no fault point in {GATE_TIMEOUT:?}; {}",
                self.landing(slot, &uid, old_rev.as_deref(), canary)
            ),
            None => self.landing(slot, &uid, old_rev.as_deref(), canary),
        };
        if let Some((_, dir)) = &gate {
            let _ = std::fs::remove_dir_all(dir);
        }

        // Restart what was killed: the agent first (the operator waits for the Lease).
        let mut recovery = Vec::new();
        if let Some(n) = plan.victim.agent() {
            if let Some((ms, _)) = plan.recovery_kill {
                recovery.push(self.kill_agent_in_recovery(n, ms));
            }
            self.env.node_mut(n).restart_agent().unwrap_or_else(|e| panic!("{e:#}"));
        }
        if plan.victim.operator() {
            let mut op = self.start_operator(index);
            if let Some((_, ms)) = plan.recovery_kill {
                std::thread::sleep(Duration::from_millis(ms));
                let passes = op.metric("bpfleet_operator_resync_passes_total").unwrap_or(0.0);
                op.kill9();
                recovery.push(format!("operator killed {ms}ms after it led ({passes} resync passes done)"));
                drop(op);
                op = self.start_operator(index);
            }
            self.env.operator = Some(op);
        }

        // Convergence.
        let mut expect: BTreeMap<Slot, Expect> = SLOTS.iter().map(|s| (*s, self.expect_runs(*s))).collect();
        if plan.action == Action::Rollback
            && let Expect::Runs { uid, variant, revision, .. } = &pre_expect
        {
            let status_revision = self.revision_of(&self.slots[&slot].name, Variant::XdpWide);
            expect.insert(
                slot,
                Expect::Runs {
                    uid: uid.clone(),
                    variant: *variant,
                    revision: revision.clone(),
                    status_revision,
                    phase: Phase::RolledBack,
                },
            );
        }
        let (mut converged, mut findings, _) = self.wait_converged(&expect, CONVERGE_TIMEOUT);
        let took = killed.elapsed();
        if plan.action == Action::Rollback && converged {
            // The GitOps revert: back to the stable spec, which must be Ready again.
            let Expect::Runs { variant, .. } = pre_expect else { unreachable!("a rollback starts from a program") };
            self.patch(slot, variant, Value::Null);
            expect.insert(slot, self.expect_runs(slot));
            (converged, findings, _) = self.wait_converged(&expect, CONVERGE_TIMEOUT);
        }
        Outcome {
            landed,
            recovery: (!recovery.is_empty()).then(|| recovery.join("; ")),
            converged,
            leaks: findings.leaks.len(),
            took,
            findings,
        }
    }

    /// Roll the bad revision out to one node and pause there; then delete dum0 on the
    /// other nodes so the next step fails. Returns the canary (found in bpffs).
    fn pause_after_the_canary(&mut self, slot: Slot) -> Result<usize, String> {
        self.patch(
            slot,
            Variant::XdpWide,
            json!({"steps": [{"nodes": 1, "pause": {}}, {"nodes": "100%"}], "onFailure": "Rollback"}),
        );
        let name = self.slots[&slot].name.clone();
        let uid = self.slots[&slot].uid.clone().unwrap_or_default();
        let wide = self.revision_of(&name, Variant::XdpWide);
        let t = Instant::now();
        loop {
            let paused = self.env.cluster.program(&name).ok().flatten().is_some_and(|p| {
                env::current_status(&p)
                    .ok()
                    .and_then(|s| s.rollout.clone())
                    .is_some_and(|r| r.phase == Phase::Paused && r.updated_nodes == 1)
            });
            let on_wide: Vec<usize> =
                (0..NODES).filter(|i| self.env.node(*i).revision_dirs(&uid) == vec![wide.clone()]).collect();
            if paused && on_wide.len() == 1 {
                let canary = on_wide[0];
                for i in (0..NODES).filter(|i| *i != canary) {
                    util::sh(&format!("ip -n {} link del dum0", self.env.node(i).netns))
                        .map_err(|e| format!("{e:#}"))?;
                    self.dum0[i] = false;
                }
                return Ok(canary);
            }
            if t.elapsed() > Duration::from_secs(60) {
                return Err(format!("the canary never paused on {wide}: nodes on it {on_wide:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn start_operator(&mut self, index: u64) -> Operator {
        self.operators_started += 1;
        let id = format!("t{index}-{}", self.operators_started);
        Operator::start(self.env.operator_config(&id)).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Start node `n`'s agent and SIGKILL it `ms` after; say whether it had recovered.
    fn kill_agent_in_recovery(&mut self, n: usize, ms: u64) -> String {
        let node = self.env.node_mut(n);
        let before = recovered_lines(&node.log);
        node.start_agent().unwrap_or_else(|e| panic!("{e:#}"));
        std::thread::sleep(Duration::from_millis(ms));
        node.kill_agent();
        let state = if recovered_lines(&node.log) > before { "after recovery" } else { "before recovery finished" };
        format!("agent{n} killed {ms}ms after start ({state})")
    }

    /// Where the kill landed, from each node's bpffs (frozen on a killed agent): how
    /// many nodes had switched from `old` to the new revision of `uid`, or were between.
    fn landing(&self, slot: Slot, uid: &str, old: Option<&str>, canary: Option<usize>) -> String {
        let phase = self.phase_now(slot);
        if let Some(c) = canary {
            // A rollback: only the canary ever ran the failed revision.
            return match self.env.node(c).revision_dirs(uid).as_slice() {
                [r] if Some(r.as_str()) == old => format!("canary back on the stable revision{phase}"),
                [_] => format!("canary still on the failed revision{phase}"),
                _ => format!("canary between revisions{phase}"),
            };
        }
        let (mut untouched, mut mid, mut done) = (0, 0, 0);
        for i in 0..NODES {
            let revs = if uid.is_empty() { vec![] } else { self.env.node(i).revision_dirs(uid) };
            match (revs.as_slice(), old) {
                ([], None) => untouched += 1,
                ([], Some(_)) => done += 1,
                ([r], Some(o)) if r == o => untouched += 1,
                ([_], _) => done += 1,
                _ => mid += 1,
            }
        }
        if mid > 0 {
            format!("inside a switch ({mid} node(s) between revisions, {done} done){phase}")
        } else if done == 0 {
            format!("before any node changed{phase}")
        } else if untouched == 0 {
            format!("after every node changed{phase}")
        } else {
            format!("between nodes ({done}/{NODES} changed){phase}")
        }
    }

    /// The rollout phase of `slot`'s program, as its status says right now.
    fn phase_now(&self, slot: Slot) -> String {
        match self.env.cluster.program(&self.slots[&slot].name) {
            Ok(Some(p)) => {
                let stale = p.status.as_ref().and_then(|s| s.observed_generation) != p.metadata.generation;
                let phase = p.status.and_then(|s| s.rollout).map(|r| format!("{:?}", r.phase));
                format!(
                    " [status: {}{}]",
                    phase.unwrap_or_else(|| "none".into()),
                    if stale { ", older generation" } else { "" }
                )
            }
            Ok(None) => " [status: gone]".into(),
            Err(_) => String::new(),
        }
    }
}

/// Wait until an apply is held in `dir` (the flag file the agent creates); its point.
pub fn wait_flag(dir: &Path) -> Option<String> {
    let t = Instant::now();
    while t.elapsed() < GATE_TIMEOUT {
        if let Some(e) = std::fs::read_dir(dir).into_iter().flatten().flatten().next() {
            let name = e.file_name().to_string_lossy().into_owned();
            return Some(name.split('.').next().unwrap_or_default().to_string());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

pub fn recovered_lines(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches("recovered state from bpffs").count()
}
