//! What every node's agent runs, as last reported (Apply answers, List, Watch). Plain
//! data behind one lock, held only for map updates; decisions read snapshots of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use crds::Health;
use crds::node::NodeProgramStatus;
use k8s_openapi::jiff::Timestamp;

use crate::plan::Observed;
use crate::reports::AgentList;
use crate::status::{FailReason, NodeOutcome};

/// What one node runs of one owner, as the index keeps it: the owner and the revision as
/// numbers ([`Ids`]: each uid and revision string is kept once, however many nodes run
/// it), and the health: 12 bytes a (node, owner) pair, so thousands of programs on
/// thousands of nodes fit in tens of MiB (docs/benchmarks.md, the operator at fleet
/// scale). The rare rest (an error message, pods) is in [`NodeEntry::extras`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Runs {
    owner: u32,
    revision: u32,
    health: Health,
}

/// What few (node, owner) pairs have: an error message, pods, a name other than the one
/// the owner's first reporter gave (a node cannot rename an owner for the others).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Extra {
    name: Option<Box<str>>,
    last_error: Option<Box<str>>,
    /// The pods it is attached in (programs with `pods`).
    pods: PodTally,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.name.is_none() && self.last_error.is_none() && self.pods == PodTally::default()
    }
}

/// What a node reports of an owner's pods, in a few numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodTally {
    /// [`pod_digest`] of the pods it is attached in.
    pub attached: u64,
    /// [`proto::pods_hash`] of what the agent reported of them (0 for no pod), part of the
    /// node digest as the agent computes it.
    pub reported: u64,
    /// Pods reported, and of those not (fully) attached.
    pub total: u32,
    pub failed: u32,
}

/// One number for a set of pod uids (0 for none), whatever their order.
pub fn pod_digest<'a>(uids: impl IntoIterator<Item = &'a str>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut sorted: Vec<&str> = uids.into_iter().collect();
    if sorted.is_empty() {
        return 0;
    }
    sorted.sort_unstable();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sorted.hash(&mut h);
    h.finish()
}

impl PodTally {
    fn of(owner_uid: &str, pods: &[crds::node::PodAttachment]) -> PodTally {
        PodTally {
            attached: pod_digest(pods.iter().filter(|p| p.reason.is_none()).map(|p| p.uid.as_str())),
            reported: proto::pods_hash(owner_uid, pods),
            total: pods.len() as u32,
            failed: pods.iter().filter(|p| p.reason.is_some()).count() as u32,
        }
    }
}

/// A number for each distinct string held (uids, revisions), counted by the pairs that
/// hold it; a number nobody holds is given to the next new string.
#[derive(Debug, Default)]
struct Ids {
    strings: Vec<(Option<Arc<str>>, u32)>,
    by_string: HashMap<Arc<str>, u32>,
    free: Vec<u32>,
}

impl Ids {
    /// The number of `s`, counted once more.
    fn acquire(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.by_string.get(s) {
            self.strings[id as usize].1 += 1;
            return id;
        }
        let shared: Arc<str> = Arc::from(s);
        let id = match self.free.pop() {
            Some(id) => {
                self.strings[id as usize] = (Some(shared.clone()), 1);
                id
            }
            None => {
                self.strings.push((Some(shared.clone()), 1));
                (self.strings.len() - 1) as u32
            }
        };
        self.by_string.insert(shared, id);
        id
    }

    /// One holder of `id` fewer.
    fn release(&mut self, id: u32) {
        let slot = &mut self.strings[id as usize];
        slot.1 -= 1;
        if slot.1 == 0
            && let Some(s) = slot.0.take()
        {
            self.by_string.remove(&s);
            self.free.push(id);
        }
    }

    /// How many pairs hold `id`.
    fn holders(&self, id: u32) -> u32 {
        self.strings[id as usize].1
    }

    /// The number of `s`, if some pair holds it.
    fn find(&self, s: &str) -> Option<u32> {
        self.by_string.get(s).copied()
    }

    fn get(&self, id: u32) -> &str {
        self.strings[id as usize].0.as_deref().unwrap_or_default()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_string.len()
    }
}

/// The strings of the index: uids and revisions by number, and each owner's name.
#[derive(Debug, Default)]
struct Tables {
    owners: Ids,
    /// By owner number: the BpfProgram name its nodes report.
    names: Vec<Arc<str>>,
    revisions: Ids,
}

impl Tables {
    /// `s` as the index keeps it (numbers counted once more), with its rare rest; None
    /// for an owner that runs no revision.
    fn acquire(&mut self, s: &NodeProgramStatus) -> Option<(Runs, Extra)> {
        if s.revision.is_empty() {
            return None;
        }
        let owner = self.owners.acquire(&s.owner_uid);
        let i = owner as usize;
        if self.names.len() <= i {
            self.names.resize(i + 1, Arc::from(""));
        }
        // The first holder of a uid names it; a node that reports another name keeps its own.
        if self.owners.holders(owner) == 1 {
            self.names[i] = Arc::from(s.owner.as_str());
        }
        let name = (*self.names[i] != *s.owner).then(|| s.owner.as_str().into());
        let revision = self.revisions.acquire(&s.revision);
        let extra = Extra {
            name,
            last_error: s.last_error.as_deref().map(Into::into),
            pods: PodTally::of(&s.owner_uid, &s.pods),
        };
        Some((Runs { owner, revision, health: s.health }, extra))
    }

    fn release(&mut self, r: Runs) {
        self.owners.release(r.owner);
        self.revisions.release(r.revision);
    }

    fn uid(&self, r: &Runs) -> &str {
        self.owners.get(r.owner)
    }

    fn name(&self, r: &Runs) -> &str {
        self.names.get(r.owner as usize).map_or("", |n| n)
    }

    fn revision(&self, r: &Runs) -> &str {
        self.revisions.get(r.revision)
    }
}

/// The last apply of one owner on one node failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub revision: String,
    pub outcome: NodeOutcome,
    /// Consecutive failed applies of this revision (0 when the agent was unreachable:
    /// the connection pool backs off from those by itself).
    pub attempts: u32,
    /// No new apply of this revision before this time.
    pub next_try: Option<Timestamp>,
    /// When this outcome began: for an unreachable agent, the first failed call of the
    /// current outage (the grace period before it counts as failed runs from here).
    pub since: Timestamp,
}

#[derive(Clone, Debug, Default)]
struct NodeEntry {
    /// What runs, by owner number.
    owners: Vec<Runs>,
    /// Owner number -> the rare rest of what runs (only where there is some).
    extras: BTreeMap<u32, Extra>,
    /// Owner uid -> why the last apply of it failed.
    failures: BTreeMap<String, Failure>,
    agent_version: Option<String>,
    kernel_release: Option<String>,
    /// The digest ([`proto::NodeDigest`]) of the last List read in full, once one was:
    /// `owners` is then complete, not partial.
    listed_digest: Option<u64>,
    /// The BpfNode could not be written from the last full List: the next resync reads
    /// the node in full again, whatever its digest.
    relist: bool,
    last_report_time: Option<String>,
}

impl NodeEntry {
    /// What runs of owner number `owner`.
    fn runs(&self, owner: Option<u32>) -> Option<&Runs> {
        let owner = owner?;
        self.owners.binary_search_by_key(&owner, |r| r.owner).ok().map(|i| &self.owners[i])
    }

    fn extra(&self, owner: u32) -> Option<&Extra> {
        self.extras.get(&owner)
    }

    /// The name this node reports for what runs.
    fn name<'a>(&'a self, t: &'a Tables, r: &Runs) -> &'a str {
        self.extra(r.owner).and_then(|x| x.name.as_deref()).unwrap_or_else(|| t.name(r))
    }

    /// Puts what runs of owner number `owner` (None: nothing) in place of what ran;
    /// returns what ran (whose numbers the caller releases).
    fn replace(&mut self, owner: u32, new: Option<(Runs, Extra)>) -> Option<(Runs, Extra)> {
        let old = match (self.owners.binary_search_by_key(&owner, |r| r.owner), &new) {
            (Ok(i), Some((r, _))) => Some(std::mem::replace(&mut self.owners[i], *r)),
            (Ok(i), None) => Some(self.owners.remove(i)),
            (Err(i), Some((r, _))) => {
                self.owners.insert(i, *r);
                None
            }
            (Err(_), None) => None,
        };
        let old_extra = match new {
            Some((_, extra)) if !extra.is_empty() => self.extras.insert(owner, extra),
            _ => self.extras.remove(&owner),
        };
        old.map(|r| (r, old_extra.unwrap_or_default()))
    }

    /// Forgets every owner (their numbers released).
    fn clear(&mut self, tables: &mut Tables) {
        for r in self.owners.drain(..) {
            tables.release(r);
        }
        self.extras.clear();
    }

    /// The digest of what the index says this node runs.
    fn digest(&self, t: &Tables) -> u64 {
        let mut d = proto::NodeDigest::default();
        for r in &self.owners {
            d.add(t.uid(r), self.name(t, r), t.revision(r), r.health);
            d.add_pods_hash(self.extra(r.owner).map_or(0, |x| x.pods.reported));
        }
        d.value()
    }

    fn listed(&self) -> bool {
        self.listed_digest.is_some()
    }

    /// How this node stands with revision `want` of `uid`: a failure of that revision,
    /// else what the node reports.
    fn outcome(&self, t: &Tables, uid: &str, want: &str) -> NodeOutcome {
        self.outcome_of(t, t.owners.find(uid), uid, want)
    }

    /// [`NodeEntry::outcome`] with the owner's number (`owner`, of `uid`) found once.
    fn outcome_of(&self, t: &Tables, owner: Option<u32>, uid: &str, want: &str) -> NodeOutcome {
        if let Some(f) = self.failures.get(uid)
            && f.revision == want
        {
            return f.outcome.clone();
        }
        match self.runs(owner) {
            Some(r) if t.revision(r) == want && r.health == Health::Healthy => NodeOutcome::Ready,
            Some(r) if t.revision(r) == want => NodeOutcome::Failed {
                program: None,
                reason: FailReason::Health(r.health),
                message: self
                    .extra(r.owner)
                    .and_then(|x| x.last_error.as_deref())
                    .unwrap_or("the agent reports a problem")
                    .to_string(),
            },
            _ => NodeOutcome::Pending,
        }
    }
}

/// What the index holds of one revision of one owner on every node, read at once
/// ([`NodeIndex::snapshot`]): plain data for the pure decisions in [`crate::sends`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Per node, what runs of the owner.
    pub observed: BTreeMap<String, Observed>,
    /// Per node, how it stands with the revision; a node not here is `Pending`.
    pub outcomes: BTreeMap<String, NodeOutcome>,
    /// Nodes that failed the revision: failed applies in a row, and not before when again.
    pub retries: BTreeMap<String, (u32, Timestamp)>,
    /// Nodes whose agent did not answer about the revision: since when.
    pub unreachable_since: BTreeMap<String, Timestamp>,
    /// Nodes whose agent has ever answered this operator.
    pub answered: BTreeSet<String>,
    /// Per node that reports pods of the owner: which and how many.
    pub pods: BTreeMap<String, PodTally>,
}

impl Snapshot {
    /// How `node` stands with the revision.
    pub fn outcome(&self, node: &str) -> NodeOutcome {
        self.outcomes.get(node).cloned().unwrap_or(NodeOutcome::Pending)
    }

    /// Nodes that must not be sent the revision before a time (their backoff).
    pub fn holds(&self, now: Timestamp) -> BTreeSet<String> {
        self.retries.iter().filter(|(_, (_, t))| *t > now).map(|(n, _)| n.clone()).collect()
    }
}

/// What every node's agent runs, as last reported, and why the last apply of each owner
/// failed there. Fed by Apply answers, Lists and Watch events (already in the operator's
/// types, see [`crate::reports`]); read by reconciles through [`NodeIndex::snapshot`] and
/// by the resync's drift check.
#[derive(Debug, Default)]
pub struct NodeIndex {
    nodes: RwLock<Nodes>,
}

#[derive(Debug, Default)]
struct Nodes {
    map: BTreeMap<String, NodeEntry>,
    tables: Tables,
}

/// One owner as a node reported it, for the drift check ([`crate::drift::diff`]).
#[derive(Clone, Copy, Debug)]
pub struct Reported<'a> {
    pub uid: &'a str,
    pub name: &'a str,
    pub revision: &'a str,
    pub health: Health,
    pub last_error: &'a str,
}

impl<'a> Reported<'a> {
    /// From a List answer.
    pub fn of_status(s: &'a NodeProgramStatus) -> Self {
        Reported {
            uid: &s.owner_uid,
            name: &s.owner,
            revision: &s.revision,
            health: s.health,
            last_error: s.last_error.as_deref().unwrap_or(""),
        }
    }
}

fn now_rfc3339() -> String {
    Timestamp::now().to_string()
}

impl NodeIndex {
    fn write<R>(&self, f: impl FnOnce(&mut Nodes) -> R) -> R {
        f(&mut self.nodes.write().unwrap_or_else(|p| p.into_inner()))
    }

    fn read<R>(&self, f: impl FnOnce(&BTreeMap<String, NodeEntry>, &Tables) -> R) -> R {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        f(&nodes.map, &nodes.tables)
    }

    /// An Apply answered, or a Watch event came: the owner's state on that node.
    /// Returns whether this changes what is known (status must be recomputed).
    pub fn record_state(&self, node: &str, state: &NodeProgramStatus) -> bool {
        let uid = &state.owner_uid;
        self.write(|Nodes { map, tables }| {
            let new = tables.acquire(state);
            let e = map.entry(node.to_string()).or_default();
            // Any report means the agent is reachable; a failed revision stays failed (with
            // its backoff) until the node reports it running healthy.
            let clears = |f: &Failure| match &f.outcome {
                NodeOutcome::Unreachable { .. } => true,
                _ => new.is_some() && state.revision == f.revision && state.health == Health::Healthy,
            };
            let cleared = e.failures.get(uid).is_some_and(clears) && e.failures.remove(uid).is_some();
            e.last_report_time = Some(now_rfc3339());
            let owner = new.as_ref().map(|(r, _)| r.owner).or_else(|| tables.owners.find(uid));
            let old = owner.and_then(|o| e.replace(o, new.clone()));
            let changed = old != new;
            if let Some((r, _)) = old {
                tables.release(r);
            }
            cleared || changed
        })
    }

    /// The node's agent cannot be reached: every program it should run is in doubt.
    /// Returns the uids whose outcome this changes.
    pub fn record_unreachable<'a>(
        &self,
        node: &str,
        wanted: impl Iterator<Item = (&'a str, &'a str)>,
        message: &str,
    ) -> Vec<String> {
        let outcome = NodeOutcome::Unreachable { message: message.to_string() };
        let mut changed = Vec::new();
        let now = Timestamp::now();
        for (uid, revision) in wanted {
            if self.outcome(node, uid, revision) != outcome {
                self.record_failure(node, uid, revision, outcome.clone(), now);
                changed.push(uid.to_string());
            }
        }
        changed
    }

    /// An Apply of `revision` failed on `node` at `now`. An answer from the agent (the
    /// verifier refused it, an interface is missing) backs this (node, revision) off:
    /// each further failure of the same revision doubles the wait (see
    /// [`crate::plan::retry_delay`]); a new revision starts again at once.
    pub fn record_failure(&self, node: &str, uid: &str, revision: &str, outcome: NodeOutcome, now: Timestamp) {
        self.write(|n| {
            let failures = &mut n.map.entry(node.to_string()).or_default().failures;
            let prev = failures.get(uid).filter(|f| f.revision == revision).map(|f| f.attempts).unwrap_or(0);
            // An outage goes on across revisions: it began at its first failed call.
            let since = match (&outcome, failures.get(uid)) {
                (NodeOutcome::Unreachable { .. }, Some(f)) if matches!(f.outcome, NodeOutcome::Unreachable { .. }) => {
                    f.since
                }
                _ => now,
            };
            let (attempts, next_try) = match outcome {
                NodeOutcome::Failed { .. } => {
                    let n = prev + 1;
                    let delay = crate::plan::retry_delay(n);
                    (n, now.checked_add(jiff_span(delay)).ok())
                }
                _ => (prev, None),
            };
            failures.insert(
                uid.to_string(),
                Failure { revision: revision.to_string(), outcome, attempts, next_try, since },
            );
        })
    }

    /// A `retry` of `uid`'s rollout: its failed applies are forgotten, so every node that
    /// failed is tried again at once (an unreachable node stays unreachable until it answers).
    pub fn forget_failures(&self, uid: &str) {
        self.write(|n| {
            for e in n.map.values_mut() {
                if e.failures.get(uid).is_some_and(|f| matches!(f.outcome, NodeOutcome::Failed { .. })) {
                    e.failures.remove(uid);
                }
            }
        })
    }

    /// Nodes that must not be sent `revision` of `uid` before a time (their backoff).
    pub fn retry_holds(&self, uid: &str, revision: &str, now: Timestamp) -> BTreeMap<String, Timestamp> {
        self.read(|m, _| {
            m.iter()
                .filter_map(|(n, e)| {
                    let f = e.failures.get(uid).filter(|f| f.revision == revision)?;
                    f.next_try.filter(|t| *t > now).map(|t| (n.clone(), t))
                })
                .collect()
        })
    }

    /// How often `node` failed `revision` of `uid` in a row, and when it is tried next.
    pub fn retry_of(&self, node: &str, uid: &str, revision: &str) -> Option<(u32, Timestamp)> {
        self.read(|m, _| {
            let f = m.get(node)?.failures.get(uid).filter(|f| f.revision == revision)?;
            Some((f.attempts, f.next_try?))
        })
    }

    /// Since when `node`'s agent has not answered, as far as revision `want` of `uid`
    /// knows (`None`: it answers, or was never asked).
    pub fn unreachable_since(&self, node: &str, uid: &str, want: &str) -> Option<Timestamp> {
        self.read(|m, _| {
            let f = m.get(node)?.failures.get(uid).filter(|f| f.revision == want)?;
            matches!(f.outcome, NodeOutcome::Unreachable { .. }).then_some(f.since)
        })
    }

    /// `node`'s agent is Ready again: an earlier "unreachable" is over (it is asked again
    /// rather than counted failed until it answers).
    pub fn clear_unreachable(&self, node: &str) {
        self.write(|n| {
            if let Some(e) = n.map.get_mut(node) {
                e.failures.retain(|_, f| !matches!(f.outcome, NodeOutcome::Unreachable { .. }));
            }
        })
    }

    /// Whether `node`'s agent has ever answered this operator (an Apply, a List).
    pub fn has_answered(&self, node: &str) -> bool {
        self.read(|m, _| m.get(node).is_some_and(|e| e.last_report_time.is_some()))
    }

    /// A Remove succeeded.
    pub fn record_removed(&self, node: &str, uid: &str) {
        self.write(|Nodes { map, tables }| {
            if let Some(e) = map.get_mut(node) {
                if let Some(owner) = tables.owners.find(uid)
                    && let Some((r, _)) = e.replace(owner, None)
                {
                    tables.release(r);
                }
                e.failures.remove(uid);
            }
        })
    }

    /// A full List: replaces what is known of the node. Returns the owners whose
    /// "agent unreachable" outcome this clears, and those whose state on the node it
    /// changes (their status must be recomputed).
    pub fn record_list(&self, node: &str, list: &AgentList) -> Vec<String> {
        self.write(|Nodes { map, tables }| {
            let mut listed: Vec<(Runs, Extra)> = list.programs.iter().filter_map(|s| tables.acquire(s)).collect();
            // Stable: of an owner listed twice, the last says what runs.
            listed.sort_by_key(|(r, _)| r.owner);
            let mut fresh: Vec<(Runs, Extra)> = Vec::with_capacity(listed.len());
            for new in listed {
                match fresh.last_mut() {
                    Some(last) if last.0.owner == new.0.owner => tables.release(std::mem::replace(last, new).0),
                    _ => fresh.push(new),
                }
            }
            let e = map.entry(node.to_string()).or_default();
            let mut changed: Vec<String> = Vec::new();
            for (r, x) in &fresh {
                let before = e.runs(Some(r.owner)).map(|o| (*o, e.extra(r.owner).cloned().unwrap_or_default()));
                if before.as_ref().is_none_or(|(o, ox)| o != r || ox != x) {
                    changed.push(tables.uid(r).to_string());
                }
            }
            for r in &e.owners {
                if fresh.binary_search_by_key(&r.owner, |(f, _)| f.owner).is_err() {
                    changed.push(tables.uid(r).to_string());
                }
            }
            e.clear(tables);
            e.owners = fresh.iter().map(|(r, _)| *r).collect();
            e.extras = fresh.into_iter().filter(|(_, x)| !x.is_empty()).map(|(r, x)| (r.owner, x)).collect();
            e.listed_digest = Some(list.digest);
            e.relist = false;
            for uid in Self::answered(e, list) {
                if !changed.contains(&uid) {
                    changed.push(uid);
                }
            }
            changed
        })
    }

    /// The agent answered a List with "unchanged" since `listed_digest`: what the index
    /// holds of it is still true. Returns the owners whose "agent unreachable" outcome this
    /// clears.
    pub fn record_unchanged(&self, node: &str, answer: &AgentList) -> Vec<String> {
        self.write(|n| n.map.get_mut(node).map(|e| Self::answered(e, answer)).unwrap_or_default())
    }

    fn answered(e: &mut NodeEntry, answer: &AgentList) -> Vec<String> {
        let cleared: Vec<String> = e
            .failures
            .iter()
            .filter(|(_, f)| matches!(f.outcome, NodeOutcome::Unreachable { .. }))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in &cleared {
            e.failures.remove(uid);
        }
        e.agent_version = Some(answer.agent_version.clone());
        e.kernel_release = Some(answer.kernel_release.clone());
        e.last_report_time = Some(now_rfc3339());
        cleared
    }

    /// The digest to ask the node's agent with at a resync: that of its last full List,
    /// when what the index holds of the node is still exactly that List (no Apply answer
    /// or Watch event changed it since). `None`: a full List is needed.
    pub fn in_sync_digest(&self, node: &str) -> Option<u64> {
        self.read(|m, t| {
            let e = m.get(node)?;
            let listed = e.listed_digest?;
            (!e.relist && e.digest(t) == listed).then_some(listed)
        })
    }

    /// What was read of `node` could not be passed on (its BpfNode write failed): read it
    /// in full at the next resync.
    pub fn relist(&self, node: &str) {
        self.write(|n| {
            if let Some(e) = n.map.get_mut(node) {
                e.relist = true;
            }
        })
    }

    /// Runs `f` over what the index holds of `node`, as the node reported it.
    pub fn with_reported<R>(&self, node: &str, f: impl FnOnce(&mut dyn Iterator<Item = Reported<'_>>) -> R) -> R {
        self.read(|m, t| {
            let e = m.get(node);
            let mut owners = e.into_iter().flat_map(|e| e.owners.iter().map(move |r| (e, r))).map(|(e, r)| Reported {
                uid: t.uid(r),
                name: e.name(t, r),
                revision: t.revision(r),
                health: r.health,
                last_error: e.extra(r.owner).and_then(|x| x.last_error.as_deref()).unwrap_or(""),
            });
            f(&mut owners)
        })
    }

    /// The node's Node object is gone.
    pub fn forget(&self, node: &str) {
        self.write(|Nodes { map, tables }| {
            if let Some(mut e) = map.remove(node) {
                e.clear(tables);
            }
        });
    }

    /// Per node, what runs of `uid`.
    pub fn observed(&self, uid: &str) -> BTreeMap<String, Observed> {
        self.read(|m, t| {
            let Some(owner) = t.owners.find(uid) else { return BTreeMap::new() };
            m.iter()
                .filter_map(|(n, e)| {
                    e.runs(Some(owner))
                        .map(|r| (n.clone(), Observed { revision: t.revision(r).to_string(), health: r.health }))
                })
                .collect()
        })
    }

    /// Nodes whose last full List reported `uid`. (A node never listed may have reported
    /// it only in an Apply answer; the caller decides what to do with those.)
    pub fn listed_runners(&self, uid: &str) -> BTreeSet<String> {
        self.read(|m, t| {
            let Some(owner) = t.owners.find(uid) else { return BTreeSet::new() };
            m.iter().filter(|(_, e)| e.listed() && e.runs(Some(owner)).is_some()).map(|(n, _)| n.clone()).collect()
        })
    }

    /// Those of `nodes` whose agent never answered a full List (their state is unknown).
    pub fn never_listed<'a>(&self, nodes: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
        self.read(|m, _| nodes.filter(|n| !m.get(*n).is_some_and(|e| e.listed())).map(str::to_string).collect())
    }

    /// How `node` stands with revision `want` of `uid`, for status.
    pub fn outcome(&self, node: &str, uid: &str, want: &str) -> NodeOutcome {
        self.read(|m, t| m.get(node).map_or(NodeOutcome::Pending, |e| e.outcome(t, uid, want)))
    }

    /// Everything decisions about revision `rev` of `uid` read of the index, under one
    /// read of its lock.
    pub fn snapshot(&self, uid: &str, rev: &str) -> Snapshot {
        self.read(|m, t| {
            // Gathered in the index's (name) order and built at once: a map built by one
            // insert per node searches itself each time.
            let (mut observed, mut pods, mut outcomes, mut retries, mut unreachable_since, mut answered) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let owner = t.owners.find(uid);
            for (n, e) in m {
                if let Some(r) = e.runs(owner) {
                    observed.push((n.clone(), Observed { revision: t.revision(r).to_string(), health: r.health }));
                    if let Some(x) = e.extra(r.owner).filter(|x| x.pods.total > 0) {
                        pods.push((n.clone(), x.pods));
                    }
                }
                let outcome = e.outcome_of(t, owner, uid, rev);
                if outcome != NodeOutcome::Pending {
                    outcomes.push((n.clone(), outcome));
                }
                if let Some(f) = e.failures.get(uid).filter(|f| f.revision == rev) {
                    if let Some(t) = f.next_try {
                        retries.push((n.clone(), (f.attempts, t)));
                    }
                    if matches!(f.outcome, NodeOutcome::Unreachable { .. }) {
                        unreachable_since.push((n.clone(), f.since));
                    }
                }
                if e.last_report_time.is_some() {
                    answered.push(n.clone());
                }
            }
            Snapshot {
                observed: observed.into_iter().collect(),
                outcomes: outcomes.into_iter().collect(),
                retries: retries.into_iter().collect(),
                unreachable_since: unreachable_since.into_iter().collect(),
                answered: answered.into_iter().collect(),
                pods: pods.into_iter().collect(),
            }
        })
    }

    /// Every owner a node runs: uid -> BpfProgram name.
    pub fn all_owners(&self, node: &str) -> BTreeMap<String, String> {
        self.read(|m, t| {
            m.get(node)
                .map(|e| e.owners.iter().map(|r| (t.uid(r).to_string(), e.name(t, r).to_string())).collect())
                .unwrap_or_default()
        })
    }

    /// (node, owner) pairs held, for benchmarks and metrics.
    pub fn entries(&self) -> usize {
        self.read(|m, _| m.values().map(|e| e.owners.len()).sum())
    }
}

fn jiff_span(d: std::time::Duration) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::try_from(d).unwrap_or(k8s_openapi::jiff::SignedDuration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(uid: &str, rev: &str, health: Health) -> NodeProgramStatus {
        NodeProgramStatus {
            owner: format!("{uid}-name"),
            owner_uid: uid.into(),
            revision: rev.into(),
            health,
            attached: vec![],
            maps: vec![],
            last_error: None,
            bytecode_digest: None,
            maps_recreated: vec![],
            metrics_limited: vec![],
            pods: vec![],
            pods_total: 0,
            pods_failed: 0,
        }
    }

    /// A List read in full of `programs`, with its digest as the pool computes it.
    fn list(programs: Vec<NodeProgramStatus>) -> AgentList {
        let wire: Vec<_> = programs.iter().map(proto::status_to_wire).collect();
        AgentList { digest: proto::NodeDigest::of_states(&wire), programs, ..Default::default() }
    }

    #[test]
    fn a_node_with_pods_stays_in_sync_until_its_pods_change() {
        let idx = NodeIndex::default();
        let pod = |uid: &str, reason: Option<&str>| crds::node::PodAttachment {
            uid: uid.into(),
            namespace: "shop".into(),
            name: format!("web-{uid}"),
            link_ids: vec![7],
            reason: reason.map(Into::into),
            message: None,
        };
        let mut s = state("u", "r1", Health::Healthy);
        s.pods = vec![pod("p1", None), pod("p2", Some("TargetNotFound"))];
        let l = list(vec![s.clone()]);
        idx.record_list("n", &l);
        assert_eq!(idx.in_sync_digest("n"), Some(l.digest), "the agent's digest counts pods as the index does");
        let snap = idx.snapshot("u", "r1");
        assert_eq!((snap.pods["n"].total, snap.pods["n"].failed), (2, 1));
        assert_eq!(snap.pods["n"].attached, pod_digest(["p1"]));
        // A pod attached since: the index knows it changed.
        s.pods[1].reason = None;
        assert!(idx.record_state("n", &s));
        assert_eq!(idx.in_sync_digest("n"), None);
    }

    #[test]
    fn reports_drive_outcomes() {
        let idx = NodeIndex::default();
        assert_eq!(idx.outcome("n1", "u", "r1"), NodeOutcome::Pending);
        idx.record_state("n1", &state("u", "r1", Health::Healthy));
        assert_eq!(idx.outcome("n1", "u", "r1"), NodeOutcome::Ready);
        assert_eq!(idx.outcome("n1", "u", "r2"), NodeOutcome::Pending);
        let failed = NodeOutcome::Failed { program: None, reason: "VerifierRejected".into(), message: "x".into() };
        idx.record_failure("n1", "u", "r2", failed.clone(), Timestamp::now());
        assert_eq!(idx.outcome("n1", "u", "r2"), failed);
        // A success clears the failure.
        idx.record_state("n1", &state("u", "r2", Health::Healthy));
        assert_eq!(idx.outcome("n1", "u", "r2"), NodeOutcome::Ready);
        idx.record_state("n1", &state("u", "r2", Health::Degraded));
        assert!(matches!(idx.outcome("n1", "u", "r2"), NodeOutcome::Failed { .. }));
    }

    #[test]
    fn only_real_changes_ask_for_a_new_status() {
        let idx = NodeIndex::default();
        assert!(idx.record_state("n", &state("u", "r1", Health::Healthy)));
        assert!(!idx.record_state("n", &state("u", "r1", Health::Healthy)), "same report again");
        assert!(idx.record_state("n", &state("u", "r1", Health::Degraded)));
        let changed = idx.record_unreachable("n", [("u", "r1"), ("v", "r2")].into_iter(), "connection refused");
        assert_eq!(changed, ["u", "v"]);
        assert!(idx.record_unreachable("n", [("u", "r1")].into_iter(), "connection refused").is_empty());
        assert!(matches!(idx.outcome("n", "v", "r2"), NodeOutcome::Unreachable { .. }));
        // The agent answers again: its report clears "unreachable".
        assert!(idx.record_state("n", &state("u", "r1", Health::Healthy)));
        assert_eq!(idx.outcome("n", "u", "r1"), NodeOutcome::Ready);
    }

    #[test]
    fn failures_of_one_revision_back_off_and_a_new_revision_resets() {
        let idx = NodeIndex::default();
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let at = |s: i64| Timestamp::from_second(1_000_000 + s).unwrap();
        let failed = NodeOutcome::Failed { program: None, reason: "VerifierRejected".into(), message: "x".into() };
        idx.record_failure("n", "u", "r2", failed.clone(), t0);
        assert_eq!(idx.retry_of("n", "u", "r2"), Some((1, at(5))));
        assert_eq!(idx.retry_holds("u", "r2", at(4)).len(), 1, "held before its time");
        assert!(idx.retry_holds("u", "r2", at(5)).is_empty(), "due at its time");
        idx.record_failure("n", "u", "r2", failed.clone(), at(5));
        idx.record_failure("n", "u", "r2", failed.clone(), at(15));
        assert_eq!(idx.retry_of("n", "u", "r2"), Some((3, at(15 + 20))), "5 s, 10 s, 20 s, ...");
        assert!(idx.retry_holds("u", "r3", at(16)).is_empty(), "another revision is not held");
        idx.record_failure("n", "u", "r3", failed.clone(), at(16));
        assert_eq!(idx.retry_of("n", "u", "r3"), Some((1, at(21))), "a new revision starts over");
        // An unreachable agent is the pool's to back off from: no hold here.
        idx.record_failure("m", "u", "r3", NodeOutcome::Unreachable { message: "refused".into() }, at(16));
        assert_eq!(idx.retry_of("m", "u", "r3"), None);
        // A report of the old revision, or of the failure itself, keeps the backoff.
        idx.record_state("n", &state("u", "r1", Health::Healthy));
        idx.record_state("n", &state("u", "r3", Health::Failed));
        assert_eq!(idx.retry_of("n", "u", "r3"), Some((1, at(21))));
        // Success clears it.
        idx.record_state("n", &state("u", "r3", Health::Healthy));
        assert_eq!(idx.retry_of("n", "u", "r3"), None);
    }

    #[test]
    fn list_replaces_what_an_apply_reported() {
        let idx = NodeIndex::default();
        idx.record_state("n1", &state("a", "r1", Health::Healthy));
        assert!(idx.listed_runners("a").is_empty(), "n1 was never listed");
        let unreachable = NodeOutcome::Unreachable { message: "refused".into() };
        idx.record_failure("n1", "b", "r9", unreachable.clone(), Timestamp::now());
        assert_eq!(idx.outcome("n1", "b", "r9"), unreachable);
        let cleared = idx.record_list("n1", &list(vec![state("b", "r9", Health::Healthy)]));
        let mut cleared = cleared;
        cleared.sort();
        // b: now running (and no longer unreachable); a: gone from the node.
        assert_eq!(cleared, ["a", "b"], "a List reports every owner whose state it changed");
        assert!(
            idx.record_list("n1", &list(vec![state("b", "r9", Health::Healthy)]),).is_empty(),
            "the same List again changes nothing"
        );
        assert_eq!(idx.outcome("n1", "b", "r9"), NodeOutcome::Ready);
        assert!(idx.listed_runners("a").is_empty());
        assert_eq!(idx.listed_runners("b"), BTreeSet::from(["n1".to_string()]));
        assert_eq!(idx.observed("b").len(), 1);
        assert_eq!(idx.all_owners("n1").len(), 1);
        idx.record_removed("n1", "b");
        assert!(idx.observed("b").is_empty());
        idx.forget("n1");
        assert!(idx.all_owners("n1").is_empty());
    }

    #[test]
    fn a_node_is_in_sync_while_the_index_holds_its_last_list_unchanged() {
        let idx = NodeIndex::default();
        assert_eq!(idx.in_sync_digest("n"), None, "never listed");
        let list = list(vec![state("a", "r1", Health::Healthy), state("b", "r1", Health::Healthy)]);
        idx.record_list("n", &list);
        let digest = list.digest;
        assert_eq!(idx.in_sync_digest("n"), Some(digest));
        // An Apply answer changes what the node runs: read it in full next time.
        assert!(idx.record_state("n", &state("a", "r2", Health::Healthy)));
        assert_eq!(idx.in_sync_digest("n"), None);
        // Back to what was listed (a revert answered): in sync again.
        idx.record_state("n", &state("a", "r1", Health::Healthy));
        assert_eq!(idx.in_sync_digest("n"), Some(digest));
        idx.record_state("n", &state("b", "r1", Health::Degraded));
        assert_eq!(idx.in_sync_digest("n"), None, "health counts");
        idx.record_list("n", &list);
        assert_eq!(idx.in_sync_digest("n"), Some(digest));
        // A BpfNode that could not be written from that List: read it again.
        idx.relist("n");
        assert_eq!(idx.in_sync_digest("n"), None);
        idx.record_list("n", &list);
        // What the drift check sees of the node without a List.
        let seen: Vec<(String, String)> =
            idx.with_reported("n", |owners| owners.map(|r| (r.uid.to_string(), r.revision.to_string())).collect());
        assert_eq!(seen, [("a".to_string(), "r1".to_string()), ("b".to_string(), "r1".to_string())]);
        assert_eq!(idx.entries(), 2);
    }

    #[test]
    fn an_unchanged_answer_clears_unreachable_and_keeps_what_runs() {
        let idx = NodeIndex::default();
        let list = list(vec![state("a", "r1", Health::Healthy)]);
        idx.record_list("n", &list);
        idx.record_unreachable("n", [("a", "r1")].into_iter(), "refused");
        assert!(matches!(idx.outcome("n", "a", "r1"), NodeOutcome::Unreachable { .. }));
        assert_eq!(idx.record_unchanged("n", &AgentList::default()), ["a"]);
        assert_eq!(idx.outcome("n", "a", "r1"), NodeOutcome::Ready);
        assert!(idx.record_unchanged("unknown-node", &AgentList::default()).is_empty());
    }

    #[test]
    fn a_node_reporting_another_name_renames_the_owner_for_itself_only() {
        let idx = NodeIndex::default();
        let named = |name: &str| NodeProgramStatus { owner: name.into(), ..state("a", "r1", Health::Healthy) };
        idx.record_state("n1", &named("prog"));
        idx.record_state("n2", &named("other"));
        assert_eq!(idx.all_owners("n1")["a"], "prog");
        assert_eq!(idx.all_owners("n2")["a"], "other");
        let digest = |name: &str| {
            let mut d = proto::NodeDigest::default();
            d.add("a", name, "r1", Health::Healthy);
            d.value()
        };
        idx.record_list("n1", &AgentList { digest: digest("prog"), ..list(vec![named("prog")]) });
        idx.record_list("n2", &AgentList { digest: digest("other"), ..list(vec![named("other")]) });
        assert_eq!(idx.in_sync_digest("n1"), Some(digest("prog")), "n2's name does not change n1's digest");
        assert_eq!(idx.in_sync_digest("n2"), Some(digest("other")));
    }

    #[test]
    fn nodes_share_one_number_for_each_string_until_none_holds_it() {
        let idx = NodeIndex::default();
        for n in 0..3 {
            idx.record_state(&format!("n{n}"), &state("a", "r1", Health::Healthy));
        }
        let held = |idx: &NodeIndex| idx.read(|_, t| (t.owners.len(), t.revisions.len()));
        assert_eq!(held(&idx), (1, 1), "one uid and one revision for three nodes");
        let revisions: BTreeSet<u32> = idx.read(|m, _| m.values().map(|e| e.owners[0].revision).collect());
        assert_eq!(revisions.len(), 1);
        // A revision nobody runs any more is let go, its number reused.
        for i in 0..2000 {
            idx.record_state("n0", &state("a", &format!("rev-{i}"), Health::Healthy));
        }
        assert_eq!(held(&idx), (1, 2), "r1 (n1, n2) and rev-1999 (n0)");
        idx.record_removed("n1", "a");
        idx.forget("n2");
        assert_eq!(held(&idx), (1, 1));
        idx.record_list("n0", &list(vec![]));
        assert_eq!(held(&idx), (0, 0), "nothing held once no node runs anything");
        // r1, and the old and new revision of n0 while one replaces the other.
        assert_eq!(idx.read(|_, t| t.revisions.strings.len()), 3, "numbers are reused, not grown");
    }

    #[test]
    fn a_snapshot_says_what_the_single_reads_say() {
        let idx = NodeIndex::default();
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        idx.record_state("ok", &state("u", "r1", Health::Healthy));
        idx.record_state("old", &state("u", "r0", Health::Healthy));
        let failed = NodeOutcome::Failed { program: None, reason: "VerifierRejected".into(), message: "x".into() };
        idx.record_failure("bad", "u", "r1", failed.clone(), t0);
        idx.record_failure("away", "u", "r1", NodeOutcome::Unreachable { message: "refused".into() }, t0);
        let snap = idx.snapshot("u", "r1");
        for n in ["ok", "old", "bad", "away", "unknown"] {
            assert_eq!(snap.outcome(n), idx.outcome(n, "u", "r1"), "{n}");
            assert_eq!(snap.unreachable_since.get(n).copied(), idx.unreachable_since(n, "u", "r1"), "{n}");
            assert_eq!(snap.retries.get(n).copied(), idx.retry_of(n, "u", "r1"), "{n}");
            assert_eq!(snap.answered.contains(n), idx.has_answered(n), "{n}");
        }
        assert_eq!(snap.observed, idx.observed("u"));
        let now = t0.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(1)).unwrap();
        assert_eq!(snap.holds(now), idx.retry_holds("u", "r1", now).into_keys().collect());
    }
}
