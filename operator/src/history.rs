//! Revision history in ControllerRevisions (the contract is `crds::history`): every
//! revision rolled out is recorded with its bytes, so a rollback sends nodes exactly
//! what they ran before, even after the ConfigMap it came from changed or went.
//!
//! Except bytes that whoever reads the operator's namespace must not read: those of a
//! ConfigMap in another namespace are recorded by reference and digest. A rollback reads
//! that ConfigMap again (if its namespace is still allowed) and sends it only if it
//! still holds the recorded object; an image over the size limit is recorded by its
//! pinned reference and pulled again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use crds::history::{ANNOTATION_PROGRAM, LABEL_PROGRAM_UID, LABEL_REVISION, RevisionData, object_name};
use crds::revision::Sha256Digest;
use crds::rollout::MapPolicy;
use crds::{BpfProgram, BpfProgramSpec, ProgramSpec};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};

use crate::bytecode::{Payload, Sources};

pub const DEFAULT_HISTORY_LIMIT: usize = 10;
/// Contents kept in memory per program: earlier revisions read back for a rollback, and
/// revisions whose entry could not be written.
const CACHED_PER_PROGRAM: usize = 3;

/// Everything an Apply of one revision carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Content {
    pub revision: String,
    pub payload: Payload,
    pub programs: Vec<ProgramSpec>,
    pub global_data: BTreeMap<String, String>,
    pub maps: Vec<MapPolicy>,
    pub metrics: Vec<crds::metrics::MetricSpec>,
    /// The uid of each BpfProgram whose maps `maps[].from` uses, by name (resolved with
    /// the spec; not part of the revision).
    pub map_owners: BTreeMap<String, String>,
}

impl Content {
    pub fn of_spec(spec: &BpfProgramSpec, payload: Payload, revision: String) -> Content {
        Content {
            revision,
            payload,
            programs: spec.programs.clone(),
            global_data: spec.global_data.clone(),
            maps: spec.maps.clone(),
            metrics: spec.metrics.clone(),
            map_owners: BTreeMap::new(),
        }
    }

    /// The record of this content, with the spec's bytecode source as it was, to be kept
    /// in `operator_namespace`.
    pub fn to_data(&self, source: &crds::program::BytecodeSource, operator_namespace: &str) -> RevisionData {
        let (elf, digest) = match &self.payload {
            // Inline bytes are in the source already: not twice.
            Payload::Elf(b) if source.inline.is_some() => (None, Some(Sha256Digest::of(b).to_string())),
            // A ConfigMap of another namespace is not copied where the readers of the
            // operator's namespace would read it: by reference and digest.
            Payload::Elf(b) if source.config_map.as_ref().is_some_and(|c| c.namespace != operator_namespace) => {
                (None, Some(Sha256Digest::of(b).to_string()))
            }
            // An ELF from an image may exceed what an object can hold (16 MiB against
            // etcd's 1.5 MiB): such a revision is recorded by its pinned image reference.
            Payload::Elf(b) if b.len() > crds::limits::MAX_BYTECODE_BYTES => {
                (None, Some(Sha256Digest::of(b).to_string()))
            }
            Payload::Elf(b) => (Some(B64.encode(b)), Some(Sha256Digest::of(b).to_string())),
            Payload::Path(_, d) => (None, d.as_ref().map(ToString::to_string)),
        };
        RevisionData {
            bytecode: source.clone(),
            elf,
            digest,
            programs: self.programs.clone(),
            global_data: self.global_data.clone(),
            maps: self.maps.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// A recorded revision, checked: its bytes match its digest and everything hashes
    /// to the revision it is recorded as, so a hand-edited record is refused.
    pub fn from_data(revision: &str, data: RevisionData) -> Result<Content, String> {
        Self::from_data_with(revision, data, None)
    }

    /// As [`Content::from_data`], with the ELF of a revision recorded by reference (an
    /// image pulled, a ConfigMap read again, by the caller).
    pub fn from_data_with(
        revision: &str,
        data: RevisionData,
        fetched: Option<bytes::Bytes>,
    ) -> Result<Content, String> {
        let decode = |b64: &str| B64.decode(b64.trim()).map_err(|e| format!("its ELF is not base64: {e}"));
        let elf = match (&data.elf, fetched, &data.bytecode.inline) {
            (Some(elf), _, _) => Some(decode(elf)?),
            (None, Some(b), _) => Some(b.to_vec()),
            (None, None, Some(inline)) => Some(decode(inline)?),
            (None, None, None) => None,
        };
        let payload = match (elf, &data.bytecode.path) {
            (Some(bytes), _) => {
                if data.digest.as_deref() != Some(Sha256Digest::of(&bytes).as_str()) {
                    return Err("its ELF does not match its recorded digest".into());
                }
                Payload::Elf(bytes.into())
            }
            (None, Some(path)) => Payload::Path(path.clone(), data.digest.as_deref().and_then(Sha256Digest::parse)),
            (None, None) if data.bytecode.image.is_some() => {
                return Err("it records its image by reference: pull it".into());
            }
            (None, None) if data.bytecode.config_map.is_some() => {
                return Err("it records its ConfigMap by reference: read it again".into());
            }
            (None, None) => return Err("it records neither ELF bytes nor a path".into()),
        };
        let spec = BpfProgramSpec {
            node_selector: Default::default(),
            bytecode: data.bytecode,
            global_data: data.global_data,
            programs: data.programs,
            rollout: None,
            revision_history_limit: None,
            maps: data.maps,
            metrics: data.metrics,
        };
        let computed = payload.revision(&spec).to_string();
        if computed != revision {
            return Err(format!("its content hashes to {computed}, not {revision}"));
        }
        Ok(Content::of_spec(&spec, payload, revision.to_string()))
    }
}

/// Which recorded revisions go: the oldest beyond `limit`, never `keep` ones.
/// `records` are (sequence number, revision).
pub fn to_prune(records: &[(i64, String)], keep: &[&str], limit: usize) -> Vec<String> {
    let mut old: Vec<&(i64, String)> = records.iter().filter(|(_, r)| !keep.contains(&r.as_str())).collect();
    old.sort_by_key(|r| std::cmp::Reverse(r.0));
    old.into_iter().skip(limit).map(|(_, r)| r.clone()).collect()
}

/// The sequence number a revision being rolled out gets: the next after the newest,
/// unless it already is the newest.
pub fn next_number(records: &[(i64, String)], revision: &str) -> Option<i64> {
    let newest = records.iter().max_by_key(|(n, _)| *n);
    match newest {
        Some((_, r)) if r == revision => None,
        Some((n, _)) => Some(n + 1),
        None => Some(1),
    }
}

/// Whether an entry found under the name of a new record is a leftover of an earlier
/// BpfProgram of the same name (deleted; the garbage collector has not removed its
/// history yet, or never will after an orphaning delete), which the new record replaces.
/// An entry of this very program is kept, and so is one of another program whose long
/// name was cut to the same object name.
pub fn is_leftover(existing: &ControllerRevision, uid: &str, program: &str) -> bool {
    existing.labels().get(LABEL_PROGRAM_UID).is_some_and(|u| u != uid)
        && existing.annotations().get(ANNOTATION_PROGRAM).is_some_and(|n| n == program)
}

/// Why a recorded revision cannot be used.
enum Unusable {
    /// Perhaps later: the API server or a registry did not answer, or a ConfigMap the
    /// entry refers to is not (or no longer) what it recorded.
    ForNow(String),
    /// Never: the entry is missing, misfiled or tampered with.
    Ever(String),
}

/// The revision history of one leadership term: the ControllerRevisions it keeps, or
/// none ([`History::disabled`]: an operator without them, as in tests, sends only the
/// spec's revision).
pub struct History(Option<Kept>);

impl History {
    pub fn new(client: Client, namespace: String) -> Self {
        Self(Some(Kept::new(client, namespace)))
    }

    /// Keeps nothing: recording does nothing, and no earlier revision can be read.
    pub fn disabled() -> Self {
        Self(None)
    }

    /// Forget a deleted program.
    pub fn forget(&self, uid: &str) {
        if let Some(kept) = &self.0 {
            kept.forget(uid);
        }
    }

    /// See [`Kept::record`].
    pub async fn record(
        &self,
        p: &BpfProgram,
        content: &Content,
        source: &crds::program::BytecodeSource,
        stable: Option<&str>,
    ) -> Result<(), kube::Error> {
        match &self.0 {
            Some(kept) => kept.record(p, content, source, stable).await,
            None => Ok(()),
        }
    }

    /// The content of a recorded revision of `p` (see [`Kept::content`]); a revision
    /// recorded by image reference is pulled from `images` for `arch`.
    pub async fn content(
        &self,
        p: &BpfProgram,
        revision: &str,
        images: &crate::image::ImageSource,
        arch: &str,
    ) -> Result<Arc<Content>, String> {
        match &self.0 {
            Some(kept) => kept.content(p, revision, images.images().map(|i| (i, arch))).await,
            None => Err("no revision history in this operator".to_string()),
        }
    }
}

/// The ControllerRevisions of one leadership term.
pub struct Kept {
    client: Client,
    namespace: String,
    /// Where a revision recorded by ConfigMap reference may be read again: the same
    /// rule as for the spec's bytecode (no watch here: a rollback asks the API server).
    sources: Sources,
    /// (uid, revision) known to be recorded as the newest entry.
    newest: Mutex<HashMap<String, String>>,
    contents: Mutex<HashMap<String, Vec<Arc<Content>>>>,
    unreadable: Mutex<HashSet<(String, String)>>,
}

impl Kept {
    fn new(client: Client, namespace: String) -> Self {
        Self {
            client,
            sources: Sources::new(namespace.clone()),
            namespace,
            newest: Default::default(),
            contents: Default::default(),
            unreadable: Default::default(),
        }
    }

    fn api(&self) -> Api<ControllerRevision> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn remember(&self, uid: &str, content: Arc<Content>) {
        let mut m = self.contents.lock().unwrap_or_else(|p| p.into_inner());
        let v = m.entry(uid.to_string()).or_default();
        v.retain(|c| c.revision != content.revision);
        v.insert(0, content);
        v.truncate(CACHED_PER_PROGRAM);
    }

    fn forget(&self, uid: &str) {
        self.contents.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
        self.newest.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }

    /// Record `content` as the revision `p` rolls out now, and prune beyond the limit
    /// (`stable` is always kept). One List per new revision; nothing when unchanged.
    /// `source` is the spec's bytecode source as it must be restored (an image pinned to
    /// the digest it resolved to).
    ///
    /// The content is kept in memory only when its entry could not be written: a rollback
    /// to it then still has it. Otherwise a rollback reads the entry back (one GET), so at
    /// rest the operator holds no second copy of every program's bytecode.
    pub async fn record(
        &self,
        p: &BpfProgram,
        content: &Content,
        source: &crds::program::BytecodeSource,
        stable: Option<&str>,
    ) -> Result<(), kube::Error> {
        let result = self.write_entry(p, content, source, stable).await;
        if result.is_err() {
            self.remember(&p.uid().unwrap_or_default(), Arc::new(content.clone()));
        }
        result
    }

    async fn write_entry(
        &self,
        p: &BpfProgram,
        content: &Content,
        source: &crds::program::BytecodeSource,
        stable: Option<&str>,
    ) -> Result<(), kube::Error> {
        let uid = p.uid().unwrap_or_default();
        if self.newest.lock().unwrap_or_else(|e| e.into_inner()).get(&uid) == Some(&content.revision) {
            return Ok(());
        }
        let api = self.api();
        let listed = api.list(&ListParams::default().labels(&format!("{LABEL_PROGRAM_UID}={uid}"))).await?;
        let records: Vec<(i64, String)> = listed
            .items
            .iter()
            .filter_map(|cr| Some((cr.revision, cr.labels().get(LABEL_REVISION)?.clone())))
            .collect();
        if let Some(number) = next_number(&records, &content.revision) {
            let name = object_name(&p.name_any(), &content.revision);
            if records.iter().any(|(_, r)| *r == content.revision) {
                // A revert: the old record becomes the newest, as for Deployments.
                let patch = serde_json::json!({"revision": number});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            } else {
                let data = serde_json::to_value(content.to_data(source, &self.namespace)).unwrap_or_default();
                let cr = ControllerRevision {
                    metadata: ObjectMeta {
                        name: Some(name),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(BTreeMap::from([
                            (LABEL_PROGRAM_UID.to_string(), uid.clone()),
                            (LABEL_REVISION.to_string(), content.revision.clone()),
                        ])),
                        annotations: Some(BTreeMap::from([(ANNOTATION_PROGRAM.to_string(), p.name_any())])),
                        owner_references: Some(vec![owner_reference(p)]),
                        ..Default::default()
                    },
                    data: Some(RawExtension(data)),
                    revision: number,
                };
                match api.create(&PostParams::default(), &cr).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => self.replace_leftover(&api, &cr, &uid, p).await?,
                    Err(e) => return Err(e),
                }
            }
        }
        let limit = p.spec.revision_history_limit.map_or(DEFAULT_HISTORY_LIMIT, |l| l.max(0) as usize);
        let mut keep = vec![content.revision.as_str()];
        keep.extend(stable);
        for gone in to_prune(&records, &keep, limit) {
            let name = object_name(&p.name_any(), &gone);
            if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
                tracing::debug!(%name, error = %e, "cannot prune a history entry");
            }
        }
        self.newest.lock().unwrap_or_else(|e| e.into_inner()).insert(uid, content.revision.clone());
        Ok(())
    }

    /// `cr` exists already: nothing to do when it is this program's own (written before a
    /// restart), but one left by a deleted program of the same name would make this
    /// revision unusable for a rollback after the next restart: replace it.
    async fn replace_leftover(
        &self,
        api: &Api<ControllerRevision>,
        cr: &ControllerRevision,
        uid: &str,
        p: &BpfProgram,
    ) -> Result<(), kube::Error> {
        let name = cr.name_any();
        let Some(existing) = api.get_opt(&name).await? else { return Ok(()) };
        if !is_leftover(&existing, uid, &p.name_any()) {
            return Ok(());
        }
        tracing::info!(%name, "replacing a history entry left by a deleted program of the same name");
        // Only that object: if it changed meanwhile, the next reconcile looks again.
        let dp = DeleteParams {
            preconditions: existing.uid().map(|u| kube::api::Preconditions { uid: Some(u), resource_version: None }),
            ..Default::default()
        };
        api.delete(&name, &dp).await?;
        api.create(&PostParams::default(), cr).await?;
        Ok(())
    }

    /// The content of a recorded revision of `p`: from memory, else its ControllerRevision.
    /// A revision recorded by image reference is pulled through `images` (for `arch`).
    pub async fn content(
        &self,
        p: &BpfProgram,
        revision: &str,
        images: Option<(&crate::image::Images, &str)>,
    ) -> Result<Arc<Content>, String> {
        let uid = p.uid().unwrap_or_default();
        let cached = self
            .contents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&uid)
            .and_then(|v| v.iter().find(|c| c.revision == revision).cloned());
        if let Some(c) = cached {
            return Ok(c);
        }
        let key = (uid.clone(), revision.to_string());
        if self.unreadable.lock().unwrap_or_else(|e| e.into_inner()).contains(&key) {
            return Err(format!("revision {revision} has no usable history entry"));
        }
        let name = object_name(&p.name_any(), revision);
        let read = async {
            use Unusable::{Ever, ForNow};
            let cr = self.api().get_opt(&name).await.map_err(|e| ForNow(format!("cannot read {name}: {e}")))?;
            let cr = cr.ok_or_else(|| {
                Ever(format!("revision {revision} is not in the history (no ControllerRevision {name})"))
            })?;
            if cr.labels().get(LABEL_PROGRAM_UID) != Some(&uid) {
                return Err(Ever(format!("ControllerRevision {name} belongs to another program")));
            }
            if !crds::history::owned_by_program(&cr.metadata, &uid) {
                return Err(Ever(format!(
                    "ControllerRevision {name} is not owned by BpfProgram {} (uid {uid}): not history this \
                     operator wrote",
                    p.name_any()
                )));
            }
            let data: RevisionData = serde_json::from_value(cr.data.map(|d| d.0).unwrap_or_default())
                .map_err(|e| Ever(format!("ControllerRevision {name} is unreadable: {e}")))?;
            let fetched = match (&data.elf, &data.bytecode.image, &data.bytecode.config_map, images) {
                (None, Some(image), _, Some((images, arch))) => {
                    Some(images.pull_pinned(image, arch).await.map_err(|e| {
                        ForNow(format!("cannot pull revision {revision} ({}): {}", image.url, e.message))
                    })?)
                }
                (None, None, Some(cm), _) => {
                    Some(self.read_again(p, revision, cm, data.digest.as_deref()).await.map_err(ForNow)?)
                }
                _ => None,
            };
            Content::from_data_with(revision, data, fetched)
                .map_err(|e| Ever(format!("ControllerRevision {name} is refused: {e}")))
        };
        match read.await {
            Ok(c) => {
                let c = Arc::new(c);
                self.remember(&uid, c.clone());
                Ok(c)
            }
            Err(Unusable::ForNow(e)) => Err(e),
            Err(Unusable::Ever(e)) => {
                self.unreadable.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
                Err(e)
            }
        }
    }

    /// The object of a revision recorded by reference to ConfigMap `cm`, read again
    /// through the same namespace rule as the spec's, and only if it is still the one
    /// recorded (`recorded`: its digest).
    async fn read_again(
        &self,
        p: &BpfProgram,
        revision: &str,
        cm: &crds::program::ConfigMapBytecode,
        recorded: Option<&str>,
    ) -> Result<bytes::Bytes, String> {
        let at = format!("ConfigMap {}/{} key {}", cm.namespace, cm.name, cm.key);
        let recorded = recorded.unwrap_or("no digest");
        let bytes = crate::bytecode::read_config_map(&self.client, &self.sources, cm, p).await.map_err(|e| {
            format!(
                "revision {revision} was recorded by reference to {at} ({recorded}), which cannot be read again: {}",
                e.message
            )
        })?;
        let now = Sha256Digest::of(&bytes);
        if now.as_str() != recorded {
            return Err(format!(
                "the bytes of revision {revision} are gone: it was recorded by reference to {at} ({recorded}), \
                 which now holds another object ({now}). Put that object back under the key to return to revision \
                 {revision}, or roll forward to a new revision"
            ));
        }
        Ok(bytes)
    }
}

fn owner_reference(p: &BpfProgram) -> OwnerReference {
    OwnerReference {
        api_version: BpfProgram::api_version(&()).to_string(),
        kind: BpfProgram::kind(&()).to_string(),
        name: p.name_any(),
        uid: p.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageSource;

    fn spec() -> BpfProgramSpec {
        serde_yaml::from_str(
            "bytecode: {configMap: {name: cm, namespace: ns, key: o}}\nprograms: [{name: f, type: XDP, xdp: {interfaces: [eth0]}}]\nglobalData: {X: AQ==}",
        )
        .unwrap()
    }

    #[test]
    fn a_record_brings_back_exactly_what_ran() {
        let spec = spec();
        let payload = Payload::Elf(bytes::Bytes::from_static(b"\x7fELF v1"));
        let rev = payload.revision(&spec).to_string();
        let content = Content::of_spec(&spec, payload, rev.clone());
        let data = content.to_data(&spec.bytecode, "ns");
        assert!(data.elf.is_some(), "bytes of the operator's own namespace are recorded");
        assert_eq!(data.bytecode, spec.bytecode, "undo restores the source as it was");
        let json = serde_json::to_value(&data).unwrap();
        let back = Content::from_data(&rev, serde_json::from_value(json).unwrap()).unwrap();
        assert_eq!(back, content);
    }

    #[test]
    fn tampered_or_misfiled_records_are_refused() {
        let spec = spec();
        let payload = Payload::Elf(bytes::Bytes::from_static(b"\x7fELF v1"));
        let rev = payload.revision(&spec).to_string();
        let content = Content::of_spec(&spec, payload, rev.clone());
        let mut data = content.to_data(&spec.bytecode, "ns");
        data.elf = Some(B64.encode(b"\x7fELF v2"));
        assert!(Content::from_data(&rev, data).unwrap_err().contains("digest"));
        let mut data = content.to_data(&spec.bytecode, "ns");
        data.global_data.insert("X".into(), "Ag==".into());
        assert!(Content::from_data(&rev, data).unwrap_err().contains("hashes to"));
        assert!(Content::from_data("0000000000000000", content.to_data(&spec.bytecode, "ns")).is_err());
    }

    #[test]
    fn a_config_map_of_another_namespace_is_recorded_by_reference_and_digest() {
        let spec = spec();
        let elf = bytes::Bytes::from_static(b"\x7fELF v1");
        let payload = Payload::Elf(elf.clone());
        let rev = payload.revision(&spec).to_string();
        let content = Content::of_spec(&spec, payload, rev.clone());
        let data = content.to_data(&spec.bytecode, "bpfleet-system");
        assert_eq!(data.elf, None, "the bytes of ConfigMap ns/cm are not copied into bpfleet-system");
        assert_eq!(data.digest.as_deref(), Some(Sha256Digest::of(&elf).as_str()));
        assert_eq!(data.bytecode, spec.bytecode);
        assert!(Content::from_data(&rev, data.clone()).unwrap_err().contains("by reference"));
        assert_eq!(Content::from_data_with(&rev, data.clone(), Some(elf)).unwrap(), content);
        let other = bytes::Bytes::from_static(b"\x7fELF v2");
        assert!(Content::from_data_with(&rev, data, Some(other)).unwrap_err().contains("digest"));
    }

    mod read_again {
        use http::{Request, Response};
        use kube::client::Body;
        use serde_json::{Value, json};

        use super::*;

        type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

        const UID: &str = "uid-1";

        fn program(namespace: &str) -> (BpfProgram, Content, Value) {
            let mut p: BpfProgram = serde_json::from_value(json!({
                "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram",
                "metadata": {"name": "p", "uid": UID},
                "spec": {"bytecode": {"configMap": {"name": "cm", "namespace": namespace, "key": "o"}},
                         "programs": [{"name": "f", "type": "XDP", "xdp": {"interfaces": ["eth0"]}}]}
            }))
            .unwrap();
            let payload = Payload::Elf(bytes::Bytes::from_static(b"\x7fELF v1"));
            let rev = payload.revision(&p.spec).to_string();
            let content = Content::of_spec(&p.spec, payload, rev.clone());
            let cr = json!({
                "apiVersion": "apps/v1", "kind": "ControllerRevision",
                "metadata": {"name": object_name("p", &rev), "namespace": "bpfleet-system",
                             "labels": {LABEL_PROGRAM_UID: UID, LABEL_REVISION: rev},
                             "ownerReferences": [{"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram",
                                                  "name": "p", "uid": UID, "controller": true}]},
                "revision": 1,
                "data": serde_json::to_value(content.to_data(&p.spec.bytecode, "bpfleet-system")).unwrap()
            });
            p.metadata.uid = Some(UID.into());
            (p, content, cr)
        }

        fn namespace(name: &str, opted_in: bool) -> Value {
            let labels = if opted_in { json!({"bpfleet.dev/bytecode-source": "allowed"}) } else { json!({}) };
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": name, "labels": labels}})
        }

        fn config_map(namespace: &str, elf: &[u8]) -> Value {
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": namespace},
                   "binaryData": {"o": B64.encode(elf)}})
        }

        async fn expect(handle: &mut Handle, path: &str, reply: Value) {
            let (req, send) = tokio::time::timeout(std::time::Duration::from_secs(5), handle.next_request())
                .await
                .unwrap_or_else(|_| panic!("no request came; expected GET {path}"))
                .expect("service dropped");
            assert_eq!((req.method().as_str(), req.uri().path()), ("GET", path));
            send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap());
        }

        async fn no_more(handle: &mut Handle) {
            if let Ok(Some((req, _))) =
                tokio::time::timeout(std::time::Duration::from_millis(100), handle.next_request()).await
            {
                panic!("unexpected call {} {}", req.method(), req.uri());
            }
        }

        fn history() -> (History, Handle) {
            let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            (History::new(Client::new(service, "default"), "bpfleet-system".into()), handle)
        }

        fn cr_path(rev: &str) -> String {
            format!("/apis/apps/v1/namespaces/bpfleet-system/controllerrevisions/{}", object_name("p", rev))
        }

        #[tokio::test]
        async fn a_rollback_reads_the_config_map_again_and_uses_it_if_unchanged() {
            let (h, mut handle) = history();
            let (p, content, cr) = program("team-a");
            let rev = content.revision.clone();
            let server = tokio::spawn(async move {
                expect(&mut handle, &cr_path(&rev), cr).await;
                expect(&mut handle, "/api/v1/namespaces/team-a", namespace("team-a", true)).await;
                expect(&mut handle, "/api/v1/namespaces/team-a/configmaps/cm", config_map("team-a", b"\x7fELF v1"))
                    .await;
                no_more(&mut handle).await;
            });
            let got = h.content(&p, &content.revision, &ImageSource::disabled(), "amd64").await.unwrap();
            assert_eq!(*got, content);
            server.await.unwrap();
        }

        #[tokio::test]
        async fn an_entry_the_program_does_not_own_is_never_rolled_back_to() {
            let (h, mut handle) = history();
            let (p, content, mut cr) = program("team-a");
            // Planted beside the real entries: the labels, but not the owner.
            cr["metadata"].as_object_mut().unwrap().remove("ownerReferences");
            let rev = content.revision.clone();
            let server = tokio::spawn(async move {
                expect(&mut handle, &cr_path(&rev), cr).await;
                no_more(&mut handle).await;
            });
            let e = h.content(&p, &content.revision, &ImageSource::disabled(), "amd64").await.unwrap_err();
            assert!(e.contains("is not owned by BpfProgram p"), "{e}");
            server.await.unwrap();
        }

        #[tokio::test]
        async fn a_changed_config_map_means_the_earlier_bytes_are_gone() {
            let (h, mut handle) = history();
            let (p, content, cr) = program("team-a");
            let rev = content.revision.clone();
            let server = tokio::spawn(async move {
                // Twice: a ConfigMap put back later makes the revision usable again.
                for _ in 0..2 {
                    expect(&mut handle, &cr_path(&rev), cr.clone()).await;
                    expect(&mut handle, "/api/v1/namespaces/team-a", namespace("team-a", true)).await;
                    let edited = config_map("team-a", b"\x7fELF v2");
                    expect(&mut handle, "/api/v1/namespaces/team-a/configmaps/cm", edited).await;
                }
                no_more(&mut handle).await;
            });
            for _ in 0..2 {
                let e = h.content(&p, &content.revision, &ImageSource::disabled(), "amd64").await.unwrap_err();
                let (v1, v2) = (Sha256Digest::of(b"\x7fELF v1"), Sha256Digest::of(b"\x7fELF v2"));
                assert!(e.starts_with(&format!("the bytes of revision {} are gone", content.revision)), "{e}");
                assert!(
                    e.contains(&format!("ConfigMap team-a/cm key o ({v1}), which now holds another object ({v2})"))
                );
            }
            server.await.unwrap();
        }

        #[tokio::test]
        async fn a_namespace_no_longer_allowed_is_not_read() {
            let (h, mut handle) = history();
            let (p, content, cr) = program("kube-system");
            let rev = content.revision.clone();
            let server = tokio::spawn(async move {
                expect(&mut handle, &cr_path(&rev), cr).await;
                expect(&mut handle, "/api/v1/namespaces/kube-system", namespace("kube-system", false)).await;
                // No GET of the ConfigMap.
                no_more(&mut handle).await;
            });
            let e = h.content(&p, &content.revision, &ImageSource::disabled(), "amd64").await.unwrap_err();
            assert!(e.contains("cannot be read again: ConfigMap bytecode is read only from"), "{e}");
            assert!(e.contains("kubectl label namespace kube-system bpfleet.dev/bytecode-source=allowed"), "{e}");
            server.await.unwrap();
        }
    }

    #[test]
    fn only_a_deleted_namesakes_entry_is_a_leftover() {
        let entry = |uid: Option<&str>, program: Option<&str>| ControllerRevision {
            metadata: ObjectMeta {
                labels: uid.map(|u| BTreeMap::from([(LABEL_PROGRAM_UID.to_string(), u.to_string())])),
                annotations: program.map(|n| BTreeMap::from([(ANNOTATION_PROGRAM.to_string(), n.to_string())])),
                ..Default::default()
            },
            revision: 1,
            data: None,
        };
        assert!(is_leftover(&entry(Some("old"), Some("p")), "new", "p"), "the same name, an earlier uid");
        assert!(!is_leftover(&entry(Some("new"), Some("p")), "new", "p"), "our own entry");
        assert!(!is_leftover(&entry(Some("other"), Some("p-long-name")), "new", "p"), "a name cut to the same");
        assert!(!is_leftover(&entry(None, Some("p")), "new", "p"), "not a bpfleet record");
        assert!(!is_leftover(&entry(Some("old"), None), "new", "p"));
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_stable() {
        let recs: Vec<(i64, String)> = (1..=6).map(|i| (i, format!("r{i}"))).collect();
        assert_eq!(to_prune(&recs, &["r6", "r1"], 2), vec!["r3".to_string(), "r2".to_string()]);
        assert!(to_prune(&recs, &[], 10).is_empty());
        assert_eq!(to_prune(&recs, &["r6"], 0).len(), 5);
    }

    #[test]
    fn sequence_numbers_grow_and_a_revert_renumbers() {
        let recs = vec![(1, "a".to_string()), (2, "b".to_string())];
        assert_eq!(next_number(&[], "a"), Some(1));
        assert_eq!(next_number(&recs, "b"), None, "already the newest");
        assert_eq!(next_number(&recs, "a"), Some(3), "a revert makes it the newest");
        assert_eq!(next_number(&recs, "c"), Some(3));
    }
}
