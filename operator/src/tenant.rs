//! BpfNamespacedProgram, a tenant's program (`crds::tenant`): each one runs as a
//! cluster-scoped BpfProgram this module writes (its *mirror*), and shows the mirror's
//! status as its own. Everything else (bytecode, revisions, rollouts, agents, BpfNodes) is
//! the BpfProgram machinery's, unchanged.
//!
//! - The rules of the kind are checked before a mirror is written; a spec that breaks one
//!   is reported (`Ready=False`, `Stalled=True`, reason `InvalidSpec`) and leaves the
//!   mirror as it was: what ran keeps running, as with a BpfProgram whose new spec is bad.
//! - A BpfProgram of the mirror's name that is not this program's (its uid label names
//!   another, or none) is never taken over (`MirrorNameTaken`).
//! - The mirror's status is copied back with its generations translated: the mirror
//!   records the tenant generation its spec came from, and a status current for the
//!   mirror's generation is current for that one.
//! - A finalizer holds the BpfNamespacedProgram until its mirror, and so everything it
//!   put on the nodes, is gone.

use std::sync::Arc;
use std::time::Duration;

use crds::reason::Reason;
use crds::tenant::{
    ANNOTATION_TENANT, ANNOTATION_TENANT_GENERATION, LABEL_TENANT_UID, TENANT_FINALIZER, mirror_labels, mirror_name,
    tenant_problems,
};
use crds::{BpfNamespacedProgram, BpfProgram, BpfProgramStatus};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// Field manager of the mirrors.
const MANAGER: &str = "bpfleet-operator-tenants";
/// How often a tenant is looked at again with nothing changed (its mirror's changes wake
/// it sooner).
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("BpfNamespacedProgram without namespace or uid")]
    Unnamed,
}

struct Ctx {
    client: Client,
}

/// Run the tenants' controller until the process ends. Without the CRD (a chart from
/// before it), says so once and does nothing.
pub async fn run(client: Client) {
    let tenants: Api<BpfNamespacedProgram> = Api::all(client.clone());
    let mut wait = Duration::from_secs(1);
    loop {
        match tenants.list(&ListParams::default().limit(1)).await {
            Ok(_) => break,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::warn!("no BpfNamespacedProgram CRD (a chart from before it): tenants' programs are not run");
                return std::future::pending().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list BpfNamespacedPrograms yet; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
    let mirrors: Api<BpfProgram> = Api::all(client.clone());
    Controller::new(tenants, watcher::Config::default())
        .watches(mirrors, watcher::Config::default().labels(LABEL_TENANT_UID), |m: BpfProgram| {
            let (ns, name) = m.annotations().get(ANNOTATION_TENANT)?.split_once('/')?;
            Some(ObjectRef::new(name).within(ns))
        })
        .run(reconcile, error_policy, Arc::new(Ctx { client }))
        .for_each(|_| async {})
        .await;
}

fn error_policy(t: Arc<BpfNamespacedProgram>, e: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(tenant = %format!("{}/{}", t.namespace().unwrap_or_default(), t.name_any()), error = %e, "tenant reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(t: Arc<BpfNamespacedProgram>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let (Some(ns), Some(uid)) = (t.namespace(), t.uid()) else { return Err(Error::Unnamed) };
    let name = t.name_any();
    let tenants: Api<BpfNamespacedProgram> = Api::namespaced(ctx.client.clone(), &ns);
    let mirrors: Api<BpfProgram> = Api::all(ctx.client.clone());
    let mirror = mirror_name(&ns, &name);
    let existing = mirrors.get_opt(&mirror).await?;
    let ours = existing.as_ref().is_some_and(|m| m.labels().get(LABEL_TENANT_UID) == Some(&uid));

    if t.metadata.deletion_timestamp.is_some() {
        if let Some(m) = existing.as_ref().filter(|_| ours) {
            if m.metadata.deletion_timestamp.is_none() {
                mirrors.delete(&mirror, &DeleteParams::default()).await?;
                tracing::info!(tenant = %format!("{ns}/{name}"), %mirror, "removing the mirror before the program goes");
            }
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        let kept: Vec<&String> = t.finalizers().iter().filter(|f| *f != TENANT_FINALIZER).collect();
        if kept.len() != t.finalizers().len() {
            let patch = json!({"metadata": {"finalizers": kept, "resourceVersion": t.resource_version()}});
            tenants.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        }
        return Ok(Action::await_change());
    }
    if !t.finalizers().iter().any(|f| f == TENANT_FINALIZER) {
        let mut all = t.finalizers().to_vec();
        all.push(TENANT_FINALIZER.to_string());
        let patch = json!({"metadata": {"finalizers": all, "resourceVersion": t.resource_version()}});
        tenants.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    }
    if existing.is_some() && !ours {
        let message = format!(
            "a BpfProgram named {mirror} exists and is not this program's: a cluster admin removes or renames it, or \
             this program takes another name"
        );
        set_status(&tenants, &t, refused(&t, "MirrorNameTaken", message)).await?;
        return Ok(Action::requeue(RESYNC));
    }
    let problems = tenant_problems(&t.spec.program, &ns);
    if !problems.is_empty() {
        let message = problems.join("; ");
        set_status(&tenants, &t, refused(&t, Reason::InvalidSpec.as_str(), message)).await?;
        return Ok(Action::requeue(RESYNC));
    }
    let generation = t.metadata.generation.unwrap_or_default().to_string();
    let annotations = [(ANNOTATION_TENANT, format!("{ns}/{name}")), (ANNOTATION_TENANT_GENERATION, generation)];
    // Created if absent (a name someone takes meanwhile is not overwritten); put back
    // whole when it differs from the tenant's (someone edited it): its spec is only ever
    // the tenant's.
    let current = match existing {
        None => {
            let mut m = BpfProgram::new(&mirror, t.spec.program.clone());
            m.metadata.labels = Some(mirror_labels(&ns, &name, &uid));
            m.metadata.annotations = Some(annotations.iter().map(|(k, v)| (k.to_string(), v.clone())).collect());
            mirrors.create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &m).await?
        }
        Some(mut m) => {
            let labels = mirror_labels(&ns, &name, &uid);
            let drifted = m.spec != t.spec.program
                || labels.iter().any(|(k, v)| m.labels().get(k) != Some(v))
                || annotations.iter().any(|(k, v)| m.annotations().get(*k) != Some(v));
            if drifted {
                m.spec = t.spec.program.clone();
                m.labels_mut().extend(labels);
                m.annotations_mut().extend(annotations.iter().map(|(k, v)| (k.to_string(), v.clone())));
                m.status = None;
                let pp = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
                mirrors.replace(&mirror, &pp, &m).await?
            } else {
                m
            }
        }
    };
    if let Some(status) = mirrored_status(&current, t.status.as_ref()) {
        set_status(&tenants, &t, status).await?;
    }
    Ok(Action::requeue(RESYNC))
}

/// The mirror's status as the tenant's: the same counts and conditions, its generations
/// the tenant's. `None` while the mirror has none yet.
fn mirrored_status(mirror: &BpfProgram, current: Option<&BpfProgramStatus>) -> Option<BpfProgramStatus> {
    let mut status = mirror.status.clone()?;
    let mirror_generation = mirror.metadata.generation;
    let tenant_generation = mirror.annotations().get(ANNOTATION_TENANT_GENERATION).and_then(|g| g.parse::<i64>().ok());
    let translate = |g: Option<i64>| match (g, tenant_generation) {
        (Some(g), Some(t)) if Some(g) == mirror_generation => Some(t),
        // Older than the mirror's spec: as current as the tenant's status says.
        _ => current.and_then(|c| c.observed_generation),
    };
    status.observed_generation = translate(status.observed_generation);
    for c in &mut status.conditions {
        c.observed_generation = translate(c.observed_generation);
    }
    Some(status)
}

/// A spec that is not run: `Ready=False` and `Stalled=True` with `reason` and `message`,
/// the counts as they were (what ran keeps running).
fn refused(t: &BpfNamespacedProgram, reason: &str, message: String) -> BpfProgramStatus {
    let mut status = t.status.clone().unwrap_or_default();
    let generation = t.metadata.generation;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let condition = |type_: &str, state: &str| {
        let before = status.conditions.iter().find(|c| c.type_ == type_);
        Condition {
            type_: type_.to_string(),
            status: state.to_string(),
            reason: reason.to_string(),
            message: crds::sanitize::for_status(&message),
            observed_generation: generation,
            last_transition_time: before
                .filter(|c| c.status == state)
                .map_or(now.clone(), |c| c.last_transition_time.clone()),
        }
    };
    let conditions = vec![condition("Ready", "False"), condition("Stalled", "True"), condition("Reconciling", "False")];
    status.conditions = conditions;
    status.observed_generation = generation;
    status
}

async fn set_status(
    api: &Api<BpfNamespacedProgram>,
    t: &BpfNamespacedProgram,
    status: BpfProgramStatus,
) -> Result<(), kube::Error> {
    if t.status.as_ref() == Some(&status) {
        return Ok(());
    }
    // The whole status replaced (a merge patch would keep fields that went to zero).
    let mut whole = t.clone();
    whole.status = Some(status);
    whole.metadata.managed_fields = None;
    api.replace_status(&t.name_any(), &PostParams::default(), &whole).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(generation: i64, tenant_generation: i64, observed: i64) -> BpfProgram {
        let mut m: BpfProgram = serde_json::from_value(json!({
            "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram",
            "metadata": {"name": "team-a.web", "generation": generation,
                         "annotations": {ANNOTATION_TENANT_GENERATION: tenant_generation.to_string()}},
            "spec": {"bytecode": {"inline": "AA=="}, "programs": [{"name": "p", "type": "XDP", "xdp": {"pods": {"namespace": "team-a"}}}]},
        }))
        .unwrap();
        m.status = Some(BpfProgramStatus {
            observed_generation: Some(observed),
            ready_pods: 3,
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Ready".into(),
                message: String::new(),
                observed_generation: Some(observed),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        });
        m
    }

    #[test]
    fn the_mirror_s_status_is_the_tenant_s_in_the_tenant_s_generations() {
        let current = mirrored_status(&mirror(4, 9, 4), None).unwrap();
        assert_eq!(current.observed_generation, Some(9), "current for the mirror's spec: the tenant's generation 9");
        assert_eq!(current.conditions[0].observed_generation, Some(9));
        assert_eq!(current.ready_pods, 3);
        let before = BpfProgramStatus { observed_generation: Some(8), ..Default::default() };
        let stale = mirrored_status(&mirror(4, 9, 3), Some(&before)).unwrap();
        assert_eq!(stale.observed_generation, Some(8), "not yet current: as current as the tenant was");
    }
}
