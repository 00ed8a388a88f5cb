//! The reconcile function against a mocked API server: each scenario asserts the exact
//! sequence of API calls (in the style of controller-rs's ApiServerVerifier) and what
//! the status says. No cluster needed.

use std::sync::Arc;
use std::time::Duration;

use crds::BpfProgram;
use http::{Request, Response};
use k8s_openapi::api::core::v1::Node;
use kube::client::Body;
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use operator::controller::{Context, FINALIZER, reconcile};
use operator::dispatch::{AgentPool, PoolConfig};
use operator::metrics::Metrics;
use serde_json::{Value, json};

mod common;

use common::{Handle, assert_no_more_calls, expect};

fn program(extra: Value) -> BpfProgram {
    let mut v = json!({
        "apiVersion": "bpfleet.dev/v1alpha1",
        "kind": "BpfProgram",
        "metadata": {"name": "xdp-counter", "uid": "0b9f1a52-7d0e-4c1e-9d6a-1f2e3d4c5b6a", "generation": 3, "resourceVersion": "7"},
        "spec": {
            "nodeSelector": {},
            "bytecode": {"configMap": {"name": "xdp-counter-bytecode", "namespace": "bpfleet-system", "key": "xdp_counter.o"}},
            "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": ["eth0"], "mode": "Auto"}}]
        }
    });
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn with_finalizer() -> Value {
    json!({"metadata": {"finalizers": [FINALIZER]}})
}

fn node(name: &str, ip: Option<&str>, deleting: bool) -> Node {
    let mut v =
        json!({"metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {"kubernetes.io/os": "linux"}}});
    if let Some(ip) = ip {
        v["status"] = json!({"addresses": [{"type": "InternalIP", "address": ip}]});
    }
    if deleting {
        v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        v["metadata"]["finalizers"] = json!(["x"]);
    }
    serde_json::from_value(v).unwrap()
}

fn context(nodes: Vec<Node>) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (store, mut writer) = reflector::store();
    for n in nodes {
        writer.apply_watcher_event(&watcher::Event::Apply(n));
    }
    let mut cfg = PoolConfig::new(1, operator::agent_tls::AgentTls::untrusted());
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.call_timeout = Duration::from_secs(1);
    let ctx = Context::new(client, AgentPool::new(cfg), store, Arc::new(Metrics::new()), 1);
    (Arc::new(ctx), handle)
}

fn not_found(kind: &str, name: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": format!("{kind} \"{name}\" not found")})
}

fn config_map() -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "xdp-counter-bytecode", "namespace": "bpfleet-system"},
           "binaryData": {"xdp_counter.o": "f0VMRg=="}})
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).unwrap()
}

const PROGRAM_PATH: &str = "/apis/bpfleet.dev/v1alpha1/bpfprograms/xdp-counter";

#[tokio::test]
async fn the_finalizer_is_added_first() {
    let (ctx, mut handle) = context(vec![]);
    let obj = Arc::new(program(json!({})));
    let reply = serde_json::to_value(program(with_finalizer())).unwrap();
    let server = tokio::spawn(async move {
        let patch = expect(&mut handle, "PATCH", PROGRAM_PATH, 200, reply).await;
        assert!(patch.to_string().contains(FINALIZER), "{patch}");
        handle
    });
    reconcile(obj, ctx).await.unwrap();
    let mut handle = server.await.unwrap();
    assert_no_more_calls(&mut handle, 200).await;
}

#[tokio::test]
async fn no_target_nodes_is_ready_with_a_revision() {
    let (ctx, mut handle) = context(vec![]);
    let obj = program(with_finalizer());
    let reply = serde_json::to_value(&obj).unwrap();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/bpfleet-system/configmaps/xdp-counter-bytecode",
            200,
            config_map(),
        )
        .await;
        expect(&mut handle, "PATCH", &format!("{PROGRAM_PATH}/status?"), 200, reply).await
    });
    reconcile(Arc::new(obj), ctx).await.unwrap();
    let patch = server.await.unwrap();
    let status = &patch["status"];
    assert_eq!(patch["kind"], "BpfProgram");
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["targetNodes"], 0);
    assert_eq!(status["revision"].as_str().unwrap().len(), 16);
    let ready = condition(status, "Ready");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("True"), Some("NoTargetNodes")));
    assert_eq!(ready["observedGeneration"], 3);
}

#[tokio::test]
async fn status_is_written_by_server_side_apply_with_the_field_manager() {
    let (ctx, mut handle) = context(vec![]);
    let obj = program(with_finalizer());
    let reply = serde_json::to_value(&obj).unwrap();
    let server = tokio::spawn(async move {
        expect(&mut handle, "GET", "/api/v1/namespaces/bpfleet-system/configmaps/", 200, config_map()).await;
        let (req, send) = handle.next_request().await.unwrap();
        let uri = req.uri().to_string();
        let content_type = req.headers()["content-type"].to_str().unwrap().to_string();
        send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap());
        (uri, content_type)
    });
    reconcile(Arc::new(obj), ctx).await.unwrap();
    let (uri, content_type) = server.await.unwrap();
    assert_eq!(content_type, "application/apply-patch+yaml");
    assert!(uri.contains("fieldManager=bpfleet-operator") && uri.contains("force=true"), "{uri}");
}

#[tokio::test]
async fn a_missing_config_map_is_reported_in_status() {
    let (ctx, mut handle) = context(vec![node("n1", Some("10.0.0.1"), false)]);
    let obj = program(with_finalizer());
    let reply = serde_json::to_value(&obj).unwrap();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/bpfleet-system/configmaps/xdp-counter-bytecode",
            404,
            not_found("configmaps", "xdp-counter-bytecode"),
        )
        .await;
        expect(&mut handle, "PATCH", &format!("{PROGRAM_PATH}/status?"), 200, reply).await
    });
    reconcile(Arc::new(obj), ctx).await.unwrap();
    let status = server.await.unwrap()["status"].clone();
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "BytecodeUnavailable");
    assert_eq!(ready["message"], "ConfigMap bpfleet-system/xdp-counter-bytecode does not exist");
    assert_eq!(condition(&status, "Degraded")["status"], "True");
}

#[tokio::test]
async fn a_node_without_an_address_fails_alone() {
    let (ctx, mut handle) = context(vec![node("no-ip", None, false)]);
    // Inline bytecode: no ConfigMap read.
    let obj = program(
        json!({"metadata": {"finalizers": [FINALIZER]}, "spec": {"bytecode": {"configMap": null, "inline": "f0VMRg=="}}}),
    );
    let reply = serde_json::to_value(&obj).unwrap();
    let server =
        tokio::spawn(async move { expect(&mut handle, "PATCH", &format!("{PROGRAM_PATH}/status?"), 200, reply).await });
    reconcile(Arc::new(obj), ctx).await.unwrap();
    let status = server.await.unwrap()["status"].clone();
    assert_eq!((status["targetNodes"].as_i64(), status["failedNodes"].as_i64()), (Some(1), Some(1)));
    assert_eq!(status["failures"][0]["node"], "no-ip");
    assert_eq!(status["failures"][0]["reason"], "AgentUnreachable");
    assert!(status["failures"][0]["message"].as_str().unwrap().contains("no InternalIP"));
}

/// A deletion first lists the programs (for users of its maps, spec.maps[].from): none.
async fn no_map_users(handle: &mut Handle) {
    let list = json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgramList", "metadata": {}, "items": []});
    expect(handle, "GET", "/apis/bpfleet.dev/v1alpha1/bpfprograms?", 200, list).await;
}

/// An owner whose maps another program uses waits: MapsInUse names the user, nothing is
/// asked of any node.
#[tokio::test]
async fn deletion_waits_while_another_program_uses_its_maps() {
    let (ctx, mut handle) = context(vec![node("n1", Some("10.0.0.9"), true)]);
    let obj = program(json!({"metadata": {"finalizers": [FINALIZER], "deletionTimestamp": "2026-11-25T00:00:00Z"}}));
    let name = obj.name_any();
    let mut user = serde_json::to_value(program(json!({"metadata": {"name": "reader"}}))).unwrap();
    user["spec"]["maps"] = json!([{"name": "shared", "from": {"program": name, "map": "shared"}}]);
    let reply = serde_json::to_value(&obj).unwrap();
    let server = tokio::spawn(async move {
        let list =
            json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgramList", "metadata": {}, "items": [user]});
        expect(&mut handle, "GET", "/apis/bpfleet.dev/v1alpha1/bpfprograms?", 200, list).await;
        let patch = expect(&mut handle, "PATCH", &format!("{PROGRAM_PATH}/status?"), 200, reply).await;
        assert_no_more_calls(&mut handle, 300).await;
        patch
    });
    let err = reconcile(Arc::new(obj.clone()), ctx).await.unwrap_err();
    assert!(err.to_string().contains("reader"), "{err}");
    let status = server.await.unwrap()["status"].clone();
    let ready = condition(&status, "Ready");
    assert_eq!(ready["reason"], "MapsInUse");
    assert!(
        ready["message"].as_str().unwrap().contains("waiting for BpfProgram(s) reader that use its maps"),
        "{ready}"
    );
}

#[tokio::test]
async fn deletion_with_nothing_on_any_node_drops_the_finalizer() {
    let (ctx, mut handle) = context(vec![node("gone", Some("10.0.0.9"), true)]);
    let obj = program(json!({"metadata": {"finalizers": [FINALIZER], "deletionTimestamp": "2026-11-25T00:00:00Z"}}));
    let reply = serde_json::to_value(program(json!({}))).unwrap();
    let server = tokio::spawn(async move {
        // No program uses its maps.
        no_map_users(&mut handle).await;
        // The only node is being deleted: it holds nothing up.
        let patch = expect(&mut handle, "PATCH", PROGRAM_PATH, 200, reply).await;
        assert!(patch.to_string().contains("remove") || patch.to_string().contains("finalizers"), "{patch}");
    });
    reconcile(Arc::new(obj), ctx).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn deletion_waits_for_an_unreachable_agent_and_says_which() {
    // 127.0.0.1 port 1: nothing listens, the connection is refused at once.
    let (ctx, mut handle) = context(vec![node("stuck-node", Some("127.0.0.1"), false)]);
    let obj = program(json!({"metadata": {"finalizers": [FINALIZER], "deletionTimestamp": "2026-11-25T00:00:00Z"}}));
    let reply = serde_json::to_value(&obj).unwrap();
    let server = tokio::spawn(async move {
        no_map_users(&mut handle).await;
        let patch = expect(&mut handle, "PATCH", &format!("{PROGRAM_PATH}/status?"), 200, reply).await;
        // No finalizer removal follows.
        assert_no_more_calls(&mut handle, 300).await;
        patch
    });
    let err = reconcile(Arc::new(obj.clone()), ctx).await.unwrap_err();
    assert!(err.to_string().contains("stuck-node"), "{err}");
    let status = server.await.unwrap()["status"].clone();
    let ready = condition(&status, "Ready");
    assert_eq!(ready["reason"], "Deleting");
    assert!(ready["message"].as_str().unwrap().contains("stuck-node (agent unreachable"), "{ready}");
    assert!(obj.meta().finalizers.as_ref().unwrap().contains(&FINALIZER.to_string()));
}

/// The orphan sweep asks at the moment of removal, not from the snapshot its pass
/// started with: an owner a BpfProgram created meanwhile (not in the cache yet) is kept;
/// only one the API server confirms gone (or replaced by a new object of the same name)
/// is removed.
#[tokio::test]
async fn the_orphan_sweep_removes_only_what_the_api_server_confirms_gone() {
    use operator::resync::truly_unknown;
    let uid = "0b9f1a52-7d0e-4c1e-9d6a-1f2e3d4c5b6a";
    let (ctx, mut handle) = context(vec![]);
    let (cached, mut writer) = reflector::store::<BpfProgram>();
    let server = tokio::spawn(async move {
        // 1. Created after the pass started: the API server has it, same uid.
        expect(&mut handle, "GET", PROGRAM_PATH, 200, serde_json::to_value(program(json!({}))).unwrap()).await;
        // 2. Really gone.
        expect(&mut handle, "GET", PROGRAM_PATH, 404, not_found("bpfprograms", "xdp-counter")).await;
        // 3. Deleted and recreated under the same name: the old uid is an orphan.
        let recreated = program(json!({"metadata": {"uid": "11111111-2222-3333-4444-555555555555"}}));
        expect(&mut handle, "GET", PROGRAM_PATH, 200, serde_json::to_value(recreated).unwrap()).await;
        // 4. The API server cannot answer: keep it.
        expect(&mut handle, "GET", PROGRAM_PATH, 500, json!({"kind": "Status", "code": 500, "message": "etcd"})).await;
        handle
    });
    assert!(!truly_unknown(&ctx, &cached, uid, "xdp-counter").await, "exists in the API");
    assert!(truly_unknown(&ctx, &cached, uid, "xdp-counter").await, "gone");
    assert!(truly_unknown(&ctx, &cached, uid, "xdp-counter").await, "replaced by another object");
    assert!(!truly_unknown(&ctx, &cached, uid, "xdp-counter").await, "unknown is not gone");
    let mut handle = server.await.unwrap();
    // In the cache: no API call at all.
    writer.apply_watcher_event(&watcher::Event::Apply(program(json!({}))));
    assert!(!truly_unknown(&ctx, &cached, uid, "xdp-counter").await);
    assert_no_more_calls(&mut handle, 100).await;
}

/// ConfigMap bytecode is read once per resourceVersion: with the metadata watch's
/// cache, a reconcile of an unchanged ConfigMap makes no request, an edited one (new
/// resourceVersion) one GET, and a missing one none.
#[tokio::test]
async fn config_map_bytecode_is_read_once_per_resource_version() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::core::PartialObjectMeta;
    use operator::bytecode::{BytecodeCache, resolve};
    let (ctx, mut handle) = context(vec![]);
    let (metas, mut writer) = reflector::store::<PartialObjectMeta<ConfigMap>>();
    let meta = |rv: &str| -> PartialObjectMeta<ConfigMap> {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "xdp-counter-bytecode", "namespace": "bpfleet-system", "resourceVersion": rv}}))
        .unwrap()
    };
    writer.apply_watcher_event(&watcher::Event::Apply(meta("5")));
    let cache = BytecodeCache::new(Some(metas));
    let spec = program(json!({})).spec;
    let with_rv = |rv: &str| {
        let mut cm = config_map();
        cm["metadata"]["resourceVersion"] = json!(rv);
        cm
    };
    let (v5, v6) = (with_rv("5"), with_rv("6"));
    let server = tokio::spawn(async move {
        expect(&mut handle, "GET", "/api/v1/namespaces/bpfleet-system/configmaps/xdp-counter-bytecode", 200, v5).await;
        expect(&mut handle, "GET", "/api/v1/namespaces/bpfleet-system/configmaps/xdp-counter-bytecode", 200, v6).await;
        assert_no_more_calls(&mut handle, 200).await;
    });
    let first = resolve(&ctx.client, &cache, &spec).await.unwrap();
    assert_eq!(resolve(&ctx.client, &cache, &spec).await.unwrap(), first, "served from the cache");
    writer.apply_watcher_event(&watcher::Event::Apply(meta("6")));
    resolve(&ctx.client, &cache, &spec).await.unwrap();
    resolve(&ctx.client, &cache, &spec).await.unwrap();
    writer.apply_watcher_event(&watcher::Event::Delete(meta("6")));
    let gone = resolve(&ctx.client, &cache, &spec).await.unwrap_err();
    assert_eq!(gone.message, "ConfigMap bpfleet-system/xdp-counter-bytecode does not exist");
    server.await.unwrap();
}

#[tokio::test]
async fn programs_selecting_the_same_nodes_share_one_set() {
    let (ctx, _handle) = context(vec![]);
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<std::collections::BTreeSet<String>>();
    let a = ctx.shared_targets(set(&["n1", "n2"]));
    let b = ctx.shared_targets(set(&["n1", "n2"]));
    let c = ctx.shared_targets(set(&["n1"]));
    assert!(Arc::ptr_eq(&a, &b), "equal sets are one copy");
    assert!(!Arc::ptr_eq(&a, &c));
    assert_eq!(*c, set(&["n1"]));
    // Many sets made and dropped do not pile up; one still held stays shared.
    drop((a, b));
    for i in 0..1000 {
        drop(ctx.shared_targets(set(&[&format!("n{i}")])));
    }
    assert!(ctx.shared_target_sets() <= 130, "{} sets held", ctx.shared_target_sets());
    let kept = ctx.shared_targets(set(&["n1"]));
    assert!(Arc::ptr_eq(&kept, &c));
}

#[tokio::test]
async fn an_event_again_counts_in_its_series_and_keeps_no_copy_of_the_event() {
    use kube::runtime::events::{Event, EventType};
    use operator::events::Recorder;
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let recorder = Arc::new(Recorder::new(Client::new(service, "default"), "bpfleet-operator"));
    let regarding = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("bpfleet.dev/v1alpha1".into()),
        kind: Some("BpfProgram".into()),
        name: Some("p".into()),
        uid: Some("u-1".into()),
        ..Default::default()
    };
    let ev = |reason: &str, note: &str| Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Resync".into(),
        secondary: None,
    };
    let publish = |e: Event| {
        let (recorder, regarding) = (recorder.clone(), regarding.clone());
        tokio::spawn(async move { recorder.publish(&e, &regarding).await })
    };
    // First: a new Event in "default" (BpfPrograms are cluster-scoped), as events.k8s.io/v1 wants it.
    let first = publish(ev("DriftDetected", "missing on n1"));
    let body = expect(&mut handle, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", 201, json!({})).await;
    first.await.unwrap().unwrap();
    let name = body["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("p."), "{name}");
    assert_eq!(body["reason"], "DriftDetected");
    assert_eq!(body["note"], "missing on n1");
    assert_eq!(body["type"], "Warning");
    assert_eq!(body["regarding"]["uid"], "u-1");
    assert_eq!(body["reportingController"], "bpfleet-operator");
    assert_eq!(body["reportingInstance"], "bpfleet-operator");
    assert!(body["eventTime"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
    // The same again: its series, on the same Event.
    let again = publish(ev("DriftDetected", "missing on n2"));
    let path = format!("/apis/events.k8s.io/v1/namespaces/default/events/{name}");
    let patch = expect(&mut handle, "PATCH", &path, 200, json!({})).await;
    again.await.unwrap().unwrap();
    assert_eq!(patch["series"]["count"], 2, "{patch}");
    assert!(patch["series"]["lastObservedTime"].is_string());
    // Another reason: another Event.
    let other = publish(ev("UnknownProgramRemoved", "removed x"));
    expect(&mut handle, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", 201, json!({})).await;
    other.await.unwrap().unwrap();
    assert_eq!(recorder.remembered(), 2);
    assert_no_more_calls(&mut handle, 100).await;
}
