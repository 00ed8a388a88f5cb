//! The pods programs attach in: one watch per namespace some BpfProgram's `pods` names
//! (started when the first program names it, stopped when the last one stops), holding
//! only what [`crate::pods`] needs of each running pod. A pod that starts, stops, moves or
//! changes labels sends its namespace on the trigger channel, so the programs that select
//! pods there are reconciled at once (a pod gets its programs within seconds of Running).
//! Read-only: the operator's RBAC may only get, list and watch pods.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

use crate::pods::PodInfo;

type Running = Arc<RwLock<HashMap<String, PodInfo>>>;

struct NamespaceWatch {
    running: Running,
    /// Why the watch fails now (e.g. no RBAC to read pods there); `None` while it works.
    error: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NamespaceWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches of the namespaces programs attach in.
pub struct PodWatches {
    client: Client,
    /// Namespaces whose pods changed.
    changed: mpsc::Sender<String>,
    watches: Mutex<HashMap<String, NamespaceWatch>>,
}

impl PodWatches {
    pub fn new(client: Client, changed: mpsc::Sender<String>) -> Self {
        PodWatches { client, changed, watches: Mutex::new(HashMap::new()) }
    }

    /// Watch exactly `namespaces` (those every program names together): new ones start,
    /// others stop.
    pub fn keep(&self, namespaces: &BTreeSet<String>) {
        self.watches.lock().unwrap_or_else(|e| e.into_inner()).retain(|ns, _| namespaces.contains(ns));
        self.ensure(namespaces);
    }

    /// Watch `namespaces` too (a program names them).
    pub fn ensure(&self, namespaces: &BTreeSet<String>) {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        for ns in namespaces {
            if !watches.contains_key(ns) {
                let running: Running = Arc::default();
                let error: Arc<Mutex<Option<String>>> = Arc::default();
                let task = tokio::spawn(watch(
                    self.client.clone(),
                    ns.clone(),
                    (running.clone(), error.clone()),
                    self.changed.clone(),
                ));
                watches.insert(ns.clone(), NamespaceWatch { running, error, task });
            }
        }
    }

    /// The running pods of `namespace` (empty when it is not watched or not listed yet).
    pub fn running(&self, namespace: &str) -> Vec<PodInfo> {
        let watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        watches
            .get(namespace)
            .map(|w| w.running.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect())
            .unwrap_or_default()
    }

    /// Why the pods of `namespace` cannot be read now, if they cannot.
    pub fn error(&self, namespace: &str) -> Option<String> {
        let watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        watches.get(namespace).and_then(|w| w.error.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Namespaces watched.
    pub fn namespaces(&self) -> BTreeSet<String> {
        self.watches.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }
}

/// Keep `running` the running pods of `namespace`; say on `changed` when they change.
async fn watch(
    client: Client,
    namespace: String,
    (running, error): (Running, Arc<Mutex<Option<String>>>),
    changed: mpsc::Sender<String>,
) {
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut listing: Option<HashMap<String, PodInfo>> = None;
    loop {
        let event = match stream.try_next().await {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%namespace, error = %e, "pod watch");
                let first = error.lock().unwrap_or_else(|p| p.into_inner()).replace(e.to_string()).is_none();
                if first {
                    // The programs that attach there say why they cannot.
                    let _ = changed.try_send(namespace.clone());
                }
                continue;
            }
        };
        if error.lock().unwrap_or_else(|p| p.into_inner()).take().is_some() {
            let _ = changed.try_send(namespace.clone());
        }
        let update = |map: &mut HashMap<String, PodInfo>, pod: &Pod| -> bool {
            let uid = pod.uid().unwrap_or_default();
            match PodInfo::of_running(pod) {
                Some(info) if map.get(&uid) == Some(&info) => false,
                Some(info) => {
                    map.insert(uid, info);
                    true
                }
                None => map.remove(&uid).is_some(),
            }
        };
        let moved = match event {
            watcher::Event::Init => {
                listing = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(pod) => {
                if let Some(l) = listing.as_mut() {
                    update(l, &pod);
                }
                false
            }
            watcher::Event::InitDone => {
                let fresh = listing.take().unwrap_or_default();
                let mut map = running.write().unwrap_or_else(|e| e.into_inner());
                let moved = *map != fresh;
                *map = fresh;
                moved
            }
            watcher::Event::Apply(pod) => update(&mut running.write().unwrap_or_else(|e| e.into_inner()), &pod),
            watcher::Event::Delete(pod) => {
                running.write().unwrap_or_else(|e| e.into_inner()).remove(&pod.uid().unwrap_or_default()).is_some()
            }
        };
        if moved {
            let _ = changed.try_send(namespace.clone());
        }
    }
}
