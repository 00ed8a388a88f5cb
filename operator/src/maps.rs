//! Map reads for people (`kubectl bpfleet maps`): an HTTPS endpoint every replica serves,
//! that checks who asks, finds the nodes that run the program and asks their agents
//! (`ReadMaps`, over the operator's mTLS identity, read-only and bounded). The bytes go
//! back as they are; the plugin decodes them with the maps' BTF.
//!
//! Who may read (see [`crds::mapread`]): a service-account token for audience
//! `bpfleet.dev/maps`, reviewed by the API server (TokenReview), whose identity may `get`
//! `bpfprograms/maps` of that program — or, for a BpfNamespacedProgram's mirror,
//! `bpfnamespacedprograms/maps` in the tenant's namespace (SubjectAccessReview). Nothing
//! else reaches an agent: the endpoint serves nothing but this path.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use crds::mapread::{self, MapContents, MapsAnswer, MapsQuery, NodeMaps, RawEntry};
use crds::node::BpfNode;
use crds::program::BpfProgram;
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use proto::v1;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::dispatch::AgentPool;
use crate::targets::{NodeAddr, NodeInfo};

/// Nodes asked at once during an `allNodes` read.
const PARALLEL_NODES: usize = 16;

/// Map reads served at once; more are refused (429) rather than queued, so callers
/// without a valid token cannot pile up TokenReviews or agent reads.
const PARALLEL_READS: usize = 8;

/// What a map read needs.
#[derive(Clone)]
pub struct MapReads {
    pub client: Client,
    pub pool: AgentPool,
    /// One permit per read in progress.
    pub slots: Arc<tokio::sync::Semaphore>,
}

impl MapReads {
    pub fn new(client: Client, pool: AgentPool) -> Self {
        Self { client, pool, slots: Arc::new(tokio::sync::Semaphore::new(PARALLEL_READS)) }
    }
}

/// A refusal: the HTTP status and what to do about it.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal { status, message: message.into() }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, self.message).into_response()
    }
}

/// Serve map reads on `addr` over TLS with a certificate made at start (the API server's
/// service proxy, the way callers come, does not verify it; the token is what is checked).
pub async fn serve(addr: SocketAddr, reads: MapReads) -> anyhow::Result<()> {
    let certified = rcgen::generate_simple_self_signed(vec!["bpfleet-operator".to_string()])
        .context("cannot make the map endpoint's certificate")?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = Arc::new(RwLock::new(TlsAcceptor::from(Arc::new(config))));
    let tcp = TcpListener::bind(addr).await.with_context(|| format!("--maps-listen {addr}"))?;
    tracing::info!(%addr, path = mapread::PATH, "map reads served");
    let app = axum::Router::new().route(mapread::PATH, get(handle)).with_state(Arc::new(reads));
    axum::serve(crate::https::TlsListener::new(tcp, acceptor), app).await?;
    Ok(())
}

async fn handle(State(reads): State<Arc<MapReads>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let answer = async {
        let _slot = reads.slots.try_acquire().map_err(|_| {
            refuse(StatusCode::TOO_MANY_REQUESTS, format!("{PARALLEL_READS} map reads are in progress: try again"))
        })?;
        let query = parse_query(query.as_deref().unwrap_or_default())?;
        let token = headers
            .get(mapread::TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                refuse(
                    StatusCode::UNAUTHORIZED,
                    format!(
                        "no token: send a service-account token for audience {} in header {} (kubectl bpfleet maps does)",
                        mapread::AUDIENCE,
                        mapread::TOKEN_HEADER
                    ),
                )
            })?;
        reads.read(token, &query).await
    };
    match answer.await {
        Ok(answer) => match serde_json::to_vec(&answer) {
            Ok(body) => ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => {
                refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {e}")).into_response()
            }
        },
        Err(refusal) => {
            tracing::info!(status = %refusal.status, message = %refusal.message, "map read refused");
            refusal.into_response()
        }
    }
}

/// The query string as [`MapsQuery`]. Names of programs, nodes and maps need no escapes,
/// so none are decoded: a `%` or `+` is refused rather than guessed at.
pub fn parse_query(raw: &str) -> Result<MapsQuery, Refusal> {
    let mut q = MapsQuery::default();
    let bad = |m: String| refuse(StatusCode::BAD_REQUEST, m);
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if value.contains(['%', '+']) {
            return Err(bad(format!("query parameter {key}: names have no escaped characters")));
        }
        let number =
            |v: &str| v.parse::<u32>().map_err(|_| bad(format!("query parameter {key}: {v:?} is not a number")));
        match key {
            "program" => q.program = value.to_string(),
            "node" => q.node = value.to_string(),
            "map" => q.map = value.to_string(),
            "allNodes" => q.all_nodes = matches!(value, "" | "true" | "1"),
            "maxEntries" => q.max_entries = number(value)?,
            "timeoutMs" => q.timeout_ms = number(value)?,
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    if q.program.is_empty() {
        return Err(bad("the query names no program (program=NAME)".into()));
    }
    if crds::names::NodeName::new(q.program.as_str()).is_err() {
        return Err(bad(format!("{:?} is not a BpfProgram name (a DNS subdomain)", q.program)));
    }
    if !q.node.is_empty() && q.all_nodes {
        return Err(bad("ask for one node or for allNodes, not both".into()));
    }
    Ok(q)
}

impl MapReads {
    /// Check the caller, then read `query`.
    pub async fn read(&self, token: &str, query: &MapsQuery) -> Result<MapsAnswer, Refusal> {
        let user = self.review(token).await?;
        let program = self.authorize(&user, &query.program).await?;
        let program = program
            .ok_or_else(|| refuse(StatusCode::NOT_FOUND, format!("BpfProgram {:?} does not exist", query.program)))?;
        let uid = program.metadata.uid.clone().unwrap_or_default();
        let running = self.nodes_running(&uid).await?;
        let chosen = choose_nodes(&query.program, &running, query)?;
        let share = (mapread::MAX_ANSWER_BYTES / chosen.len().max(1) as u32).clamp(64 << 10, mapread::MAX_NODE_BYTES);
        let asked = futures::stream::iter(chosen)
            .map(|node| {
                let uid = uid.clone();
                async move {
                    let mut answer = NodeMaps { node: node.clone(), ..Default::default() };
                    match self.address(&node).await {
                        Err(e) => answer.error = e,
                        Ok(addr) => match self
                            .pool
                            .read_maps(&addr, &uid, &query.map, query.max_entries, share, query.timeout_ms)
                            .await
                        {
                            Ok(resp) => {
                                answer.revision = resp.revision;
                                answer.maps = resp.maps.into_iter().map(contents).collect();
                            }
                            Err(e) => answer.error = e.to_string(),
                        },
                    }
                    answer
                }
            })
            .buffer_unordered(PARALLEL_NODES);
        let mut nodes: Vec<NodeMaps> = asked.collect().await;
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(MapsAnswer { program: query.program.clone(), nodes })
    }

    /// Who the token belongs to, as the API server says (for our audience only).
    async fn review(&self, token: &str) -> Result<UserInfo, Refusal> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(vec![mapread::AUDIENCE.into()]) },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| refuse(StatusCode::BAD_GATEWAY, format!("the token could not be reviewed: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        // An API server that ignores audiences answers without them: not good enough.
        let ours = status.audiences.as_ref().is_some_and(|a| a.iter().any(|x| x == mapread::AUDIENCE));
        match (status.authenticated, status.user) {
            (Some(true), Some(user)) if ours => Ok(user),
            _ => Err(refuse(
                StatusCode::UNAUTHORIZED,
                format!(
                    "the token was not accepted for audience {}: {}",
                    mapread::AUDIENCE,
                    status.error.unwrap_or_else(|| "not authenticated".into())
                ),
            )),
        }
    }

    /// May `user` read the maps of `name`: `get bpfprograms/maps`, or for a tenant's
    /// mirror `get bpfnamespacedprograms/maps` of the tenant's program.
    /// Asked before the program is read (its labels name the tenant), so a caller without
    /// the right learns nothing of it. The program, once allowed.
    async fn authorize(&self, user: &UserInfo, name: &str) -> Result<Option<BpfProgram>, Refusal> {
        let get = || async {
            Api::<BpfProgram>::all(self.client.clone())
                .get_opt(name)
                .await
                .map_err(|e| refuse(StatusCode::BAD_GATEWAY, format!("cannot read BpfProgram {name}: {e}")))
        };
        if self.allowed(user, resource_attributes("bpfprograms", None, name)).await? {
            return get().await;
        }
        let program = get().await?;
        let tenant = program.as_ref().and_then(|p| {
            let labels = p.metadata.labels.as_ref()?;
            let namespace = labels.get(crds::tenant::LABEL_TENANT_NAMESPACE)?;
            let tenant_name = labels.get(crds::tenant::LABEL_TENANT_NAME)?;
            Some((namespace.clone(), tenant_name.clone()))
        });
        if let Some((namespace, tenant_name)) = &tenant
            && self.allowed(user, resource_attributes("bpfnamespacedprograms", Some(namespace), tenant_name)).await?
        {
            return Ok(program);
        }
        let who = user.username.clone().unwrap_or_default();
        let also = tenant.map_or_else(String::new, |(ns, n)| {
            format!(", or get bpfnamespacedprograms/maps of {n} in namespace {ns}")
        });
        Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "{who} may not read the maps of BpfProgram {name}: grant it get on bpfprograms/maps (API group bpfleet.dev){also}"
            ),
        ))
    }

    async fn allowed(&self, user: &UserInfo, attributes: ResourceAttributes) -> Result<bool, Refusal> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                groups: user.groups.clone(),
                uid: user.uid.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(attributes),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| refuse(StatusCode::BAD_GATEWAY, format!("the access review failed: {e}")))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }

    /// Nodes whose BpfNode lists owner `uid`.
    async fn nodes_running(&self, uid: &str) -> Result<Vec<String>, Refusal> {
        let list = Api::<BpfNode>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| refuse(StatusCode::BAD_GATEWAY, format!("cannot list BpfNodes: {e}")))?;
        let mut nodes: Vec<String> = list
            .items
            .into_iter()
            .filter(|n| n.status.as_ref().is_some_and(|s| s.programs.iter().any(|p| p.owner_uid == uid)))
            .filter_map(|n| n.metadata.name)
            .collect();
        nodes.sort();
        Ok(nodes)
    }

    async fn address(&self, node: &str) -> Result<NodeAddr, String> {
        let found = Api::<Node>::all(self.client.clone())
            .get_opt(node)
            .await
            .map_err(|e| format!("cannot read Node {node}: {e}"))?;
        let info = found.as_ref().and_then(NodeInfo::from_node).ok_or_else(|| format!("Node {node} is gone"))?;
        let ip = info.internal_ip.ok_or_else(|| format!("Node {node} has no InternalIP to reach its agent at"))?;
        Ok(NodeAddr { name: node.to_string(), ip })
    }
}

fn resource_attributes(resource: &str, namespace: Option<&str>, name: &str) -> ResourceAttributes {
    ResourceAttributes {
        group: Some(crds::GROUP.into()),
        resource: Some(resource.into()),
        subresource: Some(mapread::SUBRESOURCE.into()),
        verb: Some("get".into()),
        namespace: namespace.map(str::to_string),
        name: Some(name.to_string()),
        ..Default::default()
    }
}

/// Which of the nodes running the program to ask: the one named, all, or the only one.
pub fn choose_nodes(program: &str, running: &[String], query: &MapsQuery) -> Result<Vec<String>, Refusal> {
    let list = |nodes: &[String]| {
        let shown: Vec<&str> = nodes.iter().take(10).map(String::as_str).collect();
        let more = nodes.len().saturating_sub(shown.len());
        if more > 0 { format!("{}, and {more} more", shown.join(", ")) } else { shown.join(", ") }
    };
    if running.is_empty() {
        return Err(refuse(StatusCode::NOT_FOUND, format!("BpfProgram {program} runs on no node yet")));
    }
    if !query.node.is_empty() {
        if running.contains(&query.node) {
            return Ok(vec![query.node.clone()]);
        }
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("BpfProgram {program} does not run on node {} (it runs on: {})", query.node, list(running)),
        ));
    }
    if query.all_nodes {
        if running.len() > mapread::MAX_NODES {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "BpfProgram {program} runs on {} nodes; one read asks at most {}: name nodes one at a time",
                    running.len(),
                    mapread::MAX_NODES
                ),
            ));
        }
        return Ok(running.to_vec());
    }
    match running {
        [one] => Ok(vec![one.clone()]),
        _ => Err(refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "BpfProgram {program} runs on {} nodes ({}): choose one with --node or read all with --all-nodes",
                running.len(),
                list(running)
            ),
        )),
    }
}

/// A map's contents as the answer carries them.
fn contents(m: v1::MapDump) -> MapContents {
    MapContents {
        name: m.name,
        map_type: m.type_name,
        map_id: m.map_id,
        key_size: m.key_size,
        value_size: m.value_size,
        max_entries: m.max_entries,
        values_per_entry: m.values_per_entry,
        btf: if m.btf.is_empty() { String::new() } else { B64.encode(&m.btf) },
        btf_key_type_id: m.btf_key_type_id,
        btf_value_type_id: m.btf_value_type_id,
        btf_note: m.btf_note,
        entries: m
            .entries
            .into_iter()
            .map(|e| RawEntry { key: B64.encode(&e.key), values: e.values.iter().map(|v| B64.encode(v)).collect() })
            .collect(),
        truncated: m.truncated,
        error: m.error,
    }
}
