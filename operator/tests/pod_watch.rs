//! The operator's pod watch (`operator::pod_watch`) against a real API server: pods that
//! run (scheduled, phase Running) are seen within seconds, with their labels and node;
//! a pod that stops running, is deleted or changes labels is followed; each change names
//! its namespace on the trigger channel. The API server alone is enough: the test plays
//! the kubelet by writing the pods' status. Without KUBECONFIG it skips with one line (CI);
//! the e2e runs set it (docs/e2e.md).

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const TEST: &str = "pod_watch_follows_running_pods_of_the_namespaces_programs_name";

/// Poll `check` until it is `Ok` or `timeout` passes (then panic with the last `Err`).
async fn wait_for(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() > deadline => panic!("{what}: still {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn pod_watch_follows_running_pods_of_the_namespaces_programs_name() {
    if std::env::var_os("KUBECONFIG").is_none_or(|k| k.is_empty()) {
        eprintln!("SKIP {TEST}: KUBECONFIG is not set (no API server)");
        return;
    }
    let client = Client::try_default().await.expect("a client for KUBECONFIG");
    let ns = format!("pods-test-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
        .await
        .unwrap();
    // An API server without a controller manager makes no default ServiceAccount.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let default = serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    let _ = accounts.create(&PostParams::default(), &default).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let create = |name: &'static str, labels: serde_json::Value| {
        let pods = pods.clone();
        async move {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "pause"}]},
            }))
            .unwrap();
            pods.create(&PostParams::default(), &pod).await.unwrap();
        }
    };
    let phase = |name: &'static str, phase: &'static str| {
        let pods = pods.clone();
        async move {
            let patch = json!({"status": {"phase": phase}});
            pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        }
    };

    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let watches = operator::pod_watch::PodWatches::new(client.clone(), tx);
    create("web-1", json!({"app": "web"})).await;
    create("web-2", json!({"app": "web"})).await;
    phase("web-1", "Running").await;
    watches.keep(&BTreeSet::from([ns.clone()]));
    let names = |w: &operator::pod_watch::PodWatches| {
        let mut v: Vec<String> = w.running(&ns).into_iter().map(|p| p.name).collect();
        v.sort();
        v
    };
    wait_for(Duration::from_secs(5), "web-1 listed as running", || {
        let n = names(&watches);
        if n == ["web-1"] { Ok(()) } else { Err(format!("{n:?}")) }
    })
    .await;
    let p = watches.running(&ns).pop().unwrap();
    assert_eq!((p.node.as_str(), p.labels.get("app").map(String::as_str)), ("node-a", Some("web")));

    // web-2 starts running, web-1 changes its labels, then stops: each seen in seconds.
    phase("web-2", "Running").await;
    wait_for(Duration::from_secs(5), "web-2 running too", || {
        let n = names(&watches);
        if n == ["web-1", "web-2"] { Ok(()) } else { Err(format!("{n:?}")) }
    })
    .await;
    let relabel = json!({"metadata": {"labels": {"app": "db"}}});
    pods.patch("web-1", &PatchParams::default(), &Patch::Merge(&relabel)).await.unwrap();
    wait_for(Duration::from_secs(5), "web-1's new labels", || {
        let db = watches.running(&ns).into_iter().any(|p| p.name == "web-1" && p.labels["app"] == "db");
        if db { Ok(()) } else { Err("old labels".into()) }
    })
    .await;
    phase("web-1", "Succeeded").await;
    wait_for(Duration::from_secs(5), "web-1 stopped", || {
        let n = names(&watches);
        if n == ["web-2"] { Ok(()) } else { Err(format!("{n:?}")) }
    })
    .await;
    pods.delete("web-2", &DeleteParams::default().grace_period(0)).await.unwrap();
    wait_for(Duration::from_secs(5), "web-2 deleted", || {
        let n = names(&watches);
        if n.is_empty() { Ok(()) } else { Err(format!("{n:?}")) }
    })
    .await;
    let mut changes = 0;
    while let Ok(n) = rx.try_recv() {
        assert_eq!(n, ns);
        changes += 1;
    }
    assert!(changes >= 4, "every change said so: {changes}");

    // No program names it any more: the watch stops.
    watches.keep(&BTreeSet::new());
    assert!(watches.namespaces().is_empty());
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
}
