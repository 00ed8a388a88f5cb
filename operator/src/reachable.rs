//! Whether the operator reaches a node's agent, as the BpfNode's `AgentReachable`
//! condition says it, and when the BpfNode's heartbeat is due. Pure: the callers
//! (`bpfnode_follow`) bring what the agent pods, the Node and the last call said.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use crds::node::AGENT_REACHABLE;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::agents::AgentState;

/// Why the operator does not reach a node's agent: the `reason` of `AgentReachable=False`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The Node has no InternalIP: there is nothing to dial.
    NoAddress,
    /// No agent pod on the node (the DaemonSet leaves it out, or has not created one).
    NoAgent,
    /// An agent pod is on the node but not Ready (starting, restarting, failing its probe).
    AgentNotReady,
    /// Nothing listens on the agent port at the node's address.
    ConnectionRefused,
    /// No connection, handshake or answer within the operator's timeouts.
    Timeout,
    /// The TLS handshake failed: the agent's certificate is not signed by the operator's
    /// CA, or the agent refused the operator's client certificate.
    TlsFailure,
    /// The agent's certificate is for another node, or the agent says it is another node's
    /// (`WrongNode`): the address leads elsewhere.
    IdentityMismatch,
    /// An answer broke the protocol (another node's name in it, its size, pages or owners):
    /// refused unread.
    AnswerRefused,
    /// Any other failure to reach the agent (a reset connection, an unavailable service).
    TransportError,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::NoAddress => "NoAddress",
            Failure::NoAgent => "NoAgent",
            Failure::AgentNotReady => "AgentNotReady",
            Failure::ConnectionRefused => "ConnectionRefused",
            Failure::Timeout => "Timeout",
            Failure::TlsFailure => "TlsFailure",
            Failure::IdentityMismatch => "IdentityMismatch",
            Failure::AnswerRefused => "AnswerRefused",
            Failure::TransportError => "TransportError",
        }
    }

    /// A call to the agent failed (as opposed to a node the operator does not dial).
    pub fn of_a_call(self) -> bool {
        !matches!(self, Failure::NoAddress | Failure::NoAgent | Failure::AgentNotReady)
    }
}

/// A call that did not reach an agent: what kind of failure, and in words (the node, its
/// address and what failed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreached {
    pub kind: Failure,
    pub message: String,
}

impl Unreached {
    pub fn new(kind: Failure, message: impl Into<String>) -> Self {
        Unreached { kind, message: message.into() }
    }
}

impl std::fmt::Display for Unreached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How the last call to a node's agent went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastCall<'a> {
    /// It answered (a List in full or "unchanged", or an error of its own: it was reached).
    Answered,
    Failed(&'a Unreached),
    /// The operator does not call it (see [`verdict`]: not dialable).
    NotCalled,
}

/// What `AgentReachable` says of one node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// `None`: reachable.
    pub failure: Option<Failure>,
    pub message: String,
}

impl Verdict {
    pub fn reachable(&self) -> bool {
        self.failure.is_none()
    }

    /// The condition's reason.
    pub fn reason(&self) -> &'static str {
        self.failure.map_or("AgentAnswered", Failure::as_str)
    }
}

/// `AgentReachable` from what is known of the node: its address and agent pod first (the
/// operator does not dial a node without either, whatever an older call said), then the
/// last call.
pub fn verdict(has_address: bool, agent: AgentState, last: LastCall<'_>) -> Verdict {
    let no = |kind: Failure, message: String| Verdict { failure: Some(kind), message };
    if !has_address {
        return no(Failure::NoAddress, "the Node has no InternalIP address to dial its agent at".into());
    }
    match agent {
        AgentState::Absent => {
            return no(Failure::NoAgent, "no agent pod runs on this node (the agent DaemonSet leaves it out)".into());
        }
        AgentState::Starting => return no(Failure::AgentNotReady, "the agent pod on this node is not Ready".into()),
        AgentState::Ready => {}
    }
    match last {
        LastCall::Answered => Verdict { failure: None, message: "the agent answers the operator".into() },
        LastCall::Failed(u) => no(u.kind, u.message.clone()),
        LastCall::NotCalled => no(Failure::TransportError, "the operator has not reached the agent yet".into()),
    }
}

/// The condition for `verdict`, keeping the `lastTransitionTime` of `previous_since` (when the
/// condition last turned) while the status stays what it was (`previous_reachable`).
pub fn condition(verdict: &Verdict, previous: Option<(bool, &Time)>, now: Timestamp) -> Condition {
    let last_transition_time = previous
        .filter(|(reachable, _)| *reachable == verdict.reachable())
        .map(|(_, since)| since.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: AGENT_REACHABLE.into(),
        status: if verdict.reachable() { "True" } else { "False" }.into(),
        reason: verdict.reason().into(),
        message: crds::sanitize::for_status(&verdict.message),
        observed_generation: None,
        last_transition_time,
    }
}

/// Whether the heartbeat written for `node` at `written` is due again at `now`: once it is
/// older than `every` plus this node's share of a spread (up to a quarter of `every`, from
/// a hash of the name), so heartbeats written together (at a leader's start) are not
/// written again together. `every` zero: never (heartbeats go only with other writes). A
/// heartbeat never written is due.
pub fn heartbeat_due(node: &str, written: Option<Timestamp>, every: Duration, now: Timestamp) -> bool {
    if every.is_zero() {
        return false;
    }
    let Some(written) = written else { return true };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node.hash(&mut h);
    let spread = every.mul_f64((h.finish() % 1024) as f64 / 4096.0);
    let wait = SignedDuration::try_from(every + spread).unwrap_or(SignedDuration::MAX);
    written.checked_add(wait).is_ok_and(|due| now >= due)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(kind: Failure) -> Unreached {
        Unreached::new(kind, format!("node-1 at 10.0.0.1:50051: {}", kind.as_str()))
    }

    #[test]
    fn the_condition_says_why_for_every_agent_state() {
        let refused = failed(Failure::ConnectionRefused);
        let tls = failed(Failure::TlsFailure);
        use AgentState::*;
        use LastCall::*;
        // (has address, agent pod, last call) -> (reachable, reason)
        let table: [(bool, AgentState, LastCall, bool, &str); 10] = [
            (true, Ready, Answered, true, "AgentAnswered"),
            (true, Ready, Failed(&refused), false, "ConnectionRefused"),
            (true, Ready, Failed(&tls), false, "TlsFailure"),
            (true, Ready, NotCalled, false, "TransportError"),
            (true, Starting, Answered, false, "AgentNotReady"),
            (true, Starting, Failed(&refused), false, "AgentNotReady"),
            (true, Absent, Answered, false, "NoAgent"),
            (true, Absent, NotCalled, false, "NoAgent"),
            (false, Ready, Answered, false, "NoAddress"),
            (false, Starting, Failed(&tls), false, "NoAddress"),
        ];
        for (address, agent, last, reachable, reason) in table {
            let v = verdict(address, agent, last);
            assert_eq!((v.reachable(), v.reason()), (reachable, reason), "{address} {agent:?} {last:?}");
            assert!(!v.message.is_empty());
        }
        assert_eq!(verdict(true, Ready, Failed(&refused)).message, refused.message, "the failure's words");
    }

    #[test]
    fn every_failure_kind_is_its_own_reason() {
        let all = [
            Failure::NoAddress,
            Failure::NoAgent,
            Failure::AgentNotReady,
            Failure::ConnectionRefused,
            Failure::Timeout,
            Failure::TlsFailure,
            Failure::IdentityMismatch,
            Failure::AnswerRefused,
            Failure::TransportError,
        ];
        let reasons: std::collections::BTreeSet<&str> = all.iter().map(|f| f.as_str()).collect();
        assert_eq!(reasons.len(), all.len());
        for f in all {
            assert_eq!(verdict(true, AgentState::Ready, LastCall::Failed(&failed(f))).reason(), f.as_str());
        }
    }

    #[test]
    fn the_transition_time_moves_only_when_the_status_does() {
        let t = |s: i64| Timestamp::from_second(1_000_000 + s).unwrap();
        let up = verdict(true, AgentState::Ready, LastCall::Answered);
        let refused = failed(Failure::ConnectionRefused);
        let down = verdict(true, AgentState::Ready, LastCall::Failed(&refused));
        let c1 = condition(&down, None, t(0));
        assert_eq!((c1.type_.as_str(), c1.status.as_str()), ("AgentReachable", "False"));
        assert_eq!(c1.last_transition_time, Time(t(0)));
        let timeout = verdict(true, AgentState::Ready, LastCall::Failed(&failed(Failure::Timeout)));
        let c2 = condition(&timeout, Some((false, &c1.last_transition_time)), t(30));
        assert_eq!((c2.reason.as_str(), &c2.last_transition_time), ("Timeout", &Time(t(0))), "still False");
        let c3 = condition(&up, Some((false, &c2.last_transition_time)), t(60));
        assert_eq!((c3.status.as_str(), &c3.last_transition_time), ("True", &Time(t(60))));
    }

    #[test]
    fn a_hostile_message_reaches_the_condition_without_control_characters() {
        let u = Unreached::new(Failure::AnswerRefused, "node-1: \x1b[2Jrefused\u{202E}");
        let c = condition(&verdict(true, AgentState::Ready, LastCall::Failed(&u)), None, Timestamp::now());
        assert!(!c.message.chars().any(char::is_control) && !c.message.contains('\u{202E}'), "{:?}", c.message);
    }

    #[test]
    fn heartbeats_are_due_after_the_interval_and_spread_over_a_quarter_of_it() {
        let every = Duration::from_secs(600);
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let at = |s: i64| Timestamp::from_second(1_000_000 + s).unwrap();
        assert!(heartbeat_due("n", None, every, t0), "never written");
        assert!(!heartbeat_due("n", None, Duration::ZERO, t0), "0: only with other writes");
        assert!(!heartbeat_due("n", Some(t0), Duration::ZERO, at(100_000)));
        let nodes: Vec<String> = (0..200).map(|i| format!("node-{i}")).collect();
        let due_at = |n: &str| (600..=750).find(|s| heartbeat_due(n, Some(t0), every, at(*s))).unwrap();
        for n in &nodes {
            assert!(!heartbeat_due(n, Some(t0), every, at(599)), "{n}: before the interval");
            assert!(heartbeat_due(n, Some(t0), every, at(750)), "{n}: after interval + a quarter");
        }
        let spread: std::collections::BTreeSet<i64> = nodes.iter().map(|n| due_at(n)).collect();
        assert!(spread.len() > 50, "200 nodes written together are due at {} distinct seconds", spread.len());
    }
}
