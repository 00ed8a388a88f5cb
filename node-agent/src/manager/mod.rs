//! The agent's core: apply, remove and report owners. Operations on one owner are
//! serialized by that owner's lock; different owners proceed in parallel, and no lock is
//! held across the agent while the kernel verifies a program. What runs is reported in the
//! API's own type (`crds::NodeProgramStatus`, a BpfNode's program entry); `server.rs`
//! converts it to the wire.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crds::Health;
use crds::names::{GlobalName, OwnerUid};
use crds::pins::PinLayout;
use crds::revision::Revision;
use crds::rollout::MapPolicy;
use crds::validate::ValidProgram;
use crds::{NodeProgramStatus, ProgramSpec};
use tokio::sync::broadcast;

use crate::apply_plan;
use crate::attach::{TcBackend, TcPeer};
use crate::error::{AgentError, Reason, Result};
use crate::loader::Loader;
use crate::metrics::Metrics;
use crate::pods::PodRequest;
use crate::pods::resolve::PodResolver;
use crate::store::{LinkKind, OwnerRecord, StateStore};

mod execute;
mod lock;
mod pods;
mod state;

use pods::PodWork;
use state::bare_state;

/// Where the agent keeps things and how it attaches.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    pub bpffs_root: PathBuf,
    pub state_dir: PathBuf,
    pub tc_backend: TcBackend,
    /// The container runtime's CRI socket, where pods' network namespaces are found
    /// (`pods::resolve::DEFAULT_CRI_SOCKET` unless told otherwise).
    pub cri_socket: PathBuf,
    /// containerd's state directory, where running containers' root file systems are
    /// (`cri::DEFAULT_CONTAINERD_STATE_DIR` unless told otherwise).
    pub cri_state_dir: PathBuf,
    /// Most series `spec.metrics` export per program (`--max-metric-series-per-program`).
    pub max_metric_series: usize,
}

/// A change seen on the node, for Watch.
#[derive(Clone, Debug)]
pub struct Change {
    pub kind: ChangeKind,
    pub state: NodeProgramStatus,
    /// Why, in words.
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The owner's state changed (applied, adopted, health changed).
    Updated,
    /// Everything of the owner is gone.
    Removed,
}

/// A validated request to run one revision of an owner.
#[derive(Clone, Debug)]
pub struct ApplyInput {
    pub uid: OwnerUid,
    pub name: String,
    pub revision: Revision,
    pub bytecode: Vec<u8>,
    pub programs: Vec<ValidProgram>,
    /// The programs as requested, kept in the record.
    pub spec: Vec<ProgramSpec>,
    pub globals: Vec<(GlobalName, Vec<u8>)>,
    /// Per-map policies across revisions (`spec.maps`); maps not named keep compatible
    /// contents.
    pub maps: Vec<MapPolicy>,
    /// The pods the programs with `in_pods` attach in (checked by `pods::check_pods`). Not
    /// part of the revision.
    pub pods: Vec<PodRequest>,
    /// `spec.metrics`: maps exported on /metrics (part of the revision).
    pub metrics: Vec<crds::metrics::MetricSpec>,
    /// The uid of each owner whose maps `maps[].from` uses, by its program name.
    pub map_owners: BTreeMap<String, OwnerUid>,
}

/// What the agent knows of one owner.
#[derive(Clone, Debug, Default)]
struct Entry {
    /// What runs (None: nothing, e.g. the first apply failed).
    record: Option<OwnerRecord>,
    name: String,
    health: Option<Health>,
    /// The revision whose apply failed, and why.
    failure: Option<(String, AgentError)>,
    /// Its record could not be used at start-up (why): the pins stay, Apply is refused
    /// until the owner is removed (or the record restored and the agent restarted).
    set_aside: Option<String>,
    /// `spec.metrics` not exported whole at the last scrape, with why.
    metrics_notes: Vec<String>,
}

/// The agent's core, one per node: what each owner (a BpfProgram, by uid) runs here, in
/// memory and in the state directory. `apply` asks `apply_plan` what an Apply must do and
/// has `execute` carry it out; `remove` takes an owner away; `state_of`, `list` and the
/// `subscribe` stream report what runs, with health read from the kernel (`refresh_health`
/// heals what an interface coming back needs). Built by `new`, filled by `recovery::adopt`
/// at start-up; the gRPC server, standalone mode and metrics all use it through an `Arc`.
pub struct Manager {
    cfg: AgentConfig,
    layout: PinLayout,
    loader: Loader,
    store: StateStore,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    entries: RwLock<BTreeMap<String, Entry>>,
    events: broadcast::Sender<Change>,
    /// Where pods' network namespaces are found (the runtime at `cfg.cri_socket`).
    pod_resolver: PodResolver,
    pub metrics: Metrics,
}

impl Manager {
    /// Open the state directory and bpffs root; does not adopt anything yet (see
    /// `recovery::adopt`).
    pub fn new(cfg: AgentConfig) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&cfg.bpffs_root)
            .map_err(|e| anyhow::anyhow!("cannot create bpffs root {}: {e}", cfg.bpffs_root.display()))?;
        let store = StateStore::open(&cfg.state_dir)
            .map_err(|e| anyhow::anyhow!("cannot open state directory {}: {e}", cfg.state_dir.display()))?;
        let (events, _) = broadcast::channel(256);
        Ok(Arc::new(Self {
            layout: PinLayout::new(&cfg.bpffs_root),
            loader: Loader::new(),
            store,
            locks: Mutex::default(),
            entries: RwLock::default(),
            events,
            pod_resolver: PodResolver::new(&cfg.cri_socket, &cfg.cri_state_dir),
            metrics: Metrics::new(),
            cfg,
        }))
    }

    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.events.subscribe()
    }

    fn entry(&self, uid: &str) -> Option<Entry> {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).get(uid).cloned()
    }

    fn set_entry(&self, uid: &str, entry: Option<Entry>) {
        let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
        match entry {
            Some(e) => map.insert(uid.to_string(), e),
            None => map.remove(uid),
        };
        let records: Vec<&OwnerRecord> = map.values().filter_map(|e| e.record.as_ref()).collect();
        self.metrics.set_managed(&records);
    }

    /// An owner whose record could not be used at start-up (see `recovery`).
    pub(crate) fn adopt_set_aside(&self, uid: &OwnerUid, reason: String) {
        let entry = Entry { set_aside: Some(reason), health: Some(Health::Degraded), ..Default::default() };
        self.set_entry(uid.as_str(), Some(entry));
    }

    /// Records adopted at start-up (see `recovery`).
    pub(crate) fn adopt(&self, record: OwnerRecord) {
        let uid = record.uid.clone();
        let name = record.name.clone();
        let health = Some(self.check_health(&record).0);
        self.set_entry(&uid, Some(Entry { record: Some(record), name, health, ..Default::default() }));
    }

    /// Run `input.revision` for its owner. Returns the state and whether anything changed.
    ///
    /// The work runs as its own task that holds the owner's lock and updates the entry:
    /// when the caller goes away (the operator's call timeout on a slow verifier), the
    /// apply still finishes and records what it did, and a retry waits for it and then
    /// finds it done, instead of running beside it or tearing down what it committed.
    pub async fn apply(self: &Arc<Self>, input: ApplyInput) -> Result<(NodeProgramStatus, bool)> {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.apply_owned(input).await })
            .await
            .unwrap_or_else(|e| Err(AgentError::internal(format!("apply task failed: {e}"))))
    }

    async fn apply_owned(self: Arc<Self>, input: ApplyInput) -> Result<(NodeProgramStatus, bool)> {
        let _lock = self.lock_owner(input.uid.as_str()).await;
        Arc::clone(&self).apply_locked(input).await
    }

    async fn apply_locked(self: Arc<Self>, input: ApplyInput) -> Result<(NodeProgramStatus, bool)> {
        let uid = input.uid.to_string();
        let current = self.entry(&uid).unwrap_or_default();
        let problems = current.record.as_ref().map(crate::health::check).unwrap_or_default();
        let now = apply_plan::Current {
            record: current.record.as_ref(),
            set_aside: current.set_aside.as_deref(),
            problems: &problems,
        };
        match apply_plan::plan(&now, input.revision.as_str()) {
            apply_plan::ApplyPlan::Refuse(why) => Err(AgentError::new(
                Reason::RecordSetAside,
                format!(
                    "owner {uid} is not changed while {why}: remove the BpfProgram (or restore the record and \
                     restart the agent) to replace what runs"
                ),
            )),
            // The revision runs: the pods may still change (the pod set is no part of it).
            apply_plan::ApplyPlan::Keep => {
                let pods = self.prepare_pods(&input, current.record.as_ref(), None).await;
                let state = self.keep(&uid, current, &input.revision);
                if pods.is_noop() {
                    return Ok((state, false));
                }
                self.sync_pods(&uid, pods, "pods changed").await
            }
            apply_plan::ApplyPlan::Repair(problems) => {
                let pods = self.prepare_pods(&input, current.record.as_ref(), None).await;
                let repaired = Arc::clone(&self).repair(&uid, current, problems).await?;
                if pods.is_noop() {
                    return Ok(repaired);
                }
                let (state, _) = self.sync_pods(&uid, pods, "pods changed").await?;
                Ok((state, true))
            }
            // A new revision's pods take over the running one's pod links; a rebuilt one
            // (torn down first) attaches in every pod afresh.
            apply_plan::ApplyPlan::Load { rebuild } => {
                let previous = if rebuild { None } else { current.record.as_ref() };
                let pods = self.prepare_pods(&input, None, previous).await;
                self.load(input, current, rebuild, pods).await
            }
        }
    }

    /// The revision runs, healthy. Also a revert to it after a newer revision failed:
    /// forget that failure.
    fn keep(&self, uid: &str, current: Entry, revision: &Revision) -> NodeProgramStatus {
        if current.failure.is_some() {
            let mut entry = current;
            entry.failure = None;
            entry.health = Some(Health::Healthy);
            self.set_entry(uid, Some(entry));
            if let Some(state) = self.state_of(uid) {
                self.emit(ChangeKind::Updated, state, format!("revision {revision} runs"));
            }
        }
        self.state_or_bare(uid)
    }

    /// Re-attach the broken hooks of the revision that runs.
    async fn repair(
        self: Arc<Self>,
        uid: &str,
        current: Entry,
        problems: Vec<crate::health::Problem>,
    ) -> Result<(NodeProgramStatus, bool)> {
        let Some(rec) = current.record.clone() else { unreachable!("a repair needs a record") };
        let this = Arc::clone(&self);
        let record = tokio::task::spawn_blocking(move || this.repair_blocking(&rec, &problems))
            .await
            .unwrap_or_else(|e| Err(AgentError::internal(format!("repair task failed: {e}"))))?;
        let mut entry = current;
        entry.record = Some(record);
        entry.health = Some(Health::Healthy);
        entry.failure = None;
        self.set_entry(uid, Some(entry));
        let state = self.state_or_bare(uid);
        self.emit(ChangeKind::Updated, state.clone(), "broken hooks re-attached".into());
        Ok((state, true))
    }

    /// Load and attach `input.revision` (`rebuild`: over the running revision, torn down
    /// first), and record the outcome.
    async fn load(
        self: Arc<Self>,
        input: ApplyInput,
        current: Entry,
        rebuild: bool,
        pods: PodWork,
    ) -> Result<(NodeProgramStatus, bool)> {
        let started = Instant::now();
        let running = current.record.clone();
        // On this worker thread, which already runs (tokio moves its other tasks away):
        // handing the load to a parked blocking thread would add a wake-up to every Apply.
        let result = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.load_blocking(&input, running.as_ref(), rebuild, &pods))
            }
            _ => {
                let (this, input2) = (Arc::clone(&self), input.clone());
                tokio::task::spawn_blocking(move || this.load_blocking(&input2, running.as_ref(), rebuild, &pods))
                    .await
                    .unwrap_or_else(|e| Err(AgentError::internal(format!("apply task failed: {e}"))))
            }
        };
        self.metrics.observe_apply(started.elapsed(), result.as_ref().err().map(|e| e.reason));
        match result {
            Ok(record) => Ok((self.applied(&input, record), true)),
            Err(e) => Err(self.failed(&input, current, rebuild, e)),
        }
    }

    /// The revision runs: it is what the owner runs now, healthy.
    fn applied(&self, input: &ApplyInput, record: OwnerRecord) -> NodeProgramStatus {
        let uid = input.uid.as_str();
        tracing::info!(owner = %input.name, uid = %uid, revision = %input.revision, "applied");
        let entry = Entry {
            record: Some(record),
            name: input.name.clone(),
            health: Some(Health::Healthy),
            // A new revision is judged by its own first scrape.
            ..Default::default()
        };
        self.set_entry(uid, Some(entry));
        let state = self.state_or_bare(uid);
        self.emit(ChangeKind::Updated, state.clone(), format!("revision {} applied", input.revision));
        state
    }

    /// The load failed and was rolled back: what ran before still runs (unless a rebuild
    /// tore it down), and the owner's state says why the revision does not.
    fn failed(&self, input: &ApplyInput, current: Entry, rebuild: bool, e: AgentError) -> AgentError {
        let uid = input.uid.as_str();
        tracing::warn!(owner = %input.name, uid = %uid, revision = %input.revision, error = %e, "apply failed");
        let mut entry = current;
        if rebuild {
            entry.record = None;
        }
        entry.name = input.name.clone();
        entry.failure = Some((input.revision.to_string(), e.clone()));
        self.set_entry(uid, Some(entry));
        if let Some(state) = self.state_of(uid) {
            self.emit(ChangeKind::Updated, state, e.to_string());
        }
        e
    }

    /// Remove everything of an owner. Returns whether there was anything. Like `apply`,
    /// the work finishes and is recorded even if the caller goes away.
    pub async fn remove(self: &Arc<Self>, uid: &OwnerUid) -> Result<bool> {
        let (this, uid) = (Arc::clone(self), uid.clone());
        tokio::spawn(async move { this.remove_owned(&uid).await })
            .await
            .unwrap_or_else(|e| Err(AgentError::internal(format!("remove task failed: {e}"))))
    }

    async fn remove_owned(self: Arc<Self>, uid: &OwnerUid) -> Result<bool> {
        let _lock = self.lock_owner(uid.as_str()).await;
        Arc::clone(&self).remove_locked(uid).await
    }

    async fn remove_locked(self: Arc<Self>, uid: &OwnerUid) -> Result<bool> {
        let entry = self.entry(uid.as_str());
        let owner_dir = self.layout.owner_dir(uid);
        let existed = entry.is_some() || owner_dir.exists();
        let this = Arc::clone(&self);
        let uid2 = uid.clone();
        let record = entry.as_ref().and_then(|e| e.record.clone());
        tokio::task::spawn_blocking(move || this.remove_blocking(&uid2, record.as_ref()))
            .await
            .unwrap_or_else(|e| Err(AgentError::internal(format!("remove task failed: {e}"))))?;
        self.set_entry(uid.as_str(), None);
        if existed {
            let state = bare_state(uid.as_str(), entry.map(|e| e.name).unwrap_or_default());
            self.emit(ChangeKind::Removed, state, "removed".into());
            tracing::info!(uid = %uid, "removed");
        }
        Ok(existed)
    }

    pub(crate) fn remove_blocking(&self, uid: &OwnerUid, record: Option<&OwnerRecord>) -> Result<()> {
        if let Some(r) = record {
            self.remove_revision(r, None);
        }
        crate::fault::point("remove-after-detach", uid.as_str());
        let dir = self.layout.owner_dir(uid);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(AgentError::internal(format!("cannot remove {}: {e}", dir.display())));
            }
            _ => {}
        }
        crate::fault::point("remove-after-unpin", uid.as_str());
        self.store.delete(uid).map_err(|e| AgentError::internal(format!("cannot delete owner record: {e}")))
    }

    /// TCX programs of every owner, for priority ordering.
    fn tc_peers(&self) -> Vec<TcPeer> {
        let map = self.entries.read().unwrap_or_else(|p| p.into_inner());
        map.values().filter_map(|e| e.record.as_ref()).flat_map(|r| r.programs.iter()).flat_map(tcx_peers).collect()
    }

    /// Health from the kernel's point of view (see `health`): every program pinned,
    /// every link alive, running its program, on its interface as it exists now.
    fn check_health(&self, record: &OwnerRecord) -> (Health, Option<String>) {
        match crate::health::check(record).into_iter().next() {
            None => (Health::Healthy, None),
            Some(p) => (Health::Degraded, Some(p.why)),
        }
    }

    /// Re-attach what an interface coming back needs, for every owner not busy with an
    /// apply or removal: the agent heals this on its own, without waiting for a request.
    fn heal_interfaces(&self) {
        let snapshot: Vec<(String, OwnerRecord)> = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(k, v)| v.record.clone().map(|r| (k.clone(), r)))
            .collect();
        for (uid, record) in snapshot {
            let problems: Vec<crate::health::Problem> = crate::health::check(&record)
                .into_iter()
                .filter(|p| p.kind == crate::health::ProblemKind::InterfaceRecreated)
                .collect();
            if problems.is_empty() {
                continue;
            }
            let Some(_lock) = self.try_lock_owner(&uid) else { continue };
            // Still the same record under the lock?
            let current = self.entry(&uid).and_then(|e| e.record);
            if current.as_ref() != Some(&record) {
                continue;
            }
            match self.repair_blocking(&record, &problems) {
                Ok(repaired) => {
                    let hooks: Vec<String> = problems
                        .iter()
                        .map(|p| record.programs[p.program].links[p.link.unwrap_or(0)].hook.clone())
                        .collect();
                    tracing::info!(uid = %uid, ?hooks, "re-attached to re-created interfaces");
                    let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
                    if let Some(e) = map.get_mut(&uid) {
                        e.record = Some(repaired);
                    }
                }
                Err(e) => tracing::warn!(uid = %uid, error = %e, "cannot re-attach to a re-created interface"),
            }
        }
    }

    /// Re-check every owner's health, heal what an interface coming back needs, and
    /// report changes on the Watch stream.
    pub fn refresh_health(&self) {
        self.heal_interfaces();
        let snapshot: Vec<(String, Entry)> = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (uid, entry) in snapshot {
            let Some(record) = &entry.record else { continue };
            let (health, why) = self.check_health(record);
            if entry.health != Some(health) {
                {
                    let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
                    if let Some(e) = map.get_mut(&uid) {
                        e.health = Some(health);
                    }
                }
                if let Some(state) = self.state_of(&uid) {
                    self.emit(ChangeKind::Updated, state, why.unwrap_or_else(|| "healthy again".into()));
                }
            }
        }
    }

    /// What the last scrape could not export whole, per owner uid (absent: all of it):
    /// kept for each owner's state, and a change reported where it differs from before.
    pub fn set_metrics_notes(&self, notes: &BTreeMap<String, Vec<String>>) {
        let changed: Vec<String> = {
            let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
            map.iter_mut()
                .filter_map(|(uid, e)| {
                    let now = notes.get(uid).cloned().unwrap_or_default();
                    (e.metrics_notes != now).then(|| {
                        e.metrics_notes = now;
                        uid.clone()
                    })
                })
                .collect()
        };
        for uid in changed {
            if let Some(state) = self.state_of(&uid) {
                let why = if state.metrics_limited.is_empty() { "every metric exported" } else { "metrics cut" };
                self.emit(ChangeKind::Updated, state, why.into());
            }
        }
    }

    fn emit(&self, kind: ChangeKind, state: NodeProgramStatus, reason: String) {
        let _ = self.events.send(Change { kind, state, reason });
    }
}

impl crate::metrics::Scraped for Manager {
    fn bpffs_root(&self) -> &std::path::Path {
        &self.cfg.bpffs_root
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn records(&self) -> Vec<OwnerRecord> {
        Manager::records(self)
    }

    fn export(&self, records: &[OwnerRecord]) -> String {
        let exported = crate::export::export(records, self.cfg.max_metric_series);
        self.set_metrics_notes(&exported.notes);
        exported.text
    }
}

/// The TCX attachments of one program, as ordering peers.
fn tcx_peers(p: &crate::store::ProgramRecord) -> Vec<TcPeer> {
    p.links
        .iter()
        .filter_map(|l| match &l.kind {
            LinkKind::Tcx { interface, direction, priority, .. } => Some(TcPeer {
                interface: interface.clone(),
                direction: *direction,
                priority: *priority,
                program_id: p.program_id,
            }),
            _ => None,
        })
        .collect()
}
