//! The BpfProgram controller: one `reconcile` that reads top to bottom. A finalizer
//! wraps it: `apply` makes the selected nodes run the current revision and writes the
//! status; `cleanup` removes the program from every node before the object goes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crds::{BpfProgram, BpfProgramStatus, FIELD_MANAGER};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::bytecode::{self, BytecodeCache};
use crate::dispatch::{AgentPool, ApplyOrder, Deciding, DispatchError};
use crate::drift::Desired;
use crate::history::{Content, History};
use crate::image::ImageSource;
use crate::index::NodeIndex;
use crate::metrics::Metrics;
use crate::plan::Action as NodeAction;
use crate::rollout::{self, Ranked, Settings};
use crate::sends;
use crate::status::{self, NodeOutcome, SpecProblem, StatusInput};
use crate::targets::{NodeAddr, NodeInfo, target_nodes};

/// Removes the program from every node before the BpfProgram is deleted.
pub const FINALIZER: &str = "bpfleet.dev/cleanup";

/// How soon a program that is not Ready everywhere is looked at again.
const RETRY: Duration = Duration::from_secs(10);
/// How soon a Ready program is looked at again (drift repair also triggers it).
const STEADY: Duration = Duration::from_secs(300);

/// What every reconcile of one leadership term shares: the API client and the agent
/// pool (the edges), the caches fed by watches (Nodes, agent pods, the [`NodeIndex`] of
/// what agents run), what the cluster wants of each program (`desired`, for drift
/// repair), and the parts tests replace with disabled ones (`history`, `images`,
/// `agents`, `recorder`).
pub struct Context {
    pub client: Client,
    pub pool: AgentPool,
    pub nodes: Store<Node>,
    pub index: Arc<NodeIndex>,
    pub recorder: Option<crate::events::Recorder>,
    pub metrics: Arc<Metrics>,
    /// uid -> what the cluster wants, for drift detection.
    pub desired: RwLock<BTreeMap<String, Arc<Desired>>>,
    /// This leadership term's epoch, carried by every Apply and Remove (see `leader`).
    pub epoch: u64,
    /// ConfigMap bytecode by resourceVersion.
    pub bytecode: BytecodeCache,
    /// What was last written to each BpfNode.
    pub bpfnodes: crate::bpfnode::Written,
    /// Revision history (ControllerRevisions); [`History::disabled`] until the caller
    /// sets one, so only the spec's revision can be sent.
    pub history: History,
    /// OCI images (`bytecode.image`); [`ImageSource::disabled`] (image bytecode refused)
    /// until the caller sets one.
    pub images: ImageSource,
    /// Bounds what reconciles hold at once: each takes one slot per node of the fleet
    /// (at most all of them) while it decides and dispatches, so the larger the fleet,
    /// the fewer reconciles run together (docs/architecture.md).
    pub fleet_slots: tokio::sync::Semaphore,
    /// One copy of each set of target nodes, shared by every program that selects it.
    target_sets: std::sync::Mutex<crate::intern::Interner<BTreeSet<String>>>,
    /// The Nodes as reconciles read them, shared by every reconcile that reads the same
    /// cached Nodes (see [`Context::node_infos`]).
    node_infos: std::sync::Mutex<SharedNodes>,
    /// Which nodes run a Ready agent (see `agents`).
    pub agents: Arc<crate::agents::Agents>,
    /// How long a Ready agent may go unanswered before its node counts as failed.
    pub unreachable_grace: Duration,
    /// Nodes whose BpfNode must be brought up to date (see `bpfnode_follow::follow_bpfnodes`).
    pub stale_bpfnodes: Arc<crate::bpfnode::Stale>,
    /// Health gate windows of the rollouts in progress.
    pub gates: crate::gates::GateBook,
    /// The Prometheus servers a health gate may query (`--prometheus-address`).
    pub prometheus: crate::prometheus::Prometheus,
    /// The pods of the namespaces programs inside pods name (`None`: no pod is seen, as in
    /// tests without an API server's pods).
    pub pod_watches: Option<Arc<crate::pod_watch::PodWatches>>,
}

/// Default of `--agent-unreachable-grace-seconds`.
pub const DEFAULT_UNREACHABLE_GRACE: Duration = Duration::from_secs(60);

/// Node slots of [`Context::fleet_slots`]: 128 reconciles of 5,000 nodes each, 64 of
/// 10,000 ([`FEW_RECONCILES`] while the fleet fits the agent connection budget, see
/// [`fleet_slots`]). A reconcile waiting for its Applies holds one entry in each target's
/// outbox, not its per-node maps nor the Nodes (dropped before the sends) nor the answers
/// (recorded by the senders as they come): every program of 5,000 × 100 waiting at once
/// measured within the memory target (docs/benchmarks.md, the operator at fleet scale).
pub const FLEET_SLOTS: usize = 640_000;

impl Context {
    /// `targets`, as the copy every program selecting the same nodes shares (thousands of
    /// programs over thousands of nodes would otherwise hold a set each).
    pub fn shared_targets(&self, targets: BTreeSet<String>) -> Arc<BTreeSet<String>> {
        let mut sets = self.target_sets.lock().unwrap_or_else(|e| e.into_inner());
        sets.get(&targets, |t| Arc::new(t.clone()))
    }

    /// Every cached Node as a reconcile reads it. Reads of the same cached Nodes (each the
    /// same object, as the reflector left it) share one list, built once: a reconcile reads
    /// them when it resolves its spec, in each pass and for each send. In name order, as
    /// every per-node map of a pass is ([`crate::ascending`]).
    pub fn node_infos(&self) -> Arc<Vec<NodeInfo>> {
        let state = self.nodes.state();
        let mut shared = self.node_infos.lock().unwrap_or_else(|e| e.into_inner());
        let same = shared.read.len() == state.len() && shared.read.iter().zip(&state).all(|(a, b)| Arc::ptr_eq(a, b));
        if !same {
            let mut infos: Vec<NodeInfo> = state.iter().filter_map(NodeInfo::from_shared).collect();
            infos.sort_unstable_by(|a, b| a.name.cmp(&b.name));
            shared.infos = Arc::new(infos);
            shared.read = state;
        }
        shared.infos.clone()
    }

    /// How many node sets [`Context::shared_targets`] holds (those no program holds go at
    /// the next sweep).
    pub fn shared_target_sets(&self) -> usize {
        self.target_sets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// A context for one leadership term; no recorder, no ConfigMap watch (every
    /// resolve reads the ConfigMap) until the caller sets them.
    pub fn new(client: Client, pool: AgentPool, nodes: Store<Node>, metrics: Arc<Metrics>, epoch: u64) -> Self {
        Self {
            client,
            pool,
            nodes,
            index: Arc::new(NodeIndex::default()),
            recorder: None,
            metrics,
            desired: Default::default(),
            epoch,
            bytecode: BytecodeCache::default(),
            bpfnodes: Default::default(),
            history: History::disabled(),
            images: ImageSource::disabled(),
            fleet_slots: tokio::sync::Semaphore::new(FLEET_SLOTS),
            target_sets: std::sync::Mutex::new(crate::intern::Interner::new(64)),
            node_infos: Default::default(),
            agents: Arc::new(crate::agents::Agents::untracked()),
            unreachable_grace: DEFAULT_UNREACHABLE_GRACE,
            stale_bpfnodes: Default::default(),
            gates: Default::default(),
            prometheus: crate::prometheus::Prometheus::new(Vec::new()),
            pod_watches: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("deletion waits for {count} node(s): {nodes}")]
    DeletionBlocked { count: usize, nodes: String },
    #[error("the object has no {0}")]
    MissingMetadata(&'static str),
}

impl Error {
    /// A low-cardinality label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.metric_label(),
                _ => "finalizer",
            },
            Error::DeletionBlocked { .. } => "deletion_blocked",
            Error::MissingMetadata(_) => "metadata",
        }
    }
}

/// Reconcile one BpfProgram under the finalizer: `apply` (resolve the spec, roll the
/// revision out as far as it may go, write the status) or, once it is being deleted,
/// `cleanup` (remove it from every node first).
pub async fn reconcile(obj: Arc<BpfProgram>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let api: Api<BpfProgram> = Api::all(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Event::Apply(p) => apply(p, &ctx).await,
            Event::Cleanup(p) => cleanup(p, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(started.elapsed());
    result
}

pub fn error_policy(obj: Arc<BpfProgram>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(program = %obj.name_any(), error = %err, "reconcile failed");
    ctx.metrics.reconcile_error(err.metric_label());
    Action::requeue(Duration::from_secs(15))
}

fn uid_of(p: &BpfProgram) -> Result<String, Error> {
    p.uid().ok_or(Error::MissingMetadata("metadata.uid"))
}

/// Reconciles in flight while the fleet fits the agent connection budget, and at most of
/// those that hold more than their sends while they wait ([`Weight::Holding`]).
pub const FEW_RECONCILES: usize = 16;

/// What a reconcile holds while it waits, for [`fleet_slots`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Weight {
    /// Its Applies in the outboxes, while it waits for their answers.
    Sending,
    /// Its per-node maps too, across awaits: a pass with health gates (probes, a
    /// Prometheus query) or a cleanup (every BpfProgram listed, a fan-out's results).
    Holding,
}

/// This reconcile's share of [`Context::fleet_slots`]. One per node of the fleet, once
/// the fleet is larger than the agent connection budget and the reconcile holds only its
/// sends while it waits: programs waiting together reach each node in fewer calls, and
/// past the budget each call to a node whose connection was closed costs a handshake, so
/// every program of 5,000 × 100 waiting at once made the fleet Ready in half the time of
/// 16 (docs/benchmarks.md, "What bought what"). Otherwise a sixteenth of them all (or one
/// per node, if more): within the budget every agent's connection stays open, so waiting
/// together saves calls but no handshakes and costs memory (50 × 1,000: 8 MiB more peak
/// at 128 than at 16), and a reconcile holding its maps across awaits holds megabytes.
/// The fleet is counted as the pool counts it ([`AgentPool::fleet`]: the dialable nodes),
/// every Node before the pool has counted.
async fn fleet_slots(ctx: &Context, weight: Weight) -> tokio::sync::SemaphorePermit<'_> {
    let nodes = ctx.nodes.state().len();
    let fleet = ctx.pool.fleet().unwrap_or(nodes);
    let slots = slots_for(weight, nodes, fleet > ctx.pool.config().max_connections);
    ctx.fleet_slots.acquire_many(slots).await.expect("the fleet slots are never closed")
}

/// [`fleet_slots`]' arithmetic: the share of a reconcile over `nodes` Nodes.
fn slots_for(weight: Weight, nodes: usize, over_budget: bool) -> u32 {
    let slots = match weight {
        Weight::Sending if over_budget => nodes,
        _ => nodes.max(FLEET_SLOTS / FEW_RECONCILES),
    };
    slots.clamp(1, FLEET_SLOTS) as u32
}

/// The cached Nodes last read, and what they read as ([`Context::node_infos`]).
#[derive(Default)]
struct SharedNodes {
    read: Vec<Arc<Node>>,
    infos: Arc<Vec<NodeInfo>>,
}

async fn apply(p: Arc<BpfProgram>, ctx: &Context) -> Result<Action, Error> {
    let uid = uid_of(&p)?;
    let name = p.name_any();
    let gated = p.spec.rollout.as_ref().is_some_and(|r| r.health.is_some());
    let _slots = fleet_slots(ctx, if gated { Weight::Holding } else { Weight::Sending }).await;
    // Until its Applies are in the outboxes, the nodes' senders wait for it (a gated pass
    // probes nodes and may wait for Prometheus: it holds none up).
    let mut deciding = (!gated).then(|| ctx.pool.deciding());
    let mut spec = resolve_spec(ctx, &p, &ctx.node_infos()).await;
    // The set every program selecting the same nodes shares, not a copy of its own.
    let targets = ctx.shared_targets(std::mem::take(&mut spec.targets));
    let revision = spec.content.as_ref().map(|c| c.revision.clone());
    let stable = p.status.as_ref().and_then(|s| s.rollout.as_ref()).and_then(|r| r.stable_revision.clone());
    let desired =
        Desired { name: name.clone(), revision: revision.clone(), stable: stable.clone(), targets: targets.clone() };
    ctx.desired.write().unwrap_or_else(|e| e.into_inner()).insert(uid.clone(), Arc::new(desired));

    let now = k8s_openapi::jiff::Timestamp::now();
    let mut rollout = (None, None);
    let mut gated = None;
    let mut gate_failed = BTreeMap::new();
    let mut pod_counts = None;
    if let Some(content) = &spec.content {
        record_history(ctx, &p, content, spec.image.as_ref(), stable.as_deref()).await;
        let reach = Reach { pods: spec.pods.as_ref() };
        let done = roll_out(ctx, &p, &uid, content, &targets, reach, deciding.take()).await;
        rollout = (Some(done.status), done.wake);
        gated = done.gated;
        gate_failed = done.gate_failed;
    }
    drop(deciding);
    let (outcomes, retries, grace_ends) = match &revision {
        Some(r) => {
            let snap = ctx.index.snapshot(&uid, r);
            let agent = |n: &str| ctx.agents.state_since(n);
            let (mut outcomes, grace_ends) = sends::node_outcomes(&snap, &targets, agent, ctx.unreachable_grace, now);
            // A node that runs the revision but failed a health gate is a failed node.
            for (node, why) in gate_failed {
                if outcomes.get(&node) == Some(&NodeOutcome::Ready) {
                    let reason = status::FailReason::Agent(crds::reason::Reason::HealthGateFailed);
                    outcomes.insert(node, NodeOutcome::Failed { program: None, reason, message: why });
                }
            }
            if let Some(status) = rollout.0.as_mut() {
                rollout::count_nodes(status, r, &targets, &snap.observed, &outcomes, gated.as_ref());
            }
            pod_counts = spec.pods.as_ref().map(|pods| {
                let wanted: usize = targets.iter().filter_map(|n| pods.get(n)).map(Vec::len).sum();
                let on = |n: &String| snap.observed.get(n).is_some_and(|o| o.revision == *r);
                let tallies: Vec<_> = targets.iter().filter(|n| on(n)).filter_map(|n| snap.pods.get(n)).collect();
                let failed: u32 = tallies.iter().map(|t| t.failed).sum();
                let ready: u32 = tallies.iter().map(|t| t.total - t.failed).sum();
                (wanted as i32, ready as i32, failed as i32)
            });
            (outcomes, sends::retries(&snap, &targets), grace_ends)
        }
        None => (targets.iter().map(|n| (n.clone(), NodeOutcome::Pending)).collect(), BTreeMap::new(), None),
    };
    let mut status = status::compute(&StatusInput {
        generation: p.metadata.generation,
        revision: revision.as_deref(),
        targets: &targets,
        outcomes: &outcomes,
        spec_problem: spec.problem.as_ref(),
        retries: &retries,
        previous: p.status.as_ref(),
        rollout: rollout.0.as_ref(),
        now: Time(k8s_openapi::jiff::Timestamp::now()),
    });
    if spec.image.is_some() || p.spec.bytecode.image.is_none() {
        status.image = spec.image;
    }
    if let Some((target, ready, failed)) = pod_counts {
        (status.target_pods, status.ready_pods, status.failed_pods) = (target, ready, failed);
    }
    ctx.metrics.program_counts(&name, &status);
    let after = requeue_after(&status, spec.problem.is_some(), &retries, now);
    // A pause, a step deadline or an agent's grace period ends on its own: look again then.
    let wake = [rollout.1, grace_ends].into_iter().flatten().min();
    // Not held while the writes wait: every program of a fleet whose Applies went out
    // together finishes at once (at 5,000 nodes, a map of every node's outcome each).
    drop((outcomes, retries, gated));
    write_bpfnodes_before_ready(ctx, &p, &status, &targets).await;
    write_status(ctx, &p, &status).await?;
    Ok(Action::requeue(wake.map_or(after, |w| after.min(w + Duration::from_millis(100)))))
}

/// What the spec asks, resolved: its target nodes, and the content to send or the
/// problem that makes the spec unusable on every node (found before any dispatch).
struct ResolvedSpec {
    targets: BTreeSet<String>,
    problem: Option<SpecProblem>,
    content: Option<Content>,
    /// What an image source resolved to.
    image: Option<crds::program::ImageStatus>,
    /// Programs inside pods: the pods each target node attaches in.
    pods: Option<PodMap>,
}

async fn resolve_spec(ctx: &Context, p: &BpfProgram, nodes: &[NodeInfo]) -> ResolvedSpec {
    let invalid =
        |e: &dyn std::fmt::Display| SpecProblem { reason: crds::reason::Reason::InvalidSpec, message: e.to_string() };
    let (mut targets, mut problem) = match target_nodes(&p.spec.node_selector, nodes) {
        Ok(t) => (t, crds::validate::validate_spec(&p.spec).err().map(|e| invalid(&e))),
        Err(e) => (BTreeSet::new(), Some(invalid(&e))),
    };
    let pods = match pods_of(ctx, &p.spec, &targets) {
        Ok(pods) => pods,
        Err(e) => {
            problem = problem.or(Some(invalid(&e)));
            None
        }
    };
    // A program all of whose functions attach inside pods runs on the nodes their pods run
    // on (a pod there is what makes a node a target), as a DaemonSet's pods follow nodes.
    if let Some(pods) = &pods
        && crate::pods::pod_programs(&p.spec).len() == p.spec.programs.len()
    {
        targets.retain(|n| pods.contains_key(n));
    }
    if problem.is_none()
        && let Some(g) = p.spec.rollout.as_ref().and_then(|r| r.health.as_ref()).and_then(|h| h.prometheus.as_ref())
        && let Err(why) = ctx.prometheus.check_allowed(&g.address)
    {
        problem = Some(invalid(&why));
    }
    let mut image = None;
    let payload = match (problem.is_some(), &p.spec.bytecode.image) {
        (true, _) => None,
        (false, Some(_)) => match ctx.images.resolve(p, nodes, &targets).await {
            Ok(r) => {
                image = Some(r.status);
                Some(r.payload)
            }
            Err(e) => {
                problem = Some(e);
                None
            }
        },
        (false, None) => {
            bytecode::resolve_program(&ctx.client, &ctx.bytecode, p).await.map_err(|e| problem = Some(e)).ok()
        }
    };
    let mut content = payload.map(|pl| {
        let rev = pl.revision(&p.spec).to_string();
        Content::of_spec(&p.spec, pl, rev)
    });
    if let Some(c) = &mut content {
        match crate::shared_maps::owners(&ctx.client, p).await {
            Ok(owners) => c.map_owners = owners,
            Err(why) => {
                problem = Some(invalid(&why));
                content = None;
            }
        }
    }
    ResolvedSpec { targets, problem, content, image, pods }
}

/// For a spec with programs inside pods: the pods each target node attaches in, from the
/// pod watches (which this starts for the spec's namespaces).
fn pods_of(ctx: &Context, spec: &crds::BpfProgramSpec, targets: &BTreeSet<String>) -> Result<Option<PodMap>, String> {
    let namespaces = crate::pods::namespaces(spec);
    if namespaces.is_empty() {
        return Ok(None);
    }
    let Some(watches) = &ctx.pod_watches else { return Ok(Some(Arc::default())) };
    watches.ensure(&namespaces);
    if let Some((ns, why)) = namespaces.iter().find_map(|ns| watches.error(ns).map(|e| (ns, e))) {
        return Err(format!(
            "cannot read the pods of namespace {ns}: {why} (a cluster admin allows it with the chart value \
             podTargets.namespaces or podTargets.allNamespaces)"
        ));
    }
    let running: Vec<crate::pods::PodInfo> = namespaces.iter().flat_map(|ns| watches.running(ns)).collect();
    crate::pods::by_node(spec, &running, targets).map(|m| Some(Arc::new(m))).map_err(|e| e.to_string())
}

/// Keep the revision in the history. Best effort: a history that cannot be written must
/// not stop the rollout of what the spec asks (a rollback to this revision would then
/// need its source again).
async fn record_history(
    ctx: &Context,
    p: &BpfProgram,
    content: &Content,
    image: Option<&crds::program::ImageStatus>,
    stable: Option<&str>,
) {
    // An image is recorded pinned to the digest it resolved to.
    let mut source = p.spec.bytecode.clone();
    if let (Some(img), Some(st)) = (source.image.as_mut(), image) {
        img.digest = Some(st.digest.clone());
    }
    if let Err(e) = ctx.history.record(p, content, &source, stable).await {
        tracing::warn!(program = %p.name_any(), revision = %content.revision, error = %e, "cannot record the revision history");
    }
}

/// Whoever waits for Ready reads pin paths from the BpfNodes next: on a small set of
/// nodes they are written first, not a second later by `bpfnode_follow::follow_bpfnodes`.
async fn write_bpfnodes_before_ready(
    ctx: &Context,
    p: &BpfProgram,
    status: &BpfProgramStatus,
    targets: &BTreeSet<String>,
) {
    if becomes_ready(p.status.as_ref(), status)
        && let Some(nodes) = ctx.stale_bpfnodes.take_among(targets, BPFNODES_BEFORE_READY)
        && !nodes.is_empty()
    {
        crate::bpfnode_follow::refresh_bpfnodes(ctx, &nodes, None).await;
    }
}

/// Nodes whose BpfNode a reconcile writes itself before it reports Ready (beyond that,
/// the follower writes them within a second or two).
const BPFNODES_BEFORE_READY: usize = 16;

/// Ready now, and not Ready at this revision before.
fn becomes_ready(before: Option<&BpfProgramStatus>, after: &BpfProgramStatus) -> bool {
    let ready = |s: &BpfProgramStatus| s.conditions.iter().any(|c| c.type_ == status::READY && c.status == "True");
    ready(after) && !before.is_some_and(|b| ready(b) && b.revision == after.revision)
}

/// When to look at a program again: soon while nodes are pending, at the next retry of
/// a failed node (backoff), rarely once it is settled.
fn requeue_after(
    status: &BpfProgramStatus,
    spec_problem: bool,
    retries: &BTreeMap<String, (u32, Time)>,
    now: k8s_openapi::jiff::Timestamp,
) -> Duration {
    // Nodes waiting for their agent are looked at again when it turns Ready (or their
    // grace period ends): they keep nothing polling.
    let settled = status.ready_nodes + status.waiting_nodes;
    if spec_problem || settled == status.target_nodes {
        return STEADY;
    }
    let pending = status.target_nodes - settled - status.failed_nodes;
    let next_retry = retries
        .values()
        .filter_map(|(_, t)| t.0.duration_since(now).try_into().ok())
        .min()
        .map(|d: Duration| d + Duration::from_millis(100));
    match (pending > 0, next_retry) {
        (true, Some(d)) => d.min(RETRY),
        (true, None) => RETRY,
        (false, Some(d)) => d.min(STEADY),
        (false, None) => RETRY,
    }
}

/// Longest one reconcile keeps switching nodes before it lets others run (it comes
/// back at once).
const MAX_ROLLOUT_PASS: Duration = Duration::from_secs(60);

/// Node label whose values a progressive rollout spreads its early nodes across.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Move the rollout on as far as it can go now: decide, send the nodes that may switch
/// their revision, wait for their answers, decide again, until nothing is left to send
/// (a step waits for a pause, a health gate or a measurement, a failure stopped it, or it
/// is complete). Also carries out a `bpfleet.dev/rollout-action`.
async fn roll_out(
    ctx: &Context,
    p: &BpfProgram,
    uid: &str,
    content: &Content,
    targets: &BTreeSet<String>,
    reach: Reach<'_>,
    mut deciding: Option<Deciding>,
) -> RolledOut {
    let settings = Settings::resolve(p.spec.rollout.as_ref(), targets.len());
    let rev = content.revision.as_str();
    let health = p.spec.rollout.as_ref().and_then(|r| r.health.as_ref());
    let programs: Vec<String> = p.spec.programs.iter().map(|x| x.name.clone()).collect();
    let mut previous = p.status.as_ref().and_then(|s| s.rollout.clone());
    let mut action = take_action(ctx, p).await;
    if action == Some(crds::rollout::Action::Retry) {
        ctx.index.forget_failures(uid);
        ctx.gates.retry(uid);
    }
    let mut measurement = None;
    let started = Instant::now();
    // What the last pass sent, as a fingerprint: a pass that would send the same again ends.
    let mut last: Option<u64> = None;
    loop {
        // What to send; everything else of the pass (the rollout order, the index
        // snapshot, every node's outcome, the gates) is dropped before the sends, for which
        // the reconcile waits longest (at 5,000 nodes those are megabytes a reconcile).
        let (groups, sent) = {
            let nodes = ctx.node_infos();
            let order = {
                let mut targeted = crate::ascending::AscendingSet::new(targets.iter());
                let ranked: Vec<Ranked<'_>> = nodes
                    .iter()
                    .filter(|n| targeted.contains(n.name.as_str()))
                    .map(|n| Ranked { name: &n.name, zone: n.labels.get(ZONE_LABEL).map(String::as_str) })
                    .collect();
                rollout::order(uid, &ranked)
            };
            let snap = ctx.index.snapshot(uid, rev);
            let now = k8s_openapi::jiff::Timestamp::now();
            let agent = |n: &str| ctx.agents.state_since(n);
            let (outcomes, _) = sends::node_outcomes(&snap, targets, agent, ctx.unreachable_grace, now);
            // Gates hold a revision until it is Complete; a revert to the stable revision (whose
            // nodes already proved it) is not gated. A Degraded one goes on gating its failed
            // nodes (each retried), the others counted as passed, also after a restart.
            let (is_update, phase) = match previous.as_ref() {
                Some(r) => (r.update_revision.as_deref() == Some(rev), Some(r.phase)),
                None => (false, None),
            };
            let revert = previous.as_ref().is_some_and(|r| r.stable_revision.as_deref() == Some(rev)) && !is_update;
            let settled = revert || (is_update && phase == Some(crds::rollout::Phase::Complete));
            let passed_before: BTreeSet<String> = match (is_update, phase) {
                // (Only when status lists every failed node: it keeps 16.)
                (true, Some(crds::rollout::Phase::Degraded))
                    if p.status.as_ref().is_some_and(|s| s.failures.len() as i32 >= s.failed_nodes) =>
                {
                    let failed: BTreeSet<&str> =
                        p.status.iter().flat_map(|s| &s.failures).map(|f| f.node.as_str()).collect();
                    targets.iter().filter(|n| !failed.contains(n.as_str())).cloned().collect()
                }
                _ => BTreeSet::new(),
            };
            let gated = match health.filter(|h| !settled && (h.min_ready_seconds > 0 || h.probes())) {
                Some(h) => {
                    let nodes_here =
                        GateNodes { targets, snap: &snap, outcomes: &outcomes, passed_before: &passed_before };
                    Some(gate(ctx, uid, rev, h, &programs, nodes_here, &nodes).await)
                }
                None => {
                    ctx.gates.forget(uid);
                    None
                }
            };
            let pod_sets = reach.pods.map(|pods| crate::plan::PodSets {
                wanted: pods
                    .iter()
                    .map(|(n, list)| (n.clone(), crate::index::pod_digest(list.iter().map(|p| p.uid.as_str()))))
                    .collect(),
                attached: snap.pods.iter().map(|(n, t)| (n.clone(), t.attached)).collect(),
            });
            let round = sends::Round {
                revision: rev,
                targets,
                order: &order,
                settings: &settings,
                previous: previous.as_ref(),
                outcomes: &outcomes,
                gates: gated.as_ref(),
                health,
                measurement: measurement.take(),
                action: action.take(),
                pods: pod_sets.as_ref(),
                now,
            };
            let (decision, actions) = sends::next_step(&snap, &round, |n| ctx.agents.is_ready(n));
            previous = Some(decision.status.clone());
            let wake = [decision.wake, gated.as_ref().and_then(|g| g.wake)].into_iter().flatten().min();
            if decision.measure
                && let Some(g) = health.and_then(|h| h.prometheus.as_ref())
            {
                measurement = Some(ctx.prometheus.query(&g.address, &g.query).await);
                continue;
            }
            let out = |status| RolledOut {
                status,
                wake,
                gated: gated.as_ref().map(|g| g.passed.clone()),
                gate_failed: gated.as_ref().map(|g| g.failed.clone()).unwrap_or_default(),
            };
            let sent = fingerprint(&actions);
            if actions.is_empty() || last == Some(sent) {
                return out(decision.status);
            }
            if started.elapsed() > MAX_ROLLOUT_PASS {
                return RolledOut { wake: Some(Duration::ZERO), ..out(decision.status) };
            }
            tracing::info!(program = %p.name_any(), revision = %rev, nodes = actions.len(), phase = ?decision.status.phase, "dispatching");
            (sends::by_revision(actions, rev), sent)
        };
        // The spec's revision first: its Applies are in the outboxes before the senders stop
        // waiting for this reconcile (an earlier revision is read from history first).
        let (current, earlier): (Vec<_>, Vec<_>) = groups.into_iter().partition(|(r, _)| r == rev);
        for (r, group) in current.into_iter().chain(earlier) {
            if r == rev {
                dispatch(ctx, p, uid, content, group, reach, deciding.take()).await;
            } else {
                // (No sender waits for the history read.)
                drop(deciding.take());
                send_earlier(ctx, p, uid, &r, group, targets, reach).await;
            }
        }
        last = Some(sent);
    }
}

/// A fingerprint of a pass's actions, to tell whether the next pass would send the same.
fn fingerprint(actions: &BTreeMap<String, NodeAction>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    actions.hash(&mut h);
    h.finish()
}

/// Where one pass of [`roll_out`] left the rollout.
struct RolledOut {
    status: crds::rollout::RolloutStatus,
    /// Look again after this long (a pause, a deadline, a gate window, a measurement).
    wake: Option<Duration>,
    /// With health gates: the nodes that passed them, and those that failed one (why).
    gated: Option<BTreeSet<String>>,
    gate_failed: BTreeMap<String, String>,
}

/// The action the `bpfleet.dev/rollout-action` annotation asks for, taken exactly once:
/// the annotation is read from the API server (the cache may not show its removal by an
/// earlier pass yet) and removed, guarded by the resourceVersion it was read at, before the
/// action is carried out. A status write that fails after that loses the action (it is
/// asked again); an action is never carried out twice. An unknown value is removed with a
/// Warning Event saying which actions exist.
async fn take_action(ctx: &Context, p: &BpfProgram) -> Option<crds::rollout::Action> {
    p.annotations().get(crds::rollout::ACTION_ANNOTATION)?;
    let name = p.name_any();
    let api: Api<BpfProgram> = Api::all(ctx.client.clone());
    let fresh = match api.get(&name).await {
        Ok(f) => f,
        Err(e) => {
            tracing::info!(program = %name, error = %e, "cannot read the program to take its rollout action");
            return None;
        }
    };
    let value = fresh.annotations().get(crds::rollout::ACTION_ANNOTATION)?.clone();
    let patch = json!({"metadata": {
        "resourceVersion": fresh.resource_version(),
        "annotations": {crds::rollout::ACTION_ANNOTATION: null},
    }});
    if let Err(e) = api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        tracing::info!(program = %name, error = %e, "cannot take the rollout action annotation; next time");
        return None;
    }
    let action = crds::rollout::Action::parse(value.trim());
    if action.is_none() {
        let note = format!(
            "{}={value:?} is no action: use resume, promote, promote-full, abort or retry; it was removed",
            crds::rollout::ACTION_ANNOTATION
        );
        publish(ctx, p, Transition::new(EventType::Warning, "UnknownRolloutAction", note)).await;
    }
    action
}

/// The nodes a gate pass looks at.
struct GateNodes<'a> {
    targets: &'a BTreeSet<String>,
    snap: &'a crate::index::Snapshot,
    outcomes: &'a BTreeMap<String, NodeOutcome>,
    /// Nodes that count as passed when first seen (a Degraded rollout's healthy nodes).
    passed_before: &'a BTreeSet<String>,
}

/// The health gates of the nodes that run `rev` healthy with their agent here: judged,
/// the due ones read (one `Probe` each), and judged again with what they answered.
async fn gate(
    ctx: &Context,
    uid: &str,
    rev: &str,
    health: &crds::health::HealthSpec,
    programs: &[String],
    at: GateNodes<'_>,
    nodes: &[NodeInfo],
) -> crate::gates::Gated {
    let here = |n: &String| {
        !matches!(at.outcomes.get(n), Some(NodeOutcome::WaitingForAgent { .. } | NodeOutcome::Unreachable { .. }))
    };
    let running: BTreeSet<String> = at
        .targets
        .iter()
        .filter(|n| at.snap.observed.get(*n).is_some_and(|o| o.revision == rev && o.health == crds::Health::Healthy))
        .filter(|n| here(n))
        .cloned()
        .collect();
    let now = k8s_openapi::jiff::Timestamp::now();
    let scope = crate::gates::Scope { uid, revision: rev, spec: health, programs };
    let gated = ctx.gates.judge(scope, &running, at.passed_before, now);
    if gated.due.is_empty() {
        return gated;
    }
    let due: BTreeMap<String, NodeAction> = gated.due.iter().map(|n| (n.clone(), NodeAction::Keep)).collect();
    let addrs = sends::addresses(&due, nodes).other;
    let reads = crate::gates::reads(health);
    let lease = crate::gates::GateBook::lease(health);
    let results = ctx
        .pool
        .fan_out(addrs, |pool, node| {
            let reads = &reads;
            async move { pool.probe(&node, uid, reads, lease).await }
        })
        .await;
    let readings = results
        .into_iter()
        .map(|(n, r)| {
            let r = r.map_err(|e| match e.is_unreachable() {
                true => crate::gates::ReadError::Unreachable(e.to_string()),
                false => crate::gates::ReadError::Refused(e.to_string()),
            });
            (n.name, r)
        })
        .collect();
    let now = k8s_openapi::jiff::Timestamp::now();
    ctx.gates.observe(scope, readings, now);
    ctx.gates.judge(scope, &running, at.passed_before, now)
}

/// (Programs inside pods) the pods each node attaches in. The Nodes themselves are read
/// where a pass or a send needs them ([`Context::node_infos`]), not held while the
/// reconcile waits for its Applies: in a live cluster Nodes change every second at
/// thousands of nodes, so each reconcile would otherwise hold a list of its own.
#[derive(Clone, Copy)]
struct Reach<'a> {
    pods: Option<&'a PodMap>,
}

/// Per node, the pods it attaches the programs inside pods in.
type PodMap = Arc<BTreeMap<String, Vec<crate::pods::NodePod>>>;

/// Send `group` revision `r`, an earlier one than the spec's, as history keeps it.
async fn send_earlier(
    ctx: &Context,
    p: &BpfProgram,
    uid: &str,
    r: &str,
    group: BTreeMap<String, NodeAction>,
    targets: &BTreeSet<String>,
    reach: Reach<'_>,
) {
    let arch =
        crate::image::target_arch(crate::image::archs(&ctx.node_infos(), targets)).unwrap_or_else(|_| "amd64".into());
    match ctx.history.content(p, r, &ctx.images, &arch).await {
        Ok(old) => dispatch(ctx, p, uid, &old, group, reach, None).await,
        Err(why) => {
            tracing::warn!(program = %p.name_any(), revision = %r, nodes = ?group.keys().collect::<Vec<_>>(), %why, "cannot send an earlier revision");
        }
    }
}

/// Carry out per-node actions for one revision concurrently (bounded by the pool) and
/// record results.
async fn dispatch(
    ctx: &Context,
    p: &BpfProgram,
    uid: &str,
    content: &Content,
    actions: BTreeMap<String, NodeAction>,
    reach: Reach<'_>,
    deciding: Option<Deciding>,
) {
    let revision = content.revision.as_str();
    let name = p.name_any();
    let mut order = ApplyOrder::new(uid, &name, content, ctx.epoch);
    if let Some(pods) = reach.pods {
        order = order.with_pods(pods.clone());
    }
    let sends::Addresses { apply: mut applies, other: mut removes, no_address } =
        sends::addresses(&actions, &ctx.node_infos());
    drop(actions);
    for node in no_address {
        let why = "the Node has no InternalIP address to reach its agent at".to_string();
        let outcome = NodeOutcome::Unreachable { message: why };
        ctx.index.record_failure(&node, uid, revision, outcome, k8s_openapi::jiff::Timestamp::now());
    }
    ctx.pool.in_walk_order(&mut applies);
    ctx.pool.in_walk_order(&mut removes);
    let epoch = ctx.epoch;
    // Every node asked gets its BpfNode refreshed; `took`: the call's time.
    let (stale, metrics) = (ctx.stale_bpfnodes.clone(), ctx.metrics.clone());
    let done = move |node: &str, took: Duration| {
        stale.mark(node);
        metrics.dispatched(took);
    };
    // Each answer goes into the index as it arrives, by the node's sender, and so does
    // each failure (the node backs off): a fan-out to thousands of nodes keeps no answer.
    let record = {
        let (index, done, uid, name, revision) =
            (ctx.index.clone(), done.clone(), uid.to_owned(), name.clone(), revision.to_owned());
        move |node: &NodeAddr, result: Result<_, DispatchError>, took| {
            match result {
                Ok(state) => {
                    index.record_state(&node.name, &state);
                }
                Err(e) => {
                    tracing::warn!(node = %node.name, program = %name, error = %e, "apply failed");
                    let now = k8s_openapi::jiff::Timestamp::now();
                    index.record_failure(&node.name, &uid, &revision, e.to_outcome(), now);
                }
            }
            done(&node.name, took);
        }
    };
    let apply = ctx.pool.apply_all(applies, &order, record);
    // The Applies are in the outboxes: the senders need not wait for this reconcile.
    drop(deciding);
    let remove = ctx.pool.fan_out_each(removes, |pool, node| {
        let (name, done) = (&name, &done);
        async move {
            let started = Instant::now();
            // Boxed: a call's future is large, and hundreds of these wait at once.
            match Box::pin(pool.remove(&node, uid, name, epoch)).await {
                Ok(_) => ctx.index.record_removed(&node.name, uid),
                Err(e) => tracing::warn!(node = %node.name, program = %name, error = %e, "remove failed"),
            }
            done(&node.name, started.elapsed());
        }
    });
    futures::join!(apply, remove);
}

/// Server-side apply of the status, only when it changed; events for transitions.
async fn write_status(ctx: &Context, p: &BpfProgram, status: &BpfProgramStatus) -> Result<(), Error> {
    if p.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<BpfProgram> = Api::all(ctx.client.clone());
    let patch = json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram", "status": status});
    api.patch_status(&p.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    for t in transitions(p.status.as_ref(), status) {
        publish(ctx, p, t).await;
    }
    Ok(())
}

/// One Event a status change calls for.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
    /// The node it is about, as the Event's related object.
    pub node: Option<String>,
}

impl Transition {
    fn new(type_: EventType, reason: &'static str, note: String) -> Self {
        Transition { type_, reason, note, node: None }
    }
}

/// The events a person would want to see between two statuses: a new revision, Ready,
/// every change of the rollout's phase, an action carried out, and each node that newly
/// failed (named, as the related object, so each node is its own Event).
pub fn transitions(before: Option<&BpfProgramStatus>, after: &BpfProgramStatus) -> Vec<Transition> {
    use crds::rollout::Phase;
    let ready = |s: Option<&BpfProgramStatus>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == status::READY))
            .map(|c| (c.status.clone(), c.message.clone()))
    };
    let mut out = Vec::new();
    let (was, now) = (ready(before), ready(Some(after)));
    if before.and_then(|b| b.revision.clone()) != after.revision && after.revision.is_some() {
        out.push(Transition::new(
            EventType::Normal,
            "RolloutStarted",
            format!("rolling out revision {}", after.revision.as_deref().unwrap_or("-")),
        ));
    }
    let rollout = |s: Option<&BpfProgramStatus>| s.and_then(|s| s.rollout.clone());
    if let Some(r) = rollout(Some(after)) {
        let prev = rollout(before);
        let key = |r: &crds::rollout::RolloutStatus| (r.update_revision.clone(), r.phase);
        if prev.as_ref().map(key) != Some(key(&r)) {
            let (type_, reason) = match r.phase {
                Phase::Progressing => (EventType::Normal, "RolloutProgressing"),
                Phase::Paused => (EventType::Normal, "RolloutPaused"),
                Phase::Complete => (EventType::Normal, "RolloutComplete"),
                Phase::Halted => (EventType::Warning, "RolloutHalted"),
                Phase::RolledBack => (EventType::Warning, "RolledBack"),
                Phase::Degraded => (EventType::Warning, "RolloutDegraded"),
            };
            let rev = r.update_revision.as_deref().unwrap_or("-");
            let note = format!("revision {rev}: {}", r.message.as_deref().unwrap_or("-"));
            out.push(Transition::new(type_, reason, note));
        }
        if r.last_action_time.is_some() && prev.as_ref().and_then(|p| p.last_action_time.clone()) != r.last_action_time
        {
            let note = format!(
                "{}={} carried out for revision {}",
                crds::rollout::ACTION_ANNOTATION,
                r.last_action.as_deref().unwrap_or("-"),
                r.update_revision.as_deref().unwrap_or("-")
            );
            out.push(Transition::new(EventType::Normal, "RolloutAction", note));
        }
    }
    if let Some((s, msg)) = &now
        && s == "True"
        && was.as_ref().map(|w| w.0.as_str()) != Some("True")
    {
        out.push(Transition::new(EventType::Normal, "Ready", msg.clone()));
    }
    let failed_before: BTreeSet<&str> = before
        .filter(|b| b.revision == after.revision)
        .map(|b| b.failures.iter().map(|f| f.node.as_str()).collect())
        .unwrap_or_default();
    for f in after.failures.iter().filter(|f| !failed_before.contains(f.node.as_str())) {
        let what = match &f.program {
            Some(p) => format!("{}: {} ({p}): {}", f.node, f.reason, f.message),
            None => format!("{}: {}: {}", f.node, f.reason, f.message),
        };
        out.push(Transition { node: Some(f.node.clone()), ..Transition::new(EventType::Warning, "NodeFailed", what) });
    }
    out
}

/// Write one Event about `p` (its object reference carries its uid, so `kubectl describe`
/// finds it), related to the node it names.
async fn publish(ctx: &Context, p: &BpfProgram, t: Transition) {
    let Some(recorder) = &ctx.recorder else { return };
    let mut note = t.note;
    note.truncate(1000);
    let secondary = t.node.map(|n| k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(n),
        ..Default::default()
    });
    let ev =
        KubeEvent { type_: t.type_, reason: t.reason.into(), note: Some(note), action: "Reconcile".into(), secondary };
    if let Err(e) = recorder.publish(&ev, &p.object_ref(&())).await {
        tracing::debug!(error = %e, "cannot publish event");
    }
}

async fn cleanup(p: Arc<BpfProgram>, ctx: &Context) -> Result<Action, Error> {
    let uid = uid_of(&p)?;
    let name = p.name_any();
    let _slots = fleet_slots(ctx, Weight::Holding).await;
    // Its maps stay while other programs use them (spec.maps[].from): their programs hold
    // and read the same kernel maps.
    let users = crate::shared_maps::users(&ctx.client, &name).await?;
    if !users.is_empty() {
        let message = crate::shared_maps::in_use_message(&users);
        let status = status::deleting_because(
            p.status.as_ref(),
            "MapsInUse",
            &message,
            Time(k8s_openapi::jiff::Timestamp::now()),
        );
        write_status(ctx, &p, &status).await?;
        return Err(Error::DeletionBlocked { count: users.len(), nodes: message });
    }
    let nodes = ctx.node_infos();
    // The nodes it targets now, or at its last reconcile.
    let mut targets: BTreeSet<String> = ctx
        .desired
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&uid)
        .map(|d| (*d.targets).clone())
        .unwrap_or_default();
    targets.extend(target_nodes(&p.spec.node_selector, &*nodes).unwrap_or_default());
    let listed_runners = ctx.index.listed_runners(&uid);
    let never_listed = ctx.index.never_listed(nodes.iter().map(|n| n.name.as_str()));
    let plan = sends::cleanup_plan(&nodes, &targets, &listed_runners, &never_listed, |n| ctx.agents.state(n));
    let mut waiting = plan.waiting;
    let blocking: BTreeSet<String> = plan.ask.iter().map(|a| a.name.clone()).collect();
    let epoch = ctx.epoch;
    let results = ctx
        .pool
        .fan_out(plan.ask.into_iter().chain(plan.best_effort).collect(), |pool, node| {
            let (uid, name) = (&uid, &name);
            async move { pool.remove(&node, uid, name, epoch).await }
        })
        .await;
    for (node, r) in results {
        ctx.stale_bpfnodes.mark(&node.name);
        match r {
            Ok(_) => ctx.index.record_removed(&node.name, &uid),
            Err(e) if !blocking.contains(&node.name) => {
                tracing::info!(node = %node.name, error = %e, "cleanup: cannot ask a never-listed, untargeted node");
            }
            Err(e) => {
                let why = match e {
                    DispatchError::Agent { message, .. } => message,
                    other => other.to_string(),
                };
                waiting.insert(node.name.clone(), why);
            }
        }
    }
    if waiting.is_empty() {
        forget(ctx, &p, &uid).await;
        return Ok(Action::await_change());
    }
    let status = status::deleting(p.status.as_ref(), &waiting, Time(k8s_openapi::jiff::Timestamp::now()));
    write_status(ctx, &p, &status).await?;
    let nodes = waiting.iter().map(|(n, why)| format!("{n}: {why}")).collect::<Vec<_>>().join("; ");
    Err(Error::DeletionBlocked { count: waiting.len(), nodes })
}

/// The program is gone from every node: forget it.
async fn forget(ctx: &Context, p: &BpfProgram, uid: &str) {
    ctx.desired.write().unwrap_or_else(|e| e.into_inner()).remove(uid);
    ctx.history.forget(uid);
    ctx.gates.forget(uid);
    ctx.metrics.forget_program(&p.name_any());
    publish(ctx, p, Transition::new(EventType::Normal, "Removed", "removed from every node".into())).await;
}

/// Run the controller until `shutdown` resolves. `trigger` reconciles every program
/// (node changes); `targeted` reconciles one (drift repair).
pub async fn run(
    ctx: Arc<Context>,
    programs: kube::runtime::Controller<BpfProgram>,
    trigger: impl futures::Stream<Item = ()> + Send + 'static,
    targeted: impl futures::Stream<Item = kube::runtime::reflector::ObjectRef<BpfProgram>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    programs
        .reconcile_all_on(trigger)
        .reconcile_on(targeted)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile loop");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use crds::program::NodeFailure;
    use crds::rollout::{Phase, RolloutStatus};

    use super::*;

    #[test]
    fn fleet_slots_let_every_program_wait_only_past_the_budget_and_only_when_sending() {
        let in_flight = |weight, nodes, over| FLEET_SLOTS / slots_for(weight, nodes, over) as usize;
        // Past the connection budget a reconcile that only sends takes a slot a node.
        assert_eq!(in_flight(Weight::Sending, 5_000, true), 128);
        assert_eq!(in_flight(Weight::Sending, 10_000, true), 64);
        assert_eq!(in_flight(Weight::Sending, 2_000, true), 320, "bounded by the controller's 128 instead");
        // Within it, or holding its maps across awaits: 16 at once, or fewer on a large fleet.
        assert_eq!(in_flight(Weight::Sending, 50, false), FEW_RECONCILES);
        assert_eq!(in_flight(Weight::Holding, 5_000, true), FEW_RECONCILES);
        assert_eq!(in_flight(Weight::Holding, 80_000, true), 8);
        assert_eq!(in_flight(Weight::Sending, 80_000, false), 8);
        // A fleet larger than all the slots takes them all: one reconcile at a time.
        assert_eq!(slots_for(Weight::Sending, 10_000_000, true) as usize, FLEET_SLOTS);
        assert_eq!(slots_for(Weight::Sending, 0, true), 1);
    }

    fn with(phase: Phase, failures: &[&str]) -> BpfProgramStatus {
        BpfProgramStatus {
            revision: Some("r1".into()),
            rollout: Some(RolloutStatus {
                phase,
                update_revision: Some("r1".into()),
                message: Some(format!("{phase:?} says why")),
                ..Default::default()
            }),
            failures: failures
                .iter()
                .map(|n| NodeFailure {
                    node: n.to_string(),
                    program: None,
                    reason: "HealthGateFailed".into(),
                    message: "ProgramDidNotRun: count".into(),
                    attempts: None,
                    next_retry_time: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn every_phase_change_and_each_newly_failed_node_is_an_event() {
        let progressing = with(Phase::Progressing, &[]);
        let halted = with(Phase::Halted, &["node-2"]);
        let events = transitions(Some(&progressing), &halted);
        let got: Vec<(&str, Option<&str>)> = events.iter().map(|t| (t.reason, t.node.as_deref())).collect();
        assert_eq!(got, [("RolloutHalted", None), ("NodeFailed", Some("node-2"))]);
        assert_eq!(events[0].note, "revision r1: Halted says why");
        assert_eq!(events[1].note, "node-2: HealthGateFailed: ProgramDidNotRun: count");
        assert!(matches!(events[0].type_, EventType::Warning));
        // The same status again: nothing new; another failed node: only it.
        assert!(transitions(Some(&halted), &halted).is_empty());
        let more = with(Phase::Halted, &["node-2", "node-4"]);
        let got: Vec<Option<String>> = transitions(Some(&halted), &more).into_iter().map(|t| t.node).collect();
        assert_eq!(got, [Some("node-4".to_string())]);
        // An action carried out is an event of its own.
        let mut acted = with(Phase::Paused, &[]);
        let r = acted.rollout.as_mut().unwrap();
        r.last_action = Some("promote".into());
        r.last_action_time = Some(Time(k8s_openapi::jiff::Timestamp::from_second(1).unwrap()));
        let reasons: Vec<&str> = transitions(Some(&progressing), &acted).iter().map(|t| t.reason).collect();
        assert_eq!(reasons, ["RolloutPaused", "RolloutAction"]);
    }
}
