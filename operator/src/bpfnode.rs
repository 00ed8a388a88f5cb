//! One BpfNode per Node, mirroring what its agent reports; owned by the Node and also
//! deleted explicitly when the Node goes (garbage collection alone can lag).

use crds::{BpfNode, BpfNodeStatus, FIELD_MANAGER};
use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// Create or update the BpfNode of `node` with `status` (server-side apply).
pub async fn write(client: &Client, node: &Node, status: &BpfNodeStatus) -> kube::Result<()> {
    let api: Api<BpfNode> = Api::all(client.clone());
    let name = node.name_any();
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let mut owner = json!({"apiVersion": "v1", "kind": "Node", "name": name});
    if let Some(uid) = node.uid() {
        owner["uid"] = json!(uid);
    }
    let obj = json!({
        "apiVersion": "bpfleet.dev/v1alpha1",
        "kind": "BpfNode",
        "metadata": {"name": name, "ownerReferences": [owner]},
        "spec": {}
    });
    api.patch(&name, &pp, &Patch::Apply(&obj)).await?;
    let st = json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfNode", "status": status});
    api.patch_status(&name, &pp, &Patch::Apply(&st)).await?;
    Ok(())
}

/// Delete the BpfNode of a deleted Node; a missing one is fine.
pub async fn delete(client: &Client, name: &str) -> kube::Result<()> {
    let api: Api<BpfNode> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
