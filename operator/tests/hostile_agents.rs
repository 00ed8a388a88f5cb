//! The operator's agent pool against agents that lie or flood (issue 21, points 4 and 5):
//! fake agents over real gRPC + mTLS (the test PKI), no kernel needed. Each test plays
//! one attacker and checks that nothing it sends reaches the operator's index, that no
//! Apply or Remove is sent where it does not belong, and that the node is reported
//! unreachable with a message that says why.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agent::tls::testpki::{CLIENT_NAME, TestPki};
use agent::tls::{ServerTls, TlsFiles};
use futures::Stream;
use operator::dispatch::{AgentPool, DispatchError, Failure, NodeAddr, PoolConfig};
use proto::v1;
use proto::v1::agent_server::{Agent, AgentServer};
use tonic::{Request, Response, Status};

/// What the fake agent answers.
#[derive(Clone, Copy)]
enum Behaviour {
    /// An honest agent of node `name` that does not check the request's node (as an
    /// agent older than the check, or one that lies).
    Honest,
    /// Every List page carries 500 new owners and a next page, forever.
    EndlessList,
    /// List answers an owner whose uid is a path.
    GarbageUid,
    /// One List page of 3 MiB.
    Oversized,
    /// Watch sends new owners as fast as it can, forever.
    FloodingWatch,
    /// ApplyBatch answers each Apply with the state of the next one's owner.
    SwappedBatch,
}

struct FakeAgent {
    name: String,
    behaviour: Behaviour,
    calls: Arc<AtomicUsize>,
    mutations: Arc<AtomicUsize>,
}

fn state(uid: &str) -> v1::OwnerState {
    v1::OwnerState {
        owner: Some(v1::Owner { uid: uid.into(), name: "p".into() }),
        revision: "0123456789abcdef".into(),
        health: v1::Health::Healthy as i32,
        ..Default::default()
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<v1::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for FakeAgent {
    async fn probe(&self, _req: Request<v1::ProbeRequest>) -> Result<Response<v1::ProbeResponse>, Status> {
        Err(Status::unimplemented("this fake agent has no health gates"))
    }

    async fn read_maps(&self, _req: Request<v1::ReadMapsRequest>) -> Result<Response<v1::ReadMapsResponse>, Status> {
        Err(Status::unimplemented("this fake agent has no maps"))
    }

    async fn apply(&self, req: Request<v1::ApplyRequest>) -> Result<Response<v1::ApplyResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.mutations.fetch_add(1, Ordering::SeqCst);
        let uid = req.into_inner().owner.unwrap_or_default().uid;
        Ok(Response::new(v1::ApplyResponse { state: Some(state(&uid)), changed: true, node_name: self.name.clone() }))
    }

    async fn apply_batch(
        &self,
        req: Request<v1::ApplyBatchRequest>,
    ) -> Result<Response<v1::ApplyBatchResponse>, Status> {
        // Honest: an agent older than ApplyBatch.
        let Behaviour::SwappedBatch = self.behaviour else { return Err(Status::unimplemented("no ApplyBatch here")) };
        self.calls.fetch_add(1, Ordering::SeqCst);
        let applies = req.into_inner().applies;
        self.mutations.fetch_add(applies.len(), Ordering::SeqCst);
        let uids: Vec<String> = applies.into_iter().map(|a| a.owner.unwrap_or_default().uid).collect();
        let results = (0..uids.len())
            .map(|i| {
                let uid = &uids[(i + 1) % uids.len()];
                let applied =
                    v1::ApplyResponse { state: Some(state(uid)), changed: true, node_name: self.name.clone() };
                v1::ApplyResult { result: Some(v1::apply_result::Result::Applied(applied)) }
            })
            .collect();
        Ok(Response::new(v1::ApplyBatchResponse { results, node_name: self.name.clone() }))
    }

    async fn remove(&self, _req: Request<v1::RemoveRequest>) -> Result<Response<v1::RemoveResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.mutations.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(v1::RemoveResponse { removed: true, node_name: self.name.clone() }))
    }

    async fn list(&self, req: Request<v1::ListRequest>) -> Result<Response<v1::ListResponse>, Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let mut resp = v1::ListResponse { node_name: self.name.clone(), ..Default::default() };
        match self.behaviour {
            Behaviour::Honest | Behaviour::FloodingWatch | Behaviour::SwappedBatch => resp.owners.push(state("uid-1")),
            Behaviour::EndlessList => {
                resp.owners = (0..500).map(|i| state(&format!("u{n:06}-{i:03}"))).collect();
                resp.next_page_token = format!("page-{n}");
            }
            Behaviour::GarbageUid => resp.owners.push(state("../../etc/passwd")),
            Behaviour::Oversized => {
                let mut s = state("uid-1");
                s.last_error = "x".repeat(3 << 20);
                resp.owners.push(s);
            }
        }
        let _ = req;
        Ok(Response::new(resp))
    }

    type WatchStream = Events;

    async fn watch(&self, _req: Request<v1::WatchRequest>) -> Result<Response<Events>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let name = self.name.clone();
        let flood = matches!(self.behaviour, Behaviour::FloodingWatch);
        let events = futures::stream::iter(0u64..).map(move |i| {
            let uid = if flood { format!("flood-{i}") } else { "uid-1".to_owned() };
            Ok(v1::WatchEvent {
                kind: v1::watch_event::Kind::Updated as i32,
                state: Some(state(&uid)),
                reason: String::new(),
                node_name: name.clone(),
            })
        });
        let events: Events = if flood {
            Box::pin(events)
        } else {
            Box::pin(futures::StreamExt::chain(events.take(1), futures::stream::pending()))
        };
        Ok(Response::new(events))
    }
}

use futures::StreamExt as _;

struct Running {
    port: u16,
    calls: Arc<AtomicUsize>,
    mutations: Arc<AtomicUsize>,
    _server: tokio::task::JoinHandle<()>,
}

/// A fake agent of node `name` on 127.0.0.1, serving `files` with mTLS.
async fn start(name: &str, behaviour: Behaviour, files: TlsFiles) -> Running {
    let tls = Arc::new(ServerTls::load(files, CLIENT_NAME).expect("server TLS"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (calls, mutations) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let agent = FakeAgent { name: name.into(), behaviour, calls: calls.clone(), mutations: mutations.clone() };
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AgentServer::new(agent).max_encoding_message_size(16 << 20))
            .serve_with_incoming(agent::tls::incoming(listener, tls))
            .await
            .unwrap();
    });
    Running { port, calls, mutations, _server: server }
}

fn pool(pki: &TestPki, port: u16, per_node_name: Option<&str>) -> AgentPool {
    let mut cfg = PoolConfig::new(
        port,
        operator::agent_tls::AgentTls::from_files(pki.client_files(), agent::tls::DEFAULT_SERVER_NAME)
            .expect("test PKI"),
    );
    cfg.call_timeout = Duration::from_secs(5);
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.backoff_base = Duration::from_secs(30);
    cfg.per_node_name = per_node_name.map(str::to_owned);
    AgentPool::new(cfg)
}

fn node(name: &str) -> NodeAddr {
    NodeAddr { name: name.into(), ip: "127.0.0.1".parse().unwrap() }
}

/// `e` is a failure to reach the agent, of `kind` (the BpfNode's AgentReachable reason),
/// in words that say each of `words`.
fn unreachable_saying(e: DispatchError, kind: Failure, words: &[&str]) {
    assert!(e.is_unreachable(), "{e}");
    assert_eq!(e.unreached().map(|u| u.kind), Some(kind), "{e}");
    let text = e.to_string();
    for w in words {
        assert!(text.contains(w), "{text:?} does not say {w:?}");
    }
}

fn pki() -> (tempfile::TempDir, TestPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    (dir, pki)
}

/// Node "node-a"'s InternalIP leads to the agent of "node-b" (which, being older or
/// hostile, does not refuse): its answers name node-b, so the operator records nothing,
/// reports node-a unreachable naming both, backs off, and derives no Remove from it.
#[tokio::test]
async fn a_second_agent_answering_for_another_node_is_refused() {
    let (_dir, pki) = pki();
    let agent = start("node-b", Behaviour::Honest, pki.server_files()).await;
    let pool = pool(&pki, agent.port, None);
    let a = node("node-a");
    let e = pool.list(&a).await.expect_err("a List naming another node");
    unreachable_saying(e, Failure::AnswerRefused, &["\"node-a\"", "\"node-b\"", "InternalIP"]);
    assert!(pool.backoff_of("node-a").is_some(), "the node backs off");
    // The same agent dialled for its own node is fine.
    pool.list(&node("node-b")).await.expect("its own node");
    assert_eq!(agent.mutations.load(Ordering::SeqCst), 0, "no Apply or Remove was derived from the List");
}

/// With per-node certificates (`--agent-server-name '{node}.node.bpfleet.dev'`), the
/// handshake itself fails: node-b's agent holds no certificate for node-a, so not one
/// request reaches it, not even a List.
#[tokio::test]
async fn per_node_certificates_refuse_another_nodes_agent_at_the_handshake() {
    let (_dir, pki) = pki();
    let (cert, key) = pki.issue_server(&["node-b.node.bpfleet.dev"]);
    let files = TlsFiles { cert, key, client_ca: pki.ca_cert.clone() };
    let agent = start("node-b", Behaviour::Honest, files).await;
    let pool = pool(&pki, agent.port, Some("{node}.node.bpfleet.dev"));
    let req = v1::ApplyRequest { owner: Some(v1::Owner { uid: "u1".into(), name: "p".into() }), ..Default::default() };
    let e = pool.apply_wire(&node("node-a"), req.clone()).await.expect_err("the wrong node's certificate");
    unreachable_saying(e, Failure::IdentityMismatch, &["node-a"]);
    assert_eq!(agent.calls.load(Ordering::SeqCst), 0, "no request got past the handshake");
    // Its own node: the certificate names it.
    let resp = pool.apply_wire(&node("node-b"), req).await.expect("its own node");
    assert_eq!(resp.node_name, "node-b");
}

/// An agent whose certificate another CA signed (a node of another cluster, a stale
/// install) is refused at the handshake, as a TLS failure: not one request reaches it.
#[tokio::test]
async fn an_agent_of_another_ca_is_a_tls_failure() {
    let (_other_dir, other) = pki();
    let (_dir, pki) = pki();
    let agent = start("n", Behaviour::Honest, other.server_files()).await;
    let e = pool(&pki, agent.port, None).list(&node("n")).await.expect_err("another CA's agent");
    unreachable_saying(e, Failure::TlsFailure, &["n at 127.0.0.1"]);
    assert_eq!(agent.calls.load(Ordering::SeqCst), 0, "no request got past the handshake");
}

/// An agent whose List never ends (fresh owners and a next page on every answer) is cut
/// off at the owner bound, after a bounded number of pages.
#[tokio::test]
async fn an_endless_list_is_cut_off() {
    let (_dir, pki) = pki();
    let agent = start("n", Behaviour::EndlessList, pki.server_files()).await;
    let pool = pool(&pki, agent.port, None);
    let e = pool.list(&node("n")).await.expect_err("endless");
    unreachable_saying(e, Failure::AnswerRefused, &["more than 10000 owners", "cut off"]);
    let pages = agent.calls.load(Ordering::SeqCst);
    assert!(pages <= 21, "{pages} pages read");
    assert!(pool.backoff_of("n").is_some());
}

#[tokio::test]
async fn garbage_uids_and_oversized_answers_are_refused() {
    let (_dir, pki) = pki();
    let garbage = start("n", Behaviour::GarbageUid, pki.server_files()).await;
    let e = pool(&pki, garbage.port, None).list(&node("n")).await.expect_err("garbage uid");
    unreachable_saying(e, Failure::AnswerRefused, &["owner uid", "../../etc/passwd"]);
    let big = start("n", Behaviour::Oversized, pki.server_files()).await;
    let e = pool(&pki, big.port, None).list(&node("n")).await.expect_err("3 MiB page");
    unreachable_saying(e, Failure::AnswerRefused, &["too large"]);
}

/// A Watch stream that floods new owners is cut off before it has named more than the
/// owner bound; the node backs off so the stream is not reopened at once.
#[tokio::test]
async fn a_flooding_watch_is_cut_off() {
    let (_dir, pki) = pki();
    let agent = start("n", Behaviour::FloodingWatch, pki.server_files()).await;
    let pool = pool(&pki, agent.port, None);
    let mut stream = pool.watch(&node("n")).await.expect("watch");
    let mut passed = 0;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("cut off in time") {
            Ok(Some(_)) => passed += 1,
            Ok(None) => panic!("the stream ended instead"),
            Err(e) => break e,
        }
    };
    assert!(passed <= 10_000, "{passed} events passed");
    assert!(err.message().contains("floods") || err.message().contains("10000 owners"), "{}", err.message());
    assert!(pool.backoff_of("n").is_some());
}

/// A rotation of the operator's identity ends open Watch streams, so no connection made
/// with the old certificate stays open; the next one uses the new identity.
#[tokio::test]
async fn a_rotated_identity_ends_open_watch_streams() {
    let (_dir, pki) = pki();
    let agent = start("n", Behaviour::Honest, pki.server_files()).await;
    let pool = pool(&pki, agent.port, None);
    let mut stream = pool.watch(&node("n")).await.expect("watch");
    stream.message().await.expect("first event").expect("an event");
    pool.set_tls(
        operator::agent_tls::AgentTls::from_files(pki.client_files(), agent::tls::DEFAULT_SERVER_NAME)
            .expect("test PKI"),
    );
    let ended = tokio::time::timeout(Duration::from_secs(2), stream.message()).await.expect("ended in time");
    let e = ended.expect_err("the stream ends with the rotation");
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(e.message().contains("certificate changed"), "{}", e.message());
    let mut again = pool.watch(&node("n")).await.expect("watch again");
    again.message().await.expect("an event on the new connection");
}

/// An order to run owner `uid` (BpfProgram `name`), nothing else in it.
fn order(uid: &str, name: &str) -> operator::dispatch::ApplyOrder {
    let owner = Some(v1::Owner { uid: uid.into(), name: name.into() });
    operator::dispatch::ApplyOrder::from_wire(v1::ApplyRequest { owner, ..Default::default() })
}

/// Applies asked of one node at once, as `pool.apply` takes them (one order per owner).
async fn apply_owners(pool: &AgentPool, n: &NodeAddr, owners: usize) -> Vec<Result<String, DispatchError>> {
    let orders: Vec<_> = (0..owners).map(|i| order(&format!("u{i}"), &format!("p{i}"))).collect();
    let applies = orders.iter().map(|o| async move { pool.apply(n, o).await.map(|s| s.owner_uid) });
    futures::future::join_all(applies).await
}

/// An agent older than ApplyBatch (UNIMPLEMENTED) is sent the Applies that waited together
/// one by one, each answered for its own owner, and is not offered a batch again.
#[tokio::test]
async fn an_agent_without_apply_batch_gets_applies_one_by_one() {
    let (_dir, pki) = pki();
    let agent = start("n", Behaviour::Honest, pki.server_files()).await;
    let pool = pool(&pki, agent.port, None);
    let results = apply_owners(&pool, &node("n"), 5).await;
    let uids: Vec<String> = results.into_iter().map(|r| r.expect("applied one by one")).collect();
    assert_eq!(uids, ["u0", "u1", "u2", "u3", "u4"]);
    assert_eq!(agent.mutations.load(Ordering::SeqCst), 5, "each Apply once");
    // A second round goes straight to single Applies: no ApplyBatch is tried again.
    let before = agent.calls.load(Ordering::SeqCst);
    assert!(apply_owners(&pool, &node("n"), 3).await.iter().all(Result::is_ok));
    assert_eq!(agent.calls.load(Ordering::SeqCst) - before, 3);
    assert!(pool.apply_calls() >= 8, "{} calls", pool.apply_calls());
}

/// A batch answer that gives one Apply another owner's state is refused whole: no Apply of
/// it counts as done, the node is unreachable with a reason and backs off.
#[tokio::test]
async fn a_batch_answered_for_other_owners_is_refused_whole() {
    let (_dir, pki) = pki();
    let agent = start("n", Behaviour::SwappedBatch, pki.server_files()).await;
    let pool = pool(&pki, agent.port, None);
    let results = apply_owners(&pool, &node("n"), 3).await;
    assert_eq!(agent.calls.load(Ordering::SeqCst), 1, "one ApplyBatch carried all three");
    for r in results {
        unreachable_saying(r.expect_err("a lying answer"), Failure::AnswerRefused, &["answered for owner"]);
    }
    assert!(pool.backoff_of("n").is_some(), "the node backs off");
}

/// An Apply whose asker gave up while it waited (a cancelled reconcile, a lost leadership)
/// is not sent: only the Applies still awaited reach the agent.
#[tokio::test]
async fn an_apply_nobody_waits_for_is_not_sent() {
    use futures::FutureExt as _;
    let (_dir, pki) = pki();
    let agent = start("n", Behaviour::Honest, pki.server_files()).await;
    let pool = pool(&pki, agent.port, None);
    let n = node("n");
    let (gone, kept) = (order("gone", "p"), order("kept", "p"));
    // Queued (the node's sender has not run yet on this one thread), then dropped.
    assert!(pool.apply(&n, &gone).now_or_never().is_none(), "an Apply waits for its call");
    let state = pool.apply(&n, &kept).await.expect("the awaited Apply");
    assert_eq!(state.owner_uid, "kept");
    assert_eq!(agent.mutations.load(Ordering::SeqCst), 1, "the abandoned Apply was sent");
}
