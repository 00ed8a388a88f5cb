//! The mocked API server: a tower-test kube `Client` answering every request at once, in
//! process, and the objects the bench reconciles.

use super::*;

/// Answers every request the operator makes, at once: status and finalizer patches of
/// BpfPrograms (echoing a small valid object), BpfNode applies, Events (echoed). Records
/// when each BpfProgram's status first said Ready.
#[derive(Default)]
pub(crate) struct MockApi {
    /// BpfProgram name -> (when the status patch arrived, the status).
    pub(crate) statuses: Mutex<HashMap<String, (Instant, Value)>>,
    pub(crate) record: bool,
    pub(crate) ready_patches: AtomicUsize,
    pub(crate) requests: AtomicUsize,
    /// Requests other than GET (patches, creates, deletes).
    pub(crate) writes: AtomicUsize,
    /// "METHOD kind" -> requests, for the at-rest figures.
    pub(crate) by_kind: Mutex<BTreeMap<String, usize>>,
    /// When set, a status patch updates the BpfProgram in this cache, as the watch of a
    /// real API server would: the next reconcile sees what the last one wrote.
    pub(crate) feedback: Option<Feedback>,
    /// ControllerRevisions (the revision history) by name, without their data.
    pub(crate) revisions: Mutex<BTreeMap<String, KeptRevision>>,
}

/// What the mock keeps of a ControllerRevision: its labels and number (the bench never
/// reads an entry's data back, and what the mock holds is not the operator's memory).
#[derive(Default)]
pub(crate) struct KeptRevision {
    labels: BTreeMap<String, String>,
    revision: Value,
}

impl KeptRevision {
    fn object(&self, name: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "ControllerRevision",
               "metadata": {"name": name, "labels": self.labels}, "revision": self.revision})
    }
}

pub(crate) struct Feedback {
    pub(crate) store: Store<BpfProgram>,
    pub(crate) writer: Mutex<reflector::store::Writer<BpfProgram>>,
}

pub(crate) type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub(crate) fn mock_client(api: Arc<MockApi>) -> Client {
    let (service, mut handle): (_, Handle) = tower_test::mock::pair();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let api = api.clone();
            tokio::spawn(async move { send.send_response(api.answer(req).await) });
        }
    });
    Client::new(service, "default")
}

pub(crate) fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).expect("json")))
        .expect("response")
}

pub(crate) fn ready_true(status: &Value) -> bool {
    status["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

impl MockApi {
    pub(crate) async fn answer(&self, req: Request<Body>) -> Response<Body> {
        let arrived = Instant::now();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let req_query = req.uri().query().map(str::to_string);
        let raw = req.into_body().collect_bytes().await.unwrap_or_default();
        // Parsed only where it is read: the mock's own memory is not the operator's.
        let body = || -> Value { serde_json::from_slice(&raw).unwrap_or(Value::Null) };
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if method != "GET" {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        let kind = match parts.as_slice() {
            [.., "status"] => "status",
            ["apis", _, _, "namespaces", _, kind, ..] | ["apis", _, _, kind, ..] => kind,
            _ => "other",
        };
        *self.by_kind.lock().unwrap().entry(format!("{method} {kind}")).or_default() += 1;
        match parts.as_slice() {
            ["apis", "bpfleet.dev", "v1alpha1", "bpfprograms", name, rest @ ..] => {
                if rest == ["status"] {
                    let status = body()["status"].take();
                    if ready_true(&status) {
                        self.ready_patches.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(fb) = &self.feedback
                        && let Some(p) = fb.store.get(&reflector::ObjectRef::new(name))
                    {
                        let mut obj = (*p).clone();
                        obj.status = serde_json::from_value(status.clone()).ok();
                        let rv = obj.metadata.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok());
                        obj.metadata.resource_version = Some((rv.unwrap_or(1) + 1).to_string());
                        fb.writer.lock().unwrap().apply_watcher_event(&watcher::Event::Apply(obj));
                    }
                    if self.record {
                        self.statuses.lock().unwrap().insert(name.to_string(), (arrived, status));
                    }
                }
                // A real API server answers with the whole object; the operator drops it.
                json_response(200, &program_stub(name))
            }
            ["apis", "bpfleet.dev", "v1alpha1", "bpfnodes", name, ..] => json_response(
                200,
                &json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfNode", "metadata": {"name": name}, "spec": {}}),
            ),
            ["apis", "apps", "v1", "namespaces", _, "controllerrevisions", rest @ ..] => {
                self.revision_history(&method, req_query.as_deref(), rest.first().copied(), body())
            }
            ["apis", "events.k8s.io", "v1", "namespaces", _, "events", ..] => Response::builder()
                .status(if method == "POST" { 201 } else { 200 })
                .header("content-type", "application/json")
                .body(Body::from(raw.to_vec()))
                .expect("response"),
            _ => not_found(&method, &path),
        }
    }

    /// The revision history as an API server keeps it: List by label, create, merge-patch
    /// of the revision number, delete.
    pub(crate) fn revision_history(
        &self,
        method: &str,
        query: Option<&str>,
        name: Option<&str>,
        body: Value,
    ) -> Response<Body> {
        let mut revisions = self.revisions.lock().unwrap();
        match (method, name) {
            ("GET", None) => {
                // labelSelector=key%3Dvalue (one term, as operator::history asks).
                let selector = query
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("labelSelector=")))
                    .map(|s| s.replace("%3D", "=").replace("%2F", "/"))
                    .unwrap_or_default();
                let (key, value) = selector.split_once('=').unwrap_or(("", ""));
                let items: Vec<Value> = revisions
                    .iter()
                    .filter(|(_, cr)| key.is_empty() || cr.labels.get(key).is_some_and(|v| v == value))
                    .map(|(n, cr)| cr.object(n))
                    .collect();
                json_response(
                    200,
                    &json!({"apiVersion": "apps/v1", "kind": "ControllerRevisionList", "metadata": {}, "items": items}),
                )
            }
            ("GET", Some(n)) => match revisions.get(n) {
                Some(cr) => json_response(200, &cr.object(n)),
                None => not_found(method, n),
            },
            ("POST", _) => {
                let n = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let labels = serde_json::from_value(body["metadata"]["labels"].clone()).unwrap_or_default();
                revisions.insert(n, KeptRevision { labels, revision: body["revision"].clone() });
                json_response(201, &body)
            }
            ("PATCH", Some(n)) => match revisions.get_mut(n) {
                Some(cr) => {
                    if let Some(r) = body.get("revision") {
                        cr.revision = r.clone();
                    }
                    json_response(200, &cr.object(n))
                }
                None => not_found(method, n),
            },
            ("DELETE", Some(n)) => {
                revisions.remove(n);
                json_response(200, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
            }
            _ => not_found(method, name.unwrap_or("controllerrevisions")),
        }
    }

    pub(crate) fn take_status(&self, name: &str) -> Option<(Instant, Value)> {
        self.statuses.lock().unwrap().remove(name)
    }
}

pub(crate) fn not_found(method: &str, what: &str) -> Response<Body> {
    json_response(
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                "message": format!("the mock API server has no {method} {what}")}),
    )
}

pub(crate) fn program_stub(name: &str) -> Value {
    json!({
        "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram", "metadata": {"name": name},
        "spec": {"bytecode": {"path": "/stub.o"},
                 "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": ["lo"]}}]}
    })
}

/// A BpfProgram as the API server would hold it after the finalizer was added.
pub(crate) fn program_json(name: &str, uid: &str, elf_b64: &str, interface: &str) -> Value {
    json!({
        "apiVersion": "bpfleet.dev/v1alpha1",
        "kind": "BpfProgram",
        "metadata": {"name": name, "uid": uid, "generation": 1, "resourceVersion": "1", "finalizers": [FINALIZER]},
        "spec": {
            "nodeSelector": {},
            "bytecode": {"inline": elf_b64},
            "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": [interface], "mode": "Generic"}}]
        }
    })
}

pub(crate) fn node(name: &str, ip: IpAddr) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {"kubernetes.io/os": "linux"}},
        "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}]}
    }))
    .expect("node")
}

pub(crate) fn context(client: Client, pool: AgentPool, nodes: Vec<Node>) -> Arc<Context> {
    let (store, mut writer) = reflector::store();
    for n in nodes {
        writer.apply_watcher_event(&watcher::Event::Apply(n));
    }
    let mut ctx = Context::new(client.clone(), pool, store, Arc::new(Metrics::new()), 1);
    ctx.recorder = Some(operator::events::Recorder::new(client, "bpfleet-operator"));
    Arc::new(ctx)
}
