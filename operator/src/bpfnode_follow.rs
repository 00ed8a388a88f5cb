//! BpfNodes following their agents: after each batch of marks ([`bpfnode::Stale`]), each
//! marked node's agent is Listed in full and its BpfNode written when it changed, one
//! reader per node at a time ([`bpfnode::Written::turn`]). A node whose agent cannot be
//! Listed (or is not dialled: no address, no Ready agent pod) gets `AgentReachable=False`
//! with the reason, once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crds::BpfProgram;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;

use crate::bpfnode;
use crate::controller::Context;
use crate::dispatch::DispatchError;
use crate::nodes::reachable_addrs;
use crate::reachable::{self, LastCall, Verdict};
use crate::reports::{AgentList, Listed};
use crate::targets::NodeInfo;

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
    // Marked but not dialled (its agent pod stopped being Ready, it has no address): say so.
    for (name, node) in nodes.iter().filter(|(name, _)| !addrs.iter().any(|a| &a.name == *name)) {
        if node.metadata.deletion_timestamp.is_none() {
            let _turn = ctx.bpfnodes.turn(name).await;
            write_contact(ctx, Some(node), LastCall::NotCalled).await;
        }
    }
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
            .buffer_unordered(crate::resync::RESYNC_LISTS_IN_FLIGHT)
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
            Err(e) => {
                tracing::debug!(node = %addr.name, error = %e, "BpfNode follow: cannot list agent");
                write_contact(ctx, nodes.get(&addr.name).map(Arc::as_ref), last_call(&e)).await;
            }
        }
    }
}

/// How a call that ended in `e` went, for `AgentReachable`: an error of the agent's own is
/// an answer.
pub(crate) fn last_call(e: &DispatchError) -> LastCall<'_> {
    e.unreached().map_or(LastCall::Answered, LastCall::Failed)
}

/// `AgentReachable` of `node`, after `last`.
fn verdict(ctx: &Context, node: &Node, last: LastCall<'_>) -> Verdict {
    let has_address = NodeInfo::from_node(node).is_some_and(|i| i.internal_ip.is_some());
    reachable::verdict(has_address, ctx.agents.state(&node.name_any()), last)
}

/// The node's agent answered a List in full: write its BpfNode if what it runs changed,
/// `AgentReachable` turned, or the heartbeat is due.
pub(crate) async fn write_bpfnode(ctx: &Context, node: Option<&Node>, list: &AgentList) {
    let Some(node) = node else { return };
    let status = crate::reports::node_status(list);
    let verdict = verdict(ctx, node, LastCall::Answered);
    match bpfnode::write_if_changed(&ctx.client, &ctx.bpfnodes, node, status, &verdict).await {
        Ok(true) => ctx.metrics.bpfnode_written(),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(node = %node.name_any(), error = %e, "cannot write BpfNode");
            ctx.index.relist(&node.name_any());
        }
    }
}

/// The node's agent was not read in full (`last`: it answered "unchanged", a call failed,
/// or it is not called): write `AgentReachable` if it turned or says another reason, and
/// the heartbeat if it answered and the heartbeat is due. Held under the node's turn.
pub(crate) async fn write_contact(ctx: &Context, node: Option<&Node>, last: LastCall<'_>) {
    let Some(node) = node else { return };
    let verdict = verdict(ctx, node, last);
    let answered = last == LastCall::Answered;
    match bpfnode::write_contact(&ctx.client, &ctx.bpfnodes, node, &verdict, answered).await {
        Ok(true) => {
            ctx.metrics.bpfnode_written();
            if !answered {
                tracing::info!(node = %node.name_any(), reason = verdict.reason(), message = %verdict.message, "agent not reachable");
            }
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(node = %node.name_any(), error = %e, "cannot write the BpfNode's AgentReachable"),
    }
}

pub async fn publish_on_bpfnode(ctx: &Context, node: &Node, reason: &str, note: String) {
    let Some(rec) = &ctx.recorder else { return };
    let name = node.name_any();
    // `kubectl describe bpfnode` finds Events by the object's uid.
    let uid = bpfnode::uid(&ctx.client, &ctx.bpfnodes, &name).await;
    let reference = bpfnode_reference(&name, uid);
    let ev = KubeEvent {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: "Resync".into(),
        secondary: None,
    };
    let _ = rec.publish(&ev, &reference).await;
}

/// What an Event about the BpfNode `name` (uid `uid`) refers to.
fn bpfnode_reference(name: &str, uid: Option<String>) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("bpfleet.dev/v1alpha1".into()),
        kind: Some("BpfNode".into()),
        name: Some(name.to_string()),
        uid,
        ..Default::default()
    }
}
