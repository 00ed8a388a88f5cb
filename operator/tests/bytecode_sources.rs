//! Issue 21, point 2, played by an attacker who may write BpfPrograms: bytecode from a
//! ConfigMap of a namespace that did not opt in (`kube-system`) is refused and nothing
//! is read there; a namespace labelled `bpfleet.dev/bytecode-source=allowed` is a
//! source; bytes that are not the ones `bytecode.digest` pins never reach an agent.
//! Against a mocked API server (every call asserted, in order) and a TCP listener
//! standing where the node's agent would be, which counts every connection made to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use crds::BpfProgram;
use crds::revision::Sha256Digest;
use http::{Request, Response};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use operator::bytecode::BytecodeCache;
use operator::controller::{Context, FINALIZER, reconcile};
use operator::dispatch::{AgentPool, PoolConfig};
use operator::metrics::Metrics;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const PROGRAM_PATH: &str = "/apis/bpfleet.dev/v1alpha1/bpfprograms/p";
const ELF: &[u8] = b"\x7fELF object";
const LABEL: &str = "bpfleet.dev/bytecode-source";

fn program(name: &str, namespace: &str, digest: Option<&str>) -> BpfProgram {
    let mut bytecode = json!({"configMap": {"name": "bytecode", "namespace": namespace, "key": "x.o"}});
    if let Some(d) = digest {
        bytecode["digest"] = json!(d);
    }
    serde_json::from_value(json!({
        "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "generation": 1, "resourceVersion": "7",
                     "finalizers": [FINALIZER]},
        "spec": {"nodeSelector": {}, "bytecode": bytecode,
                 "programs": [{"name": "f", "type": "XDP", "xdp": {"interfaces": ["eth0"]}}]}
    }))
    .unwrap()
}

fn namespace(name: &str, label: Option<&str>) -> Value {
    let labels = label.map(|v| json!({LABEL: v})).unwrap_or(json!({}));
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": name, "labels": labels, "resourceVersion": "101"}})
}

fn config_map(namespace: &str, elf: &[u8]) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "bytecode", "namespace": namespace, "resourceVersion": "5"},
           "binaryData": {"x.o": B64.encode(elf)}})
}

/// Where the node's agent would listen: counts the connections made to it.
struct FakeAgent {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl FakeAgent {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        Self { port, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A context with one node whose agent is `agent`, and `bytecode` (unwatched when
/// `None`: every namespace check asks the API server).
fn context(agent: &FakeAgent, bytecode: Option<BytecodeCache>) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (nodes, mut writer) = reflector::store::<Node>();
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "n1", "uid": "uid-n1", "labels": {"kubernetes.io/os": "linux"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}
    }))
    .unwrap();
    writer.apply_watcher_event(&watcher::Event::Apply(node));
    let mut cfg = PoolConfig::new(agent.port, operator::agent_tls::AgentTls::untrusted());
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.call_timeout = Duration::from_secs(1);
    let mut ctx = Context::new(client, AgentPool::new(cfg), nodes, Arc::new(Metrics::new()), 1);
    if let Some(b) = bytecode {
        ctx.bytecode = b;
    }
    (Arc::new(ctx), handle)
}

/// The next request must be `method` on `path` (any query); answered with `reply`.
async fn expect(handle: &mut Handle, method: &str, path: &str, reply: Value) -> Value {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
        .expect("service dropped");
    let uri = req.uri().to_string();
    assert_eq!(req.method().as_str(), method, "{uri}");
    assert_eq!(req.uri().path(), path, "expected {method} {path}, got {uri}");
    let body = req.into_body().collect_bytes().await.unwrap();
    let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
    send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap());
    body
}

async fn assert_no_more_calls(handle: &mut Handle) {
    match tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await {
        Err(_) | Ok(None) => {}
        Ok(Some((req, _))) => panic!("unexpected call {} {}", req.method(), req.uri()),
    }
}

async fn next(targeted: &mut tokio::sync::mpsc::Receiver<ObjectRef<BpfProgram>>) -> ObjectRef<BpfProgram> {
    tokio::time::timeout(Duration::from_secs(5), targeted.recv()).await.expect("no reconcile came").unwrap()
}

fn ready(status: &Value) -> (String, String, String) {
    let c = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

/// The attacker names `kube-system`: refused with the reason and how to opt in; the only
/// question asked is the Namespace's labels: no GET of the ConfigMap, nothing sent.
#[tokio::test]
async fn a_program_naming_kube_system_is_refused_and_nothing_is_read_there() {
    let agent = FakeAgent::start().await;
    let (ctx, mut handle) = context(&agent, None);
    let p = program("p", "kube-system", None);
    let reply = serde_json::to_value(&p).unwrap();
    let server = tokio::spawn(async move {
        expect(&mut handle, "GET", "/api/v1/namespaces/kube-system", namespace("kube-system", None)).await;
        let patch = expect(&mut handle, "PATCH", &format!("{PROGRAM_PATH}/status"), reply).await;
        assert_no_more_calls(&mut handle).await;
        patch
    });
    reconcile(Arc::new(p), ctx).await.unwrap();
    let status = server.await.unwrap()["status"].clone();
    let (s, reason, message) = ready(&status);
    assert_eq!((s.as_str(), reason.as_str()), ("False", "BytecodeSourceNotAllowed"));
    assert!(message.contains("namespace kube-system is neither"), "{message}");
    assert!(message.contains("kubectl label namespace kube-system bpfleet.dev/bytecode-source=allowed"), "{message}");
    assert!(status["revision"].is_null(), "no revision: nothing was read to compute one");
    assert_eq!(agent.connections(), 0, "no agent was called");
}

/// With the watch of opted-in namespaces synced, the refusal asks nothing at all, and a
/// label with another value opts nothing in.
#[tokio::test]
async fn with_the_namespace_watch_a_refusal_costs_no_request() {
    use watcher::Event::*;
    let agent = FakeAgent::start().await;
    let cache = BytecodeCache::new(None).allowing("bpfleet-system");
    let sources = cache.sources();
    let meta = |v: Value| serde_json::from_value(v).unwrap();
    sources.observe(Init);
    sources.observe(InitApply(meta(namespace("kube-system", Some("true")))));
    sources.observe(InitDone);
    let (ctx, mut handle) = context(&agent, Some(cache));
    let p = program("p", "kube-system", None);
    let reply = serde_json::to_value(&p).unwrap();
    let server = tokio::spawn(async move {
        let patch = expect(&mut handle, "PATCH", &format!("{PROGRAM_PATH}/status"), reply).await;
        assert_no_more_calls(&mut handle).await;
        patch
    });
    reconcile(Arc::new(p), ctx).await.unwrap();
    let (_, reason, _) = ready(&server.await.unwrap()["status"]);
    assert_eq!(reason, "BytecodeSourceNotAllowed");
    assert_eq!(agent.connections(), 0);
}

/// A namespace a cluster admin labelled is a source like the operator's own.
#[tokio::test]
async fn an_opted_in_namespace_is_a_source() {
    let agent = FakeAgent::start().await;
    let (ctx, mut handle) = context(&agent, None);
    let p = program("p", "team-a", None);
    let reply = serde_json::to_value(&p).unwrap();
    let server = tokio::spawn(async move {
        expect(&mut handle, "GET", "/api/v1/namespaces/team-a", namespace("team-a", Some("allowed"))).await;
        expect(&mut handle, "GET", "/api/v1/namespaces/team-a/configmaps/bytecode", config_map("team-a", ELF)).await;
        let patch = expect(&mut handle, "PATCH", &format!("{PROGRAM_PATH}/status"), reply).await;
        assert_no_more_calls(&mut handle).await;
        patch
    });
    reconcile(Arc::new(p), ctx).await.unwrap();
    let status = server.await.unwrap()["status"].clone();
    assert_eq!(status["revision"].as_str().map(str::len), Some(16));
    assert!(agent.connections() > 0, "its bytes were sent to the node's agent");
}

/// Someone who can edit the ConfigMap (but not the BpfProgram) swaps the object: the
/// operator refuses it before any agent is called, naming both digests. The same spec
/// with the right digest does reach the agent, so the harness sees calls when they happen.
#[tokio::test]
async fn a_swapped_config_map_object_is_refused_before_any_agent_call() {
    let agent = FakeAgent::start().await;
    let pinned = Sha256Digest::of(ELF);
    let swapped = b"\x7fELF something else";
    let (ctx, mut handle) = context(&agent, None);
    let p = program("p", "bpfleet-system", Some(pinned.as_str()));
    let reply = serde_json::to_value(&p).unwrap();
    let cm = config_map("bpfleet-system", swapped);
    let server = tokio::spawn(async move {
        // The operator's own namespace: no Namespace check.
        expect(&mut handle, "GET", "/api/v1/namespaces/bpfleet-system/configmaps/bytecode", cm).await;
        let patch = expect(&mut handle, "PATCH", &format!("{PROGRAM_PATH}/status"), reply).await;
        assert_no_more_calls(&mut handle).await;
        patch
    });
    reconcile(Arc::new(p.clone()), ctx).await.unwrap();
    let status = server.await.unwrap()["status"].clone();
    let (s, reason, message) = ready(&status);
    assert_eq!((s.as_str(), reason.as_str()), ("False", "BytecodeDigestMismatch"));
    let found = Sha256Digest::of(swapped);
    assert!(message.contains(&format!("holds an object with digest {found}, but bytecode.digest pins {pinned}")));
    assert!(message.contains("nothing was sent to the nodes"), "{message}");
    assert_eq!(agent.connections(), 0, "no agent was called");

    let (ctx, mut handle) = context(&agent, None);
    let reply = serde_json::to_value(&p).unwrap();
    let server = tokio::spawn(async move {
        let cm = config_map("bpfleet-system", ELF);
        expect(&mut handle, "GET", "/api/v1/namespaces/bpfleet-system/configmaps/bytecode", cm).await;
        expect(&mut handle, "PATCH", &format!("{PROGRAM_PATH}/status"), reply).await
    });
    reconcile(Arc::new(p), ctx).await.unwrap();
    let status = server.await.unwrap()["status"].clone();
    assert!(status["revision"].is_string());
    assert!(agent.connections() > 0, "the pinned object is sent");
}

/// The watches as the leader runs them (`watch_config_maps`): an edit of a ConfigMap in
/// `kube-system` reconciles nothing, one in the operator's namespace reconciles the
/// program naming it, and labelling `kube-system` reconciles the program naming it at
/// once. No Namespace is asked for by name: the watch knows.
#[tokio::test]
async fn config_map_edits_in_a_namespace_not_allowed_reconcile_nothing() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (programs, mut program_writer) = reflector::store::<BpfProgram>();
    for p in [program("names-kube-system", "kube-system", None), program("names-own", "bpfleet-system", None)] {
        program_writer.apply_watcher_event(&watcher::Event::Apply(p));
    }
    let (_config_maps, cm_writer) = reflector::store();
    let (targeted_tx, mut targeted) = tokio::sync::mpsc::channel::<ObjectRef<BpfProgram>>(16);
    let sources = BytecodeCache::new(None).allowing("bpfleet-system").sources();
    let watching =
        tokio::spawn(operator::bytecode::watch_config_maps(client, cm_writer, programs, targeted_tx, sources.clone()));

    let cm_meta = |ns: &str, rv: &str| {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": {"name": "bytecode", "namespace": ns, "resourceVersion": rv}})
    };
    let list = |items: Vec<Value>| {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
               "metadata": {"resourceVersion": "100"}, "items": items})
    };
    let events = |events: Vec<(&str, Value)>| -> Vec<u8> {
        let mut body = Vec::new();
        for (type_, object) in events {
            body.extend(serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap());
            body.push(b'\n');
        }
        body
    };
    let respond = |send: tower_test::mock::SendResponse<Response<Body>>, body: Vec<u8>| {
        send.send_response(Response::builder().body(Body::from(body)).unwrap());
    };

    let (ns_watch_tx, mut ns_watch) = tokio::sync::mpsc::unbounded_channel();
    let asked_by_name = Arc::new(AtomicUsize::new(0));
    let asked = asked_by_name.clone();
    let server = tokio::spawn(async move {
        // Watches that are re-opened after their body ended stay open, unanswered.
        let mut held = Vec::new();
        let (mut cm_watches, mut ns_watches) = (0, 0);
        while let Some((req, send)) = handle.next_request().await {
            let (path, query) = (req.uri().path().to_string(), req.uri().query().unwrap_or_default().to_string());
            let watch = query.contains("watch=true");
            match (path.as_str(), watch) {
                ("/api/v1/namespaces", false) => {
                    assert!(query.contains("labelSelector=bpfleet.dev%2Fbytecode-source%3Dallowed"), "{query}");
                    respond(send, serde_json::to_vec(&list(vec![])).unwrap());
                }
                ("/api/v1/namespaces", true) => {
                    ns_watches += 1;
                    if ns_watches == 1 {
                        ns_watch_tx.send(send).unwrap();
                    } else {
                        held.push(send);
                    }
                }
                ("/api/v1/configmaps", false) => {
                    let items = vec![cm_meta("kube-system", "10"), cm_meta("bpfleet-system", "10")];
                    respond(send, serde_json::to_vec(&list(items)).unwrap());
                }
                ("/api/v1/configmaps", true) => {
                    cm_watches += 1;
                    if cm_watches > 1 {
                        held.push(send);
                        continue;
                    }
                    // The edits come once the opted-in namespaces are listed.
                    let (sources, body) = (
                        sources.clone(),
                        events(vec![
                            ("MODIFIED", cm_meta("kube-system", "11")),
                            ("MODIFIED", cm_meta("bpfleet-system", "11")),
                        ]),
                    );
                    tokio::spawn(async move {
                        while sources.known("kube-system").is_none() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        respond(send, body);
                    });
                }
                (p, false) if p.starts_with("/api/v1/namespaces/") => {
                    asked.fetch_add(1, Ordering::SeqCst);
                    respond(send, serde_json::to_vec(&namespace("kube-system", None)).unwrap());
                }
                other => panic!("unexpected call {other:?} {query}"),
            }
        }
    });

    assert_eq!(next(&mut targeted).await.name, "names-own");
    let quiet = tokio::time::timeout(Duration::from_millis(300), targeted.recv()).await;
    assert!(quiet.is_err(), "an edit in kube-system reconciled {quiet:?}");

    // A cluster admin opts kube-system in: its program is reconciled at once.
    let send = ns_watch.recv().await.unwrap();
    respond(send, events(vec![("ADDED", namespace("kube-system", Some("allowed")))]));
    assert_eq!(next(&mut targeted).await.name, "names-kube-system");
    assert_eq!(asked_by_name.load(Ordering::SeqCst), 0, "the watch answered every check");
    watching.abort();
    server.abort();
}
