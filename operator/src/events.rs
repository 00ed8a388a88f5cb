//! Kubernetes Events (`events.k8s.io/v1`), as `kube::runtime::events::Recorder` writes them:
//! a new Event for the first occurrence, and for the same event again (same object, type,
//! reason, action) within 6 minutes a patch of its `series` count. Unlike kube's recorder,
//! which keeps a copy of every Event it wrote for those 6 minutes (what that costs at
//! start-up: docs/benchmarks.md, operator memory), this keeps only what the series patch
//! needs.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Client};

/// How long a repeat of an event counts in its series rather than making a new Event.
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// One Event written: what a repeat needs to patch its series.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Written {
    name: String,
    namespace: String,
    count: i32,
    last: Timestamp,
}

pub struct Recorder {
    client: Client,
    controller: String,
    written: Mutex<HashMap<u64, Written>>,
}

impl Recorder {
    /// Events reported by `controller` (also the reporting instance).
    pub fn new(client: Client, controller: &str) -> Self {
        Self { client, controller: controller.to_string(), written: Default::default() }
    }

    /// Write `ev` about `regarding`, in its namespace (`default` for cluster-scoped objects).
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = key(ev, regarding);
        let repeat = {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            written.retain(|_, w| w.last + SERIES_WINDOW > now);
            written.get(&key).cloned()
        };
        let done = match repeat {
            Some(w) => {
                let count = w.count + 1;
                let series = EventSeries { count, last_observed_time: MicroTime(now) };
                let patch = serde_json::json!({ "series": series });
                let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &w.namespace);
                api.patch(&w.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                Written { count, last: now, ..w }
            }
            None => {
                let event = self.event(ev, regarding, now);
                let namespace = event.metadata.namespace.clone().unwrap_or_default();
                let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
                api.create(&PostParams::default(), &event).await?;
                Written { name: event.metadata.name.unwrap_or_default(), namespace, count: 1, last: now }
            }
        };
        self.written.lock().unwrap_or_else(|e| e.into_inner()).insert(key, done);
        Ok(())
    }

    fn event(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let name = format!("{}.{:x}", regarding.name.as_deref().unwrap_or(&self.controller), now.as_nanosecond());
        K8sEvent {
            metadata: ObjectMeta { name: Some(name), namespace: Some(namespace), ..Default::default() },
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            // Notes carry agent and registry text: no control characters (issue 21).
            note: ev.note.as_deref().map(crds::sanitize::for_status),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.controller.clone()),
            type_: Some(type_name(ev.type_).into()),
            ..Default::default()
        }
    }

    /// Events in the current series window, for tests.
    pub fn remembered(&self) -> usize {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn type_name(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

/// The same event again: same object, type, reason, action and related object (the note may
/// differ, as with kube's recorder).
fn key(ev: &Event, regarding: &ObjectReference) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    type_name(ev.type_).hash(&mut h);
    ev.reason.hash(&mut h);
    ev.action.hash(&mut h);
    for r in std::iter::once(Some(regarding)).chain(std::iter::once(ev.secondary.as_ref())) {
        match r {
            Some(r) => {
                (&r.api_version, &r.kind, &r.namespace, &r.name, &r.uid).hash(&mut h);
            }
            None => 0u8.hash(&mut h),
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    fn obj(name: &str) -> ObjectReference {
        ObjectReference { kind: Some("BpfProgram".into()), name: Some(name.into()), ..Default::default() }
    }

    #[test]
    fn repeats_are_the_same_key_and_others_are_not() {
        assert_eq!(key(&ev("Ready", "a"), &obj("p")), key(&ev("Ready", "b"), &obj("p")), "the note does not count");
        assert_ne!(key(&ev("Ready", "a"), &obj("p")), key(&ev("Stalled", "a"), &obj("p")));
        assert_ne!(key(&ev("Ready", "a"), &obj("p")), key(&ev("Ready", "a"), &obj("q")));
        let mut warning = ev("Ready", "a");
        warning.type_ = EventType::Warning;
        assert_ne!(key(&warning, &obj("p")), key(&ev("Ready", "a"), &obj("p")));
    }

    #[tokio::test]
    async fn a_hostile_agent_message_reaches_the_event_without_control_characters() {
        let (service, _handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let recorder = Recorder::new(Client::new(service, "default"), "bpfleet-operator");
        let note = "node-7: verifier: \x1b[2J\x1b]0;owned\x07\r\u{202E}R0 invalid";
        let e = recorder.event(&ev("Failed", note), &obj("p"), Timestamp::now());
        let clean = e.note.unwrap();
        assert!(!clean.chars().any(char::is_control) && !clean.contains('\u{202E}'), "{clean:?}");
        assert!(clean.contains("R0 invalid"));
    }
}
