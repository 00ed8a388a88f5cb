//! The way out of an uninstall: delete every BpfNamespacedProgram and BpfProgram while
//! the operator still runs, so each node unloads its programs and every finalizer is
//! released, then wait. The tenants' programs go first: a BpfProgram that runs one (its
//! mirror) deleted while the tenant's program stays would be written again.
//! `bpfleet-operator uninstall` is what the chart's pre-delete hook runs; with
//! `--force` it also releases finalizers that are still held after the timeout (when the
//! operator is already gone), and says which nodes may still run programs.

use std::time::{Duration, Instant};

use crds::tenant::TENANT_FINALIZER;
use crds::{BpfNamespacedProgram, BpfNode, BpfProgram};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::controller::FINALIZER;

pub async fn run(client: Client, timeout: Duration, force: bool) -> anyhow::Result<()> {
    let tenants: Api<BpfNamespacedProgram> = Api::all(client.clone());
    // A chart from before the kind has no such CRD: nothing to delete there.
    let with_tenants = tenants.list(&ListParams::default().limit(1)).await.is_ok();
    if with_tenants {
        let all = tenants.list(&ListParams::default()).await?.items;
        for t in &all {
            let api: Api<BpfNamespacedProgram> = Api::namespaced(client.clone(), &t.namespace().unwrap_or_default());
            match api.delete(&t.name_any(), &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(count = all.len(), "deleting every BpfNamespacedProgram");
    }
    let api: Api<BpfProgram> = Api::all(client.clone());
    let count = delete_all(&api).await?;
    tracing::info!(count, "deleting every BpfProgram");
    let deadline = Instant::now() + timeout;
    loop {
        let left = api.list(&ListParams::default()).await?.items;
        let tenants_left = if with_tenants { tenants.list(&ListParams::default()).await?.items } else { Vec::new() };
        if left.is_empty() && tenants_left.is_empty() {
            tracing::info!("every BpfProgram is gone: all nodes unloaded them");
            return delete_bpfnodes(&client).await;
        }
        if Instant::now() >= deadline {
            let why: Vec<String> = left
                .iter()
                .map(|p| {
                    let msg = p
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                        .map(|c| c.message.clone())
                        .unwrap_or_else(|| "no status (is the operator running?)".into());
                    format!("{}: {msg}", p.name_any())
                })
                .collect();
            if !force {
                anyhow::bail!(
                    "{} BpfProgram(s) still being removed after {timeout:?}: {}. Fix the nodes named, or rerun with --force \
                     to release the finalizers (programs then stay on those nodes until their agent restarts with an \
                     empty state or bpffs is cleaned)",
                    left.len(),
                    why.join("; ")
                );
            }
            for p in &left {
                let remaining: Vec<String> = p.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
                let patch = json!({"metadata": {"finalizers": remaining}});
                api.patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
                tracing::warn!(program = %p.name_any(), "finalizer released by --force");
            }
            for t in &tenants_left {
                let ns = t.namespace().unwrap_or_default();
                let remaining: Vec<String> =
                    t.finalizers().iter().filter(|f| *f != TENANT_FINALIZER).cloned().collect();
                let patch = json!({"metadata": {"finalizers": remaining}});
                let api: Api<BpfNamespacedProgram> = Api::namespaced(client.clone(), &ns);
                api.patch(&t.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
                tracing::warn!(program = %format!("{ns}/{}", t.name_any()), "finalizer released by --force");
            }
            tracing::warn!(blocked = ?why, "forced: these nodes may still run programs; see docs/install.md");
            return delete_bpfnodes(&client).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Every BpfNode goes with the operator that writes them: none is left claiming
/// programs that are gone (the Node owns each, but a Node outlives an uninstall).
async fn delete_bpfnodes(client: &Client) -> anyhow::Result<()> {
    let api: Api<BpfNode> = Api::all(client.clone());
    // The operator still runs and writes each node's last Removes into its BpfNode about
    // a second after them: let those writes land first, or one could create a BpfNode
    // again after the delete.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let nodes = api.list(&ListParams::default()).await?;
        if nodes.items.iter().all(|b| b.status.as_ref().is_none_or(|s| s.programs.is_empty())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(crate::bpfnode_follow::BPFNODE_DEBOUNCE * 2).await;
    let count = delete_all(&api).await?;
    tracing::info!(count, "BpfNodes deleted");
    Ok(())
}

/// Ask for the deletion of every object `api` lists (one already gone is fine); returns
/// how many there were.
async fn delete_all<K>(api: &Api<K>) -> anyhow::Result<usize>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let all = api.list(&ListParams::default()).await?;
    for o in &all.items {
        match api.delete(&o.name_any(), &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(all.items.len())
}
