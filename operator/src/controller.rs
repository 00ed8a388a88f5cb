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
use crate::dispatch::{AgentPool, ApplyOrder, DispatchError, NodeAddr};
use crate::drift::Desired;
use crate::history::{Content, History};
use crate::index::NodeIndex;
use crate::metrics::Metrics;
use crate::plan::{Action as NodeAction, ProgramView, plan};
use crate::rollout::{self, Ranked, Settings};
use crate::status::{self, NodeOutcome, SpecProblem, StatusInput};
use crate::targets::{NodeInfo, target_nodes};

/// Removes the program from every node before the BpfProgram is deleted.
pub const FINALIZER: &str = "bpfleet.dev/cleanup";

/// How soon a program that is not Ready everywhere is looked at again.
const RETRY: Duration = Duration::from_secs(10);
/// How soon a Ready program is looked at again (drift repair also triggers it).
const STEADY: Duration = Duration::from_secs(300);

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
    /// Revision history (ControllerRevisions); `None`: none kept (tests), so only the
    /// spec's revision can be sent.
    pub history: Option<History>,
    /// OCI images (`bytecode.image`); `None`: image bytecode is refused (tests).
    pub images: Option<crate::image::Images>,
    /// Bounds what reconciles hold at once: each takes one slot per node of the fleet
    /// (at most all of them) while it decides and dispatches, so 16 reconciles run
    /// together on a fleet of 1,250 nodes and 4 on one of 5,000 (docs/architecture.md).
    pub fleet_slots: tokio::sync::Semaphore,
    /// One copy of each set of target nodes, shared by every program that selects it.
    target_sets: std::sync::Mutex<TargetSets>,
    /// Which nodes run a Ready agent (see `agents`).
    pub agents: Arc<crate::agents::Agents>,
    /// How long a Ready agent may go unanswered before its node counts as failed.
    pub unreachable_grace: Duration,
    /// Nodes whose BpfNode must be brought up to date (see `resync::follow_bpfnodes`).
    pub stale_bpfnodes: Arc<crate::bpfnode::Stale>,
}

/// Default of `--agent-unreachable-grace-seconds`.
pub const DEFAULT_UNREACHABLE_GRACE: Duration = Duration::from_secs(60);

/// Node slots of [`Context::fleet_slots`]: 16 reconciles of 1,250 nodes each.
pub const FLEET_SLOTS: usize = 20_000;

#[derive(Default)]
struct TargetSets {
    sets: std::collections::HashMap<u64, Vec<std::sync::Weak<BTreeSet<String>>>>,
    /// Sets held after the last sweep of dropped ones.
    swept: usize,
}

impl Context {
    /// `targets`, as the copy every program selecting the same nodes shares (thousands of
    /// programs over thousands of nodes would otherwise hold a set each).
    pub fn shared_targets(&self, targets: BTreeSet<String>) -> Arc<BTreeSet<String>> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        targets.hash(&mut h);
        let key = h.finish();
        let mut ts = self.target_sets.lock().unwrap_or_else(|e| e.into_inner());
        let same =
            ts.sets.get(&key).into_iter().flatten().filter_map(std::sync::Weak::upgrade).find(|s| **s == targets);
        if let Some(shared) = same {
            return shared;
        }
        let shared = Arc::new(targets);
        ts.sets.entry(key).or_default().push(Arc::downgrade(&shared));
        if ts.sets.len() > 2 * ts.swept.max(64) {
            ts.sets.retain(|_, v| {
                v.retain(|w| w.strong_count() > 0);
                !v.is_empty()
            });
            ts.swept = ts.sets.len();
        }
        shared
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
            history: None,
            images: None,
            fleet_slots: tokio::sync::Semaphore::new(FLEET_SLOTS),
            target_sets: Default::default(),
            agents: Arc::new(crate::agents::Agents::untracked()),
            unreachable_grace: DEFAULT_UNREACHABLE_GRACE,
            stale_bpfnodes: Default::default(),
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

/// This reconcile's share of [`Context::fleet_slots`]: one per node of the fleet.
async fn fleet_slots(ctx: &Context) -> tokio::sync::SemaphorePermit<'_> {
    let weight = ctx.nodes.state().len().clamp(1, FLEET_SLOTS) as u32;
    ctx.fleet_slots.acquire_many(weight).await.expect("the fleet slots are never closed")
}

fn node_infos(store: &Store<Node>) -> Vec<NodeInfo> {
    store.state().iter().filter_map(|n| NodeInfo::from_node(n)).collect()
}

async fn apply(p: Arc<BpfProgram>, ctx: &Context) -> Result<Action, Error> {
    let uid = uid_of(&p)?;
    let name = p.name_any();
    let _slots = fleet_slots(ctx).await;
    let nodes = node_infos(&ctx.nodes);

    // Everything that makes the spec unusable on every node, found before any dispatch.
    let mut problem: Option<SpecProblem> = None;
    let targets = target_nodes(&p.spec.node_selector, &nodes).unwrap_or_else(|e| {
        problem = Some(SpecProblem { reason: crds::reason::Reason::InvalidSpec, message: e.to_string() });
        BTreeSet::new()
    });
    if problem.is_none()
        && let Err(e) = crds::validate::validate_spec(&p.spec)
    {
        problem = Some(SpecProblem { reason: crds::reason::Reason::InvalidSpec, message: e.to_string() });
    }
    let mut image_status = None;
    let payload = match (problem.is_some(), &p.spec.bytecode.image) {
        (true, _) => None,
        (false, Some(_)) => match resolve_image(ctx, &p, &nodes, &targets).await {
            Ok(r) => {
                image_status = Some(r.status);
                Some(r.payload)
            }
            Err(e) => {
                problem = Some(e);
                None
            }
        },
        (false, None) => {
            bytecode::resolve(&ctx.client, &ctx.bytecode, &p.spec).await.map_err(|e| problem = Some(e)).ok()
        }
    };
    let content = payload.map(|pl| {
        let rev = pl.revision(&p.spec).to_string();
        Content::of_spec(&p.spec, pl, rev)
    });
    let revision = content.as_ref().map(|c| c.revision.clone());
    let stable = p.status.as_ref().and_then(|s| s.rollout.as_ref()).and_then(|r| r.stable_revision.clone());
    ctx.desired.write().unwrap_or_else(|e| e.into_inner()).insert(
        uid.clone(),
        Arc::new(Desired {
            name: name.clone(),
            revision: revision.clone(),
            stable: stable.clone(),
            targets: ctx.shared_targets(targets.clone()),
        }),
    );

    let now = k8s_openapi::jiff::Timestamp::now();
    let mut rollout_status = None;
    let mut wake = None;
    if let Some(content) = &content {
        if let Some(history) = &ctx.history {
            // An image is recorded pinned to the digest it resolved to.
            let mut source = p.spec.bytecode.clone();
            if let (Some(img), Some(st)) = (source.image.as_mut(), image_status.as_ref()) {
                img.digest = Some(st.digest.clone());
            }
            // Best effort: a history that cannot be written must not stop the rollout
            // of what the spec asks (a rollback to this revision would then need its
            // source again).
            if let Err(e) = history.record(&p, content, &source, stable.as_deref()).await {
                tracing::warn!(program = %name, revision = %content.revision, error = %e, "cannot record the revision history");
            }
        }
        let (status, w) = roll_out(ctx, &p, &uid, content, &targets, &nodes).await;
        rollout_status = Some(status);
        wake = w;
    }

    let mut grace_ends: Option<Duration> = None;
    let outcomes: BTreeMap<String, NodeOutcome> = targets
        .iter()
        .map(|n| {
            let o = match &revision {
                Some(r) => node_outcome(ctx, n, &uid, r, now, &mut grace_ends),
                None => NodeOutcome::Pending,
            };
            (n.clone(), o)
        })
        .collect();
    let retries: BTreeMap<String, (u32, Time)> = match &revision {
        Some(r) => targets
            .iter()
            .filter_map(|n| ctx.index.retry_of(n, &uid, r).map(|(a, t)| (n.clone(), (a, Time(t)))))
            .collect(),
        None => BTreeMap::new(),
    };
    let status = status::compute(&StatusInput {
        generation: p.metadata.generation,
        revision: revision.as_deref(),
        targets: &targets,
        outcomes: &outcomes,
        spec_problem: problem.as_ref(),
        retries: &retries,
        previous: p.status.as_ref(),
        rollout: rollout_status.as_ref(),
        now: Time(k8s_openapi::jiff::Timestamp::now()),
    });
    let mut status = status;
    if image_status.is_some() || p.spec.bytecode.image.is_none() {
        status.image = image_status;
    }
    ctx.metrics.program_counts(&name, &status);
    // Whoever waits for Ready reads pin paths from the BpfNodes next: on a small set of
    // nodes they are written first, not a second later by `resync::follow_bpfnodes`.
    if becomes_ready(p.status.as_ref(), &status)
        && let Some(nodes) = ctx.stale_bpfnodes.take_among(&targets, BPFNODES_BEFORE_READY)
        && !nodes.is_empty()
    {
        crate::resync::refresh_bpfnodes(ctx, &nodes, None).await;
    }
    write_status(ctx, &p, &status).await?;
    let after = requeue_after(&status, problem.is_some(), &retries, now);
    // A pause, a step deadline or an agent's grace period ends on its own: look again then.
    let wake = [wake, grace_ends].into_iter().flatten().min();
    Ok(Action::requeue(wake.map_or(after, |w| after.min(w + Duration::from_millis(100)))))
}

/// How `node` stands with revision `rev` of `uid`, for status: the index's word, seen
/// through where its agent stands (`status::agent_outcome`).
fn node_outcome(
    ctx: &Context,
    node: &str,
    uid: &str,
    rev: &str,
    now: k8s_openapi::jiff::Timestamp,
    grace_ends: &mut Option<Duration>,
) -> NodeOutcome {
    let (agent, not_ready_since) = ctx.agents.state_since(node);
    let view = status::AgentView {
        agent,
        not_ready_since,
        answered: ctx.index.has_answered(node),
        unreachable_since: ctx.index.unreachable_since(node, uid, rev),
    };
    let (outcome, left) = status::agent_outcome(ctx.index.outcome(node, uid, rev), &view, ctx.unreachable_grace, now);
    if let Some(left) = left {
        *grace_ends = Some(grace_ends.map_or(left, |g| g.min(left)));
    }
    outcome
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

/// The image of an image-sourced program, for the target nodes' architecture.
async fn resolve_image(
    ctx: &Context,
    p: &BpfProgram,
    nodes: &[NodeInfo],
    targets: &BTreeSet<String>,
) -> Result<crate::image::Resolved, SpecProblem> {
    let Some(images) = &ctx.images else {
        return Err(SpecProblem {
            reason: crds::reason::Reason::InvalidSpec,
            message: "this operator is not set up for image bytecode".into(),
        });
    };
    let arch = crate::image::target_arch(crate::image::archs(nodes, targets))?;
    images.resolve(p, &arch).await
}

/// Longest one reconcile keeps switching nodes before it lets others run (it comes
/// back at once).
const MAX_ROLLOUT_PASS: Duration = Duration::from_secs(60);

/// Node label whose values a progressive rollout spreads its early nodes across.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Move the rollout on as far as it can go now: decide, send the nodes that may switch
/// their revision, wait for their answers, decide again, until nothing is left to send
/// (a step waits for a pause, a failure stopped it, or it is complete).
async fn roll_out(
    ctx: &Context,
    p: &BpfProgram,
    uid: &str,
    content: &Content,
    targets: &BTreeSet<String>,
    nodes: &[NodeInfo],
) -> (crds::rollout::RolloutStatus, Option<Duration>) {
    let settings = Settings::resolve(p.spec.rollout.as_ref(), targets.len());
    let ranked: Vec<Ranked<'_>> = nodes
        .iter()
        .filter(|n| targets.contains(&n.name))
        .map(|n| Ranked { name: &n.name, zone: n.labels.get(ZONE_LABEL).map(String::as_str) })
        .collect();
    let order = rollout::order(uid, &ranked);
    let rev = content.revision.as_str();
    let mut previous = p.status.as_ref().and_then(|s| s.rollout.clone());
    let started = Instant::now();
    let mut last: Option<BTreeMap<String, NodeAction>> = None;
    loop {
        let now = k8s_openapi::jiff::Timestamp::now();
        let observed = ctx.index.observed(uid);
        let failed: BTreeMap<String, String> = targets
            .iter()
            .filter_map(|n| status::failure_text(&ctx.index.outcome(n, uid, rev)).map(|t| (n.clone(), t)))
            .collect();
        // Nodes without a Ready agent hold no step up either.
        let unreachable: BTreeSet<String> = targets
            .iter()
            .filter(|n| {
                !ctx.agents.is_ready(n) || matches!(ctx.index.outcome(n, uid, rev), NodeOutcome::Unreachable { .. })
            })
            .cloned()
            .collect();
        let decision = rollout::decide(&rollout::Input {
            update: rev,
            order: &order,
            observed: &observed,
            failed: &failed,
            unreachable: &unreachable,
            previous: previous.as_ref(),
            settings: &settings,
            now,
        });
        let held: BTreeSet<String> = ctx.index.retry_holds(uid, rev, now).into_keys().collect();
        let view = ProgramView { desired: rev, targets, observed: &observed, held: &held };
        let mut actions = plan(&view, &decision);
        // A node whose agent is not Ready is left as it is — nothing sent, nothing
        // removed — until its agent is Ready again (which reconciles every program).
        actions.retain(|node, _| ctx.agents.is_ready(node));
        previous = Some(decision.status.clone());
        if actions.is_empty() || last.as_ref() == Some(&actions) {
            return (decision.status, decision.wake);
        }
        if started.elapsed() > MAX_ROLLOUT_PASS {
            return (decision.status, Some(Duration::ZERO));
        }
        tracing::info!(program = %p.name_any(), revision = %rev, nodes = actions.len(), phase = ?decision.status.phase, "dispatching");
        // Group by the revision each node must run; other revisions come from history.
        let mut by_revision: BTreeMap<String, BTreeMap<String, NodeAction>> = BTreeMap::new();
        for (node, action) in &actions {
            let key = match action {
                NodeAction::Apply(r) => r.clone(),
                _ => rev.to_string(),
            };
            by_revision.entry(key).or_default().insert(node.clone(), action.clone());
        }
        for (r, group) in by_revision {
            if r == rev {
                dispatch(ctx, p, uid, content, group, nodes).await;
                continue;
            }
            let arch =
                crate::image::target_arch(crate::image::archs(nodes, targets)).unwrap_or_else(|_| "amd64".into());
            let old = match &ctx.history {
                Some(h) => h.content(p, &r, ctx.images.as_ref().map(|i| (i, arch.as_str()))).await,
                None => Err("no revision history in this operator".to_string()),
            };
            match old {
                Ok(old) => dispatch(ctx, p, uid, &old, group, nodes).await,
                Err(why) => {
                    tracing::warn!(program = %p.name_any(), revision = %r, nodes = ?group.keys().collect::<Vec<_>>(), %why, "cannot send an earlier revision");
                }
            }
        }
        last = Some(actions);
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
    nodes: &[NodeInfo],
) {
    let revision = content.revision.as_str();
    let order = ApplyOrder::new(uid, &p.name_any(), content, ctx.epoch);
    let name = p.name_any();
    let epoch = ctx.epoch;
    let ips: BTreeMap<&str, Option<std::net::IpAddr>> =
        nodes.iter().map(|n| (n.name.as_str(), n.internal_ip)).collect();
    let mut addrs = Vec::new();
    for (node, action) in &actions {
        match ips.get(node.as_str()).copied().flatten() {
            Some(ip) => addrs.push((NodeAddr { name: node.clone(), ip }, action.clone())),
            None => {
                if matches!(action, NodeAction::Apply(_)) {
                    let why = "the Node has no InternalIP address to reach its agent at".to_string();
                    let outcome = NodeOutcome::Unreachable { message: why };
                    ctx.index.record_failure(node, uid, revision, outcome, k8s_openapi::jiff::Timestamp::now());
                }
            }
        }
    }
    let actions: BTreeMap<String, NodeAction> = addrs.iter().map(|(a, act)| (a.name.clone(), act.clone())).collect();
    let targets: Vec<NodeAddr> = addrs.into_iter().map(|(a, _)| a).collect();
    // Each answer goes into the index as it arrives: a fan-out to thousands of nodes does
    // not hold thousands of answers until the last one.
    let results = ctx
        .pool
        .fan_out(targets, |pool, node| {
            let action = actions.get(&node.name).cloned();
            let (order, name) = (&order, &name);
            let metrics = ctx.metrics.clone();
            let index = ctx.index.clone();
            async move {
                let started = Instant::now();
                let r = match action {
                    Some(NodeAction::Apply(_)) => pool.apply(&node, order).await.map(|state| {
                        index.record_state(&node.name, &state);
                    }),
                    Some(NodeAction::Remove) => {
                        pool.remove(&node, uid, name, epoch).await.map(|_| index.record_removed(&node.name, uid))
                    }
                    _ => Ok(()),
                };
                metrics.dispatched(&node.name, started.elapsed());
                r
            }
        })
        .await;
    for (node, result) in results {
        ctx.stale_bpfnodes.mark(&node.name);
        let action = actions.get(&node.name);
        match (action, result) {
            (_, Ok(())) => {}
            (Some(NodeAction::Apply(_)), Err(e)) => {
                tracing::warn!(node = %node.name, program = %p.name_any(), error = %e, "apply failed");
                let now = k8s_openapi::jiff::Timestamp::now();
                ctx.index.record_failure(&node.name, uid, revision, e.to_outcome(), now);
            }
            (_, Err(e)) => tracing::warn!(node = %node.name, program = %p.name_any(), error = %e, "remove failed"),
        }
    }
}

/// Server-side apply of the status, only when it changed; events for transitions.
async fn write_status(ctx: &Context, p: &BpfProgram, status: &BpfProgramStatus) -> Result<(), Error> {
    if p.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<BpfProgram> = Api::all(ctx.client.clone());
    let patch = json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram", "status": status});
    api.patch_status(&p.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    for (type_, reason, note) in transitions(p.status.as_ref(), status) {
        publish(ctx, p, type_, reason, note).await;
    }
    Ok(())
}

/// The events a person would want to see between two statuses.
pub fn transitions(
    before: Option<&BpfProgramStatus>,
    after: &BpfProgramStatus,
) -> Vec<(EventType, &'static str, String)> {
    let ready = |s: Option<&BpfProgramStatus>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == status::READY))
            .map(|c| (c.status.clone(), c.message.clone()))
    };
    let mut out = Vec::new();
    let (was, now) = (ready(before), ready(Some(after)));
    if before.and_then(|b| b.revision.clone()) != after.revision && after.revision.is_some() {
        out.push((
            EventType::Normal,
            "RolloutStarted",
            format!("rolling out revision {}", after.revision.as_deref().unwrap_or("-")),
        ));
    }
    if let Some((s, msg)) = &now
        && s == "True"
        && was.as_ref().map(|w| w.0.as_str()) != Some("True")
    {
        out.push((EventType::Normal, "Ready", msg.clone()));
    }
    let failed_before = before.map(|b| b.failed_nodes).unwrap_or(0);
    if after.failed_nodes > failed_before {
        let msg = now.map(|n| n.1).unwrap_or_default();
        out.push((EventType::Warning, "NodeFailures", msg));
    }
    out
}

async fn publish(ctx: &Context, p: &BpfProgram, type_: EventType, reason: &str, note: String) {
    let Some(recorder) = &ctx.recorder else { return };
    let mut note = note;
    note.truncate(1000);
    let ev = KubeEvent { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(e) = recorder.publish(&ev, &p.object_ref(&())).await {
        tracing::debug!(error = %e, "cannot publish event");
    }
}

async fn cleanup(p: Arc<BpfProgram>, ctx: &Context) -> Result<Action, Error> {
    let uid = uid_of(&p)?;
    let nodes = node_infos(&ctx.nodes);
    // Remove is idempotent: ask every node that runs it (as reported) or that it
    // targets (now, or at its last reconcile). A node never listed and never targeted
    // cannot hold it; if it somehow does, drift repair removes the then-unknown owner.
    let mut targets: BTreeSet<String> = ctx
        .desired
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&uid)
        .map(|d| (*d.targets).clone())
        .unwrap_or_default();
    targets.extend(target_nodes(&p.spec.node_selector, &nodes).unwrap_or_default());
    let listed_runners = ctx.index.listed_runners(&uid);
    let never_listed = ctx.index.never_listed(nodes.iter().map(|n| n.name.as_str()));
    let mut addrs = Vec::new();
    let mut best_effort = Vec::new();
    let mut waiting = BTreeMap::new();
    for n in &nodes {
        let relevant = targets.contains(&n.name) || listed_runners.contains(&n.name);
        if !relevant {
            // A node whose agent never answered a List may still run it: ask, but an
            // unreachable one that was never targeted does not hold the deletion up.
            if never_listed.contains(&n.name)
                && !n.deleting
                && let Some(ip) = n.internal_ip
            {
                best_effort.push(NodeAddr { name: n.name.clone(), ip });
            }
            continue;
        }
        // A Node being deleted takes its programs with it: it does not block deletion.
        if n.deleting {
            continue;
        }
        // A node that runs no agent cannot be asked, and no agent will come to answer:
        // ask in case one does, but it does not hold the deletion up.
        if ctx.agents.state(&n.name) == crate::agents::AgentState::Absent {
            if listed_runners.contains(&n.name)
                && let Some(ip) = n.internal_ip
            {
                best_effort.push(NodeAddr { name: n.name.clone(), ip });
            }
            continue;
        }
        match n.internal_ip {
            Some(ip) => addrs.push(NodeAddr { name: n.name.clone(), ip }),
            None => {
                waiting.insert(n.name.clone(), "no InternalIP to reach its agent".to_string());
            }
        }
    }
    let name = p.name_any();
    let blocking: BTreeSet<String> = addrs.iter().map(|a| a.name.clone()).collect();
    addrs.extend(best_effort);
    let epoch = ctx.epoch;
    let results = ctx
        .pool
        .fan_out(addrs, |pool, node| {
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
                let why = match &e {
                    DispatchError::Agent { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                waiting.insert(node.name.clone(), why);
            }
        }
    }
    if waiting.is_empty() {
        ctx.desired.write().unwrap_or_else(|e| e.into_inner()).remove(&uid);
        if let Some(h) = &ctx.history {
            h.forget(&uid);
        }
        ctx.metrics.forget_program(&p.name_any());
        publish(ctx, &p, EventType::Normal, "Removed", "removed from every node".into()).await;
        return Ok(Action::await_change());
    }
    let status = status::deleting(p.status.as_ref(), &waiting, Time(k8s_openapi::jiff::Timestamp::now()));
    write_status(ctx, &p, &status).await?;
    let nodes = waiting.iter().map(|(n, why)| format!("{n}: {why}")).collect::<Vec<_>>().join("; ");
    Err(Error::DeletionBlocked { count: waiting.len(), nodes })
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
