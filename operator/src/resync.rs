//! Drift: before the first reconcile of a term every agent is Listed ([`initial_sync`]),
//! then periodically ([`resync_loop`]): what an agent runs that no BpfProgram wants is
//! removed, an unreachable agent is marked, and each node's BpfNode is written when it
//! changed. The Node watcher is in `nodes`, Watch streams in `agent_watch`, BpfNode
//! following in `bpfnode_follow`. Everything here runs inside the leader's one unit of
//! work (`work`): nothing is spawned detached.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crds::BpfProgram;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::mpsc;

use crate::bpfnode;
use crate::bpfnode_follow::{last_call, publish_on_bpfnode, write_bpfnode, write_contact};
use crate::controller::Context;
use crate::dispatch::NodeAddr;
use crate::drift::{self, Desired, Repair, Reported};
use crate::nodes::reachable_addrs;
use crate::reachable::LastCall;
use crate::reports::Listed;

pub use crate::agent_watch::watch_agents;

/// Agent Lists in flight during a resync. Most answers are "unchanged" (one small
/// message); a full one holds every owner of its node until it is handled.
pub(crate) const RESYNC_LISTS_IN_FLIGHT: usize = 2;

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
    // The pool keeps as many connections open as the fleet it knows allows: it knows this
    // one before the first List (a fleet past the budget would otherwise keep the budget's
    // worth open until the Watch supervisor first counts it).
    ctx.pool.set_fleet(total);
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
                write_contact(ctx, nodes.get(&addr.name).map(Arc::as_ref), LastCall::Answered).await;
            }
            Err(e) => {
                tracing::warn!(node = %addr.name, error = %e, "initial sync: cannot list agent");
                write_contact(ctx, nodes.get(&addr.name).map(Arc::as_ref), last_call(&e)).await;
            }
        }
    }
    tracing::info!(listed, total, "initial sync: agents listed");
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
                write_contact(ctx, nodes.get(&addr.name).map(Arc::as_ref), last_call(&e)).await;
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
        // Unchanged: the BpfNode written from the last full List still says what runs
        // (AgentReachable and the heartbeat are written if they must be).
        match &list {
            Some(list) => write_bpfnode(ctx, nodes.get(&addr.name).map(Arc::as_ref), list).await,
            None => write_contact(ctx, nodes.get(&addr.name).map(Arc::as_ref), LastCall::Answered).await,
        }
    }
    ctx.metrics.resynced();
}

/// Every program `node` should run is in doubt: say so in their status.
pub(crate) fn mark_unreachable(
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
