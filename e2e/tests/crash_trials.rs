//! Operator crash trials (issue 12, point 1): SIGKILL the operator, one node's agent, or
//! both, at a seeded moment of a create, upgrade, progressive rollout step, rollback or
//! delete (or while an agent holds an apply at a fault point), restart what was killed
//! (sometimes killing it again while it recovers), and check that the fleet converges:
//! every node runs exactly what the spec says and nothing else, read from bpftool, tc,
//! ip and each agent's bpffs tree; BpfProgram and BpfNode status true.
//!
//! One environment (three process-mode nodes, one operator) serves every trial of a
//! run. Each trial first brings the cluster to its own starting state, unharmed, so any
//! trial replays alone.
//!
//! - `BPFLEET_CRASH_SEED` (default 424242): the seed, printed first;
//! - `BPFLEET_OPERATOR_TRIALS` (default 12): how many trials;
//! - `BPFLEET_CRASH_TRIAL=N`: replay only trial N of the seed.
//!
//! Without KUBECONFIG it prints one SKIP line. See docs/reliability.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crds::revision::{BytecodeIdentity, Revision};
use crds::rollout::Phase;
use crds::{BpfProgram, Health};
use e2e::convergence::{self, Findings, Want};
use e2e::env::{self, Env};
use e2e::operator::Operator;
use e2e::rng::Rng;
use e2e::util;
use kube::ResourceExt;
use serde_json::{Value, json};

const TEST: &str = "operator_crash_trials";
const NODES: usize = 3;
/// Nodes 0 and 1 have a second interface `dum0`, node 2 has not: the bad revision of a
/// rollback attaches to both, so it runs on the first two and fails on the third.
const WITH_DUM0: usize = 2;
/// The node whose agent holds gated applies after the commit (the others after the
/// attach). That point is reached only by an apply that replaces a revision.
const AFTER_COMMIT_NODE: usize = 1;
const DEFAULT_SEED: u64 = 424_242;
const DEFAULT_TRIALS: u64 = 12;
/// From the restart of what was killed to a converged fleet. The operator backs off
/// from an unreachable agent, so an agent restart may wait for its next attempt.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(150);
/// How long a gated kill waits for an apply to reach the fault point.
const GATE_TIMEOUT: Duration = Duration::from_secs(20);
/// Trials that failed before the run gives up (the world may be broken for the rest).
const MAX_FAILURES: usize = 3;

// ---- what the trials deploy --------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Xdp,
    Tp,
}

const SLOTS: [Slot; 2] = [Slot::Xdp, Slot::Tp];

impl Slot {
    fn good(self) -> [Variant; 2] {
        match self {
            Slot::Xdp => [Variant::XdpV1, Variant::XdpV2],
            Slot::Tp => [Variant::TpOne, Variant::TpTwo],
        }
    }

    fn base(self) -> &'static str {
        match self {
            Slot::Xdp => "crash-xdp",
            Slot::Tp => "crash-tp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// `xdp_counter.o` on eth0.
    XdpV1,
    /// `xdp_counter_v2.o` on eth0.
    XdpV2,
    /// `xdp_counter_v2.o` on eth0 and dum0: fails on the node without dum0.
    XdpWide,
    /// `tracepoint_openat.o` on sys_enter_openat.
    TpOne,
    /// The same on sys_enter_openat and sys_enter_openat2 (two links).
    TpTwo,
}

impl Variant {
    fn object(self) -> &'static str {
        match self {
            Variant::XdpV1 => "xdp_counter.o",
            Variant::XdpV2 | Variant::XdpWide => "xdp_counter_v2.o",
            Variant::TpOne | Variant::TpTwo => "tracepoint_openat.o",
        }
    }

    fn function(self) -> &'static str {
        match self {
            Variant::XdpV1 | Variant::XdpV2 | Variant::XdpWide => "count_packets",
            Variant::TpOne | Variant::TpTwo => "count_openat",
        }
    }

    fn map(self) -> &'static str {
        match self {
            Variant::XdpV1 | Variant::XdpV2 | Variant::XdpWide => "packet_count",
            Variant::TpOne | Variant::TpTwo => "openat_count",
        }
    }

    fn interfaces(self) -> &'static [&'static str] {
        match self {
            Variant::XdpV1 | Variant::XdpV2 => &["eth0"],
            Variant::XdpWide => &["eth0", "dum0"],
            Variant::TpOne | Variant::TpTwo => &[],
        }
    }

    fn tracepoints(self) -> &'static [&'static str] {
        match self {
            Variant::TpOne => &["syscalls/sys_enter_openat"],
            Variant::TpTwo => &["syscalls/sys_enter_openat", "syscalls/sys_enter_openat2"],
            _ => &[],
        }
    }

    fn links(self) -> usize {
        self.interfaces().len() + self.tracepoints().len()
    }

    fn label(self) -> &'static str {
        match self {
            Variant::XdpV1 => "v1",
            Variant::XdpV2 => "v2",
            Variant::XdpWide => "v2-wide(bad)",
            Variant::TpOne => "openat",
            Variant::TpTwo => "openat+openat2",
        }
    }

    fn programs(self) -> Value {
        if self.interfaces().is_empty() {
            json!([{"name": self.function(), "type": "Tracepoint", "tracepoint": {"names": self.tracepoints()}}])
        } else {
            json!([{"name": self.function(), "type": "XDP", "xdp": {"interfaces": self.interfaces(), "mode": "Generic"}}])
        }
    }
}

// ---- a trial's plan (pure, from the seed) -------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Create,
    Upgrade,
    Rollout,
    Rollback,
    Delete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Operator,
    Agent(usize),
    Both(usize),
}

impl Victim {
    fn operator(self) -> bool {
        matches!(self, Victim::Operator | Victim::Both(_))
    }

    fn agent(self) -> Option<usize> {
        match self {
            Victim::Operator => None,
            Victim::Agent(n) | Victim::Both(n) => Some(n),
        }
    }

    fn label(self) -> String {
        match self {
            Victim::Operator => "operator".into(),
            Victim::Agent(n) => format!("agent{n}"),
            Victim::Both(n) => format!("operator+agent{n}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moment {
    /// SIGKILL this many milliseconds after the API write.
    Delay(u64),
    /// SIGKILL once node N's agent holds an apply at its fault point.
    Gate(usize),
}

#[derive(Clone, Debug)]
struct Plan {
    action: Action,
    slot: Slot,
    /// The state each slot is brought to before the action, unharmed.
    pre: BTreeMap<Slot, Option<Variant>>,
    /// The variant the action asks for (None: delete).
    to: Option<Variant>,
    victim: Victim,
    moment: Moment,
    /// Kill what was restarted again this many milliseconds after it started (agent)
    /// or after it took the lead (operator).
    recovery_kill: Option<u64>,
}

impl Plan {
    fn draw(rng: &mut Rng) -> Plan {
        let action = rng.pick(&[Action::Create, Action::Upgrade, Action::Rollout, Action::Rollback, Action::Delete]);
        let slot = if action == Action::Rollback { Slot::Xdp } else { rng.pick(&SLOTS) };
        let mut pre = BTreeMap::new();
        for s in SLOTS {
            let present = if s == slot { action != Action::Create } else { rng.chance(50) };
            pre.insert(s, present.then(|| rng.pick(&s.good())));
        }
        let before = pre[&slot];
        let to = match action {
            Action::Create => Some(rng.pick(&slot.good())),
            Action::Upgrade | Action::Rollout => slot.good().into_iter().find(|v| Some(*v) != before),
            Action::Rollback => Some(Variant::XdpWide),
            Action::Delete => None,
        };
        let node = rng.below(NODES as u64) as usize;
        let victim = match rng.below(3) {
            0 => Victim::Operator,
            1 => Victim::Agent(node),
            _ => Victim::Both(node),
        };
        let max_delay = match action {
            Action::Create => 2000,
            Action::Upgrade => 2500,
            Action::Rollout | Action::Rollback => 5000,
            Action::Delete => 1500,
        };
        // Nodes where the action can reach the fault point: a first apply never reaches
        // after-commit, only nodes with dum0 take the bad revision of a rollback (and
        // are then rolled back), a removal has no fault point.
        let reachable: Vec<usize> = (0..NODES)
            .filter(|n| match action {
                Action::Create => *n != AFTER_COMMIT_NODE,
                Action::Rollback => *n < WITH_DUM0,
                Action::Upgrade | Action::Rollout => true,
                Action::Delete => false,
            })
            .collect();
        let moment = if reachable.is_empty() || rng.chance(50) {
            // Half the delays are short: a whole fleet switches in well under a second.
            Moment::Delay(match rng.below(10) {
                0..=4 => rng.below(300),
                5..=7 => rng.range(300, 1500),
                _ => rng.range(1500, max_delay),
            })
        } else {
            // Preferably the victim's own node; otherwise the kill hits the victim while
            // another node holds an apply.
            Moment::Gate(victim.agent().filter(|n| reachable.contains(n)).unwrap_or_else(|| rng.pick(&reachable)))
        };
        let recovery_kill = rng.chance(30).then(|| match victim {
            Victim::Agent(_) => rng.below(400),
            _ => rng.below(1500),
        });
        Plan { action, slot, pre, to, victim, moment, recovery_kill }
    }

    fn describe(&self) -> String {
        let from = self.pre[&self.slot].map_or("absent", Variant::label);
        let to = self.to.map_or("deleted", Variant::label);
        let moment = match self.moment {
            Moment::Delay(ms) => format!("kill {ms}ms after the write"),
            Moment::Gate(n) => format!("kill while node{n} holds an apply"),
        };
        let rec = self.recovery_kill.map(|ms| format!(", again {ms}ms into recovery")).unwrap_or_default();
        format!("{:?} {:?} {from} -> {to}; victim {}; {moment}{rec}", self.action, self.slot, self.victim.label())
    }
}

// ---- what must hold after a trial ------------------------------------------------------

/// What a slot must look like once converged.
#[derive(Clone, Debug)]
enum Expect {
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

struct SlotState {
    name: String,
    uid: Option<String>,
    variant: Option<Variant>,
}

/// How one trial went.
struct Outcome {
    landed: String,
    recovery: Option<String>,
    converged: bool,
    leaks: usize,
    took: Duration,
    findings: Findings,
}

struct World {
    env: Env,
    cm: String,
    slots: BTreeMap<Slot, SlotState>,
    /// Every program id seen during the run: any still loaded at a check must be desired.
    seen: BTreeSet<u64>,
    operators_started: usize,
}

impl World {
    fn start(kubeconfig: &Path) -> World {
        let mut env = Env::start(TEST, kubeconfig);
        for _ in 0..NODES {
            env.add_node(&[]);
        }
        for i in 0..WITH_DUM0 {
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
        World { env, cm, slots, seen: BTreeSet::new(), operators_started: 0 }
    }

    /// The checker must see what it is meant to find: plant a pinned program under node
    /// 0's bpffs root, attach it as XDP to dum0, add a tc filter there, then remove them.
    fn checker_finds_planted_leaks(&mut self) {
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

    fn interfaces(i: usize) -> &'static [&'static str] {
        if i < WITH_DUM0 { &["eth0", "dum0"] } else { &["eth0"] }
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

    // ---- checks ----------------------------------------------------------------------

    /// Poll [`World::check`] until it finds nothing or `timeout` passes.
    fn wait_converged(&mut self, expect: &BTreeMap<Slot, Expect>, timeout: Duration) -> (bool, Findings, Duration) {
        let t = Instant::now();
        loop {
            let f = self.check(expect);
            if f.is_clean() {
                return (true, f, t.elapsed());
            }
            if t.elapsed() >= timeout {
                return (false, f, t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// One look at the kernel, bpffs, the agents and the API against `expect`.
    fn check(&mut self, expect: &BTreeMap<Slot, Expect>) -> Findings {
        let mut f = Findings::default();
        let wants: Vec<Want> = expect
            .values()
            .filter_map(|e| match e {
                Expect::Absent => None,
                Expect::Runs { uid, variant, revision, .. } => Some(Want {
                    uid: uid.clone(),
                    revision: revision.clone(),
                    function: variant.function().into(),
                    maps: vec![variant.map().into()],
                    links: variant.links(),
                    xdp: variant.interfaces().iter().map(|i| i.to_string()).collect(),
                }),
            })
            .collect();
        let mut desired = BTreeSet::new();
        for i in 0..NODES {
            let node = self.env.node(i);
            desired.extend(convergence::check_node(node, Self::interfaces(i), &wants, &mut self.seen, &mut f));
        }
        let links = NODES * wants.iter().map(|w| w.links).sum::<usize>();
        convergence::check_kernel(&desired, links, &self.seen, &mut f);
        // Ask the API and the agents only once the kernel is right (cheaper, and their
        // view is what a user reads, so it must agree with the kernel's).
        if f.is_clean() {
            self.check_status(expect, &wants, &mut f);
        }
        f
    }

    fn check_status(&mut self, expect: &BTreeMap<Slot, Expect>, wants: &[Want], f: &mut Findings) {
        for (slot, e) in expect {
            let name = &self.slots[slot].name;
            let got = match self.env.cluster.program(name) {
                Ok(p) => p,
                Err(err) => {
                    f.wrong.push(format!("BpfProgram {name}: {err:#}"));
                    continue;
                }
            };
            match (e, got) {
                (Expect::Absent, None) => {}
                (Expect::Absent, Some(p)) => {
                    f.wrong.push(format!("BpfProgram {name} still exists ({})", p.uid().unwrap_or_default()))
                }
                (Expect::Runs { .. }, None) => f.wrong.push(format!("BpfProgram {name} does not exist")),
                (Expect::Runs { status_revision, revision, phase, .. }, Some(p)) => {
                    if let Err(why) = program_status(&p, status_revision, revision, *phase) {
                        f.wrong.push(format!("BpfProgram {name}: {why}"));
                    }
                }
            }
        }
        for i in 0..NODES {
            let node = &self.env.node(i).name;
            match self.env.cluster.bpf_node(node) {
                Ok(Some(b)) => {
                    let entries = b.status.map(|s| s.programs).unwrap_or_default();
                    for e in &entries {
                        self.seen.extend(e.attached.iter().map(|a| u64::from(a.program_id)));
                        match wants.iter().find(|w| w.uid == e.owner_uid) {
                            None => f.wrong.push(format!("BpfNode {node} lists {} ({})", e.owner_uid, e.revision)),
                            Some(w) if w.revision != e.revision || e.health != Health::Healthy => {
                                f.wrong.push(format!(
                                    "BpfNode {node}: {} at {} {:?}, want {} Healthy",
                                    e.owner_uid, e.revision, e.health, w.revision
                                ))
                            }
                            Some(_) => {}
                        }
                    }
                    for w in wants {
                        if !entries.iter().any(|e| e.owner_uid == w.uid) {
                            f.wrong.push(format!("BpfNode {node} has no entry for {}", w.uid));
                        }
                    }
                }
                Ok(None) => f.wrong.push(format!("BpfNode {node} does not exist")),
                Err(e) => f.wrong.push(format!("BpfNode {node}: {e:#}")),
            }
            match self.env.node(i).list() {
                Ok(list) => {
                    let mut got = BTreeSet::new();
                    for o in &list.owners {
                        self.seen.extend(o.attached.iter().map(|a| u64::from(a.program_id)));
                        let uid = o.owner.as_ref().map(|o| o.uid.clone()).unwrap_or_default();
                        let healthy = o.health == proto::v1::Health::Healthy as i32;
                        match wants.iter().find(|w| w.uid == uid) {
                            Some(w) if w.revision == o.revision && healthy => {}
                            _ => {
                                f.wrong.push(format!("agent {node} lists {uid} at {} health {}", o.revision, o.health))
                            }
                        }
                        got.insert(uid);
                    }
                    for w in wants.iter().filter(|w| !got.contains(&w.uid)) {
                        f.wrong.push(format!("agent {node} does not list {}", w.uid));
                    }
                }
                Err(e) => f.wrong.push(format!("agent {node}: List: {e:#}")),
            }
        }
    }

    // ---- one trial -----------------------------------------------------------------

    fn run(&mut self, index: u64, plan: &Plan) -> Outcome {
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
        let gate = match plan.moment {
            Moment::Gate(n) => {
                let dir = self.env.node(n).gate_dir();
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
                Some(dir)
            }
            Moment::Delay(_) => None,
        };

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
            (Action::Rollback, Some(v)) => {
                self.patch(slot, v, json!({"steps": [{"nodes": 1}, {"nodes": "100%"}], "onFailure": "Rollback"}))
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
            (Moment::Gate(n), Some(dir)) => Some((n, wait_flag(dir))),
            (Moment::Gate(_), None) => None,
        };
        if plan.victim.operator() {
            self.env.operator.as_mut().expect("an operator runs").kill9();
        }
        if let Some(n) = plan.victim.agent() {
            self.env.node_mut(n).kill_agent();
        }
        let killed = Instant::now();
        let landed = match held {
            Some((n, Some(point))) => format!("held at {point} on node{n}"),
            Some((n, None)) => format!(
                "node{n} reached no fault point in {GATE_TIMEOUT:?}; {}",
                self.landing(slot, &uid, old_rev.as_deref())
            ),
            None => self.landing(slot, &uid, old_rev.as_deref()),
        };
        if let Some(dir) = &gate {
            let _ = std::fs::remove_dir_all(dir);
        }

        // Restart what was killed: the agent first (the operator waits for the Lease).
        let mut recovery = Vec::new();
        if let Some(n) = plan.victim.agent() {
            if let Some(ms) = plan.recovery_kill {
                recovery.push(self.kill_agent_in_recovery(n, ms));
            }
            self.env.node_mut(n).restart_agent().unwrap_or_else(|e| panic!("{e:#}"));
        }
        if plan.victim.operator() {
            let mut op = self.start_operator(index);
            if let Some(ms) = plan.recovery_kill {
                let passes = op.metric("bpfleet_operator_resync_passes_total").unwrap_or(0.0);
                std::thread::sleep(Duration::from_millis(ms));
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
    fn landing(&self, slot: Slot, uid: &str, old: Option<&str>) -> String {
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
        let phase = self.phase_now(slot);
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

/// The status of a program that runs `revision` (status says `status_revision`) in
/// rollout phase `phase`: Ready on every node unless rolled back.
fn program_status(p: &BpfProgram, status_revision: &str, revision: &str, phase: Phase) -> Result<(), String> {
    let s = env::current_status(p)?;
    if s.revision.as_deref() != Some(status_revision) {
        return Err(format!("status.revision {:?}, want {status_revision}", s.revision));
    }
    let r = s.rollout.as_ref().ok_or("no status.rollout")?;
    if r.phase != phase {
        return Err(format!("rollout {:?} ({:?}), want {phase:?}", r.phase, r.message));
    }
    if r.stable_revision.as_deref() != Some(revision) {
        return Err(format!("stableRevision {:?}, want {revision}", r.stable_revision));
    }
    if phase == Phase::Complete {
        env::ready(p, NODES as i32)?;
    }
    Ok(())
}

/// Wait until an apply is held in `dir` (the flag file the agent creates); its point.
fn wait_flag(dir: &Path) -> Option<String> {
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

fn recovered_lines(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches("recovered state from bpffs").count()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).map(|v| v.parse().unwrap_or_else(|e| panic!("{name}={v}: {e}")))
}

/// The class of a landing for the summary: its words without the counts.
fn landing_class(landed: &str) -> String {
    let head = landed.split(" [status").next().unwrap_or(landed);
    head.split(" (").next().unwrap_or(head).to_string()
}

#[test]
fn operator_crash_trials() {
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let seed = env_u64("BPFLEET_CRASH_SEED").unwrap_or(DEFAULT_SEED);
    let trials = env_u64("BPFLEET_OPERATOR_TRIALS").unwrap_or(DEFAULT_TRIALS);
    let only = env_u64("BPFLEET_CRASH_TRIAL");
    let indices: Vec<u64> = match only {
        Some(t) => vec![t],
        None => (0..trials).collect(),
    };
    eprintln!(
        "{TEST}: seed {seed}, {} trial(s){} (replay one: BPFLEET_CRASH_SEED={seed} BPFLEET_CRASH_TRIAL=N)",
        indices.len(),
        only.map(|t| format!(" (only trial {t})")).unwrap_or_default()
    );
    let started = Instant::now();
    let mut world = World::start(&kubeconfig);
    world.checker_finds_planted_leaks();
    let (mut run, mut converged, mut leaks, mut failed) = (0, 0, 0, Vec::new());
    let mut landings: BTreeMap<String, usize> = BTreeMap::new();
    let mut victims: BTreeMap<String, usize> = BTreeMap::new();
    for &i in &indices {
        let plan = Plan::draw(&mut Rng::for_trial(seed, i));
        let o = world.run(i, &plan);
        run += 1;
        leaks += o.leaks;
        let kind = match plan.moment {
            Moment::Delay(_) => "delay",
            Moment::Gate(_) => "gate",
        };
        *landings.entry(format!("{kind}: {}", landing_class(&o.landed))).or_default() += 1;
        let victim = match plan.victim {
            Victim::Operator => "operator",
            Victim::Agent(_) => "agent",
            Victim::Both(_) => "operator+agent",
        };
        *victims.entry(victim.to_string()).or_default() += 1;
        if let Some(r) = &o.recovery {
            for part in r.split("; ") {
                let class = if part.starts_with("operator") {
                    "recovery: operator after it led".to_string()
                } else {
                    format!("recovery: agent {}", part.split('(').nth(1).unwrap_or("").trim_end_matches(')'))
                };
                *landings.entry(class).or_default() += 1;
            }
        }
        eprintln!(
            "trial {i}: {} | landed: {}{} | {} {:.1}s after the kill | leaks {}",
            plan.describe(),
            o.landed,
            o.recovery.as_ref().map(|r| format!(" | recovery: {r}")).unwrap_or_default(),
            if o.converged { "converged" } else { "NOT converged" },
            o.took.as_secs_f64(),
            o.leaks
        );
        if o.converged && o.leaks == 0 {
            converged += 1;
        } else {
            for w in &o.findings.wrong {
                eprintln!("    wrong: {w}");
            }
            for l in &o.findings.leaks {
                eprintln!("    leak: {l}");
            }
            eprintln!(
                "----- operator (last lines) -----\n{}",
                world.env.operator.as_ref().map(|o| o.log_tail(40)).unwrap_or_default()
            );
            for n in &world.env.nodes {
                eprintln!("----- agent {} (last lines) -----\n{}", n.name, n.log_tail(15));
            }
            failed.push(i);
            if failed.len() >= MAX_FAILURES {
                eprintln!("{TEST}: {MAX_FAILURES} trials failed, stopping the run");
                break;
            }
        }
    }
    eprintln!("{TEST}: kills by victim: {victims:?}");
    for (class, n) in &landings {
        eprintln!("{TEST}: landed {class}: {n}");
    }
    eprintln!(
        "seed {seed}: {run} trials run, {converged} converged, {leaks} leaks ({:.0}s)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "trials {failed:?} of seed {seed} did not converge cleanly (replay with BPFLEET_CRASH_TRIAL)"
    );
    assert_eq!(leaks, 0);
}

#[test]
fn plans_replay_from_the_seed_and_cover_every_choice() {
    let draw = |t| Plan::draw(&mut Rng::for_trial(424_242, t)).describe();
    assert_eq!(draw(7), draw(7));
    let plans: Vec<Plan> = (0..200).map(|t| Plan::draw(&mut Rng::for_trial(1, t))).collect();
    for a in [Action::Create, Action::Upgrade, Action::Rollout, Action::Rollback, Action::Delete] {
        assert!(plans.iter().any(|p| p.action == a), "{a:?} never drawn");
    }
    assert!(plans.iter().any(|p| matches!(p.moment, Moment::Gate(_))));
    assert!(plans.iter().any(|p| p.recovery_kill.is_some()));
    for p in &plans {
        assert_eq!(p.pre[&p.slot].is_none(), p.action == Action::Create, "{}", p.describe());
        assert_ne!(p.pre[&p.slot], p.to, "{}", p.describe());
        if p.action == Action::Delete {
            assert!(matches!(p.moment, Moment::Delay(_)), "a delete reaches no apply fault point");
        }
    }
}
