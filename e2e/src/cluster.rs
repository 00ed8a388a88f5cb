//! The API server side: a client from `KUBECONFIG`, the CRDs from
//! `charts/bpfleet/crds/`, and every object a scenario creates, labelled with the run
//! so teardown finds them all. Synchronous on purpose: `Drop` guards call it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use crds::{BpfNode, BpfProgram};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::KubeConfigOptions;
use kube::{Api, Client, Config, ResourceExt};
use serde_json::{Value, json};

use crate::util::{block_on, block_on_timeout, repo_root};

/// Label on every object a run creates: `<RUN_LABEL>=<run id>`.
pub const RUN_LABEL: &str = "e2e.bpfleet.dev/run";
/// Field manager of the suite's server-side applies.
pub const FIELD_MANAGER: &str = "bpfleet-e2e";

pub struct Cluster {
    pub client: Client,
    /// Random id of this run: in object names and in [`RUN_LABEL`].
    pub run: String,
    /// `bpfleet-e2e-<run>`: ConfigMaps, the operator's Lease and Events.
    pub namespace: String,
    /// CRDs that did not exist before this run (removed again at teardown).
    installed_crds: Vec<String>,
    /// Nodes this run created.
    nodes: Vec<String>,
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Cluster {
    /// A client for the cluster `KUBECONFIG` (here `kubeconfig`) points at.
    pub fn connect(kubeconfig: &std::path::Path, run: &str) -> anyhow::Result<Self> {
        let client = block_on(async {
            // Reads KUBECONFIG itself, so a `:`-separated list works as with kubectl.
            let config = Config::from_kubeconfig(&KubeConfigOptions::default()).await?;
            anyhow::Ok(Client::try_from(config)?)
        })
        .with_context(|| format!("cannot build a Kubernetes client from {}", kubeconfig.display()))?;
        let version = block_on(client.apiserver_version())
            .with_context(|| format!("the API server of {} does not answer", kubeconfig.display()))?;
        eprintln!("e2e run {run}: API server {}.{} ({})", version.major, version.minor, version.git_version);
        Ok(Self {
            client,
            run: run.to_string(),
            namespace: format!("bpfleet-e2e-{run}"),
            installed_crds: Vec::new(),
            nodes: Vec::new(),
        })
    }

    /// `matchLabels`-ready label pair of this run.
    pub fn run_label(&self) -> (String, String) {
        (RUN_LABEL.to_string(), self.run.clone())
    }

    fn labels(&self, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut l = extra.clone();
        l.insert(RUN_LABEL.into(), self.run.clone());
        l
    }

    /// Server-side apply every CRD in `charts/bpfleet/crds/` and wait until each is
    /// Established. CRDs that already existed are updated but not removed at teardown.
    pub fn install_crds(&mut self) -> anyhow::Result<()> {
        let dir = repo_root().join("charts/bpfleet/crds");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("no CRD YAML in {}", dir.display());
        }
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            let mut crd: CustomResourceDefinition =
                serde_yaml::from_str(&text).with_context(|| format!("{} is not a CRD", file.display()))?;
            let name = crd.name_any();
            crd.metadata.managed_fields = None;
            let existing = wait_not_terminating(&api, &name)?;
            block_on(api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd)))
                .with_context(|| format!("cannot apply CRD {name} from {}", file.display()))?;
            if !existing {
                self.installed_crds.push(name.clone());
            }
            block_on_timeout(
                Duration::from_secs(60),
                kube::runtime::wait::await_condition(
                    api.clone(),
                    &name,
                    kube::runtime::conditions::is_crd_established(),
                ),
            )
            .with_context(|| format!("CRD {name} not Established within 60s"))??;
        }
        Ok(())
    }

    /// Refuse to run next to BpfPrograms of someone else: the local operator would
    /// reconcile them too (and an operator in the cluster would fight ours).
    pub fn check_no_foreign_programs(&self) -> anyhow::Result<()> {
        let api: Api<BpfProgram> = Api::all(self.client.clone());
        let all = match block_on(api.list(&ListParams::default())) {
            Err(e) if not_found(&e) => return Ok(()), // the CRD is not installed yet
            r => r?,
        };
        let foreign: Vec<String> =
            all.items.iter().filter(|p| !p.labels().contains_key(RUN_LABEL)).map(|p| p.name_any()).collect();
        if !foreign.is_empty() {
            bail!(
                "the cluster already has BpfPrograms ({}): run the e2e suite against a dedicated cluster without bpfleet installed",
                foreign.join(", ")
            );
        }
        Ok(())
    }

    pub fn create_namespace(&self) -> anyhow::Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(self.namespace.clone()),
                labels: Some(self.labels(&BTreeMap::new())),
                ..Default::default()
            },
            ..Default::default()
        };
        block_on(api.create(&PostParams::default(), &ns)).with_context(|| format!("namespace {}", self.namespace))?;
        Ok(())
    }

    /// A Node object for a process-mode node: `labels` plus the run label, and
    /// `status.addresses` = InternalIP `ip` (a subresource: patched after create).
    pub fn create_node(&mut self, name: &str, ip: Ipv4Addr, labels: &BTreeMap<String, String>) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let node = Node {
            metadata: ObjectMeta { name: Some(name.into()), labels: Some(self.labels(labels)), ..Default::default() },
            ..Default::default()
        };
        block_on(api.create(&PostParams::default(), &node)).with_context(|| format!("cannot create Node {name}"))?;
        self.nodes.push(name.to_string());
        let status = json!({"status": {"addresses": [
            {"type": "InternalIP", "address": ip.to_string()},
            {"type": "Hostname", "address": name},
        ]}});
        block_on(api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)))
            .with_context(|| format!("cannot set the InternalIP of Node {name}"))?;
        Ok(())
    }

    /// Merge `labels` into a Node's labels; `None` removes a label.
    pub fn set_node_labels(&self, name: &str, labels: &[(&str, Option<&str>)]) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let map: serde_json::Map<String, Value> =
            labels.iter().map(|(k, v)| (k.to_string(), v.map_or(Value::Null, |v| json!(v)))).collect();
        let patch = json!({"metadata": {"labels": map}});
        block_on(api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)))
            .with_context(|| format!("cannot relabel Node {name}"))?;
        Ok(())
    }

    pub fn delete_node(&self, name: &str) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        match block_on(api.delete(name, &DeleteParams::default())) {
            Err(e) if !not_found(&e) => Err(e).with_context(|| format!("cannot delete Node {name}")),
            _ => Ok(()),
        }
    }

    pub fn node_exists(&self, name: &str) -> anyhow::Result<bool> {
        let api: Api<Node> = Api::all(self.client.clone());
        Ok(block_on(api.get_opt(name))?.is_some())
    }

    /// A ConfigMap in the run's namespace with each object under `binaryData[key]`.
    pub fn create_bytecode_configmap(&self, name: &str, entries: &[(&str, Vec<u8>)]) -> anyhow::Result<()> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(self.labels(&BTreeMap::new())),
                ..Default::default()
            },
            binary_data: Some(entries.iter().map(|(k, v)| (k.to_string(), ByteString(v.clone()))).collect()),
            ..Default::default()
        };
        block_on(api.create(&PostParams::default(), &cm)).with_context(|| format!("cannot create ConfigMap {name}"))?;
        Ok(())
    }

    /// Replace the bytes under `key` of ConfigMap `name` (an edit, as `kubectl apply`
    /// of a rebuilt object would make).
    pub fn replace_configmap_key(&self, name: &str, key: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        use base64::Engine;
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let patch = json!({"binaryData": {key: b64}});
        block_on(api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)))
            .with_context(|| format!("cannot edit ConfigMap {name}"))?;
        Ok(())
    }

    /// Create a BpfProgram from its spec (JSON, as in a manifest), labelled with the run.
    /// Retries while the API server's discovery has not caught up with a new CRD.
    pub fn create_program(&self, name: &str, spec: Value) -> anyhow::Result<BpfProgram> {
        let api: Api<BpfProgram> = Api::all(self.client.clone());
        let obj: BpfProgram = serde_json::from_value(json!({
            "apiVersion": "bpfleet.dev/v1alpha1",
            "kind": "BpfProgram",
            "metadata": {"name": name, "labels": {RUN_LABEL: self.run}},
            "spec": spec,
        }))
        .with_context(|| format!("BpfProgram {name}: the spec does not deserialize"))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match block_on(api.create(&PostParams::default(), &obj)) {
                Ok(p) => return Ok(p),
                Err(e) if not_found(&e) && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
                Err(e) => return Err(e).with_context(|| format!("cannot create BpfProgram {name}")),
            }
        }
    }

    /// JSON merge patch of a BpfProgram's spec (a spec edit: the generation moves).
    pub fn patch_program_spec(&self, name: &str, spec_patch: Value) -> anyhow::Result<BpfProgram> {
        let api: Api<BpfProgram> = Api::all(self.client.clone());
        let patch = json!({"spec": spec_patch});
        block_on(api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)))
            .with_context(|| format!("cannot patch BpfProgram {name}"))
    }

    /// A Secret in the run's namespace (`type_`, e.g. `Opaque`), data as bytes.
    pub fn create_secret(&self, name: &str, type_: &str, data: &[(&str, Vec<u8>)]) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Secret;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let secret = Secret {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            type_: Some(type_.into()),
            data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.clone()))).collect()),
            ..Default::default()
        };
        block_on(api.create(&PostParams::default(), &secret))
            .with_context(|| format!("cannot create Secret {name}"))?;
        Ok(())
    }

    /// Set an annotation of BpfProgram `name`.
    pub fn annotate_program(&self, name: &str, key: &str, value: &str) -> anyhow::Result<()> {
        let api: Api<BpfProgram> = Api::all(self.client.clone());
        let patch = json!({"metadata": {"annotations": {key: value}}});
        block_on(api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)))
            .with_context(|| format!("cannot annotate BpfProgram {name}"))?;
        Ok(())
    }

    /// The revision history of a program: (sequence number, revision) of each of its
    /// ControllerRevisions in the run's namespace.
    pub fn controller_revisions(&self, program_uid: &str) -> anyhow::Result<Vec<(i64, String)>> {
        use k8s_openapi::api::apps::v1::ControllerRevision;
        let api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), &self.namespace);
        let lp = ListParams::default().labels(&format!("{}={program_uid}", crds::history::LABEL_PROGRAM_UID));
        let list = block_on(api.list(&lp)).context("cannot list ControllerRevisions")?;
        Ok(list
            .items
            .iter()
            .filter_map(|c| Some((c.revision, c.labels().get(crds::history::LABEL_REVISION)?.clone())))
            .collect())
    }

    pub fn program(&self, name: &str) -> anyhow::Result<Option<BpfProgram>> {
        let api: Api<BpfProgram> = Api::all(self.client.clone());
        Ok(block_on(api.get_opt(name))?)
    }

    pub fn delete_program(&self, name: &str) -> anyhow::Result<()> {
        let api: Api<BpfProgram> = Api::all(self.client.clone());
        match block_on(api.delete(name, &DeleteParams::default())) {
            Err(e) if !not_found(&e) => Err(e).with_context(|| format!("cannot delete BpfProgram {name}")),
            _ => Ok(()),
        }
    }

    pub fn bpf_node(&self, name: &str) -> anyhow::Result<Option<BpfNode>> {
        let api: Api<BpfNode> = Api::all(self.client.clone());
        Ok(block_on(api.get_opt(name))?)
    }

    /// Names of this run's BpfPrograms that still exist.
    pub fn run_programs(&self) -> anyhow::Result<Vec<String>> {
        let api: Api<BpfProgram> = Api::all(self.client.clone());
        let lp = ListParams::default().labels(&format!("{RUN_LABEL}={}", self.run));
        Ok(block_on(api.list(&lp))?.items.iter().map(ResourceExt::name_any).collect())
    }

    /// Delete this run's BpfPrograms and give a running operator `grace` to remove them
    /// from the nodes (its finalizer); then drop the finalizer of any that remain so
    /// nothing is left in the cluster. Returns what had to be forced, in words.
    pub fn delete_run_programs(&self, grace: Duration) -> Vec<String> {
        let names = self.run_programs().unwrap_or_default();
        for n in &names {
            let _ = self.delete_program(n);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !self.run_programs().unwrap_or_default().is_empty() {
            std::thread::sleep(Duration::from_millis(500));
        }
        let api: Api<BpfProgram> = Api::all(self.client.clone());
        let mut forced = Vec::new();
        for n in self.run_programs().unwrap_or_default() {
            let why = block_on(api.get_opt(&n))
                .ok()
                .flatten()
                .and_then(|p| p.status)
                .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.message)
                .unwrap_or_default();
            forced.push(format!("{n} ({why})"));
            let patch = json!({"metadata": {"finalizers": null}});
            let _ = block_on(api.patch(&n, &PatchParams::default(), &Patch::Merge(&patch)));
        }
        forced
    }

    /// Remove everything else this run created: BpfNodes and Nodes, the namespace,
    /// and the CRDs it installed (waiting until they are gone, so the next run can
    /// install them again). Never panics; returns what it could not remove.
    pub fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let bpfnodes: Api<BpfNode> = Api::all(self.client.clone());
        let lp = ListParams::default().labels(&format!("{RUN_LABEL}={}", self.run));
        let mut names: Vec<String> = self.nodes.clone();
        if let Ok(list) = block_on(nodes.list(&lp)) {
            names.extend(list.items.iter().map(ResourceExt::name_any));
        }
        names.sort();
        names.dedup();
        for n in &names {
            if let Err(e) = self.delete_node(n) {
                problems.push(format!("{e:#}"));
            }
            match block_on(bpfnodes.delete(n, &DeleteParams::default())) {
                Err(e) if !not_found(&e) => problems.push(format!("BpfNode {n}: {e}")),
                _ => {}
            }
        }
        // Events about cluster-scoped objects (BpfPrograms, BpfNodes, Nodes) live in "default".
        let events: Api<Event> = Api::namespaced(self.client.clone(), "default");
        let suffix = format!("-{}", self.run);
        if let Ok(list) = block_on(events.list(&ListParams::default())) {
            for ev in list.items {
                let ours = ev.regarding.as_ref().is_some_and(|r| {
                    let kind_ours = r.api_version.as_deref().is_some_and(|v| v.starts_with("bpfleet.dev/"))
                        || r.kind.as_deref() == Some("Node");
                    kind_ours && r.name.as_deref().is_some_and(|n| n.ends_with(&suffix))
                });
                if ours {
                    let _ = block_on(events.delete(&ev.name_any(), &DeleteParams::default()));
                }
            }
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        match block_on(namespaces.delete(&self.namespace, &DeleteParams::default())) {
            Err(e) if !not_found(&e) => problems.push(format!("namespace {}: {e}", self.namespace)),
            _ => {}
        }
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for name in std::mem::take(&mut self.installed_crds) {
            match block_on(crds.delete(&name, &DeleteParams::default())) {
                Err(e) if !not_found(&e) => problems.push(format!("CRD {name}: {e}")),
                _ => {}
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && block_on(crds.get_opt(&name)).ok().flatten().is_some() {
                std::thread::sleep(Duration::from_millis(500));
            }
            if block_on(crds.get_opt(&name)).ok().flatten().is_some() {
                problems.push(format!("CRD {name} still exists after 60s"));
            }
        }
        problems
    }
}

/// Whether CRD `name` exists (and is not being deleted); waits out a deletion in progress.
fn wait_not_terminating(api: &Api<CustomResourceDefinition>, name: &str) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match block_on(api.get_opt(name))? {
            None => return Ok(false),
            Some(c) if c.metadata.deletion_timestamp.is_none() => return Ok(true),
            Some(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
            Some(_) => bail!("CRD {name} has been terminating for 60s; remove it (and its objects) by hand"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `install_crds` applies: every file of the chart is a CRD of our group.
    #[test]
    fn chart_crds_parse() {
        let dir = repo_root().join("charts/bpfleet/crds");
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let crd: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(e.path()).unwrap())
                .unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
            assert_eq!(crd.spec.group, crds::GROUP);
            names.push(crd.name_any());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "bpfadmissionpolicies.bpfleet.dev",
                "bpfnamespacedprograms.bpfleet.dev",
                "bpfnodes.bpfleet.dev",
                "bpfprograms.bpfleet.dev"
            ]
        );
    }
}
