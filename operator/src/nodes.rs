//! The Node watcher: keeps the node cache, cleans up after deleted Nodes and triggers
//! reconciles when a Node's labels or address change; and which nodes' agents can be
//! dialled. Runs inside the leader's one unit of work (`work`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::mpsc;

use crate::bpfnode;
use crate::controller::Context;
use crate::dispatch::NodeAddr;
use crate::targets::NodeInfo;

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
    if let Err(e) = bpfnode::delete(&ctx.client, name).await {
        tracing::warn!(node = name, error = %e, "cannot delete BpfNode");
    }
}

/// Nodes whose agents can be dialled: an address, not being deleted, a Ready agent.
pub(crate) fn reachable_addrs(ctx: &Context, nodes: &BTreeMap<String, Arc<Node>>) -> Vec<NodeAddr> {
    dialable(ctx, nodes.values().map(Arc::as_ref)).collect()
}

/// Those of `nodes` whose agent can be dialled, with where.
pub(crate) fn dialable<'a>(
    ctx: &'a Context,
    nodes: impl Iterator<Item = &'a Node> + 'a,
) -> impl Iterator<Item = NodeAddr> + 'a {
    nodes
        .filter_map(NodeInfo::from_node)
        .filter(|i| !i.deleting && ctx.agents.is_ready(&i.name))
        .filter_map(|i| i.internal_ip.map(|ip| NodeAddr { name: i.name, ip }))
}
