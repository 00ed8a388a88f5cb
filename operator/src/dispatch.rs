//! gRPC fan-out from the operator to the node agents.
//!
//! The agent of node N is dialled at N's InternalIP and the agent port, over mTLS with the
//! operator's client certificate. One lazily connected [`Channel`] is cached per node and
//! reused by every call; it is replaced when the node's IP changes and dropped after a
//! transport failure, so a wedged connection is never reused.
//!
//! Bounds, so that a slow or dead node never delays the others:
//! - every call is limited to `call_timeout` as a whole (connect, TLS handshake, answer), and
//!   the TCP connect and the TLS handshake to `connect_timeout` each;
//! - at most `max_concurrency` calls are in flight across the whole pool: one [`Semaphore`]
//!   shared by every fan-out and every direct call, so concurrent reconciles together cannot
//!   open more than that many calls. A call's timeout starts once it holds a permit;
//! - after a node is unreachable, calls to it fail fast with [`DispatchError::BackingOff`]
//!   without dialling until its backoff window passes (see [`backoff_window`]); any answer
//!   from the agent resets it.
//!
//! Every request names the node it is for, and every answer must come from that node
//! ([`crate::answers`]): a node whose InternalIP leads to another node's agent is
//! unreachable, never a place programs are sent to or removed from. With
//! [`PoolConfig::per_node_name`], the TLS handshake checks it too: the agent's certificate
//! must carry the node's own name. Answers are bounded (decoded size, List pages and
//! owners, Watch rate, uid format) before anything in them reaches the index.
//!
//! The agent is not told the deadline (no `grpc-timeout` header): an Apply it has started
//! runs to completion on the node, and the next Apply of the same revision is a no-op.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::error::Error as _;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use proto::v1;
use proto::v1::agent_client::AgentClient;
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, warn};

use crate::agent_tls::AgentTls;
use crate::answers;
use crate::bytecode::Payload;
use crate::history::Content;
pub use crate::reachable::{Failure, Unreached};
pub use crate::reports::Listed;
use crate::reports::{AgentChange, AgentList, ChangeKind};
use crate::status::{FailReason, NodeOutcome};
pub use crate::targets::NodeAddr;
use crds::error::chain;
use crds::node::NodeProgramStatus;

/// Largest message the operator sends: an Apply at the documented input limits.
pub const MAX_MESSAGE_BYTES: usize = crds::limits::MAX_APPLY_MESSAGE_BYTES;
/// Largest answer the operator decodes: a List page, a Watch event, an Apply's state.
pub const MAX_ANSWER_BYTES: usize = crds::limits::MAX_ANSWER_BYTES;
/// Default for [`PoolConfig::call_timeout`]: generous, since the verifier may take seconds.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_CONCURRENCY: usize = 64;
/// Default for [`PoolConfig::max_connections`]. Each open connection to an agent (mTLS,
/// HTTP/2, its buffers) costs the operator memory (docs/benchmarks.md, "The operator at
/// fleet scale").
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// Descriptors kept for everything that is not an agent connection: API server
/// connections and watches, the metrics and health listeners, logs, a rollback's read-back.
pub const RESERVED_FILES: u64 = 256;
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(120);
/// TCP and HTTP/2 keep-alive: a peer that vanished is noticed on an idle connection too.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A node's sender makes at most this many calls under one permit ([`AgentPool::apply`]):
/// 128 Applies in batches of 32, e.g. a hundred programs' first Applies.
const HELD_CALLS: usize = 4;
/// Default for [`PoolConfig::deciding_wait`].
pub const DEFAULT_DECIDING_WAIT: Duration = Duration::from_secs(5);
/// A fleet larger than the connection budget keeps this many times `max_concurrency`
/// connections open (see [`PoolConfig::kept_open`]).
const OVER_BUDGET_OPEN: usize = 4;
/// Backoff windows vary by ±20% so nodes that failed together do not retry together.
const JITTER: f64 = 0.2;

/// How the operator reaches agents.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// The agent port (`--agent-port`), the same on every node.
    pub port: u16,
    /// The operator's client identity, the CA that signs agents and the agents' server name.
    pub tls: AgentTls,
    /// Upper bound of one call, from the moment it may run (holds a concurrency permit).
    pub call_timeout: Duration,
    /// Upper bound of the TCP connect and of the TLS handshake, each.
    pub connect_timeout: Duration,
    /// Calls in flight at once across the pool (at least 1).
    pub max_concurrency: usize,
    /// Agent connections kept open (at least `max_concurrency`). Past it, the connections
    /// used least recently are closed and made again on their next call; and the fleet is
    /// too large for a Watch stream to every agent (see `agent_watch::watch_agents`), so
    /// fewer are kept ([`PoolConfig::kept_open`]).
    pub max_connections: usize,
    /// Backoff after the first failure; doubles with each further failure.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// When set, each agent's certificate must carry this name with `{node}` replaced by
    /// the node's name (e.g. `{node}.node.bpfleet.dev`) instead of the shared name in
    /// `tls`: the handshake proves the agent is that node's (`--agent-server-name`).
    pub per_node_name: Option<String>,
    /// How long a node's first Apply waits for the reconciles still deciding what to send
    /// ([`AgentPool::deciding`]) before it is sent anyway.
    pub deciding_wait: Duration,
}

impl PoolConfig {
    /// The defaults above, for `port` and `tls`.
    pub fn new(port: u16, tls: AgentTls) -> Self {
        Self {
            port,
            tls,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            per_node_name: None,
            deciding_wait: DEFAULT_DECIDING_WAIT,
        }
    }

    /// Connections kept open when the pool knows `fleet` nodes: the budget while the fleet
    /// fits it (each agent keeps a Watch stream open, `agent_watch::watch_agents`); past it,
    /// [`OVER_BUDGET_OPEN`] × `max_concurrency`. Fan-outs walk the whole fleet in turn, so a
    /// cache holding a part of it is mostly passed over before it is used again: at 5,000
    /// nodes, 1,000 connections instead of 256 saved 10 % of the dials and cost 63 MiB
    /// (docs/benchmarks.md, "What bought what (issue 26)").
    pub fn kept_open(&self, fleet: usize) -> usize {
        if fleet <= self.max_connections {
            self.max_connections
        } else {
            self.max_connections.min(self.max_concurrency.saturating_mul(OVER_BUDGET_OPEN)).max(1)
        }
    }
}

/// The connection budget that fits under the process's open-file limit `nofile`: the
/// one asked for, or fewer when the limit leaves less than that beside [`RESERVED_FILES`].
/// Without it, a fleet past the limit would fail calls with "too many open files" instead
/// of closing idle connections.
pub fn fit_connections(requested: usize, nofile: u64) -> usize {
    let room = nofile.saturating_sub(RESERVED_FILES).max(1);
    requested.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// One revision of one BpfProgram to run, as every node is sent it: built once, then
/// shared by the per-node requests (each names its own node). Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApplyOrder {
    request: Arc<v1::ApplyRequest>,
    /// Programs inside pods: the pods of each node (shared by every node's request).
    pods: Option<std::sync::Arc<BTreeMap<String, Vec<crate::pods::NodePod>>>>,
}

impl ApplyOrder {
    /// Revision `content.revision` of owner `uid` (BpfProgram `name`), sent in leadership
    /// `epoch` (see `leader`).
    pub fn new(uid: &str, name: &str, content: &Content, epoch: u64) -> Self {
        let request = v1::ApplyRequest {
            owner: Some(v1::Owner { uid: uid.to_string(), name: name.to_string() }),
            revision: content.revision.clone(),
            bytecode: Some(bytecode_to_wire(&content.payload)),
            programs: content.programs.iter().map(proto::program_to_wire).collect(),
            global_data: decode_globals(&content.global_data),
            epoch,
            expected_digest: content.payload.expected_digest(),
            maps: content
                .maps
                .iter()
                .map(|m| {
                    let mut wire = proto::map_policy_to_wire(m);
                    if let Some(uid) = m.from.as_ref().and_then(|f| content.map_owners.get(&f.program)) {
                        wire.from_owner_uid = uid.clone();
                    }
                    wire
                })
                .collect(),
            metrics: content.metrics.iter().map(proto::metric_to_wire).collect(),
            node_name: String::new(), // set per node by `request_for`
            pods: Vec::new(),         // per node, from `pods`
        };
        Self { request: Arc::new(request), pods: None }
    }

    /// An order of `request` as the wire carries it (tools and tests); each node's request
    /// names that node.
    pub fn from_wire(request: v1::ApplyRequest) -> Self {
        Self { request: Arc::new(request), pods: None }
    }

    /// The pods each node attaches the programs inside pods in.
    pub fn with_pods(mut self, pods: std::sync::Arc<BTreeMap<String, Vec<crate::pods::NodePod>>>) -> Self {
        self.pods = Some(pods);
        self
    }

    /// The request for `node`: named for it, with the pods it attaches in.
    fn request_for(&self, node: &str) -> v1::ApplyRequest {
        let mut req = (*self.request).clone();
        req.node_name = node.to_owned();
        req.pods = self.pods_for(node);
        req
    }

    fn pods_for(&self, node: &str) -> Vec<v1::Pod> {
        let Some(pods) = self.pods.as_ref().and_then(|p| p.get(node)) else { return Vec::new() };
        pods.iter()
            .map(|p| v1::Pod {
                uid: p.uid.clone(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                programs: p.programs.clone(),
                containers: p.containers.clone(),
            })
            .collect()
    }

    fn owner_uid(&self) -> &str {
        self.request.owner.as_ref().map_or("", |o| o.uid.as_str())
    }
}

fn sender_ended() -> DispatchError {
    DispatchError::Unreachable(Unreached::new(Failure::TransportError, "the Apply's sender ended"))
}

/// What a node runs of the owner, from an Apply's answer.
fn applied(answer: Answered) -> Result<NodeProgramStatus, DispatchError> {
    let resp = answer?;
    // `check_applied` refused an answer without the owner's state already.
    let state = resp
        .state
        .as_ref()
        .ok_or_else(|| DispatchError::Unreachable(Unreached::new(Failure::AnswerRefused, "Apply answered no state")))?;
    Ok(proto::state_to_status(state))
}

fn bytecode_to_wire(payload: &Payload) -> v1::apply_request::Bytecode {
    match payload {
        Payload::Elf(b) => v1::apply_request::Bytecode::Elf(b.clone()),
        Payload::Path(p, _) => v1::apply_request::Bytecode::Path(p.clone()),
    }
}

/// `globalData` values as bytes; a value that is not base64 is left out.
fn decode_globals(globals: &BTreeMap<String, String>) -> HashMap<String, bytes::Bytes> {
    use base64::Engine;
    globals
        .iter()
        .filter_map(|(k, v)| {
            base64::engine::general_purpose::STANDARD.decode(v.trim()).ok().map(|b| (k.clone(), b.into()))
        })
        .collect()
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum DispatchError {
    /// Could not connect / timed out / transport error, by kind (the BpfNode's
    /// `AgentReachable` reason). Triggers per-node backoff.
    #[error("agent unreachable: {0}")]
    Unreachable(Unreached),
    /// Node is backing off after recent failures; no call was made. Carries the failure
    /// that started the backoff.
    #[error("agent unreachable (retrying in {0:?}): {1}")]
    BackingOff(Duration, Unreached),
    /// The agent answered with an error: reason from metadata `bpfleet-reason`
    /// ([`proto::REASON_KEY`]), program from `bpfleet-program`, message from the status.
    #[error("{reason}: {message}")]
    Agent { code: tonic::Code, reason: FailReason, program: Option<String>, message: String },
}

impl DispatchError {
    /// How this error shows in the program's status.
    pub fn to_outcome(&self) -> NodeOutcome {
        match self {
            DispatchError::Agent { reason, program, message, .. } => {
                NodeOutcome::Failed { program: program.clone(), reason: reason.clone(), message: message.clone() }
            }
            DispatchError::Unreachable(_) | DispatchError::BackingOff(..) => {
                NodeOutcome::Unreachable { message: self.to_string() }
            }
        }
    }

    /// True when the node could not be reached (now or recently), as opposed to an answer.
    pub fn is_unreachable(&self) -> bool {
        !matches!(self, DispatchError::Agent { .. })
    }

    /// How the node was not reached (now, or by the call that started its backoff); `None`
    /// for an answer of the agent's.
    pub fn unreached(&self) -> Option<&Unreached> {
        match self {
            DispatchError::Unreachable(u) | DispatchError::BackingOff(_, u) => Some(u),
            DispatchError::Agent { .. } => None,
        }
    }
}

/// The connection pool and fan-out. Cheap to clone: clones share channels, backoff state
/// and the concurrency bound.
#[derive(Clone)]
pub struct AgentPool {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: PoolConfig,
    permits: Semaphore,
    state: Mutex<State>,
    /// Counts identity changes: open Watch streams end when it moves, so no connection
    /// made with a rotated identity outlives the rotation by more than one call.
    rotations: tokio::sync::watch::Sender<u64>,
    /// Reconciles deciding what to send ([`AgentPool::deciding`]), and the wake-up of the
    /// senders waiting for them when none is left.
    deciding: AtomicUsize,
    decided: tokio::sync::Notify,
}

/// Held by a reconcile from its start until its Applies are in the outboxes
/// ([`AgentPool::deciding`]).
#[must_use = "the senders wait while this is held"]
pub struct Deciding(AgentPool);

impl Drop for Deciding {
    fn drop(&mut self) {
        let inner = &self.0.inner;
        if inner.deciding.fetch_sub(1, Ordering::AcqRel) == 1 {
            inner.decided.notify_waiters();
        }
    }
}

struct State {
    nodes: HashMap<String, NodeState>,
    /// Nodes whose `channel` is set.
    open: usize,
    rng: XorShift,
    /// The client identity in use (and its TLS session cache); replaced by
    /// [`AgentPool::set_tls`] when the certificate files change.
    tls: AgentTls,
    /// The node most recently dialled: fan-outs start there (see [`AgentPool::fan_out`]).
    cursor: String,
    /// Connections made so far (each a TCP connect and a TLS handshake).
    dials: u64,
    /// Applies waiting to be sent, by node ([`AgentPool::apply`]).
    outboxes: HashMap<String, Outbox>,
    /// Apply and ApplyBatch calls made by [`AgentPool::apply`] (each carries one Apply or more).
    apply_calls: u64,
    /// The dialable fleet as `agent_watch::watch_agents` last counted it ([`AgentPool::set_fleet`]);
    /// until it has, the nodes dialled so far.
    fleet: Option<usize>,
}

impl State {
    /// `Err` while `node` backs off (at `now`) after failures.
    fn backoff(&self, node: &NodeAddr, now: Instant) -> Result<(), DispatchError> {
        match self.nodes.get(&node.name) {
            Some(s) if s.ip == node.ip => match s.retry_at {
                Some(at) if at > now => Err(DispatchError::BackingOff(
                    at - now,
                    s.last_error.clone().unwrap_or_else(|| Unreached::new(Failure::TransportError, "")),
                )),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Puts an Apply into `node`'s outbox; true when the outbox is new and needs its sender
    /// ([`AgentPool::send_waiting`]).
    fn enqueue(&mut self, node: &NodeAddr, job: Job) -> bool {
        match self.outboxes.get_mut(&node.name) {
            Some(outbox) => {
                // What waits goes where the node is now.
                outbox.ip = node.ip;
                outbox.waiting.push_back(job);
                false
            }
            None => {
                self.outboxes.insert(node.name.clone(), Outbox { ip: node.ip, waiting: VecDeque::from([job]) });
                true
            }
        }
    }
}

/// One node's Applies waiting for its sender: everything asked of the node while the last
/// call to it was in flight or waited for a permit goes in the next call.
struct Outbox {
    /// The node's address as the last Apply asked it (a Node whose address changes is
    /// sent what waits at its new one).
    ip: IpAddr,
    waiting: VecDeque<Job>,
}

type Answered = Result<v1::ApplyResponse, DispatchError>;

/// An Apply and who waits for its answer. Small: at start-up every program's Applies to
/// every node wait at once (half a million at 5,000 × 100).
enum Job {
    /// One caller of [`AgentPool::apply`].
    One(Box<(ApplyOrder, tokio::sync::oneshot::Sender<Answered>)>),
    /// A node's share of a fan-out of [`AgentPool::apply_all`]: the sender that gets a
    /// node's answer hands it to the fan-out's callback itself, so answers never queue for
    /// the fan-out's task (which shares its thread with every other reconcile while they
    /// decide).
    All(Arc<FanOut>),
}

/// One fan-out ([`AgentPool::apply_all`]), shared by the Applies of all its nodes.
struct FanOut {
    order: ApplyOrder,
    /// Called with the node, its result and how long the call that carried it took.
    each: Box<EachAnswer>,
    /// Dropped with the last node's share: the fan-out then ends. Nothing is sent on it.
    pending: tokio::sync::mpsc::UnboundedSender<std::convert::Infallible>,
}

type EachAnswer = dyn Fn(&NodeAddr, Result<NodeProgramStatus, DispatchError>, Duration) + Send + Sync;

impl Job {
    fn order(&self) -> &ApplyOrder {
        match self {
            Job::One(one) => &one.0,
            Job::All(fan_out) => &fan_out.order,
        }
    }

    /// Nobody waits any more (a cancelled reconcile, a lost leadership).
    fn is_closed(&self) -> bool {
        match self {
            Job::One(one) => one.1.is_closed(),
            Job::All(fan_out) => fan_out.pending.is_closed(),
        }
    }

    fn answer(self, node: &NodeAddr, answer: Answered, took: Duration) {
        match self {
            // The asker may have given up: nobody to tell.
            Job::One(one) => drop(one.1.send(answer)),
            // The Apply was carried out whether or not the fan-out still waits: its answer
            // is recorded all the same.
            Job::All(fan_out) => (fan_out.each)(node, applied(answer), took),
        }
    }
}

struct NodeState {
    ip: IpAddr,
    /// The identity for this node with its TLS session store: kept while the connection is
    /// closed, so the next one resumes (dropped with the rest on a new identity or address).
    tls: Option<AgentTls>,
    /// None until first use, after a transport failure and once closed for the budget.
    channel: Option<Channel>,
    /// The last call that took the channel.
    last_used: Instant,
    /// Consecutive transport failures.
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<Unreached>,
    /// The agent answered ApplyBatch UNIMPLEMENTED (an older agent): Applies one by one.
    no_batch: bool,
}

impl NodeState {
    fn new(ip: IpAddr) -> Self {
        Self {
            ip,
            tls: None,
            channel: None,
            last_used: Instant::now(),
            failures: 0,
            retry_at: None,
            last_error: None,
            no_batch: false,
        }
    }
}

impl std::fmt::Debug for AgentPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentPool")
            .field("port", &self.inner.cfg.port)
            .field("max_concurrency", &self.inner.cfg.max_concurrency)
            .finish_non_exhaustive()
    }
}

impl AgentPool {
    /// Builds no connection: channels are created lazily on each node's first call.
    pub fn new(mut cfg: PoolConfig) -> Self {
        cfg.max_concurrency = cfg.max_concurrency.clamp(1, Semaphore::MAX_PERMITS);
        cfg.max_connections = cfg.max_connections.max(cfg.max_concurrency);
        let tls = cfg.tls.clone();
        let permits = Semaphore::new(cfg.max_concurrency);
        let state = Mutex::new(State {
            nodes: HashMap::new(),
            open: 0,
            rng: XorShift::from_time(),
            tls,
            cursor: String::new(),
            dials: 0,
            outboxes: HashMap::new(),
            apply_calls: 0,
            fleet: None,
        });
        let rotations = tokio::sync::watch::Sender::new(0);
        let inner =
            Inner { cfg, permits, state, rotations, deciding: AtomicUsize::new(0), decided: Default::default() };
        Self { inner: Arc::new(inner) }
    }

    /// Use a new client identity and CA (rotated certificates) for every connection
    /// from now on. Cached channels are dropped, so the next call to each node makes a
    /// new connection with the new files; calls in flight finish on theirs (within
    /// `call_timeout`) and Watch streams end ([`AgentWatch::message`]) to be opened again.
    pub fn set_tls(&self, tls: AgentTls) {
        let mut state = self.lock();
        state.tls = tls;
        // A refused handshake may have been the old identity's fault: try again at once.
        for node in state.nodes.values_mut() {
            *node = NodeState::new(node.ip);
        }
        state.open = 0;
        drop(state);
        self.inner.rotations.send_modify(|n| *n += 1);
    }

    pub fn config(&self) -> &PoolConfig {
        &self.inner.cfg
    }

    /// Makes `node` run `order`'s revision (idempotent on the agent): what the node runs
    /// of the owner now, as its agent answered.
    ///
    /// The Apply waits in the node's outbox for the node's sender, which takes a permit and
    /// sends everything waiting then in one call (ApplyBatch; Apply for one alone or to an
    /// agent without ApplyBatch). Reconciles running together thus reach each node with
    /// one call and one connection, not one each (docs/architecture.md, "Applies in
    /// batches"); each Apply still gets its own answer or error.
    pub async fn apply(&self, node: &NodeAddr, order: &ApplyOrder) -> Result<NodeProgramStatus, DispatchError> {
        self.check_backoff(node)?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        if self.lock().enqueue(node, Job::One(Box::new((order.clone(), answer)))) {
            tokio::spawn(self.clone().send_waiting(node.name.clone()));
        }
        applied(answered.await.unwrap_or_else(|_| Err(sender_ended())))
    }

    /// [`AgentPool::apply`] of `order` on every node of `nodes` at once, `each` called with
    /// every node's result as it comes, with how long the call that carried it took (a
    /// node backing off at once, in no time), by the node's sender: an answer is recorded
    /// where it arrives, never queued for this future. All the Applies go
    /// into their nodes' outboxes together, and a fan-out holds no future per node: the
    /// fan-outs of every reconcile running meanwhile wait in the same outboxes, and each
    /// node's sender carries them in one call (docs/architecture.md, "Applies in
    /// batches"). The senders take their permits in the order their first Apply came, so
    /// nodes are called in `nodes`' order ([`AgentPool::in_walk_order`]).
    pub fn apply_all(
        &self,
        nodes: Vec<NodeAddr>,
        order: &ApplyOrder,
        each: impl Fn(&NodeAddr, Result<NodeProgramStatus, DispatchError>, Duration) + Send + Sync + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (pending, mut all_answered) = tokio::sync::mpsc::unbounded_channel();
        let fan_out = Arc::new(FanOut { order: order.clone(), each: Box::new(each), pending });
        let mut start = Vec::new();
        let mut backing_off = Vec::new();
        {
            // One hold of the lock for the whole fleet, not one per node.
            let mut state = self.lock();
            let now = Instant::now();
            for node in nodes {
                if let Err(e) = state.backoff(&node, now) {
                    backing_off.push((node, e));
                    continue;
                }
                if state.enqueue(&node, Job::All(fan_out.clone())) {
                    start.push(node.name);
                }
            }
        }
        // Every new outbox gets its sender before `each` runs (should it panic, no outbox
        // is left without one).
        for name in start {
            tokio::spawn(self.clone().send_waiting(name));
        }
        for (node, e) in backing_off {
            (fan_out.each)(&node, Err(e), Duration::ZERO);
        }
        drop(fan_out);
        // Ends when every Apply is answered: each holds the fan-out, and nothing is sent.
        async move {
            all_answered.recv().await;
        }
    }

    /// Marks a reconcile deciding what to send until the guard is dropped (once its Applies
    /// are in the outboxes, [`AgentPool::apply_all`]). In a fleet past the connection
    /// budget, a node's sender waits while any reconcile decides,
    /// [`PoolConfig::deciding_wait`] at most, before its first call: the
    /// programs still deciding then reach the node in the same call and over the same
    /// connection, not in one call and connection each. At start-up, when every program
    /// decides at once and the fleet is past the connection budget, that is a dial per
    /// node instead of one for each program that decided while the senders went round
    /// (docs/benchmarks.md, the operator at fleet scale). A reconcile deciding alone sends
    /// at once; within the budget connections stay open and nothing waits (fuller calls
    /// there cost memory and save no dial).
    pub fn deciding(&self) -> Deciding {
        self.inner.deciding.fetch_add(1, Ordering::AcqRel);
        Deciding(self.clone())
    }

    /// The fleet has more nodes than the connection budget: a node's connection is closed
    /// before the fan-outs come round to it again.
    fn past_budget(&self) -> bool {
        let state = self.lock();
        state.fleet.unwrap_or(state.nodes.len()) > self.inner.cfg.max_connections
    }

    /// Until no reconcile decides, [`PoolConfig::deciding_wait`] at most.
    async fn until_decided(&self) {
        let inner = &self.inner;
        let all_decided = async {
            loop {
                let decided = inner.decided.notified();
                if inner.deciding.load(Ordering::Acquire) == 0 {
                    return;
                }
                decided.await;
            }
        };
        let _ = tokio::time::timeout(inner.cfg.deciding_wait, all_decided).await;
    }

    /// [`AgentPool::apply`] of a request as the wire carries it, in a call of its own (the
    /// agent tests send requests of their own).
    pub async fn apply_wire(
        &self,
        node: &NodeAddr,
        mut req: v1::ApplyRequest,
    ) -> Result<v1::ApplyResponse, DispatchError> {
        req.node_name.clone_from(&node.name);
        self.check_backoff(node)?;
        let _permit = self.inner.permits.acquire().await.expect("the pool never closes its semaphore");
        self.apply_holding(node, req).await
    }

    /// One Apply call, with a permit held.
    async fn apply_holding(&self, node: &NodeAddr, req: v1::ApplyRequest) -> Result<v1::ApplyResponse, DispatchError> {
        let uid = req.owner.as_ref().map(|o| o.uid.clone()).unwrap_or_default();
        let timeout = self.inner.cfg.call_timeout;
        let resp = self.call_holding(node, timeout, move |mut c| async move { c.apply(req).await }).await?;
        self.refuse_answer(node, check_applied(&node.name, &uid, &resp, false))?;
        Ok(resp)
    }

    /// The sender of `name`'s outbox ([`AgentPool::apply`]): takes a permit and, holding
    /// it, sends what waits, [`HELD_CALLS`] calls at most, until nothing does. Applies that
    /// came while a call was in flight go next on the connection that call opened, not
    /// after every other node's sender has had its turn (by then a fleet past the
    /// connection budget has closed it); past [`HELD_CALLS`] the sender queues for a permit
    /// again, so a node asked without pause holds one permit for at most that many calls.
    async fn send_waiting(self, name: String) {
        // Should this task end any other way than by an empty outbox (a panic), the Applies
        // waiting are answered "sender ended" and the next one starts a new sender.
        struct Sending<'a> {
            pool: &'a AgentPool,
            name: &'a str,
            emptied: bool,
        }
        impl Drop for Sending<'_> {
            fn drop(&mut self) {
                if self.emptied {
                    return;
                }
                let Some(left) = self.pool.lock().outboxes.remove(self.name) else { return };
                let node = NodeAddr { name: self.name.to_owned(), ip: left.ip };
                // Those nobody waits for any more are dropped, as a batch leaves them out.
                for job in left.waiting.into_iter().filter(|j| !j.is_closed()) {
                    job.answer(&node, Err(sender_ended()), Duration::ZERO);
                }
            }
        }
        let mut sending = Sending { pool: &self, name: &name, emptied: false };
        if self.inner.deciding.load(Ordering::Acquire) > 0 && self.past_budget() {
            self.until_decided().await;
        }
        loop {
            let _permit = self.inner.permits.acquire().await.expect("the pool never closes its semaphore");
            for _ in 0..HELD_CALLS {
                let Some((ip, batch, requests)) = self.take_batch(&name) else {
                    sending.emptied = true;
                    return;
                };
                let node = NodeAddr { name: name.clone(), ip };
                let started = Instant::now();
                // Boxed: senders of thousands of nodes wait for a permit, each as small as it can.
                let answers = Box::pin(self.send_batch(&node, &batch, requests)).await;
                let took = started.elapsed();
                for (job, answer) in batch.into_iter().zip(answers) {
                    job.answer(&node, answer, took);
                }
            }
        }
    }

    /// What `name`'s next call carries: the address and the Applies waiting, at most
    /// [`crds::limits::MAX_APPLY_BATCH`] and [`MAX_MESSAGE_BYTES`] in all (one alone may be
    /// that large), with their requests. `None`, and the outbox gone, when nothing waits.
    fn take_batch(&self, name: &str) -> Option<(IpAddr, Vec<Job>, Vec<v1::ApplyRequest>)> {
        let mut batch: Vec<Job> = Vec::new();
        let ip = {
            let mut state = self.lock();
            let outbox = state.outboxes.get_mut(name)?;
            // Nobody waits for these any more (a cancelled reconcile, a lost leadership):
            // they are not sent.
            outbox.waiting.retain(|j| !j.is_closed());
            // A second Apply of an owner goes in the next call, after the first: the agent
            // carries out a batch's Applies at once, in no order.
            while batch.len() < crds::limits::MAX_APPLY_BATCH
                && outbox
                    .waiting
                    .front()
                    .is_some_and(|j| batch.iter().all(|b| b.order().owner_uid() != j.order().owner_uid()))
                && let Some(j) = outbox.waiting.pop_front()
            {
                batch.push(j);
            }
            if batch.is_empty() {
                state.outboxes.remove(name);
                return None;
            }
            outbox.ip
        };
        // The requests are built and measured out of the lock; what does not fit goes back
        // in front.
        let mut requests: Vec<v1::ApplyRequest> = batch.iter().map(|j| j.order().request_for(name)).collect();
        let mut size = 0;
        let fits = requests
            .iter()
            .position(|r| {
                size += r.encoded_len() + 16;
                size > MAX_MESSAGE_BYTES
            })
            .map_or(batch.len(), |i| i.max(1));
        if fits < batch.len() {
            requests.truncate(fits);
            let rest = batch.split_off(fits);
            let mut state = self.lock();
            // Only this sender removes the outbox.
            let outbox =
                state.outboxes.entry(name.to_owned()).or_insert_with(|| Outbox { ip, waiting: VecDeque::new() });
            for j in rest.into_iter().rev() {
                outbox.waiting.push_front(j);
            }
        }
        Some((ip, batch, requests))
    }

    /// One call for `batch` (all for `node`'s address; `requests` theirs, in order), with a
    /// permit held: each Apply's answer or error, in order.
    async fn send_batch(
        &self,
        node: &NodeAddr,
        batch: &[Job],
        mut requests: Vec<v1::ApplyRequest>,
    ) -> Vec<Result<v1::ApplyResponse, DispatchError>> {
        let counted = || self.lock().apply_calls += 1;
        let no_batch = || self.lock().nodes.get(&node.name).is_some_and(|n| n.ip == node.ip && n.no_batch);
        if batch.len() > 1 && !no_batch() {
            counted();
            match self.apply_batch(node, requests).await {
                Err(DispatchError::Agent { code: tonic::Code::Unimplemented, .. }) => {
                    debug!(node = %node.name, "the agent has no ApplyBatch: Applies one by one");
                    if let Some(n) = self.lock().nodes.get_mut(&node.name).filter(|n| n.ip == node.ip) {
                        n.no_batch = true;
                    }
                    requests = batch.iter().map(|w| w.order().request_for(&node.name)).collect();
                }
                Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
                Ok(results) => {
                    let mut answers = Vec::with_capacity(batch.len());
                    for (w, result) in batch.iter().zip(results) {
                        answers.push(match result {
                            BatchResult::Answered(a) => *a,
                            BatchResult::AskAlone => {
                                counted();
                                self.apply_holding(node, w.order().request_for(&node.name)).await
                            }
                        });
                    }
                    return answers;
                }
            }
        }
        let mut answers = Vec::with_capacity(requests.len());
        for req in requests {
            counted();
            answers.push(self.apply_holding(node, req).await);
        }
        answers
    }

    /// One ApplyBatch call, with a permit held. Its time bound grows with its length (the
    /// agent carries out [`crds::limits::APPLY_BATCH_PARALLEL`] at a time). An answer that
    /// breaks a rule for one Apply is refused whole, as a lying agent's.
    async fn apply_batch(
        &self,
        node: &NodeAddr,
        applies: Vec<v1::ApplyRequest>,
    ) -> Result<Vec<BatchResult>, DispatchError> {
        let uids: Vec<String> =
            applies.iter().map(|a| a.owner.as_ref().map(|o| o.uid.clone()).unwrap_or_default()).collect();
        let rounds = applies.len().div_ceil(crds::limits::APPLY_BATCH_PARALLEL);
        let timeout = self.inner.cfg.call_timeout.saturating_mul(u32::try_from(rounds).unwrap_or(u32::MAX));
        let req = v1::ApplyBatchRequest { applies };
        let resp = self.call_holding(node, timeout, move |mut c| async move { c.apply_batch(req).await }).await?;
        let check = answers::same_node(&node.name, &resp.node_name, true).and_then(|()| {
            if resp.results.len() != uids.len() {
                return Err(format!("an ApplyBatch of {} Applies answered {} results", uids.len(), resp.results.len()));
            }
            resp.results.iter().zip(&uids).try_for_each(|(r, uid)| match &r.result {
                Some(v1::apply_result::Result::Applied(a)) => check_applied(&node.name, uid, a, true),
                Some(_) => Ok(()),
                None => Err(format!("an ApplyBatch answered nothing for owner {uid:?}")),
            })
        });
        self.refuse_answer(node, check)?;
        let results = resp
            .results
            .into_iter()
            .map(|r| match r.result {
                Some(v1::apply_result::Result::Applied(a)) => BatchResult::Answered(Box::new(Ok(a))),
                Some(v1::apply_result::Result::Failed(f)) => {
                    let e = self.located(node, classify(&failure_status(f)));
                    // As a call answered so: another node's agent (WrongNode) is not reached.
                    if e.is_unreachable() {
                        self.record(node, Some(&e));
                    }
                    BatchResult::Answered(Box::new(Err(e)))
                }
                _ => BatchResult::AskAlone,
            })
            .collect();
        Ok(results)
    }

    /// Removes everything of owner `uid` (BpfProgram `name`) from `node`; `Ok(false)` when
    /// the agent had nothing of it. `epoch`: the sender's leadership epoch (see `leader`).
    pub async fn remove(&self, node: &NodeAddr, uid: &str, name: &str, epoch: u64) -> Result<bool, DispatchError> {
        self.remove_wire(node, v1::Owner { uid: uid.to_string(), name: name.to_string() }, epoch).await
    }

    /// [`AgentPool::remove`] of an owner as the wire carries it.
    pub async fn remove_wire(&self, node: &NodeAddr, owner: v1::Owner, epoch: u64) -> Result<bool, DispatchError> {
        let req = v1::RemoveRequest { owner: Some(owner), epoch, node_name: node.name.clone() };
        let resp = self.call(node, move |mut c| async move { c.remove(req).await }).await?;
        self.refuse_answer(node, answers::same_node(&node.name, &resp.node_name, false))?;
        Ok(resp.removed)
    }

    /// What the health gates read of owner `uid` on `node`: its programs' run counts and
    /// the map entries `reads` names; `lease` keeps the kernel's run counting on that long.
    pub async fn probe(
        &self,
        node: &NodeAddr,
        uid: &str,
        reads: &[(String, u64)],
        lease: Duration,
    ) -> Result<crate::reports::Probed, DispatchError> {
        let req = v1::ProbeRequest {
            owner_uid: uid.to_string(),
            reads: reads.iter().map(|(map, key)| v1::MapRead { map: map.clone(), key: *key }).collect(),
            stats_lease_seconds: lease.as_secs().min(600) as u32,
            node_name: node.name.clone(),
        };
        let resp = self.call(node, move |mut c| async move { c.probe(req).await }).await?;
        let check = answers::same_node(&node.name, &resp.node_name, false).and_then(|()| {
            if resp.revision.is_empty() || resp.values.len() == reads.len() {
                Ok(())
            } else {
                Err(format!("Probe answered {} map values for {} reads", resp.values.len(), reads.len()))
            }
        });
        self.refuse_answer(node, check)?;
        Ok(crate::reports::Probed {
            revision: resp.revision,
            programs: resp
                .programs
                .into_iter()
                .take(crds::limits::MAX_PROGRAMS)
                .map(|p| crate::reports::ProgramRuns { name: p.name, id: p.program_id, runs: p.run_count })
                .collect(),
            values: resp.values.into_iter().map(|v| crate::reports::ReadValue::from_wire(v.result)).collect(),
            stats_enabled: resp.stats_enabled,
        })
    }

    /// The entries of owner `uid`'s maps on `node` (one map when `map` is not empty),
    /// within the agent's bounds and `max_bytes`. Read-only; the answer may be larger than
    /// the other calls' (up to the bytes asked).
    pub async fn read_maps(
        &self,
        node: &NodeAddr,
        uid: &str,
        map: &str,
        max_entries: u32,
        max_bytes: u32,
        timeout_ms: u32,
    ) -> Result<v1::ReadMapsResponse, DispatchError> {
        let req = v1::ReadMapsRequest {
            owner_uid: uid.to_string(),
            map: map.to_string(),
            max_entries,
            max_bytes,
            timeout_ms,
            node_name: node.name.clone(),
        };
        // The agent counts each entry's framing in `max_bytes`: room for that and the BTF.
        let limit = (max_bytes as usize).saturating_add(MAX_ANSWER_BYTES);
        let resp =
            self.call(node, move |c| async move { c.max_decoding_message_size(limit).read_maps(req).await }).await?;
        let check = answers::same_node(&node.name, &resp.node_name, false);
        self.refuse_answer(node, check)?;
        Ok(resp)
    }

    /// Every owner the agent of `node` manages (all pages, in one answer).
    pub async fn list(&self, node: &NodeAddr) -> Result<AgentList, DispatchError> {
        // With no known digest the answer is always in full.
        match self.list_since(node, 0).await? {
            Listed::Full(list) | Listed::Unchanged(list) => Ok(list),
        }
    }

    /// What the agent of `node` manages, unless its digest is still `known` (the digest of
    /// a List read in full earlier; 0 for none): then one small answer, whatever the number
    /// of owners.
    pub async fn list_since(&self, node: &NodeAddr, known: u64) -> Result<Listed, DispatchError> {
        let mut all = v1::ListResponse::default();
        let mut token = String::new();
        let mut check = answers::ListCheck::default();
        loop {
            let first = token.is_empty();
            let req = v1::ListRequest {
                page_size: 0,
                page_token: token,
                known_digest: if first { known } else { 0 },
                node_name: node.name.clone(),
            };
            let page = self.call(node, |mut c| async move { c.list(req).await }).await?;
            self.refuse_answer(node, check.page(&node.name, &page))?;
            if first && page.unchanged && known != 0 && page.digest == known {
                return Ok(Listed::Unchanged(agent_list(page, false)));
            }
            all.agent_version = page.agent_version;
            all.kernel_release = page.kernel_release;
            all.owners.extend(page.owners);
            if page.next_page_token.is_empty() {
                return Ok(Listed::Full(agent_list(all, true)));
            }
            token = page.next_page_token;
        }
    }

    /// Opens the agent's change stream: the current state of every owner first, then
    /// each change as it happens. Only opening it counts against the concurrency bound
    /// and the call timeout; the stream stays open until the agent or the caller ends it.
    pub async fn watch(&self, node: &NodeAddr) -> Result<AgentWatch, DispatchError> {
        let rotated = self.inner.rotations.subscribe();
        let req = v1::WatchRequest { node_name: node.name.clone() };
        let stream = self.call(node, |mut c| async move { c.watch(req).await }).await?;
        Ok(AgentWatch {
            stream,
            check: answers::WatchCheck::new(Instant::now()),
            pool: self.clone(),
            node: node.clone(),
            rotated,
        })
    }

    /// An answer that breaks [`crate::answers`]' rules makes the node unreachable (with
    /// backoff, so a hostile agent is not asked again at once), and is logged.
    fn refuse_answer(&self, node: &NodeAddr, check: Result<(), String>) -> Result<(), DispatchError> {
        let Err(why) = check else { return Ok(()) };
        warn!(node = %node.name, ip = %node.ip, %why, "agent answer refused");
        let message = format!("{} at {}: {why}", node.name, self.address(node.ip));
        let e = DispatchError::Unreachable(Unreached::new(Failure::AnswerRefused, message));
        self.record(node, Some(&e));
        Err(e)
    }

    /// Runs `f(pool, node)` for every node, up to `max_concurrency` at once, and returns
    /// every node's result, in the order of `nodes`. The pool's calls inside `f` are bounded
    /// by the pool-wide `max_concurrency` and each by `call_timeout`, so a slow node holds
    /// at most one permit for at most one timeout while the others proceed. The futures run
    /// on the caller's task: dropping the returned future cancels them all (an Apply a
    /// node's sender has taken is still carried out; one still waiting is not sent).
    ///
    /// ```ignore
    /// let results = pool.fan_out(nodes, |pool, node| async move { pool.list(&node).await }).await;
    /// ```
    pub async fn fan_out<T, F, Fut>(&self, nodes: Vec<NodeAddr>, f: F) -> Vec<(NodeAddr, Result<T, DispatchError>)>
    where
        F: Fn(AgentPool, NodeAddr) -> Fut,
        Fut: Future<Output = Result<T, DispatchError>>,
    {
        use futures::StreamExt;
        // No more calls started than may run: a fan-out to 5,000 nodes holds 64 futures
        // (and their requests), not 5,000. Unordered, so one slow node does not keep the
        // next ones from starting; the results are put back in order at the end.
        let calls = nodes.into_iter().enumerate().map(|(i, node)| {
            let call = f(self.clone(), node.clone());
            async move { (i, node, call.await) }
        });
        let mut done: Vec<(usize, NodeAddr, Result<T, DispatchError>)> =
            futures::stream::iter(calls).buffer_unordered(self.inner.cfg.max_concurrency).collect().await;
        done.sort_unstable_by_key(|(i, ..)| *i);
        done.into_iter().map(|(_, node, r)| (node, r)).collect()
    }

    /// Runs `f(pool, node)` for every node, as [`AgentPool::fan_out`] but for calls that
    /// record their own results (Removes): `max_concurrency` at once.
    pub async fn fan_out_each<F, Fut>(&self, nodes: Vec<NodeAddr>, f: F)
    where
        F: Fn(AgentPool, NodeAddr) -> Fut,
        Fut: Future<Output = ()>,
    {
        use futures::StreamExt;
        let calls = nodes.into_iter().map(|node| f(self.clone(), node));
        futures::stream::iter(calls).buffer_unordered(self.inner.cfg.max_concurrency).for_each(|()| async {}).await;
    }

    /// Puts `nodes` in the order a fan-out to all of them should call them: by name,
    /// starting at the node dialled last and round to it. Fan-outs running at once
    /// (reconciles of many programs) then walk the nodes together, so one connection
    /// serves them all while it is open rather than each fan-out reopening what the
    /// others' walks closed when the fleet is larger than the connection budget
    /// (docs/benchmarks.md, the operator at fleet scale). For fan-outs whose order does not
    /// matter otherwise.
    pub fn in_walk_order(&self, nodes: &mut [NodeAddr]) {
        nodes.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let cursor = self.lock().cursor.clone();
        let start = nodes.partition_point(|n| n.name < cursor);
        nodes.rotate_left(start);
    }

    /// The dialable fleet's size, as the Watch streams' supervisor counts it: whether it fits
    /// the connection budget decides both whether agents get Watch streams and how many
    /// connections the pool keeps open ([`PoolConfig::kept_open`]), so the two agree.
    pub fn set_fleet(&self, nodes: usize) {
        self.lock().fleet = Some(nodes);
    }

    /// The dialable fleet as [`AgentPool::set_fleet`] last set it (`None` before).
    pub fn fleet(&self) -> Option<usize> {
        self.lock().fleet
    }

    /// Drops the cached channel and backoff state of `node` (Node deleted, or IP changed).
    pub fn forget(&self, node: &str) {
        let mut state = self.lock();
        if state.nodes.remove(node).is_some_and(|n| n.channel.is_some()) {
            state.open -= 1;
        }
    }

    /// Agent connections open now.
    pub fn open_connections(&self) -> usize {
        self.lock().open
    }

    /// Apply and ApplyBatch calls [`AgentPool::apply`] made since the pool was created (each
    /// carries one Apply or more), for benchmarks and tests.
    pub fn apply_calls(&self) -> u64 {
        self.lock().apply_calls
    }

    /// Agent connections made since the pool was created (each a TCP connect and a TLS
    /// handshake), for benchmarks and metrics.
    pub fn dials(&self) -> u64 {
        self.lock().dials
    }

    /// How long `node` still backs off, if it does: for status messages and requeue delays.
    pub fn backoff_of(&self, node: &str) -> Option<Duration> {
        let now = Instant::now();
        let state = self.lock();
        let retry_at = state.nodes.get(node)?.retry_at?;
        (retry_at > now).then(|| retry_at - now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent across a panic: every update is a single assignment.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn call<T, F, Fut>(&self, node: &NodeAddr, f: F) -> Result<T, DispatchError>
    where
        F: FnOnce(AgentClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        // Fail fast without queueing for a permit, and look again once one is held: another
        // call may have found the node unreachable meanwhile.
        self.check_backoff(node)?;
        let _permit = self.inner.permits.acquire().await.expect("the pool never closes its semaphore");
        self.call_holding(node, self.inner.cfg.call_timeout, f).await
    }

    /// A call within `timeout`, by a caller holding a permit.
    async fn call_holding<T, F, Fut>(&self, node: &NodeAddr, timeout: Duration, f: F) -> Result<T, DispatchError>
    where
        F: FnOnce(AgentClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let channel = self.channel(node)?;
        let client = AgentClient::new(channel)
            .max_decoding_message_size(MAX_ANSWER_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let result = match tokio::time::timeout(timeout, f(client)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(classify(&status)),
            Err(_elapsed) => Err(DispatchError::Unreachable(Unreached::new(
                Failure::Timeout,
                format!("no answer within {timeout:?}"),
            ))),
        };
        let result = result.map_err(|e| self.located(node, e));
        self.record(node, result.as_ref().err());
        result
    }

    /// An unreachable node's error, saying which node and address.
    fn located(&self, node: &NodeAddr, e: DispatchError) -> DispatchError {
        match e {
            DispatchError::Unreachable(u) => DispatchError::Unreachable(Unreached::new(
                u.kind,
                format!("{} at {}: {}", node.name, self.address(node.ip), u.message),
            )),
            other => other,
        }
    }

    fn address(&self, ip: IpAddr) -> String {
        // SocketAddr's Display brackets IPv6 addresses.
        std::net::SocketAddr::new(ip, self.inner.cfg.port).to_string()
    }

    fn check_backoff(&self, node: &NodeAddr) -> Result<(), DispatchError> {
        self.lock().backoff(node, Instant::now())
    }

    /// The node's channel, created (lazily connecting, so this never blocks) when missing or
    /// when the node's IP changed; a new IP also starts with a clean backoff.
    fn channel(&self, node: &NodeAddr) -> Result<Channel, DispatchError> {
        self.check_backoff(node)?;
        let mut state = self.lock();
        let entry = state.nodes.entry(node.name.clone()).or_insert_with(|| NodeState::new(node.ip));
        entry.last_used = Instant::now();
        let mut closed = false;
        if entry.ip != node.ip {
            debug!(node = %node.name, old = %entry.ip, new = %node.ip, "node address changed; new channel");
            closed = entry.channel.is_some();
            *entry = NodeState::new(node.ip);
        }
        if let Some(channel) = &entry.channel {
            return Ok(channel.clone());
        }
        if closed {
            state.open -= 1;
        }
        let cfg = &self.inner.cfg;
        let setup_failed = |e: String| {
            let message = format!("{}: cannot set up the connection: {e}", node.name);
            DispatchError::Unreachable(Unreached::new(Failure::TransportError, message))
        };
        let State { nodes, tls: identity, .. } = &mut *state;
        let entry = nodes.get_mut(&node.name).expect("inserted above");
        let tls = match &entry.tls {
            Some(tls) => tls.clone(),
            None => {
                let name = cfg.per_node_name.as_ref().map(|template| template.replace("{node}", &node.name));
                let tls = identity.for_node(name.as_deref()).map_err(|e| setup_failed(format!("{e:#}")))?;
                entry.tls = Some(tls.clone());
                tls
            }
        };
        // The connector makes the TLS connection itself (the identity's configuration, the
        // node's session store: crate::agent_tls), so tonic sees plain HTTP/2.
        let addr = std::net::SocketAddr::new(node.ip, cfg.port);
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| setup_failed(chain(&e)))?
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let channel =
            endpoint.connect_with_connector_lazy(tls.connector(addr, cfg.connect_timeout, KEEPALIVE_INTERVAL));
        entry.channel = Some(channel.clone());
        state.open += 1;
        state.cursor.clone_from(&node.name);
        state.dials += 1;
        let kept = cfg.kept_open(state.fleet.unwrap_or(state.nodes.len()));
        if state.open > kept {
            close_least_recent(&mut state, kept);
        }
        Ok(channel)
    }

    /// Success or an agent's answer resets the node's backoff; a transport failure extends it
    /// and drops the channel. Outcomes of calls to an address the node no longer has are ignored.
    fn record(&self, node: &NodeAddr, error: Option<&DispatchError>) {
        let cfg = &self.inner.cfg;
        let mut state = self.lock();
        let State { nodes, rng, open, .. } = &mut *state;
        let Some(entry) = nodes.get_mut(&node.name).filter(|e| e.ip == node.ip) else { return };
        match error {
            Some(DispatchError::Unreachable(unreached)) => {
                entry.failures = entry.failures.saturating_add(1);
                let window = backoff_window(cfg.backoff_base, cfg.backoff_max, entry.failures, rng.next_unit());
                debug!(node = %node.name, failures = entry.failures, ?window, %unreached, "agent unreachable; backing off");
                entry.retry_at = Some(Instant::now() + window);
                entry.last_error = Some(unreached.clone());
                if entry.channel.take().is_some() {
                    *open -= 1;
                }
            }
            Some(DispatchError::BackingOff(..)) => {}
            None | Some(DispatchError::Agent { .. }) => {
                entry.failures = 0;
                entry.retry_at = None;
                entry.last_error = None;
            }
        }
    }
}

/// An agent's change stream, checked event by event ([`answers::WatchCheck`]).
pub struct AgentWatch {
    stream: tonic::Streaming<v1::WatchEvent>,
    check: answers::WatchCheck,
    pool: AgentPool,
    node: NodeAddr,
    rotated: tokio::sync::watch::Receiver<u64>,
}

impl AgentWatch {
    /// The next event; `Ok(None)` when the agent ended the stream. An event that breaks
    /// the rules ends the stream with an error (and the node backs off), as does a rotation
    /// of the operator's identity (the stream is then opened again with the new one).
    pub async fn message(&mut self) -> Result<Option<AgentChange>, tonic::Status> {
        let next = tokio::select! {
            next = self.stream.message() => next?,
            _ = self.rotated.changed() => {
                return Err(tonic::Status::unavailable("the operator's client certificate changed; reconnecting"));
            }
        };
        let Some(ev) = next else { return Ok(None) };
        if let Err(why) = self.check.event(&self.node.name, &ev, Instant::now()) {
            let _ = self.pool.refuse_answer(&self.node, Err(why.clone()));
            return Err(tonic::Status::aborted(why));
        }
        let kind =
            if ev.kind == v1::watch_event::Kind::Removed as i32 { ChangeKind::Removed } else { ChangeKind::Updated };
        // The check refused an event without a state already.
        let Some(state) = &ev.state else { return Err(tonic::Status::aborted("an event without a state")) };
        Ok(Some(AgentChange { kind, program: proto::state_to_status(state), reason: ev.reason }))
    }
}

/// An Apply's answer must come from `node` and be about owner `uid`, with its state.
/// `required`: the answer must name its node (ApplyBatch has always carried it; Apply
/// answers of agents older than the field do not).
fn check_applied(node: &str, uid: &str, resp: &v1::ApplyResponse, required: bool) -> Result<(), String> {
    answers::same_node(node, &resp.node_name, required)?;
    match resp.state.as_ref().and_then(|s| s.owner.as_ref()).map(|o| o.uid.as_str()) {
        Some(a) if a == uid => Ok(()),
        other => Err(format!("Apply of owner {uid:?} answered for owner {other:?}")),
    }
}

/// One Apply of an ApplyBatch answered.
enum BatchResult {
    Answered(Box<Result<v1::ApplyResponse, DispatchError>>),
    /// Carried out, its answer left out for size: asked again alone.
    AskAlone,
}

/// The status Apply would have answered for an ApplyBatch's failure, to be read as one.
fn failure_status(f: v1::ApplyFailure) -> tonic::Status {
    let mut md = tonic::metadata::MetadataMap::new();
    if let Ok(v) = f.reason.parse()
        && !f.reason.is_empty()
    {
        md.insert(proto::REASON_KEY, v);
    }
    if let Ok(v) = f.program.parse()
        && !f.program.is_empty()
    {
        md.insert(proto::PROGRAM_KEY, v);
    }
    tonic::Status::with_metadata(tonic::Code::from(f.code), f.message, md)
}

/// A List read (all pages) as the index takes it. `full`: the digest is the operator's of
/// the owners read; otherwise the agent's, of the owners it did not send.
fn agent_list(list: v1::ListResponse, full: bool) -> AgentList {
    let digest = if full { proto::NodeDigest::of_states(&list.owners) } else { list.digest };
    AgentList {
        agent_version: list.agent_version,
        kernel_release: list.kernel_release,
        digest,
        programs: list.owners.iter().map(proto::state_to_status).collect(),
    }
}

/// Over the budget: close the connections used least recently, down to three quarters of
/// `max` at once, so the cost of finding them is paid once per `max / 4` new connections.
/// A connection closes once the calls that hold it end.
fn close_least_recent(state: &mut State, max: usize) {
    let keep = max - max / 4;
    let mut open: Vec<(Instant, &String)> =
        state.nodes.iter().filter(|(_, n)| n.channel.is_some()).map(|(k, n)| (n.last_used, k)).collect();
    if open.len() <= keep {
        return;
    }
    let close = open.len() - keep;
    open.select_nth_unstable_by_key(close - 1, |(t, _)| *t);
    let names: Vec<String> = open[..close].iter().map(|(_, k)| (*k).clone()).collect();
    for name in names {
        if let Some(n) = state.nodes.get_mut(&name) {
            n.channel = None;
        }
    }
    state.open = keep;
    debug!(closed = close, open = keep, "agent connections over the budget: closed the least recently used");
}

/// A status the agent sent is an agent error; one tonic made up from a local failure
/// (connect, TLS, reset, timeout: it then has a source error) means the agent was not
/// reached. `Unavailable` without a reason is treated as unreachable too: in gRPC it means
/// "transient, retry with backoff" (an agent shutting down, a proxy in between).
fn classify(status: &tonic::Status) -> DispatchError {
    let meta = |key: &str| status.metadata().get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let reason = meta(proto::REASON_KEY);
    if status.source().is_some() || (status.code() == tonic::Code::Unavailable && reason.is_none()) {
        return DispatchError::Unreachable(Unreached::new(transport_failure(status), describe(status)));
    }
    // The agent at this address is another node's: the node is not reached. An answer
    // over the decoding limit (tonic's OutOfRange, which agents never send) is refused too.
    if reason.as_deref() == Some(crds::reason::Reason::WrongNode.as_str())
        || (status.code() == tonic::Code::OutOfRange && reason.is_none())
    {
        let kind = if reason.is_some() { Failure::IdentityMismatch } else { Failure::AnswerRefused };
        return DispatchError::Unreachable(Unreached::new(kind, status.message()));
    }
    DispatchError::Agent {
        code: status.code(),
        reason: reason.map_or_else(|| FailReason::Other(format!("{:?}", status.code())), |r| r.as_str().into()),
        program: meta(proto::PROGRAM_KEY),
        message: status.message().to_owned(),
    }
}

/// What kind of failure a transport status is, from the errors behind it (their types and
/// io error kinds, never their words): a refused connection, a timeout (tonic's, or the
/// connect timeout's `TimedOut`), a TLS alert or certificate error (`IdentityMismatch` when
/// the certificate is valid but for another name).
fn transport_failure(status: &tonic::Status) -> Failure {
    let mut source = status.source();
    while let Some(e) = source {
        if let Some(kind) = failure_of(e) {
            return kind;
        }
        source = e.source();
    }
    Failure::TransportError
}

fn failure_of(e: &(dyn std::error::Error + 'static)) -> Option<Failure> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(match tls {
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            ) => Failure::IdentityMismatch,
            _ => Failure::TlsFailure,
        });
    }
    // The connector's TCP connect and TLS handshake timeouts are io errors of kind
    // `TimedOut` (below; `agent_tls`); this is tonic's deadline error, should a call carry one.
    if e.is::<tonic::TimeoutExpired>() {
        return Some(Failure::Timeout);
    }
    let io = e.downcast_ref::<std::io::Error>()?;
    // tokio-rustls reports TLS errors as io errors that hold them (not as their source).
    if let Some(kind) = io.get_ref().and_then(|inner| failure_of(inner as &(dyn std::error::Error + 'static))) {
        return Some(kind);
    }
    match io.kind() {
        std::io::ErrorKind::ConnectionRefused => Some(Failure::ConnectionRefused),
        std::io::ErrorKind::TimedOut => Some(Failure::Timeout),
        _ => None,
    }
}

/// A transport status in words: its message and the chain of errors behind it, without
/// repeating what an outer error already said.
fn describe(status: &tonic::Status) -> String {
    let mut out = status.message().to_owned();
    let mut source = status.source();
    while let Some(e) = source {
        let text = e.to_string();
        // tonic's transport wrapper says nothing its source does not say better.
        if text != "transport error" && !out.contains(&text) {
            out = if out.is_empty() { text } else { format!("{out}: {text}") };
        }
        source = e.source();
    }
    if out.is_empty() { format!("{:?}", status.code()) } else { out }
}

/// The wait after the `failures`-th consecutive failure (1-based):
/// `min(base * 2^(failures-1), max)`, scaled by a jitter factor in `[0.8, 1.2)` taken from
/// `unit` (a number in `[0, 1)`), and never beyond `max`.
pub fn backoff_window(base: Duration, max: Duration, failures: u32, unit: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(31);
    let window = base.saturating_mul(1u32 << exp).min(max);
    let factor = 1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0);
    window.mul_f64(factor).min(max)
}

/// xorshift64: enough randomness for jitter, without a dependency.
struct XorShift(u64);

impl XorShift {
    fn from_time() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        // Never zero: zero is xorshift's fixed point.
        Self(nanos ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `[0, 1)`.
    fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crds::reason::Reason;

    const MS: Duration = Duration::from_millis(1);

    fn refused(message: &str) -> Unreached {
        Unreached::new(Failure::ConnectionRefused, message)
    }

    #[test]
    fn backoff_doubles_from_base_up_to_max() {
        let (base, max) = (100 * MS, 1000 * MS);
        // unit 0.5 is the middle of the jitter range: factor 1.0.
        let windows: Vec<Duration> = (1..=6).map(|n| backoff_window(base, max, n, 0.5)).collect();
        assert_eq!(windows, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]);
        assert_eq!(backoff_window(base, max, 0, 0.5), 100 * MS, "0 failures counts as the first");
    }

    #[test]
    fn backoff_jitter_is_twenty_percent_and_capped() {
        let (base, max) = (100 * MS, 1000 * MS);
        assert_eq!(backoff_window(base, max, 1, 0.0), 80 * MS);
        assert!(backoff_window(base, max, 1, 0.999_999) > 119 * MS);
        assert!(backoff_window(base, max, 1, 0.999_999) < 120 * MS);
        assert_eq!(backoff_window(base, max, 3, 0.0), 320 * MS);
        // At the cap, jitter only shortens.
        assert_eq!(backoff_window(base, max, 10, 0.0), 800 * MS);
        assert_eq!(backoff_window(base, max, 10, 0.999), max);
        // Out-of-range units are clamped.
        assert_eq!(backoff_window(base, max, 1, -3.0), 80 * MS);
        assert_eq!(backoff_window(base, max, 1, 7.0), 120 * MS);
    }

    #[test]
    fn backoff_never_overflows() {
        let max = Duration::from_secs(300);
        assert_eq!(backoff_window(Duration::from_secs(1), max, u32::MAX, 0.5), max);
        assert_eq!(backoff_window(Duration::MAX, max, 40, 0.5), max);
        assert_eq!(backoff_window(Duration::ZERO, max, 5, 0.5), Duration::ZERO);
    }

    #[test]
    fn xorshift_units_are_in_range_and_vary() {
        let mut rng = XorShift::from_time();
        let units: Vec<f64> = (0..1000).map(|_| rng.next_unit()).collect();
        assert!(units.iter().all(|u| (0.0..1.0).contains(u)));
        let low = units.iter().filter(|u| **u < 0.5).count();
        assert!((350..650).contains(&low), "{low} of 1000 below 0.5");
        let mut zero = XorShift(1);
        assert_ne!(zero.next_u64(), 0);
    }

    fn pool(base: Duration) -> AgentPool {
        let mut cfg = PoolConfig::new(1, AgentTls::untrusted());
        cfg.backoff_base = base;
        cfg.backoff_max = base * 4;
        AgentPool::new(cfg)
    }

    fn node(ip: &str) -> NodeAddr {
        NodeAddr { name: "n1".into(), ip: ip.parse().unwrap() }
    }

    #[tokio::test]
    async fn failures_back_off_and_answers_reset() {
        let pool = pool(Duration::from_secs(10));
        let n = node("10.0.0.1");
        assert_eq!(pool.backoff_of("n1"), None);
        pool.channel(&n).unwrap();
        pool.record(&n, Some(&DispatchError::Unreachable(refused("refused"))));
        let left = pool.backoff_of("n1").expect("backing off");
        assert!(left > Duration::from_secs(7) && left <= Duration::from_secs(12), "{left:?}");
        match pool.check_backoff(&n) {
            Err(DispatchError::BackingOff(_, u)) => assert_eq!(u, refused("refused")),
            other => panic!("{other:?}"),
        }
        // An agent's answer means it is reachable.
        let agent_error = DispatchError::Agent {
            code: tonic::Code::InvalidArgument,
            reason: "ProgramNotFound".into(),
            program: None,
            message: "m".into(),
        };
        pool.record(&n, Some(&agent_error));
        assert_eq!(pool.backoff_of("n1"), None);
        pool.check_backoff(&n).unwrap();
    }

    #[tokio::test]
    async fn new_ip_or_forget_starts_clean() {
        let pool = pool(Duration::from_secs(10));
        let n = node("10.0.0.1");
        pool.channel(&n).unwrap();
        pool.record(&n, Some(&DispatchError::Unreachable(refused("x"))));
        assert!(pool.backoff_of("n1").is_some());
        // A stale outcome for another address is ignored; a call to the new address is allowed.
        let moved = node("10.0.0.2");
        pool.check_backoff(&moved).unwrap();
        pool.channel(&moved).unwrap();
        assert_eq!(pool.backoff_of("n1"), None);
        pool.record(&n, Some(&DispatchError::Unreachable(refused("late"))));
        assert_eq!(pool.backoff_of("n1"), None);
        pool.record(&moved, Some(&DispatchError::Unreachable(refused("y"))));
        assert!(pool.backoff_of("n1").is_some());
        pool.forget("n1");
        assert_eq!(pool.backoff_of("n1"), None);
    }

    #[tokio::test]
    async fn connections_past_the_budget_close_least_recent_first() {
        let mut cfg = PoolConfig::new(1, AgentTls::untrusted());
        // 2 × OVER_BUDGET_OPEN: a fleet past the budget keeps the whole budget too.
        cfg.max_concurrency = 2;
        cfg.max_connections = 8;
        let pool = AgentPool::new(cfg);
        let at = |i: u8| NodeAddr { name: format!("n{i}"), ip: format!("10.0.0.{i}").parse().unwrap() };
        for i in 0..8 {
            pool.channel(&at(i)).unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(pool.open_connections(), 8);
        // n0 used again: n1 is now the least recent.
        pool.channel(&at(0)).unwrap();
        pool.channel(&at(8)).unwrap();
        // Over the budget: closed down to 6, the least recent (n1, n2, n3) first.
        assert_eq!(pool.open_connections(), 6);
        let open: Vec<String> = {
            let state = pool.lock();
            let mut v: Vec<String> =
                state.nodes.iter().filter(|(_, n)| n.channel.is_some()).map(|(k, _)| k.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(open, ["n0", "n4", "n5", "n6", "n7", "n8"]);
        // Failures, forgetting and new identities keep the count true.
        pool.record(&at(4), Some(&DispatchError::Unreachable(refused("refused"))));
        pool.forget("n5");
        pool.forget("n1");
        assert_eq!(pool.open_connections(), 4);
        pool.set_tls(AgentTls::untrusted());
        assert_eq!(pool.open_connections(), 0);
    }

    #[tokio::test]
    async fn a_fleet_past_the_budget_keeps_fewer_connections_open() {
        let mut cfg = PoolConfig::new(1, AgentTls::untrusted());
        cfg.max_concurrency = 1;
        cfg.max_connections = 8;
        assert_eq!((cfg.kept_open(8), cfg.kept_open(9)), (8, OVER_BUDGET_OPEN));
        let pool = AgentPool::new(cfg);
        let at = |i: u8| NodeAddr { name: format!("n{i}"), ip: format!("10.0.0.{i}").parse().unwrap() };
        // A fleet of 8 fits: every connection stays open (each would carry a Watch stream).
        for i in 0..8 {
            pool.channel(&at(i)).unwrap();
        }
        assert_eq!(pool.open_connections(), 8);
        // A ninth node: the fleet no longer fits, and the pool keeps three quarters of 4.
        pool.channel(&at(8)).unwrap();
        assert_eq!(pool.open_connections(), 3);
        for i in 0..8 {
            pool.channel(&at(i)).unwrap();
            assert!(pool.open_connections() <= OVER_BUDGET_OPEN);
        }
        // Nodes gone: the fleet fits again, and the budget is the limit again.
        pool.forget("n8");
        for i in 0..8 {
            pool.channel(&at(i)).unwrap();
        }
        assert_eq!(pool.open_connections(), 8);
        // A ninth node the pool remembers, its agent unreachable: once the Watch supervisor
        // counts the fleet without it, that count decides, and every stream keeps its
        // connection.
        pool.channel(&at(9)).unwrap();
        pool.record(&at(9), Some(&DispatchError::Unreachable(refused("refused"))));
        pool.set_fleet(8);
        for i in 0..8 {
            pool.channel(&at(i)).unwrap();
        }
        assert_eq!(pool.open_connections(), 8);
        // The supervisor counts more than the budget: fewer again.
        pool.set_fleet(10);
        pool.channel(&at(10)).unwrap();
        assert_eq!(pool.open_connections(), 3);
    }

    #[test]
    fn connection_budget_fits_under_the_open_file_limit() {
        // A raised limit leaves the budget asked for.
        assert_eq!(fit_connections(1000, 1_048_576), 1000);
        assert_eq!(fit_connections(1000, 1000 + RESERVED_FILES), 1000);
        // A container left at 1024: what the reserve leaves.
        assert_eq!(fit_connections(1000, 1024), 1024 - RESERVED_FILES as usize);
        // Absurdly low limits still leave one connection.
        assert_eq!(fit_connections(1000, 100), 1);
        assert_eq!(fit_connections(50, u64::MAX), 50);
    }

    #[test]
    fn outcomes() {
        let e = DispatchError::Agent {
            code: tonic::Code::InvalidArgument,
            reason: "ProgramNotFound".into(),
            program: Some("p".into()),
            message: "no function p".into(),
        };
        assert_eq!(
            e.to_outcome(),
            NodeOutcome::Failed {
                program: Some("p".into()),
                reason: "ProgramNotFound".into(),
                message: "no function p".into()
            }
        );
        assert_eq!(e.to_string(), "ProgramNotFound: no function p");
        let unnamed = DispatchError::Agent {
            code: tonic::Code::Internal,
            reason: FailReason::Other("Internal".into()),
            program: None,
            message: "m".into(),
        };
        assert_eq!(unnamed.to_string(), "Internal: m");
        let e = DispatchError::BackingOff(Duration::from_secs(2), refused("n at 1.2.3.4:5: refused"));
        assert_eq!(
            e.to_outcome(),
            NodeOutcome::Unreachable { message: "agent unreachable (retrying in 2s): n at 1.2.3.4:5: refused".into() }
        );
    }

    #[test]
    fn statuses_are_classified() {
        let mut status = tonic::Status::invalid_argument("bad");
        status.metadata_mut().insert(proto::REASON_KEY, "ProgramNotFound".parse().unwrap());
        status.metadata_mut().insert(proto::PROGRAM_KEY, "f".parse().unwrap());
        match classify(&status) {
            DispatchError::Agent { code, reason, program, message } => {
                assert_eq!(
                    (code, reason, program.as_deref(), message.as_str()),
                    (tonic::Code::InvalidArgument, FailReason::Agent(Reason::ProgramNotFound), Some("f"), "bad")
                );
            }
            other => panic!("{other:?}"),
        }
        match classify(&tonic::Status::internal("boom")) {
            DispatchError::Agent { reason, .. } => assert_eq!(reason, FailReason::Other("Internal".into())),
            other => panic!("{other:?}"),
        }
        assert!(classify(&tonic::Status::unavailable("going away")).is_unreachable());
        let local = tonic::Status::from_error(Box::new(std::io::Error::other("connection reset")));
        let e = classify(&local);
        assert!(e.is_unreachable() && e.to_string().contains("connection reset"), "{e}");
        assert_eq!(e.unreached().map(|u| u.kind), Some(Failure::TransportError));
        let mut wrong = tonic::Status::failed_precondition("this agent runs on node-2");
        wrong.metadata_mut().insert(proto::REASON_KEY, Reason::WrongNode.as_str().parse().unwrap());
        assert_eq!(classify(&wrong).unreached().map(|u| u.kind), Some(Failure::IdentityMismatch));
    }

    /// The kinds behind a transport failure, as the errors tonic, hyper and tokio-rustls
    /// carry them (the real ones: tests/agents.rs).
    #[test]
    fn transport_failures_are_told_apart_by_their_errors() {
        use std::io::{Error, ErrorKind};
        let kind = |e: Error| transport_failure(&tonic::Status::from_error(Box::new(e)));
        assert_eq!(kind(Error::from(ErrorKind::ConnectionRefused)), Failure::ConnectionRefused);
        assert_eq!(kind(Error::new(ErrorKind::TimedOut, "connect timeout")), Failure::Timeout);
        let tls = |e: rustls::Error| kind(Error::new(ErrorKind::InvalidData, e));
        assert_eq!(
            tls(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)),
            Failure::TlsFailure
        );
        assert_eq!(
            tls(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)),
            Failure::IdentityMismatch
        );
        assert_eq!(tls(rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA)), Failure::TlsFailure);
        assert_eq!(kind(Error::from(ErrorKind::ConnectionReset)), Failure::TransportError);
        let timeout = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(transport_failure(&timeout), Failure::Timeout);
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        let pool = pool(MS);
        assert_eq!(pool.address("fd00::1".parse().unwrap()), "[fd00::1]:1");
        assert_eq!(pool.address("10.1.2.3".parse().unwrap()), "10.1.2.3:1");
    }
}
