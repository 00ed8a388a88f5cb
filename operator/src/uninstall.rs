//! The way out of an uninstall: delete every BpfProgram while the operator still runs,
//! so each node unloads its programs and every finalizer is released, then wait.
//! `bpfleet-operator uninstall` is what the chart's pre-delete hook runs; with
//! `--force` it also releases finalizers that are still held after the timeout (when the
//! operator is already gone), and says which nodes may still run programs.

use std::time::{Duration, Instant};

use crds::BpfProgram;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::controller::FINALIZER;

pub async fn run(client: Client, timeout: Duration, force: bool) -> anyhow::Result<()> {
    let api: Api<BpfProgram> = Api::all(client);
    let all = api.list(&ListParams::default()).await?;
    tracing::info!(count = all.items.len(), "deleting every BpfProgram");
    for p in &all.items {
        match api.delete(&p.name_any(), &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = api.list(&ListParams::default()).await?.items;
        if left.is_empty() {
            tracing::info!("every BpfProgram is gone: all nodes unloaded them");
            return Ok(());
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
            tracing::warn!(blocked = ?why, "forced: these nodes may still run programs; see docs/install.md");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
