//! The validating webhook for BpfPrograms, for clusters without ValidatingAdmissionPolicy.
//!
//! It enforces the `BpfAdmissionPolicy` named `default` through [`crds::admission::review`],
//! the same decision the chart's policy CEL makes (a test holds the two to one table). Every
//! replica serves it, leader or not: the API server calls whichever answers. No policy
//! object (or not read yet) refuses every write, as the policy's binding does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::routing::post;
use crds::admission::{BpfAdmissionPolicy, BpfAdmissionPolicySpec, POLICY_NAME, Requester, Write, review};
use crds::program::BpfProgramSpec;
use futures::StreamExt;
use kube::runtime::watcher;
use kube::{Api, Client};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Where the API server posts BpfProgram reviews (the chart's webhook `path`).
pub const PATH: &str = "/validate-bpfprogram";

/// The policy as last seen: `None` until read, and while the object does not exist.
#[derive(Clone, Default)]
pub struct PolicyView(Arc<RwLock<Option<BpfAdmissionPolicySpec>>>);

impl PolicyView {
    pub fn set(&self, spec: Option<BpfAdmissionPolicySpec>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = spec;
    }

    fn get(&self) -> Option<BpfAdmissionPolicySpec> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Keeps `view` equal to the `default` policy object. Runs forever.
pub async fn follow_policy(client: Client, view: PolicyView) {
    let api: Api<BpfAdmissionPolicy> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={POLICY_NAME}"));
    let mut events = std::pin::pin!(watcher(api, cfg));
    // A relist gathers the object first, so a restart of the watch never empties the view.
    let mut listed: Option<BpfAdmissionPolicySpec> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listed = None,
            Ok(watcher::Event::InitApply(p)) => listed = Some(p.spec),
            Ok(watcher::Event::InitDone) => view.set(listed.take()),
            Ok(watcher::Event::Apply(p)) => view.set(Some(p.spec)),
            Ok(watcher::Event::Delete(_)) => view.set(None),
            Err(error) => {
                tracing::warn!(%error, "watching BpfAdmissionPolicy {POLICY_NAME}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Answers one AdmissionReview (`admission.k8s.io/v1`) with the policy `view` holds.
pub fn answer(view: &PolicyView, review_request: &Value) -> Value {
    let request = &review_request["request"];
    let uid = request["uid"].clone();
    let verdict = judge(view, request);
    let response = match verdict {
        Ok(()) => json!({"uid": uid, "allowed": true}),
        Err(message) => json!({
            "uid": uid,
            "allowed": false,
            "status": {"code": 403, "reason": "Forbidden", "message": crds::sanitize::for_status(&message)},
        }),
    };
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

fn judge(view: &PolicyView, request: &Value) -> Result<(), String> {
    let operation = request["operation"].as_str().unwrap_or_default();
    if operation != "CREATE" && operation != "UPDATE" {
        return Ok(());
    }
    let spec_of = |object: &Value| -> Result<Option<BpfProgramSpec>, String> {
        match object.get("spec") {
            None | Some(Value::Null) => Ok(None),
            Some(spec) => {
                serde_json::from_value(spec.clone()).map(Some).map_err(|e| format!("spec does not parse: {e}"))
            }
        }
    };
    let Some(spec) = spec_of(&request["object"])? else {
        return Err("the BpfProgram has no spec".to_owned());
    };
    // An old spec that no longer parses (an older schema) counts as changed.
    let old = spec_of(&request["oldObject"]).unwrap_or(None);
    if old.as_ref() == Some(&spec) {
        return Ok(());
    }
    let Some(policy) = view.get() else {
        return Err(format!(
            "BpfAdmissionPolicy {POLICY_NAME} does not exist (or the operator has not read it yet): \
             every BpfProgram write is refused until a cluster admin creates it (the chart does, from admission.grants)"
        ));
    };
    let user = &request["userInfo"];
    let who = Requester {
        username: user["username"].as_str().unwrap_or_default().to_owned(),
        groups: user["groups"]
            .as_array()
            .map(|g| g.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
    };
    // A BpfNamespacedProgram: its namespace, and the rules of its kind that its schema
    // checks where the API server has CEL (a cluster that needs this webhook may not).
    let namespace = (request["resource"]["resource"] == "bpfnamespacedprograms")
        .then(|| request["namespace"].as_str().unwrap_or_default());
    review(&policy, &who, Write { spec: &spec, old: old.as_ref(), namespace })?;
    match namespace.map(|ns| crds::tenant::tenant_problems(&spec, ns)) {
        Some(problems) if !problems.is_empty() => Err(format!("BpfNamespacedProgram: {}", problems.join("; "))),
        _ => Ok(()),
    }
}

/// The serving certificate and key, re-read when they change (cert-manager renewals).
pub struct WebhookTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl WebhookTls {
    fn load(&self) -> anyhow::Result<(Vec<u8>, Arc<ServerConfig>)> {
        let cert_pem =
            std::fs::read(&self.cert).with_context(|| format!("--webhook-tls-cert {}", self.cert.display()))?;
        let key_pem = std::fs::read(&self.key).with_context(|| format!("--webhook-tls-key {}", self.key.display()))?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("--webhook-tls-cert {} holds no PEM certificate", self.cert.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .with_context(|| format!("--webhook-tls-key {} holds no PEM private key", self.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("webhook certificate and key do not match")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut fingerprint = cert_pem;
        fingerprint.extend_from_slice(&key_pem);
        Ok((fingerprint, Arc::new(config)))
    }
}

/// Serves the webhook on `addr` over TLS until the process ends. Fails at start on an
/// unusable certificate; later changes that do not load keep the previous one.
pub async fn serve(addr: SocketAddr, tls: WebhookTls, view: PolicyView) -> anyhow::Result<()> {
    let (mut fingerprint, config) = tls.load()?;
    let acceptor = Arc::new(RwLock::new(TlsAcceptor::from(config)));
    let tcp = TcpListener::bind(addr).await.with_context(|| format!("--webhook-listen {addr}"))?;
    tracing::info!(%addr, path = PATH, "admission webhook listening");
    tokio::spawn({
        let acceptor = acceptor.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                match tls.load() {
                    Ok((f, config)) if f != fingerprint => {
                        *acceptor.write().unwrap_or_else(|e| e.into_inner()) = TlsAcceptor::from(config);
                        fingerprint = f;
                        tracing::info!("webhook certificate files changed: new connections use them");
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(error = %format!("{error:#}"), "webhook certificate unusable; keeping the previous one")
                    }
                }
            }
        }
    });
    let app = axum::Router::new().route(PATH, post(handle)).with_state(view);
    axum::serve(crate::https::TlsListener::new(tcp, acceptor), app).await?;
    Ok(())
}

async fn handle(State(view): State<PolicyView>, body: axum::body::Bytes) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    match serde_json::from_slice::<Value>(&body) {
        Ok(review_request) => {
            let body = answer(&view, &review_request).to_string();
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(error) => (StatusCode::BAD_REQUEST, format!("not an AdmissionReview: {error}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review_of(user: &str, groups: &[&str], operation: &str, spec: Value, old: Option<Value>) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "operation": operation,
                "userInfo": {"username": user, "groups": groups},
                "object": {"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram", "spec": spec},
                "oldObject": old.map(|s| json!({"spec": s})),
            }
        })
    }

    fn xdp(selector: Value) -> Value {
        json!({
            "nodeSelector": selector,
            "bytecode": {"image": {"url": "r/x:1"}},
            "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": ["eth0"]}}],
        })
    }

    fn view(yaml: &str) -> PolicyView {
        let v = PolicyView::default();
        v.set(Some(serde_yaml::from_str(yaml).unwrap()));
        v
    }

    #[test]
    fn answers_carry_the_uid_and_the_refusal() {
        let v = view(
            "grants: [{name: net, groups: [net], programTypes: [XDP], sources: [image], allowControlPlane: true}]",
        );
        let ok = answer(&v, &review_of("ann", &["net"], "CREATE", xdp(json!({})), None));
        assert_eq!(ok["response"]["allowed"], true);
        assert_eq!(ok["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(ok["kind"], "AdmissionReview");
        let no = answer(&v, &review_of("mallory", &[], "CREATE", xdp(json!({})), None));
        assert_eq!(no["response"]["allowed"], false);
        assert_eq!(no["response"]["status"]["code"], 403);
        let msg = no["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.starts_with("mallory is named by no grant"), "{msg}");
    }

    #[test]
    fn without_a_policy_every_spec_write_is_refused_and_metadata_writes_pass() {
        let v = PolicyView::default();
        let no = answer(&v, &review_of("kubernetes-admin", &["system:masters"], "CREATE", xdp(json!({})), None));
        assert_eq!(no["response"]["allowed"], false);
        assert!(no["response"]["status"]["message"].as_str().unwrap().contains("does not exist"));
        let same = answer(&v, &review_of("op", &[], "UPDATE", xdp(json!({})), Some(xdp(json!({})))));
        assert_eq!(same["response"]["allowed"], true, "finalizer and label writes are not judged");
        let delete = answer(&v, &review_of("x", &[], "DELETE", xdp(json!({})), None));
        assert_eq!(delete["response"]["allowed"], true);
    }

    #[test]
    fn control_characters_in_names_do_not_reach_the_message() {
        let v = view("grants: []");
        let no = answer(&v, &review_of("eve\u{1b}[2J", &[], "CREATE", xdp(json!({})), None));
        let msg = no["response"]["status"]["message"].as_str().unwrap();
        assert!(!msg.contains('\u{1b}'), "{msg:?}");
    }
}
