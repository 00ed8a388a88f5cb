//! Where a BpfProgram's bytes come from. `inline` and `configMap` are resolved here and
//! sent to the agents; `path` is passed through (the operator never reads node files),
//! with the digest the agents must check when the spec pins one. When `bytecode.digest`
//! pins inline or ConfigMap bytes, bytes with another digest are refused here, before
//! anything is sent.
//!
//! A ConfigMap is read only from a namespace [`Sources`] allows (the operator's own, or
//! one labelled to opt in), checked before anything else about it is looked at.
//! ConfigMaps are watched (metadata only, annotations and labels dropped, so the cache
//! stays small however many ConfigMaps the cluster has): an edit of a ConfigMap that a
//! BpfProgram names reconciles that program at once, and the bytes are read with one GET
//! per ConfigMap resourceVersion, then served from [`BytecodeCache`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use crds::limits::MAX_BYTECODE_BYTES;
use crds::program::ConfigMapBytecode;
use crds::reason::Reason;
use crds::revision::{BytecodeIdentity, Revision, Sha256Digest};
use crds::{BpfProgram, BpfProgramSpec};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

pub use crate::sources::Sources;
use crate::status::SpecProblem;

/// The bytecode as the Apply carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Shared, not copied, by the per-node requests.
    Elf(bytes::Bytes),
    /// A node-local file, and the digest agents must find it has.
    Path(String, Option<Sha256Digest>),
}

impl Payload {
    pub fn revision(&self, spec: &BpfProgramSpec) -> Revision {
        match self {
            Payload::Elf(b) => Revision::compute(spec, BytecodeIdentity::Bytes(b)),
            Payload::Path(p, d) => Revision::compute(spec, BytecodeIdentity::Path(p, d.as_ref())),
        }
    }

    /// The digest the agent must check, or "" (ApplyRequest.expected_digest).
    pub fn expected_digest(&self) -> String {
        match self {
            Payload::Path(_, Some(d)) => d.to_string(),
            _ => String::new(),
        }
    }
}

fn problem(reason: Reason, message: String) -> SpecProblem {
    SpecProblem { reason, message }
}

fn check_size(bytes: Vec<u8>, what: &str) -> Result<bytes::Bytes, SpecProblem> {
    if bytes.len() > MAX_BYTECODE_BYTES {
        return Err(problem(
            Reason::BytecodeTooLarge,
            format!("{what} is {} bytes; the limit is {MAX_BYTECODE_BYTES}", bytes.len()),
        ));
    }
    Ok(bytes::Bytes::from(bytes))
}

/// Bytes cached at most without a memory limit (least recently used entries go first);
/// [`crate::memory::MemoryBudget`] sizes it from the limit ([`BytecodeCache::with_capacity`]).
pub const MAX_CACHE_BYTES: usize = 64 << 20;

type Key = (String, String, String);

struct Cached {
    resource_version: String,
    result: Result<bytes::Bytes, SpecProblem>,
    last_used: u64,
}

impl Cached {
    fn size(&self) -> usize {
        match &self.result {
            Ok(b) => b.len(),
            Err(_) => 64,
        }
    }
}

/// ConfigMap bytecode by (namespace, name, key) at a resourceVersion, and the namespaces
/// it may come from.
pub struct BytecodeCache {
    /// Metadata of every ConfigMap, from the watch. `None`: not watched (tests): every
    /// resolve reads the ConfigMap.
    config_maps: Option<Store<PartialObjectMeta<ConfigMap>>>,
    /// Shared with the watch of opted-in namespaces ([`watch_config_maps`]).
    sources: Arc<Sources>,
    entries: Mutex<(HashMap<Key, Cached>, u64)>,
    /// Bytes cached at most.
    capacity: usize,
}

impl Default for BytecodeCache {
    fn default() -> Self {
        BytecodeCache::new(None)
    }
}

impl BytecodeCache {
    /// A cache whose operator namespace is the `--namespace` default; see [`Self::allowing`].
    pub fn new(config_maps: Option<Store<PartialObjectMeta<ConfigMap>>>) -> Self {
        Self { config_maps, sources: Default::default(), entries: Default::default(), capacity: MAX_CACHE_BYTES }
    }

    /// Hold at most `bytes` (from the memory limit).
    pub fn with_capacity(self, bytes: usize) -> Self {
        Self { capacity: bytes, ..self }
    }

    /// ConfigMaps come from `operator_namespace` and the namespaces labelled to opt in.
    pub fn allowing(self, operator_namespace: &str) -> Self {
        Self { sources: Arc::new(Sources::new(operator_namespace)), ..self }
    }

    /// The allowed namespaces, for the watch that keeps them current.
    pub fn sources(&self) -> Arc<Sources> {
        self.sources.clone()
    }

    fn lookup(&self, key: &Key, resource_version: &str) -> Option<Result<bytes::Bytes, SpecProblem>> {
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (map, clock) = &mut *guard;
        *clock += 1;
        let e = map.get_mut(key).filter(|e| e.resource_version == resource_version)?;
        e.last_used = *clock;
        Some(e.result.clone())
    }

    fn store(&self, key: Key, resource_version: String, result: Result<bytes::Bytes, SpecProblem>) {
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (map, clock) = &mut *guard;
        *clock += 1;
        map.insert(key, Cached { resource_version, result, last_used: *clock });
        let mut total: usize = map.values().map(Cached::size).sum();
        while total > self.capacity && map.len() > 1 {
            let Some(oldest) = map.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| k.clone()) else { break };
            if let Some(e) = map.remove(&oldest) {
                total -= e.size();
            }
        }
    }

    /// Entries held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub async fn resolve(client: &Client, cache: &BytecodeCache, spec: &BpfProgramSpec) -> Result<Payload, SpecProblem> {
    resolve_with(client, cache, spec, None).await
}

/// As [`resolve`] for `program`'s spec: a tenant's mirror may read its tenant's ConfigMaps.
pub async fn resolve_program(
    client: &Client,
    cache: &BytecodeCache,
    program: &BpfProgram,
) -> Result<Payload, SpecProblem> {
    resolve_with(client, cache, &program.spec, Some(program)).await
}

async fn resolve_with(
    client: &Client,
    cache: &BytecodeCache,
    spec: &BpfProgramSpec,
    program: Option<&BpfProgram>,
) -> Result<Payload, SpecProblem> {
    let src = &spec.bytecode;
    let pinned = match src.digest.as_deref() {
        None => None,
        Some(d) => Some(Sha256Digest::parse(d).ok_or_else(|| {
            problem(Reason::InvalidSpec, format!("bytecode.digest {d:?} must be sha256: followed by 64 lowercase hex"))
        })?),
    };
    if let Some(b64) = &src.inline {
        let bytes = B64
            .decode(b64.trim())
            .map_err(|e| problem(Reason::InvalidSpec, format!("bytecode.inline is not valid base64: {e}")))?;
        let elf = check_size(bytes, "bytecode.inline")?;
        if let Some(pinned) = &pinned {
            let found = Sha256Digest::of(&elf);
            if found != *pinned {
                let message = crds::validate::inline_digest_mismatch(&found, pinned);
                return Err(problem(Reason::BytecodeDigestMismatch, message));
            }
        }
        return Ok(Payload::Elf(elf));
    }
    if let Some(path) = &src.path {
        return Ok(Payload::Path(path.clone(), pinned));
    }
    let Some(cm) = &src.config_map else {
        return Err(problem(
            Reason::InvalidSpec,
            "bytecode must set exactly one of inline, configMap, path or image".into(),
        ));
    };
    // Before anything about the ConfigMap is looked at, even whether it exists.
    match program {
        Some(p) => cache.sources.check_for(client, &cm.namespace, p).await?,
        None => cache.sources.check(client, &cm.namespace).await?,
    }
    let elf = config_map_bytes(client, cache, cm).await?;
    if let Some(pinned) = &pinned {
        check_pinned(&elf, pinned, cm)?;
    }
    Ok(Payload::Elf(elf))
}

/// The object under a ConfigMap's key: from the cache while the ConfigMap's
/// resourceVersion is unchanged, else one GET. The namespace is checked already.
async fn config_map_bytes(
    client: &Client,
    cache: &BytecodeCache,
    cm: &ConfigMapBytecode,
) -> Result<bytes::Bytes, SpecProblem> {
    let at = config_map_at(cm);
    let key: Key = (cm.namespace.clone(), cm.name.clone(), cm.key.clone());
    if let Some(store) = &cache.config_maps {
        let Some(meta) = store.get(&ObjectRef::new(&cm.name).within(&cm.namespace)) else {
            return Err(problem(Reason::BytecodeUnavailable, format!("{at} does not exist")));
        };
        if let Some(rv) = meta.resource_version()
            && let Some(hit) = cache.lookup(&key, &rv)
        {
            return hit;
        }
    }
    let found = get_config_map(client, cm).await?;
    let result = from_config_map(&found, &cm.key, &at);
    if let Some(rv) = found.resource_version() {
        cache.store(key, rv, result.clone());
    }
    result
}

/// The object under a ConfigMap's key, read now (one GET) if its namespace is allowed
/// (for `program`'s bytecode: a tenant's mirror reads its tenant's namespace): how a
/// revision recorded by reference is read again.
pub async fn read_config_map(
    client: &Client,
    sources: &Sources,
    cm: &ConfigMapBytecode,
    program: &BpfProgram,
) -> Result<bytes::Bytes, SpecProblem> {
    sources.check_for(client, &cm.namespace, program).await?;
    let found = get_config_map(client, cm).await?;
    from_config_map(&found, &cm.key, &config_map_at(cm))
}

async fn get_config_map(client: &Client, cm: &ConfigMapBytecode) -> Result<ConfigMap, SpecProblem> {
    let at = config_map_at(cm);
    Api::<ConfigMap>::namespaced(client.clone(), &cm.namespace)
        .get_opt(&cm.name)
        .await
        .map_err(|e| problem(Reason::BytecodeUnavailable, format!("cannot read {at}: {e}")))?
        .ok_or_else(|| problem(Reason::BytecodeUnavailable, format!("{at} does not exist")))
}

fn config_map_at(cm: &ConfigMapBytecode) -> String {
    format!("ConfigMap {}/{}", cm.namespace, cm.name)
}

/// `elf`, read from `cm`, is the object `bytecode.digest` pins.
fn check_pinned(elf: &[u8], pinned: &Sha256Digest, cm: &ConfigMapBytecode) -> Result<(), SpecProblem> {
    let found = Sha256Digest::of(elf);
    if found == *pinned {
        return Ok(());
    }
    Err(problem(
        Reason::BytecodeDigestMismatch,
        format!(
            "{} key {} holds an object with digest {found}, but bytecode.digest pins {pinned}, so nothing was \
             sent to the nodes. If the ConfigMap's new object is intended, set bytecode.digest to {found}; if not, \
             put the pinned object back under that key",
            config_map_at(cm),
            cm.key
        ),
    ))
}

/// Whether `p` reads its bytecode from ConfigMap `namespace/name`.
pub fn names_config_map(p: &BpfProgram, namespace: &str, name: &str) -> bool {
    p.spec.bytecode.config_map.as_ref().is_some_and(|c| c.namespace == namespace && c.name == name)
}

/// Keep `writer` filled with ConfigMap metadata and reconcile the BpfPrograms that name
/// a ConfigMap when it changes or goes. Runs until the watch ends.
///
/// Also follows the namespaces labelled to opt in (into `sources`, see
/// [`crate::sources::watch_namespaces`]); a ConfigMap of a namespace that is not allowed
/// reconciles nothing.
pub async fn watch_config_maps(
    client: Client,
    writer: Writer<PartialObjectMeta<ConfigMap>>,
    programs: Store<BpfProgram>,
    targeted: mpsc::Sender<ObjectRef<BpfProgram>>,
    sources: Arc<Sources>,
) {
    let namespaces =
        crate::sources::watch_namespaces(client.clone(), sources.clone(), programs.clone(), targeted.clone());
    futures::join!(namespaces, follow_config_maps(client, writer, programs, targeted, sources));
}

async fn follow_config_maps(
    client: Client,
    writer: Writer<PartialObjectMeta<ConfigMap>>,
    programs: Store<BpfProgram>,
    targeted: mpsc::Sender<ObjectRef<BpfProgram>>,
    sources: Arc<Sources>,
) {
    let api: Api<PartialObjectMeta<ConfigMap>> = Api::all(client.clone());
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|cm| {
            // Only the identity and resourceVersion are needed; annotations can hold a
            // whole last-applied copy of the data.
            cm.metadata.annotations = None;
            cm.metadata.labels = None;
            cm.metadata.managed_fields = None;
            cm.metadata.owner_references = None;
        })
        .reflect(writer);
    futures::pin_mut!(stream);
    loop {
        let changed = match stream.try_next().await {
            Ok(Some(watcher::Event::Apply(cm))) | Ok(Some(watcher::Event::Delete(cm))) => cm,
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "ConfigMap watch");
                continue;
            }
        };
        let (ns, name) = (changed.namespace().unwrap_or_default(), changed.name_any());
        let naming: Vec<_> = programs.state().into_iter().filter(|p| names_config_map(p, &ns, &name)).collect();
        // A ConfigMap of a namespace that did not opt in is none of a program's business
        // (a tenant's mirror aside, for its own): its changes reconcile nothing (the
        // program is refused without reading it).
        for p in naming {
            if sources.check_for(&client, &ns, &p).await.is_err() {
                continue;
            }
            tracing::info!(program = %p.name_any(), configmap = %format!("{ns}/{name}"), "bytecode ConfigMap changed");
            if targeted.send(ObjectRef::from_obj(p.as_ref())).await.is_err() {
                return;
            }
        }
    }
}

/// The object stored under `key`: `binaryData` (raw) or `data` (base64 text). A missing
/// key is reported without the keys the ConfigMap does have: they are none of the
/// program writer's business.
pub fn from_config_map(cm: &ConfigMap, key: &str, at: &str) -> Result<bytes::Bytes, SpecProblem> {
    if let Some(b) = cm.binary_data.as_ref().and_then(|d| d.get(key)) {
        return check_size(b.0.clone(), &format!("{at} key {key}"));
    }
    if let Some(text) = cm.data.as_ref().and_then(|d| d.get(key)) {
        // Not the decoder's error: it quotes a byte of the value.
        let bytes = B64.decode(text.trim()).map_err(|_| {
            problem(
                Reason::BytecodeUnavailable,
                format!(
                    "{at} key {key} is in data but is not base64 text; store objects as binaryData \
                     (kubectl create configmap --from-file)"
                ),
            )
        })?;
        return check_size(bytes, &format!("{at} key {key}"));
    }
    Err(problem(
        Reason::BytecodeUnavailable,
        format!(
            "{at} has no key {key}: add the object under that key (kubectl create configmap --from-file={key}=FILE), \
             or set bytecode.configMap.key to the key that holds it"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    #[test]
    fn config_map_keys() {
        let cm = ConfigMap {
            binary_data: Some(BTreeMap::from([("a.o".to_string(), ByteString(vec![1, 2, 3]))])),
            data: Some(BTreeMap::from([
                ("b.o".to_string(), "BAUG".to_string()),
                ("c.o".to_string(), "%%".to_string()),
            ])),
            ..Default::default()
        };
        assert_eq!(from_config_map(&cm, "a.o", "cm").unwrap(), bytes::Bytes::from(vec![1, 2, 3]));
        assert_eq!(from_config_map(&cm, "b.o", "cm").unwrap(), bytes::Bytes::from(vec![4, 5, 6]));
        let e = from_config_map(&cm, "c.o", "cm").unwrap_err();
        assert!(e.message.contains("not base64"), "{}", e.message);
        assert!(!e.message.contains("37"), "no byte of the value is quoted: {}", e.message);
        // A missing key says how to fix it, and never which keys the ConfigMap has.
        let e = from_config_map(&cm, "x.o", "ConfigMap ns/cm").unwrap_err();
        assert_eq!(e.reason, Reason::BytecodeUnavailable);
        assert_eq!(
            e.message,
            "ConfigMap ns/cm has no key x.o: add the object under that key (kubectl create configmap \
             --from-file=x.o=FILE), or set bytecode.configMap.key to the key that holds it"
        );
        for other in ["a.o", "b.o", "c.o"] {
            assert!(!e.message.contains(other), "{}", e.message);
        }
        let big = ConfigMap {
            binary_data: Some(BTreeMap::from([("a.o".to_string(), ByteString(vec![0; MAX_BYTECODE_BYTES + 1]))])),
            ..Default::default()
        };
        assert_eq!(from_config_map(&big, "a.o", "cm").unwrap_err().reason, Reason::BytecodeTooLarge);
    }

    #[test]
    fn a_pinned_config_map_object_must_have_its_digest() {
        let cm: ConfigMapBytecode =
            serde_json::from_value(serde_json::json!({"name": "cm", "namespace": "team-a", "key": "x.o"})).unwrap();
        let (v1, v2) = (Sha256Digest::of(b"v1"), Sha256Digest::of(b"v2"));
        assert!(check_pinned(b"v1", &v1, &cm).is_ok());
        let e = check_pinned(b"v2", &v1, &cm).unwrap_err();
        assert_eq!(e.reason, Reason::BytecodeDigestMismatch);
        assert!(e.message.starts_with(&format!("ConfigMap team-a/cm key x.o holds an object with digest {v2}")));
        assert!(e.message.contains(&format!("bytecode.digest pins {v1}, so nothing was sent")), "{}", e.message);
        assert!(e.message.contains(&format!("set bytecode.digest to {v2}")), "{}", e.message);
    }

    /// Inline bytes are checked without any API call (the mocked API server never answers).
    #[tokio::test]
    async fn pinned_inline_bytes_are_checked_before_anything_is_sent() {
        let (service, _handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let client = Client::new(service, "default");
        let cache = BytecodeCache::default();
        let spec = |digest: &Sha256Digest| -> BpfProgramSpec {
            serde_json::from_value(serde_json::json!({
                "bytecode": {"inline": B64.encode(b"\x7fELF v1"), "digest": digest.as_str()},
                "programs": [{"name": "f", "type": "XDP", "xdp": {"interfaces": ["eth0"]}}]
            }))
            .unwrap()
        };
        let (v1, v2) = (Sha256Digest::of(b"\x7fELF v1"), Sha256Digest::of(b"\x7fELF v2"));
        let ok = resolve(&client, &cache, &spec(&v1)).await.unwrap();
        assert_eq!(ok, Payload::Elf(bytes::Bytes::from_static(b"\x7fELF v1")));
        assert_eq!(
            ok.revision(&spec(&v1)),
            Payload::Elf(bytes::Bytes::from_static(b"\x7fELF v1")).revision(&spec(&v2)),
            "the digest pins the bytes; it does not change the revision"
        );
        let e = resolve(&client, &cache, &spec(&v2)).await.unwrap_err();
        assert_eq!(e.reason, Reason::BytecodeDigestMismatch);
        assert!(e.message.contains(&format!("has digest {v1}, but bytecode.digest pins {v2}")), "{}", e.message);
    }

    fn key(n: &str) -> Key {
        ("ns".into(), n.into(), "k".into())
    }

    #[test]
    fn cache_hits_only_at_the_same_resource_version_and_stays_bounded() {
        let cache = BytecodeCache::new(None);
        let elf = |n: usize| Ok(bytes::Bytes::from(vec![0u8; n]));
        cache.store(key("a"), "1".into(), elf(10));
        assert_eq!(cache.lookup(&key("a"), "1"), Some(elf(10)));
        assert_eq!(cache.lookup(&key("a"), "2"), None, "an edited ConfigMap is read again");
        // Filling past the byte bound evicts the least recently used first.
        cache.store(key("b"), "1".into(), elf(MAX_CACHE_BYTES / 2));
        let _ = cache.lookup(&key("a"), "1");
        cache.store(key("c"), "1".into(), elf(MAX_CACHE_BYTES / 2));
        assert!(cache.lookup(&key("b"), "1").is_none(), "b was least recently used");
        let small = BytecodeCache::new(None).with_capacity(100);
        small.store(key("a"), "1".into(), elf(60));
        small.store(key("b"), "1".into(), elf(60));
        assert!(small.lookup(&key("a"), "1").is_none(), "the capacity given, from the memory limit");
        assert!(cache.lookup(&key("a"), "1").is_some() && cache.lookup(&key("c"), "1").is_some());
        assert_eq!(cache.len(), 2);
    }
}
