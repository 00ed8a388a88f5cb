//! Where a BpfProgram's bytes come from. `inline` and `configMap` are resolved here and
//! sent to the agents; `path` is passed through (the operator never reads node files),
//! with the digest the agents must check when the spec pins one.
//!
//! ConfigMaps are watched (metadata only, annotations and labels dropped, so the cache
//! stays small however many ConfigMaps the cluster has): an edit of a ConfigMap that a
//! BpfProgram names reconciles that program at once, and the bytes are read with one GET
//! per ConfigMap resourceVersion, then served from [`BytecodeCache`].

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use crds::limits::MAX_BYTECODE_BYTES;
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

    pub fn to_wire(&self) -> proto::v1::apply_request::Bytecode {
        match self {
            Payload::Elf(b) => proto::v1::apply_request::Bytecode::Elf(b.clone()),
            Payload::Path(p, _) => proto::v1::apply_request::Bytecode::Path(p.clone()),
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

/// Bytes cached at most (least recently used entries go first).
pub const MAX_CACHE_BYTES: usize = 64 << 20;

type Key = (String, String, String);

struct Cached {
    resource_version: String,
    result: Result<Payload, SpecProblem>,
    last_used: u64,
}

impl Cached {
    fn size(&self) -> usize {
        match &self.result {
            Ok(Payload::Elf(b)) => b.len(),
            _ => 64,
        }
    }
}

/// ConfigMap bytecode by (namespace, name, key) at a resourceVersion.
#[derive(Default)]
pub struct BytecodeCache {
    /// Metadata of every ConfigMap, from the watch. `None`: not watched (tests): every
    /// resolve reads the ConfigMap.
    config_maps: Option<Store<PartialObjectMeta<ConfigMap>>>,
    entries: Mutex<(HashMap<Key, Cached>, u64)>,
}

impl BytecodeCache {
    pub fn new(config_maps: Option<Store<PartialObjectMeta<ConfigMap>>>) -> Self {
        Self { config_maps, entries: Default::default() }
    }

    fn lookup(&self, key: &Key, resource_version: &str) -> Option<Result<Payload, SpecProblem>> {
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (map, clock) = &mut *guard;
        *clock += 1;
        let e = map.get_mut(key).filter(|e| e.resource_version == resource_version)?;
        e.last_used = *clock;
        Some(e.result.clone())
    }

    fn store(&self, key: Key, resource_version: String, result: Result<Payload, SpecProblem>) {
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (map, clock) = &mut *guard;
        *clock += 1;
        map.insert(key, Cached { resource_version, result, last_used: *clock });
        let mut total: usize = map.values().map(Cached::size).sum();
        while total > MAX_CACHE_BYTES && map.len() > 1 {
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
    let src = &spec.bytecode;
    if let Some(b64) = &src.inline {
        let bytes = B64
            .decode(b64.trim())
            .map_err(|e| problem(Reason::InvalidSpec, format!("bytecode.inline is not valid base64: {e}")))?;
        return check_size(bytes, "bytecode.inline").map(Payload::Elf);
    }
    if let Some(path) = &src.path {
        let digest = match src.digest.as_deref() {
            None => None,
            Some(d) => Some(Sha256Digest::parse(d).ok_or_else(|| {
                problem(
                    Reason::InvalidSpec,
                    format!("bytecode.digest {d:?} must be sha256: followed by 64 lowercase hex"),
                )
            })?),
        };
        return Ok(Payload::Path(path.clone(), digest));
    }
    let Some(cm) = &src.config_map else {
        return Err(problem(
            Reason::InvalidSpec,
            "bytecode must set exactly one of inline, configMap, path or image".into(),
        ));
    };
    let at = format!("ConfigMap {}/{}", cm.namespace, cm.name);
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
    let found = Api::<ConfigMap>::namespaced(client.clone(), &cm.namespace)
        .get_opt(&cm.name)
        .await
        .map_err(|e| problem(Reason::BytecodeUnavailable, format!("cannot read {at}: {e}")))?
        .ok_or_else(|| problem(Reason::BytecodeUnavailable, format!("{at} does not exist")))?;
    let result = from_config_map(&found, &cm.key, &at);
    if let Some(rv) = found.resource_version() {
        cache.store(key, rv, result.clone());
    }
    result
}

/// Whether `p` reads its bytecode from ConfigMap `namespace/name`.
pub fn names_config_map(p: &BpfProgram, namespace: &str, name: &str) -> bool {
    p.spec.bytecode.config_map.as_ref().is_some_and(|c| c.namespace == namespace && c.name == name)
}

/// Keep `writer` filled with ConfigMap metadata and reconcile the BpfPrograms that name
/// a ConfigMap when it changes or goes. Runs until the watch ends.
pub async fn watch_config_maps(
    client: Client,
    writer: Writer<PartialObjectMeta<ConfigMap>>,
    programs: Store<BpfProgram>,
    targeted: mpsc::Sender<ObjectRef<BpfProgram>>,
) {
    let api: Api<PartialObjectMeta<ConfigMap>> = Api::all(client);
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
        for p in programs.state().iter().filter(|p| names_config_map(p, &ns, &name)) {
            tracing::info!(program = %p.name_any(), configmap = %format!("{ns}/{name}"), "bytecode ConfigMap changed");
            if targeted.send(ObjectRef::from_obj(p.as_ref())).await.is_err() {
                return;
            }
        }
    }
}

/// The object stored under `key`: `binaryData` (raw) or `data` (base64 text).
pub fn from_config_map(cm: &ConfigMap, key: &str, at: &str) -> Result<Payload, SpecProblem> {
    if let Some(b) = cm.binary_data.as_ref().and_then(|d| d.get(key)) {
        return check_size(b.0.clone(), &format!("{at} key {key}")).map(Payload::Elf);
    }
    if let Some(text) = cm.data.as_ref().and_then(|d| d.get(key)) {
        let bytes = B64.decode(text.trim()).map_err(|e| {
            problem(
                Reason::BytecodeUnavailable,
                format!(
                    "{at} key {key} is in data but is not base64 ({e}); store objects with --from-file (binaryData)"
                ),
            )
        })?;
        return check_size(bytes, &format!("{at} key {key}")).map(Payload::Elf);
    }
    let mut keys: Vec<&String> = cm.binary_data.iter().flatten().map(|(k, _)| k).collect();
    keys.extend(cm.data.iter().flatten().map(|(k, _)| k));
    let keys: Vec<&str> = keys.into_iter().map(String::as_str).collect();
    Err(problem(
        Reason::BytecodeUnavailable,
        format!("{at} has no key {key}; it has: {}", if keys.is_empty() { "(none)".into() } else { keys.join(", ") }),
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
        assert_eq!(from_config_map(&cm, "a.o", "cm").unwrap(), Payload::Elf(vec![1, 2, 3].into()));
        assert_eq!(from_config_map(&cm, "b.o", "cm").unwrap(), Payload::Elf(vec![4, 5, 6].into()));
        let e = from_config_map(&cm, "c.o", "cm").unwrap_err();
        assert!(e.message.contains("not base64"), "{}", e.message);
        let e = from_config_map(&cm, "x.o", "ConfigMap ns/cm").unwrap_err();
        assert_eq!(e.message, "ConfigMap ns/cm has no key x.o; it has: a.o, b.o, c.o");
        let big = ConfigMap {
            binary_data: Some(BTreeMap::from([("a.o".to_string(), ByteString(vec![0; MAX_BYTECODE_BYTES + 1]))])),
            ..Default::default()
        };
        assert_eq!(from_config_map(&big, "a.o", "cm").unwrap_err().reason, Reason::BytecodeTooLarge);
    }

    fn key(n: &str) -> Key {
        ("ns".into(), n.into(), "k".into())
    }

    #[test]
    fn cache_hits_only_at_the_same_resource_version_and_stays_bounded() {
        let cache = BytecodeCache::new(None);
        let elf = |n: usize| Ok(Payload::Elf(vec![0u8; n].into()));
        cache.store(key("a"), "1".into(), elf(10));
        assert_eq!(cache.lookup(&key("a"), "1"), Some(elf(10)));
        assert_eq!(cache.lookup(&key("a"), "2"), None, "an edited ConfigMap is read again");
        // Filling past the byte bound evicts the least recently used first.
        cache.store(key("b"), "1".into(), elf(MAX_CACHE_BYTES / 2));
        let _ = cache.lookup(&key("a"), "1");
        cache.store(key("c"), "1".into(), elf(MAX_CACHE_BYTES / 2));
        assert!(cache.lookup(&key("b"), "1").is_none(), "b was least recently used");
        assert!(cache.lookup(&key("a"), "1").is_some() && cache.lookup(&key("c"), "1").is_some());
        assert_eq!(cache.len(), 2);
    }
}
