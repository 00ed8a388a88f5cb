//! Test data shared by the unit tests and the fake-runtime tests (feature `testing`).

use std::collections::HashMap;

use crate::convert::POD_UID_LABEL;
use crate::wire;

/// A sandbox as `ListPodSandbox` lists it, of pod `shop/web-0` with uid `uid`, labelled the
/// way the kubelet labels it.
pub fn listed_sandbox(
    id: &str,
    uid: &str,
    state: wire::PodSandboxState,
    created_at: i64,
    attempt: u32,
) -> wire::PodSandbox {
    wire::PodSandbox {
        id: id.into(),
        metadata: Some(wire::PodSandboxMetadata {
            name: "web-0".into(),
            uid: uid.into(),
            namespace: "shop".into(),
            attempt,
        }),
        state: state as i32,
        created_at,
        labels: HashMap::from([(POD_UID_LABEL.to_string(), uid.to_string())]),
        ..Default::default()
    }
}
