//! One BpfNode per Node, mirroring what its agent reports; owned by the Node and also
//! deleted explicitly when the Node goes (garbage collection alone can lag). Besides what
//! the agent runs, its status says whether the operator reaches the agent
//! (`AgentReachable`, see [`crate::reachable`]) and when it last heard from it
//! (`lastHeartbeatTime`); both are written with every other write of the status, and on
//! their own only when reachability turns or the heartbeat is due, so a fleet at rest
//! costs few writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crds::node::AGENT_REACHABLE;
use crds::{BpfNode, BpfNodeStatus, FIELD_MANAGER};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::reachable::{self, Verdict};

/// The field manager of writes of `AgentReachable` and `lastHeartbeatTime` alone (a
/// server-side apply of the whole status by [`FIELD_MANAGER`] without the programs would
/// remove them).
pub const CONTACT_FIELD_MANAGER: &str = "bpfleet-operator-agent-contact";

/// Default of `--bpfnode-heartbeat-seconds`.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(600);

/// What was last written to each BpfNode, so a resync writes only what changed; and
/// whose turn it is to read a node's agent and write its BpfNode.
#[derive(Debug)]
pub struct Written {
    last: Mutex<HashMap<String, Entry>>,
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// How old a written heartbeat may get before it is written on its own (zero: only with
    /// other writes).
    heartbeat_every: Duration,
}

impl Default for Written {
    fn default() -> Self {
        Written::with_heartbeat(DEFAULT_HEARTBEAT)
    }
}

/// What was last written to (or read from) one BpfNode: ~100 bytes a node.
#[derive(Clone, Debug, Default, PartialEq)]
struct Entry {
    /// [`Written::fingerprint`] of what the agent runs; `None`: not written by this process.
    content: Option<u64>,
    /// The BpfNode's uid, for the Events about it.
    uid: Option<Box<str>>,
    heartbeat: Option<Timestamp>,
    /// `AgentReachable` as written.
    reach: Option<Reach>,
}

#[derive(Clone, Debug, PartialEq)]
struct Reach {
    reachable: bool,
    /// A hash of its reason and message.
    said: u64,
    since: Time,
}

impl Reach {
    fn of(c: &Condition) -> Reach {
        Reach {
            reachable: c.status == "True",
            said: said(&c.reason, &c.message),
            since: c.last_transition_time.clone(),
        }
    }
}

fn said(reason: &str, message: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (reason, message).hash(&mut h);
    h.finish()
}

/// Held from before a List of a node's agent until its BpfNode is written (or not).
pub type Turn = tokio::sync::OwnedMutexGuard<()>;

impl Written {
    pub fn with_heartbeat(heartbeat_every: Duration) -> Self {
        Written { last: Default::default(), turns: Default::default(), heartbeat_every }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for `node`'s turn. Readers of an agent (the follower, a reconcile writing
    /// BpfNodes before Ready, a resync) take turns per node, so a List answered earlier is
    /// never written after one answered later: two interleaved writers would otherwise
    /// leave the older truth in the BpfNode and the newer one remembered as written, and
    /// nothing would write it again until the node changed.
    pub async fn turn(&self, node: &str) -> Turn {
        let lock = self.turns.lock().unwrap_or_else(|p| p.into_inner()).entry(node.to_string()).or_default().clone();
        lock.lock_owned().await
    }

    /// A fingerprint of what the agent runs: everything but the report time (which moves
    /// on every List), the heartbeat and the conditions (remembered on their own), hashed
    /// as it is serialized: a node with a thousand programs is not copied for it.
    fn fingerprint(status: &BpfNodeStatus) -> u64 {
        use std::hash::{Hash, Hasher};
        struct HashWriter(std::collections::hash_map::DefaultHasher);
        impl std::io::Write for HashWriter {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.write(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut w = HashWriter(Default::default());
        (status.managed, status.healthy, &status.agent_version, &status.kernel_release).hash(&mut w.0);
        let _ = serde_json::to_writer(&mut w, &status.programs);
        w.0.finish()
    }

    /// Whether what the agent runs (`status`) differs from what was last written for `node`.
    pub fn changed(&self, node: &str, status: &BpfNodeStatus) -> bool {
        self.entries().get(node).and_then(|e| e.content) != Some(Self::fingerprint(status))
    }

    /// Whether `verdict` says something else than the `AgentReachable` written for `node`.
    pub fn reach_changed(&self, node: &str, verdict: &Verdict) -> bool {
        let now = said(verdict.reason(), &crds::sanitize::for_status(&verdict.message));
        self.entries()
            .get(node)
            .and_then(|e| e.reach.as_ref())
            .is_none_or(|r| r.reachable != verdict.reachable() || r.said != now)
    }

    /// Whether the heartbeat written for `node` is due again at `now`.
    pub fn heartbeat_due(&self, node: &str, now: Timestamp) -> bool {
        let written = self.entries().get(node).and_then(|e| e.heartbeat);
        reachable::heartbeat_due(node, written, self.heartbeat_every, now)
    }

    /// The `AgentReachable` written for `node`: its status and since when.
    fn reach(&self, node: &str) -> Option<(bool, Time)> {
        self.entries().get(node).and_then(|e| e.reach.as_ref()).map(|r| (r.reachable, r.since.clone()))
    }

    /// The BpfNode of `node` exists, as far as this process knows (read or written).
    fn exists(&self, node: &str) -> bool {
        self.entries().contains_key(node)
    }

    /// The uid of `node`'s BpfNode, when known.
    pub fn uid(&self, node: &str) -> Option<String> {
        self.entries().get(node).and_then(|e| e.uid.as_deref()).map(str::to_string)
    }

    /// `status` was written to (or read from) the BpfNode of `node`, whose uid is `uid`.
    pub fn remember(&self, node: &str, uid: Option<String>, status: &BpfNodeStatus) {
        let mut map = self.entries();
        let e = map.entry(node.to_string()).or_default();
        e.content = Some(Self::fingerprint(status));
        e.uid = uid.map(Into::into).or(e.uid.take());
        self.remember_contact_in(e, status);
    }

    fn remember_contact_in(&self, e: &mut Entry, status: &BpfNodeStatus) {
        if let Some(t) = status.last_heartbeat_time.as_deref().and_then(|t| t.parse().ok()) {
            e.heartbeat = Some(t);
        }
        if let Some(c) = status.conditions.iter().find(|c| c.type_ == AGENT_REACHABLE) {
            e.reach = Some(Reach::of(c));
        }
    }

    /// Only `AgentReachable` and the heartbeat of `status` were written.
    fn remember_contact(&self, node: &str, uid: Option<String>, status: &BpfNodeStatus) {
        let mut map = self.entries();
        let e = map.entry(node.to_string()).or_default();
        e.uid = uid.map(Into::into).or(e.uid.take());
        self.remember_contact_in(e, status);
    }

    pub fn forget(&self, node: &str) {
        self.entries().remove(node);
        // A turn someone holds or waits for stays, or a later reader would get a new lock
        // of its own while the holder still writes.
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        if turns.get(node).is_some_and(|t| Arc::strong_count(t) == 1) {
            turns.remove(node);
        }
    }
}

/// Nodes whose BpfNode may no longer say what their agent runs: marked after every
/// Apply and Remove, agent change and agent turning Ready; `bpfnode_follow::follow_bpfnodes`
/// reads each such node's agent once per batch and writes what changed.
#[derive(Debug, Default)]
pub struct Stale {
    nodes: std::sync::Mutex<std::collections::BTreeSet<String>>,
    wake: tokio::sync::Notify,
}

impl Stale {
    pub fn mark(&self, node: &str) {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).insert(node.to_string());
        self.wake.notify_one();
    }

    /// Those of `nodes` that are marked, unmarked, when there are at most `max` of them
    /// (`None` otherwise: more than a reconcile should read itself).
    pub fn take_among(
        &self,
        nodes: &std::collections::BTreeSet<String>,
        max: usize,
    ) -> Option<std::collections::BTreeSet<String>> {
        let mut marked = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let among: std::collections::BTreeSet<String> = marked.intersection(nodes).cloned().collect();
        if among.len() > max {
            return None;
        }
        for n in &among {
            marked.remove(n);
        }
        Some(among)
    }

    /// The next batch: waits for a first mark, then `debounce` longer so that a burst
    /// (an Apply to every program of a node) costs one read of the node, then takes
    /// every node marked so far.
    pub async fn next_batch(&self, debounce: std::time::Duration) -> std::collections::BTreeSet<String> {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(debounce).await;
            let batch = std::mem::take(&mut *self.nodes.lock().unwrap_or_else(|p| p.into_inner()));
            if !batch.is_empty() {
                return batch;
            }
        }
    }
}

/// Learn what every BpfNode already says (a List, 500 at a time), so a new leader
/// writes only the BpfNodes whose truth differs from what is stored.
pub async fn seed(client: &Client, written: &Written) -> kube::Result<usize> {
    let api: Api<BpfNode> = Api::all(client.clone());
    let mut params = kube::api::ListParams::default().limit(500);
    let mut seeded = 0;
    loop {
        let page = api.list(&params).await?;
        for b in &page.items {
            if let Some(status) = &b.status {
                written.remember(&b.name_any(), b.uid(), status);
                seeded += 1;
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => params = params.continue_token(&c),
            None => return Ok(seeded),
        }
    }
}

/// After the node's agent answered a List in full with `status`: write it to the BpfNode
/// of `node` (with `verdict` as `AgentReachable` and the heartbeat now) unless what the
/// agent runs is what was written last, `AgentReachable` says the same and the heartbeat
/// is not due. Returns whether it wrote.
pub async fn write_if_changed(
    client: &Client,
    written: &Written,
    node: &Node,
    mut status: BpfNodeStatus,
    verdict: &Verdict,
) -> kube::Result<bool> {
    let name = node.name_any();
    let now = Timestamp::now();
    if !written.changed(&name, &status) && !written.reach_changed(&name, verdict) && !written.heartbeat_due(&name, now)
    {
        return Ok(false);
    }
    status.last_heartbeat_time = Some(now.to_string());
    status.conditions = vec![reachable::condition(verdict, written.reach(&name).as_ref().map(|(r, t)| (*r, t)), now)];
    let uid = write(client, node, &status).await?;
    written.remember(&name, uid, &status);
    Ok(true)
}

/// When the node's agent was not read in full (it answered "unchanged", a call failed, or
/// it is not dialled at all): write `verdict` as the BpfNode's `AgentReachable` if that
/// changed, and, when `answered` (the agent answered just now), the heartbeat if it is due.
/// Only these two fields are written (field manager [`CONTACT_FIELD_MANAGER`]). A node
/// without a BpfNode gets one only when calling its agent failed (a node whose agent never
/// answered, e.g. with a certificate from another CA, says why); a node without an agent or
/// address is not given one. Returns whether it wrote.
pub async fn write_contact(
    client: &Client,
    written: &Written,
    node: &Node,
    verdict: &Verdict,
    answered: bool,
) -> kube::Result<bool> {
    let name = node.name_any();
    let now = Timestamp::now();
    let exists = written.exists(&name);
    let failed_call = verdict.failure.is_some_and(|f| f.of_a_call());
    if !exists && !failed_call {
        return Ok(false);
    }
    let beat = answered && written.heartbeat_due(&name, now);
    if !beat && !written.reach_changed(&name, verdict) {
        return Ok(false);
    }
    let previous = written.reach(&name);
    let status = BpfNodeStatus {
        last_heartbeat_time: if answered {
            Some(now.to_string())
        } else {
            written.entries().get(&name).and_then(|e| e.heartbeat).map(|t| t.to_string())
        },
        conditions: vec![reachable::condition(verdict, previous.as_ref().map(|(r, t)| (*r, t)), now)],
        ..Default::default()
    };
    let api: Api<BpfNode> = Api::all(client.clone());
    if !exists {
        apply_object(&api, node).await?;
    }
    let mut st =
        json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfNode", "status": {"conditions": status.conditions}});
    if let Some(t) = &status.last_heartbeat_time {
        st["status"]["lastHeartbeatTime"] = json!(t);
    }
    let pp = PatchParams::apply(CONTACT_FIELD_MANAGER).force();
    let b = api.patch_status(&name, &pp, &Patch::Apply(&st)).await?;
    written.remember_contact(&name, b.uid(), &status);
    Ok(true)
}

/// Create or update the BpfNode of `node` with `status` (server-side apply). Returns the
/// BpfNode's uid.
pub async fn write(client: &Client, node: &Node, status: &BpfNodeStatus) -> kube::Result<Option<String>> {
    let api: Api<BpfNode> = Api::all(client.clone());
    let name = node.name_any();
    apply_object(&api, node).await?;
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let b = api.patch_status(&name, &pp, &Patch::Apply(&StatusPatch::new(status))).await?;
    Ok(b.uid())
}

/// A BpfNode status patch, serialized straight from the status it borrows (a node's
/// status lists every program on it: no JSON tree of it is built on the way).
#[derive(serde::Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct StatusPatch<'a> {
    api_version: &'static str,
    kind: &'static str,
    status: &'a BpfNodeStatus,
}

impl<'a> StatusPatch<'a> {
    fn new(status: &'a BpfNodeStatus) -> Self {
        Self { api_version: "bpfleet.dev/v1alpha1", kind: "BpfNode", status }
    }
}

/// The BpfNode object of `node` (no status), owned by the Node.
async fn apply_object(api: &Api<BpfNode>, node: &Node) -> kube::Result<()> {
    let name = node.name_any();
    let mut owner = json!({"apiVersion": "v1", "kind": "Node", "name": name});
    if let Some(uid) = node.uid() {
        owner["uid"] = json!(uid);
    }
    let obj = json!({
        "apiVersion": "bpfleet.dev/v1alpha1",
        "kind": "BpfNode",
        "metadata": {"name": name, "ownerReferences": [owner]},
        "spec": {}
    });
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj)).await?;
    Ok(())
}

/// The uid of `node`'s BpfNode, for an Event about it: remembered from the last write or
/// read, else read (`None`: there is no BpfNode, or it cannot be read).
pub async fn uid(client: &Client, written: &Written, node: &str) -> Option<String> {
    if let Some(uid) = written.uid(node) {
        return Some(uid);
    }
    let api: Api<BpfNode> = Api::all(client.clone());
    match api.get_opt(node).await {
        Ok(b) => b.and_then(|b| b.uid()),
        Err(e) => {
            tracing::debug!(node, error = %e, "cannot read the BpfNode's uid");
            None
        }
    }
}

/// Delete the BpfNode of a deleted Node; a missing one is fine.
pub async fn delete(client: &Client, name: &str) -> kube::Result<()> {
    let api: Api<BpfNode> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use crds::Health;
    use crds::node::NodeProgramStatus;
    use k8s_openapi::jiff::SignedDuration;

    use super::*;
    use crate::reachable::Failure;

    #[test]
    fn a_status_patch_is_the_apply_object_of_the_status() {
        let st = status("r1", "2026-01-01T00:00:00Z");
        let expected = json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfNode", "status": &st});
        assert_eq!(serde_json::to_value(StatusPatch::new(&st)).unwrap(), expected);
    }

    fn status(rev: &str, at: &str) -> BpfNodeStatus {
        BpfNodeStatus {
            managed: 1,
            healthy: 1,
            last_report_time: Some(at.into()),
            programs: vec![NodeProgramStatus {
                owner: "p".into(),
                owner_uid: "u".into(),
                revision: rev.into(),
                health: Health::Healthy,
                attached: vec![],
                maps: vec![],
                last_error: None,
                bytecode_digest: None,
                maps_recreated: vec![],
                metrics_limited: vec![],
                pods: vec![],
                pods_total: 0,
                pods_failed: 0,
            }],
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn marks_in_a_burst_are_one_batch() {
        let stale = std::sync::Arc::new(Stale::default());
        stale.mark("n1");
        stale.mark("n2");
        stale.mark("n1");
        let batch = stale.next_batch(std::time::Duration::from_secs(1)).await;
        assert_eq!(batch.into_iter().collect::<Vec<_>>(), ["n1", "n2"]);
        // Marked while the last batch is handled: the next batch has it.
        stale.mark("n3");
        assert_eq!(stale.next_batch(std::time::Duration::from_secs(1)).await.len(), 1);
    }

    #[test]
    fn only_changes_are_written_not_the_passing_of_time() {
        let w = Written::default();
        assert!(w.changed("n", &status("r1", "t1")), "never written");
        w.remember("n", None, &status("r1", "t1"));
        assert!(!w.changed("n", &status("r1", "t2")), "only the report time moved");
        assert!(w.changed("n", &status("r2", "t2")));
        assert!(w.changed("m", &status("r1", "t1")), "per node");
        w.forget("n");
        assert!(w.changed("n", &status("r1", "t1")));
    }

    fn verdict(failure: Option<Failure>, message: &str) -> Verdict {
        Verdict { failure, message: message.into() }
    }

    /// A stored BpfNode (read at a leader's start) teaches its uid, condition and heartbeat:
    /// the new leader writes none of them again until they change or the heartbeat is due.
    #[test]
    fn what_a_bpfnode_says_of_its_agent_is_written_only_when_it_changes() {
        let w = Written::with_heartbeat(Duration::from_secs(600));
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let up = verdict(None, "the agent answers the operator");
        let mut stored = status("r1", "t1");
        stored.last_heartbeat_time = Some(t0.to_string());
        stored.conditions = vec![reachable::condition(&up, None, t0)];
        assert!(!w.exists("n") && w.reach_changed("n", &up) && w.heartbeat_due("n", t0), "nothing known");
        w.remember("n", Some("uid-1".into()), &stored);
        assert_eq!(w.uid("n").as_deref(), Some("uid-1"));
        assert!(w.exists("n"));
        assert!(!w.reach_changed("n", &up), "the same verdict");
        assert!(!w.heartbeat_due("n", t0.checked_add(SignedDuration::from_secs(599)).unwrap()));
        assert!(w.heartbeat_due("n", t0.checked_add(SignedDuration::from_secs(751)).unwrap()));
        let refused = verdict(Some(Failure::ConnectionRefused), "n at 10.0.0.1:50051: connection refused");
        assert!(w.reach_changed("n", &refused), "a transition");
        // Written on its own: the content and the uid stay known, the transition is kept.
        let t1 = t0.checked_add(SignedDuration::from_secs(30)).unwrap();
        let contact = BpfNodeStatus {
            conditions: vec![reachable::condition(&refused, w.reach("n").as_ref().map(|(r, t)| (*r, t)), t1)],
            last_heartbeat_time: Some(t0.to_string()),
            ..Default::default()
        };
        w.remember_contact("n", None, &contact);
        assert!(!w.reach_changed("n", &refused) && !w.changed("n", &stored) && w.uid("n").is_some());
        assert_eq!(w.reach("n"), Some((false, Time(t1))));
        let timeout = verdict(Some(Failure::Timeout), "n at 10.0.0.1:50051: no answer within 5s");
        assert!(w.reach_changed("n", &timeout), "another reason is news too");
        assert!(!Written::with_heartbeat(Duration::ZERO).heartbeat_due("n", t0), "0: only with other writes");
    }

    /// The race the turns close: a List of a node answered before an Apply and written
    /// after a later List's write. With turns, the second reader of a node waits until
    /// the first has written; readers of other nodes do not wait.
    #[tokio::test]
    async fn readers_of_one_node_take_turns_and_other_nodes_do_not_wait() {
        let w = std::sync::Arc::new(Written::default());
        let first = w.turn("n").await;
        let w2 = w.clone();
        let second = tokio::spawn(async move {
            let _t = w2.turn("n").await;
        });
        let other = tokio::time::timeout(std::time::Duration::from_secs(5), w.turn("m")).await;
        assert!(other.is_ok(), "another node's turn is free");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "the second reader of n waits for the first");
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), second).await.unwrap().unwrap();
        let held = w.turn("n").await;
        w.forget("n");
        let w3 = w.clone();
        let after_forget = tokio::spawn(async move {
            let _t = w3.turn("n").await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!after_forget.is_finished(), "forgetting a node does not hand out a second turn");
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(5), after_forget).await.unwrap().unwrap();
        w.forget("n");
        let _again = tokio::time::timeout(std::time::Duration::from_secs(5), w.turn("n")).await.unwrap();
    }
}
