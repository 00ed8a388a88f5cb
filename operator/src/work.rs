//! What the leader does, as one unit of work: dropping the future this returns (lost
//! Lease, shutdown) stops every watch, resync, agent stream and dispatch it started.
//!
//! Order matters for correctness after a restart or failover: the Node and ConfigMap
//! caches sync first, then every agent is listed once (`initial_sync`), and only then
//! do reconciles and resyncs start. No decision is ever taken from an empty cache: a
//! new leader neither re-applies what runs nor writes `NoTargetNodes` for a program
//! that runs on nodes, nor drops a finalizer having asked no node.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crds::BpfProgram;
use futures::future::BoxFuture;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::agents::{self, Agents};
use crate::bytecode::{self, BytecodeCache};
use crate::controller::{self, Context};
use crate::dispatch::AgentPool;
use crate::history::History;
use crate::metrics::Metrics;
use crate::resync;

/// BpfPrograms per page of the watcher's initial List: each carries its inline bytecode
/// (up to ~1 MiB), and a page is decoded whole, so pages of 100 rather than kube's 500.
pub const PROGRAM_PAGE_SIZE: u32 = 100;

/// BpfPrograms reconciled at once, by default ([`WorkConfig::reconcile_concurrency`]).
pub const DEFAULT_RECONCILE_CONCURRENCY: u16 = 128;

/// How the leader works.
#[derive(Clone, Debug)]
pub struct WorkConfig {
    /// Time between two Lists of every agent.
    pub resync_every: Duration,
    /// BpfPrograms reconciled at once.
    pub reconcile_concurrency: u16,
    /// Where revision history (ControllerRevisions) is kept: the operator's namespace.
    pub history_namespace: String,
    /// Registries, pull secrets and the signature policy of `bytecode.image`.
    pub images: crate::image::ImageConfig,
    /// Label selector of the agent pods in `history_namespace` (the operator's own):
    /// where agents run. `None`: every node is taken to run one (agents started by hand).
    pub agent_pod_selector: Option<String>,
    /// How long a Ready agent may go unanswered before its node counts as failed.
    pub unreachable_grace: Duration,
    /// ConfigMap bytecode cached, in bytes (from the memory limit, `crate::memory`).
    pub config_map_cache_bytes: usize,
    /// Prometheus base URLs a health gate may query (`--prometheus-address`).
    pub prometheus_addresses: Vec<String>,
    /// How old a BpfNode's heartbeat may get before it is written on its own (zero: only
    /// with other writes of the BpfNode).
    pub bpfnode_heartbeat: Duration,
}

impl Default for WorkConfig {
    fn default() -> Self {
        // Bounded: each reconcile holds its bytecode and an outbox entry per node while
        // it dispatches (and the fleet slots bound them by the fleet's size). All of a
        // hundred programs waiting together reach each node in a few calls, not one
        // each (docs/benchmarks.md).
        Self {
            resync_every: Duration::from_secs(60),
            reconcile_concurrency: DEFAULT_RECONCILE_CONCURRENCY,
            history_namespace: "bpfleet-system".into(),
            images: crate::image::ImageConfig { namespace: "bpfleet-system".into(), ..Default::default() },
            agent_pod_selector: None,
            unreachable_grace: crate::controller::DEFAULT_UNREACHABLE_GRACE,
            config_map_cache_bytes: crate::bytecode::MAX_CACHE_BYTES,
            prometheus_addresses: Vec::new(),
            bpfnode_heartbeat: crate::bpfnode::DEFAULT_HEARTBEAT,
        }
    }
}

/// Sets the leader gauges back when the unit ends or is dropped.
struct LeaderGauge(Arc<Metrics>);

impl Drop for LeaderGauge {
    fn drop(&mut self) {
        self.0.leader.set(0);
        self.0.caches_synced.set(0);
    }
}

/// Lead for one term of `epoch`. Runs until dropped.
pub async fn lead(client: Client, pool: AgentPool, metrics: Arc<Metrics>, epoch: u64, cfg: WorkConfig) {
    metrics.leader.set(1);
    metrics.epoch.set(epoch as i64);
    let _gauge = LeaderGauge(metrics.clone());

    let (nodes, node_writer) = reflector::store();
    let (config_maps, cm_writer) = reflector::store();
    let mut ctx = Context::new(client.clone(), pool, nodes, metrics.clone(), epoch);
    ctx.recorder = Some(crate::events::Recorder::new(client.clone(), "bpfleet-operator"));
    ctx.bytecode = BytecodeCache::new(Some(config_maps.clone()))
        .allowing(&cfg.history_namespace)
        .with_capacity(cfg.config_map_cache_bytes);
    ctx.history = History::new(client.clone(), cfg.history_namespace.clone());
    ctx.images = crate::image::ImageSource::registries(crate::image::Images::new(client.clone(), cfg.images.clone()));
    ctx.unreachable_grace = cfg.unreachable_grace;
    ctx.prometheus = crate::prometheus::Prometheus::new(cfg.prometheus_addresses.clone());
    ctx.bpfnodes = crate::bpfnode::Written::with_heartbeat(cfg.bpfnode_heartbeat);
    if cfg.agent_pod_selector.is_some() {
        ctx.agents = Arc::new(Agents::tracked());
    }
    let (pods_changed, pods_changed_rx) = mpsc::channel(256);
    ctx.pod_watches = Some(Arc::new(crate::pod_watch::PodWatches::new(client.clone(), pods_changed)));
    let ctx = Arc::new(ctx);

    let programs = Controller::new(
        Api::<BpfProgram>::all(client.clone()),
        watcher::Config::default().page_size(PROGRAM_PAGE_SIZE),
    )
    .with_config(kube::runtime::controller::Config::default().concurrency(cfg.reconcile_concurrency));
    let program_store = programs.store();
    let (trigger_tx, trigger_rx) = mpsc::channel(1);
    let (targeted_tx, targeted_rx) = mpsc::channel(1024);

    // Agent pods: a node whose agent turns Ready is read and sent its programs at once
    // (a fresh connection: no backoff left from before it listened); one whose agent
    // stops being Ready waits for it.
    let watch_agent_pods: BoxFuture<'static, ()> = match &cfg.agent_pod_selector {
        Some(selector) => {
            let c = ctx.clone();
            let (trigger, targeted) = (trigger_tx.clone(), targeted_tx.clone());
            let (_store, run) = agents::watch(
                client.clone(),
                &cfg.history_namespace,
                selector,
                ctx.agents.clone(),
                move |became_ready, lost| {
                    for node in &became_ready {
                        // Dial afresh (no backoff left from before it listened); an old
                        // outage is over: the node is asked again, not counted failed.
                        c.pool.forget(node);
                        c.index.clear_unreachable(node);
                        c.stale_bpfnodes.mark(node);
                    }
                    // Their BpfNodes say the agent is not reachable, and why.
                    for node in &lost {
                        c.stale_bpfnodes.mark(node);
                    }
                    // Only the programs that target these nodes are looked at again.
                    let changed: BTreeSet<&String> = became_ready.iter().chain(&lost).collect();
                    let desired = c.desired.read().unwrap_or_else(|e| e.into_inner());
                    for d in desired.values().filter(|d| d.targets.iter().any(|n| changed.contains(n))) {
                        if targeted.try_send(ObjectRef::new(&d.name)).is_err() {
                            let _ = trigger.try_send(());
                            break;
                        }
                    }
                },
            );
            Box::pin(run)
        }
        None => Box::pin(std::future::pending()),
    };

    let decide = {
        let (ctx, targeted_tx, program_store) = (ctx.clone(), targeted_tx.clone(), program_store.clone());
        async move {
            if ctx.nodes.wait_until_ready().await.is_err() || config_maps.wait_until_ready().await.is_err() {
                return;
            }
            ctx.agents.wait_synced().await;
            resync::initial_sync(&ctx).await;
            metrics.caches_synced.set(1);
            tracing::info!(epoch, "caches synced and agents listed: reconciling");
            futures::join!(
                controller::run(
                    ctx.clone(),
                    programs,
                    ReceiverStream::new(trigger_rx),
                    ReceiverStream::new(targeted_rx),
                    std::future::pending(),
                ),
                crate::agent_watch::watch_agents(ctx.clone(), targeted_tx.clone()),
                crate::bpfnode_follow::follow_bpfnodes(ctx.clone(), targeted_tx.clone()),
                resync::resync_loop(ctx.clone(), program_store, cfg.resync_every, targeted_tx),
            );
        }
    };
    let follow_pods = follow_pods(ctx.clone(), program_store.clone(), pods_changed_rx, targeted_tx.clone());
    futures::join!(
        follow_pods,
        crate::tenant::run(ctx.client.clone()),
        crate::nodes::watch_nodes(ctx.clone(), node_writer, trigger_tx),
        bytecode::watch_config_maps(client, cm_writer, program_store, targeted_tx, ctx.bytecode.sources()),
        watch_agent_pods,
        decide,
    );
}

/// Pods that start, stop or change labels in a namespace reconcile the programs that
/// attach in its pods; once a minute the pod watches are trimmed to the namespaces
/// programs still name.
async fn follow_pods(
    ctx: Arc<Context>,
    programs: reflector::Store<BpfProgram>,
    mut changed: mpsc::Receiver<String>,
    targeted: mpsc::Sender<ObjectRef<BpfProgram>>,
) {
    let mut trim = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            ns = changed.recv() => {
                let Some(ns) = ns else { return };
                for p in programs.state() {
                    if crate::pods::namespaces(&p.spec).contains(&ns) {
                        let _ = targeted.try_send(ObjectRef::from_obj(&*p));
                    }
                }
            }
            _ = trim.tick() => {
                let named: BTreeSet<String> = programs.state().iter().flat_map(|p| crate::pods::namespaces(&p.spec)).collect();
                if let Some(w) = &ctx.pod_watches {
                    w.keep(&named);
                }
            }
        }
    }
}
