//! A mocked API server for tests that assert the exact sequence of API calls (in the
//! style of controller-rs's ApiServerVerifier): each expected request is checked and
//! answered in turn.

// Each test crate uses what it needs of these.
#![allow(dead_code)]

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The next request: its method, path (with query) and JSON body; answered with `reply`.
pub async fn expect(handle: &mut Handle, method: &str, path_prefix: &str, status: u16, reply: Value) -> Value {
    expect_uri(handle, method, path_prefix, status, reply).await.1
}

/// [`expect`], also returning the request's path with its query.
pub async fn expect_uri(
    handle: &mut Handle,
    method: &str,
    path_prefix: &str,
    status: u16,
    reply: Value,
) -> (String, Value) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request came; expected {method} {path_prefix}"))
        .expect("service dropped");
    let uri = req.uri().to_string();
    assert_eq!(req.method().as_str(), method, "{uri}");
    assert!(uri.starts_with(path_prefix), "expected {method} {path_prefix}, got {uri}");
    let body = req.into_body().collect_bytes().await.unwrap();
    let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
    send.send_response(
        Response::builder().status(status).body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap(),
    );
    (uri, body)
}

/// Nothing else is asked of the API server (the client may also be gone).
pub async fn assert_no_more_calls(handle: &mut Handle, ms: u64) {
    match tokio::time::timeout(Duration::from_millis(ms), handle.next_request()).await {
        Err(_) | Ok(None) => {}
        Ok(Some((req, _))) => panic!("unexpected call {} {}", req.method(), req.uri()),
    }
}
