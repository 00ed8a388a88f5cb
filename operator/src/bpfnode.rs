//! One BpfNode per Node, mirroring what its agent reports; owned by the Node and also
//! deleted explicitly when the Node goes (garbage collection alone can lag).

use crds::{BpfNode, BpfNodeStatus, FIELD_MANAGER};
use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// What was last written to each BpfNode, so a resync writes only what changed; and
/// whose turn it is to read a node's agent and write its BpfNode.
#[derive(Debug, Default)]
pub struct Written {
    last: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    turns: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

/// Held from before a List of a node's agent until its BpfNode is written (or not).
pub type Turn = tokio::sync::OwnedMutexGuard<()>;

impl Written {
    /// Waits for `node`'s turn. Readers of an agent (the follower, a reconcile writing
    /// BpfNodes before Ready, a resync) take turns per node, so a List answered earlier is
    /// never written after one answered later: two interleaved writers would otherwise
    /// leave the older truth in the BpfNode and the newer one remembered as written, and
    /// nothing would write it again until the node changed.
    pub async fn turn(&self, node: &str) -> Turn {
        let lock = self.turns.lock().unwrap_or_else(|p| p.into_inner()).entry(node.to_string()).or_default().clone();
        lock.lock_owned().await
    }

    /// A fingerprint of everything but the report time (which moves on every List),
    /// hashed as it is serialized: a node with a thousand programs is not copied for it.
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

    /// Whether `status` differs from what was last written for `node`.
    pub fn changed(&self, node: &str, status: &BpfNodeStatus) -> bool {
        let map = self.last.lock().unwrap_or_else(|p| p.into_inner());
        map.get(node) != Some(&Self::fingerprint(status))
    }

    pub fn remember(&self, node: &str, status: &BpfNodeStatus) {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).insert(node.to_string(), Self::fingerprint(status));
    }

    pub fn forget(&self, node: &str) {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).remove(node);
        // A turn someone holds or waits for stays, or a later reader would get a new lock
        // of its own while the holder still writes.
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        if turns.get(node).is_some_and(|t| std::sync::Arc::strong_count(t) == 1) {
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
                written.remember(&b.name_any(), status);
                seeded += 1;
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => params = params.continue_token(&c),
            None => return Ok(seeded),
        }
    }
}

/// Write `status` to the BpfNode of `node` unless it is what was written last.
/// Returns whether it wrote.
pub async fn write_if_changed(
    client: &Client,
    written: &Written,
    node: &Node,
    status: &BpfNodeStatus,
) -> kube::Result<bool> {
    let name = node.name_any();
    if !written.changed(&name, status) {
        return Ok(false);
    }
    write(client, node, status).await?;
    written.remember(&name, status);
    Ok(true)
}

/// Create or update the BpfNode of `node` with `status` (server-side apply).
pub async fn write(client: &Client, node: &Node, status: &BpfNodeStatus) -> kube::Result<()> {
    let api: Api<BpfNode> = Api::all(client.clone());
    let name = node.name_any();
    let pp = PatchParams::apply(FIELD_MANAGER).force();
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
    api.patch(&name, &pp, &Patch::Apply(&obj)).await?;
    let st = json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfNode", "status": status});
    api.patch_status(&name, &pp, &Patch::Apply(&st)).await?;
    Ok(())
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

    use super::*;

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
        w.remember("n", &status("r1", "t1"));
        assert!(!w.changed("n", &status("r1", "t2")), "only the report time moved");
        assert!(w.changed("n", &status("r2", "t2")));
        assert!(w.changed("m", &status("r1", "t1")), "per node");
        w.forget("n");
        assert!(w.changed("n", &status("r1", "t1")));
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
