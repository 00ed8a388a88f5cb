//! A trial's plan, drawn from the seed alone (pure): what the cluster starts from, the
//! action, the victim, when the kill comes.

use std::collections::BTreeMap;

use e2e::rng::Rng;
use serde_json::{Value, json};

use crate::{AFTER_COMMIT_NODE, NODES};

// ---- what the trials deploy --------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    Xdp,
    Tp,
}

pub const SLOTS: [Slot; 2] = [Slot::Xdp, Slot::Tp];

impl Slot {
    pub fn good(self) -> [Variant; 2] {
        match self {
            Slot::Xdp => [Variant::XdpV1, Variant::XdpV2],
            Slot::Tp => [Variant::TpOne, Variant::TpTwo],
        }
    }

    pub fn base(self) -> &'static str {
        match self {
            Slot::Xdp => "crash-xdp",
            Slot::Tp => "crash-tp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `xdp_counter.o` on eth0.
    XdpV1,
    /// `xdp_counter_v2.o` on eth0.
    XdpV2,
    /// `xdp_counter_v2.o` on eth0 and dum0: the revision a rollback undoes (every node
    /// has dum0 until the trial deletes it on the nodes after the canary).
    XdpWide,
    /// `tracepoint_openat.o` on sys_enter_openat.
    TpOne,
    /// The same on sys_enter_openat and sys_enter_openat2 (two links).
    TpTwo,
}

impl Variant {
    pub fn object(self) -> &'static str {
        match self {
            Variant::XdpV1 => "xdp_counter.o",
            Variant::XdpV2 | Variant::XdpWide => "xdp_counter_v2.o",
            Variant::TpOne | Variant::TpTwo => "tracepoint_openat.o",
        }
    }

    pub fn function(self) -> &'static str {
        match self {
            Variant::XdpV1 | Variant::XdpV2 | Variant::XdpWide => "count_packets",
            Variant::TpOne | Variant::TpTwo => "count_openat",
        }
    }

    pub fn map(self) -> &'static str {
        match self {
            Variant::XdpV1 | Variant::XdpV2 | Variant::XdpWide => "packet_count",
            Variant::TpOne | Variant::TpTwo => "openat_count",
        }
    }

    pub fn interfaces(self) -> &'static [&'static str] {
        match self {
            Variant::XdpV1 | Variant::XdpV2 => &["eth0"],
            Variant::XdpWide => &["eth0", "dum0"],
            Variant::TpOne | Variant::TpTwo => &[],
        }
    }

    pub fn tracepoints(self) -> &'static [&'static str] {
        match self {
            Variant::TpOne => &["syscalls/sys_enter_openat"],
            Variant::TpTwo => &["syscalls/sys_enter_openat", "syscalls/sys_enter_openat2"],
            _ => &[],
        }
    }

    pub fn links(self) -> usize {
        self.interfaces().len() + self.tracepoints().len()
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::XdpV1 => "v1",
            Variant::XdpV2 => "v2",
            Variant::XdpWide => "v2-wide(bad)",
            Variant::TpOne => "openat",
            Variant::TpTwo => "openat+openat2",
        }
    }

    pub fn programs(self) -> Value {
        if self.interfaces().is_empty() {
            json!([{"name": self.function(), "type": "Tracepoint", "tracepoint": {"names": self.tracepoints()}}])
        } else {
            json!([{"name": self.function(), "type": "XDP", "xdp": {"interfaces": self.interfaces(), "mode": "Generic"}}])
        }
    }
}

// ---- a trial's plan (pure, from the seed) -------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Create,
    Upgrade,
    Rollout,
    Rollback,
    Delete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Victim {
    Operator,
    Agent(usize),
    Both(usize),
}

impl Victim {
    pub fn operator(self) -> bool {
        matches!(self, Victim::Operator | Victim::Both(_))
    }

    pub fn agent(self) -> Option<usize> {
        match self {
            Victim::Operator => None,
            Victim::Agent(n) | Victim::Both(n) => Some(n),
        }
    }

    pub fn label(self) -> String {
        match self {
            Victim::Operator => "operator".into(),
            Victim::Agent(n) => format!("agent{n}"),
            Victim::Both(n) => format!("operator+agent{n}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moment {
    /// SIGKILL this many milliseconds after the API write.
    Delay(u64),
    /// SIGKILL once node N's agent holds an apply at its fault point.
    Gate(usize),
    /// SIGKILL once the canary of a rollback holds the apply that returns it to the
    /// stable revision at its fault point.
    GateCanary,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub action: Action,
    pub slot: Slot,
    /// The state each slot is brought to before the action, unharmed.
    pub pre: BTreeMap<Slot, Option<Variant>>,
    /// The variant the action asks for (None: delete).
    pub to: Option<Variant>,
    pub victim: Victim,
    pub moment: Moment,
    /// Kill what was restarted again: the agent this many milliseconds after it started,
    /// the operator after it took the lead.
    pub recovery_kill: Option<(u64, u64)>,
}

impl Plan {
    pub fn draw(rng: &mut Rng) -> Plan {
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
                Action::Upgrade | Action::Rollout => true,
                Action::Rollback | Action::Delete => false,
            })
            .collect();
        let moment = if action == Action::Rollback && rng.chance(50) {
            Moment::GateCanary
        } else if reachable.is_empty() || rng.chance(50) {
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
        let recovery_kill = rng.chance(30).then(|| (rng.below(400), rng.below(1500)));
        Plan { action, slot, pre, to, victim, moment, recovery_kill }
    }

    pub fn describe(&self) -> String {
        let from = self.pre[&self.slot].map_or("absent", Variant::label);
        let to = self.to.map_or("deleted", Variant::label);
        let moment = match self.moment {
            Moment::Delay(ms) => format!("kill {ms}ms after the write"),
            Moment::Gate(n) => format!("kill while node{n} holds an apply"),
            Moment::GateCanary => "kill while the canary holds its rollback".into(),
        };
        let rec = match (self.recovery_kill, self.victim) {
            (None, _) => String::new(),
            (Some((a, _)), Victim::Agent(_)) => format!(", agent again {a}ms after its start"),
            (Some((_, o)), Victim::Operator) => format!(", operator again {o}ms after it leads"),
            (Some((a, o)), Victim::Both(_)) => format!(", again {a}ms (agent) / {o}ms (operator) into recovery"),
        };
        format!("{:?} {:?} {from} -> {to}; victim {}; {moment}{rec}", self.action, self.slot, self.victim.label())
    }
}
