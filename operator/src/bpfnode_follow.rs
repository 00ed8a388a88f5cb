//! BpfNodes following their agents: after each batch of marks ([`bpfnode::Stale`]), each
//! marked node's agent is Listed in full and its BpfNode written when it changed, one
//! reader per node at a time ([`bpfnode::Written::turn`]).

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
use crate::nodes::reachable_addrs;
use crate::reports::{AgentList, Listed};

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
            Err(e) => tracing::debug!(node = %addr.name, error = %e, "BpfNode follow: cannot list agent"),
        }
    }
}

pub(crate) async fn write_bpfnode(ctx: &Context, node: Option<&Node>, list: &AgentList) {
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

pub(crate) async fn publish_on_bpfnode(ctx: &Context, node: &Node, reason: &str, note: String) {
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
