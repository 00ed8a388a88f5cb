//! What a BpfNode says of its agent (`AgentReachable`, `lastHeartbeatTime`) and the Events
//! about it, against a mocked API server that checks each request (as tests/controller.rs
//! does) and real gRPC failures (a closed port): a transition is written once, with the
//! reason; nothing is written while nothing changes; Events carry the BpfNode's uid.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::client::Body;
use kube::runtime::{reflector, watcher};
use operator::agents::Agents;
use operator::bpfnode_follow::{publish_on_bpfnode, refresh_bpfnodes};
use operator::controller::Context;
use operator::dispatch::{AgentPool, PoolConfig};
use operator::metrics::Metrics;
use serde_json::{Value, json};

mod common;

use common::{Handle, assert_no_more_calls, expect_uri};

/// [`expect_uri`] answered with 200.
async fn expect(handle: &mut Handle, method: &str, path_prefix: &str, reply: Value) -> (String, Value) {
    expect_uri(handle, method, path_prefix, 200, reply).await
}

const BPFNODES: &str = "/apis/bpfleet.dev/v1alpha1/bpfnodes";

fn node(name: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "uid": format!("node-uid-{name}")},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}
    }))
    .unwrap()
}

fn bpfnode(name: &str, status: Value) -> Value {
    json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfNode",
           "metadata": {"name": name, "uid": format!("bpfnode-uid-{name}")}, "spec": {}, "status": status})
}

/// A port nothing listens on: dialling it is refused at once.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A context whose nodes all dial 127.0.0.1:`port`, with an Event recorder; `agents`
/// tracked from `pods` when given.
fn context(nodes: &[Node], port: u16, pods: Option<Vec<Pod>>) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (store, mut writer) = reflector::store();
    for n in nodes {
        writer.apply_watcher_event(&watcher::Event::Apply(n.clone()));
    }
    let mut cfg = PoolConfig::new(port, operator::agent_tls::AgentTls::untrusted());
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.call_timeout = Duration::from_secs(1);
    cfg.backoff_base = Duration::from_secs(30);
    let mut ctx = Context::new(client.clone(), AgentPool::new(cfg), store, Arc::new(Metrics::new()), 1);
    ctx.recorder = Some(operator::events::Recorder::new(client, "bpfleet-operator"));
    if let Some(pods) = pods {
        let agents = Agents::tracked();
        agents.update(pods.iter());
        ctx.agents = Arc::new(agents);
    }
    (Arc::new(ctx), handle)
}

fn agent_pod(node: &str, ready: bool) -> Pod {
    serde_json::from_value(json!({
        "spec": {"nodeName": node, "containers": []},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    }))
    .unwrap()
}

fn marked(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A node whose agent refuses connections (a real closed port) gets a BpfNode saying so:
/// the object, then `AgentReachable=False` with reason `ConnectionRefused` written by the
/// contact field manager alone (no programs, no heartbeat: it never answered). Asked again
/// while it still refuses, nothing is written; an Event about the BpfNode carries its uid.
#[tokio::test]
async fn an_agent_that_refuses_connections_is_said_so_once_and_events_carry_the_uid() {
    let n1 = node("n1");
    let (ctx, mut handle) = context(std::slice::from_ref(&n1), closed_port(), None);
    let server = tokio::spawn(async move {
        let (uri, body) = expect(&mut handle, "PATCH", &format!("{BPFNODES}/n1?"), bpfnode("n1", json!({}))).await;
        assert!(
            uri.contains("fieldManager=bpfleet-operator&") || uri.ends_with("fieldManager=bpfleet-operator"),
            "{uri}"
        );
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "node-uid-n1", "{body}");
        let reply = bpfnode("n1", json!({}));
        let (uri, body) = expect(&mut handle, "PATCH", &format!("{BPFNODES}/n1/status?"), reply).await;
        assert!(uri.contains("fieldManager=bpfleet-operator-agent-contact"), "{uri}");
        let status = body["status"].as_object().unwrap();
        assert_eq!(status.keys().collect::<Vec<_>>(), ["conditions"], "only the condition: {body}");
        let c = &status["conditions"][0];
        assert_eq!(
            (&c["type"], &c["status"], &c["reason"]),
            (&json!("AgentReachable"), &json!("False"), &json!("ConnectionRefused")),
            "{c}"
        );
        assert!(c["message"].as_str().unwrap().contains("n1 at 127.0.0.1:"), "{c}");
        handle
    });
    refresh_bpfnodes(&ctx, &marked(&["n1"]), None).await;
    let mut handle = server.await.unwrap();

    // Still refusing (now backing off): the same condition, nothing written.
    refresh_bpfnodes(&ctx, &marked(&["n1"]), None).await;
    assert_no_more_calls(&mut handle, 300).await;

    let server = tokio::spawn(async move {
        let (uri, body) =
            expect(&mut handle, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", json!({})).await;
        assert!(!uri.contains("bpfnodes"), "the uid was remembered from the write, not read: {uri}");
        assert_eq!(body["regarding"]["uid"], "bpfnode-uid-n1", "{body}");
        assert_eq!((&body["regarding"]["kind"], &body["regarding"]["name"]), (&json!("BpfNode"), &json!("n1")));
        handle
    });
    publish_on_bpfnode(&ctx, &n1, "UnknownProgramRemoved", "removed x".into()).await;
    let mut handle = server.await.unwrap();
    assert_no_more_calls(&mut handle, 100).await;
}

/// A BpfNode this process never wrote: the Event reads its uid first.
#[tokio::test]
async fn an_event_about_a_bpfnode_not_written_here_reads_its_uid() {
    let n2 = node("n2");
    let (ctx, mut handle) = context(std::slice::from_ref(&n2), closed_port(), None);
    let server = tokio::spawn(async move {
        expect(&mut handle, "GET", &format!("{BPFNODES}/n2"), bpfnode("n2", json!({}))).await;
        let (_, body) =
            expect(&mut handle, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", json!({})).await;
        assert_eq!(body["regarding"]["uid"], "bpfnode-uid-n2", "{body}");
        handle
    });
    publish_on_bpfnode(&ctx, &n2, "UnknownProgramRemoved", "removed x".into()).await;
    server.await.unwrap();
}

/// An agent pod that stops being Ready: the node is not dialled, and its BpfNode (known
/// from the new leader's List) turns `AgentNotReady`, keeping the heartbeat it had. A node
/// without an agent pod and without a BpfNode is not given one.
#[tokio::test]
async fn an_agent_pod_not_ready_turns_the_condition_and_keeps_the_heartbeat() {
    let nodes = [node("n1"), node("n3")];
    let pods = vec![agent_pod("n1", false)];
    let (ctx, mut handle) = context(&nodes, closed_port(), Some(pods));
    let heartbeat = "2026-11-30T10:00:00Z";
    let stored = bpfnode(
        "n1",
        json!({"managed": 1, "healthy": 1, "lastHeartbeatTime": heartbeat,
               "conditions": [{"type": "AgentReachable", "status": "True", "reason": "AgentAnswered",
                               "message": "the agent answers the operator", "lastTransitionTime": "2026-11-30T09:00:00Z"}]}),
    );
    let list = json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfNodeList", "metadata": {}, "items": [stored]});
    let client = ctx.client.clone();
    let server = tokio::spawn(async move {
        expect(&mut handle, "GET", BPFNODES, list).await;
        handle
    });
    assert_eq!(operator::bpfnode::seed(&client, &ctx.bpfnodes).await.unwrap(), 1);
    let mut handle = server.await.unwrap();
    let server = tokio::spawn(async move {
        let (uri, body) =
            expect(&mut handle, "PATCH", &format!("{BPFNODES}/n1/status?"), bpfnode("n1", json!({}))).await;
        assert!(uri.contains("fieldManager=bpfleet-operator-agent-contact"), "{uri}");
        assert_eq!(body["status"]["lastHeartbeatTime"], heartbeat, "the last time it answered: {body}");
        let c = &body["status"]["conditions"][0];
        assert_eq!((&c["status"], &c["reason"]), (&json!("False"), &json!("AgentNotReady")), "{c}");
        assert_ne!(c["lastTransitionTime"], "2026-11-30T09:00:00Z", "it turned: {c}");
        handle
    });
    refresh_bpfnodes(&ctx, &marked(&["n1", "n3"]), None).await;
    let mut handle = server.await.unwrap();
    assert_no_more_calls(&mut handle, 300).await;
}
