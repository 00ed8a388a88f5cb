//! Which namespaces ConfigMap bytecode may come from: the operator's own (`--namespace`)
//! and the ones a cluster admin labels `bpfleet.dev/bytecode-source=allowed`. A
//! BpfProgram that names any other is refused before anything is read there (not the
//! ConfigMap, not whether it exists): writing a BpfProgram must not be a way to copy, or
//! to run, the ConfigMaps of `kube-system`.
//!
//! A tenant's mirror (`crds::tenant`: the BpfProgram that runs a BpfNamespacedProgram)
//! may also read the ConfigMaps of the tenant's own namespace, and only those: checked
//! against the BpfNamespacedProgram itself (its uid, once per mirror), not on the
//! mirror's word.
//!
//! The labelled namespaces are watched (metadata only, selected by the label): labelling
//! a namespace reconciles at once the programs that name its ConfigMaps, and removing
//! the label refuses their next reconcile. Until that watch has listed them, and where
//! there is no watch (tests, rollbacks read from history), a check asks the API server
//! for the Namespace.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use crds::BpfProgram;
use crds::program::{BYTECODE_SOURCE_ALLOWED, LABEL_BYTECODE_SOURCE};
use crds::reason::Reason;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

use crate::status::SpecProblem;

/// The `--namespace` default: where the operator runs when nobody says otherwise.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "bpfleet-system";

/// The namespaces ConfigMap bytecode may come from.
#[derive(Debug)]
pub struct Sources {
    operator_namespace: String,
    state: RwLock<Watched>,
}

#[derive(Debug, Default)]
struct Watched {
    /// The opted-in namespaces, as the watch last listed and followed them; `None` until
    /// its first list is complete.
    opted_in: Option<BTreeSet<String>>,
    /// A list in progress (between the watch's `Init` and `InitDone`).
    listing: Option<BTreeSet<String>>,
}

impl Default for Sources {
    fn default() -> Self {
        Self::new(DEFAULT_OPERATOR_NAMESPACE)
    }
}

impl Sources {
    pub fn new(operator_namespace: impl Into<String>) -> Self {
        Self { operator_namespace: operator_namespace.into(), state: Default::default() }
    }

    pub fn operator_namespace(&self) -> &str {
        &self.operator_namespace
    }

    /// Whether ConfigMaps of `namespace` may be read, as far as known without asking the
    /// API server; `None`: only the API server can tell.
    pub fn known(&self, namespace: &str) -> Option<bool> {
        if namespace == self.operator_namespace {
            return Some(true);
        }
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.opted_in.as_ref().map(|set| set.contains(namespace))
    }

    /// `Ok` when ConfigMaps of `namespace` may be read as bytecode; otherwise why not and
    /// how to opt in. Asks the API server for the Namespace (its metadata) only when the
    /// watch cannot answer.
    pub async fn check(&self, client: &Client, namespace: &str) -> Result<(), SpecProblem> {
        let allowed = match self.known(namespace) {
            Some(allowed) => allowed,
            None => {
                let api: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
                let found = api.get_opt(namespace).await.map_err(|e| SpecProblem {
                    reason: Reason::BytecodeUnavailable,
                    message: format!(
                        "cannot tell whether namespace {namespace} allows bytecode sources (the operator needs \
                         `get` on namespaces): {e}"
                    ),
                })?;
                found.is_some_and(|ns| opted_in(&ns))
            }
        };
        if allowed { Ok(()) } else { Err(self.refusal(namespace)) }
    }

    /// As [`Self::check`] for `program`'s bytecode; a tenant's mirror may also read its
    /// tenant's namespace.
    pub async fn check_for(&self, client: &Client, namespace: &str, program: &BpfProgram) -> Result<(), SpecProblem> {
        let refused = match self.check(client, namespace).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        match self.is_mirror_in(client, namespace, program).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(refused),
            Err(e) => Err(SpecProblem {
                reason: Reason::BytecodeUnavailable,
                message: format!(
                    "cannot tell whether {} runs a BpfNamespacedProgram of {namespace}: {e}",
                    program.name_any()
                ),
            }),
        }
    }

    /// Whether `program` is the mirror of a BpfNamespacedProgram of `namespace`: its
    /// labels and annotation say so, its name is that program's mirror name, that program
    /// exists with the uid the labels give, and names the same ConfigMap. Asked of the API
    /// server at each check (a mirror someone edited, or a tenant gone, reads nothing).
    async fn is_mirror_in(&self, client: &Client, namespace: &str, program: &BpfProgram) -> Result<bool, kube::Error> {
        use crds::tenant::{ANNOTATION_TENANT, mirror_name, tenant_of};
        let Some((ns, uid)) = tenant_of(program.labels()) else { return Ok(false) };
        let Some(name) = program.annotations().get(ANNOTATION_TENANT).and_then(|t| t.strip_prefix(&format!("{ns}/")))
        else {
            return Ok(false);
        };
        if ns != namespace || mirror_name(ns, name) != program.name_any() {
            return Ok(false);
        }
        let api: Api<crds::BpfNamespacedProgram> = Api::namespaced(client.clone(), ns);
        let found = api.get_opt(name).await?;
        Ok(found.is_some_and(|t| {
            t.uid().as_deref() == Some(uid)
                && t.metadata.deletion_timestamp.is_none()
                && t.spec.program.bytecode.config_map == program.spec.bytecode.config_map
        }))
    }

    fn refusal(&self, namespace: &str) -> SpecProblem {
        let own = &self.operator_namespace;
        SpecProblem {
            reason: Reason::BytecodeSourceNotAllowed,
            message: format!(
                "ConfigMap bytecode is read only from the operator's namespace ({own}) or a namespace labelled \
                 {LABEL_BYTECODE_SOURCE}={BYTECODE_SOURCE_ALLOWED}, and namespace {namespace} is neither, so \
                 nothing was read from it. Move the ConfigMap to {own}, or have a cluster admin opt the \
                 namespace in: kubectl label namespace {namespace} {LABEL_BYTECODE_SOURCE}={BYTECODE_SOURCE_ALLOWED}"
            ),
        }
    }

    /// Take one event of the opted-in namespaces' watch; returns the namespaces whose
    /// answer changed (their programs must be looked at again).
    pub fn observe(&self, event: watcher::Event<PartialObjectMeta<Namespace>>) -> BTreeSet<String> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let state = &mut *state;
        match event {
            watcher::Event::Init => {
                state.listing = Some(BTreeSet::new());
                BTreeSet::new()
            }
            watcher::Event::InitApply(ns) => {
                if opted_in(&ns) {
                    state.listing.get_or_insert_default().insert(ns.name_any());
                }
                BTreeSet::new()
            }
            watcher::Event::InitDone => {
                let listed = state.listing.take().unwrap_or_default();
                // Before the first list, checks asked the API server: a namespace
                // labelled since then may hold programs refused meanwhile.
                let before = state.opted_in.replace(listed.clone()).unwrap_or_default();
                before.symmetric_difference(&listed).cloned().collect()
            }
            // Not listed yet: the list that follows says it all.
            watcher::Event::Apply(_) | watcher::Event::Delete(_) if state.opted_in.is_none() => BTreeSet::new(),
            watcher::Event::Apply(ns) => {
                let (name, now) = (ns.name_any(), opted_in(&ns));
                let set = state.opted_in.get_or_insert_default();
                let changed = if now { set.insert(name.clone()) } else { set.remove(&name) };
                if changed { BTreeSet::from([name]) } else { BTreeSet::new() }
            }
            watcher::Event::Delete(ns) => {
                let name = ns.name_any();
                let set = state.opted_in.get_or_insert_default();
                if set.remove(&name) { BTreeSet::from([name]) } else { BTreeSet::new() }
            }
        }
    }
}

/// Whether a Namespace carries the opt-in label.
pub fn opted_in(ns: &PartialObjectMeta<Namespace>) -> bool {
    ns.labels().get(LABEL_BYTECODE_SOURCE).is_some_and(|v| v == BYTECODE_SOURCE_ALLOWED)
}

/// Follow the opted-in namespaces into `sources` and reconcile the programs that name a
/// ConfigMap of a namespace that opted in or out. Runs until the watch ends.
pub async fn watch_namespaces(
    client: Client,
    sources: Arc<Sources>,
    programs: Store<BpfProgram>,
    targeted: mpsc::Sender<ObjectRef<BpfProgram>>,
) {
    let api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
    let selector = format!("{LABEL_BYTECODE_SOURCE}={BYTECODE_SOURCE_ALLOWED}");
    let stream = watcher(api, watcher::Config::default().labels(&selector)).default_backoff();
    futures::pin_mut!(stream);
    loop {
        let event = match stream.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "Namespace watch (bytecode sources)");
                continue;
            }
        };
        for namespace in sources.observe(event) {
            let naming = programs
                .state()
                .into_iter()
                .filter(|p| p.spec.bytecode.config_map.as_ref().is_some_and(|c| c.namespace == namespace));
            for p in naming {
                tracing::info!(program = %p.name_any(), %namespace, "bytecode source namespace opted in or out");
                if targeted.send(ObjectRef::from_obj(p.as_ref())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ns(name: &str, label: Option<&str>) -> PartialObjectMeta<Namespace> {
        let labels = label.map(|v| json!({LABEL_BYTECODE_SOURCE: v})).unwrap_or(json!({}));
        serde_json::from_value(json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": name, "labels": labels}}))
        .unwrap()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_the_operators_namespace_is_known_before_the_watch_lists() {
        let s = Sources::new("ops");
        assert_eq!(s.known("ops"), Some(true));
        assert_eq!(s.known("kube-system"), None, "only the API server can tell yet");
    }

    #[test]
    fn the_watch_decides_once_listed_and_reports_what_changed() {
        use watcher::Event::*;
        let s = Sources::new("ops");
        assert!(s.observe(Init).is_empty());
        assert!(s.observe(InitApply(ns("team-a", Some("allowed")))).is_empty());
        // Only the exact value opts in.
        assert!(s.observe(InitApply(ns("team-b", Some("yes")))).is_empty());
        assert_eq!(s.known("team-a"), None, "not decided in the middle of a list");
        assert_eq!(s.observe(InitDone), set(&["team-a"]), "programs refused before the list are looked at again");
        assert_eq!(
            (s.known("team-a"), s.known("team-b"), s.known("kube-system")),
            (Some(true), Some(false), Some(false))
        );
        assert_eq!(s.known("ops"), Some(true), "the operator's own namespace needs no label");

        assert_eq!(s.observe(Apply(ns("kube-system", Some("allowed")))), set(&["kube-system"]));
        assert!(s.observe(Apply(ns("kube-system", Some("allowed")))).is_empty(), "no change, no reconcile");
        assert_eq!(s.observe(Apply(ns("team-a", None))), set(&["team-a"]), "label removed");
        assert_eq!(s.known("team-a"), Some(false));
        assert_eq!(s.observe(Delete(ns("kube-system", Some("allowed")))), set(&["kube-system"]));
        assert_eq!(s.known("kube-system"), Some(false));

        // A relist (after a watch error) reports what changed meanwhile.
        s.observe(Apply(ns("team-c", Some("allowed"))));
        s.observe(Init);
        s.observe(InitApply(ns("team-d", Some("allowed"))));
        assert_eq!(s.known("team-c"), Some(true), "the old answer holds until the list is complete");
        assert_eq!(s.observe(InitDone), set(&["team-c", "team-d"]));
        assert_eq!((s.known("team-c"), s.known("team-d")), (Some(false), Some(true)));
    }

    #[test]
    fn a_refusal_names_the_namespace_and_how_to_opt_in() {
        let p = Sources::new("bpfleet-system").refusal("kube-system");
        assert_eq!(p.reason, Reason::BytecodeSourceNotAllowed);
        for words in [
            "namespace kube-system is neither",
            "nothing was read from it",
            "Move the ConfigMap to bpfleet-system",
            "kubectl label namespace kube-system bpfleet.dev/bytecode-source=allowed",
        ] {
            assert!(p.message.contains(words), "{words:?} missing from {}", p.message);
        }
    }
}
