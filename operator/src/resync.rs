//! The operator's view of Nodes and agents: a Node watcher that keeps the node cache,
//! cleans up after deleted Nodes and triggers reconciles when a Node's labels or
//! address change; and a periodic resync that Lists every agent, repairs drift and
//! writes each node's BpfNode when it changed. Everything here runs inside the leader's
//! one unit of work (`work`): nothing is spawned detached.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crds::BpfProgram;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::mpsc;

use crate::bpfnode;
use crate::controller::Context;
use crate::dispatch::NodeAddr;
use crate::drift::{self, Desired, Repair, Reported};
use crate::reports::{AgentChange, AgentList, ChangeKind, Listed};
use crate::targets::NodeInfo;

/// Agent Lists in flight during a resync. Most answers are "unchanged" (one small
/// message); a full one holds every owner of its node until it is handled.
const RESYNC_LISTS_IN_FLIGHT: usize = 2;

/// Keep `writer` filled with Nodes until the stream ends. Sends `()` on `trigger`
/// when the set of nodes or their labels/addresses change.
pub async fn watch_nodes(ctx: Arc<Context>, writer: Writer<Node>, trigger: mpsc::Sender<()>) {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let mut seen: HashMap<String, NodeInfo> = HashMap::new();
    let stream = watcher(api, watcher::Config::default()).default_backoff().reflect(writer);
    futures::pin_mut!(stream);
    loop {
        match stream.try_next().await {
            Ok(Some(ev @ watcher::Event::Apply(_))) | Ok(Some(ev @ watcher::Event::InitApply(_))) => {
                let (watcher::Event::Apply(node) | watcher::Event::InitApply(node)) = &ev else { continue };
                if let Some(info) = NodeInfo::from_node(node)
                    && seen.get(&info.name) != Some(&info)
                {
                    // A node joining (not the start-up List: the initial sync reads those)
                    // gets its BpfNode once its agent answers.
                    if matches!(ev, watcher::Event::Apply(_)) && !seen.contains_key(&info.name) {
                        ctx.stale_bpfnodes.mark(&info.name);
                    }
                    seen.insert(info.name.clone(), info);
                    let _ = trigger.try_send(());
                }
            }
            Ok(Some(watcher::Event::Delete(node))) => {
                let name = node.name_any();
                seen.remove(&name);
                node_gone(&ctx, &name).await;
                let _ = trigger.try_send(());
            }
            Ok(Some(watcher::Event::InitDone)) => {
                let _ = trigger.try_send(());
            }
            Ok(Some(watcher::Event::Init)) => {}
            Ok(None) => break,
            Err(e) => tracing::warn!(error = %e, "node watch"),
        }
    }
}

/// A Node was deleted: forget its agent and delete its BpfNode.
pub async fn node_gone(ctx: &Context, name: &str) {
    tracing::info!(node = name, "node deleted");
    ctx.index.forget(name);
    ctx.pool.forget(name);
    ctx.bpfnodes.forget(name);
    ctx.metrics.forget_node(name);
    if let Err(e) = bpfnode::delete(&ctx.client, name).await {
        tracing::warn!(node = name, error = %e, "cannot delete BpfNode");
    }
}

/// List every agent every `every`, forever. Starts once the BpfProgram cache has
/// synced (the Node cache has, before any leader work that reads it starts).
pub async fn resync_loop(
    ctx: Arc<Context>,
    programs: Store<BpfProgram>,
    every: Duration,
    targeted: mpsc::Sender<ObjectRef<BpfProgram>>,
) {
    if programs.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        tokio::time::sleep(every).await;
        resync_once(&ctx, &programs, &targeted).await;
    }
}

/// Nodes whose agents can be dialled: an address, not being deleted, a Ready agent.
fn reachable_addrs(ctx: &Context, nodes: &BTreeMap<String, Arc<Node>>) -> Vec<NodeAddr> {
    dialable(ctx, nodes.values().map(Arc::as_ref)).collect()
}

/// Those of `nodes` whose agent can be dialled, with where.
fn dialable<'a>(ctx: &'a Context, nodes: impl Iterator<Item = &'a Node> + 'a) -> impl Iterator<Item = NodeAddr> + 'a {
    nodes
        .filter_map(NodeInfo::from_node)
        .filter(|i| !i.deleting && ctx.agents.is_ready(&i.name))
        .filter_map(|i| i.internal_ip.map(|ip| NodeAddr { name: i.name, ip }))
}

/// How long marks gather before the marked nodes are read: an Apply to every program of
/// a node costs one List of it.
pub const BPFNODE_DEBOUNCE: Duration = Duration::from_secs(1);

/// Keep every BpfNode following its agent: after each batch of marks (see
/// [`bpfnode::Stale`]), List each marked node in full and write its BpfNode if it changed.
/// The periodic resync stays the safety net for what this misses (a failed List).
pub async fn follow_bpfnodes(ctx: Arc<Context>, targeted: mpsc::Sender<ObjectRef<BpfProgram>>) {
    loop {
        let marked = ctx.stale_bpfnodes.next_batch(BPFNODE_DEBOUNCE).await;
        refresh_bpfnodes(&ctx, &marked, Some(&targeted)).await;
    }
}

/// List each of `marked` in full and write its BpfNode if it changed. With `targeted`,
/// the programs whose state on a node the List changed (a node rebooted and lost its
/// pins, an outage over) are reconciled at once.
pub async fn refresh_bpfnodes(
    ctx: &Context,
    marked: &BTreeSet<String>,
    targeted: Option<&mpsc::Sender<ObjectRef<BpfProgram>>>,
) {
    let nodes: BTreeMap<String, Arc<Node>> =
        ctx.nodes.state().into_iter().filter(|n| marked.contains(&n.name_any())).map(|n| (n.name_any(), n)).collect();
    let addrs = reachable_addrs(ctx, &nodes);
    let mut answers = std::pin::pin!(
        futures::stream::iter(addrs)
            .map(|n| {
                let pool = ctx.pool.clone();
                async move {
                    let turn = ctx.bpfnodes.turn(&n.name).await;
                    let r = pool.list_since(&n, 0).await;
                    (n, r, turn)
                }
            })
            .buffer_unordered(RESYNC_LISTS_IN_FLIGHT)
    );
    while let Some((addr, result, _turn)) = answers.next().await {
        match result {
            Ok(Listed::Full(list)) => {
                let changed = ctx.index.record_list(&addr.name, &list);
                if let Some(targeted) = targeted {
                    let desired = ctx.desired.read().unwrap_or_else(|e| e.into_inner());
                    for uid in &changed {
                        if let Some(d) = desired.get(uid) {
                            let _ = targeted.try_send(ObjectRef::new(&d.name));
                        }
                    }
                }
                write_bpfnode(ctx, nodes.get(&addr.name).map(Arc::as_ref), &list).await;
            }
            Ok(Listed::Unchanged(_)) => {}
            Err(e) => tracing::debug!(node = %addr.name, error = %e, "BpfNode follow: cannot list agent"),
        }
    }
}

/// Every agent's List, a few at a time, each handled and dropped before the next: a
/// List answer holds every owner of a node, and 50 of them at once cost tens of MiB. An
/// agent whose state still has the digest of its last full List (and which the index
/// holds unchanged since) answers "unchanged" instead, in one small message.
/// Each answer comes with the node's BpfNode turn ([`bpfnode::Written::turn`]), held until
/// the caller has written (or not) what it read.
fn lists(
    ctx: &Context,
    addrs: Vec<NodeAddr>,
) -> impl futures::Stream<Item = (NodeAddr, Result<Listed, crate::dispatch::DispatchError>, bpfnode::Turn)> + '_ {
    futures::stream::iter(addrs)
        .map(move |n| {
            let pool = ctx.pool.clone();
            async move {
                let turn = ctx.bpfnodes.turn(&n.name).await;
                // Read after the turn: what the previous holder recorded counts.
                let known = ctx.index.in_sync_digest(&n.name).unwrap_or(0);
                let r = pool.list_since(&n, known).await;
                (n, r, turn)
            }
        })
        .buffer_unordered(RESYNC_LISTS_IN_FLIGHT)
}

/// Before the first reconcile of a leadership term: learn what every agent runs, so
/// the first decisions compare the spec with the truth instead of with nothing (a new
/// leader re-applying to every node, or writing status from an empty index). Writes
/// BpfNodes; repairs nothing (the BpfProgram cache is not synced yet).
pub async fn initial_sync(ctx: &Context) {
    if let Err(e) = bpfnode::seed(&ctx.client, &ctx.bpfnodes).await {
        tracing::warn!(error = %e, "cannot list BpfNodes; each is written once");
    }
    let nodes: BTreeMap<String, Arc<Node>> = ctx.nodes.state().into_iter().map(|n| (n.name_any(), n)).collect();
    let addrs = reachable_addrs(ctx, &nodes);
    let total = addrs.len();
    let mut listed = 0;
    let mut stream = std::pin::pin!(lists(ctx, addrs));
    while let Some((addr, result, _turn)) = stream.next().await {
        match result {
            Ok(Listed::Full(list)) => {
                listed += 1;
                ctx.index.record_list(&addr.name, &list);
                write_bpfnode(ctx, nodes.get(&addr.name).map(Arc::as_ref), &list).await;
            }
            Ok(Listed::Unchanged(answer)) => {
                listed += 1;
                ctx.index.record_unchanged(&addr.name, &answer);
            }
            Err(e) => tracing::warn!(node = %addr.name, error = %e, "initial sync: cannot list agent"),
        }
    }
    tracing::info!(listed, total, "initial sync: agents listed");
}

async fn write_bpfnode(ctx: &Context, node: Option<&Node>, list: &AgentList) {
    let Some(node) = node else { return };
    let status = crate::reports::node_status(list);
    match bpfnode::write_if_changed(&ctx.client, &ctx.bpfnodes, node, &status).await {
        Ok(true) => ctx.metrics.bpfnode_written(),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(node = %node.name_any(), error = %e, "cannot write BpfNode");
            ctx.index.relist(&node.name_any());
        }
    }
}

/// Whether the owner `uid` named `name` that an agent runs belongs to no BpfProgram,
/// asked at the moment of removal: the cache first, then the API server itself, so an
/// owner created after this pass started (or not yet in the cache) is never removed.
pub async fn truly_unknown(ctx: &Context, programs: &Store<BpfProgram>, uid: &str, name: &str) -> bool {
    if programs.state().iter().any(|p| p.uid().as_deref() == Some(uid)) {
        return false;
    }
    if ctx.desired.read().unwrap_or_else(|e| e.into_inner()).contains_key(uid) {
        return false;
    }
    match Api::<BpfProgram>::all(ctx.client.clone()).get_opt(name).await {
        Ok(Some(p)) => p.uid().as_deref() != Some(uid),
        Ok(None) => true,
        Err(e) => {
            tracing::warn!(owner = %name, error = %e, "drift: cannot confirm the owner is gone; keeping it");
            false
        }
    }
}

pub async fn resync_once(
    ctx: &Arc<Context>,
    programs: &Store<BpfProgram>,
    targeted: &mpsc::Sender<ObjectRef<BpfProgram>>,
) {
    let nodes: BTreeMap<String, Arc<Node>> = ctx.nodes.state().into_iter().map(|n| (n.name_any(), n)).collect();
    let addrs = reachable_addrs(ctx, &nodes);
    let known: BTreeSet<String> = programs.state().iter().filter_map(|p| p.uid()).collect();
    let desired = ctx.desired.read().unwrap_or_else(|e| e.into_inner()).clone();
    let mut lists = std::pin::pin!(lists(ctx, addrs));
    while let Some((addr, result, _turn)) = lists.next().await {
        let (list, cleared) = match result {
            Ok(Listed::Full(list)) => {
                ctx.metrics.resync_listed(false);
                let cleared = ctx.index.record_list(&addr.name, &list);
                (Some(list), cleared)
            }
            Ok(Listed::Unchanged(answer)) => {
                ctx.metrics.resync_listed(true);
                (None, ctx.index.record_unchanged(&addr.name, &answer))
            }
            Err(e) => {
                tracing::warn!(node = %addr.name, error = %e, "resync: cannot list agent");
                mark_unreachable(ctx, &desired, &addr.name, &e.to_string(), targeted);
                continue;
            }
        };
        for uid in cleared {
            // Reachable again: recompute the status of what it runs.
            if let Some(d) = desired.get(&uid) {
                let _ = targeted.try_send(ObjectRef::new(&d.name));
            }
        }
        // Unchanged: the index holds exactly what the agent runs; compare with that.
        let repairs = match &list {
            Some(list) => drift::diff(&addr.name, &known, &desired, list.programs.iter().map(Reported::of_status)),
            None => ctx.index.with_reported(&addr.name, |owners| drift::diff(&addr.name, &known, &desired, owners)),
        };
        for repair in repairs {
            match repair {
                Repair::RemoveUnknown { uid, name } => {
                    if !truly_unknown(ctx, programs, &uid, &name).await {
                        continue;
                    }
                    tracing::warn!(node = %addr.name, owner = %name, %uid, "drift: removing a program no BpfProgram claims");
                    ctx.metrics.repaired("remove_unknown");
                    ctx.stale_bpfnodes.mark(&addr.name);
                    match ctx.pool.remove(&addr, &uid, &name, ctx.epoch).await {
                        Ok(_) => ctx.index.record_removed(&addr.name, &uid),
                        Err(e) => tracing::warn!(node = %addr.name, error = %e, "drift: remove failed"),
                    }
                    if let Some(node) = nodes.get(&addr.name) {
                        let note = format!("removed {name} ({uid}): no BpfProgram claims it");
                        publish_on_bpfnode(ctx, node, "UnknownProgramRemoved", note).await;
                    }
                }
                Repair::Reconcile { name, why, .. } => {
                    tracing::info!(node = %addr.name, program = %name, %why, "drift: reconciling");
                    ctx.metrics.repaired("reconcile");
                    if let Some(p) = programs.get(&ObjectRef::new(&name))
                        && let Some(rec) = &ctx.recorder
                    {
                        let ev = KubeEvent {
                            type_: EventType::Warning,
                            reason: "DriftDetected".into(),
                            note: Some(why.clone()),
                            action: "Resync".into(),
                            secondary: None,
                        };
                        let _ = rec.publish(&ev, &p.object_ref(&())).await;
                    }
                    let _ = targeted.try_send(ObjectRef::new(&name));
                }
            }
        }
        // Unchanged: the BpfNode written from the last full List still says what runs.
        if let Some(list) = &list {
            write_bpfnode(ctx, nodes.get(&addr.name).map(Arc::as_ref), list).await;
        }
    }
    ctx.metrics.resynced();
}

async fn publish_on_bpfnode(ctx: &Context, node: &Node, reason: &str, note: String) {
    let Some(rec) = &ctx.recorder else { return };
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("bpfleet.dev/v1alpha1".into()),
        kind: Some("BpfNode".into()),
        name: Some(node.name_any()),
        ..Default::default()
    };
    let ev = KubeEvent {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: "Resync".into(),
        secondary: None,
    };
    let _ = rec.publish(&ev, &reference).await;
}

/// Every program `node` should run is in doubt: say so in their status.
fn mark_unreachable(
    ctx: &Context,
    desired: &BTreeMap<String, Arc<Desired>>,
    node: &str,
    message: &str,
    targeted: &mpsc::Sender<ObjectRef<BpfProgram>>,
) {
    let wanted = desired
        .iter()
        .filter(|(_, d)| d.targets.contains(node))
        .filter_map(|(uid, d)| d.revision.as_deref().map(|r| (uid.as_str(), r)));
    for uid in ctx.index.record_unreachable(node, wanted, message) {
        if let Some(d) = desired.get(&uid) {
            let _ = targeted.try_send(ObjectRef::new(&d.name));
        }
    }
}

/// How often the set of Watch streams is compared with the set of nodes.
const WATCH_SUPERVISE_EVERY: Duration = Duration::from_secs(5);

/// A task that is aborted when its handle is dropped: per-agent streams end with the
/// leader's work that owns them.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keep one Watch stream open to every agent, so a link removed by hand, a program
/// gone or an agent dying shows in status at once instead of at the next resync.
///
/// A stream holds its agent's connection open, at a memory cost per connection
/// (docs/benchmarks.md): a fleet with more nodes than the pool's connection budget
/// (`--max-agent-connections`) gets no streams, and what changes on its nodes shows at the next resync instead (whose
/// digest makes that one small call per node).
pub async fn watch_agents(ctx: Arc<Context>, targeted: mpsc::Sender<ObjectRef<BpfProgram>>) {
    let mut streams: HashMap<String, (NodeAddr, AbortOnDrop)> = HashMap::new();
    let budget = ctx.pool.config().max_connections;
    let mut over = false;
    loop {
        let nodes = ctx.nodes.state();
        let wanted: HashMap<String, NodeAddr> =
            dialable(&ctx, nodes.iter().map(Arc::as_ref)).map(|a| (a.name.clone(), a)).collect();
        if wanted.len() > budget {
            if !over {
                tracing::warn!(
                    nodes = wanted.len(),
                    max_agent_connections = budget,
                    "more nodes than agent connections: no Watch streams; changes on nodes show at each resync"
                );
            }
            over = true;
            streams.clear();
            tokio::time::sleep(WATCH_SUPERVISE_EVERY).await;
            continue;
        }
        if over {
            tracing::info!(nodes = wanted.len(), "the fleet fits the agent connection budget again: Watch streams");
            over = false;
        }
        // Dropping an entry aborts its stream.
        streams.retain(|name, (addr, task)| wanted.get(name) == Some(addr) && !task.0.is_finished());
        for (name, addr) in wanted {
            streams.entry(name).or_insert_with(|| {
                let task = tokio::spawn(watch_one(ctx.clone(), addr.clone(), targeted.clone()));
                (addr, AbortOnDrop(task))
            });
        }
        tokio::time::sleep(WATCH_SUPERVISE_EVERY).await;
    }
}

/// Follow one agent's changes until its stream ends; then mark it unreachable (the
/// supervisor opens a new stream, subject to the pool's backoff).
pub async fn watch_one(ctx: Arc<Context>, node: NodeAddr, targeted: mpsc::Sender<ObjectRef<BpfProgram>>) {
    let why = match ctx.pool.watch(&node).await {
        Err(e) => e.to_string(),
        Ok(mut stream) => loop {
            match stream.message().await {
                Ok(Some(ev)) => apply_event(&ctx, &node.name, &ev, &targeted),
                Ok(None) => break format!("agent at {} closed its change stream", node.ip),
                Err(e) => break format!("agent at {}: change stream broke: {}", node.ip, e.message()),
            }
        },
    };
    tracing::debug!(node = %node.name, %why, "watch ended");
    let desired = ctx.desired.read().unwrap_or_else(|e| e.into_inner()).clone();
    mark_unreachable(&ctx, &desired, &node.name, &why, &targeted);
}

fn apply_event(ctx: &Context, node: &str, change: &AgentChange, targeted: &mpsc::Sender<ObjectRef<BpfProgram>>) {
    let owner = &change.program;
    let changed = match change.kind {
        ChangeKind::Removed => {
            ctx.index.record_removed(node, &owner.owner_uid);
            true
        }
        ChangeKind::Updated => ctx.index.record_state(node, owner),
    };
    if changed {
        ctx.stale_bpfnodes.mark(node);
        tracing::debug!(node, owner = %owner.owner, reason = %change.reason, "agent reported a change");
        let _ = targeted.try_send(ObjectRef::new(&owner.owner));
    }
}
