//! Watch streams to agents: one per dialable node within the connection budget,
//! supervised, each change recorded in the index and its node's BpfNode marked stale.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crds::BpfProgram;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;

use crate::controller::Context;
use crate::dispatch::NodeAddr;
use crate::nodes::dialable;
use crate::reports::{AgentChange, ChangeKind};

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
        ctx.pool.set_fleet(wanted.len());
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
    crate::resync::mark_unreachable(&ctx, &desired, &node.name, &why, &targeted);
    // The follower reads the node again: its BpfNode says AgentReachable=False if it fails.
    ctx.stale_bpfnodes.mark(&node.name);
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
